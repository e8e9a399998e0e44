//! The README's first command (`scripts/demo.sh` runs this): a local Synapse and a
//! local murmurd on loopback, a room `#ops` and a Mumble channel `Ops`, and the
//! bridge between them.
//!
//! 1. A Mumble user (`kilo`, a pymumble client) speaks: the transmission appears in
//!    the room as a voice message from the puppet `@walkie_mumble_kilo`.
//! 2. The Matrix user opts in with `!wt on` and posts a voice message: `kilo` hears
//!    it on Mumble, and the bot reacts ✅.
//!
//! The demo keeps running until Ctrl-C so you can look around with a Matrix client
//! and a Mumble client.

#[path = "../tests/bridge_common/mod.rs"]
mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::io::IsTerminal;
use std::time::Duration;

use bridge_common::{is_voice_message_from, setup, SERVER};
use tokio_util::sync::CancellationToken;
use walkie_endpoint::audio::encode_ogg_opus;
use walkie_harness::{MumbleEvent, MumbleTestClient, Murmur};

const WAIT: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(demo())
}

async fn demo() -> anyhow::Result<()> {
    println!("== starting Synapse and murmurd on loopback, and the bridge");
    let setup = setup().await;
    let murmur = Murmur::builder().channels(&["Ops"]).start().await?;
    let config = setup.config_with_mumble(&murmur.address());
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(walkie_bridge::daemon::run(config, shutdown.clone()));
    let kilo = MumbleTestClient::join(&murmur, "kilo", "Ops").await?;
    kilo.wait_for_users(|users| users.iter().any(|u| u == "walkie"), WAIT)
        .await?;
    println!(
        "   Synapse {} · room #ops:{SERVER} · murmurd {} channel Ops · bridge bot \"walkie\" joined both",
        setup.synapse.url(),
        murmur.address(),
    );

    println!("\n== 1. kilo talks on Mumble (\"{}\")", common::TEXT);
    let speech = common::speech(48_000);
    let dir = tempfile::tempdir()?;
    let wav = dir.path().join("kilo.wav");
    common::write_wav(&wav, &speech, 48_000);
    kilo.send_wav(&wav, true).await?;
    let alice = setup.synapse.client(&setup.alice);
    let puppet = format!("@walkie_mumble_kilo:{SERVER}");
    let message = alice
        .sync_until(|e| is_voice_message_from(e, &puppet), WAIT)
        .await?;
    let content = message.content();
    println!(
        "   voice message {} from {puppet} (\"{}\"): {} ms, {} bytes of Ogg Opus at {}, {} waveform points",
        message.event_id().unwrap_or("?"),
        alice.displayname(&puppet).await?.unwrap_or_default(),
        content["info"]["duration"],
        content["info"]["size"],
        content["url"].as_str().unwrap_or("?"),
        content["org.matrix.msc1767.audio"]["waveform"]
            .as_array()
            .map_or(0, Vec::len),
    );
    println!("   (spoken: {} ms)", speech.len() as u64 * 1000 / 48_000);

    println!(
        "\n== 2. {} opts in and sends a voice message",
        setup.alice.user_id
    );
    alice.send_text(&setup.room_id, "!wt on").await?;
    let bot = format!("@walkie:{SERVER}");
    let reply = alice
        .sync_until(
            |e| e.sender() == bot && e.content()["msgtype"] == "m.notice",
            WAIT,
        )
        .await?;
    println!("   bot: {}", reply.body().unwrap_or_default());
    kilo.record_start().await?;
    let ogg = encode_ogg_opus(&speech, 24_000)?;
    let event_id = alice
        .send_voice_message(&setup.room_id, ogg, speech.len() as u64 / 48)
        .await?;
    kilo.wait_for_event(
        |e| matches!(e, MumbleEvent::VoiceEnd { user, .. } if user == "walkie"),
        WAIT,
    )
    .await?;
    let recording = kilo.record_stop(dir.path()).await?;
    let heard = recording.get("walkie").map_or(0, |s| s.samples);
    println!(
        "   kilo heard {} ms of audio from the bridge on Mumble",
        heard * 1000 / 48_000
    );
    alice
        .sync_until(
            |e| {
                e.event_type() == "m.reaction"
                    && e.content()["m.relates_to"]["event_id"] == event_id.as_str()
            },
            WAIT,
        )
        .await?;
    println!("   the bot reacted ✅ to {event_id}");

    println!("\n== look at it yourself");
    println!("   homeserver   {}", setup.synapse.url());
    println!(
        "   user         {} / password {}",
        setup.alice.user_id, setup.alice.password
    );
    println!("   room         #ops:{SERVER}");
    println!(
        "   Mumble       {} (channel Ops; the server certificate is self-signed)",
        murmur.url()
    );
    println!("   the room's last messages:");
    println!(
        "   curl -s -H 'Authorization: Bearer {}' '{}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=5' | python3 -m json.tool",
        setup.alice.access_token,
        setup.synapse.url(),
        setup.room_id
    );
    if std::io::stdin().is_terminal() {
        println!("   Ctrl-C stops everything.");
        tokio::signal::ctrl_c().await?;
    }
    shutdown.cancel();
    daemon.await??;
    Ok(())
}

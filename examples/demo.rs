//! The README's first command (`scripts/demo.sh` runs this): a local Synapse on
//! loopback, a room `#ops`, and the bridge with one talker on the radio side.
//!
//! 1. The radio side speaks (espeak-ng speech, Opus at 20 ms frames): the
//!    transmission appears in the room as a voice message from its puppet.
//! 2. The Matrix user opts in with `!wt on` and posts a voice message: the radio side
//!    hears it, and the bot reacts ✅.
//!
//! The radio side is the bridge's test endpoint standing in for Mumble, MQTT and the
//! radio until their endpoints land (issues #4–#6); everything on the Matrix side is
//! the real thing. The demo keeps running until Ctrl-C so you can look around.

#[path = "../tests/bridge_common/mod.rs"]
mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use bridge_common::{is_voice_message_from, setup, speech_packets, start_daemon, transmit, SERVER};
use walkie_endpoint::audio::{encode_ogg_opus, OpusDecoder};
use walkie_endpoint::{Downlink, FloorEvent};

const WAIT: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(demo())
}

async fn demo() -> anyhow::Result<()> {
    println!("== starting Synapse on loopback and the bridge");
    let setup = setup().await;
    let alice = setup.synapse.client(&setup.alice);
    let mut running = start_daemon(&setup.config).await;
    println!(
        "   Synapse {} · room #ops:{SERVER} ({}) · bridge appservice on {}",
        setup.synapse.url(),
        setup.room_id,
        setup.config.appservice.listen
    );

    println!("\n== 1. the radio side talks (\"{}\")", common::TEXT);
    let (speech, packets) = speech_packets();
    transmit(&mut running.link, "radio-op", &packets).await;
    let puppet = format!("@walkie_test_radio-op:{SERVER}");
    let message = alice
        .sync_until(|e| is_voice_message_from(e, &puppet), WAIT)
        .await?;
    let content = message.content();
    println!(
        "   voice message {} from {puppet}: {} ms, {} bytes of Ogg Opus at {}, {} waveform points",
        message.event_id().unwrap_or("?"),
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
    let ogg = encode_ogg_opus(&speech, 24_000)?;
    let event_id = alice
        .send_voice_message(&setup.room_id, ogg, speech.len() as u64 / 48)
        .await?;
    let mut decoder = OpusDecoder::new()?;
    let mut heard = 0usize;
    let started = Instant::now();
    loop {
        match tokio::time::timeout(WAIT, running.link.recv()).await?? {
            Downlink::Audio(frame) => heard += decoder.decode(&frame.frame.opus)?.len(),
            Downlink::Floor(FloorEvent::Released { .. }) if heard > 0 => break,
            Downlink::Floor(_) => {}
        }
    }
    println!(
        "   the radio side heard {} ms of audio from {} (played in real time: {:.1} s)",
        heard as u64 * 1000 / 48_000,
        setup.alice.user_id,
        started.elapsed().as_secs_f64()
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
    println!("   e.g. the room's last messages:");
    println!(
        "   curl -s -H 'Authorization: Bearer {}' '{}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=5' | python3 -m json.tool",
        setup.alice.access_token,
        setup.synapse.url(),
        setup.room_id
    );
    if std::io::stdin().is_terminal() {
        println!(
            "   or log in with any Matrix client (server URL above). Ctrl-C stops everything."
        );
        tokio::signal::ctrl_c().await?;
    }
    running.stop().await;
    Ok(())
}

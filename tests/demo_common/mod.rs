//! The demo's steps (examples/demo.rs runs them for the README's first command;
//! tests/demo.rs runs them on every Mumble server in CI): a local Synapse, a local
//! Mumble server and a local mosquitto on loopback, a room `#ops`, a Mumble channel
//! `Ops` and the MQTT topics `walkie/lobby/…`, and the bridge between them.
//!
//! 1. A Mumble user (`kilo`, a pymumble client) speaks: the transmission appears in
//!    the room as a voice message from the puppet `@walkie_mumble_kilo`.
//! 2. The Matrix user opts in with `!wt on` and posts a voice message: `kilo` hears
//!    it on Mumble, and the bot reacts ✅.
//! 3. An MQTT intercom (`door`) talks: `kilo` hears it on Mumble and it is archived
//!    in the room from the puppet `@walkie_mqtt_door`.

use std::time::Duration;

use crate::bridge_common::{self, is_voice_message_from, setup, SERVER};
use crate::common;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;
use walkie_endpoint::audio::encode_ogg_opus;
use walkie_endpoint::audio::{frames_of, OpusEncoder};
use walkie_harness::{Mosquitto, MumbleEvent, MumbleServer, MumbleTestClient, Murmur};

const WAIT: Duration = Duration::from_secs(30);

/// How much of the bridge's transmission (from the bot, `walkie`) `kilo` heard,
/// once it ended; `kilo` recorded since `record_start`.
async fn bridge_heard_ms(kilo: &MumbleTestClient, dir: &std::path::Path) -> anyhow::Result<u64> {
    kilo.wait_for_event(
        |e| matches!(e, MumbleEvent::VoiceEnd { user, .. } if user == "walkie"),
        WAIT,
    )
    .await?;
    let recording = kilo.record_stop(dir).await?;
    let heard = recording.get("walkie").map_or(0, |s| s.samples);
    Ok(heard as u64 * 1000 / 48_000)
}

/// Runs the demo against `server`; with `linger`, keeps everything running until
/// Ctrl-C once the steps are done (a terminal user looks around).
pub async fn run(server: MumbleServer, linger: bool) -> anyhow::Result<()> {
    println!(
        "== starting Synapse, {} and mosquitto on loopback, and the bridge",
        server.label()
    );
    let setup = setup().await;
    let murmur = Murmur::builder()
        .server(server)
        .channels(&["Ops"])
        .start()
        .await?;
    let broker = Mosquitto::builder().start().await?;
    let status_port = walkie_harness::free_port();
    let text = bridge_common::config_text_with(
        &setup.synapse.url(),
        setup.listen,
        setup.dir.path(),
        &murmur.address(),
    )
    .replace(
        r#"endpoints = ["mumble.ops"]"#,
        r#"endpoints = ["mumble.ops", "mqtt.lobby"]"#,
    ) + &*format!(
        "\n[mqtt.lobby]\nbroker = \"{}\"\nprefix = \"walkie/lobby\"\n\n[status]\nlisten = \"127.0.0.1:{status_port}\"\n",
        broker.url()
    );
    let config = bridge_common::load(&text);
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(walkie_bridge::daemon::run(config, shutdown.clone()));
    let kilo = MumbleTestClient::join(&murmur, "kilo", "Ops").await?;
    kilo.wait_for_users(|users| users.iter().any(|u| u == "walkie"), WAIT)
        .await?;
    println!(
        "   Synapse {} · room #ops:{SERVER} · {} {} channel Ops · mosquitto {} prefix walkie/lobby",
        setup.synapse.url(),
        server.label(),
        murmur.address(),
        broker.url(),
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
    let spoken_ms = speech.len() as u64 * 1000 / 48_000;
    println!("   (spoken: {spoken_ms} ms)");
    let archived_ms = content["info"]["duration"].as_u64().unwrap_or(0);
    anyhow::ensure!(
        archived_ms.abs_diff(spoken_ms) <= 200,
        "the voice message lasts {archived_ms} ms, kilo spoke {spoken_ms} ms"
    );

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
    let heard_ms = bridge_heard_ms(&kilo, dir.path()).await?;
    println!("   kilo heard {heard_ms} ms of audio from the bridge on Mumble");
    anyhow::ensure!(
        heard_ms.abs_diff(spoken_ms) <= 200,
        "kilo heard {heard_ms} ms of a {spoken_ms} ms voice message"
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

    println!("\n== 3. the intercom \"door\" talks over MQTT");
    // After a talk the floor keeps a reply window (`hang_ms`) for the other side;
    // an intercom that pressed inside it would be queued and lose its first words.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (intercom, mut eventloop) = AsyncClient::new(
        MqttOptions::new("demo-door", broker.host(), broker.port()),
        64,
    );
    let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    kilo.record_start().await?;
    intercom
        .publish(
            "walkie/lobby/in/door/start",
            QoS::AtLeastOnce,
            false,
            br#"{"talker":"Front door"}"#.to_vec(),
        )
        .await?;
    let mut encoder = OpusEncoder::new()?;
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for (seq, frame) in frames_of(&speech).enumerate() {
        pace.tick().await;
        let mut payload = (seq as u32).to_be_bytes().to_vec();
        payload.extend_from_slice(&encoder.encode(&frame)?);
        intercom
            .publish(
                "walkie/lobby/in/door/audio",
                QoS::AtMostOnce,
                false,
                payload,
            )
            .await?;
    }
    intercom
        .publish(
            "walkie/lobby/in/door/end",
            QoS::AtLeastOnce,
            false,
            Vec::new(),
        )
        .await?;
    let heard_ms = bridge_heard_ms(&kilo, dir.path()).await?;
    println!("   kilo heard {heard_ms} ms of the intercom on Mumble");
    anyhow::ensure!(
        heard_ms.abs_diff(spoken_ms) <= 200,
        "kilo heard {heard_ms} ms of the intercom's {spoken_ms} ms"
    );
    let door = format!("@walkie_mqtt_door:{SERVER}");
    let message = alice
        .sync_until(|e| is_voice_message_from(e, &door), WAIT)
        .await?;
    let archived_ms = message.content()["info"]["duration"].as_u64().unwrap_or(0);
    println!(
        "   voice message {} from {door}: {archived_ms} ms",
        message.event_id().unwrap_or("?"),
    );
    anyhow::ensure!(
        archived_ms.abs_diff(spoken_ms) <= 200,
        "the intercom's voice message lasts {archived_ms} ms, it spoke {spoken_ms} ms"
    );
    poller.abort();

    println!("\n== look at it yourself");
    println!("   homeserver   {}", setup.synapse.url());
    println!(
        "   user         {} / password {}",
        setup.alice.user_id, setup.alice.password
    );
    println!("   room         #ops:{SERVER}");
    println!(
        "   live talk    http://127.0.0.1:{}/live/ (log in as the user above; push to talk)",
        setup.listen
    );
    println!("   status       http://127.0.0.1:{status_port}/status and /metrics");
    println!(
        "   MQTT         mosquitto_sub -h {} -p {} -v -t 'walkie/lobby/#'",
        broker.host(),
        broker.port()
    );
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
    if linger {
        println!("   Ctrl-C stops everything.");
        tokio::signal::ctrl_c().await?;
    }
    shutdown.cancel();
    daemon.await??;
    Ok(())
}

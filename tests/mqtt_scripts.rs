//! The README's worked example, run as written: `examples/talk.sh` sends a WAV
//! file into a channel with sox + mosquitto_pub, `examples/record.sh` records the
//! channel into a WAV file with mosquitto_sub + sox.

#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use walkie_bridge::hub::{ChannelHub, FloorSettings};
use walkie_endpoint::audio::{frames_of, OpusDecoder, OpusEncoder};
use walkie_endpoint::{
    AudioFrame, Capabilities, Downlink, Endpoint, EndpointId, FloorEvent, HubLink, Priority,
    StreamKey, TalkKind, Talker,
};
use walkie_harness::{Mosquitto, MqttSubscriber};
use walkie_mqtt::{MqttEndpoint, MqttEndpointConfig, PayloadCodec, Secret};

const WAIT: Duration = Duration::from_secs(30);
const PREFIX: &str = "walkie/lobby";

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("bridges/mqtt/examples")
        .join(name)
}

struct Setup {
    broker: Mosquitto,
    listener: HubLink,
    shutdown: CancellationToken,
    mqtt_opts: String,
    dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let broker = Mosquitto::builder()
        .credentials("panel", "secret")
        // Subscriptions are logged, so the test knows when record.sh listens.
        .config("log_type subscribe")
        .start()
        .await
        .expect("mosquitto starts");
    let mut config =
        MqttEndpointConfig::from_url(&broker.url(), PREFIX, "walkie-bridge").expect("URL");
    config.username = Some("panel".into());
    config.password = Some(Secret::new("secret"));
    config.payload = PayloadCodec::Pcm16;
    let endpoint = MqttEndpoint::new(EndpointId::new("mqtt.lobby"), config).expect("config");
    let mut hub = ChannelHub::new("lobby", FloorSettings::default());
    let link = hub
        .attach(endpoint.id().clone(), endpoint.capabilities())
        .expect("attach");
    let listener = hub
        .attach(EndpointId::new("test.radio"), Capabilities::default())
        .expect("attach");
    let shutdown = CancellationToken::new();
    tokio::spawn(hub.run(shutdown.clone()));
    let mut status = MqttSubscriber::start(&broker, &[&format!("{PREFIX}/status")])
        .await
        .expect("subscriber");
    let token = shutdown.clone();
    tokio::spawn(async move {
        let _ = Box::new(endpoint).run(link, token).await;
    });
    status
        .wait_for(|m| m.text() == "online", WAIT)
        .await
        .expect("bridge online");
    let mqtt_opts = format!("-h 127.0.0.1 -p {} -u panel -P secret", broker.port());
    Setup {
        broker,
        listener,
        shutdown,
        mqtt_opts,
        dir: tempfile::tempdir().expect("temp dir"),
    }
}

fn command(setup: &Setup, name: &str, extra_opts: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(script(name));
    command
        .env("PREFIX", PREFIX)
        .env("MQTT_OPTS", format!("{} {extra_opts}", setup.mqtt_opts))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talk_sh_sends_a_wav_file_into_the_channel() {
    let mut setup = setup().await;
    let speech16 = common::speech(16_000);
    let wav = setup.dir.path().join("speech.wav");
    common::write_wav(&wav, &speech16, 16_000);
    let mut talk = command(&setup, "talk.sh", "");
    talk.arg(&wav).arg("porch").arg("Porch");
    let run = async {
        let output = talk.output().await.expect("talk.sh runs");
        assert!(
            output.status.success(),
            "talk.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let hear = async {
        let mut decoder = OpusDecoder::new().expect("decoder");
        let mut pcm = Vec::new();
        let mut talker = None;
        loop {
            match tokio::time::timeout(WAIT, setup.listener.recv()).await {
                Ok(Ok(Downlink::Floor(FloorEvent::Taken { talker: t, .. }))) => talker = Some(t),
                Ok(Ok(Downlink::Audio(frame))) => {
                    pcm.extend(decoder.decode(&frame.frame.opus).expect("Opus"))
                }
                Ok(Ok(Downlink::Floor(FloorEvent::Released { .. }))) => break,
                Ok(Ok(_)) => {}
                other => panic!("talk.sh's talk did not arrive: {other:?}"),
            }
        }
        (talker, pcm)
    };
    let ((), (talker, pcm)) = tokio::join!(run, hear);
    assert_eq!(
        talker.map(|t| t.display_name).as_deref(),
        Some("Porch (Intercom)")
    );
    let speech48 = common::speech(48_000);
    let heard_ms = pcm.len() as i64 / 48;
    let spoken_ms = speech48.len() as i64 / 48;
    let (_, correlation) = common::best_lag(&speech48, &pcm, -2000..=2000);
    eprintln!("talk.sh: {heard_ms} ms of {spoken_ms} ms, correlation {correlation:.3}");
    assert!(
        (heard_ms - spoken_ms).abs() <= 60,
        "{heard_ms} ms of {spoken_ms} ms"
    );
    assert!(correlation > 0.85, "correlation {correlation:.3}");
    setup.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_sh_records_the_channel_into_a_wav_file() {
    let setup = setup().await;
    let out = setup.dir.path().join("recording.wav");
    let mut record = command(&setup, "record.sh", "-i recorder");
    record.arg(&out);
    let recording = record.spawn().expect("record.sh starts");
    // Polls the broker's log (a condition, not a guess at a duration) until
    // record.sh's mosquitto_sub has subscribed.
    let log = setup.broker.log_path().to_owned();
    tokio::time::timeout(WAIT, async {
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(&format!("recorder 1 {PREFIX}/out/end")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("record.sh never subscribed:\n{}", setup.broker.log_tail(30)));

    let speech48 = common::speech(48_000);
    let mut encoder = OpusEncoder::new().expect("encoder");
    let packets: Vec<_> = frames_of(&speech48)
        .map(|f| encoder.encode(&f).expect("encode"))
        .collect();
    let stream = StreamKey(1);
    setup
        .listener
        .talk_start(
            stream,
            Talker::new("kilo", "kilo (Radio)"),
            Priority::Normal,
            TalkKind::Live,
        )
        .await
        .expect("hub");
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for (seq, packet) in packets.iter().enumerate() {
        pace.tick().await;
        setup
            .listener
            .audio(stream, AudioFrame::opus(seq as u32, packet.clone()))
            .expect("hub");
    }
    setup.listener.talk_end(stream).await.expect("hub");
    let output = tokio::time::timeout(WAIT, recording.wait_with_output())
        .await
        .expect("record.sh stops at out/end")
        .expect("record.sh runs");
    assert!(
        output.status.success(),
        "record.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (pcm, rate) = common::read_wav(&out);
    assert_eq!(rate, 16_000);
    let speech16 = common::speech(16_000);
    let heard_ms = pcm.len() as i64 / 16;
    let spoken_ms = speech16.len() as i64 / 16;
    let level = common::energy_db(&pcm) - common::energy_db(&speech16);
    let (_, correlation) = common::best_lag(&speech16, &pcm, -700..=700);
    eprintln!("record.sh: {heard_ms} ms of {spoken_ms} ms, level {level:+.2} dB, correlation {correlation:.3}");
    assert!(
        (heard_ms - spoken_ms).abs() <= 60,
        "{heard_ms} ms of {spoken_ms} ms"
    );
    assert!(level.abs() < 2.0, "level {level:+.2} dB");
    assert!(correlation > 0.85, "correlation {correlation:.3}");
    setup.shutdown.cancel();
}

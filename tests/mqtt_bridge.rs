//! The MQTT endpoint on a real mosquitto, with mosquitto_pub/mosquitto_sub as the
//! intercoms and a channel hub with test endpoints as "everyone else".

#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use walkie_bridge::hub::{ChannelHub, FloorSettings, HubStats};
use walkie_endpoint::audio::{frames_of, OpusDecoder, OpusEncoder};
use walkie_endpoint::{
    AudioFrame, Capabilities, Downlink, Endpoint, EndpointId, FloorEvent, HubLink, Priority,
    ReleaseReason, StreamKey, TalkKind, Talker,
};
use walkie_harness::{mqtt_publish, Mosquitto, MqttClientOptions, MqttMessage, MqttSubscriber};
use walkie_mqtt::transcode::PCM16_FRAME_BYTES;
use walkie_mqtt::{MqttEndpoint, MqttEndpointConfig, PayloadCodec, Secret};

const WAIT: Duration = Duration::from_secs(20);
const PREFIX: &str = "walkie/test";
const USER: &str = "walkie";
const PASSWORD: &str = "s3cret";

struct Bridge {
    broker: Mosquitto,
    /// "Everyone else" on the channel: talks and listens like a radio would.
    listener: HubLink,
    stats: Arc<HubStats>,
    shutdown: CancellationToken,
    hub: tokio::task::JoinHandle<()>,
    endpoint: tokio::task::JoinHandle<()>,
}

struct Options {
    codec: PayloadCodec,
    floor: FloorSettings,
    tls: bool,
    /// Devices allowed above the endpoint's `max_priority` (normal).
    device_max_priority: Vec<(&'static str, Priority)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            codec: PayloadCodec::Opus,
            floor: FloorSettings::default(),
            tls: false,
            device_max_priority: Vec::new(),
        }
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn endpoint_config(broker: &Mosquitto, options: &Options) -> MqttEndpointConfig {
    let url = if options.tls {
        broker.tls_url().expect("broker has TLS")
    } else {
        broker.url()
    };
    let mut config =
        MqttEndpointConfig::from_url(&url, PREFIX, "walkie-bridge-test").expect("broker URL");
    config.username = Some(USER.into());
    config.password = Some(Secret::new(PASSWORD));
    config.ca_file = broker.ca_file().map(ToOwned::to_owned);
    config.payload = options.codec;
    config.ha_discovery = true;
    config.keep_alive = Duration::from_secs(5);
    config.reconnect_cap = Duration::from_secs(2);
    config.device_max_priority = options
        .device_max_priority
        .iter()
        .map(|(device, p)| ((*device).to_owned(), *p))
        .collect();
    config
}

async fn start_bridge(options: Options) -> Bridge {
    init_tracing();
    let mut builder = Mosquitto::builder().credentials(USER, PASSWORD);
    if options.tls {
        builder = builder.tls();
    }
    let broker = builder.start().await.expect("mosquitto starts");
    let endpoint = MqttEndpoint::new(
        EndpointId::new("mqtt.test"),
        endpoint_config(&broker, &options),
    )
    .expect("valid config");
    let mut hub = ChannelHub::new("test", options.floor);
    let mqtt_link = hub
        .attach(endpoint.id().clone(), endpoint.capabilities())
        .expect("attach");
    let listener = hub
        .attach(EndpointId::new("test.radio"), Capabilities::default())
        .expect("attach");
    let stats = hub.stats();
    let shutdown = CancellationToken::new();
    let hub_task = tokio::spawn(hub.run(shutdown.clone()));
    // Watch for "online" before the endpoint starts, so the retained message of
    // an earlier run cannot be mistaken for this one.
    let mut status = MqttSubscriber::start(&broker, &[&format!("{PREFIX}/status")])
        .await
        .expect("subscriber");
    let token = shutdown.clone();
    let endpoint_task = tokio::spawn(async move {
        Box::new(endpoint)
            .run(mqtt_link, token)
            .await
            .expect("endpoint ends cleanly");
    });
    status
        .wait_for(|m| m.text() == "online", WAIT)
        .await
        .expect("the bridge comes online");
    Bridge {
        broker,
        listener,
        stats,
        shutdown,
        hub: hub_task,
        endpoint: endpoint_task,
    }
}

impl Bridge {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.endpoint)
            .await
            .expect("endpoint stops")
            .expect("no panic");
        tokio::time::timeout(WAIT, self.hub)
            .await
            .expect("hub stops")
            .expect("no panic");
    }

    async fn subscribe(&self, topics: &[&str]) -> MqttSubscriber {
        MqttSubscriber::start(&self.broker, topics)
            .await
            .expect("subscriber")
    }

    /// Publishes `payload` on a device's topic (`{prefix}/in/{device}/{last}`) at
    /// QoS 1, as a device would.
    async fn device_says(&self, device: &str, last: &str, payload: &[u8]) {
        mqtt_publish(&self.broker, &device_topic(device, last), payload, 1, false)
            .await
            .unwrap_or_else(|e| panic!("{device} {last}: {e}"));
    }

    /// The listener takes the floor as "kilo (Radio)".
    async fn listener_takes_floor(&mut self, stream: StreamKey) {
        self.listener
            .talk_start(
                stream,
                Talker::new("kilo", "kilo (Radio)"),
                Priority::Normal,
                TalkKind::Live,
            )
            .await
            .expect("hub running");
        loop {
            match tokio::time::timeout(WAIT, self.listener.recv()).await {
                Ok(Ok(Downlink::Floor(FloorEvent::Granted { .. }))) => return,
                Ok(Ok(_)) => continue,
                other => panic!("no grant: {other:?}"),
            }
        }
    }
}

/// The next message on `subscriber`, as JSON (floor answers and state).
async fn next_json(subscriber: &mut MqttSubscriber) -> serde_json::Value {
    subscriber
        .next(WAIT)
        .await
        .expect("a message")
        .json()
        .expect("JSON")
}

fn device_topic(device: &str, last: &str) -> String {
    format!("{PREFIX}/in/{device}/{last}")
}

fn framed(seq: u32, audio: &[u8]) -> Vec<u8> {
    let mut payload = seq.to_be_bytes().to_vec();
    payload.extend_from_slice(audio);
    payload
}

/// A device talks as firmware would: start, frames paced at 20 ms, end. Each
/// publish is a separate mosquitto_pub, as in the README's example.
async fn device_talks(broker: &Mosquitto, device: &str, start: &str, frames: &[Vec<u8>]) {
    mqtt_publish(
        broker,
        &device_topic(device, "start"),
        start.as_bytes(),
        1,
        false,
    )
    .await
    .expect("start published");
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for (seq, frame) in frames.iter().enumerate() {
        pace.tick().await;
        mqtt_publish(
            broker,
            &device_topic(device, "audio"),
            &framed(seq as u32, frame),
            0,
            false,
        )
        .await
        .expect("frame published");
    }
    mqtt_publish(broker, &device_topic(device, "end"), b"", 1, false)
        .await
        .expect("end published");
}

/// Everything the listener hears of one transmission: talker, packets, PCM.
async fn hear_one(link: &mut HubLink) -> (Talker, Vec<bytes::Bytes>, Vec<i16>) {
    let mut decoder = OpusDecoder::new().expect("decoder");
    let mut talker = None;
    let mut packets = Vec::new();
    let mut pcm = Vec::new();
    loop {
        let down = tokio::time::timeout(WAIT, link.recv())
            .await
            .expect("the transmission arrives in time")
            .expect("hub running");
        match down {
            Downlink::Floor(FloorEvent::Taken { talker: t, .. }) => talker = Some(t),
            Downlink::Audio(frame) => {
                pcm.extend(decoder.decode(&frame.frame.opus).expect("valid Opus"));
                packets.push(frame.frame.opus);
            }
            Downlink::Floor(FloorEvent::Released { .. }) if talker.is_some() => {
                return (talker.expect("taken before released"), packets, pcm);
            }
            Downlink::Floor(_) => {}
        }
    }
}

fn pcm16_frames(pcm: &[i16]) -> Vec<Vec<u8>> {
    pcm.chunks(PCM16_FRAME_BYTES / 2)
        .map(|chunk| {
            let mut frame: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
            frame.resize(PCM16_FRAME_BYTES, 0);
            frame
        })
        .collect()
}

fn opus_packets(pcm: &[i16]) -> Vec<Vec<u8>> {
    let mut encoder = OpusEncoder::new().expect("encoder");
    frames_of(pcm)
        .map(|f| encoder.encode(&f).expect("encode").to_vec())
        .collect()
}

fn assert_same_speech(reference: &[i16], heard: &[i16], rate: u32, what: &str) {
    let spoken_ms = reference.len() as i64 * 1000 / i64::from(rate);
    let heard_ms = heard.len() as i64 * 1000 / i64::from(rate);
    let level = common::energy_db(heard) - common::energy_db(reference);
    let range = rate as isize / 24;
    let (lag, correlation) = common::best_lag(reference, heard, -range..=range);
    eprintln!(
        "{what}: {heard_ms} ms of {spoken_ms} ms, level {level:+.2} dB, correlation {correlation:.3} at lag {lag}"
    );
    assert!(
        (heard_ms - spoken_ms).abs() <= 60,
        "{what}: heard {heard_ms} ms of {spoken_ms} ms"
    );
    assert!(level.abs() < 2.0, "{what}: level changed by {level:.2} dB");
    assert!(
        correlation > 0.85,
        "{what}: what arrived is not what was said ({correlation:.3})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pcm16_talk_from_mosquitto_pub_reaches_the_channel_intact() {
    let mut bridge = start_bridge(Options {
        codec: PayloadCodec::Pcm16,
        ..Options::default()
    })
    .await;
    let speech16 = common::speech(16_000);
    let speech48 = common::speech(48_000);
    let frames = pcm16_frames(&speech16);
    let mut floor = bridge.subscribe(&[&format!("{PREFIX}/floor")]).await;
    let mut answers = bridge.subscribe(&[&device_topic("door", "floor")]).await;
    let (_, heard) = tokio::join!(
        device_talks(
            &bridge.broker,
            "door",
            r#"{"talker":"Front door"}"#,
            &frames
        ),
        hear_one(&mut bridge.listener)
    );
    let (talker, packets, pcm) = heard;
    assert_eq!(talker.name, "door");
    assert_eq!(talker.display_name, "Front door (Intercom)");
    eprintln!(
        "{} pcm16 frames sent, {} Opus packets heard",
        frames.len(),
        packets.len()
    );
    assert_same_speech(&speech48, &pcm, 48_000, "pcm16 in");
    let granted = next_json(&mut answers).await;
    assert_eq!(granted["result"], "granted", "{granted}");
    let taken = floor
        .wait_for(|m| m.json().is_some_and(|v| v["state"] == "taken"), WAIT)
        .await
        .expect("floor taken")
        .json()
        .expect("JSON");
    assert_eq!(taken["talker"], "Front door (Intercom)");
    assert_eq!(taken["source"], "mqtt.test");
    assert_eq!(taken["tx_id"], granted["tx_id"]);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_goes_silent_is_released_after_idle_release() {
    let mut bridge = start_bridge(Options::default()).await;
    let mut answers = bridge.subscribe(&[&device_topic("door", "floor")]).await;
    let packets = opus_packets(&common::speech(48_000)[..48_000]);
    bridge.device_says("door", "start", b"").await;
    for (seq, packet) in packets.iter().take(5).enumerate() {
        mqtt_publish(
            &bridge.broker,
            &device_topic("door", "audio"),
            &framed(seq as u32, packet),
            0,
            false,
        )
        .await
        .expect("frame");
    }
    // No `end`: the device died mid-talk.
    let granted = next_json(&mut answers).await;
    assert_eq!(granted["result"], "granted", "{granted}");
    let silent_from = Instant::now();
    let released = next_json(&mut answers).await;
    let after = silent_from.elapsed();
    assert_eq!(released["result"], "released", "{released}");
    assert_eq!(released["reason"], "idle_timeout");
    eprintln!("released {after:?} after the last frame was acknowledged");
    assert!(
        after >= Duration::from_millis(1200),
        "released too early: {after:?}"
    );
    loop {
        match tokio::time::timeout(WAIT, bridge.listener.recv()).await {
            Ok(Ok(Downlink::Floor(FloorEvent::Released { .. }))) => break,
            Ok(Ok(_)) => {}
            other => panic!("the silent talk was not released: {other:?}"),
        }
    }
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opus_talk_from_mosquitto_pub_reaches_the_channel_untouched() {
    let mut bridge = start_bridge(Options::default()).await;
    let speech = common::speech(48_000);
    let packets = opus_packets(&speech);
    let (_, heard) = tokio::join!(
        device_talks(&bridge.broker, "kitchen", "", &packets),
        hear_one(&mut bridge.listener)
    );
    let (talker, heard_packets, pcm) = heard;
    assert_eq!(talker.display_name, "kitchen (Intercom)");
    let heard_packets: Vec<Vec<u8>> = heard_packets.iter().map(|p| p.to_vec()).collect();
    assert_eq!(heard_packets.len(), packets.len(), "frames lost or added");
    assert!(
        heard_packets == packets,
        "Opus packets were changed on the way"
    );
    assert_same_speech(&speech, &pcm, 48_000, "opus in");
    bridge.stop().await;
}

/// What a subscriber on `out/#` got of one transmission.
struct Received {
    start: Value,
    frames: Vec<(u32, Vec<u8>)>,
    end: Value,
}

async fn receive_transmission(sub: &mut MqttSubscriber) -> Received {
    let start = sub
        .wait_for(|m| m.topic.ends_with("/out/start"), WAIT)
        .await
        .expect("out/start");
    assert_eq!(start.qos, 1, "control travels at QoS 1");
    let start = start.json().expect("start is JSON");
    let mut frames = Vec::new();
    loop {
        let message = sub.next(WAIT).await.expect("out/audio or out/end");
        if message.topic.ends_with("/out/end") {
            assert_eq!(message.qos, 1, "control travels at QoS 1");
            let end = message.json().expect("end is JSON");
            return Received { start, frames, end };
        }
        if message.topic.ends_with("/out/audio") {
            assert_eq!(message.qos, 0, "audio travels at QoS 0");
            assert!(message.payload.len() > 4, "audio without a sequence number");
            let seq = u32::from_be_bytes(message.payload[..4].try_into().expect("4 bytes"));
            frames.push((seq, message.payload[4..].to_vec()));
        }
    }
}

async fn listener_sends(bridge: &mut Bridge, packets: &[Vec<u8>]) {
    let stream = StreamKey(7);
    bridge.listener_takes_floor(stream).await;
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for (seq, packet) in packets.iter().enumerate() {
        pace.tick().await;
        bridge
            .listener
            .audio(stream, AudioFrame::opus(seq as u32, packet.clone()))
            .expect("hub running");
    }
    bridge.listener.talk_end(stream).await.expect("hub running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channels_opus_reaches_a_subscriber_byte_identical_and_in_order() {
    let mut bridge = start_bridge(Options::default()).await;
    let mut sub = bridge.subscribe(&[&format!("{PREFIX}/out/#")]).await;
    let packets = opus_packets(&common::speech(48_000));
    listener_sends(&mut bridge, &packets).await;
    let received = receive_transmission(&mut sub).await;
    assert_eq!(received.start["talker"], "kilo (Radio)");
    assert_eq!(received.start["source"], "test.radio");
    assert_eq!(received.start["codec"], "opus");
    assert_eq!(received.start["sample_rate"], 48_000);
    assert_eq!(received.start["frame_ms"], 20);
    assert_eq!(received.end["tx_id"], received.start["tx_id"]);
    assert_eq!(received.end["reason"], "talker_done");
    let seqs: Vec<u32> = received.frames.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (0..packets.len() as u32).collect::<Vec<_>>());
    let payloads: Vec<Vec<u8>> = received.frames.into_iter().map(|(_, p)| p).collect();
    assert!(
        payloads == packets,
        "Opus packets were changed on the way out"
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channels_audio_reaches_a_pcm16_subscriber_as_640_byte_frames() {
    let mut bridge = start_bridge(Options {
        codec: PayloadCodec::Pcm16,
        ..Options::default()
    })
    .await;
    let mut sub = bridge.subscribe(&[&format!("{PREFIX}/out/#")]).await;
    let speech48 = common::speech(48_000);
    let speech16 = common::speech(16_000);
    listener_sends(&mut bridge, &opus_packets(&speech48)).await;
    let received = receive_transmission(&mut sub).await;
    assert_eq!(received.start["codec"], "pcm16");
    assert_eq!(received.start["sample_rate"], 16_000);
    let seqs: Vec<u32> = received.frames.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (0..seqs.len() as u32).collect::<Vec<_>>());
    assert!(received
        .frames
        .iter()
        .all(|(_, f)| f.len() == PCM16_FRAME_BYTES));
    let pcm: Vec<i16> = received
        .frames
        .iter()
        .flat_map(|(_, f)| f.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])))
        .collect();
    assert_same_speech(&speech16, &pcm, 16_000, "pcm16 out");
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_talking_over_the_floor_holder_is_denied_and_not_heard() {
    let mut bridge = start_bridge(Options {
        floor: FloorSettings {
            queue: false,
            ..FloorSettings::default()
        },
        ..Options::default()
    })
    .await;
    let mut answers = bridge.subscribe(&[&device_topic("door", "floor")]).await;
    let stream = StreamKey(3);
    bridge.listener_takes_floor(stream).await;
    let packets = opus_packets(&common::speech(48_000)[..48_000]);
    device_talks(&bridge.broker, "door", "", &packets).await;
    let answer = answers.next(WAIT).await.expect("the door hears back");
    assert_eq!(answer.qos, 1);
    let answer = answer.json().expect("JSON answer");
    assert_eq!(answer["result"], "denied", "{answer}");
    assert_eq!(answer["reason"], "busy");
    assert_eq!(answer["holder"], "kilo (Radio)");
    bridge.listener.talk_end(stream).await.expect("hub running");
    // Until the floor is idle again nothing but the listener's own talk was on
    // the channel: no grant, no frame from the door.
    loop {
        match tokio::time::timeout(WAIT, bridge.listener.recv()).await {
            Ok(Ok(Downlink::Floor(FloorEvent::Idle))) => break,
            Ok(Ok(Downlink::Floor(FloorEvent::Released { .. }))) => continue,
            other => panic!("something else reached the channel: {other:?}"),
        }
    }
    assert_eq!(bridge.stats.grants.load(Ordering::Relaxed), 1);
    assert_eq!(bridge.stats.frames_forwarded.load(Ordering::Relaxed), 0);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_talking_over_the_floor_holder_is_queued_with_the_holder_named() {
    let mut bridge = start_bridge(Options::default()).await;
    let mut answers = bridge.subscribe(&[&device_topic("door", "floor")]).await;
    let stream = StreamKey(3);
    bridge.listener_takes_floor(stream).await;
    bridge.device_says("door", "start", b"{}").await;
    let answer = next_json(&mut answers).await;
    assert_eq!(answer["result"], "queued", "{answer}");
    assert_eq!(answer["position"], 1);
    assert_eq!(answer["holder"], "kilo (Radio)");
    // Frames sent while queued are refused by the hub, not forwarded.
    for seq in 0..10u32 {
        mqtt_publish(
            &bridge.broker,
            &device_topic("door", "audio"),
            &framed(seq, &[0xf8, 0xff, 0xfe]),
            0,
            false,
        )
        .await
        .expect("frame");
    }
    bridge.device_says("door", "end", b"").await;
    // A second device queues behind: position 1 proves the door left the queue
    // (the bridge and the hub take messages in order), so what follows the
    // release can only be the second device's grant.
    let mut porch_answers = bridge.subscribe(&[&device_topic("porch", "floor")]).await;
    bridge.device_says("porch", "start", b"").await;
    let answer = next_json(&mut porch_answers).await;
    assert_eq!(answer["result"], "queued", "{answer}");
    assert_eq!(answer["position"], 1, "the door is still queued: {answer}");
    bridge.listener.talk_end(stream).await.expect("hub running");
    loop {
        match tokio::time::timeout(WAIT, bridge.listener.recv()).await {
            Ok(Ok(Downlink::Floor(FloorEvent::Taken { talker, .. }))) => {
                assert_eq!(talker.name, "porch", "the door was granted after its end");
                break;
            }
            Ok(Ok(Downlink::Floor(FloorEvent::Released { .. }))) => continue,
            other => panic!("something else reached the channel: {other:?}"),
        }
    }
    let granted = next_json(&mut porch_answers).await;
    assert_eq!(granted["result"], "granted", "{granted}");
    assert_eq!(bridge.stats.frames_forwarded.load(Ordering::Relaxed), 0);
    bridge.stop().await;
}

fn is_floor(m: &MqttMessage) -> bool {
    m.topic == format!("{PREFIX}/floor")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subscriber_sees_the_retained_floor_state() {
    let mut bridge = start_bridge(Options::default()).await;
    let topic = format!("{PREFIX}/floor");
    let mut live = bridge.subscribe(&[&topic]).await;
    let idle = live.next(WAIT).await.expect("retained floor");
    assert!(idle.retained);
    assert_eq!(
        idle.json().expect("JSON"),
        serde_json::json!({"state": "idle"})
    );

    let stream = StreamKey(9);
    bridge.listener_takes_floor(stream).await;
    // Once the live subscriber has seen the change, the broker holds it.
    let taken = live
        .wait_for(|m| m.json().is_some_and(|v| v["state"] == "taken"), WAIT)
        .await
        .expect("floor taken");
    let mut late = bridge.subscribe(&[&topic]).await;
    let retained = late.next(WAIT).await.expect("retained floor");
    assert!(retained.retained, "not a retained message");
    assert_eq!(retained.payload, taken.payload);
    let state = retained.json().expect("JSON");
    assert_eq!(state["talker"], "kilo (Radio)");
    assert_eq!(state["source"], "test.radio");
    assert!(state["tx_id"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(state["since_ts"]
        .as_u64()
        .is_some_and(|t| t > 1_600_000_000_000));

    bridge.listener.talk_end(stream).await.expect("hub running");
    live.wait_for(|m| m.json().is_some_and(|v| v["state"] == "idle"), WAIT)
        .await
        .expect("floor idle again");
    let mut later = bridge.subscribe(&[&topic]).await;
    let retained = later
        .wait_for(is_floor, WAIT)
        .await
        .expect("retained floor");
    assert!(retained.retained);
    assert_eq!(
        retained.json().expect("JSON"),
        serde_json::json!({"state": "idle"})
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_ends_talks_cleanly_and_the_bridge_works_again_within_10_s() {
    let mut bridge = start_bridge(Options::default()).await;
    let packets = opus_packets(&common::speech(48_000));

    // A device is mid-talk when the broker dies.
    bridge.device_says("door", "start", b"").await;
    for (seq, packet) in packets.iter().take(10).enumerate() {
        mqtt_publish(
            &bridge.broker,
            &device_topic("door", "audio"),
            &framed(seq as u32, packet),
            0,
            false,
        )
        .await
        .expect("frame");
    }
    let mut frames = 0;
    while frames < 10 {
        match tokio::time::timeout(WAIT, bridge.listener.recv()).await {
            Ok(Ok(Downlink::Audio(_))) => frames += 1,
            Ok(Ok(_)) => {}
            other => panic!("the door's talk did not arrive: {other:?}"),
        }
    }
    let cut = Instant::now();
    bridge.broker.kill().expect("kill mosquitto");
    loop {
        match tokio::time::timeout(WAIT, bridge.listener.recv()).await {
            Ok(Ok(Downlink::Floor(FloorEvent::Released { reason, .. }))) => {
                assert_eq!(reason, ReleaseReason::TalkerDone);
                break;
            }
            Ok(Ok(_)) => {}
            other => panic!("the door's talk was not ended: {other:?}"),
        }
    }
    eprintln!("talk ended {:?} after the broker was killed", cut.elapsed());

    bridge
        .broker
        .start_again()
        .await
        .expect("mosquitto starts again");
    let restarted = Instant::now();
    let mut status = bridge.subscribe(&[&format!("{PREFIX}/status")]).await;
    status
        .wait_for(|m| m.text() == "online", WAIT)
        .await
        .expect("the bridge is back online");
    let online = restarted.elapsed();
    // And it works: a new talk from a device reaches the channel.
    let (_, heard) = tokio::join!(
        device_talks(&bridge.broker, "door", "", &packets[..25]),
        hear_one(&mut bridge.listener)
    );
    let working = restarted.elapsed();
    eprintln!("after the restart: online in {online:?}, a talk got through in {working:?}");
    assert_eq!(heard.1.len(), 25);
    assert!(
        online < Duration::from_secs(10),
        "back online only after {online:?}"
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_ends_an_outgoing_transmission_with_an_end() {
    let mut bridge = start_bridge(Options::default()).await;
    let observer = MqttClientOptions::for_broker(&bridge.broker)
        .client_id("observer")
        .persistent_session();
    let mut sub =
        MqttSubscriber::start_with(&bridge.broker, &[&format!("{PREFIX}/out/#")], observer)
            .await
            .expect("subscriber");
    let stream = StreamKey(5);
    bridge.listener_takes_floor(stream).await;
    let start = sub
        .wait_for(|m| m.topic.ends_with("/out/start"), WAIT)
        .await
        .expect("out/start")
        .json()
        .expect("JSON");
    bridge.broker.stop().await.expect("mosquitto stops");
    bridge
        .broker
        .start_again()
        .await
        .expect("mosquitto starts again");
    let end = sub
        .wait_for(|m| m.topic.ends_with("/out/end"), WAIT)
        .await
        .expect("out/end after the restart")
        .json()
        .expect("JSON");
    assert_eq!(end["tx_id"], start["tx_id"]);
    assert_eq!(end["reason"], "bridge_reconnected");
    bridge.listener.talk_end(stream).await.expect("hub running");
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_discovery_is_valid_and_republished_when_home_assistant_restarts() {
    let bridge = start_bridge(Options::default()).await;
    let mut sub = bridge.subscribe(&["homeassistant/+/+/config"]).await;
    let mut configs = Vec::new();
    for _ in 0..3 {
        let message = sub.next(WAIT).await.expect("discovery config");
        assert!(message.retained, "{} is not retained", message.topic);
        let config = message
            .json()
            .unwrap_or_else(|| panic!("{} is not JSON: {}", message.topic, message.text()));
        configs.push((message.topic, config));
    }
    configs.sort_by(|a, b| a.0.cmp(&b.0));
    let components: Vec<&str> = configs
        .iter()
        .map(|(t, _)| t.split('/').nth(1).expect("component"))
        .collect();
    assert_eq!(components, ["binary_sensor", "button", "sensor"]);
    for (topic, config) in &configs {
        for field in ["name", "unique_id", "availability_topic", "device"] {
            assert!(!config[field].is_null(), "{topic} lacks {field}");
        }
        assert_eq!(config["availability_topic"], format!("{PREFIX}/status"));
        assert_eq!(config["payload_available"], "online");
        assert_eq!(config["payload_not_available"], "offline");
    }
    assert_eq!(configs[0].1["state_topic"], format!("{PREFIX}/floor"));
    assert_eq!(configs[2].1["state_topic"], format!("{PREFIX}/floor"));
    assert_eq!(
        configs[1].1["command_topic"],
        format!("{PREFIX}/ha/test_tone")
    );
    let mut ids: Vec<&str> = configs
        .iter()
        .map(|(_, c)| c["unique_id"].as_str().expect("string id"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "unique ids are not unique");

    mqtt_publish(&bridge.broker, "homeassistant/status", b"online", 1, false)
        .await
        .expect("HA birth");
    for _ in 0..3 {
        let again = sub.next(WAIT).await.expect("discovery re-published");
        assert!(again.topic.ends_with("/config"));
        assert!(!again.retained, "a live re-publish, not the retained copy");
    }
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_tone_button_transmits_two_seconds_of_1_khz() {
    let mut bridge = start_bridge(Options::default()).await;
    let mut out = bridge.subscribe(&[&format!("{PREFIX}/out/#")]).await;
    mqtt_publish(
        &bridge.broker,
        &format!("{PREFIX}/ha/test_tone"),
        b"PRESS",
        1,
        false,
    )
    .await
    .expect("button press");
    let (talker, packets, pcm) = hear_one(&mut bridge.listener).await;
    assert_eq!(talker.display_name, "test tone");
    assert_eq!(packets.len(), 100, "2 s of 20 ms frames");
    let steady = &pcm[4800..pcm.len() - 4800];
    let rms_dbfs = common::energy_db(steady);
    // −12 dBFS peak is −15 dBFS RMS for a sine.
    assert!(
        (rms_dbfs + 15.0).abs() < 1.0,
        "tone at {rms_dbfs:.1} dBFS RMS"
    );
    let crossings = steady
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count();
    let hz = crossings as f64 / 2.0 / (steady.len() as f64 / 48_000.0);
    assert!((hz - 1000.0).abs() < 20.0, "tone at {hz:.0} Hz");
    // The bridge's own intercoms hear it too (the hub never echoes it to them).
    let received = receive_transmission(&mut out).await;
    assert_eq!(received.start["talker"], "test tone");
    assert_eq!(received.frames.len(), 100);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_goes_offline_by_last_will_when_the_bridge_dies() {
    let bridge = start_bridge(Options::default()).await;
    let mut status = bridge.subscribe(&[&format!("{PREFIX}/status")]).await;
    let online = status.next(WAIT).await.expect("retained status");
    assert!(online.retained);
    assert_eq!(online.text(), "online");
    // Killed without a goodbye: only the broker's will can say so.
    bridge.endpoint.abort();
    let offline = status.next(WAIT).await.expect("the will");
    assert_eq!(offline.text(), "offline");
    assert_eq!(offline.qos, 1);
    let mut late = bridge.subscribe(&[&format!("{PREFIX}/status")]).await;
    let retained = late.next(WAIT).await.expect("retained status");
    assert!(retained.retained);
    assert_eq!(retained.text(), "offline");
    bridge.shutdown.cancel();
    let _ = bridge.hub.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_says_offline_and_leaves_the_floor_idle() {
    let bridge = start_bridge(Options::default()).await;
    let broker_url = bridge.broker.url();
    let mut sub = bridge
        .subscribe(&[&format!("{PREFIX}/status"), &format!("{PREFIX}/floor")])
        .await;
    sub.wait_for(|m| m.text() == "online", WAIT)
        .await
        .expect("online");
    let shutdown = bridge.shutdown.clone();
    shutdown.cancel();
    let offline = sub
        .wait_for(
            |m| m.topic.ends_with("/status") && m.text() == "offline",
            WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("no offline from {broker_url}: {e}"));
    assert!(!offline.retained);
    let _ = bridge.endpoint.await;
    let _ = bridge.hub.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_connects_over_tls_with_a_ca_file_and_a_login() {
    // start_bridge waits for "online", which the bridge publishes only once
    // connected through mqtts:// with the harness's CA and credentials.
    let bridge = start_bridge(Options {
        tls: true,
        ..Options::default()
    })
    .await;
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_dropped_and_the_bridge_keeps_working() {
    let mut bridge = start_bridge(Options {
        codec: PayloadCodec::Pcm16,
        ..Options::default()
    })
    .await;
    for (topic, payload) in [
        (device_topic("door", "start"), &b"{not json"[..]),
        (device_topic("door", "audio"), &b"\x00\x01"[..]),
        (device_topic("door", "audio"), &b"\x00\x00\x00\x01short"[..]),
        (device_topic("d\u{f6}r", "audio"), &b"\x00\x00\x00\x01"[..]),
        (format!("{PREFIX}/in/door/unknown"), &b"?"[..]),
    ] {
        mqtt_publish(&bridge.broker, &topic, payload, 1, false)
            .await
            .expect("publish");
    }
    let frames = pcm16_frames(&common::speech(16_000)[..16_000]);
    let (_, heard) = tokio::join!(
        device_talks(&bridge.broker, "door", "", &frames),
        hear_one(&mut bridge.listener)
    );
    assert_eq!(heard.0.name, "door");
    let heard_ms = heard.2.len() * 1000 / 48_000;
    assert!(heard_ms.abs_diff(1000) <= 60, "heard {heard_ms} ms");
    bridge.stop().await;
}

/// Waits for the listener's own talk on `stream` to be released; returns the reason.
async fn listener_released(link: &mut HubLink) -> ReleaseReason {
    loop {
        match tokio::time::timeout(WAIT, link.recv()).await {
            Ok(Ok(Downlink::Floor(FloorEvent::Released { reason, .. }))) => return reason,
            Ok(Ok(_)) => continue,
            other => panic!("the listener's talk was never released: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_above_the_endpoints_max_priority_is_denied_and_preempts_nobody() {
    let mut bridge = start_bridge(Options::default()).await;
    let mut answers = bridge.subscribe(&[&device_topic("door", "floor")]).await;
    let stream = StreamKey(3);
    bridge.listener_takes_floor(stream).await;
    // Any publisher on the prefix can claim an emergency; max_priority (default
    // normal) keeps it from pre-empting the floor holder.
    let packets = opus_packets(&common::speech(48_000)[..48_000 / 2]);
    device_talks(
        &bridge.broker,
        "door",
        r#"{"priority":"emergency"}"#,
        &packets,
    )
    .await;
    let answer = next_json(&mut answers).await;
    println!("the door was told: {answer}");
    assert_eq!(answer["result"], "denied", "{answer}");
    assert_eq!(answer["reason"], "priority_too_high", "{answer}");
    assert_eq!(answer["max_priority"], "normal", "{answer}");
    // The listener still holds the floor: its own end releases it.
    bridge.listener.talk_end(stream).await.expect("hub running");
    assert_eq!(
        listener_released(&mut bridge.listener).await,
        ReleaseReason::TalkerDone,
        "the listener was pre-empted"
    );
    assert_eq!(bridge.stats.frames_forwarded.load(Ordering::Relaxed), 0);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_after_a_revoke_is_dropped_until_the_device_sends_end() {
    let bridge = start_bridge(Options::default()).await;
    let mut answers = bridge.subscribe(&[&device_topic("door", "floor")]).await;
    let frame = [0xf8, 0xff, 0xfe];
    let publish_frame = |seq: u32| {
        let broker = &bridge.broker;
        async move {
            mqtt_publish(
                broker,
                &device_topic("door", "audio"),
                &framed(seq, &frame),
                0,
                false,
            )
            .await
            .expect("frame");
        }
    };
    bridge.device_says("door", "start", b"").await;
    publish_frame(0).await;
    let granted = next_json(&mut answers).await;
    assert_eq!(granted["result"], "granted", "{granted}");
    // An emergency elsewhere on the channel revokes the door's talk, and ends at once.
    let emergency = StreamKey(9);
    bridge
        .listener
        .talk_start(
            emergency,
            Talker::new("kilo", "kilo (Radio)"),
            Priority::Emergency,
            TalkKind::Live,
        )
        .await
        .expect("hub running");
    let released = next_json(&mut answers).await;
    assert_eq!(released["result"], "released", "{released}");
    assert_eq!(released["reason"], "revoked", "{released}");
    bridge
        .listener
        .talk_end(emergency)
        .await
        .expect("hub running");
    // The door goes on talking for well over idle_release (1.5 s) plus the 500 ms
    // straggler window, without an `end`: all of it is dropped.
    let grants_before = bridge.stats.grants.load(Ordering::Relaxed);
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for seq in 1..=150u32 {
        pace.tick().await;
        publish_frame(seq).await;
    }
    let more = tokio::time::timeout(Duration::from_millis(500), answers.next(WAIT)).await;
    assert!(
        more.is_err(),
        "the door heard more after its talk was revoked: {:?}",
        more.map(|m| m.map(|m| m.text()))
    );
    assert_eq!(
        bridge.stats.grants.load(Ordering::Relaxed),
        grants_before,
        "audio after the revoke started a new talk"
    );
    // After `end`, a new start is a new talk.
    bridge.device_says("door", "end", b"").await;
    bridge.device_says("door", "start", b"").await;
    let again = next_json(&mut answers).await;
    assert_eq!(again["result"], "granted", "{again}");
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_allowed_emergency_by_device_max_priority_preempts_the_holder() {
    let mut bridge = start_bridge(Options {
        device_max_priority: vec![("fire_panel", Priority::Emergency)],
        ..Options::default()
    })
    .await;
    let mut answers = bridge
        .subscribe(&[&device_topic("fire_panel", "floor")])
        .await;
    let stream = StreamKey(3);
    bridge.listener_takes_floor(stream).await;
    mqtt_publish(
        &bridge.broker,
        &device_topic("fire_panel", "start"),
        br#"{"priority":"emergency"}"#,
        1,
        false,
    )
    .await
    .expect("start");
    assert_eq!(
        listener_released(&mut bridge.listener).await,
        ReleaseReason::Revoked,
        "the fire panel's emergency did not pre-empt"
    );
    let granted = next_json(&mut answers).await;
    assert_eq!(granted["result"], "granted", "{granted}");
    bridge.stop().await;
}

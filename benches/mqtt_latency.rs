//! Frame published by a device → frame published by the bridge on another MQTT
//! endpoint of the channel: the latency the bridge adds per hop, on a real
//! mosquitto over loopback; and the cost of pcm16 transcoding per stream.
//!
//! A rumqttc client publishes 600 frames at 20 ms pace on `a/in/dev/audio`. A
//! second client subscribes both to that topic (the baseline: mosquitto's relay)
//! and to `b/out/audio`, where endpoint `b` of the same channel sends the frames
//! on. Added latency of frame n = (arrival on b/out − arrival on a/in): the
//! publish and the broker's first relay cancel out; what is left is the bridge
//! (endpoint a → hub → endpoint b, transcoding included) plus one more broker hop.
//! For pcm16 the output frames are matched to input frames by sequence number, so
//! the resamplers' buffering is part of the result.
//!
//! Run: `cargo bench -p walkie-mqtt --bench mqtt_latency`. Prints percentiles;
//! never fails on a time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use walkie_bridge::hub::{ChannelHub, FloorSettings};
use walkie_endpoint::audio::{frames_of, OpusDecoder, OpusEncoder, FRAME_SAMPLES};
use walkie_endpoint::{Endpoint, EndpointId};
use walkie_harness::Mosquitto;
use walkie_mqtt::transcode::{PcmToOpus, PcmToPcm16, PCM16_FRAME_SAMPLES};
use walkie_mqtt::{MqttEndpoint, MqttEndpointConfig, PayloadCodec};

const FRAMES: usize = 600;
const WAIT: Duration = Duration::from_secs(20);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let broker = Mosquitto::builder().start().await.expect("mosquitto");
        for codec in [PayloadCodec::Opus, PayloadCodec::Pcm16] {
            latency(&broker, codec).await;
        }
    });
    transcoding();
}

fn percentiles(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    if samples.is_empty() {
        println!("{label}: no samples");
        return;
    }
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    println!(
        "{label}: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        samples.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    );
}

fn endpoint(broker: &Mosquitto, prefix: &str, codec: PayloadCodec) -> MqttEndpoint {
    let mut config = MqttEndpointConfig::new(
        broker.host(),
        broker.port(),
        prefix,
        format!("bench-{prefix}"),
    );
    config.payload = codec;
    MqttEndpoint::new(EndpointId::new(format!("mqtt.{prefix}")), config).expect("config")
}

/// A bench-side MQTT client; its publishes arrive on the returned channel with
/// their arrival time.
async fn client(
    broker: &Mosquitto,
    id: &str,
    topics: &[String],
) -> (
    AsyncClient,
    mpsc::UnboundedReceiver<(String, Vec<u8>, Instant)>,
) {
    let mut options = MqttOptions::new(id, broker.host(), broker.port());
    options.set_request_channel_capacity(1024);
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic, p.payload.to_vec(), Instant::now()));
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(_) => {}
                Err(error) => {
                    eprintln!("bench client: {error}");
                    return;
                }
            }
        }
    });
    for topic in topics {
        client
            .subscribe(topic, QoS::AtMostOnce)
            .await
            .expect("subscribe");
        tokio::time::timeout(WAIT, subscribed.recv())
            .await
            .expect("suback");
    }
    (client, rx)
}

async fn latency(broker: &Mosquitto, codec: PayloadCodec) {
    let a = endpoint(broker, "a", codec);
    let b = endpoint(broker, "b", codec);
    let mut hub = ChannelHub::new("bench", FloorSettings::default());
    let link_a = hub
        .attach(a.id().clone(), a.capabilities())
        .expect("attach");
    let link_b = hub
        .attach(b.id().clone(), b.capabilities())
        .expect("attach");
    let shutdown = CancellationToken::new();
    let watch = [
        "a/status".to_owned(),
        "b/status".to_owned(),
        "a/in/dev/audio".to_owned(),
        "b/out/audio".to_owned(),
    ];
    let (observer, mut seen) =
        client(broker, &format!("bench-observer-{}", codec.name()), &watch).await;
    let hub_task = tokio::spawn(hub.run(shutdown.clone()));
    let tasks = [
        tokio::spawn(Box::new(a).run(link_a, shutdown.clone())),
        tokio::spawn(Box::new(b).run(link_b, shutdown.clone())),
    ];
    let mut online = 0;
    while online < 2 {
        let (topic, payload, _) = tokio::time::timeout(WAIT, seen.recv())
            .await
            .expect("endpoints online")
            .expect("observer running");
        if topic.ends_with("/status") && payload == b"online" {
            online += 1;
        }
    }
    let (device, _) = client(broker, &format!("bench-device-{}", codec.name()), &[]).await;

    let tone: Vec<i16> = (0..FRAMES * FRAME_SAMPLES)
        .map(|n| ((n as f64 * 0.13).sin() * 8000.0 + (n as f64 * 0.021).sin() * 4000.0) as i16)
        .collect();
    let payloads: Vec<Vec<u8>> = match codec {
        PayloadCodec::Opus => {
            let mut encoder = OpusEncoder::new().expect("encoder");
            frames_of(&tone)
                .map(|f| encoder.encode(&f).expect("encode").to_vec())
                .collect()
        }
        PayloadCodec::Pcm16 => tone
            .iter()
            .step_by(3)
            .copied()
            .collect::<Vec<i16>>()
            .chunks(PCM16_FRAME_SAMPLES)
            .map(|c| c.iter().flat_map(|s| s.to_le_bytes()).collect())
            .collect(),
    };
    device
        .publish("a/in/dev/start", QoS::AtLeastOnce, false, "{}")
        .await
        .expect("start");
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut arrived_in: HashMap<u32, Instant> = HashMap::new();
    let mut arrived_out: HashMap<u32, Instant> = HashMap::new();
    for (seq, audio) in payloads.iter().enumerate() {
        pace.tick().await;
        let mut payload = (seq as u32).to_be_bytes().to_vec();
        payload.extend_from_slice(audio);
        device
            .publish("a/in/dev/audio", QoS::AtMostOnce, false, payload)
            .await
            .expect("publish");
        while let Ok((topic, payload, at)) = seen.try_recv() {
            record(&topic, &payload, at, &mut arrived_in, &mut arrived_out);
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some((topic, payload, at))) = tokio::time::timeout_at(deadline, seen.recv()).await
    {
        record(&topic, &payload, at, &mut arrived_in, &mut arrived_out);
    }
    device
        .publish("a/in/dev/end", QoS::AtLeastOnce, false, "")
        .await
        .expect("end");
    let added: Vec<Duration> = arrived_out
        .iter()
        .filter_map(|(seq, out)| {
            arrived_in
                .get(seq)
                .map(|inp| out.saturating_duration_since(*inp))
        })
        .collect();
    println!(
        "{}: {} frames in, {} seen by the baseline subscriber, {} out",
        codec.name(),
        payloads.len(),
        arrived_in.len(),
        arrived_out.len()
    );
    percentiles(
        &format!(
            "added latency, {} in → {} out (bridge + one broker hop)",
            codec.name(),
            codec.name()
        ),
        added,
    );
    drop(observer);
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    let _ = hub_task.await;
}

fn record(
    topic: &str,
    payload: &[u8],
    at: Instant,
    arrived_in: &mut HashMap<u32, Instant>,
    arrived_out: &mut HashMap<u32, Instant>,
) {
    let Some(head) = payload.first_chunk::<4>() else {
        return;
    };
    let seq = u32::from_be_bytes(*head);
    match topic {
        "a/in/dev/audio" => {
            arrived_in.entry(seq).or_insert(at);
        }
        "b/out/audio" => {
            arrived_out.entry(seq).or_insert(at);
        }
        _ => {}
    }
}

/// CPU cost of one pcm16 stream per 20 ms, each direction and both: the
/// functions alone, no broker, no hub.
fn transcoding() {
    const N: usize = 3000;
    let tone: Vec<i16> = (0..N * FRAME_SAMPLES)
        .map(|n| ((n as f64 * 0.13).sin() * 8000.0) as i16)
        .collect();
    let pcm16: Vec<Vec<u8>> = tone
        .iter()
        .step_by(3)
        .copied()
        .collect::<Vec<i16>>()
        .chunks(PCM16_FRAME_SAMPLES)
        .map(|c| c.iter().flat_map(|s| s.to_le_bytes()).collect())
        .collect();
    let mut encoder = OpusEncoder::new().expect("encoder");
    let packets: Vec<_> = frames_of(&tone)
        .map(|f| encoder.encode(&f).expect("encode"))
        .collect();

    let mut up = PcmToOpus::new().expect("up");
    let started = Instant::now();
    for frame in &pcm16 {
        std::hint::black_box(up.push(frame).expect("up"));
    }
    let up_cost = started.elapsed() / N as u32;

    let mut decoder = OpusDecoder::new().expect("decoder");
    let decoded: Vec<Vec<i16>> = packets
        .iter()
        .map(|p| decoder.decode(p).expect("decode"))
        .collect();
    let mut down = PcmToPcm16::new().expect("down");
    let started = Instant::now();
    for pcm in &decoded {
        std::hint::black_box(down.push(pcm).expect("down"));
    }
    let down_cost = started.elapsed() / N as u32;

    let mut decoder = OpusDecoder::new().expect("decoder");
    let started = Instant::now();
    for packet in &packets {
        std::hint::black_box(decoder.decode(packet).expect("decode"));
    }
    let decode_cost = started.elapsed() / N as u32;

    let frame = Duration::from_millis(20).as_secs_f64();
    let line = |label: &str, cost: Duration| {
        println!(
            "{label}: {:.1} µs per 20 ms frame → {:.0} streams per core",
            cost.as_secs_f64() * 1e6,
            frame / cost.as_secs_f64()
        );
    };
    line("pcm16 in (16k→48k resample + Opus encode)", up_cost);
    line("pcm16 out (48k→16k resample)", down_cost);
    line("pcm16 in + out", up_cost + down_cost);
    line(
        "hub's Opus decode for pcm16 consumers (once per transmission)",
        decode_cost,
    );
    line("pcm16 in + out + decode", up_cost + down_cost + decode_cost);
}

//! Frame in from Mumble → frame out on another endpoint: the latency the bridge adds,
//! on a real murmurd over loopback.
//!
//! `alice` (a walkie-mumble client) sends 500 Opus packets at 20 ms pace into the
//! channel. murmurd relays each one to two receivers at the same moment: `bob`, a
//! plain client (the baseline), and the bridge's bot, whose endpoint hands it to a
//! channel hub and on to a sink endpoint. The bridge's added latency for a packet
//! is (sink arrival − bob arrival): everything before murmurd's relay cancels out.
//! Also prints the whole process's CPU use while one stream runs.
//!
//! Run: `cargo bench --bench mumble_latency` (needs scripts/setup.sh's murmurd).
//! Prints percentiles; never fails on a time.

#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use walkie_bridge::hub::{ChannelHub, FloorSettings};
use walkie_endpoint::audio::{frames_of, OpusEncoder};
use walkie_endpoint::{Capabilities, Downlink, Endpoint, EndpointId};
use walkie_harness::Murmur;
use walkie_mumble::{ConnectConfig, Connection, Event, MumbleEndpoint, MumbleEndpointConfig};

const PACKETS: usize = 500;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(measure());
}

fn client(murmur: &Murmur, name: &str) -> ConnectConfig {
    let mut config = ConnectConfig::new(murmur.address(), name, "Ops");
    config.accept_invalid_cert = true;
    config
}

/// CPU seconds this process has used (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

fn percentiles(label: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    if samples.is_empty() {
        println!("{label}: no samples");
        return;
    }
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{label:<52} n={:<4} p50={:>8.2?} p99={:>8.2?} max={:>8.2?}",
        samples.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

async fn measure() {
    let murmur = Murmur::builder()
        .channels(&["Ops"])
        .start()
        .await
        .expect("murmurd");
    let endpoint = MumbleEndpoint::new(
        EndpointId::new("mumble.ops"),
        MumbleEndpointConfig {
            connect: client(&murmur, "walkie"),
            announce_talker: false,
            idle_release: Duration::from_millis(1500),
            busy_notice_interval: Duration::from_secs(10),
            reconnect_cap: Duration::from_secs(30),
        },
    );
    let mut hub = ChannelHub::new("ops", FloorSettings::default());
    let bot_link = hub
        .attach(endpoint.id().clone(), endpoint.capabilities())
        .expect("attach");
    let mut sink = hub
        .attach(EndpointId::new("bench.sink"), Capabilities::default())
        .expect("attach");
    let shutdown = CancellationToken::new();
    tokio::spawn(hub.run(shutdown.clone()));
    tokio::spawn(Box::new(endpoint).run(bot_link, shutdown.clone()));

    let (bob, mut bob_events) = Connection::connect(client(&murmur, "bob"))
        .await
        .expect("bob connects");
    let (alice, _alice_events) = Connection::connect(client(&murmur, "alice"))
        .await
        .expect("alice connects");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !alice.users_in_channel().iter().any(|u| u.name == "walkie") {
        assert!(Instant::now() < deadline, "the bridge never joined Ops");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let speech = common::speech(48_000);
    let mut encoder = OpusEncoder::new().expect("encoder");
    let packets: Vec<_> = frames_of(&speech)
        .map(|f| encoder.encode(&f).expect("encode"))
        .collect();

    // Arrival times, by packet index (Mumble counts 10 ms units: 2 per packet).
    let bob_task = tokio::spawn(async move {
        let mut arrivals = HashMap::new();
        let mut first = None;
        while let Some(event) = bob_events.recv().await {
            if let Event::Voice {
                seq, terminator, ..
            } = event
            {
                let first = *first.get_or_insert(seq);
                arrivals.insert(((seq - first) / 2) as usize, Instant::now());
                if terminator {
                    break;
                }
            }
        }
        (bob, arrivals)
    });
    let sink_task = tokio::spawn(async move {
        let mut arrivals = HashMap::new();
        while arrivals.len() < PACKETS {
            match tokio::time::timeout(Duration::from_secs(5), sink.recv()).await {
                Ok(Ok(Downlink::Audio(frame))) => {
                    arrivals.insert(frame.frame.seq as usize, Instant::now());
                }
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        (sink, arrivals)
    });

    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut sent_at = Vec::with_capacity(PACKETS);
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for i in 0..PACKETS {
        pace.tick().await;
        sent_at.push(Instant::now());
        alice
            .send_voice(&packets[i % packets.len()], i + 1 == PACKETS)
            .await
            .expect("alice sends");
    }
    let (_bob, bob_arrivals) = bob_task.await.expect("bob task");
    let (_sink, sink_arrivals) = sink_task.await.expect("sink task");
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;

    let mut added = Vec::new();
    let mut end_to_end = Vec::new();
    let mut baseline = Vec::new();
    for (i, sent) in sent_at.iter().enumerate() {
        if let (Some(bob), Some(sink)) = (bob_arrivals.get(&i), sink_arrivals.get(&i)) {
            added.push(sink.saturating_duration_since(*bob));
            end_to_end.push(sink.duration_since(*sent));
            baseline.push(bob.duration_since(*sent));
        }
    }
    println!(
        "\nMumble → hub → other endpoint, {PACKETS} packets at 20 ms (murmurd {} on loopback)",
        murmur.address()
    );
    println!(
        "received: bob {} / bridge sink {} of {PACKETS}",
        bob_arrivals.len(),
        sink_arrivals.len()
    );
    percentiles("added by the bridge (sink − bob)", added);
    percentiles("alice → murmurd → bob (baseline)", baseline);
    percentiles("alice → murmurd → bridge → sink", end_to_end);
    println!(
        "CPU of the whole process during one stream: {:.1} % of one core \
         (alice's sending, bob's receiving, the bridge and the hub together)",
        cpu / wall * 100.0
    );
    shutdown.cancel();
}

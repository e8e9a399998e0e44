//! Floor request → grant latency: the pure state machine, and the full path through a
//! running channel hub (endpoint sends talk start, awaits its grant on its link).
//!
//! Criterion measures means; the summary after it times each round on its own and
//! prints p50/p99/max, because a floor that is fast on average but stalls now and
//! then is what a user would notice. Nothing here fails on a time.

use criterion::{criterion_group, Criterion};
use std::hint::black_box;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use walkie_bridge::hub::{ChannelHub, Claimant, Floor, FloorSettings, Input};
use walkie_endpoint::{
    Capabilities, Downlink, EndpointId, FloorEvent, HubLink, Priority, StreamKey, TalkKind, Talker,
};

const ROUNDS: usize = 20_000;

fn claimant(endpoint: &str) -> Claimant {
    Claimant {
        endpoint: EndpointId::new(endpoint),
        stream: StreamKey(1),
    }
}

fn request(who: &Claimant, talker: &Talker) -> Input {
    Input::Request {
        who: who.clone(),
        talker: talker.clone(),
        priority: Priority::Normal,
        kind: TalkKind::Live,
    }
}

/// One talk on a free floor, then its release: what every transmission costs the
/// arbiter. Returns the request → grant part alone.
fn floor_round(floor: &mut Floor, who: &Claimant, talker: &Talker) -> Duration {
    let now = Instant::now();
    let granted = floor.handle(now, request(who, talker));
    let elapsed = now.elapsed();
    black_box(granted);
    black_box(floor.handle(now, Input::Done { who: who.clone() }));
    elapsed
}

fn state_machine(c: &mut Criterion) {
    let mut floor = Floor::new(FloorSettings {
        hang: Duration::ZERO,
        ..FloorSettings::default()
    });
    let who = claimant("bench.a");
    let talker = Talker::new("alice", "alice (Bench)");
    c.bench_function("floor/request_grant_release", |b| {
        b.iter(|| floor_round(&mut floor, &who, &talker))
    });
}

struct HubUnderTest {
    runtime: tokio::runtime::Runtime,
    talker: HubLink,
    listener: HubLink,
    shutdown: CancellationToken,
}

fn hub_under_test() -> HubUnderTest {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut hub = ChannelHub::new(
        "bench",
        FloorSettings {
            hang: Duration::ZERO,
            ..FloorSettings::default()
        },
    );
    let talker = hub
        .attach(EndpointId::new("bench.a"), Capabilities::default())
        .expect("attach");
    let listener = hub
        .attach(EndpointId::new("bench.b"), Capabilities::default())
        .expect("attach");
    let shutdown = CancellationToken::new();
    runtime.spawn(hub.run(shutdown.clone()));
    HubUnderTest {
        runtime,
        talker,
        listener,
        shutdown,
    }
}

/// Request → grant as the endpoint sees it, then a release it waits for, so every
/// round starts on an idle floor.
async fn hub_round(talker: &mut HubLink, listener: &mut HubLink, who: &Talker) -> Duration {
    let started = Instant::now();
    talker
        .talk_start(StreamKey(1), who.clone(), Priority::Normal, TalkKind::Live)
        .await
        .expect("hub running");
    loop {
        if let Ok(Downlink::Floor(FloorEvent::Granted { .. })) = talker.recv().await {
            break;
        }
    }
    let elapsed = started.elapsed();
    talker.talk_end(StreamKey(1)).await.expect("hub running");
    for link in [talker, listener] {
        loop {
            if let Ok(Downlink::Floor(FloorEvent::Idle)) = link.recv().await {
                break;
            }
        }
    }
    elapsed
}

fn hub_actor(c: &mut Criterion) {
    let HubUnderTest {
        runtime,
        mut talker,
        mut listener,
        shutdown,
    } = hub_under_test();
    let who = Talker::new("alice", "alice (Bench)");
    c.bench_function("hub/request_grant_release", |b| {
        b.iter(|| runtime.block_on(hub_round(&mut talker, &mut listener, &who)))
    });
    shutdown.cancel();
}

fn percentiles(label: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{label:<34} n={:<6} p50={:>9.2?} p99={:>9.2?} max={:>9.2?}",
        samples.len(),
        at(0.50),
        at(0.99),
        at(1.0)
    );
}

fn summary() {
    println!("\nfloor request → grant latency");
    let mut floor = Floor::new(FloorSettings {
        hang: Duration::ZERO,
        ..FloorSettings::default()
    });
    let who = claimant("bench.a");
    let talker = Talker::new("alice", "alice (Bench)");
    let pure: Vec<_> = (0..ROUNDS)
        .map(|_| floor_round(&mut floor, &who, &talker))
        .collect();
    percentiles("state machine (Floor::handle)", pure);

    let HubUnderTest {
        runtime,
        talker: mut talking,
        mut listener,
        shutdown,
    } = hub_under_test();
    let through_hub: Vec<_> = runtime.block_on(async {
        let mut samples = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            samples.push(hub_round(&mut talking, &mut listener, &talker).await);
        }
        samples
    });
    percentiles("hub actor (talk start → Granted)", through_hub);
    shutdown.cancel();
}

criterion_group!(benches, state_machine, hub_actor);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}

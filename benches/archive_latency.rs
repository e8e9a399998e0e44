//! Release → voice message visible to a syncing client, on loopback: a real Synapse,
//! the daemon in-process, 50 one-second transmissions from a test endpoint, and a
//! real user's `/sync` watching the room. Prints p50/p99/max; never fails on a time.
//!
//! Run: `cargo bench --bench archive_latency` (needs scripts/setup.sh's Synapse).

#[path = "../tests/bridge_common/mod.rs"]
mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bridge_common::{is_voice_message_from, setup, speech_packets, start_daemon, transmit, SERVER};

const TRANSMISSIONS: usize = 50;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(measure());
}

async fn measure() {
    let setup = setup().await;
    let alice = setup.synapse.client(&setup.alice);
    let mut running = start_daemon(&setup.config).await;
    let (_, packets) = speech_packets();
    let one_second = &packets[..50];
    let puppet = format!("@walkie_test_kilo:{SERVER}");

    let mut samples = Vec::with_capacity(TRANSMISSIONS);
    for _ in 0..TRANSMISSIONS {
        transmit(&mut running.link, "kilo", one_second).await;
        let released = Instant::now();
        alice
            .sync_until(
                |e| is_voice_message_from(e, &puppet),
                Duration::from_secs(30),
            )
            .await
            .expect("voice message visible");
        samples.push(released.elapsed());
    }
    running.stop().await;

    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "release → voice message visible to a syncing client (n={}): p50={:.1?} p99={:.1?} max={:.1?}",
        samples.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

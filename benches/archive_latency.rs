//! Release → voice message visible to a syncing client, on loopback: a real Synapse,
//! the daemon in-process with two channels — a plain room and an encrypted one, each
//! with a test endpoint — 50 one-second transmissions on each, alternating, and a
//! real user's `/sync` watching both rooms. In the encrypted room each is an
//! encrypted voice message with an encrypted attachment (issue 15 item 10: encrypted
//! beside plain in the same run). "Visible" is the
//! event arriving in the client's sync (the client's own decryption is not counted).
//! Also prints the process CPU time per archived transmission in each phase (the
//! bench process holds the daemon and the watching client alike; the difference is
//! what encryption costs the bridge). Prints p50/p99/max; never fails on a time.
//!
//! Run: `cargo bench --bench archive_latency` (needs scripts/setup.sh's Synapse).

#[path = "../tests/bridge_common/mod.rs"]
mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bridge_common::{config_text, load, ops_room, setup, speech_packets, transmit, SERVER};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use walkie_bridge::daemon::Daemon;
use walkie_endpoint::testkit::TestEndpoint;
use walkie_endpoint::{Capabilities, EndpointId, HubLink};
use walkie_harness::MatrixClient;

const TRANSMISSIONS: usize = 50;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(measure());
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

struct Phase {
    samples: Vec<Duration>,
    cpu: Duration,
}

/// One transmission on `link` and the wait until its voice message (of
/// `event_type`) shows in alice's sync; returns the time from release.
async fn one(
    link: &mut HubLink,
    alice: &MatrixClient,
    room: &str,
    packets: &[bytes::Bytes],
    event_type: &str,
) -> Duration {
    let puppet = format!("@walkie_test_kilo:{SERVER}");
    transmit(link, "kilo", packets).await;
    let released = Instant::now();
    let event = alice
        .sync_until(
            |e| {
                e.sender() == puppet
                    && e.room_id == room
                    && matches!(e.event_type(), "m.room.message" | "m.room.encrypted")
            },
            Duration::from_secs(30),
        )
        .await
        .expect("voice message visible");
    let elapsed = released.elapsed();
    assert_eq!(event.event_type(), event_type, "{:?}", event.content());
    elapsed
}

fn report(name: &str, phase: &mut Phase) {
    phase.samples.sort_unstable();
    let s = &phase.samples;
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name}: release → voice message visible to a syncing client (n={}): p50={:.1?} p99={:.1?} max={:.1?}; process CPU per transmission {:.1?}",
        s.len(),
        at(0.5),
        at(0.99),
        at(1.0),
        phase.cpu / s.len() as u32
    );
}

async fn measure() {
    let setup = setup().await;
    let alice = setup.synapse.client(&setup.alice);
    let secure_room = alice
        .create_room(&ops_room().name("Sec").alias("sec").initial_state(
            "m.room.encryption",
            "",
            json!({ "algorithm": "m.megolm.v1.aes-sha2" }),
        ))
        .await
        .expect("the encrypted room");
    let mut text = config_text(&setup.synapse.url(), setup.listen, setup.dir.path());
    text.push_str(&format!(
        "\n[[channel]]\nname = \"sec\"\nroom = \"#sec:{SERVER}\"\nendpoints = []\n"
    ));
    let config = load(&text);
    let (plain_endpoint, plain_handle) =
        TestEndpoint::new(EndpointId::new("test.radio"), Capabilities::default());
    let (secure_endpoint, secure_handle) =
        TestEndpoint::new(EndpointId::new("test.radio"), Capabilities::default());
    let shutdown = CancellationToken::new();
    let daemon = Daemon::new(config)
        .with_endpoint("ops", Box::new(plain_endpoint))
        .with_endpoint("sec", Box::new(secure_endpoint));
    let task = tokio::spawn(daemon.run(shutdown.clone()));
    let mut plain_link = plain_handle.link().await.expect("the plain channel runs");
    let mut secure_link = secure_handle
        .link()
        .await
        .expect("the encrypted channel runs");

    let (_, packets) = speech_packets();
    let one_second = &packets[..50];
    // The first encrypted one creates the puppet's device: left out, like the
    // puppet's registration in the plain room, by a first round not measured.
    one(
        &mut plain_link,
        &alice,
        &setup.room_id,
        one_second,
        "m.room.message",
    )
    .await;
    one(
        &mut secure_link,
        &alice,
        &secure_room,
        one_second,
        "m.room.encrypted",
    )
    .await;
    let mut plain = Phase {
        samples: Vec::new(),
        cpu: Duration::ZERO,
    };
    let mut encrypted = Phase {
        samples: Vec::new(),
        cpu: Duration::ZERO,
    };
    for _ in 0..TRANSMISSIONS {
        let cpu = cpu_time();
        plain.samples.push(
            one(
                &mut plain_link,
                &alice,
                &setup.room_id,
                one_second,
                "m.room.message",
            )
            .await,
        );
        let between = cpu_time();
        plain.cpu += between.saturating_sub(cpu);
        encrypted.samples.push(
            one(
                &mut secure_link,
                &alice,
                &secure_room,
                one_second,
                "m.room.encrypted",
            )
            .await,
        );
        encrypted.cpu += cpu_time().saturating_sub(between);
    }
    shutdown.cancel();
    task.await
        .expect("no panic")
        .expect("the daemon stops cleanly");

    report("plain room", &mut plain);
    report("encrypted room", &mut encrypted);
    let extra = encrypted.cpu.saturating_sub(plain.cpu) / TRANSMISSIONS as u32;
    println!("encryption's extra process CPU per archived transmission: {extra:.1?}");
}

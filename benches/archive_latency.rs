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

/// One channel of the run: its link, its room, and the event type its voice
/// messages arrive as.
struct Side {
    link: HubLink,
    room: String,
    event_type: &'static str,
    phase: Phase,
}

impl Side {
    /// One transmission and the wait until its voice message shows in alice's
    /// sync; with `measured`, its time from release and the process CPU it took
    /// are added to the phase.
    async fn one(&mut self, alice: &MatrixClient, packets: &[bytes::Bytes], measured: bool) {
        let puppet = format!("@walkie_test_kilo:{SERVER}");
        let cpu = cpu_time();
        transmit(&mut self.link, "kilo", packets).await;
        let released = Instant::now();
        let room = self.room.as_str();
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
        assert_eq!(event.event_type(), self.event_type, "{:?}", event.content());
        if measured {
            self.phase.samples.push(elapsed);
            self.phase.cpu += cpu_time().saturating_sub(cpu);
        }
    }
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
    let plain_link = plain_handle.link().await.expect("the plain channel runs");
    let secure_link = secure_handle
        .link()
        .await
        .expect("the encrypted channel runs");

    let (_, packets) = speech_packets();
    let one_second = &packets[..50];
    let side = |link, room: &str, event_type| Side {
        link,
        room: room.to_owned(),
        event_type,
        phase: Phase {
            samples: Vec::new(),
            cpu: Duration::ZERO,
        },
    };
    let mut plain = side(plain_link, &setup.room_id, "m.room.message");
    let mut encrypted = side(secure_link, &secure_room, "m.room.encrypted");
    // The first encrypted one creates the puppet's device: left out, like the
    // puppet's registration in the plain room, by a first round not measured.
    for measured in std::iter::once(false).chain([true; TRANSMISSIONS]) {
        plain.one(&alice, one_second, measured).await;
        encrypted.one(&alice, one_second, measured).await;
    }
    shutdown.cancel();
    task.await
        .expect("no panic")
        .expect("the daemon stops cleanly");

    report("plain room", &mut plain.phase);
    report("encrypted room", &mut encrypted.phase);
    let extra = encrypted.phase.cpu.saturating_sub(plain.phase.cpu) / TRANSMISSIONS as u32;
    println!("encryption's extra process CPU per archived transmission: {extra:.1?}");
}

//! Voice messages coming in from Matrix: played exactly once across a crash
//! (issue 14.6) and fetched within bounds (issue 13.6). Real Synapse, the real
//! binary (SIGKILLed) or the daemon in-process, a radio on a real rigctld.

mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;
#[path = "live_common/mod.rs"]
mod live_common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge_common::{setup, Setup, SERVER, WAIT};
use live_common::LiveClient;
use walkie_endpoint::audio::encode_ogg_opus;
use walkie_harness::{ChildGuard, Rigctld};

/// The test configuration with a radio on `rig` and a floor that a silent live
/// client holds for long enough.
fn radio_config(setup: &Setup, rig: &Rigctld) -> std::path::PathBuf {
    bridge_common::write_rigctld_radio_config(setup, &rig.address(), "", |text| {
        text.replace("idle_release_ms = 1500", "idle_release_ms = 60000")
    })
}

fn start_bridge(dir: &Path, config: &Path, log: &str) -> ChildGuard {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_walkie-bridge"));
    command.args(["run", "-c"]).arg(config);
    command.env("HOME", dir).env("RUST_LOG", "info");
    ChildGuard::spawn("walkie-bridge", command, dir.join(log)).expect("walkie-bridge starts")
}

/// Counts the times the rig is keyed (rising edges of PTT) until dropped.
struct KeyCounter {
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl KeyCounter {
    fn start(rig: Arc<Rigctld>) -> Self {
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (Arc::clone(&count), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut keyed = false;
            while !s.load(Ordering::Relaxed) {
                let now = rig.ptt_keyed();
                if now && !keyed {
                    c.fetch_add(1, Ordering::SeqCst);
                }
                keyed = now;
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self { count, stop }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for KeyCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The bot's ✅ reactions to `event_id`.
async fn acks(client: &walkie_harness::MatrixClient, room: &str, event_id: &str) -> usize {
    let bot = format!("@walkie:{SERVER}");
    client
        .room_messages(room, 200)
        .await
        .expect("room messages")
        .into_iter()
        .filter(|e| {
            e["sender"] == bot.as_str()
                && e["type"] == "m.reaction"
                && e["content"]["m.relates_to"]["event_id"] == event_id
        })
        .count()
}

/// SIGKILL once the homeserver's transaction holding a voice message was
/// acknowledged, while the message still waits for the floor: after the restart
/// it is played — on the radio too — once, and a second restart does not play it
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_message_acknowledged_before_a_sigkill_is_played_once_after_the_restart() {
    let setup = setup().await;
    let dir = setup.dir.path().to_owned();
    let rig = Arc::new(Rigctld::start());
    let config = radio_config(&setup, &rig);
    let bob = setup.member("bob").await;
    let alice = setup.synapse.client(&setup.alice);
    let bot = format!("@walkie:{SERVER}");

    let mut first = start_bridge(&dir, &config, "bridge-1.log");
    alice
        .sync_until(
            |e| e.sender() == bot && e.content()["membership"] == "join",
            WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("the bot never joined ({e}): {}", first.log_tail(40)));
    bridge_common::opt_in(&alice, &setup.room_id).await;

    // Bob holds the floor from the browser, so the voice message must wait.
    let mut holder = LiveClient::logon_ok(setup.listen, &setup.synapse, &bob).await;
    holder.start_stream().await;
    holder.until_floor("granted").await;
    let keyed_by_holder = Instant::now() + WAIT;
    while !rig.ptt_keyed() {
        assert!(
            Instant::now() < keyed_by_holder,
            "the holder never keyed the radio"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let speech = common::speech(48_000);
    let ogg = encode_ogg_opus(&speech, 24_000).expect("Ogg Opus");
    let ms = speech.len() as u64 * 1000 / 48_000;
    let voice = alice
        .send_voice_message(&setup.room_id, ogg.clone(), ms)
        .await
        .expect("voice message");
    // The homeserver sends transactions one after the other: once the bot has
    // answered a later command, the voice message's transaction was acknowledged.
    alice
        .send_text(&setup.room_id, "!wt status")
        .await
        .expect("status");
    alice
        .sync_until(
            |e| e.sender() == bot && e.body().is_some_and(|b| b.contains("You can talk on the")),
            WAIT,
        )
        .await
        .expect("the bot answers the status command");
    assert_eq!(
        acks(&alice, &setup.room_id, &voice).await,
        0,
        "played already"
    );
    first.kill().expect("SIGKILL");
    drop(holder);
    // A SIGKILL leaves the rig keyed (nobody is left to unkey it; the radio's own
    // transmit timeout would): unkey it by hand, as that timeout would.
    rig.rigctl(&["T", "0"]);
    assert!(!rig.ptt_keyed(), "the rig cannot be unkeyed");

    let keys = KeyCounter::start(Arc::clone(&rig));
    let mut second = start_bridge(&dir, &config, "bridge-2.log");
    alice
        .sync_until(
            |e| {
                e.event_type() == "m.reaction"
                    && e.sender() == bot
                    && e.content()["m.relates_to"]["event_id"] == voice.as_str()
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the voice message was never played after the restart ({e}): {}",
                second.log_tail(40)
            )
        });
    assert_eq!(
        keys.count(),
        1,
        "the radio was keyed {} times",
        keys.count()
    );
    // A clean stop this time: the radio unkeys (a SIGKILL right after the ✅
    // could leave it keyed), so the third run's keying shows as a new one.
    let _ = second.stop(Duration::from_secs(5)).await;
    assert!(!rig.ptt_keyed(), "the rig stays keyed after a clean stop");

    // A third run must not play it again: a later voice message goes out, and
    // by then anything left over from before would have gone out first.
    let mut third = start_bridge(&dir, &config, "bridge-3.log");
    let later = alice
        .send_voice_message(&setup.room_id, ogg, ms)
        .await
        .expect("voice message");
    alice
        .sync_until(
            |e| {
                e.event_type() == "m.reaction"
                    && e.sender() == bot
                    && e.content()["m.relates_to"]["event_id"] == later.as_str()
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the later message was not played ({e}): {}",
                third.log_tail(40)
            )
        });
    let played = acks(&alice, &setup.room_id, &voice).await;
    eprintln!(
        "after SIGKILL: acknowledged {played} time(s), radio keyed {} time(s) over two restarts",
        keys.count()
    );
    assert_eq!(
        played, 1,
        "the voice message was acknowledged {played} times"
    );
    assert_eq!(
        keys.count(),
        2,
        "the radio keyed {} times for two voice messages",
        keys.count()
    );
    let _ = third.stop(Duration::from_secs(5)).await;
}

/// One member posting voice messages as fast as the homeserver takes them: the
/// bridge fetches a few and refuses the rest, each with the reason in a threaded
/// notice, and counts the refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_voice_messages_from_one_member_is_refused_with_a_reason() {
    let mut setup = setup().await;
    let status_port = walkie_harness::free_port();
    setup.config.status.listen = Some(([127, 0, 0, 1], status_port).into());
    let running = bridge_common::start_daemon(&setup.config).await;
    let alice = setup.synapse.client(&setup.alice);
    let bot = format!("@walkie:{SERVER}");
    bridge_common::opt_in(&alice, &setup.room_id).await;

    let speech = common::speech(48_000);
    let ogg = encode_ogg_opus(&speech, 24_000).expect("Ogg Opus");
    let ms = speech.len() as u64 * 1000 / 48_000;
    // Uploads first, so the messages themselves follow each other closely.
    let mut sent = Vec::new();
    for _ in 0..10 {
        sent.push(
            alice
                .send_voice_message(&setup.room_id, ogg.clone(), ms)
                .await
                .expect("voice message"),
        );
    }
    let last = sent.last().cloned().expect("ten sent");
    let refusal = alice
        .sync_until(
            |e| {
                e.sender() == bot
                    && e.content()["m.relates_to"]["event_id"] == last.as_str()
                    && e.body().is_some_and(|b| b.starts_with("Not transmitted"))
            },
            WAIT,
        )
        .await
        .expect("the tenth voice message in a row is refused");
    let body = refusal.body().unwrap_or_default().to_owned();
    eprintln!("refusal: {body}");
    assert!(body.contains("too many voice messages"), "{body}");

    let metrics = reqwest::get(format!("http://127.0.0.1:{status_port}/metrics"))
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("metrics text");
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("walkie_voice_in_refused_total") && l.contains("sender_rate"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!("walkie_voice_in_refused_total{{reason=\"sender_rate\"}} = {refused}");
    assert!(refused >= 1.0, "refusals not counted:\n{metrics}");
    running.stop().await;
}

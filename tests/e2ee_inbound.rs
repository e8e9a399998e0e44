//! Encrypted messages in (issue 15, item 5), against a real Synapse with an
//! end-to-end-encrypting client nobody here wrote (matrix-nio, through the
//! harness's `E2eeTestClient`): the bridge decrypts with its bot's device, plays
//! encrypted voice messages (attachment in `file`, SHA-256 checked) on the
//! channel, runs `!wt` commands sent encrypted, holds an event whose room key has
//! not arrived yet (across a restart too) and answers in a thread when the key
//! never comes or is withheld.
//!
//! The daemon runs in-process with a test endpoint on the channel (what it
//! receives is what every other side hears). The key-wait deadline is shortened
//! with the hidden test knob, for the whole binary.

#[path = "bridge_common/mod.rs"]
mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bridge_common::{
    alice_nio_in_room, encrypted_ops_room, setup_with_room, start_daemon, Running, Setup, SERVER,
    WAIT,
};
use walkie_bridge::matrix::encrypted_in::set_key_wait_deadline_for_tests;
use walkie_bridge::store::Store;
use walkie_endpoint::audio::{encode_ogg_opus, OpusDecoder};
use walkie_endpoint::{Downlink, FloorEvent};
use walkie_harness::{free_port, E2eeTestClient, MessageFilter, ReceivedMessage};

/// How long an event waits for its key in these tests (60 s in production).
const KEY_WAIT: Duration = Duration::from_secs(8);

fn bot() -> String {
    format!("@walkie:{SERVER}")
}

/// A bridged encrypted room (public, `#ops`, the bot at power 100), the daemon
/// with its crypto store and `/metrics`, and alice's nio client in the room.
struct E2ee {
    setup: Setup,
    running: Option<Running>,
    alice: E2eeTestClient,
    status: u16,
}

impl E2ee {
    async fn start() -> E2ee {
        set_key_wait_deadline_for_tests(KEY_WAIT);
        let mut setup = setup_with_room(encrypted_ops_room()).await;
        let status = free_port();
        setup.config.status.listen = Some(SocketAddr::from(([127, 0, 0, 1], status)));
        // The channel starts once the bot's device is on the homeserver, so the
        // client below finds it when it first shares a room key.
        let running = start_daemon(&setup.config).await;
        let alice = alice_nio_in_room(&setup, true).await;
        E2ee {
            setup,
            running: Some(running),
            alice,
            status,
        }
    }

    fn room(&self) -> &str {
        &self.setup.room_id
    }

    fn link(&mut self) -> &mut walkie_endpoint::HubLink {
        &mut self.running.as_mut().expect("the daemon runs").link
    }

    /// `!wt on`, encrypted, and the bot's answer (read by content only).
    async fn opt_in(&self) {
        let sent = self
            .alice
            .send_text(self.room(), "!wt on")
            .await
            .expect("!wt on");
        assert!(sent.encrypted, "the command went encrypted");
        self.answer_containing("!wt off").await;
    }

    async fn answer_containing(&self, text: &str) -> ReceivedMessage {
        self.alice
            .wait_text(&MessageFilter::from(bot()).containing(text), WAIT)
            .await
            .unwrap_or_else(|e| panic!("the bot answers with {text:?}: {e}"))
    }

    async fn store(&self) -> Store {
        let path: PathBuf = self.setup.dir.path().join("walkie.db");
        Store::connect(&format!("sqlite://{}", path.display()))
            .await
            .expect("store")
    }

    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }
}

/// espeak-like speech as an Ogg Opus file for the client to send, and its PCM.
fn speech_file(dir: &Path) -> (Vec<i16>, PathBuf, Duration) {
    let speech = common::speech(48_000);
    let ogg = encode_ogg_opus(&speech, 24_000).expect("Ogg Opus");
    let path = dir.join("speech.ogg");
    std::fs::write(&path, ogg).expect("write the voice message");
    let duration = Duration::from_millis(speech.len() as u64 * 1000 / 48_000);
    (speech, path, duration)
}

/// The next transmission on the channel: who took the floor and what was heard.
async fn next_transmission(link: &mut walkie_endpoint::HubLink) -> (Option<String>, Vec<i16>) {
    let (taken_by, pcm, _) = timed_transmission(link).await;
    (taken_by, pcm)
}

/// [`next_transmission`], and when the floor was taken.
async fn timed_transmission(
    link: &mut walkie_endpoint::HubLink,
) -> (Option<String>, Vec<i16>, Instant) {
    let mut decoder = OpusDecoder::new().expect("decoder");
    let mut pcm = Vec::new();
    let mut taken_by = None;
    let mut taken_at = Instant::now();
    loop {
        let down = tokio::time::timeout(WAIT, link.recv())
            .await
            .expect("a transmission within the wait")
            .expect("hub running");
        match down {
            Downlink::Floor(FloorEvent::Taken { talker, source, .. }) => {
                assert_eq!(source.as_str(), "matrix.ops");
                taken_by = talker.matrix_user_id.clone();
                taken_at = Instant::now();
            }
            Downlink::Audio(frame) => {
                pcm.extend(decoder.decode(&frame.frame.opus).expect("valid Opus"));
            }
            Downlink::Floor(FloorEvent::Released { .. }) => return (taken_by, pcm, taken_at),
            Downlink::Floor(_) => {}
        }
    }
}

fn assert_heard(speech: &[i16], pcm: &[i16]) {
    let heard_ms = pcm.len() as u64 * 1000 / 48_000;
    let source_ms = speech.len() as u64 * 1000 / 48_000;
    assert!(
        heard_ms.abs_diff(source_ms) <= 60,
        "heard {heard_ms} ms of {source_ms} ms"
    );
    let (_, correlation) = common::best_lag(speech, pcm, -400..=400);
    assert!(
        correlation > 0.85,
        "the audio heard does not match what was sent: {correlation:.3}"
    );
}

/// The sample of `name` with `labels` (e.g. `outcome="expired"`) on `/metrics`.
async fn metric(status: u16, name: &str, labels: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{status}/metrics"))
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics text");
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (series, value) = rest.rsplit_once(' ')?;
            let matches = if labels.is_empty() {
                series.is_empty() || series.starts_with('{')
            } else {
                series.contains(labels)
            };
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Waits until `/metrics` shows `name{labels}` at least `at_least`.
async fn until_metric(status: u16, name: &str, labels: &str, at_least: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = metric(status, name, labels).await;
        if now >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{{{labels}}} stayed {now}, expected at least {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the bridge has taken `event_id` (durably queued) and not handled
/// it: it waits for its key.
async fn until_taken_not_handled(store: &Store, event_id: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let pending = store.pending_inbound().await.expect("pending events");
        if pending.iter().any(|p| p.event_id == event_id) {
            return;
        }
        assert!(
            !store.inbound_handled(event_id).await.expect("lookup"),
            "{event_id} was handled instead of waiting for its key"
        );
        assert!(
            Instant::now() < deadline,
            "the bridge never took {event_id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A threaded answer to `event_id`.
fn assert_threaded_to(answer: &ReceivedMessage, event_id: &str) {
    let relates = &answer.content["m.relates_to"];
    assert_eq!(relates["rel_type"], "m.thread", "{answer:?}");
    assert_eq!(relates["event_id"], event_id, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_voice_message_from_an_opted_in_member_is_heard_on_the_channel() {
    let mut e2ee = E2ee::start().await;
    let (speech, path, duration) = speech_file(e2ee.setup.dir.path());

    // Before the opt-in the encrypted voice message is decrypted and refused
    // like a plaintext one: the decrypted sender is the one checked.
    let early = e2ee
        .alice
        .send_voice(e2ee.room(), &path, duration)
        .await
        .expect("voice message");
    assert!(early.encrypted);
    let refused = e2ee.answer_containing("not opted in").await;
    assert_threaded_to(&refused, &early.event_id);

    e2ee.opt_in().await;
    let sent = e2ee
        .alice
        .send_voice(e2ee.room(), &path, duration)
        .await
        .expect("voice message");
    assert!(sent.encrypted, "sent as m.room.encrypted with `file`");
    let started = Instant::now();
    let (taken_by, pcm, taken_at) = timed_transmission(e2ee.link()).await;
    assert_eq!(
        taken_by.as_deref(),
        Some(e2ee.setup.alice.user_id.as_str()),
        "the floor names the decrypted sender"
    );
    assert_heard(&speech, &pcm);
    println!(
        "encrypted voice message ({duration:?}): client's send answered → floor taken on the \
         channel in {:?}",
        taken_at.duration_since(started)
    );
    assert!(
        metric(
            e2ee.status,
            "walkie_crypto_room_events_total",
            "outcome=\"decrypted\""
        )
        .await
            >= 3.0
    );
    let store = e2ee.store().await;
    assert!(store.inbound_handled(&sent.event_id).await.expect("lookup"));

    // A `file` whose SHA-256 is not the upload's: answered, counted, not played
    // (the answer is the refusal; a refused message is never queued).
    let bad = e2ee
        .alice
        .send_voice_with_bad_hash(e2ee.room(), &path, duration)
        .await
        .expect("voice message");
    let refused = e2ee.answer_containing("SHA-256").await;
    assert_threaded_to(&refused, &bad.event_id);
    until_metric(
        e2ee.status,
        "walkie_voice_in_bad_attachments_total",
        "",
        1.0,
    )
    .await;
    assert!(store.inbound_handled(&bad.event_id).await.expect("lookup"));
    e2ee.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_key_never_comes_gets_a_threaded_answer_after_the_deadline() {
    let mut e2ee = E2ee::start().await;
    e2ee.opt_in().await;
    let expired_before = metric(
        e2ee.status,
        "walkie_crypto_key_waits_total",
        "outcome=\"expired\"",
    )
    .await;

    let held = e2ee
        .alice
        .hold_room_key(e2ee.room(), &bot())
        .await
        .expect("a room key kept from the bot");
    assert!(!held.devices.is_empty());
    let sent_at = Instant::now();
    let sent = e2ee
        .alice
        .send_text(e2ee.room(), "!wt status")
        .await
        .expect("text");
    let store = e2ee.store().await;
    until_taken_not_handled(&store, &sent.event_id).await;
    until_metric(e2ee.status, "walkie_crypto_events_waiting", "", 1.0).await;

    let answer = e2ee.answer_containing("never received the key").await;
    let waited = sent_at.elapsed();
    assert_threaded_to(&answer, &sent.event_id);
    assert!(
        answer
            .body()
            .is_some_and(|b| b.contains("may not trust the bridge's device")),
        "{answer:?}"
    );
    assert!(
        waited >= KEY_WAIT,
        "answered after {waited:?}, before the {KEY_WAIT:?} deadline"
    );
    println!("key never came: answered {waited:?} after sending (deadline {KEY_WAIT:?})");
    assert!(store.inbound_handled(&sent.event_id).await.expect("lookup"));
    until_metric(
        e2ee.status,
        "walkie_crypto_key_waits_total",
        "outcome=\"expired\"",
        expired_before + 1.0,
    )
    .await;
    e2ee.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_key_is_answered_with_its_reason() {
    let mut e2ee = E2ee::start().await;
    let held = e2ee
        .alice
        .hold_room_key(e2ee.room(), &bot())
        .await
        .expect("a room key kept from the bot");
    let sent = e2ee
        .alice
        .send_text(e2ee.room(), "!wt on")
        .await
        .expect("text");
    let store = e2ee.store().await;
    until_taken_not_handled(&store, &sent.event_id).await;
    e2ee.alice
        .send_withheld(e2ee.room(), &held.session_id, &bot(), "m.unverified")
        .await
        .expect("withheld notice");

    let answer = e2ee.answer_containing("m.unverified").await;
    assert_threaded_to(&answer, &sent.event_id);
    assert!(
        answer.body().is_some_and(|b| b.contains("not verified")),
        "the code in words: {answer:?}"
    );
    assert!(store.inbound_handled(&sent.event_id).await.expect("lookup"));
    // The command was not run.
    assert!(
        store
            .opted_in(
                &e2ee.setup.alice.user_id,
                None,
                std::time::SystemTime::now()
            )
            .await
            .expect("opt-in lookup")
            .is_none(),
        "a withheld `!wt on` was acted on"
    );
    e2ee.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_message_waiting_for_its_key_is_played_when_the_key_comes() {
    let mut e2ee = E2ee::start().await;
    let (speech, path, duration) = speech_file(e2ee.setup.dir.path());
    e2ee.opt_in().await;
    let decrypted_before = metric(
        e2ee.status,
        "walkie_crypto_key_waits_total",
        "outcome=\"decrypted\"",
    )
    .await;

    let held = e2ee
        .alice
        .hold_room_key(e2ee.room(), &bot())
        .await
        .expect("a room key kept from the bot");
    let sent = e2ee
        .alice
        .send_voice(e2ee.room(), &path, duration)
        .await
        .expect("voice message");
    let store = e2ee.store().await;
    until_taken_not_handled(&store, &sent.event_id).await;

    let released = Instant::now();
    e2ee.alice
        .release_room_key(e2ee.room(), &held.session_id, &bot())
        .await
        .expect("the key, late");
    let (taken_by, pcm, taken_at) = timed_transmission(e2ee.link()).await;
    assert_eq!(taken_by.as_deref(), Some(e2ee.setup.alice.user_id.as_str()));
    assert_heard(&speech, &pcm);
    println!(
        "late key: key sent → the waiting voice message takes the floor in {:?}",
        taken_at.duration_since(released)
    );
    until_metric(
        e2ee.status,
        "walkie_crypto_key_waits_total",
        "outcome=\"decrypted\"",
        decrypted_before + 1.0,
    )
    .await;
    assert!(store.inbound_handled(&sent.event_id).await.expect("lookup"));
    e2ee.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_message_waiting_for_its_key_survives_a_restart() {
    let mut e2ee = E2ee::start().await;
    let (speech, path, duration) = speech_file(e2ee.setup.dir.path());
    e2ee.opt_in().await;

    let held = e2ee
        .alice
        .hold_room_key(e2ee.room(), &bot())
        .await
        .expect("a room key kept from the bot");
    let sent = e2ee
        .alice
        .send_voice(e2ee.room(), &path, duration)
        .await
        .expect("voice message");
    let store = e2ee.store().await;
    until_taken_not_handled(&store, &sent.event_id).await;

    // Stopped while it waits: not handled, so the next start takes it again.
    e2ee.stop().await;
    assert!(
        !store.inbound_handled(&sent.event_id).await.expect("lookup"),
        "the waiting event was marked handled at the stop"
    );
    store.close().await;
    let running = start_daemon(&e2ee.setup.config).await;
    e2ee.running = Some(running);
    // The key goes out once transactions reach the new process again (a plaintext
    // command answered): Synapse 1.163 does not put to-device messages into the
    // transactions it retries after a failed push, so a key sent while the bridge
    // is down is lost (docs/encryption.md).
    let plain = e2ee.setup.synapse.client(&e2ee.setup.alice);
    plain
        .send_text(e2ee.room(), "!wt status")
        .await
        .expect("a plaintext command");
    e2ee.answer_containing("You can talk").await;
    e2ee.alice
        .release_room_key(e2ee.room(), &held.session_id, &bot())
        .await
        .expect("the key, late");

    let (taken_by, pcm) = next_transmission(e2ee.link()).await;
    assert_eq!(taken_by.as_deref(), Some(e2ee.setup.alice.user_id.as_str()));
    assert_heard(&speech, &pcm);
    let store = e2ee.store().await;
    assert!(store.inbound_handled(&sent.event_id).await.expect("lookup"));
    e2ee.stop().await;
}

/// A plain room that turns encryption on: its members' clients share the first
/// room key with the devices they know of at that moment, so the bot's device
/// must already be on the homeserver — published at start-up even though no
/// bridged room was encrypted then — and the first encrypted command is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_turns_encryption_on_finds_the_bots_device_published() {
    let setup = bridge_common::setup().await;
    let running = start_daemon(&setup.config).await;
    let alice = alice_nio_in_room(&setup, false).await;
    // Published in the background: asked of the homeserver until it shows.
    let deadline = Instant::now() + WAIT;
    loop {
        let keys = alice.query_keys(&bot()).await.expect("the bot's keys");
        if !keys.devices.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bot has no device on the homeserver while no room is encrypted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    alice
        .enable_encryption(&setup.room_id, walkie_harness::Rotation::default())
        .await
        .expect("alice turns encryption on");
    let sent = alice
        .send_text(&setup.room_id, "!wt on")
        .await
        .expect("!wt on");
    assert!(sent.encrypted, "the command went encrypted");
    let answer = alice
        .wait_text(&MessageFilter::from(bot()).containing("!wt off"), WAIT)
        .await
        .unwrap_or_else(|e| panic!("the bot decrypts the first encrypted command: {e}"));
    assert!(answer.encrypted, "the bot answers encrypted: {answer:?}");
    running.stop().await;
}

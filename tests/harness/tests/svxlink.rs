//! The harness's SvxLink nodes (Debian 12's `svxlink` 19.09.2, no sound card): two
//! of them log in to a real reflector, one talks real speech and the other's
//! transmitter plays it. On the 19.09.2 reflector (protocol 1.0) and on the 24.02
//! one, which takes the 1.0 nodes onto `TG_FOR_V1_CLIENTS`.

#[path = "../../../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::ops::Range;
use std::sync::OnceLock;
use std::time::Duration;

use walkie_harness::{SvxLinkNode, SvxReflector, SvxReflectorVersion, SVXLINK_SAMPLE_RATE};

const WAIT: Duration = Duration::from_secs(20);
const RATE: usize = SVXLINK_SAMPLE_RATE as usize;
/// Frames of 10 ms for the silence trim.
const FRAME: usize = RATE / 100;
/// A frame is speech when its RMS level is above this.
const SPEECH_DBFS: f64 = -40.0;

/// The samples from the first to the last 10 ms frame louder than [`SPEECH_DBFS`]:
/// the speech, leading and trailing silence trimmed.
fn speech_span(pcm: &[i16]) -> Range<usize> {
    let loud: Vec<usize> = pcm
        .chunks(FRAME)
        .enumerate()
        .filter(|(_, frame)| common::energy_db(frame) > SPEECH_DBFS)
        .map(|(index, _)| index)
        .collect();
    let (first, last) = (
        *loud.first().expect("speech present"),
        *loud.last().expect("speech present"),
    );
    first * FRAME..((last + 1) * FRAME).min(pcm.len())
}

/// The speech every test talks: espeak-ng's, band-limited to 600–3000 Hz
/// (`common::radio_speech` says why: svxlink band-passes what a receiver hears).
fn radio_speech() -> &'static [i16] {
    static SPEECH: OnceLock<Vec<i16>> = OnceLock::new();
    SPEECH.get_or_init(|| common::radio_speech(SVXLINK_SAMPLE_RATE))
}

fn ms(samples: usize) -> f64 {
    samples as f64 * 1000.0 / RATE as f64
}

async fn speech_from_one_node_reaches_the_other(version: SvxReflectorVersion) {
    let reflector = SvxReflector::builder(version)
        .node("SM0AAA", "key of A")
        .node("SM0BBB", "key of B")
        .start()
        .await
        .unwrap_or_else(|e| panic!("{} starts: {e}", version.label()));
    let b = SvxLinkNode::builder(reflector.host(), reflector.port())
        .callsign("SM0BBB")
        .auth_key("key of B")
        .start()
        .await
        .expect("node B logs in");
    let a = SvxLinkNode::builder(reflector.host(), reflector.port())
        .callsign("SM0AAA")
        .auth_key("key of A")
        .start()
        .await
        .expect("node A logs in");
    eprintln!(
        "{}: svxlink started and logged in after {:?} (B) and {:?} (A)",
        version.label(),
        b.ready_after(),
        a.ready_after()
    );

    // Two seconds of speech at the node's rate, from 100 ms before the first word.
    let speech = radio_speech();
    let (first, _) = common::active_span(speech, 1000);
    let begin = first.saturating_sub(RATE / 10);
    let source = &speech[begin..begin + 2 * RATE];

    b.start_capture();
    let before = b.ptt();
    assert!(!before.on, "B is not transmitting before A talks");
    let talked = a.talk(source).await.expect("A talks");
    let after = b
        .wait_for_ptt(
            "B releases its PTT after A's talk",
            |ptt| ptt.released > before.released,
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(after.keyed, before.keyed + 1, "B keyed up once: {after:?}");
    assert!(!after.on);
    let capture = b.captured();
    assert_eq!(
        a.ptt().keyed,
        0,
        "the reflector does not send A's talk back to A"
    );

    let received = &capture.samples;
    let (source_span, received_span) = (speech_span(source), speech_span(received));
    let (source_speech, received_speech) = (
        &source[source_span.clone()],
        &received[received_span.clone()],
    );
    // Align on the first half second of speech, then correlate all of it.
    let (lag, _) = common::best_lag(
        &source_speech[..RATE / 2],
        received_speech,
        -(RATE as isize / 10)..=RATE as isize / 10,
    );
    let correlation = common::correlation_at(source_speech, received_speech, lag);
    let (source_db, received_db) = (
        common::energy_db(source_speech),
        common::energy_db(received_speech),
    );
    let first_audio = capture.first_at.expect("B's transmitter played audio") - talked.opened_at;
    eprintln!(
        "{}: sent {:.1} ms (+{} samples padding) with the squelch open {:?}; B played {:.1} ms \
         in {} datagrams, its first audio {first_audio:?} after A's squelch opened; speech \
         (trimmed at {SPEECH_DBFS} dBFS per 10 ms) {:.1} ms sent, {:.1} ms received; lag \
         {lag} samples ({:.2} ms), correlation {correlation:.4}, energy {source_db:.2} → \
         {received_db:.2} dBFS",
        version.label(),
        ms(source.len()),
        talked.padding,
        talked.open_for,
        ms(received.len()),
        capture.datagrams,
        ms(source_speech.len()),
        ms(received_speech.len()),
        ms(lag.unsigned_abs()) * lag.signum() as f64,
    );
    assert!(
        (ms(received_speech.len()) - ms(source_speech.len())).abs() <= 100.0,
        "received {:.1} ms of speech for {:.1} ms sent",
        ms(received_speech.len()),
        ms(source_speech.len())
    );
    assert!(
        correlation > 0.8,
        "correlation {correlation:.4} at lag {lag}"
    );
    assert!(
        (received_db - source_db).abs() < 3.0,
        "energy {source_db:.2} → {received_db:.2} dBFS"
    );
    if version == SvxReflectorVersion::V24_02 {
        // Protocol 1.0 nodes have no talk groups: 24.02 puts them on TG_FOR_V1_CLIENTS.
        let log = reflector.log_tail(40);
        assert!(log.contains("SM0AAA: Talker start on TG #1"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svxreflector_19_09_speech_from_one_node_reaches_the_other() {
    speech_from_one_node_reaches_the_other(SvxReflectorVersion::V19_09).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svxreflector_24_02_speech_from_one_node_reaches_the_other() {
    speech_from_one_node_reaches_the_other(SvxReflectorVersion::V24_02).await;
}

#[tokio::test]
async fn a_wrong_key_fails_the_start_with_the_reflectors_answer() {
    let reflector = SvxReflector::builder(SvxReflectorVersion::V19_09)
        .node("SM0AAA", "the right key")
        .start()
        .await
        .expect("svxreflector 19.09 starts");
    let error = SvxLinkNode::builder(reflector.host(), reflector.port())
        .callsign("SM0AAA")
        .auth_key("a wrong key")
        .start()
        .await
        .expect_err("a wrong key is refused");
    let message = error.to_string();
    assert!(message.contains("Access denied"), "{message}");
}

//! The live page monitoring two channels in Debian's headless Chromium, driven by
//! playwright-core (tests/browser/channels.mjs), against a real Synapse and the
//! daemon in-process with a test endpoint on each channel. What the page's
//! speaker played is tapped (`/live/?tap`) and checked by content: where each
//! transmission is in it, whole, and in which order.

#[path = "bridge_common/mod.rs"]
mod bridge_common;
#[path = "browser_common/mod.rs"]
mod browser_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use bridge_common::{
    next_floor, reversed_speech_packets, speech_packets, two_channels, TwoChannels,
};
use browser_common::Driver;
use bytes::Bytes;
use serde_json::{json, Value};
use walkie_endpoint::{AudioFrame, FloorEvent, HubLink, Priority, StreamKey, TalkKind, Talker};

const RATE: usize = 48_000;

/// The browser driver on `bridge`'s page, for `scenario`.
fn driver(bridge: &TwoChannels, scenario: &str) -> Driver {
    let wav = bridge.setup.dir.path().join("speech.wav");
    common::write_wav(&wav, &common::speech(48_000), 48_000);
    // `WALKIE_UPDATE_SCREENSHOT=1` puts the screenshots in docs/ (the README
    // shows them); otherwise they go to the test's temp dir.
    let shots = if std::env::var_os("WALKIE_UPDATE_SCREENSHOT").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
    } else {
        bridge.setup.dir.path().to_path_buf()
    };
    Driver::start(
        "channels.mjs",
        &[
            ("SCREENSHOT_DIR", shots.display().to_string()),
            (
                "PAGE_URL",
                format!("http://127.0.0.1:{}/live/?tap", bridge.setup.listen),
            ),
            ("HS_URL", bridge.setup.synapse.url()),
            ("MATRIX_USER", bridge.bob.user_id.clone()),
            ("MATRIX_PASSWORD", bridge.bob.password.clone()),
            ("CHANNELS", "ops,net".into()),
            ("FAKE_AUDIO", wav.display().to_string()),
            ("SCENARIO", scenario.into()),
        ],
    )
    .with_silence(Duration::from_secs(120))
}

/// A radio-like transmission at real-time pace (the page plays what comes).
async fn transmit(link: &mut HubLink, talker: &str, packets: &[Bytes]) {
    let stream = StreamKey(1);
    link.talk_start(
        stream,
        Talker::new(talker, format!("{talker} (Radio)")),
        Priority::Normal,
        TalkKind::Live,
    )
    .await
    .expect("hub");
    loop {
        match next_floor(link).await {
            FloorEvent::Granted { .. } => break,
            FloorEvent::Denied { reason, .. } => panic!("{talker} denied: {reason}"),
            _ => {}
        }
    }
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for (seq, packet) in packets.iter().enumerate() {
        pace.tick().await;
        link.audio(stream, AudioFrame::opus(seq as u32, packet.clone()))
            .expect("hub");
    }
    link.talk_end(stream).await.expect("hub");
}

/// The page's speaker output, 48 kHz.
fn played(event: &Value) -> Vec<i16> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(event["pcm"].as_str().expect("pcm"))
        .expect("base64");
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// What the page said it played, in order ("▶ kilo (Radio) on ops (live)").
fn heard(event: &Value) -> Vec<String> {
    event["heard"]
        .as_array()
        .expect("heard")
        .iter()
        .map(|v| v.as_str().expect("text").to_owned())
        .collect()
}

/// RMS per 10 ms.
fn envelope(pcm: &[i16]) -> Vec<f64> {
    pcm.chunks(RATE / 100)
        .map(|c| (c.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / c.len() as f64).sqrt())
        .collect()
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut xy, mut xx, mut yy) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        xy += (x - ma) * (y - mb);
        xx += (x - ma).powi(2);
        yy += (y - mb).powi(2);
    }
    if xx == 0.0 || yy == 0.0 {
        0.0
    } else {
        xy / (xx * yy).sqrt()
    }
}

/// Where the speech was played in `output`: `count` non-overlapping places, in
/// order, each with the sample-exact correlation of the whole speech there.
/// Found coarsely on 10 ms envelopes, then exactly around each place.
fn occurrences(speech: &[i16], output: &[i16], count: usize) -> Vec<(usize, f64)> {
    let (wanted, heard) = (envelope(speech), envelope(output));
    assert!(
        heard.len() >= wanted.len() * count,
        "the page played {} ms, less than {count} × {} ms",
        output.len() / 48,
        speech.len() / 48
    );
    let mut scores: Vec<(usize, f64)> = (0..=heard.len() - wanted.len())
        .map(|k| (k, pearson(&wanted, &heard[k..k + wanted.len()])))
        .collect();
    scores.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut found: Vec<usize> = Vec::new();
    for (k, _) in scores {
        if found.iter().all(|f| f.abs_diff(k) >= wanted.len()) {
            found.push(k);
            if found.len() == count {
                break;
            }
        }
    }
    found.sort_unstable();
    found
        .into_iter()
        .map(|k| played_whole(speech, output, k * RATE / 100))
        .collect()
}

/// How well the whole speech was played from about `start` on: the median
/// correlation of its half-second pieces, each found exactly near where the one
/// before it ended. Piecewise because a browser on a loaded two-core machine may
/// let its jitter buffer run dry for a moment during a live talk: the gap shifts
/// what follows, which one alignment for the whole would count as not played.
/// Returns where the speech starts and that median; panics if a piece is missing
/// or the pieces are spread over far more than the speech lasts.
fn played_whole(speech: &[i16], output: &[i16], start: usize) -> (usize, f64) {
    const PIECE: usize = RATE / 2;
    let mut correlations = Vec::new();
    let mut shift: isize = 0;
    let mut first = None;
    let mut last_end = start;
    for (i, piece) in speech.chunks(PIECE).enumerate() {
        if piece.len() < PIECE / 4 || common::energy_db(piece) < -45.0 {
            continue;
        }
        // Coarse on 10 ms envelopes (±150 ms), then exact (±10 ms).
        let expected = (start + i * PIECE) as isize + shift;
        let (wanted, step) = (envelope(piece), (RATE / 100) as isize);
        let coarse = (-15..=15)
            .map(|d| expected + d * step)
            .filter(|at| *at >= 0 && (*at as usize) + piece.len() <= output.len())
            .max_by(|a, b| {
                let score = |at: isize| {
                    let at = at as usize;
                    pearson(&wanted, &envelope(&output[at..at + piece.len()]))
                };
                score(*a).total_cmp(&score(*b))
            })
            .unwrap_or(expected);
        let (lag, correlation) = common::best_lag(piece, output, coarse - 480..=coarse + 480);
        shift = lag - (start + i * PIECE) as isize;
        first.get_or_insert(lag.max(0) as usize);
        last_end = lag.max(0) as usize + piece.len();
        correlations.push(correlation);
    }
    let first = first.expect("the speech has sound");
    assert!(
        last_end - first <= speech.len() + RATE / 2,
        "the speech was spread over {} ms (it lasts {} ms)",
        (last_end - first) / 48,
        speech.len() / 48
    );
    correlations.sort_by(f64::total_cmp);
    let median = correlations[correlations.len() / 2];
    eprintln!(
        "pieces at {} ms: correlations {:?}",
        first / 48,
        correlations
            .iter()
            .map(|c| (c * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
    (first, median)
}

/// One browser at a time: two Chromiums, two Synapses and two bridges at once
/// starve each other's audio on a two-core machine.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_channels_talking_at_once_are_played_whole_one_after_the_other() {
    let _browser = BROWSER.lock().await;
    let mut bridge = two_channels().await;
    let mut driver = driver(&bridge, "simultaneous");
    driver.expect("logged_on").await;
    let (speech, packets) = speech_packets();
    let (ops, net) = (&mut bridge.ops, &mut bridge.net);
    let shots = async {
        let event = driver.expect("screenshots").await;
        let dir = Path::new(event["dir"].as_str().expect("dir"));
        for name in ["live-page-phone.png", "live-page-desktop.png"] {
            let size = std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
            assert!(size > 10_000, "{name} is {size} bytes");
        }
    };
    tokio::join!(
        transmit(ops, "kilo", &packets),
        transmit(net, "lima", &packets),
        shots
    );
    let output = played(&driver.expect("played").await);
    driver.expect("done").await;
    let found = occurrences(&speech, &output, 2);
    eprintln!("played {} ms; the speech at {found:?}", output.len() / 48);
    for (at, correlation) in &found {
        assert!(
            *correlation > 0.85,
            "at {} ms the page played something else: {correlation:.3}",
            at / 48
        );
    }
    assert!(
        found[1].0 >= found[0].0 + speech.len() - RATE / 5,
        "the two transmissions overlap: {found:?}"
    );
    driver.finish().await;
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_talk_arriving_while_the_user_talks_is_played_after_the_release() {
    let _browser = BROWSER.lock().await;
    let mut bridge = two_channels().await;
    let mut driver = driver(&bridge, "while_talking");
    driver.expect("logged_on").await;
    driver.expect("talking").await;
    let (speech, packets) = speech_packets();
    transmit(&mut bridge.net, "lima", &packets).await;
    let released = driver.expect("released").await;
    assert_eq!(released["silent_while_talking"], true, "{released}");
    assert!(
        released["waiting"].as_str().unwrap_or("").contains("net"),
        "{released}"
    );
    let output = played(&driver.expect("played").await);
    driver.expect("done").await;
    let found = occurrences(&speech, &output, 1);
    eprintln!("played {} ms; the speech at {found:?}", output.len() / 48);
    if let Ok(path) = std::env::var("WALKIE_DUMP_WAV") {
        common::write_wav(Path::new(&path), &output, 48_000);
    }
    assert!(
        found[0].1 > 0.85,
        "the page played something else: {found:?}"
    );
    driver.finish().await;
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_channel_interrupts_and_the_interrupted_talk_resumes_after_it() {
    let _browser = BROWSER.lock().await;
    let mut bridge = two_channels().await;
    let mut driver = driver(&bridge, "priority");
    driver.expect("logged_on").await;
    // Two different signals, so each is found in the output on its own.
    let (speech, packets) = speech_packets();
    let (backwards, reversed) = reversed_speech_packets();
    let (ops, net) = (&mut bridge.ops, &mut bridge.net);
    let interrupt = async {
        // ops is heard; a second and a half into it the priority channel (net)
        // talks. The pause is the scenario (where in ops's talk net cuts in),
        // not a wait for something to happen.
        let playing = driver.expect("playing").await;
        let floor = &playing["floor"];
        assert!(
            floor["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("kilo (Radio) is talking"))
                && floor["role"] == "status"
                && floor["live"] == "polite",
            "a screen reader is not told who talks: {floor}"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        transmit(net, "lima", &reversed).await;
    };
    tokio::join!(transmit(ops, "kilo", &packets), interrupt);
    let event = driver.expect("played").await;
    driver.expect("done").await;
    assert_eq!(
        heard(&event),
        [
            "▶ kilo (Radio) on ops (live)",
            "▶ lima (Radio) on net (live)",
            "▶ kilo (Radio) on ops (live)"
        ],
        "ops, interrupted by net, then the rest of ops"
    );
    let output = played(&event);
    let (net_at, net_correlation) = occurrences(&backwards, &output, 1)[0];
    eprintln!("played {} ms; net at {} ms", output.len() / 48, net_at / 48);
    assert!(
        net_correlation > 0.85,
        "the priority talk was not played whole: {net_correlation:.3}"
    );
    // Without the priority talk, the output is ops's talk, whole: resumed where
    // it stopped, not restarted and not cut.
    let net_end = (net_at + backwards.len()).min(output.len());
    let rest: Vec<i16> = output[..net_at]
        .iter()
        .chain(&output[net_end..])
        .copied()
        .collect();
    let (ops_at, ops_correlation) = occurrences(&speech, &rest, 1)[0];
    assert!(
        ops_correlation > 0.85,
        "the interrupted talk was not played whole around the priority one: {ops_correlation:.3}"
    );
    assert!(
        ops_at + RATE < net_at && net_at < ops_at + speech.len() - RATE,
        "net ({} ms) did not interrupt ops ({} ms)",
        net_at / 48,
        ops_at / 48
    );
    driver.finish().await;
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transmission_replayed_from_the_history_plays_the_archived_audio() {
    let _browser = BROWSER.lock().await;
    let mut bridge = two_channels().await;
    let (speech, packets) = speech_packets();
    // Before the page is open: it can only hear this from the archive.
    transmit(&mut bridge.ops, "kilo", &packets).await;
    let mut driver = driver(&bridge, "history");
    driver.expect("logged_on").await;
    // Usable with a keyboard and a screen reader, checked on the way.
    let accessible = driver.expect("accessible").await;
    assert_eq!(accessible["unnamed"], json!([]), "{accessible}");
    for control in [
        "radio: ops",
        "radio: net",
        "button: priority for ops",
        "button: priority for net",
        "button: Hold to talk",
    ] {
        let named = accessible["named"].as_array().expect("named");
        assert!(
            named
                .iter()
                .any(|n| n.as_str().is_some_and(|n| n.starts_with(control))),
            "no {control:?} for a screen reader: {named:?}"
        );
    }
    // A radio's content is presentational: the ★ button must not be in it.
    let radio_holds_star = |n: &Value| {
        n.as_str()
            .is_some_and(|n| n.starts_with("radio:") && n.contains("priority"))
    };
    assert!(
        !accessible["named"]
            .as_array()
            .expect("named")
            .iter()
            .any(radio_holds_star),
        "a channel's radio holds its ★ button: {accessible}"
    );
    assert_eq!(
        accessible["keys"],
        json!([
            "Tab → radio ops (selected; talk on ops)",
            "ArrowDown → radio net (selected; talk on net)",
            "ArrowUp → radio ops (selected; talk on ops)",
            "Tab → priority ops",
            "Tab → priority net",
            "Tab → talk-button"
        ]),
        "the keyboard's way through the page"
    );
    let listed = driver.expect("listed").await;
    let entry = listed["text"].as_str().expect("text");
    // "21:04:05 kilo (Radio) — 3.6 s" (and the Play button's text).
    let spoken = speech.len() as f64 / RATE as f64;
    let listed_s = entry
        .split_once('—')
        .and_then(|(_, after)| after.trim().split_once(" s"))
        .and_then(|(seconds, _)| seconds.parse::<f64>().ok());
    assert!(
        entry.contains("kilo (Radio)") && listed_s.is_some_and(|s| (s - spoken).abs() <= 0.15),
        "the history shows {entry:?}, not kilo's talk of {spoken:.2} s"
    );
    let event = driver.expect("played").await;
    driver.expect("done").await;
    let heard = heard(&event);
    assert!(
        heard.len() == 1 && heard[0].contains("on ops (replay)"),
        "{heard:?}"
    );
    let output = played(&event);
    let found = occurrences(&speech, &output, 1);
    eprintln!("played {} ms; the speech at {found:?}", output.len() / 48);
    assert!(
        found[0].1 > 0.85,
        "the page replayed something else: {found:?}"
    );
    driver.finish().await;
    bridge.stop().await;
}

//! The push-to-talk page end to end in Debian's headless Chromium, driven by
//! playwright-core (tests/browser/live.mjs): log in to a real Synapse, pick the
//! room, hold talk for 2 s with the fake microphone playing speech, release; the
//! talk reaches a test endpoint (duration, energy) and the room's archive; then the
//! test endpoint talks and the page's incoming level meter moves.
//!
//! `WALKIE_UPDATE_SCREENSHOT=1` writes the screenshot taken while talking to
//! docs/live-page.png (the README shows it); otherwise it goes to a temp dir.

#[path = "bridge_common/mod.rs"]
mod bridge_common;
#[path = "browser_common/mod.rs"]
mod browser_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Duration;

use bridge_common::{
    is_voice_message_from, setup, speech_packets, start_daemon, Running, SERVER, WAIT,
};
use browser_common::Driver;
use walkie_endpoint::audio::OpusDecoder;
use walkie_endpoint::{
    AudioFrame, Downlink, FloorEvent, HubLink, Priority, StreamKey, TalkKind, Talker,
};

const HOLD_MS: u64 = 2000;

/// The frames of one transmission from `live.ops`, Taken to Released.
async fn receive_live_talk(link: &mut HubLink, bob: &str) -> Vec<bytes::Bytes> {
    loop {
        match tokio::time::timeout(WAIT, link.recv()).await {
            Ok(Ok(Downlink::Floor(FloorEvent::Taken { talker, source, .. }))) => {
                assert_eq!(source.as_str(), "live.ops");
                assert_eq!(talker.matrix_user_id.as_deref(), Some(bob));
                break;
            }
            Ok(Ok(_)) => continue,
            other => panic!("no live talk reached the test endpoint: {other:?}"),
        }
    }
    let mut frames = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, link.recv()).await {
            Ok(Ok(Downlink::Audio(frame))) => frames.push(frame.frame.opus),
            Ok(Ok(Downlink::Floor(FloorEvent::Released { reason, .. }))) => {
                eprintln!("live talk released: {reason}");
                return frames;
            }
            Ok(Ok(Downlink::Floor(_))) => continue,
            other => panic!(
                "the live talk broke off after {} frames: {other:?}",
                frames.len()
            ),
        }
    }
}

/// A radio-like talk at real-time pace, so the page's jitter buffer plays it.
async fn talk_in_real_time(link: &mut HubLink, packets: &[bytes::Bytes]) {
    let stream = StreamKey(1);
    link.talk_start(
        stream,
        Talker::new("kilo", "kilo (Radio)"),
        Priority::Normal,
        TalkKind::Live,
    )
    .await
    .expect("hub");
    loop {
        match tokio::time::timeout(WAIT, link.recv()).await {
            Ok(Ok(Downlink::Floor(FloorEvent::Granted { .. }))) => break,
            Ok(Ok(_)) => continue,
            other => panic!("the test endpoint got no grant: {other:?}"),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_talks_and_listens_in_headless_chromium() {
    let setup = setup().await;
    let bob = setup.member("bob").await;
    let Running {
        mut link,
        shutdown,
        task,
    } = start_daemon(&setup.config).await;

    let wav = setup.dir.path().join("speech.wav");
    common::write_wav(&wav, &common::speech(48_000), 48_000);
    let screenshot = if std::env::var_os("WALKIE_UPDATE_SCREENSHOT").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/live-page.png")
    } else {
        setup.dir.path().join("live-page.png")
    };
    let mut driver = Driver::start(
        "live.mjs",
        &[
            (
                "PAGE_URL",
                format!("http://127.0.0.1:{}/live/", setup.listen),
            ),
            ("HS_URL", setup.synapse.url()),
            ("MATRIX_USER", bob.user_id.clone()),
            ("MATRIX_PASSWORD", bob.password.clone()),
            ("CHANNEL", "ops".into()),
            ("FAKE_AUDIO", wav.display().to_string()),
            ("SCREENSHOT", screenshot.display().to_string()),
            ("HOLD_MS", HOLD_MS.to_string()),
            ("MODE", "test".into()),
        ],
    );
    driver.expect("logged_on").await;
    let talking = driver.expect("talking").await;
    eprintln!("press → grant shown: {} ms", talking["press_to_grant_ms"]);

    let frames = receive_live_talk(&mut link, &bob.user_id).await;
    let released = driver.expect("released").await;
    let held_ms = released["held_ms"].as_u64().expect("held_ms");
    let received_ms = frames.len() as u64 * 20;
    eprintln!("held {held_ms} ms; the test endpoint received {received_ms} ms");
    assert!(
        (HOLD_MS - 300..=HOLD_MS + 600).contains(&received_ms),
        "held for {held_ms} ms but {received_ms} ms arrived"
    );
    let mut decoder = OpusDecoder::new().expect("decoder");
    let pcm: Vec<i16> = frames
        .iter()
        .flat_map(|f| decoder.decode(f).expect("the browser's Opus decodes"))
        .collect();
    let level = common::energy_db(&pcm);
    eprintln!("level of the received talk: {level:.1} dBFS");
    assert!(level > -40.0, "the talk is (near) silent: {level:.1} dBFS");

    let alice = setup.synapse.client(&setup.alice);
    let message = alice
        .sync_until(
            |e| is_voice_message_from(e, &format!("@walkie:{SERVER}")),
            WAIT,
        )
        .await
        .expect("the live talk is archived as a voice message");
    let duration = message.content()["info"]["duration"].as_u64().unwrap();
    assert!(
        duration.abs_diff(received_ms) <= 200,
        "archived {duration} ms, transmitted {received_ms} ms"
    );

    driver.expect("listening").await;
    let (_, packets) = speech_packets();
    let talk = talk_in_real_time(&mut link, &packets);
    let heard = async {
        let heard = driver.expect("heard").await;
        driver.expect("done").await;
        heard
    };
    let ((), heard) = tokio::join!(talk, heard);
    eprintln!("the page's incoming meter: {}", heard["level"]);
    assert!(heard["floor"]
        .as_str()
        .unwrap_or("")
        .contains("kilo (Radio)"));
    driver.finish().await;
    drop(link);
    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("daemon stops in time")
        .expect("daemon task")
        .expect("daemon ends cleanly");
}

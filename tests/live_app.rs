//! The live page as an installed app, end to end in Debian's headless Chromium,
//! driven by playwright-core (tests/browser/app.mjs) against a real Synapse and the
//! real bridge:
//!
//! - installable and offline: the service worker registers and controls the page,
//!   and replaces itself when the bridge serves a new page (the upgrade played by a
//!   reverse proxy in the driver that rewrites app.js and sw.js on their way),
//!   Chromium finds the manifest valid and the page installable, every icon loads
//!   at its stated size; with the bridge stopped (the proxy answering 502, then
//!   nothing listening at all), a reload still shows the page, served by the
//!   service worker, while nothing outside the page's files is answered from a
//!   cache; the chosen push-to-talk key survives the reload.
//! - reconnecting and the key: a refused OpenID token is replaced by the page
//!   itself; holding a chosen key (T) talks to a test endpoint for as long as it is
//!   held; the bridge stops and starts again on the same port and configuration,
//!   the page says it is reconnecting, logs on again by itself and plays a talk from
//!   the test endpoint, shown on the Media Session too; the network goes offline
//!   and back (Chromium's emulation), and the page connects anew at once.
//!
//! The two tests take turns (SERIAL): each runs Synapse, the bridge and Chromium,
//! and two of those at once on a two-core machine starve the page's audio.

#[path = "bridge_common/mod.rs"]
mod bridge_common;
#[path = "browser_common/mod.rs"]
mod browser_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use bridge_common::{setup, speech_packets, start_daemon, Running, WAIT};
use browser_common::Driver;
use serde_json::Value;
use walkie_endpoint::audio::OpusDecoder;
use walkie_endpoint::{
    AudioFrame, Downlink, FloorEvent, HubLink, Priority, StreamKey, TalkKind, Talker,
};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const HOLD_MS: u64 = 1500;
/// The driver waits up to 80 s for a reconnect (tries at 1, 2, 4, 8, 16, 30 s).
const DRIVER_SILENCE: Duration = Duration::from_secs(100);

fn page_url(setup: &bridge_common::Setup) -> String {
    format!("http://127.0.0.1:{}/live/", setup.listen)
}

/// Width and height from a manifest's `sizes` ("192x192"); None for "any".
fn stated_size(sizes: &str) -> Option<(u64, u64)> {
    let (w, h) = sizes.split_once('x')?;
    Some((w.parse().ok()?, h.parse().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_installs_and_opens_without_the_bridge() {
    let _turn = SERIAL.lock().await;
    let setup = setup().await;
    let Running {
        link,
        shutdown,
        task,
    } = start_daemon(&setup.config).await;
    let mut driver = Driver::start(
        "app.mjs",
        &[
            ("SCENARIO", "install".into()),
            ("PAGE_URL", page_url(&setup)),
            ("HS_URL", setup.synapse.url()),
        ],
    )
    .with_silence(DRIVER_SILENCE);

    // The page is loaded through the driver's reverse proxy in front of the bridge.
    let registered = driver.expect("registered").await;
    let url = registered["page_url"]
        .as_str()
        .expect("page_url")
        .to_owned();
    assert!(url.ends_with("/live/"), "{url}");
    assert_eq!(registered["scope"], url.as_str(), "the worker's scope");
    assert_eq!(registered["script"], format!("{url}sw.js"));
    driver.expect("controlled").await;

    let upgraded = driver.expect("upgraded").await;
    let names = |key: &str| -> Vec<String> {
        upgraded[key]
            .as_array()
            .expect("cache names")
            .iter()
            .filter_map(|n| n.as_str())
            .filter(|n| n.starts_with("walkie-live-") && *n != "walkie-live-config")
            .map(str::to_owned)
            .collect()
    };
    let (before, after) = (names("caches_before"), names("caches"));
    assert_eq!(before.len(), 1, "one cache of the page's files: {upgraded}");
    assert_eq!(after.len(), 1, "the old cache is dropped: {upgraded}");
    assert_eq!(
        after[0],
        format!("walkie-live-upgraded{}", &before[0]["walkie-live-".len()..])
    );
    assert_eq!(
        upgraded["served_new_page"], true,
        "the upgraded bridge's app.js was not used at once: {upgraded}"
    );
    assert_eq!(upgraded["kept_new_page"], true, "{upgraded}");

    let manifest = driver.expect("manifest").await;
    assert_eq!(
        manifest["installability_errors"],
        serde_json::json!([]),
        "Chromium would not offer to install the page"
    );
    assert_eq!(manifest["parse_errors"], serde_json::json!([]));
    assert_eq!(manifest["linked"], format!("{url}manifest.webmanifest"));
    assert_eq!(manifest["content_type"], "application/manifest+json");
    let data = &manifest["data"];
    assert_eq!(data["start_url"], "./");
    assert_eq!(data["scope"], "./");
    assert_eq!(data["display"], "standalone");
    assert!(data["name"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(data["short_name"]
        .as_str()
        .is_some_and(|n| !n.is_empty() && n.len() <= 12));
    // The colours of the page (style.css --bg), so the splash screen and the title
    // bar match it.
    let css = include_str!("../web/live/style.css");
    assert!(css.contains("--bg: #10151c;"), "style.css changed its --bg");
    assert_eq!(data["background_color"], "#10151c");
    assert_eq!(data["theme_color"], "#10151c");
    let icons = manifest["icons"].as_array().expect("icons");
    let mut sizes = Vec::new();
    for icon in icons {
        assert_eq!(icon["status"], 200, "{icon}");
        assert_eq!(icon["content_type"], icon["type"], "{icon}");
        assert_eq!(icon["loaded"], true, "the icon does not decode: {icon}");
        let (width, height) = (
            icon["width"].as_u64().unwrap(),
            icon["height"].as_u64().unwrap(),
        );
        match stated_size(icon["sizes"].as_str().unwrap()) {
            Some(stated) => assert_eq!((width, height), stated, "{icon}"),
            None => assert!(width > 0 && height > 0, "{icon}"),
        }
        sizes.push((icon["purpose"].as_str().unwrap().to_owned(), width));
    }
    for (purpose, size) in [("any", 192), ("any", 512), ("maskable", 512)] {
        assert!(
            sizes.iter().any(|(p, s)| p == purpose && *s == size),
            "no {purpose} icon of {size} px: {sizes:?}"
        );
    }
    assert_eq!(driver.expect("key_chosen").await["key"], "F8");

    driver.expect("ready_for_offline").await;
    drop(link);
    stop_daemon(shutdown, task).await;
    driver.tell("bridge_stopped").await;

    // The proxy answers 502 for the bridge that is down, then nothing answers at all.
    let bridge_down = driver.expect("bridge_down").await;
    assert_opens_from_the_service_worker(&bridge_down, &url, "HTTP 502");
    let nothing_there = driver.expect("nothing_there").await;
    assert_opens_from_the_service_worker(&nothing_there, &url, "network error");
    driver.expect("done").await;
    driver.finish().await;
}

/// The page reloaded with the bridge out of reach: shown, every file from the service
/// worker, the chosen key kept, and nothing beyond the page's files answered from a
/// cache (each try gets `unreachable`, what the network says).
fn assert_opens_from_the_service_worker(offline: &Value, url: &str, unreachable: &str) {
    assert_eq!(offline["document_status"], 200, "{offline}");
    assert_eq!(
        offline["document_from_service_worker"], true,
        "the offline page did not come from the service worker: {offline}"
    );
    assert_eq!(offline["controlled"], true);
    assert!(offline["title"]
        .as_str()
        .unwrap_or("")
        .contains("live talk"));
    let responses = offline["responses"].as_array().expect("responses");
    for file in ["", "app.js", "device.js", "style.css", "config.json"] {
        let want = format!("{url}{file}");
        let response = responses
            .iter()
            .find(|r| r["url"] == want.as_str())
            .unwrap_or_else(|| panic!("the offline page did not load {want}: {responses:?}"));
        assert_eq!(response["status"], 200, "{response}");
        assert_eq!(response["from_service_worker"], true, "{response}");
    }
    // Not the WebSocket's path, not another name under /live/, not the listener's
    // other routes.
    for (path, answer) in offline["tries"].as_object().expect("tries") {
        assert_eq!(answer, unreachable, "{path} was answered offline");
    }
    assert_eq!(offline["key"], "F8", "the chosen key is kept");
    assert_eq!(offline["hint"], "F8", "the hint names the chosen key");
}

async fn stop_daemon(
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("daemon stops in time")
        .expect("daemon task")
        .expect("daemon ends cleanly");
}

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
async fn the_page_reconnects_after_a_restart_and_talks_with_the_chosen_key() {
    let _turn = SERIAL.lock().await;
    let setup = setup().await;
    let bob = setup.member("bob").await;
    let Running {
        mut link,
        shutdown,
        task,
    } = start_daemon(&setup.config).await;
    let wav = setup.dir.path().join("speech.wav");
    common::write_wav(&wav, &common::speech(48_000), 48_000);
    let mut driver = Driver::start(
        "app.mjs",
        &[
            ("SCENARIO", "reconnect".into()),
            ("PAGE_URL", page_url(&setup)),
            ("HS_URL", setup.synapse.url()),
            ("MATRIX_USER", bob.user_id.clone()),
            ("MATRIX_PASSWORD", bob.password.clone()),
            ("CHANNEL", "ops".into()),
            ("FAKE_AUDIO", wav.display().to_string()),
            ("HOLD_MS", HOLD_MS.to_string()),
        ],
    )
    .with_silence(DRIVER_SILENCE);

    let logged_on = driver.expect("logged_on").await;
    assert_eq!(
        logged_on["token_requests"], 2,
        "the refused token was not replaced by exactly one new one: {logged_on}"
    );
    assert_eq!(logged_on["renewed"], true, "{logged_on}");
    // Debian's headless Chromium grants the screen wake lock to a visible page.
    assert_eq!(logged_on["wake_lock"], "held", "{logged_on}");

    let key = driver.expect("key_chosen").await;
    assert_eq!(key["key"], "T");
    assert_eq!(key["hint"], "T");
    driver.expect("talking").await;
    let frames = receive_live_talk(&mut link, &bob.user_id).await;
    let released = driver.expect("released").await;
    let held_ms = released["held_ms"].as_u64().expect("held_ms");
    let received_ms = frames.len() as u64 * 20;
    eprintln!("held T for {held_ms} ms; the test endpoint received {received_ms} ms");
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
    assert!(level > -40.0, "the talk is (near) silent: {level:.1} dBFS");

    // The bridge stops; the page notices and keeps trying.
    driver.expect("ready_for_restart").await;
    drop(link);
    stop_daemon(shutdown, task).await;
    let reconnecting = driver.expect("reconnecting").await;
    eprintln!("the page says: {}", reconnecting["status"]);

    // The same bridge again, on the same port with the same configuration.
    let Running {
        mut link,
        shutdown,
        task,
    } = start_daemon(&setup.config).await;
    let back = driver.expect("back_online").await;
    assert!(
        back["status"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("back online"),
        "{back}"
    );
    assert_eq!(
        back["token_requests"], 2,
        "the page should log on again with the token it has: {back}"
    );
    assert_eq!(back["wake_lock"], "held", "{back}");

    driver.expect("listening").await;
    let (_, packets) = speech_packets();
    let talk = talk_in_real_time(&mut link, &packets);
    let heard = driver.expect("heard");
    let ((), heard) = tokio::join!(talk, heard);
    eprintln!("after the restart the page heard: {heard}");
    assert!(heard["floor"]
        .as_str()
        .unwrap_or("")
        .contains("kilo (Radio)"));
    let media = &heard["media"];
    assert!(
        media["title"]
            .as_str()
            .unwrap_or("")
            .contains("kilo (Radio)"),
        "the Media Session does not show who talks: {media}"
    );
    assert_eq!(media["artist"], "Channel ops");
    let network = driver.expect("network_back").await;
    assert!(
        network["offline_status"]
            .as_str()
            .unwrap_or("")
            .starts_with("Offline"),
        "{network}"
    );
    assert_eq!(network["status"], "Back online.", "{network}");
    assert_eq!(network["new_logons"], 1, "{network}");
    let left = driver.expect("left").await;
    assert_eq!(left["status"], "", "no tries after leaving: {left}");
    driver.expect("done").await;
    driver.finish().await;
    drop(link);
    stop_daemon(shutdown, task).await;
}

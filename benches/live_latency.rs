//! Live talk on loopback: how long a press takes to be granted, and how much delay
//! the bridge puts between a live client's audio and another endpoint.
//!
//! Runs a real Synapse and the daemon in-process with a test endpoint on the
//! channel, then:
//!
//! 1. WebSocket press → grant: `start_stream` sent → `on_floor granted` read, 200
//!    times (each press released and the floor idle again before the next). This
//!    includes the bridge's per-press opt-in check in the database.
//! 2. Live client → other endpoint: 500 Opus packets at 20 ms pace; for each, the
//!    time from the client's WebSocket send to the test endpoint's receipt from
//!    its hub link. Everything between is the bridge (plus loopback TCP).
//! 3. In the browser, when tests/browser is installed (scripts/setup.sh): pointer
//!    press → the page shows the grant, timed inside the page, 30 presses in
//!    headless Chromium.
//!
//! Run: `cargo bench --bench live_latency`. Prints percentiles; never fails on a time.

#[path = "../tests/bridge_common/mod.rs"]
mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;
#[path = "../tests/live_common/mod.rs"]
mod live_common;

use std::path::Path;
use std::time::{Duration, Instant};

use bridge_common::{setup, speech_packets, start_daemon};
use live_common::LiveClient;
use serde_json::Value;
use walkie_endpoint::Downlink;

const PRESSES: usize = 200;
const PACKETS: usize = 500;
const BROWSER_PRESSES: usize = 30;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(measure());
}

fn percentiles(label: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    if samples.is_empty() {
        println!("{label}: no samples");
        return;
    }
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{label:<56} n={:<4} p50={:>9.2?} p99={:>9.2?} max={:>9.2?}",
        samples.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

async fn measure() {
    let setup = setup().await;
    let bob = setup.member("bob").await;
    let mut running = start_daemon(&setup.config).await;
    let mut client = LiveClient::logon_ok(setup.listen, &setup.synapse, &bob).await;

    // 1. WebSocket press → grant.
    let mut grants = Vec::with_capacity(PRESSES);
    for _ in 0..PRESSES {
        let started = Instant::now();
        let stream = client.start_stream().await;
        client.until_floor("granted").await;
        grants.push(started.elapsed());
        client.stop_stream(stream).await;
        client.until_floor("idle").await;
    }
    // 2. Live client → test endpoint, per packet.
    let (_, speech) = speech_packets();
    let packets: Vec<_> = speech.iter().cycle().take(PACKETS).cloned().collect();
    let stream = client.start_stream().await;
    client.until_floor("granted").await;
    let link = &mut running.link;
    let sent_at = {
        let send = async {
            let mut sent = Vec::with_capacity(PACKETS);
            let mut pace = tokio::time::interval(Duration::from_millis(20));
            for (n, packet) in packets.iter().enumerate() {
                pace.tick().await;
                sent.push(Instant::now());
                client.send_audio(stream, n as u32, packet).await;
            }
            sent
        };
        let receive = async {
            let mut arrivals = vec![None; PACKETS];
            let mut got = 0;
            while got < PACKETS {
                match tokio::time::timeout(Duration::from_secs(5), link.recv()).await {
                    Ok(Ok(Downlink::Audio(frame))) => {
                        let seq = frame.frame.seq as usize;
                        if seq < PACKETS && arrivals[seq].is_none() {
                            arrivals[seq] = Some(Instant::now());
                            got += 1;
                        }
                    }
                    // Floor events, also those of the presses above.
                    Ok(Ok(Downlink::Floor(_))) => continue,
                    _ => break,
                }
            }
            arrivals
        };
        let (sent, arrivals) = tokio::join!(send, receive);
        sent.into_iter()
            .zip(arrivals)
            .filter_map(|(sent, arrived)| arrived.map(|a| a.saturating_duration_since(sent)))
            .collect::<Vec<_>>()
    };
    let lost = PACKETS - sent_at.len();
    client.stop_stream(stream).await;
    client.close().await;

    // 3. The browser.
    let browser = browser_presses(&setup, &bob).await;

    println!();
    println!("live talk latency on loopback (Synapse + daemon in-process, bench profile)");
    percentiles("WebSocket start_stream → on_floor granted", grants);
    percentiles(
        &format!("live client send → other endpoint receives ({lost} lost)"),
        sent_at,
    );
    match browser {
        Ok(samples) => percentiles("browser press → grant shown (in-page timing)", samples),
        Err(why) => println!("browser press → grant shown: not measured ({why})"),
    }
    running.stop().await;
}

async fn browser_presses(
    setup: &bridge_common::Setup,
    bob: &walkie_harness::TestUser,
) -> Result<Vec<Duration>, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !dir.join("node_modules/playwright-core").is_dir()
        || !Path::new("/usr/bin/chromium").exists()
    {
        return Err("run scripts/setup.sh for Chromium and tests/browser".into());
    }
    let wav = setup.dir.path().join("speech.wav");
    common::write_wav(&wav, &common::speech(48_000), 48_000);
    let output = tokio::process::Command::new("node")
        .arg(dir.join("live.mjs"))
        .current_dir(&dir)
        .env(
            "PAGE_URL",
            format!("http://127.0.0.1:{}/live/", setup.listen),
        )
        .env("HS_URL", setup.synapse.url())
        .env("MATRIX_USER", &bob.user_id)
        .env("MATRIX_PASSWORD", &bob.password)
        .env("FAKE_AUDIO", &wav)
        .env("MODE", "bench")
        .env("PRESSES", BROWSER_PRESSES.to_string())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("node: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in stdout.lines() {
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if value["event"] == "bench" {
            return Ok(value["press_to_grant_ms"]
                .as_array()
                .map(|samples| {
                    samples
                        .iter()
                        .filter_map(Value::as_f64)
                        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
                        .collect()
                })
                .unwrap_or_default());
        }
        if value["event"] == "failed" {
            return Err(value["message"].to_string());
        }
    }
    Err(format!("the driver printed no result: {stdout}"))
}

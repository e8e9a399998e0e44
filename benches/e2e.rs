//! End to end on real servers: murmurd, mosquitto and Synapse on loopback, the real
//! `walkie-bridge` binary as a child process alone on core 0 (`taskset -c 0`),
//! the bench's clients and the servers on core 1. Issue #9, P1–P5 plus the codec
//! baselines. Prints p50/p99/max of every series with /proc/loadavg, writes
//! docs/bench/e2e.csv and draws docs/bench/e2e.png.
//!
//! Run: `cargo bench --bench e2e` (needs scripts/setup.sh). About 20 minutes.
//! `-- --quick` does 20 transmissions per series and a short P4 ramp (a smoke
//! run; it does not overwrite the CSV and chart); `-- --redraw` draws the chart
//! again from docs/bench/e2e.csv without running anything; `-- --baselines`
//! measures the codec baselines again and puts them into the CSV and chart.
//! Never fails on a time.
//!
//! What is measured (each P1–P3 series ≥ 200 transmissions):
//!
//! - **P1 added latency per hop**, per frame. Each path is
//!   sender → server A → bridge → server B → receiver. The same packet also
//!   reaches a bridge-less receiver of server A at the same moment (`bob` on
//!   murmurd, the observer subscribed to the device's topic on mosquitto), so
//!   server A's relay cancels out per frame; server B's relay is the other
//!   hop's loopback baseline (its p50, measured in the same run by the other
//!   direction's bridge-less receiver). So, for frame i:
//!   `added = (arrival behind the bridge − arrival at the bridge-less receiver of
//!   server A) − p50(server B's loopback hop)`. Mumble→MQTT and MQTT→Mumble, with
//!   the MQTT side speaking opus (passthrough) or pcm16 (transcoding); live→Mumble
//!   (the WebSocket's TCP hop is counted as the bridge's: it has no bridge-less
//!   twin). 200 transmissions of 10 frames (200 ms) at 20 ms pace.
//! - **P2 floor access**: talk start → grant. A local endpoint (a `TestEndpoint`
//!   in an in-process daemon on the same config: hub link → grant); a live client
//!   (WebSocket `start_stream` → `on_floor granted`, the opt-in read from the
//!   database at each press); an MQTT device (`in/dev/start` published → its
//!   `in/dev/floor` "granted" arrives, two broker hops included).
//! - **P3 release → voice message visible**: an MQTT device talks 500 ms,
//!   publishes `end`; time until the room owner's `/sync` shows the `m.audio`.
//! - **P4 streams per core**: channels s0..sN, each device → `mqtt.sNi` → hub →
//!   `mqtt.sNo` → subscriber, all N talking at once for 5 s, the bridge on one
//!   core. Frame latency as in `e2e_common::Streams` (bridge + one broker hop).
//!   A frame is **late** when its latency exceeds the single-stream p50 of that
//!   path by more than one frame (20 ms: a one-frame jitter buffer would run
//!   dry) or it never arrives. N is carried when ≤ 1 % of its frames are late.
//!   The ramp stops at the first N that is not carried.
//! - **P5 RSS** (VmRSS of the bridge process from /proc): idle after start, and
//!   at the end of every P4 step; "per active stream" is the least-squares slope
//!   of RSS over N.
//! - **Baselines**: the bridge's transcoding chain (Opus decode → 48→16 kHz →
//!   16→48 kHz → Opus encode: `OpusDecoder`, `PcmToPcm16`, `PcmToOpus`, the code
//!   an MQTT pcm16 round trip runs) on 60 s of speech, against bare libopus
//!   (decode + encode at 48 kHz with no resampling; and libopus decoding to and
//!   encoding from 16 kHz itself) and against `opusdec | sox rate 16k rate 48k |
//!   opusenc` on the same packets (CPU time of the processes, from getrusage;
//!   sox's `rate` at its default high quality, opusenc at its default complexity
//!   10 and the bridge's 24 kbit/s), and `sox rate 16k rate 48k` alone against
//!   the bridge's two resamplers alone.

#[path = "../tests/bridge_common/mod.rs"]
mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;
mod e2e_common;
#[path = "../tests/live_common/mod.rs"]
mod live_common;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e_common::*;
use rumqttc::QoS;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use walkie_bridge::daemon::Daemon;
use walkie_endpoint::audio::{OggOpusWriter, OpusDecoder, DEFAULT_PRE_SKIP};
use walkie_endpoint::testkit::TestEndpoint;
use walkie_endpoint::{
    Capabilities, Downlink, EndpointId, FloorEvent, Priority, StreamKey, TalkKind, Talker,
};
use walkie_harness::{Mosquitto, MumbleServer, Murmur, SvxReflector, SvxReflectorVersion};
use walkie_mqtt::transcode::{PcmToOpus, PcmToPcm16};
use walkie_mumble::{ConnectConfig, Connection, ConnectionHandle, Event};

/// One frame period.
const FRAME: Duration = Duration::from_millis(20);

struct Plan {
    transmissions: usize,
    frames_per_tx: usize,
    archive_frames: usize,
    steps: Vec<usize>,
    step_frames: usize,
    write_files: bool,
}

fn main() {
    if std::env::args().any(|a| a == "--redraw" || a == "--baselines") {
        redraw(std::env::args().any(|a| a == "--baselines"));
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    // `--only p1` runs the P1 latency paths alone (`--only svx` the SvxReflector
    // one alone); `--only idle` measures RSS per
    // idle channel (2 and 64 channels × 2 MQTT endpoints); `--only ceiling` ramps
    // passthrough streams from the bench's own MQTT server until the bridge's core
    // drops more than 1 % of frames late. None of them writes the CSV.
    let only = std::env::args()
        .skip_while(|a| a != "--only")
        .nth(1)
        .map(|s| s.to_ascii_lowercase());
    let plan = if quick {
        Plan {
            transmissions: 20,
            frames_per_tx: 10,
            archive_frames: 25,
            steps: vec![1, 4, 16],
            step_frames: 100,
            write_files: false,
        }
    } else {
        Plan {
            transmissions: 200,
            frames_per_tx: 10,
            archive_frames: 25,
            steps: vec![1, 2, 4, 8, 16, 32, 48, 64, 96, 128],
            step_frames: 250,
            write_files: true,
        }
    };
    let plan = Plan {
        write_files: plan.write_files && only.is_none(),
        ..plan
    };
    pin_to(CLIENT_CORE);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(plan, only.as_deref()));
}

/// Every printed figure, for the CSV and the chart.
#[derive(Default)]
struct Results {
    rows: Vec<CsvRow>,
    p4: Vec<StepResult>,
    /// Per-frame "behind the bridge" series of each P1 path, kept until the
    /// other hop's loopback baseline is known.
    behind: HashMap<String, Vec<f64>>,
    /// p50 of murmurd's loopback hop (alice → bob), ms.
    mumble_hop: f64,
}

struct CsvRow {
    section: &'static str,
    metric: String,
    unit: &'static str,
    summary: Option<Summary>,
    value: Option<f64>,
    load: String,
}

impl Results {
    fn series(&mut self, section: &'static str, metric: &str, unit: &'static str, xs: &[f64]) {
        let s = summarize(xs);
        let load = loadavg();
        println!(
            "{section} {metric:<58} n={:<5} p50={:>9.3} p99={:>9.3} max={:>9.3} {unit}  [load {load}]",
            s.n, s.p50, s.p99, s.max
        );
        self.rows.push(CsvRow {
            section,
            metric: metric.to_owned(),
            unit,
            summary: Some(s),
            value: Some(s.mean),
            load,
        });
    }

    fn value(&mut self, section: &'static str, metric: &str, unit: &'static str, v: f64) {
        let load = loadavg();
        println!("{section} {metric:<58} {v:>12.3} {unit}  [load {load}]");
        self.rows.push(CsvRow {
            section,
            metric: metric.to_owned(),
            unit,
            summary: None,
            value: Some(v),
            load,
        });
    }

    fn p50(&self, metric: &str) -> f64 {
        self.rows
            .iter()
            .find(|r| r.metric == metric)
            .and_then(|r| r.summary)
            .map_or(f64::NAN, |s| s.p50)
    }
}

async fn run(plan: Plan, only: Option<&str>) {
    let dir = run_dir("e2e");
    let mut results = Results::default();
    println!("e2e bench: files in {}, load {}", dir.display(), loadavg());

    if only.is_none() {
        // Baselines first, while nothing else of the bench runs.
        let audio = audio(&common::speech(48_000), &common::speech(16_000));
        baselines(&audio, &dir, &mut results);
    }

    let murmur = Murmur::builder()
        .channels(&["Ops", "Pcm"])
        .start()
        .await
        .expect("murmurd");
    let broker = broker().await;
    let (listen, status) = ports();
    let matrix = Matrix::start(&dir, listen).await;
    let ops_room = matrix.room("ops").await;
    matrix.room("pcm").await;
    let max_streams = match only {
        Some("idle") => IDLE_CHANNELS,
        // Rooms are made step by step there.
        Some("ceiling") => 0,
        Some(_) => 0,
        None => plan.steps.iter().copied().max().unwrap_or(1),
    };
    for i in 0..max_streams {
        matrix.room(&format!("s{i}")).await;
    }
    println!(
        "servers and {} rooms ready, load {}",
        max_streams + 2,
        loadavg()
    );

    let url = matrix.synapse.url();
    let murmur_address = murmur.address();
    let env = ConfigEnv {
        homeserver: &url,
        listen,
        status,
        dir: &dir,
        mosquitto_port: broker.port(),
        murmur: &murmur_address,
        live: true,
    };
    let text = config_text(&env, &e2e_channels());

    if only == Some("idle") {
        idle_memory(&env, &broker, &mut results).await;
        return;
    }
    if only == Some("svx") {
        p1_svxreflector_to_mumble(&env, &matrix, &plan, &mut results).await;
        return;
    }
    if only == Some("ceiling") {
        passthrough_ceiling(&env, &matrix, &plan, &mut results).await;
        return;
    }
    if only.is_none() {
        p2_local(&text, &plan, &mut results).await;
    }

    let bridge = Bridge::start(&dir, "e2e", &text, status).await;
    let mut lab = Lab::connect(&murmur, &broker).await;
    lab.wait_bridge_ready().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle, _) = bridge.rss_kib();
    results.value(
        "P5",
        "RSS idle, e2e config (2 channels: Mumble + MQTT + live each)",
        "KiB",
        idle as f64,
    );

    p1_mumble_to_mqtt(&mut lab, &plan, &mut results, "").await;
    p1_mqtt_to_mumble(&mut lab, &plan, &mut results, "").await;
    p1_live(&mut lab, &matrix, listen, &plan, &mut results).await;
    if only.is_some() {
        bridge.stop();
        drop(lab);
        p1_on_mumble_1_5(&env, &broker, &plan, &mut results).await;
        p1_svxreflector_to_mumble(&env, &matrix, &plan, &mut results).await;
        return;
    }
    p3_archive(&mut lab, &matrix, &ops_room, &plan, &mut results).await;
    let (rss, hwm) = bridge.rss_kib();
    results.value("P5", "RSS after P1–P3, e2e config", "KiB", rss as f64);
    results.value("P5", "VmHWM after P1–P3, e2e config", "KiB", hwm as f64);
    bridge.stop();
    drop(lab);
    p1_on_mumble_1_5(&env, &broker, &plan, &mut results).await;
    p1_svxreflector_to_mumble(&env, &matrix, &plan, &mut results).await;

    for pcm16 in [false, true] {
        p4_ramp(&env, pcm16, max_streams, &plan, &broker, &mut results).await;
    }

    if plan.write_files {
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bench");
        std::fs::create_dir_all(&out).expect("docs/bench");
        write_csv(&out.join("e2e.csv"), &results);
        match chart(&out.join("e2e.png"), &results) {
            Ok(()) => println!("wrote {}", out.join("e2e.png").display()),
            Err(why) => println!("chart not drawn: {why}"),
        }
    }
    println!("done, load {}", loadavg());
}

fn e2e_channels() -> Vec<ChannelSpec> {
    let channel = |name: &str, mumble: &str, bot: &str, prefix: &str, pcm16| ChannelSpec {
        name: name.to_owned(),
        endpoints: vec![
            EndpointSpec::Mumble {
                name: name.to_owned(),
                channel: mumble.to_owned(),
                username: bot.to_owned(),
            },
            EndpointSpec::Mqtt {
                name: prefix.to_owned(),
                prefix: prefix.to_owned(),
                pcm16,
            },
        ],
    };
    vec![
        channel("ops", "Ops", "walkie", "op", false),
        channel("pcm", "Pcm", "walkiepcm", "pc", true),
    ]
}

// ---------------------------------------------------------------------------
// Clients of the P1–P3 phase.

/// A voice packet bob heard: who sent it, Mumble sequence number, terminator.
struct Heard {
    name: String,
    seq: u64,
    at: Instant,
}

/// Per Mumble channel: alice talks, bob listens.
struct MumblePair {
    alice: ConnectionHandle,
    _bob: ConnectionHandle,
    heard: mpsc::UnboundedReceiver<Heard>,
}

struct Lab {
    pairs: HashMap<&'static str, MumblePair>,
    mqtt: rumqttc::AsyncClient,
    seen: mpsc::UnboundedReceiver<Arrival>,
    audio: Audio,
}

fn mumble_client(murmur: &Murmur, name: &str, channel: &str) -> ConnectConfig {
    let mut config = ConnectConfig::new(murmur.address(), name, channel);
    config.accept_invalid_cert = true;
    config
}

impl Lab {
    async fn connect(murmur: &Murmur, broker: &Mosquitto) -> Self {
        let mut pairs = HashMap::new();
        for (channel, suffix) in [("Ops", "ops"), ("Pcm", "pcm")] {
            let (bob, mut events) =
                Connection::connect(mumble_client(murmur, &format!("bob{suffix}"), channel))
                    .await
                    .expect("bob connects");
            let (alice, _alice_events) =
                Connection::connect(mumble_client(murmur, &format!("alice{suffix}"), channel))
                    .await
                    .expect("alice connects");
            let (tx, heard) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let _alice_events = _alice_events;
                while let Some(event) = events.recv().await {
                    // The bot ends a talk with an empty terminator packet: no frame.
                    if let Event::Voice {
                        name, seq, opus, ..
                    } = event
                    {
                        if !opus.is_empty() {
                            let _ = tx.send(Heard {
                                name,
                                seq,
                                at: Instant::now(),
                            });
                        }
                    }
                }
            });
            pairs.insert(
                if suffix == "ops" { "ops" } else { "pcm" },
                MumblePair {
                    alice,
                    _bob: bob,
                    heard,
                },
            );
        }
        // One id per Lab: the broker disconnects a client whose id another takes,
        // and an earlier Lab's client may still be connected.
        let (mqtt, seen) = mqtt_client(
            broker.port(),
            &format!("e2e-observer-{}", murmur.port()),
            &[
                "+/status",
                "+/in/dev/audio",
                "+/in/dev/floor",
                "+/out/audio",
            ],
        )
        .await;
        Self {
            pairs,
            mqtt,
            seen,
            audio: audio(&common::speech(48_000), &common::speech(16_000)),
        }
    }

    async fn wait_bridge_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        let mut online = std::collections::HashSet::new();
        while online.len() < 2 {
            let arrival = tokio::time::timeout_at(deadline.into(), self.seen.recv())
                .await
                .expect("MQTT endpoints online")
                .expect("observer");
            if arrival.topic.ends_with("/status") && arrival.payload == b"online" {
                online.insert(arrival.topic);
            }
        }
        for (key, bot) in [("ops", "walkie"), ("pcm", "walkiepcm")] {
            let pair = &self.pairs[key];
            while !pair.alice.users_in_channel().iter().any(|u| u.name == bot) {
                assert!(Instant::now() < deadline, "bridge bot {bot} never joined");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn drain(&mut self) {
        while self.seen.try_recv().is_ok() {}
        for pair in self.pairs.values_mut() {
            while pair.heard.try_recv().is_ok() {}
        }
    }

    /// Mumble frames bob heard from `sender` since the last drain, by frame index
    /// in the talk (Mumble counts 10 ms units, 2 per 20 ms packet).
    fn heard_from(&mut self, key: &str, sender: &str) -> HashMap<usize, Instant> {
        let mut out = HashMap::new();
        let mut first = None;
        let Some(pair) = self.pairs.get_mut(key) else {
            return out;
        };
        while let Ok(heard) = pair.heard.try_recv() {
            if heard.name != sender {
                continue;
            }
            let first = *first.get_or_insert(heard.seq);
            out.entry((heard.seq.saturating_sub(first) / 2) as usize)
                .or_insert(heard.at);
        }
        out
    }

    /// MQTT arrivals since the last drain: (topic → seq → time), plus floor answers.
    fn mqtt_seen(&mut self) -> (HashMap<String, HashMap<u32, Instant>>, Vec<Arrival>) {
        let mut audio: HashMap<String, HashMap<u32, Instant>> = HashMap::new();
        let mut other = Vec::new();
        while let Ok(arrival) = self.seen.try_recv() {
            if arrival.topic.ends_with("/audio") {
                if let Some(seq) = seq_of(&arrival.payload) {
                    audio
                        .entry(arrival.topic.clone())
                        .or_default()
                        .entry(seq)
                        .or_insert(arrival.at);
                }
            } else {
                other.push(arrival);
            }
        }
        (audio, other)
    }
}

// ---------------------------------------------------------------------------
// P2, local endpoint: the in-process daemon on the same config.

async fn p2_local(text: &str, plan: &Plan, results: &mut Results) {
    let config = parse_config(text);
    let (endpoint, handle) =
        TestEndpoint::new(EndpointId::new("bench.local"), Capabilities::default());
    let shutdown = CancellationToken::new();
    let daemon = Daemon::new(config).with_endpoint("ops", Box::new(endpoint));
    let task = tokio::spawn(daemon.run(shutdown.clone()));
    let mut link = tokio::time::timeout(WAIT, handle.link())
        .await
        .expect("the in-process daemon starts")
        .expect("the daemon runs the bench endpoint");
    let mut grants = Vec::with_capacity(plan.transmissions);
    for _ in 0..plan.transmissions {
        let stream = StreamKey(1);
        let started = Instant::now();
        link.talk_start(
            stream,
            Talker::new("kilo", "kilo (Radio)"),
            Priority::Normal,
            TalkKind::Live,
        )
        .await
        .expect("hub running");
        loop {
            match tokio::time::timeout(WAIT, link.recv()).await {
                Ok(Ok(Downlink::Floor(FloorEvent::Granted { .. }))) => break,
                Ok(Ok(Downlink::Floor(FloorEvent::Denied { reason, .. }))) => {
                    panic!("local talk denied: {reason}")
                }
                Ok(Ok(_)) => continue,
                other => panic!("no grant: {other:?}"),
            }
        }
        grants.push(ms(started.elapsed()));
        link.talk_end(stream).await.expect("hub running");
        loop {
            match tokio::time::timeout(WAIT, link.recv()).await {
                Ok(Ok(Downlink::Floor(FloorEvent::Released { .. }))) => break,
                Ok(Ok(_)) => continue,
                other => panic!("no release: {other:?}"),
            }
        }
    }
    results.series(
        "P2",
        "floor access, local endpoint (hub link talk start → granted)",
        "ms",
        &grants,
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(WAIT, task).await;
}

// ---------------------------------------------------------------------------
// P1.

/// `tag` follows each metric's path name: "" on murmurd 1.3.4 (the names the CSV
/// has always had), [`ON_1_5`] on mumble-server 1.5.
async fn p1_mumble_to_mqtt(lab: &mut Lab, plan: &Plan, results: &mut Results, tag: &str) {
    for (key, prefix, path) in [("ops", "op", "opus"), ("pcm", "pc", "pcm16")] {
        let out_topic = format!("{prefix}/out/audio");
        let mut mumble_hop = Vec::new();
        let mut behind_bridge = Vec::new();
        let mut end_to_end = Vec::new();
        let mut lost = 0;
        let packets = lab.audio.opus.clone();
        for tx in 0..plan.transmissions {
            lab.drain();
            let mut sent = Vec::with_capacity(plan.frames_per_tx);
            let mut pace = tokio::time::interval(FRAME);
            for f in 0..plan.frames_per_tx {
                pace.tick().await;
                sent.push(Instant::now());
                let packet = &packets[(tx * plan.frames_per_tx + f) % packets.len()];
                lab.pairs[key]
                    .alice
                    .send_voice(packet, f + 1 == plan.frames_per_tx)
                    .await
                    .expect("alice sends");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            let bob = lab.heard_from(key, &format!("alice{key}"));
            let (mqtt, _) = lab.mqtt_seen();
            let out = mqtt.get(&out_topic);
            for (i, sent_at) in sent.iter().enumerate() {
                match (bob.get(&i), out.and_then(|o| o.get(&(i as u32)))) {
                    (Some(b), Some(o)) => {
                        mumble_hop.push(diff_ms(*b, *sent_at));
                        behind_bridge.push(diff_ms(*o, *b));
                        end_to_end.push(diff_ms(*o, *sent_at));
                    }
                    _ => lost += 1,
                }
            }
        }
        let label = format!("Mumble→MQTT {path}{tag}");
        results.series(
            "P1",
            &format!(
                "{label}: {} hop alice→bob (loopback baseline)",
                server_name(tag)
            ),
            "ms",
            &mumble_hop,
        );
        results.series(
            "P1",
            &format!("{label}: bob → MQTT subscriber (bridge + broker hop)"),
            "ms",
            &behind_bridge,
        );
        results.series(
            "P1",
            &format!("{label}: end to end alice → MQTT subscriber"),
            "ms",
            &end_to_end,
        );
        results.value(
            "P1",
            &format!("{label}: frames lost"),
            "frames",
            lost as f64,
        );
        results.behind.insert(label, behind_bridge);
    }
}

async fn p1_mqtt_to_mumble(lab: &mut Lab, plan: &Plan, results: &mut Results, tag: &str) {
    let mut device_grants = Vec::new();
    let mut mqtt_hops_all = Vec::new();
    for (key, prefix, bot, path) in [
        ("ops", "op", "walkie", "opus"),
        ("pcm", "pc", "walkiepcm", "pcm16"),
    ] {
        let in_topic = format!("{prefix}/in/dev/audio");
        let payloads = if path == "opus" {
            lab.audio.opus.clone()
        } else {
            lab.audio.pcm16.clone()
        };
        let mut mqtt_hop = Vec::new();
        let mut behind_bridge = Vec::new();
        let mut end_to_end = Vec::new();
        let mut lost = 0;
        for tx in 0..plan.transmissions {
            lab.drain();
            let asked = Instant::now();
            lab.mqtt
                .publish(
                    format!("{prefix}/in/dev/start"),
                    QoS::AtLeastOnce,
                    false,
                    r#"{"talker":"bench"}"#,
                )
                .await
                .expect("publish");
            let deadline = Instant::now() + WAIT;
            let granted = loop {
                let arrival = tokio::time::timeout_at(deadline.into(), lab.seen.recv())
                    .await
                    .expect("floor answer")
                    .expect("observer");
                if arrival.topic == format!("{prefix}/in/dev/floor") {
                    assert!(
                        arrival.payload.windows(9).any(|w| w == b"\"granted\""),
                        "device not granted: {}",
                        String::from_utf8_lossy(&arrival.payload)
                    );
                    break arrival.at;
                }
            };
            device_grants.push(diff_ms(granted, asked));
            let mut sent = Vec::with_capacity(plan.frames_per_tx);
            let mut pace = tokio::time::interval(FRAME);
            for f in 0..plan.frames_per_tx {
                pace.tick().await;
                sent.push(Instant::now());
                let audio = &payloads[(tx * plan.frames_per_tx + f) % payloads.len()];
                lab.mqtt
                    .publish(
                        in_topic.clone(),
                        QoS::AtMostOnce,
                        false,
                        framed(f as u32, audio),
                    )
                    .await
                    .expect("publish");
            }
            pace.tick().await;
            lab.mqtt
                .publish(format!("{prefix}/in/dev/end"), QoS::AtLeastOnce, false, "")
                .await
                .expect("publish");
            tokio::time::sleep(Duration::from_millis(250)).await;
            let (mqtt, _) = lab.mqtt_seen();
            let bob = lab.heard_from(key, bot);
            let seen_in = mqtt.get(&in_topic);
            for (i, sent_at) in sent.iter().enumerate() {
                match (seen_in.and_then(|s| s.get(&(i as u32))), bob.get(&i)) {
                    (Some(inp), Some(b)) => {
                        mqtt_hop.push(diff_ms(*inp, *sent_at));
                        behind_bridge.push(diff_ms(*b, *inp));
                        end_to_end.push(diff_ms(*b, *sent_at));
                    }
                    _ => lost += 1,
                }
            }
        }
        let label = format!("MQTT {path}→Mumble{tag}");
        // The first frame of a talk and the rest, apart: a talk start costs more.
        let per_tx = plan.frames_per_tx.max(1);
        let (mut first, mut rest) = (Vec::new(), Vec::new());
        for (i, x) in behind_bridge.iter().enumerate() {
            if i % per_tx == 0 {
                first.push(*x);
            } else {
                rest.push(*x);
            }
        }
        let (first, rest) = (summarize(&first), summarize(&rest));
        println!(
            "    {label}: first frame of a talk p50 {:.3} p99 {:.3} ms; later frames p50 {:.3} p99 {:.3} ms",
            first.p50, first.p99, rest.p50, rest.p99
        );
        results.series(
            "P1",
            &format!("{label}: mosquitto hop device→subscriber (loopback baseline)"),
            "ms",
            &mqtt_hop,
        );
        results.series(
            "P1",
            &format!(
                "{label}: subscriber → bob (bridge + {} hop)",
                server_name(tag)
            ),
            "ms",
            &behind_bridge,
        );
        results.series(
            "P1",
            &format!("{label}: end to end device → bob"),
            "ms",
            &end_to_end,
        );
        results.value(
            "P1",
            &format!("{label}: frames lost"),
            "frames",
            lost as f64,
        );
        mqtt_hops_all.extend_from_slice(&mqtt_hop);
        results.behind.insert(label, behind_bridge);
    }
    results.series(
        "P2",
        &format!("floor access, MQTT device (start published → granted arrives){tag}"),
        "ms",
        &device_grants,
    );

    // Now both hops' baselines are known: the bridge's share of each path.
    let mumble_hop = summarize(
        &[
            format!(
                "Mumble→MQTT opus{tag}: {} hop alice→bob (loopback baseline)",
                server_name(tag)
            ),
            format!(
                "Mumble→MQTT pcm16{tag}: {} hop alice→bob (loopback baseline)",
                server_name(tag)
            ),
        ]
        .iter()
        .map(|m| results.p50(m))
        .collect::<Vec<_>>(),
    )
    .mean;
    let mqtt_hop = summarize(&mqtt_hops_all).p50;
    if tag.is_empty() {
        results.mumble_hop = mumble_hop;
    }
    println!(
        "P1 baselines{tag}: Mumble server hop p50 {mumble_hop:.3} ms, mosquitto hop p50 {mqtt_hop:.3} ms"
    );
    for (label, other_hop) in [
        (format!("Mumble→MQTT opus{tag}"), mqtt_hop),
        (format!("Mumble→MQTT pcm16{tag}"), mqtt_hop),
        (format!("MQTT opus→Mumble{tag}"), mumble_hop),
        (format!("MQTT pcm16→Mumble{tag}"), mumble_hop),
    ] {
        let label = label.as_str();
        let behind = results.behind.get(label).cloned().unwrap_or_default();
        let added: Vec<f64> = behind.iter().map(|b| b - other_hop).collect();
        results.series(
            "P1",
            &format!("ADDED {label} ({})", transcode_note(label)),
            "ms",
            &added,
        );
    }
}

/// What follows the path names of P1 run on mumble-server 1.5.
const ON_1_5: &str = " [mumble-server 1.5]";

/// The Mumble server of a P1 run, by its tag.
fn server_name(tag: &str) -> &'static str {
    if tag == ON_1_5 {
        "mumble-server"
    } else {
        "murmurd"
    }
}

/// P1's Mumble paths again, with the same clients and the same bridge config,
/// on Debian 13's mumble-server 1.5 (protobuf voice) instead of murmurd 1.3.4:
/// both side by side in one run.
async fn p1_on_mumble_1_5(
    env: &ConfigEnv<'_>,
    broker: &Mosquitto,
    plan: &Plan,
    results: &mut Results,
) {
    let murmur = Murmur::builder()
        .server(MumbleServer::Mumble1_5)
        .channels(&["Ops", "Pcm"])
        .start()
        .await
        .expect("mumble-server 1.5");
    let address = murmur.address();
    let env = ConfigEnv {
        murmur: &address,
        ..*env
    };
    let text = config_text(&env, &e2e_channels());
    let bridge = Bridge::start(env.dir, "e2e-mumble-1.5", &text, env.status).await;
    let mut lab = Lab::connect(&murmur, broker).await;
    lab.wait_bridge_ready().await;
    println!("P1 on mumble-server 1.5 {}", address);
    p1_mumble_to_mqtt(&mut lab, plan, results, ON_1_5).await;
    p1_mqtt_to_mumble(&mut lab, plan, results, ON_1_5).await;
    bridge.stop();
}

/// P1 SvxReflector → Mumble: a node of our own (walkie-svxreflector's session,
/// as the bench's other clients are the workspace's own) talks on a 19.09
/// reflector; a second node there is the bridge-less receiver, so the
/// reflector's relay cancels out per frame; bob hears the bridge's bot on a
/// murmurd of this path's own, whose hop (alice → bob there, measured here too)
/// is subtracted. Self-contained: `--only svx` runs it alone.
async fn p1_svxreflector_to_mumble(
    env: &ConfigEnv<'_>,
    matrix: &Matrix,
    plan: &Plan,
    results: &mut Results,
) {
    const KEY: &str = "bench key";
    let reflector = SvxReflector::builder(SvxReflectorVersion::V19_09)
        .node("SM0BRG", KEY)
        .node("SM0SND", KEY)
        .node("SM0OBS", KEY)
        .start()
        .await
        .expect("svxreflector");
    let murmur = Murmur::builder()
        .channels(&["Svx"])
        .start()
        .await
        .expect("murmurd");
    matrix.room("svx").await;
    let address = murmur.address();
    let env = ConfigEnv {
        murmur: &address,
        ..*env
    };
    let channels = [ChannelSpec {
        name: "svx".into(),
        endpoints: vec![
            EndpointSpec::SvxReflector {
                name: "net".into(),
                server: reflector.address(),
                callsign: "SM0BRG".into(),
                auth_key: KEY.into(),
            },
            EndpointSpec::Mumble {
                name: "svx".into(),
                channel: "Svx".into(),
                username: "walkie".into(),
            },
        ],
    }];
    let text = config_text(&env, &channels);
    let bridge = Bridge::start(env.dir, "e2e-svxreflector", &text, env.status).await;
    let node = |callsign: &str| walkie_svxreflector::ConnectConfig {
        host: reflector.host().to_owned(),
        port: reflector.port(),
        callsign: callsign.to_owned(),
        auth_key: KEY.to_owned(),
        talkgroup: None,
    };
    let (sender, mut sender_events) = walkie_svxreflector::Connection::connect(&node("SM0SND"))
        .await
        .expect("sender node");
    // Its own talker news, unread, would fill its queue.
    tokio::spawn(async move { while sender_events.recv().await.is_some() {} });
    let (_observer, mut observer_events) =
        walkie_svxreflector::Connection::connect(&node("SM0OBS"))
            .await
            .expect("observer node");
    let (_bob, mut bob_events) = Connection::connect(mumble_client(&murmur, "bobsvx", "Svx"))
        .await
        .expect("bob connects");
    let (alice, mut alice_events) = Connection::connect(mumble_client(&murmur, "alicesvx", "Svx"))
        .await
        .expect("alice connects");
    // She hears the bot meanwhile; unread, that would stall her connection.
    tokio::spawn(async move { while alice_events.recv().await.is_some() {} });
    // Stamped as they arrive, read after each talk.
    let (observed_tx, mut observed) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = observer_events.recv().await {
            if let walkie_svxreflector::Event::Audio(_) = event {
                let _ = observed_tx.send(Instant::now());
            }
        }
    });
    let (heard_tx, mut heard) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = bob_events.recv().await {
            if let Event::Voice {
                name, seq, opus, ..
            } = event
            {
                if !opus.is_empty() {
                    let _ = heard_tx.send((name, seq, Instant::now()));
                }
            }
        }
    });
    reflector
        .wait_for_log("SM0BRG: Login OK", WAIT)
        .await
        .expect("the bridge's node logs in");
    let deadline = Instant::now() + WAIT;
    while !_bob.users_in_channel().iter().any(|u| u.name == "walkie") {
        assert!(
            Instant::now() < deadline,
            "the bridge's bot never joined Svx"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let packets = audio(&common::speech(48_000), &common::speech(16_000)).opus;
    let (mut behind_bridge, mut reflector_hop, mut first, mut rest) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut lost = 0;
    for tx in 0..plan.transmissions {
        while observed.try_recv().is_ok() {}
        while heard.try_recv().is_ok() {}
        let mut sent = Vec::with_capacity(plan.frames_per_tx);
        let mut pace = tokio::time::interval(FRAME);
        for f in 0..plan.frames_per_tx {
            pace.tick().await;
            sent.push(Instant::now());
            let packet = &packets[(tx * plan.frames_per_tx + f) % packets.len()];
            sender.send_audio(bytes::Bytes::copy_from_slice(packet));
        }
        pace.tick().await;
        sender.flush().await;
        // The talk's last frames and its end cross both servers well within this.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut at_observer = Vec::new();
        while let Ok(at) = observed.try_recv() {
            at_observer.push(at);
        }
        // Mumble counts 10 ms units, 2 per 20 ms packet.
        let mut at_bob: HashMap<usize, Instant> = HashMap::new();
        let mut first_seq = None;
        while let Ok((name, seq, at)) = heard.try_recv() {
            if name != "walkie" {
                continue;
            }
            let first = *first_seq.get_or_insert(seq);
            at_bob
                .entry((seq.saturating_sub(first) / 2) as usize)
                .or_insert(at);
        }
        for (i, sent_at) in sent.iter().enumerate() {
            match (at_observer.get(i), at_bob.get(&i)) {
                (Some(obs), Some(bob)) => {
                    reflector_hop.push(diff_ms(*obs, *sent_at));
                    let behind = diff_ms(*bob, *obs);
                    behind_bridge.push(behind);
                    if i == 0 {
                        first.push(behind);
                    } else {
                        rest.push(behind);
                    }
                }
                _ => lost += 1,
            }
        }
    }
    // The Mumble hop of this server: alice → bob, the same packets and pace.
    let mut mumble_hop = Vec::new();
    for tx in 0..plan.transmissions {
        while heard.try_recv().is_ok() {}
        let mut sent = Vec::with_capacity(plan.frames_per_tx);
        let mut pace = tokio::time::interval(FRAME);
        for f in 0..plan.frames_per_tx {
            pace.tick().await;
            sent.push(Instant::now());
            let packet = &packets[(tx * plan.frames_per_tx + f) % packets.len()];
            let last = f + 1 == plan.frames_per_tx;
            alice.send_voice(packet, last).await.expect("alice talks");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut first_seq = None;
        let mut at_bob: HashMap<usize, Instant> = HashMap::new();
        while let Ok((name, seq, at)) = heard.try_recv() {
            if name == "alicesvx" {
                let first = *first_seq.get_or_insert(seq);
                at_bob
                    .entry((seq.saturating_sub(first) / 2) as usize)
                    .or_insert(at);
            }
        }
        for (i, sent_at) in sent.iter().enumerate() {
            if let Some(bob) = at_bob.get(&i) {
                mumble_hop.push(diff_ms(*bob, *sent_at));
            }
        }
    }
    bridge.stop();
    let label = "SvxReflector→Mumble";
    let (f, r) = (summarize(&first), summarize(&rest));
    println!(
        "    {label}: first frame of a talk p50 {:.3} p99 {:.3} ms; later frames p50 {:.3} p99 {:.3} ms",
        f.p50, f.p99, r.p50, r.p99
    );
    results.series(
        "P1",
        &format!("{label}: svxreflector hop node→node (loopback baseline)"),
        "ms",
        &reflector_hop,
    );
    results.series(
        "P1",
        &format!("{label}: observer node → bob (bridge + murmurd hop)"),
        "ms",
        &behind_bridge,
    );
    results.value(
        "P1",
        &format!("{label}: frames lost"),
        "frames",
        lost as f64,
    );
    results.series(
        "P1",
        &format!("{label}: murmurd hop alice→bob (loopback baseline)"),
        "ms",
        &mumble_hop,
    );
    let mumble_hop = summarize(&mumble_hop).p50;
    let added: Vec<f64> = behind_bridge.iter().map(|b| b - mumble_hop).collect();
    results.series("P1", &format!("ADDED {label} (passthrough)"), "ms", &added);
}

fn transcode_note(label: &str) -> &'static str {
    if label.contains("pcm16") {
        "transcoding"
    } else {
        "passthrough"
    }
}

// ---------------------------------------------------------------------------
// P1 live → Mumble, P2 live.

async fn p1_live(lab: &mut Lab, matrix: &Matrix, listen: u16, plan: &Plan, results: &mut Results) {
    let user = matrix
        .synapse
        .register_user("lima", false)
        .await
        .expect("lima");
    matrix
        .synapse
        .client(&user)
        .join(&format!("#ops:{SERVER}"))
        .await
        .expect("lima joins");
    let mut client = live_common::LiveClient::logon_ok(listen, &matrix.synapse, &user).await;

    let mut grants = Vec::with_capacity(plan.transmissions);
    for _ in 0..plan.transmissions {
        let started = Instant::now();
        let stream = client.start_stream().await;
        client.until_floor("granted").await;
        grants.push(ms(started.elapsed()));
        client.stop_stream(stream).await;
        client.until_floor("idle").await;
    }
    results.series(
        "P2",
        "floor access, live client (start_stream → on_floor granted)",
        "ms",
        &grants,
    );

    let mumble_hop = results.mumble_hop;
    let packets = lab.audio.opus.clone();
    let mut end_to_end = Vec::new();
    let mut lost = 0;
    for tx in 0..plan.transmissions {
        let stream = client.start_stream().await;
        client.until_floor("granted").await;
        lab.drain();
        let mut sent = Vec::with_capacity(plan.frames_per_tx);
        let mut pace = tokio::time::interval(FRAME);
        for f in 0..plan.frames_per_tx {
            pace.tick().await;
            sent.push(Instant::now());
            let packet = &packets[(tx * plan.frames_per_tx + f) % packets.len()];
            client.send_audio(stream, f as u32, packet).await;
        }
        pace.tick().await;
        client.stop_stream(stream).await;
        client.until_floor("idle").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let bob = lab.heard_from("ops", "walkie");
        for (i, sent_at) in sent.iter().enumerate() {
            match bob.get(&i) {
                Some(b) => end_to_end.push(diff_ms(*b, *sent_at)),
                None => lost += 1,
            }
        }
    }
    results.series(
        "P1",
        "live→Mumble: end to end WebSocket send → bob",
        "ms",
        &end_to_end,
    );
    let added: Vec<f64> = end_to_end.iter().map(|e| e - mumble_hop).collect();
    results.series(
        "P1",
        "ADDED live→Mumble (passthrough; WebSocket TCP hop included)",
        "ms",
        &added,
    );
    results.value("P1", "live→Mumble: frames lost", "frames", lost as f64);
    client.close().await;
}

// ---------------------------------------------------------------------------
// P3.

async fn p3_archive(
    lab: &mut Lab,
    matrix: &Matrix,
    room_id: &str,
    plan: &Plan,
    results: &mut Results,
) {
    let alice = matrix.synapse.client(&matrix.alice);
    let mut seen = std::collections::HashSet::new();
    let is_audio = |e: &walkie_harness::SyncEvent| {
        e.room_id == room_id
            && e.event_type() == "m.room.message"
            && e.content()["msgtype"] == "m.audio"
    };
    // Everything already in the room is history: mark it seen.
    let _ = alice
        .sync_until(
            |e| {
                if is_audio(e) {
                    seen.insert(e.event_id().unwrap_or_default().to_owned());
                }
                false
            },
            Duration::from_secs(3),
        )
        .await;
    // Past the previous talker's reply window (hang_ms), so the first talk is
    // granted at once and none of its frames are refused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut samples = Vec::with_capacity(plan.transmissions);
    for tx in 0..plan.transmissions {
        lab.mqtt
            .publish(
                "op/in/dev/start",
                QoS::AtLeastOnce,
                false,
                r#"{"talker":"papa"}"#,
            )
            .await
            .expect("publish");
        tokio::time::sleep(FRAME).await;
        let mut pace = tokio::time::interval(FRAME);
        for f in 0..plan.archive_frames {
            pace.tick().await;
            let packet = &lab.audio.opus[(tx * plan.archive_frames + f) % lab.audio.opus.len()];
            lab.mqtt
                .publish(
                    "op/in/dev/audio",
                    QoS::AtMostOnce,
                    false,
                    framed(f as u32, packet),
                )
                .await
                .expect("publish");
        }
        pace.tick().await;
        let released = Instant::now();
        lab.mqtt
            .publish("op/in/dev/end", QoS::AtLeastOnce, false, "")
            .await
            .expect("publish");
        let event = alice
            .sync_until(
                |e| is_audio(e) && !seen.contains(e.event_id().unwrap_or_default()),
                WAIT,
            )
            .await
            .expect("voice message visible");
        samples.push(ms(released.elapsed()));
        seen.insert(event.event_id().unwrap_or_default().to_owned());
        lab.drain();
    }
    results.series(
        "P3",
        "release → voice message visible to a syncing client (500 ms talks)",
        "ms",
        &samples,
    );
}

// ---------------------------------------------------------------------------
// P4 / P5.

/// Channels of the larger idle configuration in `--only idle`.
const IDLE_CHANNELS: usize = 64;

/// `--only idle`: RSS of the bridge idle with 2 and with [`IDLE_CHANNELS`]
/// channels (each 2 MQTT endpoints on mosquitto and a Matrix room), and the
/// difference per channel.
async fn idle_memory(env: &ConfigEnv<'_>, broker: &Mosquitto, results: &mut Results) {
    let mut points = Vec::new();
    for n in [2, IDLE_CHANNELS] {
        let channels: Vec<ChannelSpec> = (0..n).map(|i| stream_channel(i, false)).collect();
        let name = format!("idle-{n}");
        let bridge = Bridge::start(env.dir, &name, &config_text(env, &channels), env.status).await;
        let streams = Streams::connect(broker.port(), n, &name).await;
        // A timer on purpose: "idle" is measured after the start-up work (endpoints
        // connecting, rooms joined, the bot's device published) has had 5 s to finish
        // and its temporary buffers to be freed, as an operator's first look would be.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (rss, _) = bridge.rss_kib();
        results.value(
            "P5",
            &format!("RSS idle, {n} channels × 2 MQTT endpoints (opus)"),
            "KiB",
            rss as f64,
        );
        // The binary's own pages (file-backed, shared with every other copy of
        // it) are much of an idle bridge's RSS; anonymous memory is what it made.
        let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", bridge.pid()))
            .unwrap_or_default();
        for field in ["Pss_Anon", "Pss_File"] {
            let kib = rollup
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            results.value(
                "P5",
                &format!("  of which {field}, {n} channels"),
                "KiB",
                kib,
            );
        }
        // jemalloc's own view (`walkie_heap_bytes`): what is allocated, and what it
        // holds resident (allocated plus freed pages not yet given back), so an
        // RSS change can be told apart from the allocator's timing.
        let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", env.status))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        for state in ["allocated", "resident"] {
            let prefix = format!("walkie_heap_bytes{{heap=\"rust\",state=\"{state}\"}} ");
            let bytes = metrics
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            results.value(
                "P5",
                &format!("  jemalloc {state}, {n} channels"),
                "KiB",
                bytes / 1024.0,
            );
        }
        points.push((n as f64, rss as f64));
        drop(streams);
        if Bridge::heap_traced() {
            bridge.kill();
        } else {
            bridge.stop();
        }
    }
    let per_channel = (points[1].1 - points[0].1) / (points[1].0 - points[0].0);
    results.value(
        "P5",
        "RSS per idle channel (2 MQTT endpoints)",
        "KiB",
        per_channel,
    );
}

/// Groups of streams in `--only ceiling` that send at different moments of each
/// frame (2 ms apart).
const PHASES: usize = 10;

/// Steps of `--only ceiling` (streams), unless `WALKIE_CEILING_STEPS` lists others.
const CEILING_STEPS: [usize; 10] = [100, 250, 500, 750, 1000, 1500, 2000, 2500, 3000, 4000];

/// `--only ceiling` (issue #16 item 3): how many Opus passthrough streams the
/// bridge's one core carries. Each step starts a bridge with N channels (two MQTT
/// endpoints and a Matrix room each) connected to the bench's own MQTT server
/// ([`LoadBroker`]: no broker relay to saturate first), all N talk for
/// `step_frames` frames at once (their frames spread over each 20 ms in
/// [`PHASES`] groups), and a frame is late as in P4 (over the
/// first step's p50 + 20 ms, or never out). Recordings are made (their cost per
/// frame counts) but not posted: `min_archive_ms = 10000` keeps 5-s talks out
/// of the room, or each step would end by measuring Synapse posting N voice
/// messages (`WALKIE_CEILING_WAVEFORM` sets `archive.waveform`, "decoded" by
/// default). `WALKIE_BENCH_PERF_DIR` records a CPU profile of the bridge
/// (`perf record`, 4 s mid-talk) at every step.
async fn passthrough_ceiling(
    env: &ConfigEnv<'_>,
    matrix: &Matrix,
    plan: &Plan,
    results: &mut Results,
) {
    let steps: Vec<usize> = std::env::var("WALKIE_CEILING_STEPS")
        .ok()
        .map(|list| {
            list.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .unwrap_or_else(|| CEILING_STEPS.to_vec());
    // `WALKIE_CEILING_WAVEFORM=estimated`: recordings' waveforms from packet sizes.
    let waveform = std::env::var("WALKIE_CEILING_WAVEFORM").unwrap_or("decoded".into());
    println!("ceiling: archive.waveform = {waveform:?}");
    let load = LoadBroker::start().await;
    let env = ConfigEnv {
        mosquitto_port: load.port(),
        ..*env
    };
    let audio = audio(&common::speech(48_000), &common::speech(16_000));
    let frames = plan.step_frames;
    let mut rooms = 0;
    let mut reference = None;
    let mut last_carried = (0, f64::NAN);
    let mut points = Vec::new();
    for &n in &steps {
        let made = Instant::now();
        while rooms < n {
            matrix.room(&format!("s{rooms}")).await;
            rooms += 1;
        }
        println!(
            "ceiling N={n}: rooms ready in {:.1?}, load {}",
            made.elapsed(),
            loadavg()
        );
        load.reset();
        let channels: Vec<ChannelSpec> = (0..n).map(|i| stream_channel(i, false)).collect();
        let archive = format!("[archive]\nmin_archive_ms = 10000\nwaveform = \"{waveform}\"\n");
        let text = config_text(&env, &channels).replace("[archive]\n", &archive);
        let name = format!("ceiling-{n}");
        let bridge = Bridge::start(env.dir, &name, &text, env.status).await;
        if !load.wait_connected(n, Duration::from_secs(600)).await {
            println!("ceiling N={n}: not every endpoint connected in 600 s; stopping");
            bridge.stop();
            break;
        }
        let (idle_rss, _) = bridge.rss_kib();
        for i in 0..n {
            load.start_talk(i, frames).await;
        }
        if !load.wait_granted(n, WAIT).await {
            println!("ceiling N={n}: not every floor granted in time");
        }
        let cpu_before = bridge.cpu_seconds();
        let bench_before = cpu_seconds_of("self");
        let mut profiler = std::env::var("WALKIE_BENCH_PERF_DIR").ok().map(|dir| {
            start_perf(
                bridge.pid(),
                &Path::new(&dir).join(format!("{name}.perf.data")),
            )
        });
        let mut behind = Duration::ZERO;
        let started = Instant::now();
        let mut pace = tokio::time::interval(FRAME);
        for f in 0..frames {
            let tick = pace.tick().await;
            behind = behind.max(tick.elapsed());
            // Independent talkers are not in phase: the streams are spread over
            // the frame in PHASES groups, so a late frame is the core's, not one
            // that waited behind every other stream's frame of the same instant.
            for phase in 0..PHASES {
                tokio::time::sleep_until(tick + FRAME * phase as u32 / PHASES as u32).await;
                for i in (phase..n).step_by(PHASES) {
                    let payload = &audio.opus[(f + i * 7) % audio.opus.len()];
                    load.frame(i, f as u32, payload).await;
                }
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu_percent = (bridge.cpu_seconds() - cpu_before) / wall * 100.0;
        let bench_percent = (cpu_seconds_of("self") - bench_before) / wall * 100.0;
        let (rss, _) = bridge.rss_kib();
        if let Some(profiler) = profiler.as_mut() {
            let _ = profiler.wait();
        }
        // The last frames are on their way: a second is 50 frame times.
        load.wait_delivered(n, Duration::from_secs(1)).await;
        for i in 0..n {
            load.end_talk(i).await;
        }
        let mut latencies = Vec::new();
        let mut lost = 0;
        for i in 0..n {
            let tx = load.harvest(i, frames);
            latencies.extend(tx.latencies);
            lost += tx.lost;
        }
        let summary = summarize(&latencies);
        let base = *reference.get_or_insert(summary.p50);
        let late = latencies.iter().filter(|l| **l > base + 20.0).count() + lost;
        let late_percent = late as f64 / (n * frames) as f64 * 100.0;
        let carried = late_percent <= 1.0;
        let per_frame_us = cpu_percent / 100.0 / (n as f64 * 50.0) * 1e6;
        println!(
            "ceiling N={n:<5} p50={:>8.2} p99={:>9.2} max={:>9.2} ms late={late_percent:>6.2}% lost={lost:<6} \
             bridge CPU={cpu_percent:>5.1}% ({per_frame_us:.1} µs per frame) RSS idle {idle_rss} / talking {rss} KiB {}\n\
             {:<14}(other core: bench {bench_percent:.0}% CPU, sender at most {behind:.1?} behind its 20 ms ticks) [load {}]",
            summary.p50,
            summary.p99,
            summary.max,
            if carried { "carried" } else { "NOT carried" },
            "",
            loadavg()
        );
        results.value(
            "P4",
            &format!("ceiling N={n}: late frames"),
            "%",
            late_percent,
        );
        results.value(
            "P4",
            &format!("ceiling N={n}: bridge CPU"),
            "%",
            cpu_percent,
        );
        results.value(
            "P4",
            &format!("ceiling N={n}: bridge CPU per frame"),
            "µs",
            per_frame_us,
        );
        points.push((n as f64, rss as f64));
        bridge.stop();
        if !carried {
            break;
        }
        last_carried = (n, cpu_percent);
    }
    results.value(
        "P4",
        "passthrough streams one core carries (own MQTT server)",
        "streams",
        last_carried.0 as f64,
    );
    results.value(
        "P4",
        &format!(
            "passthrough streams per core by CPU (N ÷ bridge CPU at N={})",
            last_carried.0
        ),
        "streams",
        last_carried.0 as f64 / (last_carried.1 / 100.0),
    );
    results.value(
        "P5",
        "RSS per active passthrough stream (slope)",
        "KiB",
        slope(&points),
    );
}

/// `perf record` of process `pid` for 4 s (call graphs by DWARF unwinding: the
/// release build has no frame pointers), into `out`.
fn start_perf(pid: u32, out: &Path) -> std::process::Child {
    std::process::Command::new("perf")
        .args(["record", "-F", "499", "--call-graph", "dwarf,16384", "-o"])
        .arg(out)
        .args(["-p", &pid.to_string(), "--", "sleep", "4"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("perf (Debian's linux-perf)")
}

struct StepResult {
    pcm16: bool,
    streams: usize,
    summary: Summary,
    late_percent: f64,
    lost: usize,
    cpu_percent: f64,
    rss_kib: u64,
    carried: bool,
    load: String,
}

async fn p4_ramp(
    env: &ConfigEnv<'_>,
    pcm16: bool,
    max_streams: usize,
    plan: &Plan,
    broker: &Mosquitto,
    results: &mut Results,
) {
    let mode = if pcm16 {
        "transcoding (pcm16)"
    } else {
        "passthrough (opus)"
    };
    let channels: Vec<ChannelSpec> = (0..max_streams).map(|i| stream_channel(i, pcm16)).collect();
    let name = if pcm16 { "p4-pcm16" } else { "p4-opus" };
    let bridge = Bridge::start(env.dir, name, &config_text(env, &channels), env.status).await;
    let streams = Streams::connect(broker.port(), max_streams, name).await;
    // Every endpoint connected and subscribed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (idle, _) = bridge.rss_kib();
    results.value(
        "P5",
        &format!("RSS idle, {max_streams} channels × 2 MQTT endpoints, {mode}"),
        "KiB",
        idle as f64,
    );
    let audio = audio(&common::speech(48_000), &common::speech(16_000));
    let payloads = if pcm16 { &audio.pcm16 } else { &audio.opus };
    let mut reference = None;
    let mut points = vec![(0.0, idle as f64)];
    let mut last_carried = 0;
    let mut last_carried_cpu = f64::NAN;
    let broker_pid = pid_with_arg(&broker.dir().display().to_string());
    for &n in &plan.steps {
        for i in 0..n {
            streams.start(i).await;
        }
        if !streams.wait_granted(0..n, WAIT).await {
            println!("P4 {mode} N={n}: not every floor granted in time");
        }
        let cpu_before = bridge.cpu_seconds();
        // The other side of the measurement, on the other core: if it saturates,
        // a late frame is the bench's, not the bridge's.
        let bench_before = cpu_seconds_of("self");
        let broker_before = broker_pid.as_deref().map_or(0.0, cpu_seconds_of);
        let mut behind = Duration::ZERO;
        let started = Instant::now();
        let mut pace = tokio::time::interval(FRAME);
        for f in 0..plan.step_frames {
            behind = behind.max(pace.tick().await.elapsed());
            for i in 0..n {
                let audio = &payloads[(f + i * 7) % payloads.len()];
                streams.frame(i, f as u32, audio).await;
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu_percent = (bridge.cpu_seconds() - cpu_before) / wall * 100.0;
        let bench_percent = (cpu_seconds_of("self") - bench_before) / wall * 100.0;
        let broker_percent = broker_pid.as_deref().map_or(f64::NAN, |p| {
            (cpu_seconds_of(p) - broker_before) / wall * 100.0
        });
        let (rss, _) = bridge.rss_kib();
        for i in 0..n {
            streams.end(i).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut latencies = Vec::new();
        let mut lost = 0;
        for i in 0..n {
            let tx = streams.harvest(i, plan.step_frames);
            latencies.extend(tx.latencies);
            lost += tx.lost;
        }
        let summary = summarize(&latencies);
        let base = *reference.get_or_insert(summary.p50);
        let late = latencies.iter().filter(|l| **l > base + 20.0).count() + lost;
        let frames = n * plan.step_frames;
        let late_percent = late as f64 / frames as f64 * 100.0;
        let carried = late_percent <= 1.0;
        let load = loadavg();
        println!(
            "P4 {mode:<20} N={n:<4} p50={:>8.2} p99={:>9.2} max={:>9.2} ms late={late_percent:>6.2}% \
             lost={lost:<5} bridge CPU={cpu_percent:>5.1}% RSS={rss} KiB {}  [load {load}]\n\
             {:<30} (other core: bench clients {bench_percent:.0}% CPU, mosquitto \
             {broker_percent:.0}%, sender at most {behind:.1?} behind its 20 ms ticks)",
            summary.p50,
            summary.p99,
            summary.max,
            if carried { "carried" } else { "NOT carried" },
            ""
        );
        points.push((n as f64, rss as f64));
        results.p4.push(StepResult {
            pcm16,
            streams: n,
            summary,
            late_percent,
            lost,
            cpu_percent,
            rss_kib: rss,
            carried,
            load,
        });
        let drained = bridge.wait_outbox_empty(Duration::from_secs(180)).await;
        if drained > Duration::from_secs(5) {
            println!("   (archive outbox drained in {drained:.1?})");
        }
        if !carried {
            break;
        }
        last_carried = n;
        last_carried_cpu = cpu_percent;
    }
    let reached_end = results
        .p4
        .iter()
        .filter(|s| s.pcm16 == pcm16)
        .all(|s| s.carried);
    results.value(
        "P4",
        &format!(
            "streams one core carries, {mode}{}",
            if reached_end {
                " (ramp ended, not reached)"
            } else {
                ""
            }
        ),
        "streams",
        last_carried as f64,
    );
    // What the core would carry if CPU were the only limit: the last carried
    // step's streams scaled to 100 % (CPU grows about linearly with streams).
    results.value(
        "P4",
        &format!("streams per core by CPU (N ÷ bridge CPU at N={last_carried}), {mode}"),
        "streams",
        last_carried as f64 / (last_carried_cpu / 100.0),
    );
    results.value(
        "P5",
        &format!("RSS per active stream (slope), {mode}"),
        "KiB",
        slope(&points),
    );
    bridge.stop();
}

// ---------------------------------------------------------------------------
// Baselines.

/// One frame's work of a measured chain, given the frame's Opus packet.
type Step<'a> = Box<dyn FnMut(&[u8]) + 'a>;

fn baselines(audio: &Audio, dir: &Path, results: &mut Results) {
    const FRAMES: usize = 3000;
    let packets: Vec<&[u8]> = audio
        .opus
        .iter()
        .cycle()
        .take(FRAMES)
        .map(Vec::as_slice)
        .collect();
    // Per-frame percentiles are wall time (what a real-time path feels); the
    // figure compared with sox is CPU time of this thread per frame, like the
    // CPU time getrusage gives for sox's processes, so preemption by other
    // jobs on the core counts in neither.
    let per_frame = |label: &str, results: &mut Results, mut step: Step<'_>| {
        for p in packets.iter().take(200) {
            step(p);
        }
        let mut times = Vec::with_capacity(FRAMES);
        let cpu_before = thread_cpu_seconds();
        for p in &packets {
            let t = Instant::now();
            step(p);
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let cpu = (thread_cpu_seconds() - cpu_before) * 1e6 / FRAMES as f64;
        results.series(
            "BASE",
            &format!("{label}, per 20 ms frame (wall; value = CPU µs/frame)"),
            "µs",
            &times,
        );
        if let Some(row) = results.rows.last_mut() {
            row.value = Some(cpu);
        }
        println!("     CPU time per frame: {cpu:.1} µs");
        cpu
    };

    // The bridge's chain.
    let mut decoder = OpusDecoder::new().expect("decoder");
    let mut down = PcmToPcm16::new().expect("48k→16k");
    let mut up = PcmToOpus::new().expect("16k→48k + encoder");
    let bridge = per_frame(
        "bridge: decode → 48→16 kHz → 16→48 kHz → encode",
        results,
        Box::new(move |p| {
            let pcm = decoder.decode(p).expect("decode");
            for frame in down.push(&pcm).expect("down") {
                std::hint::black_box(up.push(&frame).expect("up"));
            }
        }),
    );

    // Bare libopus, 48 kHz both ways: what any Opus ↔ PCM ↔ Opus path pays.
    let mut dec48 = opus::Decoder::new(48_000, opus::Channels::Mono).expect("decoder");
    let mut enc48 =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).expect("encoder");
    enc48
        .set_bitrate(opus::Bitrate::Bits(24_000))
        .expect("bitrate");
    let mut pcm = vec![0i16; 960];
    let mut out = vec![0u8; 4000];
    let floor48 = per_frame(
        "libopus: decode + encode at 48 kHz (no resampling)",
        results,
        Box::new(move |p| {
            let n = dec48.decode(p, &mut pcm, false).expect("decode");
            std::hint::black_box(enc48.encode(&pcm[..n], &mut out).expect("encode"));
        }),
    );
    // libopus converting the rate itself: decode to 16 kHz, encode from 16 kHz.
    let mut dec16 = opus::Decoder::new(16_000, opus::Channels::Mono).expect("decoder");
    let mut enc16 =
        opus::Encoder::new(16_000, opus::Channels::Mono, opus::Application::Voip).expect("encoder");
    enc16
        .set_bitrate(opus::Bitrate::Bits(24_000))
        .expect("bitrate");
    let mut pcm16 = vec![0i16; 320];
    let mut out16 = vec![0u8; 4000];
    let floor16 = per_frame(
        "libopus: decode to 16 kHz + encode from 16 kHz",
        results,
        Box::new(move |p| {
            let n = dec16.decode(p, &mut pcm16, false).expect("decode");
            std::hint::black_box(enc16.encode(&pcm16[..n], &mut out16).expect("encode"));
        }),
    );

    // sox between opus-tools, on the same packets in an Ogg Opus file.
    let input = dir.join("baseline-in.opus");
    let mut writer = OggOpusWriter::new(Vec::new(), DEFAULT_PRE_SKIP).expect("ogg");
    for p in &packets {
        writer.write_packet(p).expect("ogg packet");
    }
    let (bytes, _) = writer.finish().expect("ogg finish");
    std::fs::write(&input, bytes).expect("write baseline input");
    let output = dir.join("baseline-out.opus");
    let pipeline = format!(
        "opusdec --quiet --rate 48000 '{}' - \
         | sox -q -t raw -r 48000 -e signed -b 16 -c 1 - -t raw - rate 16k rate 48k \
         | opusenc --quiet --raw --raw-rate 48000 --raw-chan 1 --bitrate 24 --framesize 20 - '{}'",
        input.display(),
        output.display()
    );
    let sox_chain = child_cpu_per_frame(&pipeline, FRAMES);
    // sox alone (the resampling), on the decoded speech as WAV.
    let wav = dir.join("baseline-in.wav");
    let mut decoder = OpusDecoder::new().expect("decoder");
    let speech: Vec<i16> = packets
        .iter()
        .flat_map(|p| decoder.decode(p).expect("decode"))
        .collect();
    common::write_wav(&wav, &speech, 48_000);
    let sox_only = child_cpu_per_frame(
        &format!(
            "sox -q '{}' -t wav /dev/null rate 16k rate 48k",
            wav.display()
        ),
        FRAMES,
    );
    let mut resample_down = PcmToPcm16::new().expect("48k→16k");
    let mut resample_up = walkie_endpoint::audio::Resampler::new(16_000, 48_000).expect("up");
    let frames48: Vec<Vec<i16>> = speech.chunks_exact(960).map(<[i16]>::to_vec).collect();
    let mut i = 0;
    let bridge_resample = per_frame(
        "bridge: 48→16 kHz → 16→48 kHz only",
        results,
        Box::new(move |_| {
            let frame = &frames48[i % frames48.len()];
            i += 1;
            for pcm16 in resample_down.push(frame).expect("down") {
                let samples: Vec<i16> = pcm16
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
                std::hint::black_box(resample_up.process(&samples).expect("up"));
            }
        }),
    );
    match sox_chain {
        Some(us) => {
            results.value(
                "BASE",
                "opusdec | sox rate 16k rate 48k | opusenc, CPU per frame",
                "µs",
                us,
            );
            results.value("BASE", "RATIO sox chain ÷ bridge chain", "×", us / bridge);
        }
        None => println!("BASE sox chain: not measured (the pipeline failed, see above)"),
    }
    if let Some(us) = sox_only {
        results.value(
            "BASE",
            "sox rate 16k rate 48k alone, CPU per frame",
            "µs",
            us,
        );
        results.value(
            "BASE",
            "RATIO sox resampling ÷ bridge resampling",
            "×",
            us / bridge_resample,
        );
    }
    results.value(
        "BASE",
        "RATIO bridge chain ÷ libopus 48 kHz decode+encode",
        "×",
        bridge / floor48,
    );
    results.value(
        "BASE",
        "RATIO bridge chain ÷ libopus 16 kHz decode+encode",
        "×",
        bridge / floor16,
    );
}

/// CPU time of the calling thread, seconds.
fn thread_cpu_seconds() -> f64 {
    // SAFETY: clock_gettime writes into the zeroed timespec it is given.
    unsafe {
        let mut t: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t);
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    }
}

/// CPU time (user + system) of `bash -c pipeline` and its children, per frame, µs.
fn child_cpu_per_frame(pipeline: &str, frames: usize) -> Option<f64> {
    let usage = || {
        // SAFETY: getrusage writes into the zeroed struct it is given.
        unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
            let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
            t(u.ru_utime) + t(u.ru_stime)
        }
    };
    let before = usage();
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("set -o pipefail; {pipeline}"))
        .status()
        .ok()?;
    if !status.success() {
        println!("`{pipeline}` failed: {status}");
        return None;
    }
    Some((usage() - before) * 1e6 / frames as f64)
}

// ---------------------------------------------------------------------------
// Output.

fn write_csv(path: &PathBuf, results: &Results) {
    let mut file = std::fs::File::create(path).expect("create CSV");
    writeln!(
        file,
        "section,metric,unit,n,p50,p99,max,value,late_percent,lost,bridge_cpu_percent,loadavg"
    )
    .expect("write CSV");
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    for row in &results.rows {
        let (n, p50, p99, max) = row.summary.map_or(
            (String::new(), String::new(), String::new(), String::new()),
            |s| {
                (
                    s.n.to_string(),
                    format!("{:.4}", s.p50),
                    format!("{:.4}", s.p99),
                    format!("{:.4}", s.max),
                )
            },
        );
        writeln!(
            file,
            "{},{},{},{n},{p50},{p99},{max},{},,,,{}",
            row.section,
            quote(&row.metric),
            row.unit,
            row.value.map(|v| format!("{v:.4}")).unwrap_or_default(),
            row.load
        )
        .expect("write CSV");
    }
    for step in &results.p4 {
        writeln!(
            file,
            "P4,{},ms,{},{:.4},{:.4},{:.4},{},{:.3},{},{:.1},{}",
            quote(&format!(
                "frame latency at {} streams, {}",
                step.streams,
                if step.pcm16 {
                    "transcoding"
                } else {
                    "passthrough"
                }
            )),
            step.summary.n,
            step.summary.p50,
            step.summary.p99,
            step.summary.max,
            step.rss_kib,
            step.late_percent,
            step.lost,
            step.cpu_percent,
            step.load
        )
        .expect("write CSV");
    }
    println!("wrote {}", path.display());
}

/// The baselines' names in the chart; None for rows that are not drawn.
fn chart_name(metric: &str) -> Option<&'static str> {
    [
        ("bridge: decode", "bridge chain"),
        ("libopus: decode + encode at 48", "libopus 48 kHz"),
        ("libopus: decode to 16", "libopus 16 kHz"),
        ("opusdec | sox", "opusdec | sox | opusenc"),
        ("bridge: 48→16", "bridge resampling only"),
        ("sox rate 16k rate 48k alone", "sox resampling only"),
    ]
    .iter()
    .find(|(prefix, _)| metric.starts_with(prefix))
    .map(|(_, name)| *name)
}

/// The results of a full run, read back from docs/bench/e2e.csv.
fn load_csv(path: &Path) -> Results {
    let text = std::fs::read_to_string(path).expect("docs/bench/e2e.csv");
    let mut results = Results::default();
    for line in text.lines().skip(1) {
        let f = csv_fields(line);
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
        let summary = match (num(3), num(4), num(5), num(6)) {
            (Some(n), Some(p50), Some(p99), Some(max)) => Some(Summary {
                n: n as usize,
                p50,
                p99,
                max,
                mean: num(7).unwrap_or(f64::NAN),
            }),
            _ => None,
        };
        let section: &'static str = match f.first().map(String::as_str) {
            Some("P1") => "P1",
            Some("P2") => "P2",
            Some("P3") => "P3",
            Some("P4") => "P4",
            Some("P5") => "P5",
            Some("BASE") => "BASE",
            _ => continue,
        };
        let metric = f.get(1).cloned().unwrap_or_default();
        if let (Some(rest), Some(summary)) = (metric.strip_prefix("frame latency at "), summary) {
            results.p4.push(StepResult {
                pcm16: rest.ends_with("transcoding"),
                streams: rest
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
                summary,
                late_percent: num(8).unwrap_or(f64::NAN),
                lost: num(9).unwrap_or(0.0) as usize,
                cpu_percent: num(10).unwrap_or(f64::NAN),
                rss_kib: num(7).unwrap_or(0.0) as u64,
                carried: true,
                load: f.get(11).cloned().unwrap_or_default(),
            });
            continue;
        }
        results.rows.push(CsvRow {
            section,
            metric,
            unit: match f.get(2).map(String::as_str) {
                Some("ms") => "ms",
                Some("µs") => "µs",
                Some("KiB") => "KiB",
                Some("streams") => "streams",
                Some("frames") => "frames",
                Some("×") => "×",
                _ => "",
            },
            summary,
            value: num(7),
            load: f.get(11).cloned().unwrap_or_default(),
        });
    }
    results
}

/// `-- --redraw`: the chart again from docs/bench/e2e.csv, without servers.
/// `-- --baselines`: the codec baselines again (no servers), replacing those
/// rows of docs/bench/e2e.csv, then the chart.
fn redraw(baselines_again: bool) {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bench");
    let mut results = load_csv(&out.join("e2e.csv"));
    if baselines_again {
        pin_to(CLIENT_CORE);
        results.rows.retain(|r| r.section != "BASE");
        let dir = run_dir("e2e-baselines");
        let audio = audio(&common::speech(48_000), &common::speech(16_000));
        baselines(&audio, &dir, &mut results);
        write_csv(&out.join("e2e.csv"), &results);
    }
    match chart(&out.join("e2e.png"), &results) {
        Ok(()) => println!("wrote {}", out.join("e2e.png").display()),
        Err(why) => println!("chart not drawn: {why}"),
    }
}

/// The fields of one line of our CSV: commas, and double quotes around a
/// field that holds commas ("" for a quote inside).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                if let Some(f) = fields.last_mut() {
                    f.push('"');
                }
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => {
                if let Some(f) = fields.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    fields
}

/// DejaVu Sans from Debian's fonts-dejavu-core (scripts/setup.sh), read at run
/// time so no font is compiled in and nothing links fontconfig.
fn register_font() -> Result<(), String> {
    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let bytes = std::fs::read(FONT).map_err(|e| format!("{FONT}: {e}"))?;
    plotters::style::register_font(
        "sans-serif",
        plotters::style::FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| format!("{FONT} is not a usable font"))
}

fn chart(path: &Path, results: &Results) -> Result<(), String> {
    use plotters::prelude::*;
    register_font()?;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let root = BitMapBackend::new(path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(520);
    let bottom = bottom.split_evenly((1, 3));

    // Latencies (P1 added, P2, P3): horizontal bars p50 and p99, log scale.
    let bars: Vec<(String, Summary)> = results
        .rows
        .iter()
        .filter(|r| {
            (r.section == "P1" && r.metric.starts_with("ADDED"))
                || r.section == "P2"
                || r.section == "P3"
        })
        .filter_map(|r| {
            r.summary.map(|s| {
                let name = r
                    .metric
                    .trim_start_matches("ADDED ")
                    .split(" (")
                    .next()
                    .unwrap_or(&r.metric)
                    .to_owned();
                let name = name.replace(" to a syncing client", "");
                (format!("{} {name}", r.section), s)
            })
        })
        .collect();
    let n = bars.len().max(1);
    let mut c = ChartBuilder::on(&top)
        .caption(
            "walkie-bridge end to end: added latency (P1), floor access (P2), archive (P3) — ms, log scale",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(300)
        .build_cartesian_2d(
            (0.005f64..500f64).log_scale(),
            // A segmented range 0..k has k + 1 segments.
            (0..n - 1).into_segmented(),
        )
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|y| match y {
            SegmentValue::CenterOf(i) => bars.get(*i).map(|b| b.0.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("ms")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    // Bars start at the axis' left end; a p50 under it is drawn as a sliver.
    let clamp = |v: f64| v.max(0.006);
    for (i, (_, s)) in bars.iter().enumerate() {
        c.draw_series([
            Rectangle::new(
                [
                    (0.005, SegmentValue::Exact(i)),
                    (clamp(s.p50), SegmentValue::CenterOf(i)),
                ],
                BLUE.mix(0.7).filled(),
            ),
            Rectangle::new(
                [
                    (0.005, SegmentValue::CenterOf(i)),
                    (clamp(s.p99), SegmentValue::Exact(i + 1)),
                ],
                RED.mix(0.5).filled(),
            ),
        ])
        .map_err(|e| err(&e))?;
    }
    for (label, color) in [("p50", BLUE.mix(0.7)), ("p99", RED.mix(0.5))] {
        c.draw_series(std::iter::once(Rectangle::new(
            [
                (0.005, SegmentValue::Exact(0)),
                (0.005, SegmentValue::Exact(0)),
            ],
            color.filled(),
        )))
        .map_err(|e| err(&e))?
        .label(label)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(&e))?;

    // P4: p99 frame latency over concurrent streams, bridge on one core.
    let max_n = results.p4.iter().map(|s| s.streams).max().unwrap_or(1) as f64;
    let max_p99 = results.p4.iter().map(|s| s.summary.p99).fold(1.0, f64::max);
    let mut c = ChartBuilder::on(&bottom[0])
        .caption(
            "P4: p99 frame latency vs streams (1 core)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_n * 1.05, 0f64..max_p99 * 1.1)
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .x_desc("concurrent streams")
        .y_desc("ms")
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| err(&e))?;
    for (pcm16, color, name) in [(false, BLUE, "passthrough"), (true, RED, "transcoding")] {
        let points: Vec<(f64, f64)> = results
            .p4
            .iter()
            .filter(|s| s.pcm16 == pcm16)
            .map(|s| (s.streams as f64, s.summary.p99))
            .collect();
        c.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color.stroke_width(2)));
        c.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(|e| err(&e))?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;

    // P5: RSS over active streams.
    let max_rss = results
        .p4
        .iter()
        .map(|s| s.rss_kib as f64 / 1024.0)
        .fold(1.0, f64::max);
    let mut c = ChartBuilder::on(&bottom[1])
        .caption("P5: bridge RSS vs active streams", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_n * 1.05, 0f64..max_rss * 1.15)
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .x_desc("active streams")
        .y_desc("MiB")
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| err(&e))?;
    for (pcm16, color, name) in [(false, BLUE, "passthrough"), (true, RED, "transcoding")] {
        let points: Vec<(f64, f64)> = results
            .p4
            .iter()
            .filter(|s| s.pcm16 == pcm16)
            .map(|s| (s.streams as f64, s.rss_kib as f64 / 1024.0))
            .collect();
        c.draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color.stroke_width(2)));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(&e))?;

    // Baselines: CPU per frame of the transcoding chain.
    let base: Vec<(&str, f64)> = results
        .rows
        .iter()
        .filter(|r| r.section == "BASE")
        .filter_map(|r| Some((chart_name(&r.metric)?, r.value?)))
        .collect();
    let max_us = base.iter().map(|b| b.1).fold(1.0, f64::max);
    let mut c = ChartBuilder::on(&bottom[2])
        .caption("decode→resample→encode, µs/frame", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(40)
        .build_cartesian_2d(0f64..max_us * 1.1, 0f64..base.len().max(1) as f64)
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc("µs per 20 ms frame")
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, us)) in base.iter().enumerate() {
        let us = *us;
        let y = i as f64;
        c.draw_series(std::iter::once(Rectangle::new(
            [(0.0, y + 0.15), (us, y + 0.85)],
            GREEN.mix(0.5).filled(),
        )))
        .map_err(|e| err(&e))?;
        c.draw_series(std::iter::once(Text::new(
            format!("{name}: {us:.0}"),
            (max_us * 0.02, y + 0.45),
            ("sans-serif", 13),
        )))
        .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

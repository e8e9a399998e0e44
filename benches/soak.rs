//! Soak: the real `walkie-bridge` binary carries 20 channels of synthetic MQTT
//! traffic for a long time (30 minutes by default) while its RSS, CPU and
//! per-frame latency are sampled every 30 s; at the end it prints start vs end
//! and the least-squares drift (slope) of each, and writes docs/bench/soak.csv
//! (`--out DIR`: DIR/soak.csv instead).
//!
//! Not part of CI. Run it with `scripts/soak.sh [MINUTES]`, or
//! `cargo bench --bench soak -- --minutes 30`. Never fails on a time.
//!
//! Traffic: channels s0..s9 pass Opus through (device opus → bridge → listener
//! opus), s10..s19 transcode (device pcm16 → Opus in the hub → pcm16 out). Every
//! channel repeats: start, 8 s of speech at 20 ms pace, end, 2 s of quiet; the
//! channels are staggered by 0.5 s, so about 16 talk at any moment, and every
//! transmission (8 s) is archived as a voice message in the channel's room on a
//! real Synapse — ~7 200 voice messages in 30 minutes.
//!
//! Latency of a frame: as in `e2e_common::Streams` — arrival on the listener's
//! `out/audio` minus arrival of the same frame on the device's `in/…/audio`,
//! stamped by one subscriber (bridge + one broker hop).

#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;
mod e2e_common;
mod host_speed;
mod smaps;

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_common::*;

const CHANNELS: usize = 20;
const OPUS_CHANNELS: usize = 10;
/// Ticks of 20 ms.
const CYCLE: u64 = 500;
const START_AT: u64 = 0;
const FRAMES_FROM: u64 = 5;
const FRAMES: u64 = 400;
const HARVEST_AT: u64 = 480;
const STAGGER: u64 = 25;
const WINDOW_TICKS: u64 = 1500;

fn main() {
    let mut minutes = 30.0_f64;
    let mut out = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bench");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--minutes" {
            minutes = args
                .next()
                .and_then(|m| m.parse().ok())
                .expect("--minutes takes a number");
        } else if arg == "--out" {
            out = args.next().expect("--out takes a folder").into();
        }
    }
    pin_to(CLIENT_CORE);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(soak(Duration::from_secs_f64(minutes * 60.0), &out));
}

#[derive(Default)]
struct Window {
    latencies: [Vec<f64>; 2],
    sent: usize,
    lost: usize,
    transmissions: usize,
}

struct Row {
    minute: f64,
    rss_kib: u64,
    /// RssAnon: memory the bridge allocated.
    anon_kib: u64,
    /// RssFile: touched pages of its binary and libraries.
    file_kib: u64,
    hwm_kib: u64,
    cpu_percent: f64,
    /// Bridge CPU time per frame carried: comparable between windows that
    /// carried different traffic (the first one, while channels ramp in).
    cpu_us_per_frame: f64,
    p50: [f64; 2],
    p99: [f64; 2],
    max: [f64; 2],
    sent: usize,
    lost: usize,
    late: usize,
    load: String,
    /// What the bridge's /metrics said during the window.
    scraped: Scraped,
    threads: u64,
    fds: u64,
    /// The bridge's SQLite database with its WAL, and the files in its spool.
    db_kib: u64,
    spool_files: u64,
    /// The host's speed: µs of CPU per frame of a fixed Opus job on the
    /// bridge's core (see `host_speed`); up means the machine got slower.
    host_us_per_frame: f64,
    /// Share of the window the hypervisor gave the bridge's core to others.
    steal_percent: f64,
}

async fn soak(length: Duration, out: &Path) {
    let dir = run_dir("soak");
    let broker = broker().await;
    let (listen, status) = ports();
    let matrix = Matrix::start(&dir, listen).await;
    let channels: Vec<ChannelSpec> = (0..CHANNELS)
        .map(|i| stream_channel(i, i >= OPUS_CHANNELS))
        .collect();
    for channel in &channels {
        matrix.room(&channel.name).await;
    }
    let url = matrix.synapse.url();
    let env = ConfigEnv {
        homeserver: &url,
        listen,
        status,
        dir: &dir,
        mosquitto_port: broker.port(),
        murmur: "127.0.0.1:1",
        live: false,
    };
    let bridge = Bridge::start(&dir, "soak", &config_text(&env, &channels), status).await;
    let streams = Streams::connect(broker.port(), CHANNELS, "soak").await;
    let speech48 = common::speech(48_000);
    let audio = audio(&speech48, &common::speech(16_000));
    let host = host_speed::HostSpeed::start(
        BRIDGE_CORE,
        Duration::from_millis(WINDOW_TICKS * 20),
        &speech48,
    );
    let mut steal_mark = host_speed::steal_and_total(BRIDGE_CORE);
    // Let every MQTT endpoint connect and subscribe before the first talk.
    tokio::time::sleep(Duration::from_secs(2)).await;

    println!(
        "soak: {CHANNELS} channels ({OPUS_CHANNELS} opus passthrough, {} pcm16 transcoding), \
         {:.0} min, bridge pid {} on core {BRIDGE_CORE}, started in {:.1?}, load {}",
        CHANNELS - OPUS_CHANNELS,
        length.as_secs_f64() / 60.0,
        bridge.pid(),
        bridge.started_in,
        loadavg()
    );
    let (idle_rss, _) = bridge.rss_kib();
    println!("RSS idle with 20 channels: {idle_rss} KiB");
    println!(
        "{:>6} {:>9} {:>9} {:>9} {:>6} {:>9} {:>10} {:>10} {:>10} {:>10} {:>7} {:>5} {:>5} {:>6} {:>4} {:>4} {:>7} {:>5} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6}  load",
        "min",
        "RSS KiB",
        "anon KiB",
        "file KiB",
        "CPU%",
        "CPU us/fr",
        "opus p50",
        "opus p99",
        "pcm p50",
        "pcm p99",
        "frames",
        "lost",
        "late",
        "tasks",
        "thr",
        "fds",
        "db KiB",
        "spool",
        "heapKiB",
        "jeRes",
        "libcKiB",
        "lcFree",
        "ref us",
        "steal%"
    );

    let total_ticks = (length.as_secs_f64() / 0.02) as u64;
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let started = Instant::now();
    let mut window = Window::default();
    let mut rows: Vec<Row> = Vec::new();
    let mut cpu_mark = (bridge.cpu_seconds(), Instant::now());
    let mut all = Window::default();
    // "Late" against the first window's p50 of each group + one frame (20 ms).
    let mut reference: Option<[f64; 2]> = None;
    let mut sender_behind_max = Duration::ZERO;
    let mut snapshots: Vec<smaps::Snapshot> = Vec::new();
    // Scraped off the pacing loop, so a slow /metrics never delays a frame.
    let scraped = Arc::new(Mutex::new(Scraped::default()));
    spawn_scrape(bridge.status, scraped.clone());
    // A channel whose first cycle begins mid-talk stays quiet until its start.
    let mut talking = [false; CHANNELS];
    for tick in 0..total_ticks {
        let due = pace.tick().await;
        sender_behind_max = sender_behind_max.max(due.elapsed());
        for (i, talking) in talking.iter_mut().enumerate() {
            let phase = (tick + (CHANNELS - i) as u64 * STAGGER) % CYCLE;
            let payloads = if i < OPUS_CHANNELS {
                &audio.opus
            } else {
                &audio.pcm16
            };
            match phase {
                START_AT => {
                    *talking = true;
                    streams.start(i).await;
                }
                _ if !*talking => {}
                p if (FRAMES_FROM..FRAMES_FROM + FRAMES).contains(&p) => {
                    let seq = (p - FRAMES_FROM) as usize;
                    streams
                        .frame(i, seq as u32, &payloads[seq % payloads.len()])
                        .await;
                }
                p if p == FRAMES_FROM + FRAMES => streams.end(i).await,
                HARVEST_AT => {
                    let tx = streams.harvest(i, FRAMES as usize);
                    let group = usize::from(i >= OPUS_CHANNELS);
                    window.sent += tx.sent;
                    window.lost += tx.lost;
                    window.transmissions += 1;
                    window.latencies[group].extend_from_slice(&tx.latencies);
                }
                _ => {}
            }
        }
        if (tick + 1) % WINDOW_TICKS == 0 {
            let (rss, hwm) = bridge.rss_kib();
            let (anon, file) = bridge.rss_anon_file_kib();
            let (threads, fds) = bridge.threads_and_fds();
            let cpu = bridge.cpu_seconds();
            let cpu_percent = (cpu - cpu_mark.0) / cpu_mark.1.elapsed().as_secs_f64() * 100.0;
            let cpu_us_per_frame = (cpu - cpu_mark.0) * 1e6 / window.sent.max(1) as f64;
            let steal = host_speed::steal_and_total(BRIDGE_CORE);
            let steal_percent = host_speed::steal_percent(steal_mark, steal);
            steal_mark = steal;
            cpu_mark = (cpu, Instant::now());
            let s = [
                summarize(&window.latencies[0]),
                summarize(&window.latencies[1]),
            ];
            let base = *reference.get_or_insert([s[0].p50, s[1].p50]);
            let late = (0..2)
                .map(|g| {
                    window.latencies[g]
                        .iter()
                        .filter(|l| **l > base[g] + 20.0)
                        .count()
                })
                .sum();
            let row = Row {
                minute: started.elapsed().as_secs_f64() / 60.0,
                rss_kib: rss,
                anon_kib: anon,
                file_kib: file,
                hwm_kib: hwm,
                cpu_percent,
                cpu_us_per_frame,
                p50: [s[0].p50, s[1].p50],
                p99: [s[0].p99, s[1].p99],
                max: [s[0].max, s[1].max],
                sent: window.sent,
                lost: window.lost,
                late,
                load: loadavg(),
                scraped: *scraped.lock().expect("scrape lock"),
                threads,
                fds,
                db_kib: files_kib(&dir, "walkie.db"),
                spool_files: count_files(&dir.join("spool")),
                host_us_per_frame: host.take_us_per_frame(),
                steal_percent,
            };
            spawn_scrape(bridge.status, scraped.clone());
            println!(
                "{:>6.1} {:>9} {:>9} {:>9} {:>6.1} {:>9.1} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>7} {:>5} {:>5} {:>6} {:>4} {:>4} {:>7} {:>5} {:>7} {:>7} {:>7} {:>6} {:>6.1} {:>6.2}  {}",
                row.minute,
                row.rss_kib,
                row.anon_kib,
                row.file_kib,
                row.cpu_percent,
                row.cpu_us_per_frame,
                row.p50[0],
                row.p99[0],
                row.p50[1],
                row.p99[1],
                row.sent,
                row.lost,
                row.late,
                row.scraped.tasks,
                row.threads,
                row.fds,
                row.db_kib,
                row.spool_files,
                row.scraped.rust_allocated_kib,
                row.scraped.rust_resident_kib,
                row.scraped.libc_in_use_kib,
                row.scraped.libc_free_kib,
                row.host_us_per_frame,
                row.steal_percent,
                row.load
            );
            rows.push(row);
            // Where the anonymous memory is, mapping by mapping: at the first
            // full window, every 30 minutes and at the end (diffed in the report).
            if rows.len() == 2
                || rows.len().is_multiple_of(60)
                || tick + WINDOW_TICKS >= total_ticks
            {
                snapshots.push(smaps::Snapshot::take(bridge.pid(), started.elapsed()));
            }
            for g in 0..2 {
                all.latencies[g].append(&mut window.latencies[g]);
            }
            all.sent += window.sent;
            all.lost += window.lost;
            all.transmissions += window.transmissions;
            window = Window::default();
        }
    }
    let drained = bridge.wait_outbox_empty(Duration::from_secs(120)).await;
    let posted = bridge
        .metric("walkie_archive_voice_messages_posted_total")
        .await;
    let forwarded = bridge.metric("walkie_frames_forwarded_total").await;
    let dropped = bridge.metric("walkie_endpoint_frames_dropped_total").await;
    report(&rows, &all, idle_rss, posted, drained);
    smaps::report(&snapshots, out);
    println!(
        "bridge counters: frames forwarded {forwarded}, endpoint frames dropped {dropped}; \
         bench sender at most {sender_behind_max:.1?} behind its 20 ms schedule"
    );
    write_csv(&rows, out);
    bridge.stop();
    drop(matrix);
}

fn report(rows: &[Row], all: &Window, idle_rss: u64, posted: f64, drained: Duration) {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        println!("soak too short: no 30 s window completed");
        return;
    };
    // The staggered channels ramp in during the first window(s): those carry
    // less traffic, so their CPU and RSS are no baseline for a drift.
    let full = rows.iter().map(|r| r.sent).max().unwrap_or(0);
    let steady: Vec<&Row> = rows.iter().filter(|r| r.sent == full).collect();
    let base = steady.first().copied().unwrap_or(first);
    let rss: Vec<(f64, f64)> = rows.iter().map(|r| (r.minute, r.rss_kib as f64)).collect();
    println!();
    println!(
        "soak summary ({:.1} min, load at end {})",
        last.minute,
        loadavg()
    );
    println!(
        "  transmissions {} ({} frames sent, {} lost = {:.4} %), voice messages posted {posted} \
         (outbox drained {drained:.1?} after the last talk)",
        all.transmissions,
        all.sent,
        all.lost,
        all.lost as f64 / all.sent.max(1) as f64 * 100.0
    );
    println!(
        "  RSS: idle {idle_rss} KiB, first window {} KiB, last {} KiB, peak (VmHWM) {} KiB, \
         slope {:+.1} KiB/min",
        first.rss_kib,
        last.rss_kib,
        last.hwm_kib,
        slope(&rss)
    );
    for (g, name) in ["opus passthrough", "pcm16 transcoding"].iter().enumerate() {
        let p50: Vec<(f64, f64)> = rows.iter().map(|r| (r.minute, r.p50[g])).collect();
        let p99: Vec<(f64, f64)> = rows.iter().map(|r| (r.minute, r.p99[g])).collect();
        let total = summarize(&all.latencies[g]);
        println!(
            "  {name}: whole run n={} p50={:.2} ms p99={:.2} ms max={:.2} ms; \
             first window p50 {:.2} / p99 {:.2} ms, last p50 {:.2} / p99 {:.2} ms; \
             drift p50 {:+.4} ms/min, p99 {:+.4} ms/min",
            total.n,
            total.p50,
            total.p99,
            total.max,
            first.p50[g],
            first.p99[g],
            last.p50[g],
            last.p99[g],
            slope(&p50),
            slope(&p99)
        );
    }
    let cpu: Vec<f64> = rows.iter().map(|r| r.cpu_percent).collect();
    println!(
        "  bridge CPU: first window {:.1} % ({} frames), last {:.1} %, mean {:.1} % of one core",
        first.cpu_percent,
        first.sent,
        last.cpu_percent,
        cpu.iter().sum::<f64>() / cpu.len() as f64
    );
    let steady_cpu: Vec<(f64, f64)> = steady.iter().map(|r| (r.minute, r.cpu_percent)).collect();
    let steady_us: Vec<(f64, f64)> = steady
        .iter()
        .map(|r| (r.minute, r.cpu_us_per_frame))
        .collect();
    let steady_rss: Vec<(f64, f64)> = steady
        .iter()
        .map(|r| (r.minute, r.rss_kib as f64))
        .collect();
    fn mean(v: &[&Row], n: usize, f: impl Fn(&Row) -> f64) -> f64 {
        let taken: Vec<f64> = v.iter().take(n).map(|r| f(r)).collect();
        taken.iter().sum::<f64>() / taken.len().max(1) as f64
    }
    let tail: Vec<&Row> = steady.iter().rev().copied().collect();
    println!(
        "  steady state (the {} windows at full traffic, {full} frames each, from minute {:.1}): \
         CPU first {:.1} % / last {:.1} %, mean of first 10 {:.1} % / last 10 {:.1} %, \
         slope {:+.4} points/min; CPU per frame first {:.1} / last {:.1} us, slope {:+.4} us/min; \
         RSS first {} KiB / last {} KiB ({:+.2} %), slope {:+.1} KiB/min; \
         of which anonymous {} / {} KiB ({:+.2} %), file-backed {} / {} KiB",
        steady.len(),
        base.minute,
        base.cpu_percent,
        last.cpu_percent,
        mean(&steady, 10, |r| r.cpu_percent),
        mean(&tail, 10, |r| r.cpu_percent),
        slope(&steady_cpu),
        base.cpu_us_per_frame,
        last.cpu_us_per_frame,
        slope(&steady_us),
        base.rss_kib,
        last.rss_kib,
        (last.rss_kib as f64 / base.rss_kib.max(1) as f64 - 1.0) * 100.0,
        slope(&steady_rss),
        base.anon_kib,
        last.anon_kib,
        (last.anon_kib as f64 / base.anon_kib.max(1) as f64 - 1.0) * 100.0,
        base.file_kib,
        last.file_kib,
    );
    // The first minutes fill what is capped but starts empty (SQLite's page
    // caches, the allocator's slabs and its pages first written, the metrics'
    // label sets): RSS grows there once. What grows after that is what a leak
    // would show, so it is reported on its own, beside the figure from minute 1.
    if let Some(warm) = steady.iter().copied().find(|r| r.minute >= WARM_UP_MINUTES) {
        let after: Vec<(f64, f64)> = steady_rss
            .iter()
            .copied()
            .filter(|(minute, _)| *minute >= warm.minute)
            .collect();
        println!(
            "  after the warm-up (from minute {:.1}): RSS {} → {} KiB ({:+.2} %), slope {:+.1} KiB/min; \
             anonymous {} → {} KiB; CPU {:.1} % → {:.1} %",
            warm.minute,
            warm.rss_kib,
            last.rss_kib,
            (last.rss_kib as f64 / warm.rss_kib.max(1) as f64 - 1.0) * 100.0,
            slope(&after),
            warm.anon_kib,
            last.anon_kib,
            warm.cpu_percent,
            last.cpu_percent,
        );
    }
    println!(
        "  bridge process: tasks first {} / last {}, threads {} / {}, fds {} / {}; \
         database {} / {} KiB, spool files {} / {}",
        base.scraped.tasks,
        last.scraped.tasks,
        base.threads,
        last.threads,
        base.fds,
        last.fds,
        base.db_kib,
        last.db_kib,
        base.spool_files,
        last.spool_files
    );
    println!(
        "  heaps (/metrics): Rust allocated first {} / last {} KiB, jemalloc resident {} / {} KiB; \
         C heap in use {} / {} KiB, free but held {} / {} KiB",
        base.scraped.rust_allocated_kib,
        last.scraped.rust_allocated_kib,
        base.scraped.rust_resident_kib,
        last.scraped.rust_resident_kib,
        base.scraped.libc_in_use_kib,
        last.scraped.libc_in_use_kib,
        base.scraped.libc_free_kib,
        last.scraped.libc_free_kib
    );
    // CPU in units of the host's speed at the start: a bridge doing the same
    // work on a host that got 10 % slower shows 10 % more CPU, and the same
    // figure here.
    let normalised = |r: &Row| r.cpu_percent * base.host_us_per_frame / r.host_us_per_frame;
    let steady_host: Vec<(f64, f64)> = steady
        .iter()
        .map(|r| (r.minute, r.host_us_per_frame))
        .collect();
    println!(
        "  host speed (a fixed Opus job on the bridge's core, nice 19): first 10 windows {:.1} / \
         last 10 {:.1} us per frame ({:+.1} %), slope {:+.4} us/min; steal first 10 {:.2} % / \
         last 10 {:.2} %; bridge CPU at the first windows' host speed: first 10 {:.1} % / \
         last 10 {:.1} %",
        mean(&steady, 10, |r| r.host_us_per_frame),
        mean(&tail, 10, |r| r.host_us_per_frame),
        (mean(&tail, 10, |r| r.host_us_per_frame) / mean(&steady, 10, |r| r.host_us_per_frame)
            - 1.0)
            * 100.0,
        slope(&steady_host),
        mean(&steady, 10, |r| r.steal_percent),
        mean(&tail, 10, |r| r.steal_percent),
        mean(&steady, 10, normalised),
        mean(&tail, 10, normalised),
    );
}

/// Where the soak's "after the warm-up" figures start (see the summary).
const WARM_UP_MINUTES: f64 = 5.0;

/// What one scrape of the bridge's /metrics said: its live tasks, and its two
/// heaps (`walkie_heap_bytes`), which tell a leak (allocated grows) from an
/// allocator keeping freed memory (resident or free grows, allocated flat).
#[derive(Clone, Copy, Debug)]
struct Scraped {
    tasks: f64,
    rust_allocated_kib: u64,
    rust_resident_kib: u64,
    /// The C heap: SQLite and the codecs.
    libc_in_use_kib: u64,
    libc_free_kib: u64,
}

impl Default for Scraped {
    fn default() -> Self {
        Self {
            tasks: f64::NAN,
            rust_allocated_kib: 0,
            rust_resident_kib: 0,
            libc_in_use_kib: 0,
            libc_free_kib: 0,
        }
    }
}

/// Scrapes the bridge's /metrics into `into`, off the pacing loop.
fn spawn_scrape(status: u16, into: Arc<Mutex<Scraped>>) {
    tokio::spawn(async move {
        let url = format!("http://127.0.0.1:{status}/metrics");
        let Ok(answer) = reqwest::get(&url).await else {
            return;
        };
        let text = answer.text().await.unwrap_or_default();
        let value = |name: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
        };
        let kib = |name: &str| value(name).map_or(0, |bytes| (bytes / 1024.0) as u64);
        let scraped = Scraped {
            tasks: value("walkie_runtime_alive_tasks ").unwrap_or(f64::NAN),
            rust_allocated_kib: kib(r#"walkie_heap_bytes{heap="rust",state="allocated"} "#),
            rust_resident_kib: kib(r#"walkie_heap_bytes{heap="rust",state="resident"} "#),
            libc_in_use_kib: kib(r#"walkie_heap_bytes{heap="libc",state="in_use"} "#),
            libc_free_kib: kib(r#"walkie_heap_bytes{heap="libc",state="free"} "#),
        };
        *into.lock().expect("scrape lock") = scraped;
    });
}

/// KiB of the files in `dir` whose names start with `prefix` (a SQLite database
/// and its -wal / -shm files).
fn files_kib(dir: &Path, prefix: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum::<u64>()
        / 1024
}

/// Files anywhere under `dir`.
fn count_files(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

fn write_csv(rows: &[Row], dir: &Path) {
    let _ = std::fs::create_dir_all(dir);
    let path = dir.join("soak.csv");
    let Ok(mut file) = std::fs::File::create(&path) else {
        eprintln!("cannot write {}", path.display());
        return;
    };
    let _ = writeln!(
        file,
        "minute,rss_kib,hwm_kib,cpu_percent,cpu_us_per_frame,opus_p50_ms,opus_p99_ms,opus_max_ms,\
         pcm16_p50_ms,pcm16_p99_ms,pcm16_max_ms,frames,lost,late,tasks,threads,fds,db_kib,spool_files,loadavg,\
         anon_kib,file_kib,rust_allocated_kib,rust_resident_kib,libc_in_use_kib,libc_free_kib,\
         host_ref_us_per_frame,steal_percent"
    );
    for r in rows {
        let _ = writeln!(
            file,
            "{:.2},{},{},{:.1},{:.2},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.2},{:.3}",
            r.minute,
            r.rss_kib,
            r.hwm_kib,
            r.cpu_percent,
            r.cpu_us_per_frame,
            r.p50[0],
            r.p99[0],
            r.max[0],
            r.p50[1],
            r.p99[1],
            r.max[1],
            r.sent,
            r.lost,
            r.late,
            r.scraped.tasks,
            r.threads,
            r.fds,
            r.db_kib,
            r.spool_files,
            r.load,
            r.anon_kib,
            r.file_kib,
            r.scraped.rust_allocated_kib,
            r.scraped.rust_resident_kib,
            r.scraped.libc_in_use_kib,
            r.scraped.libc_free_kib,
            r.host_us_per_frame,
            r.steal_percent
        );
    }
    println!("wrote {}", path.display());
}

//! What the end-to-end bench (`benches/e2e.rs`) and the soak (`benches/soak.rs`)
//! share: the real servers, the real `walkie-bridge` binary as a child process
//! pinned to one core, its RSS and CPU from /proc, a timestamping MQTT client, and
//! the MQTT stream driver that carries N channels of paced traffic.
//!
//! Layout of every run: this process (bench clients) and the servers it starts
//! (Synapse, murmurd, mosquitto inherit the affinity) run on core 1; the bridge
//! runs alone on core 0 (`taskset -c 0`). So "one core" in the figures is the
//! bridge's own, and a figure is never the bench client's CPU mistaken for the
//! bridge's. Other processes of the machine are not pinned: every figure is
//! printed with `/proc/loadavg`.

#![allow(dead_code)]

mod load_broker;
#[allow(unused_imports)] // The soak does not use it.
pub use load_broker::LoadBroker;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio::sync::mpsc;
use walkie_bridge::config::Config;
use walkie_bridge::registration::Registration;
use walkie_harness::{
    free_port, ChildGuard, CreateRoom, Preset, Synapse, SynapseBuilder, TestUser,
};

pub const SERVER: &str = "walkie.test";
pub const WAIT: Duration = Duration::from_secs(60);
/// The core the bridge gets to itself; everything else runs on [`CLIENT_CORE`].
/// `WALKIE_BENCH_BRIDGE_CORE` moves it (a memory-only run beside a soak).
pub const BRIDGE_CORE: usize = 0;
pub const CLIENT_CORE: usize = 1;
/// Debian's heaptrack preload library.
const HEAPTRACK_PRELOAD: &str = "/usr/lib/heaptrack/libheaptrack_preload.so";

// ---------------------------------------------------------------------------
// Numbers.

/// p50/p99/max of one series, in the series' unit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentiles (index round((n−1)·q)), the same rule as the
/// other benches of the repository.
pub fn summarize(samples: &[f64]) -> Summary {
    if samples.is_empty() {
        return Summary::default();
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    Summary {
        n: sorted.len(),
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
        mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
    }
}

/// Least-squares slope of y over x (units of y per unit of x); 0 for < 2 points.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Signed `a − b` in milliseconds.
pub fn diff_ms(a: Instant, b: Instant) -> f64 {
    if a >= b {
        ms(a - b)
    } else {
        -ms(b - a)
    }
}

/// The first three fields of /proc/loadavg: printed beside every figure, since
/// the machine's two cores are shared.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// Pins the calling thread, and so every thread and child process it starts
/// afterwards, to `cpu`. Call before the tokio runtime exists.
pub fn pin_to(cpu: usize) -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpu >= cpus {
        return false;
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it;
    // sched_setaffinity reads size_of::<cpu_set_t>() bytes from it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

// ---------------------------------------------------------------------------
// The bridge's configuration.

#[derive(Debug, Clone)]
pub enum EndpointSpec {
    Mumble {
        name: String,
        channel: String,
        username: String,
    },
    Mqtt {
        name: String,
        prefix: String,
        pcm16: bool,
    },
    /// A node on a reflector (protocol 1: no talkgroup).
    SvxReflector {
        name: String,
        server: String,
        callsign: String,
        auth_key: String,
    },
}

impl EndpointSpec {
    fn id(&self) -> String {
        match self {
            Self::Mumble { name, .. } => format!("mumble.{name}"),
            Self::Mqtt { name, .. } => format!("mqtt.{name}"),
            Self::SvxReflector { name, .. } => format!("svxreflector.{name}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ChannelSpec {
    pub name: String,
    pub endpoints: Vec<EndpointSpec>,
}

/// Addresses a configuration needs; `homeserver` may be a placeholder while only
/// the registration is wanted (it does not depend on the URL).
#[derive(Clone, Copy)]
pub struct ConfigEnv<'a> {
    pub homeserver: &'a str,
    pub listen: u16,
    pub status: u16,
    pub dir: &'a Path,
    pub mosquitto_port: u16,
    pub murmur: &'a str,
    pub live: bool,
}

pub fn config_text(env: &ConfigEnv<'_>, channels: &[ChannelSpec]) -> String {
    let mut text = format!(
        r#"
[homeserver]
url = "{homeserver}"
domain = "{SERVER}"

[appservice]
listen = "127.0.0.1:{listen}"
id = "walkie"
as_token = "as-token-for-the-walkie-bench"
hs_token = "hs-token-for-the-walkie-bench"
bot_localpart = "walkie"
puppet_prefix = "walkie_"

[database]
url = "sqlite://{db}"

[archive]
spool_dir = "{spool}"

[encryption]
store_dir = "{crypto}"

[floor]
idle_release_ms = 1500

[logging]
level = "warn"

[status]
listen = "127.0.0.1:{status}"

[live]
enabled = {live}
# P1 and P2 press 200 times a minute; the default (60) is for people.
max_presses_per_minute = 100000
"#,
        homeserver = env.homeserver,
        listen = env.listen,
        status = env.status,
        db = env.dir.join("walkie.db").display(),
        spool = env.dir.join("spool").display(),
        crypto = env.dir.join("crypto").display(),
        live = env.live,
    );
    for channel in channels {
        let endpoints: Vec<String> = channel
            .endpoints
            .iter()
            .map(|e| format!("{:?}", e.id()))
            .collect();
        let _ = write!(
            text,
            "\n[[channel]]\nname = \"{name}\"\nroom = \"#{name}:{SERVER}\"\nendpoints = [{}]\n",
            endpoints.join(", "),
            name = channel.name,
        );
    }
    for endpoint in channels.iter().flat_map(|c| &c.endpoints) {
        match endpoint {
            EndpointSpec::Mumble {
                name,
                channel,
                username,
            } => {
                let _ = write!(
                    text,
                    "\n[mumble.{name}]\nserver = \"{}\"\nchannel = \"{channel}\"\n\
                     username = \"{username}\"\naccept_invalid_cert = true\n",
                    env.murmur
                );
            }
            EndpointSpec::Mqtt {
                name,
                prefix,
                pcm16,
            } => {
                let _ = write!(
                    text,
                    "\n[mqtt.{name}]\nbroker = \"mqtt://127.0.0.1:{}\"\nprefix = \"{prefix}\"\n\
                     payload = \"{}\"\n",
                    env.mosquitto_port,
                    if *pcm16 { "pcm16" } else { "opus" }
                );
            }
            EndpointSpec::SvxReflector {
                name,
                server,
                callsign,
                auth_key,
            } => {
                let _ = write!(
                    text,
                    "\n[svxreflector.{name}]\nserver = \"{server}\"\ncallsign = \"{callsign}\"\n\
                     auth_key = \"{auth_key}\"\n"
                );
            }
        }
    }
    text
}

pub fn parse_config(text: &str) -> Config {
    let (config, _warnings) =
        Config::from_toml_str(text, "bench.toml", Vec::<(String, String)>::new())
            .unwrap_or_else(|errors| panic!("bench config is invalid: {errors}\n{text}"));
    config
}

/// Synapse with the bridge's registration (made from any config of this bench:
/// it depends only on the appservice section), and a room owner.
pub struct Matrix {
    pub synapse: Synapse,
    pub alice: TestUser,
    pub listen: u16,
}

impl Matrix {
    pub async fn start(dir: &Path, listen: u16) -> Self {
        let env = ConfigEnv {
            homeserver: "http://127.0.0.1:1",
            listen,
            status: 1,
            dir,
            mosquitto_port: 1,
            murmur: "127.0.0.1:1",
            live: false,
        };
        let registration = Registration::from_config(&parse_config(&config_text(&env, &[])))
            .to_yaml()
            .expect("registration YAML");
        let synapse = SynapseBuilder::new()
            .server_name(SERVER)
            .appservice_registration(registration)
            .start()
            .await
            .expect("Synapse starts");
        let alice = synapse.register_user("alice", false).await.expect("alice");
        Self {
            synapse,
            alice,
            listen,
        }
    }

    /// Public room `#name` with the bot at power level 100; its room ID.
    pub async fn room(&self, name: &str) -> String {
        self.synapse
            .client(&self.alice)
            .create_room(
                &CreateRoom::new()
                    .name(name)
                    .alias(name)
                    .preset(Preset::Public)
                    .power_levels(json!({ "users": { format!("@walkie:{SERVER}"): 100 } })),
            )
            .await
            .unwrap_or_else(|e| panic!("room {name}: {e}"))
    }
}

// ---------------------------------------------------------------------------
// The bridge as a child process.

pub struct Bridge {
    guard: ChildGuard,
    pub status: u16,
    pub started_in: Duration,
}

impl Bridge {
    /// Runs `walkie-bridge run -c <dir>/<name>.toml` on [`BRIDGE_CORE`] and waits
    /// for `/health` to answer 200. `WALKIE_BENCH_BRIDGE_BIN` runs another build of
    /// the bridge instead of this bench's own (to compare build profiles on the
    /// same bench, e.g. one built with LTO).
    pub async fn start(dir: &Path, name: &str, text: &str, status: u16) -> Self {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write config");
        let core = std::env::var("WALKIE_BENCH_BRIDGE_CORE").unwrap_or(BRIDGE_CORE.to_string());
        let mut command = std::process::Command::new("taskset");
        command.arg("-c").arg(core);
        // scripts/heap-profile.sh: heaptrack's malloc hooks in the bridge alone (not
        // in this process, the servers or taskset, whose exec would end the trace),
        // its raw trace written to a file.
        if let Ok(trace_dir) = std::env::var("WALKIE_BENCH_HEAPTRACK_DIR") {
            let trace = Path::new(&trace_dir).join(format!("{name}.raw"));
            command
                .arg("env")
                .arg(format!("LD_PRELOAD={HEAPTRACK_PRELOAD}"))
                .arg(format!("DUMP_HEAPTRACK_OUTPUT={}", trace.display()));
        }
        command
            .arg(
                std::env::var_os("WALKIE_BENCH_BRIDGE_BIN")
                    .unwrap_or_else(|| env!("CARGO_BIN_EXE_walkie-bridge").into()),
            )
            .arg("run")
            .arg("-c")
            .arg(&path);
        let started = Instant::now();
        let mut guard = ChildGuard::spawn(
            format!("walkie-bridge ({name})"),
            command,
            dir.join(format!("{name}.log")),
        )
        .expect("walkie-bridge starts");
        guard.set_print_log_on_panic(true);
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{status}/health");
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Ok(answer) = http.get(&url).send().await {
                if answer.status().is_success() {
                    break;
                }
            }
            assert!(
                guard.is_running(),
                "walkie-bridge exited:\n{}",
                guard.log_tail(40)
            );
            assert!(
                Instant::now() < deadline,
                "walkie-bridge not healthy in time:\n{}",
                guard.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            guard,
            status,
            started_in: started.elapsed(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.guard.id()
    }

    /// Threads and open file descriptors of the bridge process now.
    pub fn threads_and_fds(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let threads = status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        (threads, fds)
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let [rss, hwm] = self.status_kib(["VmRSS:", "VmHWM:"]);
        (rss, hwm)
    }

    /// (RssAnon, RssFile) in KiB: what the bridge allocated, and the pages of its
    /// binary and libraries it has touched (which grow as code first runs).
    pub fn rss_anon_file_kib(&self) -> (u64, u64) {
        let [anon, file] = self.status_kib(["RssAnon:", "RssFile:"]);
        (anon, file)
    }

    /// Fields of /proc/<pid>/status in KiB (0 when absent).
    fn status_kib<const N: usize>(&self, names: [&str; N]) -> [u64; N] {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        names.map(|name| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
    }

    /// CPU seconds (user + system) the bridge used so far, all its threads.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(&self.pid().to_string())
    }

    /// One value of the bridge's Prometheus text (summed over label sets).
    pub async fn metric(&self, name: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.status);
        let Ok(answer) = reqwest::get(&url).await else {
            return f64::NAN;
        };
        let text = answer.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    }

    /// Waits until the archive outbox is empty (every voice message posted), so
    /// one step's uploads do not load the next step. Returns how long it took.
    pub async fn wait_outbox_empty(&self, limit: Duration) -> Duration {
        let started = Instant::now();
        // Give the recorder time to hand the last recordings to the outbox.
        tokio::time::sleep(Duration::from_millis(300)).await;
        while started.elapsed() < limit {
            let depth = self.metric("walkie_archive_outbox_depth").await;
            if depth == 0.0 || depth.is_nan() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        started.elapsed()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.guard.log_tail(lines)
    }

    pub fn stop(mut self) {
        let _ = self.guard.stop_blocking(Duration::from_secs(20));
    }

    /// Ends the bridge with SIGKILL: nothing is freed on the way out, so a heap
    /// trace's "leaked" allocations are exactly what was live at this moment.
    pub fn kill(mut self) {
        let _ = self.guard.kill();
    }

    /// Whether the bridge runs under heaptrack (`WALKIE_BENCH_HEAPTRACK_DIR`).
    pub fn heap_traced() -> bool {
        std::env::var_os("WALKIE_BENCH_HEAPTRACK_DIR").is_some()
    }
}

/// CPU seconds (user + system) of process `pid` ("self" for this one).
pub fn cpu_seconds_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / hz
}

/// The pid of the process whose command line mentions `needle` (the harness
/// keeps no pid of the servers it starts; their temp dirs are unique).
pub fn pid_with_arg(needle: &str) -> Option<String> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(needle)
                .then_some(name)
        })
}

// ---------------------------------------------------------------------------
// MQTT clients with arrival times.

/// A publish seen by a bench client, stamped when its event loop handed it over.
pub struct Arrival {
    pub topic: String,
    pub payload: Vec<u8>,
    pub at: Instant,
}

/// A rumqttc client subscribed to `topics` (QoS 0); publishes arrive on the
/// returned channel.
pub async fn mqtt_client(
    port: u16,
    id: &str,
    topics: &[&str],
) -> (AsyncClient, mpsc::UnboundedReceiver<Arrival>) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_request_channel_capacity(65_536);
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_keep_alive(Duration::from_secs(60));
    let (client, mut eventloop) = AsyncClient::new(options, 65_536);
    // Like the bridge's own MQTT connections: no Nagle delay on small publishes.
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Arrival {
                        topic: p.topic,
                        payload: p.payload.to_vec(),
                        at: Instant::now(),
                    });
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(_) => {}
                Err(error) => {
                    eprintln!("bench MQTT client: {error}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    for topic in topics {
        client
            .subscribe(*topic, QoS::AtMostOnce)
            .await
            .expect("subscribe");
        tokio::time::timeout(WAIT, subscribed.recv())
            .await
            .expect("suback");
    }
    (client, rx)
}

/// `seq` (big-endian u32) + payload: the MQTT audio framing.
pub fn framed(seq: u32, audio: &[u8]) -> Vec<u8> {
    let mut payload = seq.to_be_bytes().to_vec();
    payload.extend_from_slice(audio);
    payload
}

pub fn seq_of(payload: &[u8]) -> Option<u32> {
    payload.first_chunk::<4>().map(|h| u32::from_be_bytes(*h))
}

// ---------------------------------------------------------------------------
// Test audio.

/// Opus packets (48 kHz, 20 ms) of real speech, and the same speech as 16 kHz
/// S16LE pcm16 payloads (640 bytes each).
pub struct Audio {
    pub opus: Vec<Vec<u8>>,
    pub pcm16: Vec<Vec<u8>>,
}

pub fn audio(speech48: &[i16], speech16: &[i16]) -> Audio {
    let mut encoder = walkie_endpoint::audio::OpusEncoder::new().expect("encoder");
    let opus = walkie_endpoint::audio::frames_of(speech48)
        .map(|f| encoder.encode(&f).expect("encode").to_vec())
        .collect();
    let pcm16 = speech16
        .chunks_exact(320)
        .map(|c| c.iter().flat_map(|s| s.to_le_bytes()).collect())
        .collect();
    Audio { opus, pcm16 }
}

// ---------------------------------------------------------------------------
// N channels of MQTT traffic: device → mqtt.sNi → hub → mqtt.sNo → subscriber.

/// Channel `s{i}` of the stream configs: a device endpoint and a listener endpoint.
pub fn stream_channel(i: usize, pcm16: bool) -> ChannelSpec {
    ChannelSpec {
        name: format!("s{i}"),
        endpoints: vec![
            EndpointSpec::Mqtt {
                name: format!("s{i}i"),
                prefix: format!("s{i}i"),
                pcm16,
            },
            EndpointSpec::Mqtt {
                name: format!("s{i}o"),
                prefix: format!("s{i}o"),
                pcm16,
            },
        ],
    }
}

#[derive(Default)]
struct Track {
    granted: bool,
    in_at: HashMap<u32, Instant>,
    out_at: HashMap<u32, Instant>,
}

/// Frames of one finished transmission on one channel.
#[derive(Debug, Default, Clone)]
pub struct TxFrames {
    pub sent: usize,
    /// Per frame that arrived out: out arrival − arrival of the same frame (by
    /// sequence number) at the subscriber on the input topic, ms.
    pub latencies: Vec<f64>,
    /// Sent, but never seen on the output topic.
    pub lost: usize,
}

/// Drives `count` stream channels over one device connection and watches them
/// over one subscriber connection.
///
/// Latency of a frame = its arrival on `s{i}o/out/audio` − its arrival on
/// `s{i}i/in/dev/audio`, both stamped by the same subscriber: the device's
/// publish and mosquitto's first relay cancel out; left is the bridge (endpoint
/// in → hub → endpoint out, transcoding included) plus one broker hop.
pub struct Streams {
    device: AsyncClient,
    tracks: Arc<Mutex<Vec<Track>>>,
    pub count: usize,
}

impl Streams {
    pub async fn connect(port: u16, count: usize, name: &str) -> Self {
        let (_observer, mut seen) = mqtt_client(
            port,
            &format!("{name}-observer"),
            &["+/in/dev/audio", "+/in/dev/floor", "+/out/audio"],
        )
        .await;
        let tracks: Arc<Mutex<Vec<Track>>> =
            Arc::new(Mutex::new((0..count).map(|_| Track::default()).collect()));
        let routed = tracks.clone();
        tokio::spawn(async move {
            // Keeps the observer's client alive as long as this task.
            let _observer = _observer;
            while let Some(arrival) = seen.recv().await {
                let mut parts = arrival.topic.split('/');
                let Some(prefix) = parts.next() else { continue };
                let Some(index) = prefix
                    .strip_prefix('s')
                    .and_then(|p| p.get(..p.len().saturating_sub(1)))
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    continue;
                };
                let mut tracks = routed.lock().expect("tracks");
                let Some(track) = tracks.get_mut(index) else {
                    continue;
                };
                let rest: Vec<&str> = parts.collect();
                match rest.as_slice() {
                    ["in", "dev", "audio"] => {
                        if let Some(seq) = seq_of(&arrival.payload) {
                            track.in_at.insert(seq, arrival.at);
                        }
                    }
                    ["in", "dev", "floor"]
                        if arrival.payload.windows(9).any(|w| w == b"\"granted\"") =>
                    {
                        track.granted = true;
                    }
                    ["out", "audio"] => {
                        if let Some(seq) = seq_of(&arrival.payload) {
                            track.out_at.insert(seq, arrival.at);
                        }
                    }
                    _ => {}
                }
            }
        });
        let (device, _) = mqtt_client(port, &format!("{name}-device"), &[]).await;
        Self {
            device,
            tracks,
            count,
        }
    }

    /// Forgets what was seen on channel `i` and asks for its floor.
    pub async fn start(&self, i: usize) {
        if let Some(track) = self.tracks.lock().expect("tracks").get_mut(i) {
            *track = Track::default();
        }
        self.device
            .publish(
                format!("s{i}i/in/dev/start"),
                QoS::AtLeastOnce,
                false,
                r#"{"talker":"bench"}"#,
            )
            .await
            .expect("publish start");
    }

    pub fn granted(&self, i: usize) -> bool {
        self.tracks
            .lock()
            .expect("tracks")
            .get(i)
            .is_some_and(|t| t.granted)
    }

    /// Waits until every channel in `channels` has its grant; false on timeout.
    pub async fn wait_granted(&self, channels: std::ops::Range<usize>, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if channels.clone().all(|i| self.granted(i)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn frame(&self, i: usize, seq: u32, audio: &[u8]) {
        self.device
            .publish(
                format!("s{i}i/in/dev/audio"),
                QoS::AtMostOnce,
                false,
                framed(seq, audio),
            )
            .await
            .expect("publish audio");
    }

    pub async fn end(&self, i: usize) {
        self.device
            .publish(format!("s{i}i/in/dev/end"), QoS::AtLeastOnce, false, "")
            .await
            .expect("publish end");
    }

    /// The frames `0..sent` of channel `i`'s transmission, matched by sequence
    /// number (pcm16 output frames are numbered from 0 per talk like the input).
    pub fn harvest(&self, i: usize, sent: usize) -> TxFrames {
        let tracks = self.tracks.lock().expect("tracks");
        let Some(track) = tracks.get(i) else {
            return TxFrames::default();
        };
        let mut frames = TxFrames {
            sent,
            ..TxFrames::default()
        };
        for seq in 0..sent as u32 {
            match (track.in_at.get(&seq), track.out_at.get(&seq)) {
                (Some(inp), Some(out)) => frames.latencies.push(diff_ms(*out, *inp)),
                _ => frames.lost += 1,
            }
        }
        frames
    }
}

/// mosquitto with `set_tcp_nodelay true`: by default it leaves Nagle's algorithm
/// on its client sockets, and a publish that follows another to the same
/// subscriber within the subscriber's delayed-ACK time (40 ms) waits for it —
/// the bench's subscriber sees each input frame and then the bridge's output
/// frame on one socket, so without this the broker adds up to 40 ms to ~1 % of
/// the frames it measures. (Worth the same line in a production mosquitto.conf.)
pub async fn broker() -> walkie_harness::Mosquitto {
    walkie_harness::Mosquitto::builder()
        .config("set_tcp_nodelay true")
        .start()
        .await
        .expect("mosquitto")
}

/// Where this run's files go (configs, logs, bridge database); kept after the
/// run for a look at the logs.
pub fn run_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("walkie-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("run dir");
    dir
}

/// A free port for the appservice and one for the status server.
pub fn ports() -> (u16, u16) {
    (free_port(), free_port())
}

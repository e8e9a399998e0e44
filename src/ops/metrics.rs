//! The Prometheus side of the `metrics` facade the whole workspace records into.
//!
//! One recorder per process (the facade has one global slot), installed before any
//! hub or endpoint resolves its counters — handles taken earlier would record into
//! nothing. Values that live in atomics of the running channels (link drops,
//! connection states) are copied in at scrape time by [`collect`].

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::hub::HubObserver;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Added latency: a frame normally spends well under a millisecond in the bridge;
/// the upper buckets catch an endpoint that falls behind.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Talks: a kerchunk to the floor's 60 s default cap and beyond.
const TALK_BUCKETS: &[f64] = &[0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];
/// From the end of a transmission to its voice message in the room.
const POST_DELAY_BUCKETS: &[f64] = &[0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0];

/// Installs the process's recorder on first call; later calls (a second daemon in
/// one test process) share it. `None` if another recorder was installed first,
/// in which case `/metrics` says so instead of showing numbers.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("walkie_added_latency_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("walkie_talk_seconds".into()),
                        TALK_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("walkie_archive_post_delay_seconds".into()),
                        POST_DELAY_BUCKETS,
                    )
                });
            let builder = match builder {
                Ok(builder) => builder,
                Err(error) => {
                    tracing::error!(%error, "metrics buckets rejected; histograms become summaries");
                    PrometheusBuilder::new()
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    spawn_upkeep(handle.clone());
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(%error, "a metrics recorder is already installed; /metrics stays empty");
                    None
                }
            }
        })
        .clone()
}

/// How often histogram samples are folded into their buckets without a scrape.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A recorder made by `build_recorder` keeps every histogram sample (one per
/// audio frame for `walkie_added_latency_seconds`) in a queue that only
/// `run_upkeep` drains — so far that happened only on a scrape of /metrics. With
/// nobody scraping, the queue grew without end: the soak measured +2 MB of RSS a
/// minute at 20 streams. A thread of its own (not a tokio task) because the
/// recorder is process-wide and outlives any runtime that installed it.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            handle.run_upkeep();
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "no metrics upkeep thread: histograms grow until /metrics is scraped");
    }
}

/// Copies what the channels keep in atomics into the registry, then renders the
/// Prometheus text exposition.
pub fn render(handle: &PrometheusHandle, channels: &[HubObserver]) -> String {
    collect(channels);
    collect_runtime();
    collect_heap();
    handle.run_upkeep();
    handle.render()
}

/// Tasks alive on the runtime that serves /metrics (the daemon's): a task that
/// never ends (one per transmission, say) shows here as a count that only grows,
/// long before it shows in RSS or CPU. The soak benchmark records it.
fn collect_runtime() {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let metrics = runtime.metrics();
        metrics::gauge!("walkie_runtime_alive_tasks").set(metrics.num_alive_tasks() as f64);
        metrics::gauge!("walkie_runtime_global_queue_depth")
            .set(metrics.global_queue_depth() as f64);
    }
}

/// What the allocator behind Rust's heap says about itself. The binary picks the
/// allocator (src/main.rs), so it is the binary that installs the probe.
#[derive(Clone, Copy, Debug)]
pub struct HeapStats {
    /// Bytes in live allocations.
    pub allocated: u64,
    /// Bytes of physical memory the allocator holds (live, free-but-dirty and its
    /// own metadata): what it adds to RSS.
    pub resident: u64,
}

static RUST_HEAP_PROBE: OnceLock<fn() -> Option<HeapStats>> = OnceLock::new();

/// Installs the probe `/metrics` reads the Rust heap through (first call wins).
pub fn set_rust_heap_probe(probe: fn() -> Option<HeapStats>) {
    let _ = RUST_HEAP_PROBE.set(probe);
}

/// `walkie_heap_bytes`: the Rust heap (allocated, resident) and the C heap that
/// SQLite and the codecs allocate from (in use, free but held). RSS alone cannot
/// tell a leak (allocated grows) from an allocator holding on to freed memory
/// (resident or free grows, allocated flat); the soak benchmark records both.
fn collect_heap() {
    if let Some(stats) = RUST_HEAP_PROBE.get().and_then(|probe| probe()) {
        metrics::gauge!("walkie_heap_bytes", "heap" => "rust", "state" => "allocated")
            .set(stats.allocated as f64);
        metrics::gauge!("walkie_heap_bytes", "heap" => "rust", "state" => "resident")
            .set(stats.resident as f64);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and only reads glibc's own
        // counters under its arena locks; it returns the struct by value.
        let info = unsafe { libc::mallinfo2() };
        let in_use = info.uordblks.saturating_add(info.hblkhd);
        metrics::gauge!("walkie_heap_bytes", "heap" => "libc", "state" => "in_use")
            .set(in_use as f64);
        metrics::gauge!("walkie_heap_bytes", "heap" => "libc", "state" => "free")
            .set(info.fordblks as f64);
    }
}

fn collect(channels: &[HubObserver]) {
    use std::sync::atomic::Ordering::Relaxed;
    for hub in channels {
        for endpoint in &hub.endpoints {
            let labels = [
                ("channel", hub.channel.clone()),
                ("endpoint", endpoint.id.to_string()),
            ];
            let state = endpoint.health.state();
            metrics::gauge!("walkie_endpoint_connected", &labels).set(
                if state == walkie_endpoint::ConnectionState::Connected {
                    1.0
                } else {
                    0.0
                },
            );
            metrics::counter!("walkie_endpoint_reconnects_total", &labels)
                .absolute(endpoint.health.reconnects());
            let up = [
                ("channel", hub.channel.clone()),
                ("endpoint", endpoint.id.to_string()),
                ("direction", "uplink".to_owned()),
            ];
            metrics::counter!("walkie_endpoint_frames_dropped_total", &up)
                .absolute(endpoint.counters.uplink_dropped.load(Relaxed));
            let down = [
                ("channel", hub.channel.clone()),
                ("endpoint", endpoint.id.to_string()),
                ("direction", "downlink".to_owned()),
            ];
            metrics::counter!("walkie_endpoint_frames_dropped_total", &down)
                .absolute(endpoint.counters.downlink_lagged.load(Relaxed));
        }
        let holder = hub.status.borrow().holder.is_some();
        metrics::gauge!("walkie_floor_held", "channel" => hub.channel.clone()).set(if holder {
            1.0
        } else {
            0.0
        });
    }
}

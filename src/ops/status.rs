//! `/metrics` (Prometheus text), `/health` and `/status` (JSON) on their own
//! listener, `[status] listen`. Not on the appservice listener: that one faces the
//! homeserver (and, with live talk, the internet), while these pages need no login
//! and tell who talks when, so they default to loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::summary;
use crate::hub::status::{unix_ms, HolderStatus, TransmissionRecord};
use crate::hub::HubObserver;
use crate::store::Store;

/// Where the daemon is in its life, for `/health`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Starting,
    WaitingForHomeserver,
    Running,
    Reloading,
    Stopping,
}

/// The running channels as the daemon last published them (changes on reload).
pub type ChannelsView = watch::Receiver<Arc<Vec<HubObserver>>>;

#[derive(Clone)]
struct Shared {
    metrics: Option<PrometheusHandle>,
    channels: ChannelsView,
    phase: watch::Receiver<Phase>,
    store: Store,
    started: Instant,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (status.listen): {source}")]
pub struct BindError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// The status server, bound and ready to serve.
pub struct StatusServer {
    listener: TcpListener,
    router: Router,
}

impl StatusServer {
    pub async fn bind(
        addr: SocketAddr,
        metrics: Option<PrometheusHandle>,
        channels: ChannelsView,
        phase: watch::Receiver<Phase>,
        store: Store,
    ) -> Result<Self, BindError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BindError { addr, source })?;
        let shared = Shared {
            metrics,
            channels,
            phase,
            store,
            started: Instant::now(),
        };
        let router = Router::new()
            .route("/metrics", get(metrics_page))
            .route("/health", get(health))
            .route("/status", get(status))
            .with_state(shared);
        Ok(Self { listener, router })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub async fn serve(self, shutdown: CancellationToken) {
        let addr = self.local_addr();
        tracing::info!(listen = ?addr, "status and metrics listening");
        if let Err(error) = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::warn!(%error, "status server stopped with an error");
        }
    }
}

async fn metrics_page(State(shared): State<Shared>) -> Response {
    match &shared.metrics {
        Some(handle) => {
            let channels = shared.channels.borrow().clone();
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                super::metrics::render(handle, &channels),
            )
                .into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "another metrics recorder is installed in this process\n",
        )
            .into_response(),
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    phase: Phase,
}

/// 200 while the bridge runs its channels; 503 while it starts, waits for the
/// homeserver, reloads or stops. An external system being down (a Mumble server,
/// an MQTT broker) does not make the bridge unhealthy: `/status` shows those.
async fn health(State(shared): State<Shared>) -> Response {
    let phase = *shared.phase.borrow();
    let (code, status) = match phase {
        Phase::Running => (StatusCode::OK, "ok"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    (code, Json(Health { status, phase })).into_response()
}

#[derive(Serialize)]
struct Status {
    version: &'static str,
    phase: Phase,
    uptime_s: u64,
    summary: String,
    channels: Vec<ChannelView>,
    outbox: OutboxView,
}

#[derive(Serialize)]
struct ChannelView {
    name: String,
    holder: Option<HolderStatus>,
    endpoints: Vec<EndpointView>,
    recent: Vec<TransmissionRecord>,
}

#[derive(Serialize)]
struct EndpointView {
    id: String,
    state: &'static str,
    since_unix_ms: Option<u64>,
    reason: Option<String>,
    /// What the operator must fix although the endpoint is connected (e.g. a
    /// Mumble server that does not let the bot speak); absent when nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
    reconnects: u64,
    /// Restarts of the endpoint's task after a panic.
    restarts: u64,
    uplink_dropped: u64,
    downlink_lagged: u64,
}

#[derive(Serialize)]
struct OutboxView {
    /// Recordings not yet posted to their room.
    depth: Option<u64>,
    oldest_age_s: Option<f64>,
}

async fn status(State(shared): State<Shared>) -> Json<Status> {
    use std::sync::atomic::Ordering::Relaxed;
    let observers = shared.channels.borrow().clone();
    let channels = observers
        .iter()
        .map(|hub| {
            let status = hub.status.borrow().clone();
            ChannelView {
                name: hub.channel.clone(),
                holder: status.holder,
                endpoints: hub
                    .endpoints
                    .iter()
                    .map(|e| EndpointView {
                        id: e.id.to_string(),
                        state: e.health.state().as_str(),
                        since_unix_ms: e.health.since().map(unix_ms),
                        reason: e.health.reason(),
                        warning: e.health.warning(),
                        reconnects: e.health.reconnects(),
                        restarts: e.health.restarts(),
                        uplink_dropped: e.counters.uplink_dropped.load(Relaxed),
                        downlink_lagged: e.counters.downlink_lagged.load(Relaxed),
                    })
                    .collect(),
                recent: status.recent.into_iter().collect(),
            }
        })
        .collect();
    let outbox = OutboxView {
        depth: shared.store.outbox_depth().await.ok(),
        oldest_age_s: shared
            .store
            .outbox_oldest_age(SystemTime::now())
            .await
            .ok()
            .flatten()
            .map(|d| d.as_secs_f64()),
    };
    Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        phase: *shared.phase.borrow(),
        uptime_s: shared.started.elapsed().as_secs(),
        summary: summary(&observers),
        channels,
        outbox,
    })
}

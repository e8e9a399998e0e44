//! Endpoint tasks under supervision: a task that panics is logged, shown
//! disconnected (with the panic) on `/status`, and — when the endpoint can be
//! built again — restarted with exponential backoff on a fresh link to the same
//! hub, keeping its place in `/status` and its counters.
//!
//! Restarting builds a new instance rather than reusing the old one: an
//! endpoint's state after a panic is unknown, and [`Endpoint::run`] consumes
//! the endpoint anyway. Whoever starts the endpoint says how to build it again
//! ([`EndpointFactory`]); configured endpoints are rebuilt from their section,
//! exactly as a reload does.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{error, info, warn, Instrument};
use walkie_endpoint::{ConnectionState, Endpoint, HubLink};

use super::channel::HubAttacher;

/// Builds a fresh instance of an endpoint, to run after its task panicked. The
/// error is for the operator (the endpoint's section no longer builds).
pub type EndpointFactory = Box<dyn FnMut() -> Result<Box<dyn Endpoint>, String> + Send>;

/// How long to wait before each restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Before the first restart; doubled after each one.
    pub first: Duration,
    pub cap: Duration,
    /// An instance that ran this long before it panicked counts as healthy:
    /// the next restart waits `first` again.
    pub stable: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            stable: Duration::from_secs(300),
        }
    }
}

/// One endpoint, as [`supervise`] runs it.
pub struct Supervised {
    pub endpoint: Box<dyn Endpoint>,
    pub link: HubLink,
    /// `None`: the endpoint cannot be built again (it owns something only its
    /// creator had, like the room endpoint's inbox); a panic leaves it stopped.
    pub restart: Option<EndpointFactory>,
}

/// Runs an endpoint until `shutdown`, restarting it after a panic. Returns when
/// the endpoint returns, cannot be restarted, or the hub has stopped.
///
/// Not an `async fn`, and the restart path boxed: a supervisor lives as long as
/// its endpoint and waits on it nearly always, while an `async fn` would keep
/// its arguments beside the locals they move into, and room for the restart's
/// state, for good (issue 16: 1.4 → 0.7 KiB per endpoint).
pub fn supervise(
    supervised: Supervised,
    attacher: HubAttacher,
    backoff: Backoff,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send {
    let Supervised {
        mut endpoint,
        mut link,
        restart,
    } = supervised;
    let mut restarter = Restarter {
        id: endpoint.id().clone(),
        capabilities: endpoint.capabilities(),
        health: link.health(),
        restart,
        attacher,
        backoff,
        delay: backoff.first,
    };
    async move {
        loop {
            let started = Instant::now();
            // A task of its own, so that a panic ends it (dropping the endpoint
            // and its link, which releases a floor it held) and comes back here
            // as a JoinError instead of taking the supervisor down with it.
            // Aborted with the supervisor, so that no endpoint outlives it.
            let run = endpoint.run(link, shutdown.clone());
            let outcome = AbortOnDropHandle::new(tokio::spawn(run.in_current_span())).await;
            let panic = match outcome {
                Ok(Ok(())) => return,
                Ok(Err(error)) => {
                    error!(%error, "endpoint stopped");
                    restarter.health.set(
                        ConnectionState::Disconnected,
                        Some(format!("stopped: {error}")),
                    );
                    return;
                }
                Err(join) if join.is_panic() => panic_message(join.into_panic()),
                // The runtime is shutting down.
                Err(_) => return,
            };
            let restarted = Box::pin(restarter.after_panic(panic, started, &shutdown)).await;
            let Some(restarted) = restarted else {
                return;
            };
            (endpoint, link) = restarted;
        }
    }
}

/// What a supervisor needs to restart its endpoint.
struct Restarter {
    id: walkie_endpoint::EndpointId,
    capabilities: walkie_endpoint::Capabilities,
    health: std::sync::Arc<walkie_endpoint::EndpointHealth>,
    restart: Option<EndpointFactory>,
    attacher: HubAttacher,
    backoff: Backoff,
    delay: Duration,
}

impl Restarter {
    /// After the endpoint's task panicked: a new instance on a new link, after
    /// the backoff; `None` when it cannot or must not be restarted.
    async fn after_panic(
        &mut self,
        panic: String,
        started: Instant,
        shutdown: &CancellationToken,
    ) -> Option<(Box<dyn Endpoint>, HubLink)> {
        let id = &self.id;
        metrics::counter!("walkie_endpoint_panics_total", "endpoint" => id.to_string())
            .increment(1);
        let Some(factory) = self.restart.as_mut().filter(|_| !shutdown.is_cancelled()) else {
            error!(%panic, "endpoint task panicked; it is not restarted");
            self.health.set(
                ConnectionState::Disconnected,
                Some(format!("task panicked: {panic}")),
            );
            return None;
        };
        if started.elapsed() >= self.backoff.stable {
            self.delay = self.backoff.first;
        }
        error!(%panic, restart_in = ?self.delay, "endpoint task panicked; restarting it");
        self.health.set(
            ConnectionState::Disconnected,
            Some(format!(
                "task panicked: {panic}; restarting in {:?}",
                self.delay
            )),
        );
        let endpoint = loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(self.delay) => {}
            }
            self.delay = (self.delay * 2).min(self.backoff.cap);
            match factory() {
                Ok(endpoint) => break endpoint,
                Err(error) => {
                    error!(%error, retry_in = ?self.delay, "cannot build the endpoint again");
                    self.health.set(
                        ConnectionState::Disconnected,
                        Some(format!("cannot restart after a panic: {error}")),
                    );
                }
            }
        };
        let link = match self.attacher.reattach(id.clone(), self.capabilities).await {
            Ok(link) => link,
            Err(error) => {
                warn!(%error, "endpoint not restarted");
                return None;
            }
        };
        self.health.record_restart();
        metrics::counter!("walkie_endpoint_restarts_total", "endpoint" => id.to_string())
            .increment(1);
        info!(restarts = self.health.restarts(), "endpoint restarted");
        Some((endpoint, link))
    }
}

/// The text a panic was raised with, when it is text.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(text) => (*text).to_owned(),
            Err(_) => "(no message)".to_owned(),
        },
    }
}

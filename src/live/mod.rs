//! Live talk from Matrix (DESIGN.md §4, issue #7): a WebSocket endpoint and a
//! push-to-talk web page, served on the appservice listener.
//!
//! - [`protocol`]: the wire format (docs/live-protocol.md), parsed defensively.
//! - [`auth`]: OpenID token, room membership and opt-in checks of a logon.
//! - [`session`]: one WebSocket connection.
//! - [`endpoint`]: one channel's live clients as one hub endpoint (`live.<channel>`).
//! - [`limits`]: what a connection, or an address, may hold or try before and
//!   after logging on.
//! - [`assets`]: the page, embedded in the binary.
//!
//! The routes exist from start-up on; each channel's endpoint joins when its room
//! is ready. A logon that arrives before waits (up to a timeout) in the channel's
//! inbox, and one for a channel that could not be bridged is refused.

pub mod assets;
pub mod auth;
pub mod endpoint;
pub mod history;
pub(crate) mod limits;
pub mod protocol;
pub mod session;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};
use walkie_endpoint::{Endpoint, EndpointId};

use crate::config::Config;
use crate::matrix::Homeserver;
use crate::store::Store;

pub use auth::{Authenticator, Identity, Refusal};
pub use endpoint::LiveEndpoint;

/// Messages waiting for a channel's live actor: logons, presses and audio of all
/// its clients. Audio beyond this is dropped (counted); control waits.
const CHANNEL_INBOX: usize = 1024;
/// The largest WebSocket message taken from a client: a logon with a long token,
/// or an audio frame, fit many times over.
const MAX_MESSAGE: usize = 64 * 1024;

/// What each channel's live endpoint is allowed.
#[derive(Debug, Clone, Copy)]
pub struct LiveSettings {
    pub max_clients: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("cannot build the HTTP client that checks OpenID tokens: {0}")]
    Http(#[from] reqwest::Error),
}

/// The live-talk side of the daemon: routes for the listener, and an endpoint for
/// each bridged channel.
pub struct Live {
    endpoints: LiveEndpoints,
}

/// Makes each channel's live endpoint when the channel starts — again after a
/// reload restarted or added it. Cheap to clone.
#[derive(Clone)]
pub struct LiveEndpoints {
    shared: Option<Arc<Shared>>,
    auth: Option<Arc<Authenticator>>,
    settings: LiveSettings,
}

struct Shared {
    directory: Arc<session::Directory>,
    connections: Arc<limits::Connections>,
    trusted_proxies: Vec<IpAddr>,
    page_config: String,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    sessions: AtomicU64,
    stream_ids: Arc<endpoint::StreamIds>,
    history: Arc<history::History>,
}

impl Live {
    /// Everything off when `live.enabled = false`: no routes, no endpoints.
    pub fn new(
        config: &Config,
        homeserver: Homeserver,
        store: Store,
        bot: OwnedUserId,
    ) -> Result<Self, LiveError> {
        let settings = LiveSettings {
            max_clients: config.live.max_clients,
        };
        if !config.live.enabled {
            return Ok(Self {
                endpoints: LiveEndpoints {
                    shared: None,
                    auth: None,
                    settings,
                },
            });
        }
        let history = Arc::new(history::History::new(store.clone(), homeserver.clone()));
        let auth = Authenticator::new(
            &config.live.openid_url,
            homeserver,
            store,
            bot,
            config.homeserver.domain.clone(),
        )?;
        let channels: Vec<_> = config
            .channels
            .iter()
            .map(|c| json!({ "name": c.name, "room": c.room.to_string() }))
            .collect();
        let page_config = json!({
            "homeserver_url": config.live.homeserver_url.as_str().trim_end_matches('/'),
            "channels": channels,
            "protocol": protocol::VERSION,
        })
        .to_string();
        Ok(Self {
            endpoints: LiveEndpoints {
                shared: Some(Arc::new(Shared {
                    directory: Arc::new(session::Directory::default()),
                    connections: Arc::new(limits::Connections::new(config.live.limits.clone())),
                    trusted_proxies: config.live.trusted_proxies.clone(),
                    page_config,
                    tracker: TaskTracker::new(),
                    shutdown: CancellationToken::new(),
                    sessions: AtomicU64::new(0),
                    stream_ids: Arc::new(endpoint::StreamIds::new()),
                    history,
                })),
                auth: Some(Arc::new(auth)),
                settings,
            },
        })
    }

    /// What channels use to make their live endpoints.
    pub fn endpoints(&self) -> LiveEndpoints {
        self.endpoints.clone()
    }

    /// The page, its assets and the WebSocket under `/live/`; empty when disabled.
    pub fn router(&self) -> Router {
        let Some(shared) = &self.endpoints.shared else {
            return Router::new();
        };
        Router::new()
            .route("/live", get(|| async { Redirect::permanent("/live/") }))
            .route("/live/", get(assets::index))
            .route("/live/config.json", get(page_config))
            .route("/live/ws", get(upgrade))
            .route("/live/{file}", get(assets::file))
            .with_state(Arc::clone(shared))
    }

    /// Closes every live connection and waits for their tasks to end.
    pub async fn stop(self) {
        let Some(shared) = self.endpoints.shared else {
            return;
        };
        shared.shutdown.cancel();
        shared.tracker.close();
        shared.tracker.wait().await;
        info!("live sessions closed");
    }
}

impl LiveEndpoints {
    /// The live endpoint of `channel`, now that its room is ready; `None` when
    /// live talk is off. Logons for `channel` go to this endpoint from now on
    /// (one that a restart replaced is forgotten).
    pub fn endpoint(&self, channel: &str, room: OwnedRoomId) -> Option<Box<dyn Endpoint>> {
        let shared = self.shared.as_ref()?;
        let auth = Arc::clone(self.auth.as_ref()?);
        let (tx, inbox) = mpsc::channel(CHANNEL_INBOX);
        shared
            .directory
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(channel.to_owned(), tx);
        Some(Box::new(LiveEndpoint::new(
            EndpointId::new(format!("live.{channel}")),
            channel.to_owned(),
            room,
            auth,
            self.settings,
            inbox,
            Arc::clone(&shared.stream_ids),
        )))
    }
}

impl LiveEndpoints {
    /// Ends the live sessions of `user` on `channel` (every channel when `None`)
    /// at once: they are told `why` (as `code`), lose their talk and are
    /// disconnected. For a member who left, was kicked or banned, or opted out.
    pub async fn end_sessions_of(
        &self,
        channel: Option<&str>,
        user: &UserId,
        code: protocol::ErrorCode,
        why: &str,
    ) {
        let Some(shared) = &self.shared else {
            return;
        };
        let targets: Vec<mpsc::Sender<endpoint::ToChannel>> = {
            let directory = shared.directory.read().unwrap_or_else(|e| e.into_inner());
            directory
                .iter()
                .filter(|(name, _)| channel.is_none_or(|c| c == name.as_str()))
                .map(|(_, tx)| tx.clone())
                .collect()
        };
        for tx in targets {
            // A channel that stopped has no sessions left to end.
            let _ = tx
                .send(endpoint::ToChannel::EndSessionsOf {
                    user: user.to_owned(),
                    code,
                    why: why.to_owned(),
                })
                .await;
        }
    }
}

async fn page_config(State(shared): State<Arc<Shared>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        shared.page_config.clone(),
    )
        .into_response()
}

/// Refused connections are logged at most this often (with how many were not).
static REFUSAL_WARNINGS: limits::RateLimit = limits::RateLimit::new(1, Duration::from_secs(60));

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let address = client_address(peer.ip(), &headers, &shared.trusted_proxies);
    let permit = match shared.connections.admit(address) {
        Ok(permit) => permit,
        Err(refused) => return refuse_connection(refused),
    };
    let session_id = shared.sessions.fetch_add(1, Ordering::Relaxed) + 1;
    let span = tracing::info_span!(
        "live_session",
        session = session_id,
        channel = tracing::field::Empty,
        user = tracing::field::Empty,
    );
    let directory = Arc::clone(&shared.directory);
    let stream_ids = Arc::clone(&shared.stream_ids);
    let history = Arc::clone(&shared.history);
    let shutdown = shared.shutdown.clone();
    let tracker = shared.tracker.clone();
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| {
            let session =
                session::Session::new(socket, directory, stream_ids, history, span.clone(), permit);
            tracker.track_future(session.run(shutdown).instrument(span))
        })
}

/// The answer to a connection over a cap, closing it: a refused client must not
/// keep its descriptor by keeping the HTTP connection alive.
fn refuse_connection(refused: limits::Refused) -> Response {
    metrics::counter!("walkie_live_connections_refused_total", "reason" => refused.as_str())
        .increment(1);
    if let Some(suppressed) = REFUSAL_WARNINGS.allow(Instant::now()) {
        warn!(
            reason = refused.as_str(),
            suppressed, "live connection refused (see live.max_connections*)"
        );
    }
    let (status, text) = match refused {
        limits::Refused::Full => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the bridge has all the live connections it takes (live.max_connections); try again later",
        ),
        limits::Refused::PerAddress => (
            StatusCode::TOO_MANY_REQUESTS,
            "too many live connections from your address (live.max_connections_per_ip)",
        ),
    };
    (
        status,
        [(header::CONNECTION, "close"), (header::RETRY_AFTER, "30")],
        text,
    )
        .into_response()
}

/// The client's address: the peer's, or — when the peer is a trusted proxy —
/// the last one in `X-Forwarded-For`, which that proxy appended (earlier ones
/// are the client's word).
fn client_address(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpAddr]) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted_proxies.iter().any(|p| p.to_canonical() == peer) {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.rsplit(',').next())
        .and_then(|last| last.trim().parse::<IpAddr>().ok())
        .map_or(peer, |client| client.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trusted_proxy_names_the_client_and_no_one_else_does() {
        let proxy: IpAddr = [127, 0, 0, 1].into();
        let trusted = [proxy];
        let mut headers = HeaderMap::new();
        assert_eq!(client_address(proxy, &headers, &trusted), proxy);
        headers.append("x-forwarded-for", "10.9.9.9, 203.0.113.7".parse().unwrap());
        let client: IpAddr = [203, 0, 113, 7].into();
        assert_eq!(client_address(proxy, &headers, &trusted), client);
        let stranger: IpAddr = [198, 51, 100, 1].into();
        assert_eq!(client_address(stranger, &headers, &trusted), stranger);
        headers.append("x-forwarded-for", "not an address".parse().unwrap());
        assert_eq!(client_address(proxy, &headers, &trusted), proxy);
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        headers.remove("x-forwarded-for");
        assert_eq!(client_address(mapped, &headers, &trusted), proxy);
    }
}

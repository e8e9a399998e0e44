//! The application-service API the homeserver calls (DESIGN.md §4): transactions
//! of events, the ping, and the user and room-alias queries.
//!
//! # Exactly once
//!
//! A transaction is handled under one lock, so transactions never interleave and
//! the events of each reach the dispatcher in the order the homeserver sent them.
//! The order of work per transaction is:
//!
//! 1. already recorded as handled in the [`Store`] → `200 {}` at once, nothing
//!    dispatched (a retry, also one after a bridge restart);
//! 2. every event with a sound envelope, not sent by the bridge itself, is
//!    queued in the store's `inbound_events` — unless its event id is there
//!    already (a redelivery: skipped) — and then goes to the dispatcher, in order
//!    (`send().await`: a full queue holds the homeserver back, which is the
//!    backpressure we want); a malformed event is logged, counted and skipped;
//! 3. the transaction is recorded as handled, then `200 {}`.
//!
//! Each dispatched room event carries a [`Handled`] handle; its consumer marks it
//! done once it has acted (played the voice message, answered the command). At
//! start-up, before any transaction, the events queued but never marked done —
//! what a crash interrupted, whether before or after the acknowledgement — are
//! dispatched again, in their order. So an event is acted on once: a crash
//! after the acknowledgement loses nothing, a redelivery is not acted on again.
//! The window left is a crash after acting and before marking done; answers
//! then go out again with a Matrix transaction id derived from the event they
//! answer, so the homeserver drops the second one.
//!
//! A store failure answers `500 M_UNKNOWN`, so the homeserver retries later.
//!
//! # Authentication
//!
//! Every route except the fallback wants the registration's `hs_token`, as
//! `Authorization: Bearer …` or (legacy, still read) `?access_token=…`, compared
//! in constant time: none → `401 M_MISSING_TOKEN`, a wrong one →
//! `403 M_UNKNOWN_TOKEN`. Unknown paths answer `404 M_UNRECOGNIZED`, as the spec
//! asks so a homeserver can tell an old bridge from a broken one.

mod device_parts;
mod inbound;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use ruma::events::AnyTimelineEvent;
use ruma::serde::Raw;
use ruma::{OwnedUserId, UserId};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::config::{AppserviceConfig, Secret};
use crate::matrix::crypto::CryptoDevices;
use crate::ops::http_listener::{self, ListenerLimits};
use crate::store::Store;

use super::recent_events::RecentEvents;
use inbound::{check_ephemeral, check_timeline, TransactionBody};
pub use inbound::{EphemeralEvent, Handled, Inbound, RoomEvent};

/// Largest request body accepted. Synapse sends at most 100 events and 100
/// ephemeral events per transaction; 64 kB is the largest event it accepts.
pub const BODY_LIMIT: usize = 10 * 1024 * 1024;

/// How many dispatched event ids are remembered to drop repeats.
const RECENT_EVENTS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AppserviceError {
    #[error(
        "appservice.hs_token is empty: the homeserver could not be told apart from anyone else"
    )]
    EmptyHsToken,
    #[error("the bot user ID {id} is not a valid Matrix user ID: {source}")]
    BotUserId {
        id: String,
        #[source]
        source: ruma::IdParseError,
    },
    #[error("the appservice server stopped with an error: {0}")]
    Serve(#[source] std::io::Error),
}

/// Who is the bridge itself: its bot and its puppets.
#[derive(Clone, Debug)]
pub struct BridgeUsers {
    bot: OwnedUserId,
    puppet_prefix: String,
    domain: String,
}

impl BridgeUsers {
    pub fn new(appservice: &AppserviceConfig, domain: &str) -> Result<Self, AppserviceError> {
        let id = appservice.bot_user_id(domain);
        let bot = UserId::parse(&id).map_err(|source| AppserviceError::BotUserId { id, source })?;
        Ok(Self {
            bot,
            puppet_prefix: appservice.puppet_prefix.clone(),
            domain: domain.to_owned(),
        })
    }

    pub fn bot(&self) -> &UserId {
        &self.bot
    }

    pub fn is_bot(&self, user: &UserId) -> bool {
        user == self.bot
    }

    /// In the puppet namespace (whether or not such a puppet exists).
    pub fn is_puppet(&self, user: &UserId) -> bool {
        !self.is_bot(user)
            && user.server_name().as_str() == self.domain
            && user.localpart().starts_with(&self.puppet_prefix)
    }

    pub fn is_bridge_user(&self, user: &UserId) -> bool {
        self.is_bot(user) || self.is_puppet(user)
    }
}

/// Counters of what the server did, readable while it runs (the same figures go
/// to the `walkie_appservice_*` metrics).
#[derive(Clone, Debug, Default)]
pub struct AppserviceStats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    transactions: AtomicU64,
    repeated_transactions: AtomicU64,
    events: AtomicU64,
    bad_events: AtomicU64,
    duplicate_events: AtomicU64,
    device_parts: device_parts::BadInput,
}

impl AppserviceStats {
    /// Transactions handled and recorded.
    pub fn transactions(&self) -> u64 {
        self.0.transactions.load(Ordering::Relaxed)
    }

    /// Deliveries of a transaction already handled, answered without dispatching.
    pub fn repeated_transactions(&self) -> u64 {
        self.0.repeated_transactions.load(Ordering::Relaxed)
    }

    /// Events (timeline and ephemeral) passed to the dispatcher.
    pub fn events(&self) -> u64 {
        self.0.events.load(Ordering::Relaxed)
    }

    /// Events skipped because they were malformed.
    pub fn bad_events(&self) -> u64 {
        self.0.bad_events.load(Ordering::Relaxed)
    }

    /// Events skipped because they were dispatched before.
    pub fn duplicate_events(&self) -> u64 {
        self.0.duplicate_events.load(Ordering::Relaxed)
    }

    /// Malformed pieces of the devices' parts (to-device messages, key counts,
    /// device lists) dropped.
    pub fn bad_device_parts(&self) -> u64 {
        self.0.device_parts.count()
    }

    fn count(counter: &AtomicU64, metric: &'static str) {
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(metric).increment(1);
    }
}

/// The appservice HTTP server. Build it with [`AppserviceServer::new`], run it with
/// [`AppserviceServer::serve`] (or mount [`AppserviceServer::router`] into a
/// larger router).
#[derive(Debug)]
pub struct AppserviceServer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    hs_token: Secret,
    users: BridgeUsers,
    store: Store,
    dispatcher: mpsc::Sender<Inbound>,
    /// Held for the whole of a transaction: transactions run one at a time.
    serial: Arc<Mutex<RecentEvents>>,
    stats: AppserviceStats,
    /// Cancelled when serving stops: a transaction waiting on a full dispatcher
    /// gives up (unrecorded, so the homeserver retries) instead of holding up the
    /// shutdown.
    stop: CancellationToken,
    /// The devices the transactions' to-device messages and key counts are for;
    /// unset, those parts are ignored.
    crypto: OnceLock<CryptoDevices>,
}

impl AppserviceServer {
    /// `domain` is the homeserver's server name; `dispatcher` receives every
    /// event, in order.
    pub fn new(
        appservice: &AppserviceConfig,
        domain: &str,
        store: Store,
        dispatcher: mpsc::Sender<Inbound>,
    ) -> Result<Self, AppserviceError> {
        if appservice.hs_token.is_empty() {
            return Err(AppserviceError::EmptyHsToken);
        }
        Ok(Self {
            shared: Arc::new(Shared {
                hs_token: appservice.hs_token.clone(),
                users: BridgeUsers::new(appservice, domain)?,
                store,
                dispatcher,
                serial: Arc::new(Mutex::new(RecentEvents::new(RECENT_EVENTS))),
                stats: AppserviceStats::default(),
                stop: CancellationToken::new(),
                crypto: OnceLock::new(),
            }),
        })
    }

    pub fn stats(&self) -> AppserviceStats {
        self.shared.stats.clone()
    }

    /// Routes the transactions' to-device messages, device-list changes and key
    /// counts (MSC2409, MSC3202) to `devices`. Set once, before serving.
    pub fn with_crypto(self, devices: CryptoDevices) -> Self {
        if self.shared.crypto.set(devices).is_err() {
            warn!("the appservice already has its crypto devices; the second set is ignored");
        }
        self
    }

    pub fn users(&self) -> &BridgeUsers {
        &self.shared.users
    }

    /// The routes, to serve on their own ([`Self::serve`]) or beside others on the
    /// same listener.
    pub fn router(&self) -> Router {
        let shared = Arc::clone(&self.shared);
        Router::new()
            .route(
                "/_matrix/app/v1/transactions/{txn_id}",
                put(put_transaction),
            )
            .route("/_matrix/app/v1/ping", post(ping))
            .route("/_matrix/app/v1/users/{user_id}", get(query_user))
            .route("/_matrix/app/v1/rooms/{alias}", get(query_room_alias))
            .route_layer(middleware::from_fn_with_state(
                Arc::clone(&shared),
                authenticate,
            ))
            .fallback(unrecognized)
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(shared)
    }

    /// Serves on `listener` until `shutdown` is cancelled, then lets requests in
    /// flight finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), AppserviceError> {
        self.serve_with(listener, Router::new(), ListenerLimits::default(), shutdown)
            .await
    }

    /// Like [`Self::serve`], with `extra` routes on the same listener (the
    /// live-talk page and WebSocket) and the listener's `limits` (`[http]`).
    pub async fn serve_with(
        self,
        listener: TcpListener,
        extra: Router,
        limits: ListenerLimits,
        shutdown: CancellationToken,
    ) -> Result<(), AppserviceError> {
        // Taken here, before the first transaction can be: the events a crash
        // left unhandled go first.
        if let Ok(serial) = Arc::clone(&self.shared.serial).try_lock_owned() {
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move { shared.replay_pending(serial).await });
        }
        let address: Option<SocketAddr> = listener.local_addr().ok();
        let stop = self.shared.stop.clone();
        let router = self.router().merge(extra);
        info!(address = ?address, "appservice API listening");
        // Header deadline, connection caps, TCP_NODELAY and the peer's address
        // (the live WebSocket limits connections per address).
        let result = http_listener::serve(listener, router, limits, async move {
            shutdown.cancelled().await;
            stop.cancel();
        })
        .await;
        info!("appservice API stopped");
        result.map_err(AppserviceError::Serve)
    }
}

fn matrix_error(status: StatusCode, errcode: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "errcode": errcode, "error": message })),
    )
        .into_response()
}

fn empty_ok() -> Response {
    (StatusCode::OK, Json(json!({}))).into_response()
}

fn store_failed() -> Response {
    matrix_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "M_UNKNOWN",
        "the bridge's database failed; try again later",
    )
}

fn shutting_down() -> Response {
    matrix_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "M_UNKNOWN",
        "the bridge is shutting down; try again later",
    )
}

/// The token the request presents: the `Authorization: Bearer` header, else the
/// legacy `access_token` query parameter. An empty token counts as none.
fn presented_token(request: &Request) -> Option<String> {
    let from_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
    let from_query = || {
        request.uri().query().and_then(|query| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(key, _)| key == "access_token")
                .map(|(_, value)| value.into_owned())
        })
    };
    from_header
        .or_else(from_query)
        .filter(|token| !token.is_empty())
}

async fn authenticate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    match presented_token(&request) {
        None => {
            debug!(path = %request.uri().path(), "request without a token refused");
            matrix_error(
                StatusCode::UNAUTHORIZED,
                "M_MISSING_TOKEN",
                "no access token given",
            )
        }
        Some(token) if shared.hs_token.matches(&token) => next.run(request).await,
        Some(_) => {
            warn!(path = %request.uri().path(), "request with a wrong hs_token refused");
            matrix_error(
                StatusCode::FORBIDDEN,
                "M_UNKNOWN_TOKEN",
                "the access token is not this bridge's hs_token",
            )
        }
    }
}

async fn unrecognized() -> Response {
    matrix_error(
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
        "unrecognized request",
    )
}

/// The homeserver's half of `POST /_matrix/client/v1/appservice/{id}/ping`.
async fn ping(body: Bytes) -> Response {
    // Synapse sends `{"transaction_id": null}` when the client gave none.
    let transaction_id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("transaction_id")?.as_str().map(str::to_owned));
    debug!(?transaction_id, "pinged by the homeserver");
    empty_ok()
}

/// Whether a user in our namespace exists. The bot always does; a puppet does
/// once the bridge registered it. Anything else is unknown: the bridge does not
/// create users on demand, and a `200` obliges the bridge to have created it.
async fn query_user(State(shared): State<Arc<Shared>>, Path(user_id): Path<String>) -> Response {
    let not_found = || matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such user");
    let Ok(user) = crate::matrix::ids::parse_user_id(&user_id) else {
        return not_found();
    };
    if shared.users.is_bot(&user) {
        return empty_ok();
    }
    if !shared.users.is_puppet(&user) {
        return not_found();
    }
    match shared.store.puppet(user.as_str()).await {
        Ok(Some(puppet)) if puppet.profile.registered => empty_ok(),
        Ok(_) => not_found(),
        Err(e) => {
            error!(user = %user, error = %e, "cannot look up a puppet for the homeserver");
            store_failed()
        }
    }
}

/// The bridge claims no room aliases.
async fn query_room_alias() -> Response {
    matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such room alias")
}

async fn put_transaction(
    State(shared): State<Arc<Shared>>,
    Path(txn_id): Path<String>,
    body: Bytes,
) -> Response {
    let span = info_span!("appservice_transaction", txn_id = %txn_id);
    shared.transaction(txn_id, body).instrument(span).await
}

impl Shared {
    async fn transaction(&self, txn_id: String, body: Bytes) -> Response {
        let mut recent = tokio::select! {
            biased;
            () = self.stop.cancelled() => return shutting_down(),
            recent = self.serial.lock() => recent,
        };
        match self.store.txn_handled(&txn_id).await {
            Ok(true) => {
                debug!("transaction handled before; answered without dispatching");
                AppserviceStats::count(
                    &self.stats.0.repeated_transactions,
                    "walkie_appservice_repeated_transactions_total",
                );
                return empty_ok();
            }
            Ok(false) => {}
            Err(e) => {
                error!(error = %e, "cannot look up the transaction; the homeserver will retry");
                return store_failed();
            }
        }
        let body: TransactionBody = match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(e) => {
                warn!(error = %e, "transaction body is not a transaction");
                let errcode = if e.is_data() {
                    "M_BAD_JSON"
                } else {
                    "M_NOT_JSON"
                };
                return matrix_error(StatusCode::BAD_REQUEST, errcode, &e.to_string());
            }
        };
        let (events, ephemeral, devices) = body.into_parts();
        debug!(
            events = events.len(),
            ephemeral = ephemeral.len(),
            "transaction received"
        );

        // The devices' parts go first: a room key this transaction brings must be
        // in place before the encrypted event it opens is handled.
        if let Some(crypto) = self.crypto.get() {
            if !devices.is_empty() {
                let updates = devices.read(&self.stats.0.device_parts);
                if !updates.is_empty() {
                    let report = crypto.receive(updates).await;
                    debug!(?report, "device parts handed to the crypto devices");
                }
            }
        }

        for (index, raw) in events.into_iter().enumerate() {
            let mut event = match check_timeline(&txn_id, raw, |u| self.users.is_bridge_user(u)) {
                Ok(event) => event,
                Err(e) => {
                    warn!(index, error = %e, "skipping a malformed event");
                    AppserviceStats::count(
                        &self.stats.0.bad_events,
                        "walkie_appservice_bad_events_total",
                    );
                    continue;
                }
            };
            if recent.contains(&event.event_id) {
                debug!(event_id = %event.event_id, "skipping an event dispatched before");
                AppserviceStats::count(
                    &self.stats.0.duplicate_events,
                    "walkie_appservice_duplicate_events_total",
                );
                continue;
            }
            let event_id = event.event_id.clone();
            if !event.from_bridge {
                match self
                    .store
                    .queue_inbound(
                        event_id.as_str(),
                        event.room_id.as_str(),
                        event.event.json().get(),
                    )
                    .await
                {
                    Ok(true) => {
                        event.handled = Handled::stored(self.store.clone(), event_id.clone())
                    }
                    Ok(false) => {
                        debug!(%event_id, "skipping an event taken before");
                        AppserviceStats::count(
                            &self.stats.0.duplicate_events,
                            "walkie_appservice_duplicate_events_total",
                        );
                        recent.insert(&event_id);
                        continue;
                    }
                    Err(e) => {
                        error!(error = %e, "cannot queue an event; the homeserver will retry");
                        return store_failed();
                    }
                }
            }
            if let Err(response) = self.dispatch(Inbound::RoomEvent(event)).await {
                return response;
            }
            recent.insert(&event_id);
        }
        // Typing notices and receipts carry no id and describe a current state, so
        // a repeat after a retry does no harm and is not filtered.
        for (index, raw) in ephemeral.into_iter().enumerate() {
            match check_ephemeral(&txn_id, raw) {
                Ok(Some(event)) => {
                    if let Err(response) = self.dispatch(Inbound::Ephemeral(event)).await {
                        return response;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(index, error = %e, "skipping a malformed ephemeral event");
                    AppserviceStats::count(
                        &self.stats.0.bad_events,
                        "walkie_appservice_bad_events_total",
                    );
                }
            }
        }

        match self.store.mark_txn_handled(&txn_id).await {
            Ok(_) => {
                AppserviceStats::count(
                    &self.stats.0.transactions,
                    "walkie_appservice_transactions_total",
                );
                empty_ok()
            }
            Err(e) => {
                // Its events were dispatched; the retry finds them in `recent`.
                error!(error = %e, "cannot record the transaction; the homeserver will retry");
                store_failed()
            }
        }
    }

    /// Dispatches the events taken but not handled before the last stop, in
    /// their order, holding `recent` (the transaction lock) so that no
    /// transaction overtakes them.
    async fn replay_pending(&self, mut recent: OwnedMutexGuard<RecentEvents>) {
        let pending = match self.store.pending_inbound().await {
            Ok(pending) => pending,
            Err(error) => {
                error!(%error, "cannot read the events left unhandled at the last stop");
                return;
            }
        };
        if pending.is_empty() {
            return;
        }
        info!(
            events = pending.len(),
            "handling the events left unhandled at the last stop"
        );
        for left in pending {
            let event = serde_json::from_str::<Raw<AnyTimelineEvent>>(&left.event)
                .and_then(|raw| check_timeline("replay", raw, |u| self.users.is_bridge_user(u)));
            let mut event = match event {
                Ok(event) => event,
                Err(error) => {
                    warn!(event_id = %left.event_id, %error, "a stored event is unreadable; dropped");
                    continue;
                }
            };
            event.handled = Handled::stored(self.store.clone(), event.event_id.clone());
            recent.insert(&event.event_id);
            if self.dispatch(Inbound::RoomEvent(event)).await.is_err() {
                return;
            }
        }
    }

    async fn dispatch(&self, item: Inbound) -> Result<(), Response> {
        let sent = tokio::select! {
            biased;
            () = self.stop.cancelled() => false,
            sent = self.dispatcher.send(item) => sent.is_ok(),
        };
        if sent {
            AppserviceStats::count(&self.stats.0.events, "walkie_appservice_events_total");
            Ok(())
        } else {
            warn!("the bridge stopped taking events; the homeserver will retry the transaction");
            Err(shutting_down())
        }
    }
}

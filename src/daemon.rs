//! The running bridge: store (and the archive spool recovered, before anything
//! can record), homeserver client, appservice server, one hub per channel with
//! its Matrix room endpoint, the archive outbox and the database pruning —
//! started in order, stopped in reverse order.
//!
//! Shutdown order matters: the hubs stop first, so every endpoint hears the floor
//! released (a keyed radio unkeys, a recording is finished and queued); then the
//! endpoints and room workers (the floor state is written idle); then the outbox,
//! which finishes the request in flight; the appservice server goes last so the
//! homeserver's retries do not pile up while the rest winds down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ruma::events::room::encryption::RoomEncryptionEventContent;
use ruma::events::room::member::RoomMemberEventContent;
use ruma::events::room::power_levels::RoomPowerLevelsEventContent;
use ruma::events::room::tombstone::RoomTombstoneEventContent;
use ruma::events::TimelineEventType;
use ruma::{OwnedRoomId, OwnedUserId, UserId};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use walkie_endpoint::Endpoint;

use crate::archive::{recover_spool, Outbox};
use crate::config::Config;
use crate::live::Live;
use crate::matrix::appservice::RoomEvent;
use crate::matrix::crypto::{CryptoDevices, DeviceOptions};
use crate::matrix::encrypted_in::{self, EncryptedIn, KeyWaitLimits};
use crate::matrix::room_endpoint::RoomInbound;
use crate::matrix::{AppserviceServer, Inbound};
use crate::matrix::{Homeserver, Puppets, RoomSender};
use crate::mumble_identity;
use crate::ops;
use crate::ops::channels::{build_endpoints, ChannelDeps, Channels};
use crate::ops::http_listener::ListenerLimits;
use crate::ops::notify::Notifier;
use crate::ops::status::{Phase, StatusServer};
use crate::store::{prune_periodically, Retention, Store};

/// Appservice events waiting for the router.
const DISPATCH_QUEUE: usize = 256;
/// How long a reload may keep the watchdog fed: one still running after this is
/// hung, and systemd's watchdog should catch it.
const RELOAD_WATCHDOG_LIMIT: Duration = Duration::from_secs(120);
/// How long start-up waits between attempts while the homeserver is unreachable.
const HOMESERVER_RETRY_CAP: Duration = Duration::from_secs(30);
/// How often the systemd STATUS line is brought up to date (sent only on change).
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// The daemon before it runs. Tests add endpoints of their own to a channel;
/// `walkie-bridge run` adds none.
pub struct Daemon {
    config: Config,
    extra_endpoints: Vec<(String, Box<dyn Endpoint>)>,
    reload: Option<mpsc::Receiver<Config>>,
    notifier: Option<Notifier>,
    retention: Retention,
}

impl Daemon {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            extra_endpoints: Vec::new(),
            reload: None,
            notifier: None,
            retention: Retention::default(),
        }
    }

    /// Attaches `endpoint` to the channel named `channel`, beside the configured ones.
    pub fn with_endpoint(
        mut self,
        channel: impl Into<String>,
        endpoint: Box<dyn Endpoint>,
    ) -> Self {
        self.extra_endpoints.push((channel.into(), endpoint));
        self
    }

    /// Each configuration received here (already validated: SIGHUP in `main`)
    /// is applied to the running channels; see [`Channels::reload`].
    pub fn with_reload(mut self, reload: mpsc::Receiver<Config>) -> Self {
        self.reload = Some(reload);
        self
    }

    /// Talks to systemd (READY, STATUS, WATCHDOG). Without it nothing is sent.
    pub fn with_notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// How long the database keeps what only grows, and how often it is pruned
    /// (default: [`Retention::default`], documented in the README).
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        run_daemon(self, shutdown).await
    }
}

/// Runs the bridge until `shutdown` is cancelled or a fatal error occurs.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Daemon::new(config).run(shutdown).await
}

async fn run_daemon(daemon: Daemon, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Daemon {
        config,
        extra_endpoints,
        mut reload,
        notifier,
        retention,
    } = daemon;
    let notifier = notifier.unwrap_or_else(Notifier::disabled);
    // Before any hub or endpoint resolves a counter: handles taken earlier record
    // into nothing.
    let metrics_handle = ops::metrics::install();

    let store = Store::connect(&config.database.url)
        .await
        .context("cannot open the database")?;
    // Before any endpoint can start a recording: recovery takes every `.part` it
    // finds for the leftover of a crash, so it must run while none is being
    // written (a recorder also locks its file, which recovery respects).
    if let Err(error) = recover_spool(&config.archive.spool_dir, &store).await {
        error!(%error, "cannot recover the archive spool");
    }
    let homeserver = Homeserver::new(
        config.homeserver.url.clone(),
        config.appservice.as_token.clone(),
    )?;
    let bot: OwnedUserId = UserId::parse(config.appservice.bot_user_id(&config.homeserver.domain))
        .context("appservice.bot_localpart and homeserver.domain make no valid user ID")?;
    let identities =
        mumble_identity::load_or_make(&store, mumble_identity::wanted(&config, &config.channels))
            .await?;
    let configured = build_endpoints(&config, &config.channels, &homeserver, &bot, &identities)?;

    // /health answers from the start, so a monitor sees "waiting for the homeserver"
    // rather than a refused connection.
    let (phase_tx, phase_rx) = watch::channel(Phase::Starting);
    let (observers_tx, observers_rx) = watch::channel(Arc::new(Vec::new()));
    let status = StatusTask::start(&config, metrics_handle, observers_rx, phase_rx, &store).await;
    let (front, live, mut dispatch_rx) =
        FrontDoor::open(&config, &homeserver, &store, &bot).await?;

    phase_tx.send_replace(Phase::WaitingForHomeserver);
    if !wait_for_homeserver(&homeserver, &bot, &shutdown, &notifier).await {
        live.stop().await;
        front.stop(None).await;
        status.stop().await;
        return Ok(());
    }
    phase_tx.send_replace(Phase::Starting);
    match homeserver.ping(&config.appservice.id).await {
        Ok(rtt) => info!(?rtt, "the homeserver reaches the appservice"),
        Err(error) => {
            warn!(%error, "the homeserver could not ping the appservice; check appservice.url in the registration")
        }
    }

    let (mut channels, outbox) = start_channels(
        &config,
        &front,
        &live,
        &store,
        &homeserver,
        &bot,
        configured,
        extra_endpoints,
        observers_tx,
    )
    .await?;
    // Encrypted rooms made the bot's device ready above; plain ones may turn
    // encryption on later and must find it published.
    let publish_task = tokio::spawn(
        front
            .crypto
            .clone()
            .publish(bot.clone(), front.token.clone()),
    );
    let mut background = Background::start(&store, retention, outbox, &front.crypto);

    let summary = ops::summary(&channels.observers());
    notifier.ready(&summary);
    phase_tx.send_replace(Phase::Running);
    info!(channels = channels.len(), %summary, "walkie-bridge ready");

    let mut routing = Routing {
        channels: &mut channels,
        config: &config,
        notifier: &notifier,
        phase: &phase_tx,
        encrypted_in: &background.encrypted_in,
    };
    routing
        .until_shutdown(&shutdown, &mut dispatch_rx, &mut reload, summary)
        .await;

    info!("shutting down");
    notifier.stopping();
    phase_tx.send_replace(Phase::Stopping);
    background.stop_decrypting().await;
    channels.stop_all().await;
    live.stop().await;
    background.stop().await;
    front.stop(Some(publish_task)).await;
    status.stop().await;
    store.close().await;
    info!("stopped");
    Ok(())
}

/// The /status, /health and /metrics server, when `status.listen` is set.
struct StatusTask {
    token: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl StatusTask {
    async fn start(
        config: &Config,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
        observers: watch::Receiver<Arc<Vec<crate::hub::HubObserver>>>,
        phase: watch::Receiver<Phase>,
        store: &Store,
    ) -> StatusTask {
        let token = CancellationToken::new();
        let task = match config.status.listen {
            Some(addr) => {
                match StatusServer::bind(addr, metrics, observers, phase, store.clone()).await {
                    Ok(server) => Some(tokio::spawn(server.serve(token.clone()))),
                    Err(error) => {
                        // Metrics are worth an alarm, not an outage: the bridge still bridges.
                        error!(%error, "status, health and metrics are not served");
                        None
                    }
                }
            }
            None => None,
        };
        StatusTask { token, task }
    }

    async fn stop(self) {
        self.token.cancel();
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}

/// What the homeserver and browsers talk to: the appservice listener (with the
/// live page's routes, whose sessions [`Live`] keeps), the devices of the bot
/// and the puppets behind it.
struct FrontDoor {
    token: CancellationToken,
    server_task: tokio::task::JoinHandle<Result<(), crate::matrix::AppserviceError>>,
    crypto: CryptoDevices,
    crypto_task: tokio::task::JoinHandle<()>,
}

impl FrontDoor {
    async fn open(
        config: &Config,
        homeserver: &Homeserver,
        store: &Store,
        bot: &OwnedUserId,
    ) -> anyhow::Result<(FrontDoor, Live, mpsc::Receiver<Inbound>)> {
        // The server first: the homeserver may push transactions as soon as we join rooms.
        let listener = tokio::net::TcpListener::bind(config.appservice.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (appservice.listen)",
                    config.appservice.listen
                )
            })?;
        info!(listen = %config.appservice.listen, "appservice API listening");
        let (dispatch_tx, dispatch_rx) = mpsc::channel::<Inbound>(DISPATCH_QUEUE);
        let server = AppserviceServer::new(
            &config.appservice,
            &config.homeserver.domain,
            store.clone(),
            dispatch_tx,
        )?;
        // The devices of the bot and the puppets (issue 15). None is opened here: a
        // device opens when a transaction brings it something or a room needs it.
        let crypto = CryptoDevices::new(
            homeserver.clone(),
            server.users().clone(),
            DeviceOptions::new(
                config.encryption.store_dir.clone(),
                config.encryption.passphrase.clone(),
            ),
        );
        let server = server.with_crypto(crypto.clone());
        let token = CancellationToken::new();
        let crypto_task = tokio::spawn(crypto.clone().run_idle_closer(token.clone()));
        let live = Live::new(config, homeserver.clone(), store.clone(), bot.clone())?;
        let limits = ListenerLimits::new(&config.http)
            .with_homeserver_url(&config.homeserver.url)
            .await;
        let server_task =
            tokio::spawn(server.serve_with(listener, live.router(), limits, token.clone()));
        let front = FrontDoor {
            token,
            server_task,
            crypto,
            crypto_task,
        };
        Ok((front, live, dispatch_rx))
    }

    /// Last in the shutdown: the homeserver's retries do not pile up while the
    /// rest winds down. The live sessions are stopped before, with the channels.
    async fn stop(self, publish_task: Option<tokio::task::JoinHandle<()>>) {
        self.token.cancel();
        let _ = self.crypto_task.await;
        if let Some(task) = publish_task {
            let _ = task.await;
        }
        match self.server_task.await {
            Ok(Err(error)) => warn!(%error, "appservice server stopped with an error"),
            Err(error) => warn!(%error, "appservice server task failed"),
            Ok(Ok(())) => {}
        }
        // After the server: no transaction hands the devices anything any more.
        self.crypto.shutdown().await;
    }
}

/// The channels, each with its configured endpoints and any a test added, and
/// the outbox their recordings go to.
#[allow(clippy::too_many_arguments)]
async fn start_channels(
    config: &Config,
    front: &FrontDoor,
    live: &Live,
    store: &Store,
    homeserver: &Homeserver,
    bot: &OwnedUserId,
    mut configured: HashMap<String, crate::ops::channels::BuiltChannel>,
    extra_endpoints: Vec<(String, Box<dyn Endpoint>)>,
    observers: watch::Sender<Arc<Vec<crate::hub::HubObserver>>>,
) -> anyhow::Result<(Channels, Outbox)> {
    let puppets = Puppets::new(
        homeserver.clone(),
        store.clone(),
        config.appservice.puppet_prefix.clone(),
        config.homeserver.domain.clone(),
        bot.clone(),
    );
    // Every message the bridge posts goes through this: encrypted where the room is.
    let rooms = RoomSender::new(homeserver.clone(), front.crypto.clone());
    let outbox = Outbox::new(store.clone(), homeserver.clone())
        .with_puppets(puppets.clone())
        .with_room_sender(rooms.clone());
    let mut channels = Channels::new(
        ChannelDeps {
            homeserver: homeserver.clone(),
            store: store.clone(),
            bot: bot.clone(),
            puppets,
            rooms,
            outbox_wake: outbox.waker(),
            live: live.endpoints(),
            crypto: front.crypto.clone(),
        },
        observers,
    );
    let mut extra: HashMap<String, Vec<Box<dyn Endpoint>>> = HashMap::new();
    for (channel, endpoint) in extra_endpoints {
        extra.entry(channel).or_default().push(endpoint);
    }
    for channel in &config.channels {
        let Some(mut built) = configured.remove(&channel.name) else {
            continue;
        };
        built
            .endpoints
            .extend(extra.remove(&channel.name).unwrap_or_default());
        channels.start(config, channel, built).await?;
    }
    // Endpoints of channels that are not bridged are dropped here, so whoever
    // waits for them to start learns that they never will.
    for channel in extra.into_keys() {
        warn!(%channel, "an extra endpoint names a channel that is not bridged");
    }
    Ok((channels, outbox))
}

/// The tasks behind the channels: database pruning, the archive outbox, and the
/// decryption of encrypted room events.
struct Background {
    prune_token: CancellationToken,
    prune_task: tokio::task::JoinHandle<()>,
    outbox_token: CancellationToken,
    outbox_task: tokio::task::JoinHandle<()>,
    decrypt_token: CancellationToken,
    decrypt_task: Option<tokio::task::JoinHandle<()>>,
    encrypted_in: EncryptedIn,
}

impl Background {
    fn start(store: &Store, retention: Retention, outbox: Outbox, crypto: &CryptoDevices) -> Self {
        // Only after recovery (before the channels), which tells posted recordings
        // from unposted ones by their outbox rows. (A homeserver whose database was
        // reset reuses transaction numbers the bridge still remembers: see the
        // README's troubleshooting.)
        let prune_token = CancellationToken::new();
        let prune_task = tokio::spawn(prune_periodically(
            store.clone(),
            retention,
            prune_token.clone(),
        ));
        let outbox_token = CancellationToken::new();
        let outbox_task = tokio::spawn(outbox.run(outbox_token.clone()));
        // Encrypted room events: decrypted with the bot's device, or held until
        // their key comes. Stopped before the channels: what still waits is
        // replayed at the next start.
        let decrypt_token = CancellationToken::new();
        let (encrypted_in, decrypt_task) = EncryptedIn::spawn(
            crypto.clone(),
            KeyWaitLimits::default(),
            decrypt_token.clone(),
        );
        Background {
            prune_token,
            prune_task,
            outbox_token,
            outbox_task,
            decrypt_token,
            decrypt_task: Some(decrypt_task),
            encrypted_in,
        }
    }

    /// First in the shutdown, before the channels stop.
    async fn stop_decrypting(&mut self) {
        self.decrypt_token.cancel();
        if let Some(task) = self.decrypt_task.take() {
            let _ = task.await;
        }
    }

    /// After the channels: the outbox finishes the request in flight.
    async fn stop(self) {
        self.outbox_token.cancel();
        let _ = self.outbox_task.await;
        self.prune_token.cancel();
        let _ = self.prune_task.await;
    }
}

/// The main loop: the homeserver's events to their rooms, reloads, the
/// watchdog and the systemd status line, until shutdown.
struct Routing<'a> {
    channels: &'a mut Channels,
    config: &'a Config,
    notifier: &'a Notifier,
    phase: &'a watch::Sender<Phase>,
    encrypted_in: &'a EncryptedIn,
}

impl Routing<'_> {
    async fn until_shutdown(
        &mut self,
        shutdown: &CancellationToken,
        dispatch: &mut mpsc::Receiver<Inbound>,
        reload: &mut Option<mpsc::Receiver<Config>>,
        mut summary: String,
    ) {
        // Watchdog pings come from this loop, so a router stuck on a full room
        // inbox stops them too. Without a watchdog the timer just never fires.
        let mut watchdog = self.notifier.watchdog_interval().map(tokio::time::interval);
        let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
        let mut current = self.config.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tick(&mut watchdog) => self.notifier.watchdog(),
                inbound = dispatch.recv() => match inbound {
                    Some(inbound) => route(inbound, self.channels.rooms(), self.encrypted_in).await,
                    None => break,
                },
                Some(new) = recv(reload) => {
                    self.notifier.reloading();
                    self.phase.send_replace(Phase::Reloading);
                    let reloading = apply_reload(self.channels, self.config, &current, &new);
                    feeding_watchdog(reloading, &mut watchdog, self.notifier).await;
                    current = new;
                    self.phase.send_replace(Phase::Running);
                    summary = ops::summary(&self.channels.observers());
                    self.notifier.ready(&summary);
                }
                _ = status_tick.tick() => {
                    let now = ops::summary(&self.channels.observers());
                    if now != summary {
                        self.notifier.status(&now);
                        summary = now;
                    }
                }
            }
        }
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn recv(reload: &mut Option<mpsc::Receiver<Config>>) -> Option<Config> {
    match reload {
        Some(rx) => match rx.recv().await {
            Some(config) => Some(config),
            // No more reloads will come; stop polling this arm.
            None => {
                *reload = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// Runs `work` (a reload) while still sending WATCHDOG=1: stopping a channel
/// waits for its endpoints and starting one for the homeserver, which can take
/// longer than the watchdog interval without anything being stuck. The pings
/// stop after [`RELOAD_WATCHDOG_LIMIT`], so a reload that really hangs is still
/// caught by systemd. Homeserver events wait in the dispatch queue meanwhile.
async fn feeding_watchdog<T>(
    work: impl std::future::Future<Output = T>,
    watchdog: &mut Option<tokio::time::Interval>,
    notifier: &Notifier,
) -> T {
    tokio::pin!(work);
    let limit = tokio::time::sleep(RELOAD_WATCHDOG_LIMIT);
    tokio::pin!(limit);
    let mut feeding = true;
    loop {
        tokio::select! {
            biased;
            out = &mut work => return out,
            () = &mut limit, if feeding => {
                feeding = false;
                error!(limit = ?RELOAD_WATCHDOG_LIMIT, "the reload is still running; the watchdog is no longer fed");
            }
            _ = tick(watchdog), if feeding => notifier.watchdog(),
        }
    }
}

/// A reload that cannot be applied leaves the running channels as they were.
async fn apply_reload(channels: &mut Channels, started: &Config, current: &Config, new: &Config) {
    if current.logging != new.logging {
        // main applies logging.level itself before handing the config over.
        info!(level = %new.logging.level, "logging.level reloaded");
    }
    match channels.reload(started, new).await {
        Ok(report) => {
            for section in &report.need_restart {
                warn!(section, "[{section}] changed: restart walkie-bridge to apply it; the running values stay in use");
            }
            info!(
                started = ?report.started,
                restarted = ?report.restarted,
                stopped = ?report.stopped,
                unchanged = ?report.unchanged,
                "configuration reloaded"
            );
        }
        Err(error) => error!(%error, "reload not applied; the running configuration stays"),
    }
}

/// Start-up waits here until the homeserver accepts our `as_token`, so a bridge
/// started before its homeserver comes up does not fail. `false` on shutdown.
async fn wait_for_homeserver(
    homeserver: &Homeserver,
    bot: &UserId,
    shutdown: &CancellationToken,
    notifier: &Notifier,
) -> bool {
    let mut pause = Duration::from_millis(500);
    loop {
        match homeserver.whoami(Some(bot)).await {
            Ok(user) => {
                info!(%user, homeserver = %homeserver.base_url(), "homeserver accepts the appservice");
                return true;
            }
            Err(error) if error.is_transient() => {
                warn!(%error, retry_in = ?pause, "homeserver not reachable yet");
                // Waiting for a homeserver that boots after us is progress, not a
                // hung start: keep systemd's start timeout from killing us.
                notifier.extend_timeout(
                    pause + HOMESERVER_RETRY_CAP,
                    &format!("waiting for the homeserver at {}", homeserver.base_url()),
                );
            }
            Err(error) => {
                // A wrong as_token or a registration the homeserver has not loaded:
                // retrying slowly lets an operator fix it without a restart loop.
                error!(%error, retry_in = ?HOMESERVER_RETRY_CAP, "the homeserver refuses the appservice; is the registration loaded and the as_token right?");
                pause = HOMESERVER_RETRY_CAP;
                notifier.extend_timeout(
                    pause * 2,
                    "the homeserver refuses the appservice: is the registration loaded?",
                );
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(HOMESERVER_RETRY_CAP);
    }
}

async fn route(
    inbound: Inbound,
    rooms: &HashMap<OwnedRoomId, mpsc::Sender<RoomInbound>>,
    encrypted: &EncryptedIn,
) {
    let Inbound::RoomEvent(event) = inbound else {
        return;
    };
    // The bridge's own events (the bot's notices, the puppets' voice messages,
    // the floor state) are never bridged back.
    if event.from_bridge {
        return;
    }
    let handled = event.handled.clone();
    let Some(room) = rooms.get(&event.room_id) else {
        handled.done_later();
        return;
    };
    if encrypted_in::is_encrypted(&event) {
        // Decrypted (or answered) there, then handed to the same room. A stopped
        // decryptor (shutdown) leaves the event unhandled: replayed at the next start.
        encrypted.submit(event, room.clone()).await;
        return;
    }
    let Some(item) = room_inbound(event) else {
        handled.done_later();
        return;
    };
    // The room endpoint marks it handled once it has acted on it.
    if room.send(item).await.is_err() {
        handled.done_later();
    }
}

/// What a room endpoint acts on in `event`, read with ruma's typed contents;
/// `None` for every other event (and for a bad one, counted and logged).
fn room_inbound(event: RoomEvent) -> Option<RoomInbound> {
    let event_id = event.event_id.clone();
    // The room-wide state events this acts on have an empty state key; others
    // of the same type are someone's private business.
    let room_state = event.state_key.as_deref() == Some("");
    match event.event_type {
        TimelineEventType::RoomMessage => Some(RoomInbound::Message {
            content: typed_content::<serde_json::Value>(&event)?,
            event_id,
            sender: event.sender,
            handled: event.handled,
        }),
        TimelineEventType::RoomMember => {
            let content = typed_content::<RoomMemberEventContent>(&event)?;
            let Some(user) = event
                .state_key
                .as_deref()
                .and_then(|k| crate::matrix::ids::parse_user_id(k).ok())
            else {
                bad_event(&event, "its state key is no user ID");
                return None;
            };
            Some(RoomInbound::Member {
                event_id,
                user,
                membership: content.membership,
                handled: event.handled,
            })
        }
        TimelineEventType::RoomPowerLevels if room_state => {
            // Levels the typed content cannot read still changed: the gate must
            // read them again either way.
            if let Ok(Some(levels)) = event
                .event
                .get_field::<RoomPowerLevelsEventContent>("content")
            {
                info!(room = %event.room_id, users = levels.users.len(), "new power levels");
            }
            Some(RoomInbound::PowerLevels {
                event_id,
                handled: event.handled,
            })
        }
        TimelineEventType::RoomEncryption if room_state => {
            let content = typed_content::<RoomEncryptionEventContent>(&event)?;
            info!(room = %event.room_id, algorithm = %content.algorithm, "room encrypted");
            Some(RoomInbound::Encrypted {
                event_id,
                handled: event.handled,
            })
        }
        TimelineEventType::RoomTombstone if room_state => {
            let content = typed_content::<RoomTombstoneEventContent>(&event)?;
            Some(RoomInbound::Tombstone {
                event_id,
                replacement: content.replacement_room,
                handled: event.handled,
            })
        }
        _ => None,
    }
}

/// The event's `content` as `T`; `None` (counted, logged) when it is not one.
fn typed_content<T: serde::de::DeserializeOwned>(event: &RoomEvent) -> Option<T> {
    match event.event.get_field::<T>("content") {
        Ok(Some(content)) => Some(content),
        Ok(None) => {
            bad_event(event, "it has no content");
            None
        }
        Err(error) => {
            bad_event(event, &error.to_string());
            None
        }
    }
}

fn bad_event(event: &RoomEvent, why: &str) {
    metrics::counter!("walkie_matrix_bad_events_total").increment(1);
    warn!(event_id = %event.event_id, event_type = %event.event_type, why, "unreadable event; dropped");
}

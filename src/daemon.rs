//! The running bridge: store, homeserver client, appservice server, one hub per
//! channel with its Matrix room endpoint, the archive outbox — started in order,
//! stopped in reverse order.
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
use ruma::{OwnedRoomId, OwnedUserId, UserId};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use walkie_endpoint::Endpoint;

use crate::archive::{recover_spool, Outbox};
use crate::config::Config;
use crate::live::Live;
use crate::matrix::room_endpoint::RoomInbound;
use crate::matrix::{AppserviceServer, Inbound};
use crate::matrix::{Homeserver, Puppets};
use crate::ops;
use crate::ops::channels::{build_endpoints, ChannelDeps, Channels};
use crate::ops::http_listener::ListenerLimits;
use crate::ops::notify::Notifier;
use crate::ops::status::{Phase, StatusServer};
use crate::store::Store;

/// Appservice events waiting for the router.
const DISPATCH_QUEUE: usize = 256;
/// Handled appservice transactions older than this are forgotten at start-up.
const TXN_MEMORY: Duration = Duration::from_secs(7 * 24 * 3600);
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
}

impl Daemon {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            extra_endpoints: Vec::new(),
            reload: None,
            notifier: None,
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
    } = daemon;
    let notifier = notifier.unwrap_or_else(Notifier::disabled);
    // Before any hub or endpoint resolves a counter: handles taken earlier record
    // into nothing.
    let metrics_handle = ops::metrics::install();

    let store = Store::connect(&config.database.url)
        .await
        .context("cannot open the database")?;
    // Synapse numbers its transactions from 1 per appservice; forgetting old ones
    // keeps the table small. (A homeserver whose database was reset reuses low
    // numbers: see the README's troubleshooting.)
    if let Err(error) = store
        .prune_txns(std::time::SystemTime::now() - TXN_MEMORY)
        .await
    {
        warn!(%error, "cannot prune handled transactions");
    }
    let homeserver = Homeserver::new(
        config.homeserver.url.clone(),
        config.appservice.as_token.clone(),
    )?;
    let bot: OwnedUserId = UserId::parse(config.appservice.bot_user_id(&config.homeserver.domain))
        .context("appservice.bot_localpart and homeserver.domain make no valid user ID")?;
    let mut configured = build_endpoints(&config, &config.channels, &homeserver, &bot)?;

    // /health answers from the start, so a monitor sees "waiting for the homeserver"
    // rather than a refused connection.
    let (phase_tx, phase_rx) = watch::channel(Phase::Starting);
    let (observers_tx, observers_rx) = watch::channel(Arc::new(Vec::new()));
    let status_token = CancellationToken::new();
    let status_task = match config.status.listen {
        Some(addr) => {
            match StatusServer::bind(addr, metrics_handle, observers_rx, phase_rx, store.clone())
                .await
            {
                Ok(server) => Some(tokio::spawn(server.serve(status_token.clone()))),
                Err(error) => {
                    // Metrics are worth an alarm, not an outage: the bridge still bridges.
                    error!(%error, "status, health and metrics are not served");
                    None
                }
            }
        }
        None => None,
    };

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
    let (dispatch_tx, mut dispatch_rx) = mpsc::channel::<Inbound>(DISPATCH_QUEUE);
    let server = AppserviceServer::new(
        &config.appservice,
        &config.homeserver.domain,
        store.clone(),
        dispatch_tx,
    )?;
    let server_token = CancellationToken::new();
    let live = Live::new(&config, homeserver.clone(), store.clone(), bot.clone())?;
    let limits = ListenerLimits::new(&config.http)
        .with_homeserver_url(&config.homeserver.url)
        .await;
    let server_task =
        tokio::spawn(server.serve_with(listener, live.router(), limits, server_token.clone()));

    phase_tx.send_replace(Phase::WaitingForHomeserver);
    if !wait_for_homeserver(&homeserver, &bot, &shutdown, &notifier).await {
        live.stop().await;
        server_token.cancel();
        let _ = server_task.await;
        status_token.cancel();
        if let Some(task) = status_task {
            let _ = task.await;
        }
        return Ok(());
    }
    phase_tx.send_replace(Phase::Starting);
    match homeserver.ping(&config.appservice.id).await {
        Ok(rtt) => info!(?rtt, "the homeserver reaches the appservice"),
        Err(error) => {
            warn!(%error, "the homeserver could not ping the appservice; check appservice.url in the registration")
        }
    }

    let puppets = Puppets::new(
        homeserver.clone(),
        store.clone(),
        config.appservice.puppet_prefix.clone(),
        config.homeserver.domain.clone(),
        bot.clone(),
    );
    let outbox = Outbox::new(store.clone(), homeserver.clone()).with_puppets(puppets.clone());
    let mut channels = Channels::new(
        ChannelDeps {
            homeserver: homeserver.clone(),
            store: store.clone(),
            bot: bot.clone(),
            puppets: puppets.clone(),
            outbox_wake: outbox.waker(),
            live: live.endpoints(),
        },
        observers_tx,
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
        channels.start(&config, channel, built).await?;
    }
    // Endpoints of channels that are not bridged are dropped here, so whoever
    // waits for them to start learns that they never will.
    for channel in extra.into_keys() {
        warn!(%channel, "an extra endpoint names a channel that is not bridged");
    }

    if let Err(error) = recover_spool(&config.archive.spool_dir, &store).await {
        error!(%error, "cannot recover the archive spool");
    }
    let outbox_token = CancellationToken::new();
    let outbox_task = tokio::spawn(outbox.run(outbox_token.clone()));

    let mut summary = ops::summary(&channels.observers());
    notifier.ready(&summary);
    phase_tx.send_replace(Phase::Running);
    info!(channels = channels.len(), %summary, "walkie-bridge ready");

    // Watchdog pings come from this loop, so a router stuck on a full room inbox
    // stops them too. Without a watchdog the timer just never fires.
    let mut watchdog = notifier.watchdog_interval().map(tokio::time::interval);
    let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
    let mut current = config.clone();
    // Route the homeserver's events to their rooms until shutdown.
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tick(&mut watchdog) => notifier.watchdog(),
            inbound = dispatch_rx.recv() => match inbound {
                Some(inbound) => route(inbound, channels.rooms()).await,
                None => break,
            },
            Some(new) = recv(&mut reload) => {
                notifier.reloading();
                phase_tx.send_replace(Phase::Reloading);
                apply_reload(&mut channels, &config, &current, &new).await;
                current = new;
                phase_tx.send_replace(Phase::Running);
                summary = ops::summary(&channels.observers());
                notifier.ready(&summary);
            }
            _ = status_tick.tick() => {
                let now = ops::summary(&channels.observers());
                if now != summary {
                    notifier.status(&now);
                    summary = now;
                }
            }
        }
    }

    info!("shutting down");
    notifier.stopping();
    phase_tx.send_replace(Phase::Stopping);
    channels.stop_all().await;
    live.stop().await;
    outbox_token.cancel();
    let _ = outbox_task.await;
    server_token.cancel();
    match server_task.await {
        Ok(Err(error)) => warn!(%error, "appservice server stopped with an error"),
        Err(error) => warn!(%error, "appservice server task failed"),
        Ok(Ok(())) => {}
    }
    status_token.cancel();
    if let Some(task) = status_task {
        let _ = task.await;
    }
    store.close().await;
    info!("stopped");
    Ok(())
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

async fn route(inbound: Inbound, rooms: &HashMap<OwnedRoomId, mpsc::Sender<RoomInbound>>) {
    let Inbound::RoomEvent(event) = inbound else {
        return;
    };
    if event.from_bridge || event.event_type.to_string() != "m.room.message" {
        return;
    }
    let Some(room) = rooms.get(&event.room_id) else {
        return;
    };
    let content = match event.event.get_field::<serde_json::Value>("content") {
        Ok(Some(content)) => content,
        Ok(None) | Err(_) => {
            metrics::counter!("walkie_matrix_bad_events_total").increment(1);
            warn!(event_id = %event.event_id, "m.room.message without a readable content; dropped");
            return;
        }
    };
    let _ = room
        .send(RoomInbound::Message {
            event_id: event.event_id,
            sender: event.sender,
            content,
        })
        .await;
}

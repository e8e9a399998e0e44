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
use std::time::Duration;

use anyhow::Context;
use ruma::{OwnedRoomId, OwnedUserId, UserId};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};
use walkie_endpoint::{Endpoint, EndpointId};

use crate::archive::{recover_spool, Outbox};
use crate::config::Config;
use crate::endpoints;
use crate::hub::ChannelHub;
use crate::live::Live;
use crate::matrix::room_endpoint::{RoomEndpoint, RoomEndpointParts, RoomInbound, VoiceInLimits};
use crate::matrix::{prepare_room, Homeserver, Puppets, RoomOp, RoomWorker};
use crate::matrix::{AppserviceServer, Inbound};
use crate::store::Store;

/// Voice messages from Matrix larger than this are not downloaded.
const VOICE_IN_MAX_BYTES: usize = 20 * 1024 * 1024;
/// Messages waiting for a room endpoint; beyond this the appservice waits, which
/// makes the homeserver retry later rather than the bridge drop events.
const ROOM_INBOX: usize = 64;
/// Appservice events waiting for the router.
const DISPATCH_QUEUE: usize = 256;
/// Handled appservice transactions older than this are forgotten at start-up.
const TXN_MEMORY: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long start-up waits between attempts while the homeserver is unreachable.
const HOMESERVER_RETRY_CAP: Duration = Duration::from_secs(30);

/// The daemon before it runs. Tests add endpoints of their own to a channel;
/// `walkie-bridge run` adds none.
pub struct Daemon {
    config: Config,
    extra_endpoints: Vec<(String, Box<dyn Endpoint>)>,
}

impl Daemon {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            extra_endpoints: Vec::new(),
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

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        run_daemon(self.config, self.extra_endpoints, shutdown).await
    }
}

/// Runs the bridge until `shutdown` is cancelled or a fatal error occurs.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Daemon::new(config).run(shutdown).await
}

/// Builds every configured endpoint, or says which cannot be built yet.
fn build_endpoints(config: &Config) -> anyhow::Result<HashMap<String, Vec<Box<dyn Endpoint>>>> {
    let mut by_channel: HashMap<String, Vec<Box<dyn Endpoint>>> = HashMap::new();
    let mut problems = Vec::new();
    for channel in &config.channels {
        for id in &channel.endpoints {
            let Some(spec) = config.endpoint(id) else {
                continue;
            };
            match endpoints::build(id, spec, &config.floor) {
                Ok(endpoint) => by_channel
                    .entry(channel.name.clone())
                    .or_default()
                    .push(endpoint),
                Err(error) => problems.push(error.to_string()),
            }
        }
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "walkie-bridge cannot run this configuration yet:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(by_channel)
}

async fn run_daemon(
    config: Config,
    extra_endpoints: Vec<(String, Box<dyn Endpoint>)>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut configured = build_endpoints(&config)?;

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
    let mut live = Live::new(&config, homeserver.clone(), store.clone(), bot.clone())?;
    let server_task =
        tokio::spawn(server.serve_with(listener, live.router(), server_token.clone()));

    if !wait_for_homeserver(&homeserver, &bot, &shutdown).await {
        live.stop().await;
        server_token.cancel();
        let _ = server_task.await;
        return Ok(());
    }
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
    let outbox_wake = outbox.waker();
    let hub_token = CancellationToken::new();
    let endpoint_token = CancellationToken::new();
    let worker_token = CancellationToken::new();
    let mut hubs = JoinSet::new();
    let mut endpoints = JoinSet::new();
    let mut workers = JoinSet::new();
    let mut rooms: HashMap<OwnedRoomId, mpsc::Sender<RoomInbound>> = HashMap::new();
    let mut extra: HashMap<String, Vec<Box<dyn Endpoint>>> = HashMap::new();
    for (channel, endpoint) in extra_endpoints {
        extra.entry(channel).or_default().push(endpoint);
    }

    for channel in &config.channels {
        let prepared = match prepare_room(&homeserver, &store, &bot, &channel.room).await {
            Ok(prepared) => prepared,
            Err(error) => {
                error!(channel = %channel.name, %error, "channel not bridged");
                continue;
            }
        };
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        if !prepared.missing_powers.is_empty() {
            let problems = prepared.missing_powers.join("; ");
            error!(channel = %channel.name, room = %prepared.room_id, %problems, "the bot lacks power in the room");
            let _ = ops_tx.send(RoomOp::Notice {
                text: format!("walkie-bridge cannot work fully in this room: {problems}."),
                thread_root: None,
            });
        }
        let worker = RoomWorker::new(
            homeserver.clone(),
            puppets.clone(),
            prepared.room_id.clone(),
            bot.clone(),
            config.floor.max_talk,
        );
        workers.spawn(worker.run(ops_rx, worker_token.clone()));

        let mut hub = ChannelHub::new(channel.name.clone(), config.floor.settings());
        let (inbound_tx, inbound_rx) = mpsc::channel(ROOM_INBOX);
        rooms.insert(prepared.room_id.clone(), inbound_tx);
        let room_endpoint: Box<dyn Endpoint> = Box::new(RoomEndpoint::new(RoomEndpointParts {
            id: EndpointId::new(format!("matrix.{}", channel.name)),
            channel: channel.name.clone(),
            room: prepared.room_id.clone(),
            bot: bot.clone(),
            homeserver: homeserver.clone(),
            puppets: puppets.clone(),
            store: store.clone(),
            spool_dir: config.archive.spool_dir.clone(),
            min_archive: config.archive.min_archive,
            voice_in: VoiceInLimits {
                max_bytes: VOICE_IN_MAX_BYTES,
                max_duration: config.floor.max_talk,
            },
            outbox_wake: outbox_wake.clone(),
            inbound: inbound_rx,
            ops: ops_tx,
        }));
        let mut members = vec![room_endpoint];
        members.extend(configured.remove(&channel.name).unwrap_or_default());
        members.extend(extra.remove(&channel.name).unwrap_or_default());
        members.extend(live.endpoint(&channel.name, prepared.room_id.clone()));
        for endpoint in members {
            let id = endpoint.id().clone();
            let link = hub
                .attach(id.clone(), endpoint.capabilities())
                .with_context(|| format!("channel {}", channel.name))?;
            let token = endpoint_token.clone();
            let span = tracing::info_span!("endpoint", channel = %channel.name, endpoint = %id);
            endpoints.spawn(
                async move {
                    if let Err(error) = endpoint.run(link, token).await {
                        error!(%error, "endpoint stopped");
                    }
                }
                .instrument(span),
            );
        }
        info!(channel = %channel.name, room = %prepared.room_id, "channel bridged");
        hubs.spawn(hub.run(hub_token.clone()));
    }
    // Endpoints of channels that are not bridged are dropped here, so whoever
    // waits for them to start learns that they never will.
    live.forget_unbridged();
    for channel in extra.into_keys() {
        warn!(%channel, "an extra endpoint names a channel that is not bridged");
    }

    if let Err(error) = recover_spool(&config.archive.spool_dir, &store).await {
        error!(%error, "cannot recover the archive spool");
    }
    let outbox_token = CancellationToken::new();
    let outbox_task = tokio::spawn(outbox.run(outbox_token.clone()));

    // Route the homeserver's events to their rooms until shutdown.
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            inbound = dispatch_rx.recv() => match inbound {
                Some(inbound) => route(inbound, &rooms).await,
                None => break,
            },
        }
    }

    info!("shutting down");
    hub_token.cancel();
    while hubs.join_next().await.is_some() {}
    endpoint_token.cancel();
    while endpoints.join_next().await.is_some() {}
    live.stop().await;
    worker_token.cancel();
    while workers.join_next().await.is_some() {}
    outbox_token.cancel();
    let _ = outbox_task.await;
    server_token.cancel();
    match server_task.await {
        Ok(Err(error)) => warn!(%error, "appservice server stopped with an error"),
        Err(error) => warn!(%error, "appservice server task failed"),
        Ok(Ok(())) => {}
    }
    store.close().await;
    info!("stopped");
    Ok(())
}

/// Start-up waits here until the homeserver accepts our `as_token`, so a bridge
/// started before its homeserver comes up does not fail. `false` on shutdown.
async fn wait_for_homeserver(
    homeserver: &Homeserver,
    bot: &UserId,
    shutdown: &CancellationToken,
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
            }
            Err(error) => {
                // A wrong as_token or a registration the homeserver has not loaded:
                // retrying slowly lets an operator fix it without a restart loop.
                error!(%error, retry_in = ?HOMESERVER_RETRY_CAP, "the homeserver refuses the appservice; is the registration loaded and the as_token right?");
                pause = HOMESERVER_RETRY_CAP;
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

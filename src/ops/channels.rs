//! The set of running channels: each one a hub, its endpoints and its room worker,
//! with tokens of its own so one channel can stop and start while the others go
//! on — which is what a SIGHUP reload does to a channel whose configuration
//! changed. Stopping keeps the daemon's order (DESIGN: hubs first, so every
//! endpoint hears the floor released; then endpoints; then the room workers).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ruma::{OwnedRoomId, OwnedUserId, UserId};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};
use walkie_endpoint::{Endpoint, EndpointId};

use crate::archive::OutboxWaker;
use crate::config::{self, ArchiveConfig, ChannelConfig, Config, EndpointSpec, FloorConfig};
use crate::endpoints;
use crate::hub::{supervise, Backoff, ChannelHub, EndpointFactory, HubObserver, Supervised};
use crate::live::LiveEndpoints;
use crate::matrix::crypto::CryptoDevices;
use crate::matrix::room_endpoint::{RoomEndpoint, RoomEndpointParts, RoomInbound, VoiceInLimits};
use crate::matrix::{prepare_room, Homeserver, Puppets, RoomOp, RoomSender, RoomWorker};
use crate::mumble_identity::{self, MumbleIdentities};
use crate::store::Store;
use crate::transmit_policy::RoomPowerLevels;

/// Voice messages from Matrix larger than this are not downloaded.
const VOICE_IN_MAX_BYTES: usize = 20 * 1024 * 1024;
/// Messages waiting for a room endpoint; beyond this the appservice waits, which
/// makes the homeserver retry later rather than the bridge drop events.
const ROOM_INBOX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("walkie-bridge cannot run this configuration:\n  {}", .0.join("\n  "))]
    Build(Vec<String>),
    #[error("channel {channel}: {source}")]
    Attach {
        channel: String,
        #[source]
        source: crate::hub::AttachError,
    },
    #[error(transparent)]
    Identity(#[from] crate::mumble_identity::IdentityError),
}

/// What the running channels share.
pub struct ChannelDeps {
    pub homeserver: Homeserver,
    pub store: Store,
    pub bot: OwnedUserId,
    pub puppets: Puppets,
    /// Sends the bot's messages, encrypted in encrypted rooms.
    pub rooms: RoomSender,
    pub outbox_wake: OutboxWaker,
    /// Each channel's live-talk endpoint (none when `[live]` is off).
    pub live: LiveEndpoints,
    /// The bot's and the puppets' devices (encrypted rooms).
    pub crypto: CryptoDevices,
}

/// Everything a channel runs with. When a reload changes any of it, the channel
/// restarts; when nothing changed, it is left alone mid-transmission.
#[derive(Clone, Debug, PartialEq)]
struct ChannelPlan {
    channel: ChannelConfig,
    endpoints: Vec<(config::EndpointId, EndpointSpec)>,
    floor: FloorConfig,
    archive: ArchiveConfig,
}

impl ChannelPlan {
    fn of(config: &Config, channel: &ChannelConfig) -> Self {
        Self {
            channel: channel.clone(),
            endpoints: channel
                .endpoints
                .iter()
                .filter_map(|id| config.endpoint(id).map(|spec| (id.clone(), spec.clone())))
                .collect(),
            floor: config.floor.clone(),
            archive: config.archive.clone(),
        }
    }
}

struct RunningChannel {
    plan: ChannelPlan,
    room: OwnedRoomId,
    hub_token: CancellationToken,
    endpoint_token: CancellationToken,
    worker_token: CancellationToken,
    hub: JoinHandle<()>,
    endpoints: JoinSet<()>,
    worker: JoinHandle<()>,
    observer: HubObserver,
}

/// What a reload did, for the log and for tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub stopped: Vec<String>,
    pub unchanged: Vec<String>,
    /// Sections whose change waits for a restart of the daemon.
    pub need_restart: Vec<&'static str>,
}

pub struct Channels {
    ctx: ChannelDeps,
    running: BTreeMap<String, RunningChannel>,
    rooms: HashMap<OwnedRoomId, mpsc::Sender<RoomInbound>>,
    observers: watch::Sender<Arc<Vec<HubObserver>>>,
}

/// A channel's configured endpoints, built, with what they share.
pub struct BuiltChannel {
    pub endpoints: Vec<Box<dyn Endpoint>>,
    /// How to build each configured endpoint again after its task panicked
    /// (from its section, as a reload would). Endpoints without one (added by
    /// a test in-process) are not restarted.
    pub factories: HashMap<EndpointId, EndpointFactory>,
    /// The room's power levels for radios' `transmit_min_power_level`; told the
    /// room once it is prepared.
    pub power_levels: Arc<RoomPowerLevels>,
}

/// Builds the configured endpoints of `channels`, or says every one that cannot be
/// built, so that nothing starts (or, on reload, stops) on a half-usable config.
pub fn build_endpoints<'a>(
    config: &Config,
    channels: impl IntoIterator<Item = &'a ChannelConfig>,
    homeserver: &Homeserver,
    bot: &UserId,
    mumble_identities: &MumbleIdentities,
) -> Result<HashMap<String, BuiltChannel>, ChannelError> {
    let mut by_channel: HashMap<String, BuiltChannel> = HashMap::new();
    let mut problems = Vec::new();
    for channel in channels {
        let power_levels = Arc::new(RoomPowerLevels::new(homeserver.clone(), bot.to_owned()));
        let context = endpoints::ChannelContext {
            floor: &config.floor,
            power_levels: Arc::clone(&power_levels),
            mumble_identities,
        };
        let mut members = Vec::new();
        let mut factories = HashMap::new();
        for id in &channel.endpoints {
            let Some(spec) = config.endpoint(id) else {
                continue;
            };
            match endpoints::build(id, spec, &context) {
                Ok(endpoint) => {
                    factories.insert(
                        endpoint.id().clone(),
                        rebuild(id, spec, config, &power_levels, mumble_identities),
                    );
                    members.push(endpoint);
                }
                Err(error) => problems.push(error.to_string()),
            }
        }
        by_channel.insert(
            channel.name.clone(),
            BuiltChannel {
                endpoints: members,
                factories,
                power_levels,
            },
        );
    }
    if problems.is_empty() {
        Ok(by_channel)
    } else {
        Err(ChannelError::Build(problems))
    }
}

/// Builds the endpoint `id` again from its section, for a restart after a panic.
fn rebuild(
    id: &config::EndpointId,
    spec: &EndpointSpec,
    config: &Config,
    power_levels: &Arc<RoomPowerLevels>,
    mumble_identities: &MumbleIdentities,
) -> EndpointFactory {
    let (id, spec, floor) = (id.clone(), spec.clone(), config.floor.clone());
    let power_levels = Arc::clone(power_levels);
    // Only this endpoint's own certificate travels with its factory.
    let identities: MumbleIdentities = mumble_identities
        .get(&id)
        .map(|identity| (id.clone(), identity.clone()))
        .into_iter()
        .collect();
    Box::new(move || {
        let context = endpoints::ChannelContext {
            floor: &floor,
            power_levels: Arc::clone(&power_levels),
            mumble_identities: &identities,
        };
        endpoints::build(&id, &spec, &context).map_err(|e| e.to_string())
    })
}

impl Channels {
    pub fn new(ctx: ChannelDeps, observers: watch::Sender<Arc<Vec<HubObserver>>>) -> Self {
        Self {
            ctx,
            running: BTreeMap::new(),
            rooms: HashMap::new(),
            observers,
        }
    }

    /// Where the homeserver's events for each bridged room go.
    pub fn rooms(&self) -> &HashMap<OwnedRoomId, mpsc::Sender<RoomInbound>> {
        &self.rooms
    }

    pub fn observers(&self) -> Vec<HubObserver> {
        self.running.values().map(|c| c.observer.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Starts `channel` with its Matrix room endpoint plus the endpoints `built`
    /// for it. A room that cannot be prepared leaves the channel out (logged) —
    /// the others still run.
    pub async fn start(
        &mut self,
        config: &Config,
        channel: &ChannelConfig,
        built: BuiltChannel,
    ) -> Result<bool, ChannelError> {
        let BuiltChannel {
            endpoints: members,
            mut factories,
            power_levels,
        } = built;
        let ctx = &self.ctx;
        let prepared =
            match prepare_room(&ctx.homeserver, &ctx.store, &ctx.bot, &channel.room).await {
                Ok(prepared) => prepared,
                Err(error) => {
                    error!(channel = %channel.name, %error, "channel not bridged");
                    return Ok(false);
                }
            };
        if prepared.encrypted {
            // The bot's device decrypts what members send: it must be on the
            // homeserver before they share room keys, so it is made ready before
            // the room is bridged (created the first time, reopened after). A
            // failure is not fatal: decryption tries again with each event.
            match ctx.crypto.device(&ctx.bot).await {
                Ok(device) => {
                    info!(channel = %channel.name, device = %device.device_id(), "the bot's encryption device is ready")
                }
                Err(error) => {
                    warn!(channel = %channel.name, %error, "the bot's encryption device is not ready; encrypted messages wait")
                }
            }
        }
        power_levels.set_room(prepared.room_id.clone());
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        if !prepared.missing_powers.is_empty() {
            let problems = prepared.missing_powers.join("; ");
            error!(channel = %channel.name, room = %prepared.room_id, %problems, "the bot lacks power in the room");
            let _ = ops_tx.send(RoomOp::notice(format!(
                "walkie-bridge cannot work fully in this room: {problems}."
            )));
        }
        let worker_token = CancellationToken::new();
        let worker = RoomWorker::new(
            ctx.rooms.clone(),
            ctx.puppets.clone(),
            prepared.room_id.clone(),
            ctx.bot.clone(),
            config.floor.max_talk,
        );
        let worker = tokio::spawn(worker.run(ops_rx, worker_token.clone()));

        let mut hub = ChannelHub::new(channel.name.clone(), config.floor.settings());
        let (inbound_tx, inbound_rx) = mpsc::channel(ROOM_INBOX);
        let halt = CancellationToken::new();
        let room_endpoint: Box<dyn Endpoint> = Box::new(RoomEndpoint::new(RoomEndpointParts {
            id: EndpointId::new(format!("matrix.{}", channel.name)),
            channel: channel.name.clone(),
            room: prepared.room_id.clone(),
            bot: ctx.bot.clone(),
            homeserver: ctx.homeserver.clone(),
            puppets: ctx.puppets.clone(),
            store: ctx.store.clone(),
            spool_dir: config.archive.spool_dir.clone(),
            min_archive: config.archive.min_archive,
            waveform: config.archive.waveform,
            voice_in: VoiceInLimits::new(VOICE_IN_MAX_BYTES, config.floor.max_talk),
            outbox_wake: ctx.outbox_wake.clone(),
            inbound: inbound_rx,
            ops: ops_tx,
            live: ctx.live.clone(),
            power_levels: Arc::clone(&power_levels),
            halt: halt.clone(),
        }));
        let endpoint_token = CancellationToken::new();
        let attacher = hub.attacher();
        let mut tasks = JoinSet::new();
        let mut all = vec![room_endpoint];
        all.extend(members);
        all.extend(ctx.live.endpoint(&channel.name, prepared.room_id.clone()));
        for (index, endpoint) in all.into_iter().enumerate() {
            let id = endpoint.id().clone();
            let link = match hub.attach(id.clone(), endpoint.capabilities()) {
                Ok(link) => link,
                Err(source) => {
                    endpoint_token.cancel();
                    worker_token.cancel();
                    drop(hub);
                    while tasks.join_next().await.is_some() {}
                    let _ = worker.await;
                    return Err(ChannelError::Attach {
                        channel: channel.name.clone(),
                        source,
                    });
                }
            };
            if index == 0 {
                // The room was just prepared: the Matrix side is reachable. It has
                // no connection of its own to report (the homeserver client retries
                // per request), so it counts as connected while the channel runs.
                link.report_connected();
            }
            let supervised = Supervised {
                restart: factories.remove(&id),
                endpoint,
                link,
            };
            let span = tracing::info_span!("endpoint", channel = %channel.name, endpoint = %id);
            tasks.spawn(
                supervise(
                    supervised,
                    attacher.clone(),
                    Backoff::default(),
                    endpoint_token.clone(),
                )
                .instrument(span),
            );
        }
        let observer = hub.observer();
        let hub_token = CancellationToken::new();
        let hub = tokio::spawn(hub.run(hub_token.clone()));
        // The room endpoint halts the channel when its room can no longer be
        // bridged: the hub stops, which ends every endpoint, and the room worker
        // posts the endpoint's last notice before it ends too.
        tokio::spawn({
            let (halt, hub_token, channel) = (halt, hub_token.clone(), channel.name.clone());
            async move {
                tokio::select! {
                    _ = halt.cancelled() => {
                        warn!(%channel, "channel halted by its room; it stays stopped until the bridge restarts or the channel's configuration changes");
                        hub_token.cancel();
                    }
                    _ = hub_token.cancelled() => {}
                }
            }
        });
        info!(channel = %channel.name, room = %prepared.room_id, "channel bridged");
        self.rooms.insert(prepared.room_id.clone(), inbound_tx);
        self.running.insert(
            channel.name.clone(),
            RunningChannel {
                plan: ChannelPlan::of(config, channel),
                room: prepared.room_id,
                hub_token,
                endpoint_token,
                worker_token,
                hub,
                endpoints: tasks,
                worker,
                observer,
            },
        );
        self.publish();
        Ok(true)
    }

    /// Stops every channel: all hubs first (floors released, recordings finished,
    /// radios told), then all endpoints, then all room workers.
    pub async fn stop_all(&mut self) {
        let names: Vec<String> = self.running.keys().cloned().collect();
        self.stop(&names).await;
    }

    /// Stops the named channels in the daemon's order, across all of them at once.
    pub async fn stop(&mut self, names: &[String]) {
        let mut stopping: Vec<RunningChannel> = names
            .iter()
            .filter_map(|name| self.running.remove(name))
            .collect();
        for channel in &stopping {
            self.rooms.remove(&channel.room);
            channel.hub_token.cancel();
        }
        for channel in &mut stopping {
            if let Err(error) = (&mut channel.hub).await {
                warn!(channel = %channel.plan.channel.name, %error, "hub task failed");
            }
        }
        for channel in &stopping {
            channel.endpoint_token.cancel();
        }
        for channel in &mut stopping {
            while channel.endpoints.join_next().await.is_some() {}
        }
        for channel in &stopping {
            channel.worker_token.cancel();
        }
        for channel in &mut stopping {
            let _ = (&mut channel.worker).await;
            info!(channel = %channel.plan.channel.name, "channel stopped");
        }
        self.publish();
    }

    /// Brings the running channels in line with `new`: channels that are gone stop,
    /// channels whose room, endpoints, endpoint settings, floor or archive settings
    /// changed restart, new ones start, the rest keep running untouched. Endpoints
    /// are built before anything stops, so a config that cannot run changes nothing.
    /// `running` is the configuration the daemon started with: changes to its
    /// homeserver, appservice, database and status sections are reported, not
    /// applied. (Endpoints a test attached in-process are not restarted.)
    pub async fn reload(
        &mut self,
        running: &Config,
        new: &Config,
    ) -> Result<ReloadReport, ChannelError> {
        let mut report = ReloadReport {
            need_restart: needs_restart(running, new),
            ..ReloadReport::default()
        };
        let mut to_start = Vec::new();
        for channel in &new.channels {
            match self.running.get(&channel.name) {
                Some(current) if current.plan == ChannelPlan::of(new, channel) => {
                    report.unchanged.push(channel.name.clone());
                }
                Some(_) => {
                    report.restarted.push(channel.name.clone());
                    to_start.push(channel);
                }
                None => {
                    report.started.push(channel.name.clone());
                    to_start.push(channel);
                }
            }
        }
        report.stopped = self
            .running
            .keys()
            .filter(|name| new.channel(name).is_none())
            .cloned()
            .collect();
        let identities = mumble_identity::load_or_make(
            &self.ctx.store,
            mumble_identity::wanted(new, to_start.iter().copied()),
        )
        .await?;
        let mut built = build_endpoints(
            new,
            to_start.iter().copied(),
            &self.ctx.homeserver,
            &self.ctx.bot,
            &identities,
        )?;

        let mut stopping = report.stopped.clone();
        stopping.extend(report.restarted.iter().cloned());
        // Stop before start: a restarted channel's endpoints may hold the same
        // serial port, sound card or MQTT client id as their successors.
        self.stop(&stopping).await;
        for channel in to_start {
            if let Some(members) = built.remove(&channel.name) {
                self.start(new, channel, members).await?;
            }
        }
        Ok(report)
    }

    fn publish(&self) {
        self.observers.send_replace(Arc::new(self.observers()));
    }
}

/// The sections a reload cannot apply, by name, when they differ.
pub fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut sections = Vec::new();
    if running.homeserver != new.homeserver {
        sections.push("homeserver");
    }
    if running.appservice != new.appservice {
        sections.push("appservice");
    }
    if running.database != new.database {
        sections.push("database");
    }
    if running.status != new.status {
        sections.push("status");
    }
    sections
}

//! The channel actor: one task, one inbox, one floor.

use super::floor::{Claimant, Decision, Floor, FloorSettings, Input};
use super::pcm::TransmissionDecoder;
use super::status::{
    release_label, unix_ms, ChannelStatus, HolderStatus, HubObserver, ObservedEndpoint,
    TransmissionRecord, RECENT_TRANSMISSIONS,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};
use walkie_endpoint::lossy_queue;
use walkie_endpoint::{Capabilities, DownFrame, EndpointId, FloorEvent, HubLink, Ordered, Uplink};

/// Uplink messages waiting for the hub. Audio beyond this is dropped at the
/// endpoint (counted there); control messages wait for room.
const INBOX_CAPACITY: usize = 256;
/// Frames an endpoint may fall behind before it loses the oldest: five seconds.
/// Talkers arrive in bursts (a network hiccup, a voice message read from disk) and
/// the recorder must not lose a word to a moment of scheduling delay; the queue
/// holds memory only for frames waiting, so the depth costs nothing until used.
const AUDIO_DOWNLINK_FRAMES: usize = 250;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("endpoint {0} is already attached to channel {1}")]
    Duplicate(EndpointId, String),
    #[error("endpoint {0} was never attached to channel {1}")]
    Unknown(EndpointId, String),
    #[error("channel {0} has stopped")]
    Stopped(String),
}

/// A request to attach an endpoint again to a running hub.
struct Reattach {
    id: EndpointId,
    capabilities: Capabilities,
    reply: oneshot::Sender<Result<HubLink, AttachError>>,
}

/// Attaches an endpoint again to its running hub, after its task ended
/// (a panic): the new link carries on the old one's `/status` row and counters.
#[derive(Clone, Debug)]
pub struct HubAttacher {
    channel: String,
    requests: mpsc::UnboundedSender<Reattach>,
}

impl HubAttacher {
    /// Only an endpoint attached before the hub started, and whose previous
    /// link is gone, can be attached again.
    pub async fn reattach(
        &self,
        id: EndpointId,
        capabilities: Capabilities,
    ) -> Result<HubLink, AttachError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || AttachError::Stopped(self.channel.clone());
        self.requests
            .send(Reattach {
                id,
                capabilities,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Counters a hub keeps for metrics and tests; readable while it runs.
#[derive(Debug, Default)]
pub struct HubStats {
    pub frames_forwarded: AtomicU64,
    /// Frames from someone who does not hold the floor.
    pub frames_refused: AtomicU64,
    pub grants: AtomicU64,
    pub denials: AtomicU64,
    pub releases: AtomicU64,
    /// Lost frames filled in by Opus concealment for PCM consumers.
    pub frames_concealed: AtomicU64,
    /// Frames that arrived after a later one (no PCM for them).
    pub frames_late: AtomicU64,
    /// Packets libopus could not decode.
    pub frames_corrupt: AtomicU64,
}

struct Attached {
    capabilities: Capabilities,
    control: lossy_queue::Sender<Ordered<FloorEvent>>,
    audio: lossy_queue::Sender<Ordered<DownFrame>>,
    metrics: EndpointMetrics,
}

/// Per-endpoint counters on the audio path, resolved once at attach.
struct EndpointMetrics {
    /// The endpoint's frames the hub forwarded (it held the floor).
    frames_in: metrics::Counter,
    /// Frames the hub handed to the endpoint's downlink.
    frames_out: metrics::Counter,
    /// The endpoint's frames refused because it did not hold the floor.
    frames_refused: metrics::Counter,
}

impl EndpointMetrics {
    fn new(channel: &str, endpoint: &EndpointId) -> Self {
        let labels = [
            ("channel", channel.to_owned()),
            ("endpoint", endpoint.to_string()),
        ];
        Self {
            frames_in: metrics::counter!("walkie_endpoint_frames_in_total", &labels),
            frames_out: metrics::counter!("walkie_endpoint_frames_out_total", &labels),
            frames_refused: metrics::counter!("walkie_endpoint_frames_refused_total", &labels),
        }
    }
}

/// The transmission in progress, for talk time and `/status`.
struct Holding {
    tx: walkie_endpoint::TxId,
    endpoint: EndpointId,
    talker: String,
    started: Instant,
    started_wall: SystemTime,
}

/// A channel hub before it runs: attach endpoints, then [`ChannelHub::run`].
pub struct ChannelHub {
    name: String,
    floor: Floor,
    endpoints: BTreeMap<EndpointId, Attached>,
    inbox_tx: mpsc::Sender<(EndpointId, Uplink)>,
    inbox: mpsc::Receiver<(EndpointId, Uplink)>,
    gone_tx: mpsc::UnboundedSender<EndpointId>,
    gone: mpsc::UnboundedReceiver<EndpointId>,
    reattach_tx: mpsc::UnboundedSender<Reattach>,
    reattach: mpsc::UnboundedReceiver<Reattach>,
    stats: Arc<HubStats>,
    metrics: HubMetrics,
    /// Decoder of the current transmission, present only while some endpoint other
    /// than the holder's wants PCM.
    decoder: Option<TransmissionDecoder>,
    /// Stamps every downlink message, so each link hands control and audio out in
    /// the order they were sent.
    sent: u64,
    status: watch::Sender<ChannelStatus>,
    observed: Vec<ObservedEndpoint>,
    holding: Option<Holding>,
}

/// Per-frame counters resolved once, so the audio path does not build label sets.
struct HubMetrics {
    frames_forwarded: metrics::Counter,
    frames_refused: metrics::Counter,
}

impl HubMetrics {
    fn new(channel: &str) -> Self {
        Self {
            frames_forwarded: metrics::counter!("walkie_frames_forwarded_total", "channel" => channel.to_owned()),
            frames_refused: metrics::counter!("walkie_frames_refused_total", "channel" => channel.to_owned()),
        }
    }
}

impl ChannelHub {
    pub fn new(name: impl Into<String>, settings: FloorSettings) -> Self {
        let (inbox_tx, inbox) = mpsc::channel(INBOX_CAPACITY);
        let (gone_tx, gone) = mpsc::unbounded_channel();
        let (reattach_tx, reattach) = mpsc::unbounded_channel();
        let name = name.into();
        Self {
            metrics: HubMetrics::new(&name),
            name,
            floor: Floor::new(settings),
            endpoints: BTreeMap::new(),
            inbox_tx,
            inbox,
            gone_tx,
            gone,
            reattach_tx,
            reattach,
            stats: Arc::default(),
            decoder: None,
            sent: 0,
            status: watch::Sender::new(ChannelStatus::default()),
            observed: Vec::new(),
            holding: None,
        }
    }

    /// A view of this hub for status pages and metrics; take it after attaching.
    pub fn observer(&self) -> HubObserver {
        HubObserver {
            channel: self.name.clone(),
            status: self.status.subscribe(),
            endpoints: self.observed.clone(),
            stats: self.stats(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> Arc<HubStats> {
        Arc::clone(&self.stats)
    }

    /// For restarting an endpoint's task once the hub runs.
    pub fn attacher(&self) -> HubAttacher {
        HubAttacher {
            channel: self.name.clone(),
            requests: self.reattach_tx.clone(),
        }
    }

    /// Connects an endpoint; the returned link is handed to its task.
    pub fn attach(
        &mut self,
        id: EndpointId,
        capabilities: Capabilities,
    ) -> Result<HubLink, AttachError> {
        if self.endpoints.contains_key(&id) {
            return Err(AttachError::Duplicate(id, self.name.clone()));
        }
        let link = self.connect(id.clone(), capabilities);
        self.observed.push(ObservedEndpoint {
            id,
            health: link.health(),
            counters: link.counters(),
        });
        Ok(link)
    }

    /// An endpoint attached before, whose link is gone, comes back. A link
    /// dropped so recently that its `gone` notice is still queued is detached
    /// here and now (the notice is ignored when it arrives).
    fn reattach(
        &mut self,
        id: EndpointId,
        capabilities: Capabilities,
    ) -> Result<HubLink, AttachError> {
        let Some(observed) = self.observed.iter().find(|o| o.id == id).cloned() else {
            return Err(AttachError::Unknown(id, self.name.clone()));
        };
        if let Some(current) = self.endpoints.get(&id) {
            if !current.control.is_closed() {
                return Err(AttachError::Duplicate(id, self.name.clone()));
            }
            self.detach(id.clone());
        }
        info!(endpoint = %id, "endpoint attached again");
        Ok(self
            .connect(id, capabilities)
            .continuing(observed.health, observed.counters))
    }

    fn detach(&mut self, endpoint: EndpointId) {
        debug!(%endpoint, "endpoint detached");
        self.endpoints.remove(&endpoint);
        self.apply(Input::EndpointGone { endpoint });
    }

    fn connect(&mut self, id: EndpointId, capabilities: Capabilities) -> HubLink {
        let (control, control_rx) = lossy_queue::unbounded();
        let (audio, audio_rx) = lossy_queue::channel(AUDIO_DOWNLINK_FRAMES);
        self.endpoints.insert(
            id.clone(),
            Attached {
                capabilities,
                control,
                audio,
                metrics: EndpointMetrics::new(&self.name, &id),
            },
        );
        HubLink::new(
            id,
            self.inbox_tx.clone(),
            self.gone_tx.clone(),
            control_rx,
            audio_rx,
        )
    }

    /// Runs until `shutdown` fires. On the way out the floor is released and every
    /// endpoint is told, so a keyed radio hears the release before its link closes.
    ///
    /// Not an `async fn`: one would keep `self` in its own state beside the copy
    /// moved into the event loop's (issue 16: 1.3 KiB more per idle channel).
    pub fn run(self, shutdown: CancellationToken) -> impl std::future::Future<Output = ()> + Send {
        let span = info_span!("channel", channel = %self.name);
        self.event_loop(shutdown).instrument(span)
    }

    async fn event_loop(mut self, shutdown: CancellationToken) {
        info!(endpoints = self.endpoints.len(), "channel hub started");
        loop {
            let deadline = self.floor.next_deadline().map(Instant::from_std);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = sleep_until_some(deadline) => {
                    self.apply(Input::Tick);
                }
                Some(endpoint) = self.gone.recv() => {
                    // The notice of a link already replaced by a re-attached one
                    // (whose control channel is open) is stale.
                    if self.endpoints.get(&endpoint).is_none_or(|a| a.control.is_closed()) {
                        self.detach(endpoint);
                    }
                }
                Some(request) = self.reattach.recv() => {
                    let Reattach { id, capabilities, reply } = request;
                    let _ = reply.send(self.reattach(id, capabilities));
                }
                Some((endpoint, uplink)) = self.inbox.recv() => self.on_uplink(endpoint, uplink),
            }
        }
        self.apply(Input::Shutdown);
        info!("channel hub stopped");
    }

    fn on_uplink(&mut self, endpoint: EndpointId, uplink: Uplink) {
        // Messages still in the inbox from an endpoint already detached must not
        // revive it: a grant to a ghost would hold the floor until the idle timeout.
        if !self.endpoints.contains_key(&endpoint) {
            return;
        }
        match uplink {
            Uplink::TalkStart {
                stream,
                talker,
                priority,
                kind,
            } => self.apply(Input::Request {
                who: Claimant { endpoint, stream },
                talker: *talker,
                priority,
                kind,
            }),
            Uplink::Audio { stream, frame } => {
                let who = Claimant { endpoint, stream };
                let received = Instant::now();
                match self.floor.audio(received.into_std(), &who) {
                    Some(tx) => {
                        let mut frame = frame;
                        if self.needs_pcm(&who.endpoint) {
                            self.decode(tx, &mut frame);
                        }
                        self.forward(&who.endpoint, DownFrame { tx, frame }, received);
                    }
                    None => {
                        self.stats.frames_refused.fetch_add(1, Ordering::Relaxed);
                        self.metrics.frames_refused.increment(1);
                        if let Some(attached) = self.endpoints.get(&who.endpoint) {
                            attached.metrics.frames_refused.increment(1);
                        }
                    }
                }
            }
            Uplink::TalkEnd { stream } => self.apply(Input::Done {
                who: Claimant { endpoint, stream },
            }),
            Uplink::Decline { tx, reason } => self.on_decline(endpoint, tx, reason),
        }
    }

    /// An endpoint refuses to carry the current transmission: its talker's own
    /// side hears why. A decline for a transmission already over has nobody left
    /// to tell, and the floor itself never changes on a decline.
    fn on_decline(&mut self, by: EndpointId, tx: walkie_endpoint::TxId, reason: String) {
        let holder = match self.floor.holder() {
            Some((who, current)) if current == tx => who.clone(),
            _ => {
                debug!(endpoint = %by, %tx, %reason, "decline for a transmission that is over");
                return;
            }
        };
        info!(endpoint = %by, %tx, %reason, "endpoint declines the transmission");
        metrics::counter!("walkie_declines_total", "channel" => self.name.clone(), "endpoint" => by.to_string())
            .increment(1);
        self.tell(
            &holder.endpoint,
            FloorEvent::Declined {
                tx,
                stream: holder.stream,
                by,
                reason,
            },
        );
    }

    /// The holder's frame to every other endpoint, never back to its source.
    fn forward(&mut self, source: &EndpointId, frame: DownFrame, received: Instant) {
        self.sent += 1;
        let order = self.sent;
        let since = received.into_std();
        for (id, attached) in &self.endpoints {
            if id == source {
                attached.metrics.frames_in.increment(1);
            } else if attached.audio.is_wanted() {
                // A send error only means the endpoint has no receiver right now
                // (it is being torn down); its `gone` notice is on the way.
                if attached
                    .audio
                    .send(Ordered {
                        order,
                        message: frame.clone(),
                        since,
                    })
                    .is_ok()
                {
                    attached.metrics.frames_out.increment(1);
                }
            }
        }
        self.stats.frames_forwarded.fetch_add(1, Ordering::Relaxed);
        self.metrics.frames_forwarded.increment(1);
    }

    fn apply(&mut self, input: Input) {
        let decisions = self.floor.handle(Instant::now().into_std(), input);
        for decision in decisions {
            self.announce(decision);
        }
    }

    fn announce(&mut self, decision: Decision) {
        let kind = decision_kind(&decision);
        metrics::counter!("walkie_floor_decisions_total", "channel" => self.name.clone(), "decision" => kind)
            .increment(1);
        match decision {
            Decision::Granted {
                who,
                tx,
                talker,
                priority,
            } => {
                info!(endpoint = %who.endpoint, stream = %who.stream, %tx, talker = %talker, ?priority, "floor granted");
                self.stats.grants.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("walkie_floor_grants_total", "channel" => self.name.clone(), "endpoint" => who.endpoint.to_string())
                    .increment(1);
                self.on_granted(&who.endpoint, tx, &talker, priority);
                self.tell(
                    &who.endpoint,
                    FloorEvent::Granted {
                        stream: who.stream,
                        tx,
                    },
                );
                let taken = FloorEvent::Taken {
                    tx,
                    talker,
                    source: who.endpoint.clone(),
                    priority,
                };
                self.tell_all_but(&who.endpoint, &taken);
            }
            Decision::Denied {
                who,
                reason,
                holder,
            } => {
                info!(endpoint = %who.endpoint, stream = %who.stream, %reason, "floor denied");
                self.stats.denials.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("walkie_floor_denials_total", "channel" => self.name.clone(),
                    "endpoint" => who.endpoint.to_string(), "reason" => deny_label(reason))
                .increment(1);
                self.tell(
                    &who.endpoint,
                    FloorEvent::Denied {
                        stream: who.stream,
                        reason,
                        holder,
                    },
                );
            }
            Decision::Queued { who, position } => {
                info!(endpoint = %who.endpoint, stream = %who.stream, position, "floor request queued");
                self.tell(
                    &who.endpoint,
                    FloorEvent::Queued {
                        stream: who.stream,
                        position,
                    },
                );
            }
            Decision::Dequeued { who } => {
                debug!(endpoint = %who.endpoint, stream = %who.stream, "floor request withdrawn");
            }
            Decision::Released { who, tx, reason } => {
                info!(endpoint = %who.endpoint, stream = %who.stream, %tx, %reason, "floor released");
                self.stats.releases.fetch_add(1, Ordering::Relaxed);
                self.on_released(&who.endpoint, tx, reason);
                self.decoder = None;
                self.tell_all(&FloorEvent::Released { tx, reason });
            }
            Decision::Idle => {
                debug!("floor idle");
                self.tell_all(&FloorEvent::Idle);
            }
        }
    }

    fn on_granted(
        &mut self,
        endpoint: &EndpointId,
        tx: walkie_endpoint::TxId,
        talker: &walkie_endpoint::Talker,
        priority: walkie_endpoint::Priority,
    ) {
        let holding = Holding {
            tx,
            endpoint: endpoint.clone(),
            talker: talker.display_name.clone(),
            started: Instant::now(),
            started_wall: SystemTime::now(),
        };
        let holder = HolderStatus {
            tx: tx.to_string(),
            talker: holding.talker.clone(),
            endpoint: endpoint.to_string(),
            priority: format!("{priority:?}").to_lowercase(),
            since_unix_ms: unix_ms(holding.started_wall),
        };
        self.holding = Some(holding);
        self.status.send_modify(|s| s.holder = Some(holder));
    }

    /// Talk time, the release reason (revokes and timeouts among them) and the
    /// transmission's line in `/status`.
    fn on_released(
        &mut self,
        endpoint: &EndpointId,
        tx: walkie_endpoint::TxId,
        reason: walkie_endpoint::ReleaseReason,
    ) {
        let end = release_label(reason);
        metrics::counter!("walkie_floor_releases_total", "channel" => self.name.clone(),
            "endpoint" => endpoint.to_string(), "reason" => end)
        .increment(1);
        let Some(holding) = self.holding.take().filter(|h| h.tx == tx) else {
            self.status.send_modify(|s| s.holder = None);
            return;
        };
        let talked = holding.started.elapsed();
        // A histogram rather than a counter: its `_sum` is the talk time in
        // fractional seconds (a counter would count whole ones), `_count` the talks.
        metrics::histogram!("walkie_talk_seconds", "channel" => self.name.clone(),
            "endpoint" => holding.endpoint.to_string())
        .record(talked.as_secs_f64());
        let record = TransmissionRecord {
            tx: tx.to_string(),
            talker: holding.talker,
            endpoint: holding.endpoint.to_string(),
            started_unix_ms: unix_ms(holding.started_wall),
            duration_ms: talked.as_millis() as u64,
            end,
        };
        self.status.send_modify(|s| {
            s.holder = None;
            s.recent.push_front(record);
            s.recent.truncate(RECENT_TRANSMISSIONS);
        });
    }

    fn tell(&mut self, endpoint: &EndpointId, event: FloorEvent) {
        self.sent += 1;
        let order = self.sent;
        if let Some(attached) = self.endpoints.get(endpoint) {
            let message = Ordered {
                order,
                message: event,
                since: std::time::Instant::now(),
            };
            if attached.control.send(message).is_err() {
                warn!(%endpoint, "endpoint no longer listens for floor events");
            }
        }
    }

    fn tell_all(&mut self, event: &FloorEvent) {
        let ids: Vec<EndpointId> = self.endpoints.keys().cloned().collect();
        for id in ids {
            self.tell(&id, event.clone());
        }
    }

    fn tell_all_but(&mut self, except: &EndpointId, event: &FloorEvent) {
        let ids: Vec<EndpointId> = self
            .endpoints
            .keys()
            .filter(|id| *id != except)
            .cloned()
            .collect();
        for id in ids {
            self.tell(&id, event.clone());
        }
    }

    fn needs_pcm(&self, except: &EndpointId) -> bool {
        self.endpoints
            .iter()
            .any(|(id, a)| id != except && a.capabilities.needs_pcm)
    }

    fn decode(&mut self, tx: walkie_endpoint::TxId, frame: &mut walkie_endpoint::AudioFrame) {
        if self.decoder.as_ref().is_none_or(|d| d.tx() != tx) {
            self.decoder = match TransmissionDecoder::new(tx) {
                Ok(decoder) => Some(decoder),
                Err(error) => {
                    // Only an out-of-memory libopus fails here; the Opus still flows.
                    warn!(%tx, %error, "cannot create an Opus decoder; PCM consumers get silence");
                    None
                }
            };
        }
        let Some(decoder) = self.decoder.as_mut() else {
            return;
        };
        let outcome = decoder.decode_into(frame);
        if outcome.concealed > 0 {
            self.stats
                .frames_concealed
                .fetch_add(u64::from(outcome.concealed), Ordering::Relaxed);
        }
        if outcome.late {
            self.stats.frames_late.fetch_add(1, Ordering::Relaxed);
        }
        if outcome.corrupt {
            self.stats.frames_corrupt.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("walkie_frames_corrupt_total", "channel" => self.name.clone())
                .increment(1);
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn deny_label(reason: walkie_endpoint::DenyReason) -> &'static str {
    match reason {
        walkie_endpoint::DenyReason::Busy => "busy",
        walkie_endpoint::DenyReason::NotPermitted => "not_permitted",
        walkie_endpoint::DenyReason::RateLimited => "rate_limited",
    }
}

fn decision_kind(decision: &Decision) -> &'static str {
    match decision {
        Decision::Granted { .. } => "granted",
        Decision::Denied { .. } => "denied",
        Decision::Queued { .. } => "queued",
        Decision::Dequeued { .. } => "dequeued",
        Decision::Released { .. } => "released",
        Decision::Idle => "idle",
    }
}

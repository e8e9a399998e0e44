//! A channel's Matrix room as an endpoint of its hub.
//!
//! Downward it records every transmission of the other endpoints for the archive
//! and mirrors the floor into the room; upward it transmits the voice messages
//! Matrix users post, through the floor queue like any other talk. Because it is
//! one endpoint, the hub never sends it its own transmissions: a voice message
//! played out to Mumble is not recorded and posted back to the room it came from.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use walkie_endpoint::audio::{import_voice_message, ImportLimits, FRAME_MS};
use walkie_endpoint::{
    AudioFrame, DenyReason, DownFrame, Downlink, Endpoint, EndpointError, EndpointFuture,
    EndpointId, FloorEvent, HubLink, Priority, ReleaseReason, StreamKey, TalkKind, Talker, TxId,
};

use super::client::Homeserver;
use super::commands;
use super::puppets::Puppets;
use super::room_worker::RoomOp;
use crate::archive::{OutboxWaker, Recorded, RecordingMeta, RecordingWorker};
use crate::store::Store;

/// What the appservice hands a room: only the events this endpoint acts on.
#[derive(Debug, Clone)]
pub enum RoomInbound {
    /// An `m.room.message` from a Matrix user (never from the bot or a puppet).
    Message {
        event_id: OwnedEventId,
        sender: OwnedUserId,
        content: Value,
    },
}

/// Limits on voice messages coming in from Matrix.
#[derive(Debug, Clone, Copy)]
pub struct VoiceInLimits {
    pub max_bytes: usize,
    pub max_duration: Duration,
}

/// Everything a room endpoint needs, built by the daemon.
pub struct RoomEndpointParts {
    pub id: EndpointId,
    pub channel: String,
    pub room: OwnedRoomId,
    pub bot: OwnedUserId,
    pub homeserver: Homeserver,
    pub puppets: Puppets,
    pub store: Store,
    pub spool_dir: PathBuf,
    pub min_archive: Duration,
    pub voice_in: VoiceInLimits,
    pub outbox_wake: OutboxWaker,
    pub inbound: mpsc::Receiver<RoomInbound>,
    pub ops: mpsc::UnboundedSender<RoomOp>,
}

pub struct RoomEndpoint {
    parts: RoomEndpointParts,
}

impl RoomEndpoint {
    pub fn new(parts: RoomEndpointParts) -> Self {
        Self { parts }
    }
}

impl Endpoint for RoomEndpoint {
    fn id(&self) -> &EndpointId {
        &self.parts.id
    }

    /// The daemon runs every endpoint inside a span naming its channel and id.
    fn run(self: Box<Self>, link: HubLink, shutdown: CancellationToken) -> EndpointFuture {
        Box::pin(async move {
            let mut state = RoomState::new(self.parts, link)?;
            state.run(shutdown).await
        })
    }
}

/// A voice message waiting for, or holding, the floor.
struct Outgoing {
    event_id: OwnedEventId,
    sender: OwnedUserId,
    packets: Vec<Bytes>,
    next: usize,
    tx: Option<TxId>,
}

/// A downloaded and decoded voice message, back from its worker task.
struct Imported {
    event_id: OwnedEventId,
    sender: OwnedUserId,
    result: Result<Vec<Bytes>, String>,
}

/// Event IDs remembered to drop redeliveries (the appservice delivers at least once).
const RECENT_EVENTS: usize = 512;

struct RoomState {
    parts: RoomEndpointParts,
    link: HubLink,
    /// Records on a thread of its own: a slow spool must not hold up this task.
    recorder: RecordingWorker,
    outgoing: HashMap<StreamKey, Outgoing>,
    playing: Option<StreamKey>,
    next_stream: u64,
    ticker: Interval,
    imported_tx: mpsc::UnboundedSender<Imported>,
    imported_rx: mpsc::UnboundedReceiver<Imported>,
    recent: VecDeque<OwnedEventId>,
    recent_set: HashSet<OwnedEventId>,
    /// The spool was full at the last recording; cleared by the next one kept.
    spool_full: bool,
}

impl RoomState {
    fn new(parts: RoomEndpointParts, link: HubLink) -> Result<Self, EndpointError> {
        let (imported_tx, imported_rx) = mpsc::unbounded_channel();
        let mut ticker = tokio::time::interval(Duration::from_millis(u64::from(FRAME_MS)));
        // A late tick must not make a burst: the far side plays in real time.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let recorder = RecordingWorker::spawn(&parts.channel)
            .map_err(|e| EndpointError::Fatal(format!("cannot start the recording thread: {e}")))?;
        Ok(Self {
            parts,
            link,
            recorder,
            outgoing: HashMap::new(),
            playing: None,
            next_stream: 1,
            ticker,
            imported_tx,
            imported_rx,
            recent: VecDeque::new(),
            spool_full: false,
            recent_set: HashSet::new(),
        })
    }

    async fn run(&mut self, shutdown: CancellationToken) -> Result<(), EndpointError> {
        info!(room = %self.parts.room, "room endpoint started");
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                down = self.link.recv() => match down {
                    Ok(Downlink::Floor(event)) => self.on_floor(event).await,
                    Ok(Downlink::Audio(frame)) => self.on_audio(frame),
                    Err(_) => break,
                },
                _ = self.ticker.tick(), if self.playing.is_some() => self.play_next().await,
                Some(imported) = self.imported_rx.recv() => self.on_imported(imported).await,
                Some(recorded) = self.recorder.next() => self.on_recorded(recorded).await,
                Some(inbound) = self.parts.inbound.recv() => self.on_inbound(inbound).await,
            }
        }
        // A recording cut by shutdown is still a transmission: finish it so it is
        // archived up to the cut, and queue it before stopping.
        if let Some(tx) = self.recorder.current() {
            self.recorder.finish(self.parts.min_archive);
            while let Some(recorded) = self.recorder.next().await {
                let done = match &recorded {
                    Recorded::Finished { tx: t, .. } | Recorded::Failed { tx: t, .. } => *t == tx,
                };
                self.on_recorded(recorded).await;
                if done {
                    break;
                }
            }
        }
        info!("room endpoint stopped");
        Ok(())
    }

    fn tell(&self, op: RoomOp) {
        // The worker only stops at shutdown, when nothing said here matters any more.
        let _ = self.parts.ops.send(op);
    }

    async fn on_floor(&mut self, event: FloorEvent) {
        match event {
            FloorEvent::Taken {
                tx, talker, source, ..
            } => {
                self.tell(RoomOp::FloorTaken {
                    tx,
                    talker: talker.clone(),
                    source: source.clone(),
                    since: SystemTime::now(),
                });
                self.start_recording(tx, &talker, &source);
            }
            FloorEvent::Released { tx, reason } => {
                self.tell(RoomOp::FloorReleased { tx });
                if self.recorder.current() == Some(tx) {
                    self.recorder.finish(self.parts.min_archive);
                }
                self.our_talk_released(tx, reason).await;
            }
            FloorEvent::Idle => self.tell(RoomOp::FloorIdle),
            FloorEvent::Granted { stream, tx } => self.granted(stream, tx),
            FloorEvent::Denied {
                stream,
                reason,
                holder,
            } => {
                if let Some(outgoing) = self.outgoing.remove(&stream) {
                    let why = match (reason, holder) {
                        (DenyReason::Busy, Some(holder)) => {
                            format!(
                                "the channel is busy ({holder} is talking) and its queue is full"
                            )
                        }
                        (reason, _) => format!("the channel refused it ({reason})"),
                    };
                    self.tell(RoomOp::Notice {
                        text: format!("Not transmitted: {why}. Try again in a moment."),
                        thread_root: Some(outgoing.event_id),
                    });
                }
            }
            FloorEvent::Queued { stream, position } => {
                debug!(%stream, position, "voice message queued");
            }
            FloorEvent::Declined {
                stream, by, reason, ..
            } => {
                if let Some(outgoing) = self.outgoing.get(&stream) {
                    self.tell(RoomOp::Notice {
                        text: format!("Not transmitted on {by}: {reason}."),
                        thread_root: Some(outgoing.event_id.clone()),
                    });
                }
            }
        }
    }

    fn start_recording(&mut self, tx: TxId, talker: &Talker, source: &EndpointId) {
        // A recording still open belongs to a transmission whose release was lost
        // with a lagging link; it is complete as far as it goes.
        if let Some(stale) = self.recorder.current() {
            warn!(tx = %stale, "recording never saw its release; aborting it");
            self.recorder.abort();
        }
        let sender = match &talker.matrix_user_id {
            // A Matrix user's live talk is posted by the bot: the bridge cannot post
            // as a real user.
            Some(_) => self.parts.bot.to_string(),
            None => match self.parts.puppets.user_id(source, talker) {
                Ok(puppet) => puppet.to_string(),
                Err(error) => {
                    warn!(%tx, %error, "talker has no puppet; the bot posts the recording");
                    self.parts.bot.to_string()
                }
            },
        };
        let meta = RecordingMeta {
            tx,
            channel: self.parts.channel.clone(),
            room_id: self.parts.room.to_string(),
            sender,
            talker: talker.display_name.clone(),
            started_at: SystemTime::now(),
        };
        self.recorder.start(&self.parts.spool_dir, meta);
    }

    /// A transmission that cannot be kept: said loudly, counted, and — when the
    /// spool is full — raised as an alarm (metric and one notice in the room)
    /// until a recording can be kept again. Everyone still heard it live.
    fn recording_failed(&mut self, tx: TxId, error: &crate::archive::ArchiveError) {
        let full = error.is_spool_full();
        let reason = if full { "spool_full" } else { "io" };
        metrics::counter!("walkie_archive_errors_total", "channel" => self.parts.channel.clone(), "reason" => reason)
            .increment(1);
        if !full {
            warn!(%tx, %error, "cannot record this transmission; it will not be archived");
            return;
        }
        error!(%tx, spool = %self.parts.spool_dir.display(), %error,
            "ARCHIVE SPOOL FULL: this transmission is not archived; free space in the spool directory");
        metrics::gauge!("walkie_archive_spool_full", "channel" => self.parts.channel.clone())
            .set(1.0);
        if !self.spool_full {
            self.spool_full = true;
            self.tell(RoomOp::Notice {
                text: "The bridge's archive is full: transmissions are heard live but not \
                       archived here until its operator frees space."
                    .to_owned(),
                thread_root: None,
            });
        }
    }

    fn spool_ok(&mut self) {
        if self.spool_full {
            self.spool_full = false;
            metrics::gauge!("walkie_archive_spool_full", "channel" => self.parts.channel.clone())
                .set(0.0);
            info!("the archive spool has room again; transmissions are archived");
        }
    }

    fn on_audio(&mut self, frame: DownFrame) {
        if self.recorder.current() == Some(frame.tx) {
            self.recorder.push(frame.frame);
        }
    }

    /// A recording ended on the recording thread: queue it, or say why not.
    async fn on_recorded(&mut self, recorded: Recorded) {
        let (tx, item) = match recorded {
            Recorded::Finished {
                tx,
                item: Some(item),
            } => (tx, item),
            Recorded::Finished { tx, item: None } => {
                debug!(%tx, "transmission shorter than min_archive_ms; not archived");
                return;
            }
            Recorded::Failed { tx, error } => {
                self.recording_failed(tx, &error);
                return;
            }
        };
        self.spool_ok();
        match self.parts.store.enqueue_outbox(&item).await {
            Ok(_) => {
                info!(%tx, duration_ms = item.duration_ms, "recording queued for the archive");
                self.parts.outbox_wake.wake();
            }
            // The file stays in the spool: start-up recovery enqueues it.
            Err(error) => warn!(%tx, %error, "cannot queue the recording; it is kept in the spool"),
        }
    }

    async fn on_inbound(&mut self, inbound: RoomInbound) {
        let RoomInbound::Message {
            event_id,
            sender,
            content,
        } = inbound;
        if !self.remember(&event_id) {
            debug!(%event_id, "event seen before; ignored");
            return;
        }
        match content.get("msgtype").and_then(Value::as_str) {
            Some("m.text") | Some("m.notice") => {
                let body = content.get("body").and_then(Value::as_str).unwrap_or("");
                if let Some(command) = commands::parse(body) {
                    // Events carry no device ID: opt-ins from the room are per user.
                    let text = match commands::execute(
                        &command,
                        &sender,
                        None,
                        &self.parts.store,
                        SystemTime::now(),
                    )
                    .await
                    {
                        Ok(reply) => reply.text,
                        Err(error) => {
                            warn!(%event_id, %error, "command failed");
                            "Sorry, the bridge could not do that right now (database error).".into()
                        }
                    };
                    self.tell(RoomOp::Notice {
                        text,
                        thread_root: None,
                    });
                }
            }
            Some("m.audio") => self.voice_message_in(event_id, sender, &content).await,
            _ => {}
        }
    }

    /// `false` if the event was seen already.
    fn remember(&mut self, event_id: &OwnedEventId) -> bool {
        if !self.recent_set.insert(event_id.clone()) {
            return false;
        }
        self.recent.push_back(event_id.clone());
        if self.recent.len() > RECENT_EVENTS {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
        true
    }

    async fn voice_message_in(
        &mut self,
        event_id: OwnedEventId,
        sender: OwnedUserId,
        content: &Value,
    ) {
        let refuse = |this: &Self, text: String| {
            this.tell(RoomOp::Notice {
                text,
                thread_root: Some(event_id.clone()),
            })
        };
        match commands::may_transmit(&self.parts.store, &sender, None, SystemTime::now()).await {
            Ok(true) => {}
            Ok(false) => {
                refuse(
                    self,
                    "Not transmitted: you have not opted in to this walkie-talkie channel. \
                     Say `!wt on` to talk and listen here."
                        .into(),
                );
                return;
            }
            Err(error) => {
                warn!(%event_id, %error, "cannot check the sender's opt-in");
                refuse(
                    self,
                    "Not transmitted: the bridge could not check your permissions.".into(),
                );
                return;
            }
        }
        let Some(url) = content.get("url").and_then(Value::as_str) else {
            refuse(
                self,
                "Not transmitted: encrypted or malformed voice messages cannot be played.".into(),
            );
            return;
        };
        let mimetype = content
            .pointer("/info/mimetype")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let homeserver = self.parts.homeserver.clone();
        let limits = self.parts.voice_in;
        let url = url.to_owned();
        let done = self.imported_tx.clone();
        tokio::spawn(async move {
            let result = match homeserver.download(&url, limits.max_bytes).await {
                Ok(bytes) => tokio::task::spawn_blocking(move || {
                    import_voice_message(
                        &bytes,
                        mimetype.as_deref(),
                        &ImportLimits {
                            max_bytes: limits.max_bytes,
                            max_duration: limits.max_duration,
                        },
                    )
                    .map(|imported| imported.packets)
                    .map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|join| Err(format!("decoder failed: {join}"))),
                Err(error) => Err(format!("cannot download it: {error}")),
            };
            let _ = done.send(Imported {
                event_id,
                sender,
                result,
            });
        });
    }

    async fn on_imported(&mut self, imported: Imported) {
        let Imported {
            event_id,
            sender,
            result,
        } = imported;
        let packets = match result {
            Ok(packets) if !packets.is_empty() => packets,
            Ok(_) => {
                metrics::counter!("walkie_voice_in_failed_total", "channel" => self.parts.channel.clone())
                    .increment(1);
                self.tell(RoomOp::Notice {
                    text: "Not transmitted: the voice message holds no audio.".into(),
                    thread_root: Some(event_id),
                });
                return;
            }
            Err(reason) => {
                metrics::counter!("walkie_voice_in_failed_total", "channel" => self.parts.channel.clone())
                    .increment(1);
                warn!(%event_id, %reason, "voice message not transmitted");
                self.tell(RoomOp::Notice {
                    text: format!("Not transmitted: {reason}."),
                    thread_root: Some(event_id),
                });
                return;
            }
        };
        let stream = StreamKey(self.next_stream);
        self.next_stream += 1;
        let talker = matrix_talker(&sender);
        info!(%event_id, %stream, frames = packets.len(), "voice message asks for the floor");
        self.outgoing.insert(
            stream,
            Outgoing {
                event_id,
                sender,
                packets,
                next: 0,
                tx: None,
            },
        );
        if self
            .link
            .talk_start(stream, talker, Priority::Normal, TalkKind::Message)
            .await
            .is_err()
        {
            self.outgoing.remove(&stream);
        }
    }

    fn granted(&mut self, stream: StreamKey, tx: TxId) {
        let Some(outgoing) = self.outgoing.get_mut(&stream) else {
            return;
        };
        outgoing.tx = Some(tx);
        let talker = matrix_talker(&outgoing.sender);
        self.tell(RoomOp::FloorTaken {
            tx,
            talker,
            source: self.parts.id.clone(),
            since: SystemTime::now(),
        });
        self.playing = Some(stream);
        self.ticker.reset_at(Instant::now());
    }

    async fn play_next(&mut self) {
        let Some(stream) = self.playing else {
            return;
        };
        let Some(outgoing) = self.outgoing.get_mut(&stream) else {
            self.playing = None;
            return;
        };
        if let Some(packet) = outgoing.packets.get(outgoing.next) {
            let frame = AudioFrame::opus(outgoing.next as u32, packet.clone());
            outgoing.next += 1;
            if self.link.audio(stream, frame).is_err() {
                self.playing = None;
            }
            return;
        }
        // All sent: let go of the floor and tell the sender it went out.
        self.playing = None;
        let _ = self.link.talk_end(stream).await;
        if let Some(done) = self.outgoing.remove(&stream) {
            info!(event_id = %done.event_id, frames = done.packets.len(), "voice message transmitted");
            self.tell(RoomOp::React {
                event_id: done.event_id,
                key: "✅".into(),
            });
        }
    }

    /// The floor of one of our voice messages ended before it was all sent.
    async fn our_talk_released(&mut self, tx: TxId, reason: ReleaseReason) {
        let Some(stream) = self
            .outgoing
            .iter()
            .find(|(_, o)| o.tx == Some(tx))
            .map(|(stream, _)| *stream)
        else {
            return;
        };
        if self.playing == Some(stream) {
            self.playing = None;
        }
        if let Some(cut) = self.outgoing.remove(&stream) {
            if cut.next < cut.packets.len() {
                self.tell(RoomOp::Notice {
                    text: format!(
                        "Cut off after {} s: {reason}.",
                        cut.next as u64 * u64::from(FRAME_MS) / 1000
                    ),
                    thread_root: Some(cut.event_id),
                });
            }
        }
    }
}

/// A Matrix user as a talker: named by their user ID, shown by its localpart (the
/// homeserver knows the display name; the bridge does not look it up per message).
fn matrix_talker(user: &OwnedUserId) -> Talker {
    Talker {
        name: user.to_string(),
        display_name: user.localpart().to_owned(),
        matrix_user_id: Some(user.to_string()),
    }
}

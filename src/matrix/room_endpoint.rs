//! A channel's Matrix room as an endpoint of its hub.
//!
//! Downward it records every transmission of the other endpoints for the archive
//! and mirrors the floor into the room; upward it transmits the voice messages
//! Matrix users post, through the floor queue like any other talk. Because it is
//! one endpoint, the hub never sends it its own transmissions: a voice message
//! played out to Mumble is not recorded and posted back to the room it came from.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use matrix_sdk_crypto::{AttachmentDecryptor, MediaEncryptionInfo};
use ruma::events::room::member::MembershipState;
use ruma::events::room::message::AudioMessageEventContent;
use ruma::events::room::{EncryptedFile, MediaSource};
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

use super::appservice::Handled;
use super::client::Homeserver;
use super::commands;
use super::puppets::Puppets;
use super::recent_events::RecentEvents;
use super::room_worker::RoomOp;
use crate::archive::{OutboxWaker, Recorded, RecordingMeta, RecordingWorker, WaveformSource};
use crate::live::protocol::ErrorCode;
use crate::live::LiveEndpoints;
use crate::store::Store;
use crate::transmit_policy::RoomPowerLevels;

/// What the appservice hands a room: only the events this endpoint acts on.
/// Each is marked `handled` once acted on (a voice message: once played or
/// refused), so a crash before that replays it and none after.
#[derive(Debug, Clone)]
pub enum RoomInbound {
    /// An `m.room.message` from a Matrix user (never from the bot or a puppet).
    Message {
        event_id: OwnedEventId,
        sender: OwnedUserId,
        content: Value,
        handled: Handled,
    },
    /// `user`'s membership changed (`m.room.member`).
    Member {
        event_id: OwnedEventId,
        user: OwnedUserId,
        membership: MembershipState,
        handled: Handled,
    },
    /// `m.room.power_levels` changed.
    PowerLevels {
        event_id: OwnedEventId,
        handled: Handled,
    },
    /// The room turned on encryption (`m.room.encryption`).
    Encrypted {
        event_id: OwnedEventId,
        handled: Handled,
    },
    /// An encrypted event that could not be decrypted (key withheld, never
    /// received, …): its sender is told `text` in a thread.
    Undecryptable {
        event_id: OwnedEventId,
        text: String,
        handled: Handled,
    },
    /// The room was replaced by `replacement` (`m.room.tombstone`).
    Tombstone {
        event_id: OwnedEventId,
        replacement: OwnedRoomId,
        handled: Handled,
    },
}

/// Limits on voice messages coming in from Matrix. Each one is a download of up
/// to `max_bytes` and a decode: without bounds any opted-in member could make
/// the bridge fetch many at once (issue 13.6).
#[derive(Debug, Clone, Copy)]
pub struct VoiceInLimits {
    pub max_bytes: usize,
    pub max_duration: Duration,
    /// Downloads (and decodes) of one room in flight at once.
    pub downloads: usize,
    /// Voice messages of one room waiting for a download slot; beyond, refused.
    pub waiting: usize,
    /// Voice messages one sender may post in a row…
    pub per_sender_burst: u32,
    /// …and then one per this long.
    pub per_sender_every: Duration,
}

impl VoiceInLimits {
    /// Two downloads at a time per room and eight waiting; per sender four in a
    /// row, then one every 15 s (README: "Voice messages from Matrix").
    pub fn new(max_bytes: usize, max_duration: Duration) -> Self {
        Self {
            max_bytes,
            max_duration,
            downloads: 2,
            waiting: 8,
            per_sender_burst: 4,
            per_sender_every: Duration::from_secs(15),
        }
    }
}

/// A sender's allowance of voice messages: a token bucket.
#[derive(Debug, Clone, Copy)]
struct Allowance {
    tokens: f64,
    at: Instant,
}

impl Allowance {
    /// Takes one voice message's worth, or says how long until there is one.
    fn take(&mut self, now: Instant, limits: &VoiceInLimits) -> Result<(), Duration> {
        let every = limits.per_sender_every.as_secs_f64().max(0.001);
        let burst = f64::from(limits.per_sender_burst.max(1));
        let earned = now.saturating_duration_since(self.at).as_secs_f64() / every;
        self.tokens = (self.tokens + earned).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) * every))
        }
    }

    fn is_full(&self, now: Instant, limits: &VoiceInLimits) -> bool {
        let every = limits.per_sender_every.as_secs_f64().max(0.001);
        self.tokens + now.saturating_duration_since(self.at).as_secs_f64() / every
            >= f64::from(limits.per_sender_burst.max(1))
    }
}

/// A voice message allowed in, waiting for a download slot.
struct Download {
    event_id: OwnedEventId,
    handled: Handled,
    sender: OwnedUserId,
    /// Where the file is: plain (`url`) or encrypted (`file`, decrypted here).
    source: MediaSource,
    mimetype: Option<String>,
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
    /// How recordings get their waveform (`archive.waveform`).
    pub waveform: WaveformSource,
    pub voice_in: VoiceInLimits,
    pub outbox_wake: OutboxWaker,
    pub inbound: mpsc::Receiver<RoomInbound>,
    pub ops: mpsc::UnboundedSender<RoomOp>,
    /// Ends a member's live sessions when they leave or opt out.
    pub live: LiveEndpoints,
    /// The room's power levels as the radios' gates cache them.
    pub power_levels: Arc<RoomPowerLevels>,
    /// Cancelled by this endpoint to stop its whole channel: the room was
    /// replaced, became encrypted, or the bot was removed from it.
    pub halt: CancellationToken,
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
    handled: Handled,
    sender: OwnedUserId,
    packets: Vec<Bytes>,
    next: usize,
    tx: Option<TxId>,
}

/// A downloaded and decoded voice message, back from its worker task.
struct Imported {
    event_id: OwnedEventId,
    handled: Handled,
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
    recent: RecentEvents,
    /// Downloads in flight, and those waiting for a slot.
    downloading: usize,
    waiting: VecDeque<Download>,
    allowances: HashMap<OwnedUserId, Allowance>,
    /// The spool was full at the last recording; cleared by the next one kept.
    spool_full: bool,
}

impl RoomState {
    fn new(parts: RoomEndpointParts, link: HubLink) -> Result<Self, EndpointError> {
        let (imported_tx, imported_rx) = mpsc::unbounded_channel();
        let mut ticker = tokio::time::interval(Duration::from_millis(u64::from(FRAME_MS)));
        // A late tick must not make a burst: the far side plays in real time.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let recorder = RecordingWorker::spawn(&parts.channel, parts.waveform)
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
            recent: RecentEvents::new(RECENT_EVENTS),
            spool_full: false,
            downloading: 0,
            waiting: VecDeque::new(),
            allowances: HashMap::new(),
        })
    }

    async fn run(&mut self, shutdown: CancellationToken) -> Result<(), EndpointError> {
        info!(room = %self.parts.room, "room endpoint started");
        // The rare events' work is boxed: this future lives as long as the
        // channel, and would otherwise keep room for the largest of them (a
        // Matrix event's, 1.5 KiB) all the time (issue 16). Not the 20 ms ones.
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                down = self.link.recv() => match down {
                    Ok(Downlink::Floor(event)) => Box::pin(self.on_floor(event)).await,
                    Ok(Downlink::Audio(frame)) => self.on_audio(frame),
                    Err(_) => break,
                },
                _ = self.ticker.tick(), if self.playing.is_some() => self.play_next().await,
                Some(imported) = self.imported_rx.recv() => Box::pin(self.on_imported(imported)).await,
                Some(recorded) = self.recorder.next() => Box::pin(self.on_recorded(recorded)).await,
                Some(inbound) = self.parts.inbound.recv() => Box::pin(self.on_inbound(inbound)).await,
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
                Box::pin(self.on_recorded(recorded)).await;
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
                    talker: Box::new(talker.clone()),
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
                    outgoing.handled.done().await;
                    let why = match (reason, holder) {
                        (DenyReason::Busy, Some(holder)) => {
                            format!(
                                "the channel is busy ({holder} is talking) and its queue is full"
                            )
                        }
                        (reason, _) => format!("the channel refused it ({reason})"),
                    };
                    self.tell(RoomOp::reply(
                        format!("Not transmitted: {why}. Try again in a moment."),
                        outgoing.event_id,
                    ));
                }
            }
            FloorEvent::Queued { stream, position } => {
                debug!(%stream, position, "voice message queued");
            }
            FloorEvent::Declined {
                stream, by, reason, ..
            } => {
                if let Some(outgoing) = self.outgoing.get(&stream) {
                    self.tell(RoomOp::reply(
                        format!("Not transmitted on {by}: {reason}."),
                        outgoing.event_id.clone(),
                    ));
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
            self.tell(RoomOp::notice(
                "The bridge's archive is full: transmissions are heard live but not \
                 archived here until its operator frees space.",
            ));
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
        match inbound {
            RoomInbound::Message {
                event_id,
                sender,
                content,
                handled,
            } => self.on_message(event_id, sender, content, handled).await,
            RoomInbound::Member {
                event_id,
                user,
                membership,
                handled,
            } => {
                if self.remember(&event_id) {
                    self.member_changed(user, membership).await;
                    handled.done().await;
                }
            }
            RoomInbound::PowerLevels { event_id, handled } => {
                info!(%event_id, "power levels changed; radios' gates read them afresh");
                self.parts.power_levels.invalidate();
                handled.done().await;
            }
            RoomInbound::Encrypted { event_id, handled } => {
                if self.remember(&event_id) {
                    // Nothing to switch here: every message is encrypted or not
                    // by what the room says at the moment it is sent.
                    info!(%event_id, "the room turned on encryption; the bridge posts encrypted from now on");
                    handled.done().await;
                }
            }
            RoomInbound::Undecryptable {
                event_id,
                text,
                handled,
            } => {
                if self.remember(&event_id) {
                    self.tell(RoomOp::reply(text, event_id));
                }
                handled.done().await;
            }
            RoomInbound::Tombstone {
                event_id,
                replacement,
                handled,
            } => {
                if self.remember(&event_id) {
                    handled.done().await;
                    error!(%event_id, %replacement, "the room was replaced; the channel stops");
                    self.halt(format!(
                        "This room was replaced by {replacement}: walkie-bridge stops bridging \
                         channel {} here. Its operator can point the channel at {replacement} \
                         and reload the bridge.",
                        self.parts.channel
                    ));
                }
            }
        }
    }

    /// Says `text` in the room and stops the whole channel: its hub, and with it
    /// every endpoint and live session. The notice is the room worker's last job.
    fn halt(&mut self, text: String) {
        self.tell(RoomOp::notice(text));
        self.parts.halt.cancel();
    }

    /// A member who left, was kicked or banned loses their live sessions and
    /// their voice messages still waiting at once: they no longer hear or talk.
    async fn member_changed(&mut self, user: OwnedUserId, membership: MembershipState) {
        let how = match membership {
            MembershipState::Leave => "left the room or was removed from it",
            MembershipState::Ban => "was banned from the room",
            _ => return,
        };
        if user == self.parts.bot {
            error!(%user, how, "the bot is out of the room; the channel stops");
            self.parts.halt.cancel();
            return;
        }
        info!(%user, how, "member gone; ending their live sessions");
        let why = format!("{user} {how}");
        self.parts
            .live
            .end_sessions_of(Some(&self.parts.channel), &user, ErrorCode::NotMember, &why)
            .await;
        self.drop_voice_messages_of(&user, &why).await;
    }

    /// Withdraws `user`'s voice messages waiting for (or holding) the floor.
    async fn drop_voice_messages_of(&mut self, user: &OwnedUserId, why: &str) {
        let theirs: Vec<StreamKey> = self
            .outgoing
            .iter()
            .filter(|(_, o)| &o.sender == user)
            .map(|(stream, _)| *stream)
            .collect();
        for stream in theirs {
            if self.playing == Some(stream) {
                self.playing = None;
            }
            if let Some(dropped) = self.outgoing.remove(&stream) {
                info!(event_id = %dropped.event_id, why, "voice message withdrawn");
                dropped.handled.done().await;
            }
            let _ = self.link.talk_end(stream).await;
        }
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for download in std::mem::take(&mut self.waiting) {
            if &download.sender == user {
                info!(event_id = %download.event_id, why, "voice message withdrawn");
                download.handled.done().await;
            } else {
                kept.push_back(download);
            }
        }
        self.waiting = kept;
    }

    async fn on_message(
        &mut self,
        event_id: OwnedEventId,
        sender: OwnedUserId,
        content: Value,
        handled: Handled,
    ) {
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
                        Ok(reply) => {
                            if command == commands::Command::Off {
                                self.opted_out(&sender).await;
                            }
                            reply.text
                        }
                        Err(error) => {
                            warn!(%event_id, %error, "command failed");
                            "Sorry, the bridge could not do that right now (database error).".into()
                        }
                    };
                    self.tell(RoomOp::answer(text, event_id));
                }
                handled.done().await;
            }
            Some("m.audio") => {
                self.voice_message_in(event_id, sender, &content, handled)
                    .await
            }
            _ => handled.done().await,
        }
    }

    /// `!wt off` from the room ends every opt-in of the person (see
    /// [`commands`]), so it ends their live talk and sessions on every channel
    /// now, not at their next press.
    async fn opted_out(&mut self, user: &OwnedUserId) {
        let why = "you opted out with `!wt off`";
        self.parts
            .live
            .end_sessions_of(None, user, ErrorCode::NotOptedIn, why)
            .await;
        self.drop_voice_messages_of(user, why).await;
    }

    /// `false` if the event was seen already.
    fn remember(&mut self, event_id: &OwnedEventId) -> bool {
        self.recent.insert(event_id)
    }

    /// Refuses the voice message `event_id` with `text` as a threaded notice; it
    /// is handled.
    async fn refuse(&mut self, event_id: OwnedEventId, handled: &Handled, text: String) {
        self.tell(RoomOp::reply(text, event_id));
        handled.done().await;
    }

    async fn voice_message_in(
        &mut self,
        event_id: OwnedEventId,
        sender: OwnedUserId,
        content: &Value,
        handled: Handled,
    ) {
        match commands::may_transmit(&self.parts.store, &sender, None, SystemTime::now()).await {
            Ok(true) => {}
            Ok(false) => {
                let text = "Not transmitted: you have not opted in to this walkie-talkie channel. \
                            Say `!wt on` to talk and listen here.";
                self.refuse(event_id, &handled, text.into()).await;
                return;
            }
            Err(error) => {
                // Not marked handled: a restart tries again.
                warn!(%event_id, %error, "cannot check the sender's opt-in");
                self.tell(RoomOp::reply(
                    "Not transmitted: the bridge could not check your permissions.",
                    event_id,
                ));
                return;
            }
        }
        // `url` (plain) or `file` (an encrypted attachment), as ruma reads them.
        let audio = match serde_json::from_value::<AudioMessageEventContent>(content.clone()) {
            Ok(audio) => audio,
            Err(error) => {
                debug!(%event_id, %error, "unreadable m.audio content");
                let text = "Not transmitted: the voice message is malformed (no readable `url` \
                            or `file`).";
                self.refuse(event_id, &handled, text.into()).await;
                return;
            }
        };
        if let Err(wait) = self.allow_sender(&sender) {
            let limits = self.parts.voice_in;
            let text = format!(
                "Not transmitted: too many voice messages from you in a short time (at most {} \
                 in a row, then one every {} s). Try again in {} s.",
                limits.per_sender_burst,
                limits.per_sender_every.as_secs(),
                wait.as_secs() + 1
            );
            self.refused_in(&event_id, "sender_rate");
            self.refuse(event_id, &handled, text).await;
            return;
        }
        let download = Download {
            event_id,
            handled,
            sender,
            mimetype: audio.info.and_then(|info| info.mimetype),
            source: audio.source,
        };
        if self.downloading < self.parts.voice_in.downloads.max(1) {
            self.start_download(download);
        } else if self.waiting.len() < self.parts.voice_in.waiting {
            self.waiting.push_back(download);
        } else {
            self.refused_in(&download.event_id, "room_busy");
            let text = "Not transmitted: the bridge is busy fetching other voice messages of \
                        this room. Try again in a moment.";
            self.refuse(download.event_id, &download.handled, text.into())
                .await;
        }
    }

    /// Whether `sender` may post one more voice message now; if not, how long
    /// until they may.
    fn allow_sender(&mut self, sender: &OwnedUserId) -> Result<(), Duration> {
        let now = Instant::now();
        let limits = self.parts.voice_in;
        // Full allowances say nothing a new one would not: forget them, so the
        // map stays as small as the set of recent senders.
        if self.allowances.len() > 1024 {
            self.allowances.retain(|_, a| !a.is_full(now, &limits));
        }
        self.allowances
            .entry(sender.clone())
            .or_insert(Allowance {
                tokens: f64::from(limits.per_sender_burst.max(1)),
                at: now,
            })
            .take(now, &limits)
    }

    fn refused_in(&self, event_id: &OwnedEventId, reason: &'static str) {
        info!(%event_id, reason, "voice message refused before download");
        metrics::counter!("walkie_voice_in_refused_total", "channel" => self.parts.channel.clone(), "reason" => reason)
            .increment(1);
    }

    fn start_download(&mut self, download: Download) {
        self.downloading += 1;
        let Download {
            event_id,
            handled,
            sender,
            source,
            mimetype,
        } = download;
        let homeserver = self.parts.homeserver.clone();
        let limits = self.parts.voice_in;
        let done = self.imported_tx.clone();
        let channel = self.parts.channel.clone();
        tokio::spawn(async move {
            let (url, file) = match source {
                MediaSource::Plain(url) => (url, None),
                MediaSource::Encrypted(file) => (file.url.clone(), Some(file)),
            };
            let result = match homeserver.download(url.as_str(), limits.max_bytes).await {
                Ok(bytes) => tokio::task::spawn_blocking(move || -> Result<Vec<Bytes>, String> {
                    let bytes = match file {
                        Some(file) => decrypt_attachment(&bytes, *file).inspect_err(|_| {
                            metrics::counter!("walkie_voice_in_bad_attachments_total", "channel" => channel)
                                .increment(1);
                        })?,
                        None => bytes,
                    };
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
                handled,
                sender,
                result,
            });
        });
    }

    async fn on_imported(&mut self, imported: Imported) {
        let Imported {
            event_id,
            handled,
            sender,
            result,
        } = imported;
        // A slot is free: the next waiting download takes it.
        self.downloading = self.downloading.saturating_sub(1);
        if let Some(next) = self.waiting.pop_front() {
            self.start_download(next);
        }
        let packets = match result {
            Ok(packets) if !packets.is_empty() => packets,
            Ok(_) => {
                metrics::counter!("walkie_voice_in_failed_total", "channel" => self.parts.channel.clone())
                    .increment(1);
                let text = "Not transmitted: the voice message holds no audio.";
                self.refuse(event_id, &handled, text.into()).await;
                return;
            }
            Err(reason) => {
                metrics::counter!("walkie_voice_in_failed_total", "channel" => self.parts.channel.clone())
                    .increment(1);
                warn!(%event_id, %reason, "voice message not transmitted");
                self.refuse(event_id, &handled, format!("Not transmitted: {reason}."))
                    .await;
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
                handled,
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
            talker: Box::new(talker),
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
            done.handled.done().await;
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
            // Played as far as the floor let it: handled, not replayed.
            cut.handled.done().await;
            if cut.next < cut.packets.len() {
                self.tell(RoomOp::reply(
                    format!(
                        "Cut off after {} s: {reason}.",
                        cut.next as u64 * u64::from(FRAME_MS) / 1000
                    ),
                    cut.event_id,
                ));
            }
        }
    }
}

/// Decrypts an encrypted attachment (AES-256-CTR, `file` of an `m.audio`) with
/// matrix-sdk-crypto's decryptor, which checks the SHA-256 of the ciphertext at
/// the end: nothing decrypted is returned unless it matches.
fn decrypt_attachment(ciphertext: &[u8], file: EncryptedFile) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut reader = ciphertext;
    let mut decryptor = AttachmentDecryptor::new(&mut reader, MediaEncryptionInfo::from(file))
        .map_err(|e| format!("its encrypted file cannot be decrypted ({e})"))?;
    let mut plain = Vec::with_capacity(ciphertext.len());
    // Reading from memory cannot fail: the only error is the hash check.
    decryptor.read_to_end(&mut plain).map_err(|_| {
        "its encrypted file does not match its SHA-256 hash (damaged or altered on the way)"
            .to_owned()
    })?;
    Ok(plain)
}

/// A Matrix user as a talker: named by their user ID, shown by its localpart (the
/// homeserver knows the display name; the bridge does not look it up per message).
fn matrix_talker(user: &OwnedUserId) -> Talker {
    Talker {
        name: user.to_string(),
        display_name: user.localpart().to_owned(),
        matrix_user_id: Some(user.to_string()),
        // The homeserver authenticated the account the name is.
        identity: walkie_endpoint::Identity::Endpoint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encrypts `plain` as a client would (the crate's encryptor), as the `file`
    /// of an `m.audio`.
    fn encrypted_file(plain: &[u8]) -> (Vec<u8>, EncryptedFile) {
        use std::io::Read;
        let mut reader = plain;
        let mut encryptor = matrix_sdk_crypto::AttachmentEncryptor::new(&mut reader);
        let mut ciphertext = Vec::new();
        encryptor.read_to_end(&mut ciphertext).expect("in memory");
        let info = encryptor.finish();
        let mut json = serde_json::to_value(&info).expect("info");
        json["url"] = "mxc://walkie.test/media".into();
        let file: EncryptedFile = serde_json::from_value(json).expect("an EncryptedFile");
        (ciphertext, file)
    }

    #[test]
    fn an_encrypted_attachment_decrypts_and_a_changed_one_is_refused() {
        let plain = b"OggS pretend voice message".repeat(100);
        let (ciphertext, file) = encrypted_file(&plain);
        assert_ne!(ciphertext, plain);
        assert_eq!(
            decrypt_attachment(&ciphertext, file.clone()).expect("decrypts"),
            plain
        );
        let mut altered = ciphertext.clone();
        altered[10] ^= 1;
        let error = decrypt_attachment(&altered, file).expect_err("hash mismatch");
        assert!(error.contains("SHA-256"), "{error}");
    }

    #[test]
    fn a_voice_message_names_its_plain_or_encrypted_file() {
        let (_, file) = encrypted_file(b"x");
        let mut content = serde_json::json!({
            "msgtype": "m.audio", "body": "Voice message",
            "info": {"mimetype": "audio/ogg"},
            "file": serde_json::to_value(&file).expect("file"),
        });
        let audio: AudioMessageEventContent =
            serde_json::from_value(content.clone()).expect("encrypted m.audio");
        assert!(matches!(audio.source, MediaSource::Encrypted(_)));
        assert_eq!(
            audio.info.and_then(|i| i.mimetype).as_deref(),
            Some("audio/ogg")
        );
        content.as_object_mut().expect("object").remove("file");
        content["url"] = "mxc://walkie.test/plain".into();
        let audio: AudioMessageEventContent =
            serde_json::from_value(content.clone()).expect("plain m.audio");
        assert!(matches!(audio.source, MediaSource::Plain(_)));
        content.as_object_mut().expect("object").remove("url");
        assert!(serde_json::from_value::<AudioMessageEventContent>(content).is_err());
    }

    #[test]
    fn a_sender_gets_the_burst_then_one_per_period() {
        let limits = VoiceInLimits::new(1024, Duration::from_secs(60));
        let start = Instant::now();
        let mut allowance = Allowance {
            tokens: f64::from(limits.per_sender_burst),
            at: start,
        };
        for n in 0..limits.per_sender_burst {
            assert!(allowance.take(start, &limits).is_ok(), "message {n}");
        }
        let wait = allowance.take(start, &limits).expect_err("over the burst");
        assert_eq!(wait, limits.per_sender_every);
        let later = start + limits.per_sender_every;
        assert!(
            allowance.take(later, &limits).is_ok(),
            "one more a period on"
        );
        assert!(allowance.take(later, &limits).is_err());
        assert!(!allowance.is_full(later, &limits));
        let much_later = later + limits.per_sender_every * 10;
        assert!(
            allowance.is_full(much_later, &limits),
            "refills to the burst only"
        );
    }
}

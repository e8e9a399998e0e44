//! One channel's live clients as one endpoint of its hub.
//!
//! An actor owns the hub link and every logged-on client of the channel; the
//! WebSocket sessions talk to it through one inbox. Each client's press is its own
//! stream on the hub, so two people pressing at once queue like any two talkers.
//!
//! The hub never sends an endpoint its own transmission back, and every live client
//! of a channel is on this one endpoint: so when a live client holds the floor, this
//! actor itself passes that client's audio to the other live clients (the same
//! binary frames, untouched), and tells them who talks. Everything else they hear
//! comes from the hub.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::ws::{Message, Utf8Bytes};
use bytes::Bytes;
use ruma::{OwnedRoomId, OwnedUserId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use walkie_endpoint::{
    AudioFrame, DenyReason, DownFrame, Downlink, Endpoint, EndpointError, EndpointFuture,
    EndpointId, FloorEvent, HubClosed, HubLink, Priority, ReleaseReason, StreamKey, TalkKind,
    Talker, TxId,
};

use super::auth::{Authenticator, Identity, Refusal};
use super::protocol::{
    encode_frame, AudioPacket, ErrorCode, Event, FloorState, FloorUpdate, Logon, Person,
    StartStream, StopStream, Success, PACKET_MS, SAMPLE_RATE,
};
use super::LiveSettings;

pub(crate) type ClientId = u64;

/// Stream ids, unique over the bridge's live endpoints: the bridge's own streams
/// (who talks) and the clients' presses draw from one counter, so a connection
/// logged on to several channels never sees one id twice.
#[derive(Debug)]
pub(crate) struct StreamIds(AtomicU32);

impl StreamIds {
    pub(crate) fn new() -> Self {
        Self(AtomicU32::new(1))
    }

    pub(crate) fn next(&self) -> u32 {
        loop {
            let id = self.0.fetch_add(1, Ordering::Relaxed);
            // Zero stays unused so a client can treat it as "no stream" (after
            // four billion streams the counter wraps through it).
            if id != 0 {
                return id;
            }
        }
    }
}

/// What a session tells its channel. Logons and starts are boxed: they are
/// rare and large (128 and 96 bytes), every slot of a channel's inbox is the size
/// of the largest variant, and tokio's `mpsc` allocates 32 slots when a channel
/// is made, so every idle channel paid for them.
#[derive(Debug)]
pub(crate) enum ToChannel {
    Logon {
        logon: Box<Logon>,
        out: mpsc::Sender<Message>,
        reply: oneshot::Sender<Result<Welcome, Refusal>>,
    },
    /// A press; the session chose `stream_id` (unique over the bridge, so a
    /// connection logged on to several channels tells their streams apart).
    Start {
        client: ClientId,
        start: Box<StartStream>,
        stream_id: u32,
    },
    Stop {
        client: ClientId,
        stop: StopStream,
    },
    /// `raw` is the frame as received, passed on to the other live clients as is.
    Audio {
        client: ClientId,
        packet: AudioPacket,
        raw: Bytes,
    },
    Gone {
        client: ClientId,
    },
    /// `user` may no longer be here (left, kicked, banned, opted out): their
    /// clients are told `why` and dropped, their talk ends.
    EndSessionsOf {
        user: OwnedUserId,
        code: ErrorCode,
        why: String,
    },
}

/// A logon the channel accepted.
#[derive(Debug)]
pub(crate) struct Welcome {
    pub client: ClientId,
    pub identity: Identity,
    /// Cancelled when the channel drops the client because it fell too far
    /// behind: the whole connection is too slow.
    pub kicked: CancellationToken,
    /// Cancelled when the channel ends this logon because the user may no longer
    /// be here (left the room, opted out); the client was told why.
    pub ended: CancellationToken,
}

pub struct LiveEndpoint {
    id: EndpointId,
    channel: String,
    room: OwnedRoomId,
    auth: Arc<Authenticator>,
    settings: LiveSettings,
    inbox: mpsc::Receiver<ToChannel>,
    stream_ids: Arc<StreamIds>,
}

impl LiveEndpoint {
    pub(crate) fn new(
        id: EndpointId,
        channel: String,
        room: OwnedRoomId,
        auth: Arc<Authenticator>,
        settings: LiveSettings,
        inbox: mpsc::Receiver<ToChannel>,
        stream_ids: Arc<StreamIds>,
    ) -> Self {
        Self {
            id,
            channel,
            room,
            auth,
            settings,
            inbox,
            stream_ids,
        }
    }
}

impl Endpoint for LiveEndpoint {
    fn id(&self) -> &EndpointId {
        &self.id
    }

    fn run(self: Box<Self>, link: HubLink, shutdown: CancellationToken) -> EndpointFuture {
        Box::pin(async move {
            let mut actor = Actor::new(*self, link);
            actor.run(shutdown).await;
            Ok::<(), EndpointError>(())
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnState {
    /// The opt-in is being checked again before the request goes to the hub.
    Checking,
    Requested,
    Queued,
    Granted(TxId),
}

#[derive(Debug, Clone, Copy)]
struct Own {
    id: u32,
    state: OwnState,
}

struct Client {
    identity: Identity,
    out: mpsc::Sender<Message>,
    kicked: CancellationToken,
    ended: CancellationToken,
    stream: Option<Own>,
    /// The last stream id this client sent frames for that it does not own;
    /// reported once, not fifty times a second.
    reported_stream: Option<u32>,
}

/// The transmission the live clients hear right now.
struct Hearing {
    tx: TxId,
    stream_id: u32,
    /// Set when a live client of this channel talks (its audio is passed on here).
    local: Option<ClientId>,
    /// `on_floor taken` and `on_stream_start`, kept for clients who log on mid-talk.
    taken: Utf8Bytes,
    start: Utf8Bytes,
}

struct LogonDone {
    result: Result<Identity, Refusal>,
    out: mpsc::Sender<Message>,
    reply: oneshot::Sender<Result<Welcome, Refusal>>,
}

struct CheckDone {
    client: ClientId,
    stream_id: u32,
    /// Why the press is refused; `None` when it may go to the hub.
    refused: Option<String>,
}

struct Actor {
    endpoint: LiveEndpoint,
    link: HubLink,
    clients: HashMap<ClientId, Client>,
    /// Stream ids of live clients' own streams.
    streams: HashMap<u32, ClientId>,
    next_client: ClientId,
    hearing: Option<Hearing>,
    logons: JoinSet<LogonDone>,
    checks: JoinSet<CheckDone>,
    /// Talks of clients dropped for being slow, to end on the hub after the
    /// step that dropped them (sending to a client cannot wait for the hub).
    ending: Vec<StreamKey>,
    metrics: Metrics,
}

struct Metrics {
    frames_in: metrics::Counter,
    frames_out_dropped: metrics::Counter,
    frames_refused: metrics::Counter,
    kicked: metrics::Counter,
}

impl Metrics {
    fn new(channel: &str) -> Self {
        let c = channel.to_owned();
        Self {
            frames_in: metrics::counter!("walkie_live_frames_in_total", "channel" => c.clone()),
            frames_out_dropped: metrics::counter!("walkie_live_frames_dropped_total", "channel" => c.clone()),
            frames_refused: metrics::counter!("walkie_live_frames_refused_total", "channel" => c.clone()),
            kicked: metrics::counter!("walkie_live_clients_dropped_total", "channel" => c),
        }
    }
}

impl Actor {
    fn new(endpoint: LiveEndpoint, link: HubLink) -> Self {
        let metrics = Metrics::new(&endpoint.channel);
        Self {
            endpoint,
            link,
            clients: HashMap::new(),
            streams: HashMap::new(),
            next_client: 1,
            hearing: None,
            logons: JoinSet::new(),
            checks: JoinSet::new(),
            ending: Vec::new(),
            metrics,
        }
    }

    async fn run(&mut self, shutdown: CancellationToken) {
        info!(room = %self.endpoint.room, "live endpoint started");
        self.link.set_audio_wanted(!self.clients.is_empty());
        loop {
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                down = self.link.recv() => match down {
                    Ok(Downlink::Floor(event)) => self.on_floor(event).await,
                    Ok(Downlink::Audio(frame)) => {
                        self.on_hub_audio(frame);
                        Ok(())
                    }
                    Err(closed) => Err(closed),
                },
                Some(message) = self.endpoint.inbox.recv() => self.on_message(message).await,
                Some(done) = self.logons.join_next(), if !self.logons.is_empty() => match done {
                    Ok(done) => {
                        self.logon_done(done);
                        Ok(())
                    }
                    Err(error) => {
                        warn!(%error, "a logon check failed");
                        Ok(())
                    }
                },
                Some(done) = self.checks.join_next(), if !self.checks.is_empty() => match done {
                    Ok(done) => self.check_done(done).await,
                    Err(error) => {
                        warn!(%error, "an opt-in check failed");
                        Ok(())
                    }
                },
            };
            if step.is_err() || self.end_dropped_talks().await.is_err() {
                break;
            }
        }
        // Pending checks hold nothing that must finish; dropping them cancels them.
        self.logons.abort_all();
        self.checks.abort_all();
        info!(clients = self.clients.len(), "live endpoint stopped");
    }

    /// Ends the talks of clients dropped in the last step: their floor goes back
    /// now, not at the idle release.
    async fn end_dropped_talks(&mut self) -> Result<(), HubClosed> {
        for stream in std::mem::take(&mut self.ending) {
            info!(%stream, "ending the talk of a dropped live client");
            self.link.talk_end(stream).await?;
        }
        Ok(())
    }

    // ---- to clients ------------------------------------------------------

    fn send_text(&mut self, client: ClientId, text: Utf8Bytes) {
        let Some(c) = self.clients.get(&client) else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = c.out.try_send(Message::Text(text)) {
            // A control message cannot be dropped without the page showing a
            // wrong floor; a client this far behind is better off reconnecting.
            warn!(client, user = %c.identity.user_id, "live client too slow; dropped");
            self.metrics.kicked.increment(1);
            c.kicked.cancel();
            if let Some(stream) = self.drop_client(client) {
                self.ending.push(stream);
            }
        }
    }

    fn send_event(&mut self, client: ClientId, event: &Event) {
        self.send_text(client, event.to_json().into());
    }

    fn broadcast(&mut self, text: &Utf8Bytes, except: Option<ClientId>) {
        let ids: Vec<ClientId> = self
            .clients
            .keys()
            .copied()
            .filter(|id| Some(*id) != except)
            .collect();
        for id in ids {
            self.send_text(id, text.clone());
        }
    }

    fn broadcast_audio(&mut self, frame: &Bytes, except: Option<ClientId>) {
        for (id, client) in &self.clients {
            if Some(*id) == except {
                continue;
            }
            // A full queue loses this frame only: the page's jitter buffer conceals it.
            if client.out.try_send(Message::Binary(frame.clone())).is_err() {
                self.metrics.frames_out_dropped.increment(1);
            }
        }
    }

    // ---- from the hub ----------------------------------------------------

    async fn on_floor(&mut self, event: FloorEvent) -> Result<(), HubClosed> {
        match event {
            FloorEvent::Granted { stream, tx } => self.granted(stream, tx).await?,
            FloorEvent::Denied {
                stream,
                reason,
                holder,
            } => {
                let Some((client, own)) = self.take_own(stream) else {
                    return Ok(());
                };
                let mut update = self
                    .floor(FloorState::Denied)
                    .stream(own.id)
                    .reason(deny_reason(reason));
                update.holder = holder.as_ref().map(person);
                info!(client, stream = own.id, %reason, "live talk denied");
                self.send_event(client, &update.event());
            }
            FloorEvent::Queued { stream, position } => {
                let Some(client) = self.owner(stream) else {
                    return Ok(());
                };
                if let Some(own) = self
                    .clients
                    .get_mut(&client)
                    .and_then(|c| c.stream.as_mut())
                {
                    own.state = OwnState::Queued;
                }
                let mut update = self.floor(FloorState::Queued);
                update.stream_id = u32::try_from(stream.0).ok();
                update.position = Some(position);
                self.send_event(client, &update.event());
            }
            FloorEvent::Taken {
                tx, talker, source, ..
            } => {
                let stream_id = self.allocate_stream();
                let hearing = self.hearing_for(tx, stream_id, None, &talker, &source);
                self.broadcast(&hearing.taken, None);
                self.broadcast(&hearing.start, None);
                self.hearing = Some(hearing);
            }
            FloorEvent::Released { tx, reason } => self.released(tx, reason),
            FloorEvent::Idle => {
                let idle: Utf8Bytes = self.floor(FloorState::Idle).event().to_json().into();
                self.broadcast(&idle, None);
            }
            FloorEvent::Declined {
                tx,
                stream,
                by,
                reason,
            } => {
                let Some(client) = self.owner(stream) else {
                    return Ok(());
                };
                let mut update = self.floor(FloorState::Declined).tx(tx).reason(reason);
                update.stream_id = u32::try_from(stream.0).ok();
                update.by = Some(by.to_string());
                self.send_event(client, &update.event());
            }
        }
        Ok(())
    }

    async fn granted(&mut self, stream: StreamKey, tx: TxId) -> Result<(), HubClosed> {
        let Some(client) = self.owner(stream) else {
            // The client let go (or left) before the grant came; give it back now
            // rather than after the idle timeout.
            debug!(%stream, %tx, "grant for a stream nobody holds any more");
            return self.link.talk_end(stream).await;
        };
        let Some(c) = self.clients.get_mut(&client) else {
            return Ok(());
        };
        let Some(own) = c.stream.as_mut() else {
            return Ok(());
        };
        own.state = OwnState::Granted(tx);
        let stream_id = own.id;
        let talker = talker_of(&c.identity);
        info!(client, stream = stream_id, %tx, user = %c.identity.user_id, "live talk granted");
        let granted = FloorUpdate::new(FloorState::Granted)
            .channel(&self.endpoint.channel)
            .stream(stream_id)
            .tx(tx);
        self.send_event(client, &granted.event());
        let source = self.endpoint.id.clone();
        let hearing = self.hearing_for(tx, stream_id, Some(client), &talker, &source);
        self.broadcast(&hearing.taken, Some(client));
        self.broadcast(&hearing.start, Some(client));
        self.hearing = Some(hearing);
        Ok(())
    }

    fn released(&mut self, tx: TxId, reason: ReleaseReason) {
        let Some(hearing) = self.hearing.take_if(|h| h.tx == tx) else {
            return;
        };
        let stop: Utf8Bytes = Event::OnStreamStop {
            stream_id: hearing.stream_id,
            channel: self.endpoint.channel.clone(),
            reason: reason.to_string(),
        }
        .to_json()
        .into();
        self.broadcast(&stop, hearing.local);
        let Some(client) = hearing.local else {
            return;
        };
        // The holder may have let go already (its own stream is then gone);
        // it still learns how its transmission ended.
        if let Some(c) = self.clients.get_mut(&client) {
            if c.stream.is_some_and(|own| own.id == hearing.stream_id) {
                c.stream = None;
            }
        }
        self.streams.remove(&hearing.stream_id);
        let state = match reason {
            ReleaseReason::TalkerDone | ReleaseReason::IdleTimeout => FloorState::Released,
            _ => FloorState::Revoked,
        };
        let update = self
            .floor(state)
            .stream(hearing.stream_id)
            .tx(tx)
            .reason(reason.to_string());
        info!(client, stream = hearing.stream_id, %tx, %reason, "live talk ended");
        self.send_event(client, &update.event());
    }

    fn on_hub_audio(&mut self, frame: DownFrame) {
        let Some(hearing) = self.hearing.as_ref().filter(|h| h.tx == frame.tx) else {
            return;
        };
        let bytes = encode_frame(hearing.stream_id, frame.frame.seq, &frame.frame.opus);
        self.broadcast_audio(&bytes, None);
    }

    fn hearing_for(
        &self,
        tx: TxId,
        stream_id: u32,
        local: Option<ClientId>,
        talker: &Talker,
        source: &EndpointId,
    ) -> Hearing {
        let mut taken = self.floor(FloorState::Taken).tx(tx);
        taken.talker = Some(person(talker));
        taken.source = Some(source.to_string());
        let start = Event::OnStreamStart {
            stream_id,
            kind: "audio",
            codec: "opus",
            sample_rate: SAMPLE_RATE,
            packet_duration: PACKET_MS,
            channel: self.endpoint.channel.clone(),
            from: talker.name.clone(),
            display_name: talker.display_name.clone(),
            matrix_user_id: talker.matrix_user_id.clone(),
            source: source.to_string(),
            tx_id: tx.to_string(),
            replay: false,
        };
        Hearing {
            tx,
            stream_id,
            local,
            taken: taken.event().to_json().into(),
            start: start.to_json().into(),
        }
    }

    // ---- from sessions ---------------------------------------------------

    async fn on_message(&mut self, message: ToChannel) -> Result<(), HubClosed> {
        match message {
            ToChannel::Logon { logon, out, reply } => self.logon(*logon, out, reply),
            ToChannel::Start {
                client,
                start,
                stream_id,
            } => self.start(client, *start, stream_id),
            ToChannel::Stop { client, stop } => self.stop(client, stop).await?,
            ToChannel::Audio {
                client,
                packet,
                raw,
            } => self.client_audio(client, packet, raw)?,
            ToChannel::Gone { client } => {
                if let Some(stream) = self.drop_client(client) {
                    self.link.talk_end(stream).await?;
                }
            }
            ToChannel::EndSessionsOf { user, code, why } => {
                self.end_sessions_of(&user, code, &why).await?
            }
        }
        Ok(())
    }

    fn logon(
        &mut self,
        logon: Logon,
        out: mpsc::Sender<Message>,
        reply: oneshot::Sender<Result<Welcome, Refusal>>,
    ) {
        if self.clients.len() + self.logons.len() >= self.endpoint.settings.max_clients {
            metrics::counter!("walkie_live_logons_total", "result" => "too_many_clients")
                .increment(1);
            let _ = reply.send(Err(Refusal::new(
                ErrorCode::TooManyClients,
                format!(
                    "this channel already has {} live clients (live.max_clients)",
                    self.endpoint.settings.max_clients
                ),
            )));
            return;
        }
        let auth = Arc::clone(&self.endpoint.auth);
        let room = self.endpoint.room.clone();
        self.logons.spawn(async move {
            let result = auth.logon(&room, &logon, SystemTime::now()).await;
            LogonDone { result, out, reply }
        });
    }

    fn logon_done(&mut self, done: LogonDone) {
        let identity = match done.result {
            Ok(identity) => identity,
            Err(refusal) => {
                info!(code = refusal.code.as_str(), reason = %refusal.message, "live logon refused");
                metrics::counter!("walkie_live_logons_total", "result" => refusal.code.as_str())
                    .increment(1);
                let _ = done.reply.send(Err(refusal));
                return;
            }
        };
        let client = self.next_client;
        self.next_client += 1;
        let kicked = CancellationToken::new();
        let ended = CancellationToken::new();
        let welcome = Welcome {
            client,
            identity: identity.clone(),
            kicked: kicked.clone(),
            ended: ended.clone(),
        };
        // The session writes the logon's answer when it gets this, before anything
        // queued below, so the client hears "success" before the channel status.
        if done.reply.send(Ok(welcome)).is_err() {
            return;
        }
        metrics::counter!("walkie_live_logons_total", "result" => "ok").increment(1);
        info!(client, user = %identity.user_id, device = %identity.device_id, "live client logged on");
        self.clients.insert(
            client,
            Client {
                identity,
                out: done.out,
                kicked,
                ended,
                stream: None,
                reported_stream: None,
            },
        );
        metrics::gauge!("walkie_live_clients", "channel" => self.endpoint.channel.clone())
            .set(self.clients.len() as f64);
        // Audio is queued here only while someone can hear it.
        self.link.set_audio_wanted(!self.clients.is_empty());
        let status = Event::OnChannelStatus {
            channel: self.endpoint.channel.clone(),
            status: "online",
            room_id: Some(self.endpoint.room.to_string()),
            users_online: Some(self.clients.len()),
            reason: None,
        };
        self.send_event(client, &status);
        match self
            .hearing
            .as_ref()
            .map(|h| (h.taken.clone(), h.start.clone()))
        {
            Some((taken, start)) => {
                self.send_text(client, taken);
                self.send_text(client, start);
            }
            None => {
                let idle = self.floor(FloorState::Idle).event();
                self.send_event(client, &idle);
            }
        }
    }

    fn start(&mut self, client: ClientId, start: StartStream, stream_id: u32) {
        let Some(c) = self.clients.get(&client) else {
            return;
        };
        if let Some(why) = start.unsupported() {
            self.send_event(
                client,
                &self.error(Some(start.seq), ErrorCode::UnsupportedCodec, why),
            );
            return;
        }
        if let Some(own) = c.stream {
            self.send_event(
                client,
                &self.error(
                    Some(start.seq),
                    ErrorCode::StreamActive,
                    format!("stream {} is still active; stop it first", own.id),
                ),
            );
            return;
        }
        let user = c.identity.user_id.clone();
        let device = c.identity.device_id.clone();
        if let Some(c) = self.clients.get_mut(&client) {
            c.stream = Some(Own {
                id: stream_id,
                state: OwnState::Checking,
            });
        }
        self.streams.insert(stream_id, client);
        let mut success = Success::new(start.seq);
        success.channel = Some(self.endpoint.channel.clone());
        success.stream_id = Some(stream_id);
        self.send_text(client, success.to_json().into());
        let auth = Arc::clone(&self.endpoint.auth);
        let room = self.endpoint.room.clone();
        self.checks.spawn(async move {
            let refused = auth
                .may_talk(&room, &user, &device, SystemTime::now())
                .await
                .err();
            CheckDone {
                client,
                stream_id,
                refused,
            }
        });
    }

    async fn check_done(&mut self, done: CheckDone) -> Result<(), HubClosed> {
        let Some(c) = self.clients.get_mut(&done.client) else {
            return Ok(());
        };
        let still_waiting = c
            .stream
            .is_some_and(|own| own.id == done.stream_id && own.state == OwnState::Checking);
        if !still_waiting {
            return Ok(());
        }
        if let Some(why) = done.refused {
            c.stream = None;
            self.streams.remove(&done.stream_id);
            let denied = FloorUpdate::new(FloorState::Denied)
                .channel(&self.endpoint.channel)
                .stream(done.stream_id)
                .reason(why);
            self.send_event(done.client, &denied.event());
            return Ok(());
        }
        if let Some(own) = c.stream.as_mut() {
            own.state = OwnState::Requested;
        }
        let talker = talker_of(&c.identity);
        self.link
            .talk_start(
                StreamKey(u64::from(done.stream_id)),
                talker,
                Priority::Normal,
                TalkKind::Live,
            )
            .await
    }

    async fn stop(&mut self, client: ClientId, stop: StopStream) -> Result<(), HubClosed> {
        let Some(c) = self.clients.get_mut(&client) else {
            return Ok(());
        };
        let Some(own) = c.stream.filter(|own| own.id == stop.stream_id) else {
            self.send_event(
                client,
                &self.error(
                    Some(stop.seq),
                    ErrorCode::UnknownStream,
                    format!("stream {} is not your active stream", stop.stream_id),
                ),
            );
            return Ok(());
        };
        c.stream = None;
        // A granted stream stays known until its release, which the client hears.
        if !matches!(own.state, OwnState::Granted(_)) {
            self.streams.remove(&own.id);
        }
        let mut success = Success::new(stop.seq);
        success.channel = Some(self.endpoint.channel.clone());
        self.send_text(client, success.to_json().into());
        if own.state != OwnState::Checking {
            self.link.talk_end(StreamKey(u64::from(own.id))).await?;
        }
        Ok(())
    }

    fn client_audio(
        &mut self,
        client: ClientId,
        packet: AudioPacket,
        raw: Bytes,
    ) -> Result<(), HubClosed> {
        let Some(c) = self.clients.get_mut(&client) else {
            return Ok(());
        };
        match c.stream {
            Some(Own {
                id,
                state: OwnState::Granted(_),
            }) if id == packet.stream_id => {
                self.metrics.frames_in.increment(1);
                self.link.audio(
                    StreamKey(u64::from(id)),
                    AudioFrame::opus(packet.packet_id, packet.opus),
                )?;
                self.broadcast_audio(&raw, Some(client));
            }
            Some(own) if own.id == packet.stream_id => {
                // Sent before the grant: the page should not, but a frame in flight
                // at the moment of a revoke lands here too.
                self.metrics.frames_refused.increment(1);
            }
            _ => {
                self.metrics.frames_refused.increment(1);
                if c.reported_stream != Some(packet.stream_id) {
                    c.reported_stream = Some(packet.stream_id);
                    let event = Event::channel_error(
                        None,
                        &self.endpoint.channel,
                        ErrorCode::UnknownStream,
                        format!(
                            "audio for stream {} which is not yours or has ended; frames dropped",
                            packet.stream_id
                        ),
                    );
                    self.send_event(client, &event);
                }
            }
        }
        Ok(())
    }

    /// Every client of `user` is told `why`, loses its talk at once and is
    /// disconnected.
    async fn end_sessions_of(
        &mut self,
        user: &OwnedUserId,
        code: ErrorCode,
        why: &str,
    ) -> Result<(), HubClosed> {
        let theirs: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| &c.identity.user_id == user)
            .map(|(id, _)| *id)
            .collect();
        for client in theirs {
            info!(client, %user, why, "live session ended");
            self.send_event(client, &self.error(None, code, why));
            if let Some(c) = self.clients.get(&client) {
                c.ended.cancel();
            }
            if let Some(stream) = self.drop_client(client) {
                self.link.talk_end(stream).await?;
            }
        }
        Ok(())
    }

    // ---- bookkeeping -----------------------------------------------------

    /// Removes a client; returns its stream when the hub must hear it ended.
    fn drop_client(&mut self, client: ClientId) -> Option<StreamKey> {
        let c = self.clients.remove(&client)?;
        metrics::gauge!("walkie_live_clients", "channel" => self.endpoint.channel.clone())
            .set(self.clients.len() as f64);
        // Audio is queued here only while someone can hear it.
        self.link.set_audio_wanted(!self.clients.is_empty());
        info!(client, user = %c.identity.user_id, "live client left");
        let own = c.stream?;
        if !matches!(own.state, OwnState::Granted(_)) {
            self.streams.remove(&own.id);
        }
        (own.state != OwnState::Checking).then_some(StreamKey(u64::from(own.id)))
    }

    fn owner(&self, stream: StreamKey) -> Option<ClientId> {
        let id = u32::try_from(stream.0).ok()?;
        let client = *self.streams.get(&id)?;
        self.clients
            .get(&client)
            .and_then(|c| c.stream)
            .filter(|own| own.id == id)
            .map(|_| client)
    }

    fn take_own(&mut self, stream: StreamKey) -> Option<(ClientId, Own)> {
        let client = self.owner(stream)?;
        let own = self.clients.get_mut(&client)?.stream.take()?;
        self.streams.remove(&own.id);
        Some((client, own))
    }

    fn allocate_stream(&mut self) -> u32 {
        self.endpoint.stream_ids.next()
    }

    /// An `on_floor` of this channel.
    fn floor(&self, state: FloorState) -> FloorUpdate {
        FloorUpdate::new(state).channel(&self.endpoint.channel)
    }

    /// An `on_error` about this channel.
    fn error(&self, seq: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Event {
        Event::channel_error(seq, &self.endpoint.channel, code, message)
    }
}

fn talker_of(identity: &Identity) -> Talker {
    Talker {
        name: identity.user_id.to_string(),
        display_name: identity.display_name.clone(),
        matrix_user_id: Some(identity.user_id.to_string()),
        // The homeserver authenticated the account the name is.
        identity: walkie_endpoint::Identity::Endpoint,
    }
}

fn person(talker: &Talker) -> Person {
    Person {
        name: talker.name.clone(),
        display_name: talker.display_name.clone(),
        matrix_user_id: talker.matrix_user_id.clone(),
    }
}

fn deny_reason(reason: DenyReason) -> &'static str {
    match reason {
        DenyReason::Busy => "busy",
        DenyReason::NotPermitted => "not permitted",
        DenyReason::RateLimited => "rate limited",
    }
}

#[cfg(test)]
mod tests {
    use super::ToChannel;

    /// Every slot of a channel's inbox is this size (see [`ToChannel`]).
    #[test]
    fn a_message_to_a_channel_is_small() {
        let size = std::mem::size_of::<ToChannel>();
        assert!(size <= 88, "ToChannel is {size} bytes");
    }
}

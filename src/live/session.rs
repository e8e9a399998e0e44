//! One WebSocket connection: reads the client's messages, checks them, hands them
//! to its channel, and writes back what the channel has for it.
//!
//! A bad message never ends the connection: it is logged (rate-limited),
//! counted (`walkie_live_bad_messages_total`) and answered with `on_error`. The
//! connection ends when the client closes it, when the channel stops, when the
//! client falls too far behind, at shutdown — and, because anyone can open one
//! (see [`super::limits`]): when it has not logged on in `live.logon_timeout_s`,
//! after `live.max_failed_logons` refused logons, when nothing (not even a pong)
//! came for `live.idle_timeout_s` or a write waited that long, or when a newer
//! connection took its place before it logged on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::future::{abortable, AbortHandle, BoxFuture, FutureExt};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Span};

use super::auth::{unix_ms, Refusal};
use super::endpoint::{ClientId, StreamIds, ToChannel, Welcome};
use super::history::{Archived, History, Recording, DEFAULT_HISTORY};
use super::limits::{clip, Permit, BAD_MESSAGE_WARNINGS, CLIP};
use super::protocol::{
    encode_frame, parse_command, parse_frame, BadMessage, Command, ErrorCode, Event, GetHistory,
    Logoff, Logon, PlayRecording, StartStream, StopStream, Success, PACKET_MS, SAMPLE_RATE,
};

/// Messages waiting to be written to one client: five seconds of audio. A client
/// further behind loses audio frames; one that cannot take a control message is
/// dropped (see the channel actor).
pub(crate) const OUT_QUEUE: usize = 256;
/// History requests and replays one connection may make in a minute: a page
/// opening its channels asks a few, a person replays a few; more is a script.
const MAX_FETCHES_PER_MINUTE: u32 = 60;
/// How long a logon may wait for its channel (the bridge still starting) and the
/// homeserver's checks together.
const LOGON_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a dropped client's queued messages may take to go out before the close.
const KICK_FLUSH: Duration = Duration::from_millis(500);
/// WebSocket close codes (RFC 6455 §7.4.1, and 1013 from the IANA registry).
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TRY_AGAIN: u16 = 1013;

/// Channel name → its live endpoint's inbox. Built once at start-up, never changed.
/// Running channels' live endpoints by name; written when a channel starts.
pub(crate) type Directory = std::sync::RwLock<HashMap<String, mpsc::Sender<ToChannel>>>;

/// A channel this connection is logged on to.
struct Membership {
    client: ClientId,
    channel: mpsc::Sender<ToChannel>,
    user: String,
    /// The task that reports the channel dropping or ending this logon.
    watcher: AbortHandle,
    /// This connection's latest press on the channel: audio and `stop_stream`
    /// for it go here.
    own_stream: Option<u32>,
}

/// A logon the channel is checking.
struct PendingLogon {
    seq: u64,
    user: String,
}

/// What the session's background waits report, with the channel's name.
enum Notice {
    Logon {
        channel: mpsc::Sender<ToChannel>,
        answer: LogonAnswer,
    },
    /// The channel dropped the client: the connection reads too slowly.
    Kicked,
    /// The channel ended this logon (the user left the room, opted out).
    Ended,
    ChannelClosed,
    History {
        seq: u64,
        listed: Result<Vec<Archived>, Refusal>,
    },
    Recording {
        seq: u64,
        fetched: Result<Recording, Refusal>,
    },
    /// A replay sent its last frame.
    ReplayDone,
}

/// The replay of this connection (one at a time: a new one replaces it).
struct Replay {
    channel: String,
    /// Set once the recording is fetched and its stream announced.
    stream_id: Option<u32>,
    /// Stops the fetch or the sending.
    stop: AbortHandle,
}

pub(crate) struct Session {
    socket: WebSocket,
    directory: Arc<Directory>,
    stream_ids: Arc<StreamIds>,
    out_tx: mpsc::Sender<Message>,
    out_rx: mpsc::Receiver<Message>,
    /// Channels by name. Protocol 1 clients log on to one; protocol 2 to several,
    /// each checked like a single logon.
    members: HashMap<String, Membership>,
    logging_on: HashMap<String, PendingLogon>,
    /// Logons being checked and the watchers of logons made, polled by the
    /// session itself (not spawned): a logon's answer must be taken before
    /// anything the channel queued after it, so the client hears "success"
    /// before the channel's status. `None`: a watcher stopped at logoff.
    notices: FuturesUnordered<BoxFuture<'static, Option<(String, Notice)>>>,
    /// A logon succeeded once: the logon deadline no longer applies.
    logged_on_once: bool,
    /// The last unknown stream reported for audio (once, not fifty times a second).
    reported_stream: Option<u32>,
    history: Arc<History>,
    replay: Option<Replay>,
    /// History requests and replays of the last minute ([`MAX_FETCHES_PER_MINUTE`]).
    fetches: Presses,
    span: Span,
    permit: Permit,
    /// Refused logons of this connection.
    failed_logons: u32,
    presses: Presses,
    /// When the client last sent anything, a pong included.
    heard: tokio::time::Instant,
}

/// Presses of the last minute (a fixed window), for `live.max_presses_per_minute`.
struct Presses {
    since: Instant,
    count: u32,
}

impl Session {
    pub(crate) fn new(
        socket: WebSocket,
        directory: Arc<Directory>,
        stream_ids: Arc<StreamIds>,
        history: Arc<History>,
        span: Span,
        permit: Permit,
    ) -> Self {
        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        Self {
            socket,
            directory,
            stream_ids,
            out_tx,
            out_rx,
            members: HashMap::new(),
            logging_on: HashMap::new(),
            notices: FuturesUnordered::new(),
            logged_on_once: false,
            reported_stream: None,
            history,
            replay: None,
            fetches: Presses {
                since: Instant::now(),
                count: 0,
            },
            span,
            permit,
            failed_logons: 0,
            presses: Presses {
                since: Instant::now(),
                count: 0,
            },
            heard: tokio::time::Instant::now(),
        }
    }

    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        debug!("live session opened");
        let limits = self.permit.limits().clone();
        let logon_deadline = tokio::time::Instant::now() + limits.logon_timeout;
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + limits.ping_interval,
            limits.ping_interval,
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pushed_out = self.permit.pushed_out.clone();
        let close = loop {
            let anonymous =
                !self.logged_on_once && self.members.is_empty() && self.logging_on.is_empty();
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Step::Close(CLOSE_GOING_AWAY, "the bridge is shutting down"),
                _ = pushed_out.cancelled() => {
                    debug!("pushed out by a newer connection before logging on");
                    Step::Close(CLOSE_TRY_AGAIN, "the bridge is full: log on right after connecting")
                }
                _ = tokio::time::sleep_until(logon_deadline), if anonymous => {
                    debug!("no logon in time");
                    Step::Close(CLOSE_POLICY, "no logon in time")
                }
                _ = ping.tick() => self.ping(limits.idle_timeout).await,
                Some(notice) = self.notices.next(), if !self.notices.is_empty() => match notice {
                    Some((name, notice)) => self.on_notice(name, notice).await,
                    None => Step::Go,
                },
                Some(message) = self.out_rx.recv() => self.write(message).await,
                incoming = self.socket.recv() => {
                    self.heard = tokio::time::Instant::now();
                    match incoming {
                        Some(Ok(Message::Text(text))) => self.on_text(text).await,
                        Some(Ok(Message::Binary(frame))) => self.on_binary(frame),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Step::Go,
                        Some(Ok(Message::Close(_))) | None => Step::Gone,
                        Some(Err(error)) => {
                            debug!(%error, "WebSocket read failed");
                            Step::Gone
                        }
                    }
                },
            };
            match step {
                Step::Go => {}
                Step::Gone => break None,
                Step::Close(code, reason) => break Some((code, reason)),
            }
        };
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            // Best effort: the peer may be gone already, or not reading.
            let _ = self.write(Message::Close(Some(frame))).await;
        }
        self.notices.clear();
        for (_, member) in self.members.drain() {
            // The channel may have stopped already, then there is nobody to tell.
            let _ = member
                .channel
                .send(ToChannel::Gone {
                    client: member.client,
                })
                .await;
        }
        debug!("live session closed");
    }

    /// Writes one message; a client that does not take it within the idle
    /// timeout is gone (it would hold this task, and its descriptor, forever).
    async fn write(&mut self, message: Message) -> Step {
        let timeout = self.permit.limits().idle_timeout;
        match tokio::time::timeout(timeout, self.socket.send(message)).await {
            Ok(Ok(())) => Step::Go,
            Ok(Err(_)) => Step::Gone,
            Err(_) => {
                debug!(?timeout, "the client takes nothing; closed");
                Step::Gone
            }
        }
    }

    /// Sends what is queued for the client.
    async fn flush(&mut self) {
        while let Ok(message) = self.out_rx.try_recv() {
            if !matches!(self.write(message).await, Step::Go) {
                return;
            }
        }
    }

    /// Pings, unless the client has been silent too long already.
    async fn ping(&mut self, idle_timeout: Duration) -> Step {
        if self.heard.elapsed() >= idle_timeout {
            debug!(?idle_timeout, "no answer to pings; closed");
            return Step::Close(CLOSE_POLICY, "no answer to pings");
        }
        self.write(Message::Ping(bytes::Bytes::new())).await
    }

    /// Sends straight to the socket, ahead of anything queued: answers to the
    /// client's own requests.
    async fn reply(&mut self, text: String) -> Step {
        self.write(Message::Text(text.into())).await
    }

    async fn bad(&mut self, bad: BadMessage) -> Step {
        log_bad("bad message from a live client", &bad);
        self.reply(Event::error(bad.seq, bad.code, clip(&bad.message, CLIP)).to_json())
            .await
    }

    async fn on_text(&mut self, text: Utf8Bytes) -> Step {
        let command = match parse_command(text.as_str()) {
            Ok(command) => command,
            Err(bad) => return self.bad(bad).await,
        };
        if matches!(command, Command::StartStream(_))
            && !self.members.is_empty()
            && !self.may_press()
        {
            let refusal = Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} presses in a minute; wait a little",
                    self.permit.limits().max_presses_per_minute
                ),
            );
            return self.refuse(command.seq(), None, refusal, false).await;
        }
        match command {
            Command::Logon(logon) => self.logon(logon).await,
            Command::Logoff(logoff) => self.logoff(logoff).await,
            Command::StartStream(start) => self.start_stream(start).await,
            Command::StopStream(stop) => self.stop_stream(stop).await,
            Command::GetHistory(get) => self.get_history(get).await,
            Command::PlayRecording(play) => self.play_recording(play).await,
        }
    }

    /// Whether a history request or replay about `channel` may go ahead; `Err`
    /// is the answer to send instead.
    fn may_fetch(&mut self, channel: &str) -> Result<Arc<History>, (Option<String>, Refusal)> {
        if !self.members.contains_key(channel) {
            let refusal = Refusal::new(
                ErrorCode::NotLoggedOn,
                format!(
                    "this connection is not logged on to {:?}",
                    clip(channel, CLIP)
                ),
            );
            return Err((None, refusal));
        }
        let history = Arc::clone(&self.history);
        let now = Instant::now();
        if now.duration_since(self.fetches.since) >= Duration::from_secs(60) {
            self.fetches = Presses {
                since: now,
                count: 0,
            };
        }
        if self.fetches.count >= MAX_FETCHES_PER_MINUTE {
            let refusal = Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {MAX_FETCHES_PER_MINUTE} history requests and replays in a minute; wait a little"
                ),
            );
            return Err((Some(channel.to_owned()), refusal));
        }
        self.fetches.count += 1;
        Ok(history)
    }

    async fn get_history(&mut self, get: GetHistory) -> Step {
        let history = match self.may_fetch(&get.channel) {
            Ok(history) => history,
            Err((channel, refusal)) => {
                return self
                    .refuse(get.seq, channel.as_deref(), refusal, false)
                    .await
            }
        };
        let (seq, channel) = (get.seq, get.channel);
        let limit = get.limit.unwrap_or(DEFAULT_HISTORY);
        self.notices.push(
            async move {
                let listed = history.list(&channel, limit).await;
                Some((channel, Notice::History { seq, listed }))
            }
            .boxed(),
        );
        Step::Go
    }

    async fn play_recording(&mut self, play: PlayRecording) -> Step {
        let history = match self.may_fetch(&play.channel) {
            Ok(history) => history,
            Err((channel, refusal)) => {
                return self
                    .refuse(play.seq, channel.as_deref(), refusal, false)
                    .await
            }
        };
        self.stop_replay("replaced by another replay");
        let (seq, channel, tx_id) = (play.seq, play.channel, play.tx_id);
        let name = channel.clone();
        let (fetch, stop) = abortable(async move {
            let fetched = history.recording(&channel, &tx_id).await;
            (channel, Notice::Recording { seq, fetched })
        });
        self.notices.push(fetch.map(Result::ok).boxed());
        self.replay = Some(Replay {
            channel: name,
            stream_id: None,
            stop,
        });
        Step::Go
    }

    /// Stops the replay in progress, if any; a client that heard it start hears
    /// it stop.
    fn stop_replay(&mut self, reason: &str) {
        let Some(replay) = self.replay.take() else {
            return;
        };
        replay.stop.abort();
        if let Some(stream_id) = replay.stream_id {
            let stop = Event::OnStreamStop {
                stream_id,
                channel: replay.channel,
                reason: reason.to_owned(),
            };
            let _ = self.out_tx.try_send(Message::Text(stop.to_json().into()));
        }
    }

    /// The recording is here: announce its stream and send its frames, keeping
    /// half of the client's queue free for live talk and floor events.
    async fn start_replay(&mut self, seq: u64, channel: String, recording: Recording) -> Step {
        let stream_id = self.stream_ids.next();
        let mut success = Success::new(seq);
        success.channel = Some(channel.clone());
        success.stream_id = Some(stream_id);
        success.duration_ms = Some(recording.duration_ms);
        let step = self.reply(success.to_json()).await;
        let start = Event::OnStreamStart {
            stream_id,
            kind: "audio",
            codec: "opus",
            sample_rate: SAMPLE_RATE,
            packet_duration: PACKET_MS,
            channel: channel.clone(),
            from: recording.talker.clone(),
            display_name: recording.talker,
            matrix_user_id: None,
            source: "archive".into(),
            tx_id: recording.tx_id,
            replay: true,
        };
        let out = self.out_tx.clone();
        let stop_channel = channel.clone();
        let packets = recording.packets;
        let (pump, stop) = abortable(async move {
            if out
                .send(Message::Text(start.to_json().into()))
                .await
                .is_ok()
            {
                for (packet_id, opus) in (0u32..).zip(packets.iter()) {
                    // A timer on purpose: the queue has no "half free" signal
                    // (reserve() waits for one slot), and a frame's time is
                    // the natural step to look again.
                    while out.capacity() < OUT_QUEUE / 2 {
                        tokio::time::sleep(Duration::from_millis(PACKET_MS.into())).await;
                    }
                    let frame = encode_frame(stream_id, packet_id, opus);
                    if out.send(Message::Binary(frame)).await.is_err() {
                        break;
                    }
                }
                let stop = Event::OnStreamStop {
                    stream_id,
                    channel: stop_channel.clone(),
                    reason: "replay done".into(),
                };
                let _ = out.send(Message::Text(stop.to_json().into())).await;
            }
            (stop_channel, Notice::ReplayDone)
        });
        self.notices.push(pump.map(Result::ok).boxed());
        self.replay = Some(Replay {
            channel,
            stream_id: Some(stream_id),
            stop,
        });
        step
    }

    async fn logon(&mut self, logon: Logon) -> Step {
        if self.members.contains_key(&logon.channel) || self.logging_on.contains_key(&logon.channel)
        {
            let bad = BadMessage {
                seq: Some(logon.seq),
                code: ErrorCode::AlreadyLoggedOn,
                message: format!(
                    "this connection is already logged on (or logging on) to {:?}",
                    clip(&logon.channel, CLIP)
                ),
            };
            return self.bad(bad).await;
        }
        // One connection carries one person: every logon names the same user.
        let user = self
            .members
            .values()
            .map(|m| m.user.as_str())
            .chain(self.logging_on.values().map(|p| p.user.as_str()))
            .next();
        if let Some(user) = user.filter(|user| *user != logon.user_id) {
            let refusal = Refusal::new(
                ErrorCode::BadRequest,
                format!(
                    "this connection is for {}; log on as another user on another connection",
                    clip(user, CLIP)
                ),
            );
            return self.refuse(logon.seq, None, refusal, true).await;
        }
        if !self
            .permit
            .connections()
            .may_log_on(self.permit.address, Instant::now())
        {
            let refusal = Refusal::new(
                ErrorCode::RateLimited,
                "too many refused logons from your address; try again in ten minutes",
            );
            return self.refuse(logon.seq, None, refusal, true).await;
        }
        let (found, mut names) = {
            let directory = self.directory.read().unwrap_or_else(|e| e.into_inner());
            let found = directory
                .get(&logon.channel)
                .filter(|channel| !channel.is_closed())
                .cloned();
            let names: Vec<String> = directory
                .iter()
                .filter(|(_, channel)| !channel.is_closed())
                .map(|(name, _)| name.clone())
                .collect();
            (found, names)
        };
        names.sort();
        let Some(channel) = found else {
            let refusal = Refusal::new(
                ErrorCode::UnknownChannel,
                format!(
                    "no live channel {:?}; this bridge has: {}",
                    clip(&logon.channel, CLIP),
                    names.join(", ")
                ),
            );
            return self.refuse(logon.seq, None, refusal, true).await;
        };
        let name = logon.channel.clone();
        let seq = logon.seq;
        let user = logon.user_id.clone();
        let (reply_tx, reply) = oneshot::channel();
        let message = ToChannel::Logon {
            logon: Box::new(logon),
            out: self.out_tx.clone(),
            reply: reply_tx,
        };
        if channel.send(message).await.is_err() {
            return self
                .refuse(seq, Some(&name), channel_not_bridged(), true)
                .await;
        }
        self.logging_on
            .insert(name.clone(), PendingLogon { seq, user });
        let deadline = tokio::time::Instant::now() + LOGON_TIMEOUT;
        self.notices.push(
            async move {
                let answer = match tokio::time::timeout_at(deadline, reply).await {
                    Ok(Ok(Ok(welcome))) => LogonAnswer::Welcome(welcome),
                    Ok(Ok(Err(refusal))) => LogonAnswer::Refused(refusal),
                    Ok(Err(_)) => LogonAnswer::ChannelGone,
                    Err(_) => LogonAnswer::TimedOut,
                };
                Some((name, Notice::Logon { channel, answer }))
            }
            .boxed(),
        );
        Step::Go
    }

    async fn logoff(&mut self, logoff: Logoff) -> Step {
        let Some(member) = self.members.remove(&logoff.channel) else {
            let bad = BadMessage {
                seq: Some(logoff.seq),
                code: ErrorCode::NotLoggedOn,
                message: format!(
                    "this connection is not logged on to {:?}",
                    clip(&logoff.channel, CLIP)
                ),
            };
            return self.bad(bad).await;
        };
        member.watcher.abort();
        self.record_channels();
        info!(channel = %logoff.channel, "logged off");
        // A talk in progress ends with the logon (the channel ends it on the hub).
        let _ = member
            .channel
            .send(ToChannel::Gone {
                client: member.client,
            })
            .await;
        let mut success = Success::new(logoff.seq);
        success.channel = Some(logoff.channel);
        self.reply(success.to_json()).await
    }

    /// The channel a command without a usable `channel` is about: the only one
    /// logged on. `Err` is the answer to send instead.
    fn target(&self, seq: u64, channel: Option<&str>) -> Result<String, BadMessage> {
        let not_logged_on = |message: String| BadMessage {
            seq: Some(seq),
            code: ErrorCode::NotLoggedOn,
            message,
        };
        if let Some(name) = channel {
            return if self.members.contains_key(name) {
                Ok(name.to_owned())
            } else {
                Err(not_logged_on(format!(
                    "this connection is not logged on to {:?}",
                    clip(name, CLIP)
                )))
            };
        }
        let mut names = self.members.keys();
        match (names.next(), names.next()) {
            (Some(only), None) => Ok(only.clone()),
            (Some(_), Some(_)) => Err(BadMessage {
                seq: Some(seq),
                code: ErrorCode::BadMessage,
                message:
                    "this connection is logged on to several channels: say which with \"channel\""
                        .into(),
            }),
            (None, _) if !self.logging_on.is_empty() => {
                Err(not_logged_on("wait for the logon's answer".into()))
            }
            (None, _) => Err(not_logged_on("log on first".into())),
        }
    }

    async fn start_stream(&mut self, start: StartStream) -> Step {
        let name = match self.target(start.seq, start.channel.as_deref()) {
            Ok(name) => name,
            Err(bad) => return self.bad(bad).await,
        };
        let stream_id = self.stream_ids.next();
        let Some(member) = self.members.get_mut(&name) else {
            return Step::Go;
        };
        member.own_stream = Some(stream_id);
        let message = ToChannel::Start {
            client: member.client,
            start: Box::new(start),
            stream_id,
        };
        forward(&member.channel.clone(), message).await
    }

    async fn stop_stream(&mut self, stop: StopStream) -> Step {
        let owner = self
            .members
            .values()
            .find(|m| m.own_stream == Some(stop.stream_id))
            .or_else(|| {
                // One channel: it answers for any stream (unknown_stream included).
                (self.members.len() == 1)
                    .then(|| self.members.values().next())
                    .flatten()
            })
            .map(|m| (m.client, m.channel.clone()));
        let Some((client, channel)) = owner else {
            let code = if self.members.is_empty() {
                ErrorCode::NotLoggedOn
            } else {
                ErrorCode::UnknownStream
            };
            let bad = BadMessage {
                seq: Some(stop.seq),
                code,
                message: format!("stream {} is not your active stream", stop.stream_id),
            };
            return self.bad(bad).await;
        };
        forward(&channel, ToChannel::Stop { client, stop }).await
    }

    /// Counts a press against `live.max_presses_per_minute`.
    fn may_press(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.presses.since) >= Duration::from_secs(60) {
            self.presses = Presses {
                since: now,
                count: 0,
            };
        }
        if self.presses.count >= self.permit.limits().max_presses_per_minute {
            metrics::counter!("walkie_live_presses_refused_total").increment(1);
            return false;
        }
        self.presses.count += 1;
        true
    }

    fn on_binary(&mut self, frame: bytes::Bytes) -> Step {
        if self.members.is_empty() {
            metrics::counter!("walkie_live_bad_messages_total", "reason" => ErrorCode::NotLoggedOn.as_str())
                .increment(1);
            // Answered through the queue: audio arrives fifty times a second and
            // must not wait for a socket write here.
            let event = Event::error(None, ErrorCode::NotLoggedOn, "audio before logon; dropped");
            let _ = self.out_tx.try_send(Message::Text(event.to_json().into()));
            return Step::Go;
        }
        let packet = match parse_frame(&frame) {
            Ok(packet) => packet,
            Err(bad) => {
                log_bad("bad frame from a live client", &bad);
                let event = Event::error(None, bad.code, bad.message);
                let _ = self.out_tx.try_send(Message::Text(event.to_json().into()));
                return Step::Go;
            }
        };
        let owner = self
            .members
            .values()
            .find(|m| m.own_stream == Some(packet.stream_id))
            .or_else(|| {
                // One channel: it drops (and reports) frames of streams not its.
                (self.members.len() == 1)
                    .then(|| self.members.values().next())
                    .flatten()
            });
        let Some(member) = owner else {
            metrics::counter!("walkie_live_bad_messages_total", "reason" => ErrorCode::UnknownStream.as_str())
                .increment(1);
            if self.reported_stream != Some(packet.stream_id) {
                self.reported_stream = Some(packet.stream_id);
                let event = Event::error(
                    None,
                    ErrorCode::UnknownStream,
                    format!(
                        "audio for stream {} which is not yours or has ended; frames dropped",
                        packet.stream_id
                    ),
                );
                let _ = self.out_tx.try_send(Message::Text(event.to_json().into()));
            }
            return Step::Go;
        };
        let message = ToChannel::Audio {
            client: member.client,
            packet,
            raw: frame,
        };
        match member.channel.try_send(message) {
            Ok(()) => Step::Go,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("walkie_live_frames_dropped_total", "channel" => "inbox")
                    .increment(1);
                Step::Go
            }
            // The channel stopped; its watcher reports it.
            Err(mpsc::error::TrySendError::Closed(_)) => Step::Go,
        }
    }

    async fn on_notice(&mut self, name: String, notice: Notice) -> Step {
        match notice {
            Notice::Logon { channel, answer } => self.on_logon_answer(name, channel, answer).await,
            Notice::Kicked => {
                // The channel's last word is queued; give it a moment to go out.
                let _ = tokio::time::timeout(KICK_FLUSH, self.flush()).await;
                Step::Close(CLOSE_POLICY, "the bridge dropped this client (too slow)")
            }
            Notice::Ended => {
                self.members.remove(&name);
                self.record_channels();
                if self.members.is_empty() {
                    // The channel told why (on_error); let it go out first.
                    let _ = tokio::time::timeout(KICK_FLUSH, self.flush()).await;
                    return Step::Close(
                        CLOSE_POLICY,
                        "the bridge ended this logon (no longer allowed)",
                    );
                }
                self.channel_offline(name, "the bridge ended this logon")
                    .await
            }
            Notice::History { seq, listed } => match listed {
                Ok(transmissions) => {
                    let mut success = Success::new(seq);
                    success.channel = Some(name);
                    success.transmissions = Some(transmissions);
                    self.reply(success.to_json()).await
                }
                Err(refusal) => self.refuse(seq, Some(&name), refusal, false).await,
            },
            Notice::Recording { seq, fetched } => {
                // A replay stopped meanwhile (its channel left) is not started.
                if self.replay.as_ref().is_none_or(|r| r.channel != name) {
                    return Step::Go;
                }
                match fetched {
                    Ok(recording) => self.start_replay(seq, name, recording).await,
                    Err(refusal) => {
                        self.replay = None;
                        self.refuse(seq, Some(&name), refusal, false).await
                    }
                }
            }
            Notice::ReplayDone => {
                self.replay = None;
                Step::Go
            }
            Notice::ChannelClosed => {
                self.members.remove(&name);
                self.record_channels();
                if self.members.is_empty() {
                    return Step::Close(CLOSE_GOING_AWAY, "the channel stopped");
                }
                self.channel_offline(name, "the channel stopped").await
            }
        }
    }

    /// Tells a client on other channels too that one of its logons is over.
    async fn channel_offline(&mut self, channel: String, reason: &str) -> Step {
        info!(%channel, reason, "logon ended");
        let event = Event::OnChannelStatus {
            channel,
            status: "offline",
            room_id: None,
            users_online: None,
            reason: Some(reason.to_owned()),
        };
        // Behind whatever the channel queued before (its on_error says why).
        match self.out_tx.try_send(Message::Text(event.to_json().into())) {
            Ok(()) => Step::Go,
            Err(_) => Step::Close(CLOSE_POLICY, "the bridge dropped this client (too slow)"),
        }
    }

    /// The channels of this connection, in its span; a replay of a channel no
    /// longer among them stops.
    fn record_channels(&mut self) {
        if self
            .replay
            .as_ref()
            .is_some_and(|r| !self.members.contains_key(&r.channel))
        {
            self.stop_replay("logged off");
        }
        let mut names: Vec<&str> = self.members.keys().map(String::as_str).collect();
        names.sort_unstable();
        self.span.record("channel", names.join(",").as_str());
    }

    async fn on_logon_answer(
        &mut self,
        name: String,
        channel: mpsc::Sender<ToChannel>,
        answer: LogonAnswer,
    ) -> Step {
        let Some(pending) = self.logging_on.remove(&name) else {
            return Step::Go;
        };
        let seq = pending.seq;
        match answer {
            LogonAnswer::Welcome(welcome) => {
                let mut success = Success::new(seq);
                success.channel = Some(name.clone());
                success.user_id = Some(welcome.identity.user_id.to_string());
                success.display_name = Some(welcome.identity.display_name.clone());
                success.listening_until_ms = welcome.identity.listening_until.map(unix_ms);
                let pushed_out = !self.permit.logged_on();
                self.logged_on_once = true;
                let watcher = self.watch(name.clone(), &channel, &welcome);
                self.members.insert(
                    name.clone(),
                    Membership {
                        client: welcome.client,
                        channel,
                        user: pending.user,
                        watcher,
                        own_stream: None,
                    },
                );
                if pushed_out {
                    // Pushed out while the homeserver was asked; the channel hears
                    // it is gone when this ends.
                    return Step::Close(
                        CLOSE_TRY_AGAIN,
                        "the bridge is full: log on right after connecting",
                    );
                }
                self.span.record("user", welcome.identity.user_id.as_str());
                self.record_channels();
                info!(user = %welcome.identity.user_id, channel = %name, "logged on");
                self.reply(success.to_json()).await
            }
            LogonAnswer::Refused(refusal) => self.refuse(seq, Some(&name), refusal, true).await,
            LogonAnswer::ChannelGone => {
                self.refuse(seq, Some(&name), channel_not_bridged(), true)
                    .await
            }
            LogonAnswer::TimedOut => {
                let refusal = Refusal::new(
                    ErrorCode::ChannelUnavailable,
                    "the channel did not answer in time (the bridge may still be starting); try again",
                );
                self.refuse(seq, Some(&name), refusal, true).await
            }
        }
    }

    /// Waits, in the background, for the channel to drop or end this logon.
    fn watch(
        &mut self,
        name: String,
        channel: &mpsc::Sender<ToChannel>,
        welcome: &Welcome,
    ) -> AbortHandle {
        let channel = channel.clone();
        let kicked = welcome.kicked.clone();
        let ended = welcome.ended.clone();
        let (watch, handle) = abortable(async move {
            let notice = tokio::select! {
                _ = kicked.cancelled() => Notice::Kicked,
                _ = ended.cancelled() => Notice::Ended,
                _ = channel.closed() => Notice::ChannelClosed,
            };
            (name, notice)
        });
        self.notices.push(watch.map(Result::ok).boxed());
        handle
    }

    /// Answers a refused logon (or press); a connection with too many refused
    /// logons is closed after the answer.
    async fn refuse(
        &mut self,
        seq: u64,
        channel: Option<&str>,
        refusal: Refusal,
        logon: bool,
    ) -> Step {
        let counts = logon && refusal.code.is_clients_fault();
        if counts {
            self.failed_logons += 1;
            self.permit
                .connections()
                .logon_failed(self.permit.address, Instant::now());
        }
        let event = match channel {
            Some(channel) => {
                Event::channel_error(Some(seq), channel, refusal.code, refusal.message)
            }
            None => Event::error(Some(seq), refusal.code, refusal.message),
        };
        let step = self.reply(event.to_json()).await;
        if counts && self.failed_logons >= self.permit.limits().max_failed_logons {
            metrics::counter!("walkie_live_connections_closed_total", "reason" => "failed_logons")
                .increment(1);
            debug!(
                failed = self.failed_logons,
                "too many refused logons; closed"
            );
            return Step::Close(CLOSE_POLICY, "too many refused logons");
        }
        step
    }
}

enum Step {
    Go,
    /// The peer is gone; nothing more to send.
    Gone,
    Close(u16, &'static str),
}

enum LogonAnswer {
    Welcome(Welcome),
    Refused(Refusal),
    ChannelGone,
    TimedOut,
}

/// Logs a bad message (at most a few warnings a minute over all clients, the
/// rest at debug) and counts it.
fn log_bad(what: &'static str, bad: &BadMessage) {
    metrics::counter!("walkie_live_bad_messages_total", "reason" => bad.code.as_str()).increment(1);
    let error = clip(&bad.message, CLIP);
    match BAD_MESSAGE_WARNINGS.allow(Instant::now()) {
        Some(suppressed) => warn!(code = bad.code.as_str(), %error, suppressed, "{what}"),
        None => debug!(code = bad.code.as_str(), %error, "{what}"),
    }
}

fn channel_not_bridged() -> Refusal {
    Refusal::new(
        ErrorCode::ChannelUnavailable,
        "this channel is not bridged right now (see the bridge's log)",
    )
}

/// Hands a command to its channel. A channel that stopped meanwhile is reported
/// by the logon's watcher (which also closes a connection left on no channel).
async fn forward(channel: &mpsc::Sender<ToChannel>, message: ToChannel) -> Step {
    let _ = channel.send(message).await;
    Step::Go
}

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
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Span};

use super::auth::{unix_ms, Refusal};
use super::endpoint::{ClientId, ToChannel, Welcome};
use super::limits::{clip, Permit, BAD_MESSAGE_WARNINGS, CLIP};
use super::protocol::{parse_command, parse_frame, BadMessage, Command, ErrorCode, Event, Success};

/// Messages waiting to be written to one client: five seconds of audio. A client
/// further behind loses audio frames; one that cannot take a control message is
/// dropped (see the channel actor).
pub(crate) const OUT_QUEUE: usize = 256;
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

enum State {
    Anonymous,
    LoggingOn {
        seq: u64,
        channel: mpsc::Sender<ToChannel>,
        reply: oneshot::Receiver<Result<Welcome, Refusal>>,
        deadline: tokio::time::Instant,
    },
    LoggedOn {
        client: ClientId,
        channel: mpsc::Sender<ToChannel>,
        kicked: CancellationToken,
    },
}

pub(crate) struct Session {
    socket: WebSocket,
    directory: Arc<Directory>,
    out_tx: mpsc::Sender<Message>,
    out_rx: mpsc::Receiver<Message>,
    state: State,
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
        span: Span,
        permit: Permit,
    ) -> Self {
        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        Self {
            socket,
            directory,
            out_tx,
            out_rx,
            state: State::Anonymous,
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
            let anonymous = matches!(self.state, State::Anonymous);
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
                event = state_event(&mut self.state) => match event {
                    StateEvent::Kicked => {
                        // The channel's last word (why it ended the session) is
                        // queued; give it a moment to go out before the close.
                        let _ = tokio::time::timeout(KICK_FLUSH, self.flush()).await;
                        Step::Close(CLOSE_POLICY, "the bridge dropped this client (too slow, or no longer allowed)")
                    }
                    StateEvent::ChannelClosed => Step::Close(CLOSE_GOING_AWAY, "the channel stopped"),
                    StateEvent::Logon(answer) => self.on_logon_answer(answer).await,
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
        if let State::LoggedOn {
            client, channel, ..
        } = &self.state
        {
            // The channel may have stopped already, then there is nobody to tell.
            let _ = channel.send(ToChannel::Gone { client: *client }).await;
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
        let press = matches!(
            (&command, &self.state),
            (Command::StartStream(_), State::LoggedOn { .. })
        );
        if press && !self.may_press() {
            let refusal = Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} presses in a minute; wait a little",
                    self.permit.limits().max_presses_per_minute
                ),
            );
            return self.refuse(command.seq(), refusal).await;
        }
        match (command, &self.state) {
            (Command::Logon(logon), State::Anonymous) => {
                if !self
                    .permit
                    .connections()
                    .may_log_on(self.permit.address, Instant::now())
                {
                    let refusal = Refusal::new(
                        ErrorCode::RateLimited,
                        "too many refused logons from your address; try again in ten minutes",
                    );
                    return self.refuse(logon.seq, refusal).await;
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
                    return self
                        .refuse(
                            logon.seq,
                            Refusal::new(
                                ErrorCode::UnknownChannel,
                                format!(
                                    "no live channel {:?}; this bridge has: {}",
                                    clip(&logon.channel, CLIP),
                                    names.join(", ")
                                ),
                            ),
                        )
                        .await;
                };
                // The channel is one of ours; the user is recorded once verified.
                self.span.record("channel", logon.channel.as_str());
                let seq = logon.seq;
                let (reply_tx, reply) = oneshot::channel();
                let message = ToChannel::Logon {
                    logon,
                    out: self.out_tx.clone(),
                    reply: reply_tx,
                };
                if channel.send(message).await.is_err() {
                    return self.refuse(seq, channel_not_bridged()).await;
                }
                self.state = State::LoggingOn {
                    seq,
                    channel,
                    reply,
                    deadline: tokio::time::Instant::now() + LOGON_TIMEOUT,
                };
                Step::Go
            }
            (command, State::Anonymous) => {
                let bad = BadMessage {
                    seq: Some(command.seq()),
                    code: ErrorCode::NotLoggedOn,
                    message: "log on first".into(),
                };
                self.bad(bad).await
            }
            (command @ Command::Logon(_), _) => {
                let bad = BadMessage {
                    seq: Some(command.seq()),
                    code: ErrorCode::AlreadyLoggedOn,
                    message: "this connection is already logged on (or logging on); open another \
                              connection for another channel"
                        .into(),
                };
                self.bad(bad).await
            }
            (command, State::LoggingOn { .. }) => {
                let bad = BadMessage {
                    seq: Some(command.seq()),
                    code: ErrorCode::NotLoggedOn,
                    message: "wait for the logon's answer".into(),
                };
                self.bad(bad).await
            }
            (
                Command::StartStream(start),
                State::LoggedOn {
                    client, channel, ..
                },
            ) => {
                forward(
                    channel,
                    ToChannel::Start {
                        client: *client,
                        start,
                    },
                )
                .await
            }
            (
                Command::StopStream(stop),
                State::LoggedOn {
                    client, channel, ..
                },
            ) => {
                forward(
                    channel,
                    ToChannel::Stop {
                        client: *client,
                        stop,
                    },
                )
                .await
            }
        }
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
        let State::LoggedOn {
            client, channel, ..
        } = &self.state
        else {
            metrics::counter!("walkie_live_bad_messages_total", "reason" => ErrorCode::NotLoggedOn.as_str())
                .increment(1);
            // Answered through the queue: audio arrives fifty times a second and
            // must not wait for a socket write here.
            let event = Event::error(None, ErrorCode::NotLoggedOn, "audio before logon; dropped");
            let _ = self.out_tx.try_send(Message::Text(event.to_json().into()));
            return Step::Go;
        };
        match parse_frame(&frame) {
            Ok(packet) => {
                let message = ToChannel::Audio {
                    client: *client,
                    packet,
                    raw: frame,
                };
                match channel.try_send(message) {
                    Ok(()) => Step::Go,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        metrics::counter!("walkie_live_frames_dropped_total", "channel" => "inbox")
                            .increment(1);
                        Step::Go
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        Step::Close(CLOSE_GOING_AWAY, "the channel stopped")
                    }
                }
            }
            Err(bad) => {
                log_bad("bad frame from a live client", &bad);
                let event = Event::error(None, bad.code, bad.message);
                let _ = self.out_tx.try_send(Message::Text(event.to_json().into()));
                Step::Go
            }
        }
    }

    async fn on_logon_answer(&mut self, answer: LogonAnswer) -> Step {
        let State::LoggingOn { seq, channel, .. } =
            std::mem::replace(&mut self.state, State::Anonymous)
        else {
            return Step::Go;
        };
        match answer {
            LogonAnswer::Welcome(welcome) => {
                let mut success = Success::new(seq);
                success.user_id = Some(welcome.identity.user_id.to_string());
                success.display_name = Some(welcome.identity.display_name.clone());
                success.listening_until_ms = welcome.identity.listening_until.map(unix_ms);
                if !self.permit.logged_on() {
                    // Pushed out while the homeserver was asked; the channel hears
                    // it is gone when this ends.
                    self.state = State::LoggedOn {
                        client: welcome.client,
                        channel,
                        kicked: welcome.kicked,
                    };
                    return Step::Close(CLOSE_TRY_AGAIN, "the bridge is full: log on right after connecting");
                }
                self.span.record("user", welcome.identity.user_id.as_str());
                info!(user = %welcome.identity.user_id, "logged on");
                self.state = State::LoggedOn {
                    client: welcome.client,
                    channel,
                    kicked: welcome.kicked,
                };
                self.reply(success.to_json()).await
            }
            LogonAnswer::Refused(refusal) => self.refuse(seq, refusal).await,
            LogonAnswer::ChannelGone => self.refuse(seq, channel_not_bridged()).await,
            LogonAnswer::TimedOut => {
                self.refuse(
                    seq,
                    Refusal::new(
                        ErrorCode::ChannelUnavailable,
                        "the channel did not answer in time (the bridge may still be starting); try again",
                    ),
                )
                .await
            }
        }
    }

    /// Answers a refused logon (or press); a connection with too many refused
    /// logons is closed after the answer.
    async fn refuse(&mut self, seq: u64, refusal: Refusal) -> Step {
        let counts = refusal.code.is_clients_fault() && matches!(self.state, State::Anonymous);
        if counts {
            self.failed_logons += 1;
            self.permit
                .connections()
                .logon_failed(self.permit.address, Instant::now());
        }
        let step = self
            .reply(Event::error(Some(seq), refusal.code, refusal.message).to_json())
            .await;
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

async fn forward(channel: &mpsc::Sender<ToChannel>, message: ToChannel) -> Step {
    match channel.send(message).await {
        Ok(()) => Step::Go,
        Err(_) => Step::Close(CLOSE_GOING_AWAY, "the channel stopped"),
    }
}

enum StateEvent {
    Logon(LogonAnswer),
    Kicked,
    ChannelClosed,
}

/// What the session's state is waiting for: a logon's answer, or — once logged
/// on — the channel dropping the client or stopping. Pending when anonymous.
async fn state_event(state: &mut State) -> StateEvent {
    match state {
        State::Anonymous => std::future::pending().await,
        State::LoggingOn {
            reply, deadline, ..
        } => StateEvent::Logon(match tokio::time::timeout_at(*deadline, reply).await {
            Ok(Ok(Ok(welcome))) => LogonAnswer::Welcome(welcome),
            Ok(Ok(Err(refusal))) => LogonAnswer::Refused(refusal),
            Ok(Err(_)) => LogonAnswer::ChannelGone,
            Err(_) => LogonAnswer::TimedOut,
        }),
        State::LoggedOn {
            channel, kicked, ..
        } => tokio::select! {
            _ = kicked.cancelled() => StateEvent::Kicked,
            _ = channel.closed() => StateEvent::ChannelClosed,
        },
    }
}

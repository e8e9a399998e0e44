//! One WebSocket connection: reads the client's messages, checks them, hands them
//! to its channel, and writes back what the channel has for it.
//!
//! A bad message never ends the connection: it is logged, counted
//! (`walkie_live_bad_messages_total`) and answered with `on_error`. The connection
//! ends when the client closes it, when the channel stops, when the client falls
//! too far behind, or at shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Span};

use super::auth::{unix_ms, Refusal};
use super::endpoint::{ClientId, ToChannel, Welcome};
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
/// WebSocket close codes (RFC 6455 §7.4.1).
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_POLICY: u16 = 1008;

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
}

impl Session {
    pub(crate) fn new(socket: WebSocket, directory: Arc<Directory>, span: Span) -> Self {
        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        Self {
            socket,
            directory,
            out_tx,
            out_rx,
            state: State::Anonymous,
            span,
        }
    }

    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        debug!("live session opened");
        let close = loop {
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Step::Close(CLOSE_GOING_AWAY, "the bridge is shutting down"),
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
                Some(message) = self.out_rx.recv() => match self.socket.send(message).await {
                    Ok(()) => Step::Go,
                    Err(_) => Step::Gone,
                },
                incoming = self.socket.recv() => match incoming {
                    Some(Ok(Message::Text(text))) => self.on_text(text).await,
                    Some(Ok(Message::Binary(frame))) => self.on_binary(frame),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Step::Go,
                    Some(Ok(Message::Close(_))) | None => Step::Gone,
                    Some(Err(error)) => {
                        debug!(%error, "WebSocket read failed");
                        Step::Gone
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
            // Best effort: the peer may be gone already.
            let _ = self.socket.send(Message::Close(Some(frame))).await;
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

    /// Sends what is queued for the client.
    async fn flush(&mut self) {
        while let Ok(message) = self.out_rx.try_recv() {
            if self.socket.send(message).await.is_err() {
                return;
            }
        }
    }

    /// Sends straight to the socket, ahead of anything queued: answers to the
    /// client's own requests.
    async fn reply(&mut self, text: String) -> Step {
        match self.socket.send(Message::Text(text.into())).await {
            Ok(()) => Step::Go,
            Err(_) => Step::Gone,
        }
    }

    async fn bad(&mut self, bad: BadMessage) -> Step {
        warn!(code = bad.code.as_str(), error = %bad.message, "bad message from a live client");
        metrics::counter!("walkie_live_bad_messages_total", "reason" => bad.code.as_str())
            .increment(1);
        self.reply(Event::error(bad.seq, bad.code, bad.message).to_json())
            .await
    }

    async fn on_text(&mut self, text: Utf8Bytes) -> Step {
        let command = match parse_command(text.as_str()) {
            Ok(command) => command,
            Err(bad) => return self.bad(bad).await,
        };
        match (command, &self.state) {
            (Command::Logon(logon), State::Anonymous) => {
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
                                    logon.channel,
                                    names.join(", ")
                                ),
                            ),
                        )
                        .await;
                };
                self.span.record("channel", logon.channel.as_str());
                self.span.record("user", logon.user_id.as_str());
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
                warn!(code = bad.code.as_str(), error = %bad.message, "bad frame from a live client");
                metrics::counter!("walkie_live_bad_messages_total", "reason" => bad.code.as_str())
                    .increment(1);
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

    async fn refuse(&mut self, seq: u64, refusal: Refusal) -> Step {
        self.reply(Event::error(Some(seq), refusal.code, refusal.message).to_json())
            .await
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

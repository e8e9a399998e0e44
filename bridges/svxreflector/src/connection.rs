//! One node session with a reflector: log in over TCP (trying protocol 2.0, then
//! 1.0 for a reflector that knows no talkgroups), register the UDP port, keep both
//! alive with heartbeats, and turn what arrives into [`Event`]s. A task owns the
//! sockets; the endpoint talks to it through a [`ConnectionHandle`].
//!
//! docs/protocols/svxreflector.md has the rules followed here: §1.4 heartbeats,
//! §4 login, §6.4 sequence numbers.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::msg::{auth_digest, TcpMsg, UdpMsg, MAX_POSTAUTH_FRAME, MAX_PREAUTH_FRAME};

/// How long connecting and logging in may take before the attempt counts as failed.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// §1.4: the reflector drops a node silent for 15 s on TCP; a heartbeat after 10 s
/// of sending nothing keeps it; 15 s of hearing nothing means the reflector is gone.
const TCP_HEARTBEAT_AFTER: Duration = Duration::from_secs(10);
const TCP_SILENCE_LIMIT: Duration = Duration::from_secs(15);
/// §1.4: UDP heartbeats every 15 s of silence; 60 s without a valid datagram is a
/// lost session (what svxlink's own node does).
const UDP_HEARTBEAT_AFTER: Duration = Duration::from_secs(15);
const UDP_SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// Commands queued for the session task: a talk's frames, at 50 a second.
const COMMAND_QUEUE: usize = 256;
const EVENT_QUEUE: usize = 256;
/// Places in the event queue audio never takes: talker news always finds room.
const CONTROL_ROOM: usize = 32;

/// Where and who: a `[svxreflector.NAME]` section in this crate's words.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    pub host: String,
    pub port: u16,
    /// The node's callsign (the bridge operator's), as the reflector's `[USERS]`
    /// knows it.
    pub callsign: String,
    /// The shared key of the callsign's group in the reflector's `[PASSWORDS]`.
    pub auth_key: String,
    /// The talkgroup carried on a protocol-2 reflector (24.02). Without one the
    /// node speaks protocol 1, like an older node: a 24.02 reflector then puts
    /// it on its talkgroup for such nodes (`TG_FOR_V1_CLIENTS`), and a 19.09
    /// reflector, which has no talkgroups, lets every node hear every talk.
    pub talkgroup: Option<u32>,
}

/// Why a session could not start or ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach the reflector at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    /// The reflector refused the callsign or key ("Access denied"): retrying at
    /// full speed cannot help, the operator must fix the config or ask the sysop.
    #[error("the reflector refused the login as {callsign}: {message} (check callsign and auth_key with the reflector's sysop)")]
    AccessDenied { callsign: String, message: String },
    /// Neither protocol 2.0 nor 1.0 was accepted.
    #[error("the reflector speaks no protocol version this bridge knows: {0}")]
    ProtocolMismatch(String),
    /// The reflector's audio codec is not Opus (the bridge carries Opus only).
    #[error("the reflector uses the {0} codec; the bridge carries Opus only (ask the sysop for CODECS=OPUS)")]
    Codec(String),
    #[error("the reflector said: {0}")]
    Refused(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("login timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection lost: {0}")]
    Lost(String),
}

impl ConnectError {
    /// Errors a retry soon will not fix: the endpoint waits its longest backoff.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            Self::AccessDenied { .. } | Self::ProtocolMismatch(_) | Self::Codec(_)
        )
    }
}

/// What the session hears. The receiver must be read: audio that finds the
/// queue (nearly) full is dropped; a reader that lets the room kept for talker
/// news fill up too ends the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `callsign` has the talkgroup (our own callsign: our audio is on the air).
    TalkerStart {
        callsign: String,
    },
    TalkerStop {
        callsign: String,
    },
    /// One audio packet of the talkgroup's talker.
    Audio(Bytes),
    /// The talker's stream ended (the reflector's end-of-stream).
    Flush,
    /// The session is over; the task has ended.
    Disconnected {
        reason: String,
    },
}

enum Command {
    Audio(Bytes),
    Flush,
}

/// What a logged-in session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// 2 or 1: talkgroups exist only with 2.
    pub protocol: u16,
    pub client_id: u16,
    /// Nodes logged in when we arrived (ourselves included).
    pub nodes: Vec<String>,
}

/// The endpoint's side of a session. Dropping it (or [`Self::disconnect`]) ends
/// the session: the reflector then frees the talkgroup at once.
pub struct ConnectionHandle {
    commands: mpsc::Sender<Command>,
    stop: CancellationToken,
    info: SessionInfo,
}

impl ConnectionHandle {
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// Sends one audio packet to the talkgroup. Never waits: a full queue means
    /// the session is stuck, and a late frame is worth nothing.
    pub fn send_audio(&self, opus: Bytes) -> bool {
        self.commands.try_send(Command::Audio(opus)).is_ok()
    }

    /// Ends our stream: the reflector frees the talkgroup for the next talker.
    pub async fn flush(&self) {
        let _ = self.commands.send(Command::Flush).await;
    }

    pub fn disconnect(&self) {
        self.stop.cancel();
    }
}

impl Drop for ConnectionHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub struct Connection;

impl Connection {
    /// Logs in (protocol 2.0, or 1.0 where the reflector knows only that) and
    /// starts the session task.
    pub async fn connect(
        config: &ConnectConfig,
    ) -> Result<(ConnectionHandle, mpsc::Receiver<Event>), ConnectError> {
        let major = if config.talkgroup.is_some() { 2 } else { 1 };
        let first = tokio::time::timeout(LOGIN_TIMEOUT, log_in(config, major)).await;
        let session = match first {
            Err(_) => return Err(ConnectError::Timeout(LOGIN_TIMEOUT)),
            // 19.09 says "Unsupported protocol version 2.0" and hangs up; it
            // speaks 1.0, which has no talkgroups.
            Ok(Err(ConnectError::ProtocolMismatch(said))) if major == 2 => {
                debug!(%said, "protocol 2.0 refused; trying 1.0");
                tokio::time::timeout(LOGIN_TIMEOUT, log_in(config, 1))
                    .await
                    .map_err(|_| ConnectError::Timeout(LOGIN_TIMEOUT))??
            }
            Ok(result) => result?,
        };
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (events, event_rx) = mpsc::channel(EVENT_QUEUE);
        let stop = CancellationToken::new();
        let info = session.info.clone();
        tokio::spawn(session.run(command_rx, events, stop.clone()));
        Ok((
            ConnectionHandle {
                commands,
                stop,
                info,
            },
            event_rx,
        ))
    }
}

type FrameReader = FramedRead<tokio::net::tcp::OwnedReadHalf, LengthDelimitedCodec>;

struct Session {
    info: SessionInfo,
    reader: FrameReader,
    writer: OwnedWriteHalf,
    udp: UdpSocket,
    /// The next UDP sequence number (the handshake used the first ones).
    udp_seq: u16,
    talkgroup: Option<u32>,
}

async fn next_msg(reader: &mut FrameReader, v2: bool) -> Result<TcpMsg, ConnectError> {
    match reader.next().await {
        Some(Ok(frame)) => {
            TcpMsg::decode(&frame, v2).map_err(|e| ConnectError::Protocol(e.to_string()))
        }
        Some(Err(error)) => Err(ConnectError::Lost(error.to_string())),
        None => Err(ConnectError::Lost(
            "the reflector closed the connection".into(),
        )),
    }
}

async fn send(writer: &mut OwnedWriteHalf, msg: &TcpMsg) -> Result<(), ConnectError> {
    writer
        .write_all(&msg.to_frame())
        .await
        .map_err(|e| ConnectError::Lost(e.to_string()))
}

/// The login of §4.2: version, challenge, digest, AuthOk, ServerInfo; then the
/// UDP port is registered and (protocol 2) the talkgroup selected.
async fn log_in(config: &ConnectConfig, major: u16) -> Result<Session, ConnectError> {
    let address = format!("{}:{}", config.host, config.port);
    let unreachable = |reason: String| ConnectError::Unreachable {
        address: address.clone(),
        reason,
    };
    let stream = TcpStream::connect((config.host.as_str(), config.port))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().map_err(|e| unreachable(e.to_string()))?;
    let (read, mut writer) = stream.into_split();
    let mut codec = LengthDelimitedCodec::builder();
    codec
        .length_field_length(4)
        .max_frame_length(MAX_PREAUTH_FRAME);
    let mut reader = FramedRead::new(read, codec.new_codec());
    let v2 = major >= 2;
    send(&mut writer, &TcpMsg::ProtoVer { major, minor: 0 }).await?;
    let challenge = match next_msg(&mut reader, v2).await? {
        TcpMsg::AuthChallenge { challenge } => challenge,
        TcpMsg::Error { message } if message.starts_with("Unsupported protocol version") => {
            return Err(ConnectError::ProtocolMismatch(message))
        }
        // 24.02 would answer a version above its own this way; 2.0 is its own.
        TcpMsg::ProtoVerDowngrade { major, minor } => {
            return Err(ConnectError::ProtocolMismatch(format!(
                "the reflector offers {major}.{minor}"
            )))
        }
        TcpMsg::Error { message } => return Err(ConnectError::Refused(message)),
        other => {
            return Err(ConnectError::Protocol(format!(
                "expected the login challenge, got {other:?}"
            )))
        }
    };
    let response = TcpMsg::AuthResponse {
        callsign: config.callsign.clone(),
        digest: auth_digest(&config.auth_key, &challenge),
    };
    send(&mut writer, &response).await?;
    match next_msg(&mut reader, v2).await? {
        TcpMsg::AuthOk => {}
        TcpMsg::Error { message } => {
            return Err(ConnectError::AccessDenied {
                callsign: config.callsign.clone(),
                message,
            })
        }
        other => {
            return Err(ConnectError::Protocol(format!(
                "expected AuthOk, got {other:?}"
            )))
        }
    }
    reader
        .decoder_mut()
        .set_max_frame_length(MAX_POSTAUTH_FRAME);
    let (client_id, nodes, codecs) = loop {
        match next_msg(&mut reader, v2).await? {
            TcpMsg::ServerInfo {
                client_id,
                nodes,
                codecs,
            } => break (client_id, nodes, codecs),
            TcpMsg::Heartbeat | TcpMsg::Unknown { .. } => continue,
            TcpMsg::Error { message } => return Err(ConnectError::Refused(message)),
            other => {
                return Err(ConnectError::Protocol(format!(
                    "expected the server info, got {other:?}"
                )))
            }
        }
    };
    match codecs.first().map(String::as_str) {
        Some(codec) if codec.eq_ignore_ascii_case("OPUS") => {}
        Some(codec) => return Err(ConnectError::Codec(codec.to_owned())),
        None => return Err(ConnectError::Codec("(none)".into())),
    }
    // §1.3: the reflector learns our UDP port from the first datagram, sent to
    // the TCP peer's address and port, and answers it with a heartbeat at once.
    // Waiting for that answer means that when `connect` returns, talks reach us
    // from their first packet, and that a firewall eating UDP is named as such.
    let udp = udp_towards(peer)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let client_id = client_id as u16;
    let udp_seq = udp_handshake(&udp, client_id, peer).await?;
    if let Some(tg) = config.talkgroup.filter(|_| v2) {
        send(&mut writer, &TcpMsg::SelectTg { tg }).await?;
    }
    let session = Session {
        info: SessionInfo {
            protocol: major,
            // §4.2: the low 16 bits go in UDP headers.
            client_id,
            nodes,
        },
        reader,
        writer,
        udp,
        udp_seq,
        talkgroup: config.talkgroup,
    };
    Ok(session)
}

/// How often, and how long each time, the first UDP heartbeat is tried.
const UDP_HANDSHAKE_TRIES: u32 = 3;
const UDP_HANDSHAKE_WAIT: Duration = Duration::from_secs(1);

/// Sends heartbeats (sequence 0, 1, …) until the reflector's first datagram
/// answers one; returns the next sequence number to send.
async fn udp_handshake(
    udp: &UdpSocket,
    client_id: u16,
    peer: SocketAddr,
) -> Result<u16, ConnectError> {
    let mut buffer = [0u8; 1500];
    for seq in 0..UDP_HANDSHAKE_TRIES {
        let heartbeat = UdpMsg::Heartbeat.to_datagram(client_id, seq as u16);
        if let Err(error) = udp.send(&heartbeat).await {
            debug!(%error, "first heartbeat not sent");
        }
        let answer = tokio::time::timeout(UDP_HANDSHAKE_WAIT, udp.recv(&mut buffer)).await;
        if let Ok(Ok(len)) = answer {
            if matches!(UdpMsg::decode(&buffer[..len]), Ok((id, _, _)) if id == client_id) {
                return Ok(seq as u16 + 1);
            }
        }
    }
    Err(ConnectError::Lost(format!(
        "no UDP answer from the reflector at {peer} (is UDP port {} open on its side and ours?)",
        peer.port()
    )))
}

async fn udp_towards(peer: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0"
            .parse()
            .unwrap_or_else(|_| unreachable!("a literal"))
    } else {
        "[::]:0"
            .parse()
            .unwrap_or_else(|_| unreachable!("a literal"))
    };
    let udp = UdpSocket::bind(local).await?;
    // Connected: the kernel drops datagrams from anyone but the reflector (§1.3).
    udp.connect(peer).await?;
    Ok(udp)
}

/// Sequence numbers and liveness of one direction pair (§1.4, §6.4).
struct Clocks {
    tcp_sent: Instant,
    tcp_heard: Instant,
    udp_sent: Instant,
    udp_heard: Instant,
    udp_seq: u16,
    udp_expected: Option<u16>,
}

impl Session {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        stop: CancellationToken,
    ) {
        let reason = match self.serve(&mut commands, &events, &stop).await {
            Ok(()) => "disconnected by the bridge".to_owned(),
            Err(error) => error.to_string(),
        };
        let _ = self.writer.shutdown().await;
        let _ = events.send(Event::Disconnected { reason }).await;
    }

    async fn serve(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        events: &mpsc::Sender<Event>,
        stop: &CancellationToken,
    ) -> Result<(), ConnectError> {
        let now = Instant::now();
        let mut clocks = Clocks {
            tcp_sent: now,
            tcp_heard: now,
            udp_sent: now,
            udp_heard: now,
            udp_seq: self.udp_seq,
            udp_expected: None,
        };
        let v2 = self.info.protocol >= 2;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut datagram = vec![0u8; 65_536];
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                frame = self.reader.next() => {
                    let msg = match frame {
                        Some(Ok(frame)) => TcpMsg::decode(&frame, v2)
                            .map_err(|e| ConnectError::Protocol(e.to_string()))?,
                        Some(Err(error)) => return Err(ConnectError::Lost(error.to_string())),
                        None => return Err(ConnectError::Lost("the reflector closed the connection".into())),
                    };
                    clocks.tcp_heard = Instant::now();
                    if let Some(event) = self.on_tcp(msg)? {
                        // Room is kept for these (see below); a reader that let
                        // even that fill up is not coming back.
                        match events.try_send(event) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                return Err(ConnectError::Lost("nobody reads the session's events".into()));
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                        }
                    }
                }
                received = self.udp.recv(&mut datagram) => {
                    let len = received.map_err(|e| ConnectError::Lost(format!("UDP: {e}")))?;
                    if let Some(event) = self.on_udp(&mut clocks, &datagram[..len]) {
                        // Never waits on a slow reader: a late frame is worth
                        // nothing, and waiting would starve the sending and the
                        // heartbeats. Audio leaves room for the talker news.
                        if events.is_closed() {
                            return Ok(());
                        }
                        if events.capacity() <= CONTROL_ROOM || events.try_send(event).is_err() {
                            metrics::counter!("walkie_svxreflector_events_dropped_total").increment(1);
                        }
                    }
                }
                command = commands.recv() => match command {
                    Some(Command::Audio(opus)) => {
                        self.send_udp(&mut clocks, &UdpMsg::Audio(opus.to_vec())).await?;
                    }
                    Some(Command::Flush) => self.send_udp(&mut clocks, &UdpMsg::FlushSamples).await?,
                    None => return Ok(()),
                },
                _ = tick.tick() => self.keep_alive(&mut clocks).await?,
            }
        }
    }

    fn on_tcp(&mut self, msg: TcpMsg) -> Result<Option<Event>, ConnectError> {
        Ok(match msg {
            TcpMsg::TalkerStart { tg, callsign } if self.ours(tg) => {
                Some(Event::TalkerStart { callsign })
            }
            TcpMsg::TalkerStop { tg, callsign } if self.ours(tg) => {
                Some(Event::TalkerStop { callsign })
            }
            TcpMsg::Error { message } => return Err(ConnectError::Refused(message)),
            _ => None,
        })
    }

    /// A talker message for our talkgroup (protocol 1 has only one).
    fn ours(&self, tg: Option<u32>) -> bool {
        tg.is_none_or(|tg| Some(tg) == self.talkgroup)
    }

    fn on_udp(&mut self, clocks: &mut Clocks, datagram: &[u8]) -> Option<Event> {
        let (client_id, seq, msg) = match UdpMsg::decode(datagram) {
            Ok(decoded) => decoded,
            Err(error) => {
                metrics::counter!("walkie_svxreflector_bad_datagrams_total").increment(1);
                debug!(%error, "undecodable datagram dropped");
                return None;
            }
        };
        if client_id != self.info.client_id {
            metrics::counter!("walkie_svxreflector_bad_datagrams_total").increment(1);
            return None;
        }
        // §6.4: a datagram older than the last one is dropped; a gap is loss.
        if let Some(expected) = clocks.udp_expected {
            if seq.wrapping_sub(expected) > 0x7fff {
                metrics::counter!("walkie_svxreflector_late_datagrams_total").increment(1);
                return None;
            }
        }
        clocks.udp_expected = Some(seq.wrapping_add(1));
        clocks.udp_heard = Instant::now();
        match msg {
            UdpMsg::Audio(audio) if !audio.is_empty() => Some(Event::Audio(Bytes::from(audio))),
            UdpMsg::FlushSamples => Some(Event::Flush),
            _ => None,
        }
    }

    async fn send_udp(&mut self, clocks: &mut Clocks, msg: &UdpMsg) -> Result<(), ConnectError> {
        let datagram = msg.to_datagram(self.info.client_id, clocks.udp_seq);
        clocks.udp_seq = clocks.udp_seq.wrapping_add(1);
        clocks.udp_sent = Instant::now();
        match self.udp.send(&datagram).await {
            Ok(_) => Ok(()),
            // A refused datagram (ICMP from a reflector restarting) is one lost
            // packet; TCP tells whether the session is gone.
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                debug!(%error, "datagram refused");
                Ok(())
            }
            Err(error) => Err(ConnectError::Lost(format!("UDP: {error}"))),
        }
    }

    async fn keep_alive(&mut self, clocks: &mut Clocks) -> Result<(), ConnectError> {
        let now = Instant::now();
        if now.duration_since(clocks.tcp_heard) >= TCP_SILENCE_LIMIT {
            return Err(ConnectError::Lost(format!(
                "nothing heard from the reflector for {}s",
                TCP_SILENCE_LIMIT.as_secs()
            )));
        }
        if now.duration_since(clocks.udp_heard) >= UDP_SILENCE_LIMIT {
            warn!(
                "no UDP from the reflector for {}s",
                UDP_SILENCE_LIMIT.as_secs()
            );
            return Err(ConnectError::Lost(format!(
                "no UDP from the reflector for {}s (a firewall or NAT in the way?)",
                UDP_SILENCE_LIMIT.as_secs()
            )));
        }
        if now.duration_since(clocks.tcp_sent) >= TCP_HEARTBEAT_AFTER {
            send(&mut self.writer, &TcpMsg::Heartbeat).await?;
            clocks.tcp_sent = now;
        }
        if now.duration_since(clocks.udp_sent) >= UDP_HEARTBEAT_AFTER {
            self.send_udp(clocks, &UdpMsg::Heartbeat).await?;
        }
        Ok(())
    }
}

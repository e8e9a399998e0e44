//! The client connection: log-in, channel join, and the task that owns the
//! connection afterwards (TLS control channel, UDP voice, pings).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, MissedTickBehavior};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, info_span, trace, warn, Instrument};

use crate::crypt::{CryptError, CryptState};
use crate::error::MumbleError;
use crate::identity::ClientIdentity;
use crate::proto::{self, ControlMessage, MessageType, MumbleVersion};
use crate::state::{ChannelId, ServerState, Session, User, UserChange};
use crate::tcp::{self, Decoded, Frame, FrameDecoder};
use crate::udp::{Opened, UdpLink, PING_INTERVAL};
use crate::voice::{self, AudioPacket, Direction, VoicePacket};
use crate::voice_v2::{self, VoiceFormat};

pub const DEFAULT_PORT: u16 = 64738;
const TCP_PING_INTERVAL: Duration = Duration::from_secs(5);
/// murmurd answers every ping, so this long without a byte means it is gone.
const TCP_TIMEOUT: Duration = Duration::from_secs(30);
const EVENT_CAPACITY: usize = 1024;
const COMMAND_CAPACITY: usize = 256;
/// How long to wait for the server's Version (murmurd sends it right after
/// the TLS handshake) before announcing ours. Without it we announce 1.3.4
/// and speak the legacy format, which every server understands.
const SERVER_VERSION_WAIT: Duration = Duration::from_secs(3);

/// How to reach and log in to a Mumble server.
#[derive(Clone)]
pub struct ConnectConfig {
    /// `host`, `host:port` or `[v6]:port`; the port defaults to 64738.
    pub server: String,
    pub username: String,
    pub password: Option<String>,
    /// PEM certificate (chain) and PEM private key; both may be one file.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// A certificate held in memory (the bridge's generated one), used when
    /// `client_cert` is not set.
    pub identity: Option<ClientIdentity>,
    /// Accept any server certificate (murmurd's self-signed one).
    pub accept_invalid_cert: bool,
    /// Name or path of the channel to join: "Ops", "Root/Ops", "Ops/Sub".
    pub channel: String,
    pub transport: TransportMode,
    /// Limit for connecting, logging in and joining, together.
    pub timeout: Duration,
}

impl ConnectConfig {
    pub fn new(
        server: impl Into<String>,
        username: impl Into<String>,
        channel: impl Into<String>,
    ) -> Self {
        ConnectConfig {
            server: server.into(),
            username: username.into(),
            password: None,
            client_cert: None,
            identity: None,
            accept_invalid_cert: false,
            channel: channel.into(),
            transport: TransportMode::Auto,
            timeout: Duration::from_secs(15),
        }
    }
}

impl fmt::Debug for ConnectConfig {
    // The password never reaches logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectConfig")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("client_cert", &self.client_cert)
            .field("identity", &self.identity)
            .field("accept_invalid_cert", &self.accept_invalid_cert)
            .field("channel", &self.channel)
            .field("transport", &self.transport)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportMode {
    /// UDP when it gets through, the TCP tunnel otherwise.
    #[default]
    Auto,
    /// Never open a UDP socket (networks that block UDP).
    TcpOnly,
}

/// Where voice currently goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tunnel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// [`ConnectionHandle::disconnect`] was called.
    Requested,
    /// The [`ConnectionHandle`] was dropped.
    HandleDropped,
    ServerClosed,
    Kicked {
        by: Option<String>,
        reason: String,
        ban: bool,
    },
    Rejected(String),
    /// Nothing heard from the server for 30 s.
    Timeout,
    Io(String),
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Requested => f.write_str("disconnect requested"),
            DisconnectReason::HandleDropped => f.write_str("connection handle dropped"),
            DisconnectReason::ServerClosed => f.write_str("server closed the connection"),
            DisconnectReason::Kicked { by, reason, ban } => write!(
                f,
                "{} by {}: {reason}",
                if *ban { "banned" } else { "kicked" },
                by.as_deref().unwrap_or("the server")
            ),
            DisconnectReason::Rejected(r) => write!(f, "rejected: {r}"),
            DisconnectReason::Timeout => f.write_str("server stopped answering"),
            DisconnectReason::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

/// What happens on the server, as seen from our channel. Users present when
/// [`Connection::connect`] returns are not announced (see
/// [`ConnectionHandle::users`]); changes after it are.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    UserJoined {
        session: Session,
        name: String,
        channel: ChannelId,
        channel_path: String,
    },
    UserLeft {
        session: Session,
        name: String,
        channel: ChannelId,
        channel_path: String,
    },
    /// A user (possibly us) changed channel.
    UserMoved {
        session: Session,
        name: String,
        from: ChannelId,
        channel: ChannelId,
        channel_path: String,
    },
    /// One Opus packet from a user in our channel, passed through untouched.
    Voice {
        session: Session,
        name: String,
        /// The sender's sequence number, in 10 ms units.
        seq: u64,
        opus: Bytes,
        /// Last packet of the transmission.
        terminator: bool,
        transport: Transport,
    },
    TextMessage {
        from_session: Session,
        from_name: String,
        message: String,
    },
    /// The server stopped (`Some(why)`) or resumed (`None`) passing our voice
    /// on: suppressed in a channel where we may not speak, or muted by an
    /// administrator.
    VoiceBlocked { reason: Option<String> },
    /// The last event; the connection is gone.
    Disconnected { reason: DisconnectReason },
}

/// Counters of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub voice_rx_udp: u64,
    pub voice_rx_tunnel: u64,
    pub voice_tx_udp: u64,
    pub voice_tx_tunnel: u64,
    pub udp_pongs: u64,
    pub decrypt_failures: u64,
    pub resync_requests: u64,
    /// Server input dropped as malformed or unknown.
    pub bad_input: u64,
    /// Voice events dropped because the event receiver fell behind.
    pub voice_dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    voice_rx_udp: AtomicU64,
    voice_rx_tunnel: AtomicU64,
    voice_tx_udp: AtomicU64,
    voice_tx_tunnel: AtomicU64,
    udp_pongs: AtomicU64,
    decrypt_failures: AtomicU64,
    resync_requests: AtomicU64,
    bad_input: AtomicU64,
    voice_dropped: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> Stats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            voice_rx_udp: g(&self.voice_rx_udp),
            voice_rx_tunnel: g(&self.voice_rx_tunnel),
            voice_tx_udp: g(&self.voice_tx_udp),
            voice_tx_tunnel: g(&self.voice_tx_tunnel),
            udp_pongs: g(&self.udp_pongs),
            decrypt_failures: g(&self.decrypt_failures),
            resync_requests: g(&self.resync_requests),
            bad_input: g(&self.bad_input),
            voice_dropped: g(&self.voice_dropped),
        }
    }

    /// Malformed or unknown server input: logged by the caller, counted here.
    fn bad_input(&self, what: &'static str, reason: &'static str) {
        bump(&self.bad_input);
        metrics::counter!("walkie_mumble_bad_input_total", "what" => what, "reason" => reason)
            .increment(1);
    }
}

#[derive(Debug)]
enum Command {
    Voice { opus: Bytes, terminator: bool },
    Text { to: Session, text: String },
    Comment(String),
    Disconnect,
}

#[derive(Debug, Default)]
struct Roster {
    our_channel: ChannelId,
    users: Vec<User>,
}

/// Talks to the connection task. Dropping it closes the connection.
pub struct ConnectionHandle {
    cmds: mpsc::Sender<Command>,
    session: Session,
    roster: watch::Receiver<Arc<Roster>>,
    transport: watch::Receiver<Transport>,
    counters: Arc<Counters>,
    voice_format: VoiceFormat,
    server_version: Option<MumbleVersion>,
    task: JoinHandle<()>,
}

impl fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("session", &self.session)
            .field("transport", &*self.transport.borrow())
            .field("voice_format", &self.voice_format)
            .finish_non_exhaustive()
    }
}

impl ConnectionHandle {
    /// Sends one Opus packet to our channel. Sequence numbers are ours to keep:
    /// they advance by the packet's duration in 10 ms units, as Mumble's own
    /// client does. `terminator` marks the last packet of a transmission.
    pub async fn send_voice(&self, opus: &[u8], terminator: bool) -> Result<(), MumbleError> {
        if opus.len() > voice::MAX_OPUS {
            return Err(MumbleError::PacketTooLarge(opus.len()));
        }
        self.command(Command::Voice {
            opus: Bytes::copy_from_slice(opus),
            terminator,
        })
        .await
    }

    /// A private text message (HTML allowed if the server allows it).
    pub async fn send_text_to_user(&self, session: Session, text: &str) -> Result<(), MumbleError> {
        self.command(Command::Text {
            to: session,
            text: text.to_owned(),
        })
        .await
    }

    /// Sets our user comment (shown next to our name in clients).
    pub async fn set_comment(&self, text: &str) -> Result<(), MumbleError> {
        self.command(Command::Comment(text.to_owned())).await
    }

    /// Users in our channel now, us excluded, sorted by session.
    pub fn users_in_channel(&self) -> Vec<User> {
        let roster = self.roster.borrow();
        let mut users: Vec<User> = roster
            .users
            .iter()
            .filter(|u| u.channel == roster.our_channel && u.session != self.session)
            .cloned()
            .collect();
        users.sort_by_key(|u| u.session);
        users
    }

    /// Every user on the server, us included.
    pub fn users(&self) -> Vec<User> {
        self.roster.borrow().users.clone()
    }

    /// Waits until some user on the server satisfies `wanted` (names and comments
    /// change without an [`Event`]; the roster does change), and returns that user;
    /// `None` when the connection ended first.
    pub async fn wait_for_user(&self, wanted: impl Fn(&User) -> bool) -> Option<User> {
        let mut roster = self.roster.clone();
        let found = roster
            .wait_for(|r| r.users.iter().any(&wanted))
            .await
            .ok()?;
        found.users.iter().find(|u| wanted(u)).cloned()
    }

    /// One user on the server now, by session.
    pub fn user(&self, session: Session) -> Option<User> {
        self.roster
            .borrow()
            .users
            .iter()
            .find(|u| u.session == session)
            .cloned()
    }

    pub fn our_session(&self) -> Session {
        self.session
    }

    pub fn our_channel(&self) -> ChannelId {
        self.roster.borrow().our_channel
    }

    pub fn transport(&self) -> Transport {
        *self.transport.borrow()
    }

    /// Follows transport changes (e.g. to wait until UDP works).
    pub fn watch_transport(&self) -> watch::Receiver<Transport> {
        self.transport.clone()
    }

    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// The voice packet format negotiated at log-in: protobuf when the
    /// server announced ≥ 1.5.0 (and we then announced 1.5.0), legacy
    /// otherwise. Fixed for the connection's lifetime.
    pub fn voice_format(&self) -> VoiceFormat {
        self.voice_format
    }

    /// The version the server announced, if it did.
    pub fn server_version(&self) -> Option<MumbleVersion> {
        self.server_version
    }

    pub fn is_closed(&self) -> bool {
        self.cmds.is_closed()
    }

    /// Closes the connection and waits until the task has ended; the event
    /// stream ends with `Disconnected { reason: Requested }`.
    pub async fn disconnect(self) {
        let _ = self.cmds.send(Command::Disconnect).await;
        let _ = self.task.await;
    }

    async fn command(&self, cmd: Command) -> Result<(), MumbleError> {
        self.cmds.send(cmd).await.map_err(|_| MumbleError::Closed)
    }
}

/// Entry point: see [`Connection::connect`].
#[derive(Debug)]
pub struct Connection;

impl Connection {
    /// Connects, logs in and joins `config.channel`. Returns once we are in the
    /// channel; everything after that arrives as [`Event`]s.
    pub async fn connect(
        config: ConnectConfig,
    ) -> Result<(ConnectionHandle, mpsc::Receiver<Event>), MumbleError> {
        let span = info_span!("mumble", server = %config.server, user = %config.username);
        let actor = login(&config).instrument(span.clone()).await?;
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (events_tx, events_rx) = mpsc::channel(EVENT_CAPACITY);
        let handle_session = actor.session;
        let roster = actor.roster_tx.subscribe();
        let transport = actor.transport_tx.subscribe();
        let counters = actor.counters.clone();
        let voice_format = actor.format;
        let server_version = actor.server_version;
        let task = tokio::spawn(actor.run(cmd_rx, events_tx).instrument(span));
        let handle = ConnectionHandle {
            cmds: cmd_tx,
            session: handle_session,
            roster,
            transport,
            counters,
            voice_format,
            server_version,
            task,
        };
        Ok((handle, events_rx))
    }
}

/// `host[:port]` or `[v6][:port]` → (host, port).
pub(crate) fn parse_server(server: &str) -> Result<(String, u16), MumbleError> {
    let bad = || MumbleError::BadAddress(server.to_owned());
    let s = server.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match s.matches(':').count() {
            0 => (s, None),
            1 => s
                .split_once(':')
                .map(|(h, p)| (h, Some(p)))
                .ok_or_else(bad)?,
            // A bare IPv6 address.
            _ => (s, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p.parse().map_err(|_| bad())?,
    };
    Ok((host.to_owned(), port))
}

struct Reader {
    rd: ReadHalf<TlsStream<TcpStream>>,
    buf: BytesMut,
    decoder: FrameDecoder,
    last_rx: Instant,
    counters: Arc<Counters>,
}

impl Reader {
    /// The next frame; `None` at end of stream. Cancel-safe: all progress
    /// lives in `self`.
    async fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Some(Decoded::Frame(f)) => return Ok(Some(f)),
                Some(Decoded::Oversized { kind, len }) => {
                    // No Mumble server sends more than 8 MiB in one message: the
                    // stream is garbage or out of step. Skipping `len` bytes would
                    // swallow every later message while the connection looks
                    // alive; a new connection is the only way back in step.
                    self.counters.bad_input("frame", "oversized");
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "control message of type {kind} claims {len} bytes, over the \
                             protocol's 8 MiB: the stream cannot be trusted"
                        ),
                    ));
                }
                None => {
                    self.buf.reserve(8192);
                    if self.rd.read_buf(&mut self.buf).await? == 0 {
                        return Ok(None);
                    }
                    self.last_rx = Instant::now();
                }
            }
        }
    }
}

struct Writer {
    wr: WriteHalf<TlsStream<TcpStream>>,
    buf: BytesMut,
}

impl Writer {
    async fn send<M: ControlMessage>(&mut self, m: &M) -> io::Result<()> {
        self.raw(M::TYPE as u16, &m.encode_to_vec()).await
    }

    async fn raw(&mut self, kind: u16, payload: &[u8]) -> io::Result<()> {
        self.buf.clear();
        tcp::encode(kind, payload, &mut self.buf);
        self.wr.write_all(&self.buf).await?;
        self.wr.flush().await
    }
}

struct Actor {
    server_addr: SocketAddr,
    reader: Reader,
    writer: Writer,
    state: ServerState,
    session: Session,
    our_channel: ChannelId,
    mode: TransportMode,
    /// Keys from CryptSetup until the UDP socket is open.
    pending_crypt: Option<CryptState>,
    udp: Option<UdpLink>,
    transport: Transport,
    transport_tx: watch::Sender<Transport>,
    roster_tx: watch::Sender<Arc<Roster>>,
    /// `None` until log-in is over: nobody listens yet.
    events: Option<mpsc::Sender<Event>>,
    /// Set while waiting for the server to move us: a PermissionDenied then
    /// answers our join.
    join_denied: Option<String>,
    joining: bool,
    /// Why nobody hears us (the server suppresses or mutes us), if so.
    voice_blocked: Option<String>,
    /// The server's longest text message and comment (`textmessagelength`, in
    /// UTF-16 units as Qt counts them); longer ones it refuses outright.
    message_length: Option<usize>,
    seq: u64,
    /// Negotiated before Authenticate; see [`VoiceFormat`].
    format: VoiceFormat,
    server_version: Option<MumbleVersion>,
    counters: Arc<Counters>,
    started: Instant,
    tcp_packets: u32,
    udp_packets: u32,
}

enum Wake {
    Command(Option<Command>),
    Frame(io::Result<Option<Frame>>),
    Udp(io::Result<usize>),
    TcpPing,
    UdpPing,
}

type Step = io::Result<Option<DisconnectReason>>;

async fn login(config: &ConnectConfig) -> Result<Actor, MumbleError> {
    let deadline = tokio::time::Instant::now() + config.timeout;
    let (host, port) = parse_server(&config.server)?;
    let tls = crate::tls::client_config(
        config.accept_invalid_cert,
        config.client_cert.as_ref(),
        config.identity.as_ref(),
    )?;
    let server_name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|_| MumbleError::BadAddress(config.server.clone()))?;

    let addr = timeout_at(deadline, tokio::net::lookup_host((host.as_str(), port)))
        .await
        .map_err(|_| MumbleError::Timeout("resolving the server name"))?
        .map_err(|source| MumbleError::Resolve {
            server: config.server.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| MumbleError::Resolve {
            server: config.server.clone(),
            source: io::Error::new(io::ErrorKind::NotFound, "no address"),
        })?;
    let tcp = timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| MumbleError::Timeout("connecting"))?
        .map_err(|source| MumbleError::Connect {
            server: config.server.clone(),
            source,
        })?;
    // Voice may travel through this socket; do not let Nagle hold it back.
    tcp.set_nodelay(true)?;
    let stream = timeout_at(deadline, TlsConnector::from(tls).connect(server_name, tcp))
        .await
        .map_err(|_| MumbleError::Timeout("in the TLS handshake"))?
        .map_err(|source| MumbleError::Tls {
            server: config.server.clone(),
            source,
        })?;
    debug!(%addr, "TLS established");
    let (rd, wr) = tokio::io::split(stream);
    let counters = Arc::new(Counters::default());
    let now = Instant::now();
    let mut actor = Actor {
        server_addr: addr,
        reader: Reader {
            rd,
            buf: BytesMut::with_capacity(16 * 1024),
            decoder: FrameDecoder::default(),
            last_rx: now,
            counters: counters.clone(),
        },
        writer: Writer {
            wr,
            buf: BytesMut::with_capacity(2048),
        },
        state: ServerState::default(),
        session: Session(0),
        our_channel: ChannelId::ROOT,
        mode: config.transport,
        pending_crypt: None,
        udp: None,
        transport: Transport::Tunnel,
        transport_tx: watch::Sender::new(Transport::Tunnel),
        roster_tx: watch::Sender::new(Arc::new(Roster::default())),
        events: None,
        join_denied: None,
        voice_blocked: None,
        message_length: None,
        joining: false,
        seq: 0,
        format: VoiceFormat::Legacy,
        server_version: None,
        counters,
        started: now,
        tcp_packets: 0,
        udp_packets: 0,
    };
    timeout_at(deadline, actor.authenticate(config))
        .await
        .map_err(|_| MumbleError::Timeout("logging in"))??;
    timeout_at(deadline, actor.join(&config.channel))
        .await
        .map_err(|_| MumbleError::Timeout("joining the channel"))??;
    actor.start_udp().await;
    Ok(actor)
}

impl Actor {
    /// Reads the server's Version, which murmurd sends unasked as soon as TLS
    /// is up. Frames before it are handled as usual. `None` if the server does
    /// not send one within [`SERVER_VERSION_WAIT`] or it does not decode.
    async fn read_server_version(&mut self) -> Result<Option<MumbleVersion>, MumbleError> {
        let until = tokio::time::Instant::now() + SERVER_VERSION_WAIT;
        loop {
            // next_frame is cancel-safe: a timeout loses nothing.
            let Ok(frame) = timeout_at(until, self.reader.next_frame()).await else {
                warn!("the server sent no Version; announcing 1.3.4 (legacy voice format)");
                return Ok(None);
            };
            let frame = frame?.ok_or(MumbleError::ServerClosed("logging in"))?;
            if frame.kind == MessageType::Version as u16 {
                self.tcp_packets = self.tcp_packets.wrapping_add(1);
                let Some(v) = self.decode::<proto::Version>(MessageType::Version, frame.payload)
                else {
                    return Ok(None);
                };
                let version = MumbleVersion::of(&v);
                info!(
                    version = %version.map_or_else(|| "unknown".to_owned(), |v| v.to_string()),
                    release = v.release.as_deref().unwrap_or(""),
                    "server version"
                );
                return Ok(version);
            }
            if let Some(reason) = self.on_frame(frame).await? {
                return Err(MumbleError::Rejected {
                    kind: "disconnected".into(),
                    reason: reason.to_string(),
                });
            }
        }
    }

    async fn authenticate(&mut self, config: &ConnectConfig) -> Result<(), MumbleError> {
        // The server picks the voice format by the version we announce, so
        // its version comes first: 1.5.0 (protobuf) to a server ≥ 1.5.0,
        // 1.3.4 (legacy) to anything else.
        self.server_version = self.read_server_version().await?;
        self.format = VoiceFormat::negotiate(self.server_version);
        let ours = self.format.announce();
        info!(
            server = %self.server_version.map_or_else(|| "unknown".to_owned(), |v| v.to_string()),
            announce = %ours,
            format = %self.format,
            "voice format negotiated"
        );
        self.writer
            .send(&proto::Version {
                version: Some(ours.v1()),
                release: Some(concat!("walkie-bridge ", env!("CARGO_PKG_VERSION")).to_owned()),
                os: Some(std::env::consts::OS.to_owned()),
                os_version: None,
                version_v2: Some(ours.v2()),
            })
            .await?;
        self.writer
            .send(&proto::Authenticate {
                username: Some(config.username.clone()),
                password: config.password.clone(),
                tokens: Vec::new(),
                celt_versions: Vec::new(),
                opus: Some(true),
            })
            .await?;
        loop {
            let frame = self
                .reader
                .next_frame()
                .await?
                .ok_or(MumbleError::ServerClosed("logging in"))?;
            match MessageType::from_u16(frame.kind) {
                Some(MessageType::Reject) => {
                    let r = proto::Reject::decode(frame.payload).unwrap_or_default();
                    return Err(MumbleError::Rejected {
                        kind: r.kind_name().to_owned(),
                        reason: r.reason.unwrap_or_default(),
                    });
                }
                Some(MessageType::ServerSync) => {
                    let sync = proto::ServerSync::decode(frame.payload).map_err(|e| {
                        MumbleError::Io(io::Error::new(io::ErrorKind::InvalidData, e))
                    })?;
                    let session = sync.session.ok_or_else(|| {
                        MumbleError::Io(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "ServerSync without our session",
                        ))
                    })?;
                    self.session = Session(session);
                    self.our_channel = self
                        .state
                        .user(self.session)
                        .map_or(ChannelId::ROOT, |u| u.channel);
                    self.publish_roster();
                    // Our state arrived before we knew which session is ours.
                    self.check_voice_block().await;
                    info!(
                        session,
                        welcome = sync.welcome_text.as_deref().unwrap_or(""),
                        "logged in"
                    );
                    return Ok(());
                }
                _ => {
                    if let Some(reason) = self.on_frame(frame).await? {
                        return Err(MumbleError::Rejected {
                            kind: "disconnected".into(),
                            reason: reason.to_string(),
                        });
                    }
                }
            }
        }
    }

    async fn join(&mut self, spec: &str) -> Result<(), MumbleError> {
        let target = self.state.resolve_channel(spec)?;
        if self.our_channel == target {
            info!(channel = %self.state.channel_path(target), "in channel");
            return Ok(());
        }
        self.writer
            .send(&proto::UserState {
                session: Some(self.session.0),
                channel_id: Some(target.0),
                ..Default::default()
            })
            .await?;
        self.joining = true;
        self.join_denied = None;
        let result = loop {
            let Some(frame) = self.reader.next_frame().await? else {
                break Err(MumbleError::ServerClosed("joining the channel"));
            };
            if let Some(reason) = self.on_frame(frame).await? {
                break Err(MumbleError::JoinDenied {
                    channel: spec.to_owned(),
                    reason: reason.to_string(),
                });
            }
            if self.our_channel == target {
                info!(channel = %self.state.channel_path(target), "joined channel");
                break Ok(());
            }
            if let Some(reason) = self.join_denied.take() {
                break Err(MumbleError::JoinDenied {
                    channel: spec.to_owned(),
                    reason,
                });
            }
        };
        self.joining = false;
        result
    }

    async fn start_udp(&mut self) {
        if self.mode != TransportMode::Auto || self.udp.is_some() {
            return;
        }
        let Some(crypt) = self.pending_crypt.take() else {
            return;
        };
        match UdpLink::open(self.server_addr, crypt, Instant::now()).await {
            Ok(link) => {
                debug!(local = ?link.socket.local_addr().ok(), "UDP socket open");
                self.udp = Some(link);
                self.udp_ping().await;
            }
            Err(e) => warn!(%e, "cannot open a UDP socket; voice stays in the TCP tunnel"),
        }
    }

    async fn run(mut self, mut cmds: mpsc::Receiver<Command>, events: mpsc::Sender<Event>) {
        self.events = Some(events.clone());
        // Learnt during log-in, when nobody listened yet.
        if let Some(reason) = self.voice_blocked.clone() {
            self.emit(Event::VoiceBlocked {
                reason: Some(reason),
            })
            .await;
        }
        let start = tokio::time::Instant::now();
        let mut tcp_ping = tokio::time::interval_at(start + TCP_PING_INTERVAL, TCP_PING_INTERVAL);
        tcp_ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut udp_ping = tokio::time::interval_at(start + PING_INTERVAL, PING_INTERVAL);
        udp_ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut datagram = vec![0u8; 2048];
        let reason = loop {
            let wake = tokio::select! {
                cmd = cmds.recv() => Wake::Command(cmd),
                frame = self.reader.next_frame() => Wake::Frame(frame),
                n = udp_recv(self.udp.as_ref(), &mut datagram) => Wake::Udp(n),
                _ = tcp_ping.tick() => Wake::TcpPing,
                _ = udp_ping.tick() => Wake::UdpPing,
            };
            let step: Step = match wake {
                Wake::Command(None) => Ok(Some(DisconnectReason::HandleDropped)),
                Wake::Command(Some(cmd)) => self.on_command(cmd).await,
                Wake::Frame(Ok(None)) => Ok(Some(DisconnectReason::ServerClosed)),
                Wake::Frame(Ok(Some(frame))) => self.on_frame(frame).await,
                Wake::Frame(Err(e)) => Err(e),
                Wake::Udp(Ok(n)) => self.on_datagram(&datagram[..n]).await,
                Wake::Udp(Err(e)) => {
                    // E.g. ECONNREFUSED after an ICMP error: UDP is not
                    // getting through; the pings will notice and fall back.
                    debug!(%e, "UDP receive error");
                    Ok(None)
                }
                Wake::TcpPing => self.tcp_ping().await,
                Wake::UdpPing => {
                    self.udp_ping().await;
                    Ok(None)
                }
            };
            match step {
                Ok(None) => {}
                Ok(Some(reason)) => break reason,
                Err(e) => break DisconnectReason::Io(e.to_string()),
            }
        };
        // close_notify, so the server logs a clean disconnect; bounded in
        // case the peer is gone.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.wr.shutdown()).await;
        info!(%reason, "disconnected");
        let _ = events.send(Event::Disconnected { reason }).await;
    }

    async fn on_command(&mut self, cmd: Command) -> Step {
        match cmd {
            Command::Voice { opus, terminator } => self.send_voice(opus, terminator).await?,
            Command::Text { to, text } => {
                self.writer
                    .send(&proto::TextMessage {
                        session: vec![to.0],
                        message: fit_message(text, self.message_length),
                        ..Default::default()
                    })
                    .await?
            }
            Command::Comment(text) => {
                self.writer
                    .send(&proto::UserState {
                        session: Some(self.session.0),
                        comment: Some(fit_message(text, self.message_length)),
                        ..Default::default()
                    })
                    .await?
            }
            Command::Disconnect => return Ok(Some(DisconnectReason::Requested)),
        }
        Ok(None)
    }

    async fn send_voice(&mut self, mut opus: Bytes, terminator: bool) -> io::Result<()> {
        if opus.is_empty() && self.format == VoiceFormat::Protobuf {
            // Mumble ≥ 1.5 drops protobuf audio without payload; an empty
            // terminator would never arrive.
            opus = Bytes::from_static(&voice_v2::OPUS_SILENCE);
        }
        let seq = self.seq;
        self.seq += voice::opus_seq_units(&opus);
        let packet = self.format.to_vec(&VoicePacket::Audio(AudioPacket {
            target: voice::TARGET_NORMAL,
            session: None,
            seq,
            opus,
            terminator,
            position: None,
        }));
        if self.transport == Transport::Udp {
            if let Some(link) = &mut self.udp {
                match link.send(&packet).await {
                    Ok(()) => {
                        bump(&self.counters.voice_tx_udp);
                        return Ok(());
                    }
                    Err(e) => debug!(%e, "UDP send failed; using the TCP tunnel"),
                }
            }
        }
        self.writer
            .raw(MessageType::UdpTunnel as u16, &packet)
            .await?;
        bump(&self.counters.voice_tx_tunnel);
        Ok(())
    }

    async fn tcp_ping(&mut self) -> Step {
        if self.reader.last_rx.elapsed() > TCP_TIMEOUT {
            return Ok(Some(DisconnectReason::Timeout));
        }
        let (good, late, lost) = self
            .udp
            .as_ref()
            .map_or((0, 0, 0), |l| (l.crypt.good, l.crypt.late, l.crypt.lost));
        self.writer
            .send(&proto::Ping {
                timestamp: Some(self.started.elapsed().as_millis() as u64),
                good: Some(good),
                late: Some(late),
                lost: Some(lost),
                resync: Some(self.udp.as_ref().map_or(0, |l| l.resync_requests)),
                udp_packets: Some(self.udp_packets),
                tcp_packets: Some(self.tcp_packets),
                ..Default::default()
            })
            .await?;
        Ok(None)
    }

    async fn udp_ping(&mut self) {
        let now = Instant::now();
        let timestamp = self.started.elapsed().as_micros() as u64;
        let ping = self.format.to_vec(&VoicePacket::Ping { timestamp });
        let Some(link) = &mut self.udp else {
            return;
        };
        if let Err(e) = link.send(&ping).await {
            debug!(%e, "UDP ping not sent");
        }
        let usable = link.usable(now);
        self.set_transport(if usable {
            Transport::Udp
        } else {
            Transport::Tunnel
        });
    }

    fn set_transport(&mut self, t: Transport) {
        if self.transport != t {
            match t {
                Transport::Udp => info!("voice over UDP"),
                Transport::Tunnel => info!("UDP not answering; voice through the TCP tunnel"),
            }
            self.transport = t;
            self.transport_tx.send_replace(t);
        }
    }

    async fn on_datagram(&mut self, data: &[u8]) -> Step {
        self.udp_packets = self.udp_packets.wrapping_add(1);
        let Some(link) = &mut self.udp else {
            return Ok(None);
        };
        match link.decrypt(data, Instant::now()) {
            Opened::Plain(plain) => {
                self.set_transport(Transport::Udp);
                self.on_voice_packet(&plain, Transport::Udp).await;
            }
            Opened::Failed { error, resync } => {
                bump(&self.counters.decrypt_failures);
                self.counters.bad_input(
                    "udp",
                    match error {
                        CryptError::TooShort => "too_short",
                        CryptError::Replay => "replay",
                        CryptError::BadTag => "bad_tag",
                    },
                );
                debug!(%error, len = data.len(), "undecryptable datagram dropped");
                if resync {
                    info!("UDP decryption keeps failing; asking the server to resync");
                    bump(&self.counters.resync_requests);
                    self.writer.send(&proto::CryptSetup::default()).await?;
                }
            }
        }
        Ok(None)
    }

    async fn on_voice_packet(&mut self, data: &[u8], via: Transport) {
        let packet = match self.format.decode(data, Direction::ToClient) {
            Ok(p) => p,
            Err(e) => {
                debug!(%e, ?via, "malformed voice packet dropped");
                self.counters.bad_input("voice", e.label());
                return;
            }
        };
        let audio = match packet {
            VoicePacket::Ping { timestamp } => {
                if via == Transport::Udp {
                    bump(&self.counters.udp_pongs);
                    let now = self.started.elapsed().as_micros() as u64;
                    trace!(rtt_us = now.saturating_sub(timestamp), "UDP pong");
                }
                return;
            }
            VoicePacket::Audio(a) => a,
        };
        let session = Session(audio.session.unwrap_or_default());
        bump(match via {
            Transport::Udp => &self.counters.voice_rx_udp,
            Transport::Tunnel => &self.counters.voice_rx_tunnel,
        });
        let Some(user) = self.state.user(session) else {
            debug!(%session, "voice from an unknown session dropped");
            return;
        };
        if user.channel != self.our_channel || session == self.session {
            trace!(%session, "voice from outside our channel ignored");
            return;
        }
        let event = Event::Voice {
            session,
            name: user.name.clone(),
            seq: audio.seq,
            opus: audio.opus,
            terminator: audio.terminator,
            transport: via,
        };
        let Some(events) = &self.events else {
            return;
        };
        // Voice never stalls the connection: a receiver that falls behind
        // loses packets (counted), control events still queue.
        if let Err(mpsc::error::TrySendError::Full(_)) = events.try_send(event) {
            bump(&self.counters.voice_dropped);
            metrics::counter!("walkie_mumble_voice_dropped_total").increment(1);
        }
    }

    async fn emit(&self, event: Event) {
        if let Some(events) = &self.events {
            let _ = events.send(event).await;
        }
    }

    fn publish_roster(&self) {
        self.roster_tx.send_replace(Arc::new(Roster {
            our_channel: self.our_channel,
            users: self.state.users().cloned().collect(),
        }));
    }

    fn decode<M: Message + Default>(&self, kind: MessageType, payload: Bytes) -> Option<M> {
        match M::decode(payload) {
            Ok(m) => Some(m),
            Err(e) => {
                warn!(?kind, %e, "undecodable control message dropped");
                self.counters.bad_input("message", "undecodable");
                None
            }
        }
    }

    async fn on_frame(&mut self, frame: Frame) -> Step {
        self.tcp_packets = self.tcp_packets.wrapping_add(1);
        let Some(kind) = MessageType::from_u16(frame.kind) else {
            debug!(
                kind = frame.kind,
                len = frame.payload.len(),
                "unknown control message ignored"
            );
            self.counters.bad_input("message", "unknown_type");
            return Ok(None);
        };
        let payload = frame.payload;
        match kind {
            MessageType::UdpTunnel => self.on_voice_packet(&payload, Transport::Tunnel).await,
            MessageType::Version => {
                // The first one is read before log-in; the format stays.
                if let Some(v) = self.decode::<proto::Version>(kind, payload) {
                    debug!(
                        version = ?MumbleVersion::of(&v),
                        format = %self.format,
                        "server version repeated; voice format unchanged"
                    );
                }
            }
            MessageType::Reject => {
                if let Some(r) = self.decode::<proto::Reject>(kind, payload) {
                    return Ok(Some(DisconnectReason::Rejected(format!(
                        "{}: {}",
                        r.kind_name(),
                        r.reason.unwrap_or_default()
                    ))));
                }
            }
            MessageType::ChannelState => {
                if let Some(m) = self.decode::<proto::ChannelState>(kind, payload) {
                    self.state.apply_channel_state(&m);
                }
            }
            MessageType::ChannelRemove => {
                if let Some(m) = self.decode::<proto::ChannelRemove>(kind, payload) {
                    self.state.apply_channel_remove(&m);
                }
            }
            MessageType::UserState => {
                if let Some(m) = self.decode::<proto::UserState>(kind, payload) {
                    self.on_user_state(&m).await;
                }
            }
            MessageType::UserRemove => {
                if let Some(m) = self.decode::<proto::UserRemove>(kind, payload) {
                    if Session(m.session) == self.session && self.session != Session(0) {
                        let by = m
                            .actor
                            .and_then(|a| self.state.user(Session(a)))
                            .map(|u| u.name.clone());
                        return Ok(Some(DisconnectReason::Kicked {
                            by,
                            reason: m.reason.unwrap_or_default(),
                            ban: m.ban.unwrap_or(false),
                        }));
                    }
                    if let Some(UserChange::Left(user)) = self.state.apply_user_remove(&m) {
                        self.publish_roster();
                        let channel_path = self.state.channel_path(user.channel);
                        self.emit(Event::UserLeft {
                            session: user.session,
                            name: user.name,
                            channel: user.channel,
                            channel_path,
                        })
                        .await;
                    }
                }
            }
            MessageType::TextMessage => {
                if let Some(m) = self.decode::<proto::TextMessage>(kind, payload) {
                    if let Some(actor) = m.actor.map(Session) {
                        let from_name = self
                            .state
                            .user(actor)
                            .map(|u| u.name.clone())
                            .unwrap_or_default();
                        self.emit(Event::TextMessage {
                            from_session: actor,
                            from_name,
                            message: m.message,
                        })
                        .await;
                    }
                }
            }
            MessageType::PermissionDenied => {
                if let Some(m) = self.decode::<proto::PermissionDenied>(kind, payload) {
                    let reason = m.describe();
                    warn!(%reason, "permission denied");
                    if self.joining {
                        self.join_denied = Some(reason);
                    }
                }
            }
            MessageType::CryptSetup => {
                if let Some(m) = self.decode::<proto::CryptSetup>(kind, payload) {
                    self.on_crypt_setup(m).await?;
                }
            }
            MessageType::CodecVersion => {
                if let Some(m) = self.decode::<proto::CodecVersion>(kind, payload) {
                    if m.opus != Some(true) {
                        warn!("the server does not select Opus; clients without Opus will not hear us");
                    }
                }
            }
            MessageType::ServerConfig => {
                if let Some(m) = self.decode::<proto::ServerConfig>(kind, payload) {
                    debug!(?m.max_bandwidth, ?m.message_length, ?m.allow_html, "server config");
                    // 0 means no limit.
                    self.message_length = m.message_length.filter(|l| *l > 0).map(|l| l as usize);
                }
            }
            // Answers to our pings; their arrival already counts as liveness.
            MessageType::Ping => {}
            other => trace!(?other, "control message not used"),
        }
        Ok(None)
    }

    async fn on_user_state(&mut self, m: &proto::UserState) {
        let change = self.state.apply_user_state(m);
        // Comments and names change without an event; the roster shows them.
        self.publish_roster();
        let Some(change) = change else {
            return;
        };
        let ours = m.session.map(Session) == Some(self.session) && self.session != Session(0);
        if ours {
            self.check_voice_block().await;
        }
        let event = match change {
            UserChange::Joined(user) => Event::UserJoined {
                session: user.session,
                name: user.name,
                channel: user.channel,
                channel_path: self.state.channel_path(user.channel),
            },
            UserChange::Moved { user, from } => {
                if ours {
                    self.our_channel = user.channel;
                }
                Event::UserMoved {
                    session: user.session,
                    name: user.name,
                    from,
                    channel: user.channel,
                    channel_path: self.state.channel_path(user.channel),
                }
            }
            UserChange::Left(_) => return,
        };
        if ours {
            self.publish_roster();
        }
        self.emit(event).await;
    }

    /// Why the server does not pass our voice on, from our own user's state.
    fn our_voice_block(&self) -> Option<String> {
        let me = self.state.user(self.session)?;
        if me.server_muted {
            Some("an administrator of the Mumble server muted the bot: nobody on Mumble hears the channel".to_string())
        } else if me.suppressed {
            Some(format!(
                "the Mumble server does not let the bot speak in {} (no Speak permission there): nobody on Mumble hears the channel",
                self.state.channel_path(me.channel)
            ))
        } else {
            None
        }
    }

    /// Tells (log and event) when our voice became blocked or free again.
    async fn check_voice_block(&mut self) {
        let now = self.our_voice_block();
        if now == self.voice_blocked {
            return;
        }
        match &now {
            Some(reason) => warn!(%reason, "the bot cannot be heard on Mumble"),
            None => info!("the bot can be heard on Mumble again"),
        }
        self.voice_blocked.clone_from(&now);
        self.emit(Event::VoiceBlocked { reason: now }).await;
    }

    async fn on_crypt_setup(&mut self, m: proto::CryptSetup) -> io::Result<()> {
        let block = |v: &Option<Vec<u8>>| v.as_deref().and_then(|b| <[u8; 16]>::try_from(b).ok());
        let empty = |v: &Option<Vec<u8>>| v.as_ref().is_none_or(|b| b.is_empty());
        match (
            block(&m.key),
            block(&m.client_nonce),
            block(&m.server_nonce),
        ) {
            (Some(key), Some(client), Some(server)) => {
                let crypt = CryptState::new(key, client, server);
                match &mut self.udp {
                    Some(link) => {
                        info!("UDP crypto re-keyed by the server");
                        link.crypt = crypt;
                    }
                    None => {
                        self.pending_crypt = Some(crypt);
                        // After log-in the socket can open right away; during
                        // log-in it opens once we are in the channel.
                        if self.events.is_some() {
                            self.start_udp().await;
                        }
                    }
                }
            }
            (None, None, Some(server)) if empty(&m.key) && empty(&m.client_nonce) => {
                debug!("server nonce resynchronised");
                if let Some(link) = &mut self.udp {
                    link.crypt.set_decrypt_iv(server);
                } else if let Some(c) = &mut self.pending_crypt {
                    c.set_decrypt_iv(server);
                }
            }
            _ if empty(&m.key) && empty(&m.client_nonce) && empty(&m.server_nonce) => {
                // The server lost track of our nonce and asks for it.
                let nonce = self
                    .udp
                    .as_ref()
                    .map(|l| l.crypt.encrypt_iv())
                    .or_else(|| self.pending_crypt.as_ref().map(CryptState::encrypt_iv));
                if let Some(nonce) = nonce {
                    debug!("sending our nonce for a server-side resync");
                    self.writer
                        .send(&proto::CryptSetup {
                            client_nonce: Some(nonce.to_vec()),
                            ..Default::default()
                        })
                        .await?;
                }
            }
            _ => {
                warn!("malformed CryptSetup ignored");
                self.counters.bad_input("message", "crypt_setup");
            }
        }
        Ok(())
    }
}

async fn udp_recv(udp: Option<&UdpLink>, buf: &mut [u8]) -> io::Result<usize> {
    match udp {
        Some(link) => link.socket.recv(buf).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        let p = |s: &str| parse_server(s).ok();
        assert_eq!(p("example.org"), Some(("example.org".into(), DEFAULT_PORT)));
        assert_eq!(p("example.org:1234"), Some(("example.org".into(), 1234)));
        assert_eq!(p("127.0.0.1:5"), Some(("127.0.0.1".into(), 5)));
        assert_eq!(p("[::1]:7"), Some(("::1".into(), 7)));
        assert_eq!(p("[::1]"), Some(("::1".into(), DEFAULT_PORT)));
        assert_eq!(p("::1"), Some(("::1".into(), DEFAULT_PORT)));
        assert_eq!(p(""), None);
        assert_eq!(p(":5"), None);
        assert_eq!(p("host:port"), None);
        assert_eq!(p("host:70000"), None);
        assert_eq!(p("[::1]x"), None);
    }

    #[test]
    fn password_not_in_debug() {
        let mut c = ConnectConfig::new("h", "u", "Root");
        c.password = Some("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

/// `text` cut to the server's `limit` (UTF-16 units, as the server counts),
/// ending in "…" when cut: a server refuses a longer message outright, and a
/// shortened notice still tells who holds the floor. Never cuts inside an HTML
/// entity (`&amp;`), which would show as garbage.
fn fit_message(text: String, limit: Option<usize>) -> String {
    let Some(limit) = limit else {
        return text;
    };
    if text.encode_utf16().count() <= limit {
        return text;
    }
    let budget = limit.saturating_sub(1);
    let mut used = 0;
    let mut end = 0;
    for (at, c) in text.char_indices() {
        if used + c.len_utf16() > budget {
            break;
        }
        used += c.len_utf16();
        end = at + c.len_utf8();
    }
    let mut cut = &text[..end];
    if let Some(amp) = cut.rfind('&') {
        if !cut[amp..].contains(';') {
            cut = &cut[..amp];
        }
    }
    format!("{cut}…")
}

#[cfg(test)]
mod fit_tests {
    use super::fit_message;

    #[test]
    fn messages_fit_the_servers_limit_in_utf16_units() {
        assert_eq!(fit_message("short".into(), Some(10)), "short");
        assert_eq!(fit_message("exactly10!".into(), Some(10)), "exactly10!");
        assert_eq!(fit_message("eleven char".into(), Some(10)), "eleven ch…");
        assert_eq!(fit_message("anything".into(), None), "anything");
        // An emoji is two UTF-16 units: it goes whole or not at all.
        assert_eq!(fit_message("ab😀cdefgh".into(), Some(5)), "ab😀…");
        assert_eq!(fit_message("ab😀cdefgh".into(), Some(4)), "ab…");
        // No half entity.
        assert_eq!(fit_message("Tom &amp; Jerry".into(), Some(8)), "Tom …");
        let cut = fit_message("x".repeat(100), Some(40));
        assert_eq!(cut.encode_utf16().count(), 40);
    }
}

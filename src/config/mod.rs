//! Configuration: the TOML file of DESIGN.md §6 plus `WALKIE__…` environment
//! overrides, checked as a whole before anything starts.
//!
//! [`Config::load`] reads, deserializes (naming the full key path of a bad value)
//! and validates, collecting every problem it can find into [`ConfigErrors`].
//! Findings that do not stop the bridge come back as [`Warning`]s.

mod error;
mod load;
mod schema;
mod types;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use error::{ConfigError, ConfigErrors, Warning};
pub use load::{DEFAULT_PATH, ENV_PREFIX, ENV_SEPARATOR};
pub use schema::{DEFAULT_STATUS_LISTEN, STATE_DIR};
pub use types::{
    Cos, CosLine, EndpointId, EndpointKind, HostPort, Payload, Ptt, RoomRef, Secret, TalkerPattern,
    TransmitAllow, UserGlob,
};
pub use url::Url;

use crate::hub::FloorSettings;
use walkie_endpoint::audio::EncoderSettings;
use walkie_endpoint::Priority;

/// The whole, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub homeserver: HomeserverConfig,
    pub appservice: AppserviceConfig,
    pub database: DatabaseConfig,
    pub floor: FloorConfig,
    pub archive: ArchiveConfig,
    pub logging: LoggingConfig,
    pub status: StatusConfig,
    pub live: LiveConfig,
    pub http: HttpConfig,
    pub encryption: EncryptionConfig,
    /// In file order.
    pub channels: Vec<ChannelConfig>,
    /// Every `[mumble.*]`, `[mqtt.*]` and `[radio.*]` table.
    pub endpoints: BTreeMap<EndpointId, EndpointSpec>,
}

impl Config {
    pub fn endpoint(&self, id: &EndpointId) -> Option<&EndpointSpec> {
        self.endpoints.get(id)
    }

    pub fn channel(&self, name: &str) -> Option<&ChannelConfig> {
        self.channels.iter().find(|c| c.name == name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct HomeserverConfig {
    /// Client-server API base, `http://` or `https://`.
    pub url: Url,
    /// The server name in user IDs (`@walkie:<domain>`).
    pub domain: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AppserviceConfig {
    /// Where the bridge serves the appservice API (and the live-talk page).
    pub listen: SocketAddr,
    /// How the homeserver reaches `listen`; `http://<listen>` unless configured.
    pub url: Url,
    pub id: String,
    /// Sent by the bridge to the homeserver.
    pub as_token: Secret,
    /// Sent by the homeserver to the bridge.
    pub hs_token: Secret,
    pub bot_localpart: String,
    pub puppet_prefix: String,
}

impl AppserviceConfig {
    pub fn bot_user_id(&self, domain: &str) -> String {
        format!("@{}:{}", self.bot_localpart, domain)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`, as sqlx takes it.
    pub url: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FloorConfig {
    pub max_talk: Duration,
    pub idle_release: Duration,
    pub hang: Duration,
    pub queue: bool,
    pub queue_max: usize,
}

impl FloorConfig {
    /// The arbiter's settings for a channel hub.
    pub fn settings(&self) -> FloorSettings {
        FloorSettings {
            max_talk: self.max_talk,
            idle_release: self.idle_release,
            hang: self.hang,
            queue: self.queue,
            queue_max: self.queue_max,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ArchiveConfig {
    /// Finished recordings wait here until the homeserver has accepted them.
    pub spool_dir: PathBuf,
    /// Shorter transmissions (kerchunks, key clicks) are not archived.
    pub min_archive: Duration,
    /// How a voice message's waveform is made.
    pub waveform: WaveformSource,
}

pub use crate::archive::WaveformSource;

/// Where the devices' crypto state lives (`[encryption]`, issue 15): one
/// matrix-sdk-sqlite store per bridge user, `<store_dir>/<localpart>/`.
#[derive(Clone, Debug, PartialEq)]
pub struct EncryptionConfig {
    /// Back it up with the database: losing it means new devices and
    /// undecryptable history.
    pub store_dir: PathBuf,
    /// Encrypts the stores' values at rest. `None` (the default): the stores rely
    /// on the state directory's permissions, like the database and the tokens in
    /// this file.
    pub passphrase: Option<Secret>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LoggingConfig {
    /// A tracing `EnvFilter` directive; `RUST_LOG` wins when set.
    pub level: String,
}

/// Where `/metrics`, `/health` and `/status` are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusConfig {
    /// `None`: not served (`listen = ""`).
    pub listen: Option<SocketAddr>,
}

/// Live talk from the browser (`[live]`), served on `appservice.listen`.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveConfig {
    pub enabled: bool,
    /// The homeserver URL the page offers for logging in: browsers reach the
    /// homeserver themselves, often by another name than the bridge does.
    pub homeserver_url: Url,
    /// Where the homeserver serves `/_matrix/federation/v1/openid/userinfo`.
    pub openid_url: Url,
    /// Live clients per channel.
    pub max_clients: usize,
    /// What one connection, or one address, may hold or try (issue 13.3).
    pub limits: LiveLimits,
    /// Peers whose `X-Forwarded-For` names the client (reverse proxies): the
    /// limits per address count the client's address, not the proxy's.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// Limits on the live WebSocket, which anyone who reaches the listener can open
/// before proving who they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveLimits {
    /// WebSocket connections at once, logged on or not, over all channels.
    pub max_connections: usize,
    /// WebSocket connections at once from one IP address.
    pub max_connections_per_ip: usize,
    /// A connection that has not logged on this long after opening is closed.
    pub logon_timeout: Duration,
    /// The bridge pings every connection this often.
    pub ping_interval: Duration,
    /// A connection from which nothing (not even a pong) arrived for this long,
    /// or that takes nothing for this long, is closed.
    pub idle_timeout: Duration,
    /// Refused logons after which a connection is closed.
    pub max_failed_logons: u32,
    /// Refused logons from one IP address per [`FAILED_LOGON_WINDOW`]; beyond,
    /// its logons are refused without asking the homeserver.
    pub max_failed_logons_per_ip: u32,
    /// Presses (`start_stream`) per connection and minute.
    pub max_presses_per_minute: u32,
}

/// The HTTP listener on `appservice.listen` (`[http]`), which serves the
/// homeserver's transactions and the live page to anyone who reaches it (issue
/// 13.3). WebSocket connections leave these counts when they are upgraded: the
/// live limits count them from then on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// A request's head must have arrived this long after the connection began
    /// to wait for it: after opening, or after the previous answer (so it is
    /// the idle timeout of a keep-alive connection too).
    pub header_timeout: Duration,
    /// Connections at once from addresses other than the homeserver's.
    pub max_connections: usize,
    /// Connections at once from one address (an IPv6 /64), other than the
    /// homeserver's.
    pub max_connections_per_ip: usize,
    /// The homeserver's addresses: their connections have a pool of their own,
    /// which nobody else can fill. The addresses `homeserver.url` resolves to at
    /// start are added to these.
    pub homeserver_addresses: Vec<std::net::IpAddr>,
    /// Connections at once from the homeserver's addresses.
    pub homeserver_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            // With the live WebSockets' 400 and the homeserver's 64, still well
            // below the 1024 descriptors a process gets without the unit's
            // LimitNOFILE: recordings and the database need some too.
            max_connections: 256,
            // A browser opens about six to one host.
            max_connections_per_ip: 16,
            // A homeserver on the same machine, the usual set-up.
            homeserver_addresses: vec![
                std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::Ipv6Addr::LOCALHOST.into(),
            ],
            homeserver_connections: 64,
        }
    }
}

/// The window of `live.max_failed_logons_per_ip`.
pub const FAILED_LOGON_WINDOW: Duration = Duration::from_secs(600);

#[derive(Clone, Debug, PartialEq)]
pub struct ChannelConfig {
    pub name: String,
    pub room: RoomRef,
    pub endpoints: Vec<EndpointId>,
}

/// One endpoint's settings; the variant is the `kind` of its address.
#[derive(Clone, Debug, PartialEq)]
pub enum EndpointSpec {
    Mumble(MumbleConfig),
    Mqtt(MqttConfig),
    Radio(RadioConfig),
    SvxReflector(SvxReflectorConfig),
}

impl EndpointSpec {
    pub fn kind(&self) -> EndpointKind {
        match self {
            Self::Mumble(_) => EndpointKind::Mumble,
            Self::Mqtt(_) => EndpointKind::Mqtt,
            Self::Radio(_) => EndpointKind::Radio,
            Self::SvxReflector(_) => EndpointKind::SvxReflector,
        }
    }
}

/// `[svxreflector.NAME]`: the bridge as a node on a SvxLink reflector.
#[derive(Clone, Debug, PartialEq)]
pub struct SvxReflectorConfig {
    /// The reflector's `host:port` (its TCP and UDP port; SvxReflector's default
    /// is 5300).
    pub server: HostPort,
    /// The node's callsign: the bridge operator's, as the reflector's sysop
    /// entered it in `[USERS]`.
    pub callsign: String,
    pub auth_key: Secret,
    /// The talkgroup the channel carries (protocol 2, SvxReflector 1.x from
    /// SvxLink 24.02 on). Unset: the bridge is a protocol-1 node (see the crate).
    pub talkgroup: Option<u32>,
    /// Who the node may transmit to the network (as for a radio).
    pub transmit_allow: Vec<TransmitAllow>,
    pub transmit_min_power_level: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MumbleConfig {
    pub server: HostPort,
    /// Channel to join, by name or path ("Root/Ops").
    pub channel: String,
    pub username: String,
    pub password: Option<Secret>,
    /// Both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub accept_invalid_cert: bool,
    /// Show the current talker in the bot's comment.
    pub announce_talker: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MqttConfig {
    pub broker: Broker,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Extra CA certificate for an `mqtts://` broker.
    pub ca_file: Option<PathBuf>,
    /// `walkie-bridge-<name>` is a sensible choice when unset.
    pub client_id: Option<String>,
    pub keep_alive: Duration,
    /// Topic prefix without a trailing `/`.
    pub prefix: String,
    pub payload: Payload,
    pub ha_discovery: bool,
    /// The highest priority a device may ask for; above it its talk is denied.
    pub max_priority: Priority,
    /// Per-device ceilings that replace `max_priority` for those device ids.
    pub device_max_priority: BTreeMap<String, Priority>,
    /// How pcm16 devices' audio is encoded (`opus_bitrate_kbps`, `opus_complexity`).
    pub encoder: EncoderSettings,
}

/// An MQTT broker address from an `mqtt://` or `mqtts://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broker {
    pub tls: bool,
    pub host: String,
    /// 1883 or 8883 unless the URL names one.
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RadioConfig {
    /// Serial device; only absent when neither PTT nor COS uses a serial line.
    pub port: Option<PathBuf>,
    pub ptt: Ptt,
    pub ptt_invert: bool,
    /// Present exactly when `ptt` or `cos` is rigctld.
    pub rigctld: Option<HostPort>,
    pub cos: Cos,
    pub audio_in: String,
    pub audio_out: String,
    pub tx_delay: Duration,
    pub ptt_hang: Duration,
    pub tx_timeout: Duration,
    pub vox: VoxConfig,
    /// Uppercase; when set, sent in Morse every `id_interval` while transmitting.
    pub callsign: Option<String>,
    pub id_interval: Duration,
    /// Morse ID speed (words per minute) and tone.
    pub id_wpm: u32,
    pub id_tone_hz: u32,
    /// Received audio is ignored this long after unkeying (our own tail).
    pub rx_mute_after_tx: Duration,
    /// Empty means anyone allowed by the room's opt-in may key the radio, unless
    /// `transmit_min_power_level` is set.
    pub transmit_allow: Vec<TransmitAllow>,
    pub transmit_min_power_level: Option<i64>,
    /// How received audio is encoded (`opus_bitrate_kbps`, `opus_complexity`).
    pub encoder: EncoderSettings,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VoxConfig {
    pub threshold_dbfs: f64,
    pub attack: Duration,
    pub hang: Duration,
}

impl RadioConfig {
    /// What this radio holds exclusively; two radios may not share any of these.
    pub fn resources(&self) -> Vec<Resource> {
        let mut out = Vec::new();
        if let Some(port) = &self.port {
            out.push(Resource::SerialPort(port.clone()));
        }
        out.push(Resource::AudioIn(self.audio_in.clone()));
        out.push(Resource::AudioOut(self.audio_out.clone()));
        if let Some(rig) = &self.rigctld {
            out.push(Resource::Rigctld(rig.clone()));
        }
        out
    }
}

/// Something only one endpoint can own at a time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    SerialPort(PathBuf),
    /// ALSA capture device name.
    AudioIn(String),
    /// ALSA playback device name.
    AudioOut(String),
    /// One rigctld drives one rig.
    Rigctld(HostPort),
}

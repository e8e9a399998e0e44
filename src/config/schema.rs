//! The file as written: serde structs that mirror the TOML one to one, with the
//! defaults of DESIGN.md. Addresses, names and ranges stay unchecked here; the
//! validator turns these into the typed [`super::Config`] and reports every problem
//! at once, which a failing `Deserialize` could not.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::types::{Cos, Payload, Ptt, Secret};

/// Where systemd's `StateDirectory=walkie-bridge` puts the service's state.
pub const STATE_DIR: &str = "/var/lib/walkie-bridge";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub homeserver: RawHomeserver,
    pub appservice: RawAppservice,
    #[serde(default)]
    pub database: RawDatabase,
    #[serde(default)]
    pub floor: RawFloor,
    #[serde(default)]
    pub archive: RawArchive,
    #[serde(default)]
    pub logging: RawLogging,
    #[serde(default)]
    pub status: RawStatus,
    #[serde(default)]
    pub live: RawLive,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub encryption: RawEncryption,
    #[serde(default)]
    pub channel: Vec<RawChannel>,
    #[serde(default)]
    pub mumble: BTreeMap<String, RawMumble>,
    #[serde(default)]
    pub mqtt: BTreeMap<String, RawMqtt>,
    #[serde(default)]
    pub radio: BTreeMap<String, RawRadio>,
    #[serde(default)]
    pub svxreflector: BTreeMap<String, RawSvxReflector>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSvxReflector {
    pub server: String,
    pub callsign: String,
    pub auth_key: Secret,
    #[serde(default)]
    pub talkgroup: Option<u32>,
    #[serde(default)]
    pub transmit_allow: Vec<String>,
    #[serde(default)]
    pub transmit_min_power_level: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHomeserver {
    pub url: String,
    pub domain: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAppservice {
    pub listen: String,
    #[serde(default)]
    pub url: Option<String>,
    pub id: String,
    #[serde(default)]
    pub as_token: Secret,
    #[serde(default)]
    pub hs_token: Secret,
    pub bot_localpart: String,
    pub puppet_prefix: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDatabase {
    pub url: String,
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self {
            url: format!("sqlite://{STATE_DIR}/walkie.db"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawFloor {
    pub max_talk_s: u64,
    pub idle_release_ms: u64,
    pub hang_ms: u64,
    pub queue: bool,
    pub queue_max: u64,
}

impl Default for RawFloor {
    fn default() -> Self {
        Self {
            max_talk_s: 60,
            idle_release_ms: 1500,
            hang_ms: 300,
            queue: true,
            queue_max: 10,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawArchive {
    pub spool_dir: PathBuf,
    pub min_archive_ms: u64,
    pub waveform: String,
}

impl Default for RawArchive {
    fn default() -> Self {
        Self {
            spool_dir: PathBuf::from(STATE_DIR).join("spool"),
            min_archive_ms: 300,
            waveform: "decoded".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLogging {
    pub level: String,
}

impl Default for RawLogging {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

/// `/metrics`, `/health` and `/status`: on loopback unless an operator chooses
/// otherwise, because they need no login and name who talks when.
pub const DEFAULT_STATUS_LISTEN: &str = "127.0.0.1:29334";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawStatus {
    pub listen: String,
}

impl Default for RawStatus {
    fn default() -> Self {
        Self {
            listen: DEFAULT_STATUS_LISTEN.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLive {
    pub enabled: bool,
    pub homeserver_url: Option<String>,
    pub openid_url: Option<String>,
    pub max_clients: u64,
    pub max_connections: u64,
    pub max_connections_per_ip: u64,
    pub logon_timeout_s: u64,
    pub ping_interval_s: u64,
    pub idle_timeout_s: u64,
    pub max_failed_logons: u64,
    pub max_failed_logons_per_ip: u64,
    pub max_presses_per_minute: u64,
    pub trusted_proxies: Vec<String>,
}

impl Default for RawLive {
    fn default() -> Self {
        Self {
            enabled: true,
            homeserver_url: None,
            openid_url: None,
            max_clients: 50,
            // Well below the 1024 descriptors a process gets by default, so that
            // the bridge keeps descriptors for recordings and the homeserver even
            // without the unit's LimitNOFILE.
            max_connections: 400,
            max_connections_per_ip: 16,
            logon_timeout_s: 10,
            ping_interval_s: 15,
            idle_timeout_s: 45,
            max_failed_logons: 10,
            max_failed_logons_per_ip: 30,
            max_presses_per_minute: 60,
            // A proxy on the same machine (the usual TLS reverse proxy); a local
            // process could open connections from loopback anyway.
            trusted_proxies: vec!["127.0.0.1".into(), "::1".into()],
        }
    }
}

/// End-to-end encryption's state (issue 15).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawEncryption {
    pub store_dir: PathBuf,
    pub passphrase_file: Option<PathBuf>,
}

impl Default for RawEncryption {
    fn default() -> Self {
        Self {
            store_dir: PathBuf::from(STATE_DIR).join("crypto"),
            passphrase_file: None,
        }
    }
}

/// The HTTP listener on `appservice.listen`; defaults in [`super::HttpConfig`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawHttp {
    pub header_timeout_s: u64,
    pub max_connections: u64,
    pub max_connections_per_ip: u64,
    pub homeserver_addresses: Vec<String>,
    pub homeserver_connections: u64,
}

impl Default for RawHttp {
    fn default() -> Self {
        let http = super::HttpConfig::default();
        Self {
            header_timeout_s: http.header_timeout.as_secs(),
            max_connections: http.max_connections as u64,
            max_connections_per_ip: http.max_connections_per_ip as u64,
            homeserver_addresses: http
                .homeserver_addresses
                .iter()
                .map(ToString::to_string)
                .collect(),
            homeserver_connections: http.homeserver_connections as u64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawChannel {
    pub name: String,
    pub room: String,
    #[serde(default)]
    pub endpoints: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMumble {
    pub server: String,
    pub channel: String,
    pub username: String,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default)]
    pub accept_invalid_cert: bool,
    #[serde(default)]
    pub announce_talker: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMqtt {
    pub broker: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    pub prefix: String,
    #[serde(default)]
    pub payload: Payload,
    #[serde(default)]
    pub ha_discovery: bool,
    /// Highest priority a device may ask for (`normal` when unset).
    #[serde(default)]
    pub max_priority: Option<String>,
    /// Per device id: its own ceiling, instead of `max_priority`.
    #[serde(default)]
    pub device_max_priority: BTreeMap<String, String>,
    /// The Opus encoder for pcm16 devices' audio (unused with `payload = "opus"`).
    #[serde(default)]
    pub opus_bitrate_kbps: Option<i64>,
    #[serde(default)]
    pub opus_complexity: Option<i64>,
}

fn default_keep_alive_s() -> u64 {
    30
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRadio {
    pub port: Option<PathBuf>,
    pub ptt: Ptt,
    pub ptt_invert: bool,
    pub rigctld: Option<String>,
    pub cos: Cos,
    pub audio_in: String,
    pub audio_out: String,
    pub tx_delay_ms: u64,
    pub ptt_hang_ms: u64,
    pub tx_timeout_s: u64,
    pub vox_threshold_dbfs: f64,
    pub vox_attack_ms: u64,
    pub vox_hang_ms: u64,
    pub callsign: Option<String>,
    pub id_interval_s: u64,
    pub id_wpm: u32,
    pub id_tone_hz: u32,
    pub rx_mute_after_tx_ms: u64,
    pub transmit_allow: Vec<String>,
    pub transmit_min_power_level: Option<i64>,
    /// The Opus encoder for received audio.
    pub opus_bitrate_kbps: Option<i64>,
    pub opus_complexity: Option<i64>,
}

impl Default for RawRadio {
    fn default() -> Self {
        Self {
            port: None,
            ptt: Ptt::Rts,
            ptt_invert: false,
            rigctld: None,
            cos: Cos::Vox,
            audio_in: "default".into(),
            audio_out: "default".into(),
            tx_delay_ms: 150,
            ptt_hang_ms: 200,
            tx_timeout_s: 180,
            vox_threshold_dbfs: -40.0,
            vox_attack_ms: 40,
            vox_hang_ms: 800,
            callsign: None,
            id_interval_s: 600,
            id_wpm: 20,
            id_tone_hz: 800,
            rx_mute_after_tx_ms: 500,
            transmit_allow: Vec::new(),
            transmit_min_power_level: None,
            opus_bitrate_kbps: None,
            opus_complexity: None,
        }
    }
}

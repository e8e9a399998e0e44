//! What an `[mqtt.NAME]` section becomes, in this crate's own words: the daemon
//! maps its config into [`MqttEndpointConfig`]; this crate does not know the daemon.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use walkie_endpoint::audio::EncoderSettings;
use walkie_endpoint::Priority;

use crate::error::MqttError;

/// Audio on the intercom topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PayloadCodec {
    /// 48 kHz mono Opus in 20 ms packets, passed through untouched both ways.
    #[default]
    Opus,
    /// 16 kHz signed 16-bit little-endian mono, 20 ms = 320 samples = 640 bytes,
    /// for microcontrollers without an Opus codec.
    Pcm16,
}

impl PayloadCodec {
    pub fn name(self) -> &'static str {
        match self {
            PayloadCodec::Opus => "opus",
            PayloadCodec::Pcm16 => "pcm16",
        }
    }

    pub fn sample_rate(self) -> u32 {
        match self {
            PayloadCodec::Opus => 48_000,
            PayloadCodec::Pcm16 => crate::transcode::PCM16_RATE,
        }
    }
}

/// A password that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone)]
pub struct MqttEndpointConfig {
    pub host: String,
    pub port: u16,
    /// TLS to the broker (`mqtts://`), verified against `ca_file` if given,
    /// otherwise against the webpki (Mozilla) roots.
    pub tls: bool,
    /// PEM file with the CA certificate(s) that signed the broker's certificate.
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Keys the broker-side persistent session; must be unique per bridge endpoint.
    pub client_id: String,
    pub keep_alive: Duration,
    /// Every topic of this endpoint lives under it, e.g. `walkie/lobby`.
    pub prefix: String,
    pub payload: PayloadCodec,
    pub ha_discovery: bool,
    /// Home Assistant's discovery prefix (its default is `homeassistant`).
    pub ha_discovery_prefix: String,
    /// No audio from a device for this long ends its talk (lost `end`, dead panel).
    pub idle_release: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_cap: Duration,
    /// The highest priority a device may ask for. Any client that may publish
    /// under the prefix can send a `start`, so an emergency (which pre-empts the
    /// floor holder) has to be granted here, not claimed there.
    pub max_priority: Priority,
    /// Ceilings for single device ids, instead of `max_priority`. A device id is
    /// only as trustworthy as the broker's ACL on its `in/{device}/` topics.
    pub device_max_priority: HashMap<String, Priority>,
    /// How pcm16 devices' audio is encoded to Opus.
    pub encoder: EncoderSettings,
}

impl MqttEndpointConfig {
    /// Defaults for everything but where the broker is and what to call things.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        prefix: impl Into<String>,
        client_id: impl Into<String>,
    ) -> Self {
        Self {
            host: host.into(),
            port,
            tls: false,
            ca_file: None,
            username: None,
            password: None,
            client_id: client_id.into(),
            keep_alive: Duration::from_secs(30),
            prefix: prefix.into(),
            payload: PayloadCodec::Opus,
            ha_discovery: false,
            ha_discovery_prefix: "homeassistant".into(),
            idle_release: Duration::from_millis(1500),
            reconnect_cap: Duration::from_secs(30),
            max_priority: Priority::Normal,
            device_max_priority: HashMap::new(),
            encoder: EncoderSettings::default(),
        }
    }

    /// From a broker URL as written in the config: `mqtt://host[:port]` or
    /// `mqtts://host[:port]`, with optional `user:password@`.
    pub fn from_url(
        url: &str,
        prefix: impl Into<String>,
        client_id: impl Into<String>,
    ) -> Result<Self, MqttError> {
        let bad = |reason: &str| MqttError::BadUrl {
            url: mask_password(url),
            reason: reason.into(),
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let tls = match parsed.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => return Err(bad("unknown scheme")),
        };
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = parsed.port().unwrap_or(if tls { 8883 } else { 1883 });
        let mut config = Self::new(host, port, prefix, client_id);
        config.tls = tls;
        if !parsed.username().is_empty() {
            config.username = Some(percent_decode(parsed.username()));
        }
        if let Some(password) = parsed.password() {
            config.password = Some(Secret::new(percent_decode(password)));
        }
        Ok(config)
    }

    /// Checks what the broker would otherwise reject in a confusing way later.
    pub fn validate(&self) -> Result<(), MqttError> {
        let p = &self.prefix;
        if p.is_empty() || p.contains(['+', '#']) || p.starts_with('/') || p.ends_with('/') {
            return Err(MqttError::BadPrefix(p.clone()));
        }
        if self.client_id.is_empty() {
            return Err(MqttError::EmptyClientId);
        }
        if !self.keep_alive.is_zero() && self.keep_alive < Duration::from_secs(1) {
            return Err(MqttError::BadKeepAlive);
        }
        Ok(())
    }
}

fn mask_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_tls_and_credentials() {
        let c = MqttEndpointConfig::from_url("mqtts://bob:p%40ss@broker.example:8884", "w/l", "id")
            .unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.tls),
            ("broker.example", 8884, true)
        );
        assert_eq!(c.username.as_deref(), Some("bob"));
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("p@ss"));
        let c = MqttEndpointConfig::from_url("mqtt://127.0.0.1", "w/l", "id").unwrap();
        assert_eq!((c.port, c.tls), (1883, false));
        assert_eq!(
            MqttEndpointConfig::from_url("mqtts://h", "w", "i")
                .unwrap()
                .port,
            8883
        );
        assert!(MqttEndpointConfig::from_url("http://h", "w", "i").is_err());
    }

    #[test]
    fn passwords_stay_out_of_debug_and_errors() {
        let c = MqttEndpointConfig::from_url("mqtt://u:hunter2@h", "w", "i").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let e = MqttEndpointConfig::from_url("gopher://u:hunter2@h", "w", "i").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn prefixes_with_wildcards_or_slashes_at_the_ends_are_refused() {
        for bad in ["", "a/+", "#", "/a", "a/"] {
            let c = MqttEndpointConfig::new("h", 1883, bad, "id");
            assert!(c.validate().is_err(), "{bad:?} accepted");
        }
        assert!(MqttEndpointConfig::new("h", 1883, "walkie/lobby", "id")
            .validate()
            .is_ok());
    }
}

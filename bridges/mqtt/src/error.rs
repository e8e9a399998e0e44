use std::path::PathBuf;

use thiserror::Error;

/// Why the MQTT endpoint cannot be set up. Each variant says what an operator
/// needs to know to fix the config.
#[derive(Debug, Error)]
pub enum MqttError {
    #[error("invalid MQTT broker URL {url:?}: {reason} (expected mqtt://host[:1883] or mqtts://host[:8883])")]
    BadUrl { url: String, reason: String },
    #[error("invalid MQTT topic prefix {0:?}: it must be non-empty, without + or #, and not start or end with /")]
    BadPrefix(String),
    #[error("MQTT client_id must not be empty (a persistent session is keyed by it)")]
    EmptyClientId,
    #[error("MQTT keep_alive must be 0 or at least one second")]
    BadKeepAlive,
    #[error("cannot load MQTT CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("cannot set up TLS for MQTT: {0}")]
    Tls(String),
    #[error("audio codec: {0}")]
    Audio(#[from] walkie_endpoint::audio::AudioError),
}

/// Why one message from the broker was not used. Such input is logged, counted
/// and dropped; it never ends the connection.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InputError {
    #[error("topic outside the scheme")]
    UnknownTopic,
    #[error("device id not usable in a topic or a puppet name")]
    BadDevice,
    #[error("invalid JSON: {0}")]
    BadJson(String),
    #[error("audio payload shorter than its 4-byte sequence number")]
    ShortAudio,
    #[error("audio frame without audio")]
    EmptyAudio,
    #[error("pcm16 frame of {0} bytes (must be 640: 20 ms of 16 kHz S16LE mono)")]
    BadPcmSize(usize),
}

impl InputError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            InputError::UnknownTopic => "unknown_topic",
            InputError::BadDevice => "bad_device",
            InputError::BadJson(_) => "bad_json",
            InputError::ShortAudio => "short_audio",
            InputError::EmptyAudio => "empty_audio",
            InputError::BadPcmSize(_) => "bad_pcm_size",
        }
    }
}

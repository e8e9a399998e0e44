//! MQTT intercom endpoint for walkie-bridge.
//!
//! Intercom panels, ESP32 boxes and home automation join a channel's floor
//! through a broker, on the topic scheme documented in this crate's README:
//! JSON control at QoS 1, sequence-numbered audio at QoS 0, a retained floor
//! state, availability as a retained last will, and optional Home Assistant
//! discovery. [`MqttEndpoint`] is the [`walkie_endpoint::Endpoint`] the daemon
//! attaches to a channel hub; it owns its broker connection and reconnects on
//! its own.

mod config;
pub mod discovery;
mod endpoint;
mod error;
mod tls;
pub mod topics;
pub mod transcode;
pub mod wire;

pub use config::{MqttEndpointConfig, PayloadCodec, Secret};
pub use endpoint::MqttEndpoint;
pub use error::{InputError, MqttError};

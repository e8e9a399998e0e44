//! Mumble client protocol for walkie-bridge.
//!
//! [`Connection::connect`] logs in over TLS, joins a channel and hands back a
//! [`ConnectionHandle`] (send voice and text) plus a stream of [`Event`]s
//! (users, voice, text, disconnect). One task per connection owns all state;
//! dropping the handle ends it. Voice travels as Mumble voice packets — the
//! legacy format, or the protobuf one of Mumble ≥ 1.5 when the server is ≥ 1.5
//! ([`VoiceFormat`]) — over OCB2-AES128-encrypted UDP, or through the TCP
//! tunnel when UDP does not get through. Floor control, talks and reconnecting are the endpoint's job,
//! built on top of this crate.

mod connection;
pub mod crypt;
mod endpoint;
mod error;
mod identity;
pub mod proto;
pub mod state;
pub mod tcp;
mod tls;
pub mod udp;
pub mod varint;
pub mod voice;
pub mod voice_v2;

pub use connection::{
    ConnectConfig, Connection, ConnectionHandle, DisconnectReason, Event, Stats, Transport,
    TransportMode, DEFAULT_PORT,
};
pub use endpoint::{MumbleEndpoint, MumbleEndpointConfig};
pub use error::{DecodeError, MumbleError};
pub use identity::ClientIdentity;
pub use proto::MumbleVersion;
pub use state::{ChannelId, Session, User};
pub use voice_v2::VoiceFormat;

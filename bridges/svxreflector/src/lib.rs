//! SvxReflector's node protocol for walkie-bridge (issue 18): the bridge logs in
//! to a reflector as a node and carries one talkgroup as a channel endpoint. The
//! wire format, for both Debian 12's reflector (19.09.2, protocol 1.0, one talker,
//! no talkgroups) and Debian 13's (24.02, protocol 2.0, talkgroups), is in
//! docs/protocols/svxreflector.md; this crate's messages follow it section by
//! section.
//!
//! Written here because no Rust crate speaks this protocol.

pub mod connection;
pub mod endpoint;
pub mod msg;

pub use connection::{ConnectConfig, ConnectError, Connection, ConnectionHandle, Event};
pub use endpoint::{SvxReflectorEndpoint, SvxReflectorEndpointConfig};
pub use msg::{auth_digest, DecodeError, TcpMsg, UdpMsg, CHALLENGE_LEN};

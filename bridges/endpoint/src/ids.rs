//! Identifiers that cross the hub boundary. Newtypes, so an endpoint name can never
//! be passed where a talker or a transmission is expected.

use std::fmt;
use std::sync::Arc;

/// One configured endpoint, written `kind.name` as in the config (`mumble.ops`).
/// The kind is text on purpose: the hub never branches on which system it talks to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointId(Arc<str>);

impl EndpointId {
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first dot (`mumble` in `mumble.ops`), for display and
    /// puppet naming only.
    pub fn system(&self) -> &str {
        self.0.split_once('.').map_or(&self.0, |(kind, _)| kind)
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Distinguishes simultaneous talkers on one endpoint (two Mumble users pressing at
/// once, two intercom panels). Chosen by the endpoint; unique only within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamKey(pub u64);

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A transmission: one grant of the floor, from grant to release. Also the Matrix
/// transaction id of its archived voice message, so it must be unique across
/// restarts — a time-ordered UUID (v7) gives that without coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxId(uuid::Uuid);

impl TxId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    pub fn from_uuid(id: uuid::Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.simple())
    }
}

/// Who is talking, as the source endpoint knows them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Talker {
    /// Stable name within the endpoint (Mumble user name, intercom device id,
    /// Matrix user id). Puppets are derived from it.
    pub name: String,
    /// What people see: "alice (Mumble)".
    pub display_name: String,
    /// Set when the talker is a Matrix user (live client, voice message), so
    /// permission checks and the archive can use the real account.
    pub matrix_user_id: Option<String>,
}

impl Talker {
    pub fn new(name: impl Into<String>, display_name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            display_name: display_name.into(),
            matrix_user_id: None,
        }
    }
}

impl fmt::Display for Talker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_name)
    }
}

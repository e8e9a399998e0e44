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

/// What vouches for a talker's name (DESIGN.md §4 "Trust model"). A
/// `transmit_allow` entry that names a talker matches only a name something
/// vouches for; an unverified name is a label, never an identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Identity {
    /// The endpoint itself does: a name from its own configuration (a radio),
    /// or a Matrix account the homeserver authenticated (`matrix_user_id`).
    #[default]
    Endpoint,
    /// Nobody does: whoever can reach the endpoint chose it (a Mumble guest, an
    /// MQTT device id). `certificate` is a client certificate the server checked
    /// the talker holds (Mumble's SHA-1 hash, lower-case hex), if they showed one.
    Unverified { certificate: Option<String> },
    /// An account registered on the endpoint's server (a registered Mumble user):
    /// the server authenticated them, and the name is their registered name.
    Registered {
        user_id: u32,
        certificate: Option<String>,
    },
}

impl Identity {
    /// Whether something vouches for the talker's name.
    pub fn name_is_verified(&self) -> bool {
        !matches!(self, Self::Unverified { .. })
    }

    pub fn registered_user_id(&self) -> Option<u32> {
        match self {
            Self::Registered { user_id, .. } => Some(*user_id),
            _ => None,
        }
    }

    pub fn certificate(&self) -> Option<&str> {
        match self {
            Self::Unverified { certificate } | Self::Registered { certificate, .. } => {
                certificate.as_deref()
            }
            Self::Endpoint => None,
        }
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
    /// What vouches for `name`.
    pub identity: Identity,
}

impl Talker {
    /// A talker whose name the endpoint vouches for (its configuration).
    pub fn new(name: impl Into<String>, display_name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            display_name: display_name.into(),
            matrix_user_id: None,
            identity: Identity::Endpoint,
        }
    }

    /// A talker who chose their own name; nobody vouches for it.
    pub fn unverified(name: impl Into<String>, display_name: impl Into<String>) -> Self {
        Self::new(name, display_name).with_identity(Identity::Unverified { certificate: None })
    }

    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = identity;
        self
    }
}

impl fmt::Display for Talker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_name)
    }
}

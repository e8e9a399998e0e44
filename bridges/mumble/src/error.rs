use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Why a Mumble connection could not be set up or used. Each variant says what
/// an operator needs to know to fix it.
#[derive(Debug, Error)]
pub enum MumbleError {
    #[error("invalid Mumble server address {0:?} (expected host, host:port or [v6]:port)")]
    BadAddress(String),
    #[error("cannot resolve Mumble server {server}: {source}")]
    Resolve { server: String, source: io::Error },
    #[error("cannot connect to Mumble server {server}: {source}")]
    Connect { server: String, source: io::Error },
    #[error("TLS handshake with Mumble server {server} failed: {source} (a self-signed server certificate needs accept_invalid_cert = true)")]
    Tls { server: String, source: io::Error },
    #[error("cannot set up TLS: {0}")]
    TlsConfig(String),
    #[error("cannot load client certificate {path}: {reason}")]
    ClientCert { path: PathBuf, reason: String },
    #[error("the Mumble server rejected the login ({kind}): {reason}")]
    Rejected { kind: String, reason: String },
    #[error("channel {wanted:?} does not exist on the Mumble server; channels: {known}")]
    NoSuchChannel { wanted: String, known: String },
    #[error("channel name {wanted:?} is ambiguous on the Mumble server; give a path, one of: {candidates}")]
    AmbiguousChannel { wanted: String, candidates: String },
    #[error("the Mumble server did not let us into channel {channel:?}: {reason}")]
    JoinDenied { channel: String, reason: String },
    #[error("timed out while {0}")]
    Timeout(&'static str),
    #[error("the Mumble connection is closed")]
    Closed,
    #[error("the Mumble server closed the connection while {0}")]
    ServerClosed(&'static str),
    #[error("Opus packet of {0} bytes is too large for a Mumble voice packet (max 8191)")]
    PacketTooLarge(usize),
    #[error("I/O error on the Mumble connection: {0}")]
    Io(#[from] io::Error),
}

/// Why bytes from the server could not be parsed. Such input is logged, counted
/// and dropped; it never ends the connection on its own.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("truncated")]
    Truncated,
    #[error("invalid varint prefix {0:#04x}")]
    BadVarint(u8),
    #[error("voice packet type {0} is not Opus (CELT/Speex are not supported)")]
    UnsupportedCodec(u8),
    #[error("unknown voice packet type {0}")]
    UnknownType(u8),
    #[error("Opus length header {0:#x} out of range")]
    BadLength(u64),
    #[error("session id {0} out of range")]
    BadSession(u64),
    #[error("malformed protobuf voice message")]
    Protobuf,
    #[error("voice target/context {0} out of range (0..=31)")]
    BadTarget(u32),
}

impl DecodeError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::Truncated => "truncated",
            DecodeError::BadVarint(_) => "bad_varint",
            DecodeError::UnsupportedCodec(_) => "unsupported_codec",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::BadLength(_) => "bad_length",
            DecodeError::BadSession(_) => "bad_session",
            DecodeError::Protobuf => "protobuf",
            DecodeError::BadTarget(_) => "bad_target",
        }
    }
}

//! One error enum per concern; each message says what the operator should know.

use thiserror::Error;

/// A PTT driver could not do what was asked. Unkey failures are the dangerous
/// ones and say so in their message.
#[derive(Debug, Error)]
pub enum PttError {
    #[error("cannot open serial port {port}: {reason} (is it the right device, and is the user in group dialout?)")]
    Open { port: String, reason: String },
    #[error("serial port {port}: cannot {what}: {reason}")]
    Line {
        port: String,
        what: &'static str,
        reason: String,
    },
    #[error("rigctld at {addr}: {reason}")]
    Rigctld { addr: String, reason: String },
    #[error("rigctld at {addr} answered {answer:?} to {command:?}")]
    RigctldRefused {
        addr: String,
        command: &'static str,
        answer: String,
    },
    #[error(
        "UNKEY FAILED after {attempts} attempt(s): {last} — the transmitter may still be keyed"
    )]
    UnkeyFailed { attempts: u32, last: Box<PttError> },
    #[error("PTT driver {0} is busy (held by another thread past the deadline)")]
    Busy(String),
    #[error("PTT {0} not keyed: the process is ending (a panic on its main thread, or a signal)")]
    ProcessEnding(String),
    #[error("invalid PTT setting {value:?}: {reason}")]
    Config { value: String, reason: &'static str },
    #[error("cannot set up the signal handler: {0}")]
    Signal(String),
}

/// The playback side (sound card) failed. Opaque here: the audio side owns it.
#[derive(Debug, Error)]
#[error("audio sink: {0}")]
pub struct SinkError(pub String);

/// A transmit controller step failed. Whatever failed, the controller has
/// already tried to unkey (and keeps retrying an owed unkey on every tick).
#[derive(Debug, Error)]
pub enum TxError {
    #[error(transparent)]
    Ptt(#[from] PttError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

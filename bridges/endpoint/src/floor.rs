//! Floor vocabulary shared by the hub and every endpoint. Decisions are made only by
//! the daemon's floor arbiter; these are the words it speaks in.

use crate::ids::{EndpointId, StreamKey, Talker, TxId};
use std::fmt;

/// Ordered: a higher priority is served first from the queue; `Emergency`
/// pre-empts whoever holds the floor unless they are an emergency talk too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    #[default]
    Normal,
    High,
    Emergency,
}

/// A live talk is a person holding a button now; a message is a recording
/// (a Matrix voice message, `play FILE`). Messages always queue, even with
/// `queue = false`, because nobody is waiting at a button to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TalkKind {
    #[default]
    Live,
    Message,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    Busy,
    NotPermitted,
    RateLimited,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Busy => "busy",
            Self::NotPermitted => "not permitted",
            Self::RateLimited => "rate limited",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReleaseReason {
    /// The talker let go (talk end, terminator flag).
    TalkerDone,
    /// No audio for `idle_release_ms`: a lost terminator or a dead client.
    IdleTimeout,
    /// The transmission reached `max_talk_s`.
    MaxTalkTime,
    /// Pre-empted by an emergency talk.
    Revoked,
    /// The talker's endpoint went away (task ended, connection lost for good).
    EndpointGone,
    /// The daemon is stopping.
    Shutdown,
}

impl fmt::Display for ReleaseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TalkerDone => "talker done",
            Self::IdleTimeout => "idle timeout",
            Self::MaxTalkTime => "max talk time",
            Self::Revoked => "revoked",
            Self::EndpointGone => "endpoint gone",
            Self::Shutdown => "shutdown",
        })
    }
}

/// What the hub tells an endpoint about the floor. These travel on the control
/// downlink, which never drops a message.
#[derive(Debug, Clone, PartialEq)]
pub enum FloorEvent {
    /// Your stream holds the floor: send its audio now.
    Granted { stream: StreamKey, tx: TxId },
    /// Your stream was refused; `holder` says who has the floor when that is why.
    Denied {
        stream: StreamKey,
        reason: DenyReason,
        holder: Option<Talker>,
    },
    /// Your stream waits in the queue at `position` (1 = next).
    Queued { stream: StreamKey, position: usize },
    /// Someone on another endpoint holds the floor; their audio follows on the
    /// audio downlink tagged with `tx`. A transmitting side keys up here.
    Taken {
        tx: TxId,
        talker: Talker,
        source: EndpointId,
        priority: crate::floor::Priority,
    },
    /// Transmission `tx` ended. Sent to every endpoint, the holder included: a
    /// transmitting side unkeys here, a holder whose floor was revoked stops.
    Released { tx: TxId, reason: ReleaseReason },
    /// Endpoint `by` will not carry transmission `tx` (a radio whose
    /// `transmit_allow` excludes the talker). Sent only to the holder's endpoint,
    /// which tells its talker why; everyone else still hears the transmission.
    Declined {
        tx: TxId,
        stream: StreamKey,
        by: EndpointId,
        reason: String,
    },
    /// Nobody holds the floor and nobody is queued.
    Idle,
}

//! What a running channel hub shows the outside: the floor holder, the last
//! transmissions, and each attached endpoint's connection state and link counters.
//! The hub is the only writer (a `watch` channel: no shared lock on the audio path);
//! `/status`, `/metrics` and the systemd STATUS line read it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;
use walkie_endpoint::{EndpointHealth, EndpointId, LinkCounters, ReleaseReason};

use super::HubStats;

/// How many finished transmissions a channel remembers for `/status`.
pub const RECENT_TRANSMISSIONS: usize = 10;

#[derive(Clone, Debug, Default, Serialize)]
pub struct ChannelStatus {
    pub holder: Option<HolderStatus>,
    /// Newest first.
    pub recent: VecDeque<TransmissionRecord>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HolderStatus {
    pub tx: String,
    pub talker: String,
    pub endpoint: String,
    pub priority: String,
    pub since_unix_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TransmissionRecord {
    pub tx: String,
    pub talker: String,
    pub endpoint: String,
    pub started_unix_ms: u64,
    pub duration_ms: u64,
    /// Why it ended, as a metrics label (`talker_done`, `max_talk_time`, ...).
    pub end: &'static str,
}

/// One attached endpoint as the hub saw it attach.
#[derive(Clone, Debug)]
pub struct ObservedEndpoint {
    pub id: EndpointId,
    pub health: Arc<EndpointHealth>,
    pub counters: Arc<LinkCounters>,
}

/// A read-only view of one running hub; cheap to clone.
#[derive(Clone, Debug)]
pub struct HubObserver {
    pub channel: String,
    pub status: watch::Receiver<ChannelStatus>,
    pub endpoints: Vec<ObservedEndpoint>,
    pub stats: Arc<HubStats>,
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A release reason as a Prometheus label value and in `/status`.
pub fn release_label(reason: ReleaseReason) -> &'static str {
    match reason {
        ReleaseReason::TalkerDone => "talker_done",
        ReleaseReason::IdleTimeout => "idle_timeout",
        ReleaseReason::MaxTalkTime => "max_talk_time",
        ReleaseReason::Revoked => "revoked",
        ReleaseReason::EndpointGone => "endpoint_gone",
        ReleaseReason::Shutdown => "shutdown",
    }
}

//! Shared vocabulary of walkie-bridge: what an endpoint is, what it says to its
//! channel hub and hears back, the audio frame, and the codec helpers every side
//! builds on. Endpoint crates and the daemon depend on this crate; it depends on
//! none of them.

pub mod audio;
pub mod endpoint;
pub mod floor;
pub mod frame;
pub mod health;
pub mod ids;
pub mod lossy_queue;
pub mod policy;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use endpoint::{
    Capabilities, Downlink, Endpoint, EndpointError, EndpointFuture, HubClosed, HubLink,
    LinkCounters, Ordered, Resource, Uplink,
};
pub use floor::{DenyReason, FloorEvent, Priority, ReleaseReason, TalkKind};
pub use frame::{AudioFrame, DownFrame};
pub use health::{ConnectionState, EndpointHealth};
pub use ids::{EndpointId, Identity, StreamKey, Talker, TxId};
pub use policy::{AllowEveryone, PolicyFuture, TransmitPolicy};

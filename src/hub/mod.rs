//! Channel hubs: one actor per `[[channel]]` that owns the channel's floor and
//! routes the holder's audio to every other endpoint. The hub never knows which
//! external system an endpoint speaks to.

mod channel;
pub mod floor;
pub mod pcm;
pub mod status;
pub mod supervisor;

pub use channel::{AttachError, ChannelHub, HubAttacher, HubStats};
pub use floor::{Claimant, Decision, Floor, FloorSettings, Input};
pub use status::{ChannelStatus, HubObserver, ObservedEndpoint};
pub use supervisor::{supervise, Backoff, EndpointFactory, Supervised};

//! Channel hubs: one actor per `[[channel]]` that owns the channel's floor and
//! routes the holder's audio to every other endpoint. The hub never knows which
//! external system an endpoint speaks to.

mod channel;
pub mod floor;
mod pcm;
pub mod status;

pub use channel::{AttachError, ChannelHub, HubStats};
pub use floor::{Claimant, Decision, Floor, FloorSettings, Input};
pub use status::{ChannelStatus, HubObserver, ObservedEndpoint};

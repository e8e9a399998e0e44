//! The Matrix side: the homeserver client, puppets, room start-up, and (as it
//! lands) the appservice server, floor mirror and voice messages in.

pub mod appservice;
pub mod client;
pub mod commands;
pub mod crypto;
pub mod encrypted_in;
pub mod ids;
pub mod puppet_id;
pub mod puppets;
mod recent_events;
pub mod room_endpoint;
pub mod room_sender;
pub mod room_setup;
pub mod room_worker;

pub use appservice::{AppserviceError, AppserviceServer, BridgeUsers, Inbound};
pub use client::{Homeserver, MatrixError};
pub use puppets::{PuppetError, Puppets};
pub use room_sender::{RoomSender, SendError, Sent};
pub use room_setup::{prepare_room, PreparedRoom, RoomSetupError, FLOOR_EVENT_TYPE};
pub use room_worker::{RoomOp, RoomWorker};

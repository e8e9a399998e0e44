//! The Matrix side: the homeserver client, puppets, and (as it lands) the
//! appservice server, floor mirror and voice messages in.

pub mod appservice;
pub mod client;
pub mod commands;
pub mod puppet_id;

pub use appservice::{AppserviceError, AppserviceServer, BridgeUsers, Inbound};
pub use client::{Homeserver, MatrixError};

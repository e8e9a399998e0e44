//! The Matrix side: the homeserver client, puppets, and (as it lands) the
//! appservice server, floor mirror and voice messages in.

pub mod client;
pub mod puppet_id;

pub use client::{Homeserver, MatrixError};

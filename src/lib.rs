//! The walkie-bridge daemon: configuration, channel hubs with their floor arbiter,
//! the Matrix side, archive and store.

pub mod archive;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod endpoints;
pub mod hub;
pub mod levels;
pub mod live;
pub mod matrix;
pub mod mumble_identity;
pub mod ops;
pub mod radio_cli;
pub mod registration;
pub mod store;
pub mod transmit_policy;

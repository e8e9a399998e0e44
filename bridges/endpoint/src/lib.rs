//! Shared vocabulary of walkie-bridge: what an endpoint is, what it says to its
//! channel hub and hears back, the audio frame, and the codec helpers every side
//! builds on. Endpoint crates and the daemon depend on this crate; it depends on
//! none of them.

pub mod audio;

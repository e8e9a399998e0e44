//! Radio endpoint for walkie-bridge (DESIGN.md §5): key a real transmitter from a
//! channel, hear what the radio receives.
//!
//! Safety-critical: a transmitter left keyed jams a frequency. The PTT drivers
//! ([`ptt`]) are tiny and synchronous so they can run from a panic hook or a
//! signal path; one [`tx::TxController`] per radio owns tx delay, hang, timeout
//! and the stall watchdog, independently of the hub. Receive detection ([`rx`])
//! is muted while we transmit; [`audio`] is the sound card; [`morse`] the ID.
//! See README.md for the safety rules and how each is enforced.

pub mod audio;
pub mod devices;
pub mod endpoint;
mod error;
pub mod hardware;
pub mod morse;
pub mod ptt;
pub mod rx;
pub mod tx;

pub use endpoint::{HardwareOpener, MorseSettings, RadioEndpoint, RadioSettings};
pub use error::{PttError, SinkError, TxError};
pub use hardware::{open_hardware, CosSettings, HardwareError, RadioHardware};

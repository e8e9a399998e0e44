//! Radio endpoint for walkie-bridge: key a real transmitter from a channel.
//!
//! Safety-critical: a transmitter left keyed jams a frequency. The PTT drivers
//! ([`ptt`]) are tiny and synchronous so they can run from a panic hook or a
//! signal path; one [`tx::TxController`] per radio owns tx delay, hang, timeout
//! and the stall watchdog, independently of the hub. See README.md for the
//! safety rules and how each is enforced.

mod error;
pub mod ptt;
pub mod tx;

pub use error::{PttError, SinkError, TxError};

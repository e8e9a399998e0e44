//! Reopening a sound card that went away (USB unplug, driver reset).

use std::fmt::Display;
use std::time::Duration;

/// How often a vanished sound card is tried again (DESIGN.md / issue 6: every 2 s).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// After this many failed attempts in a row, a reminder is logged at WARN
/// (every minute at the default interval) so the log shows the card is still
/// missing without a line every 2 s.
const REMIND_EVERY: u32 = 30;

/// Calls `open` until it succeeds, waiting `interval` between attempts, and
/// returns the opened value with the number of attempts it took.
///
/// Logs the first failure at WARN ("`what` unavailable: …; retrying every
/// 2 s"), each further attempt at DEBUG, a reminder every 30 attempts, and the
/// recovery at INFO. The caller unkeys the radio *before* calling this (a card
/// that vanished mid-transmission must not leave the transmitter keyed), and
/// wraps it in `select!` with its shutdown signal to stop retrying.
pub async fn open_with_retry<T, E, F>(what: &str, interval: Duration, mut open: F) -> (T, u32)
where
    E: Display,
    F: FnMut() -> Result<T, E>,
{
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match open() {
            Ok(value) => {
                if attempts > 1 {
                    tracing::info!("{what} is back after {attempts} attempts");
                }
                return (value, attempts);
            }
            Err(e) if attempts == 1 => {
                tracing::warn!(
                    "{what} unavailable: {e}; retrying every {} s",
                    interval.as_secs_f32()
                );
            }
            Err(e) if attempts.is_multiple_of(REMIND_EVERY) => {
                tracing::warn!("{what} still unavailable after {attempts} attempts: {e}");
            }
            Err(e) => {
                tracing::debug!("{what} attempt {attempts} failed: {e}");
            }
        }
        tokio::time::sleep(interval).await;
    }
}

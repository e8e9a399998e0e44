//! systemd's notify protocol (`Type=notify`): READY=1 once the channels run,
//! STATUS= lines a person reads in `systemctl status`, WATCHDOG=1 from the main
//! loop, RELOADING=1 around a SIGHUP reload and STOPPING=1 on the way out.
//!
//! Without `NOTIFY_SOCKET` (not under systemd, or `Type=exec`) every call does
//! nothing, so the daemon needs no mode switch.

use std::time::Duration;

use sd_notify::NotifyState;

/// The daemon's side of the notify socket. Cheap; one per daemon.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` as systemd sets
    /// them. The variables stay set: the daemon keeps notifying for its whole life.
    pub fn from_env() -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        Self {
            enabled,
            watchdog: watchdog_from(
                std::env::var("WATCHDOG_USEC").ok().as_deref(),
                std::env::var("WATCHDOG_PID").ok().as_deref(),
                std::process::id(),
            ),
        }
    }

    /// A notifier that never sends (tests of the daemon in-process).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            watchdog: None,
        }
    }

    /// How often to send WATCHDOG=1: half of `WatchdogSec`, as sd_watchdog_enabled(3)
    /// advises, so one late tick does not get the service killed.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| timeout / 2)
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Start-up is still making progress (waiting for the homeserver): give it
    /// `more` before systemd's TimeoutStartSec= runs out.
    pub fn extend_timeout(&self, more: Duration, status: &str) {
        let usec = u32::try_from(more.as_micros()).unwrap_or(u32::MAX);
        self.send(&[
            NotifyState::ExtendTimeoutUsec(usec),
            NotifyState::Status(status),
        ]);
    }

    pub fn reloading(&self) {
        self.send(&[NotifyState::Reloading, NotifyState::Status("reloading")]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    fn send(&self, state: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        // A lost notification is not worth stopping for: systemd's own timeouts
        // deal with a daemon that never says READY or stops pinging.
        if let Err(error) = sd_notify::notify(false, state) {
            tracing::warn!(%error, "cannot notify systemd");
        }
    }
}

/// The watchdog timeout, if one applies to this process: `WATCHDOG_USEC` set and
/// positive, and `WATCHDOG_PID` (when present) naming us — as libsystemd's
/// sd_watchdog_enabled decides.
fn watchdog_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(me) {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_follows_sd_watchdog_enabled() {
        assert_eq!(
            watchdog_from(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_from(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_from(Some("soon"), None, 7), None);
        assert_eq!(watchdog_from(None, Some("7"), 7), None);
    }
}

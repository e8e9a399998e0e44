//! How an endpoint's connection to its external system is doing, reported by the
//! endpoint through its [`crate::HubLink`] and read by the daemon's `/status` page,
//! `/metrics` and the systemd STATUS line. Lock-free except for the rarely written
//! reason text, so reporting never slows an endpoint's receive loop.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The endpoint's connection as it last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Nothing reported yet (still connecting, or an endpoint that never reports).
    Starting,
    Connected,
    /// Lost or refused; the endpoint is retrying. The reason is in
    /// [`EndpointHealth::reason`].
    Disconnected,
}

impl ConnectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Connected,
            2 => Self::Disconnected,
            _ => Self::Starting,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Starting => 0,
            Self::Connected => 1,
            Self::Disconnected => 2,
        }
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Shared between an endpoint's link (writer) and the daemon (reader).
#[derive(Debug, Default)]
pub struct EndpointHealth {
    state: AtomicU8,
    /// How often the endpoint reported `Connected` after not being connected.
    connects: AtomicU64,
    /// How often the endpoint's task was restarted after a panic.
    restarts: AtomicU64,
    /// When the state last changed, milliseconds since the Unix epoch (0: never).
    changed_unix_ms: AtomicU64,
    /// Why the endpoint is disconnected, for the operator.
    reason: Mutex<Option<String>>,
    /// Something the operator must fix although the endpoint is connected (a
    /// Mumble server that will not let the bot speak).
    warning: Mutex<Option<String>>,
    /// Woken by every report, so a watcher awaits a change instead of polling.
    changed: tokio::sync::Notify,
}

impl EndpointHealth {
    pub fn state(&self) -> ConnectionState {
        ConnectionState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Successful connections so far; every one after the first is a reconnect.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    pub fn reconnects(&self) -> u64 {
        self.connects().saturating_sub(1)
    }

    /// Restarts of the endpoint's task after a panic.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Counted by whoever restarts the task.
    pub fn record_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Returns once `done` holds, checked again after every report.
    pub async fn wait_until(&self, done: impl Fn(&Self) -> bool) {
        loop {
            // Registered before the check, so a report between the check and
            // the await still wakes us.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(self) {
                return;
            }
            notified.await;
        }
    }

    /// When the state last changed; `None` before the first report.
    pub fn since(&self) -> Option<SystemTime> {
        match self.changed_unix_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(UNIX_EPOCH + std::time::Duration::from_millis(ms)),
        }
    }

    /// Sets (or clears, with `None`) the endpoint's standing warning.
    pub fn set_warning(&self, warning: Option<String>) {
        *self
            .warning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = warning;
        self.changed.notify_waiters();
    }

    /// The standing warning, if any.
    pub fn warning(&self) -> Option<String> {
        self.warning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The last disconnect reason while disconnected.
    pub fn reason(&self) -> Option<String> {
        // A poisoned lock only means a reporter panicked mid-write of a String;
        // the text is still whole.
        self.reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, state: ConnectionState, reason: Option<String>) {
        let previous = ConnectionState::from_u8(self.state.swap(state.to_u8(), Ordering::AcqRel));
        if state == ConnectionState::Connected && previous != ConnectionState::Connected {
            self.connects.fetch_add(1, Ordering::Relaxed);
        }
        if previous != state {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_millis() as u64);
            self.changed_unix_ms.store(now.max(1), Ordering::Relaxed);
        }
        *self
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = reason;
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_connects_not_repeated_reports() {
        let health = EndpointHealth::default();
        assert_eq!(health.state(), ConnectionState::Starting);
        assert!(health.since().is_none());
        health.set(ConnectionState::Connected, None);
        health.set(ConnectionState::Connected, None);
        assert_eq!(health.connects(), 1);
        assert_eq!(health.reconnects(), 0);
        health.set(ConnectionState::Disconnected, Some("broker gone".into()));
        assert_eq!(health.reason().as_deref(), Some("broker gone"));
        health.set(ConnectionState::Connected, None);
        assert_eq!(health.reconnects(), 1);
        assert!(health.reason().is_none());
        assert!(health.since().is_some());
    }
}

//! PTT drivers: one tiny synchronous trait, a driver per way of keying a radio.
//!
//! Drivers hold no timing policy (that is [`crate::tx::TxController`]'s job).
//! Every call is synchronous and bounded in time, so the same driver can be
//! unkeyed from a panic hook or the signal thread ([`safety`]).

mod config;
mod fake;
mod lines;
mod none;
mod rigctld;
pub mod safety;
mod serial;

use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

pub(crate) use config::open_serial_ptt;
pub use config::{force_unkey, open_ptt, PttConfig, UnkeyReport};
pub use fake::{monotonic_ns, FakeClock, FakeModemLines, Line, LineEvent};
pub use lines::{LineLevels, ModemLines, PttLines, SerialLinePtt};
pub use none::NoPtt;
pub use rigctld::RigctldPtt;
pub use serial::SerialPortLines;

use crate::PttError;

/// Keys and unkeys one transmitter.
///
/// Synchronous and fast (bounded by short timeouts), so it can also run from a
/// panic hook or a signal path. Drivers never unkey in `Drop` alone — SvxLink's
/// stuck transmitters came from that — the controller and the safety registry
/// unkey explicitly.
pub trait Ptt: Send {
    /// Drive the transmitter to keyed (`true`) or unkeyed (`false`).
    fn set_keyed(&mut self, keyed: bool) -> Result<(), PttError>;
    /// The keyed state, read back from the hardware where it can be (TIOCMGET,
    /// rigctld `t`); otherwise the last state set.
    fn is_keyed(&mut self) -> Result<bool, PttError>;
    /// A short name for logs: `/dev/ttyUSB0 rts`, `rigctld 127.0.0.1:4532`.
    fn describe(&self) -> String {
        "ptt".to_owned()
    }
}

impl<P: Ptt + ?Sized> Ptt for Box<P> {
    fn set_keyed(&mut self, keyed: bool) -> Result<(), PttError> {
        (**self).set_keyed(keyed)
    }
    fn is_keyed(&mut self) -> Result<bool, PttError> {
        (**self).is_keyed()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// A PTT shared between its controller and the process-wide safety registry,
/// so a panic hook or the signal thread can unkey it without the controller.
#[derive(Clone)]
pub struct SharedPtt {
    inner: Arc<Mutex<Box<dyn Ptt>>>,
    name: Arc<str>,
}

impl SharedPtt {
    pub fn new(name: impl Into<String>, ptt: Box<dyn Ptt>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(ptt)),
            name: Arc::from(name.into()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn set_keyed(&self, keyed: bool) -> Result<(), PttError> {
        let mut ptt = self.lock(LOCK_WAIT)?;
        // Under the lock: the safety net forbids before it takes this lock.
        if keyed && safety::keying_forbidden() {
            return Err(PttError::ProcessEnding(self.name.to_string()));
        }
        ptt.set_keyed(keyed)
    }

    pub fn is_keyed(&self) -> Result<bool, PttError> {
        self.lock(LOCK_WAIT)?.is_keyed()
    }

    /// Poisoning is ignored on purpose: a panic elsewhere must never stop us
    /// from unkeying. A lock still held past `wait` is reported as busy (the
    /// panicking thread may hold it itself) rather than deadlocking a hook.
    fn lock(&self, wait: Duration) -> Result<MutexGuard<'_, Box<dyn Ptt>>, PttError> {
        lock_within(&self.inner, wait).ok_or_else(|| PttError::Busy(self.name.to_string()))
    }

    pub(crate) fn downgrade(&self) -> WeakPtt {
        WeakPtt {
            inner: Arc::downgrade(&self.inner),
            name: self.name.clone(),
        }
    }
}

/// How long a normal call waits for another thread's call to the same driver
/// (each bounded by the driver's own short timeouts).
const LOCK_WAIT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub(crate) struct WeakPtt {
    inner: std::sync::Weak<Mutex<Box<dyn Ptt>>>,
    name: Arc<str>,
}

impl WeakPtt {
    pub(crate) fn upgrade(&self) -> Option<SharedPtt> {
        self.inner.upgrade().map(|inner| SharedPtt {
            inner,
            name: self.name.clone(),
        })
    }
}

pub(crate) fn lock_within<T: ?Sized>(m: &Mutex<T>, wait: Duration) -> Option<MutexGuard<'_, T>> {
    let deadline = Instant::now() + wait;
    loop {
        match m.try_lock() {
            Ok(g) => return Some(g),
            Err(TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => {
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

impl SharedPtt {
    /// Unkey with a custom lock wait (the panic hook uses a short one).
    pub(crate) fn unkey_within(&self, wait: Duration) -> Result<(), PttError> {
        self.lock(wait)?.set_keyed(false)
    }
}

//! Process-wide safety net: every live PTT is registered here, so a panic
//! hook and the SIGTERM/SIGINT path can unkey all of them synchronously,
//! without the controllers (which may be the thing that failed).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

use super::{lock_within, SharedPtt, WeakPtt};
use crate::PttError;

static REGISTRY: Mutex<Vec<(u64, WeakPtt)>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Counts [`unkey_all`] runs (panic hook, signal path), so a transmit
/// controller can tell that its radio was unkeyed behind its back.
static UNKEY_GENERATION: AtomicU64 = AtomicU64::new(0);

/// How many times the safety net has unkeyed every radio so far. Raised
/// *before* the radios are unkeyed: a controller that sees the new value may
/// act a moment early (unkey a radio that is about to be unkeyed anyway),
/// never late.
pub fn unkey_generation() -> u64 {
    UNKEY_GENERATION.load(Ordering::Acquire)
}

/// Set once the process is ending (its main thread panicked, or a signal is
/// about to end it): from then on no PTT keys again. Without it, a transmit
/// controller that still had audio in flight when the safety net unkeyed would
/// key once more for that audio (as it should while the process lives on, see
/// `Input::UnkeyedElsewhere`) and the process would end with the radio keyed:
/// seen as a flaky `ptt_process` test, the last line change an RTS key 5 µs
/// after the hook's unkey. Checked under each PTT's own lock, and set before
/// the safety net takes those locks, so a key either happens before the unkey
/// or not at all.
static PROCESS_ENDING: AtomicBool = AtomicBool::new(false);

/// Whether keying is over for this process ([`PROCESS_ENDING`]).
pub fn keying_forbidden() -> bool {
    PROCESS_ENDING.load(Ordering::Acquire)
}

/// Forbids keying from now on, for a process that is ending.
pub fn forbid_keying() {
    PROCESS_ENDING.store(true, Ordering::Release);
}

/// Keeps a PTT in the registry; dropping it takes it out.
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(mut r) = lock_within(&REGISTRY, Duration::from_secs(1)) {
            r.retain(|(id, _)| *id != self.0);
        }
    }
}

/// Put a PTT in the registry for the panic hook and signal path.
pub fn register(ptt: &SharedPtt) -> Registration {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    if let Some(mut r) = lock_within(&REGISTRY, Duration::from_secs(1)) {
        r.retain(|(_, w)| w.upgrade().is_some());
        r.push((id, ptt.downgrade()));
    }
    Registration(id)
}

/// The outcome for one PTT of [`unkey_all`].
#[derive(Debug)]
pub struct Unkeyed {
    pub name: String,
    pub result: Result<(), PttError>,
}

/// Unkey every registered PTT, now, on this thread. Unkeying an unkeyed
/// radio is harmless, so all are unkeyed, not only those we believe keyed.
/// Each failure is logged at error level and returned.
pub fn unkey_all() -> Vec<Unkeyed> {
    unkey_all_within(Duration::from_millis(500))
}

fn unkey_all_within(wait: Duration) -> Vec<Unkeyed> {
    UNKEY_GENERATION.fetch_add(1, Ordering::AcqRel);
    let entries: Vec<WeakPtt> = match lock_within(&REGISTRY, wait) {
        Some(r) => r.iter().map(|(_, w)| w.clone()).collect(),
        None => {
            tracing::error!("PTT registry busy: cannot unkey from here");
            return Vec::new();
        }
    };
    entries
        .iter()
        .filter_map(WeakPtt::upgrade)
        .map(|p| {
            let result = p.unkey_within(wait);
            if let Err(e) = &result {
                tracing::error!(ptt = p.name(), error = %e, "SAFETY UNKEY FAILED");
                eprintln!("walkie-radio: SAFETY UNKEY FAILED for {}: {e}", p.name());
            }
            Unkeyed {
                name: p.name().to_owned(),
                result,
            }
        })
        .collect()
}

static PANIC_HOOK: Once = Once::new();

/// Install (once) a panic hook that unkeys every registered PTT before the
/// previous hook runs (so the message still prints). Runs on the panicking
/// thread; a PTT whose lock that very thread holds is reported busy after a
/// short wait rather than deadlocking.
pub fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // A panic on the main thread ends the process (a panic in a tokio
            // task or another thread may be caught, and the bridge lives on).
            if std::thread::current().name() == Some("main") {
                forbid_keying();
            }
            for u in unkey_all_within(Duration::from_millis(200)) {
                if u.result.is_ok() {
                    eprintln!("walkie-radio: panic: unkeyed {}", u.name);
                }
            }
            previous(info);
        }));
    });
}

static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);
static SIGNAL_INSTALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work here: hand the signal number to the
    // unkey thread through a pipe (write(2) is async-signal-safe).
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: writes one byte from a valid stack buffer.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

/// What to do after the signal thread has unkeyed everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSignal {
    /// Restore the default action and re-raise: the process ends by the
    /// signal, as a supervisor expects. For binaries without their own
    /// graceful shutdown.
    Reraise,
    /// Keep running (the caller's own shutdown path follows; it unkeys
    /// again, harmlessly).
    Continue,
}

/// Install SIGTERM and SIGINT handlers that unkey every registered PTT
/// synchronously on a dedicated thread (a signal handler itself must not take
/// locks), then act per `after`.
///
/// The daemon, which shuts down gracefully through tokio's signal stream,
/// can instead call [`unkey_all`] first thing in its own handler; both paths
/// are idempotent.
pub fn install_signal_unkey(after: AfterSignal) -> Result<(), PttError> {
    if SIGNAL_INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let mut fds: [RawFd; 2] = [-1, -1];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        SIGNAL_INSTALLED.store(false, Ordering::SeqCst);
        return Err(PttError::Signal(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    let [rd, wr] = fds;
    SIGNAL_PIPE.store(wr, Ordering::SeqCst);
    std::thread::Builder::new()
        .name("ptt-signal-unkey".to_owned())
        .spawn(move || loop {
            let mut b = 0u8;
            // SAFETY: reads one byte into a valid stack buffer.
            let n = unsafe { libc::read(rd, (&mut b as *mut u8).cast(), 1) };
            if n == 1 {
                let sig = libc::c_int::from(b);
                if after == AfterSignal::Reraise {
                    forbid_keying();
                }
                let results = unkey_all();
                tracing::warn!(
                    signal = sig,
                    unkeyed = results.len(),
                    "signal: unkeyed all PTTs"
                );
                if after == AfterSignal::Reraise {
                    // SAFETY: restoring the default disposition and raising a
                    // signal have no memory-safety preconditions.
                    unsafe {
                        libc::signal(sig, libc::SIG_DFL);
                        libc::raise(sig);
                    }
                }
            } else if n == 0 {
                return;
            }
        })
        .map_err(|e| PttError::Signal(e.to_string()))?;
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction with a valid handler and empty mask.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(PttError::Signal(
                std::io::Error::last_os_error().to_string(),
            ));
        }
    }
    Ok(())
}

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{LineLevels, ModemLines};
use crate::PttError;

/// A clock tests advance by hand, shared by the code under test and the fakes
/// so recorded times are exact.
#[derive(Clone, Debug)]
pub struct FakeClock(Arc<Mutex<Instant>>);

impl FakeClock {
    pub fn new(start: Instant) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }
    pub fn now(&self) -> Instant {
        match self.0.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }
    pub fn set(&self, t: Instant) {
        match self.0.lock() {
            Ok(mut g) => *g = t,
            Err(p) => *p.into_inner() = t,
        }
    }
    pub fn advance(&self, d: std::time::Duration) -> Instant {
        let t = self.now() + d;
        self.set(t);
        t
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    Rts,
    Dtr,
}

/// One recorded change of an output line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineEvent {
    pub at: Instant,
    pub line: Line,
    pub level: bool,
}

#[derive(Default)]
struct State {
    rts: bool,
    dtr: bool,
    events: Vec<LineEvent>,
    file: Option<File>,
    fail_next: u32,
    unplugged: bool,
}

/// Modem lines for tests, behind the same [`ModemLines`] trait as the real
/// port: every RTS/DTR write is recorded with its time (real or [`FakeClock`]),
/// and optionally appended to a file as `<CLOCK_MONOTONIC ns> <RTS|DTR> <0|1>`
/// so a test can read what a killed child process did last.
///
/// Starts with both lines asserted, as Linux leaves them right after open.
#[derive(Clone)]
pub struct FakeModemLines {
    state: Arc<Mutex<State>>,
    clock: Option<FakeClock>,
}

impl Default for FakeModemLines {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeModemLines {
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                rts: true,
                dtr: true,
                ..State::default()
            })),
            clock: None,
        }
    }

    pub fn with_clock(clock: FakeClock) -> Self {
        Self {
            clock: Some(clock),
            ..Self::new()
        }
    }

    /// Also log every change to `file` (one `write` per line, so a line is in
    /// the page cache the moment the call returns, even if we die next).
    pub fn log_to(self, file: File) -> Self {
        self.with(|s| s.file = Some(file));
        self
    }

    /// Make the next `n` line writes fail (EIO), to test unkey retries.
    pub fn fail_next(&self, n: u32) {
        self.with(|s| s.fail_next = n);
    }

    /// Pull the USB adapter out (`true`): every write and read fails, as on a
    /// serial port whose device vanished, until it is plugged back in
    /// (`false`). Plugged back, both lines are asserted again, as Linux leaves
    /// them when the port is opened anew — only a reopen that drives them to
    /// unkeyed brings them down.
    pub fn set_unplugged(&self, unplugged: bool) {
        self.with(|s| {
            if s.unplugged && !unplugged {
                s.rts = true;
                s.dtr = true;
            }
            s.unplugged = unplugged;
        });
    }

    pub fn events(&self) -> Vec<LineEvent> {
        self.with(|s| s.events.clone())
    }

    pub fn levels_now(&self) -> LineLevels {
        self.with(|s| LineLevels {
            rts: s.rts,
            dtr: s.dtr,
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // Poison-tolerant: a test that panics mid-transmission still needs
        // the lines to work in the panic hook.
        let mut g = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    fn set(&mut self, line: Line, level: bool) -> Result<(), PttError> {
        let at = self
            .clock
            .as_ref()
            .map_or_else(Instant::now, FakeClock::now);
        self.with(|s| {
            if s.unplugged {
                return Err(unplugged_error("set line"));
            }
            if s.fail_next > 0 {
                s.fail_next -= 1;
                return Err(PttError::Line {
                    port: "fake".to_owned(),
                    what: "set line",
                    reason: "injected I/O error".to_owned(),
                });
            }
            match line {
                Line::Rts => s.rts = level,
                Line::Dtr => s.dtr = level,
            }
            s.events.push(LineEvent { at, line, level });
            if let Some(f) = s.file.as_mut() {
                let name = match line {
                    Line::Rts => "RTS",
                    Line::Dtr => "DTR",
                };
                let rec = format!("{} {} {}\n", monotonic_ns(), name, u8::from(level));
                // A failed log write must not fail the line change itself.
                let _ = f.write_all(rec.as_bytes());
            }
            Ok(())
        })
    }
}

fn unplugged_error(what: &'static str) -> PttError {
    PttError::Line {
        port: "fake".to_owned(),
        what,
        reason: "No such device (os error 19)".to_owned(),
    }
}

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes on one host
/// (what `Instant` uses on Linux, but `Instant` cannot be exported).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a timespec through the pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

impl ModemLines for FakeModemLines {
    fn set_rts(&mut self, level: bool) -> Result<(), PttError> {
        self.set(Line::Rts, level)
    }
    fn set_dtr(&mut self, level: bool) -> Result<(), PttError> {
        self.set(Line::Dtr, level)
    }
    fn levels(&mut self) -> Result<Option<LineLevels>, PttError> {
        if self.with(|s| s.unplugged) {
            return Err(unplugged_error("read modem lines"));
        }
        Ok(Some(self.levels_now()))
    }
    fn describe(&self) -> String {
        "fake".to_owned()
    }
}

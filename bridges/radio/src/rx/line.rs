//! COS on a modem status line of the serial port.

use super::{Debouncer, Squelch, SquelchError};
use std::fmt;
use std::time::{Duration, Instant};

/// An input line of the serial port a radio's COS output can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModemLine {
    /// Clear To Send.
    Cts,
    /// Data Set Ready.
    Dsr,
    /// Data Carrier Detect.
    Dcd,
}

impl fmt::Display for ModemLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModemLine::Cts => "CTS",
            ModemLine::Dsr => "DSR",
            ModemLine::Dcd => "DCD",
        })
    }
}

/// A line and its polarity, as the `cos` setting names it (`dcd`, `!cts`…).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusLine {
    /// Which line.
    pub line: ModemLine,
    /// `!` prefix: the line is low while a signal is received.
    pub inverted: bool,
}

impl std::str::FromStr for StatusLine {
    type Err = SquelchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        let (inverted, name) = match trimmed.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, trimmed),
        };
        let line = match name.to_ascii_lowercase().as_str() {
            "cts" => ModemLine::Cts,
            "dsr" => ModemLine::Dsr,
            "dcd" => ModemLine::Dcd,
            _ => return Err(SquelchError::BadSetting(s.to_owned())),
        };
        Ok(Self { line, inverted })
    }
}

/// Reads the modem status lines. A trait because pseudo-terminals have no
/// modem lines (TIOCMGET answers ENOTTY), so tests use a fake.
pub trait ModemStatus: Send {
    /// Clear To Send is asserted.
    fn cts(&mut self) -> Result<bool, SquelchError>;
    /// Data Set Ready is asserted.
    fn dsr(&mut self) -> Result<bool, SquelchError>;
    /// Data Carrier Detect is asserted.
    fn dcd(&mut self) -> Result<bool, SquelchError>;
}

/// The real serial port's status lines (a `try_clone` of the PTT port, or
/// the port itself when the radio's PTT is not on serial).
pub struct SerialModemStatus {
    port: Box<dyn serialport::SerialPort>,
}

impl fmt::Debug for SerialModemStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerialModemStatus")
            .field("port", &self.port.name())
            .finish()
    }
}

impl SerialModemStatus {
    /// Reads the lines of `port`.
    pub fn new(port: Box<dyn serialport::SerialPort>) -> Self {
        Self { port }
    }
}

fn line_err(line: ModemLine, e: serialport::Error) -> SquelchError {
    SquelchError::Line {
        line,
        message: e.to_string(),
    }
}

impl ModemStatus for SerialModemStatus {
    fn cts(&mut self) -> Result<bool, SquelchError> {
        self.port
            .read_clear_to_send()
            .map_err(|e| line_err(ModemLine::Cts, e))
    }
    fn dsr(&mut self) -> Result<bool, SquelchError> {
        self.port
            .read_data_set_ready()
            .map_err(|e| line_err(ModemLine::Dsr, e))
    }
    fn dcd(&mut self) -> Result<bool, SquelchError> {
        self.port
            .read_carrier_detect()
            .map_err(|e| line_err(ModemLine::Dcd, e))
    }
}

/// COS from a modem status line, polled (every [`super::POLL_INTERVAL`] by
/// the caller) and debounced.
///
/// Polling rather than TIOCMIWAIT: USB serial adapters (the usual radio
/// interface) implement TIOCMIWAIT unevenly, and 100 Hz polling costs nothing.
pub struct LineSquelch<M: ModemStatus> {
    status: M,
    line: StatusLine,
    debounce: Debouncer,
}

impl<M: ModemStatus> fmt::Debug for LineSquelch<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineSquelch")
            .field("line", &self.line)
            .field("debounce", &self.debounce)
            .finish_non_exhaustive()
    }
}

impl<M: ModemStatus> LineSquelch<M> {
    /// Reads `line` from `status`; a change counts after `debounce` of stability.
    pub fn new(status: M, line: StatusLine, debounce: Duration) -> Self {
        Self {
            status,
            line,
            debounce: Debouncer::new(debounce),
        }
    }

    /// The line read.
    pub fn line(&self) -> StatusLine {
        self.line
    }

    /// The raw (undebounced) signal state: the line level, inverted if configured.
    pub fn read_raw(&mut self) -> Result<bool, SquelchError> {
        let level = match self.line.line {
            ModemLine::Cts => self.status.cts()?,
            ModemLine::Dsr => self.status.dsr()?,
            ModemLine::Dcd => self.status.dcd()?,
        };
        Ok(level != self.line.inverted)
    }
}

impl<M: ModemStatus> Squelch for LineSquelch<M> {
    fn poll(&mut self, now: Instant) -> Result<bool, SquelchError> {
        let raw = self.read_raw()?;
        Ok(self.debounce.update(raw, now))
    }

    fn reset(&mut self) {
        self.debounce.reset();
    }

    fn probe(&mut self) -> Result<(), SquelchError> {
        self.read_raw().map(|_| ())
    }
}

/// A modem-status fake for tests: line levels set by the test, shared with
/// the squelch through an `Arc`.
#[derive(Debug, Clone, Default)]
pub struct FakeModemStatus {
    lines: std::sync::Arc<std::sync::Mutex<FakeLines>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct FakeLines {
    cts: bool,
    dsr: bool,
    dcd: bool,
    fail: bool,
}

impl FakeModemStatus {
    /// All lines low.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the level of `line`.
    pub fn set(&self, line: ModemLine, level: bool) {
        let mut l = self.lock();
        match line {
            ModemLine::Cts => l.cts = level,
            ModemLine::Dsr => l.dsr = level,
            ModemLine::Dcd => l.dcd = level,
        }
    }

    /// Makes every read fail (a port that went away).
    pub fn set_failing(&self, fail: bool) {
        self.lock().fail = fail;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeLines> {
        // A poisoned lock only means a test panicked mid-update; the levels are still valid.
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self, line: ModemLine) -> Result<bool, SquelchError> {
        let l = *self.lock();
        if l.fail {
            return Err(SquelchError::Line {
                line,
                message: "fake port failure".into(),
            });
        }
        Ok(match line {
            ModemLine::Cts => l.cts,
            ModemLine::Dsr => l.dsr,
            ModemLine::Dcd => l.dcd,
        })
    }
}

impl ModemStatus for FakeModemStatus {
    fn cts(&mut self) -> Result<bool, SquelchError> {
        self.read(ModemLine::Cts)
    }
    fn dsr(&mut self) -> Result<bool, SquelchError> {
        self.read(ModemLine::Dsr)
    }
    fn dcd(&mut self) -> Result<bool, SquelchError> {
        self.read(ModemLine::Dcd)
    }
}

//! Opening a radio's keying and receive-detection hardware as one unit.
//!
//! PTT and COS often share one serial port (RTS keys, CTS carries the squelch),
//! and a port is opened exclusively: both must come from a single open.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use walkie_endpoint::audio::VoxConfig;

use crate::ptt::{open_ptt, open_serial_ptt, Ptt, PttConfig};
use crate::rx::{
    LineSquelch, ModemLine, RigctldSquelch, SerialModemStatus, Squelch, SquelchError, StatusLine,
    VoxSquelch, POLL_INTERVAL,
};
use crate::PttError;

/// How a radio tells that it receives (`cos`).
#[derive(Debug, Clone, PartialEq)]
pub enum CosSettings {
    /// A modem status line of `port`.
    Line(StatusLine),
    /// hamlib's rigctld `\get_dcd`.
    Rigctld { addr: String },
    /// The level of the captured audio.
    Vox(VoxConfig),
}

/// The keying and receive-detection halves of one radio.
pub struct RadioHardware {
    pub ptt: Box<dyn Ptt>,
    pub squelch: Box<dyn Squelch>,
}

impl std::fmt::Debug for RadioHardware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RadioHardware")
            .field("ptt", &self.ptt.describe())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    #[error(transparent)]
    Ptt(#[from] PttError),
    #[error("cannot open serial port {port} for receive detection: {reason}")]
    StatusPort { port: String, reason: String },
    #[error("cos = {cos:?} reads a serial line but no port is configured")]
    NoPort { cos: String },
}

/// Opens the PTT (driven to unkeyed at once) and the receive detector
/// `ptt`/`port`/`cos` describe; `debounce` applies to line and rigctld detection.
pub fn open_hardware(
    ptt: &PttConfig,
    port: Option<&str>,
    cos: &CosSettings,
    debounce: Duration,
) -> Result<RadioHardware, HardwareError> {
    let (ptt_driver, shared_port) = match ptt {
        PttConfig::Serial {
            port,
            lines,
            invert,
        } => {
            let (driver, status) = open_serial_ptt(port, *lines, *invert)?;
            (driver, Some(status))
        }
        other => (open_ptt(other)?, None),
    };
    let squelch: Box<dyn Squelch> = match cos {
        CosSettings::Vox(vox) => Box::new(VoxSquelch::new(*vox)),
        CosSettings::Rigctld { addr } => Box::new(ThreadedSquelch::spawn(Box::new(
            RigctldSquelch::new(addr.clone(), debounce),
        ))),
        CosSettings::Line(line) => {
            let status = match shared_port {
                Some(status) => status,
                None => {
                    let path = port.ok_or_else(|| HardwareError::NoPort {
                        cos: line_name(*line),
                    })?;
                    serialport::new(path, 9600)
                        .dtr_on_open(false)
                        .open()
                        .map_err(|e| HardwareError::StatusPort {
                            port: path.to_owned(),
                            reason: e.to_string(),
                        })?
                }
            };
            Box::new(LineSquelch::new(
                SerialModemStatus::new(status),
                *line,
                debounce,
            ))
        }
    };
    Ok(RadioHardware {
        ptt: ptt_driver,
        squelch,
    })
}

fn line_name(line: StatusLine) -> String {
    let name = match line.line {
        ModemLine::Cts => "cts",
        ModemLine::Dsr => "dsr",
        ModemLine::Dcd => "dcd",
    };
    if line.inverted {
        format!("!{name}")
    } else {
        name.to_owned()
    }
}

/// Runs a detector whose poll may block (a rigctld round trip, up to its
/// timeout) on its own thread at [`POLL_INTERVAL`], so that the endpoint's
/// task only ever reads the latest answer.
pub struct ThreadedSquelch {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    detected: AtomicBool,
    stop: AtomicBool,
    error: Mutex<Option<SquelchError>>,
}

impl ThreadedSquelch {
    pub fn spawn(mut inner: Box<dyn Squelch>) -> Self {
        let shared = Arc::new(Shared::default());
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("rx-squelch".into())
            .spawn(move || {
                while !worker.stop.load(Ordering::Acquire) {
                    match inner.poll(Instant::now()) {
                        Ok(detected) => worker.detected.store(detected, Ordering::Release),
                        Err(error) => {
                            worker.detected.store(false, Ordering::Release);
                            if let Ok(mut slot) = worker.error.lock() {
                                *slot = Some(error);
                            }
                        }
                    }
                    std::thread::sleep(POLL_INTERVAL);
                }
            })
            .ok();
        Self { shared, thread }
    }
}

impl Squelch for ThreadedSquelch {
    fn poll(&mut self, _now: Instant) -> Result<bool, SquelchError> {
        if let Some(error) = self.shared.error.lock().ok().and_then(|mut e| e.take()) {
            return Err(error);
        }
        Ok(self.shared.detected.load(Ordering::Acquire))
    }
}

impl Drop for ThreadedSquelch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

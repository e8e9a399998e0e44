use std::os::fd::AsRawFd;

use serialport::{SerialPort, TTYPort};

use super::{LineLevels, ModemLines};
use crate::PttError;

/// The modem lines of a real serial port (serialport crate, plus TIOCMGET and
/// HUPCL through libc, which the crate does not expose).
///
/// HUPCL: on the *last close* of a tty, the kernel drops DTR and RTS only if
/// HUPCL is set in `c_cflag`; without it the lines keep their last level. On
/// *every open* the kernel raises DTR and RTS (when the baud rate is not B0)
/// regardless of HUPCL, for a moment we cannot prevent — which is why
/// [`super::SerialLinePtt::new`] drives the lines to unkeyed immediately.
/// We set HUPCL so that the level the kernel leaves behind after a close —
/// including the implicit close when the process is SIGKILLed — is the
/// *unkeyed* one: HUPCL on for active-high PTT (dropped = unkeyed), HUPCL off
/// for `ptt_invert` (dropped would be keyed; the last level we set, unkeyed,
/// must stay).
pub struct SerialPortLines {
    port: TTYPort,
    path: String,
}

impl SerialPortLines {
    pub fn open(path: &str) -> Result<Self, PttError> {
        let port = serialport::new(path, 9600)
            // Clears DTR right after open (best effort; we clear both again).
            .dtr_on_open(false)
            .open_native()
            .map_err(|e| PttError::Open {
                port: path.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            port,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// A second handle on the same port for reading its status lines (COS on
    /// CTS/DSR/DCD): the port is opened exclusively, so it cannot be opened twice.
    pub fn status_handle(&self) -> Result<Box<dyn SerialPort>, PttError> {
        self.port.try_clone().map_err(|e| PttError::Open {
            port: self.path.clone(),
            reason: format!("cannot share the port with receive detection: {e}"),
        })
    }

    /// Set or clear HUPCL (see the type's docs for which we choose).
    pub fn set_hupcl(&mut self, on: bool) -> Result<(), PttError> {
        let fd = self.port.as_raw_fd();
        let err = |what: &'static str| PttError::Line {
            port: self.path.clone(),
            what,
            reason: std::io::Error::last_os_error().to_string(),
        };
        // SAFETY: `fd` is the open tty owned by `self.port`; termios is plain
        // data fully written by tcgetattr before we read it.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                return Err(err("read termios"));
            }
            if on {
                t.c_cflag |= libc::HUPCL;
            } else {
                t.c_cflag &= !libc::HUPCL;
            }
            if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
                return Err(err("set HUPCL"));
            }
        }
        Ok(())
    }

    fn line_err(&self, what: &'static str, e: impl ToString) -> PttError {
        PttError::Line {
            port: self.path.clone(),
            what,
            reason: e.to_string(),
        }
    }
}

impl ModemLines for SerialPortLines {
    fn set_rts(&mut self, level: bool) -> Result<(), PttError> {
        self.port
            .write_request_to_send(level)
            .map_err(|e| self.line_err("set RTS", e))
    }

    fn set_dtr(&mut self, level: bool) -> Result<(), PttError> {
        self.port
            .write_data_terminal_ready(level)
            .map_err(|e| self.line_err("set DTR", e))
    }

    fn levels(&mut self) -> Result<Option<LineLevels>, PttError> {
        let mut bits: libc::c_int = 0;
        // SAFETY: TIOCMGET writes one c_int through the pointer we pass.
        let rc = unsafe { libc::ioctl(self.port.as_raw_fd(), libc::TIOCMGET, &mut bits) };
        if rc != 0 {
            return Err(self.line_err("read modem lines", std::io::Error::last_os_error()));
        }
        Ok(Some(LineLevels {
            rts: bits & libc::TIOCM_RTS != 0,
            dtr: bits & libc::TIOCM_DTR != 0,
        }))
    }

    fn describe(&self) -> String {
        self.path.clone()
    }
}

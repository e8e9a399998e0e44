use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::Ptt;
use crate::PttError;

/// PTT through hamlib's `rigctld` over TCP: `T 1` / `T 0` (answer `RPRT 0`),
/// read back with `t` (answer `0` or `1`).
///
/// Every call is bounded by short timeouts. A broken connection is dropped
/// and re-made on the next call; an unkey is retried on a fresh connection
/// and, if it still fails, reported loudly as [`PttError::UnkeyFailed`].
pub struct RigctldPtt {
    addr: String,
    conn: Option<Conn>,
    timeout: Duration,
    unkey_attempts: u32,
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// Long enough for a loaded rigctld on a LAN, short enough that an unkey
/// through a dead daemon gives up (and is reported) within about a second.
pub const RIGCTLD_TIMEOUT: Duration = Duration::from_millis(300);
const UNKEY_ATTEMPTS: u32 = 3;

impl RigctldPtt {
    /// Connects and drives PTT to unkeyed at once (the "unkeyed on open" rule).
    pub fn connect(addr: &str) -> Result<Self, PttError> {
        Self::connect_with(addr, RIGCTLD_TIMEOUT)
    }

    pub fn connect_with(addr: &str, timeout: Duration) -> Result<Self, PttError> {
        let mut ptt = Self {
            addr: addr.to_owned(),
            conn: None,
            timeout,
            unkey_attempts: UNKEY_ATTEMPTS,
        };
        ptt.set_keyed(false)?;
        Ok(ptt)
    }

    fn err(&self, reason: impl ToString) -> PttError {
        PttError::Rigctld {
            addr: self.addr.clone(),
            reason: reason.to_string(),
        }
    }

    fn conn(&mut self) -> Result<&mut Conn, PttError> {
        if self.conn.is_none() {
            let addrs = self
                .addr
                .to_socket_addrs()
                .map_err(|e| self.err(format!("cannot resolve: {e}")))?;
            let mut last = self.err("address resolves to nothing");
            let mut stream = None;
            for a in addrs {
                match TcpStream::connect_timeout(&a, self.timeout) {
                    Ok(s) => {
                        stream = Some(s);
                        break;
                    }
                    Err(e) => last = self.err(format!("cannot connect: {e}")),
                }
            }
            let s = stream.ok_or(last)?;
            let io = |e: std::io::Error| self.err(e);
            s.set_read_timeout(Some(self.timeout)).map_err(io)?;
            s.set_write_timeout(Some(self.timeout)).map_err(io)?;
            // PTT commands are a few bytes each: send them now, not batched.
            s.set_nodelay(true).map_err(io)?;
            let reader = BufReader::new(s.try_clone().map_err(io)?);
            self.conn = Some(Conn { reader, writer: s });
        }
        let addr = self.addr.clone();
        self.conn.as_mut().ok_or(PttError::Rigctld {
            addr,
            reason: "no connection".to_owned(),
        })
    }

    /// One command, one answer line. Any I/O error drops the connection so
    /// the next call starts clean (no stale answer can be read as ours).
    fn command(&mut self, cmd: &'static str) -> Result<String, PttError> {
        let result = self.exchange(cmd);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn exchange(&mut self, cmd: &'static str) -> Result<String, PttError> {
        let conn = self.conn()?;
        let io = conn
            .writer
            .write_all(format!("{cmd}\n").as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|()| {
                let mut line = String::new();
                match conn.reader.read_line(&mut line) {
                    Ok(0) => Err("connection closed".to_owned()),
                    Ok(_) => Ok(line.trim().to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            });
        io.map_err(|reason| self.err(format!("{cmd:?}: {reason}")))
    }

    fn set_once(&mut self, keyed: bool) -> Result<(), PttError> {
        let cmd = if keyed { "T 1" } else { "T 0" };
        let answer = self.command(cmd)?;
        if answer == "RPRT 0" {
            Ok(())
        } else {
            // Unknown state after a refusal: reconnect before the next try.
            self.conn = None;
            Err(PttError::RigctldRefused {
                addr: self.addr.clone(),
                command: cmd,
                answer,
            })
        }
    }
}

impl Ptt for RigctldPtt {
    fn set_keyed(&mut self, keyed: bool) -> Result<(), PttError> {
        if keyed {
            return self.set_once(true);
        }
        let mut last = None;
        for attempt in 1..=self.unkey_attempts {
            match self.set_once(false) {
                Ok(()) => {
                    if attempt > 1 {
                        tracing::warn!(addr = %self.addr, attempt, "rigctld unkey succeeded after retry");
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(addr = %self.addr, attempt, error = %e, "rigctld UNKEY FAILED, retrying");
                    last = Some(e);
                    // Short pause so a restarting rigctld can accept again.
                    std::thread::sleep(Duration::from_millis(20 * u64::from(attempt)));
                }
            }
        }
        let last = last.unwrap_or_else(|| self.err("no attempt made"));
        tracing::error!(addr = %self.addr, error = %last, "rigctld UNKEY FAILED — the transmitter may still be keyed");
        Err(PttError::UnkeyFailed {
            attempts: self.unkey_attempts,
            last: Box::new(last),
        })
    }

    fn is_keyed(&mut self) -> Result<bool, PttError> {
        let answer = self.command("t")?;
        match answer.as_str() {
            "0" => Ok(false),
            // Some rigs report PTT modes (2 = mic, 3 = data) as non-zero.
            "1" | "2" | "3" => Ok(true),
            _ => {
                self.conn = None;
                Err(PttError::RigctldRefused {
                    addr: self.addr.clone(),
                    command: "t",
                    answer,
                })
            }
        }
    }

    fn describe(&self) -> String {
        format!("rigctld {}", self.addr)
    }
}

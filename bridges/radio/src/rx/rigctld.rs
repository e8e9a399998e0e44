//! COS from hamlib's rigctld: the rig's squelch status over TCP.

use super::{Debouncer, Squelch, SquelchError};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// How long one `\get_dcd` round trip may take. rigctld answers from the
/// rig's CAT port, typically within 10–50 ms; beyond this the rig is stuck
/// and "no signal" is the safe reading.
pub const RIGCTLD_TIMEOUT: Duration = Duration::from_millis(500);

/// Squelch status from rigctld's `get_dcd` command (command code 0x8b, which
/// has no printable short form, so it is sent in long form as `\get_dcd`).
/// rigctld answers `1` (squelch open) or `0`, or `RPRT <negative errno>`.
///
/// Blocking I/O: poll it from its own thread (or `spawn_blocking`).
/// A failed connection is reopened on the next poll.
pub struct RigctldSquelch {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
    debounce: Debouncer,
}

impl std::fmt::Debug for RigctldSquelch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RigctldSquelch")
            .field("addr", &self.addr)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl RigctldSquelch {
    /// Polls rigctld at `addr` (`host:port`); a change counts after `debounce`.
    pub fn new(addr: impl Into<String>, debounce: Duration) -> Self {
        Self {
            addr: addr.into(),
            conn: None,
            debounce: Debouncer::new(debounce),
        }
    }

    fn err(&self, message: impl Into<String>) -> SquelchError {
        SquelchError::Rigctld {
            addr: self.addr.clone(),
            message: message.into(),
        }
    }

    fn connect(&self) -> Result<BufReader<TcpStream>, SquelchError> {
        let addrs = self
            .addr
            .to_socket_addrs()
            .map_err(|e| self.err(format!("cannot resolve: {e}")))?;
        let mut last = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, RIGCTLD_TIMEOUT) {
                Ok(s) => {
                    s.set_read_timeout(Some(RIGCTLD_TIMEOUT))
                        .and_then(|()| s.set_write_timeout(Some(RIGCTLD_TIMEOUT)))
                        .and_then(|()| s.set_nodelay(true))
                        .map_err(|e| self.err(e.to_string()))?;
                    return Ok(BufReader::new(s));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(self.err(match last {
            Some(e) => format!("cannot connect: {e}"),
            None => "no address".into(),
        }))
    }

    /// One raw `\get_dcd` query: whether the rig's squelch is open.
    pub fn query(&mut self) -> Result<bool, SquelchError> {
        let result = self.query_inner();
        if result.is_err() {
            // The stream may hold half an answer; start clean next time.
            self.conn = None;
        }
        result
    }

    fn query_inner(&mut self) -> Result<bool, SquelchError> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let addr = self.addr.clone();
        let err = |message: String| SquelchError::Rigctld {
            addr: addr.clone(),
            message,
        };
        let Some(conn) = self.conn.as_mut() else {
            return Err(err("not connected".into()));
        };
        conn.get_mut()
            .write_all(b"\\get_dcd\n")
            .map_err(|e| err(format!("sending get_dcd: {e}")))?;
        let mut line = String::new();
        let n = conn
            .read_line(&mut line)
            .map_err(|e| err(format!("reading get_dcd answer: {e}")))?;
        if n == 0 {
            return Err(err("connection closed".into()));
        }
        parse_dcd(line.trim()).map_err(err)
    }
}

/// Parses rigctld's answer to `\get_dcd`.
pub fn parse_dcd(answer: &str) -> Result<bool, String> {
    match answer {
        "0" => Ok(false),
        "1" => Ok(true),
        a if a.starts_with("RPRT") => Err(format!(
            "get_dcd refused: {a} (does this rig model report squelch status?)"
        )),
        a => Err(format!("unexpected get_dcd answer {a:?}")),
    }
}

impl Squelch for RigctldSquelch {
    fn poll(&mut self, now: Instant) -> Result<bool, SquelchError> {
        let raw = self.query()?;
        Ok(self.debounce.update(raw, now))
    }

    fn reset(&mut self) {
        self.debounce.reset();
    }
}

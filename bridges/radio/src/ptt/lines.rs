use std::str::FromStr;

use super::Ptt;
use crate::PttError;

/// The two modem output lines of a serial port, as PTT hardware sees them.
///
/// Implemented by the real port ([`super::SerialPortLines`]) and by
/// [`super::FakeModemLines`] for tests (ptys answer ENOTTY to these ioctls).
/// `true` means asserted (TIOCM_RTS / TIOCM_DTR set).
pub trait ModemLines: Send {
    fn set_rts(&mut self, level: bool) -> Result<(), PttError>;
    fn set_dtr(&mut self, level: bool) -> Result<(), PttError>;
    /// Read the output lines back (TIOCMGET), if the hardware can.
    fn levels(&mut self) -> Result<Option<LineLevels>, PttError> {
        Ok(None)
    }
    fn describe(&self) -> String {
        "serial".to_owned()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineLevels {
    pub rts: bool,
    pub dtr: bool,
}

/// Which line(s) key the radio: config `ptt = "rts" | "dtr" | "rts+dtr"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PttLines {
    Rts,
    Dtr,
    RtsDtr,
}

impl PttLines {
    fn rts(self) -> bool {
        matches!(self, Self::Rts | Self::RtsDtr)
    }
    fn dtr(self) -> bool {
        matches!(self, Self::Dtr | Self::RtsDtr)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rts => "rts",
            Self::Dtr => "dtr",
            Self::RtsDtr => "rts+dtr",
        }
    }
}

impl FromStr for PttLines {
    type Err = PttError;
    fn from_str(s: &str) -> Result<Self, PttError> {
        match s {
            "rts" => Ok(Self::Rts),
            "dtr" => Ok(Self::Dtr),
            "rts+dtr" | "dtr+rts" => Ok(Self::RtsDtr),
            _ => Err(PttError::Config {
                value: s.to_owned(),
                reason: "expected rts, dtr or rts+dtr",
            }),
        }
    }
}

/// PTT on RTS and/or DTR, optionally active-low (`ptt_invert`).
///
/// Both lines — the unused one too — sit at the unkeyed level whenever the
/// radio is not keyed, so a miswired interface cannot key it by accident.
pub struct SerialLinePtt<L: ModemLines> {
    lines: L,
    which: PttLines,
    invert: bool,
    keyed: bool,
}

impl<L: ModemLines> SerialLinePtt<L> {
    /// Takes freshly opened lines and drives them to unkeyed at once: Linux
    /// raises DTR and RTS on open, which keys a radio wired active-high.
    pub fn new(lines: L, which: PttLines, invert: bool) -> Result<Self, PttError> {
        let mut ptt = Self {
            lines,
            which,
            invert,
            // Assume the worst until the unkey below has succeeded.
            keyed: true,
        };
        ptt.set_keyed(false)?;
        Ok(ptt)
    }

    pub fn lines(&self) -> &L {
        &self.lines
    }

    pub fn lines_mut(&mut self) -> &mut L {
        &mut self.lines
    }

    pub fn into_lines(self) -> L {
        self.lines
    }
}

impl<L: ModemLines> Ptt for SerialLinePtt<L> {
    fn set_keyed(&mut self, keyed: bool) -> Result<(), PttError> {
        let idle = self.invert; // the unkeyed level
        let active = keyed != self.invert;
        let rts = if self.which.rts() { active } else { idle };
        let dtr = if self.which.dtr() { active } else { idle };
        // When unkeying, try both lines even if the first fails: half an
        // unkey is better than none. Report the first error.
        let r = self.lines.set_rts(rts);
        let d = self.lines.set_dtr(dtr);
        r?;
        d?;
        self.keyed = keyed;
        Ok(())
    }

    fn is_keyed(&mut self) -> Result<bool, PttError> {
        match self.lines.levels()? {
            Some(l) => {
                let active = !self.invert;
                // Any PTT line at its active level counts as keyed: the
                // conservative reading for a safety check.
                Ok((self.which.rts() && l.rts == active) || (self.which.dtr() && l.dtr == active))
            }
            None => Ok(self.keyed),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} {}{}",
            self.lines.describe(),
            self.which.as_str(),
            if self.invert { " inverted" } else { "" }
        )
    }
}

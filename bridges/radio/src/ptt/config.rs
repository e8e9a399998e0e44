use super::{NoPtt, Ptt, PttLines, RigctldPtt, SerialLinePtt, SerialPortLines};
use crate::PttError;

/// How a radio is keyed: the `port` / `ptt` / `ptt_invert` / `rigctld` keys
/// of `[radio.NAME]` (DESIGN.md §5), already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PttConfig {
    Serial {
        port: String,
        lines: PttLines,
        invert: bool,
    },
    Rigctld {
        addr: String,
    },
    /// The radio keys on its own VOX.
    None,
}

impl PttConfig {
    /// From the config strings: `ptt` is `rts`, `dtr`, `rts+dtr`, `rigctld`
    /// or `none`.
    pub fn from_keys(
        ptt: &str,
        port: Option<&str>,
        invert: bool,
        rigctld: Option<&str>,
    ) -> Result<Self, PttError> {
        match ptt {
            "none" => Ok(Self::None),
            "rigctld" => Ok(Self::Rigctld {
                addr: rigctld
                    .ok_or(PttError::Config {
                        value: ptt.to_owned(),
                        reason: "ptt = \"rigctld\" needs rigctld = \"host:port\"",
                    })?
                    .to_owned(),
            }),
            other => Ok(Self::Serial {
                lines: other.parse()?,
                port: port
                    .ok_or(PttError::Config {
                        value: other.to_owned(),
                        reason: "a serial PTT needs port = \"/dev/...\"",
                    })?
                    .to_owned(),
                invert,
            }),
        }
    }
}

/// Opens the PTT a config names, already driven to unkeyed.
pub fn open_ptt(config: &PttConfig) -> Result<Box<dyn Ptt>, PttError> {
    Ok(match config {
        PttConfig::Serial {
            port,
            lines,
            invert,
        } => Box::new(open_serial(port, *lines, *invert)?),
        PttConfig::Rigctld { addr } => Box::new(RigctldPtt::connect(addr)?),
        PttConfig::None => Box::new(NoPtt::new()),
    })
}

/// A serial PTT and a second handle on its port, for reading status lines.
pub(crate) type SerialPttAndStatus = (Box<dyn Ptt>, Box<dyn serialport::SerialPort>);

/// Opens a serial PTT and hands back its port for status-line reading too.
pub(crate) fn open_serial_ptt(
    port: &str,
    lines: PttLines,
    invert: bool,
) -> Result<SerialPttAndStatus, PttError> {
    let ptt = open_serial(port, lines, invert)?;
    let status = ptt.lines().status_handle()?;
    Ok((Box::new(ptt), status))
}

fn open_serial(
    port: &str,
    lines: PttLines,
    invert: bool,
) -> Result<SerialLinePtt<SerialPortLines>, PttError> {
    let raw = SerialPortLines::open(port)?;
    // Unkey first (the kernel just raised both lines), HUPCL second.
    let mut ptt = SerialLinePtt::new(raw, lines, invert)?;
    // HUPCL so that a close — including our death by SIGKILL — leaves the
    // unkeyed level: dropped lines for active-high, held lines for inverted.
    ptt.lines_mut().set_hupcl(!invert)?;
    Ok(ptt)
}

/// What [`force_unkey`] did, for the `walkie-bridge unkey` command to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnkeyReport {
    pub ptt: String,
    /// Read back after the unkey: `Some(false)` = confirmed unkeyed;
    /// `None` = this PTT cannot be read back (`none`).
    pub read_back_keyed: Option<bool>,
    pub actions: Vec<String>,
}

/// Force a radio's PTT to unkeyed, for `walkie-bridge unkey --radio NAME`
/// (the unit's `ExecStopPost`, after a crash or SIGKILL): open the port or
/// connect to rigctld, unkey, read back, report.
pub fn force_unkey(config: &PttConfig) -> Result<UnkeyReport, PttError> {
    let mut actions = Vec::new();
    let (mut ptt, readable): (Box<dyn Ptt>, bool) = match config {
        PttConfig::Serial {
            port,
            lines,
            invert,
        } => {
            let p = open_serial(port, *lines, *invert)?;
            actions.push(format!(
                "opened {port}, drove {} to {} (unkeyed), HUPCL {}",
                lines.as_str(),
                if *invert { "high" } else { "low" },
                if *invert { "off" } else { "on" }
            ));
            (Box::new(p), true)
        }
        PttConfig::Rigctld { addr } => {
            let p = RigctldPtt::connect(addr)?;
            actions.push(format!("connected to rigctld at {addr}, sent T 0: RPRT 0"));
            (Box::new(p), true)
        }
        PttConfig::None => {
            actions.push("ptt = none: the radio keys on its own VOX; nothing to unkey".to_owned());
            (Box::new(NoPtt::new()), false)
        }
    };
    // Once more, explicitly: the open path already did it, but this command
    // exists for the case where everything else went wrong.
    ptt.set_keyed(false)?;
    let read_back_keyed = if readable {
        let k = ptt.is_keyed()?;
        actions.push(format!(
            "read back: {}",
            if k { "STILL KEYED" } else { "unkeyed" }
        ));
        Some(k)
    } else {
        None
    };
    if read_back_keyed == Some(true) {
        return Err(PttError::UnkeyFailed {
            attempts: 1,
            last: Box::new(PttError::Config {
                value: ptt.describe(),
                reason: "read back keyed after unkey",
            }),
        });
    }
    Ok(UnkeyReport {
        ptt: ptt.describe(),
        read_back_keyed,
        actions,
    })
}

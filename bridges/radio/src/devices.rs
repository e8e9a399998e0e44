//! What `walkie-bridge devices` lists: serial ports (with their stable
//! `/dev/serial/by-id` names) and sound cards (the ALSA names `audio_in` /
//! `audio_out` accept), so configuring a radio needs no guessing.

use std::fmt;
use std::path::{Path, PathBuf};

/// Everything found, plus what could not be looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceList {
    /// Serial ports, sorted by path.
    pub serial_ports: Vec<SerialPortInfo>,
    /// ALSA PCM devices as cpal sees them (the names `audio_in`/`audio_out` take).
    pub sound_devices: Vec<SoundDeviceInfo>,
    /// Sound cards from `/proc/asound/cards`.
    pub cards: Vec<AlsaCard>,
    /// Lookups that failed (shown, so an empty list is not mistaken for "nothing there").
    pub errors: Vec<String>,
}

/// One serial port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialPortInfo {
    /// Kernel device path, e.g. `/dev/ttyUSB0`.
    pub path: String,
    /// Stable `/dev/serial/by-id/…` links to it (recommended for `port`).
    pub by_id: Vec<String>,
    /// What kind of port: `USB 0403:6001 FT232R USB UART`, `PCI`, `builtin`…
    pub kind: String,
}

/// One ALSA PCM device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoundDeviceInfo {
    /// The name to configure, e.g. `plughw:CARD=Device,DEV=0`.
    pub name: String,
    /// ALSA's description, e.g. `USB Audio Device, USB Audio`.
    pub description: String,
    /// Usable for capture (`audio_in`), as far as ALSA's hints tell.
    pub input: bool,
    /// Usable for playback (`audio_out`).
    pub output: bool,
}

/// One line pair of `/proc/asound/cards`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlsaCard {
    /// Card number (`hw:N`).
    pub index: u32,
    /// Card id (`hw:CARD=ID`), stable across reboots unlike the number.
    pub id: String,
    /// Driver and short name, e.g. `USB-Audio - USB Audio Device`.
    pub name: String,
    /// Long name (vendor, bus position).
    pub long_name: String,
}

/// Lists the machine's serial ports and sound devices.
pub fn devices() -> DeviceList {
    devices_from(
        Path::new("/dev/serial/by-id"),
        Path::new("/proc/asound/cards"),
    )
}

/// [`devices`] with the by-id directory and the cards file given (for tests).
pub fn devices_from(by_id_dir: &Path, proc_cards: &Path) -> DeviceList {
    let mut list = DeviceList::default();
    let links = by_id_links(by_id_dir);
    match serialport::available_ports() {
        Ok(ports) => {
            for p in ports {
                let kind = match &p.port_type {
                    serialport::SerialPortType::UsbPort(u) => {
                        let mut k = format!("USB {:04x}:{:04x}", u.vid, u.pid);
                        for s in [&u.manufacturer, &u.product].into_iter().flatten() {
                            k.push(' ');
                            k.push_str(s);
                        }
                        k
                    }
                    serialport::SerialPortType::PciPort => "PCI".into(),
                    serialport::SerialPortType::BluetoothPort => "Bluetooth".into(),
                    serialport::SerialPortType::Unknown => "builtin".into(),
                };
                list.serial_ports.push(SerialPortInfo {
                    by_id: links_to(&links, Path::new(&p.port_name)),
                    path: p.port_name,
                    kind,
                });
            }
        }
        Err(e) => list.errors.push(format!("serial ports: {e}")),
    }
    // A by-id link whose target the port scan missed (it reads /sys, which
    // a container may hide) is still worth showing.
    for (link, target) in &links {
        let t = target.to_string_lossy().into_owned();
        if !list.serial_ports.iter().any(|p| p.path == t) {
            list.serial_ports.push(SerialPortInfo {
                path: t,
                by_id: vec![link.to_string_lossy().into_owned()],
                kind: "by-id link".into(),
            });
        }
    }
    list.serial_ports.sort_by(|a, b| a.path.cmp(&b.path));
    match sound_devices() {
        Ok(d) => list.sound_devices = d,
        Err(e) => list.errors.push(format!("sound devices: {e}")),
    }
    match std::fs::read_to_string(proc_cards) {
        Ok(text) => list.cards = parse_proc_asound_cards(&text),
        // No ALSA driver loaded (or no /proc/asound in a container): no cards.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => list.errors.push(format!("{}: {e}", proc_cards.display())),
    }
    list
}

/// `(link, resolved target)` for every entry of `dir`.
fn by_id_links(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new(); // no USB serial adapter plugged in: udev has not created the dir
    };
    let mut out: Vec<(PathBuf, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let link = e.path();
            let target = std::fs::canonicalize(&link).ok()?;
            Some((link, target))
        })
        .collect();
    out.sort();
    out
}

fn links_to(links: &[(PathBuf, PathBuf)], port: &Path) -> Vec<String> {
    let port = std::fs::canonicalize(port).unwrap_or_else(|_| port.to_path_buf());
    links
        .iter()
        .filter(|(_, t)| *t == port)
        .map(|(l, _)| l.to_string_lossy().into_owned())
        .collect()
}

fn sound_devices() -> Result<Vec<SoundDeviceInfo>, String> {
    use cpal::traits::{DeviceTrait, HostTrait};
    let host = cpal::host_from_id(cpal::HostId::Alsa).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for d in host.devices().map_err(|e| e.to_string())? {
        let name = d
            .id()
            .map(|id| id.id().to_owned())
            .unwrap_or_else(|_| d.to_string());
        // From ALSA's hints rather than by opening each device: opening is
        // slow, and fails for a device another program holds.
        let (description, input, output) = match d.description() {
            Ok(desc) => (
                desc.name().lines().collect::<Vec<_>>().join(" — "),
                desc.supports_input(),
                desc.supports_output(),
            ),
            Err(_) => (String::new(), true, true),
        };
        out.push(SoundDeviceInfo {
            name,
            description,
            input,
            output,
        });
    }
    Ok(out)
}

/// Parses `/proc/asound/cards`:
///
/// ```text
///  1 [Device         ]: USB-Audio - USB Audio Device
///                       C-Media Electronics Inc. USB Audio Device at usb-0000:00:14.0-1, full speed
/// ```
pub fn parse_proc_asound_cards(text: &str) -> Vec<AlsaCard> {
    let mut cards: Vec<AlsaCard> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let head = trimmed
            .split_once(' ')
            .and_then(|(n, rest)| Some((n.parse::<u32>().ok()?, rest.trim_start())));
        match head {
            Some((index, rest)) if rest.starts_with('[') => {
                let Some((id, after)) = rest[1..].split_once(']') else {
                    continue;
                };
                let name = after.trim_start_matches(':').trim().to_owned();
                cards.push(AlsaCard {
                    index,
                    id: id.trim().to_owned(),
                    name,
                    long_name: String::new(),
                });
            }
            _ => {
                if let Some(last) = cards.last_mut() {
                    if last.long_name.is_empty() && !trimmed.is_empty() {
                        last.long_name = trimmed.trim_end().to_owned();
                    }
                }
            }
        }
    }
    cards
}

impl fmt::Display for DeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Serial ports (radio `port`):")?;
        if self.serial_ports.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for p in &self.serial_ports {
            writeln!(f, "  {}  [{}]", p.path, p.kind)?;
            for l in &p.by_id {
                writeln!(f, "      {l}")?;
            }
        }
        writeln!(f, "Sound cards (/proc/asound/cards):")?;
        if self.cards.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for c in &self.cards {
            writeln!(f, "  hw:{} = hw:CARD={}  {}", c.index, c.id, c.name)?;
            if !c.long_name.is_empty() {
                writeln!(f, "      {}", c.long_name)?;
            }
        }
        writeln!(f, "ALSA devices (radio `audio_in` / `audio_out`):")?;
        for d in &self.sound_devices {
            let dir = match (d.input, d.output) {
                (true, true) => "in/out",
                (true, false) => "in",
                (false, true) => "out",
                (false, false) => "?",
            };
            writeln!(f, "  {:<40} {:<6} {}", d.name, dir, d.description)?;
        }
        for e in &self.errors {
            writeln!(f, "error: {e}")?;
        }
        Ok(())
    }
}

//! A real SvxLink node (Debian 12's `svxlink` 19.09.2, package `svxlink-server`) as a
//! third-party client of an [`crate::SvxReflector`]: a test makes it talk on the
//! reflector and captures what it hears.
//!
//! The node has no sound card. Its config (written into a temp dir) has two logics
//! linked by the LinkManager: a `SimplexLogic` (the "radio") and a `ReflectorLogic`
//! (protocol 1.0: no talk groups; a 24.02 reflector puts it on `TG_FOR_V1_CLIENTS`).
//! - The receiver (`[Rx1]`) reads **UDP audio**: `AUDIO_DEV=udp:127.0.0.1:RX_PORT`.
//!   svxlink binds that port and the harness sends to it. Its squelch is
//!   `SQL_DET=PTY`: svxlink links `PTY_PATH` to a pseudo-tty; the harness writes `O` to
//!   open the squelch and `Z` to close it. Only audio that arrives while the squelch is
//!   open goes to the reflector.
//! - The transmitter (`[Tx1]`) writes UDP audio to a socket the harness binds:
//!   `AUDIO_DEV=udp:127.0.0.1:TX_PORT`. Its PTT is `PTT_TYPE=PTY`: svxlink writes `T`
//!   when it keys up and `R` when it releases.
//!
//! Audio format in both directions: raw signed 16-bit samples in host byte order
//! (little-endian here), **mono** (`CARD_CHANNELS=1`), at **16 kHz**
//! (`CARD_SAMPLE_RATE=16000`, svxlink's internal rate, so svxlink resamples nothing
//! either). The harness converts nothing.
//!
//! Quiet by construction: no modules are loaded (no Help, Parrot or EchoLink), no DTMF
//! decoder, and the Tcl event handler is a one-liner that turns every event into a
//! no-op, so there are no announcements, roger beeps or identifications, and Debian's
//! missing sound files do not matter.
//!
//! Readiness: svxlink's own log (`--logfile`, the same file as its stdout and stderr)
//! shows `ReflectorLogic: Using audio codec "OPUS"` after the reflector's `MsgAuthOk`
//! and `MsgServerInfo`. svxlink sends its first UDP heartbeat in the same function,
//! before the line reaches the file, so the reflector learns the node's UDP port right
//! then. Start and login take 15–25 ms here.
//!
//! What a test sees of svxlink's audio path (measured, 2 s of speech):
//! - every receiver band-passes its audio, 300–5000 Hz, with a 12th-order Chebyshev
//!   filter (hard-coded in `LocalRxBase`): energy below 300 Hz is gone and the low end
//!   of the band is shifted in phase, so compare waveforms in 600–3000 Hz only (full
//!   band espeak speech keeps a correlation of about 0.5, band-limited about 0.9);
//! - the reflector link is Opus at 20 kb/s;
//! - the other node's transmitter starts 80–95 ms (19.09 reflector) or 80–175 ms
//!   (24.02) after the squelch opens, sends 512 samples per datagram, and keys down
//!   30–50 ms after the squelch closes; it plays the speech for as long as it was
//!   sent, plus up to one block of silence.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::ports::free_tcp_udp_port;
use crate::process::{log_tail, ChildGuard};
use crate::{Error, Result};

/// Bound on the wait for a node's login after a start.
pub const SVXLINK_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The node's card sample rate, both directions: 16 kHz mono, 16-bit samples.
pub const SVXLINK_SAMPLE_RATE: u32 = 16_000;
/// What [`SvxLinkNode::talk`] sends per 20 ms tick.
const CHUNK: usize = SVXLINK_SAMPLE_RATE as usize / 50;
/// svxlink's UDP audio device hands audio on in blocks of this many samples and
/// keeps a partial block until it is full (AudioIO's block size for
/// `CARD_SAMPLE_RATE=16000`, 32 ms). [`SvxLinkNode::talk`] pads with silence up to
/// a block boundary so that the end of what it sends is not held back.
const DEVICE_BLOCK: u64 = 512;
/// Bound on the wait for svxlink to log a squelch change.
const SQUELCH_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);
const TAIL_LINES: usize = 60;
const BINARY: &str = "/usr/bin/svxlink";
const HOST: &str = "127.0.0.1";
/// The line svxlink logs once it is logged in to the reflector.
const READY_LINE: &str = "ReflectorLogic: Using audio codec";
/// Lines that end a start-up at once: svxlink would go on running (and retry the
/// reflector every 20 s), but the node would not be what the test asked for.
const START_FAILURES: [&str; 3] = [
    "*** ERROR",
    "Error message received from server",
    "ReflectorLogic: Disconnected from",
];
const SQUELCH_OPEN_LINE: &str = "Rx1: The squelch is OPEN";
const SQUELCH_CLOSED_LINE: &str = "Rx1: The squelch is CLOSED";

/// The Tcl event handler: svxlink calls a procedure per event
/// (`SimplexLogic::startup`, `SimplexLogic::send_rgr_sound`, …). None is defined,
/// so each call lands in `unknown`, which does nothing.
const EVENT_HANDLER: &str = "# written by walkie-harness: every event is a no-op \
(no announcements, roger beeps or identification)\nproc unknown {args} { return \"\" }\n";

/// Configures and starts an [`SvxLinkNode`].
#[derive(Debug, Clone)]
pub struct SvxLinkNodeBuilder {
    reflector_host: String,
    reflector_port: u16,
    callsign: String,
    auth_key: String,
    extra: Vec<(String, String, String)>,
}

impl SvxLinkNodeBuilder {
    pub fn new(reflector_host: &str, reflector_port: u16) -> Self {
        Self {
            reflector_host: reflector_host.to_string(),
            reflector_port,
            callsign: "N0CALL".to_string(),
            auth_key: "walkie".to_string(),
            extra: Vec::new(),
        }
    }

    /// The node's callsign: its reflector login and the simplex logic's callsign.
    /// Log it in with the same call and key as `SvxReflectorBuilder::node`.
    pub fn callsign(mut self, callsign: &str) -> Self {
        self.callsign = callsign.to_string();
        self
    }

    /// The reflector key (`ReflectorLogic/AUTH_KEY`).
    pub fn auth_key(mut self, key: &str) -> Self {
        self.auth_key = key.to_string();
        self
    }

    /// Sets (or overrides) a config key: `section` is `GLOBAL`, `SimplexLogic`,
    /// `ReflectorLogic`, `ReflectorLink`, `Rx1` or `Tx1`. Written quoted.
    pub fn set(mut self, section: &str, key: &str, value: &str) -> Self {
        self.extra
            .push((section.to_string(), key.to_string(), value.to_string()));
        self
    }

    pub async fn start(self) -> Result<SvxLinkNode> {
        if !Path::new(BINARY).is_file() {
            return Err(Error::io(
                format!(
                    "{BINARY} is missing: run scripts/setup.sh (Debian package svxlink-server)"
                ),
                std::io::ErrorKind::NotFound.into(),
            ));
        }
        let temp = tempfile::Builder::new()
            .prefix("walkie-svxlink-")
            .tempdir()
            .map_err(|e| Error::io("creating the svxlink node's temp dir", e))?;
        let dir = temp.path().to_path_buf();
        let event_handler = dir.join("events.tcl");
        std::fs::write(&event_handler, EVENT_HANDLER)
            .map_err(|e| Error::io(format!("writing {}", event_handler.display()), e))?;
        // The transmitter's audio: bound here (any free port), so nothing can take it
        // between the config and svxlink's first transmission.
        let tx_audio = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| Error::io("binding the svxlink node's TX audio socket", e))?;
        let to_rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| Error::io("binding the svxlink node's RX audio socket", e))?;
        let (ptt_tx, ptt_rx) = watch::channel(PttState::default());
        let mut node = SvxLinkNode {
            config_path: dir.join("svxlink.conf"),
            log_path: dir.join("svxlink.log"),
            squelch_path: dir.join("squelch"),
            ptt_path: dir.join("ptt"),
            event_handler,
            dir,
            _temp: temp,
            callsign: self.callsign.clone(),
            rx_port: 0,
            tx_audio_port: tx_audio
                .local_addr()
                .map_err(|e| Error::io("the TX audio socket's address", e))?
                .port(),
            to_rx,
            receiver: tokio::sync::Mutex::new(None),
            capture: Arc::new(Mutex::new(Capture::default())),
            ptt: ptt_rx,
            io: None,
            child: Mutex::new(None),
            ready_after: Duration::ZERO,
        };
        // svxlink binds the receiver's port itself: a port that was free a moment ago
        // may be taken by then, so try again with another.
        let mut attempt = 0;
        loop {
            attempt += 1;
            node.rx_port = free_tcp_udp_port();
            node.write_config(&self)?;
            match node.launch().await {
                Ok(()) => break,
                // Only a lost port is worth another try; a refused login is final.
                Err(error) if attempt < 3 && error.to_string().contains("Could not bind") => {
                    eprintln!("walkie-harness: svxlink node did not start, retrying: {error}");
                }
                Err(error) => return Err(error),
            }
        }
        // The PTYs exist now (svxlink made them before it connected). Keep both slave
        // ends open from here on: svxlink drops PTT bytes while nobody has the PTY
        // open, and only polls a closed PTY every 100 ms.
        let squelch = open_pty(&node.squelch_path, false)
            .map_err(|e| node.error(format!("opening the squelch PTY: {e}")))?;
        let ptt = open_pty(&node.ptt_path, true)
            .map_err(|e| node.error(format!("opening the PTT PTY: {e}")))?;
        *node.receiver.get_mut() = Some(Receiver { squelch, fed: 0 });
        node.io = Some(NodeIo::start(
            &node.callsign,
            tx_audio,
            ptt,
            node.capture.clone(),
            ptt_tx,
        )?);
        Ok(node)
    }
}

/// What the node's transmitter has played since the node started or since
/// [`SvxLinkNode::start_capture`]: 16 kHz mono samples, as svxlink sent them.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    pub samples: Vec<i16>,
    /// UDP datagrams received (svxlink sends 512 samples each).
    pub datagrams: usize,
    pub first_at: Option<Instant>,
    pub last_at: Option<Instant>,
}

impl Capture {
    /// Length of the captured audio.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.samples.len() as f64 / f64::from(SVXLINK_SAMPLE_RATE))
    }
}

/// The node's transmitter key as its PTT PTY reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PttState {
    /// Keyed right now.
    pub on: bool,
    /// Times it keyed up since the node started.
    pub keyed: u64,
    /// Times it released since the node started.
    pub released: u64,
}

/// What [`SvxLinkNode::talk`] did.
#[derive(Debug, Clone, Copy)]
pub struct Talked {
    /// Samples sent: the PCM given plus the padding.
    pub samples: usize,
    /// Silence appended to complete svxlink's last 512-sample input block.
    pub padding: usize,
    /// From the squelch opening (as svxlink logged it) to its closing being sent.
    pub open_for: Duration,
    /// When the squelch was opened (the `O` was written).
    pub opened_at: Instant,
}

struct Receiver {
    squelch: File,
    /// Samples sent to the UDP device since the start: its block fill level is this
    /// modulo [`DEVICE_BLOCK`].
    fed: u64,
}

/// A running SvxLink node. Dropping it stops the process and deletes its temp dir;
/// when the thread is panicking the tail of its log is printed first.
pub struct SvxLinkNode {
    _temp: tempfile::TempDir,
    dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    squelch_path: PathBuf,
    ptt_path: PathBuf,
    event_handler: PathBuf,
    callsign: String,
    rx_port: u16,
    tx_audio_port: u16,
    /// Sends to the node's receiver.
    to_rx: UdpSocket,
    /// The squelch PTY; also serialises [`SvxLinkNode::talk`] calls.
    receiver: tokio::sync::Mutex<Option<Receiver>>,
    capture: Arc<Mutex<Capture>>,
    ptt: watch::Receiver<PttState>,
    io: Option<NodeIo>,
    child: Mutex<Option<ChildGuard>>,
    ready_after: Duration,
}

impl std::fmt::Debug for SvxLinkNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvxLinkNode")
            .field("callsign", &self.callsign)
            .field("dir", &self.dir)
            .field("rx_port", &self.rx_port)
            .field("tx_audio_port", &self.tx_audio_port)
            .field("ptt", &*self.ptt.borrow())
            .finish_non_exhaustive()
    }
}

impl SvxLinkNode {
    pub fn builder(reflector_host: &str, reflector_port: u16) -> SvxLinkNodeBuilder {
        SvxLinkNodeBuilder::new(reflector_host, reflector_port)
    }

    pub fn callsign(&self) -> &str {
        &self.callsign
    }

    /// The sample rate of everything [`SvxLinkNode::talk`] takes and
    /// [`SvxLinkNode::captured`] gives: [`SVXLINK_SAMPLE_RATE`].
    pub fn sample_rate(&self) -> u32 {
        SVXLINK_SAMPLE_RATE
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// svxlink's log: its `--logfile`, stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// From the process start to the login line of the start that succeeded.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    pub fn is_running(&self) -> bool {
        self.child
            .lock()
            .expect("child lock")
            .as_mut()
            .is_some_and(ChildGuard::is_running)
    }

    /// The transmitter's PTT right now.
    pub fn ptt(&self) -> PttState {
        *self.ptt.borrow()
    }

    /// Waits until the PTT state satisfies `done` (at most `timeout`).
    pub async fn wait_for_ptt(
        &self,
        what: &str,
        done: impl FnMut(&PttState) -> bool,
        timeout: Duration,
    ) -> Result<PttState> {
        let mut ptt = self.ptt.clone();
        let waited = tokio::time::timeout(timeout, ptt.wait_for(done))
            .await
            .map(|state| state.map(|state| *state));
        match waited {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(_)) => Err(self.error(format!("{what}: the PTT reader has stopped"))),
            Err(_) => Err(Error::Timeout {
                what: format!(
                    "{what} (svxlink node {}, PTT {:?})",
                    self.callsign,
                    self.ptt()
                ),
                after: timeout,
            }),
        }
    }

    /// Forgets what the transmitter played so far: [`SvxLinkNode::captured`] gives
    /// what it plays from now on. (Capturing runs from the node's start.)
    pub fn start_capture(&self) {
        *self.capture.lock().expect("capture lock") = Capture::default();
    }

    /// What the transmitter played since the start or the last
    /// [`SvxLinkNode::start_capture`]. Complete up to the last PTT release: svxlink
    /// releases only after its audio device has sent everything, and the harness
    /// reads the audio socket before the PTT.
    pub fn captured(&self) -> Capture {
        self.capture.lock().expect("capture lock").clone()
    }

    /// Talks on the reflector: opens the receiver's squelch (and waits for svxlink to
    /// log it), streams `pcm` (16 kHz mono) into the receiver in real time, 20 ms per
    /// tick of a tokio interval, then closes the squelch one tick after the last
    /// chunk, when that chunk's 20 ms have played, and waits for svxlink to log it.
    ///
    /// svxlink takes UDP audio in 512-sample blocks and keeps a partial block until
    /// it fills, so the last chunk is padded with silence up to a block boundary.
    /// Audio before the squelch opens or after it closes would not be sent; the
    /// squelch logs make both edges events instead of guesses.
    pub async fn talk(&self, pcm: &[i16]) -> Result<Talked> {
        let mut guard = self.receiver.lock().await;
        let receiver = guard.as_mut().expect("the receiver is set up by start()");
        let opened_at = Instant::now();
        let from = self.log_len();
        receiver
            .squelch
            .write_all(b"O")
            .map_err(|e| Error::io("writing O to the squelch PTY", e))?;
        self.await_log(
            from,
            SQUELCH_OPEN_LINE,
            &[],
            "squelch open",
            SQUELCH_TIMEOUT,
        )
        .await?;
        let opened = Instant::now();

        let end = receiver.fed + pcm.len() as u64;
        let padding = ((DEVICE_BLOCK - end % DEVICE_BLOCK) % DEVICE_BLOCK) as usize;
        let mut samples = Vec::with_capacity(pcm.len() + padding);
        samples.extend_from_slice(pcm);
        samples.resize(pcm.len() + padding, 0);
        let target = (Ipv4Addr::LOCALHOST, self.rx_port);
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        let mut bytes = Vec::with_capacity(CHUNK * 2);
        for chunk in samples.chunks(CHUNK) {
            ticks.tick().await;
            bytes.clear();
            bytes.extend(chunk.iter().flat_map(|s| s.to_ne_bytes()));
            self.to_rx
                .send_to(&bytes, target)
                .map_err(|e| Error::io("sending audio to the svxlink receiver", e))?;
            receiver.fed += chunk.len() as u64;
        }
        ticks.tick().await;

        let open_for = opened.elapsed();
        let from = self.log_len();
        receiver
            .squelch
            .write_all(b"Z")
            .map_err(|e| Error::io("writing Z to the squelch PTY", e))?;
        self.await_log(
            from,
            SQUELCH_CLOSED_LINE,
            &[],
            "squelch closed",
            SQUELCH_TIMEOUT,
        )
        .await?;
        Ok(Talked {
            samples: samples.len(),
            padding,
            open_for,
            opened_at,
        })
    }

    /// SIGTERM, wait (SIGKILL after 10 s).
    pub async fn stop(&mut self) -> Result<()> {
        let child = self.child.lock().expect("child lock").take();
        if let Some(mut child) = child {
            child
                .stop(STOP_GRACE)
                .await
                .map_err(|e| Error::io("stopping svxlink", e))?;
        }
        Ok(())
    }

    fn error(&self, message: impl Into<String>) -> Error {
        // The harness has no error variant of its own for svxlink: the reflector's
        // (same family, same shape) carries the node's log.
        Error::SvxReflector {
            message: format!("svxlink node {}: {}", self.callsign, message.into()),
            log_tail: format!(
                "--- {} ---\n{}",
                self.log_path.display(),
                self.log_tail(TAIL_LINES)
            ),
        }
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log_path).map_or(0, |m| m.len())
    }

    /// The log from byte `from` on (lossy UTF-8; empty if unreadable).
    fn log_since(&self, from: u64) -> String {
        let read = || -> std::io::Result<String> {
            let mut file = File::open(&self.log_path)?;
            file.seek(SeekFrom::Start(from))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        read().unwrap_or_default()
    }

    /// Waits until a line written after byte `from` contains `wanted`; fails at once
    /// on a line that contains one of `failures` or when svxlink exits.
    async fn await_log(
        &self,
        from: u64,
        wanted: &str,
        failures: &[&str],
        what: &str,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_since(from);
            for line in text.lines() {
                if line.contains(wanted) {
                    return Ok(());
                }
                if failures.iter().any(|failure| line.contains(failure)) {
                    return Err(self.error(format!("{what}: svxlink logged \"{line}\"")));
                }
            }
            let exited = {
                let mut child = self.child.lock().expect("child lock");
                match child.as_mut() {
                    None => Some("svxlink is not running".to_string()),
                    Some(child) => child
                        .try_wait()
                        .map_err(|e| Error::io("waiting for svxlink", e))?
                        .map(|status| format!("svxlink exited ({status})")),
                }
            };
            if let Some(exited) = exited {
                return Err(self.error(format!("{what}: {exited}")));
            }
            if Instant::now() > deadline {
                return Err(self.error(format!(
                    "{what}: svxlink did not log \"{wanted}\" within {timeout:?}"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn write_config(&self, builder: &SvxLinkNodeBuilder) -> Result<()> {
        let mut sections: Vec<(String, Vec<(String, String)>)> = vec![
            (
                "GLOBAL".to_string(),
                vec![
                    kv("LOGICS", "SimplexLogic,ReflectorLogic"),
                    kv("LINKS", "ReflectorLink"),
                    kv("TIMESTAMP_FORMAT", "%H:%M:%S.%f"),
                    kv("CARD_SAMPLE_RATE", &SVXLINK_SAMPLE_RATE.to_string()),
                    kv("CARD_CHANNELS", "1"),
                ],
            ),
            (
                // The "radio". No MODULES key: no modules.
                "SimplexLogic".to_string(),
                vec![
                    kv("TYPE", "Simplex"),
                    kv("RX", "Rx1"),
                    kv("TX", "Tx1"),
                    kv("CALLSIGN", &builder.callsign),
                    kv("EVENT_HANDLER", &self.event_handler.to_string_lossy()),
                ],
            ),
            (
                "ReflectorLogic".to_string(),
                vec![
                    kv("TYPE", "Reflector"),
                    kv("HOST", &builder.reflector_host),
                    kv("PORT", &builder.reflector_port.to_string()),
                    kv("CALLSIGN", &builder.callsign),
                    kv("AUTH_KEY", &builder.auth_key),
                ],
            ),
            (
                // Always connected: what the radio receives goes to the reflector,
                // what the reflector sends is transmitted.
                "ReflectorLink".to_string(),
                vec![
                    kv("CONNECT_LOGICS", "SimplexLogic,ReflectorLogic"),
                    kv("DEFAULT_ACTIVE", "1"),
                ],
            ),
            (
                "Rx1".to_string(),
                vec![
                    kv("TYPE", "Local"),
                    kv("AUDIO_DEV", &format!("udp:{HOST}:{}", self.rx_port)),
                    kv("AUDIO_CHANNEL", "0"),
                    // The UDP socket stays bound while the receiver is muted (during
                    // a transmission): no datagram is refused, the block count holds.
                    kv("AUDIO_DEV_KEEP_OPEN", "1"),
                    kv("SQL_DET", "PTY"),
                    kv("PTY_PATH", &self.squelch_path.to_string_lossy()),
                    kv("SQL_HANGTIME", "0"),
                    kv("DTMF_DEC_TYPE", "NONE"),
                ],
            ),
            (
                "Tx1".to_string(),
                vec![
                    kv("TYPE", "Local"),
                    kv("AUDIO_DEV", &format!("udp:{HOST}:{}", self.tx_audio_port)),
                    kv("AUDIO_CHANNEL", "0"),
                    kv("PTT_TYPE", "PTY"),
                    kv("PTT_PTY", &self.ptt_path.to_string_lossy()),
                    kv("TX_DELAY", "0"),
                ],
            ),
        ];
        for (section, key, value) in &builder.extra {
            let index = match sections.iter().position(|(name, _)| name == section) {
                Some(index) => index,
                None => {
                    sections.push((section.clone(), Vec::new()));
                    sections.len() - 1
                }
            };
            let entries = &mut sections[index].1;
            entries.retain(|(k, _)| k != key);
            entries.push(kv(key, value));
        }
        let mut text =
            String::from("# written by walkie-harness: an SvxLink node with no sound card\n");
        for (section, entries) in &sections {
            text.push_str(&format!("\n[{section}]\n"));
            for (key, value) in entries {
                text.push_str(&format!("{key}={}\n", quote(value)));
            }
        }
        std::fs::write(&self.config_path, text)
            .map_err(|e| Error::io(format!("writing {}", self.config_path.display()), e))
    }

    async fn launch(&mut self) -> Result<()> {
        if let Some(mut old) = self.child.get_mut().expect("child lock").take() {
            let _ = old.kill();
        }
        // A killed svxlink leaves its PTY links behind, and it will not replace them.
        for link in [&self.squelch_path, &self.ptt_path] {
            match std::fs::remove_file(link) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("removing {}", link.display()), e)),
            }
        }
        let from = self.log_len();
        let mut command = Command::new(BINARY);
        command
            .arg(format!("--config={}", self.config_path.display()))
            // The same file as the guard's: svxlink appends, with timestamps, and its
            // log is line-buffered only when it writes to a log file.
            .arg(format!("--logfile={}", self.log_path.display()))
            .current_dir(&self.dir);
        let started = Instant::now();
        let child = ChildGuard::spawn(
            format!("svxlink {}", self.callsign),
            command,
            &self.log_path,
        )
        .map_err(|e| Error::io(format!("starting {BINARY}"), e))?;
        *self.child.get_mut().expect("child lock") = Some(child);
        let ready = self
            .await_log(
                from,
                READY_LINE,
                &START_FAILURES,
                "logging in to the reflector",
                SVXLINK_READY_TIMEOUT,
            )
            .await;
        if let Err(error) = ready {
            if let Some(mut child) = self.child.get_mut().expect("child lock").take() {
                child.set_print_log_on_panic(false);
                let _ = child.kill();
            }
            return Err(error);
        }
        self.ready_after = started.elapsed();
        Ok(())
    }
}

impl Drop for SvxLinkNode {
    fn drop(&mut self) {
        if let Some(io) = self.io.take() {
            io.stop();
        }
        // The guard prints the log tail when the thread is panicking.
        if let Ok(child) = self.child.get_mut() {
            if let Some(mut child) = child.take() {
                let _ = child.stop_blocking(crate::process::DROP_GRACE);
            }
        }
    }
}

fn kv(key: &str, value: &str) -> (String, String) {
    (key.to_string(), value.to_string())
}

/// A config value in svxlink's quoting (`AsyncConfig`: `\\`, `\"`, `\n` escapes).
fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// Opens the slave end of one of svxlink's PTYs (svxlink set it to raw mode).
fn open_pty(path: &Path, nonblocking: bool) -> std::io::Result<File> {
    let mut flags = libc::O_NOCTTY;
    if nonblocking {
        flags |= libc::O_NONBLOCK;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(path)
}

/// The thread that reads the transmitter: its audio socket and its PTT PTY, in one
/// `poll` loop that always drains the socket before it reads the PTY. svxlink sends
/// the last audio before it writes `R`, so a release is seen after that audio.
struct NodeIo {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl NodeIo {
    fn start(
        callsign: &str,
        audio: UdpSocket,
        ptt_pty: File,
        capture: Arc<Mutex<Capture>>,
        ptt: watch::Sender<PttState>,
    ) -> Result<NodeIo> {
        audio
            .set_nonblocking(true)
            .map_err(|e| Error::io("making the TX audio socket non-blocking", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("svxlink-{callsign}-tx"))
            .spawn(move || read_transmitter(audio, ptt_pty, capture, ptt, stopping))
            .map_err(|e| Error::io("starting the svxlink TX reader thread", e))?;
        Ok(NodeIo { stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

fn read_transmitter(
    audio: UdpSocket,
    mut ptt_pty: File,
    capture: Arc<Mutex<Capture>>,
    ptt: watch::Sender<PttState>,
    stop: Arc<AtomicBool>,
) {
    let mut fds = [
        libc::pollfd {
            fd: audio.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: ptt_pty.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let mut datagram = vec![0u8; 65_536];
    let mut bytes = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `fds` is a valid array of two pollfd for the call's duration.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        loop {
            match audio.recv(&mut datagram) {
                Ok(len) => {
                    let now = Instant::now();
                    let mut capture = capture.lock().expect("capture lock");
                    capture.samples.extend(
                        datagram[..len - len % 2]
                            .chunks_exact(2)
                            .map(|b| i16::from_ne_bytes([b[0], b[1]])),
                    );
                    capture.datagrams += 1;
                    capture.first_at.get_or_insert(now);
                    capture.last_at = Some(now);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let pty = fds[1].revents;
        if pty & libc::POLLIN != 0 {
            match ptt_pty.read(&mut bytes) {
                Ok(len) => {
                    for &byte in &bytes[..len] {
                        ptt.send_modify(|state| match byte {
                            b'T' if !state.on => {
                                state.on = true;
                                state.keyed += 1;
                            }
                            b'R' if state.on => {
                                state.on = false;
                                state.released += 1;
                            }
                            _ => {}
                        });
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // svxlink is gone (EIO on a hung-up PTY): stop watching it.
                Err(_) => fds[1].fd = -1,
            }
        } else if pty & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            fds[1].fd = -1;
        }
    }
}

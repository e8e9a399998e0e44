//! A real SvxReflector (SvxLink's reflector server) on 127.0.0.1, one per test, in
//! a temp dir: Debian 12's 19.09 (protocol 2) or Debian 13's 24.02 (protocol 3),
//! the latter by `chroot` in the trixie root `scripts/setup.sh` makes, like
//! mumble-server 1.5 (see [`crate::trixie_root`]).
//!
//! The reflector listens on one port for TCP (control) and UDP (audio). It logs
//! no "listening" line, so the harness waits until the TCP port accepts.

use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::ports::free_tcp_udp_port;
use crate::process::{log_tail, ChildGuard};
use crate::{trixie_root, Error, Result};

/// Bound on the wait for the reflector's port after a start.
pub const SVXREFLECTOR_READY_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_GRACE: Duration = Duration::from_secs(10);
const TAIL_LINES: usize = 60;
const HOST: &str = "127.0.0.1";
const BINARY: &str = "/usr/bin/svxreflector";

/// Which SvxReflector a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SvxReflectorVersion {
    /// Debian 12's 19.09.2 on this machine.
    V19_09,
    /// Debian 13's 24.02 in the trixie root.
    V24_02,
}

impl SvxReflectorVersion {
    pub const ALL: [SvxReflectorVersion; 2] =
        [SvxReflectorVersion::V19_09, SvxReflectorVersion::V24_02];

    /// "svxreflector 19.09" / "svxreflector 24.02".
    pub fn label(self) -> &'static str {
        match self {
            SvxReflectorVersion::V19_09 => "svxreflector 19.09",
            SvxReflectorVersion::V24_02 => "svxreflector 24.02",
        }
    }

    /// What the binary calls itself in its banner ("SvxReflector v1.0.2").
    pub fn banner(self) -> &'static str {
        match self {
            SvxReflectorVersion::V19_09 => "SvxReflector v1.0.2",
            SvxReflectorVersion::V24_02 => "SvxReflector v1.2.0@24.02",
        }
    }
}

/// Configures and starts an [`SvxReflector`].
#[derive(Debug, Clone)]
pub struct SvxReflectorBuilder {
    version: SvxReflectorVersion,
    /// (callsign, group, key): the nodes allowed to log in.
    nodes: Vec<(String, String, String)>,
    extra_global: Vec<(String, String)>,
}

impl SvxReflectorBuilder {
    pub fn new(version: SvxReflectorVersion) -> Self {
        Self {
            version,
            nodes: Vec::new(),
            extra_global: Vec::new(),
        }
    }

    /// Lets node `callsign` log in with `key` (its `[USERS]` group and
    /// `[PASSWORDS]` entry, a group of its own).
    pub fn node(mut self, callsign: &str, key: &str) -> Self {
        self.nodes.push((
            callsign.to_string(),
            format!("{callsign}-group"),
            key.to_string(),
        ));
        self
    }

    /// Sets a key of the `[GLOBAL]` section (written as given).
    pub fn global(mut self, key: &str, value: &str) -> Self {
        self.extra_global.push((key.to_string(), value.to_string()));
        self
    }

    pub async fn start(self) -> Result<SvxReflector> {
        let jail = match self.version {
            SvxReflectorVersion::V19_09 => None,
            SvxReflectorVersion::V24_02 => Some(trixie_root()),
        };
        let parent = match &jail {
            Some(root) => root.join("tmp"),
            None => std::env::temp_dir(),
        };
        let temp = tempfile::Builder::new()
            .prefix("walkie-svxreflector-")
            .tempdir_in(&parent)
            .map_err(|e| Error::io("creating the reflector's temp dir", e))?;
        let dir = temp.path().to_path_buf();
        let mut reflector = SvxReflector {
            _temp: temp,
            config_path: dir.join("svxreflector.conf"),
            log_path: dir.join("svxreflector.log"),
            dir,
            jail,
            version: self.version,
            port: 0,
            child: None,
        };
        // The free port may be taken before the reflector binds it: try again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            reflector.port = free_tcp_udp_port();
            reflector.write_config(&self)?;
            match reflector.launch().await {
                Ok(()) => return Ok(reflector),
                Err(error) if attempt < 3 => {
                    eprintln!("walkie-harness: svxreflector did not start, retrying: {error}");
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// A running (or stopped) SvxReflector. Dropping it stops the process and deletes
/// its temp dir; when the thread is panicking the tail of its log is printed first.
#[derive(Debug)]
pub struct SvxReflector {
    _temp: tempfile::TempDir,
    dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    jail: Option<PathBuf>,
    version: SvxReflectorVersion,
    port: u16,
    child: Option<ChildGuard>,
}

impl SvxReflector {
    pub fn builder(version: SvxReflectorVersion) -> SvxReflectorBuilder {
        SvxReflectorBuilder::new(version)
    }

    pub fn version(&self) -> SvxReflectorVersion {
        self.version
    }

    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP (control) and UDP (audio) port: the same number.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("{HOST}:{}", self.port)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// Waits until the reflector's log has a line containing `needle` (a node
    /// selected its talkgroup: "SM0ABC: Select TG #91"). The reflector tells
    /// nobody else, so its log is read every 20 ms until `timeout`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        self.wait_for_log_since(0, needle, timeout).await
    }

    /// Where the log ends now, for [`Self::wait_for_log_since`]: the log is
    /// appended to across restarts.
    pub fn log_mark(&self) -> usize {
        std::fs::read(&self.log_path).map_or(0, |log| log.len())
    }

    /// [`Self::wait_for_log`], counting only what was logged after `mark`.
    pub async fn wait_for_log_since(
        &self,
        mark: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = std::fs::read(&self.log_path).unwrap_or_default();
            let since = log.get(mark..).unwrap_or_default();
            if String::from_utf8_lossy(since).contains(needle) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.error(format!("no {needle:?} in the log within {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, wait (SIGKILL after 10 s).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            child
                .stop(STOP_GRACE)
                .await
                .map_err(|e| Error::io("stopping svxreflector", e))?;
        }
        self.child = None;
        Ok(())
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .map_err(|e| Error::io("killing svxreflector", e))?;
        }
        Ok(())
    }

    /// Starts it again with the same config and port.
    pub async fn start_again(&mut self) -> Result<()> {
        self.stop().await?;
        self.launch().await
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::SvxReflector {
            message: message.into(),
            log_tail: format!(
                "--- {} ---\n{}",
                self.log_path.display(),
                self.log_tail(TAIL_LINES)
            ),
        }
    }

    /// `path` as the reflector sees it (inside its root for 24.02).
    fn seen_by_reflector(&self, path: &Path) -> PathBuf {
        match &self.jail {
            Some(root) => path
                .strip_prefix(root)
                .map_or_else(|_| path.to_path_buf(), |inner| Path::new("/").join(inner)),
            None => path.to_path_buf(),
        }
    }

    fn write_config(&self, builder: &SvxReflectorBuilder) -> Result<()> {
        let mut text = String::from("# written by walkie-harness\n[GLOBAL]\n");
        text.push_str(&format!("LISTEN_PORT={}\n", self.port));
        text.push_str("TIMESTAMP_FORMAT=\"%H:%M:%S\"\n");
        for (key, value) in &builder.extra_global {
            text.push_str(&format!("{key}={value}\n"));
        }
        text.push_str("\n[USERS]\n");
        for (callsign, group, _) in &builder.nodes {
            text.push_str(&format!("{callsign}={group}\n"));
        }
        text.push_str("\n[PASSWORDS]\n");
        for (_, group, key) in &builder.nodes {
            text.push_str(&format!("{group}=\"{key}\"\n"));
        }
        std::fs::write(&self.config_path, text)
            .map_err(|e| Error::io(format!("writing {}", self.config_path.display()), e))
    }

    async fn launch(&mut self) -> Result<()> {
        let config = format!(
            "--config={}",
            self.seen_by_reflector(&self.config_path).display()
        );
        let mut command = match &self.jail {
            None => Command::new(BINARY),
            Some(root) => {
                let mut command = Command::new("chroot");
                command.arg(root).arg(BINARY);
                command
            }
        };
        command.arg(config).current_dir(&self.dir);
        let mut child = ChildGuard::spawn("svxreflector", command, &self.log_path)
            .map_err(|e| Error::io(format!("starting {BINARY}"), e))?;
        child.set_print_log_on_panic(false);
        self.child = Some(child);
        let started = Instant::now();
        loop {
            let exited = self
                .child
                .as_mut()
                .expect("launched")
                .try_wait()
                .map_err(|e| Error::io("waiting for svxreflector", e))?;
            if let Some(status) = exited {
                self.child = None;
                return Err(self.error(format!("svxreflector exited during start-up ({status})")));
            }
            if TcpStream::connect_timeout(
                &(Ipv4Addr::LOCALHOST, self.port).into(),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return Ok(());
            }
            if started.elapsed() > SVXREFLECTOR_READY_TIMEOUT {
                if let Some(mut child) = self.child.take() {
                    let _ = child.kill();
                }
                return Err(self.error(format!(
                    "svxreflector did not listen on {HOST}:{} within {SVXREFLECTOR_READY_TIMEOUT:?}",
                    self.port
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SvxReflector {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- walkie-harness: svxreflector at {} (dir {}) ---\n{}",
                self.address(),
                self.dir.display(),
                self.log_tail(TAIL_LINES)
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.stop_blocking(crate::process::DROP_GRACE);
        }
    }
}

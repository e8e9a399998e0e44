//! A real Mumble server on 127.0.0.1, one per test, in a temp dir: Debian 12's
//! murmurd 1.3.4, or Debian 13's mumble-server 1.5 (see [`MumbleServer`]), which
//! runs by `chroot` in the trixie root `scripts/setup.sh` makes (its libraries are
//! newer than this machine's), with its temp dir inside that root.
//!
//! murmurd 1.3 has no config key for channels. The harness creates them in its
//! SQLite database before the first start: `murmurd -ini FILE -supw PASSWORD` creates
//! the schema and virtual server 1 (and sets the SuperUser password) without booting
//! the server, the channels are inserted as rows of `channels`, and only then does the
//! real `murmurd -fg` start. Channels therefore exist before the first client
//! connects, no client needs permissions, and nothing races a running server.

use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::ports::free_tcp_udp_port;
use crate::process::{log_tail, ChildGuard};
use crate::service_user::ServiceUser;
use crate::{random_string, workspace_root, Error, Result};

/// Mumble's Speak permission bit (`ChanACL::Speak`), for
/// [`MurmurBuilder::deny_everyone`].
pub const PERMISSION_SPEAK: u32 = 0x8;

/// Bound on the wait for murmurd's port after a start.
pub const MURMUR_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Grace period between SIGTERM and SIGKILL in [`Murmur::stop`].
pub const MURMUR_STOP_GRACE: Duration = Duration::from_secs(10);
/// The user Debian's murmurd switches to when started as root.
pub const MURMUR_SYSTEM_USER: &str = "mumble-server";
const TAIL_LINES: usize = 60;
const HOST: &str = "127.0.0.1";

/// Which Mumble server a test runs against. The protocol differs: 1.5 carries voice
/// in protobuf messages (MumbleUDP) to clients that announce 1.5, 1.3 in the legacy
/// binary format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MumbleServer {
    /// Debian 12's `murmurd` 1.3.4 on this machine.
    Murmur1_3,
    /// Debian 13's `mumble-server` 1.5 in the trixie root ([`trixie_root`]).
    Mumble1_5,
}

impl MumbleServer {
    /// Both, oldest first: what every Mumble test runs against.
    pub const ALL: [MumbleServer; 2] = [MumbleServer::Murmur1_3, MumbleServer::Mumble1_5];

    /// The version the server announces (major, minor).
    pub fn version(self) -> (u32, u32) {
        match self {
            MumbleServer::Murmur1_3 => (1, 3),
            MumbleServer::Mumble1_5 => (1, 5),
        }
    }

    /// "murmurd 1.3" / "mumble-server 1.5", for messages and bench labels.
    pub fn label(self) -> &'static str {
        match self {
            MumbleServer::Murmur1_3 => "murmurd 1.3",
            MumbleServer::Mumble1_5 => "mumble-server 1.5",
        }
    }
}

/// The Debian 13 root that holds mumble-server 1.5: `$WALKIE_TRIXIE_ROOT`, else
/// `<workspace root>/.trixie-root` (both made by `scripts/setup.sh`).
///
/// # Panics
/// When it has no mumble-server: tests never skip, they tell how to fix it.
pub fn trixie_root() -> PathBuf {
    let root = std::env::var_os("WALKIE_TRIXIE_ROOT")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".trixie-root"));
    assert!(
        root.join(MUMBLE_1_5_BINARY.trim_start_matches('/'))
            .is_file(),
        "no mumble-server 1.5 in the Debian 13 root {} ({MUMBLE_1_5_BINARY}): run \
         scripts/setup.sh, or point WALKIE_TRIXIE_ROOT at a root that has it",
        root.display()
    );
    root
}

/// mumble-server's path inside the trixie root.
const MUMBLE_1_5_BINARY: &str = "/usr/bin/mumble-server";

/// The murmurd binary: `$WALKIE_MURMURD`, else `murmurd` on `PATH`, else
/// `/usr/sbin/murmurd` (Debian's `mumble-server`; `/usr/sbin` is often not on a
/// non-root `PATH`).
///
/// # Panics
/// When there is none: tests never skip, they tell how to fix it.
pub fn murmurd_path() -> PathBuf {
    if let Some(path) = std::env::var_os("WALKIE_MURMURD").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "WALKIE_MURMURD={} does not exist",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("murmurd"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_default();
    on_path
        .or_else(|| Some(PathBuf::from("/usr/sbin/murmurd")).filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "murmurd not found (neither on PATH nor /usr/sbin/murmurd). Run \
                 scripts/setup.sh (Debian package mumble-server) or set WALKIE_MURMURD."
            )
        })
}

/// The Python interpreter with `pymumble` installed, used for the Mumble test clients
/// and to write murmurd's channels: `$WALKIE_TEST_PYTHON`, else
/// `<workspace root>/.venv-test/bin/python`.
///
/// # Panics
/// When the interpreter does not exist.
pub fn test_python() -> PathBuf {
    let (python, origin) = match std::env::var_os("WALKIE_TEST_PYTHON") {
        Some(python) if !python.is_empty() => (PathBuf::from(python), "WALKIE_TEST_PYTHON"),
        _ => (
            workspace_root().join(".venv-test/bin/python"),
            "the default location",
        ),
    };
    if !python.exists() {
        panic!(
            "the test clients' Python interpreter {} ({origin}) does not exist. \
             Run scripts/setup.sh to create .venv-test with pymumble, \
             or point WALKIE_TEST_PYTHON at a python that has it.",
            python.display()
        );
    }
    python
}

/// Configures and starts a [`Murmur`].
#[derive(Debug, Clone)]
pub struct MurmurBuilder {
    server: MumbleServer,
    channels: Vec<String>,
    welcome: String,
    superuser_password: Option<String>,
    extra_config: Vec<(String, String)>,
    /// (user id, name, password) to register before the first start.
    registered: Vec<(u32, String, String)>,
    /// (channel path, permission bits) revoked from everyone there.
    denied: Vec<(String, u32)>,
}

impl Default for MurmurBuilder {
    fn default() -> Self {
        MurmurBuilder::new()
    }
}

impl MurmurBuilder {
    /// No channels but Root, a short welcome text, a random SuperUser password.
    pub fn new() -> MurmurBuilder {
        MurmurBuilder {
            server: MumbleServer::Murmur1_3,
            channels: Vec::new(),
            welcome: "walkie-harness murmurd".to_string(),
            superuser_password: None,
            extra_config: Vec::new(),
            registered: Vec::new(),
            denied: Vec::new(),
        }
    }

    /// Which server to run (default: murmurd 1.3).
    pub fn server(mut self, server: MumbleServer) -> MurmurBuilder {
        self.server = server;
        self
    }

    /// Registers a user on the server before it starts, as an administrator would:
    /// they log in with `password` and get user id `id` (SuperUser is 0). An
    /// unregistered client can then no longer take that name.
    pub fn registered_user(
        mut self,
        id: u32,
        name: impl Into<String>,
        password: impl Into<String>,
    ) -> MurmurBuilder {
        self.registered.push((id, name.into(), password.into()));
        self
    }

    /// Revokes `permissions` (e.g. [`PERMISSION_SPEAK`]) from everyone (`@all`)
    /// in `channel` (a path given to [`MurmurBuilder::channels`]) and its
    /// subchannels, as an administrator's ACL would.
    pub fn deny_everyone(mut self, channel: &str, permissions: u32) -> MurmurBuilder {
        self.denied.push((channel.to_string(), permissions));
        self
    }

    /// Channels to create, as paths below Root: `["Ops", "Ops/Sub"]`. Missing parents
    /// are created too; a leading `Root/` is accepted and ignored. Adds to earlier
    /// calls.
    pub fn channels(mut self, paths: &[&str]) -> MurmurBuilder {
        self.channels.extend(paths.iter().map(|p| p.to_string()));
        self
    }

    /// The welcome text (`welcometext`, HTML allowed) murmurd sends on connect.
    pub fn welcome(mut self, text: impl Into<String>) -> MurmurBuilder {
        self.welcome = text.into();
        self
    }

    /// The SuperUser's password (default: random, see [`Murmur::superuser_password`]).
    pub fn superuser_password(mut self, password: impl Into<String>) -> MurmurBuilder {
        self.superuser_password = Some(password.into());
        self
    }

    /// Sets a key of `murmur.ini`, overriding the harness's value (e.g.
    /// `("username", "[ -~]+")` to allow spaces in user names). The value is written
    /// as it is, so quote it where murmurd's (QSettings) ini syntax needs it.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> MurmurBuilder {
        self.extra_config.push((key.into(), value.into()));
        self
    }

    /// Creates the temp dir, the database (with channels and SuperUser password) and
    /// the config, starts murmurd on a free port and waits until it listens.
    ///
    /// # Panics
    /// When murmurd or the test Python is not installed (see [`murmurd_path`],
    /// [`test_python`]).
    pub async fn start(self) -> Result<Murmur> {
        let (murmurd, jail) = match self.server {
            MumbleServer::Murmur1_3 => (murmurd_path(), None),
            MumbleServer::Mumble1_5 => (PathBuf::from(MUMBLE_1_5_BINARY), Some(trixie_root())),
        };
        let python = test_python();
        let channels = channel_rows(&self.channels)?;
        // A chrooted server sees only its root: its files live in the root's /tmp.
        let temp_parent = match &jail {
            Some(root) => root.join("tmp"),
            None => std::env::temp_dir(),
        };
        let temp = tempfile::Builder::new()
            .prefix("walkie-murmur-")
            .tempdir_in(&temp_parent)
            .map_err(|e| Error::io("creating murmurd's temp dir", e))?;
        let (temp, dir) =
            if std::env::var_os("WALKIE_KEEP_TEST_DIRS").is_some_and(|v| !v.is_empty()) {
                (None, temp.keep())
            } else {
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            };
        let mut murmur = Murmur {
            _temp: temp,
            murmurd,
            ini_path: dir.join("murmur.ini"),
            log_path: dir.join("murmurd.log"),
            db_path: dir.join("murmur.sqlite"),
            dir,
            port: 0,
            superuser_password: self
                .superuser_password
                .clone()
                .unwrap_or_else(|| random_string(20)),
            channels: channels.iter().map(|c| c.path.clone()).collect(),
            run_as: match &jail {
                None => ServiceUser::for_daemon(MURMUR_SYSTEM_USER, "mumble-server"),
                Some(root) => ServiceUser::for_daemon_in(root, MURMUR_SYSTEM_USER, "mumble-server"),
            }
            .map_err(|message| Error::Murmur {
                message,
                log_tail: String::new(),
            })?,
            server: self.server,
            jail,
            child: None,
            started_in: Duration::ZERO,
        };
        murmur.chown(&murmur.dir)?;
        murmur.port = free_tcp_udp_port();
        murmur.write_config(&self)?;
        murmur.set_superuser_password().await?;
        murmur.insert_channels(&python, &channels).await?;
        murmur.insert_users(&python, &self.registered).await?;
        murmur
            .insert_denials(&python, &channels, &self.denied)
            .await?;
        // The free port may be taken between finding it and murmurd binding it: try
        // again with a new one when that is why the start failed.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match murmur.launch().await {
                Ok(()) => return Ok(murmur),
                Err(LaunchError::PortTaken(error)) if attempt < 3 => {
                    eprintln!("walkie-harness: murmurd port was taken, retrying: {error}");
                    murmur.port = free_tcp_udp_port();
                    murmur.write_config(&self)?;
                }
                Err(LaunchError::PortTaken(error) | LaunchError::Other(error)) => {
                    return Err(error)
                }
            }
        }
    }
}

/// A running (or stopped) murmurd. Dropping it stops the process and deletes its temp
/// dir (kept when `WALKIE_KEEP_TEST_DIRS` is set); when the thread is panicking the
/// tail of murmurd's log is printed first.
#[derive(Debug)]
pub struct Murmur {
    _temp: Option<tempfile::TempDir>,
    dir: PathBuf,
    murmurd: PathBuf,
    ini_path: PathBuf,
    log_path: PathBuf,
    db_path: PathBuf,
    port: u16,
    superuser_password: String,
    channels: Vec<String>,
    /// (uid, gid) murmurd switches to when started as root.
    run_as: Option<ServiceUser>,
    server: MumbleServer,
    /// The root a chrooted server runs in (1.5); `None` for the host's murmurd.
    jail: Option<PathBuf>,
    child: Option<ChildGuard>,
    started_in: Duration,
}

impl Murmur {
    /// Shorthand for `MurmurBuilder::new()`.
    pub fn builder() -> MurmurBuilder {
        MurmurBuilder::new()
    }

    /// Which server this is.
    pub fn server(&self) -> MumbleServer {
        self.server
    }

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP (control) and UDP (voice) port: the same number.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, the form of the bridge's `server` key.
    pub fn address(&self) -> String {
        format!("{HOST}:{}", self.port)
    }

    /// `mumble://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mumble://{HOST}:{}", self.port)
    }

    /// The password of the `SuperUser` account.
    pub fn superuser_password(&self) -> &str {
        &self.superuser_password
    }

    /// The channel paths created below Root, parents first (`["Ops", "Ops/Sub"]`).
    pub fn channels(&self) -> &[String] {
        &self.channels
    }

    /// The temp dir holding config, database and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ini_path(&self) -> &Path {
        &self.ini_path
    }

    /// murmurd's SQLite database (channels, users, the server certificate).
    pub fn database_path(&self) -> &Path {
        &self.db_path
    }

    /// murmurd's output (with `-fg` it logs to stdout; every start appends).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of murmurd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// How long the last (re)start took until the port accepted connections.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// Whether the murmurd process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// Stops murmurd: SIGTERM, wait for it to exit (SIGKILL after 10 s).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            child
                .stop(MURMUR_STOP_GRACE)
                .await
                .map_err(|e| Error::io("stopping murmurd", e))?;
        }
        self.child = None;
        Ok(())
    }

    /// SIGKILLs murmurd (a crash: no clean shutdown).
    pub fn kill(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            child.kill().map_err(|e| Error::io("killing murmurd", e))?;
        }
        self.child = None;
        Ok(())
    }

    /// Starts murmurd again with the same config, port and data (stopping it first if
    /// it still runs) and waits until it listens.
    pub async fn start_again(&mut self) -> Result<()> {
        self.stop().await?;
        match self.launch().await {
            Ok(()) => Ok(()),
            Err(LaunchError::PortTaken(error) | LaunchError::Other(error)) => Err(error),
        }
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::Murmur {
            message: message.into(),
            log_tail: format!(
                "--- {} ---\n{}",
                self.log_path.display(),
                self.log_tail(TAIL_LINES)
            ),
        }
    }

    async fn launch(&mut self) -> Result<(), LaunchError> {
        // The log is appended to on every start: only read what this start writes.
        let log_offset = std::fs::metadata(&self.log_path).map_or(0, |m| m.len());
        let mut command = self.command();
        command
            .arg("-fg")
            .arg("-ini")
            .arg(self.seen_by_server(&self.ini_path))
            .current_dir(&self.dir);
        let started = Instant::now();
        let mut child = ChildGuard::spawn("murmurd", command, &self.log_path).map_err(|e| {
            LaunchError::Other(Error::io(format!("starting {}", self.murmurd.display()), e))
        })?;
        // Murmur's drop prints the log.
        child.set_print_log_on_panic(false);
        self.child = Some(child);
        let result = self.wait_ready(log_offset).await;
        match result {
            Ok(()) => self.started_in = started.elapsed(),
            Err(_) => {
                if let Some(mut child) = self.child.take() {
                    let _ = child.kill();
                }
            }
        }
        result
    }

    /// Ready when murmurd logged that virtual server 1 listens on our port, its UDP
    /// socket is bound, and the TCP port accepts a connection. murmurd does not exit
    /// when the port is taken: it logs the failure and runs on with the server
    /// stopped, so the log is read to fail fast.
    async fn wait_ready(&mut self, log_offset: u64) -> Result<(), LaunchError> {
        let started = Instant::now();
        let listening = format!("Server listening on {HOST}:{}", self.port);
        loop {
            let child = self.child.as_mut().expect("launched");
            let exited = child
                .try_wait()
                .map_err(|e| LaunchError::Other(Error::io("waiting for murmurd", e)))?;
            if let Some(status) = exited {
                return Err(LaunchError::Other(
                    self.error(format!("murmurd exited during start-up ({status})")),
                ));
            }
            let log = read_from(&self.log_path, log_offset);
            if log.contains("TCP Listen on") && log.contains("failed")
                || log.contains("Failed to bind UDP Socket")
            {
                return Err(LaunchError::PortTaken(self.error(format!(
                    "murmurd could not bind {HOST}:{} (TCP or UDP)",
                    self.port
                ))));
            }
            if log.contains(&listening)
                && TcpStream::connect_timeout(
                    &(Ipv4Addr::LOCALHOST, self.port).into(),
                    Duration::from_millis(500),
                )
                .is_ok()
            {
                return Ok(());
            }
            if started.elapsed() > MURMUR_READY_TIMEOUT {
                return Err(LaunchError::Other(self.error(format!(
                    "murmurd did not listen on {HOST}:{} within {MURMUR_READY_TIMEOUT:?}",
                    self.port
                ))));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `murmurd -ini FILE -supw PASSWORD`: creates the database (schema, server 1)
    /// when missing, sets the password and exits without booting the server.
    async fn set_superuser_password(&self) -> Result<()> {
        let output = tokio::process::Command::from(self.command())
            .arg("-ini")
            .arg(self.seen_by_server(&self.ini_path))
            .arg("-supw")
            .arg(&self.superuser_password)
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| Error::io(format!("running {} -supw", self.murmurd.display()), e))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        append(
            &self.log_path,
            &format!("=== walkie-harness: murmurd -supw ===\n{text}"),
        )?;
        if !output.status.success() || !text.contains("Superuser password set") {
            return Err(self.error(format!(
                "murmurd -supw failed ({}); is {} writable by murmurd's user?",
                output.status,
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Registers users in the database murmurd created. The password is stored as
    /// murmurd's legacy unsalted SHA-1, which it accepts (and upgrades on first login).
    async fn insert_users(&self, python: &Path, users: &[(u32, String, String)]) -> Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        let rows = serde_json::to_string(users).expect("rows serialise");
        self.run_db_script(python, INSERT_USERS, rows, "registering users in")
            .await
    }

    /// Registers `name` as user `id` by certificate, as an administrator does by
    /// right-clicking a connected user and choosing Register: the server then
    /// admits that name only with the certificate whose SHA-1 is `cert_hash`.
    /// Written into the database, so the server must be stopped (start it again
    /// after).
    pub async fn register_by_certificate(
        &self,
        id: u32,
        name: &str,
        cert_hash: &str,
    ) -> Result<()> {
        if self.child.is_some() {
            return Err(self.error("register_by_certificate needs the server stopped"));
        }
        let rows = serde_json::to_string(&[(id, name, cert_hash)]).expect("rows serialise");
        self.run_db_script(
            &test_python(),
            REGISTER_BY_CERTIFICATE,
            rows,
            &format!("registering {name} in"),
        )
        .await
    }

    /// Runs `script` (Python's sqlite3: the harness has no SQLite of its own, the
    /// test Python is needed anyway) on the server's database with `rows` (JSON)
    /// as its argument, and gives the database back to the server's user.
    async fn run_db_script(
        &self,
        python: &Path,
        script: &str,
        rows: String,
        what: &str,
    ) -> Result<()> {
        let output = tokio::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(&self.db_path)
            .arg(rows)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| Error::io(format!("running {}", python.display()), e))?;
        if !output.status.success() {
            return Err(self.error(format!(
                "{what} {} failed ({}): {}",
                self.db_path.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        // Files Python (root) created or rewrote must stay the server's.
        self.chown(&self.db_path)
    }

    /// Writes the ACL rows of [`MurmurBuilder::deny_everyone`].
    async fn insert_denials(
        &self,
        python: &Path,
        channels: &[ChannelRow],
        denied: &[(String, u32)],
    ) -> Result<()> {
        if denied.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::new();
        for (path, permissions) in denied {
            let trimmed = path.trim_matches('/');
            let trimmed = trimmed.strip_prefix("Root/").unwrap_or(trimmed);
            let channel = channels
                .iter()
                .find(|c| c.path == trimmed)
                .ok_or_else(|| self.error(format!("deny_everyone: no channel {path:?}")))?;
            rows.push((channel.id, *permissions));
        }
        self.run_db_script(
            python,
            INSERT_DENIALS,
            serde_json::to_string(&rows).expect("rows serialise"),
            "writing ACLs into",
        )
        .await
    }

    /// Inserts the channels into the database murmurd created (Python's sqlite3: the
    /// harness has no SQLite of its own, the test Python is needed anyway).
    async fn insert_channels(&self, python: &Path, channels: &[ChannelRow]) -> Result<()> {
        if channels.is_empty() {
            return Ok(());
        }
        let rows = serde_json::to_string(
            &channels
                .iter()
                .map(|c| (c.id, c.parent, c.name.as_str()))
                .collect::<Vec<_>>(),
        )
        .expect("rows serialise");
        self.run_db_script(python, INSERT_CHANNELS, rows, "writing channels into")
            .await
    }

    /// The server's command line so far: the binary, inside `chroot` for 1.5.
    fn command(&self) -> Command {
        match &self.jail {
            None => Command::new(&self.murmurd),
            Some(root) => {
                let mut command = Command::new("chroot");
                command.arg(root).arg(&self.murmurd);
                command
            }
        }
    }

    /// Every client version the server logged ("Client version 1.5.0 (linux :
    /// walkie-bridge 0.1.0)"), as (version, the rest), oldest first. A 1.5 server
    /// speaks protobuf voice to a client that announced 1.5.0 or newer and the
    /// legacy format to older ones, translating between them: which a client gets
    /// is decided by this announcement.
    pub fn client_versions(&self) -> Vec<(String, String)> {
        read_from(&self.log_path, 0)
            .lines()
            .filter_map(|line| {
                let after = line.split_once("Client version ")?.1;
                let (version, rest) = after.split_once(' ').unwrap_or((after, ""));
                Some((version.to_string(), rest.trim().to_string()))
            })
            .collect()
    }

    /// The version the server binary reports (`--version`), e.g. "1.3.4" or
    /// "1.5.735": proof of which server a test really ran against.
    pub async fn binary_version(&self) -> Result<String> {
        let output = tokio::process::Command::from(self.command())
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| Error::io(format!("running {} --version", self.murmurd.display()), e))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // 1.3: "… /usr/sbin/murmurd -- 1.3.4-4"; 1.5: "Mumble server version 1.5.735".
        text.lines()
            .rev()
            .find_map(|line| {
                let after = line
                    .rsplit_once(" -- ")
                    .map(|(_, v)| v)
                    .or_else(|| line.strip_prefix("Mumble server version "))?;
                let version = after.trim().split('-').next()?;
                version.starts_with("1.").then(|| version.to_string())
            })
            .ok_or_else(|| self.error(format!("no version in `--version` output: {text}")))
    }

    /// `path` (on this machine) as the server sees it: inside its root for 1.5.
    fn seen_by_server(&self, path: &Path) -> PathBuf {
        match &self.jail {
            Some(root) => match path.strip_prefix(root) {
                Ok(inner) => Path::new("/").join(inner),
                Err(_) => path.to_path_buf(),
            },
            None => path.to_path_buf(),
        }
    }

    fn write_config(&self, builder: &MurmurBuilder) -> Result<()> {
        let path = |p: &Path| quote(&self.seen_by_server(p).display().to_string());
        let mut lines = vec![
            ("database".to_string(), path(&self.db_path)),
            // With -fg murmurd logs to stdout, which the harness appends to this
            // same file; the key only matters if someone runs it detached.
            ("logfile".to_string(), path(&self.log_path)),
            ("pidfile".to_string(), path(&self.dir.join("murmurd.pid"))),
            ("ice".to_string(), "\"\"".to_string()),
            ("dbus".to_string(), String::new()),
            ("bonjour".to_string(), "false".to_string()),
            ("host".to_string(), HOST.to_string()),
            ("port".to_string(), self.port.to_string()),
            ("serverpassword".to_string(), String::new()),
            ("bandwidth".to_string(), "72000".to_string()),
            ("users".to_string(), "100".to_string()),
            ("welcometext".to_string(), quote(&builder.welcome)),
            // Reconnect tests must not get their address banned.
            ("autobanAttempts".to_string(), "0".to_string()),
            // Opus for everyone, whatever the clients announce.
            ("opusthreshold".to_string(), "0".to_string()),
            // Skips the ~1 s PBKDF2 benchmark of a first start; test passwords
            // need no strength.
            ("kdfiterations".to_string(), "1000".to_string()),
            // The default text-message rate limit (burst 5, 1/s) would drop test
            // messages sent in a burst.
            ("messageburst".to_string(), "100".to_string()),
            ("messagelimit".to_string(), "100".to_string()),
            ("allowping".to_string(), "true".to_string()),
            ("certrequired".to_string(), "false".to_string()),
        ];
        if self.run_as.is_some() {
            lines.push(("uname".to_string(), MURMUR_SYSTEM_USER.to_string()));
        }
        for (key, value) in &builder.extra_config {
            match lines.iter_mut().find(|(k, _)| k == key) {
                Some(line) => line.1 = value.clone(),
                None => lines.push((key.clone(), value.clone())),
            }
        }
        let mut text = String::from("; written by walkie-harness\n");
        for (key, value) in lines {
            text.push_str(&format!("{key}={value}\n"));
        }
        std::fs::write(&self.ini_path, text)
            .map_err(|e| Error::io(format!("writing {}", self.ini_path.display()), e))?;
        self.chown(&self.ini_path)
    }

    /// Gives `path` to the user murmurd runs as (a no-op unless we are root).
    fn chown(&self, path: &Path) -> Result<()> {
        match self.run_as {
            Some(user) => user.chown(path),
            None => Ok(()),
        }
    }
}

impl Drop for Murmur {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- walkie-harness: murmurd at {} (dir {}) ---\n{}",
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

enum LaunchError {
    /// The port was taken: a first start may retry with another.
    PortTaken(Error),
    Other(Error),
}

const INSERT_CHANNELS: &str = r#"
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
with db:
    servers = [row[0] for row in db.execute("SELECT server_id FROM servers")]
    if servers != [1]:
        sys.exit("expected virtual server 1 in murmurd's database, found %r" % servers)
    for channel_id, parent_id, name in json.loads(sys.argv[2]):
        db.execute(
            "INSERT INTO channels (server_id, channel_id, parent_id, name, inheritacl)"
            " VALUES (1, ?, ?, ?, 1)",
            (channel_id, parent_id, name),
        )
db.close()
"#;

const INSERT_USERS: &str = r#"
import hashlib, json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
with db:
    for user_id, name, password in json.loads(sys.argv[2]):
        db.execute(
            "INSERT INTO users (server_id, user_id, name, pw) VALUES (1, ?, ?, ?)",
            (user_id, name, hashlib.sha1(password.encode()).hexdigest()),
        )
db.close()
"#;

/// One ACL entry per row: `@all`, here and in subchannels, nothing granted,
/// the given permissions revoked.
const INSERT_DENIALS: &str = r#"
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
with db:
    for priority, (channel_id, revoke) in enumerate(json.loads(sys.argv[2])):
        db.execute(
            "INSERT INTO acl (server_id, channel_id, priority, user_id, group_name,"
            " apply_here, apply_sub, grantpriv, revokepriv)"
            " VALUES (1, ?, ?, NULL, 'all', 1, 1, 0, ?)",
            (channel_id, priority + 1, revoke),
        )
db.close()
"#;

/// A registered user with no password and a certificate hash: `user_info` key 3
/// is the hash (murmur's `ServerDB::User_Hash`), for 1.3 and 1.5 alike.
const REGISTER_BY_CERTIFICATE: &str = r#"
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
with db:
    for user_id, name, cert_hash in json.loads(sys.argv[2]):
        db.execute(
            "INSERT INTO users (server_id, user_id, name) VALUES (1, ?, ?)",
            (user_id, name),
        )
        db.execute(
            "INSERT INTO user_info (server_id, user_id, key, value) VALUES (1, ?, 3, ?)",
            (user_id, cert_hash),
        )
db.close()
"#;

#[derive(Debug, Clone, PartialEq, Eq)]
struct ChannelRow {
    id: u32,
    parent: u32,
    name: String,
    path: String,
}

/// Channel rows for `paths` (ids from 1; Root is 0 and created by murmurd), parents
/// before children, each path once.
fn channel_rows(paths: &[String]) -> Result<Vec<ChannelRow>> {
    let mut rows: Vec<ChannelRow> = Vec::new();
    for path in paths {
        let trimmed = path.trim_matches('/');
        let trimmed = trimmed.strip_prefix("Root/").unwrap_or(trimmed);
        let mut parent = 0;
        let mut so_far = String::new();
        for name in trimmed.split('/') {
            if name.is_empty() || name == "Root" && so_far.is_empty() {
                return Err(Error::Murmur {
                    message: format!("bad channel path {path:?}"),
                    log_tail: String::new(),
                });
            }
            if !so_far.is_empty() {
                so_far.push('/');
            }
            so_far.push_str(name);
            parent = match rows.iter().find(|row| row.path == so_far) {
                Some(row) => row.id,
                None => {
                    let id = rows.len() as u32 + 1;
                    rows.push(ChannelRow {
                        id,
                        parent,
                        name: name.to_string(),
                        path: so_far.clone(),
                    });
                    id
                }
            };
        }
    }
    Ok(rows)
}

/// QSettings ini value in double quotes.
fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

fn read_from(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_end(&mut text);
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(paths: &[&str]) -> Vec<String> {
        paths.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn channel_rows_create_parents_once() {
        let rows = channel_rows(&paths(&["Ops", "Ops/Sub", "Root/Lobby/Deep", "Ops"])).unwrap();
        let summary: Vec<_> = rows
            .iter()
            .map(|r| (r.id, r.parent, r.name.as_str(), r.path.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (1, 0, "Ops", "Ops"),
                (2, 1, "Sub", "Ops/Sub"),
                (3, 0, "Lobby", "Lobby"),
                (4, 3, "Deep", "Lobby/Deep"),
            ]
        );
        assert!(channel_rows(&paths(&["Ops//Sub"])).is_err());
        assert!(channel_rows(&paths(&[""])).is_err());
    }

    #[test]
    fn quote_escapes_for_qsettings() {
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
    }
}

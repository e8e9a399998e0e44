//! A real MQTT broker (Debian's mosquitto 2.0.11) on 127.0.0.1, one per test, in a
//! temp dir; and third-party test clients (`mosquitto_sub` / `mosquitto_pub` from
//! Debian's mosquitto-clients) to publish to and subscribe on it.
//!
//! mosquitto started as root switches to the `mosquitto` user (its `user` option,
//! default `mosquitto`). The harness keeps that behaviour, as it does for murmurd, and
//! gives the temp dir and every file in it to that user, so the broker can write its
//! persistence database there. It writes no `pid_file` (a root-owned folder would make
//! it fail) and logs to stderr, which is unbuffered (stdout is block-buffered when it
//! is a file, so readiness lines would arrive late).

use std::collections::VecDeque;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::ports::free_port;
use crate::process::{log_tail, ChildGuard};
use crate::service_user::ServiceUser;
use crate::{random_string, Error, Result};

/// Bound on the wait for mosquitto's ports after a start.
pub const MOSQUITTO_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Grace period between SIGTERM and SIGKILL in [`Mosquitto::stop`].
pub const MOSQUITTO_STOP_GRACE: Duration = Duration::from_secs(10);
/// The user Debian's mosquitto switches to when started as root.
pub const MOSQUITTO_SYSTEM_USER: &str = "mosquitto";
/// Bound on a test client's connect and subscribe ([`MqttSubscriber::start`]) and on
/// one `mosquitto_pub` run ([`mqtt_publish`]).
pub const MQTT_CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Topics under this prefix carry the subscribers' readiness probes; every
/// [`MqttSubscriber`] drops messages under it.
pub const PROBE_PREFIX: &str = "walkie-harness/probe/";
const TAIL_LINES: usize = 60;
const HOST: &str = "127.0.0.1";

/// `mosquitto_sub -F` format: retain flag, QoS, payload length, hex payload, topic
/// (last, as the only field that may hold spaces). One line per message.
const SUB_FORMAT: &str = "%r %q %l %x %t";

fn find_binary(env: &str, name: &str, fallback: &str, package: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.exists(), "{env}={} does not exist", path.display());
        return path;
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_default();
    on_path
        .or_else(|| Some(PathBuf::from(fallback)).filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "{name} not found (neither on PATH nor {fallback}). Run scripts/setup.sh \
                 (Debian package {package}) or set {env}."
            )
        })
}

/// The broker binary: `$WALKIE_MOSQUITTO`, else `mosquitto` on `PATH`, else
/// `/usr/sbin/mosquitto` (Debian's `mosquitto`).
///
/// # Panics
/// When there is none: tests never skip, they tell how to fix it.
pub fn mosquitto_path() -> PathBuf {
    find_binary(
        "WALKIE_MOSQUITTO",
        "mosquitto",
        "/usr/sbin/mosquitto",
        "mosquitto",
    )
}

/// A client tool of Debian's `mosquitto-clients` (`mosquitto_pub`, `mosquitto_sub`)
/// or `mosquitto_passwd` (package `mosquitto`), looked up on `PATH`, then in
/// `/usr/bin`.
///
/// # Panics
/// When it is not installed.
pub fn mosquitto_tool(name: &str) -> PathBuf {
    let package = if name == "mosquitto_passwd" {
        "mosquitto"
    } else {
        "mosquitto-clients"
    };
    find_binary(
        &format!("WALKIE_{}", name.to_uppercase()),
        name,
        &format!("/usr/bin/{name}"),
        package,
    )
}

/// Configures and starts a [`Mosquitto`].
#[derive(Debug, Clone, Default)]
pub struct MosquittoBuilder {
    credentials: Option<(String, String)>,
    tls: bool,
    extra_config: Vec<String>,
}

impl MosquittoBuilder {
    /// Anonymous access, plain listener only.
    pub fn new() -> Self {
        MosquittoBuilder::default()
    }

    /// Requires this login: `allow_anonymous false` and a `password_file` made with
    /// `mosquitto_passwd -b -c`. The harness's test clients log in with it
    /// automatically (see [`MqttClientOptions`]).
    pub fn credentials(mut self, username: &str, password: &str) -> Self {
        self.credentials = Some((username.to_string(), password.to_string()));
        self
    }

    /// Also listens with TLS on a second free port, with a server certificate for
    /// `127.0.0.1` and `localhost` signed by a throwaway CA made with `openssl`
    /// ([`Mosquitto::ca_file`]).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Appends a line to `mosquitto.conf` (e.g. `"max_inflight_messages 1"`, or
    /// `"autosave_interval 1"` to keep retained messages across [`Mosquitto::kill`]).
    /// Lines go after the harness's global options and before the listeners.
    pub fn config(mut self, line: impl Into<String>) -> Self {
        self.extra_config.push(line.into());
        self
    }

    /// Creates the temp dir (config, certificates, password file), starts mosquitto
    /// on free ports and waits until every listener accepts connections.
    ///
    /// # Panics
    /// When mosquitto (or `openssl` for [`MosquittoBuilder::tls`]) is not installed.
    pub async fn start(self) -> Result<Mosquitto> {
        let mosquitto = mosquitto_path();
        let temp = tempfile::Builder::new()
            .prefix("walkie-mosquitto-")
            .tempdir()
            .map_err(|e| Error::io("creating mosquitto's temp dir", e))?;
        let (temp, dir) =
            if std::env::var_os("WALKIE_KEEP_TEST_DIRS").is_some_and(|v| !v.is_empty()) {
                (None, temp.keep())
            } else {
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            };
        let mut broker = Mosquitto {
            _temp: temp,
            mosquitto,
            conf_path: dir.join("mosquitto.conf"),
            log_path: dir.join("mosquitto.log"),
            password_file: dir.join("passwords"),
            data_dir: dir.join("data"),
            dir,
            port: 0,
            tls: None,
            credentials: self.credentials.clone(),
            extra_config: self.extra_config.clone(),
            run_as: ServiceUser::for_daemon(MOSQUITTO_SYSTEM_USER, "mosquitto").map_err(
                |message| Error::Mosquitto {
                    message,
                    log_tail: String::new(),
                },
            )?,
            child: None,
            started_in: Duration::ZERO,
        };
        std::fs::create_dir(&broker.data_dir)
            .map_err(|e| Error::io(format!("creating {}", broker.data_dir.display()), e))?;
        broker.chown(&broker.dir)?;
        broker.chown(&broker.data_dir)?;
        if let Some((user, password)) = &self.credentials {
            broker.write_password_file(user, password).await?;
        }
        if self.tls {
            let ca_file = broker.make_certificates().await?;
            broker.tls = Some(TlsListener { port: 0, ca_file });
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            broker.port = free_port();
            if let Some(tls) = broker.tls.as_mut() {
                tls.port = loop {
                    let port = free_port();
                    if port != broker.port {
                        break port;
                    }
                };
            }
            broker.write_config()?;
            match broker.launch().await {
                Ok(()) => return Ok(broker),
                // The free ports may be taken between finding and binding them.
                Err(LaunchError::PortTaken(error)) if attempt < 3 => {
                    eprintln!("walkie-harness: a mosquitto port was taken, retrying: {error}");
                }
                Err(LaunchError::PortTaken(error) | LaunchError::Other(error)) => {
                    return Err(error)
                }
            }
        }
    }
}

#[derive(Debug)]
struct TlsListener {
    port: u16,
    ca_file: PathBuf,
}

/// A running (or stopped) mosquitto. Dropping it stops the process and deletes its
/// temp dir (kept when `WALKIE_KEEP_TEST_DIRS` is set); when the thread is panicking
/// the tail of the broker's log is printed first.
#[derive(Debug)]
pub struct Mosquitto {
    _temp: Option<tempfile::TempDir>,
    dir: PathBuf,
    mosquitto: PathBuf,
    conf_path: PathBuf,
    log_path: PathBuf,
    password_file: PathBuf,
    data_dir: PathBuf,
    port: u16,
    tls: Option<TlsListener>,
    credentials: Option<(String, String)>,
    extra_config: Vec<String>,
    /// (uid, gid) mosquitto switches to when started as root.
    run_as: Option<ServiceUser>,
    child: Option<ChildGuard>,
    started_in: Duration,
}

impl Mosquitto {
    /// Shorthand for `MosquittoBuilder::new()`.
    pub fn builder() -> MosquittoBuilder {
        MosquittoBuilder::new()
    }

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The plain MQTT listener's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:PORT` (the plain listener).
    pub fn url(&self) -> String {
        format!("mqtt://{HOST}:{}", self.port)
    }

    /// The TLS listener's port, when built with [`MosquittoBuilder::tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.tls.as_ref().map(|tls| tls.port)
    }

    /// `mqtts://127.0.0.1:PORT` (the TLS listener), when built with TLS.
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port().map(|port| format!("mqtts://{HOST}:{port}"))
    }

    /// The throwaway CA certificate (PEM) that signed the server certificate, when
    /// built with TLS. The server certificate names `127.0.0.1` and `localhost`.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|tls| tls.ca_file.as_path())
    }

    /// The login the broker requires, when built with [`MosquittoBuilder::credentials`].
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    /// The temp dir holding config, certificates, log and `data/` (persistence).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The broker's log (`mosquitto.log` in [`Mosquitto::dir`]), appended to on every
    /// start. Test clients log next to it.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `n` lines of the broker's log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log_path, n)
    }

    /// From launch to all listeners accepting connections, for the last start.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// Whether the broker process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// SIGTERM, then waits for the exit (SIGKILL after [`MOSQUITTO_STOP_GRACE`]).
    /// mosquitto writes its persistence database (retained messages, persistent
    /// sessions and their queued messages) on this shutdown. A no-op when stopped.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .stop(MOSQUITTO_STOP_GRACE)
                .await
                .map_err(|e| Error::io("stopping mosquitto", e))?;
        }
        Ok(())
    }

    /// SIGKILL: a crash. Nothing is saved: what changed since the last save (the
    /// last clean stop, or `autosave_interval`, default 1800 s) is lost.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .map_err(|e| Error::io("killing mosquitto", e))?;
        }
        Ok(())
    }

    /// Starts mosquitto again (stopping it first if it still runs) with the same
    /// ports, config and persistence dir, and waits until it listens.
    pub async fn start_again(&mut self) -> Result<()> {
        self.stop().await?;
        match self.launch().await {
            Ok(()) => Ok(()),
            Err(LaunchError::PortTaken(error) | LaunchError::Other(error)) => Err(error),
        }
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::Mosquitto {
            message: message.into(),
            log_tail: format!(
                "--- {} ---\n{}",
                self.log_path.display(),
                self.log_tail(TAIL_LINES)
            ),
        }
    }

    fn ports(&self) -> Vec<u16> {
        let mut ports = vec![self.port];
        ports.extend(self.tls_port());
        ports
    }

    async fn launch(&mut self) -> Result<(), LaunchError> {
        let log_offset = std::fs::metadata(&self.log_path).map_or(0, |m| m.len());
        let mut command = Command::new(&self.mosquitto);
        command
            .arg("-c")
            .arg(&self.conf_path)
            .current_dir(&self.dir);
        let started = Instant::now();
        let mut child = ChildGuard::spawn("mosquitto", command, &self.log_path).map_err(|e| {
            LaunchError::Other(Error::io(
                format!("starting {}", self.mosquitto.display()),
                e,
            ))
        })?;
        // Mosquitto's drop prints the log.
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

    /// Ready when the log of this start says every listener's socket is open, the
    /// broker runs, and every port accepts a TCP connection. mosquitto exits when a
    /// port is taken (`Error: Address already in use`).
    async fn wait_ready(&mut self, log_offset: u64) -> Result<(), LaunchError> {
        let started = Instant::now();
        let opening: Vec<String> = self
            .ports()
            .iter()
            .map(|port| format!("Opening ipv4 listen socket on port {port}."))
            .collect();
        loop {
            let child = self.child.as_mut().expect("launched");
            let exited = child
                .try_wait()
                .map_err(|e| LaunchError::Other(Error::io("waiting for mosquitto", e)))?;
            let log = read_from(&self.log_path, log_offset);
            if let Some(status) = exited {
                let message = format!("mosquitto exited during start-up ({status})");
                return Err(if log.contains("Address already in use") {
                    LaunchError::PortTaken(self.error(message))
                } else {
                    LaunchError::Other(self.error(message))
                });
            }
            if opening.iter().all(|line| log.contains(line))
                && log.contains("running")
                && self.ports().iter().all(|port| {
                    TcpStream::connect_timeout(
                        &(Ipv4Addr::LOCALHOST, *port).into(),
                        Duration::from_millis(500),
                    )
                    .is_ok()
                })
            {
                return Ok(());
            }
            if started.elapsed() > MOSQUITTO_READY_TIMEOUT {
                return Err(LaunchError::Other(self.error(format!(
                    "mosquitto did not listen on {HOST}:{:?} within {MOSQUITTO_READY_TIMEOUT:?}",
                    self.ports()
                ))));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn write_config(&self) -> Result<()> {
        let mut text = String::from("# written by walkie-harness\n");
        // Logs go to stderr (unbuffered), which the ChildGuard appends to the log.
        text.push_str("log_dest stderr\n");
        text.push_str("log_type error\nlog_type warning\nlog_type notice\nlog_type information\n");
        text.push_str("connection_messages true\n");
        text.push_str("persistence true\n");
        text.push_str(&format!(
            "persistence_location {}/\n",
            self.data_dir.display()
        ));
        match &self.credentials {
            Some(_) => {
                text.push_str("allow_anonymous false\n");
                text.push_str(&format!("password_file {}\n", self.password_file.display()));
            }
            None => text.push_str("allow_anonymous true\n"),
        }
        if self.run_as.is_some() {
            text.push_str(&format!("user {MOSQUITTO_SYSTEM_USER}\n"));
        }
        for line in &self.extra_config {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(&format!("\nlistener {} {HOST}\n", self.port));
        if let Some(tls) = &self.tls {
            text.push_str(&format!("\nlistener {} {HOST}\n", tls.port));
            text.push_str(&format!("cafile {}\n", tls.ca_file.display()));
            text.push_str(&format!(
                "certfile {}\n",
                self.dir.join("server.crt").display()
            ));
            text.push_str(&format!(
                "keyfile {}\n",
                self.dir.join("server.key").display()
            ));
        }
        std::fs::write(&self.conf_path, text)
            .map_err(|e| Error::io(format!("writing {}", self.conf_path.display()), e))?;
        self.chown(&self.conf_path)
    }

    async fn write_password_file(&self, user: &str, password: &str) -> Result<()> {
        let passwd = mosquitto_tool("mosquitto_passwd");
        self.run_tool(
            Command::new(&passwd)
                .arg("-b")
                .arg("-c")
                .arg(&self.password_file)
                .arg(user)
                .arg(password),
            "mosquitto_passwd",
        )
        .await?;
        self.chown(&self.password_file)
    }

    /// A throwaway CA and a server certificate for 127.0.0.1 / localhost it signed
    /// (EC P-256, valid 2 days). Returns the CA certificate's path.
    async fn make_certificates(&self) -> Result<PathBuf> {
        let openssl = find_binary("WALKIE_OPENSSL", "openssl", "/usr/bin/openssl", "openssl");
        let dir = &self.dir;
        let ca_key = dir.join("ca.key");
        let ca_crt = dir.join("ca.crt");
        let server_key = dir.join("server.key");
        let server_csr = dir.join("server.csr");
        let server_crt = dir.join("server.crt");
        let ext = dir.join("server.ext");
        std::fs::write(
            &ext,
            "basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature, keyEncipherment\n\
             extendedKeyUsage = serverAuth\n\
             subjectAltName = IP:127.0.0.1, DNS:localhost\n",
        )
        .map_err(|e| Error::io(format!("writing {}", ext.display()), e))?;
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        self.run_tool(
            Command::new(&openssl)
                .args(["req", "-x509", "-nodes", "-days", "2"])
                .args(ec)
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(&ca_crt)
                .args(["-subj", "/CN=walkie-harness throwaway CA"])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
            "openssl req (CA)",
        )
        .await?;
        self.run_tool(
            Command::new(&openssl)
                .args(["req", "-new", "-nodes"])
                .args(ec)
                .arg("-keyout")
                .arg(&server_key)
                .arg("-out")
                .arg(&server_csr)
                .args(["-subj", "/CN=127.0.0.1"]),
            "openssl req (server)",
        )
        .await?;
        let serial = format!("0x{}", hex::encode(rand::random::<[u8; 8]>()));
        self.run_tool(
            Command::new(&openssl)
                .args(["x509", "-req", "-days", "2"])
                .arg("-in")
                .arg(&server_csr)
                .arg("-CA")
                .arg(&ca_crt)
                .arg("-CAkey")
                .arg(&ca_key)
                .args(["-set_serial", &serial])
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(&server_crt),
            "openssl x509 (sign server)",
        )
        .await?;
        for file in [
            &ca_key,
            &ca_crt,
            &server_key,
            &server_csr,
            &server_crt,
            &ext,
        ] {
            self.chown(file)?;
        }
        Ok(ca_crt)
    }

    /// Runs a helper to completion, its output appended to the broker's log.
    async fn run_tool(&self, command: &mut Command, what: &str) -> Result<()> {
        command.stdin(Stdio::null()).current_dir(&self.dir);
        let output =
            tokio::process::Command::from(std::mem::replace(command, Command::new("true")))
                .output()
                .await
                .map_err(|e| Error::io(format!("running {what}"), e))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        append(
            &self.log_path,
            &format!("=== walkie-harness: {what} ({}) ===\n{text}", output.status),
        )?;
        self.chown(&self.log_path)?;
        if !output.status.success() {
            return Err(self.error(format!("{what} failed ({})", output.status)));
        }
        Ok(())
    }

    /// Gives `path` to the user mosquitto runs as (a no-op unless we are root).
    fn chown(&self, path: &Path) -> Result<()> {
        match self.run_as {
            Some(user) => user.chown(path),
            None => Ok(()),
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- walkie-harness: mosquitto at {} (dir {}) ---\n{}",
                self.url(),
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
    /// A port was taken: a first start may retry with others.
    PortTaken(Error),
    Other(Error),
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

/// How a test client connects: which listener, which login.
///
/// [`MqttClientOptions::for_broker`] (what [`MqttSubscriber::start`] and
/// [`mqtt_publish`] use) takes the broker's credentials, if it has any, and the plain
/// listener.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct MqttClientOptions {
    /// `-u` / `-P`; `None` connects anonymously.
    pub credentials: Option<(String, String)>,
    /// Connect to the TLS listener, verifying it with [`Mosquitto::ca_file`].
    pub tls: bool,
    /// `-i`; default: a random `walkie-sub-…` / mosquitto_pub's own.
    pub client_id: Option<String>,
    /// mosquitto_sub only: `-c`, a persistent session (clean session off; needs a
    /// `client_id`): the broker keeps the subscriptions and queues QoS 1/2 messages
    /// while the subscriber is away, also across a broker restart.
    pub persistent_session: bool,
}

impl MqttClientOptions {
    /// The broker's credentials (if any), plain listener.
    pub fn for_broker(broker: &Mosquitto) -> Self {
        MqttClientOptions {
            credentials: broker
                .credentials()
                .map(|(user, password)| (user.to_string(), password.to_string())),
            tls: false,
            client_id: None,
            persistent_session: false,
        }
    }

    /// Without a login.
    pub fn anonymous(mut self) -> Self {
        self.credentials = None;
        self
    }

    /// With this login instead of the broker's.
    pub fn credentials(mut self, username: &str, password: &str) -> Self {
        self.credentials = Some((username.to_string(), password.to_string()));
        self
    }

    /// Over the TLS listener (the broker must have been built with TLS).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// A fixed client id.
    pub fn client_id(mut self, id: &str) -> Self {
        self.client_id = Some(id.to_string());
        self
    }

    /// A persistent session for mosquitto_sub (see the field).
    pub fn persistent_session(mut self) -> Self {
        self.persistent_session = true;
        self
    }

    /// Connection arguments shared by mosquitto_pub and mosquitto_sub.
    fn args(&self, broker: &Mosquitto) -> Result<Vec<String>> {
        let mut args = vec!["-h".to_string(), HOST.to_string(), "-p".to_string()];
        if self.tls {
            let (Some(port), Some(ca)) = (broker.tls_port(), broker.ca_file()) else {
                return Err(Error::MqttClient {
                    client: "options".into(),
                    message: "TLS asked for, but the broker was built without .tls()".into(),
                    log_tail: String::new(),
                });
            };
            args.push(port.to_string());
            args.push("--cafile".into());
            args.push(ca.display().to_string());
        } else {
            args.push(broker.port().to_string());
        }
        if let Some((user, password)) = &self.credentials {
            args.extend(["-u".into(), user.clone(), "-P".into(), password.clone()]);
        }
        if let Some(id) = &self.client_id {
            args.extend(["-i".into(), id.clone()]);
        }
        Ok(args)
    }
}

/// One message as a subscriber received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttMessage {
    pub topic: String,
    /// Exactly the bytes published (carried as hex from mosquitto_sub).
    pub payload: Vec<u8>,
    /// The retain flag as delivered: true for a retained message sent on subscribe,
    /// false for a live publish (the broker clears it when forwarding, MQTT 3.1.1).
    pub retained: bool,
    /// The delivered QoS: the publish's QoS (subscriptions are made at QoS 2).
    pub qos: u8,
}

impl MqttMessage {
    /// The payload as UTF-8 (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The payload parsed as JSON, `None` when it is not JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.payload).ok()
    }

    /// One line of `mosquitto_sub -F "%r %q %l %x %t"`.
    fn parse(line: &str) -> Option<MqttMessage> {
        let mut fields = line.splitn(5, ' ');
        let retained = match fields.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let qos = fields.next()?.parse().ok()?;
        let len: usize = fields.next()?.parse().ok()?;
        let payload = hex::decode(fields.next()?).ok()?;
        let topic = fields.next()?.to_string();
        (payload.len() == len).then_some(MqttMessage {
            topic,
            payload,
            retained,
            qos,
        })
    }
}

static CLIENT_COUNTER: AtomicU64 = AtomicU64::new(1);

/// A `mosquitto_sub` (Debian mosquitto-clients) subscribed to some topic filters at
/// QoS 2, its messages read as they arrive.
///
/// Every message lands in one queue: [`MqttSubscriber::next`] takes the oldest;
/// [`MqttSubscriber::wait_for`] takes the oldest that matches and **keeps the
/// skipped ones** in the queue for later `next`/`wait_for` calls. Messages on
/// [`PROBE_PREFIX`] topics (readiness probes) are dropped.
#[derive(Debug)]
pub struct MqttSubscriber {
    name: String,
    child: ChildGuard,
    messages: mpsc::UnboundedReceiver<MqttMessage>,
    buffer: VecDeque<MqttMessage>,
    reader: tokio::task::JoinHandle<()>,
    probe: String,
    probes: mpsc::UnboundedReceiver<Vec<u8>>,
    options: MqttClientOptions,
}

impl MqttSubscriber {
    /// Subscribes to `topics` with the broker's credentials over the plain listener;
    /// returns once the subscriptions are active (see [`MqttSubscriber::start_with`]).
    pub async fn start(broker: &Mosquitto, topics: &[&str]) -> Result<MqttSubscriber> {
        Self::start_with(broker, topics, MqttClientOptions::for_broker(broker)).await
    }

    /// Subscribes to `topics` as `options` say, and returns once the subscriptions are
    /// active: before spawning, a retained probe is published (QoS 1) on a topic of
    /// its own under [`PROBE_PREFIX`], subscribed last in the same SUBSCRIBE; the
    /// broker adds the subscriptions in order and handles publishes one at a time,
    /// so once the probe arrives every later publish reaches this subscriber. The
    /// probe is then cleared. A refused login fails here, with mosquitto_sub's log.
    pub async fn start_with(
        broker: &Mosquitto,
        topics: &[&str],
        options: MqttClientOptions,
    ) -> Result<MqttSubscriber> {
        let number = CLIENT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("mosquitto_sub-{number}");
        let probe = format!("{PROBE_PREFIX}{}", random_string(12));
        let probe_payload = random_string(16);
        mqtt_publish_with(
            broker,
            &options.client_id_cleared(),
            &probe,
            probe_payload.as_bytes(),
            1,
            true,
        )
        .await?;
        let mut options = options;
        if options.client_id.is_none() {
            options.client_id = Some(format!("walkie-sub-{number}-{}", random_string(6)));
        }
        let mut command = Command::new(mosquitto_tool("mosquitto_sub"));
        command
            .args(options.args(broker)?)
            .args(["-q", "2", "-F", SUB_FORMAT]);
        if options.persistent_session {
            command.arg("-c");
        }
        for topic in topics {
            command.arg("-t").arg(topic);
        }
        command.arg("-t").arg(&probe).current_dir(broker.dir());
        let log_path = broker.dir().join(format!("{name}.log"));
        let (child, _stdin, stdout) = ChildGuard::spawn_piped(name.clone(), command, &log_path)
            .map_err(|e| Error::io("starting mosquitto_sub", e))?;
        let stdout = tokio::process::ChildStdout::from_std(stdout)
            .map_err(|e| Error::io("mosquitto_sub stdout", e))?;
        let (sender, messages) = mpsc::unbounded_channel();
        let (probe_seen, probes) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_messages(
            stdout,
            sender,
            probe.clone(),
            probe_seen,
            log_path,
        ));
        let mut subscriber = MqttSubscriber {
            name,
            child,
            messages,
            buffer: VecDeque::new(),
            reader,
            probe,
            probes,
            options: options.client_id_cleared(),
        };
        subscriber.await_probe(probe_payload.as_bytes()).await?;
        subscriber.clear_probe(broker).await?;
        Ok(subscriber)
    }

    /// Returns once this subscriber's subscriptions are active (again). mosquitto_sub
    /// reconnects by itself (every second) when the broker goes away and subscribes
    /// anew; after [`Mosquitto::start_again`] call this before publishing what it must
    /// see. Works like the probe of [`MqttSubscriber::start_with`]: a retained probe
    /// on the subscriber's own probe topic arrives either live or on (re)subscribe.
    pub async fn wait_subscribed(&mut self, broker: &Mosquitto) -> Result<()> {
        let payload = random_string(16);
        let options = self.options.clone();
        mqtt_publish_with(broker, &options, &self.probe, payload.as_bytes(), 1, true).await?;
        self.await_probe(payload.as_bytes()).await?;
        self.clear_probe(broker).await
    }

    async fn await_probe(&mut self, payload: &[u8]) -> Result<()> {
        let deadline = tokio::time::Instant::now() + MQTT_CLIENT_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.probes.recv()).await {
                Ok(Some(seen)) if seen == payload => return Ok(()),
                Ok(Some(_)) => {}
                Ok(None) => {
                    let status = self.child.try_wait().ok().flatten();
                    return Err(self.error(format!(
                        "mosquitto_sub ended before subscribing (exit {status:?})"
                    )));
                }
                Err(_) => {
                    return Err(self.error(format!("not subscribed within {MQTT_CLIENT_TIMEOUT:?}")))
                }
            }
        }
    }

    /// Removes the retained probe, so the broker keeps no harness messages.
    async fn clear_probe(&self, broker: &Mosquitto) -> Result<()> {
        mqtt_publish_with(broker, &self.options, &self.probe, b"", 1, true).await
    }

    /// The oldest message not yet taken (from the queue of skipped ones first).
    pub async fn next(&mut self, timeout: Duration) -> Result<MqttMessage> {
        if let Some(message) = self.buffer.pop_front() {
            return Ok(message);
        }
        match tokio::time::timeout(timeout, self.messages.recv()).await {
            Ok(Some(message)) => Ok(message),
            Ok(None) => Err(self.closed()),
            Err(_) => Err(Error::Timeout {
                what: format!("a message on {}", self.name),
                after: timeout,
            }),
        }
    }

    /// The oldest message, queued or arriving within `timeout`, that `predicate`
    /// accepts. Messages it skips stay queued, in order, for later calls.
    pub async fn wait_for(
        &mut self,
        predicate: impl Fn(&MqttMessage) -> bool,
        timeout: Duration,
    ) -> Result<MqttMessage> {
        if let Some(index) = self.buffer.iter().position(&predicate) {
            return Ok(self.buffer.remove(index).expect("index in range"));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.messages.recv()).await {
                Ok(Some(message)) if predicate(&message) => return Ok(message),
                Ok(Some(message)) => self.buffer.push_back(message),
                Ok(None) => return Err(self.closed()),
                Err(_) => {
                    return Err(Error::Timeout {
                        what: format!(
                            "a matching message on {} ({} others queued)",
                            self.name,
                            self.buffer.len()
                        ),
                        after: timeout,
                    })
                }
            }
        }
    }

    /// Every message that arrived so far and was not taken, oldest first, without
    /// waiting; the queue is emptied.
    pub fn drain(&mut self) -> Vec<MqttMessage> {
        while let Ok(message) = self.messages.try_recv() {
            self.buffer.push_back(message);
        }
        self.buffer.drain(..).collect()
    }

    /// The last `n` lines of mosquitto_sub's stderr.
    pub fn log_tail(&self, n: usize) -> String {
        self.child.log_tail(n)
    }

    /// mosquitto_sub does not end when the broker goes away: it reconnects every
    /// second (see [`MqttSubscriber::wait_subscribed`]). Its output ends only when
    /// it exits (a refused login, [`MqttSubscriber::stop`]); `next` then fails.
    ///
    /// Ends mosquitto_sub (SIGTERM: it disconnects cleanly).
    pub async fn stop(&mut self) -> Result<()> {
        self.child
            .stop(Duration::from_secs(5))
            .await
            .map_err(|e| Error::io("stopping mosquitto_sub", e))?;
        Ok(())
    }

    fn closed(&mut self) -> Error {
        let status = self.child.try_wait().ok().flatten();
        self.error(format!(
            "mosquitto_sub's output ended (exit {status:?}; broker gone or connection lost?)"
        ))
    }

    fn error(&self, message: String) -> Error {
        Error::MqttClient {
            client: self.name.clone(),
            message,
            log_tail: format!(
                "--- {} ---\n{}",
                self.child.log_path().display(),
                self.child.log_tail(TAIL_LINES)
            ),
        }
    }
}

impl MqttClientOptions {
    fn client_id_cleared(&self) -> MqttClientOptions {
        MqttClientOptions {
            client_id: None,
            persistent_session: false,
            ..self.clone()
        }
    }
}

impl Drop for MqttSubscriber {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_messages(
    stdout: tokio::process::ChildStdout,
    sender: mpsc::UnboundedSender<MqttMessage>,
    probe: String,
    probe_seen: mpsc::UnboundedSender<Vec<u8>>,
    log_path: PathBuf,
) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Some(message) = MqttMessage::parse(&line) else {
            let _ = append(
                &log_path,
                &format!("walkie-harness: unparsable mosquitto_sub line: {line:?}\n"),
            );
            continue;
        };
        if message.topic == probe && !message.payload.is_empty() {
            let _ = probe_seen.send(message.payload);
            continue;
        }
        if message.topic.starts_with(PROBE_PREFIX) {
            continue;
        }
        if sender.send(message).is_err() {
            break;
        }
    }
}

/// Publishes one message with `mosquitto_pub` (the broker's credentials, plain
/// listener): the payload goes through stdin (`-s`), so any bytes survive; an empty
/// payload is sent with `-n` (with `retain`, this clears a retained message). Returns
/// when mosquitto_pub exits: for QoS 1 and 2 after the broker acknowledged.
pub async fn mqtt_publish(
    broker: &Mosquitto,
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
) -> Result<()> {
    mqtt_publish_with(
        broker,
        &MqttClientOptions::for_broker(broker),
        topic,
        payload,
        qos,
        retain,
    )
    .await
}

/// [`mqtt_publish`] connecting as `options` say. A refused connection (bad login) is
/// an [`Error::MqttClient`] with mosquitto_pub's message.
pub async fn mqtt_publish_with(
    broker: &Mosquitto,
    options: &MqttClientOptions,
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
) -> Result<()> {
    let mut command = tokio::process::Command::new(mosquitto_tool("mosquitto_pub"));
    command
        .args(options.args(broker)?)
        .arg("-t")
        .arg(topic)
        .arg("-q")
        .arg(qos.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if retain {
        command.arg("-r");
    }
    if payload.is_empty() {
        command.arg("-n");
    } else {
        command.arg("-s");
    }
    let mut child = command
        .spawn()
        .map_err(|e| Error::io("starting mosquitto_pub", e))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let run = async {
        stdin.write_all(payload).await?;
        drop(stdin);
        child.wait_with_output().await
    };
    let output = match tokio::time::timeout(MQTT_CLIENT_TIMEOUT, run).await {
        Ok(output) => output.map_err(|e| Error::io("running mosquitto_pub", e))?,
        Err(_) => {
            return Err(Error::Timeout {
                what: format!("mosquitto_pub to {topic}"),
                after: MQTT_CLIENT_TIMEOUT,
            })
        }
    };
    if !output.status.success() {
        return Err(Error::MqttClient {
            client: "mosquitto_pub".into(),
            message: format!("publishing to {topic} failed ({})", output.status),
            log_tail: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_lines_parse() {
        assert_eq!(
            MqttMessage::parse("1 1 4 7800ff79 a/c d"),
            Some(MqttMessage {
                topic: "a/c d".into(),
                payload: vec![b'x', 0, 0xff, b'y'],
                retained: true,
                qos: 1
            })
        );
        let empty = MqttMessage::parse("0 0 0  a/e").unwrap();
        assert_eq!((empty.topic.as_str(), empty.payload.len()), ("a/e", 0));
        assert!(!empty.retained);
        assert_eq!(MqttMessage::parse("0 0 3 6869 a"), None, "length mismatch");
        assert_eq!(MqttMessage::parse("garbage"), None);
    }

    #[test]
    fn message_text_and_json() {
        let message = MqttMessage {
            topic: "t".into(),
            payload: br#"{"a": 1}"#.to_vec(),
            retained: false,
            qos: 0,
        };
        assert_eq!(message.text(), r#"{"a": 1}"#);
        assert_eq!(message.json().unwrap()["a"], 1);
        let binary = MqttMessage {
            payload: vec![0xff],
            ..message
        };
        assert_eq!(binary.json(), None);
    }
}

//! A real Synapse homeserver on 127.0.0.1, one per test, in a temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha1::Sha1;

use crate::appservice::Registration;
use crate::client::MatrixClient;
use crate::ports::free_port;
use crate::process::{log_tail, ChildGuard};
use crate::{random_string, Error, Result};

/// Bound on the wait for `/health` after a start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Grace period between SIGTERM and SIGKILL in [`Synapse::stop`].
pub const STOP_GRACE: Duration = Duration::from_secs(15);
const TAIL_LINES: usize = 60;

/// The workspace root (`CARGO_MANIFEST_DIR/../..` of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .expect("tests/harness sits two levels below the workspace root")
        .to_path_buf()
}

/// The Python interpreter that has `matrix-synapse` installed: `$WALKIE_SYNAPSE_PYTHON`,
/// else `<workspace root>/.venv-synapse/bin/python`.
///
/// # Panics
/// When the interpreter does not exist: tests never skip, they tell how to fix it.
pub fn synapse_python() -> PathBuf {
    let (python, origin) = match std::env::var_os("WALKIE_SYNAPSE_PYTHON") {
        Some(python) if !python.is_empty() => (PathBuf::from(python), "WALKIE_SYNAPSE_PYTHON"),
        _ => (
            workspace_root().join(".venv-synapse/bin/python"),
            "the default location",
        ),
    };
    if !python.exists() {
        panic!(
            "Synapse's Python interpreter {} ({origin}) does not exist. \
             Run scripts/setup.sh to create .venv-synapse with matrix-synapse, \
             or point WALKIE_SYNAPSE_PYTHON at a python that has it.",
            python.display()
        );
    }
    python
}

/// A user registered through the shared-secret admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestUser {
    pub user_id: String,
    pub access_token: String,
    pub device_id: String,
    pub password: String,
}

/// Configures and starts a [`Synapse`].
#[derive(Debug, Clone)]
pub struct SynapseBuilder {
    server_name: String,
    registrations: Vec<Registration>,
    log_level: String,
    extra_config: Vec<(String, Value)>,
}

impl Default for SynapseBuilder {
    fn default() -> Self {
        SynapseBuilder::new()
    }
}

impl SynapseBuilder {
    /// Server name `walkie.test`, no appservices, log level from
    /// `$WALKIE_SYNAPSE_LOG_LEVEL` (default `INFO`).
    pub fn new() -> SynapseBuilder {
        SynapseBuilder {
            server_name: "walkie.test".to_string(),
            registrations: Vec::new(),
            log_level: std::env::var("WALKIE_SYNAPSE_LOG_LEVEL")
                .ok()
                .filter(|level| !level.is_empty())
                .unwrap_or_else(|| "INFO".to_string()),
            extra_config: Vec::new(),
        }
    }

    /// The homeserver's `server_name` (the part after `:` in user IDs).
    pub fn server_name(mut self, server_name: impl Into<String>) -> SynapseBuilder {
        self.server_name = server_name.into();
        self
    }

    /// Adds an application-service registration: a path to a YAML file, the YAML text,
    /// or an [`crate::AppserviceRegistration`]. May be called more than once.
    pub fn appservice_registration(mut self, registration: impl Into<Registration>) -> Self {
        self.registrations.push(registration.into());
        self
    }

    /// Python log level of Synapse's log file (`DEBUG`, `INFO`, `WARNING`…).
    pub fn log_level(mut self, level: impl Into<String>) -> SynapseBuilder {
        self.log_level = level.into();
        self
    }

    /// Sets a top-level key of `homeserver.yaml`, overriding the harness's value
    /// (e.g. `experimental_features`, which is [`default_experimental_features`]
    /// unless set here).
    pub fn config(mut self, key: impl Into<String>, value: Value) -> SynapseBuilder {
        self.extra_config.push((key.into(), value));
        self
    }

    /// Writes the config into a new temp dir, starts Synapse on a free port and waits
    /// until `GET /health` answers 200.
    ///
    /// # Panics
    /// When no Synapse interpreter is installed (see [`synapse_python`]).
    pub async fn start(self) -> Result<Synapse> {
        let python = synapse_python();
        let temp = tempfile::Builder::new()
            .prefix("walkie-synapse-")
            .tempdir()
            .map_err(|e| Error::io("creating Synapse's temp dir", e))?;
        let (temp, dir) =
            if std::env::var_os("WALKIE_KEEP_TEST_DIRS").is_some_and(|v| !v.is_empty()) {
                (None, temp.keep())
            } else {
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            };
        let mut synapse = Synapse {
            _temp: temp,
            python,
            config_path: dir.join("homeserver.yaml"),
            output_log: dir.join("synapse.out.log"),
            homeserver_log: dir.join("homeserver.log"),
            dir,
            port: 0,
            server_name: self.server_name.clone(),
            shared_secret: random_string(32),
            child: None,
            http: http_client(),
        };
        synapse.write_static_files(&self)?;
        // The free port may be taken between finding it and Synapse binding it: try
        // again with a new one when that is why the start failed.
        let mut attempt = 0;
        loop {
            attempt += 1;
            synapse.port = free_port();
            synapse.write_config(&self)?;
            match synapse.launch().await {
                Ok(()) => return Ok(synapse),
                Err(error)
                    if attempt < 3
                        && synapse
                            .logs_tail(TAIL_LINES)
                            .contains("Address already in use") =>
                {
                    eprintln!("walkie-harness: Synapse port was taken, retrying: {error}");
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// A running (or stopped) Synapse. Dropping it stops the process and deletes its
/// temp dir (kept when `WALKIE_KEEP_TEST_DIRS` is set); when the thread is panicking
/// the tail of Synapse's log is printed first.
#[derive(Debug)]
pub struct Synapse {
    _temp: Option<tempfile::TempDir>,
    dir: PathBuf,
    python: PathBuf,
    config_path: PathBuf,
    output_log: PathBuf,
    homeserver_log: PathBuf,
    port: u16,
    server_name: String,
    shared_secret: String,
    child: Option<ChildGuard>,
    http: reqwest::Client,
}

impl Synapse {
    /// Shorthand for `SynapseBuilder::new()`.
    pub fn builder() -> SynapseBuilder {
        SynapseBuilder::new()
    }

    /// Base URL of the client API, e.g. `http://127.0.0.1:38211` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The temp dir holding config, database, media and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Synapse's own log file (Python logging, level per builder).
    pub fn homeserver_log_path(&self) -> &Path {
        &self.homeserver_log
    }

    /// The process's captured stdout and stderr (tracebacks of failed starts).
    pub fn output_log_path(&self) -> &Path {
        &self.output_log
    }

    /// The last lines of the process output and of the homeserver log.
    pub fn logs_tail(&self, lines: usize) -> String {
        format!(
            "--- {} ---\n{}\n--- {} ---\n{}",
            self.output_log.display(),
            log_tail(&self.output_log, lines),
            self.homeserver_log.display(),
            log_tail(&self.homeserver_log, lines)
        )
    }

    /// Whether the Synapse process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// `@localpart:server_name`.
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name)
    }

    /// A client acting as `user`.
    pub fn client(&self, user: &TestUser) -> MatrixClient {
        MatrixClient::new(self.url(), &user.access_token)
    }

    /// Registers `localpart` with a random password through the shared-secret admin
    /// API (`/_synapse/admin/v1/register`) and returns its access token and device.
    pub async fn register_user(&self, localpart: &str, admin: bool) -> Result<TestUser> {
        let path = "/_synapse/admin/v1/register";
        let url = format!("{}{path}", self.url());
        let nonce = self.admin_call(self.http.get(&url), "GET", path).await?;
        let nonce = nonce["nonce"]
            .as_str()
            .ok_or_else(|| Error::Unexpected {
                what: "registration nonce".into(),
                body: nonce.to_string(),
            })?
            .to_string();
        let password = random_string(24);
        let mut mac = Hmac::<Sha1>::new_from_slice(self.shared_secret.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(nonce.as_bytes());
        mac.update(b"\0");
        mac.update(localpart.as_bytes());
        mac.update(b"\0");
        mac.update(password.as_bytes());
        mac.update(b"\0");
        mac.update(if admin { b"admin" } else { b"notadmin" });
        let mac = hex::encode(mac.finalize().into_bytes());
        let body = json!({
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac,
        });
        let answer = self
            .admin_call(self.http.post(&url).json(&body), "POST", path)
            .await?;
        let field = |name: &str| {
            answer[name]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::Unexpected {
                    what: format!("registration of {localpart}: {name}"),
                    body: answer.to_string(),
                })
        };
        Ok(TestUser {
            user_id: field("user_id")?,
            access_token: field("access_token")?,
            device_id: field("device_id")?,
            password,
        })
    }

    /// Stops Synapse: SIGTERM, wait for it to exit (SIGKILL after 15 s).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            child
                .stop(STOP_GRACE)
                .await
                .map_err(|e| Error::io("stopping Synapse", e))?;
        }
        self.child = None;
        Ok(())
    }

    /// SIGKILLs Synapse (a crash: no clean shutdown).
    pub fn kill(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            child.kill().map_err(|e| Error::io("killing Synapse", e))?;
        }
        self.child = None;
        Ok(())
    }

    /// Starts Synapse again with the same config, port and data (stopping it first
    /// if it still runs) and waits for `/health`.
    pub async fn start_again(&mut self) -> Result<()> {
        self.stop().await?;
        self.launch().await
    }

    async fn launch(&mut self) -> Result<()> {
        let mut command = Command::new(&self.python);
        command
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(&self.config_path)
            .current_dir(&self.dir)
            .env("PYTHONUNBUFFERED", "1");
        let mut child = ChildGuard::spawn("synapse", command, &self.output_log)
            .map_err(|e| Error::io(format!("starting {}", self.python.display()), e))?;
        // Synapse's drop prints both logs.
        child.set_print_log_on_panic(false);
        self.child = Some(child);
        let result = self.wait_ready().await;
        if result.is_err() {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
            }
        }
        result
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        let url = format!("{}/health", self.url());
        loop {
            let child = self.child.as_mut().expect("launched");
            if let Some(status) = child
                .try_wait()
                .map_err(|e| Error::io("waiting for Synapse", e))?
            {
                return Err(Error::Synapse {
                    message: format!("Synapse exited during start-up ({status})"),
                    log_tail: self.logs_tail(TAIL_LINES),
                });
            }
            let answer = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if answer.is_ok_and(|answer| answer.status().is_success()) {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(Error::Synapse {
                    message: format!(
                        "Synapse did not answer GET {url} with 200 within {READY_TIMEOUT:?}"
                    ),
                    log_tail: self.logs_tail(TAIL_LINES),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn admin_call(
        &self,
        request: reqwest::RequestBuilder,
        method: &str,
        path: &str,
    ) -> Result<Value> {
        let answer = request.send().await.map_err(|source| Error::Http {
            method: method.into(),
            path: path.into(),
            source,
        })?;
        crate::client::json_or_error(answer, method, path).await
    }

    fn write_static_files(&self, builder: &SynapseBuilder) -> Result<()> {
        let write = |path: PathBuf, text: String| {
            std::fs::write(&path, text)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))
        };
        // The format Synapse's --generate-keys writes: "ed25519 <version> <seed>".
        let seed: [u8; 32] = rand::random();
        write(
            self.dir.join("signing.key"),
            format!(
                "ed25519 a_{} {}\n",
                random_string(4),
                base64_unpadded(&seed)
            ),
        )?;
        let log_config = json!({
            "version": 1,
            "formatters": {"precise": {"format":
                "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"}},
            "handlers": {"file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": self.homeserver_log,
                "encoding": "utf8",
            }},
            "loggers": {"synapse.storage.SQL": {"level": "WARNING"}},
            "root": {"level": builder.log_level, "handlers": ["file"]},
            "disable_existing_loggers": false,
        });
        write(self.dir.join("log.yaml"), to_yaml(&log_config))?;
        for (index, registration) in builder.registrations.iter().enumerate() {
            if let Registration::Yaml(yaml) = registration {
                write(
                    self.dir.join(format!("appservice-{index}.yaml")),
                    yaml.clone(),
                )?;
            }
        }
        Ok(())
    }

    fn write_config(&self, builder: &SynapseBuilder) -> Result<()> {
        let registrations = builder
            .registrations
            .iter()
            .enumerate()
            .map(|(index, registration)| match registration {
                Registration::Yaml(_) => Ok(self.dir.join(format!("appservice-{index}.yaml"))),
                Registration::File(path) => std::path::absolute(path)
                    .ok()
                    .filter(|path| path.is_file())
                    .ok_or_else(|| Error::Synapse {
                        message: format!(
                            "appservice registration {} is not a file",
                            path.display()
                        ),
                        log_tail: String::new(),
                    }),
            })
            .collect::<Result<Vec<_>>>()?;
        let fast = json!({"per_second": 10_000, "burst_count": 100_000});
        let mut config = json!({
            "server_name": self.server_name,
            "public_baseurl": format!("{}/", self.url()),
            "pid_file": self.dir.join("homeserver.pid"),
            "listeners": [{
                "port": self.port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": false,
                "x_forwarded": false,
                // "openid" serves only /_matrix/federation/v1/openid/userinfo, which
                // the live endpoint uses to check OpenID tokens; no other federation.
                "resources": [{"names": ["client", "media", "openid"], "compress": false}],
            }],
            "database": {
                "name": "sqlite3",
                "args": {"database": self.dir.join("homeserver.db")},
            },
            "log_config": self.dir.join("log.yaml"),
            "media_store_path": self.dir.join("media_store"),
            "max_upload_size": "50M",
            "signing_key_path": self.dir.join("signing.key"),
            "registration_shared_secret": self.shared_secret,
            "macaroon_secret_key": random_string(32),
            "form_secret": random_string(32),
            "enable_registration": false,
            // Test passwords need no strength: 4 rounds instead of 12 saves ~0.2 s
            // of CPU per registered user.
            "bcrypt_rounds": 4,
            "report_stats": false,
            "trusted_key_servers": [],
            "suppress_key_server_warning": true,
            "url_preview_enabled": false,
            "presence": {"enabled": false},
            "app_service_config_files": registrations,
            "rc_message": fast,
            "rc_registration": fast,
            "rc_registration_token_validity": fast,
            "rc_login": {"address": fast, "account": fast, "failed_attempts": fast},
            "rc_admin_redaction": fast,
            "rc_joins": {"local": fast, "remote": fast},
            "rc_joins_per_room": fast,
            "rc_3pid_validation": fast,
            "rc_invites": {"per_room": fast, "per_user": fast, "per_issuer": fast},
            "rc_third_party_invite": fast,
            "rc_media_create": fast,
            "rc_key_requests": fast,
            "rc_presence": {"per_user": fast},
            "rc_delayed_event_mgmt": fast,
            "rc_room_creation": fast,
            "rc_reports": fast,
            "rc_user_directory": fast,
            "rc_profile": fast,
            "experimental_features": default_experimental_features(),
        });
        for (key, value) in &builder.extra_config {
            config[key] = value.clone();
        }
        let text = to_yaml(&config);
        std::fs::write(&self.config_path, text)
            .map_err(|e| Error::io(format!("writing {}", self.config_path.display()), e))
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- walkie-harness: Synapse at {} (dir {}) ---\n{}",
                self.url(),
                self.dir.display(),
                self.logs_tail(TAIL_LINES)
            );
        }
        // ChildGuard's drop stops the process before the temp dir is removed (fields
        // drop in declaration order, so stop it explicitly first).
        if let Some(mut child) = self.child.take() {
            let _ = child.stop_blocking(crate::process::DROP_GRACE);
        }
    }
}

/// `experimental_features` of every harness Synapse unless a test sets the key
/// itself ([`SynapseBuilder::config`]): to-device messages (MSC2409/MSC4203) and
/// device lists, one-time-key counts and fallback key types (MSC3202) in
/// appservice transactions, which the bridge's encryption needs. Synapse sends
/// them only to registrations that ask (`receive_ephemeral`,
/// `org.matrix.msc3202`), so other appservices see no difference.
pub fn default_experimental_features() -> Value {
    json!({
        "msc2409_to_device_messages_enabled": true,
        "msc3202_transaction_extensions": true,
    })
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("building an HTTP client")
}

fn to_yaml(value: &Value) -> String {
    serde_norway::to_string(value).expect("JSON values serialise as YAML")
}

/// Standard base64 without padding (the encoding of Synapse's signing keys).
fn base64_unpadded(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, byte)| n | u32::from(*byte) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_unpadded(b""), "");
        assert_eq!(base64_unpadded(b"f"), "Zg");
        assert_eq!(base64_unpadded(b"fo"), "Zm8");
        assert_eq!(base64_unpadded(b"foo"), "Zm9v");
        assert_eq!(base64_unpadded(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_unpadded(&[0xff, 0xfe]), "//4");
    }

    #[test]
    fn workspace_root_has_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("tests/harness"), "{manifest}");
    }
}

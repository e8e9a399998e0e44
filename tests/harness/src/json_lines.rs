//! A test client in a child process that speaks line-delimited JSON: requests with
//! an `id` on its stdin, one answer per request (`{"id", "ok", ...}`) and pushed
//! events (`{"event": ...}`) on its stdout, its stderr in a log file.
//!
//! The Python test clients ([`crate::MumbleTestClient`], [`crate::E2eeTestClient`])
//! and the Node.js one ([`crate::JsTrustClient`]) sit on this; every method takes
//! `&self`, so a test can run several requests of one client at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{oneshot, watch};

use crate::process::{log_tail, ChildGuard};
use crate::{Error, Result};

const TAIL_LINES: usize = 40;

/// Builds the crate error of one kind of client from (client label, message, log
/// tail).
pub(crate) type MakeError = fn(String, String, String) -> Error;

#[derive(Default)]
struct Shared {
    pending: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    events: Mutex<Vec<Value>>,
    /// Closed stdout (the process exited).
    closed: Mutex<bool>,
}

pub(crate) struct JsonLinesChild {
    /// What the client is, for messages ("E2EE test client").
    kind: &'static str,
    label: Mutex<String>,
    /// `None` once closed (the process ends at EOF).
    stdin: tokio::sync::Mutex<Option<tokio::process::ChildStdin>>,
    shared: Arc<Shared>,
    /// Bumped on every event and on exit: waiters re-check on change.
    version: watch::Receiver<u64>,
    next_id: AtomicU64,
    log_path: PathBuf,
    child: tokio::sync::Mutex<ChildGuard>,
    reader: tokio::task::JoinHandle<()>,
    make_error: MakeError,
}

impl JsonLinesChild {
    /// Starts `command` (stderr appended to `log_path`) and waits, at most
    /// `ready_timeout`, for its `{"event": "ready"}`.
    pub(crate) async fn spawn(
        kind: &'static str,
        command: Command,
        log_path: PathBuf,
        make_error: MakeError,
        ready_timeout: Duration,
    ) -> Result<JsonLinesChild> {
        let (mut child, stdin, stdout) = ChildGuard::spawn_piped(kind, command, &log_path)
            .map_err(|e| Error::io(format!("starting the {kind}"), e))?;
        // The owner's drop prints the log tail with its label.
        child.set_print_log_on_panic(false);
        let stdin = tokio::process::ChildStdin::from_std(stdin)
            .map_err(|e| Error::io(format!("{kind} stdin"), e))?;
        let stdout = tokio::process::ChildStdout::from_std(stdout)
            .map_err(|e| Error::io(format!("{kind} stdout"), e))?;
        let shared = Arc::new(Shared::default());
        let (bump, version) = watch::channel(0u64);
        let reader = tokio::spawn(read_output(kind, stdout, shared.clone(), bump));
        let client = JsonLinesChild {
            kind,
            label: Mutex::new("(starting)".to_string()),
            stdin: tokio::sync::Mutex::new(Some(stdin)),
            shared,
            version,
            next_id: AtomicU64::new(1),
            log_path,
            child: tokio::sync::Mutex::new(child),
            reader,
            make_error,
        };
        client
            .wait_for_event(
                |e| (e["event"] == "ready").then_some(()),
                ready_timeout,
                "the ready event",
            )
            .await?;
        Ok(client)
    }

    pub(crate) fn label(&self) -> String {
        self.label.lock().expect("label lock").clone()
    }

    pub(crate) fn set_label(&self, label: impl Into<String>) {
        *self.label.lock().expect("label lock") = label.into();
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub(crate) fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// This client's error carrying `message` and the tail of its log.
    pub(crate) fn error(&self, message: impl Into<String>) -> Error {
        (self.make_error)(
            self.label(),
            message.into(),
            format!(
                "--- {} ---\n{}",
                self.log_path.display(),
                self.log_tail(TAIL_LINES)
            ),
        )
    }

    /// Deserialises part of an answer, naming the command when it does not fit.
    pub(crate) fn parse<T: serde::de::DeserializeOwned>(
        &self,
        value: Value,
        what: &str,
    ) -> Result<T> {
        serde_json::from_value(value.clone()).map_err(|e| Error::Unexpected {
            what: format!("{} {what}: {e}", self.kind),
            body: value.to_string(),
        })
    }

    /// Every event pushed so far, oldest first.
    pub(crate) fn events(&self) -> Vec<Value> {
        self.shared.events.lock().expect("events lock").clone()
    }

    /// Waits for the first event (since spawn, past or future) that `select` maps to
    /// `Some`.
    pub(crate) async fn wait_for_event<T>(
        &self,
        select: impl Fn(&Value) -> Option<T>,
        timeout: Duration,
        what: &str,
    ) -> Result<T> {
        self.wait_until(|events| events.iter().find_map(&select), timeout, what)
            .await
    }

    /// Waits until `select`, given every event so far (oldest first), answers `Some`;
    /// it is asked again on each new event.
    pub(crate) async fn wait_until<T>(
        &self,
        select: impl Fn(&[Value]) -> Option<T>,
        timeout: Duration,
        what: &str,
    ) -> Result<T> {
        let mut version = self.version.clone();
        let wait = async {
            loop {
                version.borrow_and_update();
                if let Some(found) = select(&self.shared.events.lock().expect("events lock")) {
                    return Ok(found);
                }
                if *self.shared.closed.lock().expect("closed lock") {
                    return Err(self.error(format!("exited while a test waited for {what}")));
                }
                if version.changed().await.is_err() {
                    return Err(self.error(format!("output ended while a test waited for {what}")));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("{what} on {} {}", self.kind, self.label()),
                after: timeout,
            })?
    }

    /// Sends `request` (its `id` is set here) and waits at most `timeout` for the
    /// answer; an answer with `"ok": false` is an error carrying the client's text.
    pub(crate) async fn request(&self, mut request: Value, timeout: Duration) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request["id"] = json!(id);
        let command = request["cmd"].as_str().unwrap_or_default().to_string();
        let (reply, answer) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .expect("pending lock")
            .insert(id, reply);
        if *self.shared.closed.lock().expect("closed lock") {
            self.forget(id);
            return Err(self.error(format!("{command}: the client process has exited")));
        }
        let mut line = request.to_string();
        line.push('\n');
        let written = {
            let mut stdin = self.stdin.lock().await;
            match stdin.as_mut() {
                Some(stdin) => match stdin.write_all(line.as_bytes()).await {
                    Ok(()) => stdin.flush().await,
                    Err(e) => Err(e),
                },
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "stdin was closed",
                )),
            }
        };
        if let Err(e) = written {
            self.forget(id);
            return Err(self.error(format!("{command}: writing the request: {e}")));
        }
        let answer = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => {
                return Err(self.error(format!("{command}: the client exited before answering")))
            }
            Err(_) => {
                self.forget(id);
                return Err(self.error(format!("{command}: no answer within {timeout:?}")));
            }
        };
        if answer["ok"] == true {
            Ok(answer)
        } else {
            Err(self.error(format!(
                "{command} failed: {}",
                answer["error"].as_str().unwrap_or("(no error text)")
            )))
        }
    }

    /// Closes stdin (the script's cue to shut down cleanly) and waits at most `grace`
    /// for the process to exit, SIGTERM and SIGKILL after that.
    pub(crate) async fn close(&self, grace: Duration) -> Result<()> {
        self.stdin.lock().await.take();
        let mut version = self.version.clone();
        let exited = async {
            while !*self.shared.closed.lock().expect("closed lock") {
                if version.changed().await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(grace, exited).await;
        let status = self
            .child
            .lock()
            .await
            .stop(Duration::from_secs(2))
            .await
            .map_err(|e| Error::io(format!("stopping the {}", self.kind), e))?;
        if status.success() {
            Ok(())
        } else {
            Err(self.error(format!("exited with {status} on shutdown")))
        }
    }

    /// SIGKILLs the process (a crash: nothing saved on the way out).
    pub(crate) async fn kill(&self) -> Result<()> {
        self.child
            .lock()
            .await
            .kill()
            .map_err(|e| Error::io(format!("killing the {}", self.kind), e))?;
        Ok(())
    }

    fn forget(&self, id: u64) {
        self.shared
            .pending
            .lock()
            .expect("pending lock")
            .remove(&id);
    }
}

impl Drop for JsonLinesChild {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- walkie-harness: {} {} ({}) ---\n{}",
                self.kind,
                self.label(),
                self.log_path.display(),
                self.log_tail(TAIL_LINES)
            );
        }
        self.reader.abort();
        let _ = self.child.get_mut().stop_blocking(Duration::from_secs(2));
    }
}

/// Reads the script's stdout: answers go to their waiting request, events to the
/// event list. On EOF every pending request fails.
async fn read_output(
    kind: &'static str,
    stdout: tokio::process::ChildStdout,
    shared: Arc<Shared>,
    bump: watch::Sender<u64>,
) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(value) = serde_json::from_str::<Value>(&line) else {
            eprintln!("walkie-harness: {kind} printed a non-JSON line: {line}");
            continue;
        };
        if let Some(id) = value.get("id").and_then(Value::as_u64) {
            if let Some(reply) = shared.pending.lock().expect("pending lock").remove(&id) {
                let _ = reply.send(value);
            }
        } else if value.get("event").is_some() {
            shared.events.lock().expect("events lock").push(value);
            bump.send_modify(|v| *v += 1);
        } else {
            eprintln!("walkie-harness: {kind} answered without id: {line}");
        }
    }
    *shared.closed.lock().expect("closed lock") = true;
    shared.pending.lock().expect("pending lock").clear();
    bump.send_modify(|v| *v += 1);
}

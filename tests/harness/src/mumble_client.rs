//! A third-party Mumble client for tests: pymumble, driven over line-delimited JSON.
//!
//! [`MumbleTestClient`] runs `tests/harness/python/mumble_client.py` with the test
//! Python ([`crate::test_python`]) under a [`crate::ChildGuard`], sends it commands on
//! stdin and reads answers and pushed events on stdout. Every method takes `&self`, so a
//! test can send audio and await a text message at the same time
//! (`tokio::join!(client.send_wav(..), client.wait_for_text(..))`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::json_lines::JsonLinesChild;
use crate::murmur::{test_python, Murmur};
use crate::synapse::workspace_root;
use crate::{Error, Result};

/// Bound on the Python process's start-up (imports) and on most commands.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A text message the client received.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TextMessage {
    /// User name of the sender (`None` for messages from the server itself).
    pub sender: Option<String>,
    /// The message as sent (Mumble text messages are HTML).
    pub message: String,
    /// Sent to this user (rather than to a channel).
    pub private: bool,
}

/// A user on the server, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MumbleUser {
    pub name: String,
    pub session: u32,
    /// Channel path below Root (`""` is Root itself, `"Ops/Sub"`).
    pub channel: String,
}

/// Audio received from one user between `record_start` and `record_stop`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RecordedStream {
    /// 48 kHz mono 16-bit WAV of the decoded audio, frames back to back.
    pub path: PathBuf,
    pub samples: u64,
    /// Opus packets received (one 10–60 ms frame each).
    pub packets: u64,
    /// Frames that carried the terminator flag (end of a transmission).
    pub terminators: u64,
    /// Arrival of the first and last packet, seconds after `record_start`.
    pub first_at: Option<f64>,
    pub last_at: Option<f64>,
}

impl RecordedStream {
    /// Decoded duration (`samples` at 48 kHz).
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.samples as f64 / 48_000.0)
    }
}

/// Per-sender recordings of one `record_start` … `record_stop`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recording {
    pub streams: BTreeMap<String, RecordedStream>,
}

impl Recording {
    /// The stream of `user`, if anything was received from them.
    pub fn get(&self, user: &str) -> Option<&RecordedStream> {
        self.streams.get(user)
    }
}

/// What `send_wav` sent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SentAudio {
    pub samples: u64,
    /// Opus packets sent (20 ms each).
    pub frames: u64,
    /// Wall-clock time the real-time send took.
    pub seconds: f64,
}

/// Something the client pushed without being asked.
#[derive(Debug, Clone, PartialEq)]
pub enum MumbleEvent {
    /// A text message arrived.
    Text(TextMessage),
    /// The users in the client's channel changed (path, sorted names, self included).
    Users { channel: String, users: Vec<String> },
    /// A frame with the terminator flag arrived from `user`; `samples` recorded so
    /// far from them (0 when not recording).
    VoiceEnd { user: String, samples: u64 },
    /// The connection to murmurd ended.
    Disconnected,
    /// Anything else the script sends (e.g. `ready`).
    Other(Value),
}

impl MumbleEvent {
    fn parse(value: Value) -> MumbleEvent {
        let text = |key: &str| value[key].as_str().unwrap_or_default().to_string();
        match value["event"].as_str() {
            Some("text") => match serde_json::from_value(value.clone()) {
                Ok(message) => MumbleEvent::Text(message),
                Err(_) => MumbleEvent::Other(value),
            },
            Some("users") => MumbleEvent::Users {
                channel: text("channel"),
                users: value["users"]
                    .as_array()
                    .map(|users| {
                        users
                            .iter()
                            .filter_map(|u| u.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            Some("voice_end") => MumbleEvent::VoiceEnd {
                user: text("user"),
                samples: value["samples"].as_u64().unwrap_or_default(),
            },
            Some("disconnected") => MumbleEvent::Disconnected,
            _ => MumbleEvent::Other(value),
        }
    }
}

/// A pymumble client in its own Python process. Dropping it ends the process.
pub struct MumbleTestClient {
    inner: JsonLinesChild,
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for MumbleTestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MumbleTestClient")
            .field("label", &self.inner.label())
            .field("log_path", &self.inner.log_path())
            .finish_non_exhaustive()
    }
}

impl MumbleTestClient {
    /// Starts the Python client (not yet connected) and waits until pymumble has
    /// been imported.
    ///
    /// # Panics
    /// When the test Python is not installed (see [`crate::test_python`]).
    pub async fn spawn() -> Result<MumbleTestClient> {
        let python = test_python();
        let script = workspace_root().join("tests/harness/python/mumble_client.py");
        let temp = tempfile::Builder::new()
            .prefix("walkie-mumble-client-")
            .tempdir()
            .map_err(|e| Error::io("creating a Mumble client's temp dir", e))?;
        let (temp, dir) =
            if std::env::var_os("WALKIE_KEEP_TEST_DIRS").is_some_and(|v| !v.is_empty()) {
                (None, temp.keep())
            } else {
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            };
        let mut command = Command::new(&python);
        command
            .arg("-u")
            .arg(&script)
            .current_dir(&dir)
            .env("PYTHONUNBUFFERED", "1");
        let inner = JsonLinesChild::spawn(
            "Mumble test client",
            command,
            dir.join("mumble_client.log"),
            |client, message, log_tail| Error::MumbleClient {
                client,
                message,
                log_tail,
            },
            CLIENT_TIMEOUT,
        )
        .await?;
        inner.set_label("(not connected)");
        Ok(MumbleTestClient { inner, _temp: temp })
    }

    /// Spawns a client and connects it to `murmur` as `username` in `channel` (a path
    /// below Root such as `"Ops/Sub"`; `""` stays in Root).
    pub async fn join(murmur: &Murmur, username: &str, channel: &str) -> Result<MumbleTestClient> {
        let client = MumbleTestClient::spawn().await?;
        client
            .connect(murmur.host(), murmur.port(), username, channel)
            .await?;
        Ok(client)
    }

    /// Connects (TLS, any server certificate) as `username` and moves into `channel`;
    /// answers once the server confirmed the move.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        username: &str,
        channel: &str,
    ) -> Result<()> {
        self.connect_with_password(host, port, username, "", channel)
            .await
    }

    /// [`MumbleTestClient::connect`] with a password (e.g. `SuperUser` and
    /// [`Murmur::superuser_password`]).
    pub async fn connect_with_password(
        &self,
        host: &str,
        port: u16,
        username: &str,
        password: &str,
        channel: &str,
    ) -> Result<()> {
        self.connect_as(host, port, username, password, None, channel)
            .await
    }

    /// [`MumbleTestClient::connect_with_password`] with a TLS client certificate
    /// (`(cert_pem, key_pem)`), as a Mumble client presents one.
    pub async fn connect_as(
        &self,
        host: &str,
        port: u16,
        username: &str,
        password: &str,
        certificate: Option<(&Path, &Path)>,
        channel: &str,
    ) -> Result<()> {
        self.inner.set_label(format!("{username}@{host}:{port}"));
        let timeout = CLIENT_TIMEOUT.saturating_sub(Duration::from_secs(5));
        let mut request = json!({"cmd": "connect", "host": host, "port": port,
               "username": username, "password": password, "channel": channel,
               "timeout": timeout.as_secs_f64()});
        if let Some((cert, key)) = certificate {
            request["certfile"] = json!(cert);
            request["keyfile"] = json!(key);
        }
        self.request(request, CLIENT_TIMEOUT).await?;
        Ok(())
    }

    /// Streams a 48 kHz mono 16-bit WAV as Opus in real time (20 ms packets) and
    /// answers when the last packet is sent; `terminate` sets the terminator flag on
    /// the last frame.
    pub async fn send_wav(&self, path: &Path, terminate: bool) -> Result<SentAudio> {
        // 96 000 bytes per second of audio, plus slack.
        let bytes = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
            .len();
        let timeout = Duration::from_secs_f64(bytes as f64 / 96_000.0) + CLIENT_TIMEOUT;
        let answer = self
            .request(
                json!({"cmd": "send_wav", "path": path, "terminate": terminate}),
                timeout,
            )
            .await?;
        self.parse(answer, "send_wav")
    }

    /// Starts collecting received audio (per sender), dropping anything collected
    /// before.
    pub async fn record_start(&self) -> Result<()> {
        self.request(json!({"cmd": "record_start"}), CLIENT_TIMEOUT)
            .await?;
        Ok(())
    }

    /// Stops collecting and writes one WAV per sender into `dir` (`<user>.wav`).
    pub async fn record_stop(&self, dir: &Path) -> Result<Recording> {
        let answer = self
            .request(json!({"cmd": "record_stop", "dir": dir}), CLIENT_TIMEOUT)
            .await?;
        Ok(Recording {
            streams: self.parse(answer["streams"].clone(), "record_stop")?,
        })
    }

    /// Every text message received since connecting, oldest first.
    pub async fn text_messages(&self) -> Result<Vec<TextMessage>> {
        let answer = self
            .request(json!({"cmd": "text_messages"}), CLIENT_TIMEOUT)
            .await?;
        self.parse(answer["messages"].clone(), "text_messages")
    }

    /// Names of the users in this client's channel (itself included), sorted.
    pub async fn users(&self) -> Result<Vec<String>> {
        let answer = self
            .request(json!({"cmd": "users"}), CLIENT_TIMEOUT)
            .await?;
        let channel = answer["channel"].as_str().unwrap_or_default().to_string();
        let users: Vec<MumbleUser> = self.parse(answer["users"].clone(), "users")?;
        Ok(users
            .into_iter()
            .filter(|u| u.channel == channel)
            .map(|u| u.name)
            .collect())
    }

    /// Every user on the server with their channel.
    pub async fn all_users(&self) -> Result<Vec<MumbleUser>> {
        let answer = self
            .request(json!({"cmd": "users"}), CLIENT_TIMEOUT)
            .await?;
        self.parse(answer["users"].clone(), "users")
    }

    /// Sends a private text message to the user named `to_user`.
    pub async fn send_text(&self, to_user: &str, text: &str) -> Result<()> {
        self.request(
            json!({"cmd": "send_text", "to": to_user, "text": text}),
            CLIENT_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    /// Sends a text message to this client's channel.
    pub async fn send_channel_text(&self, text: &str) -> Result<()> {
        self.request(
            json!({"cmd": "send_text", "to": null, "text": text}),
            CLIENT_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    /// Leaves the server (the process stays, and may connect again).
    pub async fn disconnect(&self) -> Result<()> {
        self.request(json!({"cmd": "disconnect"}), CLIENT_TIMEOUT)
            .await?;
        Ok(())
    }

    /// Every event pushed so far, oldest first.
    pub fn events(&self) -> Vec<MumbleEvent> {
        self.inner
            .events()
            .into_iter()
            .map(MumbleEvent::parse)
            .collect()
    }

    /// Waits for the first event (received since spawn, past or future) that
    /// `predicate` accepts.
    pub async fn wait_for_event(
        &self,
        predicate: impl Fn(&MumbleEvent) -> bool,
        timeout: Duration,
    ) -> Result<MumbleEvent> {
        self.inner
            .wait_for_event(
                |value| Some(MumbleEvent::parse(value.clone())).filter(|e| predicate(e)),
                timeout,
                "an event",
            )
            .await
    }

    /// Waits for the first text message (received since connecting, past or future)
    /// that `predicate` accepts.
    pub async fn wait_for_text(
        &self,
        predicate: impl Fn(&TextMessage) -> bool,
        timeout: Duration,
    ) -> Result<TextMessage> {
        match self
            .wait_for_event(
                |e| matches!(e, MumbleEvent::Text(t) if predicate(t)),
                timeout,
            )
            .await?
        {
            MumbleEvent::Text(text) => Ok(text),
            _ => unreachable!("the predicate accepts text events only"),
        }
    }

    /// Waits until the latest user list of this client's channel satisfies
    /// `predicate` (e.g. `|users| users.contains(&"walkie".into())`).
    pub async fn wait_for_users(
        &self,
        predicate: impl Fn(&[String]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<String>> {
        self.inner
            .wait_until(
                |events| {
                    let latest = events
                        .iter()
                        .rev()
                        .find_map(|value| match MumbleEvent::parse(value.clone()) {
                            MumbleEvent::Users { users, .. } => Some(users),
                            _ => None,
                        })?;
                    predicate(&latest).then_some(latest)
                },
                timeout,
                "the user list",
            )
            .await
    }

    /// The file receiving the script's stderr (pymumble's log, tracebacks).
    pub fn log_path(&self) -> &Path {
        self.inner.log_path()
    }

    /// The last `lines` lines of the script's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.inner.log_tail(lines)
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, value: Value, what: &str) -> Result<T> {
        self.inner.parse(value, what)
    }

    async fn request(&self, request: Value, timeout: Duration) -> Result<Value> {
        self.inner.request(request, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse() {
        assert_eq!(
            MumbleEvent::parse(
                json!({"event": "text", "sender": "bob", "message": "hi", "private": true})
            ),
            MumbleEvent::Text(TextMessage {
                sender: Some("bob".into()),
                message: "hi".into(),
                private: true
            })
        );
        assert_eq!(
            MumbleEvent::parse(json!({"event": "users", "channel": "Ops", "users": ["a", "b"]})),
            MumbleEvent::Users {
                channel: "Ops".into(),
                users: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(
            MumbleEvent::parse(json!({"event": "voice_end", "user": "a", "samples": 960})),
            MumbleEvent::VoiceEnd {
                user: "a".into(),
                samples: 960
            }
        );
        assert_eq!(
            MumbleEvent::parse(json!({"event": "disconnected"})),
            MumbleEvent::Disconnected
        );
        assert!(matches!(
            MumbleEvent::parse(json!({"event": "ready"})),
            MumbleEvent::Other(_)
        ));
    }
}

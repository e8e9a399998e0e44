//! A third-party end-to-end-encrypting Matrix client for tests: matrix-nio 0.26
//! (Olm/Megolm through vodozemac), driven over line-delimited JSON.
//!
//! [`E2eeTestClient`] runs `tests/harness/python/matrix_e2ee_client.py` with the test
//! Python ([`crate::test_python`]). It logs in as a user registered on the harness's
//! Synapse, creates and joins (encrypted) rooms, sends encrypted voice messages and
//! text, and reports what it receives the way a careful client sees it: whether the
//! event was encrypted, which device owns the Megolm session that decrypted it, the
//! attachment's SHA-256 checked before decryption. `query_keys` checks the
//! cross-signing chain of a user's devices with real ed25519 verification.
//!
//! Its state (Olm account, sessions, known devices, sync token, access token) lives in
//! the store directory given at spawn: a new client on the same directory is the same
//! device ([`E2eeTestClient::stop`] then [`E2eeTestClient::spawn`] again, or
//! [`E2eeTestClient::kill`] for a crash).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::json_lines::JsonLinesChild;
use crate::murmur::test_python;
use crate::synapse::{workspace_root, Synapse, TestUser};
use crate::{Error, Result};

/// Bound on start-up (imports) and on commands that do not wait for others.
pub const E2EE_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time a request gets beyond the wait it asks the script to do.
const ANSWER_SLACK: Duration = Duration::from_secs(10);

/// Who this client is after `login`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct E2eeLogin {
    pub user_id: String,
    pub device_id: String,
    /// The device's ed25519 (signing) and curve25519 (identity) keys, unpadded base64.
    pub ed25519: String,
    pub curve25519: String,
    /// The store directory held this device already (a restart, not a new login).
    pub restored: bool,
}

/// A room as this client's last sync sees it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct E2eeRoomState {
    pub room_id: String,
    pub encrypted: bool,
    /// Joined members (sorted user ids).
    pub joined: Vec<String>,
    pub invited: Vec<String>,
}

/// What `create_room` makes: a private room, encrypted unless [`NewRoom::plain`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRoom {
    encrypted: bool,
    name: Option<String>,
    invite: Vec<String>,
    rotation: Rotation,
}

impl NewRoom {
    /// A private room with `m.room.encryption` (`m.megolm.v1.aes-sha2`) in its
    /// initial state.
    pub fn encrypted() -> NewRoom {
        NewRoom {
            encrypted: true,
            ..NewRoom::default()
        }
    }

    /// A private room without encryption.
    pub fn plain() -> NewRoom {
        NewRoom::default()
    }

    pub fn name(mut self, name: impl Into<String>) -> NewRoom {
        self.name = Some(name.into());
        self
    }

    /// Invites `user_id` at creation.
    pub fn invite(mut self, user_id: impl Into<String>) -> NewRoom {
        self.invite.push(user_id.into());
        self
    }

    /// `rotation_period_ms` / `rotation_period_msgs` of `m.room.encryption`.
    pub fn rotation(mut self, rotation: Rotation) -> NewRoom {
        self.rotation = rotation;
        self
    }
}

/// Megolm session rotation settings of `m.room.encryption` (unset: the client's
/// default, one week or 100 messages).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotation {
    pub period_ms: Option<u64>,
    pub period_msgs: Option<u64>,
}

impl Rotation {
    fn apply(&self, request: &mut Value) {
        request["rotation_period_ms"] = json!(self.period_ms);
        request["rotation_period_msgs"] = json!(self.period_msgs);
    }
}

/// What `send_voice` sent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SentVoice {
    pub event_id: String,
    /// Sent as `m.room.encrypted` with the attachment in `file` (AES-CTR); else a
    /// plain `m.audio` with `url`.
    pub encrypted: bool,
    /// Where the (encrypted) upload is.
    pub mxc: String,
    /// Size and SHA-256 (hex) of the plaintext file.
    pub size: u64,
    pub sha256: String,
}

/// What `send_text` sent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SentText {
    pub event_id: String,
    pub encrypted: bool,
}

/// A Megolm session [`E2eeTestClient::hold_room_key`] started without sharing it
/// with one user's devices.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HeldRoomKey {
    pub session_id: String,
    /// The devices of that user kept out.
    pub devices: Vec<String>,
}

/// The device that owns the Megolm session an event was decrypted with: found by the
/// session's curve25519 key, which arrived over an Olm channel (authenticated), not
/// by the `device_id` the event claims.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SenderDevice {
    /// Owner of the device. Differs from the event's sender when one user's device
    /// encrypts for another (what clients flag as a mismatched sender).
    pub user_id: String,
    pub device_id: String,
    pub ed25519: String,
    pub curve25519: String,
    pub display_name: Option<String>,
    /// nio's local trust: `unset` unless verified by hand (nio has no
    /// cross-signing; see [`UserKeys`] for that).
    pub trust_state: String,
    /// The device's ed25519 key is the one the room key claimed.
    pub keys_match_session: bool,
}

/// A room message this client received.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ReceivedMessage {
    pub event_id: String,
    pub room_id: String,
    pub sender: String,
    /// Arrived as `m.room.encrypted` and decrypted.
    pub encrypted: bool,
    pub decrypted: bool,
    /// nio's own verdict (device verified by hand here); normally `false`.
    pub verified: bool,
    /// Could not be decrypted at first and was when its room key came.
    pub late: bool,
    /// The (decrypted) content.
    pub content: Value,
    #[serde(default)]
    pub session_id: Option<String>,
    /// curve25519 key of the device that shared the Megolm session.
    #[serde(default)]
    pub sender_key: Option<String>,
    /// ed25519 key the room key claims for its sender.
    #[serde(default)]
    pub session_ed25519: Option<String>,
    /// The room key was forwarded (not received from the sender itself).
    #[serde(default)]
    pub forwarded: Option<bool>,
    #[serde(default)]
    pub sender_device: Option<SenderDevice>,
    #[serde(default)]
    pub sender_device_id: Option<String>,
    /// The deprecated, unauthenticated `device_id` of the encrypted content.
    #[serde(default)]
    pub claimed_device_id: Option<String>,
}

impl ReceivedMessage {
    /// Encrypted, decrypted with a key from the sender's own device (not forwarded),
    /// and that device belongs to the sender with the keys the room key claimed: no
    /// "mismatched sender" or "unknown device" warning.
    pub fn sent_by_own_device(&self) -> bool {
        self.encrypted
            && self.forwarded == Some(false)
            && self
                .sender_device
                .as_ref()
                .is_some_and(|d| d.user_id == self.sender && d.keys_match_session)
    }

    /// The content's `body`.
    pub fn body(&self) -> Option<&str> {
        self.content.get("body").and_then(Value::as_str)
    }
}

/// An `m.audio` this client received, its attachment downloaded (and decrypted).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ReceivedAudio {
    #[serde(flatten)]
    pub message: ReceivedMessage,
    /// The attachment was in `file` (encrypted) rather than `url`.
    pub attachment_encrypted: bool,
    /// The ciphertext's SHA-256 matched `file.hashes.sha256` (nio's
    /// `decrypt_attachment` refuses otherwise).
    pub hash_checked: bool,
    /// Bytes downloaded from the media repository.
    pub ciphertext_size: u64,
    /// Where the (decrypted) file was written, its size and SHA-256 (hex).
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

impl ReceivedAudio {
    /// The voice-message fields of the content.
    pub fn voice(&self) -> Result<VoiceContent> {
        serde_json::from_value(self.message.content.clone()).map_err(|e| Error::Unexpected {
            what: format!("m.audio {}: {e}", self.message.event_id),
            body: self.message.content.to_string(),
        })
    }
}

/// The fields of an `m.audio` voice message (MSC3245 / MSC1767) the tests check.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VoiceContent {
    pub msgtype: String,
    pub body: String,
    #[serde(default)]
    pub info: AudioInfo,
    /// Present (`{}`) on voice messages.
    #[serde(rename = "org.matrix.msc3245.voice", default)]
    pub voice: Option<Value>,
    #[serde(rename = "org.matrix.msc1767.audio", default)]
    pub audio: Option<Msc1767Audio>,
    /// Plain attachment.
    #[serde(default)]
    pub url: Option<String>,
    /// Encrypted attachment.
    #[serde(default)]
    pub file: Option<EncryptedFileRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct AudioInfo {
    #[serde(default)]
    pub mimetype: Option<String>,
    /// Milliseconds.
    #[serde(default)]
    pub duration: Option<u64>,
    #[serde(default)]
    pub size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Msc1767Audio {
    /// Milliseconds.
    pub duration: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EncryptedFileRef {
    pub url: String,
    pub v: String,
}

/// A user's devices and cross-signing keys from `POST /keys/query`, every signature
/// verified (ed25519 over canonical JSON, by vodozemac).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UserKeys {
    pub user_id: String,
    pub master_key: Option<String>,
    pub self_signing_key: Option<String>,
    /// The self-signing key carries a valid signature of the master key.
    pub self_signing_signed_by_master: bool,
    pub devices: Vec<DeviceKeys>,
}

impl UserKeys {
    pub fn device(&self, device_id: &str) -> Option<&DeviceKeys> {
        self.devices.iter().find(|d| d.device_id == device_id)
    }
}

/// One device of [`UserKeys`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeviceKeys {
    pub device_id: String,
    pub ed25519: Option<String>,
    pub curve25519: Option<String>,
    pub display_name: Option<String>,
    /// `user_id` and `device_id` inside the signed keys are the ones queried.
    pub user_id_matches: bool,
    /// Signed by its own ed25519 key.
    pub self_signed: bool,
    /// Carries a valid signature of the user's self-signing key.
    pub signed_by_self_signing_key: bool,
    /// `signed_by_self_signing_key` and the self-signing key signed by the master
    /// key: the device is part of the user's cross-signing identity.
    pub cross_signed: bool,
}

/// Public keys `bootstrap_cross_signing` uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CrossSigningKeys {
    pub master_key: String,
    pub self_signing_key: String,
    pub user_signing_key: String,
}

/// An `m.room_key.withheld` to-device message this client received.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WithheldNotice {
    pub sender: String,
    pub room_id: Option<String>,
    pub session_id: Option<String>,
    pub sender_key: Option<String>,
    pub algorithm: Option<String>,
    /// `m.unverified`, `m.blacklisted`, `m.unauthorised`, `m.unavailable`, `m.no_olm`.
    pub code: Option<String>,
    pub reason: Option<String>,
    /// Came inside an Olm-encrypted to-device message.
    pub encrypted: bool,
}

/// An encrypted event this client has no room key for (yet).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Undecryptable {
    pub event_id: String,
    pub room_id: String,
    pub sender: String,
    pub session_id: String,
    pub claimed_device_id: String,
    pub reason: String,
}

/// Which message `wait_audio` / `wait_text` take: the oldest not taken before that
/// matches every given field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageFilter {
    pub sender: Option<String>,
    pub room_id: Option<String>,
    /// A substring of `body`.
    pub body_contains: Option<String>,
}

impl MessageFilter {
    pub fn from(sender: impl Into<String>) -> MessageFilter {
        MessageFilter {
            sender: Some(sender.into()),
            ..MessageFilter::default()
        }
    }

    pub fn in_room(mut self, room_id: impl Into<String>) -> MessageFilter {
        self.room_id = Some(room_id.into());
        self
    }

    pub fn containing(mut self, text: impl Into<String>) -> MessageFilter {
        self.body_contains = Some(text.into());
        self
    }

    pub(crate) fn apply(&self, request: &mut Value) {
        request["sender"] = json!(self.sender);
        request["room_id"] = json!(self.room_id);
        request["body_contains"] = json!(self.body_contains);
    }
}

/// A matrix-nio client in its own Python process. Dropping it ends the process (the
/// store directory stays).
pub struct E2eeTestClient {
    inner: JsonLinesChild,
    store_dir: PathBuf,
}

impl std::fmt::Debug for E2eeTestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2eeTestClient")
            .field("label", &self.inner.label())
            .field("store_dir", &self.store_dir)
            .finish_non_exhaustive()
    }
}

impl E2eeTestClient {
    /// Starts the Python client on `store_dir` (created if missing; its log is
    /// `e2ee_client.log` there, appended across restarts) and waits until nio has
    /// been imported. Not logged in yet.
    ///
    /// # Panics
    /// When the test Python is not installed (see [`crate::test_python`]).
    pub async fn spawn(store_dir: impl AsRef<Path>) -> Result<E2eeTestClient> {
        let store_dir = store_dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&store_dir)
            .map_err(|e| Error::io(format!("creating {}", store_dir.display()), e))?;
        let python = test_python();
        let script = workspace_root().join("tests/harness/python/matrix_e2ee_client.py");
        let mut command = Command::new(&python);
        command
            .arg("-u")
            .arg(&script)
            .current_dir(&store_dir)
            .env("PYTHONUNBUFFERED", "1");
        let inner = JsonLinesChild::spawn(
            "E2EE test client",
            command,
            store_dir.join("e2ee_client.log"),
            |client, message, log_tail| Error::E2eeClient {
                client,
                message,
                log_tail,
            },
            E2EE_CLIENT_TIMEOUT,
        )
        .await?;
        Ok(E2eeTestClient { inner, store_dir })
    }

    /// Spawns a client on `store_dir` and logs `user` in on `synapse` with its
    /// password (a new device), or resumes the device stored there.
    pub async fn login_user(
        synapse: &Synapse,
        user: &TestUser,
        store_dir: impl AsRef<Path>,
    ) -> Result<(E2eeTestClient, E2eeLogin)> {
        let client = E2eeTestClient::spawn(store_dir).await?;
        let login = client
            .login(&synapse.url(), &user.user_id, &user.password, None)
            .await?;
        Ok((client, login))
    }

    /// Logs in with a password (a new device, `device_id` if given), uploads the
    /// device's keys and starts syncing; answers after the first sync. When the store
    /// directory holds this user's device already, resumes it instead (no password
    /// needed, `restored: true`).
    pub async fn login(
        &self,
        homeserver: &str,
        user_id: &str,
        password: &str,
        device_id: Option<&str>,
    ) -> Result<E2eeLogin> {
        self.inner.set_label(user_id);
        let answer = self
            .inner
            .request(
                json!({"cmd": "login", "homeserver": homeserver, "user_id": user_id,
                       "password": password, "device_id": device_id,
                       "store_dir": self.store_dir}),
                E2EE_CLIENT_TIMEOUT + ANSWER_SLACK,
            )
            .await?;
        let login: E2eeLogin = self.inner.parse(answer, "login")?;
        self.inner
            .set_label(format!("{} ({})", login.user_id, login.device_id));
        Ok(login)
    }

    /// Creates a private room; answers once it is in this client's sync.
    pub async fn create_room(&self, room: &NewRoom) -> Result<E2eeRoomState> {
        let mut request = json!({"cmd": "create_room", "encrypted": room.encrypted,
                                 "name": room.name, "invite": room.invite});
        room.rotation.apply(&mut request);
        let answer = self
            .inner
            .request(request, E2EE_CLIENT_TIMEOUT + ANSWER_SLACK)
            .await?;
        self.inner.parse(answer, "create_room")
    }

    pub async fn invite(&self, room_id: &str, user_id: &str) -> Result<()> {
        self.inner
            .request(
                json!({"cmd": "invite", "room_id": room_id, "user_id": user_id}),
                E2EE_CLIENT_TIMEOUT,
            )
            .await?;
        Ok(())
    }

    /// Joins; answers once the join is in this client's sync.
    pub async fn join(&self, room_id: &str) -> Result<E2eeRoomState> {
        let answer = self
            .inner
            .request(
                json!({"cmd": "join", "room_id": room_id}),
                E2EE_CLIENT_TIMEOUT + ANSWER_SLACK,
            )
            .await?;
        self.inner.parse(answer, "join")
    }

    /// Sends `m.room.encryption` into a plain room; answers with its event id once
    /// this client's sync sees the room encrypted.
    pub async fn enable_encryption(&self, room_id: &str, rotation: Rotation) -> Result<String> {
        let mut request = json!({"cmd": "enable_encryption", "room_id": room_id});
        rotation.apply(&mut request);
        let answer = self
            .inner
            .request(request, E2EE_CLIENT_TIMEOUT + ANSWER_SLACK)
            .await?;
        self.inner
            .parse(answer["event_id"].clone(), "enable_encryption")
    }

    /// Syncs until this client sees `joined` all joined in the room (and the room
    /// encrypted or not, when `encrypted` is given).
    pub async fn wait_room(
        &self,
        room_id: &str,
        joined: &[&str],
        encrypted: Option<bool>,
        timeout: Duration,
    ) -> Result<E2eeRoomState> {
        let answer = self
            .inner
            .request(
                json!({"cmd": "wait_room", "room_id": room_id, "joined": joined,
                       "encrypted": encrypted, "timeout": timeout.as_secs_f64()}),
                timeout + ANSWER_SLACK,
            )
            .await?;
        self.inner.parse(answer, "wait_room")
    }

    /// Sends the Ogg/Opus file at `path` as a voice message (`m.audio`, `info`
    /// {mimetype `audio/ogg`, size, duration}, MSC3245 `voice`, MSC1767 `audio`). In
    /// an encrypted room the file is encrypted before upload (in `file`) and the event
    /// is Megolm-encrypted for every member's devices; elsewhere it goes plain (`url`).
    pub async fn send_voice(
        &self,
        room_id: &str,
        path: &Path,
        duration: Duration,
    ) -> Result<SentVoice> {
        let answer = self
            .inner
            .request(
                json!({"cmd": "send_voice", "room_id": room_id, "path": path,
                       "duration_ms": duration.as_millis() as u64}),
                E2EE_CLIENT_TIMEOUT + ANSWER_SLACK,
            )
            .await?;
        self.inner.parse(answer, "send_voice")
    }

    /// [`Self::send_voice`] in an encrypted room with a wrong SHA-256 in `file`
    /// (the upload itself intact): what a damaged or altered attachment looks like.
    pub async fn send_voice_with_bad_hash(
        &self,
        room_id: &str,
        path: &Path,
        duration: Duration,
    ) -> Result<SentVoice> {
        let answer = self
            .inner
            .request(
                json!({"cmd": "send_voice", "room_id": room_id, "path": path,
                       "duration_ms": duration.as_millis() as u64, "bad_hash": true}),
                E2EE_CLIENT_TIMEOUT + ANSWER_SLACK,
            )
            .await?;
        self.inner.parse(answer, "send_voice")
    }

    /// Sends an `m.text` (encrypted in an encrypted room), e.g. a `!wt` command.
    pub async fn send_text(&self, room_id: &str, body: &str) -> Result<SentText> {
        let answer = self
            .inner
            .request(
                json!({"cmd": "send_text", "room_id": room_id, "body": body}),
                E2EE_CLIENT_TIMEOUT + ANSWER_SLACK,
            )
            .await?;
        self.inner.parse(answer, "send_text")
    }

    /// Starts a new Megolm session in the (encrypted) room and shares it with every
    /// member's devices except `user_id`'s: what this client sends next (until the
    /// session rotates) is encrypted with a key that user lacks. The key is kept
    /// for [`Self::release_room_key`]; [`Self::send_withheld`] says it is withheld.
    pub async fn hold_room_key(&self, room_id: &str, user_id: &str) -> Result<HeldRoomKey> {
        let answer = self
            .inner
            .request(
                json!({"cmd": "hold_room_key", "room_id": room_id, "user_id": user_id}),
                E2EE_CLIENT_TIMEOUT + ANSWER_SLACK,
            )
            .await?;
        self.inner.parse(answer, "hold_room_key")
    }

    /// Sends the key held by [`Self::hold_room_key`] to `user_id`'s devices
    /// (Olm-encrypted `m.room_key`): a late share.
    pub async fn release_room_key(
        &self,
        room_id: &str,
        session_id: &str,
        user_id: &str,
    ) -> Result<()> {
        self.inner
            .request(
                json!({"cmd": "release_room_key", "room_id": room_id,
                       "session_id": session_id, "user_id": user_id}),
                E2EE_CLIENT_TIMEOUT + ANSWER_SLACK,
            )
            .await?;
        Ok(())
    }

    /// Sends `user_id`'s devices a plaintext `m.room_key.withheld` for
    /// `session_id` with `code` (`m.blacklisted`, `m.unverified`, …).
    pub async fn send_withheld(
        &self,
        room_id: &str,
        session_id: &str,
        user_id: &str,
        code: &str,
    ) -> Result<()> {
        self.inner
            .request(
                json!({"cmd": "send_withheld", "room_id": room_id, "session_id": session_id,
                       "user_id": user_id, "code": code}),
                E2EE_CLIENT_TIMEOUT + ANSWER_SLACK,
            )
            .await?;
        Ok(())
    }

    /// Waits for the oldest `m.audio` from others not taken before that matches
    /// `filter`, downloads its attachment, decrypts it (SHA-256 of the ciphertext
    /// checked first) and writes the plaintext to `path`.
    pub async fn wait_audio(
        &self,
        filter: &MessageFilter,
        path: &Path,
        timeout: Duration,
    ) -> Result<ReceivedAudio> {
        let mut request = json!({"cmd": "wait_audio", "path": path,
                                 "timeout": timeout.as_secs_f64()});
        filter.apply(&mut request);
        let answer = self.inner.request(request, timeout + ANSWER_SLACK).await?;
        self.inner.parse(answer, "wait_audio")
    }

    /// Waits for the oldest `m.text`/`m.notice`/`m.emote` from others not taken
    /// before that matches `filter`.
    pub async fn wait_text(
        &self,
        filter: &MessageFilter,
        timeout: Duration,
    ) -> Result<ReceivedMessage> {
        let mut request = json!({"cmd": "wait_text", "timeout": timeout.as_secs_f64()});
        filter.apply(&mut request);
        let answer = self.inner.request(request, timeout + ANSWER_SLACK).await?;
        self.inner.parse(answer, "wait_text")
    }

    /// `POST /keys/query` for `user_id`: devices and cross-signing keys, every
    /// signature checked.
    pub async fn query_keys(&self, user_id: &str) -> Result<UserKeys> {
        let answer = self
            .inner
            .request(
                json!({"cmd": "query_keys", "user_id": user_id}),
                E2EE_CLIENT_TIMEOUT,
            )
            .await?;
        self.inner.parse(answer, "query_keys")
    }

    /// Gives this (test) user fresh master, self-signing and user-signing keys and
    /// signs this device with the self-signing key. `password` answers
    /// user-interactive auth when Synapse asks for it.
    pub async fn bootstrap_cross_signing(&self, password: &str) -> Result<CrossSigningKeys> {
        let answer = self
            .inner
            .request(
                json!({"cmd": "bootstrap_cross_signing", "password": password}),
                E2EE_CLIENT_TIMEOUT,
            )
            .await?;
        self.inner.parse(answer, "bootstrap_cross_signing")
    }

    /// Every `m.room_key.withheld` received so far, oldest first.
    pub async fn withheld(&self) -> Result<Vec<WithheldNotice>> {
        let answer = self
            .inner
            .request(json!({"cmd": "withheld"}), E2EE_CLIENT_TIMEOUT)
            .await?;
        self.inner.parse(answer["notices"].clone(), "withheld")
    }

    /// Waits for a withheld notice (in `room_id`, if given) not returned by an
    /// earlier `wait_withheld`.
    pub async fn wait_withheld(
        &self,
        room_id: Option<&str>,
        timeout: Duration,
    ) -> Result<WithheldNotice> {
        let answer = self
            .inner
            .request(
                json!({"cmd": "wait_withheld", "room_id": room_id,
                       "timeout": timeout.as_secs_f64()}),
                timeout + ANSWER_SLACK,
            )
            .await?;
        self.inner.parse(answer, "wait_withheld")
    }

    /// Encrypted events still waiting for their room key.
    pub async fn undecryptable(&self) -> Result<Vec<Undecryptable>> {
        let answer = self
            .inner
            .request(json!({"cmd": "undecryptable"}), E2EE_CLIENT_TIMEOUT)
            .await?;
        self.inner.parse(answer["events"].clone(), "undecryptable")
    }

    /// Every event the script pushed so far (`message`, `undecryptable`, `withheld`,
    /// `sync_error`, `ready`), oldest first, as JSON.
    pub fn events(&self) -> Vec<Value> {
        self.inner.events()
    }

    /// Stops syncing, closes nio's store and ends the process; the store directory
    /// keeps the device for a later [`E2eeTestClient::spawn`].
    pub async fn stop(self) -> Result<()> {
        self.inner
            .request(json!({"cmd": "stop"}), E2EE_CLIENT_TIMEOUT)
            .await?;
        self.inner.close(E2EE_CLIENT_TIMEOUT).await
    }

    /// SIGKILLs the process: a crash, nothing closed on the way out.
    pub async fn kill(self) -> Result<()> {
        self.inner.kill().await
    }

    /// The directory holding nio's store, the credentials and the log.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The file receiving the script's stderr (nio's log, tracebacks).
    pub fn log_path(&self) -> &Path {
        self.inner.log_path()
    }

    /// The last `lines` lines of the script's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.inner.log_tail(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_received_audio_report_parses() {
        let report = json!({
            "event_id": "$e", "room_id": "!r:s", "sender": "@a:s", "encrypted": true,
            "decrypted": true, "verified": false, "late": false,
            "content": {"msgtype": "m.audio", "body": "Voice message",
                        "info": {"mimetype": "audio/ogg", "duration": 1200, "size": 10},
                        "org.matrix.msc3245.voice": {},
                        "org.matrix.msc1767.audio": {"duration": 1200},
                        "file": {"url": "mxc://s/m", "v": "v2", "key": {}, "iv": "", "hashes": {}}},
            "session_id": "S", "sender_key": "K", "session_ed25519": "E", "forwarded": false,
            "sender_device": {"user_id": "@a:s", "device_id": "D", "ed25519": "E",
                              "curve25519": "K", "display_name": null, "trust_state": "unset",
                              "keys_match_session": true},
            "sender_device_id": "D", "claimed_device_id": "D",
            "attachment_encrypted": true, "hash_checked": true, "ciphertext_size": 10,
            "path": "/tmp/x.ogg", "size": 10, "sha256": "00"
        });
        let audio: ReceivedAudio = serde_json::from_value(report).unwrap();
        assert!(audio.message.sent_by_own_device());
        let voice = audio.voice().unwrap();
        assert_eq!(voice.info.duration, Some(1200));
        assert_eq!(voice.audio.map(|a| a.duration), Some(1200));
        assert!(voice.voice.is_some());
        assert_eq!(voice.file.map(|f| f.url).as_deref(), Some("mxc://s/m"));
    }

    #[test]
    fn a_message_from_another_users_device_is_not_its_own() {
        let mut message: ReceivedMessage = serde_json::from_value(json!({
            "event_id": "$e", "room_id": "!r:s", "sender": "@puppet:s", "encrypted": true,
            "decrypted": true, "verified": false, "late": false, "content": {},
            "forwarded": false,
            "sender_device": {"user_id": "@bot:s", "device_id": "BOT", "ed25519": "E",
                              "curve25519": "K", "display_name": null, "trust_state": "unset",
                              "keys_match_session": true}
        }))
        .unwrap();
        assert!(!message.sent_by_own_device());
        message.sender = "@bot:s".into();
        assert!(message.sent_by_own_device());
        message.forwarded = Some(true);
        assert!(!message.sent_by_own_device());
    }
}

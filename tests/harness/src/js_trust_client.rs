//! A second, independent end-to-end-encrypting Matrix client for tests:
//! matrix-js-sdk with its Rust crypto (`@matrix-org/matrix-sdk-crypto-wasm`, the
//! crypto Element Web uses), driven over line-delimited JSON.
//!
//! [`JsTrustClient`] runs `tests/matrix-js/trust_client.mjs` with Node.js. Where the
//! matrix-nio client ([`crate::E2eeTestClient`]) tells whether a message decrypts and
//! which device's session it came from, this one answers Element's trust questions
//! for a received message: the shield `getEncryptionInfoForEvent` gives it (colour
//! and reason), the sender's device, and the user and device verification status
//! behind that shield.
//!
//! Its crypto store is in memory (the wasm store persists only to IndexedDB, which
//! Node lacks): every client is a new device. The store directory holds its log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::e2ee_client::{MessageFilter, SentText};
use crate::json_lines::JsonLinesChild;
use crate::synapse::{workspace_root, Synapse, TestUser};
use crate::{Error, Result};

/// Bound on start-up (loading the SDK and the wasm) and on commands that do not wait
/// for others.
pub const JS_TRUST_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time a request gets beyond the wait it asks the script to do.
const ANSWER_SLACK: Duration = Duration::from_secs(10);

/// The Node.js binary: `$WALKIE_NODE`, else `node` on `PATH`.
pub fn node_path() -> PathBuf {
    match std::env::var_os("WALKIE_NODE") {
        Some(node) if !node.is_empty() => PathBuf::from(node),
        _ => PathBuf::from("node"),
    }
}

/// `tests/matrix-js`: the script, its `package.json`, lock file and `node_modules`.
pub fn matrix_js_dir() -> PathBuf {
    workspace_root().join("tests/matrix-js")
}

/// Who this client is after `login`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JsLogin {
    pub user_id: String,
    pub device_id: String,
    pub ed25519: String,
    pub curve25519: String,
    /// `getCrypto().getVersion()`: the matrix-sdk-crypto and vodozemac versions.
    pub crypto_version: String,
}

/// A room as this client's sync sees it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JsRoomState {
    pub room_id: String,
    pub encrypted: bool,
    /// Joined members (sorted user ids).
    pub joined: Vec<String>,
}

/// js-sdk's `EventShieldColour`: what Element draws beside a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShieldColour {
    /// No shield: nothing to warn about.
    None,
    Grey,
    Red,
}

/// js-sdk's `EventShieldReason`: why there is a shield.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShieldReason {
    Unknown,
    /// The sender's identity is not verified by us (only in strict mode, which
    /// Element does not use).
    UnverifiedIdentity,
    /// The sending device is not signed by its owner's self-signing key.
    UnsignedDevice,
    /// The sending device is not (or no longer) among the sender's devices.
    UnknownDevice,
    /// The key came from a source that cannot vouch for the sender (key backup,
    /// forwarding).
    AuthenticityNotGuaranteed,
    MismatchedSenderKey,
    SentInClear,
    /// The sender was verified before and their identity changed since.
    VerificationViolation,
    /// A name this enum does not know (a newer js-sdk).
    #[serde(other)]
    Other,
}

/// `getEncryptionInfoForEvent(event)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Shield {
    pub colour: ShieldColour,
    pub reason: Option<ShieldReason>,
}

/// One of the sender's devices: the one whose curve25519 key shared the Megolm
/// session the event was decrypted with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JsSenderDevice {
    pub user_id: String,
    pub device_id: String,
    pub ed25519: Option<String>,
    pub curve25519: Option<String>,
    pub display_name: Option<String>,
    /// The device's ed25519 key is the one the room key claimed.
    pub keys_match_session: bool,
}

/// `getUserVerificationStatus(sender)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct UserVerification {
    pub verified: bool,
    /// We verified the sender's identity (our user-signing key signed their master).
    pub cross_signing_verified: bool,
    pub was_cross_signing_verified: bool,
    /// The sender's identity changed since we first saw it (TOFU broken).
    pub needs_user_approval: bool,
}

/// `getDeviceVerificationStatus(sender, device)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct DeviceVerification {
    /// Signed by its owner's self-signing key.
    pub signed_by_owner: bool,
    /// Signed by its owner and the owner is verified by us.
    pub cross_signing_verified: bool,
    /// Verified by hand on this device.
    pub local_verified: bool,
    pub verified: bool,
}

/// What matrix-js-sdk's crypto says about a received message.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TrustReport {
    pub event_id: String,
    pub room_id: String,
    pub sender: String,
    /// Arrived as `m.room.encrypted`.
    pub encrypted: bool,
    /// Arrived encrypted and decrypted.
    pub decrypted: bool,
    /// The (decrypted) content.
    pub content: Value,
    /// `None` for an event that was not decrypted here (plain).
    pub shield: Option<Shield>,
    /// curve25519 key of the device that shared the Megolm session (over Olm).
    pub sender_curve25519: Option<String>,
    /// ed25519 key the room key claims for its sender.
    pub sender_claimed_ed25519: Option<String>,
    /// The deprecated, unauthenticated `device_id` of the encrypted content.
    pub claimed_device_id: Option<String>,
    /// The key came from key backup or forwarding (js-sdk's `isKeySourceUntrusted`).
    pub key_source_untrusted: Option<bool>,
    /// `None` when no device of the sender owns the session's curve25519 key (a
    /// device of another user encrypted it, or one the sender no longer lists).
    pub sender_device: Option<JsSenderDevice>,
    /// The sender has published a master key (`userHasCrossSigningKeys`).
    pub sender_has_cross_signing_keys: bool,
    pub user_verification: UserVerification,
    pub device_verification: Option<DeviceVerification>,
}

impl TrustReport {
    /// The sender's own device encrypted it and Element shows no warning: decrypted,
    /// no shield, the session's device is the sender's with the claimed keys.
    pub fn no_warning(&self) -> bool {
        self.decrypted
            && self.shield.is_some_and(|s| s.colour == ShieldColour::None)
            && self
                .sender_device
                .as_ref()
                .is_some_and(|d| d.user_id == self.sender && d.keys_match_session)
    }

    /// The sending device's id (from the crypto, not the event's claim).
    pub fn sender_device_id(&self) -> Option<&str> {
        self.sender_device.as_ref().map(|d| d.device_id.as_str())
    }

    /// The content's `body`.
    pub fn body(&self) -> Option<&str> {
        self.content.get("body").and_then(Value::as_str)
    }
}

/// An encrypted event this client could not decrypt, and js-sdk's reason.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JsUndecryptable {
    pub event_id: String,
    pub room_id: String,
    pub sender: String,
    pub session_id: Option<String>,
    pub claimed_device_id: Option<String>,
    /// js-sdk's `DecryptionFailureCode`: `MEGOLM_UNKNOWN_INBOUND_SESSION_ID`,
    /// `MEGOLM_KEY_WITHHELD`, `HISTORICAL_MESSAGE_USER_NOT_JOINED`, ...
    pub reason: String,
    /// The text js-sdk puts in place of the body.
    pub message: Option<String>,
}

/// A matrix-js-sdk client in its own Node.js process. Dropping it ends the process.
pub struct JsTrustClient {
    inner: JsonLinesChild,
    store_dir: PathBuf,
}

impl std::fmt::Debug for JsTrustClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsTrustClient")
            .field("label", &self.inner.label())
            .field("store_dir", &self.store_dir)
            .finish_non_exhaustive()
    }
}

impl JsTrustClient {
    /// Starts the Node.js client (its log is `js_trust_client.log` in `store_dir`,
    /// created if missing) and waits until the SDK is loaded. Not logged in yet.
    ///
    /// # Panics
    /// When `tests/matrix-js/node_modules` is missing (`scripts/setup.sh` runs
    /// `npm ci` there).
    pub async fn spawn(store_dir: impl AsRef<Path>) -> Result<JsTrustClient> {
        let store_dir = store_dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&store_dir)
            .map_err(|e| Error::io(format!("creating {}", store_dir.display()), e))?;
        let dir = matrix_js_dir();
        if !dir.join("node_modules/matrix-js-sdk").is_dir() {
            panic!(
                "{} has no node_modules/matrix-js-sdk: run scripts/setup.sh (it runs `npm ci` there)",
                dir.display()
            );
        }
        let mut command = Command::new(node_path());
        command
            .arg(dir.join("trust_client.mjs"))
            .current_dir(&store_dir);
        let inner = JsonLinesChild::spawn(
            "js-sdk trust client",
            command,
            store_dir.join("js_trust_client.log"),
            |client, message, log_tail| Error::JsTrustClient {
                client,
                message,
                log_tail,
            },
            JS_TRUST_CLIENT_TIMEOUT,
        )
        .await?;
        Ok(JsTrustClient { inner, store_dir })
    }

    /// Spawns a client and logs `user` in on `synapse` with its password.
    pub async fn login_user(
        synapse: &Synapse,
        user: &TestUser,
        store_dir: impl AsRef<Path>,
    ) -> Result<(JsTrustClient, JsLogin)> {
        let client = JsTrustClient::spawn(store_dir).await?;
        let login = client
            .login(&synapse.url(), &user.user_id, &user.password, None)
            .await?;
        Ok((client, login))
    }

    /// Password login (a new device, `device_id` if given), Rust crypto with an
    /// in-memory store, syncing; answers once the device keys are on the homeserver.
    pub async fn login(
        &self,
        homeserver: &str,
        user_id: &str,
        password: &str,
        device_id: Option<&str>,
    ) -> Result<JsLogin> {
        self.inner.set_label(user_id);
        let answer = self
            .inner
            .request(
                json!({"cmd": "login", "homeserver": homeserver, "user_id": user_id,
                       "password": password, "device_id": device_id,
                       "timeout": JS_TRUST_CLIENT_TIMEOUT.as_secs_f64()}),
                JS_TRUST_CLIENT_TIMEOUT + ANSWER_SLACK,
            )
            .await?;
        let login: JsLogin = self.inner.parse(answer, "login")?;
        self.inner
            .set_label(format!("{} ({})", login.user_id, login.device_id));
        Ok(login)
    }

    /// Joins; answers once the join is in this client's sync.
    pub async fn join(&self, room_id: &str) -> Result<JsRoomState> {
        let answer = self
            .inner
            .request(
                json!({"cmd": "join", "room_id": room_id,
                       "timeout": JS_TRUST_CLIENT_TIMEOUT.as_secs_f64()}),
                JS_TRUST_CLIENT_TIMEOUT + ANSWER_SLACK,
            )
            .await?;
        self.inner.parse(answer, "join")
    }

    /// Sends an `m.text` (Megolm-encrypted by the Rust crypto in an encrypted room).
    pub async fn send_text(&self, room_id: &str, body: &str) -> Result<SentText> {
        let answer = self
            .inner
            .request(
                json!({"cmd": "send_text", "room_id": room_id, "body": body}),
                JS_TRUST_CLIENT_TIMEOUT + ANSWER_SLACK,
            )
            .await?;
        self.inner.parse(answer, "send_text")
    }

    /// Waits for the oldest decrypted (or plain) `m.audio` from another user not
    /// taken before that matches `filter`, and reports the crypto's trust in it.
    pub async fn wait_audio(
        &self,
        filter: &MessageFilter,
        timeout: Duration,
    ) -> Result<TrustReport> {
        let mut request = json!({"cmd": "wait_audio", "timeout": timeout.as_secs_f64()});
        filter.apply(&mut request);
        let answer = self.inner.request(request, timeout + ANSWER_SLACK).await?;
        self.inner.parse(answer, "wait_audio")
    }

    /// Events from other users that failed to decrypt (and have not decrypted since).
    pub async fn undecryptable(&self) -> Result<Vec<JsUndecryptable>> {
        let answer = self
            .inner
            .request(json!({"cmd": "undecryptable"}), JS_TRUST_CLIENT_TIMEOUT)
            .await?;
        self.inner.parse(answer["events"].clone(), "undecryptable")
    }

    /// Waits for an event matching `filter` (its `body_contains` is ignored: there
    /// is no body) that failed to decrypt and was not returned by an earlier call.
    pub async fn wait_undecryptable(
        &self,
        filter: &MessageFilter,
        timeout: Duration,
    ) -> Result<JsUndecryptable> {
        let mut request = json!({"cmd": "wait_undecryptable", "timeout": timeout.as_secs_f64()});
        filter.apply(&mut request);
        request["body_contains"] = Value::Null;
        let answer = self.inner.request(request, timeout + ANSWER_SLACK).await?;
        self.inner.parse(answer, "wait_undecryptable")
    }

    /// Every event the script pushed so far (`ready`, `message`, `undecryptable`,
    /// `sync_state`), oldest first.
    pub fn events(&self) -> Vec<Value> {
        self.inner.events()
    }

    /// Stops syncing and ends the process.
    pub async fn stop(self) -> Result<()> {
        self.inner
            .request(json!({"cmd": "stop"}), JS_TRUST_CLIENT_TIMEOUT)
            .await?;
        self.inner.close(JS_TRUST_CLIENT_TIMEOUT).await
    }

    /// The directory holding the log.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The file receiving the script's stderr (js-sdk's and the Rust crypto's logs).
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

    fn report(shield: Value, owner: &str) -> TrustReport {
        serde_json::from_value(json!({
            "event_id": "$e", "room_id": "!r:s", "sender": "@a:s", "encrypted": true,
            "decrypted": true, "content": {"msgtype": "m.audio", "body": "Voice message"},
            "shield": shield, "sender_curve25519": "K", "sender_claimed_ed25519": "E",
            "claimed_device_id": "D", "key_source_untrusted": false,
            "sender_device": {"user_id": owner, "device_id": "D", "ed25519": "E",
                              "curve25519": "K", "display_name": null,
                              "keys_match_session": true},
            "sender_has_cross_signing_keys": true,
            "user_verification": {"verified": false, "cross_signing_verified": false,
                                  "was_cross_signing_verified": false,
                                  "needs_user_approval": false},
            "device_verification": {"signed_by_owner": true, "cross_signing_verified": false,
                                    "local_verified": false, "verified": false}
        }))
        .unwrap()
    }

    #[test]
    fn a_report_without_a_shield_is_no_warning() {
        let ok = report(json!({"colour": "NONE", "reason": null}), "@a:s");
        assert!(ok.no_warning());
        assert_eq!(ok.sender_device_id(), Some("D"));
        assert_eq!(ok.body(), Some("Voice message"));
    }

    #[test]
    fn a_red_shield_or_another_owner_is_a_warning() {
        let red = report(
            json!({"colour": "RED", "reason": "UNSIGNED_DEVICE"}),
            "@a:s",
        );
        assert_eq!(
            red.shield,
            Some(Shield {
                colour: ShieldColour::Red,
                reason: Some(ShieldReason::UnsignedDevice)
            })
        );
        assert!(!red.no_warning());
        assert!(!report(json!({"colour": "NONE", "reason": null}), "@bot:s").no_warning());
        assert!(!report(Value::Null, "@a:s").no_warning());
        let newer = report(
            json!({"colour": "RED", "reason": "MISMATCHED_SENDER"}),
            "@a:s",
        );
        assert_eq!(
            newer.shield.and_then(|s| s.reason),
            Some(ShieldReason::Other)
        );
    }
}

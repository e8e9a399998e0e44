//! Posts queued recordings as voice messages, until the homeserver accepts them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use ruma::{OwnedMxcUri, OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use matrix_sdk_crypto::{AttachmentEncryptor, MediaEncryptionInfo};

use super::spool_reader::SpoolReader;
use super::voice_message::{voice_message_content, voice_message_file_name, VoiceMessage};
use super::OutboxItem;
use crate::matrix::crypto::EncryptionSettings;
use crate::matrix::room_sender::{RoomSender, SendError};
use crate::matrix::{Homeserver, MatrixError, PuppetError, Puppets};
use crate::store::{OutboxEntry, Store};

/// Event id recorded for an item given up on (its spool file is gone before
/// upload, or its row names no valid room or user). The store has no state
/// for "abandoned", and the item must leave the queue rather than be retried
/// forever; a value that can never be a real event id (those start with `$`)
/// does that while keeping the row, with the reason after the prefix, for the
/// operator to find.
pub const ABANDONED_PREFIX: &str = "walkie:abandoned: ";

/// Timing of the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxSettings {
    /// Delay after the first transient failure; doubles with each further one.
    pub first_retry: Duration,
    /// Longest delay; also the delay after a non-transient failure (403, 404…),
    /// which needs an operator to fix something and is retried slowly.
    pub max_retry: Duration,
    /// Relative spread of each delay (0.2 = ±20 %), so items that failed
    /// together do not all come back in the same instant.
    pub jitter: f64,
    /// Items read from the store per pass.
    pub batch: u32,
    /// Longest idle wait between looks at the store, for items this worker did
    /// not schedule itself (queued by recovery, or failed in an earlier run).
    pub poll: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            first_retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(60),
            jitter: 0.2,
            batch: 16,
            poll: Duration::from_secs(5),
        }
    }
}

impl OutboxSettings {
    /// Delay before the attempt after `failures` failed ones.
    fn backoff(&self, failures: u32, transient: bool) -> Duration {
        let base = if transient {
            let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(30));
            self.first_retry.saturating_mul(factor).min(self.max_retry)
        } else {
            self.max_retry
        };
        let spread = if self.jitter > 0.0 {
            rand::random_range(-self.jitter..=self.jitter)
        } else {
            0.0
        };
        base.mul_f64((1.0 + spread).max(0.0))
    }
}

/// Wakes the outbox after an item was queued; cheap to clone.
#[derive(Clone, Debug)]
pub struct OutboxWaker(Arc<Notify>);

impl OutboxWaker {
    /// A wake-up is remembered if the outbox is busy, so none is lost.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// The worker that uploads and posts queued recordings (see the module docs of
/// [`archive`](super)). One per bridge: two workers on one database would
/// upload the same files twice (though never post twice).
pub struct Outbox {
    store: Store,
    homeserver: Homeserver,
    settings: OutboxSettings,
    notify: Arc<Notify>,
    /// Makes sure a sender may post before its first attempt.
    puppets: Option<Puppets>,
    /// Encrypts for encrypted rooms. Without it (tests of the plain path only)
    /// every room is taken for a plain one.
    rooms: Option<RoomSender>,
    reader: SpoolReader,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// How an attempt ended.
enum Outcome {
    Posted,
    /// Failed; try again at this time.
    Retry(SystemTime),
    /// Left the queue without being posted.
    GivenUp,
}

#[derive(Clone, Copy)]
enum Step {
    Upload,
    Post,
    /// Encrypting for an encrypted room (the recording is held, never sent
    /// in plaintext).
    Encrypt,
}

impl Outbox {
    pub fn new(store: Store, homeserver: Homeserver) -> Self {
        Self::with_settings(store, homeserver, OutboxSettings::default())
    }

    pub fn with_settings(store: Store, homeserver: Homeserver, settings: OutboxSettings) -> Self {
        Self {
            store,
            homeserver,
            settings,
            notify: Arc::new(Notify::new()),
            puppets: None,
            rooms: None,
            reader: SpoolReader::start(),
        }
    }

    /// Posts through `rooms`: encrypted, with an encrypted upload, in every room
    /// that has encryption on at the time of posting.
    pub fn with_room_sender(mut self, rooms: RoomSender) -> Self {
        self.rooms = Some(rooms);
        self
    }

    /// Lets the outbox register and join a puppet that is not in the room yet —
    /// its talk may have started while the homeserver was down.
    pub fn with_puppets(mut self, puppets: Puppets) -> Self {
        self.puppets = Some(puppets);
        self
    }

    /// The handle the recording side calls after enqueueing.
    pub fn waker(&self) -> OutboxWaker {
        OutboxWaker(self.notify.clone())
    }

    /// Works the queue until `shutdown`; the request in flight then finishes
    /// (an upload is recorded, a post is recorded) before this returns.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!("archive outbox running");
        let mut next_retry: Option<SystemTime> = None;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            self.report_gauges().await;
            let now = SystemTime::now();
            next_retry = next_retry.filter(|t| *t > now);
            let due = match self.store.due_outbox(now, self.settings.batch).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the archive outbox; trying again");
                    next_retry = Some(now + self.settings.poll);
                    Vec::new()
                }
            };
            let full = due.len() == self.settings.batch as usize;
            for entry in due {
                if shutdown.is_cancelled() {
                    break;
                }
                if let Outcome::Retry(at) = self.deliver(entry).await {
                    next_retry = Some(next_retry.map_or(at, |t| t.min(at)));
                }
            }
            if full {
                continue;
            }
            let wait = next_retry
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
                .unwrap_or(self.settings.poll)
                .min(self.settings.poll);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = self.notify.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!("archive outbox stopped");
    }

    async fn report_gauges(&self) {
        if let Ok(depth) = self.store.outbox_depth().await {
            metrics::gauge!("walkie_archive_outbox_depth").set(depth as f64);
        }
        if let Ok(age) = self.store.outbox_oldest_age(SystemTime::now()).await {
            metrics::gauge!("walkie_archive_outbox_oldest_age_seconds")
                .set(age.map_or(0.0, |a| a.as_secs_f64()));
        }
    }

    async fn deliver(&self, entry: OutboxEntry) -> Outcome {
        let span = tracing::info_span!("archive", channel = %entry.item.channel, tx = %entry.item.tx,
            attempt = entry.attempts + 1);
        self.deliver_inner(entry).instrument(span).await
    }

    async fn deliver_inner(&self, entry: OutboxEntry) -> Outcome {
        let item = &entry.item;
        let sender = match crate::matrix::ids::parse_user_id(&item.sender) {
            Ok(u) => u,
            Err(e) => {
                return self
                    .give_up(
                        item,
                        &format!("sender {:?} is not a user id: {e}", item.sender),
                    )
                    .await
            }
        };
        let room = match crate::matrix::ids::parse_room_id(&item.room_id) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .give_up(
                        item,
                        &format!("room {:?} is not a room id: {e}", item.room_id),
                    )
                    .await
            }
        };
        if let Some(puppets) = &self.puppets {
            if let Err(e) = puppets.ensure_member(&sender, &room).await {
                let matrix = match &e {
                    PuppetError::Matrix(m) => Some(m),
                    _ => None,
                };
                let transient = matrix.is_some_and(MatrixError::is_transient);
                return self
                    .failed(
                        &entry,
                        &room,
                        &sender,
                        Step::Post,
                        &e.to_string(),
                        transient,
                        matrix,
                    )
                    .await;
            }
        }
        let file_name = voice_message_file_name(&item.channel, item.created_at);
        let settings = match self.room_encryption(&entry, &room, &sender).await {
            Ok(settings) => settings,
            Err(outcome) => return outcome,
        };
        let stored = entry.mxc_uri.as_ref().map(|mxc| {
            let encryption = entry
                .mxc_encryption
                .as_deref()
                .and_then(|json| serde_json::from_str::<MediaEncryptionInfo>(json).ok());
            (OwnedMxcUri::from(mxc.as_str()), encryption)
        });
        let (mxc, encryption) = match stored {
            // A plaintext upload for a room that is encrypted now never goes out.
            Some((_, None)) if settings.is_some() => {
                if let Err(e) = self.store.outbox_upload_discarded(item.tx).await {
                    tracing::error!(error = %e, "cannot discard a plaintext upload");
                    return Outcome::Retry(SystemTime::now() + self.settings.first_retry);
                }
                tracing::info!(
                    "the room turned on encryption after the upload; uploading encrypted"
                );
                match self
                    .upload(&entry, &room, &sender, &file_name, settings.is_some())
                    .await
                {
                    Ok(uploaded) => uploaded,
                    Err(outcome) => return outcome,
                }
            }
            Some(stored) => stored,
            None => match self
                .upload(&entry, &room, &sender, &file_name, settings.is_some())
                .await
            {
                Ok(uploaded) => uploaded,
                Err(outcome) => return outcome,
            },
        };
        // The upload took a while: a room that was plain before it is read again,
        // so nothing goes out in plaintext after an m.room.encryption.
        let settings = match settings {
            Some(settings) => Some(settings),
            None => match self.room_encryption(&entry, &room, &sender).await {
                Ok(None) => None,
                Ok(Some(_)) if encryption.is_none() => {
                    // Next attempt (now) uploads encrypted.
                    return Outcome::Retry(SystemTime::now());
                }
                Ok(Some(settings)) => Some(settings),
                Err(outcome) => return outcome,
            },
        };
        let mut message = VoiceMessage::of(item, &mxc, &file_name);
        if let Some(encryption) = &encryption {
            message = message.encrypted(encryption);
        }
        let content = voice_message_content(&message);
        let txn_id = item.tx.to_string();
        let sent = match &self.rooms {
            Some(rooms) => {
                rooms
                    .send_with(
                        &room,
                        &sender,
                        settings,
                        "m.room.message",
                        &txn_id,
                        &content,
                    )
                    .await
            }
            None => self
                .homeserver
                .send(&room, "m.room.message", &txn_id, &content, &sender)
                .await
                .map(|event_id| crate::matrix::room_sender::Sent {
                    event_id,
                    encrypted: false,
                })
                .map_err(SendError::from),
        };
        match sent {
            Ok(sent) => {
                let event_id = sent.event_id;
                if let Err(e) = self.store.outbox_posted(item.tx, event_id.as_str()).await {
                    // Posted all the same; the retry this causes gets the same
                    // event back from the homeserver's transaction dedupe.
                    tracing::error!(error = %e, %event_id, "voice message posted but not recorded");
                }
                remove_spool_file(item);
                metrics::counter!("walkie_archive_voice_messages_posted_total",
                    "channel" => item.channel.clone())
                .increment(1);
                let delay = SystemTime::now()
                    .duration_since(item.created_at)
                    .unwrap_or_default();
                metrics::histogram!("walkie_archive_post_delay_seconds")
                    .record(delay.as_secs_f64());
                tracing::info!(%event_id, room = %room, sender = %sender, duration_ms = item.duration_ms,
                    encrypted = sent.encrypted, "voice message posted");
                Outcome::Posted
            }
            Err(e @ SendError::Crypto { .. }) => {
                self.hold_unencryptable(&entry, &room, &sender, &e).await
            }
            Err(e) => {
                self.failed(
                    &entry,
                    &room,
                    &sender,
                    Step::Post,
                    &e.to_string(),
                    e.is_transient(),
                    e.matrix(),
                )
                .await
            }
        }
    }

    /// The room's encryption settings now (`None`: plain); a failure to read them
    /// is a failed attempt (it is not taken for "plain").
    async fn room_encryption(
        &self,
        entry: &OutboxEntry,
        room: &OwnedRoomId,
        sender: &OwnedUserId,
    ) -> Result<Option<EncryptionSettings>, Outcome> {
        let Some(rooms) = &self.rooms else {
            return Ok(None);
        };
        match rooms.encryption(room, sender).await {
            Ok(settings) => Ok(settings),
            Err(e) => Err(self
                .failed(
                    entry,
                    room,
                    sender,
                    Step::Post,
                    &e.to_string(),
                    e.is_transient(),
                    e.matrix(),
                )
                .await),
        }
    }

    /// The room is encrypted and this recording cannot be encrypted (yet): it
    /// stays in the outbox, and the room is told once, at the first such failure.
    async fn hold_unencryptable(
        &self,
        entry: &OutboxEntry,
        room: &OwnedRoomId,
        sender: &OwnedUserId,
        error: &SendError,
    ) -> Outcome {
        if let (Some(rooms), 0) = (&self.rooms, entry.attempts) {
            let bot = rooms.bot().to_owned();
            let text = format!(
                "A transmission could not be encrypted for this room yet ({error}). It is kept \
                 and will be posted as soon as the bridge can encrypt it; it is never sent \
                 unencrypted."
            );
            let content = serde_json::json!({"msgtype": "m.notice", "body": text});
            let txn = format!("walkie-held-{}", entry.item.tx);
            if let Err(e) = rooms
                .send(room, &bot, "m.room.message", &txn, &content)
                .await
            {
                tracing::warn!(error = %e, "cannot tell the room that a recording is held");
            }
        }
        self.failed(
            entry,
            room,
            sender,
            Step::Encrypt,
            &error.to_string(),
            error.is_transient(),
            error.matrix(),
        )
        .await
    }

    /// Uploads the spool file — encrypted (AES-CTR with a fresh key, SHA-256 of
    /// the ciphertext, by matrix-sdk-crypto) when `encrypt` — and records its URI
    /// and key, so a crash from here on does not upload it again.
    async fn upload(
        &self,
        entry: &OutboxEntry,
        room: &OwnedRoomId,
        sender: &OwnedUserId,
        file_name: &str,
        encrypt: bool,
    ) -> Result<(OwnedMxcUri, Option<MediaEncryptionInfo>), Outcome> {
        let item = &entry.item;
        let data = match self.reader.read(&item.path).await {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self
                    .give_up(
                        item,
                        &format!("spool file {} is missing", item.path.display()),
                    )
                    .await)
            }
            Err(e) => {
                let error = format!("cannot read spool file {}: {e}", item.path.display());
                return Err(self
                    .failed(entry, room, sender, Step::Upload, &error, false, None)
                    .await);
            }
        };
        let (data, mimetype, encryption) = if encrypt {
            match encrypt_attachment(&data) {
                Ok((ciphertext, info)) => (ciphertext, ENCRYPTED_MIMETYPE, Some(info)),
                Err(e) => {
                    let error = format!("cannot encrypt the recording: {e}");
                    return Err(self
                        .failed(entry, room, sender, Step::Encrypt, &error, false, None)
                        .await);
                }
            }
        } else {
            (data, item.mimetype.as_str(), None)
        };
        let mxc = match self
            .homeserver
            .upload(data, mimetype, file_name, sender)
            .await
        {
            Ok(mxc) => mxc,
            Err(e) => {
                return Err(self
                    .failed(
                        entry,
                        room,
                        sender,
                        Step::Upload,
                        &e.to_string(),
                        e.is_transient(),
                        Some(&e),
                    )
                    .await)
            }
        };
        let recorded = match &encryption {
            None => self.store.outbox_uploaded(item.tx, mxc.as_str()).await,
            Some(info) => match serde_json::to_string(info) {
                Ok(json) => {
                    self.store
                        .outbox_uploaded_encrypted(item.tx, mxc.as_str(), &json)
                        .await
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot serialise the upload's key");
                    Ok(false)
                }
            },
        };
        if let Err(e) = recorded {
            tracing::error!(error = %e, %mxc, "upload not recorded; a retry uploads again");
        }
        tracing::debug!(%mxc, encrypted = encryption.is_some(), "voice message uploaded");
        Ok((mxc, encryption))
    }

    #[allow(clippy::too_many_arguments)]
    async fn failed(
        &self,
        entry: &OutboxEntry,
        room: &OwnedRoomId,
        sender: &OwnedUserId,
        step: Step,
        error: &str,
        transient: bool,
        matrix: Option<&MatrixError>,
    ) -> Outcome {
        let item = &entry.item;
        let (what, counter) = match step {
            Step::Upload => ("upload", "walkie_archive_upload_failures_total"),
            Step::Post => ("post", "walkie_archive_post_failures_total"),
            Step::Encrypt => ("encryption", "walkie_archive_encrypt_failures_total"),
        };
        metrics::counter!(counter, "channel" => item.channel.clone()).increment(1);
        let failures = entry.attempts.saturating_add(1);
        // A held recording is tried again on the fast schedule even when the cause
        // looks permanent: keys arriving or an operator fixing the crypto store
        // ends the hold, and a talk should not wait a minute after that.
        let delay = self
            .settings
            .backoff(failures, transient || matches!(step, Step::Encrypt));
        let next = SystemTime::now() + delay;
        let retry_in_ms = delay.as_millis() as u64;
        if transient {
            tracing::warn!(%error, retry_in_ms, "voice message {what} failed; retrying");
        } else {
            let fix = operator_hint(matrix, step, room, sender);
            tracing::error!(%error, retry_in_ms, fix, "voice message {what} refused; retrying slowly");
        }
        if let Err(e) = self.store.outbox_failed(item.tx, error, next).await {
            tracing::error!(error = %e, "cannot record the failed attempt");
        }
        Outcome::Retry(next)
    }

    async fn give_up(&self, item: &OutboxItem, reason: &str) -> Outcome {
        tracing::error!(%reason, path = %item.path.display(), room = %item.room_id,
            "voice message given up: this transmission will not be archived");
        metrics::counter!("walkie_archive_abandoned_total", "channel" => item.channel.clone())
            .increment(1);
        let marker = format!("{ABANDONED_PREFIX}{reason}");
        if let Err(e) = self.store.outbox_posted(item.tx, &marker).await {
            tracing::error!(error = %e, "cannot take the item out of the queue");
        }
        Outcome::GivenUp
    }
}

/// What the operator has to change for a refused request to succeed.
fn operator_hint(
    error: Option<&MatrixError>,
    step: Step,
    room: &RoomId,
    sender: &UserId,
) -> String {
    let Some(MatrixError::Api {
        status, errcode, ..
    }) = error
    else {
        if matches!(step, Step::Encrypt) {
            return format!(
                "the recording stays in the outbox, unencrypted on the bridge only: check the \
                 crypto store ([encryption] store_dir) and the homeserver's appservice \
                 encryption settings (docs/encryption.md); {sender} must be able to have a device"
            );
        }
        return match error {
            None => "check that the bridge may read its spool directory".into(),
            Some(_) => "check the homeserver URL and its logs".into(),
        };
    };
    match (*status, errcode.as_str(), step) {
        (StatusCode::UNAUTHORIZED, ..) | (_, "M_UNKNOWN_TOKEN" | "M_MISSING_TOKEN", _) => {
            "the homeserver does not accept appservice.as_token: install the registration \
             generated from this config on the homeserver and restart it"
                .into()
        }
        (StatusCode::PAYLOAD_TOO_LARGE, ..) | (_, "M_TOO_LARGE", _) => {
            "the recording is larger than the homeserver's max_upload_size: raise it".into()
        }
        (StatusCode::FORBIDDEN, _, Step::Post) => format!(
            "{sender} may not post in {room}: it must be joined, and the room's power levels \
             must let it send m.room.message"
        ),
        (StatusCode::FORBIDDEN, _, Step::Upload) => format!(
            "{sender} may not upload media: check that it is registered in the appservice's \
             user namespace and the homeserver's media settings"
        ),
        (StatusCode::NOT_FOUND, _, Step::Post) => {
            format!("the homeserver does not know room {room}: check the channel's room")
        }
        _ => "see the homeserver's log for why it refused".into(),
    }
}

/// What an encrypted file is uploaded as: the media repository sees only bytes.
const ENCRYPTED_MIMETYPE: &str = "application/octet-stream";

/// The recording encrypted as the spec's attachments are (AES-256-CTR, a fresh
/// key and IV, SHA-256 of the ciphertext): matrix-sdk-crypto's own encryptor.
fn encrypt_attachment(data: &[u8]) -> std::io::Result<(Vec<u8>, MediaEncryptionInfo)> {
    use std::io::Read;
    let mut reader = data;
    let mut encryptor = AttachmentEncryptor::new(&mut reader);
    let mut ciphertext = Vec::with_capacity(data.len());
    encryptor.read_to_end(&mut ciphertext)?;
    Ok((ciphertext, encryptor.finish()))
}

fn remove_spool_file(item: &OutboxItem) {
    if let Err(e) = std::fs::remove_file(&item.path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %item.path.display(), error = %e, "cannot delete posted recording");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_the_cap() {
        let s = OutboxSettings {
            jitter: 0.0,
            ..OutboxSettings::default()
        };
        let secs: Vec<u64> = (1..=9).map(|n| s.backoff(n, true).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(s.backoff(1, false), Duration::from_secs(60));
        assert_eq!(s.backoff(u32::MAX, true), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        let s = OutboxSettings::default();
        for _ in 0..200 {
            let d = s.backoff(3, true).as_secs_f64();
            assert!((3.2..=4.8).contains(&d), "{d}");
        }
    }
}

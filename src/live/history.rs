//! A channel's recent transmissions for the live page (`get_history`), and their
//! recordings fetched back for replay (`play_recording`).
//!
//! What the bridge archived is what it serves: the outbox's posted rows say which
//! transmissions became voice messages, the homeserver's media repository holds
//! the recordings (encrypted in an encrypted room, with the key in the row), so
//! the bridge keeps no second copy of anyone's audio on its disk. Only a client
//! logged on to the channel asks (its logon checked the room's membership, and
//! leaving the room ends the logon), and only for the latest [`MAX_HISTORY`]
//! transmissions, each at most [`MAX_RECORDING`] bytes.

use std::io::Read;

use bytes::Bytes;
use matrix_sdk_crypto::{AttachmentDecryptor, MediaEncryptionInfo};
use serde::Serialize;
use tracing::warn;
use walkie_endpoint::audio::read_ogg_opus;

use super::auth::Refusal;
use super::protocol::ErrorCode;
use crate::matrix::Homeserver;
use crate::store::{OutboxEntry, Store};

/// The most transmissions one `get_history` lists, and how far back a replay
/// may reach.
pub const MAX_HISTORY: u32 = 50;
/// What `get_history` lists without a `limit`.
pub const DEFAULT_HISTORY: u32 = 20;
/// The largest recording replayed: ~45 minutes of the bridge's 24 kbit/s Opus,
/// far beyond any talk the floor allows.
const MAX_RECORDING: usize = 8 * 1024 * 1024;

/// One archived transmission, as `get_history` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Archived {
    pub tx_id: String,
    /// Who talked, as shown ("kilo (Mumble)"); empty when not known.
    pub talker: String,
    /// When the transmission started (unix ms).
    pub started_ms: u64,
    pub duration_ms: u64,
}

/// A recording ready to replay: its Opus packets, as archived.
#[derive(Debug)]
pub struct Recording {
    pub tx_id: String,
    pub talker: String,
    pub duration_ms: u64,
    pub packets: Vec<Bytes>,
}

pub struct History {
    store: Store,
    homeserver: Homeserver,
}

impl History {
    pub fn new(store: Store, homeserver: Homeserver) -> Self {
        Self { store, homeserver }
    }

    /// The latest `limit` (at most [`MAX_HISTORY`]) transmissions of `channel`
    /// archived in its room, newest first.
    pub async fn list(&self, channel: &str, limit: u32) -> Result<Vec<Archived>, Refusal> {
        let entries = self.archived(channel, limit.clamp(1, MAX_HISTORY)).await?;
        Ok(entries.iter().map(archived).collect())
    }

    /// The recording of transmission `tx_id` of `channel`, if it is among the
    /// latest [`MAX_HISTORY`] archived there.
    pub async fn recording(&self, channel: &str, tx_id: &str) -> Result<Recording, Refusal> {
        let entries = self.archived(channel, MAX_HISTORY).await?;
        let Some(entry) = entries.iter().find(|e| e.item.tx.to_string() == tx_id) else {
            return Err(Refusal::new(
                ErrorCode::UnknownRecording,
                format!(
                    "no recording {tx_id:?} among the last {MAX_HISTORY} of this channel; \
                     ask get_history for what there is"
                ),
            ));
        };
        let Some(mxc) = entry.mxc_uri.as_deref() else {
            return Err(unavailable("it was posted without an upload"));
        };
        let bytes = self
            .homeserver
            .download(mxc, MAX_RECORDING)
            .await
            .map_err(|e| {
                warn!(%mxc, error = %e, "cannot fetch a recording for a replay");
                Refusal::new(
                    ErrorCode::HomeserverUnavailable,
                    "the homeserver did not give the recording back; try again",
                )
            })?;
        let ogg = match entry.mxc_encryption.as_deref() {
            None => bytes,
            Some(json) => decrypt(&bytes, json)?,
        };
        let audio = read_ogg_opus(&ogg).map_err(|e| {
            warn!(%mxc, error = %e, "an archived recording is not Ogg Opus");
            unavailable("the archived file is not readable Ogg Opus")
        })?;
        Ok(Recording {
            tx_id: entry.item.tx.to_string(),
            talker: entry.item.talker.clone(),
            duration_ms: entry.item.duration_ms,
            packets: audio.packets.into_iter().map(Bytes::from).collect(),
        })
    }

    async fn archived(&self, channel: &str, limit: u32) -> Result<Vec<OutboxEntry>, Refusal> {
        self.store.archived(channel, limit).await.map_err(|e| {
            warn!(error = %e, "cannot read the archive for a live client");
            Refusal::new(ErrorCode::Internal, "the bridge's database failed")
        })
    }
}

fn archived(entry: &OutboxEntry) -> Archived {
    Archived {
        tx_id: entry.item.tx.to_string(),
        talker: entry.item.talker.clone(),
        started_ms: super::auth::unix_ms(entry.item.created_at),
        duration_ms: entry.item.duration_ms,
    }
}

fn unavailable(why: &str) -> Refusal {
    Refusal::new(
        ErrorCode::UnknownRecording,
        format!("this recording cannot be replayed: {why}"),
    )
}

/// The recording of an encrypted room, decrypted with the key the bridge kept
/// when it uploaded it (end to bridge, as everywhere).
fn decrypt(ciphertext: &[u8], key_json: &str) -> Result<Vec<u8>, Refusal> {
    let info: MediaEncryptionInfo = serde_json::from_str(key_json)
        .map_err(|_| unavailable("its key in the bridge's database is unreadable"))?;
    let mut reader = ciphertext;
    let mut decryptor = AttachmentDecryptor::new(&mut reader, info)
        .map_err(|_| unavailable("its key does not fit"))?;
    let mut plain = Vec::with_capacity(ciphertext.len());
    decryptor
        .read_to_end(&mut plain)
        .map_err(|_| unavailable("the file does not match its hash"))?;
    Ok(plain)
}

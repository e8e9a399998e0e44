//! The archive outbox (DESIGN.md §4): every recorded transmission waits here until
//! the homeserver has accepted its `m.audio` event — nothing is lost while the
//! homeserver is down or the bridge restarts.
//!
//! A row moves through: queued → uploaded (`mxc_uri` set, so a retry after a crash
//! does not upload the file again) → posted (`event_id` set; it leaves the queue).
//! A failure at either step counts an attempt and sets when to try next. Posted
//! rows are kept (they say which event each transmission became, and
//! [`Store::posted_count`] counts them) until [`Store::prune_posted`] removes them.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use walkie_endpoint::TxId;

use super::{from_ms, on_pool, to_i64, to_ms, to_u64, Store, StoreError};

/// A recorded transmission to be archived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxItem {
    /// The transmission; also the Matrix transaction id of the `m.audio` send, so
    /// a retry cannot post twice.
    pub tx: TxId,
    /// The `[[channel]]` name.
    pub channel: String,
    pub room_id: String,
    /// Who posts it: the talker's puppet, or the bot.
    pub sender: String,
    /// The Ogg file in the spool directory.
    pub path: PathBuf,
    pub duration_ms: u64,
    /// File size in bytes.
    pub size: u64,
    /// ~100 values 0..=1024 (MSC1767 `waveform`).
    pub waveform: Vec<u16>,
    pub mimetype: String,
    /// When the transmission started; the queue is served oldest first.
    pub created_at: SystemTime,
    /// Who talked, as shown (the recording's ARTIST tag); empty when unknown.
    pub talker: String,
}

/// A queued item with its upload state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    pub item: OutboxItem,
    /// Set once the file is in the media repository.
    pub mxc_uri: Option<String>,
    /// When the upload at `mxc_uri` is encrypted: its key, IV and hashes (JSON of
    /// matrix-sdk-crypto's `MediaEncryptionInfo`), which the voice message carries.
    pub mxc_encryption: Option<String>,
    /// Failed attempts so far.
    pub attempts: u32,
    pub next_attempt_at: SystemTime,
    pub last_error: Option<String>,
}

/// The key as stored: the same text the uploader sends as transaction id.
fn tx_key(tx: TxId) -> String {
    tx.to_string()
}

type EntryRow = (
    String,         // tx_id
    String,         // channel
    String,         // room_id
    String,         // sender
    String,         // file_path
    i64,            // duration_ms
    i64,            // size_bytes
    String,         // waveform
    String,         // mimetype
    i64,            // created_at
    Option<String>, // mxc_uri
    i64,            // attempts
    i64,            // next_attempt_at
    Option<String>, // last_error
    Option<String>, // mxc_encryption
    Option<String>, // talker
);

const ENTRY_COLUMNS: &str = "tx_id, channel, room_id, sender, file_path, duration_ms, \
     size_bytes, waveform, mimetype, created_at, mxc_uri, attempts, next_attempt_at, last_error, \
     mxc_encryption, talker";

fn entry(row: EntryRow) -> Result<OutboxEntry, StoreError> {
    let (tx_id, channel, room_id, sender, path, duration, size, waveform, mimetype, created_at) = (
        row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8, row.9,
    );
    let tx = uuid::Uuid::parse_str(&tx_id)
        .map(TxId::from_uuid)
        .map_err(|e| StoreError::Corrupt {
            what: "outbox transmission id",
            detail: format!("{tx_id:?}: {e}"),
        })?;
    Ok(OutboxEntry {
        item: OutboxItem {
            tx,
            channel,
            room_id,
            sender,
            path: PathBuf::from(path),
            duration_ms: to_u64("outbox duration", duration)?,
            size: to_u64("outbox file size", size)?,
            waveform: parse_waveform(&waveform)?,
            mimetype,
            created_at: from_ms(created_at),
            talker: row.15.unwrap_or_default(),
        },
        mxc_uri: row.10,
        attempts: u32::try_from(row.11).unwrap_or(u32::MAX),
        next_attempt_at: from_ms(row.12),
        last_error: row.13,
        mxc_encryption: row.14,
    })
}

/// A JSON array of integers, `[0,512,1024]`.
fn waveform_json(waveform: &[u16]) -> String {
    let values: Vec<String> = waveform.iter().map(u16::to_string).collect();
    format!("[{}]", values.join(","))
}

fn parse_waveform(text: &str) -> Result<Vec<u16>, StoreError> {
    let corrupt = || StoreError::Corrupt {
        what: "outbox waveform",
        detail: format!("{text:?} is not a JSON array of integers 0..=65535"),
    };
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(corrupt)?;
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    inner
        .split(',')
        .map(|v| v.trim().parse::<u16>().map_err(|_| corrupt()))
        .collect()
}

impl Store {
    /// Queues a recorded transmission, due at once. Idempotent on its id: true if
    /// queued now, false if it already was (the stored row is left untouched).
    pub async fn enqueue_outbox(&self, item: &OutboxItem) -> Result<bool, StoreError> {
        let path = item.path.to_str().ok_or_else(|| StoreError::NonUtf8Path {
            path: item.path.clone(),
        })?;
        let duration = to_i64("voice message duration (ms)", item.duration_ms)?;
        let size = to_i64("voice message size (bytes)", item.size)?;
        let created_at = to_ms(item.created_at);
        let inserted = on_pool!(self, pool => sqlx::query(
            "INSERT INTO outbox (tx_id, channel, room_id, sender, file_path, duration_ms, \
             size_bytes, waveform, mimetype, created_at, attempts, next_attempt_at, talker) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $10, $11) \
             ON CONFLICT (tx_id) DO NOTHING",
        )
        .bind(tx_key(item.tx))
        .bind(&item.channel)
        .bind(&item.room_id)
        .bind(&item.sender)
        .bind(path)
        .bind(duration)
        .bind(size)
        .bind(waveform_json(&item.waveform))
        .bind(&item.mimetype)
        .bind(created_at)
        .bind(&item.talker)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(StoreError::query("queueing a voice message"))?;
        Ok(inserted == 1)
    }

    /// Up to `limit` unposted items whose next attempt is due at `now`, oldest
    /// transmission first.
    pub async fn due_outbox(
        &self,
        now: SystemTime,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        // Safe to assert: the only interpolation is the ENTRY_COLUMNS constant;
        // values go through binds.
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM outbox \
             WHERE event_id IS NULL AND next_attempt_at <= $1 \
             ORDER BY created_at ASC, tx_id ASC LIMIT $2"
        );
        let rows: Vec<EntryRow> =
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(to_ms(now))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)
            .map_err(StoreError::query("reading the outbox"))?;
        rows.into_iter().map(entry).collect()
    }

    /// The latest `limit` transmissions of `channel` posted to its room, newest
    /// first: the live page's history (kept as long as posted rows are).
    pub async fn archived(
        &self,
        channel: &str,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM outbox \
             WHERE channel = $1 AND event_id IS NOT NULL AND mxc_uri IS NOT NULL \
             ORDER BY created_at DESC, tx_id DESC LIMIT $2"
        );
        let rows: Vec<EntryRow> =
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(channel)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)
            .map_err(StoreError::query("reading the archive"))?;
        rows.into_iter().map(entry).collect()
    }

    /// One item by id, posted or not (`None` if unknown or pruned).
    pub async fn outbox_entry(&self, tx: TxId) -> Result<Option<OutboxEntry>, StoreError> {
        let sql = format!("SELECT {ENTRY_COLUMNS} FROM outbox WHERE tx_id = $1");
        let row: Option<EntryRow> =
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(tx_key(tx))
            .fetch_optional(pool)
            .await)
            .map_err(StoreError::query("reading the outbox"))?;
        row.map(entry).transpose()
    }

    /// Records the media URI of the uploaded file. The first URI recorded stays:
    /// a second upload (which this exists to prevent) does not replace it. False
    /// if the item is unknown or already posted.
    pub async fn outbox_uploaded(&self, tx: TxId, mxc_uri: &str) -> Result<bool, StoreError> {
        let updated = on_pool!(self, pool => sqlx::query(
            "UPDATE outbox SET mxc_uri = COALESCE(mxc_uri, $2) \
             WHERE tx_id = $1 AND event_id IS NULL",
        )
        .bind(tx_key(tx))
        .bind(mxc_uri)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(StoreError::query("recording an upload"))?;
        Ok(updated == 1)
    }

    /// Records the encrypted upload of an item for an encrypted room: its URI and
    /// `encryption` (the key, IV and hashes). Like [`outbox_uploaded`](Self::outbox_uploaded),
    /// the first upload recorded stays, with its own key.
    pub async fn outbox_uploaded_encrypted(
        &self,
        tx: TxId,
        mxc_uri: &str,
        encryption: &str,
    ) -> Result<bool, StoreError> {
        // Every SET expression reads the row as it was: the key is stored only
        // with the URI it belongs to.
        let updated = on_pool!(self, pool => sqlx::query(
            "UPDATE outbox SET mxc_encryption = CASE WHEN mxc_uri IS NULL THEN $3 \
             ELSE mxc_encryption END, mxc_uri = COALESCE(mxc_uri, $2) \
             WHERE tx_id = $1 AND event_id IS NULL",
        )
        .bind(tx_key(tx))
        .bind(mxc_uri)
        .bind(encryption)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(StoreError::query("recording an encrypted upload"))?;
        Ok(updated == 1)
    }

    /// Forgets the upload of an unposted item, so the next attempt uploads again:
    /// a plaintext upload for a room that has since turned encryption on must
    /// not be what its voice message points at.
    pub async fn outbox_upload_discarded(&self, tx: TxId) -> Result<bool, StoreError> {
        let updated = on_pool!(self, pool => sqlx::query(
            "UPDATE outbox SET mxc_uri = NULL, mxc_encryption = NULL \
             WHERE tx_id = $1 AND event_id IS NULL",
        )
        .bind(tx_key(tx))
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(StoreError::query("discarding an upload"))?;
        Ok(updated == 1)
    }

    /// Records the event the homeserver accepted; the item leaves the queue. False
    /// if the item is unknown or was already posted (the first event id stays).
    pub async fn outbox_posted(&self, tx: TxId, event_id: &str) -> Result<bool, StoreError> {
        let now = to_ms(SystemTime::now());
        let updated = on_pool!(self, pool => sqlx::query(
            "UPDATE outbox SET event_id = $2, posted_at = $3, last_error = NULL \
             WHERE tx_id = $1 AND event_id IS NULL",
        )
        .bind(tx_key(tx))
        .bind(event_id)
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(StoreError::query("recording a posted voice message"))?;
        Ok(updated == 1)
    }

    /// Counts a failed attempt and when to try again. False if the item is
    /// unknown or already posted.
    pub async fn outbox_failed(
        &self,
        tx: TxId,
        error: &str,
        next_attempt_at: SystemTime,
    ) -> Result<bool, StoreError> {
        let updated = on_pool!(self, pool => sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3 \
             WHERE tx_id = $1 AND event_id IS NULL",
        )
        .bind(tx_key(tx))
        .bind(error)
        .bind(to_ms(next_attempt_at))
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(StoreError::query("recording a failed upload"))?;
        Ok(updated == 1)
    }

    /// Items not yet posted (metric: queue depth).
    pub async fn outbox_depth(&self) -> Result<u64, StoreError> {
        self.count("SELECT COUNT(*) FROM outbox WHERE event_id IS NULL")
            .await
    }

    /// Items posted and not yet pruned.
    pub async fn posted_count(&self) -> Result<u64, StoreError> {
        self.count("SELECT COUNT(*) FROM outbox WHERE event_id IS NOT NULL")
            .await
    }

    /// How long the oldest unposted transmission has waited at `now` (zero if it
    /// started after `now`); `None` when the queue is empty.
    pub async fn outbox_oldest_age(&self, now: SystemTime) -> Result<Option<Duration>, StoreError> {
        let oldest: Option<i64> = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT MIN(created_at) FROM outbox WHERE event_id IS NULL",
        )
        .fetch_one(pool)
        .await)
        .map_err(StoreError::query("reading the outbox"))?;
        Ok(oldest.map(|created| {
            now.duration_since(from_ms(created))
                .unwrap_or(Duration::ZERO)
        }))
    }

    /// Deletes posted items posted before `before`. Returns how many.
    pub async fn prune_posted(&self, before: SystemTime) -> Result<u64, StoreError> {
        on_pool!(self, pool => sqlx::query(
            "DELETE FROM outbox WHERE event_id IS NOT NULL AND posted_at < $1",
        )
        .bind(to_ms(before))
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(StoreError::query("pruning posted voice messages"))
    }

    async fn count(&self, sql: &'static str) -> Result<u64, StoreError> {
        let n: i64 = on_pool!(self, pool => sqlx::query_scalar(sql).fetch_one(pool).await)
            .map_err(StoreError::query("counting outbox items"))?;
        to_u64("outbox count", n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waveform_round_trips() {
        for w in [vec![], vec![0], vec![0, 512, 1024, 65535]] {
            assert_eq!(parse_waveform(&waveform_json(&w)).ok(), Some(w));
        }
        assert_eq!(parse_waveform(" [ 1, 2 ] ").ok(), Some(vec![1, 2]));
        for bad in ["", "[", "1,2", "[1,,2]", "[-1]", "[70000]", "[\"a\"]"] {
            assert!(parse_waveform(bad).is_err(), "{bad:?} accepted");
        }
    }
}

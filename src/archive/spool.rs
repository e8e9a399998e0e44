//! Spool directory layout and the metadata each recording carries with it.
//!
//! Files: `<tx>.ogg.part` while recording, `<tx>.ogg` once finished (rename is
//! the commit point), `broken/` for files recovery could not read. `<tx>` is
//! the transmission id as 32 hex digits, the same text the outbox sends as
//! Matrix transaction id.
//!
//! Every recording also carries its outbox metadata (room, sender, channel,
//! start time) as `OpusTags` comments, so a file that lost its database row —
//! a crash between rename and enqueue, or mid-recording — can still be queued
//! for the right room as the right puppet.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use walkie_endpoint::audio::OpusTags;
use walkie_endpoint::TxId;

use super::{ArchiveError, RecordingMeta};

/// MIME type of every archived file.
pub const MIMETYPE: &str = "audio/ogg";

pub(crate) const FINISHED_SUFFIX: &str = ".ogg";
pub(crate) const PART_SUFFIX: &str = ".ogg.part";
/// A clean copy being written from a `.part` by recovery.
pub(crate) const SALVAGE_SUFFIX: &str = ".ogg.salvage";
pub(crate) const BROKEN_DIR: &str = "broken";

const TAG_TX: &str = "WALKIE_TX";
const TAG_CHANNEL: &str = "WALKIE_CHANNEL";
const TAG_ROOM: &str = "WALKIE_ROOM";
const TAG_SENDER: &str = "WALKIE_SENDER";
const TAG_STARTED_MS: &str = "WALKIE_STARTED_MS";
/// Standard Vorbis comment names, so a player shows who spoke and when.
const TAG_ARTIST: &str = "ARTIST";
const TAG_DATE: &str = "DATE";

/// Where the finished recording of `tx` lives in `spool_dir`.
pub fn spool_path(spool_dir: &Path, tx: TxId) -> PathBuf {
    spool_dir.join(format!("{tx}{FINISHED_SUFFIX}"))
}

pub(crate) fn part_path(spool_dir: &Path, tx: TxId) -> PathBuf {
    spool_dir.join(format!("{tx}{PART_SUFFIX}"))
}

pub(crate) fn salvage_path(spool_dir: &Path, tx: TxId) -> PathBuf {
    spool_dir.join(format!("{tx}{SALVAGE_SUFFIX}"))
}

/// The transmission id a spool file name starts with, if it is one of ours.
pub(crate) fn tx_of(stem: &str) -> Option<TxId> {
    // Only the simple form we write: a hyphenated UUID is somebody else's file.
    if stem.len() != 32 {
        return None;
    }
    uuid::Uuid::try_parse(stem).ok().map(TxId::from_uuid)
}

pub(crate) fn comments(meta: &RecordingMeta) -> Vec<(String, String)> {
    let started_ms = unix_ms(meta.started_at);
    vec![
        (TAG_TX.into(), meta.tx.to_string()),
        (TAG_CHANNEL.into(), meta.channel.clone()),
        (TAG_ROOM.into(), meta.room_id.clone()),
        (TAG_SENDER.into(), meta.sender.clone()),
        (TAG_STARTED_MS.into(), started_ms.to_string()),
        (TAG_ARTIST.into(), meta.talker.clone()),
        (TAG_DATE.into(), utc_iso8601(meta.started_at)),
    ]
}

/// Reads back what [`comments`] wrote; `None` if any outbox field is missing.
pub(crate) fn meta_from_tags(tags: &OpusTags) -> Option<RecordingMeta> {
    let get = |key: &str| {
        tags.comments.iter().find_map(|c| {
            let (k, v) = c.split_once('=')?;
            k.eq_ignore_ascii_case(key).then(|| v.to_owned())
        })
    };
    let tx = tx_of(&get(TAG_TX)?)?;
    let started_ms: u64 = get(TAG_STARTED_MS)?.parse().ok()?;
    Some(RecordingMeta {
        tx,
        channel: get(TAG_CHANNEL)?,
        room_id: get(TAG_ROOM)?,
        sender: get(TAG_SENDER)?,
        talker: get(TAG_ARTIST).unwrap_or_default(),
        started_at: UNIX_EPOCH + Duration::from_millis(started_ms),
    })
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Makes a rename or unlink in `dir` durable: without it a power cut can undo
/// the rename even though the file's data was synced.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ArchiveError::io("syncing directory", dir))
}

/// `(year, month, day, hour, minute, second)` in UTC.
fn utc_parts(t: SystemTime) -> (i64, u32, u32, u32, u32, u32) {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil; std has no calendar and this is all we need.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3_600) as u32,
        (rem % 3_600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// `2026-11-24T10:15:30Z`.
pub(crate) fn utc_iso8601(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `20261124T101530Z`: sortable and safe in a file name on every OS.
pub(crate) fn utc_compact(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(t);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting_matches_known_instants() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_774_530); // 2026-11-27T10:15:30Z
        assert_eq!(utc_iso8601(t), "2026-11-27T10:15:30Z");
        assert_eq!(utc_compact(t), "20261127T101530Z");
        assert_eq!(utc_iso8601(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_iso8601(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn metadata_round_trips_through_tags() {
        let meta = RecordingMeta {
            tx: TxId::generate(),
            channel: "ops".into(),
            room_id: "!r:example.org".into(),
            sender: "@walkie_mumble_alice:example.org".into(),
            talker: "alice (Mumble) = boss".into(),
            started_at: UNIX_EPOCH + Duration::from_millis(1_795_774_530_123),
        };
        let tags = OpusTags {
            vendor: "x".into(),
            comments: comments(&meta)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        };
        assert_eq!(meta_from_tags(&tags), Some(meta));
        assert_eq!(meta_from_tags(&OpusTags::default()), None);
    }

    #[test]
    fn only_simple_uuids_are_transmission_ids() {
        let tx = TxId::generate();
        assert_eq!(tx_of(&tx.to_string()), Some(tx));
        assert_eq!(tx_of(&tx.as_uuid().hyphenated().to_string()), None);
        assert_eq!(tx_of("notes"), None);
    }
}

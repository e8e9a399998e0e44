//! Start-up recovery of the spool directory: nothing a crash left there is
//! lost, and nothing is deleted unless it is already safe elsewhere.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use walkie_endpoint::audio::{
    read_ogg_opus, AudioError, OggOpusOptions, OggOpusReader, OggOpusWriter, OpusDecoder, Waveform,
};
use walkie_endpoint::TxId;

use super::spool::{self, MIMETYPE};
use super::{ArchiveError, OutboxItem};
use crate::store::Store;

/// What [`recover_spool`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Finished recordings that had no outbox row (crash between rename and
    /// enqueue), now queued. Salvaged ones are listed here too.
    pub enqueued: Vec<TxId>,
    /// Recordings cut off mid-way whose complete pages were rewritten into a
    /// clean `<tx>.ogg`.
    pub salvaged: Vec<TxId>,
    /// Files nothing could be read from, moved to `<spool>/broken/` (new paths).
    pub broken: Vec<PathBuf>,
    /// Files deleted because their content is safe elsewhere: recordings
    /// already posted, `.part` files a completed salvage replaced, half-written
    /// salvage copies whose `.part` is still there.
    pub removed: Vec<PathBuf>,
}

/// Brings the spool directory and the outbox back in line after a crash.
/// Call it once at start-up, before the recorder and the outbox run. A `.part`
/// file locked by a running [`Recorder`](super::Recorder) (one started early,
/// or another process on the same spool) is not a crash leftover and is left
/// alone.
///
/// - `<tx>.ogg` with no outbox row is read back (room, sender, channel and
///   start time come from its tags) and enqueued; one whose row is already
///   posted is deleted.
/// - `<tx>.ogg.part` (a crash mid-recording) is salvaged: the packets of every
///   complete Ogg page up to the cut are written into a clean `<tx>.ogg`, which
///   is then enqueued. Whatever cannot be read is moved to `broken/` and logged
///   at error level — never deleted.
/// - Files that are not ours are left alone.
pub async fn recover_spool(spool_dir: &Path, store: &Store) -> Result<Recovery, ArchiveError> {
    let dir = spool_dir.to_path_buf();
    std::fs::create_dir_all(&dir).map_err(ArchiveError::io("creating spool directory", &dir))?;
    let mut recovery = Recovery::default();
    let mut parts = BTreeMap::new();
    let mut finished = BTreeMap::new();
    let entries = std::fs::read_dir(&dir).map_err(ArchiveError::io("listing", &dir))?;
    for entry in entries {
        let entry = entry.map_err(ArchiveError::io("listing", &dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let classified = [
            (spool::PART_SUFFIX, 0),
            (spool::SALVAGE_SUFFIX, 1),
            (spool::FINISHED_SUFFIX, 2),
        ]
        .into_iter()
        .find_map(|(suffix, kind)| {
            let tx = spool::tx_of(name.strip_suffix(suffix)?)?;
            Some((tx, kind))
        });
        match classified {
            Some((tx, 0)) => {
                parts.insert(tx, path);
            }
            Some((_, 1)) => {
                // A salvage copy is only renamed into place once complete; a
                // leftover one is half-written and its .part is still here.
                remove(&path, &mut recovery);
            }
            Some((tx, _)) => {
                finished.insert(tx, path);
            }
            None => tracing::debug!(path = %path.display(), "not a spool file; left alone"),
        }
    }

    for (tx, part) in parts {
        let Some(lock) = claim(&part) else {
            continue;
        };
        if finished.contains_key(&tx) {
            // Salvage or finish completed the rename but died before deleting.
            remove(&part, &mut recovery);
            continue;
        }
        let (d, p) = (dir.clone(), part.clone());
        let salvaged = tokio::task::spawn_blocking(move || {
            let salvaged = salvage(&d, tx, &p);
            drop(lock);
            salvaged
        })
        .await
        .unwrap_or_else(|e| Err(format!("salvage task failed: {e}")));
        match salvaged {
            Ok(path) => {
                tracing::warn!(%tx, path = %path.display(), "salvaged a recording cut off by a crash");
                recovery.salvaged.push(tx);
                finished.insert(tx, path);
            }
            Err(reason) => move_aside(&dir, &part, &reason, &mut recovery),
        }
    }

    let far_future = SystemTime::now() + Duration::from_secs(100 * 365 * 86_400);
    let pending: HashSet<TxId> = store
        .due_outbox(far_future, u32::MAX)
        .await?
        .into_iter()
        .map(|e| e.item.tx)
        .collect();
    for (tx, path) in finished {
        if pending.contains(&tx) {
            continue;
        }
        if store.outbox_entry(tx).await?.is_some() {
            // Posted (or given up on): the homeserver has it, the file is spare.
            remove(&path, &mut recovery);
            continue;
        }
        let p = path.clone();
        let item = tokio::task::spawn_blocking(move || item_of(tx, &p))
            .await
            .unwrap_or_else(|e| Err(format!("reading task failed: {e}")));
        match item {
            Ok(item) => {
                store.enqueue_outbox(&item).await?;
                tracing::warn!(%tx, channel = %item.channel, path = %path.display(),
                    "queued a finished recording the outbox did not know (crash before enqueue)");
                recovery.enqueued.push(tx);
            }
            Err(reason) => move_aside(&dir, &path, &reason, &mut recovery),
        }
    }
    Ok(recovery)
}

/// The `.part` file opened and locked for recovery, or `None` when a running
/// recorder holds it (that recording is not a crash leftover: leave it alone).
/// A file system without locks yields the file unlocked.
fn claim(part: &Path) -> Option<Option<std::fs::File>> {
    let file = match std::fs::File::open(part) {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!(path = %part.display(), error = %e, "cannot open spool file; left alone");
            return None;
        }
    };
    match file.try_lock() {
        Ok(()) => Some(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::info!(path = %part.display(), "a recorder is writing this file; left alone");
            None
        }
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::debug!(path = %part.display(), error = %e, "cannot lock spool file; recovering it anyway");
            Some(None)
        }
    }
}

fn remove(path: &Path, recovery: &mut Recovery) {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed a spool file whose content is safe elsewhere");
            recovery.removed.push(path.to_path_buf());
        }
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove spool file"),
    }
}

fn move_aside(dir: &Path, path: &Path, reason: &str, recovery: &mut Recovery) {
    let broken = dir.join(spool::BROKEN_DIR);
    let result = std::fs::create_dir_all(&broken).and_then(|()| {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let mut target = broken.join(&*name);
        let mut n = 1;
        while target.exists() {
            target = broken.join(format!("{name}.{n}"));
            n += 1;
        }
        std::fs::rename(path, &target).map(|()| target)
    });
    match result {
        Ok(target) => {
            tracing::error!(path = %path.display(), moved_to = %target.display(), %reason,
                "unreadable recording moved aside; it will not be archived");
            recovery.broken.push(target);
        }
        Err(e) => tracing::error!(path = %path.display(), %reason, error = %e,
            "unreadable recording could not be moved aside; left in place"),
    }
}

/// Rewrites the readable part of `part` as `<tx>.ogg`; returns its path, or why not.
fn salvage(dir: &Path, tx: TxId, part: &Path) -> Result<PathBuf, String> {
    let bytes = std::fs::read(part).map_err(|e| format!("cannot read: {e}"))?;
    let mut reader =
        OggOpusReader::new(&bytes[..]).map_err(|e| format!("no Ogg Opus headers: {e}"))?;
    let mut packets = Vec::new();
    let cut = loop {
        match reader.next_packet() {
            Ok(Some(p)) => packets.push(p),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    if packets.is_empty() {
        return Err(match cut {
            Some(e) => format!("no complete audio page before the cut ({e})"),
            None => "no audio packets".into(),
        });
    }
    let meta = spool::meta_from_tags(reader.tags())
        .ok_or("no walkie-bridge tags (room, sender): not a recording of ours")?;
    if meta.tx != tx {
        return Err(format!("tagged as transmission {}, named {tx}", meta.tx));
    }
    if let Some(e) = cut {
        tracing::info!(%tx, packets = packets.len(), cut = %e, "recording ends at a cut");
    }
    let comments = reader
        .tags()
        .comments
        .iter()
        .filter_map(|c| c.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let options = OggOpusOptions {
        pre_skip: reader.head().pre_skip,
        serial: Some(reader.serial()),
        comments,
    };
    let tmp = spool::salvage_path(dir, tx);
    let written = (|| -> Result<(), AudioError> {
        let file = std::fs::File::create(&tmp)?;
        let mut writer = OggOpusWriter::with_options(file, options)?;
        for p in &packets {
            writer.write_packet(p)?;
        }
        let (file, _) = writer.finish()?;
        file.sync_all()?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "cannot write the clean copy {}: {e}",
            tmp.display()
        ));
    }
    let path = spool::spool_path(dir, tx);
    std::fs::rename(&tmp, &path).map_err(|e| format!("cannot rename the clean copy: {e}"))?;
    // From here the clean copy is committed; failing to delete the .part only
    // leaves a duplicate that the next recovery removes.
    if let Err(e) = std::fs::remove_file(part) {
        tracing::warn!(path = %part.display(), error = %e, "cannot remove salvaged .part");
    }
    if let Err(e) = spool::sync_dir(dir) {
        tracing::warn!(error = %e, "spool directory not synced after salvage");
    }
    Ok(path)
}

/// The outbox item of a finished recording, rebuilt from the file alone.
fn item_of(tx: TxId, path: &Path) -> Result<OutboxItem, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let audio = read_ogg_opus(&bytes).map_err(|e| e.to_string())?;
    let meta = spool::meta_from_tags(&audio.tags)
        .ok_or("no walkie-bridge tags (room, sender): not a recording of ours")?;
    if meta.tx != tx {
        return Err(format!("tagged as transmission {}, named {tx}", meta.tx));
    }
    let mut waveform = Waveform::new();
    let mut skip = usize::from(audio.head.pre_skip);
    if let Ok(mut decoder) = OpusDecoder::new() {
        for packet in &audio.packets {
            let pcm = decoder.decode(packet).unwrap_or_else(|_| {
                vec![0; walkie_endpoint::audio::packet_samples(packet).unwrap_or(0)]
            });
            let s = skip.min(pcm.len());
            skip -= s;
            waveform.push_pcm(&pcm[s..]);
        }
    }
    Ok(OutboxItem {
        tx,
        channel: meta.channel,
        room_id: meta.room_id,
        sender: meta.sender,
        path: path.to_path_buf(),
        duration_ms: audio.duration_ms,
        size: bytes.len() as u64,
        waveform: waveform.finish(),
        mimetype: MIMETYPE.into(),
        created_at: meta.started_at,
        talker: meta.talker,
    })
}

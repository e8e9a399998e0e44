//! One transmission to one spool file.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use walkie_endpoint::audio::{
    packet_samples, OggOpusOptions, OggOpusWriter, OpusDecoder, Waveform, DEFAULT_PRE_SKIP,
};
use walkie_endpoint::{AudioFrame, TxId};

use super::spool::{self, MIMETYPE};
use super::{ArchiveError, OutboxItem, WaveformSource};

/// Extra time each packet write takes, in nanoseconds: a slow spool disk, for
/// tests only (see [`set_spool_write_delay_for_tests`]). Zero in production.
static SPOOL_WRITE_DELAY_NS: AtomicU64 = AtomicU64::new(0);

/// Makes every recorder in this process take `delay` longer per packet, as a
/// slow or stalled spool disk would. For tests of what a slow disk must not
/// hold up; process-wide, so such a test wants a test binary of its own.
#[doc(hidden)]
pub fn set_spool_write_delay_for_tests(delay: Duration) {
    let ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
    SPOOL_WRITE_DELAY_NS.store(ns, Ordering::Relaxed);
}

fn slow_spool_pause() {
    let ns = SPOOL_WRITE_DELAY_NS.load(Ordering::Relaxed);
    if ns > 0 {
        std::thread::sleep(Duration::from_nanos(ns));
    }
}

/// Who said what where: everything the outbox needs besides the audio.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingMeta {
    /// The transmission; names the file and becomes the Matrix transaction id.
    pub tx: TxId,
    /// The `[[channel]]` name.
    pub channel: String,
    pub room_id: String,
    /// The Matrix user that will post it (the talker's puppet, or the real user).
    pub sender: String,
    /// Display name of the talker, written into the file's `ARTIST` tag.
    pub talker: String,
    pub started_at: SystemTime,
}

/// What a recording received, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordingStats {
    /// Packets written to the file.
    pub packets: u64,
    /// Frames the sequence numbers say were lost on the way (not in the file).
    pub lost: u64,
    /// Frames that came after a later one, or twice (dropped).
    pub late: u64,
    /// Packets with no valid Opus TOC (not in the file: their length is unknown).
    pub invalid: u64,
    /// Packets written but libopus could not decode (silent in the waveform).
    pub undecodable: u64,
    /// Packets this recorder decoded itself for the waveform: those the hub had
    /// not decoded already (no other endpoint of the channel wanted PCM).
    pub decoded_here: u64,
}

/// Writes one transmission to `<spool_dir>/<tx>.ogg.part`. Plain blocking
/// file I/O: call it from a blocking-friendly context (the recorder endpoint's
/// own thread or `spawn_blocking`); one 20 ms packet costs a few microseconds
/// plus a page write per second.
///
/// Packets go into the file exactly as received. Sequence gaps are *spliced*:
/// a lost frame is not written (no concealment, no silence), so the file holds
/// the packets that arrived, in order, back to back, and plays shorter than
/// the transmission by the lost time. Late or repeated frames (seq not after
/// the last written one) are dropped, because Ogg cannot hold them out of
/// order. The waveform is computed from exactly the packets in the file,
/// decoded in file order, so it matches what a player draws.
///
/// A recorder dropped without [`finish`](Self::finish) or
/// [`abort`](Self::abort) leaves its `.part` file behind on purpose:
/// [`recover_spool`](super::recover_spool) salvages it at the next start.
pub struct Recorder {
    meta: RecordingMeta,
    spool_dir: PathBuf,
    part: PathBuf,
    writer: Option<OggOpusWriter<File>>,
    /// Only for frames the hub did not decode; see `waveform_pcm`.
    decoder: Option<OpusDecoder>,
    /// libopus would not make a decoder: the waveform stays flat.
    no_decoder: bool,
    waveform: Waveform,
    source: WaveformSource,
    /// `WaveformSource::Estimated`: each written packet's size and samples.
    packet_sizes: Vec<(u16, u32)>,
    /// Decoded samples still to drop from the waveform: the pre-skip, which a
    /// player does not play either.
    skip: usize,
    last_seq: Option<u32>,
    stats: RecordingStats,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("tx", &self.meta.tx)
            .field("channel", &self.meta.channel)
            .field("part", &self.part)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Creates `<spool_dir>/<tx>.ogg.part` (and the spool directory if needed)
    /// and writes the Ogg headers. Fails if a file for this transmission exists.
    /// The waveform is made from the decoded audio.
    pub fn start(spool_dir: &Path, meta: RecordingMeta) -> Result<Recorder, ArchiveError> {
        Self::start_with(spool_dir, meta, WaveformSource::Decoded)
    }

    /// [`start`](Self::start), the waveform made as `source` says.
    pub fn start_with(
        spool_dir: &Path,
        meta: RecordingMeta,
        source: WaveformSource,
    ) -> Result<Recorder, ArchiveError> {
        std::fs::create_dir_all(spool_dir)
            .map_err(ArchiveError::io("creating spool directory", spool_dir))?;
        let part = spool::part_path(spool_dir, meta.tx);
        // Unbuffered on purpose: the Ogg writer emits whole pages (~1 s of audio),
        // so every completed page reaches the file at once and a crash loses at
        // most the page in progress.
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&part)
            .map_err(ArchiveError::io("creating", &part))?;
        // Tells start-up recovery (of this or another bridge on the same spool)
        // that the file is being written, not left over by a crash. Released when
        // the file is closed: by finish, abort, or the process dying.
        if let Err(error) = file.try_lock() {
            tracing::debug!(path = %part.display(), %error, "cannot lock the spool file; recovery relies on start-up order alone");
        }
        let writer = OggOpusWriter::with_options(
            file,
            OggOpusOptions {
                // The packets come from encoders we cannot ask (Mumble, browsers).
                pre_skip: DEFAULT_PRE_SKIP,
                serial: None,
                comments: spool::comments(&meta),
            },
        );
        let writer = match writer {
            Ok(w) => w,
            Err(source) => {
                let _ = std::fs::remove_file(&part);
                return Err(ArchiveError::Audio {
                    what: "writing Ogg headers to",
                    path: part,
                    source,
                });
            }
        };
        tracing::debug!(tx = %meta.tx, channel = %meta.channel, path = %part.display(), "recording");
        Ok(Recorder {
            spool_dir: spool_dir.to_path_buf(),
            part,
            writer: Some(writer),
            decoder: None,
            no_decoder: false,
            waveform: Waveform::new(),
            source,
            packet_sizes: Vec::new(),
            skip: usize::from(DEFAULT_PRE_SKIP),
            last_seq: None,
            stats: RecordingStats::default(),
            meta,
        })
    }

    pub fn meta(&self) -> &RecordingMeta {
        &self.meta
    }

    pub fn stats(&self) -> RecordingStats {
        self.stats
    }

    /// The `.part` file being written.
    pub fn part_path(&self) -> &Path {
        &self.part
    }

    /// Appends one frame's Opus packet. The waveform is made from the packets in
    /// the file (concealment the hub put in `frame.pcm` is left out), so it
    /// matches what a player draws. Only I/O errors are errors; lost, late
    /// and invalid packets are counted in [`stats`](Self::stats). After an
    /// error the file is in an unknown state: [`abort`](Self::abort) it.
    pub fn push(&mut self, frame: &AudioFrame) -> Result<(), ArchiveError> {
        if let Some(last) = self.last_seq {
            // Wrapping distance: a sender's u32 counter may wrap mid-transmission.
            let ahead = frame.seq.wrapping_sub(last);
            if ahead == 0 || ahead > u32::MAX / 2 {
                self.stats.late += 1;
                return Ok(());
            }
            self.stats.lost += u64::from(ahead - 1);
        }
        // Taken even by an invalid packet, so the next one does not look like a gap.
        self.last_seq = Some(frame.seq);
        let samples = match packet_samples(&frame.opus) {
            Ok(n) => n,
            Err(e) => {
                self.stats.invalid += 1;
                tracing::debug!(tx = %self.meta.tx, seq = frame.seq, error = %e, "invalid Opus packet not recorded");
                return Ok(());
            }
        };
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        slow_spool_pause();
        // The error's path is built only on an error: this runs for every frame.
        if let Err(source) = writer.write_packet(&frame.opus) {
            return Err(ArchiveError::audio("writing", &self.part)(source));
        }
        self.stats.packets += 1;
        if self.source == WaveformSource::Estimated {
            let bytes = u16::try_from(frame.opus.len()).unwrap_or(u16::MAX);
            self.packet_sizes.push((bytes, samples as u32));
            return Ok(());
        }
        let pcm = self.waveform_pcm(frame, samples);
        let skip = self.skip.min(pcm.len());
        self.skip -= skip;
        self.waveform.push_pcm(&pcm[skip..]);
        Ok(())
    }

    /// The frame's own samples for the waveform. Decoded once per transmission: when
    /// the hub decoded the frame for another endpoint, its samples are taken from
    /// there (the tail of `frame.pcm`; concealment the hub put in front is not in
    /// the file, so it is left out); only a channel with no other PCM consumer pays
    /// for a decoder here, made at its first frame.
    fn waveform_pcm<'f>(&mut self, frame: &'f AudioFrame, samples: usize) -> Cow<'f, [i16]> {
        if let Some(pcm) = frame.pcm.as_deref().filter(|pcm| pcm.len() >= samples) {
            return Cow::Borrowed(&pcm[pcm.len() - samples..]);
        }
        if self.decoder.is_none() && !self.no_decoder {
            match OpusDecoder::new() {
                Ok(decoder) => self.decoder = Some(decoder),
                Err(e) => {
                    // The file is what matters; without a decoder the waveform is flat.
                    tracing::warn!(tx = %self.meta.tx, error = %e, "no Opus decoder for the waveform");
                    self.no_decoder = true;
                }
            }
        }
        let decoded = self.decoder.as_mut().map(|d| d.decode(&frame.opus));
        if decoded.is_some() {
            self.stats.decoded_here += 1;
        }
        match decoded {
            Some(Ok(pcm)) => Cow::Owned(pcm),
            Some(Err(_)) => {
                self.stats.undecodable += 1;
                Cow::Owned(vec![0; samples])
            }
            None => Cow::Owned(vec![0; samples]),
        }
    }

    /// Ends the file, syncs it and renames it to `<tx>.ogg`; returns the item to
    /// enqueue. A recording playing shorter than `min_archive` (or holding no
    /// packet at all) is deleted instead and `None` returned.
    pub fn finish(mut self, min_archive: Duration) -> Result<Option<OutboxItem>, ArchiveError> {
        let Some(writer) = self.writer.take() else {
            return Ok(None);
        };
        let part = self.part.clone();
        let finished = writer
            .finish()
            .map_err(ArchiveError::audio("finishing", &part));
        let (file, ogg) = match finished {
            Ok(done) => done,
            Err(e) => {
                self.remove_part();
                return Err(e);
            }
        };
        let stats = self.stats;
        let tx = self.meta.tx;
        let channel = self.meta.channel.clone();
        if stats.packets == 0 || u128::from(ogg.duration_ms) < min_archive.as_millis() {
            drop(file);
            self.remove_part();
            metrics::counter!("walkie_archive_dropped_total", "channel" => channel.clone(), "reason" => "short")
                .increment(1);
            tracing::debug!(%tx, %channel, duration_ms = ogg.duration_ms, min_ms = min_archive.as_millis() as u64,
                "transmission shorter than archive.min_archive_ms; not archived");
            return Ok(None);
        }
        if let Err(e) = file.sync_all() {
            drop(file);
            self.remove_part();
            return Err(ArchiveError::io("syncing", &part)(e));
        }
        let size = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                drop(file);
                self.remove_part();
                return Err(ArchiveError::io("reading size of", &part)(e));
            }
        };
        drop(file);
        let path = spool::spool_path(&self.spool_dir, tx);
        if let Err(e) = std::fs::rename(&part, &path) {
            // Leave the .part: it is complete, and recovery will pick it up.
            return Err(ArchiveError::io("renaming", &part)(e));
        }
        spool::sync_dir(&self.spool_dir)?;
        if stats.lost + stats.late + stats.invalid + stats.undecodable > 0 {
            tracing::info!(%tx, %channel, lost = stats.lost, late = stats.late, invalid = stats.invalid,
                undecodable = stats.undecodable, "recording had damaged audio");
        }
        Ok(Some(OutboxItem {
            tx,
            channel,
            room_id: self.meta.room_id.clone(),
            sender: self.meta.sender.clone(),
            path,
            duration_ms: ogg.duration_ms,
            size,
            waveform: match self.source {
                WaveformSource::Decoded => self.waveform.finish(),
                WaveformSource::Estimated => estimated_waveform(&self.packet_sizes),
            },
            mimetype: MIMETYPE.into(),
            created_at: self.meta.started_at,
            talker: self.meta.talker.clone(),
        }))
    }

    /// Deletes the recording.
    pub fn abort(mut self) {
        self.writer = None;
        self.remove_part();
    }

    fn remove_part(&mut self) {
        self.writer = None;
        if let Err(e) = std::fs::remove_file(&self.part) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.part.display(), error = %e, "cannot delete spool file");
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.writer.is_some() {
            tracing::warn!(tx = %self.meta.tx, path = %self.part.display(),
                "recorder dropped unfinished; the file is salvaged at the next start");
        }
    }
}

/// A waveform from packet sizes alone ([`WaveformSource::Estimated`]). Within one
/// recording the smallest packets are taken for silence and the largest for the
/// loudest speech (bytes between map linearly to amplitude), so it does not depend
/// on the sender's bitrate; a constant-bitrate sender draws flat.
fn estimated_waveform(packets: &[(u16, u32)]) -> Vec<u16> {
    let smallest = packets.iter().map(|p| p.0).min().unwrap_or(0);
    let largest = packets.iter().map(|p| p.0).max().unwrap_or(0);
    let span = f32::from(largest - smallest);
    let mut waveform = Waveform::new();
    let mut skip = u32::from(DEFAULT_PRE_SKIP);
    for &(bytes, samples) in packets {
        // Squared: pauses' packets differ from the smallest by a few bytes, and
        // must still draw near zero.
        let amplitude = if span > 0.0 {
            (f32::from(bytes - smallest) / span).powi(2)
        } else {
            1.0
        };
        let played = samples - skip.min(samples);
        skip -= samples - played;
        waveform.push_level(20.0 * amplitude.max(1e-3).log10(), played as usize);
    }
    waveform.finish()
}

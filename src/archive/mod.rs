//! The archive (DESIGN.md §4): every transmission ends as an `m.audio` voice
//! message in its room.
//!
//! Three stages, each surviving a crash of the one after it:
//!
//! 1. [`Recorder`] writes one transmission to `<spool_dir>/<tx>.ogg.part`,
//!    passing the talker's Opus packets through unchanged, and on
//!    [`finish`](Recorder::finish) renames it to `<tx>.ogg` and returns the
//!    [`OutboxItem`] for the store.
//! 2. The caller enqueues that item ([`Store::enqueue_outbox`]) and
//!    [`wakes`](OutboxWaker::wake) the outbox. [`recover_spool`] at start-up
//!    enqueues what a crash left between rename and enqueue, and salvages
//!    recordings cut off mid-way.
//! 3. [`Outbox::run`] uploads the file and posts the event as the talker,
//!    with the transmission id as transaction id, retrying with backoff until
//!    the homeserver accepts it.
//!
//! [`Store::enqueue_outbox`]: crate::store::Store::enqueue_outbox

mod outbox;
mod recorder;
mod recovery;
mod spool;
mod spool_reader;
mod voice_message;
mod worker;

use std::path::PathBuf;

pub use outbox::{Outbox, OutboxSettings, OutboxWaker, ABANDONED_PREFIX};
pub use recorder::{set_spool_write_delay_for_tests, Recorder, RecordingMeta, RecordingStats};
pub use recovery::{recover_spool, Recovery};
pub use spool::{spool_path, MIMETYPE};
pub use voice_message::{voice_message_content, voice_message_file_name, VoiceMessage};
pub use worker::{Recorded, RecordingWorker, FRAME_QUEUE};

pub use crate::store::OutboxItem;

/// How a voice message's waveform is made (`archive.waveform`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WaveformSource {
    /// From the audio itself: the RMS of each bucket. Taken from the hub's PCM when
    /// another endpoint of the channel wanted PCM; otherwise every packet is
    /// decoded for it, which is most of what a passthrough stream costs
    /// (docs/bench/ceiling-stages.txt).
    #[default]
    Decoded,
    /// From the sizes of the Opus packets, decoding nothing: speech takes more
    /// bytes than pauses, so the picture shows where the talker spoke and
    /// paused, though not how loudly. For bridges carrying many streams per core.
    Estimated,
}

/// What can go wrong while recording or recovering the spool, worded for the
/// person running the bridge.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A spool file or directory could not be created, written, synced or renamed.
    #[error("archive spool: {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The Ogg Opus writer or reader refused (bad packet, broken file).
    #[error("archive spool: {what} {}: {source}", path.display())]
    Audio {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: walkie_endpoint::audio::AudioError,
    },
    /// The store could not queue or look up a recording.
    #[error("archive: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The recording code panicked (a bug); the file is salvaged at the next start.
    #[error("archive: the recording panicked; its file is salvaged at the next start")]
    Panicked,
}

impl ArchiveError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ArchiveError {
        let path = path.into();
        move |source| ArchiveError::Io {
            action,
            path,
            source,
        }
    }

    /// The spool's file system is full (or the bridge's quota is used up): no
    /// recording can be kept until space is freed.
    pub fn is_spool_full(&self) -> bool {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = source {
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::StorageFull
                    || io.kind() == std::io::ErrorKind::QuotaExceeded
                {
                    return true;
                }
            }
            source = error.source();
        }
        false
    }

    pub(crate) fn audio(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(walkie_endpoint::audio::AudioError) -> ArchiveError {
        let path = path.into();
        move |source| ArchiveError::Audio { what, path, source }
    }
}

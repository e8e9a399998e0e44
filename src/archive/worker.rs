//! Recording off the async workers (issue 14.4): each room endpoint hands its
//! transmissions to a thread of its own, so a slow spool disk delays only the
//! recording — never the floor mirror, the other endpoints of the channel, or
//! other channels sharing the runtime's workers.
//!
//! Frames wait in a bounded queue ([`FRAME_QUEUE`], 10 s of audio). When it is
//! full the disk is far behind real time; the frame is not queued: it is
//! counted in `walkie_archive_frames_dropped_total{channel,reason="spool_slow"}`,
//! logged once per transmission at warning level, and the recording goes on
//! with a gap that the recorder splices like a frame lost on the way (counted
//! in its `lost` stat and logged when it finishes). Starting, finishing and
//! aborting are never dropped: the recording is always finished and queued.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Duration;

use tokio::sync::mpsc;
use walkie_endpoint::{AudioFrame, TxId};

use super::{ArchiveError, OutboxItem, Recorder, RecordingMeta};

/// Frames waiting for the spool: 10 s of 20 ms frames.
pub const FRAME_QUEUE: usize = 500;

enum Command {
    Start {
        spool_dir: PathBuf,
        meta: RecordingMeta,
    },
    Frame(AudioFrame),
    Finish {
        min_archive: Duration,
    },
    Abort,
}

/// How a transmission's recording ended, reported back to the endpoint.
#[derive(Debug)]
pub enum Recorded {
    /// Finished: the item to queue, or `None` when too short to keep.
    Finished { tx: TxId, item: Option<OutboxItem> },
    /// Could not be started, written or finished; nothing is left in the spool.
    Failed { tx: TxId, error: ArchiveError },
}

/// The endpoint's side of its recording thread. Every call returns at once.
pub struct RecordingWorker {
    commands: std_mpsc::Sender<Command>,
    queued: Arc<AtomicUsize>,
    results: mpsc::UnboundedReceiver<Recorded>,
    channel: String,
    /// The transmission being recorded, as far as this side knows.
    current: Option<TxId>,
    /// Frames of `current` the queue had no room for.
    dropped: u64,
}

impl RecordingWorker {
    /// Starts the thread `recorder <channel>`. It ends when this is dropped,
    /// once the commands already sent are done.
    pub fn spawn(channel: &str) -> std::io::Result<Self> {
        let (commands, rx) = std_mpsc::channel();
        let (results_tx, results) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let thread_queued = Arc::clone(&queued);
        std::thread::Builder::new()
            .name(format!("recorder {channel}"))
            .spawn(move || record(rx, thread_queued, results_tx))?;
        Ok(Self {
            commands,
            queued,
            results,
            channel: channel.to_owned(),
            current: None,
            dropped: 0,
        })
    }

    /// The transmission being recorded (started and not yet finished or aborted).
    pub fn current(&self) -> Option<TxId> {
        self.current
    }

    /// Starts recording `meta.tx`; a recording still open is aborted first.
    pub fn start(&mut self, spool_dir: &Path, meta: RecordingMeta) {
        self.current = Some(meta.tx);
        self.dropped = 0;
        self.send(Command::Start {
            spool_dir: spool_dir.to_path_buf(),
            meta,
        });
    }

    /// Queues one frame of the current transmission (see the module docs for a
    /// full queue).
    pub fn push(&mut self, frame: AudioFrame) {
        if self.queued.load(Ordering::Acquire) >= FRAME_QUEUE {
            self.dropped += 1;
            metrics::counter!("walkie_archive_frames_dropped_total",
                "channel" => self.channel.clone(), "reason" => "spool_slow")
            .increment(1);
            if self.dropped == 1 {
                tracing::warn!(tx = ?self.current, queued = FRAME_QUEUE,
                    "the archive spool is too slow: frames of this transmission are left out of its recording");
            }
            return;
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.send(Command::Frame(frame));
    }

    /// Finishes the current recording; its [`Recorded`] comes from [`next`](Self::next).
    pub fn finish(&mut self, min_archive: Duration) {
        if self.current.take().is_some() {
            self.send(Command::Finish { min_archive });
        }
    }

    /// Deletes the current recording.
    pub fn abort(&mut self) {
        if self.current.take().is_some() {
            self.send(Command::Abort);
        }
    }

    /// The next recording that ended. Cancel-safe.
    pub async fn next(&mut self) -> Option<Recorded> {
        self.results.recv().await
    }

    fn send(&mut self, command: Command) {
        if self.commands.send(command).is_err() {
            // The thread only ends when this side is dropped, or by a panic.
            tracing::error!(channel = %self.channel, "the recording thread is gone; nothing is recorded");
        }
    }
}

/// The thread: one recording at a time, in the order the commands came.
fn record(
    commands: std_mpsc::Receiver<Command>,
    queued: Arc<AtomicUsize>,
    results: mpsc::UnboundedSender<Recorded>,
) {
    let mut recording: Option<Recorder> = None;
    let report = |r: Recorded| {
        // The endpoint is gone: nobody left to queue it; recovery will.
        let _ = results.send(r);
    };
    for command in commands {
        match command {
            Command::Start { spool_dir, meta } => {
                if let Some(stale) = recording.take() {
                    tracing::warn!(tx = %stale.meta().tx, "recording never saw its release; aborting it");
                    stale.abort();
                }
                let tx = meta.tx;
                match Recorder::start(&spool_dir, meta) {
                    Ok(recorder) => recording = Some(recorder),
                    Err(error) => report(Recorded::Failed { tx, error }),
                }
            }
            Command::Frame(frame) => {
                queued.fetch_sub(1, Ordering::AcqRel);
                let Some(recorder) = recording.as_mut() else {
                    continue;
                };
                if let Err(error) = recorder.push(&frame) {
                    if let Some(recorder) = recording.take() {
                        let tx = recorder.meta().tx;
                        recorder.abort();
                        report(Recorded::Failed { tx, error });
                    }
                }
            }
            Command::Finish { min_archive } => {
                if let Some(recorder) = recording.take() {
                    let tx = recorder.meta().tx;
                    match recorder.finish(min_archive) {
                        Ok(item) => report(Recorded::Finished { tx, item }),
                        Err(error) => report(Recorded::Failed { tx, error }),
                    }
                }
            }
            Command::Abort => {
                if let Some(recorder) = recording.take() {
                    recorder.abort();
                }
            }
        }
    }
}

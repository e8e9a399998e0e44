//! Recording off the async workers (issue 14.4): room endpoints hand their
//! transmissions to recording threads, so a slow spool disk delays only the
//! recording — never the floor mirror, the other endpoints of the channel, or
//! other channels sharing the runtime's workers.
//!
//! The threads are a small pool shared by every channel (one per core, at most
//! [`MAX_THREADS`]), started at the first recording worker. A thread of its own
//! per channel cost every idle channel a stack and a few KiB of queues
//! (docs/bench/heap), and every frame of every channel a thread wake-up.
//! Each channel's commands go to one thread, so they keep their order.
//!
//! Frames wait in a bounded queue ([`FRAME_QUEUE`], 10 s of audio). When it is
//! full the disk is far behind real time; the frame is not queued: it is
//! counted in `walkie_archive_frames_dropped_total{channel,reason="spool_slow"}`,
//! logged once per transmission at warning level, and the recording goes on
//! with a gap that the recorder splices like a frame lost on the way (counted
//! in its `lost` stat and logged when it finishes). Starting, finishing and
//! aborting are never dropped: the recording is always finished and queued.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use walkie_endpoint::lossy_queue;
use walkie_endpoint::{AudioFrame, TxId};

use super::{ArchiveError, OutboxItem, Recorder, RecordingMeta, WaveformSource};

/// Frames waiting for the spool: 10 s of 20 ms frames.
pub const FRAME_QUEUE: usize = 500;
/// Recording threads at most, however many cores: writing a frame takes a few
/// microseconds, so even a few thousand streams keep a thread far from busy.
pub const MAX_THREADS: usize = 4;

/// One command of one worker, for the pool thread that serves the worker.
struct Job {
    worker: u64,
    command: Command,
}

enum Command {
    /// The worker's first command: where its results go.
    Open {
        results: lossy_queue::Sender<Recorded>,
        queued: Arc<AtomicUsize>,
    },
    /// The worker is dropped: its open recording (if any) is left in the spool,
    /// salvaged at the next start.
    Close,
    Start {
        spool_dir: PathBuf,
        meta: RecordingMeta,
        waveform: WaveformSource,
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
    id: u64,
    commands: Arc<JobQueue>,
    queued: Arc<AtomicUsize>,
    /// Unbounded and lossless, and allocated only while results wait: tokio's
    /// `mpsc` allocates 32 slots when made (6.7 KiB of every idle channel's heap)
    /// for what is one result per transmission.
    results: lossy_queue::Receiver<Recorded>,
    channel: String,
    /// The transmission being recorded, as far as this side knows.
    current: Option<TxId>,
    /// Frames of `current` the queue had no room for.
    dropped: u64,
    waveform: WaveformSource,
}

impl RecordingWorker {
    /// A worker for `channel`, on one of the pool's threads (started with the
    /// first worker). Dropping it closes it once the commands already sent are done.
    pub fn spawn(channel: &str, waveform: WaveformSource) -> std::io::Result<Self> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let commands = pool_thread(id)?;
        let (results_tx, results) = lossy_queue::unbounded();
        let mut worker = Self {
            id,
            commands,
            queued: Arc::default(),
            results,
            channel: channel.to_owned(),
            current: None,
            dropped: 0,
            waveform,
        };
        let queued = Arc::clone(&worker.queued);
        worker.send(Command::Open {
            results: results_tx,
            queued,
        });
        Ok(worker)
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
            waveform: self.waveform,
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
        // An error only once the pool thread dropped this worker's slot (an
        // unbounded queue never lags).
        self.results.recv().await.ok()
    }

    fn send(&mut self, command: Command) {
        let job = Job {
            worker: self.id,
            command,
        };
        self.commands.push(job);
    }
}

impl Drop for RecordingWorker {
    fn drop(&mut self) {
        self.send(Command::Close);
    }
}

/// How long a frame may wait for its pool thread while recordings are open.
const FRAME_BATCH: Duration = Duration::from_millis(20);

/// One pool thread's queue. Frames are queued without waking the thread: while
/// a recording is open it takes what is queued every [`FRAME_BATCH`]. A wake-up
/// per frame (a futex wake and a contended lock on both sides) was a third of a
/// passthrough stream's CPU (docs/bench/ceiling-stages.txt). Every other command
/// wakes the thread at once, after the frames queued before it.
#[derive(Default)]
struct JobQueue {
    jobs: Mutex<VecDeque<Job>>,
    wake: Condvar,
}

impl JobQueue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Job>> {
        // Pushing and swapping cannot leave the queue half-changed.
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, job: Job) {
        let urgent = !matches!(job.command, Command::Frame(_));
        self.lock().push_back(job);
        if urgent {
            self.wake.notify_one();
        }
    }

    /// Moves what is queued into `batch` (empty), waiting for it: at most
    /// [`FRAME_BATCH`] while `recording`, otherwise until a command wakes it.
    fn take(&self, recording: bool, batch: &mut VecDeque<Job>) {
        let mut jobs = self.lock();
        if jobs.is_empty() {
            jobs = if recording {
                match self.wake.wait_timeout(jobs, FRAME_BATCH) {
                    Ok((jobs, _)) => jobs,
                    Err(poisoned) => poisoned.into_inner().0,
                }
            } else {
                self.wake
                    .wait(jobs)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
            };
        }
        std::mem::swap(&mut *jobs, batch);
    }
}

/// The queue of the pool thread that serves worker `id`, starting the pool if
/// this is the first worker.
fn pool_thread(id: u64) -> std::io::Result<Arc<JobQueue>> {
    static POOL: Mutex<Vec<Arc<JobQueue>>> = Mutex::new(Vec::new());
    let mut threads = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if threads.is_empty() {
        let wanted = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_THREADS);
        for i in 0..wanted {
            let queue = Arc::new(JobQueue::default());
            let served = Arc::clone(&queue);
            let spawned = std::thread::Builder::new()
                .name(format!("recorder {i}"))
                .spawn(move || serve(&served));
            match spawned {
                Ok(_) => threads.push(queue),
                // Fewer threads is fine; none is an error (tried again next time).
                Err(error) if threads.is_empty() => return Err(error),
                Err(_) => break,
            }
        }
    }
    // Round robin by worker: channels started together spread over the threads.
    let index = (id % threads.len() as u64) as usize;
    Ok(Arc::clone(&threads[index]))
}

/// One worker's state on its pool thread.
struct Slot {
    results: lossy_queue::Sender<Recorded>,
    queued: Arc<AtomicUsize>,
    recording: Option<Recorder>,
}

/// A pool thread: for each worker, one recording at a time, in the order its
/// commands came. It runs as long as the process.
fn serve(queue: &JobQueue) {
    let mut slots: HashMap<u64, Slot> = HashMap::new();
    let mut batch = VecDeque::new();
    loop {
        let recording = slots.values().any(|slot| slot.recording.is_some());
        queue.take(recording, &mut batch);
        for Job { worker, command } in batch.drain(..) {
            serve_one(&mut slots, worker, command);
        }
    }
}

/// One command of one worker.
fn serve_one(slots: &mut HashMap<u64, Slot>, worker: u64, command: Command) {
    match command {
        Command::Open { results, queued } => {
            slots.insert(
                worker,
                Slot {
                    results,
                    queued,
                    recording: None,
                },
            );
        }
        Command::Close => {
            slots.remove(&worker);
        }
        command => {
            let Some(slot) = slots.get_mut(&worker) else {
                return;
            };
            // A bug in one recording must not end every channel's recording:
            // that recording fails (its file salvaged at the next start) and
            // the thread goes on.
            let tx = match &command {
                Command::Start { meta, .. } => Some(meta.tx),
                _ => slot.recording.as_ref().map(|r| r.meta().tx),
            };
            if catch_unwind(AssertUnwindSafe(|| slot.handle(command))).is_err() {
                tracing::error!(
                    ?tx,
                    "a recording panicked; its file is salvaged at the next start"
                );
                let recording = slot.recording.take();
                let _ = catch_unwind(AssertUnwindSafe(move || drop(recording)));
                if let Some(tx) = tx {
                    slot.report(Recorded::Failed {
                        tx,
                        error: ArchiveError::Panicked,
                    });
                }
            }
        }
    }
}

impl Slot {
    fn report(&self, recorded: Recorded) {
        // The endpoint is gone: nobody left to queue it; recovery will.
        let _ = self.results.send(recorded);
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Open { .. } | Command::Close => {}
            Command::Start {
                spool_dir,
                meta,
                waveform,
            } => {
                if let Some(stale) = self.recording.take() {
                    tracing::warn!(tx = %stale.meta().tx, "recording never saw its release; aborting it");
                    stale.abort();
                }
                let tx = meta.tx;
                match Recorder::start_with(&spool_dir, meta, waveform) {
                    Ok(recorder) => self.recording = Some(recorder),
                    Err(error) => self.report(Recorded::Failed { tx, error }),
                }
            }
            Command::Frame(frame) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                let Some(recorder) = self.recording.as_mut() else {
                    return;
                };
                if let Err(error) = recorder.push(&frame) {
                    if let Some(recorder) = self.recording.take() {
                        let tx = recorder.meta().tx;
                        recorder.abort();
                        self.report(Recorded::Failed { tx, error });
                    }
                }
            }
            Command::Finish { min_archive } => {
                if let Some(recorder) = self.recording.take() {
                    let tx = recorder.meta().tx;
                    match recorder.finish(min_archive) {
                        Ok(item) => self.report(Recorded::Finished { tx, item }),
                        Err(error) => self.report(Recorded::Failed { tx, error }),
                    }
                }
            }
            Command::Abort => {
                if let Some(recorder) = self.recording.take() {
                    recorder.abort();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .expect("procfs")
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with("recorder"))
            .count()
    }

    #[tokio::test]
    async fn many_channels_share_a_few_recording_threads() {
        let mut workers: Vec<RecordingWorker> = (0..40)
            .map(|i| {
                RecordingWorker::spawn(&format!("channel{i}"), WaveformSource::Decoded)
                    .expect("a pool thread")
            })
            .collect();
        // A round trip through every worker's thread (a start in a spool that
        // cannot exist fails at once), so each thread serving one has started.
        for (i, worker) in workers.iter_mut().enumerate() {
            let meta = RecordingMeta {
                tx: TxId::generate(),
                channel: format!("channel{i}"),
                room_id: "!room:example.org".into(),
                sender: "@walkie:example.org".into(),
                talker: "Tester".into(),
                started_at: std::time::SystemTime::now(),
            };
            worker.start(Path::new("/proc/no-spool-here"), meta);
            assert!(matches!(worker.next().await, Some(Recorded::Failed { .. })));
        }
        let threads = recorder_threads();
        assert!(
            (1..=MAX_THREADS).contains(&threads),
            "{threads} recording threads for {} channels",
            workers.len()
        );
    }
}

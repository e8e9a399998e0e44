//! Reads spool files for the outbox on one thread of its own.
//!
//! `tokio::fs::read` runs on tokio's blocking pool, whose idle threads live on
//! as long as work keeps arriving within their keep-alive (10 s): the outbox's
//! read of every recording (two a second at 20 busy channels) kept every
//! thread the pool ever had alive, and each rare moment when something else
//! needed the pool at the same time left it one thread — and that thread's
//! allocator cache — bigger for good (issue 14, the 2-hour soak's RSS steps).
//! One thread that only reads keeps the pool for rare work, whose threads end
//! when it is done. A slow spool disk delays the outbox only, as before. Not
//! the recording threads ([`super::worker`]): their queues keep each channel's
//! frames in order, and a read there would hold up a recording behind it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tokio::sync::oneshot;

type Reply = oneshot::Sender<io::Result<Vec<u8>>>;

#[derive(Debug)]
pub struct SpoolReader {
    /// `None` when the thread could not be started: reads fall back to
    /// tokio's pool.
    jobs: Option<mpsc::Sender<(PathBuf, Reply)>>,
}

impl SpoolReader {
    /// Starts the thread; it ends when the reader is dropped.
    pub fn start() -> Self {
        let (jobs, queue) = mpsc::channel::<(PathBuf, Reply)>();
        let spawned = std::thread::Builder::new()
            .name("spool-read".into())
            .spawn(move || {
                for (path, reply) in queue {
                    // The asker may have gone (shutdown): nothing to tell then.
                    let _ = reply.send(std::fs::read(&path));
                }
            });
        match spawned {
            Ok(_) => Self { jobs: Some(jobs) },
            Err(error) => {
                tracing::warn!(%error, "cannot start the spool reader thread; reading on tokio's blocking pool");
                Self { jobs: None }
            }
        }
    }

    /// The whole file, read off the async workers. Should the thread be gone,
    /// tokio's pool reads it: a recording is never failed for want of a reader.
    pub async fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        if let Some(jobs) = &self.jobs {
            let (reply, answer) = oneshot::channel();
            if jobs.send((path.to_owned(), reply)).is_ok() {
                if let Ok(read) = answer.await {
                    return read;
                }
            }
        }
        tokio::fs::read(path).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_files_and_reports_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.ogg");
        std::fs::write(&path, b"OggS and more").unwrap();
        let reader = SpoolReader::start();
        assert_eq!(reader.read(&path).await.unwrap(), b"OggS and more");
        let missing = reader.read(&dir.path().join("gone.ogg")).await.unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    /// The point of it: reading needs nothing of tokio's blocking pool. Here the
    /// pool's one thread is taken, so `tokio::fs::read` would wait forever.
    #[test]
    fn reads_while_the_blocking_pool_is_busy() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.ogg");
        std::fs::write(&path, b"OggS").unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        runtime.block_on(async {
            let (taken, busy) = oneshot::channel();
            let blocker = tokio::task::spawn_blocking(move || {
                let _ = taken.send(());
                let _ = held.recv();
            });
            busy.await.unwrap();
            let reader = SpoolReader::start();
            let read = tokio::time::timeout(std::time::Duration::from_secs(10), reader.read(&path))
                .await
                .expect("the read waited for tokio's blocking pool");
            assert_eq!(read.unwrap(), b"OggS");
            release.send(()).unwrap();
            blocker.await.unwrap();
        });
    }
}

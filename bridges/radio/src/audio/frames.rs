//! Sample plumbing between the cpal callbacks and the rest of the bridge.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Cuts a stream of samples into fixed-size frames.
#[derive(Debug, Clone)]
pub struct Framer {
    size: usize,
    buf: Vec<i16>,
}

impl Framer {
    /// Frames of `size` samples.
    pub fn new(size: usize) -> Self {
        Self {
            size: size.max(1),
            buf: Vec::with_capacity(size.max(1)),
        }
    }

    /// Adds samples; calls `emit` for every completed frame.
    pub fn push(&mut self, mut pcm: &[i16], mut emit: impl FnMut(Vec<i16>)) {
        while !pcm.is_empty() {
            let take = (self.size - self.buf.len()).min(pcm.len());
            self.buf.extend_from_slice(&pcm[..take]);
            pcm = &pcm[take..];
            if self.buf.len() == self.size {
                emit(std::mem::replace(
                    &mut self.buf,
                    Vec::with_capacity(self.size),
                ));
            }
        }
    }
}

/// Mixes interleaved `channels`-channel samples down to mono by averaging
/// (a radio interface wired to one channel of a stereo card loses 6 dB, which
/// the VOX threshold and level settings absorb; averaging never clips).
pub fn mono_from_interleaved(data: &[i16], channels: usize) -> Vec<i16> {
    if channels <= 1 {
        return data.to_vec();
    }
    data.chunks_exact(channels)
        .map(|c| {
            let sum: i32 = c.iter().map(|&s| i32::from(s)).sum();
            (sum / channels as i32) as i16
        })
        .collect()
}

/// Playback samples at the device rate, shared between `Playback::play` and
/// the device callback. A mutex rather than a lock-free ring: the ALSA
/// callback runs on an ordinary thread, and the lock is held for a memcpy.
#[derive(Debug, Default)]
pub(crate) struct PlayQueue {
    samples: Mutex<VecDeque<i16>>,
    len: AtomicUsize,
    pushed: AtomicU64,
    popped: AtomicU64,
}

impl PlayQueue {
    pub(crate) fn push(&self, pcm: &[i16]) {
        let mut q = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        q.extend(pcm.iter().copied());
        self.len.store(q.len(), Ordering::Release);
        self.pushed.fetch_add(pcm.len() as u64, Ordering::AcqRel);
    }

    /// Fills `out` (mono, device rate) from the queue; silence when it runs dry.
    /// Returns the total number of samples popped so far.
    pub(crate) fn pop_into(&self, out: &mut [i16]) -> u64 {
        let mut q = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let n = out.len().min(q.len());
        for (o, s) in out.iter_mut().zip(q.drain(..n)) {
            *o = s;
        }
        out[n..].fill(0);
        self.len.store(q.len(), Ordering::Release);
        self.popped.fetch_add(n as u64, Ordering::AcqRel) + n as u64
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn pushed_total(&self) -> u64 {
        self.pushed.load(Ordering::Acquire)
    }
}

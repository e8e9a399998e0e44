//! Sound card audio of the radio endpoint.
//!
//! The rest of the bridge speaks 48 kHz mono i16 in 20 ms frames
//! (`walkie_endpoint::audio`); a sound card runs at whatever rate and channel
//! count it natively has. A [`SoundCard`] hides that: capture delivers 48 kHz
//! frames through a channel, playback accepts 48 kHz PCM, and both report
//! [`CaptureEvent::Disconnected`] / [`PlaybackEvent::Disconnected`] when the
//! device disappears (a USB interface unplugged). [`CpalSoundCard`] is the
//! real implementation on cpal's ALSA host; [`retry::open_with_retry`]
//! reopens a card that went away.

mod cpal_card;
mod frames;
pub mod retry;

pub use cpal_card::{find_device, CpalSoundCard, DeviceDirection};
pub use frames::{mono_from_interleaved, Framer};

use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// 20 ms at 48 kHz: one frame of the bridge's internal audio.
pub use walkie_endpoint::audio::{FRAME_SAMPLES, SAMPLE_RATE};

/// How many captured frames may wait in the channel: 2 s. A consumer that
/// falls further behind loses frames (counted) rather than growing memory.
pub const DEFAULT_CAPTURE_QUEUE_FRAMES: usize = 100;

/// How much playback may be queued ahead of the card, in 48 kHz samples (4 s).
/// More means the caller is feeding faster than real time, which the radio
/// path never does; refusing it keeps latency bounded.
pub const DEFAULT_PLAYBACK_QUEUE_SAMPLES: usize = 4 * SAMPLE_RATE as usize;

/// Why a sound card could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum SoundCardError {
    /// No device matches the configured name.
    #[error("no sound card {direction} device matches {name:?}; available: {available}")]
    NotFound {
        /// The configured name.
        name: String,
        /// Capture or playback.
        direction: DeviceDirection,
        /// Device names that exist (for the log line).
        available: String,
    },
    /// The name matches several devices by description.
    #[error("sound card name {name:?} matches several {direction} devices: {matches}; use one of these names")]
    Ambiguous {
        /// The configured name.
        name: String,
        /// Capture or playback.
        direction: DeviceDirection,
        /// The matching device names.
        matches: String,
    },
    /// The device exists but cannot be used (busy, no usable format…).
    #[error("sound card {name:?} ({direction}): {message}")]
    Device {
        /// The configured name.
        name: String,
        /// Capture or playback.
        direction: DeviceDirection,
        /// What the backend said.
        message: String,
    },
    /// The device vanished.
    #[error("sound card {name:?} ({direction}) disconnected: {message}")]
    Disconnected {
        /// The configured name.
        name: String,
        /// Capture or playback.
        direction: DeviceDirection,
        /// What the backend said.
        message: String,
    },
    /// More playback queued than [`DEFAULT_PLAYBACK_QUEUE_SAMPLES`] allows.
    #[error("playback queue full ({queued} samples queued at {rate} Hz)")]
    QueueFull {
        /// Samples waiting at the device rate.
        queued: usize,
        /// Device rate.
        rate: u32,
    },
    /// Resampling failed (only for rates outside what the resampler accepts).
    #[error("resampling: {0}")]
    Resample(#[from] walkie_endpoint::audio::AudioError),
}

/// What capture delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum CaptureEvent {
    /// 20 ms of captured audio, 48 kHz mono ([`FRAME_SAMPLES`] samples).
    Frame(Vec<i16>),
    /// The device went away; no more frames follow. Reopen (see [`retry`]).
    Disconnected(String),
}

/// What playback reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaybackEvent {
    /// The device went away; queued audio is lost. Unkey first, then reopen.
    Disconnected(String),
}

/// The format a stream was opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFormat {
    /// Device sample rate in Hz.
    pub rate: u32,
    /// Device channel count (capture is mixed down, playback duplicated).
    pub channels: u16,
}

/// A running capture stream. Dropping it stops the stream.
pub struct Capture {
    /// 20 ms frames at 48 kHz, then possibly one `Disconnected`.
    pub events: mpsc::Receiver<CaptureEvent>,
    /// What the device runs at.
    pub format: StreamFormat,
    /// Frames dropped because `events` was full.
    pub dropped: Arc<std::sync::atomic::AtomicU64>,
    /// Keeps the stream alive; dropping it stops and closes the device.
    pub(crate) _guard: Box<dyn Send>,
}

impl Capture {
    /// A capture fed by something other than cpal (another audio backend; a
    /// test's paced source). `guard` lives as long as the capture and stops the
    /// source when dropped.
    pub fn from_source(
        events: mpsc::Receiver<CaptureEvent>,
        format: StreamFormat,
        guard: Box<dyn Send>,
    ) -> Self {
        Self {
            events,
            format,
            dropped: Arc::default(),
            _guard: guard,
        }
    }
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// A running playback stream. Dropping it stops the stream (queued audio is
/// discarded; wait for [`Playback::drained`] first to hear it all).
pub struct Playback {
    pub(crate) format: StreamFormat,
    pub(crate) resampler: walkie_endpoint::audio::Resampler,
    pub(crate) queue: Arc<frames::PlayQueue>,
    pub(crate) played: watch::Receiver<u64>,
    /// Disconnection reports.
    pub events: mpsc::Receiver<PlaybackEvent>,
    pub(crate) max_queue: usize,
    pub(crate) _guard: Box<dyn Send>,
}

impl std::fmt::Debug for Playback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Playback")
            .field("format", &self.format)
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

/// The device side of a [`Playback`] made by [`Playback::driven`]: whatever plays
/// the audio (another backend, a test's paced clock) pulls samples here.
pub struct PlaybackDriver {
    queue: Arc<frames::PlayQueue>,
    played: watch::Sender<u64>,
    events: mpsc::Sender<PlaybackEvent>,
}

impl PlaybackDriver {
    /// Fills `out` (mono, device rate) with the next queued samples, silence when
    /// none are queued: what a card's period callback does.
    pub fn pull(&self, out: &mut [i16]) {
        let total = self.queue.pop_into(out);
        self.played.send_replace(total);
    }

    /// The device went away.
    pub fn disconnect(&self, why: impl Into<String>) {
        let _ = self
            .events
            .try_send(PlaybackEvent::Disconnected(why.into()));
    }
}

impl Playback {
    /// A playback whose samples are pulled through the returned driver rather
    /// than by cpal. `guard` lives as long as the playback.
    pub fn driven(
        format: StreamFormat,
        guard: Box<dyn Send>,
    ) -> Result<(Self, PlaybackDriver), SoundCardError> {
        let queue = Arc::new(frames::PlayQueue::default());
        let (played_tx, played_rx) = watch::channel(0u64);
        let (ev_tx, ev_rx) = mpsc::channel(4);
        let max_queue = (DEFAULT_PLAYBACK_QUEUE_SAMPLES as u64 * u64::from(format.rate)
            / u64::from(SAMPLE_RATE)) as usize;
        let playback = Self {
            format,
            resampler: walkie_endpoint::audio::Resampler::new(SAMPLE_RATE, format.rate)?,
            queue: Arc::clone(&queue),
            played: played_rx,
            events: ev_rx,
            max_queue,
            _guard: guard,
        };
        Ok((
            playback,
            PlaybackDriver {
                queue,
                played: played_tx,
                events: ev_tx,
            },
        ))
    }

    /// What the device runs at.
    pub fn format(&self) -> StreamFormat {
        self.format
    }

    /// Queues 48 kHz mono PCM for playback (any length). The resampler keeps
    /// a few ms back until more arrives or [`finish`](Self::finish) is called.
    pub fn play(&mut self, pcm: &[i16]) -> Result<(), SoundCardError> {
        let queued = self.queue.len();
        let incoming = pcm.len() as u64 * u64::from(self.format.rate) / u64::from(SAMPLE_RATE);
        if queued as u64 + incoming > self.max_queue as u64 {
            return Err(SoundCardError::QueueFull {
                queued,
                rate: self.format.rate,
            });
        }
        let out = self.resampler.process(pcm)?;
        self.queue.push(&out);
        Ok(())
    }

    /// Ends a stretch of audio: pushes out what the resampler holds back.
    /// Call at the end of each transmission.
    pub fn finish(&mut self) -> Result<(), SoundCardError> {
        let out = self.resampler.flush()?;
        self.queue.push(&out);
        Ok(())
    }

    /// Queues a complete stretch of 48 kHz audio (a Morse ID, a whole
    /// message) and ends it, in one step: the device never sees the gap
    /// that separate [`play`](Self::play) and [`finish`](Self::finish) calls
    /// could leave when the card drains faster than they arrive.
    pub fn play_complete(&mut self, pcm: &[i16]) -> Result<(), SoundCardError> {
        let queued = self.queue.len();
        let incoming = pcm.len() as u64 * u64::from(self.format.rate) / u64::from(SAMPLE_RATE);
        if queued as u64 + incoming > self.max_queue as u64 {
            return Err(SoundCardError::QueueFull {
                queued,
                rate: self.format.rate,
            });
        }
        let mut out = self.resampler.process(pcm)?;
        out.extend(self.resampler.flush()?);
        self.queue.push(&out);
        Ok(())
    }

    /// Samples (at the device rate) waiting to be played.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Resolves when everything queued so far has been handed to the device.
    pub async fn drained(&mut self) {
        let target = self.queue.pushed_total();
        // A closed channel means the stream thread ended (device gone): nothing more will play.
        let _ = self.played.wait_for(|&played| played >= target).await;
    }
}

/// A sound card: the seam between the radio endpoint and the audio device,
/// so the endpoint can be tested without hardware.
pub trait SoundCard: Send + Sync {
    /// Opens capture at the device's native rate; frames arrive at 48 kHz.
    fn open_capture(&self) -> Result<Capture, SoundCardError>;
    /// Opens playback at the device's native rate; accepts 48 kHz.
    fn open_playback(&self) -> Result<Playback, SoundCardError>;
}

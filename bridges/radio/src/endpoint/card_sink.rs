//! The transmit controller's view of the sound card and of the Morse ID.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::audio::{Playback, SAMPLE_RATE};
use crate::morse;
use crate::tx::{AudioSink, IdSource};
use crate::SinkError;

/// Where the endpoint keeps the playback stream. The transmit thread plays into
/// it; the endpoint's task empties it when the card disappears and refills it
/// when the card is back, without the transmit controller noticing more than
/// failed `play` calls in between.
#[derive(Clone, Default)]
pub struct PlaybackSlot(Arc<Mutex<Option<Playback>>>);

impl PlaybackSlot {
    pub fn put(&self, playback: Option<Playback>) {
        *self.lock() = playback;
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_none()
    }

    fn lock(&self) -> MutexGuard<'_, Option<Playback>> {
        // A panic while holding the lock leaves a stream that is still valid.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// [`AudioSink`] over a [`PlaybackSlot`].
pub struct CardSink {
    slot: PlaybackSlot,
}

impl CardSink {
    pub fn new(slot: PlaybackSlot) -> Self {
        Self { slot }
    }
}

impl AudioSink for CardSink {
    fn play(&mut self, samples: &[i16]) -> Result<(), SinkError> {
        match self.slot.lock().as_mut() {
            Some(playback) => playback.play(samples).map_err(|e| SinkError(e.to_string())),
            None => Err(SinkError("the sound card is unavailable".into())),
        }
    }

    fn flush(&mut self) -> Result<Duration, SinkError> {
        match self.slot.lock().as_mut() {
            Some(playback) => {
                playback.finish().map_err(|e| SinkError(e.to_string()))?;
                let rate = f64::from(playback.format().rate.max(1));
                Ok(Duration::from_secs_f64(playback.queued() as f64 / rate))
            }
            None => Err(SinkError("the sound card is unavailable".into())),
        }
    }
}

/// The station's callsign in Morse, rendered once.
pub struct MorseId {
    samples: Vec<i16>,
}

/// Peak level of the ID tone: clearly audible over speech, well below clipping.
pub const ID_LEVEL_DBFS: f32 = -12.0;

impl MorseId {
    pub fn new(callsign: &str, wpm: u32, tone_hz: u32) -> Result<Self, morse::MorseError> {
        Ok(Self {
            samples: morse::render(callsign, wpm, tone_hz, SAMPLE_RATE, ID_LEVEL_DBFS)?,
        })
    }
}

impl IdSource for MorseId {
    fn id_samples(&mut self) -> Vec<i16> {
        self.samples.clone()
    }
}

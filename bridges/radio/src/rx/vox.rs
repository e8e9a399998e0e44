//! VOX on the captured audio, for radios without a COS line.

use super::{Squelch, SquelchError};
use std::time::Instant;
use walkie_endpoint::audio::{VoxConfig, VoxDetector, VoxEvent};

/// Signal detection from the level of the captured audio, with the shared
/// [`VoxDetector`] (threshold, attack, hang — `vox_*` settings). Its attack
/// and hang already debounce it.
#[derive(Debug, Clone)]
pub struct VoxSquelch {
    detector: VoxDetector,
    events: Vec<VoxEvent>,
}

impl VoxSquelch {
    /// VOX on 48 kHz mono audio.
    pub fn new(config: VoxConfig) -> Self {
        Self {
            detector: VoxDetector::new(config),
            events: Vec::new(),
        }
    }

    /// Whether voice is present.
    pub fn is_open(&self) -> bool {
        self.detector.is_open()
    }

    /// Stream time analysed so far (ms): the clock of [`Self::take_events`].
    pub fn position_ms(&self) -> u64 {
        self.detector.position_ms()
    }

    /// The VOX transitions since the last call, stamped with stream time —
    /// sample-accurate, unlike the wall-clock `now` of [`Squelch::poll`].
    pub fn take_events(&mut self) -> Vec<VoxEvent> {
        std::mem::take(&mut self.events)
    }
}

impl Squelch for VoxSquelch {
    fn poll(&mut self, _now: Instant) -> Result<bool, SquelchError> {
        Ok(self.detector.is_open())
    }

    fn feed_audio(&mut self, pcm: &[i16], _now: Instant) {
        let events = self.detector.push(pcm);
        self.events.extend(events);
    }

    fn reset(&mut self) {
        if let Some(e) = self.detector.reset() {
            self.events.push(e);
        }
    }
}

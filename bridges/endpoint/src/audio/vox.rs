//! Voice-operated switch: decides from the signal level when a radio (or any
//! source without a carrier line) is transmitting to us.

use super::level::dbfs;
use super::{FRAME_MS, SAMPLE_RATE};

/// VOX settings, the `vox_*` keys of a `[radio.NAME]` section.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VoxConfig {
    /// A frame louder than this (RMS, dBFS) counts as voice.
    pub threshold_dbfs: f32,
    /// Voice must last this long, uninterrupted, before the switch opens;
    /// filters clicks and short bursts of noise.
    pub attack_ms: u32,
    /// The switch closes only after this long without voice, so pauses
    /// between words do not split a transmission.
    pub hang_ms: u32,
}

impl Default for VoxConfig {
    /// -40 dBFS / 40 ms / 800 ms, as DESIGN.md §5 specifies.
    fn default() -> Self {
        Self {
            threshold_dbfs: -40.0,
            attack_ms: 40,
            hang_ms: 800,
        }
    }
}

/// A change of the VOX state, stamped with stream time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoxEvent {
    /// Voice detected. `at_ms` is the end of the frame that completed the attack.
    Opened {
        /// Stream time in milliseconds since the detector started.
        at_ms: u64,
    },
    /// Voice ended. `at_ms` is the end of the frame that completed the hang.
    Closed {
        /// Stream time in milliseconds since the detector started.
        at_ms: u64,
    },
}

/// Level-based voice detector with attack and hang times.
///
/// Feed it PCM in any chunking through [`push`](Self::push) (it analyses
/// 20 ms frames), or pre-computed frame levels through
/// [`push_level`](Self::push_level).
#[derive(Debug, Clone)]
pub struct VoxDetector {
    config: VoxConfig,
    frame_len: usize,
    frame_ms: u32,
    buffer: Vec<i16>,
    open: bool,
    /// Milliseconds of uninterrupted voice (while closed) or silence (while open).
    run_ms: u64,
    now_ms: u64,
}

impl VoxDetector {
    /// A detector for 48 kHz PCM.
    pub fn new(config: VoxConfig) -> Self {
        Self::with_sample_rate(config, SAMPLE_RATE)
    }

    /// A detector for PCM at `sample_rate` Hz (e.g. a sound card at 16 kHz).
    pub fn with_sample_rate(config: VoxConfig, sample_rate: u32) -> Self {
        let frame_len = (sample_rate / 1000 * FRAME_MS).max(1) as usize;
        Self {
            config,
            frame_len,
            frame_ms: FRAME_MS,
            buffer: Vec::with_capacity(frame_len),
            open: false,
            run_ms: 0,
            now_ms: 0,
        }
    }

    /// The settings in use.
    pub fn config(&self) -> VoxConfig {
        self.config
    }

    /// Whether the switch is open (voice present).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Stream time analysed so far, in milliseconds.
    pub fn position_ms(&self) -> u64 {
        self.now_ms
    }

    /// Feeds PCM in any chunk size; returns the state changes it caused, in order.
    pub fn push(&mut self, pcm: &[i16]) -> Vec<VoxEvent> {
        let mut events = Vec::new();
        let mut rest = pcm;
        while !rest.is_empty() {
            let take = (self.frame_len - self.buffer.len()).min(rest.len());
            self.buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buffer.len() == self.frame_len {
                let level = dbfs(&self.buffer);
                self.buffer.clear();
                events.extend(self.push_level(level, self.frame_ms));
            }
        }
        events
    }

    /// Feeds the level of one analysed stretch of `duration_ms` milliseconds.
    pub fn push_level(&mut self, level_dbfs: f32, duration_ms: u32) -> Option<VoxEvent> {
        self.now_ms += u64::from(duration_ms);
        let voice = level_dbfs > self.config.threshold_dbfs;
        if voice != self.open {
            self.run_ms += u64::from(duration_ms);
        } else {
            self.run_ms = 0;
        }
        if !self.open && voice && self.run_ms >= u64::from(self.config.attack_ms) {
            self.open = true;
            self.run_ms = 0;
            return Some(VoxEvent::Opened { at_ms: self.now_ms });
        }
        if self.open && !voice && self.run_ms >= u64::from(self.config.hang_ms) {
            self.open = false;
            self.run_ms = 0;
            return Some(VoxEvent::Closed { at_ms: self.now_ms });
        }
        None
    }

    /// Closes the switch and forgets partial frames, e.g. when our own
    /// transmission starts (the bridge must never take its own audio for received audio).
    pub fn reset(&mut self) -> Option<VoxEvent> {
        self.buffer.clear();
        self.run_ms = 0;
        if self.open {
            self.open = false;
            Some(VoxEvent::Closed { at_ms: self.now_ms })
        } else {
            None
        }
    }
}

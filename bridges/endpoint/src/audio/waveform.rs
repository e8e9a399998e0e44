//! The `org.matrix.msc1767.audio` waveform and duration of a voice message (MSC3245).

use super::level::dbfs_to_rms;
use super::{FRAME_MS, SAMPLE_RATE};

/// Points in a waveform of a clip of at least that many frames.
pub const WAVEFORM_POINTS: usize = 100;
/// Highest waveform value MSC1767 allows.
pub const WAVEFORM_MAX: u16 = 1024;
/// Normalisation never amplifies more than as if the loudest bucket were this
/// loud (dBFS), so silence and hiss draw as flat, low bars instead of being
/// blown up to full height.
pub const WAVEFORM_MIN_REFERENCE_DBFS: f32 = -40.0;

/// Builds a waveform from PCM (or from per-frame levels) as it streams by.
///
/// Scale: each point is the **RMS** of its bucket, linear in amplitude,
/// normalised so the loudest bucket of the clip is 1024 — unless that bucket
/// is quieter than [`WAVEFORM_MIN_REFERENCE_DBFS`], in which case that level
/// stands for 1024. RMS rather than peak, because one click would otherwise
/// flatten the rest of the picture; normalised because clients draw the bars
/// relative to 1024 and a quiet talker should still see their words.
///
/// A clip of `n` 20 ms frames gives `min(n, 100)` points; each point covers
/// `n / 100` consecutive frames (buckets differ by at most one frame).
#[derive(Debug, Clone)]
pub struct Waveform {
    sample_rate: u32,
    frame_len: usize,
    /// Mean square per completed frame; the energy, so buckets can average it exactly.
    frames: Vec<f64>,
    partial_sum: f64,
    partial_len: usize,
    samples: u64,
}

impl Default for Waveform {
    fn default() -> Self {
        Self::new()
    }
}

impl Waveform {
    /// A builder for 48 kHz PCM.
    pub fn new() -> Self {
        Self::with_sample_rate(SAMPLE_RATE)
    }

    /// A builder for PCM at `sample_rate` Hz.
    pub fn with_sample_rate(sample_rate: u32) -> Self {
        let sample_rate = sample_rate.max(1);
        Self {
            sample_rate,
            frame_len: ((sample_rate / 1000 * FRAME_MS) as usize).max(1),
            frames: Vec::new(),
            partial_sum: 0.0,
            partial_len: 0,
            samples: 0,
        }
    }

    /// Adds PCM in any chunk size.
    pub fn push_pcm(&mut self, pcm: &[i16]) {
        self.samples += pcm.len() as u64;
        for &s in pcm {
            self.partial_sum += f64::from(s) * f64::from(s);
            self.partial_len += 1;
            if self.partial_len == self.frame_len {
                self.frames.push(self.partial_sum / self.frame_len as f64);
                self.partial_sum = 0.0;
                self.partial_len = 0;
            }
        }
    }

    /// Adds one 20 ms frame given only its level (e.g. from a VOX or a meter
    /// that already computed it); counts 20 ms towards the duration.
    pub fn push_frame_level(&mut self, level_dbfs: f32) {
        self.flush_partial();
        let rms = dbfs_to_rms(level_dbfs);
        self.frames.push(rms * rms);
        self.samples += self.frame_len as u64;
    }

    /// Adds `samples` of audio known only by its level (e.g. estimated from
    /// something other than the samples); counts them towards the duration.
    pub fn push_level(&mut self, level_dbfs: f32, samples: usize) {
        let rms = dbfs_to_rms(level_dbfs);
        let mean_square = rms * rms;
        self.samples += samples as u64;
        let mut left = samples;
        while left > 0 {
            let take = left.min(self.frame_len - self.partial_len);
            self.partial_sum += mean_square * take as f64;
            self.partial_len += take;
            left -= take;
            if self.partial_len == self.frame_len {
                self.frames.push(self.partial_sum / self.frame_len as f64);
                self.partial_sum = 0.0;
                self.partial_len = 0;
            }
        }
    }

    /// Duration of everything pushed, in milliseconds (rounded).
    pub fn duration_ms(&self) -> u64 {
        let rate = u64::from(self.sample_rate);
        (self.samples * 1000 + rate / 2) / rate
    }

    /// Number of (possibly partial) frames seen so far.
    pub fn frames(&self) -> usize {
        self.frames.len() + usize::from(self.partial_len > 0)
    }

    /// The waveform so far: up to 100 values in `0..=1024`.
    pub fn finish(&self) -> Vec<u16> {
        let mut frames = self.frames.clone();
        if self.partial_len > 0 {
            frames.push(self.partial_sum / self.partial_len as f64);
        }
        let n = frames.len();
        let points = n.min(WAVEFORM_POINTS);
        if points == 0 {
            return Vec::new();
        }
        let buckets: Vec<f64> = (0..points)
            .map(|i| {
                let (start, end) = (i * n / points, (i + 1) * n / points);
                let slice = &frames[start..end];
                (slice.iter().sum::<f64>() / slice.len() as f64).sqrt()
            })
            .collect();
        let loudest = buckets.iter().copied().fold(0.0, f64::max);
        let reference = loudest.max(dbfs_to_rms(WAVEFORM_MIN_REFERENCE_DBFS));
        buckets
            .iter()
            .map(|&rms| {
                let v = (rms / reference * f64::from(WAVEFORM_MAX)).round();
                v.clamp(0.0, f64::from(WAVEFORM_MAX)) as u16
            })
            .collect()
    }

    fn flush_partial(&mut self) {
        if self.partial_len > 0 {
            self.frames.push(self.partial_sum / self.partial_len as f64);
            self.partial_sum = 0.0;
            self.partial_len = 0;
        }
    }
}

/// Waveform of a whole 48 kHz clip (see [`Waveform`] for the scale).
pub fn waveform(pcm: &[i16]) -> Vec<u16> {
    let mut w = Waveform::new();
    w.push_pcm(pcm);
    w.finish()
}

/// Duration of `samples` samples at 48 kHz, in milliseconds (rounded).
pub fn duration_ms(samples: usize) -> u64 {
    let rate = u64::from(SAMPLE_RATE);
    (samples as u64 * 1000 + rate / 2) / rate
}

// Keeps the level helpers' round trip honest: a bucket built from a level must
// read back as that level.
#[cfg(test)]
mod tests {
    use super::super::level::{dbfs, rms_to_dbfs};
    use super::*;

    #[test]
    fn level_round_trip() {
        let rms = dbfs_to_rms(-20.0);
        assert!((rms_to_dbfs(rms) + 20.0).abs() < 1e-3);
        assert!((dbfs(&[16_384; 960]) + 6.02).abs() < 0.01);
    }
}

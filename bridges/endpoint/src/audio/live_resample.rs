//! Sample-rate conversion for live audio, where latency matters more than lining
//! samples up with the source.
//!
//! [`Resampler`](super::Resampler) runs rubato's FFT resampler on 20 ms blocks and
//! trims its start-up delay, so the output lines up with the input sample for
//! sample — right for files, but a live stream pays for it twice: half a block of
//! filter delay, and a frame that can only be completed by the next one (20 ms
//! more). A pcm16 device heard on Mumble waited 22.5 ms (docs/bench/e2e.csv).
//!
//! [`LiveResampler`] runs rubato's windowed-sinc resampler on 1 ms chunks instead
//! and keeps the filter's delay in the signal: the output is exactly `len × to /
//! from` samples for every input that is a whole number of chunks, so a 20 ms
//! frame in gives a 20 ms frame out at once, and the sound lags by the filter's
//! half-length only ([`LiveResampler::delay`]: 1.3 ms at 48 → 16 kHz).
//! For the ratios the bridge's live paths use (48 ↔ 16 and 48 ↔ 8 kHz) the
//! sinc is evaluated exactly at every position it is needed (nearest-point
//! lookup on a table with one entry per output phase), so this is a plain
//! polyphase FIR filter with no interpolation error.

use super::resample::{check_rate, gcd, to_f32, to_i16};
use super::AudioError;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, FixedAsync, Resampler as _, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};

/// Length of the sinc filter in samples at the higher of the two rates, chosen by measurement
/// (`cargo bench --bench codec_quality`, docs/bench/codec-quality.md): at 48 → 16 kHz
/// the delay is 64 input samples (1.3 ms) and the wideband PESQ of the pcm16 round trip
/// is the same as the FFT resampler's.
pub const LIVE_SINC_LEN: usize = 128;

/// Largest table of sinc phases worth keeping (one table per resampler): beyond it
/// the ratio's phases are interpolated (cubic) from 128 points instead.
const MAX_EXACT_PHASES: usize = 256;

/// Streaming mono resampler with low latency; see the module documentation.
pub struct LiveResampler {
    from: u32,
    to: u32,
    /// `None` when `from == to`: samples pass through untouched.
    inner: Option<Async<f32>>,
    chunk_in: usize,
    chunk_out: usize,
    delay: usize,
    pending: Vec<f32>,
    out_chunk: Vec<f32>,
    /// Silence put in front of the first chunk's output; see `with_sinc_len`.
    lead_in: usize,
    /// No chunk converted since the start or the last reset.
    fresh: bool,
}

impl std::fmt::Debug for LiveResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveResampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

impl LiveResampler {
    /// A resampler from `from` Hz to `to` Hz with a [`LIVE_SINC_LEN`] filter.
    pub fn new(from: u32, to: u32) -> Result<Self, AudioError> {
        Self::with_sinc_len(from, to, LIVE_SINC_LEN)
    }

    /// As [`LiveResampler::new`] with another filter length (for measuring).
    pub fn with_sinc_len(from: u32, to: u32, sinc_len: usize) -> Result<Self, AudioError> {
        check_rate(from)?;
        check_rate(to)?;
        let g = gcd(from, to);
        let (unit_in, unit_out) = ((from / g) as usize, (to / g) as usize);
        // The smallest whole number of ratio units that reaches 1 ms: every chunk
        // then maps to a whole number of output samples.
        let units = (from as usize).div_ceil(1000).div_ceil(unit_in).max(1);
        let (chunk_in, chunk_out) = (units * unit_in, units * unit_out);
        let mut this = Self {
            from,
            to,
            inner: None,
            chunk_in,
            chunk_out,
            delay: 0,
            pending: Vec::with_capacity(2 * chunk_in),
            out_chunk: vec![0.0; chunk_out],
            lead_in: 0,
            fresh: true,
        };
        if from == to {
            return Ok(this);
        }
        // Output sample n sits at input position n × unit_in / unit_out: its
        // fractional part is a multiple of 1 / unit_out, so a table of unit_out
        // phases holds every sinc value the filter will ever need.
        let (oversampling, interpolation) = if unit_out <= MAX_EXACT_PHASES {
            (unit_out, SincInterpolationType::Nearest)
        } else {
            (128, SincInterpolationType::Cubic)
        };
        // `sinc_len` counts samples at the higher rate, so the filter spans the same
        // time (and has the same delay) up and down.
        let sinc_len_in = (sinc_len * from as usize).div_ceil(from.max(to) as usize);
        let params = SincInterpolationParameters::new(sinc_len_in, WindowFunction::BlackmanHarris2)
            .oversampling_factor(oversampling)
            .interpolation(interpolation);
        let ratio = f64::from(to) / f64::from(from);
        let mut inner = Async::<f32>::new_sinc(ratio, 1.0, &params, chunk_in, 1, FixedAsync::Input)
            .map_err(|e| AudioError::Resample(e.to_string()))?;
        this.out_chunk = vec![0.0; inner.output_frames_max()];
        // rubato's first chunks come out a sample or two short (its index starts
        // inside the filter); once the filter is full every chunk is exact. Measure
        // the shortfall once and make it up with leading silence, so that every
        // chunk maps to `chunk_out` from the first 20 ms on.
        let silence = vec![0.0; chunk_in];
        let warm_up = sinc_len_in.div_ceil(chunk_in) + 2;
        let mut written = 0;
        for _ in 0..warm_up {
            let adapter_in = InterleavedSlice::new(&silence, 1, chunk_in)
                .map_err(|e| AudioError::Resample(e.to_string()))?;
            let capacity = this.out_chunk.len();
            let mut adapter_out = InterleavedSlice::new_mut(&mut this.out_chunk, 1, capacity)
                .map_err(|e| AudioError::Resample(e.to_string()))?;
            written += inner
                .process_into_buffer(&adapter_in, &mut adapter_out, None)
                .map_err(|e| AudioError::Resample(e.to_string()))?
                .1;
        }
        inner.reset();
        this.lead_in = (warm_up * chunk_out).saturating_sub(written);
        this.delay = inner.output_delay() + this.lead_in;
        this.inner = Some(inner);
        Ok(this)
    }

    /// Input rate in Hz.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// Output rate in Hz.
    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// How far the output lags the input, in output samples (not trimmed).
    pub fn delay(&self) -> usize {
        self.delay
    }

    /// Input samples per internal chunk: input that is a multiple of this comes
    /// out in full at once.
    pub fn chunk_len(&self) -> usize {
        self.chunk_in
    }

    /// Converts `pcm` and appends the output to `out`: `chunk_out` samples for
    /// every whole chunk buffered so far; a partial chunk waits for the next call.
    pub fn process_into(&mut self, pcm: &[i16], out: &mut Vec<i16>) -> Result<(), AudioError> {
        let Some(inner) = self.inner.as_mut() else {
            out.extend_from_slice(pcm);
            return Ok(());
        };
        self.pending.extend(pcm.iter().copied().map(to_f32));
        let chunks = self.pending.len() / self.chunk_in;
        out.reserve(chunks * self.chunk_out);
        if chunks > 0 && self.fresh {
            out.extend(std::iter::repeat_n(0, self.lead_in));
            self.fresh = false;
        }
        for c in 0..chunks {
            let input = &self.pending[c * self.chunk_in..(c + 1) * self.chunk_in];
            let adapter_in = InterleavedSlice::new(input, 1, self.chunk_in)
                .map_err(|e| AudioError::Resample(e.to_string()))?;
            let capacity = self.out_chunk.len();
            let mut adapter_out = InterleavedSlice::new_mut(&mut self.out_chunk, 1, capacity)
                .map_err(|e| AudioError::Resample(e.to_string()))?;
            let (_, written) = inner
                .process_into_buffer(&adapter_in, &mut adapter_out, None)
                .map_err(|e| AudioError::Resample(e.to_string()))?;
            out.extend(self.out_chunk[..written].iter().copied().map(to_i16));
        }
        self.pending.drain(..chunks * self.chunk_in);
        Ok(())
    }

    /// Pushes the last `delay` samples still inside the filter out with silence
    /// (plus any partial chunk), appending them to `out`, and readies the
    /// resampler for a new, unrelated stream.
    pub fn flush_into(&mut self, out: &mut Vec<i16>) -> Result<(), AudioError> {
        if self.inner.is_some() {
            let tail_in = (self.delay * self.from as usize).div_ceil(self.to as usize);
            let pad =
                (self.pending.len() + tail_in).next_multiple_of(self.chunk_in) - self.pending.len();
            let zeros = vec![0i16; pad];
            self.process_into(&zeros, out)?;
        }
        self.reset();
        Ok(())
    }

    /// Drops buffered input and filter state without producing output.
    pub fn reset(&mut self) {
        if let Some(inner) = self.inner.as_mut() {
            inner.reset();
        }
        self.pending.clear();
        self.fresh = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f64, samples: usize) -> Vec<i16> {
        (0..samples)
            .map(|n| {
                let t = n as f64 / f64::from(rate);
                (12_000.0 * (2.0 * std::f64::consts::PI * hz * t).sin()).round() as i16
            })
            .collect()
    }

    fn rms(pcm: &[i16]) -> f64 {
        (pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt()
    }

    #[test]
    fn every_20_ms_frame_comes_out_at_once_for_a_minute() {
        for (from, to) in [
            (48_000, 16_000),
            (16_000, 48_000),
            (48_000, 8_000),
            (8_000, 48_000),
        ] {
            let mut r = LiveResampler::new(from, to).unwrap();
            let input = tone(from, 440.0, (from / 50) as usize);
            let mut out = Vec::new();
            for frame in 0..3_000 {
                out.clear();
                r.process_into(&input, &mut out).unwrap();
                assert_eq!(
                    out.len(),
                    (to / 50) as usize,
                    "{from} → {to}: frame {frame} gave {} samples",
                    out.len()
                );
            }
        }
    }

    #[test]
    fn the_delay_is_a_few_milliseconds_and_the_level_is_kept() {
        let mut r = LiveResampler::new(48_000, 16_000).unwrap();
        assert!(r.delay() > 0 && r.delay() <= 32, "delay {}", r.delay());
        let input = tone(48_000, 1000.0, 48_000);
        let mut out = Vec::new();
        r.process_into(&input, &mut out).unwrap();
        let level = 20.0 * (rms(&out[1600..]) / rms(&input[4800..])).log10();
        assert!(level.abs() < 0.2, "1 kHz changed by {level:.2} dB");
        // Aliasing: 12 kHz at 48 kHz must not come out at 4 kHz.
        let mut r = LiveResampler::new(48_000, 16_000).unwrap();
        let high = tone(48_000, 12_000.0, 48_000);
        let mut out = Vec::new();
        r.process_into(&high, &mut out).unwrap();
        let leak = 20.0 * (rms(&out[1600..]).max(1.0) / rms(&high)).log10();
        assert!(leak < -60.0, "12 kHz leaks through at {leak:.1} dB");
    }

    #[test]
    fn the_output_lags_by_the_delay_it_reports() {
        // An impulse comes out `delay` samples late.
        for (from, to) in [(48_000, 16_000), (16_000, 48_000)] {
            let mut r = LiveResampler::new(from, to).unwrap();
            let mut input = vec![0i16; (from / 50) as usize];
            let at = input.len() / 2;
            input[at] = 30_000;
            let mut out = Vec::new();
            r.process_into(&input, &mut out).unwrap();
            let peak = out
                .iter()
                .enumerate()
                .max_by_key(|(_, s)| s.unsigned_abs())
                .map(|(i, _)| i)
                .unwrap();
            let expected = at * to as usize / from as usize + r.delay();
            // rubato reports half the filter's length; its centre tap is half an
            // input sample earlier (1.5 output samples at 16 → 48 kHz).
            assert!(
                peak.abs_diff(expected) <= 2,
                "{from} → {to}: peak at {peak}, expected {expected}"
            );
        }
    }

    #[test]
    fn flush_lets_the_tail_out_and_resets() {
        let mut r = LiveResampler::new(48_000, 16_000).unwrap();
        let input = tone(48_000, 1000.0, 960);
        let mut out = Vec::new();
        r.process_into(&input[..900], &mut out).unwrap();
        assert_eq!(out.len(), 288, "the partial chunk waits");
        r.flush_into(&mut out).unwrap();
        assert!(
            out.len() >= 300 + r.delay(),
            "{} after the flush",
            out.len()
        );
        let mut again = Vec::new();
        r.process_into(&vec![0; 960], &mut again).unwrap();
        assert!(
            again.iter().all(|&s| s.unsigned_abs() < 2),
            "state was kept"
        );
    }

    #[test]
    fn the_same_rate_passes_through() {
        let mut r = LiveResampler::new(16_000, 16_000).unwrap();
        let input = tone(16_000, 440.0, 321);
        let mut out = Vec::new();
        r.process_into(&input, &mut out).unwrap();
        assert_eq!(out, input);
        assert_eq!(r.delay(), 0);
    }
}

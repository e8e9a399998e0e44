//! Sample-rate conversion between the rates the bridge meets: 8 kHz (radio and
//! narrowband intercoms), 16 kHz (MQTT `pcm16`), 44.1 kHz (sound cards, files)
//! and 48 kHz (the internal Opus rate) — and whatever rate an imported voice
//! message happens to have (11.025, 22.05, 24, 32 kHz…).

use super::AudioError;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler as _, WindowFunction};

/// The rates the bridge's own endpoints use, in Hz. [`Resampler`] accepts any
/// rate in [`MIN_RATE`]`..=`[`MAX_RATE`]; these are the ones it is tuned and tested for.
pub const SUPPORTED_RATES: [u32; 4] = [8_000, 16_000, 44_100, 48_000];
/// Lowest rate [`Resampler`] accepts, in Hz.
pub const MIN_RATE: u32 = 1_000;
/// Highest rate [`Resampler`] accepts, in Hz: bounds the FFT a file header can ask for.
pub const MAX_RATE: u32 = 384_000;

/// Streaming mono resampler with its start-up latency removed.
///
/// Input may arrive in chunks of any size; output sample `n` corresponds to
/// input time `n / to`, exactly as if the whole signal had been converted at
/// once, so a 48k → 16k → 48k round trip lines up with the source.
///
/// Internally it runs rubato's synchronous FFT resampler on blocks of about
/// 20 ms: the smallest whole multiple of the rates' ratio (`from / gcd` input
/// samples) that reaches 20 ms with both blocks even. rubato's delay is then
/// exactly half an output block, so trimming is exact; an odd input block
/// would leave half an input sample of delay (1.09 output samples at
/// 22050 → 48000). For the [`SUPPORTED_RATES`] blocks are exactly 20 ms; for
/// 11025 and 22050 Hz 26.7 ms; for a coprime pair such as 44101 → 48000 two seconds.
/// The price is half a block of start-up delay, paid once and trimmed, plus up
/// to one block of buffering while streaming.
pub struct Resampler {
    from: u32,
    to: u32,
    /// `None` when `from == to`: samples pass through untouched.
    inner: Option<Fft<f32>>,
    block_in: usize,
    block_out: usize,
    delay: usize,
    pending: Vec<f32>,
    out_block: Vec<f32>,
    to_skip: usize,
    consumed: u64,
    emitted: u64,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

pub(super) fn check_rate(rate: u32) -> Result<(), AudioError> {
    if (MIN_RATE..=MAX_RATE).contains(&rate) {
        Ok(())
    } else {
        Err(AudioError::UnsupportedRate(rate))
    }
}

pub(super) fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Input and output block sizes: see [`Resampler`].
fn block_sizes(from: u32, to: u32) -> (usize, usize) {
    let g = gcd(from, to);
    let (unit_in, unit_out) = ((from / g) as usize, (to / g) as usize);
    let mut k = (from as usize).div_ceil(50).div_ceil(unit_in).max(1);
    if (k * unit_in) % 2 == 1 || (k * unit_out) % 2 == 1 {
        k += 1;
    }
    (k * unit_in, k * unit_out)
}

pub(super) fn to_f32(s: i16) -> f32 {
    f32::from(s) / 32_768.0
}

pub(super) fn to_i16(s: f32) -> i16 {
    // The anti-aliasing filter can overshoot full scale slightly; clip rather than wrap.
    (s * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz; both must be in [`MIN_RATE`]`..=`[`MAX_RATE`].
    pub fn new(from: u32, to: u32) -> Result<Self, AudioError> {
        check_rate(from)?;
        check_rate(to)?;
        let (block_in, block_out) = block_sizes(from, to);
        let (inner, delay) = if from == to {
            (None, 0)
        } else {
            let fft = Fft::<f32>::new_custom(
                from as usize,
                to as usize,
                block_in,
                1,
                1,
                WindowFunction::BlackmanHarris2,
                FixedSync::Both,
            )
            .map_err(|e| AudioError::Resample(e.to_string()))?;
            if fft.input_frames_next() != block_in || fft.output_frames_next() != block_out {
                return Err(AudioError::Resample(format!(
                    "rubato chose blocks {}→{} instead of {block_in}→{block_out}",
                    fft.input_frames_next(),
                    fft.output_frames_next()
                )));
            }
            let delay = fft.output_delay();
            (Some(fft), delay)
        };
        Ok(Self {
            from,
            to,
            inner,
            block_in,
            block_out,
            delay,
            pending: Vec::with_capacity(block_in * 2),
            out_block: vec![0.0; block_out],
            to_skip: delay,
            consumed: 0,
            emitted: 0,
        })
    }

    /// Input rate in Hz.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// Output rate in Hz.
    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// Start-up latency of the filter in output samples (trimmed automatically).
    pub fn delay(&self) -> usize {
        self.delay
    }

    /// Converts another chunk; returns whatever output is ready (possibly nothing).
    pub fn process(&mut self, pcm: &[i16]) -> Result<Vec<i16>, AudioError> {
        self.consumed += pcm.len() as u64;
        if self.inner.is_none() {
            self.emitted += pcm.len() as u64;
            return Ok(pcm.to_vec());
        }
        self.pending.extend(pcm.iter().copied().map(to_f32));
        let blocks = self.pending.len() / self.block_in;
        let mut out = Vec::with_capacity(blocks * self.block_out);
        for b in 0..blocks {
            self.run_block(b * self.block_in, None, &mut out)?;
        }
        self.pending.drain(..blocks * self.block_in);
        Ok(out)
    }

    /// Ends the stream: returns the remaining output so that the total output
    /// length is `round(total_input × to / from)`, and readies the resampler
    /// for a new, unrelated stream.
    pub fn flush(&mut self) -> Result<Vec<i16>, AudioError> {
        let expected = (u128::from(self.consumed) * u128::from(self.to)
            + u128::from(self.from) / 2)
            / u128::from(self.from);
        let expected = u64::try_from(expected).unwrap_or(u64::MAX);
        let emitted_before = self.emitted;
        let mut out = Vec::new();
        if self.inner.is_some() {
            // The tail still inside the filter only comes out when zeros push it through.
            let mut partial = Some(self.pending.len());
            while self.emitted < expected {
                self.run_block(0, partial, &mut out)?;
                partial = Some(0);
            }
        }
        let keep = expected.saturating_sub(emitted_before);
        out.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
        self.reset();
        Ok(out)
    }

    /// Drops buffered input and filter state without producing output.
    pub fn reset(&mut self) {
        if let Some(fft) = self.inner.as_mut() {
            fft.reset();
        }
        self.pending.clear();
        self.to_skip = self.delay;
        self.consumed = 0;
        self.emitted = 0;
    }

    fn run_block(
        &mut self,
        offset: usize,
        partial: Option<usize>,
        out: &mut Vec<i16>,
    ) -> Result<(), AudioError> {
        let Some(fft) = self.inner.as_mut() else {
            return Ok(());
        };
        let available = self.pending.len() - offset;
        // A partial block still needs a full-size input buffer behind the adapter.
        let padded;
        let input: &[f32] = if available >= self.block_in {
            &self.pending[offset..offset + self.block_in]
        } else {
            let mut p = self.pending[offset..].to_vec();
            p.resize(self.block_in, 0.0);
            padded = p;
            &padded
        };
        let adapter_in = InterleavedSlice::new(input, 1, self.block_in)
            .map_err(|e| AudioError::Resample(e.to_string()))?;
        let mut adapter_out = InterleavedSlice::new_mut(&mut self.out_block, 1, self.block_out)
            .map_err(|e| AudioError::Resample(e.to_string()))?;
        let indexing = partial.map(|n| Indexing::new().partial_len(n));
        let (_, written) = fft
            .process_into_buffer(&adapter_in, &mut adapter_out, indexing.as_ref())
            .map_err(|e| AudioError::Resample(e.to_string()))?;
        let produced = &self.out_block[..written.min(self.out_block.len())];
        let skip = self.to_skip.min(produced.len());
        self.to_skip -= skip;
        let before = out.len();
        out.extend(produced[skip..].iter().copied().map(to_i16));
        self.emitted += (out.len() - before) as u64;
        Ok(())
    }
}

/// Converts a whole clip from `from` Hz to `to` Hz (delay-compensated; output
/// length is `round(len × to / from)`).
pub fn resample(pcm: &[i16], from: u32, to: u32) -> Result<Vec<i16>, AudioError> {
    let mut r = Resampler::new(from, to)?;
    let mut out = r.process(pcm)?;
    out.extend(r.flush()?);
    Ok(out)
}

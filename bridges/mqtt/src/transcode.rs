//! pcm16 ⇄ internal Opus. One of each per talk: the encoder and the resampler
//! carry state from frame to frame, so sharing them between talks would smear one
//! talker into the next.
//!
//! Both directions hand a 20 ms frame on as soon as the device's (or the channel's)
//! 20 ms frame is in, so the bridge adds no frame of its own to the path: the
//! device's pcm16 is encoded at 16 kHz as it is (no resampler at all), and the
//! channel's 48 kHz PCM goes through [`LiveResampler`], whose 1.3 ms filter delay
//! is all the latency it adds. See docs/bench/codec-quality.md for the figures.

use bytes::Bytes;
use walkie_endpoint::audio::{
    AudioError, EncoderSettings, LiveResampler, OpusEncoder, SAMPLE_RATE,
};

/// pcm16 sample rate in Hz.
pub const PCM16_RATE: u32 = 16_000;
/// Samples in one 20 ms pcm16 frame.
pub const PCM16_FRAME_SAMPLES: usize = (PCM16_RATE / 50) as usize;
/// Bytes in one 20 ms pcm16 frame (S16LE mono).
pub const PCM16_FRAME_BYTES: usize = PCM16_FRAME_SAMPLES * 2;

/// A device's pcm16 on its way into the channel as Opus.
pub struct PcmToOpus {
    encoder: OpusEncoder,
    pending: Vec<i16>,
}

impl PcmToOpus {
    /// With the encoder settings chosen by measurement (`EncoderSettings::default`).
    pub fn new() -> Result<Self, AudioError> {
        Self::with_settings(&EncoderSettings::default())
    }

    pub fn with_settings(settings: &EncoderSettings) -> Result<Self, AudioError> {
        Ok(Self {
            encoder: OpusEncoder::with_settings(PCM16_RATE, settings)?,
            pending: Vec::with_capacity(2 * PCM16_FRAME_SAMPLES),
        })
    }

    /// Takes S16LE bytes (an odd trailing byte is ignored); returns the Opus
    /// packets of every 20 ms that is now complete: one per 640-byte frame.
    pub fn push(&mut self, s16le: &[u8]) -> Result<Vec<Bytes>, AudioError> {
        let mut packets = Vec::new();
        self.push_into(s16le, &mut packets)?;
        Ok(packets)
    }

    /// As [`push`](Self::push), appending to `packets`: with a reused `packets`
    /// and the encoder's packet arena, a frame costs no allocation.
    pub fn push_into(&mut self, s16le: &[u8], packets: &mut Vec<Bytes>) -> Result<(), AudioError> {
        self.pending.extend(
            s16le
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]])),
        );
        self.drain(false, packets)
    }

    /// The talk is over: whatever is still buffered, zero-padded to a frame.
    pub fn finish(&mut self) -> Result<Vec<Bytes>, AudioError> {
        let mut packets = Vec::new();
        self.drain(true, &mut packets)?;
        Ok(packets)
    }

    fn drain(&mut self, pad: bool, packets: &mut Vec<Bytes>) -> Result<(), AudioError> {
        if pad && !self.pending.is_empty() {
            let padded = self.pending.len().next_multiple_of(PCM16_FRAME_SAMPLES);
            self.pending.resize(padded, 0);
        }
        let mut used = 0;
        for frame in self.pending.chunks_exact(PCM16_FRAME_SAMPLES) {
            packets.push(self.encoder.encode(frame)?);
            used += PCM16_FRAME_SAMPLES;
        }
        self.pending.drain(..used);
        Ok(())
    }
}

/// The channel's decoded 48 kHz PCM on its way to devices as 640-byte frames.
pub struct PcmToPcm16 {
    resampler: LiveResampler,
    pending: Vec<i16>,
    /// One frame as S16LE, handed to `push_each`'s callback.
    bytes: Vec<u8>,
}

impl PcmToPcm16 {
    pub fn new() -> Result<Self, AudioError> {
        Ok(Self {
            resampler: LiveResampler::new(SAMPLE_RATE, PCM16_RATE)?,
            pending: Vec::with_capacity(2 * PCM16_FRAME_SAMPLES),
            bytes: Vec::with_capacity(PCM16_FRAME_BYTES),
        })
    }

    /// Takes 48 kHz samples; returns every complete 640-byte frame (one per 20 ms
    /// pushed).
    pub fn push(&mut self, pcm48: &[i16]) -> Result<Vec<Vec<u8>>, AudioError> {
        let mut frames = Vec::new();
        self.push_each(pcm48, |frame| frames.push(frame.to_vec()))?;
        Ok(frames)
    }

    /// As [`push`](Self::push), handing each complete frame (S16LE, 640 bytes) to
    /// `each` from a buffer of its own: no allocation per frame.
    pub fn push_each(&mut self, pcm48: &[i16], each: impl FnMut(&[u8])) -> Result<(), AudioError> {
        self.resampler.process_into(pcm48, &mut self.pending)?;
        self.drain(false, each);
        Ok(())
    }

    /// The talk is over: the filter's tail and any partial frame, zero-padded.
    pub fn finish(&mut self) -> Result<Vec<Vec<u8>>, AudioError> {
        self.resampler.flush_into(&mut self.pending)?;
        let mut frames = Vec::new();
        self.drain(true, |frame| frames.push(frame.to_vec()));
        Ok(frames)
    }

    fn drain(&mut self, pad: bool, mut each: impl FnMut(&[u8])) {
        if pad && !self.pending.is_empty() {
            let padded = self.pending.len().next_multiple_of(PCM16_FRAME_SAMPLES);
            self.pending.resize(padded, 0);
        }
        let mut used = 0;
        for frame in self.pending.chunks_exact(PCM16_FRAME_SAMPLES) {
            self.bytes.clear();
            self.bytes
                .extend(frame.iter().flat_map(|s| s.to_le_bytes()));
            each(&self.bytes);
            used += PCM16_FRAME_SAMPLES;
        }
        self.pending.drain(..used);
    }
}

/// 1 kHz at −12 dBFS peak, as 48 kHz PCM of `ms` milliseconds (whole frames).
pub fn test_tone_48k(ms: u32) -> Vec<i16> {
    tone(SAMPLE_RATE, ms)
}

/// The same tone at 16 kHz, for pcm16 devices hearing it directly.
pub fn test_tone_16k(ms: u32) -> Vec<i16> {
    tone(PCM16_RATE, ms)
}

fn tone(rate: u32, ms: u32) -> Vec<i16> {
    let amplitude = 32767.0 * 10f64.powf(-12.0 / 20.0);
    let samples = (rate / 1000 * ms) as usize;
    (0..samples)
        .map(|n| {
            let t = n as f64 / f64::from(rate);
            (amplitude * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()).round() as i16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use walkie_endpoint::audio::{OpusDecoder, FRAME_SAMPLES};

    fn sine16(samples: usize) -> Vec<u8> {
        tone(PCM16_RATE, 1000)
            .into_iter()
            .cycle()
            .take(samples)
            .flat_map(|s| s.to_le_bytes())
            .collect()
    }

    #[test]
    fn pcm16_frames_are_640_bytes_of_20_ms() {
        assert_eq!(PCM16_FRAME_SAMPLES, 320);
        assert_eq!(PCM16_FRAME_BYTES, 640);
        let mut down = PcmToPcm16::new().unwrap();
        let pcm48 = test_tone_48k(1000);
        let mut frames = Vec::new();
        for chunk in pcm48.chunks(FRAME_SAMPLES) {
            let out = down.push(chunk).unwrap();
            assert_eq!(out.len(), 1, "each 20 ms in gives its frame at once");
            frames.extend(out);
        }
        let tail = down.finish().unwrap();
        assert_eq!(tail.len(), 1, "the filter's 1.3 ms tail, padded to a frame");
        frames.extend(tail);
        assert!(frames.iter().all(|f| f.len() == PCM16_FRAME_BYTES));
        assert_eq!(frames.len(), 51, "one second is 50 frames, and the tail");
    }

    #[test]
    fn pcm16_in_becomes_one_opus_packet_per_20_ms() {
        let mut up = PcmToOpus::new().unwrap();
        let input = sine16(16_000);
        let mut packets = Vec::new();
        for frame in input.chunks(PCM16_FRAME_BYTES) {
            let out = up.push(frame).unwrap();
            assert_eq!(out.len(), 1, "each 640-byte frame is encoded at once");
            packets.extend(out);
        }
        assert!(up.finish().unwrap().is_empty(), "nothing held back");
        assert_eq!(packets.len(), 50);
        let mut decoder = OpusDecoder::new().unwrap();
        let pcm: Vec<i16> = packets
            .iter()
            .flat_map(|p| decoder.decode(p).unwrap())
            .collect();
        assert_eq!(pcm.len(), 48_000);
        let rms = (pcm[9600..]
            .iter()
            .map(|&s| f64::from(s).powi(2))
            .sum::<f64>()
            / (pcm.len() - 9600) as f64)
            .sqrt();
        let expected = 32767.0 * 10f64.powf(-12.0 / 20.0) / 2f64.sqrt();
        assert!(
            (20.0 * (rms / expected).log10()).abs() < 1.0,
            "rms {rms:.0} vs {expected:.0}"
        );
    }

    #[test]
    fn the_test_tone_is_1_khz_at_minus_12_dbfs() {
        let t = test_tone_48k(2000);
        assert_eq!(t.len(), 96_000);
        let peak = t.iter().map(|s| s.unsigned_abs()).max().unwrap();
        let peak_db = 20.0 * (f64::from(peak) / 32767.0).log10();
        assert!((peak_db + 12.0).abs() < 0.1, "{peak_db}");
        // 1 kHz at 48 kHz: 48 samples per period, so 2 zero crossings per 48 samples.
        let crossings = t.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        assert!((3990..=4010).contains(&crossings), "{crossings}");
    }
}

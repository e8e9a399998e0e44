//! Opus encoding and decoding in the bridge's internal format: 48 kHz mono, 20 ms frames.

use super::AudioError;
use bytes::{Bytes, BytesMut};
use opus::{Application, Bitrate, Channels};
use std::borrow::Cow;

/// Sample rate of all audio inside the bridge, in Hz.
pub const SAMPLE_RATE: u32 = 48_000;
/// Length of one internal frame, in milliseconds.
pub const FRAME_MS: u32 = 20;
/// Samples in one 20 ms frame at 48 kHz mono.
pub const FRAME_SAMPLES: usize = (SAMPLE_RATE / 1000 * FRAME_MS) as usize;
/// Bitrate the encoder starts with, in bit/s: clear speech at a fraction of a
/// Mumble default (and small archive files).
pub const DEFAULT_BITRATE: i32 = 24_000;
/// Pre-skip to assume for Opus packets from an encoder we cannot ask, e.g. a
/// Mumble client: libopus at 48 kHz in VOIP or AUDIO mode reports this lookahead.
pub const DEFAULT_PRE_SKIP: u16 = 312;

/// Longest duration one Opus packet can carry (120 ms at 48 kHz).
const MAX_PACKET_SAMPLES: usize = 5_760;
/// libopus' recommended output buffer; no packet at any bitrate is larger.
const MAX_PACKET_BYTES: usize = 4_000;
/// The encoder's packet arena. Every packet split off a block keeps the whole block
/// alive (the channel's audio ring holds 5 s of packets), so blocks are small: ~50
/// speech packets each, one allocation per ~50 frames, ~40 KiB held per talker.
const ARENA_BYTES: usize = 8 * 1024;

/// Splits PCM into 960-sample frames; the last one is zero-padded.
///
/// Full frames borrow from `pcm`, only the padded tail is copied. Empty input
/// yields no frame at all.
pub fn frames_of(pcm: &[i16]) -> impl Iterator<Item = Cow<'_, [i16]>> {
    pcm.chunks(FRAME_SAMPLES).map(|chunk| {
        if chunk.len() == FRAME_SAMPLES {
            Cow::Borrowed(chunk)
        } else {
            let mut padded = chunk.to_vec();
            padded.resize(FRAME_SAMPLES, 0);
            Cow::Owned(padded)
        }
    })
}

/// Duration of an Opus packet in samples at 48 kHz, read from its TOC byte(s).
///
/// Works for packets from any encoder (multi-frame packets included), which is
/// what the Ogg writer needs to compute granule positions of passed-through audio.
pub fn packet_samples(packet: &[u8]) -> Result<usize, AudioError> {
    if packet.is_empty() {
        return Err(AudioError::InvalidPacket("empty packet".into()));
    }
    let samples = opus::packet::get_nb_samples(packet, SAMPLE_RATE)?;
    if samples == 0 || samples > MAX_PACKET_SAMPLES {
        return Err(AudioError::InvalidPacket(format!(
            "packet claims {samples} samples (allowed 1..={MAX_PACKET_SAMPLES})"
        )));
    }
    Ok(samples)
}

/// libopus' application setting: which coding modes the encoder may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpusApplication {
    /// `OPUS_APPLICATION_VOIP`: SILK, hybrid or CELT as the signal and bitrate
    /// suit; 6.5 ms lookahead.
    #[default]
    Voip,
    /// `OPUS_APPLICATION_RESTRICTED_LOWDELAY`: CELT only; 2.5 ms lookahead.
    LowDelay,
}

/// How an encoder is set up: see docs/bench/codec-quality.md for what each costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderSettings {
    /// Target bitrate in bit/s (6000..=510000).
    pub bitrate: i32,
    /// libopus complexity, 0..=10.
    pub complexity: i32,
    pub application: OpusApplication,
}

impl Default for EncoderSettings {
    /// 32 kbit/s at complexity 6, for the bridge's live encoders (pcm16 devices,
    /// radios): better speech than libopus' complexity 10 at 24 kbit/s (PESQ 4.36 against
    /// 4.22) for three quarters of its CPU time (docs/bench/codec-quality.md).
    fn default() -> Self {
        Self {
            bitrate: 32_000,
            complexity: 6,
            application: OpusApplication::Voip,
        }
    }
}

/// Opus encoder for mono speech in 20 ms frames (VOIP application), from 48 kHz PCM
/// or, with [`OpusEncoder::with_rate`], from any rate libopus takes.
pub struct OpusEncoder {
    inner: opus::Encoder,
    /// Packets are encoded into this and split off it, so a packet costs an
    /// allocation only when the arena is used up (one per ~50 packets).
    arena: BytesMut,
    /// Samples of input in one 20 ms frame at the encoder's rate.
    frame_samples: usize,
    lookahead: u16,
    bitrate: i32,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder")
            .field("bitrate", &self.bitrate)
            .field("lookahead", &self.lookahead)
            .finish()
    }
}

impl OpusEncoder {
    /// An encoder at [`DEFAULT_BITRATE`].
    pub fn new() -> Result<Self, AudioError> {
        Self::with_bitrate(DEFAULT_BITRATE)
    }

    /// An encoder at `bitrate` bit/s (6000..=510000).
    pub fn with_bitrate(bitrate: i32) -> Result<Self, AudioError> {
        Self::with_rate(SAMPLE_RATE, bitrate)
    }

    /// An encoder with every setting chosen: input `rate` Hz (8, 12, 16, 24 or
    /// 48 kHz), bitrate, complexity and libopus application.
    pub fn with_settings(rate: u32, settings: &EncoderSettings) -> Result<Self, AudioError> {
        let mut encoder =
            Self::with_rate_and_application(rate, settings.bitrate, settings.application)?;
        encoder.set_complexity(settings.complexity)?;
        Ok(encoder)
    }

    /// An encoder taking PCM at `rate` Hz (8, 12, 16, 24 or 48 kHz) at `bitrate` bit/s.
    ///
    /// Opus packets do not depend on the input rate, so a 16 kHz device's audio can
    /// be encoded as it is: libopus codes it natively (SILK's wideband mode, or
    /// CELT with the bands above 8 kHz empty) with no resampler, and so with no
    /// resampler's delay in front of it.
    pub fn with_rate(rate: u32, bitrate: i32) -> Result<Self, AudioError> {
        Self::with_rate_and_application(rate, bitrate, OpusApplication::Voip)
    }

    fn with_rate_and_application(
        rate: u32,
        bitrate: i32,
        application: OpusApplication,
    ) -> Result<Self, AudioError> {
        if ![8_000, 12_000, 16_000, 24_000, 48_000].contains(&rate) {
            return Err(AudioError::UnsupportedRate(rate));
        }
        let application = match application {
            OpusApplication::Voip => Application::Voip,
            OpusApplication::LowDelay => Application::LowDelay,
        };
        let inner = opus::Encoder::new(rate, Channels::Mono, application)?;
        let mut enc = Self {
            inner,
            arena: BytesMut::new(),
            frame_samples: (rate / 1000 * FRAME_MS) as usize,
            lookahead: 0,
            bitrate,
        };
        enc.set_bitrate(bitrate)?;
        let lookahead = enc.inner.get_lookahead()?;
        enc.lookahead = u16::try_from(lookahead).map_err(|_| {
            AudioError::InvalidArgument(format!("encoder reports lookahead {lookahead}"))
        })?;
        Ok(enc)
    }

    /// Changes the target bitrate for the following frames.
    pub fn set_bitrate(&mut self, bitrate: i32) -> Result<(), AudioError> {
        // libopus clamps silently; an out-of-range value is a config mistake worth reporting.
        if !(6_000..=510_000).contains(&bitrate) {
            return Err(AudioError::Bitrate(bitrate));
        }
        self.inner.set_bitrate(Bitrate::Bits(bitrate))?;
        self.bitrate = bitrate;
        Ok(())
    }

    /// Sets libopus' complexity, 0 (cheapest) to 10 (libopus' default, best).
    pub fn set_complexity(&mut self, complexity: i32) -> Result<(), AudioError> {
        if !(0..=10).contains(&complexity) {
            return Err(AudioError::InvalidArgument(format!(
                "Opus complexity {complexity} is not in 0..=10"
            )));
        }
        self.inner.set_complexity(complexity)?;
        Ok(())
    }

    /// libopus' complexity setting, 0..=10.
    pub fn complexity(&mut self) -> Result<i32, AudioError> {
        Ok(self.inner.get_complexity()?)
    }

    /// The target bitrate in bit/s.
    pub fn bitrate(&self) -> i32 {
        self.bitrate
    }

    /// Samples of algorithmic delay at the encoder's input rate: the decoder's
    /// output lags the input by this much, so at 48 kHz it is the Ogg pre-skip for
    /// streams from this encoder.
    pub fn lookahead(&self) -> u16 {
        self.lookahead
    }

    /// Samples in one 20 ms frame at the encoder's input rate
    /// ([`FRAME_SAMPLES`] at 48 kHz).
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Encodes exactly one 20 ms frame ([`frame_samples`](Self::frame_samples)
    /// samples) into one packet.
    pub fn encode(&mut self, frame: &[i16]) -> Result<Bytes, AudioError> {
        if frame.len() != self.frame_samples {
            return Err(AudioError::FrameSize {
                expected: self.frame_samples,
                got: frame.len(),
            });
        }
        if self.arena.capacity() < MAX_PACKET_BYTES {
            // Reclaims the old block when every packet split off it is gone.
            self.arena.reserve(ARENA_BYTES);
        }
        self.arena.resize(MAX_PACKET_BYTES, 0);
        let len = self.inner.encode(frame, &mut self.arena)?;
        self.arena.truncate(len);
        Ok(self.arena.split().freeze())
    }

    /// Forgets all history, as if freshly created (for a new transmission).
    pub fn reset(&mut self) -> Result<(), AudioError> {
        self.inner.reset_state()?;
        Ok(())
    }
}

/// Opus decoder producing 48 kHz mono PCM.
///
/// Stereo packets are down-mixed by libopus, so any Opus stream decodes.
pub struct OpusDecoder {
    inner: opus::Decoder,
    /// Reused so steady-state decoding does not allocate the worst-case buffer each time.
    scratch: Vec<i16>,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder").finish_non_exhaustive()
    }
}

impl OpusDecoder {
    /// A fresh decoder.
    pub fn new() -> Result<Self, AudioError> {
        Ok(Self {
            inner: opus::Decoder::new(SAMPLE_RATE, Channels::Mono)?,
            scratch: vec![0; MAX_PACKET_SAMPLES],
        })
    }

    /// Decodes one packet (any duration from 2.5 to 120 ms).
    ///
    /// An empty slice is an error here rather than "packet lost", so that a
    /// zero-length payload from the network is not silently concealed; use
    /// [`decode_lost`](Self::decode_lost) for a known gap.
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<i16>, AudioError> {
        self.decode_to_slice(packet).map(<[i16]>::to_vec)
    }

    /// As [`decode`](Self::decode), into the decoder's own buffer: no allocation.
    /// The slice is valid until the next call.
    pub fn decode_to_slice(&mut self, packet: &[u8]) -> Result<&[i16], AudioError> {
        packet_samples(packet)?;
        let n = self.inner.decode(packet, &mut self.scratch, false)?;
        Ok(&self.scratch[..n.min(self.scratch.len())])
    }

    /// Packet-loss concealment for one missing 20 ms frame.
    ///
    /// Never fails: if libopus cannot conceal (it can always, barring a bug)
    /// the gap is filled with silence, which is what a listener would get anyway.
    pub fn decode_lost(&mut self) -> Vec<i16> {
        self.decode_lost_to_slice().to_vec()
    }

    /// As [`decode_lost`](Self::decode_lost), into the decoder's own buffer.
    pub fn decode_lost_to_slice(&mut self) -> &[i16] {
        match self
            .inner
            .decode(&[], &mut self.scratch[..FRAME_SAMPLES], false)
        {
            Ok(n) => &self.scratch[..n.min(FRAME_SAMPLES)],
            Err(e) => {
                tracing::warn!(error = %e, "opus packet-loss concealment failed; inserting silence");
                self.scratch[..FRAME_SAMPLES].fill(0);
                &self.scratch[..FRAME_SAMPLES]
            }
        }
    }

    /// Output gain in Q7.8 dB, as carried by the OpusHead of an Ogg stream.
    pub fn set_gain_q8(&mut self, gain: i16) -> Result<(), AudioError> {
        self.inner.set_gain(i32::from(gain))?;
        Ok(())
    }

    /// Forgets all history (for a new transmission).
    pub fn reset(&mut self) -> Result<(), AudioError> {
        self.inner.reset_state()?;
        Ok(())
    }
}

//! Voice messages from Matrix clients turned into internal audio (DESIGN.md §4,
//! "Voice messages in").
//!
//! Clients disagree on the format: Element and most others record Ogg Opus in
//! 20 ms mono packets, which pass through untouched; FluffyChat and older iOS
//! clients send AAC in MP4 (`.m4a`), some bots MP3 or WAV. Anything that is not
//! passable Ogg Opus is decoded — libopus for Opus, `symphonia` for the rest —
//! mixed down to mono, resampled to 48 kHz and encoded into 20 ms Opus frames.
//!
//! The input is untrusted: the format is sniffed from the bytes (the mimetype a
//! client claims is only a hint), size is checked before parsing and length
//! while decoding, and every failure is an [`AudioError`], never a panic.

use super::codec::{packet_samples, OpusDecoder, OpusEncoder};
use super::ogg_opus::OggOpusReader;
use super::resample::Resampler;
use super::{AudioError, FRAME_SAMPLES, SAMPLE_RATE};
use bytes::Bytes;
use std::io::Cursor;
use std::time::Duration;
use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

/// Bad packets in a row after which a stream is given up as garbage rather
/// than a good stream with a scratch: about 0.5 s of MP3, 1 s of AAC.
const MAX_CONSECUTIVE_BAD_PACKETS: u32 = 20;

/// Audio missing at the end that is not worth refusing a message for: a
/// frame or two lost to damage (MP3 readers resync silently, so it looks like
/// an early end) or a download short by a few bytes.
const CUT_OFF_TOLERANCE_MS: i64 = 60;

/// What a caller accepts from one voice message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportLimits {
    /// Largest file, in bytes; checked before anything is parsed.
    pub max_bytes: usize,
    /// Longest playback; decoding stops as soon as it is passed.
    pub max_duration: Duration,
}

impl Default for ImportLimits {
    /// 16 MiB (a minute of 48 kHz stereo WAV fits) and 60 s, the floor's
    /// default `max_talk_s`: a longer message would be cut off on air anyway.
    fn default() -> Self {
        Self {
            max_bytes: 16 * 1024 * 1024,
            max_duration: Duration::from_secs(60),
        }
    }
}

/// A voice message in the bridge's internal format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// 20 ms Opus packets, 48 kHz mono, ready for the floor.
    pub packets: Vec<Bytes>,
    /// Playback length of the source, in milliseconds. The packets cover it,
    /// rounded up to whole frames, plus the encoder's lookahead (6.5 ms for
    /// ours; the source encoder's pre-skip when passed through).
    pub duration_ms: u64,
    /// The packets are the file's own, not re-encoded.
    pub passthrough: bool,
    /// The format found in the bytes: one of [`SourceFormat::name`].
    pub source_format: &'static str,
    /// Sample rate of the source, in Hz (48000 for Opus).
    pub source_rate: u32,
    /// Channels of the source (before the mixdown to mono).
    pub source_channels: u16,
    /// Source packets that failed to decode and were skipped.
    pub skipped_packets: u32,
}

/// Audio formats recognised by [`sniff_format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// Opus in Ogg (RFC 7845): Element, Nheko, most clients' voice messages.
    OggOpus,
    /// Vorbis in Ogg.
    OggVorbis,
    /// FLAC in Ogg.
    OggFlac,
    /// ISO base media / MP4 (`.m4a`), carrying AAC-LC.
    Mp4,
    /// MPEG-1/2 layer III, with or without ID3 tags.
    Mp3,
    /// AAC-LC in ADTS frames (`.aac`).
    Adts,
    /// RIFF WAVE with PCM.
    Wav,
    /// Native FLAC.
    Flac,
}

impl SourceFormat {
    /// Short name for logs and [`Imported::source_format`].
    pub fn name(self) -> &'static str {
        match self {
            Self::OggOpus => "ogg-opus",
            Self::OggVorbis => "ogg-vorbis",
            Self::OggFlac => "ogg-flac",
            Self::Mp4 => "m4a",
            Self::Mp3 => "mp3",
            Self::Adts => "aac-adts",
            Self::Wav => "wav",
            Self::Flac => "flac",
        }
    }

    /// Whether the length the demuxer reports is stored in the file, rather
    /// than estimated from its size: only then does falling short of it mean
    /// the file was cut off.
    fn stores_length(self, bytes: &[u8]) -> bool {
        match self {
            Self::OggOpus
            | Self::OggVorbis
            | Self::OggFlac
            | Self::Mp4
            | Self::Wav
            | Self::Flac => true,
            Self::Adts => false,
            // A VBR MP3 without a Xing/Info/VBRI header gets an estimate from
            // its size and first bitrate, which can be far off.
            Self::Mp3 => {
                let start = if bytes.starts_with(b"ID3") {
                    id3v2_len(bytes).unwrap_or(0)
                } else {
                    0
                };
                bytes
                    .get(start..bytes.len().min(start + 200))
                    .is_some_and(|frame| {
                        frame
                            .windows(4)
                            .any(|w| w == b"Xing" || w == b"Info" || w == b"VBRI")
                    })
            }
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Self::OggOpus => "opus",
            Self::OggVorbis | Self::OggFlac => "ogg",
            Self::Mp4 => "m4a",
            Self::Mp3 => "mp3",
            Self::Adts => "aac",
            Self::Wav => "wav",
            Self::Flac => "flac",
        }
    }
}

/// Recognises the format from the first bytes, ignoring what the sender claims.
///
/// Errors name what the bytes look like instead when that is known (an image,
/// WebM from a browser's recorder), so the sender can be told something useful.
pub fn sniff_format(bytes: &[u8]) -> Result<SourceFormat, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::UnsupportedFormat("empty file".into()));
    }
    if bytes.starts_with(b"OggS") {
        return sniff_ogg(bytes);
    }
    if bytes.get(4..8) == Some(b"ftyp") {
        return Ok(SourceFormat::Mp4);
    }
    if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WAVE") {
        return Ok(SourceFormat::Wav);
    }
    if bytes.starts_with(b"fLaC") {
        return Ok(SourceFormat::Flac);
    }
    if bytes.starts_with(b"ID3") {
        // ID3v2 is put in front of MP3 mostly, but also of ADTS and FLAC:
        // what follows the tag decides.
        let rest = bytes.get(id3v2_len(bytes)?..).unwrap_or_default();
        if rest.starts_with(b"fLaC") {
            return Ok(SourceFormat::Flac);
        }
        return match sniff_frame_sync(rest) {
            Some(format) => format,
            None => Err(AudioError::Corrupt {
                format: SourceFormat::Mp3.name(),
                reason: "no audio frame after the ID3 tag".into(),
            }),
        };
    }
    if let Some(format) = sniff_frame_sync(bytes) {
        return format;
    }
    Err(AudioError::UnsupportedFormat(describe_unknown(bytes)))
}

fn sniff_ogg(bytes: &[u8]) -> Result<SourceFormat, AudioError> {
    // The first packet of the first page names the codec (RFC 3533: 27-byte
    // page header, then the lacing table, then the body).
    let body = bytes
        .get(26)
        .and_then(|&segments| bytes.get(27 + usize::from(segments)..));
    let Some(body) = body else {
        return Err(AudioError::Corrupt {
            format: "ogg",
            reason: "file ends inside the first page header".into(),
        });
    };
    if body.starts_with(b"OpusHead") {
        Ok(SourceFormat::OggOpus)
    } else if body.starts_with(b"\x01vorbis") {
        Ok(SourceFormat::OggVorbis)
    } else if body.starts_with(b"\x7fFLAC") {
        Ok(SourceFormat::OggFlac)
    } else {
        let codec = if body.starts_with(b"Speex") {
            "Speex"
        } else if body.starts_with(b"\x80theora") {
            "Theora video"
        } else {
            "an unknown codec"
        };
        Err(AudioError::UnsupportedFormat(format!(
            "Ogg stream carrying {codec} (Opus, Vorbis and FLAC are supported)"
        )))
    }
}

/// Length of the ID3v2 tag at the start of `bytes`, footer included.
fn id3v2_len(bytes: &[u8]) -> Result<usize, AudioError> {
    let corrupt = |reason: &str| AudioError::Corrupt {
        format: SourceFormat::Mp3.name(),
        reason: reason.into(),
    };
    let header = bytes
        .get(..10)
        .ok_or_else(|| corrupt("file ends inside the ID3 tag header"))?;
    // The size is "syncsafe": 7 bits per byte, so no byte can look like a frame sync.
    if header[6..10].iter().any(|b| b & 0x80 != 0) {
        return Err(corrupt("ID3 tag size is not syncsafe"));
    }
    let size = header[6..10]
        .iter()
        .fold(0usize, |acc, &b| (acc << 7) | usize::from(b));
    let footer = if header[5] & 0x10 != 0 { 10 } else { 0 };
    let len = 10 + size + footer;
    if len >= bytes.len() {
        return Err(corrupt("ID3 tag runs to the end of the file"));
    }
    Ok(len)
}

/// MPEG audio or ADTS frame header at the start of `bytes`, if there is one.
fn sniff_frame_sync(bytes: &[u8]) -> Option<Result<SourceFormat, AudioError>> {
    let &[b0, b1, b2, ..] = bytes else {
        return None;
    };
    if b0 != 0xFF || b1 & 0xE0 != 0xE0 {
        return None;
    }
    // ADTS is the sync word with the MPEG "layer" bits 00 (which MPEG audio never uses).
    if b1 & 0xF6 == 0xF0 {
        let sampling_index = (b2 >> 2) & 0x0F;
        return (sampling_index < 13).then_some(Ok(SourceFormat::Adts));
    }
    let version = (b1 >> 3) & 0x03;
    let layer = (b1 >> 1) & 0x03;
    let bitrate_index = b2 >> 4;
    let rate_index = (b2 >> 2) & 0x03;
    // Reserved values: random data with FF Ex is not taken for MP3.
    if version == 0b01 || bitrate_index == 0x0F || rate_index == 0x03 {
        return None;
    }
    Some(match layer {
        0b01 => Ok(SourceFormat::Mp3),
        _ => Err(AudioError::UnsupportedFormat(
            "MPEG audio layer I/II (only layer III, MP3, is supported)".into(),
        )),
    })
}

fn describe_unknown(bytes: &[u8]) -> String {
    let known: [(&[u8], &str); 8] = [
        (b"\x89PNG", "a PNG image"),
        (b"\xFF\xD8\xFF", "a JPEG image"),
        (b"GIF8", "a GIF image"),
        (b"%PDF", "a PDF document"),
        (
            b"\x1A\x45\xDF\xA3",
            "WebM/Matroska (not supported; Ogg Opus is)",
        ),
        (b"caff", "Core Audio Format (not supported)"),
        (b"FORM", "AIFF (not supported)"),
        (b"#!AMR", "AMR (not supported)"),
    ];
    if let Some((_, what)) = known.iter().find(|(magic, _)| bytes.starts_with(magic)) {
        return format!("the data is {what}");
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("unrecognised data (starts with {})", head.join(" "))
}

/// Turns a downloaded voice message into 20 ms Opus packets at 48 kHz mono.
///
/// `mimetype` is what the event claimed (`info.mimetype`); it only helps the
/// demuxer and never overrides what the bytes say. Ogg Opus made of 20 ms
/// mono packets is passed through as it is; everything else is decoded and
/// re-encoded at [`DEFAULT_BITRATE`](super::DEFAULT_BITRATE).
pub fn import_voice_message(
    bytes: &[u8],
    mimetype: Option<&str>,
    limits: &ImportLimits,
) -> Result<Imported, AudioError> {
    if bytes.len() > limits.max_bytes {
        return Err(AudioError::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let format = sniff_format(bytes)?;
    tracing::debug!(
        format = format.name(),
        claimed = mimetype.unwrap_or("-"),
        size = bytes.len(),
        "importing voice message"
    );
    if format == SourceFormat::OggOpus {
        return import_ogg_opus(bytes, limits);
    }
    // symphonia is a large decoder fed with files from strangers; should one
    // of its code paths still panic on a crafted file, that must cost one
    // voice message, not the task that carries a whole channel.
    std::panic::catch_unwind(|| import_with_symphonia(bytes, format, mimetype, limits))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(format = format.name(), panic = %what, "decoder panicked on a voice message");
            Err(AudioError::Corrupt {
                format: format.name(),
                reason: format!("decoder failed ({what})"),
            })
        })
}

/// The cap in samples at 48 kHz.
fn cap_samples(limits: &ImportLimits) -> u64 {
    let samples = limits.max_duration.as_millis() * u128::from(SAMPLE_RATE) / 1000;
    u64::try_from(samples).unwrap_or(u64::MAX)
}

fn samples_to_ms(samples: u64, rate: u32) -> u64 {
    let ms = (u128::from(samples) * 1000 + u128::from(rate) / 2) / u128::from(rate.max(1));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

fn too_long(limits: &ImportLimits, decoded_samples_48k: u64) -> AudioError {
    AudioError::TooLong {
        limit_ms: u64::try_from(limits.max_duration.as_millis()).unwrap_or(u64::MAX),
        decoded_ms: samples_to_ms(decoded_samples_48k, SAMPLE_RATE),
    }
}

fn import_ogg_opus(bytes: &[u8], limits: &ImportLimits) -> Result<Imported, AudioError> {
    let mut reader = OggOpusReader::new(bytes)?;
    let head = *reader.head();
    let pre_skip = u64::from(head.pre_skip);
    let cap = cap_samples(limits);
    // Passing through needs packets the floor can forward as they are: mono,
    // 20 ms each, and no header gain that a player would otherwise apply.
    let mut passable = head.channels == 1 && head.output_gain == 0;
    let mut packets = Vec::new();
    let mut decoded = 0u64;
    while let Some(packet) = reader.next_packet()? {
        let samples = packet_samples(&packet)?;
        decoded += samples as u64;
        if decoded.saturating_sub(pre_skip) > cap {
            return Err(too_long(limits, decoded - pre_skip));
        }
        // TOC byte: bit 2 is the stereo flag (RFC 6716 §3.1).
        passable &= samples == FRAME_SAMPLES && packet[0] & 0x04 == 0;
        packets.push(packet);
    }
    let samples = reader.granule().min(decoded).saturating_sub(pre_skip);
    if samples == 0 {
        return Err(AudioError::NoAudio {
            format: SourceFormat::OggOpus.name(),
        });
    }
    let duration_ms = samples_to_ms(samples, SAMPLE_RATE);
    if passable {
        return Ok(Imported {
            packets: packets.into_iter().map(Bytes::from).collect(),
            duration_ms,
            passthrough: true,
            source_format: SourceFormat::OggOpus.name(),
            source_rate: SAMPLE_RATE,
            source_channels: 1,
            skipped_packets: 0,
        });
    }
    let mut decoder = OpusDecoder::new()?;
    if head.output_gain != 0 {
        decoder.set_gain_q8(head.output_gain)?;
    }
    let mut encoder = FrameEncoder::new()?;
    let mut to_skip = usize::from(head.pre_skip);
    let mut remaining = usize::try_from(samples).unwrap_or(usize::MAX);
    for packet in &packets {
        let pcm = decoder.decode(packet)?;
        let skip = to_skip.min(pcm.len());
        to_skip -= skip;
        let take = remaining.min(pcm.len() - skip);
        remaining -= take;
        encoder.push(&pcm[skip..skip + take])?;
    }
    let (packets, _) = encoder.finish()?;
    Ok(Imported {
        packets,
        duration_ms,
        passthrough: false,
        source_format: SourceFormat::OggOpus.name(),
        source_rate: SAMPLE_RATE,
        source_channels: u16::from(head.channels),
        skipped_packets: 0,
    })
}

/// 48 kHz mono PCM in, 20 ms Opus packets out.
struct FrameEncoder {
    encoder: OpusEncoder,
    pending: Vec<i16>,
    packets: Vec<Bytes>,
    samples: u64,
}

impl FrameEncoder {
    fn new() -> Result<Self, AudioError> {
        Ok(Self {
            encoder: OpusEncoder::new()?,
            pending: Vec::with_capacity(FRAME_SAMPLES * 2),
            packets: Vec::new(),
            samples: 0,
        })
    }

    fn push(&mut self, pcm: &[i16]) -> Result<(), AudioError> {
        self.samples += pcm.len() as u64;
        self.pending.extend_from_slice(pcm);
        let whole = self.pending.len() / FRAME_SAMPLES * FRAME_SAMPLES;
        for frame in self.pending[..whole].chunks_exact(FRAME_SAMPLES) {
            self.packets.push(self.encoder.encode(frame)?);
        }
        self.pending.drain(..whole);
        Ok(())
    }

    /// Encodes the tail; returns the packets and the samples that went in.
    fn finish(mut self) -> Result<(Vec<Bytes>, u64), AudioError> {
        // Silence for the encoder's lookahead, so that the last real samples
        // come out of a decoder instead of staying inside the encoder.
        let tail = self.pending.len() + usize::from(self.encoder.lookahead());
        self.pending
            .resize(tail.div_ceil(FRAME_SAMPLES) * FRAME_SAMPLES, 0);
        for frame in self.pending.chunks_exact(FRAME_SAMPLES) {
            self.packets.push(self.encoder.encode(frame)?);
        }
        Ok((self.packets, self.samples))
    }
}

fn symphonia_error(format: SourceFormat, e: SymphoniaError) -> AudioError {
    match e {
        SymphoniaError::Unsupported(what) => {
            AudioError::UnsupportedFormat(format!("{}: {what}", format.name()))
        }
        SymphoniaError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            AudioError::Corrupt {
                format: format.name(),
                reason: "file is cut off".into(),
            }
        }
        other => AudioError::Corrupt {
            format: format.name(),
            reason: other.to_string(),
        },
    }
}

/// PCM from symphonia on its way to the Opus encoder: mixdown, resampling,
/// and the bookkeeping of how much has been decoded.
struct PcmSink {
    encoder: FrameEncoder,
    resampler: Option<Resampler>,
    /// Samples at 48 kHz from segments at earlier rates (a rate change restarts the resampler).
    earlier_48k: u64,
    /// Source frames at the current rate.
    frames: u64,
    rate: u32,
    channels: u16,
    planes: Vec<Vec<f32>>,
    mono: Vec<i16>,
}

impl PcmSink {
    fn new() -> Result<Self, AudioError> {
        Ok(Self {
            encoder: FrameEncoder::new()?,
            resampler: None,
            earlier_48k: 0,
            frames: 0,
            rate: 0,
            channels: 0,
            planes: Vec::new(),
            mono: Vec::new(),
        })
    }

    /// Source audio decoded so far, in samples at 48 kHz.
    fn decoded_48k(&self) -> u64 {
        if self.rate == 0 {
            return self.earlier_48k;
        }
        let current = u128::from(self.frames) * u128::from(SAMPLE_RATE) / u128::from(self.rate);
        self.earlier_48k + u64::try_from(current).unwrap_or(u64::MAX)
    }

    fn push(
        &mut self,
        buf: &symphonia::core::audio::GenericAudioBufferRef<'_>,
    ) -> Result<(), AudioError> {
        let frames = buf.frames();
        if frames == 0 {
            return Ok(());
        }
        buf.copy_to_vecs_planar::<f32>(&mut self.planes);
        let channels = self.planes.len().max(1);
        self.channels = self
            .channels
            .max(u16::try_from(channels).unwrap_or(u16::MAX));
        // Averaging keeps the level of a mono recording stored as two equal channels.
        let scale = 32_768.0 / channels as f32;
        let mut mono = std::mem::take(&mut self.mono);
        mono.clear();
        mono.extend((0..frames).map(|i| {
            let sum: f32 = self
                .planes
                .iter()
                .map(|plane| plane.get(i).copied().unwrap_or(0.0))
                .sum();
            (sum * scale).round().clamp(-32_768.0, 32_767.0) as i16
        }));
        let result = self.push_mono(&mono, buf.spec().rate());
        self.mono = mono;
        result
    }

    /// Silence in place of `frames` lost source frames at the current rate,
    /// so that what follows keeps its place in time.
    fn push_gap(&mut self, frames: u64) -> Result<(), AudioError> {
        const CHUNK: u64 = 4_800;
        let zeros = [0i16; CHUNK as usize];
        let mut left = frames;
        while left > 0 {
            let n = left.min(CHUNK);
            self.push_mono(&zeros[..n as usize], self.rate)?;
            left -= n;
        }
        Ok(())
    }

    fn push_mono(&mut self, mono: &[i16], rate: u32) -> Result<(), AudioError> {
        if rate != self.rate {
            self.flush_resampler()?;
            self.earlier_48k = self.decoded_48k();
            self.frames = 0;
            self.rate = rate;
            self.resampler = Some(Resampler::new(rate, SAMPLE_RATE)?);
        }
        self.frames += mono.len() as u64;
        if let Some(resampler) = self.resampler.as_mut() {
            let out = resampler.process(mono)?;
            self.encoder.push(&out)?;
        }
        Ok(())
    }

    fn flush_resampler(&mut self) -> Result<(), AudioError> {
        if let Some(resampler) = self.resampler.as_mut() {
            let out = resampler.flush()?;
            self.encoder.push(&out)?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(Vec<Bytes>, u64), AudioError> {
        self.flush_resampler()?;
        self.encoder.finish()
    }
}

/// Where the track's packets are in time, to tell lost packets (a gap in the
/// middle) from a file that was cut off (the end never comes).
#[derive(Default)]
struct Timeline {
    /// End of the last packet, in track time-base units.
    end: Option<i64>,
}

impl Timeline {
    /// Records a packet; returns the gap before it, in time-base units.
    fn advance(&mut self, packet: &symphonia::core::packet::Packet) -> u64 {
        let pts = packet.pts.get();
        let dur = i64::try_from(packet.dur.get()).unwrap_or(i64::MAX);
        // Header-like packets (Vorbis' first, fully trimmed one) say nothing about time.
        if dur == 0 {
            return 0;
        }
        let gap = self
            .end
            .map_or(0, |end| u64::try_from(pts.saturating_sub(end)).unwrap_or(0));
        // Readers disagree on whether `dur` counts the trimmed tail; the
        // untrimmed end overshoots by at most one packet, which the cut-off
        // tolerance covers.
        let end = pts.saturating_add(dur);
        self.end = Some(self.end.map_or(end, |e| e.max(end)));
        gap
    }
}

/// Puts silence for `ts` time-base units of lost audio into `sink`, unless
/// that would pass the cap. Nothing before the first decoded audio: there is
/// no rate to make silence at yet, and leading silence is no loss.
fn fill_gap(
    sink: &mut PcmSink,
    ts: u64,
    time_base: Option<symphonia::core::units::TimeBase>,
    cap: u64,
    limits: &ImportLimits,
) -> Result<(), AudioError> {
    if sink.rate == 0 || ts == 0 {
        return Ok(());
    }
    let frames = match time_base {
        Some(tb) => {
            u128::from(ts) * u128::from(tb.numer.get()) * u128::from(sink.rate)
                / u128::from(tb.denom.get())
        }
        None => u128::from(ts),
    };
    let gap_48k = frames * u128::from(SAMPLE_RATE) / u128::from(sink.rate);
    if u128::from(sink.decoded_48k()) + gap_48k > u128::from(cap) {
        return Err(too_long(limits, cap.saturating_add(1)));
    }
    sink.push_gap(u64::try_from(frames).unwrap_or(u64::MAX))
}

fn import_with_symphonia(
    bytes: &[u8],
    format: SourceFormat,
    mimetype: Option<&str>,
    limits: &ImportLimits,
) -> Result<Imported, AudioError> {
    let name = format.name();
    let corrupt = |reason: String| AudioError::Corrupt {
        format: name,
        reason,
    };
    let source = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    let mut hint = Hint::new();
    hint.with_extension(format.extension());
    if let Some(mimetype) = mimetype {
        hint.mime_type(mimetype);
    }
    let mut reader = symphonia::default::get_probe()
        .probe(
            &hint,
            source,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| match e {
            // The magic number said this format, so a reader refusing it means damage.
            SymphoniaError::Unsupported(what) => corrupt(format!("unreadable ({what})")),
            other => symphonia_error(format, other),
        })?;
    let (track_id, mut decoder) = open_decoder(reader.as_ref(), format)?;
    let (time_base, declared_end) = reader
        .default_track(TrackType::Audio)
        .map(|t| {
            let end = t
                .duration
                .map(|d| d.get())
                .or(t.num_frames)
                .and_then(|d| i64::try_from(d).ok());
            (t.time_base, end)
        })
        .unwrap_or_default();
    let cap = cap_samples(limits);
    let mut sink = PcmSink::new()?;
    let mut timeline = Timeline::default();
    let mut skipped = 0u32;
    let mut bad_in_a_row = 0u32;
    loop {
        let packet = match reader.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            Err(SymphoniaError::ResetRequired) => {
                // A chained Ogg stream: a second recording glued on. Voice
                // messages are one recording; the first one is the message.
                tracing::warn!(
                    format = name,
                    "chained stream; importing the first part only"
                );
                break;
            }
            Err(e) => return Err(symphonia_error(format, e)),
        };
        if packet.track_id != track_id {
            continue;
        }
        // Demuxers drop damaged packets silently (a page or frame with a bad
        // CRC); the jump in timestamps is the only trace.
        let gap = timeline.advance(&packet);
        if gap > 0 {
            skipped += 1;
            fill_gap(&mut sink, gap, time_base, cap, limits)?;
        }
        match decoder.decode(&packet) {
            Ok(buf) => {
                bad_in_a_row = 0;
                sink.push(&buf)?;
            }
            // A damaged packet in an otherwise good stream: skip it, as a
            // player would. Damage can also look like an unsupported feature
            // (AAC coupling channels) or run off the packet's end.
            Err(
                e @ (SymphoniaError::DecodeError(_)
                | SymphoniaError::Unsupported(_)
                | SymphoniaError::IoError(_)),
            ) => {
                skipped += 1;
                bad_in_a_row += 1;
                // Silence in its place keeps what follows in time, as for a lost packet.
                fill_gap(&mut sink, packet.dur.get(), time_base, cap, limits)?;
                tracing::debug!(format = name, error = %e, "skipping undecodable packet");
                if bad_in_a_row >= MAX_CONSECUTIVE_BAD_PACKETS {
                    return Err(match e {
                        SymphoniaError::Unsupported(what) => {
                            AudioError::UnsupportedFormat(format!("{name}: {what}"))
                        }
                        other => corrupt(format!(
                            "{bad_in_a_row} undecodable packets in a row ({other})"
                        )),
                    });
                }
            }
            Err(e) => return Err(symphonia_error(format, e)),
        }
        if sink.decoded_48k() > cap {
            return Err(too_long(limits, sink.decoded_48k()));
        }
    }
    let declared_end = declared_end.filter(|_| format.stores_length(bytes));
    if let (Some(declared), Some(end), Some(tb)) = (declared_end, timeline.end, time_base) {
        let to_ms = |ts: i64| {
            let ms =
                i128::from(ts) * i128::from(tb.numer.get()) * 1000 / i128::from(tb.denom.get());
            i64::try_from(ms).unwrap_or(i64::MAX)
        };
        let (end_ms, declared_ms) = (to_ms(end), to_ms(declared));
        if end_ms + CUT_OFF_TOLERANCE_MS < declared_ms {
            return Err(corrupt(format!(
                "cut off or damaged: audio ends at {end_ms} ms of {declared_ms} ms"
            )));
        }
    }
    let source_rate = sink.rate;
    let source_channels = sink.channels;
    let (packets, samples) = sink.finish()?;
    if samples == 0 {
        return Err(if skipped > 0 {
            corrupt(format!("none of its {skipped} packets could be decoded"))
        } else {
            AudioError::NoAudio { format: name }
        });
    }
    if skipped > 0 {
        tracing::warn!(
            format = name,
            skipped,
            "voice message had undecodable packets"
        );
    }
    Ok(Imported {
        packets,
        duration_ms: samples_to_ms(samples, SAMPLE_RATE),
        passthrough: false,
        source_format: name,
        source_rate,
        source_channels,
        skipped_packets: skipped,
    })
}

fn open_decoder(
    reader: &dyn FormatReader,
    format: SourceFormat,
) -> Result<(u32, Box<dyn AudioDecoder>), AudioError> {
    let track = reader
        .default_track(TrackType::Audio)
        .ok_or(AudioError::NoAudio {
            format: format.name(),
        })?;
    let params =
        track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .ok_or(AudioError::NoAudio {
                format: format.name(),
            })?;
    let decoder = symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())
        .map_err(|e| match e {
            SymphoniaError::Unsupported(_) => AudioError::UnsupportedFormat(format!(
                "{} with codec {} (AAC-LC, MP3, Vorbis, FLAC and PCM are supported)",
                format.name(),
                params.codec
            )),
            other => symphonia_error(format, other),
        })?;
    Ok((track.id, decoder))
}

//! Ogg Opus files (RFC 7845) — the archive format of voice messages.
//!
//! Layout written: page 0 holds only `OpusHead` (BOS), page 1 only `OpusTags`,
//! then audio pages of up to 50 packets (~1 s) each; the last page carries EOS.
//! Granule positions count decoded samples from the start of the stream,
//! pre-skip included, as RFC 7845 §4 defines them, so the playback length is
//! `final granule − pre-skip`.

use super::codec::{frames_of, packet_samples, OpusDecoder, OpusEncoder, DEFAULT_PRE_SKIP};
use super::{AudioError, FRAME_SAMPLES, SAMPLE_RATE};
use ogg::reading::{BasePacketReader, OggReadError, PageParser};
use ogg::writing::{PacketWriteEndInfo, PacketWriter};
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};

/// Vendor string of the `OpusTags` header we write.
pub const VENDOR: &str = "walkie-bridge";
/// Audio packets per Ogg page: about one second, so a reader can seek to the
/// second and little is lost if a file is cut off mid-write.
const PACKETS_PER_PAGE: u64 = 50;
/// Granule value of a page on which no packet ends.
const NO_GRANULE: u64 = u64::MAX;
/// TOC byte alone: CELT fullband 20 ms, one empty frame, which decoders render as silence.
const SILENT_PACKET: [u8; 1] = [31 << 3];
const HEAD_MAGIC: &[u8; 8] = b"OpusHead";
const TAGS_MAGIC: &[u8; 8] = b"OpusTags";

/// The identification header (`OpusHead`, RFC 7845 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusHead {
    /// Encapsulation version; we write 1 and read any 0..=15.
    pub version: u8,
    /// Output channel count.
    pub channels: u8,
    /// Samples (48 kHz) to drop from the start of the decoded output.
    pub pre_skip: u16,
    /// Rate of the original input, informational only.
    pub input_sample_rate: u32,
    /// Gain to apply on output, Q7.8 dB.
    pub output_gain: i16,
    /// Channel mapping family; we write 0 (mono/stereo, no table).
    pub mapping_family: u8,
}

impl OpusHead {
    /// The header of a mono 48 kHz stream with the given pre-skip.
    pub fn mono(pre_skip: u16) -> Self {
        Self {
            version: 1,
            channels: 1,
            pre_skip,
            input_sample_rate: SAMPLE_RATE,
            output_gain: 0,
            mapping_family: 0,
        }
    }

    /// The 19-byte packet.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(19);
        b.extend_from_slice(HEAD_MAGIC);
        b.push(self.version);
        b.push(self.channels);
        b.extend_from_slice(&self.pre_skip.to_le_bytes());
        b.extend_from_slice(&self.input_sample_rate.to_le_bytes());
        b.extend_from_slice(&self.output_gain.to_le_bytes());
        b.push(self.mapping_family);
        b
    }

    /// Parses and validates an `OpusHead` packet.
    pub fn parse(packet: &[u8]) -> Result<Self, AudioError> {
        if packet.len() < 8 || &packet[..8] != HEAD_MAGIC {
            return Err(AudioError::NotOpus(format!(
                "first packet does not start with \"OpusHead\" (starts with {:?})",
                String::from_utf8_lossy(&packet[..packet.len().min(8)])
            )));
        }
        if packet.len() < 19 {
            return Err(AudioError::Malformed(format!(
                "OpusHead is {} bytes, needs at least 19",
                packet.len()
            )));
        }
        let head = Self {
            version: packet[8],
            channels: packet[9],
            pre_skip: u16::from_le_bytes([packet[10], packet[11]]),
            input_sample_rate: u32::from_le_bytes([packet[12], packet[13], packet[14], packet[15]]),
            output_gain: i16::from_le_bytes([packet[16], packet[17]]),
            mapping_family: packet[18],
        };
        // RFC 7845 §5.1: the upper nibble is the major version; a new major is incompatible.
        if head.version >> 4 != 0 {
            return Err(AudioError::Unsupported(format!(
                "OpusHead version {}",
                head.version
            )));
        }
        if head.channels == 0 {
            return Err(AudioError::Malformed("OpusHead declares 0 channels".into()));
        }
        if head.mapping_family != 0 {
            return Err(AudioError::Unsupported(format!(
                "channel mapping family {} (only 0, mono/stereo, is handled)",
                head.mapping_family
            )));
        }
        if head.channels > 2 {
            return Err(AudioError::Malformed(format!(
                "mapping family 0 with {} channels",
                head.channels
            )));
        }
        Ok(head)
    }
}

/// The comment header (`OpusTags`, RFC 7845 §5.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpusTags {
    /// Who wrote the stream.
    pub vendor: String,
    /// User comments, each `KEY=value`.
    pub comments: Vec<String>,
}

impl OpusTags {
    /// The packet.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(TAGS_MAGIC);
        let put = |b: &mut Vec<u8>, s: &str| {
            b.extend_from_slice(&(s.len() as u32).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        };
        put(&mut b, &self.vendor);
        b.extend_from_slice(&(self.comments.len() as u32).to_le_bytes());
        for c in &self.comments {
            put(&mut b, c);
        }
        b
    }

    /// Parses an `OpusTags` packet; lengths are checked against the packet
    /// before anything is allocated, so a hostile file cannot ask for gigabytes.
    pub fn parse(packet: &[u8]) -> Result<Self, AudioError> {
        if packet.len() < 8 || &packet[..8] != TAGS_MAGIC {
            return Err(AudioError::Malformed(
                "second packet is not \"OpusTags\"".into(),
            ));
        }
        let mut rest = &packet[8..];
        let take_u32 = |rest: &mut &[u8]| -> Result<usize, AudioError> {
            if rest.len() < 4 {
                return Err(AudioError::Malformed(
                    "OpusTags ends inside a length".into(),
                ));
            }
            let v = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            *rest = &rest[4..];
            Ok(v as usize)
        };
        let take_str = |rest: &mut &[u8], len: usize| -> Result<String, AudioError> {
            if rest.len() < len {
                return Err(AudioError::Malformed(
                    "OpusTags string runs past its end".into(),
                ));
            }
            let s = String::from_utf8_lossy(&rest[..len]).into_owned();
            *rest = &rest[len..];
            Ok(s)
        };
        let vendor_len = take_u32(&mut rest)?;
        let vendor = take_str(&mut rest, vendor_len)?;
        let count = take_u32(&mut rest)?;
        if count > rest.len() / 4 {
            return Err(AudioError::Malformed(format!(
                "OpusTags claims {count} comments in {} bytes",
                rest.len()
            )));
        }
        let mut comments = Vec::with_capacity(count);
        for _ in 0..count {
            let len = take_u32(&mut rest)?;
            comments.push(take_str(&mut rest, len)?);
        }
        Ok(Self { vendor, comments })
    }
}

/// Settings of an [`OggOpusWriter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OggOpusOptions {
    /// Pre-skip in samples: [`OpusEncoder::lookahead`] for our own encoder,
    /// [`DEFAULT_PRE_SKIP`] when passing through another encoder's packets.
    pub pre_skip: u16,
    /// Ogg stream serial; random when `None`.
    pub serial: Option<u32>,
    /// `(KEY, value)` user comments for `OpusTags`.
    pub comments: Vec<(String, String)>,
}

impl Default for OggOpusOptions {
    fn default() -> Self {
        Self {
            pre_skip: DEFAULT_PRE_SKIP,
            serial: None,
            comments: Vec::new(),
        }
    }
}

/// What an [`OggOpusWriter`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OggOpusStats {
    /// Ogg stream serial number.
    pub serial: u32,
    /// Audio packets written.
    pub packets: u64,
    /// Granule position of the last page.
    pub final_granule: u64,
    /// Playback length in samples: final granule − pre-skip.
    pub samples: u64,
    /// Playback length in milliseconds (rounded).
    pub duration_ms: u64,
}

struct Pending {
    data: Vec<u8>,
    granule: u64,
    granule_before: u64,
    is_header: bool,
}

/// Writes Opus packets into an Ogg Opus stream.
///
/// Packets are taken as they are — from [`OpusEncoder`] or from any other
/// Opus encoder (Mumble, a browser) — and only their TOC is read, to advance
/// the granule position by their true duration. The last packet is held back
/// until the next arrives or [`finish`](Self::finish) is called, because only
/// then is it known whether its page must carry the end-of-stream flag.
pub struct OggOpusWriter<W: Write> {
    writer: PacketWriter<'static, W>,
    serial: u32,
    pre_skip: u16,
    pending: Option<Pending>,
    granule: u64,
    packets: u64,
    on_page: u64,
}

impl<W: Write> std::fmt::Debug for OggOpusWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OggOpusWriter")
            .field("serial", &self.serial)
            .field("pre_skip", &self.pre_skip)
            .field("packets", &self.packets)
            .field("granule", &self.granule)
            .finish_non_exhaustive()
    }
}

fn random_serial() -> u32 {
    // std's RandomState is seeded from the OS per process and per instance;
    // that is all the randomness an Ogg serial needs, without a new dependency.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish() as u32
}

impl<W: Write> OggOpusWriter<W> {
    /// Starts a mono stream with this pre-skip, a random serial and no comments;
    /// writes the `OpusHead` page at once.
    pub fn new(inner: W, pre_skip: u16) -> Result<Self, AudioError> {
        Self::with_options(
            inner,
            OggOpusOptions {
                pre_skip,
                ..OggOpusOptions::default()
            },
        )
    }

    /// Starts a stream with explicit options; writes the `OpusHead` page at once.
    pub fn with_options(inner: W, options: OggOpusOptions) -> Result<Self, AudioError> {
        for (key, _) in &options.comments {
            if key.is_empty() || key.contains('=') || !key.is_ascii() {
                return Err(AudioError::InvalidArgument(format!(
                    "comment key {key:?} must be non-empty ASCII without '='"
                )));
            }
        }
        let serial = options.serial.unwrap_or_else(random_serial);
        let mut writer = PacketWriter::new(inner);
        writer.write_packet(
            OpusHead::mono(options.pre_skip).to_bytes(),
            serial,
            PacketWriteEndInfo::EndPage,
            0,
        )?;
        let tags = OpusTags {
            vendor: VENDOR.into(),
            comments: options
                .comments
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        };
        Ok(Self {
            writer,
            serial,
            pre_skip: options.pre_skip,
            pending: Some(Pending {
                data: tags.to_bytes(),
                granule: 0,
                granule_before: 0,
                is_header: true,
            }),
            granule: 0,
            packets: 0,
            on_page: 0,
        })
    }

    /// The stream serial number.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The pre-skip written in `OpusHead`.
    pub fn pre_skip(&self) -> u16 {
        self.pre_skip
    }

    /// Appends one Opus packet (any duration, any encoder).
    pub fn write_packet(&mut self, packet: &[u8]) -> Result<(), AudioError> {
        let samples = packet_samples(packet)? as u64;
        self.write_pending(PacketWriteEndInfo::NormalPacket)?;
        let before = self.granule;
        self.granule += samples;
        self.packets += 1;
        self.pending = Some(Pending {
            data: packet.to_vec(),
            granule: self.granule,
            granule_before: before,
            is_header: false,
        });
        Ok(())
    }

    /// Ends the stream (EOS page) and returns the inner writer and what was written.
    ///
    /// The playback length is everything the packets decode to, minus pre-skip.
    ///
    /// A stream that got no packet at all still needs one audio packet —
    /// players reject an empty stream — so one silent 20 ms packet is written
    /// and trimmed away: the file plays for 0 ms.
    pub fn finish(mut self) -> Result<(W, OggOpusStats), AudioError> {
        if self.packets == 0 {
            self.write_packet(&SILENT_PACKET)?;
            let trimmed = self.granule.min(u64::from(self.pre_skip));
            if let Some(p) = self.pending.as_mut() {
                p.granule = trimmed;
            }
            self.write_pending(PacketWriteEndInfo::EndStream)?;
            return self.into_parts(trimmed);
        }
        self.write_pending(PacketWriteEndInfo::EndStream)?;
        let final_granule = self.granule;
        self.into_parts(final_granule)
    }

    /// Ends the stream with end trimming (RFC 7845 §4.5): the playback length
    /// becomes exactly `playback_samples`, which must end inside the last packet.
    ///
    /// Used when the encoder was flushed with padding, so that a decoder
    /// returns precisely the samples that went in.
    pub fn finish_trimmed(
        mut self,
        playback_samples: u64,
    ) -> Result<(W, OggOpusStats), AudioError> {
        let target = u64::from(self.pre_skip) + playback_samples;
        match self.pending.as_mut() {
            Some(p) if !p.is_header && target > p.granule_before && target <= p.granule => {
                p.granule = target;
            }
            _ => {
                return Err(AudioError::InvalidArgument(format!(
                "cannot trim to {playback_samples} samples: the last packet spans granules {}..={}",
                self.pending.as_ref().map_or(0, |p| p.granule_before),
                self.granule
            )))
            }
        }
        self.write_pending(PacketWriteEndInfo::EndStream)?;
        self.into_parts(target)
    }

    fn into_parts(self, final_granule: u64) -> Result<(W, OggOpusStats), AudioError> {
        let samples = final_granule.saturating_sub(u64::from(self.pre_skip));
        let stats = OggOpusStats {
            serial: self.serial,
            packets: self.packets,
            final_granule,
            samples,
            duration_ms: samples_to_ms(samples),
        };
        let mut inner = self.writer.into_inner();
        inner.flush()?;
        Ok((inner, stats))
    }

    fn write_pending(&mut self, end: PacketWriteEndInfo) -> Result<(), AudioError> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let end = if end == PacketWriteEndInfo::EndStream {
            end
        } else if p.is_header {
            // RFC 7845 §3: audio must start on a fresh page after the comment header.
            PacketWriteEndInfo::EndPage
        } else {
            self.on_page += 1;
            if self.on_page >= PACKETS_PER_PAGE {
                self.on_page = 0;
                PacketWriteEndInfo::EndPage
            } else {
                PacketWriteEndInfo::NormalPacket
            }
        };
        self.writer
            .write_packet(p.data, self.serial, end, p.granule)?;
        Ok(())
    }
}

/// Everything in an Ogg Opus stream, as read by [`OggOpusReader::read_to_end`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OggOpusAudio {
    /// The identification header.
    pub head: OpusHead,
    /// The comment header.
    pub tags: OpusTags,
    /// Ogg stream serial number.
    pub serial: u32,
    /// Audio packets, unchanged.
    pub packets: Vec<Vec<u8>>,
    /// Granule position of the last page.
    pub final_granule: u64,
    /// Samples the packets decode to (pre-skip included, end trimming not applied).
    pub decoded_samples: u64,
    /// Playback length in samples: final granule − pre-skip (the granule
    /// clamped to `decoded_samples` if a stream claims more than it holds).
    pub samples: u64,
    /// Playback length in milliseconds (rounded).
    pub duration_ms: u64,
}

/// Reads an Ogg Opus stream packet by packet from any `Read`.
///
/// Strict on structure — one logical stream, headers each on their own page,
/// CRCs correct, an end-of-stream page present — because the bridge reads
/// files it must play on a radio, and a clear error beats half a message.
pub struct OggOpusReader<R: Read> {
    inner: R,
    base: BasePacketReader,
    serial: u32,
    head: OpusHead,
    tags: OpusTags,
    eos_seen: bool,
    final_granule: u64,
    decoded_samples: u64,
    packets: u64,
    done: bool,
}

impl<R: Read> std::fmt::Debug for OggOpusReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OggOpusReader")
            .field("serial", &self.serial)
            .field("head", &self.head)
            .field("packets", &self.packets)
            .finish_non_exhaustive()
    }
}

struct PageHeader {
    serial: u32,
    eos: bool,
}

fn map_ogg_error(e: OggReadError) -> AudioError {
    match e {
        OggReadError::ReadError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            AudioError::Truncated("stream ends inside a page".into())
        }
        OggReadError::ReadError(io) => AudioError::Io(io),
        OggReadError::HashMismatch(expected, got) => AudioError::Malformed(format!(
            "page CRC mismatch (stored {expected:08x}, computed {got:08x})"
        )),
        OggReadError::InvalidStreamStructVer(v) => {
            AudioError::Malformed(format!("Ogg stream structure version {v}"))
        }
        OggReadError::NoCapturePatternFound => {
            AudioError::Malformed("no Ogg capture pattern".into())
        }
        OggReadError::InvalidData => AudioError::Malformed(
            "pages out of order (continuation or BOS flags do not match)".into(),
        ),
    }
}

fn samples_to_ms(samples: u64) -> u64 {
    let ms = (u128::from(samples) * 1000 + u128::from(SAMPLE_RATE) / 2) / u128::from(SAMPLE_RATE);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// Reads as much of `buf` as the stream has; returns how much that was.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, AudioError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(AudioError::Io(e)),
        }
    }
    Ok(filled)
}

fn read_exact_or_truncated<R: Read>(
    r: &mut R,
    len: usize,
    what: &str,
) -> Result<Vec<u8>, AudioError> {
    let mut buf = vec![0u8; len];
    if read_up_to(r, &mut buf)? < len {
        return Err(AudioError::Truncated(format!(
            "stream ends inside a page {what}"
        )));
    }
    Ok(buf)
}

impl<R: Read> OggOpusReader<R> {
    /// Reads and validates `OpusHead` and `OpusTags`.
    pub fn new(mut inner: R) -> Result<Self, AudioError> {
        let mut base = BasePacketReader::new();
        let first = match Self::read_page(&mut inner, &mut base, true)? {
            Some(p) => p,
            None => return Err(AudioError::NotOpus("empty input".into())),
        };
        let head_packet = base
            .read_packet()
            .ok_or_else(|| AudioError::NotOpus("first page holds no complete packet".into()))?;
        if !head_packet.first_in_stream() {
            return Err(AudioError::NotOpus(
                "first page is not a beginning-of-stream page".into(),
            ));
        }
        let head = OpusHead::parse(&head_packet.data)?;
        if !head_packet.last_in_page() {
            return Err(AudioError::Malformed(
                "OpusHead does not end its page".into(),
            ));
        }
        let mut reader = Self {
            inner,
            base,
            serial: first.serial,
            head,
            tags: OpusTags::default(),
            eos_seen: first.eos,
            final_granule: 0,
            decoded_samples: 0,
            packets: 0,
            done: false,
        };
        let tags_packet = reader
            .next_raw()?
            .ok_or_else(|| AudioError::Truncated("no OpusTags header".into()))?;
        reader.tags = OpusTags::parse(&tags_packet.data)?;
        if !tags_packet.last_in_page() {
            return Err(AudioError::Malformed(
                "audio data shares the OpusTags page".into(),
            ));
        }
        if tags_packet.last_in_stream() {
            reader.done = true;
        }
        Ok(reader)
    }

    /// The identification header.
    pub fn head(&self) -> &OpusHead {
        &self.head
    }

    /// The comment header.
    pub fn tags(&self) -> &OpusTags {
        &self.tags
    }

    /// The Ogg stream serial number.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The next audio packet, or `None` after the end-of-stream page.
    pub fn next_packet(&mut self) -> Result<Option<Vec<u8>>, AudioError> {
        if self.done {
            return Ok(None);
        }
        let Some(packet) = self.next_raw()? else {
            return Ok(None);
        };
        let samples = packet_samples(&packet.data).map_err(|e| {
            AudioError::InvalidPacket(format!("audio packet {}: {e}", self.packets + 1))
        })?;
        self.packets += 1;
        self.decoded_samples += samples as u64;
        if packet.last_in_page() {
            let granule = packet.absgp_page();
            if granule != NO_GRANULE {
                self.final_granule = granule;
            }
        }
        if packet.last_in_stream() {
            self.done = true;
        }
        Ok(Some(packet.data))
    }

    /// Granule position of the last page read so far.
    pub fn granule(&self) -> u64 {
        self.final_granule
    }

    /// Reads all remaining packets and checks that the input ends with the stream.
    pub fn read_to_end(mut self) -> Result<OggOpusAudio, AudioError> {
        let mut packets = Vec::new();
        while let Some(p) = self.next_packet()? {
            packets.push(p);
        }
        // Only a whole-file read may insist that nothing follows: a streaming
        // caller of `next_packet` should not block on a socket after EOS.
        let mut probe = [0u8; 1];
        if read_up_to(&mut self.inner, &mut probe)? > 0 {
            return Err(AudioError::Unsupported(
                "data after the end-of-stream page (chained or concatenated Ogg)".into(),
            ));
        }
        // A granule beyond what the packets decode to is out of spec; trust the
        // packets, which is what a player will actually be able to play.
        if self.final_granule > self.decoded_samples {
            tracing::warn!(
                granule = self.final_granule,
                decoded = self.decoded_samples,
                "Ogg Opus final granule exceeds the decodable samples; clamping the duration"
            );
        }
        let samples = self
            .final_granule
            .min(self.decoded_samples)
            .saturating_sub(u64::from(self.head.pre_skip));
        Ok(OggOpusAudio {
            head: self.head,
            tags: self.tags,
            serial: self.serial,
            packets,
            final_granule: self.final_granule,
            decoded_samples: self.decoded_samples,
            samples,
            duration_ms: samples_to_ms(samples),
        })
    }

    fn next_raw(&mut self) -> Result<Option<ogg::Packet>, AudioError> {
        loop {
            if let Some(p) = self.base.read_packet() {
                return Ok(Some(p));
            }
            if self.eos_seen {
                let mut probe = [0u8; 1];
                if read_up_to(&mut self.inner, &mut probe)? > 0 {
                    return Err(AudioError::Unsupported(
                        "data after the end-of-stream page (chained or concatenated Ogg)".into(),
                    ));
                }
                return Ok(None);
            }
            match Self::read_page(&mut self.inner, &mut self.base, false)? {
                Some(page) => {
                    if page.serial != self.serial {
                        return Err(AudioError::Unsupported(format!(
                            "second logical stream {:08x} (multiplexed Ogg)",
                            page.serial
                        )));
                    }
                    self.eos_seen = page.eos;
                }
                None => {
                    return Err(AudioError::Truncated(
                        "input ends before the end-of-stream page".into(),
                    ))
                }
            }
        }
    }

    fn read_page(
        inner: &mut R,
        base: &mut BasePacketReader,
        first: bool,
    ) -> Result<Option<PageHeader>, AudioError> {
        let mut header = [0u8; 27];
        let got = read_up_to(inner, &mut header)?;
        if got == 0 {
            return Ok(None);
        }
        if got >= 4 && &header[..4] != b"OggS" || got < 4 && !b"OggS".starts_with(&header[..got]) {
            let what = format!(
                "no Ogg page where one was expected (found bytes {:02x?})",
                &header[..got.min(8)]
            );
            return Err(if first {
                AudioError::NotOpus(what)
            } else {
                AudioError::Malformed(what)
            });
        }
        if got < 27 {
            return Err(AudioError::Truncated(
                "stream ends inside a page header".into(),
            ));
        }
        let serial = u32::from_le_bytes([header[14], header[15], header[16], header[17]]);
        let eos = header[5] & 0x04 != 0;
        let (mut parser, segments) = PageParser::new(header).map_err(map_ogg_error)?;
        let lacing = read_exact_or_truncated(inner, segments, "lacing table")?;
        let body_len = parser.parse_segments(lacing);
        let body = read_exact_or_truncated(inner, body_len, "body")?;
        let page = parser.parse_packet_data(body).map_err(map_ogg_error)?;
        base.push_page(page).map_err(map_ogg_error)?;
        Ok(Some(PageHeader { serial, eos }))
    }
}

/// Reads a whole Ogg Opus file held in memory.
pub fn read_ogg_opus(bytes: &[u8]) -> Result<OggOpusAudio, AudioError> {
    OggOpusReader::new(bytes)?.read_to_end()
}

/// An Ogg Opus file decoded to PCM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedOggOpus {
    /// 48 kHz mono samples, pre-skip removed, end trimming and output gain applied.
    pub pcm: Vec<i16>,
    /// Playback length from the granule positions, in milliseconds.
    pub duration_ms: u64,
    /// The identification header.
    pub head: OpusHead,
    /// The comment header.
    pub tags: OpusTags,
    /// Number of audio packets.
    pub packets: usize,
}

/// Decodes an Ogg Opus file to 48 kHz mono PCM (stereo is down-mixed).
pub fn decode_ogg_opus(bytes: &[u8]) -> Result<DecodedOggOpus, AudioError> {
    let audio = read_ogg_opus(bytes)?;
    let mut decoder = OpusDecoder::new()?;
    if audio.head.output_gain != 0 {
        decoder.set_gain_q8(audio.head.output_gain)?;
    }
    let mut pcm = Vec::with_capacity(usize::try_from(audio.decoded_samples).unwrap_or(0));
    for packet in &audio.packets {
        pcm.extend(decoder.decode(packet)?);
    }
    let skip = usize::from(audio.head.pre_skip).min(pcm.len());
    pcm.drain(..skip);
    pcm.truncate(usize::try_from(audio.samples).unwrap_or(usize::MAX));
    Ok(DecodedOggOpus {
        pcm,
        duration_ms: audio.duration_ms,
        head: audio.head,
        tags: audio.tags,
        packets: audio.packets.len(),
    })
}

/// Encodes 48 kHz mono PCM into a complete Ogg Opus file whose decoded
/// playback is exactly `pcm.len()` samples, aligned with the input.
///
/// The encoder is flushed with enough silence to push its lookahead out, and
/// the final granule trims that padding again.
pub fn encode_ogg_opus(pcm: &[i16], bitrate: i32) -> Result<Vec<u8>, AudioError> {
    let mut encoder = OpusEncoder::with_bitrate(bitrate)?;
    let pre_skip = encoder.lookahead();
    let mut writer = OggOpusWriter::new(Vec::new(), pre_skip)?;
    let total = pcm.len() + usize::from(pre_skip);
    let frames = total.div_ceil(FRAME_SAMPLES).max(1);
    let mut padded = pcm.to_vec();
    padded.resize(frames * FRAME_SAMPLES, 0);
    for frame in frames_of(&padded) {
        writer.write_packet(&encoder.encode(&frame)?)?;
    }
    let (bytes, _) = writer.finish_trimmed(pcm.len() as u64)?;
    Ok(bytes)
}

//! The legacy (pre-1.5) voice packet, used on UDP and inside the TCP
//! `UDPTunnel` message alike.
//!
//! ```text
//! byte 0: type << 5 | target        type 1 = ping, 4 = Opus; target 0 = talk, 31 = loopback
//! ping:   varint timestamp
//! Opus:   [varint session]          only server → client
//!         varint sequence           in 10 ms units
//!         varint header             bits 0..12 = length, bit 13 (0x2000) = terminator
//!         payload (length bytes)
//!         [3 × f32 little-endian]   optional position
//! ```

use bytes::Bytes;

use crate::error::DecodeError;
use crate::varint;

/// The largest voice packet Mumble sends or accepts (1024 minus the 4-byte
/// UDP crypto header).
pub const MAX_PACKET: usize = 1020;
/// The largest Opus payload the 13-bit length field can describe.
pub const MAX_OPUS: usize = 0x1FFF;
const TERMINATOR: u64 = 0x2000;

pub const TYPE_PING: u8 = 1;
pub const TYPE_OPUS: u8 = 4;
/// Target of normal talking (to the current channel).
pub const TARGET_NORMAL: u8 = 0;

/// Which way a packet travels: only packets from the server carry the
/// sender's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToServer,
    ToClient,
}

#[derive(Debug, Clone, PartialEq)]
pub enum VoicePacket {
    /// Echoed back verbatim by the server; the value is ours to choose.
    Ping {
        timestamp: u64,
    },
    Audio(AudioPacket),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AudioPacket {
    /// 0 = normal talking, 1..=30 whisper targets, 31 = server loopback.
    pub target: u8,
    /// The sender; `Some` exactly for packets travelling to the client.
    pub session: Option<u32>,
    /// Sequence number of the packet's first frame, in 10 ms units.
    pub seq: u64,
    pub opus: Bytes,
    /// Last packet of a transmission.
    pub terminator: bool,
    pub position: Option<[f32; 3]>,
}

impl VoicePacket {
    pub fn decode(data: &[u8], direction: Direction) -> Result<Self, DecodeError> {
        let (&header, mut rest) = data.split_first().ok_or(DecodeError::Truncated)?;
        let kind = header >> 5;
        let target = header & 0x1F;
        match kind {
            TYPE_PING => Ok(VoicePacket::Ping {
                timestamp: varint::read(&mut rest)?,
            }),
            TYPE_OPUS => {
                let session = match direction {
                    Direction::ToServer => None,
                    Direction::ToClient => {
                        let s = varint::read(&mut rest)?;
                        Some(u32::try_from(s).map_err(|_| DecodeError::BadSession(s))?)
                    }
                };
                let seq = varint::read(&mut rest)?;
                let header = varint::read(&mut rest)?;
                if header > 0x3FFF {
                    return Err(DecodeError::BadLength(header));
                }
                let len = (header & MAX_OPUS as u64) as usize;
                let terminator = header & TERMINATOR != 0;
                if rest.len() < len {
                    return Err(DecodeError::Truncated);
                }
                let (opus, tail) = rest.split_at(len);
                // Fewer than 12 trailing bytes cannot be a position; Mumble
                // ignores them too, so they are not worth dropping audio for.
                let position = tail.first_chunk::<12>().map(|p| {
                    let f = |i: usize| f32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
                    [f(0), f(4), f(8)]
                });
                Ok(VoicePacket::Audio(AudioPacket {
                    target,
                    session,
                    seq,
                    opus: Bytes::copy_from_slice(opus),
                    terminator,
                    position,
                }))
            }
            0 | 2 | 3 => Err(DecodeError::UnsupportedCodec(kind)),
            other => Err(DecodeError::UnknownType(other)),
        }
    }

    /// Appends the encoded packet to `out`. The caller checks the Opus size
    /// (see [`MAX_OPUS`]); a longer payload is truncated to keep the length
    /// field honest rather than corrupting the header bits.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            VoicePacket::Ping { timestamp } => {
                out.push(TYPE_PING << 5);
                varint::write(out, *timestamp);
            }
            VoicePacket::Audio(a) => {
                out.push(TYPE_OPUS << 5 | (a.target & 0x1F));
                if let Some(session) = a.session {
                    varint::write(out, u64::from(session));
                }
                varint::write(out, a.seq);
                let opus = &a.opus[..a.opus.len().min(MAX_OPUS)];
                let mut header = opus.len() as u64;
                if a.terminator {
                    header |= TERMINATOR;
                }
                varint::write(out, header);
                out.extend_from_slice(opus);
                if let Some(pos) = a.position {
                    for f in pos {
                        out.extend_from_slice(&f.to_le_bytes());
                    }
                }
            }
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode(&mut out);
        out
    }
}

/// Duration of an Opus packet in 10 ms sequence units, read from its TOC byte
/// (RFC 6716 §3.1): the sequence number advances by this much per packet, as
/// the Mumble client and pymumble do. At least 1, so that every packet gets a
/// new number even when the TOC is unreadable.
pub fn opus_seq_units(packet: &[u8]) -> u64 {
    let Some(&toc) = packet.first() else {
        return 1;
    };
    let config = toc >> 3;
    // Frame duration in units of 2.5 ms.
    let frame_quarters: u64 = match config {
        0..=11 => [4, 8, 16, 24][usize::from(config % 4)],
        12..=15 => [4, 8][usize::from(config % 2)],
        _ => [1, 2, 4, 8][usize::from(config % 4)],
    };
    let frames: u64 = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => packet.get(1).map_or(1, |b| u64::from(b & 0x3F)),
    };
    ((frame_quarters * frames + 2) / 4).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio(session: Option<u32>, seq: u64, opus: &[u8], terminator: bool) -> AudioPacket {
        AudioPacket {
            target: 0,
            session,
            seq,
            opus: Bytes::copy_from_slice(opus),
            terminator,
            position: None,
        }
    }

    #[test]
    fn client_packet_bytes() {
        let p = VoicePacket::Audio(audio(None, 2, &[0xAA, 0xBB, 0xCC], false));
        assert_eq!(p.to_vec(), [0x80, 0x02, 0x03, 0xAA, 0xBB, 0xCC]);
        assert_eq!(VoicePacket::decode(&p.to_vec(), Direction::ToServer), Ok(p));
    }

    #[test]
    fn terminator_sets_bit_13() {
        let p = VoicePacket::Audio(audio(None, 300, &[1, 2], true));
        // seq 300 = 0x012C → 0x81 0x2C; header 0x2002 → 0xA0 0x02.
        assert_eq!(p.to_vec(), [0x80, 0x81, 0x2C, 0xA0, 0x02, 1, 2]);
        assert_eq!(VoicePacket::decode(&p.to_vec(), Direction::ToServer), Ok(p));
    }

    #[test]
    fn server_packet_carries_session() {
        let p = VoicePacket::Audio(audio(Some(7), 10, &[9; 60], false));
        let bytes = p.to_vec();
        assert_eq!(&bytes[..4], &[0x80, 0x07, 0x0A, 60]);
        assert_eq!(
            VoicePacket::decode(&bytes, Direction::ToClient),
            Ok(p.clone())
        );
        // Read as a client packet the session shifts every field: it must not
        // round-trip.
        assert_ne!(VoicePacket::decode(&bytes, Direction::ToServer), Ok(p));
    }

    #[test]
    fn position_round_trips_little_endian() {
        let mut a = audio(Some(1), 0, &[5], false);
        a.position = Some([1.0, -2.5, 3.25]);
        let bytes = VoicePacket::Audio(a.clone()).to_vec();
        assert_eq!(
            &bytes[bytes.len() - 12..bytes.len() - 8],
            &1.0f32.to_le_bytes()
        );
        assert_eq!(
            VoicePacket::decode(&bytes, Direction::ToClient),
            Ok(VoicePacket::Audio(a))
        );
    }

    #[test]
    fn loopback_target_kept() {
        let mut a = audio(None, 0, &[5], false);
        a.target = 31;
        let bytes = VoicePacket::Audio(a.clone()).to_vec();
        assert_eq!(bytes[0], 0x9F);
        assert_eq!(
            VoicePacket::decode(&bytes, Direction::ToServer),
            Ok(VoicePacket::Audio(a))
        );
    }

    #[test]
    fn ping() {
        let p = VoicePacket::Ping { timestamp: 0x1234 };
        assert_eq!(p.to_vec(), [0x20, 0x92, 0x34]);
        assert_eq!(VoicePacket::decode(&p.to_vec(), Direction::ToClient), Ok(p));
    }

    #[test]
    fn bad_input() {
        use DecodeError::*;
        let d = |b: &[u8]| VoicePacket::decode(b, Direction::ToClient);
        assert_eq!(d(&[]), Err(Truncated));
        assert_eq!(d(&[0x20]), Err(Truncated));
        assert_eq!(d(&[0x80, 0x01]), Err(Truncated));
        assert_eq!(d(&[0x80, 0x01, 0x02, 0x05, 1, 2]), Err(Truncated));
        assert_eq!(
            d(&[0x80, 0x01, 0x02, 0xC0, 0x40, 0x00]),
            Err(BadLength(0x4000))
        );
        assert_eq!(d(&[0x00, 1, 2, 3]), Err(UnsupportedCodec(0)));
        assert_eq!(d(&[0x40, 1, 2, 3]), Err(UnsupportedCodec(2)));
        assert_eq!(d(&[0xE0]), Err(UnknownType(7)));
        assert_eq!(
            d(&[0x80, 0xF4, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
            Err(BadSession(1 << 32))
        );
    }

    #[test]
    fn short_tail_is_not_a_position() {
        let bytes = [0x80, 0x01, 0x02, 0x01, 0xAA, 0, 0, 0];
        let Ok(VoicePacket::Audio(a)) = VoicePacket::decode(&bytes, Direction::ToClient) else {
            panic!("decodes");
        };
        assert_eq!(a.position, None);
        assert_eq!(&a.opus[..], &[0xAA]);
    }

    #[test]
    fn opus_durations() {
        // config 27 (CELT FB 20 ms), one frame → 2 units.
        assert_eq!(opus_seq_units(&[27 << 3]), 2);
        // config 25 (CELT FB 5 ms)... rounds 0.5 up to 1.
        assert_eq!(opus_seq_units(&[25 << 3]), 1);
        // config 11 (SILK WB 60 ms) → 6.
        assert_eq!(opus_seq_units(&[11 << 3]), 6);
        // config 27, two frames (code 1) → 40 ms.
        assert_eq!(opus_seq_units(&[27 << 3 | 1]), 4);
        // code 3 with 3 frames of 20 ms.
        assert_eq!(opus_seq_units(&[27 << 3 | 3, 3]), 6);
        assert_eq!(opus_seq_units(&[]), 1);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn arb_audio(to_client: bool) -> impl Strategy<Value = AudioPacket> {
            (
                0u8..32,
                any::<u32>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..400),
                any::<bool>(),
                proptest::option::of((-1e6f32..1e6, -1e6f32..1e6, -1e6f32..1e6)),
            )
                .prop_map(move |(target, s, seq, opus, terminator, pos)| AudioPacket {
                    target,
                    session: to_client.then_some(s),
                    seq,
                    opus: Bytes::from(opus),
                    terminator,
                    position: pos.map(|(x, y, z)| [x, y, z]),
                })
        }

        proptest! {
            #[test]
            fn round_trip(to_client in any::<bool>(), a in any::<bool>().prop_flat_map(arb_audio)) {
                let mut a = a;
                a.session = if to_client { a.session.or(Some(1)) } else { None };
                let dir = if to_client { Direction::ToClient } else { Direction::ToServer };
                let p = VoicePacket::Audio(a);
                prop_assert_eq!(VoicePacket::decode(&p.to_vec(), dir), Ok(p));
            }

            #[test]
            fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
                let _ = VoicePacket::decode(&bytes, Direction::ToClient);
                let _ = VoicePacket::decode(&bytes, Direction::ToServer);
            }

            #[test]
            fn never_panics_on_opus_headers(tail in proptest::collection::vec(any::<u8>(), 0..32)) {
                let mut bytes = vec![0x80];
                bytes.extend(tail);
                let _ = VoicePacket::decode(&bytes, Direction::ToClient);
                let _ = opus_seq_units(&bytes);
            }
        }
    }
}

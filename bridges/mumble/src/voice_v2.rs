//! The protobuf voice packet of Mumble ≥ 1.5 (`MumbleUDP.proto`), used on UDP
//! and inside the TCP `UDPTunnel` message alike, and [`VoiceFormat`], which
//! picks it or the legacy format ([`crate::voice`]) per connection.
//!
//! ```text
//! byte 0: message type              0 = Audio, 1 = Ping
//! rest:   the protobuf message (proto3)
//!
//! message Audio {
//!   oneof Header { uint32 target = 1;    client → server: 0 talk, 31 loopback, 1..30 whisper
//!                  uint32 context = 2; } server → client: 0 normal, 1 shout, 2 whisper, 3 listener
//!   uint32 sender_session = 3;            server → client
//!   uint64 frame_number = 4;              first frame, 10 ms units (the legacy sequence)
//!   bytes opus_data = 5;
//!   repeated float positional_data = 6;   packed; exactly 3 (x, y, z) or none
//!   float volume_adjustment = 7;          server → client; 0 = unset
//!   bool is_terminator = 16;
//! }
//! message Ping {
//!   uint64 timestamp = 1;                 echoed by the server
//!   bool request_extended_information = 2;
//!   uint64 server_version_v2 = 3;         the rest: filled by the server on request
//!   uint32 user_count = 4;
//!   uint32 max_user_count = 5;
//!   uint32 max_bandwidth_per_user = 6;
//! }
//! ```
//!
//! Field numbers are from `src/MumbleUDP.proto` of mumble-voip/mumble. The
//! decoded packets have the legacy module's shape ([`VoicePacket`]), so the
//! connection handles both formats alike.

use bytes::Bytes;
use prost::Message;

use crate::error::DecodeError;
use crate::proto::MumbleVersion;
use crate::voice::{AudioPacket, Direction, VoicePacket};

/// The type byte before a protobuf `Audio` message.
pub const TYPE_AUDIO: u8 = 0;
/// The type byte before a protobuf `Ping` message.
pub const TYPE_PING: u8 = 1;

/// `MumbleUDP.Audio`.
#[derive(Clone, PartialEq, Message)]
pub struct Audio {
    #[prost(oneof = "Header", tags = "1, 2")]
    pub header: Option<Header>,
    #[prost(uint32, tag = "3")]
    pub sender_session: u32,
    #[prost(uint64, tag = "4")]
    pub frame_number: u64,
    #[prost(bytes = "bytes", tag = "5")]
    pub opus_data: Bytes,
    #[prost(float, repeated, tag = "6")]
    pub positional_data: Vec<f32>,
    #[prost(float, tag = "7")]
    pub volume_adjustment: f32,
    #[prost(bool, tag = "16")]
    pub is_terminator: bool,
}

/// `MumbleUDP.Audio.Header`: the target when sent to the server, the context
/// when sent to a client. Being a oneof member, a 0 is still written.
#[derive(Clone, Copy, PartialEq, Eq, prost::Oneof)]
pub enum Header {
    #[prost(uint32, tag = "1")]
    Target(u32),
    #[prost(uint32, tag = "2")]
    Context(u32),
}

/// `MumbleUDP.Ping`.
#[derive(Clone, PartialEq, Message)]
pub struct Ping {
    #[prost(uint64, tag = "1")]
    pub timestamp: u64,
    #[prost(bool, tag = "2")]
    pub request_extended_information: bool,
    #[prost(uint64, tag = "3")]
    pub server_version_v2: u64,
    #[prost(uint32, tag = "4")]
    pub user_count: u32,
    #[prost(uint32, tag = "5")]
    pub max_user_count: u32,
    #[prost(uint32, tag = "6")]
    pub max_bandwidth_per_user: u32,
}

/// Decodes a protobuf voice packet (type byte + message).
///
/// Like Mumble's `UDPDecoder`, a packet of one byte or less is invalid. Unlike
/// it, we keep the audio of a packet whose position is not exactly 3 floats
/// (the position is dropped), just as the legacy decoder ignores a short
/// position tail. `volume_adjustment` is not used by the bridge and dropped.
pub fn decode(data: &[u8], direction: Direction) -> Result<VoicePacket, DecodeError> {
    let (&kind, rest) = data.split_first().ok_or(DecodeError::Truncated)?;
    if rest.is_empty() {
        return Err(DecodeError::Truncated);
    }
    match kind {
        TYPE_PING => {
            let ping = Ping::decode(rest).map_err(|_| DecodeError::Protobuf)?;
            Ok(VoicePacket::Ping {
                timestamp: ping.timestamp,
            })
        }
        TYPE_AUDIO => {
            let audio = Audio::decode(rest).map_err(|_| DecodeError::Protobuf)?;
            let target = match audio.header {
                None => 0,
                Some(Header::Target(t) | Header::Context(t)) => u8::try_from(t)
                    .ok()
                    .filter(|t| *t <= 31)
                    .ok_or(DecodeError::BadTarget(t))?,
            };
            let position = match audio.positional_data[..] {
                [x, y, z] => Some([x, y, z]),
                _ => None,
            };
            Ok(VoicePacket::Audio(AudioPacket {
                target,
                session: match direction {
                    Direction::ToServer => None,
                    Direction::ToClient => Some(audio.sender_session),
                },
                seq: audio.frame_number,
                opus: audio.opus_data,
                terminator: audio.is_terminator,
                position,
            }))
        }
        other => Err(DecodeError::UnknownType(other)),
    }
}

/// Appends the encoded packet to `out`. The header is `target` for packets
/// without a session (client → server), `context` for packets with one
/// (server → client), mirroring the legacy encoder's direction rule.
pub fn encode(packet: &VoicePacket, out: &mut Vec<u8>) {
    match packet {
        VoicePacket::Ping { timestamp } => {
            out.push(TYPE_PING);
            Ping {
                timestamp: *timestamp,
                ..Default::default()
            }
            .encode_raw(out);
        }
        VoicePacket::Audio(a) => {
            out.push(TYPE_AUDIO);
            let target = u32::from(a.target);
            Audio {
                header: Some(match a.session {
                    None => Header::Target(target),
                    Some(_) => Header::Context(target),
                }),
                sender_session: a.session.unwrap_or(0),
                frame_number: a.seq,
                opus_data: a.opus.clone(),
                positional_data: a.position.map(Vec::from).unwrap_or_default(),
                volume_adjustment: 0.0,
                is_terminator: a.terminator,
            }
            .encode_raw(out);
        }
    }
}

/// Which voice packet format a connection speaks, on UDP and in the tunnel.
///
/// A Mumble ≥ 1.5 server encodes for, and decodes from, each client by the
/// version that client announced; a 1.5 client in turn follows the server's
/// version. So the protobuf format is in use exactly when the server is
/// ≥ 1.5.0 and we announced ≥ 1.5.0: [`VoiceFormat::negotiate`] decides from
/// the server's version, and [`VoiceFormat::announce`] is what we then send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VoiceFormat {
    /// Type/target byte, Mumble varints (murmurd 1.2–1.4, and 1.5 with old clients).
    #[default]
    Legacy,
    /// Type byte + `MumbleUDP` protobuf message (Mumble ≥ 1.5).
    Protobuf,
}

impl VoiceFormat {
    /// The version we announce with the legacy format. 1.3.4 is what murmurd
    /// 1.3.4 (Debian) has always seen from us; any server ≥ 1.5 keeps the
    /// legacy format with a client announcing it.
    pub const LEGACY_ANNOUNCE: MumbleVersion = MumbleVersion::new(1, 3, 4);
    /// The version we announce with the protobuf format.
    pub const PROTOBUF_ANNOUNCE: MumbleVersion = MumbleVersion::PROTOBUF_INTRODUCTION;

    /// Protobuf iff the server announced ≥ 1.5.0; legacy for older servers
    /// and for a server whose version we do not know.
    pub fn negotiate(server: Option<MumbleVersion>) -> Self {
        match server {
            Some(v) if v >= MumbleVersion::PROTOBUF_INTRODUCTION => VoiceFormat::Protobuf,
            _ => VoiceFormat::Legacy,
        }
    }

    /// The client version to announce so that the server uses this format.
    pub fn announce(self) -> MumbleVersion {
        match self {
            VoiceFormat::Legacy => Self::LEGACY_ANNOUNCE,
            VoiceFormat::Protobuf => Self::PROTOBUF_ANNOUNCE,
        }
    }

    pub fn decode(self, data: &[u8], direction: Direction) -> Result<VoicePacket, DecodeError> {
        match self {
            VoiceFormat::Legacy => VoicePacket::decode(data, direction),
            VoiceFormat::Protobuf => decode(data, direction),
        }
    }

    pub fn encode(self, packet: &VoicePacket, out: &mut Vec<u8>) {
        match self {
            VoiceFormat::Legacy => packet.encode(out),
            VoiceFormat::Protobuf => encode(packet, out),
        }
    }

    pub fn to_vec(self, packet: &VoicePacket) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode(packet, &mut out);
        out
    }

    pub fn name(self) -> &'static str {
        match self {
            VoiceFormat::Legacy => "legacy",
            VoiceFormat::Protobuf => "protobuf",
        }
    }
}

impl std::fmt::Display for VoiceFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A 20 ms Opus packet of silence (CELT fullband, mono: TOC 0xF8, then the
/// two-byte silence frame). Mumble ≥ 1.5 drops protobuf audio without
/// payload, so an empty terminator is sent with this instead.
pub const OPUS_SILENCE: [u8; 3] = [0xF8, 0xFF, 0xFE];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voice;

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

    fn enc(p: &VoicePacket) -> Vec<u8> {
        VoiceFormat::Protobuf.to_vec(p)
    }

    /// Client → server, frame 300, terminator, 2 bytes of Opus — the legacy
    /// README example in the 1.5 format, built by hand from the .proto:
    /// `00` type Audio; `08 00` field 1 (target, varint) = 0, written because
    /// it is a oneof member; `20 AC 02` field 4 (frame_number) = 300;
    /// `2A 02 01 02` field 5 (opus_data, length-delimited); `80 01 01` field
    /// 16 (is_terminator): key 16 << 3 | 0 = 128 = varint `80 01`, value 1.
    const CLIENT_AUDIO: [u8; 13] = [
        0x00, 0x08, 0x00, 0x20, 0xAC, 0x02, 0x2A, 0x02, 0x01, 0x02, 0x80, 0x01, 0x01,
    ];

    /// Server → client, session 7, context 0, frame 10, Opus `09 09 09`,
    /// position (1.0, −2.5, 3.25): `10 00` field 2 (context) = 0; `18 07`
    /// field 3 (sender_session); `20 0A` frame 10; `2A 03 09 09 09` Opus;
    /// `32 0C` field 6 packed (length-delimited, 12 bytes) followed by three
    /// f32 little-endian: 1.0 = `00 00 80 3F`, −2.5 = `00 00 20 C0`,
    /// 3.25 = `00 00 50 40`.
    const SERVER_AUDIO: [u8; 26] = [
        0x00, 0x10, 0x00, 0x18, 0x07, 0x20, 0x0A, 0x2A, 0x03, 0x09, 0x09, 0x09, 0x32, 0x0C, 0x00,
        0x00, 0x80, 0x3F, 0x00, 0x00, 0x20, 0xC0, 0x00, 0x00, 0x50, 0x40,
    ];

    #[test]
    fn client_audio_bytes() {
        let p = VoicePacket::Audio(audio(None, 300, &[1, 2], true));
        assert_eq!(enc(&p), CLIENT_AUDIO);
        assert_eq!(decode(&CLIENT_AUDIO, Direction::ToServer), Ok(p));
    }

    #[test]
    fn server_audio_bytes() {
        let mut a = audio(Some(7), 10, &[9, 9, 9], false);
        a.position = Some([1.0, -2.5, 3.25]);
        let p = VoicePacket::Audio(a);
        assert_eq!(enc(&p), SERVER_AUDIO);
        assert_eq!(decode(&SERVER_AUDIO, Direction::ToClient), Ok(p));
    }

    #[test]
    fn ping_bytes() {
        // `01` type Ping; `08 B4 24` field 1 (timestamp) = 0x1234.
        let p = VoicePacket::Ping { timestamp: 0x1234 };
        assert_eq!(enc(&p), [0x01, 0x08, 0xB4, 0x24]);
        assert_eq!(
            decode(&[0x01, 0x08, 0xB4, 0x24], Direction::ToClient),
            Ok(p)
        );
    }

    #[test]
    fn server_ping_with_extended_information() {
        // timestamp 5, server_version_v2 = 1.5.0 (field 3), user_count 2
        // (field 4), max_user_count 100 (field 5), max_bandwidth 72000
        // (field 6): only the timestamp is kept.
        let mut bytes = vec![0x01, 0x08, 0x05, 0x18];
        bytes.extend([0x80, 0x80, 0x80, 0x80, 0xD0, 0x80, 0x40]);
        bytes.extend([0x20, 0x02, 0x28, 0x64, 0x30, 0xC0, 0xB2, 0x04]);
        let full = Ping::decode(&bytes[1..]).ok();
        assert_eq!(
            full,
            Some(Ping {
                timestamp: 5,
                request_extended_information: false,
                server_version_v2: MumbleVersion::new(1, 5, 0).v2(),
                user_count: 2,
                max_user_count: 100,
                max_bandwidth_per_user: 72000,
            })
        );
        assert_eq!(
            decode(&bytes, Direction::ToClient),
            Ok(VoicePacket::Ping { timestamp: 5 })
        );
    }

    #[test]
    fn fields_in_any_order_and_unknown_fields() {
        // Mumble's server writes the static part first and appends context
        // (and volume_adjustment, field 7 fixed32 = key 0x3D) afterwards;
        // field 9 (unknown, varint) is skipped.
        let bytes = [
            0x00, 0x18, 0x05, 0x20, 0x02, 0x2A, 0x01, 0xAA, 0x48, 0x01, 0x3D, 0x00, 0x00, 0x00,
            0x3F, 0x10, 0x02,
        ];
        let Ok(VoicePacket::Audio(a)) = decode(&bytes, Direction::ToClient) else {
            panic!("decodes");
        };
        assert_eq!(a.session, Some(5));
        assert_eq!(a.seq, 2);
        assert_eq!(a.target, 2);
        assert_eq!(&a.opus[..], &[0xAA]);
        assert!(!a.terminator);
    }

    #[test]
    fn loopback_target_and_whisper_context() {
        let mut a = audio(None, 1, &[5], false);
        a.target = 31;
        let p = VoicePacket::Audio(a);
        let bytes = enc(&p);
        assert_eq!(&bytes[..3], &[0x00, 0x08, 0x1F]);
        assert_eq!(decode(&bytes, Direction::ToServer), Ok(p));
    }

    #[test]
    fn bad_input() {
        use DecodeError::*;
        let d = |b: &[u8]| decode(b, Direction::ToClient);
        assert_eq!(d(&[]), Err(Truncated));
        // Only the type byte: invalid, as in Mumble's decoder.
        assert_eq!(d(&[0x00]), Err(Truncated));
        assert_eq!(d(&[0x01]), Err(Truncated));
        assert_eq!(d(&[0x02, 0x08, 0x01]), Err(UnknownType(2)));
        // A legacy Opus packet read as protobuf.
        assert_eq!(d(&[0x80, 0x01, 0x02, 0x01, 0xAA]), Err(UnknownType(0x80)));
        // Field 5 claims 5 bytes, 1 follows.
        assert_eq!(d(&[0x00, 0x2A, 0x05, 0x01]), Err(Protobuf));
        // Wire type 7 does not exist.
        assert_eq!(d(&[0x00, 0x0F]), Err(Protobuf));
        // Target 32 does not fit the 5-bit target the bridge models.
        assert_eq!(d(&[0x00, 0x08, 0x20]), Err(BadTarget(32)));
        assert_eq!(
            d(&[0x00, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]),
            Err(BadTarget(u32::MAX))
        );
    }

    #[test]
    fn position_not_three_floats_is_dropped() {
        // Two floats (packed, 8 bytes): audio kept, position dropped.
        let bytes = [
            0x00, 0x2A, 0x01, 0xAA, 0x32, 0x08, 0, 0, 0x80, 0x3F, 0, 0, 0x80, 0x3F,
        ];
        let Ok(VoicePacket::Audio(a)) = decode(&bytes, Direction::ToClient) else {
            panic!("decodes");
        };
        assert_eq!(a.position, None);
        assert_eq!(&a.opus[..], &[0xAA]);
        // Unpacked floats (key 0x35, fixed32 each) are accepted too.
        let mut bytes = vec![0x00, 0x2A, 0x01, 0xAA];
        for f in [1.0f32, 2.0, 3.0] {
            bytes.push(0x35);
            bytes.extend(f.to_le_bytes());
        }
        let Ok(VoicePacket::Audio(a)) = decode(&bytes, Direction::ToClient) else {
            panic!("decodes");
        };
        assert_eq!(a.position, Some([1.0, 2.0, 3.0]));
    }

    #[test]
    fn negotiation() {
        let v = |a, b, c| Some(MumbleVersion::new(a, b, c));
        use VoiceFormat::*;
        assert_eq!(VoiceFormat::negotiate(None), Legacy);
        assert_eq!(VoiceFormat::negotiate(v(1, 2, 19)), Legacy);
        assert_eq!(VoiceFormat::negotiate(v(1, 3, 4)), Legacy);
        assert_eq!(VoiceFormat::negotiate(v(1, 4, 0)), Legacy);
        assert_eq!(VoiceFormat::negotiate(v(1, 4, 287)), Legacy);
        assert_eq!(VoiceFormat::negotiate(v(1, 4, 65535)), Legacy);
        assert_eq!(VoiceFormat::negotiate(v(1, 5, 0)), Protobuf);
        assert_eq!(VoiceFormat::negotiate(v(1, 5, 735)), Protobuf);
        assert_eq!(VoiceFormat::negotiate(v(1, 6, 0)), Protobuf);
        assert_eq!(VoiceFormat::negotiate(v(2, 0, 0)), Protobuf);
        // What we announce is on the matching side of 1.5.0 — the server
        // picks its format by it.
        assert!(Legacy.announce() < MumbleVersion::PROTOBUF_INTRODUCTION);
        assert!(Protobuf.announce() >= MumbleVersion::PROTOBUF_INTRODUCTION);
        assert_eq!(Legacy.announce().v1(), 0x0001_0304);
        assert_eq!(Protobuf.announce().v1(), 0x0001_0500);
    }

    #[test]
    fn dispatch_by_format() {
        let p = VoicePacket::Audio(audio(None, 300, &[1, 2], true));
        assert_eq!(
            VoiceFormat::Legacy.to_vec(&p),
            [0x80, 0x81, 0x2C, 0xA0, 0x02, 1, 2]
        );
        assert_eq!(VoiceFormat::Protobuf.to_vec(&p), CLIENT_AUDIO);
        for f in [VoiceFormat::Legacy, VoiceFormat::Protobuf] {
            assert_eq!(f.decode(&f.to_vec(&p), Direction::ToServer), Ok(p.clone()));
        }
    }

    #[test]
    fn silence_is_one_20ms_frame() {
        assert_eq!(voice::opus_seq_units(&OPUS_SILENCE), 2);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn arb_audio() -> impl Strategy<Value = AudioPacket> {
            (
                0u8..32,
                proptest::option::of(any::<u32>()),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..400),
                any::<bool>(),
                proptest::option::of((-1e6f32..1e6, -1e6f32..1e6, -1e6f32..1e6)),
            )
                .prop_map(|(target, session, seq, opus, terminator, pos)| {
                    AudioPacket {
                        target,
                        session,
                        seq,
                        opus: Bytes::from(opus),
                        terminator,
                        position: pos.map(|(x, y, z)| [x, y, z]),
                    }
                })
        }

        proptest! {
            #[test]
            fn round_trip(a in arb_audio()) {
                let dir = if a.session.is_some() { Direction::ToClient } else { Direction::ToServer };
                let p = VoicePacket::Audio(a);
                prop_assert_eq!(decode(&enc(&p), dir), Ok(p));
            }

            #[test]
            fn ping_round_trip(timestamp in any::<u64>()) {
                let p = VoicePacket::Ping { timestamp };
                prop_assert_eq!(decode(&enc(&p), Direction::ToClient), Ok(p));
            }

            #[test]
            fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
                let _ = decode(&bytes, Direction::ToClient);
                let _ = decode(&bytes, Direction::ToServer);
            }

            #[test]
            fn never_panics_on_audio_messages(tail in proptest::collection::vec(any::<u8>(), 0..64)) {
                for kind in [TYPE_AUDIO, TYPE_PING] {
                    let mut bytes = vec![kind];
                    bytes.extend(&tail);
                    let _ = decode(&bytes, Direction::ToClient);
                }
            }
        }
    }
}

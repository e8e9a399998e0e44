//! The Mumble control channel (TLS framing, protobuf messages, the server
//! state they build) and the UDP voice channel (OCB2 decryption, legacy and
//! protobuf voice packets).

use bytes::BytesMut;
use prost::Message;
use walkie_mumble::crypt::CryptState;
use walkie_mumble::proto::{self, MessageType, MumbleVersion};
use walkie_mumble::state::ServerState;
use walkie_mumble::tcp::{Decoded, FrameDecoder};
use walkie_mumble::voice::{Direction, VoicePacket};
use walkie_mumble::{ChannelId, VoiceFormat};

/// Both voice formats, both directions, and a re-encode that must read back
/// the same: what arrives through the tunnel or out of a decrypted datagram.
fn voice(data: &[u8]) {
    for format in [VoiceFormat::Legacy, VoiceFormat::Protobuf] {
        for direction in [Direction::ToClient, Direction::ToServer] {
            let Ok(packet) = format.decode(data, direction) else {
                continue;
            };
            if let VoicePacket::Audio(audio) = &packet {
                // Only payloads the encoder can describe round-trip (longer ones
                // are refused before encoding by the connection).
                if audio.opus.len() > walkie_mumble::voice::MAX_OPUS {
                    continue;
                }
                let again = format
                    .decode(&format.to_vec(&packet), direction)
                    .expect("re-encoded voice packet does not decode");
                let VoicePacket::Audio(back) = again else {
                    panic!("audio packet re-encoded as a ping");
                };
                assert_eq!(back.opus, audio.opus);
                assert_eq!(back.seq, audio.seq);
                assert_eq!(back.session, audio.session);
                assert_eq!(back.terminator, audio.terminator);
            }
        }
    }
}

/// Decodes one control message as the connection's actor does and applies it
/// to the server state.
fn control(state: &mut ServerState, kind: u16, payload: bytes::Bytes) {
    let Some(kind) = MessageType::from_u16(kind) else {
        return;
    };
    match kind {
        MessageType::UdpTunnel => voice(&payload),
        MessageType::Version => {
            if let Ok(v) = proto::Version::decode(payload) {
                let _ = MumbleVersion::of(&v).map(|v| VoiceFormat::negotiate(Some(v)));
                let _ = proto::server_version(&v);
            }
        }
        MessageType::Reject => {
            if let Ok(r) = proto::Reject::decode(payload) {
                let _ = r.kind_name();
            }
        }
        MessageType::ServerSync => {
            let _ = proto::ServerSync::decode(payload);
        }
        MessageType::ChannelState => {
            if let Ok(m) = proto::ChannelState::decode(payload) {
                state.apply_channel_state(&m);
            }
        }
        MessageType::ChannelRemove => {
            if let Ok(m) = proto::ChannelRemove::decode(payload) {
                state.apply_channel_remove(&m);
            }
        }
        MessageType::UserState => {
            if let Ok(m) = proto::UserState::decode(payload) {
                if let Some(change) = state.apply_user_state(&m) {
                    let channel = match change {
                        walkie_mumble::state::UserChange::Joined(u)
                        | walkie_mumble::state::UserChange::Left(u) => u.channel,
                        walkie_mumble::state::UserChange::Moved { user, .. } => user.channel,
                    };
                    let _ = state.channel_path(channel);
                }
            }
        }
        MessageType::UserRemove => {
            if let Ok(m) = proto::UserRemove::decode(payload) {
                state.apply_user_remove(&m);
            }
        }
        MessageType::TextMessage => {
            let _ = proto::TextMessage::decode(payload);
        }
        MessageType::PermissionDenied => {
            if let Ok(m) = proto::PermissionDenied::decode(payload) {
                let _ = m.describe();
            }
        }
        MessageType::CryptSetup => {
            if let Ok(m) = proto::CryptSetup::decode(payload) {
                // Only 16-byte key and nonces make a crypt state.
                let block =
                    |v: &Option<Vec<u8>>| v.as_deref().and_then(|b| <[u8; 16]>::try_from(b).ok());
                if let (Some(key), Some(c), Some(s)) = (
                    block(&m.key),
                    block(&m.client_nonce),
                    block(&m.server_nonce),
                ) {
                    let mut crypt = CryptState::new(key, c, s);
                    let datagram = crypt.encrypt(b"x");
                    let _ = crypt.decrypt(&datagram);
                }
            }
        }
        MessageType::CodecVersion => {
            let _ = proto::CodecVersion::decode(payload);
        }
        MessageType::ServerConfig => {
            let _ = proto::ServerConfig::decode(payload);
        }
        _ => {}
    }
}

/// Target `mumble_control`: bytes from the server's TLS stream, cut into
/// reads at a place the input chooses, through the frame decoder into the
/// message handlers, then the lookups the endpoint makes on the state.
pub fn mumble_control(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    // Small limit, so that both the oversized-frame path and real frames are reachable.
    let mut decoder = FrameDecoder::new(4096);
    let mut state = ServerState::default();
    let cut = usize::from(cut).min(stream.len());
    let mut buf = BytesMut::new();
    let mut consumed = 0usize;
    for part in [&stream[..cut], &stream[cut..]] {
        buf.extend_from_slice(part);
        while let Some(item) = decoder.decode(&mut buf) {
            match item {
                Decoded::Frame(frame) => {
                    consumed += 6 + frame.payload.len();
                    control(&mut state, frame.kind, frame.payload);
                }
                Decoded::Oversized { len, .. } => {
                    assert!(len > 4096);
                    consumed += 6;
                }
            }
        }
        // A partial frame never holds more than one frame's worth of memory.
        assert!(buf.capacity() <= 2 * 4096 + 64 + data.len());
    }
    assert!(consumed <= stream.len());
    let _ = state.resolve_channel("Root/Ops");
    let _ = state.resolve_channel("Ops");
    for user in state.users() {
        let _ = state.channel_path(user.channel);
    }
    let _ = state.channel_path(ChannelId::ROOT);
}

const KEY: [u8; 16] = *b"walkie-fuzz-key!";
const CLIENT_NONCE: [u8; 16] = [0x11; 16];
const SERVER_NONCE: [u8; 16] = [0x22; 16];

/// What the receiver of `plain` decrypts. Not always `plain`: OCB2's
/// countermeasure against the eprint 2019/311 forgery (in murmurd and in
/// `crypt.rs`) flips the lowest bit of the second-to-last block when that
/// block is all zero but its last byte — digital silence does that — rather
/// than refuse to send it.
fn as_received(plain: &[u8]) -> Vec<u8> {
    let mut out = plain.to_vec();
    if plain.len() > 16 {
        let last = (plain.len() - 1) % 16 + 1;
        let start = plain.len() - last - 16;
        if plain[start..start + 15].iter().all(|&b| b == 0) {
            out[start] ^= 1;
        }
    }
    out
}

/// Target `mumble_udp`: a script of datagrams from the server. Each step is
/// `op, len, bytes[len]`:
/// - op 0: the server encrypts the bytes and we receive the datagram at once;
/// - op 1: the bytes arrive as a raw datagram (forgeries, garbage);
/// - op 2: the server encrypts the bytes but the datagram is held back;
/// - op 3: a held-back datagram arrives (late, reordered or replayed);
/// - op 4: the server sends `len` datagrams that are lost.
///
/// Whatever decrypts must be exactly what the server encrypted, and goes on
/// to the voice packet decoders.
pub fn mumble_udp(data: &[u8]) {
    let mut server = CryptState::new(KEY, SERVER_NONCE, CLIENT_NONCE);
    let mut client = CryptState::new(KEY, CLIENT_NONCE, SERVER_NONCE);
    let mut held: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (bytes, tail) = tail.split_at(len);
        rest = tail;
        let (datagram, expected) = match op % 5 {
            0 => (server.encrypt(bytes), Some(as_received(bytes))),
            1 => (bytes.to_vec(), None),
            2 => {
                held.push((server.encrypt(bytes), as_received(bytes)));
                continue;
            }
            3 => match held.get(len % held.len().max(1)) {
                Some((d, p)) => (d.clone(), Some(p.clone())),
                None => continue,
            },
            _ => {
                for _ in 0..len {
                    server.encrypt(b"");
                }
                continue;
            }
        };
        if let Ok(plain) = client.decrypt(&datagram) {
            // Garbage (op 1) carries no expectation: a forgery passing the 24-bit
            // tag is possible in principle, and decoding it must still be safe.
            if let Some(p) = &expected {
                assert_eq!(&plain, p, "decrypted something else than was sent");
            }
            voice(&plain);
        }
    }
}

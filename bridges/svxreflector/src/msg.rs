//! TCP and UDP messages (docs/protocols/svxreflector.md §1–§3): TCP frames are a
//! u32 big-endian payload length, then a u16 type and the fields; UDP datagrams a
//! u16 type, u16 client id and u16 sequence number, then the fields. Integers are
//! big-endian; strings and vectors carry a u16 count.

use hmac::{Hmac, Mac};

/// Bytes of the reflector's login challenge and of the node's digest.
pub const CHALLENGE_LEN: usize = 20;
/// The largest TCP frame payload before login (the reflector drops the
/// connection for a larger one) and after.
pub const MAX_PREAUTH_FRAME: usize = 64;
pub const MAX_POSTAUTH_FRAME: usize = 16_384;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message ends early ({0} bytes short)")]
    Truncated(usize),
    #[error("a string is not UTF-8")]
    NotUtf8,
    #[error("the login challenge is {0} bytes, not 20")]
    BadChallenge(usize),
}

/// The TCP messages a node sends or receives. `Unknown` keeps any other type
/// (both sides ignore what they do not know).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpMsg {
    Heartbeat,
    ProtoVer {
        major: u16,
        minor: u16,
    },
    ProtoVerDowngrade {
        major: u16,
        minor: u16,
    },
    AuthChallenge {
        challenge: [u8; CHALLENGE_LEN],
    },
    AuthResponse {
        callsign: String,
        digest: Vec<u8>,
    },
    AuthOk,
    Error {
        message: String,
    },
    /// `client_id` read as the 19.09 u32 (the 24.02 reserved u16 + u16 id reads
    /// the same for ids below 65536).
    ServerInfo {
        client_id: u32,
        nodes: Vec<String>,
        codecs: Vec<String>,
    },
    NodeJoined {
        callsign: String,
    },
    NodeLeft {
        callsign: String,
    },
    /// `tg` is `None` from a protocol-1 reflector (or for a protocol-1 node).
    TalkerStart {
        tg: Option<u32>,
        callsign: String,
    },
    TalkerStop {
        tg: Option<u32>,
        callsign: String,
    },
    SelectTg {
        tg: u32,
    },
    TgMonitor {
        tgs: Vec<u32>,
    },
    Unknown {
        kind: u16,
        body: Vec<u8>,
    },
}

impl TcpMsg {
    /// The whole frame, length prefix included.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        match self {
            TcpMsg::Heartbeat => w.u16(1),
            TcpMsg::ProtoVer { major, minor } => {
                w.u16(5);
                w.u16(*major);
                w.u16(*minor);
            }
            TcpMsg::ProtoVerDowngrade { major, minor } => {
                w.u16(6);
                w.u16(*major);
                w.u16(*minor);
            }
            TcpMsg::AuthChallenge { challenge } => {
                w.u16(10);
                w.bytes(challenge);
            }
            TcpMsg::AuthResponse { callsign, digest } => {
                w.u16(11);
                w.string(callsign);
                w.bytes(digest);
            }
            TcpMsg::AuthOk => w.u16(12),
            TcpMsg::Error { message } => {
                w.u16(13);
                w.string(message);
            }
            TcpMsg::ServerInfo {
                client_id,
                nodes,
                codecs,
            } => {
                w.u16(100);
                w.u32(*client_id);
                w.strings(nodes);
                w.strings(codecs);
            }
            TcpMsg::NodeJoined { callsign } => {
                w.u16(102);
                w.string(callsign);
            }
            TcpMsg::NodeLeft { callsign } => {
                w.u16(103);
                w.string(callsign);
            }
            TcpMsg::TalkerStart { tg, callsign } | TcpMsg::TalkerStop { tg, callsign } => {
                w.u16(if matches!(self, TcpMsg::TalkerStart { .. }) {
                    104
                } else {
                    105
                });
                if let Some(tg) = tg {
                    w.u32(*tg);
                }
                w.string(callsign);
            }
            TcpMsg::SelectTg { tg } => {
                w.u16(106);
                w.u32(*tg);
            }
            TcpMsg::TgMonitor { tgs } => {
                w.u16(107);
                let mut sorted = tgs.clone();
                sorted.sort_unstable();
                sorted.dedup();
                w.u16(sorted.len() as u16);
                for tg in sorted {
                    w.u32(tg);
                }
            }
            TcpMsg::Unknown { kind, body } => {
                w.u16(*kind);
                w.0.extend_from_slice(body);
            }
        }
        let mut frame = (w.0.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&w.0);
        frame
    }

    /// A frame's payload (after the length). `v2` says whether talker messages
    /// carry a talkgroup (a protocol-2 session).
    pub fn decode(payload: &[u8], v2: bool) -> Result<TcpMsg, DecodeError> {
        let mut r = Reader(payload);
        let kind = r.u16()?;
        Ok(match kind {
            1 => TcpMsg::Heartbeat,
            5 => TcpMsg::ProtoVer {
                major: r.u16()?,
                minor: r.u16()?,
            },
            6 => TcpMsg::ProtoVerDowngrade {
                major: r.u16()?,
                minor: r.u16()?,
            },
            10 => {
                let bytes = r.bytes()?;
                let challenge = <[u8; CHALLENGE_LEN]>::try_from(bytes)
                    .map_err(|_| DecodeError::BadChallenge(bytes.len()))?;
                TcpMsg::AuthChallenge { challenge }
            }
            11 => TcpMsg::AuthResponse {
                callsign: r.string()?,
                digest: r.bytes()?.to_vec(),
            },
            12 => TcpMsg::AuthOk,
            13 => TcpMsg::Error {
                message: r.string()?,
            },
            100 => TcpMsg::ServerInfo {
                client_id: r.u32()?,
                nodes: r.strings()?,
                codecs: r.strings()?,
            },
            102 => TcpMsg::NodeJoined {
                callsign: r.string()?,
            },
            103 => TcpMsg::NodeLeft {
                callsign: r.string()?,
            },
            104 | 105 => {
                let tg = if v2 { Some(r.u32()?) } else { None };
                let callsign = r.string()?;
                if kind == 104 {
                    TcpMsg::TalkerStart { tg, callsign }
                } else {
                    TcpMsg::TalkerStop { tg, callsign }
                }
            }
            106 => TcpMsg::SelectTg { tg: r.u32()? },
            107 => {
                let n = r.u16()?;
                let tgs = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
                TcpMsg::TgMonitor { tgs }
            }
            kind => TcpMsg::Unknown {
                kind,
                body: r.0.to_vec(),
            },
        })
    }
}

/// The UDP messages: header (type, client id, sequence) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpMsg {
    Heartbeat,
    /// One encoded audio packet (Opus, 16 kHz, 20 ms, as the reflector says).
    Audio(Vec<u8>),
    /// End of the talker's audio stream.
    FlushSamples,
    /// All audio has been played out.
    AllSamplesFlushed,
    Unknown {
        kind: u16,
        body: Vec<u8>,
    },
}

impl UdpMsg {
    pub fn to_datagram(&self, client_id: u16, seq: u16) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        let kind = match self {
            UdpMsg::Heartbeat => 1,
            UdpMsg::Audio(_) => 101,
            UdpMsg::FlushSamples => 102,
            UdpMsg::AllSamplesFlushed => 103,
            UdpMsg::Unknown { kind, .. } => *kind,
        };
        w.u16(kind);
        w.u16(client_id);
        w.u16(seq);
        match self {
            UdpMsg::Audio(audio) => w.bytes(audio),
            UdpMsg::Unknown { body, .. } => w.0.extend_from_slice(body),
            _ => {}
        }
        w.0
    }

    /// (client id, sequence number, message).
    pub fn decode(datagram: &[u8]) -> Result<(u16, u16, UdpMsg), DecodeError> {
        let mut r = Reader(datagram);
        let kind = r.u16()?;
        let client_id = r.u16()?;
        let seq = r.u16()?;
        let msg = match kind {
            1 => UdpMsg::Heartbeat,
            101 => UdpMsg::Audio(r.bytes()?.to_vec()),
            102 => UdpMsg::FlushSamples,
            103 => UdpMsg::AllSamplesFlushed,
            kind => UdpMsg::Unknown {
                kind,
                body: r.0.to_vec(),
            },
        };
        Ok((client_id, seq, msg))
    }
}

/// The node's answer to the login challenge: HMAC-SHA1 of the challenge under the
/// shared key (the `[PASSWORDS]` entry of the node's `[USERS]` group).
pub fn auth_digest(key: &str, challenge: &[u8; CHALLENGE_LEN]) -> Vec<u8> {
    // HMAC accepts a key of any length: this cannot fail.
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(challenge);
    mac.finalize().into_bytes().to_vec()
}

struct Writer(Vec<u8>);

impl Writer {
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u16(v.len() as u16);
        self.0.extend_from_slice(v);
    }
    fn string(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    fn strings(&mut self, v: &[String]) {
        self.u16(v.len() as u16);
        for s in v {
            self.string(s);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated(n - self.0.len()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError::NotUtf8)
    }
    fn strings(&mut self) -> Result<Vec<String>, DecodeError> {
        let n = self.u16()?;
        (0..n).map(|_| self.string()).collect()
    }
}

#[cfg(test)]
mod tests {
    //! The worked examples of docs/protocols/svxreflector.md §8.
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect("hex"))
            .collect()
    }

    fn nonce() -> [u8; CHALLENGE_LEN] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn frames_match_the_documents_bytes() {
        assert_eq!(
            TcpMsg::ProtoVer { major: 2, minor: 0 }.to_frame(),
            hex("00 00 00 06 00 05 00 02 00 00")
        );
        assert_eq!(TcpMsg::Heartbeat.to_frame(), hex("00 00 00 02 00 01"));
        let challenge = TcpMsg::AuthChallenge { challenge: nonce() }.to_frame();
        assert_eq!(
            challenge,
            hex("00 00 00 18 00 0a 00 14 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 10 11 12 13")
        );
        assert_eq!(
            TcpMsg::decode(&challenge[4..], true),
            Ok(TcpMsg::AuthChallenge { challenge: nonce() })
        );
        let digest = auth_digest("A strong password", &nonce());
        assert_eq!(
            digest,
            hex("59 55 87 8c 2c dd 51 16 20 83 08 98 f5 fa 47 5d 5b 27 05 55")
        );
        let response = TcpMsg::AuthResponse {
            callsign: "SM0ABC-1".into(),
            digest,
        }
        .to_frame();
        assert_eq!(
            response,
            hex("00 00 00 22 00 0b 00 08 53 4d 30 41 42 43 2d 31 00 14 59 55 87 8c 2c dd 51 16 20 83 08 98 f5 fa 47 5d 5b 27 05 55")
        );
        assert!(response.len() - 4 <= MAX_PREAUTH_FRAME);
        let info =
            hex("00 64 00 00 12 34 00 01 00 08 53 4d 30 41 42 43 2d 31 00 01 00 04 4f 50 55 53");
        assert_eq!(
            TcpMsg::decode(&info, true),
            Ok(TcpMsg::ServerInfo {
                client_id: 0x1234,
                nodes: vec!["SM0ABC-1".into()],
                codecs: vec!["OPUS".into()],
            })
        );
        assert_eq!(
            TcpMsg::SelectTg { tg: 91 }.to_frame(),
            hex("00 00 00 06 00 6a 00 00 00 5b")
        );
        assert_eq!(
            TcpMsg::TgMonitor {
                tgs: vec![91, 1, 91]
            }
            .to_frame(),
            hex("00 00 00 0c 00 6b 00 02 00 00 00 01 00 00 00 5b")
        );
    }

    #[test]
    fn talker_messages_carry_a_talkgroup_only_in_protocol_2() {
        let v2 = hex("00 68 00 00 00 5b 00 08 53 4d 30 41 42 43 2d 31");
        let v1 = hex("00 68 00 08 53 4d 30 41 42 43 2d 31");
        let start = |tg| TcpMsg::TalkerStart {
            tg,
            callsign: "SM0ABC-1".into(),
        };
        assert_eq!(TcpMsg::decode(&v2, true), Ok(start(Some(91))));
        assert_eq!(TcpMsg::decode(&v1, false), Ok(start(None)));
        assert_eq!(start(Some(91)).to_frame()[4..], v2[..]);
    }

    #[test]
    fn udp_datagrams_match_the_documents_bytes() {
        assert_eq!(
            UdpMsg::Heartbeat.to_datagram(0x1234, 0),
            hex("00 01 12 34 00 00")
        );
        let audio = UdpMsg::Audio(vec![0xaa, 0xbb, 0xcc]);
        let bytes = audio.to_datagram(0x1234, 7);
        assert_eq!(bytes, hex("00 65 12 34 00 07 00 03 aa bb cc"));
        assert_eq!(UdpMsg::decode(&bytes), Ok((0x1234, 7, audio)));
        assert_eq!(
            UdpMsg::FlushSamples.to_datagram(0x1234, 8),
            hex("00 66 12 34 00 08")
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert_eq!(TcpMsg::decode(&[], true), Err(DecodeError::Truncated(2)));
        assert_eq!(
            TcpMsg::decode(&hex("00 0a 00 03 01 02 03"), true),
            Err(DecodeError::BadChallenge(3))
        );
        assert!(matches!(
            TcpMsg::decode(&hex("00 64 00 00 12"), true),
            Err(DecodeError::Truncated(_))
        ));
        assert!(matches!(
            TcpMsg::decode(&hex("00 0d 00 02 ff fe"), true),
            Err(DecodeError::NotUtf8)
        ));
        assert!(matches!(
            UdpMsg::decode(&hex("00 65 12")),
            Err(DecodeError::Truncated(_))
        ));
        assert_eq!(
            TcpMsg::decode(&hex("01 f4 01 02"), true),
            Ok(TcpMsg::Unknown {
                kind: 500,
                body: vec![1, 2]
            })
        );
    }
}

//! Framing of the TLS control channel: `type: u16 BE | length: u32 BE | payload`.
//! The payload is a protobuf message, except for type 1 (UDPTunnel) whose
//! payload is a raw voice packet.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const HEADER: usize = 6;
/// Larger frames are skipped. murmurd's biggest legitimate messages are user
/// textures and comments (128 KiB by default) and blobs; 8 MiB leaves ample
/// room while keeping one bad length field from making us buffer gigabytes.
pub const DEFAULT_MAX_FRAME: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u16,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Frame(Frame),
    /// A frame longer than the limit: its bytes are being discarded, so the
    /// stream stays in step without buffering them.
    Oversized {
        kind: u16,
        len: usize,
    },
}

/// Incremental decoder over a read buffer; feed it whatever the socket gave.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame: usize,
    /// Bytes of an oversized frame still to throw away.
    discard: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder {
            max_frame,
            discard: 0,
        }
    }

    /// The next complete item in `buf`, consuming it; `None` until more bytes
    /// arrive.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Decoded> {
        if self.discard > 0 {
            let n = self.discard.min(buf.len());
            buf.advance(n);
            self.discard -= n;
            if self.discard > 0 {
                return None;
            }
        }
        let header = buf.first_chunk::<HEADER>()?;
        let kind = u16::from_be_bytes([header[0], header[1]]);
        let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        if len > self.max_frame {
            buf.advance(HEADER);
            self.discard = len;
            return Some(Decoded::Oversized { kind, len });
        }
        if buf.len() < HEADER + len {
            // Reserve once for the whole frame instead of growing in steps.
            buf.reserve(HEADER + len - buf.len());
            return None;
        }
        buf.advance(HEADER);
        let payload = buf.split_to(len).freeze();
        Some(Decoded::Frame(Frame { kind, payload }))
    }
}

pub fn encode(kind: u16, payload: &[u8], out: &mut BytesMut) {
    out.reserve(HEADER + payload.len());
    out.put_u16(kind);
    // Our own messages are small; a payload over 4 GiB cannot be produced.
    out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    out.put_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode(kind, payload, &mut b);
        b.to_vec()
    }

    #[test]
    fn header_layout() {
        assert_eq!(frame(3, &[0xAA]), [0, 3, 0, 0, 0, 1, 0xAA]);
        assert_eq!(frame(0x0102, &[]), [1, 2, 0, 0, 0, 0]);
    }

    #[test]
    fn several_frames_in_one_read() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&frame(7, b"abc"));
        buf.extend_from_slice(&frame(9, b""));
        buf.extend_from_slice(&frame(11, b"de")[..4]);
        let mut d = FrameDecoder::default();
        assert_eq!(
            d.decode(&mut buf),
            Some(Decoded::Frame(Frame {
                kind: 7,
                payload: Bytes::from_static(b"abc")
            }))
        );
        assert_eq!(
            d.decode(&mut buf),
            Some(Decoded::Frame(Frame {
                kind: 9,
                payload: Bytes::new()
            }))
        );
        assert_eq!(d.decode(&mut buf), None);
        buf.extend_from_slice(&frame(11, b"de")[4..]);
        assert_eq!(
            d.decode(&mut buf),
            Some(Decoded::Frame(Frame {
                kind: 11,
                payload: Bytes::from_static(b"de")
            }))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn split_at_every_byte() {
        let bytes = [frame(5, b"hello"), frame(1, &[0x80, 1, 2])].concat();
        for cut in 0..=bytes.len() {
            let mut d = FrameDecoder::default();
            let mut buf = BytesMut::from(&bytes[..cut]);
            let mut got = Vec::new();
            while let Some(x) = d.decode(&mut buf) {
                got.push(x);
            }
            buf.extend_from_slice(&bytes[cut..]);
            while let Some(x) = d.decode(&mut buf) {
                got.push(x);
            }
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(
                got[1],
                Decoded::Frame(Frame {
                    kind: 1,
                    payload: Bytes::from_static(&[0x80, 1, 2])
                })
            );
        }
    }

    #[test]
    fn oversized_frame_is_skipped_and_stream_stays_in_step() {
        let mut d = FrameDecoder::new(4);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&frame(7, b"too long!"));
        buf.extend_from_slice(&frame(3, b"ok"));
        // Deliver in dribs to exercise the discard state across reads.
        let all = buf.split();
        let mut got = Vec::new();
        for chunk in all.chunks(3) {
            buf.extend_from_slice(chunk);
            while let Some(x) = d.decode(&mut buf) {
                got.push(x);
            }
        }
        assert_eq!(
            got,
            [
                Decoded::Oversized { kind: 7, len: 9 },
                Decoded::Frame(Frame {
                    kind: 3,
                    payload: Bytes::from_static(b"ok")
                })
            ]
        );
    }

    #[test]
    fn huge_length_does_not_allocate() {
        let mut d = FrameDecoder::default();
        let mut buf = BytesMut::from(&[0u8, 1, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2][..]);
        assert_eq!(
            d.decode(&mut buf),
            Some(Decoded::Oversized {
                kind: 1,
                len: u32::MAX as usize
            })
        );
        assert_eq!(d.decode(&mut buf), None);
        assert!(buf.capacity() < 1024);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..10)) {
                let mut d = FrameDecoder::new(64);
                let mut buf = BytesMut::new();
                for c in chunks {
                    buf.extend_from_slice(&c);
                    while d.decode(&mut buf).is_some() {}
                }
            }

            #[test]
            fn round_trip(frames in proptest::collection::vec((any::<u16>(), proptest::collection::vec(any::<u8>(), 0..100)), 0..10), cut in 1usize..50) {
                let mut bytes = BytesMut::new();
                for (k, p) in &frames {
                    encode(*k, p, &mut bytes);
                }
                let mut d = FrameDecoder::default();
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                for c in bytes.chunks(cut) {
                    buf.extend_from_slice(c);
                    while let Some(Decoded::Frame(f)) = d.decode(&mut buf) {
                        got.push((f.kind, f.payload.to_vec()));
                    }
                }
                prop_assert_eq!(got, frames);
            }
        }
    }
}

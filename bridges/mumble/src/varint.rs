//! Mumble's variable-length integer (not protobuf's): a length prefix in the
//! leading bits of the first byte, then the value big-endian.
//!
//! | first byte  | extra bytes | value                          |
//! |-------------|-------------|--------------------------------|
//! | `0xxxxxxx`  | 0           | 7 bits                         |
//! | `10xxxxxx`  | 1           | 14 bits                        |
//! | `110xxxxx`  | 2           | 21 bits                        |
//! | `1110xxxx`  | 3           | 28 bits                        |
//! | `111100__`  | 4           | 32 bits                        |
//! | `111101__`  | 8           | 64 bits                        |
//! | `111110__`  | varint      | bitwise NOT of the inner value |
//! | `111111xx`  | 0           | `!xx` (-1 ..= -4)              |
//!
//! Negative numbers are the two's complement `u64`; only the encoder of
//! `i64`-like values produces the two negative forms.

use crate::error::DecodeError;

/// Appends `value` in the shortest form Mumble's own encoder would choose.
pub fn write(out: &mut Vec<u8>, value: u64) {
    let mut v = value;
    // Mirrors PacketDataStream: a "small negative" (!v < 2^32) gets the
    // negative prefix so that e.g. -1 costs one byte instead of nine.
    if v & 0x8000_0000_0000_0000 != 0 && !v < 0x1_0000_0000 {
        v = !v;
        if v <= 0x3 {
            out.push(0xFC | v as u8);
            return;
        }
        out.push(0xF8);
    }
    if v < 0x80 {
        out.push(v as u8);
    } else if v < 0x4000 {
        out.extend_from_slice(&[0x80 | (v >> 8) as u8, v as u8]);
    } else if v < 0x20_0000 {
        out.extend_from_slice(&[0xC0 | (v >> 16) as u8, (v >> 8) as u8, v as u8]);
    } else if v < 0x1000_0000 {
        out.extend_from_slice(&[
            0xE0 | (v >> 24) as u8,
            (v >> 16) as u8,
            (v >> 8) as u8,
            v as u8,
        ]);
    } else if v < 0x1_0000_0000 {
        out.push(0xF0);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xF4);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Encoded length of `value`, without allocating.
pub fn encoded_len(value: u64) -> usize {
    let mut scratch = Vec::with_capacity(10);
    write(&mut scratch, value);
    scratch.len()
}

/// Reads one varint from the front of `buf` and advances it.
pub fn read(buf: &mut &[u8]) -> Result<u64, DecodeError> {
    read_inner(buf, true)
}

fn take<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], DecodeError> {
    let (head, rest) = buf.split_first_chunk::<N>().ok_or(DecodeError::Truncated)?;
    *buf = rest;
    Ok(*head)
}

fn read_inner(buf: &mut &[u8], allow_negative: bool) -> Result<u64, DecodeError> {
    let [b] = take::<1>(buf)?;
    let v = u64::from(b);
    if b & 0x80 == 0 {
        Ok(v & 0x7F)
    } else if b & 0xC0 == 0x80 {
        let [x] = take::<1>(buf)?;
        Ok((v & 0x3F) << 8 | u64::from(x))
    } else if b & 0xE0 == 0xC0 {
        let [x, y] = take::<2>(buf)?;
        Ok((v & 0x1F) << 16 | u64::from(x) << 8 | u64::from(y))
    } else if b & 0xF0 == 0xE0 {
        let [x, y, z] = take::<3>(buf)?;
        Ok((v & 0x0F) << 24 | u64::from(x) << 16 | u64::from(y) << 8 | u64::from(z))
    } else {
        match b & 0xFC {
            0xF0 => Ok(u64::from(u32::from_be_bytes(take::<4>(buf)?))),
            0xF4 => Ok(u64::from_be_bytes(take::<8>(buf)?)),
            // One level of negation only: a chain of 0xF8 bytes means nothing
            // Mumble ever sends and would otherwise recurse once per byte.
            0xF8 if allow_negative => Ok(!read_inner(buf, false)?),
            0xFC => Ok(!(v & 0x03)),
            _ => Err(DecodeError::BadVarint(b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, v);
        out
    }

    fn dec(bytes: &[u8]) -> Result<u64, DecodeError> {
        let mut b = bytes;
        let v = read(&mut b)?;
        assert!(b.is_empty(), "{bytes:02x?} left {b:02x?}");
        Ok(v)
    }

    #[test]
    fn known_encodings() {
        let cases: &[(u64, &[u8])] = &[
            (0, &[0x00]),
            (0x7F, &[0x7F]),
            (0x80, &[0x80, 0x80]),
            (0x3FFF, &[0xBF, 0xFF]),
            (0x4000, &[0xC0, 0x40, 0x00]),
            (0x1F_FFFF, &[0xDF, 0xFF, 0xFF]),
            (0x20_0000, &[0xE0, 0x20, 0x00, 0x00]),
            (0x0FFF_FFFF, &[0xEF, 0xFF, 0xFF, 0xFF]),
            (0x1000_0000, &[0xF0, 0x10, 0x00, 0x00, 0x00]),
            (0xFFFF_FFFF, &[0xF0, 0xFF, 0xFF, 0xFF, 0xFF]),
            (0x1_0000_0000, &[0xF4, 0, 0, 0, 0x01, 0, 0, 0, 0]),
            (u64::MAX, &[0xFC]), // -1
            (-4i64 as u64, &[0xFF]),
            (-5i64 as u64, &[0xF8, 0x04]),
            (-200i64 as u64, &[0xF8, 0x80, 0xC7]),
            // Below -2^32 the negative form no longer pays off.
            (
                -(1i64 << 33) as u64,
                &[0xF4, 0xFF, 0xFF, 0xFF, 0xFE, 0, 0, 0, 0],
            ),
        ];
        for &(value, bytes) in cases {
            assert_eq!(enc(value), bytes, "encoding {value:#x}");
            assert_eq!(dec(bytes), Ok(value), "decoding {bytes:02x?}");
            assert_eq!(encoded_len(value), bytes.len());
        }
    }

    #[test]
    fn accepts_non_minimal_forms() {
        // Other encoders may use a longer form than needed; the value is what counts.
        assert_eq!(dec(&[0x80, 0x05]), Ok(5));
        assert_eq!(dec(&[0xF0, 0, 0, 0, 5]), Ok(5));
    }

    #[test]
    fn truncated_and_invalid() {
        assert_eq!(dec(&[]), Err(DecodeError::Truncated));
        assert_eq!(dec(&[0x80]), Err(DecodeError::Truncated));
        assert_eq!(dec(&[0xC0, 1]), Err(DecodeError::Truncated));
        assert_eq!(dec(&[0xE0, 1, 2]), Err(DecodeError::Truncated));
        assert_eq!(dec(&[0xF0, 1, 2, 3]), Err(DecodeError::Truncated));
        assert_eq!(
            dec(&[0xF4, 1, 2, 3, 4, 5, 6, 7]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(dec(&[0xF8]), Err(DecodeError::Truncated));
        assert_eq!(dec(&[0xF8, 0xF8, 0x01]), Err(DecodeError::BadVarint(0xF8)));
    }

    #[test]
    fn round_trip_boundaries() {
        for shift in 0..64 {
            for delta in [-1i64, 0, 1] {
                let v = (1u64 << shift).wrapping_add(delta as u64);
                assert_eq!(dec(&enc(v)), Ok(v), "{v:#x}");
                assert_eq!(dec(&enc(!v)), Ok(!v), "{:#x}", !v);
            }
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn round_trip(v in any::<u64>()) {
                prop_assert_eq!(dec(&enc(v)), Ok(v));
            }

            #[test]
            fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
                let mut b = bytes.as_slice();
                let before = b.len();
                if read(&mut b).is_ok() {
                    prop_assert!(b.len() < before);
                }
            }
        }
    }
}

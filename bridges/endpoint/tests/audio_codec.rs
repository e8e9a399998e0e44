//! Opus encode/decode on real speech, frame helpers and bad input.

mod common;

use common::{best_lag, energy_db, speech};
use walkie_endpoint::audio::{
    frames_of, packet_samples, AudioError, OpusDecoder, OpusEncoder, DEFAULT_BITRATE, FRAME_MS,
    FRAME_SAMPLES, SAMPLE_RATE,
};

fn round_trip(pcm: &[i16], bitrate: i32) -> (Vec<Vec<u8>>, Vec<i16>, u16) {
    let mut enc = OpusEncoder::with_bitrate(bitrate).expect("encoder");
    let mut dec = OpusDecoder::new().expect("decoder");
    let mut packets = Vec::new();
    let mut out = Vec::new();
    for frame in frames_of(pcm) {
        let packet = enc.encode(&frame).expect("encode");
        out.extend(dec.decode(&packet).expect("decode"));
        packets.push(packet.to_vec());
    }
    (packets, out, enc.lookahead())
}

#[test]
fn constants_describe_20ms_frames_at_48k() {
    assert_eq!(SAMPLE_RATE, 48_000);
    assert_eq!(FRAME_SAMPLES, 960);
    assert_eq!(FRAME_MS, 20);
    assert_eq!(DEFAULT_BITRATE, 24_000);
}

#[test]
fn speech_survives_opus_round_trip() {
    let src = speech(48_000);
    let (packets, out, lookahead) = round_trip(&src, DEFAULT_BITRATE);
    let frames = src.len().div_ceil(FRAME_SAMPLES);
    assert_eq!(packets.len(), frames);
    assert_eq!(
        out.len(),
        frames * FRAME_SAMPLES,
        "duration must be frames × 20 ms"
    );

    let (lag, corr) = best_lag(&src, &out, 0..=2_000);
    let e_src = energy_db(&src);
    let e_out = energy_db(&out[lag as usize..]);
    let bytes: usize = packets.iter().map(Vec::len).sum();
    let kbps = bytes as f64 * 8.0 / (frames as f64 * 0.02) / 1000.0;
    println!(
        "opus 24k: lookahead {lookahead}, best lag {lag}, correlation {corr:.4}, \
         energy src {e_src:.2} dB out {e_out:.2} dB, {kbps:.1} kbit/s"
    );
    // The waveform match sits a few samples off the nominal lookahead (SILK's
    // internal resampler has its own phase), but never far from it.
    assert!(
        (lag - lookahead as isize).abs() <= 8,
        "codec delay {lag} far from the encoder lookahead {lookahead}"
    );
    assert!(corr >= 0.90, "correlation {corr:.4} < 0.90");
    assert!(
        (e_src - e_out).abs() <= 2.0,
        "energy moved {:.2} dB",
        e_out - e_src
    );
    assert!(
        (15.0..=35.0).contains(&kbps),
        "bitrate {kbps:.1} kbit/s far from 24"
    );
}

#[test]
fn higher_bitrate_is_closer_to_the_source() {
    let src = speech(48_000);
    let (_, low, la) = round_trip(&src, 12_000);
    let (_, high, _) = round_trip(&src, 64_000);
    let around = (la as isize - 8)..=(la as isize + 8);
    let (_, c_low) = best_lag(&src, &low, around.clone());
    let (_, c_high) = best_lag(&src, &high, around);
    println!("opus correlation at 12 kbit/s {c_low:.4}, at 64 kbit/s {c_high:.4}");
    assert!(
        c_high > c_low,
        "64k ({c_high:.4}) should beat 12k ({c_low:.4})"
    );
}

#[test]
fn frames_of_pads_only_the_last_frame() {
    let pcm: Vec<i16> = (0..2_000).map(|i| i as i16).collect();
    let frames: Vec<_> = frames_of(&pcm).collect();
    assert_eq!(frames.len(), 3);
    assert!(frames.iter().all(|f| f.len() == FRAME_SAMPLES));
    assert_eq!(frames[2][..80], pcm[1_920..]);
    assert!(frames[2][80..].iter().all(|&s| s == 0));
    assert_eq!(frames_of(&[]).count(), 0);
    assert_eq!(frames_of(&pcm[..960]).count(), 1);
}

#[test]
fn one_frame_round_trips() {
    let (packets, out, _) = round_trip(&common::sine(440.0, 8_000.0, SAMPLE_RATE, 960), 24_000);
    assert_eq!(packets.len(), 1);
    assert_eq!(out.len(), FRAME_SAMPLES);
    assert_eq!(
        packet_samples(&packets[0]).expect("duration"),
        FRAME_SAMPLES
    );
}

#[test]
fn encoder_rejects_wrong_frame_sizes_and_bitrates() {
    let mut enc = OpusEncoder::new().expect("encoder");
    for len in [0, 959, 961, 1_920] {
        match enc.encode(&vec![0; len]) {
            Err(AudioError::FrameSize { expected: 960, got }) => assert_eq!(got, len),
            other => panic!("{len} samples: expected FrameSize error, got {other:?}"),
        }
    }
    assert!(matches!(
        OpusEncoder::with_bitrate(1_000),
        Err(AudioError::Bitrate(1_000))
    ));
    assert!(matches!(
        enc.set_bitrate(600_000),
        Err(AudioError::Bitrate(_))
    ));
    enc.set_bitrate(16_000).expect("valid bitrate");
    assert_eq!(enc.bitrate(), 16_000);
}

#[test]
fn lookahead_is_the_usual_312_at_48k_voip() {
    let enc = OpusEncoder::new().expect("encoder");
    assert_eq!(enc.lookahead(), 312);
}

#[test]
fn packet_duration_is_read_from_the_toc() {
    // TOC bytes (RFC 6716 §3.1): config 1 = SILK NB 20 ms; code 0 = one frame.
    assert_eq!(packet_samples(&[1 << 3, 0, 0]).expect("20 ms"), 960);
    // Config 3 = SILK NB 60 ms.
    assert_eq!(packet_samples(&[3 << 3, 0]).expect("60 ms"), 2_880);
    // Config 31 = CELT FB 20 ms, code 1 = two equal frames → 40 ms.
    assert_eq!(
        packet_samples(&[(31 << 3) | 1, 0, 0]).expect("40 ms"),
        1_920
    );
    // Code 3 with a frame count of 0 is invalid.
    assert!(packet_samples(&[(31 << 3) | 3, 0]).is_err());
    assert!(packet_samples(&[]).is_err());
    // 6 × 60 ms = 360 ms exceeds the 120 ms limit.
    assert!(packet_samples(&[(3 << 3) | 3, 6]).is_err());
}

#[test]
fn decoder_rejects_garbage_without_panicking() {
    let mut dec = OpusDecoder::new().expect("decoder");
    assert!(dec.decode(&[]).is_err(), "empty packet is not 'lost'");
    assert!(dec.decode(&[(31 << 3) | 3, 0]).is_err());
    // Code 3, CBR, 2 frames, but 1 byte of payload cannot split into two equal frames.
    assert!(dec.decode(&[(31 << 3) | 3, 2, 0xAA]).is_err());
    // Random bytes: whatever libopus makes of them, no panic, and any output is a sane length.
    let mut state = 0x1234_5678_u32;
    for len in 1..200 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        if let Ok(pcm) = dec.decode(&bytes) {
            assert!(
                pcm.len() <= 5_760 && pcm.len() % 120 == 0,
                "{} samples",
                pcm.len()
            );
        }
    }
}

#[test]
fn packet_loss_is_concealed_with_one_frame() {
    let src = speech(48_000);
    let mut enc = OpusEncoder::new().expect("encoder");
    let mut dec = OpusDecoder::new().expect("decoder");
    let mut out = Vec::new();
    for (i, frame) in frames_of(&src[..48_000]).enumerate() {
        let packet = enc.encode(&frame).expect("encode");
        if i == 25 {
            let concealed = dec.decode_lost();
            assert_eq!(concealed.len(), FRAME_SAMPLES);
            out.extend(concealed);
        } else {
            out.extend(dec.decode(&packet).expect("decode"));
        }
    }
    assert_eq!(out.len(), 48_000);
    // A fresh decoder conceals with silence-ish output, never garbage lengths.
    let mut fresh = OpusDecoder::new().expect("decoder");
    assert_eq!(fresh.decode_lost().len(), FRAME_SAMPLES);
}

//! Ogg Opus files: our writer checked by opus-tools, our reader checked
//! against our writer and against opusenc, and hostile input.

mod common;

use common::{best_lag, correlation_at, energy_db, fixtures, read_wav, speech};
use std::path::Path;
use std::process::Command;
use walkie_endpoint::audio::{
    decode_ogg_opus, encode_ogg_opus, frames_of, read_ogg_opus, AudioError, OggOpusOptions,
    OggOpusReader, OggOpusWriter, OpusEncoder, DEFAULT_BITRATE, VENDOR,
};

/// Encodes PCM the way a live transmission is archived: frame by frame, the
/// stream ended by `finish` (no end trimming).
fn write_streaming(pcm: &[i16], options: OggOpusOptions) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut enc = OpusEncoder::new().expect("encoder");
    let mut w = OggOpusWriter::with_options(Vec::new(), options).expect("writer");
    let mut packets = Vec::new();
    for frame in frames_of(pcm) {
        let p = enc.encode(&frame).expect("encode");
        w.write_packet(&p).expect("write");
        packets.push(p.to_vec());
    }
    let (bytes, stats) = w.finish().expect("finish");
    assert_eq!(stats.packets as usize, packets.len());
    (bytes, packets)
}

fn tool(cmd: &mut Command) -> String {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{program}` ({e}); install opus-tools"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`{program}` exited {}:\n{text}",
        out.status
    );
    text
}

/// opusinfo's "Playback length: 0m:05.123s", in milliseconds.
fn opusinfo_length_ms(path: &Path) -> (f64, String) {
    let text = tool(Command::new("opusinfo").arg(path));
    assert!(
        !text.contains("WARNING") && !text.contains("ERROR"),
        "opusinfo complains:\n{text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("Playback length:"))
        .unwrap_or_else(|| panic!("no playback length in:\n{text}"));
    let value = line.split("Playback length:").nth(1).expect("value").trim();
    let (min, sec) = value
        .trim_end_matches('s')
        .split_once("m:")
        .unwrap_or_else(|| panic!("unexpected length format {value:?}"));
    let ms = min.parse::<f64>().expect("minutes") * 60_000.0
        + sec.parse::<f64>().expect("seconds") * 1_000.0;
    (ms, text)
}

fn ms(samples: usize) -> f64 {
    samples as f64 / 48.0
}

#[test]
fn speech_file_passes_opusinfo_and_opusdec() {
    let src = speech(48_000);
    let lookahead = OpusEncoder::new().expect("encoder").lookahead();
    let (bytes, packets) = write_streaming(
        &src,
        OggOpusOptions {
            pre_skip: lookahead,
            serial: Some(0x5741_4c4b),
            comments: vec![("TITLE".into(), "radio check".into())],
        },
    );
    let dir = fixtures().dir();
    let path = dir.join("speech.opus");
    std::fs::write(&path, &bytes).expect("write file");

    let (info_ms, info) = opusinfo_length_ms(&path);
    println!("{info}");
    println!(
        "source {:.1} ms, opusinfo {info_ms:.1} ms, file {} bytes",
        ms(src.len()),
        bytes.len()
    );
    assert!(info.to_lowercase().contains("serial: 57414c4b"), "{info}");
    assert!(info.contains(&format!("Pre-skip: {lookahead}")), "{info}");
    assert!(info.contains("TITLE=radio check"), "{info}");
    assert!(
        (info_ms - ms(src.len())).abs() <= 20.0,
        "opusinfo {info_ms} ms"
    );

    let wav = dir.join("speech-opusdec.wav");
    tool(
        Command::new("opusdec")
            .args(["--quiet", "--rate", "48000", "--no-dither"])
            .arg(&path)
            .arg(&wav),
    );
    let (decoded, rate) = read_wav(&wav);
    assert_eq!(rate, 48_000);
    let corr = correlation_at(&src, &decoded, 0);
    let (lag, best) = best_lag(&src, &decoded, -20..=20);
    println!(
        "opusdec: {} samples ({:.1} ms), corr@0 {corr:.4}, best lag {lag} ({best:.4}), energy {:+.2} dB",
        decoded.len(),
        ms(decoded.len()),
        energy_db(&decoded) - energy_db(&src)
    );
    assert!((ms(decoded.len()) - ms(src.len())).abs() <= 20.0);
    assert!(
        lag.abs() <= 8,
        "pre-skip left opusdec output {lag} samples off"
    );
    assert!(best >= 0.9, "correlation {best:.4}");

    // Our reader gets back exactly what was written.
    let audio = read_ogg_opus(&bytes).expect("read back");
    assert_eq!(audio.packets, packets);
    assert_eq!(audio.serial, 0x5741_4c4b);
    assert_eq!(audio.head.pre_skip, lookahead);
    assert_eq!(audio.head.channels, 1);
    assert_eq!(audio.head.input_sample_rate, 48_000);
    assert_eq!(audio.tags.vendor, VENDOR);
    assert_eq!(audio.tags.comments, vec!["TITLE=radio check".to_string()]);
    println!(
        "reader: duration {} ms, final granule {}",
        audio.duration_ms, audio.final_granule
    );
    assert!((audio.duration_ms as f64 - ms(src.len())).abs() <= 20.0);
    assert!(
        (audio.duration_ms as f64 - info_ms).abs() <= 1.0,
        "reader and opusinfo disagree"
    );
}

#[test]
fn encode_ogg_opus_is_sample_exact() {
    let src = speech(48_000);
    let bytes = encode_ogg_opus(&src, DEFAULT_BITRATE).expect("encode");
    let decoded = decode_ogg_opus(&bytes).expect("decode");
    assert_eq!(
        decoded.pcm.len(),
        src.len(),
        "end trimming must restore the exact length"
    );
    let corr = correlation_at(&src, &decoded.pcm, 0);
    let (lag, best) = best_lag(&src, &decoded.pcm, -20..=20);
    println!(
        "encode_ogg_opus → decode_ogg_opus: corr@0 {corr:.4}, best lag {lag} ({best:.4}), {} packets",
        decoded.packets
    );
    // The waveform match sits a few samples from the nominal lookahead.
    assert!(lag.abs() <= 8);
    assert!(best >= 0.9, "correlation {best:.4}");
    assert_eq!(
        decoded.duration_ms,
        (src.len() as u64 * 1000 + 24_000) / 48_000
    );

    let path = fixtures().dir().join("exact.opus");
    std::fs::write(&path, &bytes).expect("write");
    let (info_ms, _) = opusinfo_length_ms(&path);
    assert!(
        (info_ms - ms(src.len())).abs() <= 1.0,
        "opusinfo {info_ms} ms vs {} ms",
        ms(src.len())
    );
}

#[test]
fn passthrough_of_opusenc_packets_keeps_them_byte_identical() {
    // Packets from another encoder, with another frame size (40 ms) and a
    // higher bitrate, as a Mumble or browser client might send.
    let dir = fixtures().dir();
    let foreign = dir.join("opusenc-40ms.opus");
    tool(
        Command::new("opusenc")
            .args(["--quiet", "--framesize", "40", "--bitrate", "96"])
            .arg(fixtures().path("speech48000.wav"))
            .arg(&foreign),
    );
    let original = read_ogg_opus(&std::fs::read(&foreign).expect("read"))
        .expect("our reader on opusenc output");
    assert!(
        original.tags.vendor.contains("libopus"),
        "{:?}",
        original.tags.vendor
    );
    let (src, _) = read_wav(&fixtures().path("speech48000.wav"));
    assert!((original.duration_ms as f64 - ms(src.len())).abs() <= 20.0);

    let mut w = OggOpusWriter::new(Vec::new(), original.head.pre_skip).expect("writer");
    for p in &original.packets {
        w.write_packet(p).expect("passthrough");
    }
    let (bytes, stats) = w.finish().expect("finish");
    assert_eq!(stats.packets as usize, original.packets.len());
    let copy = read_ogg_opus(&bytes).expect("read copy");
    assert_eq!(copy.packets, original.packets);
    // opusenc end-trims to the input length; a passthrough cannot know it, so
    // it may run up to one packet (40 ms) longer, never shorter.
    let extra = copy.duration_ms as i64 - original.duration_ms as i64;
    assert!(
        (0..=40).contains(&extra),
        "passthrough changed the duration by {extra} ms"
    );

    let path = dir.join("passthrough.opus");
    std::fs::write(&path, &bytes).expect("write");
    let (info_ms, info) = opusinfo_length_ms(&path);
    assert!(info.contains("40.0ms (max)"), "{info}");
    assert!((info_ms - copy.duration_ms as f64).abs() <= 1.0);
}

#[test]
fn large_packets_spanning_pages_round_trip() {
    // At 256 kbit/s packets exceed 255 bytes, so lacing spans segments and
    // 50-packet pages overflow the 255-segment limit mid-packet.
    let src = speech(48_000);
    let mut enc = OpusEncoder::with_bitrate(256_000).expect("encoder");
    let mut w = OggOpusWriter::new(Vec::new(), enc.lookahead()).expect("writer");
    let mut packets = Vec::new();
    for frame in frames_of(&src[..48_000 * 3]) {
        let p = enc.encode(&frame).expect("encode");
        w.write_packet(&p).expect("write");
        packets.push(p.to_vec());
    }
    assert!(
        packets.iter().any(|p| p.len() > 510),
        "packets too small to test spanning"
    );
    let (bytes, _) = w.finish().expect("finish");
    let audio = read_ogg_opus(&bytes).expect("read");
    assert_eq!(audio.packets, packets);
    let path = fixtures().dir().join("large.opus");
    std::fs::write(&path, &bytes).expect("write");
    opusinfo_length_ms(&path);
}

#[test]
fn streaming_reader_reports_headers_then_packets() {
    let src = speech(48_000);
    let (bytes, packets) = write_streaming(&src[..48_000], OggOpusOptions::default());
    let mut r = OggOpusReader::new(&bytes[..]).expect("reader");
    assert_eq!(r.head().pre_skip, 312);
    let mut n = 0;
    while let Some(p) = r.next_packet().expect("packet") {
        assert_eq!(p, packets[n]);
        n += 1;
    }
    assert_eq!(n, packets.len());
    assert_eq!(r.granule(), 50 * 960);
    assert!(r.next_packet().expect("after end").is_none());
}

#[test]
fn one_frame_and_empty_streams() {
    let one = encode_ogg_opus(&vec![1_000; 960], DEFAULT_BITRATE).expect("one frame");
    let decoded = decode_ogg_opus(&one).expect("decode");
    assert_eq!(decoded.pcm.len(), 960);
    assert_eq!(decoded.duration_ms, 20);

    let empty = encode_ogg_opus(&[], DEFAULT_BITRATE).expect("empty pcm");
    let decoded = decode_ogg_opus(&empty).expect("decode empty");
    assert!(decoded.pcm.is_empty());
    assert_eq!(decoded.duration_ms, 0);

    // A transmission that produced no packet at all still makes a valid file.
    let (bytes, stats) = OggOpusWriter::new(Vec::new(), 312)
        .expect("writer")
        .finish()
        .expect("finish");
    assert_eq!(stats.packets, 1, "one silent filler packet");
    assert_eq!(stats.duration_ms, 0);
    let audio = read_ogg_opus(&bytes).expect("read empty");
    assert_eq!(audio.packets.len(), 1);
    assert_eq!(audio.duration_ms, 0);
    assert!(decode_ogg_opus(&bytes).expect("decode").pcm.is_empty());

    for (name, file) in [
        ("one.opus", &one),
        ("empty-pcm.opus", &empty),
        ("no-packets.opus", &bytes),
    ] {
        let path = fixtures().dir().join(name);
        std::fs::write(&path, file).expect("write");
        let (info_ms, info) = opusinfo_length_ms(&path);
        println!("{name}: opusinfo {info_ms} ms");
        assert!(info_ms <= 20.0, "{info}");
    }
}

#[test]
fn writer_rejects_bad_packets_and_bad_trims() {
    let mut w = OggOpusWriter::new(Vec::new(), 312).expect("writer");
    assert!(w.write_packet(&[]).is_err());
    assert!(w.write_packet(&[(31 << 3) | 3, 0]).is_err());
    w.write_packet(&[31 << 3, 0xff])
        .expect("tiny valid CELT packet");
    assert!(matches!(
        OggOpusWriter::new(Vec::new(), 312)
            .expect("w")
            .finish_trimmed(10),
        Err(AudioError::InvalidArgument(_))
    ));
    assert!(
        w.finish_trimmed(2_000).is_err(),
        "cannot trim past the last packet"
    );
    assert!(OggOpusWriter::with_options(
        Vec::new(),
        OggOpusOptions {
            comments: vec![("A=B".into(), "x".into())],
            ..OggOpusOptions::default()
        }
    )
    .is_err());
}

#[test]
fn reader_rejects_garbage_non_opus_and_truncation() {
    assert!(matches!(read_ogg_opus(&[]), Err(AudioError::NotOpus(_))));
    let mut state = 7u32;
    let garbage: Vec<u8> = (0..5_000)
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (state >> 16) as u8
        })
        .collect();
    assert!(matches!(
        read_ogg_opus(&garbage),
        Err(AudioError::NotOpus(_))
    ));
    let wav = std::fs::read(fixtures().path("speech16000.wav")).expect("wav");
    let err = read_ogg_opus(&wav).expect_err("a WAV is not Ogg Opus");
    assert!(matches!(err, AudioError::NotOpus(_)), "{err}");

    // A valid Ogg stream of another codec.
    let mut other = ogg::PacketWriter::new(Vec::new());
    other
        .write_packet(
            b"\x01vorbis\x00\x00\x00\x00".to_vec(),
            1,
            ogg::PacketWriteEndInfo::EndStream,
            0,
        )
        .expect("ogg");
    let err = read_ogg_opus(&other.into_inner()).expect_err("vorbis");
    assert!(matches!(err, AudioError::NotOpus(_)), "{err}");
    println!("vorbis stream: {err}");

    let src = speech(48_000);
    let bytes = encode_ogg_opus(&src[..48_000], DEFAULT_BITRATE).expect("encode");
    // Cut anywhere: never a panic, never success.
    for cut in (1..bytes.len()).step_by(37) {
        let err = read_ogg_opus(&bytes[..cut]).expect_err("truncated file must not read");
        assert!(
            matches!(err, AudioError::Truncated(_) | AudioError::NotOpus(_)),
            "cut at {cut}: {err}"
        );
    }
    // Flip one byte of audio payload: the page CRC catches it.
    let mut corrupt = bytes.clone();
    let at = corrupt.len() - 10;
    corrupt[at] ^= 0x55;
    let err = read_ogg_opus(&corrupt).expect_err("corrupt");
    assert!(matches!(err, AudioError::Malformed(_)), "{err}");
    println!("corrupt page: {err}");
    // Trailing data after the end-of-stream page.
    let mut chained = bytes.clone();
    chained.extend_from_slice(&bytes);
    assert!(matches!(
        read_ogg_opus(&chained),
        Err(AudioError::Unsupported(_))
    ));
}

/// Ogg's CRC-32 (polynomial 0x04c11db7, no reflection), to forge pages that
/// get past the checksum and reach the packet-assembly logic.
fn ogg_crc(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Splits a stream into pages: (start, end) byte offsets.
fn pages(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 27 <= bytes.len() {
        let nseg = bytes[at + 26] as usize;
        let Some(lacing) = bytes.get(at + 27..at + 27 + nseg) else {
            break;
        };
        let end = at + 27 + nseg + lacing.iter().map(|&l| l as usize).sum::<usize>();
        out.push((at, end));
        at = end;
    }
    out
}

#[test]
fn forged_pages_with_valid_crc_error_without_panicking() {
    let src = speech(48_000);
    let bytes = encode_ogg_opus(&src[..48_000 * 2], 64_000).expect("encode");
    let layout = pages(&bytes);
    assert_eq!(layout.last().map(|p| p.1), Some(bytes.len()), "page split");
    let mut state = 0x9e37_79b9_u32;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let mut rejected = 0;
    for _ in 0..2_000 {
        let mut forged = bytes.clone();
        let (start, end) = layout[rand() as usize % layout.len()];
        // Header fields (flags, granule, serial, sequence) or lacing/body bytes.
        let at = if rand() % 2 == 0 {
            start + 5 + rand() as usize % 13
        } else {
            start + 26 + rand() as usize % (end - start - 26)
        };
        forged[at] = rand() as u8;
        let (s, e) = pages(&forged)
            .into_iter()
            .find(|&(s, e)| s <= at && at < e.max(s + 27))
            .unwrap_or((start, end.min(forged.len())));
        let e = e.min(forged.len());
        if e > s + 26 {
            forged[s + 22..s + 26].fill(0);
            let crc = ogg_crc(&forged[s..e]);
            forged[s + 22..s + 26].copy_from_slice(&crc.to_le_bytes());
        }
        if read_ogg_opus(&forged).is_err() {
            rejected += 1;
        }
        let _ = decode_ogg_opus(&forged);
    }
    println!("forged pages rejected: {rejected} of 2000");
    assert!(rejected > 100, "the reader accepted almost every forgery");
}

//! Voice messages in: real speech in every format clients send, imported and
//! checked by content against the speech it was made from.
//!
//! WAV, Ogg Vorbis, FLAC and Ogg Opus files are made at test time with sox and
//! opusenc; M4A (AAC) and MP3 are committed fixtures (tests/fixtures, made by
//! make-fixtures.sh with ffmpeg, which the tests do not need).

mod common;

use bytes::Bytes;
use common::{best_lag, energy_db, fixtures, speech};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use walkie_endpoint::audio::{
    import_voice_message, packet_samples, read_ogg_opus, resample, sniff_format, AudioError,
    ImportLimits, Imported, OpusDecoder, SourceFormat, FRAME_SAMPLES,
};

/// Length of espeak-ng's rendering of `common::TEXT` (148705 samples at 22050 Hz).
const SOURCE_MS: u64 = 6_744;

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Converts espeak-ng's speech with sox: `format` options for the output
/// file, then `effects`.
fn sox_effects(name: &str, format: &[&str], effects: &[&str]) -> PathBuf {
    let f = fixtures();
    let out = f.dir().join(name);
    run(Command::new("sox")
        .arg(f.path("espeak.wav"))
        .args(format)
        .arg(&out)
        .args(effects));
    out
}

fn sox_file(name: &str, format: &[&str]) -> PathBuf {
    sox_effects(name, format, &[])
}

fn opusenc_file(name: &str, input: &Path, args: &[&str]) -> PathBuf {
    let out = fixtures().dir().join(name);
    run(Command::new("opusenc")
        .arg("--quiet")
        .args(args)
        .arg(input)
        .arg(&out));
    out
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn committed_fixture(name: &str) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    // The committed files were made from espeak-ng's speech; if this espeak-ng
    // renders the text differently, low correlation would blame the decoder.
    let expected = std::fs::read_to_string(dir.join("espeak.sha256")).expect("espeak.sha256");
    let out = Command::new("sha256sum")
        .arg(fixtures().path("espeak.wav"))
        .output()
        .expect("run sha256sum");
    let actual = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        actual.split_whitespace().next(),
        Some(expected.trim()),
        "espeak-ng's speech differs from the one the committed fixtures were made from \
         (see tests/fixtures/versions.txt); run tests/fixtures/make-fixtures.sh"
    );
    read(&dir.join(name))
}

fn limits() -> ImportLimits {
    ImportLimits::default()
}

fn import(bytes: &[u8], mimetype: &str) -> Imported {
    import_voice_message(bytes, Some(mimetype), &limits())
        .unwrap_or_else(|e| panic!("importing {mimetype}: {e}"))
}

fn decode(packets: &[Bytes]) -> Vec<i16> {
    let mut decoder = OpusDecoder::new().expect("decoder");
    packets
        .iter()
        .flat_map(|p| decoder.decode(p).expect("decodable packet"))
        .collect()
}

/// Best lag of `test` against `reference` (both 48 kHz) in `0..=max_lag`:
/// searched at 8 kHz first, then refined at 48 kHz, so that a search over the
/// few thousand samples of codec delay stays fast in a debug build.
fn align(reference: &[i16], test: &[i16], max_lag: isize) -> (isize, f64) {
    let r8 = resample(reference, 48_000, 8_000).expect("resample");
    let t8 = resample(test, 48_000, 8_000).expect("resample");
    let (coarse, _) = best_lag(&r8, &t8, 0..=max_lag / 6);
    best_lag(reference, test, (coarse * 6 - 12).max(0)..=coarse * 6 + 12)
}

/// Checks an import that was re-encoded: 20 ms mono packets, duration and
/// content of the source speech. Returns the energy difference in dB.
fn check_speech(what: &str, imported: &Imported, min_corr: f64) -> f64 {
    assert!(!imported.passthrough, "{what}: expected a re-encode");
    for (i, p) in imported.packets.iter().enumerate() {
        assert_eq!(
            packet_samples(p).expect("valid packet"),
            FRAME_SAMPLES,
            "{what}: packet {i} is not 20 ms"
        );
        assert_eq!(p[0] & 0x04, 0, "{what}: packet {i} is stereo");
    }
    let covered_ms = imported.packets.len() as u64 * 20;
    assert!(
        covered_ms >= imported.duration_ms && covered_ms <= imported.duration_ms + 40,
        "{what}: {} packets for {} ms",
        imported.packets.len(),
        imported.duration_ms
    );
    let reference = speech(48_000);
    let decoded = decode(&imported.packets);
    // Opus lookahead (6.5 ms) plus the source codec's own delay (AAC priming: ~48 ms).
    let (lag, corr) = align(&reference, &decoded, 4_000);
    let n = reference.len().min(decoded.len() - lag as usize);
    let de = energy_db(&decoded[lag as usize..lag as usize + n]) - energy_db(&reference[..n]);
    let dd = imported.duration_ms as i64 - SOURCE_MS as i64;
    println!(
        "{what}: {} ms ({dd:+} ms), {} packets, {} skipped, source {} Hz × {}, \
         lag {lag} ({:.1} ms), correlation {corr:.4}, energy {de:+.2} dB",
        imported.duration_ms,
        imported.packets.len(),
        imported.skipped_packets,
        imported.source_rate,
        imported.source_channels,
        lag as f64 / 48.0
    );
    assert!(dd.abs() <= 60, "{what}: duration off by {dd} ms");
    assert!(
        corr >= min_corr,
        "{what}: correlation {corr:.4} < {min_corr}"
    );
    assert!(de.abs() <= 3.0, "{what}: energy off by {de:+.2} dB");
    de
}

#[test]
fn ogg_opus_in_20ms_mono_packets_passes_through() {
    let wav = fixtures().path("speech48000.wav");
    let bytes = read(&opusenc_file("element.opus", &wav, &["--bitrate", "32"]));
    let file = read_ogg_opus(&bytes).expect("opusenc output");
    let imported = import(&bytes, "audio/ogg");
    assert!(imported.passthrough);
    assert_eq!(imported.source_format, "ogg-opus");
    assert_eq!(imported.skipped_packets, 0);
    assert_eq!(imported.duration_ms, file.duration_ms);
    assert_eq!(imported.packets.len(), file.packets.len());
    for (i, (ours, theirs)) in imported.packets.iter().zip(&file.packets).enumerate() {
        assert_eq!(&ours[..], &theirs[..], "packet {i} changed");
    }
    let dd = imported.duration_ms as i64 - SOURCE_MS as i64;
    println!(
        "ogg-opus passthrough: {} packets byte-identical, {} ms ({dd:+} ms)",
        imported.packets.len(),
        imported.duration_ms
    );
    assert!(dd.abs() <= 60);
}

#[test]
fn ogg_opus_in_60ms_packets_is_reencoded_to_20ms() {
    let wav = fixtures().path("speech48000.wav");
    let bytes = read(&opusenc_file(
        "60ms.opus",
        &wav,
        &["--framesize", "60", "--bitrate", "32"],
    ));
    let file = read_ogg_opus(&bytes).expect("opusenc output");
    let sizes: Vec<usize> = file
        .packets
        .iter()
        .map(|p| packet_samples(p).expect("valid"))
        .collect();
    // opusenc ends with whatever frame size fits the tail.
    assert!(
        sizes[..sizes.len() - 1].iter().all(|&n| n == 2_880),
        "{sizes:?}"
    );
    let imported = import(&bytes, "audio/ogg");
    assert_eq!(imported.source_format, "ogg-opus");
    assert_eq!(imported.duration_ms, file.duration_ms);
    check_speech("ogg-opus 60 ms frames", &imported, 0.8);
}

#[test]
fn stereo_ogg_opus_is_mixed_down() {
    // Speech on the left, the same speech 6 dB down on the right: a real stereo file.
    let wav = sox_effects(
        "stereo48000.wav",
        &["-r", "48000", "-b", "16"],
        &["remix", "1", "1v0.5"],
    );
    let bytes = read(&opusenc_file("stereo.opus", &wav, &["--bitrate", "64"]));
    assert_eq!(
        read_ogg_opus(&bytes).expect("opusenc output").head.channels,
        2
    );
    let imported = import(&bytes, "audio/ogg");
    assert_eq!(imported.source_channels, 2);
    // The mixdown is (1 + 0.5) / 2 of the speech: 2.5 dB below the mono source.
    let de = check_speech("ogg-opus stereo", &imported, 0.8);
    assert!((de + 2.5).abs() < 1.0, "mixdown level {de:+.2} dB");
}

#[test]
fn wav_at_several_rates_and_layouts() {
    let cases: [(&str, &[&str]); 5] = [
        ("16k-mono-s16.wav", &["-r", "16000", "-c", "1", "-b", "16"]),
        (
            "22k05-stereo-s16.wav",
            &["-r", "22050", "-c", "2", "-b", "16"],
        ),
        (
            "44k1-stereo-s24.wav",
            &["-r", "44100", "-c", "2", "-b", "24"],
        ),
        (
            "11k025-mono-u8.wav",
            &["-r", "11025", "-c", "1", "-b", "8", "-e", "unsigned"],
        ),
        (
            "24k-mono-f32.wav",
            &["-r", "24000", "-c", "1", "-b", "32", "-e", "floating-point"],
        ),
    ];
    for (name, args) in cases {
        let bytes = read(&sox_file(name, args));
        let imported = import(&bytes, "audio/wav");
        assert_eq!(imported.source_format, "wav");
        let rate: u32 = args[1].parse().expect("rate");
        assert_eq!(imported.source_rate, rate);
        assert_eq!(imported.source_channels.to_string(), args[3]);
        // 8-bit has a noise floor at -48 dB; 11 kHz keeps only espeak's band below 5.5 kHz.
        check_speech(&format!("wav {name}"), &imported, 0.8);
    }
}

#[test]
fn ogg_vorbis() {
    let bytes = read(&sox_file(
        "speech.ogg",
        &["-r", "44100", "-c", "2", "-C", "3"],
    ));
    let imported = import(&bytes, "audio/ogg");
    assert_eq!(imported.source_format, "ogg-vorbis");
    assert_eq!(imported.source_channels, 2);
    check_speech("ogg-vorbis 44.1k stereo q3", &imported, 0.8);
}

#[test]
fn flac() {
    let bytes = read(&sox_file("speech.flac", &["-r", "32000", "-c", "1"]));
    let imported = import(&bytes, "audio/flac");
    assert_eq!(imported.source_format, "flac");
    check_speech("flac 32k mono", &imported, 0.8);
}

#[test]
fn mp3() {
    let bytes = committed_fixture("speech.mp3");
    let imported = import(&bytes, "audio/mpeg");
    assert_eq!(imported.source_format, "mp3");
    assert_eq!(imported.source_rate, 22_050);
    assert_eq!(imported.skipped_packets, 0);
    check_speech("mp3 22.05k mono 24 kbit/s", &imported, 0.8);
}

#[test]
fn m4a_aac() {
    let bytes = committed_fixture("speech-aac.m4a");
    let imported = import(&bytes, "audio/mp4");
    assert_eq!(imported.source_format, "m4a");
    assert_eq!(imported.source_rate, 44_100);
    assert_eq!(imported.skipped_packets, 0);
    check_speech("m4a aac-lc 44.1k mono 24 kbit/s", &imported, 0.8);
}

/// The AAC frames of the M4A fixture, each behind a 7-byte ADTS header
/// (ISO 14496-3 §1.A.2): the same audio as a raw `.aac` file.
fn m4a_to_adts(m4a: &[u8]) -> Vec<u8> {
    use symphonia::core::formats::{probe::Hint, FormatOptions, TrackType};
    use symphonia::core::io::MediaSourceStream;
    let source = MediaSourceStream::new(
        Box::new(std::io::Cursor::new(m4a.to_vec())),
        Default::default(),
    );
    let mut reader = symphonia::default::get_probe()
        .probe(
            &Hint::new(),
            source,
            FormatOptions::default(),
            Default::default(),
        )
        .expect("probe m4a");
    let track = reader.default_track(TrackType::Audio).expect("track").id;
    let mut out = Vec::new();
    while let Some(packet) = reader.next_packet().expect("packet") {
        if packet.track_id != track {
            continue;
        }
        let len = packet.data.len() + 7;
        // MPEG-4, no CRC; AAC-LC (profile 1); 44100 Hz (index 4); mono; buffer fullness "VBR".
        out.extend_from_slice(&[
            0xFF,
            0xF1,
            (1 << 6) | (4 << 2),
            (1 << 6) | (len >> 11) as u8,
            (len >> 3) as u8,
            ((len & 7) << 5) as u8 | 0x1F,
            0xFC,
        ]);
        out.extend_from_slice(&packet.data);
    }
    out
}

#[test]
fn aac_in_adts() {
    let adts = m4a_to_adts(&committed_fixture("speech-aac.m4a"));
    assert_eq!(sniff_format(&adts).expect("adts"), SourceFormat::Adts);
    let imported = import(&adts, "audio/aac");
    assert_eq!(imported.source_format, "aac-adts");
    assert_eq!(imported.source_rate, 44_100);
    check_speech("aac adts 44.1k mono 24 kbit/s", &imported, 0.8);
}

/// Without LAME's Info frame an MP3 declares no length (the reader estimates
/// one from the size) and no encoder delay: it must still import, not be
/// taken for a cut-off file.
#[test]
fn mp3_without_a_length_header() {
    let mp3 = committed_fixture("speech.mp3");
    let tag = 10
        + mp3[6..10]
            .iter()
            .fold(0usize, |a, &b| (a << 7) | usize::from(b));
    // First frame: MPEG-2 layer III, 22050 Hz, no padding; 72 × bitrate / rate bytes.
    let header = &mp3[tag..tag + 4];
    assert_eq!(
        header[..2],
        [0xFF, 0xF3],
        "fixture starts with an MPEG-2 layer III frame"
    );
    let kbps =
        [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160][usize::from(header[2] >> 4)];
    let info_len = 72 * kbps * 1000 / 22_050;
    // After the header, 9 bytes of MPEG-2 mono side information.
    assert_eq!(
        &mp3[tag + 4 + 9..tag + 4 + 13],
        b"Info",
        "first frame is LAME's Info frame"
    );
    let bare = [&mp3[..tag], &mp3[tag + info_len..]].concat();
    let imported = import(&bare, "audio/mpeg");
    assert_eq!(imported.source_format, "mp3");
    // The encoder delay (~50 ms) and padding stay in: a little longer than the source.
    let dd = imported.duration_ms as i64 - SOURCE_MS as i64;
    println!(
        "mp3 without Info frame: {} ms ({dd:+} ms)",
        imported.duration_ms
    );
    assert!((0..=120).contains(&dd), "duration off by {dd} ms");
}

#[test]
fn the_mimetype_is_only_a_hint() {
    // FluffyChat-style AAC announced as Ogg, and WAV announced as nothing at all.
    let m4a = committed_fixture("speech-aac.m4a");
    assert_eq!(import(&m4a, "audio/ogg").source_format, "m4a");
    let wav = read(&fixtures().path("speech16000.wav"));
    let imported = import_voice_message(&wav, None, &limits()).expect("wav without mimetype");
    assert_eq!(imported.source_format, "wav");
}

#[test]
fn sniffing_reads_magic_numbers() {
    let mp3 = committed_fixture("speech.mp3");
    assert_eq!(sniff_format(&mp3).expect("mp3"), SourceFormat::Mp3);
    // The same MP3 without its ID3 tag starts with a frame sync.
    let id3_len = 10
        + mp3[6..10]
            .iter()
            .fold(0usize, |a, &b| (a << 7) | usize::from(b));
    assert_eq!(
        sniff_format(&mp3[id3_len..]).expect("bare mp3"),
        SourceFormat::Mp3
    );
    let m4a = committed_fixture("speech-aac.m4a");
    assert_eq!(sniff_format(&m4a).expect("m4a"), SourceFormat::Mp4);
    let wav = read(&fixtures().path("speech16000.wav"));
    assert_eq!(sniff_format(&wav).expect("wav"), SourceFormat::Wav);
    let opus = read(&opusenc_file(
        "sniff.opus",
        &fixtures().path("speech16000.wav"),
        &[],
    ));
    assert_eq!(sniff_format(&opus).expect("opus"), SourceFormat::OggOpus);
    let vorbis = read(&sox_file("sniff.ogg", &["-C", "0"]));
    assert_eq!(
        sniff_format(&vorbis).expect("vorbis"),
        SourceFormat::OggVorbis
    );
    let flac = read(&sox_file("sniff.flac", &[]));
    assert_eq!(sniff_format(&flac).expect("flac"), SourceFormat::Flac);
    // Taggers put ID3v2 in front of FLAC too; what follows the tag decides.
    let tagged = [b"ID3\x04\0\0\0\0\0\x0a".as_slice(), &[0; 10], &flac].concat();
    assert_eq!(
        sniff_format(&tagged).expect("tagged flac"),
        SourceFormat::Flac
    );
    assert_eq!(import(&tagged, "audio/flac").source_format, "flac");
}

/// A deterministic byte generator for garbage inputs.
fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[test]
fn over_max_bytes_is_refused_before_parsing() {
    let wav = read(&fixtures().path("speech16000.wav"));
    let tight = ImportLimits {
        max_bytes: wav.len(),
        ..limits()
    };
    import_voice_message(&wav, Some("audio/wav"), &tight).expect("exactly at the limit");
    let small = ImportLimits {
        max_bytes: wav.len() - 1,
        ..limits()
    };
    match import_voice_message(&wav, Some("audio/wav"), &small) {
        Err(AudioError::TooLarge { size, limit }) => {
            assert_eq!((size, limit), (wav.len(), wav.len() - 1));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Garbage over the limit is refused for its size, not its content: nothing was parsed.
    let junk = garbage(1_000, 1);
    let tiny = ImportLimits {
        max_bytes: 999,
        ..limits()
    };
    assert!(matches!(
        import_voice_message(&junk, Some("audio/ogg"), &tiny),
        Err(AudioError::TooLarge { .. })
    ));
}

/// Ten seconds of speech (espeak's 6.7 s repeated, cut at 10 s).
fn ten_seconds_wav() -> PathBuf {
    let path = sox_effects(
        "ten-seconds.wav",
        &["-r", "48000", "-c", "1", "-b", "16"],
        &["repeat", "1", "trim", "0", "10"],
    );
    let (pcm, _) = common::read_wav(&path);
    assert_eq!(pcm.len(), 480_000);
    path
}

fn assert_stopped_early(what: &str, result: Result<Imported, AudioError>) {
    match result {
        Err(AudioError::TooLong {
            limit_ms,
            decoded_ms,
        }) => {
            println!(
                "{what}: refused after decoding {decoded_ms} ms of 10000 (limit {limit_ms} ms)"
            );
            assert_eq!(limit_ms, 5_000);
            // Stopped within a packet or two of the limit, not at the end of the file.
            assert!(
                decoded_ms > 5_000 && decoded_ms <= 5_100,
                "{what}: stopped after {decoded_ms} ms"
            );
        }
        other => panic!("{what}: expected TooLong, got {other:?}"),
    }
}

#[test]
fn a_10s_message_with_a_5s_cap_is_refused_early() {
    let cap = ImportLimits {
        max_duration: Duration::from_secs(5),
        ..limits()
    };
    let wav_path = ten_seconds_wav();
    let wav = read(&wav_path);
    assert_stopped_early("wav", import_voice_message(&wav, Some("audio/wav"), &cap));
    let opus = read(&opusenc_file("ten-seconds.opus", &wav_path, &[]));
    assert_stopped_early(
        "ogg-opus",
        import_voice_message(&opus, Some("audio/ogg"), &cap),
    );
    let vorbis = read(&sox_effects(
        "ten-seconds.ogg",
        &["-r", "44100"],
        &["repeat", "1", "trim", "0", "10"],
    ));
    assert_stopped_early(
        "ogg-vorbis",
        import_voice_message(&vorbis, Some("audio/ogg"), &cap),
    );
    // The same files are fine under a cap they fit in.
    let roomy = ImportLimits {
        max_duration: Duration::from_millis(10_100),
        ..limits()
    };
    let ok = import_voice_message(&wav, Some("audio/wav"), &roomy).expect("fits");
    assert_eq!(ok.duration_ms, 10_000);
    let ok = import_voice_message(&opus, Some("audio/ogg"), &roomy).expect("fits");
    assert!(ok.duration_ms.abs_diff(10_000) <= 1, "{}", ok.duration_ms);
}

#[test]
fn garbage_empty_and_images_are_errors() {
    let png = {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        b.extend(garbage(2_000, 7));
        b
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "audio/ogg"),
        ("png as audio", png, "audio/ogg"),
        ("garbage", garbage(50_000, 3), "audio/mpeg"),
        ("garbage", garbage(50_000, 4), "audio/mp4"),
        ("one byte", vec![0xFF], "audio/mpeg"),
        ("OggS only", b"OggS".to_vec(), "audio/ogg"),
        ("ftyp only", b"\0\0\0\x18ftypM4A ".to_vec(), "audio/mp4"),
        ("RIFF only", b"RIFF\0\0\0\0WAVE".to_vec(), "audio/wav"),
        ("ID3 only", b"ID3\x04\0\0\0\0\0\x0a".to_vec(), "audio/mpeg"),
        (
            "webm",
            b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01".to_vec(),
            "audio/webm",
        ),
    ];
    for (what, bytes, mimetype) in cases {
        let err = import_voice_message(&bytes, Some(mimetype), &limits()).expect_err(what);
        println!("{what} ({mimetype}): {err}");
        if what == "png as audio" {
            assert!(err.to_string().contains("PNG"), "{err}");
        }
    }
}

/// Every format, cut short: an error, not a partial message and not a panic.
#[test]
fn truncated_files_are_errors() {
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("wav", read(&fixtures().path("speech16000.wav"))),
        (
            "ogg-opus",
            read(&opusenc_file(
                "trunc.opus",
                &fixtures().path("speech48000.wav"),
                &[],
            )),
        ),
        ("ogg-vorbis", read(&sox_file("trunc.ogg", &["-C", "3"]))),
        ("flac", read(&sox_file("trunc.flac", &[]))),
        ("mp3", committed_fixture("speech.mp3")),
        ("m4a", committed_fixture("speech-aac.m4a")),
    ];
    for (what, bytes) in files {
        let whole = import_voice_message(&bytes, None, &limits()).expect("intact file");
        for cut in [bytes.len() * 9 / 10, bytes.len() / 2, 100, 40] {
            match import_voice_message(&bytes[..cut], None, &limits()) {
                Err(e) => println!("{what} cut at {cut}/{}: {e}", bytes.len()),
                Ok(i) => panic!(
                    "{what} cut at {cut}/{} imported as {} ms",
                    bytes.len(),
                    i.duration_ms
                ),
            }
        }
        // One byte short loses at most the last packet: refusing the message
        // for that would be pedantic, but what comes out must be the whole of it.
        match import_voice_message(&bytes[..bytes.len() - 1], None, &limits()) {
            Err(e) => println!("{what} short by one byte: {e}"),
            Ok(i) => {
                println!("{what} short by one byte: {} ms", i.duration_ms);
                assert!(whole.duration_ms.abs_diff(i.duration_ms) <= 60);
            }
        }
    }
}

fn damaged_copy(bytes: &[u8], seed: u64) -> Vec<u8> {
    let mut b = bytes.to_vec();
    // 16 bytes of noise somewhere in the middle 60 % of the file.
    let at = b.len() / 5 + (seed as usize * 7_919) % (b.len() * 3 / 5);
    b[at..at + 16].copy_from_slice(&garbage(16, seed + 100));
    b
}

/// A scratch in the middle of a file costs a packet or a page, not the
/// message: the bad part is skipped (and counted), the rest keeps its timing.
#[test]
fn damage_in_the_middle_is_skipped_and_counted() {
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("ogg-vorbis", read(&sox_file("damaged.ogg", &["-C", "3"]))),
        ("flac", read(&sox_file("damaged.flac", &[]))),
        ("mp3", committed_fixture("speech.mp3")),
        ("m4a", committed_fixture("speech-aac.m4a")),
    ];
    for (what, bytes) in files {
        let whole = import_voice_message(&bytes, None, &limits()).expect("intact file");
        let (mut ok, mut skipped, mut first_ok) = (0, 0, None);
        for seed in 0..20 {
            match import_voice_message(&damaged_copy(&bytes, seed), None, &limits()) {
                Ok(i) => {
                    ok += 1;
                    skipped += i.skipped_packets;
                    assert!(
                        i.duration_ms.abs_diff(whole.duration_ms) <= 60,
                        "{what} seed {seed}: {} ms instead of {}",
                        i.duration_ms,
                        whole.duration_ms
                    );
                    // Lost and undecodable packets become silence of their
                    // length, so everything after them keeps its time.
                    if what != "mp3" {
                        assert_eq!(i.duration_ms, whole.duration_ms, "{what} seed {seed}");
                    }
                    first_ok.get_or_insert(i);
                }
                Err(e) => println!("{what} seed {seed}: {e}"),
            }
        }
        println!("{what}: {ok}/20 damaged copies imported, {skipped} packets skipped in all");
        // MP3 frames mostly decode to garbled audio rather than fail; the
        // others lose whole packets or pages, which must show in the count.
        assert!(ok >= 15, "{what}: only {ok}/20 damaged copies imported");
        if what != "mp3" {
            assert!(skipped > 0, "{what}: damage went uncounted");
        }
        let damaged = first_ok.expect("at least one import");
        check_speech(&format!("{what} damaged"), &damaged, 0.7);
    }
}

/// Random mutations of every format: whatever happens, no panic, and anything
/// that imports is well-formed internal audio within the limits.
#[test]
fn mutated_files_never_panic() {
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("wav", read(&fixtures().path("speech16000.wav"))),
        (
            "ogg-opus",
            read(&opusenc_file(
                "fuzz.opus",
                &fixtures().path("speech16000.wav"),
                &["--framesize", "40"],
            )),
        ),
        ("ogg-vorbis", read(&sox_file("fuzz.ogg", &["-C", "0"]))),
        ("flac", read(&sox_file("fuzz.flac", &[]))),
        ("mp3", committed_fixture("speech.mp3")),
        ("m4a", committed_fixture("speech-aac.m4a")),
    ];
    let cap = ImportLimits {
        max_duration: Duration::from_secs(8),
        ..limits()
    };
    for (what, bytes) in files {
        let (mut ok, mut err) = (0, 0);
        for seed in 0..30u64 {
            let noise = garbage(64, seed + 1_000);
            let mut b = bytes.clone();
            // Headers are where parsers trust lengths and counts: hit them often.
            let span = if seed % 2 == 0 {
                512.min(b.len())
            } else {
                b.len()
            };
            for k in 0..(1 + seed % 8) as usize {
                let at =
                    (usize::from(noise[2 * k]) << 8 | usize::from(noise[2 * k + 1])) * 31 % span;
                b[at] ^= noise[32 + k] | 1;
            }
            if seed % 5 == 0 {
                b.truncate(b.len() * usize::from(noise[60]) / 256);
            }
            match import_voice_message(&b, None, &cap) {
                Ok(i) => {
                    ok += 1;
                    assert!(i.duration_ms <= 8_000);
                    for p in &i.packets {
                        assert_eq!(packet_samples(p).expect("valid packet"), FRAME_SAMPLES);
                    }
                }
                Err(_) => err += 1,
            }
        }
        println!("{what}: {ok} mutated copies imported, {err} refused");
    }
}

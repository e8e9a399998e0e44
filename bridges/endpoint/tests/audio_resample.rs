//! Resampling on real speech: alignment, energy and streaming behaviour.

mod common;

use common::{best_lag, correlation_at, energy_db, speech};
use walkie_endpoint::audio::{resample, AudioError, Resampler};

fn check_round_trip(mid: u32, min_corr: f64, max_db: f64) {
    let src = speech(48_000);
    let down = resample(&src, 48_000, mid).expect("down");
    let back = resample(&down, mid, 48_000).expect("up");
    assert_eq!(down.len(), (src.len() * mid as usize + 24_000) / 48_000);
    // Rounding twice through 44.1 kHz may gain or lose one sample.
    assert!(
        back.len().abs_diff(src.len()) <= 1,
        "{} vs {}",
        back.len(),
        src.len()
    );
    let corr = correlation_at(&src, &back, 0);
    let (lag, best) = best_lag(&src, &back, -20..=20);
    let de = energy_db(&back) - energy_db(&src);
    println!("48k→{mid}→48k: corr@0 {corr:.4}, best lag {lag} ({best:.4}), energy {de:+.2} dB");
    assert_eq!(lag, 0, "round trip is shifted by {lag} samples");
    assert!(corr >= min_corr, "correlation {corr:.4} < {min_corr}");
    assert!(de.abs() <= max_db, "energy moved {de:+.2} dB");
}

#[test]
fn round_trip_via_16k_is_aligned() {
    check_round_trip(16_000, 0.95, 1.0);
}

#[test]
fn round_trip_via_8k_is_aligned() {
    // 8 kHz keeps only the band below 4 kHz; espeak puts a little energy above it.
    check_round_trip(8_000, 0.98, 1.0);
}

#[test]
fn round_trip_via_44k1_is_aligned() {
    check_round_trip(44_100, 0.99, 0.2);
}

/// Compares our conversion of one sox output with sox's own conversion of the
/// same speech to another rate: an independent reference for timing and level.
fn check_against_sox(from: u32, to: u32, min_corr: f64) {
    let src = speech(from);
    let reference = speech(to);
    let ours = resample(&src, from, to).expect("resample");
    let n = ours.len().min(reference.len());
    let corr = correlation_at(&reference[..n], &ours[..n], 0);
    let (lag, _) = best_lag(&reference[..n], &ours[..n], -10..=10);
    let de = energy_db(&ours[..n]) - energy_db(&reference[..n]);
    println!("{from}→{to} vs sox: corr@0 {corr:.4}, best lag {lag}, energy {de:+.2} dB");
    assert_eq!(lag, 0);
    assert!(corr >= min_corr, "correlation {corr:.4} < {min_corr}");
    assert!(de.abs() <= 1.0, "energy differs by {de:+.2} dB");
}

#[test]
fn down_to_16k_matches_sox() {
    check_against_sox(48_000, 16_000, 0.98);
}

#[test]
fn up_from_44k1_matches_sox() {
    check_against_sox(44_100, 48_000, 0.98);
}

#[test]
fn up_from_8k_matches_sox_in_band() {
    // sox's 48 kHz version has content above 4 kHz that an 8 kHz source cannot have.
    check_against_sox(8_000, 48_000, 0.98);
}

#[test]
fn streaming_in_odd_chunks_equals_one_shot() {
    let src = speech(48_000);
    let whole = resample(&src, 48_000, 16_000).expect("one shot");
    let mut r = Resampler::new(48_000, 16_000).expect("resampler");
    let mut streamed = Vec::new();
    let mut rest = &src[..];
    for size in [1usize, 7, 333, 960, 1_234, 4_097].iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let take = (*size).min(rest.len());
        streamed.extend(r.process(&rest[..take]).expect("process"));
        rest = &rest[take..];
    }
    streamed.extend(r.flush().expect("flush"));
    assert_eq!(streamed, whole);
    // After flush the resampler starts a fresh stream.
    let mut again = r.process(&src).expect("process");
    again.extend(r.flush().expect("flush"));
    assert_eq!(again, whole);
}

#[test]
fn every_supported_pair_keeps_length_and_level() {
    let rates = [8_000, 16_000, 44_100, 48_000];
    for from in rates {
        let src = common::sine(440.0, 10_000.0, from, from as usize);
        for to in rates {
            let out = resample(&src, from, to).expect("resample");
            assert_eq!(out.len(), to as usize, "{from}→{to}");
            // Ignore the edges, where the filter sees the step into and out of silence.
            let edge = to as usize / 50;
            let de = energy_db(&out[edge..out.len() - edge]) - energy_db(&src);
            assert!(de.abs() < 0.1, "{from}→{to}: {de:+.3} dB");
        }
    }
}

#[test]
fn same_rate_is_identity() {
    let src = speech(16_000);
    assert_eq!(resample(&src, 16_000, 16_000).expect("identity"), src);
}

#[test]
fn empty_and_tiny_inputs() {
    assert!(resample(&[], 48_000, 16_000).expect("empty").is_empty());
    assert_eq!(
        resample(&[1_000; 3], 48_000, 16_000)
            .expect("3 samples")
            .len(),
        1
    );
    let mut r = Resampler::new(16_000, 48_000).expect("resampler");
    assert!(r.flush().expect("flush of nothing").is_empty());
    assert!(r.process(&[]).expect("nothing").is_empty());
}

/// Rates that imported voice messages bring (MP3 at 22.05/24/32 kHz, AAC at
/// 11.025 kHz, studio 96 kHz) and a coprime one: converted to 48 kHz they must
/// line up with sox's own 48 kHz conversion of the same speech.
#[test]
fn any_rate_to_48k_matches_sox() {
    let f = common::fixtures();
    let reference = speech(48_000);
    for from in [11_025u32, 22_050, 24_000, 32_000, 96_000, 44_101] {
        let path = f.dir().join(format!("any-rate-{from}.wav"));
        let out = std::process::Command::new("sox")
            .arg(f.path("espeak.wav"))
            .args(["-r", &from.to_string(), "-c", "1", "-b", "16"])
            .arg(&path)
            .output()
            .expect("run sox");
        assert!(
            out.status.success(),
            "sox: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (src, rate) = common::read_wav(&path);
        assert_eq!(rate, from);
        let ours = resample(&src, from, 48_000).expect("resample");
        let expected = (src.len() as u64 * 48_000 + u64::from(from) / 2) / u64::from(from);
        assert_eq!(ours.len() as u64, expected, "{from} Hz: output length");
        let n = ours.len().min(reference.len());
        let corr = correlation_at(&reference[..n], &ours[..n], 0);
        let (lag, _) = best_lag(&reference[..n], &ours[..n], -10..=10);
        let de = energy_db(&ours[..n]) - energy_db(&reference[..n]);
        println!("{from}→48000 vs sox: corr@0 {corr:.4}, best lag {lag}, energy {de:+.2} dB");
        assert_eq!(lag, 0, "{from} Hz: shifted by {lag} samples");
        // 11.025 kHz cannot carry espeak's band above 5.5 kHz that sox's 48 kHz keeps.
        let min_corr = if from == 11_025 { 0.95 } else { 0.98 };
        assert!(
            corr >= min_corr,
            "{from} Hz: correlation {corr:.4} < {min_corr}"
        );
        assert!(de.abs() <= 1.0, "{from} Hz: energy differs by {de:+.2} dB");
    }
}

/// Delay of a resampled sine against the ideal one, in output samples,
/// measured from its phase (so fractions of a sample show).
fn sine_delay(from: u32, to: u32) -> f64 {
    use std::f64::consts::PI;
    let freq = 440.0;
    let src = common::sine(freq, 10_000.0, from, from as usize * 2);
    let out = resample(&src, from, to).expect("resample");
    let (mut s, mut c) = (0.0, 0.0);
    // One second from the middle, away from the edges where the filter rings.
    for (i, &y) in out
        .iter()
        .enumerate()
        .skip(to as usize / 2)
        .take(to as usize)
    {
        let w = 2.0 * PI * freq * i as f64 / f64::from(to);
        s += f64::from(y) * w.sin();
        c += f64::from(y) * w.cos();
    }
    -c.atan2(s) / (2.0 * PI * freq) * f64::from(to)
}

/// Odd FFT block sizes leave rubato half an input sample of delay that the
/// trimming cannot see; this catches it for any rate pair, in both directions.
#[test]
fn no_fractional_delay_at_any_rate() {
    for rate in [
        8_000, 11_025, 22_050, 24_000, 32_000, 44_100, 44_101, 96_000,
    ] {
        for (from, to) in [(rate, 48_000), (48_000, rate)] {
            let d = sine_delay(from, to);
            println!("{from}→{to}: delay {d:+.4} samples");
            assert!(d.abs() < 0.01, "{from}→{to}: delay {d:+.4} samples");
        }
    }
}

#[test]
fn any_rate_pair_keeps_length_and_level() {
    let rates = [11_025, 22_050, 32_000, 44_101, 48_000];
    for from in rates {
        let src = common::sine(440.0, 10_000.0, from, from as usize);
        for to in rates {
            let out = resample(&src, from, to).expect("resample");
            assert_eq!(out.len(), to as usize, "{from}→{to}");
            let edge = to as usize / 20;
            let de = energy_db(&out[edge..out.len() - edge]) - energy_db(&src);
            assert!(de.abs() < 0.1, "{from}→{to}: {de:+.3} dB");
        }
    }
}

#[test]
fn unsupported_rates_are_refused() {
    for (from, to) in [
        (999, 48_000),
        (48_000, 0),
        (384_001, 48_000),
        (48_000, u32::MAX),
    ] {
        assert!(matches!(
            Resampler::new(from, to),
            Err(AudioError::UnsupportedRate(_))
        ));
    }
}

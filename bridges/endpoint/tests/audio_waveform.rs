//! MSC1767 waveform and duration on real speech.

mod common;

use common::{noise, speech};
use walkie_endpoint::audio::{duration_ms, waveform, Waveform, FRAME_SAMPLES, WAVEFORM_MAX};

#[test]
fn speech_gives_100_points_reaching_the_top() {
    let s = speech(48_000);
    let silence = vec![0i16; 48_000 * 2];
    let mut pcm = s.clone();
    pcm.extend_from_slice(&silence);
    pcm.extend_from_slice(&s);
    let w = waveform(&pcm);
    println!("waveform: {w:?}");
    assert_eq!(w.len(), 100);
    assert!(w.iter().all(|&v| v <= WAVEFORM_MAX));
    assert_eq!(w.iter().copied().max(), Some(WAVEFORM_MAX));
    // The 2 s of silence sit at 100 × [6.7 s, 8.7 s) / 15.5 s ≈ points 44..55.
    let total = pcm.len() as f64;
    let a = (s.len() as f64 / total * 100.0).ceil() as usize + 1;
    let b = ((s.len() + silence.len()) as f64 / total * 100.0).floor() as usize - 1;
    assert!(
        w[a..b].iter().all(|&v| v == 0),
        "silence {a}..{b}: {:?}",
        &w[a..b]
    );
    let loud = w.iter().filter(|&&v| v > 300).count();
    assert!(loud >= 20, "only {loud} points above 300");
}

#[test]
fn silence_and_low_noise_stay_low() {
    assert!(waveform(&vec![0; 48_000 * 5]).iter().all(|&v| v == 0));
    let w = waveform(&noise(48_000 * 5, -60.0, 9));
    println!("-60 dBFS noise: max {:?}", w.iter().max());
    assert!(w.iter().all(|&v| v < 150), "{w:?}");
}

#[test]
fn short_clips_give_one_point_per_frame() {
    assert!(waveform(&[]).is_empty());
    assert_eq!(waveform(&[1_000; FRAME_SAMPLES]), vec![WAVEFORM_MAX]);
    assert_eq!(waveform(&vec![1_000; FRAME_SAMPLES * 10]).len(), 10);
    assert_eq!(waveform(&vec![1_000; FRAME_SAMPLES * 10 + 1]).len(), 11);
    assert_eq!(waveform(&vec![1_000; FRAME_SAMPLES * 100]).len(), 100);
    assert_eq!(
        waveform(&vec![1_000; FRAME_SAMPLES * 1_000 + 17]).len(),
        100
    );
}

#[test]
fn builder_matches_one_shot_and_tracks_duration() {
    let s = speech(48_000);
    let mut b = Waveform::new();
    for chunk in s.chunks(777) {
        b.push_pcm(chunk);
    }
    assert_eq!(b.finish(), waveform(&s));
    assert_eq!(b.duration_ms(), duration_ms(s.len()));
    assert_eq!(duration_ms(48_000), 1_000);
    assert_eq!(duration_ms(960), 20);

    // Per-frame levels give the same picture as the PCM they came from.
    let mut levels = Waveform::new();
    for frame in s.chunks_exact(FRAME_SAMPLES) {
        levels.push_frame_level(walkie_endpoint::audio::dbfs(frame));
    }
    let whole = &s[..s.len() / FRAME_SAMPLES * FRAME_SAMPLES];
    let (a, b) = (levels.finish(), waveform(whole));
    assert_eq!(a.len(), b.len());
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.abs_diff(*y) <= 2),
        "{a:?} vs {b:?}"
    );
    assert_eq!(levels.duration_ms(), duration_ms(whole.len()));
}

#[test]
fn quiet_speech_is_normalised_up() {
    let s: Vec<i16> = speech(48_000).iter().map(|&x| x / 8).collect();
    let w = waveform(&s);
    assert_eq!(w.iter().copied().max(), Some(WAVEFORM_MAX));
}

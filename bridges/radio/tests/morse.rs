//! Morse ID rendering: PARIS timing measured from the rendered envelope,
//! tone frequency, and click-free keying edges.

use walkie_radio::morse::{dot_ms, elements, render, MorseError, EDGE_MS};

const RATE: u32 = 48_000;
const TONE: u32 = 800;

/// Envelope: the peak magnitude in a window of one tone period centred on
/// each sample, relative to `peak`.
fn envelope(pcm: &[i16], period: usize) -> Vec<f64> {
    let half = period / 2;
    (0..pcm.len())
        .map(|n| {
            let lo = n.saturating_sub(half);
            let hi = (n + half + 1).min(pcm.len());
            pcm[lo..hi]
                .iter()
                .map(|s| f64::from(s.unsigned_abs()))
                .fold(0.0, f64::max)
        })
        .collect()
}

/// Key-down intervals (start, end) in ms where the envelope exceeds half of `peak`.
fn keyed_intervals(pcm: &[i16], peak: f64) -> Vec<(f64, f64)> {
    let env = envelope(pcm, (RATE / TONE) as usize);
    let mut out = Vec::new();
    let mut start = None;
    for (n, &e) in env.iter().enumerate() {
        let on = e > peak / 2.0;
        match (on, start) {
            (true, None) => start = Some(n),
            (false, Some(s)) => {
                out.push((ms(s), ms(n)));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((ms(s), ms(env.len())));
    }
    out
}

fn ms(samples: usize) -> f64 {
    samples as f64 * 1000.0 / f64::from(RATE)
}

#[test]
fn dots_dashes_and_gaps_follow_paris_timing() {
    for wpm in [12, 20, 30] {
        let call = "DL1ABC/P";
        let pcm = render(call, wpm, TONE, RATE, -6.0).expect("render");
        let peak = 32_767.0 * 10f64.powf(-6.0 / 20.0);
        let measured = keyed_intervals(&pcm, peak);
        let (expected, units) = elements(call).expect("elements");
        assert_eq!(
            measured.len(),
            expected.len(),
            "{wpm} wpm: element count (measured {measured:?})"
        );
        let dot = dot_ms(wpm);
        let pad = EDGE_MS / 2.0;
        for (i, (&(m_on, m_off), &(start, len))) in measured.iter().zip(&expected).enumerate() {
            let on = pad + f64::from(start) * dot;
            let off = on + f64::from(len) * dot;
            assert!(
                (m_on - on).abs() <= 2.0 && (m_off - off).abs() <= 2.0,
                "{wpm} wpm element {i}: measured {m_on:.2}..{m_off:.2} ms, expected {on:.2}..{off:.2} ms"
            );
        }
        // Gaps explicitly: within a character 1 dot, between characters 3.
        // 'D' = -.. : gap after its dash is one dot; 'D'→'L' is three dots.
        let gap_in_char = measured[1].0 - measured[0].1;
        let gap_between = measured[3].0 - measured[2].1;
        assert!(
            (gap_in_char - dot).abs() <= 2.0,
            "{wpm} wpm: intra-character gap {gap_in_char:.2} ms, dot {dot:.2}"
        );
        assert!(
            (gap_between - 3.0 * dot).abs() <= 2.0,
            "{wpm} wpm: inter-character gap {gap_between:.2} ms"
        );
        let total_ms = ms(pcm.len());
        let nominal = f64::from(units) * dot + EDGE_MS;
        assert!(
            (total_ms - nominal).abs() <= 1.0,
            "{wpm} wpm: length {total_ms:.2} ms, expected {nominal:.2}"
        );
    }
}

#[test]
fn word_gap_is_seven_dots() {
    let wpm = 20;
    let pcm = render("E E", wpm, TONE, RATE, -3.0).expect("render");
    let peak = 32_767.0 * 10f64.powf(-3.0 / 20.0);
    let m = keyed_intervals(&pcm, peak);
    assert_eq!(m.len(), 2, "{m:?}");
    let gap = m[1].0 - m[0].1;
    assert!(
        (gap - 7.0 * dot_ms(wpm)).abs() <= 2.0,
        "word gap {gap:.2} ms"
    );
}

#[test]
fn tone_frequency_by_zero_crossings() {
    for tone in [600, 800, 1_000] {
        // 'T' is a single dash: 180 ms of tone at 20 wpm.
        let pcm = render("T", 20, tone, RATE, -3.0).expect("render");
        // Count only the flat top (skip the edges) to measure the tone itself.
        let edge = (EDGE_MS * f64::from(RATE) / 1000.0) as usize;
        let body = &pcm[edge * 2..pcm.len() - edge * 2];
        let crossings = body.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        let seconds = body.len() as f64 / f64::from(RATE);
        let f = crossings as f64 / 2.0 / seconds;
        assert!(
            (f - f64::from(tone)).abs() <= f64::from(tone) * 0.02,
            "tone {tone} Hz measured {f:.1} Hz"
        );
    }
}

#[test]
fn keying_edges_do_not_click() {
    let level = -1.0f32;
    let amplitude = 32_767.0 * 10f64.powf(f64::from(level) / 20.0);
    let pcm = render("K1ABC", 25, TONE, RATE, level).expect("render");
    // A hard key would jump by up to the full amplitude between two samples.
    // A keyed sine with raised-cosine edges never steps more than the pure
    // tone's slope (2π f / rate × A) plus the envelope's slope (π / (2 edge)).
    let tone_step = 2.0 * std::f64::consts::PI * f64::from(TONE) / f64::from(RATE) * amplitude;
    let env_step = std::f64::consts::PI / 2.0 / (EDGE_MS / 1000.0 * f64::from(RATE)) * amplitude;
    let max_step = pcm
        .windows(2)
        .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
        .max()
        .unwrap_or(0);
    assert!(
        f64::from(max_step) <= tone_step + env_step + 2.0,
        "largest step {max_step}, tone slope allows {tone_step:.0} + envelope {env_step:.0}"
    );
    // The output starts and ends silent, and the first millisecond of each
    // element stays well below full amplitude (a soft attack, not a step).
    assert!(pcm[0].unsigned_abs() < 50 && pcm[pcm.len() - 1].unsigned_abs() < 50);
    let first_ms = (f64::from(RATE) / 1000.0) as usize;
    let onset_peak = pcm[..first_ms]
        .iter()
        .map(|s| f64::from(s.unsigned_abs()))
        .fold(0.0, f64::max);
    assert!(
        onset_peak < 0.25 * amplitude,
        "first ms peaks at {onset_peak:.0} of {amplitude:.0}"
    );
    // Full amplitude is reached in the middle of an element.
    let overall = pcm
        .iter()
        .map(|s| f64::from(s.unsigned_abs()))
        .fold(0.0, f64::max);
    assert!(
        (overall - amplitude).abs() < amplitude * 0.01,
        "peak {overall:.0}, level asks {amplitude:.0}"
    );
}

#[test]
fn invalid_characters_and_settings_are_refused() {
    match render("DL1ABC-5", 20, TONE, RATE, -6.0) {
        Err(MorseError::InvalidCharacter { ch, position, .. }) => {
            assert_eq!((ch, position), ('-', 6));
        }
        other => panic!("expected InvalidCharacter, got {other:?}"),
    }
    let msg = render("ÄB", 20, TONE, RATE, -6.0).unwrap_err().to_string();
    assert!(msg.contains("'Ä'") && msg.contains("A-Z"), "{msg}");
    assert_eq!(render("", 20, TONE, RATE, -6.0), Err(MorseError::Empty));
    assert!(matches!(
        render(" AB", 20, TONE, RATE, -6.0),
        Err(MorseError::InvalidCharacter { ch: ' ', .. })
    ));
    assert!(matches!(
        render("A  B", 20, TONE, RATE, -6.0),
        Err(MorseError::InvalidCharacter { ch: ' ', .. })
    ));
    assert_eq!(render("AB", 0, TONE, RATE, -6.0), Err(MorseError::Speed(0)));
    assert!(matches!(
        render("AB", 20, 3_000, 8_000, -6.0),
        Err(MorseError::Tone { .. })
    ));
    assert_eq!(
        render("AB", 20, TONE, 4_000, -6.0),
        Err(MorseError::Rate(4_000))
    );
    assert!(matches!(
        render("AB", 20, TONE, RATE, 1.0),
        Err(MorseError::Level(_))
    ));
    // Lower case is the same callsign.
    assert_eq!(
        render("dl1abc", 20, TONE, RATE, -6.0),
        render("DL1ABC", 20, TONE, RATE, -6.0)
    );
}

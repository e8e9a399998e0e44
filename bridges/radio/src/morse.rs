//! Morse identification of the station (DESIGN.md §5 `callsign`): ham rules
//! require a transmitting station to send its callsign at regular intervals.
//!
//! [`render`] turns a callsign into PCM: a sine keyed with PARIS timing and
//! raised-cosine edges, so the keying does not splatter clicks across the band.

use std::f64::consts::PI;

/// Length of each keying edge (rise or fall), in milliseconds. About 5 ms is
/// what CW transmitters use: short enough for crisp code, long enough that the
/// keying sidebands stay within a few hundred hertz.
pub const EDGE_MS: f64 = 5.0;

/// Accepted speeds in words per minute.
pub const WPM_RANGE: std::ops::RangeInclusive<u32> = 5..=60;
/// Accepted tone frequencies in hertz (an audio tone a voice radio passes).
pub const TONE_RANGE: std::ops::RangeInclusive<u32> = 200..=3_000;
/// Accepted output sample rates in hertz.
pub const RATE_RANGE: std::ops::RangeInclusive<u32> = 8_000..=192_000;

/// Why a Morse ID cannot be rendered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MorseError {
    /// A character Morse ID does not send (only A–Z, 0–9, `/` and single spaces).
    #[error("callsign {callsign:?}: character {ch:?} at position {position} cannot be sent as Morse ID (allowed: A-Z, 0-9, '/', spaces between words)")]
    InvalidCharacter {
        /// The callsign as configured.
        callsign: String,
        /// The offending character.
        ch: char,
        /// Its character position (0-based).
        position: usize,
    },
    /// Nothing to send.
    #[error("callsign is empty")]
    Empty,
    /// Speed outside [`WPM_RANGE`].
    #[error("Morse speed {0} wpm is outside 5..=60")]
    Speed(u32),
    /// Tone outside [`TONE_RANGE`] or too close to Nyquist for the rate.
    #[error("Morse tone {tone_hz} Hz is outside 200..=3000 Hz or not below a quarter of the {rate} Hz sample rate")]
    Tone {
        /// Requested tone.
        tone_hz: u32,
        /// Requested sample rate.
        rate: u32,
    },
    /// Sample rate outside [`RATE_RANGE`].
    #[error("sample rate {0} Hz is outside 8000..=192000")]
    Rate(u32),
    /// Level above full scale or not a number.
    #[error("Morse level {0} dBFS must be a number at or below 0")]
    Level(f32),
}

/// Dots and dashes of one character, or `None` if Morse ID does not send it.
fn code(ch: char) -> Option<&'static str> {
    Some(match ch {
        'A' => ".-",
        'B' => "-...",
        'C' => "-.-.",
        'D' => "-..",
        'E' => ".",
        'F' => "..-.",
        'G' => "--.",
        'H' => "....",
        'I' => "..",
        'J' => ".---",
        'K' => "-.-",
        'L' => ".-..",
        'M' => "--",
        'N' => "-.",
        'O' => "---",
        'P' => ".--.",
        'Q' => "--.-",
        'R' => ".-.",
        'S' => "...",
        'T' => "-",
        'U' => "..-",
        'V' => "...-",
        'W' => ".--",
        'X' => "-..-",
        'Y' => "-.--",
        'Z' => "--..",
        '0' => "-----",
        '1' => ".----",
        '2' => "..---",
        '3' => "...--",
        '4' => "....-",
        '5' => ".....",
        '6' => "-....",
        '7' => "--...",
        '8' => "---..",
        '9' => "----.",
        '/' => "-..-.",
        _ => return None,
    })
}

/// Key-down intervals in dot units: `(start, length)` pairs, plus the total
/// length in dot units (ending with the last element, no trailing gap).
///
/// PARIS timing: dot 1, dash 3, gap inside a character 1, between characters
/// 3, between words 7.
pub fn elements(callsign: &str) -> Result<(Vec<(u32, u32)>, u32), MorseError> {
    let words: Vec<&str> = callsign.split(' ').collect();
    if callsign.trim().is_empty() {
        return Err(MorseError::Empty);
    }
    let mut out = Vec::new();
    let mut t = 0u32;
    let mut position = 0usize;
    for (w, word) in words.iter().enumerate() {
        // An empty word means a leading, trailing or doubled space: refuse it
        // rather than send an odd gap nobody asked for.
        if word.is_empty() {
            return Err(MorseError::InvalidCharacter {
                callsign: callsign.to_owned(),
                ch: ' ',
                position,
            });
        }
        if w > 0 {
            t += 7;
            position += 1; // the space
        }
        for (c, ch) in word.chars().enumerate() {
            let upper = ch.to_ascii_uppercase();
            let dots = code(upper).ok_or_else(|| MorseError::InvalidCharacter {
                callsign: callsign.to_owned(),
                ch,
                position,
            })?;
            if c > 0 {
                t += 3;
            }
            for (e, sym) in dots.chars().enumerate() {
                if e > 0 {
                    t += 1;
                }
                let len = if sym == '-' { 3 } else { 1 };
                out.push((t, len));
                t += len;
            }
            position += 1;
        }
    }
    Ok((out, t))
}

/// Length of one dot in milliseconds at `wpm` (PARIS: 50 dot units per word).
pub fn dot_ms(wpm: u32) -> f64 {
    1200.0 / f64::from(wpm)
}

/// Renders `callsign` as Morse at `wpm`, a `tone_hz` sine at `rate` Hz with
/// peak level `level_dbfs` (0 dBFS = full-scale peak).
///
/// Letters are case-insensitive. Each element's keying edges are raised-cosine
/// ramps of [`EDGE_MS`] centred on the nominal element boundaries, so the
/// envelope crosses half amplitude exactly at PARIS times. The output starts
/// and ends with half an edge of near-silence around the first and last
/// element; element `i` of [`elements`] starts at
/// `EDGE_MS / 2 + start × dot_ms(wpm)`.
pub fn render(
    callsign: &str,
    wpm: u32,
    tone_hz: u32,
    rate: u32,
    level_dbfs: f32,
) -> Result<Vec<i16>, MorseError> {
    if !WPM_RANGE.contains(&wpm) {
        return Err(MorseError::Speed(wpm));
    }
    if !RATE_RANGE.contains(&rate) {
        return Err(MorseError::Rate(rate));
    }
    if !TONE_RANGE.contains(&tone_hz) || tone_hz * 4 > rate {
        return Err(MorseError::Tone { tone_hz, rate });
    }
    if level_dbfs.is_nan() || level_dbfs > 0.0 {
        return Err(MorseError::Level(level_dbfs));
    }
    let (elements, units) = elements(callsign)?;
    let rate_f = f64::from(rate);
    let dot_s = dot_ms(wpm) / 1000.0;
    // The edge never exceeds half a dot, so a dot still reaches full amplitude.
    let edge_s = (EDGE_MS / 1000.0).min(dot_s / 2.0);
    let pad_s = edge_s / 2.0;
    let total = ((f64::from(units) * dot_s + 2.0 * pad_s) * rate_f).ceil() as usize;
    let amplitude = 32_767.0 * 10f64.powf(f64::from(level_dbfs) / 20.0);
    let omega = 2.0 * PI * f64::from(tone_hz) / rate_f;
    let mut pcm = vec![0i16; total];
    for (start, len) in elements {
        let on = pad_s + f64::from(start) * dot_s;
        let off = on + f64::from(len) * dot_s;
        let first = (((on - edge_s / 2.0) * rate_f).floor().max(0.0)) as usize;
        let last = (((off + edge_s / 2.0) * rate_f).ceil() as usize).min(total);
        for (n, sample) in pcm.iter_mut().enumerate().take(last).skip(first) {
            let t = n as f64 / rate_f;
            let env = ramp((t - on) / edge_s) * ramp((off - t) / edge_s);
            // The phase runs continuously from the start of the ID, so every
            // element starts where the oscillator is — as a keyed transmitter does.
            let v = amplitude * env * (omega * n as f64).sin();
            *sample = v.round().clamp(-32_768.0, 32_767.0) as i16;
        }
    }
    Ok(pcm)
}

/// Raised-cosine ramp over `x` in [-0.5, 0.5]: 0 below, 1 above, 0.5 at 0.
fn ramp(x: f64) -> f64 {
    if x <= -0.5 {
        0.0
    } else if x >= 0.5 {
        1.0
    } else {
        0.5 - 0.5 * (PI * (x + 0.5)).cos()
    }
}

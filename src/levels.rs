//! `walkie-bridge levels --radio NAME`: setting a radio's audio levels, like
//! SvxLink's `siglevdetcal` and `devcal`.
//!
//! - Receive (the default): the radio's capture level live — RMS and a peak held
//!   for [`PEAK_HOLD`], in dBFS, on a bar with the VOX threshold marked — and
//!   what its COS detector (line, rigctld or VOX) says. Nothing is keyed: the PTT
//!   is opened, driven unkeyed, and left so.
//! - Transmit (`--tone HZ --level DBFS`): a sine through the radio's own
//!   transmit controller, the one the daemon keys with, so `tx_delay` and
//!   `tx_timeout_s` apply as on the air. Keyed only while the command runs: the
//!   tone stops and the radio unkeys when `--seconds` ends, when `tx_timeout_s`
//!   cuts it, on an error, and on Ctrl-C or SIGTERM (the radio crate's signal
//!   handler unkeys every PTT before the process ends; its panic hook on a
//!   panic). The unkey is confirmed by reading the PTT back where it can be.
//!
//! Levels are RMS dBFS, as everywhere in the bridge (VOX threshold, recordings):
//! a full-scale sine reads −3.0 dBFS.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use walkie_endpoint::audio::dbfs;
use walkie_radio::audio::{CaptureEvent, CpalSoundCard, SoundCard, FRAME_SAMPLES, SAMPLE_RATE};
use walkie_radio::endpoint::{CardSink, PlaybackSlot};
use walkie_radio::ptt::safety;
use walkie_radio::tx::{TxCommand, TxController, TxRunner};

use crate::config::{Config, EndpointId, EndpointKind, EndpointSpec, RadioConfig};
use crate::endpoints::{radio_cos_settings, radio_tx_settings};

/// How long the peak mark stays at a peak before it follows the level down.
pub const PEAK_HOLD: Duration = Duration::from_secs(2);
/// One meter reading per this much audio.
const READING: Duration = Duration::from_millis(100);
/// The bar's range, in dBFS.
const BAR_FLOOR_DBFS: f32 = -60.0;
const BAR_WIDTH: usize = 50;
/// How long after the tone's end the controller may take to unkey beyond
/// tx_delay + ptt_hang (the card's buffer), before it is shut down.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// A capture that delivers nothing for this long is lost.
const CAPTURE_SILENCE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LevelsError {
    #[error("no [radio.{0}] is configured")]
    NoSuchRadio(String),
    #[error("radio.{radio}: {reason}")]
    Radio { radio: String, reason: String },
    #[error("radio.{radio}: tx_timeout_s ({seconds} s) cut the tone; the radio is unkeyed")]
    TimedOut { radio: String, seconds: u64 },
    #[error("radio.{radio}: the PTT failed while keyed; the radio was unkeyed")]
    PttFault { radio: String },
}

/// What the command was asked for.
pub struct LevelsRequest {
    pub radio: String,
    /// `Some` transmits a tone; `None` shows the receive meter.
    pub tone: Option<Tone>,
    /// Stop after this much (receive: of audio; transmit: of tone). `None`:
    /// until Ctrl-C (or, for a tone, `tx_timeout_s`).
    pub seconds: Option<f64>,
}

#[derive(Clone, Copy, Debug)]
pub struct Tone {
    pub hz: f64,
    /// RMS level in dBFS (a full-scale sine is −3.0).
    pub level_dbfs: f64,
}

fn radio_config<'a>(config: &'a Config, name: &str) -> Result<&'a RadioConfig, LevelsError> {
    let id = EndpointId {
        kind: EndpointKind::Radio,
        name: name.to_owned(),
    };
    match config.endpoint(&id) {
        Some(EndpointSpec::Radio(radio)) => Ok(radio),
        _ => Err(LevelsError::NoSuchRadio(name.to_owned())),
    }
}

fn radio_error(radio: &str) -> impl Fn(String) -> LevelsError + '_ {
    move |reason| LevelsError::Radio {
        radio: radio.to_owned(),
        reason,
    }
}

/// Shows the receive level and COS until `seconds` of audio were measured (or
/// forever). `live` redraws one line in place (a terminal); otherwise one line
/// per reading is written (a log, a pipe).
pub fn receive_meter(
    config: &Config,
    request: &LevelsRequest,
    out: &mut dyn Write,
    live: bool,
) -> Result<(), LevelsError> {
    let name = request.radio.as_str();
    let radio = radio_config(config, name)?;
    let failed = radio_error(name);
    let ptt = crate::radio_cli::ptt_config(radio).map_err(|e| failed(e.to_string()))?;
    let port = radio.port.as_ref().map(|p| p.display().to_string());
    let (cos, _) = radio_cos_settings(radio);
    // Opening drives the PTT unkeyed; it stays open (and unkeyed) meanwhile.
    let mut hardware = walkie_radio::open_hardware(
        &ptt,
        port.as_deref(),
        &cos,
        walkie_radio::rx::DEFAULT_DEBOUNCE,
    )
    .map_err(|e| failed(e.to_string()))?;
    let card = CpalSoundCard::new(radio.audio_in.clone(), radio.audio_out.clone());
    let mut capture = card.open_capture().map_err(|e| failed(e.to_string()))?;
    // The capture delivers on a tokio channel; a timer to notice a silent card.
    let clock = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let threshold = radio.vox.threshold_dbfs as f32;
    let _ = writeln!(
        out,
        "radio.{name}: {} at {} Hz, {} channel(s); COS {}; VOX threshold {threshold:.1} dBFS (|)",
        radio.audio_in,
        capture.format.rate,
        capture.format.channels,
        describe_cos(radio),
    );

    let frames_per_reading = (READING.as_millis() / 20) as usize;
    let mut reading: Vec<i16> = Vec::with_capacity(FRAME_SAMPLES * frames_per_reading);
    let mut peak = PeakHold::default();
    let mut measured = Duration::ZERO;
    let limit = request.seconds.map(Duration::from_secs_f64);
    loop {
        let next = clock
            .block_on(async { tokio::time::timeout(CAPTURE_SILENCE, capture.events.recv()).await });
        let frame = match next {
            Ok(Some(CaptureEvent::Frame(frame))) => frame,
            Ok(Some(CaptureEvent::Disconnected(why))) => return Err(failed(why)),
            Ok(None) => return Err(failed(format!("{} stopped", radio.audio_in))),
            Err(_) => {
                return Err(failed(format!(
                    "{} delivered no audio for {CAPTURE_SILENCE:?}",
                    radio.audio_in
                )))
            }
        };
        let now = Instant::now();
        hardware.squelch.feed_audio(&frame, now);
        reading.extend_from_slice(&frame);
        if reading.len() < FRAME_SAMPLES * frames_per_reading {
            continue;
        }
        measured += READING;
        let open = hardware
            .squelch
            .poll(now)
            .map_err(|e| failed(e.to_string()))?;
        let level = dbfs(&reading);
        let peak_level = peak.push(peak_dbfs(&reading), measured);
        let line = meter_line(level, peak_level, threshold, open);
        let _ = if live {
            write!(out, "\r{line}")
        } else {
            writeln!(out, "{line}")
        };
        let _ = out.flush();
        reading.clear();
        if limit.is_some_and(|limit| measured >= limit) {
            if live {
                let _ = writeln!(out);
            }
            return Ok(());
        }
    }
}

fn describe_cos(radio: &RadioConfig) -> String {
    match radio.cos {
        crate::config::Cos::Vox => "VOX".to_owned(),
        crate::config::Cos::Rigctld => "from rigctld".to_owned(),
        crate::config::Cos::Line { line, active_low } => {
            format!(
                "{line:?} line{}",
                if active_low { ", active low" } else { "" }
            )
        }
    }
}

/// The loudest sample's level in dBFS (a sine's peak is 3 dB above its RMS).
fn peak_dbfs(pcm: &[i16]) -> f32 {
    let peak = pcm
        .iter()
        .map(|s| i32::from(*s).unsigned_abs())
        .max()
        .unwrap_or(0);
    if peak == 0 {
        walkie_endpoint::audio::DBFS_FLOOR
    } else {
        20.0 * (peak as f32 / 32_768.0).log10()
    }
}

/// A peak that holds for [`PEAK_HOLD`] of audio, then follows the signal.
#[derive(Default)]
struct PeakHold {
    level: Option<f32>,
    since: Duration,
}

impl PeakHold {
    fn push(&mut self, level: f32, at: Duration) -> f32 {
        match self.level {
            Some(held) if held >= level && at.saturating_sub(self.since) < PEAK_HOLD => held,
            _ => {
                self.level = Some(level);
                self.since = at;
                level
            }
        }
    }
}

/// `  -23.0 dBFS  peak  -20.0  [##########################-----|-----------]  COS open`
pub fn meter_line(level: f32, peak: f32, threshold: f32, cos_open: bool) -> String {
    let column = |dbfs: f32| -> usize {
        let share = ((dbfs - BAR_FLOOR_DBFS) / -BAR_FLOOR_DBFS).clamp(0.0, 1.0);
        ((share * BAR_WIDTH as f32).round() as usize).min(BAR_WIDTH - 1)
    };
    let filled = if level <= BAR_FLOOR_DBFS {
        0
    } else {
        column(level) + 1
    };
    let mut bar: Vec<char> = (0..BAR_WIDTH)
        .map(|i| if i < filled { '#' } else { '-' })
        .collect();
    bar[column(threshold)] = '|';
    if peak > BAR_FLOOR_DBFS {
        bar[column(peak)] = '>';
    }
    format!(
        "{level:7.1} dBFS  peak {peak:6.1}  [{}]  COS {}",
        bar.into_iter().collect::<String>(),
        if cos_open { "open  " } else { "closed" }
    )
}

/// Keys the radio and sends the tone until `seconds` pass (or Ctrl-C, or
/// `tx_timeout_s`), then unkeys and confirms it by reading the PTT back.
pub fn transmit_tone(
    config: &Config,
    request: &LevelsRequest,
    tone: Tone,
    out: &mut dyn Write,
) -> Result<(), LevelsError> {
    let name = request.radio.as_str();
    let radio = radio_config(config, name)?;
    let failed = radio_error(name);
    // Before anything can key: a panic or SIGINT/SIGTERM unkeys every PTT
    // registered with the safety net (the transmit controller registers its own).
    safety::install_panic_hook();
    safety::install_signal_unkey(safety::AfterSignal::Reraise)
        .map_err(|e| failed(e.to_string()))?;

    let ptt = crate::radio_cli::ptt_config(radio).map_err(|e| failed(e.to_string()))?;
    let driver = walkie_radio::ptt::open_ptt(&ptt).map_err(|e| failed(e.to_string()))?;
    let card = CpalSoundCard::new(radio.audio_in.clone(), radio.audio_out.clone());
    let playback = card.open_playback().map_err(|e| failed(e.to_string()))?;
    let format = playback.format();
    let slot = PlaybackSlot::default();
    slot.put(Some(playback));
    let mut settings = radio_tx_settings(radio);
    // A test tone carries no identification: it is not traffic.
    settings.id_interval = None;
    let mut controller = TxController::new(name, settings, driver, Box::new(CardSink::new(slot)))
        .map_err(|e| failed(e.to_string()))?;
    let keyed = controller.keyed_flag();
    let faults = controller.fault_counter();
    let runner = TxRunner::spawn(controller);
    let _ = writeln!(
        out,
        "radio.{name}: keying with a {:.0} Hz tone at {:.1} dBFS RMS into {} ({} Hz, {} ch); \
         tx_timeout_s {} s; Ctrl-C stops and unkeys",
        tone.hz,
        tone.level_dbfs,
        radio.audio_out,
        format.rate,
        format.channels,
        radio.tx_timeout.as_secs()
    );

    let outcome = send_tone(&runner, tone, request.seconds, &keyed, &faults, radio, name);
    runner.send(TxCommand::FloorReleased);
    if outcome.is_ok() {
        // The card still plays up to tx_delay of held tone, then ptt_hang
        // passes: the controller unkeys by itself. Shutting it down at once
        // would cut the tone short.
        let deadline = Instant::now() + radio.tx_delay + radio.ptt_hang + DRAIN_GRACE;
        // Polled: the controller shows its keying through an atomic flag only.
        while keyed.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    runner.shutdown();
    let report = crate::radio_cli::unkey(config, name).map_err(|e| failed(e.to_string()))?;
    match report.read_back_keyed {
        Some(true) => return Err(failed("still reads back KEYED after the tone".into())),
        Some(false) => {
            let _ = writeln!(out, "radio.{name}: unkeyed, confirmed by read-back");
        }
        None => {
            let _ = writeln!(out, "radio.{name}: unkeyed (this PTT cannot be read back)");
        }
    }
    outcome
}

/// Feeds 20 ms tone frames on the wall clock (the card plays them in real
/// time) until the time is up or the transmit machine unkeyed on its own.
fn send_tone(
    runner: &TxRunner,
    tone: Tone,
    seconds: Option<f64>,
    keyed: &std::sync::atomic::AtomicBool,
    faults: &std::sync::atomic::AtomicU32,
    radio: &RadioConfig,
    name: &str,
) -> Result<(), LevelsError> {
    let amplitude = 32_768.0 * 10f64.powf(tone.level_dbfs / 20.0) * std::f64::consts::SQRT_2;
    let step = std::f64::consts::TAU * tone.hz / f64::from(SAMPLE_RATE);
    let frame_time = Duration::from_millis(20);
    // The controller holds the first tx_delay of tone while the radio keys up
    // and plays all of it: `seconds` of tone sent is `seconds` on the air.
    let end = seconds.map(|s| Instant::now() + Duration::from_secs_f64(s));
    // The tone is a talker's transmission to the controller.
    runner.send(TxCommand::FloorTakenByOther);
    let mut phase = 0.0f64;
    let mut next = Instant::now();
    let mut was_keyed = false;
    loop {
        let frame: Vec<i16> = (0..FRAME_SAMPLES)
            .map(|_| {
                let sample = (amplitude * phase.sin()).round().clamp(-32_768.0, 32_767.0);
                phase = (phase + step) % std::f64::consts::TAU;
                sample as i16
            })
            .collect();
        if !runner.send(TxCommand::Audio(frame)) {
            return Err(LevelsError::Radio {
                radio: name.to_owned(),
                reason: "the transmit controller stopped".into(),
            });
        }
        next += frame_time;
        if end.is_some_and(|end| next >= end) {
            return Ok(());
        }
        // Pacing the tone in real time is the point here, not a wait for an event.
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let keyed_now = keyed.load(Ordering::Acquire);
        if faults.load(Ordering::Acquire) > 0 {
            return Err(LevelsError::PttFault {
                radio: name.to_owned(),
            });
        }
        if was_keyed && !keyed_now {
            return Err(LevelsError::TimedOut {
                radio: name.to_owned(),
                seconds: radio.tx_timeout.as_secs(),
            });
        }
        was_keyed |= keyed_now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meter_marks_level_peak_and_threshold() {
        let line = meter_line(-30.0, -12.0, -40.0, true);
        assert!(line.starts_with("  -30.0 dBFS  peak  -12.0"), "{line}");
        let bar: String = line
            .split('[')
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .expect("bar")
            .to_owned();
        assert_eq!(bar.chars().count(), BAR_WIDTH);
        // -60..0 over 50 columns: -30 fills 26, the threshold at -40 is column 17
        // (inside the filled part), the peak at -12 column 40.
        assert_eq!(bar.chars().position(|c| c == '|'), Some(17));
        assert_eq!(bar.chars().position(|c| c == '>'), Some(40));
        assert_eq!(bar.chars().filter(|c| *c == '#').count(), 25);
        assert!(line.ends_with("COS open  "), "{line}");
        let silent = meter_line(-120.0, -120.0, -40.0, false);
        assert!(!silent.contains('#') && !silent.contains('>'), "{silent}");
    }

    #[test]
    fn the_peak_holds_then_follows() {
        let mut peak = PeakHold::default();
        assert_eq!(peak.push(-10.0, Duration::from_millis(100)), -10.0);
        assert_eq!(peak.push(-30.0, Duration::from_millis(1_000)), -10.0);
        assert_eq!(peak.push(-30.0, Duration::from_millis(2_200)), -30.0);
        assert_eq!(peak.push(-5.0, Duration::from_millis(2_300)), -5.0);
    }

    #[test]
    fn a_sine_peaks_three_db_above_its_rms() {
        let amplitude = 32_768.0 * 10f64.powf(-20.0 / 20.0) * std::f64::consts::SQRT_2;
        let sine: Vec<i16> = (0..4_800)
            .map(|i| (amplitude * (i as f64 * std::f64::consts::TAU / 48.0).sin()) as i16)
            .collect();
        assert!((dbfs(&sine) + 20.0).abs() < 0.05, "{}", dbfs(&sine));
        assert!(
            (peak_dbfs(&sine) + 16.99).abs() < 0.05,
            "{}",
            peak_dbfs(&sine)
        );
    }
}

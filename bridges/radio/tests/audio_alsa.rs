//! The cpal sound card through a real ALSA path: alsa-lib's `file` plugin.
//!
//! There is no sound card on CI machines, so a private asoundrc (found by
//! alsa-lib as `$HOME/.asoundrc`, with HOME pointed at a temp dir) defines
//! PCMs whose capture reads a raw file (`infile`) and whose playback writes
//! one (`file`), over the `null` PCM. cpal opens them like any other ALSA
//! device — found by name through their `hint` sections, exactly as a
//! configured `audio_in = "plughw:CARD=Device,DEV=0"` is found.
//!
//! The `null` PCM does not pace: capture runs as fast as the files can be
//! read, playback as fast as they can be written. Tests therefore wait on
//! data and on `Playback::drained`, never on time.

#[path = "../../endpoint/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use walkie_endpoint::audio::{resample, VoxConfig, VoxEvent};
use walkie_radio::audio::{CaptureEvent, CpalSoundCard, SoundCard, SAMPLE_RATE};
use walkie_radio::rx::{RxDetector, RxEvent, Squelch, VoxSquelch};

struct Alsa {
    dir: PathBuf,
    /// 48 kHz reference of the speech the `radio_speech_in` PCM captures at 44.1 kHz.
    speech48: Vec<i16>,
    /// The spurts fixture and each spurt's true (start, end) in ms.
    spurts: Vec<i16>,
    truth: Vec<(f64, f64)>,
}

fn sox(args: &[&str]) {
    let out = Command::new("sox")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run sox ({e}): apt-get install sox"));
    assert!(
        out.status.success(),
        "sox {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn espeak(text: &str, wav: &Path) {
    let out = Command::new("espeak-ng")
        .arg("-w")
        .arg(wav)
        .arg(text)
        .output()
        .unwrap_or_else(|e| panic!("cannot run espeak-ng ({e}): apt-get install espeak-ng"));
    assert!(out.status.success(), "espeak-ng failed");
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// Start and end (ms) of the audible part of `pcm`: the first and last
/// 10 ms window louder than -40 dBFS (the VOX threshold used below).
fn audible_span(pcm: &[i16], rate: u32) -> (f64, f64) {
    let win = (rate / 100) as usize;
    let loud: Vec<usize> = pcm
        .chunks(win)
        .enumerate()
        .filter(|(_, w)| walkie_endpoint::audio::dbfs(w) > -40.0)
        .map(|(i, _)| i)
        .collect();
    let first = *loud.first().expect("audible speech");
    let last = *loud.last().expect("audible speech");
    (first as f64 * 10.0, (last + 1) as f64 * 10.0)
}

/// Builds the fixtures and the asoundrc once per test binary, and points
/// alsa-lib at it before any ALSA call (alsa-lib reads its config once).
fn alsa() -> &'static Alsa {
    static A: OnceLock<Alsa> = OnceLock::new();
    A.get_or_init(|| {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        remove_stale(&tmp);
        let root = tmp.join(format!("walkie-radio-alsa-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("temp dir");
        let f = common::fixtures();
        // Capture fixture 1: the shared speech at 44.1 kHz (the card's "native" rate).
        let speech44 = f.path("speech44100.wav");
        sox(&[
            p(&speech44),
            "-t",
            "raw",
            "-e",
            "signed",
            "-b",
            "16",
            "-L",
            p(&root.join("speech44.raw")),
        ]);
        let speech48 = common::speech(48_000);
        // Capture fixture 2: three talk spurts separated by 1.5 s of silence, made with sox.
        let mut parts = Vec::new();
        let silence = root.join("silence.wav");
        sox(&[
            "-n",
            "-r",
            "48000",
            "-c",
            "1",
            "-b",
            "16",
            p(&silence),
            "trim",
            "0",
            "1.5",
        ]);
        parts.push(silence.clone());
        let mut truth = Vec::new();
        let mut offset_ms = 1_500.0;
        for (i, text) in ["radio check", "this is station two, over", "roger"]
            .iter()
            .enumerate()
        {
            let raw = root.join(format!("spurt{i}-espeak.wav"));
            espeak(text, &raw);
            let wav = root.join(format!("spurt{i}.wav"));
            sox(&[p(&raw), "-r", "48000", "-c", "1", "-b", "16", p(&wav)]);
            let (pcm, _) = common::read_wav(&wav);
            let (s, e) = audible_span(&pcm, 48_000);
            truth.push((offset_ms + s, offset_ms + e));
            offset_ms += pcm.len() as f64 / 48.0 + 1_500.0;
            parts.push(wav);
            parts.push(silence.clone());
        }
        let spurts_wav = root.join("spurts.wav");
        let mut args: Vec<&str> = parts.iter().map(|x| p(x)).collect();
        args.push(p(&spurts_wav));
        sox(&args);
        sox(&[
            p(&spurts_wav),
            "-t",
            "raw",
            "-e",
            "signed",
            "-b",
            "16",
            "-L",
            p(&root.join("spurts.raw")),
        ]);
        let (spurts, _) = common::read_wav(&spurts_wav);

        let asoundrc = format!(
            r#"
pcm.radio_speech_in {{
    type file
    slave.pcm null
    file "/dev/null"
    infile "{dir}/speech44.raw"
    format raw
    hint {{ show on description "walkie test: speech capture" }}
}}
pcm.radio_spurts_in {{
    type file
    slave.pcm null
    file "/dev/null"
    infile "{dir}/spurts.raw"
    format raw
    hint {{ show on description "walkie test: talk spurts capture" }}
}}
pcm.radio_out {{
    type file
    slave.pcm null
    file "{dir}/out.raw"
    format raw
    hint {{ show on description "walkie test: playback into a file" }}
}}
"#,
            dir = root.display()
        );
        std::fs::write(root.join(".asoundrc"), asoundrc).expect("asoundrc");
        // alsa-lib loads ~/.asoundrc through $HOME. Set here, inside the
        // OnceLock, before any test of this binary touches ALSA.
        std::env::set_var("HOME", &root);
        Alsa {
            dir: root,
            speech48,
            spurts,
            truth,
        }
    })
}

/// Drops the directories of earlier test processes that have exited.
fn remove_stale(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("walkie-radio-alsa-") {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Collects captured 48 kHz audio until `want` samples or a disconnect.
async fn capture(card: &CpalSoundCard, want: usize) -> (Vec<i16>, u32) {
    let mut cap = card.open_capture().expect("open capture");
    let rate = cap.format.rate;
    let mut out = Vec::new();
    // A generous bound only to turn a hang into a failure; the file PCM
    // delivers as fast as it can read.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while out.len() < want {
        match tokio::time::timeout_at(deadline, cap.events.recv()).await {
            Ok(Some(CaptureEvent::Frame(f))) => {
                assert_eq!(f.len(), 960, "20 ms frames");
                out.extend(f);
            }
            Ok(Some(CaptureEvent::Disconnected(e))) => panic!("capture disconnected: {e}"),
            Ok(None) => panic!("capture ended"),
            Err(_) => panic!("capture stalled at {} of {want} samples", out.len()),
        }
    }
    assert_eq!(
        cap.dropped.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "frames were dropped before the speech was read"
    );
    (out, rate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpal_capture_through_alsa_file_plugin_yields_the_speech() {
    let a = alsa();
    // The file holds 44.1 kHz samples: open the PCM at 44.1 kHz, as a card
    // whose native rate is 44.1 kHz; the SoundCard resamples to 48 kHz.
    let card = CpalSoundCard::new("radio_speech_in", "radio_out")
        .with_rate(Some(44_100))
        .with_capture_queue(4_000);
    let (got, rate) = capture(&card, a.speech48.len() + 48_000).await;
    assert_eq!(rate, 44_100);
    let (lag, corr) = common::best_lag(&a.speech48, &got, -96..=96);
    println!("capture: correlation {corr:.4} at lag {lag} samples");
    assert!(
        corr >= 0.8,
        "captured speech correlates {corr:.3} (lag {lag})"
    );
    // After the file ends, the null PCM gives silence.
    let tail = &got[a.speech48.len() + 4_800..];
    assert!(common::energy_db(tail) < -80.0, "tail is not silent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpal_playback_through_alsa_file_plugin_writes_what_we_played() {
    let a = alsa();
    // Played at 44.1 kHz, so the 48 → 44.1 kHz resampling is part of the path.
    let card = CpalSoundCard::new("radio_speech_in", "radio_out").with_rate(Some(44_100));
    let mut pb = card.open_playback().expect("open playback");
    let format = pb.format();
    assert_eq!(format.rate, 44_100);
    // More than the 4 s playback queue at once is refused, not buffered.
    let too_long = vec![0i16; 5 * 48_000];
    assert!(
        pb.play_complete(&too_long).is_err(),
        "5 s accepted into a 4 s queue"
    );
    // The null PCM pulls samples as fast as it can: audio queued in pieces
    // would have silence inserted between them (an underrun, which a paced
    // card avoids). So queue 3.5 s of speech in one go.
    let speech = &a.speech48[..48_000 * 7 / 2];
    pb.play_complete(speech).expect("play");
    pb.drained().await;
    drop(pb); // closes the PCM: the file plugin flushes out.raw
    let bytes = std::fs::read(a.dir.join("out.raw")).expect("out.raw");
    let channels = usize::from(format.channels);
    let samples: Vec<i16> = bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .step_by(channels)
        .collect();
    let written = resample(&samples, format.rate, SAMPLE_RATE).expect("resample");
    // Silence written before the first play() shifts the speech: align on its onset.
    let (ref_start, ref_end) = common::active_span(speech, 300);
    let (out_start, out_end) = common::active_span(&written, 300);
    let coarse = out_start as isize - ref_start as isize;
    let (lag, corr) = common::best_lag(speech, &written, coarse - 96..=coarse + 96);
    let ref_ms = (ref_end - ref_start) as f64 / 48.0;
    let out_ms = (out_end - out_start) as f64 / 48.0;
    println!(
        "playback at {} Hz x{}: correlation {corr:.4}, speech {ref_ms:.1} ms played, {out_ms:.1} ms written",
        format.rate, format.channels
    );
    assert!(
        corr >= 0.8,
        "written audio correlates {corr:.3} (lag {lag})"
    );
    assert!(
        (out_ms - ref_ms).abs() <= 5.0,
        "duration {out_ms:.1} ms, played {ref_ms:.1} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vox_on_captured_audio_finds_the_talk_spurts_and_the_gate_mutes_our_own() {
    let a = alsa();
    let card = CpalSoundCard::new("radio_spurts_in", "radio_out")
        .with_rate(Some(48_000))
        .with_capture_queue(4_000);
    let (got, _) = capture(&card, a.spurts.len()).await;
    let got = &got[..a.spurts.len()];
    let config = VoxConfig {
        threshold_dbfs: -40.0,
        attack_ms: 40,
        hang_ms: 800,
    };
    // VOX alone: every spurt, start and end within ±60 ms.
    let mut vox = VoxSquelch::new(config);
    let t0 = Instant::now();
    for (i, frame) in got.chunks(960).enumerate() {
        vox.feed_audio(frame, t0 + Duration::from_millis(20 * i as u64));
    }
    let events = vox.take_events();
    let mut found = Vec::new();
    let mut open = None;
    for e in &events {
        match *e {
            VoxEvent::Opened { at_ms } => open = Some(at_ms as f64 - f64::from(config.attack_ms)),
            VoxEvent::Closed { at_ms } => {
                let start = open.take().expect("closed without open");
                found.push((start, at_ms as f64 - f64::from(config.hang_ms)));
            }
        }
    }
    println!("truth {:?}\nvox   {found:?}", a.truth);
    assert_eq!(
        found.len(),
        a.truth.len(),
        "spurts found: {found:?}, truth {:?}",
        a.truth
    );
    for (i, (f, t)) in found.iter().zip(&a.truth).enumerate() {
        assert!(
            (f.0 - t.0).abs() <= 60.0 && (f.1 - t.1).abs() <= 60.0,
            "spurt {i}: VOX {:.0}..{:.0} ms, truth {:.0}..{:.0} ms",
            f.0,
            f.1,
            t.0,
            t.1
        );
    }
    // Behind the gate.
    let mut det = RxDetector::new(
        Box::new(VoxSquelch::new(config)),
        Duration::from_millis(300),
    );
    // Spurt 2 stands for our own transmission leaking back into the
    // receiver: keyed 100 ms before it starts, unkeyed 100 ms before its
    // audio ends (the last of it still in the card's buffers), then muted
    // for 300 ms. Spurts 1 and 3 are real receptions.
    let tx_on = a.truth[1].0 - 100.0;
    let tx_off = a.truth[1].1 - 100.0;
    let mut gated = Vec::new();
    let mut keyed = false;
    for (i, frame) in got.chunks(960).enumerate() {
        let ms = 20.0 * i as f64;
        let now = t0 + Duration::from_millis(20 * i as u64);
        if !keyed && ms >= tx_on && ms < tx_off {
            keyed = true;
            assert_eq!(det.set_transmitting(true, now), None);
        } else if keyed && ms >= tx_off {
            keyed = false;
            det.set_transmitting(false, now);
        }
        det.feed_audio(frame, now);
        if let Some(e) = det.poll(now).expect("poll") {
            gated.push((ms, e));
        }
    }
    println!("gated {gated:?}");
    let starts: Vec<f64> = gated
        .iter()
        .filter(|(_, e)| *e == RxEvent::Started)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(starts.len(), 2, "{gated:?}");
    assert!((starts[0] - a.truth[0].0).abs() < 100.0, "{gated:?}");
    assert!((starts[1] - a.truth[2].0).abs() < 100.0, "{gated:?}");
}

#[test]
fn unknown_device_names_are_clear_errors() {
    alsa();
    let card = CpalSoundCard::new("no-such-card-xyz", "no-such-card-xyz");
    let err = card.open_capture().expect_err("no such card").to_string();
    assert!(err.contains("no-such-card-xyz"), "{err}");
    // The description matches too: "talk spurts" is unique to one test PCM.
    let dev = walkie_radio::audio::find_device(
        "talk spurts",
        walkie_radio::audio::DeviceDirection::Capture,
    )
    .expect("found by description");
    assert_eq!(
        cpal::traits::DeviceTrait::id(&dev).expect("id").id(),
        "radio_spurts_in"
    );
    // "walkie test" matches all three: ambiguous, listing them.
    let err = walkie_radio::audio::find_device(
        "walkie test",
        walkie_radio::audio::DeviceDirection::Capture,
    )
    .expect_err("ambiguous")
    .to_string();
    assert!(
        err.contains("radio_out") && err.contains("radio_spurts_in"),
        "{err}"
    );
}

//! `walkie-bridge levels --radio NAME` (issue 19 item 3), the real binary with a
//! real hamlib rigctld as the PTT. The sound card is ALSA's `file` plugin on the
//! `null` PCM, found by name through hints in the test's own asoundrc (HOME):
//! capture reads a sine made here, playback writes what the radio would have
//! sent. ALSA's null PCM does not pace, so the tone reaches the file in 20 ms
//! bursts between stretches of digital silence; the checks measure the bursts.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use walkie_harness::Rigctld;

const IN_RATE: u32 = 44_100;

struct Bench {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Bench {
    /// A radio keyed through `rig`, COS by VOX at -30 dBFS, its capture a 1 kHz
    /// sine at `input_dbfs` RMS, `tx_timeout_s` as given.
    fn new(rig: &Rigctld, input_dbfs: f64, tx_timeout_s: u64) -> Bench {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        write_sine(&root.join("in.raw"), 1_000.0, input_dbfs, 3.0);
        std::fs::write(
            root.join(".asoundrc"),
            format!(
                r#"
pcm.levels_in {{
    type file
    slave.pcm null
    file "/dev/null"
    infile "{dir}/in.raw"
    format raw
    hint {{ show on description "walkie test: a sine to measure" }}
}}
pcm.levels_out {{
    type file
    slave.pcm null
    file "{dir}/out.raw"
    format raw
    hint {{ show on description "walkie test: what the radio sends" }}
}}
"#,
                dir = root.display()
            ),
        )
        .expect("asoundrc");
        let config = root.join("walkie.toml");
        std::fs::write(
            &config,
            format!(
                r##"
[homeserver]
url = "http://127.0.0.1:8008"
domain = "example.org"

[appservice]
listen = "127.0.0.1:29333"
id = "walkie"
as_token = "as-token-for-the-levels-test"
hs_token = "hs-token-for-the-levels-test"
bot_localpart = "walkie"
puppet_prefix = "walkie_"

[floor]
max_talk_s = 1

[[channel]]
name = "ops"
room = "#ops:example.org"
endpoints = ["radio.uhf"]

[radio.uhf]
ptt = "rigctld"
rigctld = "{rig}"
cos = "vox"
vox_threshold_dbfs = -30
audio_in = "levels_in"
audio_out = "levels_out"
tx_delay_ms = 100
ptt_hang_ms = 0
tx_timeout_s = {tx_timeout_s}
"##,
                rig = rig.address()
            ),
        )
        .expect("config");
        Bench { dir, config }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_walkie-bridge"));
        command
            .arg("levels")
            .args(["--radio", "uhf"])
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .env("HOME", self.dir.path());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("walkie-bridge runs")
    }

    fn sent(&self) -> Vec<i16> {
        let bytes = std::fs::read(self.dir.path().join("out.raw")).unwrap_or_default();
        bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect()
    }
}

/// `seconds` of a sine at `dbfs` RMS, mono S16LE at [`IN_RATE`].
fn write_sine(path: &Path, hz: f64, dbfs: f64, seconds: f64) {
    let amplitude = 32_768.0 * 10f64.powf(dbfs / 20.0) * std::f64::consts::SQRT_2;
    let mut file = std::fs::File::create(path).expect("sine file");
    let samples = (seconds * f64::from(IN_RATE)) as usize;
    let mut bytes = Vec::with_capacity(samples * 2);
    for i in 0..samples {
        let t = i as f64 / f64::from(IN_RATE);
        let s = (amplitude * (std::f64::consts::TAU * hz * t).sin()).round() as i16;
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    file.write_all(&bytes).expect("sine written");
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The meter's lines: (RMS, peak, COS open).
fn readings(text: &str) -> Vec<(f64, f64, bool)> {
    text.lines()
        .filter(|l| l.contains(" dBFS  peak "))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let level = words[0].parse().expect("level");
            let peak = words[3].parse().expect("peak");
            (level, peak, l.trim_end().ends_with("COS open"))
        })
        .collect()
}

/// The stretches of the played file between runs of digital silence, as
/// (samples, RMS dBFS, zero crossings per sample).
fn bursts(samples: &[i16]) -> Vec<(usize, f64, f64)> {
    let mut out = Vec::new();
    let mut start = None;
    let mut zeros = 0;
    for (i, s) in samples.iter().enumerate() {
        if *s == 0 {
            zeros += 1;
        } else {
            zeros = 0;
            start.get_or_insert(i);
        }
        let end_here = zeros >= 8 || i + 1 == samples.len();
        if let (true, Some(first)) = (end_here, start) {
            let burst = &samples[first..=i];
            let burst = &burst[..burst.len().saturating_sub(zeros)];
            if burst.len() > 100 {
                let energy: f64 = burst.iter().map(|s| f64::from(*s).powi(2)).sum();
                let rms = (energy / burst.len() as f64).sqrt();
                let crossings = burst
                    .windows(2)
                    .filter(|w| (w[0] < 0) != (w[1] < 0))
                    .count();
                out.push((
                    burst.len(),
                    20.0 * (rms / 32_768.0).log10(),
                    crossings as f64 / burst.len() as f64,
                ));
            }
            start = None;
        }
    }
    out
}

fn the_format(text: &str) -> (u32, u32) {
    // "... into levels_out (44100 Hz, 2 ch); ..."
    let inside = text
        .split("into levels_out (")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no playback format in: {text}"));
    let numbers: Vec<u32> = inside
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn the_meter_reads_the_receive_level_peak_and_vox() {
    let rig = Rigctld::start();
    let bench = Bench::new(&rig, -20.0, 30);
    let out = bench.run(&["--seconds", "1.5"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("VOX threshold -30.0 dBFS"),
        "no header: {text}"
    );
    let readings = readings(&text);
    assert_eq!(readings.len(), 15, "one reading per 100 ms: {text}");
    // The first reading may straddle the capture's start; the rest are the sine.
    for (level, peak, _) in &readings[1..] {
        assert!((level + 20.0).abs() < 0.5, "RMS {level} for -20: {text}");
        assert!((peak + 17.0).abs() < 0.7, "peak {peak} for -17: {text}");
    }
    // The VOX (threshold -30, attack ~100 ms) opens on the sine and stays open.
    assert!(readings.last().is_some_and(|r| r.2), "VOX closed: {text}");
    assert!(!rig.ptt_keyed(), "the meter keyed the radio");
}

#[test]
fn a_quiet_input_reads_low_and_keeps_vox_closed() {
    let rig = Rigctld::start();
    let bench = Bench::new(&rig, -45.0, 30);
    let out = bench.run(&["--seconds", "1"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    let readings = readings(&text);
    assert!(readings.len() >= 9, "{text}");
    for (level, _, open) in &readings[1..] {
        assert!((level + 45.0).abs() < 0.5, "RMS {level} for -45: {text}");
        assert!(!open, "VOX open below its threshold: {text}");
    }
}

#[test]
fn the_tone_keys_for_its_length_at_its_level_and_unkeys() {
    let rig = Rigctld::start();
    let bench = Bench::new(&rig, -20.0, 30);
    let mut child = bench
        .command(&["--tone", "1000", "--level", "-20", "--seconds", "1.2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("levels --tone runs");
    let keyed = wait_keyed(&rig, &mut child);
    assert!(keyed, "the tone never keyed the radio");
    let out = child.wait_with_output().expect("levels ends");
    let text = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("unkeyed, confirmed by read-back"), "{text}");
    assert!(!rig.ptt_keyed(), "left keyed");

    let (rate, channels) = the_format(&text);
    let sent = bench.sent();
    let bursts = bursts(&sent);
    let tone_samples: usize = bursts.iter().map(|b| b.0).sum();
    let seconds = tone_samples as f64 / f64::from(rate * channels);
    assert!(
        (seconds - 1.2).abs() < 0.1,
        "{seconds:.3} s of tone for 1.2 ({} bursts)",
        bursts.len()
    );
    let long: Vec<_> = bursts.iter().filter(|b| b.0 > 400).collect();
    assert!(!long.is_empty(), "no burst long enough to measure");
    for (len, level, crossings) in long {
        assert!(
            (level + 20.0).abs() < 0.5,
            "a burst of {len} at {level:.2} dBFS"
        );
        // Two zero crossings per cycle; the channels' identical samples interleave.
        let hz = crossings * f64::from(rate * channels) / 2.0;
        assert!((hz - 1_000.0).abs() < 30.0, "a burst at {hz:.0} Hz");
    }
}

#[test]
fn tx_timeout_cuts_the_tone_and_unkeys() {
    let rig = Rigctld::start();
    let bench = Bench::new(&rig, -20.0, 1);
    let started = Instant::now();
    let out = bench.run(&["--tone", "1000", "--level", "-20"]);
    let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("tx_timeout_s (1 s) cut the tone"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10), "{text}");
    assert!(!rig.ptt_keyed(), "left keyed after the timeout");
}

#[test]
fn sigterm_mid_tone_unkeys_the_radio() {
    let rig = Rigctld::start();
    let bench = Bench::new(&rig, -20.0, 30);
    let mut child = bench
        .command(&["--tone", "1000", "--level", "-20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("levels --tone runs");
    assert!(
        wait_keyed(&rig, &mut child),
        "the tone never keyed the radio"
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("levels ends");
    assert!(!status.success(), "{status:?}");
    assert!(!rig.ptt_keyed(), "SIGTERM left the radio keyed");
}

/// Polls the rig (rigctld has no push) until keyed, the child ends, or 10 s.
fn wait_keyed(rig: &Rigctld, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if rig.ptt_keyed() {
            return true;
        }
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

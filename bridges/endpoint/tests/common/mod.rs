//! Speech fixtures and signal measurements shared by the audio tests.
//!
//! Speech is synthesised at test time with espeak-ng and converted with sox,
//! so the tests run on real speech without committing audio to the repository.
//! A missing tool fails the test loudly: skipping would turn the suite green
//! on a machine that checked nothing.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const TEXT: &str = "Walkie bridge radio check. The quick brown fox jumps over the lazy dog. \
                        Please respond on channel two, over.";

pub struct Fixtures {
    dir: PathBuf,
}

impl Fixtures {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A scratch directory for files a test writes, unique to this process.
    pub fn dir(&self) -> &Path {
        static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
        SCRATCH.get_or_init(|| {
            let d = self.dir.join(format!("scratch-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("scratch dir");
            d
        })
    }
}

fn run(cmd: &mut Command, what: &str) {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run `{program}` ({e}) — the audio tests need espeak-ng, sox and opus-tools \
             installed (Debian: apt-get install espeak-ng sox opus-tools)"
        )
    });
    assert!(
        out.status.success(),
        "{what}: `{program}` failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Generates the speech fixtures once per test binary, into cargo's target
/// temp dir (so nothing piles up in /tmp). They are regenerated on every run
/// — the tools must work — but built in a private directory and renamed into
/// place, so test binaries running in parallel never see half-written files.
pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        // Cargo gives tests and benches a temp dir of their own; examples (the demo)
        // fall back to the system's.
        let root = option_env!("CARGO_TARGET_TMPDIR")
            .map_or_else(std::env::temp_dir, PathBuf::from)
            .join("walkie-audio-fixtures");
        remove_stale(&root);
        let building = root.join(format!("building-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&building);
        std::fs::create_dir_all(&building).expect("fixture dir");
        let raw = building.join("espeak.wav");
        run(
            Command::new("espeak-ng").arg("-w").arg(&raw).arg(TEXT),
            "synthesising speech",
        );
        for rate in [8_000, 16_000, 44_100, 48_000] {
            run(
                Command::new("sox")
                    .arg(&raw)
                    .args(["-r", &rate.to_string(), "-c", "1", "-b", "16"])
                    .arg(building.join(format!("speech{rate}.wav"))),
                "converting speech",
            );
        }
        for rate in [16_000, 48_000] {
            run(
                Command::new("sox")
                    .arg(building.join(format!("speech{rate}.wav")))
                    .arg(building.join(format!("radio-speech{rate}.wav")))
                    .args(["sinc", "600-3000"]),
                "band-limiting speech",
            );
        }
        let dir = root.join(format!("speech-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&building, &dir).expect("move fixtures into place");
        Fixtures { dir }
    })
}

/// Drops fixture directories of test processes that have exited.
fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

pub fn read_wav(path: &Path) -> (Vec<i16>, u32) {
    let mut r =
        hound::WavReader::open(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let spec = r.spec();
    assert_eq!(spec.channels, 1, "{} is not mono", path.display());
    assert_eq!(spec.bits_per_sample, 16, "{} is not 16-bit", path.display());
    let samples = r
        .samples::<i16>()
        .collect::<Result<Vec<_>, _>>()
        .expect("wav samples");
    (samples, spec.sample_rate)
}

pub fn write_wav(path: &Path, pcm: &[i16], rate: u32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("create wav");
    for &s in pcm {
        w.write_sample(s).expect("write wav sample");
    }
    w.finalize().expect("finalize wav");
}

/// Speech at `rate` Hz, mono 16-bit, as sox converted it from espeak-ng's output.
pub fn speech(rate: u32) -> Vec<i16> {
    let (pcm, r) = read_wav(&fixtures().path(&format!("speech{rate}.wav")));
    assert_eq!(r, rate);
    assert!(
        pcm.len() > rate as usize * 3,
        "espeak-ng produced only {} samples at {rate} Hz",
        pcm.len()
    );
    pcm
}

/// [`speech`] band-limited to 600–3000 Hz (sox's linear-phase `sinc`), at 16 or
/// 48 kHz: what a radio link carries. SvxLink band-passes every receiver's audio
/// (a 12th-order Chebyshev filter, 300–5000 Hz, in `LocalRxBase`), which removes
/// espeak's pitch and shifts the phase of the band's low end: full-band speech
/// comes out of a SvxLink node correlated only ~0.5 with what went in although
/// it sounds the same; speech in this band keeps its waveform (~0.9).
pub fn radio_speech(rate: u32) -> Vec<i16> {
    let (pcm, r) = read_wav(&fixtures().path(&format!("radio-speech{rate}.wav")));
    assert_eq!(r, rate);
    pcm
}

/// RMS energy of `x` in dB (relative to full scale; -inf for silence).
pub fn energy_db(x: &[i16]) -> f64 {
    let sum: f64 = x.iter().map(|&s| f64::from(s).powi(2)).sum();
    10.0 * (sum / x.len().max(1) as f64 / 32768f64.powi(2)).log10()
}

/// Normalised cross-correlation of `reference[n]` with `test[n + lag]` over the
/// samples both cover.
pub fn correlation_at(reference: &[i16], test: &[i16], lag: isize) -> f64 {
    let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
    for (n, &x) in reference.iter().enumerate() {
        let m = n as isize + lag;
        if m < 0 || m as usize >= test.len() {
            continue;
        }
        let (x, y) = (f64::from(x), f64::from(test[m as usize]));
        xy += x * y;
        xx += x * x;
        yy += y * y;
    }
    if xx == 0.0 || yy == 0.0 {
        return 0.0;
    }
    xy / (xx * yy).sqrt()
}

/// The lag in `range` with the highest correlation, and that correlation.
pub fn best_lag(
    reference: &[i16],
    test: &[i16],
    range: std::ops::RangeInclusive<isize>,
) -> (isize, f64) {
    range
        .map(|lag| (lag, correlation_at(reference, test, lag)))
        .fold(
            (0, f64::MIN),
            |best, cur| if cur.1 > best.1 { cur } else { best },
        )
}

/// Deterministic white noise with the given RMS level in dBFS.
pub fn noise(samples: usize, level_dbfs: f64, seed: u64) -> Vec<i16> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    // Uniform noise in [-a, a] has RMS a/sqrt(3).
    let amplitude = 32768.0 * 10f64.powf(level_dbfs / 20.0) * 3f64.sqrt();
    (0..samples)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            (u * amplitude).round() as i16
        })
        .collect()
}

pub fn sine(freq: f64, amplitude: f64, rate: u32, samples: usize) -> Vec<i16> {
    (0..samples)
        .map(|n| {
            (amplitude * (2.0 * std::f64::consts::PI * freq * n as f64 / f64::from(rate)).sin())
                .round()
                .clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// Index of the first and last sample louder than `threshold` in magnitude.
pub fn active_span(pcm: &[i16], threshold: i16) -> (usize, usize) {
    let first = pcm
        .iter()
        .position(|s| s.unsigned_abs() > threshold.unsigned_abs())
        .expect("signal present");
    let last = pcm
        .iter()
        .rposition(|s| s.unsigned_abs() > threshold.unsigned_abs())
        .expect("signal present");
    (first, last)
}

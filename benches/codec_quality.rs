//! Speech quality, latency and CPU of the bridge's codec paths (issue #16, items 1
//! and 2). No servers: the code an MQTT pcm16 device's audio runs through, on
//! espeak-ng speech, scored with wideband PESQ (ITU-T P.862.2, the `pesq` package
//! from PyPI, run by scripts/pesq.sh in .venv-bench).
//!
//! Run: `cargo bench --bench codec_quality` (about two minutes; needs espeak-ng,
//! sox, python3-venv). Writes docs/bench/codec-quality.csv and prints the tables
//! docs/bench/codec-quality.md quotes. Never fails on a time or a score.
//!
//! **pcm16 round trip** — device pcm16 (640-byte frames) → Opus → the hub's one
//! 48 kHz decode → pcm16 (640-byte frames), for:
//! - `fft-20ms` — the chain until this issue: rubato's FFT resampler on 20 ms
//!   blocks (16 → 48 kHz before a 48 kHz encoder; 48 → 16 kHz after the decoder),
//!   start-up delay trimmed. Rebuilt here from the same primitives
//!   (`Resampler`, `OpusEncoder`) so that old and new are measured in one run;
//! - `live` — the chain now in `walkie_mqtt::transcode`: a 16 kHz encoder (no
//!   resampler up) and `LiveResampler` (windowed sinc, 1 ms chunks) down;
//! - `live-sincN` — the same with other filter lengths, to choose `LIVE_SINC_LEN`.
//!
//! For each: PESQ of the output against the input; frames held back per direction
//! (a frame that comes out only when the next one is pushed waits 20 ms); the
//! resampling filters' delay (from the cross-correlation of output and input,
//! less the Opus encoder's own lookahead, which any Opus path has); the added
//! latency per direction (held frames × 20 ms + that direction's filter delay);
//! and CPU µs per 20 ms frame each way (thread CPU time over 60 s of speech).
//!
//! **Opus encoder settings** — complexity 0–10 at 24 kbit/s, from 16 kHz (a pcm16
//! device) and from 48 kHz (radio, live page): µs per frame and PESQ; then the
//! bitrates 12–32 kbit/s at the chosen complexity.

#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use walkie_endpoint::audio::{
    EncoderSettings, LiveResampler, OpusApplication, OpusDecoder, OpusEncoder, Resampler,
    DEFAULT_BITRATE, FRAME_SAMPLES, SAMPLE_RATE,
};
use walkie_mqtt::transcode::{PcmToOpus, PcmToPcm16, PCM16_FRAME_BYTES, PCM16_FRAME_SAMPLES};

const PCM16_RATE: u32 = 16_000;
/// Seconds of speech each CPU figure is taken over.
const CPU_SECONDS: usize = 60;

fn main() {
    pin_to_last_core();
    let speech16 = common::speech(PCM16_RATE);
    let speech48 = common::speech(SAMPLE_RATE);
    let dir = out_dir();
    let mut csv = String::from("section,variant,setting,value,unit\n");

    println!("pcm16 round trip: device → Opus → hub decode (48 kHz) → device, {:.1} s of espeak-ng speech", speech16.len() as f64 / 16_000.0);
    println!(
        "{:<14} {:>6} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9}",
        "chain", "PESQ", "held up", "held dn", "filter", "added up", "added dn", "µs up", "µs dn"
    );
    println!("  (PESQ of the round trip; \"48k→dev\" below is a 48 kHz talker at 32 kbit/s heard by the device)");
    type MakeChain = Box<dyn Fn() -> Chain>;
    let mut chains: Vec<(String, MakeChain)> = vec![
        ("fft-20ms".into(), Box::new(Chain::fft_20ms)),
        ("live".into(), Box::new(Chain::live)),
    ];
    for sinc in [32, 64, 256] {
        chains.push((
            format!("live-sinc{sinc}"),
            Box::new(move || Chain::live_with_sinc(sinc)),
        ));
    }
    for (name, make) in &chains {
        let run = round_trip(make(), &speech16);
        let wav = dir.join(format!("pcm16-{name}.wav"));
        common::write_wav(&wav, &run.output, PCM16_RATE);
        let reference = dir.join("reference16.wav");
        common::write_wav(&reference, &speech16, PCM16_RATE);
        let score = pesq(&reference, &wav);
        let (cpu_up, cpu_down) = round_trip_cpu(make, &speech16);
        let fullband = dir.join(format!("fullband-{name}.wav"));
        common::write_wav(&fullband, &down_from_48k(make(), &speech48), PCM16_RATE);
        let fullband_score = pesq(&reference, &fullband);
        let added_up = run.held_up * 20.0 + run.filter_up_ms;
        let added_down = run.held_down * 20.0 + run.filter_down_ms;
        println!(
            "{name:<14} {score:>6.3} {:>9.2} {:>9.2} {:>7.2}ms {:>8.2}ms {:>8.2}ms {cpu_up:>9.1} {cpu_down:>9.1}",
            run.held_up,
            run.held_down,
            run.filter_measured_ms,
            added_up,
            added_down,
        );
        println!("{:<14} {fullband_score:>6.3}   48k→dev", "");
        for (setting, value, unit) in [
            ("pesq_wb", score, "MOS-LQO"),
            ("pesq_wb_from_48k_talker", fullband_score, "MOS-LQO"),
            ("frames_held_up", run.held_up, "frames"),
            ("frames_held_down", run.held_down, "frames"),
            ("filter_delay_measured", run.filter_measured_ms, "ms"),
            ("added_latency_up", added_up, "ms"),
            ("added_latency_down", added_down, "ms"),
            ("cpu_up", cpu_up, "us/frame"),
            ("cpu_down", cpu_down, "us/frame"),
        ] {
            let _ = writeln!(csv, "pcm16_round_trip,{name},{setting},{value:.3},{unit}");
        }
    }

    let reference = dir.join("reference16.wav");
    let columns: [(u32, OpusApplication, i32); 5] = [
        (PCM16_RATE, OpusApplication::Voip, 24_000),
        (PCM16_RATE, OpusApplication::Voip, 32_000),
        (PCM16_RATE, OpusApplication::LowDelay, 24_000),
        (PCM16_RATE, OpusApplication::LowDelay, 32_000),
        (SAMPLE_RATE, OpusApplication::Voip, 24_000),
    ];
    println!();
    println!("Opus encoder, 20 ms frames: CPU µs per frame (encode) / PESQ (decoded at 48 kHz, scored at 16 kHz)");
    print!("{:>10}", "complexity");
    for (rate, application, bitrate) in columns {
        print!(
            " {:>18}",
            format!("{}k {application:?} {}k", rate / 1000, bitrate / 1000)
        );
    }
    println!();
    for complexity in 0..=10 {
        print!("{complexity:>10}");
        for (rate, application, bitrate) in columns {
            let settings = EncoderSettings {
                bitrate,
                complexity,
                application,
            };
            let speech = if rate == PCM16_RATE {
                &speech16
            } else {
                &speech48
            };
            let (us, score) = encoder_point(rate, speech, settings, &dir, &reference);
            let variant = format!("{rate}Hz_{application:?}_{}kbps", bitrate / 1000);
            let _ = writeln!(
                csv,
                "opus_encoder,{variant},complexity_{complexity}_cpu,{us:.2},us/frame"
            );
            let _ = writeln!(
                csv,
                "opus_encoder,{variant},complexity_{complexity}_pesq,{score:.3},MOS-LQO"
            );
            print!(" {:>18}", format!("{us:.1} / {score:.3}"));
        }
        println!();
    }

    let csv_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bench/codec-quality.csv");
    std::fs::write(&csv_path, csv).expect("write the CSV");
    println!("\nwrote {}; load {}", csv_path.display(), loadavg());
}

/// One pcm16 transcoding chain: device → Opus, and 48 kHz → device.
struct Chain {
    up: Up,
    down: Down,
}

// One of each per run: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Up {
    /// `walkie_mqtt::transcode::PcmToOpus`: a 16 kHz encoder, no resampler.
    Live(PcmToOpus),
    /// Until #16: FFT resampler 16 → 48 kHz, 48 kHz encoder.
    Fft(Resampler, OpusEncoder, Vec<i16>),
}

#[allow(clippy::large_enum_variant)]
enum Down {
    /// `walkie_mqtt::transcode::PcmToPcm16`.
    Live(PcmToPcm16),
    /// A `LiveResampler` with another filter length.
    Sinc(LiveResampler, Vec<i16>),
    /// Until #16: FFT resampler 48 → 16 kHz, delay trimmed.
    Fft(Resampler, Vec<i16>),
}

impl Chain {
    fn live() -> Self {
        Self {
            up: Up::Live(PcmToOpus::new().expect("pcm16 → Opus")),
            down: Down::Live(PcmToPcm16::new().expect("48 kHz → pcm16")),
        }
    }

    fn live_with_sinc(sinc_len: usize) -> Self {
        let resampler =
            LiveResampler::with_sinc_len(SAMPLE_RATE, PCM16_RATE, sinc_len).expect("live");
        Self {
            down: Down::Sinc(resampler, Vec::new()),
            ..Self::live()
        }
    }

    /// The chain as `walkie_mqtt::transcode` had it until issue #16.
    fn fft_20ms() -> Self {
        Self {
            up: Up::Fft(
                Resampler::new(PCM16_RATE, SAMPLE_RATE).expect("16 → 48"),
                OpusEncoder::new().expect("encoder"),
                Vec::new(),
            ),
            down: Down::Fft(
                Resampler::new(SAMPLE_RATE, PCM16_RATE).expect("48 → 16"),
                Vec::new(),
            ),
        }
    }

    /// Lookahead of the chain's Opus encoder, in ms: the codec's, not the bridge's.
    fn opus_lookahead_ms(&self) -> f64 {
        match &self.up {
            Up::Live(_) => {
                let encoder = OpusEncoder::with_rate(PCM16_RATE, DEFAULT_BITRATE).expect("encoder");
                f64::from(encoder.lookahead()) / 16.0
            }
            Up::Fft(_, encoder, _) => f64::from(encoder.lookahead()) / 48.0,
        }
    }

    /// The down path's filter delay as its resampler states it, in ms (the FFT
    /// resampler's is trimmed: it shows up as a held frame instead).
    fn filter_down_ms(&self) -> f64 {
        match &self.down {
            Down::Live(_) => {
                LiveResampler::new(SAMPLE_RATE, PCM16_RATE)
                    .expect("live")
                    .delay() as f64
                    / 16.0
            }
            Down::Sinc(r, _) => r.delay() as f64 / 16.0,
            Down::Fft(..) => 0.0,
        }
    }

    fn up(&mut self, s16le: &[u8]) -> Vec<Vec<u8>> {
        match &mut self.up {
            Up::Live(t) => bytes_to_vecs(t.push(s16le).expect("push")),
            Up::Fft(r, encoder, pending) => {
                let samples: Vec<i16> = s16le
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
                pending.extend(r.process(&samples).expect("resample"));
                encode_frames(encoder, pending, false)
            }
        }
    }

    fn up_finish(&mut self) -> Vec<Vec<u8>> {
        match &mut self.up {
            Up::Live(t) => bytes_to_vecs(t.finish().expect("finish")),
            Up::Fft(r, encoder, pending) => {
                pending.extend(r.flush().expect("flush"));
                encode_frames(encoder, pending, true)
            }
        }
    }

    fn down(&mut self, pcm48: &[i16]) -> Vec<Vec<u8>> {
        match &mut self.down {
            Down::Live(t) => t.push(pcm48).expect("push"),
            Down::Sinc(r, pending) => {
                r.process_into(pcm48, pending).expect("resample");
                take_frames(pending, false)
            }
            Down::Fft(r, pending) => {
                pending.extend(r.process(pcm48).expect("resample"));
                take_frames(pending, false)
            }
        }
    }

    fn down_finish(&mut self) -> Vec<Vec<u8>> {
        match &mut self.down {
            Down::Live(t) => t.finish().expect("finish"),
            Down::Sinc(r, pending) => {
                r.flush_into(pending).expect("flush");
                take_frames(pending, true)
            }
            Down::Fft(r, pending) => {
                pending.extend(r.flush().expect("flush"));
                take_frames(pending, true)
            }
        }
    }
}

/// Whole 960-sample frames out of `pending`, encoded (the last one zero-padded
/// when `pad`).
fn encode_frames(encoder: &mut OpusEncoder, pending: &mut Vec<i16>, pad: bool) -> Vec<Vec<u8>> {
    if pad && !pending.is_empty() {
        let n = pending.len().next_multiple_of(FRAME_SAMPLES);
        pending.resize(n, 0);
    }
    let packets: Vec<Vec<u8>> = pending
        .chunks_exact(FRAME_SAMPLES)
        .map(|f| encoder.encode(f).expect("encode").to_vec())
        .collect();
    pending.drain(..packets.len() * FRAME_SAMPLES);
    packets
}

fn bytes_to_vecs(packets: Vec<bytes::Bytes>) -> Vec<Vec<u8>> {
    packets.into_iter().map(|p| p.to_vec()).collect()
}

/// Whole 320-sample frames out of `pending` as S16LE (the last one zero-padded
/// when `pad`).
fn take_frames(pending: &mut Vec<i16>, pad: bool) -> Vec<Vec<u8>> {
    if pad && !pending.is_empty() {
        let n = pending.len().next_multiple_of(PCM16_FRAME_SAMPLES);
        pending.resize(n, 0);
    }
    let frames: Vec<Vec<u8>> = pending
        .chunks_exact(PCM16_FRAME_SAMPLES)
        .map(|f| f.iter().flat_map(|s| s.to_le_bytes()).collect())
        .collect();
    pending.drain(..frames.len() * PCM16_FRAME_SAMPLES);
    frames
}

struct RoundTrip {
    output: Vec<i16>,
    /// Mean number of pushes a frame waited for, up and down.
    held_up: f64,
    held_down: f64,
    /// Filter delay of both directions together, from the cross-correlation, less
    /// the Opus lookahead.
    filter_measured_ms: f64,
    filter_up_ms: f64,
    filter_down_ms: f64,
}

fn round_trip(mut chain: Chain, speech16: &[i16]) -> RoundTrip {
    let input: Vec<u8> = speech16.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut decoder = OpusDecoder::new().expect("the hub's decoder");
    let mut out = Vec::new();
    // For each packet (frame), how many pushes after its own it came out.
    let (mut held_up, mut held_down) = (Vec::new(), Vec::new());
    let (mut packets_out, mut frames_out) = (0usize, 0usize);
    let frames_in = input.len().div_ceil(PCM16_FRAME_BYTES);
    for pushed in 1..=frames_in + 1 {
        let packets = if pushed <= frames_in {
            let at = (pushed - 1) * PCM16_FRAME_BYTES;
            chain.up(&input[at..(at + PCM16_FRAME_BYTES).min(input.len())])
        } else {
            chain.up_finish()
        };
        for packet in packets {
            held_up.push(pushed as f64 - 1.0 - packets_out as f64);
            packets_out += 1;
            let pcm = decoder.decode(&packet).expect("decode");
            for frame in chain.down(&pcm) {
                held_down.push(packets_out as f64 - 1.0 - frames_out as f64);
                frames_out += 1;
                out.extend(frame);
            }
        }
    }
    for frame in chain.down_finish() {
        out.extend(frame);
    }
    let output: Vec<i16> = out
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let (lag, corr) = common::best_lag(speech16, &output, 0..=800);
    assert!(
        corr > 0.5,
        "the output is not the speech (correlation {corr:.2})"
    );
    let mean = |v: &[f64]| v.iter().map(|x| x.max(0.0)).sum::<f64>() / v.len().max(1) as f64;
    RoundTrip {
        held_up: mean(&held_up),
        held_down: mean(&held_down),
        filter_measured_ms: lag as f64 / 16.0 - chain.opus_lookahead_ms(),
        filter_up_ms: 0.0,
        filter_down_ms: chain.filter_down_ms(),
        output,
    }
}

/// A 48 kHz talker (a Mumble client, a sound card) encoded at 32 kbit/s, decoded
/// by the hub and put through the chain's down path: shows aliasing that speech
/// which came from a 16 kHz device cannot (it has nothing above 8 kHz).
fn down_from_48k(mut chain: Chain, speech48: &[i16]) -> Vec<i16> {
    let mut encoder = OpusEncoder::with_bitrate(32_000).expect("encoder");
    let mut decoder = OpusDecoder::new().expect("decoder");
    let mut padded = speech48.to_vec();
    padded.resize(speech48.len().next_multiple_of(FRAME_SAMPLES), 0);
    let mut out = Vec::new();
    for frame in padded.chunks_exact(FRAME_SAMPLES) {
        let pcm = decoder
            .decode(&encoder.encode(frame).expect("encode"))
            .expect("decode");
        out.extend(chain.down(&pcm).into_iter().flatten());
    }
    out.extend(chain.down_finish().into_iter().flatten());
    out.chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// CPU µs per 20 ms frame of each direction, over [`CPU_SECONDS`] of speech.
fn round_trip_cpu(make: &dyn Fn() -> Chain, speech16: &[i16]) -> (f64, f64) {
    let mut chain = make();
    let input: Vec<u8> = speech16
        .iter()
        .cycle()
        .take(CPU_SECONDS * 16_000)
        .flat_map(|s| s.to_le_bytes())
        .collect();
    let mut packets = Vec::new();
    let before = thread_cpu_seconds();
    for frame in input.chunks(PCM16_FRAME_BYTES) {
        packets.extend(chain.up(frame));
    }
    let up = thread_cpu_seconds() - before;
    let mut decoder = OpusDecoder::new().expect("decoder");
    let decoded: Vec<Vec<i16>> = packets
        .iter()
        .map(|p| decoder.decode(p).expect("decode"))
        .collect();
    let before = thread_cpu_seconds();
    for pcm in &decoded {
        std::hint::black_box(chain.down(pcm));
    }
    let down = thread_cpu_seconds() - before;
    let frames = (CPU_SECONDS * 50) as f64;
    (up * 1e6 / frames, down * 1e6 / frames)
}

/// Encodes `speech` at `rate` with `complexity` and `bitrate`: CPU µs per frame
/// over [`CPU_SECONDS`], and the PESQ of the decoded speech at 16 kHz.
fn encoder_point(
    rate: u32,
    speech: &[i16],
    settings: EncoderSettings,
    dir: &Path,
    reference: &Path,
) -> (f64, f64) {
    let make = || OpusEncoder::with_settings(rate, &settings).expect("encoder");
    let frame = (rate / 50) as usize;
    let long: Vec<i16> = speech
        .iter()
        .copied()
        .cycle()
        .take(CPU_SECONDS * rate as usize)
        .collect();
    let mut encoder = make();
    let before = thread_cpu_seconds();
    for f in long.chunks_exact(frame) {
        std::hint::black_box(encoder.encode(f).expect("encode"));
    }
    let us = (thread_cpu_seconds() - before) * 1e6 / (long.len() / frame) as f64;

    let mut encoder = make();
    let mut decoder = OpusDecoder::new().expect("decoder");
    let mut padded = speech.to_vec();
    padded.resize(speech.len().next_multiple_of(frame), 0);
    let decoded: Vec<i16> = padded
        .chunks_exact(frame)
        .flat_map(|f| {
            decoder
                .decode(&encoder.encode(f).expect("encode"))
                .expect("decode")
        })
        .collect();
    let at16 =
        walkie_endpoint::audio::resample(&decoded, SAMPLE_RATE, PCM16_RATE).expect("to 16 kHz");
    let wav = dir.join(format!(
        "opus-{rate}-{:?}-c{}-{}.wav",
        settings.application, settings.complexity, settings.bitrate
    ));
    common::write_wav(&wav, &at16, PCM16_RATE);
    (us, pesq(reference, &wav))
}

fn pesq(reference: &Path, degraded: &Path) -> f64 {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pesq.sh");
    let out = Command::new(&script)
        .arg(reference)
        .arg(degraded)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no PESQ score in {text:?}"))
}

fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("codec-quality");
    std::fs::create_dir_all(&dir).expect("bench output dir");
    dir
}

fn thread_cpu_seconds() -> f64 {
    // SAFETY: clock_gettime writes into the zeroed timespec it is given.
    unsafe {
        let mut t: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t);
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    }
}

/// Off core 0, where the other benches (and a soak) put the bridge.
fn pin_to_last_core() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cores - 1, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

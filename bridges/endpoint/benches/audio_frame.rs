//! Per-frame cost of the audio path: how many talkers one core can carry.
//!
//! Criterion measures means; the table printed afterwards adds p50/p99 from a
//! plain timed loop, because a real-time path cares about the slow frames.
//! Nothing here asserts on time.

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, Criterion};
use std::hint::black_box;
use std::time::{Duration, Instant};
use walkie_endpoint::audio::{frames_of, OpusDecoder, OpusEncoder, Resampler, FRAME_SAMPLES};

struct Input {
    frames48: Vec<Vec<i16>>,
    frames16: Vec<Vec<i16>>,
    packets: Vec<Vec<u8>>,
}

fn input() -> Input {
    let speech = common::speech(48_000);
    let frames48: Vec<Vec<i16>> = frames_of(&speech).map(|f| f.into_owned()).collect();
    let speech16 = common::speech(16_000);
    let frames16: Vec<Vec<i16>> = speech16.chunks_exact(320).map(<[i16]>::to_vec).collect();
    let mut enc = OpusEncoder::new().expect("encoder");
    let packets = frames48
        .iter()
        .map(|f| enc.encode(f).expect("encode").to_vec())
        .collect();
    Input {
        frames48,
        frames16,
        packets,
    }
}

/// One step of each measured operation, cycling through the speech.
struct Ops {
    input: Input,
    i: usize,
    dec: OpusDecoder,
    enc: OpusEncoder,
    down: Resampler,
    up: Resampler,
    fifo: Vec<i16>,
}

impl Ops {
    fn new() -> Self {
        Self {
            input: input(),
            i: 0,
            dec: OpusDecoder::new().expect("decoder"),
            enc: OpusEncoder::new().expect("encoder"),
            down: Resampler::new(48_000, 16_000).expect("48k→16k"),
            up: Resampler::new(16_000, 48_000).expect("16k→48k"),
            fifo: Vec::with_capacity(FRAME_SAMPLES * 3),
        }
    }

    fn next(&mut self) -> usize {
        self.i = (self.i + 1) % self.input.packets.len();
        self.i
    }

    fn decode(&mut self) -> usize {
        let i = self.next();
        self.dec
            .decode(&self.input.packets[i])
            .expect("decode")
            .len()
    }

    fn encode(&mut self) -> usize {
        let i = self.next();
        self.enc
            .encode(&self.input.frames48[i])
            .expect("encode")
            .len()
    }

    fn down(&mut self) -> usize {
        let i = self.next();
        self.down
            .process(&self.input.frames48[i])
            .expect("down")
            .len()
    }

    fn up(&mut self) -> usize {
        let i = self.next() % self.input.frames16.len();
        self.up.process(&self.input.frames16[i]).expect("up").len()
    }

    /// A talker whose audio must reach a 16 kHz side and come back as Opus:
    /// decode → 48k→16k → 16k→48k → encode.
    fn chain(&mut self) -> usize {
        let i = self.next();
        let pcm = self.dec.decode(&self.input.packets[i]).expect("decode");
        let pcm16 = self.down.process(&pcm).expect("down");
        self.fifo.extend(self.up.process(&pcm16).expect("up"));
        // The resamplers' trimmed start-up delay shifts block boundaries, so
        // frames for the encoder are cut from a FIFO, as a live path would.
        if self.fifo.len() < FRAME_SAMPLES {
            return 0;
        }
        let frame: Vec<i16> = self.fifo.drain(..FRAME_SAMPLES).collect();
        self.enc.encode(&frame).expect("encode").len()
    }
}

type Op = fn(&mut Ops) -> usize;

const OPS: [(&str, Op); 5] = [
    ("decode", Ops::decode),
    ("resample 48k→16k", Ops::down),
    ("resample 16k→48k", Ops::up),
    ("encode 24 kbit/s", Ops::encode),
    ("decode→resample→encode", Ops::chain),
];

fn per_frame(c: &mut Criterion) {
    let mut group = c.benchmark_group("audio_frame");
    for (name, op) in OPS {
        let mut ops = Ops::new();
        group.bench_function(name, |b| b.iter(|| black_box(op(&mut ops))));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = per_frame
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn summary() {
    const ITERATIONS: usize = 5_000;
    println!();
    println!("per 20 ms frame, {ITERATIONS} timed iterations each (after 500 warm-up):");
    println!(
        "{:<26} {:>10} {:>10} {:>10} {:>16}",
        "operation", "p50 µs", "p99 µs", "mean µs", "streams/core"
    );
    for (name, op) in OPS {
        let mut ops = Ops::new();
        for _ in 0..500 {
            black_box(op(&mut ops));
        }
        let mut times: Vec<Duration> = (0..ITERATIONS)
            .map(|_| {
                let t = Instant::now();
                black_box(op(&mut ops));
                t.elapsed()
            })
            .collect();
        times.sort_unstable();
        let p50 = percentile(&times, 0.50);
        let p99 = percentile(&times, 0.99);
        let mean = times.iter().sum::<Duration>() / ITERATIONS as u32;
        let streams = Duration::from_millis(20).as_secs_f64() / p50.as_secs_f64().max(1e-9);
        println!(
            "{name:<26} {:>10.1} {:>10.1} {:>10.1} {:>16.0}",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            mean.as_secs_f64() * 1e6,
            streams
        );
    }
    println!("streams/core = 20 ms ÷ p50 (one talker produces one frame every 20 ms)");
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}

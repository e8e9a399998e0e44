//! How fast the machine itself is while a long bench runs, to tell a bridge that
//! does more work from a host that got slower.
//!
//! This is a shared 2-vCPU VM without hardware counters (`perf stat -e
//! instructions` is "not supported"), so instructions per window cannot be
//! counted. Instead a reference job — encoding the same 250 frames of speech
//! with libopus, the bridge's own main cost — runs every window on the bridge's
//! core at nice 19 (so it yields to the bridge, ~25 ms of CPU per 30 s), and its
//! thread CPU time per frame is the host's speed: CPU time for a fixed job does
//! not depend on who else shares the core, only on how fast the core runs it
//! (a slower host, a noisy neighbour's caches). The steal time of that core
//! (`/proc/stat`) is read beside it.
//!
//! What it showed first (the 2-hour soak of 2026-12-08): this VM's two vCPUs
//! are not independent — with builds running on core 1 the reference ran up to
//! 57 % slower on core 0, and the bridge's CPU moved with it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Frames encoded per window, in [`CHUNKS`] chunks spread over it: a host
/// slowed in bursts (the other vCPU busy) is sampled across the window, as
/// the bridge's CPU is, not at one instant.
const FRAMES: usize = 250;
const CHUNKS: u32 = 10;

/// The reference job's thread CPU time and frames since the last reading.
#[derive(Clone)]
pub struct HostSpeed {
    since_read: Arc<Mutex<(Duration, usize)>>,
}

impl HostSpeed {
    /// Starts the reference thread on `core`, spreading [`FRAMES`] frames over
    /// every `every`. `speech48` is 48 kHz mono speech, repeated as needed.
    pub fn start(core: usize, every: Duration, speech48: &[i16]) -> Self {
        let since_read = Arc::new(Mutex::new((Duration::ZERO, 0)));
        let speech: Vec<Vec<i16>> = walkie_endpoint::audio::frames_of(speech48)
            .map(|f| f.to_vec())
            .collect();
        assert!(!speech.is_empty(), "host speed: no speech");
        let frames: Vec<Vec<i16>> = speech.iter().cycle().take(FRAMES).cloned().collect();
        let into = since_read.clone();
        std::thread::Builder::new()
            .name("host-speed".into())
            .spawn(move || {
                crate::e2e_common::pin_to(core);
                // Linux: PRIO_PROCESS with 0 sets the calling thread's nice value.
                // SAFETY: plain syscall on this thread.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                let mut encoder = walkie_endpoint::audio::OpusEncoder::new().expect("encoder");
                for chunk in frames.chunks(FRAMES / CHUNKS as usize).cycle() {
                    let started = thread_cpu();
                    for frame in chunk {
                        std::hint::black_box(encoder.encode(frame).expect("encode"));
                    }
                    let spent = thread_cpu() - started;
                    {
                        let mut sum = into.lock().expect("host speed lock");
                        sum.0 += spent;
                        sum.1 += chunk.len();
                    }
                    std::thread::sleep(every / CHUNKS);
                }
            })
            .expect("host speed thread");
        Self { since_read }
    }

    /// µs of CPU per reference frame since the last call (NaN before any).
    pub fn take_us_per_frame(&self) -> f64 {
        let mut sum = self.since_read.lock().expect("host speed lock");
        let (spent, frames) = std::mem::take(&mut *sum);
        if frames == 0 {
            return f64::NAN;
        }
        spent.as_secs_f64() * 1e6 / frames as f64
    }
}

fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Steal and total jiffies of one core so far (`/proc/stat`); two readings
/// give the share of the window the hypervisor ran someone else.
pub fn steal_and_total(core: usize) -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{core}");
    stat.lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next()? == name).then(|| {
                let values: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal guest guest_nice;
                // guest time is already counted in user.
                let total = values.iter().take(8).sum();
                (values.get(7).copied().unwrap_or(0), total)
            })
        })
        .unwrap_or((0, 0))
}

/// Percent of the window between two [`steal_and_total`] readings.
pub fn steal_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1);
    if total == 0 {
        return 0.0;
    }
    after.0.saturating_sub(before.0) as f64 / total as f64 * 100.0
}

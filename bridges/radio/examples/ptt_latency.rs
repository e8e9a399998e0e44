//! Latency with a real rigctld: key → first audio sample (tx_delay honoured?),
//! unkey after release (minus ptt_hang), unkey after shutdown. p50/p99 over
//! RUNS transmissions. A measurement, not a test: it prints, it does not judge.
//!
//! cargo run -p walkie-radio --example ptt_latency -- 127.0.0.1:PORT
//! (against `rigctld -m 1 -P RIG -t PORT`)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walkie_radio::ptt::{Ptt, RigctldPtt};
use walkie_radio::tx::{AudioSink, TxCommand, TxController, TxRunner, TxSettings};
use walkie_radio::{PttError, SinkError};

const RUNS: usize = 60;
const TX_DELAY: Duration = Duration::from_millis(50);
const HANG: Duration = Duration::from_millis(100);

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(&'static str, Instant)>>>);
impl Log {
    fn push(&self, what: &'static str) {
        if let Ok(mut g) = self.0.lock() {
            g.push((what, Instant::now()));
        }
    }
    fn first(&self, what: &str) -> Option<Instant> {
        self.0
            .lock()
            .ok()?
            .iter()
            .find(|(w, _)| *w == what)
            .map(|(_, t)| *t)
    }
}

/// Timestamps the moment rigctld acknowledged (`RPRT 0`) each PTT change.
struct Timed(RigctldPtt, Log);
impl Ptt for Timed {
    fn set_keyed(&mut self, keyed: bool) -> Result<(), PttError> {
        self.0.set_keyed(keyed)?;
        self.1.push(if keyed { "keyed" } else { "unkeyed" });
        Ok(())
    }
    fn is_keyed(&mut self) -> Result<bool, PttError> {
        self.0.is_keyed()
    }
}

struct Sink(Log);
impl AudioSink for Sink {
    fn play(&mut self, _: &[i16]) -> Result<(), SinkError> {
        self.0.push("audio");
        Ok(())
    }
    fn flush(&mut self) -> Result<Duration, SinkError> {
        Ok(Duration::ZERO)
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .ok_or("usage: ptt_latency HOST:PORT")?;
    let (mut delay, mut after_release, mut after_shutdown) = (vec![], vec![], vec![]);
    for run in 0..RUNS * 2 {
        let log = Log::default();
        let ptt = Timed(RigctldPtt::connect(&addr)?, log.clone());
        let settings = TxSettings {
            tx_delay: TX_DELAY,
            ptt_hang: HANG,
            ..TxSettings::default()
        };
        let c = TxController::new(
            "bench",
            settings,
            Box::new(ptt),
            Box::new(Sink(log.clone())),
        )?;
        let runner = TxRunner::spawn(c);
        runner.send(TxCommand::FloorTakenByOther);
        runner.send(TxCommand::Audio(vec![0; 160]));
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(20));
            runner.send(TxCommand::Audio(vec![0; 160]));
        }
        let stop = Instant::now();
        let shutdown = run % 2 == 1;
        if shutdown {
            runner.shutdown();
        } else {
            runner.send(TxCommand::FloorReleased);
            std::thread::sleep(HANG + Duration::from_millis(100));
            runner.shutdown();
        }
        let keyed = log.first("keyed").ok_or("never keyed")?;
        let audio = log.first("audio").ok_or("no audio")?;
        // The unkey that followed the stop (the open-time unkey came before).
        let unkeyed = {
            let events = log.0.lock().map_err(|_| "poisoned")?;
            events
                .iter()
                .find(|(w, t)| *w == "unkeyed" && *t > stop)
                .map(|(_, t)| *t)
                .ok_or("never unkeyed")?
        };
        delay.push((audio - keyed).as_secs_f64() * 1e3);
        let u = (unkeyed - stop).as_secs_f64() * 1e3;
        if shutdown {
            after_shutdown.push(u);
        } else {
            after_release.push(u - HANG.as_secs_f64() * 1e3);
        }
    }
    println!("rigctld {addr}, {RUNS} runs each, tx_delay {TX_DELAY:?}, ptt_hang {HANG:?}");
    println!(
        "key ack → first audio sample: p50 {:.2} ms  p99 {:.2} ms  (tx_delay {:.0} ms)",
        pct(&mut delay, 0.5),
        pct(&mut delay, 0.99),
        TX_DELAY.as_secs_f64() * 1e3
    );
    println!(
        "release → unkey ack, minus ptt_hang: p50 {:.2} ms  p99 {:.2} ms",
        pct(&mut after_release, 0.5),
        pct(&mut after_release, 0.99)
    );
    println!(
        "shutdown → unkey ack: p50 {:.2} ms  p99 {:.2} ms",
        pct(&mut after_shutdown, 0.5),
        pct(&mut after_shutdown, 0.99)
    );
    Ok(())
}

//! Test helper (used by tests/ptt_process.rs): keys a PTT whose fake lines log
//! every change to a file, then waits mid-transmission to be killed by
//! SIGTERM or told to panic. Not for operators.
//!
//! Usage: walkie-radio-ptt-child LOGFILE sigterm|panic

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use walkie_radio::ptt::{safety, FakeModemLines, PttLines, SerialLinePtt};
use walkie_radio::tx::{AudioSink, TxCommand, TxController, TxRunner, TxSettings};
use walkie_radio::SinkError;

struct NullSink;
impl AudioSink for NullSink {
    fn play(&mut self, _: &[i16]) -> Result<(), SinkError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<Duration, SinkError> {
        Ok(Duration::ZERO)
    }
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let (log, mode) = match args.as_slice() {
        [_, log, mode] => (log.clone(), mode.clone()),
        _ => return Err("usage: walkie-radio-ptt-child LOGFILE sigterm|panic".into()),
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("{log}: {e}"))?;
    safety::install_panic_hook();
    safety::install_signal_unkey(safety::AfterSignal::Reraise).map_err(|e| e.to_string())?;

    let lines = FakeModemLines::new().log_to(file);
    let ptt = SerialLinePtt::new(lines.clone(), PttLines::Rts, false).map_err(|e| e.to_string())?;
    let settings = TxSettings {
        tx_delay: Duration::from_millis(10),
        ..TxSettings::default()
    };
    let c = TxController::new("child", settings, Box::new(ptt), Box::new(NullSink))
        .map_err(|e| e.to_string())?;
    let runner = TxRunner::spawn(c);
    runner.send(TxCommand::FloorTakenByOther);
    runner.send(TxCommand::Audio(vec![0; 160]));
    while !lines.levels_now().rts {
        std::thread::yield_now();
    }
    let mut out = std::io::stdout();
    writeln!(out, "KEYED").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;

    match mode.as_str() {
        "panic" => {
            // Wait for the go, then panic with no Drop able to unkey: the
            // runner is forgotten, so only the panic hook can.
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            std::mem::forget(runner);
            panic!("injected panic mid-transmission");
        }
        _ => {
            // Keep transmitting until SIGTERM arrives.
            let mut next = Instant::now();
            loop {
                next += Duration::from_millis(20);
                runner.send(TxCommand::Audio(vec![0; 160]));
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        }
    }
}

//! Shared test fakes: a sound-card sink that records what it was given, when.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walkie_radio::ptt::{FakeClock, Line, LineEvent};
use walkie_radio::tx::{AudioSink, IdSource};
use walkie_radio::SinkError;

/// One `play` call: when, and what.
pub type Played = (Instant, Vec<i16>);

#[derive(Clone, Default)]
pub struct FakeSink {
    pub played: Arc<Mutex<Vec<Played>>>,
    pub flushes: Arc<Mutex<Vec<Instant>>>,
    pub drain: Duration,
    pub clock: Option<FakeClock>,
}

impl FakeSink {
    pub fn new(clock: Option<FakeClock>, drain: Duration) -> Self {
        Self {
            clock,
            drain,
            ..Self::default()
        }
    }
    fn now(&self) -> Instant {
        self.clock
            .as_ref()
            .map_or_else(Instant::now, FakeClock::now)
    }
    pub fn played(&self) -> Vec<Played> {
        self.played.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

impl AudioSink for FakeSink {
    fn play(&mut self, samples: &[i16]) -> Result<(), SinkError> {
        let at = self.now();
        self.played
            .lock()
            .map_err(|e| SinkError(e.to_string()))?
            .push((at, samples.to_vec()));
        Ok(())
    }
    fn flush(&mut self) -> Result<Duration, SinkError> {
        let at = self.now();
        self.flushes
            .lock()
            .map_err(|e| SinkError(e.to_string()))?
            .push(at);
        Ok(self.drain)
    }
}

pub struct FakeId;
pub const ID_SAMPLE: i16 = 7777;
impl IdSource for FakeId {
    fn id_samples(&mut self) -> Vec<i16> {
        vec![ID_SAMPLE; 4]
    }
}

/// The level of `line` over time, collapsing repeated writes of one level.
pub fn changes(events: &[LineEvent], line: Line) -> Vec<(Instant, bool)> {
    let mut out: Vec<(Instant, bool)> = Vec::new();
    for e in events.iter().filter(|e| e.line == line) {
        if out.last().map(|(_, l)| *l) != Some(e.level) {
            out.push((e.at, e.level));
        }
    }
    out
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

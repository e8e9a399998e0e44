//! The threaded runner in real time (the scenario is time itself, so the
//! assertions are on recorded timestamps with tolerances). The panic hook has
//! its own test binary (panic_hook.rs): it unkeys every radio in the process,
//! so beside these tests it would unkey theirs too.

mod support;

use std::time::{Duration, Instant};

use support::{changes, ms, FakeSink};
use walkie_radio::ptt::{FakeModemLines, Line, PttLines, SerialLinePtt};
use walkie_radio::tx::{TxCommand, TxController, TxRunner, TxSettings};

/// Never early is the safety rule and is asserted exactly; late is bounded loosely
/// so a loaded 2-core CI machine does not fail the test (the latency example
/// measures the real figure: p99 ≈ 0.1 ms over tx_delay).
const TOLERANCE: Duration = Duration::from_millis(25);

#[test]
fn runner_honours_tx_delay_and_hang_in_real_time() {
    let lines = FakeModemLines::new();
    let sink = FakeSink::new(None, Duration::ZERO);
    let ptt = SerialLinePtt::new(lines.clone(), PttLines::Rts, false).expect("open");
    let settings = TxSettings {
        tx_delay: ms(50),
        ptt_hang: ms(100),
        ..TxSettings::default()
    };
    let c = TxController::new("runner", settings, Box::new(ptt), Box::new(sink.clone()))
        .expect("controller");
    let runner = TxRunner::spawn(c);
    assert!(runner.send(TxCommand::FloorTakenByOther));
    for i in 0..10 {
        assert!(runner.send(TxCommand::Audio(vec![i; 160])));
        std::thread::sleep(ms(20)); // real-time audio pacing: the scenario
    }
    let released = Instant::now();
    assert!(runner.send(TxCommand::FloorReleased));
    // Wait for the unkey itself (key, then unkey after the hang), not a guess at
    // how long it takes.
    let deadline = Instant::now() + ms(2000);
    while changes(&lines.events(), Line::Rts).len() < 3 {
        assert!(Instant::now() < deadline, "never unkeyed after the release");
        std::thread::sleep(ms(1));
    }
    runner.shutdown();

    let rts = changes(&lines.events(), Line::Rts);
    assert_eq!(
        rts.iter().map(|(_, l)| *l).collect::<Vec<_>>(),
        vec![false, true, false]
    );
    let keyed = rts[1].0;
    let first_audio = sink.played()[0].0;
    let delay = first_audio - keyed;
    assert!(
        delay >= ms(50) && delay <= ms(50) + TOLERANCE,
        "tx_delay 50 ms, got {delay:?}"
    );
    let hang = rts[2].0 - released;
    assert!(
        hang >= ms(100) && hang <= ms(100) + TOLERANCE,
        "ptt_hang 100 ms, got {hang:?}"
    );
}

#[test]
fn dropping_the_runner_mid_transmission_unkeys() {
    let lines = FakeModemLines::new();
    let ptt = SerialLinePtt::new(lines.clone(), PttLines::Rts, false).expect("open");
    let c = TxController::new(
        "drop",
        TxSettings::default(),
        Box::new(ptt),
        Box::new(FakeSink::default()),
    )
    .expect("controller");
    let runner = TxRunner::spawn(c);
    runner.send(TxCommand::FloorTakenByOther);
    runner.send(TxCommand::Audio(vec![1; 160]));
    drop(runner); // joins: the thread has unkeyed when this returns
    assert!(!lines.levels_now().rts);
    assert_eq!(changes(&lines.events(), Line::Rts).len(), 3);
}

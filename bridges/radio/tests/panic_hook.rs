//! The panic hook in-process. A binary of its own because the hook unkeys every
//! keyed radio in the process (as it must), which would unkey the radios of any
//! test running beside it: tx_runner's drop test once saw 5 line changes instead
//! of 3 on CI for that reason.

use std::time::Instant;

use walkie_radio::ptt::{safety, FakeModemLines, PttLines, SerialLinePtt};
use walkie_radio::tx::{TxController, TxSettings};

mod support;

use support::FakeSink;

#[test]
fn panic_in_a_thread_with_a_leaked_keyed_controller_is_unkeyed_by_the_hook() {
    safety::install_panic_hook();
    let lines = FakeModemLines::new();
    let probe = lines.clone();
    let after = lines.clone();
    let t = std::thread::spawn(move || {
        let ptt = SerialLinePtt::new(lines, PttLines::RtsDtr, false).expect("open");
        let c = TxController::new(
            "panicking",
            TxSettings::default(),
            Box::new(ptt),
            Box::new(FakeSink::default()),
        )
        .expect("controller");
        // Leaked, so no Drop can unkey: only the panic hook can.
        let c: &'static mut TxController = Box::leak(Box::new(c));
        c.floor_taken_by_other(Instant::now()).expect("key");
        assert!(probe.levels_now().rts && probe.levels_now().dtr);
        panic!("injected panic mid-transmission");
    });
    assert!(t.join().is_err(), "the thread panicked");
    let l = lines_after(&after);
    assert!(!l.0 && !l.1, "unkeyed by the hook: {l:?}");
}

fn lines_after(p: &FakeModemLines) -> (bool, bool) {
    let l = p.levels_now();
    (l.rts, l.dtr)
}

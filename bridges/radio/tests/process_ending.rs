//! Once the process is ending (its main thread panicked, or a signal that ends
//! it arrived), no PTT keys again — not even for audio a transmit controller
//! still had in flight when the safety net unkeyed. A binary of its own: the
//! latch is process-wide and would refuse every other test's key.

use std::time::{Duration, Instant};

use walkie_radio::ptt::{safety, FakeModemLines, PttLines, SerialLinePtt};
use walkie_radio::tx::{TxController, TxSettings};
use walkie_radio::PttError;

mod support;

use support::FakeSink;

#[test]
fn after_the_process_starts_ending_audio_in_flight_does_not_key_again() {
    let lines = FakeModemLines::new();
    let ptt = SerialLinePtt::new(lines.clone(), PttLines::Rts, false).expect("open");
    let settings = TxSettings {
        tx_delay: Duration::from_millis(10),
        ..TxSettings::default()
    };
    let mut c = TxController::new(
        "ending",
        settings,
        Box::new(ptt),
        Box::new(FakeSink::default()),
    )
    .expect("controller");
    let t0 = Instant::now();
    c.floor_taken_by_other(t0).expect("key");
    assert!(lines.levels_now().rts, "keyed for the talker");

    // What the panic hook on the main thread (or the re-raising signal path)
    // does: latch, then unkey everything.
    safety::forbid_keying();
    assert!(safety::keying_forbidden());
    safety::unkey_all();
    assert!(!lines.levels_now().rts, "the safety net unkeyed");

    // The talker's next frame was already on its way: while the process lives
    // on, it would key again through tx_delay (tx_sequences.rs); now it may not.
    let _ = c.audio(t0 + Duration::from_millis(5), vec![1; 960]);
    let _ = c.tick(t0 + Duration::from_millis(30));
    assert!(
        !lines.levels_now().rts,
        "keyed again while the process ends"
    );
    assert!(!c.machine().is_keyed(), "the machine believes it is keyed");
    // Unkeying is still allowed, and keying is refused with a reason.
    assert!(c.ptt().set_keyed(false).is_ok());
    assert!(matches!(
        c.ptt().set_keyed(true),
        Err(PttError::ProcessEnding(name)) if name == "ending"
    ));
}

//! Receive detection on an exact timeline: line squelch over the fake modem
//! status (polarity, inversion, debounce), the transmit mute of RxGate and
//! RxDetector, and the rigctld answer parser.

use std::time::{Duration, Instant};
use walkie_radio::rx::{
    FakeModemStatus, LineSquelch, ModemLine, RxDetector, RxEvent, RxGate, Squelch, StatusLine,
    VoxSquelch,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Polls `squelch` every 10 ms from `from` to `to` (ms after `t0`); returns
/// the times (ms) at which its output changed, with the new state.
fn run(
    squelch: &mut dyn Squelch,
    t0: Instant,
    from: u64,
    to: u64,
    state: &mut bool,
) -> Vec<(u64, bool)> {
    let mut changes = Vec::new();
    for t in (from..=to).step_by(10) {
        let s = squelch.poll(t0 + ms(t)).expect("poll");
        if s != *state {
            *state = s;
            changes.push((t, s));
        }
    }
    changes
}

#[test]
fn cos_setting_parses_with_inversion() {
    let s: StatusLine = "!dcd".parse().expect("parse");
    assert_eq!((s.line, s.inverted), (ModemLine::Dcd, true));
    let s: StatusLine = "CTS".parse().expect("parse");
    assert_eq!((s.line, s.inverted), (ModemLine::Cts, false));
    assert!("rts".parse::<StatusLine>().is_err());
    assert!("!".parse::<StatusLine>().is_err());
}

#[test]
fn line_squelch_debounces_and_follows_the_configured_line() {
    let fake = FakeModemStatus::new();
    let mut sq = LineSquelch::new(fake.clone(), "dcd".parse().expect("parse"), ms(30));
    let t0 = Instant::now();
    let mut state = false;
    // Another line moving does nothing.
    fake.set(ModemLine::Cts, true);
    assert!(run(&mut sq, t0, 0, 100, &mut state).is_empty());
    // A 20 ms glitch on DCD is shorter than the debounce: ignored.
    fake.set(ModemLine::Dcd, true);
    assert!(run(&mut sq, t0, 110, 130, &mut state).is_empty());
    fake.set(ModemLine::Dcd, false);
    assert!(run(&mut sq, t0, 140, 200, &mut state).is_empty());
    // A real signal: accepted after 30 ms of stability.
    fake.set(ModemLine::Dcd, true);
    assert_eq!(run(&mut sq, t0, 210, 400, &mut state), vec![(240, true)]);
    // A dropout shorter than the debounce does not end it.
    fake.set(ModemLine::Dcd, false);
    assert!(run(&mut sq, t0, 410, 420, &mut state).is_empty());
    fake.set(ModemLine::Dcd, true);
    assert!(run(&mut sq, t0, 430, 500, &mut state).is_empty());
    fake.set(ModemLine::Dcd, false);
    assert_eq!(run(&mut sq, t0, 510, 600, &mut state), vec![(540, false)]);
}

#[test]
fn inverted_line_reads_low_as_signal() {
    let fake = FakeModemStatus::new();
    fake.set(ModemLine::Cts, true); // idle: high
    let mut sq = LineSquelch::new(fake.clone(), "!cts".parse().expect("parse"), ms(20));
    let t0 = Instant::now();
    let mut state = false;
    assert!(run(&mut sq, t0, 0, 100, &mut state).is_empty());
    fake.set(ModemLine::Cts, false); // active-low COS pulls it down
    assert_eq!(run(&mut sq, t0, 110, 200, &mut state), vec![(130, true)]);
    fake.set(ModemLine::Cts, true);
    assert_eq!(run(&mut sq, t0, 210, 300, &mut state), vec![(230, false)]);
}

#[test]
fn a_failing_port_is_an_error_not_a_signal() {
    let fake = FakeModemStatus::new();
    let mut sq = LineSquelch::new(fake.clone(), "dsr".parse().expect("parse"), ms(0));
    fake.set_failing(true);
    let err = sq.poll(Instant::now()).unwrap_err().to_string();
    assert!(err.contains("DSR"), "{err}");
}

#[test]
fn gate_mutes_while_transmitting_and_after() {
    let t0 = Instant::now();
    let mut gate = RxGate::new(ms(300));
    assert_eq!(gate.update(true, t0), Some(RxEvent::Started));
    // Keying up ends the reception in progress.
    assert_eq!(
        gate.set_transmitting(true, t0 + ms(100)),
        Some(RxEvent::Ended)
    );
    // Our own signal is detected all through the transmission: muted.
    for t in (100..=2_000).step_by(10) {
        assert_eq!(gate.update(true, t0 + ms(t)), None, "at {t} ms");
        assert!(gate.is_muted(t0 + ms(t)));
    }
    // Unkey at 2000 ms: still muted for 300 ms.
    assert_eq!(gate.set_transmitting(false, t0 + ms(2_000)), None);
    for t in (2_000..2_300).step_by(10) {
        assert_eq!(gate.update(true, t0 + ms(t)), None, "at {t} ms");
    }
    assert!(!gate.is_muted(t0 + ms(2_300)));
    assert_eq!(gate.update(true, t0 + ms(2_300)), Some(RxEvent::Started));
    assert_eq!(gate.update(false, t0 + ms(2_400)), Some(RxEvent::Ended));
}

#[test]
fn detector_keeps_our_own_audio_out_of_the_vox() {
    // VOX with a long hang: if our transmitted audio reached it, it would
    // stay open long after the mute ends.
    let vox = VoxSquelch::new(walkie_endpoint::audio::VoxConfig {
        threshold_dbfs: -40.0,
        attack_ms: 40,
        hang_ms: 800,
    });
    let mut det = RxDetector::new(Box::new(vox), ms(200));
    let t0 = Instant::now();
    let loud = vec![8_000i16; 960];
    let quiet = vec![0i16; 960];
    let mut events = Vec::new();
    let mut t = 0u64;
    let step =
        |det: &mut RxDetector, pcm: &[i16], t: &mut u64, events: &mut Vec<(u64, RxEvent)>| {
            det.feed_audio(pcm, t0 + ms(*t));
            if let Some(e) = det.poll(t0 + ms(*t)).expect("poll") {
                events.push((*t, e));
            }
            *t += 20;
        };
    // Received speech opens the detector after the attack.
    for _ in 0..10 {
        step(&mut det, &loud, &mut t, &mut events);
    }
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1, RxEvent::Started);
    // We key up: reception ends at once.
    assert_eq!(det.set_transmitting(true, t0 + ms(t)), Some(RxEvent::Ended));
    // Our own loud audio comes back through the card for 1 s: nothing.
    for _ in 0..50 {
        step(&mut det, &loud, &mut t, &mut events);
    }
    det.set_transmitting(false, t0 + ms(t));
    let unkeyed = t;
    // The echo of our audio lingers for 100 ms in the card: still muted.
    for _ in 0..5 {
        step(&mut det, &loud, &mut t, &mut events);
    }
    // Then silence: nothing opens (the VOX never saw our audio).
    for _ in 0..60 {
        step(&mut det, &quiet, &mut t, &mut events);
    }
    // Only the first reception so far (its end was returned by set_transmitting).
    assert_eq!(
        events.len(),
        1,
        "events {events:?} (unkeyed at {unkeyed} ms)"
    );
    assert!(!det.is_open());
    // A real reply after the mute opens it again.
    for _ in 0..5 {
        step(&mut det, &loud, &mut t, &mut events);
    }
    assert_eq!(
        events.last().map(|e| e.1),
        Some(RxEvent::Started),
        "{events:?}"
    );
}

#[test]
fn rigctld_answers_parse() {
    use walkie_radio::rx::parse_dcd;
    assert_eq!(parse_dcd("1"), Ok(true));
    assert_eq!(parse_dcd("0"), Ok(false));
    let e = parse_dcd("RPRT -11").unwrap_err();
    assert!(e.contains("RPRT -11"), "{e}");
    assert!(parse_dcd("banana").is_err());
}

//! Whole transmit sequences on FakeModemLines with a FakeClock: every line
//! change is asserted with its exact time.

mod support;

use std::time::{Duration, Instant};

use support::{changes, ms, FakeId, FakeSink, ID_SAMPLE};
use walkie_radio::ptt::{FakeClock, FakeModemLines, Line, PttLines, SerialLinePtt};
use walkie_radio::tx::{Action, Input, Phase, TxController, TxMachine, TxSettings, UnkeyReason};

struct Rig {
    t0: Instant,
    clock: FakeClock,
    lines: FakeModemLines,
    sink: FakeSink,
    c: TxController,
}

fn rig(settings: TxSettings, invert: bool, drain: Duration) -> Rig {
    let t0 = Instant::now();
    let clock = FakeClock::new(t0);
    let lines = FakeModemLines::with_clock(clock.clone());
    let sink = FakeSink::new(Some(clock.clone()), drain);
    let ptt = SerialLinePtt::new(lines.clone(), PttLines::Rts, invert).expect("open");
    let c = TxController::new("test", settings, Box::new(ptt), Box::new(sink.clone()))
        .expect("controller");
    Rig {
        t0,
        clock,
        lines,
        sink,
        c,
    }
}

impl Rig {
    fn at(&self, offset_ms: u64) -> Instant {
        let t = self.t0 + ms(offset_ms);
        self.clock.set(t);
        t
    }
    /// Audio frames every 20 ms in [from, to), ticking whenever a deadline
    /// falls due first — as the runner does.
    fn audio(&mut self, from: u64, to: u64) {
        let mut t = from;
        while t < to {
            self.tick_until(t);
            let now = self.at(t);
            self.c.audio(now, vec![t as i16; 4]).expect("audio");
            t += 20;
        }
    }
    fn tick_until(&mut self, offset_ms: u64) {
        let end = self.t0 + ms(offset_ms);
        while let Some(d) = self.c.next_deadline().filter(|d| *d <= end) {
            self.clock.set(d);
            self.c.tick(d).expect("tick");
        }
        self.clock.set(end);
    }
    fn rts(&self) -> Vec<(Duration, bool)> {
        changes(&self.lines.events(), Line::Rts)
            .into_iter()
            .map(|(t, l)| (t - self.t0, l))
            .collect()
    }
}

fn settings() -> TxSettings {
    TxSettings {
        tx_delay: ms(150),
        ptt_hang: ms(200),
        tx_timeout: Duration::from_secs(180),
        ..TxSettings::default()
    }
}

#[test]
fn normal_transmission_delay_then_audio_then_drain_and_hang() {
    let mut r = rig(settings(), false, ms(40));
    let now = r.at(1000);
    r.c.floor_taken_by_other(now).expect("take");
    r.audio(1020, 3000); // audio from 20 ms after the key up to 2980
    let now = r.at(3000);
    r.c.floor_released(now).expect("release");
    r.tick_until(10_000);

    // Unkeyed at open, keyed at the floor, unkeyed after drain (40) + hang (200).
    assert_eq!(
        r.rts(),
        vec![(ms(0), false), (ms(1000), true), (ms(3240), false)]
    );
    let played = r.sink.played();
    // Nothing before tx_delay; the held-back frames come out at exactly 150 ms.
    assert_eq!(played[0].0 - r.t0, ms(1150));
    assert_eq!(played[0].1, vec![1020; 4]);
    // Every frame played once, in order.
    let firsts: Vec<i16> = played.iter().map(|(_, s)| s[0]).collect();
    let expected: Vec<i16> = (1020..3000).step_by(20).map(|t| t as i16).collect();
    assert_eq!(firsts, expected);
    assert_eq!(r.c.machine().phase(), &Phase::Idle);
}

#[test]
fn inverted_ptt_sequence() {
    let mut r = rig(settings(), true, Duration::ZERO);
    let now = r.at(0);
    r.c.floor_taken_by_other(now).expect("take");
    r.audio(0, 500);
    let now = r.at(500);
    r.c.floor_released(now).expect("release");
    r.tick_until(2000);
    // Active-low: idle high, keyed low, hang 200 after release.
    assert_eq!(
        r.rts(),
        vec![(ms(0), true), (ms(0), false), (ms(700), true)]
    );
}

#[test]
fn tx_timeout_unkeys_locks_out_until_release_then_keys_again() {
    let mut s = settings();
    s.tx_timeout = Duration::from_secs(2);
    let mut r = rig(s, false, Duration::ZERO);
    let now = r.at(0);
    r.c.floor_taken_by_other(now).expect("take");
    r.audio(0, 5000); // the talker keeps going well past the cap
    assert_eq!(r.c.machine().phase(), &Phase::LockedOut);
    let now = r.at(5000);
    r.c.floor_released(now).expect("release");
    // The next floor keys again.
    let now = r.at(6000);
    r.c.floor_taken_by_other(now).expect("take");
    r.audio(6000, 6500);
    let now = r.at(6500);
    r.c.floor_released(now).expect("release");
    r.tick_until(8000);
    assert_eq!(
        r.rts(),
        vec![
            (ms(0), false),
            (ms(0), true),
            (ms(2000), false), // at the cap, not a frame later
            (ms(6000), true),
            (ms(6700), false),
        ]
    );
    // No audio was played while locked out.
    assert!(r
        .sink
        .played()
        .iter()
        .all(|(t, _)| *t - r.t0 < ms(2000) || *t - r.t0 >= ms(6000)));
}

#[test]
fn watchdog_unkeys_when_audio_stalls_while_keyed() {
    let mut r = rig(settings(), false, Duration::ZERO);
    let now = r.at(0);
    r.c.floor_taken_by_other(now).expect("take");
    r.audio(0, 1000); // last frame at 980
    r.tick_until(5000); // floor still held, no audio
    assert_eq!(
        r.rts(),
        vec![(ms(0), false), (ms(0), true), (ms(2980), false)]
    );
    assert_eq!(r.c.machine().phase(), &Phase::Stalled);
    // Audio resuming on the same floor keys again, through tx_delay.
    r.audio(6000, 6100);
    r.tick_until(6200);
    assert_eq!(r.rts().last(), Some(&(ms(6000), true)));
    assert_eq!(
        r.sink.played().last().map(|(t, _)| *t - r.t0),
        Some(ms(6150))
    );
}

#[test]
fn watchdog_unkeys_when_no_audio_ever_comes() {
    let mut r = rig(settings(), false, Duration::ZERO);
    let now = r.at(0);
    r.c.floor_taken_by_other(now).expect("take");
    r.tick_until(5000);
    assert_eq!(
        r.rts(),
        vec![(ms(0), false), (ms(0), true), (ms(2000), false)]
    );
}

#[test]
fn shutdown_mid_transmission_unkeys_at_once_and_for_good() {
    let mut r = rig(settings(), false, Duration::ZERO);
    let now = r.at(0);
    r.c.floor_taken_by_other(now).expect("take");
    r.audio(0, 700);
    let now = r.at(700);
    r.c.shutdown(now).expect("shutdown");
    let now = r.at(800);
    r.c.floor_taken_by_other(now).expect("take after shutdown");
    r.audio(800, 1000);
    assert_eq!(
        r.rts(),
        vec![(ms(0), false), (ms(0), true), (ms(700), false)]
    );
}

#[test]
fn release_before_tx_delay_plays_held_audio_then_hangs() {
    let mut r = rig(settings(), false, ms(10));
    let now = r.at(0);
    r.c.floor_taken_by_other(now).expect("take");
    r.audio(0, 60); // a very short press
    let now = r.at(60);
    r.c.floor_released(now).expect("release");
    r.tick_until(1000);
    assert_eq!(r.sink.played().len(), 3);
    assert_eq!(r.sink.played()[0].0 - r.t0, ms(150));
    // Audio out at 150, drain 10, hang 200.
    assert_eq!(
        r.rts(),
        vec![(ms(0), false), (ms(0), true), (ms(360), false)]
    );
}

/// Issue 14.2: the next talker takes the floor while the machine still waits
/// out `tx_delay` with a release pending. The pending release belongs to the
/// previous talker: the new one's audio goes out and the radio stays keyed.
#[test]
fn a_new_floor_before_tx_delay_ends_cancels_the_pending_release() {
    let mut r = rig(settings(), false, Duration::ZERO);
    let now = r.at(0);
    r.c.floor_taken_by_other(now).expect("take");
    r.audio(0, 60); // alice: a very short press
    let now = r.at(60);
    r.c.floor_released(now).expect("release");
    let now = r.at(70); // bob, queued, gets the floor at once
    r.c.floor_taken_by_other(now).expect("take");
    r.audio(80, 1000);
    assert!(
        matches!(r.c.machine().phase(), Phase::Live { .. }),
        "still transmitting bob: {:?}",
        r.c.machine().phase()
    );
    let now = r.at(1000);
    r.c.floor_released(now).expect("release");
    r.tick_until(2000);
    // alice's 3 frames and all 46 of bob's, from the end of tx_delay on.
    let played = r.sink.played();
    assert_eq!(played.len(), 3 + 46, "frames on the air");
    assert_eq!(played.last().map(|(_, s)| s[0]), Some(980));
    assert_eq!(
        r.rts(),
        vec![(ms(0), false), (ms(0), true), (ms(1200), false)]
    );
}

#[test]
fn release_without_audio_unkeys_at_once() {
    let mut r = rig(settings(), false, Duration::ZERO);
    let now = r.at(0);
    r.c.floor_taken_by_other(now).expect("take");
    let now = r.at(50);
    r.c.floor_released(now).expect("release");
    assert_eq!(
        r.rts(),
        vec![(ms(0), false), (ms(0), true), (ms(50), false)]
    );
}

#[test]
fn next_floor_during_hang_stays_keyed_without_second_delay() {
    let mut r = rig(settings(), false, Duration::ZERO);
    let now = r.at(0);
    r.c.floor_taken_by_other(now).expect("take");
    r.audio(0, 500);
    let now = r.at(500);
    r.c.floor_released(now).expect("release");
    let now = r.at(600); // inside the 200 ms hang
    r.c.floor_taken_by_other(now).expect("take");
    r.audio(600, 700);
    assert_eq!(
        r.sink.played().last().map(|(t, _)| *t - r.t0),
        Some(ms(680))
    );
    let now = r.at(700);
    r.c.floor_released(now).expect("release");
    r.tick_until(2000);
    assert_eq!(
        r.rts(),
        vec![(ms(0), false), (ms(0), true), (ms(900), false)]
    );
}

#[test]
fn morse_id_at_the_end_of_a_transmission_when_due() {
    let mut s = settings();
    s.id_interval = Some(Duration::from_secs(600));
    let mut r = rig(s, false, Duration::ZERO);
    // Rebuild with an ID source (the tone generator is the audio side's).
    let ptt = SerialLinePtt::new(r.lines.clone(), PttLines::Rts, false).expect("open");
    r.c = TxController::new("test-id", s, Box::new(ptt), Box::new(r.sink.clone()))
        .expect("controller")
        .with_id_source(Box::new(FakeId));
    assert!(r.c.id_due(r.at(0)));
    // At 700 s the ID is overdue from the start: it is laid over the first frame
    // (see the next test) rather than waiting for the end.
    let count_ids = |r: &Rig| {
        r.sink
            .played()
            .iter()
            .filter(|(at, s)| {
                let speech = (*at - r.t0).as_millis() as i16;
                s[0] == ID_SAMPLE || (s.len() == 4 && s[0] == speech.saturating_add(ID_SAMPLE))
            })
            .count()
    };
    for (start, n) in [(0u64, 1usize), (10_000, 1), (700_000, 2)] {
        let now = r.at(start);
        r.c.floor_taken_by_other(now).expect("take");
        r.audio(start, start + 400);
        let now = r.at(start + 400);
        r.c.floor_released(now).expect("release");
        r.tick_until(start + 1000);
        assert_eq!(count_ids(&r), n, "transmission at {start} ms");
        if start == 0 {
            // The first ID is the last audio of its transmission, after the speech.
            assert_eq!(r.sink.played().last().map(|(_, s)| s[0]), Some(ID_SAMPLE));
        }
    }
}

#[test]
fn a_failed_unkey_is_retried_every_tick_until_it_succeeds() {
    let mut r = rig(settings(), false, Duration::ZERO);
    let now = r.at(0);
    r.c.floor_taken_by_other(now).expect("take");
    r.audio(0, 300);
    r.lines.fail_next(3); // RTS and DTR of the first unkey, RTS of the retry
    let now = r.at(300);
    assert!(r.c.shutdown(now).is_err());
    assert!(
        r.c.next_deadline().is_some(),
        "an owed unkey has a deadline"
    );
    // Ticks as the runner delivers them; the failing ones report errors.
    let mut errors = 0;
    while let Some(d) = r.c.next_deadline() {
        r.clock.set(d);
        if r.c.tick(d).is_err() {
            errors += 1;
        }
    }
    assert_eq!(errors, 1, "first retry fails on the injected RTS error");
    assert!(!r.lines.levels_now().rts);
    assert_eq!(r.c.next_deadline(), None);
    assert_eq!(r.rts().last(), Some(&(ms(500), false)));
}

#[test]
fn a_long_transmission_is_identified_while_it_lasts_without_holding_the_talker_up() {
    let mut s = settings();
    s.id_interval = Some(Duration::from_secs(60));
    s.tx_timeout = Duration::from_secs(180);
    let mut r = rig(s, false, Duration::ZERO);
    let ptt = SerialLinePtt::new(r.lines.clone(), PttLines::Rts, false).expect("open");
    r.c = TxController::new("test-mid-id", s, Box::new(ptt), Box::new(r.sink.clone()))
        .expect("controller")
        .with_id_source(Box::new(FakeId));
    let now = r.at(0);
    r.c.floor_taken_by_other(now).expect("take");
    // 150 s of silence-valued speech frames: the station has never identified, so
    // the ID is due 60 s after the key-up and again 60 s later.
    let mut t = 0;
    while t < 150_000 {
        r.tick_until(t);
        let now = r.at(t);
        r.c.audio(now, vec![0; 4]).expect("audio");
        t += 20;
    }
    let played = r.sink.played();
    // Every frame of speech is played exactly once, none delayed or dropped:
    // the ID is laid over them (a frame carrying ID samples is not silent).
    let speech_frames = played.iter().filter(|(_, f)| f.len() == 4).count();
    assert_eq!(speech_frames, 150_000 / 20);
    let mixed: Vec<Duration> = played
        .iter()
        .filter(|(_, f)| f[0] == ID_SAMPLE)
        .map(|(at, _)| *at - r.t0)
        .collect();
    assert_eq!(
        mixed.len(),
        2,
        "two IDs over 150 s at a 60 s interval: {mixed:?}"
    );
    assert_eq!(mixed[0], Duration::from_secs(60));
    assert_eq!(mixed[1], Duration::from_secs(120));
    let now = r.at(150_000);
    r.c.floor_released(now).expect("release");
    r.tick_until(151_000);
    // Identified 30 s ago: nothing owed at the end.
    assert!(!r
        .sink
        .played()
        .iter()
        .any(|(at, f)| *at >= r.t0 + ms(150_000) && f[0] == ID_SAMPLE));
    assert_eq!(r.rts().last().map(|(_, l)| *l), Some(false));
}

/// Issue 14.8: the panic hook (a panic anywhere in the process) unkeyed the
/// radio behind the machine's back. The machine must stop believing it is on
/// the air, and key again only for the holder's fresh audio, through tx_delay.
#[test]
fn an_unkey_by_the_safety_net_stops_the_transmission_and_fresh_audio_keys_again_through_tx_delay() {
    let t0 = Instant::now();
    let at = |n: u64| t0 + ms(n);
    let mut m = TxMachine::new(settings());
    assert_eq!(m.handle(at(0), Input::FloorTaken), vec![Action::Key]);
    assert_eq!(m.handle(at(20), Input::Audio(vec![1])), vec![]);
    assert_eq!(m.handle(at(150), Input::Tick), vec![Action::Play(vec![1])]);
    assert_eq!(
        m.handle(at(160), Input::Audio(vec![2])),
        vec![Action::Play(vec![2])]
    );
    // The hook unkeyed every radio; the controller tells the machine.
    assert_eq!(
        m.handle(at(170), Input::UnkeyedElsewhere),
        vec![Action::Unkey(UnkeyReason::UnkeyedElsewhere)]
    );
    assert_eq!(m.phase(), &Phase::Stalled);
    assert!(!m.is_keyed());
    assert_eq!(m.next_deadline(), None, "nothing keys it on a timer");
    // The holder's next audio keys again; nothing plays before tx_delay.
    assert_eq!(m.handle(at(180), Input::Audio(vec![3])), vec![Action::Key]);
    assert_eq!(m.handle(at(200), Input::Audio(vec![4])), vec![]);
    assert_eq!(m.next_deadline(), Some(at(330)));
    assert_eq!(
        m.handle(at(330), Input::Tick),
        vec![Action::Play(vec![3]), Action::Play(vec![4])]
    );
    // Unkeyed again during the hang of a released transmission: it just ends.
    assert_eq!(m.handle(at(400), Input::FloorReleased), vec![Action::Drain]);
    m.handle(at(400), Input::Drained { remaining: ms(20) });
    assert!(matches!(m.phase(), Phase::Hang { .. }));
    assert_eq!(
        m.handle(at(450), Input::UnkeyedElsewhere),
        vec![Action::Unkey(UnkeyReason::UnkeyedElsewhere)]
    );
    assert_eq!(m.phase(), &Phase::Idle);
    assert_eq!(m.handle(at(500), Input::Audio(vec![5])), vec![]);
    // Not keyed: nothing to do.
    assert!(m.handle(at(600), Input::UnkeyedElsewhere).is_empty());
}

//! Property tests of the floor arbiter over random interleavings of requests, audio,
//! releases, disconnects and the passing of time. The checker keeps its own model of
//! who holds and who waits, built only from the decisions the floor announces, and
//! holds every announcement against the rules of DESIGN.md §3.

use proptest::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use walkie_bridge::hub::{Claimant, Decision, Floor, FloorSettings, Input};
use walkie_endpoint::{EndpointId, Priority, ReleaseReason, StreamKey, TalkKind, Talker, TxId};

#[derive(Debug, Clone)]
enum Op {
    Request {
        endpoint: u8,
        stream: u8,
        priority: Priority,
        kind: TalkKind,
    },
    Audio {
        endpoint: u8,
        stream: u8,
    },
    Done {
        endpoint: u8,
        stream: u8,
    },
    Gone {
        endpoint: u8,
    },
    Advance {
        ms: u64,
    },
}

fn priority() -> impl Strategy<Value = Priority> {
    prop_oneof![
        6 => Just(Priority::Normal),
        2 => Just(Priority::High),
        1 => Just(Priority::Emergency),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 0u8..3, priority(), prop_oneof![3 => Just(TalkKind::Live), 1 => Just(TalkKind::Message)])
            .prop_map(|(endpoint, stream, priority, kind)| Op::Request { endpoint, stream, priority, kind }),
        5 => (0u8..3, 0u8..3).prop_map(|(endpoint, stream)| Op::Audio { endpoint, stream }),
        3 => (0u8..3, 0u8..3).prop_map(|(endpoint, stream)| Op::Done { endpoint, stream }),
        1 => (0u8..3).prop_map(|endpoint| Op::Gone { endpoint }),
        4 => prop_oneof![0u64..50, 0u64..3_000].prop_map(|ms| Op::Advance { ms }),
    ]
}

fn settings() -> impl Strategy<Value = FloorSettings> {
    (
        1u64..4,
        50u64..1_500,
        prop_oneof![Just(0u64), 1u64..600],
        any::<bool>(),
        0usize..4,
    )
        .prop_map(
            |(max_talk_s, idle_ms, hang_ms, queue, queue_max)| FloorSettings {
                max_talk: Duration::from_secs(max_talk_s),
                idle_release: Duration::from_millis(idle_ms),
                hang: Duration::from_millis(hang_ms),
                queue,
                queue_max,
            },
        )
}

fn claimant(endpoint: u8, stream: u8) -> Claimant {
    Claimant {
        endpoint: EndpointId::new(format!("test.e{endpoint}")),
        stream: StreamKey(u64::from(stream)),
    }
}

#[derive(Debug, Clone)]
struct Holding {
    who: Claimant,
    tx: TxId,
    priority: Priority,
    since: Instant,
    last_audio: Instant,
}

#[derive(Debug, Clone)]
struct Waiting {
    priority: Priority,
    arrival: u64,
}

/// The checker's view of the floor, built from announcements alone.
struct Model {
    settings: FloorSettings,
    now: Instant,
    holder: Option<Holding>,
    waiting: HashMap<Claimant, Waiting>,
    hang: Option<(EndpointId, Instant)>,
    arrivals: u64,
    open_grants: HashMap<TxId, Claimant>,
    grants: usize,
}

impl Model {
    fn hang_active(&self) -> Option<&EndpointId> {
        self.hang
            .as_ref()
            .filter(|(_, until)| self.now < *until)
            .map(|(endpoint, _)| endpoint)
    }

    /// Lower ranks are served first: priority, then (during the reply window)
    /// the previous talker's endpoint, then arrival.
    fn rank(
        &self,
        who: &Claimant,
        priority: Priority,
        arrival: u64,
    ) -> (std::cmp::Reverse<Priority>, bool, u64) {
        let eligible = self
            .hang_active()
            .is_none_or(|endpoint| *endpoint == who.endpoint);
        (std::cmp::Reverse(priority), !eligible, arrival)
    }

    /// Checks one batch of decisions produced by `input` and folds it in.
    fn apply(&mut self, input: &Input, decisions: &[Decision]) -> Result<(), TestCaseError> {
        let mut requester: Option<(Claimant, Priority, TalkKind, bool)> = None;
        if let Input::Request {
            who,
            priority,
            kind,
            ..
        } = input
        {
            let known = self.waiting.contains_key(who)
                || self.holder.as_ref().is_some_and(|h| h.who == *who);
            requester = Some((who.clone(), *priority, *kind, known));
        }
        // A reply window kept for an endpoint that is gone is void before anything
        // this input causes is decided.
        if let Input::EndpointGone { endpoint } = input {
            if self.hang.as_ref().is_some_and(|(e, _)| e == endpoint) {
                self.hang = None;
            }
        }
        let mut answered = false;
        let mut revoked_for_emergency = false;

        for decision in decisions {
            match decision {
                Decision::Granted {
                    who, tx, priority, ..
                } => {
                    if requester
                        .as_ref()
                        .is_some_and(|(r, _, _, known)| r == who && *known)
                    {
                        // A repeated request from the holder is re-told its grant.
                        let holding = self
                            .holder
                            .as_ref()
                            .ok_or_else(|| TestCaseError::fail("re-grant without holder"))?;
                        prop_assert_eq!(&holding.who, who);
                        prop_assert_eq!(holding.tx, *tx);
                        answered = true;
                        continue;
                    }
                    prop_assert!(
                        self.holder.is_none(),
                        "granted {:?} while {:?} holds",
                        who,
                        self.holder
                    );
                    let is_new_request = requester.as_ref().is_some_and(|(r, _, _, _)| r == who);
                    let (arrival, granted_priority) = match self.waiting.remove(who) {
                        Some(w) => (w.arrival, w.priority),
                        None => {
                            prop_assert!(is_new_request, "granted {:?}, who never asked", who);
                            (u64::MAX, *priority)
                        }
                    };
                    prop_assert_eq!(granted_priority, *priority);
                    if let Some(endpoint) = self.hang_active() {
                        prop_assert!(
                            *priority == Priority::Emergency || *endpoint == who.endpoint,
                            "reply window of {} broken by {:?}",
                            endpoint,
                            who
                        );
                    }
                    let own_rank = self.rank(who, *priority, arrival);
                    for (other, w) in &self.waiting {
                        prop_assert!(
                            self.rank(other, w.priority, w.arrival) > own_rank,
                            "{:?} ({:?}) granted ahead of {:?} ({:?})",
                            who,
                            priority,
                            other,
                            w.priority
                        );
                    }
                    if is_new_request {
                        answered = true;
                    }
                    self.holder = Some(Holding {
                        who: who.clone(),
                        tx: *tx,
                        priority: *priority,
                        since: self.now,
                        last_audio: self.now,
                    });
                    self.hang = None;
                    prop_assert!(
                        self.open_grants.insert(*tx, who.clone()).is_none(),
                        "tx id reused"
                    );
                    self.grants += 1;
                }
                Decision::Denied { who, .. } => {
                    let (r, _, kind, known) = requester
                        .clone()
                        .ok_or_else(|| TestCaseError::fail("denied without a request"))?;
                    prop_assert_eq!(&r, who);
                    prop_assert!(!known);
                    let queue_full = self.waiting.len() >= self.settings.queue_max;
                    let may_not_wait = !self.settings.queue && kind == TalkKind::Live;
                    prop_assert!(
                        queue_full || may_not_wait,
                        "denied {:?} with room in the queue",
                        who
                    );
                    answered = true;
                }
                Decision::Queued { who, position } => {
                    prop_assert!(*position >= 1);
                    if !self.waiting.contains_key(who) {
                        let (r, priority, kind, _) = requester
                            .clone()
                            .ok_or_else(|| TestCaseError::fail("queued without a request"))?;
                        prop_assert_eq!(&r, who);
                        prop_assert!(
                            self.settings.queue || kind == TalkKind::Message,
                            "queued while queueing is off"
                        );
                        prop_assert!(
                            self.waiting.len() < self.settings.queue_max,
                            "queue grew past queue_max"
                        );
                        self.arrivals += 1;
                        self.waiting.insert(
                            who.clone(),
                            Waiting {
                                priority,
                                arrival: self.arrivals,
                            },
                        );
                    }
                    if requester.as_ref().is_some_and(|(r, ..)| r == who) {
                        answered = true;
                    }
                }
                Decision::Dequeued { who } => {
                    prop_assert!(
                        self.waiting.remove(who).is_some(),
                        "dequeued {:?}, not waiting",
                        who
                    );
                }
                Decision::Released { who, tx, reason } => {
                    let holding = self
                        .holder
                        .take()
                        .ok_or_else(|| TestCaseError::fail("released with no holder"))?;
                    prop_assert_eq!(&holding.who, who);
                    prop_assert_eq!(holding.tx, *tx);
                    prop_assert_eq!(self.open_grants.remove(tx), Some(who.clone()));
                    let expected_ok = match reason {
                        ReleaseReason::TalkerDone => {
                            matches!(input, Input::Done { who: w } if w == who)
                        }
                        ReleaseReason::IdleTimeout => {
                            matches!(input, Input::Tick)
                                && self.now >= holding.last_audio + self.settings.idle_release
                        }
                        ReleaseReason::MaxTalkTime => {
                            matches!(input, Input::Tick)
                                && self.now >= holding.since + self.settings.max_talk
                        }
                        ReleaseReason::Revoked => {
                            revoked_for_emergency = true;
                            matches!(
                                input,
                                Input::Request {
                                    priority: Priority::Emergency,
                                    ..
                                }
                            ) && holding.priority < Priority::Emergency
                        }
                        ReleaseReason::EndpointGone => {
                            matches!(input, Input::EndpointGone { endpoint } if *endpoint == who.endpoint)
                        }
                        ReleaseReason::Shutdown => matches!(input, Input::Shutdown),
                    };
                    prop_assert!(
                        expected_ok,
                        "release {:?} of {:?} on {:?}",
                        reason,
                        who,
                        input
                    );
                    let earns_hang = matches!(
                        reason,
                        ReleaseReason::TalkerDone | ReleaseReason::IdleTimeout
                    ) && !self.settings.hang.is_zero()
                        && self.waiting.is_empty();
                    self.hang =
                        earns_hang.then(|| (who.endpoint.clone(), self.now + self.settings.hang));
                }
                Decision::Idle => {
                    prop_assert!(
                        self.holder.is_none() && self.waiting.is_empty(),
                        "idle while busy"
                    );
                }
            }
        }

        if let Input::EndpointGone { endpoint } = input {
            prop_assert!(!self.waiting.keys().any(|w| w.endpoint == *endpoint));
            prop_assert!(self
                .holder
                .as_ref()
                .is_none_or(|h| h.who.endpoint != *endpoint));
        }
        if let Some((who, priority, _, known)) = requester {
            prop_assert!(answered, "request of {:?} got no answer", who);
            if priority == Priority::Emergency && !known {
                // An emergency never waits behind a lesser talker.
                if revoked_for_emergency {
                    prop_assert!(self.holder.as_ref().is_some_and(|h| h.who == who));
                }
                prop_assert!(
                    self.holder
                        .as_ref()
                        .is_some_and(|h| h.who == who || h.priority == Priority::Emergency),
                    "emergency {:?} waits behind {:?}",
                    who,
                    self.holder
                );
            }
        }
        // Nobody is left waiting on a free floor except for a reply window.
        if self.holder.is_none() && !self.waiting.is_empty() {
            prop_assert!(
                self.hang_active().is_some(),
                "queue stalled on a free floor"
            );
        }
        if let Some(holding) = &self.holder {
            prop_assert!(
                self.now < holding.since + self.settings.max_talk,
                "held past max talk"
            );
            prop_assert!(
                self.now < holding.last_audio + self.settings.idle_release,
                "held past idle release"
            );
        }
        Ok(())
    }
}

/// Delivers ticks the way the hub does: at each deadline, in order, up to `until`.
fn advance(floor: &mut Floor, model: &mut Model, until: Instant) -> Result<(), TestCaseError> {
    while let Some(deadline) = floor.next_deadline().filter(|d| *d <= until) {
        prop_assert!(deadline >= model.now, "deadline in the past");
        model.now = deadline;
        let decisions = floor.handle(model.now, Input::Tick);
        model.apply(&Input::Tick, &decisions)?;
    }
    model.now = until;
    Ok(())
}

fn talker(endpoint: u8, stream: u8) -> Talker {
    Talker::new(
        format!("e{endpoint}s{stream}"),
        format!("talker {endpoint}/{stream}"),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn floor_rules_hold_under_any_interleaving(settings in settings(), ops in prop::collection::vec(op(), 1..120)) {
        let start = Instant::now();
        let mut floor = Floor::new(settings);
        let mut model = Model {
            settings,
            now: start,
            holder: None,
            waiting: HashMap::new(),
            hang: None,
            arrivals: 0,
            open_grants: HashMap::new(),
            grants: 0,
        };
        for op in ops {
            let input = match op {
                Op::Advance { ms } => {
                    let until = model.now + Duration::from_millis(ms);
                    advance(&mut floor, &mut model, until)?;
                    continue;
                }
                Op::Audio { endpoint, stream } => {
                    let who = claimant(endpoint, stream);
                    let forwarded = floor.audio(model.now, &who);
                    let expected = model.holder.as_mut().filter(|h| h.who == who);
                    prop_assert_eq!(forwarded, expected.as_ref().map(|h| h.tx), "frame of {:?} wrongly judged", who);
                    if let Some(holding) = expected {
                        holding.last_audio = model.now;
                    }
                    continue;
                }
                Op::Request { endpoint, stream, priority, kind } => Input::Request {
                    who: claimant(endpoint, stream),
                    talker: talker(endpoint, stream),
                    priority,
                    kind,
                },
                Op::Done { endpoint, stream } => Input::Done { who: claimant(endpoint, stream) },
                Op::Gone { endpoint } => Input::EndpointGone { endpoint: EndpointId::new(format!("test.e{endpoint}")) },
            };
            // The hub never lets a deadline pass unserved before the next input.
            let now = model.now;
            advance(&mut floor, &mut model, now)?;
            let decisions = floor.handle(model.now, input.clone());
            model.apply(&input, &decisions)?;
            prop_assert_eq!(floor.queue_len(), model.waiting.len());
        }

        // Every grant ends: with no more audio, idle release and the queue drain it all.
        let bound = model.grants + model.waiting.len() + 2;
        for _ in 0..bound * 3 {
            match floor.next_deadline() {
                Some(deadline) => advance(&mut floor, &mut model, deadline)?,
                None => break,
            }
        }
        prop_assert!(floor.next_deadline().is_none(), "floor never settles");
        prop_assert!(model.holder.is_none() && model.waiting.is_empty());
        prop_assert!(model.open_grants.is_empty(), "grants never released: {:?}", model.open_grants);
    }
}

#[test]
fn shutdown_releases_the_holder_and_empties_the_queue() {
    let now = Instant::now();
    let mut floor = Floor::new(FloorSettings::default());
    let request = |e: u8| Input::Request {
        who: claimant(e, 0),
        talker: talker(e, 0),
        priority: Priority::Normal,
        kind: TalkKind::Live,
    };
    let granted = floor.handle(now, request(0));
    assert!(matches!(granted.as_slice(), [Decision::Granted { .. }]));
    let queued = floor.handle(now, request(1));
    assert!(matches!(
        queued.as_slice(),
        [Decision::Queued { position: 1, .. }]
    ));
    let down = floor.handle(now, Input::Shutdown);
    assert!(down.iter().any(|d| matches!(
        d,
        Decision::Released {
            reason: ReleaseReason::Shutdown,
            ..
        }
    )));
    assert!(down.iter().any(|d| matches!(d, Decision::Dequeued { .. })));
    assert_eq!(down.last(), Some(&Decision::Idle));
    assert!(floor.holder().is_none() && floor.queue_len() == 0);
}

#[test]
fn reply_window_gives_the_previous_endpoint_the_floor_back_first() {
    let t0 = Instant::now();
    let settings = FloorSettings {
        hang: Duration::from_millis(300),
        ..FloorSettings::default()
    };
    let mut floor = Floor::new(settings);
    let request = |e: u8, s: u8| Input::Request {
        who: claimant(e, s),
        talker: talker(e, s),
        priority: Priority::Normal,
        kind: TalkKind::Live,
    };
    floor.handle(t0, request(0, 0));
    floor.handle(
        t0,
        Input::Done {
            who: claimant(0, 0),
        },
    );
    // Another endpoint waits out the window...
    let other = floor.handle(t0 + Duration::from_millis(100), request(1, 0));
    assert!(
        matches!(other.as_slice(), [Decision::Queued { position: 1, .. }]),
        "{other:?}"
    );
    // ...while the previous talker's endpoint answers inside it and goes first.
    let reply = floor.handle(t0 + Duration::from_millis(200), request(0, 1));
    assert!(
        matches!(&reply[0], Decision::Granted { who, .. } if *who == claimant(0, 1)),
        "{reply:?}"
    );
    // Endpoint 1 waited through that reply, so it goes next — no second window.
    let after = floor.handle(
        t0 + Duration::from_millis(250),
        Input::Done {
            who: claimant(0, 1),
        },
    );
    assert!(
        matches!(&after[1], Decision::Granted { who, .. } if *who == claimant(1, 0)),
        "{after:?}"
    );
}

#[test]
fn emergency_preempts_and_high_priority_jumps_the_queue() {
    let now = Instant::now();
    let mut floor = Floor::new(FloorSettings::default());
    let request = |e: u8, priority: Priority| Input::Request {
        who: claimant(e, 0),
        talker: talker(e, 0),
        priority,
        kind: TalkKind::Live,
    };
    floor.handle(now, request(0, Priority::Normal));
    floor.handle(now, request(1, Priority::Normal));
    let high = floor.handle(now, request(2, Priority::High));
    // The high request goes to the front; the normal one is told it moved back.
    assert!(
        high.contains(&Decision::Queued {
            who: claimant(2, 0),
            position: 1
        }),
        "{high:?}"
    );
    assert!(
        high.contains(&Decision::Queued {
            who: claimant(1, 0),
            position: 2
        }),
        "{high:?}"
    );
    let emergency = floor.handle(now, request(3, Priority::Emergency));
    assert!(
        matches!(&emergency[0], Decision::Released { reason: ReleaseReason::Revoked, who, .. } if *who == claimant(0, 0)),
        "{emergency:?}"
    );
    assert!(
        matches!(&emergency[1], Decision::Granted { who, .. } if *who == claimant(3, 0)),
        "{emergency:?}"
    );
}

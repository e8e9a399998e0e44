//! The floor arbiter's decisions, as a pure state machine.
//!
//! No tokio, no clock: time comes in as an argument and timeouts are reported as the
//! next deadline, so the same code runs in the hub actor, in property tests and in
//! benchmarks. One `Floor` per channel, owned by that channel's hub actor alone.

use std::collections::VecDeque;
use std::time::{Duration, Instant};
use walkie_endpoint::{
    DenyReason, EndpointId, Priority, ReleaseReason, StreamKey, TalkKind, Talker, TxId,
};

/// DESIGN.md §3, in the units the state machine works in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloorSettings {
    pub max_talk: Duration,
    pub idle_release: Duration,
    pub hang: Duration,
    pub queue: bool,
    pub queue_max: usize,
}

impl Default for FloorSettings {
    fn default() -> Self {
        Self {
            max_talk: Duration::from_secs(60),
            idle_release: Duration::from_millis(1500),
            hang: Duration::from_millis(300),
            queue: true,
            queue_max: 10,
        }
    }
}

/// One talker's request: the endpoint it came from and its stream there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Claimant {
    pub endpoint: EndpointId,
    pub stream: StreamKey,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Request {
        who: Claimant,
        talker: Talker,
        priority: Priority,
        kind: TalkKind,
    },
    /// The talker let go — or gave up waiting, if still queued.
    Done { who: Claimant },
    /// Everything of this endpoint is void: its task ended.
    EndpointGone { endpoint: EndpointId },
    /// Time passed: apply whatever deadline fell due.
    Tick,
    /// The daemon stops: release the floor, drop the queue.
    Shutdown,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Granted {
        who: Claimant,
        tx: TxId,
        talker: Talker,
        priority: Priority,
    },
    Denied {
        who: Claimant,
        reason: DenyReason,
        holder: Option<Talker>,
    },
    Queued {
        who: Claimant,
        position: usize,
    },
    /// A queued request left the queue without a grant.
    Dequeued {
        who: Claimant,
    },
    Released {
        who: Claimant,
        tx: TxId,
        reason: ReleaseReason,
    },
    Idle,
}

#[derive(Debug, Clone)]
struct Holding {
    who: Claimant,
    talker: Talker,
    priority: Priority,
    tx: TxId,
    since: Instant,
    last_audio: Instant,
}

#[derive(Debug, Clone)]
struct Waiting {
    who: Claimant,
    talker: Talker,
    priority: Priority,
    /// Last position told to the claimant, so only changes are announced.
    announced: usize,
}

/// The reply window after a release with nobody waiting: until `until`, the
/// previous talker's endpoint may take the floor back ahead of newcomers.
#[derive(Debug, Clone)]
struct Hang {
    endpoint: EndpointId,
    until: Instant,
}

#[derive(Debug)]
pub struct Floor {
    settings: FloorSettings,
    holder: Option<Holding>,
    /// Highest priority first, arrival order within a priority.
    queue: VecDeque<Waiting>,
    hang: Option<Hang>,
    /// Whether `Idle` was the last state announced, so it is said once per idle spell.
    idle_announced: bool,
}

impl Floor {
    pub fn new(settings: FloorSettings) -> Self {
        Self {
            settings,
            holder: None,
            queue: VecDeque::new(),
            hang: None,
            idle_announced: true,
        }
    }

    pub fn settings(&self) -> &FloorSettings {
        &self.settings
    }

    pub fn holder(&self) -> Option<(&Claimant, TxId)> {
        self.holder.as_ref().map(|h| (&h.who, h.tx))
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Whether a frame from `who` is forwarded, and as part of which transmission.
    /// Kept apart from [`Floor::handle`] because it runs for every 20 ms frame.
    pub fn audio(&mut self, now: Instant, who: &Claimant) -> Option<TxId> {
        let holding = self.holder.as_mut().filter(|h| h.who == *who)?;
        holding.last_audio = now;
        Some(holding.tx)
    }

    /// When [`Input::Tick`] must be delivered next, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        let holder_deadline = self.holder.as_ref().map(|h| {
            (h.since + self.settings.max_talk).min(h.last_audio + self.settings.idle_release)
        });
        // The hang only matters while someone waits for it to end.
        let hang_deadline = self
            .hang
            .as_ref()
            .filter(|_| self.holder.is_none() && !self.queue.is_empty())
            .map(|h| h.until);
        match (holder_deadline, hang_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Decision> {
        let mut out = Vec::new();
        match input {
            Input::Request {
                who,
                talker,
                priority,
                kind,
            } => self.request(now, who, talker, priority, kind, &mut out),
            Input::Done { who } => self.done(now, &who, &mut out),
            Input::EndpointGone { endpoint } => self.endpoint_gone(now, &endpoint, &mut out),
            Input::Tick => self.tick(now, &mut out),
            Input::Shutdown => {
                for waiting in self.queue.drain(..) {
                    out.push(Decision::Dequeued { who: waiting.who });
                }
                self.release(now, ReleaseReason::Shutdown, &mut out);
                self.hang = None;
            }
        }
        if self.holder.is_none() {
            self.serve_queue(now, &mut out);
        }
        self.announce_positions(&mut out);
        let idle = self.holder.is_none() && self.queue.is_empty();
        if idle && !self.idle_announced {
            out.push(Decision::Idle);
        }
        self.idle_announced = idle;
        out
    }

    fn request(
        &mut self,
        now: Instant,
        who: Claimant,
        talker: Talker,
        priority: Priority,
        kind: TalkKind,
        out: &mut Vec<Decision>,
    ) {
        // A repeated request is answered with the current state, not a second entry.
        if let Some(holding) = self.holder.as_ref().filter(|h| h.who == who) {
            out.push(Decision::Granted {
                who,
                tx: holding.tx,
                talker: holding.talker.clone(),
                priority: holding.priority,
            });
            return;
        }
        if let Some(waiting) = self.queue.iter_mut().find(|w| w.who == who) {
            // Forget the announcement so the position is told again.
            waiting.announced = 0;
            return;
        }

        let preempts = priority == Priority::Emergency
            && self
                .holder
                .as_ref()
                .is_some_and(|h| h.priority < Priority::Emergency);
        if preempts {
            self.release(now, ReleaseReason::Revoked, out);
        }

        // Every request joins the queue in priority order; with the floor free,
        // `serve_queue` then decides whether it may have it at once. One rule for
        // both cases keeps the reply window and priorities consistent.
        let at = self
            .queue
            .iter()
            .position(|w| w.priority < priority)
            .unwrap_or(self.queue.len());
        self.queue.insert(
            at,
            Waiting {
                who: who.clone(),
                talker,
                priority,
                announced: 0,
            },
        );
        if self.holder.is_none() {
            self.serve_queue(now, out);
        }
        let may_wait = self.settings.queue || kind == TalkKind::Message;
        if let Some(index) = self.queue.iter().position(|w| w.who == who) {
            if !may_wait || self.queue.len() > self.settings.queue_max {
                self.queue.remove(index);
                out.push(Decision::Denied {
                    who,
                    reason: DenyReason::Busy,
                    holder: self.holder.as_ref().map(|h| h.talker.clone()),
                });
            }
        }
    }

    fn done(&mut self, now: Instant, who: &Claimant, out: &mut Vec<Decision>) {
        if self.holder.as_ref().is_some_and(|h| h.who == *who) {
            self.release(now, ReleaseReason::TalkerDone, out);
        } else if let Some(at) = self.queue.iter().position(|w| w.who == *who) {
            self.queue.remove(at);
            out.push(Decision::Dequeued { who: who.clone() });
        }
    }

    fn endpoint_gone(&mut self, now: Instant, endpoint: &EndpointId, out: &mut Vec<Decision>) {
        self.queue.retain(|w| {
            let keep = w.who.endpoint != *endpoint;
            if !keep {
                out.push(Decision::Dequeued { who: w.who.clone() });
            }
            keep
        });
        if self
            .holder
            .as_ref()
            .is_some_and(|h| h.who.endpoint == *endpoint)
        {
            self.release(now, ReleaseReason::EndpointGone, out);
        }
        // A reply window kept for an endpoint that no longer exists only delays
        // everyone else.
        if self.hang.as_ref().is_some_and(|h| h.endpoint == *endpoint) {
            self.hang = None;
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Decision>) {
        if let Some(holding) = &self.holder {
            if now >= holding.since + self.settings.max_talk {
                self.release(now, ReleaseReason::MaxTalkTime, out);
            } else if now >= holding.last_audio + self.settings.idle_release {
                self.release(now, ReleaseReason::IdleTimeout, out);
            }
        }
        if self.hang.as_ref().is_some_and(|h| now >= h.until) {
            self.hang = None;
        }
    }

    fn grant(
        &mut self,
        now: Instant,
        who: Claimant,
        talker: Talker,
        priority: Priority,
        out: &mut Vec<Decision>,
    ) {
        let tx = TxId::generate();
        self.hang = None;
        out.push(Decision::Granted {
            who: who.clone(),
            tx,
            talker: talker.clone(),
            priority,
        });
        self.holder = Some(Holding {
            who,
            talker,
            priority,
            tx,
            since: now,
            last_audio: now,
        });
    }

    fn release(&mut self, now: Instant, reason: ReleaseReason, out: &mut Vec<Decision>) {
        let Some(holding) = self.holder.take() else {
            return;
        };
        // Only a talker who ended normally earns the reply window; one who ran
        // into the time cap or was pre-empted must not get the floor straight back.
        // And the window only holds off newcomers: whoever already waited through
        // the transmission goes next, so a chatty endpoint cannot starve the queue.
        let earns_hang = matches!(
            reason,
            ReleaseReason::TalkerDone | ReleaseReason::IdleTimeout
        ) && !self.settings.hang.is_zero()
            && self.queue.is_empty();
        self.hang = earns_hang.then(|| Hang {
            endpoint: holding.who.endpoint.clone(),
            until: now + self.settings.hang,
        });
        out.push(Decision::Released {
            who: holding.who,
            tx: holding.tx,
            reason,
        });
    }

    /// With the floor free, hand it to the first waiting request — or, during the
    /// reply window, to the previous talker's endpoint if it has a request in the
    /// top priority class. Emergencies never wait for the window.
    fn serve_queue(&mut self, now: Instant, out: &mut Vec<Decision>) {
        let Some(top) = self.queue.front().map(|w| w.priority) else {
            return;
        };
        let pick = match self.hang.as_ref().filter(|h| now < h.until) {
            Some(hang) if top != Priority::Emergency => self
                .queue
                .iter()
                .position(|w| w.priority == top && w.who.endpoint == hang.endpoint),
            _ => Some(0),
        };
        if let Some(next) = pick.and_then(|at| self.queue.remove(at)) {
            self.grant(now, next.who, next.talker, next.priority, out);
        }
    }

    fn announce_positions(&mut self, out: &mut Vec<Decision>) {
        for (index, waiting) in self.queue.iter_mut().enumerate() {
            if waiting.announced != index + 1 {
                waiting.announced = index + 1;
                out.push(Decision::Queued {
                    who: waiting.who.clone(),
                    position: index + 1,
                });
            }
        }
    }
}

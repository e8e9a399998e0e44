//! The transmit controller: one per radio, owning tx delay, hang, timeout, the
//! stall watchdog and Morse ID timing, independently of the hub.
//!
//! [`TxMachine`] is pure (time is an argument; it returns [`Action`]s and its
//! next deadline), like the floor arbiter. [`TxController`] applies those
//! actions to a PTT and an [`AudioSink`]; [`TxRunner`] drives a controller on
//! its own thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ptt::safety::{self, Registration};
use crate::ptt::{Ptt, SharedPtt};
use crate::{PttError, SinkError, TxError};

/// The radio's transmit timing (DESIGN.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxSettings {
    pub tx_delay: Duration,
    pub ptt_hang: Duration,
    pub tx_timeout: Duration,
    /// Unkey when no audio arrives for this long while keyed.
    pub stall: Duration,
    /// `None` when no callsign is configured.
    pub id_interval: Option<Duration>,
}

impl Default for TxSettings {
    fn default() -> Self {
        Self {
            tx_delay: Duration::from_millis(150),
            ptt_hang: Duration::from_millis(200),
            tx_timeout: Duration::from_secs(180),
            stall: STALL_WATCHDOG,
            id_interval: None,
        }
    }
}

/// The safety rule: audio stalled this long while keyed unkeys the radio.
pub const STALL_WATCHDOG: Duration = Duration::from_secs(2);
/// How often an owed (failed) unkey is retried.
pub const UNKEY_RETRY: Duration = Duration::from_millis(100);
/// A PTT that keeps failing is logged when it starts failing, then at most
/// this often (with the count), not on every retry.
pub const PTT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// While keyed, the runner looks at least this often whether the safety net
/// (panic hook, signal path) unkeyed the radio behind the controller's back.
pub const SAFETY_CHECK: Duration = Duration::from_millis(50);
/// At most this much audio is held while waiting out `tx_delay` (frames).
const MAX_BUFFERED: usize = 500;

/// The playback side, implemented by the audio engineer's sound-card code.
pub trait AudioSink: Send {
    /// Queue samples for playback; must not block for long.
    fn play(&mut self, samples: &[i16]) -> Result<(), SinkError>;
    /// End of transmission: push out what is buffered and say how long until
    /// the last sample handed over has left the sound card (the drain time
    /// before `ptt_hang` starts).
    fn flush(&mut self) -> Result<Duration, SinkError>;
}

/// Produces the Morse ID audio for the callsign (the audio engineer's code).
pub trait IdSource: Send {
    fn id_samples(&mut self) -> Vec<i16>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnkeyReason {
    /// The floor was released and the hang ran out.
    Released,
    /// `tx_timeout` capped the transmission.
    Timeout,
    /// The watchdog: no audio for [`STALL_WATCHDOG`] while keyed.
    Stalled,
    Shutdown,
    /// Keying failed; unkey to be sure no half-keyed state remains.
    KeyFailed,
    /// Asked for explicitly ([`TxController::unkey`]).
    Forced,
    /// The safety net (the panic hook after a panic anywhere in the process,
    /// or the signal path) unkeyed the radio; the controller confirms it.
    UnkeyedElsewhere,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Key,
    Play(Vec<i16>),
    /// Play the Morse ID now (end of a transmission, ID due).
    PlayId,
    /// Lay the Morse ID over the audio that follows (a long transmission whose
    /// `id_interval` ran out while it lasted): the talker is not held up.
    MixId,
    /// End of audio: flush the sink, then report [`Input::Drained`].
    Drain,
    Unkey(UnkeyReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    FloorTaken,
    Audio(Vec<i16>),
    FloorReleased,
    /// The sink's answer to [`Action::Drain`].
    Drained {
        remaining: Duration,
    },
    KeyFailed,
    /// The radio was unkeyed by someone else ([`crate::ptt::safety`]).
    UnkeyedElsewhere,
    Shutdown,
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Idle,
    /// Keyed, waiting out `tx_delay`; audio is held back.
    KeyUp {
        keyed_at: Instant,
        buffered: VecDeque<Vec<i16>>,
        release_pending: bool,
    },
    /// Keyed, audio flowing.
    Live {
        keyed_at: Instant,
        last_audio: Instant,
    },
    /// Floor released, sink flushing.
    Draining {
        keyed_at: Instant,
    },
    /// Keyed for `ptt_hang` after the audio has left.
    Hang {
        keyed_at: Instant,
        until: Instant,
    },
    /// Unkeyed by the watchdog or a failed key while the floor is still
    /// held: the next audio keys again (through `tx_delay`).
    Stalled,
    /// Unkeyed by `tx_timeout`: stays unkeyed until the floor is released.
    LockedOut,
    /// Terminal.
    Shutdown,
}

/// The pure transmit state machine.
#[derive(Debug, Clone)]
pub struct TxMachine {
    settings: TxSettings,
    phase: Phase,
    last_id: Option<Instant>,
}

impl TxMachine {
    pub fn new(settings: TxSettings) -> Self {
        Self {
            settings,
            phase: Phase::Idle,
            last_id: None,
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn settings(&self) -> &TxSettings {
        &self.settings
    }

    pub fn is_keyed(&self) -> bool {
        matches!(
            self.phase,
            Phase::KeyUp { .. } | Phase::Live { .. } | Phase::Draining { .. } | Phase::Hang { .. }
        )
    }

    /// Whether a Morse ID is due: a callsign is set and it has never been
    /// sent, or `id_interval` has passed since. The audio side can also use
    /// this to mix an ID into a long transmission.
    pub fn id_due(&self, now: Instant) -> bool {
        match (self.settings.id_interval, self.last_id) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(i), Some(t)) => now.saturating_duration_since(t) >= i,
        }
    }

    /// Whether a transmission keyed at `keyed_at` must ID now, while it lasts:
    /// `id_interval` has passed since the last ID, or since the key-up when this
    /// station has not identified yet.
    fn mid_id_due(&self, now: Instant, keyed_at: Instant) -> bool {
        let Some(interval) = self.settings.id_interval else {
            return false;
        };
        let since = self.last_id.unwrap_or(keyed_at);
        now.saturating_duration_since(since) >= interval
    }

    /// Record an ID sent by the audio side mid-transmission.
    pub fn id_sent(&mut self, now: Instant) {
        self.last_id = Some(now);
    }

    /// When [`Input::Tick`] must next be delivered.
    pub fn next_deadline(&self) -> Option<Instant> {
        let s = &self.settings;
        match &self.phase {
            Phase::KeyUp { keyed_at, .. } => Some(*keyed_at + s.tx_delay.min(s.tx_timeout)),
            Phase::Live {
                keyed_at,
                last_audio,
            } => Some((*last_audio + s.stall).min(*keyed_at + s.tx_timeout)),
            Phase::Hang { keyed_at, until } => Some((*until).min(*keyed_at + s.tx_timeout)),
            _ => None,
        }
    }

    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        self.phase = match (phase, input) {
            (_, Input::Shutdown) => {
                // Always, keyed or not: cheap, and the last word before exit.
                out.push(Action::Unkey(UnkeyReason::Shutdown));
                Phase::Shutdown
            }
            (Phase::Shutdown, _) => Phase::Shutdown,

            (Phase::Idle, Input::FloorTaken) => {
                out.push(Action::Key);
                Phase::KeyUp {
                    keyed_at: now,
                    buffered: VecDeque::new(),
                    release_pending: false,
                }
            }
            // A new floor during the hang: stay keyed, no second tx_delay.
            // keyed_at is kept: tx_timeout caps the keyed period.
            (Phase::Hang { keyed_at, .. }, Input::FloorTaken) => Phase::Live {
                keyed_at,
                last_audio: now,
            },
            // A new floor while still keying up for a talk that already ended
            // (shorter than tx_delay): the pending release was the previous
            // talker's. The new talker's audio queues behind what is held and
            // the radio goes live for it at the end of tx_delay; left pending,
            // the release would drain, drop the new audio and unkey.
            (
                Phase::KeyUp {
                    keyed_at, buffered, ..
                },
                Input::FloorTaken,
            ) => Phase::KeyUp {
                keyed_at,
                buffered,
                release_pending: false,
            },
            (p, Input::FloorTaken) => p,

            (
                Phase::KeyUp {
                    keyed_at,
                    mut buffered,
                    release_pending,
                },
                Input::Audio(frame),
            ) => {
                if buffered.len() < MAX_BUFFERED {
                    buffered.push_back(frame);
                }
                Phase::KeyUp {
                    keyed_at,
                    buffered,
                    release_pending,
                }
            }
            (Phase::Live { keyed_at, .. }, Input::Audio(frame)) => {
                if self.mid_id_due(now, keyed_at) {
                    out.push(Action::MixId);
                    self.last_id = Some(now);
                }
                out.push(Action::Play(frame));
                Phase::Live {
                    keyed_at,
                    last_audio: now,
                }
            }
            (Phase::Stalled, Input::Audio(frame)) => {
                out.push(Action::Key);
                Phase::KeyUp {
                    keyed_at: now,
                    buffered: VecDeque::from([frame]),
                    release_pending: false,
                }
            }
            // Idle (no floor), draining/hang (floor released), locked out:
            // audio does not key the radio.
            (p, Input::Audio(_)) => p,

            (
                Phase::KeyUp {
                    keyed_at, buffered, ..
                },
                Input::FloorReleased,
            ) => {
                if buffered.is_empty() {
                    out.push(Action::Unkey(UnkeyReason::Released));
                    Phase::Idle
                } else {
                    Phase::KeyUp {
                        keyed_at,
                        buffered,
                        release_pending: true,
                    }
                }
            }
            (Phase::Live { keyed_at, .. }, Input::FloorReleased) => {
                self.end_of_audio(now, &mut out);
                Phase::Draining { keyed_at }
            }
            (Phase::Stalled | Phase::LockedOut, Input::FloorReleased) => Phase::Idle,
            (p, Input::FloorReleased) => p,

            (Phase::Draining { keyed_at }, Input::Drained { remaining }) => {
                let until = now + remaining + self.settings.ptt_hang;
                if until <= now {
                    out.push(Action::Unkey(UnkeyReason::Released));
                    Phase::Idle
                } else {
                    Phase::Hang { keyed_at, until }
                }
            }
            (p, Input::Drained { .. }) => p,

            // Unkeyed behind our back (a panic elsewhere, or a signal). Never
            // assume the radio is still on the air, and never key it again
            // unasked: unkey once more to be sure and treat it like the stall
            // watchdog — the floor is still held, so the holder's next audio
            // keys again through tx_delay (held audio is dropped: it would
            // start mid-sentence into a transmitter keying up). A transmission
            // already released just ends.
            (
                Phase::Live { .. }
                | Phase::KeyUp {
                    release_pending: false,
                    ..
                },
                Input::UnkeyedElsewhere,
            ) => {
                out.push(Action::Unkey(UnkeyReason::UnkeyedElsewhere));
                Phase::Stalled
            }
            (
                Phase::KeyUp { .. } | Phase::Draining { .. } | Phase::Hang { .. },
                Input::UnkeyedElsewhere,
            ) => {
                out.push(Action::Unkey(UnkeyReason::UnkeyedElsewhere));
                Phase::Idle
            }
            (p, Input::UnkeyedElsewhere) => p,

            (p, Input::KeyFailed) => {
                out.push(Action::Unkey(UnkeyReason::KeyFailed));
                match p {
                    Phase::KeyUp { .. } | Phase::Live { .. } | Phase::Stalled => Phase::Stalled,
                    _ => Phase::Idle,
                }
            }

            (p, Input::Tick) => self.tick(now, p, &mut out),
        };
        out
    }

    fn end_of_audio(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.id_due(now) {
            out.push(Action::PlayId);
            self.last_id = Some(now);
        }
        out.push(Action::Drain);
    }

    fn tick(&mut self, now: Instant, phase: Phase, out: &mut Vec<Action>) -> Phase {
        let s = self.settings;
        let timed_out = |keyed_at: Instant| now >= keyed_at + s.tx_timeout;
        match phase {
            Phase::KeyUp { keyed_at, .. } | Phase::Live { keyed_at, .. } if timed_out(keyed_at) => {
                out.push(Action::Unkey(UnkeyReason::Timeout));
                Phase::LockedOut
            }
            Phase::Hang { keyed_at, .. } | Phase::Draining { keyed_at } if timed_out(keyed_at) => {
                // The floor is already released: nothing to lock out.
                out.push(Action::Unkey(UnkeyReason::Timeout));
                Phase::Idle
            }
            Phase::KeyUp {
                keyed_at,
                buffered,
                release_pending,
            } if now >= keyed_at + s.tx_delay => {
                let had_audio = !buffered.is_empty();
                out.extend(buffered.into_iter().map(Action::Play));
                if release_pending {
                    self.end_of_audio(now, out);
                    Phase::Draining { keyed_at }
                } else {
                    Phase::Live {
                        keyed_at,
                        // The watchdog counts from the first audio played,
                        // or from the key-up if none came yet.
                        last_audio: if had_audio { now } else { keyed_at },
                    }
                }
            }
            Phase::Live { last_audio, .. } if now >= last_audio + s.stall => {
                out.push(Action::Unkey(UnkeyReason::Stalled));
                Phase::Stalled
            }
            Phase::Hang { until, .. } if now >= until => {
                out.push(Action::Unkey(UnkeyReason::Released));
                Phase::Idle
            }
            p => p,
        }
    }
}

/// Applies a [`TxMachine`]'s actions to a PTT and a sink.
///
/// Unkeys on creation ("unkeyed on open"), on release, timeout, stall,
/// shutdown, on drop, and — through the registration — from the panic hook
/// and the signal path. A failed unkey is owed and retried every
/// [`UNKEY_RETRY`] until it succeeds.
pub struct TxController {
    machine: TxMachine,
    ptt: SharedPtt,
    sink: Box<dyn AudioSink>,
    id: Option<Box<dyn IdSource>>,
    /// Morse ID samples still to be laid over the audio ([`Action::MixId`]).
    id_overlay: VecDeque<i16>,
    unkey_owed: Option<(UnkeyReason, Instant)>,
    keyed: Option<Arc<AtomicBool>>,
    /// PTT calls that failed in a row, shared with whoever decides the port is
    /// lost ([`TxController::fault_counter`]).
    faults: Arc<AtomicU32>,
    /// When a failing PTT was last logged.
    fault_logged: Option<Instant>,
    /// The safety net's unkey count as last seen ([`safety::unkey_generation`]).
    safety_seen: u64,
    _registration: Registration,
}

impl TxController {
    pub fn new(
        name: &str,
        settings: TxSettings,
        ptt: Box<dyn Ptt>,
        sink: Box<dyn AudioSink>,
    ) -> Result<Self, PttError> {
        let ptt = SharedPtt::new(name, ptt);
        let registration = safety::register(&ptt);
        let safety_seen = safety::unkey_generation();
        ptt.set_keyed(false)?;
        Ok(Self {
            machine: TxMachine::new(settings),
            ptt,
            sink,
            id: None,
            id_overlay: VecDeque::new(),
            unkey_owed: None,
            keyed: None,
            faults: Arc::new(AtomicU32::new(0)),
            fault_logged: None,
            safety_seen,
            _registration: registration,
        })
    }

    pub fn with_id_source(mut self, id: Box<dyn IdSource>) -> Self {
        self.id = Some(id);
        self
    }

    /// A flag kept equal to "the transmit machine is keyed" after every step, for
    /// receive detection on another thread (muted while we transmit).
    pub fn keyed_flag(&mut self) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(self.machine.is_keyed()));
        self.keyed = Some(Arc::clone(&flag));
        flag
    }

    /// PTT calls (key, unkey, retries) that failed in a row; 0 after any success.
    /// Repeated failures mean the port is gone: the endpoint closes and reopens it.
    pub fn fault_counter(&self) -> Arc<AtomicU32> {
        Arc::clone(&self.faults)
    }

    pub fn machine(&self) -> &TxMachine {
        &self.machine
    }

    pub fn ptt(&self) -> &SharedPtt {
        &self.ptt
    }

    pub fn id_due(&self, now: Instant) -> bool {
        self.machine.id_due(now)
    }

    pub fn floor_taken_by_other(&mut self, now: Instant) -> Result<(), TxError> {
        self.resync(now)?;
        self.step(now, Input::FloorTaken)
    }

    pub fn audio(&mut self, now: Instant, frame: Vec<i16>) -> Result<(), TxError> {
        self.resync(now)?;
        self.step(now, Input::Audio(frame))
    }

    pub fn floor_released(&mut self, now: Instant) -> Result<(), TxError> {
        self.resync(now)?;
        self.step(now, Input::FloorReleased)
    }

    pub fn shutdown(&mut self, now: Instant) -> Result<(), TxError> {
        self.step(now, Input::Shutdown)
    }

    pub fn tick(&mut self, now: Instant) -> Result<(), TxError> {
        if let Some((reason, _)) = self.unkey_owed {
            self.unkey_now(now, reason)?;
        }
        self.resync(now)?;
        self.step(now, Input::Tick)
    }

    /// Whether the safety net unkeyed every radio since we last looked; if so
    /// and we believed ours keyed, the machine learns it
    /// ([`Input::UnkeyedElsewhere`]). Checked before every input and, while
    /// keyed, at least every [`SAFETY_CHECK`].
    fn resync(&mut self, now: Instant) -> Result<(), TxError> {
        let generation = safety::unkey_generation();
        if generation == self.safety_seen {
            return Ok(());
        }
        self.safety_seen = generation;
        if !self.machine.is_keyed() {
            return Ok(());
        }
        tracing::warn!(
            ptt = self.ptt.name(),
            "the safety net unkeyed the radio mid-transmission (a panic elsewhere?); \
             keying again only for the talker's next audio, through tx_delay"
        );
        metrics::counter!("walkie_radio_unkeyed_elsewhere_total", "ptt" => self.ptt.name().to_owned())
            .increment(1);
        self.step(now, Input::UnkeyedElsewhere)
    }

    /// Unkey now, whatever the state; the floor must be released before the
    /// radio keys again.
    pub fn unkey(&mut self, now: Instant) -> Result<(), TxError> {
        if self.machine.is_keyed() {
            self.machine.phase = Phase::LockedOut;
        }
        self.unkey_now(now, UnkeyReason::Forced)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let retry = self.unkey_owed.map(|(_, at)| at + UNKEY_RETRY);
        match (self.machine.next_deadline(), retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn step(&mut self, now: Instant, input: Input) -> Result<(), TxError> {
        let mut pending: VecDeque<Action> = self.machine.handle(now, input).into();
        let mut first_err = None;
        while let Some(action) = pending.pop_front() {
            let r = match action {
                Action::Key => match self.ptt.set_keyed(true) {
                    Ok(()) => {
                        self.ptt_ok();
                        tracing::info!(ptt = self.ptt.name(), "keyed");
                        Ok(())
                    }
                    Err(e) => {
                        if let Some(failures) = self.ptt_failed(now) {
                            tracing::error!(ptt = self.ptt.name(), error = %e, failures, "key failed");
                        }
                        pending.extend(self.machine.handle(now, Input::KeyFailed));
                        Err(e.into())
                    }
                },
                Action::Play(mut frame) => {
                    mix_into(&mut frame, &mut self.id_overlay);
                    self.sink.play(&frame).map_err(TxError::from)
                }
                Action::MixId => {
                    if let Some(id) = self.id.as_mut() {
                        tracing::info!(ptt = self.ptt.name(), "Morse ID over the transmission");
                        self.id_overlay.extend(id.id_samples());
                    }
                    Ok(())
                }
                Action::PlayId => match self.id.as_mut() {
                    Some(id) => {
                        let samples = id.id_samples();
                        self.sink.play(&samples).map_err(TxError::from)
                    }
                    None => Ok(()),
                },
                Action::Drain => {
                    // An ID still being laid over the audio is finished on its own
                    // before the hang, or the station would end unidentified.
                    let rest: Vec<i16> = self.id_overlay.drain(..).collect();
                    if !rest.is_empty() {
                        if let Err(e) = self.sink.play(&rest) {
                            first_err.get_or_insert(e.into());
                        }
                    }
                    // A sink that cannot say how long it needs gets the hang
                    // only: better a clipped tail than a stuck key.
                    let (remaining, r) = match self.sink.flush() {
                        Ok(d) => (d, Ok(())),
                        Err(e) => (Duration::ZERO, Err(e.into())),
                    };
                    pending.extend(self.machine.handle(now, Input::Drained { remaining }));
                    r
                }
                Action::Unkey(reason) => self.unkey_now(now, reason),
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        self.publish_keyed();
        first_err.map_or(Ok(()), Err)
    }

    /// An unkey still owed counts as keyed: the transmitter may well be on.
    fn publish_keyed(&self) {
        if let Some(flag) = &self.keyed {
            let keyed = self.machine.is_keyed() || self.unkey_owed.is_some();
            flag.store(keyed, Ordering::Release);
        }
    }

    fn unkey_now(&mut self, now: Instant, reason: UnkeyReason) -> Result<(), TxError> {
        self.id_overlay.clear();
        let result = self.unkey_line(now, reason);
        self.publish_keyed();
        result
    }

    fn unkey_line(&mut self, now: Instant, reason: UnkeyReason) -> Result<(), TxError> {
        match self.ptt.set_keyed(false) {
            Ok(()) => {
                self.ptt_ok();
                if self.unkey_owed.take().is_some() {
                    tracing::warn!(
                        ptt = self.ptt.name(),
                        ?reason,
                        "owed unkey finally succeeded"
                    );
                }
                tracing::info!(ptt = self.ptt.name(), ?reason, "unkeyed");
                Ok(())
            }
            Err(e) => {
                if let Some(failures) = self.ptt_failed(now) {
                    tracing::error!(ptt = self.ptt.name(), ?reason, error = %e, failures, "UNKEY FAILED, will retry");
                }
                self.unkey_owed = Some((reason, now));
                Err(e.into())
            }
        }
    }

    fn ptt_ok(&mut self) {
        self.faults.store(0, Ordering::Release);
        self.fault_logged = None;
    }

    /// Counts a failed PTT call; `Some(failures in a row)` when it is to be
    /// logged: the first of a run, then once per [`PTT_ERROR_LOG_INTERVAL`].
    fn ptt_failed(&mut self, now: Instant) -> Option<u32> {
        let failures = self.faults.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        let due = self
            .fault_logged
            .is_none_or(|at| now.saturating_duration_since(at) >= PTT_ERROR_LOG_INTERVAL);
        if due {
            self.fault_logged = Some(now);
        }
        due.then_some(failures)
    }
}

/// Adds the next samples of `overlay` onto `frame`, saturating.
fn mix_into(frame: &mut [i16], overlay: &mut VecDeque<i16>) {
    for sample in frame.iter_mut() {
        let Some(id) = overlay.pop_front() else {
            return;
        };
        *sample = sample.saturating_add(id);
    }
}

impl Drop for TxController {
    fn drop(&mut self) {
        // Not the only unkey (see the type's docs), but the one that covers a
        // controller dropped by an unwinding or failed task.
        if let Err(e) = self.ptt.set_keyed(false) {
            tracing::error!(ptt = self.ptt.name(), error = %e, "UNKEY ON DROP FAILED");
        }
    }
}

/// What a [`TxRunner`] is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxCommand {
    FloorTakenByOther,
    Audio(Vec<i16>),
    FloorReleased,
    Unkey,
    Shutdown,
}

/// Drives a [`TxController`] on its own thread, with deadlines from
/// `recv_timeout`. A thread, not a tokio task: PTT calls are synchronous
/// (they must also run from a panic hook) and a rigctld call may block up to
/// its timeout, which must not stall a tokio worker. Sending never blocks, so
/// async code can hold a [`TxRunner`].
///
/// Dropping the runner shuts the controller down (unkey) and joins the
/// thread. If the thread dies (a panic), the controller is dropped during
/// unwinding, which unkeys — on top of the panic hook.
pub struct TxRunner {
    tx: mpsc::Sender<TxCommand>,
    thread: Option<JoinHandle<()>>,
}

impl TxRunner {
    pub fn spawn(controller: TxController) -> Self {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("tx-{}", controller.ptt.name()))
            .spawn(move || run(controller, rx))
            .ok();
        Self { tx, thread }
    }

    /// `false` when the runner has stopped (the radio is unkeyed then).
    pub fn send(&self, cmd: TxCommand) -> bool {
        self.tx.send(cmd).is_ok()
    }

    /// Shut down and wait until the radio is unkeyed.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.tx.send(TxCommand::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TxRunner {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(mut c: TxController, rx: mpsc::Receiver<TxCommand>) {
    loop {
        // While keyed, wake up often enough to notice an unkey by the safety net.
        let safety = c.machine.is_keyed().then(|| Instant::now() + SAFETY_CHECK);
        let deadline = match (c.next_deadline(), safety) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let cmd = match deadline {
            Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                Ok(cmd) => Some(cmd),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(TxCommand::Shutdown),
            },
            None => Some(rx.recv().unwrap_or(TxCommand::Shutdown)),
        };
        let now = Instant::now();
        // Errors are logged where they happen; the loop goes on so the
        // timing (hang, timeout, retry of an owed unkey) still applies.
        let _ = match cmd {
            None => c.tick(now),
            Some(TxCommand::FloorTakenByOther) => c.floor_taken_by_other(now),
            Some(TxCommand::Audio(f)) => c.audio(now, f),
            Some(TxCommand::FloorReleased) => c.floor_released(now),
            Some(TxCommand::Unkey) => c.unkey(now),
            Some(TxCommand::Shutdown) => {
                let _ = c.shutdown(now);
                return;
            }
        };
        // A deadline already due (e.g. tx_delay during a burst of audio)
        // is applied before the next message.
        if c.next_deadline().is_some_and(|d| d <= Instant::now()) {
            let _ = c.tick(Instant::now());
        }
    }
}

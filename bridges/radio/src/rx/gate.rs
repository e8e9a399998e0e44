//! Muting receive detection around our own transmissions.

use std::time::{Duration, Instant};

/// A change of the received-signal state after gating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxEvent {
    /// A signal is being received.
    Started,
    /// The signal ended (or detection was muted because we started transmitting).
    Ended,
}

/// Gate between a detector and the endpoint: while the bridge transmits, and
/// for `mute_after_tx` after it stops, detection reads "no signal".
///
/// Why after, too: a VOX still hears the tail of our audio in the sound card
/// buffers, a COS line lags the radio's switch back to receive, and many
/// radios open squelch briefly when they unkey (the "squelch tail").
#[derive(Debug, Clone)]
pub struct RxGate {
    mute_after_tx: Duration,
    transmitting: bool,
    muted_until: Option<Instant>,
    open: bool,
}

impl RxGate {
    /// A gate that stays muted for `mute_after_tx` after each transmission.
    pub fn new(mute_after_tx: Duration) -> Self {
        Self {
            mute_after_tx,
            transmitting: false,
            muted_until: None,
            open: false,
        }
    }

    /// Tells the gate the bridge started (`true`) or stopped (`false`)
    /// keying the radio at `now`. Starting to transmit ends a reception in
    /// progress: that is returned as [`RxEvent::Ended`].
    pub fn set_transmitting(&mut self, transmitting: bool, now: Instant) -> Option<RxEvent> {
        if transmitting {
            self.transmitting = true;
            self.muted_until = None;
            if self.open {
                self.open = false;
                return Some(RxEvent::Ended);
            }
        } else if self.transmitting {
            self.transmitting = false;
            self.muted_until = Some(now + self.mute_after_tx);
        }
        None
    }

    /// Whether detection is muted at `now`.
    pub fn is_muted(&self, now: Instant) -> bool {
        self.transmitting || self.muted_until.is_some_and(|until| now < until)
    }

    /// Whether a (gated) signal is present.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Feeds the detector's state at `now`; returns the gated change, if any.
    pub fn update(&mut self, detected: bool, now: Instant) -> Option<RxEvent> {
        let gated = detected && !self.is_muted(now);
        if gated == self.open {
            return None;
        }
        self.open = gated;
        Some(if gated {
            RxEvent::Started
        } else {
            RxEvent::Ended
        })
    }
}

/// A detector behind an [`RxGate`]: what the endpoint drives.
///
/// Captured audio is withheld from the detector while muted (and the
/// detector reset when transmission starts), so a VOX cannot carry our own
/// audio past the end of the mute through its hang time.
pub struct RxDetector {
    squelch: Box<dyn super::Squelch>,
    gate: RxGate,
}

impl std::fmt::Debug for RxDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxDetector")
            .field("gate", &self.gate)
            .finish_non_exhaustive()
    }
}

impl RxDetector {
    /// Gates `squelch` with a mute of `mute_after_tx` after each transmission.
    pub fn new(squelch: Box<dyn super::Squelch>, mute_after_tx: Duration) -> Self {
        Self {
            squelch,
            gate: RxGate::new(mute_after_tx),
        }
    }

    /// See [`RxGate::set_transmitting`]; also resets the detector on key-up.
    pub fn set_transmitting(&mut self, transmitting: bool, now: Instant) -> Option<RxEvent> {
        if transmitting {
            self.squelch.reset();
        }
        self.gate.set_transmitting(transmitting, now)
    }

    /// Captured audio at `now`; dropped while muted.
    pub fn feed_audio(&mut self, pcm: &[i16], now: Instant) {
        if self.gate.is_muted(now) {
            return;
        }
        self.squelch.feed_audio(pcm, now);
    }

    /// Polls the detector through the gate.
    pub fn poll(&mut self, now: Instant) -> Result<Option<RxEvent>, super::SquelchError> {
        let detected = if self.gate.is_muted(now) {
            // Not polled while muted: a line detector's debouncer then starts
            // from its last state, which reset() cleared on key-up. Probed,
            // so that a port that vanished is still reported.
            self.squelch.probe()?;
            false
        } else {
            self.squelch.poll(now)?
        };
        Ok(self.gate.update(detected, now))
    }

    /// Whether a gated signal is present.
    pub fn is_open(&self) -> bool {
        self.gate.is_open()
    }
}

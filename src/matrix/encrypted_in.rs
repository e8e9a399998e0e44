//! Encrypted room events in (issue 15, item 5): every `m.room.encrypted`
//! timeline event of a bridged room is decrypted with the bot's device and handed
//! to its room endpoint as the plaintext event it holds, so a voice message or a
//! `!wt` command takes exactly the path a plaintext one takes.
//!
//! An event whose room key has not arrived yet waits here (bounded per room and
//! in total, with a deadline) and is tried again when the bot's device receives
//! keys for its session (or a withheld notice); it is never marked handled while
//! it waits, so a restart delivers it again. What cannot be decrypted — key
//! withheld, never received, undecryptable — is answered in a thread to the
//! sender (the room endpoint posts it) and marked handled.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ruma::events::TimelineEventType;
use ruma::{OwnedRoomId, OwnedUserId};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::appservice::RoomEvent;
use super::crypto::{CryptoDevices, CryptoEvent, DecryptOutcome};
use super::room_endpoint::RoomInbound;
use crate::live::limits::RateLimit;

/// Encrypted events waiting for the decryptor's task.
const QUEUE: usize = 256;

/// Deadline set by [`set_key_wait_deadline_for_tests`], in milliseconds; zero:
/// [`KeyWaitLimits::DEADLINE`].
static DEADLINE_FOR_TESTS_MS: AtomicU64 = AtomicU64::new(0);

/// Makes every key wait started from now on in this process end after
/// `deadline` instead of [`KeyWaitLimits::DEADLINE`]: for tests of what the
/// sender is told when the key never comes. Process-wide, like the other
/// hidden test knobs.
#[doc(hidden)]
pub fn set_key_wait_deadline_for_tests(deadline: Duration) {
    let ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
    DEADLINE_FOR_TESTS_MS.store(ms, Ordering::Relaxed);
}

/// Warnings about events that cannot be decrypted: any room member can send
/// them, so they must not fill the log.
static UNDECRYPTABLE_WARNINGS: RateLimit = RateLimit::new(10, Duration::from_secs(60));

/// How many encrypted events may wait for their room key, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyWaitLimits {
    /// Waiting events of one room; beyond, a new one is refused at once.
    pub per_room: usize,
    /// Waiting events of all rooms together.
    pub total: usize,
    /// How long one event waits before its sender is told the key never came.
    pub deadline: Duration,
}

impl KeyWaitLimits {
    /// A room key normally arrives before (or with) its first event: clients
    /// share it before they send. A minute covers a slow federation hop or a
    /// homeserver catching up its appservice queue; beyond that the sender's
    /// client most likely will not share it with the bridge at all.
    pub const DEADLINE: Duration = Duration::from_secs(60);
    /// More than a busy room's talk in a minute.
    pub const PER_ROOM: usize = 64;
    /// Each waiting event is its JSON (a few KiB at most): 1024 is a few MiB.
    pub const TOTAL: usize = 1024;
}

impl Default for KeyWaitLimits {
    fn default() -> Self {
        let ms = DEADLINE_FOR_TESTS_MS.load(Ordering::Relaxed);
        Self {
            per_room: Self::PER_ROOM,
            total: Self::TOTAL,
            deadline: if ms > 0 {
                Duration::from_millis(ms)
            } else {
                Self::DEADLINE
            },
        }
    }
}

/// An encrypted event and the inbox of the room it belongs to.
struct Submission {
    event: RoomEvent,
    room: mpsc::Sender<RoomInbound>,
}

/// Hands encrypted events to the decryptor's task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EncryptedIn {
    tx: mpsc::Sender<Submission>,
}

impl std::fmt::Debug for Submission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission")
            .field("event_id", &self.event.event_id)
            .finish_non_exhaustive()
    }
}

impl EncryptedIn {
    /// Starts the decryptor's task; it runs until `shutdown` (events still
    /// waiting then stay unhandled and come back after a restart).
    pub fn spawn(
        crypto: CryptoDevices,
        limits: KeyWaitLimits,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        // Subscribed before the first decryption: a key that arrives while an
        // event is being decrypted is not missed.
        let events = crypto.subscribe();
        let decryptor = Decryptor {
            crypto,
            limits,
            waiting: VecDeque::new(),
        };
        let task = tokio::spawn(decryptor.run(rx, events, shutdown));
        (Self { tx }, task)
    }

    /// Queues an `m.room.encrypted` event of the room whose inbox is `room`.
    /// `false` when the decryptor has stopped (shutdown): the event stays
    /// unhandled.
    pub async fn submit(&self, event: RoomEvent, room: mpsc::Sender<RoomInbound>) -> bool {
        self.tx.send(Submission { event, room }).await.is_ok()
    }
}

/// An event waiting for its room key.
struct Waiting {
    submission: Submission,
    session_id: Option<String>,
    deadline: Instant,
}

struct Decryptor {
    crypto: CryptoDevices,
    limits: KeyWaitLimits,
    /// Oldest first, so events retried together keep their order.
    waiting: VecDeque<Waiting>,
}

/// What a retry is looking for.
#[derive(Clone, Copy)]
enum Retry<'a> {
    /// Keys for these (room, session) pairs arrived.
    Sessions(&'a [(OwnedRoomId, String)]),
    /// Anything may have changed (a withheld notice, lost notifications).
    All,
}

impl Decryptor {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Submission>,
        mut events: broadcast::Receiver<CryptoEvent>,
        shutdown: CancellationToken,
    ) {
        let bot = self.crypto.users().bot().to_owned();
        let mut events_open = true;
        loop {
            let next_deadline = self.waiting.iter().map(|w| w.deadline).min();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                // Keys before new events: what waits longest goes first.
                event = events.recv(), if events_open => match event {
                    Ok(CryptoEvent::RoomKeys { user, keys }) if user == bot => {
                        let sessions: Vec<(OwnedRoomId, String)> = keys
                            .into_iter()
                            .map(|k| (k.room_id, k.session_id))
                            .collect();
                        self.retry(Retry::Sessions(&sessions)).await;
                    }
                    Ok(CryptoEvent::ToDevice { user, event_type, .. })
                        if user == bot && event_type == "m.room_key.withheld" =>
                    {
                        self.retry(Retry::All).await;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        debug!(missed, "crypto events missed; retrying every waiting event");
                        self.retry(Retry::All).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => events_open = false,
                },
                submission = rx.recv() => match submission {
                    Some(submission) => self.first_try(submission).await,
                    None => break,
                },
                () = sleep_until(next_deadline) => self.expire().await,
            }
        }
        // Left unhandled: replayed at the next start.
        metrics::gauge!("walkie_crypto_events_waiting").set(0.0);
        if !self.waiting.is_empty() {
            info!(
                waiting = self.waiting.len(),
                "encrypted events still waiting for keys are left for the next start"
            );
        }
    }

    async fn first_try(&mut self, submission: Submission) {
        let outcome = self.decrypt(&submission.event).await;
        match outcome {
            Tried::MissingKey { session_id } => {
                let room = &submission.event.room_id;
                let in_room = self
                    .waiting
                    .iter()
                    .filter(|w| &w.submission.event.room_id == room)
                    .count();
                if in_room >= self.limits.per_room || self.waiting.len() >= self.limits.total {
                    metrics::counter!("walkie_crypto_key_waits_total", "outcome" => "dropped")
                        .increment(1);
                    rate_limited_warning(&submission.event, "too many events wait for keys");
                    let text = "Not transmitted: the bridge cannot decrypt your message yet (it \
                                has not received its key) and too many messages already wait \
                                for keys. Send it again in a moment.";
                    answer(submission, text.into()).await;
                    return;
                }
                debug!(event_id = %submission.event.event_id, ?session_id, "encrypted event waits for its key");
                self.waiting.push_back(Waiting {
                    submission,
                    session_id,
                    deadline: Instant::now() + self.limits.deadline,
                });
                self.gauge();
            }
            done => deliver(submission, done).await,
        }
    }

    /// Tries again the waiting events `retry` concerns, in their order.
    async fn retry(&mut self, retry: Retry<'_>) {
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for waiting in std::mem::take(&mut self.waiting) {
            let concerned = match retry {
                Retry::All => true,
                Retry::Sessions(sessions) => waiting.session_id.as_ref().is_none_or(|id| {
                    sessions.iter().any(|(room, session)| {
                        room == &waiting.submission.event.room_id && session == id
                    })
                }),
            };
            if !concerned {
                kept.push_back(waiting);
                continue;
            }
            match self.decrypt(&waiting.submission.event).await {
                Tried::MissingKey { .. } => kept.push_back(waiting),
                done => {
                    let outcome = match &done {
                        Tried::Plaintext { .. } => "decrypted",
                        Tried::Withheld { .. } => "withheld",
                        _ => "failed",
                    };
                    metrics::counter!("walkie_crypto_key_waits_total", "outcome" => outcome)
                        .increment(1);
                    info!(event_id = %waiting.submission.event.event_id, outcome, "encrypted event no longer waits for its key");
                    deliver(waiting.submission, done).await;
                }
            }
        }
        self.waiting = kept;
        self.gauge();
    }

    /// Answers the events whose deadline passed: the key never came.
    async fn expire(&mut self) {
        let now = Instant::now();
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for waiting in std::mem::take(&mut self.waiting) {
            if waiting.deadline > now {
                kept.push_back(waiting);
                continue;
            }
            metrics::counter!("walkie_crypto_key_waits_total", "outcome" => "expired").increment(1);
            rate_limited_warning(&waiting.submission.event, "its room key never arrived");
            let text = format!(
                "Not transmitted: the bridge never received the key to decrypt your message \
                 (waited {} s). Your client may not trust the bridge's device ({}) or may not \
                 have shared the room key with it; check that the bridge's device is not \
                 blocked in your client's security settings and send it again.",
                self.limits.deadline.as_secs(),
                self.crypto.users().bot(),
            );
            answer(waiting.submission, text).await;
        }
        self.waiting = kept;
        self.gauge();
    }

    fn gauge(&self) {
        metrics::gauge!("walkie_crypto_events_waiting").set(self.waiting.len() as f64);
    }

    async fn decrypt(&self, event: &RoomEvent) -> Tried {
        let outcome = match self.crypto.decrypt(&event.room_id, &event.event).await {
            Ok(outcome) => outcome,
            Err(error) => {
                count("error");
                rate_limited_warning(event, &error.to_string());
                return Tried::Failed {
                    reason: "the bridge's encryption device is not available".into(),
                };
            }
        };
        match outcome {
            DecryptOutcome::Decrypted(decrypted) => {
                // The sender every check uses is the one the decryption vouches
                // for; an envelope claiming someone else is not believed.
                if decrypted.sender != event.sender {
                    count("sender_mismatch");
                    rate_limited_warning(event, "the decrypted sender is not the event's sender");
                    return Tried::Dropped;
                }
                let event_type = decrypted
                    .event
                    .get_field::<TimelineEventType>("type")
                    .ok()
                    .flatten();
                let content = decrypted
                    .event
                    .get_field::<serde_json::Value>("content")
                    .ok()
                    .flatten();
                count("decrypted");
                debug!(event_id = %event.event_id, ?event_type, verified = decrypted.verified,
                    sender_device = ?decrypted.sender_device, "encrypted event decrypted");
                match (event_type, content) {
                    (Some(TimelineEventType::RoomMessage), Some(content)) => Tried::Plaintext {
                        sender: decrypted.sender,
                        content,
                    },
                    // Reactions, edits, …: nothing the bridge acts on.
                    (Some(_), Some(_)) => Tried::Ignored,
                    _ => {
                        count("malformed");
                        rate_limited_warning(event, "the decrypted event has no type or content");
                        Tried::Dropped
                    }
                }
            }
            DecryptOutcome::MissingKey { session_id } => {
                count("missing_key");
                Tried::MissingKey { session_id }
            }
            DecryptOutcome::Withheld { code, .. } => {
                count("withheld");
                Tried::Withheld { code }
            }
            DecryptOutcome::Failed { reason } => {
                count("failed");
                rate_limited_warning(event, &reason);
                Tried::Failed {
                    reason: "it cannot be decrypted".into(),
                }
            }
        }
    }
}

/// What one decryption attempt gave.
enum Tried {
    /// An `m.room.message`, by `sender`.
    Plaintext {
        sender: OwnedUserId,
        content: serde_json::Value,
    },
    /// Decrypted, but nothing the bridge acts on.
    Ignored,
    /// Not to be believed or unreadable: handled, nobody told.
    Dropped,
    MissingKey {
        session_id: Option<String>,
    },
    Withheld {
        code: String,
    },
    Failed {
        reason: String,
    },
}

/// Hands a finished attempt to the room: the plaintext message, or the answer
/// to its sender.
async fn deliver(submission: Submission, tried: Tried) {
    match tried {
        Tried::Plaintext { sender, content } => {
            let Submission { event, room } = submission;
            let handled = event.handled.clone();
            let item = RoomInbound::Message {
                event_id: event.event_id,
                sender,
                content,
                handled: event.handled,
            };
            if room.send(item).await.is_err() {
                // The room stopped (reload): as for a plaintext event.
                handled.done_later();
            }
        }
        Tried::Ignored | Tried::Dropped => submission.event.handled.done_later(),
        Tried::Withheld { code } => {
            let text = format!(
                "Not transmitted: your device refused to share the key of this message with \
                 the bridge ({}). Check that the bridge's device is not blocked in your \
                 client's security settings.",
                withheld_in_words(&code)
            );
            answer(submission, text).await;
        }
        Tried::Failed { reason } => {
            let text =
                format!("Not transmitted: the bridge could not decrypt your message: {reason}.");
            answer(submission, text).await;
        }
        Tried::MissingKey { .. } => {
            // Callers keep these waiting; never delivered.
            submission.event.handled.done_later();
        }
    }
}

/// Has the room endpoint answer the sender in a thread and mark the event handled.
async fn answer(submission: Submission, text: String) {
    let Submission { event, room } = submission;
    let handled = event.handled.clone();
    let item = RoomInbound::Undecryptable {
        event_id: event.event_id,
        text,
        handled: event.handled,
    };
    if room.send(item).await.is_err() {
        handled.done_later();
    }
}

/// A withheld code (`m.room_key.withheld`) as the sender can act on it.
pub fn withheld_in_words(code: &str) -> String {
    let words = match code {
        "m.blacklisted" => "the bridge's device is blocked (blacklisted) by your client",
        "m.unverified" => {
            "your client sends keys only to verified devices, and the bridge's device is not verified"
        }
        "m.unauthorised" => "your client does not consider the bridge authorised to read it",
        "m.unavailable" => "the key is not available to your client",
        "m.no_olm" => "your client could not set up a secure channel to the bridge's device",
        _ => "for a reason the bridge does not know",
    };
    format!("{words}; code {code}")
}

fn count(outcome: &'static str) {
    metrics::counter!("walkie_crypto_room_events_total", "outcome" => outcome).increment(1);
}

fn rate_limited_warning(event: &RoomEvent, why: &str) {
    if let Some(suppressed) = UNDECRYPTABLE_WARNINGS.allow(std::time::Instant::now()) {
        warn!(event_id = %event.event_id, room = %event.room_id, sender = %event.sender,
            why, suppressed, "encrypted event not played");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Whether `event` is one for [`EncryptedIn`] (`m.room.encrypted`).
pub fn is_encrypted(event: &RoomEvent) -> bool {
    event.event_type == TimelineEventType::RoomEncrypted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withheld_codes_are_explained() {
        assert!(withheld_in_words("m.blacklisted").contains("blocked"));
        assert!(withheld_in_words("m.unverified").contains("not verified"));
        assert!(withheld_in_words("x.custom").contains("code x.custom"));
    }

    #[test]
    fn the_default_limits_are_bounded() {
        let limits = KeyWaitLimits::default();
        assert!(limits.per_room <= limits.total);
        assert!(limits.deadline > Duration::ZERO);
    }
}

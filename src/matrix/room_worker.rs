//! Everything a channel says in its Matrix room, done in order by one task per room:
//! the floor mirror (talker's puppet typing, the `org.matrix.msc4002.floor` state
//! event), notices, reactions and threaded replies.
//!
//! HTTP calls take milliseconds to seconds; the channel's hub link must never wait
//! for them. The room endpoint therefore only queues [`RoomOp`]s here, and this task
//! works them off one by one — the per-room serial queue of mautrix bridgev2.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ruma::{EventId, OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};
use walkie_endpoint::{EndpointId, Talker, TxId};

use super::client::{Homeserver, MatrixError};
use super::puppets::Puppets;
use super::room_sender::{RoomSender, SendError};
use super::room_setup::FLOOR_EVENT_TYPE;

/// Attempts for one operation while the homeserver has a hiccup. The floor mirror
/// is best effort: a state that could not be written is overtaken by the next one.
const ATTEMPTS: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub enum RoomOp {
    /// Someone holds the floor: their puppet types and the state event says so.
    /// A Matrix user (`talker.matrix_user_id`) is named as themself, without a puppet.
    FloorTaken {
        tx: TxId,
        /// Boxed: one talker (104 bytes) per transmission would make every slot
        /// of the ops queue that large, and tokio's `mpsc` allocates 32 slots
        /// when a channel is made.
        talker: Box<Talker>,
        source: EndpointId,
        since: SystemTime,
    },
    /// Transmission `tx` ended: its puppet stops typing.
    FloorReleased { tx: TxId },
    /// Nobody holds or waits for the floor.
    FloorIdle,
    /// A bot notice; `thread_root` makes it a threaded reply to that event.
    /// `answers` is the event it answers: its Matrix transaction id is derived
    /// from that event, so a notice sent again after a crash is dropped by the
    /// homeserver instead of showing twice.
    Notice {
        text: String,
        thread_root: Option<OwnedEventId>,
        answers: Option<OwnedEventId>,
    },
    /// The bot reacts to an event (a voice message that went out).
    React { event_id: OwnedEventId, key: String },
}

impl RoomOp {
    /// A notice of the bot's own, answering no event.
    pub fn notice(text: impl Into<String>) -> Self {
        Self::Notice {
            text: text.into(),
            thread_root: None,
            answers: None,
        }
    }

    /// A threaded reply to `event` (a voice message), sent once.
    pub fn reply(text: impl Into<String>, event: OwnedEventId) -> Self {
        Self::Notice {
            text: text.into(),
            thread_root: Some(event.clone()),
            answers: Some(event),
        }
    }

    /// A notice answering `event` (a command) in the room, sent once.
    pub fn answer(text: impl Into<String>, event: OwnedEventId) -> Self {
        Self::Notice {
            text: text.into(),
            thread_root: None,
            answers: Some(event),
        }
    }
}

pub struct RoomWorker {
    homeserver: Homeserver,
    /// Sends the bot's notices and reactions, encrypted in an encrypted room.
    sender: RoomSender,
    puppets: Puppets,
    room: OwnedRoomId,
    bot: OwnedUserId,
    /// How long a typing notice lasts if its "stopped" is lost.
    typing_timeout: Duration,
    typing: HashMap<TxId, OwnedUserId>,
}

impl RoomWorker {
    pub fn new(
        sender: RoomSender,
        puppets: Puppets,
        room: OwnedRoomId,
        bot: OwnedUserId,
        max_talk: Duration,
    ) -> Self {
        Self {
            homeserver: sender.homeserver().clone(),
            sender,
            puppets,
            room,
            bot,
            typing_timeout: max_talk + Duration::from_secs(5),
            typing: HashMap::new(),
        }
    }

    /// Works off `ops` until the sender side is dropped or `shutdown` fires; on
    /// shutdown the floor is written idle so the room does not show a stale talker.
    ///
    /// Not an `async fn`, and each op's work boxed: the task lives as long as
    /// its channel and is idle nearly always, while an `async fn` would keep
    /// `self` twice more and room for the largest op's state all the time
    /// (issue 16: 5 KiB per idle channel; an op is a few per transmission).
    pub fn run(
        mut self,
        mut ops: mpsc::UnboundedReceiver<RoomOp>,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send {
        let span = tracing::info_span!("room", room = %self.room);
        async move {
            loop {
                let op = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    op = ops.recv() => match op {
                        Some(op) => op,
                        None => break,
                    },
                };
                Box::pin(self.apply(op)).await;
            }
            // Whatever is still queued is out of date now; only the end state matters.
            let talkers: Vec<TxId> = self.typing.keys().copied().collect();
            for tx in talkers {
                Box::pin(self.apply(RoomOp::FloorReleased { tx })).await;
            }
            Box::pin(self.apply(RoomOp::FloorIdle)).await;
        }
        .instrument(span)
    }

    async fn apply(&mut self, op: RoomOp) {
        match op {
            RoomOp::FloorTaken {
                tx,
                talker,
                source,
                since,
            } => self.floor_taken(tx, &talker, &source, since).await,
            RoomOp::FloorReleased { tx } => {
                if let Some(puppet) = self.typing.remove(&tx) {
                    let (homeserver, room) = (&self.homeserver, &self.room);
                    retry("typing stopped", || {
                        homeserver.typing(room, &puppet, false, Duration::ZERO)
                    })
                    .await;
                }
            }
            RoomOp::FloorIdle => {
                self.write_floor(floor_idle_content()).await;
            }
            RoomOp::Notice {
                text,
                thread_root,
                answers,
            } => {
                let txn = match &answers {
                    Some(event) => answer_txn("notice", event, &text),
                    None => TxId::generate().to_string(),
                };
                let mut content = json!({ "msgtype": "m.notice", "body": text });
                if let Some(root) = thread_root {
                    content["m.relates_to"] = json!({
                        "rel_type": "m.thread",
                        "event_id": root,
                        "is_falling_back": true,
                        "m.in_reply_to": { "event_id": root },
                    });
                }
                self.send_as_bot("m.room.message", content, &txn).await;
            }
            RoomOp::React { event_id, key } => {
                let txn = answer_txn("react", &event_id, &key);
                let content = json!({
                    "m.relates_to": { "rel_type": "m.annotation", "event_id": event_id, "key": key }
                });
                self.send_as_bot("m.reaction", content, &txn).await;
            }
        }
    }

    async fn floor_taken(
        &mut self,
        tx: TxId,
        talker: &Talker,
        source: &EndpointId,
        since: SystemTime,
    ) {
        // A Matrix user talks as themself; everyone else through their puppet.
        let talker_id = match &talker.matrix_user_id {
            Some(user) => Some(user.clone()),
            None => match self.puppets.ensure(source, talker, &self.room).await {
                Ok(puppet) => {
                    let (homeserver, room, timeout) =
                        (&self.homeserver, &self.room, self.typing_timeout);
                    retry("typing started", || {
                        homeserver.typing(room, &puppet, true, timeout)
                    })
                    .await;
                    let id = puppet.to_string();
                    self.typing.insert(tx, puppet);
                    Some(id)
                }
                Err(error) => {
                    warn!(%tx, talker = %talker, %error, "no puppet for the talker; the floor state names them only");
                    None
                }
            },
        };
        let talker_id = talker_id.unwrap_or_else(|| talker.name.clone());
        self.write_floor(floor_taken_content(&talker_id, talker, source, tx, since))
            .await;
    }

    async fn write_floor(&self, content: Value) {
        let (homeserver, room, bot) = (&self.homeserver, &self.room, &self.bot);
        retry("floor state", || {
            homeserver.send_state(room, FLOOR_EVENT_TYPE, "", &content, bot)
        })
        .await;
    }

    /// Message events (not state, not typing) are encrypted in an encrypted room.
    async fn send_as_bot(&self, event_type: &str, content: Value, txn: &str) {
        let (sender, room, bot) = (&self.sender, &self.room, &self.bot);
        retry(event_type, || {
            sender.send(room, bot, event_type, txn, &content)
        })
        .await;
    }
}

/// The `org.matrix.msc4002.floor` content while nobody holds the floor.
fn floor_idle_content() -> Value {
    json!({ "state": "idle" })
}

/// The `org.matrix.msc4002.floor` content while `talker` holds the floor;
/// `talker_id` is their Matrix user (puppet or themself), or their name when no
/// puppet could be made. Plain JSON, not a ruma type: its shape is the bridge's
/// (DESIGN.md §4), pinned by a test.
fn floor_taken_content(
    talker_id: &str,
    talker: &Talker,
    source: &EndpointId,
    tx: TxId,
    since: SystemTime,
) -> Value {
    let since_ts = since
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    json!({
        "state": "taken",
        "talker": talker_id,
        "talker_name": talker.display_name,
        "endpoint": source.as_str(),
        "tx_id": tx.to_string(),
        "since_ts": since_ts,
    })
}

/// The Matrix transaction id of the bot's `kind` answer `what` to `event`: the
/// same on every attempt and after a restart, so the homeserver keeps one.
/// Two FNV-1a hashes (different offsets) make 128 bits; stable across builds,
/// unlike the standard library's hasher.
fn answer_txn(kind: &str, event: &EventId, what: &str) -> String {
    fn fnv1a(offset: u64, parts: &[&str]) -> u64 {
        let mut hash = offset;
        for part in parts {
            for byte in part.bytes().chain([0xff]) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        hash
    }
    let parts = [kind, event.as_str(), what];
    format!(
        "wb.{kind}.{:016x}{:016x}",
        fnv1a(0xcbf2_9ce4_8422_2325, &parts),
        fnv1a(0x8422_2325_cbf2_9ce4, &parts)
    )
}

/// Runs `call` until it succeeds, fails for good, or runs out of attempts; logs the
/// outcome. Never returns an error: the room mirror must not stop the channel.
async fn retry<T, E, F, Fut>(what: &str, mut call: F)
where
    E: Transient + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    for attempt in 1..=ATTEMPTS {
        match call().await {
            Ok(_) => {
                debug!(what, "done");
                return;
            }
            Err(error) if error.is_transient() && attempt < ATTEMPTS => {
                debug!(what, attempt, %error, "retrying");
                tokio::time::sleep(RETRY_PAUSE * attempt).await;
            }
            Err(error) => {
                warn!(what, %error, "could not update the room");
                return;
            }
        }
    }
}

/// An error worth another attempt soon.
trait Transient {
    fn is_transient(&self) -> bool;
}

impl Transient for MatrixError {
    fn is_transient(&self) -> bool {
        MatrixError::is_transient(self)
    }
}

impl Transient for SendError {
    fn is_transient(&self) -> bool {
        SendError::is_transient(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every slot of the ops queue is this size, and tokio's `mpsc` allocates 32
    /// slots when a channel is made: the talker of `FloorTaken` is boxed so that
    /// every idle channel does not pay for it.
    #[test]
    fn a_room_op_is_small() {
        let size = std::mem::size_of::<RoomOp>();
        assert!(size <= 64, "RoomOp is {size} bytes");
    }

    #[test]
    fn an_answer_has_the_same_transaction_id_every_time() {
        let event = EventId::parse("$abc:example.org").unwrap();
        let other = EventId::parse("$abd:example.org").unwrap();
        let a = answer_txn("notice", &event, "Not transmitted.");
        assert_eq!(a, answer_txn("notice", &event, "Not transmitted."));
        assert_ne!(a, answer_txn("notice", &other, "Not transmitted."));
        assert_ne!(a, answer_txn("notice", &event, "Cut off."));
        assert_ne!(a, answer_txn("react", &event, "Not transmitted."));
        assert!(a.len() < 64 && a.is_ascii(), "{a}");
    }

    /// The exact bytes sent as the floor state (`send_state` serialises this
    /// `Value`; serde_json sorts keys). Pinned so a dependency change shows.
    #[test]
    fn floor_state_json_is_pinned() {
        assert_eq!(
            serde_json::to_string(&floor_idle_content()).unwrap(),
            r#"{"state":"idle"}"#
        );
        let tx = TxId::from_uuid(uuid::Uuid::from_u128(
            0x0193_0000_0000_7000_8000_0000_0000_0001,
        ));
        let talker = Talker::new("alice", "alice (Mumble)");
        let source = EndpointId::new("mumble.ops");
        let since = UNIX_EPOCH + Duration::from_millis(1_795_774_530_123);
        let content = floor_taken_content(
            "@walkie_mumble_alice:example.org",
            &talker,
            &source,
            tx,
            since,
        );
        assert_eq!(
            serde_json::to_string(&content).unwrap(),
            concat!(
                r#"{"endpoint":"mumble.ops","since_ts":1795774530123,"state":"taken","#,
                r#""talker":"@walkie_mumble_alice:example.org","talker_name":"alice (Mumble)","#,
                r#""tx_id":"01930000000070008000000000000001"}"#
            )
        );
    }
}

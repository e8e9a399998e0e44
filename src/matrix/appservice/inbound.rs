//! What the appservice hands to the rest of the bridge, and how one transaction
//! body becomes those values.

use std::collections::BTreeMap;

use ruma::api::client::sync::sync_events::DeviceLists;
use ruma::events::{
    AnySyncEphemeralRoomEvent, AnyTimelineEvent, AnyToDeviceEvent, TimelineEventType,
};
use ruma::serde::Raw;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::Deserialize;
use tracing::warn;

use super::device_parts::{DeviceFallbackKeys, DeviceKeyCounts, DeviceParts};
use crate::matrix::ids::check_len;
use crate::store::Store;

/// One event pushed by the homeserver, in the order the homeserver sent it.
#[derive(Clone, Debug)]
pub enum Inbound {
    /// A room (timeline) event: a message, a membership change, a state event…
    RoomEvent(RoomEvent),
    /// A typing notice or read receipt (MSC2409), when the registration asks for
    /// them.
    Ephemeral(EphemeralEvent),
}

/// A timeline event whose envelope (type, ids, sender) was checked. The content
/// was not: a consumer deserializes [`RoomEvent::event`] for the types it handles,
/// so an odd content in a type nobody here reads cannot cost a good event.
#[derive(Clone, Debug)]
pub struct RoomEvent {
    /// The homeserver's transaction this event came in (for logs).
    pub txn_id: String,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub event_id: OwnedEventId,
    pub event_type: TimelineEventType,
    /// Present on state events: for `m.room.member` the user the change is about.
    pub state_key: Option<String>,
    /// The bot or a puppet sent it: the bridge's own voice, never to be bridged
    /// back (no loops).
    pub from_bridge: bool,
    pub event: Raw<AnyTimelineEvent>,
    /// Tells the store once the bridge is done with this event.
    pub handled: Handled,
}

/// Marks a room event handled in the store once the bridge is done with it —
/// a voice message played or refused, a command answered (issue 14.6). Until
/// then a crash replays it at the next start; after, it is never handled again.
/// An event not taken through the store (the bridge's own) has a handle that
/// does nothing.
#[derive(Clone, Debug, Default)]
pub struct Handled {
    stored: Option<(Store, OwnedEventId)>,
}

impl Handled {
    pub(crate) fn stored(store: Store, event_id: OwnedEventId) -> Self {
        Self {
            stored: Some((store, event_id)),
        }
    }

    /// A handle that records nothing (tests, events not taken through the store).
    pub fn none() -> Self {
        Self::default()
    }

    /// Records that the event was handled. A failure is logged: the event is
    /// then handled again after a restart — twice rather than never.
    pub async fn done(&self) {
        let Some((store, event_id)) = &self.stored else {
            return;
        };
        if let Err(error) = store.inbound_done(event_id.as_str()).await {
            warn!(%event_id, %error, "cannot mark the event handled; a restart handles it again");
        }
    }

    /// [`Self::done`] without waiting for it: for events nobody acts on.
    pub fn done_later(&self) {
        if self.stored.is_some() {
            let this = self.clone();
            tokio::spawn(async move { this.done().await });
        }
    }
}

/// An ephemeral event of one room.
#[derive(Clone, Debug)]
pub struct EphemeralEvent {
    pub txn_id: String,
    pub room_id: OwnedRoomId,
    /// `m.typing`, `m.receipt`, …
    pub event_type: String,
    /// The event as pushed (with its `room_id`), readable as the sync form ruma
    /// has types for.
    pub event: Raw<AnySyncEphemeralRoomEvent>,
}

/// The body of `PUT /_matrix/app/v1/transactions/{txnId}`. Each event stays raw
/// JSON until [`check_timeline`]/[`check_ephemeral`] looks at it, so one malformed
/// event cannot make the whole transaction unreadable.
#[derive(Debug, Deserialize)]
pub(crate) struct TransactionBody {
    #[serde(default)]
    pub events: Vec<Raw<AnyTimelineEvent>>,
    #[serde(default)]
    pub ephemeral: Option<Vec<Raw<AnySyncEphemeralRoomEvent>>>,
    /// MSC2409's unstable name. Synapse sends both names, with the same events,
    /// when the registration asks for both; only one list may be used.
    #[serde(default, rename = "de.sorunome.msc2409.ephemeral")]
    pub ephemeral_unstable: Option<Vec<Raw<AnySyncEphemeralRoomEvent>>>,
    // The devices' parts, unread (see `DeviceParts`; serde cannot flatten raw
    // values, hence the copy of its fields).
    #[serde(default, rename = "de.sorunome.msc2409.to_device")]
    to_device: Option<Raw<Vec<Raw<AnyToDeviceEvent>>>>,
    #[serde(default, rename = "org.matrix.msc3202.device_lists")]
    device_lists: Option<Raw<DeviceLists>>,
    #[serde(default, rename = "org.matrix.msc3202.device_one_time_keys_count")]
    one_time_keys_count: Option<Raw<BTreeMap<String, Raw<DeviceKeyCounts>>>>,
    #[serde(default, rename = "org.matrix.msc3202.device_one_time_key_counts")]
    one_time_key_counts: Option<Raw<BTreeMap<String, Raw<DeviceKeyCounts>>>>,
    #[serde(
        default,
        rename = "org.matrix.msc3202.device_unused_fallback_key_types"
    )]
    unused_fallback_key_types: Option<Raw<BTreeMap<String, Raw<DeviceFallbackKeys>>>>,
}

impl TransactionBody {
    pub fn into_parts(
        self,
    ) -> (
        Vec<Raw<AnyTimelineEvent>>,
        Vec<Raw<AnySyncEphemeralRoomEvent>>,
        DeviceParts,
    ) {
        let ephemeral = self
            .ephemeral
            .or(self.ephemeral_unstable)
            .unwrap_or_default();
        let devices = DeviceParts {
            to_device: self.to_device,
            device_lists: self.device_lists,
            one_time_keys_count: self.one_time_keys_count,
            one_time_key_counts: self.one_time_key_counts,
            unused_fallback_key_types: self.unused_fallback_key_types,
        };
        (self.events, ephemeral, devices)
    }
}

#[derive(Deserialize)]
struct TimelineEnvelope {
    #[serde(rename = "type")]
    event_type: TimelineEventType,
    event_id: OwnedEventId,
    room_id: OwnedRoomId,
    sender: OwnedUserId,
    #[serde(default)]
    state_key: Option<String>,
}

#[derive(Deserialize)]
struct EphemeralEnvelope {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    room_id: Option<OwnedRoomId>,
}

/// Reads the envelope of a timeline event; the error says what is wrong with it.
pub(crate) fn check_timeline(
    txn_id: &str,
    raw: Raw<AnyTimelineEvent>,
    is_bridge_user: impl Fn(&OwnedUserId) -> bool,
) -> Result<RoomEvent, serde_json::Error> {
    let envelope: TimelineEnvelope = raw.deserialize_as_unchecked()?;
    // ruma may be built without its length limit (see `ids`); these IDs key the
    // store, the dedup cache and the puppet namespace check.
    for id in [
        envelope.event_id.as_str(),
        envelope.room_id.as_str(),
        envelope.sender.as_str(),
    ] {
        check_len(id).map_err(serde::de::Error::custom)?;
    }
    Ok(RoomEvent {
        txn_id: txn_id.to_owned(),
        from_bridge: is_bridge_user(&envelope.sender),
        room_id: envelope.room_id,
        sender: envelope.sender,
        event_id: envelope.event_id,
        event_type: envelope.event_type,
        state_key: envelope.state_key,
        event: raw,
        handled: Handled::none(),
    })
}

/// Reads the envelope of an ephemeral event. `Ok(None)`: valid but of no room
/// (presence), which the bridge has no use for.
pub(crate) fn check_ephemeral(
    txn_id: &str,
    raw: Raw<AnySyncEphemeralRoomEvent>,
) -> Result<Option<EphemeralEvent>, serde_json::Error> {
    let envelope: EphemeralEnvelope = raw.deserialize_as_unchecked()?;
    if let Some(room_id) = &envelope.room_id {
        check_len(room_id.as_str()).map_err(serde::de::Error::custom)?;
    }
    Ok(envelope.room_id.map(|room_id| EphemeralEvent {
        txn_id: txn_id.to_owned(),
        room_id,
        event_type: envelope.event_type,
        event: raw,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sender: &str, room_id: &str, event_id: &str) -> Raw<AnyTimelineEvent> {
        let json = serde_json::json!({
            "type": "m.room.message",
            "event_id": event_id,
            "room_id": room_id,
            "sender": sender,
            "origin_server_ts": 1,
            "content": {"msgtype": "m.text", "body": "hi"},
        });
        Raw::from_json(serde_json::value::to_raw_value(&json).expect("serialisable"))
    }

    #[test]
    fn envelopes_with_over_long_ids_are_refused() {
        let long = |sigil: char| format!("{sigil}{}:example.org", "a".repeat(250));
        let ok = check_timeline("t", event("@a:example.org", "!r:example.org", "$e"), |_| {
            false
        });
        assert!(ok.is_ok(), "{ok:?}");
        for raw in [
            event(&long('@'), "!r:example.org", "$e"),
            event("@a:example.org", &long('!'), "$e"),
            event("@a:example.org", "!r:example.org", &long('$')),
        ] {
            let err = check_timeline("t", raw, |_| false).expect_err("over-long id accepted");
            assert!(err.to_string().contains("255"), "{err}");
        }
    }

    #[test]
    fn ephemeral_events_of_over_long_rooms_are_refused() {
        let json = serde_json::json!({
            "type": "m.typing",
            "room_id": format!("!{}:example.org", "a".repeat(250)),
            "content": {"user_ids": []},
        });
        let raw = Raw::from_json(serde_json::value::to_raw_value(&json).expect("serialisable"));
        assert!(check_ephemeral("t", raw).is_err());
    }
}

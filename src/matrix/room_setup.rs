//! Start-up of one bridged room: resolve the configured alias, join as the bot,
//! and check that the bot may do what the bridge needs. Encrypted rooms are
//! bridged like plain ones (issue 15): what the bridge posts there is encrypted
//! at the time of posting (`room_sender`), so nothing is decided here.

use ruma::events::room::tombstone::RoomTombstoneEventContent;
use ruma::{OwnedRoomId, OwnedUserId, UserId};

use super::ids::{parse_room_alias, parse_room_id};
use serde_json::Value;

use super::client::{Homeserver, MatrixError};
use crate::config::RoomRef;
use crate::store::{Store, StoreError};

/// The state event that mirrors the floor (DESIGN.md §4).
pub const FLOOR_EVENT_TYPE: &str = "org.matrix.msc4002.floor";

#[derive(Debug, thiserror::Error)]
pub enum RoomSetupError {
    #[error("room {room}: {source}")]
    Matrix {
        room: String,
        #[source]
        source: MatrixError,
    },
    #[error("room {room}: the bot {bot} cannot join: {source}. Invite {bot} to the room (or make the room public) and restart the bridge")]
    CannotJoin {
        room: String,
        bot: OwnedUserId,
        #[source]
        source: MatrixError,
    },
    #[error("room {room} was replaced by {replacement} (m.room.tombstone); point the channel's room at {replacement}")]
    Replaced { room: String, replacement: String },
    #[error("room {room}: {reason}")]
    BadRoom { room: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RoomSetupError {
    /// The homeserver is down or slow: the whole start-up is worth retrying.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Matrix { source, .. } | Self::CannotJoin { source, .. } => source.is_transient(),
            Self::Store(_) => true,
            Self::Replaced { .. } | Self::BadRoom { .. } => false,
        }
    }
}

/// A room ready to bridge, and what the bot may not do there.
#[derive(Debug, Clone)]
pub struct PreparedRoom {
    pub room_id: OwnedRoomId,
    /// The room has `m.room.encryption`: its members' messages come encrypted.
    pub encrypted: bool,
    /// Human-readable power-level problems; empty when the bot can do everything.
    pub missing_powers: Vec<String>,
}

pub async fn prepare_room(
    homeserver: &Homeserver,
    store: &Store,
    bot: &UserId,
    room: &RoomRef,
) -> Result<PreparedRoom, RoomSetupError> {
    let label = room.to_string();
    let matrix = |source| RoomSetupError::Matrix {
        room: label.clone(),
        source,
    };
    let room_id = match room {
        RoomRef::Id(id) => parse_room_id(id).map_err(|e| RoomSetupError::BadRoom {
            room: label.clone(),
            reason: e.to_string(),
        })?,
        RoomRef::Alias(alias) => match store.resolved_room(alias).await? {
            Some(id) => parse_room_id(&id).map_err(|e| RoomSetupError::BadRoom {
                room: label.clone(),
                reason: format!("stored room ID is invalid: {e}"),
            })?,
            None => {
                let parsed = parse_room_alias(alias).map_err(|e| RoomSetupError::BadRoom {
                    room: label.clone(),
                    reason: e.to_string(),
                })?;
                let id = homeserver.resolve_alias(&parsed).await.map_err(matrix)?;
                store.save_room(alias, id.as_str()).await?;
                id
            }
        },
    };
    homeserver
        .join(room_id.as_str(), bot)
        .await
        .map_err(|source| {
            if source.is_transient() {
                RoomSetupError::Matrix {
                    room: label.clone(),
                    source,
                }
            } else {
                RoomSetupError::CannotJoin {
                    room: label.clone(),
                    bot: bot.to_owned(),
                    source,
                }
            }
        })?;
    let state = homeserver.room_state(&room_id, bot).await.map_err(matrix)?;
    if state_event(&state, "m.room.encryption").is_some() {
        tracing::info!(room = %room_id, "the room is encrypted: the bridge posts encrypted there");
    }
    // A replaced room stays stopped across restarts, as it stopped when the
    // tombstone came in.
    if let Some(replacement) = state_event(&state, "m.room.tombstone")
        .and_then(|e| e.get("content"))
        .and_then(|c| serde_json::from_value::<RoomTombstoneEventContent>(c.clone()).ok())
    {
        return Err(RoomSetupError::Replaced {
            room: label,
            replacement: replacement.replacement_room.to_string(),
        });
    }
    let missing_powers = missing_powers(&state, bot);
    Ok(PreparedRoom {
        encrypted: state_event(&state, "m.room.encryption").is_some(),
        room_id,
        missing_powers,
    })
}

fn state_event<'a>(state: &'a [Value], event_type: &str) -> Option<&'a Value> {
    state.iter().find(|event| {
        event.get("type").and_then(Value::as_str) == Some(event_type)
            && event.get("state_key").and_then(Value::as_str) == Some("")
    })
}

/// What the bot cannot do in a room with this state, in words an operator can act
/// on. Room version 12 (and the hydra test versions before it) gives the room's
/// creators unlimited power, and they must not appear in `power_levels.users`.
pub fn missing_powers(state: &[Value], bot: &UserId) -> Vec<String> {
    let create = state_event(state, "m.room.create");
    let version = create
        .and_then(|e| e.pointer("/content/room_version"))
        .and_then(Value::as_str)
        .unwrap_or("1");
    let creators_unlimited = matches!(version, "12" | "org.matrix.hydra.11");
    if creators_unlimited {
        let creator = create.and_then(|e| e.get("sender")).and_then(Value::as_str);
        let additional = create
            .and_then(|e| e.pointer("/content/additional_creators"))
            .and_then(Value::as_array);
        let is_creator = creator == Some(bot.as_str())
            || additional.is_some_and(|list| list.iter().any(|u| u.as_str() == Some(bot.as_str())));
        if is_creator {
            return Vec::new();
        }
    }
    let Some(levels) = state_event(state, "m.room.power_levels").and_then(|e| e.get("content"))
    else {
        // Without a power-levels event everybody may do everything.
        return Vec::new();
    };
    let level =
        |value: Option<&Value>, default: i64| value.and_then(Value::as_i64).unwrap_or(default);
    let bot_level = level(
        levels.pointer("/users").and_then(|u| u.get(bot.as_str())),
        level(levels.get("users_default"), 0),
    );
    let users_default = level(levels.get("users_default"), 0);
    let event_level = |event_type: &str, default: i64| {
        level(
            levels.pointer("/events").and_then(|e| e.get(event_type)),
            default,
        )
    };
    let state_default = level(levels.get("state_default"), 50);
    let events_default = level(levels.get("events_default"), 0);

    let mut missing = Vec::new();
    let floor_level = event_level(FLOOR_EVENT_TYPE, state_default);
    if bot_level < floor_level {
        missing.push(format!(
            "{bot} has power level {bot_level} but needs {floor_level} to send the {FLOOR_EVENT_TYPE} state event \
             (set users[\"{bot}\"] to {floor_level} or more in m.room.power_levels)"
        ));
    }
    let invite_level = level(levels.get("invite"), 0);
    if bot_level < invite_level {
        missing.push(format!(
            "{bot} has power level {bot_level} but needs {invite_level} to invite the talkers' puppets"
        ));
    }
    let message_level = event_level("m.room.message", events_default);
    if users_default < message_level {
        missing.push(format!(
            "puppets get users_default {users_default} but m.room.message needs {message_level}: \
             voice messages cannot be posted (lower the m.room.message level or raise users_default)"
        ));
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bot() -> OwnedUserId {
        UserId::parse("@walkie:example.org").unwrap()
    }

    fn create(version: &str, sender: &str) -> Value {
        json!({"type": "m.room.create", "state_key": "", "sender": sender,
               "content": {"room_version": version}})
    }

    fn power_levels(content: Value) -> Value {
        json!({"type": "m.room.power_levels", "state_key": "", "sender": "@alice:example.org",
               "content": content})
    }

    #[test]
    fn a_creator_in_room_version_12_may_do_everything() {
        let state = [
            create("12", "@walkie:example.org"),
            power_levels(json!({"users": {}, "state_default": 100})),
        ];
        assert!(missing_powers(&state, &bot()).is_empty());
    }

    #[test]
    fn a_plain_member_is_told_exactly_what_is_missing() {
        let state = [
            create("12", "@alice:example.org"),
            power_levels(json!({"users": {"@walkie:example.org": 0}, "invite": 50})),
        ];
        let missing = missing_powers(&state, &bot());
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(missing[0].contains("needs 50 to send the org.matrix.msc4002.floor"));
        assert!(missing[1].contains("invite"));
    }

    #[test]
    fn an_explicit_event_level_wins_over_state_default() {
        let state = [
            create("10", "@alice:example.org"),
            power_levels(json!({
                "users": {"@walkie:example.org": 10},
                "events": {FLOOR_EVENT_TYPE: 10},
            })),
        ];
        assert!(missing_powers(&state, &bot()).is_empty());
    }

    #[test]
    fn creators_are_not_special_before_room_version_12() {
        let state = [
            create("10", "@walkie:example.org"),
            power_levels(json!({"users": {"@walkie:example.org": 0}})),
        ];
        assert_eq!(missing_powers(&state, &bot()).len(), 1);
    }
}

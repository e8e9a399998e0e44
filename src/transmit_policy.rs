//! Who may key a radio: `transmit_allow` and `transmit_min_power_level` of a
//! `[radio.NAME]` section (DESIGN.md §4 "Permissions"), asked by the radio
//! endpoint before every transmission.
//!
//! A talker passes when any `transmit_allow` entry covers them (a named entry
//! only someone whose name is vouched for, see `TransmitAllow`), or when they are a
//! Matrix user whose power level in the channel's room reaches the minimum. With
//! neither key set, every talker the channel hears passes (the room's opt-in
//! already decided who may talk at all).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::Value;
use tracing::warn;
use walkie_endpoint::{EndpointId, Identity, PolicyFuture, Talker, TransmitPolicy};

use crate::config::{TalkerPattern, TransmitAllow};
use crate::matrix::Homeserver;

/// Power levels change rarely; a minute-old copy is good enough to gate a radio,
/// and keeps a burst of transmissions from costing a request each.
const POWER_LEVELS_TTL: Duration = Duration::from_secs(60);

/// The channel room's power levels, read on demand and cached. The room is only
/// known once the daemon has resolved it, after the endpoints were built.
pub struct RoomPowerLevels {
    homeserver: Homeserver,
    bot: OwnedUserId,
    room: OnceLock<OwnedRoomId>,
    cached: Mutex<Option<(Instant, Arc<PowerLevels>)>>,
    /// Bumped by [`Self::invalidate`]: a read that started before keeps its
    /// (possibly old) answer to itself instead of caching it.
    generation: AtomicU64,
}

impl RoomPowerLevels {
    pub fn new(homeserver: Homeserver, bot: OwnedUserId) -> Self {
        Self {
            homeserver,
            bot,
            room: OnceLock::new(),
            cached: Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }

    pub fn set_room(&self, room: OwnedRoomId) {
        let _ = self.room.set(room);
    }

    /// Forgets the cached levels: the room's `m.room.power_levels` changed, and
    /// the next check must see the change, not a copy up to a minute old.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut cached) = self.cached.lock() {
            *cached = None;
        }
    }

    async fn levels(&self) -> Result<Arc<PowerLevels>, String> {
        if let Ok(cached) = self.cached.lock() {
            if let Some((at, levels)) = cached.as_ref() {
                if at.elapsed() < POWER_LEVELS_TTL {
                    return Ok(Arc::clone(levels));
                }
            }
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let room = self
            .room
            .get()
            .ok_or("the channel's room is not bridged yet")?;
        let state = self
            .homeserver
            .room_state(room, &self.bot)
            .await
            .map_err(|e| format!("cannot read the room's power levels ({e})"))?;
        let levels = Arc::new(PowerLevels::from_state(&state));
        if let Ok(mut cached) = self.cached.lock() {
            if self.generation.load(Ordering::SeqCst) == generation {
                *cached = Some((Instant::now(), Arc::clone(&levels)));
            }
        }
        Ok(levels)
    }
}

/// What the gate needs of `m.room.power_levels` and `m.room.create`.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerLevels {
    users: serde_json::Map<String, Value>,
    users_default: i64,
    /// Room version 12 creators: unlimited power.
    creators: Vec<String>,
}

impl PowerLevels {
    pub fn from_state(state: &[Value]) -> Self {
        let event = |kind: &str| {
            state.iter().find(|e| {
                e.get("type").and_then(Value::as_str) == Some(kind)
                    && e.get("state_key").and_then(Value::as_str) == Some("")
            })
        };
        let create = event("m.room.create");
        let version = create
            .and_then(|e| e.pointer("/content/room_version"))
            .and_then(Value::as_str)
            .unwrap_or("1");
        let mut creators = Vec::new();
        if matches!(version, "12" | "org.matrix.hydra.11") {
            if let Some(sender) = create.and_then(|e| e.get("sender")).and_then(Value::as_str) {
                creators.push(sender.to_owned());
            }
            if let Some(more) = create
                .and_then(|e| e.pointer("/content/additional_creators"))
                .and_then(Value::as_array)
            {
                creators.extend(more.iter().filter_map(Value::as_str).map(str::to_owned));
            }
        }
        let content = event("m.room.power_levels").and_then(|e| e.get("content"));
        let users = content
            .and_then(|c| c.get("users"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let users_default = content
            .and_then(|c| c.get("users_default"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        Self {
            users,
            users_default,
            creators,
        }
    }

    /// `None` stands for unlimited (a room creator in room version 12).
    pub fn level_of(&self, user: &str) -> Option<i64> {
        if self.creators.iter().any(|c| c == user) {
            return None;
        }
        Some(
            self.users
                .get(user)
                .and_then(Value::as_i64)
                .unwrap_or(self.users_default),
        )
    }
}

/// One radio's rule.
pub struct RadioTransmitPolicy {
    radio: String,
    allow: Vec<TransmitAllow>,
    min_power_level: Option<i64>,
    power_levels: Arc<RoomPowerLevels>,
}

impl RadioTransmitPolicy {
    pub fn new(
        radio: impl Into<String>,
        allow: Vec<TransmitAllow>,
        min_power_level: Option<i64>,
        power_levels: Arc<RoomPowerLevels>,
    ) -> Self {
        Self {
            radio: radio.into(),
            allow,
            min_power_level,
            power_levels,
        }
    }

    async fn decide(&self, talker: &Talker, source: &EndpointId) -> Result<(), String> {
        if self.allow.is_empty() && self.min_power_level.is_none() {
            return Ok(());
        }
        let matrix_user = talker.matrix_user_id.as_deref();
        if self
            .allow
            .iter()
            .any(|entry| entry.matches(source.as_str(), talker))
        {
            return Ok(());
        }
        let who = matrix_user.unwrap_or(&talker.display_name);
        match (self.min_power_level, matrix_user) {
            (Some(minimum), Some(user)) => {
                let levels = match self.power_levels.levels().await {
                    Ok(levels) => levels,
                    Err(reason) => {
                        // Fail closed: a radio keys only for someone known to be allowed.
                        warn!(radio = %self.radio, %reason, "power levels unavailable; refusing");
                        return Err(format!("{who} may not key {}: {reason}", self.radio));
                    }
                };
                match levels.level_of(user) {
                    None => Ok(()),
                    Some(level) if level >= minimum => Ok(()),
                    Some(level) => Err(format!(
                        "{who} may not key {}: power level {level} is below the {minimum} it needs (transmit_min_power_level)",
                        self.radio
                    )),
                }
            }
            _ if self.names_unverified(talker, source) => Err(format!(
                "{who} may not key {}: transmit_allow names only registered users, and \
                 {:?} is not registered on the server",
                self.radio, talker.name
            )),
            _ => Err(format!(
                "{who} may not key {}: not in its transmit_allow list",
                self.radio
            )),
        }
    }

    /// Whether an entry names this talker, who is refused only because nothing
    /// vouches for the name: they are told to register rather than left guessing.
    fn names_unverified(&self, talker: &Talker, source: &EndpointId) -> bool {
        if talker.identity.name_is_verified() {
            return false;
        }
        let vouched = talker.clone().with_identity(Identity::Endpoint);
        self.allow.iter().any(|entry| {
            matches!(
                entry,
                TransmitAllow::Endpoint {
                    talker: Some(TalkerPattern::Name(_)),
                    ..
                }
            ) && entry.matches(source.as_str(), &vouched)
        })
    }
}

impl TransmitPolicy for RadioTransmitPolicy {
    fn check<'a>(&'a self, talker: &'a Talker, source: &'a EndpointId) -> PolicyFuture<'a> {
        Box::pin(self.decide(talker, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn levels_follow_users_default_and_v12_creators() {
        let state = vec![
            json!({"type": "m.room.create", "state_key": "", "sender": "@owner:x",
                   "content": {"room_version": "12"}}),
            json!({"type": "m.room.power_levels", "state_key": "",
                   "content": {"users": {"@op:x": 50}, "users_default": 5}}),
        ];
        let levels = PowerLevels::from_state(&state);
        assert_eq!(levels.level_of("@owner:x"), None);
        assert_eq!(levels.level_of("@op:x"), Some(50));
        assert_eq!(levels.level_of("@anyone:x"), Some(5));
        let old_room = vec![json!({"type": "m.room.create", "state_key": "",
                                   "sender": "@owner:x", "content": {"room_version": "10"}})];
        assert_eq!(
            PowerLevels::from_state(&old_room).level_of("@owner:x"),
            Some(0)
        );
    }
}

//! Puppets: Matrix users in the bridge's namespace standing for external talkers
//! (`@walkie_mumble_alice:example.org`, "alice (Mumble)"), and the rooms each has
//! joined, so a restart neither re-registers nor re-joins.

use std::collections::BTreeSet;
use std::time::SystemTime;

use walkie_endpoint::EndpointId;

use super::{on_pool, to_ms, Store, StoreError};

/// What the bridge knows about a puppet apart from its rooms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PuppetProfile {
    /// Full Matrix user id.
    pub user_id: String,
    /// The endpoint its talker speaks on (`mumble.ops`).
    pub endpoint: EndpointId,
    /// The talker's stable name within that endpoint.
    pub talker_name: String,
    /// The display name last set on the homeserver ("alice (Mumble)").
    pub display_name: String,
    /// Registered with the homeserver (`/register` as the appservice).
    pub registered: bool,
}

/// A stored puppet with the rooms it has joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Puppet {
    pub profile: PuppetProfile,
    /// Room ids, sorted.
    pub joined_rooms: BTreeSet<String>,
}

type ProfileRow = (String, String, String, String, bool);

impl Store {
    /// The puppet with this user id, if stored.
    pub async fn puppet(&self, user_id: &str) -> Result<Option<Puppet>, StoreError> {
        let row: Option<ProfileRow> = on_pool!(self, pool => sqlx::query_as(
            "SELECT user_id, endpoint, talker_name, display_name, registered \
             FROM puppets WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(pool)
        .await)
        .map_err(StoreError::query("looking up a puppet"))?;
        let Some((user_id, endpoint, talker_name, display_name, registered)) = row else {
            return Ok(None);
        };
        let rooms: Vec<String> = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT room_id FROM puppet_rooms WHERE user_id = $1",
        )
        .bind(&user_id)
        .fetch_all(pool)
        .await)
        .map_err(StoreError::query("listing a puppet's rooms"))?;
        Ok(Some(Puppet {
            profile: PuppetProfile {
                user_id,
                endpoint: EndpointId::new(endpoint),
                talker_name,
                display_name,
                registered,
            },
            joined_rooms: rooms.into_iter().collect(),
        }))
    }

    /// Stores a new puppet or updates one. `registered` only ever goes from false
    /// to true: an account registered on the homeserver stays registered, and a
    /// stale profile written late must not make the bridge register it again.
    /// The puppet's rooms are left as they are.
    pub async fn upsert_puppet(&self, puppet: &PuppetProfile) -> Result<(), StoreError> {
        let now = to_ms(SystemTime::now());
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO puppets \
             (user_id, endpoint, talker_name, display_name, registered, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (user_id) DO UPDATE SET \
             endpoint = excluded.endpoint, talker_name = excluded.talker_name, \
             display_name = excluded.display_name, \
             registered = (puppets.registered OR excluded.registered), \
             updated_at = excluded.updated_at",
        )
        .bind(&puppet.user_id)
        .bind(puppet.endpoint.as_str())
        .bind(&puppet.talker_name)
        .bind(&puppet.display_name)
        .bind(puppet.registered)
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(StoreError::query("storing a puppet"))
    }

    /// Records that the puppet joined `room_id`. True if that was not yet
    /// recorded; [`StoreError::UnknownPuppet`] if the puppet is not stored.
    pub async fn mark_puppet_joined(
        &self,
        user_id: &str,
        room_id: &str,
    ) -> Result<bool, StoreError> {
        let now = to_ms(SystemTime::now());
        // Inserts only for a stored puppet, in one statement.
        let inserted = on_pool!(self, pool => sqlx::query(
            "INSERT INTO puppet_rooms (user_id, room_id, joined_at) \
             SELECT user_id, $2, $3 FROM puppets WHERE user_id = $1 \
             ON CONFLICT (user_id, room_id) DO NOTHING",
        )
        .bind(user_id)
        .bind(room_id)
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(StoreError::query("recording a puppet's room"))?;
        if inserted == 1 {
            return Ok(true);
        }
        let exists: Option<i64> = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT updated_at FROM puppets WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(pool)
        .await)
        .map_err(StoreError::query("looking up a puppet"))?;
        match exists {
            Some(_) => Ok(false),
            None => Err(StoreError::UnknownPuppet {
                user_id: user_id.to_owned(),
            }),
        }
    }

    /// Forgets that the puppet is in `room_id` (it left or was kicked), so it
    /// joins again when next needed. True if it was recorded.
    pub async fn mark_puppet_left(&self, user_id: &str, room_id: &str) -> Result<bool, StoreError> {
        let removed = on_pool!(self, pool => sqlx::query(
            "DELETE FROM puppet_rooms WHERE user_id = $1 AND room_id = $2",
        )
        .bind(user_id)
        .bind(room_id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(StoreError::query("forgetting a puppet's room"))?;
        Ok(removed > 0)
    }

    /// Whether the puppet is recorded as joined to `room_id`.
    pub async fn puppet_joined(&self, user_id: &str, room_id: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT joined_at FROM puppet_rooms WHERE user_id = $1 AND room_id = $2",
        )
        .bind(user_id)
        .bind(room_id)
        .fetch_optional(pool)
        .await)
        .map_err(StoreError::query("looking up a puppet's room"))?;
        Ok(found.is_some())
    }
}

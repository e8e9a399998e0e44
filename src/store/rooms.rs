//! Room aliases resolved to room ids, so a restart does not depend on the
//! homeserver's directory answering.

use std::time::SystemTime;

use super::{on_pool, to_ms, Store, StoreError};

impl Store {
    /// The room id last saved for `alias` (`#ops:example.org`).
    pub async fn resolved_room(&self, alias: &str) -> Result<Option<String>, StoreError> {
        on_pool!(self, pool => sqlx::query_scalar("SELECT room_id FROM rooms WHERE alias = $1")
            .bind(alias)
            .fetch_optional(pool)
            .await)
        .map_err(StoreError::query("looking up a room alias"))
    }

    /// Records (or replaces) the room id `alias` resolves to.
    pub async fn save_room(&self, alias: &str, room_id: &str) -> Result<(), StoreError> {
        let now = to_ms(SystemTime::now());
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO rooms (alias, room_id, resolved_at) VALUES ($1, $2, $3) \
             ON CONFLICT (alias) DO UPDATE SET room_id = excluded.room_id, \
             resolved_at = excluded.resolved_at",
        )
        .bind(alias)
        .bind(room_id)
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(StoreError::query("saving a room alias"))
    }
}

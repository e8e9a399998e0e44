//! Room events from the homeserver between their arrival and their handling
//! (issue 14.6): queued durably before the homeserver's transaction is
//! acknowledged, marked done once handled, replayed at start-up when a crash
//! came in between. An event id is taken once: a redelivery is refused here.

use std::time::SystemTime;

use super::{on_pool, to_ms, Store, StoreError};

/// An event taken but not handled, as the homeserver sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingEvent {
    pub event_id: String,
    pub room_id: String,
    /// The event's JSON.
    pub event: String,
}

impl Store {
    /// Queues `event_id` for handling: true if this call queued it, false if it
    /// was taken before (handled or still pending). Atomic, so of two deliveries
    /// exactly one is handled.
    pub async fn queue_inbound(
        &self,
        event_id: &str,
        room_id: &str,
        event: &str,
    ) -> Result<bool, StoreError> {
        let now = to_ms(SystemTime::now());
        let inserted = on_pool!(self, pool => sqlx::query(
            "INSERT INTO inbound_events (event_id, room_id, event, received_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event_id)
        .bind(room_id)
        .bind(event)
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(StoreError::query("queueing an inbound event"))?;
        Ok(inserted == 1)
    }

    /// Marks `event_id` handled: it is never replayed.
    pub async fn inbound_done(&self, event_id: &str) -> Result<(), StoreError> {
        let now = to_ms(SystemTime::now());
        on_pool!(self, pool => sqlx::query(
            "UPDATE inbound_events SET done_at = $2 WHERE event_id = $1 AND done_at IS NULL",
        )
        .bind(event_id)
        .bind(now)
        .execute(pool)
        .await
        .map(drop))
        .map_err(StoreError::query("marking an inbound event handled"))
    }

    /// Events taken and not handled, oldest first: what a crash interrupted.
    pub async fn pending_inbound(&self) -> Result<Vec<PendingEvent>, StoreError> {
        let rows: Vec<(String, String, String)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT event_id, room_id, event FROM inbound_events \
             WHERE done_at IS NULL ORDER BY seq",
        )
        .fetch_all(pool)
        .await)
        .map_err(StoreError::query("reading pending inbound events"))?;
        Ok(rows
            .into_iter()
            .map(|(event_id, room_id, event)| PendingEvent {
                event_id,
                room_id,
                event,
            })
            .collect())
    }

    /// Whether `event_id` was taken and handled (and not pruned).
    pub async fn inbound_handled(&self, event_id: &str) -> Result<bool, StoreError> {
        let done: Option<Option<i64>> = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT done_at FROM inbound_events WHERE event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(pool)
        .await)
        .map_err(StoreError::query("looking up an inbound event"))?;
        Ok(matches!(done, Some(Some(_))))
    }

    /// Forgets events handled before `before`, and events taken before `before`
    /// that were never handled (a room no longer bridged): a homeserver stops
    /// redelivering long before that. Meant to run periodically with a retention
    /// of days. Returns how many rows were removed.
    pub async fn prune_inbound(&self, before: SystemTime) -> Result<u64, StoreError> {
        on_pool!(self, pool => sqlx::query(
            "DELETE FROM inbound_events WHERE COALESCE(done_at, received_at) < $1",
        )
        .bind(to_ms(before))
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(StoreError::query("pruning inbound events"))
    }
}

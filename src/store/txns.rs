//! Appservice transactions already handled (DESIGN.md §4: each txnId processed
//! once, even across restarts).

use std::time::SystemTime;

use super::{on_pool, to_ms, Store, StoreError};

impl Store {
    /// Claims `txn_id`: true if this call recorded it, false if it was already
    /// recorded. Atomic (one `INSERT … ON CONFLICT DO NOTHING`), so of several
    /// concurrent deliveries of one transaction — in this process or in another
    /// one on the same database — exactly one gets true.
    ///
    /// Claiming before processing means a crash in the middle loses the rest of
    /// that transaction (the homeserver's retry is answered "done"); claiming after
    /// means a crash replays it. The Matrix side picks; [`Store::txn_handled`]
    /// serves the second order.
    pub async fn mark_txn_handled(&self, txn_id: &str) -> Result<bool, StoreError> {
        let now = to_ms(SystemTime::now());
        let inserted = on_pool!(self, pool => sqlx::query(
            "INSERT INTO handled_txns (txn_id, handled_at) VALUES ($1, $2) \
             ON CONFLICT (txn_id) DO NOTHING",
        )
        .bind(txn_id)
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(StoreError::query("recording a handled transaction"))?;
        Ok(inserted == 1)
    }

    /// Whether `txn_id` was recorded by [`Store::mark_txn_handled`] (and not pruned).
    pub async fn txn_handled(&self, txn_id: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT handled_at FROM handled_txns WHERE txn_id = $1",
        )
        .bind(txn_id)
        .fetch_optional(pool)
        .await)
        .map_err(StoreError::query("looking up a transaction"))?;
        Ok(found.is_some())
    }

    /// Forgets transactions handled before `before` (a homeserver stops retrying
    /// a transaction long before days pass). Returns how many were removed.
    pub async fn prune_txns(&self, before: SystemTime) -> Result<u64, StoreError> {
        on_pool!(self, pool => sqlx::query("DELETE FROM handled_txns WHERE handled_at < $1")
            .bind(to_ms(before))
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(StoreError::query("pruning handled transactions"))
    }
}

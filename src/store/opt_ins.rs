//! MSC4002 opt-ins: only users who opted in to receive may transmit. An opt-in is
//! per user and device — or user-wide, covering every device — and permanent or
//! until an expiry. Stored with device id `''` for user-wide.

use std::time::SystemTime;

use super::{from_ms, on_pool, to_ms, Store, StoreError};

/// One opt-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptIn {
    pub user_id: String,
    /// `None`: user-wide, covering every device of the user.
    pub device_id: Option<String>,
    /// `None`: until cleared. Otherwise it no longer counts from this instant on.
    pub until: Option<SystemTime>,
    /// When it was last set.
    pub since: SystemTime,
}

type OptInRow = (String, String, Option<i64>, i64);

fn opt_in((user_id, device_id, until, since): OptInRow) -> OptIn {
    OptIn {
        user_id,
        device_id: (!device_id.is_empty()).then_some(device_id),
        until: until.map(from_ms),
        since: from_ms(since),
    }
}

/// `None` and `Some("")` both mean user-wide.
fn device_key(device_id: Option<&str>) -> &str {
    device_id.unwrap_or("")
}

impl Store {
    /// Opts `user_id` in on `device_id` (`None`: user-wide) until `until`
    /// (`None`: until cleared), replacing that device's previous opt-in. Times are
    /// kept to the millisecond.
    pub async fn set_opt_in(
        &self,
        user_id: &str,
        device_id: Option<&str>,
        until: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        let now = to_ms(SystemTime::now());
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO opt_ins (user_id, device_id, until_ms, since_ms) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, device_id) DO UPDATE SET \
             until_ms = excluded.until_ms, since_ms = excluded.since_ms",
        )
        .bind(user_id)
        .bind(device_key(device_id))
        .bind(until.map(to_ms))
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(StoreError::query("storing an opt-in"))
    }

    /// Removes the opt-in of one device, or with `None` every opt-in of the user
    /// (user-wide and per device). A user-wide opt-in survives clearing a single
    /// device — and goes on covering it. Returns how many were removed.
    pub async fn clear_opt_in(
        &self,
        user_id: &str,
        device_id: Option<&str>,
    ) -> Result<u64, StoreError> {
        on_pool!(self, pool => sqlx::query(
            "DELETE FROM opt_ins WHERE user_id = $1 AND ($2 IS NULL OR device_id = $2)",
        )
        .bind(user_id)
        .bind(device_id.map(|d| d.to_owned()))
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(StoreError::query("clearing opt-ins"))
    }

    /// The opt-in that lets `user_id` transmit from `device_id` at `now`, if any:
    /// that device's own or the user-wide one. With `device_id` `None` (the
    /// device is not known, as for a voice message) any of the user's opt-ins
    /// counts. Expired opt-ins never count. Of several, the longest-lasting wins.
    pub async fn opted_in(
        &self,
        user_id: &str,
        device_id: Option<&str>,
        now: SystemTime,
    ) -> Result<Option<OptIn>, StoreError> {
        let row: Option<OptInRow> = on_pool!(self, pool => sqlx::query_as(
            "SELECT user_id, device_id, until_ms, since_ms FROM opt_ins \
             WHERE user_id = $1 \
             AND ($2 IS NULL OR device_id = '' OR device_id = $2) \
             AND (until_ms IS NULL OR until_ms > $3) \
             ORDER BY (until_ms IS NULL) DESC, until_ms DESC, device_id ASC \
             LIMIT 1",
        )
        .bind(user_id)
        .bind(device_id.map(|d| d.to_owned()))
        .bind(to_ms(now))
        .fetch_optional(pool)
        .await)
        .map_err(StoreError::query("looking up opt-ins"))?;
        Ok(row.map(opt_in))
    }

    /// Every opt-in of `user_id` still in force at `now`, user-wide first, then
    /// by device id.
    pub async fn opt_ins(&self, user_id: &str, now: SystemTime) -> Result<Vec<OptIn>, StoreError> {
        let rows: Vec<OptInRow> = on_pool!(self, pool => sqlx::query_as(
            "SELECT user_id, device_id, until_ms, since_ms FROM opt_ins \
             WHERE user_id = $1 AND (until_ms IS NULL OR until_ms > $2) \
             ORDER BY device_id ASC",
        )
        .bind(user_id)
        .bind(to_ms(now))
        .fetch_all(pool)
        .await)
        .map_err(StoreError::query("listing opt-ins"))?;
        Ok(rows.into_iter().map(opt_in).collect())
    }

    /// Deletes opt-ins expired at `now`. Returns how many were removed.
    pub async fn prune_opt_ins(&self, now: SystemTime) -> Result<u64, StoreError> {
        on_pool!(self, pool => sqlx::query(
            "DELETE FROM opt_ins WHERE until_ms IS NOT NULL AND until_ms <= $1",
        )
        .bind(to_ms(now))
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(StoreError::query("pruning expired opt-ins"))
    }
}

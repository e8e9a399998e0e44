//! How long the tables that only grow keep their rows, and the pass that prunes
//! them. The daemon runs [`Store::prune`] at start-up and then every
//! [`Retention::interval`] (see [`prune_periodically`]); the values are
//! documented in the README ("Database").

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{Store, StoreError};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// How long each kind of row is kept once it is of no further use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Outbox rows posted (or given up on) longer ago than this are deleted.
    /// They say which event each transmission became; recovery also uses them
    /// to tell a posted recording from one to queue, which only matters for a
    /// spool file a crash left behind — and recovery runs before pruning.
    pub posted: Duration,
    /// Appservice transactions handled longer ago than this are forgotten. A
    /// homeserver retries a transaction for minutes to hours, never for days.
    pub handled_txns: Duration,
    /// Room events the appservice took (`inbound_events`: what makes a voice
    /// message play exactly once across a crash) are forgotten this long after
    /// they were handled, or after they arrived if never handled (a room no
    /// longer bridged). Like transactions, a homeserver redelivers for hours at
    /// most, never for days.
    pub handled_events: Duration,
    /// Opt-ins whose end passed longer ago than this are deleted (they no longer
    /// count from the moment they end; this only bounds the table).
    pub expired_opt_ins: Duration,
    /// Time between two passes. The first pass runs at start-up.
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            posted: 7 * DAY,
            handled_txns: 7 * DAY,
            handled_events: 7 * DAY,
            expired_opt_ins: Duration::ZERO,
            interval: Duration::from_secs(3600),
        }
    }
}

/// What one pass removed, per table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub posted: u64,
    pub handled_txns: u64,
    pub handled_events: u64,
    pub expired_opt_ins: u64,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.posted + self.handled_txns + self.handled_events + self.expired_opt_ins
    }
}

impl Store {
    /// One pass over every table that only grows, as of `now`. Each table is
    /// pruned on its own: a failure in one (logged by the caller) does not keep
    /// the others from being pruned, and the first error is returned after all
    /// were tried.
    ///
    /// A new table of that kind gets a field in [`Retention`] and [`Pruned`] and
    /// one step here.
    pub async fn prune(
        &self,
        retention: &Retention,
        now: SystemTime,
    ) -> Result<Pruned, StoreError> {
        let before = |keep: Duration| now.checked_sub(keep).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut first_error = None;
        let mut step = |result: Result<u64, StoreError>| match result {
            Ok(n) => n,
            Err(error) => {
                first_error.get_or_insert(error);
                0
            }
        };
        let pruned = Pruned {
            posted: step(self.prune_posted(before(retention.posted)).await),
            handled_txns: step(self.prune_txns(before(retention.handled_txns)).await),
            handled_events: step(self.prune_inbound(before(retention.handled_events)).await),
            expired_opt_ins: step(self.prune_opt_ins(before(retention.expired_opt_ins)).await),
        };
        match first_error {
            Some(error) => Err(error),
            None => Ok(pruned),
        }
    }
}

/// Prunes at once, then every `retention.interval`, until `shutdown`. A pass
/// that fails is logged and counted (`walkie_store_prune_errors_total`); the
/// next one tries again.
pub async fn prune_periodically(store: Store, retention: Retention, shutdown: CancellationToken) {
    // interval() refuses zero; a pass a second is plenty even for tests.
    let mut ticks = tokio::time::interval(retention.interval.max(Duration::from_secs(1)));
    // After a suspend, one pass is enough: each pass removes all that is due.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        // A pass in progress finishes before shutdown completes: each DELETE is
        // one statement, and the store is closed only after this task ends.
        match store.prune(&retention, SystemTime::now()).await {
            Ok(pruned) if pruned.total() > 0 => tracing::info!(
                posted = pruned.posted,
                handled_txns = pruned.handled_txns,
                handled_events = pruned.handled_events,
                expired_opt_ins = pruned.expired_opt_ins,
                "pruned the database"
            ),
            Ok(_) => tracing::debug!("nothing to prune"),
            Err(error) => {
                metrics::counter!("walkie_store_prune_errors_total").increment(1);
                tracing::warn!(%error, "cannot prune the database; trying again later");
            }
        }
    }
}

//! The bridge's persistent state (DESIGN.md §4, §7): appservice transactions
//! already handled, resolved room aliases, puppets and the rooms they joined,
//! MSC4002 opt-ins, and the archive outbox.
//!
//! SQLite by default (`sqlite:///var/lib/walkie-bridge/walkie.db`; the file and its
//! folder are created, WAL journal, busy timeout), PostgreSQL when
//! `database.url` is `postgres://…`. [`Store::connect`] brings the schema up to
//! date from migrations embedded in the binary.
//!
//! One SQL text serves both backends: every statement uses `$N` placeholders
//! (which SQLite accepts too), `INSERT … ON CONFLICT`, `BIGINT` unix milliseconds
//! and `BOOLEAN`. The pool is an enum of the two concrete sqlx pools rather than
//! `AnyPool`, so each backend keeps its own connect options (create-if-missing,
//! WAL, busy timeout) and exact column types, at the price of each query being
//! compiled twice (see [`on_pool!`]).
//!
//! Every operation is a single statement, so none needs an explicit transaction:
//! that keeps SQLite's writers from deadlocking on lock upgrades and makes each
//! operation atomic on both backends.
//!
//! All ids are text as Matrix spells them (`@walkie_mumble_alice:example.org`,
//! `!room:example.org`); the Matrix side parses them into ruma types.

mod error;
mod inbound;
mod migrations;
mod mumble_identities;
mod opt_ins;
mod outbox;
mod puppets;
mod retention;
mod rooms;
mod txns;

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::migrate::MigrateError;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};

pub use error::StoreError;
pub use inbound::PendingEvent;
pub use opt_ins::OptIn;
pub use outbox::{OutboxEntry, OutboxItem};
pub use puppets::{Puppet, PuppetProfile};
pub use retention::{prune_periodically, Pruned, Retention};

/// How long a SQLite statement waits for another connection's write lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections per pool. SQLite serialises writers anyway; a few connections let
/// reads proceed beside a write under WAL.
const SQLITE_MAX_CONNECTIONS: u32 = 4;
/// Page cache per SQLite connection, in KiB (SQLite's default is 2000 KiB). The
/// bridge's queries touch a few rows at the tail of small indexes; the OS page
/// cache holds the file anyway. SQLite's default let each connection's cache
/// grow with the database file for as long as the bridge ran: the 2-hour soak
/// saw ~1 MiB of RSS in its first ten minutes and ~10 KiB/min after, while the
/// database grew 4 → 20 MB. A small cap is reached within minutes and then stays.
/// At 256 KiB the next 2-hour soak still grew 1.06 MiB between minutes 1 and 10
/// and ~0.3 MiB in the 110 minutes after: the pool's four connections filling
/// their caches (4 × 256 KiB). 64 KiB each holds the indexes' upper pages.
const SQLITE_CACHE_KIB: i64 = 64;
const POSTGRES_MAX_CONNECTIONS: u32 = 8;
/// How long a PostgreSQL operation waits for a free (or new) connection.
const POSTGRES_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which database a [`Store`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        })
    }
}

/// A handle on the database; cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever concrete pool the store holds.
/// The body is written once and compiled for each backend.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite($pool) => $body,
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating it if needed) the database at `url` and brings its schema
    /// up to date. `url` is `database.url`: `sqlite://PATH`, `sqlite::memory:` or
    /// `postgres://…` / `postgresql://…`. Errors show the URL without its password.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let shown = redact_url(url);
        if url.starts_with("sqlite:") {
            Self::connect_sqlite(url, shown).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::connect_postgres(url, shown).await
        } else {
            Err(StoreError::UnsupportedUrl { url: shown })
        }
    }

    /// Opens the pool of a database file, all its connections at once.
    ///
    /// A single connection creates the file and switches it to WAL first. Several
    /// connections opening a brand-new file together race to change its journal
    /// mode, and the loser gets "database is locked" at once: SQLite does not
    /// call the busy handler there (seen in CI, 1 start in ~15). The journal mode
    /// is kept in the file, so the pool's connections then find it set.
    async fn open_sqlite_file_pool(
        pool_options: SqlitePoolOptions,
        options: SqliteConnectOptions,
    ) -> Result<SqlitePool, sqlx::Error> {
        let first = options.connect().await?;
        let pool = pool_options.connect_with(options).await;
        first.close().await?;
        pool
    }

    async fn connect_sqlite(url: &str, shown: String) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|cause| StoreError::InvalidUrl {
                url: shown.clone(),
                cause,
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL (sqlx's default, stated here on purpose): a handled transaction or
            // a posted voice message must survive a power cut once committed.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true)
            // A negative cache_size is in KiB, a positive one in pages.
            .pragma("cache_size", format!("-{SQLITE_CACHE_KIB}"));
        let memory = sqlite_url_is_memory(url);
        let file = (!memory).then(|| options.get_filename().to_path_buf());
        if let Some(parent) = file
            .as_deref()
            .and_then(|f| f.parent())
            .filter(|p| !p.as_os_str().is_empty())
        {
            let reason = if parent.exists() && !parent.is_dir() {
                Some(format!("{} is not a folder", parent.display()))
            } else {
                std::fs::create_dir_all(parent)
                    .err()
                    .map(|e| format!("cannot create folder {}: {e}", parent.display()))
            };
            if let Some(reason) = reason {
                return Err(StoreError::Open { url: shown, reason });
            }
        }

        let pool_options = if memory {
            // An in-memory database lives as long as its last connection: keep
            // exactly one, forever.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            // Connections to a file are kept for the life of the process. sqlx's
            // defaults close a connection after 30 minutes (and after 10 idle)
            // and open a new one, which rebuilds SQLite's page cache and
            // statement cache from scratch: the 2-hour soak saw RSS step up
            // ~400 KiB at minutes 30 and 60 and never come back down. Recycling
            // guards against a server's per-session leaks; SQLite has none.
            // All of them are opened at start: sqlx opens one lazily when the
            // others are busy, each with a worker thread of its own (and its
            // own page cache and glibc arena), so RSS stepped up whenever
            // traffic first peaked — in the soak at minute 9 of one run and
            // minute 112 of another. Opened up front, they are in the baseline.
            SqlitePoolOptions::new()
                .max_connections(SQLITE_MAX_CONNECTIONS)
                .min_connections(SQLITE_MAX_CONNECTIONS)
                .idle_timeout(None)
                .max_lifetime(None)
        };
        let opened = if memory {
            pool_options.connect_with(options).await
        } else {
            Self::open_sqlite_file_pool(pool_options, options).await
        };
        let pool = match opened {
            Ok(pool) => pool,
            Err(e) => {
                // SQLite only says "unable to open database file"; the OS says why.
                let reason = file
                    .as_deref()
                    .and_then(|f| {
                        std::fs::OpenOptions::new()
                            .read(true)
                            .write(true)
                            .create(true)
                            .truncate(false)
                            .open(f)
                            .err()
                    })
                    .map_or_else(|| describe(&e), |io| io.to_string());
                return Err(StoreError::Open { url: shown, reason });
            }
        };
        let store = Store {
            pool: Pool::Sqlite(pool),
        };
        store.migrate(shown).await?;
        Ok(store)
    }

    async fn connect_postgres(url: &str, shown: String) -> Result<Store, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|cause| StoreError::InvalidUrl {
            url: shown.clone(),
            cause,
        })?;
        // One connection first: the pool retries a refused connection until its
        // timeout and then reports only "timed out"; this says what happened.
        let probe = options.connect().await.map_err(|e| StoreError::Open {
            url: shown.clone(),
            reason: describe(&e),
        })?;
        // Closing the probe politely is a courtesy; a failure here changes nothing.
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(POSTGRES_MAX_CONNECTIONS)
            .acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Open {
                url: shown.clone(),
                reason: describe(&e),
            })?;
        let store = Store {
            pool: Pool::Postgres(pool),
        };
        store.migrate(shown).await?;
        Ok(store)
    }

    async fn migrate(&self, url: String) -> Result<(), StoreError> {
        let set = match self.backend() {
            Backend::Sqlite => migrations::SQLITE,
            Backend::Postgres => migrations::POSTGRES,
        };
        let result = match migrations::migrator(set).await {
            Ok(migrator) => on_pool!(self, pool => migrator.run(pool).await),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => Ok(()),
            Err(MigrateError::VersionMissing(found)) => Err(StoreError::TooNew {
                url,
                found,
                known: migrations::latest(set),
            }),
            Err(cause) => Err(StoreError::Migrate { url, cause }),
        }
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Waits for operations in flight and closes every connection. Later
    /// operations on this store (or its clones) fail.
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

/// The database's own words where it gave some ("permission denied for schema
/// public"), else sqlx's description (connection refused, timeout, …).
fn describe(e: &sqlx::Error) -> String {
    match e.as_database_error() {
        Some(db) => db.message().to_owned(),
        None => e.to_string(),
    }
}

/// `sqlite::memory:`, `sqlite://:memory:`, `sqlite://…?mode=memory`.
fn sqlite_url_is_memory(url: &str) -> bool {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    path == ":memory:" || query.split('&').any(|p| p == "mode=memory")
}

/// Database URLs may carry a password; messages show the URL without it.
fn redact_url(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => s.to_owned(),
    }
}

/// Unix milliseconds, as the database stores time. Saturates far outside the
/// range a bridge will see.
pub(crate) fn to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

pub(crate) fn from_ms(ms: i64) -> SystemTime {
    let magnitude = Duration::from_millis(ms.unsigned_abs());
    let t = if ms >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    t.unwrap_or(UNIX_EPOCH)
}

pub(crate) fn to_i64(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

pub(crate) fn to_u64(what: &'static str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        what,
        detail: format!("negative value {value}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips_in_milliseconds() {
        for ms in [0, 1, 1_700_000_000_123, -5_000] {
            assert_eq!(to_ms(from_ms(ms)), ms);
        }
        let t = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_999_999);
        assert_eq!(
            to_ms(t),
            1_700_000_000_123,
            "sub-millisecond part is dropped"
        );
    }

    #[test]
    fn memory_urls_are_recognised() {
        assert!(sqlite_url_is_memory("sqlite::memory:"));
        assert!(sqlite_url_is_memory("sqlite://:memory:"));
        assert!(sqlite_url_is_memory(
            "sqlite://x.db?mode=memory&cache=shared"
        ));
        assert!(!sqlite_url_is_memory(
            "sqlite:///var/lib/walkie-bridge/walkie.db"
        ));
        assert!(!sqlite_url_is_memory("sqlite://memory.db?mode=rwc"));
    }

    /// Recycling connections costs the page and statement caches each time and
    /// left RSS a step higher every 30 minutes in the soak (issue 14 item 9).
    #[tokio::test]
    async fn sqlite_file_connections_live_as_long_as_the_process() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("walkie.db").display());
        let store = Store::connect(&url).await.expect("store opens");
        let Pool::Sqlite(pool) = &store.pool else {
            panic!("a sqlite URL opens a SQLite pool");
        };
        assert_eq!(pool.options().get_max_lifetime(), None);
        assert_eq!(pool.options().get_idle_timeout(), None);
    }

    /// What the bridge relies on from every SQLite connection, read back from
    /// SQLite itself: a dependency upgrade that changes a default (sqlx 0.8 →
    /// 0.9 changed none, docs/encryption.md "Implementation") shows here.
    #[tokio::test]
    async fn sqlite_connections_have_the_settings_the_store_relies_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("walkie.db").display());
        let store = Store::connect(&url).await.expect("open");
        let Pool::Sqlite(pool) = &store.pool else {
            panic!("a sqlite URL gives a sqlite pool");
        };
        assert_eq!(pool.options().get_max_connections(), SQLITE_MAX_CONNECTIONS);
        let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(pool)
            .await
            .expect("journal_mode");
        assert_eq!(journal_mode, "wal");
        let number = |name: &'static str| async move {
            let sql = sqlx::AssertSqlSafe(format!("PRAGMA {name}"));
            let value: i64 = sqlx::query_scalar(sql)
                .fetch_one(pool)
                .await
                .unwrap_or_else(|e| panic!("PRAGMA {name}: {e}"));
            value
        };
        // 2 = FULL: a committed transaction survives a power cut.
        assert_eq!(number("synchronous").await, 2);
        assert_eq!(
            number("busy_timeout").await,
            SQLITE_BUSY_TIMEOUT.as_millis() as i64
        );
        assert_eq!(number("foreign_keys").await, 1);
        assert_eq!(number("cache_size").await, -SQLITE_CACHE_KIB);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://walkie:hunter2@db/walkie"),
            "postgres://walkie:***@db/walkie"
        );
        assert_eq!(redact_url("sqlite:///a/b.db"), "sqlite:///a/b.db");
    }
}

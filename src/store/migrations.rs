//! The schema, embedded in the binary: one migration set per backend, because the
//! two SQL dialects will diverge as the schema changes (SQLite's limited
//! `ALTER TABLE`, PostgreSQL's richer types). The files live in `migrations/sqlite/`
//! and `migrations/postgres/` at the repository root, named as sqlx-cli expects
//! (`sqlx migrate info --source migrations/sqlite` works on a bridge's database).
//!
//! `include_str!` instead of `sqlx::migrate!`: no proc-macro build of sqlx, and
//! cargo rebuilds when a file changes without a build script. A new migration is one
//! more line in each list below.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// `(version, description, sql)`, ascending.
type Embedded = &'static [(i64, &'static str, &'static str)];

pub(crate) const SQLITE: Embedded = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "inbound events",
        include_str!("../../migrations/sqlite/0002_inbound_events.sql"),
    ),
    (
        3,
        "outbox encrypted upload",
        include_str!("../../migrations/sqlite/0003_outbox_encrypted_upload.sql"),
    ),
    (
        4,
        "mumble identities",
        include_str!("../../migrations/sqlite/0004_mumble_identities.sql"),
    ),
    (
        5,
        "outbox talker",
        include_str!("../../migrations/sqlite/0005_outbox_talker.sql"),
    ),
];

pub(crate) const POSTGRES: Embedded = &[
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "inbound events",
        include_str!("../../migrations/postgres/0002_inbound_events.sql"),
    ),
    (
        3,
        "outbox encrypted upload",
        include_str!("../../migrations/postgres/0003_outbox_encrypted_upload.sql"),
    ),
    (
        4,
        "mumble identities",
        include_str!("../../migrations/postgres/0004_mumble_identities.sql"),
    ),
    (
        5,
        "outbox talker",
        include_str!("../../migrations/postgres/0005_outbox_talker.sql"),
    ),
];

/// The highest schema version this build knows.
pub(crate) fn latest(set: Embedded) -> i64 {
    set.iter().map(|(v, _, _)| *v).max().unwrap_or(0)
}

pub(crate) async fn migrator(set: Embedded) -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Source(set)).await
}

#[derive(Debug)]
struct Source(Embedded);

type BoxDynError = Box<dyn std::error::Error + Send + Sync>;

impl MigrationSource<'static> for Source {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        let migrations = self
            .0
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    // Embedded `&'static str`s from the binary, never outside input.
                    sqlx::SqlSafeStr::into_sql_str(sql),
                    false,
                )
            })
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

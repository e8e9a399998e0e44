use std::path::PathBuf;

/// What went wrong with the database, worded for the person running the bridge.
///
/// Each message is complete on its own (`{e}` and anyhow's `{e:#}` read the same):
/// the underlying cause is part of the text and kept as a typed field, but not
/// exposed as [`std::error::Error::source`], so it is never printed twice.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `database.url` names no backend this build has.
    #[error("database URL {url} is neither a sqlite: nor a postgres:// URL")]
    UnsupportedUrl { url: String },

    /// The URL names a backend but sqlx cannot read it.
    #[error("database URL {url} is not valid: {cause}")]
    InvalidUrl { url: String, cause: sqlx::Error },

    /// The database could not be created, reached or opened. `reason` is the
    /// most specific explanation found (an OS error for files, the server's
    /// answer for PostgreSQL).
    #[error("cannot open database {url}: {reason}")]
    Open { url: String, reason: String },

    /// The schema could not be brought up to date.
    #[error("cannot update the schema of database {url}: {cause}")]
    Migrate {
        url: String,
        cause: sqlx::migrate::MigrateError,
    },

    /// The database carries a migration this build does not know: it was used by a
    /// newer walkie-bridge. Nothing was changed.
    #[error(
        "database {url} was written by a newer walkie-bridge (schema version {found}, \
         this build knows up to {known}); upgrade walkie-bridge or point database.url elsewhere"
    )]
    TooNew { url: String, found: i64, known: i64 },

    /// A statement failed on an open database.
    #[error("database error while {action}: {cause}")]
    Query {
        action: &'static str,
        cause: sqlx::Error,
    },

    /// `mark_puppet_joined` for a user id never stored with `upsert_puppet`.
    #[error("puppet {user_id} is not in the store; store it before recording its rooms")]
    UnknownPuppet { user_id: String },

    /// The database stores paths as text.
    #[error("spool file path {} is not valid UTF-8", path.display())]
    NonUtf8Path { path: PathBuf },

    /// A value that does not fit in the database's 64-bit signed integers.
    #[error("{what} {value} is too large to store")]
    OutOfRange { what: &'static str, value: u64 },

    /// A stored value this build cannot read back.
    #[error("database holds an unreadable {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

impl StoreError {
    pub(crate) fn query(action: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |cause| StoreError::Query { action, cause }
    }
}

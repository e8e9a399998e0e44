//! Each Mumble bot's own certificate (see migrations/*/0004_mumble_identities.sql).

use std::time::SystemTime;

use super::{on_pool, to_ms, Store, StoreError};

impl Store {
    /// The certificate and key (PEM) kept for `endpoint` ("mumble.ops").
    pub async fn mumble_identity(
        &self,
        endpoint: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        on_pool!(self, pool => sqlx::query_as(
            "SELECT cert_pem, key_pem FROM mumble_identities WHERE endpoint = $1",
        )
        .bind(endpoint)
        .fetch_optional(pool)
        .await)
        .map_err(StoreError::query("loading a Mumble certificate"))
    }

    /// Keeps `cert_pem`/`key_pem` for `endpoint` unless one is kept already (two
    /// starts racing both end up with the first saved: read it back after this).
    pub async fn save_mumble_identity_if_absent(
        &self,
        endpoint: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO mumble_identities (endpoint, cert_pem, key_pem, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (endpoint) DO NOTHING",
        )
        .bind(endpoint)
        .bind(cert_pem)
        .bind(key_pem)
        .bind(to_ms(SystemTime::now()))
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(StoreError::query("saving a Mumble certificate"))
    }
}

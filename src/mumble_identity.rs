//! The certificate each Mumble bot presents when its section names none: made
//! on the endpoint's first start, kept in the database, the same on every start
//! after. Mumble servers know registered users by certificate, so this is what
//! lets an administrator register the bot (in a Mumble client: right-click it,
//! Register) and have it keep its name against anyone else.

use std::collections::HashMap;

use tracing::info;
use walkie_mumble::ClientIdentity;

use crate::config::{ChannelConfig, Config, EndpointId, EndpointSpec};
use crate::store::Store;

/// Generated identities by endpoint (only Mumble endpoints without `client_cert`).
pub type MumbleIdentities = HashMap<EndpointId, ClientIdentity>;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("endpoint {id}: the bot's Mumble certificate: {source}")]
    Store {
        id: EndpointId,
        #[source]
        source: crate::store::StoreError,
    },
    #[error("endpoint {id}: {source}")]
    Make {
        id: EndpointId,
        #[source]
        source: walkie_mumble::MumbleError,
    },
}

/// The Mumble endpoints of `channels` with no `client_cert`, with their bots'
/// user names: whose identities [`load_or_make`] is to provide.
pub fn wanted<'a>(
    config: &Config,
    channels: impl IntoIterator<Item = &'a ChannelConfig>,
) -> Vec<(EndpointId, String)> {
    let mut wanted: Vec<(EndpointId, String)> = Vec::new();
    for id in channels.into_iter().flat_map(|c| &c.endpoints) {
        if let Some(EndpointSpec::Mumble(mumble)) = config.endpoint(id) {
            if mumble.client_cert.is_none() && !wanted.iter().any(|(w, _)| w == id) {
                wanted.push((id.clone(), mumble.username.clone()));
            }
        }
    }
    wanted
}

/// Loads (or makes and keeps) the identity of each endpoint in `wanted`.
pub async fn load_or_make(
    store: &Store,
    wanted: Vec<(EndpointId, String)>,
) -> Result<MumbleIdentities, IdentityError> {
    let mut identities = MumbleIdentities::new();
    for (id, username) in wanted {
        let identity = one(store, &id, &username).await?;
        identities.insert(id, identity);
    }
    Ok(identities)
}

async fn one(
    store: &Store,
    id: &EndpointId,
    username: &str,
) -> Result<ClientIdentity, IdentityError> {
    let key = id.to_string();
    let store_error = |source| IdentityError::Store {
        id: id.clone(),
        source,
    };
    let kept = match store.mumble_identity(&key).await.map_err(store_error)? {
        Some(kept) => kept,
        None => {
            let made =
                ClientIdentity::generate(username).map_err(|source| IdentityError::Make {
                    id: id.clone(),
                    source,
                })?;
            store
                .save_mumble_identity_if_absent(&key, &made.cert_pem, &made.key_pem)
                .await
                .map_err(store_error)?;
            // Whatever was saved first (a racing start's, possibly).
            let saved = store.mumble_identity(&key).await.map_err(store_error)?;
            let saved = saved.unwrap_or((made.cert_pem, made.key_pem));
            info!(endpoint = %id, "made the Mumble bot's certificate (kept in the database)");
            saved
        }
    };
    let identity = ClientIdentity {
        cert_pem: kept.0,
        key_pem: kept.1,
    };
    if let Ok(hash) = identity.cert_hash() {
        info!(endpoint = %id, cert_hash = %hash, "the Mumble bot presents this certificate; register it on the server to keep the bot's name");
    }
    Ok(identity)
}

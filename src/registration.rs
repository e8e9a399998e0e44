//! Application-service registration: the YAML file the homeserver loads to know
//! which users belong to the bridge and how to reach it.

use serde::Serialize;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
#[error("cannot write the registration as YAML: {0}")]
pub struct RegistrationError(#[from] serde_norway::Error);

/// The registration as Synapse and other homeservers read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Registration {
    pub id: String,
    pub url: String,
    pub as_token: String,
    pub hs_token: String,
    pub sender_localpart: String,
    pub namespaces: Namespaces,
    pub rate_limited: bool,
    /// MSC2409, stable name: typing and receipts reach the bridge.
    pub receive_ephemeral: bool,
    /// MSC2409 under its unstable name, for homeservers that only know that one.
    /// With `receive_ephemeral` (either one) Synapse also pushes to-device
    /// messages for the bridge's users (`de.sorunome.msc2409.to_device`), when
    /// its `experimental_features.msc2409_to_device_messages_enabled` is on.
    #[serde(rename = "de.sorunome.msc2409.push_ephemeral")]
    pub push_ephemeral: bool,
    /// MSC3202: transactions carry device-list changes, one-time-key counts and
    /// unused fallback key types of the bridge's devices (Synapse also needs
    /// `experimental_features.msc3202_transaction_extensions`). Encrypted rooms
    /// (issue 15, docs/encryption.md).
    #[serde(rename = "org.matrix.msc3202")]
    pub msc3202: bool,
    /// MSC4190: the appservice creates and deletes its users' devices itself
    /// (`PUT /devices/{id}` with `user_id`), no logins. Synapse then refuses
    /// appservice `/login` and `/register` without `inhibit_login`, neither of
    /// which the bridge uses.
    #[serde(rename = "io.element.msc4190")]
    pub msc4190: bool,
    pub protocols: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Namespaces {
    pub users: Vec<Namespace>,
    pub aliases: Vec<Namespace>,
    pub rooms: Vec<Namespace>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub exclusive: bool,
    pub regex: String,
}

impl Registration {
    pub fn from_config(config: &Config) -> Self {
        let a = &config.appservice;
        let domain = regex::escape(&config.homeserver.domain);
        // Anchored at both ends: Synapse only anchors the start, and an open end would
        // also claim `@walkie_x:example.org.evil.test`.
        let mut users = vec![Namespace {
            exclusive: true,
            regex: format!("^@{}.*:{domain}$", regex::escape(&a.puppet_prefix)),
        }];
        // A bot named inside the puppet prefix is covered by the first regex already.
        if !a.bot_localpart.starts_with(&a.puppet_prefix) {
            users.push(Namespace {
                exclusive: true,
                regex: format!("^@{}:{domain}$", regex::escape(&a.bot_localpart)),
            });
        }
        Self {
            id: a.id.clone(),
            url: a.url.as_str().trim_end_matches('/').to_owned(),
            as_token: a.as_token.expose().to_owned(),
            hs_token: a.hs_token.expose().to_owned(),
            sender_localpart: a.bot_localpart.clone(),
            namespaces: Namespaces {
                users,
                aliases: Vec::new(),
                rooms: Vec::new(),
            },
            rate_limited: false,
            receive_ephemeral: true,
            push_ephemeral: true,
            msc3202: true,
            msc4190: true,
            protocols: Vec::new(),
        }
    }

    pub fn to_yaml(&self) -> Result<String, RegistrationError> {
        Ok(serde_norway::to_string(self)?)
    }
}

//! Puppets on the homeserver: registered, named and joined on first use, remembered
//! in the store so a restart neither re-registers nor re-joins.

use ruma::{OwnedUserId, RoomId, UserId};
use walkie_endpoint::{EndpointId, Talker};

use super::client::{Homeserver, MatrixError};
use super::puppet_id::{puppet_localpart, puppet_user_id};
use crate::store::{PuppetProfile, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PuppetError {
    #[error("talker {talker:?} on {endpoint} gives no valid Matrix user ID")]
    InvalidName {
        endpoint: EndpointId,
        talker: String,
    },
    #[error(transparent)]
    Matrix(#[from] MatrixError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PuppetError {
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Matrix(e) => e.is_transient(),
            // A store error is a local disk or database problem: retrying later may help.
            Self::Store(_) => true,
            Self::InvalidName { .. } => false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Puppets {
    homeserver: Homeserver,
    store: Store,
    prefix: String,
    domain: String,
    bot: OwnedUserId,
}

impl Puppets {
    pub fn new(
        homeserver: Homeserver,
        store: Store,
        prefix: impl Into<String>,
        domain: impl Into<String>,
        bot: OwnedUserId,
    ) -> Self {
        Self {
            homeserver,
            store,
            prefix: prefix.into(),
            domain: domain.into(),
            bot,
        }
    }

    /// The user ID that stands for `talker` of `endpoint`, without touching the
    /// homeserver.
    pub fn user_id(
        &self,
        endpoint: &EndpointId,
        talker: &Talker,
    ) -> Result<OwnedUserId, PuppetError> {
        puppet_user_id(&self.prefix, endpoint.system(), &talker.name, &self.domain).ok_or_else(
            || PuppetError::InvalidName {
                endpoint: endpoint.clone(),
                talker: talker.name.clone(),
            },
        )
    }

    /// Makes sure the puppet exists, carries `talker`'s display name and is in
    /// `room`; returns its user ID. Each step is skipped when the store says it was
    /// done, so the common case costs two local lookups and no HTTP.
    pub async fn ensure(
        &self,
        endpoint: &EndpointId,
        talker: &Talker,
        room: &RoomId,
    ) -> Result<OwnedUserId, PuppetError> {
        let user = self.user_id(endpoint, talker)?;
        let known = self.store.puppet(user.as_str()).await?;
        let registered = known.as_ref().is_some_and(|p| p.profile.registered);
        if !registered {
            let localpart = puppet_localpart(&self.prefix, endpoint.system(), &talker.name);
            self.homeserver.register(&localpart).await?;
        }
        let named = known
            .as_ref()
            .is_some_and(|p| p.profile.registered && p.profile.display_name == talker.display_name);
        if !named {
            self.homeserver
                .set_display_name(&user, &talker.display_name)
                .await?;
            self.store
                .upsert_puppet(&PuppetProfile {
                    user_id: user.to_string(),
                    endpoint: endpoint.clone(),
                    talker_name: talker.name.clone(),
                    display_name: talker.display_name.clone(),
                    registered: true,
                })
                .await?;
            tracing::info!(puppet = %user, display_name = %talker.display_name, "puppet ready");
        }
        if !self
            .store
            .puppet_joined(user.as_str(), room.as_str())
            .await?
        {
            self.join(&user, room).await?;
            self.store
                .mark_puppet_joined(user.as_str(), room.as_str())
                .await?;
        }
        Ok(user)
    }

    /// The bot invites (rooms are usually invite-only), then the puppet joins. An
    /// invite refused because the puppet is already invited or joined is fine: the
    /// join that follows tells the truth.
    async fn join(&self, user: &UserId, room: &RoomId) -> Result<(), PuppetError> {
        if let Err(error) = self.homeserver.invite(room, user, &self.bot).await {
            if error.is_transient() {
                return Err(error.into());
            }
            tracing::debug!(puppet = %user, %room, %error, "invite refused; trying to join anyway");
        }
        self.homeserver.join(room.as_str(), user).await?;
        tracing::info!(puppet = %user, %room, "puppet joined");
        Ok(())
    }

    /// Makes sure `user` — the bot or a puppet — may post in `room`, when only its
    /// user ID is known (the archive outbox, after a restart or an outage that hid
    /// the talk's start). The display name is left to [`Puppets::ensure`], which
    /// the talker's next talk runs.
    pub async fn ensure_member(&self, user: &UserId, room: &RoomId) -> Result<(), PuppetError> {
        if user == self.bot {
            return Ok(());
        }
        let known = self.store.puppet(user.as_str()).await?;
        if known
            .as_ref()
            .is_some_and(|p| p.joined_rooms.contains(room.as_str()))
        {
            return Ok(());
        }
        if !known.as_ref().is_some_and(|p| p.profile.registered) {
            self.homeserver.register(user.localpart()).await?;
        }
        self.join(user, room).await?;
        // Without a stored profile there is nothing to attach the room to; `ensure`
        // stores both the next time this talker talks, and joining again is harmless.
        if known.is_some() {
            self.store
                .mark_puppet_joined(user.as_str(), room.as_str())
                .await?;
        }
        Ok(())
    }

    /// Forgets that the puppet is in `room` (it was kicked or left), so the next
    /// talk joins it again.
    pub async fn forget_membership(&self, user: &UserId, room: &RoomId) -> Result<(), PuppetError> {
        self.store
            .mark_puppet_left(user.as_str(), room.as_str())
            .await?;
        Ok(())
    }
}

//! Sends a room message as a bridge user, encrypted when the room is (issue 15).
//!
//! Every message event the bridge writes — voice messages, the bot's notices and
//! replies, its reactions — goes through [`RoomSender::send`]. It reads the room's
//! `m.room.encryption` from the homeserver right before sending, so a room that
//! turned encryption on gets nothing in plaintext from then on: the state is never
//! taken from a cache that a late transaction could leave stale. A room cannot
//! turn encryption off again (the spec forbids it), so a room found encrypted
//! stays encrypted for the life of the process without asking again.
//!
//! In an encrypted room the message is encrypted by the sender's own device (the
//! bot's or the talker's puppet's), and the room key goes to the devices of the
//! room's joined members who are not bridge users: nobody outside the room, and
//! none of the bridge's other puppets, can read it. When encrypting fails, the
//! message is not sent at all: there is no plaintext fallback.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use ruma::api::client::membership::joined_members;
use ruma::events::room::encryption::RoomEncryptionEventContent;
use ruma::events::room::history_visibility::{
    HistoryVisibility, RoomHistoryVisibilityEventContent,
};
use ruma::events::AnyMessageLikeEventContent;
use ruma::serde::Raw;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::Value;

use super::client::{Homeserver, MatrixError};
use super::crypto::{room_encryption_settings, CryptoDevices, CryptoError, EncryptionSettings};

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Matrix(#[from] MatrixError),
    /// The room is encrypted and the message could not be encrypted: it was
    /// not sent.
    #[error("cannot encrypt for {room}: {source}")]
    Crypto {
        room: OwnedRoomId,
        #[source]
        source: CryptoError,
    },
    #[error("room {room}: {reason}")]
    BadState { room: OwnedRoomId, reason: String },
}

impl SendError {
    /// Worth trying again soon: the homeserver was unreachable or busy.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Matrix(e) => e.is_transient(),
            Self::Crypto { source, .. } => source.is_transient(),
            Self::BadState { .. } => false,
        }
    }

    /// The homeserver's refusal, when that is what it was.
    pub fn matrix(&self) -> Option<&MatrixError> {
        match self {
            Self::Matrix(e) => Some(e),
            _ => None,
        }
    }
}

/// A sent message.
#[derive(Debug, Clone)]
pub struct Sent {
    pub event_id: OwnedEventId,
    pub encrypted: bool,
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct RoomSender {
    homeserver: Homeserver,
    crypto: CryptoDevices,
    /// Rooms seen encrypted (which they stay).
    encrypted: Arc<Mutex<HashSet<OwnedRoomId>>>,
}

impl std::fmt::Debug for RoomSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomSender").finish_non_exhaustive()
    }
}

impl RoomSender {
    pub fn new(homeserver: Homeserver, crypto: CryptoDevices) -> Self {
        Self {
            homeserver,
            crypto,
            encrypted: Arc::default(),
        }
    }

    pub fn homeserver(&self) -> &Homeserver {
        &self.homeserver
    }

    /// The bridge's bot, who sends notices.
    pub fn bot(&self) -> &UserId {
        self.crypto.users().bot()
    }

    /// The room's encryption settings now, read as `as_user` (who must be in the
    /// room); `None` for a room without encryption.
    pub async fn encryption(
        &self,
        room: &RoomId,
        as_user: &UserId,
    ) -> Result<Option<EncryptionSettings>, SendError> {
        let Some(content) = self
            .homeserver
            .state(room, "m.room.encryption", "", as_user)
            .await?
        else {
            if self.known_encrypted(room) {
                // The homeserver forgot what it said before: never plaintext.
                return Err(SendError::BadState {
                    room: room.to_owned(),
                    reason: "the homeserver no longer shows m.room.encryption in a room \
                             that was encrypted"
                        .into(),
                });
            }
            return Ok(None);
        };
        let encryption: RoomEncryptionEventContent =
            serde_json::from_value(content).map_err(|e| SendError::BadState {
                room: room.to_owned(),
                reason: format!("its m.room.encryption cannot be read: {e}"),
            })?;
        self.encrypted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(room.to_owned());
        let history = self
            .homeserver
            .state(room, "m.room.history_visibility", "", as_user)
            .await?
            .and_then(|c| serde_json::from_value::<RoomHistoryVisibilityEventContent>(c).ok())
            .map_or(HistoryVisibility::Shared, |c| c.history_visibility);
        Ok(Some(room_encryption_settings(&encryption, history)))
    }

    fn known_encrypted(&self, room: &RoomId) -> bool {
        self.encrypted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(room)
    }

    /// Sends `content` as an `event_type` message event of `sender`, encrypted
    /// when the room is. The homeserver deduplicates on (`sender`, `txn_id`), so
    /// a retry with the same `txn_id` cannot post twice, encrypted or not.
    pub async fn send(
        &self,
        room: &RoomId,
        sender: &UserId,
        event_type: &str,
        txn_id: &str,
        content: &Value,
    ) -> Result<Sent, SendError> {
        let settings = self.encryption(room, sender).await?;
        self.send_with(room, sender, settings, event_type, txn_id, content)
            .await
    }

    /// [`send`](Self::send) with the room's settings already read by the caller
    /// (`None`: plaintext).
    pub async fn send_with(
        &self,
        room: &RoomId,
        sender: &UserId,
        settings: Option<EncryptionSettings>,
        event_type: &str,
        txn_id: &str,
        content: &Value,
    ) -> Result<Sent, SendError> {
        let Some(settings) = settings else {
            let event_id = self
                .homeserver
                .send(room, event_type, txn_id, content, sender)
                .await?;
            return Ok(Sent {
                event_id,
                encrypted: false,
            });
        };
        let members = self.recipients(room, sender).await?;
        let crypto = |source| SendError::Crypto {
            room: room.to_owned(),
            source,
        };
        let raw: Raw<AnyMessageLikeEventContent> = serde_json::value::to_raw_value(content)
            .map(Raw::from_json)
            .map_err(|e| SendError::BadState {
                room: room.to_owned(),
                reason: format!("the message cannot be serialised: {e}"),
            })?;
        let encrypted = self
            .crypto
            .encrypt_for_room(sender, room, &members, settings, event_type, &raw)
            .await
            .map_err(crypto)?;
        let encrypted = serde_json::to_value(&encrypted).map_err(|e| SendError::BadState {
            room: room.to_owned(),
            reason: format!("the encrypted message cannot be serialised: {e}"),
        })?;
        let event_id = self
            .homeserver
            .send(room, "m.room.encrypted", txn_id, &encrypted, sender)
            .await?;
        metrics::counter!("walkie_crypto_encrypted_events_total").increment(1);
        Ok(Sent {
            event_id,
            encrypted: true,
        })
    }

    /// Who gets the room key: the joined members that are not bridge users.
    async fn recipients(
        &self,
        room: &RoomId,
        sender: &UserId,
    ) -> Result<Vec<OwnedUserId>, SendError> {
        let request = joined_members::v3::Request::new(room.to_owned());
        let response = self
            .homeserver
            .send_as(
                &format!("reading the members of {room}"),
                request,
                sender,
                None,
            )
            .await?;
        let users = self.crypto.users();
        Ok(response
            .joined
            .into_keys()
            .filter(|user| !users.is_bridge_user(user))
            .collect())
    }
}

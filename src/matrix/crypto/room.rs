//! Room events: encrypt as a bridge user's own device, decrypt with the bot's.
//! The room paths (outbox, inbound voice) call these; they decide who is in the
//! room and what the room's encryption settings are.

use std::future::Future;
use std::pin::Pin;

use matrix_sdk_common::deserialized_responses::{UnableToDecryptReason, VerificationState};
use matrix_sdk_crypto::types::events::room::encrypted::{
    EncryptedEvent, RoomEncryptedEventContent,
};
use matrix_sdk_crypto::{
    CollectStrategy, DecryptionSettings, EncryptionSettings, RoomEventDecryptionResult,
    TrustRequirement,
};
use ruma::api::client::to_device::send_event_to_device;
use ruma::events::room::encryption::RoomEncryptionEventContent;
use ruma::events::room::history_visibility::HistoryVisibility;
use ruma::events::{AnyMessageLikeEventContent, AnyTimelineEvent};
use ruma::serde::Raw;
use ruma::{OwnedDeviceId, OwnedUserId, RoomId, UserId};
use tracing::debug;

use super::device::CryptoDevice;
use super::devices::CryptoDevices;
use super::error::CryptoError;

/// The settings a room's `m.room.encryption` (rotation period and message count)
/// and history visibility give. Keys go to every device of the members passed
/// to [`CryptoDevices::encrypt_for_room`], verified or not: the people in the room
/// decide whom they trust, the bridge does not drop their unverified phones.
pub fn room_encryption_settings(
    encryption: &RoomEncryptionEventContent,
    history_visibility: HistoryVisibility,
) -> EncryptionSettings {
    EncryptionSettings::new(
        encryption.clone(),
        history_visibility,
        CollectStrategy::AllDevices,
    )
}

/// A decrypted room event.
#[derive(Clone, Debug)]
pub struct Decrypted {
    /// The event as if it had been sent in plaintext (type and content of the
    /// cleartext, envelope of the encrypted event).
    pub event: Raw<AnyTimelineEvent>,
    pub sender: OwnedUserId,
    /// The device that encrypted it, when the crate could tell.
    pub sender_device: Option<OwnedDeviceId>,
    /// The sender's device is signed by its owner's cross-signing identity and
    /// the session came from that device.
    pub verified: bool,
}

/// What became of an encrypted room event.
#[derive(Clone, Debug)]
pub enum DecryptOutcome {
    Decrypted(Box<Decrypted>),
    /// The room key has not arrived (yet): a [`super::CryptoEvent::RoomKeys`] with
    /// this session may bring it.
    MissingKey {
        session_id: Option<String>,
    },
    /// The sender's device refused to share the key (`m.room_key.withheld`), with
    /// its code (`m.unverified`, `m.blacklisted`, …).
    Withheld {
        session_id: Option<String>,
        code: String,
    },
    /// Cannot be decrypted, now or later.
    Failed {
        reason: String,
    },
}

impl CryptoDevices {
    /// Encrypts a room event as `sender`'s own device, for the devices of
    /// `members` only (the room's joined members, as the caller knows them: no
    /// one else gets the room key). Shares a new room key first when needed.
    ///
    /// Boxed, and Send checked here: the compiler cannot prove the crypto crate's
    /// futures Send for every lifetime when they sit deep inside a spawned task
    /// (rust-lang/rust#102211), but it can at this concrete point.
    pub fn encrypt_for_room<'a>(
        &'a self,
        sender: &'a UserId,
        room: &'a RoomId,
        members: &'a [OwnedUserId],
        settings: EncryptionSettings,
        event_type: &'a str,
        content: &'a Raw<AnyMessageLikeEventContent>,
    ) -> Pin<
        Box<dyn Future<Output = Result<Raw<RoomEncryptedEventContent>, CryptoError>> + Send + 'a>,
    > {
        Box::pin(async move {
            let device = self.device(sender).await?;
            device
                .encrypt_for_room(room, members, settings, event_type, content)
                .await
        })
    }

    /// Decrypts a room event with the bot's device: the bot is in every bridged
    /// room, so members share their room keys with it.
    pub async fn decrypt(
        &self,
        room: &RoomId,
        event: &Raw<AnyTimelineEvent>,
    ) -> Result<DecryptOutcome, CryptoError> {
        let bot = self.users().bot().to_owned();
        let device = self.device(&bot).await?;
        device.decrypt(room, event).await
    }
}

impl CryptoDevice {
    /// See [`CryptoDevices::encrypt_for_room`].
    pub async fn encrypt_for_room(
        &self,
        room: &RoomId,
        members: &[OwnedUserId],
        settings: EncryptionSettings,
        event_type: &str,
        content: &Raw<AnyMessageLikeEventContent>,
    ) -> Result<Raw<RoomEncryptedEventContent>, CryptoError> {
        // One share at a time: two would each make a session and fight over which
        // one the room uses.
        let _share = self.share.lock().await;
        // A Vec, not a closure making iterators: futures holding such a closure
        // across an await are not provably Send, and this runs in spawned tasks.
        let users: Vec<&UserId> = members.iter().map(|m| m.as_ref()).collect();
        self.machine
            .update_tracked_users(users.clone())
            .await
            .map_err(|e| self.store_error(e))?;
        // Sends the key queries for members not known yet (or changed).
        self.flush().await?;
        if let Some((id, claim)) = self
            .machine
            .get_missing_sessions(users.clone().into_iter())
            .await
            .map_err(|e| self.store_error(e))?
        {
            let response = self.send("claiming one-time keys", claim, true).await?;
            self.machine
                .mark_request_as_sent(&id, &response)
                .await
                .map_err(|e| self.olm_error(e))?;
        }
        let shares = self
            .machine
            .share_room_key(room, users.clone().into_iter(), settings)
            .await
            .map_err(|e| self.olm_error(e))?;
        for share in shares {
            let request = send_event_to_device::v3::Request::new_raw(
                share.event_type.clone(),
                share.txn_id.clone(),
                share.messages.clone(),
            );
            debug!(%room, devices = share.message_count(), "sharing the room key");
            let response = self.send("sharing the room key", request, true).await?;
            self.machine
                .mark_request_as_sent(&share.txn_id, &response)
                .await
                .map_err(|e| self.olm_error(e))?;
        }
        let encrypted = self
            .machine
            .encrypt_room_event_raw(room, event_type, content)
            .await
            .map_err(|source| CryptoError::Megolm {
                user: self.user_id().to_owned(),
                device: self.device_id().to_owned(),
                source,
            })?;
        Ok(encrypted.content)
    }

    /// Decrypts an `m.room.encrypted` event of `room` with this device's keys.
    pub async fn decrypt(
        &self,
        room: &RoomId,
        event: &Raw<AnyTimelineEvent>,
    ) -> Result<DecryptOutcome, CryptoError> {
        let encrypted: Raw<EncryptedEvent> = event.clone().cast_unchecked();
        // Any sender device: the bridge plays what room members send, as their
        // clients show it; the trust state is returned for the caller to weigh.
        let settings = DecryptionSettings {
            sender_device_trust_requirement: TrustRequirement::Untrusted,
        };
        let result = self
            .machine
            .try_decrypt_room_event(&encrypted, room, &settings)
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(match result {
            RoomEventDecryptionResult::Decrypted(decrypted) => {
                let info = &decrypted.encryption_info;
                DecryptOutcome::Decrypted(Box::new(Decrypted {
                    event: decrypted.event,
                    sender: info.sender.clone(),
                    sender_device: info.sender_device.clone(),
                    verified: matches!(info.verification_state, VerificationState::Verified),
                }))
            }
            RoomEventDecryptionResult::UnableToDecrypt(utd) => match utd.reason {
                UnableToDecryptReason::MissingMegolmSession {
                    withheld_code: Some(code),
                } => DecryptOutcome::Withheld {
                    session_id: utd.session_id,
                    code: code.as_str().to_owned(),
                },
                reason if reason.is_missing_room_key() => DecryptOutcome::MissingKey {
                    session_id: utd.session_id,
                },
                reason => DecryptOutcome::Failed {
                    reason: format!("{reason:?}"),
                },
            },
        })
    }
}

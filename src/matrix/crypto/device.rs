//! One device of one bridge user: its [`OlmMachine`] over its own store, and the
//! pump that carries the machine's requests to the homeserver.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use matrix_sdk_common::deserialized_responses::ProcessedToDeviceEvent;
use matrix_sdk_crypto::store::types::RoomKeyInfo;
use matrix_sdk_crypto::types::requests::{AnyOutgoingRequest, OutgoingRequest};
use matrix_sdk_crypto::{
    CryptoStoreError, DecryptionSettings, EncryptionSyncChanges, OlmError, OlmMachine,
    TrustRequirement,
};
use ruma::api::client::device::update_device;
use ruma::api::client::keys::get_keys;
use ruma::api::client::sync::sync_events::DeviceLists;
use ruma::api::client::to_device::send_event_to_device;
use ruma::events::AnyToDeviceEvent;
use ruma::serde::Raw;
use ruma::OneTimeKeyAlgorithm;
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UInt, UserId};
use std::collections::BTreeMap;
use tokio::sync::{Mutex, OnceCell};
use tracing::{debug, info, warn, Instrument};

use super::devices::{Context, CryptoEvent};
use super::error::CryptoError;
use super::{cross_signing, store};
use crate::matrix::client::MatrixError;

/// Store key set once the homeserver has the device (`PUT /devices/{id}`).
const DEVICE_CREATED: &str = "walkie.device_created";

/// Display name of every device the bridge makes, as clients list it.
const DEVICE_DISPLAY_NAME: &str = "walkie-bridge";

/// Rounds of "ask the machine, send what it wants" per flush. One round is the
/// normal case; a second follows a key query that turned up new devices.
const MAX_ROUNDS: usize = 8;

/// How often a flush that failed on the homeserver is tried again, and the first
/// pause (doubling).
const FLUSH_RETRIES: u32 = 6;
const FLUSH_BACKOFF: Duration = Duration::from_millis(500);

/// The device of one bridge user. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct CryptoDevice {
    user: OwnedUserId,
    device_id: OwnedDeviceId,
    pub(crate) machine: OlmMachine,
    ctx: Arc<Context>,
    /// One pump at a time: the machine's key claims and uploads must not overlap.
    pump: Mutex<()>,
    /// One room-key share at a time (see [`super::room`]).
    pub(crate) share: Mutex<()>,
    /// A background flush is queued and has not started yet.
    flush_queued: AtomicBool,
    /// No flush has succeeded since the device was opened, or the last one gave
    /// up: the next transaction queues one even if it brings nothing new.
    flush_owed: AtomicBool,
    /// Times a transaction queued a background flush (tests: an idle device
    /// must not ask its store for outgoing requests on every transaction).
    flushes_queued: AtomicU64,
    /// Set once the homeserver has the device, its keys and its cross-signing
    /// identity ([`Self::ready`]).
    ready: OnceCell<()>,
    /// Requests this device sent to the homeserver since it was opened.
    requests: AtomicU64,
    /// Transactions whose changes were handed to the machine since it was opened.
    changes_handed: AtomicU64,
    /// The key counts last handed to the machine (see [`Self::receive`]).
    last_key_counts: std::sync::Mutex<Option<KeyCounts>>,
}

/// One-time key counts and unused fallback key algorithms, as a transaction
/// reports them for a device.
type KeyCounts = (
    BTreeMap<OneTimeKeyAlgorithm, UInt>,
    Option<Vec<OneTimeKeyAlgorithm>>,
);

impl CryptoDevice {
    /// Opens `user`'s store and machine (a new account on first use). Local only:
    /// [`Self::ready`] brings the homeserver up to date.
    pub(crate) async fn open(ctx: Arc<Context>, user: &UserId) -> Result<Arc<Self>, CryptoError> {
        let opened = store::open(&ctx.store_dir, user, ctx.passphrase.as_ref()).await?;
        let machine = OlmMachine::with_store(user, &opened.device_id, opened.store, None)
            .await
            .map_err(|source| CryptoError::Store {
                user: user.to_owned(),
                source,
            })?;
        let device = Arc::new(Self {
            user: user.to_owned(),
            device_id: opened.device_id,
            machine,
            ctx,
            pump: Mutex::new(()),
            share: Mutex::new(()),
            flush_queued: AtomicBool::new(false),
            flush_owed: AtomicBool::new(true),
            flushes_queued: AtomicU64::new(0),
            ready: OnceCell::new(),
            requests: AtomicU64::new(0),
            changes_handed: AtomicU64::new(0),
            last_key_counts: std::sync::Mutex::new(None),
        });
        if opened.created {
            info!(user = %device.user, device = %device.device_id,
                ed25519 = %device.machine.identity_keys().ed25519, "new crypto device");
        } else {
            // Device-list changes go to open machines only: what this one missed
            // while closed is queried again (at its next flush).
            device
                .machine
                .mark_all_tracked_users_as_dirty()
                .await
                .map_err(|e| device.store_error(e))?;
        }
        Ok(device)
    }

    /// Makes sure the homeserver has the device (created once), its keys and its
    /// cross-signing identity (uploaded once), and sends what the machine has
    /// waiting. Done once per opening; a failure is tried again at the next call.
    pub async fn ready(&self) -> Result<(), CryptoError> {
        let span =
            tracing::info_span!("crypto_device", user = %self.user, device = %self.device_id);
        self.ready
            .get_or_try_init(|| {
                async {
                    self.register().await?;
                    self.flush().await?;
                    cross_signing::ensure(self).await
                }
                .instrument(span)
            })
            .await
            .map(|_| ())
    }

    /// Whether [`Self::ready`] has succeeded since the device was opened.
    pub fn is_ready(&self) -> bool {
        self.ready.initialized()
    }

    pub fn user_id(&self) -> &UserId {
        &self.user
    }

    pub fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    /// The device's Ed25519 and Curve25519 identity keys.
    pub fn identity_keys(&self) -> matrix_sdk_crypto::olm::IdentityKeys {
        self.machine.identity_keys()
    }

    /// The underlying machine, for what this module does not wrap.
    pub fn machine(&self) -> &OlmMachine {
        &self.machine
    }

    /// Requests sent to the homeserver since the device was opened.
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Transactions whose changes the machine was given (and wrote to its
    /// store) since the device was opened.
    pub fn changes_handed(&self) -> u64 {
        self.changes_handed.load(Ordering::Relaxed)
    }

    /// Background flushes queued since the device was opened.
    pub fn flushes_queued(&self) -> u64 {
        self.flushes_queued.load(Ordering::Relaxed)
    }

    /// Whether the last background flush gave up (or none has succeeded yet).
    pub(crate) fn flush_owed(&self) -> bool {
        self.flush_owed.load(Ordering::Acquire)
    }

    pub(crate) fn store_error(&self, source: CryptoStoreError) -> CryptoError {
        CryptoError::Store {
            user: self.user.clone(),
            source,
        }
    }

    pub(crate) fn olm_error(&self, source: OlmError) -> CryptoError {
        CryptoError::Olm {
            user: self.user.clone(),
            device: self.device_id.clone(),
            source,
        }
    }

    /// Creates the device on the homeserver once (MSC4190: `PUT /devices/{id}` by
    /// the appservice creates it). Not repeated on later opens: an update would
    /// tell every client sharing a room with the user that its devices changed.
    async fn register(&self) -> Result<(), CryptoError> {
        let store = self.machine.store();
        if store
            .get_custom_value(DEVICE_CREATED)
            .await
            .map_err(|e| self.store_error(e))?
            .is_some()
        {
            return Ok(());
        }
        let mut request = update_device::v3::Request::new(self.device_id.clone());
        request.display_name = Some(DEVICE_DISPLAY_NAME.to_owned());
        self.send("creating the device", request, false).await?;
        store
            .set_custom_value(DEVICE_CREATED, vec![1])
            .await
            .map_err(|e| self.store_error(e))?;
        info!("device created on the homeserver");
        Ok(())
    }

    /// Sends `request` as this user; `as_device`: also as this device (key
    /// uploads need it, device creation must not: the device does not exist yet).
    pub(crate) async fn send<R>(
        &self,
        what: &str,
        request: R,
        as_device: bool,
    ) -> Result<R::IncomingResponse, MatrixError>
    where
        R: ruma::api::OutgoingRequest<PathBuilder = ruma::api::path_builder::VersionHistory>,
        for<'a> R::Authentication: ruma::api::auth_scheme::AuthScheme<
            Input<'a> = ruma::api::auth_scheme::SendAccessToken<'a>,
        >,
    {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.ctx.stats.request(what);
        let device = as_device.then_some(&*self.device_id);
        self.ctx
            .homeserver
            .send_as(what, request, &self.user, device)
            .await
    }

    /// Sends whatever the machine has waiting (keys to upload, users to query,
    /// to-device messages) until it has nothing more. Returns how many requests
    /// went out.
    pub async fn flush(&self) -> Result<usize, CryptoError> {
        let _pump = self.pump.lock().await;
        let mut sent = 0;
        for _ in 0..MAX_ROUNDS {
            let requests = self
                .machine
                .outgoing_requests()
                .await
                .map_err(|e| self.store_error(e))?;
            if requests.is_empty() {
                break;
            }
            for request in &requests {
                self.send_outgoing(request).await?;
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// Queues a [`Self::flush`] in the background (at most one waiting), retried
    /// with backoff while the homeserver is unreachable.
    pub(crate) fn flush_later(self: &Arc<Self>) {
        self.flushes_queued.fetch_add(1, Ordering::Relaxed);
        if self.flush_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let device = Arc::clone(self);
        let span =
            tracing::debug_span!("crypto_flush", user = %self.user, device = %self.device_id);
        self.ctx.tasks.spawn(
            async move {
                let mut pause = FLUSH_BACKOFF;
                for attempt in 1..=FLUSH_RETRIES {
                    device.flush_queued.store(false, Ordering::Release);
                    // A device opened for a transaction is made ready here, off
                    // the transaction's path.
                    let flushed = match device.ready().await {
                        Ok(()) => device.flush().await,
                        Err(error) => Err(error),
                    };
                    match flushed {
                        Ok(sent) => {
                            if sent > 0 {
                                debug!(sent, "requests sent");
                            }
                            device.flush_owed.store(false, Ordering::Release);
                            return;
                        }
                        Err(error) if error.is_transient() && attempt < FLUSH_RETRIES => {
                            debug!(%error, attempt, "flush failed; trying again");
                            tokio::select! {
                                () = device.ctx.stop.cancelled() => return,
                                () = tokio::time::sleep(pause) => {}
                            }
                            pause *= 2;
                        }
                        Err(error) => {
                            warn!(%error, "cannot send the device's key requests; the next transaction tries again");
                            device.flush_owed.store(true, Ordering::Release);
                            return;
                        }
                    }
                }
            }
            .instrument(span),
        );
    }

    /// Sends one request of the machine's and hands the answer back to it.
    pub(crate) async fn send_outgoing(&self, request: &OutgoingRequest) -> Result<(), CryptoError> {
        let id = request.request_id();
        let marked = match request.request() {
            AnyOutgoingRequest::KeysUpload(upload) => {
                let response = self.send("uploading keys", upload.clone(), true).await?;
                let counts = response.one_time_key_counts.clone();
                let marked = self.machine.mark_request_as_sent(id, &response).await;
                let count = counts
                    .get(&OneTimeKeyAlgorithm::SignedCurve25519)
                    .map_or(0, |c| u64::from(*c));
                self.ctx.emit(CryptoEvent::KeysUploaded {
                    user: self.user.clone(),
                    device: self.device_id.clone(),
                    one_time_keys: count,
                });
                marked
            }
            AnyOutgoingRequest::KeysQuery(query) => {
                let mut request = get_keys::v3::Request::new();
                request.device_keys = query.device_keys.clone();
                request.timeout = query.timeout;
                let response = self.send("querying keys", request, true).await?;
                self.machine.mark_request_as_sent(id, &response).await
            }
            AnyOutgoingRequest::KeysClaim(claim) => {
                let response = self
                    .send("claiming one-time keys", claim.clone(), true)
                    .await?;
                self.machine.mark_request_as_sent(id, &response).await
            }
            AnyOutgoingRequest::ToDeviceRequest(to_device) => {
                let request = send_event_to_device::v3::Request::new_raw(
                    to_device.event_type.clone(),
                    to_device.txn_id.clone(),
                    to_device.messages.clone(),
                );
                let response = self
                    .send("sending to-device messages", request, true)
                    .await?;
                self.machine.mark_request_as_sent(id, &response).await
            }
            AnyOutgoingRequest::SignatureUpload(signatures) => {
                let response = self
                    .send("uploading signatures", signatures.clone(), true)
                    .await?;
                self.machine.mark_request_as_sent(id, &response).await
            }
            AnyOutgoingRequest::RoomMessage(_) => {
                // In-room verification: the bridge starts none and answers none, so
                // the machine has no reason to ask. Not sent: a puppet does not
                // post verification events.
                warn!("the crypto machine asked for an in-room message; not sent");
                return Ok(());
            }
        };
        marked.map_err(|e| self.olm_error(e))
    }

    /// Hands the machine what a transaction brought for this device. Returns the
    /// room keys that arrived, or `None` when the transaction brought nothing the
    /// machine does not have already (nothing handed, so nothing new to send).
    pub(crate) async fn receive(
        &self,
        to_device: Vec<Raw<AnyToDeviceEvent>>,
        device_lists: &DeviceLists,
        one_time_keys: &BTreeMap<OneTimeKeyAlgorithm, UInt>,
        unused_fallback_keys: Option<&[OneTimeKeyAlgorithm]>,
    ) -> Result<Option<Vec<RoomKeyInfo>>, CryptoError> {
        let messages = to_device.len();
        // Synapse repeats every bridge device's key counts in every transaction.
        // Handing the machine the same counts again changes nothing, but it still
        // writes a store transaction on tokio's blocking pool: at two voice messages
        // a second that was most of the bridge's blocking work, and each rare
        // overlap of two such writes left the pool one thread (and its allocator
        // cache) bigger for good (issue 14, the soak's RSS steps).
        let key_counts: KeyCounts = (
            one_time_keys.clone(),
            unused_fallback_keys.map(<[OneTimeKeyAlgorithm]>::to_vec),
        );
        let lists_changed = !device_lists.changed.is_empty() || !device_lists.left.is_empty();
        let unchanged = messages == 0
            && !lists_changed
            && self
                .last_key_counts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .as_ref()
                == Some(&key_counts);
        if unchanged {
            metrics::counter!("walkie_crypto_sync_changes_total", "result" => "unchanged")
                .increment(1);
            return Ok(None);
        }
        let changes = EncryptionSyncChanges {
            to_device_events: to_device,
            changed_devices: device_lists,
            one_time_keys_counts: one_time_keys,
            unused_fallback_keys,
            next_batch_token: None,
        };
        // Room keys are taken from any device: whether a sender is trusted is for
        // the room event to show, not for the key to be refused.
        let settings = DecryptionSettings {
            sender_device_trust_requirement: TrustRequirement::Untrusted,
        };
        let (events, room_keys) = self
            .machine
            .receive_sync_changes(changes, &settings)
            .await
            .map_err(|e| self.olm_error(e))?;
        self.changes_handed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("walkie_crypto_sync_changes_total", "result" => "handed").increment(1);
        *self
            .last_key_counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(key_counts);
        for event in &events {
            let event_type = event
                .to_raw()
                .get_field::<String>("type")
                .ok()
                .flatten()
                .unwrap_or_default();
            let outcome = match event {
                ProcessedToDeviceEvent::Decrypted { .. } => "decrypted",
                ProcessedToDeviceEvent::UnableToDecrypt { .. } => "undecryptable",
                ProcessedToDeviceEvent::PlainText(_) => "plaintext",
                ProcessedToDeviceEvent::Invalid(_) => "invalid",
            };
            debug!(%event_type, outcome, "to-device message");
            self.ctx.stats.to_device_outcome(outcome);
            self.ctx.emit(CryptoEvent::ToDevice {
                user: self.user.clone(),
                device: self.device_id.clone(),
                event_type,
                outcome,
            });
        }
        if messages > 0 || !room_keys.is_empty() {
            debug!(
                messages,
                room_keys = room_keys.len(),
                "to-device messages handled"
            );
        }
        if !room_keys.is_empty() {
            self.ctx.emit(CryptoEvent::RoomKeys {
                user: self.user.clone(),
                keys: room_keys.clone(),
            });
        }
        Ok(Some(room_keys))
    }
}

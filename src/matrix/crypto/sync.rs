//! What appservice transactions carry for the devices — to-device messages
//! (MSC2409), device-list changes, one-time-key counts and unused fallback keys
//! (MSC3202) — routed to the machine each part is for.

use std::collections::{BTreeMap, BTreeSet};

use ruma::api::client::sync::sync_events::DeviceLists;
use ruma::events::AnyToDeviceEvent;
use ruma::serde::Raw;
use ruma::OneTimeKeyAlgorithm;
use ruma::{OwnedDeviceId, OwnedUserId, UInt};
use tracing::{debug, warn};

use super::devices::CryptoDevices;

/// The one-time keys matrix-sdk-crypto keeps on the homeserver per device (half
/// of vodozemac's 100, `PUBLIC_MAX_ONE_TIME_KEYS`). Fewer reported for a closed
/// device means it must open and upload more.
const ONE_TIME_KEY_TARGET: u64 = 50;

/// A to-device message for one device (MSC2409 adds `to_user_id` and
/// `to_device_id` to each).
#[derive(Clone, Debug)]
pub struct ToDeviceMessage {
    pub user: OwnedUserId,
    pub device: OwnedDeviceId,
    pub event: Raw<AnyToDeviceEvent>,
}

/// One-time key counts per user and device: algorithm → keys left.
pub type KeyCounts =
    BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, BTreeMap<OneTimeKeyAlgorithm, UInt>>>;
/// Unused fallback key algorithms per user and device.
pub type FallbackKeys = BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Vec<OneTimeKeyAlgorithm>>>;

/// What one transaction carries for the bridge's devices.
#[derive(Clone, Debug, Default)]
pub struct DeviceUpdates {
    pub to_device: Vec<ToDeviceMessage>,
    pub device_lists: DeviceLists,
    /// Synapse lists every device of every user it thinks interested — the ones a
    /// bridge made and others (its cross-signing keys show up as devices too).
    /// A device listed without an algorithm has none left.
    pub one_time_key_counts: KeyCounts,
    pub unused_fallback_keys: FallbackKeys,
}

impl DeviceUpdates {
    pub fn is_empty(&self) -> bool {
        self.to_device.is_empty()
            && self.device_lists.changed.is_empty()
            && self.device_lists.left.is_empty()
            && self.one_time_key_counts.is_empty()
            && self.unused_fallback_keys.is_empty()
    }
}

/// What [`CryptoDevices::receive`] did with a transaction's part.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiveReport {
    /// Machines that were given something.
    pub devices: usize,
    /// Machines opened for it.
    pub opened: usize,
    /// To-device messages for a device that is not (or no longer) ours.
    pub stale: usize,
    /// Machines that could not be opened or failed to take it (logged).
    pub failed: usize,
}

impl CryptoDevices {
    /// Hands each device its part of a transaction and queues the uploads that
    /// follow (new one-time keys, key queries) in the background.
    ///
    /// Device-list changes go to every open machine; a closed one re-queries its
    /// users when it opens. A closed device is opened only for a to-device message
    /// or when its key counts say it must upload keys, so the counts Synapse sends
    /// for every bridge user in a room do not open every machine.
    ///
    /// A device that cannot be opened or fails is logged and counted; the rest of
    /// the transaction goes on (one broken store must not stop the bridge).
    pub async fn receive(&self, updates: DeviceUpdates) -> ReceiveReport {
        let mut report = ReceiveReport::default();
        let DeviceUpdates {
            to_device,
            device_lists,
            one_time_key_counts,
            unused_fallback_keys,
        } = updates;

        let mut messages: BTreeMap<OwnedUserId, Vec<ToDeviceMessage>> = BTreeMap::new();
        for message in to_device {
            if self.users().is_bridge_user(&message.user) {
                messages
                    .entry(message.user.clone())
                    .or_default()
                    .push(message);
            } else {
                debug!(user = %message.user, "to-device message for a user not ours; dropped");
                report.stale += 1;
            }
        }

        let mut users: BTreeSet<OwnedUserId> = messages.keys().cloned().collect();
        users.extend(
            one_time_key_counts
                .keys()
                .chain(unused_fallback_keys.keys())
                .filter(|user| self.users().is_bridge_user(user))
                .cloned(),
        );
        let lists_changed = !device_lists.changed.is_empty() || !device_lists.left.is_empty();
        if lists_changed {
            users.extend(
                self.open_devices()
                    .iter()
                    .map(|device| device.user_id().to_owned()),
            );
        }

        let empty_counts = BTreeMap::new();
        for user in users {
            let user_messages = messages.remove(&user).unwrap_or_default();
            let device = match self.open_device(&user) {
                Some(device) => device,
                None => {
                    let Some(known) = self.known_device(&user) else {
                        // No store: nothing of ours to give this to.
                        report.stale += user_messages.len();
                        continue;
                    };
                    let counts = one_time_key_counts.get(&user).and_then(|d| d.get(&known));
                    let fallback = unused_fallback_keys.get(&user).and_then(|d| d.get(&known));
                    let wanted = user_messages.iter().any(|m| m.device == known)
                        || needs_keys(counts, fallback);
                    if !wanted {
                        report.stale += user_messages.len();
                        continue;
                    }
                    // Local only: the transaction does not wait for the homeserver
                    // (the flush below catches the device up in the background).
                    match self.open(&user).await {
                        Ok(device) => {
                            report.opened += 1;
                            device
                        }
                        Err(error) => {
                            warn!(%user, %error, "cannot open the crypto device for a transaction");
                            self.stats().open_failure();
                            report.failed += 1;
                            continue;
                        }
                    }
                }
            };
            let device_id = device.device_id().to_owned();
            let (mine, stale): (Vec<_>, Vec<_>) = user_messages
                .into_iter()
                .partition(|m| m.device == device_id);
            if !stale.is_empty() {
                debug!(%user, stale = stale.len(), "to-device messages for another device of a bridge user; dropped");
                report.stale += stale.len();
            }
            let counts = one_time_key_counts
                .get(&user)
                .and_then(|d| d.get(&device_id));
            // Listed without an algorithm means none left (Synapse leaves zero
            // counts out); the machine only acts on a count it is given.
            let counts_or_zero;
            let counts = match counts {
                Some(c) if !c.contains_key(&OneTimeKeyAlgorithm::SignedCurve25519) => {
                    let mut c = c.clone();
                    c.insert(OneTimeKeyAlgorithm::SignedCurve25519, UInt::MIN);
                    counts_or_zero = c;
                    &counts_or_zero
                }
                Some(c) => c,
                None => &empty_counts,
            };
            let fallback = unused_fallback_keys
                .get(&user)
                .and_then(|d| d.get(&device_id))
                .map(Vec::as_slice);
            let events = mine.into_iter().map(|m| m.event).collect();
            match device
                .receive(events, &device_lists, counts, fallback)
                .await
            {
                Ok(handed) => {
                    report.devices += 1;
                    // Nothing handed, nothing new to send: asking the store for
                    // outgoing requests on every transaction was ~9 store reads a
                    // second on tokio's blocking pool in the soak, whose rare
                    // overlaps grew the pool for good (issue 14, the RSS steps).
                    if handed.is_some() || device.flush_owed() {
                        device.flush_later();
                    }
                }
                Err(error) => {
                    warn!(%user, %error, "the crypto device could not take a transaction");
                    report.failed += 1;
                }
            }
        }
        report
    }
}

/// Whether counts reported for a closed device say it must upload keys.
fn needs_keys(
    counts: Option<&BTreeMap<OneTimeKeyAlgorithm, UInt>>,
    fallback: Option<&Vec<OneTimeKeyAlgorithm>>,
) -> bool {
    let low = counts.is_some_and(|c| {
        c.get(&OneTimeKeyAlgorithm::SignedCurve25519)
            .map_or(0, |n| u64::from(*n))
            < ONE_TIME_KEY_TARGET
    });
    let fallback_used =
        fallback.is_some_and(|f| !f.contains(&OneTimeKeyAlgorithm::SignedCurve25519));
    low || fallback_used
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(n: Option<u32>) -> BTreeMap<OneTimeKeyAlgorithm, UInt> {
        n.map(|n| (OneTimeKeyAlgorithm::SignedCurve25519, UInt::from(n)))
            .into_iter()
            .collect()
    }

    #[test]
    fn a_full_device_stays_closed() {
        let fallback = vec![OneTimeKeyAlgorithm::SignedCurve25519];
        assert!(!needs_keys(Some(&counts(Some(50))), Some(&fallback)));
        assert!(!needs_keys(None, None));
    }

    #[test]
    fn claimed_keys_or_a_used_fallback_open_the_device() {
        let fallback = vec![OneTimeKeyAlgorithm::SignedCurve25519];
        assert!(needs_keys(Some(&counts(Some(49))), Some(&fallback)));
        // Synapse leaves an algorithm with no keys out.
        assert!(needs_keys(Some(&counts(None)), None));
        assert!(needs_keys(Some(&counts(Some(50))), Some(&Vec::new())));
    }
}

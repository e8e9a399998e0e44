//! The parts of a transaction meant for the bridge's devices: to-device messages
//! (MSC2409) and device-list changes, one-time-key counts and unused fallback key
//! types (MSC3202), as Synapse 1.163 sends them (`synapse/appservice/api.py`,
//! `push_bulk`).
//!
//! Each part stays raw JSON in [`DeviceParts`] and is read here on its own, down
//! to one to-device message or one user's counts, so a malformed piece is dropped
//! (logged at most every few seconds, counted) without costing the rest — nor the
//! transaction's room events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ruma::api::client::sync::sync_events::DeviceLists;
use ruma::events::AnyToDeviceEvent;
use ruma::serde::Raw;
use ruma::OneTimeKeyAlgorithm;
use ruma::{OwnedDeviceId, OwnedUserId, UInt};
use serde::Deserialize;
use tracing::warn;

use crate::matrix::crypto::{DeviceUpdates, ToDeviceMessage};
use crate::matrix::ids::{check_len, parse_user_id};

/// The device parts of a transaction body, unread.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeviceParts {
    /// MSC2409 (MSC4203): Synapse sends only the unstable name.
    #[serde(default, rename = "de.sorunome.msc2409.to_device")]
    pub to_device: Option<Raw<Vec<Raw<AnyToDeviceEvent>>>>,
    #[serde(default, rename = "org.matrix.msc3202.device_lists")]
    pub device_lists: Option<Raw<DeviceLists>>,
    /// MSC3202's name; Synapse also sends the same map as
    /// `device_one_time_key_counts`, an older spelling, which is not read twice.
    #[serde(default, rename = "org.matrix.msc3202.device_one_time_keys_count")]
    pub one_time_keys_count: Option<Raw<BTreeMap<String, Raw<DeviceKeyCounts>>>>,
    #[serde(default, rename = "org.matrix.msc3202.device_one_time_key_counts")]
    pub one_time_key_counts: Option<Raw<BTreeMap<String, Raw<DeviceKeyCounts>>>>,
    #[serde(
        default,
        rename = "org.matrix.msc3202.device_unused_fallback_key_types"
    )]
    pub unused_fallback_key_types: Option<Raw<BTreeMap<String, Raw<DeviceFallbackKeys>>>>,
}

pub(crate) type DeviceKeyCounts = BTreeMap<OwnedDeviceId, BTreeMap<OneTimeKeyAlgorithm, UInt>>;
pub(crate) type DeviceFallbackKeys = BTreeMap<OwnedDeviceId, Vec<OneTimeKeyAlgorithm>>;

/// The MSC2409 fields each to-device message carries besides the event.
#[derive(Deserialize)]
struct ToDeviceEnvelope {
    to_user_id: String,
    to_device_id: OwnedDeviceId,
    #[serde(rename = "type")]
    _event_type: String,
    #[serde(rename = "sender")]
    _sender: OwnedUserId,
}

impl DeviceParts {
    pub fn is_empty(&self) -> bool {
        self.to_device.is_none()
            && self.device_lists.is_none()
            && self.one_time_keys_count.is_none()
            && self.one_time_key_counts.is_none()
            && self.unused_fallback_key_types.is_none()
    }

    /// Reads every part; `bad` hears of each piece dropped.
    pub fn read(self, bad: &BadInput) -> DeviceUpdates {
        let mut updates = DeviceUpdates::default();
        if let Some(raw) = self.to_device {
            match raw.deserialize() {
                Ok(messages) => {
                    for (index, event) in messages.into_iter().enumerate() {
                        match to_device_message(event) {
                            Ok(message) => updates.to_device.push(message),
                            Err(error) => bad.report("to_device", index, &error),
                        }
                    }
                }
                Err(error) => bad.report("to_device", 0, &error.to_string()),
            }
        }
        if let Some(raw) = self.device_lists {
            match raw.deserialize() {
                Ok(lists) if lists_ok(&lists) => updates.device_lists = lists,
                Ok(_) => bad.report("device_lists", 0, "a user ID is longer than 255 bytes"),
                Err(error) => bad.report("device_lists", 0, &error.to_string()),
            }
        }
        if let Some(raw) = self.one_time_keys_count.or(self.one_time_key_counts) {
            updates.one_time_key_counts = per_user(raw, "one_time_keys_count", bad);
        }
        if let Some(raw) = self.unused_fallback_key_types {
            updates.unused_fallback_keys = per_user(raw, "unused_fallback_key_types", bad);
        }
        updates
    }
}

fn to_device_message(event: Raw<AnyToDeviceEvent>) -> Result<ToDeviceMessage, String> {
    let envelope: ToDeviceEnvelope = event
        .deserialize_as_unchecked()
        .map_err(|e| e.to_string())?;
    let user = parse_user_id(&envelope.to_user_id).map_err(|e| e.to_string())?;
    check_len(envelope.to_device_id.as_str()).map_err(|e| e.to_string())?;
    Ok(ToDeviceMessage {
        user,
        device: envelope.to_device_id,
        event,
    })
}

fn lists_ok(lists: &DeviceLists) -> bool {
    lists
        .changed
        .iter()
        .chain(&lists.left)
        .all(|user| check_len(user.as_str()).is_ok())
}

/// A map keyed by user ID, read one user at a time.
fn per_user<T: for<'de> Deserialize<'de>>(
    raw: Raw<BTreeMap<String, Raw<T>>>,
    part: &'static str,
    bad: &BadInput,
) -> BTreeMap<OwnedUserId, T> {
    let users = match raw.deserialize() {
        Ok(users) => users,
        Err(error) => {
            bad.report(part, 0, &error.to_string());
            return BTreeMap::new();
        }
    };
    let mut out = BTreeMap::new();
    for (index, (user, value)) in users.into_iter().enumerate() {
        let read = parse_user_id(&user)
            .map_err(|e| format!("{user:?}: {e}"))
            .and_then(|user| {
                value
                    .deserialize()
                    .map(|value| (user, value))
                    .map_err(|e| e.to_string())
            });
        match read {
            Ok((user, value)) => {
                out.insert(user, value);
            }
            Err(error) => bad.report(part, index, &error),
        }
    }
    out
}

/// How often malformed device parts are logged at most; the rest are counted.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Counts malformed pieces and logs them, at most one line per [`LOG_EVERY`] (a
/// broken homeserver must not flood the journal), saying how many went unlogged.
#[derive(Debug, Default)]
pub struct BadInput {
    count: AtomicU64,
    log: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    last: Option<Instant>,
    suppressed: u64,
}

impl BadInput {
    /// Pieces dropped so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn report(&self, part: &'static str, index: usize, error: &str) {
        self.count.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("walkie_appservice_bad_device_parts_total", "part" => part).increment(1);
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.last.is_some_and(|last| last.elapsed() < LOG_EVERY) {
            log.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut log.suppressed);
        log.last = Some(Instant::now());
        drop(log);
        warn!(
            part,
            index, error, suppressed, "dropping a malformed device part of a transaction"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parts(body: serde_json::Value) -> DeviceParts {
        serde_json::from_value(body).expect("a body")
    }

    #[test]
    fn synapse_shaped_parts_are_read() {
        // As Synapse 1.163.2 sent them to a test appservice (keys and ids shortened).
        let body = json!({
            "de.sorunome.msc2409.to_device": [{
                "content": {"hello": 3}, "sender": "@dave:probe.test",
                "to_device_id": "PDEV1", "to_user_id": "@p_alice:probe.test", "type": "m.test"
            }],
            "org.matrix.msc3202.device_lists": {"changed": ["@p_alice:probe.test"], "left": []},
            "org.matrix.msc3202.device_one_time_keys_count": {
                "@bot:probe.test": {"BDEV1": {}, "5oCYVXum7kEJYmJmnugz0hthhdFVvxWFULC9+NGE/N0": {}},
                "@p_alice:probe.test": {"PDEV1": {"signed_curve25519": 1}}
            },
            "org.matrix.msc3202.device_one_time_key_counts": {
                "@p_alice:probe.test": {"PDEV1": {"signed_curve25519": 1}}
            },
            "org.matrix.msc3202.device_unused_fallback_key_types": {
                "@p_alice:probe.test": {"PDEV1": ["signed_curve25519"]}
            }
        });
        let bad = BadInput::default();
        let updates = parts(body).read(&bad);
        assert_eq!(bad.count(), 0);
        assert_eq!(updates.to_device.len(), 1);
        assert_eq!(updates.to_device[0].user, "@p_alice:probe.test");
        assert_eq!(updates.to_device[0].device, "PDEV1");
        assert_eq!(updates.device_lists.changed.len(), 1);
        let alice: OwnedUserId = "@p_alice:probe.test".try_into().unwrap();
        let bot: OwnedUserId = "@bot:probe.test".try_into().unwrap();
        let pdev: OwnedDeviceId = "PDEV1".into();
        assert_eq!(
            updates.one_time_key_counts[&alice][&pdev][&OneTimeKeyAlgorithm::SignedCurve25519],
            UInt::from(1u32)
        );
        assert!(updates.one_time_key_counts[&bot][&OwnedDeviceId::from("BDEV1")].is_empty());
        assert_eq!(
            updates.unused_fallback_keys[&alice][&pdev],
            [OneTimeKeyAlgorithm::SignedCurve25519]
        );
    }

    #[test]
    fn a_bad_piece_costs_only_itself() {
        let body = json!({
            "de.sorunome.msc2409.to_device": [
                {"content": {}, "sender": "@a:x", "type": "m.test"},
                {"content": {}, "sender": "@a:x", "type": "m.test", "to_user_id": "nope", "to_device_id": "D"},
                {"content": {}, "sender": "@a:x", "type": "m.test", "to_user_id": "@b:x", "to_device_id": "D"}
            ],
            "org.matrix.msc3202.device_lists": {"changed": 5},
            "org.matrix.msc3202.device_one_time_keys_count": {
                "not a user": {"D": {"signed_curve25519": 1}},
                "@b:x": {"D": {"signed_curve25519": -1}},
                "@c:x": {"D": {"signed_curve25519": 7}}
            },
            "org.matrix.msc3202.device_unused_fallback_key_types": []
        });
        let bad = BadInput::default();
        let updates = parts(body).read(&bad);
        assert_eq!(updates.to_device.len(), 1);
        assert_eq!(updates.to_device[0].user, "@b:x");
        assert!(updates.device_lists.changed.is_empty());
        assert_eq!(updates.one_time_key_counts.len(), 1);
        assert!(updates.unused_fallback_keys.is_empty());
        // Two to-device messages, the lists, two users' counts, the fallback map.
        assert_eq!(bad.count(), 6);
    }

    #[test]
    fn over_long_ids_are_refused() {
        let long = format!("@{}:x", "a".repeat(260));
        let body = json!({
            "de.sorunome.msc2409.to_device": [
                {"content": {}, "sender": "@a:x", "type": "m.test", "to_user_id": long, "to_device_id": "D"}
            ],
            "org.matrix.msc3202.device_lists": {"changed": [long], "left": []},
        });
        let bad = BadInput::default();
        let updates = parts(body).read(&bad);
        assert!(updates.is_empty());
        assert_eq!(bad.count(), 2);
    }

    #[test]
    fn no_parts_is_empty() {
        let p = parts(json!({}));
        assert!(p.is_empty());
        assert!(p.read(&BadInput::default()).is_empty());
    }
}

//! End-to-end encryption (issue 15): one matrix-sdk-crypto [`OlmMachine`] per
//! Matrix user of the bridge — the bot and every puppet that needs one — each with
//! its own device, identity keys, one-time keys and cross-signing identity. No
//! Olm or Megolm is written here: the crate does the cryptography, this module
//! moves its requests to the homeserver and its inputs out of appservice
//! transactions.
//!
//! # Devices
//!
//! The appservice creates each device itself (`PUT /devices/{id}`, MSC4190) and
//! speaks for it with identity assertion (`?user_id=…&device_id=…`): no password,
//! no login, no access token is stored. The device id is chosen at random the
//! first time and lives in the device's own crypto store (`<store_dir>/<localpart>/`),
//! so a restart reopens the same device, and a lost store makes a new device rather
//! than new keys under an old id (which clients would refuse).
//!
//! # Inputs
//!
//! To-device messages (MSC2409), device-list changes and one-time-key counts
//! (MSC3202) arrive in the appservice transactions and are routed to the device
//! they are for ([`CryptoDevices::receive`]); nothing polls, so an idle device
//! makes no request at all.
//!
//! # Open machines
//!
//! A machine is opened on first use and stays open while it is used; one unused for
//! [`DeviceOptions::idle_close`] (and held by nobody) is closed. A closed device
//! misses device-list changes, so on reopening it re-queries every user it tracks.
//! Transactions open a closed device only when they carry something for it: a
//! to-device message, or key counts that say it must upload keys.

mod cross_signing;
mod device;
mod devices;
mod error;
mod room;
mod store;
mod sync;

pub use device::CryptoDevice;
pub use devices::{CryptoDevices, CryptoEvent, CryptoStats, DeviceOptions};
pub use error::CryptoError;
pub use room::{room_encryption_settings, DecryptOutcome, Decrypted};
pub use sync::{DeviceUpdates, FallbackKeys, KeyCounts, ReceiveReport, ToDeviceMessage};

pub use matrix_sdk_crypto::EncryptionSettings;

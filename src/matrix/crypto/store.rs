//! One SQLite crypto store per device: `<store_dir>/<localpart>/`, with the
//! `matrix-sdk-crypto.sqlite3` of matrix-sdk-sqlite and a small `device.json` that
//! names the device without opening the store.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use matrix_sdk_crypto::store::CryptoStore;
use matrix_sdk_sqlite::{SqliteCryptoStore, SqliteStoreConfig};
use rand::Rng;
use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use super::error::CryptoError;
use crate::config::Secret;

/// Every device id the bridge makes starts so, which tells them apart from a
/// person's devices in a device list.
pub(crate) const DEVICE_ID_PREFIX: &str = "WALKIE";

/// Connections per store. matrix-sdk-sqlite wants at least two (one writer, one
/// reader); its default is four per physical CPU, which for hundreds of puppets
/// would be hundreds of idle file handles and page caches.
const POOL_SIZE: usize = 2;

/// SQLite page cache per connection, bytes. A device's store is small (a few
/// hundred kB for a puppet that talks in a few rooms).
const CACHE_BYTES: u32 = 256 * 1024;

/// The name of a user's store directory: the localpart when it is a safe file
/// name, else `+` and its hex. A plain name never contains `+`, so the two forms
/// never collide, and `/` or a leading `.` never reach the file system.
pub(crate) fn dir_name(localpart: &str) -> String {
    let plain = !localpart.is_empty()
        && !localpart.starts_with('.')
        && localpart
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-'));
    if plain {
        localpart.to_owned()
    } else {
        let mut name = String::with_capacity(1 + 2 * localpart.len());
        name.push('+');
        for byte in localpart.bytes() {
            name.push_str(&format!("{byte:02x}"));
        }
        name
    }
}

pub(crate) fn device_dir(store_dir: &Path, user: &UserId) -> Result<PathBuf, CryptoError> {
    let name = dir_name(user.localpart());
    // NAME_MAX on Linux file systems.
    if name.len() > 255 {
        return Err(CryptoError::DirNameTooLong {
            user: user.to_owned(),
            len: name.len(),
        });
    }
    Ok(store_dir.join(name))
}

/// A new device id: the prefix and ten random capitals, the shape Synapse gives
/// its own devices.
pub(crate) fn new_device_id() -> OwnedDeviceId {
    let mut rng = rand::rng();
    let suffix: String = (0..10)
        .map(|_| char::from(b'A' + rng.random_range(0..26u8)))
        .collect();
    OwnedDeviceId::from(format!("{DEVICE_ID_PREFIX}{suffix}"))
}

/// What `device.json` holds: a copy of what the store knows, so a transaction can
/// tell whether a device id is ours without opening the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeviceFile {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
}

const DEVICE_FILE: &str = "device.json";

pub(crate) fn read_device_file(dir: &Path) -> Option<DeviceFile> {
    let text = std::fs::read(dir.join(DEVICE_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn write_device_file(dir: &Path, file: &DeviceFile) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!("{DEVICE_FILE}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, dir.join(DEVICE_FILE))
}

/// Creates `dir` (and its parents) readable by the bridge's user only.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), CryptoError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CryptoError::StoreDir {
            path: dir.to_owned(),
            source,
        })
}

/// An opened store and the device it holds.
pub(crate) struct OpenedStore {
    pub store: SqliteCryptoStore,
    pub device_id: OwnedDeviceId,
    /// No account was in the store: the device is new.
    pub created: bool,
}

/// Opens (or creates) the store of `user` under `store_dir`. The device id comes
/// from the account in the store; a store without one gets a new id.
pub(crate) async fn open(
    store_dir: &Path,
    user: &UserId,
    passphrase: Option<&Secret>,
) -> Result<OpenedStore, CryptoError> {
    let dir = device_dir(store_dir, user)?;
    create_private_dir(&dir)?;
    let config = SqliteStoreConfig::new(&dir)
        .pool_max_size(POOL_SIZE)
        .cache_size(CACHE_BYTES)
        .journal_size_limit(1024 * 1024)
        .passphrase(passphrase.map(Secret::expose));
    let store = SqliteCryptoStore::open_with_config(&config)
        .await
        .map_err(|source| CryptoError::OpenStore {
            user: user.to_owned(),
            path: dir.clone(),
            source,
        })?;
    let account = store
        .load_account()
        .await
        .map_err(|source| CryptoError::Store {
            user: user.to_owned(),
            source: source.into(),
        })?;
    let (device_id, created) = match account {
        Some(account) if account.user_id() != user => {
            return Err(CryptoError::ForeignStore {
                user: user.to_owned(),
                found: account.user_id().to_owned(),
                path: dir,
            });
        }
        Some(account) => (account.device_id().to_owned(), false),
        None => (new_device_id(), true),
    };
    let file = DeviceFile {
        user_id: user.to_owned(),
        device_id: device_id.clone(),
    };
    if read_device_file(&dir).as_ref() != Some(&file) {
        // Only a hint for routing: the store stays the truth, so a failed write
        // costs an extra open later, nothing more.
        if let Err(error) = write_device_file(&dir, &file) {
            tracing::warn!(dir = %dir.display(), %error, "cannot write device.json");
        }
    }
    Ok(OpenedStore {
        store,
        device_id,
        created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_localparts_are_their_own_directory() {
        assert_eq!(dir_name("walkie_mumble_alice"), "walkie_mumble_alice");
        assert_eq!(
            dir_name("walkie_mumble_j=c3=bcrgen"),
            "walkie_mumble_j=c3=bcrgen"
        );
    }

    #[test]
    fn slashes_dots_and_odd_bytes_never_reach_the_file_system() {
        for localpart in ["a/b", "..", ".hidden", "", "a+b", "A"] {
            let name = dir_name(localpart);
            assert!(name.starts_with('+'), "{localpart:?} → {name}");
            assert!(!name.contains('/') && name != "." && name != "..");
        }
        assert_eq!(dir_name("a/b"), "+612f62");
    }

    #[test]
    fn names_stay_distinct() {
        let names = ["a/b", "a=2fb", "+612f62", "612f62", "a.b", ".a"];
        let dirs: std::collections::HashSet<_> = names.iter().map(|n| dir_name(n)).collect();
        assert_eq!(dirs.len(), names.len());
    }

    #[tokio::test]
    async fn a_store_keeps_its_device_and_opens_only_with_its_passphrase() {
        use matrix_sdk_crypto::OlmMachine;
        let dir = tempfile::tempdir().unwrap();
        let user = UserId::parse("@walkie_mumble_a/b:example.org").unwrap();
        let secret = Secret::new("correct horse battery staple");
        let started = std::time::Instant::now();
        let first = open(dir.path(), &user, Some(&secret)).await.unwrap();
        eprintln!("new store with a passphrase: {:?}", started.elapsed());
        assert!(first.created);
        let machine = OlmMachine::with_store(&user, &first.device_id, first.store, None)
            .await
            .unwrap();
        let ed25519 = machine.identity_keys().ed25519;
        drop(machine);
        // The odd localpart became a safe directory name, with its hint file.
        let device_dir = dir.path().join("+77616c6b69655f6d756d626c655f612f62");
        assert_eq!(
            read_device_file(&device_dir).map(|f| f.device_id),
            Some(first.device_id.clone())
        );

        let started = std::time::Instant::now();
        let again = open(dir.path(), &user, Some(&secret)).await.unwrap();
        eprintln!("reopened with the passphrase: {:?}", started.elapsed());
        assert!(!again.created);
        assert_eq!(again.device_id, first.device_id);
        let machine = OlmMachine::with_store(&user, &again.device_id, again.store, None)
            .await
            .unwrap();
        assert_eq!(machine.identity_keys().ed25519, ed25519);
        drop(machine);

        let wrong = Secret::new("incorrect horse");
        assert!(matches!(
            open(dir.path(), &user, Some(&wrong)).await,
            Err(CryptoError::OpenStore { .. })
        ));
        let other = UserId::parse("@walkie_other:example.org").unwrap();
        std::fs::rename(&device_dir, dir.path().join("walkie_other")).unwrap();
        assert!(matches!(
            open(dir.path(), &other, Some(&secret)).await,
            Err(CryptoError::ForeignStore { .. })
        ));
    }

    #[test]
    fn device_ids_carry_the_prefix_and_differ() {
        let a = new_device_id();
        let b = new_device_id();
        assert!(a.as_str().starts_with(DEVICE_ID_PREFIX), "{a}");
        assert_eq!(a.as_str().len(), DEVICE_ID_PREFIX.len() + 10);
        assert_ne!(a, b);
    }
}

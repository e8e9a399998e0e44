use std::path::PathBuf;

use matrix_sdk_crypto::{CryptoStoreError, MegolmError, OlmError};
use ruma::{OwnedDeviceId, OwnedUserId};

use crate::matrix::client::MatrixError;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("{user} is neither the bot nor a puppet of this bridge: it gets no device")]
    NotBridgeUser { user: OwnedUserId },
    #[error("cannot create the crypto store directory {path}: {source}")]
    StoreDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the crypto store directory name for {user} would be {len} bytes, longer than a file name may be")]
    DirNameTooLong { user: OwnedUserId, len: usize },
    #[error("cannot open the crypto store of {user} in {path}: {source}")]
    OpenStore {
        user: OwnedUserId,
        path: PathBuf,
        #[source]
        source: matrix_sdk_sqlite::OpenStoreError,
    },
    #[error("the crypto store in {path} belongs to {found}, not to {user}")]
    ForeignStore {
        user: OwnedUserId,
        found: OwnedUserId,
        path: PathBuf,
    },
    #[error("the crypto store of {user}: {source}")]
    Store {
        user: OwnedUserId,
        #[source]
        source: CryptoStoreError,
    },
    #[error("olm, device {device} of {user}: {source}")]
    Olm {
        user: OwnedUserId,
        device: OwnedDeviceId,
        #[source]
        source: OlmError,
    },
    #[error("megolm, device {device} of {user}: {source}")]
    Megolm {
        user: OwnedUserId,
        device: OwnedDeviceId,
        #[source]
        source: MegolmError,
    },
    #[error(transparent)]
    Homeserver(#[from] MatrixError),
}

impl CryptoError {
    /// Worth trying again later: the homeserver was down or rate limiting.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Homeserver(e) => e.is_transient(),
            _ => false,
        }
    }
}

//! Each bridge user's own cross-signing identity: a master key, a self-signing key
//! that signs the user's bridge device, and a user-signing key. Clients then see
//! the puppet's messages come from a device its owner vouches for.
//!
//! Synapse lets an appservice upload cross-signing keys without user-interactive
//! auth (`synapse/rest/client/keys.py`, `SigningKeyUploadServlet`: the first upload
//! needs none for anyone, MSC3967; a replacement needs none for an appservice,
//! MSC4190).

use matrix_sdk_crypto::types::requests::AnyIncomingResponse;
use matrix_sdk_crypto::CrossSigningBootstrapRequests;
use ruma::api::client::keys::{upload_signatures, upload_signing_keys};
use ruma::TransactionId;
use tracing::info;

use super::device::CryptoDevice;
use super::error::CryptoError;
use crate::matrix::client::MatrixError;

/// Store key set once the identity and the device's signature are on the
/// homeserver.
const CROSS_SIGNING_UPLOADED: &str = "walkie.cross_signing_uploaded";

/// Creates and uploads the identity once. A device whose upload was cut short
/// (crash, homeserver down) uploads the same identity again on its next open; it
/// never makes a second one.
pub(crate) async fn ensure(device: &CryptoDevice) -> Result<(), CryptoError> {
    let store = device.machine.store();
    if store
        .get_custom_value(CROSS_SIGNING_UPLOADED)
        .await
        .map_err(|e| device.store_error(e))?
        .is_some()
    {
        return Ok(());
    }
    // `false`: keep an identity already in the store (an earlier, unfinished
    // attempt); only an empty one is created.
    let CrossSigningBootstrapRequests {
        upload_keys_req,
        upload_signing_keys_req,
        upload_signatures_req,
    } = device
        .machine
        .bootstrap_cross_signing(false)
        .await
        .map_err(|e| device.store_error(e))?;
    if let Some(request) = upload_keys_req {
        device.send_outgoing(&request).await?;
    }

    let mut upload = upload_signing_keys::v3::Request::new();
    upload.master_key = upload_signing_keys_req.master_key.map(|k| k.to_raw());
    upload.self_signing_key = upload_signing_keys_req.self_signing_key.map(|k| k.to_raw());
    upload.user_signing_key = upload_signing_keys_req.user_signing_key.map(|k| k.to_raw());
    let response = device
        .send("uploading cross-signing keys", upload, true)
        .await?;
    device
        .machine
        .mark_request_as_sent(
            &TransactionId::new(),
            AnyIncomingResponse::SigningKeysUpload(&response),
        )
        .await
        .map_err(|e| device.olm_error(e))?;

    let response: upload_signatures::v3::Response = device
        .send(
            "uploading the device's signature",
            upload_signatures_req,
            true,
        )
        .await?;
    if !response.failures.is_empty() {
        return Err(MatrixError::BadResponse {
            what: "uploading the device's signature".into(),
            reason: format!("the homeserver refused some: {:?}", response.failures),
        }
        .into());
    }
    device
        .machine
        .mark_request_as_sent(&TransactionId::new(), &response)
        .await
        .map_err(|e| device.olm_error(e))?;

    store
        .set_custom_value(CROSS_SIGNING_UPLOADED, vec![1])
        .await
        .map_err(|e| device.store_error(e))?;
    info!("cross-signing identity uploaded; the device is signed by its self-signing key");
    Ok(())
}

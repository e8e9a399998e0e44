//! rustls client configuration for the control channel.
//!
//! Mumble servers very often run on the self-signed certificate murmurd
//! generates at first start, so verification can be switched off — but only
//! explicitly (`accept_invalid_cert`); otherwise the server must present a
//! certificate valid for its host name under the webpki (Mozilla) roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::MumbleError;
use crate::identity::ClientIdentity;

pub(crate) fn client_config(
    accept_invalid_cert: bool,
    client_cert: Option<&(PathBuf, PathBuf)>,
    identity: Option<&ClientIdentity>,
) -> Result<Arc<ClientConfig>, MumbleError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| MumbleError::TlsConfig(e.to_string()))?;
    let builder = if accept_invalid_cert {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
    } else {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        builder.with_root_certificates(roots)
    };
    let config = match (client_cert, identity) {
        (None, None) => builder.with_no_client_auth(),
        (None, Some(identity)) => {
            let err = |e: String| MumbleError::TlsConfig(format!("the bot's certificate: {e}"));
            let certs = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(e.to_string()))?;
            let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
                .map_err(|e| err(e.to_string()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| err(e.to_string()))?
        }
        // A configured file wins over a generated identity.
        (Some((cert, key)), _) => {
            let certs = load_certs(cert)?;
            let key = load_key(key)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| MumbleError::ClientCert {
                    path: cert.clone(),
                    reason: e.to_string(),
                })?
        }
    };
    Ok(Arc::new(config))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, MumbleError> {
    let err = |reason: String| MumbleError::ClientCert {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, MumbleError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| MumbleError::ClientCert {
        path: path.to_owned(),
        reason: format!("no usable PEM private key: {e}"),
    })
}

/// Accepts any server certificate but still checks that the server holds its
/// key (the handshake signatures), so the session is at least bound to the
/// certificate the server showed.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

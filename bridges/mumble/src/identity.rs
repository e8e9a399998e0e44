//! A bot's own client certificate. Mumble knows a registered user by the SHA-1
//! of the certificate they present, so a bot without a stable certificate can
//! never be registered: every start would be a new guest. Like a Mumble client
//! on its first start, the bridge makes a self-signed one and keeps it (where is
//! the caller's business: walkie-bridge keeps it in its database).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha1::{Digest, Sha1};

use crate::error::MumbleError;

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key, in logs or panics.
        f.debug_struct("ClientIdentity")
            .field("cert_hash", &self.cert_hash().ok())
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// A new self-signed certificate (ECDSA P-256, valid until 4096, as rcgen
    /// makes them) with `common_name` as its subject.
    pub fn generate(common_name: &str) -> Result<Self, MumbleError> {
        let err = |e: rcgen::Error| MumbleError::TlsConfig(format!("making a certificate: {e}"));
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// What a Mumble server shows and registers the certificate by: the SHA-1 of
    /// its DER, in lower-case hex.
    pub fn cert_hash(&self) -> Result<String, MumbleError> {
        let der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(|e| {
            MumbleError::TlsConfig(format!("the bot's certificate is not PEM: {e}"))
        })?;
        Ok(Sha1::digest(der.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_identity_loads_and_hashes_stably() {
        let id = ClientIdentity::generate("walkie").unwrap();
        assert!(id.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(id.key_pem.contains("PRIVATE KEY"));
        let hash = id.cert_hash().unwrap();
        assert_eq!(hash.len(), 40);
        assert_eq!(hash, id.cert_hash().unwrap());
        assert_ne!(
            hash,
            ClientIdentity::generate("walkie")
                .unwrap()
                .cert_hash()
                .unwrap()
        );
        assert!(!format!("{id:?}").contains("PRIVATE"));
        crate::tls::client_config(true, None, Some(&id)).expect("rustls takes it");
    }
}

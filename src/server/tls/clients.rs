//! Mutual TLS for `/api/v1`: which API client a certificate presented in the handshake
//! belongs to. A client is known by the CA that issued its certificates (`client_ca_file`,
//! checked as RFC 5280 path validation by webpki, with expiry and the client-auth key usage)
//! or by one pinned certificate (`client_cert_sha256`). Presenting a certificate is optional,
//! so Ocean and browsers connect without one; a certificate that matches no client ends the
//! handshake. Either way the handshake proves the peer holds the certificate's key.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::config::ApiConfig;

/// How one client's certificates are recognised.
enum Trust {
    Issuer(Arc<dyn ClientCertVerifier>),
    Pinned([u8; 32]),
}

/// The API clients known by certificate, in configuration order.
pub struct ClientCertificates {
    clients: Vec<(String, Trust)>,
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for ClientCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.clients.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ClientCertificates")
            .field("clients", &names)
            .finish()
    }
}

/// The name of the API client whose certificate the connection presented, set on every
/// request of that connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity(pub Arc<str>);

impl ClientCertificates {
    /// Reads every client's CA file.
    ///
    /// # Errors
    /// A CA file that cannot be read or holds no usable certificate, naming the client.
    pub fn from_config(api: &ApiConfig, provider: Arc<CryptoProvider>) -> anyhow::Result<Self> {
        let mut clients = Vec::new();
        let mut hints = Vec::new();
        for (name, client) in &api.clients {
            if let Some(pin) = client.pinned_sha256()? {
                clients.push((name.clone(), Trust::Pinned(pin)));
            }
            if !client.client_ca_file.as_os_str().is_empty() {
                let roots = read_roots(&client.client_ca_file)
                    .map_err(|e| anyhow::anyhow!("api.clients.{name}.client_ca_file: {e}"))?;
                hints.extend(roots.subjects());
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| anyhow::anyhow!("api.clients.{name}.client_ca_file: {e}"))?;
                clients.push((name.clone(), Trust::Issuer(verifier)));
            }
        }
        Ok(Self {
            clients,
            hints,
            provider,
        })
    }

    /// Whether any client is known by certificate (else no certificate is asked for).
    pub fn any(&self) -> bool {
        !self.clients.is_empty()
    }

    /// The client `chain` (end-entity first) identifies, if any.
    pub fn identify(&self, chain: &[CertificateDer<'_>]) -> Option<ClientIdentity> {
        let (end_entity, intermediates) = chain.split_first()?;
        let now = UnixTime::now();
        let fingerprint =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, end_entity.as_ref());
        self.clients.iter().find_map(|(name, trust)| {
            let matches = match trust {
                Trust::Pinned(pin) => fingerprint.as_ref() == pin,
                Trust::Issuer(verifier) => verifier
                    .verify_client_cert(end_entity, intermediates, now)
                    .is_ok(),
            };
            matches.then(|| ClientIdentity(Arc::from(name.as_str())))
        })
    }
}

fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: holds no certificate", path.display()));
    }
    Ok(roots)
}

impl ClientCertVerifier for ClientCertificates {
    fn offer_client_auth(&self) -> bool {
        self.any()
    }

    /// Optional: Ocean, browsers and key-holding clients present none.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let chain: Vec<CertificateDer<'_>> = std::iter::once(end_entity.clone())
            .chain(intermediates.iter().cloned())
            .collect();
        match self.identify(&chain) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

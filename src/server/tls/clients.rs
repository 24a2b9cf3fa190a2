//! Mutual TLS for `/api/v1`: which API client a certificate presented in the handshake
//! belongs to. A client is known by one pinned certificate (`client_cert_sha256`, valid now) or
//! by the CA that issued its certificates (`client_ca_file`, checked as RFC 5280 path
//! validation by webpki, with expiry and the client-auth key usage), optionally only those
//! naming one of `client_cert_names`. Pins are looked at first (the more specific), and
//! configurations in which one certificate could be two clients are refused at start.
//! Presenting a certificate is optional, so Ocean and browsers connect without one; a
//! certificate that matches no client ends the handshake. Either way the handshake proves the
//! peer holds the certificate's key.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use super::certificate::CertificateInfo;
use crate::config::ApiConfig;

/// A client known by the CA that issued its certificates.
struct Issued {
    client: String,
    verifier: Arc<dyn ClientCertVerifier>,
    /// Names (DNS, e-mail or common name) one of which the certificate must carry; empty: any.
    names: Vec<String>,
}

/// The API clients known by certificate.
pub struct ClientCertificates {
    pinned: Vec<(String, [u8; 32])>,
    issued: Vec<Issued>,
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for ClientCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pinned: Vec<&str> = self.pinned.iter().map(|(n, _)| n.as_str()).collect();
        let issued: Vec<&str> = self.issued.iter().map(|i| i.client.as_str()).collect();
        f.debug_struct("ClientCertificates")
            .field("pinned", &pinned)
            .field("issued", &issued)
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
    /// A CA file that cannot be read or holds no usable certificate, or two clients trusting
    /// the same CA without `client_cert_names` that tell their certificates apart, or two
    /// clients pinning the same certificate; each naming the clients.
    pub fn from_config(api: &ApiConfig, provider: Arc<CryptoProvider>) -> anyhow::Result<Self> {
        let mut pinned: Vec<(String, [u8; 32])> = Vec::new();
        let mut issued = Vec::new();
        let mut roots_of: Vec<(String, Vec<CertificateDer<'static>>, Vec<String>)> = Vec::new();
        let mut hints = Vec::new();
        for (name, client) in &api.clients {
            if let Some(pin) = client.pinned_sha256()? {
                if let Some((other, _)) = pinned.iter().find(|(_, p)| *p == pin) {
                    anyhow::bail!(
                        "api.clients.{other} and api.clients.{name} pin the same certificate"
                    );
                }
                pinned.push((name.clone(), pin));
            }
            if client.client_ca_file.as_os_str().is_empty() {
                continue;
            }
            let certs = read_certificates(&client.client_ca_file)
                .map_err(|e| anyhow::anyhow!("api.clients.{name}.client_ca_file: {e}"))?;
            let names: Vec<String> = client
                .client_cert_names
                .iter()
                .map(|n| n.to_ascii_lowercase())
                .collect();
            for (other, other_certs, other_names) in &roots_of {
                let shared = certs.iter().any(|c| other_certs.contains(c));
                let told_apart = !names.is_empty()
                    && !other_names.is_empty()
                    && !names.iter().any(|n| other_names.contains(n));
                if shared && !told_apart {
                    anyhow::bail!(
                        "api.clients.{other} and api.clients.{name} trust the same CA, so a certificate it issued could be either: give each client_cert_names that the other lacks, or each a CA of its own"
                    );
                }
            }
            let mut roots = RootCertStore::empty();
            for cert in &certs {
                roots.add(cert.clone()).map_err(|e| {
                    anyhow::anyhow!(
                        "api.clients.{name}.client_ca_file: not a usable CA certificate: {e}"
                    )
                })?;
            }
            hints.extend(roots.subjects());
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| anyhow::anyhow!("api.clients.{name}.client_ca_file: {e}"))?;
            roots_of.push((name.clone(), certs, names.clone()));
            issued.push(Issued {
                client: name.clone(),
                verifier,
                names,
            });
        }
        // Hints make a client offer only certificates from those CAs: a client holding a pinned
        // (often self-signed) certificate would then offer none.
        if !pinned.is_empty() {
            hints.clear();
        }
        Ok(Self {
            pinned,
            issued,
            hints,
            provider,
        })
    }

    /// Whether any client is known by certificate (else no certificate is asked for).
    pub fn any(&self) -> bool {
        !self.pinned.is_empty() || !self.issued.is_empty()
    }

    /// The client `chain` (end-entity first) identifies, if any: the pinned certificate (valid
    /// now) first, then the one client whose CA issued it and whose names it carries.
    pub fn identify(&self, chain: &[CertificateDer<'_>]) -> Option<ClientIdentity> {
        let (end_entity, intermediates) = chain.split_first()?;
        let identity = |name: &str| Some(ClientIdentity(Arc::from(name)));
        let info = CertificateInfo::of(end_entity).ok()?;
        let fingerprint = crate::digest::sha256(end_entity.as_ref());
        if let Some((name, _)) = self.pinned.iter().find(|(_, pin)| &fingerprint == pin) {
            let now = time::OffsetDateTime::now_utc();
            let valid = info.not_before <= now && now <= info.not_after;
            return if valid { identity(name) } else { None };
        }
        let now = UnixTime::now();
        let mut matching = self.issued.iter().filter(|issued| {
            let named = issued.names.is_empty()
                || info
                    .identities()
                    .iter()
                    .any(|n| issued.names.contains(&n.to_ascii_lowercase()));
            named
                && issued
                    .verifier
                    .verify_client_cert(end_entity, intermediates, now)
                    .is_ok()
        });
        // Two at once (refused at start; only a cross-signed CA could do it): neither.
        match (matching.next(), matching.next()) {
            (Some(issued), None) => identity(&issued.client),
            _ => None,
        }
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "{}: {}",
                path.display(),
                super::certificate::pem_problem(&e)
            )
        })?;
    if certs.is_empty() {
        return Err(format!("{}: holds no certificate", path.display()));
    }
    Ok(certs)
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

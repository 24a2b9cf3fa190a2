//! The listener's certificate: read from its PEM files, checked (the key matches, the
//! certificate is valid now), described (subject, names, expiry) and served to new handshakes,
//! swapped whole when the files change. A pair that does not load is never served: the one in
//! use stays, and the reason is kept for `/readyz` and the log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Serialize;
use time::OffsetDateTime;

/// What a certificate says about itself, for `check-config`, `/readyz` and the metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateInfo {
    /// The subject's distinguished name (RFC 4514 string form).
    pub subject: String,
    /// The DNS names and IP addresses of its subject alternative names.
    pub names: Vec<String>,
    /// Start and end of its validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

impl CertificateInfo {
    /// Reads the end-entity certificate `der` (RFC 5280).
    ///
    /// # Errors
    /// It is not a DER X.509 certificate.
    pub fn of(der: &CertificateDer<'_>) -> Result<Self, String> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| format!("the certificate does not parse: {e}"))?;
        let names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    GeneralName::IPAddress(ip) => ip_text(ip),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let validity = cert.validity();
        Ok(Self {
            subject: cert.subject().to_string(),
            names,
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
        })
    }
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    let ip: std::net::IpAddr = match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok()?.into(),
        16 => <[u8; 16]>::try_from(bytes).ok()?.into(),
        _ => return None,
    };
    Some(ip.to_string())
}

/// A certificate chain and its key, read and checked.
pub struct LoadedPair {
    pub key: Arc<CertifiedKey>,
    pub info: CertificateInfo,
    /// The two files' bytes, to tell a change from a rewrite with the same contents.
    contents: (Vec<u8>, Vec<u8>),
}

/// Reads `cert_file` (PEM chain, end-entity first) and `key_file` (PEM private key) and checks
/// them: the key is the certificate's, and the certificate is valid at `now`.
///
/// # Errors
/// Which file could not be read or parsed, or what is wrong with the pair. Never the key.
pub fn load_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
    now: OffsetDateTime,
) -> Result<LoadedPair, String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let (cert_pem, key_pem) = (read(cert_file)?, read(key_file)?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert_file.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{}: holds no certificate", cert_file.display()));
    };
    let info = CertificateInfo::of(leaf).map_err(|e| format!("{}: {e}", cert_file.display()))?;
    // The parser's message could quote the file; the key's bytes are never worth showing.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        format!(
            "{}: not a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)",
            key_file.display()
        )
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "the key in {} is not the key of the certificate in {}",
            key_file.display(),
            cert_file.display()
        ),
        e => format!("{}: the key cannot be used: {e}", key_file.display()),
    })?;
    if now > info.not_after {
        return Err(format!(
            "{}: the certificate expired at {}",
            cert_file.display(),
            rfc3339(info.not_after)
        ));
    }
    if now < info.not_before {
        return Err(format!(
            "{}: the certificate is not valid before {}",
            cert_file.display(),
            rfc3339(info.not_before)
        ));
    }
    Ok(LoadedPair {
        key: Arc::new(certified),
        info,
        contents: (cert_pem, key_pem),
    })
}

pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Where the served certificate stands, for `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateStatus {
    /// The certificate new handshakes get.
    pub serving: CertificateInfo,
    /// When it was loaded.
    #[serde(with = "time::serde::rfc3339")]
    pub loaded_at: OffsetDateTime,
    /// Why the files as they are now were not taken, if they were not (the served pair stays).
    pub reload_error: Option<String>,
}

struct Current {
    pair: LoadedPair,
    loaded_at: OffsetDateTime,
    reload_error: Option<String>,
}

/// The certificate new handshakes get, swapped whole on a successful reload; a handshake in
/// progress or a connection already open keeps the one it started with.
pub struct ServedCertificate {
    files: (PathBuf, PathBuf),
    provider: Arc<CryptoProvider>,
    current: RwLock<Current>,
}

impl std::fmt::Debug for ServedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedCertificate")
            .field("cert_file", &self.files.0)
            .finish_non_exhaustive()
    }
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The files hold what is served already.
    Unchanged,
    /// A new pair is served.
    Swapped,
    /// The files hold a pair that cannot be served; the one in use stays.
    Refused(String),
}

impl ServedCertificate {
    /// Loads the pair at start.
    ///
    /// # Errors
    /// As [`load_pair`]: at start there is nothing else to serve.
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, String> {
        let now = OffsetDateTime::now_utc();
        let pair = load_pair(cert_file, key_file, &provider, now)?;
        Ok(Self {
            files: (cert_file.to_path_buf(), key_file.to_path_buf()),
            provider,
            current: RwLock::new(Current {
                pair,
                loaded_at: now,
                reload_error: None,
            }),
        })
    }

    /// Reads the files again and serves what they hold if it changed and loads.
    pub fn reload(&self) -> Reload {
        let now = OffsetDateTime::now_utc();
        let unchanged = |current: &Current| {
            let read = |p: &Path| std::fs::read(p).ok();
            let (cert, key) = (read(&self.files.0), read(&self.files.1));
            cert.as_ref() == Some(&current.pair.contents.0)
                && key.as_ref() == Some(&current.pair.contents.1)
        };
        if unchanged(&self.read()) {
            self.write().reload_error = None;
            return Reload::Unchanged;
        }
        match load_pair(&self.files.0, &self.files.1, &self.provider, now) {
            Ok(pair) => {
                *self.write() = Current {
                    pair,
                    loaded_at: now,
                    reload_error: None,
                };
                Reload::Swapped
            }
            Err(reason) => {
                self.write().reload_error = Some(reason.clone());
                Reload::Refused(reason)
            }
        }
    }

    pub fn status(&self) -> CertificateStatus {
        let current = self.read();
        CertificateStatus {
            serving: current.pair.info.clone(),
            loaded_at: current.loaded_at,
            reload_error: current.reload_error.clone(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Current> {
        self.current.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl ResolvesServerCert for ServedCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.read().pair.key))
    }
}

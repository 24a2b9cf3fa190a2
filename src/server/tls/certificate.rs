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
    /// The e-mail addresses of its subject alternative names and its subject's common names.
    #[serde(skip)]
    other_names: Vec<String>,
}

impl CertificateInfo {
    /// Every name the certificate gives its subject: DNS names, IP addresses, e-mail addresses
    /// and common names (what `client_cert_names` is compared with).
    pub fn identities(&self) -> Vec<&str> {
        self.names
            .iter()
            .chain(&self.other_names)
            .map(String::as_str)
            .collect()
    }

    /// Reads the end-entity certificate `der` (RFC 5280).
    ///
    /// # Errors
    /// It is not a DER X.509 certificate.
    pub fn of(der: &CertificateDer<'_>) -> Result<Self, String> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| format!("the certificate does not parse: {e}"))?;
        let mut names = Vec::new();
        let mut other_names: Vec<String> = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
            .collect();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                    GeneralName::IPAddress(ip) => names.extend(ip_text(ip)),
                    GeneralName::RFC822Name(mail) => other_names.push((*mail).to_owned()),
                    _ => {}
                }
            }
        }
        let validity = cert.validity();
        Ok(Self {
            subject: cert.subject().to_string(),
            names,
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
            other_names,
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

/// A PEM parsing error in words (the parser's own text prints a missing END marker as a list
/// of byte values).
pub fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { .. } => "a PEM section has no END line".to_owned(),
        Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".to_owned(),
        Error::Base64Decode(_) => "a PEM section is not valid base64".to_owned(),
        e => format!("not PEM: {e}"),
    }
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
        .map_err(|e| format!("{}: {}", cert_file.display(), pem_problem(&e)))?;
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
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: the key cannot be used: {e}", key_file.display()))?;
    let certified = CertifiedKey::new(chain.clone(), Arc::clone(&signing_key));
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            // The usual cause besides a wrong file: the chain's certificates out of order.
            let later = chain.iter().skip(1).any(|cert| {
                CertifiedKey::new(vec![cert.clone()], Arc::clone(&signing_key))
                    .keys_match()
                    .is_ok()
            });
            return Err(if later {
                format!(
                    "{}: the certificates are out of order (the key's own certificate must come first, then its chain)",
                    cert_file.display()
                )
            } else {
                format!(
                    "the key in {} is not the key of the certificate in {}",
                    key_file.display(),
                    cert_file.display()
                )
            });
        }
    }
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

/// How long before its expiry the served certificate is reported in `/readyz` and the log.
pub const EXPIRY_NOTICE: time::Duration = time::Duration::days(14);

/// How long a refused pair is given to settle before it is read again.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Where the served certificate stands, for `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateStatus {
    /// The certificate new handshakes get.
    pub serving: CertificateInfo,
    /// When it was loaded.
    #[serde(with = "time::serde::rfc3339")]
    pub loaded_at: OffsetDateTime,
    /// Seconds until it expires (negative once it has).
    pub expires_in_secs: i64,
    /// It has expired, or expires within [`EXPIRY_NOTICE`].
    pub problem: Option<String>,
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
        // A renewal tool writes one file, then the other: a pair read in between does not
        // match, so a refused pair is read once more, a moment later, before it counts.
        let loaded = load_pair(&self.files.0, &self.files.1, &self.provider, now).or_else(|_| {
            std::thread::sleep(SETTLE);
            load_pair(&self.files.0, &self.files.1, &self.provider, now)
        });
        match loaded {
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

    /// What `/readyz` shows. It is unauthenticated: the reason names the files, not the
    /// directories they are in.
    pub fn status(&self) -> CertificateStatus {
        let current = self.read();
        let reload_error = current.reload_error.as_ref().map(|reason| {
            let mut reason = reason.clone();
            for path in [&self.files.0, &self.files.1] {
                if let Some(name) = path.file_name() {
                    reason = reason.replace(&path.display().to_string(), &name.to_string_lossy());
                }
            }
            reason
        });
        let now = OffsetDateTime::now_utc();
        let not_after = current.pair.info.not_after;
        let problem = if now > not_after {
            Some(format!(
                "the certificate served expired at {}: clients refuse it; renew the files",
                rfc3339(not_after)
            ))
        } else if not_after - now < EXPIRY_NOTICE {
            Some(format!(
                "the certificate served expires at {}; renew the files",
                rfc3339(not_after)
            ))
        } else {
            None
        };
        CertificateStatus {
            serving: current.pair.info.clone(),
            loaded_at: current.loaded_at,
            expires_in_secs: (not_after - now).whole_seconds(),
            problem,
            reload_error,
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

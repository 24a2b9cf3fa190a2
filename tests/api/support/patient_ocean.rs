//! A stand-in for Ocean's Open API as Patient Engagement uses it, on loopback:
//! `GET /svc/v1/patients/{ref}` and `GET /svc/v1/patients/{ref}/notes?oceanSessionId=`, which
//! check the `siteNum`, `siteKey` and `siteCredential` headers (401 otherwise) and ENCRYPT their
//! answers as the facts say (OCEAN-API.md "Patient Engagement"): a fresh one-time key encrypted
//! with the Shared Encryption Key right-padded with ASCII '0' to 16 bytes, AES-CBC with PKCS#7;
//! the patient with one `iv` for the key and the body, the note with the key's own
//! `oneTimeKeyIv`; bodies as a base64 string or a JSON array of signed bytes. Written here with
//! aws-lc-rs directly, not with the relay's code, so a mistake in one is not hidden by the same
//! mistake in the other. It answers scripted statuses on demand and records every request.
//! Every patient in the tests is invented.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aws_lc_rs::cipher::{AES_128, EncryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use serde_json::{Value, json};

pub const SITE_NUM: &str = "4321";
pub const SITE_KEY: &str = "relay-client";
pub const SITE_CREDENTIAL: &str = "relay-secret";
pub const SEK: &str = "Sek-Test-9";
pub const SECRET: &str = "pe-secret-0123456789abcdef";

/// How a body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Base64,
    SignedBytes,
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub session: Option<String>,
    pub site_num: Option<String>,
    pub site_key: Option<String>,
    pub site_credential: Option<String>,
    pub answered: u16,
}

#[derive(Default)]
struct Inner {
    /// Patient ref → the decrypted patient.
    patients: Mutex<HashMap<String, Value>>,
    /// (patient ref, session) → the decrypted note.
    notes: Mutex<HashMap<(String, String), Value>>,
    /// Statuses answered next, before any real answer, by path kind (`patient`, `note`).
    script: Mutex<HashMap<&'static str, VecDeque<u16>>>,
    /// While set, every request is answered with it.
    down: Mutex<Option<u16>>,
    /// Encodings of the patient and the note bodies.
    encodings: Mutex<Option<(Encoding, Encoding)>>,
    seen: Mutex<Vec<Seen>>,
}

#[derive(Clone)]
pub struct PatientOcean {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl PatientOcean {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let router = Router::new()
            .route("/svc/v1/patients/{reference}", get(patient))
            .route("/svc/v1/patients/{reference}/notes", get(note))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self { addr, inner }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Ocean has `patient` under `reference`, and `note` for its `session`.
    pub fn has(&self, reference: &str, patient: Value, session: &str, note: Value) {
        self.inner
            .patients
            .lock()
            .unwrap()
            .insert(reference.to_owned(), patient);
        self.inner
            .notes
            .lock()
            .unwrap()
            .insert((reference.to_owned(), session.to_owned()), note);
    }

    /// The next answers to patient reads are these statuses.
    pub fn fail_patient(&self, statuses: impl IntoIterator<Item = u16>) {
        self.inner
            .script
            .lock()
            .unwrap()
            .entry("patient")
            .or_default()
            .extend(statuses);
    }

    /// Every request is answered `status` (`None`: back to normal).
    pub fn down(&self, status: Option<u16>) {
        *self.inner.down.lock().unwrap() = status;
    }

    /// Encodings of the patient and note bodies (base64 and signed bytes by default).
    pub fn encode(&self, patient: Encoding, note: Encoding) {
        *self.inner.encodings.lock().unwrap() = Some((patient, note));
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().unwrap().clone()
    }
}

/// The relay's config for an endpoint `clinic` on a site pointed at `ocean`, with an API
/// client (`flow::KEY`) and quick retries.
pub fn config(ocean: &PatientOcean, extra: &str) -> String {
    format!(
        r#"
[api.clients.emr]
key = "{key}"

[api.clients.scoped]
key = "scoped-key-0123456789"
service_ids = ["CARDIO-1"]

[sites.main]
base_url = "{base}"
client_id = "{SITE_KEY}"
client_secret = "{SITE_CREDENTIAL}"

[patient_engagement.clinic]
site = "main"
site_num = {SITE_NUM}
shared_encryption_key = "{SEK}"
secret = "{SECRET}"

[documents]
initial_backoff_secs = 1
max_backoff_secs = 1
request_timeout_secs = 10
{extra}
"#,
        key = super::flow::KEY,
        base = ocean.base_url(),
    )
}

/// AES-CBC with PKCS#7 under a 16-byte key.
fn encrypt(key: &[u8], iv: [u8; 16], plain: &[u8]) -> Vec<u8> {
    let cipher =
        PaddedBlockEncryptingKey::cbc_pkcs7(UnboundCipherKey::new(&AES_128, key).unwrap()).unwrap();
    let mut data = plain.to_vec();
    cipher
        .less_safe_encrypt(&mut data, EncryptionContext::Iv128(FixedLength::from(iv)))
        .unwrap();
    data
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    bytes
}

/// The SEK's key: its bytes right-padded with ASCII '0' to 16.
fn sek_key() -> Vec<u8> {
    let mut key = SEK.as_bytes().to_vec();
    key.resize(16, b'0');
    key
}

/// `plain` encrypted as Ocean serves it: the headers and the body.
fn sealed(plain: &Value, own_key_iv: bool, encoding: Encoding) -> (HeaderMap, Vec<u8>) {
    // A one-time key of 16 printable characters.
    let one_time: Vec<u8> = random::<16>()
        .iter()
        .map(|b| b"abcdefghijklmnopqrstuvwxyz012345"[usize::from(b % 32)])
        .collect();
    let (iv, key_iv) = (random::<16>(), random::<16>());
    let mut headers = HeaderMap::new();
    let header = |v: String| HeaderValue::from_str(&v).unwrap();
    if own_key_iv {
        headers.insert(
            "oneTimeKey",
            header(b64(&encrypt(&sek_key(), key_iv, &one_time))),
        );
        headers.insert("oneTimeKeyIv", header(b64(&key_iv)));
    } else {
        headers.insert(
            "oneTimeKey",
            header(b64(&encrypt(&sek_key(), iv, &one_time))),
        );
    }
    headers.insert("iv", header(b64(&iv)));
    let ciphertext = encrypt(&one_time, iv, plain.to_string().as_bytes());
    let body = match encoding {
        Encoding::Base64 => b64(&ciphertext).into_bytes(),
        Encoding::SignedBytes => {
            let signed: Vec<i8> = ciphertext.iter().map(|b| *b as i8).collect();
            serde_json::to_vec(&signed).unwrap()
        }
    };
    (headers, body)
}

/// Checks the Open API headers, the script and the outage; `Some` is the status to answer.
fn gate(inner: &Inner, kind: &'static str, headers: &HeaderMap, mut seen: Seen) -> Option<u16> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    seen.site_num = header("siteNum");
    seen.site_key = header("siteKey");
    seen.site_credential = header("siteCredential");
    let scripted = inner
        .script
        .lock()
        .unwrap()
        .get_mut(kind)
        .and_then(VecDeque::pop_front);
    let refused = if seen.site_num.as_deref() != Some(SITE_NUM)
        || seen.site_key.as_deref() != Some(SITE_KEY)
        || seen.site_credential.as_deref() != Some(SITE_CREDENTIAL)
    {
        Some(401)
    } else {
        (*inner.down.lock().unwrap()).or(scripted)
    };
    seen.answered = refused.unwrap_or(200);
    inner.seen.lock().unwrap().push(seen);
    refused
}

/// Ocean has nothing at the address: 404, recorded as the last request's answer.
fn not_found(inner: &Inner) -> Response {
    if let Some(last) = inner.seen.lock().unwrap().last_mut() {
        last.answered = 404;
    }
    StatusCode::NOT_FOUND.into_response()
}

/// The answer to a refused request.
fn refusal(status: u16) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        json!({"error": "scripted"}).to_string(),
    )
        .into_response()
}

async fn patient(
    State(inner): State<Arc<Inner>>,
    Path(reference): Path<String>,
    headers: HeaderMap,
) -> Response {
    let seen = Seen {
        path: format!("/svc/v1/patients/{reference}"),
        session: None,
        site_num: None,
        site_key: None,
        site_credential: None,
        answered: 0,
    };
    if let Some(status) = gate(&inner, "patient", &headers, seen) {
        return refusal(status);
    }
    let Some(patient) = inner.patients.lock().unwrap().get(&reference).cloned() else {
        return not_found(&inner);
    };
    let encoding = inner
        .encodings
        .lock()
        .unwrap()
        .map_or(Encoding::Base64, |(p, _)| p);
    let (mut headers, body) = sealed(&patient, false, encoding);
    headers.insert("extPatientRef", HeaderValue::from_static("MRN-000777"));
    (headers, body).into_response()
}

async fn note(
    State(inner): State<Arc<Inner>>,
    Path(reference): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let session = query.get("oceanSessionId").cloned();
    let seen = Seen {
        path: format!("/svc/v1/patients/{reference}/notes"),
        session: session.clone(),
        site_num: None,
        site_key: None,
        site_credential: None,
        answered: 0,
    };
    if let Some(status) = gate(&inner, "note", &headers, seen) {
        return refusal(status);
    }
    let note = session.and_then(|s| inner.notes.lock().unwrap().get(&(reference, s)).cloned());
    let Some(note) = note else {
        return not_found(&inner);
    };
    let encoding = inner
        .encodings
        .lock()
        .unwrap()
        .map_or(Encoding::SignedBytes, |(_, n)| n);
    let (mut headers, body) = sealed(&note, true, encoding);
    headers.insert("noteId", HeaderValue::from_static("note-5150"));
    headers.insert("externalPtRef", HeaderValue::from_static("MRN-000777"));
    (headers, body).into_response()
}

/// An invented patient, with accents.
pub fn patient_fixture(reference: &str) -> Value {
    json!({
        "ref": reference,
        "siteNum": SITE_NUM,
        "externalPatientRef": "MRN-000777",
        "reasonForVisit": "Suivi annuel",
        "demographics": {
            "firstName": "Zoë",
            "lastName": "Gauthier-Bélanger",
            "birthDate": "1984-02-29",
            "sex": "F",
            "hn": "9999999999",
            "hnProv": "ON",
            "language": "français",
            "address": {"street": "12 rue de l'Érable", "city": "Sainte-Agathe", "province": "QC"}
        },
        "results": [{"key": "weight", "val": "61", "date": "2026-11-30"}]
    })
}

/// An invented note with one completed form.
pub fn note_fixture() -> Value {
    json!({
        "progressNote": {"title": "Questionnaire d'accueil", "text": "Patiente répond: « ça va ».", "noteType": "FORM"},
        "completedForms": {
            "intake-form-v3": {"allergies": "pénicilline", "smoker": false, "painScore": 3}
        },
        "emrFieldUpdates": {"phone": "555-0142"},
        "formMetadata": {"intake-form-v3": {"painScore": {"hidden": true}}}
    })
}

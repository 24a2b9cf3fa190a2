//! The fetcher of patients' completed eForms: for each pending submission, reads the patient
//! (`GET {base}/svc/v1/patients/{ref}`) and, when the notification named a session, the
//! session's note (`GET .../notes?oceanSessionId={id}`) from Ocean's Open API with the
//! endpoint's `siteNum`, `siteKey` and `siteCredential` headers, decrypts both and stores them.
//!
//! Shaped as the document fetcher ([`crate::ocean::documents`]): `[documents]`' concurrency,
//! timeout, backoff and retry horizon; work survives restarts (a pending submission is on disk
//! from its notification until its outcome is saved); every outcome is saved with the
//! submission, so what failed says why, and audited (`PATIENT_FORM_FETCHED`,
//! `PATIENT_FORM_FAILED`). A fetched submission is queued for the webhook destinations that
//! take everything ([`crate::destinations::Destinations::for_patient_forms`]).
//!
//! What is retried: 5xx, 429, 408, timeouts and connection failures; also 401 and 403 (a
//! credential an operator corrects and restarts with is then used), and an answer that does
//! not decrypt (a corrected Shared Encryption Key likewise). Given up at once: 404 (Ocean has
//! no such patient or note) and other refusals, a malformed answer, an answer too large.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use super::Content;
use super::crypto::{self, CryptoError, Envelope};
use crate::backoff::Backoff;
use crate::config::{Config, PatientEngagementConfig, open_api_credentials};
use crate::outgoing::answer::{retry_after, transport};
use crate::store::{PatientFormRecord, PatientFormState, QueuedMessage, Store, StoreError};

/// Longest wait between looks at the pending submissions when nothing wakes the fetcher.
const IDLE: Duration = Duration::from_secs(5);
/// Pause after the store could not be read.
const ERROR_PAUSE: Duration = Duration::from_secs(5);
/// Largest answer read from the Open API (a patient or a note is JSON; 16 MiB is far beyond).
pub const MAX_ANSWER_BYTES: u64 = 16 * 1024 * 1024;

/// Why one attempt did not get the submission.
enum Failure {
    /// Worth another attempt later (`after`: the answer's Retry-After).
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Not worth another attempt.
    GiveUp(String),
}

/// One decrypted answer and its headers.
struct Opened {
    json: serde_json::Value,
    headers: reqwest::header::HeaderMap,
}

/// Fetches pending submissions until shutdown.
#[derive(Clone)]
pub struct Fetcher {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    /// Notified when a notification was recorded.
    pub wake: Arc<Notify>,
    /// The webhooks each fetched submission is pushed to.
    pub destinations: crate::destinations::Destinations,
    http: reqwest::Client,
}

impl Fetcher {
    /// A fetcher over `store` for the endpoints of `config`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        store: Arc<dyn Store>,
        config: Arc<Config>,
        wake: Arc<Notify>,
        destinations: crate::destinations::Destinations,
    ) -> anyhow::Result<Self> {
        let timeout = Duration::from_secs(config.documents.request_timeout_secs);
        // No redirects: the site's credentials go to its own addresses only.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("referral-relay/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            store,
            config,
            wake,
            destinations,
            http,
        })
    }

    /// Runs until `stop` turns true, `documents.concurrency` submissions at a time. Does
    /// nothing (but wait for shutdown) when no endpoint is configured.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        if self.config.patient_engagement.is_empty() {
            let _ = stop.wait_for(|s| *s).await;
            return;
        }
        let lease =
            Duration::from_secs(self.config.documents.request_timeout_secs.saturating_mul(6) + 60);
        let concurrency = self.config.documents.concurrency.max(1);
        let mut running = tokio::task::JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, u64> = HashMap::new();
        loop {
            if *stop.borrow() {
                return;
            }
            let free = concurrency.saturating_sub(running.len());
            let mut idle = IDLE;
            if free > 0 {
                let busy: Vec<u64> = in_flight.values().copied().collect();
                let claimed = tokio::select! {
                    claimed = self.store.due_patient_forms(OffsetDateTime::now_utc(), lease, free, &busy) => claimed,
                    _ = stop.wait_for(|s| *s) => return,
                };
                match claimed {
                    Ok(due) => {
                        for record in due {
                            let (fetcher, id) = (self.clone(), record.id);
                            let span = tracing::info_span!(
                                "patient_form",
                                id = record.id,
                                endpoint = %record.endpoint
                            );
                            let task = running
                                .spawn(async move { fetcher.fetch(record).await }.instrument(span));
                            in_flight.insert(task.id(), id);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the patient forms due");
                        idle = ERROR_PAUSE;
                    }
                }
            }
            tokio::select! {
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    let (id, result) = match done {
                        Ok((id, result)) => (id, result),
                        Err(e) => (e.id(), Err(StoreError::unavailable("a patient form fetch did not finish").caused_by(e))),
                    };
                    in_flight.remove(&id);
                    if let Err(e) = result {
                        tracing::error!(error = %e, "cannot save a patient form's outcome");
                    }
                }
                () = self.wake.notified() => {}
                () = tokio::time::sleep(idle) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One attempt at one submission, and its outcome saved and audited.
    async fn fetch(&self, mut record: PatientFormRecord) -> Result<(), StoreError> {
        let result = match self.config.patient_engagement.get(&record.endpoint) {
            None => Err(Failure::GiveUp(format!(
                "patient_engagement.{} is no longer configured",
                record.endpoint
            ))),
            Some(endpoint) => self.attempt(endpoint, &record).await,
        };
        let now = OffsetDateTime::now_utc();
        record.attempts += 1;
        let mut content = None;
        match result {
            Ok(fetched) => {
                let bytes = serde_json::to_vec(&fetched)
                    .map_err(|e| StoreError::corrupt("content does not encode").caused_by(e))?;
                record.state = PatientFormState::Fetched;
                record.fetched_at = Some(now);
                record.size = bytes.len() as u64;
                record.last_error = None;
                content = Some(bytes::Bytes::from(bytes));
            }
            Err(Failure::Retry { reason, after }) => {
                let documents = &self.config.documents;
                let horizon = time::Duration::seconds(
                    i64::try_from(documents.retry_horizon_secs).unwrap_or(i64::MAX),
                );
                let wait = Backoff::new(
                    Duration::from_secs(documents.initial_backoff_secs),
                    Duration::from_secs(documents.max_backoff_secs),
                )
                .after(record.attempts)
                .max(after.unwrap_or_default());
                let next = time::Duration::try_from(wait)
                    .ok()
                    .and_then(|wait| now.checked_add(wait))
                    .filter(|next| *next - record.received_at <= horizon);
                if let Some(next) = next {
                    record.next_attempt_at = next;
                    record.last_error = Some(reason);
                } else {
                    record.state = PatientFormState::Failed;
                    record.last_error = Some(format!(
                        "given up after {} attempts over documents.retry_horizon_secs: {reason}",
                        record.attempts
                    ));
                }
            }
            Err(Failure::GiveUp(reason)) => {
                record.state = PatientFormState::Failed;
                record.last_error = Some(reason);
            }
        }
        if content.is_some() {
            // Queued before the submission is saved fetched: a crash in between fetches it
            // again and queues it again (a receiver drops repeats by `data.id`), rather than
            // never pushing it.
            let messages: Vec<QueuedMessage> = self
                .destinations
                .for_patient_forms()
                .map(|d| QueuedMessage::patient_form(&d.name, record.id, now))
                .collect();
            if !messages.is_empty() {
                self.store.enqueue_messages(messages).await?;
                for destination in self.destinations.for_patient_forms() {
                    destination.wake.notify_one();
                }
            }
        }
        // Retention may have purged the record while Ocean was asked: a purge stands. (A purge
        // between this read and the save can still be undone; the window is one store read.)
        if self
            .store
            .patient_form(record.id)
            .await?
            .is_some_and(|now| now.purged)
        {
            return Ok(());
        }
        self.store.save_patient_form(&record, content).await?;
        let action = match record.state {
            PatientFormState::Fetched => "PATIENT_FORM_FETCHED",
            PatientFormState::Failed => "PATIENT_FORM_FAILED",
            PatientFormState::Pending => {
                tracing::info!(
                    attempts = record.attempts,
                    "patient form fetch will be retried"
                );
                return Ok(());
            }
        };
        if record.state == PatientFormState::Failed {
            tracing::warn!(attempts = record.attempts, "patient form given up");
        }
        let details = serde_json::json!({
            "patient_form": record.id,
            "endpoint": record.endpoint,
            "type": record.kind,
            "attempts": record.attempts,
            "size": record.size,
            "error": record.last_error,
        });
        let actor = format!("patient_engagement:{}", record.endpoint);
        self.store.audit(action, &actor, details).await.map(drop)
    }

    /// Reads and decrypts the patient and, with a session, its note.
    async fn attempt(
        &self,
        endpoint: &PatientEngagementConfig,
        record: &PatientFormRecord,
    ) -> Result<Content, Failure> {
        let Some(site) = self.config.sites.get(&endpoint.site) else {
            return Err(Failure::GiveUp(format!(
                "sites.{} is no longer configured",
                endpoint.site
            )));
        };
        if !super::safe_segment(&record.patient_ref) {
            return Err(Failure::GiveUp(
                "the patient ref cannot be put in an address".into(),
            ));
        }
        let sek = crypto::sek_key(endpoint.shared_encryption_key.expose())
            .map_err(|e| Failure::GiveUp(e.to_string()))?;
        let base = site.base_url.trim_end_matches('/');
        let patient_url = format!("{base}/svc/v1/patients/{}", record.patient_ref);
        let patient = self
            .get(endpoint, site, &patient_url, &[], &sek, false)
            .await?;
        let mut content = Content {
            external_patient_ref: header(&patient.headers, "extPatientRef"),
            patient: patient.json,
            ..Content::default()
        };
        if let Some(session) = &record.session_id {
            let note = self
                .get(
                    endpoint,
                    site,
                    &format!("{patient_url}/notes"),
                    &[("oceanSessionId", session.as_str())],
                    &sek,
                    true,
                )
                .await?;
            content.note_id = header(&note.headers, "noteId");
            if let Some(reference) = header(&note.headers, "externalPtRef") {
                content.external_patient_ref = Some(reference);
            }
            content.note = Some(note.json);
        }
        Ok(content)
    }

    /// One GET of the Open API, its answer decrypted: `note` says which headers carry the
    /// key's IV (the note has its own `oneTimeKeyIv`; the patient uses `iv` for both).
    async fn get(
        &self,
        endpoint: &PatientEngagementConfig,
        site: &crate::config::SiteConfig,
        url: &str,
        query: &[(&str, &str)],
        sek: &[u8],
        note: bool,
    ) -> Result<Opened, Failure> {
        let what = if note { "the note" } else { "the patient" };
        let (key, credential) = open_api_credentials(endpoint, site);
        let mut url = reqwest::Url::parse(url).map_err(|_| {
            Failure::GiveUp(format!("sites.{}.base_url is not a URL", endpoint.site))
        })?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let response = self
            .http
            .get(url)
            .header("siteNum", endpoint.site_num.trim())
            .header("siteKey", key.expose())
            .header("siteCredential", credential.expose())
            .send()
            .await
            .map_err(|e| Failure::Retry {
                reason: format!("Ocean unreachable reading {what}: {}", transport(&e)),
                after: None,
            })?;
        let status = response.status();
        if !status.is_success() {
            let reason = format!("Ocean answered {status} reading {what}");
            let retry = status.is_server_error()
                || matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS
                        | StatusCode::REQUEST_TIMEOUT
                        | StatusCode::UNAUTHORIZED
                        | StatusCode::FORBIDDEN
                );
            return Err(if retry {
                Failure::Retry {
                    reason,
                    after: retry_after(&response),
                }
            } else {
                Failure::GiveUp(reason)
            });
        }
        let too_large = || {
            Failure::GiveUp(format!(
                "{what} is larger than {MAX_ANSWER_BYTES} bytes; not kept"
            ))
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES)
        {
            return Err(too_large());
        }
        let headers = response.headers().clone();
        let mut response = response;
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if (body.len() + chunk.len()) as u64 > MAX_ANSWER_BYTES {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(Failure::Retry {
                        reason: format!("reading {what} from Ocean: {}", transport(&e)),
                        after: None,
                    });
                }
            }
        }
        let missing =
            |name: &str| Failure::GiveUp(format!("{what} came without its {name} header"));
        let one_time_key = header(&headers, "oneTimeKey").ok_or_else(|| missing("oneTimeKey"))?;
        let iv = header(&headers, "iv").ok_or_else(|| missing("iv"))?;
        let key_iv = if note {
            header(&headers, "oneTimeKeyIv")
        } else {
            None
        };
        let envelope = Envelope {
            one_time_key: &one_time_key,
            one_time_key_iv: key_iv.as_deref(),
            iv: &iv,
        };
        let plain = crypto::open(sek, &envelope, &body).map_err(|e| match e {
            // A Shared Encryption Key an operator corrects decrypts it on a later attempt.
            CryptoError::Decrypt(_) => Failure::Retry {
                reason: format!("{what}: {e}"),
                after: None,
            },
            CryptoError::Malformed(_) => Failure::GiveUp(format!("{what}: {e}")),
        })?;
        // What a wrong key decrypts with padding that happens to check out is not JSON: retried
        // like an answer that does not decrypt.
        let json = serde_json::from_slice(&plain).map_err(|_| Failure::Retry {
            reason: format!("{what} decrypted, but is not JSON: is shared_encryption_key right?"),
            after: None,
        })?;
        Ok(Opened { json, headers })
    }
}

/// A header's value as text (names are matched without regard to case, as HTTP does).
fn header(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

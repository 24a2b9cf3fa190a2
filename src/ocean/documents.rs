//! The document fetcher: downloads each pending document (a referral's letter, an attachment a
//! message points to) from the Ocean site that answers for the referral, with that site's
//! OAuth token, and stores its bytes. Retried with backoff on 5xx, 429, 408, 401 and timeouts for
//! `documents.retry_horizon_secs`, given up at once on other refusals; every outcome is saved
//! with the document, so what failed says why. Work survives restarts: a pending document is
//! on disk from the delivery that named it until its outcome is saved.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use super::client::SendError;
use super::sites::Sites;
use crate::backoff::Backoff;
use crate::config::DocumentsConfig;
use crate::store::{DocumentKind, DocumentRecord, DocumentState, Store, StoreError, sha256_hex};

/// Longest wait between looks at the queue when nothing wakes the fetcher (a replica's
/// deliveries wake only its own fetcher).
const IDLE: Duration = Duration::from_secs(5);
/// Pause after the store could not be read.
const ERROR_PAUSE: Duration = Duration::from_secs(5);

use crate::store::DocumentKey;

fn key(document: &DocumentRecord) -> DocumentKey {
    (document.referral.clone(), document.version, document.index)
}

/// Fetches pending documents until shutdown.
#[derive(Clone)]
pub struct Fetcher {
    pub store: Arc<dyn Store>,
    pub sites: Arc<Sites>,
    pub config: DocumentsConfig,
    /// Notified when a delivery queued documents.
    pub wake: Arc<Notify>,
    /// Told of a document given up.
    pub signals: Arc<crate::signals::Signals>,
}

impl Fetcher {
    /// Runs until `stop` turns true, `documents.concurrency` downloads at a time: a slot that
    /// frees is filled at once, so one slow document holds up only its own slot. A download cut
    /// off by shutdown stays pending (on PostgreSQL, claimable again once its lease ends).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let lease = Duration::from_secs(self.config.request_timeout_secs.saturating_mul(3) + 60);
        let mut running = tokio::task::JoinSet::new();
        // What each running task fetches: the embedded store lists a document as due until its
        // outcome is saved, so the claim leaves out those already being fetched.
        let mut in_flight: HashMap<tokio::task::Id, DocumentKey> = HashMap::new();
        loop {
            if *stop.borrow() {
                return;
            }
            let free = self.config.concurrency.saturating_sub(running.len());
            let mut idle = IDLE;
            if free > 0 {
                let busy: Vec<DocumentKey> = in_flight.values().cloned().collect();
                let claimed = tokio::select! {
                    claimed = self.store.due_documents(
                        OffsetDateTime::now_utc(),
                        lease,
                        free,
                        &busy,
                    ) => claimed,
                    _ = stop.wait_for(|s| *s) => return,
                };
                match claimed {
                    Ok(due) => {
                        // Each one claimed is started (on PostgreSQL a claim leases it).
                        for document in due {
                            let (fetcher, at) = (self.clone(), key(&document));
                            // Its log lines name the document (ids only).
                            let span = tracing::info_span!(
                                "fetch",
                                referral = %document.referral,
                                version = document.version,
                                index = document.index
                            );
                            let task = running.spawn(
                                async move { fetcher.fetch(document).await }.instrument(span),
                            );
                            in_flight.insert(task.id(), at);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the documents due");
                        idle = ERROR_PAUSE;
                    }
                }
            }
            tokio::select! {
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    let (id, result) = match done {
                        Ok((id, result)) => (id, result),
                        Err(e) => (e.id(), Err(StoreError::unavailable("a document fetch did not finish").caused_by(e))),
                    };
                    in_flight.remove(&id);
                    if let Err(e) = result {
                        tracing::error!(error = %e, "cannot save a document's outcome");
                    }
                }
                () = self.wake.notified() => {}
                () = tokio::time::sleep(idle) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One attempt at one document, and its outcome saved.
    async fn fetch(&self, mut document: DocumentRecord) -> Result<(), StoreError> {
        let referral = self.store.referral(&document.referral).await?;
        let site = referral
            .as_ref()
            .and_then(|r| self.sites.for_service(r.service_id.as_ref()));
        let result = match site {
            None => Err(SendError::Rejected(
                "no Ocean site in [sites] answers for this referral's External Service ID".into(),
            )),
            Some(site) => match address(site.client().base_url(), &document) {
                Err(reason) => Err(SendError::Rejected(reason)),
                Ok(url) => {
                    site.client()
                        .fetch(
                            url.as_str(),
                            Duration::from_secs(self.config.request_timeout_secs),
                            self.config.max_bytes,
                        )
                        .await
                }
            },
        };
        let now = OffsetDateTime::now_utc();
        document.attempts += 1;
        let mut bytes = None;
        match result {
            Ok((body, content_type)) => {
                document.state = DocumentState::Fetched;
                document.fetched_at = Some(now);
                document.size = body.len() as u64;
                document.sha256 = Some(sha256_hex(&body));
                if content_type.is_some() {
                    document.content_type = content_type;
                }
                document.last_error = None;
                bytes = Some(body);
            }
            Err(SendError::Retry { reason, after }) => {
                let horizon = time::Duration::seconds(
                    i64::try_from(self.config.retry_horizon_secs).unwrap_or(i64::MAX),
                );
                // Retry-After is honoured but never beyond the horizon (a wait that cannot even
                // be added to now is past it).
                let wait = backoff(&self.config, document.attempts).max(after.unwrap_or_default());
                let next = time::Duration::try_from(wait)
                    .ok()
                    .and_then(|wait| now.checked_add(wait))
                    .filter(|next| *next - document.created_at <= horizon);
                if let Some(next) = next {
                    document.next_attempt_at = next;
                    document.last_error = Some(reason);
                } else {
                    document.state = DocumentState::Failed;
                    document.last_error = Some(format!(
                        "given up after {} attempts over documents.retry_horizon_secs: {reason}",
                        document.attempts
                    ));
                }
            }
            Err(SendError::Rejected(reason)) => {
                document.state = DocumentState::Failed;
                document.last_error = Some(reason);
            }
        }
        self.store.save_document(&document, bytes).await?;
        let action = match document.state {
            DocumentState::Fetched => "DOCUMENT_FETCHED",
            DocumentState::Failed => {
                self.signals.document_given_up(
                    document.referral.as_str(),
                    document.version,
                    document.index,
                );
                "DOCUMENT_FAILED"
            }
            DocumentState::Pending => {
                tracing::info!(
                    referral = %document.referral,
                    version = document.version,
                    index = document.index,
                    attempts = document.attempts,
                    "document fetch will be retried"
                );
                return Ok(());
            }
        };
        let actor = site.map_or_else(
            || "relay".to_owned(),
            |site| format!("site:{}", site.name()),
        );
        let details = serde_json::json!({
            "referral": document.referral.as_str(),
            "version": document.version,
            "document": document.index,
            "kind": document.kind.as_str(),
            "size": document.size,
            "error": document.last_error,
        });
        self.store.audit(action, &actor, details).await.map(drop)
    }
}

/// The [`Backoff`] from `initial_backoff_secs` to `max_backoff_secs`, without jitter.
fn backoff(config: &DocumentsConfig, attempts: u32) -> Duration {
    Backoff::new(
        Duration::from_secs(config.initial_backoff_secs),
        Duration::from_secs(config.max_backoff_secs),
    )
    .after(attempts)
}

/// Where a document is fetched from on the site at `base`: the letter at
/// `{base}/svc/fhir/v1/ServiceRequest/{ref}/$letter?attachments=true`; an attachment at its
/// `attachment.url`, resolved against `{base}/svc/fhir/v1/` when relative. An absolute URL on
/// another origin than the site's is refused: the site's token must not be sent elsewhere.
/// On the site, an attachment is fetched only from a document's own address under its FHIR
/// base: `Binary/{id}`, `DocumentReference/{id}/$binary`, or this referral's own `$letter`
/// (the token reads every referral of the site; a message must not make it fetch another
/// referral's letter, a search, or any other path, and file what comes back under this one).
fn address(base: &str, document: &DocumentRecord) -> Result<Url, String> {
    let site = Url::parse(&format!("{base}/svc/fhir/v1/"))
        .map_err(|_| "the site's base_url is not a URL".to_owned())?;
    match (document.kind, document.source.as_deref()) {
        (DocumentKind::Letter, _) => letter(&site, &document.referral),
        (DocumentKind::Attachment, Some(source)) => {
            let url = site
                .join(source)
                .map_err(|_| "the attachment's url is not a URL".to_owned())?;
            if url.origin() != site.origin() {
                return Err(
                    "the attachment's url is not on the Ocean site's host; it is not fetched with the site's token"
                        .into(),
                );
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(
                    "the attachment's url carries a user name or password; it is not fetched"
                        .into(),
                );
            }
            let own_letter = letter(&site, &document.referral).ok();
            let segments: Vec<&str> = url
                .path()
                .strip_prefix(site.path())
                .map(|path| path.split('/').collect())
                .unwrap_or_default();
            let document_path = match segments.as_slice() {
                ["Binary", id] | ["DocumentReference", id, "$binary"] => {
                    fhir_id(id) && url.query().is_none()
                }
                ["ServiceRequest", _, "$letter"] => {
                    own_letter.is_some_and(|own| own.path() == url.path())
                        && matches!(url.query(), None | Some("attachments=true"))
                }
                _ => false,
            };
            if !document_path {
                return Err(
                    "the attachment's url is not a document's address on the site (Binary/{id}, DocumentReference/{id}/$binary or this referral's $letter); it is not fetched with the site's token"
                        .into(),
                );
            }
            Ok(url)
        }
        (DocumentKind::Attachment, None) => Err("the attachment has no url".into()),
    }
}

/// Whether `segment` is a FHIR resource id ([`crate::fhir::is_fhir_id`]). Nothing else is put
/// in, or accepted in, a document's address: an encoded `/`, `\` or `;` could reach another
/// path on a server that decodes them.
fn fhir_id(segment: &str) -> bool {
    crate::fhir::is_fhir_id(segment)
}

/// The referral's letter on the site whose FHIR base is `site`.
fn letter(site: &Url, referral: &crate::domain::ReferralRef) -> Result<Url, String> {
    if !fhir_id(referral.as_str()) {
        return Err(
            "the referral reference is not a FHIR id (1 to 64 letters, digits, '-' and '.', not only dots), so it cannot name the referral in the letter's address"
                .into(),
        );
    }
    let mut url = site.clone();
    url.path_segments_mut()
        .map_err(|()| "the site's base_url cannot take a path".to_owned())?
        .pop_if_empty()
        .extend(["ServiceRequest", referral.as_str(), "$letter"]);
    url.set_query(Some("attachments=true"));
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ReferralRef;

    fn document(kind: DocumentKind, source: Option<&str>) -> DocumentRecord {
        DocumentRecord {
            referral: ReferralRef::parse("TST-1.2").unwrap(),
            version: 1,
            index: 0,
            kind,
            source: source.map(str::to_owned),
            document_id: None,
            title: None,
            state: DocumentState::Pending,
            attempts: 0,
            created_at: OffsetDateTime::UNIX_EPOCH,
            next_attempt_at: OffsetDateTime::UNIX_EPOCH,
            last_error: None,
            fetched_at: None,
            content_type: None,
            size: 0,
            sha256: None,
            purged: false,
        }
    }

    #[test]
    fn addresses_stay_on_the_site() {
        let base = "https://ocean.example.test";
        assert_eq!(
            address(base, &document(DocumentKind::Letter, None))
                .unwrap()
                .as_str(),
            "https://ocean.example.test/svc/fhir/v1/ServiceRequest/TST-1.2/$letter?attachments=true"
        );
        let relative = document(
            DocumentKind::Attachment,
            Some("DocumentReference/d1/$binary"),
        );
        assert_eq!(
            address(base, &relative).unwrap().as_str(),
            "https://ocean.example.test/svc/fhir/v1/DocumentReference/d1/$binary"
        );
        let absolute = document(
            DocumentKind::Attachment,
            Some("https://ocean.example.test/svc/fhir/v1/DocumentReference/d2/$binary"),
        );
        assert!(address(base, &absolute).is_ok());
        for elsewhere in [
            "https://attacker.example.test/steal",
            "http://ocean.example.test/svc/x",
            "//attacker.example.test/x",
        ] {
            let d = document(DocumentKind::Attachment, Some(elsewhere));
            assert!(
                address(base, &d).unwrap_err().contains("not on"),
                "{elsewhere}"
            );
        }
        let credentials = document(
            DocumentKind::Attachment,
            Some("https://user:pw@ocean.example.test/svc/fhir/v1/DocumentReference/d3/$binary"),
        );
        assert!(
            address(base, &credentials)
                .unwrap_err()
                .contains("password")
        );
        // On the site, only a document's own address: not another referral's letter, a
        // search, or any other path the token could read.
        for own in [
            "Binary/b1",
            "ServiceRequest/TST-1.2/$letter",
            "ServiceRequest/TST-1.2/$letter?attachments=true",
            "https://ocean.example.test/svc/fhir/v1/Binary/b2",
        ] {
            let d = document(DocumentKind::Attachment, Some(own));
            assert!(address(base, &d).is_ok(), "{own}");
        }
        for other in [
            "ServiceRequest/OTHER-REF/$letter",
            "ServiceRequest/TST-1.2/$letter?attachments=true&x=1",
            "Binary/..%2FServiceRequest%2FOTHER%2F%24letter",
            "Binary/..%5CPatient%5Cp1",
            "DocumentReference/..;/$binary",
            "Binary/x;jsessionid=1",
            "DocumentReference?patient=p1",
            "Patient/p1",
            "DocumentReference/d1/$binary?_format=json",
            "DocumentReference/d1/../../ServiceRequest/OTHER/$letter",
            "/svc/oauth2/token",
            "/ocean/portal.html",
            "Binary/",
        ] {
            let d = document(DocumentKind::Attachment, Some(other));
            assert!(
                address(base, &d)
                    .unwrap_err()
                    .contains("not a document's address"),
                "{other}"
            );
        }
        let mut odd = document(DocumentKind::Letter, None);
        for referral in [".", "..", "X/../OTHER", "TST 1", "a;b"] {
            odd.referral = ReferralRef::parse(referral).unwrap();
            assert!(
                address(base, &odd).unwrap_err().contains("not a FHIR id"),
                "{referral}"
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let config = DocumentsConfig {
            fetch: true,
            request_timeout_secs: 1,
            max_bytes: 1,
            retry_horizon_secs: 10,
            initial_backoff_secs: 10,
            max_backoff_secs: 60,
            concurrency: 1,
            max_per_delivery: 1,
        };
        let secs: Vec<u64> = (1..=5).map(|n| backoff(&config, n).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 60, 60]);
    }
}

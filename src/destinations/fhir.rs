//! Sending to a FHIR destination: each version as a FHIR R4 `transaction` Bundle
//! ([`crate::fhir::transaction`]) posted to the server's base with `Accept` and `Content-Type`
//! `application/fhir+json`, authenticated by a static bearer token or OAuth2 client
//! credentials (cached; fetched anew once when the server answers 401).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use tokio::sync::OwnedMutexGuard;

use crate::config::{DestinationConfig, DocumentsMode};
use crate::fhir::transaction::{Document, transaction};
use crate::outgoing::SendError;
use crate::outgoing::answer::{outcome_text, retry_after, transport};
use crate::outgoing::token::{ClientCredentials, Grant};
use crate::secret::Secret;
use crate::store::{DocumentKind, DocumentState, QueuedMessage, Store, StoreError, sha256_hex};

const FHIR_JSON: &str = "application/fhir+json";

enum Authorization {
    None,
    Bearer(Secret),
    ClientCredentials(Box<ClientCredentials>),
}

/// A FHIR destination's HTTP client and credentials.
pub struct FhirSender {
    /// One lock per patient key whose sends are in flight (see [`FhirSender::patient_turn`]).
    patients: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    http: reqwest::Client,
    /// The server's base, without a trailing `/`: transactions are posted to it.
    base: String,
    authorization: Authorization,
    documents: DocumentsMode,
    inline_max_bytes: u64,
}

impl FhirSender {
    pub fn new(name: &str, config: &DestinationConfig) -> anyhow::Result<Self> {
        let http = super::http_client(config)?;
        let authorization = match (&config.bearer_token, &config.token_url) {
            (Some(token), _) => Authorization::Bearer(token.clone()),
            (None, Some(token_url)) => {
                Authorization::ClientCredentials(Box::new(ClientCredentials::new(
                    http.clone(),
                    Grant {
                        token_url: token_url.clone(),
                        client_id: config.client_id.clone().unwrap_or_default(),
                        client_secret: config.client_secret.clone().unwrap_or_default(),
                        token_auth: config.token_auth,
                        scope: config.scope.clone(),
                    },
                    format!("destination '{name}'"),
                )))
            }
            (None, None) => Authorization::None,
        };
        Ok(Self {
            patients: Mutex::default(),
            http,
            base: config.url.trim_end_matches('/').to_owned(),
            authorization,
            documents: config.documents,
            inline_max_bytes: config.inline_max_bytes,
        })
    }

    /// The bearer token to send, if any: with client credentials, the cached one unless it is
    /// `rejected` (the server answered 401 to it).
    async fn token(&self, rejected: Option<&str>) -> Result<Option<String>, SendError> {
        Ok(match &self.authorization {
            Authorization::None => None,
            Authorization::Bearer(token) => Some(token.expose().to_owned()),
            Authorization::ClientCredentials(credentials) => {
                Some(credentials.token(rejected).await?)
            }
        })
    }

    /// Waits until no other send for `patient` is in flight here (two referrals of one new
    /// patient must not both create it); the guard ends the wait for the next.
    async fn patient_turn(&self, patient: Option<&str>) -> Option<OwnedMutexGuard<()>> {
        let turn = {
            let mut turns = self.patients.lock().unwrap_or_else(PoisonError::into_inner);
            // Forget the patients nobody waits for.
            turns.retain(|_, turn| Arc::strong_count(turn) > 1);
            Arc::clone(turns.entry(patient?.to_owned()).or_default())
        };
        Some(turn.lock_owned().await)
    }

    /// Sends `message`'s version as a transaction.
    ///
    /// # Errors
    /// [`SendError::Rejected`] when the version is gone or holds nothing a transaction can
    /// carry, or the server refused it (a 4xx other than 401, 403, 408, 409 and 429; its
    /// OperationOutcome's text is in the reason); [`SendError::Retry`] otherwise.
    pub async fn send(&self, store: &dyn Store, message: &QueuedMessage) -> Result<(), SendError> {
        let (body, patient) = self
            .transaction(store, message)
            .await
            .map_err(|e| match e {
                Unsendable::Store(e) => SendError::Retry {
                    reason: format!("the store could not read the version: {e}"),
                    after: None,
                },
                Unsendable::Gone => super::gone(message.version),
                Unsendable::Transaction(e) => SendError::Rejected(format!(
                    "version {} cannot be sent as a FHIR transaction: {e}",
                    message.version
                )),
            })?;
        let _turn = self.patient_turn(patient.as_deref()).await;
        let mut rejected: Option<String> = None;
        loop {
            let mut request = self
                .http
                .post(&self.base)
                .header(CONTENT_TYPE, FHIR_JSON)
                .header(ACCEPT, FHIR_JSON)
                .body(body.clone());
            let token = self.token(rejected.as_deref()).await?;
            if let Some(token) = &token {
                request = request.header(AUTHORIZATION, format!("Bearer {token}"));
            }
            let response = request.send().await.map_err(|e| SendError::Retry {
                reason: format!("the FHIR server is unreachable: {}", transport(&e)),
                after: None,
            })?;
            let status = response.status();
            if status.is_success() {
                // A transaction is answered with a Bundle (`transaction-response`): anything
                // else (a sign-in or portal page served with 200) means the URL is not the
                // server's base, and nothing was written.
                let json = response
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|t| t.to_ascii_lowercase().contains("json"));
                if json {
                    return Ok(());
                }
                return Err(SendError::Rejected(format!(
                    "the FHIR server answered {status} without a JSON transaction-response; is url the server's FHIR base?"
                )));
            }
            let oauth = matches!(self.authorization, Authorization::ClientCredentials(_));
            if status == StatusCode::UNAUTHORIZED && oauth && rejected.is_none() {
                rejected = token;
                continue;
            }
            let after = retry_after(&response);
            let reason = format!(
                "the FHIR server answered {status}{}",
                outcome_text(response).await
            );
            // Credentials and scopes are fixed by an operator, and a conflict between writers
            // passes: versions wait for that (up to the retry horizon) rather than die at once.
            if matches!(
                status,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::CONFLICT
            ) {
                return Err(SendError::Retry { reason, after });
            }
            return Err(SendError::from_status(status, reason, after));
        }
    }

    /// The transaction Bundle of `message`'s version, from the store.
    async fn transaction(
        &self,
        store: &dyn Store,
        message: &QueuedMessage,
    ) -> Result<(Vec<u8>, Option<String>), Unsendable> {
        let referral = &message.referral;
        let versions = store.versions(referral).await?;
        if !versions
            .iter()
            .any(|v| v.version == message.version && !v.purged)
        {
            return Err(Unsendable::Gone);
        }
        let bundle = store
            .payload(referral, message.version)
            .await?
            .ok_or(Unsendable::Gone)?;
        let mut documents = Vec::new();
        if self.documents != DocumentsMode::None {
            for d in store.documents(referral).await? {
                if d.version != message.version || d.state != DocumentState::Fetched || d.purged {
                    continue;
                }
                let Some(bytes) = store.document_bytes(referral, d.version, d.index).await? else {
                    continue;
                };
                documents.push(Document {
                    title: d.title,
                    content_type: d.content_type,
                    sha256: sha256_hex(&bytes),
                    bytes,
                    letter: d.kind == DocumentKind::Letter,
                });
            }
        }
        let bundle = transaction(
            &bundle,
            referral.as_str(),
            &documents,
            self.inline_max_bytes,
        )
        .map_err(Unsendable::Transaction)?;
        let body = serde_json::to_vec(&bundle.bundle).expect("a JSON value encodes");
        Ok((body, bundle.patient))
    }
}

/// Why a version's transaction could not be made.
enum Unsendable {
    Store(StoreError),
    Gone,
    Transaction(crate::fhir::transaction::TransactionError),
}

impl From<StoreError> for Unsendable {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

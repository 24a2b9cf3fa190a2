//! Destinations: the clinic's systems each stored referral version is pushed to
//! (`[destinations.NAME]`). Every version a destination takes is queued in the same write as
//! the delivery that stored it (see [`crate::store::QueueStore`]); a [worker](worker) per
//! destination sends its queue under the rules of [`crate::outgoing`], the same as the Ocean
//! outbox's.

mod envelope;
mod fhir;
mod webhook;
pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::config::{Config, DestinationConfig, DestinationKind};
use crate::domain::ReferralRef;
use crate::outgoing::SendError;
use crate::store::{MessageState, QueueRoute, QueuedMessage, Store, StoreError, VersionRecord};

pub use envelope::{Envelope, build_envelope};
pub use fhir::FhirSender;
pub use webhook::{WebhookSender, signature};

/// One configured destination, ready to send.
pub struct Destination {
    pub name: String,
    pub config: DestinationConfig,
    /// Which versions it takes.
    pub route: QueueRoute,
    /// Wakes its worker: a version was queued, a message replayed, the queue resumed.
    pub wake: Notify,
    pub sender: Sender,
}

/// How a destination is sent to, by its `kind`.
pub enum Sender {
    Webhook(WebhookSender),
    Fhir(Box<FhirSender>),
}

impl Sender {
    pub fn new(name: &str, config: &DestinationConfig) -> anyhow::Result<Self> {
        Ok(match config.kind {
            DestinationKind::Webhook => Self::Webhook(WebhookSender::new(config)?),
            DestinationKind::Fhir => Self::Fhir(Box::new(FhirSender::new(name, config)?)),
        })
    }

    /// Sends `message`'s version, read from `store` now.
    ///
    /// # Errors
    /// Why it did not land, under the rules of [`crate::outgoing`].
    pub async fn send(
        &self,
        store: &dyn Store,
        message: &QueuedMessage,
        config: &DestinationConfig,
        now: OffsetDateTime,
    ) -> Result<(), SendError> {
        if let Some(id) = message.patient_form {
            return match self {
                Self::Webhook(webhook) => {
                    use crate::patient_engagement::WebhookBody;
                    let body =
                        match crate::patient_engagement::webhook_body(store, message, id, now)
                            .await
                            .map_err(|e| SendError::Retry {
                                reason: format!("the store could not read the patient form: {e}"),
                                after: None,
                            })? {
                            WebhookBody::Ready(body) => body,
                            WebhookBody::NotYet => {
                                return Err(SendError::Retry {
                                    reason: format!(
                                        "patient form {id} is not saved as fetched yet"
                                    ),
                                    after: None,
                                });
                            }
                            WebhookBody::Gone(why) => {
                                return Err(SendError::Rejected(format!(
                                    "patient form {id} cannot be sent: {why}"
                                )));
                            }
                        };
                    webhook
                        .post(&message.webhook_id, body, "application/json")
                        .await
                }
                Self::Fhir(_) => Err(SendError::Rejected(
                    "a FHIR destination takes no patient forms".into(),
                )),
            };
        }
        match self {
            Self::Webhook(webhook) => {
                let envelope = build_envelope(
                    store,
                    message,
                    config.documents,
                    config.inline_max_bytes,
                    now,
                )
                .await
                .map_err(|e| SendError::Retry {
                    reason: format!("the store could not read the version: {e}"),
                    after: None,
                })?
                .ok_or_else(|| gone(message.version))?;
                let id = if message.webhook_id.is_empty() {
                    format!("msg_{}", message.id)
                } else {
                    message.webhook_id.clone()
                };
                webhook.send(&id, &envelope).await
            }
            Self::Fhir(fhir) => fhir.send(store, message).await,
        }
    }
}

/// The HTTP client of a destination: `request_timeout_secs` per request (connecting within 10 s
/// of it), and no redirect followed (a receiver that redirects is answering wrongly: the answer
/// says so rather than the relay posting elsewhere).
fn http_client(config: &DestinationConfig) -> reqwest::Result<reqwest::Client> {
    let timeout = std::time::Duration::from_secs(config.request_timeout_secs);
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(10)))
        .user_agent(concat!("referral-relay/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A message whose version is no longer stored: a dead letter.
fn gone(version: u64) -> SendError {
    SendError::Rejected(format!(
        "version {version} of the referral is no longer stored (purged by retention)"
    ))
}

/// Every configured destination, in name order.
#[derive(Clone, Default)]
pub struct Destinations {
    list: Arc<Vec<Arc<Destination>>>,
    routes: Arc<[QueueRoute]>,
    /// One backfill at a time in this process: two at once would both find a version not yet
    /// queued and queue it twice.
    backfilling: Arc<tokio::sync::Mutex<()>>,
}

impl Destinations {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let mut list = Vec::new();
        for (name, c) in &config.destinations {
            let route = QueueRoute {
                queue: name.clone(),
                events: c.events.clone(),
                service_ids: c.service_ids.clone(),
                integrations: c.integrations.clone(),
            };
            list.push(Arc::new(Destination {
                name: name.clone(),
                sender: Sender::new(name, c)?,
                config: c.clone(),
                route,
                wake: Notify::new(),
            }));
        }
        let routes = list.iter().map(|d| d.route.clone()).collect();
        Ok(Self {
            list: Arc::new(list),
            routes,
            backfilling: Arc::default(),
        })
    }

    /// The routes a delivery is queued by ([`crate::store::NewDelivery::routes`]).
    pub fn routes(&self) -> Arc<[QueueRoute]> {
        Arc::clone(&self.routes)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Destination>> {
        self.list.iter().find(|d| d.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Destination>> {
        self.list.iter()
    }

    /// The destinations patients' completed eForms are pushed to: the webhooks that take
    /// everything (no `service_ids`, `integrations` or `events` filter; a submission has none
    /// of those to match). FHIR servers take none: there is no FHIR mapping of them here.
    pub fn for_patient_forms(&self) -> impl Iterator<Item = &Arc<Destination>> {
        self.list.iter().filter(|d| {
            matches!(d.sender, Sender::Webhook(_))
                && d.route.service_ids.is_empty()
                && d.route.integrations.is_empty()
                && d.route.events.is_empty()
        })
    }

    /// Wakes every worker: a delivery was stored, and may have been queued for any of them.
    pub fn wake_all(&self) {
        for destination in self.list.iter() {
            destination.wake.notify_one();
        }
    }
}

/// Why a destination's queue could not be steered as asked.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("no destination '{0}' is configured")]
    Unknown(String),
    #[error("destination '{queue}' has no message {id}")]
    UnknownMessage { queue: String, id: u64 },
    /// Replay and discard apply to dead letters only.
    #[error("message {id} is not a dead letter; only dead letters are {verb}")]
    NotDead { id: u64, verb: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Destinations {
    fn named(&self, name: &str) -> Result<&Arc<Destination>, DestinationError> {
        self.get(name)
            .ok_or_else(|| DestinationError::Unknown(name.to_owned()))
    }

    /// Dead letter `id` of destination `name`.
    async fn dead_letter(
        &self,
        store: &dyn Store,
        name: &str,
        id: u64,
        verb: &'static str,
    ) -> Result<QueuedMessage, DestinationError> {
        self.named(name)?;
        let message = store
            .message(id)
            .await?
            .filter(|m| m.queue == name)
            .ok_or_else(|| DestinationError::UnknownMessage {
                queue: name.to_owned(),
                id,
            })?;
        if message.state != MessageState::Dead {
            return Err(DestinationError::NotDead { id, verb });
        }
        Ok(message)
    }

    /// Sends dead letter `id` again, at once (its retry horizon starts over); audited as
    /// `DESTINATION_REPLAYED` for `actor`.
    ///
    /// # Errors
    /// An unknown destination or message, a message that is not dead, or the store's.
    pub async fn replay(
        &self,
        store: &dyn Store,
        name: &str,
        id: u64,
        actor: &str,
    ) -> Result<QueuedMessage, DestinationError> {
        let mut message = self.dead_letter(store, name, id, "replayed").await?;
        let now = OffsetDateTime::now_utc();
        message.state = MessageState::Pending;
        message.next_attempt_at = now;
        message.created_at = now;
        self.leave_dead(store, message, "replayed", "DESTINATION_REPLAYED", actor)
            .await
    }

    /// Gives up on dead letter `id`: it stays on record, and the referral's later messages
    /// go out; audited as `DESTINATION_DISCARDED` for `actor`.
    ///
    /// # Errors
    /// As [`Destinations::replay`].
    pub async fn discard(
        &self,
        store: &dyn Store,
        name: &str,
        id: u64,
        actor: &str,
    ) -> Result<QueuedMessage, DestinationError> {
        let mut message = self.dead_letter(store, name, id, "discarded").await?;
        message.state = MessageState::Discarded;
        self.leave_dead(store, message, "discarded", "DESTINATION_DISCARDED", actor)
            .await
    }

    /// Records `message`, a dead letter until now, in its new state, audits `action` for
    /// `actor` and wakes its destination's worker; `NotDead` when it was replayed or discarded
    /// meanwhile (a second click, another operator).
    async fn leave_dead(
        &self,
        store: &dyn Store,
        message: QueuedMessage,
        verb: &'static str,
        action: &str,
        actor: &str,
    ) -> Result<QueuedMessage, DestinationError> {
        if !store.save_message(&message, MessageState::Dead).await? {
            return Err(DestinationError::NotDead {
                id: message.id,
                verb,
            });
        }
        audit(store, action, actor, &message).await?;
        self.named(&message.queue)?.wake.notify_one();
        Ok(message)
    }

    /// Pauses or resumes destination `name` (durably, for every replica); audited as
    /// `DESTINATION_PAUSED` or `DESTINATION_RESUMED` for `actor`.
    ///
    /// # Errors
    /// An unknown destination, or the store's.
    pub async fn set_paused(
        &self,
        store: &dyn Store,
        name: &str,
        paused: bool,
        actor: &str,
    ) -> Result<(), DestinationError> {
        let destination = self.named(name)?;
        store.set_queue_paused(name, paused).await?;
        let action = if paused {
            "DESTINATION_PAUSED"
        } else {
            "DESTINATION_RESUMED"
        };
        store
            .audit(action, actor, serde_json::json!({"destination": name}))
            .await?;
        destination.wake.notify_one();
        Ok(())
    }

    /// Queues for destination `name` every stored version received since `since` that it
    /// takes; audited as `DESTINATION_BACKFILLED` for `actor`. Returns how many were queued.
    ///
    /// # Errors
    /// An unknown destination, or the store's.
    pub async fn backfill(
        &self,
        store: &dyn Store,
        name: &str,
        since: OffsetDateTime,
        actor: &str,
    ) -> Result<u64, DestinationError> {
        let destination = self.named(name)?;
        let queued = {
            let _one_at_a_time = self.backfilling.lock().await;
            backfill(store, &destination.route, since).await?
        };
        let since_text = since
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        store
            .audit(
                "DESTINATION_BACKFILLED",
                actor,
                serde_json::json!({"destination": name, "since": since_text, "queued": queued}),
            )
            .await?;
        destination.wake.notify_one();
        Ok(queued)
    }
}

/// Versions read from the feed, and queued in one write, per step of a backfill.
const BACKFILL_BATCH: usize = 256;

/// Queues for `route` every stored version received at or after `since` that it takes and that
/// is newer than any version of its referral queued for it already (in whatever state): as if
/// it had been configured when each arrived (marked `backfill`), and so that a referral's
/// versions still reach the destination in order. Returns how many were queued.
async fn backfill(
    store: &dyn Store,
    route: &QueueRoute,
    since: OffsetDateTime,
) -> Result<u64, StoreError> {
    let mut after = store.seq_before(since).await?;
    let mut queued = 0;
    let now = OffsetDateTime::now_utc();
    loop {
        let events = store.events_after(after, BACKFILL_BATCH).await?;
        let Some(last) = events.last() else {
            return Ok(queued);
        };
        after = last.seq;
        // Each referral's versions, and the newest already queued for the route, read once per
        // step (and moved on as this step queues more).
        let mut versions: HashMap<ReferralRef, (Vec<VersionRecord>, u64)> = HashMap::new();
        let mut messages = Vec::new();
        for event in events.iter().filter(|e| e.received_at >= since) {
            if !versions.contains_key(&event.referral) {
                let read = store.versions(&event.referral).await?;
                let newest = store
                    .referral_messages(&event.referral)
                    .await?
                    .into_iter()
                    .filter(|m| m.queue == route.queue)
                    .map(|m| m.version)
                    .max()
                    .unwrap_or(0);
                versions.insert(event.referral.clone(), (read, newest));
            }
            let Some((read, newest)) = versions.get_mut(&event.referral) else {
                continue;
            };
            if event.version <= *newest {
                continue;
            }
            *newest = event.version;
            let Some(version) = read.iter().find(|v| v.version == event.version) else {
                continue;
            };
            if route.takes(
                &version.integration,
                version.service_id.as_ref(),
                version.summary.latest_change,
            ) {
                let mut message = QueuedMessage::pending(
                    &route.queue,
                    event.referral.clone(),
                    event.version,
                    now,
                );
                message.backfill = true;
                messages.push(message);
            }
        }
        queued += messages.len() as u64;
        if !messages.is_empty() {
            store.enqueue_messages(messages).await?;
        }
    }
}

async fn audit(
    store: &dyn Store,
    action: &str,
    actor: &str,
    message: &QueuedMessage,
) -> Result<(), StoreError> {
    let details = serde_json::json!({
        "destination": message.queue,
        "message": message.id,
        "referral": message.referral.as_str(),
        "version": message.version,
    });
    store.audit(action, actor, details).await.map(|_| ())
}

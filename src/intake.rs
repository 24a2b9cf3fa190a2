//! Filing a delivery: what happens between the webhook's authenticated, decoded body and the
//! store. The message is read (accepting only the integration's event codes), given its
//! External Service ID (the message's, else the integration's default), capped in how many
//! attachments it queues, keyed for deduplication (a signed delivery by its webhook-id,
//! otherwise by its Bundle.id, with the body's hash), and stored with its documents queued when
//! an Ocean site answers for it; then the document fetcher and the destinations are woken. A
//! referral another integration owns is refused and audited. The webhook route keeps HTTP.

use std::sync::Arc;

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::config::Config;
use crate::destinations::Destinations;
use crate::domain::{EventCode, IntegrationName, ReferralRef, ServiceId};
use crate::fhir::{ParseError, Parsed, parse_message};
use crate::ocean::sites::Sites;
use crate::store::{
    NewDelivery, PutOutcome, ServiceAssignment, Store, StoreError, delivery_key, sha256_hex,
};
use crate::telemetry::Metrics;

/// Bodies up to this size (bytes) are read on the async worker that received them: well under a
/// millisecond of work, less than the two thread switches of the blocking pool.
const READ_IN_PLACE_BYTES: usize = 64 * 1024;

/// The integration a delivery came through, as filing needs it.
pub struct Sender<'a> {
    pub name: &'a IntegrationName,
    /// Accepted event codes; empty accepts all.
    pub events: &'a [EventCode],
    /// The External Service ID of messages that name none.
    pub default_service: Option<&'a ServiceId>,
    /// Integrations whose referrals it may deliver for, besides its own.
    pub shares_with: &'a [IntegrationName],
}

/// What a message was, as the answer to its sender names it.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub event: EventCode,
    pub message_header_id: Option<String>,
}

/// What filing a delivery did.
#[derive(Debug)]
pub enum Filed {
    /// Stored as `version` of `referral`.
    Stored {
        receipt: Receipt,
        referral: ReferralRef,
        version: u64,
    },
    /// Already stored, as `version` of `referral`; nothing new was stored.
    Duplicate {
        receipt: Receipt,
        referral: ReferralRef,
        version: u64,
    },
    /// An event code the integration does not accept: acknowledged, not stored.
    Ignored(Receipt),
}

/// Why a delivery was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// Not a FHIR message Bundle (400).
    #[error("{0}")]
    Malformed(String),
    /// A Bundle the relay cannot file (422).
    #[error("{0}")]
    Unusable(String),
    /// The referral belongs to an integration that does not share with the sender (403).
    #[error(
        "referral {referral} belongs to integration '{owner}', which does not share referrals with integration '{integration}'; nothing was stored"
    )]
    OwnedElsewhere {
        referral: ReferralRef,
        owner: IntegrationName,
        integration: IntegrationName,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the message on the blocking pool did not finish.
    #[error("reading the message did not finish")]
    Interrupted(#[source] tokio::task::JoinError),
}

/// Files deliveries (see the module documentation).
pub struct Intake {
    store: Arc<dyn Store>,
    sites: Arc<Sites>,
    destinations: Destinations,
    /// `documents.fetch`.
    fetch: bool,
    /// `documents.max_per_delivery`.
    max_per_delivery: usize,
    /// Wakes the document fetcher when a delivery queued documents.
    documents_wake: Arc<Notify>,
    metrics: Metrics,
}

impl Intake {
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        sites: Arc<Sites>,
        destinations: Destinations,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            sites,
            destinations,
            fetch: config.documents.fetch,
            max_per_delivery: config.documents.max_per_delivery,
            documents_wake: Arc::default(),
            metrics,
        }
    }

    /// What the document fetcher waits on between passes.
    pub fn documents_wake(&self) -> Arc<Notify> {
        Arc::clone(&self.documents_wake)
    }

    /// Reads `body` (decoded, as received) from `sender` and stores it; `webhook_id` is the
    /// Standard Webhooks id of a signed delivery. Stored means on disk.
    ///
    /// # Errors
    /// See [`IntakeError`]; nothing is stored.
    pub async fn file(
        &self,
        sender: &Sender<'_>,
        body: Bytes,
        webhook_id: Option<String>,
    ) -> Result<Filed, IntakeError> {
        let (parsed, sha256, body) = read(sender, body).await?;
        let mut message = match parsed {
            Parsed::Message(message) => message,
            Parsed::Ignored {
                event,
                message_header_id,
            } => {
                tracing::info!(integration = %sender.name, %event, "event not accepted by this integration; acknowledged, not stored");
                return Ok(Filed::Ignored(Receipt {
                    event,
                    message_header_id,
                }));
            }
        };
        let service = match (&message.service_id, sender.default_service) {
            (Some(named), _) => ServiceAssignment::Named(named.clone()),
            (None, Some(default)) => ServiceAssignment::Default(default.clone()),
            (None, None) => ServiceAssignment::Unassigned,
        };
        let fetch_documents = self.fetches_documents(&service);
        self.cap_documents(
            sender,
            &mut message.summary.documents,
            &mut message.problems,
        );
        let receipt = Receipt {
            event: message.event.clone(),
            message_header_id: message.message_header_id.clone(),
        };
        let referral = message.referral.clone();
        let delivery = NewDelivery {
            // A signed delivery's webhook-id names it; otherwise its Bundle.id does.
            dedup_key: delivery_key(
                sender.name,
                webhook_id.as_deref().or(message.bundle_id.as_deref()),
                &sha256,
            ),
            sha256,
            integration: sender.name.clone(),
            shares_with: sender.shares_with.to_vec(),
            referral: message.referral,
            service,
            event: message.event,
            message_header_id: message.message_header_id,
            bundle_id: message.bundle_id,
            bundle_timestamp: message.timestamp,
            sent_at: message.sent_at,
            raw: body,
            summary: message.summary,
            problems: message.problems,
            received_at: OffsetDateTime::now_utc(),
            fetch_documents,
            routes: self.destinations.routes(),
        };
        let (version, duplicate) = match self.store.put_delivery(delivery).await? {
            PutOutcome::Stored { version } => {
                if fetch_documents {
                    self.documents_wake.notify_one();
                }
                self.destinations.wake_all();
                (version, false)
            }
            PutOutcome::Duplicate { version } => (version, true),
            PutOutcome::OwnedElsewhere { owner } => {
                return Err(self.refuse(sender, &receipt.event, referral, owner).await);
            }
        };
        tracing::info!(
            integration = %sender.name,
            event = %receipt.event,
            %referral,
            version,
            duplicate,
            "delivery stored"
        );
        Ok(if duplicate {
            Filed::Duplicate {
                receipt,
                referral,
                version,
            }
        } else {
            Filed::Stored {
                receipt,
                referral,
                version,
            }
        })
    }

    /// Whether documents are fetched for a referral filed under `service`: when fetching is
    /// on and an Ocean site (with credentials) answers for it.
    fn fetches_documents(&self, service: &ServiceAssignment) -> bool {
        let service = match service {
            ServiceAssignment::Named(s) | ServiceAssignment::Default(s) => Some(s),
            ServiceAssignment::Unassigned => None,
        };
        self.fetch && self.sites.for_service(service).is_some()
    }

    /// Keeps at most `documents.max_per_delivery` of a message's attachments: a message naming
    /// thousands would make thousands of fetches, and one page listing them all. What is beyond
    /// the cap is said, counted and left (it stays in the stored message).
    fn cap_documents<T>(
        &self,
        sender: &Sender<'_>,
        documents: &mut Vec<T>,
        problems: &mut Vec<String>,
    ) {
        let limit = self.max_per_delivery;
        if documents.len() <= limit {
            return;
        }
        let beyond = documents.len() - limit;
        documents.truncate(limit);
        problems.push(format!(
            "{beyond} more attachments than documents.max_per_delivery ({limit}) are neither listed nor fetched; they are in the stored message"
        ));
        self.metrics
            .documents_not_queued(sender.name.as_str(), beyond);
        tracing::warn!(integration = %sender.name, beyond, max_per_delivery = limit, "a message names more attachments than documents.max_per_delivery; the rest are not fetched");
    }

    /// A delivery for a referral `owner` holds, which does not share with `sender`: audited,
    /// then refused.
    async fn refuse(
        &self,
        sender: &Sender<'_>,
        event: &EventCode,
        referral: ReferralRef,
        owner: IntegrationName,
    ) -> IntakeError {
        tracing::warn!(integration = %sender.name, %owner, %event, "delivery refused: the referral belongs to another integration");
        let details = serde_json::json!({
            "referral": referral.as_str(),
            "event": event.as_str(),
            "owner": owner.as_str(),
        });
        let actor = format!("integration:{}", sender.name);
        if let Err(e) = self.store.audit("DELIVERY_REFUSED", &actor, details).await {
            return e.into();
        }
        IntakeError::OwnedElsewhere {
            referral,
            owner,
            integration: sender.name.clone(),
        }
    }
}

/// The message in `body`, with the body's SHA-256 (hex) and the body itself. A large Bundle is
/// read off the async workers; a small one (a typical referral) in place, where handing it to
/// another thread and back would cost more than reading it.
async fn read(sender: &Sender<'_>, body: Bytes) -> Result<(Parsed, String, Bytes), IntakeError> {
    let (len, events) = (body.len(), sender.events.to_vec());
    let read = move || {
        let parsed = parse_message(&body, |event| events.is_empty() || events.contains(event));
        let sha256 = sha256_hex(&body);
        (parsed, sha256, body)
    };
    let (parsed, sha256, body) = if len <= READ_IN_PLACE_BYTES {
        read()
    } else {
        tokio::task::spawn_blocking(read)
            .await
            .map_err(IntakeError::Interrupted)?
    };
    let parsed = parsed.map_err(|e| {
        let reason = match &e {
            ParseError::Malformed(_) => "malformed",
            ParseError::Unusable(_) => "unusable",
        };
        tracing::info!(integration = %sender.name, reason, "delivery rejected");
        match e {
            ParseError::Malformed(m) => IntakeError::Malformed(m),
            ParseError::Unusable(m) => IntakeError::Unusable(m),
        }
    })?;
    Ok((parsed, sha256, body))
}

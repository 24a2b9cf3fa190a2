//! Alerts: a person is told when something needs one. The [monitor](monitor) looks at the
//! conditions of `[alerts]` every `check_secs`; a condition that starts, or clears, is filed in
//! the store as an [`AlertRecord`] (a message of [`ALERTS_QUEUE`], kept whatever the
//! retention) together with one message per channel (an e-mail, each webhook destination
//! named in `alerts.destinations`), in one durable write. Each channel's queue is sent by its
//! own [worker](channel) under the outbox's rules: retried, dead-lettered, visible in
//! `GET /api/v1/alerts`. Alerts carry identifiers, counts and the relay's own words, never
//! patient data nor what a receiver answered.

mod channel;
mod conditions;
pub mod email;
mod monitor;
mod text;

use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::config::{AlertsConfig, Config};
use crate::destinations::{Destination, Destinations};
use crate::domain::ReferralRef;
use crate::store::{
    ALERTS_QUEUE, AlertPhase, AlertRecord, MessageState, QueuedMessage, Store, StoreError,
};

pub use channel::AlertWorkerChannel;
pub use conditions::Condition;
pub use monitor::{Monitor, SPOOL};
pub use text::{mail_subject, mail_text, webhook_json};

/// Alerts on their way into the store: what to file, and how far filing got (it resumes
/// where it stopped, so nothing is filed, audited or sent twice).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Filing {
    pub records: Vec<AlertRecord>,
    /// What each channel sends of them (fixed once, so a digest keeps its id).
    pub outgoing: Vec<AlertRecord>,
    /// Channels that have them already, sent from memory while the store could not write:
    /// nothing is queued for those.
    pub sent: Vec<String>,
    /// Whether the records and messages are in the store.
    pub enqueued: bool,
    /// How many records are audited.
    audited: usize,
}

impl Filing {
    pub fn new(records: Vec<AlertRecord>, outgoing: Vec<AlertRecord>) -> Self {
        Self {
            records,
            outgoing,
            sent: Vec::new(),
            enqueued: false,
            audited: 0,
        }
    }
}

/// One channel alerts go out by.
pub struct AlertChannel {
    /// `email`, or `webhook:NAME`.
    pub name: String,
    /// `alerts:email`, or `alerts:webhook:NAME`.
    pub queue: String,
    pub sender: AlertSender,
    /// Wakes its worker: an alert was queued, a dead letter replayed.
    pub wake: Notify,
}

/// How a channel sends.
pub enum AlertSender {
    Email(Box<email::EmailSender>),
    /// A webhook destination: its URL and signing keys.
    Webhook(Arc<Destination>),
}

impl AlertChannel {
    /// Sends one alert (a single one or a digest) as message `id`.
    ///
    /// # Errors
    /// Why it did not land, under the rules of [`crate::outgoing`].
    pub async fn send(
        &self,
        id: &str,
        alert: &AlertRecord,
    ) -> Result<(), crate::outgoing::SendError> {
        match &self.sender {
            AlertSender::Email(email) => {
                email
                    .send(id, &mail_subject(alert), &mail_text(alert))
                    .await
            }
            AlertSender::Webhook(destination) => match &destination.sender {
                crate::destinations::Sender::Webhook(webhook) => {
                    webhook
                        .post(id, webhook_json(alert), "application/json")
                        .await
                }
                crate::destinations::Sender::Fhir(_) => Err(crate::outgoing::SendError::Rejected(
                    format!("destination '{}' is not a webhook", destination.name),
                )),
            },
        }
    }
}

/// The alerts of one process: its channels, and the conditions holding as last seen.
#[derive(Clone)]
pub struct Alerts {
    config: Arc<AlertsConfig>,
    channels: Arc<Vec<Arc<AlertChannel>>>,
    active: Arc<Mutex<Vec<Condition>>>,
}

impl Alerts {
    /// The channels `config` names: e-mail when `email_to` names anyone, and each of
    /// `alerts.destinations`.
    ///
    /// # Errors
    /// An e-mail sender that cannot be built (an address that does not parse, an unreadable
    /// `ca_file`).
    pub fn from_config(config: &Config, destinations: &Destinations) -> anyhow::Result<Self> {
        let mut channels = Vec::new();
        if config.alerts.emails() {
            channels.push(Arc::new(AlertChannel {
                name: "email".into(),
                queue: format!("{ALERTS_QUEUE}email"),
                sender: AlertSender::Email(Box::new(email::EmailSender::new(&config.alerts)?)),
                wake: Notify::new(),
            }));
        }
        for name in &config.alerts.destinations {
            let Some(destination) = destinations.get(name) else {
                anyhow::bail!("alerts.destinations names '{name}', which is not configured");
            };
            channels.push(Arc::new(AlertChannel {
                name: format!("webhook:{name}"),
                queue: format!("{ALERTS_QUEUE}webhook:{name}"),
                sender: AlertSender::Webhook(Arc::clone(destination)),
                wake: Notify::new(),
            }));
        }
        Ok(Self {
            config: Arc::new(config.alerts.clone()),
            channels: Arc::new(channels),
            active: Arc::default(),
        })
    }

    pub fn config(&self) -> &AlertsConfig {
        &self.config
    }

    /// Every channel, e-mail first.
    pub fn channels(&self) -> impl Iterator<Item = &Arc<AlertChannel>> {
        self.channels.iter()
    }

    /// The channel whose queue is `queue`.
    pub fn channel_of_queue(&self, queue: &str) -> Option<&Arc<AlertChannel>> {
        self.channels.iter().find(|c| c.queue == queue)
    }

    /// Whether any channel is configured: without one, conditions are shown (the API, the
    /// console, the log) but nothing is filed or sent.
    pub fn has_channels(&self) -> bool {
        !self.channels.is_empty()
    }

    /// The conditions holding now, as the monitor last saw them.
    pub fn active(&self) -> Vec<Condition> {
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_active(&self, conditions: Vec<Condition>) {
        *self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = conditions;
    }

    /// Files `filing` where it stopped: its records and, for each channel that does not have
    /// them yet, its `outgoing` (see [`Alerts::outgoing`]) in one durable write (unless that
    /// write is found in the store already, its outcome unknown before); then audits each
    /// record (`ALERT_STARTED`, `ALERT_CLEARED`, `ALERT_EVENT`) and wakes the channels. Each
    /// step done is noted in `filing`, so a retry neither files nor audits anything twice.
    ///
    /// # Errors
    /// The store's; `filing` says how far it got.
    pub async fn file(
        &self,
        store: &dyn Store,
        filing: &mut Filing,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let Some(first) = filing.records.first() else {
            return Ok(());
        };
        if !filing.enqueued {
            let filed = store
                .referral_messages(&record_ref(&first.key))
                .await?
                .iter()
                .any(|m| m.webhook_id == first.id);
            if !filed {
                store.enqueue_messages(self.messages(filing, now)).await?;
            }
            filing.enqueued = true;
        }
        settle_records(store).await?;
        while let Some(record) = filing.records.get(filing.audited) {
            let action = match record.phase {
                AlertPhase::Started => "ALERT_STARTED",
                AlertPhase::Cleared => "ALERT_CLEARED",
                AlertPhase::Event | AlertPhase::Digest => "ALERT_EVENT",
            };
            let details = serde_json::json!({
                "alert": record.id,
                "kind": record.kind,
                "key": record.key,
                "subject": record.subject,
            });
            store.audit(action, "alerts", details).await?;
            filing.audited += 1;
        }
        for channel in self.channels.iter() {
            channel.wake.notify_one();
        }
        Ok(())
    }

    /// The messages `filing` is filed as: a record per alert (naming the channels that had it
    /// from memory), and a message per outgoing alert for each other channel.
    fn messages(&self, filing: &Filing, now: OffsetDateTime) -> Vec<QueuedMessage> {
        let mut messages = Vec::new();
        for record in &filing.records {
            let mut message = QueuedMessage::pending(ALERTS_QUEUE, record_ref(&record.key), 0, now);
            message.webhook_id.clone_from(&record.id);
            let mut record = record.clone();
            record.sent_from_memory.clone_from(&filing.sent);
            message.alert = Some(Box::new(record));
            messages.push(message);
        }
        for outgoing in &filing.outgoing {
            for channel in self
                .channels
                .iter()
                .filter(|c| !filing.sent.contains(&c.name))
            {
                let mut message = QueuedMessage::pending(&channel.queue, channel_ref(), 0, now);
                message.webhook_id.clone_from(&outgoing.id);
                message.alert = Some(Box::new(outgoing.clone()));
                messages.push(message);
            }
        }
        messages
    }

    /// What each channel sends of `records`: each alone, or one digest of them all.
    pub fn outgoing(&self, records: &[AlertRecord], now: OffsetDateTime) -> Vec<AlertRecord> {
        if records.len() < self.config.digest_from {
            return records.to_vec();
        }
        let started = records
            .iter()
            .filter(|r| r.phase == AlertPhase::Started)
            .count();
        let cleared = records
            .iter()
            .filter(|r| r.phase == AlertPhase::Cleared)
            .count();
        let other = records.len() - started - cleared;
        let mut digest = AlertRecord::new(
            "digest",
            "digest",
            AlertPhase::Digest,
            format!(
                "{} alerts: {started} started, {cleared} cleared, {other} other",
                records.len()
            ),
            String::new(),
            now,
        );
        digest.items = records.to_vec();
        vec![digest]
    }
}

/// Marks the records filed delivered: they are never sent (the record is the filing), and a
/// pending one would count as waiting. Records another replica filed are marked too.
async fn settle_records(store: &dyn Store) -> Result<(), StoreError> {
    let now = OffsetDateTime::now_utc();
    let mut after = 0;
    loop {
        let pending = store
            .queue_messages(ALERTS_QUEUE, Some(MessageState::Pending), after, 256)
            .await?;
        let Some(last) = pending.last() else {
            return Ok(());
        };
        after = last.id;
        for mut message in pending {
            message.state = MessageState::Delivered;
            message.delivered_at = Some(now);
            store.save_message(&message, MessageState::Pending).await?;
        }
    }
}

/// The pseudo-referral a condition's records are chained under (`alert:KEY`): its history is
/// `referral_messages` of it.
pub fn record_ref(key: &str) -> ReferralRef {
    ReferralRef::parse(&format!("alert:{key}")).unwrap_or_else(|_| channel_ref())
}

/// The pseudo-referral of every channel message: one chain per channel, so a channel's alerts
/// go out in the order they were filed (a start before its clear).
fn channel_ref() -> ReferralRef {
    ReferralRef::parse("alert:").unwrap_or_else(|_| unreachable!("a valid referral ref"))
}

/// An alert as the API and the console show it: its record, and where each channel stands.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AlertView {
    #[serde(flatten)]
    pub alert: AlertRecord,
    pub deliveries: Vec<AlertDelivery>,
}

/// One channel's message carrying an alert (alone, or in a digest).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AlertDelivery {
    /// `email`, or `webhook:NAME`.
    pub channel: String,
    /// The message's id in its queue.
    pub message: u64,
    /// `pending`, `delivered`, `dead`, `discarded`.
    pub state: &'static str,
    pub attempts: u32,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
    /// The digest it went in, if it did.
    pub digest: Option<String>,
    /// Sent straight from memory while the store could not write (`message` is 0).
    pub from_memory: bool,
}

impl Alerts {
    /// The latest `limit` alerts, newest first, each with its deliveries.
    ///
    /// # Errors
    /// The store's.
    pub async fn recent(
        &self,
        store: &dyn Store,
        limit: usize,
    ) -> Result<Vec<AlertView>, StoreError> {
        let mut records = std::collections::VecDeque::new();
        let mut after = 0;
        loop {
            let batch = store.queue_messages(ALERTS_QUEUE, None, after, 512).await?;
            let Some(last) = batch.last() else {
                break;
            };
            after = last.id;
            for alert in batch.into_iter().filter_map(|m| m.alert) {
                if records.len() == limit {
                    records.pop_front();
                }
                let deliveries = alert
                    .sent_from_memory
                    .iter()
                    .map(|channel| AlertDelivery {
                        channel: channel.clone(),
                        message: 0,
                        state: "delivered",
                        attempts: 1,
                        last_error: None,
                        delivered_at: Some(alert.at),
                        digest: None,
                        from_memory: true,
                    })
                    .collect();
                records.push_back(AlertView {
                    alert: *alert,
                    deliveries,
                });
            }
        }
        let oldest = records.front().map(|r| r.alert.at);
        for channel in self.channels.iter() {
            let mut after = 0;
            loop {
                let batch = store
                    .queue_messages(&channel.queue, None, after, 512)
                    .await?;
                let Some(last) = batch.last() else {
                    break;
                };
                after = last.id;
                for message in &batch {
                    let Some(alert) = message.alert.as_deref() else {
                        continue;
                    };
                    if oldest.is_some_and(|o| alert.at < o) && alert.items.is_empty() {
                        continue;
                    }
                    let digest = (!alert.items.is_empty()).then(|| alert.id.clone());
                    let carried = std::iter::once(alert.id.as_str())
                        .chain(alert.items.iter().map(|i| i.id.as_str()));
                    for id in carried {
                        if let Some(view) = records.iter_mut().find(|r| r.alert.id == id) {
                            view.deliveries.push(AlertDelivery {
                                channel: channel.name.clone(),
                                message: message.id,
                                state: message.state.as_str(),
                                attempts: message.attempts,
                                last_error: message.last_error.clone(),
                                delivered_at: message.delivered_at,
                                digest: digest.clone(),
                                from_memory: false,
                            });
                        }
                    }
                }
            }
        }
        Ok(records.into_iter().rev().collect())
    }
}

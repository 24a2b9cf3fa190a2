//! The outbox's rules: which updates a clinic may send for a referral, the FHIR message each
//! one becomes, and what replaying or discarding a dead letter does. Accepted updates are
//! stored durably with the referral's new [`TaskState`](crate::store::TaskState); the
//! [worker](super::worker) delivers them.
//!
//! Acceptance is serialised, so each Task status change is checked against the state the
//! previous update left.

mod draft;
mod request;
mod restate;
mod task;

use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::{Mutex, Notify};

use self::draft::Draft;
pub use self::draft::OutboxError;
pub use self::request::{Coding, DEFAULT_APPOINTMENT_MINUTES, UpdateRequest};
pub use self::task::task_state;
use self::task::{REVOKED, current_status};
use super::sites::Sites;
use super::transitions::Transitions;
use crate::config::Config;
use crate::fhir::message::{OriginalRequest, service_request_of};
use crate::store::{ReferralRecord, Store, StoreError, UpdateRecord, UpdateState};

/// Whether `referral` has a booked appointment now: the one booked last, by the clinic through
/// the relay or by Ocean, whichever was set later, and not cancelled since (the watch-list's
/// reading of both sides, [`Facts`](crate::progress::Facts)).
pub(crate) async fn booked(
    store: &dyn Store,
    referral: &ReferralRecord,
) -> Result<bool, StoreError> {
    let updates = crate::store::referral_updates(store, &referral.referral).await?;
    Ok(crate::progress::Facts::read(referral, &updates)
        .booked
        .is_some())
}

/// Attempts of [`Outbox::accept`] when other replicas keep changing the referral's Task state.
const MAX_RACES: usize = 8;

/// Accepts updates into the durable outbox, and replays or discards dead letters.
pub struct Outbox {
    store: Arc<dyn Store>,
    sites: Arc<Sites>,
    transitions: Transitions,
    /// Serialises acceptance, replay and discard.
    accepting: Mutex<()>,
    /// Wakes the worker when an update is accepted or replayed.
    wake: Arc<Notify>,
}

impl Outbox {
    /// The outbox for `sites`, with `config`'s transition table.
    pub fn new(config: &Config, sites: Arc<Sites>, store: Arc<dyn Store>) -> Self {
        Self {
            store,
            sites,
            transitions: Transitions::new(&config.outbox.transitions),
            accepting: Mutex::new(()),
            wake: Arc::default(),
        }
    }

    /// What the worker waits on between passes.
    pub fn wake(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// The referral's current Task status as the outbox decides from it, and the statuses the
    /// transition table lets a clinic move it to (what a status form should offer).
    pub async fn status_choices(
        &self,
        referral: &ReferralRecord,
    ) -> Result<(String, Vec<String>), OutboxError> {
        let task = self.store.task_state(&referral.referral).await?;
        let current = current_status(&task, referral);
        let next = self
            .transitions
            .next(&current, booked(self.store.as_ref(), referral).await?);
        Ok((current, next))
    }

    /// Builds the message for `request` and stores it, pending, with the referral's new Task
    /// state. Returns the stored update (with its id) once it is on disk.
    ///
    /// # Errors
    /// [`OutboxError::NoSite`], [`OutboxError::NotAllowed`] (a status change the transition
    /// table refuses), [`OutboxError::NoAppointment`], [`OutboxError::Build`], or the store's.
    pub async fn accept(
        &self,
        referral: &ReferralRecord,
        request: UpdateRequest,
    ) -> Result<UpdateRecord, OutboxError> {
        let _one_at_a_time = self.accepting.lock().await;
        // Another replica may accept an update of the same referral between reading its Task
        // state and writing the new one: then this one is decided again from the new state.
        for _ in 0..MAX_RACES {
            if let Some(stored) = self.try_accept(referral, request.clone()).await? {
                self.wake.notify_one();
                tracing::info!(update = stored.id, referral = %referral.referral, kind = stored.kind.as_str(), event = %stored.event, "update accepted for Ocean");
                return Ok(stored);
            }
        }
        Err(StoreError::Busy {
            context: "other replicas keep changing this referral's Task state".into(),
        }
        .into())
    }

    /// One attempt of [`Outbox::accept`]: `None` when the referral's Task state changed
    /// between reading it and storing the update.
    async fn try_accept(
        &self,
        referral: &ReferralRecord,
        request: UpdateRequest,
    ) -> Result<Option<UpdateRecord>, OutboxError> {
        let reference = &referral.referral;
        let site = self
            .sites
            .for_service(referral.service_id.as_ref())
            .ok_or_else(|| OutboxError::NoSite(reference.clone()))?;
        let mut task = self.store.task_state(reference).await?;
        let read = task.clone();
        let now = OffsetDateTime::now_utc();
        // Only the requester can cancel a referral, and a revoked one takes no new status or
        // booking (a message can still be sent, and a booked appointment cancelled).
        if referral.summary.service_request_status.as_deref() == Some(REVOKED)
            && request.needs_a_live_referral()
        {
            return Err(OutboxError::Revoked(reference.clone()));
        }
        let booked = booked(self.store.as_ref(), referral).await?;
        let original = if request.needs_the_original() {
            self.original_request(referral).await?
        } else {
            None
        };
        let draft = Draft {
            referral,
            site: site.name(),
            endpoint: &site.client().messages_url(),
            redirect_url: site.redirect_url(),
            booked,
            original: original.as_ref(),
            now,
        };
        let update = request.into_update(&draft, &mut task, &self.transitions)?;
        Ok(self.store.enqueue_update(update, task, Some(&read)).await?)
    }

    /// The referral's ServiceRequest as the newest stored message carrying one (and not purged
    /// by retention) has it.
    async fn original_request(
        &self,
        referral: &ReferralRecord,
    ) -> Result<Option<OriginalRequest>, StoreError> {
        let versions = self.store.versions(&referral.referral).await?;
        let carrying = versions
            .iter()
            .rev()
            .filter(|v| v.summary.carried.service_request && !v.purged);
        for version in carrying {
            let Some(raw) = self
                .store
                .payload(&referral.referral, version.version)
                .await?
            else {
                continue;
            };
            if let Some(read) = std::str::from_utf8(&raw).ok().and_then(service_request_of) {
                return Ok(Some(read));
            }
        }
        Ok(None)
    }

    /// Makes dead letter `id` pending again, its retry horizon starting over, and records
    /// `UPDATE_REPLAYED` for `actor` in the audit log.
    ///
    /// # Errors
    /// [`OutboxError::UnknownUpdate`], [`OutboxError::NotDead`], or the store's.
    pub async fn replay(&self, id: u64, actor: &str) -> Result<UpdateRecord, OutboxError> {
        let _one_at_a_time = self.accepting.lock().await;
        let mut update = self.dead_letter(id, "replayed").await?;
        let now = OffsetDateTime::now_utc();
        update.state = UpdateState::Pending;
        update.next_attempt_at = now;
        update.created_at = now;
        // Compare-and-set: a second replay (a double click, another replica) finds it pending.
        let saved = self
            .store
            .save_message(&update.clone().into_message(), UpdateState::Dead)
            .await?;
        if !saved {
            return Err(OutboxError::NotDead {
                id,
                verb: "replayed",
            });
        }
        self.audit("UPDATE_REPLAYED", actor, &update).await?;
        self.wake.notify_one();
        tracing::info!(update = update.id, "dead letter replayed");
        Ok(update)
    }

    /// Gives up on dead letter `id`: it stays on record, discarded, and the referral's later
    /// updates go out. Ocean never received it, so the referral's Task state is rebuilt from
    /// the updates that remain. Records `UPDATE_DISCARDED` for `actor` in the audit log.
    ///
    /// # Errors
    /// [`OutboxError::UnknownUpdate`], [`OutboxError::NotDead`], or the store's.
    pub async fn discard(&self, id: u64, actor: &str) -> Result<UpdateRecord, OutboxError> {
        let _one_at_a_time = self.accepting.lock().await;
        let mut update = self.dead_letter(id, "discarded").await?;
        update.state = UpdateState::Discarded;
        // Rebuilt again when another replica changes the referral's updates meanwhile.
        let mut discarded = false;
        for _ in 0..MAX_RACES {
            let previous = self.store.task_state(&update.referral).await?;
            let updates =
                crate::store::referral_updates(self.store.as_ref(), &update.referral).await?;
            let task = task_state(
                previous.task_id.clone(),
                updates
                    .iter()
                    .filter(|u| u.id != update.id && u.state != UpdateState::Discarded),
            );
            if self
                .store
                .discard_update(&update, task, Some(&previous))
                .await?
            {
                discarded = true;
                break;
            }
            // Discarded or replayed meanwhile, or the Task state changed: look again.
            self.dead_letter(id, "discarded").await?;
        }
        if !discarded {
            return Err(StoreError::Busy {
                context: "other replicas keep changing this referral's Task state".into(),
            }
            .into());
        }
        self.audit("UPDATE_DISCARDED", actor, &update).await?;
        self.wake.notify_one();
        tracing::info!(update = update.id, "dead letter discarded");
        Ok(update)
    }

    async fn dead_letter(&self, id: u64, verb: &'static str) -> Result<UpdateRecord, OutboxError> {
        let update = crate::store::update(self.store.as_ref(), id)
            .await?
            .ok_or(OutboxError::UnknownUpdate(id))?;
        if update.state != UpdateState::Dead {
            return Err(OutboxError::NotDead { id, verb });
        }
        Ok(update)
    }

    async fn audit(
        &self,
        action: &str,
        actor: &str,
        update: &UpdateRecord,
    ) -> Result<(), StoreError> {
        self.store
            .audit(
                action,
                actor,
                serde_json::json!({"update": update.id, "referral": update.referral.as_str()}),
            )
            .await
            .map(drop)
    }
}

//! `/events`: the ordered feed of stored deliveries, with long-polling.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{Caller, ProblemDoc, Query, after_param, limit, rfc3339};
use crate::error::{AppError, Problem};
use crate::routes::request::whole_number;
use crate::state::AppState;
use crate::store::EventRecord;
use crate::views::CurrentView;

/// Longest long-poll.
const MAX_WAIT_SECS: u64 = 60;

/// One stored delivery in the feed.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    seq: u64,
    referral: String,
    version: u64,
    event: String,
    service_id: Option<String>,
    received_at: String,
    /// The referral's summary fields this version changed (their names in the referral's
    /// JSON). `GET /referrals/{referral}/versions/{version}/changes` gives the values and the
    /// resources changed. Empty for versions stored before the relay recorded it.
    changes: Vec<String>,
    /// Where the referral stands now, as Ocean last described it (null if it is no longer
    /// stored).
    current: Option<CurrentView>,
}

impl EventView {
    fn new(e: EventRecord, current: Option<CurrentView>) -> Self {
        Self {
            seq: e.seq,
            referral: e.referral.to_string(),
            version: e.version,
            event: e.event.to_string(),
            service_id: e.service_id.map(|s| s.to_string()),
            received_at: rfc3339(e.received_at),
            changes: e.changes,
            current,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    events: Vec<EventView>,
    /// Pass as `after` next time: the last sequence read (also when every entry read was
    /// outside the client's service ids).
    next: u64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// The last sequence already processed (0 for the beginning).
    after: Option<String>,
    /// Most events to return (default 100; capped at 500).
    limit: Option<String>,
    /// Long-poll: wait up to this many seconds (at most 60) for something newer.
    wait: Option<String>,
}

/// The ordered feed of stored deliveries.
///
/// Every stored delivery appears once, in the order it was stored, and only once it is on
/// disk. A consumer resumes from the last `seq` it processed; nothing is skipped or reordered.
#[utoipa::path(
    get,
    path = "/events",
    params(EventsQuery),
    responses(
        (status = 200, description = "Events after `after`; empty when the wait ended", body = EventPage),
        (status = 409, description = "`after` is beyond the end of this store's feed (a cursor from another or a reset store)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 400, description = "A query parameter is invalid", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No or an unknown API key", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    Caller(client): Caller,
    Query(q): Query<EventsQuery>,
) -> Result<Json<EventPage>, Problem> {
    let limit = limit(q.limit.as_deref())?;
    let mut after = after_param(q.after.as_deref())?;
    let wait = match q.wait.as_deref() {
        None => 0,
        Some(text) => whole_number(text)
            .ok_or_else(|| AppError::BadRequest("wait must be a whole number of seconds".into()))?
            .min(MAX_WAIT_SECS),
    };
    if after > state.store.durable_seq() && after > state.store.feed_end().await? {
        return Err(AppError::Conflict(format!(
            "after={after} is beyond the end of the feed ({}): this store is not the one the cursor came from (restored or reset?); start again from 0",
            state.store.durable_seq()
        )).into());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let scope = client.scope();
    loop {
        let batch = state.store.events_after(after, limit).await?;
        if let Some(last) = batch.last() {
            after = last.seq;
        }
        let mut current = std::collections::HashMap::new();
        let mut events = Vec::new();
        for e in batch {
            if !scope.may_see(e.service_id.as_ref()) {
                continue;
            }
            if !current.contains_key(&e.referral) {
                let record = state.store.referral(&e.referral).await?;
                current.insert(e.referral.clone(), record);
            }
            let now = current
                .get(&e.referral)
                .and_then(Option::as_ref)
                .filter(|r| scope.sees(r))
                .map(CurrentView::new);
            events.push(EventView::new(e, now));
        }
        if !events.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(EventPage {
                events,
                next: after,
            }));
        }
        // Nothing (visible) yet: sleep until the feed moves past `after`, the wait ends, or
        // shutdown begins (a long-poll must not hold up a drain).
        let mut stopping = state.stopping.subscribe();
        tokio::select! {
            _ = tokio::time::timeout_at(deadline, state.store.wait_for_events_after(after)) => {}
            _ = stopping.wait_for(|s| *s) => return Ok(Json(EventPage { events: Vec::new(), next: after })),
        }
    }
}

//! `/destinations`: the clinic's systems stored versions are pushed to, their queues, and
//! steering them (replay, discard, pause, resume, backfill). Whole-store views: for clients
//! that see every service id.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use super::extract::{
    Caller, JsonBody, Path, ProblemDoc, Query, after_param, instant, limit, rfc3339,
};
use crate::auth::api::ApiClient;
use crate::error::{AppError, Problem};
use crate::state::AppState;
use crate::store::{MessageState, QueuedMessage};

/// A destination and its queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct DestinationView {
    name: String,
    /// `webhook` or `fhir`.
    kind: String,
    /// `running`, or `paused` by an operator.
    state: String,
    /// Messages waiting to be sent (including those waiting for a retry).
    pending: u64,
    /// Dead letters: each holds back its referral's later messages.
    dead: u64,
    delivered: u64,
    discarded: u64,
    /// Age of the oldest pending message in seconds (0 when none).
    oldest_pending_age_secs: u64,
    /// The last failure of the oldest open message, as the receiver answered.
    last_error: Option<String>,
    /// RFC 3339.
    last_delivered_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DestinationList {
    destinations: Vec<DestinationView>,
}

/// One referral version queued for a destination.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedMessageView {
    id: u64,
    /// The `webhook-id` it is sent with, the same on every attempt.
    webhook_id: String,
    destination: String,
    referral: String,
    version: u64,
    /// pending, delivered, dead or discarded.
    state: String,
    attempts: u32,
    last_error: Option<String>,
    next_attempt_at: String,
    created_at: String,
    delivered_at: Option<String>,
    /// Queued by a backfill.
    backfill: bool,
}

impl From<QueuedMessage> for QueuedMessageView {
    fn from(m: QueuedMessage) -> Self {
        Self {
            id: m.id,
            webhook_id: m.webhook_id,
            destination: m.queue,
            referral: m.referral.to_string(),
            version: m.version,
            state: m.state.as_str().to_owned(),
            attempts: m.attempts,
            last_error: m.last_error,
            next_attempt_at: rfc3339(m.next_attempt_at),
            created_at: rfc3339(m.created_at),
            delivered_at: m.delivered_at.map(rfc3339),
            backfill: m.backfill,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedMessagePage {
    messages: Vec<QueuedMessageView>,
    /// Pass as `after` for the next page.
    next: u64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// pending, delivered, dead or discarded.
    state: Option<String>,
    /// The last message id already seen (from `next`).
    after: Option<String>,
    /// Page size (default 100; capped at 500).
    limit: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    /// Versions received from then on are queued: a date (YYYY-MM-DD, from its start) or an
    /// RFC 3339 date-time.
    #[schema(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt][0-9:.]+([Zz]|[+-][0-9]{2}:[0-9]{2}))?$")]
    since: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Backfilled {
    /// Versions queued.
    queued: u64,
}

/// Destinations steer the whole store's referrals: scoped clients may not.
fn whole_store(client: &ApiClient) -> Result<(), Problem> {
    if client.service_ids.is_empty() {
        return Ok(());
    }
    Err(AppError::Forbidden(format!(
        "client '{}' is limited to some service ids and may not see or steer destinations",
        client.name
    ))
    .into())
}

fn name_of(state: &AppState, name: &str) -> Result<(), Problem> {
    match state.destinations.get(name) {
        Some(_) => Ok(()),
        None => Err(AppError::NotFound(format!("no destination '{name}' is configured")).into()),
    }
}

/// Every destination, with where its queue stands.
#[utoipa::path(
    get,
    path = "/destinations",
    responses(
        (status = 200, description = "The destinations", body = DestinationList),
        (status = 403, description = "The client is limited to some service ids", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn list_destinations(
    State(state): State<AppState>,
    Caller(client): Caller,
) -> Result<Json<DestinationList>, Problem> {
    whole_store(&client)?;
    let now = OffsetDateTime::now_utc();
    let mut destinations = Vec::new();
    for destination in state.destinations.iter() {
        let stats = state.store.queue_stats(&destination.name).await?;
        destinations.push(DestinationView {
            name: destination.name.clone(),
            kind: destination.config.kind.as_str().into(),
            state: if stats.paused { "paused" } else { "running" }.into(),
            pending: stats.pending,
            dead: stats.dead,
            delivered: stats.delivered,
            discarded: stats.discarded,
            oldest_pending_age_secs: stats
                .oldest_pending_at
                .map_or(0, |at| (now - at).whole_seconds().max(0).cast_unsigned()),
            last_error: stats.last_error,
            last_delivered_at: stats.last_delivered_at.map(rfc3339),
        });
    }
    Ok(Json(DestinationList { destinations }))
}

/// A destination's messages, oldest first, optionally by state (`state=dead`: its dead
/// letters).
#[utoipa::path(
    get,
    path = "/destinations/{name}/messages",
    params(("name" = String, Path, description = "The destination's name"), MessagesQuery),
    responses(
        (status = 200, description = "Messages", body = QueuedMessagePage),
        (status = 403, description = "The client is limited to some service ids", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such destination", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn list_messages(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path(name): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> Result<Json<QueuedMessagePage>, Problem> {
    whole_store(&client)?;
    name_of(&state, &name)?;
    let wanted = match q.state.as_deref() {
        None => None,
        Some("pending") => Some(MessageState::Pending),
        Some("delivered") => Some(MessageState::Delivered),
        Some("dead") => Some(MessageState::Dead),
        Some("discarded") => Some(MessageState::Discarded),
        Some(_) => {
            return Err(AppError::BadRequest(
                "state must be pending, delivered, dead or discarded".into(),
            )
            .into());
        }
    };
    let after = after_param(q.after.as_deref())?;
    let messages = state
        .store
        .queue_messages(&name, wanted, after, limit(q.limit.as_deref())?)
        .await?;
    let next = messages.last().map_or(after, |m| m.id);
    Ok(Json(QueuedMessagePage {
        messages: messages.into_iter().map(Into::into).collect(),
        next,
    }))
}

/// Send a dead letter again, at once (its retry horizon starts over).
#[utoipa::path(
    post,
    path = "/destinations/{name}/messages/{id}/replay",
    params(
        ("name" = String, Path, description = "The destination's name"),
        ("id" = u64, Path, description = "The message id"),
    ),
    responses(
        (status = 202, description = "Pending again", body = QueuedMessageView),
        (status = 403, description = "The client is limited to some service ids", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such destination or message", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Not a dead letter", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn replay_message(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<QueuedMessageView>), Problem> {
    whole_store(&client)?;
    let id = message_id(&id)?;
    let actor = format!("api:{}", client.name);
    let message = state
        .destinations
        .replay(state.store.as_ref(), &name, id, &actor)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(message.into())))
}

/// Give up on a dead letter: it stays on record, and the referral's later messages go out.
#[utoipa::path(
    post,
    path = "/destinations/{name}/messages/{id}/discard",
    params(
        ("name" = String, Path, description = "The destination's name"),
        ("id" = u64, Path, description = "The message id"),
    ),
    responses(
        (status = 200, description = "Discarded", body = QueuedMessageView),
        (status = 403, description = "The client is limited to some service ids", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such destination or message", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Not a dead letter", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn discard_message(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<QueuedMessageView>, Problem> {
    whole_store(&client)?;
    let id = message_id(&id)?;
    let actor = format!("api:{}", client.name);
    let message = state
        .destinations
        .discard(state.store.as_ref(), &name, id, &actor)
        .await?;
    Ok(Json(message.into()))
}

fn message_id(text: &str) -> Result<u64, Problem> {
    crate::routes::request::whole_number(text)
        .filter(|id| *id >= 1)
        .ok_or_else(|| AppError::BadRequest("id must be a whole number from 1".into()).into())
}

/// Stop sending to a destination (for every replica) until it is resumed; messages keep
/// being queued.
#[utoipa::path(
    post,
    path = "/destinations/{name}/pause",
    params(("name" = String, Path, description = "The destination's name")),
    responses(
        (status = 204, description = "Paused"),
        (status = 403, description = "The client is limited to some service ids", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such destination", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn pause(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    set_paused(&state, &client, &name, true).await
}

/// Send to a paused destination again.
#[utoipa::path(
    post,
    path = "/destinations/{name}/resume",
    params(("name" = String, Path, description = "The destination's name")),
    responses(
        (status = 204, description = "Running"),
        (status = 403, description = "The client is limited to some service ids", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such destination", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn resume(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    set_paused(&state, &client, &name, false).await
}

async fn set_paused(
    state: &AppState,
    client: &ApiClient,
    name: &str,
    paused: bool,
) -> Result<StatusCode, Problem> {
    whole_store(client)?;
    let actor = format!("api:{}", client.name);
    state
        .destinations
        .set_paused(state.store.as_ref(), name, paused, &actor)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Queue for a destination every stored version received since a time that it takes, as if
/// it had been configured then (a destination added later gets the past only this way).
#[utoipa::path(
    post,
    path = "/destinations/{name}/backfill",
    params(("name" = String, Path, description = "The destination's name")),
    request_body = BackfillRequest,
    responses(
        (status = 202, description = "Queued", body = Backfilled),
        (status = 403, description = "The client is limited to some service ids", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such destination", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn backfill(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<BackfillRequest>,
) -> Result<(StatusCode, Json<Backfilled>), Problem> {
    whole_store(&client)?;
    name_of(&state, &name)?;
    let since = instant("since", &request.since, false)?;
    let actor = format!("api:{}", client.name);
    let queued = state
        .destinations
        .backfill(state.store.as_ref(), &name, since, &actor)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(Backfilled { queued })))
}

//! Status updates from the clinic to Ocean: accepted here, stored durably in the outbox, and
//! delivered by the outbox worker. `202 {update_id}` means the update is on disk.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use super::extract::{
    Caller, JsonBody, Path, ProblemDoc, Query, after_param, limit, rfc3339, visible, whole_number,
};
use crate::domain::ReferralRef;
use crate::error::{AppError, Problem};
use crate::fhir::outgoing::{
    AppointmentUpdate, OutgoingMessage, TaskUpdate, appointment_message, communication_message,
    task_message,
};
use crate::ocean::transitions::ACTIONABLE;
use crate::state::AppState;
use crate::store::{TaskState, UpdateRecord, UpdateState};

/// An appointment without an end lasts this long (FHIR requires an end on a booked one).
const DEFAULT_APPOINTMENT_MINUTES: i64 = 30;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    /// A Task status Ocean acts on: requested, received, accepted, in-progress, on-hold, ready,
    /// rejected or cancelled.
    #[schema(
        pattern = "^(requested|received|accepted|in-progress|on-hold|ready|rejected|cancelled)$"
    )]
    status: String,
    /// Why (shown in Ocean, e.g. the reason for declining).
    reason: Option<String>,
    description: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppointmentRequest {
    /// RFC 3339 date-time.
    #[schema(format = DateTime)]
    start: String,
    /// RFC 3339 date-time, after `start` (400 otherwise); 30 minutes after `start` when absent.
    #[schema(format = DateTime)]
    end: Option<String>,
    /// Confirmed with the patient (participant `accepted`) or not yet (`tentative`).
    #[serde(default)]
    confirmed: bool,
    location: Option<String>,
    notes: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageRequest {
    /// The message; not blank.
    #[schema(min_length = 1, pattern = "\\S")]
    text: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    update_id: u64,
}

/// An update and how its delivery is going.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpdateView {
    id: u64,
    referral: String,
    site: String,
    kind: String,
    task_status: Option<String>,
    event: String,
    /// pending, delivered or dead.
    state: String,
    attempts: u32,
    last_error: Option<String>,
    next_attempt_at: Option<String>,
    created_at: String,
    delivered_at: Option<String>,
}

impl From<UpdateRecord> for UpdateView {
    fn from(u: UpdateRecord) -> Self {
        let state = match u.state {
            UpdateState::Pending => "pending",
            UpdateState::Delivered => "delivered",
            UpdateState::Dead => "dead",
            UpdateState::Discarded => "discarded",
        };
        Self {
            id: u.id,
            referral: u.referral.to_string(),
            site: u.site,
            kind: u.kind,
            task_status: u.task_status,
            event: u.event,
            state: state.to_owned(),
            attempts: u.attempts,
            last_error: u.last_error,
            next_attempt_at: (u.state == UpdateState::Pending).then(|| rfc3339(u.next_attempt_at)),
            created_at: rfc3339(u.created_at),
            delivered_at: u.delivered_at.map(rfc3339),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UpdatePage {
    updates: Vec<UpdateView>,
    /// Pass as `after` for the next page.
    next: u64,
}

/// Builds the message for a referral the caller may see, and stores it in the outbox together
/// with the referral's new Task state. One update at a time, so transitions are checked
/// against the state the previous update left.
async fn enqueue(
    state: &AppState,
    caller: &Caller,
    referral: &str,
    kind: &str,
    build: impl FnOnce(&ReferralRef, &mut TaskState, &str, &str) -> Result<OutgoingMessage, AppError>,
) -> Result<(StatusCode, Json<Accepted>), AppError> {
    let _one_at_a_time = state.outbox_lock.lock().await;
    let (reference, record) = visible(state, &caller.0, referral).await?;
    let site = state.site_for(record.service_id.as_ref()).ok_or_else(|| {
        AppError::Unprocessable(format!(
            "no Ocean site is configured for the External Service ID of referral {reference}"
        ))
    })?;
    let endpoint = state.ocean_messages_url(&site).unwrap_or_default();
    let mut task = state.store.task_state(&reference).await?;
    // The current status is the newer of what the relay last sent and what Ocean last said
    // (a referral can also be declined or reopened in Ocean's own screens).
    let ours_is_newer = task
        .status_set_at
        .is_some_and(|at| at >= record.modified_at);
    let current = if ours_is_newer {
        task.status.clone()
    } else {
        record.summary.task_status.clone().or(task.status.clone())
    }
    .unwrap_or_else(|| "requested".into());
    let message = build(&reference, &mut task, &current, &endpoint)?;
    let now = OffsetDateTime::now_utc();
    let update = UpdateRecord {
        id: 0,
        referral: reference.clone(),
        site,
        kind: kind.to_owned(),
        task_status: task.status.clone().filter(|_| kind == "status"),
        event: message.event.to_owned(),
        bundle: message.json,
        state: UpdateState::Pending,
        attempts: 0,
        last_error: None,
        next_attempt_at: now,
        created_at: now,
        delivered_at: None,
    };
    let stored = state.store.enqueue_update(update, task).await?;
    state.outbox_wake.notify_one();
    tracing::info!(update = stored.id, referral = %reference, kind, event = %stored.event, "update accepted for Ocean");
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            update_id: stored.id,
        }),
    ))
}

fn built(
    result: Result<OutgoingMessage, crate::fhir::outgoing::BuildError>,
) -> Result<OutgoingMessage, AppError> {
    result.map_err(|e| AppError::Unprocessable(e.to_string()))
}

/// Change the referral's Task status in Ocean.
#[utoipa::path(
    post,
    path = "/referrals/{referral}/status",
    params(("referral" = String, Path, description = "Ocean's referral reference")),
    request_body = StatusRequest,
    responses(
        (status = 202, description = "Stored in the outbox", body = Accepted),
        (status = 409, description = "Not allowed from the current status", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "A status Ocean does not act on, or no site for the referral", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn set_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(referral): Path<String>,
    JsonBody(request): JsonBody<StatusRequest>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    if !ACTIONABLE.contains(&request.status.as_str()) {
        return Err(AppError::Unprocessable(format!(
            "status must be one Ocean acts on: {}",
            ACTIONABLE.join(", ")
        ))
        .into());
    }
    let transitions = state.transitions.clone();
    Ok(enqueue(
        &state,
        &caller,
        &referral,
        "status",
        |reference, task, current, endpoint| {
            if !transitions.allows(current, &request.status) {
                return Err(AppError::Conflict(format!(
                    "referral {reference} cannot go from {current} to {}",
                    request.status
                )));
            }
            let status = request
                .status
                .parse()
                .map_err(|_| AppError::Unprocessable("unknown Task status".into()))?;
            let first = !task.task_sent;
            let task_id = task
                .task_id
                .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
                .clone();
            task.task_sent = true;
            task.status = Some(request.status.clone());
            task.status_set_at = Some(OffsetDateTime::now_utc());
            built(task_message(
                reference,
                &TaskUpdate {
                    task_id: &task_id,
                    status,
                    reason: request.reason.as_deref(),
                    description: request.description.as_deref(),
                    first,
                },
                endpoint,
            ))
        },
    )
    .await?)
}

fn instant(name: &str, raw: &str) -> Result<OffsetDateTime, AppError> {
    OffsetDateTime::parse(raw, &Rfc3339)
        .map_err(|_| AppError::BadRequest(format!("{name} must be an RFC 3339 date-time")))
}

/// Book an appointment for the referral (shown in Ocean as booking unconfirmed or confirmed).
#[utoipa::path(
    post,
    path = "/referrals/{referral}/appointments",
    params(("referral" = String, Path, description = "Ocean's referral reference")),
    request_body = AppointmentRequest,
    responses((status = 202, description = "Stored in the outbox", body = Accepted))
)]
pub async fn book(
    State(state): State<AppState>,
    caller: Caller,
    Path(referral): Path<String>,
    JsonBody(request): JsonBody<AppointmentRequest>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    let start = instant("start", &request.start)?;
    let end = match request.end.as_deref() {
        Some(end) => instant("end", end)?,
        None => start
            .checked_add(time::Duration::minutes(DEFAULT_APPOINTMENT_MINUTES))
            .ok_or_else(|| AppError::BadRequest("start is too far in the future".into()))?,
    };
    if end <= start {
        return Err(AppError::BadRequest("end must be after start".into()).into());
    }
    Ok(enqueue(
        &state,
        &caller,
        &referral,
        "appointment",
        |reference, task, _, endpoint| {
            let id = uuid::Uuid::new_v4().to_string();
            task.appointment_id = Some(id.clone());
            task.appointment_start = Some(rfc3339(start));
            task.appointment_end = Some(rfc3339(end));
            built(appointment_message(
                reference,
                &AppointmentUpdate {
                    appointment_id: &id,
                    start,
                    end,
                    confirmed: request.confirmed,
                    location: request.location.as_deref(),
                    notes: request.notes.as_deref(),
                    cancelled: false,
                },
                endpoint,
            ))
        },
    )
    .await?)
}

/// Cancel the appointment booked last.
#[utoipa::path(
    delete,
    path = "/referrals/{referral}/appointments/current",
    params(("referral" = String, Path, description = "Ocean's referral reference")),
    responses(
        (status = 202, description = "Stored in the outbox", body = Accepted),
        (status = 404, description = "No current appointment", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(referral): Path<String>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    Ok(enqueue(
        &state,
        &caller,
        &referral,
        "cancel-appointment",
        |reference, task, _, endpoint| {
            let (Some(id), Some(start), Some(end)) = (
                task.appointment_id.take(),
                task.appointment_start.take(),
                task.appointment_end.take(),
            ) else {
                return Err(AppError::NotFound(format!(
                    "referral {reference} has no current appointment booked through this relay"
                )));
            };
            built(appointment_message(
                reference,
                &AppointmentUpdate {
                    appointment_id: &id,
                    start: instant("start", &start)?,
                    end: instant("end", &end)?,
                    confirmed: false,
                    location: None,
                    notes: None,
                    cancelled: true,
                },
                endpoint,
            ))
        },
    )
    .await?)
}

/// Send a message to the referrer (Ocean's Awaiting Reply).
#[utoipa::path(
    post,
    path = "/referrals/{referral}/messages",
    params(("referral" = String, Path, description = "Ocean's referral reference")),
    request_body = MessageRequest,
    responses((status = 202, description = "Stored in the outbox", body = Accepted))
)]
pub async fn send_message(
    State(state): State<AppState>,
    caller: Caller,
    Path(referral): Path<String>,
    JsonBody(request): JsonBody<MessageRequest>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    if request.text.trim().is_empty() {
        return Err(AppError::BadRequest("text must not be empty".into()).into());
    }
    Ok(enqueue(
        &state,
        &caller,
        &referral,
        "message",
        |reference, _, _, endpoint| {
            built(communication_message(
                reference,
                &uuid::Uuid::new_v4().to_string(),
                &request.text,
                endpoint,
            ))
        },
    )
    .await?)
}

async fn visible_update(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<UpdateRecord, AppError> {
    let id = whole_number(id)
        .ok_or_else(|| AppError::BadRequest("the update id must be a whole number".into()))?;
    let update = state
        .store
        .update(id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no update {id}")))?;
    visible(state, &caller.0, update.referral.as_str()).await?;
    Ok(update)
}

/// One update and its delivery state.
#[utoipa::path(
    get,
    path = "/updates/{id}",
    params(("id" = u64, Path, description = "The update id")),
    responses((status = 200, description = "The update", body = UpdateView))
)]
pub async fn get_update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<UpdateView>, Problem> {
    Ok(Json(visible_update(&state, &caller, &id).await?.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UpdatesQuery {
    /// pending, delivered, dead or discarded.
    state: Option<String>,
    /// The last update id already seen (from `next`).
    after: Option<String>,
    /// Page size (default 100; capped at 500).
    limit: Option<String>,
}

/// Updates, oldest first, optionally by state (`state=dead` lists the dead letters).
#[utoipa::path(
    get,
    path = "/updates",
    params(UpdatesQuery),
    responses((status = 200, description = "Updates", body = UpdatePage))
)]
pub async fn list_updates(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<UpdatesQuery>,
) -> Result<Json<UpdatePage>, Problem> {
    let wanted = match q.state.as_deref() {
        None => None,
        Some("pending") => Some(UpdateState::Pending),
        Some("delivered") => Some(UpdateState::Delivered),
        Some("dead") => Some(UpdateState::Dead),
        Some("discarded") => Some(UpdateState::Discarded),
        Some(_) => {
            return Err(AppError::BadRequest(
                "state must be pending, delivered, dead or discarded".into(),
            )
            .into());
        }
    };
    let mut after = after_param(q.after.as_deref())?;
    let limit = limit(q.limit.as_deref())?;
    // The client's scope is applied before the page is cut, so a scoped client pages
    // through its own updates.
    let mut updates = Vec::new();
    loop {
        let batch = state.store.updates(wanted, after, 500).await?;
        let Some(last) = batch.last().map(|u| u.id) else {
            break;
        };
        for update in batch {
            let id = update.id;
            if let Some(record) = state.store.referral(&update.referral).await?
                && caller.0.may_see(record.service_id.as_ref())
            {
                updates.push(update.into());
            }
            after = id;
            if updates.len() == limit {
                break;
            }
        }
        if updates.len() == limit || after < last {
            break;
        }
    }
    Ok(Json(UpdatePage {
        next: after,
        updates,
    }))
}

/// Send a dead letter again (its retry horizon starts over).
#[utoipa::path(
    post,
    path = "/updates/{id}/replay",
    params(("id" = u64, Path, description = "The update id")),
    responses(
        (status = 202, description = "Pending again", body = UpdateView),
        (status = 409, description = "Not a dead letter", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<UpdateView>), Problem> {
    let _one_at_a_time = state.outbox_lock.lock().await;
    let mut update = visible_update(&state, &caller, &id).await?;
    if update.state != UpdateState::Dead {
        return Err(AppError::Conflict(format!(
            "update {} is not a dead letter; only dead letters are replayed",
            update.id
        ))
        .into());
    }
    let now = OffsetDateTime::now_utc();
    update.state = UpdateState::Pending;
    update.next_attempt_at = now;
    update.created_at = now;
    state.store.save_update(&update).await?;
    state
        .store
        .audit(
            "UPDATE_REPLAYED",
            &format!("api:{}", caller.0.name),
            serde_json::json!({"update": update.id, "referral": update.referral.as_str()}),
        )
        .await?;
    state.outbox_wake.notify_one();
    tracing::info!(update = update.id, "dead letter replayed");
    Ok((StatusCode::ACCEPTED, Json(update.into())))
}

/// Give up on a dead letter: it stays on record, and the referral's later updates go out.
#[utoipa::path(
    post,
    path = "/updates/{id}/discard",
    params(("id" = u64, Path, description = "The update id")),
    responses(
        (status = 200, description = "Discarded", body = UpdateView),
        (status = 409, description = "Not a dead letter", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn discard(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<UpdateView>, Problem> {
    let _one_at_a_time = state.outbox_lock.lock().await;
    let mut update = visible_update(&state, &caller, &id).await?;
    if update.state != UpdateState::Dead {
        return Err(AppError::Conflict(format!(
            "update {} is not a dead letter; only dead letters are discarded",
            update.id
        ))
        .into());
    }
    update.state = UpdateState::Discarded;
    // Ocean never received the discarded update: what the relay believes Ocean knows about
    // the referral's Task and appointment is rebuilt from the updates that remain.
    let task = task_state_without(&state, &update).await?;
    state.store.discard_update(&update, task).await?;
    state
        .store
        .audit(
            "UPDATE_DISCARDED",
            &format!("api:{}", caller.0.name),
            serde_json::json!({"update": update.id, "referral": update.referral.as_str()}),
        )
        .await?;
    state.outbox_wake.notify_one();
    tracing::info!(update = update.id, "dead letter discarded");
    Ok(Json(update.into()))
}

/// The referral's [`TaskState`] as if `discarded` had never been accepted.
async fn task_state_without(
    state: &AppState,
    discarded: &UpdateRecord,
) -> Result<TaskState, AppError> {
    let previous = state.store.task_state(&discarded.referral).await?;
    let mut task = TaskState {
        task_id: previous.task_id,
        ..TaskState::default()
    };
    let mut after = 0;
    loop {
        let batch = state.store.updates(None, after, 500).await?;
        let Some(last) = batch.last().map(|u| u.id) else {
            break;
        };
        for u in batch.iter().filter(|u| {
            u.referral == discarded.referral
                && u.id != discarded.id
                && u.state != UpdateState::Discarded
        }) {
            match u.kind.as_str() {
                "status" => {
                    task.status.clone_from(&u.task_status);
                    task.status_set_at = Some(u.created_at);
                    task.task_sent = true;
                }
                "appointment" => {
                    let bundle: serde_json::Value = serde_json::from_str(&u.bundle)
                        .map_err(|e| AppError::Internal(e.into()))?;
                    let appointment = bundle["entry"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|e| &e["resource"])
                        .find(|r| r["resourceType"] == "Appointment");
                    if let Some(a) = appointment {
                        let text = |k: &str| a[k].as_str().map(str::to_owned);
                        task.appointment_id = text("id");
                        task.appointment_start = text("start");
                        task.appointment_end = text("end");
                    }
                }
                "cancel-appointment" => {
                    task.appointment_id = None;
                    task.appointment_start = None;
                    task.appointment_end = None;
                }
                _ => {}
            }
        }
        after = last;
    }
    Ok(task)
}

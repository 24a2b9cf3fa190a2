//! `/referrals/{referral}/...` updates and `/updates`: a clinic's status changes, appointments,
//! booking instructions, messages, forwards and corrections for Ocean, handed to the [`Outbox`](crate::ocean::outbox::Outbox) (`202
//! {update_id}` means the update is on disk), and the outbox's contents with its dead letters.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{
    Caller, JsonBody, Path, ProblemDoc, Query, after_param, date_time, limit, rfc3339, visible,
};
use crate::error::{AppError, Problem};
use crate::ocean::outbox::{Coding, UpdateRequest};
use crate::state::AppState;
use crate::store::{UpdateRecord, UpdateState};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    /// A Task status Ocean acts on: requested, received, accepted, in-progress, on-hold, ready,
    /// rejected, cancelled or completed (from in-progress, or from any started status once the
    /// referral is booked).
    #[schema(
        pattern = "^(requested|received|accepted|in-progress|on-hold|ready|rejected|cancelled|completed)$"
    )]
    status: String,
    /// Why (shown in Ocean, e.g. the reason for declining).
    reason: Option<String>,
    description: Option<String>,
    /// Where Ocean takes the referrer's browser next: an absolute http(s) URL without user
    /// name or password, at most 2048 characters (400 otherwise), sent as Ocean's third-party
    /// redirect extension on the Task. Without it, a referral's first Task carries the site's
    /// `redirect_url`, if set.
    #[schema(max_length = 2048)]
    redirect_url: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BookingInstructionsRequest {
    /// How the patient is to book (shown in Ocean as the appointment's description and
    /// patient instruction); not blank.
    #[schema(min_length = 1, pattern = "\\S")]
    text: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardRequest {
    /// Ocean's reference of the directory listing to forward to (its
    /// `id-referral-target-reference`): 1 to 200 characters without white space.
    #[schema(min_length = 1, max_length = 200, pattern = "^\\S+$")]
    listing_ref: String,
    /// The SNOMED CT code of the forwarded referral's category; when absent, the SNOMED CT
    /// category of the referral's stored messages (409 when they carry none).
    #[schema(min_length = 1, pattern = "^\\S+$")]
    category: Option<String>,
    /// Why it is forwarded (the Task's status reason).
    reason: Option<String>,
}

/// A code: `code` in `system` (SNOMED CT when absent).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    /// A URI (400 otherwise); SNOMED CT (`http://snomed.info/sct`) when absent.
    system: Option<String>,
    /// Not blank, no leading or trailing white space.
    #[schema(min_length = 1, pattern = "^[^\\s]+( [^\\s]+)*$")]
    code: String,
    display: Option<String>,
}

impl CodeRequest {
    fn into_coding(self) -> Result<Coding, crate::ocean::outbox::OutboxError> {
        Coding::new(self.system, self.code, self.display)
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CorrectionRequest {
    /// The corrected service (`ServiceRequest.code`).
    service: Option<CodeRequest>,
    /// The corrected category (`ServiceRequest.category`), SNOMED CT unless `system` says.
    category: Option<CodeRequest>,
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
    /// status, appointment, cancel-appointment, message, booking-instructions, forward or
    /// correction.
    kind: String,
    task_status: Option<String>,
    event: String,
    /// pending, delivered, dead or discarded.
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
            kind: u.kind.as_str().to_owned(),
            task_status: u.task_status,
            event: u.event.code().to_owned(),
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

/// Accepts `request` for a referral the caller may see.
async fn accept(
    state: &AppState,
    caller: &Caller,
    referral: &str,
    request: UpdateRequest,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    let (_, record) = visible(state, &caller.0, referral).await?;
    let stored = state.outbox.accept(&record, request).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            update_id: stored.id,
        }),
    ))
}

/// Change the referral's Task status in Ocean.
#[utoipa::path(
    post,
    path = "/referrals/{referral}/status",
    params(("referral" = String, Path, description = "Ocean's referral reference")),
    request_body = StatusRequest,
    responses(
        (status = 202, description = "Stored in the outbox", body = Accepted),
        (status = 400, description = "`redirect_url` is not an absolute http(s) URL without user name or password", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Not allowed from the current status, or the requester revoked the referral", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "A status Ocean does not act on, or no site for the referral", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn set_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(referral): Path<String>,
    JsonBody(request): JsonBody<StatusRequest>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    let request = UpdateRequest::status(request.status, request.reason, request.description)?
        .with_redirect(request.redirect_url)?;
    accept(&state, &caller, &referral, request).await
}

/// Tell the patient how to book when there is no date yet: a proposed Appointment carrying
/// the text as its description and patient instruction (`notify-add-appointment`).
#[utoipa::path(
    post,
    path = "/referrals/{referral}/booking-instructions",
    params(("referral" = String, Path, description = "Ocean's referral reference")),
    request_body = BookingInstructionsRequest,
    responses(
        (status = 202, description = "Stored in the outbox", body = Accepted),
        (status = 400, description = "`text` is blank or holds control characters (other than tabs and line breaks)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The referral has a booked appointment, is completed, or the requester revoked it", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "No site for the referral", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn booking_instructions(
    State(state): State<AppState>,
    caller: Caller,
    Path(referral): Path<String>,
    JsonBody(request): JsonBody<BookingInstructionsRequest>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    let request = UpdateRequest::booking_instructions(request.text)?;
    accept(&state, &caller, &referral, request).await
}

/// Forward the referral to another directory listing: a Task `requested` on a new
/// ServiceRequest that replaces the referral's, its performer the listing.
#[utoipa::path(
    post,
    path = "/referrals/{referral}/forward",
    params(("referral" = String, Path, description = "Ocean's referral reference")),
    request_body = ForwardRequest,
    responses(
        (status = 202, description = "Stored in the outbox", body = Accepted),
        (status = 400, description = "`listing_ref` is not 1 to 200 characters without white space, `category` is not a FHIR code, or `reason` holds control characters", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The referral is completed or the requester revoked it; or no `category` given and none in SNOMED CT in the referral's stored messages, or no stored message carries its ServiceRequest or names its patient usably", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "No site for the referral", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn forward(
    State(state): State<AppState>,
    caller: Caller,
    Path(referral): Path<String>,
    JsonBody(request): JsonBody<ForwardRequest>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    let category = request
        .category
        .map(|code| Coding::new(None, code, None))
        .transpose()?;
    let request = UpdateRequest::forward(request.listing_ref, category, request.reason)?;
    accept(&state, &caller, &referral, request).await
}

/// Correct the referral's service or category in Ocean (`notify-data-correction` carrying the
/// corrected ServiceRequest).
#[utoipa::path(
    post,
    path = "/referrals/{referral}/correction",
    params(("referral" = String, Path, description = "Ocean's referral reference")),
    request_body = CorrectionRequest,
    responses(
        (status = 202, description = "Stored in the outbox", body = Accepted),
        (status = 400, description = "Neither `service` nor `category` given (a rule between two fields that the schema cannot state), a code that is not a FHIR code, a system that is not an absolute URI, or a display with control characters", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The requester revoked the referral, or no stored message carries its ServiceRequest or names its patient usably", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "The referral reference is not a FHIR id (so it cannot be the ServiceRequest's id), or no site for the referral", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn correct(
    State(state): State<AppState>,
    caller: Caller,
    Path(referral): Path<String>,
    JsonBody(request): JsonBody<CorrectionRequest>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    let service = request.service.map(CodeRequest::into_coding).transpose()?;
    let category = request.category.map(CodeRequest::into_coding).transpose()?;
    let request = UpdateRequest::correction(service, category)?;
    accept(&state, &caller, &referral, request).await
}

/// Book an appointment for the referral (shown in Ocean as booking unconfirmed or confirmed).
#[utoipa::path(
    post,
    path = "/referrals/{referral}/appointments",
    params(("referral" = String, Path, description = "Ocean's referral reference")),
    request_body = AppointmentRequest,
    responses(
        (status = 202, description = "Stored in the outbox", body = Accepted),
        (status = 400, description = "`end` is not after `start` (a rule between two fields that the schema cannot state), or a date-time is not RFC 3339", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The requester revoked the referral", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn book(
    State(state): State<AppState>,
    caller: Caller,
    Path(referral): Path<String>,
    JsonBody(request): JsonBody<AppointmentRequest>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    let start = date_time("start", &request.start)?;
    let end = request
        .end
        .as_deref()
        .map(|end| date_time("end", end))
        .transpose()?;
    let request = UpdateRequest::appointment(
        start,
        end,
        request.confirmed,
        request.location,
        request.notes,
    )?;
    accept(&state, &caller, &referral, request).await
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
    accept(
        &state,
        &caller,
        &referral,
        UpdateRequest::cancel_appointment(),
    )
    .await
}

/// Send a message to the referrer (Ocean's Awaiting Reply).
#[utoipa::path(
    post,
    path = "/referrals/{referral}/messages",
    params(("referral" = String, Path, description = "Ocean's referral reference")),
    request_body = MessageRequest,
    responses(
        (status = 202, description = "Stored in the outbox", body = Accepted),
        (status = 400, description = "`text` is blank or holds control characters (other than tabs and line breaks)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn send_message(
    State(state): State<AppState>,
    caller: Caller,
    Path(referral): Path<String>,
    JsonBody(request): JsonBody<MessageRequest>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    let request = UpdateRequest::message(request.text)?;
    accept(&state, &caller, &referral, request).await
}

async fn visible_update(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<UpdateRecord, AppError> {
    crate::routes::request::update(state, &caller.0.scope(), id).await
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
    let scope = caller.0.scope();
    let mut updates = Vec::new();
    loop {
        let batch = crate::store::updates(state.store.as_ref(), wanted, after, 500).await?;
        let Some(last) = batch.last().map(|u| u.id) else {
            break;
        };
        for update in batch {
            let id = update.id;
            if let Some(record) = state.store.referral(&update.referral).await?
                && scope.sees(&record)
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
    let update = visible_update(&state, &caller, &id).await?;
    let actor = format!("api:{}", caller.0.name);
    let update = state.outbox.replay(update.id, &actor).await?;
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
    let update = visible_update(&state, &caller, &id).await?;
    let actor = format!("api:{}", caller.0.name);
    Ok(Json(state.outbox.discard(update.id, &actor).await?.into()))
}

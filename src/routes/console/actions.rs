//! What a user does to a referral from its page: set its status, book or cancel an appointment,
//! send booking instructions or a message, forward it to another listing, correct its service
//! or category. Each goes through the same outbox as `/api/v1` (its checks, the transition
//! table, delivery to Ocean with retries), is audited with the user as actor, and leads back to
//! the referral's page, where the update's delivery state shows.

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use time::PrimitiveDateTime;
use time::macros::format_description;

use super::session::ConsoleUser;
use super::{ConsoleForm, ConsolePath, PageError};
use crate::error::AppError;
use crate::ocean::outbox::{Coding, UpdateRequest};
use crate::routes::request;
use crate::state::AppState;

/// Accepts `request` for `referral` on behalf of `user`, audits it, and goes back to the page.
async fn accept(
    state: &AppState,
    user: &ConsoleUser,
    referral: &str,
    request: UpdateRequest,
) -> Result<Response, PageError> {
    let (reference, record) = request::referral(state, &user.scope(), referral).await?;
    let stored = state.outbox.accept(&record, request).await?;
    state
        .store
        .audit(
            "UPDATE_ACCEPTED",
            &user.actor(),
            serde_json::json!({
                "referral": reference.as_str(),
                "update": stored.id,
                "kind": stored.kind.as_str(),
            }),
        )
        .await?;
    let page = format!("/console/referrals/{}#updates", reference.path_segment());
    Ok(Redirect::to(&page).into_response())
}

/// Empty form fields are absent values.
fn given(field: Option<String>) -> Option<String> {
    field.filter(|s| !s.trim().is_empty())
}

#[derive(Deserialize)]
pub struct StatusForm {
    csrf: Option<String>,
    status: String,
    reason: Option<String>,
    /// Where Ocean takes the referrer next; empty: the site's default for a first Task.
    redirect_url: Option<String>,
}

pub async fn set_status(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsolePath(referral): ConsolePath<String>,
    ConsoleForm(form): ConsoleForm<StatusForm>,
) -> Result<Response, PageError> {
    user.check_csrf(form.csrf.as_deref())?;
    let request = UpdateRequest::status(form.status, given(form.reason), None)?
        .with_redirect(given(form.redirect_url))?;
    accept(&state, &user, &referral, request).await
}

#[derive(Deserialize)]
pub struct AppointmentForm {
    csrf: Option<String>,
    /// `YYYY-MM-DDTHH:MM` (an HTML `datetime-local` field), in UTC.
    start: String,
    /// Length in minutes; empty: the outbox's default.
    minutes: Option<String>,
    /// Present (`on`) when the time is confirmed with the patient.
    confirmed: Option<String>,
    location: Option<String>,
}

pub async fn book(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsolePath(referral): ConsolePath<String>,
    ConsoleForm(form): ConsoleForm<AppointmentForm>,
) -> Result<Response, PageError> {
    user.check_csrf(form.csrf.as_deref())?;
    let start = PrimitiveDateTime::parse(
        &form.start,
        format_description!("[year]-[month]-[day]T[hour]:[minute]"),
    )
    .map_err(|_| {
        AppError::BadRequest(format!(
            "start: '{}' is not a date and time (YYYY-MM-DDTHH:MM)",
            form.start
        ))
    })?
    .assume_utc();
    let end = match given(form.minutes) {
        None => None,
        Some(minutes) => {
            let minutes: i64 = minutes
                .trim()
                .parse()
                .ok()
                .filter(|m| (1..=24 * 60).contains(m))
                .ok_or_else(|| AppError::BadRequest("length: minutes between 1 and 1440".into()))?;
            Some(
                start
                    .checked_add(time::Duration::minutes(minutes))
                    .ok_or_else(|| AppError::BadRequest("start: too far in the future".into()))?,
            )
        }
    };
    let request = UpdateRequest::appointment(
        start,
        end,
        form.confirmed.is_some(),
        given(form.location),
        None,
    )?;
    accept(&state, &user, &referral, request).await
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    csrf: Option<String>,
}

pub async fn cancel(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsolePath(referral): ConsolePath<String>,
    ConsoleForm(form): ConsoleForm<CsrfOnly>,
) -> Result<Response, PageError> {
    user.check_csrf(form.csrf.as_deref())?;
    accept(
        &state,
        &user,
        &referral,
        UpdateRequest::cancel_appointment(),
    )
    .await
}

#[derive(Deserialize)]
pub struct MessageForm {
    csrf: Option<String>,
    text: String,
}

pub async fn send_message(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsolePath(referral): ConsolePath<String>,
    ConsoleForm(form): ConsoleForm<MessageForm>,
) -> Result<Response, PageError> {
    user.check_csrf(form.csrf.as_deref())?;
    let request = UpdateRequest::message(form.text)?;
    accept(&state, &user, &referral, request).await
}

#[derive(Deserialize)]
pub struct InstructionsForm {
    csrf: Option<String>,
    text: String,
}

pub async fn booking_instructions(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsolePath(referral): ConsolePath<String>,
    ConsoleForm(form): ConsoleForm<InstructionsForm>,
) -> Result<Response, PageError> {
    user.check_csrf(form.csrf.as_deref())?;
    let request = UpdateRequest::booking_instructions(form.text)?;
    accept(&state, &user, &referral, request).await
}

#[derive(Deserialize)]
pub struct ForwardForm {
    csrf: Option<String>,
    listing_ref: String,
    /// A SNOMED CT code; empty: the referral's own.
    category: Option<String>,
    reason: Option<String>,
}

pub async fn forward(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsolePath(referral): ConsolePath<String>,
    ConsoleForm(form): ConsoleForm<ForwardForm>,
) -> Result<Response, PageError> {
    user.check_csrf(form.csrf.as_deref())?;
    let category = given(form.category)
        .map(|code| Coding::new(None, code.trim().to_owned(), None))
        .transpose()?;
    let request = UpdateRequest::forward(
        form.listing_ref.trim().to_owned(),
        category,
        given(form.reason),
    )?;
    accept(&state, &user, &referral, request).await
}

#[derive(Deserialize)]
pub struct CorrectionForm {
    csrf: Option<String>,
    /// The corrected service, a SNOMED CT code; empty: unchanged.
    service: Option<String>,
    service_display: Option<String>,
    /// The corrected category, a SNOMED CT code; empty: unchanged.
    category: Option<String>,
    category_display: Option<String>,
}

pub async fn correct(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsolePath(referral): ConsolePath<String>,
    ConsoleForm(form): ConsoleForm<CorrectionForm>,
) -> Result<Response, PageError> {
    user.check_csrf(form.csrf.as_deref())?;
    let coding = |code: Option<String>, display: Option<String>| {
        given(code)
            .map(|code| Coding::new(None, code.trim().to_owned(), given(display)))
            .transpose()
    };
    let service = coding(form.service, form.service_display)?;
    let category = coding(form.category, form.category_display)?;
    let request = UpdateRequest::correction(service, category)?;
    accept(&state, &user, &referral, request).await
}

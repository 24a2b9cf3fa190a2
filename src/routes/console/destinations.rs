//! `/console/destinations` (admins who see every service): each destination with where its
//! queue stands, its dead letters with replay and discard, pause and resume; and the rows a
//! referral's page shows of where its versions were pushed.

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Serialize;
use time::OffsetDateTime;

use super::admin::{CsrfForm, admin_only};
use super::session::ConsoleUser;
use super::templates::render;
use super::views::shown;
use super::{ConsoleForm, ConsolePath, PageError};
use crate::error::AppError;
use crate::routes::request::whole_number;
use crate::state::AppState;
use crate::store::{MessageState, QueuedMessage};

/// Dead letters listed per destination, oldest first.
const DEAD_ROWS: usize = 100;

/// One queued message as the pages list it.
#[derive(Serialize)]
pub(super) struct MessageRow {
    id: u64,
    destination: String,
    referral: String,
    version: u64,
    state: &'static str,
    attempts: u32,
    last_error: Option<String>,
    queued: String,
    delivered: Option<String>,
}

pub(super) fn message_row(m: &QueuedMessage) -> MessageRow {
    MessageRow {
        id: m.id,
        destination: m.queue.clone(),
        referral: m.referral.to_string(),
        version: m.version,
        state: m.state.as_str(),
        attempts: m.attempts,
        last_error: m.last_error.clone(),
        queued: shown(m.created_at),
        delivered: m.delivered_at.map(shown),
    }
}

#[derive(Serialize)]
struct DestinationRow {
    name: String,
    /// `webhook` or `fhir`.
    kind: &'static str,
    url: String,
    paused: bool,
    pending: u64,
    dead: u64,
    delivered: u64,
    oldest_pending: Option<String>,
    last_error: Option<String>,
    last_delivered: Option<String>,
    dead_letters: Vec<MessageRow>,
}

/// Destinations steer every service's referrals: for admins who see them all.
fn whole_store(user: &ConsoleUser) -> Result<(), PageError> {
    admin_only(user)?;
    if user.service_ids.is_empty() {
        return Ok(());
    }
    Err(PageError(AppError::Forbidden(format!(
        "{} sees only some services; destinations carry every service's referrals",
        user.name
    ))))
}

/// `/console/destinations`.
pub async fn list(State(state): State<AppState>, user: ConsoleUser) -> Result<Response, PageError> {
    whole_store(&user)?;
    let mut rows = Vec::new();
    for destination in state.destinations.iter() {
        let stats = state.store.queue_stats(&destination.name).await?;
        let dead = state
            .store
            .queue_messages(&destination.name, Some(MessageState::Dead), 0, DEAD_ROWS)
            .await?;
        rows.push(DestinationRow {
            name: destination.name.clone(),
            kind: destination.config.kind.as_str(),
            url: destination.config.url.clone(),
            paused: stats.paused,
            pending: stats.pending,
            dead: stats.dead,
            delivered: stats.delivered,
            oldest_pending: stats.oldest_pending_at.map(shown),
            last_error: stats.last_error,
            last_delivered: stats.last_delivered_at.map(shown),
            dead_letters: dead.iter().map(message_row).collect(),
        });
    }
    Ok(render(
        "destinations.html",
        minijinja::context! {
            section => "destinations",
            destinations => rows,
            now => shown(OffsetDateTime::now_utc()),
            ..user.header()
        },
    ))
}

/// `POST /console/destinations/{name}/{pause|resume}`.
pub async fn pause_or_resume(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsolePath((name, action)): ConsolePath<(String, String)>,
    ConsoleForm(form): ConsoleForm<CsrfForm>,
) -> Result<Response, PageError> {
    whole_store(&user)?;
    user.check_csrf(form.csrf.as_deref())?;
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        other => {
            return Err(PageError(AppError::NotFound(format!(
                "nothing is served at /console/destinations/…/{other}"
            ))));
        }
    };
    state
        .destinations
        .set_paused(state.store.as_ref(), &name, paused, &user.actor())
        .await?;
    Ok(Redirect::to("/console/destinations").into_response())
}

/// `POST /console/destinations/{name}/messages/{id}/{replay|discard}`.
pub async fn act(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsolePath((name, id, action)): ConsolePath<(String, String, String)>,
    ConsoleForm(form): ConsoleForm<CsrfForm>,
) -> Result<Response, PageError> {
    whole_store(&user)?;
    user.check_csrf(form.csrf.as_deref())?;
    let id = whole_number(&id)
        .ok_or_else(|| PageError(AppError::BadRequest("the message id is a number".into())))?;
    let store = state.store.as_ref();
    match action.as_str() {
        "replay" => {
            state
                .destinations
                .replay(store, &name, id, &user.actor())
                .await?;
        }
        "discard" => {
            state
                .destinations
                .discard(store, &name, id, &user.actor())
                .await?;
        }
        other => {
            return Err(PageError(AppError::NotFound(format!(
                "nothing is served at /console/destinations/…/{other}"
            ))));
        }
    }
    Ok(Redirect::to("/console/destinations").into_response())
}

/// Where `referral`'s versions were pushed, newest first, for its page.
pub(super) async fn pushed(
    state: &AppState,
    referral: &crate::domain::ReferralRef,
) -> Result<Vec<MessageRow>, PageError> {
    let messages = state.store.referral_messages(referral).await?;
    // Ocean updates share the queues; the page lists them apart.
    Ok(messages
        .iter()
        .rev()
        .filter(|m| m.queue != crate::store::OCEAN_QUEUE)
        .map(message_row)
        .collect())
}

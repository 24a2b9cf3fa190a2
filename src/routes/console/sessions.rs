//! `/console/sessions` (admins): who is signed in, on every replica, and ending a person's
//! sessions (audited `CONSOLE_SESSIONS_ENDED`).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::admin::admin_only;
use super::session::ConsoleUser;
use super::templates::render;
use super::views::shown;
use super::{ConsoleForm, PageError};
use crate::auth::session::Session;
use crate::error::AppError;
use crate::state::AppState;

/// One account's live sessions, as the page lists them.
#[derive(Serialize)]
struct AccountRow {
    account: String,
    name: String,
    role: String,
    count: usize,
    /// The earliest sign-in of its live sessions.
    first: String,
    last_used: String,
}

fn rows(sessions: Vec<Session>) -> Vec<AccountRow> {
    let mut by_account: BTreeMap<String, Vec<Session>> = BTreeMap::new();
    for session in sessions {
        by_account
            .entry(session.account.clone())
            .or_default()
            .push(session);
    }
    by_account
        .into_iter()
        .filter_map(|(account, sessions)| {
            let first = sessions.iter().map(|s| s.created_at).min()?;
            let last = sessions.iter().map(|s| s.last_used_at).max()?;
            let newest = sessions.iter().max_by_key(|s| s.created_at)?;
            Some(AccountRow {
                name: newest.name.clone(),
                role: newest.role.clone(),
                account,
                count: sessions.len(),
                first: shown(first),
                last_used: shown(last),
            })
        })
        .collect()
}

async fn page(
    state: &AppState,
    user: &ConsoleUser,
    ended: Option<(u64, String)>,
) -> Result<Response, PageError> {
    let accounts = rows(state.console_sessions.live().await?);
    let (ended, ended_name) = match ended {
        Some((count, name)) => (Some(count), name),
        None => (None, String::new()),
    };
    Ok(render(
        "sessions.html",
        minijinja::context! {
            section => "sessions",
            accounts => accounts,
            ended => ended,
            ended_name => ended_name,
            ..user.header()
        },
    ))
}

/// `GET /console/sessions`.
pub async fn list(State(state): State<AppState>, user: ConsoleUser) -> Result<Response, PageError> {
    admin_only(&user)?;
    page(&state, &user, None).await
}

#[derive(Deserialize)]
pub struct EndForm {
    csrf: Option<String>,
    account: String,
}

/// `POST /console/sessions/end`: ends every session of one account.
pub async fn end(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsoleForm(form): ConsoleForm<EndForm>,
) -> Result<Response, PageError> {
    admin_only(&user)?;
    user.check_csrf(form.csrf.as_deref())?;
    if form.account.is_empty() || form.account.len() > 512 {
        return Err(PageError(AppError::BadRequest(
            "account: not an account of this console".into(),
        )));
    }
    let name = state
        .console_sessions
        .live()
        .await?
        .into_iter()
        .find(|s| s.account == form.account)
        .map_or_else(|| form.account.clone(), |s| s.name);
    let ended = state.console_sessions.end_all(&form.account).await?;
    state
        .store
        .audit(
            "CONSOLE_SESSIONS_ENDED",
            &user.actor(),
            serde_json::json!({ "account": form.account, "sessions": ended }),
        )
        .await?;
    page(&state, &user, Some((ended, name))).await
}

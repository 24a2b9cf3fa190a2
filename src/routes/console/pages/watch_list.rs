//! `/console/watch-list`: the referrals that need attention now (see [`crate::watch_list`]),
//! within the user's service ids, filterable by kind and service.

use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::ServiceId;
use crate::error::AppError;
use crate::routes::console::session::ConsoleUser;
use crate::routes::console::templates::render;
use crate::routes::console::views::shown;
use crate::routes::console::{ConsoleQuery, PageError};
use crate::state::AppState;
use crate::watch_list::{WatchEntry, WatchFilter, WatchKind, watch_list};

/// The page's filters, as its form sends them (empty fields are no filter).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct WatchFilterForm {
    kind: String,
    service_id: String,
}

#[derive(Serialize)]
struct Row {
    referral: String,
    service: String,
    kind: &'static str,
    since: String,
    archival: Option<String>,
    reason: String,
}

fn row(e: WatchEntry) -> Row {
    Row {
        referral: e.referral.to_string(),
        service: e
            .service_id
            .map_or_else(|| "(unassigned)".to_owned(), |s| s.to_string()),
        kind: e.kind.as_str(),
        since: shown(e.since),
        archival: e.archival_at.map(shown),
        reason: e.reason,
    }
}

/// `/console/watch-list`: every entry the user may see, by kind, oldest first.
pub async fn watch_list_page(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsoleQuery(form): ConsoleQuery<WatchFilterForm>,
) -> Result<Response, PageError> {
    let scope = user.scope();
    let kind = match form.kind.as_str() {
        "" => None,
        name => Some(WatchKind::parse(name).ok_or_else(|| {
            AppError::BadRequest(format!("kind: '{name}' is not a kind of the watch-list"))
        })?),
    };
    let service_id = if form.service_id.is_empty() {
        None
    } else {
        let s = ServiceId::parse(&form.service_id)
            .map_err(|e| AppError::BadRequest(format!("service: {e}")))?;
        Some(scope.service(s)?)
    };
    let filter = WatchFilter {
        kind,
        service_id,
        scope: Some(scope),
    };
    let now = OffsetDateTime::now_utc();
    let list = watch_list(
        state.store.as_ref(),
        &state.config().watch_list,
        now,
        &filter,
    )
    .await?;
    let counts = list.counts();
    let kinds: Vec<(&str, usize)> = WatchKind::ALL
        .into_iter()
        .map(|k| (k.as_str(), counts.get(k)))
        .collect();
    Ok(render(
        "watch_list.html",
        minijinja::context! {
            section => "watch-list",
            rows => list.entries.into_iter().map(row).collect::<Vec<_>>(),
            kinds => kinds,
            filter => form,
            computed => shown(now),
            ..user.header()
        },
    ))
}

//! Admin pages: the outbox (what is pending or dead, with replay and discard, each confirmed
//! first) and the audit trail (filtered, with a check of the whole chain). Staff get 403.

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};

use super::session::ConsoleUser;
use super::templates::render;
use super::views::{UpdateRow, shown, update_row};
use super::{ConsoleForm, ConsolePath, ConsoleQuery, PageError};
use crate::config::ConsoleRole;
use crate::error::AppError;
use crate::routes::request::{self, whole_number};
use crate::state::AppState;
use crate::store::{ChainCheck, UpdateRecord, UpdateState};

/// Audit entries per page, and read from the store at a time.
const AUDIT_ROWS: usize = 100;
const AUDIT_BATCH: usize = 1000;
/// Audit entries one page reads at most while looking for matches.
const AUDIT_SCAN: usize = 50_000;

pub(super) fn admin_only(user: &ConsoleUser) -> Result<(), PageError> {
    if user.role == ConsoleRole::Admin {
        Ok(())
    } else {
        Err(PageError(AppError::Forbidden(format!(
            "{} is staff; this page is for admins",
            user.name
        ))))
    }
}

/// Whether `user` may see `update`'s referral.
async fn sees(
    state: &AppState,
    user: &ConsoleUser,
    update: &UpdateRecord,
) -> Result<bool, PageError> {
    if user.service_ids.is_empty() {
        return Ok(true);
    }
    let record = state.store.referral(&update.referral).await?;
    Ok(record.is_some_and(|r| user.scope().sees(&r)))
}

/// `/console/outbox`: pending and dead updates, oldest first.
pub async fn outbox(
    State(state): State<AppState>,
    user: ConsoleUser,
) -> Result<Response, PageError> {
    admin_only(&user)?;
    let mut rows: Vec<UpdateRow> = Vec::new();
    for update in crate::store::open_updates(state.store.as_ref()).await? {
        if sees(&state, &user, &update).await? {
            rows.push(update_row(&update));
        }
    }
    Ok(render(
        "outbox.html",
        minijinja::context! { section => "outbox", updates => rows, ..user.header() },
    ))
}

/// Replaying or discarding a dead letter.
#[derive(Clone, Copy)]
enum Act {
    Replay,
    Discard,
}

impl Act {
    fn parse(action: &str) -> Result<Self, AppError> {
        match action {
            "replay" => Ok(Act::Replay),
            "discard" => Ok(Act::Discard),
            other => Err(AppError::NotFound(format!(
                "nothing is served at /console/outbox/…/{other}"
            ))),
        }
    }
}

/// The update `id`, when `user` may see it.
async fn dead_letter(
    state: &AppState,
    user: &ConsoleUser,
    id: &str,
) -> Result<UpdateRecord, PageError> {
    Ok(request::update(state, &user.scope(), id).await?)
}

/// `/console/outbox/{id}/{replay|discard}`: what the action will do, and a button to do it.
pub async fn confirm(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsolePath((id, action)): ConsolePath<(String, String)>,
) -> Result<Response, PageError> {
    admin_only(&user)?;
    let act = Act::parse(&action)?;
    let update = dead_letter(&state, &user, &id).await?;
    if update.state != UpdateState::Dead {
        return Err(PageError(AppError::Conflict(format!(
            "update {} is not a dead letter",
            update.id
        ))));
    }
    let (verb, consequence) = match act {
        Act::Replay => (
            "Replay",
            "It is sent to Ocean again, first among its referral's updates, with a fresh retry window.",
        ),
        Act::Discard => (
            "Discard",
            "It is never sent; the referral's later updates go out without it. This cannot be undone.",
        ),
    };
    Ok(render(
        "confirm.html",
        minijinja::context! {
            section => "outbox",
            u => update_row(&update),
            verb => verb,
            action => action,
            consequence => consequence,
            ..user.header()
        },
    ))
}

#[derive(Deserialize)]
pub struct CsrfForm {
    pub(super) csrf: Option<String>,
}

/// Replays or discards the dead letter (audited by the outbox with the user as actor).
pub async fn act(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsolePath((id, action)): ConsolePath<(String, String)>,
    ConsoleForm(form): ConsoleForm<CsrfForm>,
) -> Result<Response, PageError> {
    admin_only(&user)?;
    user.check_csrf(form.csrf.as_deref())?;
    let act = Act::parse(&action)?;
    let update = dead_letter(&state, &user, &id).await?;
    match act {
        Act::Replay => state.outbox.replay(update.id, &user.actor()).await?,
        Act::Discard => state.outbox.discard(update.id, &user.actor()).await?,
    };
    Ok(Redirect::to("/console/outbox").into_response())
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct AuditFilter {
    /// Only entries with this action (exact, e.g. `EXPORTED_REFERRALS`).
    action: String,
    /// Only entries by this actor (exact, e.g. `console:alice`).
    actor: String,
    /// Entries after this sequence number.
    #[serde(skip_serializing)]
    after: String,
}

#[derive(Serialize)]
struct EntryRow {
    seq: u64,
    at: String,
    action: String,
    actor: String,
    details: String,
}

/// `/console/audit`: entries in chain order, filtered, a page at a time.
pub async fn audit(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsoleQuery(filter): ConsoleQuery<AuditFilter>,
) -> Result<Response, PageError> {
    admin_only(&user)?;
    audit_page(&state, &user, filter, None).await
}

async fn audit_page(
    state: &AppState,
    user: &ConsoleUser,
    filter: AuditFilter,
    verdict: Option<minijinja::Value>,
) -> Result<Response, PageError> {
    let mut after = if filter.after.is_empty() {
        0
    } else {
        whole_number(&filter.after)
            .ok_or_else(|| AppError::BadRequest("after must be a whole number".into()))?
    };
    let mut entries = Vec::new();
    let mut scanned = 0;
    let mut more = false;
    'scan: while scanned < AUDIT_SCAN {
        let batch = state.store.audit_entries(after, AUDIT_BATCH).await?;
        let full = batch.len() == AUDIT_BATCH;
        for entry in batch {
            scanned += 1;
            after = entry.seq;
            if (filter.action.is_empty() || entry.action == filter.action)
                && (filter.actor.is_empty() || entry.actor == filter.actor)
            {
                entries.push(EntryRow {
                    seq: entry.seq,
                    at: shown(entry.at),
                    action: entry.action,
                    actor: entry.actor,
                    details: entry.details.to_string(),
                });
                if entries.len() == AUDIT_ROWS {
                    more = true;
                    break 'scan;
                }
            }
        }
        if !full {
            break;
        }
        more = true;
    }
    let next = more.then(|| {
        serde_urlencoded::to_string([
            ("action", filter.action.as_str()),
            ("actor", filter.actor.as_str()),
            ("after", after.to_string().as_str()),
        ])
        .unwrap_or_default()
    });
    Ok(render(
        "audit.html",
        minijinja::context! {
            section => "audit",
            entries => entries,
            filter => filter,
            next => next,
            verdict => verdict,
            ..user.header()
        },
    ))
}

/// Checks the whole chain from its first entry, in batches; shows where it breaks, if it does.
pub async fn verify(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsoleForm(form): ConsoleForm<CsrfForm>,
) -> Result<Response, PageError> {
    admin_only(&user)?;
    user.check_csrf(form.csrf.as_deref())?;
    let mut chain = ChainCheck::default();
    let mut after = 0;
    let verdict = 'verify: loop {
        let batch = state.store.audit_entries(after, AUDIT_BATCH).await?;
        let Some(last) = batch.last().map(|e| e.seq) else {
            break 'verify minijinja::context! {
                kind => "intact",
                text => format!("The chain is intact: {} entries checked.", chain.checked()),
            };
        };
        for entry in &batch {
            if let Err(broken) = chain.check(entry) {
                break 'verify minijinja::context! {
                    kind => "broken",
                    text => format!("The chain breaks at entry {}: {}.", broken.seq, broken.reason),
                };
            }
        }
        after = last;
    };
    state
        .store
        .audit(
            "AUDIT_VERIFIED",
            &user.actor(),
            serde_json::json!({ "checked": chain.checked() }),
        )
        .await?;
    audit_page(&state, &user, AuditFilter::default(), Some(verdict)).await
}

/// `/console/status`: readiness, counts, the outbox worker, the alert conditions holding and
/// the latest alerts, integrations with their authentication scheme, Ocean sites (never a
/// secret).
pub async fn status(
    State(state): State<AppState>,
    user: ConsoleUser,
) -> Result<Response, PageError> {
    admin_only(&user)?;
    status_page(&state, &user, None).await
}

/// Alerts the status page lists, the latest first.
const STATUS_ALERTS: usize = 20;

async fn status_page(
    state: &AppState,
    user: &ConsoleUser,
    check: Option<minijinja::Value>,
) -> Result<Response, PageError> {
    let (store, worker) = crate::routes::health::readiness(state).await;
    let open = crate::store::open_updates(state.store.as_ref()).await?;
    let dead = open.iter().filter(|u| u.state == UpdateState::Dead).count();
    let config = state.config();
    let integrations: Vec<minijinja::Value> = state
        .integration_names()
        .filter_map(|name| state.integration(name))
        .map(|i| {
            minijinja::context! {
                name => i.name.to_string(),
                scheme => i.inbound.scheme(),
                events => i.events.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                default_service => i.default_service.as_ref().map(ToString::to_string),
            }
        })
        .collect();
    let sites: Vec<minijinja::Value> = config
        .sites
        .iter()
        .map(|(name, site)| {
            minijinja::context! {
                name => name,
                base_url => site.base_url,
                token_auth => serde_json::to_value(site.token_auth).ok()
                    .and_then(|v| v.as_str().map(str::to_owned)),
                services => site.service_ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            }
        })
        .collect();
    // The conditions are shown even when the store cannot be read (its own among them).
    let (alerts, alerts_error) = match state
        .alerts
        .recent(state.store.as_ref(), STATUS_ALERTS)
        .await
    {
        Ok(alerts) => (alerts, None),
        Err(e) => (Vec::new(), Some(e.chain())),
    };
    let channels: Vec<&str> = state.alerts.channels().map(|c| c.name.as_str()).collect();
    Ok(render(
        "status.html",
        minijinja::context! {
            section => "status",
            active => minijinja::Value::from_serialize(state.alerts.active()),
            alerts => minijinja::Value::from_serialize(&alerts),
            alerts_error => alerts_error,
            channels => channels.join(", "),
            ready => store.is_none() && worker.is_none(),
            backend => match config.storage.backend {
                crate::config::Backend::Sled => "embedded (sled)",
                crate::config::Backend::Postgres => "PostgreSQL",
            },
            store => store.unwrap_or_else(|| "writable".to_owned()),
            worker => worker.unwrap_or("alive"),
            worker_secs => state.worker_health.since_beat().as_secs(),
            feed_end => state.store.feed_end().await?,
            pending => open.len() - dead,
            dead => dead,
            integrations => integrations,
            sites => sites,
            check => check,
            ..user.header()
        },
    ))
}

/// Runs the same check as `referral-relay check-site`: fetch a token, read the site number.
pub async fn check_site(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsolePath(name): ConsolePath<String>,
    ConsoleForm(form): ConsoleForm<CsrfForm>,
) -> Result<Response, PageError> {
    admin_only(&user)?;
    user.check_csrf(form.csrf.as_deref())?;
    let site = state
        .sites
        .named(&name)
        .ok_or_else(|| AppError::NotFound(format!("no site named '{name}' in [sites]")))?;
    let outcome = site.client().check().await;
    state
        .store
        .audit(
            "SITE_CHECKED",
            &user.actor(),
            serde_json::json!({ "site": name, "ok": outcome.is_ok() }),
        )
        .await?;
    let check = match outcome {
        Ok(status) => minijinja::context! {
            kind => "intact",
            text => format!("Site '{name}': token fetched, site number read (HTTP {status}); the credentials work."),
        },
        Err(e) => minijinja::context! {
            kind => "broken",
            text => format!("Site '{name}': {e:#}"),
        },
    };
    status_page(&state, &user, Some(check)).await
}

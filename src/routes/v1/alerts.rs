//! `/alerts`: the conditions holding now and the latest alerts, with where each was sent; for
//! clients not limited to some service ids (alerts are about the whole relay).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{Caller, ProblemDoc, Query, limit, rfc3339};
use crate::alerts::{AlertDelivery, AlertView, Condition};
use crate::error::{AppError, Problem};
use crate::state::AppState;
use crate::store::AlertRecord;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertsQuery {
    /// How many of the latest alerts (default 100; capped at 500).
    limit: Option<String>,
}

/// What `/alerts` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertsView {
    /// The channels alerts go by: `email`, `webhook:NAME`.
    channels: Vec<String>,
    /// The conditions holding now, as the last look found them.
    active: Vec<ConditionView>,
    /// The latest alerts, newest first.
    alerts: Vec<AlertItemView>,
    /// Why the alerts could not be read from the store now (the conditions are still shown).
    store_error: Option<String>,
}

/// A condition holding now.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConditionView {
    /// Which condition, e.g. `dead_letters:destination:emr`.
    key: String,
    /// `dead_letters`, `failing`, `quiet`, `refused_logins`, `store_unwritable`,
    /// `database_unreachable`.
    kind: String,
    subject: String,
    detail: String,
    /// When it began (RFC 3339).
    #[schema(format = DateTime)]
    since: String,
}

/// One alert.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertItemView {
    /// `alert_` and a UUID: the e-mail's Message-ID, the webhook's `webhook-id`.
    id: String,
    kind: String,
    key: String,
    /// `started`, `cleared`, `event` or `digest`.
    phase: String,
    subject: String,
    detail: String,
    /// When its condition began (RFC 3339).
    #[schema(format = DateTime)]
    started_at: String,
    /// When it was raised (RFC 3339).
    #[schema(format = DateTime)]
    at: String,
    /// Where it went, one entry per channel.
    deliveries: Vec<DeliveryView>,
}

/// One channel's message carrying an alert.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// `email`, or `webhook:NAME`.
    channel: String,
    /// The message's id in the channel's queue (0 when sent from memory).
    message: u64,
    /// `pending`, `delivered` or `discarded` (given up; `last_error` says why).
    state: String,
    attempts: u32,
    last_error: Option<String>,
    #[schema(format = DateTime)]
    delivered_at: Option<String>,
    /// The id of the digest it went in, if it did.
    digest: Option<String>,
    /// Sent straight from memory while the store could not write.
    from_memory: bool,
}

impl From<Condition> for ConditionView {
    fn from(c: Condition) -> Self {
        Self {
            key: c.key,
            kind: c.kind.to_owned(),
            subject: c.subject,
            detail: c.detail,
            since: rfc3339(c.since),
        }
    }
}

impl From<AlertView> for AlertItemView {
    fn from(view: AlertView) -> Self {
        let AlertRecord {
            id,
            kind,
            key,
            phase,
            subject,
            detail,
            started_at,
            at,
            ..
        } = view.alert;
        Self {
            id,
            kind,
            key,
            phase: phase.as_str().to_owned(),
            subject,
            detail,
            started_at: rfc3339(started_at),
            at: rfc3339(at),
            deliveries: view
                .deliveries
                .into_iter()
                .map(DeliveryView::from)
                .collect(),
        }
    }
}

impl From<AlertDelivery> for DeliveryView {
    fn from(d: AlertDelivery) -> Self {
        Self {
            channel: d.channel,
            message: d.message,
            state: d.state.to_owned(),
            attempts: d.attempts,
            last_error: d.last_error,
            delivered_at: d.delivered_at.map(rfc3339),
            digest: d.digest,
            from_memory: d.from_memory,
        }
    }
}

/// The conditions holding now (`active`, as the last look found them) and the latest alerts,
/// newest first, each with its deliveries. While the store cannot be read, `alerts` is empty
/// and `store_error` says why: the conditions (the store's own among them) are still shown.
#[utoipa::path(
    get,
    path = "/alerts",
    params(AlertsQuery),
    responses(
        (status = 200, description = "Conditions holding now, and the latest alerts", body = AlertsView),
        (status = 403, description = "The client is limited to some service ids", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn alerts(
    State(state): State<AppState>,
    Caller(client): Caller,
    Query(q): Query<AlertsQuery>,
) -> Result<Json<AlertsView>, Problem> {
    if !client.service_ids.is_empty() {
        return Err(AppError::Forbidden(format!(
            "client '{}' is limited to some service ids and may not read the relay's alerts",
            client.name
        ))
        .into());
    }
    let limit = limit(q.limit.as_deref())?;
    let (alerts, store_error) = match state.alerts.recent(state.store.as_ref(), limit).await {
        Ok(recent) => (recent.into_iter().map(AlertItemView::from).collect(), None),
        Err(e) => (Vec::new(), Some(e.chain())),
    };
    Ok(Json(AlertsView {
        channels: state.alerts.channels().map(|c| c.name.clone()).collect(),
        active: state
            .alerts
            .active()
            .into_iter()
            .map(ConditionView::from)
            .collect(),
        alerts,
        store_error,
    }))
}

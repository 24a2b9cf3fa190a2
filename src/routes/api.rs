//! The point-of-service API, `/api/v1`: referrals, their versions, and the ordered event feed.
//!
//! Clients authenticate with their key as a bearer token; a client limited to some External
//! Service IDs sees nothing else. Errors are RFC 9457 problem documents. The OpenAPI document
//! at `/api/v1/openapi.json` is generated from the handlers' annotations below.

use std::time::Duration;

use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::auth::api::ApiClient;
use crate::auth::source::ClientAddr;
use crate::domain::{ReferralRef, ServiceId, Summary};
use crate::error::{AppError, FHIR_JSON, Problem};
use crate::state::AppState;
use crate::store::{EventRecord, ReferralRecord, VersionRecord};

/// Largest page of referrals or events.
const MAX_LIMIT: usize = 500;
const DEFAULT_LIMIT: usize = 100;
/// Longest long-poll.
const MAX_WAIT_SECS: u64 = 60;
/// Feed entries one listing request reads at most before answering with a cursor.
const MAX_SCAN: usize = 20_000;

/// Every `/api/v1` route with its handler; the router and the OpenAPI test both read this.
pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/api/v1/referrals", get(list_referrals)),
        ("/api/v1/referrals/{referral}", get(get_referral)),
        (
            "/api/v1/referrals/{referral}/versions/{version}",
            get(get_version),
        ),
        ("/api/v1/events", get(events)),
        ("/api/v1/openapi.json", get(openapi)),
        ("/api/v1/export.csv", get(super::export::export_csv)),
        ("/api/v1/audit", get(audit)),
    ]
    .into_iter()
    .chain(super::updates::routes())
    .collect()
}

pub fn router() -> Router<AppState> {
    routes()
        .into_iter()
        .fold(Router::new(), |router, (path, handler)| {
            router.route(path, handler)
        })
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "referral-relay point-of-service API",
        description = "Read the Ocean eReferrals the relay stored and follow its event feed."
    ),
    paths(
        list_referrals, get_referral, get_version, events, openapi,
        crate::routes::updates::set_status, crate::routes::updates::book,
        crate::routes::updates::cancel, crate::routes::updates::send_message,
        crate::routes::updates::list_updates, crate::routes::updates::get_update,
        crate::routes::updates::replay, crate::routes::updates::discard,
        crate::routes::export::export_csv, audit
    ),
    components(schemas(ReferralView, VersionView, ReferralPage, ReferralDetail, EventView, EventPage, ProblemDoc)),
    modifiers(&BearerKey, &Conventions)
)]
pub struct ApiDoc;

/// The API's shared vocabulary, applied to every operation so the document says exactly what
/// the handlers accept and answer: one schema per parameter name, and the problem answers
/// every operation can give (each handler's annotation lists only its own successes and
/// particular refusals).
struct Conventions;

/// What an identifier (a referral reference, an External Service ID) may be: after trimming,
/// 1 to 256 characters, none of them a control character.
const IDENTIFIER_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$";

impl Conventions {
    /// The schema of a parameter of this name, wherever it appears.
    fn parameter(name: &str) -> Option<utoipa::openapi::Schema> {
        use utoipa::openapi::schema::{
            AnyOfBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type,
        };
        // No upper bound: a page size or wait beyond its cap is capped, a position beyond
        // the end finds nothing.
        let integer = |minimum: u64| {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(minimum))
                .build()
        };
        let string = |format: KnownFormat| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(format)))
                .build()
        };
        Some(match name {
            "referral" | "service_id" => ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(256))
                .pattern(Some(IDENTIFIER_PATTERN))
                .into(),
            "version" | "id" => integer(1).into(),
            "after" | "wait" => integer(0).into(),
            "limit" => integer(1).into(),
            "modified_since" | "from" | "to" => AnyOfBuilder::new()
                .item(string(KnownFormat::Date))
                .item(string(KnownFormat::DateTime))
                .into(),
            "cursor" => ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(CURSOR_PATTERN))
                .into(),
            "state" => ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["pending", "delivered", "dead", "discarded"]))
                .into(),
            "unexported_only" | "mark_exported" | "excel" => {
                ObjectBuilder::new().schema_type(Type::Boolean).into()
            }
            _ => return None,
        })
    }

    fn problem(description: &str) -> utoipa::openapi::Response {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ProblemDoc")))
                    .build(),
            )
            .build()
    }
}

impl utoipa::Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in &mut openapi.paths.paths {
            for operation in [&mut item.get, &mut item.post, &mut item.delete]
                .into_iter()
                .flatten()
            {
                let names: Vec<String> = operation
                    .parameters
                    .iter()
                    .flatten()
                    .map(|p| p.name.clone())
                    .collect();
                for parameter in operation.parameters.iter_mut().flatten() {
                    if let Some(schema) = Self::parameter(&parameter.name) {
                        parameter.schema = Some(schema.into());
                    }
                }
                if path == "/api/v1/openapi.json" {
                    // Served to anyone: no key needed to learn the API.
                    operation.security = Some(Vec::new());
                    continue;
                }
                let mut add = |status: &str, description: &str| {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| Self::problem(description).into());
                };
                if !names.is_empty() || operation.request_body.is_some() {
                    add(
                        "400",
                        "A parameter or the body is invalid; the detail names it",
                    );
                }
                add("401", "No API key, or an unknown one");
                if names
                    .iter()
                    .any(|n| matches!(n.as_str(), "referral" | "id" | "service_id"))
                {
                    add("403", "Outside the client's service ids");
                }
                if names
                    .iter()
                    .any(|n| matches!(n.as_str(), "referral" | "id"))
                {
                    add("404", "No such referral, version or update");
                }
                add(
                    "503",
                    "The store cannot be read or written now; retry later",
                );
            }
        }
    }
}

/// Declares the bearer-key security scheme every operation uses.
struct BearerKey;

impl utoipa::Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "api_key",
            Vec::<String>::new(),
        )]);
    }
}

/// `WWW-Authenticate` of the API: its clients send their key as a bearer token.
const API_CHALLENGE: &str = "Bearer realm=\"referral-relay-api\"";

/// The authenticated API client of a request.
pub struct Caller(pub ApiClient);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        match state.api_clients.authenticate(&parts.headers) {
            Ok(client) => Ok(Caller(client.clone())),
            Err(reason) => {
                let Ok(ClientAddr(source)) = ClientAddr::from_request_parts(parts, state).await;
                state.refused(None, "api".into(), "bearer", reason, source);
                Err(Problem(AppError::Unauthorized {
                    challenge: API_CHALLENGE,
                    reason: reason.to_owned(),
                }))
            }
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Serialize, ToSchema)]
pub(crate) struct ProblemDoc {
    r#type: String,
    title: String,
    status: u16,
    detail: String,
}

/// A referral's current state.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReferralView {
    /// Ocean's referral reference.
    referral: String,
    /// External Service ID it is filed under; null when unassigned.
    service_id: Option<String>,
    integration: String,
    latest_event: String,
    /// Workflow status: the Task status once a Task was seen, else the ServiceRequest status.
    status: Option<String>,
    service_request_status: Option<String>,
    task_status: Option<String>,
    task_status_reason: Option<String>,
    appointment_status: Option<String>,
    appointment_start: Option<String>,
    authored_on: Option<String>,
    patient_name: Option<String>,
    patient_phone: Option<String>,
    patient_email: Option<String>,
    referrer_name: Option<String>,
    referrer_professional_id: Option<String>,
    referring_site: Option<String>,
    recipient_listing: Option<String>,
    description: Option<String>,
    /// `ServiceRequest.note` texts as sent (HTML).
    notes: Vec<String>,
    created_at: String,
    modified_at: String,
    /// Number of stored versions (the latest version's number).
    version_count: u64,
}

impl ReferralView {
    fn new(r: ReferralRecord) -> Self {
        let Summary {
            service_request_status,
            task_status,
            task_status_reason,
            appointment_status,
            appointment_start,
            authored_on,
            patient_name,
            patient_phone,
            patient_email,
            referrer_name,
            referrer_professional_id,
            referring_site,
            recipient_listing,
            description,
            notes,
            carried: _,
        } = r.summary;
        Self {
            status: task_status
                .clone()
                .or_else(|| service_request_status.clone()),
            referral: r.referral.to_string(),
            service_id: r.service_id.map(|s| s.to_string()),
            integration: r.integration.to_string(),
            latest_event: r.latest_event.to_string(),
            service_request_status,
            task_status,
            task_status_reason,
            appointment_status,
            appointment_start,
            authored_on,
            patient_name,
            patient_phone,
            patient_email,
            referrer_name,
            referrer_professional_id,
            referring_site,
            recipient_listing,
            description,
            notes,
            created_at: rfc3339(r.created_at),
            modified_at: rfc3339(r.modified_at),
            version_count: r.version,
        }
    }
}

/// One stored delivery of a referral.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionView {
    version: u64,
    event: String,
    received_at: String,
    integration: String,
    /// Position of this version in the event feed.
    seq: u64,
    bundle_id: Option<String>,
    message_header_id: Option<String>,
    /// Size in bytes of the delivery as received.
    size: u64,
    sha256: String,
    /// Resources that did not conform to FHIR R4 and were read leniently.
    problems: Vec<String>,
    /// True when retention has purged this version's payload and summary.
    purged: bool,
}

impl From<VersionRecord> for VersionView {
    fn from(v: VersionRecord) -> Self {
        Self {
            version: v.version,
            event: v.event.to_string(),
            received_at: rfc3339(v.received_at),
            integration: v.integration.to_string(),
            seq: v.seq,
            bundle_id: v.bundle_id,
            message_header_id: v.message_header_id,
            size: v.size,
            sha256: v.sha256,
            problems: v.problems,
            purged: v.purged,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReferralPage {
    referrals: Vec<ReferralView>,
    /// Pass as `cursor` for the next page; null when the listing is complete.
    next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReferralDetail {
    referral: ReferralView,
    versions: Vec<VersionView>,
}

/// One stored delivery in the feed.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    seq: u64,
    referral: String,
    version: u64,
    event: String,
    service_id: Option<String>,
    received_at: String,
}

impl From<EventRecord> for EventView {
    fn from(e: EventRecord) -> Self {
        Self {
            seq: e.seq,
            referral: e.referral.to_string(),
            version: e.version,
            event: e.event.to_string(),
            service_id: e.service_id.map(|s| s.to_string()),
            received_at: rfc3339(e.received_at),
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

pub(crate) fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// Parses a query string into `T`, naming the offending parameter on failure.
pub(crate) fn query<T: for<'de> Deserialize<'de>>(raw: Option<&str>) -> Result<T, AppError> {
    serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| {
        AppError::BadRequest(format!(
            "invalid query: {}",
            crate::domain::redact_quoted(&e.to_string())
        ))
    })
}

/// A whole number in a query or path: digits only; one too large for 64 bits reads as the
/// largest (a page size or a wait is capped anyway, a position that far is past the end).
pub(crate) fn whole_number(text: &str) -> Option<u64> {
    match text.parse::<u64>() {
        Ok(n) => Some(n),
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow && !text.starts_with('+') => {
            Some(u64::MAX)
        }
        Err(_) => None,
    }
}

/// The `limit` query parameter: at least 1; larger than [`MAX_LIMIT`] is capped, not refused.
pub(crate) fn limit(raw: Option<&str>) -> Result<usize, AppError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => whole_number(text)
            .filter(|n| *n >= 1)
            .map(|n| usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT))
            .ok_or_else(|| {
                AppError::BadRequest("limit must be a whole number of at least 1".into())
            }),
    }
}

/// `2026-11-02` (midnight UTC) or an RFC 3339 date-time.
pub(crate) fn instant(name: &str, raw: &str, end_of_day: bool) -> Result<OffsetDateTime, AppError> {
    crate::export::parse_bound(raw, end_of_day).ok_or_else(|| {
        AppError::BadRequest(format!(
            "{name} must be a date (YYYY-MM-DD) or an RFC 3339 date-time"
        ))
    })
}

/// The `after` query parameter: a sequence number or id, 0 when absent.
pub(crate) fn after_param(raw: Option<&str>) -> Result<u64, AppError> {
    raw.map_or(Ok(0), |text| {
        whole_number(text)
            .ok_or_else(|| AppError::BadRequest("after must be a whole number".into()))
    })
}

/// What a listing cursor looks like: two feed sequence numbers, `after.until`.
const CURSOR_PATTERN: &str = "^(0|[1-9][0-9]{0,18})\\.(0|[1-9][0-9]{0,18})$";

/// The listing's position: after `after`, in the snapshot bounded by `until`.
fn encode_cursor(after: u64, until: u64) -> String {
    format!("{after}.{until}")
}

/// A cursor as [`encode_cursor`] makes it (or base64url of the same, as earlier versions
/// issued). A cursor past its own bound reads as a finished listing.
fn decode_cursor(cursor: &str) -> Result<(u64, u64), AppError> {
    let bad = || AppError::BadRequest("cursor is not one this API issued".into());
    let text = if cursor.contains('.') {
        cursor.to_owned()
    } else {
        URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(bad)?
    };
    let (after, until) = text.split_once('.').ok_or_else(bad)?;
    let (after, until): (u64, u64) = (
        after.parse().map_err(|_| bad())?,
        until.parse().map_err(|_| bad())?,
    );
    Ok((after.min(until), until))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only referrals filed under this External Service ID.
    service_id: Option<String>,
    /// Only referrals with this workflow status (Task status, else ServiceRequest status).
    status: Option<String>,
    /// Only referrals whose latest event has this code.
    event: Option<String>,
    /// Only referrals modified at or after this date or date-time.
    modified_since: Option<String>,
    /// Page size (default 100; more than 500 is capped at 500).
    limit: Option<String>,
    /// From the previous page's `next_cursor`.
    cursor: Option<String>,
}

/// List referrals, ordered by their latest modification.
///
/// A listing is a snapshot taken by its first page: later pages neither skip nor repeat a
/// referral while deliveries keep arriving. Changes after the snapshot show up in the next
/// listing (use `modified_since`) and at once in the event feed.
#[utoipa::path(
    get,
    path = "/api/v1/referrals",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of referrals", body = ReferralPage),
        (status = 400, description = "A query parameter is invalid", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No or an unknown API key", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "service_id outside the client's service ids", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn list_referrals(
    State(state): State<AppState>,
    Caller(client): Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<ReferralPage>, Problem> {
    let q: ListQuery = query(raw.as_deref())?;
    let limit = limit(q.limit.as_deref())?;
    let service = service_param(&client, q.service_id.as_deref())?;
    let since = q
        .modified_since
        .as_deref()
        .map(|s| instant("modified_since", s, false))
        .transpose()?;
    let store = &state.store;
    let (mut after, until) = match q.cursor.as_deref() {
        Some(cursor) => decode_cursor(cursor)?,
        None => {
            let start = match since {
                Some(since) => store.seq_before(since).await?,
                None => 0,
            };
            (start, store.durable_seq())
        }
    };

    let mut referrals = Vec::new();
    let mut scanned = 0;
    while after < until && referrals.len() < limit && scanned < MAX_SCAN {
        let slice = store.referrals_changed(after, until, 1000).await?;
        scanned += 1000;
        let mut stopped_early = false;
        for (seq, record) in slice.referrals {
            let keep = client.may_see(record.service_id.as_ref())
                && service
                    .as_ref()
                    .is_none_or(|s| record.service_id.as_ref() == Some(s))
                && q.event
                    .as_deref()
                    .is_none_or(|e| record.latest_event.as_str() == e)
                && q.status.as_deref().is_none_or(|s| {
                    record
                        .summary
                        .task_status
                        .as_deref()
                        .or(record.summary.service_request_status.as_deref())
                        == Some(s)
                })
                && since.is_none_or(|t| record.modified_at >= t);
            if keep {
                referrals.push(ReferralView::new(record));
            }
            if referrals.len() == limit {
                after = seq;
                stopped_early = true;
                break;
            }
        }
        if !stopped_early {
            after = slice.scanned_to;
        }
    }
    let next_cursor = (after < until).then(|| encode_cursor(after, until));
    Ok(Json(ReferralPage {
        referrals,
        next_cursor,
    }))
}

/// The `service_id` query parameter, checked and within the client's service ids.
pub(crate) fn service_param(
    client: &ApiClient,
    raw: Option<&str>,
) -> Result<Option<ServiceId>, AppError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let service =
        ServiceId::parse(raw).map_err(|e| AppError::BadRequest(format!("service_id: {e}")))?;
    if !client.may_see(Some(&service)) {
        return Err(AppError::Forbidden(format!(
            "client '{}' may not read service_id {service}",
            client.name
        )));
    }
    Ok(Some(service))
}

/// Looks up a referral the client may see.
pub(crate) async fn visible(
    state: &AppState,
    client: &ApiClient,
    referral: &str,
) -> Result<(ReferralRef, ReferralRecord), AppError> {
    let reference =
        ReferralRef::parse(referral).map_err(|e| AppError::BadRequest(format!("referral: {e}")))?;
    let record = state
        .store
        .referral(&reference)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no referral {reference} is stored")))?;
    if !client.may_see(record.service_id.as_ref()) {
        return Err(AppError::Forbidden(format!(
            "client '{}' may not read referrals of this service",
            client.name
        )));
    }
    Ok((reference, record))
}

/// One referral and its versions.
#[utoipa::path(
    get,
    path = "/api/v1/referrals/{referral}",
    params(("referral" = String, Path, description = "Ocean's referral reference")),
    responses(
        (status = 200, description = "The referral and its versions", body = ReferralDetail),
        (status = 401, description = "No or an unknown API key", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Outside the client's service ids", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such referral", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn get_referral(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path(referral): Path<String>,
) -> Result<Json<ReferralDetail>, Problem> {
    let (reference, record) = visible(&state, &client, &referral).await?;
    let versions = state.store.versions(&reference).await?;
    Ok(Json(ReferralDetail {
        referral: ReferralView::new(record),
        versions: versions.into_iter().map(VersionView::from).collect(),
    }))
}

/// One version exactly as it was received, byte for byte.
#[utoipa::path(
    get,
    path = "/api/v1/referrals/{referral}/versions/{version}",
    params(
        ("referral" = String, Path, description = "Ocean's referral reference"),
        ("version" = u64, Path, description = "Version number, from 1"),
    ),
    responses(
        (status = 200, description = "The FHIR message Bundle as received", content_type = "application/fhir+json"),
        (status = 401, description = "No or an unknown API key", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Outside the client's service ids", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such referral or version", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn get_version(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path((referral, version)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let version = whole_number(&version)
        .ok_or_else(|| AppError::BadRequest("version must be a whole number".into()))?;
    let (reference, _) = visible(&state, &client, &referral).await?;
    let raw = state
        .store
        .payload(&reference, version)
        .await?
        .ok_or_else(|| {
            AppError::NotFound(format!("referral {reference} has no version {version}"))
        })?;
    let mut response = (StatusCode::OK, raw).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    Ok(response)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
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
    path = "/api/v1/events",
    params(EventsQuery),
    responses(
        (status = 200, description = "Events after `after`; empty when the wait ended", body = EventPage),
        (status = 409, description = "`after` is beyond the end of this store's feed (a cursor from another or a reset store)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 400, description = "A query parameter is invalid", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No or an unknown API key", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn events(
    State(state): State<AppState>,
    Caller(client): Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<EventPage>, Problem> {
    let q: EventsQuery = query(raw.as_deref())?;
    let limit = limit(q.limit.as_deref())?;
    let mut after = after_param(q.after.as_deref())?;
    let wait = match q.wait.as_deref() {
        None => 0,
        Some(text) => whole_number(text)
            .ok_or_else(|| AppError::BadRequest("wait must be a whole number of seconds".into()))?
            .min(MAX_WAIT_SECS),
    };
    if after > state.store.durable_seq() {
        return Err(AppError::Conflict(format!(
            "after={after} is beyond the end of the feed ({}): this store is not the one the cursor came from (restored or reset?); start again from 0",
            state.store.durable_seq()
        )).into());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        let batch = state.store.events_after(after, limit).await?;
        if let Some(last) = batch.last() {
            after = last.seq;
        }
        let events: Vec<EventView> = batch
            .into_iter()
            .filter(|e| client.may_see(e.service_id.as_ref()))
            .map(EventView::from)
            .collect();
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

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Entries after this sequence number.
    after: Option<String>,
    /// Page size (default 100; capped at 500).
    limit: Option<String>,
}

/// The audit log, oldest first. Only clients not limited to some service ids may read it.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit entries, each with the hash of the one before"),
        (status = 403, description = "The client is limited to some service ids", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn audit(
    State(state): State<AppState>,
    Caller(client): Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<serde_json::Value>, Problem> {
    if !client.service_ids.is_empty() {
        return Err(AppError::Forbidden(format!(
            "client '{}' is limited to some service ids and may not read the whole audit log",
            client.name
        ))
        .into());
    }
    let q: AuditQuery = query(raw.as_deref())?;
    let after = after_param(q.after.as_deref())?;
    let entries = state
        .store
        .audit_entries(after, limit(q.limit.as_deref())?)
        .await?;
    let next = entries.last().map_or(after, |e| e.seq);
    Ok(Json(serde_json::json!({"entries": entries, "next": next})))
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc = ApiDoc::openapi();
        let paths: std::collections::BTreeSet<&str> = routes().iter().map(|(p, _)| *p).collect();
        for path in &paths {
            assert!(
                doc.paths.paths.contains_key(*path),
                "{path} is not documented"
            );
        }
        assert_eq!(
            doc.paths.paths.len(),
            paths.len(),
            "documented paths without a route"
        );
        assert!(
            serde_json::to_value(&doc).unwrap()["openapi"]
                .as_str()
                .unwrap()
                .starts_with("3.1")
        );
    }

    #[test]
    fn cursors_round_trip_and_refuse_forgeries() {
        assert_eq!(decode_cursor(&encode_cursor(5, 9)).unwrap(), (5, 9));
        assert_eq!(
            decode_cursor(&URL_SAFE_NO_PAD.encode("5.9")).unwrap(),
            (5, 9)
        );
        assert_eq!(decode_cursor("9.5").unwrap(), (5, 5));
        assert!(decode_cursor("!!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("x.5")).is_err());
        assert!(decode_cursor("1.99999999999999999999").is_err());
    }
}

//! How the console shows what several of its pages list: times, days typed in a form, and
//! updates for Ocean.

use serde::Serialize;
use time::OffsetDateTime;
use time::macros::format_description;

use crate::error::AppError;
use crate::store::UpdateRecord;

/// A time as the console shows it: `2026-11-30 14:05 UTC`.
pub fn shown(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(format_description!(
            "[year]-[month]-[day] [hour]:[minute] UTC"
        ))
        .unwrap_or_default()
}

pub fn day(name: &str, raw: &str, end_of_day: bool) -> Result<Option<OffsetDateTime>, AppError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let date = time::Date::parse(raw, format_description!("[year]-[month]-[day]"))
        .map_err(|_| AppError::BadRequest(format!("{name}: '{raw}' is not a date (YYYY-MM-DD)")))?;
    let at = if end_of_day {
        date.with_hms_nano(23, 59, 59, 999_999_999)
    } else {
        date.with_hms(0, 0, 0)
    }
    .map_err(|_| AppError::BadRequest(format!("{name}: '{raw}' is not a date")))?;
    Ok(Some(at.assume_utc()))
}

/// One update sent (or to be sent) to Ocean, as the referral and outbox pages list it.
#[derive(Serialize)]
pub struct UpdateRow {
    id: u64,
    referral: String,
    pub kind: &'static str,
    detail: String,
    state: String,
    attempts: u32,
    last_error: Option<String>,
    accepted: String,
    delivered: Option<String>,
    next_attempt: String,
}

pub fn update_row(u: &UpdateRecord) -> UpdateRow {
    let detail = match (&u.task_status, &u.appointment) {
        (Some(status), _) => status.clone(),
        (None, Some(slot)) => serde_json::to_value(slot)
            .ok()
            .and_then(|v| v.get("start").and_then(|s| s.as_str().map(str::to_owned)))
            .unwrap_or_default(),
        _ => String::new(),
    };
    UpdateRow {
        id: u.id,
        referral: u.referral.to_string(),
        kind: u.kind.as_str(),
        detail,
        state: serde_json::to_value(u.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        attempts: u.attempts,
        last_error: u.last_error.clone(),
        accepted: shown(u.created_at),
        delivered: u.delivered_at.map(shown),
        next_attempt: shown(u.next_attempt_at),
    }
}

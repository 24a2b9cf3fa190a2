//! How an alert reads: the e-mail's subject and plain text, the webhook's JSON. Made from the
//! record alone (identifiers, counts, the relay's own words).

use time::format_description::well_known::Rfc3339;

use crate::store::{AlertPhase, AlertRecord};

/// `[referral-relay] STARTED: ...`, `CLEARED`, `EVENT`, `DIGEST`.
pub fn mail_subject(alert: &AlertRecord) -> String {
    let phase = alert.phase.as_str().to_ascii_uppercase();
    format!("[referral-relay] {phase}: {}", alert.subject)
}

/// The mail's text: what, since when, for how long, and a digest's alerts one after another.
pub fn mail_text(alert: &AlertRecord) -> String {
    let mut text = String::new();
    describe(alert, &mut text);
    for item in &alert.items {
        text.push_str("\n---\n");
        text.push_str(&format!(
            "{}: {}\n",
            item.phase.as_str().to_ascii_uppercase(),
            item.subject
        ));
        describe(item, &mut text);
    }
    text.push_str(
        "\nSee GET /api/v1/alerts, or the console's status page, for every alert and where it was sent.\n",
    );
    text
}

fn describe(alert: &AlertRecord, text: &mut String) {
    if !alert.detail.is_empty() {
        text.push_str(&alert.detail);
        text.push('\n');
    }
    text.push_str(&format!(
        "Alert: {} ({}, {})\n",
        alert.id, alert.kind, alert.key
    ));
    match alert.phase {
        AlertPhase::Started => text.push_str(&format!("Started: {}\n", rfc3339(alert.started_at))),
        AlertPhase::Cleared => {
            text.push_str(&format!("Started: {}\n", rfc3339(alert.started_at)));
            text.push_str(&format!(
                "Cleared: {} (it lasted {})\n",
                rfc3339(alert.at),
                lasted(alert)
            ));
        }
        AlertPhase::Event | AlertPhase::Digest => {
            text.push_str(&format!("At: {}\n", rfc3339(alert.at)));
        }
    }
}

/// How long a cleared condition held, e.g. `2 h 5 min`, `40 s`.
pub fn lasted(alert: &AlertRecord) -> String {
    let secs = (alert.at - alert.started_at).whole_seconds().max(0);
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// The webhook's body: `{"type": "alert.started", "timestamp": ..., "data": {the alert}}`, in
/// the shape Standard Webhooks suggests.
pub fn webhook_json(alert: &AlertRecord) -> Vec<u8> {
    let mut data = serde_json::to_value(alert).unwrap_or_default();
    if alert.phase == AlertPhase::Cleared
        && let Some(object) = data.as_object_mut()
    {
        let secs = (alert.at - alert.started_at).whole_seconds().max(0);
        object.insert("lasted_secs".into(), secs.into());
    }
    let body = serde_json::json!({
        "type": format!("alert.{}", alert.phase.as_str()),
        "timestamp": rfc3339(alert.at),
        "data": data,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cleared_alert_says_how_long_it_lasted() {
        let start = time::OffsetDateTime::from_unix_timestamp(1_796_637_600).unwrap();
        let mut alert = AlertRecord::new(
            "quiet",
            "quiet:ocean",
            AlertPhase::Cleared,
            "no delivery on integration 'ocean'".into(),
            String::new(),
            start,
        );
        alert.at = start + time::Duration::minutes(125);
        assert_eq!(lasted(&alert), "2 h 5 min");
        assert!(mail_text(&alert).contains("it lasted 2 h 5 min"));
        assert_eq!(
            mail_subject(&alert),
            "[referral-relay] CLEARED: no delivery on integration 'ocean'"
        );
        let json: serde_json::Value = serde_json::from_slice(&webhook_json(&alert)).unwrap();
        assert_eq!(json["type"], "alert.cleared");
        assert_eq!(json["data"]["lasted_secs"], 7500);
    }
}

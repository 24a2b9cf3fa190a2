//! The CSV backup export: a pure function from referral records to any `io::Write`.
//!
//! Columns follow Ocean's own export, then three of ours. Quoting is RFC 4180; a cell that a
//! spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, tab or CR) is
//! neutralised with a leading apostrophe. The referral note, HTML in Ocean's payloads, is
//! written as plain text.

use std::io::{self, Write};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::ServiceId;
use crate::store::ReferralRecord;

/// The header row, in order.
pub const COLUMNS: [&str; 18] = [
    "Referral Reference",
    "Patient Name",
    "Description",
    "Status",
    "Referral Date",
    "Booked Date",
    "Referring Site",
    "Recipient Site",
    "Clinician",
    "Professional ID",
    "Patient Phone",
    "Patient Email",
    "Internal Comments",
    "Referrer Comments",
    "Referral Note",
    "External Service ID",
    "Last Modified",
    "Exported At",
];

/// Which referrals an export holds.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    /// Modified at or after.
    pub from: Option<OffsetDateTime>,
    /// Modified at or before.
    pub to: Option<OffsetDateTime>,
    pub service: Option<ServiceId>,
    /// Only referrals never exported, or modified since their last export.
    pub unexported_only: bool,
}

impl ExportFilter {
    /// Whether `r` belongs in the export (the date range is applied by the store scan).
    pub fn keeps(&self, r: &ReferralRecord) -> bool {
        self.service
            .as_ref()
            .is_none_or(|s| r.service_id.as_ref() == Some(s))
            && (!self.unexported_only || r.exported_at.is_none_or(|at| r.modified_at > at))
    }

    /// The filter as recorded in the audit entry.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "from": self.from.map(timestamp),
            "to": self.to.map(timestamp),
            "service_id": self.service.as_ref().map(ToString::to_string),
            "unexported_only": self.unexported_only,
        })
    }
}

/// Writes the export straight from a store (the CLI, with the service stopped): every row
/// the filter keeps, then marks and audits. Returns the number of rows. A terminal on stderr
/// gets a running count.
pub async fn export_from_store(
    store: &dyn crate::store::Store,
    filter: &ExportFilter,
    mark: bool,
    excel: bool,
    out: &mut dyn Write,
    actor: &str,
) -> anyhow::Result<usize> {
    use std::io::IsTerminal;
    let progress = std::io::stderr().is_terminal();
    let mut out = io::BufWriter::new(out);
    if excel {
        out.write_all(BOM)?;
    }
    write_header(&mut out)?;
    let (mut rows, mut written, mut after) = (0usize, Vec::new(), None);
    loop {
        let batch = store
            .referrals_modified(filter.from, filter.to, after, 500)
            .await?;
        for record in batch.referrals.iter().filter(|r| filter.keeps(r)) {
            write_row(&mut out, record)?;
            rows += 1;
            if mark {
                written.push((record.referral.clone(), record.modified_at));
            }
            if progress && rows % 1000 == 0 {
                eprint!("\r{rows} referrals");
            }
        }
        after = batch.next;
        if after.is_none() {
            break;
        }
    }
    out.flush()?;
    if progress {
        eprint!("\r");
    }
    store
        .audit(
            "EXPORTED_REFERRALS",
            actor,
            serde_json::json!({"rows": rows, "filter": filter.describe(), "mark_exported": mark}),
        )
        .await?;
    if mark {
        store
            .mark_exported(&written, OffsetDateTime::now_utc())
            .await?;
    }
    Ok(rows)
}

/// A date (`YYYY-MM-DD`) or RFC 3339 date-time; a bare date as an upper bound covers the day.
pub fn parse_bound(raw: &str, end_of_day: bool) -> Option<OffsetDateTime> {
    if let Ok(at) = OffsetDateTime::parse(raw, &Rfc3339) {
        return Some(at);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let at = time::Date::parse(raw, format).ok()?.midnight().assume_utc();
    Some(if end_of_day {
        at + time::Duration::days(1) - time::Duration::nanoseconds(1)
    } else {
        at
    })
}

/// UTF-8 byte order mark, so Excel reads the file as UTF-8.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Writes the header row.
pub fn write_header(out: &mut impl Write) -> io::Result<()> {
    write_cells(out, COLUMNS.iter().map(|c| (*c).to_owned()))
}

/// Writes one referral as a row.
pub fn write_row(out: &mut impl Write, r: &ReferralRecord) -> io::Result<()> {
    let s = &r.summary;
    let status = s
        .task_status
        .clone()
        .or_else(|| s.service_request_status.clone())
        .unwrap_or_default();
    let booked = if s.appointment_status.as_deref() == Some("booked") {
        s.appointment_start.clone()
    } else {
        None
    };
    let note = s
        .notes
        .iter()
        .map(|n| html_to_text(n))
        .collect::<Vec<_>>()
        .join("\n\n");
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    write_cells(
        out,
        [
            r.referral.to_string(),
            text(&s.patient_name),
            text(&s.description),
            status,
            s.authored_on
                .clone()
                .unwrap_or_else(|| timestamp(r.created_at)),
            booked.unwrap_or_default(),
            text(&s.referring_site),
            text(&s.recipient_listing),
            text(&s.referrer_name),
            text(&s.referrer_professional_id),
            text(&s.patient_phone),
            text(&s.patient_email),
            // Ocean's internal and referrer comments are not part of the FHIR messages it
            // sends; the columns stay, empty, so the layout matches Ocean's export.
            String::new(),
            String::new(),
            note,
            r.service_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            timestamp(r.modified_at),
            r.exported_at.map(timestamp).unwrap_or_default(),
        ],
    )
}

fn timestamp(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

fn write_cells(out: &mut impl Write, cells: impl IntoIterator<Item = String>) -> io::Result<()> {
    let mut first = true;
    for cell in cells {
        if !first {
            out.write_all(b",")?;
        }
        first = false;
        out.write_all(cell_text(&cell).as_bytes())?;
    }
    out.write_all(b"\r\n")
}

/// One cell, neutralised against formula injection and quoted when RFC 4180 requires it.
fn cell_text(value: &str) -> String {
    let neutral = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if neutral.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", neutral.replace('"', "\"\""))
    } else {
        neutral
    }
}

/// Plain text of an HTML fragment: tags dropped, line breaks kept, entities decoded.
pub fn html_to_text(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        text.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('>') else {
            text.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let tag = rest[start + 1..start + end].trim().to_ascii_lowercase();
        let name = tag
            .trim_start_matches('/')
            .split([' ', '/'])
            .next()
            .unwrap_or("");
        if matches!(name, "br" | "p" | "div" | "li" | "tr" | "h1" | "h2" | "h3")
            && !text.ends_with('\n')
            && !text.is_empty()
        {
            text.push('\n');
        }
        rest = &rest[start + end + 1..];
    }
    text.push_str(rest);
    let decoded = decode_entities(&text);
    decoded
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let decoded = after.find(';').filter(|&end| end <= 10).and_then(|end| {
            let name = &after[..end];
            let c = match name {
                "nbsp" => Some(' '),
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => name
                    .strip_prefix("#x")
                    .or_else(|| name.strip_prefix("#X"))
                    .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                    .or_else(|| name.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            }?;
            Some((c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &after[end + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_quoted_as_rfc_4180_says() {
        assert_eq!(cell_text("plain"), "plain");
        assert_eq!(cell_text("a,b"), "\"a,b\"");
        assert_eq!(cell_text("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell_text("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn formula_like_cells_are_neutralised() {
        assert_eq!(cell_text("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell_text("+1 555"), "'+1 555");
        assert_eq!(cell_text("-2"), "'-2");
        assert_eq!(cell_text("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell_text("\tx"), "'\tx");
        assert_eq!(cell_text("\rx"), "\"'\rx\"");
        assert_eq!(cell_text("555-010-0142"), "555-010-0142");
    }

    #[test]
    fn html_becomes_plain_text() {
        assert_eq!(
            html_to_text(
                "<b>Reason for Referral:</b> Exertional chest pain&nbsp;<br/><b>History:</b> none&amp;nothing &lt;3&#33;"
            ),
            "Reason for Referral: Exertional chest pain\nHistory: none&nothing <3!"
        );
        assert_eq!(html_to_text("<p>one</p><p>two</p>"), "one\ntwo");
        assert_eq!(html_to_text("a < b & c"), "a < b & c");
        assert_eq!(
            html_to_text("<i>Palpitations</i> at night"),
            "Palpitations at night"
        );
    }
}

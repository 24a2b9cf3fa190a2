//! The CSV backup's rows: Ocean's export columns, then three of ours, written with the `csv`
//! crate as RFC 4180 with every field quoted.
//!
//! A spreadsheet must never run a cell as a formula, in any locale: a file opened with another
//! separator (a French-Canadian Excel splits on `;`) or without honouring quotes splits cells in
//! new places, so a `'` goes before `=`, `+`, `-` or `@` wherever a cell could begin: at the
//! start, and after a comma, semicolon, tab or line break (spaces between are skipped). The
//! referral note, HTML in Ocean's payloads, is written as plain text.

use std::io::{self, Write};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::html::html_to_text;
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

/// UTF-8 byte order mark, so Excel reads the file as UTF-8.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A CSV writer onto `out` that quotes every field and ends rows with CRLF (RFC 4180). Made per
/// call with a small buffer, so rows can go straight into a caller's chunk.
fn csv_writer<W: Write>(out: W) -> csv::Writer<W> {
    csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .terminator(csv::Terminator::CRLF)
        .buffer_capacity(1024)
        .from_writer(out)
}

/// Writes the header row.
pub fn write_header(out: &mut impl Write) -> io::Result<()> {
    let mut csv = csv_writer(out);
    csv.write_record(COLUMNS).map_err(io::Error::other)?;
    csv.flush()
}

/// Writes one referral as a row.
pub fn write_row(out: &mut impl Write, r: &ReferralRecord) -> io::Result<()> {
    let mut csv = csv_writer(out);
    let cells = cells(r);
    csv.write_record(cells.iter().map(|cell| neutralise(cell).into_owned()))
        .map_err(io::Error::other)?;
    csv.flush()
}

/// The cells of one referral's row, in [`COLUMNS`] order.
fn cells(r: &ReferralRecord) -> [String; 18] {
    let s = &r.summary;
    let status = s.status().unwrap_or_default().to_owned();
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
    ]
}

pub(super) fn timestamp(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// Characters that make a spreadsheet read a cell as a formula when they start it (with their
/// full-width forms, which East Asian spreadsheets treat alike).
const FORMULA_STARTS: [char; 8] = [
    '=', '+', '-', '@', '\u{ff1d}', '\u{ff0b}', '\u{ff0d}', '\u{ff20}',
];
/// Characters after which a spreadsheet may begin a new cell: the separators of common locales
/// and line breaks.
const CELL_BREAKS: [char; 5] = [',', ';', '\t', '\n', '\r'];

/// `value` with a `'` before every formula start at a place a cell may begin. A cell that
/// begins with a tab or CR is neutralised too, as OWASP advises.
fn neutralise(value: &str) -> std::borrow::Cow<'_, str> {
    let needs = |from: usize| -> Option<usize> {
        let rest = &value[from..];
        let offset = rest.len() - rest.trim_start_matches(' ').len();
        rest[offset..]
            .starts_with(FORMULA_STARTS)
            .then_some(from + offset)
    };
    let mut marks: Vec<usize> = Vec::new();
    if value.starts_with(['\t', '\r']) {
        marks.push(0);
    } else if let Some(at) = needs(0) {
        marks.push(at);
    }
    for (i, c) in value.char_indices() {
        if CELL_BREAKS.contains(&c)
            && let Some(at) = needs(i + c.len_utf8())
        {
            marks.push(at);
        }
    }
    if marks.is_empty() {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + marks.len());
    let mut last = 0;
    for at in marks {
        out.push_str(&value[last..at]);
        out.push('\'');
        last = at;
    }
    out.push_str(&value[last..]);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(record: &ReferralRecord) -> String {
        let mut out = Vec::new();
        write_row(&mut out, record).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_field_is_quoted_as_rfc_4180_says() {
        let mut record: ReferralRecord = serde_json::from_value(serde_json::json!({
            "referral": "R-1", "service_id": null, "integration": "default",
            "latest_event": "add-service-request", "version": 1,
            "created_at": "2026-11-02T09:00:00Z", "modified_at": "2026-11-02T09:00:00Z",
            "summary": {}
        }))
        .unwrap();
        record.summary.patient_name = Some("Doe, \"Sam\"".into());
        record.summary.notes = vec!["two<br/>lines".into()];
        let row = written(&record);
        assert!(
            row.starts_with("\"R-1\",\"Doe, \"\"Sam\"\"\",\"\","),
            "{row}"
        );
        assert!(row.contains("\"two\nlines\""), "{row}");
        assert!(row.ends_with("\"\"\r\n"), "{row}");
    }

    #[test]
    fn formula_like_cells_are_neutralised_wherever_a_cell_may_begin() {
        assert_eq!(neutralise("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(neutralise("+1 555"), "'+1 555");
        assert_eq!(neutralise("-2"), "'-2");
        assert_eq!(neutralise("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(neutralise("\tx"), "'\tx");
        assert_eq!(neutralise("\rx"), "'\rx");
        assert_eq!(neutralise("555-010-0142"), "555-010-0142");
        assert_eq!(
            neutralise("plain text, no trouble"),
            "plain text, no trouble"
        );
        // Split on another separator, or on a line, each piece starts clean.
        assert_eq!(
            neutralise("Synthetic assessment;=cmd|' /C calc'!A0"),
            "Synthetic assessment;'=cmd|' /C calc'!A0"
        );
        assert_eq!(neutralise("a,  +b\t-c\n@d"), "a,  '+b\t'-c\n'@d");
        assert_eq!(neutralise("\u{ff1d}1+1"), "'\u{ff1d}1+1");
    }
}

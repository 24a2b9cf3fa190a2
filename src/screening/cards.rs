//! The CDS Hooks 2.0 documents the relay answers with: discovery (`GET /cds-services`) and a
//! service's cards (`POST /cds-services/{id}`). Field names and limits follow
//! <https://cds-hooks.hl7.org/2.0/>.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Indicator;

/// The hook every screening service answers.
pub const HOOK: &str = "order-sign";

/// The longest summary a card should have (CDS Hooks 2.0: "<140-character summary").
pub const MAX_SUMMARY_CHARS: usize = 140;

/// The prefetch templates discovery asks Ocean to fill: the patient, and the draft referral
/// as a v0.11 message Bundle (Ocean's own `_query`).
pub const PREFETCH: [(&str, &str); 2] = [
    ("patient", "Patient/{{context.patientId}}"),
    ("v11Bundle", "Bundle?_query=on-v11-add-service-request"),
];

/// `GET /cds-services`.
#[derive(Debug, Serialize)]
pub struct Discovery {
    pub services: Vec<ServiceEntry>,
}

/// One CDS service in discovery.
#[derive(Debug, Serialize)]
pub struct ServiceEntry {
    pub hook: &'static str,
    pub title: String,
    pub description: String,
    pub id: String,
    pub prefetch: BTreeMap<&'static str, &'static str>,
}

/// A service's answer: the cards, possibly none.
#[derive(Debug, Serialize)]
pub struct CdsResponse {
    pub cards: Vec<Card>,
}

/// One card.
#[derive(Debug, Clone, Serialize)]
pub struct Card {
    /// A fresh UUID per card, so a client can send feedback about it.
    pub uuid: String,
    /// At most [`MAX_SUMMARY_CHARS`] characters.
    pub summary: String,
    /// Markdown: what to fix, in full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub indicator: Indicator,
    pub source: Source,
}

/// Where a card comes from: the listing's screening service.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Characters a card shows as written: control characters and line or paragraph separators
/// become spaces, and invisible format characters (zero-width, bidirectional controls, soft
/// hyphens, variation selectors, tags: text that could read differently than it is) go.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| !invisible(*c))
        .map(|c| {
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// Format characters (Unicode category Cf and the like) that show nothing.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
}

/// `text` cut to [`MAX_SUMMARY_CHARS`] characters, ending with `…` when cut; plain text on one
/// line (see [`printable`]).
pub fn summary(text: &str) -> String {
    let text = printable(text);
    let text = text.trim();
    if text.chars().count() <= MAX_SUMMARY_CHARS {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_SUMMARY_CHARS - 1).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

/// `text` with Markdown's punctuation escaped, so a label or an item's text shows as written
/// (never as a link or an image).
pub fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in printable(text).chars() {
        if matches!(
            c,
            '\\' | '`'
                | '*'
                | '_'
                | '{'
                | '}'
                | '['
                | ']'
                | '<'
                | '>'
                | '('
                | ')'
                | '#'
                | '+'
                | '-'
                | '.'
                | '!'
                | '|'
                | '~'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_cut_at_140_characters() {
        assert_eq!(summary("  short  "), "short");
        let long = "é".repeat(200);
        let cut = summary(&long);
        assert_eq!(cut.chars().count(), MAX_SUMMARY_CHARS);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn markdown_in_texts_is_shown_as_written() {
        assert_eq!(
            plain("[x](http://e.example)"),
            "\\[x\\]\\(http://e\\.example\\)"
        );
        assert_eq!(plain("a\nb"), "a b");
        assert_eq!(
            summary("Pain\u{1b}[31m \u{202E}score\u{200B}\nnow"),
            "Pain [31m score now"
        );
    }
}

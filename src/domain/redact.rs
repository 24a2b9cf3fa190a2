//! Redaction of error messages: which quoted values from a request may be echoed back (short
//! code-like tokens) and which are replaced by `…`.

/// True for short tokens made of ASCII letters, digits, `-`, `_` and `.`: the shape of a FHIR
/// code or a configured name. Only such tokens from a request are echoed in error messages.
pub fn is_code_like(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 64
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// An error message (serde's, figment's) with the values it quotes removed: `"..."` strings become
/// `"…"`, and `` `...` `` spans survive only when they look like a code (an unknown status is
/// worth seeing; a name, a date or a secret is not).
pub fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(['"', '`']) {
        let quote = rest[start..].chars().next().unwrap_or('"');
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(len) = after.find(quote) else {
            out.push(quote);
            out.push('…');
            return out;
        };
        let inner = &after[..len];
        out.push(quote);
        out.push_str(if quote == '`' && is_code_like(inner) {
            inner
        } else {
            "…"
        });
        out.push(quote);
        rest = &after[len + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_like_tokens() {
        assert!(is_code_like("add-service-request"));
        assert!(is_code_like("Patient"));
        assert!(!is_code_like(""));
        assert!(!is_code_like("<script>"));
        assert!(!is_code_like("Avery Testpatient"));
        assert!(!is_code_like(&"a".repeat(65)));
    }
    #[test]
    fn problems_keep_codes_and_drop_payload_values() {
        assert_eq!(
            redact_quoted("unknown variant `pending-review`, expected one of `active`"),
            "unknown variant `pending-review`, expected one of `active`"
        );
        assert_eq!(
            redact_quoted("invalid type: string \"Avery Testpatient\", expected u32"),
            "invalid type: string \"…\", expected u32"
        );
        assert_eq!(redact_quoted("bad `Jane Doe` here"), "bad `…` here");
        assert_eq!(redact_quoted("open \"quote"), "open \"…");
    }
}

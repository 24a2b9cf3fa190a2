//! Bearer tokens in `Authorization`: static ones (FHIR rest-hook `channel.header`) and the
//! relay's own OAuth2 tokens share this header parsing.

use axum::http::HeaderMap;

use super::refusals::Refusal;
use crate::secret::Secret;
use crate::secret::same_secret;

/// `WWW-Authenticate` for bearer tokens.
pub const CHALLENGE: &str = "Bearer realm=\"referral-relay\"";

/// The token in `Authorization: Bearer <token>`.
pub fn presented(headers: &HeaderMap) -> Result<&str, &'static str> {
    let value = super::authorization(headers)?
        .to_str()
        .map_err(|_| "the Authorization header is not a bearer token")?;
    match value.trim().split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err("the Authorization header is not a bearer token"),
    }
}

/// True when `presented` equals one of `tokens`; every token is compared, in constant time.
pub fn matches_any(presented: &str, tokens: &[Secret]) -> bool {
    tokens.iter().fold(false, |ok, t| {
        same_secret(presented.as_bytes(), t.expose().as_bytes()) | ok
    })
}

pub fn refusal(reason: &str) -> Refusal {
    Refusal {
        challenge: CHALLENGE,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;

    #[test]
    fn two_authorization_headers_are_refused() {
        let mut h = HeaderMap::new();
        h.append(header::AUTHORIZATION, "Bearer good".parse().unwrap());
        h.append(header::AUTHORIZATION, "Bearer other".parse().unwrap());
        assert_eq!(
            presented(&h),
            Err("the Authorization header is sent more than once")
        );
    }

    #[test]
    fn reads_and_matches_bearer_tokens() {
        let mut h = HeaderMap::new();
        assert!(presented(&h).is_err());
        h.insert(header::AUTHORIZATION, "bearer  tok-2 ".parse().unwrap());
        assert_eq!(presented(&h), Ok("tok-2"));
        let tokens = [Secret::new("tok-1"), Secret::new("tok-2")];
        assert!(matches_any("tok-2", &tokens));
        assert!(!matches_any("tok-3", &tokens));
        assert!(!matches_any("tok-", &tokens));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(presented(&h).is_err());
    }
}

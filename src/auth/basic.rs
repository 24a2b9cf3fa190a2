//! HTTP Basic: the username and password the Ocean admin enters for the integration.

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::secret::Secret;
use crate::secret::same_secret;

/// `WWW-Authenticate` for Basic.
pub const CHALLENGE: &str = "Basic realm=\"referral-relay\", charset=\"UTF-8\"";

/// The accepted username and passwords (the current one and any still valid during rotation).
pub struct BasicCredentials {
    username: String,
    passwords: Vec<Secret>,
}

impl BasicCredentials {
    pub fn new(username: &str, password: &Secret, previous: &[Secret]) -> Self {
        Self {
            username: username.to_owned(),
            passwords: std::iter::once(password).chain(previous).cloned().collect(),
        }
    }

    /// Checks the `Authorization: Basic` header; the error is a fixed reason.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let value = super::authorization(headers)?
            .to_str()
            .map_err(|_| "the Authorization header is not Basic credentials")?;
        let (scheme, encoded) = value
            .trim()
            .split_once(' ')
            .ok_or("the Authorization header is not Basic credentials")?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err("the Authorization header is not Basic credentials");
        }
        let decoded = STANDARD
            .decode(encoded.trim())
            .map_err(|_| "the Basic credentials are not valid base64")?;
        let split = decoded
            .iter()
            .position(|&b| b == b':')
            .ok_or("the Basic credentials have no ':' between username and password")?;
        let (user, password) = (&decoded[..split], &decoded[split + 1..]);
        // Both comparisons always run, so timing does not tell which part was wrong.
        let user_ok = same_secret(user, self.username.as_bytes());
        let password_ok = self.passwords.iter().fold(false, |ok, p| {
            same_secret(password, p.expose().as_bytes()) | ok
        });
        if user_ok & password_ok {
            Ok(())
        } else {
            Err("wrong username or password")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn checks_username_and_every_accepted_password() {
        let c = BasicCredentials::new("ocean", &Secret::new("new-pw"), &[Secret::new("old-pw")]);
        let basic =
            |u: &str, p: &str| with(&format!("Basic {}", STANDARD.encode(format!("{u}:{p}"))));
        assert_eq!(c.check(&basic("ocean", "new-pw")), Ok(()));
        assert_eq!(c.check(&basic("ocean", "old-pw")), Ok(()));
        assert_eq!(
            c.check(&basic("ocean", "pw:with:colons")),
            Err("wrong username or password")
        );
        assert_eq!(
            c.check(&basic("Ocean", "new-pw")),
            Err("wrong username or password")
        );
        assert_eq!(
            c.check(&with("Bearer x")),
            Err("the Authorization header is not Basic credentials")
        );
        assert_eq!(
            c.check(&with("Basic %%%")),
            Err("the Basic credentials are not valid base64")
        );
        assert!(c.check(&HeaderMap::new()).is_err());
    }
}

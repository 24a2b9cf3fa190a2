//! Where Ocean takes the referrer's browser next: the URL of Ocean's third-party redirect
//! extension, checked once, as it is sent.

/// Why a URL is not one to send the referrer's browser to; its text ends a sentence naming the
/// field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedirectError {
    #[error("must be an absolute http(s) URL")]
    NotHttp,
    #[error("must not carry a user name or password")]
    Credentials,
    #[error("must be at most 2048 characters once encoded")]
    TooLong,
}

/// A URL to send the referrer's browser to, as it is sent: parsed and serialised by the WHATWG
/// URL rules (spaces and non-ASCII characters percent-encoded, tabs and line breaks removed),
/// so it is a valid FHIR `uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectUrl(String);

impl RedirectUrl {
    /// # Errors
    /// Not absolute http(s) with a host, a user name or password in it, or longer than 2048
    /// characters once encoded.
    pub fn parse(url: &str) -> Result<Self, RedirectError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| RedirectError::NotHttp)?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(RedirectError::NotHttp);
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(RedirectError::Credentials);
        }
        let encoded = String::from(parsed);
        if encoded.len() > 2048 {
            return Err(RedirectError::TooLong);
        }
        Ok(Self(encoded))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_is_an_absolute_http_url_as_a_browser_serialises_it() {
        let url = RedirectUrl::parse("https://clinic.example/next step?why=área").unwrap();
        assert_eq!(
            url.as_str(),
            "https://clinic.example/next%20step?why=%C3%A1rea"
        );
        assert_eq!(RedirectUrl::parse("/relative"), Err(RedirectError::NotHttp));
        assert_eq!(
            RedirectUrl::parse("ftp://x.example/"),
            Err(RedirectError::NotHttp)
        );
        assert_eq!(
            RedirectUrl::parse("https://u:p@x.example/"),
            Err(RedirectError::Credentials)
        );
        let long = format!("https://x.example/{}", "é".repeat(400));
        assert_eq!(RedirectUrl::parse(&long), Err(RedirectError::TooLong));
    }
}

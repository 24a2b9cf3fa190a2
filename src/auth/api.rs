//! Keys of the point-of-service API's clients, and what each may see.

use axum::http::{HeaderMap, header};

use super::bearer;
use super::scope::Scope;
use crate::config::ApiConfig;
use crate::domain::ServiceId;
use crate::secret::Secret;
use crate::secret::same_secret;
use crate::server::tls::ClientIdentity;

/// One configured API client.
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub name: String,
    key: Secret,
    /// External Service IDs it may see; empty: all.
    pub service_ids: Vec<ServiceId>,
}

impl ApiClient {
    /// What this client may see; refusals name it `client '<name>'`.
    pub fn scope(&self) -> Scope {
        Scope::new(format!("client '{}'", self.name), self.service_ids.clone())
    }
}

/// Whether the request carries what browsers add to requests a page makes: `Origin` (every
/// cross-origin request, and every POST), or `Sec-Fetch-Site` other than `none` (a typed URL).
fn from_a_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN)
        || headers
            .get("sec-fetch-site")
            .is_some_and(|site| site.as_bytes() != b"none")
}

/// Every configured client.
pub struct ApiClients(Vec<ApiClient>);

impl ApiClients {
    pub fn from_config(config: &ApiConfig) -> Self {
        Self(
            config
                .clients
                .iter()
                .map(|(name, c)| ApiClient {
                    name: name.clone(),
                    key: c.key.clone(),
                    service_ids: c.service_ids.clone(),
                })
                .collect(),
        )
    }

    /// The client whose key is presented as a bearer token, or, without an `Authorization`
    /// header, the client whose certificate the connection presented (mutual TLS, see
    /// `server::tls::clients`). Every key is compared, in constant time, so timing does not
    /// reveal which client's key was close; a client known by certificate alone has no key.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        certificate: Option<&ClientIdentity>,
    ) -> Result<&ApiClient, &'static str> {
        if headers.get(header::AUTHORIZATION).is_none()
            && let Some(ClientIdentity(name)) = certificate
        {
            // A browser presents a client certificate on its own, like a cookie, so a page
            // elsewhere could make it call the API (cross-site request forgery). Systems do not
            // send these headers; browsers always do on such requests.
            if from_a_browser(headers) {
                return Err(
                    "a client certificate authenticates systems, not requests a browser sends (Origin, Sec-Fetch-Site)",
                );
            }
            return self
                .0
                .iter()
                .find(|c| c.name == **name)
                .ok_or("the client certificate names no API client");
        }
        let presented = bearer::presented(headers)?;
        let mut found = None;
        for client in &self.0 {
            let key = client.key.expose();
            if same_secret(presented.as_bytes(), key.as_bytes()) && !key.is_empty() {
                found = Some(client);
            }
        }
        found.ok_or("the API key is not recognised")
    }
}

//! A real OpenID provider on loopback for the console's sign-in tests:
//! `tests/peers/oidc_provider.mjs`, which runs `oidc-provider` from npm (a certified OpenID
//! Connect implementation, installed under `target/peers-node-oidc` on first use, run by Node
//! 20): discovery, the authorization code flow with PKCE, JWKS, userinfo and RP-initiated
//! logout, with a sign-in page of its own (`input[name=login]`, `input[name=password]`,
//! `button#sign-in`; any password for a configured login) and consent given without a page.
//! Its signing key can be rotated, and the next ID token it issues can be spoiled on purpose
//! ([`OidcProvider::tamper_next`]). A provider that cannot be installed fails the test; it
//! never skips.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use super::peers::spawn;

/// The pinned version of `oidc-provider` (its `jose` comes with it). The newest that runs on
/// Node 20, which it warns about on stderr (it supports Node 22 and later) and works with.
const OIDC_PROVIDER: &str = "oidc-provider@9.13.3";

/// The directory holding `oidc-provider` (`node_modules`), installed at [`OIDC_PROVIDER`]'s
/// version on first use. Panics if npm is missing or fails.
fn oidc_provider_modules() -> PathBuf {
    static MODULES: OnceLock<PathBuf> = OnceLock::new();
    MODULES
        .get_or_init(|| {
            super::peers::npm_packages(
                "peers-node-oidc",
                &[OIDC_PROVIDER],
                "the OpenID Connect sign-in tests",
            )
        })
        .clone()
}

/// `tests/peers/oidc_provider.mjs` on a loopback port. Killed when dropped; it also exits by
/// itself when the test process goes (its stdin, a pipe held here, closes).
pub struct OidcProvider {
    child: Child,
    /// `http://127.0.0.1:PORT`, no trailing slash: discovery is at
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    client: reqwest::Client,
}

impl OidcProvider {
    /// Starts tests/peers/oidc_provider.mjs with `config`:
    /// `{"clients": [{"client_id", "client_secret", "redirect_uris": [...]}],
    ///   "accounts": {"LOGIN": {"sub", "name", "email", "groups": [...]}}}`
    /// (other client metadata, e.g. `post_logout_redirect_uris`, is passed on as is). Scope
    /// `profile` releases `name`, `preferred_username` and `groups`, `email` releases `email`
    /// and `email_verified`, all in the ID token too. Panics if it cannot be installed or does
    /// not start.
    pub fn start(config: &Value) -> Self {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/oidc_provider.mjs");
        let mut command = Command::new("node");
        command
            .arg(script)
            .arg(config.to_string())
            .env("OIDC_PROVIDER_MODULES", oidc_provider_modules())
            .stdin(Stdio::piped());
        let (child, port) = spawn(command, "the OpenID provider");
        Self {
            child,
            issuer: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    /// Posts `rule` to `/control/{what}`; its JSON answer. Panics unless it succeeds.
    async fn control(&self, what: &str, rule: Value) -> Value {
        let url = format!("{}/control/{what}", self.issuer);
        let answer = self.client.post(url).json(&rule).send().await.unwrap();
        let status = answer.status();
        let body: Value = answer.json().await.unwrap();
        assert!(
            status.is_success(),
            "control {what} {rule}: {status} {body}"
        );
        body
    }

    /// A new RSA signing key (a new `kid`) signs every token from now on; the JWKS lists it
    /// first, then the previous keys unless `drop_old`. Sessions, codes and tokens already
    /// issued stay valid at the provider.
    pub async fn rotate(&self, drop_old: bool) {
        self.control("rotate", serde_json::json!({"drop_old": drop_old}))
            .await;
    }

    /// The next token response (one only) carries a spoiled ID token, otherwise the same:
    /// `nonce` (another nonce), `expired` (`iat` 2 h and `exp` 1 h ago), `foreign_key` (the
    /// real `kid`, signed by a key not in the JWKS), `audience` (another client's id), `issuer`
    /// (`{issuer}/another-issuer`) or `alg_none` (unsigned). The others are signed by the real
    /// key. Panics on another `kind`.
    pub async fn tamper_next(&self, kind: &str) {
        self.control("tamper", serde_json::json!({"kind": kind}))
            .await;
    }

    /// `tokens_issued` (token responses with an ID token, tampered ones too), `keys` (the
    /// JWKS's kids, the signing key first) and `tamper` (the pending kind, or null).
    pub async fn state(&self) -> Value {
        let url = format!("{}/control/state", self.issuer);
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

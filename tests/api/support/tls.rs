//! What the HTTPS tests share: an app serving HTTPS with a test CA's pair, and the waits and
//! readings of what it serves (its certificate, its TLS metrics, a reload's error).

use std::net::SocketAddr;

use super::app::{TestApp, spawn_sled_app_with};
use super::pki::{self, Pair};
use super::poll::eventually;

pub const API_KEY: &str = "tls-test-api-key-0123";

/// A relay serving `pair` (written to `dir`), with `extra` TOML.
pub async fn https_app(dir: &std::path::Path, pair: &Pair, extra: &str) -> TestApp {
    let (cert, key) = pair.write(dir, "server");
    spawn_sled_app_with(&format!(
        r#"
[server.tls]
cert_file = "{}"
key_file = "{}"
reload_secs = 1
{extra}
"#,
        cert.display(),
        key.display()
    ))
    .await
}

/// `/metrics` over HTTPS.
pub async fn metrics(client: &reqwest::Client, addr: SocketAddr) -> String {
    let response = client.get(pki::url(addr, "/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// What `/readyz` at `url` says of the certificate (its `tls` detail).
pub async fn tls_detail(client: &reqwest::Client, url: String) -> serde_json::Value {
    let response = client.get(url).send().await.unwrap();
    let mut ready: serde_json::Value = response.json().await.unwrap();
    ready["tls"].take()
}

/// Why `/readyz` says the certificate files were not taken, if it says so.
pub async fn reload_error(client: &reqwest::Client, addr: SocketAddr) -> Option<String> {
    let tls = tls_detail(client, pki::url(addr, "/readyz")).await;
    tls["reload_error"].as_str().map(str::to_owned)
}

/// Waits (bounded) until a new connection of `client` to `addr` is served `certificate`.
pub async fn until_served(
    what: &str,
    client: &reqwest::Client,
    addr: SocketAddr,
    certificate: &[u8],
) {
    eventually(what, async || {
        let response = client.get(pki::url(addr, "/healthz")).send().await.unwrap();
        pki::served(&response) == certificate
    })
    .await;
}

/// Waits (bounded) until `/readyz` says the certificate files were not taken, with `words`.
pub async fn until_refused(what: &str, client: &reqwest::Client, addr: SocketAddr, words: &str) {
    eventually(what, async || {
        reload_error(client, addr)
            .await
            .is_some_and(|e| e.contains(words))
    })
    .await;
}

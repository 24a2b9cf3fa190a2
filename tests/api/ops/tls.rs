//! HTTPS on the listener: the webhook, token endpoint, API and console over TLS to a client
//! that trusts only the test CA; certificates renewed without a restart (by the file check and
//! by SIGHUP), a broken pair refused while the old one serves on; TLS 1.1 refused; a stalled
//! handshake closed; API clients known by their client certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::app::{TestApp, spawn_sled_app_with};
use crate::support::binary::{launch, run, send_sighup, terminate};
use crate::support::console::{ALICE_PASSWORD, Visitor, users_config};
use crate::support::fixtures::fixture;
use crate::support::pki::{self, Ca, HOST, Pair};
use crate::support::poll::eventually;

const API_KEY: &str = "tls-test-api-key-0123";

/// A relay serving `pair` (written to `dir`), with `extra` TOML.
async fn https_app(dir: &std::path::Path, pair: &Pair, extra: &str) -> TestApp {
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
async fn metrics(client: &reqwest::Client, addr: SocketAddr) -> String {
    let response = client.get(pki::url(addr, "/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// What `/readyz` at `url` says of the certificate (its `tls` detail).
async fn tls_detail(client: &reqwest::Client, url: String) -> serde_json::Value {
    let response = client.get(url).send().await.unwrap();
    let mut ready: serde_json::Value = response.json().await.unwrap();
    ready["tls"].take()
}

/// Why `/readyz` says the certificate files were not taken, if it says so.
async fn reload_error(client: &reqwest::Client, addr: SocketAddr) -> Option<String> {
    let tls = tls_detail(client, pki::url(addr, "/readyz")).await;
    tls["reload_error"].as_str().map(str::to_owned)
}

/// Waits (bounded) until a new connection of `client` to `addr` is served `certificate`.
async fn until_served(what: &str, client: &reqwest::Client, addr: SocketAddr, certificate: &[u8]) {
    eventually(what, async || {
        let response = client.get(pki::url(addr, "/healthz")).send().await.unwrap();
        pki::served(&response) == certificate
    })
    .await;
}

/// Waits (bounded) until `/readyz` says the certificate files were not taken, with `words`.
async fn until_refused(what: &str, client: &reqwest::Client, addr: SocketAddr, words: &str) {
    eventually(what, async || {
        reload_error(client, addr)
            .await
            .is_some_and(|e| e.contains(words))
    })
    .await;
}

#[tokio::test]
async fn webhook_token_endpoint_api_and_console_answer_over_https() {
    let dir = tempfile::TempDir::new().unwrap();
    let ca = Ca::new("Relay Test CA");
    let app = https_app(
        dir.path(),
        &ca.server(30),
        &format!(
            r#"
[api.clients.emr]
key = "{API_KEY}"

[integrations.ocean]
auth = {{ scheme = "oauth2", clients = [{{ client_id = "ocean-client", client_secret = "ocean-secret-1" }}] }}
{}
"#,
            users_config("")
        ),
    )
    .await;
    let client = pki::client(&ca, app.addr, None);

    // Ocean's way: a token from the token endpoint, then the message with it.
    let token: serde_json::Value = client
        .post(pki::url(app.addr, "/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&client_id=ocean-client&client_secret=ocean-secret-1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().expect("a token").to_owned();
    let answer = client
        .post(pki::url(app.addr, "/fhir/ocean/$process-message"))
        .header("content-type", "application/fhir+json")
        .bearer_auth(&token)
        .body(fixture("v0.11-add-service-request.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    let referral = client
        .get(pki::url(app.addr, "/api/v1/referrals/TST-0011-AAAA"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(referral.status(), 200);

    // The console: its session cookie is Secure because the listener speaks HTTPS.
    let mut visitor = Visitor::over(&app, client.clone(), &pki::url(app.addr, ""));
    let signed_in = visitor.sign_in("alice", ALICE_PASSWORD).await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.html);
    assert!(
        visitor
            .set_cookies
            .iter()
            .any(|c| c.starts_with("relay_console=") && c.contains("Secure")),
        "{:?}",
        visitor.set_cookies
    );
    let page = visitor.get("/console/referrals").await;
    assert_eq!(page.status, 200);
    // Browsers are told to keep to HTTPS for this host (RFC 6797).
    assert_eq!(
        page.headers["strict-transport-security"],
        "max-age=31536000"
    );

    // Plain HTTP to the HTTPS listener is not served, and a client that does not trust the
    // test CA refuses the certificate.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", app.addr))
        .send()
        .await;
    assert!(plain.map_or(true, |r| r.status() != 200));
    let untrusting = reqwest::Client::builder()
        .resolve(HOST, app.addr)
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(pki::url(app.addr, "/healthz"))
            .send()
            .await
            .is_err()
    );
    app.stop().await;
}

/// A TLS connection held open by hand: its handshake's certificate, and requests sent on it.
struct Held {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
}

impl Held {
    async fn open(ca: &Ca, addr: SocketAddr) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        let ca_der = rustls::pki_types::pem::PemObject::from_pem_slice(ca.pem().as_bytes());
        roots.add(ca_der.unwrap()).unwrap();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let stream = connector
            .connect(ServerName::try_from(HOST).unwrap(), tcp)
            .await
            .unwrap();
        Self { stream }
    }

    fn certificate(&self) -> Vec<u8> {
        let chain: &[CertificateDer<'_>] = self.stream.get_ref().1.peer_certificates().unwrap();
        chain[0].to_vec()
    }

    /// GET `path` on this connection (keep-alive); the status code.
    async fn get(&mut self, path: &str) -> u16 {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
        self.stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(self.stream.read(&mut byte).await.unwrap(), 1, "closed");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap();
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).await.unwrap();
        head[9..12].parse().unwrap()
    }
}

#[tokio::test]
async fn a_renewed_certificate_reaches_new_connections_while_open_ones_finish() {
    let dir = tempfile::TempDir::new().unwrap();
    let ca = Ca::new("Relay Test CA");
    let (first, renewed) = (ca.server(30), ca.server(90));
    let app = https_app(dir.path(), &first, "").await;

    let mut held = Held::open(&ca, app.addr).await;
    assert_eq!(held.certificate(), first.der);
    assert_eq!(held.get("/healthz").await, 200);

    // Renewed the way certbot does it: the files are replaced.
    renewed.write(dir.path(), "server");
    let client = pki::client(&ca, app.addr, None);
    until_served(
        "a new connection gets the renewed certificate",
        &client,
        app.addr,
        &renewed.der,
    )
    .await;
    // The connection opened before goes on with the certificate it was opened with.
    assert_eq!(held.get("/healthz").await, 200);
    assert_eq!(held.certificate(), first.der);

    let metrics = metrics(&client, app.addr).await;
    let expiry = time::OffsetDateTime::now_utc() + time::Duration::days(90);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("relay_tls_cert_expiry_seconds "))
        .expect("the expiry gauge");
    let value: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        (value - expiry.unix_timestamp() as f64).abs() < 120.0,
        "{line} vs {expiry}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_pair_that_does_not_load_keeps_the_certificate_in_use() {
    let dir = tempfile::TempDir::new().unwrap();
    let ca = Ca::new("Relay Test CA");
    let good = ca.server(30);
    let app = https_app(dir.path(), &good, "").await;
    let client = pki::client(&ca, app.addr, None);

    // A renewal whose key is not the certificate's (the key file written from another pair).
    let other = ca.server(60);
    std::fs::write(dir.path().join("server.crt"), &other.cert_pem).unwrap();
    until_refused(
        "/readyz names the refused pair",
        &client,
        app.addr,
        "is not the key of the certificate",
    )
    .await;
    let response = client
        .get(pki::url(app.addr, "/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the old certificate still serves");
    assert_eq!(pki::served(&response), good.der);
    let metrics = metrics(&client, app.addr).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("relay_tls_reload_failures_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // An expired certificate with its own key: refused too.
    let now = time::OffsetDateTime::now_utc();
    let expired = ca.server_between(
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    );
    expired.write(dir.path(), "server");
    until_refused(
        "/readyz says the certificate expired",
        &client,
        app.addr,
        "expired",
    )
    .await;
    let response = client
        .get(pki::url(app.addr, "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(pki::served(&response), good.der);

    // The right certificate after another one: said to be out of order, and /readyz names
    // the file, not the directory it is in.
    let (cert_file, key_file) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    std::fs::write(&cert_file, format!("{}{}", other.cert_pem, good.cert_pem)).unwrap();
    std::fs::write(&key_file, &good.key_pem).unwrap();
    until_refused(
        "/readyz says the chain is out of order",
        &client,
        app.addr,
        "server.crt: the certificates are out of order",
    )
    .await;
    let error = reload_error(&client, app.addr).await.unwrap();
    assert!(
        !error.contains(&dir.path().display().to_string()),
        "{error}"
    );

    // Fixed: taken, and the error is gone.
    let fixed = ca.server(120);
    fixed.write(dir.path(), "server");
    eventually("the fixed pair is served", async || {
        let response = client
            .get(pki::url(app.addr, "/readyz"))
            .send()
            .await
            .unwrap();
        if pki::served(&response) != fixed.der {
            return false;
        }
        let ready: serde_json::Value = response.json().await.unwrap();
        ready["tls"]["reload_error"].is_null()
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_certificate_near_or_past_its_expiry_is_reported() {
    let dir = tempfile::TempDir::new().unwrap();
    let ca = Ca::new("Relay Test CA");
    let now = time::OffsetDateTime::now_utc();
    // Valid for four more seconds: within the notice at once, then expired while served.
    let short = ca.server_between(
        now - time::Duration::days(1),
        now + time::Duration::seconds(4),
    );
    let app = https_app(dir.path(), &short, "").await;
    let client = pki::client(&ca, app.addr, None);
    let tls = tls_detail(&client, pki::url(app.addr, "/readyz")).await;
    let problem = tls["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("expires at"), "{tls}");
    assert!(tls["expires_in_secs"].as_i64().unwrap() <= 4, "{tls}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Clients now refuse it; /readyz (asked without checking the certificate) says so.
    assert!(
        client
            .get(pki::url(app.addr, "/readyz"))
            .send()
            .await
            .is_err()
    );
    let lenient = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let tls = tls_detail(&lenient, format!("https://{}/readyz", app.addr)).await;
    let problem = tls["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("expired at"), "{tls}");
    app.stop().await;
}

/// A TLS 1.1 ClientHello (RFC 4346): client_version 3.2 and no supported_versions extension,
/// but otherwise acceptable (cipher suites, signature algorithms and groups a TLS 1.2 server
/// takes), so that the version is the only thing wrong with it.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend([0x42; 32]); // random
    body.push(0); // no session id
    // ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256, then two TLS 1.1 suites.
    body.extend([0x00, 0x08, 0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x13, 0x00, 0x2f]);
    body.extend([0x01, 0x00]); // null compression
    let extensions = [
        &[0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04][..], // signature_algorithms
        &[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17][..], // supported_groups
        &[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00][..],                         // ec_point_formats
    ]
    .concat();
    body.extend([0x00, u8::try_from(extensions.len()).unwrap()]);
    body.extend(extensions);
    let mut handshake = vec![0x01, 0x00, 0x00, u8::try_from(body.len()).unwrap()];
    handshake.extend(body);
    let mut record = vec![
        0x16,
        0x03,
        0x01,
        0x00,
        u8::try_from(handshake.len()).unwrap(),
    ];
    record.extend(handshake);
    record
}

#[tokio::test]
async fn tls_1_1_is_refused_and_1_2_and_1_3_are_taken() {
    let dir = tempfile::TempDir::new().unwrap();
    let ca = Ca::new("Relay Test CA");
    let app = https_app(dir.path(), &ca.server(30), "").await;

    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(&tls11_client_hello()).await.unwrap();
    let mut answer = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    // An alert record (21), fatal (2), protocol_version (70): RFC 8446 §6.2.
    assert_eq!((answer[0], answer[5], answer[6]), (21, 2, 70), "{answer:?}");

    for version in [
        reqwest::tls::Version::TLS_1_2,
        reqwest::tls::Version::TLS_1_3,
    ] {
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
            .resolve(HOST, app.addr)
            .tls_version_min(version)
            .tls_version_max(version)
            .build()
            .unwrap();
        let response = client
            .get(pki::url(app.addr, "/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{version:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_handshake_that_never_completes_is_closed() {
    let dir = tempfile::TempDir::new().unwrap();
    let ca = Ca::new("Relay Test CA");
    let app = https_app(
        dir.path(),
        &ca.server(30),
        "[server]\nheader_read_timeout_secs = 1\n",
    )
    .await;

    // Nothing sent at all, and half a ClientHello.
    let hello = tls11_client_hello();
    for sent in [&hello[..0], &hello[..20]] {
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        tcp.write_all(sent).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(15), tcp.read(&mut buf))
            .await
            .expect("the relay closes a stalled handshake");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let metrics = metrics(&pki::client(&ca, app.addr, None), app.addr).await;
    assert!(
        metrics.contains("relay_connection_timeouts_total{kind=\"tls_handshake\"} 2"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn api_clients_are_known_by_their_client_certificate() {
    let dir = tempfile::TempDir::new().unwrap();
    let ca = Ca::new("Relay Test CA");
    let clients_ca = Ca::new("Hospital Systems CA");
    let (stranger_ca, self_signed_ca) = (Ca::new("Somebody Else"), Ca::new("Lab Self-Signed"));
    let (emr, lab, stranger, kiosk) = (
        clients_ca.client("emr.hospital.example"),
        self_signed_ca.client("lab.hospital.example"),
        stranger_ca.client("emr.hospital.example"),
        clients_ca.client("kiosk.hospital.example"),
    );
    let clients_ca_file = dir.path().join("clients-ca.pem");
    std::fs::write(&clients_ca_file, clients_ca.pem()).unwrap();
    let app = https_app(
        dir.path(),
        &ca.server(30),
        &format!(
            r#"
[api.clients.emr]
client_ca_file = "{}"

[api.clients.lab]
client_cert_sha256 = "{}"
service_ids = ["PHYSIO-EAST-02"]

[api.clients.keyed]
key = "{API_KEY}"

# A certificate the emr client's CA issued, pinned for a narrower client: the pin wins.
[api.clients.aaa-kiosk]
client_cert_sha256 = "{}"
service_ids = ["PHYSIO-EAST-02"]
"#,
            clients_ca_file.display(),
            lab.fingerprint().to_lowercase(),
            kiosk.fingerprint()
        ),
    )
    .await;
    let delivered = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
        .resolve(HOST, app.addr)
        .build()
        .unwrap();
    for name in [
        "v0.11-add-service-request.json",
        "v0.10-add-service-request.json",
    ] {
        let answer = delivered
            .post(pki::url(app.addr, "/fhir/default/$process-message"))
            .header("content-type", "application/fhir+json")
            .body(fixture(name))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "Ocean presents no certificate");
    }
    let get = async |client: &reqwest::Client, path: &str, key: Option<&str>| {
        let mut request = client.get(pki::url(app.addr, path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.map(|r| r.status().as_u16())
    };
    let cardio = "/api/v1/referrals/TST-0011-AAAA";
    let physio = "/api/v1/referrals/TST-0010-BBBB";

    // Issued by the CA the emr client names: the emr client, which sees everything.
    let as_emr = pki::client(&ca, app.addr, Some(emr.identity()));
    assert_eq!(get(&as_emr, cardio, None).await.unwrap(), 200);
    // A bearer key is judged as a key, certificate or not.
    assert_eq!(
        get(&as_emr, cardio, Some("not-the-key-0123456789"))
            .await
            .unwrap(),
        401
    );
    // The pinned certificate: the lab client, limited to PHYSIO-EAST-02.
    let as_lab = pki::client(&ca, app.addr, Some(lab.identity()));
    assert_eq!(get(&as_lab, physio, None).await.unwrap(), 200);
    assert_eq!(get(&as_lab, cardio, None).await.unwrap(), 403);
    // Issued by that same CA but pinned for another client: that client, not the emr one.
    let as_kiosk = pki::client(&ca, app.addr, Some(kiosk.identity()));
    assert_eq!(get(&as_kiosk, physio, None).await.unwrap(), 200);
    assert_eq!(get(&as_kiosk, cardio, None).await.unwrap(), 403);
    // A page elsewhere cannot borrow a browser's certificate (cross-site request forgery).
    for (header, value) in [
        ("origin", "https://elsewhere.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let forged = as_emr
            .get(pki::url(app.addr, cardio))
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 401, "{header}");
    }
    // Same name, another CA: refused in the handshake.
    let as_stranger = pki::client(&ca, app.addr, Some(stranger.identity()));
    assert!(get(&as_stranger, cardio, None).await.is_err());
    // No certificate: the key as ever, and nothing without one.
    let anonymous = pki::client(&ca, app.addr, None);
    assert_eq!(get(&anonymous, cardio, Some(API_KEY)).await.unwrap(), 200);
    assert_eq!(get(&anonymous, cardio, None).await.unwrap(), 401);
    let metrics = metrics(&anonymous, app.addr).await;
    assert!(
        metrics.contains("relay_tls_handshake_failures_total{kind=\"client_certificate\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[test]
fn check_config_reports_the_certificate_and_refuses_a_broken_pair() {
    let dir = tempfile::TempDir::new().unwrap();
    let ca = Ca::new("Relay Test CA");
    let pair = ca.server(45);
    let (cert, key) = pair.write(dir.path(), "server");
    let env = [
        ("RELAY__SERVER__TLS__CERT_FILE", cert.to_str().unwrap()),
        ("RELAY__SERVER__TLS__KEY_FILE", key.to_str().unwrap()),
    ];
    let out = run(&["check-config"], &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "# server.tls certificate: subject CN=relay.test; names relay.test; valid until"
        ) && stdout.contains("(44 days from now)"),
        "{stdout}"
    );
    // The variables set the paths, not the files' contents.
    let printed: toml::Table = toml::from_str(&stdout).unwrap();
    assert_eq!(
        printed["server"]["tls"]["cert_file"].as_str(),
        cert.to_str()
    );

    // Two clients trusting one CA: a certificate it issued could be either, so refused unless
    // their names tell them apart.
    let ca_file = dir.path().join("clients-ca.pem");
    std::fs::write(&ca_file, Ca::new("Hospital Systems CA").pem()).unwrap();
    let config = dir.path().join("clients.toml");
    let clients = |emr_names: &str| {
        format!(
            "[api.clients.emr]\nclient_ca_file = \"{0}\"\nclient_cert_names = [{emr_names}]\n\
             [api.clients.lab]\nclient_ca_file = \"{0}\"\nclient_cert_names = [\"lab.hospital.example\"]\n",
            ca_file.display()
        )
    };
    std::fs::write(&config, clients("")).unwrap();
    let config_arg = ["check-config", "--config", config.to_str().unwrap()];
    let out = run(&config_arg, &env);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("trust the same CA"), "{stderr}");
    std::fs::write(&config, clients("\"emr.hospital.example\"")).unwrap();
    let out = run(&config_arg, &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::write(&key, ca.server(45).key_pem).unwrap();
    let out = run(&["check-config"], &env);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is not the key of the certificate"),
        "{stderr}"
    );
    // The key's contents never appear.
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}

/// The real binary: SIGHUP reloads at once (the file check is an hour away here), and the
/// healthcheck command speaks HTTPS to an HTTPS listener.
#[tokio::test]
async fn sighup_reloads_the_certificate_in_the_running_binary() {
    let dir = tempfile::TempDir::new().unwrap();
    let ca = Ca::new("Relay Test CA");
    let (first, renewed) = (ca.server(30), ca.server(90));
    let (cert, key) = first.write(dir.path(), "server");
    let env = [
        ("RUST_LOG", "info"),
        ("RELAY__SERVER__TLS__CERT_FILE", cert.to_str().unwrap()),
        ("RELAY__SERVER__TLS__KEY_FILE", key.to_str().unwrap()),
        ("RELAY__SERVER__TLS__RELOAD_SECS", "3600"),
    ];
    let data = dir.path().join("data");
    let mut relay = launch(&data, None, &[], &env);
    let client = pki::client(&ca, relay.addr, None);
    // The first file check runs at start; let it pass before replacing the files.
    eventually("the relay serves the first certificate", async || {
        let response = client.get(pki::url(relay.addr, "/healthz")).send().await;
        response.is_ok_and(|r| pki::served(&r) == first.der)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let listen = relay.addr.to_string();
    let mut health_env = env.to_vec();
    health_env.push(("RELAY__SERVER__LISTEN", &listen));
    let out = run(&["healthcheck"], &health_env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("https://{listen}/healthz")),
        "{stdout}"
    );

    // An address given is checked like any client would: this certificate does not name it.
    let out = run(&["healthcheck", "--url", &format!("https://{listen}")], &[]);
    assert_eq!(out.status.code(), Some(1));

    renewed.write(dir.path(), "server");
    send_sighup(&relay);
    until_served(
        "SIGHUP made the relay serve the renewed certificate",
        &client,
        relay.addr,
        &renewed.der,
    )
    .await;
    assert!(
        tokio::task::spawn_blocking(move || terminate(&mut relay))
            .await
            .unwrap(),
        "the relay did not exit 0 after SIGHUP and SIGTERM"
    );
}

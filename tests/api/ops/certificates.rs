//! The listener's certificate: renewed without a restart (by the file check and by SIGHUP in
//! the running binary) while open connections finish, a broken pair refused while the old one
//! serves on, expiry reported, and check-config reporting the certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::binary::{launch, run, send_sighup, terminate};
use crate::support::pki::{self, Ca, HOST};
use crate::support::poll::eventually;
use crate::support::tls::{
    https_app, metrics, reload_error, tls_detail, until_refused, until_served,
};

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

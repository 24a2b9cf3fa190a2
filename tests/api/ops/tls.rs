//! HTTPS on the listener: the webhook, token endpoint, API and console over TLS to a client
//! that trusts only the test CA; TLS 1.1 refused; a stalled handshake closed; API clients known
//! by their client certificate.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::console::{ALICE_PASSWORD, Visitor, users_config};
use crate::support::fixtures::fixture;
use crate::support::pki::{self, Ca, HOST};
use crate::support::tls::{API_KEY, https_app, metrics};

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

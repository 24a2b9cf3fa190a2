//! The real binary as operations see it: SIGTERM under load, the healthcheck command, and debug
//! logs that carry request ids and nothing a patient or a secret would mind.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use referral_relay::domain::ReferralRef;
use referral_relay::store::{DeliveryStore, SledStore};
use serde_json::{Value, json};

use crate::support::at_rest::{STORED, patient_details};
use crate::support::binary::{launch, run, send_sighup, send_sigterm, terminate, wait_exit};
use crate::support::fixtures::{V011_REFERRAL, fixture, unique_v011};
use crate::support::ocean::{CLIENT_ID, CLIENT_SECRET, MockOcean};
use crate::support::poll::eventually;
use crate::support::signing::signed;

const FHIR_JSON: &str = "application/fhir+json";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_keeps_every_acknowledged_delivery_and_exits_0() {
    const CLIENTS: usize = 8;
    let dir = tempfile::TempDir::new().unwrap();
    let mut relay = launch(dir.path(), None, &[], &[("RUST_LOG", "info")]);
    let url = format!("http://{}/fhir/default/$process-message", relay.addr);
    let template = String::from_utf8(fixture(STORED[0])).unwrap();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (url, template, acked) = (url.clone(), template.clone(), Arc::clone(&acked));
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            // Until the relay stops answering: refused connections end the loop.
            for n in 0.. {
                let name = format!("TERM-{client}-{n}");
                let body = unique_v011(&template, &name, &format!("bundle-{name}"));
                let sent = http
                    .post(&url)
                    .header("content-type", FHIR_JSON)
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => acked.lock().unwrap().push(name),
                    Ok(r) => assert_eq!(r.status(), 503, "only 200 or a retryable refusal"),
                    Err(_) => break,
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 60 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let exited_cleanly = tokio::task::spawn_blocking(move || {
        let ok = terminate(&mut relay);
        (ok, relay)
    })
    .await
    .unwrap();
    for client in clients {
        client.await.unwrap();
    }
    let (ok, relay) = exited_cleanly;
    let logs = relay.logs.lock().unwrap().join("\n");
    assert!(ok, "the relay did not exit 0 after SIGTERM:\n{logs}");
    assert!(logs.contains("shutting down"), "{logs}");
    // Logged by the store itself as it closes, after its final flush.
    assert!(logs.contains("store flushed and closed"), "{logs}");

    let store = SledStore::open(dir.path()).unwrap();
    let acked = acked.lock().unwrap().clone();
    for name in &acked {
        let referral = ReferralRef::parse(name).unwrap();
        let payload = store.payload(&referral, 1).await.unwrap();
        let expected = unique_v011(&template, name, &format!("bundle-{name}"));
        assert_eq!(payload.as_deref(), Some(expected.as_slice()), "{name} lost");
    }
}

#[tokio::test]
async fn the_healthcheck_command_passes_for_a_running_service_and_fails_for_a_stopped_one() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut relay = launch(dir.path(), None, &[], &[("RUST_LOG", "info")]);
    let healthcheck =
        |env: &[(&str, &str)], args: &[&str]| run(&[&["healthcheck"], args].concat(), env);
    let url = format!("http://{}", relay.addr);
    let out = healthcheck(&[], &["--url", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --ready asks /readyz (the store takes a durable write), for readiness probes.
    let out = healthcheck(&[], &["--url", &url, "--ready"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{url}/readyz answered 200")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Without --url it finds the service from the configured listen address.
    let listen = relay.addr.to_string();
    let out = healthcheck(&[("RELAY__SERVER__LISTEN", &listen)], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(
        tokio::task::spawn_blocking(move || terminate(&mut relay))
            .await
            .unwrap()
    );
    let out = healthcheck(&[], &["--url", &url, "--timeout-secs", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy"));
}

/// SIGHUP (which operators send after renewing certificates) never ends the process: over
/// plain HTTP there is nothing to reload, and it says so.
#[tokio::test]
async fn sighup_does_not_stop_a_plain_http_relay() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut relay = launch(dir.path(), None, &[], &[("RUST_LOG", "info")]);
    send_sighup(&relay);
    let url = format!("http://{}/healthz", relay.addr);
    eventually("the SIGHUP logged", async || {
        relay
            .logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("SIGHUP: nothing to reload"))
    })
    .await;
    assert!(
        relay.child.try_wait().unwrap().is_none(),
        "SIGHUP ended the relay"
    );
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    let logs = relay.logs.lock().unwrap().join("\n");
    assert!(logs.contains("SIGHUP: nothing to reload"), "{logs}");
    assert!(
        tokio::task::spawn_blocking(move || terminate(&mut relay))
            .await
            .unwrap()
    );
}

const PASSWORD: &str = "correct horse battery";
const STATIC_TOKEN: &str = "static-token-9c1f5e2a";
const CLIENT_SECRET_IN: &str = "oauth-client-secret-77d1";
const HMAC_SECRET: &str = "whsec_c2VjcmV0LWZvci1sb2ctdGVzdHMtb25seQ==";
const API_KEY: &str = "emr-key-log-test-0123";
const MESSAGE: &str = "Please bring the Holter results to the visit";

fn scenario_config(ocean: &MockOcean) -> String {
    format!(
        r#"
[api.clients.emr]
key = "{API_KEY}"

[sites.main]
base_url = "{}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"

[integrations.basic]
auth = {{ scheme = "basic", username = "ocean", password = "{PASSWORD}" }}
share_referrals_with = ["bearer", "oauth", "hmac"]

[integrations.bearer]
auth = {{ scheme = "bearer", tokens = ["{STATIC_TOKEN}"] }}

[integrations.oauth]
auth = {{ scheme = "oauth2", clients = [{{ client_id = "ocean-client", client_secret = "{CLIENT_SECRET_IN}" }}] }}

[integrations.hmac]
auth = {{ scheme = "hmac", secrets = ["{HMAC_SECRET}"] }}
"#,
        ocean.base_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logs_carry_request_ids_and_no_patient_detail_or_secret() {
    let ocean = MockOcean::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, scenario_config(&ocean)).unwrap();
    let data = dir.path().join("data");
    let mut relay = launch(
        &data,
        Some(&config),
        &["--log-format", "json"],
        &[("RUST_LOG", "debug")],
    );
    let base = format!("http://{}", relay.addr);
    let http = reqwest::Client::new();
    let webhook = |integration: &str| format!("{base}/fhir/{integration}/$process-message");
    let mut secrets: Vec<String> = [
        PASSWORD,
        STATIC_TOKEN,
        CLIENT_SECRET_IN,
        HMAC_SECRET,
        API_KEY,
        CLIENT_SECRET,
        MESSAGE,
    ]
    .map(str::to_owned)
    .to_vec();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("ocean:{PASSWORD}"));
    secrets.push(basic.clone());

    // Basic: every referral fixture, one refused password, one malformed body.
    for name in STORED {
        let r = http
            .post(webhook("basic"))
            .header("content-type", FHIR_JSON)
            .header("authorization", format!("Basic {basic}"))
            .body(fixture(name))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
    }
    let wrong = base64::engine::general_purpose::STANDARD.encode("ocean:wrong horse");
    secrets.push(wrong.clone());
    let posted = |integration: &str, auth: String, body: Vec<u8>| {
        http.post(webhook(integration))
            .header("content-type", FHIR_JSON)
            .header("authorization", auth)
            .body(body)
            .send()
    };
    let r = posted("basic", format!("Basic {wrong}"), fixture(STORED[0]))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = posted(
        "basic",
        format!("Basic {basic}"),
        fixture("bad/no-referral-ref.json"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 422);
    // Static bearer, and a token from the relay's own token endpoint.
    let r = posted(
        "bearer",
        format!("Bearer {STATIC_TOKEN}"),
        fixture(STORED[1]),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let token = http
        .post(format!("{base}/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&client_id=ocean-client&client_secret={CLIENT_SECRET_IN}"
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let token: Value = serde_json::from_slice(&token).unwrap();
    let access = token["access_token"].as_str().unwrap().to_owned();
    secrets.push(access.clone());
    let r = posted("oauth", format!("Bearer {access}"), fixture(STORED[2]))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Standard Webhooks signature.
    let body = fixture(STORED[3]);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut request = http
        .post(webhook("hmac"))
        .header("content-type", FHIR_JSON)
        .body(body.clone());
    for (name, value) in signed(HMAC_SECRET, "msg_log_test", now, &body) {
        secrets.push(value.trim_start_matches("v1,").to_owned());
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 200);

    // The point-of-service API: read, update, message, export.
    let api = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{base}/api/v1{path}"))
            .header("authorization", format!("Bearer {API_KEY}"))
    };
    for path in [
        "/referrals".to_owned(),
        format!("/referrals/{V011_REFERRAL}"),
        format!("/referrals/{V011_REFERRAL}/versions/1"),
        "/events".to_owned(),
        "/export.csv".to_owned(),
    ] {
        let r = api(reqwest::Method::GET, &path).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.bytes().await.unwrap();
    }
    for (path, body) in [
        (
            "status",
            json!({"status": "in-progress", "reason": "Triaged"}),
        ),
        ("messages", json!({"text": MESSAGE})),
    ] {
        let r = api(
            reqwest::Method::POST,
            &format!("/referrals/{V011_REFERRAL}/{path}"),
        )
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 202, "{path}");
    }
    eventually("both updates reaching Ocean", async || {
        ocean.delivered().len() == 2
    })
    .await;
    assert_eq!(ocean.delivered().len(), 2, "both updates reach Ocean");
    for received in ocean.received() {
        secrets.push(
            received
                .authorization
                .trim_start_matches("Bearer ")
                .to_owned(),
        );
    }

    assert!(
        tokio::task::spawn_blocking(move || {
            let ok = terminate(&mut relay);
            (ok, relay)
        })
        .await
        .map(|(ok, relay)| {
            check_logs(&relay.logs.lock().unwrap(), &secrets);
            ok
        })
        .unwrap()
    );
}

/// Every line is a JSON object; every line written inside a request carries its request id;
/// no patient detail or secret appears anywhere.
fn check_logs(lines: &[String], secrets: &[String]) {
    let mut in_requests = 0;
    for line in lines {
        let json: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        let spans = json["spans"].as_array().cloned().unwrap_or_default();
        let from_routes = json["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("referral_relay::routes"));
        let request = spans.iter().find(|s| s["name"] == "request");
        assert!(request.is_some() || !from_routes, "no request span: {line}");
        if let Some(request) = request {
            in_requests += 1;
            let id = request["request_id"].as_str().unwrap_or_default();
            assert_eq!(id.len(), 36, "no request id: {line}");
            assert_eq!(json["span"]["request_id"], id, "{line}");
        }
    }
    assert!(in_requests > 20, "too few request log lines: {in_requests}");
    let all = lines.join("\n");
    let mut needles = patient_details();
    needles.extend(secrets.iter().filter(|s| s.len() >= 6).cloned());
    let leaked: Vec<&String> = needles
        .iter()
        .filter(|n| all.contains(n.as_str()))
        .collect();
    assert!(leaked.is_empty(), "found in the logs: {leaked:?}");
}

/// Sends the request line, headers and the first half of `body` over a fresh connection.
async fn half_sent(addr: std::net::SocketAddr, body: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /fhir/default/$process-message HTTP/1.1\r\nHost: relay\r\nContent-Type: {FHIR_JSON}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..body.len() / 2]).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_in_flight_finish_and_bounds_the_wait_for_a_stalled_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[server]\nshutdown_timeout_secs = 2\n").unwrap();
    let data = dir.path().join("data");
    let mut relay = launch(&data, Some(&config), &[], &[("RUST_LOG", "info")]);
    let template = String::from_utf8(fixture(STORED[0])).unwrap();
    let finishing = unique_v011(&template, "INFLIGHT-1", "bundle-inflight-1");
    let stalled = unique_v011(&template, "STALLED-1", "bundle-stalled-1");
    let mut in_flight = half_sent(relay.addr, &finishing).await;
    let _stalled = half_sent(relay.addr, &stalled).await;
    // Both requests are being read when the signal arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    send_sigterm(&relay);
    tokio::time::sleep(Duration::from_millis(200)).await;

    in_flight
        .write_all(&finishing[finishing.len() / 2..])
        .await
        .unwrap();
    let mut response = Vec::new();
    in_flight.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // The stalled request does not hold the process: it exits 0 after the drain bound.
    let (ok, relay) = tokio::task::spawn_blocking(move || (wait_exit(&mut relay), relay))
        .await
        .unwrap();
    let logs = relay.logs.lock().unwrap().join("\n");
    assert!(ok, "{logs}");
    assert!(logs.contains("after the drain timeout"), "{logs}");
    let store = SledStore::open(&data).unwrap();
    let payload = store
        .payload(&ReferralRef::parse("INFLIGHT-1").unwrap(), 1)
        .await
        .unwrap();
    assert_eq!(payload.as_deref(), Some(finishing.as_slice()));
    let stalled = ReferralRef::parse("STALLED-1").unwrap();
    assert!(store.referral(&stalled).await.unwrap().is_none());
}

/// Files holding patient data are the service user's alone (the store's own, exports and
/// backups were created 0644), and `backup --out` and `export --out` never write through a link
/// planted at their `.partial` path.
#[tokio::test]
async fn files_holding_patient_data_are_the_users_alone_and_never_written_through_a_link() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "[api.clients.admin]\nkey = \"files-admin-key-000000000000000\"\n",
    )
    .unwrap();
    let mut relay = launch(&data, Some(&config), &[], &[("RUST_LOG", "info")]);
    let base = format!("http://{}", relay.addr);
    let stored = reqwest::Client::new()
        .post(format!("{base}/fhir/default/$process-message"))
        .header("content-type", FHIR_JSON)
        .body(fixture(STORED[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);

    let private = |path: &std::path::Path| {
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", path.display());
    };
    let key = [("RELAY_API_KEY", "files-admin-key-000000000000000")];
    let csv = dir.path().join("referrals.csv");
    let (csv_arg, url) = (csv.to_str().unwrap().to_owned(), base.clone());
    let exported = tokio::task::spawn_blocking(move || {
        run(&["export", "--url", &url, "--out", &csv_arg], &key)
    })
    .await
    .unwrap();
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    private(&csv);

    // A link planted where the backup's partial file goes: refused, its target untouched.
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "not to be overwritten").unwrap();
    let backup = dir.path().join("store.tar.gz");
    symlink(&victim, dir.path().join("store.tar.gz.partial")).unwrap();
    let (backup_arg, url) = (backup.to_str().unwrap().to_owned(), base.clone());
    let refused = tokio::task::spawn_blocking(move || {
        run(&["backup", "--out", &backup_arg, "--url", &url], &key)
    })
    .await
    .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("store.tar.gz.partial"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "not to be overwritten"
    );
    std::fs::remove_file(dir.path().join("store.tar.gz.partial")).unwrap();
    let (backup_arg, url) = (backup.to_str().unwrap().to_owned(), base.clone());
    let taken = tokio::task::spawn_blocking(move || {
        run(&["backup", "--out", &backup_arg, "--url", &url], &key)
    })
    .await
    .unwrap();
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    private(&backup);

    assert!(terminate(&mut relay));
    let mut checked = 0;
    let mut pending = vec![data.clone()];
    while let Some(path) = pending.pop() {
        private(&path);
        checked += 1;
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(checked > 3, "only {checked} paths in the data dir");
}

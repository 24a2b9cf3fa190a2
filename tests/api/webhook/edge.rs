//! What real senders send at the internet edge: every valid delivery is taken and stored byte for
//! byte, content codings and media types are honoured, nothing is read or held for a caller
//! before it is needed, and one integration cannot touch another's referrals.

use std::time::Duration;

use referral_relay::domain::ReferralRef;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::app::{FHIR_JSON, TestApp, answer, metric, spawn_app, spawn_app_with};
use crate::support::fixtures::fixture;
use crate::support::poll::eventually;
use crate::support::signing::signed;

const HMAC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn referral(r: &str) -> ReferralRef {
    ReferralRef::parse(r).unwrap()
}

async fn stored_bytes(app: &TestApp, r: &str, version: u64) -> Vec<u8> {
    app.store
        .payload(&referral(r), version)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{r} has no version {version}"))
        .to_vec()
}

/// Sends raw bytes and reads the answer until it is whole, the server closes, or `timeout`
/// passes.
async fn raw_exchange(app: &TestApp, request: &[u8], timeout: Duration) -> String {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_answer(&mut stream, timeout).await
}

#[tokio::test]
async fn a_byte_order_mark_and_bytes_that_are_not_utf8_are_stored_as_sent() {
    let app = spawn_app().await;
    let bom = fixture("edge/bom.json");
    assert!(bom.starts_with(b"\xEF\xBB\xBF"));
    let answer = app.deliver("default", bom.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(stored_bytes(&app, "TST-B1-MIN", 1).await, bom);

    let odd = fixture("edge/invalid-utf8.json");
    assert!(std::str::from_utf8(&odd).is_err());
    let answer = app.deliver("default", odd.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(stored_bytes(&app, "TST-0099-GGGG", 1).await, odd);
    let record = app
        .store
        .referral(&referral("TST-0099-GGGG"))
        .await
        .unwrap();
    let name = record.unwrap().summary.patient_name.unwrap();
    assert!(name.starts_with("Test\u{fffd}(patient"), "{name}");
}

#[tokio::test]
async fn json_that_a_tree_builder_refuses_is_stored_byte_for_byte() {
    let app = spawn_app().await;
    let text = String::from_utf8(fixture("v0.11-add-service-request.json")).unwrap();
    // A number beyond f64, a repeated member name, a lone surrogate escape: all RFC 8259 JSON.
    let odd = text
        .replacen(
            "\"resourceType\": \"Bundle\",",
            "\"resourceType\": \"Bundle\", \"x-precision\": 1e400, \"x-dup\": 1, \"x-dup\": 2, \"x-text\": \"\\ud83d\",",
            1,
        )
        .into_bytes();
    assert!(serde_json::from_slice::<serde_json::Value>(&odd).is_err());
    let answer = app.deliver("default", odd.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(stored_bytes(&app, "TST-0011-AAAA", 1).await, odd);
}

#[tokio::test]
async fn gzip_and_deflate_bodies_are_decoded_and_other_codings_refused() {
    let app = spawn_app_with("[server]\nmax_body_bytes = 65536\n").await;
    let gz = fixture("edge/gzip-encoded.json.gz");
    let plain = {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice()).read_to_end_sync(&mut out);
        out
    };
    let post = |encoding: &'static str, body: Vec<u8>| {
        app.client
            .post(app.url("/fhir/default/$process-message"))
            .header("content-type", FHIR_JSON)
            .header("content-encoding", encoding)
            .body(body)
            .send()
    };
    let reply = answer(post("gzip", gz).await.unwrap()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let events = app.store.events_after(0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        stored_bytes(&app, events[0].referral.as_str(), 1).await,
        plain
    );

    // deflate (zlib) of a different delivery.
    let other = crate::support::fixtures::unique_v011(
        &String::from_utf8(fixture("v0.11-add-service-request.json")).unwrap(),
        "TST-DEFLATE",
        "deflate-1",
    );
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut z, &other).unwrap();
    let reply = answer(post("deflate", z.finish().unwrap()).await.unwrap()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(stored_bytes(&app, "TST-DEFLATE", 1).await, other);

    // A small body that decodes past the limit is a 413, not a 200 or an out-of-memory.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut bomb, &vec![b' '; 8 << 20]).unwrap();
    let bomb = bomb.finish().unwrap();
    assert!(bomb.len() < 65536);
    let reply = answer(post("gzip", bomb).await.unwrap()).await;
    assert_eq!(reply.status, 413, "{}", reply.body);

    // A coding the relay does not speak: 415, naming those it does.
    let response = post("br", plain.clone()).await.unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(response.headers()["accept-encoding"], "gzip, deflate");
    let reply = answer(response).await;
    assert!(reply.diagnostics().contains("Content-Encoding"));
    // Labelled gzip but not gzip: refused, not stored as if plain.
    let reply = answer(post("gzip", plain).await.unwrap()).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(app.store.events_after(0, 10).await.unwrap().len(), 2);
}

/// A blocking read to the end, for decompressing fixtures.
trait ReadToEndSync {
    fn read_to_end_sync(&mut self, out: &mut Vec<u8>);
}

impl<R: std::io::Read> ReadToEndSync for R {
    fn read_to_end_sync(&mut self, out: &mut Vec<u8>) {
        std::io::Read::read_to_end(self, out).unwrap();
    }
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_without_100_continue() {
    let app = spawn_app_with("[server]\nmax_body_bytes = 4096\n").await;
    let reply = raw_exchange(
        &app,
        b"POST /fhir/default/$process-message HTTP/1.1\r\nHost: relay\r\n\
          Content-Type: application/fhir+json\r\nContent-Length: 900000\r\n\
          Expect: 100-continue\r\n\r\n",
        Duration::from_secs(20),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(!reply.contains("100 Continue"), "{reply}");
}

const HMAC_CONFIG: &str = "[server]\nmax_body_bytes = 65536\nmax_unauthenticated_body_bytes = 131072\n\
     [integrations.signed]\nauth = { scheme = \"hmac\", secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"] }\n";

#[tokio::test]
async fn an_unsigned_upload_is_refused_before_its_body_is_read() {
    let app = spawn_app_with(HMAC_CONFIG).await;
    // Headers only, announcing a body that never comes: the answer cannot wait for it.
    let reply = raw_exchange(
        &app,
        b"POST /fhir/signed/$process-message HTTP/1.1\r\nHost: relay\r\n\
          Content-Type: application/fhir+json\r\nContent-Length: 60000\r\n\r\n",
        Duration::from_secs(20),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
    assert!(reply.contains("webhook-id header is missing"), "{reply}");
}

#[tokio::test]
async fn bodies_of_unauthenticated_senders_share_a_bounded_budget() {
    let app = spawn_app_with(HMAC_CONFIG).await;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    // Well-formed, fresh signature headers (over some other body): the body must be read
    // before the signature can be found wrong.
    let headers = signed(HMAC_SECRET, "msg_stall", now, b"other");
    let head = |length: usize| {
        let mut head = format!(
            "POST /fhir/signed/$process-message HTTP/1.1\r\nHost: relay\r\n\
             Content-Type: application/fhir+json\r\nContent-Length: {length}\r\n"
        );
        for (name, value) in &headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        head
    };
    // A declared length takes nothing from the budget: only bytes sent do. So an upload that
    // declares much and sends nothing holds nothing...
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(head(60_000).as_bytes()).await.unwrap();
    // ... while two that sent 60 KB each of their 64 KB and stalled hold 120 KB of the 128 KiB.
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    stalled.write_all(head(64_000).as_bytes()).await.unwrap();
    stalled.write_all(&vec![b' '; 60_000]).await.unwrap();
    let mut stalled_too = TcpStream::connect(app.addr).await.unwrap();
    stalled_too
        .write_all(head(64_000).as_bytes())
        .await
        .unwrap();
    stalled_too.write_all(&vec![b' '; 60_000]).await.unwrap();
    eventually("the relay holding both stalled bodies", async || {
        let held = metric(
            &app.metrics().await,
            "relay_unauthenticated_body_bytes",
            &[],
        );
        held >= Some(120_000.0)
    })
    .await;
    // Another that sends 40 KB is told to come back, at once.
    let mut second = TcpStream::connect(app.addr).await.unwrap();
    second.write_all(head(40_000).as_bytes()).await.unwrap();
    second.write_all(&vec![b' '; 40_000]).await.unwrap();
    let reply = read_answer(&mut second, Duration::from_secs(20)).await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("retry-after: 5"), "{reply}");
    assert!(reply.contains("unauthenticated uploads"), "{reply}");
    // The stalled upload gives its share back after a short pause (10 s), not the whole body
    // timeout, and is told why.
    let reply = read_answer(&mut stalled, Duration::from_secs(30)).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    let body = fixture("edge/svix-signed.json");
    let good = signed(HMAC_SECRET, "msg_after", now, &body);
    let mut request = app
        .client
        .post(app.url("/fhir/signed/$process-message"))
        .header("content-type", FHIR_JSON)
        .body(body.clone());
    for (name, value) in &good {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
    drop(idle);
}

/// A compressed body whose signature does not match as sent must be decoded to be checked
/// (a sender may sign before compressing): the decoding counts against the unauthenticated
/// budget at its largest, so a bomb with a bad signature cannot make the relay inflate it
/// when the budget cannot hold it.
#[tokio::test]
async fn an_unauthenticated_compressed_body_is_decoded_only_within_the_budget() {
    let app = spawn_app_with(HMAC_CONFIG).await;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut bomb, &vec![b' '; 60_000]).unwrap();
    let bomb = bomb.finish().unwrap();
    let headers = signed(HMAC_SECRET, "msg_bomb", now, b"not this body");
    let post = || {
        let mut request = app
            .client
            .post(app.url("/fhir/signed/$process-message"))
            .header("content-type", FHIR_JSON)
            .header("content-encoding", "gzip")
            .body(bomb.clone());
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        request.send()
    };
    // With the budget free, the bomb is decoded (within the limit), and its signature refused.
    assert_eq!(post().await.unwrap().status(), 401);
    // With most of the budget held by stalled uploads, it is not decoded at all.
    let stall = signed(HMAC_SECRET, "msg_stall", now, b"other");
    let mut head = "POST /fhir/signed/$process-message HTTP/1.1\r\nHost: relay\r\n\
                    Content-Type: application/fhir+json\r\nContent-Length: 60000\r\n"
        .to_owned();
    for (name, value) in &stall {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&vec![b' '; 40_000]).await.unwrap();
        stalled.push(stream);
    }
    // Once the relay holds their bytes (it says so in its metrics)...
    eventually("the relay holding the stalled bodies", async || {
        let held = metric(
            &app.metrics().await,
            "relay_unauthenticated_body_bytes",
            &[],
        );
        held >= Some(80_000.0)
    })
    .await;
    // ... the bomb is refused before it is decoded whole...
    assert_eq!(post().await.unwrap().status(), 503);
    // ... while a small delivery signed before it was compressed, decoded within what is left,
    // goes through.
    let small = fixture("edge/svix-signed.json");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &small).unwrap();
    let mut request = app
        .client
        .post(app.url("/fhir/signed/$process-message"))
        .header("content-type", FHIR_JSON)
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap());
    for (name, value) in signed(HMAC_SECRET, "msg_small", now, &small) {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
    drop(stalled);
}

/// Reads one answer from `stream` (until its body is complete or the server closes).
async fn read_answer(stream: &mut TcpStream, timeout: Duration) -> String {
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(timeout, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if complete(&seen) {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&seen).into_owned()
}

/// Whether `seen` holds a whole answer (head and as much body as it announced).
fn complete(seen: &[u8]) -> bool {
    let text = String::from_utf8_lossy(seen);
    let Some(head_end) = text.find("\r\n\r\n") else {
        return false;
    };
    text[..head_end]
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|l| l.trim().parse::<usize>().ok())
        .is_some_and(|length| seen.len() >= head_end + 4 + length)
}

#[tokio::test]
async fn svix_header_names_are_accepted_and_a_mixture_is_refused() {
    let app = spawn_app_with(HMAC_CONFIG).await;
    let body = fixture("edge/svix-signed.json");
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let standard = signed(HMAC_SECRET, "msg_svix", now, &body);
    let svix: Vec<(String, String)> = standard
        .iter()
        .map(|(k, v)| (k.replace("webhook-", "svix-"), v.clone()))
        .collect();
    let post = |headers: Vec<(String, String)>| {
        let mut request = app
            .client
            .post(app.url("/fhir/signed/$process-message"))
            .header("content-type", FHIR_JSON)
            .body(body.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    assert_eq!(post(svix.clone()).await.unwrap().status(), 200);
    // The same delivery under the other names is the same delivery.
    let again = answer(post(standard.clone()).await.unwrap()).await;
    assert_eq!(again.status, 200);
    assert!(again.response_note().unwrap().contains("already stored"));
    let mut mixed = vec![standard[0].clone(), standard[1].clone(), svix[2].clone()];
    let reply = answer(post(mixed.clone()).await.unwrap()).await;
    assert_eq!(reply.status, 401);
    assert!(
        reply.diagnostics().contains("send one set"),
        "{}",
        reply.body
    );
    mixed[0].1 = "msg_other".into();
    mixed.push(svix[0].clone());
    assert_eq!(post(mixed).await.unwrap().status(), 401);
    assert_eq!(app.store.events_after(0, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_versioned_reference_files_the_referral_under_its_external_service_id() {
    let app = spawn_app().await;
    for (name, r) in [
        ("edge/versioned-reference.json", "TST-B14-MIN"),
        ("edge/versioned-reference-control.json", "TST-B14-CTL"),
    ] {
        let reply = app.deliver("default", fixture(name)).await;
        assert_eq!(reply.status, 200, "{name}: {}", reply.body);
        let record = app.store.referral(&referral(r)).await.unwrap().unwrap();
        assert_eq!(
            record.service_id.map(|s| s.to_string()).as_deref(),
            Some("PHYSIO-EAST-02"),
            "{name}"
        );
    }
}

const TWO_INTEGRATIONS: &str = "[api.clients.a_only]\nkey = \"a-only-key-0123456789\"\n\
     service_ids = [\"CARDIO-RAPID-01\"]\n\
     [integrations.a]\nauth = { scheme = \"bearer\", tokens = [\"token-a\"] }\n\
     [integrations.b]\nauth = { scheme = \"bearer\", tokens = [\"token-b\"] }\n";

#[tokio::test]
async fn a_referral_belongs_to_the_integration_that_first_delivered_it() {
    let app = spawn_app_with(TWO_INTEGRATIONS).await;
    let deliver = |integration: &'static str, token: &'static str, body: Vec<u8>| {
        let request = app
            .client
            .post(app.url(&format!("/fhir/{integration}/$process-message")))
            .header("content-type", FHIR_JSON)
            .bearer_auth(token)
            .body(body);
        async move { answer(request.send().await.unwrap()).await }
    };
    let first = deliver("a", "token-a", fixture("v0.11-add-service-request.json")).await;
    assert_eq!(first.status, 200);
    // Integration b, authenticated, sends an update for a's referral that would also move it
    // to another External Service ID: refused, recorded, nothing changed.
    let hostile = String::from_utf8(fixture("update-task-accepted.json"))
        .unwrap()
        .replace("CARDIO-RAPID-01", "ELSEWHERE-99")
        .into_bytes();
    let reply = deliver("b", "token-b", hostile.clone()).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.body["issue"][0]["code"], "forbidden");
    assert!(reply.diagnostics().contains("belongs to integration 'a'"));
    let record = app
        .store
        .referral(&referral("TST-0011-AAAA"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.version, 1);
    assert_eq!(record.service_id.unwrap().as_str(), "CARDIO-RAPID-01");
    let audit = app.store.audit_entries(0, 10).await.unwrap();
    let refused = audit
        .iter()
        .find(|e| e.action == "DELIVERY_REFUSED")
        .expect("the refusal is in the audit log");
    assert_eq!(refused.actor, "integration:b");
    assert_eq!(refused.details["owner"], "a");
    // a's scoped client still sees the whole history.
    let own = app
        .client
        .get(app.url("/api/v1/referrals/TST-0011-AAAA"))
        .bearer_auth("a-only-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    // The owner itself may move it within its own integration.
    let moved = deliver("a", "token-a", hostile).await;
    assert_eq!(moved.status, 200, "{}", moved.body);

    // Integrations configured to share referrals may update each other's.
    let config = TWO_INTEGRATIONS.replace(
        "[integrations.b]\n",
        "[integrations.b]\nshare_referrals_with = [\"a\"]\n",
    );
    let shared = spawn_app_with(&config).await;
    let post = |integration: &'static str, token: &'static str, name: &str| {
        shared
            .client
            .post(shared.url(&format!("/fhir/{integration}/$process-message")))
            .header("content-type", FHIR_JSON)
            .bearer_auth(token)
            .body(fixture(name))
            .send()
    };
    let a = post("a", "token-a", "v0.11-add-service-request.json")
        .await
        .unwrap();
    assert_eq!(a.status(), 200);
    let b = post("b", "token-b", "update-task-accepted.json")
        .await
        .unwrap();
    assert_eq!(b.status(), 200);
}

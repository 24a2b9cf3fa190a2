//! Documents: each referral version's letter and the attachments its messages point to, fetched
//! from a stand-in Ocean after the delivery is acknowledged, kept (sealed, purged with their
//! version), listed, downloadable; and every way a fetch goes wrong, with the reason kept.

use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::support::app::{Answer, TestApp, answer, spawn_app_in, spawn_app_with};
use crate::support::at_rest::{grep, key};
use crate::support::fixtures::fixture;
use crate::support::flow::{self, KEY, REF};
use crate::support::ocean::{MockOcean, Serve};
use crate::support::poll::eventually;

const LETTER: &str = "/svc/fhir/v1/ServiceRequest/TST-0011-AAAA/$letter";
const ECHO: &str = "/svc/fhir/v1/DocumentReference/doc-0011-echo/$binary";

/// Bytes that look like a PDF, `size` long, different per `seed`.
fn pdf(seed: u8, size: usize) -> Vec<u8> {
    let mut bytes = b"%PDF-1.7\n% synthetic test document\n".to_vec();
    bytes.extend((0..size.saturating_sub(bytes.len())).map(|i| (i as u8).wrapping_mul(31) ^ seed));
    bytes.truncate(size.max(8));
    bytes
}

fn config(ocean: &MockOcean, extra: &str) -> String {
    with_backoff(ocean, 1, extra)
}

fn with_backoff(ocean: &MockOcean, secs: u64, extra: &str) -> String {
    format!(
        "{}\n[documents]\ninitial_backoff_secs = {secs}\nmax_backoff_secs = {secs}\nrequest_timeout_secs = 60\n{extra}",
        flow::config(ocean, "form")
    )
}

async fn get(app: &TestApp, path: &str) -> Answer {
    let request = app
        .client
        .get(app.url(path))
        .header("authorization", format!("Bearer {KEY}"));
    answer(request.send().await.unwrap()).await
}

async fn raw(app: &TestApp, path: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .header("authorization", format!("Bearer {KEY}"))
        .send()
        .await
        .unwrap()
}

async fn deliver(app: &TestApp, body: Vec<u8>) {
    let reply = app.deliver("default", body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// The attachment-added update with its attachment served by `ocean`.
fn attachment_added(ocean: &MockOcean) -> Vec<u8> {
    String::from_utf8(fixture("attachment-added.json"))
        .unwrap()
        .replace("https://test.cognisantmd.com", &ocean.base_url())
        .into_bytes()
}

/// The referral's documents once `count` of them exist and none is pending (bounded wait).
async fn settled(app: &TestApp, count: usize) -> Vec<Value> {
    let mut documents = Vec::new();
    eventually("the documents settling", async || {
        let list = get(app, &format!("/api/v1/referrals/{REF}/documents")).await;
        assert_eq!(list.status, 200, "{}", list.body);
        documents = list.body["documents"].as_array().unwrap().clone();
        documents.len() == count && documents.iter().all(|d| d["state"] != "pending")
    })
    .await;
    documents
}

#[tokio::test]
async fn the_letter_and_attachments_are_fetched_kept_and_downloadable() {
    let ocean = MockOcean::start().await;
    let (first, second, echo) = (pdf(1, 5_000), pdf(2, 6_000), pdf(3, 7_000));
    ocean.serve(
        LETTER,
        [Serve::Pdf(first.clone()), Serve::Pdf(second.clone())],
    );
    ocean.serve(ECHO, [Serve::Pdf(echo.clone())]);
    let app = spawn_app_with(&config(&ocean, "")).await;
    deliver(&app, fixture("v0.11-add-service-request.json")).await;
    settled(&app, 1).await;
    deliver(&app, attachment_added(&ocean)).await;
    let documents = settled(&app, 3).await;

    let summary: Vec<(u64, u64, &str, &str)> = documents
        .iter()
        .map(|d| {
            (
                d["version"].as_u64().unwrap(),
                d["index"].as_u64().unwrap(),
                d["kind"].as_str().unwrap(),
                d["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, 0, "letter", "fetched"),
            (2, 0, "letter", "fetched"),
            (2, 1, "attachment", "fetched")
        ]
    );
    assert_eq!(documents[2]["document_id"], "doc-0011-echo");
    assert_eq!(documents[2]["title"], "Echocardiogram report");
    assert_eq!(documents[1]["size"], second.len());
    for (document, expected) in documents.iter().zip([&first, &second, &echo]) {
        let path = format!("/api/v1/{}", document["download"].as_str().unwrap());
        let response = raw(&app, &path).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/pdf");
        let disposition = response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            disposition.contains(document["file_name"].as_str().unwrap()),
            "{disposition}"
        );
        assert_eq!(&response.bytes().await.unwrap().to_vec(), expected);
    }
    // Fetched with the site's token; the letter with its attachments consolidated.
    let requests = ocean.document_requests();
    assert_eq!(requests.len(), 3);
    assert!(
        requests
            .iter()
            .all(|r| r.authorization.starts_with("Bearer ocean-token-"))
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.path_and_query.starts_with(LETTER))
            .all(|r| r.path_and_query.ends_with("?attachments=true"))
    );
    // Each outcome is in the audit trail.
    let audit = get(&app, "/api/v1/audit?limit=500").await;
    let fetched = audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "DOCUMENT_FETCHED")
        .count();
    assert_eq!(fetched, 3, "{}", audit.body);
}

#[tokio::test]
async fn a_document_that_cannot_be_had_is_given_up_with_the_reason() {
    let ocean = MockOcean::start().await;
    ocean.serve(LETTER, [Serve::Status(404), Serve::Status(404)]);
    let app = spawn_app_with(&config(&ocean, "")).await;
    deliver(&app, fixture("v0.11-add-service-request.json")).await;
    // The attachment's url is on another host than the site's: never fetched with its token.
    deliver(&app, fixture("attachment-added.json")).await;
    let documents = settled(&app, 3).await;
    assert!(
        documents.iter().all(|d| d["state"] == "failed"),
        "{documents:?}"
    );
    assert!(documents[0]["last_error"].as_str().unwrap().contains("404"));
    assert_eq!(documents[0]["attempts"], 1, "a 404 is not retried");
    assert!(
        documents[2]["last_error"]
            .as_str()
            .unwrap()
            .contains("not on the Ocean site's host")
    );
    assert!(
        !ocean
            .document_requests()
            .iter()
            .any(|r| r.path_and_query.contains("DocumentReference"))
    );
    let download = get(&app, &format!("/api/v1/referrals/{REF}/documents/1/0")).await;
    assert_eq!(download.status, 404);
    assert_eq!(download.content_type, "application/problem+json");
    assert!(download.body["detail"].as_str().unwrap().contains("404"));
    for (path, status) in [
        (format!("/api/v1/referrals/{REF}/documents/9/0"), 404),
        (format!("/api/v1/referrals/{REF}/documents/1/x"), 400),
        (
            format!("/api/v1/referrals/{REF}/documents/1/99999999999"),
            404,
        ),
        ("/api/v1/referrals/NOPE/documents".to_owned(), 404),
    ] {
        assert_eq!(get(&app, &path).await.status, status, "{path}");
    }
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_the_fetch_goes_on() {
    let ocean = MockOcean::start().await;
    let letter = pdf(4, 4_000);
    ocean.serve(LETTER, [Serve::ExpireTokens, Serve::Pdf(letter.clone())]);
    let app = spawn_app_with(&config(&ocean, "")).await;
    deliver(&app, fixture("v0.11-add-service-request.json")).await;
    let documents = settled(&app, 1).await;
    assert_eq!(documents[0]["state"], "fetched", "{documents:?}");
    assert_eq!(documents[0]["attempts"], 1);
    assert_eq!(
        ocean.token_requests().len(),
        2,
        "one token, then a fresh one"
    );
    let bytes = raw(&app, &format!("/api/v1/referrals/{REF}/documents/1/0")).await;
    assert_eq!(bytes.bytes().await.unwrap().to_vec(), letter);
}

#[tokio::test]
async fn a_slow_letter_does_not_hold_up_the_webhook() {
    let ocean = MockOcean::start().await;
    let letter = pdf(5, 40_000);
    // Four pieces a second apart: the download takes four seconds at least.
    ocean.serve(
        LETTER,
        [Serve::SlowPdf(letter.clone(), Duration::from_secs(1))],
    );
    let app = spawn_app_with(&config(&ocean, "")).await;
    deliver(&app, fixture("v0.11-add-service-request.json")).await;
    // Acknowledged and listed while the letter is still coming.
    let list = get(&app, &format!("/api/v1/referrals/{REF}/documents")).await;
    assert_eq!(
        list.body["documents"][0]["state"], "pending",
        "{}",
        list.body
    );
    deliver(&app, fixture("update-task-accepted.json")).await;
    let documents = settled(&app, 2).await;
    assert_eq!(documents[0]["state"], "fetched", "{documents:?}");
    assert_eq!(documents[0]["size"], letter.len());
}

#[tokio::test]
async fn a_20_mb_letter_is_kept_whole_and_a_larger_one_than_allowed_is_refused() {
    let ocean = MockOcean::start().await;
    let letter = pdf(6, 20 * 1024 * 1024);
    ocean.serve(
        LETTER,
        [Serve::Pdf(letter.clone()), Serve::Pdf(pdf(7, 30_000))],
    );
    let app = spawn_app_with(&config(&ocean, "")).await;
    deliver(&app, fixture("v0.11-add-service-request.json")).await;
    let documents = settled(&app, 1).await;
    assert_eq!(documents[0]["state"], "fetched", "{documents:?}");
    assert_eq!(documents[0]["size"], letter.len());
    let bytes = raw(&app, &format!("/api/v1/referrals/{REF}/documents/1/0"))
        .await
        .bytes()
        .await
        .unwrap();
    assert!(
        bytes.to_vec() == letter,
        "the 20 MB letter came back changed"
    );
    drop(app);

    let small = spawn_app_with(&config(&ocean, "max_bytes = 20000\n")).await;
    deliver(&small, fixture("v0.11-add-service-request.json")).await;
    let documents = settled(&small, 1).await;
    assert_eq!(documents[0]["state"], "failed");
    assert!(
        documents[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("larger than documents.max_bytes")
    );
}

/// A fetch Ocean answers 503 stays pending, with the reason, and is resumed by the next start.
#[tokio::test]
async fn pending_documents_are_retried_and_resumed_after_a_restart() {
    let ocean = MockOcean::start().await;
    ocean.serve(LETTER, [Serve::Status(503)]);
    let dir = TempDir::new().unwrap();
    let toml = with_backoff(&ocean, 3600, "");
    let app = spawn_app_in(dir.path(), &toml).await;
    deliver(&app, fixture("v0.11-add-service-request.json")).await;
    let mut pending = Value::Null;
    eventually("the document attempted once", async || {
        let list = get(&app, &format!("/api/v1/referrals/{REF}/documents")).await;
        pending = list.body["documents"][0].clone();
        pending["attempts"] == 1
    })
    .await;
    assert_eq!(pending["state"], "pending");
    assert!(pending["last_error"].as_str().unwrap().contains("503"));
    assert!(pending["next_attempt_at"].is_string());
    app.stop().await;

    // Started again: the document is still pending, and fetched once due.
    let letter = pdf(8, 3_000);
    ocean.serve(LETTER, [Serve::Pdf(letter.clone())]);
    let soon = config(&ocean, "");
    let app = spawn_app_in(dir.path(), &soon).await;
    let store = std::sync::Arc::clone(&app.store);
    // The stored retry time is an hour away: make it due now (as the hour passing would).
    let referral = referral_relay::domain::ReferralRef::parse(REF).unwrap();
    let mut record = store.documents(&referral).await.unwrap().remove(0);
    record.next_attempt_at = time::OffsetDateTime::now_utc();
    store.save_document(&record, None).await.unwrap();
    let documents = settled(&app, 1).await;
    assert_eq!(documents[0]["state"], "fetched", "{documents:?}");
    assert_eq!(documents[0]["attempts"], 2);
    let bytes = raw(&app, &format!("/api/v1/referrals/{REF}/documents/1/0")).await;
    assert_eq!(bytes.bytes().await.unwrap().to_vec(), letter);
}

#[tokio::test]
async fn without_an_ocean_site_nothing_is_queued() {
    let app = spawn_app_with("[api.clients.emr]\nkey = \"emr-key-0123456789\"\n").await;
    deliver(&app, fixture("v0.11-add-service-request.json")).await;
    let list = get(&app, &format!("/api/v1/referrals/{REF}/documents")).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body["documents"], serde_json::json!([]));
}

/// Sealed at rest with the key (the embedded store's files are searched).
#[tokio::test]
async fn documents_are_sealed_at_rest() {
    let ocean = MockOcean::start().await;
    let marker = b"%PDF-1.7 SYNTHETIC-LETTER-MARKER-7Q4".to_vec();
    let mut first = marker.clone();
    first.extend(pdf(9, 2_000));
    ocean.serve(LETTER, [Serve::Pdf(first), Serve::Pdf(pdf(10, 2_000))]);
    let dir = TempDir::new().unwrap();
    let toml = config(
        &ocean,
        &format!("\n[storage]\nencryption_key = \"{}\"\n", key(7)),
    );
    let app = spawn_app_in(dir.path(), &toml).await;
    deliver(&app, fixture("v0.11-add-service-request.json")).await;
    settled(&app, 1).await;
    deliver(&app, fixture("update-task-accepted.json")).await;
    settled(&app, 2).await;
    let needle = vec![String::from_utf8(marker).unwrap()];
    assert!(
        grep(dir.path(), &needle).is_empty(),
        "the letter is on disk in the clear"
    );
    let kept = raw(&app, &format!("/api/v1/referrals/{REF}/documents/1/0")).await;
    let head = kept.bytes().await.unwrap().slice(..needle[0].len());
    assert_eq!(&head[..], needle[0].as_bytes());
}

/// Retention purges a version's documents with its payload; the latest version keeps its own.
#[tokio::test]
async fn documents_are_purged_with_their_version() {
    let ocean = MockOcean::start().await;
    ocean.serve(
        LETTER,
        [Serve::Pdf(pdf(14, 2_000)), Serve::Pdf(pdf(15, 2_000))],
    );
    let app = spawn_app_with(&config(&ocean, "")).await;
    deliver(&app, fixture("v0.11-add-service-request.json")).await;
    settled(&app, 1).await;
    deliver(&app, fixture("update-task-accepted.json")).await;
    settled(&app, 2).await;
    let purged = app
        .store
        .purge_versions_before(time::OffsetDateTime::now_utc() + time::Duration::days(1))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    let documents = settled(&app, 2).await;
    assert_eq!(documents[0]["purged"], true);
    assert_eq!(documents[0]["download"], Value::Null);
    assert_eq!(documents[1]["purged"], false);
    let gone = get(&app, &format!("/api/v1/referrals/{REF}/documents/1/0")).await;
    assert_eq!(gone.status, 404);
    assert!(gone.body["detail"].as_str().unwrap().contains("purged"));
    let kept = raw(&app, &format!("/api/v1/referrals/{REF}/documents/2/0")).await;
    assert_eq!(kept.status(), 200);
}

/// `export --with-documents` writes the CSV and each referral's latest letter and attachments,
/// named by referral ref, into one ZIP archive, and marks only once it is whole.
#[tokio::test]
async fn the_export_archive_holds_the_csv_and_each_referrals_latest_documents() {
    let ocean = MockOcean::start().await;
    let (old_letter, letter, echo) = (pdf(11, 3_000), pdf(12, 4_000), pdf(13, 5_000));
    ocean.serve(LETTER, [Serve::Pdf(old_letter), Serve::Pdf(letter.clone())]);
    ocean.serve(ECHO, [Serve::Pdf(echo.clone())]);
    let dir = TempDir::new().unwrap();
    let app = spawn_app_in(dir.path(), &config(&ocean, "")).await;
    deliver(&app, fixture("v0.11-add-service-request.json")).await;
    settled(&app, 1).await;
    deliver(&app, attachment_added(&ocean)).await;
    settled(&app, 3).await;
    app.stop().await;

    let data = dir.path().to_str().unwrap().to_owned();
    let out = dir.path().join("backup.zip");
    let out_arg = out.to_str().unwrap().to_owned();
    let refused =
        crate::support::binary::run(&["export", "--data-dir", &data, "--with-documents"], &[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--out FILE.zip"));
    let done = crate::support::binary::run(
        &[
            "export",
            "--data-dir",
            &data,
            "--with-documents",
            "--mark-exported",
            "--out",
            &out_arg,
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    assert!(
        stderr.contains("exported 1 referrals and 2 documents"),
        "{stderr}"
    );

    let mut archive = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
    let mut names: Vec<String> = archive
        .file_names()
        .map(|n| n.unwrap().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "TST-0011-AAAA/TST-0011-AAAA-v2-1.pdf",
            "TST-0011-AAAA/TST-0011-AAAA-v2-letter.pdf",
            "referrals.csv"
        ]
    );
    let read = |archive: &mut zip::ZipArchive<std::fs::File>, name: &str| {
        let mut entry = archive.by_name(name).unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        bytes
    };
    assert_eq!(
        read(&mut archive, "TST-0011-AAAA/TST-0011-AAAA-v2-letter.pdf"),
        letter
    );
    assert_eq!(
        read(&mut archive, "TST-0011-AAAA/TST-0011-AAAA-v2-1.pdf"),
        echo
    );
    let csv = String::from_utf8(read(&mut archive, "referrals.csv")).unwrap();
    assert!(csv.contains("TST-0011-AAAA"), "{csv}");
}

/// A slow document holds up only its own download: another referral's letter, queued after it,
/// is fetched while the slow one is still coming.
#[tokio::test]
async fn a_slow_document_does_not_hold_up_the_others() {
    let ocean = MockOcean::start().await;
    // Four pieces two seconds apart: at least eight seconds.
    ocean.serve(
        LETTER,
        [Serve::SlowPdf(pdf(16, 8_000), Duration::from_secs(2))],
    );
    let other = "/svc/fhir/v1/ServiceRequest/TST-0010-BBBB/$letter";
    ocean.serve(other, [Serve::Pdf(pdf(17, 1_000))]);
    let app = spawn_app_with(&config(&ocean, "concurrency = 2\n")).await;
    deliver(&app, fixture("v0.11-add-service-request.json")).await;
    // The slow download has started before the other referral arrives.
    eventually("the slow download starting", async || {
        ocean
            .document_requests()
            .iter()
            .any(|r| r.path_and_query.starts_with(LETTER))
    })
    .await;
    deliver(&app, fixture("v0.10-add-service-request.json")).await;
    let list = |referral: &'static str| {
        let app = &app;
        async move {
            get(app, &format!("/api/v1/referrals/{referral}/documents"))
                .await
                .body["documents"][0]["state"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
    };
    for _ in 0..400 {
        if list("TST-0010-BBBB").await == "fetched" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(list("TST-0010-BBBB").await, "fetched");
    assert_eq!(
        list(REF).await,
        "pending",
        "the slow letter is still coming"
    );
    assert_eq!(settled(&app, 1).await[0]["state"], "fetched");
}

/// One message naming many attachments queues at most `documents.max_per_delivery`: the rest
/// are said in the version's problems and counted, and neither listed nor fetched (2,000 made
/// 2,001 fetches, and one referral's page 4.6 MB).
#[tokio::test]
async fn attachments_beyond_the_cap_of_one_message_are_reported_not_fetched() {
    let ocean = MockOcean::start().await;
    let app = spawn_app_with(&config(&ocean, "max_per_delivery = 3")).await;
    let mut message: Value = serde_json::from_slice(&attachment_added(&ocean)).unwrap();
    let entries = message["entry"].as_array_mut().unwrap();
    let at = entries
        .iter()
        .position(|e| e["resource"]["resourceType"] == "DocumentReference")
        .unwrap();
    for n in 0..40 {
        let mut copy = entries[at].clone();
        copy["fullUrl"] = format!("urn:uuid:00000000-0000-4000-8000-{n:012}").into();
        copy["resource"]["id"] = format!("doc-many-{n}").into();
        copy["resource"]["content"][0]["attachment"]["url"] =
            format!("{}/svc/fhir/v1/Binary/many-{n}", ocean.base_url()).into();
        entries.push(copy);
    }
    deliver(&app, serde_json::to_vec(&message).unwrap()).await;
    // The letter and three attachments, all given up (nothing is served): nothing more.
    let documents = settled(&app, 4).await;
    assert_eq!(
        documents
            .iter()
            .filter(|d| d["kind"] == "attachment")
            .count(),
        3
    );
    let referral = get(&app, &format!("/api/v1/referrals/{REF}")).await;
    let problems = referral.body["versions"][0]["problems"].to_string();
    assert!(
        problems.contains("38 more attachments than documents.max_per_delivery (3)"),
        "{problems}"
    );
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("relay_documents_not_queued_total{integration=\"default\"} 38"),
        "{metrics}"
    );
    let fetched = ocean.document_requests().len();
    assert!(fetched <= 4 * 2, "{fetched} document requests");
    app.stop().await;
}

/// Ocean's answers cannot make the fetcher panic: a token said to live for 2^64 s is kept for a
/// day, and a `Retry-After` no clock can add is past the retry horizon, so the document is given
/// up at once (both panicked, and the panics looped without pause).
#[tokio::test]
async fn answers_no_clock_can_add_are_bounded() {
    let ocean = MockOcean::start().await;
    ocean.token_expires_in(serde_json::json!("18446744073709551615"));
    ocean.serve(LETTER, [Serve::RetryAfter(503, "18446744073709551615")]);
    let app = spawn_app_with(&config(&ocean, "")).await;
    deliver(&app, fixture("v0.11-add-service-request.json")).await;
    let documents = settled(&app, 1).await;
    assert_eq!(documents[0]["state"], "failed", "{documents:?}");
    let reason = documents[0]["last_error"].as_str().unwrap();
    assert!(
        reason.contains("retry_horizon_secs") && reason.contains("503"),
        "{reason}"
    );
    assert_eq!(ocean.document_requests().len(), 1);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    app.stop().await;
}

//! The audit log: what is recorded, the hash chain, and tamper detection at the broken entry.

use crate::support::app::{TestApp, answer, spawn_app_in};
use crate::support::binary::run;
use crate::support::fixtures::fixture;

const KEY: &str = "emr-key-0123456789";
const CONFIG: &str = "[server]\nauth_failure_report_secs = 1\n\
                      [api.clients.emr]\nkey = \"emr-key-0123456789\"\n\
                      [integrations.default]\nauth = { scheme = \"bearer\", tokens = [\"sender-token\"] }\n";

async fn entries(app: &TestApp) -> Vec<serde_json::Value> {
    let reply = answer(
        app.client
            .get(app.url("/api/v1/audit?limit=500"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["entries"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_auth_failures_and_exports_are_audited_and_tampering_is_found() {
    let dir = tempfile::TempDir::new().unwrap();
    let app = spawn_app_in(dir.path(), CONFIG).await;
    let post = |token: &'static str, name: &'static str| {
        let request = app
            .client
            .post(app.url("/fhir/default/$process-message"))
            .header("content-type", "application/fhir+json")
            .bearer_auth(token)
            .body(fixture(name));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        post("sender-token", "v0.11-add-service-request.json").await,
        200
    );
    assert_eq!(
        post("wrong-token", "v0.10-add-service-request.json").await,
        401
    );
    assert_eq!(
        post("sender-token", "v0.10-add-service-request.json").await,
        200
    );
    let export = app
        .client
        .get(app.url("/api/v1/export.csv?service_id=CARDIO-RAPID-01"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(export.status().as_u16(), 200);
    let _ = export.bytes().await.unwrap();

    // The failure is reported once its interval ends, and the export in the background: wait
    // (bounded) for them.
    let mut log = Vec::new();
    for _ in 0..250 {
        log = entries(&app).await;
        if log.len() == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let actions: Vec<&str> = log.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "DELIVERY_STORED").count(),
        2,
        "{actions:?}"
    );
    assert!(actions.contains(&"AUTH_FAILURE"));
    let exported = log
        .iter()
        .find(|e| e["action"] == "EXPORTED_REFERRALS")
        .unwrap();
    assert_eq!(exported["actor"], "api:emr");
    assert_eq!(exported["details"]["rows"], 1);
    assert_eq!(
        exported["details"]["filter"]["service_id"],
        "CARDIO-RAPID-01"
    );
    let failure = log.iter().find(|e| e["action"] == "AUTH_FAILURE").unwrap();
    assert_eq!(failure["details"]["scheme"], "bearer");
    assert_eq!(failure["details"]["count"], 1);
    assert_eq!(failure["details"]["sources"]["127.0.0.1"], 1);
    assert!(
        !failure.to_string().contains("wrong-token"),
        "no secrets in the audit log"
    );
    for pair in log.windows(2) {
        assert_eq!(
            pair[1]["prev"], pair[0]["hash"],
            "each entry holds the previous hash"
        );
    }
    app.stop().await;

    let data = dir.path().to_str().unwrap().to_owned();
    let verify = run(&["audit", "verify", "--data-dir", &data], &[]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains("intact: 4 entries"));

    // Change what entry 2 says, directly in the store: verify names entry 2.
    {
        let db = sled::open(dir.path().join("sled")).unwrap();
        let audit = db.open_tree("audit").unwrap();
        let key = 2u64.to_be_bytes();
        let mut entry: serde_json::Value =
            serde_json::from_slice(&audit.get(key).unwrap().unwrap()).unwrap();
        entry["actor"] = "someone-else".into();
        audit
            .insert(key, serde_json::to_vec(&entry).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let verify = run(&["audit", "verify", "--data-dir", &data], &[]);
    assert!(!verify.status.success());
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(stderr.contains("audit entry 2 is broken"), "{stderr}");
    let list = run(&["audit", "list", "--data-dir", &data], &[]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 4);
}

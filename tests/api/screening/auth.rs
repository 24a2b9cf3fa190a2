//! Who may call the screening services: a static bearer token, or a JWT signed by the CDS
//! client (PyJWT, the peer) and checked against its JWK Set or a configured PEM key.

use serde_json::{Value, json};

use crate::support::app::{TestApp, spawn_app_with};
use crate::support::cds::{CdsClient, ISSUER, RULES, call, cards, physio_draft};
use crate::support::poll::eventually;

const AUDIENCE: &str = "https://relay.clinic.example/cds-services";
const SERVICE_URL: &str = "https://relay.clinic.example/cds-services/physio";

fn jwt_config(keys: &str) -> String {
    format!(
        "{RULES}\n[cds_hooks.auth]\nscheme = \"jwt\"\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n{keys}\n"
    )
}

/// The status of a screening call with `token`.
async fn status(app: &TestApp, token: Option<&str>) -> u16 {
    call(app, "physio", &physio_draft(|_| {}), token)
        .await
        .status
}

#[tokio::test]
async fn a_static_bearer_token_is_required_when_configured() {
    let app = spawn_app_with(&format!(
        "{RULES}\n[cds_hooks.auth]\nscheme = \"bearer\"\ntokens = [\"cds-token-0123456789abcdef\"]\n"
    ))
    .await;
    let refused = call(&app, "physio", &physio_draft(|_| {}), None).await;
    assert_eq!(refused.status, 401);
    assert!(
        refused.challenge.starts_with("Bearer"),
        "{}",
        refused.challenge
    );
    assert_eq!(refused.body["resourceType"], "OperationOutcome");
    assert_eq!(status(&app, Some("cds-token-0123456789abcdeX")).await, 401);
    assert_eq!(status(&app, Some("cds-token-0123456789abcdef")).await, 200);
    // Which service ids exist is not told to a caller without the token.
    let probe = call(&app, "NEURO-99", &physio_draft(|_| {}), None).await;
    assert_eq!(probe.status, 401);
    let outcome = async |service: &str, outcome: &str| {
        app.metric_sum(
            "relay_cds_hooks_answers_total",
            &[("service", service), ("outcome", outcome)],
        )
        .await
    };
    // Refusals are counted under no service: which ids exist is not told on /metrics either.
    assert_eq!(outcome("any", "unauthorized").await, 3.0);
    assert_eq!(outcome("physio", "unauthorized").await, 0.0);
    assert_eq!(outcome("physio", "cards").await, 1.0);
    // Discovery too.
    assert_eq!(app.get("/cds-services").await.status, 401);
    let discovery = app
        .client
        .get(app.url("/cds-services"))
        .bearer_auth("cds-token-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(discovery.status(), 200);
}

#[tokio::test]
async fn a_client_jwt_is_checked_against_the_clients_jwk_set() {
    let peer = CdsClient::start();
    let app = spawn_app_with(&jwt_config(&format!("jwks_url = \"{}\"", peer.jwks_url()))).await;
    // RS384 and ES384, as CDS Hooks 2.0 asks of clients.
    for kid in ["rsa-1", "ec-1"] {
        let token = peer.token(SERVICE_URL, json!({"kid": kid})).await;
        let answer = call(&app, "physio", &physio_draft(|_| {}), Some(&token)).await;
        assert_eq!(cards(&peer, &answer).await.len(), 2, "{kid}");
    }
    // Discovery's audience is the base URL.
    let token = peer.token(AUDIENCE, json!({})).await;
    let discovery = app
        .client
        .get(app.url("/cds-services"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(discovery.status(), 200);
    let refusals: [(Value, &str); 14] = [
        (json!({"claims": {"nbf": 4_102_444_800u64}}), "nbf"),
        (
            json!({"headers": {"crit": ["exp-extension"], "exp-extension": 1}}),
            "crit",
        ),
        (json!({"claims": {"exp": "soon"}}), "malformed"),
        (json!({"jti": "j".repeat(600)}), "longer than 512"),
        (json!({"iss": "https://someone.else.example"}), "iss"),
        (
            json!({"aud": "https://relay.clinic.example/cds-services/CARDIO-RAPID-01"}),
            "aud",
        ),
        (json!({"exp_in": -600}), "expired"),
        (json!({"exp_in": 3600}), "5 minutes"),
        (json!({"omit": ["jti"]}), "jti"),
        (json!({"omit": ["exp"]}), "exp"),
        (json!({"kid": "stranger"}), "kid"),
        (json!({"kid": "stranger", "header_kid": false}), "signature"),
        (json!({"alg": "HS256"}), "asymmetric"),
        (json!({"alg": "none"}), "asymmetric"),
    ];
    for (overrides, reason) in refusals {
        let token = peer.token(SERVICE_URL, overrides.clone()).await;
        let answer = call(&app, "physio", &physio_draft(|_| {}), Some(&token)).await;
        assert_eq!(answer.status, 401, "{overrides}: {}", answer.body);
        assert!(
            answer.diagnostics().contains(reason),
            "{overrides}: {}",
            answer.diagnostics()
        );
    }
    // A token is used once.
    let token = peer.token(SERVICE_URL, json!({"jti": "once-only"})).await;
    assert_eq!(status(&app, Some(&token)).await, 200);
    let again = call(&app, "physio", &physio_draft(|_| {}), Some(&token)).await;
    assert_eq!(again.status, 401);
    assert!(again.diagnostics().contains("used before"));
    assert_eq!(status(&app, None).await, 401);
    assert_eq!(status(&app, Some("not-a-jwt")).await, 401);
}

#[tokio::test]
async fn a_rotated_key_is_taken_within_seconds_and_unknown_key_ids_do_not_hammer_the_client() {
    let peer = CdsClient::start();
    let app = spawn_app_with(&jwt_config(&format!("jwks_url = \"{}\"", peer.jwks_url()))).await;
    let token = peer.token(SERVICE_URL, json!({})).await;
    assert_eq!(status(&app, Some(&token)).await, 200);
    assert_eq!(peer.jwks_fetches().await, 1);
    // Ten tokens naming a key the set does not hold: at most one more fetch.
    for _ in 0..10 {
        let token = peer.token(SERVICE_URL, json!({"kid": "stranger"})).await;
        assert_eq!(status(&app, Some(&token)).await, 401);
    }
    assert!(
        peer.jwks_fetches().await <= 2,
        "{}",
        peer.jwks_fetches().await
    );
    // The client publishes a new key and withdraws the old one: the relay takes the new one
    // once it may read the set again (10 s after the last reading), however often it is tried.
    let old = peer.token(SERVICE_URL, json!({"kid": "rsa-1"})).await;
    peer.rotate("rsa-2", "RS384", &["rsa-1"]).await;
    eventually("the rotated key accepted", async || {
        let token = peer.token(SERVICE_URL, json!({"kid": "rsa-2"})).await;
        status(&app, Some(&token)).await == 200
    })
    .await;
    assert!(
        peer.jwks_fetches().await <= 4,
        "{}",
        peer.jwks_fetches().await
    );
    // The withdrawn key is gone with the set it was withdrawn from.
    assert_eq!(status(&app, Some(&old)).await, 401);
}

#[tokio::test]
async fn a_configured_public_key_verifies_without_a_jwk_set() {
    let peer = CdsClient::start();
    for kid in ["ec-1", "rsa-1"] {
        let pem = peer.pem(kid).await;
        let app = spawn_app_with(&jwt_config(&format!("public_key = '''\n{pem}'''"))).await;
        let token = peer.token(SERVICE_URL, json!({"kid": kid})).await;
        assert_eq!(status(&app, Some(&token)).await, 200, "{kid}");
        let other = if kid == "ec-1" { "rsa-1" } else { "ec-1" };
        let token = peer.token(SERVICE_URL, json!({"kid": other})).await;
        assert_eq!(status(&app, Some(&token)).await, 401, "{kid}");
    }
}

#[tokio::test]
async fn keys_that_cannot_be_read_are_tried_again_after_10_s_however_often_they_are_needed() {
    let peer = CdsClient::start();
    peer.keys_down(true).await;
    let app = spawn_app_with(&jwt_config(&format!("jwks_url = \"{}\"", peer.jwks_url()))).await;
    for _ in 0..10 {
        let token = peer.token(SERVICE_URL, json!({})).await;
        let answer = call(&app, "physio", &physio_draft(|_| {}), Some(&token)).await;
        assert_eq!(answer.status, 503, "{}", answer.body);
        assert!(
            answer.diagnostics().contains("answered 500"),
            "{}",
            answer.body
        );
    }
    assert_eq!(peer.jwks_fetches().await, 1);
    peer.keys_down(false).await;
    eventually("the keys read again", async || {
        let token = peer.token(SERVICE_URL, json!({})).await;
        status(&app, Some(&token)).await == 200
    })
    .await;
    assert!(
        peer.jwks_fetches().await <= 3,
        "{}",
        peer.jwks_fetches().await
    );
    // A public key configured besides: it still verifies its tokens while the set is down, and
    // a token of a key only the set holds is 503, not a refusal.
    peer.keys_down(true).await;
    let pem = peer.pem("ec-1").await;
    let both = format!(
        "jwks_url = \"{}\"\npublic_key = '''\n{pem}'''",
        peer.jwks_url()
    );
    let app = spawn_app_with(&jwt_config(&both)).await;
    let token = peer.token(SERVICE_URL, json!({"kid": "ec-1"})).await;
    assert_eq!(status(&app, Some(&token)).await, 200);
    let token = peer.token(SERVICE_URL, json!({"kid": "rsa-1"})).await;
    assert_eq!(status(&app, Some(&token)).await, 503);
}

#[tokio::test]
async fn unreadable_client_keys_are_503_not_a_verdict_on_the_caller() {
    let peer = CdsClient::start();
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_app_with(&jwt_config(&format!(
        "jwks_url = \"http://127.0.0.1:{port}/jwks.json\""
    )))
    .await;
    let token = peer.token(SERVICE_URL, json!({})).await;
    let answer = call(&app, "physio", &physio_draft(|_| {}), Some(&token)).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        answer.diagnostics().contains("keys could not be read"),
        "{}",
        answer.body
    );
}

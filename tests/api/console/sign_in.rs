//! Signing in to the console over plain HTTP: the sign-in form and its token, cookies,
//! sessions and their end, the failed-login limiter, security headers, and what an unknown
//! address, method or malformed form gets.

use reqwest::header::{HeaderMap, SET_COOKIE};

use crate::support::app::spawn_app_with;
use crate::support::console::{
    ALICE_PASSWORD, BOB_PASSWORD, Page, Visitor, audit_actions, refused_sign_ins, users_config,
    with_referrals,
};

#[tokio::test]
async fn with_no_users_the_console_says_how_to_add_one() {
    let app = spawn_app_with("").await;
    let mut visitor = Visitor::new(&app);
    let home = visitor.get("/console").await;
    assert_eq!(home.status, 303);
    let page = visitor.get(home.location()).await;
    assert_eq!(page.status, 200);
    assert!(
        page.html.contains("referral-relay hash-password"),
        "{}",
        page.html
    );
    assert!(page.html.contains("[console.users."));
    // Nothing else is reachable without a user.
    let list = visitor.get("/console/referrals").await;
    assert_eq!((list.status, list.location()), (303, "/console/login"));
    app.stop().await;
}

#[tokio::test]
async fn pages_carry_the_security_headers_and_nothing_is_cached() {
    let app = with_referrals(&users_config("")).await;
    let mut visitor = Visitor::new(&app);
    let login = visitor.get("/console/login").await;
    assert_eq!(visitor.sign_in("alice", ALICE_PASSWORD).await.status, 303);
    let list = visitor.get("/console/referrals").await;
    let css = visitor.get("/console/assets/console.css").await;
    let missing = visitor.get("/console/referrals/NO-SUCH-REF").await;
    for page in [&login, &list, &css, &missing] {
        let h = |name: &str| page.headers.get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(h("cache-control"), "no-store");
        assert_eq!(h("referrer-policy"), "no-referrer");
        let csp = h("content-security-policy");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("script-src"), "no script is allowed: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
    }
    assert_eq!(list.status, 200);
    assert!(
        list.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(missing.status, 404);
    assert!(missing.html.contains("no referral NO-SUCH-REF is stored"));
    // No inline script or style anywhere, no third-party address.
    for page in [&login, &list, &missing] {
        assert!(!page.html.contains("<script"), "{}", page.html);
        assert!(!page.html.contains("style="), "{}", page.html);
        assert!(!page.html.contains("http://") && !page.html.contains("https://"));
    }
    app.stop().await;
}

#[tokio::test]
async fn sign_in_sets_a_strict_cookie_and_checks_the_password_and_the_form_token() {
    let app = with_referrals(&users_config("[server]\nauth_failure_report_secs = 1")).await;
    let mut visitor = Visitor::new(&app);

    // Posted without the sign-in page's token: refused, whatever the password.
    let forged = visitor
        .post(
            "/console/login",
            &[("user", "alice"), ("password", ALICE_PASSWORD)],
        )
        .await;
    assert_eq!(forged.status, 403, "{}", forged.html);
    assert!(!visitor.cookies.contains_key("relay_console"));

    let wrong = visitor.sign_in("alice", "not-her-password").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.html.contains("do not match"));
    assert!(!visitor.cookies.contains_key("relay_console"));
    let unknown = visitor.sign_in("mallory", ALICE_PASSWORD).await;
    assert_eq!(unknown.status, 401);

    let ok = visitor.sign_in("alice", ALICE_PASSWORD).await;
    assert_eq!((ok.status, ok.location()), (303, "/console/referrals"));
    let session = visitor
        .set_cookies
        .iter()
        .find(|c| c.starts_with("relay_console="))
        .expect("a session cookie")
        .clone();
    assert!(session.contains("HttpOnly"), "{session}");
    assert!(session.contains("SameSite=Strict"), "{session}");
    assert!(session.contains("Path=/console"), "{session}");
    assert!(
        !session.contains("Secure"),
        "plain HTTP, not configured: {session}"
    );
    let list = visitor.get("/console/referrals").await;
    assert_eq!(list.status, 200);
    assert!(list.html.contains("TST-0011-AAAA") && list.html.contains("TST-0010-BBBB"));

    // Failures are reported like other refused logins: counted, one entry per kind and interval.
    let failures = refused_sign_ins(&app, 2).await;
    assert_eq!(
        failures["console:alice"],
        ["console sign-in: wrong password"]
    );
    // A name that is no user is not written down (it may be a password typed in the wrong box).
    assert_eq!(
        failures["console:(unknown user)"],
        ["console sign-in: unknown user"]
    );
    let actions = audit_actions(&app).await;
    assert!(actions.contains(&("CONSOLE_LOGIN".into(), "console:alice".into())));
    assert!(!actions.iter().any(|(_, actor)| actor.contains("mallory")));
    app.stop().await;
}

#[tokio::test]
async fn secure_cookies_are_marked_secure() {
    let app = spawn_app_with(&users_config("[console]\nsecure_cookies = true")).await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in("alice", ALICE_PASSWORD).await;
    assert!(
        visitor
            .set_cookies
            .iter()
            .any(|c| c.starts_with("relay_console=") && c.contains("Secure")),
        "{:?}",
        visitor.set_cookies
    );
    app.stop().await;
}

#[tokio::test]
async fn repeated_failed_sign_ins_are_slowed_down() {
    let app = spawn_app_with(&users_config("")).await;
    let mut visitor = Visitor::new(&app);
    for _ in 0..5 {
        assert_eq!(
            visitor.sign_in("alice", "guess-guess-guess").await.status,
            401
        );
    }
    let limited = visitor.sign_in("alice", ALICE_PASSWORD).await;
    assert_eq!(limited.status, 429, "even the right password waits");
    assert!(limited.html.contains("Too many failed sign-ins"));
    // Another user from the same address is not locked out by Alice's failures.
    assert_eq!(visitor.sign_in("bob", BOB_PASSWORD).await.status, 303);
    app.stop().await;
}

/// What an unauthenticated caller types as a user name is never kept: a long one is refused
/// before anything else, and names that are no user share one count (inventing names gains a
/// guesser nothing, and a flood of names cannot grow the process).
#[tokio::test]
async fn user_names_that_are_long_or_unknown_are_not_kept() {
    let app = spawn_app_with(&users_config("[server]\nauth_failure_report_secs = 1")).await;
    let mut visitor = Visitor::new(&app);
    let long = "a".repeat(65);
    let refused = visitor.sign_in(&long, "guess-guess-guess").await;
    assert_eq!(refused.status, 400);
    assert!(
        refused.html.contains("at most 64 characters"),
        "{}",
        refused.html
    );
    for n in 0..5 {
        let name = format!("nobody-{n}");
        assert_eq!(
            visitor.sign_in(&name, "guess-guess-guess").await.status,
            401
        );
    }
    let sixth = visitor.sign_in("nobody-else", "guess-guess-guess").await;
    assert_eq!(sixth.status, 429, "unknown names share one count");
    // The user the names were not is unaffected.
    assert_eq!(visitor.sign_in("alice", ALICE_PASSWORD).await.status, 303);
    // Reported: five wrong names, and the one refused for too many.
    let mut reasons = refused_sign_ins(&app, 6).await["console:(unknown user)"].clone();
    // One entry per reason and interval: the attempts may span two intervals.
    reasons.sort();
    reasons.dedup();
    assert_eq!(
        reasons,
        [
            "console sign-in: too many failed attempts",
            "console sign-in: unknown user"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn logout_needs_the_form_token_and_ends_the_session() {
    let app = with_referrals(&users_config("")).await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in("alice", ALICE_PASSWORD).await;
    let list = visitor.get("/console/referrals").await;
    let csrf = list.csrf();
    let session = visitor.cookies["relay_console"].clone();

    let forged = visitor.post("/console/logout", &[]).await;
    assert_eq!(forged.status, 403);
    let wrong = visitor
        .post("/console/logout", &[("csrf", "not-the-token")])
        .await;
    assert_eq!(wrong.status, 403);
    assert_eq!(
        visitor.get("/console/referrals").await.status,
        200,
        "still signed in"
    );

    let out = visitor.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!((out.status, out.location()), (303, "/console/login"));
    assert!(
        !visitor.cookies.contains_key("relay_console"),
        "cookie cleared"
    );
    // The old cookie, replayed, no longer opens anything.
    visitor.cookies.insert("relay_console".into(), session);
    let after = visitor.get("/console/referrals").await;
    assert_eq!((after.status, after.location()), (303, "/console/login"));
    let actions = audit_actions(&app).await;
    assert!(actions.contains(&("CONSOLE_LOGOUT".into(), "console:alice".into())));
    app.stop().await;
}

#[tokio::test]
async fn an_idle_session_goes_back_to_the_sign_in_page() {
    let app = with_referrals(&users_config(
        "[console]\nsession_idle_secs = 1\nsession_max_secs = 60",
    ))
    .await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in("alice", ALICE_PASSWORD).await;
    assert_eq!(visitor.get("/console/referrals").await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let expired = visitor.get("/console/referrals").await;
    assert_eq!(
        (expired.status, expired.location()),
        (303, "/console/login")
    );
    app.stop().await;
}

/// Behind a trusted proxy that received HTTPS, the session cookie is `Secure`; the same header
/// from anyone else changes nothing. A form that is not the page's form gets a console page.
#[tokio::test]
async fn cookies_are_secure_when_a_trusted_proxy_received_https_and_bad_forms_get_a_page() {
    for (trusted, secure) in [("[\"127.0.0.1/32\"]", true), ("[]", false)] {
        let app = spawn_app_with(&users_config(&format!(
            "[server]\ntrusted_proxies = {trusted}"
        )))
        .await;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let form = client
            .get(app.url("/console/login"))
            .header("x-forwarded-proto", "https")
            .send()
            .await
            .unwrap();
        let cookie = form.headers()[SET_COOKIE].to_str().unwrap().to_owned();
        assert_eq!(cookie.contains("Secure"), secure, "{cookie}");
        let token = cookie.split(';').next().unwrap().to_owned();
        let html = form.text().await.unwrap();
        let page = Page {
            status: 200,
            headers: HeaderMap::new(),
            html,
        };
        let signed_in = client
            .post(app.url("/console/login"))
            .header("x-forwarded-proto", "https")
            .header("cookie", token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                serde_urlencoded::to_string([
                    ("user", "alice"),
                    ("password", ALICE_PASSWORD),
                    ("csrf", page.csrf().as_str()),
                ])
                .unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(signed_in.status(), 303);
        let session = signed_in
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .find(|c| c.starts_with("relay_console="))
            .unwrap()
            .to_owned();
        assert_eq!(session.contains("Secure"), secure, "{session}");
        app.stop().await;
    }

    let app = spawn_app_with(&users_config("")).await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in("alice", ALICE_PASSWORD).await;
    let csrf = visitor.get("/console/referrals").await.csrf();
    // No status field at all.
    let bad = visitor
        .post(
            "/console/referrals/TST-0011-AAAA/status",
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        bad.html.contains("this form could not be read"),
        "{}",
        bad.html
    );
    app.stop().await;
}

/// One sign-in attempt from scratch (form, then post) by a fresh client; its status.
async fn attempt(base: String, user: &'static str, password: String) -> u16 {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = client
        .get(format!("{base}/console/login"))
        .send()
        .await
        .unwrap();
    let cookie = form.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let page = Page {
        status: 200,
        headers: HeaderMap::new(),
        html: form.text().await.unwrap(),
    };
    client
        .post(format!("{base}/console/login"))
        .header("cookie", cookie.split(';').next().unwrap())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("user", user),
                ("password", password.as_str()),
                ("csrf", page.csrf().as_str()),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Guesses sent all at once are limited too: each holds its place from the limiter's check
/// until its failure is counted, so no more than the limit get their password checked.
#[tokio::test]
async fn parallel_failed_sign_ins_are_limited_like_serial_ones() {
    let app = spawn_app_with(&users_config("")).await;
    let base = app.url("");
    let base = base.trim_end_matches('/').to_owned();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..30 {
        tasks.spawn(attempt(base.clone(), "alice", format!("guess-{n}-000000")));
    }
    let mut statuses = Vec::new();
    while let Some(status) = tasks.join_next().await {
        statuses.push(status.unwrap());
    }
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(checked + limited, 30, "{statuses:?}");
    assert_eq!(checked, 5, "{checked} guesses checked: {statuses:?}");
    app.stop().await;
}

/// A form whose body stalls is answered 408 after `server.body_timeout_secs`, as the API's
/// bodies are; a body over 1 MiB is 413; both as console pages.
#[tokio::test]
async fn a_stalled_or_oversized_form_body_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(&users_config("[server]\nbody_timeout_secs = 1")).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            b"POST /console/login HTTP/1.1\r\nhost: relay\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 1000\r\n\r\ncsrf=",
        )
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), stream.read(&mut answer))
        .await
        .expect("an answer, not a hang")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("text/html"), "{answer}");

    let mut visitor = Visitor::new(&app);
    let form = visitor.get("/console/login").await;
    let huge = "x".repeat(2 * 1024 * 1024);
    let big = visitor
        .post(
            "/console/login",
            &[
                ("csrf", form.csrf().as_str()),
                ("user", "alice"),
                ("password", &huge),
            ],
        )
        .await;
    assert_eq!(big.status, 413);
    assert!(big.html.contains("larger than the limit"), "{}", big.html);
    app.stop().await;
}

/// Addresses and methods the console does not serve, and query strings it cannot read, get
/// console pages, not the webhook's FHIR answers or plain text.
#[tokio::test]
async fn unknown_addresses_methods_and_queries_get_console_pages() {
    let app = spawn_app_with(&users_config("")).await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in("alice", ALICE_PASSWORD).await;
    for (path, status) in [
        ("/console/nothing-here", 404),
        ("/console/referrals/TST-0011-AAAA/versions/1", 404),
        ("/console/logout", 405),
        ("/console/backup/export.csv", 405),
        ("/console/referrals?service_id=A&service_id=B", 400),
        ("/console/referrals/%FF", 400),
    ] {
        let page = visitor.get(path).await;
        assert_eq!(page.status, status, "{path}: {}", page.html);
        assert!(
            page.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        assert!(
            page.headers.contains_key("content-security-policy"),
            "{path}"
        );
    }
    app.stop().await;
}

//! The service on PostgreSQL beyond the store contract: schema migrations, an unreachable or
//! silent database, the configured backend, earlier builds' data moved on upgrade, encryption
//! at rest, the operator commands, and readiness rows of replicas long gone.

use std::sync::Arc;
use std::time::Duration;

use referral_relay::domain::ReferralRef;
use referral_relay::store::{AuditStore, DeliveryStore, PgOptions, PgStore, StoreError};

use crate::support::postgres::{Blackhole, Schema};

#[tokio::test]
async fn migrations_apply_once_and_a_newer_schema_is_refused() {
    let schema = Schema::new();
    drop(schema.store().await);
    drop(schema.store().await);
    let client = schema.client().await;
    let applied: i64 = client
        .query_one("SELECT count(*) FROM relay_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        applied,
        i64::try_from(referral_relay::store::POSTGRES_MIGRATIONS.len()).unwrap()
    );
    client
        .execute(
            "INSERT INTO relay_schema_migrations (version, name) VALUES (9999, 'from the future')",
            &[],
        )
        .await
        .unwrap();
    let Err(e) = PgStore::connect(&schema.options()).await else {
        panic!("a schema newer than this build must be refused")
    };
    assert!(matches!(e, StoreError::Failed { .. }), "{e}");
    assert!(e.to_string().contains("9999"), "{e}");
    schema.drop_now().await;
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable() {
    let options =
        PgOptions::new("host=127.0.0.1 port=1 user=postgres dbname=test connect_timeout=5");
    let Err(e) = PgStore::connect(&options).await else {
        panic!("nothing listens on port 1")
    };
    assert!(matches!(e, StoreError::Unavailable { .. }), "{}", e.chain());
}

/// `[storage] backend = "postgres"` in the config file is what `serve` opens: a delivery posted
/// to it lands in that schema.
#[tokio::test]
async fn the_configured_postgres_backend_is_what_the_service_stores_in() {
    let schema = Schema::new();
    drop(schema.store().await); // creates the schema (and drops stale ones)
    let dir = tempfile::TempDir::new().unwrap();
    let config = crate::support::app::config(
        &format!(
            "[storage]\nbackend = \"postgres\"\nurl = \"{}\"\nschema = \"{}\"\nmax_connections = 4\n",
            crate::support::postgres::server_url(),
            schema.name
        ),
        dir.path(),
    );
    let app = referral_relay::app::Application::build(&config)
        .await
        .unwrap();
    let addr = app.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let answer = reqwest::Client::new()
        .post(format!("http://{addr}/fhir/default/$process-message"))
        .header("content-type", "application/fhir+json")
        .body(crate::support::fixtures::fixture(
            "v0.11-add-service-request.json",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let stored: i64 = schema
        .client()
        .await
        .query_one("SELECT count(*) FROM versions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    schema.drop_now().await;
}

/// A config naming PostgreSQL without a URL is refused with the key to fix.
#[test]
fn a_postgres_config_without_a_url_is_refused() {
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "[storage]\nbackend = \"postgres\"\n").unwrap();
    let e = referral_relay::config::Config::load_with_env(
        Some(&file),
        &referral_relay::config::Overrides::default(),
        std::iter::empty(),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("storage.url"), "{e:#}");
}

/// Updates an earlier build kept in the `updates` table join the queue when a replica
/// connects, under their ids and in their states; new ones are numbered after them.
#[tokio::test]
async fn an_earlier_builds_updates_move_into_the_queue() {
    use referral_relay::ig::OutboundEvent;
    use referral_relay::store::{
        OCEAN_QUEUE, OutboxStore, QueueStore, TaskState, UpdateKind, UpdateRecord, UpdateState,
    };

    let schema = Schema::new();
    // A destination's messages, queued by the build before, hold ids 1 to 6.
    let earlier = schema.store().await;
    let now = time::OffsetDateTime::now_utc();
    let pushed: Vec<referral_relay::store::QueuedMessage> = (1..=6)
        .map(|version| {
            referral_relay::store::QueuedMessage::pending(
                "emr",
                ReferralRef::parse("PG-DST").unwrap(),
                version,
                now,
            )
        })
        .collect();
    earlier.enqueue_messages(pushed).await.unwrap();
    drop(earlier);
    let client = schema.client().await;
    for (id, referral, state) in [
        (4_i64, "PG-OLD-A", UpdateState::Delivered),
        (5, "PG-OLD-B", UpdateState::Dead),
        (6, "PG-OLD-B", UpdateState::Pending),
        (9, "PG-OLD-C", UpdateState::Pending),
    ] {
        let mut update = UpdateRecord::pending(
            ReferralRef::parse(referral).unwrap(),
            "main".into(),
            UpdateKind::Message,
            OutboundEvent::SendCommunicationFromProvider,
            "{}".into(),
            time::OffsetDateTime::now_utc(),
        );
        update.id = u64::try_from(id).unwrap();
        update.state = state;
        client
            .execute(
                "INSERT INTO updates (id, referral, state, record) VALUES ($1, $2, $3, $4)",
                &[
                    &id,
                    &update.referral.as_str(),
                    &state.as_str(),
                    &serde_json::to_vec(&update).unwrap(),
                ],
            )
            .await
            .unwrap();
    }
    let store = schema.store().await;
    let left: i64 = client
        .query_one("SELECT count(*) FROM updates", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let moved: Vec<(u64, UpdateState)> =
        referral_relay::store::updates(store.as_ref(), None, 0, 10)
            .await
            .unwrap()
            .iter()
            .map(|u| (u.id, u.state))
            .collect();
    // Each keeps its id (the one the clinic knows).
    assert_eq!(
        moved,
        [
            (4, UpdateState::Delivered),
            (5, UpdateState::Dead),
            (6, UpdateState::Pending),
            (9, UpdateState::Pending)
        ]
    );
    // The dead letter still holds back its referral's later update.
    let now = time::OffsetDateTime::now_utc();
    let due = store
        .due_messages(OCEAN_QUEUE, now, Duration::from_secs(30), 10, &[])
        .await
        .unwrap();
    assert_eq!(due.iter().map(|m| m.id).collect::<Vec<_>>(), [9]);
    // The destination's messages moved above them, in their order.
    let pushed = store.queue_messages("emr", None, 0, 10).await.unwrap();
    let versions: Vec<u64> = pushed.iter().map(|m| m.version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
    assert!(pushed.iter().all(|m| m.id > 9), "{pushed:?}");
    let due = store
        .due_messages("emr", now, Duration::from_secs(30), 10, &[])
        .await
        .unwrap();
    assert_eq!(due.iter().map(|m| m.version).collect::<Vec<_>>(), [1]);
    let new = UpdateRecord::pending(
        ReferralRef::parse("PG-NEW").unwrap(),
        "main".into(),
        UpdateKind::Message,
        OutboundEvent::SendCommunicationFromProvider,
        "{}".into(),
        now,
    );
    let new = store
        .enqueue_update(new, TaskState::default(), None)
        .await
        .unwrap()
        .unwrap();
    assert!(new.id > pushed.last().unwrap().id);
    drop(store);
    schema.drop_now().await;
}

/// Every row of every table of the schema, as JSON text (`bytea` as `\x` and hex).
async fn dump(schema: &Schema) -> String {
    let client = schema.client().await;
    let mut all = String::new();
    for table in [
        "referrals",
        "events",
        "versions",
        "deliveries",
        "audit",
        "updates",
        "task_states",
        "relay_settings",
    ] {
        for row in client
            .query(&format!("SELECT row_to_json(t)::text FROM {table} t"), &[])
            .await
            .unwrap()
        {
            all.push_str(row.get::<_, &str>(0));
            all.push('\n');
        }
    }
    all
}

/// With `storage.encryption_key`, no patient detail is in any row (neither as text nor as the
/// hex of `bytea`), the API still reads every record and the exact bytes received; a replica
/// started without the key, or with another one, refuses to run; a rotated key still opens
/// what the old one sealed.
#[tokio::test]
async fn with_a_key_no_patient_detail_is_in_postgres_and_the_wrong_key_is_refused() {
    use crate::support::at_rest::{STORED, key, keyring, patient_details};
    use crate::support::fixtures::{V011_REFERRAL, fixture};

    let details = patient_details();
    let hex = |text: &str| -> String { text.bytes().map(|b| format!("{b:02x}")).collect() };
    let referral = ReferralRef::parse(V011_REFERRAL).unwrap();
    for encrypted in [false, true] {
        let schema = Schema::new();
        let keys = if encrypted { keyring(1, &[]) } else { None };
        let store = schema.store_with(keys.map(Arc::new)).await;
        let dir = tempfile::TempDir::new().unwrap();
        let toml = if encrypted {
            format!("[storage]\nencryption_key = \"{}\"\n", key(1))
        } else {
            String::new()
        };
        let config = crate::support::app::config(&toml, dir.path());
        let app = crate::support::app::spawn_with_store(&config, store).await;
        for name in STORED {
            assert_eq!(
                app.deliver("default", fixture(name)).await.status,
                200,
                "{name}"
            );
        }
        let record = app.store.referral(&referral).await.unwrap().unwrap();
        assert!(record.summary.patient_name.unwrap().contains("Testpatient"));
        let raw = app.store.payload(&referral, 1).await.unwrap().unwrap();
        assert_eq!(raw.as_ref(), fixture(STORED[0]).as_slice());
        assert!(!app.store.versions(&referral).await.unwrap().is_empty());
        app.stop().await;

        let rows = dump(&schema).await;
        let found: Vec<&String> = details
            .iter()
            .filter(|d| rows.contains(d.as_str()) || rows.contains(&hex(d)))
            .collect();
        if !encrypted {
            assert!(found.iter().any(|f| *f == "Testpatient"), "{found:?}");
            schema.drop_now().await;
            continue;
        }
        assert!(found.is_empty(), "in PostgreSQL despite the key: {found:?}");

        for (keys, says) in [
            (None, "set storage.encryption_key"),
            (keyring(2, &[]), "neither storage.encryption_key"),
        ] {
            let Err(e) = PgStore::connect(&PgOptions {
                keys: keys.map(Arc::new),
                ..schema.options()
            })
            .await
            else {
                panic!("opened a sealed store with the wrong key")
            };
            assert!(e.chain().contains(says), "{}", e.chain());
        }
        // Rotated: the new key seals, the previous one still opens.
        let rotated = schema.store_with(keyring(2, &[1]).map(Arc::new)).await;
        let raw = rotated.payload(&referral, 1).await.unwrap().unwrap();
        assert_eq!(raw.as_ref(), fixture(STORED[0]).as_slice());
        drop(rotated);
        schema.drop_now().await;
    }
}

/// `referral-relay migrate-schema` applies what the database lacks and says so, once; `audit
/// verify` reads the chain from PostgreSQL while the service could be running.
#[tokio::test]
async fn migrate_schema_and_audit_verify_work_on_postgres() {
    use crate::support::binary::run;

    let schema = Schema::new();
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        format!(
            "[storage]\nbackend = \"postgres\"\nurl = \"{}\"\nschema = \"{}\"\n",
            crate::support::postgres::server_url(),
            schema.name
        ),
    )
    .unwrap();
    let config = file.to_str().unwrap();
    for expected in ["applied now", "already applied"] {
        let output = run(&["migrate-schema", "--config", config], &[]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for (version, name, _) in referral_relay::store::POSTGRES_MIGRATIONS {
            let line = format!("{version:04} {name}: {expected}");
            assert!(stdout.contains(&line), "no {line:?} in {stdout}");
        }
    }
    let store = schema.store().await;
    for n in 0..3 {
        store
            .audit("TEST", "test", serde_json::json!({ "n": n }))
            .await
            .unwrap();
    }
    let output = run(&["audit", "verify", "--config", config], &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("audit log intact: 3 entries"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A broken link is found there too.
    schema
        .client()
        .await
        .batch_execute("UPDATE audit SET actor = 'someone else' WHERE seq = 2")
        .await
        .unwrap();
    let output = run(&["audit", "verify", "--config", config], &[]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("audit entry 2 is broken"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    drop(store);
    schema.drop_now().await;
}

/// The readiness check writes one row per replica process, and drops the rows of processes
/// gone for a day, so restarts do not grow the table.
#[tokio::test]
async fn readiness_rows_of_replicas_long_gone_are_dropped() {
    use referral_relay::store::MaintenanceStore;

    let schema = Schema::new();
    let store = schema.store().await;
    let client = schema.client().await;
    client
        .batch_execute(
            "INSERT INTO relay_ready (replica, at) VALUES
                 ('gone-long-ago', now() - interval '2 days'),
                 ('gone-just-now', now() - interval '1 hour')",
        )
        .await
        .unwrap();
    store.check_writable().await.unwrap();
    let mut replicas: Vec<String> = client
        .query("SELECT replica FROM relay_ready", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    replicas.sort();
    assert_eq!(replicas.len(), 2, "{replicas:?}");
    assert!(replicas.contains(&"gone-just-now".to_owned()));
    assert!(!replicas.contains(&"gone-long-ago".to_owned()));
    drop(store);
    schema.drop_now().await;
}

/// When PostgreSQL goes silent (connections open, nothing answered), deliveries, `/readyz` and
/// API reads are answered 503 within a bound instead of hanging (they hung for 47 s and 112 s),
/// and the relay recovers by itself once the database answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_database_is_answered_503_and_recovered_from_without_a_restart() {
    let upstream: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = Blackhole::start(upstream).await;
    let schema = Schema::new();
    let url = format!(
        "host=127.0.0.1 port={} user=postgres dbname=test",
        proxy.port
    );
    let store = PgStore::connect(&PgOptions {
        schema: Some(schema.name.clone()),
        ..PgOptions::new(url)
    })
    .await
    .unwrap();
    let dir = tempfile::TempDir::new().unwrap();
    let key = "silent-db-key-00000000000000000";
    let config =
        crate::support::app::config(&format!("[api.clients.emr]\nkey = \"{key}\"\n"), dir.path());
    let app = crate::support::app::spawn_with_store(&config, store).await;
    let fixture = crate::support::fixtures::fixture("v0.11-add-service-request.json");
    assert_eq!(app.deliver("default", fixture.clone()).await.status, 200);

    // Bounded well above the relay's own bound, far below the hangs seen.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap();
    let referral = app.url("/api/v1/referrals/TST-0011-AAAA");
    let status = |request: reqwest::RequestBuilder| async move {
        request.send().await.map(|r| r.status().as_u16())
    };
    proxy.forward(false);
    let mut other = serde_json::from_slice::<serde_json::Value>(&fixture).unwrap();
    other["id"] = "silent-db-second".into();
    let delivered = status(
        client
            .post(app.url("/fhir/default/$process-message"))
            .header("content-type", "application/fhir+json")
            .body(other.to_string()),
    )
    .await;
    assert_eq!(
        delivered.ok(),
        Some(503),
        "a delivery while the database is silent"
    );
    assert_eq!(status(client.get(app.url("/readyz"))).await.ok(), Some(503));
    assert_eq!(
        status(client.get(&referral).bearer_auth(key)).await.ok(),
        Some(503)
    );

    // The database answers again: no restart, the relay comes back by itself.
    proxy.forward(true);
    let mut recovered = false;
    for _ in 0..60 {
        let ready = status(client.get(app.url("/readyz"))).await.ok();
        let read = status(client.get(&referral).bearer_auth(key)).await.ok();
        if ready == Some(200) && read == Some(200) {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        recovered,
        "the relay did not recover once the database answered"
    );
    let stored = status(
        client
            .post(app.url("/fhir/default/$process-message"))
            .header("content-type", "application/fhir+json")
            .body(other.to_string()),
    )
    .await;
    assert_eq!(stored.ok(), Some(200));
    app.stop().await;
    schema.drop_now().await;
}

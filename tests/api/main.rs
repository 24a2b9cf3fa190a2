//! Integration tests: one binary, the real server on a loopback socket, the real store on disk.
//! The folders mirror `src/`:
//!
//! - `webhook/`: receiving deliveries: ingest, duplicates, refusals, the edge, fuzzing, and the
//!   inbound authentication schemes.
//! - `v1/`: the `/api/v1` API: referrals, versions, the feed, the CSV export, what Ocean's
//!   messages make of a referral.
//! - `outbound/`: the relay's requests to Ocean: status updates and document fetches.
//! - `patient_engagement/`: eForms completed by patients: Ocean's notifications, and each
//!   submission fetched, decrypted and read back.
//! - `ops/`: running the service: connections, metrics, HTTPS, the configuration commands, the
//!   binary's lifecycle, the source layout's rules.
//! - `console/`: the web console, over HTTP and in a real browser.
//! - `destinations/`: pushing versions to the clinic's systems.
//! - `store/`: the stores and the data dir: encryption at rest, audit, backups, crashes, a full
//!   disk, `migrate`, PostgreSQL and replicas.
//! - `screening/`: the CDS Hooks services that screen referrals before they are sent.
//! - `alerts/`: telling a person: alerts by e-mail through a real SMTP server.
//! - `support/`: what the tests share, `eventually` (the one polling helper) among it.
//!
//! Which tests run on PostgreSQL as well is decided by the folder they sit in,
//! [`ON_EITHER_BACKEND`]: `webhook/`, `v1/`, `outbound/`, `ops/`, `patient_engagement/` and `screening/` run on the embedded store,
//! then once more with the service on PostgreSQL, so a test put there is covered on both. The
//! other folders run once: `store/` and `destinations/` choose each test's store themselves, and
//! `console/` keeps to the embedded store (its password hashing would add a minute to the run).
//! A test that must run on the embedded store only belongs in `store/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod alerts;
mod console;
mod destinations;
mod ops;
mod outbound;
mod patient_engagement;
mod screening;
mod store;
mod support;
mod v1;
mod webhook;

/// The folders whose tests run on both backends: the service as it behaves on any store. Their
/// tests start it through `spawn_app*`, which puts it on a PostgreSQL schema of its own when
/// `RELAY_TEST_BACKEND=postgres` (the store contract as the service uses it); one there that
/// runs the real binary or touches no store simply runs twice the same.
/// [`the_service_tests_pass_on_postgres_too`] runs every test whose path starts with one of
/// these again, in this same binary. By hand:
/// `RELAY_TEST_BACKEND=postgres cargo test --test api webhook:: v1:: outbound:: ops::`.
const ON_EITHER_BACKEND: [&str; 6] = [
    "webhook::",
    "v1::",
    "outbound::",
    "ops::",
    "patient_engagement::",
    "screening::",
];

/// One `cargo test` covers both backends: this runs the tests of the folders of
/// [`ON_EITHER_BACKEND`] again, in this same test binary, with the service on PostgreSQL, and
/// fails with their output if any fails.
#[test]
fn the_service_tests_pass_on_postgres_too() {
    if support::postgres::postgres_backend() {
        return; // this is that run
    }
    // This very binary, even when a build has replaced its file since it started.
    let this = match std::path::Path::new("/proc/self/exe") {
        linux if linux.exists() => linux.to_path_buf(),
        _ => std::env::current_exe().unwrap(),
    };
    let list = std::process::Command::new(&this)
        .args(["--list", "--format", "terse"])
        .output()
        .unwrap();
    assert!(list.status.success(), "{list:?}");
    let tests: Vec<String> = String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .filter(|name| ON_EITHER_BACKEND.iter().any(|f| name.starts_with(f)))
        .map(str::to_owned)
        .collect();
    // A folder renamed or emptied would quietly leave the run.
    for folder in ON_EITHER_BACKEND {
        assert!(
            tests.iter().any(|t| t.starts_with(folder)),
            "no test in {folder}"
        );
    }
    let output = std::process::Command::new(&this)
        .env("RELAY_TEST_BACKEND", "postgres")
        .args(&tests)
        .args(["--exact", "--test-threads", "4"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the service tests failed on PostgreSQL:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // It ran every one of them.
    let passed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("test result: ok. "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    assert_eq!(
        passed,
        tests.len(),
        "not every test ran on PostgreSQL:\n{stdout}"
    );
}

//! Ingest benchmark: durable acknowledgements per second and latency of the real service,
//! beside a no-op axum handler (the HTTP ceiling of this machine) measured in the same run.
//!
//! `cargo bench --bench ingest` (set `BENCH_SECS` to change the time per measurement, default 5).
//! Each request posts the ~31 KB v0.11 fixture with a fresh Bundle id and referral reference,
//! so every one is a new stored, fsync'd version; the no-op handler reads the same bodies.
//!
//! Then: where the time goes (the FHIR layer alone, the store alone); the resident memory of
//! the real binary in its own process, idle and after `BENCH_MEMORY_REFERRALS` (100,000)
//! referrals; and ingest latency on a store already holding 1,000 referrals beside one holding
//! `BENCH_GROWTH_REFERRALS` (1,000,000; filled straight through the store, which takes a few
//! minutes and about 6 GB of disk); and the service on PostgreSQL (`postgres`).
//! Then ingest with one webhook destination beside none, and the lag to the destination
//! (`destinations`). `BENCH_SECTIONS=ingest,postgres,breakdown,memory,growth,destinations`
//! picks some.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/api/support/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;

#[path = "ingest/destinations.rs"]
mod destinations;

#[path = "../tests/api/support/binary.rs"]
#[allow(dead_code)]
mod binary;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use referral_relay::app::Application;
use referral_relay::config::{Config, Overrides};
use referral_relay::domain::{IntegrationName, ReferralRef};
use referral_relay::fhir::{Parsed, ParsedMessage, parse_message};
use referral_relay::store::{
    DeliveryStore, Keyring, NewDelivery, ServiceAssignment, SledStore, Store, delivery_key,
    sha256_hex,
};

const CONCURRENCY: [usize; 3] = [1, 16, 64];

/// The machine's CPU time (Linux `/proc/stat`, every core) and this process's (`/proc/self/stat`),
/// in clock ticks, to say what each acknowledgement cost: this process holds the service and
/// the load generator; on the PostgreSQL rows, nearly all the rest is the database's backends.
#[derive(Clone, Copy)]
struct Cpu {
    busy: u64,
    total: u64,
    this_process: u64,
}

impl Cpu {
    /// `None` where `/proc` is not there to read.
    fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        // cpu user nice system idle iowait irq softirq steal ...
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|t| t.parse().unwrap_or(0))
            .collect();
        let total: u64 = ticks.iter().sum();
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
        let after_name = own.rsplit_once(')')?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let this_process =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Self {
            busy: total - idle,
            total,
            this_process,
        })
    }

    /// CPU milliseconds per request since `self` (all cores, then this process's part), for
    /// `requests` requests over `wall`: tick counts turned into time through their share of
    /// every core's ticks, so the tick rate is not needed.
    fn per_request(self, requests: usize, wall: Duration) -> Option<(f64, f64)> {
        let now = Self::now()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let total = (now.total - self.total).max(1) as f64;
        let core_ms = wall.as_secs_f64() * 1000.0 * cores / total / requests.max(1) as f64;
        Some((
            (now.busy - self.busy) as f64 * core_ms,
            (now.this_process - self.this_process) as f64 * core_ms,
        ))
    }
}

/// `cpu 1.02 ms/ack (this process 0.55)`, or nothing where it cannot be measured.
fn cpu_note(before: Option<Cpu>, run: &Run) -> String {
    before
        .and_then(|b| b.per_request(run.requests, run.elapsed))
        .map_or_else(String::new, |(all, own)| {
            format!("  cpu {all:.2} ms/ack (this process {own:.2})")
        })
}

/// Result of one measurement.
struct Run {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index]
    }
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(bench(Duration::from_secs(seconds)));
}

async fn bench(duration: Duration) {
    let dir = tempfile::TempDir::new().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let (relay, _stop, _server) = serve(dir.path(), store).await;
    let noop = start_noop().await;
    let template = String::from_utf8(fixtures::fixture("v0.11-add-service-request.json")).unwrap();
    let size = template.len();
    let sequence = Arc::new(AtomicUsize::new(0));

    println!(
        "ingest: {size}-byte v0.11 Bundle, fresh Bundle id and referral per request, {}s per row",
        duration.as_secs()
    );
    println!(
        "{:<8} {:>11} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9}",
        "conc", "relay req/s", "p50 ms", "p99 ms", "noop req/s", "p50 ms", "p99 ms", "ratio"
    );
    if wanted("ingest") {
        for concurrency in CONCURRENCY {
            // Warm both up (connections, allocator) before measuring.
            load(
                noop,
                &template,
                &sequence,
                concurrency,
                Limit::For(Duration::from_millis(300)),
            )
            .await;
            load(
                relay,
                &template,
                &sequence,
                concurrency,
                Limit::For(Duration::from_millis(300)),
            )
            .await;
            let base = load(
                noop,
                &template,
                &sequence,
                concurrency,
                Limit::For(duration),
            )
            .await;
            let cpu = Cpu::now();
            let real = load(
                relay,
                &template,
                &sequence,
                concurrency,
                Limit::For(duration),
            )
            .await;
            println!(
                "{:<8} {:>11.0} {:>10.2} {:>10.2} {:>10.0} {:>9.2} {:>9.2} {:>8.2}x{}",
                concurrency,
                real.per_second(),
                ms(real.percentile(0.5)),
                ms(real.percentile(0.99)),
                base.per_second(),
                ms(base.percentile(0.5)),
                ms(base.percentile(0.99)),
                real.per_second() / base.per_second(),
                cpu_note(cpu, &real),
            );
        }
    }
    if wanted("postgres") {
        postgres(noop, &template, &sequence, duration).await;
    }
    if wanted("breakdown") {
        breakdown(&template, &sequence, duration).await;
    }
    if wanted("memory") {
        memory(&template, &sequence).await;
    }
    if wanted("growth") {
        growth(&template, &sequence, duration).await;
    }
    if wanted("destinations") {
        destinations::bench(&template, &sequence, duration).await;
    }
}

/// The same rows with the service on PostgreSQL (`BENCH_POSTGRES_URL`, by default this project's
/// machines' server; `synchronous_commit` as the server has it, on by default), in a schema of
/// its own dropped afterwards, beside the no-op handler again; then two replicas on that schema,
/// each with half the connections of the one (`BENCH_PG_CONNECTIONS`, 32 by default), each
/// taking half the load.
async fn postgres(
    noop: SocketAddr,
    template: &str,
    sequence: &Arc<AtomicUsize>,
    duration: Duration,
) {
    use referral_relay::store::{PgOptions, PgStore};
    let url = std::env::var("BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into());
    let schema = format!("relay_bench_{}", std::process::id());
    // Connections of the one replica (`BENCH_PG_CONNECTIONS`, default 32); each of the two
    // replicas gets half, so both rows use the database alike.
    let connections = env_count("BENCH_PG_CONNECTIONS", 32);
    let options = |max_connections| PgOptions {
        schema: Some(schema.clone()),
        max_connections,
        ..PgOptions::new(url.clone())
    };
    let dirs = [
        tempfile::TempDir::new().unwrap(),
        tempfile::TempDir::new().unwrap(),
        tempfile::TempDir::new().unwrap(),
    ];
    // The store alone first, for where the time goes: the database's share without HTTP or
    // parsing (its connections closed before the service's open).
    let Parsed::Message(message) = parse_message(template.as_bytes(), |_| true).unwrap() else {
        unreachable!("every event is accepted")
    };
    let alone: Arc<dyn Store> = PgStore::connect(&options(connections)).await.unwrap();
    store_rows(
        &alone,
        &message,
        template,
        sequence,
        duration,
        ", PostgreSQL",
    )
    .await;
    drop(alone);
    let one: Arc<dyn Store> = PgStore::connect(&options(connections)).await.unwrap();
    let (first, _stop_first, _first) = serve(dirs[0].path(), one).await;
    let mut pair = Vec::new();
    for dir in &dirs[1..] {
        let store: Arc<dyn Store> = PgStore::connect(&options(connections / 2)).await.unwrap();
        pair.push(serve(dir.path(), store).await);
    }
    println!(
        "postgres: the same Bundle, the service on PostgreSQL (one replica, then two on one schema)"
    );
    for concurrency in CONCURRENCY {
        load(
            first,
            template,
            sequence,
            concurrency,
            Limit::For(Duration::from_millis(300)),
        )
        .await;
        let base = load(noop, template, sequence, concurrency, Limit::For(duration)).await;
        let cpu = Cpu::now();
        let real = load(first, template, sequence, concurrency, Limit::For(duration)).await;
        println!(
            "pg 1    {:<4} {:>7.0} acks/s {:>8.2} p50 ms {:>8.2} p99 ms  noop {:>7.0} req/s  ratio {:.2}x{}",
            concurrency,
            real.per_second(),
            ms(real.percentile(0.5)),
            ms(real.percentile(0.99)),
            base.per_second(),
            real.per_second() / base.per_second(),
            cpu_note(cpu, &real),
        );
    }
    // Two replicas on one database, each half the load at concurrency 64.
    let cpu = Cpu::now();
    let (a, b) = tokio::join!(
        load(pair[0].0, template, sequence, 32, Limit::For(duration)),
        load(pair[1].0, template, sequence, 32, Limit::For(duration)),
    );
    let both = Run {
        requests: a.requests + b.requests,
        elapsed: a.elapsed.max(b.elapsed),
        latencies: Vec::new(),
    };
    println!(
        "pg 2    64   {:>7.0} acks/s (two replicas, {} connections each){}",
        both.per_second(),
        connections / 2,
        cpu_note(cpu, &both),
    );

    let (client, connection) = url
        .parse::<tokio_postgres::Config>()
        .unwrap()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

/// Whether `BENCH_SECTIONS` (a comma-separated list; all when unset) names `section`.
fn wanted(section: &str) -> bool {
    std::env::var("BENCH_SECTIONS").map_or(true, |s| s.split(',').any(|x| x.trim() == section))
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of the real binary in its own process, on the default config (so the
/// default page cache): idle on an empty store, then after referrals were posted to it.
async fn memory(template: &str, sequence: &Arc<AtomicUsize>) {
    let referrals = env_count("BENCH_MEMORY_REFERRALS", 100_000);
    let dir = tempfile::TempDir::new().unwrap();
    let mut relay = binary::launch(
        dir.path(),
        None,
        &[],
        &[
            ("RUST_LOG", "warn,referral_relay=info"),
            ("RELAY__SERVER__MAX_CONNECTIONS_PER_CLIENT", "256"),
        ],
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = relay.child.id();
    let idle = resident_mib(pid);
    let run = load(
        relay.addr,
        template,
        sequence,
        64,
        Limit::Requests(referrals),
    )
    .await;
    let filled = resident_mib(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = resident_mib(pid);
    println!(
        "memory: real binary, default config: {idle:.0} MiB resident idle on an empty store; \
         {filled:.0} MiB after {referrals} referrals ({:.0} acks/s from this separate process at \
         concurrency 64, p50 {:.2} ms, p99 {:.2} ms), {settled:.0} MiB 2 s later",
        run.per_second(),
        ms(run.percentile(0.5)),
        ms(run.percentile(0.99)),
    );
    assert!(
        binary::terminate(&mut relay),
        "the relay did not stop cleanly"
    );
}

/// `VmRSS` of process `pid`, in MiB.
fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

/// Ingest latency at concurrency 1 and 64 on a store already holding 1,000 referrals, and on
/// one holding `BENCH_GROWTH_REFERRALS`.
async fn growth(template: &str, sequence: &Arc<AtomicUsize>, duration: Duration) {
    let large = env_count("BENCH_GROWTH_REFERRALS", 1_000_000);
    let Parsed::Message(message) = parse_message(template.as_bytes(), |_| true).unwrap() else {
        unreachable!("every event is accepted")
    };
    let mut p99s = Vec::new();
    for stored in [1_000, large] {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let started = Instant::now();
        fill(&store, &message, template, sequence, stored).await;
        let filled_in = started.elapsed();
        let (addr, stop, server) = serve(dir.path(), Arc::clone(&store) as Arc<dyn Store>).await;
        for concurrency in [1, 64] {
            load(
                addr,
                template,
                sequence,
                concurrency,
                Limit::For(Duration::from_millis(300)),
            )
            .await;
            let run = load(addr, template, sequence, concurrency, Limit::For(duration)).await;
            println!(
                "growth: {stored:>9} stored referrals (filled in {:.0} s): concurrency {concurrency:>2}: \
                 {:.0} acks/s, p50 {:.2} ms, p99 {:.2} ms",
                filled_in.as_secs_f64(),
                run.per_second(),
                ms(run.percentile(0.5)),
                ms(run.percentile(0.99)),
            );
            if concurrency == 64 {
                p99s.push(run.percentile(0.99));
            }
        }
        let _ = stop.send(());
        server.await.unwrap();
    }
    println!(
        "growth: p99 at concurrency 64 with {large} stored is {:.2}x the figure with 1000",
        p99s[1].as_secs_f64() / p99s[0].as_secs_f64()
    );
}

/// Stores `count` fresh referrals straight into `store`, 256 at a time.
async fn fill(
    store: &Arc<SledStore>,
    message: &ParsedMessage,
    template: &str,
    sequence: &Arc<AtomicUsize>,
    count: usize,
) {
    let left = Arc::new(AtomicUsize::new(count));
    let mut tasks = Vec::new();
    for _ in 0..256 {
        let (store, left, sequence, message, template) = (
            Arc::clone(store),
            Arc::clone(&left),
            Arc::clone(sequence),
            message.clone(),
            template.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let n = sequence.fetch_add(1, Ordering::Relaxed);
                let delivery = new_delivery(&message, &template, &format!("FILL-{n}"));
                store.put_delivery(delivery).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Where the time goes: the FHIR layer alone, and the store alone (no HTTP), in the same run.
async fn breakdown(template: &str, sequence: &Arc<AtomicUsize>, duration: Duration) {
    let started = Instant::now();
    let mut parsed = 0usize;
    while started.elapsed() < duration {
        let n = sequence.fetch_add(1, Ordering::Relaxed);
        let body = fixtures::unique_v011(template, &format!("PARSE-{n}"), &format!("parse-{n}"));
        std::hint::black_box(parse_message(&body, |_| true).unwrap());
        parsed += 1;
    }
    println!(
        "parse:  {:.0} Bundles/s through the fhir layer alone (one core)",
        parsed as f64 / started.elapsed().as_secs_f64()
    );

    let Parsed::Message(message) = parse_message(template.as_bytes(), |_| true).unwrap() else {
        unreachable!("every event is accepted")
    };
    // Unencrypted, then with storage.encryption_key (AES-256-GCM over each patient record).
    for sealed in [false, true] {
        let keys = sealed.then(|| Keyring::new(&[7; 32], &[]).unwrap());
        let dir = tempfile::TempDir::new().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open_with(dir.path(), keys).unwrap());
        let label = if sealed { ", encrypted" } else { "" };
        store_rows(&store, &message, template, sequence, duration, label).await;
    }
}

/// Durable puts per second straight into `store`, at concurrency 1 and 64; `label` ends the
/// row ("", ", encrypted", ", PostgreSQL").
async fn store_rows(
    store: &Arc<dyn Store>,
    message: &ParsedMessage,
    template: &str,
    sequence: &Arc<AtomicUsize>,
    duration: Duration,
    label: &str,
) {
    for concurrency in [1, 64] {
        let stored = Arc::new(AtomicUsize::new(0));
        let cpu = Cpu::now();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (store, stored, sequence, message) = (
                Arc::clone(store),
                Arc::clone(&stored),
                Arc::clone(sequence),
                message.clone(),
            );
            let template = template.to_owned();
            tasks.push(tokio::spawn(async move {
                while started.elapsed() < duration {
                    let n = sequence.fetch_add(1, Ordering::Relaxed);
                    let delivery = new_delivery(&message, &template, &format!("STORE-{n}"));
                    store.put_delivery(delivery).await.unwrap();
                    stored.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let run = Run {
            requests: stored.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
            latencies: Vec::new(),
        };
        println!(
            "store:  {:.0} durable puts/s at concurrency {concurrency} (no HTTP, no parsing){label}{}",
            run.per_second(),
            cpu_note(cpu, &run).replace("ack", "put"),
        );
    }
}

/// A fresh delivery of `template` as referral and Bundle `name`, as the webhook would store it.
fn new_delivery(message: &ParsedMessage, template: &str, name: &str) -> NewDelivery {
    let raw = fixtures::unique_v011(template, name, &name.to_lowercase());
    let integration = IntegrationName::parse("default").unwrap();
    NewDelivery {
        sha256: sha256_hex(&raw),
        dedup_key: delivery_key(&integration, Some(name), &sha256_hex(&raw)),
        integration,
        shares_with: Vec::new(),
        referral: ReferralRef::parse(name).unwrap(),
        service: ServiceAssignment::Unassigned,
        event: message.event.clone(),
        message_header_id: message.message_header_id.clone(),
        bundle_id: Some(name.to_owned()),
        bundle_timestamp: message.timestamp.clone(),
        sent_at: message.sent_at,
        raw: raw.into(),
        summary: message.summary.clone(),
        problems: Vec::new(),
        received_at: time::OffsetDateTime::now_utc(),
        fetch_documents: false,
        routes: Default::default(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The real service on `store` (in `data_dir`), on 127.0.0.1:0; stopped by the sender, and
/// finished when the task ends.
async fn serve(
    data_dir: &std::path::Path,
    store: Arc<dyn Store>,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    serve_with(data_dir, store, |_| {}).await
}

/// As [`serve`], with the configuration changed by `configure` first.
async fn serve_with(
    data_dir: &std::path::Path,
    store: Arc<dyn Store>,
    configure: impl FnOnce(&mut Config),
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(data_dir.to_path_buf()),
        ..Overrides::default()
    };
    let mut config = Config::load_with_env(None, &overrides, std::iter::empty()).unwrap();
    // The load comes from one address, 64 connections at once.
    config.server.max_connections_per_client = 256;
    configure(&mut config);
    let app = Application::build_with_store(&config, store).await.unwrap();
    let addr = app.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.run_until(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (addr, stop, server)
}

/// An axum handler that reads the body and answers 200: the ceiling for HTTP on this machine.
async fn start_noop() -> SocketAddr {
    async fn handler(body: Bytes) -> &'static str {
        std::hint::black_box(body.len());
        "{}"
    }
    let router = Router::new()
        .route("/fhir/default/$process-message", post(handler))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024 * 1024));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// How long a load runs.
#[derive(Clone, Copy)]
enum Limit {
    For(Duration),
    Requests(usize),
}

/// `concurrency` clients posting fresh deliveries until `limit`; every answer must be 200.
async fn load(
    addr: SocketAddr,
    template: &str,
    sequence: &Arc<AtomicUsize>,
    concurrency: usize,
    limit: Limit,
) -> Run {
    let issued = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/fhir/default/$process-message");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, template, sequence, issued) = (
            client.clone(),
            url.clone(),
            template.to_owned(),
            Arc::clone(sequence),
            Arc::clone(&issued),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while match limit {
                Limit::For(duration) => started.elapsed() < duration,
                Limit::Requests(n) => issued.fetch_add(1, Ordering::Relaxed) < n,
            } {
                let n = sequence.fetch_add(1, Ordering::Relaxed);
                let body =
                    fixtures::unique_v011(&template, &format!("BENCH-{n}"), &format!("bench-{n}"));
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/fhir+json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status().as_u16(), 200);
                response.bytes().await.unwrap();
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    Run {
        requests: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    }
}

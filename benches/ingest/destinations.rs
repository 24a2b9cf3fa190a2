//! The `destinations` section of the ingest benchmark: ingest with one webhook destination
//! attached beside the same service with none, measured in the same run (the goal: at least
//! 0.8 times the rate), then the lag from a delivery's acknowledgement to its version's arrival
//! at the destination, at a steady rate (`BENCH_DESTINATION_RATE`, 200 deliveries/s).
//!
//! The receiver is a fast axum handler on loopback that answers 200 and notes when each
//! referral's version arrived (it does not check signatures: the tests do that with the
//! reference library).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use referral_relay::config::DestinationConfig;
use referral_relay::store::{SledStore, Store};

use super::{Limit, load, ms, serve_with};

/// When each referral's first message arrived.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

async fn start_receiver() -> (SocketAddr, Arrivals) {
    async fn handler(State(arrivals): State<Arrivals>, body: Bytes) -> &'static str {
        let at = Instant::now();
        // The envelope's first `referral` is its `data.referral`.
        let text = String::from_utf8_lossy(&body);
        if let Some(start) = text.find("\"referral\":\"") {
            let rest = &text[start + 12..];
            if let Some(end) = rest.find('"') {
                arrivals
                    .lock()
                    .unwrap()
                    .entry(rest[..end].to_owned())
                    .or_insert(at);
            }
        }
        "{}"
    }
    let arrivals = Arrivals::default();
    let router = Router::new()
        .route("/hook", post(handler))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024 * 1024))
        .with_state(Arc::clone(&arrivals));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (addr, arrivals)
}

fn destination(receiver: SocketAddr) -> DestinationConfig {
    toml::from_str(&format!(
        r#"
kind = "webhook"
url = "http://{receiver}/hook"
secret = "whsec_YmVuY2gtc2VjcmV0LWJlbmNoLXNlY3JldC1iZW5jaCEhIQ=="
concurrency = 16
"#
    ))
    .unwrap()
}

/// The service on a fresh sled store, with the destination when given.
async fn relay(
    destination: Option<DestinationConfig>,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
    tempfile::TempDir,
) {
    let dir = tempfile::TempDir::new().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let (addr, stop, server) = serve_with(dir.path(), store, |config| {
        if let Some(destination) = destination {
            config.destinations.insert("emr".into(), destination);
        }
    })
    .await;
    (addr, stop, server, dir)
}

pub async fn bench(template: &str, sequence: &Arc<AtomicUsize>, duration: Duration) {
    let (receiver, arrivals) = start_receiver().await;
    println!();
    println!("destinations: ingest with one webhook destination beside none (same run)");
    println!(
        "{:<8} {:>12} {:>10} {:>14} {:>10} {:>8}",
        "conc", "none req/s", "p99 ms", "webhook req/s", "p99 ms", "ratio"
    );
    for concurrency in [16, 64] {
        let (bare, stop_bare, bare_server, _bare_dir) = relay(None).await;
        let (with, stop_with, with_server, _with_dir) = relay(Some(destination(receiver))).await;
        let warm = Limit::For(Duration::from_millis(300));
        load(bare, template, sequence, concurrency, warm).await;
        load(with, template, sequence, concurrency, warm).await;
        let base = load(bare, template, sequence, concurrency, Limit::For(duration)).await;
        let real = load(with, template, sequence, concurrency, Limit::For(duration)).await;
        println!(
            "{:<8} {:>12.0} {:>10.2} {:>14.0} {:>10.2} {:>7.2}x",
            concurrency,
            base.per_second(),
            ms(base.percentile(0.99)),
            real.per_second(),
            ms(real.percentile(0.99)),
            real.per_second() / base.per_second(),
        );
        for (stop, server) in [(stop_bare, bare_server), (stop_with, with_server)] {
            let _ = stop.send(());
            server.await.unwrap();
        }
    }

    let rate: u64 = std::env::var("BENCH_DESTINATION_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let (with, stop, server, _dir) = relay(Some(destination(receiver))).await;
    arrivals.lock().unwrap().clear();
    let client = reqwest::Client::new();
    let url = format!("http://{with}/fhir/default/$process-message");
    let acks: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / u32::try_from(rate).unwrap());
    let started = Instant::now();
    let mut sent = Vec::new();
    while started.elapsed() < duration {
        ticker.tick().await;
        let n = sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let referral = format!("LAG-{n}");
        let body = super::fixtures::unique_v011(template, &referral, &format!("lag-{n}"));
        let (client, url, acks) = (client.clone(), url.clone(), Arc::clone(&acks));
        sent.push(tokio::spawn(async move {
            let response = client
                .post(&url)
                .header("content-type", "application/fhir+json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 200);
            response.bytes().await.unwrap();
            acks.lock().unwrap().insert(referral, Instant::now());
        }));
    }
    for task in sent {
        task.await.unwrap();
    }
    let wanted = acks.lock().unwrap().len();
    let waited = Instant::now();
    while arrivals.lock().unwrap().len() < wanted && waited.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acks = acks.lock().unwrap().clone();
    let arrivals = arrivals.lock().unwrap().clone();
    let mut lags: Vec<Duration> = acks
        .iter()
        .filter_map(|(referral, acked)| {
            arrivals
                .get(referral)
                .map(|arrived| arrived.saturating_duration_since(*acked))
        })
        .collect();
    lags.sort();
    let at = |q: f64| lags[((lags.len() as f64 * q) as usize).min(lags.len() - 1)];
    println!(
        "lag at {rate} deliveries/s for {}s: {} of {wanted} arrived; ack to arrival p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (goal: p99 <= 250 ms)",
        duration.as_secs(),
        lags.len(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(*lags.last().unwrap()),
    );
    let _ = stop.send(());
    server.await.unwrap();
}

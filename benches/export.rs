//! Export benchmark: CSV rows per second and peak memory for a store of 100 000 referrals.
//!
//! `cargo bench --bench export` (`BENCH_REFERRALS` changes the size). The store is filled with
//! distinct referrals first; the export then writes every row to a sink, exactly as
//! `referral-relay export` does, and the peak resident memory during the export is read from
//! the kernel (VmHWM, reset just before the export starts).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/api/support/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use referral_relay::domain::{IntegrationName, ReferralRef};
use referral_relay::export::{ExportRequest, WriterSink, export};
use referral_relay::fhir::{Parsed, parse_message};
use referral_relay::store::{
    DeliveryStore, NewDelivery, ServiceAssignment, SledStore, delivery_key, sha256_hex,
};

/// A kernel memory figure of this process, in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let count: usize = std::env::var("BENCH_REFERRALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let template =
            String::from_utf8(fixtures::fixture("v0.11-add-service-request.json")).unwrap();
        let Parsed::Message(message) = parse_message(template.as_bytes(), |_| true).unwrap()
        else {
            unreachable!("every event is accepted")
        };
        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (store, next, message, template) = (
                Arc::clone(&store),
                Arc::clone(&next),
                (*message).clone(),
                template.clone(),
            );
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return;
                    }
                    let name = format!("EXPORT-{n:07}");
                    let raw = fixtures::unique_v011(&template, &name, &name);
                    let integration = IntegrationName::parse("default").unwrap();
                    let sha256 = sha256_hex(&raw);
                    store
                        .put_delivery(NewDelivery {
                            dedup_key: delivery_key(&integration, Some(&name), &sha256),
                            sha256,
                            integration,
                            shares_with: Vec::new(),
                            referral: ReferralRef::parse(&name).unwrap(),
                            service: ServiceAssignment::Unassigned,
                            event: message.event.clone(),
                            message_header_id: None,
                            bundle_id: Some(name.clone()),
                            bundle_timestamp: None,
                            sent_at: None,
                            raw: raw.into(),
                            summary: message.summary.clone(),
                            problems: Vec::new(),
                            received_at: time::OffsetDateTime::now_utc(),
                            fetch_documents: false,
                            routes: Default::default(),
                        })
                        .await
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        println!(
            "export: filled a store with {count} referrals in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        let rss_before = status_kib("VmRSS:");
        // Resets the peak (VmHWM) to the current size, so the figure below is the export's.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let started = Instant::now();
        let mut sink = WriterSink::new(std::io::sink(), false);
        let request = ExportRequest {
            actor: "bench".into(),
            ..ExportRequest::default()
        };
        let rows = export(store.as_ref(), &request, |_| true, &mut sink)
            .await
            .unwrap();
        let elapsed = started.elapsed().as_secs_f64();
        let peak = status_kib("VmHWM:");
        println!(
            "export: {rows} rows in {elapsed:.2} s = {:.0} rows/s; resident memory {} MiB before, peak {} MiB during (+{} MiB)",
            rows as f64 / elapsed,
            rss_before / 1024,
            peak / 1024,
            peak.saturating_sub(rss_before) / 1024
        );
    });
}

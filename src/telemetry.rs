//! Logging and metrics.
//!
//! Logs go to stderr so command output on stdout stays clean: readable text on a terminal, or
//! one JSON object per line. Every line written while a request is handled carries its request
//! id (the `request` span). Never log a request body, a header value, a secret or a patient
//! field: FHIR payloads are PHI.
//!
//! Metrics are kept per application in a Prometheus recorder of its own (not the process-wide
//! one), so several instances in one process (the tests) do not mix their numbers. Every metric
//! name is defined here, once.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use axum::http;
use metrics::{Label, with_local_recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides `default_level` when set. Calling it
/// twice is harmless (the second call changes nothing).
pub fn init(default_level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        // The current span (with the request id) on every line, and the span list so fields
        // of outer spans are kept too.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}

/// Buckets of the ingest latency histogram, in seconds: group commit puts a durable ack in
/// the low milliseconds, and anything near a second means the disk is struggling.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of the ack-to-delivered lag of destinations, in seconds: from a sub-second push to
/// a receiver that was down for hours.
const LAG_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0, 3600.0, 86_400.0,
];

const HTTP_REQUESTS: &str = "relay_http_requests_total";
const INGEST_SECONDS: &str = "relay_ingest_duration_seconds";
const DELIVERIES: &str = "relay_deliveries_total";
const AUTH_FAILURES: &str = "relay_auth_failures_total";
const DOCUMENTS_NOT_QUEUED: &str = "relay_documents_not_queued_total";
const OUTBOX_PENDING: &str = "relay_outbox_pending";
const OUTBOX_OLDEST: &str = "relay_outbox_oldest_pending_age_seconds";
const DEAD_LETTERS: &str = "relay_outbox_dead_letters";
const OUTBOX_SENDS: &str = "relay_outbox_sends_total";
const TOKEN_FETCHES: &str = "relay_ocean_token_fetches_total";
const DESTINATION_PENDING: &str = "relay_destination_pending";
const DESTINATION_DEAD: &str = "relay_destination_dead_letters";
const DESTINATION_OLDEST: &str = "relay_destination_oldest_pending_age_seconds";
const DESTINATION_SENDS: &str = "relay_destination_sends_total";
const DESTINATION_LAG: &str = "relay_destination_lag_seconds";
const EXPORT_ROWS: &str = "relay_export_rows_total";
const CONNECTIONS_OPEN: &str = "relay_connections_open";
const CONNECTIONS_SHED: &str = "relay_connections_shed_total";
const CONNECTION_TIMEOUTS: &str = "relay_connection_timeouts_total";
const UNAUTHENTICATED_BYTES: &str = "relay_unauthenticated_body_bytes";
const TLS_CERT_EXPIRY: &str = "relay_tls_cert_expiry_seconds";
const TLS_RELOAD_FAILURES: &str = "relay_tls_reload_failures_total";
const TLS_HANDSHAKE_FAILURES: &str = "relay_tls_handshake_failures_total";
const CDS_ANSWERS: &str = "relay_cds_hooks_answers_total";
const CDS_CARDS: &str = "relay_cds_hooks_cards_total";

/// The application's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(INGEST_SECONDS.into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(DESTINATION_LAG.into()), LAG_BUCKETS)
            })
            // Refused only for an empty bucket list; without buckets it renders a summary.
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let metrics = Self {
            recorder: Arc::new(recorder),
        };
        metrics.with(|| {
            use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
            describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by matched route and status");
            describe_histogram!(
                INGEST_SECONDS,
                Unit::Seconds,
                "Time from a webhook request's arrival to its answer (a stored delivery is on disk by then)"
            );
            describe_counter!(
                DELIVERIES,
                "Webhook deliveries by outcome: stored, duplicate, ignored, rejected (with reason)"
            );
            describe_counter!(
                AUTH_FAILURES,
                "Refused webhook and token-endpoint callers, by scheme"
            );
            describe_counter!(
                DOCUMENTS_NOT_QUEUED,
                "Attachments beyond documents.max_per_delivery in one message, not fetched"
            );
            describe_gauge!(OUTBOX_PENDING, "Updates for Ocean waiting to be sent");
            describe_gauge!(
                OUTBOX_OLDEST,
                Unit::Seconds,
                "Age of the oldest update still waiting to be sent (0 when none)"
            );
            describe_gauge!(DEAD_LETTERS, "Updates Ocean refused or that ran out of retry time");
            describe_counter!(OUTBOX_SENDS, "Attempts to send an update to Ocean, by site and result");
            describe_gauge!(DESTINATION_PENDING, "Versions queued for a destination, not yet sent");
            describe_gauge!(DESTINATION_DEAD, "Versions a destination refused or that ran out of retry time");
            describe_gauge!(
                DESTINATION_OLDEST,
                Unit::Seconds,
                "Age of the oldest version still queued for a destination (0 when none)"
            );
            describe_counter!(
                DESTINATION_SENDS,
                "Attempts to send to a destination, by result (delivered, retry, dead)"
            );
            describe_histogram!(
                DESTINATION_LAG,
                Unit::Seconds,
                "Time from a delivery's acknowledgement to its version's delivery to a destination"
            );
            describe_counter!(TOKEN_FETCHES, "OAuth2 tokens fetched from Ocean, by site and result");
            describe_counter!(EXPORT_ROWS, "Referrals written to CSV exports");
            describe_counter!(
                CDS_ANSWERS,
                "CDS Hooks screening calls answered, by service and outcome (cards, no_card, other_listing, timeout, invalid; unauthorized and unavailable under service any)"
            );
            describe_counter!(CDS_CARDS, "Screening cards given, by service, rule and indicator");
            describe_gauge!(CONNECTIONS_OPEN, "Open client connections");
            describe_counter!(
                CONNECTIONS_SHED,
                "Connections over server.max_connections or max_connections_per_client, answered 503 and closed"
            );
            describe_counter!(
                CONNECTION_TIMEOUTS,
                "Connections closed by a timeout: tls_handshake, header_read, keep_alive or send"
            );
            describe_gauge!(
                UNAUTHENTICATED_BYTES,
                Unit::Bytes,
                "Bytes of request bodies held before their sender is authenticated"
            );
            describe_gauge!(
                TLS_CERT_EXPIRY,
                Unit::Seconds,
                "When the certificate the listener serves expires, in seconds since the Unix epoch (HTTPS only)"
            );
            describe_counter!(
                TLS_RELOAD_FAILURES,
                "Reloads of server.tls files that were not taken (the previous certificate stays)"
            );
            describe_counter!(
                TLS_HANDSHAKE_FAILURES,
                "TLS handshakes that failed, by kind: client_certificate, incompatible, closed, malformed"
            );
            metrics::counter!(EXPORT_ROWS).increment(0);
            metrics::gauge!(CONNECTIONS_OPEN).set(0.0);
            metrics::counter!(CONNECTIONS_SHED).increment(0);
        });
        metrics
    }

    /// Shows the series of a configured integration at zero from the start, so alerts on
    /// their rates work before the first event (export rows start at zero in [`Metrics::new`]).
    pub fn register_integration(&self, integration: &str, scheme: &'static str) {
        self.with(|| {
            for outcome in ["stored", "duplicate", "ignored"] {
                metrics::counter!(DELIVERIES, "integration" => integration.to_owned(), "outcome" => outcome)
                    .increment(0);
            }
            metrics::counter!(AUTH_FAILURES, "integration" => integration.to_owned(), "scheme" => scheme)
                .increment(0);
        });
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        with_local_recorder(self.recorder.as_ref(), f)
    }

    /// One answered HTTP request; `route` is the matched route template, never the raw path.
    /// Methods outside the standard ones are counted as `other`, so a caller cannot mint labels.
    pub fn http_request(&self, method: &http::Method, route: &str, status: u16) {
        let method = match *method {
            http::Method::GET => "GET",
            http::Method::POST => "POST",
            http::Method::PUT => "PUT",
            http::Method::DELETE => "DELETE",
            http::Method::HEAD => "HEAD",
            http::Method::OPTIONS => "OPTIONS",
            http::Method::PATCH => "PATCH",
            _ => "other",
        };
        let labels = [
            Label::new("method", method),
            Label::new("route", route.to_owned()),
            Label::new("status", status.to_string()),
        ];
        self.with(|| metrics::counter!(HTTP_REQUESTS, labels.iter()).increment(1));
    }

    /// One webhook request, from arrival to answer.
    pub fn ingest_latency(&self, integration: &str, elapsed: Duration) {
        let integration = integration.to_owned();
        self.with(|| {
            metrics::histogram!(INGEST_SECONDS, "integration" => integration)
                .record(elapsed.as_secs_f64());
        });
    }

    /// What the webhook did with one delivery. `reason` says why a rejected one was refused.
    pub fn delivery(&self, integration: &str, outcome: &'static str, reason: Option<&'static str>) {
        let mut labels = vec![
            Label::new("integration", integration.to_owned()),
            Label::new("outcome", outcome),
        ];
        if let Some(reason) = reason {
            labels.push(Label::new("reason", reason));
        }
        self.with(|| metrics::counter!(DELIVERIES, labels.iter()).increment(1));
    }

    /// `count` attachments of one message beyond `documents.max_per_delivery`, not queued.
    pub fn documents_not_queued(&self, integration: &str, count: usize) {
        let integration = integration.to_owned();
        self.with(|| {
            metrics::counter!(DOCUMENTS_NOT_QUEUED, "integration" => integration)
                .increment(count as u64);
        });
    }

    /// A refused caller of an integration's webhook or of the token endpoint.
    pub fn auth_failure(&self, integration: &str, scheme: &'static str) {
        let integration = integration.to_owned();
        self.with(|| {
            metrics::counter!(AUTH_FAILURES, "integration" => integration, "scheme" => scheme)
                .increment(1);
        });
    }

    /// The state of the outbox, read from the store when metrics are scraped.
    pub fn outbox(&self, pending: usize, dead: usize, oldest_pending: Duration) {
        self.with(|| {
            metrics::gauge!(OUTBOX_PENDING).set(pending as f64);
            metrics::gauge!(DEAD_LETTERS).set(dead as f64);
            metrics::gauge!(OUTBOX_OLDEST).set(oldest_pending.as_secs_f64());
        });
    }

    /// One attempt to send an update: `delivered`, `retry` or `dead`.
    pub fn outbox_send(&self, site: &str, result: &'static str) {
        let site = site.to_owned();
        self.with(|| {
            metrics::counter!(OUTBOX_SENDS, "site" => site, "result" => result).increment(1);
        });
    }

    /// One attempt to send to destination `name`: `delivered`, `retry` or `dead`.
    pub fn destination_send(&self, name: &str, result: &'static str) {
        let name = name.to_owned();
        self.with(|| {
            metrics::counter!(DESTINATION_SENDS, "destination" => name, "result" => result)
                .increment(1);
        });
    }

    /// A version delivered to destination `name` `lag` after its delivery was acknowledged.
    pub fn destination_lag(&self, name: &str, lag: Duration) {
        let name = name.to_owned();
        self.with(|| {
            metrics::histogram!(DESTINATION_LAG, "destination" => name).record(lag.as_secs_f64());
        });
    }

    /// Destination `name`'s queue, read when metrics are scraped.
    pub fn destination_queue(&self, name: &str, pending: u64, dead: u64, oldest: Duration) {
        self.with(|| {
            metrics::gauge!(DESTINATION_PENDING, "destination" => name.to_owned())
                .set(pending as f64);
            metrics::gauge!(DESTINATION_DEAD, "destination" => name.to_owned()).set(dead as f64);
            metrics::gauge!(DESTINATION_OLDEST, "destination" => name.to_owned())
                .set(oldest.as_secs_f64());
        });
    }

    /// Token requests to an Ocean site since start, as the site's client counted them.
    pub fn token_fetches(&self, site: &str, ok: u64, failed: u64) {
        self.with(|| {
            for (result, count) in [("ok", ok), ("error", failed)] {
                metrics::counter!(TOKEN_FETCHES, "site" => site.to_owned(), "result" => result)
                    .absolute(count);
            }
        });
    }

    pub fn connection_opened(&self) {
        self.with(|| metrics::gauge!(CONNECTIONS_OPEN).increment(1.0));
    }

    pub fn connection_closed(&self) {
        self.with(|| metrics::gauge!(CONNECTIONS_OPEN).decrement(1.0));
    }

    /// A connection over the cap, answered 503.
    pub fn connection_shed(&self) {
        self.with(|| metrics::counter!(CONNECTIONS_SHED).increment(1));
    }

    /// A connection closed by a timeout: `tls_handshake`, `header_read`, `keep_alive` or `send`.
    pub fn connection_timeout(&self, kind: &'static str) {
        self.with(|| metrics::counter!(CONNECTION_TIMEOUTS, "kind" => kind).increment(1));
    }

    /// Bytes of bodies held before their sender is authenticated, read when metrics are scraped.
    pub fn unauthenticated_body_bytes(&self, bytes: usize) {
        self.with(|| metrics::gauge!(UNAUTHENTICATED_BYTES).set(bytes as f64));
    }

    /// The served certificate's expiry (`relay_tls_cert_expiry_seconds`), so an alert can fire
    /// before it passes; reloaded failures are counted apart.
    pub fn tls_certificate_expiry(&self, not_after: time::OffsetDateTime) {
        self.with(|| metrics::gauge!(TLS_CERT_EXPIRY).set(not_after.unix_timestamp() as f64));
        self.with(|| metrics::counter!(TLS_RELOAD_FAILURES).increment(0));
    }

    /// A TLS handshake that failed: `kind` is `client_certificate`, `incompatible`, `closed`
    /// or `malformed`.
    pub fn tls_handshake_failure(&self, kind: &'static str) {
        self.with(|| metrics::counter!(TLS_HANDSHAKE_FAILURES, "kind" => kind).increment(1));
    }

    pub fn tls_reload_failure(&self) {
        self.with(|| metrics::counter!(TLS_RELOAD_FAILURES).increment(1));
    }

    /// One answered CDS Hooks call of screening service `service` (a configured id).
    pub fn cds_answer(&self, service: &str, outcome: &'static str) {
        self.with(|| {
            metrics::counter!(CDS_ANSWERS, "service" => service.to_owned(), "outcome" => outcome)
                .increment(1);
        });
    }

    /// One screening card given.
    pub fn cds_card(&self, service: &str, rule: &'static str, indicator: &'static str) {
        self.with(|| {
            metrics::counter!(CDS_CARDS, "service" => service.to_owned(), "rule" => rule, "indicator" => indicator)
                .increment(1);
        });
    }

    pub fn export_rows(&self, rows: u64) {
        self.with(|| metrics::counter!(EXPORT_ROWS).increment(rows));
    }

    /// The Prometheus text exposition of everything recorded.
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }

    /// Folds histogram samples into their buckets so memory stays bounded between scrapes.
    pub fn upkeep(&self) {
        self.recorder.handle().run_upkeep();
    }
}

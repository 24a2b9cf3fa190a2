//! Serving HTTP/1.1 on an internet-facing listener, with the limits such a listener needs and
//! `axum::serve` does not have:
//! - a **header read timeout**: a request head must arrive whole within it, counted from its
//!   first byte (a client that sends half a header is dropped);
//! - a **keep-alive timeout**: a connection idle between requests for longer is closed;
//! - a **send timeout**: a response that cannot be written for this long (the client stopped
//!   reading) ends the connection;
//! - a **cap on open connections**, overall and per client (an IPv4 address or an IPv6 /64;
//!   trusted proxies are exempt): past it, a new connection is answered `503` with
//!   `Retry-After` (over HTTPS, closed at once) and closed, so descriptors never run out, one
//!   client cannot take every slot, and real deliveries keep going.
//!
//! With `[server.tls]` each connection first completes a TLS handshake ([`tls`]), within the
//! header read timeout (a handshake that never completes is cut like a slow request head).
//!
//! Every request carries `ConnectInfo<SocketAddr>` (the peer) as an extension, and over mutual
//! TLS the [`tls::ClientIdentity`] its certificate proved. A watchdog per connection looks at
//! its activity a few times a second; the work it does is a few atomic reads.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

mod limits;
pub mod tls;
mod watchdog;

use limits::PerClient;
pub use limits::{Limits, fit_connection_cap};

use crate::auth::source::host_network;
use watchdog::{Activity, Guarded, InFlight, Verdict, Watched};

use crate::telemetry::Metrics;

/// Connections over the cap that are being answered 503 at once; beyond this many they are
/// closed without an answer.
const SHED_SLOTS: usize = 64;
/// How long a shed connection is read from (and discarded) after its 503, so closing it does
/// not reset the connection before the client has read the answer.
const SHED_LINGER: Duration = Duration::from_secs(2);
const SHED_RESPONSE_BODY: &str = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient","diagnostics":"the relay has too many open connections; retry later"}]}"#;

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, lets each
/// connection finish the request it is handling, and returns once every connection is closed
/// (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<tls::Tls>,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = Arc::new(PerClient::default());
    let shed_slots = Arc::new(Semaphore::new(SHED_SLOTS));
    let (stop_tx, stop) = watch::channel(false);
    let shed_log = Throttle::new(Duration::from_secs(60));
    let refused_certificates = Arc::new(Throttle::new(Duration::from_secs(60)));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning. Errors that
                    // belong to one connection (reset before accept) need no pause.
                    if !is_connection_error(&e) {
                        tracing::error!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let client = host_network(peer.ip());
        let counted = !limits
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer.ip()));
        let admitted = !counted || per_client.admit(client, limits.max_connections_per_client);
        let permit = if admitted {
            let permit = Arc::clone(&connections).try_acquire_owned().ok();
            if permit.is_none() && counted {
                per_client.release(client);
            }
            permit
        } else {
            None
        };
        match permit {
            Some(permit) => {
                metrics.connection_opened();
                let (router, stop, metrics) = (router.clone(), stop.clone(), metrics.clone());
                let (limits, per_client, tls) =
                    (limits.clone(), Arc::clone(&per_client), tls.clone());
                let refused_certificates = Arc::clone(&refused_certificates);
                tokio::spawn(async move {
                    let connection = Connection {
                        peer,
                        router,
                        limits: &limits,
                        metrics: &metrics,
                        refused_certificates: &refused_certificates,
                    };
                    connection.serve(stream, tls.as_ref(), stop).await;
                    metrics.connection_closed();
                    if counted {
                        per_client.release(client);
                    }
                    drop(permit);
                });
            }
            None => {
                metrics.connection_shed();
                if let Some(count) = shed_log.tick() {
                    tracing::warn!(
                        shed = count,
                        max_connections = limits.max_connections,
                        max_connections_per_client = limits.max_connections_per_client,
                        "connections over server.max_connections or max_connections_per_client answered 503 (with HTTPS, closed)"
                    );
                }
                // Over HTTPS a plain-text 503 means nothing to the client, and a handshake
                // is what an overloaded listener cannot afford: the connection is just closed.
                if tls.is_some() {
                    drop(stream);
                } else if let Ok(slot) = Arc::clone(&shed_slots).try_acquire_owned() {
                    tokio::spawn(async move {
                        shed(stream).await;
                        drop(slot);
                    });
                }
            }
        }
    }
    drop(listener);
    stop_tx.send_replace(true);
    // Every permit back means every connection has closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = connections.acquire_many(all).await;
}

/// Errors of one incoming connection, not of the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Answers 503 on a connection over the cap and closes it gently.
async fn shed(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/fhir+json\r\n\
         retry-after: 5\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{SHED_RESPONSE_BODY}",
        SHED_RESPONSE_BODY.len()
    );
    // A new socket's send buffer is empty: this never waits on a client that does not read.
    if stream.try_write(response.as_bytes()).is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(SHED_LINGER, async {
        let mut read = 0;
        while read < 64 * 1024 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

/// Why a TLS handshake failed, as the `kind` of `relay_tls_handshake_failures_total`:
/// `client_certificate` (one that matches no API client), `incompatible` (an old protocol
/// version, no shared cipher suite or ALPN protocol), `closed` (the peer left before finishing,
/// as TCP health checks and port scans do) or `malformed`.
fn handshake_failure(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return "closed";
    }
    match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
            "client_certificate"
        }
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        _ if e.kind() == std::io::ErrorKind::ConnectionReset => "closed",
        _ => "malformed",
    }
}

/// One accepted connection and what serving it needs.
struct Connection<'a> {
    peer: SocketAddr,
    router: Router,
    limits: &'a Limits,
    metrics: &'a Metrics,
    /// Refused client certificates, logged once a minute with their count.
    refused_certificates: &'a Throttle,
}

impl Connection<'_> {
    /// Serves the connection (after its TLS handshake, with HTTPS), watching it against the
    /// limits.
    async fn serve(self, stream: TcpStream, tls: Option<&tls::Tls>, stop: watch::Receiver<bool>) {
        let _ = stream.set_nodelay(true);
        // A new connection's first request head is due within the header read timeout of its
        // opening, the handshake included.
        let activity = Arc::new(Activity::new());
        let watched = Watched::new(stream, Arc::clone(&activity));
        let Some(tls) = tls else {
            return self
                .drive(TokioIo::new(watched), None, activity, stop)
                .await;
        };
        let handshake = tokio::time::timeout(
            self.limits.header_read_timeout,
            tls.acceptor().accept(watched),
        );
        let stream = match handshake.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                let kind = handshake_failure(&e);
                self.metrics.tls_handshake_failure(kind);
                if kind == "client_certificate" {
                    if let Some(count) = self.refused_certificates.tick() {
                        tracing::warn!(
                            refused = count,
                            source = %self.peer.ip(),
                            "TLS client certificates matched no API client (api.clients.*.client_ca_file, client_cert_sha256); handshakes refused"
                        );
                    }
                } else {
                    tracing::debug!(error = %e, kind, "TLS handshake failed");
                }
                return;
            }
            Err(_) => {
                self.metrics.connection_timeout("tls_handshake");
                tracing::debug!("a TLS handshake did not complete in time; connection dropped");
                return;
            }
        };
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| tls.clients.identify(chain));
        self.drive(TokioIo::new(stream), identity, activity, stop)
            .await;
    }

    /// Serves HTTP/1.1 on `io` until the client is done, the watchdog ends it, or shutdown.
    async fn drive<I>(
        self,
        io: TokioIo<I>,
        identity: Option<tls::ClientIdentity>,
        activity: Arc<Activity>,
        mut stop: watch::Receiver<bool>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            peer,
            router,
            limits,
            metrics,
            ..
        } = self;
        let service_activity = Arc::clone(&activity);
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let guard = InFlight::start(Arc::clone(&service_activity));
            request.extensions_mut().insert(ConnectInfo(peer));
            if let Some(identity) = &identity {
                request.extensions_mut().insert(identity.clone());
            }
            let response = router.clone().oneshot(request.map(Body::new));
            async move {
                let response = match response.await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| Guarded::new(body, guard)))
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(io, service);
        tokio::pin!(connection);
        let tick = (limits.header_read_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut watch = tokio::time::interval(tick);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = *stop.borrow();
        if stopping {
            connection.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                changed = stop.changed(), if !stopping => {
                    if changed.is_err() || *stop.borrow() {
                        stopping = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
                _ = watch.tick() => match activity.verdict(limits) {
                    Verdict::Keep => {}
                    Verdict::Idle => {
                        metrics.connection_timeout("keep_alive");
                        // Nothing in flight: closing loses nothing.
                        return;
                    }
                    Verdict::HeaderTimeout => {
                        metrics.connection_timeout("header_read");
                        tracing::debug!("a request head did not arrive in time; connection dropped");
                        return;
                    }
                    Verdict::SendTimeout => {
                        metrics.connection_timeout("send");
                        tracing::info!("a response could not be sent in time (the client stopped reading); connection dropped");
                        return;
                    }
                },
            }
        }
    }
}

/// Lets one log line through per interval, counting the events in between.
pub struct Throttle {
    interval: Duration,
    state: std::sync::Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// Counts one event; `Some(events since the last line)` when a line is due.
    pub fn tick(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1 += 1;
        let due = state.0.is_none_or(|at| at.elapsed() >= self.interval);
        if due {
            let count = state.1;
            *state = (Some(Instant::now()), 0);
            Some(count)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_log_counts_what_it_held_back() {
        let t = Throttle::new(Duration::from_millis(100));
        assert_eq!(t.tick(), Some(1));
        assert_eq!(t.tick(), None);
        assert_eq!(t.tick(), None);
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(t.tick(), Some(3));
    }
}

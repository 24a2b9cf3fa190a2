//! Serving HTTP/1.1 on an internet-facing listener, with the limits such a listener needs and
//! `axum::serve` does not have:
//! - a **header read timeout**: a request head must arrive whole within it, counted from its
//!   first byte (a client that sends half a header is dropped);
//! - a **keep-alive timeout**: a connection idle between requests for longer is closed;
//! - a **send timeout**: a response that cannot be written for this long (the client stopped
//!   reading) ends the connection;
//! - a **cap on open connections**, overall and per client (an IPv4 address or an IPv6 /64;
//!   trusted proxies are exempt): past it, a new connection is answered `503` with
//!   `Retry-After` and closed, so descriptors never run out, one client cannot take every slot,
//!   and real deliveries keep going.
//!
//! Every request carries `ConnectInfo<SocketAddr>` (the peer) as an extension. A watchdog per
//! connection looks at its activity a few times a second; the work it does is a few atomic
//! reads.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::telemetry::Metrics;

/// The limits of the listener; see the module documentation.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub send_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// Peers not held to the per-client cap: the reverse proxies in front, whose connections
    /// carry many clients.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// What a client is counted as: an IPv4 address, or the /64 of an IPv6 one (one host usually
/// holds a whole /64, so counting single addresses would not count it at all).
pub fn host_network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
        },
    }
}

/// Open connections per client.
#[derive(Default)]
struct PerClient(std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>);

impl PerClient {
    /// Counts a connection of `client` unless it already has `max`.
    fn admit(&self, client: IpAddr, max: usize) -> bool {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(client).or_insert(0);
        if *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    fn release(&self, client: IpAddr) {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&client);
            }
        }
    }
}

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
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = Arc::new(PerClient::default());
    let shed_slots = Arc::new(Semaphore::new(SHED_SLOTS));
    let (stop_tx, stop) = watch::channel(false);
    let shed_log = Throttle::new(Duration::from_secs(60));
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
                let (limits, per_client) = (limits.clone(), Arc::clone(&per_client));
                tokio::spawn(async move {
                    serve_connection(stream, peer, router, &limits, stop, &metrics).await;
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
                        "connections over server.max_connections or max_connections_per_client answered 503"
                    );
                }
                if let Ok(slot) = Arc::clone(&shed_slots).try_acquire_owned() {
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

/// Serves one connection, watching it against the limits.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: &Limits,
    mut stop: watch::Receiver<bool>,
    metrics: &Metrics,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let service_activity = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let guard = InFlight::start(Arc::clone(&service_activity));
        request.extensions_mut().insert(ConnectInfo(peer));
        let response = router.clone().oneshot(request.map(Body::new));
        async move {
            let response = match response.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(response.map(|body| Guarded {
                body,
                _guard: guard,
            }))
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let tick =
        (limits.header_read_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
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

/// What the watchdog does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// Idle between requests for longer than the keep-alive timeout.
    Idle,
    /// A request head started arriving and did not complete in time.
    HeaderTimeout,
    /// A response write has been blocked for longer than the send timeout.
    SendTimeout,
}

/// What a connection is doing, in milliseconds since `origin` (0 = not set).
struct Activity {
    origin: Instant,
    in_flight: AtomicUsize,
    /// When the connection last became idle (opened, or its last response finished).
    idle_since: AtomicU64,
    /// When the first byte of the next request head arrived, while idle.
    head_started: AtomicU64,
    /// When writing began to wait on the client.
    write_blocked: AtomicU64,
    /// When bytes were last written (a response still going out keeps the connection busy).
    last_write: AtomicU64,
}

impl Activity {
    /// A new connection: its first request head is due within the header read timeout.
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(1),
            head_started: AtomicU64::new(1),
            write_blocked: AtomicU64::new(0),
            last_write: AtomicU64::new(0),
        }
    }

    /// Milliseconds since `origin`, never 0 (0 means "not set").
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn read(&self, bytes: usize) {
        if bytes > 0 && self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = self.head_started.compare_exchange(
                0,
                self.now(),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    fn write(&self, blocked: bool) {
        if blocked {
            let _ = self.write_blocked.compare_exchange(
                0,
                self.now(),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        } else {
            self.write_blocked.store(0, Ordering::Release);
            self.last_write.store(self.now(), Ordering::Release);
        }
    }

    fn verdict(&self, limits: &Limits) -> Verdict {
        self.verdict_at(self.now(), limits)
    }

    fn verdict_at(&self, now: u64, limits: &Limits) -> Verdict {
        let elapsed = |since: u64| Duration::from_millis(now.saturating_sub(since));
        let blocked = self.write_blocked.load(Ordering::Acquire);
        if blocked != 0 && elapsed(blocked) > limits.send_timeout {
            return Verdict::SendTimeout;
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Verdict::Keep;
        }
        let head = self.head_started.load(Ordering::Acquire);
        if head != 0 {
            if elapsed(head) > limits.header_read_timeout {
                return Verdict::HeaderTimeout;
            }
            return Verdict::Keep;
        }
        // The end of a response may still be going out after its request is done: idleness
        // counts from the last byte written, and a write waiting on the client is not idle.
        let quiet_since = self
            .idle_since
            .load(Ordering::Acquire)
            .max(self.last_write.load(Ordering::Acquire));
        if blocked == 0 && elapsed(quiet_since) > limits.keep_alive_timeout {
            return Verdict::Idle;
        }
        Verdict::Keep
    }
}

/// A request being handled on a connection; dropped when its response has been sent (or the
/// request was abandoned).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.head_started.store(0, Ordering::Release);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.idle_since.store(activity.now(), Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until hyper has sent it.
struct Guarded {
    body: Body,
    _guard: InFlight,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's socket, noting when bytes arrive and when writes wait on the client.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            self.activity.read(buf.filled().len() - before);
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.write(result.is_pending());
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.write(result.is_pending());
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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

/// The connection cap that fits the process's descriptor limit. The soft limit is raised to
/// the hard one first (as Go's runtime does); `reserve` descriptors stay for the store, Ocean
/// and shed connections. Returns the cap and, when it had to be lowered, the limit that did it.
pub fn fit_connection_cap(wanted: usize, reserve: u64) -> (usize, Option<u64>) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the descriptor limit");
            return (wanted, None);
        }
    };
    let room = usize::try_from(limit.saturating_sub(reserve)).unwrap_or(usize::MAX);
    if wanted > room {
        (room.max(16), Some(limit))
    } else {
        (wanted, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        keep_alive_timeout: Duration::from_secs(75),
        send_timeout: Duration::from_secs(30),
        max_connections: 10,
        max_connections_per_client: 5,
        trusted_proxies: Vec::new(),
    };

    #[test]
    fn the_watchdog_tells_idle_half_sent_busy_and_stuck_connections_apart() {
        let at = |secs: u64| secs * 1000;
        // A new connection owes its first request head within the header read timeout.
        let fresh = Activity::new();
        assert_eq!(fresh.verdict_at(at(9), &LIMITS), Verdict::Keep);
        assert_eq!(fresh.verdict_at(at(11), &LIMITS), Verdict::HeaderTimeout);
        // Once a response has gone out, it may idle until the keep-alive timeout.
        let a = Activity::new();
        drop(InFlight::start(Arc::new(Activity::new())));
        a.head_started.store(0, Ordering::Release);
        assert_eq!(a.verdict_at(at(74), &LIMITS), Verdict::Keep);
        assert_eq!(a.verdict_at(at(76), &LIMITS), Verdict::Idle);
        // The first bytes of a head: from then on the header timeout counts, not idleness.
        a.head_started.store(at(70), Ordering::Release);
        assert_eq!(a.verdict_at(at(79), &LIMITS), Verdict::Keep);
        assert_eq!(a.verdict_at(at(81), &LIMITS), Verdict::HeaderTimeout);
        // A request in flight (a long-poll, say) is never idle however long it takes.
        let guard = InFlight::start(Arc::new(Activity::new()));
        let busy = &guard.0;
        assert_eq!(busy.verdict_at(at(500), &LIMITS), Verdict::Keep);
        busy.write_blocked.store(at(500), Ordering::Release);
        assert_eq!(busy.verdict_at(at(529), &LIMITS), Verdict::Keep);
        assert_eq!(busy.verdict_at(at(531), &LIMITS), Verdict::SendTimeout);
        busy.write(false);
        assert_eq!(busy.verdict_at(at(531), &LIMITS), Verdict::Keep);

        // A response still being written after its request finished is not idleness.
        let slow = Activity::new();
        slow.head_started.store(0, Ordering::Release);
        slow.last_write.store(at(70), Ordering::Release);
        assert_eq!(slow.verdict_at(at(100), &LIMITS), Verdict::Keep);
        slow.write_blocked.store(at(120), Ordering::Release);
        assert_eq!(slow.verdict_at(at(146), &LIMITS), Verdict::Keep);
        slow.write_blocked.store(0, Ordering::Release);
        assert_eq!(slow.verdict_at(at(146), &LIMITS), Verdict::Idle);
    }

    #[test]
    fn clients_are_counted_by_address_or_ipv6_slash_64() {
        let clients = PerClient::default();
        let a = host_network("2001:db8::1".parse().unwrap());
        let b = host_network("2001:db8::2".parse().unwrap());
        assert_eq!(a, b);
        assert!(clients.admit(a, 2) && clients.admit(b, 2));
        assert!(!clients.admit(a, 2));
        clients.release(a);
        assert!(clients.admit(b, 2));
        let mapped = host_network("::ffff:192.0.2.7".parse().unwrap());
        assert_eq!(mapped, "192.0.2.7".parse::<IpAddr>().unwrap());
    }

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

//! The per-connection watchdog: what a connection is doing (reading a head, handling a
//! request, writing a response, idle), from the wrappers around its socket and its response
//! bodies, and what to do about it against the [`Limits`].

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::limits::Limits;

/// What the watchdog does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Keep,
    /// Idle between requests for longer than the keep-alive timeout.
    Idle,
    /// A request head started arriving and did not complete in time.
    HeaderTimeout,
    /// A response write has been blocked for longer than the send timeout.
    SendTimeout,
}

/// What a connection is doing, in milliseconds since `origin` (0 = not set).
pub(super) struct Activity {
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
    pub(super) fn new() -> Self {
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
    pub(super) fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    pub(super) fn read(&self, bytes: usize) {
        if bytes > 0 && self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = self.head_started.compare_exchange(
                0,
                self.now(),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    pub(super) fn write(&self, blocked: bool) {
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

    pub(super) fn verdict(&self, limits: &Limits) -> Verdict {
        self.verdict_at(self.now(), limits)
    }

    pub(super) fn verdict_at(&self, now: u64, limits: &Limits) -> Verdict {
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
pub(super) struct InFlight(pub(super) Arc<Activity>);

impl InFlight {
    pub(super) fn start(activity: Arc<Activity>) -> Self {
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
pub(super) struct Guarded {
    body: Body,
    _guard: InFlight,
}

impl Guarded {
    pub(super) fn new(body: Body, guard: InFlight) -> Self {
        Self {
            body,
            _guard: guard,
        }
    }
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
pub(super) struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl Watched {
    pub(super) fn new(inner: TcpStream, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
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
}

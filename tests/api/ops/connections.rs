//! The listener holds slow, idle and surplus connections to its limits: a connection that sends
//! nothing or half a header is dropped, an idle keep-alive connection is closed, a client that
//! stops reading its response is cut off, and connections over the cap get 503 at once.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::app::{metric, spawn_app_with};
use crate::support::fixtures::fixture;
use crate::support::poll::eventually;

const LIMITS: &str = "[server]\nheader_read_timeout_secs = 1\nkeep_alive_timeout_secs = 2\n";

/// Reads until the server closes the connection; what it sent. Fails the test if the server
/// holds it open for 30 s (far beyond every limit configured here).
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server held the connection open");
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_connection_that_sends_nothing_or_half_a_header_is_dropped() {
    let app = spawn_app_with(LIMITS).await;
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let mut half = TcpStream::connect(app.addr).await.unwrap();
    half.write_all(b"POST /fhir/default/$process-message HTTP/1.1\r\nHost: relay\r\nContent-Ty")
        .await
        .unwrap();
    assert_eq!(until_closed(&mut silent).await, "");
    assert_eq!(until_closed(&mut half).await, "");
    let page = app.metrics().await;
    assert_eq!(
        metric(
            &page,
            "relay_connection_timeouts_total",
            &[("kind", "header_read")]
        ),
        Some(2.0)
    );
    // The service itself is unaffected.
    let answer = app
        .deliver("default", fixture("v0.11-add-service-request.json"))
        .await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_but_a_long_poll_is_not() {
    let app = spawn_app_with(&format!(
        "{LIMITS}[api.clients.emr]\nkey = \"emr-key-0123456789abcdef\"\n"
    ))
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await
        .unwrap();
    let seen = until_closed(&mut stream).await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert_eq!(
        metric(
            &app.metrics().await,
            "relay_connection_timeouts_total",
            &[("kind", "keep_alive")]
        ),
        Some(1.0)
    );

    // A long-poll outlasting the keep-alive timeout is a request in flight, not idleness.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            b"GET /api/v1/events?wait=4 HTTP/1.1\r\nHost: relay\r\n\
              Authorization: Bearer emr-key-0123456789abcdef\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let seen = until_closed(&mut stream).await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("\"events\":[]"), "{seen}");
}

#[tokio::test]
async fn connections_over_the_cap_get_503_at_once_and_the_service_recovers() {
    let app =
        spawn_app_with("[server]\nmax_connections = 3\nheader_read_timeout_secs = 60\n").await;
    // Three connections, each having completed a request and now idle in keep-alive: the
    // server has certainly accepted and counted them.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    let mut surplus = TcpStream::connect(app.addr).await.unwrap();
    surplus
        .write_all(b"POST /fhir/default/$process-message HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await
        .unwrap();
    let seen = until_closed(&mut surplus).await;
    assert!(seen.starts_with("HTTP/1.1 503"), "{seen}");
    assert!(seen.contains("retry-after: 5"), "{seen}");
    assert!(seen.contains("OperationOutcome"), "{seen}");

    drop(held);
    let mut answer = None;
    eventually("a delivery served once the slot is free", async || {
        let response = app
            .client
            .post(app.url("/fhir/default/$process-message"))
            .header("content-type", "application/fhir+json")
            .body(fixture("v0.11-add-service-request.json"))
            .send()
            .await;
        answer = response.ok().map(|r| r.status()).filter(|s| *s == 200);
        answer.is_some()
    })
    .await;
    assert_eq!(answer.map(|s| s.as_u16()), Some(200));
    let page = app.metrics().await;
    assert!(metric(&page, "relay_connections_shed_total", &[]).unwrap() >= 1.0);
}

#[tokio::test]
async fn a_client_that_stops_reading_its_response_is_cut_off() {
    let app = spawn_app_with(
        "[server]\nsend_timeout_secs = 1\nmax_body_bytes = 33554432\n\
         [api.clients.emr]\nkey = \"emr-key-0123456789abcdef\"\n",
    )
    .await;
    // A stored delivery far larger than any socket buffer, padded with insignificant spaces.
    let mut big = fixture("v0.11-add-service-request.json");
    let at = big.iter().rposition(|&b| b == b'}').unwrap();
    big.splice(at..at, std::iter::repeat_n(b' ', 24 << 20));
    assert_eq!(app.deliver("default", big).await.status, 200);

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    stream
        .write_all(
            b"GET /api/v1/referrals/TST-0011-AAAA/versions/1 HTTP/1.1\r\nHost: relay\r\n\
              Authorization: Bearer emr-key-0123456789abcdef\r\n\r\n",
        )
        .await
        .unwrap();
    // Read nothing: the server's writes block, and after the send timeout it gives up.
    let mut cut = None;
    eventually("the send timeout cutting the connection", async || {
        let page = app.metrics().await;
        cut = metric(
            &page,
            "relay_connection_timeouts_total",
            &[("kind", "send")],
        );
        cut.is_some()
    })
    .await;
    assert_eq!(cut, Some(1.0));
}

#[tokio::test]
async fn one_client_cannot_take_every_connection() {
    let app = spawn_app_with(
        "[server]\nmax_connections = 100\nmax_connections_per_client = 3\nheader_read_timeout_secs = 60\n",
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    // A fourth from the same address is refused, though the server has room for 97 more.
    let mut fourth = TcpStream::connect(app.addr).await.unwrap();
    fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await
        .unwrap();
    let seen = until_closed(&mut fourth).await;
    assert!(seen.starts_with("HTTP/1.1 503"), "{seen}");
    drop(held);

    // Behind a trusted proxy the peer carries many clients: it is not held to the cap.
    let proxied = spawn_app_with(
        "[server]\nmax_connections_per_client = 1\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    )
    .await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(proxied.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        streams.push(stream);
    }
}

#[tokio::test]
async fn a_slow_steady_download_is_not_cut_off_as_idle() {
    let app = spawn_app_with(
        "[server]\nkeep_alive_timeout_secs = 1\nmax_body_bytes = 33554432\n\
         [api.clients.emr]\nkey = \"emr-key-0123456789abcdef\"\n",
    )
    .await;
    let mut big = fixture("v0.11-add-service-request.json");
    let at = big.iter().rposition(|&b| b == b'}').unwrap();
    big.splice(at..at, std::iter::repeat_n(b' ', 8 << 20));
    let expected = big.len();
    assert_eq!(app.deliver("default", big).await.status, 200);

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    stream
        .write_all(
            b"GET /api/v1/referrals/TST-0011-AAAA/versions/1 HTTP/1.1\r\nHost: relay\r\n\
              Authorization: Bearer emr-key-0123456789abcdef\r\n\r\n",
        )
        .await
        .unwrap();
    // About 2 MB/s: four seconds for the whole payload, four keep-alive timeouts' worth.
    let mut received = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let mut head = Vec::new();
    let started = std::time::Instant::now();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("the server stalled")
            .unwrap();
        if n == 0 {
            break;
        }
        if head.len() < 4096 {
            head.extend_from_slice(&buf[..n.min(4096)]);
        }
        received += n;
        if received >= expected {
            break;
        }
        let due = Duration::from_secs_f64(received as f64 / 2_000_000.0);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"));
    assert!(received >= expected, "got {received} of {expected} bytes");
}

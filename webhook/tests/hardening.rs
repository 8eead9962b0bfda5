//! The real `ipmgr-webhook serve` process over real TLS on loopback, attacked the ways issue
//! #10 found: a body that amplified memory, stalled bodies over HTTP/1.1 and HTTP/2,
//! slowloris headers, idle connections, a Content-Length over the cap, and megabyte values
//! echoed into answers and logs. Each server runs with short timeouts set through its
//! environment variables; `IPMGR_WEBHOOK_BIN` runs these tests against another build.

mod common;

use std::time::{Duration, Instant};

use common::ServerProcess;
use http_body_util::{BodyExt as _, Channel, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::AsyncReadExt as _;

const MIB: usize = 1024 * 1024;

/// Short limits, so that every test sees its timeouts fire within a second or two.
const LIMITS: [(&str, &str); 8] = [
    ("IPMGR_MAX_BODY_BYTES", "1048576"),
    ("IPMGR_MAX_IN_FLIGHT", "4"),
    ("IPMGR_HEADER_TIMEOUT_SECONDS", "0.5"),
    ("IPMGR_BODY_TIMEOUT_SECONDS", "1"),
    ("IPMGR_REQUEST_TIMEOUT_SECONDS", "1.5"),
    ("IPMGR_IDLE_TIMEOUT_SECONDS", "1"),
    ("IPMGR_H2_KEEPALIVE_SECONDS", "1"),
    ("IPMGR_H2_MAX_CONCURRENT_STREAMS", "8"),
];

/// How long after its timeout a dropped client may still wait for the server to notice:
/// generous, since these tests share the machine with others.
const SLACK: Duration = Duration::from_millis(1500);

fn assert_metric(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "missing {line:?} in\n{text}"
    );
}

/// A review whose one annotation the injector reads is nothing but escapes (decoded into a
/// scratch buffer before its length can be checked), padded to `size` bytes.
fn escaped_annotation_body(size: usize) -> Vec<u8> {
    let pod = common::multus_pod(json!({"multus-ipmgr.io/image": "PLACEHOLDER"}));
    let text = common::admission_review("escaped", &pod, false).to_string();
    let escapes = "\\u00e9".repeat((size - text.len()) / 6);
    text.replace("PLACEHOLDER", &escapes).into_bytes()
}

/// Finding: a 0.96 MB body whose pod the fast parser could not read was parsed again as a
/// generic AdmissionReview and took the RSS from 6.9 to 216 MB. Also the other way a body
/// could be copied: one long escaped annotation value.
#[rstest::rstest]
#[case::amplification(common::amplification_body(MIB - 512), "amplify")]
#[case::escaped_annotation(escaped_annotation_body(MIB - 512), "escaped")]
#[tokio::test]
async fn a_body_at_the_cap_costs_less_than_three_times_its_size(
    #[case] body: Vec<u8>,
    #[case] uid: &str,
) {
    let server = ServerProcess::start(&LIMITS).await;
    // Warm up: connections, TLS, allocator arenas.
    let small = common::admission_review("warm", &common::multus_pod(json!({})), false);
    let answer = common::post(&server, small.to_string().as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = server.memory("VmRSS");
    server.reset_peak();

    let answer = common::post(&server, &body).await;
    let peak = server.memory("VmHWM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = server.memory("VmRSS");

    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.300}");
    assert!(
        answer.contains(&format!("\"uid\":\"{uid}\"")),
        "{answer:.300}"
    );
    assert!(answer.contains("\"allowed\":true"), "{answer:.300}");
    assert!(
        answer.contains("could not read the Pod"),
        "answered from the envelope with a warning: {answer:.600}"
    );
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "body {} B, RSS baseline {baseline} B, peak {peak} B (+{grown}), after {after} B",
        body.len()
    );
    assert!(
        grown < 3 * body.len() as u64,
        "one {} B request grew the peak RSS by {grown} B",
        body.len()
    );
    assert!(
        after < baseline + 10 * MIB as u64,
        "RSS after the request: {after} B, baseline {baseline} B"
    );
}

/// Finding: bodies that never finish were held forever; 32 of them took 140 MB.
#[tokio::test]
async fn stalled_http1_bodies_are_shed_beyond_the_in_flight_limit_and_dropped_in_time() {
    let server = ServerProcess::start(&LIMITS).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = server.memory("VmRSS");
    server.reset_peak();
    // 12 clients each declare a body just under the cap and send 7/8 of it, then stall.
    let declared = MIB - 1024;
    let answers = common::stalled_bodies(
        &server,
        12,
        declared,
        declared / 8 * 7,
        Duration::from_secs(5),
    )
    .await;
    let mut statuses = Vec::new();
    for (answer, elapsed) in answers {
        let status = answer.get(..12).unwrap_or(&answer).to_owned();
        assert!(
            elapsed < Duration::from_secs(1) + SLACK,
            "{status:?} after {elapsed:?}"
        );
        statuses.push(status);
    }
    let peak = server.memory("VmHWM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = server.memory("VmRSS");
    statuses.sort();
    let timed_out = statuses.iter().filter(|s| *s == "HTTP/1.1 408").count();
    let shed = statuses.iter().filter(|s| *s == "HTTP/1.1 503").count();
    assert_eq!((timed_out, shed), (4, 8), "{statuses:?}");
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "12 stalled bodies: RSS baseline {baseline} B, peak {peak} B (+{grown}), after {after} B"
    );
    assert!(
        grown < 3 * 4 * MIB as u64,
        "stalled bodies grew the peak RSS by {grown} B"
    );
    assert!(after < baseline + 10 * MIB as u64, "after {after} B");
    let text = server.metrics().await;
    assert_metric(&text, "ipmgr_webhook_shed_requests_total 8");
    assert_metric(&text, r#"ipmgr_webhook_timeouts_total{stage="body"} 4"#);
    assert_metric(&text, "ipmgr_webhook_in_flight_requests 0");
    assert_metric(&text, "ipmgr_webhook_buffered_body_bytes 0");
    // Only the connection of this scrape is left.
    assert_metric(&text, "ipmgr_webhook_open_connections 1");
}

/// The whole-request timeout holds on its own, here shorter than the body timeout.
#[tokio::test]
async fn a_request_is_answered_within_the_request_timeout() {
    let mut limits = LIMITS.to_vec();
    limits.push(("IPMGR_BODY_TIMEOUT_SECONDS", "4"));
    limits.push(("IPMGR_REQUEST_TIMEOUT_SECONDS", "0.5"));
    let server = ServerProcess::start(&limits).await;
    let (answer, elapsed) = common::http1(
        &server.connector,
        server.addr,
        &common::post_head(1000),
        b"{",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("--request-timeout-seconds"), "{answer}");
    assert!(
        elapsed < Duration::from_millis(500) + SLACK,
        "answered after {elapsed:?}"
    );
    assert_metric(
        &server.metrics().await,
        r#"ipmgr_webhook_timeouts_total{stage="request"} 1"#,
    );
}

/// Finding: 32 stalled HTTP/2 streams on one connection were held forever (200 allowed).
#[tokio::test]
async fn stalled_http2_streams_are_shed_beyond_the_in_flight_limit_and_dropped_in_time() {
    let server = ServerProcess::start(&LIMITS).await;
    let (started, answers, senders) = stalled_streams(&server, 8).await;
    let mut statuses = Vec::new();
    for answer in answers {
        let (status, elapsed) = tokio::time::timeout(
            (Duration::from_secs(1) + SLACK).saturating_sub(started.elapsed()),
            answer,
        )
        .await
        .expect("every stream is answered within the body timeout")
        .expect("stream task");
        assert!(
            elapsed < Duration::from_secs(1) + SLACK,
            "{status:?} after {elapsed:?}"
        );
        statuses.push(status.expect("answered, not reset"));
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [408, 408, 408, 408, 503, 503, 503, 503]);
    drop(senders);
}

/// Finding: 200 concurrent streams were allowed per HTTP/2 connection.
#[tokio::test]
async fn http2_streams_per_connection_are_limited() {
    let mut limits = LIMITS.to_vec();
    limits.push(("IPMGR_MAX_IN_FLIGHT", "16"));
    limits.push(("IPMGR_H2_MAX_CONCURRENT_STREAMS", "4"));
    let server = ServerProcess::start(&limits).await;
    let (_, answers, senders) = stalled_streams(&server, 6).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 16 slots are free, but only 4 streams may be open on one connection.
    assert_metric(
        &server.metrics().await,
        "ipmgr_webhook_in_flight_requests 4",
    );
    // The streams past the limit were refused (the client opened them before it had the
    // server's settings); the others time out.
    let mut outcomes = Vec::new();
    for answer in answers {
        let (status, _) = tokio::time::timeout(Duration::from_secs(1) + SLACK, answer)
            .await
            .expect("every stream is answered or refused")
            .expect("stream task");
        outcomes.push(match status {
            Ok(status) => status.to_string(),
            Err(error) if format!("{error:?}").contains("REFUSED_STREAM") => "refused".to_owned(),
            Err(error) => panic!("{error:?}"),
        });
    }
    outcomes.sort();
    assert_eq!(outcomes, ["408", "408", "408", "408", "refused", "refused"]);
    drop(senders);
}

type Answer = tokio::task::JoinHandle<(Result<u16, hyper::Error>, Duration)>;

/// `count` POST /mutate streams on one HTTP/2 connection, each sending 64 KiB of body and
/// then stalling (while the returned senders live); when they started, and their answers.
async fn stalled_streams(
    server: &ServerProcess,
    count: usize,
) -> (
    Instant,
    Vec<Answer>,
    Vec<http_body_util::channel::Sender<Bytes>>,
) {
    let (sender, _connection) = http2::<Channel<Bytes>>(server).await;
    let started = Instant::now();
    let mut senders = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..count {
        let (mut body_sender, body) = Channel::<Bytes>::new(1);
        let request = hyper::Request::post(format!("https://{}/mutate", common::SERVER_NAME))
            .header("content-type", "application/json")
            .body(body)
            .expect("request");
        let mut sender = sender.clone();
        answers.push(tokio::spawn(async move {
            let response = sender.send_request(request).await;
            (
                response.map(|response| response.status().as_u16()),
                started.elapsed(),
            )
        }));
        body_sender
            .send_data(Bytes::from(vec![b' '; 64 * 1024]))
            .await
            .expect("first chunk");
        senders.push(body_sender);
    }
    (started, answers, senders)
}

/// An HTTP/2 connection to `server`; the second value resolves when the server closes it.
async fn http2<B>(
    server: &ServerProcess,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<()>,
)
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = common::connect(&server.h2_connector(), server.addr)
        .await
        .expect("connects");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
    let closed = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, closed)
}

/// Finding: slowloris after the TLS handshake (a byte every few seconds) and a client that
/// never finishes the handshake were never dropped.
#[tokio::test]
async fn slowloris_headers_and_handshakes_are_dropped_within_the_header_timeout() {
    let server = ServerProcess::start(&LIMITS).await;
    let dropped_after = common::slowloris(
        &server,
        Duration::from_millis(100),
        Duration::from_millis(500) + SLACK,
    )
    .await
    .expect("the dripping client is dropped within the header timeout");

    // A TCP client that never starts the TLS handshake.
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connects");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(500) + SLACK, tcp.read(&mut byte))
        .await
        .expect("the silent client is dropped within the header timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    eprintln!(
        "slowloris dropped after {dropped_after:?}, silent TCP after {:?}",
        started.elapsed()
    );
    let text = server.metrics().await;
    assert_metric(&text, r#"ipmgr_webhook_timeouts_total{stage="headers"} 1"#);
    assert_metric(
        &text,
        r#"ipmgr_webhook_timeouts_total{stage="handshake"} 1"#,
    );
}

/// Finding: idle TLS connections were never closed.
#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let server = ServerProcess::start(&LIMITS).await;
    // HTTP/2 after one request: the server sends GOAWAY and closes.
    let (mut sender, closed) = http2::<Full<Bytes>>(&server).await;
    let request = hyper::Request::get(format!("https://{}/healthz", common::SERVER_NAME))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("answered");
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.expect("body");
    let answered = Instant::now();
    tokio::time::timeout(Duration::from_secs(1) + SLACK, closed)
        .await
        .expect("the idle HTTP/2 connection is closed within the idle timeout")
        .expect("connection task");
    let h2_closed_after = answered.elapsed();

    // TLS without a single request.
    let started = Instant::now();
    let mut stream = common::connect(&server.connector, server.addr)
        .await
        .expect("connects");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(1) + SLACK, stream.read(&mut byte))
        .await
        .expect("the silent TLS client is dropped");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    eprintln!(
        "idle HTTP/2 closed after {h2_closed_after:?}, silent TLS after {:?}",
        started.elapsed()
    );
}

/// Finding: a Content-Length over the cap was answered 413 only after 4 MiB had arrived.
#[tokio::test]
async fn a_content_length_over_the_cap_is_refused_before_the_body_is_sent() {
    let server = ServerProcess::start(&LIMITS).await;
    let (answer, elapsed) = common::http1(
        &server.connector,
        server.addr,
        &common::post_head(MIB + 1),
        b"",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        elapsed < Duration::from_millis(500),
        "answered after {elapsed:?}, without waiting for the body"
    );
    assert_metric(
        &server.metrics().await,
        "ipmgr_webhook_body_too_large_total 1",
    );
}

/// Finding: a 3 MB uid became a 3 MB log line, and a 3 MB bad annotation value was echoed in
/// full in the denial.
#[tokio::test]
async fn long_uids_and_annotation_values_stay_out_of_answers_and_logs() {
    let server = ServerProcess::start(&LIMITS).await;
    let huge = "u".repeat(900_000);
    let long_uid = common::admission_review(
        &huge,
        &common::multus_pod(json!({"multus-ipmgr.io/mode": "later"})),
        false,
    )
    .to_string();
    let answer = common::post(&server, long_uid.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:.300}");
    assert!(answer.len() < 2048, "{} bytes: {answer:.300}", answer.len());
    assert!(answer.contains("900000 bytes"), "{answer:.600}");

    // Under the 256 KiB Kubernetes allows for annotations: read, denied, quoted shortened.
    let long_value = common::admission_review(
        "long-value",
        &common::multus_pod(json!({ "multus-ipmgr.io/mode": "v".repeat(200_000) })),
        false,
    )
    .to_string();
    let answer = common::post(&server, long_value.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.300}");
    assert!(answer.contains("\"allowed\":false"), "{answer:.600}");
    assert!(answer.contains("(200000 bytes)"), "{answer:.600}");
    assert!(answer.len() < 2048, "{} bytes: {answer:.300}", answer.len());

    let log = server.stop();
    assert!(
        log.contains("long-value"),
        "the denial is logged:\n{log:.2000}"
    );
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2048, "a log line of {longest} bytes");
}

/// The serving certificate's notAfter is a gauge, for an expiry alert.
#[tokio::test]
async fn the_certificate_expiry_is_exported() {
    let server = ServerProcess::start(&LIMITS).await;
    assert_metric(
        &server.metrics().await,
        &format!(
            "ipmgr_webhook_certificate_expiry_timestamp_seconds {}",
            server.not_after
        ),
    );
}

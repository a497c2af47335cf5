//! The HTTP/1 server under the router: runner's own accept loop over hyper, so that no flood of
//! connections takes the API (and `/healthz`) down.
//!
//! I/O shell. What it guards against, and how:
//! - a client that never finishes its request head: hyper's header-read timeout closes it. The
//!   timer also runs while hyper waits for the next head of a keep-alive connection, so it is the
//!   idle timeout too. A head is at most 96 KiB; a body must arrive within 30 s ([`Deadline`]);
//! - too many connections: at most `max_connections` are served. One more closes the connection
//!   that has been idle longest (waiting for a request head, never one inside a handler); when
//!   every one is inside a handler, the new one is answered 503 and closed. A half-sent head
//!   therefore never keeps a client that sends a whole one out;
//! - `accept` failing (EMFILE: the process is out of file descriptors): logged, and the
//!   longest-idle connection is closed to make room;
//! - hyper's own answers to a request it cannot parse (400, 414, 431, sent before any handler
//!   runs, with empty bodies) are rewritten as JSON `{"error": …}` on their way out
//!   ([`JsonCannedErrors`]).

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::io;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot, watch};
use tracing::{debug, error, warn};

/// Connections served at once, by default: half of the usual 1,024 file descriptors, leaving the
/// rest to the database, outgoing calls and mail.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// How long a client may take to send a request head (and a keep-alive connection may idle).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request body may take to arrive, from its head.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request head: above the longest URI hyper takes (64 KiB less 2 bytes, refused
/// with 414), and well below hyper's default read buffer (about 400 KiB a connection).
const MAX_HEAD_BYTES: usize = 96 * 1024;

/// The bounds of the HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

/// How many connections asked to close may still be open before no more are accepted: each
/// closes in its own task, and a flood must not outrun them.
const CLOSING_SLACK: usize = 32;

/// The connections being served.
#[derive(Default)]
struct Table {
    next_id: u64,
    /// Every connection whose task runs (one asked to close stays until its task ends).
    conns: HashMap<u64, Conn>,
    /// Those not asked to close: what the cap counts.
    live: usize,
    /// Told whenever a connection's task ends.
    ended: Arc<Notify>,
}

struct Conn {
    /// Requests inside the router now.
    in_flight: usize,
    /// Since when no request of it has been inside the router.
    idle_since: Instant,
    /// Closes it; None once it was asked to.
    close: Option<oneshot::Sender<()>>,
}

type Shared = Arc<Mutex<Table>>;

fn lock(t: &Shared) -> MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

impl Table {
    fn add(&mut self, now: Instant) -> (u64, oneshot::Receiver<()>) {
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        self.conns.insert(
            id,
            Conn {
                in_flight: 0,
                idle_since: now,
                close: Some(tx),
            },
        );
        self.live += 1;
        (id, rx)
    }

    /// Asks the connection idle longest to close; false when every one is inside a handler.
    fn evict_idlest(&mut self) -> bool {
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| c.in_flight == 0 && c.close.is_some())
            .min_by_key(|(_, c)| c.idle_since)
            .map(|(id, _)| *id);
        let Some(tx) = victim.and_then(|id| self.conns.get_mut(&id)?.close.take()) else {
            return false;
        };
        let _ = tx.send(());
        self.live -= 1;
        true
    }
}

/// A connection's place in the table, given up when its task ends.
struct Registered {
    table: Shared,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut t = lock(&self.table);
        if let Some(c) = t.conns.remove(&self.id)
            && c.close.is_some()
        {
            t.live -= 1;
        }
        t.ended.notify_waiters();
    }
}

/// Waits until fewer than `most` connections are open, counting those still closing.
async fn room_for(table: &Shared, most: usize) {
    loop {
        let ended = lock(table).ended.clone();
        // Created before the count is read, so no end between the two is missed.
        let next_end = ended.notified();
        if lock(table).conns.len() < most {
            return;
        }
        next_end.await;
    }
}

/// A request inside the router: its connection is not idle meanwhile.
struct InFlight {
    table: Shared,
    id: u64,
}

impl InFlight {
    fn new(table: &Shared, id: u64) -> InFlight {
        if let Some(c) = lock(table).conns.get_mut(&id) {
            c.in_flight += 1;
        }
        InFlight {
            table: table.clone(),
            id,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(c) = lock(&self.table).conns.get_mut(&self.id) {
            c.in_flight = c.in_flight.saturating_sub(1);
            if c.in_flight == 0 {
                c.idle_since = Instant::now();
            }
        }
    }
}

/// A log line at most once per period, saying how many were left out.
struct Throttled {
    period: Duration,
    last: Option<Instant>,
    missed: u64,
}

impl Throttled {
    fn new(period: Duration) -> Throttled {
        Throttled {
            period,
            last: None,
            missed: 0,
        }
    }

    /// Some(lines left out since the last one) when this one is to be logged.
    fn ready(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.period)
        {
            self.missed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.missed))
    }
}

/// The answer to a connection over the cap when none can be closed to make room.
fn busy_response(max: usize) -> Vec<u8> {
    json_response(
        503,
        "Service Unavailable",
        &format!("too many connections: all {max} are inside a request; try again in a second"),
        "retry-after: 1\r\n",
    )
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes; then stops accepting,
/// lets the answers being sent finish and closes idle connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let table: Shared = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    let mut tasks = tokio::task::JoinSet::new();
    let mut refused_log = Throttled::new(Duration::from_secs(10));
    let mut evicted_log = Throttled::new(Duration::from_secs(10));
    let mut accept_log = Throttled::new(Duration::from_secs(1));
    let max = limits.max_connections.max(1);
    loop {
        let accepted = tokio::select! {
            r = async {
                room_for(&table, max + CLOSING_SLACK).await;
                listener.accept().await
            } => r,
            () = &mut shutdown => break,
        };
        while tasks.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors (EMFILE, ENFILE) or memory: make room if a connection
                // is idle, and try again; the connection waits in the listen queue meanwhile.
                let (evicted, open) = {
                    let mut t = lock(&table);
                    (t.evict_idlest(), t.conns.len())
                };
                if let Some(missed) = accept_log.ready(Instant::now()) {
                    error!(
                        error = %e,
                        open_connections = open,
                        missed,
                        "cannot accept a connection ({}); {}",
                        e,
                        if evicted {
                            "closed the connection idle longest to make room"
                        } else {
                            "every connection is inside a request; trying again in 100 ms"
                        }
                    );
                }
                let pause = if evicted { 10 } else { 100 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
        };
        let now = Instant::now();
        let (id, close) = {
            let mut t = lock(&table);
            if t.live >= max {
                if !t.evict_idlest() {
                    drop(t);
                    // The send buffer of a new connection is empty: this does not block.
                    let _ = stream.try_write(&busy_response(max));
                    if let Some(missed) = refused_log.ready(now) {
                        warn!(
                            max_connections = max,
                            missed,
                            "a connection was refused (503): every one of the {max} connections is inside a request"
                        );
                    }
                    continue;
                }
                if let Some(missed) = evicted_log.ready(now) {
                    warn!(
                        max_connections = max,
                        missed,
                        "{max} connections are open: closed the one idle longest to take a new one (a client that does not finish its request, or too many idle keep-alive connections)"
                    );
                }
            }
            t.add(now)
        };
        let _ = stream.set_nodelay(true);
        tasks.spawn(connection(
            stream,
            app.clone(),
            Registered {
                table: table.clone(),
                id,
            },
            close,
            stop_rx.clone(),
            limits,
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it ends, is closed to make room, or the server stops.
async fn connection(
    stream: TcpStream,
    app: Router,
    registered: Registered,
    mut close: oneshot::Receiver<()>,
    mut stop: watch::Receiver<bool>,
    limits: Limits,
) {
    let (table, id) = (registered.table.clone(), registered.id);
    let router = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = InFlight::new(&table, id);
        let req = req.map(|body| Deadline::new(body, BODY_READ_TIMEOUT));
        let answer = hyper::service::Service::call(&router, req);
        async move {
            let r = answer.await;
            drop(busy);
            r
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(TokioIo::new(JsonCannedErrors::new(stream)), service);
    let mut conn = pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "connection ended");
                }
                break;
            }
            _ = &mut close => break,
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    drop(registered);
}

/// A request body that fails once it has taken longer than its limit to arrive (hyper has no
/// such timeout: a client trickling a body would hold its connection, busy, for ever).
struct Deadline {
    body: Incoming,
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Deadline {
    fn new(body: Incoming, limit: Duration) -> Deadline {
        Deadline {
            body,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl hyper::body::Body for Deadline {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            let secs = self.limit.as_secs();
            return Poll::Ready(Some(Err(format!(
                "the request body did not arrive within {secs} s"
            )
            .into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket under hyper, rewriting hyper's own answers to requests it could not parse (400,
/// 414, 431 with `content-length: 0`, written before any handler ran, then the connection is
/// closed) as JSON errors. hyper has no hook for them; they are recognized by their exact form
/// at the end of a write. (A handler's answer never has that form: every error under `/api/v1`
/// has a JSON body, and the pages answer HTML.)
pub(crate) struct JsonCannedErrors<T> {
    inner: T,
    /// The rewritten bytes still to send, and how many went out.
    pending: Vec<u8>,
    sent: usize,
}

impl<T> JsonCannedErrors<T> {
    pub(crate) fn new(inner: T) -> JsonCannedErrors<T> {
        JsonCannedErrors {
            inner,
            pending: Vec::new(),
            sent: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> JsonCannedErrors<T> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonCannedErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonCannedErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        if let Some((at, status)) = canned_error_at(buf) {
            let mut out = buf[..at].to_vec();
            out.extend_from_slice(&json_error_response(status));
            this.pending = out;
            // The whole of `buf` is taken; what is left of the rewrite goes out on flush.
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    /// No vectored writes: hyper then hands each response head to `poll_write` whole.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// Where hyper's answer to an unparsable request starts at the end of `buf`, and its status.
fn canned_error_at(buf: &[u8]) -> Option<(usize, u16)> {
    const START: &[u8] = b"HTTP/1.1 ";
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let at = buf.windows(START.len()).rposition(|w| w == START)?;
    let head = std::str::from_utf8(&buf[at..])
        .ok()?
        .strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.get(9..12)?.parse().ok()?;
    if !matches!(status, 400 | 414 | 431) {
        return None;
    }
    let mut empty = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" if value.trim() == "0" => empty = true,
            "connection" | "date" => {}
            _ => return None,
        }
    }
    empty.then_some((at, status))
}

fn json_error_response(status: u16) -> Vec<u8> {
    let (reason, message) = match status {
        414 => (
            "URI Too Long",
            "the request URI is longer than 65,534 bytes; send long values in a JSON body",
        ),
        431 => (
            "Request Header Fields Too Large",
            "the request head is too large: over 96 KiB, or more than 100 header fields",
        ),
        _ => (
            "Bad Request",
            "the request is not valid HTTP/1.1 (its request line, a header, or the framing of its body could not be parsed); nothing was done",
        ),
    };
    json_response(status, reason, message, "")
}

/// A whole answer with a JSON error body, after which the connection is closed.
fn json_response(status: u16, reason: &str, message: &str, extra_headers: &str) -> Vec<u8> {
    let body = serde_json::json!({ "error": message }).to_string();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n{extra_headers}connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "date: Tue, 01 Dec 2026 23:46:55 GMT\r\n";

    #[test]
    fn hypers_own_answers_are_recognized_and_nothing_else() {
        let canned = |s: &str| {
            format!("HTTP/1.1 {s}\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n")
        };
        for (text, want) in [
            (canned("414 URI Too Long"), Some((0, 414))),
            (
                canned("431 Request Header Fields Too Large"),
                Some((0, 431)),
            ),
            (canned("400 Bad Request"), Some((0, 400))),
            // After the tail of an earlier answer in the same write.
            (format!("}}{}", canned("400 Bad Request")), Some((1, 400))),
            (canned("404 Not Found"), None),
            (canned("500 Internal Server Error"), None),
            // A handler's answer: a body, or a content type.
            (
                format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n{DATE}\r\n"
                ),
                None,
            ),
            (
                format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n{DATE}\r\n{{}}"),
                None,
            ),
            (String::from("HTTP/1.1 400 Bad Request\r\n"), None),
        ] {
            assert_eq!(canned_error_at(text.as_bytes()), want, "{text:?}");
        }
    }

    #[test]
    fn the_rewrite_is_json_with_its_length() {
        for status in [400, 414, 431] {
            let r = String::from_utf8(json_error_response(status)).expect("text");
            let (head, body) = r.split_once("\r\n\r\n").expect("a head");
            assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
            assert!(
                head.contains(&format!("content-length: {}", body.len())),
                "{head}"
            );
            let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        }
        let busy = busy_response(512);
        let busy = std::str::from_utf8(&busy).expect("text");
        let (head, body) = busy.split_once("\r\n\r\n").expect("a head");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        serde_json::from_str::<serde_json::Value>(body).expect("JSON");
    }

    #[test]
    fn the_idlest_connection_is_evicted_never_a_busy_one() {
        let t0 = Instant::now();
        let mut t = Table::default();
        let (a, _ra) = t.add(t0);
        let (b, mut rb) = t.add(t0 + Duration::from_millis(1));
        let (_c, _rc) = t.add(t0 + Duration::from_millis(2));
        t.conns.get_mut(&a).expect("a").in_flight = 1;
        assert!(t.evict_idlest());
        assert_eq!(rb.try_recv(), Ok(()), "b was idle longest (a is busy)");
        assert_eq!(t.live, 2);
        assert!(t.evict_idlest(), "c next");
        assert!(!t.evict_idlest(), "only a is left, and it is busy");
        assert_eq!(t.live, 1);
        assert!(t.conns.contains_key(&b), "b stays until its task ends");
    }

    #[test]
    fn throttled_logs_count_what_they_leave_out() {
        let t0 = Instant::now();
        let mut log = Throttled::new(Duration::from_secs(10));
        assert_eq!(log.ready(t0), Some(0));
        assert_eq!(log.ready(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.ready(t0 + Duration::from_secs(2)), None);
        assert_eq!(log.ready(t0 + Duration::from_secs(11)), Some(2));
    }
}

//! HTTP and HTTPS front-end (hyper 1, HTTP/1.1).
//!
//! `GET`/`HEAD` of a package by its path, with `Content-Length` always set
//! (never chunked: modules check the length), strong `ETag` from the
//! SHA-256, `Last-Modified`, single `Range` and the conditionals of
//! [`super::range`]. `/` lists the packages as HTML and `/packages.json` as
//! JSON. Every attempt on a package path becomes one download record; the
//! body type records how many bytes were handed to the connection and
//! whether it finished.
//!
//! A request reads as its steps (`Conn::serve`): `route` (method, path
//! decoding, listings) → `authorize` (the catalog and `--allow-invalid`,
//! via `Shared::resolve`) → `response_fault` (rules that replace the
//! response) → `select_span` (preconditions, `Range`) → `open_body` (the
//! reader, with any byte-stream fault) → `package_response`. One
//! [`Attempt`] gathers what the record says; a step that ends the request
//! early returns an `Answer`, which is recorded and sent.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tracing::Instrument;

use bytes::Bytes;
use futures_util::Stream;
use http::header::{
    ACCEPT_RANGES, ALLOW, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, HOST, HeaderName,
    LAST_MODIFIED, LOCATION, RANGE, RETRY_AFTER, SERVER,
};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::delivery::{self, AckTracker, Delivery, TcpEnds, cut_short};
use super::fault::PeerWatch;
use super::fault::apply_data_fault;
use super::fault::{Action, AttemptInfo};
use super::range::{self, Precondition, RangeDecision, Validators};
use super::stall::{FlushSignal, StallGuard, Turns};
use super::zerocopy::ZeroCopyStream;
use super::{Access, Shared};
use crate::catalog::{Lookup, OpenError, Package, PackageReader, path};
use crate::dlog::{Attempt, Outcome, Protocol};

/// Timeouts of an HTTP(S) listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// Longest time to receive a request's headers (slowloris guard).
    pub header_read: Duration,
    /// Longest time for a TLS handshake.
    pub tls_handshake: Duration,
    /// Longest a response write may make no progress.
    pub stall: Duration,
}

type ResponseBody = Either<Full<Bytes>, PackageBody>;

/// Bytes read from a package per body chunk.
const BODY_CHUNK: usize = 32 * 1024;

/// `Retry-After` (RFC 9110 §10.2.3), in seconds, on a `503` for a package
/// being validated or changed under a request: a re-scan and validation
/// normally settle within it.
const RETRY_AFTER_SECS: &str = "2";

const SERVER_NAME: &str = concat!("qfota-serve/", env!("CARGO_PKG_VERSION"));

/// Accepts connections on `listener` until `shutdown` fires, then lets
/// in-flight responses finish for the grace period. With `tls`, every
/// connection is HTTPS.
pub(crate) async fn run(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    timeouts: HttpTimeouts,
) {
    let protocol = if tls.is_some() {
        Protocol::Https
    } else {
        Protocol::Http
    };
    let graceful = GracefulShutdown::new();
    let tracker = TaskTracker::new();
    let shutdown = shared.shutdown.clone();
    let limited = Some((&*shared, protocol));
    while let Some((tcp, peer, permit)) =
        super::accept(&listener, &shutdown, protocol.as_str(), limited).await
    {
        let tls = tls.clone();
        let watcher = graceful.watcher();
        let shared = Arc::clone(&shared);
        tracker.spawn(async move {
            // Holds this connection's place under the limits until it ends.
            let _permit = permit;
            // Until its first byte a connection costs its socket and this
            // small task: no buffers, no TLS state, no kernel tracking.
            let shutdown = shared.shutdown.clone();
            let mut first_byte = [0u8; 1];
            tokio::select! {
                // A peek, not `readable()`: readiness may be reported
                // before any byte is there.
                first = tokio::time::timeout(timeouts.header_read, tcp.peek(&mut first_byte)) => {
                    if !matches!(first, Ok(Ok(1))) {
                        tracing::debug!(%peer, "connection closed: nothing sent within the header timeout");
                        return;
                    }
                }
                () = shutdown.cancelled() => return,
            }
            let span = tracing::debug_span!("conn", %peer, protocol = protocol.as_str());
            let accepted = Accepted {
                tcp,
                peer,
                protocol,
                tls,
                shared,
                timeouts,
            };
            // Boxed: the idle task above stays small.
            Box::pin(accepted.serve(watcher)).instrument(span).await;
        });
    }
    // Closed now, not after the grace period: a client that connects
    // meanwhile is refused at once instead of waiting in the backlog.
    drop(listener);
    tracker.close();
    // In-flight responses run until done or until the grace period is over
    // (`Shared::closing`, kept by `Server::shutdown`); each connection then
    // closes itself and records its download.
    tokio::select! {
        () = graceful.shutdown() => {}
        () = shared.closing.cancelled() => {}
    }
    tracker.wait().await;
}

/// A connection that has sent its first byte, ready to be served.
struct Accepted {
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    protocol: Protocol,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    timeouts: HttpTimeouts,
}

impl Accepted {
    /// Sets up delivery tracking and the stall guard, completes the TLS
    /// handshake if any, and serves HTTP on the connection until it ends.
    async fn serve(self, watcher: hyper_util::server::graceful::Watcher) {
        let Accepted {
            tcp,
            peer,
            protocol,
            tls,
            shared,
            timeouts,
        } = self;
        let _ = tcp.set_nodelay(true);
        let ack = tcp
            .local_addr()
            .ok()
            .and_then(|local| delivery::track(TcpEnds { local, peer }));
        // Judged on its first 8 MiB: a fast client gets larger writes.
        // Slices of resident copies go out with sendfile(2).
        let stream = ZeroCopyStream::new(tcp);
        let mut guard = StallGuard::new(stream, timeouts.stall)
            .with_speed_check(ZeroCopyStream::pace_responses, Turns::Capped);
        if let Some(ack) = &ack {
            guard = guard.with_ack(Arc::clone(ack));
        }
        // The first request starts with the connection's first byte.
        guard.flush_signal().await_request();
        let conn = Arc::new(Conn {
            shared,
            peer,
            protocol,
            stalled: guard.stalled_flag(),
            flushes: guard.flush_signal(),
            ack,
            close: CancellationToken::new(),
            timeouts,
            tls_overhead: AtomicU64::new(if tls.is_some() {
                delivery::TLS_RECORD_OVERHEAD
            } else {
                0
            }),
            read_at_request: AtomicU64::new(0),
        });
        match tls {
            None => serve_connection(guard, conn, timeouts, watcher).await,
            // Boxed: an HTTP connection's task does not carry the room the
            // TLS handshake and a TLS stream need (rustls state, kilobytes
            // per connection: 10,000 slow downloads would pay for it).
            Some(acceptor) => Box::pin(serve_tls(guard, acceptor, conn, watcher)).await,
        }
    }
}

/// The TLS handshake on `guard`, then HTTP over it; a handshake that fails,
/// times out or is still running when the grace period ends is recorded
/// (status [`NO_ANSWER`]).
async fn serve_tls(
    guard: StallGuard<ZeroCopyStream>,
    acceptor: TlsAcceptor,
    conn: Arc<Conn>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let (peer, timeouts) = (conn.peer, conn.timeouts);
    let handshake = Attempt::start(conn.protocol, peer, "");
    let closing = conn.shared.closing.clone();
    let accept = tokio::time::timeout(timeouts.tls_handshake, acceptor.accept(guard));
    let accepted = tokio::select! {
        accepted = accept => match accepted {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(err)) => Err(super::tls::explain_handshake_error(&err)),
            Err(_) => Err(format!(
                "TLS handshake not complete within {} s",
                timeouts.tls_handshake.as_secs()
            )),
        },
        // Shutdown's grace period is over.
        () = closing.cancelled() => {
            Err("TLS handshake not complete when the server shut down".to_string())
        }
    };
    match accepted {
        Ok(stream) => {
            // The handshake's bytes are no request: a connection that
            // sends none after it leaves no record at the header timeout.
            conn.read_at_request
                .store(conn.flushes.read(), Ordering::Release);
            // Body counts read through the chosen suite's record size.
            if let Some(suite) = stream.get_ref().1.negotiated_cipher_suite() {
                let overhead = delivery::tls_record_overhead(suite);
                conn.tls_overhead.store(overhead, Ordering::Release);
            }
            serve_connection(stream, conn, timeouts, watcher).await
        }
        Err(failed) => {
            // A module that cannot speak the server's TLS reports 701 and
            // never sends a request: the record says why.
            tracing::info!(%peer, "{failed}");
            conn.shared
                .log
                .emit(handshake.record(NO_ANSWER, Outcome::Refused, failed));
        }
    }
}

/// `status` of a record for a connection that got no HTTP answer (TLS
/// handshake failed, HTTP/2 preface on the HTTP/1.1 port).
pub const NO_ANSWER: u16 = 0;

async fn serve_connection<S>(
    io: S,
    conn: Arc<Conn>,
    timeouts: HttpTimeouts,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let close = conn.close.clone();
    let recorder = Arc::clone(&conn);
    let closing = conn.shared.closing.clone();
    let service = hyper::service::service_fn(move |req| {
        let conn = Arc::clone(&conn);
        async move { Ok::<_, Infallible>(conn.handle(req).await) }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        // Vectored writes: hyper queues body frames as they are. A frame of
        // a resident copy is a reference to the shared package, so a slow
        // connection holds no buffer of its own; frames read from a file
        // are bounded by `max_buf_size` (hyper stops polling the body
        // while more than that is queued).
        .writev(true)
        .max_buf_size(2 * BODY_CHUNK)
        // A request followed by the client's FIN (`nc -N`, a client that
        // shuts down its sending side) is still answered (RFC 9112 §9.6).
        .half_close(true)
        .serve_connection(TokioIo::new(io), service);
    tokio::select! {
        ended = watcher.watch(http) => {
            if let Err(err) = ended {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
                if let Some(status) = parse_error_status(&err) {
                    recorder.record_unanswered(status, format!("malformed request: {err}"));
                } else if recorder.request_begun()
                    && let Some(why) = unfinished_request(&err, timeouts.header_read)
                {
                    recorder.record_unanswered(NO_ANSWER, why);
                }
            }
        }
        // The peer stopped acknowledging after the last body byte: drop
        // the connection (and whatever the kernel still holds for it).
        _ = close.cancelled() => tracing::debug!(%peer, "closing a stalled connection"),
        // Shutdown's grace period is over: the body in flight is dropped
        // and recorded as cut short by the shutdown.
        () = closing.cancelled() => tracing::debug!(%peer, "closed at the end of the shutdown grace period"),
    }
    // Whoever waits on this connection's flushes stops waiting.
    close.cancel();
}

/// The status hyper answered a request it could not parse with (its
/// `on_error`: 400, 414 `URI too long`, 431 head too large), or
/// [`NO_ANSWER`] for an HTTP/2 preface, which it closes on; `None` for
/// an error that is no parse error (the peer went away, a timeout).
fn parse_error_status(err: &hyper::Error) -> Option<u16> {
    if !err.is_parse() {
        None
    } else if err.is_parse_version_h2() {
        Some(NO_ANSWER)
    } else if err.to_string().starts_with("internal error") {
        // hyper's own failure (`Parse::Internal`): it answers nothing.
        Some(NO_ANSWER)
    } else if err.is_parse_too_large() {
        // hyper tells the two apart only in its message.
        Some(if err.to_string().contains("URI") {
            StatusCode::URI_TOO_LONG.as_u16()
        } else {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE.as_u16()
        })
    } else {
        Some(StatusCode::BAD_REQUEST.as_u16())
    }
}

/// Why a connection ended in the middle of a request's header, for its
/// record: the client closed it (a module that gave up, a link lost), or
/// the header did not end within `header_read` (hyper's timeout also ends
/// an idle keep-alive connection: [`Conn::request_begun`] tells them
/// apart). `None` for other errors.
fn unfinished_request(err: &hyper::Error, header_read: Duration) -> Option<String> {
    // Over TLS a client that closes without `close_notify` ends the
    // stream with an I/O error, not hyper's "incomplete message".
    let lost = std::iter::successors(std::error::Error::source(err), |e| e.source())
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
            )
        });
    if err.is_incomplete_message() || lost {
        Some("request cut off: the connection closed before the request's header ended".into())
    } else if err.is_timeout() {
        Some(format!(
            "request header not complete within {} s: connection closed, nothing answered",
            header_read.as_secs()
        ))
    } else {
        None
    }
}

/// One accepted connection's context.
struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    protocol: Protocol,
    stalled: Arc<AtomicBool>,
    flushes: Arc<FlushSignal>,
    /// The kernel's acknowledgement counters for this connection; `None`
    /// when they cannot be read (records then count bytes written).
    ack: Option<Arc<AckTracker>>,
    /// Cancelled when the connection has ended, or to end it (stalled
    /// after its last body byte).
    close: CancellationToken,
    timeouts: HttpTimeouts,
    /// Bytes each TLS record adds under the negotiated suite
    /// ([`delivery::tls_record_overhead`]); 0 without TLS.
    tls_overhead: AtomicU64,
    /// Bytes read from the connection ([`FlushSignal::read`]) when its
    /// latest request reached [`Conn::handle`].
    read_at_request: AtomicU64,
}

impl Conn {
    /// Bytes each TLS record adds on this connection (0 without TLS).
    fn tls_overhead(&self) -> u64 {
        self.tls_overhead.load(Ordering::Acquire)
    }

    /// Whether bytes came since the latest request was handled: a next
    /// request has begun (an idle keep-alive connection has sent none, or
    /// a stray empty line). Under pipelining, bytes of the next request
    /// read together with the latest one are not seen.
    fn request_begun(&self) -> bool {
        let since = self
            .flushes
            .read()
            .saturating_sub(self.read_at_request.load(Ordering::Acquire));
        // Over plain HTTP a lone CRLF between requests is no request (RFC
        // 9112 §2.2 has servers ignore one): more than two bytes are. Over
        // TLS any record is counted.
        let ignored = if self.tls_overhead() == 0 { 2 } else { 0 };
        since > ignored
    }

    /// Records a request that never reached [`Conn::handle`]: hyper refused
    /// to parse it. No path is known.
    fn record_unanswered(&self, status: u16, reason: String) {
        // From the request's first byte (the connection's, for its first
        // request), not from when it failed.
        let attempt = match self.flushes.request_arrived() {
            Some(at) => Attempt::started_at(self.protocol, self.peer, "", at),
            None => Attempt::start(self.protocol, self.peer, ""),
        };
        self.shared
            .log
            .emit(attempt.record(status, Outcome::Refused, reason));
    }

    /// Answers one request; every attempt on a package path is recorded
    /// once (now for an answer without a body, when the body ends
    /// otherwise).
    async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<ResponseBody> {
        self.read_at_request
            .store(self.flushes.read(), Ordering::Release);
        self.flushes.await_request();
        let path = req.uri().path().trim_start_matches('/');
        let mut attempt = Attempt::start(self.protocol, self.peer, path);
        let mut response = match self.serve(&req, &mut attempt).await {
            Ok(resp) => resp,
            Err(answer) => {
                let reason = answer.reason.clone();
                self.shared.log.emit(attempt.record(
                    answer.status.as_u16(),
                    answer.outcome,
                    reason,
                ));
                answer.into_response()
            }
        };
        // A request content never read (no request here takes one) is not
        // sent after `Expect: 100-continue` unless the client stops
        // waiting, so hyper closes the connection after this answer: say
        // so (RFC 9110 §10.1.1).
        let expects = req
            .headers()
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects {
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// The request's steps: route → resolve and authorize → faults that
    /// replace the response → preconditions and Range → send. An `Err` is
    /// the answer to record and send instead.
    async fn serve(
        self: &Arc<Self>,
        req: &Request<Incoming>,
        attempt: &mut Attempt,
    ) -> Result<Response<ResponseBody>, Answer> {
        let key = match check_host(req).and_then(|()| route(req.method(), req.uri().path())) {
            Ok(Route::Index) => return Ok(index_html(&self.shared, "")),
            Ok(Route::Json) => return Ok(index_json(&self.shared)),
            Ok(Route::Key(key)) => key,
            Err(answer) => {
                self.note_package(req.uri().path(), attempt);
                return Err(answer);
            }
        };
        // A folder answers with its listing, so clients that "cd" over
        // HTTP (lftp, browsers) find the packages in it.
        match self.shared.catalog.lookup(&key) {
            Lookup::Directory => return Ok(index_html(&self.shared, &key)),
            // `pkg.zip/` names a folder that is not there.
            _ if req.uri().path().ends_with('/') => {
                attempt.path = key;
                return Err(Answer::new(
                    StatusCode::NOT_FOUND,
                    Outcome::NotFound,
                    "no folder at that path",
                ));
            }
            _ => {}
        }
        attempt.path = key;
        let package = self.authorize(attempt)?;
        self.response_fault(attempt)?;
        let validators = Validators {
            etag: &package.etag(),
            // Never later than the response's Date (RFC 9110 §8.8.2.1).
            last_modified: package.modified.min(SystemTime::now()),
        };
        let span = select_span(req, &validators, package.size, attempt)?;
        let body = if req.method() == Method::HEAD {
            self.shared.log.emit(attempt.record(
                span.status.as_u16(),
                Outcome::HeadersOnly,
                "HEAD",
            ));
            Either::Left(Full::new(Bytes::new()))
        } else {
            let reader = self
                .open_body(&package, span.start..span.start + span.len, attempt)
                .await?;
            Either::Right(self.package_body(reader, &span, attempt.clone()))
        };
        Ok(package_response(body, &span, &package, &validators))
    }

    /// The package `raw_path` names, if any, into a refused attempt's
    /// record (its path as a key, its size and SHA-256): a 405 or a 400
    /// for a bad `Host` still says which package was asked for.
    fn note_package(&self, raw_path: &str, attempt: &mut Attempt) {
        if let Ok(Route::Key(key)) = route(&Method::GET, raw_path)
            && let Lookup::Package(package) = self.shared.catalog.lookup(&key)
        {
            attempt.package = Some((package.size, package.sha256.clone()));
            attempt.path = key;
        }
    }

    /// Resolves the attempt's path to a package that may be served (see
    /// [`Shared::resolve`]); a refusal is a 404, or a 503 while the
    /// package is being validated.
    fn authorize(&self, attempt: &mut Attempt) -> Result<Arc<Package>, Answer> {
        let facts = |p: &Package| (p.size, p.sha256.clone());
        match self.shared.resolve(&attempt.path) {
            Access::Serve(package) => {
                attempt.package = Some(facts(&package));
                Ok(package)
            }
            Access::Refuse {
                outcome,
                reason,
                package,
                retry,
            } => {
                attempt.package = package.as_deref().map(facts);
                if retry {
                    let busy = Answer::new(StatusCode::SERVICE_UNAVAILABLE, outcome, reason);
                    return Err(busy.header(RETRY_AFTER, RETRY_AFTER_SECS));
                }
                Err(Answer::new(StatusCode::NOT_FOUND, outcome, reason))
            }
        }
    }

    /// The attempt as fault rules see it.
    fn fault_info<'a>(&self, attempt: &'a Attempt) -> AttemptInfo<'a> {
        AttemptInfo {
            protocol: self.protocol,
            peer: self.peer.ip(),
            user: None,
            path: Some(&attempt.path),
        }
    }

    /// Applies a rule that replaces the response (`not-found`, `status=`).
    /// Rules that change the bytes wait until a body is really sent
    /// ([`Conn::open_body`]), so a 304/416/503 does not use up a rule's
    /// `times`.
    fn response_fault(&self, attempt: &mut Attempt) -> Result<(), Answer> {
        let fault = self.shared.faults.select(&self.fault_info(attempt), |a| {
            matches!(a, Action::NotFound | Action::Status(_))
        });
        attempt.fault = fault.as_ref().map(|f| f.name.clone());
        match fault.map(|f| f.action) {
            Some(Action::NotFound) => Err(Answer::new(
                StatusCode::NOT_FOUND,
                Outcome::NotFound,
                "fault: not-found",
            )),
            Some(Action::Status(code)) => Err(status_fault(code, &attempt.path)),
            _ => Ok(()),
        }
    }

    /// Opens the package at `start` and applies a rule that changes the
    /// bytes, if one matches. A package changed since it was validated is
    /// a 503 to retry shortly; any other open error a 500.
    async fn open_body(
        &self,
        package: &Package,
        range: std::ops::Range<u64>,
        attempt: &mut Attempt,
    ) -> Result<BodySource, Answer> {
        let applied = self.shared.faults.select(&self.fault_info(attempt), |a| {
            a.changes(&range, package.size)
        });
        if applied.is_none()
            && let Some(copy) = self.shared.catalog.resident(package)
        {
            // The shared, validated copy: sliced, never copied.
            return Ok(BodySource::Resident(
                copy.slice(range.start as usize..range.end as usize),
            ));
        }
        let reader = match self.shared.catalog.open(package, range).await {
            Ok(reader) => reader,
            Err(err @ OpenError::Changed) => {
                let answer = Answer::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Outcome::Refused,
                    err.to_string(),
                );
                return Err(answer.header(RETRY_AFTER, RETRY_AFTER_SECS));
            }
            Err(err) => {
                return Err(Answer::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Outcome::Refused,
                    err.to_string(),
                ));
            }
        };
        Ok(BodySource::Reader(ReaderStream::with_capacity(
            apply_data_fault(
                reader,
                applied,
                attempt,
                package.size,
                self.shared.shutdown.clone(),
                self.shared.stall_timeout,
                self.ack.as_ref().map(|ack| {
                    let peer = PeerWatch::default();
                    let _ = peer.set(ack.ends());
                    peer
                }),
            ),
            BODY_CHUNK,
        )))
    }

    /// The body of `span` read from `reader`; it records `attempt` when it
    /// ends.
    fn package_body(
        self: &Arc<Self>,
        source: BodySource,
        span: &Span,
        attempt: Attempt,
    ) -> PackageBody {
        PackageBody {
            stream: source,
            expected: span.len,
            sent: 0,
            status: span.status,
            draining: None,
            phase: BodyPhase::Fresh,
            final_flush: None,
            end: None,
            start: None,
            finish: Some(Finish {
                conn: Arc::clone(self),
                attempt,
            }),
        }
    }
}

/// Where a request goes, by method and path.
#[derive(Debug, PartialEq)]
enum Route {
    /// `/`: the HTML listing of every package.
    Index,
    /// `/packages.json`.
    Json,
    /// Anything else: a catalog key (a package or a folder).
    Key(String),
}

/// Routes a request: only `GET` and `HEAD` (else 405 with `Allow`), and a
/// path that percent-decodes and normalizes to a catalog key (else 400).
fn route(method: &Method, raw_path: &str) -> Result<Route, Answer> {
    if method != Method::GET && method != Method::HEAD {
        let answer = Answer::new(
            StatusCode::METHOD_NOT_ALLOWED,
            Outcome::Refused,
            format!("method {method} not allowed"),
        );
        return Err(answer.header(ALLOW, "GET, HEAD"));
    }
    let key = path::percent_decode(raw_path)
        .and_then(|d| path::normalize(&d))
        .map_err(|err| Answer::new(StatusCode::BAD_REQUEST, Outcome::Refused, err.to_string()))?;
    Ok(match key.as_str() {
        "" => Route::Index,
        "packages.json" => Route::Json,
        _ => Route::Key(key),
    })
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, and any request
/// with two `Host` lines or one that is no `host[:port]`, is answered 400.
fn check_host<B>(req: &Request<B>) -> Result<(), Answer> {
    let refuse = |why: &str| {
        Answer::new(
            StatusCode::BAD_REQUEST,
            Outcome::Refused,
            format!("{why} (RFC 9112 §3.2)"),
        )
    };
    // A package request's target is a path (origin-form) or a whole URL
    // (absolute-form); a bare `host[:port]` (authority-form, CONNECT's) or
    // a URL with credentials is no request for a package (RFC 9112 §3.2,
    // RFC 9110 §4.2.4).
    let uri = req.uri();
    if uri.scheme().is_none() && uri.authority().is_some() {
        return Err(refuse("request target is neither a path nor a URL"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(refuse("request target carries credentials"));
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if req.version() == Version::HTTP_11 => Err(refuse("no Host header")),
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(refuse("more than one Host header")),
        (Some(host), None) => {
            // Empty is valid syntax (an empty reg-name, RFC 3986 §3.2.2).
            let valid = host.to_str().ok().is_some_and(|h| {
                h.is_empty() || (!h.contains('@') && h.parse::<http::uri::Authority>().is_ok())
            });
            if valid {
                Ok(())
            } else {
                Err(refuse("invalid Host header"))
            }
        }
    }
}

/// The answer to a `status=<code>` rule; a 3xx points back at the package
/// with a `Location`, so a client that follows it gets the package.
fn status_fault(code: u16, key: &str) -> Answer {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let answer = Answer::new(status, Outcome::Refused, format!("fault: status {code}"));
    if status.is_redirection() {
        answer.header(LOCATION, &format!("/{key}?redirected=1"))
    } else {
        answer
    }
}

/// The part of a package a request gets: the status (200 or 206), the
/// first byte and the length in bytes.
#[derive(Debug, PartialEq)]
struct Span {
    status: StatusCode,
    start: u64,
    len: u64,
}

/// Evaluates the preconditions (304, 412) and the `Range` header (206,
/// 416) of [`super::range`] against a package of `size` bytes, noting the
/// first byte asked for in `attempt` (a 416's too). `Range` is applied to
/// a GET only (RFC 9110 §14.2): a HEAD gets the 200 headers.
fn select_span<B>(
    req: &Request<B>,
    validators: &Validators<'_>,
    size: u64,
    attempt: &mut Attempt,
) -> Result<Span, Answer> {
    let headers = req.headers();
    let honour_range = match range::evaluate_preconditions(headers, validators) {
        Precondition::NotModified => {
            let mut answer = Answer::new(
                StatusCode::NOT_MODIFIED,
                Outcome::HeadersOnly,
                "not modified",
            );
            answer.headers = validator_headers(validators);
            return Err(answer);
        }
        Precondition::Failed => {
            return Err(Answer::new(
                StatusCode::PRECONDITION_FAILED,
                Outcome::Refused,
                "precondition failed",
            ));
        }
        Precondition::Proceed { honour_range } => honour_range,
    };
    // Range is no list (RFC 9110 §14.2): a request with two is ignored as
    // a whole, as a malformed one is, and gets the full package.
    let mut ranges = headers.get_all(RANGE).iter();
    let only = ranges.next().filter(|_| ranges.next().is_none());
    let decision = match only.and_then(|v| v.to_str().ok()) {
        Some(value) if honour_range && req.method() == Method::GET => {
            range::parse_range(value, size)
        }
        _ => RangeDecision::Full,
    };
    let span = match decision {
        RangeDecision::Full => Span {
            status: StatusCode::OK,
            start: 0,
            len: size,
        },
        RangeDecision::Partial { start, end } => Span {
            status: StatusCode::PARTIAL_CONTENT,
            start,
            len: end - start + 1,
        },
        RangeDecision::Unsatisfiable { start } => {
            attempt.range_start = start;
            let answer = Answer::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                Outcome::Refused,
                "range not satisfiable",
            );
            return Err(answer.header(CONTENT_RANGE, &format!("bytes */{size}")));
        }
    };
    attempt.range_start = span.start;
    Ok(span)
}

/// The response carrying `body` (the package part of `span`, or nothing for
/// `HEAD`): `Content-Length` always (never chunked: modules check it),
/// `Content-Range` for a 206, the validators.
fn package_response(
    body: ResponseBody,
    span: &Span,
    package: &Package,
    validators: &Validators<'_>,
) -> Response<ResponseBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = span.status;
    let h = resp.headers_mut();
    h.insert(SERVER, HeaderValue::from_static(SERVER_NAME));
    h.insert(CONTENT_LENGTH, HeaderValue::from(span.len));
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(content_type(&package.path)),
    );
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.extend(validator_headers(validators));
    if span.status == StatusCode::PARTIAL_CONTENT {
        let last = span.start + span.len - 1;
        let value = format!("bytes {}-{last}/{}", span.start, package.size);
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(CONTENT_RANGE, v);
        }
    }
    resp
}

/// An answer without a package body (a refusal, a fault's reply, a 304),
/// with what its record says.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    outcome: Outcome,
    /// For the record and, but for a 304, the text body.
    reason: String,
    /// Headers beyond `Server`, `Content-Type` and `Content-Length`.
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Answer {
    fn new(status: StatusCode, outcome: Outcome, reason: impl Into<String>) -> Self {
        Answer {
            status,
            outcome,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header; a value that is no valid header is left out.
    fn header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    /// The reason as a text body, except for a 304, which has none
    /// (RFC 9110 §15.4.5).
    fn into_response(self) -> Response<ResponseBody> {
        let mut resp = if self.status == StatusCode::NOT_MODIFIED {
            empty_response(self.status)
        } else {
            text_response(self.status, format!("{}\n", self.reason))
        };
        resp.headers_mut().extend(self.headers);
        resp
    }
}

/// `ETag` and `Last-Modified`, for a 200/206 and a 304 alike.
fn validator_headers(v: &Validators<'_>) -> Vec<(HeaderName, HeaderValue)> {
    let date = httpdate::fmt_http_date(v.last_modified);
    [(ETAG, v.etag), (LAST_MODIFIED, date.as_str())]
        .into_iter()
        .filter_map(|(name, value)| Some((name, HeaderValue::from_str(value).ok()?)))
        .collect()
}

/// `application/octet-stream` for `.bin` images, `application/zip` otherwise.
fn content_type(path: &str) -> &'static str {
    if path.to_ascii_lowercase().ends_with(".bin") {
        "application/octet-stream"
    } else {
        "application/zip"
    }
}

fn empty_response(status: StatusCode) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::new())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(SERVER, HeaderValue::from_static(SERVER_NAME));
    resp
}

fn text_response(status: StatusCode, text: String) -> Response<ResponseBody> {
    body_response(status, "text/plain; charset=utf-8", text)
}

fn body_response(status: StatusCode, ctype: &'static str, text: String) -> Response<ResponseBody> {
    let len = text.len();
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from(text))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(SERVER, HeaderValue::from_static(SERVER_NAME));
    h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

fn index_json(shared: &Shared) -> Response<ResponseBody> {
    let packages = shared.catalog.packages();
    let list: Vec<&Package> = packages.iter().map(|p| p.as_ref()).collect();
    match serde_json::to_string_pretty(&list) {
        Ok(json) => body_response(StatusCode::OK, "application/json", json),
        Err(err) => text_response(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

/// The listing page of the packages under `folder` ([`super::listing`]).
fn index_html(shared: &Shared, folder: &str) -> Response<ResponseBody> {
    body_response(
        StatusCode::OK,
        "text/html; charset=utf-8",
        shared.listing(folder),
    )
}

/// Emits the download record when the body is finished or dropped.
struct Finish {
    conn: Arc<Conn>,
    attempt: Attempt,
}

/// Where a body is: its first poll lets hyper flush the headers, so the
/// kernel's written count then marks where the body starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyPhase {
    /// Not polled yet.
    Fresh,
    /// Polled once; hyper is flushing the headers.
    HeadersFlushing,
    /// Sending package bytes.
    Streaming,
}

/// A package body of exactly `expected` bytes. When the last byte is handed
/// to hyper, the record waits for the peer to acknowledge everything
/// ([`Conn::deliver`]); when hyper drops it early — the client went away, a
/// write stalled, the server shut down — it records at once how many bytes
/// were handed over and how many the peer acknowledged.
pub(crate) struct PackageBody {
    stream: BodySource,
    expected: u64,
    sent: u64,
    status: StatusCode,
    finish: Option<Finish>,
    /// Set when the body must end short: the flush count to wait past.
    draining: Option<u64>,
    phase: BodyPhase,
    /// The connection's flush count when the last byte was handed over: a
    /// later completed flush has written it to the kernel.
    final_flush: Option<u64>,
    /// Over TLS, the connection's written count at that later flush: where
    /// the body's last record ends ([`FlushSignal::end_at_next_flush`]).
    end: Option<Arc<OnceLock<u64>>>,
    /// Where this body starts in the connection's byte stream (bytes
    /// written before it), once its headers are flushed: its own, since
    /// the next response on the connection marks a new start while this
    /// one's acknowledgements may still be awaited.
    start: Option<u64>,
}

impl PackageBody {
    /// Records the attempt, once. Every byte handed over without an error:
    /// the record waits for the peer's acknowledgements in a task. Else
    /// aborted now, with why.
    fn finish(&mut self, error: Option<&io::Error>) {
        let Some(mut f) = self.finish.take() else {
            return;
        };
        f.attempt.bytes_sent = self.sent;
        if self.sent == self.expected && error.is_none() {
            let flushed_before = self.final_flush.unwrap_or_else(|| f.conn.flushes.count());
            let conn = Arc::clone(&f.conn);
            let status = self.status.as_u16();
            let (start, end) = (self.start, self.end.take());
            f.conn.shared.transfers.spawn(conn.deliver(
                f.attempt,
                status,
                flushed_before,
                start,
                end,
            ));
            return;
        }
        let status = self.status.as_u16();
        let expected = self.expected;
        let cause = error.map(|err| {
            if f.attempt.fault.is_some() {
                err.to_string()
            } else {
                format!("read error: {err}")
            }
        });
        let start = self.start;
        let Some(ack) = f.conn.ack.clone() else {
            f.attempt.bytes_sent = f.conn.body_bytes_taken(start, self.sent);
            let reason = abort_reason(&f, cause, expected);
            f.conn
                .shared
                .log
                .emit(f.attempt.record(status, Outcome::Aborted, reason));
            return;
        };
        // The connection is ending: its final counters arrive when the
        // kernel destroys the socket.
        let transfers = f.conn.shared.transfers.clone();
        f.attempt.end_now();
        let sent = self.sent;
        transfers.spawn(async move {
            ack.refresh();
            ack.wait_closed(CLOSE_WAIT_LIMIT).await;
            // What hyper still held when the body failed never reached
            // the kernel; and the acknowledged count may include the
            // connection's FIN, capped away by the bytes sent.
            f.attempt.bytes_sent = f.conn.body_bytes_taken(start, sent);
            let start = start.unwrap_or_else(|| ack.body_start());
            f.attempt.bytes_acked =
                ack.body_acked(start, f.attempt.bytes_sent, f.conn.tls_overhead());
            let reason = abort_reason(&f, cause, expected);
            f.conn
                .shared
                .log
                .emit(f.attempt.record(status, Outcome::Aborted, reason));
        });
    }

    /// The body ended `sent` bytes short of `expected` (a `drop-after`
    /// fault, or a package shorter than validated). Ending short makes
    /// hyper close the connection and drop whatever it still buffers; so
    /// wait for one more completed flush, then end with an error, and the
    /// client gets exactly `sent` bytes.
    fn end_short(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let Some((flushes, faulted)) = self
            .finish
            .as_ref()
            .map(|f| (Arc::clone(&f.conn.flushes), f.attempt.fault.is_some()))
        else {
            return Poll::Ready(None);
        };
        let since = *self.draining.get_or_insert(flushes.count());
        flushes.register(cx);
        if flushes.count() <= since {
            return Poll::Pending;
        }
        let err = if faulted {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("fault: connection closed after {} bytes", self.sent),
            )
        } else {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "package shorter than its validated size",
            )
        };
        self.finish(Some(&err));
        Poll::Ready(Some(Err(err)))
    }

    /// Advances the first two phases; `Pending` while hyper flushes the
    /// headers.
    fn start(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.phase {
            BodyPhase::Fresh => {
                // Returning Pending once makes hyper flush the headers
                // before the first body byte; wake at once to go on.
                self.phase = BodyPhase::HeadersFlushing;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            BodyPhase::HeadersFlushing => {
                self.phase = BodyPhase::Streaming;
                // The headers are written: the connection's own count
                // (the kernel's, the guard wraps the socket from its
                // start) is where the body begins.
                if let Some(f) = &self.finish {
                    let start = f.conn.flushes.written();
                    if let Some(ack) = &f.conn.ack {
                        ack.mark_body_start_at(start);
                    }
                    self.start = Some(start);
                }
                Poll::Ready(())
            }
            BodyPhase::Streaming => Poll::Ready(()),
        }
    }
}

/// How long an ended connection's record waits for the kernel's final
/// counters (the socket is destroyed when hyper drops the connection).
const CLOSE_WAIT_LIMIT: Duration = Duration::from_secs(2);

/// Why a body ended early: `cause` (a read error, a fault's own words),
/// else what the connection knows (a stalled write, shutdown), else the
/// client left — with how much the peer acknowledged.
fn abort_reason(f: &Finish, cause: Option<String>, expected: u64) -> String {
    if let Some(cause) = cause {
        return cause;
    }
    let ending = if f.conn.stalled.load(Ordering::Relaxed) {
        format!(
            "then stopped acknowledging for {} s (write stalled)",
            f.conn.timeouts.stall.as_secs()
        )
    } else if f.conn.shared.shutdown.is_cancelled() {
        "then the server shut down".to_string()
    } else {
        "then closed the connection".to_string()
    };
    cut_short(f.attempt.bytes_acked, expected, &ending)
}

impl Conn {
    /// Body bytes of the `handed` handed to hyper that the kernel took:
    /// what this connection wrote past the body's `start` (over TLS, the
    /// plaintext that much ciphertext carries at most), never more than
    /// `handed`; `handed` when the body never started.
    fn body_bytes_taken(&self, start: Option<u64>, handed: u64) -> u64 {
        let Some(start) = start else {
            return handed;
        };
        let stream = self.flushes.written().saturating_sub(start);
        delivery::body_bytes(stream, self.tls_overhead()).min(handed)
    }

    /// Where a body of `sent` bytes from stream offset `start` lies, once
    /// the flush after its last byte was handed over has completed: over
    /// plain TCP, `sent` bytes on; over TLS, up to `end`, the written count
    /// at that flush, where its last record ends. Without that count (the
    /// connection ended before the flush), the count written now.
    fn span(&self, start: u64, sent: u64, end: Option<&OnceLock<u64>>) -> delivery::Span {
        let plain = delivery::Span::plain(start, sent);
        let Some(end) = end else {
            return plain;
        };
        let end = end.get().copied().unwrap_or_else(|| self.flushes.written());
        delivery::Span {
            start,
            end: end.max(plain.end),
        }
    }

    /// After the last body byte was handed to hyper: waits until hyper has
    /// written it to the kernel (a flush past `flushed_before`) and the peer
    /// acknowledged every byte of the body's [`delivery::Span`] from its
    /// `start` (stream offset; `None`: the tracker's last mark) to its last
    /// byte (over HTTPS, the written count `end` holds once that flush
    /// completed: its last record's), then records the attempt —
    /// `complete` only then. A connection that stalls here is closed.
    async fn deliver(
        self: Arc<Self>,
        mut attempt: Attempt,
        status: u16,
        flushed_before: u64,
        start: Option<u64>,
        end: Option<Arc<OnceLock<u64>>>,
    ) {
        let sent = attempt.bytes_sent;
        let Some(ack) = self.ack.clone() else {
            // No kernel counters: the best this host can say.
            attempt.bytes_acked = sent;
            let record = attempt.record(
                status,
                Outcome::Complete,
                "sent (acknowledgements unreadable)",
            );
            self.shared.log.emit(record);
            return;
        };
        // Waiting ends with the shutdown grace period at the latest.
        let cancel = self.shared.closing.clone().cancelled_owned();
        let flushed = std::future::poll_fn(|cx| {
            self.flushes.register(cx);
            if self.flushes.count() > flushed_before {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        // The stall guard ends a connection whose flush makes no progress,
        // so this wait ends too.
        let all_written = tokio::select! {
            biased;
            _ = flushed => true,
            _ = self.close.cancelled() => false,
        };
        // This body's own start (the tracker's moves on with the next
        // response on the connection).
        let start = start.unwrap_or_else(|| ack.body_start());
        let span = self.span(start, sent, end.as_deref());
        let mut delivery = ack.wait_all_acked(span, self.timeouts.stall, cancel).await;
        if delivery == Delivery::Gone {
            // Closed before a look saw the end: the kernel's final
            // counters (at the socket's destruction) say whether the body
            // was acknowledged.
            attempt.end_now();
            ack.wait_closed(CLOSE_WAIT_LIMIT).await;
            if ack.delivered(span) {
                delivery = Delivery::Acked;
            }
        }
        if !all_written {
            // What hyper still held when the connection ended never
            // reached the kernel.
            attempt.bytes_sent = self.body_bytes_taken(Some(start), sent);
            if delivery == Delivery::Acked {
                delivery = Delivery::Gone;
            }
        }
        attempt.bytes_acked = match delivery {
            Delivery::Acked => sent,
            _ => ack.body_acked(start, attempt.bytes_sent, self.tls_overhead()),
        };
        if delivery == Delivery::Stalled {
            // Nothing more will come of it: free the connection.
            self.close.cancel();
        }
        let (outcome, reason) = verdict(delivery, attempt.bytes_acked, sent, self.timeouts.stall);
        self.shared
            .log
            .emit(attempt.record(status, outcome, reason));
    }
}

/// The record's outcome and reason for a body of `sent` bytes whose
/// delivery ended as `delivery`, with `acked` bytes acknowledged.
fn verdict(delivery: Delivery, acked: u64, sent: u64, stall: Duration) -> (Outcome, String) {
    let ending = match delivery {
        Delivery::Acked => return (Outcome::Complete, "acknowledged".to_string()),
        Delivery::Gone => "then closed the connection".to_string(),
        Delivery::Stalled => format!("then stopped acknowledging for {} s", stall.as_secs()),
        Delivery::Cancelled => "then the server shut down".to_string(),
    };
    (Outcome::Aborted, cut_short(acked, sent, &ending))
}

/// Where a response body's bytes come from.
pub(crate) enum BodySource {
    /// The catalog's resident copy of the range, handed out in
    /// [`RESIDENT_FRAME`] slices (no copy, no per-connection buffer).
    Resident(Bytes),
    /// Read from the catalog (and through a data fault rule, if one
    /// applies) in [`BODY_CHUNK`] buffers.
    Reader(ReaderStream<PackageReader>),
}

/// Bytes per body frame from a resident copy: large writes, and hyper
/// queues references, not copies.
const RESIDENT_FRAME: usize = 256 * 1024;

impl futures_util::Stream for BodySource {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut *self {
            BodySource::Resident(rest) if rest.is_empty() => Poll::Ready(None),
            BodySource::Resident(rest) => {
                let n = rest.len().min(RESIDENT_FRAME);
                Poll::Ready(Some(Ok(rest.split_to(n))))
            }
            BodySource::Reader(stream) => Pin::new(stream).poll_next(cx),
        }
    }
}

impl Body for PackageBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.start(cx).is_pending() {
            return Poll::Pending;
        }
        match Pin::new(&mut self.stream).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                self.sent += chunk.len() as u64;
                if self.sent == self.expected
                    && let Some(f) = &self.finish
                {
                    let flushes = &f.conn.flushes;
                    let tracked_tls = f.conn.ack.is_some() && f.conn.protocol == Protocol::Https;
                    let end = tracked_tls.then(|| flushes.end_at_next_flush());
                    self.final_flush = Some(flushes.count());
                    self.end = end;
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(err))) => {
                self.finish(Some(&err));
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) if self.sent < self.expected => self.end_short(cx),
            Poll::Ready(None) => {
                self.finish(None);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finish.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.expected - self.sent)
    }
}

impl Drop for PackageBody {
    fn drop(&mut self) {
        self.finish(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_names_how_far_the_peer_got() {
        let stall = Duration::from_secs(120);
        assert_eq!(
            verdict(Delivery::Acked, 1_048_576, 1_048_576, stall),
            (Outcome::Complete, "acknowledged".to_string())
        );
        assert_eq!(
            verdict(Delivery::Gone, 65_536, 1_048_576, stall),
            (
                Outcome::Aborted,
                "peer acknowledged 65,536 of 1,048,576 bytes, then closed the connection".into()
            )
        );
        let (outcome, reason) = verdict(Delivery::Stalled, 0, 10, stall);
        assert_eq!(outcome, Outcome::Aborted);
        assert!(
            reason.ends_with("then stopped acknowledging for 120 s"),
            "{reason}"
        );
    }

    #[test]
    fn routes_by_method_and_decoded_path() {
        assert_eq!(route(&Method::GET, "/").unwrap(), Route::Index);
        assert_eq!(route(&Method::HEAD, "/packages.json").unwrap(), Route::Json);
        assert_eq!(
            route(&Method::GET, "/Jun/a%20b.zip").unwrap(),
            Route::Key("Jun/a b.zip".into())
        );
        let post = route(&Method::POST, "/a.zip").unwrap_err();
        assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(header(&post, ALLOW), "GET, HEAD");
        let escape = route(&Method::GET, "/../etc/passwd").unwrap_err();
        assert_eq!(escape.status, StatusCode::BAD_REQUEST);
        assert_eq!(escape.outcome, Outcome::Refused);
    }

    /// The value of `name` in an answer's extra headers.
    fn header(answer: &Answer, name: HeaderName) -> &str {
        let found = answer.headers.iter().find(|(n, _)| *n == name);
        found.map_or("", |(_, v)| v.to_str().unwrap())
    }

    /// [`select_span`] of a GET with `headers` and the `range_start` it
    /// notes.
    fn span_of(
        method: Method,
        headers: &[(HeaderName, &str)],
        size: u64,
    ) -> (Result<Span, Answer>, u64) {
        let mut req = Request::builder().method(method);
        for (name, value) in headers {
            req = req.header(name.clone(), *value);
        }
        let req = req.body(()).unwrap();
        let validators = Validators {
            etag: "\"abc\"",
            last_modified: std::time::SystemTime::UNIX_EPOCH,
        };
        let mut attempt = Attempt::start(Protocol::Http, "127.0.0.1:1".parse().unwrap(), "a");
        let span = select_span(&req, &validators, size, &mut attempt);
        (span, attempt.range_start)
    }

    fn span(headers: &[(HeaderName, &str)], size: u64) -> Result<Span, Answer> {
        span_of(Method::GET, headers, size).0
    }

    #[test]
    fn head_ignores_range_and_a_416_notes_the_offset_asked_for() {
        let (head, start) = span_of(Method::HEAD, &[(RANGE, "bytes=10-19")], 100);
        let head = head.unwrap();
        assert_eq!((head.status, head.len, start), (StatusCode::OK, 100, 0));
        let (past, start) = span_of(Method::GET, &[(RANGE, "bytes=7188-")], 100);
        assert_eq!(past.unwrap_err().status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(start, 7188);
        let (part, start) = span_of(Method::GET, &[(RANGE, "bytes=10-")], 100);
        assert_eq!((part.unwrap().len, start), (90, 10));
    }

    #[test]
    fn spans_follow_preconditions_and_range() {
        let full = span(&[], 100).unwrap();
        assert_eq!(
            (full.status, full.start, full.len),
            (StatusCode::OK, 0, 100)
        );
        let part = span(&[(RANGE, "bytes=10-19")], 100).unwrap();
        assert_eq!(
            (part.status, part.start, part.len),
            (StatusCode::PARTIAL_CONTENT, 10, 10)
        );
        let past = span(&[(RANGE, "bytes=200-")], 100).unwrap_err();
        assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(header(&past, CONTENT_RANGE), "bytes */100");
        let two = span(&[(RANGE, "bytes=0-1"), (RANGE, "bytes=5-6")], 100).unwrap();
        assert_eq!((two.status, two.len), (StatusCode::OK, 100));
        let same = span(&[(http::header::IF_NONE_MATCH, "\"abc\"")], 100).unwrap_err();
        assert_eq!(
            (same.status, same.outcome),
            (StatusCode::NOT_MODIFIED, Outcome::HeadersOnly)
        );
        assert_eq!(header(&same, ETAG), "\"abc\"");
        let changed = span(&[(http::header::IF_MATCH, "\"other\"")], 100).unwrap_err();
        assert_eq!(changed.status, StatusCode::PRECONDITION_FAILED);
    }

    #[test]
    fn a_redirect_fault_points_back_at_the_package() {
        let moved = status_fault(302, "Jun/a.zip");
        assert_eq!(header(&moved, LOCATION), "/Jun/a.zip?redirected=1");
        assert_eq!(moved.reason, "fault: status 302");
        assert!(status_fault(503, "a.zip").headers.is_empty());
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("a/B.BIN"), "application/octet-stream");
        assert_eq!(content_type("update.zip"), "application/zip");
    }
}

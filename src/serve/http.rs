//! HTTP and HTTPS front-end (hyper 1, HTTP/1.1).
//!
//! `GET`/`HEAD` of a package by its path, with `Content-Length` always set
//! (never chunked: modules check the length), strong `ETag` from the
//! SHA-256, `Last-Modified`, single `Range` and the conditionals of
//! [`super::range`]. `/` lists the packages as HTML and `/packages.json` as
//! JSON. Every attempt on a package path becomes one download record; the
//! body type records how many bytes were handed to the connection and
//! whether it finished.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::header::{
    ACCEPT_RANGES, ALLOW, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, LAST_MODIFIED,
    LOCATION, RANGE, RETRY_AFTER, SERVER,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::io::ReaderStream;
use tokio_util::task::TaskTracker;

use super::fault::{Action, AttemptInfo, FaultedReader};
use super::range::{self, Precondition, RangeDecision, Validators};
use super::stall::{FlushSignal, StallGuard};
use super::{Access, Shared};
use crate::catalog::{Lookup, OpenError, Package, PackageReader, path};
use crate::dlog::{Attempt, DownloadRecord, Outcome, Protocol};

/// Timeouts of an HTTP(S) listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// Longest time to receive a request's headers (slowloris guard).
    pub header_read: Duration,
    /// Longest time for a TLS handshake.
    pub tls_handshake: Duration,
    /// Longest a response write may make no progress.
    pub stall: Duration,
    /// How long in-flight responses may finish after shutdown starts.
    pub grace: Duration,
}

type ResponseBody = Either<Full<Bytes>, PackageBody>;

/// Bytes read from a package per body chunk.
const BODY_CHUNK: usize = 32 * 1024;

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
    while let Some((tcp, peer)) = super::accept(&listener, &shutdown, protocol.as_str()).await {
        let _ = tcp.set_nodelay(true);
        let guard = StallGuard::new(tcp, timeouts.stall);
        let conn = Arc::new(Conn {
            shared: Arc::clone(&shared),
            peer,
            protocol,
            stalled: guard.stalled_flag(),
            flushes: guard.flush_signal(),
        });
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tracker.spawn(async move {
            let span = tracing::debug_span!("conn", %peer, protocol = protocol.as_str());
            let _enter = span.enter();
            match tls {
                None => serve_connection(guard, conn, timeouts, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(timeouts.tls_handshake, acceptor.accept(guard)).await
                    {
                        Ok(Ok(stream)) => serve_connection(stream, conn, timeouts, watcher).await,
                        Ok(Err(err)) => {
                            tracing::info!(%peer, error = %err, "TLS handshake failed")
                        }
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    tracker.close();
    if tokio::time::timeout(timeouts.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            protocol = protocol.as_str(),
            "grace period over; closing remaining connections"
        );
    }
}

async fn serve_connection<S>(
    io: S,
    conn: Arc<Conn>,
    timeouts: HttpTimeouts,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let service = hyper::service::service_fn(move |req| {
        let conn = Arc::clone(&conn);
        async move { Ok::<_, Infallible>(conn.handle(req).await) }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        // Bound what one connection holds in user space. With the default
        // vectored writes hyper queues up to 16 body chunks per connection
        // (about 1 MiB here) whenever the client reads slowly; a flat
        // buffer caps it at `BODY_CHUNK` + headers. A fleet of modules on
        // tens of kB/s each is mostly slow connections.
        .writev(false)
        .max_buf_size(2 * BODY_CHUNK)
        .serve_connection(TokioIo::new(io), service);
    if let Err(err) = watcher.watch(http).await {
        tracing::debug!(%peer, error = %err, "connection ended with an error");
    }
}

/// One accepted connection's context.
struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    protocol: Protocol,
    stalled: Arc<AtomicBool>,
    flushes: Arc<FlushSignal>,
}

/// What the record of an attempt will say, built up as the request is
/// handled.
struct Pending {
    attempt: Attempt,
    path: String,
    package: Option<Arc<Package>>,
    range_start: u64,
    /// The fault rule applied to this attempt, if any.
    fault: Option<String>,
}

impl Conn {
    fn record(
        &self,
        p: &Pending,
        status: StatusCode,
        bytes: u64,
        outcome: Outcome,
        reason: String,
    ) {
        self.shared.log.emit(DownloadRecord {
            ts: p.attempt.ts(),
            duration_ms: p.attempt.elapsed_ms(),
            protocol: self.protocol,
            peer: self.peer,
            user: None,
            path: p.path.clone(),
            size: p.package.as_ref().map(|pkg| pkg.size),
            sha256: p.package.as_ref().map(|pkg| pkg.sha256.clone()),
            range_start: p.range_start,
            bytes_sent: bytes,
            status: status.as_u16(),
            outcome,
            reason,
            fault: p.fault.clone(),
        });
    }

    /// Answers without a body and records the attempt.
    fn refuse(
        &self,
        p: &Pending,
        status: StatusCode,
        outcome: Outcome,
        reason: String,
    ) -> Response<ResponseBody> {
        self.record(p, status, 0, outcome, reason.clone());
        let mut resp = text_response(status, format!("{reason}\n"));
        if status == StatusCode::METHOD_NOT_ALLOWED {
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        resp
    }

    async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<ResponseBody> {
        let attempt = Attempt::start(self.protocol, self.peer, "");
        let raw_path = req.uri().path().to_string();
        let mut pending = Pending {
            attempt,
            path: raw_path.trim_start_matches('/').to_string(),
            package: None,
            range_start: 0,
            fault: None,
        };
        let is_head = req.method() == Method::HEAD;
        if req.method() != Method::GET && !is_head {
            return self.refuse(
                &pending,
                StatusCode::METHOD_NOT_ALLOWED,
                Outcome::Refused,
                format!("method {} not allowed", req.method()),
            );
        }
        let key = match path::percent_decode(&raw_path).and_then(|d| path::normalize(&d)) {
            Ok(k) => k,
            Err(err) => {
                return self.refuse(
                    &pending,
                    StatusCode::BAD_REQUEST,
                    Outcome::Refused,
                    err.to_string(),
                );
            }
        };
        match key.as_str() {
            "" => return index_html(&self.shared, ""),
            "packages.json" => return index_json(&self.shared),
            _ => {}
        }
        // A folder answers with its listing, so clients that "cd" over
        // HTTP (lftp, browsers) find the packages in it.
        if matches!(self.shared.catalog.lookup(&key), Lookup::Directory) {
            return index_html(&self.shared, &key);
        }
        pending.path = key.clone();
        let package = match self.shared.resolve(&key) {
            Access::Serve(pkg) => pkg,
            Access::Refuse {
                outcome,
                reason,
                package,
            } => {
                pending.package = package;
                return self.refuse(&pending, StatusCode::NOT_FOUND, outcome, reason);
            }
        };
        pending.package = Some(Arc::clone(&package));
        let info = AttemptInfo {
            protocol: self.protocol,
            peer: self.peer.ip(),
            user: None,
            path: Some(&key),
        };
        // Rules that replace the response apply now; rules that change the
        // bytes only once a body is really sent (below), so a 304/416/503
        // does not use up a rule's `times`.
        let fault = self
            .shared
            .faults
            .select(&info, |a| matches!(a, Action::NotFound | Action::Status(_)));
        pending.fault = fault.as_ref().map(|f| f.name.clone());
        match fault.map(|f| f.action) {
            Some(Action::NotFound) => {
                return self.refuse(
                    &pending,
                    StatusCode::NOT_FOUND,
                    Outcome::NotFound,
                    "fault: not-found".into(),
                );
            }
            Some(Action::Status(code)) => {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                let mut resp = self.refuse(
                    &pending,
                    status,
                    Outcome::Refused,
                    format!("fault: status {code}"),
                );
                if status.is_redirection()
                    && let Ok(v) = HeaderValue::from_str(&format!("/{key}?redirected=1"))
                {
                    resp.headers_mut().insert(LOCATION, v);
                }
                return resp;
            }
            _ => {}
        }
        let validators = Validators {
            etag: &package.etag(),
            last_modified: package.modified,
        };
        let honour_range = match range::evaluate_preconditions(req.headers(), &validators) {
            Precondition::NotModified => {
                self.record(
                    &pending,
                    StatusCode::NOT_MODIFIED,
                    0,
                    Outcome::Complete,
                    "not modified".into(),
                );
                let mut resp = empty_response(StatusCode::NOT_MODIFIED);
                set_validators(resp.headers_mut(), &package);
                return resp;
            }
            Precondition::Failed => {
                return self.refuse(
                    &pending,
                    StatusCode::PRECONDITION_FAILED,
                    Outcome::Refused,
                    "precondition failed".into(),
                );
            }
            Precondition::Proceed { honour_range } => honour_range,
        };
        let decision = match req.headers().get(RANGE).and_then(|v| v.to_str().ok()) {
            Some(value) if honour_range => range::parse_range(value, package.size),
            _ => RangeDecision::Full,
        };
        let (status, start, len) = match decision {
            RangeDecision::Full => (StatusCode::OK, 0, package.size),
            RangeDecision::Partial { start, end } => {
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            RangeDecision::Unsatisfiable => {
                let mut resp = self.refuse(
                    &pending,
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    Outcome::Refused,
                    "range not satisfiable".into(),
                );
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", package.size)) {
                    resp.headers_mut().insert(CONTENT_RANGE, v);
                }
                return resp;
            }
        };
        pending.range_start = start;

        let body = if is_head {
            self.record(&pending, status, 0, Outcome::Complete, "HEAD".into());
            Either::Left(Full::new(Bytes::new()))
        } else {
            let reader = match self.shared.catalog.open(&package, start..start + len).await {
                Ok(r) => match self.shared.faults.select(&info, Action::is_data) {
                    Some(applied) => {
                        pending.fault = Some(applied.name);
                        Box::new(FaultedReader::new(
                            r,
                            applied.action,
                            start,
                            package.size,
                            self.shared.shutdown.clone(),
                            self.shared.stall_timeout,
                        )) as PackageReader
                    }
                    None => r,
                },
                Err(err @ OpenError::Changed) => {
                    let mut resp = self.refuse(
                        &pending,
                        StatusCode::SERVICE_UNAVAILABLE,
                        Outcome::Refused,
                        err.to_string(),
                    );
                    resp.headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from_static("2"));
                    return resp;
                }
                Err(err) => {
                    return self.refuse(
                        &pending,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        Outcome::Refused,
                        err.to_string(),
                    );
                }
            };
            Either::Right(PackageBody {
                stream: ReaderStream::with_capacity(reader.take(len), BODY_CHUNK),
                expected: len,
                sent: 0,
                status,
                draining: None,
                finish: Some(Finish {
                    conn: Arc::clone(self),
                    pending,
                }),
            })
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(SERVER, HeaderValue::from_static(SERVER_NAME));
        h.insert(CONTENT_LENGTH, HeaderValue::from(len));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(content_type(&package.path)),
        );
        h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        set_validators(h, &package);
        if status == StatusCode::PARTIAL_CONTENT
            && let Ok(v) = HeaderValue::from_str(&format!(
                "bytes {start}-{}/{}",
                start + len - 1,
                package.size
            ))
        {
            h.insert(CONTENT_RANGE, v);
        }
        resp
    }
}

fn set_validators(h: &mut http::HeaderMap, package: &Package) {
    if let Ok(v) = HeaderValue::from_str(&package.etag()) {
        h.insert(ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(package.modified)) {
        h.insert(LAST_MODIFIED, v);
    }
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

/// HTML table of the packages under `folder` (every package for the root).
fn index_html(shared: &Shared, folder: &str) -> Response<ResponseBody> {
    let mut rows = String::new();
    let prefix = if folder.is_empty() {
        String::new()
    } else {
        format!("{folder}/")
    };
    for p in shared.catalog.packages() {
        if !p.path.starts_with(&prefix) {
            continue;
        }
        let status = if p.is_valid() {
            "valid".to_string()
        } else {
            format!("invalid: {}", p.problems.join("; "))
        };
        let link = if p.is_valid() || shared.allow_invalid {
            format!("<a href=\"/{0}\">{0}</a>", html_escape(&p.path))
        } else {
            html_escape(&p.path)
        };
        rows.push_str(&format!(
            "<tr><td>{link}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>\n",
            p.size,
            p.sha256,
            html_escape(&status)
        ));
    }
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>qfota-serve packages</title></head>\n\
         <body><h1>Firmware packages in /{}</h1>\n<table border=\"1\" cellpadding=\"4\">\n\
         <tr><th>name</th><th>size (bytes)</th><th>SHA-256</th><th>validity</th></tr>\n{rows}</table>\n\
         <p><a href=\"/packages.json\">packages.json</a></p></body></html>\n",
        html_escape(folder)
    );
    body_response(StatusCode::OK, "text/html; charset=utf-8", html)
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Emits the download record when the body is finished or dropped.
struct Finish {
    conn: Arc<Conn>,
    pending: Pending,
}

/// A package body of exactly `expected` bytes. When hyper drops it — after
/// the last byte, or because the client went away, a write stalled, or the
/// server shut down — it records how many bytes were handed over.
pub(crate) struct PackageBody {
    stream: ReaderStream<tokio::io::Take<PackageReader>>,
    expected: u64,
    sent: u64,
    status: StatusCode,
    finish: Option<Finish>,
    /// Set when the body must end short: the flush count to wait past.
    draining: Option<u64>,
}

impl PackageBody {
    fn finish(&mut self, error: Option<&io::Error>) {
        let Some(f) = self.finish.take() else {
            return;
        };
        let (status, outcome, reason) = if self.sent == self.expected && error.is_none() {
            (self.status, Outcome::Complete, "sent".to_string())
        } else {
            let reason = if let Some(err) = error {
                if f.pending.fault.is_some() {
                    err.to_string()
                } else {
                    format!("read error: {err}")
                }
            } else if f.conn.stalled.load(Ordering::Relaxed) {
                "write stalled: the client stopped reading".to_string()
            } else if f.conn.shared.shutdown.is_cancelled() {
                "server shutting down".to_string()
            } else {
                "client closed the connection".to_string()
            };
            (self.status, Outcome::Aborted, reason)
        };
        f.conn
            .record(&f.pending, status, self.sent, outcome, reason);
    }
}

impl Body for PackageBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match Pin::new(&mut self.stream).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                self.sent += chunk.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(err))) => {
                self.finish(Some(&err));
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) => {
                if self.sent < self.expected {
                    // Ending short makes hyper close the connection and drop
                    // whatever it still buffers; wait for one more completed
                    // flush so the client gets exactly `sent` bytes.
                    let Some((flushes, faulted)) = self
                        .finish
                        .as_ref()
                        .map(|f| (Arc::clone(&f.conn.flushes), f.pending.fault.is_some()))
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
                    return Poll::Ready(Some(Err(err)));
                }
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
    fn escapes_html() {
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("a/B.BIN"), "application/octet-stream");
        assert_eq!(content_type("update.zip"), "application/zip");
    }
}

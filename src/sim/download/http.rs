//! HTTP(S) download as a module does it (seeds 000–004 §3, `<HTTP_URL>`):
//! one `GET` over HTTP/1.1, redirects not followed, the body length must
//! match `Content-Length` when the server sends one (a body without it is
//! taken as it comes, up to `MAX_PACKAGE`). HTTPS goes through the module's TLS client
//! ([`super::tls`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING, USER_AGENT};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::rt::{Read, Write};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::cause::DownloadError;
use super::progress::{Progress, Spool};
use crate::sim::command::{FotaUrl, Scheme};
use crate::sim::package::PackageData;

/// `User-Agent` the simulator sends, so server logs can tell it from a
/// module.
const AGENT: &str = concat!("qfota-serve-simulate/", env!("CARGO_PKG_VERSION"));

/// Fetches `url` over the connected socket `tcp`.
pub(super) async fn fetch(
    tcp: TcpStream,
    url: &FotaUrl,
    timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
    progress: &mut Progress<'_>,
) -> Result<PackageData, DownloadError> {
    match url.scheme {
        Scheme::Https => {
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| DownloadError::Tls(format!("server name {:?}: {e}", url.host)))?;
            let handshake = TlsConnector::from(tls).connect(name, tcp);
            let stream = match tokio::time::timeout(timeout, handshake).await {
                Err(_) => {
                    return Err(DownloadError::no_answer("the TLS handshake", timeout));
                }
                Ok(Err(e)) => return Err(DownloadError::Tls(e.to_string())),
                Ok(Ok(stream)) => stream,
            };
            get(TokioIo::new(stream), url, timeout, progress).await
        }
        Scheme::Http | Scheme::Ftp => get(TokioIo::new(tcp), url, timeout, progress).await,
    }
}

/// Aborts the HTTP connection task when the download ends either way.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Most bytes hyper reads ahead of the module (16 KiB).
const READ_BUFFER: usize = 16 * 1024;

async fn get<I>(
    io: I,
    url: &FotaUrl,
    timeout: Duration,
    progress: &mut Progress<'_>,
) -> Result<PackageData, DownloadError>
where
    I: Read + Write + Unpin + Send + 'static,
{
    // hyper reads ahead into a buffer of up to ~400 KiB by default, which
    // a throttled module fills while it reads slowly: 16 KiB, about a
    // module's receive window, keeps a module in flight small (`fleet`).
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(READ_BUFFER)
        .handshake(io)
        .await
        .map_err(|e| cause(e, 0, None))?;
    let _connection = AbortOnDrop(tokio::spawn(async move {
        // Its errors surface through the request and body futures.
        let _ = connection.await;
    }));
    let request = Request::get(url.path.as_str())
        .header(HOST, url.authority())
        .header(USER_AGENT, AGENT)
        .body(Empty::<Bytes>::new())
        .map_err(|e| DownloadError::Other(format!("cannot send {:?}: {e}", url.path)))?;
    let response = match tokio::time::timeout(timeout, sender.send_request(request)).await {
        Err(_) => {
            return Err(DownloadError::no_answer("the response headers", timeout));
        }
        Ok(result) => result.map_err(|e| cause(e, 0, None))?,
    };
    if response.status() != StatusCode::OK {
        return Err(DownloadError::HttpStatus(response.status().as_u16()));
    }
    // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3): the
    // body's framing says where it ends.
    let framed = response.headers().contains_key(TRANSFER_ENCODING);
    let expected = match response.headers().get(CONTENT_LENGTH) {
        _ if framed => None,
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| DownloadError::Other(format!("bad Content-Length {value:?}")))?,
        ),
    };
    progress.expect(expected)?;
    let mut package = Spool::default();
    let mut body = response.into_body();
    loop {
        let frame = match tokio::time::timeout(timeout, body.frame()).await {
            Err(_) => {
                return Err(DownloadError::stalled(progress.received(), timeout));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(cause(e, progress.received(), expected)),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            package.push(&data)?;
            progress.advance(data.len()).await?;
        }
    }
    let received = progress.received();
    if let Some(expected) = expected.filter(|e| *e != received) {
        return Err(DownloadError::Truncated {
            received,
            expected: Some(expected),
        });
    }
    progress.complete();
    Ok(package.finish())
}

/// The cause behind a hyper error after `received` bytes of the body.
fn cause(error: hyper::Error, received: u64, expected: Option<u64>) -> DownloadError {
    // hyper reports a body's broken framing (a chunk-size line that is no
    // hex number, say) as an I/O error of these kinds, not as a parse error.
    let framing = io_kind(&error).is_some_and(|k| {
        matches!(
            k,
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
        )
    });
    if error.is_parse() || framing {
        return DownloadError::HttpDecode(error.to_string());
    }
    if io_kind(&error) == Some(std::io::ErrorKind::ConnectionReset) && received > 0 {
        return DownloadError::PeerReset { received };
    }
    let closed = error.is_incomplete_message()
        || error.is_closed()
        || error.is_canceled()
        || io_kind(&error).is_some_and(|k| {
            matches!(
                k,
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            )
        });
    if closed {
        DownloadError::Truncated { received, expected }
    } else {
        DownloadError::Other(format!("HTTP: {error}"))
    }
}

fn io_kind(error: &hyper::Error) -> Option<std::io::ErrorKind> {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = e.source();
    }
    None
}

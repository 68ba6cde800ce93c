//! The simulated module's downloader: fetch the package named by a checked
//! [`FotaUrl`] over FTP (`ftp.rs`) or HTTP(S) (`http.rs`), as a module does,
//! and say why it failed ([`DownloadError`], mapped to `FTPEND`/`HTTPEND`
//! codes by [`cause`]).
//!
//! Arrows point down: this file resolves, connects and hands the socket to
//! `ftp.rs` or `http.rs` (HTTPS through `tls`); those count bytes and
//! print `DOWNLOADING` through `progress.rs` and fail with [`cause`]'s
//! [`DownloadError`]. None of them imports this file; the run's
//! `Emitter` comes from `crate::sim::emit`, below the whole simulator.
//!
//! Network time is real time (the simulator's time scale does not apply);
//! every wait is bounded by the no-progress timeout.

pub mod cause;
mod ftp;
mod http;
pub(crate) mod progress;
pub(crate) mod tls;

use crate::sim::package::PackageData;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::TcpStream;

pub use cause::DownloadError;
pub use progress::MAX_PACKAGE;

use cause::millis;
use progress::Progress;

use crate::sim::command::{FotaUrl, Scheme};
use crate::sim::emit::Emitter;

/// Everything one download needs.
pub(crate) struct Download<'a> {
    /// The package URL.
    pub url: &'a FotaUrl,
    /// No-progress timeout for every wait (connect, reply, headers, data).
    pub timeout: Duration,
    /// Download throttle, bytes per second; `None` = as fast as possible.
    pub rate: Option<u64>,
    /// Fault `dns-fail`: host names do not resolve.
    pub dns_fail: bool,
    /// Fault `network-down`: the module has no data connection.
    pub network_down: bool,
    /// TLS client for `https://`.
    pub tls: Arc<rustls::ClientConfig>,
    /// `DOWNLOADING` lines to print (`ec200`'s `<download_URC_max>`).
    pub downloading_lines: u8,
    /// Where URCs go.
    pub emit: &'a Emitter,
    /// Bytes received so far, readable while the download runs.
    pub received: Arc<AtomicU64>,
    /// Filled when the first package byte arrives.
    pub first_byte: Arc<std::sync::OnceLock<tokio::time::Instant>>,
    /// Fault `download-error`: the code this download fails with.
    pub injected: Option<u16>,
    /// The FOTA context, when it is not active.
    pub inactive_context: Option<u8>,
    /// Free space the package must fit, bytes, checked as it arrives
    /// (`ec200`, whose downloader fails with 611/729); `None`: not checked
    /// here (the package check's `END,511` does it).
    pub space: Option<u64>,
    /// Fault `download-power-cut`: the percentage of the package at which
    /// the power goes.
    pub power_cut: Option<u8>,
}

/// Downloads the package; returns its bytes — exactly as many as the server
/// announced (FTP `SIZE`, HTTP `Content-Length`), or, over HTTP without a
/// `Content-Length`, all the body sent.
///
/// # Errors
/// The [`DownloadError`] cause of the failure.
pub(crate) async fn download(job: Download<'_>) -> Result<PackageData, DownloadError> {
    if job.network_down {
        return Err(DownloadError::NetworkDown);
    }
    if let Some(cid) = job.inactive_context {
        return Err(DownloadError::ContextInactive { cid });
    }
    if let Some(code) = job.injected {
        return Err(DownloadError::Injected(code));
    }
    cause::check_host(&job.url.host)?;
    let mut progress = Progress::new(job.downloading_lines, job.rate, job.emit)
        .count_into(Arc::clone(&job.received))
        .first_byte_into(Arc::clone(&job.first_byte))
        .limit(job.space)
        .power_cut(job.power_cut);
    let addrs = resolve(&job.url.host, job.url.port, job.dns_fail, job.timeout).await?;
    let tcp = connect(&addrs, job.timeout).await?;
    match job.url.scheme {
        Scheme::Ftp => ftp::fetch(tcp, job.url, job.timeout, &mut progress).await,
        Scheme::Http | Scheme::Https => {
            http::fetch(tcp, job.url, job.timeout, job.tls, &mut progress).await
        }
    }
}

/// Resolves `host`; an IP literal needs no lookup (and so is not affected
/// by `dns-fail`).
async fn resolve(
    host: &str,
    port: u16,
    dns_fail: bool,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, DownloadError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let failed = |detail: String| DownloadError::Dns {
        host: host.to_string(),
        detail,
    };
    if dns_fail {
        return Err(failed("fault dns-fail".to_string()));
    }
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
        Err(_) => Err(failed(format!("no answer within {} ms", millis(timeout)))),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err(failed("no address".to_string()))
            } else {
                Ok(addrs)
            }
        }
    }
}

/// Connects to the first address that answers, like a module trying each
/// resolved address in turn.
async fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, DownloadError> {
    let mut last = DownloadError::Other("no address to connect to".to_string());
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(source)) => {
                last = DownloadError::Connect {
                    addr: addr.to_string(),
                    source,
                }
            }
            Err(_) => last = DownloadError::no_answer("TCP connect", timeout),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::testing::bounded;

    #[tokio::test(start_paused = true)]
    async fn dns_fail_spares_ip_literals() {
        let addrs = bounded(resolve("127.0.0.1", 21, true, Duration::from_secs(1)))
            .await
            .unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:21".parse().unwrap()]);
        let err = bounded(resolve("localhost", 21, true, Duration::from_secs(1)))
            .await
            .unwrap_err();
        assert!(matches!(err, DownloadError::Dns { .. }), "{err}");
    }
}

//! The simulated module's downloader: fetch the package named by a checked
//! [`FotaUrl`] over FTP (`ftp.rs`) or HTTP(S) (`http.rs`), as a module does,
//! and say why it failed ([`DownloadError`], mapped to `FTPEND`/`HTTPEND`
//! codes by [`cause`]).
//!
//! Network time is real time (the simulator's time scale does not apply);
//! every wait is bounded by the no-progress timeout.

pub mod cause;
mod ftp;
mod http;
pub(crate) mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

pub use cause::DownloadError;

use crate::sim::command::{FotaUrl, Scheme};
use crate::sim::module::Emitter;
use crate::sim::urc::Urc;

/// Largest buffer reserved up front from an announced size; a larger
/// package grows the buffer as bytes arrive, so a lying `SIZE` or
/// `Content-Length` cannot make the simulator allocate it all at once.
const MAX_PREALLOCATION: u64 = 64 * 1024 * 1024;

/// Largest package the simulator downloads, in bytes (1 GiB, twice the
/// largest family limit, `eg06xk`'s 512 MiB). Packages are held in memory,
/// so a server announcing or sending more fails the download ("anything
/// else": 601 / 701) instead of exhausting the host.
pub const MAX_PACKAGE: u64 = 1024 * 1024 * 1024;

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
}

/// Downloads the package; returns its bytes — exactly as many as the server
/// announced (FTP `SIZE`, HTTP `Content-Length`), or, over HTTP without a
/// `Content-Length`, all the body sent.
///
/// # Errors
/// The [`DownloadError`] cause of the failure.
pub(crate) async fn download(job: Download<'_>) -> Result<Vec<u8>, DownloadError> {
    if job.network_down {
        return Err(DownloadError::NetworkDown);
    }
    let mut progress = Progress::new(job.downloading_lines, job.rate, job.emit);
    progress.counter = Some(Arc::clone(&job.received));
    let addrs = resolve(&job.url.host, job.url.port, job.dns_fail, job.timeout).await?;
    let tcp = connect(&addrs, job.timeout).await?;
    match job.url.scheme {
        Scheme::Ftp => ftp::fetch(tcp, job.url, job.timeout, &mut progress).await,
        Scheme::Http | Scheme::Https => {
            http::fetch(tcp, job.url, job.timeout, job.tls, &mut progress).await
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
            Err(_) => {
                last = DownloadError::NoAnswer {
                    waiting_for: "TCP connect",
                    timeout_ms: millis(timeout),
                }
            }
        }
    }
    Err(last)
}

fn too_large(bytes: u64) -> DownloadError {
    DownloadError::Other(format!(
        "package of {bytes} bytes is over the simulator's {MAX_PACKAGE}-byte limit"
    ))
}

/// A receive buffer for a package of `expected` bytes.
fn package_buffer(expected: Option<u64>) -> Vec<u8> {
    let reserve = expected.unwrap_or(0).min(MAX_PREALLOCATION);
    Vec::with_capacity(usize::try_from(reserve).unwrap_or(0))
}

/// Counts received bytes, prints `DOWNLOADING,k` as the k-th of `lines`
/// fractions of the package arrives (seed `001_2f648264def3e0b1.txt`
/// §3.2.1: "the 25th URC means half of the downloading is completed"), and
/// throttles to `rate` bytes/s.
pub(crate) struct Progress<'a> {
    lines: u8,
    printed: u8,
    total: Option<u64>,
    received: u64,
    started: Instant,
    rate: Option<u64>,
    emit: &'a Emitter,
    /// Mirror of `received` for observers outside the download.
    counter: Option<Arc<AtomicU64>>,
}

impl<'a> Progress<'a> {
    fn new(lines: u8, rate: Option<u64>, emit: &'a Emitter) -> Progress<'a> {
        Progress {
            lines,
            printed: 0,
            total: None,
            received: 0,
            started: Instant::now(),
            rate: rate.filter(|r| *r > 0),
            emit,
            counter: None,
        }
    }

    /// Sets the announced package size, when the server gives one.
    ///
    /// # Errors
    /// A size over [`MAX_PACKAGE`].
    fn expect(&mut self, total: Option<u64>) -> Result<(), DownloadError> {
        if let Some(total) = total.filter(|t| *t > MAX_PACKAGE) {
            return Err(too_large(total));
        }
        self.total = total;
        Ok(())
    }

    /// Bytes received so far.
    fn received(&self) -> u64 {
        self.received
    }

    /// Records `n` more bytes, prints the progress lines now due, and
    /// sleeps as long as the throttle asks.
    ///
    /// # Errors
    /// More than [`MAX_PACKAGE`] bytes in all.
    async fn advance(&mut self, n: usize) -> Result<(), DownloadError> {
        self.received = self.received.saturating_add(n as u64);
        if let Some(counter) = &self.counter {
            counter.store(self.received, Ordering::Relaxed);
        }
        if self.received > MAX_PACKAGE {
            return Err(too_large(self.received));
        }
        if let Some(total) = self.total.filter(|t| *t > 0) {
            let done = u128::from(self.received.min(total));
            let due = done * u128::from(self.lines) / u128::from(total);
            self.print_up_to(u8::try_from(due).unwrap_or(self.lines));
        }
        if let Some(rate) = self.rate {
            let due = Duration::try_from_secs_f64(self.received as f64 / rate as f64)
                .ok()
                .and_then(|d| self.started.checked_add(d));
            if let Some(due) = due {
                tokio::time::sleep_until(due).await;
            }
        }
        Ok(())
    }

    /// Prints the remaining progress lines once the whole package is in
    /// (all of them when the size was unknown or zero).
    fn complete(&mut self) {
        self.print_up_to(self.lines);
    }

    fn print_up_to(&mut self, k: u8) {
        while self.printed < k.min(self.lines) {
            self.printed += 1;
            self.emit.urc(Urc::Downloading(self.printed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::urc::Event;

    /// Bounds a test's await (virtual time where the clock is paused).
    async fn bounded<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(3600), f)
            .await
            .expect("finished in time")
    }

    fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(e);
        }
        out
    }

    #[tokio::test]
    async fn downloading_lines_follow_the_received_fraction() {
        let (emit, mut rx) = Emitter::channel();
        let mut p = Progress::new(50, None, &emit);
        p.expect(Some(1000)).unwrap();
        bounded(p.advance(500)).await.unwrap();
        let half = drain(&mut rx);
        assert_eq!(half.len(), 25, "half the bytes, half the lines");
        assert_eq!(half.last(), Some(&Event::Urc(Urc::Downloading(25))));
        bounded(p.advance(499)).await.unwrap();
        assert_eq!(drain(&mut rx).len(), 24);
        bounded(p.advance(1)).await.unwrap();
        p.complete();
        assert_eq!(drain(&mut rx), vec![Event::Urc(Urc::Downloading(50))]);
    }

    #[tokio::test]
    async fn unknown_size_prints_every_line_at_the_end() {
        let (emit, mut rx) = Emitter::channel();
        let mut p = Progress::new(5, None, &emit);
        bounded(p.advance(10)).await.unwrap();
        assert!(drain(&mut rx).is_empty());
        p.complete();
        let lines: Vec<Event> = (1..=5).map(|k| Event::Urc(Urc::Downloading(k))).collect();
        assert_eq!(drain(&mut rx), lines);
    }

    #[tokio::test]
    async fn no_lines_when_disabled() {
        let (emit, mut rx) = Emitter::channel();
        let mut p = Progress::new(0, None, &emit);
        p.expect(Some(10)).unwrap();
        bounded(p.advance(10)).await.unwrap();
        p.complete();
        assert!(drain(&mut rx).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_throttles_the_download() {
        let (emit, _rx) = Emitter::channel();
        let mut p = Progress::new(0, Some(1000), &emit);
        let start = Instant::now();
        bounded(p.advance(3000)).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

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

    #[tokio::test]
    async fn packages_over_the_limit_fail_the_download() {
        let (emit, _rx) = Emitter::channel();
        let mut p = Progress::new(0, None, &emit);
        assert!(p.expect(Some(MAX_PACKAGE + 1)).is_err());
        assert!(p.expect(None).is_ok());
        p.received = MAX_PACKAGE;
        assert!(matches!(
            bounded(p.advance(1)).await,
            Err(DownloadError::Other(_))
        ));
    }

    #[test]
    fn announced_sizes_do_not_preallocate_without_bound() {
        assert!(package_buffer(Some(u64::MAX)).capacity() <= MAX_PREALLOCATION as usize);
        assert_eq!(package_buffer(None).capacity(), 0);
    }
}

//! Download progress as a module shows it: bytes counted against the
//! announced size, `DOWNLOADING,k` lines as fractions of the package
//! arrive, the optional throttle, and the simulator's package size limit
//! ([`MAX_PACKAGE`]).
//!
//! The FTP and HTTP fetchers (`ftp.rs`, `http.rs`) feed it; it imports
//! only the failure type ([`super::cause`]) and the run's [`Emitter`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::cause::DownloadError;
use crate::sim::emit::Emitter;
use crate::sim::package::PackageData;
use crate::sim::urc::Urc;

/// Largest buffer reserved up front from an announced size; a larger
/// package grows the buffer as bytes arrive, so a lying `SIZE` or
/// `Content-Length` cannot make the simulator allocate it all at once.
const MAX_PREALLOCATION: u64 = 64 * 1024 * 1024;

/// Largest package the simulator downloads, in bytes (1 GiB, twice the
/// largest family limit, `eg06xk`'s 512 MiB). Packages are kept on the
/// host (in memory, or spooled to a temporary file: [`Spool`]), so a
/// server announcing or sending more fails the download ("anything else":
/// 601 / 701) instead of exhausting the host.
pub const MAX_PACKAGE: u64 = 1024 * 1024 * 1024;

/// The failure of a package over [`MAX_PACKAGE`].
fn too_large(bytes: u64) -> DownloadError {
    DownloadError::Other(format!(
        "package of {bytes} bytes is over the simulator's {MAX_PACKAGE}-byte limit"
    ))
}

/// A receive buffer for a package of `expected` bytes.
pub(crate) fn package_buffer(expected: Option<u64>) -> Vec<u8> {
    let reserve = expected.unwrap_or(0).min(MAX_PREALLOCATION);
    Vec::with_capacity(usize::try_from(reserve).unwrap_or(0))
}

/// Bytes of a download kept in memory (16 KiB, about a module's receive
/// window); past them the package goes to a temporary file ([`Spool`]).
/// With 64 KiB, 2,000 modules starting together held 128 MB until they had
/// all switched.
pub const SPOOL_FROM: usize = 16 * 1024;

/// Where a download's bytes go as they arrive: memory up to
/// [`SPOOL_FROM`], then a temporary file — as a module writes its package
/// to flash —, so thousands of modules in flight (`fleet`) hold at most
/// that much of their packages each in memory. The file
/// (`$TMPDIR/qfota-spool-<pid>-<n>`) is opened for each write and closed
/// again: a module in flight holds no descriptor for it, only its
/// sockets. It is removed when the package is dropped.
#[derive(Debug, Default)]
pub(crate) struct Spool {
    memory: Vec<u8>,
    file: Option<SpoolFile>,
    len: u64,
}

impl Spool {
    /// Keeps `data` (an append to the page cache when spooling: brief,
    /// done on the task).
    ///
    /// # Errors
    /// [`DownloadError::Other`] when the temporary file cannot be made or
    /// written (the machine's disk is full): a failure of the simulator's
    /// host, reported as "anything else" (601 / 701).
    pub(crate) fn push(&mut self, data: &[u8]) -> Result<(), DownloadError> {
        let kept = |e: std::io::Error| {
            DownloadError::Other(format!("the simulator cannot keep the package: {e}"))
        };
        self.len += data.len() as u64;
        if self.file.is_none() && self.memory.len() + data.len() <= SPOOL_FROM {
            self.memory.extend_from_slice(data);
            return Ok(());
        }
        let file = match self.file.take() {
            Some(file) => file,
            None => {
                let file = SpoolFile::create().map_err(kept)?;
                file.append(&std::mem::take(&mut self.memory))
                    .map_err(kept)?;
                file
            }
        };
        file.append(data).map_err(kept)?;
        self.file = Some(file);
        Ok(())
    }

    /// The package, in memory or in its file.
    pub(crate) fn finish(self) -> PackageData {
        match self.file {
            Some(file) => PackageData::Spooled(file, self.len),
            None => PackageData::Memory(Arc::new(self.memory)),
        }
    }
}

/// A spooled package's file: removed on drop.
#[derive(Debug)]
pub(crate) struct SpoolFile {
    path: std::path::PathBuf,
}

impl SpoolFile {
    /// A new empty file of this process in the temporary folder, owner
    /// read and write only.
    fn create() -> std::io::Result<SpoolFile> {
        use std::os::unix::fs::OpenOptionsExt;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("qfota-spool-{}-{n}", std::process::id()));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(SpoolFile { path })
    }

    /// Appends `data`.
    fn append(&self, data: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)?
            .write_all(data)
    }

    /// The file, opened for reading.
    pub(crate) fn open(&self) -> std::io::Result<std::fs::File> {
        std::fs::File::open(&self.path)
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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
    /// Free space the package must fit, bytes.
    space: Option<u64>,
    /// Percentage of the package at which the power goes.
    cut_at: Option<u8>,
    /// Filled when the first package byte arrives.
    first_byte: Option<Arc<OnceLock<Instant>>>,
}

impl<'a> Progress<'a> {
    /// Progress towards `lines` `DOWNLOADING` lines, throttled to `rate`
    /// bytes/s (`None` or 0: unthrottled).
    pub(crate) fn new(lines: u8, rate: Option<u64>, emit: &'a Emitter) -> Progress<'a> {
        Progress {
            lines,
            printed: 0,
            total: None,
            received: 0,
            started: Instant::now(),
            rate: rate.filter(|r| *r > 0),
            emit,
            counter: None,
            space: None,
            cut_at: None,
            first_byte: None,
        }
    }

    /// Notes in `cell` when the first package byte arrives (time to first
    /// byte, for fleet runs).
    pub(crate) fn first_byte_into(mut self, cell: Arc<OnceLock<Instant>>) -> Progress<'a> {
        self.first_byte = Some(cell);
        self
    }

    /// Fails the download with [`DownloadError::NoSpace`] when the package
    /// (announced or received) is larger than `space` bytes.
    pub(crate) fn limit(mut self, space: Option<u64>) -> Progress<'a> {
        self.space = space;
        self
    }

    /// Fails the download with [`DownloadError::PowerCut`] once `percent`
    /// of an announced size has arrived.
    pub(crate) fn power_cut(mut self, percent: Option<u8>) -> Progress<'a> {
        self.cut_at = percent;
        self
    }

    fn check_space(&self, needed: u64) -> Result<(), DownloadError> {
        match self.space {
            Some(free) if needed > free => Err(DownloadError::NoSpace { needed, free }),
            _ => Ok(()),
        }
    }

    /// Mirrors the received byte count into `counter`, for observers
    /// outside the download (the run's summary).
    pub(crate) fn count_into(mut self, counter: Arc<AtomicU64>) -> Progress<'a> {
        self.counter = Some(counter);
        self
    }

    /// Sets the announced package size, when the server gives one.
    ///
    /// # Errors
    /// A size over [`MAX_PACKAGE`].
    pub(crate) fn expect(&mut self, total: Option<u64>) -> Result<(), DownloadError> {
        if let Some(total) = total.filter(|t| *t > MAX_PACKAGE) {
            return Err(too_large(total));
        }
        if let Some(total) = total {
            self.check_space(total)?;
        }
        self.total = total;
        Ok(())
    }

    /// Bytes received so far.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// Records `n` more bytes, prints the progress lines now due, and
    /// sleeps as long as the throttle asks.
    ///
    /// # Errors
    /// More than [`MAX_PACKAGE`] bytes in all.
    pub(crate) async fn advance(&mut self, n: usize) -> Result<(), DownloadError> {
        // Throttled, a read is counted a quarter second's worth at a time,
        // each part once the rate has let it through: what observers see
        // (the received count, DOWNLOADING lines, a power cut, a fleet's
        // deadline) keeps to the rate however much one read brought.
        let step = match self.rate {
            Some(rate) => usize::try_from(rate / 4).unwrap_or(usize::MAX).max(1),
            None => n.max(1),
        };
        let mut left = n;
        while left > 0 {
            let part = left.min(step);
            self.advance_part(part).await?;
            left -= part;
        }
        Ok(())
    }

    /// [`Progress::advance`] for one part of a read.
    async fn advance_part(&mut self, n: usize) -> Result<(), DownloadError> {
        if n > 0
            && let Some(cell) = &self.first_byte
        {
            cell.get_or_init(Instant::now);
        }
        if let Some(rate) = self.rate {
            // When a link of `rate` bytes/s has carried this part too.
            let through = self.received.saturating_add(n as u64);
            let due = Duration::try_from_secs_f64(through as f64 / rate as f64)
                .ok()
                .and_then(|d| self.started.checked_add(d));
            if let Some(due) = due {
                tokio::time::sleep_until(due).await;
            }
        }
        self.received = self.received.saturating_add(n as u64);
        if let Some(counter) = &self.counter {
            counter.store(self.received, Ordering::Relaxed);
        }
        if self.received > MAX_PACKAGE {
            return Err(too_large(self.received));
        }
        self.check_space(self.received)?;
        if let (Some(cut), Some(total)) = (self.cut_at, self.total) {
            // The first byte count at or past the share: the power goes
            // there, whatever the size of the read that crossed it.
            let boundary = (u128::from(cut) * u128::from(total)).div_ceil(100);
            let boundary = u64::try_from(boundary).unwrap_or(u64::MAX);
            if self.received >= boundary {
                self.received = boundary;
                if let Some(counter) = &self.counter {
                    counter.store(boundary, Ordering::Relaxed);
                }
                return Err(DownloadError::PowerCut { received: boundary });
            }
        }
        if let Some(total) = self.total.filter(|t| *t > 0) {
            let done = u128::from(self.received.min(total));
            let due = done * u128::from(self.lines) / u128::from(total);
            self.print_up_to(u8::try_from(due).unwrap_or(self.lines));
        }
        Ok(())
    }

    /// Prints the remaining progress lines once the whole package is in
    /// (all of them when the size was unknown or zero).
    pub(crate) fn complete(&mut self) {
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
    use crate::sim::testing::{bounded, drain};
    use crate::sim::urc::Event;

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

    /// The events of a `lines`-line progress announced as `total` bytes:
    /// after `received` bytes, then after the download completes.
    async fn lines_then_complete(
        lines: u8,
        total: Option<u64>,
        received: usize,
    ) -> (Vec<Event>, Vec<Event>) {
        let (emit, mut rx) = Emitter::channel();
        let mut p = Progress::new(lines, None, &emit);
        p.expect(total).unwrap();
        bounded(p.advance(received)).await.unwrap();
        let before = drain(&mut rx);
        p.complete();
        (before, drain(&mut rx))
    }

    #[tokio::test]
    async fn unknown_size_prints_every_line_at_the_end() {
        let (before, after) = lines_then_complete(5, None, 10).await;
        assert!(before.is_empty());
        let lines: Vec<Event> = (1..=5).map(|k| Event::Urc(Urc::Downloading(k))).collect();
        assert_eq!(after, lines);
    }

    #[tokio::test]
    async fn no_lines_when_disabled() {
        let (before, after) = lines_then_complete(0, Some(10), 10).await;
        assert!(before.is_empty() && after.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_throttles_the_download() {
        let (emit, _rx) = Emitter::channel();
        let counter = Arc::new(AtomicU64::new(0));
        let mut p = Progress::new(0, Some(1000), &emit).count_into(Arc::clone(&counter));
        let start = Instant::now();
        // One read of 3,000 bytes: counted as it comes due, not at once.
        let advance = p.advance(3000);
        tokio::pin!(advance);
        assert!(
            tokio::time::timeout(Duration::from_millis(1100), &mut advance)
                .await
                .is_err()
        );
        let seen = counter.load(Ordering::Relaxed);
        assert!(
            (1000..=1500).contains(&seen),
            "{seen} bytes counted after 1.1 s"
        );
        bounded(advance).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(counter.load(Ordering::Relaxed), 3000);
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

    #[tokio::test]
    async fn space_and_power_cut_stop_the_download() {
        let (emit, _rx) = Emitter::channel();
        let mut p = Progress::new(0, None, &emit).limit(Some(10));
        assert!(matches!(
            p.expect(Some(11)),
            Err(DownloadError::NoSpace {
                needed: 11,
                free: 10
            })
        ));
        p.expect(None).unwrap();
        assert!(bounded(p.advance(10)).await.is_ok());
        assert!(matches!(
            bounded(p.advance(1)).await,
            Err(DownloadError::NoSpace { .. })
        ));
        let mut cut = Progress::new(0, None, &emit).power_cut(Some(50));
        cut.expect(Some(100)).unwrap();
        assert!(bounded(cut.advance(49)).await.is_ok());
        assert!(matches!(
            bounded(cut.advance(1)).await,
            Err(DownloadError::PowerCut { received: 50 })
        ));
        // A read that crosses the share: the power goes at the share.
        let mut cut = Progress::new(0, None, &emit).power_cut(Some(10));
        cut.expect(Some(3_145_836)).unwrap();
        assert!(matches!(
            bounded(cut.advance(375_015)).await,
            Err(DownloadError::PowerCut { received: 314_584 })
        ));
        assert_eq!(cut.received(), 314_584);
    }

    #[test]
    fn a_spool_keeps_small_packages_in_memory_and_large_ones_in_a_file() {
        use std::io::Read;
        let mut small = Spool::default();
        small.push(&[1u8; 1000]).unwrap();
        assert!(matches!(small.finish(), PackageData::Memory(b) if b.len() == 1000));
        let mut large = Spool::default();
        for i in 0..10u8 {
            large.push(&[i; 16 * 1024]).unwrap();
        }
        // Past the first 16 KiB, nothing stays in memory.
        assert_eq!(large.len, 160 * 1024);
        assert!(large.memory.is_empty(), "in memory: {}", large.memory.len());
        let PackageData::Spooled(file, len) = large.finish() else {
            panic!("not spooled");
        };
        assert_eq!(len, 160 * 1024);
        let mut back = Vec::new();
        file.open().unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), 160 * 1024);
        assert!(back[..16 * 1024].iter().all(|b| *b == 0));
        assert!(back[9 * 16 * 1024..].iter().all(|b| *b == 9));
        // Gone with the package.
        let path = file.path.clone();
        assert!(path.exists());
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn announced_sizes_do_not_preallocate_without_bound() {
        assert!(package_buffer(Some(u64::MAX)).capacity() <= MAX_PREALLOCATION as usize);
        assert_eq!(package_buffer(None).capacity(), 0);
    }
}

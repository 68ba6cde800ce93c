//! The folder-backed catalog: the package folder, scanned and re-scanned.
//!
//! [`FsCatalog`] walks the package folder, validates every regular file
//! once per change (see [`Package::validate`]) and re-scans every
//! [`SCAN_INTERVAL`] so a package copied in while running is served within
//! two seconds. Hidden files, symlinks that leave the folder and anything
//! that is not a regular file are excluded with a reason.
//!
//! A scan only reads metadata; new and changed files are validated in the
//! background (files of [`LARGE_PACKAGE`] bytes or more [`MAX_VALIDATIONS`]
//! at a time), and join the catalog one by
//! one as each passes. Meanwhile such a file looks up as
//! [`Lookup::Validating`](super::Lookup::Validating) (HTTP `503` with
//! `Retry-After`, FTP `450`), so a slow or hostile package never delays
//! the catalog's view of the others.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::validate::Advertised;
use super::{Catalog, OpenError, Package, PackageReader, RESIDENT_TOTAL, Snapshot, SourceHealth};

/// Where a package's bytes live and what they looked like when validated.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OnDisk {
    /// The file (the resolved target for a symlink).
    fs_path: PathBuf,
    stamp: FileStamp,
}

/// Size, mtime, inode and ctime of a file: what changes whenever its
/// content or name does. Inode and ctime catch a same-size rewrite that
/// restores the old mtime (`touch -r`, `rsync -t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: SystemTime,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl FileStamp {
    fn of(meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            len: meta.len(),
            modified: modified(meta),
            ino: meta.ino(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }
}

/// Opens a package file without blocking on a FIFO or device swapped in
/// under its name (`O_NONBLOCK`), and only if it is still the regular file
/// that was validated (`stamp`).
fn open_pinned(path: &Path, stamp: FileStamp) -> Result<fs::File, OpenError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || FileStamp::of(&meta) != stamp {
        return Err(OpenError::Changed);
    }
    Ok(file)
}

/// Bytes read from a package file per step of [`pinned_reader`].
const PINNED_CHUNK: usize = 64 * 1024;

/// The bytes `range` of `file`, read in chunks on the blocking pool; after
/// each chunk the file is checked against the validated `stamp`, so a
/// package rewritten, truncated or grown in place mid-download ends the
/// download with an error ("package changed during the download") instead
/// of sending a spliced body — every byte handed out was read while the
/// file was still the validated one.
fn pinned_reader(
    file: fs::File,
    stamp: FileStamp,
    range: Range<u64>,
) -> impl tokio::io::AsyncRead + Send + Sync + Unpin {
    use futures_util::stream;
    use std::os::unix::fs::FileExt;
    let file = Arc::new(file);
    let chunks = stream::try_unfold(range.start, move |at| {
        let file = Arc::clone(&file);
        let end = range.end;
        async move {
            if at >= end {
                return Ok::<_, io::Error>(None);
            }
            let len = usize::try_from(end - at)
                .unwrap_or(usize::MAX)
                .min(PINNED_CHUNK);
            let chunk = tokio::task::spawn_blocking(move || -> io::Result<bytes::Bytes> {
                let mut buf = vec![0u8; len];
                let n = file.read_at(&mut buf, at)?;
                if n == 0 || FileStamp::of(&file.metadata()?) != stamp {
                    return Err(io::Error::other("package changed during the download"));
                }
                buf.truncate(n);
                Ok(bytes::Bytes::from(buf))
            })
            .await
            .map_err(io::Error::other)??;
            let next = at + chunk.len() as u64;
            Ok(Some((chunk, next)))
        }
    });
    tokio_util::io::StreamReader::new(Box::pin(chunks))
}

fn modified(meta: &fs::Metadata) -> SystemTime {
    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)
}

/// One scan: the snapshot served, where each package's bytes are, and the
/// files waiting for (or under) validation. Its `Debug` gives counts, not
/// the resident copies' bytes.
#[derive(Default, Clone)]
struct Scan {
    snapshot: Arc<Snapshot>,
    files: BTreeMap<String, OnDisk>,
    pending: BTreeMap<String, OnDisk>,
    /// Resident copies of valid packages (see [`Catalog::resident`]).
    resident: BTreeMap<String, Bytes>,
    /// Files that could not be read at their last validation, and
    /// sub-folders that could not be listed (`name/`), and why.
    unreadable: BTreeMap<String, String>,
}

impl std::fmt::Debug for Scan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan")
            .field("packages", &self.snapshot.packages().len())
            .field("pending", &self.pending.len())
            .field("resident_bytes", &self.resident_bytes())
            .finish_non_exhaustive()
    }
}

impl Scan {
    fn resident_bytes(&self) -> u64 {
        self.resident.values().map(super::twin::footprint).sum()
    }
}

/// Folder-backed catalog.
#[derive(Debug)]
pub struct FsCatalog {
    root: PathBuf,
    advertised: Advertised,
    scan: RwLock<Arc<Scan>>,
    /// Files being validated now: what each looked like, and the flag
    /// that stops its validation (the file changed again or went away).
    in_flight: Mutex<BTreeMap<String, (OnDisk, Arc<AtomicBool>)>>,
    /// How many validations are in flight (wakes [`FsCatalog::rescan`]).
    busy: tokio::sync::watch::Sender<usize>,
    /// Validations of large files allowed at once.
    slots: Arc<tokio::sync::Semaphore>,
    /// Memory for resident copies, in bytes (0: none).
    resident_total: u64,
    /// Why the last scan failed (the folder removed or made unreadable);
    /// `None` once a scan succeeds.
    scan_error: Mutex<Option<String>>,
}

/// Validations of large files ([`LARGE_PACKAGE`] bytes or more) run at once
/// in the background, each on a blocking thread: two leave a core for
/// serving on a 2-core machine. Smaller files never wait for a slot, so
/// large or hostile packages cannot hold back a small one.
pub const MAX_VALIDATIONS: usize = 2;

/// Size from which a file's validation takes one of the
/// [`MAX_VALIDATIONS`] slots (64 MiB: well under a second to check).
pub const LARGE_PACKAGE: u64 = 64 << 20;

/// How often [`FsCatalog`]'s [`Catalog::watch`] re-scans (1 s: changes are
/// served within 2 s).
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);

impl FsCatalog {
    /// Files under the folder that could not be read at their last
    /// validation (permissions, I/O errors), and sub-folders that could not
    /// be listed at the last scan (keyed `name/`), with why, sorted by key:
    /// not served, tried again at each scan.
    pub fn unreadable(&self) -> Vec<(String, String)> {
        self.current()
            .unreadable
            .iter()
            .map(|(k, why)| (k.clone(), why.clone()))
            .collect()
    }

    /// Scans `root` once and returns the catalog. `advertised` gives the
    /// host and ports used for the per-profile URL verdicts.
    ///
    /// # Errors
    /// `root` does not exist or is not a readable directory.
    pub async fn open(root: &Path, advertised: Advertised) -> io::Result<Arc<Self>> {
        Self::open_with_memory(root, advertised, RESIDENT_TOTAL).await
    }

    /// Like [`FsCatalog::open`], keeping resident copies of valid packages
    /// (each at most [`RESIDENT_MAX_PACKAGE`](super::RESIDENT_MAX_PACKAGE)) in up to `memory` bytes
    /// (`--package-memory-mib`); 0 reads every download from its file.
    ///
    /// # Errors
    /// As [`FsCatalog::open`].
    pub async fn open_with_memory(
        root: &Path,
        advertised: Advertised,
        memory: u64,
    ) -> io::Result<Arc<Self>> {
        let root = tokio::fs::canonicalize(root).await?;
        if !tokio::fs::metadata(&root).await?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        let catalog = Arc::new(FsCatalog {
            root,
            advertised,
            scan: RwLock::new(Arc::new(Scan::default())),
            in_flight: Mutex::new(BTreeMap::new()),
            busy: tokio::sync::watch::Sender::new(0),
            scan_error: Mutex::new(None),
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_VALIDATIONS)),
            resident_total: memory,
        });
        catalog.rescan().await?;
        Ok(catalog)
    }

    /// The canonical package folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What the verdicts were computed for.
    pub fn advertised(&self) -> &Advertised {
        &self.advertised
    }

    /// Re-scans the folder and waits until every new or changed file is
    /// validated (files whose size, modification time, inode, ctime or
    /// symlink target are unchanged are not re-read).
    ///
    /// # Errors
    /// The folder itself can no longer be read.
    pub async fn rescan(self: &Arc<Self>) -> io::Result<()> {
        self.scan_once().await?;
        let mut busy = self.busy.subscribe();
        // Validation is bounded by the zip budget: this ends.
        let _ = busy.wait_for(|n| *n == 0).await;
        Ok(())
    }

    /// Scans the folder's metadata, publishes what it found and starts the
    /// validation of new and changed files, without waiting for them.
    async fn scan_once(self: &Arc<Self>) -> io::Result<()> {
        let result = self.scan_folder().await;
        let mut error = self.scan_error.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            // Said once per episode (and again if the cause changes), not
            // at every tick.
            Err(err) => {
                let why = err.to_string();
                if error.as_deref() != Some(why.as_str()) {
                    tracing::warn!(error = %why, root = %self.root.display(), "package folder scan failed (the packages read before are kept)");
                }
                *error = Some(why);
            }
            Ok(()) => {
                if error.take().is_some() {
                    tracing::info!(root = %self.root.display(), "package folder readable again");
                }
            }
        }
        result
    }

    /// [`FsCatalog::scan_once`] without the health bookkeeping.
    async fn scan_folder(self: &Arc<Self>) -> io::Result<()> {
        let this = Arc::clone(self);
        let previous = self.current();
        let mut next = tokio::task::spawn_blocking(move || this.scan_blocking(&previous))
            .await
            .map_err(io::Error::other)??;
        {
            let mut scan = self.scan.write().unwrap_or_else(|p| p.into_inner());
            // A validation may have finished while the folder was read.
            let done: Vec<String> = next
                .pending
                .iter()
                .filter(|(key, on_disk)| scan.files.get(*key) == Some(on_disk))
                .map(|(key, _)| key.clone())
                .collect();
            let snapshot = Arc::make_mut(&mut next.snapshot);
            for key in done {
                if let (Some(pkg), Some(on_disk)) =
                    (scan.snapshot.package(&key), next.pending.remove(&key))
                {
                    snapshot.add_package(Arc::clone(pkg));
                    if let Some(copy) = scan.resident.get(&key) {
                        next.resident.insert(key.clone(), copy.clone());
                    }
                    next.files.insert(key, on_disk);
                }
            }
            for old in scan.snapshot.packages() {
                if next.snapshot.package(&old.path).is_none()
                    && !next.pending.contains_key(&old.path)
                {
                    tracing::info!(path = %old.path, "package removed");
                }
            }
            *scan = Arc::new(next);
        }
        let pending = self.current().pending.clone();
        // Validations of files that changed again or went away stop.
        for (key, (on_disk, stop)) in self.in_flight().iter() {
            if pending.get(key) != Some(on_disk) {
                stop.store(true, Ordering::Release);
            }
        }
        for (key, on_disk) in pending {
            self.validate_in_background(key, on_disk);
        }
        Ok(())
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (OnDisk, Arc<AtomicBool>)>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops every validation in flight (the server is shutting down).
    fn stop_validations(&self) {
        for (_, stop) in self.in_flight().values() {
            stop.store(true, Ordering::Release);
        }
    }

    /// Validates `key` as `on_disk` on a blocking thread, unless that very
    /// file is already being validated, then adds it to the catalog.
    fn validate_in_background(self: &Arc<Self>, key: String, on_disk: OnDisk) {
        let stop = Arc::new(AtomicBool::new(false));
        {
            let mut in_flight = self.in_flight();
            if in_flight.get(&key).is_some_and(|(d, _)| *d == on_disk) {
                return;
            }
            let previous = in_flight.insert(key.clone(), (on_disk.clone(), Arc::clone(&stop)));
            if let Some((_, old)) = previous {
                old.store(true, Ordering::Release);
            }
        }
        self.busy.send_modify(|n| *n += 1);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let permit = if on_disk.stamp.len >= LARGE_PACKAGE {
                Arc::clone(&this.slots).acquire_owned().await.ok()
            } else {
                None
            };
            let worker = Arc::clone(&this);
            let (k, d, flag) = (key.clone(), on_disk.clone(), Arc::clone(&stop));
            let checked = tokio::task::spawn_blocking(move || worker.validate_one(&k, &d, &flag))
                .await
                .unwrap_or(Checked::Unreadable(None));
            drop(permit);
            this.finish(&key, &on_disk, checked);
            {
                let mut in_flight = this.in_flight();
                if in_flight
                    .get(&key)
                    .is_some_and(|(_, s)| Arc::ptr_eq(s, &stop))
                {
                    in_flight.remove(&key);
                }
            }
            this.busy.send_modify(|n| *n -= 1);
        });
    }

    /// Publishes the result of validating `key` as `on_disk`, if the file
    /// is still pending as that (a newer change waits for its own).
    fn finish(&self, key: &str, on_disk: &OnDisk, checked: Checked) {
        let mut scan = self.scan.write().unwrap_or_else(|p| p.into_inner());
        if scan.pending.get(key) != Some(on_disk) {
            return;
        }
        let mut next = Scan::clone(&scan);
        next.pending.remove(key);
        next.resident.remove(key);
        let resident_bytes = next.resident_bytes();
        let snapshot = Arc::make_mut(&mut next.snapshot);
        snapshot.settle(key);
        match checked {
            Checked::Package(pkg, copy) => {
                next.unreadable.remove(key);
                log_package("package validated", &pkg);
                if let Some(copy) = copy.filter(|_| pkg.is_valid())
                    && resident_bytes + super::twin::footprint(&copy) <= self.resident_total
                {
                    next.resident.insert(key.to_string(), copy);
                }
                snapshot.add_package(Arc::new(pkg));
                next.files.insert(key.to_string(), on_disk.clone());
            }
            Checked::Crashed => snapshot.exclude(key, "validation crashed"),
            Checked::Unreadable(why) => {
                if let Some(why) = why {
                    next.unreadable.insert(key.to_string(), why);
                }
            }
        }
        *scan = Arc::new(next);
    }

    fn current(&self) -> Arc<Scan> {
        Arc::clone(&self.scan.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn scan_blocking(&self, previous: &Scan) -> io::Result<Scan> {
        // Fail loudly only for the root; sub-folder errors are logged.
        let root_meta = fs::metadata(&self.root)?;
        fs::read_dir(&self.root)?;
        let mut snap = Snapshot::new(modified(&root_meta));
        let mut files = BTreeMap::new();
        let mut pending = BTreeMap::new();
        let mut resident = BTreeMap::new();
        let mut unreadable = BTreeMap::new();
        let mut stack = vec![(self.root.clone(), String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(err) => {
                    // Its packages are unknown: reported like an
                    // unreadable file (`check` fails), logged when new.
                    let key = format!("{prefix}/");
                    if !previous.unreadable.contains_key(&key) {
                        tracing::warn!(dir = %dir.display(), error = %err, "cannot read folder");
                    }
                    unreadable.insert(key, format!("cannot list the folder: {err}"));
                    continue;
                }
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let key = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}/{name}")
                };
                if name.starts_with('.') {
                    snap.exclude(key, "hidden file");
                    continue;
                }
                let sorted = self.classify(&entry, &key, &mut snap, &mut stack);
                let (target, meta) = match sorted {
                    Ok(Some(found)) => found,
                    Ok(None) => continue,
                    Err(err) => {
                        // Listed but not examinable (a folder readable
                        // and not searchable): its package is unknown,
                        // reported like an unreadable file.
                        if !previous.unreadable.contains_key(&key) {
                            tracing::warn!(path = %key, error = %err, "cannot read the file's details");
                        }
                        unreadable.insert(key, format!("cannot read its details: {err}"));
                        continue;
                    }
                };
                let on_disk = OnDisk {
                    fs_path: target,
                    stamp: FileStamp::of(&meta),
                };
                if let Some(old) = previous.snapshot.package(&key)
                    && previous.files.get(&key) == Some(&on_disk)
                {
                    snap.add_package(Arc::clone(old));
                    if let Some(copy) = previous.resident.get(&key) {
                        resident.insert(key.clone(), copy.clone());
                    }
                    files.insert(key, on_disk);
                    continue;
                }
                snap.add_validating(key.clone(), on_disk.stamp.modified);
                pending.insert(key, on_disk);
            }
        }
        Ok(Scan {
            snapshot: Arc::new(snap),
            files,
            pending,
            resident,
            unreadable,
        })
    }

    /// Sorts one folder entry: a regular file under the folder comes back
    /// (resolved path and metadata); a folder is added and queued; anything
    /// else is excluded with its reason.
    ///
    /// # Errors
    /// The entry's type or metadata cannot be read (a folder that may be
    /// read but not searched).
    fn classify(
        &self,
        entry: &fs::DirEntry,
        key: &str,
        snap: &mut Snapshot,
        stack: &mut Vec<(PathBuf, String)>,
    ) -> io::Result<Option<(PathBuf, fs::Metadata)>> {
        let file_type = entry.file_type()?;
        let target = if file_type.is_symlink() {
            match fs::canonicalize(entry.path()) {
                Ok(t) if t.starts_with(&self.root) => t,
                Ok(_) => {
                    snap.exclude(key, "symlink leaves the package folder");
                    return Ok(None);
                }
                Err(_) => {
                    snap.exclude(key, "dangling symlink");
                    return Ok(None);
                }
            }
        } else {
            entry.path()
        };
        let meta = fs::metadata(&target)?;
        if meta.is_dir() {
            // Symlinked folders are not followed: they could loop.
            if file_type.is_symlink() {
                snap.exclude(key, "symlinked folder (not followed)");
            } else {
                snap.add_folder(key, modified(&meta));
                stack.push((target, key.to_string()));
            }
            return Ok(None);
        }
        if !meta.is_file() {
            snap.exclude(key, "not a regular file");
            return Ok(None);
        }
        Ok(Some((target, meta)))
    }

    /// Validates one file (blocking), until `stop` is set.
    fn validate_one(&self, key: &str, on_disk: &OnDisk, stop: &AtomicBool) -> Checked {
        // One hostile file must not stop the others: a panic inside the
        // zip reader excludes that file only.
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // As a download opens it (`open_pinned`): a FIFO or device
            // swapped in under the name since the scan is not waited on.
            let file = {
                use std::os::unix::fs::OpenOptionsExt;
                fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                    .open(&on_disk.fs_path)?
            };
            if !file.metadata()?.is_file() {
                return Err(std::io::Error::other(
                    "no longer a regular file (replaced since the folder was listed)",
                ));
            }
            Package::validate_keeping(
                key,
                Stoppable { inner: file, stop },
                on_disk.stamp.len,
                self.resident_total,
                on_disk.stamp.modified,
                &self.advertised,
            )
        }));
        match checked {
            Ok(Ok((pkg, copy))) => Checked::Package(pkg, copy),
            Ok(Err(err)) if err.get_ref().is_some_and(|e| e.is::<Stopped>()) => {
                tracing::debug!(path = %key, "validation stopped: the file changed or went away");
                Checked::Unreadable(None)
            }
            Ok(Err(err)) => {
                tracing::warn!(path = %key, error = %err, "cannot read package");
                Checked::Unreadable(Some(err.to_string()))
            }
            Err(_) => {
                tracing::error!(path = %key, "package validation crashed; not served");
                Checked::Crashed
            }
        }
    }
}

/// Why a [`Stoppable`] read failed (not `Interrupted`: readers retry that).
#[derive(Debug, thiserror::Error)]
#[error("validation stopped: the file changed or went away")]
struct Stopped;

/// A reader that fails with [`Stopped`] once `stop` is set, so a
/// validation whose file changed again stops within one read.
struct Stoppable<'a> {
    inner: fs::File,
    stop: &'a AtomicBool,
}

impl io::Read for Stoppable<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Acquire) {
            return Err(io::Error::other(Stopped));
        }
        self.inner.read(buf)
    }
}

impl io::Seek for Stoppable<'_> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// How validating one file ended.
#[derive(Debug)]
enum Checked {
    /// Read through: a package, valid or not, and its bytes when they
    /// were read into memory.
    Package(Package, Option<Bytes>),
    /// The file could not be read (it is tried again at the next scan):
    /// why, unless its validation was stopped because it changed.
    Unreadable(Option<String>),
    /// The validator panicked: the file is excluded.
    Crashed,
}

fn log_package(what: &str, pkg: &Package) {
    if pkg.is_valid() {
        tracing::info!(path = %pkg.path, size = pkg.size, sha256 = %pkg.sha256, "{what}");
    } else {
        tracing::warn!(path = %pkg.path, size = pkg.size, problems = %pkg.problems.join("; "), "{what}: invalid, not served");
    }
}

#[async_trait]
impl Catalog for FsCatalog {
    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current().snapshot)
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn open(&self, package: &Package, range: Range<u64>) -> Result<PackageReader, OpenError> {
        let scan = self.current();
        // The file must also still look as it did when validated.
        let on_disk = scan.snapshot.source(&scan.files, package, &range)?;
        let (path, stamp) = (on_disk.fs_path.clone(), on_disk.stamp);
        let file = tokio::task::spawn_blocking(move || open_pinned(&path, stamp))
            .await
            .map_err(io::Error::other)??;
        Ok(Box::new(pinned_reader(file, stamp, range)))
    }

    fn resident(&self, package: &Package) -> Option<Bytes> {
        // Only for the very version asked about.
        let scan = self.current();
        let whole = 0..package.size;
        scan.snapshot
            .source(&scan.resident, package, &whole)
            .ok()
            .cloned()
    }

    async fn rescan_now(self: Arc<Self>) -> io::Result<()> {
        self.rescan().await
    }

    fn source_health(&self) -> SourceHealth {
        let error = self.scan_error.lock().unwrap_or_else(|p| p.into_inner());
        match &*error {
            None => SourceHealth::Ok,
            Some(why) => SourceHealth::Unreachable(format!("{}: {why}", self.root.display())),
        }
    }

    async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(SCAN_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.stop_validations();
                    return;
                }
                _ = tick.tick() => {
                    // A failure is logged and kept for `source_health`.
                    let _ = self.scan_once().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Lookup;

    #[tokio::test]
    async fn scan_finds_packages_and_excludes_hidden_and_escaping_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.zip"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("Jun")).unwrap();
        std::fs::write(dir.path().join("Jun/a.zip"), b"not a zip").unwrap();
        std::fs::write(dir.path().join(".hidden.zip"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.zip"), dir.path().join("s.zip"))
            .unwrap();
        let cat = FsCatalog::open(dir.path(), Advertised::default())
            .await
            .unwrap();
        match cat.lookup("Jun/a.zip") {
            Lookup::Package(p) => {
                assert!(!p.is_valid());
                assert_eq!(p.size, 9);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(cat.lookup("Jun"), Lookup::Directory));
        assert!(matches!(cat.lookup(".hidden.zip"), Lookup::Excluded(_)));
        assert!(matches!(cat.lookup("s.zip"), Lookup::Excluded(r) if r.contains("leaves")));
        assert!(matches!(cat.lookup("nope.zip"), Lookup::Missing));
        assert_eq!(cat.packages().len(), 1);
    }

    /// A FIFO swapped in under a package's name after the folder was
    /// listed is refused at once, not waited on for a writer.
    #[tokio::test]
    async fn a_fifo_swapped_in_before_validation_is_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let cat = FsCatalog::open(dir.path(), Advertised::default())
            .await
            .unwrap();
        let fifo = dir.path().join("r.zip");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from(0o600)).unwrap();
        let on_disk = OnDisk {
            stamp: FileStamp::of(&std::fs::metadata(&fifo).unwrap()),
            fs_path: fifo,
        };
        let checked = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::task::spawn_blocking(move || {
                cat.validate_one("r.zip", &on_disk, &AtomicBool::new(false))
            }),
        )
        .await
        .expect("validation waited on the FIFO")
        .unwrap();
        assert!(
            matches!(&checked, Checked::Unreadable(Some(why)) if why.contains("regular file")),
            "{}",
            match checked {
                Checked::Unreadable(why) => format!("unreadable: {why:?}"),
                Checked::Package(..) => "a package".into(),
                Checked::Crashed => "crashed".into(),
            }
        );
    }

    #[tokio::test]
    async fn rescan_picks_up_new_and_removed_files() {
        let dir = tempfile::tempdir().unwrap();
        let cat = FsCatalog::open(dir.path(), Advertised::default())
            .await
            .unwrap();
        assert!(cat.packages().is_empty());
        std::fs::write(dir.path().join("b.bin"), b"image").unwrap();
        cat.rescan().await.unwrap();
        let pkg = match cat.lookup("b.bin") {
            Lookup::Package(p) => p,
            other => panic!("{other:?}"),
        };
        assert!(pkg.is_valid(), "{:?}", pkg.problems);
        assert!(pkg.zip.is_none());
        std::fs::remove_file(dir.path().join("b.bin")).unwrap();
        cat.rescan().await.unwrap();
        assert!(matches!(cat.lookup("b.bin"), Lookup::Missing));
    }

    // A same-size rewrite that restores the old mtime must still be
    // re-validated, or the old ETag and SHA-256 would be served.
    #[tokio::test]
    async fn same_size_rewrite_with_restored_mtime_is_revalidated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        std::fs::write(&path, b"version-1").unwrap();
        let cat = FsCatalog::open(dir.path(), Advertised::default())
            .await
            .unwrap();
        let Lookup::Package(old) = cat.lookup("a.bin") else {
            panic!()
        };
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, b"version-2").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(matches!(
            cat.open(&old, 0..old.size).await,
            Err(OpenError::Changed)
        ));
        cat.rescan().await.unwrap();
        let Lookup::Package(new) = cat.lookup("a.bin") else {
            panic!()
        };
        assert_ne!(new.sha256, old.sha256);
    }
}

//! The folder-backed catalog: the package folder, scanned and re-scanned.
//!
//! [`FsCatalog`] walks the package folder, validates every regular file
//! once per change (see [`Package::validate`]) and re-scans every
//! [`SCAN_INTERVAL`] so a package copied in while running is served within
//! two seconds. Hidden files, symlinks that leave the folder and anything
//! that is not a regular file are excluded with a reason.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::validate::Advertised;
use super::{Catalog, OpenError, Package, PackageReader, Snapshot};

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
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
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

/// One scan: the snapshot served, and where each package's bytes are.
#[derive(Debug, Default)]
struct Scan {
    snapshot: Arc<Snapshot>,
    files: BTreeMap<String, OnDisk>,
}

/// Folder-backed catalog.
#[derive(Debug)]
pub struct FsCatalog {
    root: PathBuf,
    advertised: Advertised,
    scan: RwLock<Arc<Scan>>,
}

/// How often [`FsCatalog`]'s [`Catalog::watch`] re-scans (1 s: changes are
/// served within 2 s).
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);

impl FsCatalog {
    /// Scans `root` once and returns the catalog. `advertised` gives the
    /// host and ports used for the per-profile URL verdicts.
    ///
    /// # Errors
    /// `root` does not exist or is not a readable directory.
    pub async fn open(root: &Path, advertised: Advertised) -> io::Result<Arc<Self>> {
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

    /// Re-scans the folder, re-validating only files whose size,
    /// modification time, inode, ctime or symlink target changed, and logs
    /// additions, changes and removals.
    ///
    /// # Errors
    /// The folder itself can no longer be read.
    pub async fn rescan(self: &Arc<Self>) -> io::Result<()> {
        let this = Arc::clone(self);
        let previous = self.current();
        let next = tokio::task::spawn_blocking(move || this.scan_blocking(&previous))
            .await
            .map_err(io::Error::other)??;
        let previous = Arc::clone(&self.current().snapshot);
        for pkg in next.snapshot.packages() {
            match previous.package(&pkg.path) {
                None => log_package("package added", &pkg),
                Some(old) if !Arc::ptr_eq(old, &pkg) => log_package("package changed", &pkg),
                _ => {}
            }
        }
        for old in previous.packages() {
            if next.snapshot.package(&old.path).is_none() {
                tracing::info!(path = %old.path, "package removed");
            }
        }
        *self.scan.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(())
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
        let mut stack = vec![(self.root.clone(), String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(err) => {
                    tracing::warn!(dir = %dir.display(), error = %err, "cannot read folder");
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
                let Some((target, meta)) = self.classify(&entry, &key, &mut snap, &mut stack)
                else {
                    continue;
                };
                let on_disk = OnDisk {
                    fs_path: target,
                    stamp: FileStamp::of(&meta),
                };
                if let Some(old) = previous.snapshot.package(&key)
                    && previous.files.get(&key) == Some(&on_disk)
                {
                    snap.add_package(Arc::clone(old));
                    files.insert(key, on_disk);
                    continue;
                }
                if let Some(pkg) = self.validate_one(&key, &on_disk, &mut snap) {
                    snap.add_package(Arc::new(pkg));
                    files.insert(key, on_disk);
                }
            }
        }
        Ok(Scan {
            snapshot: Arc::new(snap),
            files,
        })
    }

    /// Sorts one folder entry: a regular file under the folder comes back
    /// (resolved path and metadata); a folder is added and queued; anything
    /// else is excluded with its reason.
    fn classify(
        &self,
        entry: &fs::DirEntry,
        key: &str,
        snap: &mut Snapshot,
        stack: &mut Vec<(PathBuf, String)>,
    ) -> Option<(PathBuf, fs::Metadata)> {
        let file_type = entry.file_type().ok()?;
        let target = if file_type.is_symlink() {
            match fs::canonicalize(entry.path()) {
                Ok(t) if t.starts_with(&self.root) => t,
                Ok(_) => {
                    snap.exclude(key, "symlink leaves the package folder");
                    return None;
                }
                Err(_) => {
                    snap.exclude(key, "dangling symlink");
                    return None;
                }
            }
        } else {
            entry.path()
        };
        let meta = fs::metadata(&target).ok()?;
        if meta.is_dir() {
            // Symlinked folders are not followed: they could loop.
            if file_type.is_symlink() {
                snap.exclude(key, "symlinked folder (not followed)");
            } else {
                snap.add_folder(key, modified(&meta));
                stack.push((target, key.to_string()));
            }
            return None;
        }
        if !meta.is_file() {
            snap.exclude(key, "not a regular file");
            return None;
        }
        Some((target, meta))
    }

    /// Validates one file; `None` (logged, or excluded) when it cannot be.
    fn validate_one(&self, key: &str, on_disk: &OnDisk, snap: &mut Snapshot) -> Option<Package> {
        // One hostile file must not stop the scan: a panic inside the zip
        // reader excludes that file only.
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let file = fs::File::open(&on_disk.fs_path)?;
            let content = io::BufReader::new(file);
            Package::validate(key, content, on_disk.stamp.modified, &self.advertised)
        }));
        match checked {
            Ok(Ok(pkg)) => Some(pkg),
            Ok(Err(err)) => {
                tracing::warn!(path = %key, error = %err, "cannot read package");
                None
            }
            Err(_) => {
                tracing::error!(path = %key, "package validation crashed; not served");
                snap.exclude(key, "validation crashed");
                None
            }
        }
    }
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

    async fn rescan_now(self: Arc<Self>) -> io::Result<()> {
        self.rescan().await
    }

    async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(SCAN_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(err) = self.rescan().await {
                        tracing::warn!(error = %err, root = %self.root.display(), "package folder scan failed");
                    }
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

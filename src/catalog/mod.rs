//! The package catalog: what can be served, and whether it is valid.
//!
//! [`Catalog`] is the small interface the FTP and HTTP front-ends use:
//! look a key up, list, open a package at an offset. [`FsCatalog`] is the
//! folder-backed implementation: it walks the package folder, validates every
//! regular file once per change (size, SHA-256, zip integrity, names and
//! per-profile verdicts — see [`validate`]) and re-scans on a short interval
//! so a package copied in while running is served within two seconds. An
//! object-storage catalog for stateless replicas implements the same trait.

pub mod path;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncSeekExt;
use tokio_util::sync::CancellationToken;

use crate::profile::Profile;
use validate::{Advertised, ProfileVerdict, ZipSummary};

/// One file under the package folder, with its validation report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Package {
    /// Catalog key: path relative to the package folder, `/`-separated.
    pub path: String,
    /// Where the bytes live (the resolved target for a symlink).
    #[serde(skip)]
    pub fs_path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lower-case hex.
    pub sha256: String,
    /// Last modification time of the content.
    #[serde(skip)]
    pub modified: SystemTime,
    /// Identity of the validated content on disk: inode and status-change
    /// time, which a same-size rewrite that restores the old mtime
    /// (`touch -r`, `rsync -t`) still changes.
    #[serde(skip)]
    pub stamp: FileStamp,
    /// Zip check result: the summary, or why the zip is broken; `None` for a
    /// `.bin` image (no zip check, SPEC §5). In JSON:
    /// `{"ok":true,"entries":…,"uncompressed_bytes":…}` or
    /// `{"ok":false,"error":"…"}`.
    #[serde(serialize_with = "zip_check_json")]
    pub zip: Option<Result<ZipSummary, String>>,
    /// Reasons the package is not served (broken zip, bad name); empty when
    /// valid.
    pub problems: Vec<String>,
    /// Per-profile verdicts (URL lengths, root-only paths, extensions).
    pub profiles: Vec<ProfileVerdict>,
}

impl Package {
    /// True when the package may be served without `--allow-invalid`.
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// Strong entity tag (RFC 9110 §8.8.3) derived from the SHA-256.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.sha256)
    }

    /// The verdict for one profile, if computed.
    pub fn verdict(&self, profile: &str) -> Option<&ProfileVerdict> {
        self.profiles.iter().find(|v| v.profile == profile)
    }
}

/// Serializes a zip check result without Rust's `Ok`/`Err` names.
fn zip_check_json<S: serde::Serializer>(
    zip: &Option<Result<ZipSummary, String>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let Some(result) = zip else {
        return s.serialize_none();
    };
    let mut map = s.serialize_map(None)?;
    match result {
        Ok(summary) => {
            map.serialize_entry("ok", &true)?;
            map.serialize_entry("entries", &summary.entries)?;
            map.serialize_entry("uncompressed_bytes", &summary.uncompressed_bytes)?;
        }
        Err(error) => {
            map.serialize_entry("ok", &false)?;
            map.serialize_entry("error", error)?;
        }
    }
    map.end()
}

/// Inode and ctime (seconds, nanoseconds) of a file: what changes whenever
/// its content or name does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileStamp {
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl FileStamp {
    /// The stamp of `meta`.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            ino: meta.ino(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }
}

/// What a key names.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A package (valid or not: see [`Package::is_valid`]).
    Package(Arc<Package>),
    /// A folder that may be listed.
    Directory,
    /// Something under the folder that is never served, and why (hidden,
    /// symlink leaving the folder, not a regular file).
    Excluded(String),
    /// Nothing at that key.
    Missing,
}

/// Why a package could not be opened for sending.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file changed since it was validated; the next scan re-validates
    /// it (within the scan interval).
    #[error("package changed on disk since it was validated")]
    Changed,
    /// The file could not be read.
    #[error("cannot read package: {0}")]
    Io(#[from] io::Error),
}

/// A readable package body positioned at the requested offset.
pub type PackageReader = Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>;

/// The interface the front-ends serve from.
#[async_trait]
pub trait Catalog: Send + Sync + std::fmt::Debug + 'static {
    /// What `key` (from [`path::normalize`]) names.
    fn lookup(&self, key: &str) -> Lookup;
    /// Every package, sorted by key.
    fn packages(&self) -> Vec<Arc<Package>>;
    /// Opens `package` at byte `offset` (≤ size).
    ///
    /// # Errors
    /// [`OpenError::Changed`] when the content is no longer the validated
    /// one; [`OpenError::Io`] when it cannot be read.
    async fn open(&self, package: &Package, offset: u64) -> Result<PackageReader, OpenError>;
}

/// Immutable view of the folder at one scan.
#[derive(Debug, Default)]
struct Snapshot {
    packages: BTreeMap<String, Arc<Package>>,
    dirs: BTreeSet<String>,
    excluded: BTreeMap<String, String>,
}

/// Folder-backed catalog.
#[derive(Debug)]
pub struct FsCatalog {
    root: PathBuf,
    advertised: Advertised,
    snapshot: RwLock<Arc<Snapshot>>,
}

/// How often [`FsCatalog::watch`] re-scans (1 s: changes are served within
/// 2 s).
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
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
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
        let previous = self.current();
        for (key, pkg) in &next.packages {
            match previous.packages.get(key) {
                None => log_package("package added", pkg),
                Some(old) if !Arc::ptr_eq(old, pkg) => log_package("package changed", pkg),
                _ => {}
            }
        }
        for key in previous.packages.keys() {
            if !next.packages.contains_key(key) {
                tracing::info!(path = %key, "package removed");
            }
        }
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(())
    }

    /// Re-scans every [`SCAN_INTERVAL`] until `cancel` fires.
    pub async fn watch(self: Arc<Self>, cancel: CancellationToken) {
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

    fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn scan_blocking(&self, previous: &Snapshot) -> io::Result<Snapshot> {
        let mut snap = Snapshot::default();
        // Fail loudly only for the root; sub-folder errors are logged.
        fs::read_dir(&self.root)?;
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
                    snap.excluded.insert(key, "hidden file".into());
                    continue;
                }
                let Ok(file_type) = entry.file_type() else {
                    continue;
                };
                let target = if file_type.is_symlink() {
                    match fs::canonicalize(entry.path()) {
                        Ok(t) if t.starts_with(&self.root) => t,
                        Ok(_) => {
                            snap.excluded
                                .insert(key, "symlink leaves the package folder".into());
                            continue;
                        }
                        Err(_) => {
                            snap.excluded.insert(key, "dangling symlink".into());
                            continue;
                        }
                    }
                } else {
                    entry.path()
                };
                let Ok(meta) = fs::metadata(&target) else {
                    continue;
                };
                if meta.is_dir() {
                    // Symlinked folders are not followed: they could loop.
                    if file_type.is_symlink() {
                        snap.excluded
                            .insert(key, "symlinked folder (not followed)".into());
                    } else {
                        snap.dirs.insert(key.clone());
                        stack.push((target, key));
                    }
                    continue;
                }
                if !meta.is_file() {
                    snap.excluded.insert(key, "not a regular file".into());
                    continue;
                }
                let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                if let Some(old) = previous.packages.get(&key)
                    && old.size == meta.len()
                    && old.modified == modified
                    && old.stamp == FileStamp::of(&meta)
                    && old.fs_path == target
                {
                    snap.packages.insert(key, Arc::clone(old));
                    continue;
                }
                // One hostile file must not stop the scan: a panic inside
                // the zip reader excludes that file only.
                let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    validate_file(&key, &target, &self.advertised)
                }));
                match checked {
                    Ok(Ok(pkg)) => {
                        snap.packages.insert(key, Arc::new(pkg));
                    }
                    Ok(Err(err)) => {
                        tracing::warn!(path = %key, error = %err, "cannot read package");
                    }
                    Err(_) => {
                        tracing::error!(path = %key, "package validation crashed; not served");
                        snap.excluded.insert(key, "validation crashed".into());
                    }
                }
            }
        }
        Ok(snap)
    }
}

fn log_package(what: &str, pkg: &Package) {
    if pkg.is_valid() {
        tracing::info!(path = %pkg.path, size = pkg.size, sha256 = %pkg.sha256, "{what}");
    } else {
        tracing::warn!(path = %pkg.path, size = pkg.size, problems = %pkg.problems.join("; "), "{what}: invalid, not served");
    }
}

/// Validates one file: SHA-256, zip integrity (unless `.bin`), names and
/// per-profile verdicts. Blocking: call from a blocking thread.
///
/// # Errors
/// The file cannot be opened or read.
pub fn validate_file(key: &str, fs_path: &Path, adv: &Advertised) -> io::Result<Package> {
    let mut file = fs::File::open(fs_path)?;
    let meta = file.metadata()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let sha256 = hex::encode(hasher.finalize());
    let mut problems = validate::name_problems(key);
    let zip = match validate::extension(key).as_deref() {
        Some("bin") => None,
        _ => {
            let result = validate::check_zip(io::BufReader::new(fs::File::open(fs_path)?))
                .map_err(|e| e.to_string());
            if let Err(e) = &result {
                problems.push(e.clone());
            }
            Some(result)
        }
    };
    let profiles = Profile::all()
        .iter()
        .map(|p| validate::profile_verdict(p, key, adv))
        .collect();
    Ok(Package {
        path: key.to_string(),
        fs_path: fs_path.to_path_buf(),
        size: meta.len(),
        sha256,
        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        stamp: FileStamp::of(&meta),
        zip,
        problems,
        profiles,
    })
}

#[async_trait]
impl Catalog for FsCatalog {
    fn lookup(&self, key: &str) -> Lookup {
        let snap = self.current();
        if key.is_empty() || snap.dirs.contains(key) {
            return Lookup::Directory;
        }
        if let Some(pkg) = snap.packages.get(key) {
            return Lookup::Package(Arc::clone(pkg));
        }
        // A key under an excluded folder is excluded too.
        let mut probe = key;
        loop {
            if let Some(reason) = snap.excluded.get(probe) {
                return Lookup::Excluded(reason.clone());
            }
            match probe.rsplit_once('/') {
                Some((parent, _)) => probe = parent,
                None => return Lookup::Missing,
            }
        }
    }

    fn packages(&self) -> Vec<Arc<Package>> {
        self.current().packages.values().cloned().collect()
    }

    async fn open(&self, package: &Package, offset: u64) -> Result<PackageReader, OpenError> {
        let mut file = tokio::fs::File::open(&package.fs_path).await?;
        let meta = file.metadata().await?;
        if meta.len() != package.size
            || meta.modified().unwrap_or(SystemTime::UNIX_EPOCH) != package.modified
            || FileStamp::of(&meta) != package.stamp
        {
            return Err(OpenError::Changed);
        }
        if offset > 0 {
            file.seek(io::SeekFrom::Start(offset)).await?;
        }
        Ok(Box::new(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(cat.open(&old, 0).await, Err(OpenError::Changed)));
        cat.rescan().await.unwrap();
        let Lookup::Package(new) = cat.lookup("a.bin") else {
            panic!()
        };
        assert_ne!(new.sha256, old.sha256);
    }
}

//! The local package cache of [`S3Catalog`](super::S3Catalog): one file
//! per object version, filled once from the store, never rewritten.
//!
//! Layout: `CACHE_DIR/<bucket>-<16 hex>/` per store location (so several
//! locations can share a `--cache-dir`), holding per version `<name>.pkg`
//! (the bytes) and `<name>.json` (its key and [`Listed`] fingerprint),
//! where `<name>` hashes key and fingerprint. A fill streams the object
//! into a temporary `.part` file, checks its size against the listing,
//! then renames it into place and writes the sidecar, so a crash never
//! leaves a half file that looks complete. After a restart the sidecars
//! say which versions are already here: an object whose listing still
//! matches is re-validated from its local copy instead of downloaded
//! again.
//!
//! Size bound: past `--cache-max-bytes`, the least recently opened
//! versions are deleted (LRU). Opening a version sets its file's
//! modification time, so the order survives a restart. A deleted version stays in the catalog: the next
//! download fetches it again (`If-Match` on its ETag) and checks that its
//! SHA-256 is still the validated one. Downloads in flight keep reading a
//! deleted file through their open descriptor.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use object_store::{GetOptions, ObjectStore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::store::{Failure, Listed, S3Location};

/// One cached object version, as its sidecar records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sidecar {
    key: String,
    listed: Listed,
    /// SHA-256 of the bytes the fill wrote (lower-case hex): a copy whose
    /// bytes changed since (a damaged disk, a hand edit) is fetched again.
    /// Absent in sidecars written before it existed.
    #[serde(default)]
    sha256: Option<String>,
}

#[derive(Debug)]
struct Slot {
    size: u64,
    /// [`Sidecar::sha256`].
    sha256: Option<String>,
    /// Value of [`Cache::clock`] when last opened or filled.
    used: u64,
}

/// The cache folder of one store location.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    max_bytes: u64,
    slots: Mutex<BTreeMap<String, Slot>>,
    clock: AtomicU64,
    /// [`LOCK_FILE`], locked (`flock`) for the cache's life: one replica
    /// per cache folder.
    _lock: fs::File,
}

/// The file a running replica holds locked in its cache folder: another
/// one started on the same folder would delete its partial downloads and
/// evict its versions under it.
const LOCK_FILE: &str = ".lock";

/// Why an object could not be brought into the cache.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    /// The store answered with an error (after its retries).
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// The object is no longer the version listed: other size or ETag, or
    /// `If-Match` failed. The next listing picks up the new version.
    #[error("object changed while it was read")]
    Changed,
    /// The cache folder could not be written.
    #[error("cache folder: {0}")]
    Io(#[from] io::Error),
}

impl FillError {
    /// What the failure means for the catalog.
    pub fn failure(&self) -> Failure {
        match self {
            FillError::Store(e) => Failure::of(e),
            FillError::Changed => Failure::Changed,
            FillError::Io(_) => Failure::Unavailable,
        }
    }
}

/// A version now in the cache.
#[derive(Debug)]
pub struct Filled {
    /// The `.pkg` file, opened before any eviction could delete it: its
    /// bytes stay readable through this handle whatever happens to the
    /// name (another request's eviction, the folder cleaned up).
    pub file: std::fs::File,
    /// SHA-256 of the bytes written, lower-case hex.
    pub sha256: String,
}

impl Cache {
    /// Opens (creating) the cache folder of `location` under `root`, keeps
    /// complete versions, deletes leftovers (`.part` files, bytes without
    /// a sidecar or of the wrong size) and evicts down to `max_bytes`.
    /// Blocking.
    ///
    /// # Errors
    /// The folder cannot be created or read.
    pub fn open(root: &Path, location: &S3Location, max_bytes: u64) -> io::Result<Cache> {
        let id = hex::encode(
            &Sha256::digest(format!(
                "{}\n{}\n{}",
                location.endpoint.as_deref().unwrap_or(""),
                location.bucket,
                location.prefix
            ))[..8],
        );
        let dir = root.join(format!("{}-{id}", sanitize(&location.bucket)));
        fs::create_dir_all(&dir)?;
        // Before anything in the folder is touched.
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                let e = io::Error::from(e);
                if e.kind() == io::ErrorKind::WouldBlock {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "{} is in use by another running qfota-serve: give each replica its own --cache-dir",
                            dir.display()
                        ),
                    )
                } else {
                    e
                }
            },
        )?;
        let mut slots = BTreeMap::new();
        let mut by_age = Vec::new();
        for entry in fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if entry.file_name() == LOCK_FILE {
                continue;
            }
            let Some(name) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => {
                    let pkg = path.with_extension("pkg");
                    match (read_sidecar(&path), fs::metadata(&pkg)) {
                        (Some(car), Ok(meta)) if meta.len() == car.listed.size => {
                            let age = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                            by_age.push((age, name.clone()));
                            slots.insert(
                                name,
                                Slot {
                                    size: meta.len(),
                                    sha256: car.sha256,
                                    used: 0,
                                },
                            );
                        }
                        _ => {
                            let _ = fs::remove_file(&path);
                            let _ = fs::remove_file(&pkg);
                        }
                    }
                }
                Some("pkg") if path.with_extension("json").exists() => {}
                _ => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        by_age.sort();
        for (n, (_, name)) in by_age.iter().enumerate() {
            if let Some(slot) = slots.get_mut(name) {
                slot.used = n as u64 + 1;
            }
        }
        let cache = Cache {
            dir,
            max_bytes,
            clock: AtomicU64::new(by_age.len() as u64 + 1),
            slots: Mutex::new(slots),
            _lock: lock,
        };
        cache.evict();
        Ok(cache)
    }

    /// The cache folder of this location.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Total bytes of the cached versions.
    pub fn bytes(&self) -> u64 {
        self.lock().values().map(|s| s.size).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `.pkg` file of version `listed` of `key`, if cached.
    /// With the SHA-256 its fill wrote, when its sidecar says.
    pub fn get(&self, key: &str, listed: &Listed) -> Option<(PathBuf, Option<String>)> {
        let name = name_of(key, listed);
        let sha256 = self.lock().get(&name)?.sha256.clone();
        Some((self.dir.join(format!("{name}.pkg")), sha256))
    }

    /// Opens the cached copy of version `listed` of `key` for reading and
    /// marks it used (also in its modification time, for the next start);
    /// `None` when it is not (or no longer) here.
    pub fn open_file(&self, key: &str, listed: &Listed) -> Option<fs::File> {
        let name = name_of(key, listed);
        let file = fs::File::open(self.dir.join(format!("{name}.pkg"))).ok()?;
        // Best effort: the LRU order in memory is what evicts now.
        let _ = file.set_modified(std::time::SystemTime::now());
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        self.lock().get_mut(&name)?.used = now;
        Some(file)
    }

    /// Downloads version `listed` of `key` from `store` into the cache
    /// (`If-Match` on the listed ETag when there is one), checking the
    /// response's size and ETag against the listing, and hashing it.
    ///
    /// # Errors
    /// [`FillError`]: the store failed, the object changed, or the cache
    /// cannot be written.
    pub async fn fill(
        &self,
        store: &dyn ObjectStore,
        location: &S3Location,
        key: &str,
        listed: &Listed,
    ) -> Result<Filled, FillError> {
        let options = GetOptions {
            if_match: listed.etag.clone(),
            ..GetOptions::default()
        };
        let got = store.get_opts(&location.object(key), options).await?;
        if got.meta.size != listed.size || (listed.etag.is_some() && got.meta.e_tag != listed.etag)
        {
            return Err(FillError::Changed);
        }
        let name = name_of(key, listed);
        // The folder may have been deleted under the running server (a
        // clean-up); it is made again, and the version fetched anew.
        tokio::fs::create_dir_all(&self.dir).await?;
        // Names of this fill's own: fills of one version by requests side
        // by side must not rename each other's files.
        let n = self.clock.fetch_add(1, Ordering::Relaxed);
        let part = self.dir.join(format!("{name}.{n}.part"));
        let result = self.write_part(&part, got.into_stream(), listed.size).await;
        let sha256 = match result {
            Ok(sha) => sha,
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(e);
            }
        };
        let path = self.dir.join(format!("{name}.pkg"));
        let sidecar = serde_json::to_vec(&Sidecar {
            key: key.to_string(),
            listed: listed.clone(),
            sha256: Some(sha256.clone()),
        })
        .map_err(io::Error::other)?;
        // Opened before the rename: no eviction can take the name first.
        let file = std::fs::File::open(&part)?;
        tokio::fs::rename(&part, &path).await?;
        let car_part = self.dir.join(format!("{name}.{n}.json.part"));
        tokio::fs::write(&car_part, sidecar).await?;
        tokio::fs::rename(&car_part, path.with_extension("json")).await?;
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            name,
            Slot {
                size: listed.size,
                sha256: Some(sha256.clone()),
                used: now,
            },
        );
        Ok(Filled { file, sha256 })
    }

    /// Streams `body` into `part`, at most `size` bytes, and returns the
    /// SHA-256 of what was written.
    async fn write_part(
        &self,
        part: &Path,
        mut body: futures_util::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
        size: u64,
    ) -> Result<String, FillError> {
        use tokio::io::AsyncWriteExt;
        let created = tokio::fs::File::create(part).await?;
        let mut file = tokio::io::BufWriter::with_capacity(1 << 20, created);
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            written += chunk.len() as u64;
            if written > size {
                return Err(FillError::Changed);
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        if written != size {
            return Err(FillError::Changed);
        }
        file.flush().await?;
        Ok(hex::encode(hasher.finalize()))
    }

    /// Deletes version `listed` of `key` (superseded or removed from the
    /// store). Readers in flight keep their open descriptor.
    pub fn remove(&self, key: &str, listed: &Listed) {
        let name = name_of(key, listed);
        if self.lock().remove(&name).is_some() {
            self.delete_files(&name);
        }
    }

    /// Deletes every cached version but those of `current` (key and
    /// listing): after a restart, the versions replaced or deleted in the
    /// store while the replica was stopped. Returns how many.
    pub fn keep_only<'a>(
        &self,
        current: impl IntoIterator<Item = (&'a String, &'a Listed)>,
    ) -> usize {
        let keep: std::collections::HashSet<String> =
            current.into_iter().map(|(k, l)| name_of(k, l)).collect();
        let mut slots = self.lock();
        let gone: Vec<String> = slots
            .keys()
            .filter(|n| !keep.contains(*n))
            .cloned()
            .collect();
        for name in &gone {
            slots.remove(name);
            self.delete_files(name);
        }
        gone.len()
    }

    fn delete_files(&self, name: &str) {
        let _ = fs::remove_file(self.dir.join(format!("{name}.json")));
        let _ = fs::remove_file(self.dir.join(format!("{name}.pkg")));
    }

    /// Deletes the least recently used versions until the cache holds at
    /// most `--cache-max-bytes`; returns how many were deleted.
    pub fn evict(&self) -> usize {
        let mut slots = self.lock();
        let mut total: u64 = slots.values().map(|s| s.size).sum();
        if total <= self.max_bytes {
            return 0;
        }
        let mut order: Vec<(u64, String)> =
            slots.iter().map(|(n, s)| (s.used, n.clone())).collect();
        order.sort();
        let mut evicted = 0;
        for (_, name) in order {
            if total <= self.max_bytes {
                break;
            }
            if let Some(slot) = slots.remove(&name) {
                total -= slot.size;
                self.delete_files(&name);
                evicted += 1;
            }
        }
        drop(slots);
        if evicted > 0 {
            tracing::info!(
                evicted,
                bytes = total,
                "package cache: evicted least recently used"
            );
        }
        evicted
    }
}

/// The file name of a version: the first 16 bytes of SHA-256 over key and
/// fingerprint, hex.
fn name_of(key: &str, listed: &Listed) -> String {
    let text = format!(
        "{key}\n{}\n{}\n{}",
        listed.size,
        listed.modified_ms,
        listed.etag.as_deref().unwrap_or("")
    );
    hex::encode(&Sha256::digest(text)[..16])
}

/// A bucket name reduced to `[A-Za-z0-9.-]` for a folder name.
fn sanitize(bucket: &str) -> String {
    bucket
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn read_sidecar(path: &Path) -> Option<Sidecar> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(size: u64) -> Listed {
        Listed {
            size,
            modified_ms: 1,
            etag: Some("\"e\"".into()),
        }
    }

    /// Puts a version into the cache folder as a fill would.
    fn put(cache: &Cache, key: &str, l: &Listed) {
        let name = name_of(key, l);
        fs::write(
            cache.dir.join(format!("{name}.pkg")),
            vec![0u8; l.size as usize],
        )
        .unwrap();
        let car = Sidecar {
            key: key.into(),
            listed: l.clone(),
            sha256: None,
        };
        fs::write(
            cache.dir.join(format!("{name}.json")),
            serde_json::to_vec(&car).unwrap(),
        )
        .unwrap();
        let used = cache.clock.fetch_add(1, Ordering::Relaxed);
        let slot = Slot {
            size: l.size,
            sha256: None,
            used,
        };
        cache.lock().insert(name, slot);
    }

    fn location() -> S3Location {
        S3Location::parse("s3://fota/p").unwrap()
    }

    #[test]
    fn eviction_drops_least_recently_opened_first() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::open(root.path(), &location(), 250).unwrap();
        put(&cache, "a", &listed(100));
        put(&cache, "b", &listed(100));
        assert!(cache.open_file("a", &listed(100)).is_some()); // a is now newer than b
        put(&cache, "c", &listed(100));
        assert_eq!(cache.evict(), 1);
        assert!(cache.get("b", &listed(100)).is_none());
        assert!(cache.get("a", &listed(100)).is_some());
        assert!(cache.get("c", &listed(100)).is_some());
        assert_eq!(cache.bytes(), 200);
    }

    #[test]
    fn the_lru_order_survives_a_restart() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::open(root.path(), &location(), u64::MAX).unwrap();
        let (a, b) = (listed(100), listed(101));
        put(&cache, "a", &a);
        put(&cache, "b", &b);
        let at = |secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        for (key, l, secs) in [("a", &a, 1000), ("b", &b, 2000)] {
            let file = fs::File::options()
                .write(true)
                .open(cache.get(key, l).unwrap().0);
            file.unwrap().set_modified(at(secs)).unwrap();
        }
        // a, filled first, is opened last: the most recently used.
        assert!(cache.open_file("a", &a).is_some());
        drop(cache);
        let again = Cache::open(root.path(), &location(), 150).unwrap();
        assert!(again.get("a", &a).is_some());
        assert!(again.get("b", &b).is_none());
    }

    #[test]
    fn reopening_keeps_complete_versions_and_drops_leftovers() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::open(root.path(), &location(), u64::MAX).unwrap();
        put(&cache, "a", &listed(10));
        put(&cache, "short", &listed(10));
        fs::write(cache.get("short", &listed(10)).unwrap().0, b"cut").unwrap();
        fs::write(cache.dir.join("x.1.part"), b"partial").unwrap();
        let dir = cache.dir.clone();
        drop(cache);
        let again = Cache::open(root.path(), &location(), u64::MAX).unwrap();
        assert!(again.get("a", &listed(10)).is_some());
        assert!(again.get("short", &listed(10)).is_none());
        assert!(!dir.join("x.1.part").exists());
        assert_eq!(again.bytes(), 10);
        // Another version of the same key is another entry.
        let mut other = listed(10);
        other.etag = Some("\"f\"".into());
        assert!(again.get("a", &other).is_none());
    }

    /// A second replica on the same cache folder is refused while the
    /// first runs (its start-up clean-up would delete the first one's
    /// partial downloads), and welcome once it has stopped.
    #[test]
    fn one_replica_per_cache_folder() {
        let root = tempfile::tempdir().unwrap();
        let first = Cache::open(root.path(), &location(), u64::MAX).unwrap();
        fs::write(first.dir.join("x.1.part"), b"partial").unwrap();
        let Err(e) = Cache::open(root.path(), &location(), u64::MAX) else {
            panic!("a second cache on the folder");
        };
        assert!(e.to_string().contains("own --cache-dir"), "{e}");
        assert!(first.dir.join("x.1.part").exists(), "left alone");
        drop(first);
        assert!(Cache::open(root.path(), &location(), u64::MAX).is_ok());
    }
}

//! The object-store catalog: packages under an `s3://BUCKET/PREFIX`
//! location of any S3-compatible store (AWS S3, MinIO, Ceph RGW, Garage),
//! so several replicas serve one package store.
//!
//! [`S3Catalog`] lists the prefix every `--rescan-secs`; an object whose
//! listing (size, Last-Modified, ETag) is unchanged is not read again. A
//! new or changed object is downloaded once into the local [`cache`]
//! (`If-Match` on its listed ETag), validated with the same
//! [`Package::validate`] as a folder's files (SHA-256, zip, names,
//! profiles) and served from that local copy: every download reads one
//! immutable file, so it serves exactly one version, at local-disk speed,
//! and its record's SHA-256 is that file's. An object replaced in the
//! bucket becomes a new cache file at the next listing; downloads already
//! running finish with the old one.
//!
//! Failure behaviour: a store that cannot be reached at start-up leaves
//! the catalog empty (said in the log) and it fills as soon as a listing
//! succeeds; a store lost later leaves the catalog as it was (the cached,
//! validated packages keep being served) and listings are retried with
//! backoff (1 s doubling up to `--rescan-secs`); a store that refuses the
//! credentials, has no such bucket or answers but refuses the listing is
//! a start-up error.

pub mod cache;
pub mod profile;
pub mod store;

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::aws::AmazonS3;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::sync::CancellationToken;

use super::validate::Advertised;
use super::{Catalog, OpenError, Package, PackageReader, Snapshot, SourceHealth, path, twin};
use cache::{Cache, FillError};
use store::Failure;
pub use store::{Listed, LocationError, S3Location};

/// Settings of an [`S3Catalog`].
#[derive(Debug, Clone)]
pub struct S3Config {
    /// Bucket, prefix, endpoint, region, addressing style.
    pub location: S3Location,
    /// Time between listings of the prefix (`--rescan-secs`).
    pub rescan: Duration,
    /// Folder of the local package cache (`--cache-dir`); each location
    /// gets a sub-folder of its own.
    pub cache_dir: PathBuf,
    /// Most bytes the cache keeps (`--cache-max-bytes`); least recently
    /// used versions are deleted past it.
    pub cache_max_bytes: u64,
    /// Memory for resident copies of valid packages, in bytes
    /// (`--package-memory-mib`, as for a folder: each version of at most
    /// [`RESIDENT_MAX_PACKAGE`](crate::catalog::RESIDENT_MAX_PACKAGE) is validated from memory and served from
    /// there); 0 serves every download from its cache file.
    pub package_memory: u64,
}

/// Why an [`S3Catalog`] cannot start.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The store's client refuses the configuration (a bad endpoint URL).
    #[error("object store client for {location}: {source}")]
    Client {
        /// The location, for people.
        location: String,
        /// The client's error.
        source: object_store::Error,
    },
    /// The store refused the credentials (HTTP 401/403).
    #[error(
        "{location}: the store refused the credentials (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN): {source}"
    )]
    Credentials {
        /// The location, for people.
        location: String,
        /// The store's answer.
        source: object_store::Error,
    },
    /// The bucket does not exist.
    #[error("{location}: no such bucket: {source}")]
    NoBucket {
        /// The location, for people.
        location: String,
        /// The store's answer.
        source: object_store::Error,
    },
    /// The store answers but refuses to list the prefix (after retries).
    #[error("{location}: the store refuses the listing: {source}")]
    Listing {
        /// The location, for people.
        location: String,
        /// The store's answer.
        source: object_store::Error,
    },
    /// The cache folder cannot be created or read.
    #[error("package cache {path}: {source}")]
    Cache {
        /// The `--cache-dir`.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
}

/// One listing's worth of catalog: what is served and, per key, which
/// version it is. Its `Debug` gives counts, not the resident copies' bytes.
#[derive(Default)]
struct State {
    snapshot: Arc<Snapshot>,
    versions: BTreeMap<String, Listed>,
    /// Resident copies of valid packages (see [`Catalog::resident`]).
    resident: BTreeMap<String, Bytes>,
    /// Listed keys whose version could not be fetched at this listing,
    /// with why (a previous version, if any, is still served).
    unfetched: BTreeMap<String, String>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resident: usize = self.resident.values().map(Bytes::len).sum();
        f.debug_struct("State")
            .field("packages", &self.snapshot.packages().len())
            .field("unfetched", &self.unfetched.len())
            .field("resident_bytes", &resident)
            .finish_non_exhaustive()
    }
}

/// Catalog over an S3-compatible object store, served from a local cache.
#[derive(Debug)]
pub struct S3Catalog {
    config: S3Config,
    advertised: Advertised,
    store: Arc<AmazonS3>,
    cache: Cache,
    state: RwLock<Arc<State>>,
    /// The last listing succeeded.
    healthy: AtomicBool,
    /// A listing has succeeded since start-up.
    reached: AtomicBool,
    /// One listing at a time (the watcher and `rescan_now`).
    scanning: tokio::sync::Mutex<()>,
}

impl S3Catalog {
    /// Opens the cache and lists the store once. A store that cannot be
    /// reached is not an error: the catalog starts empty, says so, and
    /// [`Catalog::watch`] keeps trying.
    ///
    /// # Errors
    /// [`S3Error`]: the client configuration is refused, the store refuses
    /// the credentials, the bucket does not exist, or the cache folder
    /// cannot be used.
    pub async fn open(config: S3Config, advertised: Advertised) -> Result<Arc<Self>, S3Error> {
        let location = config.location.display();
        let store = config.location.client().map_err(|source| S3Error::Client {
            location: location.clone(),
            source,
        })?;
        let (root, loc, max) = (
            config.cache_dir.clone(),
            config.location.clone(),
            config.cache_max_bytes,
        );
        let cache = tokio::task::spawn_blocking(move || Cache::open(&root, &loc, max))
            .await
            .map_err(io::Error::other)
            .and_then(|r| r)
            .map_err(|source| S3Error::Cache {
                path: config.cache_dir.clone(),
                source,
            })?;
        let catalog = Arc::new(S3Catalog {
            config,
            advertised,
            store,
            cache,
            state: RwLock::new(Arc::new(State {
                snapshot: Arc::new(Snapshot::new(SystemTime::now())),
                versions: BTreeMap::new(),
                resident: BTreeMap::new(),
                unfetched: BTreeMap::new(),
            })),
            healthy: AtomicBool::new(false),
            reached: AtomicBool::new(false),
            scanning: tokio::sync::Mutex::new(()),
        });
        if let Err(source) = catalog.rescan().await {
            match catalog.start_failure(&source).await {
                Failure::Credentials => return Err(S3Error::Credentials { location, source }),
                Failure::NoBucket => return Err(S3Error::NoBucket { location, source }),
                Failure::Refused => return Err(S3Error::Listing { location, source }),
                Failure::Changed | Failure::Unavailable => tracing::warn!(
                    store = %location,
                    error = %source,
                    "object store unreachable at start-up: no packages until it is reached"
                ),
            }
        }
        Ok(catalog)
    }

    /// What a failed first listing means. The client reports a listing's
    /// HTTP status only inside its message, so a store that answered is
    /// told from one that did not by a `HEAD` of one object, whose status
    /// it does report: 401/403 → the credentials; an answer (200, 404) →
    /// the store is up but refuses the listing; no answer → unreachable.
    async fn start_failure(&self, listing: &object_store::Error) -> Failure {
        match Failure::of(listing) {
            // S3's error code for a missing bucket reaches a listing only
            // in the message of a generic error.
            Failure::Unavailable if listing.to_string().contains("NoSuchBucket") => {
                return Failure::NoBucket;
            }
            Failure::Unavailable => {}
            known => return known,
        }
        let probe = self.config.location.object(".qfota-serve-probe");
        match self.store.head(&probe).await {
            Err(e) if Failure::of(&e) == Failure::Credentials => Failure::Credentials,
            Ok(_) => Failure::Refused,
            Err(e) if Failure::of(&e) == Failure::NoBucket => Failure::Refused,
            Err(_) => Failure::Unavailable,
        }
    }

    /// True when the last listing of the store succeeded.
    pub fn store_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// True once a listing has succeeded (the catalog reflects the store).
    pub fn store_reached(&self) -> bool {
        self.reached.load(Ordering::Relaxed)
    }

    /// Keys of the last listing whose version could not be fetched, with
    /// why (each keeps its previous version, if it had one).
    pub fn unfetched(&self) -> Vec<(String, String)> {
        self.current()
            .unfetched
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// The folder holding this location's cached versions.
    pub fn cache_dir(&self) -> &std::path::Path {
        self.cache.dir()
    }

    fn current(&self) -> Arc<State> {
        Arc::clone(&self.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Lists the store and brings the catalog up to date: unchanged
    /// objects keep their validated package; new and changed ones are
    /// fetched (or found in the cache), validated and swapped in; removed
    /// ones leave the catalog and the cache (at the first listing since
    /// start, so do the cached versions of an earlier run that the store
    /// no longer lists). An object that cannot be
    /// fetched now keeps its previous version, if any, until the next
    /// listing. Health is updated and its changes logged.
    ///
    /// # Errors
    /// The listing itself failed (after the client's retries); the catalog
    /// is left as it was.
    pub async fn rescan(self: &Arc<Self>) -> Result<(), object_store::Error> {
        let _one_at_a_time = self.scanning.lock().await;
        let listing = self.list_noting_health().await?;
        let previous = self.current();
        let next = self.next_state(&previous, listing).await;
        for (key, old) in &previous.versions {
            if next.versions.get(key) != Some(old) {
                self.cache.remove(key, old);
                if !next.versions.contains_key(key) {
                    tracing::info!(path = %key, "package removed");
                }
            }
        }
        if !self.reached.load(Ordering::Relaxed) {
            // The first listing since start: versions cached by an earlier
            // run that the store no longer lists go now, not when the
            // size bound pushes them out.
            let stale = self.cache.keep_only(&next.versions);
            if stale > 0 {
                tracing::info!(
                    stale,
                    "package cache: deleted versions the store no longer lists"
                );
            }
        }
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        self.reached.store(true, Ordering::Relaxed);
        self.cache.evict();
        Ok(())
    }

    /// Lists the store, logging when it is lost or back.
    async fn list_noting_health(&self) -> Result<Vec<(String, Listed)>, object_store::Error> {
        let store = self.config.location.display();
        match self.config.location.list(self.store.as_ref()).await {
            Ok(listing) => {
                let was_healthy = self.healthy.swap(true, Ordering::Relaxed);
                if !was_healthy && self.store_reached() {
                    tracing::info!(%store, "object store reachable again");
                }
                Ok(listing)
            }
            Err(err) => {
                if self.healthy.swap(false, Ordering::Relaxed) {
                    let packages = self.current().snapshot.packages().len();
                    tracing::warn!(%store, error = %err, packages, "object store unreachable: serving the cached, validated packages");
                }
                Err(err)
            }
        }
    }

    /// The catalog for `listing`: unchanged objects keep their package;
    /// the others are loaded, [`FETCHES_AT_ONCE`] at a time; one that
    /// cannot be loaded keeps its previous version, if any.
    async fn next_state(&self, previous: &State, listing: Vec<(String, Listed)>) -> State {
        use futures_util::StreamExt;
        // The root is as new as the newest object (stable between listings).
        let newest = listing.iter().map(|(_, l)| l.modified()).max();
        let mut snap = Snapshot::new(newest.unwrap_or(SystemTime::UNIX_EPOCH));
        let mut versions = BTreeMap::new();
        let mut resident: BTreeMap<String, Bytes> = BTreeMap::new();
        let mut unfetched = BTreeMap::new();
        let mut to_load = Vec::new();
        for (key, listed) in listing {
            let kept = previous.snapshot.package(&key);
            if let Some(reason) = unservable(&key) {
                snap.exclude(key, reason);
            } else if let (Some(pkg), true) = (kept, previous.versions.get(&key) == Some(&listed)) {
                snap.add_package(Arc::clone(pkg));
                if let Some(copy) = previous.resident.get(&key) {
                    resident.insert(key.clone(), copy.clone());
                }
                versions.insert(key, listed);
            } else {
                to_load.push((key, listed));
            }
        }
        let loads = futures_util::stream::iter(to_load)
            .map(|(key, listed)| async move {
                let loaded = self.load(&key, &listed).await;
                (key, listed, loaded)
            })
            .buffer_unordered(FETCHES_AT_ONCE);
        let loaded: Vec<_> = loads.collect().await;
        for (key, listed, result) in loaded {
            let old = previous
                .versions
                .get(&key)
                .zip(previous.snapshot.package(&key));
            match result {
                Ok(Some((pkg, copy))) => {
                    log_change(old.is_some(), &pkg);
                    let held: u64 = resident.values().map(twin::footprint).sum();
                    if let Some(copy) = copy.filter(|_| pkg.is_valid())
                        && held + twin::footprint(&copy) <= self.config.package_memory
                    {
                        resident.insert(key.clone(), copy);
                    }
                    snap.add_package(Arc::new(pkg));
                    versions.insert(key, listed);
                }
                Ok(None) => snap.exclude(key, "validation crashed"),
                Err(err) => {
                    tracing::warn!(path = %key, error = %err, "cannot fetch package; keeping the previous version, if any");
                    unfetched.insert(key.clone(), err.to_string());
                    if let Some((old_listed, pkg)) = old {
                        snap.add_package(Arc::clone(pkg));
                        if let Some(copy) = previous.resident.get(&key) {
                            resident.insert(key.clone(), copy.clone());
                        }
                        versions.insert(key, old_listed.clone());
                    }
                }
            }
        }
        State {
            snapshot: Arc::new(snap),
            versions,
            resident,
            unfetched,
        }
    }

    /// Validates version `listed` of `key` from its cached copy, fetching
    /// it first when it is not cached. A cached copy that cannot be read,
    /// or whose bytes no longer hash to what its fill wrote (without that
    /// SHA-256, a sidecar of an older run: one that does not validate), is
    /// deleted and fetched again once: a damaged disk must not make one
    /// replica serve other bytes than the others, or refuse a good package
    /// for good. `Ok(None)` when validation crashed (that object only is
    /// excluded).
    ///
    /// # Errors
    /// The object could not be fetched or its fresh copy read.
    async fn load(
        &self,
        key: &str,
        listed: &Listed,
    ) -> Result<Option<(Package, Option<Bytes>)>, FillError> {
        if let Some((path, written)) = self.cache.get(key, listed) {
            let damage = match std::fs::File::open(&path) {
                Ok(file) => match self.validate(key, listed, file).await {
                    Ok(Some((package, copy))) => {
                        let damaged = match &written {
                            Some(sha) => *sha != package.sha256,
                            None => !package.is_valid(),
                        };
                        if !damaged {
                            return Ok(Some((package, copy)));
                        }
                        "its bytes are not what was fetched".to_string()
                    }
                    Ok(None) => return Ok(None),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            tracing::warn!(key, %damage, "package cache: fetching the package again");
            self.cache.remove(key, listed);
        }
        let filled = self
            .cache
            .fill(self.store.as_ref(), &self.config.location, key, listed)
            .await?;
        // The handle the fill opened: another request's eviction may have
        // deleted the name since.
        self.validate(key, listed, filled.file).await
    }

    /// Validates `file`, a copy of version `listed` of `key` (on a
    /// blocking thread); `Ok(None)` when validation crashed.
    ///
    /// # Errors
    /// The copy cannot be read.
    async fn validate(
        &self,
        key: &str,
        listed: &Listed,
        file: std::fs::File,
    ) -> Result<Option<(Package, Option<Bytes>)>, FillError> {
        let (key, adv, modified) = (key.to_string(), self.advertised.clone(), listed.modified());
        let memory = self.config.package_memory;
        let checked = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(|| {
                let len = file.metadata()?.len();
                Package::validate_keeping(&key, file, len, memory, modified, &adv)
            })
        })
        .await
        .map_err(io::Error::other)?;
        match checked {
            Ok(result) => Ok(Some(result?)),
            Err(_) => Ok(None),
        }
    }

    /// The cached copy of `package` (version `listed`), fetched again when
    /// it was evicted; the refetched bytes must hash to the validated
    /// SHA-256.
    async fn local_copy(
        &self,
        package: &Package,
        listed: &Listed,
    ) -> Result<std::fs::File, OpenError> {
        if let Some(file) = self.cache.open_file(&package.path, listed) {
            return Ok(file);
        }
        let filled = self
            .cache
            .fill(
                self.store.as_ref(),
                &self.config.location,
                &package.path,
                listed,
            )
            .await
            .map_err(|e| match e.failure() {
                Failure::Changed | Failure::NoBucket => OpenError::Changed,
                _ => OpenError::Io(io::Error::other(e)),
            })?;
        if filled.sha256 != package.sha256 {
            self.cache.remove(&package.path, listed);
            return Err(OpenError::Changed);
        }
        // The handle the fill opened: another request's eviction may have
        // deleted the name since.
        Ok(filled.file)
    }
}

/// Why an object key is never served, if it is not: a hidden segment (as
/// in a folder), or a key that is not a clean path (empty segments, `..`).
fn unservable(key: &str) -> Option<&'static str> {
    if key.split('/').any(|seg| seg.starts_with('.')) {
        return Some("hidden file");
    }
    match path::normalize(key) {
        Ok(clean) if clean == key && !clean.is_empty() => None,
        _ => Some("object key is not a clean path"),
    }
}

fn log_change(existed: bool, pkg: &Package) {
    let what = if existed {
        "package changed"
    } else {
        "package added"
    };
    if pkg.is_valid() {
        tracing::info!(path = %pkg.path, size = pkg.size, sha256 = %pkg.sha256, source = "object store", "{what}");
    } else {
        let problems = pkg.problems.join("; ");
        tracing::warn!(path = %pkg.path, problems = %problems, source = "object store", "{what}: invalid, not served");
    }
}

#[async_trait]
impl Catalog for S3Catalog {
    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current().snapshot)
    }

    fn location(&self) -> String {
        self.config.location.display()
    }

    fn source_health(&self) -> SourceHealth {
        let what = || {
            format!(
                "object store {} unreachable",
                self.config.location.display()
            )
        };
        match (self.store_reached(), self.store_healthy()) {
            // Listed, but the first catalog (fetched and validated) is not
            // in place yet: not ready either.
            (false, true) => SourceHealth::NotReached(format!(
                "object store {}: first listing being fetched and validated",
                self.config.location.display()
            )),
            (false, false) => SourceHealth::NotReached(what()),
            (true, true) => SourceHealth::Ok,
            (true, false) => SourceHealth::Unreachable(what()),
        }
    }

    fn resident(&self, package: &Package) -> Option<Bytes> {
        // Only for the very version asked about.
        let state = self.current();
        let whole = 0..package.size;
        state
            .snapshot
            .source(&state.resident, package, &whole)
            .ok()
            .cloned()
    }

    async fn open(&self, package: &Package, range: Range<u64>) -> Result<PackageReader, OpenError> {
        let state = self.current();
        let listed = state
            .snapshot
            .source(&state.versions, package, &range)?
            .clone();
        let file = self.local_copy(package, &listed).await?;
        // Open before evicting: a version evicted now is still read whole
        // through this descriptor.
        self.cache.evict();
        let mut file = tokio::fs::File::from_std(file);
        file.seek(io::SeekFrom::Start(range.start)).await?;
        // Large reads: each read of a tokio file is one trip to the
        // blocking pool, so the front-ends' small chunks are served from
        // this buffer.
        let buffered = tokio::io::BufReader::with_capacity(READ_CHUNK, file);
        Ok(Box::new(buffered.take(range.end - range.start)))
    }

    async fn rescan_now(self: Arc<Self>) -> io::Result<()> {
        self.rescan().await.map_err(io::Error::other)
    }

    async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = RETRY_FIRST;
        loop {
            let wait = if self.store_healthy() {
                self.config.rescan
            } else {
                backoff.min(self.config.rescan)
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            match self.rescan().await {
                Ok(()) => backoff = RETRY_FIRST,
                Err(err) => {
                    tracing::debug!(error = %err, "object store listing failed");
                    backoff = (backoff * 2).min(self.config.rescan);
                }
            }
        }
    }
}

/// Objects fetched from the store at once during a listing.
pub const FETCHES_AT_ONCE: usize = 4;

/// Bytes read from a cached package per trip to the blocking pool.
const READ_CHUNK: usize = 512 * 1024;

/// First wait before listing an unreachable store again; it doubles up to
/// `--rescan-secs`.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_and_unclean_keys_are_not_served() {
        assert_eq!(unservable("Jun/a.zip"), None);
        assert_eq!(unservable(".git/config"), Some("hidden file"));
        assert_eq!(unservable("Jun/.a.zip.part"), Some("hidden file"));
        assert!(unservable("a//b.zip").is_some());
        assert!(unservable("a/b/").is_some());
    }

    /// libunftp formats each command's context, which reaches the catalog:
    /// its `Debug` gives counts, never the resident packages' bytes.
    #[test]
    fn debug_gives_counts_not_package_bytes() {
        let mut state = State::default();
        state
            .resident
            .insert("a.zip".into(), Bytes::from(vec![0x50u8; 4096]));
        let text = format!("{state:?}");
        assert!(text.contains("resident_bytes: 4096"), "{text}");
        assert!(text.len() < 200, "{text}");
    }
}

//! The package catalog: what can be served, and whether it is valid.
//!
//! [`Catalog`] is the whole interface the FTP and HTTP front-ends serve
//! from: what a key names ([`Catalog::lookup`]), its metadata
//! ([`Catalog::metadata`]: folder or package, size, modification time), a
//! folder's listing ([`Catalog::list`]), every package
//! ([`Catalog::packages`]) and a package's bytes over a byte range
//! ([`Catalog::open`]). No front-end touches the file system.
//!
//! Metadata comes from a [`Snapshot`] (what the last scan or listing saw),
//! so it is synchronous; reading bytes is where I/O happens, so
//! [`Catalog::open`] is async. Two implementations:
//!
//! - [`FsCatalog`] ([`fs`]): the package folder, re-scanned every second;
//! - [`MemCatalog`] ([`mem`]): packages given as bytes, for tests and
//!   embedding;
//! - [`S3Catalog`] ([`s3`]): an `s3://BUCKET/PREFIX` location of an
//!   S3-compatible object store, listed every `--rescan-secs`, each
//!   version fetched once into a local cache and served from there.
//!
//! All validate with [`Package::validate`] (SHA-256, zip integrity, names,
//! per-profile verdicts).

pub mod fs;
pub mod mem;
pub mod path;
pub mod s3;
mod snapshot;
pub mod twin;
pub mod validate;

use std::io::{self, Read, Seek};
use std::ops::Range;
use std::sync::{Arc, LazyLock};
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::package::name::{extension, name_problems};
use crate::package::zip::{EndRecords, ZipSummary, check_zip_counted};
use crate::profile::Profile;
use validate::{Advertised, ProfileVerdict};

pub use fs::FsCatalog;
pub use mem::MemCatalog;
pub use s3::S3Catalog;
pub use snapshot::Snapshot;

/// Seconds each package validation took (SHA-256, zip check, verdicts):
/// one process-wide histogram, 1 ms to about 33 s.
static VALIDATION_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)));

/// The process-wide histogram of package validation times, seconds (the
/// server's `/metrics` registers it; clones share the counts).
pub fn validation_seconds() -> Histogram {
    VALIDATION_SECONDS.clone()
}

/// Times one package validation: observed into [`validation_seconds`]
/// when dropped, however the validation ended.
#[derive(Debug)]
pub struct ValidationTimer(Instant);

impl ValidationTimer {
    /// Starts the clock.
    pub fn start() -> Self {
        ValidationTimer(Instant::now())
    }
}

impl Drop for ValidationTimer {
    fn drop(&mut self) {
        VALIDATION_SECONDS.observe(self.0.elapsed().as_secs_f64());
    }
}

/// One package, with its validation report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Package {
    /// Catalog key: path relative to the package root, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lower-case hex.
    pub sha256: String,
    /// Last modification time of the content.
    #[serde(skip)]
    pub modified: SystemTime,
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

/// Largest package kept resident in memory (256 MiB): bigger ones are
/// read from their file for each download (see [`Catalog::resident`]).
pub const RESIDENT_MAX_PACKAGE: u64 = 256 << 20;

/// Default memory for resident package copies over all packages (1 GiB,
/// `--package-memory-mib 1024`); past it packages are read from their
/// files.
pub const RESIDENT_TOTAL: u64 = 1 << 30;

impl Package {
    /// [`Package::validate`] for `content` of `len` bytes, keeping a
    /// resident copy when one may be kept (`len` at most
    /// [`RESIDENT_MAX_PACKAGE`] and `memory` bytes): then the content is
    /// read into memory first and those very bytes are validated and
    /// returned, so what is served is exactly what was checked. The copy of
    /// a valid package of at least [`twin::TWIN_MIN`] bytes gets a file
    /// twin for `sendfile(2)`, which counts against `memory` too when the
    /// temporary folder is in memory ([`twin::footprint`]). Blocking.
    ///
    /// # Errors
    /// `content` cannot be read or rewound.
    pub fn validate_keeping<R: Read + Seek>(
        key: &str,
        mut content: R,
        len: u64,
        memory: u64,
        modified: SystemTime,
        adv: &Advertised,
    ) -> io::Result<(Package, Option<Bytes>)> {
        if len > RESIDENT_MAX_PACKAGE || twin::cost(len) > memory {
            let pkg = Package::validate(key, io::BufReader::new(content), modified, adv)?;
            return Ok((pkg, None));
        }
        let mut copy = Vec::with_capacity(len as usize);
        content.read_to_end(&mut copy)?;
        let pkg = Package::validate(key, io::Cursor::new(&copy), modified, adv)?;
        // Only a copy that will be served gets a twin.
        let copy = if pkg.is_valid() {
            twin::resident(copy)
        } else {
            Bytes::from(copy)
        };
        Ok((pkg, Some(copy)))
    }

    /// Validates one package's content: SHA-256, zip integrity (unless
    /// `.bin`), names and per-profile verdicts against `adv`. Reads `content`
    /// to its end, then again from the start for the zip check. Blocking: call
    /// from a blocking thread for large content.
    ///
    /// # Errors
    /// `content` cannot be read or rewound.
    pub fn validate<R: Read + Seek>(
        key: &str,
        mut content: R,
        modified: SystemTime,
        adv: &Advertised,
    ) -> io::Result<Self> {
        let _timer = ValidationTimer::start();
        let mut hasher = Sha256::new();
        let mut end_records = EndRecords::default();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = content.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            end_records.feed(&buf[..n]);
            size += n as u64;
        }
        let mut problems = name_problems(key);
        let zip = match extension(key).as_deref() {
            Some("bin") => None,
            _ => {
                content.rewind()?;
                let result =
                    check_zip_counted(&mut content, end_records.count()).map_err(|e| e.to_string());
                if let Err(e) = &result {
                    problems.push(e.clone());
                }
                Some(result)
            }
        };
        // An invalid package fits no family: no module would take it.
        let profiles = Profile::all()
            .iter()
            .map(|p| {
                let mut verdict = validate::profile_verdict(p, key, size, adv);
                if !problems.is_empty() {
                    verdict.fits = false;
                    verdict.problems.insert(0, "invalid package".to_string());
                }
                verdict
            })
            .collect();
        Ok(Package {
            path: key.to_string(),
            size,
            sha256: hex::encode(hasher.finalize()),
            modified,
            zip,
            problems,
            profiles,
        })
    }

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

/// What a key names.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A package (valid or not: see [`Package::is_valid`]).
    Package(Arc<Package>),
    /// A folder that may be listed.
    Directory,
    /// Something under the root that is never served, and why (hidden,
    /// symlink leaving the folder, not a regular file).
    Excluded(String),
    /// Nothing at that key.
    Missing,
    /// A new or changed file at that key is being validated: not served
    /// until it passes (a temporary refusal).
    Validating,
}

/// A folder or a package as a listing shows it.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A folder.
    Folder {
        /// Catalog key (empty for the root).
        key: String,
        /// Last modification time.
        modified: SystemTime,
    },
    /// A package (valid or not).
    Package(Arc<Package>),
}

impl Entry {
    /// The catalog key.
    pub fn key(&self) -> &str {
        match self {
            Entry::Folder { key, .. } => key,
            Entry::Package(p) => &p.path,
        }
    }

    /// The last segment of the key (what a listing prints).
    pub fn name(&self) -> &str {
        let key = self.key();
        key.rsplit_once('/').map_or(key, |(_, name)| name)
    }

    /// True for a folder.
    pub fn is_folder(&self) -> bool {
        matches!(self, Entry::Folder { .. })
    }

    /// Size in bytes; 0 for a folder.
    pub fn size(&self) -> u64 {
        match self {
            Entry::Folder { .. } => 0,
            Entry::Package(p) => p.size,
        }
    }

    /// Last modification time.
    pub fn modified(&self) -> SystemTime {
        match self {
            Entry::Folder { modified, .. } => *modified,
            Entry::Package(p) => p.modified,
        }
    }
}

/// Why a package could not be opened for sending.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The content changed since it was validated; the next scan
    /// re-validates it (within the scan interval).
    #[error("package changed on disk since it was validated")]
    Changed,
    /// The byte range does not lie within the package.
    #[error("byte range {start}..{end} is outside the package ({size} bytes)")]
    Range {
        /// First byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
        /// Package size in bytes.
        size: u64,
    },
    /// The content could not be read.
    #[error("cannot read package: {0}")]
    Io(#[from] io::Error),
}

impl OpenError {
    /// [`OpenError::Range`] unless `start ≤ end ≤ size`.
    ///
    /// # Errors
    /// The range does not lie within `size` bytes.
    fn check_range(range: &Range<u64>, size: u64) -> Result<(), OpenError> {
        if range.start <= range.end && range.end <= size {
            Ok(())
        } else {
            Err(OpenError::Range {
                start: range.start,
                end: range.end,
                size,
            })
        }
    }
}

/// Whether a catalog's source (a folder, a bucket) can be read, for
/// `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceHealth {
    /// Read at the last scan.
    Ok,
    /// Never read since start-up (the catalog is empty), and why.
    NotReached(String),
    /// Read before, not at the last scan (the catalog is what was last
    /// read and validated), and why.
    Unreachable(String),
}

/// A readable package body: exactly the bytes of the range asked for.
pub type PackageReader = Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>;

/// Where packages come from: the interface every front-end serves from.
///
/// Metadata methods read [`Catalog::snapshot`] by default (no I/O); an
/// implementation may answer them live instead.
#[async_trait]
pub trait Catalog: Send + Sync + std::fmt::Debug + 'static {
    /// The packages, folders and exclusions as last seen.
    fn snapshot(&self) -> Arc<Snapshot>;

    /// Where the packages come from, for people (a folder path, a bucket
    /// URL, `memory`).
    fn location(&self) -> String;

    /// Opens `package` for the bytes `range` (`start..end`, end exclusive,
    /// within its size); the reader ends after `end - start` bytes.
    ///
    /// # Errors
    /// [`OpenError::Changed`] when the content is no longer the validated
    /// one; [`OpenError::Range`] for a range outside the package;
    /// [`OpenError::Io`] when it cannot be read.
    async fn open(&self, package: &Package, range: Range<u64>) -> Result<PackageReader, OpenError>;

    /// The validated bytes of `package` held in memory, if the catalog
    /// keeps a resident copy of it: one shared, read-only copy that every
    /// download slices (no per-connection reads or buffers). It is exactly
    /// the content whose SHA-256 [`Package::sha256`] gives, so a download
    /// served from it carries one version even if the source changes.
    /// `None`: use [`Catalog::open`]. The default keeps none.
    fn resident(&self, package: &Package) -> Option<bytes::Bytes> {
        let _ = package;
        None
    }

    /// What `key` (from [`path::normalize`]) names.
    fn lookup(&self, key: &str) -> Lookup {
        self.snapshot().lookup(key)
    }

    /// The folder or package at `key`; `None` when nothing listable is
    /// there (missing or excluded).
    fn metadata(&self, key: &str) -> Option<Entry> {
        self.snapshot().metadata(key)
    }

    /// The folders and packages directly inside the folder `key` (the
    /// root is `""`), sorted by key; `None` when `key` is not a folder.
    fn list(&self, folder: &str) -> Option<Vec<Entry>> {
        self.snapshot().list(folder)
    }

    /// Every package, sorted by key.
    fn packages(&self) -> Vec<Arc<Package>> {
        self.snapshot().packages()
    }

    /// Whether the source could be read at the last scan. The default is
    /// [`SourceHealth::Ok`] (a source that is never re-read); a folder
    /// that cannot be read fails at start, and one lost later is
    /// [`SourceHealth::Unreachable`].
    fn source_health(&self) -> SourceHealth {
        SourceHealth::Ok
    }

    /// Keeps the catalog current until `cancel` fires (re-scanning a
    /// folder, re-listing a bucket). The default returns at once: the
    /// catalog does not change by itself.
    async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        let _ = cancel;
    }

    /// Brings the catalog up to date now (instead of at the next
    /// [`Catalog::watch`] tick) and returns when done. The default does
    /// nothing: the catalog does not change by itself.
    ///
    /// # Errors
    /// The source can no longer be read (the folder, the bucket).
    async fn rescan_now(self: Arc<Self>) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An invalid package fits no family, whatever its name and size.
    #[test]
    fn an_invalid_package_fits_no_family() {
        let adv = Advertised::default();
        let broken = Package::validate(
            "update-v12-to-v13.zip",
            io::Cursor::new(b"not a zip".to_vec()),
            SystemTime::UNIX_EPOCH,
            &adv,
        )
        .unwrap();
        assert!(!broken.is_valid());
        assert_eq!(broken.profiles.len(), Profile::all().len());
        for verdict in &broken.profiles {
            assert!(!verdict.fits, "{verdict:?}");
            assert_eq!(verdict.problems[0], "invalid package");
        }
    }
}

//! An in-memory catalog: packages given as bytes, validated with the same
//! code as the folder's ([`Package::validate`]).
//!
//! It proves that the front-ends need nothing but the [`Catalog`] trait
//! (tests serve from it over real FTP and HTTP), and lets a program serve
//! packages it generated without writing them to disk.

use std::collections::BTreeMap;
use std::io::{self, Cursor};
use std::ops::Range;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::io::AsyncReadExt;

use super::path;
use super::validate::Advertised;
use super::{Catalog, OpenError, Package, PackageReader, Snapshot};

/// Packages held in memory. Cheap to share behind an `Arc`; packages can
/// be added and removed while it is served.
#[derive(Debug)]
pub struct MemCatalog {
    advertised: Advertised,
    state: RwLock<State>,
}

#[derive(Debug, Clone)]
struct State {
    snapshot: Arc<Snapshot>,
    /// Content per key, shared with the readers in flight.
    bytes: BTreeMap<String, Arc<[u8]>>,
}

impl MemCatalog {
    /// An empty catalog; `advertised` gives the host and ports used for the
    /// per-profile URL verdicts.
    pub fn new(advertised: Advertised) -> Self {
        MemCatalog {
            advertised,
            state: RwLock::new(State {
                snapshot: Arc::new(Snapshot::new(SystemTime::now())),
                bytes: Default::default(),
            }),
        }
    }

    /// Validates `bytes` as the package at `key` (normalised like a request
    /// path: `/Jun/a.zip` → `Jun/a.zip`) and adds it, replacing any package
    /// at that key. Parent folders appear as needed. Returns the package,
    /// invalid ones included (see [`Package::is_valid`]).
    ///
    /// # Errors
    /// `InvalidInput` for a key that escapes the root
    /// ([`PathError`](super::path::PathError)) or
    /// names the root itself.
    pub fn insert(&self, key: &str, bytes: impl Into<Vec<u8>>) -> io::Result<Arc<Package>> {
        let key =
            path::normalize(key).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if key.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the root is a folder, not a package",
            ));
        }
        let bytes: Arc<[u8]> = bytes.into().into();
        let package = Arc::new(Package::validate(
            &key,
            Cursor::new(&bytes[..]),
            SystemTime::now(),
            &self.advertised,
        )?);
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let mut snapshot = Snapshot::clone(&state.snapshot);
        snapshot.add_package(Arc::clone(&package));
        state.snapshot = Arc::new(snapshot);
        state.bytes.insert(key, bytes);
        Ok(package)
    }

    /// Removes the package at `key` (its folders stay). True when there
    /// was one.
    pub fn remove(&self, key: &str) -> bool {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if state.bytes.remove(key).is_none() {
            return false;
        }
        let mut snapshot = Snapshot::clone(&state.snapshot);
        snapshot.remove_package(key);
        state.snapshot = Arc::new(snapshot);
        true
    }

    fn state(&self) -> State {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl Catalog for MemCatalog {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.state().snapshot
    }

    fn location(&self) -> String {
        "memory".into()
    }

    async fn open(&self, package: &Package, range: Range<u64>) -> Result<PackageReader, OpenError> {
        let state = self.state();
        let bytes = Arc::clone(state.snapshot.source(&state.bytes, package, &range)?);
        let mut reader = Cursor::new(bytes);
        reader.set_position(range.start);
        Ok(Box::new(reader.take(range.end - range.start)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Lookup;

    #[tokio::test]
    async fn inserted_bytes_are_validated_listed_and_read_by_range() {
        let cat = MemCatalog::new(Advertised::default());
        let image = cat
            .insert("/Jun/fw-v1-to-v2.bin", b"0123456789".to_vec())
            .unwrap();
        assert!(image.is_valid(), "{:?}", image.problems);
        let junk = cat.insert("junk.zip", b"not a zip".to_vec()).unwrap();
        assert!(!junk.is_valid());
        assert!(matches!(cat.lookup("Jun"), Lookup::Directory));
        let root: Vec<String> = cat
            .list("")
            .unwrap()
            .iter()
            .map(|e| e.name().into())
            .collect();
        assert_eq!(root, ["Jun", "junk.zip"]);
        let mut out = String::new();
        let mut reader = cat.open(&image, 2..5).await.unwrap();
        reader.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "234");
        assert!(matches!(
            cat.open(&image, 5..11).await,
            Err(OpenError::Range { .. })
        ));
        assert!(cat.remove("junk.zip"));
        assert!(matches!(cat.lookup("junk.zip"), Lookup::Missing));
        assert!(cat.list("Jun").is_some());
        assert!(matches!(
            cat.open(&junk, 0..1).await,
            Err(OpenError::Changed)
        ));
    }

    #[test]
    fn keys_outside_the_root_are_refused() {
        let cat = MemCatalog::new(Advertised::default());
        for key in ["../a.zip", "/", "a\\b.zip"] {
            let err = cat.insert(key, Vec::new()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{key}");
        }
    }
}

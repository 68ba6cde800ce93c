//! What a catalog saw at one scan: packages, folders and what is excluded,
//! and the lookups and listings every [`Catalog`](super::Catalog) answers
//! from it.
//!
//! A snapshot is immutable once published: a re-scan builds a new one and
//! swaps it in, so a listing never sees half a scan.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use std::ops::Range;

use super::{Entry, Lookup, OpenError, Package};

/// Immutable view of a catalog at one scan. Keys are catalog keys
/// (`Jun/update-v12-to-v13.zip`); the root folder is `""`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    packages: BTreeMap<String, Arc<Package>>,
    folders: BTreeMap<String, SystemTime>,
    excluded: BTreeMap<String, String>,
    validating: BTreeMap<String, SystemTime>,
}

impl Snapshot {
    /// An empty snapshot whose root folder was modified at `root_modified`.
    pub fn new(root_modified: SystemTime) -> Self {
        let mut snap = Snapshot::default();
        snap.folders.insert(String::new(), root_modified);
        snap
    }

    /// Adds a folder.
    pub fn add_folder(&mut self, key: impl Into<String>, modified: SystemTime) {
        self.folders.insert(key.into(), modified);
    }

    /// Adds a package under its key, and any parent folder not added yet
    /// (dated like the package).
    pub fn add_package(&mut self, package: Arc<Package>) {
        self.add_parents(&package.path, package.modified);
        self.validating.remove(&package.path);
        self.packages.insert(package.path.clone(), package);
    }

    /// Marks `key` as a file being validated (modified at `modified`): it
    /// looks up as [`Lookup::Validating`] until [`Snapshot::add_package`]
    /// or [`Snapshot::settle`]. Its folders are listed meanwhile.
    pub fn add_validating(&mut self, key: impl Into<String>, modified: SystemTime) {
        let key = key.into();
        self.add_parents(&key, modified);
        self.validating.insert(key, modified);
    }

    /// Ends the validation mark of `key`.
    pub fn settle(&mut self, key: &str) {
        self.validating.remove(key);
    }

    fn add_parents(&mut self, key: &str, modified: SystemTime) {
        let mut parent = key;
        while let Some((up, _)) = parent.rsplit_once('/') {
            self.folders.entry(up.to_string()).or_insert(modified);
            parent = up;
        }
    }

    /// Removes the package at `key`, if any (its folders stay).
    pub fn remove_package(&mut self, key: &str) {
        self.packages.remove(key);
    }

    /// Marks `key` (and everything under it) as never served, and why.
    pub fn exclude(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.excluded.insert(key.into(), reason.into());
    }

    /// The package at `key`, if any.
    pub fn package(&self, key: &str) -> Option<&Arc<Package>> {
        self.packages.get(key)
    }

    /// What `key` names.
    pub fn lookup(&self, key: &str) -> Lookup {
        if key.is_empty() || self.folders.contains_key(key) {
            return Lookup::Directory;
        }
        if let Some(pkg) = self.packages.get(key) {
            return Lookup::Package(Arc::clone(pkg));
        }
        if self.validating.contains_key(key) {
            return Lookup::Validating;
        }
        // A key under an excluded folder is excluded too.
        let mut probe = key;
        loop {
            if let Some(reason) = self.excluded.get(probe) {
                return Lookup::Excluded(reason.clone());
            }
            match probe.rsplit_once('/') {
                Some((parent, _)) => probe = parent,
                None => return Lookup::Missing,
            }
        }
    }

    /// The folder or package at `key`; `None` when missing or excluded.
    pub fn metadata(&self, key: &str) -> Option<Entry> {
        match self.lookup(key) {
            Lookup::Package(p) => Some(Entry::Package(p)),
            Lookup::Directory => Some(Entry::Folder {
                key: key.to_string(),
                modified: self
                    .folders
                    .get(key)
                    .copied()
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            }),
            Lookup::Excluded(_) | Lookup::Missing | Lookup::Validating => None,
        }
    }

    /// The folders and packages directly inside `folder`, sorted by key;
    /// `None` when `folder` is not a folder.
    pub fn list(&self, folder: &str) -> Option<Vec<Entry>> {
        if !matches!(self.lookup(folder), Lookup::Directory) {
            return None;
        }
        let prefix = if folder.is_empty() {
            String::new()
        } else {
            format!("{folder}/")
        };
        let child = |key: &str| {
            key.strip_prefix(&prefix)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
        };
        let folders = self
            .folders
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .filter(|(key, _)| child(key))
            .map(|(key, modified)| Entry::Folder {
                key: key.clone(),
                modified: *modified,
            });
        let packages = self
            .packages
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .filter(|(key, _)| child(key))
            .map(|(_, p)| Entry::Package(Arc::clone(p)));
        let mut entries: Vec<Entry> = folders.chain(packages).collect();
        entries.sort_by(|a, b| a.key().cmp(b.key()));
        Some(entries)
    }

    /// Every package, sorted by key.
    pub fn packages(&self) -> Vec<Arc<Package>> {
        self.packages.values().cloned().collect()
    }

    /// Where to read `range` of `package` from, among a catalog's
    /// per-key `sources` (a file, bytes, an object), provided the package
    /// is still the one validated at its key.
    ///
    /// # Errors
    /// [`OpenError::Range`] for a range outside the package;
    /// [`OpenError::Changed`] when the key now holds other content or
    /// nothing.
    pub fn source<'a, T>(
        &self,
        sources: &'a BTreeMap<String, T>,
        package: &Package,
        range: &Range<u64>,
    ) -> Result<&'a T, OpenError> {
        OpenError::check_range(range, package.size)?;
        match (self.package(&package.path), sources.get(&package.path)) {
            (Some(now), Some(source)) if now.sha256 == package.sha256 => Ok(source),
            _ => Err(OpenError::Changed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(key: &str) -> Arc<Package> {
        Arc::new(Package {
            path: key.into(),
            size: 3,
            sha256: String::new(),
            modified: SystemTime::UNIX_EPOCH,
            zip: None,
            problems: Vec::new(),
            profiles: Vec::new(),
        })
    }

    #[test]
    fn listing_shows_direct_children_only() {
        let mut snap = Snapshot::new(SystemTime::UNIX_EPOCH);
        snap.add_package(package("a.zip"));
        snap.add_package(package("Jun/b.zip"));
        snap.add_package(package("Jun/deep/c.zip"));
        snap.add_folder("Empty", SystemTime::UNIX_EPOCH);
        let names = |folder: &str| -> Vec<String> {
            snap.list(folder)
                .unwrap()
                .iter()
                .map(|e| e.name().to_string())
                .collect()
        };
        assert_eq!(names(""), ["Empty", "Jun", "a.zip"]);
        assert_eq!(names("Jun"), ["b.zip", "deep"]);
        assert!(names("Empty").is_empty());
        assert!(snap.list("a.zip").is_none());
        assert!(snap.list("nope").is_none());
        assert!(snap.metadata("Jun/deep").unwrap().is_folder());
        assert_eq!(snap.metadata("Jun/b.zip").unwrap().size(), 3);
    }

    #[test]
    fn keys_under_an_excluded_folder_are_excluded() {
        let mut snap = Snapshot::new(SystemTime::UNIX_EPOCH);
        snap.exclude(".git", "hidden file");
        assert!(matches!(snap.lookup(".git/config"), Lookup::Excluded(_)));
        assert!(snap.metadata(".git/config").is_none());
        assert!(matches!(snap.lookup("x"), Lookup::Missing));
    }
}

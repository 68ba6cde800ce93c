//! The module's user file system (UFS): the files a host uploads with
//! `AT+QFUPL`, lists with `AT+QFLST`, deletes with `AT+QFDEL` and sizes
//! with `AT+QFLDS`, and the packages a local-file `AT+QFOTADL` reads
//! (SPEC §9; Quectel's FILE AT Commands Manuals; seed
//! `000_318699ddba19ea03.txt` §3.3.3 note 1: "You can upload the package
//! to the module through AT+QFUPL").
//!
//! [`Ufs`] is a cheap handle on files shared by a module and its runs; it
//! lives as long as the [`Module`](crate::sim::Module), so files survive
//! reboots as they do on a real module. Its size is the module's
//! free-space setting ([`ModuleBuilder::free_space`](crate::sim::ModuleBuilder::free_space));
//! free space is that size minus the bytes stored. Every failure is a
//! [`FileError`] whose [`code`](FileError::code) is the `+CME ERROR`
//! number of Quectel's common file error table.
//!
//! This file sits at the bottom of the simulator: it imports nothing from
//! it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use globset::GlobBuilder;

/// Longest file name, bytes, without the `UFS:` prefix (SPEC §9).
pub const MAX_NAME: usize = 80;
/// The drive prefix a name may carry (`UFS:dfota_update.bin`), any case.
pub const DRIVE: &str = "UFS:";
/// UFS size when the module's free space is not set: 1 GiB, the
/// simulator's largest package ([`crate::sim::download::progress::MAX_PACKAGE`]), so
/// an unset free space never refuses a package a download could hold.
pub const DEFAULT_SIZE: u64 = crate::sim::download::progress::MAX_PACKAGE;

/// A file operation that fails, with Quectel's file error number
/// (`+CME ERROR: <err>`, SPEC §9 "file errors").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// 400: a parameter out of range (`AT+QFUPL` size 0, a bad pattern).
    #[error("invalid input value: {0}")]
    InvalidInput(String),
    /// 402: the data phase ended without a byte.
    #[error("read zero bytes")]
    ReadZero,
    /// 403: the file does not fit the free space.
    #[error("drive full: {needed} bytes needed, {free} free")]
    DriveFull {
        /// Bytes the file needs.
        needed: u64,
        /// Bytes free.
        free: u64,
    },
    /// 405: no such file.
    #[error("file not found: {0}")]
    NotFound(String),
    /// 406: empty, `.` or `..`, over [`MAX_NAME`] bytes, or a character a
    /// name cannot hold (control characters, `\ / : * ? " < > |`).
    #[error("invalid file name {0:?}")]
    InvalidName(String),
    /// 407: a file of that name exists (`AT+QFUPL` does not overwrite).
    #[error("file already exists: {0}")]
    Exists(String),
    /// 409: the data phase delivered a different byte count than announced.
    #[error("write failed: {0}")]
    WriteFailed(String),
    /// 421: the data phase timed out (for the AT layer's use).
    #[error("time out")]
    Timeout,
}

impl FileError {
    /// The `+CME ERROR` number (SPEC §9).
    pub fn code(&self) -> u16 {
        match self {
            FileError::InvalidInput(_) => 400,
            FileError::ReadZero => 402,
            FileError::DriveFull { .. } => 403,
            FileError::NotFound(_) => 405,
            FileError::InvalidName(_) => 406,
            FileError::Exists(_) => 407,
            FileError::WriteFailed(_) => 409,
            FileError::Timeout => 421,
        }
    }
}

/// A file name checked against the UFS rules, without its `UFS:` prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileName(String);

impl FileName {
    /// Checks `name` (`dfota_update.bin` or `UFS:dfota_update.bin`).
    ///
    /// # Errors
    /// [`FileError::InvalidName`]: empty, `.` or `..`, over [`MAX_NAME`]
    /// bytes, or a forbidden character.
    pub fn parse(name: &str) -> Result<FileName, FileError> {
        let bare = strip_drive(name);
        let bad = |c: char| c.is_control() || "\\/:*?\"<>|".contains(c);
        // `.` and `..` name folders on the module's file system, never a
        // file (`/data/ufs/..` is `/data`).
        let folder = bare == "." || bare == "..";
        if bare.is_empty() || bare.len() > MAX_NAME || folder || bare.chars().any(bad) {
            return Err(FileError::InvalidName(name.to_string()));
        }
        Ok(FileName(bare.to_string()))
    }

    /// The name, without prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for FileName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `name` without a leading `UFS:` (any case).
fn strip_drive(name: &str) -> &str {
    match name.get(..DRIVE.len()) {
        Some(head) if head.eq_ignore_ascii_case(DRIVE) => &name[DRIVE.len()..],
        _ => name,
    }
}

/// One `+QFLST` line: a file and its size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Name without prefix.
    pub name: String,
    /// Size, bytes.
    pub size: u64,
}

/// `+QFLDS: <free_size>,<total_size>`, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes free.
    pub free: u64,
    /// The file system's size.
    pub total: u64,
}

/// What `AT+QFUPL` reports after storing a file: `+QFUPL: <upload_size>,<checksum>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Bytes stored.
    pub size: u64,
    /// [`checksum`] of the bytes.
    pub checksum: u16,
}

/// The 16-bit XOR checksum `AT+QFUPL` reports (SPEC §9): the data taken as
/// big-endian 16-bit words, XORed together; an odd last byte is the high
/// byte of a last word whose low byte is 0.
pub fn checksum(data: &[u8]) -> u16 {
    data.chunks(2).fold(0u16, |sum, pair| {
        let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
        sum ^ word
    })
}

#[derive(Debug)]
struct Files {
    size: u64,
    files: BTreeMap<FileName, Arc<Vec<u8>>>,
}

impl Files {
    fn used(&self) -> u64 {
        self.files.values().map(|f| f.len() as u64).sum()
    }

    fn free(&self) -> u64 {
        self.size.saturating_sub(self.used())
    }
}

/// The module's file system: a shared handle (clones see the same files).
#[derive(Debug, Clone)]
pub struct Ufs {
    inner: Arc<Mutex<Files>>,
}

impl Ufs {
    /// An empty file system of `size` bytes.
    pub fn new(size: u64) -> Ufs {
        Ufs {
            inner: Arc::new(Mutex::new(Files {
                size,
                files: BTreeMap::new(),
            })),
        }
    }

    fn files(&self) -> MutexGuard<'_, Files> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Free and total bytes (`AT+QFLDS`).
    pub fn space(&self) -> Space {
        let files = self.files();
        Space {
            free: files.free(),
            total: files.size,
        }
    }

    /// Checks an `AT+QFUPL=<name>,<size>` before `CONNECT`: the name, that
    /// no such file exists, and that `size` bytes (1 or more) fit.
    ///
    /// # Errors
    /// 406 bad name, 407 exists, 400 size 0, 403 drive full.
    pub fn prepare(&self, name: &str, size: u64) -> Result<FileName, FileError> {
        let name = FileName::parse(name)?;
        let files = self.files();
        if files.files.contains_key(&name) {
            return Err(FileError::Exists(name.0));
        }
        if size == 0 {
            return Err(FileError::InvalidInput("file size 0".to_string()));
        }
        let free = files.free();
        if size > free {
            return Err(FileError::DriveFull { needed: size, free });
        }
        Ok(name)
    }

    /// Stores `data` as a new file `name` (the end of `AT+QFUPL`'s data
    /// phase) and returns its size and checksum.
    ///
    /// # Errors
    /// 406 bad name, 407 exists, 402 no data, 403 drive full.
    pub fn write(&self, name: &str, data: Vec<u8>) -> Result<Stored, FileError> {
        let name = FileName::parse(name)?;
        let mut files = self.files();
        if files.files.contains_key(&name) {
            return Err(FileError::Exists(name.0));
        }
        if data.is_empty() {
            return Err(FileError::ReadZero);
        }
        let free = files.free();
        let needed = data.len() as u64;
        if needed > free {
            return Err(FileError::DriveFull { needed, free });
        }
        let stored = Stored {
            size: needed,
            checksum: checksum(&data),
        };
        files.files.insert(name, Arc::new(data));
        Ok(stored)
    }

    /// The bytes of file `name`.
    ///
    /// # Errors
    /// 406 bad name, 405 no such file.
    pub fn read(&self, name: &str) -> Result<Arc<Vec<u8>>, FileError> {
        let name = FileName::parse(name)?;
        self.files()
            .files
            .get(&name)
            .cloned()
            .ok_or(FileError::NotFound(name.0))
    }

    /// The files matching `pattern` (`AT+QFLST[=<pattern>]`), by name:
    /// `*` or `UFS:*` for all, an exact name, or a glob with `*` and `?`;
    /// the `UFS:` prefix is optional. No match is an empty list.
    ///
    /// # Errors
    /// 400 for a pattern that is empty or does not compile.
    pub fn list(&self, pattern: &str) -> Result<Vec<FileInfo>, FileError> {
        let matches = matcher(pattern)?;
        Ok(self
            .files()
            .files
            .iter()
            .filter(|(name, _)| matches(name.as_str()))
            .map(|(name, data)| FileInfo {
                name: name.0.clone(),
                size: data.len() as u64,
            })
            .collect())
    }

    /// Deletes file `name`, or every file for `*` / `UFS:*`
    /// (`AT+QFDEL`); returns how many were deleted.
    ///
    /// # Errors
    /// 406 bad name, 405 no such file (a `*` on an empty drive deletes
    /// nothing and succeeds).
    pub fn delete(&self, name: &str) -> Result<usize, FileError> {
        let mut files = self.files();
        if strip_drive(name) == "*" {
            let n = files.files.len();
            files.files.clear();
            return Ok(n);
        }
        let name = FileName::parse(name)?;
        match files.files.remove(&name) {
            Some(_) => Ok(1),
            None => Err(FileError::NotFound(name.0)),
        }
    }
}

/// A name test for `pattern` (prefix stripped; `*`/`?` wildcards,
/// literal otherwise).
fn matcher(pattern: &str) -> Result<impl Fn(&str) -> bool, FileError> {
    let bare = strip_drive(pattern);
    if bare.is_empty() {
        return Err(FileError::InvalidInput("empty pattern".to_string()));
    }
    let glob = GlobBuilder::new(bare)
        .literal_separator(false)
        .backslash_escape(false)
        .build()
        .map_err(|e| FileError::InvalidInput(e.to_string()))?
        .compile_matcher();
    Ok(move |name: &str| glob.is_match(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_xors_big_endian_words() {
        assert_eq!(checksum(&[]), 0);
        assert_eq!(checksum(&[0x12, 0x34]), 0x1234);
        assert_eq!(checksum(&[0x12, 0x34, 0x12, 0x34]), 0);
        assert_eq!(checksum(&[0x12, 0x34, 0x56, 0x78]), 0x1234 ^ 0x5678);
        // An odd last byte is the high byte of a word ending in 0.
        assert_eq!(checksum(&[0x12, 0x34, 0xab]), 0x1234 ^ 0xab00);
        assert_eq!(checksum(&[0xff]), 0xff00);
    }

    #[test]
    fn names_take_an_optional_drive_prefix_and_80_bytes() {
        assert_eq!(FileName::parse("UFS:a.zip").unwrap().as_str(), "a.zip");
        assert_eq!(FileName::parse("ufs:a.zip").unwrap().as_str(), "a.zip");
        assert_eq!(FileName::parse("a.zip").unwrap().as_str(), "a.zip");
        let max = "n".repeat(MAX_NAME);
        assert!(FileName::parse(&max).is_ok());
        assert!(FileName::parse(&format!("UFS:{max}")).is_ok());
        for bad in [
            "".to_string(),
            "UFS:".to_string(),
            format!("{max}n"),
            "a/b.zip".into(),
            "a*.zip".into(),
            "a\"b".into(),
            "a\r\nb".into(),
            "RAM:x".into(),
        ] {
            assert_eq!(
                FileName::parse(&bad).map_err(|e| e.code()),
                Err(406),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn upload_checks_name_existence_and_space() {
        let ufs = Ufs::new(10);
        assert_eq!(ufs.prepare("a", 0).map_err(|e| e.code()), Err(400));
        assert_eq!(ufs.prepare("a", 11).map_err(|e| e.code()), Err(403));
        assert!(ufs.prepare("a", 10).is_ok());
        let stored = ufs.write("UFS:a", vec![1, 2, 3, 4]).unwrap();
        assert_eq!(
            stored,
            Stored {
                size: 4,
                checksum: 0x0102 ^ 0x0304
            }
        );
        assert_eq!(ufs.prepare("a", 1).map_err(|e| e.code()), Err(407));
        assert_eq!(ufs.write("a", vec![1]).map_err(|e| e.code()), Err(407));
        assert_eq!(ufs.write("b", vec![]).map_err(|e| e.code()), Err(402));
        assert_eq!(ufs.write("b", vec![0; 7]).map_err(|e| e.code()), Err(403));
        assert_eq!(ufs.space(), Space { free: 6, total: 10 });
        assert_eq!(ufs.read("a").unwrap().as_slice(), &[1, 2, 3, 4]);
        assert_eq!(ufs.read("b").map_err(|e| e.code()), Err(405));
    }

    #[test]
    fn list_takes_star_drive_star_exact_and_globs() {
        let ufs = Ufs::new(100);
        ufs.write("dfota_update.bin", vec![0; 5]).unwrap();
        ufs.write("x.zip", vec![0; 3]).unwrap();
        let names =
            |p: &str| -> Vec<String> { ufs.list(p).unwrap().into_iter().map(|f| f.name).collect() };
        assert_eq!(names("*"), vec!["dfota_update.bin", "x.zip"]);
        assert_eq!(names("UFS:*"), names("*"));
        assert_eq!(names("UFS:dfota_update.bin"), vec!["dfota_update.bin"]);
        assert_eq!(names("x.zip"), vec!["x.zip"]);
        assert_eq!(names("*.zip"), vec!["x.zip"]);
        assert!(names("nope").is_empty());
        assert_eq!(ufs.list("UFS:").map_err(|e| e.code()), Err(400));
        assert_eq!(
            ufs.list("x.zip").unwrap(),
            vec![FileInfo {
                name: "x.zip".into(),
                size: 3
            }]
        );
    }

    #[test]
    fn delete_one_or_all() {
        let ufs = Ufs::new(100);
        ufs.write("a", vec![0; 5]).unwrap();
        ufs.write("b", vec![0; 5]).unwrap();
        assert_eq!(ufs.delete("UFS:a"), Ok(1));
        assert_eq!(ufs.delete("a").map_err(|e| e.code()), Err(405));
        assert_eq!(ufs.delete("*"), Ok(1));
        assert_eq!(ufs.delete("*"), Ok(0));
        assert_eq!(ufs.space().free, 100);
        // Clones share the files.
        let other = ufs.clone();
        other.write("c", vec![1]).unwrap();
        assert_eq!(ufs.list("*").unwrap().len(), 1);
    }
}

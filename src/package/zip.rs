//! Zip integrity: the check both the catalog (on every `.zip` it serves)
//! and the simulated module (on every package it downloads) run, so they
//! agree on what a broken package is (SPEC §5, §6).

use std::io::{Read, Seek};

use serde::Serialize;

/// Why a zip archive is not a package a module would accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZipError {
    /// The central directory cannot be read (not a zip, truncated, …).
    #[error("not a readable zip archive: {0}")]
    Unreadable(String),
    /// The archive has no entries.
    #[error("zip archive has no entries")]
    Empty,
    /// An entry is encrypted; modules cannot decrypt it.
    #[error("zip entry {0}: encrypted")]
    Encrypted(String),
    /// An entry fails its CRC-32 or cannot be decompressed.
    #[error("zip entry {name}: {detail}")]
    BadEntry {
        /// Entry name inside the archive.
        name: String,
        /// What failed (CRC mismatch, unsupported method, bad data).
        detail: String,
    },
}

/// What a successful zip check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ZipSummary {
    /// Number of entries.
    pub entries: usize,
    /// Sum of the entries' uncompressed sizes, in bytes.
    pub uncompressed_bytes: u64,
}

/// Reads the central directory, then every entry through to its end so the
/// zip crate checks each CRC-32. Encrypted entries are refused.
///
/// # Errors
/// [`ZipError`] naming the first entry that fails.
pub fn check_zip<R: Read + Seek>(reader: R) -> Result<ZipSummary, ZipError> {
    let mut archive =
        zip::ZipArchive::new(reader).map_err(|e| ZipError::Unreadable(e.to_string()))?;
    if archive.is_empty() {
        return Err(ZipError::Empty);
    }
    let mut uncompressed_bytes = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    for i in 0..archive.len() {
        let (name, encrypted) = match archive.by_index_raw(i) {
            Ok(raw) => (raw.name().to_string(), raw.encrypted()),
            Err(e) => {
                return Err(ZipError::BadEntry {
                    name: format!("#{i}"),
                    detail: e.to_string(),
                });
            }
        };
        if encrypted {
            return Err(ZipError::Encrypted(name));
        }
        let bad = |detail: String| ZipError::BadEntry {
            name: name.clone(),
            detail,
        };
        let mut entry = archive.by_index(i).map_err(|e| bad(e.to_string()))?;
        loop {
            // The zip crate verifies the CRC-32 when the entry reaches EOF
            // and reports a mismatch as an I/O error.
            match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => uncompressed_bytes += n as u64,
                Err(e) => return Err(bad(e.to_string())),
            }
        }
    }
    Ok(ZipSummary {
        entries: archive.len(),
        uncompressed_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    fn zip_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn good_zip_passes_and_counts_entries() {
        let z = zip_bytes(&[("system.diff", b"abc"), ("boot.diff", &[7u8; 1000])]);
        let s = check_zip(Cursor::new(z)).unwrap();
        assert_eq!(s.entries, 2);
        assert_eq!(s.uncompressed_bytes, 1003);
    }

    #[test]
    fn stored_entry_with_flipped_byte_fails_its_crc() {
        let data = vec![0x55u8; 4096];
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        w.start_file("system.diff", opts).unwrap();
        w.write_all(&data).unwrap();
        let mut z = w.finish().unwrap().into_inner();
        let at = z.iter().position(|b| *b == 0x55).unwrap() + 100;
        z[at] ^= 0xff;
        let err = check_zip(Cursor::new(z)).unwrap_err();
        assert!(
            matches!(&err, ZipError::BadEntry { name, .. } if name == "system.diff"),
            "{err}"
        );
    }

    #[test]
    fn non_zip_and_empty_zip_fail() {
        assert!(matches!(
            check_zip(Cursor::new(b"hello".to_vec())),
            Err(ZipError::Unreadable(_))
        ));
        assert_eq!(check_zip(Cursor::new(zip_bytes(&[]))), Err(ZipError::Empty));
    }
}

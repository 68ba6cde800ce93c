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
    /// Two entries share bytes of the archive: a zip bomb that inflates one
    /// compressed stream many times.
    #[error("zip entries {0} and {1} overlap")]
    Overlap(String, String),
    /// The archive is over a validation budget (entry count, declared
    /// uncompressed size).
    #[error("zip archive over budget: {0}")]
    OverBudget(String),
    /// Two or more entries share a name: the central directory has more
    /// entries than the archive's (this many) names, and the ones a reader
    /// keeps hide the others from the checks.
    #[error("zip archive has entries with the same name (more entries than its {0} names)")]
    DuplicateNames(usize),
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

/// Most end-of-central-directory signatures (`PK\x05\x06`) a package may
/// hold anywhere in its bytes: its own, plus those of zips stored inside
/// it. The zip crate tries every one from the end backwards, reading the
/// central directory each claims, so a few MB of crafted end records
/// claiming 65,000 entries each kept one validation busy for hours.
pub const MAX_END_RECORDS: usize = 64;

/// Most entries a package may have (delta packages have a handful).
pub const MAX_ENTRIES: usize = 10_000;

/// Most uncompressed bytes a package may declare in all: 8 GiB, far above
/// any module's flash, far below what a bomb declares.
pub const MAX_UNCOMPRESSED: u64 = 8 << 30;

/// Entries' byte ranges in the archive, checked against the budget and
/// for overlaps before anything is decompressed.
fn check_layout<R: Read + Seek>(archive: &mut zip::ZipArchive<R>) -> Result<(), ZipError> {
    if archive.len() > MAX_ENTRIES {
        return Err(ZipError::OverBudget(format!(
            "{} entries (at most {MAX_ENTRIES})",
            archive.len()
        )));
    }
    let mut spans = Vec::with_capacity(archive.len());
    let mut declared = 0u64;
    for i in 0..archive.len() {
        let raw = archive.by_index_raw(i).map_err(|e| ZipError::BadEntry {
            name: format!("#{i}"),
            detail: e.to_string(),
        })?;
        // No limit on the compression ratio: a zero-padded image deflates
        // near 1,000:1 and is a good package. The declared total bounds
        // what validation inflates (an entry is stopped at its declared
        // size).
        let (size, packed) = (raw.size(), raw.compressed_size());
        declared = declared.saturating_add(size);
        let start = raw.header_start();
        let end = raw.data_start().saturating_add(packed);
        spans.push((start, end, raw.name().to_string()));
    }
    if declared > MAX_UNCOMPRESSED {
        return Err(ZipError::OverBudget(format!(
            "{declared} uncompressed bytes declared (at most {MAX_UNCOMPRESSED})"
        )));
    }
    spans.sort();
    for pair in spans.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(ZipError::Overlap(pair[0].2.clone(), pair[1].2.clone()));
        }
    }
    Ok(())
}

/// Counts end-of-central-directory signatures (`PK\x05\x06`) in data
/// read in chunks of any size, a signature across two chunks included: fed
/// by whoever reads the whole file anyway (the catalog's SHA-256 pass), so
/// [`check_zip_counted`] needs no read of its own.
#[derive(Debug, Default, Clone)]
pub struct EndRecords {
    count: usize,
    /// The last bytes seen (up to 3), which may start a signature.
    tail: Vec<u8>,
}

impl EndRecords {
    const SIGNATURE: &[u8] = b"PK\x05\x06";

    /// Counts the signatures in `chunk` and those that `chunk` completes.
    pub fn feed(&mut self, chunk: &[u8]) {
        let keep = Self::SIGNATURE.len() - 1;
        let mut joint = std::mem::take(&mut self.tail);
        joint.extend_from_slice(&chunk[..chunk.len().min(keep)]);
        // Only a signature starting in the old tail: one wholly inside
        // `chunk` is counted below.
        self.count += memchr::memmem::find_iter(&joint, Self::SIGNATURE)
            .filter(|&at| at < joint.len() - chunk.len().min(keep))
            .count();
        self.count += memchr::memmem::find_iter(chunk, Self::SIGNATURE).count();
        // What may start a signature the next chunk completes.
        if chunk.len() >= keep {
            joint.clear();
            joint.extend_from_slice(&chunk[chunk.len() - keep..]);
        } else {
            joint.drain(..joint.len().saturating_sub(keep));
        }
        self.tail = joint;
    }

    /// Signatures counted so far.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// End-of-central-directory signatures in the whole of `reader`.
fn count_end_records<R: Read + Seek>(reader: &mut R) -> std::io::Result<usize> {
    reader.seek(std::io::SeekFrom::Start(0))?;
    let mut records = EndRecords::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        records.feed(&buf[..n]);
    }
    reader.seek(std::io::SeekFrom::Start(0))?;
    Ok(records.count())
}

/// The entry count the archive's last end-of-central-directory record
/// declares (APPNOTE 4.3.16; its ZIP64 record's, 4.3.14, when the count
/// there is `0xFFFF`); `None` when no end record is in the last 64 KiB +
/// 22 bytes, where one must be, or a ZIP64 record it points to is not
/// there (the zip crate then says what is wrong).
fn declared_entries<R: Read + Seek>(reader: &mut R) -> std::io::Result<Option<u64>> {
    use std::io::SeekFrom;
    let len = reader.seek(SeekFrom::End(0))?;
    let tail_len = len.min(22 + 65_535);
    reader.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = vec![0u8; tail_len as usize];
    reader.read_exact(&mut tail)?;
    reader.seek(SeekFrom::Start(0))?;
    let Some(at) = memchr::memmem::rfind(&tail, b"PK\x05\x06") else {
        return Ok(None);
    };
    let Some(end) = tail.get(at..at + 22) else {
        return Ok(None);
    };
    let total = u16::from_le_bytes([end[10], end[11]]);
    if total != u16::MAX {
        return Ok(Some(u64::from(total)));
    }
    // The ZIP64 locator sits right before the end record.
    let Some(locator) = at.checked_sub(20).map(|l| &tail[l..l + 20]) else {
        return Ok(None);
    };
    if &locator[..4] != b"PK\x06\x07" {
        return Ok(None);
    }
    let record = u64::from_le_bytes(locator[8..16].try_into().unwrap_or_default());
    let mut zip64 = [0u8; 40];
    let read = reader
        .seek(SeekFrom::Start(record))
        .and_then(|_| reader.read_exact(&mut zip64));
    reader.seek(SeekFrom::Start(0))?;
    if read.is_err() || &zip64[..4] != b"PK\x06\x06" {
        return Ok(None);
    }
    Ok(Some(u64::from_le_bytes(
        zip64[32..40].try_into().unwrap_or_default(),
    )))
}

/// Central directory file headers (`PK\x01\x02`, APPNOTE 4.3.12) one
/// after the other from `start`, counted up to `cap`.
fn count_central_headers<R: Read + Seek>(
    reader: &mut R,
    start: u64,
    cap: usize,
) -> std::io::Result<usize> {
    reader.seek(std::io::SeekFrom::Start(start))?;
    let mut header = [0u8; 46];
    let mut count = 0;
    while count < cap {
        if reader.read_exact(&mut header).is_err() || &header[..4] != b"PK\x01\x02" {
            break;
        }
        count += 1;
        let len = |at: usize| i64::from(u16::from_le_bytes([header[at], header[at + 1]]));
        // File name, extra field and comment lengths.
        reader.seek(std::io::SeekFrom::Current(len(28) + len(30) + len(32)))?;
    }
    reader.seek(std::io::SeekFrom::Start(0))?;
    Ok(count)
}

/// Reads the central directory, checks the budget ([`MAX_ENTRIES`],
/// [`MAX_UNCOMPRESSED`]) and that no two entries overlap,
/// then reads every entry through to its end so the zip crate checks each
/// CRC-32, and checks that it inflates to exactly its declared size (one
/// inflating further is stopped there: the budget holds). Encrypted
/// entries are refused.
///
/// # Errors
/// [`ZipError`] naming the first entry that fails.
pub fn check_zip<R: Read + Seek>(mut reader: R) -> Result<ZipSummary, ZipError> {
    let records =
        count_end_records(&mut reader).map_err(|e| ZipError::Unreadable(e.to_string()))?;
    check_zip_counted(reader, records)
}

/// [`check_zip`] for a reader whose end-of-central-directory signatures
/// were already counted (`end_records`, [`EndRecords`]) while it was read
/// for another purpose.
///
/// # Errors
/// [`ZipError`] naming the first entry that fails.
pub fn check_zip_counted<R: Read + Seek>(
    mut reader: R,
    end_records: usize,
) -> Result<ZipSummary, ZipError> {
    // An empty file is said so, not as a missing end record.
    if reader.seek(std::io::SeekFrom::End(0)).ok() == Some(0) {
        return Err(ZipError::Unreadable("the file is empty (0 bytes)".into()));
    }
    let _ = reader.seek(std::io::SeekFrom::Start(0));
    if end_records > MAX_END_RECORDS {
        return Err(ZipError::OverBudget(format!(
            "more than {MAX_END_RECORDS} end-of-central-directory records"
        )));
    }
    // The zip crate reads every entry its end record declares into memory
    // before the budget can be checked: a 92 MB zip of 1M entries took
    // 605 MB. The last end record's count is looked at first.
    if let Some(declared) =
        declared_entries(&mut reader).map_err(|e| ZipError::Unreadable(e.to_string()))?
        && declared > MAX_ENTRIES as u64
    {
        return Err(ZipError::OverBudget(format!(
            "the central directory declares {declared} entries (at most {MAX_ENTRIES})"
        )));
    }
    let open =
        |reader| zip::ZipArchive::new(reader).map_err(|e| ZipError::Unreadable(e.to_string()));
    let archive = open(reader)?;
    // The crate keeps one entry per name: a central directory with more
    // headers than names hides entries from every check below.
    let (names, start) = (archive.len(), archive.central_directory_start());
    let mut reader = archive.into_inner();
    let headers = count_central_headers(&mut reader, start, names + 1)
        .map_err(|e| ZipError::Unreadable(e.to_string()))?;
    if headers > names {
        return Err(ZipError::DuplicateNames(names));
    }
    let mut archive = open(reader)?;
    if archive.is_empty() {
        return Err(ZipError::Empty);
    }
    check_layout(&mut archive)?;
    let mut uncompressed_bytes = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    for i in 0..archive.len() {
        let (name, encrypted, declared) = match archive.by_index_raw(i) {
            Ok(raw) => (raw.name().to_string(), raw.encrypted(), raw.size()),
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
        // The budget was checked on the declared sizes: an entry that
        // inflates past its own is stopped there, not read on.
        let mut inflated = 0u64;
        loop {
            // The zip crate verifies the CRC-32 when the entry reaches EOF
            // and reports a mismatch as an I/O error.
            match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => inflated += n as u64,
                Err(e) => return Err(bad(e.to_string())),
            }
            if inflated > declared {
                return Err(bad(format!("inflates past its declared {declared} bytes")));
            }
        }
        if inflated != declared {
            return Err(bad(format!(
                "inflates to {inflated} bytes, declares {declared}"
            )));
        }
        uncompressed_bytes += inflated;
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

    /// A zip whose central directory lists its one entry twice, under
    /// two names: both point at the same compressed bytes (how "400 GiB"
    /// bombs share one stream).
    fn doubled_entry_zip() -> Vec<u8> {
        let z = zip_bytes(&[("a.bin", &[7u8; 5000])]);
        let eocd = z.len() - 22;
        let le32 = |at: usize| u32::from_le_bytes(z[at..at + 4].try_into().unwrap()) as usize;
        let (cd_size, cd_offset) = (le32(eocd + 12), le32(eocd + 16));
        let entry = z[cd_offset..cd_offset + cd_size].to_vec();
        let mut twin = entry.clone();
        let name_at = 46;
        twin[name_at] = b'b';
        let mut out = z[..cd_offset].to_vec();
        out.extend_from_slice(&entry);
        out.extend_from_slice(&twin);
        let mut end = z[eocd..].to_vec();
        end[8..10].copy_from_slice(&2u16.to_le_bytes());
        end[10..12].copy_from_slice(&2u16.to_le_bytes());
        end[12..16].copy_from_slice(&((2 * cd_size) as u32).to_le_bytes());
        out.extend_from_slice(&end);
        out
    }

    /// Two entries under one name: the first, with a bad CRC, would be
    /// hidden behind the second by a reader that keys entries by name.
    #[test]
    fn entries_sharing_a_name_are_refused() {
        let mut zip = zip_bytes(&[("a.bin", &[1u8; 100]), ("b.bin", &[2u8; 100])]);
        let renamed: Vec<usize> = memchr::memmem::find_iter(&zip, b"b.bin").collect();
        assert_eq!(renamed.len(), 2, "local and central header");
        for at in renamed {
            zip[at] = b'a';
        }
        assert_eq!(
            check_zip(Cursor::new(zip)),
            Err(ZipError::DuplicateNames(1))
        );
    }

    /// A few MB of end records, each claiming a large central directory,
    /// are refused at once, not tried one by one; a package holding a few
    /// stored zips (each with its own end record) is fine.
    #[test]
    fn more_end_records_than_the_budget_are_refused() {
        let zip = zip_bytes(&[("a.bin", &[1u8; 100])]);
        let end = zip[zip.len() - 22..].to_vec();
        let mut hostile = zip.clone();
        for _ in 0..=MAX_END_RECORDS {
            hostile.extend_from_slice(&end);
        }
        assert!(matches!(
            check_zip(Cursor::new(hostile)),
            Err(ZipError::OverBudget(_))
        ));
        let inner = zip_bytes(&[("inner.bin", b"x")]);
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for i in 0..3 {
            w.start_file(format!("part{i}.zip"), stored).unwrap();
            w.write_all(&inner).unwrap();
        }
        let outer = w.finish().unwrap().into_inner();
        assert_eq!(check_zip(Cursor::new(outer)).unwrap().entries, 3);
    }

    /// More entries than the budget are refused on the end record's count,
    /// before the central directory is read into memory; ZIP64 counts too.
    #[test]
    fn a_declared_entry_count_over_the_budget_is_refused_before_reading() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for i in 0..=MAX_ENTRIES {
            w.start_file(format!("{i}"), zip::write::SimpleFileOptions::default())
                .unwrap();
        }
        let zip = w.finish().unwrap().into_inner();
        let over = |got: &Result<ZipSummary, ZipError>| matches!(got, Err(ZipError::OverBudget(why)) if why.contains("declares 10001 entries"));
        let got = check_zip(Cursor::new(zip.clone()));
        assert!(over(&got), "{got:?}");
        // The same count through a ZIP64 end record (0xFFFF in the plain one).
        let at = memchr::memmem::rfind(&zip, b"PK\x05\x06").unwrap();
        let le32 =
            |from: usize| u64::from(u32::from_le_bytes(zip[from..from + 4].try_into().unwrap()));
        let (cd_size, cd_offset) = (le32(at + 12), le32(at + 16));
        let count = (MAX_ENTRIES + 1) as u64;
        let mut z64 = zip[..at].to_vec();
        let record = z64.len() as u64;
        z64.extend_from_slice(b"PK\x06\x06");
        z64.extend_from_slice(&44u64.to_le_bytes());
        z64.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        for v in [count, count, cd_size, cd_offset] {
            z64.extend_from_slice(&v.to_le_bytes());
        }
        z64.extend_from_slice(b"PK\x06\x07");
        z64.extend_from_slice(&0u32.to_le_bytes());
        z64.extend_from_slice(&record.to_le_bytes());
        z64.extend_from_slice(&1u32.to_le_bytes());
        let mut end = zip[at..].to_vec();
        end[8..12].copy_from_slice(&[0xFF; 4]);
        z64.extend_from_slice(&end);
        let got = check_zip(Cursor::new(z64));
        assert!(over(&got), "{got:?}");
        // A small archive passes the look.
        assert!(check_zip(Cursor::new(zip_bytes(&[("a", b"a")]))).is_ok());
    }

    /// Signatures are counted wherever chunks split them.
    #[test]
    fn end_records_are_counted_across_any_chunking() {
        let data = b"xPK\x05\x06PK\x05\x06yyPK\x05\x06PK";
        for size in 1..=data.len() {
            let mut records = EndRecords::default();
            data.chunks(size).for_each(|c| records.feed(c));
            assert_eq!(records.count(), 3, "chunks of {size}");
        }
    }

    /// A zero-padded image deflates about 1,000:1 and is a good package.
    #[test]
    fn a_zero_padded_entry_passes() {
        let zeros = vec![0u8; 4 << 20];
        let s = check_zip(Cursor::new(zip_bytes(&[("padded.bin", &zeros)]))).unwrap();
        assert_eq!(s.uncompressed_bytes, 4 << 20);
    }

    /// Entries declaring more than [`MAX_UNCOMPRESSED`] in all are refused
    /// before anything is inflated.
    #[test]
    fn entries_declaring_over_the_total_are_over_budget() {
        let mut zip = zip_bytes(&[("a.bin", b"a"), ("b.bin", b"b"), ("c.bin", b"c")]);
        let central: Vec<usize> = zip
            .windows(4)
            .enumerate()
            .filter(|(_, w)| *w == b"PK\x01\x02")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(central.len(), 3);
        for at in central {
            zip[at + 24..at + 28].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        }
        let err = check_zip(Cursor::new(zip)).unwrap_err();
        assert!(matches!(err, ZipError::OverBudget(_)), "{err}");
        assert!(
            err.to_string().contains("uncompressed bytes declared"),
            "{err}"
        );
    }

    /// A deflated entry whose declared size (local header and central
    /// directory) is far below what it inflates to: stopped at the
    /// declared size, whatever its CRC says.
    #[test]
    fn an_entry_inflating_past_its_declared_size_is_refused() {
        let mut zip = zip_bytes(&[("a.bin", &vec![0u8; 4 << 20])]);
        let declared = 100_000u32.to_le_bytes();
        zip[22..26].copy_from_slice(&declared);
        let central = zip.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
        zip[central + 24..central + 28].copy_from_slice(&declared);
        let err = check_zip(Cursor::new(zip)).unwrap_err();
        assert!(
            err.to_string().contains("past its declared 100000 bytes"),
            "{err}"
        );
    }

    #[test]
    fn entries_sharing_compressed_bytes_are_refused_before_inflating() {
        let err = check_zip(Cursor::new(doubled_entry_zip())).unwrap_err();
        assert_eq!(err, ZipError::Overlap("a.bin".into(), "b.bin".into()));
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
        let empty = check_zip(Cursor::new(Vec::new())).unwrap_err();
        assert_eq!(
            empty.to_string(),
            "not a readable zip archive: the file is empty (0 bytes)"
        );
    }
}

//! Download-log files → records for [`super::Campaign::build`]: one or
//! more JSON-lines logs (several replicas' logs, rotated files) merged in
//! `ts` order; a file compressed with gzip (logrotate's `compress`) is read
//! through it. A line that is not a record — torn by a crash mid-write, not
//! JSON, another program's output — is skipped and counted, never fatal.

use std::path::{Path, PathBuf};

use crate::dlog::DownloadRecord;

/// A log file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("download log {path}: {error}")]
pub struct ReadError {
    /// The file.
    pub path: PathBuf,
    /// The I/O error (in the message, so not also a `source`).
    pub error: std::io::Error,
}

/// The records of every log in `paths`, ordered by `ts` (stable: a tie
/// keeps file order, then line order), and how many non-empty lines were
/// not records.
///
/// # Errors
/// [`ReadError`] for the first file that cannot be read.
pub fn read_logs(paths: &[impl AsRef<Path>]) -> Result<(Vec<DownloadRecord>, u64), ReadError> {
    let mut records = Vec::new();
    let mut skipped = 0;
    for path in paths {
        let path = path.as_ref();
        let bytes = read_log(path).map_err(|error| ReadError {
            path: path.to_path_buf(),
            error,
        })?;
        skipped += parse_lines(&bytes, &mut records);
    }
    records.sort_by_key(|r| r.ts);
    Ok((records, skipped))
}

/// The bytes of the log at `path`, decompressed when it starts with the
/// gzip magic number (RFC 1952 §2.3.1: `1f 8b`), whatever its name.
///
/// # Errors
/// The file cannot be read, its gzip data is corrupt or cut short, or it
/// is named `.gz` and holds no gzip data (damaged, not a plain log).
fn read_log(path: &Path) -> std::io::Result<Vec<u8>> {
    let bytes = std::fs::read(path)?;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
            && !bytes.is_empty()
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a readable gzip file: no gzip header (RFC 1952)",
            ));
        }
        return Ok(bytes);
    }
    let mut text = Vec::new();
    let mut gz = flate2::read::MultiGzDecoder::new(&bytes[..]);
    std::io::Read::read_to_end(&mut gz, &mut text)
        .map_err(|e| std::io::Error::new(e.kind(), format!("not a readable gzip file: {e}")))?;
    Ok(text)
}

/// Appends the records in `bytes` (JSON lines) to `out`; returns how many
/// non-blank lines were not records.
pub fn parse_lines(bytes: &[u8], out: &mut Vec<DownloadRecord>) -> u64 {
    let mut skipped = 0;
    for line in bytes.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<DownloadRecord>(line) {
            Ok(r) => out.push(r),
            Err(_) => skipped += 1,
        }
    }
    skipped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts: &str, path: &str) -> String {
        format!(
            r#"{{"ts":"{ts}","duration_ms":5,"protocol":"http","peer":"127.0.0.1:4000","user":null,"path":"{path}","size":10,"sha256":null,"range_start":0,"bytes_sent":10,"status":200,"outcome":"complete","reason":"sent"}}"#
        )
    }

    #[test]
    fn logs_merge_in_ts_order_and_torn_lines_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jsonl");
        let b = dir.path().join("b.jsonl");
        let torn = &line("2026-06-01T12:00:09.000Z", "x.zip")[..40];
        std::fs::write(
            &a,
            format!(
                "{}\n{}\nnot json\n\n{torn}",
                line("2026-06-01T12:00:00.000Z", "1.zip"),
                line("2026-06-01T12:00:02.000Z", "3.zip")
            ),
        )
        .unwrap();
        let mut b_bytes = line("2026-06-01T12:00:01.000Z", "2.zip").into_bytes();
        b_bytes.extend_from_slice(b"\n\xff\xfe\n");
        std::fs::write(&b, b_bytes).unwrap();
        let (records, skipped) = read_logs(&[&a, &b]).unwrap();
        let paths: Vec<_> = records.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["1.zip", "2.zip", "3.zip"]);
        assert_eq!(skipped, 3);
        let err = read_logs(&[dir.path().join("missing")]).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}

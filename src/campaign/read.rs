//! Download-log files → records for [`super::CampaignBuilder`]: one or
//! more JSON-lines logs (several replicas' logs, rotated files) read line
//! by line, never held whole; a file compressed with gzip (logrotate's
//! `compress`) is read through it. A line that is not a record — torn by a crash mid-write, not
//! JSON, another program's output — is skipped and counted, never fatal.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
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

/// Gives every record of every log in `paths` to `each`, file by file and
/// line by line (a log of millions of records is never held whole, nor its
/// text), and returns how many non-blank lines were not records.
///
/// # Errors
/// [`ReadError`] for the first file that cannot be read to its end (the
/// records before the error were given already).
pub fn for_each_record(
    paths: &[impl AsRef<Path>],
    mut each: impl FnMut(DownloadRecord),
) -> Result<u64, ReadError> {
    let mut skipped = 0;
    for path in paths {
        let path = path.as_ref();
        let error = |error| ReadError {
            path: path.to_path_buf(),
            error,
        };
        let mut lines = open_log(path).map_err(error)?;
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = (&mut lines)
                .take(LINE_MAX_BYTES as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(error)?;
            if read == 0 {
                break;
            }
            if line.len() > LINE_MAX_BYTES && line.last() != Some(&b'\n') {
                // No record is this long: skipped, and read past, not held.
                skip_line(&mut lines).map_err(error)?;
                skipped += 1;
                continue;
            }
            skipped += u64::from(!parse_line(&line, &mut each));
        }
    }
    Ok(skipped)
}

/// Longest line read as a possible record (1 MiB); records are a few KiB
/// at most (their string fields are capped, [`crate::dlog`]).
const LINE_MAX_BYTES: usize = 1 << 20;

/// Reads past the rest of the line `lines` is in, holding none of it.
fn skip_line(lines: &mut dyn BufRead) -> std::io::Result<()> {
    loop {
        let buf = lines.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(at) => {
                lines.consume(at + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                lines.consume(n);
            }
        }
    }
}

/// The text of the log at `path`, decompressed when it starts with the
/// gzip magic number (RFC 1952 §2.3.1: `1f 8b`), whatever its name.
///
/// # Errors
/// The file cannot be opened, or it is named `.gz` and holds no gzip data
/// (damaged, not a plain log). Corrupt or cut-short gzip data is an error
/// of the reads that meet it.
fn open_log(path: &Path) -> std::io::Result<Box<dyn BufRead>> {
    let mut file = File::open(path)?;
    // The first two bytes, however the file comes (a pipe may give one
    // at a time), then the rest after them.
    let mut head = Vec::with_capacity(2);
    (&mut file).take(2).read_to_end(&mut head)?;
    let (gzip, empty) = (head.starts_with(&[0x1f, 0x8b]), head.is_empty());
    let file = BufReader::new(std::io::Cursor::new(head).chain(file));
    if gzip {
        let gz = flate2::bufread::MultiGzDecoder::new(file);
        return Ok(Box::new(BufReader::new(GzErrors(gz))));
    }
    if !empty
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a readable gzip file: no gzip header (RFC 1952)",
        ));
    }
    Ok(Box::new(file))
}

/// A gzip stream whose read errors say that the file is not readable gzip.
struct GzErrors<R>(R);

impl<R: Read> Read for GzErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| std::io::Error::new(e.kind(), format!("not a readable gzip file: {e}")))
    }
}

/// Gives the record on `line` to `each`; false when the line is not blank
/// and not a record.
fn parse_line(line: &[u8], each: &mut impl FnMut(DownloadRecord)) -> bool {
    if line.iter().all(u8::is_ascii_whitespace) {
        return true;
    }
    match serde_json::from_slice::<DownloadRecord>(line) {
        Ok(r) => {
            each(r);
            true
        }
        Err(_) => false,
    }
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
    fn logs_are_read_file_by_file_and_torn_lines_are_counted() {
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
        let mut records = Vec::new();
        let skipped = for_each_record(&[&a, &b], |r| records.push(r)).unwrap();
        let paths: Vec<_> = records.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            ["1.zip", "3.zip", "2.zip"],
            "file by file, line by line"
        );
        assert_eq!(skipped, 3);
        let err = for_each_record(&[dir.path().join("missing")], |_| ()).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    /// A line longer than any record (garbage without line ends) is
    /// skipped and counted, not held; the records after it are read.
    #[test]
    fn an_overlong_line_is_skipped_not_held() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.jsonl");
        let mut text = "x".repeat(LINE_MAX_BYTES * 2);
        text.push('\n');
        text.push_str(&line("2026-06-01T12:00:00.000Z", "after.zip"));
        text.push('\n');
        std::fs::write(&log, text).unwrap();
        let mut records = Vec::new();
        let skipped = for_each_record(&[&log], |r| records.push(r)).unwrap();
        assert_eq!(skipped, 1);
        let paths: Vec<_> = records.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["after.zip"]);
    }
}

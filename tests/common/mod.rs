//! Shared fixture for the end-to-end tests: a real server on 127.0.0.1
//! port 0 over a temporary package folder, plus helpers to build zips, run
//! real client programs with a deadline, and wait for download records.
#![allow(dead_code)]

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use qfota_serve::dlog::DownloadRecord;
use qfota_serve::serve::{Server, ServerBuilder};
use sha2::{Digest, Sha256};

/// Every await in the tests is bounded by this.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Name of the large package every fixture carries (for aborted downloads).
pub const BIG: &str = "big-v1-to-v2.zip";
/// Size of the large package's single stored entry, in bytes.
pub const BIG_ENTRY: usize = 8 * 1024 * 1024;

/// A running server over a temporary copy of `packages/` plus [`BIG`].
pub struct Fixture {
    pub server: Server,
    pub dir: tempfile::TempDir,
    pub certs: tempfile::TempDir,
    pub log_path: PathBuf,
}

impl Fixture {
    /// Starts FTP, HTTP and HTTPS on port 0 with user `test:test`;
    /// `configure` may change the builder further.
    pub async fn start(configure: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("packages")
                .as_path(),
            dir.path(),
        );
        std::fs::write(dir.path().join(BIG), big_zip()).unwrap();
        Self::start_in(dir, configure).await
    }

    /// Like [`Fixture::start`] over an existing folder.
    pub async fn start_in(
        dir: tempfile::TempDir,
        configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
    ) -> Fixture {
        let certs = tempfile::tempdir().unwrap();
        let log_path = dir.path().join(".downloads.jsonl");
        let builder = Server::builder()
            .packages(dir.path())
            .ftp(0)
            .http(0)
            .https(0)
            .user("test", "test")
            .passive_ports(40000..=40999)
            .certs_dir(certs.path())
            .log_file(&log_path)
            .grace_period(Duration::from_secs(2));
        let server = tokio::time::timeout(DEADLINE, configure(builder).start())
            .await
            .expect("server start timed out")
            .expect("server start");
        Fixture {
            server,
            dir,
            certs,
            log_path,
        }
    }

    pub fn http_url(&self, path: &str) -> String {
        self.server.http_url(path).unwrap()
    }
    pub fn https_url(&self, path: &str) -> String {
        self.server.https_url(path).unwrap()
    }
    pub fn ftp_url(&self, path: &str) -> String {
        self.server.ftp_url(path).unwrap()
    }
    pub fn ftp_port(&self) -> u16 {
        self.server.ftp_addr().unwrap().port()
    }

    /// The log file parsed line by line.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("log line is JSON"))
            .collect()
    }

    /// Polls the records until one matches, or panics at the deadline.
    pub async fn wait_record(
        &self,
        what: &str,
        pred: impl Fn(&DownloadRecord) -> bool,
    ) -> DownloadRecord {
        let start = tokio::time::Instant::now();
        loop {
            if let Some(r) = self.server.downloads().into_iter().find(|r| pred(r)) {
                return r;
            }
            if start.elapsed() > DEADLINE {
                panic!("no record {what}; have {:#?}", self.server.downloads());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The bytes of a package in the fixture's folder.
    pub fn package_bytes(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(rel)).unwrap()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Lower-case hex SHA-256.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A valid zip with the given entries (deflated).
pub fn zip_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data) in entries {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A valid zip with one stored entry of [`BIG_ENTRY`] bytes.
pub fn big_zip() -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("system.diff", opts).unwrap();
    w.write_all(&noise(BIG_ENTRY, 7)).unwrap();
    w.finish().unwrap().into_inner()
}

/// A zip whose stored entry has one byte flipped (its CRC fails).
pub fn broken_zip() -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("system.diff", opts).unwrap();
    w.write_all(&[0x5a; 4096]).unwrap();
    let mut bytes = w.finish().unwrap().into_inner();
    let at = bytes.iter().position(|b| *b == 0x5a).unwrap() + 1000;
    bytes[at] ^= 0xff;
    bytes
}

/// Runs a real client program with a deadline (killed on timeout).
pub async fn run(program: &str, args: &[&str]) -> Output {
    let child = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(DEADLINE, child)
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} timed out"))
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs a Python 3 script (passed on stdin-free `-c`) with arguments.
pub async fn python(script: &str, args: &[&str]) -> Output {
    let mut all = vec!["-c", script];
    all.extend_from_slice(args);
    run("python3", &all).await
}

/// A temporary folder holding what [`Fixture::start`] serves (`packages/`
/// plus [`BIG`]), for tests that add files before the server starts.
pub fn package_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("packages")
            .as_path(),
        dir.path(),
    );
    std::fs::write(dir.path().join(BIG), big_zip()).unwrap();
    dir
}

impl Fixture {
    /// Like [`Fixture::start_in`] over [`package_dir`], but with no FTP
    /// account, so FTP accepts any user name and password.
    pub async fn start_anonymous(
        configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
    ) -> Fixture {
        let dir = package_dir();
        let certs = tempfile::tempdir().unwrap();
        let log_path = dir.path().join(".downloads.jsonl");
        let builder = Server::builder()
            .packages(dir.path())
            .ftp(0)
            .http(0)
            .https(0)
            .passive_ports(40000..=40999)
            .certs_dir(certs.path())
            .log_file(&log_path)
            .grace_period(Duration::from_secs(2));
        let server = tokio::time::timeout(DEADLINE, configure(builder).start())
            .await
            .expect("server start timed out")
            .expect("server start");
        Fixture {
            server,
            dir,
            certs,
            log_path,
        }
    }

    /// Polls until at least `n` records match, or panics at the deadline.
    pub async fn wait_records(
        &self,
        what: &str,
        n: usize,
        pred: impl Fn(&DownloadRecord) -> bool,
    ) -> Vec<DownloadRecord> {
        let start = tokio::time::Instant::now();
        loop {
            let found: Vec<_> = self
                .server
                .downloads()
                .into_iter()
                .filter(|r| pred(r))
                .collect();
            if found.len() >= n {
                return found;
            }
            if start.elapsed() > DEADLINE {
                panic!(
                    "fewer than {n} records {what}; have {:#?}",
                    self.server.downloads()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Polls `cond` every 20 ms until it holds, or panics after `within`.
pub async fn wait_until(what: &str, within: Duration, cond: impl Fn() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        if start.elapsed() > within {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `bytes` to `dir/name` the way an operator's copy should land:
/// into a hidden temporary file first (never served), then renamed, so a
/// scan never sees a half-written package.
pub fn copy_in(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.part"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

//! The download log never loses or corrupts a record: the real binary
//! keeps running on `SIGHUP` and reopens its log, notices a renamed or
//! deleted log by itself, caps long fields, and writes whole lines under
//! 100 concurrent clients; the log itself waits out a full disk (a real
//! small tmpfs when this machine lets us mount one, else `/dev/full`) and
//! counts what it had to drop.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{DEADLINE, bounded, eventually, run};
use qfota_serve::dlog::{
    Attempt, CUT_MARK, DownloadLog, Outcome, PATH_MAX_BYTES, Protocol, file::QUEUE_BYTES,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Child;

const BIN: &str = env!("CARGO_BIN_EXE_qfota-serve");

/// How long a file event may take to show (the writer checks every
/// 250 ms; this only bounds the wait, it asserts no timing).
const FILE_EVENT: Duration = Duration::from_secs(10);

/// `qfota-serve --http 0` on 127.0.0.1 over the sample packages, logging
/// to `<tmp>/logs/downloads.jsonl`, stderr to `<tmp>/stderr.txt`; killed on drop.
struct Serve {
    child: Child,
    http: String,
    log: PathBuf,
    _work: tempfile::TempDir,
}

impl Serve {
    async fn start() -> Serve {
        let work = tempfile::tempdir().unwrap();
        // In a folder of its own, which a test may delete.
        std::fs::create_dir(work.path().join("logs")).unwrap();
        let log = work.path().join("logs/downloads.jsonl");
        let mut child = tokio::process::Command::new(BIN)
            .args(["--http", "0", "--bind", "127.0.0.1", "--log"])
            .arg(&log)
            .arg("--certs-dir")
            .arg(work.path().join("certs"))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("packages"))
            .stderr(std::fs::File::create(work.path().join("stderr.txt")).unwrap())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let http = bounded("banner", async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(addr) = line.trim().strip_prefix("http  listening on ") {
                    return addr.to_string();
                }
            }
            panic!("no HTTP listener in the banner");
        })
        .await;
        // Keep reading stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Serve {
            child,
            http,
            log,
            _work: work,
        }
    }

    /// `GET <target>` over a fresh connection; the status code.
    async fn get(&self, target: &str) -> u16 {
        let mut conn = bounded("connect", TcpStream::connect(&self.http))
            .await
            .unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nHost: qfota\r\nConnection: close\r\n\r\n");
        bounded("request", conn.write_all(request.as_bytes()))
            .await
            .unwrap();
        let mut response = Vec::new();
        bounded("response", conn.read_to_end(&mut response))
            .await
            .unwrap();
        let head = String::from_utf8_lossy(&response[..response.len().min(12)]).into_owned();
        head.get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {head:?}"))
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self._work.path().join("stderr.txt")).unwrap()
    }

    async fn signal(&self, name: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(run("kill", &[name, &pid]).await.status.success());
    }

    /// SIGTERM, then the exit code.
    async fn stop(&mut self) -> Option<i32> {
        self.signal("-TERM").await;
        bounded("exit", self.child.wait()).await.unwrap().code()
    }
}

/// The log's records, every line parsed as JSON (a torn or merged line
/// fails the test).
fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line {l:?}: {e}")))
        .collect()
}

/// Waits until `path` holds `n` records, and returns them.
async fn wait_records(path: &Path, n: usize) -> Vec<serde_json::Value> {
    eventually(
        &format!("{n} records in {}", path.display()),
        DEADLINE,
        || async {
            let all = records(path);
            (all.len() >= n).then_some(all)
        },
    )
    .await
}

async fn wait_exists(path: &Path) {
    eventually(
        &format!("{} to appear", path.display()),
        FILE_EVENT,
        || async { path.exists().then_some(()) },
    )
    .await;
}

fn paths(records: &[serde_json::Value]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect()
}

/// `kill -HUP` used to kill the server (exit 129); now it reopens the log,
/// as logrotate's `postrotate` expects.
#[tokio::test]
async fn sighup_reopens_the_log_after_logrotate_moved_it() {
    let mut serve = Serve::start().await;
    assert_eq!(serve.get("/before-rotation").await, 404);
    wait_records(&serve.log, 1).await;
    let rotated = serve.log.with_extension("jsonl.1");
    std::fs::rename(&serve.log, &rotated).unwrap();
    serve.signal("-HUP").await;
    wait_exists(&serve.log).await;
    assert_eq!(serve.get("/after-rotation").await, 404);
    assert_eq!(
        paths(&wait_records(&serve.log, 1).await),
        ["after-rotation"]
    );
    assert_eq!(paths(&records(&rotated)), ["before-rotation"]);
    assert!(
        serve.stderr().contains("download log reopened"),
        "{}",
        serve.stderr()
    );
    // SIGTERM right after a request: its record is written before exit.
    assert_eq!(serve.get("/just-before-sigterm").await, 404);
    assert_eq!(
        serve.stop().await,
        Some(0),
        "SIGHUP must not end the server"
    );
    assert_eq!(
        paths(&records(&serve.log)),
        ["after-rotation", "just-before-sigterm"]
    );
}

/// A log renamed or deleted without a signal used to swallow every later
/// record; the server now opens a new file at the path by itself.
#[tokio::test]
async fn a_renamed_or_deleted_log_is_replaced_by_a_new_file() {
    let mut serve = Serve::start().await;
    assert_eq!(serve.get("/one").await, 404);
    wait_records(&serve.log, 1).await;
    let moved = serve.log.with_extension("moved");
    std::fs::rename(&serve.log, &moved).unwrap();
    wait_exists(&serve.log).await;
    assert_eq!(serve.get("/two").await, 404);
    assert_eq!(paths(&wait_records(&serve.log, 1).await), ["two"]);

    std::fs::remove_file(&serve.log).unwrap();
    wait_exists(&serve.log).await;
    assert_eq!(serve.get("/three").await, 404);
    assert_eq!(paths(&wait_records(&serve.log, 1).await), ["three"]);
    assert_eq!(paths(&records(&moved)), ["one"]);

    // Deleted together with its folder: nothing can be opened at the
    // path, so records wait in memory (not in the deleted file) until the
    // folder is back.
    std::fs::remove_dir_all(serve.log.parent().unwrap()).unwrap();
    for target in ["/four", "/five", "/six"] {
        assert_eq!(serve.get(target).await, 404);
    }
    std::fs::create_dir(serve.log.parent().unwrap()).unwrap();
    assert_eq!(
        paths(&wait_records(&serve.log, 3).await),
        ["four", "five", "six"]
    );
    assert_eq!(serve.stop().await, Some(0));
}

/// 100 clients at once: 100 whole lines, one per request, none merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_clients_leave_a_hundred_whole_lines() {
    let serve = std::sync::Arc::new(Serve::start().await);
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let serve = std::sync::Arc::clone(&serve);
            // Long paths make the lines long, so interleaving would show.
            tokio::spawn(async move { serve.get(&format!("/c{i:03}-{}", "x".repeat(900))).await })
        })
        .collect();
    for client in clients {
        assert_eq!(bounded("client", client).await.unwrap(), 404);
    }
    let all = wait_records(&serve.log, 100).await;
    let got: BTreeSet<String> = paths(&all).iter().map(|p| p[..4].to_string()).collect();
    let want: BTreeSet<String> = (0..100).map(|i| format!("c{i:03}")).collect();
    assert_eq!(all.len(), 100);
    assert_eq!(got, want);
}

/// A 60 KB request path once made a 60,237-byte log line.
#[tokio::test]
async fn a_60_kb_request_path_makes_a_capped_log_line() {
    let serve = Serve::start().await;
    let long = format!("/{}", "p".repeat(60_000));
    assert_eq!(serve.get(&long).await, 404);
    let rec = &wait_records(&serve.log, 1).await[0];
    let path = rec["path"].as_str().unwrap();
    assert!(path.len() <= PATH_MAX_BYTES, "{} bytes", path.len());
    assert!(path.ends_with(CUT_MARK), "{path}");
    let line_len = std::fs::read_to_string(&serve.log).unwrap().len();
    assert!(line_len < 2 * PATH_MAX_BYTES, "{line_len}-byte line");
}

/// A file system that is full until [`FullDisk::free`]: a 16 MiB tmpfs
/// filled with a filler file when this process may mount one (root, as
/// here), else the log path is a symlink to `/dev/full` (every write
/// fails with ENOSPC) that `free` replaces with a regular file.
enum FullDisk {
    Tmpfs {
        dir: tempfile::TempDir,
        filler: PathBuf,
    },
    DevFull {
        dir: tempfile::TempDir,
    },
}

impl FullDisk {
    const LOG: &str = "downloads.jsonl";

    fn new() -> FullDisk {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            eprintln!("full disk: a 16 MiB tmpfs");
            let filler = dir.path().join("filler");
            return FullDisk::Tmpfs { dir, filler };
        }
        eprintln!("full disk: cannot mount a tmpfs here, using /dev/full");
        std::os::unix::fs::symlink("/dev/full", dir.path().join(Self::LOG)).unwrap();
        FullDisk::DevFull { dir }
    }

    fn log(&self) -> PathBuf {
        match self {
            FullDisk::Tmpfs { dir, .. } | FullDisk::DevFull { dir } => dir.path().join(Self::LOG),
        }
    }

    /// Fills the tmpfs to the last byte (the log file is already open).
    fn fill(&self) {
        if let FullDisk::Tmpfs { filler, .. } = self {
            use std::io::Write;
            let mut f = std::fs::File::create(filler).unwrap();
            let chunk = vec![0u8; 4096];
            // 16 MiB / 4 KiB chunks, then single bytes: bounded.
            for _ in 0..(16 << 20) / 4096 + 8 {
                if f.write_all(&chunk).is_err() {
                    break;
                }
            }
            for _ in 0..4096 {
                if f.write_all(&[0]).is_err() {
                    break;
                }
            }
        }
    }

    fn free(&self) {
        match self {
            FullDisk::Tmpfs { filler, .. } => std::fs::remove_file(filler).unwrap(),
            FullDisk::DevFull { dir } => {
                let fresh = dir.path().join("fresh");
                std::fs::write(&fresh, b"").unwrap();
                std::fs::rename(&fresh, self.log()).unwrap();
            }
        }
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        if let FullDisk::Tmpfs { dir, .. } = self {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(dir.path())
                .status();
        }
    }
}

/// On a full disk 44 of 152 records were lost and a partial line merged
/// with the next. Now records wait in the queue, the ones past it are
/// counted in the next record written, and every line is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_wait_out_a_full_disk_and_drops_are_counted() {
    let disk = FullDisk::new();
    let log = DownloadLog::to_file(&disk.log()).unwrap();
    let peer = "127.0.0.1:9".parse().unwrap();
    // On the tmpfs, one record before the disk fills leaves the file's
    // last page part used, so a later write can end short (and must be
    // taken back). On /dev/full it is the first record queued.
    let first = Attempt::start(Protocol::Http, peer, "r00000");
    log.emit(first.record(404, Outcome::NotFound, "no such package"));
    assert!(bounded("flush", log.flush()).await.is_some());
    disk.fill();
    // ~1.5 KB lines: more than the queue holds.
    let total = QUEUE_BYTES / 1000;
    for i in 1..total {
        let attempt = Attempt::start(
            Protocol::Http,
            peer,
            format!("r{i:05}-{}", "x".repeat(1400)),
        );
        log.emit(attempt.record(404, Outcome::NotFound, "no such package"));
    }
    let queued = bounded("flush", log.flush()).await.expect("writer answers");
    assert!(queued > 0, "records are queued while the disk is full");

    disk.free();
    eventually("queued records to land", DEADLINE, || async {
        (log.flush().await == Some(0)).then_some(())
    })
    .await;
    let last = Attempt::start(Protocol::Http, peer, format!("r{total:05}"));
    log.emit(last.record(404, Outcome::NotFound, "no such package"));
    assert_eq!(bounded("flush", log.flush()).await, Some(0));

    let lines = records(&disk.log());
    let dropped: u64 = lines
        .iter()
        .filter_map(|r| r.get("dropped_before").and_then(|d| d.as_u64()))
        .sum();
    eprintln!(
        "{} records written, {dropped} dropped and counted",
        lines.len()
    );
    assert!(
        dropped > 0,
        "the queue is bounded: some records were dropped"
    );
    assert_eq!(
        lines.len() as u64 + dropped,
        total as u64 + 1,
        "every record (r00000..=r{total}) is written or counted"
    );
    let order: Vec<u32> = paths(&lines)
        .iter()
        .map(|p| p[1..6].parse().unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {order:?}");
    assert_eq!(*order.last().unwrap() as usize, total);
}

/// A write that does not return (a pipe nobody reads here; a hung network
/// mount behaves alike) makes the log count as not writable — `/readyz`
/// 503 and `qfota_log_writable` 0 read this — instead of a writable log
/// that takes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_does_not_return_makes_the_log_unwritable() {
    let work = tempfile::tempdir().unwrap();
    let fifo = work.path().join("downloads.jsonl");
    let made = run("mkfifo", &[fifo.to_str().unwrap()]).await;
    assert!(made.status.success(), "{made:?}");
    // Opens the pipe for reading and never reads.
    let reader = tokio::process::Command::new("sh")
        .args(["-c", "exec sleep 60 < \"$0\""])
        .arg(&fifo)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let path = fifo.clone();
    let open = tokio::task::spawn_blocking(move || DownloadLog::to_file(&path));
    let log = bounded("open the pipe", open).await.unwrap().unwrap();
    assert_eq!(log.health().error, None);
    let peer = "127.0.0.1:9".parse().unwrap();
    // Far more than the pipe holds (64 KiB).
    for i in 0..300 {
        let attempt = Attempt::start(
            Protocol::Http,
            peer,
            format!("r{i:05}-{}", "x".repeat(1000)),
        );
        log.emit(attempt.record(404, Outcome::NotFound, "no such package"));
    }
    let error = eventually("the stalled write to show", DEADLINE, || async {
        log.health().error
    })
    .await;
    assert!(error.contains("the file has not answered for"), "{error}");
    assert!(error.contains("downloads.jsonl"), "{error}");
    // The reader gone, the write fails (EPIPE) and the log can close.
    drop(reader);
    drop(log);
}

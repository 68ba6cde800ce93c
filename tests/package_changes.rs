//! A package changed under the server while modules download it: every
//! download carries one version — the resident copy it started on, or,
//! read from the file, the old one or a short end — never a full-length
//! body mixing two; a FIFO swapped in under a package name is refused
//! without blocking; a package being validated holds back no other.
//! Real sockets, real files.

mod common;

use std::time::Duration;

use common::{BIG, Fixture, bounded, python, run};
use qfota_serve::dlog::{Outcome, Protocol};

/// Downloads argv[2] from argv[1] (`host:port`) over a socket with a
/// 16 KiB receive buffer at about argv[3] bytes a second; prints the body
/// length and its SHA-256.
const SLOW_GET: &str = r#"
import hashlib, socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
rate = int(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
s.connect((host, int(port)))
s.sendall(f"GET /{sys.argv[2]} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
data = b""
while b"\r\n\r\n" not in data:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
body = data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""
# The headers are in: the download is under way (argv[4] marks it).
open(sys.argv[4], "w").close()
h = hashlib.sha256(body)
n = len(body)
deadline = time.time() + 60
while time.time() < deadline:
    chunk = s.recv(65536)
    if not chunk:
        break
    h.update(chunk)
    n += len(chunk)
    time.sleep(len(chunk) / rate)
print(n, h.hexdigest())
"#;

/// Starts 4 slow readers of `BIG` (`SLOW_GET` at 4 MB/s) and runs
/// `change` once each has its response's headers, so every download is
/// under way when the package changes; the readers' outputs.
async fn four_readers_then(fx: &Fixture, change: impl FnOnce()) -> Vec<std::process::Output> {
    let marks = tempfile::tempdir().unwrap();
    let addr = fx.server.http_addr().unwrap().to_string();
    let mark = |i: usize| marks.path().join(i.to_string());
    let args: Vec<[String; 4]> = (0..4)
        .map(|i| {
            let m = mark(i).to_str().unwrap().to_string();
            [addr.clone(), BIG.to_string(), "4000000".to_string(), m]
        })
        .collect();
    let args: Vec<[&str; 4]> = args
        .iter()
        .map(|a| a.each_ref().map(String::as_str))
        .collect();
    let readers = args.iter().map(|a| python(SLOW_GET, a));
    let rewrite = async {
        common::bounded("the 4 downloads under way", async {
            while !(0..4).all(|i| mark(i).exists()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        change();
    };
    let (outs, ()) = tokio::join!(futures_util::future::join_all(readers), rewrite);
    outs
}

/// The HTTP status a new client gets for `key` once the catalog has seen
/// every change (a rescan that waits for validations).
async fn status_after_rescan(fx: &Fixture, key: &str) -> String {
    let catalog = std::sync::Arc::clone(fx.server.catalog());
    common::bounded("rescan", catalog.rescan_now())
        .await
        .unwrap();
    let url = fx.http_url(key);
    let out = run(
        "curl",
        &["-sS", "-o", "/dev/null", "-w", "%{http_code}", &url],
    )
    .await;
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The records of the 4 downloads of `BIG` the tests start: each names the
/// version every download started on (`old_sha`), and a complete one had
/// all `size` bytes acknowledged.
async fn records_of_the_old_version(
    fx: &Fixture,
    old_sha: &str,
    size: u64,
) -> Vec<qfota_serve::dlog::DownloadRecord> {
    let records = fx
        .wait_records("one record per download", 4, |r| r.path == BIG)
        .await;
    for r in &records {
        assert_eq!(r.sha256.as_deref(), Some(old_sha), "{r:?}");
        if r.outcome == Outcome::Complete {
            assert_eq!(r.bytes_acked, size, "{r:?}");
        }
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_rewritten_in_place_mid_download_is_never_spliced() {
    // Read from the file for each download (no resident copy): the
    // change is noticed mid-download.
    let fx = Fixture::start(|b| b.package_memory(0)).await;
    let path = fx.dir.path().join(BIG);
    let old = std::fs::read(&path).unwrap();
    let size = old.len();
    let old_sha = common::sha256(&old);
    // Once the downloads are under way, rewrite the file in place: same
    // length, same inode, other bytes.
    let outs = four_readers_then(&fx, || {
        let mut new = old.clone();
        new.iter_mut().for_each(|b| *b = b.wrapping_add(1));
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all(&new).unwrap();
    })
    .await;
    for out in &outs {
        let text = String::from_utf8_lossy(&out.stdout);
        let mut fields = text.split_whitespace();
        let n: usize = fields.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let sha = fields.next().unwrap_or("");
        assert!(
            n < size || sha == old_sha,
            "a full-length body that is not the old version: {text} ({out:?})"
        );
    }
    let records = records_of_the_old_version(&fx, &old_sha, size as u64).await;
    assert!(
        records.iter().any(|r| r.reason.contains("package changed")),
        "no download noticed the change: {records:#?}"
    );
    // A download so cut short is recorded with the bytes its client got:
    // sent (not what hyper still held when the read failed) and
    // acknowledged (not the connection's FIN).
    let got = outs.iter().map(|out| {
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    });
    assert_cut_short_records_match(&records, got, size as u64);
}

/// The aborted records among `records` name, as sent and as acknowledged,
/// exactly the byte counts of the bodies in `got` that are shorter than
/// `size`.
fn assert_cut_short_records_match(
    records: &[qfota_serve::dlog::DownloadRecord],
    got: impl Iterator<Item = u64>,
    size: u64,
) {
    let mut want: Vec<(u64, u64)> = got.filter(|&n| n < size).map(|n| (n, n)).collect();
    let mut logged: Vec<(u64, u64)> = records
        .iter()
        .filter(|r| r.path == BIG && r.protocol == Protocol::Http && r.outcome == Outcome::Aborted)
        .map(|r| (r.bytes_sent, r.bytes_acked))
        .collect();
    want.sort_unstable();
    logged.sort_unstable();
    assert_eq!(logged, want, "{records:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_from_the_resident_copy_finish_with_the_version_they_started_on() {
    let fx = Fixture::start(|b| b).await;
    let path = fx.dir.path().join(BIG);
    let old = std::fs::read(&path).unwrap();
    let old_sha = common::sha256(&old);
    let mut new = old.clone();
    new.iter_mut().for_each(|b| *b = b.wrapping_add(1));
    let new_sha = common::sha256(&new);
    let outs = four_readers_then(&fx, || {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all(&new).unwrap();
    })
    .await;
    let want = format!("{} {old_sha}", old.len());
    for out in &outs {
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want, "{out:?}");
    }
    let records = fx
        .wait_records("one record per download", 4, |r| r.path == BIG)
        .await;
    for r in &records {
        assert_eq!(r.outcome, Outcome::Complete, "{r:?}");
        assert_eq!(r.sha256.as_deref(), Some(old_sha.as_str()), "{r:?}");
    }
    // Once the change is seen, the old copy is gone: the new bytes (a
    // broken zip) are what the catalog judges, and refuses.
    assert_eq!(status_after_rescan(&fx, BIG).await, "404");
    let refused = fx
        .wait_record("the refusal of the new version", |r| {
            r.path == BIG && r.outcome == Outcome::InvalidPackage
        })
        .await;
    assert_eq!(refused.sha256.as_deref(), Some(new_sha.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_swapped_in_under_a_package_name_is_refused_without_blocking() {
    let fx = Fixture::start(|b| b.package_memory(0)).await;
    let name = "update-v12-to-v13.zip";
    let fifo = fx.dir.path().join(".swap.fifo");
    let made = run("mkfifo", &[fifo.to_str().unwrap()]).await;
    assert!(made.status.success(), "{made:?}");
    std::fs::rename(&fifo, fx.dir.path().join(name)).unwrap();
    // Before or after the next scan: a refusal (503 changed, or 404 once
    // the scan excluded it), never a hang.
    let out = run(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            &fx.http_url(name),
        ],
    )
    .await;
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(code == "503" || code == "404", "curl: {code} {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_under_validation_answers_503_and_450_and_never_holds_back_others() {
    let fx = Fixture::start(|b| b).await;
    // 64 GiB of holes: far longer than this test to hash, no disk used
    // (removing the file stops the validation).
    let huge = fx.dir.path().join("huge-firmware.bin");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    // Wait until the catalog's next scan has seen it.
    let url = fx.http_url("huge-firmware.bin");
    let mut head = String::new();
    for _ in 0..100 {
        let out = run("curl", &["-sS", "-o", "/dev/null", "-D", "-", &url]).await;
        head = String::from_utf8_lossy(&out.stdout).into_owned();
        if !head.starts_with("HTTP/1.1 404") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 2"),
        "{head}"
    );
    // A package copied in now is served while the huge one is checked.
    let small = fx.package_bytes("update-v12-to-v13.zip");
    std::fs::write(fx.dir.path().join("new-v13-to-v14.zip"), &small).unwrap();
    let small_url = fx.http_url("new-v13-to-v14.zip");
    let mut code = String::new();
    for _ in 0..100 {
        let out = run(
            "curl",
            &["-sS", "-o", "/dev/null", "-w", "%{http_code}", &small_url],
        )
        .await;
        code = String::from_utf8_lossy(&out.stdout).into_owned();
        if code == "200" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(code, "200");
    // Still validating: FTP answers SIZE and RETR with 450.
    let port = fx.ftp_port().to_string();
    let ftp = python(
        r#"
import ftplib, sys
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", int(sys.argv[1]), timeout=10)
ftp.login("test", "test")
try:
    ftp.sendcmd("SIZE huge-firmware.bin")
    print("served")
except ftplib.error_temp as e:
    print(str(e)[:3])
"#,
        &[&port],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&ftp.stdout).trim(),
        "450",
        "{ftp:?}"
    );
    let refused = fx
        .wait_record("a 503 for the package being validated", |r| {
            r.status == 503 && r.path == "huge-firmware.bin"
        })
        .await;
    assert_eq!(refused.outcome, Outcome::Refused);
    assert!(refused.reason.contains("being validated"), "{refused:?}");
    // Removed, its validation stops: a rescan settles at once.
    std::fs::remove_file(&huge).unwrap();
    let catalog = std::sync::Arc::clone(fx.server.catalog());
    common::bounded("rescan after removal", catalog.rescan_now())
        .await
        .unwrap();
    let out = run(
        "curl",
        &["-sS", "-o", "/dev/null", "-w", "%{http_code}", &url],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_each_get_exactly_one_version_while_the_package_is_replaced() {
    let fx = Fixture::start(|b| b).await;
    let path = fx.dir.path().join(BIG);
    let old_sha = common::sha256(&std::fs::read(&path).unwrap());
    let new = common::zip_with(&[("system.diff", &common::noise(common::BIG_ENTRY, 8))]);
    let new_sha = common::sha256(&new);
    let out_dir = tempfile::tempdir().unwrap();
    // 25 HTTP and 25 FTP downloads (curl, 8 MB/s each): the first 25
    // start 20 ms apart, the package is replaced (a new valid version
    // renamed over it, as a deployment does) once the first has bytes, and
    // the other 25 start 20 ms apart once the catalog has the new version.
    // An HTTP download that meets the new version under validation is told
    // to retry (503) and does; an FTP RETR waits for the validation.
    let replaced = tokio::sync::Notify::new();
    let first_file = out_dir.path().join("0.zip");
    let clients = (0..50u64).map(|i| {
        let url = if i % 2 == 0 {
            fx.http_url(BIG)
        } else {
            fx.ftp_url(BIG)
        };
        let file = out_dir.path().join(format!("{i}.zip"));
        let replaced = &replaced;
        async move {
            if i >= 25 {
                replaced.notified().await;
            }
            tokio::time::sleep(Duration::from_millis(20 * (i % 25))).await;
            let file_arg = file.to_str().unwrap().to_string();
            let args = [
                "-sSf",
                "--limit-rate",
                "8M",
                "--retry",
                "10",
                "--retry-delay",
                "1",
                "-o",
                &file_arg,
                &url,
            ];
            let out = run("curl", &args).await;
            assert!(out.status.success(), "client {i}: {out:?}");
            common::sha256(&std::fs::read(&file).unwrap())
        }
    });
    let replace = async {
        common::eventually(
            "the first download under way",
            Duration::from_secs(20),
            || {
                let started = std::fs::metadata(&first_file).is_ok_and(|m| m.len() > 0);
                async move { started.then_some(()) }
            },
        )
        .await;
        let staged = fx.dir.path().join(".big.partial");
        std::fs::write(&staged, &new).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        let catalog = std::sync::Arc::clone(fx.server.catalog());
        common::bounded("rescan", catalog.rescan_now())
            .await
            .unwrap();
        replaced.notify_waiters();
    };
    let (hashes, ()) = tokio::join!(futures_util::future::join_all(clients), replace);
    for (i, sha) in hashes.iter().enumerate() {
        assert!(
            *sha == old_sha || *sha == new_sha,
            "client {i} got bytes of neither version: {sha}"
        );
    }
    // The replacement really happened during the run: the first client
    // got the old version and the last one the new one.
    assert_eq!(hashes[0], old_sha);
    assert_eq!(hashes[49], new_sha);
    // Every complete record names the version its client received.
    let records = fx
        .wait_records("a complete record per client", 50, |r| {
            r.path == BIG && r.outcome == Outcome::Complete
        })
        .await;
    let old_records = records
        .iter()
        .filter(|r| r.sha256.as_deref() == Some(old_sha.as_str()))
        .count();
    let old_clients = hashes.iter().filter(|s| **s == old_sha).count();
    assert_eq!(old_records, old_clients, "{records:#?}");
}

/// Downloads `BIG` over HTTP and FTP with curl at 4 MB/s (2 s each) and
/// applies `change` to the file 300 ms in (removed, truncated); every
/// client ends with the version it started on or short, never with other
/// bytes, and the next client gets no package (gone, or a broken zip).
/// Four downloads of `BIG` (two HTTP, two FTP) during which `change` hits
/// its file; the bodies the clients got, in that order.
async fn changed_mid_download(fx: &Fixture, change: fn(&std::path::Path)) -> Vec<Vec<u8>> {
    let path = fx.dir.path().join(BIG);
    let old = std::fs::read(&path).unwrap();
    let old_sha = common::sha256(&old);
    let out_dir = tempfile::tempdir().unwrap();
    let urls = [
        fx.http_url(BIG),
        fx.http_url(BIG),
        fx.ftp_url(BIG),
        fx.ftp_url(BIG),
    ];
    let clients = urls.iter().enumerate().map(|(i, url)| {
        let file = out_dir.path().join(format!("{i}.zip"));
        async move {
            let file_arg = file.to_str().unwrap().to_string();
            run("curl", &["-s", "--limit-rate", "4M", "-o", &file_arg, url]).await;
            std::fs::read(&file).unwrap_or_default()
        }
    });
    let remove = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        change(&path);
    };
    let (bodies, ()) = tokio::join!(futures_util::future::join_all(clients), remove);
    for (i, body) in bodies.iter().enumerate() {
        assert!(
            body.len() < old.len() || common::sha256(body) == old_sha,
            "client {i}: a full-length body that is not the old version"
        );
        assert!(
            old.starts_with(body),
            "client {i}: {} bytes that are not a prefix of the old version",
            body.len()
        );
    }
    records_of_the_old_version(fx, &old_sha, old.len() as u64).await;
    // The server goes on, and there is no package for the next client.
    assert_eq!(status_after_rescan(fx, BIG).await, "404");
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_removed_mid_download_from_its_resident_copy_finishes_intact() {
    let fx = Fixture::start(|b| b).await;
    changed_mid_download(&fx, remove).await;
    // From the resident copy every download finishes with its version.
    let records = fx.server.downloads();
    assert!(
        records
            .iter()
            .filter(|r| r.path == BIG && r.outcome != Outcome::NotFound)
            .all(|r| r.outcome == Outcome::Complete),
        "{records:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_removed_mid_download_from_its_file_ends_short_or_intact() {
    // No resident copy: each download reads the file it opened.
    let fx = Fixture::start(|b| b.package_memory(0)).await;
    let size = fx.package_bytes(BIG).len();
    let bodies = changed_mid_download(&fx, remove).await;
    // The removal is noticed while the file is read (its inode's change
    // time moves with the unlink).
    let records = fx.server.downloads();
    assert!(
        records
            .iter()
            .any(|r| r.path == BIG && r.reason.contains("package changed")),
        "{records:#?}"
    );
    // An HTTP download so cut short is recorded with the bytes its
    // client got.
    let got = bodies[..2].iter().map(|b| b.len() as u64);
    assert_cut_short_records_match(&records, got, size as u64);
}

fn remove(path: &std::path::Path) {
    std::fs::remove_file(path).unwrap();
}

/// Cuts the file to half its length in place (same inode).
fn truncate(path: &std::path::Path) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len / 2).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_truncated_mid_download_never_crashes_or_splices() {
    // Both ways of serving: the resident copy and the file itself.
    for memory in [None, Some(0)] {
        let fx = Fixture::start(|b| match memory {
            Some(m) => b.package_memory(m),
            None => b,
        })
        .await;
        changed_mid_download(&fx, truncate).await;
    }
}

/// An FTP client that sends `RETR` of argv[2] to 127.0.0.1:argv[1], prints
/// `150` once the server has said it is sending, then reads the data
/// connection to its end and prints the byte count, the SHA-256 and the
/// final reply's code.
const RETR_AFTER_150: &str = r#"
import ftplib, hashlib, sys
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", int(sys.argv[1]), timeout=30)
ftp.login("test", "test")
ftp.sendcmd("TYPE I")
conn = ftp.transfercmd("RETR " + sys.argv[2])
print("150", flush=True)
data = b""
while True:
    chunk = conn.recv(65536)
    if not chunk:
        break
    data += chunk
conn.close()
try:
    reply = ftp.voidresp()
except ftplib.all_errors as e:
    reply = str(e)
print(len(data), hashlib.sha256(data).hexdigest(), reply[:3], flush=True)
"#;

/// libunftp answers `150` before the storage is asked for the package, so
/// a `RETR` that meets a package under validation can no longer be told to
/// retry: it waits for the validation and gets the version that passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retr_that_meets_a_validation_waits_for_it_and_gets_the_new_version() {
    use tokio::io::AsyncBufReadExt;
    let fx = Fixture::start(|b| b).await;
    let name = "late-v1-to-v2.zip";
    let path = fx.dir.path().join(name);
    // 64 GiB of holes: validated for far longer than this test.
    std::fs::File::create(&path)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let url = fx.http_url(name);
    common::eventually(
        "the package under validation",
        Duration::from_secs(20),
        || {
            let url = url.clone();
            async move {
                let out = run(
                    "curl",
                    &["-sS", "-o", "/dev/null", "-w", "%{http_code}", &url],
                )
                .await;
                (out.stdout == b"503").then_some(())
            }
        },
    )
    .await;
    let port = fx.ftp_port().to_string();
    let mut client = tokio::process::Command::new("python3")
        .args(["-c", RETR_AFTER_150, &port, name])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(client.stdout.take().unwrap()).lines();
    let first = bounded("150 to the RETR", lines.next_line()).await.unwrap();
    assert_eq!(first.as_deref(), Some("150"));
    // Now the real package replaces the file being validated.
    let new = fx.package_bytes("update-v12-to-v13.zip");
    let staged = fx.dir.path().join(".staged.zip");
    std::fs::write(&staged, &new).unwrap();
    std::fs::rename(&staged, &path).unwrap();
    let last = bounded("the transfer's end", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let fields: Vec<&str> = last.split(' ').collect();
    assert_eq!(
        fields,
        [new.len().to_string().as_str(), &common::sha256(&new), "226"],
        "{last}"
    );
    let rec = fx
        .wait_record("the RETR", |r| {
            r.path == name && r.protocol == Protocol::Ftp
        })
        .await;
    assert_eq!(rec.outcome, Outcome::Complete, "{rec:?}");
}

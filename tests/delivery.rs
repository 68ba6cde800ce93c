//! Delivery accounting end to end: a record says what the module's TCP
//! stack acknowledged, not what the server's kernel accepted. Real sockets
//! on loopback, real clients (Python sockets with a small receive buffer,
//! curl, ftplib), a real server.

mod common;

use std::time::Duration;

use common::{Fixture, TEST_CERT, bounded, noise, python, zip_with};
use qfota_serve::dlog::{Outcome, Protocol};

/// The 1 MiB package every test here downloads (incompressible, stored).
const MIB_PKG: &str = "mib-v1-to-v2.zip";

/// Starts a fixture that also serves [`MIB_PKG`], with `stall` as the
/// stall timeout; returns it with the package's size.
async fn start(stall: Duration) -> (Fixture, u64) {
    let dir = common::package_dir();
    let bytes = zip_with(&[("delta.bin", &noise(1024 * 1024, 7))]);
    let size = bytes.len() as u64;
    common::copy_in(dir.path(), MIB_PKG, &bytes);
    let fx = Fixture::start_in(dir, |b| b.stall_timeout(stall)).await;
    (fx, size)
}

/// A Python client: a socket with `SO_RCVBUF` 16 KiB set before connect,
/// which fetches argv[2] over HTTP(S) from argv[1] (`host:port`), reads
/// argv[3] bytes of the response (all of it when 0) and closes. argv[4]
/// `tls` wraps the socket in TLS trusting argv[5].
const SMALL_WINDOW_HTTP: &str = r#"
import socket, ssl, sys
host, port = sys.argv[1].rsplit(":", 1)
path, limit, mode = sys.argv[2], int(sys.argv[3]), sys.argv[4]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
s.connect((host, int(port)))
if mode == "tls":
    ctx = ssl.create_default_context(cafile=sys.argv[5])
    s = ctx.wrap_socket(s, server_hostname="localhost")
s.sendall(f"GET /{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
got = 0
while limit == 0 or got < limit:
    chunk = s.recv(4096)
    if not chunk:
        break
    got += len(chunk)
s.close()
print(got)
"#;

/// The same over FTP: log in, `PASV`, a data socket with the small
/// receive buffer made by the script, `RETR`, read argv[4] bytes (all when
/// 0), close.
const SMALL_WINDOW_FTP: &str = r#"
import ftplib, socket, sys
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", int(sys.argv[1]), timeout=20)
ftp.login("test", "test")
ftp.voidcmd("TYPE I")
host, port = ftplib.parse227(ftp.sendcmd("PASV"))
d = socket.socket()
d.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
d.connect((host, port))
ftp.sendcmd("RETR " + sys.argv[2])
limit, got = int(sys.argv[3]), 0
while limit == 0 or got < limit:
    chunk = d.recv(4096)
    if not chunk:
        break
    got += len(chunk)
d.close()
try:
    ftp.voidresp()
except ftplib.all_errors:
    pass
print(got)
"#;

/// The server's HTTPS (`tls`) or HTTP address as `host:port`, and the
/// scripts' mode word for it.
fn http_endpoint(fx: &Fixture, tls: bool) -> (String, &'static str) {
    if tls {
        (fx.server.https_addr().unwrap().to_string(), "tls")
    } else {
        (fx.server.http_addr().unwrap().to_string(), "plain")
    }
}

async fn small_window_http(fx: &Fixture, tls: bool, limit: usize) {
    let (addr, mode) = http_endpoint(fx, tls);
    let limit = limit.to_string();
    let out = python(
        SMALL_WINDOW_HTTP,
        &[&addr, MIB_PKG, &limit, mode, TEST_CERT],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn small_window_ftp(fx: &Fixture, limit: usize) {
    let port = fx.ftp_port().to_string();
    let limit = limit.to_string();
    let out = python(SMALL_WINDOW_FTP, &[&port, MIB_PKG, &limit]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_64_kib_and_closes_is_aborted_with_what_it_acknowledged() {
    let (fx, size) = start(Duration::from_secs(30)).await;
    small_window_http(&fx, false, 64 * 1024).await;
    small_window_http(&fx, true, 64 * 1024).await;
    small_window_ftp(&fx, 64 * 1024).await;
    for protocol in [Protocol::Http, Protocol::Https, Protocol::Ftp] {
        let rec = fx
            .wait_record(&format!("aborted {protocol:?}"), |r| {
                r.path == MIB_PKG && r.protocol == protocol && r.outcome == Outcome::Aborted
            })
            .await;
        // At least what the client read; far less than the package (the
        // kernel accepted more into socket buffers than the peer got).
        assert!(
            rec.bytes_acked >= 60 * 1024 && rec.bytes_acked < size / 2,
            "{protocol:?}: bytes_acked {} of {size}: {rec:?}",
            rec.bytes_acked
        );
        assert!(rec.bytes_acked <= rec.bytes_sent, "{rec:?}");
        assert!(rec.reason.starts_with("peer acknowledged "), "{rec:?}");
    }
    fx.assert_every_record("no complete record for a cut download", |r| {
        r.path != MIB_PKG || r.outcome != Outcome::Complete
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_to_the_end_is_complete_with_every_byte_acknowledged() {
    let (fx, size) = start(Duration::from_secs(30)).await;
    small_window_http(&fx, false, 0).await;
    small_window_http(&fx, true, 0).await;
    small_window_ftp(&fx, 0).await;
    for protocol in [Protocol::Http, Protocol::Https, Protocol::Ftp] {
        let rec = fx
            .wait_record(&format!("complete {protocol:?}"), |r| {
                r.path == MIB_PKG && r.protocol == protocol && r.outcome != Outcome::Refused
            })
            .await;
        assert_eq!(rec.outcome, Outcome::Complete, "{rec:?}");
        assert_eq!((rec.bytes_sent, rec.bytes_acked), (size, size), "{rec:?}");
    }
}

/// Starts `program args` and kills it after `after`.
async fn kill_after(program: &str, args: &[&str], after: Duration) {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(after).await;
    child.start_kill().unwrap();
    bounded("killed client exits", child.wait()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_killed_part_way_is_aborted_over_http_and_ftp() {
    let (fx, _) = start(Duration::from_secs(30)).await;
    let size = common::big_zip().len() as u64;
    let addr = fx.server.http_addr().unwrap().to_string();
    let port = fx.ftp_port().to_string();
    // 300 kB/s readers, killed after 2 s (they would take ~28 s).
    let http = ["-c", PACED_READER, &addr, common::BIG, "300000", "60"];
    let ftp = ["-c", PACED_FTP_READER, &port, common::BIG, "300000", "60"];
    tokio::join!(
        kill_after("python3", &http, Duration::from_secs(2)),
        kill_after("python3", &ftp, Duration::from_secs(2)),
    );
    for protocol in [Protocol::Http, Protocol::Ftp] {
        let rec = fx
            .wait_record(&format!("aborted slow {protocol:?}"), |r| {
                r.path == common::BIG && r.protocol == protocol && r.outcome != Outcome::Refused
            })
            .await;
        assert_eq!(rec.outcome, Outcome::Aborted, "{rec:?}");
        // About 600 kB in 2 s (plus what the client's kernel buffered):
        // nowhere near the 8 MiB package.
        assert!(
            rec.bytes_acked > 0 && rec.bytes_acked < size / 2,
            "{protocol:?}: {rec:?}"
        );
    }
}

/// [`PACED_READER`] over FTP: argv[1] is the FTP port; the data socket has
/// the small receive buffer and module-sized segments.
const PACED_FTP_READER: &str = r#"
import ftplib, socket, sys, time
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", int(sys.argv[1]), timeout=20)
ftp.login("test", "test")
ftp.voidcmd("TYPE I")
host, port = ftplib.parse227(ftp.sendcmd("PASV"))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
s.connect((host, port))
ftp.sendcmd("RETR " + sys.argv[2])
rate, seconds = int(sys.argv[3]), float(sys.argv[4])
start, got = time.time(), 0
while time.time() - start < seconds:
    chunk = s.recv(min(4096, rate))
    if not chunk:
        break
    got += len(chunk)
    time.sleep(len(chunk) / rate)
print(got)
"#;

/// Reads from argv[1] (`host:port`) path argv[2] at argv[3] bytes a second
/// for argv[4] seconds, printing the bytes received, then closes; with
/// argv[3] = 0 it reads nothing for that long. Its socket has a 16 KiB
/// receive buffer, like a module's; Linux then opens the window in bursts
/// of about 30 KB, so at 8 kB/s acknowledgements come every ~4 s.
const PACED_READER: &str = r#"
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
rate, seconds = int(sys.argv[3]), float(sys.argv[4])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
s.connect((host, int(port)))
s.sendall(f"GET /{sys.argv[2]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
start, got, closed = time.time(), 0, False
while time.time() - start < seconds:
    if rate == 0:
        time.sleep(0.1)
        continue
    chunk = s.recv(min(1400, rate))
    if not chunk:
        closed = True
        break
    got += len(chunk)
    time.sleep(len(chunk) / rate)
print(got, "closed" if closed else "open")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_not_a_stalled_one() {
    // Stall timeout 6 s; one reader at 8 kB/s for 9 s (its TCP stack
    // acknowledges every ~4 s), one that reads nothing.
    let (fx, size) = start(Duration::from_secs(6)).await;
    let addr = fx.server.http_addr().unwrap().to_string();
    let slow_args = [addr.as_str(), MIB_PKG, "8000", "9"];
    let silent_args = [addr.as_str(), MIB_PKG, "0", "9"];
    let (slow, _silent) = tokio::join!(
        python(PACED_READER, &slow_args),
        python(PACED_READER, &silent_args)
    );
    let slow = String::from_utf8_lossy(&slow.stdout).to_string();
    assert!(
        slow.trim_end().ends_with("open"),
        "slow reader was cut off: {slow}"
    );
    let stalled = fx
        .wait_record("the silent reader's record", |r| {
            r.path == MIB_PKG && r.outcome == Outcome::Aborted && r.reason.contains("stopped")
        })
        .await;
    assert!(stalled.bytes_acked < size, "{stalled:?}");
    assert!(
        stalled.reason.contains("stopped acknowledging for 6 s"),
        "{stalled:?}"
    );
    // The slow reader's attempt ended when it closed after 4 s, cut short
    // by the client, not by the stall rule.
    let slow_rec = fx
        .wait_record("the slow reader's record", |r| {
            r.path == MIB_PKG && r.outcome == Outcome::Aborted && !r.reason.contains("stopped")
        })
        .await;
    assert!(slow_rec.bytes_acked >= 16_000, "{slow_rec:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftp_size_of_a_missing_package_leaves_a_not_found_record() {
    let (fx, _) = start(Duration::from_secs(30)).await;
    let script = r#"
import ftplib, sys
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", int(sys.argv[1]), timeout=20)
ftp.login("test", "test")
try:
    ftp.size("nope-v1-to-v2.zip")
except ftplib.error_perm as e:
    print(str(e)[:3])
try:
    ftp.cwd("no-such-folder")
except ftplib.error_perm as e:
    print(str(e)[:3])
ftp.quit()
"#;
    let out = python(script, &[&fx.ftp_port().to_string()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["550", "550"],
        "{out:?}"
    );
    let rec = fx
        .wait_record("SIZE of a missing package", |r| {
            r.path == "nope-v1-to-v2.zip"
        })
        .await;
    assert_eq!(
        (rec.protocol, rec.outcome, rec.status),
        (Protocol::Ftp, Outcome::NotFound, 550)
    );
    assert_eq!(rec.user.as_deref(), Some("test"));
    assert_eq!(rec.peer.ip().to_string(), "127.0.0.1");
    let cwd = fx
        .wait_record("CWD into a missing folder", |r| {
            r.path.contains("no-such-folder")
        })
        .await;
    assert_eq!(cwd.outcome, Outcome::NotFound);
    let size_records = fx
        .server
        .downloads()
        .into_iter()
        .filter(|r| r.path == "nope-v1-to-v2.zip")
        .count();
    assert_eq!(size_records, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_listener_logs_an_ipv4_client_unmapped() {
    let fx = Fixture::start(|b| b.bind("::".parse().unwrap())).await;
    let url = format!(
        "http://127.0.0.1:{}/update-v12-to-v13.zip",
        fx.server.http_addr().unwrap().port()
    );
    let out = common::run("curl", &["-sf", "-o", "/dev/null", &url]).await;
    assert!(out.status.success(), "{out:?}");
    let rec = fx
        .wait_record("dual-stack download", |r| r.path == "update-v12-to-v13.zip")
        .await;
    assert_eq!(rec.peer.ip().to_string(), "127.0.0.1", "{rec:?}");
    assert_eq!(rec.outcome, Outcome::Complete);
    let line = fx
        .log_lines()
        .into_iter()
        .find(|l| l["path"] == "update-v12-to-v13.zip")
        .unwrap();
    assert!(
        line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    // FTP too, with PASV (RFC 959: IPv4 only) as modules use it, and over
    // IPv6 where the machine has it.
    let port = fx.server.ftp_addr().unwrap().port();
    let mut hosts = vec!["127.0.0.1".to_string()];
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        hosts.push("[::1]".to_string());
    }
    for host in hosts {
        let url = format!("ftp://test:test@{host}:{port}/update-v12-to-v13.zip");
        let out = common::run("curl", &["-sS", "--disable-epsv", "-o", "/dev/null", &url]).await;
        assert!(out.status.success(), "{host}: {out:?}");
        let ip = host.trim_matches(['[', ']']).to_string();
        let rec = fx
            .wait_record("dual-stack FTP download", |r| {
                r.protocol == Protocol::Ftp && r.peer.ip().to_string() == ip
            })
            .await;
        assert_eq!(rec.outcome, Outcome::Complete, "{rec:?}");
    }
}

/// Prints the address of a `PASV` reply from the FTP server on port argv[1].
const PASV_ADDRESS: &str = r#"
import ftplib, sys
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", int(sys.argv[1]), timeout=20)
ftp.login("test", "test")
print(ftplib.parse227(ftp.sendcmd("PASV"))[0])
ftp.quit()
"#;

// Regression: bound to 0.0.0.0 without --public-host, PASV advertised the
// machine's LAN address while the passive listener answered on the address
// the client used, so a client on 127.0.0.1 ended 601.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pasv_names_the_control_connections_address_unless_a_public_host_is_set() {
    let fx = Fixture::start(|b| b.bind("0.0.0.0".parse().unwrap())).await;
    let out = python(PASV_ADDRESS, &[&fx.ftp_port().to_string()]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "127.0.0.1",
        "{out:?}"
    );
    let fx = Fixture::start(|b| b.public_host("127.0.0.2")).await;
    let out = python(PASV_ADDRESS, &[&fx.ftp_port().to_string()]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "127.0.0.2",
        "{out:?}"
    );
}

/// A Python client: fetches argv[2] then argv[3] over one keep-alive
/// HTTP(S) connection to argv[1] (`host:port`), reading each response
/// whole, prints its own address, then holds the connection open until
/// killed. argv[4] `tls`: over HTTPS, trusting argv[5]. argv[6]
/// `pipelined`: both requests are sent at once, before the first response
/// is read; `first-only`: so sent, and only the first response is read
/// (a 16 KiB receive buffer holds the rest back); else the second is sent
/// after the first response.
const KEEP_ALIVE_PAIR: &str = r#"
import socket, ssl, sys, time
host, port = sys.argv[1].rsplit(":", 1)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
s.connect((host, int(port)))
if sys.argv[4] == "tls":
    ctx = ssl.create_default_context(cafile=sys.argv[5])
    s = ctx.wrap_socket(s, server_hostname="localhost")
requests = [f"GET /{p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in sys.argv[2:4]]
order = sys.argv[6]
if order != "sequential":
    s.sendall(b"".join(requests))
if order == "first-only":
    requests = requests[:1]
buf = b""
def more():
    global buf
    chunk = s.recv(65536)
    if not chunk:
        sys.exit("connection closed early")
    buf += chunk
for request in requests:
    if order == "sequential":
        s.sendall(request)
    while b"\r\n\r\n" not in buf:
        more()
    head, buf = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n")
                  if l.lower().startswith(b"content-length:"))
    while len(buf) < length:
        more()
    buf = buf[length:]
ip, port = s.getsockname()[:2]
print(f"{ip}:{port}", flush=True)
time.sleep(120)
"#;

/// On a keep-alive connection the next response starts while the
/// previous one's acknowledgements are still awaited: each body keeps its
/// own place in the stream, so a large download followed at once by a
/// small one is complete as soon as it is acknowledged — not held until
/// the connection closes and then taken for aborted at the small one's
/// size. Over HTTPS a body's place ends where its last TLS record does;
/// pipelined, the second response's headers are written right after the
/// first body and must not count against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_responses_on_one_connection_are_each_complete() {
    use tokio::io::AsyncBufReadExt;
    let (fx, size) = start(Duration::from_secs(30)).await;
    let small = "update-v12-to-v13.zip";
    for (tls, protocol) in [(false, Protocol::Http), (true, Protocol::Https)] {
        for order in ["sequential", "pipelined", "first-only"] {
            let (addr, mode) = http_endpoint(&fx, tls);
            // Unread, the second response must be larger than the
            // buffers between the server and the client.
            let second = if order == "first-only" {
                MIB_PKG
            } else {
                small
            };
            let args = [
                "-c",
                KEEP_ALIVE_PAIR,
                &addr,
                MIB_PKG,
                second,
                mode,
                TEST_CERT,
                order,
            ];
            let mut client = tokio::process::Command::new("python3")
                .args(args)
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let stdout = client.stdout.take().unwrap();
            let mut line = String::new();
            tokio::time::timeout(
                Duration::from_secs(30),
                tokio::io::BufReader::new(stdout).read_line(&mut line),
            )
            .await
            .expect("the client reads both responses")
            .unwrap();
            let peer: std::net::SocketAddr = line.trim().parse().expect("the client's address");
            let what = format!("{mode} {order}: complete while the connection is open");
            let first_only = order == "first-only";
            let records = fx
                .wait_records(&what, if first_only { 1 } else { 2 }, |r| {
                    r.peer == peer && r.protocol == protocol && r.outcome == Outcome::Complete
                })
                .await;
            client.start_kill().unwrap();
            let big = records
                .iter()
                .find(|r| r.path == MIB_PKG)
                .expect("the 1 MiB record");
            assert_eq!((big.bytes_sent, big.bytes_acked), (size, size), "{big:?}");
            if first_only {
                // The second response, unread, is still being sent.
                assert_eq!(records.len(), 1, "{records:?}");
                continue;
            }
            let other = records
                .iter()
                .find(|r| r.path == small)
                .expect("the small record");
            assert_eq!(other.bytes_acked, other.bytes_sent, "{other:?}");
        }
    }
}

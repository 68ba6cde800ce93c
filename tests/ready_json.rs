//! `--ready-json` of the binary checked against the really bound ports:
//! `serve` writing a FILE (every listener answers where the object says,
//! the package URL serves the package with the SHA-256 it says), and
//! `modem` writing one line on stdout (its TCP AT port answers `AT`).

mod common;

use std::path::Path;
use std::process::Stdio;

use common::{DEADLINE, bounded, run, sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_qfota-serve");

async fn sigterm_exits_0(mut child: tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    assert!(run("kill", &["-TERM", &pid]).await.status.success());
    let status = bounded("exit", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

/// The first line on the stdout of a child started with `--ready-json -`,
/// parsed.
async fn ready_line(
    stdout: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> serde_json::Value {
    let line = bounded("ready line", stdout.next_line())
        .await
        .unwrap()
        .unwrap();
    serde_json::from_str(&line).unwrap()
}

/// The object process `pid` writes to `path` (a stale file from an
/// earlier run is removed at start and replaced, whole, when ready).
async fn read_ready_file(path: &Path, pid: u32) -> serde_json::Value {
    let wait = async {
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && v["pid"] == pid
            {
                assert!(text.ends_with('\n') && text.lines().count() == 1, "{text}");
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .expect("ready file")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_ready_file_names_the_bound_ports_and_working_urls() {
    let work = tempfile::tempdir().unwrap();
    let ready = work.path().join("ready.json");
    std::fs::write(&ready, "stale from an earlier run").unwrap();
    let packages = Path::new(env!("CARGO_MANIFEST_DIR")).join("packages");
    let child = tokio::process::Command::new(BIN)
        .args("--ftp 0 --http 0 --https 0 --bind 127.0.0.1 --admin 127.0.0.1:0".split(' '))
        .args(["--user", "test:test"])
        .arg("--log")
        .arg(work.path().join("downloads.jsonl"))
        .arg("--certs-dir")
        .arg(work.path().join("certs"))
        .arg("--ready-json")
        .arg(&ready)
        .arg(&packages)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let v = read_ready_file(&ready, child.id().unwrap()).await;
    assert_eq!(
        (&v["bind"], &v["public_host"]),
        (&"127.0.0.1".into(), &"127.0.0.1".into())
    );
    assert_eq!(
        Path::new(v["log"].as_str().unwrap()),
        work.path().join("downloads.jsonl")
    );
    for proto in ["ftp", "http", "https", "admin"] {
        let addr = v["listeners"][proto].as_str().unwrap();
        assert!(
            addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
            "{addr}"
        );
        bounded(addr, TcpStream::connect(addr)).await.unwrap();
    }
    let ftp = v["listeners"]["ftp"].as_str().unwrap();
    let mut banner = [0u8; 3];
    let mut ftp = TcpStream::connect(ftp).await.unwrap();
    bounded("FTP greeting", ftp.read_exact(&mut banner))
        .await
        .unwrap();
    assert_eq!(&banner, b"220");
    let admin = v["listeners"]["admin"].as_str().unwrap();
    let readyz = run("curl", &["-sSf", &format!("http://{admin}/readyz")]).await;
    assert_eq!(
        String::from_utf8_lossy(&readyz.stdout),
        "{\"ready\":true}\n"
    );

    let pkg = v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["path"] == "update-v12-to-v13.zip")
        .expect("package listed");
    let want = sha256(&std::fs::read(packages.join("update-v12-to-v13.zip")).unwrap());
    assert_eq!(
        (&pkg["sha256"], &pkg["valid"]),
        (&want.clone().into(), &true.into())
    );
    let http = v["listeners"]["http"].as_str().unwrap();
    assert_eq!(
        pkg["urls"]["http"],
        format!("http://{http}/update-v12-to-v13.zip")
    );
    assert!(
        pkg["urls"]["ftp"]
            .as_str()
            .unwrap()
            .starts_with("ftp://test:test@127.0.0.1:")
    );
    let got = work.path().join("got.zip");
    for proto in ["ftp", "http", "https"] {
        let url = pkg["urls"][proto].as_str().unwrap();
        let out = run("curl", &["-sSfk", "-o", got.to_str().unwrap(), url]).await;
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(sha256(&std::fs::read(&got).unwrap()), want, "{url}");
    }
    sigterm_exits_0(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modem_ready_line_on_stdout_names_its_ports() {
    let work = tempfile::tempdir().unwrap();
    let link = work.path().join("at");
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "modem",
            "--tcp",
            "127.0.0.1:0",
            "--model",
            "EC200T",
            "--version",
            "v3",
        ])
        .arg("--pty")
        .arg(&link)
        .args(["--ready-json", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let v = ready_line(&mut stdout).await;
    assert_eq!(v["pid"], child.id().unwrap());
    assert_eq!(
        (&v["model"], &v["profile"], &v["version"]),
        (&"EC200T".into(), &"ec200".into(), &"v3".into())
    );
    assert_eq!(Path::new(v["pty"].as_str().unwrap()), link);
    assert!(
        link.exists(),
        "the PTY link is there when ready is announced"
    );
    let tcp = v["tcp"].as_str().unwrap();
    let mut at = bounded("connect", TcpStream::connect(tcp)).await.unwrap();
    at.write_all(b"AT\r").await.unwrap();
    let mut reply = BufReader::new(at).lines();
    let ok = async {
        while let Some(line) = reply.next_line().await.unwrap() {
            if line.trim() == "OK" {
                return true;
            }
        }
        false
    };
    assert!(bounded("AT → OK", ok).await);
    sigterm_exits_0(child).await;
    // With `-`, the status lines go to stderr: stdout holds the object only.
    let rest = bounded("stdout end", stdout.next_line()).await.unwrap();
    assert_eq!(rest, None);
}

/// A harness that reads the ready line from stdout and never drains the
/// stderr pipe (Node's `spawn`, Python's `stderr=PIPE`): once the pipe is
/// full, log lines are dropped, and serving, `/healthz` and SIGTERM go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_pipe_nobody_reads_never_stops_the_server() {
    let work = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "--bind",
            "127.0.0.1",
            "--http",
            "0",
            "--admin",
            "127.0.0.1:0",
        ])
        .arg("--log")
        .arg(work.path().join("downloads.jsonl"))
        .args(["--ready-json", "-"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("packages"))
        .stdout(Stdio::piped())
        // Held open, never read.
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let v = ready_line(&mut stdout).await;
    let http = v["listeners"]["http"].as_str().unwrap().to_string();
    let admin = v["listeners"]["admin"].as_str().unwrap().to_string();
    // Each download logs a line of ~200 bytes: 1,000 of them are three
    // times what a 64 KiB pipe holds. A long path makes each line longer.
    let long = format!("/{}.zip", "x".repeat(900));
    let request = format!("GET {long} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut tcp = TcpStream::connect(&http).await.unwrap();
    let mut answers = BufReader::new(&mut tcp);
    for _ in 0..300 {
        answers
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
        // A 404 with a body: read its header, then its length.
        let mut length = 0;
        loop {
            let mut line = String::new();
            bounded("answer", answers.read_line(&mut line))
                .await
                .unwrap();
            if let Some(n) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = n.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        bounded("body", answers.read_exact(&mut body))
            .await
            .unwrap();
    }
    let health = run(
        "curl",
        &["-sS", "--max-time", "5", &format!("http://{admin}/healthz")],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&health.stdout), "ok\n");
    sigterm_exits_0(child).await;
}

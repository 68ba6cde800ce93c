//! `qfota-serve report` on real logs: the real server (the binary) serves
//! the sample packages, curl downloads over HTTP and FTP (complete, a 404,
//! an unsatisfiable range, a refused login), the log is split in two like
//! two replicas' logs with a torn line and garbage added, one of them
//! compressed with gzip as logrotate leaves it, and the binary's `report`
//! must merge them — as a table, JSON, and an HTML page that
//! headless Chromium renders with the expected rows (screenshots kept in
//! `target/screenshots/` for people).

#[path = "support/chromium.rs"]
mod chromium;
mod common;
#[path = "support/served.rs"]
mod served;

use std::path::{Path, PathBuf};

use common::run;
use served::{BIN, Served};

const PKG: &str = "update-v12-to-v13.zip";

/// Makes real download records; returns the log's text.
async fn real_log(work: &Path) -> String {
    let log = work.join("downloads.jsonl");
    let server = Served::samples(&log, "42000-42999", &[]).await;
    let http = server.base("http");
    let ftp = server.listeners["ftp"].clone();
    let out = work.join("got").to_string_lossy().into_owned();
    let ok = [
        format!("{http}/{PKG}"),
        format!("{http}/{PKG}"),
        format!("ftp://test:test@{ftp}/{PKG}"),
    ];
    for url in &ok {
        let done = run("curl", &["-sSf", "-o", &out, url]).await;
        assert!(done.status.success(), "{url}: {done:?}");
    }
    // Failures: 404, 416 (refused), 530 (auth_failed); curl exits non-zero.
    for args in [
        vec!["-sS", "-o", &out, &format!("{http}/nope-v1-to-v2.zip")],
        vec![
            "-sS",
            "-o",
            &out,
            "-r",
            "99999999-",
            &format!("{http}/{PKG}"),
        ],
        vec!["-sS", "-o", &out, &format!("ftp://test:wrong@{ftp}/{PKG}")],
    ]
    .iter()
    {
        run("curl", args).await;
    }
    assert_eq!(server.stop().await, Some(0));
    std::fs::read_to_string(&log).unwrap()
}

/// Splits `text` into two logs (alternate lines, like two replicas) with a
/// torn last line and a garbage line.
fn replica_logs(work: &Path, text: &str) -> [PathBuf; 2] {
    let (mut a, mut b) = (String::new(), String::new());
    for (i, line) in text.lines().enumerate() {
        let into = if i % 2 == 0 { &mut a } else { &mut b };
        into.push_str(line);
        into.push('\n');
    }
    a.push_str("qfota-serve restarted here\n");
    b.push_str(&text.lines().next().unwrap()[..30]);
    let paths = [work.join("replica-a.jsonl"), work.join("replica-b.jsonl")];
    std::fs::write(&paths[0], a).unwrap();
    std::fs::write(&paths[1], b).unwrap();
    paths
}

async fn report(args: &[&str]) -> (String, String) {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    let out = run(BIN, &all).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_merges_real_replica_logs_as_table_json_and_html() {
    let work = tempfile::tempdir().unwrap();
    let text = real_log(work.path()).await;
    assert_eq!(text.lines().count(), 6, "{text}");
    let [a, b] = replica_logs(work.path(), &text);
    // The second one rotated and compressed, as logrotate's `compress`
    // leaves it (`report downloads.jsonl*`).
    let gz = run("gzip", &[b.to_str().unwrap()]).await;
    assert!(gz.status.success(), "{gz:?}");
    let b = b.with_extension("jsonl.gz");
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());

    let (table, stderr) = report(&[a, b]).await;
    assert!(
        stderr.contains("skipped 2 lines that were not records"),
        "{stderr}"
    );
    assert!(table.starts_with("6 attempts by "), "{table}");
    let row = table.lines().find(|l| l.starts_with(PKG)).unwrap();
    let cols: Vec<_> = row.split_whitespace().collect();
    // attempts, modules, complete, aborted, refused, other
    // Two modules: 127.0.0.1 over HTTP (by IP), FTP user `test`.
    assert_eq!(&cols[1..7], ["4", "2", "3", "0", "1", "0"], "{table}");
    // The refused login named no package.
    let login = table.lines().find(|l| l.starts_with("(no path)")).unwrap();
    assert!(login.split_whitespace().nth(7) == Some("1"), "{table}");
    assert!(table.contains("1× auth_failed: wrong password"), "{table}");
    assert!(table.contains("most recent attempts"), "{table}");

    let (json, _) = report(&["--json", a, b]).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["attempts"], 6);
    assert_eq!(v["skipped_lines"], 2);
    assert_eq!(v["packages"][0]["path"], PKG);
    assert_eq!(v["packages"][0]["outcomes"]["complete"], 3);
    let nope = v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["path"] == "nope-v1-to-v2.zip")
        .unwrap();
    assert_eq!(nope["top_failures"][0]["outcome"], "not_found");
    // Merged in time order: recent is newest first.
    let ts: Vec<&str> = v["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ts"].as_str().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] >= w[1]), "{ts:?}");

    let (json, _) = report(&["--json", "--package", "nope-*", "--since", "1h", a, b]).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["attempts"], 1);
    let (json, _) = report(&["--json", "--until", "2020-01-01T00:00:00Z", a, b]).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["attempts"], 0);

    let page = work.path().join("report.html");
    report(&["--html", page.to_str().unwrap(), a, b]).await;
    if !chromium::available().await {
        return;
    }
    let url = format!("file://{}", page.display());
    let dom = chromium::dom(&url).await;
    assert!(
        dom.contains(&format!("<tr data-package=\"{PKG}\">")),
        "{dom}"
    );
    assert!(
        dom.contains("<tr data-package=\"nope-v1-to-v2.zip\">"),
        "{dom}"
    );
    assert!(dom.contains("<tr data-package=\"(no path)\">"), "{dom}");
    assert_eq!(dom.matches("<tr data-outcome=").count(), 6, "{dom}");
    assert_eq!(
        dom.matches("<tr data-outcome=\"complete\"").count(),
        3,
        "{dom}"
    );
    assert!(dom.contains("<svg id=\"chart\""), "{dom}");
    assert!(dom.contains("<rect "), "{dom}");
    assert!(dom.contains("skipped 2 log lines"), "{dom}");
    chromium::screenshot(&url, "report.png", "1200,1400").await;
    chromium::screenshot(&url, "report-narrow.png", "400,1800").await;
}

#[tokio::test]
async fn report_on_a_missing_log_fails_naming_it() {
    let out = run(BIN, &["report", "/nonexistent/downloads.jsonl"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/downloads.jsonl"), "{err}");
    let out = run(BIN, &["report", "--since", "yesterday", "x.jsonl"]).await;
    assert_eq!(out.status.code(), Some(2));
    // A compressed log cut short (a copy interrupted) is an error naming
    // it, not a silently shorter campaign.
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("downloads.jsonl.1");
    std::fs::write(&log, "{\"not\":\"a record\"}\n".repeat(2000)).unwrap();
    assert!(run("gzip", &[log.to_str().unwrap()]).await.status.success());
    let gz = log.with_extension("1.gz");
    let whole = std::fs::read(&gz).unwrap();
    std::fs::write(&gz, &whole[..whole.len() / 2]).unwrap();
    let out = run(BIN, &["report", gz.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("downloads.jsonl.1.gz"), "{err}");
    assert!(err.contains("gzip"), "{err}");
    // So is a file named .gz that holds no gzip data at all.
    let fake = work.path().join("downloads.jsonl.2.gz");
    std::fs::write(&fake, "{\"not\":\"gzip\"}\n").unwrap();
    let out = run(BIN, &["report", fake.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("downloads.jsonl.2.gz") && err.contains("gzip"),
        "{err}"
    );
}

/// Output that cannot be written (a full disk) fails the command: a
/// shortened report or check must not end with exit 0. A reader that
/// stops early (`| head`) is no failure.
#[tokio::test]
async fn output_that_cannot_be_written_fails_the_command() {
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("downloads.jsonl");
    let record = r#"{"ts":"2026-06-01T12:00:00.000Z","duration_ms":5,"protocol":"http","peer":"127.0.0.1:4000","user":null,"path":"a.zip","size":10,"sha256":null,"range_start":0,"bytes_sent":10,"status":200,"outcome":"complete","reason":"acknowledged"}"#;
    std::fs::write(&log, format!("{record}\n").repeat(3000)).unwrap();
    let log = log.to_str().unwrap();
    for args in [
        vec!["report", log],
        vec!["report", "--json", "--recent", "3000", log],
        vec!["check", "packages"],
        vec!["config", "--http", "80", "packages"],
    ] {
        let full = std::fs::File::create("/dev/full").unwrap();
        let child = tokio::process::Command::new(BIN)
            .args(&args)
            .stdout(full)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.wait_with_output().await.unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No space left on device"), "{args:?}: {err}");
    }
    // A reader that closes after the first bytes: exit 0, no error.
    let mut child = tokio::process::Command::new(BIN)
        .args(["report", "--json", "--recent", "3000", log])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    tokio::io::AsyncReadExt::read_exact(&mut stdout, &mut first)
        .await
        .unwrap();
    drop(stdout);
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

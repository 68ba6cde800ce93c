//! The binary as a user runs it: `check` exit codes, flag errors, and the
//! serve job on the shipped sample packages fetched over FTP, HTTP and HTTPS
//! by curl, wget and lftp, then stopped with SIGTERM.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::{DEADLINE, run, sha256};
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_qfota-serve");

fn packages() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packages")
        .to_string_lossy()
        .into_owned()
}

#[tokio::test]
async fn check_passes_on_the_sample_packages() {
    let out = run(BIN, &["check", &packages(), "--public-host", "192.0.2.2"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("update-v12-to-v13.zip"), "{text}");
    assert!(text.contains("check passed"), "{text}");
}

#[tokio::test]
async fn check_fails_when_a_named_profile_is_misfit() {
    // Jun/… is in a sub-folder: ec200 downloads over FTP from the root only.
    let out = run(BIN, &["check", &packages(), "--profile", "ec200"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("root folder"));
    let out = run(BIN, &["check", &packages(), "--profile", "ec2x"]).await;
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test]
async fn check_fails_on_a_broken_zip_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad-v1-to-v2.zip"), common::broken_zip()).unwrap();
    let d = dir.path().to_string_lossy().into_owned();
    let out = run(BIN, &["check", &d]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("INVALID"));
    let out = run(BIN, &["check", &d, "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["path"], "bad-v1-to-v2.zip");
    assert!(
        v[0]["problems"][0]
            .as_str()
            .unwrap()
            .contains("system.diff")
    );
}

#[tokio::test]
async fn bad_flags_exit_2_with_a_message() {
    for args in [
        vec!["--ftp", "notaport", "x"],
        vec!["x"],
        vec!["--http", "80"],
        vec!["--http", "80", "--user", "nocolon", "x"],
        vec!["--http", "80", "--passive-ports", "9-1", "x"],
        vec!["--https", "443", "--tls-cert", "c.pem", "x"],
        vec!["check", "x", "--profile", "bg96"],
        vec!["--http", "80", "--public-host", "http://fota.example", "x"],
        vec!["check", "x", "--public-host", "http://fota.example"],
        vec!["--http", "80", "--max-connections", "0", "x"],
        vec!["--http", "80", "--max-connections-per-ip", "0", "x"],
        vec!["fleet", "http://127.0.0.1:1/a.zip", "--deadline-secs", "0"],
    ] {
        let out = run(BIN, &args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}

/// An admin port that is also a package port is refused before either
/// binds, naming both (it would take the port and leave the package
/// listener to fail about itself).
#[tokio::test]
async fn an_admin_port_shared_with_a_package_port_is_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let admin = format!("127.0.0.1:{port}");
    let out = run(
        BIN,
        &[
            "--bind",
            "127.0.0.1",
            "--http",
            &port,
            "--admin",
            &admin,
            &packages(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("also --http's"), "{err}");
}

#[tokio::test]
async fn a_missing_package_folder_is_a_clear_start_up_error() {
    let out = run(
        BIN,
        &[
            "--http",
            "0",
            "--bind",
            "127.0.0.1",
            "/nonexistent/packages",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/packages"));
}

/// The README's main job, on loopback and free ports: real wget, lftp and
/// curl fetch both sample packages byte-identical; SIGTERM exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_job_with_wget_lftp_and_curl() {
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("downloads.jsonl");
    let certs = work.path().join("certs");
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "--ftp",
            "0",
            "--http",
            "0",
            "--https",
            "0",
            "--bind",
            "127.0.0.1",
        ])
        .args(["--user", "test:test", "--passive-ports", "41000-41999"])
        .arg("--log")
        .arg(&log)
        .arg("--certs-dir")
        .arg(&certs)
        .arg(packages())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut urls = Vec::new();
    let banner = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.trim().strip_prefix("AT+QFOTADL=\"") {
                urls.push(url.trim_end_matches('"').to_string());
                if urls.len() == 6 {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(DEADLINE, banner)
        .await
        .expect("banner");
    assert_eq!(urls.len(), 6, "{urls:?}");
    for url in &urls {
        let rel = url.splitn(4, '/').nth(3).unwrap();
        let want = sha256(&std::fs::read(Path::new(&packages()).join(rel)).unwrap());
        let out_file = work.path().join("got.zip");
        let out = out_file.to_string_lossy().into_owned();
        let _ = std::fs::remove_file(&out_file);
        // Each of curl, wget and lftp fetches every URL, FTP and HTTP(S).
        let (dir, file) = url.rsplit_once('/').unwrap();
        let lftp = format!(
            "set net:max-retries 1; set net:timeout 10; set ssl:verify-certificate no; \
             open {dir}/; get {file} -o {out}; bye"
        );
        let clients: [(&str, Vec<&str>); 3] = [
            ("curl", vec!["-sSfk", "-o", &out, url]),
            (
                "wget",
                vec!["-q", "--no-check-certificate", "-O", &out, url],
            ),
            ("lftp", vec!["-c", &lftp]),
        ];
        for (client, args) in clients {
            let _ = std::fs::remove_file(&out_file);
            let done = run(client, &args).await;
            assert!(
                done.status.success(),
                "{client} {url}: {}",
                String::from_utf8_lossy(&done.stderr)
            );
            let got = std::fs::read(&out_file).unwrap_or_default();
            assert_eq!(sha256(&got), want, "{client} {url}");
        }
    }
    // A record is written once the client acknowledged the last byte, a
    // moment after the client itself is done: wait for all 18.
    let count_complete = |text: &str| {
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["outcome"] == "complete" && v["bytes_sent"] == v["size"])
            .count()
    };
    let log_path = log.clone();
    common::eventually(
        "18 complete records",
        std::time::Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let done = count_complete(&text) >= 18;
            async move { done.then_some(()) }
        },
    )
    .await;

    let pid = child.id().unwrap().to_string();
    assert!(run("kill", &["-TERM", &pid]).await.status.success());
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    // The generated certificate was kept for the next start.
    assert!(certs.join("qfota-serve.crt").is_file());
}

/// `check` as a user who may not list `locked/` nor look into `blind/` (as
/// root, which reads everything, through `setpriv` as `nobody`): the
/// folder and the file are reported as not checked and fail the check, in
/// the report and in the JSON.
#[tokio::test]
async fn check_fails_on_a_folder_it_cannot_list() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let sample = Path::new(&packages()).join("update-v12-to-v13.zip");
    std::fs::copy(&sample, root.join("good-v12-to-v13.zip")).unwrap();
    std::fs::create_dir(root.join("locked")).unwrap();
    std::fs::copy(&sample, root.join("locked/hidden-v12-to-v13.zip")).unwrap();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(root.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    // Listed, not searchable: its file's name is known, not its details.
    std::fs::create_dir(root.join("blind")).unwrap();
    std::fs::copy(&sample, root.join("blind/seen-v12-to-v13.zip")).unwrap();
    std::fs::set_permissions(root.join("blind"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let d = root.to_string_lossy().into_owned();
    let as_root = String::from_utf8_lossy(&run("id", &["-u"]).await.stdout).trim() == "0";
    let check = |json: bool| {
        let mut argv: Vec<String> = Vec::new();
        if as_root {
            argv.extend(
                ["--reuid=65534", "--regid=65534", "--clear-groups", BIN].map(String::from),
            );
        }
        argv.extend(["check".to_string(), d.clone()]);
        if json {
            argv.push("--json".into());
        }
        (if as_root { "setpriv" } else { BIN }, argv)
    };
    let run_check = |json: bool| {
        let (program, argv) = check(json);
        async move {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            run(program, &argv).await
        }
    };
    let out = run_check(false).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("locked/  not checked: cannot list the folder"),
        "{text}"
    );
    assert!(
        text.contains("blind/seen-v12-to-v13.zip  not checked: cannot read its details"),
        "{text}"
    );
    assert!(text.contains("2 not checked"), "{text}");
    let out = run_check(true).await;
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = v.as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["path"] == "good-v12-to-v13.zip"),
        "{v}"
    );
    let locked = entries
        .iter()
        .find(|e| e["path"] == "locked/")
        .expect("locked/ listed");
    assert!(
        locked["not_checked"]
            .as_str()
            .unwrap()
            .contains("cannot list"),
        "{v}"
    );
    std::fs::set_permissions(root.join("locked"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(root.join("blind"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

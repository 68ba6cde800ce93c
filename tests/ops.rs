//! Running it as a service and reading what it prints: the systemd unit
//! passes `systemd-analyze verify`, completions and the man page are
//! generated, `check` ends with its count line and prints JSON without Rust
//! enum names, and a start-up error is printed once and names its role.

mod common;

use std::path::Path;

use common::run;

const BIN: &str = env!("CARGO_BIN_EXE_qfota-serve");

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// The shipped unit verifies; `ExecStart` is pointed at the binary under
/// test because `verify` checks that the program exists.
#[tokio::test]
async fn systemd_unit_verifies() {
    if run("sh", &["-c", "command -v systemd-analyze"])
        .await
        .status
        .code()
        != Some(0)
    {
        println!("skipped: systemd-analyze is not installed");
        return;
    }
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/qfota-serve.service"),
    )
    .unwrap();
    assert!(unit.contains("Type=notify"));
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(unit.contains("RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qfota-serve.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/qfota-serve", BIN)).unwrap();
    // --man=no: the man page (`qfota-serve man`) is installed by hand.
    let out = run(
        "systemd-analyze",
        &["verify", "--man=no", path.to_str().unwrap()],
    )
    .await;
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("qfota-serve.service:"), "{err}");
}

#[tokio::test]
async fn completions_and_man_page_are_generated() {
    let out = run(BIN, &["completions", "bash"]).await;
    assert!(out.status.success());
    let script = text(&out.stdout);
    assert!(
        script.contains("report") && script.contains("--passive-ports"),
        "{script}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("qfota-serve.bash");
    std::fs::write(&file, &script).unwrap();
    let syntax = run("bash", &["-n", file.to_str().unwrap()]).await;
    assert!(syntax.status.success(), "{}", text(&syntax.stderr));
    for shell in ["zsh", "fish"] {
        let out = run(BIN, &["completions", shell]).await;
        assert!(
            out.status.success() && text(&out.stdout).contains("qfota-serve"),
            "{shell}"
        );
    }
    assert_eq!(
        run(BIN, &["completions", "tcsh"]).await.status.code(),
        Some(2)
    );
    let out = run(BIN, &["man"]).await;
    assert!(out.status.success());
    let page = text(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH qfota-serve"),
        "{page}"
    );
    assert!(
        page.contains("report") && page.contains("completions"),
        "{page}"
    );
}

#[tokio::test]
async fn check_counts_packages_and_prints_plain_json() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad-v1-to-v2.zip"), common::broken_zip()).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packages/update-v12-to-v13.zip"),
        dir.path().join("good-v12-to-v13.zip"),
    )
    .unwrap();
    let d = dir.path().to_str().unwrap();
    let out = run(BIN, &["check", d]).await;
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stdout);
    assert!(
        report.contains("2 packages: 1 valid, 1 invalid"),
        "{report}"
    );
    // The invalid package lists its problem, no per-family "ok".
    let bad: Vec<&str> = report
        .lines()
        .skip_while(|l| !l.starts_with("bad-v1-to-v2.zip"))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .collect();
    assert_eq!(bad.len(), 1, "{report}");
    assert!(bad[0].contains("INVALID"), "{report}");
    let good = report
        .lines()
        .filter(|l| l.trim_start().starts_with("ok "))
        .count();
    assert!(good >= 1, "{report}");

    let out = run(BIN, &["check", d, "--json"]).await;
    let json = text(&out.stdout);
    assert!(
        !json.contains("\"Ok\"") && !json.contains("\"Err\""),
        "{json}"
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let by_path = |p: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|x| x["path"] == p)
            .unwrap()
            .clone()
    };
    assert_eq!(by_path("good-v12-to-v13.zip")["zip"]["ok"], true);
    assert!(
        by_path("good-v12-to-v13.zip")["zip"]["entries"]
            .as_u64()
            .unwrap()
            > 0
    );
    let bad = by_path("bad-v1-to-v2.zip");
    assert_eq!(bad["zip"]["ok"], false);
    assert!(
        bad["zip"]["error"]
            .as_str()
            .unwrap()
            .contains("system.diff"),
        "{bad}"
    );
}

/// Regression: a port in use was reported as "Address already in use (os
/// error 98): Address already in use (os error 98)".
#[tokio::test]
async fn a_start_up_error_is_printed_once_and_names_its_role() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let pk = Path::new(env!("CARGO_MANIFEST_DIR")).join("packages");
    let pk = pk.to_str().unwrap();
    let out = run(
        BIN,
        &[
            "--http",
            &port,
            "--bind",
            "127.0.0.1",
            "--log",
            "/dev/null",
            pk,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");

    let out = run(
        BIN,
        &[
            "--https",
            "0",
            "--bind",
            "127.0.0.1",
            "--log",
            "/dev/null",
            "--tls-cert",
            "/x/y.pem",
            "--tls-key",
            "/x/k.pem",
            pk,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("TLS certificate /x/y.pem"), "{err}");
}

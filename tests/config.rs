//! The configuration file with the real binary: every precedence level
//! (flag > environment > file > default) seen in `qfota-serve config`'s
//! output and in a real server started from a file, unknown keys and bad
//! values refused naming them, passwords masked.

mod common;
#[path = "support/served.rs"]
mod served;

use std::path::Path;

use common::run;
use served::{BIN, Served};

/// Runs the binary with `envs` (and no inherited `QFOTA_*` surprises from
/// the test's own environment beyond them).
async fn qfota(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let child = tokio::process::Command::new(BIN)
        .args(args)
        .envs(envs.iter().copied())
        .kill_on_drop(true)
        .output();
    common::bounded("qfota-serve", child).await.unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in\n{out}"))
}

#[tokio::test]
async fn each_precedence_level_shows_in_config_output() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "qfota.toml",
        "dir = \"/srv/fw\"\nftp = 2121\nhttp = 8080\nhttps = 8443\n\
         user = [\"test:s3cret\"]\nfault = [\"status=503,protocol=http,times=1\"]\n",
    );
    let out = qfota(
        &["config", "--config", &file, "--https", "9443"],
        &[("QFOTA_HTTP", "9090")],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(line(&text, "https"), "https = 9443  # flag");
    assert_eq!(line(&text, "http"), "http = 9090  # env QFOTA_HTTP");
    assert_eq!(line(&text, "ftp"), "ftp = 2121  # file");
    assert_eq!(line(&text, "bind"), "bind = \"0.0.0.0\"  # default");
    assert_eq!(line(&text, "dir"), "dir = \"/srv/fw\"  # file");
    assert_eq!(
        line(&text, "fault"),
        "fault = [\"status=503,protocol=http,times=1\"]  # file"
    );
    assert_eq!(line(&text, "user"), "user = [\"test:***\"]  # file");
    assert!(!text.contains("s3cret"), "{text}");
    // The file may also come from QFOTA_CONFIG.
    let out = qfota(&["config"], &[("QFOTA_CONFIG", &file)]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(line(&text, "ftp"), "ftp = 2121  # file");
}

#[tokio::test]
async fn unknown_keys_and_bad_values_are_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    for (text, want) in [
        ("http = 80\nlisten-port = 21\n", "unknown key `listen-port`"),
        ("http = \"eighty\"\n", "eighty"),
        ("http = 80\npassive-ports = \"9-1\"\n", "9-1"),
        ("http = [80\n", "config file"),
        ("http = 80\npublic-host = \"http://x\"\n", "no scheme"),
        // A switch wants a TOML boolean; "yes" is no silent false.
        (
            "http = 80\nallow-invalid = \"yes\"\n",
            "true or false expected",
        ),
        ("http = 80\nallow-invalid = 1\n", "true or false expected"),
    ] {
        let file = write(dir.path(), "bad.toml", text);
        for args in [
            vec!["config", "--config", &file],
            vec!["--config", &file, "pk"],
        ] {
            let out = qfota(&args, &[]).await;
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} {text:?}: {err}");
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.contains("bad.toml"), "{text:?}: {err}");
        }
    }
    let out = qfota(&["--config", "/nonexistent/qfota.toml"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/qfota.toml"));
    // Without a file to supply them, the folder and a protocol are required.
    let out = run(BIN, &["--http", "0"]).await;
    assert_eq!(out.status.code(), Some(2));
    // A file that leaves one out: the message names what is missing.
    let file = write(dir.path(), "noproto.toml", "dir = \"pk\"\n");
    let out = qfota(&["--config", &file], &[]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--http"), "{err}");
}

/// The server itself takes its folder, protocols and log from the file
/// (named by QFOTA_CONFIG); a flag overrides the file's bind address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_starts_from_the_file_with_flags_on_top() {
    let dir = tempfile::tempdir().unwrap();
    let packages = Path::new(env!("CARGO_MANIFEST_DIR")).join("packages");
    let log = dir.path().join("from-file.jsonl");
    let file = write(
        dir.path(),
        "qfota.toml",
        &format!(
            "dir = {:?}\nhttp = 0\nftp = 0\nbind = \"127.0.0.2\"\nlog = {:?}\n\
             passive-ports = \"43000-43999\"\ncerts-dir = {:?}\n",
            packages.to_str().unwrap(),
            log.to_str().unwrap(),
            dir.path().join("certs").to_str().unwrap()
        ),
    );
    let server = Served::start(&["--bind", "127.0.0.1"], &[("QFOTA_CONFIG", &file)]).await;
    assert!(server.notified.contains("READY=1"), "{}", server.notified);
    assert!(
        server.listeners["http"].starts_with("127.0.0.1:"),
        "{:?}",
        server.banner
    );
    assert!(
        server.listeners["ftp"].starts_with("127.0.0.1:"),
        "{:?}",
        server.banner
    );
    assert!(!server.listeners.contains_key("https"));
    let url = format!("{}/update-v12-to-v13.zip", server.base("http"));
    let got = run("curl", &["-sSf", "-o", "/dev/null", &url]).await;
    assert!(got.status.success(), "{got:?}");
    assert_eq!(server.stop().await, Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("\"outcome\":\"complete\""), "{text}");
}

/// A switch's variable takes the usual spellings of true and false, and
/// `config` shows what it was read as.
#[tokio::test]
async fn a_switch_variable_takes_1_yes_and_on() {
    for (value, want) in [
        ("1", "true"),
        ("yes", "true"),
        ("on", "true"),
        ("0", "false"),
        ("no", "false"),
    ] {
        let out = qfota(&["config"], &[("QFOTA_ALLOW_INVALID", value)]).await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            line(&text, "allow-invalid").starts_with(&format!("allow-invalid = {want}")),
            "{value}: {text}"
        );
    }
    let out = qfota(&["config"], &[("QFOTA_ALLOW_INVALID", "maybe")]).await;
    assert_eq!(out.status.code(), Some(2));
}

/// Spaces around the items of a comma-separated variable are not part of
/// them: `QFOTA_USER='a:b, c:d'` is the user `c`, not ` c`, and
/// `QFOTA_ADMIN_ALLOW` takes `10.0.0.0/8, 192.168.1.1` as the other lists do.
#[tokio::test]
async fn spaces_around_listed_items_in_the_environment_are_ignored() {
    let out = qfota(
        &["config", "--http", "8080", "packages"],
        &[
            ("QFOTA_USER", "a:b, c:d"),
            ("QFOTA_ADMIN", "127.0.0.1:9999"),
            ("QFOTA_ADMIN_ALLOW", "10.0.0.0/8, 192.168.1.1"),
            ("QFOTA_FAULT", "status=503,times=1; not-found,path=/x.zip"),
        ],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}{out:?}");
    assert_eq!(
        line(&text, "user"),
        "user = [\"a:***\", \"c:***\"]  # env QFOTA_USER"
    );
    assert_eq!(
        line(&text, "admin-allow"),
        "admin-allow = [\"10.0.0.0/8\", \"192.168.1.1\"]  # env QFOTA_ADMIN_ALLOW"
    );
    assert_eq!(
        line(&text, "fault"),
        "fault = [\"status=503,times=1\", \"not-found,path=/x.zip\"]  # env QFOTA_FAULT"
    );
}

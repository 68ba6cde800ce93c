//! `qfota-serve simulate` as a program: transcript on stdout, `--json`
//! lines, `QFOTA_SIM_*` environment variables and exit statuses (0 on
//! `END,0`, 1 on `ERROR` or a failure code, 2 on usage errors), against the
//! real server on 127.0.0.1 port 0 (the shared `tests/common` fixture).

mod common;

use std::process::Output;
use std::time::Duration;

use common::Fixture;

/// Bound on every program run.
const LIMIT: Duration = common::DEADLINE;
/// The sample package of `packages/`.
const PKG: &str = "update-v12-to-v13.zip";

async fn start() -> Fixture {
    Fixture::start(|b| b).await
}

async fn stop(real: Fixture) {
    tokio::time::timeout(LIMIT, real.server.shutdown())
        .await
        .expect("server stopped in time");
}

/// Runs `qfota-serve simulate <args>` with `env` added, at a small time
/// scale unless the test sets one.
async fn simulate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_qfota-serve"));
    cmd.arg("simulate")
        .args(args)
        .env("QFOTA_SIM_TIME_SCALE", "0.0005")
        .env_remove("QFOTA_SIM_JSON")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(LIMIT, cmd.output())
        .await
        .expect("simulate finished in time")
        .expect("simulate ran")
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn q(rest: &str) -> String {
    format!("+QIND: \"FOTA\",{rest}")
}

#[tokio::test]
async fn prints_the_transcript_and_exits_0_on_end_0() {
    let real = start().await;
    let url = real.ftp_url(PKG);
    let out = simulate(&[&url, "--model", "EC25", "--version", "v12"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let mut want = vec![
        format!("AT+QFOTADL=\"{url}\""),
        "OK".to_string(),
        q("\"FTPSTART\""),
        q("\"FTPEND\",0"),
        "RDY".to_string(),
        q("\"START\""),
    ];
    want.extend((1..=100).map(|p| q(&format!("\"UPDATING\",{p}"))));
    want.push(q("\"END\",0"));
    want.push("RDY".to_string());
    assert_eq!(stdout_lines(&out), want);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("v12 -> v13"), "{stderr}");
    stop(real).await;
}

#[tokio::test]
async fn json_lines_end_with_a_summary() {
    let real = start().await;
    let url = real.http_url(PKG);
    let out = simulate(&[&url, "--json", "--version", "v12"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let objects: Vec<serde_json::Value> = stdout_lines(&out)
        .iter()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let (summary, lines) = objects.split_last().unwrap();
    assert_eq!(lines[0]["line"], format!("AT+QFOTADL=\"{url}\""));
    assert_eq!(lines[1]["line"], "OK");
    let times: Vec<u64> = lines.iter().map(|o| o["t_ms"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let summary = &summary["summary"];
    assert_eq!(summary["profile"], "ec2x", "default profile");
    assert_eq!(summary["download_code"], 0);
    assert_eq!(summary["upgrade_codes"], serde_json::json!([0]));
    assert_eq!(summary["version"], "v13");
    stop(real).await;
}

#[tokio::test]
async fn environment_variables_set_every_flag() {
    let real = start().await;
    let url = real.http_url(PKG);
    let out = simulate(
        &[],
        &[
            ("QFOTA_SIM_URL", url.as_str()),
            ("QFOTA_SIM_PROFILE", "ec200"),
            ("QFOTA_SIM_UPGRADE_MODE", "0"),
            ("QFOTA_SIM_DOWNLOAD_URC_MAX", "5"),
            ("QFOTA_SIM_UPDATE_URC_MAX", "5"),
            ("QFOTA_SIM_FAULT", "md5"),
            ("QFOTA_SIM_TIMEOUT_SECS", "5"),
            ("QFOTA_SIM_JSON", "true"),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "md5 fails every attempt");
    let lines = stdout_lines(&out);
    assert!(
        lines[0].contains(&format!("AT+QFOTADL=\\\"{url}\\\",0,5,5")),
        "{}",
        lines[0]
    );
    let summary: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(summary["summary"]["profile"], "ec200");
    assert_eq!(
        summary["summary"]["upgrade_codes"],
        serde_json::json!([506, 506, 506, 506, 506])
    );
    let downloading = lines.iter().filter(|l| l.contains("DOWNLOADING")).count();
    assert_eq!(downloading, 5);
    stop(real).await;
}

#[tokio::test]
async fn error_and_failure_codes_exit_1() {
    let real = start().await;
    let missing = real.http_url("missing-v1-to-v2.zip");
    let out = simulate(&[&missing], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_lines(&out).last().unwrap(), &q("\"HTTPEND\",701"));

    let url = real.ftp_url(PKG);
    let out = simulate(&[&url, "--upgrade-mode", "1"], &[]).await;
    assert_eq!(out.status.code(), Some(1), "ec2x takes no parameters");
    assert_eq!(
        stdout_lines(&out),
        vec![format!("AT+QFOTADL=\"{url}\",1"), "ERROR".to_string()]
    );
    stop(real).await;
}

#[tokio::test]
async fn usage_errors_exit_2() {
    for args in [
        &["ftp://h/p.zip", "--fault", "signature"][..],
        &["ftp://h/p.zip", "--profile", "nope"],
        &["ftp://h/p.zip", "--model", "EC25", "--profile", "ec2x"],
        &["ftp://h/p.zip", "--fault", "download-error=608"],
        &["ftp://h/p.zip", "--fota-cid", "0"],
        &["ftp://127.0.0.1/p.zip", "--fault", "dns-fail"],
        &["ftp://h/p.zip", "--fault", "bogus"],
        &["ftp://h/p.zip", "--ca", "/nonexistent/ca.pem"],
    ] {
        let out = simulate(args, &[]).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
        assert!(!out.stderr.is_empty(), "{args:?}: a message on stderr");
    }
}

#[tokio::test]
async fn simulate_runs_local_and_uart_packages() {
    let pkg = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packages/update-v12-to-v13.zip"
    );
    let local = simulate(
        &[
            "/cache/ufs/x-v12-to-v13.zip",
            "--local-file",
            pkg,
            "--profile",
            "eg06xk",
        ],
        &[],
    )
    .await;
    assert!(local.status.success(), "{local:?}");
    let out = stdout_lines(&local);
    assert_eq!(
        out[..3],
        ["AT+QFOTADL=\"/cache/ufs/x-v12-to-v13.zip\"", "OK", "RDY"]
    );
    assert_eq!(out.last().unwrap(), "RDY");
    let uart = simulate(
        &[
            "--uart-file",
            pkg,
            "--profile",
            "ec200",
            "--download-urc-max",
            "5",
        ],
        &[],
    )
    .await;
    assert!(uart.status.success(), "{uart:?}");
    let out = stdout_lines(&uart);
    assert_eq!(out[2], q("\"FILESTART\""));
    assert!(out.contains(&q("\"FILEEND\",0")));
    // A package too large for --free-space is a usage error.
    let full = simulate(
        &["/data/ufs/x.zip", "--local-file", pkg, "--free-space", "10"],
        &[],
    )
    .await;
    assert_eq!(full.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&full.stderr).contains("403"),
        "{full:?}"
    );
}

/// On a terminal (a PTY made by `script`), stderr shows the run's progress
/// — bytes received and rate, then the upgrade — redrawn in place and
/// cleared at the end; the transcript lines are printed whole around it.
#[tokio::test]
async fn a_terminal_shows_the_download_progress() {
    if common::run("sh", &["-c", "command -v script"])
        .await
        .status
        .code()
        != Some(0)
    {
        println!("skipped: needs script (util-linux) for a terminal");
        return;
    }
    let real = start().await;
    let command = format!(
        "QFOTA_SIM_TIME_SCALE=0.002 {} simulate --version v12 {}",
        env!("CARGO_BIN_EXE_qfota-serve"),
        real.http_url(PKG)
    );
    let tty = common::run("script", &["-qec", &command, "/dev/null"]).await;
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert_eq!(tty.status.code(), Some(0), "{shown}");
    let size = real.package_bytes(PKG).len() as f64 / 1024.0;
    assert!(
        shown.contains(&format!("{size:.2} KiB received (")),
        "{shown:?}"
    );
    assert!(shown.contains("\r\x1b[2K"), "{shown:?}");
    assert!(shown.contains(&q("\"HTTPEND\",0")), "{shown:?}");
    assert!(shown.contains(&q("\"END\",0")), "{shown:?}");
    // Without a terminal: the transcript only, no progress.
    let plain = simulate(&["--version", "v12", &real.http_url(PKG)], &[]).await;
    assert!(!String::from_utf8_lossy(&plain.stderr).contains("received ("));
    stop(real).await;
}

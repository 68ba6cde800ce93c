//! Fleet runs against the real server, and the fixture example run as a
//! user would run it.

mod common;

use common::{Fixture, run};
use qfota_serve::dlog::Outcome;
use qfota_serve::profile::Profile;
use qfota_serve::serve::fault::FaultRule;
use qfota_serve::sim::fleet::{FleetConfig, run_fleet};

const PKG: &str = "update-v12-to-v13.zip";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_200_with_a_random_drop_fault_reports_0_and_701() {
    let fault: FaultRule = "drop-after=50%,rate=0.5".parse().unwrap();
    let fx = Fixture::start(move |b| b.fault_seed(3).fault(fault)).await;
    let profile = Profile::for_model("EC25").unwrap();
    let report = run_fleet(&FleetConfig::new(fx.http_url(PKG), profile, 200))
        .await
        .unwrap();
    let (ok, failed) = (report.count("0"), report.count("701"));
    assert!(ok > 0 && failed > 0, "{report:?}");
    assert_eq!(ok + failed, 200, "{report:?}");
    assert!(report.p50_ms <= report.p95_ms && report.p95_ms <= report.p99_ms);
    assert!(report.p99_ms <= report.max_ms);
    // Every module got a first byte; the figures are ordered and each
    // within that module's whole download.
    assert_eq!(report.first_bytes, 200, "{report:?}");
    assert!(report.ttfb_p50_ms <= report.ttfb_p95_ms && report.ttfb_p95_ms <= report.ttfb_p99_ms);
    assert!(report.ttfb_p99_ms <= report.max_ms, "{report:?}");
    assert!(report.throughput_bytes_per_s > 0, "{report:?}");
    // Every module received at least half the package; the full ones more.
    let size = fx.package_bytes(PKG).len() as u64;
    assert!(report.bytes >= 200 * (size / 2), "{report:?}");
    // The server logged one attempt per module, and agrees with the
    // modules: every HTTPEND,0 has a complete record, every cut-short
    // module an aborted record whose acknowledged bytes fall short.
    let logged = fx.wait_records("one per module", 200, |_| true).await;
    assert_eq!(logged.len(), 200);
    let complete: Vec<_> = logged
        .iter()
        .filter(|r| r.outcome == Outcome::Complete)
        .collect();
    let aborted: Vec<_> = logged
        .iter()
        .filter(|r| r.outcome == Outcome::Aborted)
        .collect();
    assert_eq!((complete.len(), aborted.len()), (ok, failed), "{report:?}");
    assert!(
        complete.iter().all(|r| r.bytes_acked == size),
        "{complete:?}"
    );
    assert!(
        aborted
            .iter()
            .all(|r| r.fault.is_some() && r.bytes_acked < size),
        "{aborted:?}"
    );
}

/// Modules the deadline stops are `unfinished`; what they received still
/// counts, and so does when their first byte came; no download time is
/// made up for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_stopped_by_its_deadline_counts_what_it_received() {
    // 1,000 bytes a second: the 7 KB package takes seconds.
    let fault: FaultRule = "slow=1000".parse().unwrap();
    let fx = Fixture::start(move |b| b.fault(fault)).await;
    let profile = Profile::for_model("EC25").unwrap();
    let mut config = FleetConfig::new(fx.http_url(PKG), profile, 3);
    config.deadline = std::time::Duration::from_millis(2500);
    let report = run_fleet(&config).await.unwrap();
    assert_eq!(report.count("unfinished"), 3, "{report:?}");
    assert_eq!(report.timed, 0, "{report:?}");
    // No time is made up: JSON null, not 0 ms.
    assert_eq!((report.p50_ms, report.max_ms), (None, None), "{report:?}");
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["p50_ms"].is_null(), "{json}");
    let size = fx.package_bytes(PKG).len() as u64;
    assert!(report.bytes > 0 && report.bytes < 3 * size, "{report:?}");
    // Each got its first bytes long before the deadline.
    assert_eq!(report.first_bytes, 3, "{report:?}");
    let p99 = report.ttfb_p99_ms.expect("a time to first byte");
    assert!(p99 < 2500, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_cut_by_stall_after_over_ftp_matches_the_server_records() {
    // Every second module's transfer stops after 1,000 bytes until the
    // (short) stall timeout ends it; the modules time out sooner.
    let fault: FaultRule = "stall-after=1000,rate=0.5".parse().unwrap();
    let fx = Fixture::start(move |b| {
        b.fault_seed(5)
            .fault(fault)
            .stall_timeout(std::time::Duration::from_secs(2))
    })
    .await;
    let profile = Profile::for_model("EC25").unwrap();
    let mut config = FleetConfig::new(fx.ftp_url(PKG), profile, 20);
    config.settings.timeout = std::time::Duration::from_secs(1);
    let report = run_fleet(&config).await.unwrap();
    let (ok, failed) = (report.count("0"), report.count("601"));
    assert!(ok > 0 && failed > 0, "{report:?}");
    assert_eq!(ok + failed, 20, "{report:?}");
    let size = fx.package_bytes(PKG).len() as u64;
    let logged = fx
        .wait_records("one RETR record per module", 20, |r| r.bytes_sent > 0)
        .await;
    let complete = logged
        .iter()
        .filter(|r| r.outcome == Outcome::Complete && r.bytes_acked == size)
        .count();
    let cut = logged
        .iter()
        .filter(|r| r.outcome == Outcome::Aborted && r.bytes_acked < size)
        .count();
    assert_eq!((complete, cut), (ok, failed), "{logged:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_command_prints_json_and_exits_0() {
    let fx = Fixture::start(|b| b).await;
    let out = run(
        env!("CARGO_BIN_EXE_qfota-serve"),
        &[
            "fleet",
            &fx.ftp_url(PKG),
            "--modules",
            "12",
            "--concurrency",
            "4",
            "--model",
            "EC200T",
            "--json",
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["modules"], 12);
    assert_eq!(v["codes"]["0"], 12);
    let size = fx.package_bytes(PKG).len() as u64;
    assert_eq!(v["bytes"], 12 * size);
    for key in [
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
        "ttfb_p50_ms",
        "ttfb_p95_ms",
        "ttfb_p99_ms",
        "throughput_bytes_per_s",
    ] {
        assert!(v[key].is_u64(), "{key}: {v}");
    }
    assert_eq!(v["first_bytes"], 12, "{v}");
    // A power cut that loses the download, or an ec200's firmware, is no
    // success and no deadline: `power-cut`, exit 0.
    for fault in ["download-power-cut=50", "power-cut=50"] {
        let out = run(
            env!("CARGO_BIN_EXE_qfota-serve"),
            &[
                "fleet",
                &fx.http_url(PKG),
                "--modules",
                "3",
                "--model",
                "EC200T",
                "--fault",
                fault,
                "--json",
            ],
        )
        .await;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(0), "{fault}: {v}");
        assert_eq!(
            v["codes"],
            serde_json::json!({"power-cut": 3}),
            "{fault}: {v}"
        );
    }
    let out = run(
        env!("CARGO_BIN_EXE_qfota-serve"),
        &["fleet", &fx.ftp_url(PKG), "--modules", "0"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
}

/// Ctrl-C (SIGINT) stops a fleet mid-download: exit 130, no report, and
/// the files its modules spooled their downloads to are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_fleet_leaves_no_spooled_download() {
    let fx = Fixture::start(|b| b).await;
    let tmp = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_qfota-serve"))
        .args([
            "fleet",
            &fx.http_url(common::BIG),
            "--modules",
            "4",
            "--rate",
            "200000",
        ])
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let spooled = || std::fs::read_dir(tmp.path()).unwrap().count();
    common::bounded("spooled downloads", async {
        while spooled() < 4 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let out = common::bounded("the fleet's exit", child.wait_with_output())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    assert!(out.stdout.is_empty(), "no report: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    assert_eq!(spooled(), 0, "spool files left in TMPDIR");
}

/// Off a terminal, `fleet` reports progress as plain lines on stderr and
/// prints the cause behind each non-zero code; on a terminal (a PTY made
/// by `script`) it draws a live bar that it clears before the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_shows_progress_and_the_causes_behind_failing_codes() {
    let fault: FaultRule = "status=503,times=3".parse().unwrap();
    let fx = Fixture::start(move |b| b.fault(fault)).await;
    let url = fx.http_url(PKG);
    let bin = env!("CARGO_BIN_EXE_qfota-serve");
    let args = ["fleet", &url, "--modules", "10"];
    let out = run(bin, &args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // One line per tenth, the last one naming all ten; no control codes.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("fleet: "))
        .collect();
    assert_eq!(lines.len(), 10, "{stderr}");
    assert!(
        lines[9].starts_with("fleet: 10/10 modules ended, 3 failed · "),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\r'),
        "{stderr:?}"
    );
    // The three modules that got 503 share one code and one cause.
    let failing = stdout
        .lines()
        .position(|l| l.starts_with("  code") && !l.ends_with(": 7") && !l.contains(" 0: "))
        .unwrap_or_else(|| panic!("no failing code in {stdout}"));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[failing].ends_with(": 3"), "{stdout}");
    assert!(
        lines[failing + 1].starts_with("      3× download: "),
        "{stdout}"
    );

    if run("sh", &["-c", "command -v script"]).await.status.code() != Some(0) {
        println!("skipped: the terminal part needs script (util-linux)");
        return;
    }
    let command = format!("{bin} fleet {url} --modules 10");
    let tty = run("script", &["-qec", &command, "/dev/null"]).await;
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert_eq!(tty.status.code(), Some(0), "{shown}");
    assert!(shown.contains("/10 modules · "), "{shown:?}");
    // Redrawn in place, then cleared before the report.
    assert!(shown.contains("\r\x1b[2K"), "{shown:?}");
    assert!(!shown.contains("fleet: "), "{shown:?}");
    assert!(shown.contains("10 modules in "), "{shown:?}");
}

/// `examples/fixture.rs` (built by `cargo test`) runs to the end, exit 0.
#[tokio::test]
async fn the_fixture_example_runs_end_to_end() {
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|debug| debug.join("examples").join("fixture"))
        .unwrap();
    assert!(example.is_file(), "{} not built", example.display());
    let out = run(example.to_str().unwrap(), &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("all checks passed"), "{text}");
}

//! The admin listener driven by curl: `/readyz` before and after the
//! server is up and while it stops, `/healthz`, and every control route —
//! `PUT`/`GET /faults` (applied to the next real download), the
//! `/downloads` long-poll woken by a download, `POST /packages/rescan`;
//! `/metrics` and the live campaign (`/campaign`, `/campaign.json`) after
//! real downloads; `/readyz` naming a download log on a full disk.
//! (The 403 for non-loopback peers is unit-tested in `admin`: tests stay
//! on loopback.)

mod common;

use common::{Fixture, bounded, run};
use qfota_serve::admin::Admin;
use std::process::Output;

/// curl `args` against the admin listener at `base`; returns the output
/// (`-w` appends the status code on its own line).
async fn curl(base: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let url = format!("http://{base}{path}");
    let mut args = vec!["-sS", "-w", "\n%{http_code}"];
    args.extend_from_slice(extra);
    args.push(&url);
    split(run("curl", &args).await)
}

fn split(out: Output) -> (u16, String) {
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.parse().expect("status code"), body.to_string())
}

async fn admin() -> Admin {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Admin::start(listener, vec![]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_server_and_health_is_always_up() {
    let admin = admin().await;
    let base = admin.local_addr().to_string();
    assert_eq!(curl(&base, "/healthz", &[]).await, (200, "ok\n".into()));
    let (code, body) = curl(&base, "/readyz", &[]).await;
    assert_eq!(code, 503);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"ready": false, "not_ready": ["listeners", "catalog"]})
    );
    // Control routes need the server.
    assert_eq!(curl(&base, "/faults", &[]).await.0, 503);

    let fx = Fixture::start(|b| b).await;
    admin.set_ready(fx.server.control());
    assert_eq!(
        curl(&base, "/readyz", &[]).await,
        (200, "{\"ready\":true}\n".into())
    );
    admin.set_stopping();
    let (code, body) = curl(&base, "/readyz", &[]).await;
    assert_eq!(
        (code, body.contains("shutting down")),
        (503, true),
        "{body}"
    );
    assert_eq!(curl(&base, "/healthz", &[]).await.0, 200);
    // Metrics keep answering while downloads drain, as OpenMetrics text.
    let (code, body) = curl(&base, "/metrics", &["-D", "-"]).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{body}"
    );
    assert!(body.contains("qfota_connections_open"), "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    assert_eq!(curl(&base, "/faults", &[]).await.0, 503);
    assert_eq!(curl(&base, "/metricz", &[]).await.0, 404);
    bounded("admin shutdown", admin.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_routes_change_faults_stream_records_and_rescan() {
    let fx = Fixture::start(|b| b).await;
    let admin = admin().await;
    admin.set_ready(fx.server.control());
    let base = admin.local_addr().to_string();
    let pkg = fx.http_url("update-v12-to-v13.zip");

    // PUT /faults: the next HTTP download gets 503, then the rules clear.
    let rules = "# one refused attempt\nstatus=503,protocol=http,times=1\n";
    let put = ["-X", "PUT", "--data-binary", rules];
    let (code, body) = curl(&base, "/faults", &put).await;
    assert_eq!(
        (code, body.as_str()),
        (200, "status=503,protocol=http,times=1\n")
    );
    assert_eq!(curl(&base, "/faults", &[]).await.1, body);
    let (code, body) = curl(
        &base,
        "/faults",
        &["-X", "PUT", "--data-binary", "slow=fast"],
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.starts_with("line 1: ") && body.contains("slow=fast"),
        "{body}"
    );
    assert_eq!(
        fx.server.faults().len(),
        1,
        "a refused body changes nothing"
    );
    let status = |out: Output| String::from_utf8_lossy(&out.stdout).into_owned();
    let get = ["-s", "-o", "/dev/null", "-w", "%{http_code}", pkg.as_str()];
    assert_eq!(status(run("curl", &get).await), "503");
    assert_eq!(status(run("curl", &get).await), "200");

    // GET /downloads: both records with their numbers, then a long-poll
    // that a third download wakes.
    let (code, body) = curl(&base, "/downloads?since=0", &[]).await;
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(code, 200);
    assert_eq!(lines.len(), 2, "{body}");
    assert_eq!(
        (&lines[0]["seq"], &lines[0]["status"]),
        (&0.into(), &503.into())
    );
    assert_eq!(lines[0]["fault"], "status=503,protocol=http,times=1");
    assert_eq!(
        (&lines[1]["seq"], &lines[1]["outcome"]),
        (&1.into(), &"complete".into())
    );
    let poll_url = format!("http://{base}/downloads?since=2&timeout_ms=20000");
    let poll = tokio::spawn(async move {
        split(run("curl", &["-sS", "-w", "\n%{http_code}", &poll_url]).await)
    });
    assert_eq!(status(run("curl", &get).await), "200");
    let (code, body) = bounded("long-poll", poll).await.unwrap();
    assert_eq!(code, 200);
    let rec: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!((&rec["seq"], &rec["protocol"]), (&2.into(), &"http".into()));
    let (code, body) = curl(&base, "/downloads?since=3&timeout_ms=10", &[]).await;
    assert_eq!((code, body.as_str()), (200, ""));
    assert_eq!(curl(&base, "/downloads?since=x", &[]).await.0, 400);

    // POST /packages/rescan: a package copied in is served at once.
    let before = fx.server.catalog().packages().len();
    std::fs::copy(
        fx.dir.path().join("update-v12-to-v13.zip"),
        fx.dir.path().join("update-v13-to-v14.zip"),
    )
    .unwrap();
    let (code, body) = curl(&base, "/packages/rescan", &["-X", "POST"]).await;
    let counts: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (code, &counts["packages"]),
        (200, &(before + 1).into()),
        "{body}"
    );
    let new = fx.http_url("update-v13-to-v14.zip");
    // The answer lists it with the URL a module is given.
    let found = counts["found"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["path"] == "update-v13-to-v14.zip")
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(found["urls"]["http"], new.as_str(), "{body}");
    assert_eq!(found["valid"], true, "{body}");
    let get_new = ["-s", "-o", "/dev/null", "-w", "%{http_code}", new.as_str()];
    assert_eq!(status(run("curl", &get_new).await), "200");
    assert_eq!(curl(&base, "/packages/rescan", &[]).await.0, 405);
    bounded("admin shutdown", admin.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_downloads_bytes_and_packages_in_the_prometheus_format() {
    let rule = "status=503,path=/update-*.zip,times=1";
    let fx = Fixture::start(|b| b.fault(rule.parse().unwrap())).await;
    let admin = admin().await;
    admin.set_ready(fx.server.control());
    let base = admin.local_addr().to_string();
    let pkg = fx.http_url("update-v12-to-v13.zip");
    let size = fx.package_bytes("update-v12-to-v13.zip").len();
    // The first download meets the fault rule (503), the second completes.
    let refused = run("curl", &["-sf", "-o", "/dev/null", &pkg]).await;
    assert!(!refused.status.success(), "{refused:?}");
    let got = run("curl", &["-sf", "-o", "/dev/null", &pkg]).await;
    assert!(got.status.success(), "{got:?}");
    let missing = run(
        "curl",
        &["-s", "-o", "/dev/null", &fx.http_url("nope-v1-to-v2.zip")],
    )
    .await;
    assert!(missing.status.success(), "{missing:?}");
    fx.wait_records("three records", 3, |_| true).await;
    let want = [
        "qfota_downloads_total{protocol=\"http\",outcome=\"complete\"} 1".to_string(),
        "qfota_downloads_total{protocol=\"http\",outcome=\"not_found\"} 1".to_string(),
        format!("qfota_body_bytes_acked_total{{protocol=\"http\"}} {size}"),
        "qfota_download_duration_seconds_count{protocol=\"http\"} 1".to_string(),
        "qfota_downloads_total{protocol=\"http\",outcome=\"refused\"} 1".to_string(),
        format!("qfota_fault_rules_applied_total{{rule=\"{rule}\"}} 1"),
        "qfota_log_records_queued 0".to_string(),
        "qfota_log_records_dropped_total 0".to_string(),
        "qfota_log_writable 1".to_string(),
    ];
    // The metrics task counts records as they are broadcast: wait for it.
    let text = common::eventually(
        "the metrics",
        std::time::Duration::from_secs(10),
        || async {
            let (code, text) = curl(&base, "/metrics", &[]).await;
            (code == 200 && want.iter().all(|w| text.contains(w.as_str()))).then_some(text)
        },
    )
    .await;
    assert!(text.contains("# TYPE qfota_downloads counter"), "{text}");
    assert!(text.contains("qfota_packages{state=\"valid\"}"), "{text}");
    // Every package of the fixture was validated (process-wide count).
    let validations: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("qfota_package_validation_seconds_count "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        validations >= fx.server.catalog().packages().len() as u64,
        "{text}"
    );
}

/// The live campaign after real downloads over HTTP and FTP: the JSON has
/// `report --json`'s shape plus the in-memory window; the page reloads
/// itself and shows the rows; filters and bad parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_campaign_counts_real_downloads() {
    let fx = Fixture::start(|b| b).await;
    let admin = admin().await;
    admin.set_ready(fx.server.control());
    let base = admin.local_addr().to_string();
    const PKG: &str = "update-v12-to-v13.zip";
    for url in [
        fx.http_url(PKG),
        fx.ftp_url(PKG),
        fx.http_url("nope-v1-to-v2.zip"),
    ] {
        run("curl", &["-s", "-o", "/dev/null", &url]).await;
    }
    fx.wait_records("three records", 3, |_| true).await;
    let (code, body) = curl(&base, "/campaign.json", &[]).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["attempts"], 3, "{body}");
    assert_eq!(v["window"], serde_json::json!({"kept": 3, "total": 3}));
    assert_eq!(v["packages"][0]["path"], PKG);
    assert_eq!(v["packages"][0]["attempts"], 2);
    // By FTP user, else peer IP: `test` and 127.0.0.1.
    assert_eq!(v["packages"][0]["modules"], 2);
    assert_eq!(v["packages"][0]["outcomes"]["complete"], 2);
    assert_eq!(v["recent"].as_array().unwrap().len(), 3);
    assert!(!v["timeline"]["buckets"].as_array().unwrap().is_empty());

    let (code, body) = curl(&base, "/campaign.json?package=nope-*&recent=1", &[]).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((code, &v["attempts"]), (200, &1.into()), "{body}");
    assert_eq!(v["packages"][0]["top_failures"][0]["outcome"], "not_found");

    let (code, page) = curl(&base, "/campaign?refresh=7", &[]).await;
    assert_eq!(code, 200);
    assert!(page.contains("<meta http-equiv=\"refresh\" content=\"7\">"));
    assert!(
        page.contains(&format!("<tr data-package=\"{PKG}\">")),
        "{page}"
    );
    assert_eq!(page.matches("<tr data-outcome=").count(), 3, "{page}");
    assert!(page.contains("the last 3 of 3 attempts"), "{page}");
    let (code, body) = curl(&base, "/campaign?recent=0", &[]).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("recent=0"), "{body}");
    assert_eq!(curl(&base, "/campaign", &["-X", "POST"]).await.0, 405);
    bounded("admin shutdown", admin.shutdown()).await;
}

/// A download log on a full disk (`/dev/full`: every write is ENOSPC)
/// makes `/readyz` answer 503 naming the log and its error, and
/// `/metrics` show the record queued and the log not writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_a_download_log_that_cannot_be_written() {
    let logs = tempfile::tempdir().unwrap();
    let full = logs.path().join("downloads.jsonl");
    std::os::unix::fs::symlink("/dev/full", &full).unwrap();
    let fx = Fixture::start(|b| b.log_file(&full)).await;
    let admin = admin().await;
    admin.set_ready(fx.server.control());
    let base = admin.local_addr().to_string();
    assert_eq!(curl(&base, "/readyz", &[]).await.0, 200);
    run(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            &fx.http_url("update-v12-to-v13.zip"),
        ],
    )
    .await;
    // The record reaches memory once its write was tried (and failed).
    fx.wait_records("the record", 1, |_| true).await;
    let (code, body) = curl(&base, "/readyz", &[]).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 503, "{body}");
    assert_eq!(v["not_ready"], serde_json::json!(["log"]), "{body}");
    let error = v["log"].as_str().unwrap();
    assert!(error.contains("downloads.jsonl"), "{error}");
    assert!(error.contains("No space left on device"), "{error}");
    let (_, text) = curl(&base, "/metrics", &[]).await;
    assert!(has_line(&text, "qfota_log_writable 0"), "{text}");
    assert!(has_line(&text, "qfota_log_records_queued 1"), "{text}");
    bounded("admin shutdown", admin.shutdown()).await;
}

/// Whether `text` has `line` as a whole line (a sample, not the HELP
/// text that names it).
fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// `/metrics` once `until` holds for the metrics text.
async fn metrics_until(base: &str, what: &str, until: impl Fn(&str) -> bool) -> String {
    bounded(what, async {
        loop {
            let (_, text) = curl(base, "/metrics", &[]).await;
            if until(&text) {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_folder_lost_while_serving_is_reported_and_its_packages_still_served() {
    // The log lives elsewhere, as in a deployment.
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("downloads.jsonl");
    let fx = Fixture::start(|b| b.log_file(&log)).await;
    let admin = admin().await;
    admin.set_ready(fx.server.control());
    let base = admin.local_addr().to_string();
    let (_, text) = curl(&base, "/metrics", &[]).await;
    assert!(has_line(&text, "qfota_package_source_up 1"), "{text}");
    // The folder goes away (an unmounted share, say).
    let moved = fx.dir.path().with_extension("gone");
    std::fs::rename(fx.dir.path(), &moved).unwrap();
    metrics_until(&base, "source_up 0", |t| {
        has_line(t, "qfota_package_source_up 0")
    })
    .await;
    let (code, body) = curl(&base, "/readyz", &[]).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (code, &v["ready"]),
        (200, &serde_json::json!(true)),
        "{body}"
    );
    let why = v["store"].as_str().expect("the folder's state");
    assert!(why.contains(&*fx.dir.path().to_string_lossy()), "{why}");
    // What was read before is still served.
    let http = fx.server.http_addr().unwrap().to_string();
    let served = curl(&http, "/update-v12-to-v13.zip", &["-o", "/dev/null"]).await;
    assert_eq!(served.0, 200);
    std::fs::rename(&moved, fx.dir.path()).unwrap();
    metrics_until(&base, "source_up 1", |t| {
        has_line(t, "qfota_package_source_up 1")
    })
    .await;
    assert_eq!(
        curl(&base, "/readyz", &[]).await,
        (200, "{\"ready\":true}\n".into())
    );
    bounded("admin shutdown", admin.shutdown()).await;
}

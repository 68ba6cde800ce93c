//! Serving from an S3-compatible object store: the real `qfota-serve`
//! binary (`s3://BUCKET/PREFIX --s3-endpoint … --s3-path-style`) against a
//! real store on loopback — `s3s-fs` (the s3s project's file-system S3
//! server, SigV4-checked; `scripts/test` installs it with `cargo install`
//! when missing) — with real clients: curl over HTTP, Python ftplib over
//! FTP, and the `object_store` S3 client putting packages into the bucket.
//!
//! Covered: two replicas serving one bucket over HTTP, HTTPS and FTP,
//! each naming itself in its download records (and `report` over both
//! logs counting each replica apart); a replica restarted on its
//! cache re-validates the cached versions instead of downloading them
//! again; a package replaced in the bucket during a download (that
//! download gets the old bytes whole, the next one the new; records
//! match); a store down at start-up (empty catalog, `/readyz` 503, filled
//! once reached), stopped while serving (cached packages keep being
//! served, `/readyz` names the store) and restarted; a cache bounded below
//! the catalog (evicted packages fetched again); wrong or missing
//! credentials (a clear start-up error); `check s3://…` (the bucket's
//! packages validated, a broken one failing the check, a stopped store an
//! error).

mod common;
#[path = "support/served.rs"]
mod served;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{TEST_CERT, TEST_KEY, bounded, eventually, noise, python, run, sha256, zip_with};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use served::{BIN, Served};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BUCKET: &str = "fota";
const PREFIX: &str = "fleet";
const ACCESS_KEY: &str = "qfota-test-key";
const SECRET_KEY: &str = "qfota-test-secret";

/// A running `s3s-fs` over a temporary folder (one sub-folder per bucket);
/// killed on drop. The folder outlives restarts.
struct Store {
    child: Option<Child>,
    port: u16,
    root: tempfile::TempDir,
}

impl Store {
    /// A store with an empty [`BUCKET`] on a free loopback port.
    async fn start() -> Store {
        let root = tempfile::tempdir().unwrap();
        // s3s-fs keeps a bucket as a folder of its root.
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let (child, port) = spawn_store(root.path(), 0).await;
        Store {
            child: Some(child),
            port,
            root,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the store process.
    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Starts the store again on the same port and folder.
    async fn restart(&mut self) {
        self.stop().await;
        let (child, port) = spawn_store(self.root.path(), self.port).await;
        assert_eq!(port, self.port);
        self.child = Some(child);
    }

    /// The S3 client the tests upload with.
    fn client(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(self.endpoint())
                .with_allow_http(true)
                .with_bucket_name(BUCKET)
                .with_region("us-east-1")
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY)
                .build()
                .unwrap(),
        )
    }

    /// Puts `bytes` at `PREFIX/key`.
    async fn put(&self, key: &str, bytes: &[u8]) {
        let path = StorePath::from(format!("{PREFIX}/{key}"));
        bounded(
            "put into the bucket",
            self.client().put(&path, bytes.to_vec().into()),
        )
        .await
        .unwrap();
    }
}

/// Starts `s3s-fs` on `port` (0 = any) and returns it with the port it
/// announced.
async fn spawn_store(root: &Path, port: u16) -> (Child, u16) {
    let mut child = Command::new("s3s-fs")
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(root)
        .env("RUST_LOG", "s3s_fs=info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("s3s-fs on PATH (scripts/test installs it)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = loop {
        let line = bounded("s3s-fs start", lines.next_line())
            .await
            .unwrap()
            .expect("s3s-fs exited before listening");
        if let Some((_, at)) = line.split_once("server is running at http://127.0.0.1:") {
            let digits: String = at.chars().take_while(char::is_ascii_digit).collect();
            break digits.parse().unwrap();
        }
    };
    // Keep the pipe drained: a full pipe would block the store.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

/// Starts a replica over `store` with HTTP, FTP and the admin listener on
/// free ports.
async fn replica(store: &Store, id: &str, work: &Path, passive: &str) -> Served {
    replica_with(store, id, work, passive, &[]).await
}

/// [`replica`] with `extra` flags.
async fn replica_with(
    store: &Store,
    id: &str,
    work: &Path,
    passive: &str,
    extra: &[&str],
) -> Served {
    replica_at(&store.endpoint(), id, work, passive, extra).await
}

/// [`replica_with`] for the store at `endpoint`; `extra` may name the
/// `--admin` address (else any free port).
async fn replica_at(
    endpoint: &str,
    id: &str,
    work: &Path,
    passive: &str,
    extra: &[&str],
) -> Served {
    let log = work.join(format!("{id}.jsonl"));
    let cache = work.join(format!("{id}-cache"));
    let args = [
        &format!("s3://{BUCKET}/{PREFIX}"),
        "--s3-endpoint",
        endpoint,
        "--s3-path-style",
        "--rescan-secs",
        "1",
        "--instance-id",
        id,
        "--cache-dir",
        &cache.to_string_lossy(),
        "--log",
        &log.to_string_lossy(),
        "--passive-ports",
        passive,
        "--ready-json",
        &work.join(format!("{id}-ready.json")).to_string_lossy(),
    ]
    .map(str::to_string);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend("--http 0 --ftp 0 --bind 127.0.0.1 --user test:test".split(' '));
    if !extra.contains(&"--admin") {
        args.extend(["--admin", "127.0.0.1:0"]);
    }
    args.extend_from_slice(extra);
    Served::start(&args, &credentials(SECRET_KEY)).await
}

fn credentials(secret: &str) -> [(&'static str, &str); 3] {
    [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_REGION", "us-east-1"),
    ]
}

/// `/readyz` of a replica: status and body.
async fn readyz(work: &Path, id: &str) -> (String, serde_json::Value) {
    admin(work, id, "/readyz", &[]).await
}

/// An admin route of a replica (`curl extra… URL`): status and JSON body.
async fn admin(work: &Path, id: &str, route: &str, extra: &[&str]) -> (String, serde_json::Value) {
    let ready = std::fs::read(work.join(format!("{id}-ready.json"))).unwrap();
    let ready: serde_json::Value = serde_json::from_slice(&ready).unwrap();
    admin_at(ready["listeners"]["admin"].as_str().unwrap(), route, extra).await
}

/// An admin route at `addr` (`curl extra… URL`): status and JSON body.
async fn admin_at(addr: &str, route: &str, extra: &[&str]) -> (String, serde_json::Value) {
    let url = format!("http://{addr}{route}");
    let mut args = vec!["-sS", "-w", "\n%{http_code}"];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = run("curl", &args).await;
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_string(), serde_json::from_str(body).unwrap())
}

/// The Prometheus text of a replica's `/metrics`.
async fn metrics(work: &Path, id: &str) -> String {
    let ready = std::fs::read(work.join(format!("{id}-ready.json"))).unwrap();
    let ready: serde_json::Value = serde_json::from_slice(&ready).unwrap();
    let addr = ready["listeners"]["admin"].as_str().unwrap();
    let out = run("curl", &["-fsS", &format!("http://{addr}/metrics")]).await;
    String::from_utf8(out.stdout).unwrap()
}

/// Asserts that a replica's banner counts `counts` packages
/// (`"2 packages, 2 valid"`).
fn assert_catalog(replica: &Served, counts: &str) {
    assert!(replica.banner[0].contains(counts), "{:?}", replica.banner);
}

/// Asserts that a replica serves each `(key, bytes)` over HTTP, exactly.
async fn assert_serves(replica: &Served, packages: &[(&str, &[u8])]) {
    for (key, want) in packages {
        let got = curl_get(&format!("{}/{key}", replica.base("http"))).await;
        assert_eq!(got.as_deref(), Some(*want), "{key}");
    }
}

/// `GET url` with curl; the body, or `None` on failure (404 included).
async fn curl_get(url: &str) -> Option<Vec<u8>> {
    let out = run("curl", &["-sSf", "--max-time", "20", url]).await;
    out.status.success().then_some(out.stdout)
}

/// `RETR` over FTP (Python ftplib, passive mode).
async fn ftp_get(addr: &str, key: &str) -> Vec<u8> {
    const SCRIPT: &str = r#"
import ftplib, sys
host, port = sys.argv[1].rsplit(":", 1)
ftp = ftplib.FTP()
ftp.connect(host, int(port), timeout=20)
ftp.login("test", "test")
chunks = []
ftp.retrbinary("RETR " + sys.argv[2], chunks.append)
ftp.quit()
sys.stdout.buffer.write(b"".join(chunks))
"#;
    let out = python(SCRIPT, &[addr, key]).await;
    assert!(
        out.status.success(),
        "ftplib RETR {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The download records in `log`.
fn records(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("log line is JSON"))
        .collect()
}

/// Waits until `log` holds a record for `path` with `outcome`.
async fn await_record(log: &Path, path: &str, outcome: &str) -> serde_json::Value {
    eventually(
        &format!("{outcome} record for {path}"),
        Duration::from_secs(20),
        || async {
            records(log)
                .into_iter()
                .find(|r| r["path"] == path && r["outcome"] == outcome)
        },
    )
    .await
}

/// The cached `.pkg` files under `dir`, with their inode numbers.
fn cached_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir).unwrap().flatten() {
        for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
            if f.path().extension().is_some_and(|e| e == "pkg") {
                out.push((f.path(), f.metadata().unwrap().ino()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_one_bucket_over_http_and_ftp() {
    let store = Store::start().await;
    let root_pkg = zip_with(&[("system.diff", &noise(50_000, 1))]);
    let jun_pkg = zip_with(&[("boot.diff", &noise(20_000, 2))]);
    store.put("update-v12-to-v13.zip", &root_pkg).await;
    store.put("Jun/fw-v1-to-v2.zip", &jun_pkg).await;
    store.put("broken-v1-to-v2.zip", b"not a zip").await;
    store.put(".staging/next-v2-to-v3.zip", &root_pkg).await;
    let work = tempfile::tempdir().unwrap();
    let https = [
        "--https",
        "0",
        "--tls-cert",
        TEST_CERT,
        "--tls-key",
        TEST_KEY,
    ];
    let (a, b) = tokio::join!(
        replica_with(&store, "eu-1", work.path(), "44000-44499", &https),
        replica(&store, "us-1", work.path(), "44500-44999"),
    );
    for r in [&a, &b] {
        assert_catalog(r, "3 packages, 2 valid");
    }

    let root_url = format!("{}/update-v12-to-v13.zip", a.base("http"));
    let (via_a, via_b) = tokio::join!(
        curl_get(&root_url),
        ftp_get(&b.listeners["ftp"], "Jun/fw-v1-to-v2.zip"),
    );
    assert_eq!(via_a.as_deref(), Some(&root_pkg[..]));
    assert_eq!(via_b, jun_pkg);
    let via_b_http = curl_get(&format!("{}/Jun/fw-v1-to-v2.zip", b.base("http"))).await;
    assert_eq!(via_b_http.as_deref(), Some(&jun_pkg[..]));
    let url = format!("{}/Jun/fw-v1-to-v2.zip", a.base("https"));
    let via_a_https = run("curl", &["-sSfk", &url]).await;
    assert!(via_a_https.status.success(), "{via_a_https:?}");
    assert!(via_a_https.stdout == jun_pkg, "HTTPS body differs");
    // Invalid and hidden objects are not served.
    for key in ["broken-v1-to-v2.zip", ".staging/next-v2-to-v3.zip"] {
        assert_eq!(
            curl_get(&format!("{}/{key}", a.base("http"))).await,
            None,
            "{key}"
        );
    }

    let a_log = work.path().join("eu-1.jsonl");
    let b_log = work.path().join("us-1.jsonl");
    let rec = await_record(&a_log, "update-v12-to-v13.zip", "complete").await;
    assert_eq!(rec["instance"], "eu-1");
    assert_eq!(rec["sha256"], sha256(&root_pkg));
    let rec = await_record(&b_log, "Jun/fw-v1-to-v2.zip", "complete").await;
    assert_eq!(rec["instance"], "us-1");
    assert_eq!(rec["sha256"], sha256(&jun_pkg));
    assert!(records(&b_log).iter().all(|r| r["instance"] == "us-1"));
    // `report` reads the replicas' logs together and counts each apart.
    let (a_path, b_path) = (a_log.to_str().unwrap(), b_log.to_str().unwrap());
    let out = run(BIN, &["report", "--json", a_path, b_path]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let instances = view["instances"].as_array().unwrap();
    let names: Vec<_> = instances.iter().map(|i| i["instance"].clone()).collect();
    assert_eq!(names, ["eu-1", "us-1"], "{view}");
    let per_replica: u64 = instances
        .iter()
        .map(|i| i["attempts"].as_u64().unwrap())
        .sum();
    assert_eq!(per_replica, view["attempts"].as_u64().unwrap());
    assert!(
        instances
            .iter()
            .all(|i| i["outcomes"]["complete"].as_u64() >= Some(1))
    );
    let out = run(BIN, &["report", a_path, b_path]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().any(|l| l.starts_with("replica ")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("us-1 ")), "{table}");

    // A restarted replica re-validates its cached versions by listing
    // (same size, Last-Modified, ETag) instead of downloading them again:
    // the cache files are the very same files.
    let cache = work.path().join("eu-1-cache");
    let before = cached_files(&cache);
    assert_eq!(before.len(), 3, "{before:?}");
    assert_eq!(a.stop().await, Some(0));
    let again = replica(&store, "eu-1", work.path(), "44000-44499").await;
    assert_catalog(&again, "3 packages, 2 valid");
    assert_eq!(cached_files(&cache), before);
    let body = curl_get(&format!("{}/update-v12-to-v13.zip", again.base("http"))).await;
    assert_eq!(body.as_deref(), Some(&root_pkg[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_replaced_during_a_download_is_never_spliced() {
    let store = Store::start().await;
    let v1 = zip_with(&[("system.diff", &noise(1_500_000, 11))]);
    let v2 = zip_with(&[("system.diff", &noise(1_400_000, 12))]);
    const KEY: &str = "update-v12-to-v13.zip";
    store.put(KEY, &v1).await;
    let work = tempfile::tempdir().unwrap();
    // The first download is sent at 1 MB/s (a server fault rule), so it
    // is under way while the package is replaced.
    let slow_first = ["--fault", "slow=1000000,times=1"];
    let r = replica_with(&store, "r1", work.path(), "45000-45499", &slow_first).await;
    let url = format!("{}/{KEY}", r.base("http"));

    // A slow download (about 1.5 s) of v1 …
    let first_out = work.path().join("first");
    let first = {
        let out = first_out.to_string_lossy().into_owned();
        let url = url.clone();
        tokio::spawn(async move { run("curl", &["-sSf", "-o", &out, &url]).await })
    };
    eventually(
        "the first download under way",
        Duration::from_secs(10),
        || async {
            let len = std::fs::metadata(&first_out).map(|m| m.len()).unwrap_or(0);
            (len > 0).then_some(())
        },
    )
    .await;
    // … while v2 replaces it in the bucket and the replica picks it up
    // (listing now, through the admin route, rather than at the next tick).
    store.put(KEY, &v2).await;
    let (code, body) = admin(work.path(), "r1", "/packages/rescan", &["-X", "POST"]).await;
    assert_eq!(code, "200", "{body}");
    let etag2 = format!("\"{}\"", sha256(&v2));
    eventually(
        "the replica serving v2",
        Duration::from_secs(20),
        || async {
            let head = run("curl", &["-sSfI", &url]).await;
            String::from_utf8_lossy(&head.stdout)
                .to_ascii_lowercase()
                .contains(&format!("etag: {etag2}"))
                .then_some(())
        },
    )
    .await;
    let done = bounded("the first download", first).await.unwrap();
    assert!(done.status.success(), "{done:?}");
    let first_body = std::fs::read(&first_out).unwrap();
    assert!(first_body == v1, "the download begun on v1 got other bytes");
    assert_eq!(curl_get(&url).await.as_deref(), Some(&v2[..]));

    // Every complete record's SHA-256 is one whole version's.
    let log = work.path().join("r1.jsonl");
    await_record(&log, KEY, "complete").await;
    let shas: Vec<String> = eventually("both GET records", Duration::from_secs(20), || async {
        let shas: Vec<String> = records(&log)
            .iter()
            .filter(|r| {
                r["outcome"] == "complete"
                    && r["bytes_sent"] == r["size"]
                    && r["size"].as_u64() > Some(0)
            })
            .map(|r| r["sha256"].as_str().unwrap().to_string())
            .collect();
        (shas.len() >= 2).then_some(shas)
    })
    .await;
    assert!(
        shas.contains(&sha256(&v1)) && shas.contains(&sha256(&v2)),
        "{shas:?}"
    );
    assert!(
        shas.iter().all(|s| *s == sha256(&v1) || *s == sha256(&v2)),
        "{shas:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_down_at_start_stopped_and_restarted_is_waited_out() {
    let mut store = Store::start().await;
    let a = zip_with(&[("system.diff", &noise(30_000, 21))]);
    let b = zip_with(&[("system.diff", &noise(30_000, 22))]);
    store.put("a-v1-to-v2.zip", &a).await;
    store.stop().await;

    // Down at start-up: the replica starts and answers, empty, but is not
    // ready — /readyz names the store, the control routes wait, and there
    // is no ready file and no READY=1 — until the store is back.
    let work = tempfile::tempdir().unwrap();
    let admin_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let endpoint = store.endpoint();
    let extra = ["--admin", admin_addr.as_str()];
    let ready_file = work.path().join("r1-ready.json");
    let waited = async {
        let (code, body) = eventually(
            "/readyz naming the store",
            Duration::from_secs(20),
            || async {
                let out = run(
                    "curl",
                    &[
                        "-s",
                        "-w",
                        "\n%{http_code}",
                        &format!("http://{admin_addr}/readyz"),
                    ],
                )
                .await;
                let text = String::from_utf8(out.stdout).unwrap();
                let (body, code) = text.rsplit_once('\n')?;
                // Listening before the server starts: "listeners", then
                // "store" once it is up and waits for the store.
                (code != "000" && body.contains("\"store\""))
                    .then(|| (code.to_string(), body.to_string()))
            },
        )
        .await;
        assert_eq!(code, "503", "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["not_ready"][0], "store", "{body}");
        let faults = format!("http://{admin_addr}/faults");
        let out = run(
            "curl",
            &["-s", "-o", "/dev/null", "-w", "%{http_code}", &faults],
        )
        .await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "503",
            "control routes wait"
        );
        assert!(
            !ready_file.exists(),
            "ready file written before the store was reached"
        );
        store.restart().await;
    };
    let (r, ()) = tokio::join!(
        replica_at(&endpoint, "r1", work.path(), "45500-45999", &extra),
        waited
    );
    let url_a = format!("{}/a-v1-to-v2.zip", r.base("http"));
    // Ready once filled from the store: the package is served from the
    // moment the ready file exists (not a listing later).
    assert_eq!(curl_get(&url_a).await.as_deref(), Some(&a[..]));

    assert_eq!(readyz(work.path(), "r1").await.0, "200");

    // Stopped while serving: what is cached keeps being served, and
    // /readyz says the store is unreachable (still ready).
    store.stop().await;
    let body = eventually(
        "/readyz naming the store",
        Duration::from_secs(20),
        || async {
            let (code, body) = readyz(work.path(), "r1").await;
            (code == "200" && body["store"].is_string()).then_some(body)
        },
    )
    .await;
    assert!(
        body["store"].as_str().unwrap().contains("unreachable"),
        "{body}"
    );
    let down = metrics(work.path(), "r1").await;
    assert!(
        down.lines().any(|l| l == "qfota_package_source_up 0"),
        "{down}"
    );
    for _ in 0..2 {
        assert_eq!(curl_get(&url_a).await.as_deref(), Some(&a[..]));
    }
    // Restarted with a new package: it appears.
    store.restart().await;
    store.put("b-v1-to-v2.zip", &b).await;
    let url_b = format!("{}/b-v1-to-v2.zip", r.base("http"));
    let body = eventually(
        "b served after the restart",
        Duration::from_secs(20),
        || curl_get(&url_b),
    )
    .await;
    assert_eq!(body, b);
    assert_eq!(curl_get(&url_a).await.as_deref(), Some(&a[..]));
    let up = metrics(work.path(), "r1").await;
    // A whole line: the HELP text names the metric with a 1 too.
    assert!(up.lines().any(|l| l == "qfota_package_source_up 1"), "{up}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_credentials_are_a_clear_start_up_error() {
    let store = Store::start().await;
    let work = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        &format!("s3://{BUCKET}/{PREFIX}"),
        "--s3-endpoint",
        &store.endpoint(),
        "--s3-path-style",
        "--http",
        "0",
        "--bind",
        "127.0.0.1",
    ])
    .envs(credentials("not-the-secret"))
    // No shared files: only what the test gives counts.
    .env("AWS_SHARED_CREDENTIALS_FILE", work.path().join("absent"))
    .env("AWS_CONFIG_FILE", work.path().join("absent"))
    .current_dir(work.path())
    .kill_on_drop(true);
    let out = bounded("qfota-serve with wrong credentials", cmd.output())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    assert!(stderr.contains("AWS_SECRET_ACCESS_KEY"), "{stderr}");

    // No credentials at all for a self-hosted store: said at once.
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let out = bounded("qfota-serve without credentials", cmd.output())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("needs AWS_ACCESS_KEY_ID"), "{stderr}");

    // Nor with the endpoint given by AWS_ENDPOINT instead of the flag: no
    // question to a cloud metadata service.
    let mut cmd = Command::new(BIN);
    cmd.args([&format!("s3://{BUCKET}/{PREFIX}"), "--s3-path-style"])
        .args(["--http", "0", "--bind", "127.0.0.1"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_ENDPOINT", store.endpoint())
        .env("AWS_SHARED_CREDENTIALS_FILE", work.path().join("absent"))
        .env("AWS_CONFIG_FILE", work.path().join("absent"))
        .current_dir(work.path())
        .kill_on_drop(true);
    let out = bounded(
        "qfota-serve with AWS_ENDPOINT, no credentials",
        cmd.output(),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("needs AWS_ACCESS_KEY_ID"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_a_profile_of_the_shared_files_reach_the_store() {
    let store = Store::start().await;
    let pkg = zip_with(&[("system.diff", &noise(30_000, 7))]);
    store.put("update-v12-to-v13.zip", &pkg).await;
    let work = tempfile::tempdir().unwrap();
    let creds = work.path().join("credentials");
    let conf = work.path().join("config");
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = nobody\naws_secret_access_key = wrong\n\n\
             [fleet]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        ),
    )
    .unwrap();
    std::fs::write(&conf, "[profile fleet]\nregion = us-east-1\n").unwrap();
    let location = format!("s3://{BUCKET}/{PREFIX}");
    let endpoint = store.endpoint();
    let cache = work.path().join("cache");
    let cache = cache.to_string_lossy();
    let args = [
        location.as_str(),
        "--s3-endpoint",
        &endpoint,
        "--s3-path-style",
        "--cache-dir",
        &cache,
        "--http",
        "0",
        "--bind",
        "127.0.0.1",
    ];
    let creds = creds.to_string_lossy();
    let conf = conf.to_string_lossy();
    // No AWS_ACCESS_KEY_ID: the profile named by AWS_PROFILE is used.
    let served = Served::start(
        &args,
        &[
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SHARED_CREDENTIALS_FILE", &creds),
            ("AWS_CONFIG_FILE", &conf),
            ("AWS_PROFILE", "fleet"),
        ],
    )
    .await;
    let got = curl_get(&format!("{}/update-v12-to-v13.zip", served.base("http"))).await;
    assert_eq!(got.map(|b| sha256(&b)), Some(sha256(&pkg)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_evicted_from_a_small_cache_are_fetched_again() {
    let store = Store::start().await;
    let a = zip_with(&[("system.diff", &noise(30_000, 31))]);
    let b = zip_with(&[("system.diff", &noise(30_000, 32))]);
    store.put("a-v1-to-v2.zip", &a).await;
    store.put("Jun/b-v1-to-v2.zip", &b).await;
    let work = tempfile::tempdir().unwrap();
    // Room for one package only.
    let bound = a.len() + 100;
    let r = replica_with(
        &store,
        "r1",
        work.path(),
        "46000-46499",
        // Downloads read the cache files (no resident copies), so an
        // evicted version must be fetched again.
        &[
            "--cache-max-bytes",
            &bound.to_string(),
            "--package-memory-mib",
            "0",
        ],
    )
    .await;
    assert_catalog(&r, "2 packages, 2 valid");
    let cache = work.path().join("r1-cache");
    for round in 0..2 {
        for (key, want) in [("a-v1-to-v2.zip", &a), ("Jun/b-v1-to-v2.zip", &b)] {
            let got = curl_get(&format!("{}/{key}", r.base("http"))).await;
            assert_eq!(got.as_deref(), Some(&want[..]), "{key}, round {round}");
            let held: u64 = cached_files(&cache)
                .iter()
                .map(|(p, _)| std::fs::metadata(p).unwrap().len())
                .sum();
            assert!(held <= bound as u64, "cache holds {held} bytes");
        }
    }
    // The cache folder deleted under the running replica: made again, and
    // each package fetched anew with its validated bytes.
    std::fs::remove_dir_all(&cache).unwrap();
    for (key, want) in [("a-v1-to-v2.zip", &a), ("Jun/b-v1-to-v2.zip", &b)] {
        let got = curl_get(&format!("{}/{key}", r.base("http"))).await;
        assert_eq!(
            got.as_deref(),
            Some(&want[..]),
            "{key} after the cache was deleted"
        );
    }
    // Eight downloads side by side of versions the cache must fetch again,
    // evicting each other: every one gets its package (fills of one
    // version ran into each other's files: 500s and 503s).
    for round in 0..3 {
        let gets = (0..8).map(|i| {
            let (key, want) = if i % 2 == 0 {
                ("a-v1-to-v2.zip", &a)
            } else {
                ("Jun/b-v1-to-v2.zip", &b)
            };
            let url = format!("{}/{key}", r.base("http"));
            async move { (key, want, curl_get(&url).await) }
        });
        for (key, want, got) in futures_util::future::join_all(gets).await {
            assert_eq!(
                got.as_deref(),
                Some(&want[..]),
                "{key}, side by side, round {round}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_validates_the_packages_of_a_bucket_prefix() {
    let mut store = Store::start().await;
    let good = zip_with(&[("system.diff", &noise(30_000, 3))]);
    store.put("update-v12-to-v13.zip", &good).await;
    let scratch = tempfile::tempdir().unwrap();
    let location = format!("s3://{BUCKET}/{PREFIX}");
    let endpoint = store.endpoint();
    // `qfota-serve check` of the bucket (`--json` or not), run to its end.
    let check = |what: &'static str, json: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["check", &location, "--s3-endpoint", &endpoint])
            .args(["--s3-path-style", "--public-host", "192.0.2.2"])
            .args(json.then_some("--json"))
            .envs(credentials(SECRET_KEY))
            // The check's downloads go to a temporary folder of its own.
            .env("TMPDIR", scratch.path())
            .kill_on_drop(true);
        async move { bounded(what, cmd.output()).await.unwrap() }
    };
    let out = check("check of a valid bucket", false).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("update-v12-to-v13.zip"), "{text}");
    assert!(text.contains(&sha256(&good)), "{text}");
    assert!(text.contains("check passed"), "{text}");

    // A broken package fails the check and is named with why.
    store.put("bad-v1-to-v2.zip", &common::broken_zip()).await;
    let out = check("check of a bucket with a broken zip", true).await;
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = |path: &str| {
        report
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["path"] == path)
            .cloned()
            .unwrap_or_else(|| panic!("{path} in {report}"))
    };
    assert!(entry("bad-v1-to-v2.zip")["problems"][0].is_string());
    assert_eq!(entry("update-v12-to-v13.zip")["sha256"], sha256(&good));
    let left: Vec<_> = std::fs::read_dir(scratch.path()).unwrap().collect();
    assert!(left.is_empty(), "the downloads are removed: {left:?}");

    // A bucket that does not exist is named as such.
    let out = Command::new(BIN)
        .args(["check", "s3://no-such-bucket/x", "--s3-endpoint", &endpoint])
        .arg("--s3-path-style")
        .envs(credentials(SECRET_KEY))
        .kill_on_drop(true)
        .output();
    let out = bounded("check of a missing bucket", out).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no such bucket"), "{stderr}");

    // A store that cannot be reached is an error, not an empty pass.
    store.stop().await;
    let out = check("check of a stopped store", false).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unreachable"), "{stderr}");
}

/// A key the S3 client cannot represent (a tab in it), listed between two
/// packages: skipped with a warning, not a failed listing that would hide
/// every package of the bucket (`check` and a replica list the same way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_key_that_cannot_be_served_does_not_hide_the_others() {
    let store = Store::start().await;
    let first = zip_with(&[("system.diff", &noise(10_000, 5))]);
    let last = zip_with(&[("system.diff", &noise(10_000, 6))]);
    store.put("a-v1-to-v2.zip", &first).await;
    store.put("c-v1-to-v2.zip", &last).await;
    // s3s-fs keeps an object as a file of the bucket's folder.
    let odd = store
        .root
        .path()
        .join(BUCKET)
        .join(PREFIX)
        .join("b\tnotes.txt");
    std::fs::write(&odd, b"a note").unwrap();
    let work = tempfile::tempdir().unwrap();
    let replica = replica(&store, "eu-1", work.path(), "46500-46599").await;
    assert_catalog(&replica, "2 packages, 2 valid");
    assert_serves(
        &replica,
        &[("a-v1-to-v2.zip", &first), ("c-v1-to-v2.zip", &last)],
    )
    .await;
    let (code, body) = readyz(work.path(), "eu-1").await;
    assert_eq!(code, "200", "{body}");
    assert!(
        body.get("store").is_none(),
        "the store is not unreachable: {body}"
    );
}

/// A store that accepts connections and never answers holds the first
/// listing; SIGTERM still stops the replica at once (exit 0), instead of
/// being ignored until the store answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_replica_whose_store_does_not_answer() {
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", hung.local_addr().unwrap());
    let (asked, mut asked_rx) = tokio::sync::mpsc::channel(1);
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = hung.accept().await {
            held.push(conn);
            let _ = asked.try_send(());
        }
    });
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let log = work.path().join("r.jsonl");
    let child = Command::new(BIN)
        .args([
            &format!("s3://{BUCKET}/{PREFIX}"),
            "--s3-endpoint",
            &endpoint,
        ])
        .args(["--s3-path-style", "--http", "0", "--bind", "127.0.0.1"])
        .args([
            "--cache-dir",
            &cache.to_string_lossy(),
            "--log",
            &log.to_string_lossy(),
        ])
        .envs(credentials(SECRET_KEY))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    bounded("the replica asks the store", asked_rx.recv()).await;
    let pid = child.id().unwrap().to_string();
    assert!(run("kill", &["-TERM", &pid]).await.status.success());
    let out = bounded("the replica stops", child.wait_with_output())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("stopped while starting"), "{err}");
    holder.abort();
}

/// Cached copies damaged between two runs of a replica (a byte changed on
/// disk) are fetched again at start-up, not served with other bytes than
/// the store's, nor refused for good as invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_copies_damaged_while_stopped_are_fetched_again() {
    let store = Store::start().await;
    let a = zip_with(&[("system.diff", &noise(20_000, 41))]);
    let b = zip_with(&[("system.diff", &noise(20_000, 42))]);
    store.put("a-v1-to-v2.zip", &a).await;
    store.put("b-v1-to-v2.zip", &b).await;
    let work = tempfile::tempdir().unwrap();
    let first = replica(&store, "eu-1", work.path(), "46600-46699").await;
    assert_catalog(&first, "2 packages, 2 valid");
    assert_eq!(first.stop().await, Some(0));
    // Each cached copy is one of the two packages: change a header byte of
    // a's (still a valid zip, another SHA-256) and a content byte of b's
    // (its CRC no longer matches).
    for (path, _) in cached_files(&work.path().join("eu-1-cache")) {
        if path.extension().is_none_or(|e| e != "pkg") {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let at = if bytes == a { 10 } else { 5_000 };
        bytes[at] ^= 0x55;
        std::fs::write(&path, bytes).unwrap();
    }
    let again = replica(&store, "eu-1", work.path(), "46600-46699").await;
    assert_catalog(&again, "2 packages, 2 valid");
    assert_serves(&again, &[("a-v1-to-v2.zip", &a), ("b-v1-to-v2.zip", &b)]).await;
}

/// Versions cached by an earlier run that the store no longer lists (one
/// replaced, one deleted while the replica was stopped) are deleted at the
/// first listing, not kept until the size bound pushes them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_gone_from_the_store_while_stopped_leave_the_cache() {
    let store = Store::start().await;
    let old = zip_with(&[("system.diff", &noise(10_000, 51))]);
    let new = zip_with(&[("system.diff", &noise(10_000, 52))]);
    store.put("a-v1-to-v2.zip", &old).await;
    store.put("gone-v1-to-v2.zip", &old).await;
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("eu-1-cache");
    let first = replica(&store, "eu-1", work.path(), "46700-46799").await;
    assert_eq!(cached_files(&cache).len(), 2);
    assert_eq!(first.stop().await, Some(0));
    store.put("a-v1-to-v2.zip", &new).await;
    let gone = StorePath::from(format!("{PREFIX}/gone-v1-to-v2.zip"));
    bounded("delete from the bucket", store.client().delete(&gone))
        .await
        .unwrap();
    let again = replica(&store, "eu-1", work.path(), "46700-46799").await;
    assert_catalog(&again, "1 packages, 1 valid");
    let files = cached_files(&cache);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read(&files[0].0).unwrap(), new);
}

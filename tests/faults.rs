//! Server fault rules seen from real clients (curl, Python's ftplib): each
//! action changes what goes over the wire, and the download record names
//! the rule in `fault`.

mod common;

use std::time::Duration;

use common::{BIG, DEADLINE, Fixture, bounded, eventually, python, run, sha256};
use qfota_serve::dlog::Outcome;
use qfota_serve::serve::fault::FaultRule;

const PKG: &str = "update-v12-to-v13.zip";

fn rule(s: &str) -> FaultRule {
    s.parse().unwrap()
}

async fn with_faults(rules: &[&str]) -> Fixture {
    let rules: Vec<FaultRule> = rules.iter().map(|r| rule(r)).collect();
    Fixture::start(move |b| rules.into_iter().fold(b.fault_seed(7), |b, r| b.fault(r))).await
}

/// `curl -sS -o FILE -w '%{http_code}' URL` → (exit code, status, body).
async fn curl(url: &str, extra: &[&str]) -> (i32, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    let f = file.to_string_lossy().into_owned();
    let mut args = vec!["-sS", "-k", "-o", &f, "-w", "%{http_code}"];
    args.extend_from_slice(extra);
    args.push(url);
    let out = run("curl", &args).await;
    let body = std::fs::read(&file).unwrap_or_default();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        body,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_after_percent_closes_mid_body_and_is_logged() {
    let fx = with_faults(&["drop-after=50%,path=/big-*.zip"]).await;
    let size = fx.package_bytes(BIG).len() as u64;
    let (code, status, body) = curl(&fx.http_url(BIG), &[]).await;
    assert_eq!(status, "200");
    assert_eq!(code, 18, "curl: transfer closed with outstanding read data");
    assert_eq!(body.len() as u64, size / 2);
    let rec = fx
        .wait_record("aborted by the drop fault", |r| {
            r.outcome == Outcome::Aborted
        })
        .await;
    assert_eq!(rec.fault.as_deref(), Some("drop-after=50%,path=/big-*.zip"));
    assert_eq!(rec.bytes_sent, size / 2);
    // The rule's path matcher leaves other packages alone.
    let (code, _, body) = curl(&fx.http_url(PKG), &[]).await;
    assert_eq!(code, 0);
    assert_eq!(sha256(&body), sha256(&fx.package_bytes(PKG)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_after_over_ftp_cuts_the_data_connection() {
    let fx = with_faults(&["drop-after=100000,protocol=ftp"]).await;
    let (code, _, body) = curl(&fx.ftp_url(BIG), &[]).await;
    assert_ne!(code, 0);
    assert_eq!(body.len(), 100_000);
    let rec = fx
        .wait_record("ftp drop", |r| r.outcome == Outcome::Aborted)
        .await;
    assert_eq!(rec.bytes_sent, 100_000);
    assert_eq!(rec.fault.as_deref(), Some("drop-after=100000,protocol=ftp"));
    // HTTP is not matched.
    let (code, _, _) = curl(&fx.http_url(BIG), &[]).await;
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_times_hits_only_the_first_attempts() {
    let fx = with_faults(&["status=503,protocol=http,times=2"]).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(curl(&fx.http_url(PKG), &[]).await.1);
    }
    assert_eq!(statuses, ["503", "503", "200"]);
    let faulted = fx
        .wait_records("two faulted attempts", 2, |r| r.fault.is_some())
        .await;
    assert_eq!(faulted.len(), 2);
    // HTTPS is another protocol: untouched.
    assert_eq!(curl(&fx.https_url(PKG), &[]).await.1, "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_status_carries_a_location() {
    let fx = with_faults(&["status=302"]).await;
    let out = run(
        "curl",
        &["-sS", "-D", "-", "-o", "/dev/null", &fx.http_url(PKG)],
    )
    .await;
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 302"), "{head}");
    assert!(head.contains("location: /update-v12-to-v13.zip"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_over_both_protocols() {
    let fx = with_faults(&["not-found,path=/update-*.zip"]).await;
    assert_eq!(curl(&fx.http_url(PKG), &[]).await.1, "404");
    // libunftp answers RETR with 150 before the storage back-end runs, so
    // the 550 comes after an empty data connection (curl says "partial").
    let (code, _, body) = curl(&fx.ftp_url(PKG), &[]).await;
    assert_ne!(code, 0);
    assert!(body.is_empty());
    let recs = fx
        .wait_records("two faulted not_found", 2, |r| {
            r.outcome == Outcome::NotFound && r.fault.is_some()
        })
        .await;
    assert_eq!(recs.len(), 2, "{recs:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_login_answers_530() {
    let fx = with_faults(&["refuse-login,user=test"]).await;
    let (code, _, _) = curl(&fx.ftp_url(PKG), &[]).await;
    assert_eq!(code, 67, "curl: login denied");
    let rec = fx
        .wait_record("refused login", |r| r.outcome == Outcome::AuthFailed)
        .await;
    assert_eq!(rec.status, 530);
    assert_eq!(rec.fault.as_deref(), Some("refuse-login,user=test"));
}

const PASV_TWICE: &str = r#"
import ftplib, sys
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", int(sys.argv[1]), timeout=20)
ftp.login("test", "test")
try:
    ftp.sendcmd("PASV")
    print("first ok")
except ftplib.error_temp as e:
    print("first", str(e)[:3])
data = bytearray()
ftp.retrbinary("RETR update-v12-to-v13.zip", data.extend)
print("second", len(data))
ftp.quit()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftp_reply_on_pasv_once() {
    let fx = with_faults(&["ftp-reply=425,command=PASV,times=1"]).await;
    let out = python(PASV_TWICE, &[&fx.ftp_port().to_string()]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = fx.package_bytes(PKG).len();
    assert_eq!(text, format!("first 425\nsecond {size}\n"));
    // The client asked again and downloaded: one attempt, whose record
    // names the rule that refused its first PASV.
    let rec = fx
        .wait_record("the download", |r| r.outcome == Outcome::Complete)
        .await;
    assert_eq!(
        rec.fault.as_deref(),
        Some("ftp-reply=425,command=PASV,times=1")
    );
    assert_eq!(
        fx.server.downloads().len(),
        1,
        "{:#?}",
        fx.server.downloads()
    );
}

const SIZE_THEN_REFUSED_PASV: &str = r#"
import ftplib, sys
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", int(sys.argv[1]), timeout=20)
ftp.login("test", "test")
ftp.voidcmd("TYPE I")
print(ftp.size("update-v12-to-v13.zip"))
try:
    ftp.sendcmd("PASV")
except ftplib.error_temp as e:
    print(str(e)[:3])
ftp.quit()
"#;

/// A module that asked the size, then had its `PASV` refused by a rule,
/// gives up (ec200: `FTPEND,615`): one attempt, one record, on its
/// package, carrying the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_pasv_after_size_is_one_record_on_the_package() {
    let fx = with_faults(&["ftp-reply=425,command=PASV,times=1"]).await;
    let out = python(SIZE_THEN_REFUSED_PASV, &[&fx.ftp_port().to_string()]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    let size = fx.package_bytes(PKG).len();
    assert_eq!(
        text,
        format!("{size}\n425\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Written at the session's end, with whatever else the session left.
    let rec = fx.wait_record("the refusal", |r| r.status == 425).await;
    assert_eq!(rec.outcome, Outcome::Refused);
    assert_eq!(rec.path, PKG);
    assert_eq!(
        rec.fault.as_deref(),
        Some("ftp-reply=425,command=PASV,times=1")
    );
    assert!(rec.reason.contains("no RETR followed"), "{}", rec.reason);
    assert_eq!(
        fx.server.downloads().len(),
        1,
        "{:#?}",
        fx.server.downloads()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftp_reply_on_connect_and_on_retr() {
    let fx = with_faults(&[
        "ftp-reply=421,command=CONNECT,times=1",
        "ftp-reply=451,command=RETR",
    ])
    .await;
    let (code, _, _) = curl(&fx.ftp_url(PKG), &[]).await;
    assert_ne!(code, 0, "421 greeting refuses the session");
    let (code, _, body) = curl(&fx.ftp_url(PKG), &[]).await;
    assert_ne!(code, 0, "451 on RETR");
    assert!(body.is_empty());
    fx.wait_record("the 421 greeting", |r| r.status == 421)
        .await;
    fx.wait_record("the 451 to RETR", |r| r.status == 451).await;
}

/// A `LIST` rule answers `LIST` with its code; `NLST` gets 550 from
/// libunftp whatever the code, and its record says 550.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftp_reply_on_list_and_what_nlst_gets() {
    let fx = with_faults(&["ftp-reply=450,command=LIST"]).await;
    let script = r#"
import ftplib, json, sys
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", int(sys.argv[1]), timeout=10)
ftp.login("test", "test")
res = {}
for name, call in [("list", lambda: ftp.retrlines("LIST", lambda l: None)),
                   ("nlst", lambda: ftp.nlst())]:
    try:
        call()
        res[name] = "ok"
    except ftplib.all_errors as e:
        res[name] = str(e)[:3]
print(json.dumps(res))
"#;
    let out = python(script, &[&fx.ftp_port().to_string()]).await;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(v, serde_json::json!({"list": "450", "nlst": "550"}));
    let records = fx
        .wait_records("the LIST and NLST refusals", 2, |r| r.fault.is_some())
        .await;
    let codes: Vec<u16> = records.iter().map(|r| r.status).collect();
    assert_eq!(codes, [450, 550], "{records:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_flips_exactly_one_byte() {
    let fx = with_faults(&["corrupt=100"]).await;
    let want = fx.package_bytes(PKG);
    for url in [fx.http_url(PKG), fx.ftp_url(PKG)] {
        let (code, _, got) = curl(&url, &[]).await;
        assert_eq!(code, 0, "{url}");
        assert_eq!(got.len(), want.len());
        let diffs: Vec<usize> = (0..got.len()).filter(|i| got[*i] != want[*i]).collect();
        assert_eq!(diffs, [100], "{url}");
    }
    // A range that starts after the offset is untouched.
    let (_, status, got) = curl(&fx.http_url(PKG), &["-r", "200-299"]).await;
    assert_eq!(status, "206");
    assert_eq!(got, want[200..300]);
}

/// A data rule whose offset the download never reaches changes nothing, so
/// it is not applied: the record names no fault and its `times` is kept
/// for the download it does change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_that_would_change_nothing_is_not_spent() {
    let fx = with_faults(&["corrupt=100,times=1"]).await;
    let want = fx.package_bytes(PKG);
    let (_, status, got) = curl(&fx.http_url(PKG), &["-r", "200-299"]).await;
    assert_eq!(status, "206");
    assert_eq!(got, want[200..300]);
    let untouched = fx
        .wait_record("the range's record", |r| r.range_start == 200)
        .await;
    assert_eq!(untouched.fault, None, "{untouched:?}");
    let (code, _, got) = curl(&fx.http_url(PKG), &[]).await;
    assert_eq!(code, 0);
    let diffs: Vec<usize> = (0..got.len()).filter(|i| got[*i] != want[*i]).collect();
    assert_eq!(diffs, [100]);
    let hit = fx
        .wait_record("the whole download's record", |r| r.range_start == 0)
        .await;
    assert_eq!(hit.fault.as_deref(), Some("corrupt=100,times=1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_after_keeps_the_connection_silent_until_the_client_leaves() {
    // The connection stays silent (a client's FIN may be a half-close:
    // RFC 9112 §9.6, so nothing is sent to probe it); once the kernel says
    // the client closed, the stall ends and the record says so, well
    // before the 20 s stall timeout. Over HTTP, HTTPS with TLS 1.3 (22
    // bytes per record), HTTPS with TLS 1.2 AES-GCM (29) and FTP: the
    // record counts the 1,000 body bytes exactly.
    let fx = Fixture::start(|b| {
        b.fault(rule("stall-after=1000"))
            .stall_timeout(Duration::from_secs(20))
    })
    .await;
    let (http, https, ftp) = (fx.http_url(BIG), fx.https_url(BIG), fx.ftp_url(BIG));
    let tls12 = [
        "--max-time",
        "2",
        "--tls-max",
        "1.2",
        "--ciphers",
        "ECDHE-RSA-AES128-GCM-SHA256",
    ];
    let runs = futures_util::future::join4(
        curl(&http, &["--max-time", "2"]),
        curl(&https, &["--max-time", "2", "--tlsv1.3"]),
        curl(&https, &tls12),
        curl(&ftp, &["--max-time", "2"]),
    )
    .await;
    for (code, _, body) in [runs.0, runs.1, runs.2, runs.3] {
        assert_eq!(code, 28, "curl timed out");
        assert_eq!(body.len(), 1000);
    }
    let recs = fx
        .wait_records("four stalled", 4, |r| r.outcome == Outcome::Aborted)
        .await;
    for rec in recs {
        assert_eq!((rec.bytes_sent, rec.bytes_acked), (1000, 1000), "{rec:?}");
        assert_eq!(rec.fault.as_deref(), Some("stall-after=1000"));
        assert!(
            rec.reason
                .contains("the client closed the connection after"),
            "{rec:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closed_before_the_stall_waits_for_the_stall_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Request, FIN, then reading on (RFC 9112 §9.6): the FIN came before
    // the silence, so it does not end it. The stall starts after 4 MB,
    // more than the sockets hold before the client reads: its FIN is in
    // before the stall however the two are scheduled.
    let fx = Fixture::start(|b| {
        b.fault(rule("stall-after=4000000"))
            .stall_timeout(Duration::from_secs(2))
    })
    .await;
    // A 64 KiB receive buffer, whatever the host's `tcp_rmem`.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut tcp = socket
        .connect(fx.server.http_addr().unwrap())
        .await
        .unwrap();
    let request = format!("GET /{BIG} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut got = Vec::new();
    let _ = common::bounded("the response until the close", tcp.read_to_end(&mut got)).await;
    let rec = fx
        .wait_record("stalled", |r| r.outcome == Outcome::Aborted)
        .await;
    assert_eq!(rec.bytes_sent, 4_000_000);
    let head = got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    assert_eq!(
        head.map(|h| got.len() - h),
        Some(4_000_000),
        "the body up to the stall"
    );
    assert!(rec.reason.contains("stalled for 2 s"), "{rec:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_still_delivers_every_byte() {
    let fx = with_faults(&["slow=100000"]).await;
    let (code, _, body) = curl(&fx.http_url(PKG), &[]).await;
    assert_eq!(code, 0);
    assert_eq!(sha256(&body), sha256(&fx.package_bytes(PKG)));
    let rec = fx
        .wait_record("slow", |r| r.outcome == Outcome::Complete)
        .await;
    assert_eq!(rec.fault.as_deref(), Some("slow=100000"));
}

async fn rate_pattern(seed: u64) -> Vec<String> {
    let fx = Fixture::start(move |b| b.fault_seed(seed).fault(rule("status=503,rate=0.5"))).await;
    let mut out = Vec::new();
    for _ in 0..16 {
        out.push(curl(&fx.http_url(PKG), &[]).await.1);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_is_random_but_repeatable_with_a_seed() {
    let a = rate_pattern(11).await;
    assert!(
        a.iter().any(|s| s == "503") && a.iter().any(|s| s == "200"),
        "{a:?}"
    );
    assert_eq!(a, rate_pattern(11).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_change_at_run_time_and_from_a_watched_file() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "rules = [\"status=503\"]\n").unwrap();
    let path = file.path().to_path_buf();
    let fx = Fixture::start(move |b| b.fault_file(path)).await;
    assert_eq!(curl(&fx.http_url(PKG), &[]).await.1, "503");
    std::fs::write(file.path(), "rules = [\"status=410\"]\n").unwrap();
    eventually("the fault file change", DEADLINE, || async {
        (curl(&fx.http_url(PKG), &[]).await.1 == "410").then_some(())
    })
    .await;
    fx.server.set_faults(vec![]);
    assert_eq!(curl(&fx.http_url(PKG), &[]).await.1, "200");
    assert!(fx.server.faults().is_empty());
}

#[tokio::test]
async fn a_bad_fault_file_is_a_start_up_error() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "rules = [\"explode=1\"]\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = qfota_serve::serve::Server::builder()
        .packages(dir.path())
        .http(0)
        .fault_file(file.path())
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("explode"), "{err}");
}

/// What a simulated module reports for each server fault, by the SPEC §4
/// cause → code table: `ec200`'s detailed code and 601/701 on an EC25.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_server_fault_gives_the_documented_module_code() {
    use qfota_serve::profile::Profile;
    use qfota_serve::sim::Module;

    // (rule, over FTP?, ec200 code, EC25 code)
    let table: &[(&str, bool, u16, u16)] = &[
        ("ftp-reply=425,command=PASV", true, 615, 601),
        ("refuse-login", true, 625, 601),
        ("not-found", true, 627, 601),
        ("drop-after=50%", true, 607, 601),
        ("stall-after=1000", true, 609, 601),
        ("drop-after=50%", false, 719, 701),
        ("status=503", false, 723, 701),
        ("status=302", false, 723, 701),
        ("not-found", false, 723, 701),
        ("stall-after=1000", false, 722, 701),
    ];
    for &(text, ftp, ec200, generic) in table {
        // A short server stall timeout ends `stall-after` transfers (and
        // writes their records) soon after the modules give up.
        let rule: FaultRule = text.parse().unwrap();
        let fx = Fixture::start(move |b| b.fault(rule).stall_timeout(Duration::from_secs(2))).await;
        let url = if ftp {
            fx.ftp_url(PKG)
        } else {
            fx.http_url(PKG)
        };
        for (model, want) in [("EC200T", ec200), ("EC25", generic)] {
            let module = Module::builder(Profile::for_model(model).unwrap())
                .timeout(Duration::from_secs(1))
                .build()
                .unwrap();
            let run = bounded(
                "a module run",
                module.fotadl(&format!("\"{url}\"")).transcript(),
            )
            .await;
            assert_eq!(
                run.summary.download_code,
                Some(want),
                "{text} over {} on {model}: {:?}",
                if ftp { "FTP" } else { "HTTP" },
                run.summary
            );
        }
        let hit = fx
            .wait_record("a faulted attempt", |r| r.fault.as_deref() == Some(text))
            .await;
        assert_eq!(
            hit.protocol.as_str(),
            if ftp { "ftp" } else { "http" },
            "{text}"
        );
    }
}

/// `times=1`: the first module fails, the next one gets the package.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_matcher_fails_only_the_first_module() {
    use qfota_serve::profile::Profile;
    use qfota_serve::sim::Module;
    let fx = with_faults(&["status=503,times=1"]).await;
    let module = Module::builder(Profile::for_model("EC200T").unwrap())
        .build()
        .unwrap();
    let args = format!("\"{}\"", fx.http_url(PKG));
    let first = module.fotadl(&args).transcript().await;
    assert_eq!(first.summary.download_code, Some(723));
    let second = module.fotadl(&args).transcript().await;
    assert!(second.summary.succeeded(), "{:?}", second.summary);
}

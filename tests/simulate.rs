//! End-to-end tests of the module simulator against real servers on
//! 127.0.0.1:0, started inside each test: a hyper HTTP(S) server, a libunftp
//! FTP server over a temporary folder, and a small scripted FTP server for
//! the failures libunftp does not produce. Every await is bounded; nothing
//! sleeps to wait.

use std::future::Future;
use std::time::Duration;

use qfota_serve::profile::Profile;
use qfota_serve::sim::{Fault, FotadlArgs, Module, ModuleBuilder, Transcript};

use fixtures::{FtpServer, HttpServer, Packages, Script, ScriptedFtp, TlsCert};

/// Bound on any single run or server start.
const LIMIT: Duration = Duration::from_secs(30);
/// Module delays: a 20 s reboot takes 10 ms, the upgrade 60 ms.
const SCALE: f64 = 0.0005;
/// Download no-progress timeout in tests about stalls.
const SHORT: Duration = Duration::from_millis(700);

const PKG: &str = "update-v12-to-v13.zip";
const BROKEN: &str = "broken-v12-to-v13.zip";

const FAMILIES: [&str; 5] = ["ec2x", "ep06", "ec200", "eg06xk-dfota", "eg06xk"];

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("finished within the limit")
}

fn builder(profile: &str) -> ModuleBuilder {
    Module::builder(Profile::by_name(profile).unwrap())
        .time_scale(SCALE)
        .timeout(Duration::from_secs(10))
}

fn module(profile: &str) -> Module {
    builder(profile).build().unwrap()
}

async fn run(module: &Module, args: FotadlArgs) -> Transcript {
    within(module.fotadl(&args.to_at_args()).transcript()).await
}

async fn fetch(module: &Module, url: &str) -> Transcript {
    run(module, FotadlArgs::new(url)).await
}

fn q(rest: &str) -> String {
    format!("+QIND: \"FOTA\",{rest}")
}

/// The exact transcript of a successful run (SPEC §3).
fn success_lines(url: &str, ftp: bool, reboot_first: bool) -> Vec<String> {
    let word = if ftp { "FTP" } else { "HTTP" };
    let mut lines = vec![
        format!("AT+QFOTADL=\"{url}\""),
        "OK".to_string(),
        q(&format!("\"{word}START\"")),
        q(&format!("\"{word}END\",0")),
    ];
    if reboot_first {
        lines.push("RDY".to_string());
    }
    lines.push(q("\"START\""));
    lines.extend((1..=100).map(|p| q(&format!("\"UPDATING\",{p}"))));
    lines.push(q("\"END\",0"));
    lines.push("RDY".to_string());
    lines
}

/// Whether the family reboots between the download and `START` (SPEC §3:
/// all but `ec200`, whose default `upgrade_mode` is 1).
fn reboots_first(family: &str) -> bool {
    family != "ec200"
}

fn download_lines(t: &Transcript) -> Vec<String> {
    t.lines().into_iter().skip(1).take(3).collect()
}

#[tokio::test]
async fn success_over_ftp_for_every_family() {
    let packages = Packages::new();
    let ftp = within(FtpServer::start(packages.dir())).await;
    let url = ftp.url("test:test@", PKG);
    let runs = FAMILIES.map(|family| {
        let url = url.clone();
        async move {
            let m = builder(family).version("v12").build().unwrap();
            (family, fetch(&m, &url).await, m.version())
        }
    });
    for (family, t, version) in futures_util::future::join_all(runs).await {
        assert_eq!(
            t.lines(),
            success_lines(&url, true, reboots_first(family)),
            "{family}"
        );
        assert!(t.summary.succeeded(), "{family}");
        assert_eq!(t.summary.download_code, Some(0));
        assert_eq!(t.summary.upgrade_codes, vec![0]);
        assert_eq!(version.as_deref(), Some("v13"), "{family}");
    }
}

#[tokio::test]
async fn success_over_http_for_every_family() {
    let packages = Packages::new();
    let http = within(HttpServer::start(&packages, None)).await;
    let url = http.url(PKG);
    let runs = FAMILIES.map(|family| {
        let url = url.clone();
        async move { (family, fetch(&module(family), &url).await) }
    });
    for (family, t) in futures_util::future::join_all(runs).await {
        assert_eq!(
            t.lines(),
            success_lines(&url, false, reboots_first(family)),
            "{family}"
        );
    }
    // One GET per module, nothing else.
    assert_eq!(http.requests(), vec![format!("/{PKG}"); FAMILIES.len()]);
}

#[tokio::test]
async fn success_over_https_for_every_family() {
    let packages = Packages::new();
    let cert = TlsCert::rsa();
    let https = within(HttpServer::start(&packages, Some(cert.server_config(true)))).await;
    let url = https.url(PKG);
    assert!(url.starts_with("https://"));
    let runs = FAMILIES.map(|family| {
        let url = url.clone();
        async move { (family, fetch(&module(family), &url).await) }
    });
    for (family, t) in futures_util::future::join_all(runs).await {
        assert_eq!(
            t.lines(),
            success_lines(&url, false, reboots_first(family)),
            "{family}"
        );
    }
}

#[tokio::test]
async fn https_verifies_only_when_given_a_ca() {
    let packages = Packages::new();
    let cert = TlsCert::rsa();
    let https = within(HttpServer::start(&packages, Some(cert.server_config(true)))).await;
    let url = https.url(PKG);
    let trusting = builder("ec2x").ca_pem(cert.ca_pem()).build().unwrap();
    assert!(fetch(&trusting, &url).await.summary.succeeded());
    let other = TlsCert::rsa();
    let distrusting = builder("ec200").ca_pem(other.ca_pem()).build().unwrap();
    let t = fetch(&distrusting, &url).await;
    assert_eq!(t.summary.download_code, Some(701), "{:?}", t.summary.notes);
    assert!(
        t.summary.notes.iter().any(|n| n.contains("TLS")),
        "{:?}",
        t.summary.notes
    );
}

#[tokio::test]
async fn https_fails_like_a_module_on_ecdsa_certificates_and_tls13_only() {
    let packages = Packages::new();
    let ecdsa = TlsCert::ecdsa();
    let server = within(HttpServer::start(
        &packages,
        Some(ecdsa.server_config(true)),
    ))
    .await;
    for family in ["ec2x", "ec200"] {
        let t = fetch(&module(family), &server.url(PKG)).await;
        assert_eq!(t.summary.download_code, Some(701), "{family}");
        assert_eq!(t.lines().len(), 4, "no START after HTTPEND,701");
    }
    let rsa = TlsCert::rsa();
    let tls13 = within(HttpServer::start(&packages, Some(rsa.server_config(false)))).await;
    let t = fetch(&module("ec200"), &tls13.url(PKG)).await;
    assert_eq!(t.summary.download_code, Some(701));
}

#[tokio::test]
async fn wrong_ftp_password_is_625_on_ec200_and_601_elsewhere() {
    let packages = Packages::new();
    let ftp = within(FtpServer::start(packages.dir())).await;
    let url = ftp.url("test:wrong@", PKG);
    let t = fetch(&module("ec200"), &url).await;
    assert_eq!(
        download_lines(&t),
        vec!["OK".to_string(), q("\"FTPSTART\""), q("\"FTPEND\",625")]
    );
    assert_eq!(t.lines().len(), 4, "nothing after a failed download");
    assert_eq!(
        fetch(&module("ec2x"), &url).await.summary.download_code,
        Some(601)
    );
}

#[tokio::test]
async fn missing_file_is_627_over_ftp_and_723_over_http_on_ec200() {
    let packages = Packages::new();
    let ftp = within(FtpServer::start(packages.dir())).await;
    let http = within(HttpServer::start(&packages, None)).await;
    let ftp_url = ftp.url("test:test@", "missing.zip");
    let http_url = http.url("missing.zip");
    assert_eq!(
        fetch(&module("ec200"), &ftp_url)
            .await
            .summary
            .download_code,
        Some(627)
    );
    assert_eq!(
        fetch(&module("ep06"), &ftp_url).await.summary.download_code,
        Some(601)
    );
    let t = fetch(&module("ec200"), &http_url).await;
    assert_eq!(download_lines(&t)[2], q("\"HTTPEND\",723"));
    assert_eq!(
        fetch(&module("eg06xk"), &http_url)
            .await
            .summary
            .download_code,
        Some(701)
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let packages = Packages::new();
    let http = within(HttpServer::start(&packages, None)).await;
    let t = fetch(&module("ec200"), &http.url("redirect.zip")).await;
    assert_eq!(t.summary.download_code, Some(723));
    assert_eq!(http.requests(), vec!["/redirect.zip".to_string()]);
}

#[tokio::test]
async fn closed_port_is_605_or_716_on_ec200_and_601_or_701_elsewhere() {
    let port = fixtures::closed_port().await;
    let ftp_url = format!("ftp://test:test@127.0.0.1:{port}/{PKG}");
    let http_url = format!("http://127.0.0.1:{port}/{PKG}");
    assert_eq!(
        fetch(&module("ec200"), &ftp_url)
            .await
            .summary
            .download_code,
        Some(605)
    );
    assert_eq!(
        fetch(&module("ec200"), &http_url)
            .await
            .summary
            .download_code,
        Some(716)
    );
    assert_eq!(
        fetch(&module("ec2x"), &ftp_url).await.summary.download_code,
        Some(601)
    );
    assert_eq!(
        fetch(&module("ec2x"), &http_url)
            .await
            .summary
            .download_code,
        Some(701)
    );
}

#[tokio::test]
async fn unknown_host_is_604_or_714_on_ec200() {
    let ftp_url = format!("ftp://test:test@no-such-host.invalid/{PKG}");
    let http_url = format!("https://no-such-host.invalid/{PKG}");
    assert_eq!(
        fetch(&module("ec200"), &ftp_url)
            .await
            .summary
            .download_code,
        Some(604)
    );
    assert_eq!(
        fetch(&module("ec200"), &http_url)
            .await
            .summary
            .download_code,
        Some(714)
    );
    assert_eq!(
        fetch(&module("eg06xk-dfota"), &ftp_url)
            .await
            .summary
            .download_code,
        Some(601)
    );
}

#[tokio::test]
async fn http_body_dropped_midway_is_719_on_ec200() {
    let packages = Packages::new();
    let http = within(HttpServer::start(&packages, None)).await;
    let url = http.url("drop.zip");
    let t = fetch(&module("ec200"), &url).await;
    assert_eq!(t.summary.download_code, Some(719), "{:?}", t.summary.notes);
    assert_eq!(
        fetch(&module("ec2x"), &url).await.summary.download_code,
        Some(701)
    );
}

#[tokio::test]
async fn http_stalls_are_722_in_the_body_and_728_before_headers() {
    let packages = Packages::new();
    let http = within(HttpServer::start(&packages, None)).await;
    let m = builder("ec200").timeout(SHORT).build().unwrap();
    let t = fetch(&m, &http.url("stall.zip")).await;
    assert_eq!(t.summary.download_code, Some(722), "{:?}", t.summary.notes);
    let t = fetch(&m, &http.url("no-headers.zip")).await;
    assert_eq!(t.summary.download_code, Some(728), "{:?}", t.summary.notes);
}

#[tokio::test]
async fn ftp_data_cut_short_is_607_and_stalled_data_609() {
    let packages = Packages::new();
    let body = packages.bytes(PKG);
    let m = builder("ec200").timeout(SHORT).build().unwrap();
    let short = within(ScriptedFtp::start(Script::TruncateData, body.clone())).await;
    let t = fetch(&m, &short.url(PKG)).await;
    assert_eq!(t.summary.download_code, Some(607), "{:?}", t.summary.notes);
    let stall = within(ScriptedFtp::start(Script::StallData, body.clone())).await;
    let t = fetch(&m, &stall.url(PKG)).await;
    assert_eq!(t.summary.download_code, Some(609), "{:?}", t.summary.notes);
    let generic = builder("ec2x").timeout(SHORT).build().unwrap();
    assert_eq!(
        fetch(&generic, &stall.url(PKG)).await.summary.download_code,
        Some(601)
    );
}

#[tokio::test]
async fn ftp_control_closed_is_606_and_a_421_greeting_614() {
    let packages = Packages::new();
    let body = packages.bytes(PKG);
    let closing = within(ScriptedFtp::start(Script::CloseAtGreeting, body.clone())).await;
    let t = fetch(&module("ec200"), &closing.url(PKG)).await;
    assert_eq!(t.summary.download_code, Some(606), "{:?}", t.summary.notes);
    let busy = within(ScriptedFtp::start(Script::Greeting421, body)).await;
    let t = fetch(&module("ec200"), &busy.url(PKG)).await;
    assert_eq!(t.summary.download_code, Some(614), "{:?}", t.summary.notes);
}

#[tokio::test]
async fn broken_zip_fails_five_attempts_with_504() {
    let packages = Packages::new();
    let http = within(HttpServer::start(&packages, None)).await;
    let m = builder("ec2x").version("v12").build().unwrap();
    let t = fetch(&m, &http.url(BROKEN)).await;
    assert_eq!(t.summary.download_code, Some(0));
    assert_eq!(t.summary.upgrade_codes, vec![504; 5]);
    // Boot after the download, after each of four failed attempts, and
    // into the old firmware at the end.
    assert_eq!(t.summary.boots, 6);
    let lines = t.lines();
    let tail: Vec<&str> = lines[lines.len() - 3..]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(tail, [q("\"START\"").as_str(), &q("\"END\",504"), "RDY"]);
    assert!(!lines.iter().any(|l| l.contains("UPDATING")));
    assert_eq!(m.version().as_deref(), Some("v12"), "old firmware kept");
}

#[tokio::test]
async fn version_mismatch_is_510_and_free_space_511() {
    let packages = Packages::new();
    let ftp = within(FtpServer::start(packages.dir())).await;
    let url = ftp.url("test:test@", PKG);
    let old = builder("ep06").version("v11").build().unwrap();
    let t = fetch(&old, &url).await;
    assert_eq!(t.summary.upgrade_codes, vec![510; 5]);
    assert_eq!(old.version().as_deref(), Some("v11"));
    let full = builder("eg06xk").free_space(1000).build().unwrap();
    assert_eq!(fetch(&full, &url).await.summary.upgrade_codes, vec![511; 5]);
    let roomy = builder("eg06xk")
        .free_space(packages.bytes(PKG).len() as u64)
        .build()
        .unwrap();
    assert_eq!(fetch(&roomy, &url).await.summary.upgrade_codes, vec![0]);
}

#[tokio::test]
async fn ec200_optional_parameters_shape_the_urcs() {
    let packages = Packages::new();
    let http = within(HttpServer::start(&packages, None)).await;
    let url = http.url(PKG);
    let args = FotadlArgs {
        upgrade_mode: Some(1),
        download_urc_max: Some(50),
        update_urc_max: Some(10),
        ..FotadlArgs::new(url.clone())
    };
    let t = run(&module("ec200"), args).await;
    let mut want = vec![
        format!("AT+QFOTADL=\"{url}\",1,50,10"),
        "OK".to_string(),
        q("\"HTTPSTART\""),
    ];
    want.extend((1..=50).map(|k| q(&format!("\"DOWNLOADING\",{k}"))));
    want.push(q("\"HTTPEND\",0"));
    want.push(q("\"START\""));
    want.extend((1..=10).map(|k| q(&format!("\"UPDATING\",{k}"))));
    want.push(q("\"END\",0"));
    want.push("RDY".to_string());
    assert_eq!(t.lines(), want);

    // upgrade_mode 0: reboot before upgrading; update_URC_max 0: silent.
    let args = FotadlArgs {
        upgrade_mode: Some(0),
        update_urc_max: Some(0),
        ..FotadlArgs::new(url.clone())
    };
    let t = run(&module("ec200"), args).await;
    let lines: Vec<String> = t.lines().into_iter().skip(4).collect();
    assert_eq!(
        lines,
        vec![
            "RDY".to_string(),
            q("\"START\""),
            q("\"END\",0"),
            "RDY".into()
        ]
    );
}

#[tokio::test]
async fn bad_commands_get_error_and_no_download() {
    let packages = Packages::new();
    let http = within(HttpServer::start(&packages, None)).await;
    let url = http.url(PKG);
    let bad = [
        (
            "ec2x",
            FotadlArgs {
                upgrade_mode: Some(1),
                ..FotadlArgs::new(url.clone())
            },
        ),
        (
            "ec200",
            FotadlArgs {
                download_urc_max: Some(4),
                ..FotadlArgs::new(url.clone())
            },
        ),
        ("ec200", FotadlArgs::new(format!("{url}\"x"))),
        (
            "eg06xk-dfota",
            FotadlArgs::new(format!("{url}?{}", "a".repeat(100))),
        ),
    ];
    for (family, args) in bad {
        let t = run(&module(family), args.clone()).await;
        assert_eq!(
            t.lines(),
            vec![format!("AT+QFOTADL={}", args.to_at_args()), "ERROR".into()]
        );
    }
    assert!(http.requests().is_empty(), "no request after ERROR");
}

#[tokio::test]
async fn network_down_and_dns_fail_faults() {
    let packages = Packages::new();
    let ftp = within(FtpServer::start(packages.dir())).await;
    let http = within(HttpServer::start(&packages, None)).await;
    let down = builder("ec200").fault(Fault::NetworkDown).build().unwrap();
    assert_eq!(
        fetch(&down, &ftp.url("test:test@", PKG))
            .await
            .summary
            .download_code,
        Some(605)
    );
    assert_eq!(
        fetch(&down, &http.url(PKG)).await.summary.download_code,
        Some(707)
    );
    let generic_down = builder("ec2x").fault(Fault::NetworkDown).build().unwrap();
    assert_eq!(
        fetch(&generic_down, &http.url(PKG))
            .await
            .summary
            .download_code,
        Some(701)
    );
    assert!(
        http.requests().is_empty(),
        "a module without network sends nothing"
    );

    // dns-fail needs a host name: localhost resolves to the loopback server.
    let by_name = http.url(PKG).replace("127.0.0.1", "localhost");
    assert!(fetch(&module("ec200"), &by_name).await.summary.succeeded());
    let no_dns = builder("ec200").fault(Fault::DnsFail).build().unwrap();
    assert_eq!(
        fetch(&no_dns, &by_name).await.summary.download_code,
        Some(714)
    );
    let ftp_by_name = ftp.url("test:test@", PKG).replace("127.0.0.1", "localhost");
    assert_eq!(
        fetch(&no_dns, &ftp_by_name).await.summary.download_code,
        Some(604)
    );
}

#[tokio::test]
async fn power_cut_reboots_and_the_upgrade_still_ends_0() {
    let packages = Packages::new();
    let http = within(HttpServer::start(&packages, None)).await;
    let m = builder("eg06xk")
        .fault("power-cut=50".parse().unwrap())
        .build()
        .unwrap();
    let t = fetch(&m, &http.url(PKG)).await;
    assert_eq!(
        t.summary.upgrade_codes,
        vec![0],
        "a power cut is not a failed attempt"
    );
    let lines = t.lines();
    let at = lines
        .iter()
        .position(|l| *l == q("\"UPDATING\",50"))
        .unwrap();
    assert_eq!(
        lines[at + 1..at + 4],
        ["RDY".to_string(), q("\"START\""), q("\"UPDATING\",50")]
    );
    assert_eq!(t.summary.boots, 3);
    assert_eq!(m.version().as_deref(), Some("v13"));
}

#[tokio::test]
async fn upgrade_error_faults_follow_the_retry_rule() {
    let packages = Packages::new();
    let http = within(HttpServer::start(&packages, None)).await;
    let url = http.url(PKG);
    let twice = builder("ec2x")
        .version("v12")
        .fault("upgrade-error=520x2".parse().unwrap())
        .build()
        .unwrap();
    let t = fetch(&twice, &url).await;
    assert_eq!(t.summary.upgrade_codes, vec![520, 520, 0]);
    assert_eq!(twice.version().as_deref(), Some("v13"));
    let always = builder("ep06")
        .version("v12")
        .fault("upgrade-error=502".parse().unwrap())
        .build()
        .unwrap();
    let t = fetch(&always, &url).await;
    assert_eq!(t.summary.upgrade_codes, vec![502; 5]);
    assert_eq!(always.version().as_deref(), Some("v12"));
    assert!(!t.summary.succeeded());
}

#[tokio::test]
async fn signature_and_md5_faults_on_their_families() {
    let packages = Packages::new();
    let http = within(HttpServer::start(&packages, None)).await;
    let url = http.url(PKG);
    let eg = builder("eg06xk").fault(Fault::Signature).build().unwrap();
    assert_eq!(fetch(&eg, &url).await.summary.upgrade_codes, vec![513; 5]);
    let ec200 = builder("ec200").fault(Fault::Md5).build().unwrap();
    assert_eq!(
        fetch(&ec200, &url).await.summary.upgrade_codes,
        vec![506; 5]
    );
    assert!(builder("ec2x").fault(Fault::Signature).build().is_err());
    assert!(builder("eg06xk").fault(Fault::Md5).build().is_err());
}

/// Real servers for the tests, each stopped when dropped.
mod fixtures {
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::io::Write;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use futures_util::StreamExt;
    use http::header::{CONTENT_LENGTH, LOCATION};
    use http::{Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
    use hyper::body::{Frame, Incoming};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::{JoinHandle, JoinSet};
    use tokio_rustls::TlsAcceptor;
    use unftp_core::auth::{AuthenticationError, Authenticator, Credentials, Principal};

    use super::{BROKEN, PKG};

    /// A temporary packages folder: a valid zip and a broken one.
    pub struct Packages {
        dir: tempfile::TempDir,
    }

    impl Packages {
        pub fn new() -> Packages {
            let dir = tempfile::tempdir().unwrap();
            let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            // Stored, so the package is as large as its content (200 kB).
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            zip.start_file("system.diff", options).unwrap();
            zip.write_all(&vec![0x5a; 200_000]).unwrap();
            zip.start_file("version.txt", options).unwrap();
            zip.write_all(b"v13\n").unwrap();
            let good = zip.finish().unwrap().into_inner();
            std::fs::write(dir.path().join(PKG), &good).unwrap();
            std::fs::write(dir.path().join(BROKEN), b"PK\x03\x04 but not really a zip").unwrap();
            Packages { dir }
        }

        pub fn dir(&self) -> &Path {
            self.dir.path()
        }

        pub fn bytes(&self, name: &str) -> Bytes {
            Bytes::from(std::fs::read(self.dir.path().join(name)).unwrap())
        }

        fn all(&self) -> HashMap<String, Bytes> {
            [PKG, BROKEN]
                .into_iter()
                .map(|n| (n.to_string(), self.bytes(n)))
                .collect()
        }
    }

    /// A port nothing listens on (bound, then released).
    pub async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    /// Stops a server task (and the connections it owns) on drop.
    struct Task(JoinHandle<()>);

    impl Drop for Task {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    type Body = BoxBody<Bytes, std::io::Error>;

    /// HTTP or HTTPS server. Besides the packages it serves `redirect.zip`
    /// (302), `drop.zip` (half the body, then the connection drops),
    /// `stall.zip` (half the body, then nothing), `no-headers.zip` (never
    /// answers) and 404 for anything else.
    pub struct HttpServer {
        addr: SocketAddr,
        tls: bool,
        requests: Arc<Mutex<Vec<String>>>,
        _task: Task,
    }

    impl HttpServer {
        pub async fn start(packages: &Packages, tls: Option<rustls::ServerConfig>) -> HttpServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let files = Arc::new(packages.all());
            let requests = Arc::new(Mutex::new(Vec::new()));
            let seen = Arc::clone(&requests);
            let acceptor = tls.clone().map(|c| TlsAcceptor::from(Arc::new(c)));
            let task = tokio::spawn(async move {
                let mut connections = JoinSet::new();
                while let Ok((tcp, _)) = listener.accept().await {
                    let files = Arc::clone(&files);
                    let seen = Arc::clone(&seen);
                    let acceptor = acceptor.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req| {
                            respond(req, Arc::clone(&files), Arc::clone(&seen))
                        });
                        let http = hyper::server::conn::http1::Builder::new();
                        match acceptor {
                            Some(acceptor) => {
                                if let Ok(stream) = acceptor.accept(tcp).await {
                                    let _ =
                                        http.serve_connection(TokioIo::new(stream), service).await;
                                }
                            }
                            None => {
                                let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                            }
                        }
                    });
                }
            });
            HttpServer {
                addr,
                tls: tls.is_some(),
                requests,
                _task: Task(task),
            }
        }

        pub fn url(&self, name: &str) -> String {
            let scheme = if self.tls { "https" } else { "http" };
            format!("{scheme}://{}/{name}", self.addr)
        }

        /// Request targets received so far.
        pub fn requests(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }
    }

    fn full(status: StatusCode, bytes: Bytes) -> Response<Body> {
        Response::builder()
            .status(status)
            .header(CONTENT_LENGTH, bytes.len())
            .body(Full::new(bytes).map_err(|never| match never {}).boxed())
            .unwrap()
    }

    /// Headers announcing all of `bytes`, a body of the first half, then
    /// `rest` (an error to drop the connection, or nothing ever).
    fn half_then(
        bytes: &Bytes,
        rest: impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>>
        + Send
        + Sync
        + 'static,
    ) -> Response<Body> {
        let half = bytes.slice(..bytes.len() / 2);
        let body = futures_util::stream::iter([Ok(Frame::data(half))]).chain(rest);
        Response::builder()
            .header(CONTENT_LENGTH, bytes.len())
            .body(BodyExt::boxed(StreamBody::new(body)))
            .unwrap()
    }

    async fn respond(
        req: Request<Incoming>,
        files: Arc<HashMap<String, Bytes>>,
        seen: Arc<Mutex<Vec<String>>>,
    ) -> Result<Response<Body>, Infallible> {
        let path = req.uri().path().to_string();
        seen.lock().unwrap().push(path.clone());
        let package = files[PKG].clone();
        Ok(match path.trim_start_matches('/') {
            "redirect.zip" => Response::builder()
                .status(StatusCode::FOUND)
                .header(LOCATION, format!("/{PKG}"))
                .body(
                    Full::new(Bytes::new())
                        .map_err(|never| match never {})
                        .boxed(),
                )
                .unwrap(),
            "drop.zip" => half_then(
                &package,
                futures_util::stream::once(async { Err(std::io::Error::other("dropped")) }),
            ),
            "stall.zip" => half_then(&package, futures_util::stream::pending()),
            "no-headers.zip" => std::future::pending().await,
            name => match files.get(name) {
                Some(bytes) => full(StatusCode::OK, bytes.clone()),
                None => full(StatusCode::NOT_FOUND, Bytes::from_static(b"not found")),
            },
        })
    }

    /// A certificate for 127.0.0.1 and localhost, signed by its own CA.
    pub struct TlsCert {
        ca_pem: String,
        chain: Vec<CertificateDer<'static>>,
        key: Vec<u8>,
    }

    impl TlsCert {
        /// RSA, as modules need (SPEC §7).
        pub fn rsa() -> TlsCert {
            TlsCert::new(&rcgen::PKCS_RSA_SHA256)
        }

        /// ECDSA P-256 (rcgen's default), which modules cannot use.
        pub fn ecdsa() -> TlsCert {
            TlsCert::new(&rcgen::PKCS_ECDSA_P256_SHA256)
        }

        fn new(alg: &'static rcgen::SignatureAlgorithm) -> TlsCert {
            let ca_key = rcgen::KeyPair::generate_for(alg).unwrap();
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca = ca_params.self_signed(&ca_key).unwrap();
            let issuer = rcgen::Issuer::new(ca_params, ca_key);
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            TlsCert {
                ca_pem: ca.pem(),
                chain: vec![leaf.der().clone()],
                key: key.serialize_der(),
            }
        }

        pub fn ca_pem(&self) -> String {
            self.ca_pem.clone()
        }

        /// Server config offering TLS 1.2 and 1.3, or 1.3 only.
        pub fn server_config(&self, tls12: bool) -> rustls::ServerConfig {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
                &[&rustls::version::TLS12, &rustls::version::TLS13]
            } else {
                &[&rustls::version::TLS13]
            };
            rustls::ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(versions)
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    self.chain.clone(),
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone())),
                )
                .unwrap()
        }
    }

    /// Accepts user `test`, password `test`.
    #[derive(Debug)]
    struct TestUser;

    #[async_trait::async_trait]
    impl Authenticator for TestUser {
        async fn authenticate(
            &self,
            username: &str,
            creds: &Credentials,
        ) -> Result<Principal, AuthenticationError> {
            if username == "test" && creds.password.as_deref() == Some("test") {
                Ok(Principal {
                    username: username.to_string(),
                })
            } else {
                Err(AuthenticationError::BadPassword)
            }
        }
    }

    /// libunftp over the packages folder.
    pub struct FtpServer {
        addr: SocketAddr,
        _task: Task,
    }

    impl FtpServer {
        pub async fn start(root: &Path) -> FtpServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let root = root.to_path_buf();
            let task = tokio::spawn(async move {
                let mut sessions = JoinSet::new();
                while let Ok((tcp, _)) = listener.accept().await {
                    let root = root.clone();
                    let server = libunftp::ServerBuilder::with_authenticator(
                        Box::new(move || unftp_sbe_fs::Filesystem::new(root.clone()).unwrap()),
                        Arc::new(TestUser),
                    )
                    .build()
                    .unwrap();
                    sessions.spawn(async move {
                        let _ = server.service(tcp).await;
                    });
                }
            });
            FtpServer {
                addr,
                _task: Task(task),
            }
        }

        /// `ftp://<userinfo>127.0.0.1:<port>/<name>`.
        pub fn url(&self, userinfo: &str, name: &str) -> String {
            format!("ftp://{userinfo}{}/{name}", self.addr)
        }
    }

    /// What the scripted FTP server does wrong.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Script {
        /// Sends half the file, closes the data connection, replies 226.
        TruncateData,
        /// Sends half the file, then nothing.
        StallData,
        /// Closes the control connection before the greeting.
        CloseAtGreeting,
        /// Greets with 421 and closes.
        Greeting421,
    }

    /// A minimal FTP server that follows a [`Script`].
    pub struct ScriptedFtp {
        addr: SocketAddr,
        _task: Task,
    }

    impl ScriptedFtp {
        pub async fn start(script: Script, body: Bytes) -> ScriptedFtp {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let task = tokio::spawn(async move {
                let mut sessions = JoinSet::new();
                while let Ok((tcp, _)) = listener.accept().await {
                    sessions.spawn(session(tcp, script, body.clone()));
                }
            });
            ScriptedFtp {
                addr,
                _task: Task(task),
            }
        }

        pub fn url(&self, name: &str) -> String {
            format!("ftp://test:test@{}/{name}", self.addr)
        }
    }

    async fn session(tcp: TcpStream, script: Script, body: Bytes) {
        let (read, mut write) = tcp.into_split();
        match script {
            Script::CloseAtGreeting => return,
            Script::Greeting421 => {
                let _ = write.write_all(b"421 Too many users\r\n").await;
                return;
            }
            Script::TruncateData | Script::StallData => {}
        }
        let _ = write.write_all(b"220 scripted\r\n").await;
        let mut lines = BufReader::new(read).lines();
        let mut data: Option<TcpListener> = None;
        let mut held = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
            let reply = match verb.as_str() {
                "USER" => "331 password please".to_string(),
                "PASS" => "230 logged in".to_string(),
                "TYPE" => "200 type set".to_string(),
                "SIZE" => format!("213 {}", body.len()),
                "PASV" => {
                    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                    let port = listener.local_addr().unwrap().port();
                    data = Some(listener);
                    format!(
                        "227 Entering Passive Mode (127,0,0,1,{},{})",
                        port >> 8,
                        port & 0xff
                    )
                }
                "RETR" => {
                    let Some(listener) = data.take() else { return };
                    let _ = write.write_all(b"150 sending\r\n").await;
                    let Ok((mut conn, _)) = listener.accept().await else {
                        return;
                    };
                    let _ = conn.write_all(&body[..body.len() / 2]).await;
                    match script {
                        Script::TruncateData => {
                            drop(conn);
                            "226 transfer complete".to_string()
                        }
                        _ => {
                            held.push(conn);
                            std::future::pending::<()>().await;
                            return;
                        }
                    }
                }
                "QUIT" => {
                    let _ = write.write_all(b"221 bye\r\n").await;
                    return;
                }
                _ => "502 not implemented".to_string(),
            };
            if write
                .write_all(format!("{reply}\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

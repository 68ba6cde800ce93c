//! End-to-end tests of the module simulator against the real qfota-serve
//! server (`qfota_serve::serve::Server`, through the shared
//! `tests/common` fixture) on 127.0.0.1 port 0, its fault rules making it
//! misbehave. A few failures the server cannot produce
//! (TLS a module cannot speak, a silent or broken FTP/HTTP peer) come from
//! small real servers started inside the test. Every await is bounded;
//! nothing sleeps to wait.

use std::time::Duration;

mod common;

use common::{Fixture, bounded};
use qfota_serve::dlog::Outcome;
use qfota_serve::profile::Profile;
use qfota_serve::sim::{Fault, FotadlArgs, Module, ModuleBuilder, Transcript};

use fixtures::{RawHttp, Script, ScriptedFtp, Silent, TlsCert, TlsServer};

/// Module delays: a 20 s reboot takes 10 ms, the upgrade 60 ms.
const SCALE: f64 = 0.0005;
/// Download no-progress timeout in tests about stalls.
const SHORT: Duration = Duration::from_millis(700);

/// The sample package of `packages/` (also in `packages/Jun/`).
const PKG: &str = "update-v12-to-v13.zip";
/// Not a zip at all (served with `allow_invalid`).
const BROKEN: &str = "broken-v12-to-v13.zip";

const FAMILIES: [&str; 5] = ["ec2x", "ep06", "ec200", "eg06xk-dfota", "eg06xk"];

fn builder(profile: &str) -> ModuleBuilder {
    Module::builder(Profile::by_name(profile).unwrap())
        .time_scale(SCALE)
        .timeout(Duration::from_secs(10))
}

fn module(profile: &str) -> Module {
    builder(profile).build().unwrap()
}

async fn run(module: &Module, args: FotadlArgs) -> Transcript {
    bounded(
        "a module run",
        module.fotadl(&args.to_at_args()).transcript(),
    )
    .await
}

async fn fetch(module: &Module, url: &str) -> Transcript {
    run(module, FotadlArgs::new(url)).await
}

/// The `FTPEND`/`HTTPEND` code of one run.
async fn code(module: &Module, url: &str) -> Option<u16> {
    fetch(module, url).await.summary.download_code
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

/// Runs every family against `url` at once and checks each transcript.
async fn every_family_succeeds(url: &str, ftp: bool) {
    let runs = FAMILIES.map(|family| async move {
        let m = builder(family).version("v12").build().unwrap();
        (family, fetch(&m, url).await, m.version())
    });
    for (family, t, version) in futures_util::future::join_all(runs).await {
        assert_eq!(
            t.lines(),
            success_lines(url, ftp, reboots_first(family)),
            "{family}: {:?}",
            t.summary.notes
        );
        assert!(t.summary.succeeded(), "{family}");
        assert_eq!(t.summary.upgrade_codes, vec![0], "{family}");
        assert_eq!(version.as_deref(), Some("v13"), "{family}");
    }
}

/// The real server over `packages/` plus a [`BROKEN`] package, with these
/// fault rules; it serves invalid packages too.
async fn real(rules: &[&str]) -> Fixture {
    let dir = common::package_dir();
    common::copy_in(dir.path(), BROKEN, b"PK\x03\x04 not really a zip");
    let rules: Vec<_> = rules.iter().map(|r| r.parse().unwrap()).collect();
    Fixture::start_in(dir, |b| {
        rules
            .into_iter()
            .fold(b.allow_invalid(true), |b, rule| b.fault(rule))
    })
    .await
}

async fn stop(real: Fixture) {
    bounded("server shutdown", real.server.shutdown()).await;
}

/// Size of a package the fixture serves, bytes.
fn size(real: &Fixture, name: &str) -> u64 {
    real.package_bytes(name).len() as u64
}

/// The repository's sample package.
fn sample_package() -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("packages")
            .join(PKG),
    )
    .unwrap()
}

/// The server saw `n` complete downloads of the whole package.
async fn served_completely(real: &Fixture, n: usize) {
    let size = size(real, PKG);
    let done = real
        .wait_records("complete", n, |r| r.outcome == Outcome::Complete)
        .await;
    for r in done {
        assert_eq!((r.bytes_sent, r.size), (size, Some(size)), "{r:?}");
    }
}

/// Every family succeeds at once against a fresh real server at the URL
/// `url_of` gives for [`PKG`], which serves each one the whole package.
async fn every_family_succeeds_on(url_of: fn(&Fixture, &str) -> String, ftp: bool) {
    let real = real(&[]).await;
    every_family_succeeds(&url_of(&real, PKG), ftp).await;
    served_completely(&real, FAMILIES.len()).await;
    stop(real).await;
}

#[tokio::test]
async fn success_over_ftp_for_every_family() {
    every_family_succeeds_on(Fixture::ftp_url, true).await;
}

#[tokio::test]
async fn success_over_http_for_every_family() {
    every_family_succeeds_on(Fixture::http_url, false).await;
}

#[tokio::test]
async fn success_over_https_for_every_family() {
    every_family_succeeds_on(
        |real, rel| {
            let url = real.https_url(rel);
            assert!(url.starts_with("https://"));
            url
        },
        false,
    )
    .await;
}

#[tokio::test]
async fn ftp_sub_folder_works_except_on_ec200() {
    let real = real(&[]).await;
    let url = real.server.ftp_url(&format!("Jun/{PKG}")).unwrap();
    assert!(fetch(&module("ec2x"), &url).await.summary.succeeded());
    let t = fetch(&module("ec200"), &url).await;
    assert_eq!(
        t.lines(),
        vec![format!("AT+QFOTADL=\"{url}\""), "ERROR".into()]
    );
    stop(real).await;
}

#[tokio::test]
async fn https_verifies_the_server_only_when_given_a_ca() {
    let real = real(&[]).await;
    let url = real.https_url(PKG);
    let trusting = builder("ec2x").ca_file(common::TEST_CERT).build().unwrap();
    let t = fetch(&trusting, &url).await;
    assert!(t.summary.succeeded(), "{:?}", t.summary.notes);
    // Any CA that did not sign the server's certificate.
    let stranger = TlsCert::ecdsa();
    let distrusting = builder("ec200").ca_pem(stranger.ca_pem()).build().unwrap();
    let t = fetch(&distrusting, &url).await;
    assert_eq!(t.summary.download_code, Some(701));
    assert!(
        t.summary.notes.iter().any(|n| n.contains("TLS")),
        "{:?}",
        t.summary.notes
    );
    stop(real).await;
}

#[tokio::test]
async fn https_fails_like_a_module_on_ecdsa_certificates_and_tls13_only() {
    let ecdsa = bounded("TLS server", TlsServer::start(TlsCert::ecdsa(), true)).await;
    for family in ["ec2x", "ec200"] {
        let t = fetch(&module(family), &ecdsa.url(PKG)).await;
        assert_eq!(t.summary.download_code, Some(701), "{family}");
        assert_eq!(t.lines().len(), 4, "no START after HTTPEND,701");
    }
    let tls13 = bounded("TLS server", TlsServer::start(TlsCert::rsa(), false)).await;
    assert_eq!(code(&module("ec200"), &tls13.url(PKG)).await, Some(701));
    // The same RSA server with TLS 1.2 on is fine: the failures above are
    // the key type and the protocol version, not the fixture.
    let tls12 = bounded("TLS server", TlsServer::start(TlsCert::rsa(), true)).await;
    assert_eq!(code(&module("ec200"), &tls12.url(PKG)).await, Some(0));
}

#[tokio::test]
async fn wrong_ftp_password_is_625_on_ec200_and_601_elsewhere() {
    let real = real(&[]).await;
    let url = real
        .server
        .ftp_url(PKG)
        .unwrap()
        .replace("test:test@", "test:wrong@");
    let t = fetch(&module("ec200"), &url).await;
    assert_eq!(
        t.lines()[1..],
        ["OK".to_string(), q("\"FTPSTART\""), q("\"FTPEND\",625")]
    );
    assert_eq!(code(&module("ec2x"), &url).await, Some(601));
    real.wait_records("auth failed", 2, |r| r.outcome == Outcome::AuthFailed)
        .await;
    stop(real).await;
}

#[tokio::test]
async fn missing_file_is_627_over_ftp_and_723_over_http_on_ec200() {
    let real = real(&[]).await;
    let ftp = real.ftp_url("missing-v1-to-v2.zip");
    let http = real.http_url("missing-v1-to-v2.zip");
    assert_eq!(code(&module("ec200"), &ftp).await, Some(627));
    assert_eq!(code(&module("ep06"), &ftp).await, Some(601));
    let t = fetch(&module("ec200"), &http).await;
    assert_eq!(t.lines()[3], q("\"HTTPEND\",723"));
    assert_eq!(t.lines().len(), 4, "nothing after a failed download");
    assert_eq!(code(&module("eg06xk"), &http).await, Some(701));
    stop(real).await;
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let real = real(&["status=302,protocol=http"]).await;
    let t = fetch(&module("ec200"), &real.http_url(PKG)).await;
    assert_eq!(t.summary.download_code, Some(723));
    let records = real.wait_records("any", 1, |_| true).await;
    assert_eq!(records[0].status, 302);
    assert_eq!(
        real.server.downloads().len(),
        1,
        "one GET, no second request"
    );
    stop(real).await;
}

#[tokio::test]
async fn closed_port_is_605_or_716_on_ec200_and_601_or_701_elsewhere() {
    let port = bounded("a closed port", fixtures::closed_port()).await;
    let ftp = format!("ftp://test:test@127.0.0.1:{port}/{PKG}");
    let http = format!("http://127.0.0.1:{port}/{PKG}");
    assert_eq!(code(&module("ec200"), &ftp).await, Some(605));
    assert_eq!(code(&module("ec200"), &http).await, Some(716));
    assert_eq!(code(&module("ec2x"), &ftp).await, Some(601));
    assert_eq!(code(&module("ec2x"), &http).await, Some(701));
}

#[tokio::test]
async fn unknown_host_is_604_or_714_on_ec200() {
    let ftp = format!("ftp://test:test@no-such-host.invalid/{PKG}");
    let https = format!("https://no-such-host.invalid/{PKG}");
    assert_eq!(code(&module("ec200"), &ftp).await, Some(604));
    assert_eq!(code(&module("ec200"), &https).await, Some(714));
    assert_eq!(code(&module("eg06xk-dfota"), &ftp).await, Some(601));
    assert_eq!(code(&module("ep06"), &https).await, Some(701));
}

#[tokio::test]
async fn dropped_http_body_is_719_on_ec200() {
    let real = real(&["drop-after=50%"]).await;
    let url = real.http_url(PKG);
    let t = fetch(&module("ec200"), &url).await;
    assert_eq!(t.summary.download_code, Some(719), "{:?}", t.summary.notes);
    assert_eq!(code(&module("ec2x"), &url).await, Some(701));
    stop(real).await;
}

#[tokio::test]
async fn dropped_ftp_data_is_607_on_ec200() {
    let real = real(&["drop-after=50%"]).await;
    let url = real.ftp_url(PKG);
    let t = fetch(&module("ec200"), &url).await;
    // The server closes the data connection early and still answers 226:
    // the module sees fewer bytes than SIZE (SPEC §4: 607).
    let record = real
        .wait_records("aborted", 1, |r| r.outcome == Outcome::Aborted)
        .await;
    assert!(record[0].bytes_sent < size(&real, PKG));
    assert_eq!(record[0].status, 226);
    assert_eq!(t.summary.download_code, Some(607), "{:?}", t.summary);
    assert_eq!(code(&module("eg06xk"), &url).await, Some(601));
    stop(real).await;
}

/// A module uses its package once the transfer's `226` came: a server
/// that never answers `QUIT` does not hold `FTPEND,0` back (the module's
/// 60 s timeout would outlast the test's deadline).
#[tokio::test]
async fn a_server_silent_after_quit_does_not_hold_the_download() {
    let ftp = bounded(
        "FTP server",
        ScriptedFtp::start(Script::SilentQuit, sample_package()),
    )
    .await;
    let m = builder("ec200")
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let t = fetch(&m, &ftp.url(PKG)).await;
    assert_eq!(t.summary.download_code, Some(0), "{:?}", t.summary.notes);
}

/// A chunked body whose framing is broken is a malformed response (ec200:
/// 721, README's table); with `Transfer-Encoding`, `Content-Length` is
/// ignored (RFC 9112 §6.3) and a well-chunked body downloads.
#[tokio::test]
async fn chunked_bodies_are_framed_by_their_chunks() {
    let package = sample_package();
    let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n";
    let broken = RawHttp::start(format!("{head}\r\nzz\r\nabc\r\n0\r\n\r\n").into_bytes()).await;
    let t = fetch(&module("ec200"), &broken.url(PKG)).await;
    assert_eq!(t.summary.download_code, Some(721), "{:?}", t.summary.notes);
    let mut good = format!("{head}Content-Length: 100\r\n\r\n{:x}\r\n", package.len()).into_bytes();
    good.extend_from_slice(&package);
    good.extend_from_slice(b"\r\n0\r\n\r\n");
    let both = RawHttp::start(good).await;
    let t = fetch(&module("ec200"), &both.url(PKG)).await;
    assert_eq!(t.summary.download_code, Some(0), "{:?}", t.summary.notes);
}

/// The version rule reads the package's name as the server does: decoded.
#[tokio::test]
async fn an_encoded_name_is_read_decoded_for_the_version_rule() {
    let real = real(&[]).await;
    let url = real.http_url(PKG).replace("update-v12", "update%2Dv12");
    let m = builder("ec2x").version("v12").build().unwrap();
    let t = fetch(&m, &url).await;
    assert_eq!(t.summary.upgrade_codes, vec![0], "{:?}", t.summary.notes);
    assert_eq!(m.version().as_deref(), Some("v13"));
    stop(real).await;
}

#[tokio::test]
async fn ftp_data_cut_short_after_226_is_607() {
    let body = sample_package();
    let short = bounded("FTP server", ScriptedFtp::start(Script::TruncateData, body)).await;
    let t = fetch(&module("ec200"), &short.url(PKG)).await;
    assert_eq!(t.summary.download_code, Some(607), "{:?}", t.summary.notes);
}

#[tokio::test]
async fn stalls_are_609_over_ftp_and_722_over_http() {
    let real = real(&["stall-after=1000"]).await;
    let m = builder("ec200").timeout(SHORT).build().unwrap();
    let ftp = fetch(&m, &real.ftp_url(PKG)).await;
    assert_eq!(
        ftp.summary.download_code,
        Some(609),
        "{:?}",
        ftp.summary.notes
    );
    let http = fetch(&m, &real.http_url(PKG)).await;
    assert_eq!(
        http.summary.download_code,
        Some(722),
        "{:?}",
        http.summary.notes
    );
    let generic = builder("ec2x").timeout(SHORT).build().unwrap();
    assert_eq!(code(&generic, &real.ftp_url(PKG)).await, Some(601));
    stop(real).await;
}

#[tokio::test]
async fn no_answer_is_609_over_ftp_and_728_over_http() {
    let silent = bounded("silent server", Silent::start()).await;
    let m = builder("ec200").timeout(SHORT).build().unwrap();
    assert_eq!(code(&m, &silent.url("ftp", PKG)).await, Some(609));
    assert_eq!(code(&m, &silent.url("http", PKG)).await, Some(728));
}

#[tokio::test]
async fn ftp_replies_map_to_ec200_codes() {
    let real = real(&[
        "ftp-reply=421,command=CONNECT,times=1",
        "ftp-reply=425,command=PASV,times=1",
        "ftp-reply=451,command=RETR,times=1",
    ])
    .await;
    let url = real.ftp_url(PKG);
    let m = module("ec200");
    // Rules apply in turn: each fits one moment of the session.
    assert_eq!(code(&m, &url).await, Some(614), "421 greeting");
    assert_eq!(code(&m, &url).await, Some(615), "425 to PASV");
    assert_eq!(code(&m, &url).await, Some(618), "451 to RETR");
    assert_eq!(code(&m, &url).await, Some(0));
    stop(real).await;
}

#[tokio::test]
async fn ftp_control_connection_closed_is_606() {
    let closing = bounded(
        "FTP server",
        ScriptedFtp::start(Script::CloseAtGreeting, Vec::new()),
    )
    .await;
    let t = fetch(&module("ec200"), &closing.url(PKG)).await;
    assert_eq!(t.summary.download_code, Some(606), "{:?}", t.summary.notes);
}

#[tokio::test]
async fn broken_zip_fails_five_attempts_with_504() {
    let real = real(&[]).await;
    let m = builder("ec2x").version("v12").build().unwrap();
    let t = fetch(&m, &real.http_url(BROKEN)).await;
    assert_eq!(t.summary.download_code, Some(0));
    assert_eq!(t.summary.upgrade_codes, vec![504; 5]);
    // Boots after the download, after each of four failed attempts, and
    // into the old firmware at the end.
    assert_eq!(t.summary.boots, 6);
    let lines = t.lines();
    assert_eq!(
        lines[lines.len() - 3..],
        [q("\"START\""), q("\"END\",504"), "RDY".to_string()]
    );
    assert!(!lines.iter().any(|l| l.contains("UPDATING")));
    assert_eq!(m.version().as_deref(), Some("v12"), "old firmware kept");
    stop(real).await;
}

#[tokio::test]
async fn a_corrupted_byte_fails_the_crc_with_504() {
    let real = real(&["corrupt=100"]).await;
    let m = module("eg06xk");
    let t = fetch(&m, &real.ftp_url(PKG)).await;
    assert_eq!(t.summary.download_code, Some(0));
    assert_eq!(
        t.summary.upgrade_codes,
        vec![504; 5],
        "{:?}",
        t.summary.notes
    );
    stop(real).await;
}

#[tokio::test]
async fn version_mismatch_is_510_and_free_space_511() {
    let real = real(&[]).await;
    let url = real.ftp_url(PKG);
    let old = builder("ep06").version("v11").build().unwrap();
    assert_eq!(fetch(&old, &url).await.summary.upgrade_codes, vec![510; 5]);
    assert_eq!(old.version().as_deref(), Some("v11"));
    let size = size(&real, PKG);
    let full = builder("eg06xk").free_space(size - 1).build().unwrap();
    assert_eq!(fetch(&full, &url).await.summary.upgrade_codes, vec![511; 5]);
    let roomy = builder("eg06xk").free_space(size).build().unwrap();
    assert_eq!(fetch(&roomy, &url).await.summary.upgrade_codes, vec![0]);
    stop(real).await;
}

/// An `ec200` without room for the package stops after `SIZE`
/// (`FTPEND,611`); the server's record says it asked and took nothing.
#[tokio::test]
async fn ec200_without_room_ends_611_and_the_server_records_the_size_asked() {
    let real = real(&[]).await;
    let size = size(&real, PKG);
    let full = builder("ec200").free_space(size - 1).build().unwrap();
    let t = fetch(&full, &real.ftp_url(PKG)).await;
    assert_eq!(t.summary.download_code, Some(611), "{:?}", t.summary.notes);
    let rec = real
        .wait_record("the SIZE-only session", |r| r.path == PKG)
        .await;
    assert_eq!(
        (rec.status, rec.outcome, rec.bytes_sent),
        (213, Outcome::HeadersOnly, 0)
    );
    assert!(
        rec.reason
            .contains("SIZE answered; the session ended with no RETR"),
        "{rec:?}"
    );
    stop(real).await;
}

#[tokio::test]
async fn ec200_optional_parameters_shape_the_urcs() {
    let real = real(&[]).await;
    let url = real.http_url(PKG);
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
        ..FotadlArgs::new(real.ftp_url(PKG))
    };
    let t = run(&module("ec200"), args).await;
    assert_eq!(
        t.lines()[2..],
        [
            q("\"FTPSTART\""),
            q("\"FTPEND\",0"),
            "RDY".to_string(),
            q("\"START\""),
            q("\"END\",0"),
            "RDY".to_string()
        ]
    );
    stop(real).await;
}

#[tokio::test]
async fn bad_commands_get_error_and_no_download() {
    let real = real(&[]).await;
    let url = real.http_url(PKG);
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
    assert!(real.server.downloads().is_empty(), "no request after ERROR");
    stop(real).await;
}

#[tokio::test]
async fn network_down_and_dns_fail_faults() {
    let real = real(&[]).await;
    let ftp = real.ftp_url(PKG);
    let http = real.http_url(PKG);
    let down = builder("ec200").fault(Fault::NetworkDown).build().unwrap();
    assert_eq!(code(&down, &ftp).await, Some(605));
    assert_eq!(code(&down, &http).await, Some(707));
    let generic = builder("ec2x").fault(Fault::NetworkDown).build().unwrap();
    assert_eq!(code(&generic, &http).await, Some(701));
    assert!(real.server.downloads().is_empty(), "no network, no request");

    // dns-fail needs a host name: localhost resolves to the loopback server.
    let http_by_name = http.replace("127.0.0.1", "localhost");
    assert_eq!(code(&module("ec200"), &http_by_name).await, Some(0));
    let no_dns = builder("ec200").fault(Fault::DnsFail).build().unwrap();
    assert_eq!(code(&no_dns, &http_by_name).await, Some(714));
    assert_eq!(
        code(&no_dns, &ftp.replace("127.0.0.1", "localhost")).await,
        Some(604)
    );
    stop(real).await;
}

#[tokio::test]
async fn power_cut_reboots_and_the_upgrade_still_ends_0() {
    let real = real(&[]).await;
    let m = builder("eg06xk")
        .version("v12")
        .fault("power-cut=50".parse().unwrap())
        .build()
        .unwrap();
    let t = fetch(&m, &real.http_url(PKG)).await;
    assert_eq!(t.summary.upgrade_codes, vec![0], "not a failed attempt");
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
    stop(real).await;
}

#[tokio::test]
async fn upgrade_error_faults_follow_the_retry_rule() {
    let real = real(&[]).await;
    let url = real.http_url(PKG);
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
    // eg06xk-dfota's 505 (version mismatch) is checked before recovery
    // mode and never retried: an injected one takes that path too — one
    // END,505, no START, the module stays on its version.
    let mismatch = builder("eg06xk-dfota")
        .version("v12")
        .fault("upgrade-error=505".parse().unwrap())
        .build()
        .unwrap();
    let t = fetch(&mismatch, &url).await;
    assert_eq!(t.summary.upgrade_codes, vec![505], "{:?}", t.lines());
    assert!(
        !t.lines().iter().any(|l| l.contains("\"START\"")),
        "{:?}",
        t.lines()
    );
    assert_eq!(mismatch.version().as_deref(), Some("v12"));
    stop(real).await;
}

#[tokio::test]
async fn signature_and_md5_faults_on_their_families() {
    let real = real(&[]).await;
    let url = real.http_url(PKG);
    let eg = builder("eg06xk").fault(Fault::Signature).build().unwrap();
    assert_eq!(fetch(&eg, &url).await.summary.upgrade_codes, vec![513; 5]);
    let ec200 = builder("ec200").fault(Fault::Md5).build().unwrap();
    assert_eq!(
        fetch(&ec200, &url).await.summary.upgrade_codes,
        vec![506; 5]
    );
    assert!(builder("ec2x").fault(Fault::Signature).build().is_err());
    assert!(builder("eg06xk").fault(Fault::Md5).build().is_err());
    stop(real).await;
}

/// Servers for the tests, each stopped when dropped.
mod fixtures {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use bytes::Bytes;
    use http::header::CONTENT_LENGTH;
    use http::{Request, Response};
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::{JoinHandle, JoinSet};
    use tokio_rustls::TlsAcceptor;

    use super::sample_package;

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

    /// Accepts connections and never says a word.
    pub struct Silent {
        addr: SocketAddr,
        _task: Task,
    }

    impl Silent {
        pub async fn start() -> Silent {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let task = tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((tcp, _)) = listener.accept().await {
                    held.push(tcp);
                }
            });
            Silent {
                addr,
                _task: Task(task),
            }
        }

        pub fn url(&self, scheme: &str, name: &str) -> String {
            format!("{scheme}://{}/{name}", self.addr)
        }
    }

    /// A certificate for 127.0.0.1 and localhost, and the CA that vouches
    /// for it.
    pub struct TlsCert {
        ca_pem: String,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    }

    impl TlsCert {
        /// RSA, as modules need (SPEC §7): the shipped test certificate of
        /// `tests/fixtures/` (self-signed, so its own CA), which spares the
        /// tests an RSA key generation.
        pub fn rsa() -> TlsCert {
            let pem = std::fs::read_to_string(crate::common::TEST_CERT).unwrap();
            TlsCert {
                chain: vec![CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()],
                ca_pem: pem,
                key: PrivateKeyDer::from_pem_file(crate::common::TEST_KEY).unwrap(),
            }
        }

        /// ECDSA P-256 (rcgen's default), which modules cannot use; signed
        /// by a CA of its own, made afresh (ECDSA keys are cheap).
        pub fn ecdsa() -> TlsCert {
            let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
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
                key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            }
        }

        pub fn ca_pem(&self) -> String {
            self.ca_pem.clone()
        }

        /// Server config offering TLS 1.2 and 1.3, or 1.3 only.
        fn server_config(&self, tls12: bool) -> rustls::ServerConfig {
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
                .with_single_cert(self.chain.clone(), self.key.clone_key())
                .unwrap()
        }
    }

    /// An HTTPS server (hyper + rustls) serving the sample package, with a
    /// TLS setup the real server would never use.
    pub struct TlsServer {
        addr: SocketAddr,
        _task: Task,
    }

    impl TlsServer {
        pub async fn start(cert: TlsCert, tls12: bool) -> TlsServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let acceptor = TlsAcceptor::from(Arc::new(cert.server_config(tls12)));
            let package = Bytes::from(sample_package());
            let task = tokio::spawn(async move {
                let mut connections = JoinSet::new();
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    let package = package.clone();
                    connections.spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = service_fn(move |_req: Request<Incoming>| {
                            let package = package.clone();
                            async move {
                                Ok::<_, Infallible>(
                                    Response::builder()
                                        .header(CONTENT_LENGTH, package.len())
                                        .body(Full::new(package))
                                        .unwrap(),
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
            TlsServer {
                addr,
                _task: Task(task),
            }
        }

        pub fn url(&self, name: &str) -> String {
            format!("https://{}/{name}", self.addr)
        }
    }

    /// What the scripted FTP server does wrong.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Script {
        /// Sends half the file, closes the data connection, replies 226.
        TruncateData,
        /// Closes the control connection before the greeting.
        CloseAtGreeting,
        /// Sends the whole file and 226, then never answers `QUIT`.
        SilentQuit,
    }

    /// An HTTP server that answers every connection with `response`, as
    /// given (a broken or unusual one), then closes.
    pub struct RawHttp {
        addr: SocketAddr,
        _task: Task,
    }

    impl RawHttp {
        pub async fn start(response: Vec<u8>) -> RawHttp {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let task = tokio::spawn(async move {
                let mut connections = JoinSet::new();
                while let Ok((tcp, _)) = listener.accept().await {
                    let response = response.clone();
                    connections.spawn(async move {
                        let (read, mut write) = tcp.into_split();
                        let mut lines = BufReader::new(read).lines();
                        // The request's head, up to its empty line.
                        while let Ok(Some(line)) = lines.next_line().await {
                            if line.is_empty() {
                                break;
                            }
                        }
                        let _ = write.write_all(&response).await;
                        let _ = write.shutdown().await;
                    });
                }
            });
            RawHttp {
                addr,
                _task: Task(task),
            }
        }

        pub fn url(&self, name: &str) -> String {
            format!("http://{}/{name}", self.addr)
        }
    }

    /// A minimal FTP server that follows a [`Script`].
    pub struct ScriptedFtp {
        addr: SocketAddr,
        _task: Task,
    }

    impl ScriptedFtp {
        pub async fn start(script: Script, body: Vec<u8>) -> ScriptedFtp {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let body = Bytes::from(body);
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
        if script == Script::CloseAtGreeting {
            return;
        }
        let (read, mut write) = tcp.into_split();
        let _ = write.write_all(b"220 scripted\r\n").await;
        let mut lines = BufReader::new(read).lines();
        let mut data: Option<TcpListener> = None;
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
                    let sent = if script == Script::TruncateData {
                        body.len() / 2
                    } else {
                        body.len()
                    };
                    let _ = conn.write_all(&body[..sent]).await;
                    drop(conn);
                    "226 transfer complete".to_string()
                }
                "QUIT" if script == Script::SilentQuit => {
                    // Holds the session open, silent, until the test ends.
                    std::future::pending::<()>().await;
                    return;
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

/// Over IPv6 the simulated module asks for its data connection with
/// `EPSV` (RFC 2428): `PASV` has no IPv6 answer, and the server closes the
/// session on it. Skipped where the machine has no IPv6 loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftp_over_ipv6_downloads_with_epsv() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    }
    let fx = Fixture::start(|b| b.bind("::".parse().unwrap())).await;
    let port = fx.server.ftp_addr().unwrap().port();
    let url = format!("ftp://test:test@[::1]:{port}/{PKG}");
    assert_eq!(code(&module("ec2x"), &url).await, Some(0));
}

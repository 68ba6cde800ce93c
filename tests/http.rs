//! End-to-end tests of the HTTP and HTTPS front-ends: the real server on
//! 127.0.0.1 port 0 (see `common::Fixture`) driven by `curl`,
//! `openssl s_client` / `openssl x509`, and raw TCP sockets where a client
//! would normalise or refuse to send the request (path traversal, garbage,
//! a download dropped part-way).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{BIG, Fixture, bounded, eventually};
use qfota_serve::catalog::Lookup;
use qfota_serve::dlog::{Outcome, Protocol};
use qfota_serve::serve::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The sample package at the folder root.
const PKG: &str = "update-v12-to-v13.zip";
/// The sample package in a sub-folder.
const JUN_PKG: &str = "Jun/update-v12-to-v13.zip";
/// The catalog promises a change is served within 2 s (1 s scan interval);
/// half a second of slack for a loaded test machine.
const PICKUP: Duration = Duration::from_millis(2500);

/// One HTTP response as a client saw it.
#[derive(Debug, Default)]
struct Reply {
    status: u16,
    /// Header names as sent, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the framing modules rely on: an exact `Content-Length` that
    /// matches `expected`, and never chunked encoding.
    fn assert_length(&self, expected: u64) {
        assert_eq!(
            self.header("content-length"),
            Some(expected.to_string().as_str()),
            "Content-Length in {self:#?}"
        );
        assert!(
            self.header("transfer-encoding").is_none(),
            "Transfer-Encoding in {:?}",
            self.headers
        );
    }
}

/// Parses one header block (status line and fields).
fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    (status, headers)
}

/// What a `curl` run produced.
#[derive(Debug)]
struct CurlRun {
    reply: Reply,
    /// `-w` output (the body goes to a file).
    stdout: String,
    /// `-v` trace, error messages.
    stderr: String,
    exit: Option<i32>,
}

/// Runs `curl -sS -D <headers> -o <body> <args…>`; the reply is the last
/// header block (after any `100 Continue`) and the body file. With `-I` the
/// body file holds the headers again, not a body.
async fn curl(args: &[&str]) -> CurlRun {
    let tmp = tempfile::tempdir().unwrap();
    let head_path = tmp.path().join("headers");
    let body_path = tmp.path().join("body");
    let mut all = vec![
        "-sS",
        "-D",
        head_path.to_str().unwrap(),
        "-o",
        body_path.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let out = common::run("curl", &all).await;
    let head = std::fs::read_to_string(&head_path).unwrap_or_default();
    let reply = match head
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
    {
        Some(block) => {
            let (status, headers) = parse_head(block);
            Reply {
                status,
                headers,
                body: std::fs::read(&body_path).unwrap_or_default(),
            }
        }
        None => Reply::default(),
    };
    CurlRun {
        reply,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exit: out.status.code(),
    }
}

/// `curl` that must succeed (exit 0); returns the reply.
async fn curl_ok(args: &[&str]) -> Reply {
    let run = curl(args).await;
    assert_eq!(run.exit, Some(0), "curl {args:?} failed: {}", run.stderr);
    run.reply
}

/// Sends `request` as-is on a new connection and reads until the server
/// closes it (a reset after the reply keeps what arrived).
async fn raw(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    bounded("raw request", async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("send request");
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf).await;
        buf
    })
    .await
}

fn parse_raw(bytes: &[u8]) -> Reply {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header block in {:?}", String::from_utf8_lossy(bytes)));
    let (status, headers) = parse_head(&String::from_utf8_lossy(&bytes[..split]));
    Reply {
        status,
        headers,
        body: bytes[split + 4..].to_vec(),
    }
}

/// `<method> <target> HTTP/1.1` with the target byte-for-byte as given (no
/// client-side normalisation), `Connection: close`.
async fn raw_request(addr: SocketAddr, method: &str, target: &str) -> Reply {
    let request =
        format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    parse_raw(&raw(addr, request.as_bytes()).await)
}

fn http_addr(fx: &Fixture) -> SocketAddr {
    fx.server.http_addr().unwrap()
}

/// Polls `GET rel` until it gives `status`; returns that reply. Fails
/// after [`PICKUP`].
async fn poll_until_status(fx: &Fixture, rel: &str, status: u16) -> Reply {
    let url = fx.http_url(rel);
    eventually(&format!("GET {rel} → {status}"), PICKUP, || async {
        let reply = curl_ok(&[&url]).await;
        (reply.status == status).then_some(reply)
    })
    .await
}

/// Last-Modified as the server must send it: the file's mtime as an HTTP
/// date.
fn last_modified_of(fx: &Fixture, rel: &str) -> String {
    let mtime = std::fs::metadata(fx.dir.path().join(rel))
        .unwrap()
        .modified()
        .unwrap();
    httpdate::fmt_http_date(mtime)
}

fn quoted_sha(bytes: &[u8]) -> String {
    format!("\"{}\"", common::sha256(bytes))
}

/// Asserts a 200 for the whole package `rel` with every header a module
/// relies on: exact length, type, `Accept-Ranges`, ETag, Last-Modified.
fn assert_package_headers(fx: &Fixture, rel: &str, reply: &Reply) {
    let file = fx.package_bytes(rel);
    assert_eq!(reply.status, 200, "{rel}");
    reply.assert_length(file.len() as u64);
    assert_eq!(reply.header("content-type"), Some("application/zip"));
    assert_eq!(reply.header("accept-ranges"), Some("bytes"));
    assert_eq!(reply.header("etag"), Some(quoted_sha(&file).as_str()));
    assert_eq!(
        reply.header("last-modified"),
        Some(last_modified_of(fx, rel).as_str())
    );
}

// ---------------------------------------------------------------------------
// GET and HEAD
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_sends_length_type_validators_and_the_exact_bytes() {
    let fx = Fixture::start(|b| b).await;
    for rel in [PKG, JUN_PKG] {
        let file = fx.package_bytes(rel);
        let reply = curl_ok(&[&fx.http_url(rel)]).await;
        assert_package_headers(&fx, rel, &reply);
        assert_eq!(
            common::sha256(&reply.body),
            common::sha256(&file),
            "{rel} body differs"
        );

        let rec = fx
            .wait_record(&format!("complete GET of {rel}"), |r| {
                r.path == rel && r.outcome == Outcome::Complete && r.bytes_sent > 0
            })
            .await;
        assert_eq!(rec.status, 200);
        assert_eq!(rec.bytes_sent, file.len() as u64);
        assert_eq!(rec.size, Some(file.len() as u64));
    }
    // A query string does not change what is served.
    let file = fx.package_bytes(PKG);
    let reply = curl_ok(&[&fx.http_url(&format!("{PKG}?token=abc"))]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body == file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_get_has_a_content_length_and_the_exact_bytes() {
    let fx = Fixture::start(|b| b).await;
    let file = fx.package_bytes(JUN_PKG);
    let request = format!("GET /{JUN_PKG} HTTP/1.0\r\n\r\n");
    let reply = parse_raw(&raw(http_addr(&fx), request.as_bytes()).await);
    assert_eq!(reply.status, 200);
    reply.assert_length(file.len() as u64);
    assert!(reply.body == file, "HTTP/1.0 body differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_sends_the_get_headers_and_no_body() {
    let fx = Fixture::start(|b| b).await;
    for rel in [PKG, JUN_PKG] {
        let file = fx.package_bytes(rel);
        let reply = curl_ok(&["-I", &fx.http_url(rel)]).await;
        assert_package_headers(&fx, rel, &reply);

        // curl hides whether bytes followed the headers; a raw socket does not.
        let raw = raw_request(http_addr(&fx), "HEAD", &format!("/{rel}")).await;
        assert_eq!(raw.status, 200);
        raw.assert_length(file.len() as u64);
        assert!(
            raw.body.is_empty(),
            "HEAD sent {} body bytes",
            raw.body.len()
        );

        let rec = fx
            .wait_record(&format!("HEAD of {rel}"), |r| {
                r.path == rel && r.reason == "HEAD"
            })
            .await;
        assert_eq!(
            (rec.status, rec.bytes_sent, rec.outcome),
            (200, 0, Outcome::HeadersOnly)
        );
    }
}

// ---------------------------------------------------------------------------
// Range and conditionals
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_ranges_send_206_with_content_range_and_the_exact_bytes() {
    let fx = Fixture::start(|b| b).await;
    let url = fx.http_url(PKG);
    let file = fx.package_bytes(PKG);
    let len = file.len();
    // (Range header value, first byte, last byte inclusive)
    let cases = [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-1999", 1000, 1999),
        ("bytes=-100", len - 100, len - 1),
        ("bytes=100-", 100, len - 1),
        // A last byte past the end is clipped to the end (RFC 9110 §14.1.1).
        (
            &format!("bytes={}-{}", len - 10, len + 500),
            len - 10,
            len - 1,
        ),
    ];
    for (range, first, last) in cases {
        let reply = curl_ok(&["-H", &format!("Range: {range}"), &url]).await;
        assert_eq!(reply.status, 206, "{range}");
        assert_eq!(
            reply.header("content-range"),
            Some(format!("bytes {first}-{last}/{len}").as_str()),
            "{range}"
        );
        reply.assert_length((last - first + 1) as u64);
        assert_eq!(reply.header("etag"), Some(quoted_sha(&file).as_str()));
        assert!(reply.body == file[first..=last], "{range}: wrong bytes");
    }
    // curl's own -r option sends the same header.
    let reply = curl_ok(&["-r", "0-99", &url]).await;
    assert_eq!(reply.status, 206);
    assert!(reply.body == file[..100]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsatisfiable_range_is_416_with_the_length() {
    let fx = Fixture::start(|b| b).await;
    let len = fx.package_bytes(PKG).len();
    let reply = curl_ok(&["-H", &format!("Range: bytes={len}-"), &fx.http_url(PKG)]).await;
    assert_eq!(reply.status, 416);
    assert_eq!(
        reply.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );
    reply.assert_length(reply.body.len() as u64);
    let rec = fx.wait_record("416", |r| r.status == 416).await;
    assert_eq!(rec.outcome, Outcome::Refused);
    assert_eq!(rec.bytes_sent, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_ranges_get_the_whole_file() {
    let fx = Fixture::start(|b| b).await;
    let file = fx.package_bytes(PKG);
    let reply = curl_ok(&["-H", "Range: bytes=0-1,5-6", &fx.http_url(PKG)]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-range").is_none());
    reply.assert_length(file.len() as u64);
    assert!(reply.body == file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_range_resumes_only_the_same_version() {
    let fx = Fixture::start(|b| b).await;
    let url = fx.http_url(PKG);
    let file = fx.package_bytes(PKG);
    let etag = quoted_sha(&file);
    let last_modified = last_modified_of(&fx, PKG);
    let stale_etag = format!("\"{}\"", common::sha256(b"the previous version"));
    let weak_etag = format!("W/{etag}");
    let stale_date = "Sat, 01 Jan 2000 00:00:00 GMT";
    for (if_range, resumes) in [
        (etag.as_str(), true),
        (stale_etag.as_str(), false),
        // If-Range needs the strong comparison (RFC 9110 §13.1.5).
        (weak_etag.as_str(), false),
        // A date is weak: two builds can share a modification second.
        (last_modified.as_str(), false),
        (stale_date, false),
    ] {
        let reply = curl_ok(&[
            "-H",
            "Range: bytes=100-",
            "-H",
            &format!("If-Range: {if_range}"),
            &url,
        ])
        .await;
        if resumes {
            assert_eq!(reply.status, 206, "If-Range: {if_range}");
            assert_eq!(
                reply.header("content-range"),
                Some(format!("bytes 100-{}/{}", file.len() - 1, file.len()).as_str())
            );
            assert!(
                reply.body == file[100..],
                "If-Range: {if_range}: wrong bytes"
            );
        } else {
            assert_eq!(reply.status, 200, "If-Range: {if_range}");
            assert!(reply.header("content-range").is_none());
            reply.assert_length(file.len() as u64);
            assert!(
                reply.body == file,
                "If-Range: {if_range}: not the whole file"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_get_is_304_when_the_client_has_it() {
    let fx = Fixture::start(|b| b).await;
    let url = fx.http_url(PKG);
    let file = fx.package_bytes(PKG);
    let etag = quoted_sha(&file);
    let last_modified = last_modified_of(&fx, PKG);

    for header in [
        format!("If-None-Match: {etag}"),
        format!("If-None-Match: \"0000\", {etag}"),
        "If-None-Match: *".to_string(),
        format!("If-Modified-Since: {last_modified}"),
    ] {
        let reply = curl_ok(&["-H", &header, &url]).await;
        assert_eq!(reply.status, 304, "{header}");
        assert!(reply.body.is_empty(), "{header}: 304 with a body");
        assert!(reply.header("transfer-encoding").is_none());
        assert_eq!(reply.header("etag"), Some(etag.as_str()));
    }
    let rec = fx.wait_record("304", |r| r.status == 304).await;
    assert_eq!((rec.outcome, rec.bytes_sent), (Outcome::HeadersOnly, 0));
    // The same headers with values the client cannot have: the whole file.
    for header in [
        "If-None-Match: \"0000\"".to_string(),
        "If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT".to_string(),
    ] {
        let reply = curl_ok(&["-H", &header, &url]).await;
        assert_eq!(reply.status, 200, "{header}");
        assert!(reply.body == file, "{header}");
    }
}

// ---------------------------------------------------------------------------
// Errors and listings
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_path_is_404_with_a_not_found_record() {
    let fx = Fixture::start(|b| b).await;
    let reply = curl_ok(&[&fx.http_url("no-such-v1-to-v2.zip")]).await;
    assert_eq!(reply.status, 404);
    reply.assert_length(reply.body.len() as u64);
    let rec = fx
        .wait_record("404", |r| r.path == "no-such-v1-to-v2.zip")
        .await;
    assert_eq!((rec.status, rec.outcome), (404, Outcome::NotFound));
    assert_eq!((rec.size, rec.bytes_sent), (None, 0));
    let line = fx
        .log_lines()
        .into_iter()
        .find(|l| l["path"] == "no-such-v1-to-v2.zip")
        .expect("404 logged to the file");
    assert_eq!(line["outcome"], "not_found");
    assert_eq!(line["status"], 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_methods_are_405_with_allow_and_a_refused_record() {
    let fx = Fixture::start(|b| b).await;
    let url = fx.http_url(PKG);
    let file = fx.package_bytes(PKG);
    for method in ["POST", "PUT", "DELETE"] {
        let mut new = fx.new_records();
        let reply = curl_ok(&["-X", method, "--data-binary", "new firmware", &url]).await;
        assert_eq!(reply.status, 405, "{method}");
        reply.assert_length(reply.body.len() as u64);
        let allow = reply
            .header("allow")
            .unwrap_or_else(|| panic!("{method}: no Allow"));
        assert!(
            allow.contains("GET") && allow.contains("HEAD"),
            "Allow: {allow}"
        );
        let rec = new.next().await;
        assert_eq!(
            (rec.status, rec.outcome),
            (405, Outcome::Refused),
            "{method}"
        );
        assert!(
            rec.reason.contains(method),
            "{method}: reason {:?}",
            rec.reason
        );
        // The record still says which package was asked for.
        assert_eq!(rec.size, Some(file.len() as u64), "{method}");
        assert_eq!(
            rec.sha256.as_deref(),
            Some(common::sha256(&file).as_str()),
            "{method}"
        );
    }
    assert!(
        fx.package_bytes(PKG) == file,
        "a write method changed the package"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_html_lists_names_and_sha256() {
    let fx = Fixture::start(|b| b).await;
    let reply = curl_ok(&[&fx.http_url("")]).await;
    assert_eq!(reply.status, 200);
    reply.assert_length(reply.body.len() as u64);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{:?}",
        reply.header("content-type")
    );
    let html = String::from_utf8(reply.body).unwrap();
    for rel in [PKG, JUN_PKG, BIG] {
        assert!(
            html.contains(&format!("href=\"/{rel}\"")),
            "no link to {rel} in {html}"
        );
        let sha = common::sha256(&fx.package_bytes(rel));
        assert!(html.contains(&sha), "no SHA-256 of {rel} in {html}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_json_lists_path_size_and_sha256() {
    let fx = Fixture::start(|b| b).await;
    let reply = curl_ok(&[&fx.http_url("packages.json")]).await;
    assert_eq!(reply.status, 200);
    reply.assert_length(reply.body.len() as u64);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let list: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let list = list.as_array().expect("a JSON array");
    let mut paths: Vec<&str> = list.iter().map(|p| p["path"].as_str().unwrap()).collect();
    paths.sort_unstable();
    let mut expected = vec![PKG, JUN_PKG, BIG];
    expected.sort_unstable();
    assert_eq!(paths, expected);
    for entry in list {
        let rel = entry["path"].as_str().unwrap();
        let bytes = fx.package_bytes(rel);
        assert_eq!(entry["size"], bytes.len() as u64, "{rel}");
        assert_eq!(entry["sha256"], common::sha256(&bytes), "{rel}");
    }
}

// ---------------------------------------------------------------------------
// HTTPS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_tls12_ecdhe_rsa_aes128_gcm_downloads_byte_identical() {
    let fx = Fixture::start(|b| b).await;
    let file = fx.package_bytes(JUN_PKG);
    let run = curl(&[
        "-v",
        "-k",
        "--tls-max",
        "1.2",
        "--ciphers",
        "ECDHE-RSA-AES128-GCM-SHA256",
        &fx.https_url(JUN_PKG),
    ])
    .await;
    assert_eq!(run.exit, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("TLSv1.2 / ECDHE-RSA-AES128-GCM-SHA256"),
        "not the module's suite: {}",
        run.stderr
    );
    assert_eq!(run.reply.status, 200);
    run.reply.assert_length(file.len() as u64);
    assert_eq!(common::sha256(&run.reply.body), common::sha256(&file));
    let rec = fx
        .wait_record("HTTPS GET", |r| {
            r.protocol == Protocol::Https && r.path == JUN_PKG
        })
        .await;
    assert_eq!((rec.status, rec.outcome), (200, Outcome::Complete));
    assert_eq!(rec.bytes_sent, file.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_tls13_works() {
    let fx = Fixture::start(|b| b).await;
    let file = fx.package_bytes(PKG);
    // TLS 1.3; and a client whose only ALPN offer is `http/1.0`.
    for (flag, said) in [
        ("--tlsv1.3", "SSL connection using TLSv1.3"),
        ("--http1.0", "ALPN: server accepted http/1.0"),
    ] {
        let run = curl(&["-v", "-k", flag, &fx.https_url(PKG)]).await;
        assert_eq!(run.exit, Some(0), "{}", run.stderr);
        assert!(run.stderr.contains(said), "{}", run.stderr);
        assert_eq!(run.reply.status, 200);
        assert!(run.reply.body == file);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_tls12_handshake_with_rsa_2048() {
    let fx = Fixture::start(|b| b).await;
    let connect = fx.server.https_addr().unwrap().to_string();
    // stdin is closed, so s_client quits right after the handshake.
    let out = common::run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-tls1_2",
            "-cipher",
            "ECDHE-RSA-AES128-GCM-SHA256",
            "-CAfile",
            common::TEST_CERT,
        ],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Cipher is ECDHE-RSA-AES128-GCM-SHA256"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Server public key is 2048 bit"), "{text}");
    assert!(text.contains("Protocol  : TLSv1.2"), "{text}");
    // The served certificate is the one the fixture was given.
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_cert_is_rsa_with_local_sans_and_reused_by_a_second_server() {
    let fx = Fixture::start_generating_cert(|b| b).await;
    let cert_path = fx
        .certs
        .path()
        .join(qfota_serve::serve::tls::GENERATED_CERT);
    let key_path = fx.certs.path().join(qfota_serve::serve::tls::GENERATED_KEY);
    let out = common::run(
        "openssl",
        &[
            "x509",
            "-in",
            cert_path.to_str().unwrap(),
            "-noout",
            "-text",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rsaEncryption"), "{text}");
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    assert!(text.contains("DNS:localhost"), "{text}");
    assert!(text.contains("IP Address:127.0.0.1"), "{text}");

    let cert_before = std::fs::read(&cert_path).unwrap();
    let key_before = std::fs::read(&key_path).unwrap();
    let second = bounded(
        "second server start",
        Server::builder()
            .packages(fx.dir.path())
            .https(0)
            .certs_dir(fx.certs.path())
            .start(),
    )
    .await
    .expect("second server starts");
    assert!(
        std::fs::read(&cert_path).unwrap() == cert_before,
        "certificate regenerated"
    );
    assert!(
        std::fs::read(&key_path).unwrap() == key_before,
        "key regenerated"
    );

    // Both servers present that certificate: curl verifies them against it.
    let file = fx.package_bytes(PKG);
    for url in [fx.https_url(PKG), second.https_url(PKG).unwrap()] {
        let reply = curl_ok(&["--cacert", cert_path.to_str().unwrap(), &url]).await;
        assert_eq!(reply.status, 200, "{url}");
        assert!(reply.body == file, "{url}");
    }
    bounded("second server shutdown", second.shutdown()).await;
}

// ---------------------------------------------------------------------------
// The download log
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_get_is_logged_with_every_field() {
    let fx = Fixture::start(|b| b).await;
    let file = fx.package_bytes(PKG);
    let size = file.len() as u64;
    let started = chrono::Utc::now();
    let run = curl(&[
        "-H",
        "Range: bytes=100-",
        "-w",
        "%{local_port}",
        &fx.http_url(PKG),
    ])
    .await;
    assert_eq!(run.exit, Some(0), "{}", run.stderr);
    assert_eq!(run.reply.status, 206);
    let peer = format!("127.0.0.1:{}", run.stdout.trim());

    let rec = fx
        .wait_record("range GET", |r| r.path == PKG && r.range_start == 100)
        .await;
    assert_eq!(rec.protocol, Protocol::Http);
    assert_eq!(rec.peer.to_string(), peer);
    assert_eq!(rec.user, None);
    assert_eq!(rec.size, Some(size));
    assert_eq!(rec.sha256.as_deref(), Some(common::sha256(&file).as_str()));
    assert_eq!(rec.bytes_sent, size - 100);
    assert_eq!((rec.status, rec.outcome), (206, Outcome::Complete));
    assert!(!rec.reason.is_empty());
    let slack = chrono::Duration::seconds(5);
    assert!(
        rec.ts >= started - slack && rec.ts <= chrono::Utc::now() + slack,
        "ts {}",
        rec.ts
    );

    let line = fx
        .log_lines()
        .into_iter()
        .find(|l| l["path"] == PKG && l["range_start"] == 100)
        .expect("the record is a line in the log file");
    let ts = line["ts"].as_str().expect("ts is a string");
    let parsed = chrono::DateTime::parse_from_rfc3339(ts).expect("ts is RFC 3339");
    assert!(
        (parsed.with_timezone(&chrono::Utc) - rec.ts)
            .num_milliseconds()
            .abs()
            <= 1,
        "{ts}"
    );
    assert!(line["duration_ms"].is_u64(), "{line}");
    assert_eq!(line["protocol"], "http");
    assert_eq!(line["peer"], peer.as_str());
    assert!(
        line.get("user").is_some_and(|u| u.is_null()),
        "user must be null: {line}"
    );
    assert_eq!(line["path"], PKG);
    assert_eq!(line["size"], size);
    assert_eq!(line["sha256"], common::sha256(&file));
    assert_eq!(line["range_start"], 100);
    assert_eq!(line["bytes_sent"], size - 100);
    assert_eq!(line["status"], 206);
    assert_eq!(line["outcome"], "complete");
    assert!(
        line["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_dropped_part_way_is_logged_as_aborted() {
    let fx = Fixture::start(|b| b).await;
    let size = fx.package_bytes(BIG).len() as u64;
    bounded("partial read", async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // A small, fixed receive window keeps the server from handing the
        // whole package to the kernel before the client goes away.
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        let mut stream = socket.connect(http_addr(&fx)).await.expect("connect");
        let request = format!("GET /{BIG} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 16 * 1024];
        while got < 256 * 1024 {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "server closed after {got} bytes");
            got += n;
        }
        // Dropping the stream with unread data resets the connection.
    })
    .await;

    let rec = fx
        .wait_record("aborted download", |r| {
            r.path == BIG && r.outcome == Outcome::Aborted
        })
        .await;
    assert!(
        0 < rec.bytes_sent && rec.bytes_sent < size,
        "bytes_sent {} of {size}",
        rec.bytes_sent
    );
    assert_eq!(rec.status, 200);
    // The client read 256 KiB. Its TCP stack acknowledged about that, and
    // no more than the server wrote — less by what its delayed ACK still
    // held when it reset (RFC 1122 §4.2.3.2: an ACK for every second full
    // segment, 64 KiB each on loopback; a reset carries no acknowledgement
    // the server takes), seen once under load as 243,740.
    assert!(
        rec.bytes_acked >= (256 - 2 * 64) * 1024 && rec.bytes_acked <= rec.bytes_sent,
        "bytes_acked {} of {}",
        rec.bytes_acked,
        rec.bytes_sent
    );
    assert!(
        rec.reason.starts_with("peer acknowledged ")
            && rec.reason.ends_with("then closed the connection"),
        "reason {:?}",
        rec.reason
    );
    let line = fx
        .log_lines()
        .into_iter()
        .find(|l| l["path"] == BIG && l["outcome"] == "aborted")
        .expect("aborted record in the log file");
    assert_eq!(line["bytes_sent"], rec.bytes_sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_https_client_that_gives_up_is_logged_as_aborted() {
    let fx = Fixture::start(|b| b).await;
    let size = fx.package_bytes(BIG).len() as u64;
    let run = curl(&[
        "-k",
        "--limit-rate",
        "200k",
        "--max-time",
        "2",
        &fx.https_url(BIG),
    ])
    .await;
    assert_eq!(
        run.exit,
        Some(28),
        "curl should time out part-way: {}",
        run.stderr
    );
    let rec = fx
        .wait_record("aborted HTTPS download", |r| {
            r.path == BIG && r.outcome == Outcome::Aborted
        })
        .await;
    assert_eq!(rec.protocol, Protocol::Https);
    assert!(
        0 < rec.bytes_sent && rec.bytes_sent < size,
        "bytes_sent {} of {size}",
        rec.bytes_sent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_reading_is_aborted_as_stalled() {
    let fx = Fixture::start(|b| b.stall_timeout(Duration::from_secs(1))).await;
    let size = fx.package_bytes(BIG).len() as u64;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut stream = bounded("connect", socket.connect(http_addr(&fx)))
        .await
        .expect("connect");
    let request = format!("GET /{BIG} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    bounded("send", stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = bounded("first bytes", stream.read(&mut buf)).await.unwrap();
    assert!(n > 0);
    // Keep the connection open without reading: a module whose link died.
    let rec = fx
        .wait_record("stalled download", |r| {
            r.path == BIG && r.outcome == Outcome::Aborted
        })
        .await;
    assert!(rec.reason.contains("stalled"), "reason {:?}", rec.reason);
    assert!(
        rec.bytes_sent < size,
        "bytes_sent {} of {size}",
        rec.bytes_sent
    );
    drop(stream);
}

// ---------------------------------------------------------------------------
// Paths that try to leave the package folder
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_is_refused() {
    let fx = Fixture::start(|b| b).await;
    let passwd = std::fs::read("/etc/passwd").unwrap_or_default();
    for target in [
        "/../etc/passwd",
        "/../../../../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/%2E%2E/%2E%2E/etc/passwd",
        "/Jun/..%2f..%2fetc%2fpasswd",
        "/Jun/../../update-v12-to-v13.zip",
        "/..\\..\\etc\\passwd",
        "/..%5c..%5cetc%5cpasswd",
        "/Jun%5c..%5c..%5cetc%5cpasswd",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
        "http://127.0.0.1/../etc/passwd",
        "/update-v12-to-v13.zip%00.txt",
    ] {
        let mut new = fx.new_records();
        let reply = raw_request(http_addr(&fx), "GET", target).await;
        assert!(
            matches!(reply.status, 400 | 404),
            "{target}: status {}",
            reply.status
        );
        assert!(
            passwd.is_empty() || !reply.body.windows(passwd.len()).any(|w| w == passwd),
            "{target}: served /etc/passwd"
        );
        assert!(
            !String::from_utf8_lossy(&reply.body).contains("root:"),
            "{target}"
        );
        let rec = new.next().await;
        assert!(
            matches!(rec.outcome, Outcome::Refused | Outcome::NotFound),
            "{target}: {rec:?}"
        );
        assert_eq!(rec.bytes_sent, 0, "{target}");
    }
    // The same paths through curl, told not to squash the dots.
    for path in ["/../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd"] {
        let url = format!("http://{}{path}", http_addr(&fx));
        let reply = curl_ok(&["--path-as-is", &url]).await;
        assert!(
            matches!(reply.status, 400 | 404),
            "{path}: {}",
            reply.status
        );
    }
    fx.assert_every_record("a traversal completed", |r| r.outcome != Outcome::Complete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_leaving_the_folder_are_refused() {
    let fx = Fixture::start(|b| b).await;
    let outside = tempfile::tempdir().unwrap();
    // A valid package, so only the symlink rule can keep it from being served.
    let secret = common::zip_with(&[("system.diff", b"outside the package folder")]);
    std::fs::write(outside.path().join("secret-v1-to-v2.zip"), &secret).unwrap();
    let links: [(&str, &Path); 3] = [
        (
            "leak-v1-to-v2.zip",
            &outside.path().join("secret-v1-to-v2.zip"),
        ),
        ("Jun/passwd-v1-to-v2.zip", Path::new("/etc/passwd")),
        ("outside", outside.path()),
    ];
    for (name, target) in &links {
        std::os::unix::fs::symlink(target, fx.dir.path().join(name)).unwrap();
    }
    eventually("the scan to exclude the symlinks", PICKUP, || async {
        links
            .iter()
            .all(|(name, _)| matches!(fx.server.catalog().lookup(name), Lookup::Excluded(_)))
            .then_some(())
    })
    .await;

    // Control: a symlink that stays inside the folder is served.
    std::os::unix::fs::symlink(
        fx.dir.path().join(PKG),
        fx.dir.path().join("alias-v12-to-v13.zip"),
    )
    .unwrap();
    let alias = poll_until_status(&fx, "alias-v12-to-v13.zip", 200).await;
    assert!(alias.body == fx.package_bytes(PKG));
    // Its record comes once the client acknowledged the body: let it pass
    // before watching for the refusals' records.
    fx.wait_record("the alias download", |r| {
        r.path == "alias-v12-to-v13.zip" && r.outcome == Outcome::Complete
    })
    .await;

    for rel in [
        "leak-v1-to-v2.zip",
        "Jun/passwd-v1-to-v2.zip",
        "outside/secret-v1-to-v2.zip",
    ] {
        let mut new = fx.new_records();
        let reply = curl_ok(&["--path-as-is", &fx.http_url(rel)]).await;
        assert!(
            matches!(reply.status, 400 | 404),
            "{rel}: status {}",
            reply.status
        );
        assert!(
            reply.body != secret && !String::from_utf8_lossy(&reply.body).contains("root:"),
            "{rel}"
        );
        let rec = new.next().await;
        assert_eq!(rec.outcome, Outcome::Refused, "{rel}: {rec:?}");
        assert!(
            rec.reason.contains("symlink"),
            "{rel}: reason {:?}",
            rec.reason
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_files_such_as_the_log_are_not_served() {
    let fx = Fixture::start(|b| b).await;
    // The fixture keeps its download log inside the package folder.
    let hidden = fx
        .log_path
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(hidden.starts_with('.'));
    let mut new = fx.new_records();
    let reply = curl_ok(&[&fx.http_url(&hidden)]).await;
    assert_eq!(reply.status, 404);
    assert!(!String::from_utf8_lossy(&reply.body).contains("\"outcome\""));
    // Refused once a scan has seen the file, not found before that.
    let rec = new.next().await;
    assert!(
        matches!(rec.outcome, Outcome::Refused | Outcome::NotFound),
        "{rec:?}"
    );
    // A hidden package is skipped even though it is a valid zip.
    let bytes = common::zip_with(&[("system.diff", b"hidden")]);
    std::fs::write(fx.dir.path().join(".hidden-v1-to-v2.zip"), &bytes).unwrap();
    eventually("the scan to exclude the hidden package", PICKUP, || async {
        matches!(
            fx.server.catalog().lookup(".hidden-v1-to-v2.zip"),
            Lookup::Excluded(_)
        )
        .then_some(())
    })
    .await;
    let mut new = fx.new_records();
    let reply = curl_ok(&[&fx.http_url(".hidden-v1-to-v2.zip")]).await;
    assert_eq!(reply.status, 404);
    let rec = new.next().await;
    assert_eq!(rec.outcome, Outcome::Refused, "{rec:?}");
}

// ---------------------------------------------------------------------------
// Packages that change while the server runs
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_packages_copied_in_are_refused_with_the_problem() {
    let fx = Fixture::start(|b| b).await;
    let broken = common::broken_zip();
    let notes = b"release notes: v1 to v2, not a zip at all\n".to_vec();
    std::fs::write(fx.dir.path().join("broken-v1-to-v2.zip"), &broken).unwrap();
    std::fs::write(fx.dir.path().join("notes-v1-to-v2.zip"), &notes).unwrap();

    for (rel, bytes, problem) in [
        ("broken-v1-to-v2.zip", &broken, "zip entry system.diff"),
        ("notes-v1-to-v2.zip", &notes, "not a readable zip"),
    ] {
        let rec = eventually(&format!("{rel} refused as invalid"), PICKUP, || async {
            let reply = curl_ok(&[&fx.http_url(rel)]).await;
            if reply.status == 503 {
                // Still being validated (Retry-After): ask again.
                return None;
            }
            assert_eq!(reply.status, 404, "{rel} served while invalid");
            fx.server
                .downloads()
                .into_iter()
                .find(|r| r.path == rel && r.outcome == Outcome::InvalidPackage)
        })
        .await;
        assert_eq!(rec.status, 404);
        assert_eq!(rec.bytes_sent, 0);
        assert!(
            rec.reason.contains(problem),
            "{rel}: reason {:?}",
            rec.reason
        );
        assert_eq!(rec.size, Some(bytes.len() as u64));
        assert_eq!(rec.sha256.as_deref(), Some(common::sha256(bytes).as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_invalid_serves_invalid_packages_byte_identical() {
    let fx = Fixture::start(|b| b.allow_invalid(true)).await;
    let broken = common::broken_zip();
    let notes = b"release notes: v1 to v2, not a zip at all\n".to_vec();
    std::fs::write(fx.dir.path().join("broken-v1-to-v2.zip"), &broken).unwrap();
    std::fs::write(fx.dir.path().join("notes-v1-to-v2.zip"), &notes).unwrap();
    for (rel, bytes) in [
        ("broken-v1-to-v2.zip", &broken),
        ("notes-v1-to-v2.zip", &notes),
    ] {
        let reply = poll_until_status(&fx, rel, 200).await;
        reply.assert_length(bytes.len() as u64);
        assert!(reply.body == *bytes, "{rel} not byte-identical");
        let rec = fx
            .wait_record(&format!("served {rel}"), |r| {
                r.path == rel && r.status == 200
            })
            .await;
        assert_eq!(rec.outcome, Outcome::Complete);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_package_copied_in_is_served_within_two_seconds() {
    let fx = Fixture::start(|b| b).await;
    let rel = "Jun/update-v13-to-v14.zip";
    let bytes = common::zip_with(&[("system.diff", &common::noise(100_000, 3))]);
    assert_eq!(curl_ok(&[&fx.http_url(rel)]).await.status, 404);
    std::fs::write(fx.dir.path().join(rel), &bytes).unwrap();
    let reply = poll_until_status(&fx, rel, 200).await;
    reply.assert_length(bytes.len() as u64);
    assert!(reply.body == bytes);
    assert_eq!(reply.header("etag"), Some(quoted_sha(&bytes).as_str()));
}

/// A module resuming with the old version's ETag must never get a range
/// of the new version spliced onto its partial file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_package_is_never_spliced_into_a_resume() {
    let fx = Fixture::start(|b| b).await;
    let url = fx.http_url(PKG);
    let old = fx.package_bytes(PKG);
    let old_etag = quoted_sha(&old);
    let new = common::zip_with(&[("system.diff", &common::noise(20_000, 11))]);
    // Replace atomically, as a careful operator would.
    let staged = fx.dir.path().join(".staged.zip");
    std::fs::write(&staged, &new).unwrap();
    std::fs::rename(&staged, fx.dir.path().join(PKG)).unwrap();

    let resume = [
        "-H",
        "Range: bytes=100-",
        "-H",
        &format!("If-Range: {old_etag}"),
        &url,
    ];
    // Before the next scan: the rest of the old version from its resident
    // copy (what the module's partial file holds), or a 503 when read from
    // the changed file; after it, the whole new version.
    let reply = curl_ok(&resume).await;
    match reply.status {
        206 => {
            assert!(reply.body == old[100..], "{reply:?}");
            assert_eq!(reply.header("etag"), Some(old_etag.as_str()));
        }
        503 => assert!(reply.header("retry-after").is_some(), "{reply:?}"),
        200 => assert!(reply.body == new),
        other => panic!("resume across a replacement gave {other}"),
    }
    // Until the catalog's next scan a full GET still gets the old resident
    // copy (200 as well): wait for the scan to have seen the replacement.
    let catalog = std::sync::Arc::clone(fx.server.catalog());
    common::bounded("rescan", catalog.rescan_now())
        .await
        .unwrap();
    let reply = poll_until_status(&fx, PKG, 200).await;
    assert!(reply.body == new);
    assert_eq!(reply.header("etag"), Some(quoted_sha(&new).as_str()));
    let reply = curl_ok(&resume).await;
    assert_eq!(
        reply.status, 200,
        "old ETag must not resume the new version"
    );
    assert!(reply.body == new);
}

// ---------------------------------------------------------------------------
// Robustness
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_request_gets_400_or_a_close_and_serving_goes_on() {
    let fx = Fixture::start(|b| b).await;
    let garbage: [&[u8]; 3] = [
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n",
        b"\x00\x01\x02\x03\xff\xfe\r\n\r\n",
        b"GET\r\n\r\n",
    ];
    for bytes in garbage {
        let reply = raw(http_addr(&fx), bytes).await;
        assert!(
            reply.is_empty() || reply.starts_with(b"HTTP/1.1 400"),
            "{bytes:?} → {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    // TLS garbage on the HTTPS port: the handshake fails, the server lives.
    let reply = raw(fx.server.https_addr().unwrap(), b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(
        !reply.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );

    let file = fx.package_bytes(PKG);
    let reply = curl_ok(&[&fx.http_url(PKG)]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body == file);
    let reply = curl_ok(&["-k", &fx.https_url(PKG)]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body == file);
}

/// A complete request followed at once by the client's FIN (`nc -N`) is
/// answered in full and recorded, every time (RFC 9112 §9.6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_then_a_half_close_is_answered() {
    let fx = Fixture::start(|b| b).await;
    let file = fx.package_bytes(PKG);
    let addr = http_addr(&fx);
    for _ in 0..20 {
        let bytes = bounded("half-closed request", async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let request = format!("GET /{PKG} HTTP/1.0\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
            let mut buf = Vec::new();
            let _ = stream.read_to_end(&mut buf).await;
            buf
        })
        .await;
        let reply = parse_raw(&bytes);
        assert_eq!(reply.status, 200);
        assert!(reply.body == file);
    }
    fx.wait_records("20 half-closed downloads", 20, |r| {
        r.path == PKG && r.outcome == Outcome::Complete
    })
    .await;
}

/// Requests refused before they reach routing — no or several `Host`
/// lines, a target over hyper's limit, a TLS handshake that fails — are
/// answered as RFC 9112 says and each leaves a `refused` record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_before_routing_still_leaves_a_record() {
    let fx = Fixture::start(|b| b).await;
    let addr = http_addr(&fx);
    for (head, why) in [
        (format!("GET /{PKG} HTTP/1.1\r\n"), "no Host header"),
        (
            format!("GET /{PKG} HTTP/1.1\r\nHost: a\r\nHost: b\r\n"),
            "more than one Host header",
        ),
        (
            format!("GET /{PKG} HTTP/1.1\r\nHost: a b/c\r\n"),
            "invalid Host header",
        ),
    ] {
        let reply =
            parse_raw(&raw(addr, format!("{head}Connection: close\r\n\r\n").as_bytes()).await);
        assert_eq!(reply.status, 400, "{why}");
        let rec = fx.wait_record(why, |r| r.reason.starts_with(why)).await;
        assert_eq!(
            (rec.status, rec.outcome, rec.path.as_str()),
            (400, Outcome::Refused, PKG)
        );
    }
    // A target that is no path nor URL (a bare name, as CONNECT's) and a
    // URL with credentials are refused too (RFC 9112 §3.2, RFC 9110
    // §4.2.4).
    for (target, why, path) in [
        (
            PKG.to_string(),
            "request target is neither a path nor a URL",
            "",
        ),
        (
            format!("http://u:p@x/{PKG}"),
            "request target carries credentials",
            PKG,
        ),
    ] {
        let head = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let reply = parse_raw(&raw(addr, head.as_bytes()).await);
        assert_eq!(reply.status, 400, "{why}");
        let rec = fx.wait_record(why, |r| r.reason.starts_with(why)).await;
        assert_eq!((rec.status, rec.path.as_str()), (400, path), "{why}");
    }
    // HTTP/1.0 needs no Host; an empty one is valid syntax.
    let reply = parse_raw(&raw(addr, format!("GET /{PKG} HTTP/1.0\r\n\r\n").as_bytes()).await);
    assert_eq!(reply.status, 200);
    let empty = format!("GET /{PKG} HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n");
    assert_eq!(parse_raw(&raw(addr, empty.as_bytes()).await).status, 200);

    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000));
    let reply = raw(addr, long.as_bytes()).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 414"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
    let rec = fx.wait_record("414 record", |r| r.status == 414).await;
    assert_eq!(rec.outcome, Outcome::Refused);
    assert!(
        rec.reason.starts_with("malformed request"),
        "{}",
        rec.reason
    );

    // Plain HTTP on the HTTPS port: no TLS, no answer, one record.
    let https = fx.server.https_addr().unwrap();
    let _ = raw(https, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let rec = fx
        .wait_record("failed handshake", |r| r.protocol == Protocol::Https)
        .await;
    assert_eq!((rec.status, rec.outcome), (0, Outcome::Refused));
    assert!(
        rec.reason.starts_with("TLS handshake failed"),
        "{}",
        rec.reason
    );
}

/// A package's path with a trailing slash names a folder that is not
/// there: 404, as nginx answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_path_with_a_trailing_slash_is_not_found() {
    let fx = Fixture::start(|b| b).await;
    let reply = raw_request(http_addr(&fx), "GET", &format!("/{PKG}/")).await;
    assert_eq!(reply.status, 404);
    let rec = fx
        .wait_record("trailing slash", |r| r.outcome == Outcome::NotFound)
        .await;
    assert_eq!(rec.path, PKG);
}

/// A client that sends half a request line and then nothing is cut off
/// after the header read timeout (slowloris guard), and others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_by_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fx = Fixture::start(|b| b.header_read_timeout(std::time::Duration::from_millis(500))).await;
    let addr = fx.server.http_addr().unwrap();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /update-v12-to-v13.zip HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(common::DEADLINE, slow.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(read.is_ok(), "connection still open");
    assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    let reply = curl_ok(&[&fx.http_url("update-v12-to-v13.zip")]).await;
    assert_eq!(reply.status, 200);
}

/// A folder path answers with that folder's listing (lftp and browsers
/// "cd" over HTTP); nothing is logged as a download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_lists_its_packages() {
    let fx = Fixture::start(|b| b).await;
    let reply = curl_ok(&[&fx.http_url("Jun/")]).await;
    let text = String::from_utf8_lossy(&reply.body);
    assert_eq!(reply.status, 200, "{text}");
    assert!(
        text.contains("href=\"/Jun/update-v12-to-v13.zip\""),
        "{text}"
    );
    assert!(
        !text.contains(common::BIG),
        "root packages are not listed: {text}"
    );
    assert!(fx.server.downloads().is_empty());
}

/// Downloads still running when the shutdown grace period ends are cut,
/// and each — HTTP, HTTPS, FTP — leaves an `aborted` record saying the
/// server shut down, written before `shutdown` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_cut_at_the_end_of_the_grace_period_are_recorded() {
    // ~7 KB at 1 kB/s: seven seconds in flight, past a 300 ms grace.
    let slow: qfota_serve::serve::fault::FaultRule = "slow=1000".parse().unwrap();
    let fx = Fixture::start(move |b| b.fault(slow).grace_period(Duration::from_millis(300))).await;
    let out = tempfile::tempdir().unwrap();
    let urls = [fx.http_url(PKG), fx.https_url(PKG), fx.ftp_url(PKG)];
    let mut clients = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let file = out.path().join(i.to_string());
        let child = tokio::process::Command::new("curl")
            .args(["-sk", "--max-time", "20", "-o"])
            .arg(&file)
            .arg(url)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        clients.push((file, child));
    }
    // In flight once each client has its first body bytes.
    for (file, _) in &clients {
        eventually("first bytes", common::DEADLINE, || async {
            std::fs::metadata(file)
                .is_ok_and(|m| m.len() > 0)
                .then_some(())
        })
        .await;
    }
    // And an FTP RETR still waiting for its data connection.
    let waiting = retr_without_data_connection(fx.server.ftp_addr().unwrap()).await;
    let Fixture {
        server,
        dir: _dir,
        log_path,
        ..
    } = fx;
    bounded("shutdown", server.shutdown()).await;
    drop(waiting);
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(
        log.lines().any(|l| l.contains("\"status\":150")
            && l.contains("RETR answered 150, then the server shut down with no data connection")),
        "{log}"
    );
    for protocol in ["http", "https", "ftp"] {
        let protocol = format!("\"protocol\":\"{protocol}\"");
        assert!(
            log.lines().any(|l| l.contains(&protocol)
                && l.contains("\"outcome\":\"aborted\"")
                && l.contains("then the server shut down")),
            "{protocol}: {log}"
        );
    }
}

/// An FTP control connection logged in that sent `PASV` and `RETR` and
/// never opens the data connection, once `RETR` got its `150`.
async fn retr_without_data_connection(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut control = BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let mut expect = async |send: &str, code: &str| {
        if !send.is_empty() {
            control.get_mut().write_all(send.as_bytes()).await.unwrap();
        }
        let mut line = String::new();
        control.read_line(&mut line).await.unwrap();
        assert!(line.starts_with(code), "{send:?}: {line:?}");
    };
    expect("", "220").await;
    expect("USER test\r\n", "331").await;
    expect("PASS test\r\n", "230").await;
    expect("PASV\r\n", "227").await;
    expect(&format!("RETR {PKG}\r\n"), "150").await;
    control.into_inner()
}

/// Shutdown stops accepting but lets a download in flight finish within
/// the grace period; the record says `complete`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_download_finish() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const PKG: &str = "update-v12-to-v13.zip";
    // ~7 KB at 7 kB/s: about a second in flight.
    let slow: qfota_serve::serve::fault::FaultRule = "slow=7000".parse().unwrap();
    let fx = Fixture::start(move |b| {
        b.fault(slow)
            .grace_period(std::time::Duration::from_secs(20))
    })
    .await;
    let want = fx.package_bytes(PKG);
    let addr = fx.server.http_addr().unwrap();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET /{PKG} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    // The response has started once the first bytes are here.
    let mut got = vec![0u8; 64];
    let n = bounded("first bytes", tcp.read(&mut got)).await.unwrap();
    got.truncate(n);
    assert!(got.starts_with(b"HTTP/1.1 200"));
    let Fixture {
        server,
        dir: _dir,
        log_path,
        ..
    } = fx;
    let reader = tokio::spawn(async move {
        let mut rest = Vec::new();
        tcp.read_to_end(&mut rest).await.map(|_| rest)
    });
    let stopping = tokio::spawn(server.shutdown());
    // New connections are refused once shutdown has begun, while the
    // download is still in flight (not left waiting in the backlog).
    bounded("connections refused during the grace period", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        !stopping.is_finished(),
        "refused only after the grace period"
    );
    bounded("shutdown within the grace period", stopping)
        .await
        .unwrap();
    got.extend(
        bounded("the rest of the response", reader)
            .await
            .unwrap()
            .unwrap(),
    );
    let body_at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(common::sha256(&got[body_at..]), common::sha256(&want));
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"outcome\":\"complete\"") && l.contains(PKG)),
        "{log}"
    );
}

/// A request cut off inside its header — the client closes, or the header
/// never ends — leaves a record that nothing was answered; a keep-alive
/// connection left idle after a complete download adds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_off_inside_the_header_are_recorded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fx = Fixture::start(|b| b.header_read_timeout(Duration::from_secs(1))).await;
    let addr = fx.server.http_addr().unwrap();
    let partial = format!("GET /{PKG} HTTP/1.1\r\nHo");
    // The client closes mid-header.
    let mut closed = tokio::net::TcpStream::connect(addr).await.unwrap();
    closed.write_all(partial.as_bytes()).await.unwrap();
    closed.shutdown().await.unwrap();
    // The header never ends.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    silent.write_all(partial.as_bytes()).await.unwrap();
    // A complete download on a connection then left idle until the
    // server closes it.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let whole = format!("GET /{PKG} HTTP/1.1\r\nHost: x\r\n\r\n");
    idle.write_all(whole.as_bytes()).await.unwrap();
    let size = fx.package_bytes(PKG).len();
    let mut got = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    while !got.ends_with(&fx.package_bytes(PKG)[size - 64..]) {
        let n = idle.read(&mut buf).await.unwrap();
        assert!(n > 0, "response cut");
        got.extend_from_slice(&buf[..n]);
    }
    let recs = fx.wait_records("three records", 3, |_| true).await;
    let unanswered: Vec<_> = recs.iter().filter(|r| r.status == 0).collect();
    assert_eq!(unanswered.len(), 2, "{recs:?}");
    assert!(
        unanswered
            .iter()
            .all(|r| r.path.is_empty() && r.outcome == Outcome::Refused)
    );
    assert!(
        unanswered.iter().any(|r| r
            .reason
            .contains("connection closed before the request's header ended")),
        "{recs:?}"
    );
    let timed_out = unanswered
        .iter()
        .find(|r| r.reason.contains("request header not complete within 1 s"))
        .unwrap_or_else(|| panic!("{recs:?}"));
    // Timed from the request's first byte, not from when it was given up.
    assert!(timed_out.duration_ms >= 1000, "{timed_out:?}");
    // The idle connection, given a stray empty line (RFC 9112 §2.2: no
    // request), is closed by the server or left open; either way no
    // record is added for it.
    idle.write_all(b"\r\n").await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(3), idle.read(&mut buf)).await;
    // Nor for an HTTPS connection that completes its handshake and sends
    // nothing (a browser's preconnect): s_client ends when the server
    // closes it at the header timeout.
    let https = fx.server.https_addr().unwrap().to_string();
    let mut tls = tokio::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &https])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    bounded("s_client closed by the server", tls.wait())
        .await
        .unwrap();
    assert_eq!(
        fx.server.downloads().len(),
        3,
        "{:?}",
        fx.server.downloads()
    );
    // Over TLS, a partial header and a close without close_notify (what
    // Python's ssl does on close()) is a request cut off too. TLS 1.2: no
    // session ticket arrives after the handshake, so the close is a FIN
    // behind the bytes, never a reset that could overtake them.
    let script = "import socket, ssl, sys\n\
        ctx = ssl.create_default_context(); ctx.check_hostname = False\n\
        ctx.verify_mode = ssl.CERT_NONE; ctx.maximum_version = ssl.TLSVersion.TLSv1_2\n\
        t = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1]))))\n\
        t.sendall(sys.argv[2].encode()); t.close()\n";
    let port = fx.server.https_addr().unwrap().port().to_string();
    let out = common::python(script, &[&port, &partial]).await;
    assert!(out.status.success(), "{out:?}");
    let cut: Vec<_> = fx
        .wait_records("four records", 4, |_| true)
        .await
        .into_iter()
        .filter(|r| r.protocol == Protocol::Https)
        .collect();
    assert_eq!(cut.len(), 1, "{cut:?}");
    assert_eq!((cut[0].status, cut[0].path.as_str()), (0, ""));
    assert!(cut[0].reason.contains("request cut off"), "{cut:?}");
    drop((closed, silent));
}

/// A request sent with `Expect: 100-continue` gets its answer with
/// `Connection: close` (RFC 9110 §10.1.1): its content is never read, so
/// the connection closes after the answer, and the client is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_to_expect_100_continue_says_it_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fx = Fixture::start(|b| b).await;
    let mut tcp = tokio::net::TcpStream::connect(fx.server.http_addr().unwrap())
        .await
        .unwrap();
    tcp.write_all(
        format!(
            "GET /{PKG} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    bounded("the answer, then the close", tcp.read_to_end(&mut got))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    let head = &text[..text.find("\r\n\r\n").expect("a header")];
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
}

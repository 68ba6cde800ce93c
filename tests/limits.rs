//! Connection limits end to end: real sockets from 127.0.0.1 and
//! 127.0.0.2, curl as the well-behaved client.

mod common;

use common::{Fixture, bounded, run};
use qfota_serve::dlog::{Outcome, Protocol};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PKG: &str = "update-v12-to-v13.zip";

/// What the server sends on a fresh connection before closing it (up to
/// 4 KiB), after sending `hello`.
async fn first_words(addr: std::net::SocketAddr, hello: &[u8]) -> String {
    let mut tcp = bounded("connect", TcpStream::connect(addr)).await.unwrap();
    let _ = tcp.write_all(hello).await;
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    while got < buf.len() {
        match bounded("read", tcp.read(&mut buf[got..])).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    String::from_utf8_lossy(&buf[..got]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_per_address_limit_http_gets_503_ftp_421_and_others_go_on() {
    let fx = Fixture::start(|b| b.max_connections_per_ip(2).max_connections(3)).await;
    let http = fx.server.http_addr().unwrap();
    let ftp = fx.server.ftp_addr().unwrap();
    // Two idle connections from 127.0.0.1 use up its share.
    let held = [
        TcpStream::connect(http).await.unwrap(),
        TcpStream::connect(http).await.unwrap(),
    ];
    let reply = first_words(http, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply:?}");
    assert!(reply.contains("Retry-After: 5"), "{reply:?}");
    let greeting = first_words(ftp, b"").await;
    assert!(greeting.starts_with("421 "), "{greeting:?}");
    // Another address still gets served.
    let url = fx.http_url(PKG);
    let out = run(
        "curl",
        &["-sf", "--interface", "127.0.0.2", "-o", "/dev/null", &url],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let refused = fx
        .wait_record("a refused record for the limit", |r| {
            r.outcome == Outcome::Refused && r.reason.contains("--max-connections-per-ip")
        })
        .await;
    assert_eq!(refused.peer.ip().to_string(), "127.0.0.1");
    assert!(matches!(refused.protocol, Protocol::Http | Protocol::Ftp));
    // Closing the idle connections frees their places.
    drop(held);
    common::eventually(
        "a place is free again",
        std::time::Duration::from_secs(10),
        || async {
            let out = run("curl", &["-sf", "-o", "/dev/null", &url]).await;
            out.status.success().then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_over_the_limit_leaves_one_record_a_second_counting_every_refusal() {
    let fx = Fixture::start(|b| b.max_connections_per_ip(1)).await;
    let http = fx.server.http_addr().unwrap();
    let _held = TcpStream::connect(http).await.unwrap();
    // 50 refused connections in well under a second, then none: the ones
    // held back are recorded when their second ends, not left for a
    // refusal that never comes.
    for _ in 0..50 {
        let reply = first_words(http, b"").await;
        assert!(reply.starts_with("HTTP/1.1 503"), "{reply:?}");
    }
    let refused = common::eventually("every refusal counted", Duration::from_secs(10), || async {
        let refused: Vec<_> = fx
            .server
            .downloads()
            .into_iter()
            .filter(|r| r.outcome == Outcome::Refused)
            .collect();
        let counted: u64 = refused.iter().map(|r| r.attempts()).sum();
        (counted == 50).then_some(refused)
    })
    .await;
    assert!(
        refused.len() < 50,
        "{} records for 50 refusals",
        refused.len()
    );
    let last = refused.last().unwrap();
    assert!(last.more_refused > 0, "{last:?}");
    // One reason for every record of the limit (the count is a field).
    assert!(
        refused.iter().all(|r| r.reason == refused[0].reason),
        "{refused:?}"
    );
}

/// Tries argv[2] logins with a wrong password on the FTP port argv[1],
/// each on its own connection, then one with the right password; prints
/// the reply codes.
const LOGINS: &str = r#"
import ftplib, sys
codes = []
for i in range(int(sys.argv[2])):
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", int(sys.argv[1]), timeout=30)
    try:
        ftp.login("test", "wrong")
        codes.append("230")
    except ftplib.error_perm as e:
        codes.append(str(e)[:3])
    ftp.close()
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", int(sys.argv[1]), timeout=30)
codes.append(ftp.login("test", "test")[:3])
ftp.quit()
print(" ".join(codes))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_logins_are_answered_late_and_a_right_password_is_not() {
    let fx = Fixture::start(|b| b).await;
    let port = fx.ftp_port().to_string();
    let out = common::python(LOGINS, &[&port, "5"]).await;
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(codes.trim(), "530 530 530 530 530 230", "{out:?}");
    let failed: Vec<_> = fx
        .server
        .downloads()
        .into_iter()
        .filter(|r| r.outcome == Outcome::AuthFailed)
        .map(|r| r.reason)
        .collect();
    assert_eq!(
        failed,
        [
            "wrong password",
            "wrong password",
            "wrong password",
            "wrong password (answered after 1 s: 4 failed logins in a row from this address)",
            "wrong password (answered after 2 s: 5 failed logins in a row from this address)",
        ]
    );
}

/// Four failed logins from 127.0.0.1 on the FTP port `port`, each on its
/// own connection (ftplib): the next failure is answered after 2 s.
async fn four_failed_logins(port: &str) {
    let failures = "import ftplib, sys\n\
        for _ in range(4):\n\
        \x20   ftp = ftplib.FTP(); ftp.connect('127.0.0.1', int(sys.argv[1]), timeout=30)\n\
        \x20   try: ftp.login('test', 'wrong')\n\
        \x20   except ftplib.error_perm: pass\n\
        \x20   ftp.close()\n";
    let out = common::python(failures, &[port]).await;
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_answer_says_when_the_client_had_left() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fx = Fixture::start(|b| b.login_timeout(std::time::Duration::from_secs(10))).await;
    let port = fx.ftp_port().to_string();
    // Four failures (the fourth waits 1 s), no success after them.
    four_failed_logins(&port).await;
    // The fifth waits 2 s, for a client that does not wait for it.
    let mut control = tokio::net::TcpStream::connect(("127.0.0.1", fx.ftp_port()))
        .await
        .unwrap();
    let mut banner = [0u8; 256];
    let _ = control.read(&mut banner).await.unwrap();
    control
        .write_all(b"USER test\r\nPASS wrong\r\n")
        .await
        .unwrap();
    // Gone once libunftp has the PASS: its USER reply is read first.
    let _ = control.read(&mut banner).await.unwrap();
    drop(control);
    let rec = fx
        .wait_record("the delayed failure", |r| r.reason.contains("had closed"))
        .await;
    assert_eq!(
        rec.reason,
        "wrong password (answered after 2 s: 5 failed logins in a row from this address; \
         the client had closed the connection before it)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_answers_come_before_the_login_timeout_of_their_connection() {
    // One connection, six wrong passwords, a 5 s login timeout: the 4th
    // waits 1 s, the 5th 2 s (3 s in), and the 6th would wait 4 s — past
    // the timeout, which runs from the connection's start: it is answered
    // at once instead, so every PASS gets its 530 and no 421 comes first.
    let fx = Fixture::start(|b| b.login_timeout(std::time::Duration::from_secs(5))).await;
    let script = "import ftplib, sys\n\
        ftp = ftplib.FTP(); ftp.connect('127.0.0.1', int(sys.argv[1]), timeout=30)\n\
        codes = []\n\
        for _ in range(6):\n\
        \x20   try: ftp.login('test', 'wrong')\n\
        \x20   except ftplib.error_perm as e: codes.append(str(e)[:3])\n\
        \x20   except (ftplib.error_temp, EOFError, OSError) as e: codes.append('gone: %s' % e); break\n\
        print(' '.join(codes))\n";
    let out = common::python(script, &[&fx.ftp_port().to_string()]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "530 530 530 530 530 530",
        "{out:?}"
    );
}

/// Logs in (argv[2] = "login") or not, waits argv[3] seconds, then sends
/// NOOP; prints its reply or "closed".
const IDLE: &str = r#"
import ftplib, sys, time
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", int(sys.argv[1]), timeout=30)
if sys.argv[2] == "login":
    ftp.login("test", "test")
time.sleep(float(sys.argv[3]))
try:
    print(ftp.voidcmd("NOOP")[:3])
except (EOFError, OSError):
    print("closed")
except ftplib.Error as e:
    # An answer (such as 530 before login) means the connection is open.
    print(str(e)[:3])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_does_not_log_in_is_closed_and_a_logged_in_one_stays() {
    let fx = Fixture::start(|b| b.login_timeout(std::time::Duration::from_secs(1))).await;
    let port = fx.ftp_port().to_string();
    let silent_args = [port.as_str(), "no", "2"];
    let working_args = [port.as_str(), "login", "2"];
    let (silent, working) = tokio::join!(
        common::python(IDLE, &silent_args),
        common::python(IDLE, &working_args),
    );
    // Told why (421, RFC 959 §4.2) before the close.
    assert_eq!(
        String::from_utf8_lossy(&silent.stdout).trim(),
        "421",
        "{silent:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&working.stdout).trim(),
        "200",
        "{working:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_new_clients_are_answered_and_recorded() {
    // Both parities: an FTP session takes two descriptors, so with an odd
    // limit the last session leaves one descriptor that other opens (the
    // command-line cap's kernel look-ups, the package rescan) contend for.
    for limit in [63, 64] {
        out_of_file_descriptors_at(limit).await;
    }
}

/// The out-of-descriptors check against the real binary started with
/// `limit` descriptors (soft and hard, so it cannot raise them).
async fn out_of_file_descriptors_at(limit: u32) {
    use std::path::Path;
    use std::time::Duration;
    let work = tempfile::tempdir().unwrap();
    let ready = work.path().join("ready.json");
    let log = work.path().join("downloads.jsonl");
    let packages = Path::new(env!("CARGO_MANIFEST_DIR")).join("packages");
    let _server = tokio::process::Command::new("prlimit")
        .arg(format!("--nofile={limit}:{limit}"))
        .args(["--", env!("CARGO_BIN_EXE_qfota-serve")])
        .args("--ftp 0 --http 0 --bind 127.0.0.1 --user test:test".split(' '))
        .arg("--log")
        .arg(&log)
        .arg("--ready-json")
        .arg(&ready)
        .arg(&packages)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let v: serde_json::Value =
        common::eventually("the ready file", Duration::from_secs(20), || {
            let ready = ready.clone();
            async move { serde_json::from_slice(&std::fs::read(ready).ok()?).ok() }
        })
        .await;
    let ftp: std::net::SocketAddr = v["listeners"]["ftp"].as_str().unwrap().parse().unwrap();
    let url = format!("http://{}/{PKG}", v["listeners"]["http"].as_str().unwrap());
    // Idle FTP connections (two descriptors each) until the server has no
    // descriptor left: the ones it cannot serve are told so (421) instead
    // of waiting unanswered in the backlog.
    let mut held = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..40 {
        let tcp = bounded("connect", TcpStream::connect(ftp)).await.unwrap();
        let mut first = [0u8; 3];
        let mut tcp = tcp;
        match tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut first)).await {
            Ok(Ok(_)) => answers.push(String::from_utf8_lossy(&first).into_owned()),
            _ => answers.push("nothing".into()),
        }
        held.push(tcp);
    }
    assert!(answers.iter().any(|a| a == "220"), "{limit}: {answers:?}");
    assert!(answers.iter().any(|a| a == "421"), "{limit}: {answers:?}");
    assert!(
        !answers.iter().any(|a| a == "nothing"),
        "{limit}: {answers:?}"
    );
    // A download from another address is answered 503, not left hanging.
    let out = run(
        "curl",
        &[
            "-s",
            "--max-time",
            "10",
            "--interface",
            "127.0.0.2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "503", "{out:?}");
    let records = common::eventually("refused records", Duration::from_secs(10), || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(log).ok()?;
            let refused: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .filter(|r: &serde_json::Value| {
                    r["reason"]
                        .as_str()
                        .unwrap_or("")
                        .contains("out of file descriptors")
                })
                .collect();
            let peers = |ip: &str| {
                refused
                    .iter()
                    .any(|r| r["peer"].as_str().unwrap_or("").starts_with(ip))
            };
            (peers("127.0.0.1:") && peers("127.0.0.2:")).then_some(refused)
        }
    })
    .await;
    assert!(
        records.iter().all(|r| r["outcome"] == "refused"),
        "{records:?}"
    );
    // Once the idle connections go, downloads work again.
    drop(held);
    common::eventually(
        "a download once descriptors are free",
        Duration::from_secs(10),
        || async {
            let out = run("curl", &["-sf", "-o", "/dev/null", &url]).await;
            out.status.success().then_some(())
        },
    )
    .await;
}

/// Passwords pipelined on one connection are not all checked at once: one
/// sent while another is answered late is refused unchecked (libunftp
/// checks each `PASS` in a task of its own; checked side by side, a burst
/// of guesses — the right one among them — would pass the failed-login
/// delay in one go).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_passwords_are_not_checked_side_by_side() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let fx = Fixture::start(|b| b).await;
    // Four failures from this address: the next one is answered after 2 s.
    let port = fx.ftp_port().to_string();
    four_failed_logins(&port).await;
    let control = TcpStream::connect(("127.0.0.1", fx.ftp_port()))
        .await
        .unwrap();
    let (read, mut write) = control.into_split();
    let mut lines = BufReader::new(read).lines();
    let banner = lines.next_line().await.unwrap().unwrap();
    assert!(banner.starts_with("220"), "{banner}");
    let mut burst = b"USER test\r\n".to_vec();
    for i in 0..6 {
        burst.extend_from_slice(format!("PASS guess{i}\r\n").as_bytes());
    }
    write.write_all(&burst).await.unwrap();
    let codes = bounded("the replies to USER and six PASS", async {
        let mut codes = Vec::new();
        while codes.len() < 7 {
            let line = lines.next_line().await.unwrap().expect("a reply");
            codes.push(line[..3].to_string());
        }
        codes
    })
    .await;
    // No guess gets in. Each is refused: 530 (checked, or refused
    // unchecked), or 503 from libunftp when it takes one after the checked
    // guess's failure sent the session back to wanting USER (it answers
    // pipelined commands out of order; which ones depends on timing).
    assert_eq!(codes[0], "331", "{codes:?}");
    assert!(
        codes[1..].iter().all(|c| c == "530" || c == "503"),
        "{codes:?}"
    );
    let refused_530 = codes[1..].iter().filter(|c| *c == "530").count();
    fx.wait_record("the checked one's record", |r| {
        r.reason.contains("answered after 2 s")
    })
    .await;
    let failed: Vec<_> = fx
        .server
        .downloads()
        .into_iter()
        .filter(|r| r.outcome == Outcome::AuthFailed)
        .map(|r| r.reason)
        .skip(4)
        .collect();
    // One of the six was checked (and answered after 2 s); the other 530s
    // came while it was, and were refused unchecked.
    let checked = failed
        .iter()
        .filter(|r| r.starts_with("wrong password (answered after 2 s"))
        .count();
    let unchecked = failed
        .iter()
        .filter(|r| r.starts_with("not checked"))
        .count();
    assert_eq!(
        (failed.len(), checked, unchecked),
        (refused_530, 1, refused_530.saturating_sub(1)),
        "{failed:?} for {codes:?}"
    );
}

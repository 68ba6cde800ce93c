//! FTP data-connection defences end to end: passive listeners that only
//! the control peer can reach, one outstanding listener per session and a
//! share per address, and a record for a data connection that never
//! comes. Real sockets from
//! 127.0.0.1 and 127.0.0.2; Python's ftplib as the well-behaved client.

mod common;

use std::time::Duration;

use common::{Fixture, sha256};
use qfota_serve::dlog::Outcome;

const PKG: &str = "update-v12-to-v13.zip";

/// PASV as ftplib would parse it: the port.
const PASV: &str = r#"
import ftplib, hashlib, json, re, socket, sys
PORT = int(sys.argv[1])
PKG = "update-v12-to-v13.zip"

def session(src="127.0.0.1"):
    ftp = ftplib.FTP(source_address=(src, 0))
    ftp.connect("127.0.0.1", PORT, timeout=10)
    ftp.login("test", "test")
    ftp.voidcmd("TYPE I")
    return ftp

def pasv(ftp):
    try:
        reply = ftp.sendcmd("PASV")
    except ftplib.error_temp as e:
        return str(e)[:3]
    n = re.search(r"\((.*)\)", reply).group(1).split(",")
    return int(n[4]) * 256 + int(n[5])

def fetch(ftp, port, src="127.0.0.1"):
    data = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(src, 0))
    first = ftp.sendcmd("RETR " + PKG)[:3]
    body = b""
    while True:
        chunk = data.recv(65536)
        if not chunk:
            break
        body += chunk
    data.close()
    return [first, ftp.voidresp()[:3], hashlib.sha256(body).hexdigest()]
"#;

/// Runs `body` after the [`PASV`] helpers against the fixture's FTP port;
/// the JSON object it prints.
async fn ftp_script(fx: &Fixture, body: &str) -> serde_json::Value {
    let script = format!("{PASV}{body}");
    let port = fx.ftp_port().to_string();
    let out = common::python(&script, &[&port]).await;
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_control_peer_reaches_a_passive_listener_and_it_is_not_consumed() {
    let fx = Fixture::start(|b| b).await;
    let script = r#"
res = {}
ftp = session()
port = pasv(ftp)
intruder = socket.socket()
intruder.bind(("127.0.0.2", 0))
intruder.settimeout(1.0)
try:
    intruder.connect(("127.0.0.1", port))
    res["intruder"] = "connected"
except OSError:
    res["intruder"] = "kept out"
intruder.close()
res["victim"] = fetch(ftp, port)
print(json.dumps(res))
"#;
    let v = ftp_script(&fx, script).await;
    assert_eq!(v["intruder"], "kept out", "{v}");
    let want = sha256(&fx.package_bytes(PKG));
    assert_eq!(v["victim"], serde_json::json!(["150", "226", want]), "{v}");
    let rec = fx
        .wait_record("the victim's complete RETR", |r| {
            r.outcome == Outcome::Complete && r.path == PKG
        })
        .await;
    assert_eq!(rec.peer.ip().to_string(), "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pasv_replaces_the_old_and_one_address_holds_half_the_ports() {
    // Four passive ports: each address may hold two outstanding listeners.
    let fx = Fixture::start(|b| b.passive_ports(41000..=41003)).await;
    let script = r#"
res = {}
a = session()
ports = [pasv(a) for _ in range(51)]
res["a_pasv"] = sorted(set(p if isinstance(p, str) else "227" for p in ports))
b = session("127.0.0.2")
res["b_fetch"] = fetch(b, pasv(b), "127.0.0.2")
c = session()
res["c_pasv"] = "227" if isinstance(pasv(c), int) else "425"
d = session()
r = pasv(d)
res["d_pasv"] = r if isinstance(r, str) else "227"
try:
    d.sendcmd("RETR " + PKG)
    res["d_retr"] = "no error"
except ftplib.error_temp as e:
    res["d_retr"] = str(e)[:3]
e = session("127.0.0.2")
res["e_fetch"] = fetch(e, pasv(e), "127.0.0.2")
res["a_fetch"] = fetch(a, pasv(a))
print(json.dumps(res))
"#;
    let v = ftp_script(&fx, script).await;
    let want = sha256(&fx.package_bytes(PKG));
    let ok = serde_json::json!(["150", "226", want]);
    // 51 PASVs from one session: every one answered, one port held.
    assert_eq!(v["a_pasv"], serde_json::json!(["227"]), "{v}");
    assert_eq!(v["b_fetch"], ok, "{v}");
    // 127.0.0.1 holds A's and C's listeners: D is refused, 127.0.0.2 not.
    assert_eq!(v["c_pasv"], "227", "{v}");
    assert_eq!(v["d_pasv"], "425", "{v}");
    assert_eq!(v["d_retr"], "425", "{v}");
    assert_eq!(v["e_fetch"], ok, "{v}");
    assert_eq!(v["a_fetch"], ok, "{v}");
    // D's attempt is recorded with why its data connection never was.
    let d = fx
        .wait_record("D's RETR", |r| r.status == 425 && r.path == PKG)
        .await;
    assert!(
        d.reason
            .contains("PASV/EPSV was refused (127.0.0.1 holds its share of passive ports"),
        "{d:?}"
    );
}

/// A `RETR` sent after its passive listener expired: libunftp answers it
/// `150` and would wait for good; it gets `425` and a record instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retr_after_its_listener_expired_gets_425_and_a_record() {
    let fx = Fixture::start(|b| b.data_connection_timeout(Duration::from_secs(1))).await;
    let script = r#"
import time
res = {}
ftp = session()
pasv(ftp)
time.sleep(1.5)
res["retr"] = ftp.sendcmd("RETR " + PKG)[:3]
try:
    ftp.getresp()
    res["end"] = "no error"
except ftplib.error_temp as e:
    res["end"] = str(e)[:3]
res["next"] = fetch(ftp, pasv(ftp))
print(json.dumps(res))
"#;
    let v = ftp_script(&fx, script).await;
    assert_eq!(
        (&v["retr"], &v["end"]),
        (&"150".into(), &"425".into()),
        "{v}"
    );
    let want = sha256(&fx.package_bytes(PKG));
    assert_eq!(v["next"], serde_json::json!(["150", "226", want]), "{v}");
    let rec = fx
        .wait_record("the RETR whose listener expired", |r| r.status == 425)
        .await;
    assert_eq!((rec.path.as_str(), rec.outcome), (PKG, Outcome::Aborted));
    assert!(rec.reason.contains("listener had expired"), "{rec:?}");
}

/// A client that sends `RETR` again before the first one's reply: each
/// `RETR` leaves its own record (the first with the `150` it got, the
/// second with libunftp's `425`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_retrs_before_a_reply_leave_two_records() {
    let fx = Fixture::start(|b| b).await;
    let script = r#"
res = {}
ftp = session()
pasv(ftp)
res["first"] = ftp.sendcmd("RETR " + PKG)[:3]
try:
    ftp.sendcmd("RETR " + PKG)
    res["second"] = "no error"
except ftplib.error_temp as e:
    res["second"] = str(e)[:3]
print(json.dumps(res))
"#;
    let v = ftp_script(&fx, script).await;
    assert_eq!(v, serde_json::json!({"first": "150", "second": "425"}));
    let records = fx
        .wait_records("one record per RETR", 2, |r| r.path == PKG)
        .await;
    let mut codes: Vec<u16> = records.iter().map(|r| r.status).collect();
    codes.sort_unstable();
    assert_eq!(codes, [150, 425], "{records:#?}");
}

/// A `RETR` answered `150` whose client closes the control connection
/// before any data connection: recorded when the connection closes (not
/// when libunftp lets the session go, 15 s on), with the `150` it got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retr_whose_client_leaves_first_is_recorded_at_the_close() {
    let fx = Fixture::start(|b| b).await;
    let script = r#"
ftp = session()
pasv(ftp)
res = {"retr": ftp.sendcmd("RETR " + PKG)[:3]}
ftp.sock.close()
print(json.dumps(res))
"#;
    let v = ftp_script(&fx, script).await;
    assert_eq!(v["retr"], "150", "{v}");
    let rec = fx
        .wait_record("the RETR left waiting", |r| r.path == PKG)
        .await;
    assert_eq!(
        (rec.status, rec.outcome),
        (150, Outcome::Aborted),
        "{rec:?}"
    );
    assert!(
        rec.reason.contains("the control connection closed"),
        "{rec:?}"
    );
    assert!(rec.duration_ms < 10_000, "recorded at the close: {rec:?}");
}

/// A download, then an `EPSV` no `RETR` follows, then `QUIT`: one record,
/// the download's (no `425` for the unused listener).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_no_retr_asked_for_leaves_no_record() {
    let fx = Fixture::start(|b| b.data_connection_timeout(Duration::from_secs(1))).await;
    let script = r#"
import time
ftp = session()
res = {"fetch": fetch(ftp, pasv(ftp))}
pasv(ftp)
time.sleep(1.5)
pasv(ftp)
ftp.quit()
print(json.dumps(res))
"#;
    let v = ftp_script(&fx, script).await;
    let want = sha256(&fx.package_bytes(PKG));
    assert_eq!(v["fetch"], serde_json::json!(["150", "226", want]), "{v}");
    // A second session's download, recorded after the first session ended.
    let v = ftp_script(&fx, "s = session()\nprint(json.dumps(fetch(s, pasv(s))))").await;
    assert_eq!(v[1], "226", "{v}");
    fx.wait_records("two downloads", 2, |r| r.outcome == Outcome::Complete)
        .await;
    let records = fx.server.downloads();
    assert_eq!(records.len(), 2, "{records:#?}");
}

/// A client that takes its byte range and closes the data connection
/// (curl `-r` over FTP) while its TCP has acknowledged every byte sent:
/// `complete`, whenever the close lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_closing_after_every_byte_was_acknowledged_is_complete() {
    let fx = Fixture::start(|b| b).await;
    let url = fx.ftp_url(PKG);
    for _ in 0..10 {
        let out = common::run("curl", &["-s", "-o", "/dev/null", "-r", "100-199", &url]).await;
        assert!(out.status.success(), "{out:?}");
    }
    let size = fx.package_bytes(PKG).len() as u64;
    let records = fx.wait_records("ten ranged downloads", 10, |_| true).await;
    for r in &records {
        assert_eq!(r.range_start, 100, "{r:?}");
        if r.bytes_acked == size - 100 {
            assert_eq!(r.outcome, Outcome::Complete, "{r:?}");
        }
    }
}

/// A firewall blocks the data port: the `RETR` answered `150` gets its
/// `425` once the data timeout passes (libunftp alone never answers), the
/// record names the package, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_connection_that_never_comes_is_recorded_and_the_session_goes_on() {
    let fx = Fixture::start(|b| b.data_connection_timeout(Duration::from_secs(1))).await;
    let script = r#"
res = {}
ftp = session()
port = pasv(ftp)
# The module's RETR, whose data connection a firewall blocks.
res["retr"] = ftp.sendcmd("RETR " + PKG)[:3]
# Then the reply that ends it.
try:
    ftp.getresp()
    res["end"] = "no error"
except ftplib.error_temp as e:
    res["end"] = str(e)[:3]
# Past the data timeout the listener is closed.
probe = socket.socket()
probe.settimeout(2)
try:
    probe.connect(("127.0.0.1", port))
    res["old_port"] = "open"
except ConnectionRefusedError:
    res["old_port"] = "closed"
# The session goes on: the next transfer works.
res["next"] = fetch(ftp, pasv(ftp))
print(json.dumps(res))
"#;
    let v = ftp_script(&fx, script).await;
    assert_eq!(v["retr"], "150", "{v}");
    assert_eq!(v["end"], "425", "{v}");
    assert_eq!(v["old_port"], "closed", "{v}");
    let want = sha256(&fx.package_bytes(PKG));
    assert_eq!(v["next"], serde_json::json!(["150", "226", want]), "{v}");
    let aborted = fx
        .wait_record("the RETR whose data connection never came", |r| {
            r.outcome == Outcome::Aborted && r.status == 425
        })
        .await;
    assert_eq!(aborted.path, PKG);
    assert_eq!(aborted.bytes_sent, 0);
    assert_eq!(aborted.user.as_deref(), Some("test"));
    assert!(
        aborted
            .reason
            .contains("RETR answered 150, then no data connection within 1 s after PASV"),
        "{aborted:?}"
    );
    // Exactly one such record: the transfer that worked released its
    // listener without one.
    let waits = fx
        .server
        .downloads()
        .iter()
        .filter(|r| r.status == 425)
        .count();
    assert_eq!(waits, 1, "{:#?}", fx.server.downloads());
}

/// curl's flow for a missing package: `EPSV`/`PASV`, the data connection,
/// then `SIZE` answered 550. The attempt has its `not_found` record; the
/// passive listener left unused after it writes no second (`425`, "no data
/// connection") record, which would point at a firewall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_refused_after_pasv_leaves_one_record_not_a_second_425() {
    let fx = Fixture::start(|b| b.data_connection_timeout(Duration::from_secs(1))).await;
    let script = r#"
import time
res = {}
ftp = session()
port = pasv(ftp)
data = socket.create_connection(("127.0.0.1", port), timeout=5)
try:
    ftp.sendcmd("SIZE missing-v1-to-v2.zip")
except ftplib.error_perm as e:
    res["size"] = str(e)[:3]
data.close()
# Past the data timeout: the listener is given up.
time.sleep(1.5)
res["next"] = fetch(ftp, pasv(ftp))
print(json.dumps(res))
"#;
    let v = ftp_script(&fx, script).await;
    assert_eq!(v["size"], "550", "{v}");
    let want = sha256(&fx.package_bytes(PKG));
    assert_eq!(v["next"], serde_json::json!(["150", "226", want]), "{v}");
    fx.wait_record("the download after it", |r| {
        r.path == PKG && r.outcome == Outcome::Complete
    })
    .await;
    let records = fx.server.downloads();
    let missing: Vec<_> = records
        .iter()
        .filter(|r| r.path == "missing-v1-to-v2.zip")
        .collect();
    assert_eq!(missing.len(), 1, "{records:#?}");
    assert_eq!(missing[0].outcome, Outcome::NotFound, "{records:#?}");
    assert!(!records.iter().any(|r| r.status == 425), "{records:#?}");
}

/// The resident set of this process (the in-process server), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_line_with_no_end_gets_500_and_is_not_buffered() {
    let fx = Fixture::start(|b| b).await;
    // Two connections, one before login and one after, each trying to send
    // a 256 MiB command line (libunftp alone would buffer all of it).
    let script = r#"
import threading
res = {}
def flood(name, ftp=None):
    if ftp is None:
        s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
        s.recv(200)
        s.sendall(b"USER ")
    else:
        s = ftp.sock
        s.sendall(b"RETR ")
    sent = 0
    chunk = b"x" * 65536
    try:
        while sent < 256 << 20:
            s.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    s.settimeout(5)
    answer = b""
    try:
        while not answer.endswith(b"\r\n"):
            part = s.recv(200)
            if not part:
                break
            answer += part
    except OSError:
        pass
    res[name] = {"sent": sent, "answer": answer.decode()[:3]}
ftp = session()
threads = [threading.Thread(target=flood, args=("before_login",)),
           threading.Thread(target=flood, args=("after_login", ftp))]
for t in threads: t.start()
for t in threads: t.join()
# Everyone else is still served.
good = session()
res["other"] = fetch(good, pasv(good))
print(json.dumps(res))
"#;
    let before = rss_kib();
    let v = ftp_script(&fx, script).await;
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    for name in ["before_login", "after_login"] {
        assert_eq!(v[name]["answer"], "500", "{name}: {v}");
        // The sender was stopped long before its 256 MiB.
        let sent = v[name]["sent"].as_u64().unwrap();
        assert!(sent < 64 << 20, "{name} sent {sent} bytes: {v}");
    }
    let want = sha256(&fx.package_bytes(PKG));
    assert_eq!(v["other"], serde_json::json!(["150", "226", want]), "{v}");
    // Two 256 MiB lines used to add over 500 MB to the server.
    assert!(grown_mib < 64, "the server grew by {grown_mib} MiB");
    let records = fx
        .wait_records("two refused over-long command lines", 2, |r| {
            r.outcome == Outcome::Refused && r.status == 500
        })
        .await;
    for r in &records {
        assert!(r.reason.contains("command line too long"), "{r:?}");
        assert!(r.reason.contains("limit 4,096"), "{r:?}");
    }
    assert!(
        records.iter().any(|r| r.user.as_deref() == Some("test")),
        "{records:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retr_with_no_data_connection_is_answered_425_and_recorded() {
    let fx = Fixture::start(|b| b).await;
    let script = r#"
ftp = session()
try:
    ftp.sendcmd("RETR " + PKG)
    retr = "no error"
except ftplib.error_temp as e:
    retr = str(e)[:3]
print(json.dumps({"retr": retr, "next": ftp.sendcmd("NOOP")[:3]}))
"#;
    let v = ftp_script(&fx, script).await;
    assert_eq!(v, serde_json::json!({"retr": "425", "next": "200"}));
    let rec = fx
        .wait_record("the RETR with no data connection", |r| r.status == 425)
        .await;
    assert_eq!(rec.outcome, Outcome::Aborted);
    assert_eq!(rec.path, PKG);
    assert_eq!(rec.user.as_deref(), Some("test"));
    assert!(
        rec.reason.contains("RETR with no data connection"),
        "{rec:?}"
    );
}

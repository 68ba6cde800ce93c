//! End-to-end tests of the virtual modem (`qfota_serve::modem`): a modem
//! on 127.0.0.1 port 0 in-process, driven over TCP the way host software
//! drives a module's AT port, against the real server of `tests/common`;
//! the PTY port in-process and through the `qfota-serve modem` binary with
//! the pyserial host of `tests/modem_host.py`. Every await is bounded; waits
//! are on events (status changes, stdout lines, download records) or, where
//! there is none (a port coming back), poll with a deadline; links live in
//! temporary folders.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

mod common;

use common::{BIG, DEADLINE, Fixture, bounded};
use qfota_serve::dlog::Outcome;
use qfota_serve::modem::{Modem, ModemBuilder, Status};
use qfota_serve::profile::Profile;
use qfota_serve::sim::{Fault, Module};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Module delays: a 20 s reboot takes 40 ms, the upgrade 240 ms.
const SCALE: f64 = 0.002;
/// The port is away this long per reboot.
const REBOOT: Duration = Duration::from_millis(100);
/// The sample package (`packages/`), v12 → v13.
const PKG: &str = "update-v12-to-v13.zip";

fn module(profile: &str, faults: &[Fault]) -> Module {
    Module::builder(Profile::by_name(profile).unwrap())
        .version("v12")
        .time_scale(SCALE)
        .timeout(Duration::from_secs(10))
        .faults(faults.iter().copied())
        .build()
        .unwrap()
}

async fn tcp_modem(module: Module, configure: impl FnOnce(ModemBuilder) -> ModemBuilder) -> Modem {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    configure(Modem::builder(module).tcp(listener).reboot_time(REBOOT))
        .start()
        .unwrap()
}

/// Shuts the modem down (bounded).
async fn stop(modem: Modem) {
    bounded("modem shutdown", modem.shutdown()).await;
}

/// Waits (bounded) until the modem's status satisfies `cond`.
async fn wait_status(modem: &Modem, what: &str, cond: impl Fn(&Status) -> bool) -> Status {
    let mut rx = modem.watch();
    bounded(what, rx.wait_for(|s| cond(s)))
        .await
        .unwrap()
        .clone()
}

fn q(rest: &str) -> String {
    format!("\r\n+QIND: \"FOTA\",{rest}\r\n")
}

/// A host on the modem's TCP port.
struct Host {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Host {
    async fn connect(modem: &Modem) -> Host {
        let addr = modem.tcp_addr().unwrap();
        let stream = bounded("connect", TcpStream::connect(addr)).await.unwrap();
        Host {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects once the module is up again after a reboot: connections
    /// made while it is down are closed at once; the first that brings
    /// bytes is the new port.
    async fn reconnect(modem: &Modem) -> Host {
        let addr = modem.tcp_addr().unwrap();
        bounded("reconnect after reboot", async {
            loop {
                if let Ok(mut stream) = TcpStream::connect(addr).await {
                    let mut first = [0u8; 256];
                    match stream.read(&mut first).await {
                        Ok(n) if n > 0 => {
                            return Host {
                                stream,
                                buf: first[..n].to_vec(),
                            };
                        }
                        _ => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        bounded("write", self.stream.write_all(bytes.as_ref()))
            .await
            .unwrap();
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let n = bounded("read", self.stream.read(&mut chunk))
            .await
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads exactly `want.len()` bytes and compares them.
    async fn expect(&mut self, want: impl AsRef<[u8]>) {
        let want = want.as_ref();
        while self.buf.len() < want.len() {
            if self.fill().await == 0 {
                break;
            }
        }
        let n = want.len().min(self.buf.len());
        let got: Vec<u8> = self.buf.drain(..n).collect();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "host read"
        );
    }

    /// Reads until `needle` has come; returns what came before it (the
    /// needle is consumed).
    async fn until(&mut self, needle: &str) -> String {
        loop {
            let text = String::from_utf8_lossy(&self.buf).into_owned();
            if let Some(at) = text.find(needle) {
                self.buf.drain(..at + needle.len());
                return text[..at].to_string();
            }
            assert!(
                self.fill().await > 0,
                "no {needle:?} before the end: {text:?}"
            );
        }
    }

    /// Reads until the connection ends; returns what came.
    async fn until_closed(&mut self) -> String {
        while self.fill().await > 0 {}
        String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned()
    }

    /// Sends `cmd` + CR and expects exactly `answer` (echo included).
    async fn at(&mut self, cmd: &str, answer: &str) {
        self.send(format!("{cmd}\r")).await;
        self.expect(answer).await;
    }

    /// Like [`Host::at`] (echo off) while a download prints `DOWNLOADING`
    /// URCs: whole URCs may come before the answer, never inside it.
    async fn at_amid_urcs(&mut self, cmd: &str, answer: &str) {
        self.send(format!("{cmd}\r")).await;
        loop {
            let text = String::from_utf8_lossy(&self.buf).into_owned();
            if let Some(at) = text.find(answer) {
                let before = &text[..at];
                let urc = |k: &str| k.starts_with("+QIND: \"FOTA\",\"DOWNLOADING\",");
                assert!(
                    before.is_empty()
                        || before.len() >= 4
                            && before.starts_with("\r\n")
                            && before.ends_with("\r\n")
                            && before[2..before.len() - 2].split("\r\n\r\n").all(urc),
                    "{cmd}: {text:?}"
                );
                self.buf.drain(..at + answer.len());
                return;
            }
            assert!(self.fill().await > 0, "{cmd}: closed after {text:?}");
        }
    }
}

#[tokio::test]
async fn every_command_answers_exactly_with_echo_on_and_off() {
    let modem = tcp_modem(module("ec2x", &[]), |b| b).await;
    let mut host = Host::connect(&modem).await;
    host.at("AT", "AT\r\r\nOK\r\n").await;
    host.at("at", "at\r\r\nOK\r\n").await;
    host.at("ATE0", "ATE0\r\r\nOK\r\n").await;
    host.at("AT", "\r\nOK\r\n").await;
    for (cmd, answer) in [
        ("ATI", "\r\nQuectel\r\nEC25\r\nRevision: v12\r\n\r\nOK\r\n"),
        ("AT+GMR", "\r\nv12\r\n\r\nOK\r\n"),
        ("AT+QGMR", "\r\nv12\r\n\r\nOK\r\n"),
        ("AT+QGMR?", "\r\nv12\r\n\r\nOK\r\n"),
        ("AT+CGMI", "\r\nQuectel\r\n\r\nOK\r\n"),
        ("AT+CGMM", "\r\nEC25\r\n\r\nOK\r\n"),
        ("AT+GSN", "\r\n867675040000011\r\n\r\nOK\r\n"),
        ("AT+CGSN", "\r\n867675040000011\r\n\r\nOK\r\n"),
        ("AT+CPIN?", "\r\n+CPIN: READY\r\n\r\nOK\r\n"),
        ("AT+CREG?", "\r\n+CREG: 0,1\r\n\r\nOK\r\n"),
        ("AT+CGREG?", "\r\n+CGREG: 0,1\r\n\r\nOK\r\n"),
        ("AT+CEREG?", "\r\n+CEREG: 0,1\r\n\r\nOK\r\n"),
        ("AT+CSQ", "\r\n+CSQ: 24,99\r\n\r\nOK\r\n"),
        ("AT+COPS?", "\r\n+COPS: 0,0,\"qfota-sim\",7\r\n\r\nOK\r\n"),
        ("AT+CGACT?", "\r\n+CGACT: 1,1\r\n\r\nOK\r\n"),
        ("AT+QIACT?", "\r\n+QIACT: 1,1,1,\"10.64.0.1\"\r\n\r\nOK\r\n"),
        ("AT+QICSGP=1,1,\"internet\",\"\",\"\",1", "\r\nOK\r\n"),
        (
            "AT+QICSGP=1",
            "\r\n+QICSGP: 1,\"internet\",\"\",\"\",1\r\n\r\nOK\r\n",
        ),
        ("AT+QFOTA=\"fota/cid\",1", "\r\nERROR\r\n"),
        ("AT+CFUN?", "\r\n+CFUN: 1\r\n\r\nOK\r\n"),
        ("AT+CFUN=1", "\r\nOK\r\n"),
        ("AT+QFOTADL=?", "\r\nOK\r\n"),
        ("AT+FOO", "\r\nERROR\r\n"),
        ("AT+CSQ?", "\r\nERROR\r\n"),
        ("AT+QFOTADL=\"gopher://h/p.zip\"", "\r\nERROR\r\n"),
    ] {
        host.at(cmd, answer).await;
    }
    // An answer and its OK come in one write: a host that reads once per
    // command (fwupd's upload check) gets both.
    for _ in 0..20 {
        host.send("AT+CSQ\r").await;
        assert!(host.fill().await > 0);
        let got = String::from_utf8_lossy(&std::mem::take(&mut host.buf)).into_owned();
        assert_eq!(got, "\r\n+CSQ: 24,99\r\n\r\nOK\r\n", "one read");
    }
    host.at("ATE1", "\r\nOK\r\n").await;
    host.at("AT+CGMM", "AT+CGMM\r\r\nEC25\r\n\r\nOK\r\n").await;
    // A lone LF ends a line too; CRLF counts once; empty lines get nothing.
    host.send("\r\r\nAT\n").await;
    host.expect("\r\rAT\r\r\nOK\r\n").await;
    stop(modem).await;
}

#[tokio::test]
async fn family_and_faults_change_the_answers() {
    let ec200 = tcp_modem(module("ec200", &[]), |b| {
        b.model("EC200T").imei("490154203237518")
    })
    .await;
    let mut host = Host::connect(&ec200).await;
    host.at("ATE0", "ATE0\r\r\nOK\r\n").await;
    for (cmd, answer) in [
        ("AT+CGMM", "\r\nEC200T\r\n\r\nOK\r\n"),
        ("AT+GSN", "\r\n490154203237518\r\n\r\nOK\r\n"),
        (
            "AT+QFOTADL=?",
            "\r\n+QFOTADL: <url>,(0,1),(0,5-100),(0,5-100)\r\n\r\nOK\r\n",
        ),
        ("AT+QFOTA=\"fota/cid\",2", "\r\nOK\r\n"),
        (
            "AT+QFOTA=\"fota/cid\"",
            "\r\n+QFOTA: \"fota/cid\",2\r\n\r\nOK\r\n",
        ),
    ] {
        host.at(cmd, answer).await;
    }
    stop(ec200).await;

    let down = tcp_modem(module("ec2x", &[Fault::NetworkDown]), |b| b).await;
    let mut host = Host::connect(&down).await;
    host.at("ATE0", "ATE0\r\r\nOK\r\n").await;
    for (cmd, answer) in [
        ("AT+CREG?", "\r\n+CREG: 0,2\r\n\r\nOK\r\n"),
        ("AT+CEREG?", "\r\n+CEREG: 0,2\r\n\r\nOK\r\n"),
        ("AT+CSQ", "\r\n+CSQ: 99,99\r\n\r\nOK\r\n"),
        ("AT+CGACT?", "\r\n+CGACT: 1,0\r\n\r\nOK\r\n"),
        ("AT+QIACT=1", "\r\nERROR\r\n"),
    ] {
        host.at(cmd, answer).await;
    }
    stop(down).await;
}

#[tokio::test]
async fn garbage_is_error_or_ignored_and_the_modem_still_answers() {
    let modem = tcp_modem(module("ec2x", &[]), |b| b).await;
    let mut host = Host::connect(&modem).await;
    // Echo on: junk is echoed as typed, then refused; bytes above 0x7f
    // before a line starts (upload padding) are dropped.
    host.send(b"\xff\xffjunk\xfe\x80\r").await;
    host.expect(b"junk\xfe\x80\r\r\nERROR\r\n").await;
    host.at("ATE0", "ATE0\r\r\nOK\r\n").await;
    // NUL and other control bytes are dropped from the line.
    host.send(b"A\0T\x01\x02+C\0GMI\r").await;
    host.expect("\r\nQuectel\r\n\r\nOK\r\n").await;
    host.send(b"\0\0\0\0\r").await;
    host.expect("").await;
    // A 64 KiB line without a terminator, then its end.
    host.send(vec![b'A'; 64 * 1024]).await;
    host.send("\r").await;
    host.expect("\r\nERROR\r\n").await;
    // Half a command: an unterminated URL.
    host.send("AT+QFOTADL=\"").await;
    host.send("\r").await;
    host.expect("\r\nERROR\r\n").await;
    host.send("AT+QFOTADL=\"ftp://127.0.0.1/").await;
    host.send("AT\r").await;
    host.expect("\r\nERROR\r\n").await;
    // Binary noise of every byte value, in odd chunks.
    let noise: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    for chunk in noise.chunks(97) {
        host.send(chunk).await;
    }
    host.send("\rAT\r").await;
    host.expect("").await;
    let rest = {
        let mut got = String::new();
        while !got.ends_with("\r\nOK\r\n") {
            host.fill().await;
            got = String::from_utf8_lossy(&host.buf).into_owned();
        }
        host.buf.clear();
        got
    };
    assert!(rest.contains("ERROR"), "{rest:?}");
    host.at("AT", "\r\nOK\r\n").await;
    // A host that leaves half a command behind and reconnects at once:
    // the new connection is taken (not "busy") and starts clean; echo is
    // the port's setting, still off.
    host.send("AT+QFOTADL=\"ftp://").await;
    drop(host);
    let mut host = Host::connect(&modem).await;
    host.at("AT", "\r\nOK\r\n").await;
    assert_eq!(modem.status().boots, 0, "nothing rebooted the modem");
    stop(modem).await;
}

#[tokio::test]
async fn a_second_tcp_host_is_refused_while_one_is_attached() {
    let modem = tcp_modem(module("ec2x", &[]), |b| b).await;
    let mut first = Host::connect(&modem).await;
    first.at("AT", "AT\r\r\nOK\r\n").await;
    let mut second = Host::connect(&modem).await;
    assert_eq!(second.until_closed().await, "\r\n+CME ERROR: port busy\r\n");
    first
        .at("AT+CGMI", "AT+CGMI\r\r\nQuectel\r\n\r\nOK\r\n")
        .await;
    drop(first);
    // Once the first host has gone, the port takes a new one.
    let addr = modem.tcp_addr().unwrap();
    let mut third = bounded("third host", async {
        loop {
            let mut host = Host::connect(&modem).await;
            host.send("AT\r").await;
            host.fill().await;
            if host.buf.starts_with(b"AT\r") {
                return host;
            }
            assert!(
                host.buf.is_empty() || host.buf.starts_with(b"\r\n+CME ERROR: port busy"),
                "{addr}: {:?}",
                String::from_utf8_lossy(&host.buf)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    third.expect("AT\r\r\nOK\r\n").await;
    stop(modem).await;
}

#[tokio::test]
async fn ftp_fota_on_ec25_reboots_the_port_and_shows_the_new_version() {
    let fx = Fixture::start(|b| b).await;
    let url = fx.ftp_url(PKG);
    let modem = tcp_modem(module("ec2x", &[]), |b| b).await;
    let mut host = Host::connect(&modem).await;
    host.at("AT+QGMR", "AT+QGMR\r\r\nv12\r\n\r\nOK\r\n").await;
    let cmd = format!("AT+QFOTADL=\"{url}\"");
    host.at(&cmd, &format!("{cmd}\r\r\nOK\r\n")).await;
    // The download, then the module reboots: the connection closes.
    assert_eq!(
        host.until_closed().await,
        q("\"FTPSTART\"") + &q("\"FTPEND\",0")
    );
    // Recovery mode: RDY was held for the host, then the upgrade's URCs;
    // a command typed now gets no echo and no answer.
    let mut host = Host::reconnect(&modem).await;
    host.expect("\r\nRDY\r\n").await;
    host.send("AT\r").await;
    let mut want = q("\"START\"");
    for p in 1..=100 {
        want += &q(&format!("\"UPDATING\",{p}"));
    }
    want += &q("\"END\",0");
    assert_eq!(host.until_closed().await, want);
    // Normal boot with the new firmware.
    let mut host = Host::reconnect(&modem).await;
    host.expect("\r\nRDY\r\n\r\n+CFUN: 1\r\n\r\n+CPIN: READY\r\n")
        .await;
    host.at("AT+QGMR", "AT+QGMR\r\r\nv13\r\n\r\nOK\r\n").await;
    host.at(
        "ATI",
        "ATI\r\r\nQuectel\r\nEC25\r\nRevision: v13\r\n\r\nOK\r\n",
    )
    .await;
    let status = modem.status();
    assert_eq!(
        (status.boots, status.powered, status.upgrading),
        (2, true, false)
    );
    let record = bounded(
        "download record",
        fx.server.wait_download(DEADLINE, |r| {
            r.path == PKG && r.outcome == Outcome::Complete
        }),
    )
    .await;
    assert!(record.is_some());
    stop(modem).await;
}

#[tokio::test]
async fn a_wrong_password_is_ftpend_601_and_the_port_stays_up() {
    let fx = Fixture::start(|b| b).await;
    let url = fx.ftp_url(PKG).replace("test:test@", "test:wrong@");
    let modem = tcp_modem(module("ec2x", &[]), |b| b).await;
    let mut host = Host::connect(&modem).await;
    host.at("ATE0", "ATE0\r\r\nOK\r\n").await;
    host.at(&format!("AT+QFOTADL=\"{url}\""), "\r\nOK\r\n")
        .await;
    host.expect(q("\"FTPSTART\"") + &q("\"FTPEND\",601")).await;
    host.at("AT", "\r\nOK\r\n").await;
    host.at("AT+QGMR", "\r\nv12\r\n\r\nOK\r\n").await;
    assert_eq!(modem.status().boots, 0);
    // Nothing else was said after FTPEND: the next bytes are the answer.
    host.at("AT+CGMI", "\r\nQuectel\r\n\r\nOK\r\n").await;
    stop(modem).await;
}

#[tokio::test]
async fn commands_work_during_a_download_and_a_second_fotadl_is_busy() {
    // 8 MiB at 1 MB/s: the download runs for seconds.
    let fx = Fixture::start(|b| b.fault("slow=1000000,path=/big-*.zip".parse().unwrap())).await;
    let url = fx.ftp_url(BIG);
    let http = fx.http_url(BIG);
    let modem = tcp_modem(module("ec200", &[]), |b| b).await;
    let mut host = Host::connect(&modem).await;
    host.at("ATE0", "ATE0\r\r\nOK\r\n").await;
    // Two commands in one write: the second waits for the first's OK, then
    // meets the download under way: ec200 takes it and ends it at once
    // with the busy code (603 over FTP, seed 001 table 2). Five
    // DOWNLOADING lines (ec200, seed 001) show the transfer under way.
    host.send(format!("AT+QFOTADL=\"{url}\",1,5\rAT+QFOTADL=\"{url}\"\r"))
        .await;
    host.expect("\r\nOK\r\n\r\nOK\r\n").await;
    host.until(&q("\"FTPEND\",603")).await;
    host.until(&q("\"DOWNLOADING\",1")).await;
    // Answers during the download are whole; URCs fall between them.
    host.at_amid_urcs("AT+QGMR", "\r\nv12\r\n\r\nOK\r\n").await;
    // Over HTTP the busy code is 703 (seed 001 table 3).
    host.at_amid_urcs(&format!("AT+QFOTADL=\"{http}\""), "\r\nOK\r\n")
        .await;
    host.until(&q("\"HTTPEND\",703")).await;
    // Not a URL: refused.
    host.at_amid_urcs("AT+QFOTADL=\"FILE:100\"", "\r\nERROR\r\n")
        .await;
    // A reboot ends the download: no FTPEND, the port goes away.
    host.at_amid_urcs("AT+CFUN=1,1", "\r\nOK\r\n").await;
    let rest = host.until_closed().await;
    assert!(!rest.contains("FTPEND"), "{rest:?}");
    let aborted = bounded(
        "the server sees the download end",
        fx.server
            .wait_download(DEADLINE, |r| r.path == BIG && r.outcome == Outcome::Aborted),
    )
    .await;
    assert!(aborted.is_some(), "{:#?}", fx.server.downloads());
    let mut host = Host::reconnect(&modem).await;
    host.expect("\r\nRDY\r\n\r\n+CFUN: 1\r\n\r\n+CPIN: READY\r\n")
        .await;
    // Echo is back on after the boot, and the module is free again; ec200
    // tells a refused login apart (625, seed 001 table 2).
    host.at("AT", "AT\r\r\nOK\r\n").await;
    let wrong = fx.ftp_url(PKG).replace("test:test@", "test:wrong@");
    let cmd = format!("AT+QFOTADL=\"{wrong}\"");
    host.at(&cmd, &format!("{cmd}\r\r\nOK\r\n")).await;
    host.expect(q("\"FTPSTART\"") + &q("\"FTPEND\",625")).await;
    assert_eq!(modem.status().boots, 1);
    stop(modem).await;
}

#[tokio::test]
async fn the_upgrade_goes_on_when_the_host_leaves_and_unheard_urcs_are_dropped() {
    let fx = Fixture::start(|b| b).await;
    let url = fx.ftp_url(PKG);
    let modem = tcp_modem(module("ec2x", &[]), |b| b.urc_hold(Duration::ZERO)).await;
    let mut host = Host::connect(&modem).await;
    let cmd = format!("AT+QFOTADL=\"{url}\"");
    host.at(&cmd, &format!("{cmd}\r\r\nOK\r\n")).await;
    drop(host);
    let status = wait_status(&modem, "two reboots", |s| s.boots == 2 && s.powered).await;
    assert!(!status.upgrading);
    assert_eq!(modem.module().version().as_deref(), Some("v13"));
    // Nothing was held for a host that never came back in time.
    let mut host = Host::connect(&modem).await;
    host.at("AT", "AT\r\r\nOK\r\n").await;
    host.at("AT+QGMR", "AT+QGMR\r\r\nv13\r\n\r\nOK\r\n").await;
    stop(modem).await;
}

/// An `ec2x` modem on a PTY behind `link` whose port is away `reboot` on
/// each reboot.
fn pty_modem(link: &Path, reboot: Duration) -> Modem {
    Modem::builder(module("ec2x", &[]))
        .pty(link)
        .reboot_time(reboot)
        .start()
        .unwrap()
}

/// Opens the PTY link like host code would, retrying until it exists.
async fn open_link(link: &Path) -> std::fs::File {
    bounded("the PTY link", async {
        loop {
            if let Ok(f) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(link)
            {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Reads from a host-side PTY descriptor on a blocking thread until
/// `needle` arrives (or the port fails); returns everything read and
/// whether the port ended.
async fn pty_read_until(file: &std::fs::File, needle: &'static str) -> (String, bool) {
    let mut file = file.try_clone().unwrap();
    bounded(
        "PTY read",
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut got = Vec::new();
            let mut chunk = [0u8; 1024];
            loop {
                match file.read(&mut chunk) {
                    Ok(0) | Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
                if !needle.is_empty() && String::from_utf8_lossy(&got).contains(needle) {
                    return (String::from_utf8_lossy(&got).into_owned(), false);
                }
            }
        }),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reboot_replaces_the_pty_behind_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("modem");
    // The port is away for 0.5 s (linger) + 1 s: ample time to see it gone.
    let modem = pty_modem(&link, Duration::from_secs(1));
    let first: PathBuf = modem.status().pty.unwrap();
    assert_eq!(std::fs::read_link(&link).unwrap(), first);
    let port = open_link(&link).await;
    use std::io::Write;
    (&port).write_all(b"ATI\r").unwrap();
    let (got, _) = pty_read_until(&port, "OK\r\n").await;
    assert_eq!(
        got,
        "ATI\r\r\nQuectel\r\nEC25\r\nRevision: v12\r\n\r\nOK\r\n"
    );
    (&port).write_all(b"AT+CFUN=1,1\r").unwrap();
    // The answer comes, then the port fails (EIO / end of file) ...
    let (got, ended) = pty_read_until(&port, "").await;
    assert!(ended);
    assert_eq!(got, "AT+CFUN=1,1\r\r\nOK\r\n");
    drop(port);
    // ... the link is gone while the module is down ...
    wait_status(&modem, "down", |s| !s.powered).await;
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "link removed while down"
    );
    // ... and a new PTY appears behind it, greeting the host that opens it.
    let status = wait_status(&modem, "up again", |s| s.powered && s.boots == 1).await;
    let second = status.pty.unwrap();
    assert_eq!(std::fs::read_link(&link).unwrap(), second);
    let port = open_link(&link).await;
    let (got, _) = pty_read_until(&port, "+CPIN: READY\r\n").await;
    assert_eq!(got, "\r\nRDY\r\n\r\n+CFUN: 1\r\n\r\n+CPIN: READY\r\n");
    (&port).write_all(b"AT\r").unwrap();
    let (got, _) = pty_read_until(&port, "OK\r\n").await;
    assert_eq!(got, "AT\r\r\nOK\r\n");
    stop(modem).await;
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "link removed at shutdown"
    );
}

/// A failed upgrade's recovery boots are short at a small time scale: the
/// module can go down again before a host that reopened the port has
/// settled. Every attempt's `START` … `END,<code>` still reaches a host that
/// reopens the PTY after each reboot and never writes (a missing local
/// file: five `END,504`, then the old firmware).
#[tokio::test(flavor = "multi_thread")]
async fn a_host_reopening_the_pty_sees_every_failed_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("modem");
    let modem = pty_modem(&link, REBOOT);
    let port = open_link(&link).await;
    use std::io::Write;
    (&port)
        .write_all(b"AT+QFOTADL=\"/data/ufs/missing.zip\"\r")
        .unwrap();
    let (answer, _) = pty_read_until(&port, "OK\r\n").await;
    assert!(answer.ends_with("OK\r\n"), "{answer}");
    let end = "+QIND: \"FOTA\",\"END\",504";
    let mut seen = String::new();
    let mut port = port;
    // Each boot ends the port, until the normal boot after the last
    // attempt (`+CPIN: READY`); bounded: five attempts and that boot.
    for _ in 0..12 {
        let (got, ended) = pty_read_until(&port, "+CPIN: READY").await;
        seen.push_str(&got);
        if !ended {
            break;
        }
        drop(port);
        wait_status(&modem, "up", |s| s.powered).await;
        port = open_link(&link).await;
    }
    assert_eq!(
        seen.matches("+QIND: \"FOTA\",\"START\"").count(),
        5,
        "{seen:?}"
    );
    assert_eq!(seen.matches(end).count(), 5, "{seen}");
    stop(modem).await;
}

/// `qfota-serve modem …` as a child process whose stdout lines are
/// collected as they come.
struct ModemProcess {
    child: tokio::process::Child,
    /// Every stdout line so far; changes wake [`ModemProcess::line`].
    lines: watch::Receiver<Vec<String>>,
}

impl ModemProcess {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> ModemProcess {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_qfota-serve"))
            .arg("modem")
            .args(args)
            .envs(env.iter().copied())
            .env("QFOTA_LOG_LEVEL", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (sink, lines) = watch::channel(Vec::new());
        let stdout = child.stdout.take().unwrap();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.send_modify(|all| all.push(line));
            }
        });
        ModemProcess { child, lines }
    }

    /// The first stdout line starting with `prefix` (waits for it,
    /// bounded).
    async fn line(&self, prefix: &str) -> String {
        let mut lines = self.lines.clone();
        let all = bounded(
            &format!("a line {prefix:?}"),
            lines.wait_for(|all| all.iter().any(|l| l.starts_with(prefix))),
        )
        .await
        .unwrap_or_else(|_| panic!("stdout ended without a line {prefix:?}"));
        all.iter().find(|l| l.starts_with(prefix)).unwrap().clone()
    }

    /// SIGTERM, then the exit status (bounded).
    async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap().to_string();
        let kill = bounded(
            "kill",
            tokio::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status(),
        )
        .await
        .unwrap();
        assert!(kill.success());
        bounded("modem exit", self.child.wait()).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn python_host_updates_through_the_pty_link_and_survives_the_reboots() {
    let fx = Fixture::start(|b| b).await;
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("modem");
    let link_arg = link.to_str().unwrap();
    let modem = ModemProcess::spawn(
        &["--pty", link_arg, "--reboot-ms", "100"],
        &[
            ("QFOTA_MODEM_VERSION", "v12"),
            ("QFOTA_MODEM_TIME_SCALE", "0.002"),
        ],
    );
    let pty = modem.line("pty ").await;
    assert!(
        pty.starts_with(&format!("pty {link_arg} -> /dev/pts/")),
        "{pty}"
    );
    assert!(modem.line("modem ").await.contains("revision v12"));

    let url = fx.ftp_url(PKG);
    let bad = url.replace("test:test@", "test:wrong@");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/modem_host.py");
    let host = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["--port", link_arg, "--url", &url, "--bad-url", &bad])
        .args(["--expect-version", "v13", "--deadline", "50"])
        .kill_on_drop(true)
        .output();
    let host = tokio::time::timeout(Duration::from_secs(60), host)
        .await
        .expect("the host script finished in time")
        .expect("python3 runs");
    let transcript = String::from_utf8_lossy(&host.stdout);
    assert!(
        host.status.success(),
        "host script failed:\n{transcript}\n{}",
        String::from_utf8_lossy(&host.stderr)
    );
    let lines: Vec<&str> = transcript.lines().collect();
    let at = |line: &str| {
        lines
            .iter()
            .position(|l| *l == line)
            .unwrap_or_else(|| panic!("no {line:?} in\n{transcript}"))
    };
    // The order a real module gives, as the host saw it.
    let order = [
        at("<< Revision: v12"),
        at("<< +CREG: 0,1"),
        at("<< +QIND: \"FOTA\",\"FTPEND\",601"),
        at("== failed download reported FTPEND,601; no reboot"),
        at("<< +QIND: \"FOTA\",\"FTPEND\",0"),
        at("== port gone (module rebooting)"),
        at("<< RDY"),
        at("<< +QIND: \"FOTA\",\"START\""),
        at("<< +QIND: \"FOTA\",\"UPDATING\",100"),
        at("<< +QIND: \"FOTA\",\"END\",0"),
        at("<< v13"),
        at("== PASS: v12 -> v13"),
    ];
    assert!(order.is_sorted(), "out of order: {order:?}\n{transcript}");
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("== opened")).count(),
        3,
        "opened, reopened after each reboot:\n{transcript}"
    );
    // The binary said where the new ports were, and leaves no link behind.
    modem.line("up (boot 2)").await;
    let status = modem.terminate().await;
    assert!(status.success(), "{status}");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "link removed on SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_prints_the_bound_tcp_port_and_exits_0_on_sigterm() {
    let modem = ModemProcess::spawn(
        &["--tcp", "127.0.0.1:0", "--model", "eg060k"],
        &[("QFOTA_MODEM_CONTROL", "127.0.0.1:0")],
    );
    // The control listener answers a state request with the module's.
    let line = modem.line("control ").await;
    let control_addr: std::net::SocketAddr = line["control ".len()..].parse().unwrap();
    let stream = bounded("connect", TcpStream::connect(control_addr))
        .await
        .unwrap();
    let mut ctl = BufReader::new(stream).lines();
    let state = control(&mut ctl, r#"{"cmd":"state"}"#).await;
    assert_eq!(
        (&state["ok"], &state["model"], &state["profile"]),
        (&true.into(), &"EG060K".into(), &"eg06xk".into())
    );
    let line = modem.line("tcp ").await;
    let addr: std::net::SocketAddr = line["tcp ".len()..].parse().unwrap();
    assert_ne!(addr.port(), 0);
    let mut stream = bounded("connect", TcpStream::connect(addr)).await.unwrap();
    bounded("write", stream.write_all(b"AT+CGMM\r"))
        .await
        .unwrap();
    let want = "AT+CGMM\r\r\nEG060K\r\n\r\nOK\r\n";
    let mut got = vec![0u8; want.len()];
    bounded("read", stream.read_exact(&mut got)).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&got), want);
    assert!(modem.line("modem ").await.contains("(profile eg06xk)"));
    assert!(modem.terminate().await.success());
}

#[tokio::test]
async fn bad_command_lines_exit_2() {
    for args in [
        &["modem"][..],
        &["modem", "--pty", "/nonexistent/x", "--profile", "nope"],
        &["modem", "--tcp", "127.0.0.1:0", "--imei", "12"],
        &["modem", "--tcp", "127.0.0.1:0", "--fault", "md5"],
    ] {
        let out = bounded(
            "modem usage error",
            tokio::process::Command::new(env!("CARGO_BIN_EXE_qfota-serve"))
                .args(args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    // A link that cannot be made is not a usage error.
    let out = bounded(
        "modem start error",
        tokio::process::Command::new(env!("CARGO_BIN_EXE_qfota-serve"))
            .args(["modem", "--pty", "/nonexistent/dir/modem"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/dir/modem"), "{err}");
    // Its cause said once.
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// Asserts that `needles` all occur in `text`, in this order.
fn assert_in_order(text: &str, needles: &[&str]) {
    let at: Vec<usize> = needles
        .iter()
        .map(|needle| {
            text.find(needle)
                .unwrap_or_else(|| panic!("no {needle:?} in\n{text}"))
        })
        .collect();
    assert!(at.is_sorted(), "{text}");
}

/// Runs a Python host script of `tests/` (bounded) and returns its
/// transcript, failing the test with it when the script fails.
async fn python_host(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let out = tokio::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the host script finished in time")
        .expect("python3 runs");
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n{transcript}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    transcript
}

#[tokio::test(flavor = "multi_thread")]
async fn a_modemmanager_style_init_sequence_gets_real_answers() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("modem");
    let modem = Modem::builder(module("ec2x", &[]))
        .pty(&link)
        .start()
        .unwrap();
    let link_arg = link.to_str().unwrap();
    let args = ["--port", link_arg, "--model", "EC25", "--revision", "v12"];
    let transcript = python_host("mm_host.py", &args).await;
    assert!(transcript.contains("== PASS"), "{transcript}");
    assert_eq!(modem.status().boots, 0);
    stop(modem).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_uart_host_that_never_reopens_its_port_gets_through_a_fota() {
    let fx = Fixture::start(|b| b).await;
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("modem");
    let link_arg = link.to_str().unwrap();
    let modem = ModemProcess::spawn(
        &["--pty", link_arg, "--link", "uart", "--reboot-ms", "100"],
        &[
            ("QFOTA_MODEM_MODEL", "EC800K"),
            ("QFOTA_MODEM_PROFILE", "ec200"),
            ("QFOTA_MODEM_VERSION", "v12"),
            ("QFOTA_MODEM_TIME_SCALE", "0.002"),
        ],
    );
    assert!(
        modem
            .line("modem ")
            .await
            .starts_with("modem EC800K (profile ec200)")
    );
    modem.line("pty ").await;
    let url = fx.http_url(PKG);
    let args = ["--port", link_arg, "--url", &url, "--expect-version", "v13"];
    let transcript = python_host("uart_host.py", &args).await;
    assert_in_order(
        &transcript,
        &[
            "\"HTTPEND\",0",
            "== RDY on the same port (reboot",
            "\"END\",0",
            "== PASS",
        ],
    );
    // Two reboots, and the same PTY throughout: one `pty` line only.
    modem.line("up (boot 2)").await;
    let ptys = modem
        .lines
        .borrow()
        .iter()
        .filter(|l| l.starts_with("pty "))
        .count();
    assert_eq!(ptys, 1);
    assert!(modem.terminate().await.success());
}

#[tokio::test]
async fn radio_off_fails_a_download_and_qpowd_waits_for_the_power_key() {
    let fx = Fixture::start(|b| b).await;
    let modem = tcp_modem(module("ec200", &[]), |b| b.model("EC800K")).await;
    let mut host = Host::connect(&modem).await;
    host.at("ATE0", "ATE0\r\r\nOK\r\n").await;
    host.at("AT+CGMM", "\r\nEC800K\r\n\r\nOK\r\n").await;
    host.at("AT+CFUN=0", "\r\nOK\r\n").await;
    host.at(
        "AT+CREG?;+CFUN?",
        "\r\n+CREG: 0,0\r\n\r\n+CFUN: 0\r\n\r\nOK\r\n",
    )
    .await;
    // ec200's code for no network over FTP (seed 001 table 2).
    host.at(&format!("AT+QFOTADL=\"{}\"", fx.ftp_url(PKG)), "\r\nOK\r\n")
        .await;
    host.expect(q("\"FTPSTART\"") + &q("\"FTPEND\",605")).await;
    host.at("AT+CFUN=1;+CREG?", "\r\n+CREG: 0,1\r\n\r\nOK\r\n")
        .await;
    host.at("AT+QPOWD", "\r\nOK\r\n").await;
    assert_eq!(host.until_closed().await, "\r\nPOWERED DOWN\r\n");
    let status = wait_status(&modem, "off", |s| s.off).await;
    assert!(!status.powered);
    modem.power_on();
    let mut host = Host::reconnect(&modem).await;
    host.expect("\r\nRDY\r\n\r\n+CFUN: 1\r\n\r\n+CPIN: READY\r\n")
        .await;
    host.at("AT", "AT\r\r\nOK\r\n").await;
    assert!(!modem.status().off);
    stop(modem).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_over_an_inactive_fota_context_fails_with_the_network_code() {
    let fx = Fixture::start(|b| b).await;
    let modem = tcp_modem(module("ec200", &[]), |b| b.model("EC200T")).await;
    let mut host = Host::connect(&modem).await;
    host.at("ATE0", "ATE0\r\r\nOK\r\n").await;
    let fotadl = format!("AT+QFOTADL=\"{}\"", fx.http_url(PKG));
    // Context 2 exists but is not activated: FOTA over it has no network
    // (ec200: 707 over HTTP, seed 001 table 3).
    host.at("AT+QFOTA=\"fota/cid\",2", "\r\nOK\r\n").await;
    host.at(&fotadl, "\r\nOK\r\n").await;
    host.expect(q("\"HTTPSTART\"") + &q("\"HTTPEND\",707"))
        .await;
    // Detached from the packet domain, not even the default bearer is.
    host.at("AT+QFOTA=\"fota/cid\",1", "\r\nOK\r\n").await;
    host.at("AT+CGATT=0", "\r\nOK\r\n").await;
    host.at(&fotadl, "\r\nOK\r\n").await;
    host.expect(q("\"HTTPSTART\"") + &q("\"HTTPEND\",707"))
        .await;
    // Attached again, on the default bearer, the same download goes
    // through.
    host.at("AT+CGATT=1", "\r\nOK\r\n").await;
    host.at(&fotadl, "\r\nOK\r\n").await;
    host.expect(q("\"HTTPSTART\"") + &q("\"HTTPEND\",0")).await;
    stop(modem).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fwupds_dfota_flow_uploads_in_ack_mode_and_flashes_the_local_file() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("modem");
    let modem = pty_modem(&link, REBOOT);
    let image = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packages")
        .join(PKG);
    let args = [
        "--port",
        link.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
    ];
    let transcript = python_host("fwupd_host.py", &args).await;
    let size = format!("+QFUPL: {},", std::fs::metadata(&image).unwrap().len());
    assert_in_order(
        &transcript,
        &[
            size.as_str(),
            "== port gone",
            "\"START\"",
            "\"UPDATING\",",
            "\"END\",0",
            "== PASS",
        ],
    );
    // The file stays in the UFS, byte for byte; the module went on with
    // the upgrade.
    let stored = modem.module().ufs().read("dfota_update.bin").unwrap();
    assert_eq!(*stored, std::fs::read(&image).unwrap());
    wait_status(&modem, "the reboot after END", |s| s.boots >= 1).await;
    // The file's name states no versions: the package's own version.txt
    // (from=v12, to=v13) gives the firmware the module now runs.
    assert_eq!(modem.module().version().as_deref(), Some("v13"));
    stop(modem).await;
}

/// `+QFUPL: <size>,<checksum>` and `OK` for `data`, echo off.
fn qfupl_answer(data: &[u8]) -> String {
    format!(
        "\r\n+QFUPL: {},{:x}\r\n\r\nOK\r\n",
        data.len(),
        qfota_serve::sim::ufs::checksum(data)
    )
}

#[tokio::test]
async fn qfupl_takes_raw_bytes_acks_each_kilobyte_and_times_out_with_what_came() {
    let modem = tcp_modem(module("ec2x", &[]), |b| b).await;
    let mut host = Host::connect(&modem).await;
    host.at("ATE0", "ATE0\r\r\nOK\r\n").await;
    host.at("AT+CMEE=1", "\r\nOK\r\n").await;
    // Command lines, CR, LF, NUL and 0xFF inside the data are data.
    let mut data = b"AT+CFUN=1,1\r\nATI\r\n+++\r".to_vec();
    data.extend((0..2500u32).map(|i| (i % 256) as u8));
    let data = &data[..2500];
    host.at("AT+QFUPL=\"UFS:raw.bin\",2500,5,1", "\r\nCONNECT\r\n")
        .await;
    host.send(&data[..1000]).await;
    host.send(&data[1000..1030]).await;
    host.expect("A").await;
    // The last block, then a command: the bytes past <size> are a line.
    let mut rest = data[1030..].to_vec();
    rest.extend_from_slice(b"AT+QFLST=\"raw.bin\"\r");
    host.send(&rest).await;
    host.expect(format!(
        "A{}\r\n+QFLST: \"raw.bin\",2500\r\n\r\nOK\r\n",
        qfupl_answer(data)
    ))
    .await;
    assert_eq!(*modem.module().ufs().read("raw.bin").unwrap(), data);
    // Exists already: refused before CONNECT.
    host.at("AT+QFUPL=\"raw.bin\",10", "\r\n+CME ERROR: 407\r\n")
        .await;
    // <timeout> 1 s without data: what came is stored; nothing: 421.
    host.at("AT+QFUPL=\"part.bin\",100,1", "\r\nCONNECT\r\n")
        .await;
    host.send(b"0123456789").await;
    host.expect(qfupl_answer(b"0123456789")).await;
    host.at("AT+QFUPL=\"none.bin\",100,1", "\r\nCONNECT\r\n")
        .await;
    host.expect("\r\n+CME ERROR: 421\r\n").await;
    let total = modem.module().ufs().space().total;
    let space = format!("\r\n+QFLDS: {},{total}\r\n\r\nOK\r\n", total - 2510);
    host.at("AT+QFLDS", &space).await;
    host.at("AT+QFDEL=\"*\"", "\r\nOK\r\n").await;
    assert_eq!(modem.module().ufs().list("*").unwrap(), vec![]);
    stop(modem).await;
}

#[tokio::test]
async fn ec200_takes_a_file_package_over_the_port_and_upgrades() {
    let modem = tcp_modem(module("ec200", &[]), |b| b).await;
    let mut host = Host::connect(&modem).await;
    host.at("ATE0", "ATE0\r\r\nOK\r\n").await;
    let package = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("packages")
            .join(PKG),
    )
    .unwrap();
    let cmd = format!("AT+QFOTADL=\"FILE:{}\",1,5", package.len());
    host.at(&cmd, "\r\nOK\r\n").await;
    host.expect(q("\"FILESTART\"")).await;
    // The package, raw, then a command line after its last byte.
    let mut bytes = package.clone();
    bytes.extend_from_slice(b"AT\r");
    host.send(&bytes).await;
    let text = host.until_closed().await;
    assert_eq!(text.matches("\r\nOK\r\n").count(), 1, "{text}");
    let urcs = [
        q("\"DOWNLOADING\",5"),
        q("\"FILEEND\",0"),
        q("\"START\""),
        q("\"END\",0"),
    ];
    assert_in_order(&text, &urcs.each_ref().map(String::as_str));
    let mut host = Host::reconnect(&modem).await;
    host.expect("\r\nRDY\r\n\r\n+CFUN: 1\r\n\r\n+CPIN: READY\r\n")
        .await;
    // A `FILE:` package has no name to take a version from (SPEC §5): the
    // package's own version.txt (from=v12, to=v13) gives it.
    host.at("AT+QGMR", "AT+QGMR\r\r\nv13\r\n\r\nOK\r\n").await;
    stop(modem).await;
}

/// One control request (a JSON line) and its answer.
async fn control(
    lines: &mut tokio::io::Lines<BufReader<TcpStream>>,
    request: &str,
) -> serde_json::Value {
    let stream = lines.get_mut().get_mut();
    bounded(
        "control write",
        stream.write_all(format!("{request}\n").as_bytes()),
    )
    .await
    .unwrap();
    let line = bounded("control answer", lines.next_line())
        .await
        .unwrap()
        .expect("an answer line");
    serde_json::from_str(&line).unwrap()
}

/// Deactivating the context a download runs over ends it, as losing the
/// network does: ec200's no-network code for HTTP.
#[tokio::test]
async fn deactivating_the_fota_context_ends_the_download() {
    let fx = Fixture::start(|b| b).await;
    // 1 MB/s: the 8 MiB package takes seconds.
    let module = Module::builder(Profile::by_name("ec200").unwrap())
        .version("v12")
        .time_scale(SCALE)
        .timeout(Duration::from_secs(10))
        .rate(Some(1_000_000))
        .build()
        .unwrap();
    let modem = tcp_modem(module, |b| b).await;
    let mut host = Host::connect(&modem).await;
    host.at("ATE0", "ATE0\r\r\nOK\r\n").await;
    let cmd = format!("AT+QFOTADL=\"{}\",1,50", fx.http_url(BIG));
    host.at(&cmd, "\r\nOK\r\n").await;
    host.expect(q("\"HTTPSTART\"")).await;
    while !String::from_utf8_lossy(&host.buf).contains("\"DOWNLOADING\",") {
        assert!(host.fill().await > 0, "the port closed");
    }
    host.send(b"AT+CGACT=0,1\r").await;
    let text = loop {
        let text = String::from_utf8_lossy(&host.buf).into_owned();
        if text.contains("HTTPEND") {
            break text;
        }
        assert!(host.fill().await > 0, "the port closed");
    };
    let ok = text.find("\r\nOK\r\n").expect("the command's OK");
    assert!(text[ok..].ends_with(&q("\"HTTPEND\",707")), "{text:?}");
    stop(modem).await;
}

#[tokio::test]
async fn the_control_port_cuts_the_network_mid_download_and_more() {
    let fx = Fixture::start(|b| b).await;
    // 1 MB/s: the 8 MiB package takes seconds, long enough to cut it.
    let module = Module::builder(Profile::by_name("ec200").unwrap())
        .version("v12")
        .time_scale(SCALE)
        .timeout(Duration::from_secs(10))
        .rate(Some(1_000_000))
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let modem = tcp_modem(module, |b| b.control(listener)).await;
    let stream = TcpStream::connect(modem.control_addr().unwrap())
        .await
        .unwrap();
    let mut ctl = BufReader::new(stream).lines();
    let mut host = Host::connect(&modem).await;
    host.at("ATE0", "ATE0\r\r\nOK\r\n").await;
    host.at("AT+CREG=1", "\r\nOK\r\n").await;
    let ok = serde_json::json!({"ok": true});

    // ec200 with 50 DOWNLOADING URCs: cut once bytes have come.
    let cmd = format!("AT+QFOTADL=\"{}\",1,50", fx.http_url(BIG));
    host.at(&cmd, "\r\nOK\r\n").await;
    host.expect(q("\"HTTPSTART\"")).await;
    while !String::from_utf8_lossy(&host.buf).contains("\"DOWNLOADING\",") {
        assert!(host.fill().await > 0, "the port closed");
    }
    let cut = r#"{"cmd":"fault","set":"network-down"}"#;
    assert_eq!(control(&mut ctl, cut).await, ok);
    // Whatever DOWNLOADING came before the cut, then registration lost
    // and ec200's no-network code for HTTP.
    let end = format!("\r\n+CREG: 2\r\n{}", q("\"HTTPEND\",707"));
    let text = loop {
        let text = String::from_utf8_lossy(&host.buf).into_owned();
        if text.contains("HTTPEND") {
            break text;
        }
        assert!(host.fill().await > 0, "the port closed");
    };
    assert!(text.ends_with(&end), "{text:?}");
    let before = &text[..text.len() - end.len()];
    assert!(
        before
            .split("\r\n")
            .all(|l| l.is_empty() || l.contains("\"DOWNLOADING\",")),
        "{text:?}"
    );
    host.buf.clear();
    let record = bounded(
        "the server's record of the cut download",
        fx.server.wait_download(DEADLINE, |r| r.path == BIG),
    )
    .await
    .expect("a record");
    assert_eq!(record.outcome, Outcome::Aborted, "{record:?}");
    // The server saw the cut where it happened: after the first
    // DOWNLOADING (2 % of the package), well before the end.
    let size = fx.package_bytes(BIG).len() as u64;
    assert!(
        record.bytes_acked >= size / 50 && record.bytes_acked < size,
        "{record:?}"
    );
    let state = control(&mut ctl, r#"{"cmd":"state"}"#).await;
    assert_eq!(
        state["last_fota"],
        serde_json::json!({"urc": "HTTPEND", "code": 707})
    );
    assert_eq!(state["network_down"], true);
    assert_eq!(state["version"], "v12");
    // Still cut: the next download fails at once; then the network is back.
    host.at(&cmd, "\r\nOK\r\n").await;
    host.expect(q("\"HTTPSTART\"") + &q("\"HTTPEND\",707"))
        .await;
    let back = r#"{"cmd":"fault","clear":"network-down"}"#;
    assert_eq!(control(&mut ctl, back).await, ok);
    host.expect("\r\n+CREG: 1\r\n").await;

    // Signal, an injected URC, refusals.
    assert_eq!(control(&mut ctl, r#"{"cmd":"signal","csq":20}"#).await, ok);
    host.at("AT+CSQ", "\r\n+CSQ: 20,99\r\n\r\nOK\r\n").await;
    let urc = r#"{"cmd":"urc","line":"+QIND: \"csq\",20,99"}"#;
    assert_eq!(control(&mut ctl, urc).await, ok);
    host.expect("\r\n+QIND: \"csq\",20,99\r\n").await;
    for bad in [r#"{"cmd":"fault","set":"dns-fail"}"#, "{", r#"{"cmd":"x"}"#] {
        let answer = control(&mut ctl, bad).await;
        assert_eq!(answer["ok"], false, "{bad}: {answer}");
        assert!(answer["error"].is_string());
    }
    // A file shows in the state; a reboot closes the port and RDY comes.
    modem.module().ufs().write("a.bin", vec![0; 3]).unwrap();
    let state = control(&mut ctl, r#"{"cmd":"state"}"#).await;
    assert_eq!(
        state["files"],
        serde_json::json!([{"name": "a.bin", "size": 3}])
    );
    assert_eq!(control(&mut ctl, r#"{"cmd":"reboot"}"#).await, ok);
    host.until_closed().await;
    let mut host = Host::reconnect(&modem).await;
    host.expect("\r\nRDY\r\n").await;
    assert_eq!(modem.status().boots, 1);
    stop(modem).await;
}

/// A host in a reconnect loop does not flood the modem's stderr: 200
/// connections to the `qfota-serve modem` binary's TCP port leave at most
/// `BURST` (20) per-connection lines per 10 s window
/// (`qfota_serve::modem::ratelog`).
#[tokio::test(flavor = "multi_thread")]
async fn per_connection_log_lines_are_rate_limited() {
    use qfota_serve::modem::ratelog::{BURST, WINDOW};
    let started = std::time::Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_qfota-serve"))
        .args(["modem", "--tcp", "127.0.0.1:0", "--ready-json", "-"])
        .env("QFOTA_LOG_LEVEL", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = bounded("ready line", stdout.next_line())
        .await
        .unwrap()
        .unwrap();
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    let addr = ready["tcp"].as_str().unwrap().to_string();
    let mut stderr = child.stderr.take().unwrap();
    let collect = tokio::spawn(async move {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all).await;
        all
    });
    const CONNECTIONS: usize = 200;
    for _ in 0..CONNECTIONS {
        let tcp = bounded("connect", TcpStream::connect(&addr)).await.unwrap();
        drop(tcp);
    }
    let pid = child.id().unwrap().to_string();
    let kill = common::run("kill", &["-TERM", &pid]).await;
    assert!(kill.status.success());
    assert!(bounded("modem exit", child.wait()).await.unwrap().success());
    let log = bounded("stderr", collect).await.unwrap();
    let lines = log
        .lines()
        .filter(|l| l.contains("TCP host") || l.contains("port busy"))
        .count();
    // Every window that the run touched lets BURST lines through.
    let windows = started.elapsed().as_secs() / WINDOW.as_secs() + 1;
    assert!(lines >= 1, "{log}");
    assert!(
        lines as u64 <= u64::from(BURST) * windows,
        "{lines} lines for {CONNECTIONS} connections in {windows} window(s):\n{log}"
    );
}

/// A host that comes back late to a failing local-file FOTA still reads
/// `START` and `END` apart: what was held for it is written at the pace
/// the module wrote it, not in one burst (the README's 250 ms between
/// `END` and the line before it; a host reading once every 100 ms would
/// otherwise see `END` in the read that had `START` and miss it).
#[tokio::test]
async fn held_urcs_reach_a_late_host_at_the_module_s_pace() {
    let modem = tcp_modem(module("ec2x", &[]), |b| b).await;
    let mut host = Host::connect(&modem).await;
    host.at("ATE0", "ATE0\r\r\nOK\r\n").await;
    host.at("AT+QFOTADL=\"/data/ufs/none.zip\"", "\r\nOK\r\n")
        .await;
    // The module reboots into recovery: the port goes.
    host.until_closed().await;
    // The host takes its time to come back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut host = Host::reconnect(&modem).await;
    let start = bounded("START", async {
        while !String::from_utf8_lossy(&host.buf).contains("\"START\"") {
            assert!(host.fill().await > 0, "port closed before START");
        }
        tokio::time::Instant::now()
    })
    .await;
    let rest = host.until("\"END\",504").await;
    let gap = start.elapsed();
    assert!(
        gap >= Duration::from_millis(150),
        "END came {gap:?} after START: {rest:?}"
    );
    stop(modem).await;
}

//! End-to-end tests of the FTP front-end: a real server in-process on
//! 127.0.0.1 port 0 (see `common::Fixture`), driven by real clients —
//! Python's `ftplib` (and raw sockets through Python for what `ftplib` will
//! not send) and `curl` — checking what the client receives, what lands in
//! the download log (in memory and in the JSON-lines file) and that the
//! package folder is never written.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{BIG, DEADLINE, Fixture, sha256};
use qfota_serve::catalog::Lookup;
use qfota_serve::dlog::{DownloadRecord, Outcome, Protocol};
use serde_json::Value;

/// Root package of the sample folder.
const ROOT_PKG: &str = "update-v12-to-v13.zip";
/// The same name under `Jun/`.
const JUN_PKG: &str = "Jun/update-v12-to-v13.zip";
/// The fixture's download log (hidden, so never listed or served).
const LOG_NAME: &str = ".downloads.jsonl";

/// Python helpers every script starts with. `sys.argv[1]` is the FTP port,
/// the rest are the test's own arguments (`ARGS`). A script prints one JSON
/// object as its last line of output.
const PRELUDE: &str = r#"
import ftplib, hashlib, json, os, socket, sys, time
HOST = '127.0.0.1'
PORT = int(sys.argv[1])
ARGS = sys.argv[2:]

class Client(ftplib.FTP):
    """ftplib.FTP that remembers every command that succeeded, with its reply."""
    def __init__(self):
        super().__init__(timeout=20)
        self.replies = []
    def sendcmd(self, cmd):
        resp = super().sendcmd(cmd)
        self.replies.append([cmd, resp])
        return resp

def connect(user='test', password='test'):
    ftp = Client()
    ftp.connect(HOST, PORT)
    if user is not None:
        ftp.login(user, password)
    return ftp

def code(fn, *args):
    """The 3-digit reply code a command ends with, or 'closed'."""
    try:
        return str(fn(*args))[:3]
    except ftplib.Error as e:
        return str(e)[:3]
    except (OSError, EOFError):
        return 'closed'

def retr(ftp, cmd, rest=None):
    """(final reply code, bytes received) of a RETR, whatever the outcome."""
    buf = bytearray()
    try:
        c = ftp.retrbinary(cmd, buf.extend, rest=rest)[:3]
    except ftplib.Error as e:
        c = str(e)[:3]
    return c, bytes(buf)

def lines(ftp, cmd):
    """(final reply code, text lines) of LIST/NLST."""
    out = []
    try:
        c = ftp.retrlines(cmd, out.append)[:3]
    except ftplib.Error as e:
        c = str(e)[:3]
    return c, out

def sha(b):
    return hashlib.sha256(b).hexdigest()

def start_retr(ftp, path):
    """Starts a binary RETR of `path` on a passive data connection with a
    small receive window (so the server cannot hand the kernel the whole
    file at once): (the reply code to RETR, the data socket)."""
    ftp.voidcmd('TYPE I')
    _, port = ftplib.parse227(ftp.sendcmd('PASV'))
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    conn.settimeout(20)
    conn.connect((HOST, port))
    return ftp.sendcmd('RETR ' + path)[:3], conn

def me(ftp):
    """This client's end of the control connection, as ip:port."""
    return '%s:%d' % ftp.sock.getsockname()[:2]

def out(obj):
    print(json.dumps(obj))
"#;

/// Runs `body` (after [`PRELUDE`]) against the fixture's FTP port with
/// `args`, and returns the JSON object it printed last.
async fn ftp_py(fx: &Fixture, body: &str, args: &[&str]) -> Value {
    let script = format!("{PRELUDE}\n{body}");
    let port = fx.ftp_port().to_string();
    let mut all = vec![port.as_str()];
    all.extend_from_slice(args);
    let output = common::python(&script, &all).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python client failed ({}):\n{stderr}\nstdout:\n{stdout}",
        output.status
    );
    let last = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no output; stderr:\n{stderr}"));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("bad JSON {last:?}: {e}"))
}

/// `v[key]` as a string (panics with the whole object otherwise).
fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

/// `v[key]` as a list of strings.
fn strings(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not a list in {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// Every file and folder under `root` (symlinks not followed) with its size
/// and SHA-256, except the server's own download log.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, into: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let rel = entry
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == LOG_NAME {
                continue;
            }
            let ft = entry.file_type().unwrap();
            if ft.is_dir() {
                into.insert(rel, "dir".into());
                walk(root, &entry.path(), into);
            } else if ft.is_symlink() {
                let target = std::fs::read_link(entry.path()).unwrap();
                into.insert(rel, format!("link -> {}", target.display()));
            } else {
                let bytes = std::fs::read(entry.path()).unwrap();
                into.insert(rel, format!("{} {}", bytes.len(), sha256(&bytes)));
            }
        }
    }
    let mut map = BTreeMap::new();
    walk(root, root, &mut map);
    map
}

/// Polls the catalog until `key` is known as something `accept` likes.
async fn wait_catalog(fx: &Fixture, key: &str, accept: impl Fn(&Lookup) -> bool) {
    common::eventually(&format!("catalog to pick up {key}"), DEADLINE, || async {
        accept(&fx.server.catalog().lookup(key)).then_some(())
    })
    .await;
}

fn is_ftp_record(r: &DownloadRecord, path: &str, outcome: Outcome) -> bool {
    r.protocol == Protocol::Ftp && r.path == path && r.outcome == outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_the_configured_account_succeeds() {
    let fx = Fixture::start(|b| b).await;
    let v = ftp_py(
        &fx,
        r#"
ftp = connect(None)
welcome = ftp.getwelcome()
login = ftp.login('test', 'test')
out({'welcome': welcome, 'login': login, 'pwd': ftp.pwd(), 'type': code(ftp.sendcmd, 'TYPE I'),
     'quit': code(ftp.quit)})
"#,
        &[],
    )
    .await;
    assert!(s(&v, "welcome").starts_with("220"), "{v}");
    assert!(s(&v, "login").starts_with("230"), "{v}");
    assert_eq!(s(&v, "pwd"), "/");
    assert_eq!(s(&v, "type"), "200");
    assert_eq!(s(&v, "quit"), "221");
    // A login is not a download attempt: nothing to log.
    fx.assert_every_record("nothing logged", |_| false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_password_or_unknown_user_gets_530_and_an_auth_failed_record() {
    let fx = Fixture::start(|b| b).await;
    let v = ftp_py(
        &fx,
        r#"
res = {}
for name, user, pw in [('bad_password', 'test', 'hunter2'), ('unknown_user', 'mallory', 'test')]:
    ftp = connect(None)
    res[name + '_peer'] = me(ftp)
    res[name] = code(ftp.login, user, pw)
    # The refused session may not download anything.
    res[name + '_retr'] = retr(ftp, 'RETR update-v12-to-v13.zip')[0]
    ftp.close()
out(res)
"#,
        &[],
    )
    .await;
    assert_eq!(s(&v, "bad_password"), "530", "{v}");
    assert_eq!(s(&v, "unknown_user"), "530", "{v}");
    assert!(s(&v, "bad_password_retr").starts_with('5'), "{v}");
    assert!(s(&v, "unknown_user_retr").starts_with('5'), "{v}");

    for (case, user, reason) in [
        ("bad_password", "test", "wrong password"),
        ("unknown_user", "mallory", "unknown user"),
    ] {
        let peer = s(&v, &format!("{case}_peer")).to_string();
        let rec = fx
            .wait_record(&format!("auth_failed for {case}"), |r| {
                r.outcome == Outcome::AuthFailed && r.peer.to_string() == peer
            })
            .await;
        assert_eq!(rec.protocol, Protocol::Ftp);
        assert_eq!(rec.status, 530);
        assert_eq!(rec.user.as_deref(), Some(user));
        assert_eq!(rec.bytes_sent, 0);
        assert_eq!(rec.reason, reason);
        assert!(peer.starts_with("127.0.0.1:"), "{peer}");

        let line = fx
            .log_lines()
            .into_iter()
            .find(|l| l["peer"] == peer.as_str())
            .unwrap_or_else(|| panic!("no log line for {peer}: {:?}", fx.log_lines()));
        assert_eq!(line["outcome"], "auth_failed");
        assert_eq!(line["status"], 530);
        assert_eq!(line["protocol"], "ftp");
        assert_eq!(line["user"], user);
    }
    // The password is never logged.
    let log = std::fs::read_to_string(&fx.log_path).unwrap();
    assert!(!log.contains("hunter2"), "{log}");
    // Nothing was served to a refused session.
    fx.assert_every_record("only refused logins", |r| r.outcome == Outcome::AuthFailed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_a_wrong_password_is_refused() {
    let fx = Fixture::start(|b| b).await;
    let url = format!("ftp://test:nope@127.0.0.1:{}/{ROOT_PKG}", fx.ftp_port());
    let out = common::run("curl", &["-sS", "--max-time", "20", &url]).await;
    // 67: "The user name, password, or similar was not accepted".
    assert_eq!(
        out.status.code(),
        Some(67),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let rec = fx
        .wait_record("auth_failed from curl", |r| {
            r.outcome == Outcome::AuthFailed
        })
        .await;
    assert_eq!(rec.user.as_deref(), Some("test"));
    assert_eq!(rec.status, 530);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_accounts_any_login_is_accepted() {
    let fx = Fixture::start_anonymous(|b| b).await;
    assert_eq!(
        fx.ftp_url(ROOT_PKG),
        format!("ftp://127.0.0.1:{}/{ROOT_PKG}", fx.ftp_port())
    );
    let v = ftp_py(
        &fx,
        r#"
res = {}
ftp = connect('anybody', 'whatever')
res['peer'] = me(ftp)
res['code'], data = retr(ftp, 'RETR update-v12-to-v13.zip')
res['sha'] = sha(data)
ftp.close()
ftp = connect(None)
res['anonymous'] = code(ftp.login)
res['anonymous_retr'] = retr(ftp, 'RETR Jun/update-v12-to-v13.zip')[0]
ftp.close()
out(res)
"#,
        &[],
    )
    .await;
    assert_eq!(s(&v, "code"), "226", "{v}");
    assert_eq!(s(&v, "sha"), sha256(&fx.package_bytes(ROOT_PKG)));
    assert_eq!(s(&v, "anonymous"), "230", "{v}");
    assert_eq!(s(&v, "anonymous_retr"), "226", "{v}");
    let peer = s(&v, "peer").to_string();
    let rec = fx
        .wait_record("complete RETR by anybody", |r| {
            is_ftp_record(r, ROOT_PKG, Outcome::Complete) && r.peer.to_string() == peer
        })
        .await;
    assert_eq!(rec.user.as_deref(), Some("anybody"));
    let rec = fx
        .wait_record("complete RETR by anonymous", |r| {
            is_ftp_record(r, JUN_PKG, Outcome::Complete)
        })
        .await;
    assert_eq!(rec.user.as_deref(), Some("anonymous"));
    fx.assert_every_record("no refused login", |r| r.outcome != Outcome::AuthFailed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retr_over_pasv_is_byte_identical() {
    let fx = Fixture::start(|b| b).await;
    let v = ftp_py(
        &fx,
        r#"
ftp = connect()
res = {'type': code(ftp.sendcmd, 'TYPE I'), 'pasv': ftp.sendcmd('PASV')}
ftp.close()
ftp = connect()
res['code'], data = retr(ftp, 'RETR update-v12-to-v13.zip')
res['len'], res['sha'] = len(data), sha(data)
res['cmds'] = [c for c, _ in ftp.replies]
out(res)
"#,
        &[],
    )
    .await;
    assert_eq!(s(&v, "type"), "200");
    // 227 Entering Passive Mode (h1,h2,h3,h4,p1,p2): our address, a port
    // from the configured range.
    let pasv = s(&v, "pasv");
    assert!(pasv.starts_with("227"), "{pasv}");
    let inner = &pasv[pasv.find('(').unwrap() + 1..pasv.find(')').unwrap()];
    let n: Vec<u16> = inner
        .split(',')
        .map(|x| x.trim().parse().unwrap())
        .collect();
    assert_eq!(&n[..4], &[127, 0, 0, 1], "{pasv}");
    assert!((40000..=40999).contains(&(n[4] * 256 + n[5])), "{pasv}");

    let cmds = strings(&v, "cmds");
    assert!(cmds.contains(&"PASV".to_string()), "{cmds:?}");
    assert!(!cmds.contains(&"EPSV".to_string()), "{cmds:?}");
    let bytes = fx.package_bytes(ROOT_PKG);
    assert_eq!(s(&v, "code"), "226");
    assert_eq!(v["len"], bytes.len());
    assert_eq!(s(&v, "sha"), sha256(&bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retr_over_epsv_is_byte_identical() {
    let fx = Fixture::start(|b| b).await;
    let v = ftp_py(
        &fx,
        r#"
ftp = connect()
# ftplib sends EPSV instead of PASV when it believes it talks IPv6; it then
# connects to the control connection's address and the port in the reply.
ftp.af = socket.AF_INET6
res = {}
res['code'], data = retr(ftp, 'RETR ' + ARGS[0])
res['len'], res['sha'] = len(data), sha(data)
res['replies'] = ftp.replies
out(res)
"#,
        &[BIG],
    )
    .await;
    let replies = v["replies"].as_array().unwrap();
    let epsv = replies
        .iter()
        .find(|r| r[0] == "EPSV")
        .unwrap_or_else(|| panic!("no EPSV sent: {replies:?}"))[1]
        .as_str()
        .unwrap();
    // 229 Entering Extended Passive Mode (|||port|)
    assert!(epsv.starts_with("229"), "{epsv}");
    let port: u16 = epsv
        .rsplit("|||")
        .next()
        .unwrap()
        .trim_end_matches([')', '|'])
        .parse()
        .unwrap();
    assert!((40000..=40999).contains(&port), "{epsv}");
    assert!(replies.iter().all(|r| r[0] != "PASV"), "{replies:?}");

    let bytes = fx.package_bytes(BIG);
    assert_eq!(s(&v, "code"), "226");
    assert_eq!(v["len"], bytes.len());
    assert_eq!(s(&v, "sha"), sha256(&bytes));
    let rec = fx
        .wait_record("complete RETR of the big package", |r| {
            is_ftp_record(r, BIG, Outcome::Complete)
        })
        .await;
    assert_eq!(rec.bytes_sent, bytes.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_downloads_over_epsv_and_over_pasv() {
    let fx = Fixture::start(|b| b).await;
    let url = fx.ftp_url(JUN_PKG);
    let want = fx.package_bytes(JUN_PKG);
    for extra in [None, Some("--disable-epsv")] {
        let mut args = vec!["-sS", "--max-time", "20", "-v"];
        args.extend(extra);
        args.push(&url);
        let out = common::run("curl", &args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "curl {extra:?}: {stderr}");
        assert_eq!(sha256(&out.stdout), sha256(&want), "curl {extra:?}");
        let used = if extra.is_some() { "> PASV" } else { "> EPSV" };
        assert!(
            stderr.contains(used),
            "curl {extra:?} did not send {used}: {stderr}"
        );
    }
    let recs = fx
        .wait_records("two complete curl downloads", 2, |r| {
            is_ftp_record(r, JUN_PKG, Outcome::Complete)
        })
        .await;
    assert!(
        recs.iter()
            .all(|r| r.user.as_deref() == Some("test") && r.status == 226)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_and_mdtm_describe_the_file() {
    let fx = Fixture::start(|b| b).await;
    let v = ftp_py(
        &fx,
        r#"
ftp = connect()
ftp.voidcmd('TYPE I')
res = {}
for p in [ARGS[0], ARGS[1], ARGS[2]]:
    res['size ' + p] = ftp.size(p)
    res['mdtm ' + p] = ftp.sendcmd('MDTM ' + p)
res['size_missing'] = code(ftp.sendcmd, 'SIZE missing.zip')
res['mdtm_missing'] = code(ftp.sendcmd, 'MDTM missing.zip')
res['size_hidden'] = code(ftp.sendcmd, 'SIZE ' + ARGS[3])
# A folder has no SIZE (RFC 3659 §4.2); LIST of a file describes it.
res['size_folder'] = code(ftp.sendcmd, 'SIZE Jun')
res['list_file'] = []
ftp.retrlines('LIST ' + ARGS[0], res['list_file'].append)
res['nlst_file'] = ftp.nlst(ARGS[1])
out(res)
"#,
        &[ROOT_PKG, JUN_PKG, BIG, LOG_NAME],
    )
    .await;
    for p in [ROOT_PKG, JUN_PKG, BIG] {
        let meta = std::fs::metadata(fx.dir.path().join(p)).unwrap();
        assert_eq!(v[format!("size {p}")], meta.len(), "{p}: {v}");
        let mtime = chrono::DateTime::<chrono::Utc>::from(meta.modified().unwrap());
        assert_eq!(
            s(&v, &format!("mdtm {p}")),
            format!("213 {}", mtime.format("%Y%m%d%H%M%S")),
            "{p}"
        );
    }
    assert_eq!(s(&v, "size_missing"), "550");
    assert_eq!(s(&v, "mdtm_missing"), "550");
    assert_eq!(
        s(&v, "size_hidden"),
        "550",
        "the download log must not be visible"
    );
    assert_eq!(s(&v, "size_folder"), "550");
    let listed = v["list_file"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{v}");
    let size = std::fs::metadata(fx.dir.path().join(ROOT_PKG))
        .unwrap()
        .len();
    let line = listed[0].as_str().unwrap();
    assert!(
        line.ends_with(ROOT_PKG) && line.contains(&size.to_string()),
        "{line}"
    );
    assert_eq!(
        v["nlst_file"],
        serde_json::json!(["update-v12-to-v13.zip"]),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_show_packages_and_folders_but_not_hidden_files() {
    let dir = common::package_dir();
    // A hidden file that would otherwise be a valid package.
    std::fs::write(
        dir.path().join(".hidden-v1-to-v2.zip"),
        common::zip_with(&[("a", b"x")]),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("Jun/.hidden.zip"),
        common::zip_with(&[("a", b"x")]),
    )
    .unwrap();
    let fx = Fixture::start_in(dir, |b| b).await;
    let v = ftp_py(
        &fx,
        r#"
ftp = connect()
res = {}
res['list_code'], res['list'] = lines(ftp, 'LIST')
res['list_a_code'], res['list_a'] = lines(ftp, 'LIST -a')
res['nlst_code'], res['nlst'] = lines(ftp, 'NLST')
res['mlsd'] = {name: facts for name, facts in ftp.mlsd()}
res['jun_nlst_code'], res['jun_nlst'] = lines(ftp, 'NLST Jun')
res['jun_list_code'], res['jun_list'] = lines(ftp, 'LIST Jun')
res['retr_hidden'] = retr(ftp, 'RETR .hidden-v1-to-v2.zip')
res['retr_hidden'] = [res['retr_hidden'][0], len(res['retr_hidden'][1])]
res['retr_log'] = retr(ftp, 'RETR .downloads.jsonl')
res['retr_log'] = [res['retr_log'][0], len(res['retr_log'][1])]
out(res)
"#,
        &[],
    )
    .await;
    let names_of = |key: &str| -> Vec<String> {
        let mut names: Vec<String> = strings(&v, key)
            .iter()
            .map(|l| l.rsplit(['/', ' ']).next().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    // Sorted the way `sort` orders them (upper case first).
    let root = vec!["Jun".to_string(), BIG.to_string(), ROOT_PKG.to_string()];
    for key in ["list", "list_a", "nlst"] {
        assert_eq!(s(&v, &format!("{key}_code")), "226", "{v}");
        assert_eq!(names_of(key), root, "{key}: {v}");
    }
    let mut mlsd: Vec<String> = v["mlsd"].as_object().unwrap().keys().cloned().collect();
    mlsd.sort();
    assert_eq!(mlsd, root, "{v}");
    assert_eq!(v["mlsd"]["Jun"]["type"], "dir", "{v}");
    assert_eq!(v["mlsd"][ROOT_PKG]["type"], "file", "{v}");
    let size = fx.package_bytes(ROOT_PKG).len().to_string();
    assert_eq!(v["mlsd"][ROOT_PKG]["size"], size.as_str(), "{v}");
    // LIST shows the size too.
    let line = strings(&v, "list")
        .into_iter()
        .find(|l| l.ends_with(ROOT_PKG))
        .unwrap();
    assert!(line.split_whitespace().any(|w| w == size), "{line}");

    for key in ["jun_nlst", "jun_list"] {
        assert_eq!(s(&v, &format!("{key}_code")), "226", "{v}");
        assert_eq!(names_of(key), vec![ROOT_PKG.to_string()], "{key}: {v}");
    }
    assert_eq!(v["retr_hidden"], serde_json::json!(["550", 0]), "{v}");
    assert_eq!(v["retr_log"], serde_json::json!(["550", 0]), "{v}");
    fx.wait_record("refused RETR of a hidden file", |r| {
        r.path == ".hidden-v1-to-v2.zip" && r.outcome == Outcome::Refused && r.status == 550
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cwd_into_a_folder_and_retr_there_logs_every_field() {
    let fx = Fixture::start(|b| b).await;
    let before = chrono::Utc::now();
    let v = ftp_py(
        &fx,
        r#"
ftp = connect()
res = {'peer': me(ftp), 'cwd': code(ftp.cwd, 'Jun'), 'pwd': ftp.pwd()}
res['code'], data = retr(ftp, 'RETR update-v12-to-v13.zip')
res['len'], res['sha'] = len(data), sha(data)
res['cdup'] = code(ftp.sendcmd, 'CDUP')
res['pwd_after_cdup'] = ftp.pwd()
res['cwd_missing'] = code(ftp.cwd, 'Dec')
res['cwd_file'] = code(ftp.cwd, 'update-v12-to-v13.zip')
res['pwd_end'] = ftp.pwd()
out(res)
"#,
        &[],
    )
    .await;
    let after = chrono::Utc::now();
    assert_eq!(s(&v, "cwd"), "250", "{v}");
    assert_eq!(s(&v, "pwd"), "/Jun");
    assert_eq!(s(&v, "cdup"), "250", "{v}");
    assert_eq!(s(&v, "pwd_after_cdup"), "/");
    assert_eq!(s(&v, "cwd_missing"), "550");
    assert_eq!(s(&v, "cwd_file"), "550");
    assert_eq!(s(&v, "pwd_end"), "/");
    let bytes = fx.package_bytes(JUN_PKG);
    let size = bytes.len() as u64;
    assert_eq!(s(&v, "code"), "226");
    assert_eq!(v["len"], size);
    assert_eq!(s(&v, "sha"), sha256(&bytes));
    // The root package is a different file with the same name.
    assert_ne!(sha256(&bytes), sha256(&fx.package_bytes(ROOT_PKG)));

    let peer = s(&v, "peer").to_string();
    let rec = fx
        .wait_record("complete RETR in Jun", |r| {
            is_ftp_record(r, JUN_PKG, Outcome::Complete)
        })
        .await;
    assert!(
        rec.ts >= before - chrono::Duration::seconds(1) && rec.ts <= after,
        "{rec:?}"
    );
    assert!(rec.duration_ms < DEADLINE.as_millis() as u64, "{rec:?}");
    assert_eq!(rec.protocol, Protocol::Ftp);
    assert_eq!(rec.peer.to_string(), peer);
    assert_eq!(rec.user.as_deref(), Some("test"));
    assert_eq!(rec.size, Some(size));
    assert_eq!(rec.sha256.as_deref(), Some(sha256(&bytes).as_str()));
    assert_eq!(rec.range_start, 0);
    assert_eq!(rec.bytes_sent, size);
    assert_eq!(rec.status, 226);
    assert!(!rec.reason.is_empty());
    assert_eq!(rec.fault, None);

    let lines = fx.log_lines();
    let line = lines
        .iter()
        .find(|l| l["path"] == JUN_PKG && l["outcome"] == "complete")
        .unwrap_or_else(|| panic!("no complete line in {lines:?}"));
    let ts = s(line, "ts");
    assert!(
        ts.ends_with('Z') && ts.len() == "2026-06-01T12:00:00.123Z".len(),
        "{ts}"
    );
    // The file carries milliseconds; the in-memory record the full clock.
    assert_eq!(ts, qfota_serve::dlog::format_ts(&rec.ts));
    assert_eq!(line["duration_ms"], rec.duration_ms);
    assert_eq!(line["protocol"], "ftp");
    assert_eq!(line["peer"], peer.as_str());
    assert_eq!(line["user"], "test");
    assert_eq!(line["size"], size);
    assert_eq!(line["sha256"], sha256(&bytes).as_str());
    assert_eq!(line["range_start"], 0);
    assert_eq!(line["bytes_sent"], size);
    assert_eq!(line["status"], 226);
    assert_eq!(line["reason"], rec.reason.as_str());
    assert!(line.get("fault").is_none(), "{line}");
    let mut back: DownloadRecord = serde_json::from_value(line.clone()).unwrap();
    back.ts = rec.ts;
    assert_eq!(back, rec, "the log line and the in-memory record differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_then_retr_resumes_from_the_offset() {
    let fx = Fixture::start(|b| b).await;
    let bytes = fx.package_bytes(ROOT_PKG);
    let size = bytes.len() as u64;
    let offset = 1000u64;
    let v = ftp_py(
        &fx,
        r#"
ftp = connect()
res = {}
n = int(ARGS[0])
res['code'], data = retr(ftp, 'RETR update-v12-to-v13.zip', rest=n)
res['len'], res['sha'] = len(data), sha(data)
res['at_end'], data = retr(ftp, 'RETR update-v12-to-v13.zip', rest=int(ARGS[1]))
res['at_end_len'] = len(data)
res['after'], data = retr(ftp, 'RETR update-v12-to-v13.zip')
res['after_sha'] = sha(data)
ftp.close()
# A fresh session: libunftp keeps a REST offset after a failed transfer
# (see rest_offset_is_forgotten_after_a_failed_retr).
ftp = connect()
res['beyond'], data = retr(ftp, 'RETR update-v12-to-v13.zip', rest=int(ARGS[1]) + 10)
res['beyond_len'] = len(data)
out(res)
"#,
        &[&offset.to_string(), &size.to_string()],
    )
    .await;
    assert_eq!(s(&v, "code"), "226", "{v}");
    assert_eq!(v["len"], size - offset);
    assert_eq!(s(&v, "sha"), sha256(&bytes[offset as usize..]));
    let rec = fx
        .wait_record("complete resumed RETR", |r| {
            is_ftp_record(r, ROOT_PKG, Outcome::Complete) && r.range_start == offset
        })
        .await;
    assert_eq!(rec.bytes_sent, size - offset);
    assert_eq!(rec.status, 226);
    assert_eq!(rec.size, Some(size));

    // Resuming at the very end sends nothing and is complete.
    assert_eq!(s(&v, "at_end"), "226", "{v}");
    assert_eq!(v["at_end_len"], 0);
    fx.wait_record("complete RETR at the end", |r| {
        is_ftp_record(r, ROOT_PKG, Outcome::Complete) && r.range_start == size && r.bytes_sent == 0
    })
    .await;
    // The REST offset does not stick to the next transfer.
    assert_eq!(s(&v, "after"), "226", "{v}");
    assert_eq!(s(&v, "after_sha"), sha256(&bytes));
    // Past the end is refused, with nothing sent.
    assert!(s(&v, "beyond").starts_with('5'), "{v}");
    assert_eq!(v["beyond_len"], 0);
    let rec = fx
        .wait_record("refused RETR past the end", |r| {
            is_ftp_record(r, ROOT_PKG, Outcome::Refused) && r.range_start == size + 10
        })
        .await;
    assert_eq!(rec.bytes_sent, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_commands_are_refused_and_nothing_is_written() {
    let fx = Fixture::start(|b| b).await;
    let before = snapshot(fx.dir.path());
    assert!(
        before.contains_key(ROOT_PKG) && before.contains_key(JUN_PKG),
        "{before:?}"
    );
    let v = ftp_py(
        &fx,
        r#"
ftp = connect()
ftp.voidcmd('TYPE I')

def upload(cmd):
    """Reply code of an upload command that opens a data connection."""
    try:
        conn = ftp.transfercmd(cmd)
    except ftplib.Error as e:
        return str(e)[:3]
    try:
        conn.sendall(b'PK\x05\x06' + b'\0' * 18)
    except OSError:
        pass
    conn.close()
    try:
        return ftp.voidresp()[:3]
    except ftplib.Error as e:
        return str(e)[:3]

res = {}
res['STOR new'] = upload('STOR new-v1-to-v2.zip')
res['STOR over'] = upload('STOR update-v12-to-v13.zip')
res['STOR Jun'] = upload('STOR Jun/update-v12-to-v13.zip')
res['APPE'] = upload('APPE update-v12-to-v13.zip')
res['STOU'] = upload('STOU')
res['DELE'] = code(ftp.sendcmd, 'DELE update-v12-to-v13.zip')
res['DELE Jun'] = code(ftp.sendcmd, 'DELE Jun/update-v12-to-v13.zip')
res['MKD'] = code(ftp.sendcmd, 'MKD Dec')
res['RMD'] = code(ftp.sendcmd, 'RMD Jun')
res['RNFR'] = code(ftp.sendcmd, 'RNFR update-v12-to-v13.zip')
res['RNTO'] = code(ftp.sendcmd, 'RNTO renamed-v1-to-v2.zip')
res['RNFR Jun'] = code(ftp.sendcmd, 'RNFR Jun')
res['RNTO Jun'] = code(ftp.sendcmd, 'RNTO Dec')
res['RNFR missing'] = code(ftp.sendcmd, 'RNFR missing.zip')
res['SITE CHMOD'] = code(ftp.sendcmd, 'SITE CHMOD 777 update-v12-to-v13.zip')
# The session is still usable and the package still the same.
res['NOOP'] = code(ftp.sendcmd, 'NOOP')
c, data = retr(ftp, 'RETR update-v12-to-v13.zip')
res['RETR'], res['sha'] = c, sha(data)
out(res)
"#,
        &[],
    )
    .await;
    for cmd in [
        "STOR new",
        "STOR over",
        "STOR Jun",
        "APPE",
        "STOU",
        "DELE",
        "DELE Jun",
        "MKD",
        "RMD",
        "RNTO",
        "RNTO Jun",
    ] {
        assert_eq!(s(&v, cmd), "550", "{cmd}: {v}");
    }
    // libunftp answers RNFR itself after checking the path exists.
    assert_eq!(s(&v, "RNFR"), "350", "{v}");
    assert!(s(&v, "RNFR missing").starts_with('5'), "{v}");
    assert!(s(&v, "SITE CHMOD").starts_with('5'), "{v}");
    assert_eq!(s(&v, "NOOP"), "200");
    assert_eq!(s(&v, "RETR"), "226");
    assert_eq!(s(&v, "sha"), sha256(&fx.package_bytes(ROOT_PKG)));

    assert_eq!(
        snapshot(fx.dir.path()),
        before,
        "the package folder changed"
    );

    let refused = |what: &'static str, n: usize| {
        fx.wait_records(what, n, move |r| {
            r.outcome == Outcome::Refused
                && r.reason.starts_with(what)
                && r.protocol == Protocol::Ftp
        })
    };
    // STOR ×3, APPE and STOU all reach the back-end's `put`.
    let puts = refused("STOR/APPE", 5).await;
    let dele = refused("DELE", 2).await;
    let mkd = refused("MKD", 1).await;
    let rmd = refused("RMD", 1).await;
    let rename = refused("RNFR/RNTO", 2).await;
    for r in puts
        .iter()
        .chain(&dele)
        .chain(&mkd)
        .chain(&rmd)
        .chain(&rename)
    {
        assert_eq!(r.status, 550, "{r:?}");
        assert_eq!(r.bytes_sent, 0, "{r:?}");
        assert_eq!(r.user.as_deref(), Some("test"), "{r:?}");
        // Named as downloads are (relative to the folder), so a report
        // groups a package's refused writes with its downloads.
        assert!(!r.path.starts_with('/'), "{r:?}");
    }
    assert!(rmd.iter().all(|r| r.path == "Jun"), "{rmd:?}");
    assert!(
        fx.log_lines()
            .iter()
            .filter(|l| l["outcome"] == "refused")
            .count()
            >= 11
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_download_is_logged_with_the_bytes_sent() {
    // The client's small receive window keeps what the server can hand to
    // the kernel (its send buffer, up to 4 MiB by default on Linux) well
    // below the 8 MiB package, so the close always lands mid-transfer.
    let fx = Fixture::start(|b| b).await;
    let size = fx.package_bytes(BIG).len() as u64;
    let v = ftp_py(
        &fx,
        r#"
res = {}
def start(ftp):
    """Starts RETR of the big package and reads the first 256 KiB."""
    res[me(ftp) + ' retr'], conn = start_retr(ftp, ARGS[0])
    got = 0
    while got < 256 * 1024:
        chunk = conn.recv(64 * 1024)
        if not chunk:
            break
        got += len(chunk)
    res[me(ftp) + ' got'] = got
    return conn

# Like a module losing its link: data connection closed, then the control one.
ftp = connect()
res['hangup'] = me(ftp)
start(ftp).close()
ftp.close()

# Data connection closed, control connection kept to read the final reply.
ftp = connect()
res['kept'] = me(ftp)
start(ftp).close()
res['kept final'] = code(ftp.getresp)
res['kept noop'] = code(ftp.sendcmd, 'NOOP')
ftp.close()
out(res)
"#,
        &[BIG],
    )
    .await;
    for case in ["hangup", "kept"] {
        let peer = s(&v, case).to_string();
        assert_eq!(s(&v, &format!("{peer} retr")), "150", "{v}");
        assert!(
            v[format!("{peer} got")].as_u64().unwrap() >= 256 * 1024,
            "{v}"
        );
        let rec = fx
            .wait_record(&format!("aborted RETR ({case})"), |r| {
                is_ftp_record(r, BIG, Outcome::Aborted) && r.peer.to_string() == peer
            })
            .await;
        assert!(
            rec.bytes_sent > 0 && rec.bytes_sent < size,
            "{case}: {rec:?}"
        );
        assert_eq!(rec.size, Some(size));
        assert!((400..500).contains(&rec.status), "{rec:?}");
        assert_eq!(rec.user.as_deref(), Some("test"));
    }
    assert!(s(&v, "kept final").starts_with('4'), "{v}");
    assert_eq!(s(&v, "kept noop"), "200", "{v}");
    fx.assert_every_record("no complete download", |r| r.outcome != Outcome::Complete);
    let lines = fx.log_lines();
    assert_eq!(
        lines.iter().filter(|l| l["outcome"] == "aborted").count(),
        2,
        "{lines:?}"
    );
}

/// Python: starts `RETR ARGS[0]` on a small-window data connection,
/// reads a little and then stops reading (both connections stay open).
const START_THEN_STALL: &str = r#"
ftp = connect()
res = {'peer': me(ftp)}
res['retr'], conn = start_retr(ftp, ARGS[0])
res['got'] = len(conn.recv(1000))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_reading_is_aborted_after_the_stall_timeout() {
    let fx = Fixture::start(|b| b.stall_timeout(Duration::from_secs(2))).await;
    let size = fx.package_bytes(BIG).len() as u64;
    let body = format!(
        "{START_THEN_STALL}{}",
        r#"
# The control connection still answers commands that do not wait for the
# transfer.
t0 = time.monotonic()
res['noop'] = ftp.sendcmd('NOOP')[:3]
res['noop_s'] = time.monotonic() - t0
# Then the server gives up on the stalled data connection.
res['final'] = code(ftp.getresp)
res['final_s'] = time.monotonic() - t0
conn.close()
ftp.close()
out(res)
"#
    );
    let v = ftp_py(&fx, &body, &[BIG]).await;
    assert_eq!(s(&v, "retr"), "150", "{v}");
    assert_eq!(s(&v, "noop"), "200", "{v}");
    assert!(v["noop_s"].as_f64().unwrap() < 1.0, "{v}");
    assert_eq!(s(&v, "final"), "426", "{v}");
    let waited = v["final_s"].as_f64().unwrap();
    assert!(
        (1.0..10.0).contains(&waited),
        "aborted after {waited:.1} s: {v}"
    );
    let peer = s(&v, "peer").to_string();
    let rec = fx
        .wait_record("aborted stalled RETR", |r| {
            is_ftp_record(r, BIG, Outcome::Aborted) && r.peer.to_string() == peer
        })
        .await;
    assert!(rec.reason.contains("stalled"), "{rec:?}");
    assert!(rec.bytes_sent > 0 && rec.bytes_sent < size, "{rec:?}");
    assert_eq!(rec.status, 426);
    assert!(rec.duration_ms >= 2000, "{rec:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retr_of_a_missing_file_or_a_folder_is_550_not_found() {
    let fx = Fixture::start(|b| b).await;
    let v = ftp_py(
        &fx,
        r#"
ftp = connect()
res = {}
for p in ['missing.zip', 'Jun/missing.zip', 'Jun', 'Dec/update-v12-to-v13.zip']:
    c, data = retr(ftp, 'RETR ' + p)
    res[p] = [c, len(data)]
out(res)
"#,
        &[],
    )
    .await;
    for p in [
        "missing.zip",
        "Jun/missing.zip",
        "Jun",
        "Dec/update-v12-to-v13.zip",
    ] {
        assert_eq!(v[p], serde_json::json!(["550", 0]), "{p}: {v}");
        let rec = fx
            .wait_record(&format!("not_found for {p}"), |r| {
                is_ftp_record(r, p, Outcome::NotFound)
            })
            .await;
        assert_eq!(rec.status, 550);
        assert_eq!(rec.bytes_sent, 0);
        assert_eq!(rec.size, None);
        assert_eq!(rec.user.as_deref(), Some("test"));
    }
    let lines = fx.log_lines();
    assert_eq!(
        lines.iter().filter(|l| l["outcome"] == "not_found").count(),
        4,
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_is_refused() {
    let fx = Fixture::start(|b| b).await;
    let passwd = std::fs::read("/etc/passwd").unwrap_or_default();
    let v = ftp_py(
        &fx,
        r#"
ftp = connect()
res = {'retr': {}}
for p in ['../../etc/passwd', '/../etc/passwd', '/etc/passwd', '..\\..\\etc\\passwd',
          'Jun/../../etc/passwd', '../update-v12-to-v13.zip', './../../etc/passwd']:
    c, data = retr(ftp, 'RETR ' + p)
    res['retr'][p] = [c, sha(data), len(data)]
res['size'] = code(ftp.sendcmd, 'SIZE ../../etc/passwd')
res['list'] = lines(ftp, 'LIST ../..')[0]
res['nlst'] = lines(ftp, 'NLST /etc')[0]
# ftplib turns cwd('..') into CDUP: send the literal commands.
res['cwd_up'] = code(ftp.sendcmd, 'CWD ..')
res['pwd_after_cwd_up'] = ftp.pwd()
res['cwd_up2'] = code(ftp.sendcmd, 'CWD ../..')
res['cdup'] = code(ftp.sendcmd, 'CDUP')
res['pwd_after_cdup'] = ftp.pwd()
res['cwd_etc'] = code(ftp.cwd, '/etc')
res['cwd_back'] = code(ftp.cwd, '..\\..')
res['pwd_end'] = ftp.pwd()
res['nlst_end'] = sorted(ftp.nlst())
# The session still works after all of it.
c, data = retr(ftp, 'RETR update-v12-to-v13.zip')
res['ok'] = [c, sha(data)]
out(res)
"#,
        &[],
    )
    .await;
    let retrs = v["retr"].as_object().unwrap();
    assert_eq!(retrs.len(), 7);
    for (p, r) in retrs {
        assert_eq!(r[0], "550", "{p}: {v}");
        assert_eq!(r[2], 0, "{p}: {v}");
        assert_ne!(r[1], sha256(&passwd).as_str(), "{p}: served /etc/passwd");
    }
    for key in ["size", "list", "nlst", "cwd_etc", "cwd_back"] {
        assert_eq!(s(&v, key), "550", "{key}: {v}");
    }
    // Going up from the root may be refused or be a no-op; either way the
    // session stays in the root.
    for key in ["cwd_up", "cwd_up2", "cdup"] {
        assert!(["250", "550"].contains(&s(&v, key)), "{key}: {v}");
    }
    assert_eq!(s(&v, "pwd_after_cwd_up"), "/");
    assert_eq!(s(&v, "pwd_after_cdup"), "/");
    assert_eq!(s(&v, "pwd_end"), "/");
    assert_eq!(
        strings(&v, "nlst_end"),
        vec!["Jun".to_string(), BIG.into(), ROOT_PKG.into()]
    );
    assert_eq!(
        v["ok"],
        serde_json::json!(["226", sha256(&fx.package_bytes(ROOT_PKG))])
    );

    let recs = fx
        .wait_records("7 refused or not_found RETRs", 7, |r| {
            matches!(r.outcome, Outcome::Refused | Outcome::NotFound) && r.status == 550
        })
        .await;
    assert!(
        recs.iter().all(|r| r.bytes_sent == 0 && r.size.is_none()),
        "{recs:#?}"
    );
    // SIZE of a hostile path is refused with a record too.
    let size = fx
        .wait_record("the refused SIZE", |r| r.reason.starts_with("SIZE: "))
        .await;
    assert_eq!(size.outcome, Outcome::Refused, "{size:?}");
    assert_eq!(size.path, "../../etc/passwd", "{size:?}");
    assert!(size.reason.contains("'..' segment"), "{size:?}");
    // So is CWD's, as HTTP's `..` is: refused, not a folder not found.
    let cwd = fx
        .wait_record("the refused CWD ../..", |r| {
            r.reason.starts_with("CWD: ") && r.path.contains("..")
        })
        .await;
    assert_eq!(cwd.outcome, Outcome::Refused, "{cwd:?}");
    assert!(cwd.reason.contains("'..' segment"), "{cwd:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_leaving_the_folder_is_not_served() {
    let fx = Fixture::start(|b| b).await;
    let outside = tempfile::tempdir().unwrap();
    // A valid package, so only its location keeps it from being served.
    let secret = common::zip_with(&[("system.diff", b"outside the package folder")]);
    std::fs::write(outside.path().join("secret-v1-to-v2.zip"), &secret).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret-v1-to-v2.zip"),
        fx.dir.path().join("escape-v1-to-v2.zip"),
    )
    .unwrap();
    // A link that stays inside is served, so the refusal is about leaving.
    std::os::unix::fs::symlink(
        fx.dir.path().join(JUN_PKG),
        fx.dir.path().join("inside-v1-to-v2.zip"),
    )
    .unwrap();
    wait_catalog(&fx, "escape-v1-to-v2.zip", |l| {
        matches!(l, Lookup::Excluded(_))
    })
    .await;
    wait_catalog(&fx, "inside-v1-to-v2.zip", |l| {
        matches!(l, Lookup::Package(_))
    })
    .await;

    let v = ftp_py(
        &fx,
        r#"
ftp = connect()
res = {}
c, data = retr(ftp, 'RETR escape-v1-to-v2.zip')
res['escape'] = [c, len(data)]
res['size'] = code(ftp.sendcmd, 'SIZE escape-v1-to-v2.zip')
res['nlst'] = sorted(ftp.nlst())
res['list'] = lines(ftp, 'LIST')[1]
c, data = retr(ftp, 'RETR inside-v1-to-v2.zip')
res['inside'] = [c, sha(data)]
out(res)
"#,
        &[],
    )
    .await;
    assert_eq!(v["escape"], serde_json::json!(["550", 0]), "{v}");
    assert_eq!(s(&v, "size"), "550");
    let nlst = strings(&v, "nlst");
    assert!(!nlst.iter().any(|n| n.contains("escape")), "{nlst:?}");
    assert!(nlst.iter().any(|n| n == "inside-v1-to-v2.zip"), "{nlst:?}");
    let list = strings(&v, "list");
    assert!(!list.iter().any(|l| l.contains("escape")), "{list:?}");
    assert_eq!(
        v["inside"],
        serde_json::json!(["226", sha256(&fx.package_bytes(JUN_PKG))])
    );
    let rec = fx
        .wait_record("refused RETR of the escaping link", |r| {
            is_ftp_record(r, "escape-v1-to-v2.zip", Outcome::Refused)
        })
        .await;
    assert_eq!(rec.status, 550);
    assert_eq!(rec.bytes_sent, 0);
    assert_eq!(rec.size, None);
    assert_eq!(rec.sha256, None);
}

/// Copies [`common::broken_zip`] into a running fixture and waits until the
/// catalog has validated it (and found it invalid).
async fn copy_in_broken(fx: &Fixture) -> Vec<u8> {
    let bytes = common::broken_zip();
    common::copy_in(fx.dir.path(), "broken-v1-to-v2.zip", &bytes);
    wait_catalog(
        fx,
        "broken-v1-to-v2.zip",
        |l| matches!(l, Lookup::Package(p) if !p.is_valid()),
    )
    .await;
    bytes
}

const RETR_BROKEN: &str = r#"
ftp = connect()
res = {}
c, data = retr(ftp, 'RETR broken-v1-to-v2.zip')
res['retr'] = [c, len(data), sha(data)]
res['nlst'] = sorted(ftp.nlst())
out(res)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_zip_copied_in_is_refused_as_an_invalid_package() {
    let fx = Fixture::start(|b| b).await;
    let bytes = copy_in_broken(&fx).await;
    let v = ftp_py(&fx, RETR_BROKEN, &[]).await;
    assert_eq!(v["retr"][0], "550", "{v}");
    assert_eq!(v["retr"][1], 0, "{v}");
    assert!(
        !strings(&v, "nlst").contains(&"broken-v1-to-v2.zip".to_string()),
        "{v}"
    );
    let rec = fx
        .wait_record("invalid_package record", |r| {
            is_ftp_record(r, "broken-v1-to-v2.zip", Outcome::InvalidPackage)
        })
        .await;
    assert_eq!(rec.status, 550);
    assert_eq!(rec.bytes_sent, 0);
    assert_eq!(rec.size, Some(bytes.len() as u64));
    assert_eq!(rec.sha256.as_deref(), Some(sha256(&bytes).as_str()));
    assert!(rec.reason.starts_with("invalid package"), "{rec:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_zip_is_served_byte_identical_with_allow_invalid() {
    let fx = Fixture::start(|b| b.allow_invalid(true)).await;
    let bytes = copy_in_broken(&fx).await;
    let v = ftp_py(&fx, RETR_BROKEN, &[]).await;
    assert_eq!(
        v["retr"],
        serde_json::json!(["226", bytes.len(), sha256(&bytes)]),
        "{v}"
    );
    assert!(
        strings(&v, "nlst").contains(&"broken-v1-to-v2.zip".to_string()),
        "{v}"
    );
    let rec = fx
        .wait_record("complete RETR of the broken zip", |r| {
            is_ftp_record(r, "broken-v1-to-v2.zip", Outcome::Complete)
        })
        .await;
    assert_eq!(rec.bytes_sent, bytes.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_copied_in_is_downloadable_within_two_seconds() {
    let fx = Fixture::start(|b| b).await;
    let staging = tempfile::tempdir().unwrap();
    let bytes = common::zip_with(&[("system.diff", &common::noise(100_000, 42))]);
    let src = staging.path().join("new-v13-to-v14.zip");
    std::fs::write(&src, &bytes).unwrap();
    // The client copies the package in itself (hidden name, then rename) so
    // the two-second clock starts at the copy, on the client's clock.
    let v = ftp_py(
        &fx,
        r#"
import shutil
src, folder = ARGS[0], ARGS[1]
ftp = connect()
shutil.copyfile(src, os.path.join(folder, '.new-v13-to-v14.zip.part'))
os.rename(os.path.join(folder, '.new-v13-to-v14.zip.part'), os.path.join(folder, 'new-v13-to-v14.zip'))
t0 = time.monotonic()
attempts, c, data = 0, '', b''
while time.monotonic() - t0 < 10:
    attempts += 1
    started = time.monotonic() - t0
    c, data = retr(ftp, 'RETR new-v13-to-v14.zip')
    if c == '226':
        break
    time.sleep(0.05)
out({'code': c, 'sha': sha(data), 'started': started, 'attempts': attempts})
"#,
        &[src.to_str().unwrap(), fx.dir.path().to_str().unwrap()],
    )
    .await;
    assert_eq!(s(&v, "code"), "226", "{v}");
    assert_eq!(s(&v, "sha"), sha256(&bytes));
    let started = v["started"].as_f64().unwrap();
    assert!(
        started <= 2.0,
        "first successful RETR started {started:.2} s after the copy: {v}"
    );
    let rec = fx
        .wait_record("complete RETR of the new package", |r| {
            is_ftp_record(r, "new-v13-to-v14.zip", Outcome::Complete)
        })
        .await;
    assert_eq!(rec.sha256.as_deref(), Some(sha256(&bytes).as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_control_connection_gets_errors_and_the_server_keeps_serving() {
    let fx = Fixture::start(|b| b).await;
    let v = ftp_py(
        &fx,
        r#"
def raw(payloads, login=False):
    """Sends each payload on one fresh control connection and returns the
    reply code to each; 'closed' (and the end) once the server hangs up."""
    s = socket.create_connection((HOST, PORT), timeout=10)
    f = s.makefile('rb')
    if f.readline()[:3] != b'220':
        return ['no greeting']
    if login:
        for cmd in [b'USER test\r\n', b'PASS test\r\n']:
            s.sendall(cmd)
            f.readline()
    codes = []
    for p in payloads:
        try:
            s.sendall(p)
            code = f.readline()[:3].decode('latin-1') or 'closed'
        except OSError:
            code = 'closed'
        codes.append(code)
        if code == 'closed':
            break
    s.close()
    return codes

def over_cap(payload, login=False):
    """Sends one payload over the 4,096-byte command-line cap and reads
    every reply line until the server hangs up ('timeout' if it does not)."""
    s = socket.create_connection((HOST, PORT), timeout=10)
    f = s.makefile('rb')
    f.readline()
    if login:
        for cmd in [b'USER test\r\n', b'PASS test\r\n']:
            s.sendall(cmd)
            f.readline()
    lines = []
    try:
        s.sendall(payload)
        while True:
            line = f.readline()
            if not line:
                break
            lines.append(line.decode('latin-1').strip())
    except socket.timeout:
        lines.append('timeout')
    except OSError:
        pass
    s.close()
    return lines

noise = bytes((i * 151 + 7) % 256 for i in range(512)).replace(b'\n', b'')
long = b'A' * 10240
name = b'A' * 2000
res = {
    'binary': raw([noise + b'\r\n', b'NOOP\r\n']),
    'telnet_interrupt': raw([b'\xff\xf4\xff\xf2ABOR\r\n', b'NOOP\r\n']),
    'long_line': over_cap(long + b'\r\n'),
    'long_line_logged_in': over_cap(long + b'\r\n', login=True),
    'long_path': over_cap(b'SIZE ' + b'a/' * 5120 + b'\r\n', login=True),
    'long_cwd': over_cap(b'CWD ' + long + b'\r\n', login=True),
    'path_under_cap': raw([b'SIZE ' + b'a/' * 1500 + b'\r\n', b'NOOP\r\n'], login=True),
    'nul': raw([b'\x00\r\n', b'NOOP\r\n']),
    'nul_logged_in': raw([b'\x00\r\n', b'NOOP\r\n'], login=True),
    'nul_in_path': raw([b'SIZE update-v12-to-v13\x00.zip\r\n', b'CWD J\x00un\r\n', b'NOOP\r\n'], login=True),
    'empty_line': raw([b'\r\n', b'NOOP\r\n']),
    'before_login': raw([b'RETR update-v12-to-v13.zip\r\n', b'STOR x.zip\r\n', b'DELE x\r\n', b'NOOP\r\n']),
    'long_user': raw([b'USER ' + name + b'\r\n', b'PASS test\r\n', b'NOOP\r\n']),
    'nul_in_user': raw([b'USER te\x00st\r\n', b'PASS test\r\n', b'NOOP\r\n']),
}
# Half a line, then a hang-up.
s = socket.create_connection((HOST, PORT), timeout=10)
s.recv(1024)
s.sendall(b'USER te')
s.close()

ftp = connect()
c, data = retr(ftp, 'RETR Jun/update-v12-to-v13.zip')
res['after'] = [c, sha(data)]
out(res)
"#,
        &[],
    )
    .await;
    let error_or_close = |c: &str| c.starts_with('5') || c == "closed";
    for key in [
        "binary",
        "telnet_interrupt",
        "path_under_cap",
        "nul",
        "nul_logged_in",
        "nul_in_path",
        "empty_line",
        "before_login",
    ] {
        // Every payload but the closing NOOP is garbage: each gets an
        // error reply, or the server hangs up; if it did not, the session
        // still answers NOOP.
        let codes = strings(&v, key);
        let (last, garbage) = codes.split_last().unwrap();
        assert!(
            garbage.iter().all(|c| error_or_close(c)),
            "{key}: {codes:?}"
        );
        assert!(last == "200" || last == "closed", "{key}: {codes:?}");
    }
    // A line over the 4,096-byte cap gets 500 (libunftp may answer the
    // line itself first) and the connection is closed.
    for key in ["long_line", "long_line_logged_in", "long_path", "long_cwd"] {
        let lines = strings(&v, key);
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("500 Command line too long")),
            "{key}: {lines:?}"
        );
        assert!(!lines.iter().any(|l| l == "timeout"), "{key}: {lines:?}");
    }
    // A long or odd user name is just a user name: the password then fails.
    assert_eq!(strings(&v, "long_user"), ["331", "530", "200"], "{v}");
    assert_eq!(strings(&v, "nul_in_user"), ["331", "530", "200"], "{v}");
    let failed = fx
        .wait_records("two auth_failed records", 2, |r| {
            r.outcome == Outcome::AuthFailed
        })
        .await;
    assert!(
        failed.iter().any(|r| r.user.as_deref() == Some("te\0st")),
        "{failed:#?}"
    );

    // A new client still logs in and downloads.
    assert_eq!(
        v["after"],
        serde_json::json!(["226", sha256(&fx.package_bytes(JUN_PKG))]),
        "{v}"
    );
    let recs = fx.server.downloads();
    assert_eq!(
        recs.iter()
            .filter(|r| r.outcome == Outcome::Complete)
            .count(),
        1,
        "{recs:#?}"
    );
    assert!(
        recs.iter()
            .all(|r| r.outcome == Outcome::Complete || r.bytes_sent == 0),
        "{recs:#?}"
    );
    // The log file stays one JSON object per line, whatever the names held.
    assert_eq!(fx.log_lines().len(), recs.len());
}

/// One client's try at a missing package is one attempt: lftp asks `MDTM`,
/// `SIZE` and sends `RETR` for it, and the log holds one `not_found`
/// record. A `SIZE`-only session's record names the package's size and
/// SHA-256, as an HTTP `HEAD`'s does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_try_at_a_missing_package_is_one_record_and_size_only_names_the_package() {
    let fx = Fixture::start(|b| b).await;
    let script = format!(
        "set net:max-retries 1; set net:timeout 10; open -u test,test -p {} 127.0.0.1; \
         get nope-v1-to-v2.zip -o /dev/null; bye",
        fx.ftp_port()
    );
    let _ = common::run("lftp", &["-c", &script]).await;
    let head = common::run("curl", &["-sSI", &fx.ftp_url(ROOT_PKG)]).await;
    assert!(head.status.success(), "{head:?}");
    let records = fx.wait_records("two records", 2, |_| true).await;
    let missing: Vec<_> = records
        .iter()
        .filter(|r| r.outcome == Outcome::NotFound)
        .collect();
    assert_eq!(missing.len(), 1, "{records:?}");
    let size_only = records
        .iter()
        .find(|r| r.outcome == Outcome::HeadersOnly)
        .expect("the SIZE-only record");
    let want = fx.package_bytes(ROOT_PKG);
    assert_eq!(size_only.size, Some(want.len() as u64), "{size_only:?}");
    assert!(size_only.sha256.is_some(), "{size_only:?}");
    // Nothing more comes.
    assert_eq!(
        fx.server.downloads().len(),
        2,
        "{:?}",
        fx.server.downloads()
    );
}

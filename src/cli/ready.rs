//! `--ready-json <FILE|->` of `serve` and `modem`: one JSON object written
//! once every listener is bound and the catalog scanned (for `modem`: once
//! its ports are open), so a test rig in any language learns the bound
//! ports, URLs and paths without scraping the human-readable lines.
//!
//! A FILE is removed at start (so its appearance means "ready") and
//! written atomically: a temporary file in the same folder, then a rename.
//! `-` writes the object as one line on stdout; the human-readable lines
//! then go to stderr, so stdout carries nothing else. The field names are
//! stable (README "Use it in your test suite"); new fields may be added.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::catalog::validate::PackageListing;
use crate::modem::Modem;
use crate::serve::Server;

/// `serve`'s ready object.
#[derive(Debug, Serialize)]
pub struct ServeReady {
    /// Process id.
    pub pid: u32,
    /// `qfota-serve` version.
    pub version: &'static str,
    /// The listen address (`--bind`).
    pub bind: String,
    /// The host put in module URLs and `PASV` replies.
    pub public_host: String,
    /// Bound `ip:port` per listener; `null` when off.
    pub listeners: Listeners,
    /// Every package found, sorted by path.
    pub packages: Vec<PackageListing>,
    /// The download log file (absolute), or `null` when none.
    pub log: Option<PathBuf>,
}

/// Bound addresses, `ip:port`.
#[derive(Debug, Serialize)]
pub struct Listeners {
    /// FTP control port.
    pub ftp: Option<SocketAddr>,
    /// HTTP.
    pub http: Option<SocketAddr>,
    /// HTTPS.
    pub https: Option<SocketAddr>,
    /// The admin listener (`--admin`).
    pub admin: Option<SocketAddr>,
}

impl ServeReady {
    /// What `server` (with the admin listener at `admin` and the download
    /// log `log`) looks like now.
    pub fn of(
        server: &Server,
        bind: std::net::IpAddr,
        admin: Option<SocketAddr>,
        log: Option<&Path>,
    ) -> Self {
        let adv = server.advertised();
        let packages = server
            .catalog()
            .packages()
            .iter()
            .map(|p| adv.listing(p))
            .collect();
        ServeReady {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION"),
            bind: bind.to_string(),
            public_host: adv.host.clone(),
            listeners: Listeners {
                ftp: server.ftp_addr(),
                http: server.http_addr(),
                https: server.https_addr(),
                admin,
            },
            packages,
            log: log.map(absolute),
        }
    }
}

/// `modem`'s ready object.
#[derive(Debug, Serialize)]
pub struct ModemReady {
    /// Process id.
    pub pid: u32,
    /// The PTY link hosts open (`--pty`), or `null`.
    pub pty: Option<PathBuf>,
    /// The bound TCP AT port `ip:port` (`--tcp`), or `null`.
    pub tcp: Option<SocketAddr>,
    /// What `ATI` shows (`EC25`).
    pub model: String,
    /// The module family (`ec2x`).
    pub profile: &'static str,
    /// The firmware revision (`AT+QGMR`), or `null` when not given.
    pub version: Option<String>,
    /// What `AT+GSN` shows.
    pub imei: String,
    /// The bound runtime-control address `ip:port` (`--control`), or
    /// `null`.
    pub control: Option<SocketAddr>,
}

impl ModemReady {
    /// What `modem` looks like now.
    pub fn of(modem: &Modem) -> Self {
        ModemReady {
            pid: std::process::id(),
            pty: modem.pty_link().map(absolute),
            tcp: modem.tcp_addr(),
            control: modem.control_addr(),
            model: modem.model().to_string(),
            profile: modem.module().profile().name,
            version: modem.module().version(),
            imei: modem.imei().to_string(),
        }
    }
}

/// Whether `target` is `-` (stdout).
pub fn is_stdout(target: &Path) -> bool {
    target == Path::new("-")
}

/// Removes a FILE left by an earlier run, so that the file appearing
/// means this run is ready.
///
/// # Errors
/// It exists and cannot be removed.
pub fn clear(target: &Path) -> std::io::Result<()> {
    if is_stdout(target) {
        return Ok(());
    }
    match std::fs::remove_file(target) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Writes `value` to `target`: one line on stdout for `-`, else the file,
/// atomically (`<file>.<pid>.tmp` beside it, then renamed over it).
///
/// # Errors
/// The file cannot be written or renamed, or stdout is closed.
pub fn write(target: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_string(value).map_err(std::io::Error::other)?;
    line.push('\n');
    if is_stdout(target) {
        let mut out = std::io::stdout().lock();
        out.write_all(line.as_bytes())?;
        return out.flush();
    }
    let mut tmp = target.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, line.as_bytes())
        .and_then(|()| std::fs::rename(&tmp, target))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// `path` made absolute against the working directory (as given when that
/// cannot be read), so a script in another folder can use it.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_target_is_replaced_atomically_and_cleared_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("ready.json");
        std::fs::write(&target, "stale").unwrap();
        clear(&target).unwrap();
        assert!(!target.exists());
        clear(&target).unwrap();
        write(&target, &serde_json::json!({"pid": 1})).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "{\"pid\":1}\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
        let err = write(&dir.path().join("no/such/dir.json"), &1).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}

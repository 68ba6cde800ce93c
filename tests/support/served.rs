//! The real `qfota-serve` binary serving on loopback for the operations
//! tests (report, config, service): started with `NOTIFY_SOCKET` pointing
//! at a Unix datagram socket the test binds, so start-up is awaited on the
//! server's own `READY=1` (sd_notify), then the banner is read for the
//! listener addresses. The child is killed on drop.

#![allow(dead_code)] // each test file uses part of it

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram as StdDatagram;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};

use crate::common::bounded;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_qfota-serve");

/// A running server.
pub struct Served {
    child: Child,
    /// The banner lines up to the download-log line.
    pub banner: Vec<String>,
    /// `ftp`/`http`/`https` → the `ip:port` it listens on.
    pub listeners: HashMap<String, String>,
    /// What the server sent on the notify socket before the banner was read.
    pub notified: String,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Starts `qfota-serve args…` with `envs` added to the environment and
    /// waits for `READY=1` on the notify socket (bounded).
    pub async fn start(args: &[&str], envs: &[(&str, &str)]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let sock_path = dir.path().join("notify.sock");
        let sock = UnixDatagram::from_std({
            let s = StdDatagram::bind(&sock_path).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .unwrap();
        let mut child = Command::new(BIN)
            .args(args)
            .envs(envs.iter().copied())
            .env("NOTIFY_SOCKET", &sock_path)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = bounded("READY=1 from the server", sock.recv(&mut buf))
            .await
            .unwrap();
        let notified = String::from_utf8_lossy(&buf[..n]).into_owned();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = Vec::new();
        let mut listeners = HashMap::new();
        // The banner is written before READY=1: these lines are there.
        while let Some(line) = bounded("banner", lines.next_line()).await.unwrap() {
            if let Some((proto, addr)) = line.trim().split_once(" listening on ") {
                listeners.insert(proto.trim().to_string(), addr.trim().to_string());
            }
            let last = line.trim_start().starts_with("download log");
            banner.push(line);
            if last {
                break;
            }
        }
        Served {
            child,
            banner,
            listeners,
            notified,
            _dir: dir,
        }
    }

    /// Serves the shipped sample packages (`packages/`) over HTTP and FTP
    /// on 127.0.0.1 (user `test:test`, `passive` ports, download log `log`),
    /// with `extra` flags before the folder.
    pub async fn samples(log: &std::path::Path, passive: &str, extra: &[&str]) -> Served {
        let log = log.to_string_lossy();
        let packages = concat!(env!("CARGO_MANIFEST_DIR"), "/packages");
        let mut args = vec![
            "--http",
            "0",
            "--ftp",
            "0",
            "--bind",
            "127.0.0.1",
            "--user",
            "test:test",
            "--passive-ports",
            passive,
            "--log",
            &log,
        ];
        args.extend_from_slice(extra);
        args.push(packages);
        Served::start(&args, &[]).await
    }

    /// `proto://ip:port` of a listener.
    pub fn base(&self, proto: &str) -> String {
        format!("{proto}://{}", self.listeners[proto])
    }

    /// Stops the server with SIGTERM and returns its exit code.
    pub async fn stop(mut self) -> Option<i32> {
        let pid = self.child.id().unwrap().to_string();
        let kill = crate::common::run("kill", &["-TERM", &pid]).await;
        assert!(kill.status.success());
        bounded("server exit", self.child.wait())
            .await
            .unwrap()
            .code()
    }
}

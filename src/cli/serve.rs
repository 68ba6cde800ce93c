//! `qfota-serve [OPTIONS] <DIR>`, the default job: the serving flags
//! ([`ServeArgs`], environment `QFOTA_*`), their conversion to a
//! [`ServerBuilder`] (checked once, when the server starts), and [`run`]:
//! start, print the banner, serve until the shutdown signal, stop.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use crate::catalog::validate::FtpCredentials;
use crate::cli::report::banner;
use crate::cli::values::{parse_port_range, parse_user};
use crate::serve::fault::FaultRule;
use crate::serve::{Server, ServerBuilder};

/// `qfota-serve [OPTIONS] <DIR>`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("protocol").required(true).multiple(true).args(["ftp", "http", "https"])))]
pub struct ServeArgs {
    /// Folder holding the firmware packages (scanned recursively, watched).
    #[arg(required = true, env = "QFOTA_DIR")]
    pub dir: Option<PathBuf>,
    /// Serve FTP on this port (0 = any free port).
    #[arg(long, env = "QFOTA_FTP", value_name = "PORT")]
    pub ftp: Option<u16>,
    /// Serve HTTP on this port (0 = any free port).
    #[arg(long, env = "QFOTA_HTTP", value_name = "PORT")]
    pub http: Option<u16>,
    /// Serve HTTPS on this port (0 = any free port).
    #[arg(long, env = "QFOTA_HTTPS", value_name = "PORT")]
    pub https: Option<u16>,
    /// Address to listen on.
    #[arg(
        long,
        env = "QFOTA_BIND",
        default_value = "0.0.0.0",
        value_name = "ADDR"
    )]
    pub bind: IpAddr,
    /// Address modules use to reach this server: PASV replies and printed
    /// URLs [default: the bind address if concrete, else the first
    /// non-loopback IPv4 address].
    #[arg(long, env = "QFOTA_PUBLIC_HOST", value_name = "HOST")]
    pub public_host: Option<String>,
    /// FTP account NAME:PASSWORD, repeatable (env: comma-separated). Without
    /// it FTP accepts any login, read-only.
    #[arg(long = "user", env = "QFOTA_USER", value_name = "NAME:PASSWORD", value_parser = parse_user, value_delimiter = ',')]
    pub users: Vec<FtpCredentials>,
    /// Ports offered for FTP passive data connections.
    #[arg(long, env = "QFOTA_PASSIVE_PORTS", default_value = "50000-50100", value_name = "FIRST-LAST", value_parser = parse_port_range)]
    pub passive_ports: RangeInclusive<u16>,
    /// HTTPS certificate chain (PEM).
    #[arg(long, env = "QFOTA_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// HTTPS private key (PEM).
    #[arg(long, env = "QFOTA_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Where the generated RSA certificate is kept (made once, reused).
    #[arg(
        long,
        env = "QFOTA_CERTS_DIR",
        default_value = "certs",
        value_name = "DIR"
    )]
    pub certs_dir: PathBuf,
    /// The download log: one JSON object per line, appended.
    #[arg(
        long,
        env = "QFOTA_LOG",
        default_value = "downloads.jsonl",
        value_name = "FILE"
    )]
    pub log: PathBuf,
    /// Serve packages that fail validation (for testing module error paths).
    #[arg(long, env = "QFOTA_ALLOW_INVALID")]
    pub allow_invalid: bool,
    /// Server fault rule, repeatable: an action (refuse-login, not-found,
    /// status=CODE, ftp-reply=CODE,command=CMD, drop-after=BYTES|PCT%,
    /// stall-after=BYTES, slow=BYTES_PER_S, corrupt=OFFSET) and matchers
    /// (path=GLOB, protocol=, peer=IP|CIDR, user=, times=N, rate=P).
    #[arg(
        long = "fault",
        env = "QFOTA_FAULT",
        value_name = "RULE",
        value_delimiter = ';'
    )]
    pub faults: Vec<FaultRule>,
    /// TOML file of fault rules (`seed = N`, `rules = ["…"]`), re-read when
    /// it changes.
    #[arg(long = "faults", env = "QFOTA_FAULTS", value_name = "FILE")]
    pub fault_file: Option<PathBuf>,
    /// Seed of the generator behind `rate=` (repeatable runs).
    #[arg(long, env = "QFOTA_FAULT_SEED", default_value_t = 0, value_name = "N")]
    pub fault_seed: u64,
    /// Seconds in-flight downloads may finish after Ctrl-C / SIGTERM.
    #[arg(
        long,
        env = "QFOTA_GRACE_SECS",
        default_value_t = 10,
        value_name = "SECS"
    )]
    pub grace_secs: u64,
    /// Seconds a write to a client may make no progress before the
    /// download is aborted.
    #[arg(
        long,
        env = "QFOTA_STALL_TIMEOUT_SECS",
        default_value_t = 120,
        value_name = "SECS"
    )]
    pub stall_timeout_secs: u64,
}

impl ServeArgs {
    /// The server configuration these flags describe.
    pub fn to_builder(&self) -> ServerBuilder {
        let mut b = Server::builder()
            .packages(self.dir.clone().unwrap_or_default())
            .bind(self.bind)
            .passive_ports(self.passive_ports.clone())
            .certs_dir(self.certs_dir.clone())
            .log_file(self.log.clone())
            .allow_invalid(self.allow_invalid)
            .grace_period(Duration::from_secs(self.grace_secs))
            .stall_timeout(Duration::from_secs(self.stall_timeout_secs.max(1)));
        if let Some(h) = &self.public_host {
            b = b.public_host(h.clone());
        }
        for rule in &self.faults {
            b = b.fault(rule.clone());
        }
        b = b.fault_seed(self.fault_seed);
        if let Some(f) = &self.fault_file {
            b = b.fault_file(f.clone());
        }
        if let Some(p) = self.ftp {
            b = b.ftp(p);
        }
        if let Some(p) = self.http {
            b = b.http(p);
        }
        if let Some(p) = self.https {
            b = b.https(p);
        }
        for u in &self.users {
            b = b.user(u.user.clone(), u.password.clone());
        }
        if let (Some(c), Some(k)) = (&self.tls_cert, &self.tls_key) {
            b = b.tls_files(c.clone(), k.clone());
        }
        b
    }
}

/// Runs `qfota-serve [OPTIONS] <DIR>`: starts the server, prints the
/// banner, serves until `shutdown` resolves (reopening the download log on
/// each `SIGHUP`, logrotate's `postrotate`), then lets in-flight downloads
/// finish (`--grace-secs`) and writes the queued download records.
///
/// # Errors
/// The server cannot start (port in use, unreadable folder), or `SIGHUP`
/// cannot be caught: exit 1.
pub async fn run(args: ServeArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<ExitCode> {
    // Caught before the banner, so a SIGHUP never finds the default action
    // (terminate) once the server is up.
    let mut hangup = signal(SignalKind::hangup()).context("cannot catch SIGHUP")?;
    let server = args.to_builder().start().await.context("cannot start")?;
    print!("{}", banner(&server, &args.log));
    let reopen_on_hangup = async {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reopening the download log");
            server.reopen_log();
        }
    };
    tokio::select! {
        () = shutdown => {}
        () = reopen_on_hangup => {}
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

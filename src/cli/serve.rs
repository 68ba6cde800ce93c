//! `qfota-serve [OPTIONS] <DIR>`, the default job: the serving flags
//! ([`ServeArgs`], environment `QFOTA_*`), their conversion to a
//! [`ServerBuilder`] (checked once, when the server starts), and [`run`]:
//! start, print the banner, tell systemd it is ready (`sd_notify`), serve
//! until the shutdown signal, stop. The configuration file is applied
//! before these flags are used ([`crate::cli::config`]).

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ipnet::IpNet;
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::Admin;
use crate::catalog::SourceHealth;
use crate::catalog::validate::FtpCredentials;
use crate::cli::output::banner;
use crate::cli::ready::{self, ServeReady};
use crate::cli::values::{parse_port_range, parse_public_host, parse_user};
use crate::serve::fault::FaultRule;
use crate::serve::{Server, ServerBuilder};

/// `qfota-serve [OPTIONS] <DIR>`.
///
/// The folder and at least one of `--ftp`/`--http`/`--https` are required
/// once the configuration file is applied ([`crate::cli::config::resolve`]),
/// so clap does not require them here.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file holding serve flags by their long names (`ftp = 2121`,
    /// `user = ["test:test"]`, `dir = "packages"`); flags and environment
    /// variables override it.
    #[arg(long, env = "QFOTA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Folder holding the firmware packages (scanned recursively, watched),
    /// or an object store location s3://BUCKET/PREFIX (see --s3-endpoint).
    #[arg(env = "QFOTA_DIR")]
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
    #[arg(long, env = "QFOTA_PUBLIC_HOST", value_name = "HOST", value_parser = parse_public_host)]
    pub public_host: Option<String>,
    /// FTP account NAME:PASSWORD, repeatable (env: comma-separated). Without
    /// it FTP accepts any login, read-only.
    #[arg(long = "user", env = "QFOTA_USER", value_name = "NAME:PASSWORD", value_parser = parse_user, value_delimiter = ',')]
    pub users: Vec<FtpCredentials>,
    /// Ports offered for FTP passive data connections.
    #[arg(long, env = "QFOTA_PASSIVE_PORTS", default_value = "50000-50100", value_name = "FIRST-LAST", value_parser = parse_port_range)]
    pub passive_ports: RangeInclusive<u16>,
    /// HTTPS certificate chain (PEM).
    #[arg(long, env = "QFOTA_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// HTTPS private key (PEM).
    #[arg(long, env = "QFOTA_TLS_KEY", value_name = "PEM")]
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
    #[arg(long, env = "QFOTA_ALLOW_INVALID", value_parser = clap::builder::BoolishValueParser::new())]
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
    /// Seconds a download may go without the client acknowledging a new
    /// byte (however long a single write stays pending) before it is
    /// aborted.
    #[arg(
        long,
        env = "QFOTA_STALL_TIMEOUT_SECS",
        default_value_t = 120,
        value_name = "SECS"
    )]
    pub stall_timeout_secs: u64,
    /// Most connections open at once over all package listeners; over it
    /// HTTP gets 503 with Retry-After, FTP 421, and a refused record.
    #[arg(
        long,
        env = "QFOTA_MAX_CONNECTIONS",
        default_value_t = crate::serve::limits::DEFAULT_MAX_CONNECTIONS,
        value_name = "N",
        value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u32).range(1..), |n| n as usize)
    )]
    pub max_connections: usize,
    /// Most connections open at once from one address (generous: modules
    /// behind a carrier's NAT share addresses).
    #[arg(
        long,
        env = "QFOTA_MAX_CONNECTIONS_PER_IP",
        default_value_t = crate::serve::limits::DEFAULT_MAX_CONNECTIONS_PER_IP,
        value_name = "N",
        value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u32).range(1..), |n| n as usize)
    )]
    pub max_connections_per_ip: usize,
    /// Seconds an FTP control connection may stay idle after login.
    #[arg(
        long,
        env = "QFOTA_FTP_IDLE_SECS",
        default_value_t = 120,
        value_name = "SECS"
    )]
    pub ftp_idle_secs: u64,
    /// Seconds an FTP control connection may take to log in before it is
    /// closed.
    #[arg(
        long,
        env = "QFOTA_LOGIN_TIMEOUT_SECS",
        default_value_t = 30,
        value_name = "SECS"
    )]
    pub login_timeout_secs: u64,
    /// Memory for resident copies of valid packages, in MiB: each package
    /// up to 256 MiB is held once and every download slices it (fast, no
    /// per-connection buffers, one version per download); 0 reads every
    /// download from its file.
    #[arg(
        long,
        env = "QFOTA_PACKAGE_MEMORY_MIB",
        default_value_t = 1024,
        value_name = "MIB"
    )]
    pub package_memory_mib: u64,
    /// Serve the admin routes (/healthz, /readyz, /metrics, the live
    /// /campaign page and the control routes /faults, /downloads,
    /// /packages/rescan) on this address, its own listener (port 0 = any
    /// free port) [default: off].
    #[arg(long, env = "QFOTA_ADMIN", value_name = "ADDR:PORT")]
    pub admin: Option<SocketAddr>,
    /// Network (CIDR or IP) besides loopback allowed to use the admin
    /// control routes and the campaign, repeatable (env: comma-separated).
    #[arg(long = "admin-allow", env = "QFOTA_ADMIN_ALLOW", value_name = "CIDR", value_parser = parse_net, value_delimiter = ',')]
    pub admin_allow: Vec<IpNet>,
    /// Write one JSON object (bound ports, URLs per package, PID, log) to
    /// FILE once ready, atomically; `-` = one line on stdout (the banner
    /// then goes to stderr).
    #[arg(long, env = "QFOTA_READY_JSON", value_name = "FILE|-")]
    pub ready_json: Option<PathBuf>,
    /// Object store and replica flags.
    #[command(flatten)]
    pub replica: crate::cli::s3::ReplicaArgs,
}

/// An IP network `a.b.c.d/n` or a single address.
fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?}: expected an IP address or CIDR network (192.0.2.0/24)"))
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
            .stall_timeout(Duration::from_secs(self.stall_timeout_secs.max(1)))
            .max_connections(self.max_connections)
            .max_connections_per_ip(self.max_connections_per_ip)
            .ftp_idle_timeout(Duration::from_secs(self.ftp_idle_secs.max(1)))
            .login_timeout(Duration::from_secs(self.login_timeout_secs.max(1)))
            .package_memory(self.package_memory_mib.saturating_mul(1 << 20));
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

/// Descriptors besides connections: listeners, the log, the package
/// folder's watch, netlink, the runtime, and the file twins of resident
/// packages (one each; [`crate::catalog::twin`]) for a few dozen packages.
const FDS_BESIDES: u64 = 64;

/// Raises the descriptor limit ([`crate::cli::raise_fd_limit`]; a
/// shell's soft limit is often 1,024, far below `--max-connections`'
/// 10,000) and warns when even that cannot hold `max_connections`
/// connections. Each connection holds one descriptor; an FTP session two
/// (the command-line cap's duplicate), three while a data connection is
/// open, four while a resident package goes out on it (the handle
/// `sendfile` writes to).
fn raise_fd_limit(max_connections: usize) {
    let Some(limit) = crate::cli::raise_fd_limit() else {
        return;
    };
    let need = max_connections as u64 + FDS_BESIDES;
    if limit < need {
        tracing::warn!(
            limit,
            need,
            "the file descriptor limit cannot hold --max-connections connections \
             (an FTP session needs 2, up to 4 while downloading); raise it (ulimit -n, LimitNOFILE=) \
             or lower --max-connections"
        );
    }
}

/// Runs `qfota-serve [OPTIONS] <DIR>`: starts the admin listener (when
/// `--admin`), then the server; once its object store (if any) has been
/// reached, marks the admin listener ready, writes `--ready-json`, prints
/// the banner and notifies systemd; serves until `shutdown` resolves,
/// reopening the download log on each `SIGHUP` (logrotate's
/// `postrotate`), then lets in-flight downloads finish (`--grace-secs`)
/// and writes the queued download records.
///
/// # Errors
/// The server cannot start (port in use, unreadable folder), the ready
/// file cannot be written, or `SIGHUP` cannot be caught: exit 1.
pub async fn run(args: ServeArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<ExitCode> {
    if let Some(target) = &args.ready_json {
        ready::clear(target).with_context(|| format!("ready file {}", target.display()))?;
    }
    // Caught before the banner, so a SIGHUP never finds the default action
    // (terminate) once the server is up.
    let mut hangup = signal(SignalKind::hangup()).context("cannot catch SIGHUP")?;
    raise_fd_limit(args.max_connections);
    let admin = start_admin(&args).await?;
    let builder = args
        .replica
        .apply(args.dir.as_deref(), args.to_builder())
        .context("package location")?;
    tokio::pin!(shutdown);
    // Start-up can take long (an object store's first listing, fetching
    // and validating its packages): SIGTERM stops it too.
    let server = tokio::select! {
        started = builder.start() => started.context("cannot start")?,
        () = &mut shutdown => {
            tracing::info!("stopped while starting");
            if let Some(admin) = admin {
                admin.set_stopping();
                admin.shutdown().await;
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    let admin_addr = admin.as_ref().map(Admin::local_addr);
    // An object store unreachable at start-up: not ready (no ready file,
    // no systemd notification, control routes 503) until a listing
    // succeeds; the server already answers, with an empty catalog.
    let control = server.control();
    if let Some(admin) = &admin {
        admin.set_waiting(control.clone());
    }
    let reached = async {
        while matches!(
            control.catalog().source_health(),
            SourceHealth::NotReached(_)
        ) {
            tokio::time::sleep(STORE_READY_POLL).await;
        }
    };
    let stopped_early = tokio::select! {
        () = reached => false,
        () = &mut shutdown => true,
    };
    if stopped_early {
        return stop(server, admin).await;
    }
    if let Some(admin) = &admin {
        admin.set_ready(control);
    }
    let mut text = banner(&server, &args.log);
    if let Some(addr) = admin_addr {
        text.push_str(&format!(
            "\nadmin listening on {addr} (/healthz /readyz /metrics /campaign /faults /downloads /packages/rescan)\n"
        ));
    }
    match &args.ready_json {
        Some(target) => {
            let value = ServeReady::of(&server, args.bind, admin_addr, Some(&args.log));
            ready::write(target, &value)
                .with_context(|| format!("ready file {}", target.display()))?;
            if ready::is_stdout(target) {
                err!("{text}");
            } else {
                out!("{text}");
            }
        }
        None => out!("{text}"),
    }
    // systemd `Type=notify`: ready once every listener is bound; a no-op
    // without NOTIFY_SOCKET.
    if let Err(err) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %err, "cannot notify systemd of readiness");
    }
    let reopen_on_hangup = async {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reopening the download log");
            server.reopen_log();
        }
    };
    tokio::select! {
        () = &mut shutdown => {}
        () = reopen_on_hangup => {}
    }
    stop(server, admin).await
}

/// How often a server whose object store was unreachable at start-up
/// looks whether a listing has succeeded since (the catalog retries it
/// itself, after 1 s, doubling up to `--rescan-secs`).
const STORE_READY_POLL: Duration = Duration::from_millis(200);

/// Shuts the server down (in-flight downloads get `--grace-secs`), then
/// the admin listener.
async fn stop(server: Server, admin: Option<Admin>) -> anyhow::Result<ExitCode> {
    tracing::info!("shutting down");
    if let Some(admin) = &admin {
        admin.set_stopping();
    }
    server.shutdown().await;
    if let Some(admin) = admin {
        admin.shutdown().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Binds and starts the admin listener when `--admin` is given; it answers
/// `/readyz` 503 until the server is up.
async fn start_admin(args: &ServeArgs) -> anyhow::Result<Option<Admin>> {
    let Some(addr) = args.admin else {
        return Ok(None);
    };
    // Bound first, it would take a package port and leave that listener
    // to fail with a message about itself.
    let overlaps =
        addr.ip().is_unspecified() || args.bind.is_unspecified() || addr.ip() == args.bind;
    for (name, port) in [
        ("--ftp", args.ftp),
        ("--http", args.http),
        ("--https", args.https),
    ] {
        if overlaps && addr.port() != 0 && port == Some(addr.port()) {
            anyhow::bail!(
                "--admin {addr}: port {} is also {name}'s; give the admin listener a port of its own",
                addr.port()
            );
        }
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for admin on {addr}"))?;
    let admin = Admin::start(listener, args.admin_allow.clone())
        .with_context(|| format!("admin listener on {addr}"))?;
    Ok(Some(admin))
}

//! The server: FTP, HTTP and HTTPS listeners over one catalog and one
//! download log, with one shutdown source fanned out to all of them.
//!
//! [`Server::builder`] binds the listeners (port 0 = any free port), opens
//! the [`FsCatalog`] with the URLs modules will be given, starts the
//! catalog watcher and the front-ends ([`http`], [`ftp`]), and returns a
//! [`Server`] handle that reports bound addresses, ready-made module URLs
//! and the download records, and shuts everything down (also on drop).

pub mod delivery;
pub mod fault;
pub mod ftp;
pub mod http;
pub mod limits;
pub mod listing;
pub mod logins;
pub mod metrics;
pub mod range;
pub mod stall;
pub mod tls;
pub mod zerocopy;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::s3::{S3Catalog, S3Config};
use crate::catalog::validate::{Advertised, FtpCredentials};
use crate::catalog::{Catalog, FsCatalog, Lookup, Package};
use crate::dlog::{DownloadLog, DownloadRecord, Outcome, Protocol};
use fault::{FaultRule, FaultSet};
use tls::TlsSource;
use tokio_rustls::TlsAcceptor;

/// State every front-end shares. Its `Debug` is short: libunftp formats
/// each command's context (which reaches this) into its log spans.
pub(crate) struct Shared {
    pub(crate) catalog: Arc<dyn Catalog>,
    pub(crate) log: DownloadLog,
    pub(crate) allow_invalid: bool,
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the shutdown grace period is over: every connection
    /// still open is closed, and its download recorded as cut short by the
    /// shutdown.
    pub(crate) closing: CancellationToken,
    /// One token per FTP transfer in flight and one task per record still
    /// to be written; shutdown waits for them (HTTP responses are waited
    /// for by hyper's graceful shutdown).
    pub(crate) transfers: TaskTracker,
    /// Fault rules, replaceable at run time.
    pub(crate) faults: Arc<FaultSet>,
    /// Longest a transfer may make no progress (also ends `stall-after`).
    pub(crate) stall_timeout: Duration,
    /// Connection limits of the package listeners.
    pub(crate) limits: Arc<limits::ConnLimits>,
    /// Failed FTP logins by address (delays after repeated failures).
    pub(crate) logins: logins::LoginGuard,
    /// Prometheus metrics (`/metrics` on the admin listener).
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// What modules are told (host, ports, FTP account): the listing
    /// page's URLs.
    pub(crate) advertised: Advertised,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("catalog", &self.catalog.location())
            .field("allow_invalid", &self.allow_invalid)
            .field("shutdown", &self.shutdown.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// The next connection on `listener`, or `None` once shutdown starts.
/// Accept errors (EMFILE and friends) are logged and retried after a short
/// back-off instead of spinning. The one place every listener accepts:
/// with `limited` (the package listeners), a connection over a limit of
/// [`limits`] is answered and closed here, and an accepted one comes with
/// the [`limits::Permit`] it must hold while open.
pub(crate) async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    protocol: &'static str,
    limited: Option<(&Shared, Protocol)>,
) -> Option<(tokio::net::TcpStream, SocketAddr, Option<limits::Permit>)> {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    warn_accept_failed(&err, protocol);
                    if let Some((shared, proto)) = limited
                        && out_of_descriptors(&err)
                    {
                        answer_on_spare(listener, shared, proto);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some((shared, proto)) = limited else {
            return Some((tcp, peer, None));
        };
        shared.limits.restore_spare();
        match shared.limits.acquire(peer.ip()) {
            Ok(permit) => return Some((tcp, peer, Some(permit))),
            Err(hit) => refuse_over_limit(shared, tcp, peer, proto, hit),
        }
    }
}

/// Logs a failed accept; out of descriptors, accept fails every retry
/// (100 ms) until one frees up, so that is logged at most every 10 s.
fn warn_accept_failed(err: &std::io::Error, protocol: &'static str) {
    static LAST_EXHAUSTED: std::sync::Mutex<Option<std::time::Instant>> =
        std::sync::Mutex::new(None);
    if out_of_descriptors(err) {
        let mut last = LAST_EXHAUSTED.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(10)) {
            return;
        }
        *last = Some(std::time::Instant::now());
    }
    tracing::warn!(error = %err, protocol, "accept failed");
}

/// Whether `err` is the process (`EMFILE`) or the system (`ENFILE`) being
/// out of file descriptors.
pub(crate) fn out_of_descriptors(err: &std::io::Error) -> bool {
    let code = err.raw_os_error();
    use rustix::io::Errno;
    code == Some(Errno::MFILE.raw_os_error()) || code == Some(Errno::NFILE.raw_os_error())
}

/// Locks `m`, also after a panic elsewhere poisoned it: what the serving
/// code keeps under its locks (counters, lists of connections, marks) is
/// consistent after every single update.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Out of descriptors with a connection waiting in the backlog: closes the
/// spare descriptor, accepts the connection on the one it frees and answers
/// it as over a limit ([`limits::LimitHit::Descriptors`], which opens the
/// spare again once the connection is closed).
///
/// `accept(2)` reports `EMFILE` before it looks at the backlog, so the
/// error alone does not mean a client waits: with none waiting the spare
/// stays open, else the next open anywhere in the process (a session's
/// `dup`, a netlink socket) would take its place for good. Spare, accept
/// and answer happen without yielding, so no other task of this process
/// runs in between; a thread that still takes the freed descriptor leaves
/// the spare closed until [`limits::ConnLimits::restore_spare`] succeeds
/// when a connection next ends or is accepted.
fn answer_on_spare(listener: &TcpListener, shared: &Shared, protocol: Protocol) {
    if !connection_waiting(listener) {
        return;
    }
    if !shared.limits.release_spare() {
        shared.limits.restore_spare();
        return;
    }
    let accepted = socket2::SockRef::from(listener)
        .accept()
        .and_then(|(socket, addr)| {
            socket.set_nonblocking(true)?;
            let peer = addr.as_socket().ok_or(std::io::ErrorKind::InvalidData)?;
            Ok((tokio::net::TcpStream::from_std(socket.into())?, peer))
        });
    match accepted {
        Ok((tcp, peer)) => {
            refuse_over_limit(shared, tcp, peer, protocol, limits::LimitHit::Descriptors);
        }
        Err(_) => shared.limits.restore_spare(),
    }
}

/// Whether a connection waits in `listener`'s backlog (`poll(2)` reports
/// a listening socket readable then), without accepting it.
fn connection_waiting(listener: &TcpListener) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(listener, PollFlags::IN)];
    // A zero timeout: look, do not wait.
    poll(&mut fds, Some(&Timespec::default())).is_ok_and(|ready| ready > 0)
}

/// Counts and logs a connection over `hit`, and answers and closes it in
/// the background ([`limits::refuse`]).
fn refuse_over_limit(
    shared: &Shared,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    protocol: Protocol,
    hit: limits::LimitHit,
) {
    tracing::info!(%peer, protocol = protocol.as_str(), ?hit, "connection refused: over a limit");
    shared.metrics.refused_connection();
    tokio::spawn(limits::refuse(
        tcp,
        peer,
        protocol,
        hit,
        Arc::clone(&shared.limits),
        shared.log.clone(),
    ));
}

/// Whether a catalog key may be served, and if not, what to log.
#[derive(Debug)]
pub(crate) enum Access {
    Serve(Arc<Package>),
    Refuse {
        outcome: Outcome,
        reason: String,
        package: Option<Arc<Package>>,
        /// The refusal is temporary (the package is being validated):
        /// HTTP `503` with `Retry-After`, FTP `450`.
        retry: bool,
    },
}

impl Shared {
    /// The HTML listing page of the packages under `folder` ([`listing`]).
    pub(crate) fn listing(&self, folder: &str) -> String {
        let packages = self.catalog.packages();
        listing::render(&packages, &self.advertised, folder, self.allow_invalid)
    }

    /// The one place that decides what is served (both protocols).
    pub(crate) fn resolve(&self, key: &str) -> Access {
        match self.catalog.lookup(key) {
            Lookup::Package(p) if p.is_valid() || self.allow_invalid => Access::Serve(p),
            Lookup::Package(p) => Access::Refuse {
                outcome: Outcome::InvalidPackage,
                reason: format!("invalid package: {}", p.problems.join("; ")),
                package: Some(p),
                retry: false,
            },
            Lookup::Directory => Access::Refuse {
                outcome: Outcome::NotFound,
                reason: "is a folder, not a package".into(),
                package: None,
                retry: false,
            },
            Lookup::Excluded(why) => Access::Refuse {
                outcome: Outcome::Refused,
                reason: format!("not served: {why}"),
                package: None,
                retry: false,
            },
            Lookup::Missing => Access::Refuse {
                outcome: Outcome::NotFound,
                reason: "no such package".into(),
                package: None,
                retry: false,
            },
            Lookup::Validating => Access::Refuse {
                outcome: Outcome::Refused,
                reason: "package being validated (new or changed): try again shortly".into(),
                package: None,
                retry: true,
            },
        }
    }
}

/// Checks `--public-host`: an IP address or a DNS name (RFC 1123 labels of
/// letters, digits and `-`, at most 63 bytes each, 253 in all) — what goes
/// into module URLs and FTP `PASV` replies. `Err` says what is wrong: empty,
/// a scheme, a port, a path, spaces or other URL characters.
pub fn check_public_host(host: &str) -> Result<(), String> {
    if host.trim().is_empty() {
        return Err("the public host is empty".into());
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let bad = |why: &str| {
        Err(format!(
            "public host {host:?}: {why} (give an IP address or a DNS name)"
        ))
    };
    if host.contains("://") {
        return bad("no scheme");
    }
    if host.contains(':') {
        return bad("no port (the ports come from --ftp/--http/--https)");
    }
    if host.len() > 253 {
        return bad("longer than 253 bytes");
    }
    let labels_ok = host.trim_end_matches('.').split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if !labels_ok {
        return bad("only letters, digits, '-' and '.' in non-empty labels");
    }
    Ok(())
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// No protocol enabled.
    #[error("enable at least one of FTP, HTTP, HTTPS")]
    NoProtocol,
    /// A setting that cannot work (empty passive range, empty host).
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot listen for {protocol} on {addr}: {source}")]
    Bind {
        /// `ftp`, `http` or `https`.
        protocol: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The package folder cannot be read.
    #[error("cannot read package folder {path}: {source}")]
    Packages {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The download log cannot be opened.
    #[error("cannot open download log {path}: {source}")]
    Log {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The fault file cannot be read or holds a malformed rule.
    #[error("fault file {path}: {problem}")]
    Faults {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// HTTPS identity could not be loaded or generated.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The object store cannot be used (credentials, bucket, cache).
    #[error(transparent)]
    Store(#[from] crate::catalog::s3::S3Error),
}

/// Configures and starts a [`Server`]. Defaults: bind 127.0.0.1, no
/// protocol, passive ports 50000–50100, anonymous FTP, log in memory only,
/// certs folder `certs`, grace period 10 s, stall timeout 120 s.
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    packages: PathBuf,
    bind: IpAddr,
    public_host: Option<String>,
    ftp: Option<u16>,
    http: Option<u16>,
    https: Option<u16>,
    users: Vec<(String, String)>,
    passive_ports: RangeInclusive<u16>,
    tls_files: Option<(PathBuf, PathBuf)>,
    certs_dir: PathBuf,
    log_file: Option<PathBuf>,
    allow_invalid: bool,
    grace: Duration,
    stall: Duration,
    max_connections: usize,
    max_connections_per_ip: usize,
    ftp_idle: Duration,
    login_timeout: Duration,
    data_timeout: Duration,
    package_memory: u64,
    header_read_timeout: Duration,
    tls_handshake_timeout: Duration,
    faults: Vec<FaultRule>,
    fault_seed: u64,
    fault_file: Option<PathBuf>,
    catalog: Option<Arc<dyn Catalog>>,
    s3: Option<S3Config>,
    instance_id: Option<String>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            packages: PathBuf::from("packages"),
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            public_host: None,
            ftp: None,
            http: None,
            https: None,
            users: Vec::new(),
            passive_ports: 50000..=50100,
            tls_files: None,
            certs_dir: PathBuf::from("certs"),
            log_file: None,
            allow_invalid: false,
            grace: Duration::from_secs(10),
            stall: Duration::from_secs(120),
            max_connections: limits::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: limits::DEFAULT_MAX_CONNECTIONS_PER_IP,
            ftp_idle: Duration::from_secs(120),
            login_timeout: Duration::from_secs(30),
            data_timeout: ftp::PASSIVE_ACCEPT_TIMEOUT,
            package_memory: crate::catalog::RESIDENT_TOTAL,
            header_read_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(30),
            faults: Vec::new(),
            fault_seed: 0,
            fault_file: None,
            catalog: None,
            s3: None,
            instance_id: None,
        }
    }
}

impl ServerBuilder {
    /// The package folder to serve.
    pub fn packages(mut self, dir: impl Into<PathBuf>) -> Self {
        self.packages = dir.into();
        self
    }
    /// Serves from `catalog` instead of scanning [`ServerBuilder::packages`]
    /// (e.g. a [`MemCatalog`](crate::catalog::MemCatalog)). Its per-profile
    /// verdicts are the ones it computed for its own
    /// [`Advertised`]; [`Catalog::watch`] runs until shutdown.
    pub fn catalog(mut self, catalog: Arc<dyn Catalog>) -> Self {
        self.catalog = Some(catalog);
        self
    }
    /// Serves the packages of an object store ([`S3Catalog`]) instead of
    /// a folder; it is opened with the URLs this server advertises.
    pub fn s3(mut self, config: S3Config) -> Self {
        self.s3 = Some(config);
        self
    }
    /// Name of this replica, written in every download record
    /// (`instance`), so merged logs of several replicas tell them apart.
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }
    /// Address to listen on (all three protocols).
    pub fn bind(mut self, addr: IpAddr) -> Self {
        self.bind = addr;
        self
    }
    /// Host put in `PASV` replies and module URLs. Default: the bind
    /// address if concrete, else the first non-loopback IPv4 address.
    pub fn public_host(mut self, host: impl Into<String>) -> Self {
        self.public_host = Some(host.into());
        self
    }
    /// Enables FTP on `port` (0 = any free port).
    pub fn ftp(mut self, port: u16) -> Self {
        self.ftp = Some(port);
        self
    }
    /// Enables HTTP on `port` (0 = any free port).
    pub fn http(mut self, port: u16) -> Self {
        self.http = Some(port);
        self
    }
    /// Enables HTTPS on `port` (0 = any free port).
    pub fn https(mut self, port: u16) -> Self {
        self.https = Some(port);
        self
    }
    /// Adds an FTP account; the first one goes into printed FTP URLs.
    /// Without any, FTP accepts every login.
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.users.push((name.into(), password.into()));
        self
    }
    /// Ports offered in `PASV`/`EPSV` replies.
    pub fn passive_ports(mut self, range: RangeInclusive<u16>) -> Self {
        self.passive_ports = range;
        self
    }
    /// HTTPS certificate chain and key (PEM) instead of a generated one.
    pub fn tls_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_files = Some((cert.into(), key.into()));
        self
    }
    /// Where the generated certificate is kept.
    pub fn certs_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.certs_dir = dir.into();
        self
    }
    /// Appends download records as JSON lines to this file.
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_file = Some(path.into());
        self
    }
    /// Serves packages that fail validation (to test module error paths).
    pub fn allow_invalid(mut self, yes: bool) -> Self {
        self.allow_invalid = yes;
        self
    }
    /// How long in-flight downloads may finish after shutdown starts.
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
    /// Longest a write to a client may make no progress before the
    /// transfer is aborted.
    pub fn stall_timeout(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    /// Most connections open at once over all package listeners
    /// (`--max-connections`, default
    /// [`limits::DEFAULT_MAX_CONNECTIONS`]).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Most connections open at once from one address
    /// (`--max-connections-per-ip`, default
    /// [`limits::DEFAULT_MAX_CONNECTIONS_PER_IP`]).
    pub fn max_connections_per_ip(mut self, n: usize) -> Self {
        self.max_connections_per_ip = n;
        self
    }

    /// How long an FTP control connection may stay idle after login
    /// (`--ftp-idle-secs`, default 120 s; whole seconds).
    pub fn ftp_idle_timeout(mut self, idle: Duration) -> Self {
        self.ftp_idle = idle;
        self
    }

    /// How long an FTP control connection may take to log in
    /// (`--login-timeout-secs`, default 30 s); it is closed then.
    pub fn login_timeout(mut self, timeout: Duration) -> Self {
        self.login_timeout = timeout;
        self
    }

    /// How long an FTP data command (`RETR`, `LIST`…) answered `150` waits
    /// for its data connection before the client is told `425` (and a
    /// `RETR` recorded as `aborted`). At most, and by default,
    /// [`ftp::PASSIVE_ACCEPT_TIMEOUT`] (15 s): libunftp stops listening then.
    pub fn data_connection_timeout(mut self, timeout: Duration) -> Self {
        self.data_timeout = timeout.min(ftp::PASSIVE_ACCEPT_TIMEOUT);
        self
    }

    /// Memory for resident copies of valid packages, in bytes
    /// (`--package-memory-mib`, default 1 GiB): each package of at most
    /// 256 MiB is held once, validated, and every download slices it (no
    /// per-connection reads or buffers, one version per download even if
    /// the file changes). 0 reads every download from its file.
    pub fn package_memory(mut self, bytes: u64) -> Self {
        self.package_memory = bytes;
        self
    }

    /// Adds a fault rule (see [`fault`]); rules apply in the order added.
    pub fn fault(mut self, rule: FaultRule) -> Self {
        self.faults.push(rule);
        self
    }
    /// Seed of the generator behind `rate=` matchers (repeatable runs).
    pub fn fault_seed(mut self, seed: u64) -> Self {
        self.fault_seed = seed;
        self
    }
    /// A TOML fault file (see [`fault::parse_fault_file`]), read at start
    /// and its rules re-read whenever it changes (its `seed` is read at
    /// start only); its rules come after those added with
    /// [`ServerBuilder::fault`].
    pub fn fault_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.fault_file = Some(path.into());
        self
    }

    /// Longest time to receive an HTTP request's headers (default 30 s).
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }
    /// Longest time for a TLS handshake (default 30 s).
    pub fn tls_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.tls_handshake_timeout = timeout;
        self
    }

    /// Binds the listeners, scans the packages and starts serving: validate
    /// the settings → bind the listeners → open the catalog → open the log
    /// → set up TLS → load the fault rules → spawn the tasks.
    ///
    /// # Errors
    /// [`ServeError`]: no protocol, a port in use, an unreadable package
    /// folder or log file, or a TLS identity that cannot be loaded/made.
    pub async fn start(self) -> Result<Server, ServeError> {
        self.validate()?;
        let listeners = self.bind_listeners().await?;
        let addrs = listeners.addrs();
        let public_host = self
            .public_host
            .clone()
            .unwrap_or_else(|| default_public_host(self.bind));
        let advertised = self.advertised(&public_host, &addrs);
        let catalog = self.open_catalog(advertised.clone()).await?;
        let log = self.open_log()?;
        let tls = self.tls_acceptor(&listeners, &public_host).await?;
        let (faults, file_stamp) = self.load_faults()?;
        let shared = Arc::new(Shared {
            catalog: Arc::clone(&catalog),
            log,
            allow_invalid: self.allow_invalid,
            shutdown: CancellationToken::new(),
            closing: CancellationToken::new(),
            transfers: TaskTracker::new(),
            faults,
            stall_timeout: self.stall,
            limits: limits::ConnLimits::new(self.max_connections, self.max_connections_per_ip),
            logins: logins::LoginGuard::default(),
            metrics: metrics::Metrics::new(),
            advertised: advertised.clone(),
        });
        shared.faults.count_into(shared.metrics.fault_counter());
        let mut tasks = vec![
            tokio::spawn(Arc::clone(&catalog).watch(shared.shutdown.clone())),
            tokio::spawn(
                Arc::clone(&shared.metrics).follow(shared.log.subscribe(), shared.shutdown.clone()),
            ),
        ];
        if let Some(path) = self.fault_file.clone() {
            tasks.push(tokio::spawn(fault::file::watch(
                path,
                file_stamp,
                self.faults.clone(),
                Arc::clone(&shared.faults),
                shared.shutdown.clone(),
            )));
        }
        tasks.extend(self.spawn_front_ends(listeners, tls, &shared));
        Ok(Server {
            addrs,
            advertised,
            catalog,
            shared,
            tasks,
            grace: self.grace,
        })
    }

    /// Refuses settings that cannot work: no protocol, an empty or
    /// port-0 passive range, or one holding a listener's port, a blank
    /// public host.
    fn validate(&self) -> Result<(), ServeError> {
        if self.ftp.is_none() && self.http.is_none() && self.https.is_none() {
            return Err(ServeError::NoProtocol);
        }
        if self.passive_ports.is_empty() || *self.passive_ports.start() == 0 {
            return Err(ServeError::Config(format!(
                "passive ports {}-{}: need 1 <= first <= last",
                self.passive_ports.start(),
                self.passive_ports.end()
            )));
        }
        if let Some(host) = &self.public_host {
            check_public_host(host).map_err(ServeError::Config)?;
        }
        // A passive port that is also a listener's would be refused at
        // some PASV only, long after start-up.
        if self.ftp.is_some() {
            let listeners = [
                ("ftp", self.ftp),
                ("http", self.http),
                ("https", self.https),
            ];
            for (name, port) in listeners {
                if let Some(port) = port.filter(|p| *p != 0 && self.passive_ports.contains(p)) {
                    return Err(ServeError::Config(format!(
                        "passive ports {}-{} include the {name} port {port}",
                        self.passive_ports.start(),
                        self.passive_ports.end()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Binds a listener for every protocol that is on.
    async fn bind_listeners(&self) -> Result<Listeners, ServeError> {
        Ok(Listeners {
            ftp: bind_ftp(self.bind, self.ftp).await?,
            http: bind(self.bind, "http", self.http).await?,
            https: bind(self.bind, "https", self.https).await?,
        })
    }

    /// What modules are told: the public host, the bound ports and the
    /// first FTP account.
    fn advertised(&self, public_host: &str, addrs: &Addrs) -> Advertised {
        let port = |a: Option<SocketAddr>| a.map(|a| a.port());
        Advertised {
            host: public_host.to_string(),
            ftp: port(addrs.ftp),
            http: port(addrs.http),
            https: port(addrs.https),
            ftp_credentials: self.users.first().map(|(u, p)| FtpCredentials {
                user: u.clone(),
                password: p.clone(),
            }),
        }
    }

    /// Scans and validates the package folder.
    async fn open_catalog(&self, advertised: Advertised) -> Result<Arc<dyn Catalog>, ServeError> {
        if let Some(catalog) = &self.catalog {
            return Ok(Arc::clone(catalog));
        }
        if let Some(config) = &self.s3 {
            let config = S3Config {
                package_memory: self.package_memory,
                ..config.clone()
            };
            return Ok(S3Catalog::open(config, advertised).await?);
        }
        let catalog = FsCatalog::open_with_memory(&self.packages, advertised, self.package_memory)
            .await
            .map_err(|source| ServeError::Packages {
                path: self.packages.clone(),
                source,
            })?;
        Ok(catalog)
    }

    /// The download log: the `--log` file, else memory only.
    fn open_log(&self) -> Result<DownloadLog, ServeError> {
        match &self.log_file {
            Some(path) => DownloadLog::to_file(path).map_err(|source| ServeError::Log {
                path: path.clone(),
                source,
            }),
            None => Ok(DownloadLog::in_memory()),
        }
        .map(|log| log.with_instance(self.instance_id.as_deref()))
    }

    /// The HTTPS identity, when HTTPS is on: the given PEM files, else the
    /// certificate generated (once) in the certs folder for `public_host`.
    async fn tls_acceptor(
        &self,
        listeners: &Listeners,
        public_host: &str,
    ) -> Result<Option<TlsAcceptor>, ServeError> {
        if listeners.https.is_none() {
            return Ok(None);
        }
        let source = match &self.tls_files {
            Some((cert, key)) => TlsSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            None => TlsSource::Generated {
                dir: self.certs_dir.clone(),
                hosts: vec![public_host.to_string()],
            },
        };
        Ok(Some(tls::acceptor(source).await?))
    }

    /// The rule set: the rules added here, then the fault file's (whose
    /// `seed` wins over [`ServerBuilder::fault_seed`]); with the file's
    /// stamp, so the watcher knows the version it started from.
    fn load_faults(&self) -> Result<(Arc<FaultSet>, fault::file::Stamp), ServeError> {
        let (file_rules, seed, stamp) = match &self.fault_file {
            Some(path) => fault::file::read(path).map_err(|problem| ServeError::Faults {
                path: path.clone(),
                problem,
            })?,
            None => (Vec::new(), None, None),
        };
        let rules = self.faults.iter().cloned().chain(file_rules).collect();
        let set = FaultSet::new(rules, seed.unwrap_or(self.fault_seed));
        Ok((Arc::new(set), stamp))
    }

    /// Starts the FTP, HTTP and HTTPS front-ends on their listeners.
    fn spawn_front_ends(
        &self,
        listeners: Listeners,
        tls: Option<TlsAcceptor>,
        shared: &Arc<Shared>,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        if !listeners.ftp.is_empty() {
            let opts = ftp::FtpOptions {
                users: self.users.clone(),
                passive_ports: self.passive_ports.clone(),
                passive_host: self.public_host.clone(),
                idle_timeout_secs: self.ftp_idle.as_secs().max(1),
                login_timeout: self.login_timeout,
                data_timeout: self.data_timeout,
                stall: self.stall,
            };
            let ftp = listeners.ftp;
            tasks.push(tokio::spawn(ftp::run(ftp, Arc::clone(shared), opts)));
        }
        let timeouts = http::HttpTimeouts {
            header_read: self.header_read_timeout,
            tls_handshake: self.tls_handshake_timeout,
            stall: self.stall,
        };
        let https = listeners.https.map(|l| (l, tls));
        for (listener, tls) in listeners.http.map(|l| (l, None)).into_iter().chain(https) {
            let shared = Arc::clone(shared);
            tasks.push(tokio::spawn(http::run(listener, tls, shared, timeouts)));
        }
        tasks
    }
}

/// A listener on `addr:port` when the protocol is on (`port` is `Some`).
async fn bind(
    addr: IpAddr,
    protocol: &'static str,
    port: Option<u16>,
) -> Result<Option<TcpListener>, ServeError> {
    let Some(port) = port else {
        return Ok(None);
    };
    listen(SocketAddr::new(addr, port), false)
        .map(Some)
        .map_err(|source| ServeError::Bind {
            protocol,
            addr: SocketAddr::new(addr, port),
            source,
        })
}

/// The FTP listeners when FTP is on: one on `addr:port`; for the IPv6
/// wildcard (`--bind ::`) an IPv6-only one and an IPv4 one on `0.0.0.0`
/// with the same port. libunftp answers `PASV` (RFC 959, IPv4 only) from
/// the control connection's local address and refuses an IPv6 one, which
/// an IPv4 client of a dual-stack socket has (`::ffff:a.b.c.d`): on an
/// IPv4 socket that client gets `PASV` as on `--bind 0.0.0.0`.
async fn bind_ftp(addr: IpAddr, port: Option<u16>) -> Result<Vec<TcpListener>, ServeError> {
    let Some(port) = port else {
        return Ok(Vec::new());
    };
    let failed = |addr: SocketAddr| {
        move |source| ServeError::Bind {
            protocol: "ftp",
            addr,
            source,
        }
    };
    let first = SocketAddr::new(addr, port);
    let dual = addr == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
    let listener = listen(first, dual).map_err(failed(first))?;
    if !dual {
        return Ok(vec![listener]);
    }
    // Port 0 became a real port: the IPv4 listener takes the same.
    let port = listener.local_addr().map_err(failed(first))?.port();
    let v4 = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port);
    let v4_listener = listen(v4, false).map_err(failed(v4))?;
    Ok(vec![listener, v4_listener])
}

/// A listening socket on `addr` (an IPv6 one takes IPv4 clients too unless
/// `v6_only`), with the accept backlog and `TCP_NOTSENT_LOWAT` every
/// listener gets.
fn listen(addr: SocketAddr, v6_only: bool) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std does: a restarted server binds while old connections of the
    // port sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    if addr.is_ipv6() {
        // Set either way: `net.ipv6.bindv6only` would otherwise decide
        // whether `::` also takes IPv4 clients.
        socket2::SockRef::from(&socket).set_only_v6(v6_only)?;
    }
    // Accepted connections inherit it.
    socket2::SockRef::from(&socket).set_tcp_notsent_lowat(NOTSENT_LOWAT)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Pending connections the kernel queues per listener before the accept
/// loop takes them (capped by `net.core.somaxconn`). std's default of 128
/// drops SYNs when a fleet of modules connects at once.
const LISTEN_BACKLOG: u32 = 4096;

/// Most bytes a connection's socket holds not yet sent (`TCP_NOTSENT_LOWAT`,
/// 16 KiB), set on every listener (passive data listeners included) and
/// inherited by the connections they accept. A write hands the kernel only
/// what the peer will take soon: a slow module's download is queued as it
/// goes instead of all at once when it starts (thousands of modules
/// starting together would otherwise have the kernel hold megabytes each),
/// and the server's writes, not the client's acknowledgements, send each
/// next part, which keeps hundreds of concurrent clients at even speeds
/// (`bench/compare.py` S3: 128 KiB gave fewer requests per second and a
/// longer tail). The stall guard's speed check then sets each connection's
/// own value: [`stall::SLOW_LOWAT`] for a module's slow link (fewer
/// wake-ups per byte), [`stall::FAST_LOWAT`] for a bulk client (large
/// writes).
pub(crate) const NOTSENT_LOWAT: u32 = 16 * 1024;

/// The bound listeners, one per protocol that is on.
struct Listeners {
    /// FTP's: none when FTP is off, two for `--bind ::` (`bind_ftp`).
    ftp: Vec<TcpListener>,
    http: Option<TcpListener>,
    https: Option<TcpListener>,
}

impl Listeners {
    /// The addresses actually bound (port 0 becomes a real port).
    fn addrs(&self) -> Addrs {
        let addr = |l: Option<&TcpListener>| l.and_then(|l| l.local_addr().ok());
        Addrs {
            // The first: the address asked for (`[::]` for both families).
            ftp: addr(self.ftp.first()),
            http: addr(self.http.as_ref()),
            https: addr(self.https.as_ref()),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Addrs {
    ftp: Option<SocketAddr>,
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
}

/// A running server. Dropping it starts shutdown; [`Server::shutdown`]
/// also waits for in-flight downloads (up to the grace period).
#[derive(Debug)]
pub struct Server {
    addrs: Addrs,
    advertised: Advertised,
    catalog: Arc<dyn Catalog>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    grace: Duration,
}

impl Server {
    /// A builder with the defaults of [`ServerBuilder`].
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Bound FTP control address, if FTP is on.
    pub fn ftp_addr(&self) -> Option<SocketAddr> {
        self.addrs.ftp
    }
    /// Bound HTTP address, if HTTP is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.addrs.http
    }
    /// Bound HTTPS address, if HTTPS is on.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.addrs.https
    }

    /// The host, ports and FTP credentials modules are given.
    pub fn advertised(&self) -> &Advertised {
        &self.advertised
    }

    /// `ftp://user:pass@host:port/<rel_path>` as a module would be sent it;
    /// `None` when FTP is off.
    pub fn ftp_url(&self, rel_path: &str) -> Option<String> {
        self.advertised.ftp_url(rel_path.trim_start_matches('/'))
    }
    /// `http://host:port/<rel_path>`; `None` when HTTP is off.
    pub fn http_url(&self, rel_path: &str) -> Option<String> {
        self.advertised.http_url(rel_path.trim_start_matches('/'))
    }
    /// `https://host:port/<rel_path>`; `None` when HTTPS is off.
    pub fn https_url(&self, rel_path: &str) -> Option<String> {
        self.advertised.https_url(rel_path.trim_start_matches('/'))
    }

    /// The catalog being served.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }

    /// The download records so far (the most recent 4,096), oldest first.
    pub fn downloads(&self) -> Vec<DownloadRecord> {
        self.shared.log.recent()
    }

    /// A receiver of every download record from now on: `recv().await`
    /// awaits the next one.
    pub fn subscribe(&self) -> broadcast::Receiver<DownloadRecord> {
        self.shared.log.subscribe()
    }

    /// The first download record matching `pred`, already emitted or
    /// emitted within `timeout`; `None` when none comes in time.
    pub async fn wait_download(
        &self,
        timeout: Duration,
        pred: impl Fn(&DownloadRecord) -> bool,
    ) -> Option<DownloadRecord> {
        // Subscribe before looking back, so nothing falls in between.
        let mut rx = self.subscribe();
        let wait = async {
            loop {
                if let Some(r) = self.downloads().into_iter().find(|r| pred(r)) {
                    return Some(r);
                }
                loop {
                    match rx.recv().await {
                        Ok(r) if pred(&r) => return Some(r),
                        Ok(_) => {}
                        // Fell behind: look at the ring again.
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// The fault rules in force.
    pub fn faults(&self) -> Vec<FaultRule> {
        self.shared.faults.rules()
    }

    /// Replaces the fault rules for attempts from now on (their `times`
    /// counters start again).
    pub fn set_faults(&self, rules: Vec<FaultRule>) {
        self.shared.faults.set(rules);
    }

    /// Re-scans the package folder now (instead of waiting for the next
    /// `SCAN_INTERVAL` tick) and returns when done.
    ///
    /// # Errors
    /// The folder can no longer be read.
    pub async fn rescan(&self) -> std::io::Result<()> {
        Arc::clone(&self.catalog).rescan_now().await
    }

    /// A cloneable handle on what can be changed or read while serving
    /// (fault rules, download records, re-scans) — what the admin
    /// listener's control routes ([`crate::admin`]) use.
    pub fn control(&self) -> ServerControl {
        ServerControl {
            shared: Arc::clone(&self.shared),
            catalog: Arc::clone(&self.catalog),
        }
    }

    /// Whether invalid packages are served all the same
    /// ([`ServerBuilder::allow_invalid`]).
    pub fn allows_invalid(&self) -> bool {
        self.shared.allow_invalid
    }

    /// Reopens the download log file at its path (logrotate's
    /// `postrotate`; the serve command calls it on `SIGHUP`).
    pub fn reopen_log(&self) {
        self.shared.log.reopen();
    }

    /// Stops accepting, lets in-flight downloads run for the grace period,
    /// then closes the connections still open (their downloads are
    /// recorded `aborted`, "then the server shut down"), writes every
    /// queued download record to the log file, and returns. Closing takes
    /// at most [`CLOSE_LIMIT`] past the grace period.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        self.shared.transfers.close();
        let tasks = std::mem::take(&mut self.tasks);
        let transfers = self.shared.transfers.clone();
        let drained = async move {
            for t in tasks {
                let _ = t.await;
            }
            transfers.wait().await;
        };
        tokio::pin!(drained);
        if tokio::time::timeout(self.grace, &mut drained)
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over: closing the downloads still running");
            self.shared.closing.cancel();
            if tokio::time::timeout(CLOSE_LIMIT, drained).await.is_err() {
                tracing::warn!(
                    "connections still open after closing; their records may be missing"
                );
            }
        }
        self.shared.log.flush().await;
    }
}

/// How long [`Server::shutdown`] waits, after the grace period, for the
/// connections it closes to end and their records to be written (an FTP
/// record waits up to 2 s for its data connection's last counters).
pub const CLOSE_LIMIT: Duration = Duration::from_secs(3);

/// Run-time control of a [`Server`], from [`Server::control`]: cheap to
/// clone, and usable from other tasks while the server runs. It does not
/// keep the server running: once the [`Server`] is shut down, changes
/// through it have no effect on serving.
#[derive(Debug, Clone)]
pub struct ServerControl {
    shared: Arc<Shared>,
    catalog: Arc<dyn Catalog>,
}

impl ServerControl {
    /// The host, ports and account modules are given (package URLs).
    pub fn advertised(&self) -> &Advertised {
        &self.shared.advertised
    }

    /// The Prometheus text exposition of the server's metrics (see
    /// [`metrics`]), with connections and packages as of now.
    pub fn metrics_text(&self) -> String {
        let packages = self.catalog.packages();
        let valid = packages.iter().filter(|p| p.is_valid()).count();
        self.shared.metrics.render(&metrics::Scrape {
            connections_open: self.shared.limits.open_count(),
            packages: (valid, packages.len() - valid),
            log: self.shared.log.health(),
            source_up: matches!(
                self.catalog.source_health(),
                crate::catalog::SourceHealth::Ok
            ),
        })
    }

    /// The fault rules in force.
    pub fn faults(&self) -> Vec<FaultRule> {
        self.shared.faults.rules()
    }
    /// Replaces the fault rules, like [`Server::set_faults`].
    pub fn set_faults(&self, rules: Vec<FaultRule>) {
        self.shared.faults.set(rules);
    }
    /// The download log (records with their sequence numbers:
    /// [`DownloadLog::since`]; new ones: [`DownloadLog::subscribe`]).
    pub fn log(&self) -> &DownloadLog {
        &self.shared.log
    }
    /// The catalog being served.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }
    /// Re-scans the package folder now, like [`Server::rescan`].
    ///
    /// # Errors
    /// The folder can no longer be read.
    pub async fn rescan(&self) -> std::io::Result<()> {
        Arc::clone(&self.catalog).rescan_now().await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

/// The bind address when it is concrete, else the first non-loopback IPv4
/// address of the machine, else `127.0.0.1`.
pub fn default_public_host(bind: IpAddr) -> String {
    if !bind.is_unspecified() {
        return bind.to_string();
    }
    if_addrs::get_if_addrs()
        .ok()
        .and_then(|ifs| {
            ifs.into_iter()
                .map(|i| i.ip())
                .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        })
        .map_or_else(|| "127.0.0.1".to_string(), |ip| ip.to_string())
}

/// Reads `dir` once and validates every package against `advertised`,
/// without serving (`qfota-serve check`): the packages, and the files that
/// could not be read, with why.
///
/// # Errors
/// The folder cannot be read.
pub async fn check_packages(
    dir: &Path,
    advertised: Advertised,
) -> std::io::Result<(Vec<Arc<Package>>, Vec<(String, String)>)> {
    // Nothing is served: no resident copies.
    let catalog = FsCatalog::open_with_memory(dir, advertised, 0).await?;
    Ok((catalog.packages(), catalog.unreadable()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_hosts_are_addresses_or_dns_names() {
        for ok in ["192.0.2.2", "::1", "fota.example.com", "my-host", "a.b.c."] {
            assert!(check_public_host(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", " ", "http://h", "h:21", "h/x", "a b", "-h", "h_1", "a..b", "h\"@\"",
        ] {
            assert!(check_public_host(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn settings_that_cannot_work_are_start_up_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bad_range = Server::builder()
            .packages(dir.path())
            .http(0)
            .passive_ports(RangeInclusive::new(60000, 50000))
            .start()
            .await
            .unwrap_err();
        assert!(matches!(bad_range, ServeError::Config(_)), "{bad_range}");
        let overlap = Server::builder()
            .packages(dir.path())
            .ftp(50010)
            .passive_ports(RangeInclusive::new(50000, 50100))
            .start()
            .await
            .unwrap_err();
        assert!(
            overlap.to_string().contains("include the ftp port 50010"),
            "{overlap}"
        );
        let empty_host = Server::builder()
            .packages(dir.path())
            .http(0)
            .public_host(" ")
            .start()
            .await
            .unwrap_err();
        assert!(matches!(empty_host, ServeError::Config(_)), "{empty_host}");
        let none = Server::builder()
            .packages(dir.path())
            .start()
            .await
            .unwrap_err();
        assert!(matches!(none, ServeError::NoProtocol));
    }
}

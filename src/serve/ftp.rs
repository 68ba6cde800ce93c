//! FTP front-end (libunftp + unftp-sbe-fs), read-only.
//!
//! libunftp's `DataListener` reports only finished `RETR`s and carries no
//! client address, so this module takes the two things it needs elsewhere:
//!
//! - **the peer address**: connections are accepted here and each one is
//!   handed to its own libunftp `Server::service`, built with an
//!   authenticator and storage back-end that share a per-connection
//!   [`FtpSession`] holding the peer `ip:port` and, after login, the user;
//! - **the bytes**: [`CatalogStorage`] wraps `unftp_sbe_fs::Filesystem` and
//!   overrides `get_into`, counting every byte written to the data
//!   connection, so a `RETR` that the client abandons part-way is logged as
//!   `aborted` with the exact count.
//!
//! Write commands (`STOR`, `APPE`, `DELE`, `MKD`, `RMD`, `RNTO`) reach the
//! storage back-end, which refuses them with 550 and logs them. `RNFR` is
//! answered by libunftp itself (350 when the file exists); the `RNTO` that
//! must follow is refused, so nothing is ever renamed.

use std::fmt::Debug;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use libunftp::options::PassiveHost;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use unftp_core::auth::{AuthenticationError, Authenticator, Credentials, DefaultUser, Principal};
use unftp_core::storage::{self, ErrorKind, Fileinfo, StorageBackend};
use unftp_sbe_fs::Filesystem;

use super::fault::{Action, Applied, AttemptInfo, FaultedReader};
use super::stall::StallGuard;
use super::{Access, Shared};
use crate::catalog::{Lookup, OpenError, Package, PackageReader, path};
use crate::dlog::{Attempt, DownloadRecord, Outcome, Protocol};

/// FTP listener settings.
#[derive(Debug, Clone)]
pub struct FtpOptions {
    /// Accepted `(user, password)` pairs; empty → any login is accepted.
    pub users: Vec<(String, String)>,
    /// Ports offered in `PASV`/`EPSV` replies.
    pub passive_ports: RangeInclusive<u16>,
    /// Host or IPv4 address advertised in `PASV` replies.
    pub passive_host: String,
    /// Seconds an idle control connection is kept.
    pub idle_timeout_secs: u64,
    /// Longest a data-connection write may make no progress.
    pub stall: Duration,
}

/// Per-connection state shared by the authenticator and storage back-end.
#[derive(Debug)]
pub struct FtpSession {
    peer: SocketAddr,
    user: Mutex<Option<String>>,
    shared: Arc<Shared>,
}

impl FtpSession {
    /// The first `ftp-reply` rule for a command accepted by `command`
    /// (and, for commands with one, the catalog key `path`).
    fn fault(&self, path: Option<&str>, command: impl Fn(&str) -> bool) -> Option<Applied> {
        self.select_fault(
            path,
            |a| matches!(a, Action::FtpReply { command: c, .. } if command(c)),
        )
    }

    fn select_fault(&self, path: Option<&str>, fits: impl Fn(&Action) -> bool) -> Option<Applied> {
        if self.shared.faults.is_empty() {
            return None;
        }
        let user = self.user();
        let info = AttemptInfo {
            protocol: Protocol::Ftp,
            peer: self.peer.ip(),
            user: user.as_deref(),
            path,
        };
        self.shared.faults.select(&info, fits)
    }

    /// Records a reply replaced by a fault rule and returns the storage
    /// error libunftp turns into that reply.
    fn fault_reply(&self, applied: &Applied, command: &str, path: &str) -> storage::Error {
        let code = match applied.action {
            Action::FtpReply { code, .. } => code,
            _ => 550,
        };
        self.record(
            &Attempt::start(Protocol::Ftp, self.peer, ""),
            path,
            None,
            0,
            0,
            code,
            Outcome::Refused,
            format!("fault: reply {code} to {command}"),
            Some(&applied.name),
        );
        storage::Error::from(error_kind_for(code))
    }

    fn user(&self) -> Option<String> {
        self.user.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        attempt: &Attempt,
        path: &str,
        package: Option<&Package>,
        range_start: u64,
        bytes_sent: u64,
        status: u16,
        outcome: Outcome,
        reason: String,
        fault: Option<&str>,
    ) {
        self.shared.log.emit(DownloadRecord {
            ts: attempt.ts(),
            duration_ms: attempt.elapsed_ms(),
            protocol: Protocol::Ftp,
            peer: self.peer,
            user: self.user(),
            path: path.to_string(),
            size: package.map(|p| p.size),
            sha256: package.map(|p| p.sha256.clone()),
            range_start,
            bytes_sent,
            status,
            outcome,
            reason,
            fault: fault.map(str::to_string),
        });
    }
}

/// Accepts FTP control connections until shutdown. Each connection gets its
/// own libunftp server instance bound to an [`FtpSession`].
pub(crate) async fn run(listener: TcpListener, shared: Arc<Shared>, opts: FtpOptions) {
    if opts.users.is_empty() {
        tracing::warn!("no --user given: FTP accepts any user name and password (read-only)");
    }
    let users = Arc::new(opts.users.clone());
    let passive_host = match opts.passive_host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => PassiveHost::Ip(v4),
        // PASV can only carry IPv4; for an IPv6 public host answer with the
        // control connection's address (EPSV carries no address at all).
        Ok(IpAddr::V6(_)) => PassiveHost::FromConnection,
        Err(_) => PassiveHost::Dns(opts.passive_host.clone()),
    };
    let tracker = TaskTracker::new();
    let shutdown = shared.shutdown.clone();
    while let Some((tcp, peer)) = super::accept(&listener, &shutdown, "ftp").await {
        let session = Arc::new(FtpSession {
            peer,
            user: Mutex::new(None),
            shared: Arc::clone(&shared),
        });
        if let Some(fault) = session.fault(None, |cmd| cmd == "CONNECT") {
            tracker.spawn(refuse_connection(tcp, Arc::clone(&session), fault));
            continue;
        }
        let storage_session = Arc::clone(&session);
        let root = shared.root.clone();
        let stall = opts.stall;
        let authenticator = Arc::new(SessionAuthenticator {
            session: Arc::clone(&session),
            users: Arc::clone(&users),
        });
        let server = libunftp::ServerBuilder::with_authenticator(
            Box::new(move || CatalogStorage::new(&root, Arc::clone(&storage_session), stall)),
            authenticator,
        )
        .greeting("qfota-serve FTP ready (read-only)")
        .passive_ports(opts.passive_ports.clone())
        .passive_host(passive_host.clone())
        .idle_session_timeout(opts.idle_timeout_secs)
        .binder(FaultBinder {
            session: Arc::clone(&session),
        })
        .build();
        let server = match server {
            Ok(s) => s,
            Err(err) => {
                tracing::error!(%peer, error = %err, "cannot set up FTP session");
                continue;
            }
        };
        tracker.spawn(async move {
            tracing::debug!(%peer, "FTP connection");
            if let Err(err) = server.service(tcp).await {
                tracing::debug!(%peer, error = %err, "FTP connection ended with an error");
            }
        });
    }
    tracker.close();
}

/// Answers a connection with a fault rule's reply instead of the greeting,
/// then closes it.
async fn refuse_connection(
    mut tcp: tokio::net::TcpStream,
    session: Arc<FtpSession>,
    fault: Applied,
) {
    let code = match fault.action {
        Action::FtpReply { code, .. } => code,
        _ => 421,
    };
    session.record(
        &Attempt::start(Protocol::Ftp, session.peer, ""),
        "",
        None,
        0,
        0,
        code,
        Outcome::Refused,
        format!("fault: reply {code} to the connection"),
        Some(&fault.name),
    );
    let line = format!("{code} Service not available (fault injected)\r\n");
    let _ = tcp.write_all(line.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

/// The libunftp storage error kind whose reply carries `code`
/// (`unftp_core::storage::ErrorKind`'s display strings).
fn error_kind_for(code: u16) -> ErrorKind {
    match code {
        426 => ErrorKind::ConnectionClosed,
        450 => ErrorKind::TransientFileNotAvailable,
        451 => ErrorKind::LocalError,
        452 => ErrorKind::InsufficientStorageSpaceError,
        502 => ErrorKind::CommandNotImplemented,
        551 => ErrorKind::PageTypeUnknown,
        552 => ErrorKind::ExceededStorageAllocationError,
        553 => ErrorKind::FileNameNotAllowedError,
        _ => ErrorKind::PermanentFileNotAvailable,
    }
}

/// Binds passive data ports like libunftp's default (a random port of the
/// range, a few tries), unless an `ftp-reply` rule for `PASV`/`EPSV`
/// matches, in which case binding fails and libunftp answers 425. The
/// binder cannot tell PASV from EPSV, so a rule naming either covers both.
#[derive(Debug)]
struct FaultBinder {
    session: Arc<FtpSession>,
}

#[async_trait]
impl libunftp::options::Binder for FaultBinder {
    async fn bind(
        &mut self,
        local_addr: IpAddr,
        passive_ports: RangeInclusive<u16>,
    ) -> io::Result<tokio::net::TcpSocket> {
        if let Some(fault) = self.session.fault(None, |c| c == "PASV" || c == "EPSV") {
            let _ = self.session.fault_reply(&fault, "PASV/EPSV", "");
            return Err(io::Error::other("fault: passive port refused"));
        }
        let span = u32::from(passive_ports.end() - passive_ports.start()) + 1;
        let mut last = io::Error::new(io::ErrorKind::AddrInUse, "no free passive port");
        for _ in 0..16 {
            let port = *passive_ports.start() as u32 + rand::random::<u32>() % span;
            let socket = match local_addr {
                IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.set_reuseaddr(true)?;
            match socket.bind(SocketAddr::new(local_addr, port as u16)) {
                Ok(()) => return Ok(socket),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Checks `USER`/`PASS` against the configured accounts and records failed
/// logins with the peer address.
#[derive(Debug)]
struct SessionAuthenticator {
    session: Arc<FtpSession>,
    users: Arc<Vec<(String, String)>>,
}

#[async_trait]
impl Authenticator for SessionAuthenticator {
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        let attempt = Attempt::start(Protocol::Ftp, self.session.peer, "");
        // Kept for the records; a hostile client may send a huge name.
        let logged: String = username.chars().take(256).collect();
        *self.session.user.lock().unwrap_or_else(|p| p.into_inner()) = Some(logged);
        let fault = self.session.select_fault(None, |a| {
            matches!(a, Action::RefuseLogin)
                || matches!(a, Action::FtpReply { command, .. } if command == "USER" || command == "PASS")
        });
        if let Some(fault) = fault {
            self.session.record(
                &attempt,
                "",
                None,
                0,
                0,
                530,
                Outcome::AuthFailed,
                "fault: login refused".into(),
                Some(&fault.name),
            );
            return Err(AuthenticationError::BadPassword);
        }
        let password = creds.password.as_deref().unwrap_or("");
        let accepted = self.users.is_empty()
            || self
                .users
                .iter()
                .any(|(u, p)| u == username && constant_time_eq(p.as_bytes(), password.as_bytes()));
        if accepted {
            tracing::debug!(peer = %self.session.peer, user = username, "FTP login");
            return Ok(Principal {
                username: username.to_string(),
            });
        }
        let reason = if self.users.iter().any(|(u, _)| u == username) {
            "wrong password"
        } else {
            "unknown user"
        };
        self.session.record(
            &attempt,
            "",
            None,
            0,
            0,
            530,
            Outcome::AuthFailed,
            reason.into(),
            None,
        );
        if reason == "unknown user" {
            Err(AuthenticationError::BadUser)
        } else {
            Err(AuthenticationError::BadPassword)
        }
    }
}

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Read-only storage back-end: listings and metadata from
/// `unftp_sbe_fs::Filesystem`, filtered through the catalog; package bytes
/// from the catalog, counted.
#[derive(Debug)]
pub struct CatalogStorage {
    inner: Option<Filesystem>,
    session: Arc<FtpSession>,
    stall: Duration,
}

impl CatalogStorage {
    fn new(root: &Path, session: Arc<FtpSession>, stall: Duration) -> Self {
        let inner = match Filesystem::new(root.to_path_buf()) {
            Ok(fs) => Some(fs),
            Err(err) => {
                tracing::error!(root = %root.display(), error = %err, "cannot open package folder for FTP");
                None
            }
        };
        CatalogStorage {
            inner,
            session,
            stall,
        }
    }

    fn inner(&self) -> storage::Result<&Filesystem> {
        self.inner
            .as_ref()
            .ok_or_else(|| storage::Error::from(ErrorKind::LocalError))
    }

    /// The catalog key for a libunftp path, or a 550 for a hostile path.
    fn key(path: &Path) -> Result<String, path::PathError> {
        path::normalize(&path.to_string_lossy())
    }

    /// Whether `key` is something FTP may show (a folder, or a package that
    /// may be served).
    fn visible(&self, key: &str) -> bool {
        match self.session.shared.catalog.lookup(key) {
            Lookup::Directory => true,
            Lookup::Package(p) => p.is_valid() || self.session.shared.allow_invalid,
            Lookup::Excluded(_) | Lookup::Missing => false,
        }
    }

    fn refuse_write(&self, command: &str, path: &Path) -> storage::Error {
        let attempt = Attempt::start(Protocol::Ftp, self.session.peer, "");
        self.session.record(
            &attempt,
            &path.to_string_lossy(),
            None,
            0,
            0,
            550,
            Outcome::Refused,
            format!("{command} refused: the server is read-only"),
            None,
        );
        storage::Error::from(ErrorKind::PermissionDenied)
    }
}

fn not_available() -> storage::Error {
    storage::Error::from(ErrorKind::PermanentFileNotAvailable)
}

#[async_trait]
impl StorageBackend<DefaultUser> for CatalogStorage {
    type Metadata = unftp_sbe_fs::Meta;

    fn supported_features(&self) -> u32 {
        storage::FEATURE_RESTART
    }

    async fn metadata<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &DefaultUser,
        path: P,
    ) -> storage::Result<Self::Metadata> {
        match Self::key(path.as_ref()) {
            Ok(key) if self.visible(&key) => {
                // SIZE and MDTM (and RNFR, MLST) all come here.
                if let Some(f) = self.session.fault(Some(&key), |c| c == "SIZE") {
                    return Err(self.session.fault_reply(&f, "SIZE", &key));
                }
                self.inner()?.metadata(user, path).await
            }
            _ => Err(not_available()),
        }
    }

    async fn list<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &DefaultUser,
        path: P,
    ) -> storage::Result<Vec<Fileinfo<PathBuf, Self::Metadata>>>
    where
        Self::Metadata: storage::Metadata,
    {
        let dir = Self::key(path.as_ref()).map_err(|_| not_available())?;
        if !matches!(self.session.shared.catalog.lookup(&dir), Lookup::Directory) {
            return Err(not_available());
        }
        // LIST, NLST and MLSD all come here.
        if let Some(f) = self.session.fault(Some(&dir), |c| c == "LIST") {
            return Err(self.session.fault_reply(&f, "LIST", &dir));
        }
        let entries = self.inner()?.list(user, path).await?;
        Ok(entries
            .into_iter()
            .filter(|fi| {
                let name = fi.path.to_string_lossy();
                let key = if dir.is_empty() {
                    name.into_owned()
                } else {
                    format!("{dir}/{name}")
                };
                self.visible(&key)
            })
            .collect())
    }

    async fn get<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
        start_pos: u64,
    ) -> storage::Result<Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>> {
        let key = Self::key(path.as_ref()).map_err(|_| not_available())?;
        match self.session.shared.resolve(&key) {
            Access::Serve(pkg) => self
                .session
                .shared
                .catalog
                .open(&pkg, start_pos)
                .await
                .map_err(|e| storage::Error::new(ErrorKind::TransientFileNotAvailable, e)),
            Access::Refuse { .. } => Err(not_available()),
        }
    }

    async fn get_into<'a, P, W: ?Sized>(
        &self,
        _user: &DefaultUser,
        path: P,
        start_pos: u64,
        output: &'a mut W,
    ) -> storage::Result<u64>
    where
        W: AsyncWrite + Unpin + Sync + Send,
        P: AsRef<Path> + Send + Debug,
    {
        let attempt = Attempt::start(Protocol::Ftp, self.session.peer, "");
        let raw = path
            .as_ref()
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string();
        let session = &self.session;
        if session.shared.shutdown.is_cancelled() {
            let reason = "server shutting down: no new transfers".to_string();
            session.record(
                &attempt,
                &raw,
                None,
                start_pos,
                0,
                450,
                Outcome::Refused,
                reason,
                None,
            );
            return Err(storage::Error::from(ErrorKind::TransientFileNotAvailable));
        }
        let key = match Self::key(path.as_ref()) {
            Ok(k) => k,
            Err(err) => {
                session.record(
                    &attempt,
                    &raw,
                    None,
                    start_pos,
                    0,
                    550,
                    Outcome::Refused,
                    err.to_string(),
                    None,
                );
                return Err(storage::Error::from(ErrorKind::PermissionDenied));
            }
        };
        let package = match session.shared.resolve(&key) {
            Access::Serve(pkg) => pkg,
            Access::Refuse {
                outcome,
                reason,
                package,
            } => {
                session.record(
                    &attempt,
                    &key,
                    package.as_deref(),
                    start_pos,
                    0,
                    550,
                    outcome,
                    reason,
                    None,
                );
                return Err(not_available());
            }
        };
        if start_pos > package.size {
            session.record(
                &attempt,
                &key,
                Some(&package),
                start_pos,
                0,
                551,
                Outcome::Refused,
                format!(
                    "REST offset {start_pos} is beyond the end ({} bytes)",
                    package.size
                ),
                None,
            );
            return Err(storage::Error::from(ErrorKind::PageTypeUnknown));
        }
        // Rules that replace the reply apply now; rules that change the
        // bytes once the package is open (below).
        let fault = session.select_fault(Some(&key), |a| {
            matches!(a, Action::NotFound)
                || matches!(a, Action::FtpReply { command, .. } if command == "RETR")
        });
        match fault {
            Some(Applied {
                action: Action::NotFound,
                name,
            }) => {
                session.record(
                    &attempt,
                    &key,
                    Some(&package),
                    start_pos,
                    0,
                    550,
                    Outcome::NotFound,
                    "fault: not-found".into(),
                    Some(&name),
                );
                return Err(not_available());
            }
            Some(
                f @ Applied {
                    action: Action::FtpReply { .. },
                    ..
                },
            ) => {
                return Err(session.fault_reply(&f, "RETR", &key));
            }
            _ => {}
        }
        let mut fault_name = None;
        let mut reader: PackageReader = match session.shared.catalog.open(&package, start_pos).await
        {
            Ok(r) => match session.select_fault(Some(&key), Action::is_data) {
                Some(applied) => {
                    fault_name = Some(applied.name);
                    Box::new(FaultedReader::new(
                        r,
                        applied.action,
                        start_pos,
                        package.size,
                        session.shared.shutdown.clone(),
                        self.stall,
                    ))
                }
                None => r,
            },
            Err(err) => {
                let status = if matches!(err, OpenError::Changed) {
                    450
                } else {
                    451
                };
                session.record(
                    &attempt,
                    &key,
                    Some(&package),
                    start_pos,
                    0,
                    status,
                    Outcome::Refused,
                    err.to_string(),
                    None,
                );
                return Err(storage::Error::new(
                    ErrorKind::TransientFileNotAvailable,
                    err,
                ));
            }
        };
        // Held for the whole transfer so shutdown waits for it.
        let _transfer = session.shared.transfers.token();
        let mut out = StallGuard::new(output, self.stall);
        let mut tracker = RetrRecord {
            session,
            attempt,
            key: &key,
            package: &package,
            start_pos,
            sent: 0,
            done: false,
            fault: fault_name,
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) => {
                    let reason = if tracker.fault.is_some() {
                        err.to_string()
                    } else {
                        format!("read error: {err}")
                    };
                    tracker.finish(451, Outcome::Aborted, reason);
                    return Err(storage::Error::new(ErrorKind::LocalError, err));
                }
            };
            if let Err(err) = out.write_all(&buf[..n]).await {
                tracker.finish(426, Outcome::Aborted, write_failure(&err));
                return Err(storage::Error::new(ErrorKind::ConnectionClosed, err));
            }
            tracker.sent += n as u64;
        }
        if let Err(err) = out.flush().await {
            tracker.finish(426, Outcome::Aborted, write_failure(&err));
            return Err(storage::Error::new(ErrorKind::ConnectionClosed, err));
        }
        let expected = package.size - start_pos;
        if tracker.sent != expected {
            if tracker.fault.is_some() {
                // `drop-after`: the data connection closes early while the
                // control connection reports success, as when a middlebox
                // cuts the transfer — the client sees fewer bytes than SIZE.
                let sent = tracker.sent;
                let reason =
                    format!("fault: data connection closed after {sent} bytes (reply 226)");
                tracker.finish(226, Outcome::Aborted, reason);
                return Ok(sent);
            }
            let reason =
                format!("package shorter than its validated size ({expected} bytes expected)");
            tracker.finish(451, Outcome::Aborted, reason);
            return Err(storage::Error::from(ErrorKind::LocalError));
        }
        let sent = tracker.sent;
        tracker.finish(226, Outcome::Complete, "sent".into());
        Ok(sent)
    }

    async fn put<
        P: AsRef<Path> + Send + Debug,
        R: tokio::io::AsyncRead + Send + Sync + Unpin + 'static,
    >(
        &self,
        _user: &DefaultUser,
        _input: R,
        path: P,
        _start_pos: u64,
    ) -> storage::Result<u64> {
        Err(self.refuse_write("STOR/APPE", path.as_ref()))
    }

    async fn del<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
    ) -> storage::Result<()> {
        Err(self.refuse_write("DELE", path.as_ref()))
    }

    async fn mkd<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
    ) -> storage::Result<()> {
        Err(self.refuse_write("MKD", path.as_ref()))
    }

    async fn rename<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        from: P,
        _to: P,
    ) -> storage::Result<()> {
        Err(self.refuse_write("RNFR/RNTO", from.as_ref()))
    }

    async fn rmd<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
    ) -> storage::Result<()> {
        Err(self.refuse_write("RMD", path.as_ref()))
    }

    async fn cwd<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
    ) -> storage::Result<()> {
        match Self::key(path.as_ref()) {
            Ok(key) if matches!(self.session.shared.catalog.lookup(&key), Lookup::Directory) => {
                match self.session.fault(Some(&key), |c| c == "CWD") {
                    Some(f) => Err(self.session.fault_reply(&f, "CWD", &key)),
                    None => Ok(()),
                }
            }
            _ => Err(storage::Error::from(
                ErrorKind::PermanentDirectoryNotAvailable,
            )),
        }
    }
}

fn write_failure(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::TimedOut => "write stalled: the client stopped reading".into(),
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => "client closed the data connection".into(),
        _ => format!("data connection write failed: {err}"),
    }
}

/// Writes the `RETR` record exactly once: when the transfer ends, or — if
/// the transfer future is dropped (session killed, shutdown) — on drop.
struct RetrRecord<'a> {
    session: &'a FtpSession,
    attempt: Attempt,
    key: &'a str,
    package: &'a Package,
    start_pos: u64,
    sent: u64,
    done: bool,
    fault: Option<String>,
}

impl RetrRecord<'_> {
    fn finish(&mut self, status: u16, outcome: Outcome, reason: String) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.session.record(
            &self.attempt,
            self.key,
            Some(self.package),
            self.start_pos,
            self.sent,
            status,
            outcome,
            reason,
            self.fault.as_deref(),
        );
    }
}

impl Drop for RetrRecord<'_> {
    fn drop(&mut self) {
        let reason = if self.session.shared.shutdown.is_cancelled() {
            "server shutting down"
        } else {
            "transfer cancelled"
        };
        self.finish(426, Outcome::Aborted, reason.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_secrets() {
        assert!(constant_time_eq(b"test", b"test"));
        assert!(!constant_time_eq(b"test", b"tesT"));
        assert!(!constant_time_eq(b"test", b"test1"));
    }
}

//! FTP front-end (libunftp), read-only, served from the catalog.
//!
//! libunftp's `DataListener` reports only finished `RETR`s and carries no
//! client address, so this module takes the two things it needs elsewhere:
//!
//! - **the peer address**: connections are accepted here and each one is
//!   handed to its own libunftp `Server::service`, built with an
//!   authenticator and storage back-end that share a per-connection
//!   [`FtpSession`] holding the peer `ip:port` and, after login, the user;
//! - **the bytes**: [`CatalogStorage`] is libunftp's storage back-end. It
//!   answers `LIST`/`NLST`/`MLSD`, `SIZE`, `MDTM` and `CWD` from the
//!   [`Catalog`]'s metadata and listings, and `RETR` from
//!   [`Catalog::open`] in `get_into`, counting every byte written to the
//!   data connection, so a `RETR` that the client abandons part-way is
//!   logged as `aborted` with the exact count. A `RETR` reads as its
//!   phases: resolve → authorize → apply faults → open → send, one
//!   [`Attempt`] carrying what the record needs.
//!
//! Write commands (`STOR`, `APPE`, `DELE`, `MKD`, `RMD`, `RNTO`) reach the
//! storage back-end, which refuses them with 550 and logs them. `RNFR` is
//! answered by libunftp itself (350 when the file exists); the `RNTO` that
//! must follow is refused, so nothing is ever renamed.
//!
//! Around each session: connection limits at accept, a login timeout, a
//! command-line cap watched from beside libunftp ([`line_cap`]), and
//! passive listeners only the control peer can reach ([`passive`]).

use std::fmt::Debug;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use libunftp::options::PassiveHost;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use unftp_core::auth::{AuthenticationError, Authenticator, Credentials, DefaultUser, Principal};
use unftp_core::storage::{self, ErrorKind, Fileinfo, Permissions, StorageBackend};

use super::delivery::{self, AckTracker, Delivery, Span, cut_short};
use super::fault::PeerWatch;
use super::fault::apply_data_fault;
use super::fault::{Action, Applied, AttemptInfo};
use super::stall::{StallGuard, Turns};
use super::zerocopy::{self, ZeroCopyStream};
use super::{Access, Shared, lock};
use crate::catalog::{Catalog, Entry, OpenError, Package, PackageReader, path};
use crate::dlog::{Attempt, Outcome, Protocol};

mod line_cap;
mod passive;
mod unftp_log;

use line_cap::LineCap;
pub use passive::PASSIVE_ACCEPT_TIMEOUT;
use passive::{PassiveBinder, PassiveRegistry, PassiveState};

/// FTP listener settings.
#[derive(Debug, Clone)]
pub struct FtpOptions {
    /// Accepted `(user, password)` pairs; empty → any login is accepted.
    pub users: Vec<(String, String)>,
    /// Ports offered in `PASV`/`EPSV` replies.
    pub passive_ports: RangeInclusive<u16>,
    /// Host or IPv4 address advertised in `PASV` replies (`--public-host`,
    /// for NAT); `None`: the control connection's local address, which is
    /// where the passive listener answers — as vsftpd does without
    /// `pasv_address`.
    pub passive_host: Option<String>,
    /// Seconds an idle control connection is kept after login
    /// (`--ftp-idle-secs`).
    pub idle_timeout_secs: u64,
    /// How long a control connection may take to log in
    /// (`--login-timeout-secs`): stops idle unauthenticated connections
    /// holding slots (vsftpd `accept_timeout`/`idle_session_timeout`).
    pub login_timeout: Duration,
    /// How long a passive listener waits for its data connection before it
    /// is closed and the wait recorded (at most [`PASSIVE_ACCEPT_TIMEOUT`]).
    pub data_timeout: Duration,
    /// Longest a data-connection write may make no progress.
    pub stall: Duration,
}

/// Per-connection state shared by the authenticator and storage back-end.
#[derive(Debug)]
pub struct FtpSession {
    peer: SocketAddr,
    user: Mutex<Option<String>>,
    shared: Arc<Shared>,
    /// Set once a login succeeded.
    logged_in: std::sync::atomic::AtomicBool,
    /// The session's latest passive listener: its data connection is an
    /// established socket on that port from the control peer's address
    /// (how [`crate::serve::delivery`] finds candidates) carrying the
    /// listener's mark (how [`FtpSession::data_connection`] is sure).
    passive: Mutex<Option<passive::PassivePort>>,
    /// The control connection's local address (where passive listeners
    /// bind, and what `PASV` advertises without `--public-host`).
    local: SocketAddr,
    /// The session's one outstanding passive listener.
    passive_state: Arc<PassiveState>,
    /// Outstanding passive listeners per address, over all sessions.
    passive_registry: Arc<PassiveRegistry>,
    /// The package path the session last named (`SIZE`, `MDTM`, `RETR`),
    /// for the record of a data connection that never came.
    last_path: Mutex<Option<String>>,
    /// The last package whose `SIZE` was answered, for the record of a
    /// session that ends with no `RETR` (a module that found no room for
    /// the package stops there).
    sized: Mutex<Option<String>>,
    /// The path of the session's last `not_found`/`invalid_package`
    /// record: the next command naming it adds none.
    refused_path: Mutex<Option<String>>,
    /// [`FtpOptions::data_timeout`].
    data_timeout: Duration,
    /// [`FtpOptions::login_timeout`].
    login_timeout: Duration,
    /// When the control connection was accepted (the login timeout runs
    /// from here).
    opened: std::time::Instant,
    /// The command libunftp is handling (`SIZE`, `MLST`, …), from its
    /// control channel log ([`unftp_log`]): several commands reach the
    /// storage back-end through one call.
    command: Mutex<String>,
    /// A `RETR` libunftp answered `150` for whose data connection has not
    /// come (libunftp calls the storage back-end only once it has).
    retr_waiting: Mutex<Option<RetrWaiting>>,
    /// `RETR`s seen, numbering [`FtpSession::retr_waiting`].
    retrs: std::sync::atomic::AtomicU64,
    /// Why the session's latest `PASV`/`EPSV` was refused, until a `RETR`
    /// (or the session's end) records the attempt.
    passive_refused: Mutex<Option<PassiveRefusal>>,
    /// The rule that refused a `PASV`/`EPSV` the client asked again with
    /// success: the download goes on, and its record names the rule.
    carried_fault: Mutex<Option<String>>,
    /// Woken when a `RETR` answered `150` waited in vain for its data
    /// connection: the session task answers `425`.
    data_expired: tokio::sync::Notify,
    /// Woken at `QUIT`: the session task closes the connection if libunftp
    /// has not within [`QUIT_REPLY_LIMIT`].
    quit: tokio::sync::Notify,
}

/// How long a `RETR` that came with no passive listener outstanding may
/// wait before it is answered `425`: libunftp answers one with no
/// `PASV` at all at once; one whose listener expired it never answers.
const RETR_WITHOUT_LISTENER: Duration = Duration::from_secs(1);

/// How long after `QUIT` libunftp may take to answer and close. Its `QUIT`
/// handler waits for room in a one-message channel that only its own
/// control loop empties, so a `QUIT` that meets a transfer's final report
/// (curl's `ABOR`, then `QUIT`, after a byte range) waits for good; the
/// session then answers `221` itself and closes.
pub const QUIT_REPLY_LIMIT: Duration = Duration::from_secs(1);

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
        let mut attempt = self.attempt(path);
        attempt.fault = Some(applied.name.clone());
        // libunftp answers NLST's every storage error 550, whatever the
        // rule's code: the record says what the client got.
        let (sent, reason) = if self.current_command() == "NLST" {
            (
                550,
                format!("fault: reply {code} to {command}; NLST answers 550 (libunftp)"),
            )
        } else {
            (code, format!("fault: reply {code} to {command}"))
        };
        self.emit(&attempt, sent, Outcome::Refused, reason);
        storage::Error::from(error_kind_for(code))
    }

    fn user(&self) -> Option<String> {
        lock(&self.user).clone()
    }

    /// The data connection of the session's current passive listener: the
    /// kernel's counters for it, if they are readable, and a second handle
    /// on its socket (for `sendfile`) when it could be told for certain —
    /// the candidate on the listener's port whose `TCP_NOTSENT_LOWAT` is the
    /// listener's mark ([`passive::PassivePort`]). A candidate that is not
    /// certain gets no handle, so no transfer can write into another
    /// client's connection; its counters are still the best guess (the
    /// first of [`delivery::candidates_by_local_port`]).
    fn data_connection(&self) -> (Option<Arc<AckTracker>>, Option<tokio::net::TcpStream>) {
        let Some(passive) = *lock(&self.passive) else {
            return (None, None);
        };
        let candidates =
            match delivery::candidates_by_local_port(passive.addr.port(), self.peer.ip()) {
                Ok(candidates) => candidates,
                Err(err) => {
                    tracing::debug!(error = %err, "cannot look up the data connection");
                    return (None, None);
                }
            };
        if let Some((ends, socket)) = marked(&candidates, passive) {
            return (delivery::track(ends), Some(socket));
        }
        let guess = candidates
            .first()
            .and_then(|(ends, _)| delivery::track(*ends));
        (guess, None)
    }

    /// A data connection arrived and its transfer or listing starts: the
    /// passive listener is no longer needed.
    fn data_connected(&self) {
        self.passive_state.take();
    }

    /// Records the attempt a refused `PASV`/`EPSV` ended, on the package
    /// the session last named; `then` says what came after it.
    fn record_passive_refusal(&self, refusal: PassiveRefusal, then: &str) {
        let path = lock(&self.last_path).clone().unwrap_or_default();
        let reason = format!("PASV/EPSV refused ({}): answered 425; {then}", refusal.why);
        let mut attempt = self.attempt(path);
        attempt.fault = refusal.fault;
        self.emit(&attempt, 425, Outcome::Refused, reason);
    }

    /// Notes the package path a command named.
    fn named(&self, path: &str) {
        *lock(&self.last_path) = Some(path.chars().take(1024).collect());
    }

    /// A new attempt on `path` by this connection's peer and user.
    fn attempt(&self, path: impl Into<String>) -> Attempt {
        let mut attempt = Attempt::start(Protocol::Ftp, self.peer, path);
        attempt.user = self.user();
        // The package the path names, as an HTTP record carries it (the
        // `SIZE`-only and RETR-without-data records have no other source).
        if let crate::catalog::Lookup::Package(package) = self.shared.catalog.lookup(&attempt.path)
        {
            attempt.package = Some((package.size, package.sha256.clone()));
        }
        attempt
    }

    /// Logs `attempt` as ending now; a fault rule that refused a
    /// `PASV`/`EPSV` the client then asked again goes with it
    /// ([`FtpSession::carried_fault`]).
    fn emit(&self, attempt: &Attempt, status: u16, outcome: Outcome, reason: impl Into<String>) {
        let mut record = attempt.record(status, outcome, reason);
        if let Some(fault) = lock(&self.carried_fault).take() {
            record.fault.get_or_insert(fault);
        }
        self.shared.log.emit(record);
    }

    /// Notes the command libunftp is about to handle (its name in upper
    /// case, and its path if it has one); a `RETR` waits for its data
    /// connection from here until [`CatalogStorage::get_into`] takes it.
    fn command(self: &Arc<Self>, name: &str, path: Option<&str>) {
        name.clone_into(&mut lock(&self.command));
        if name == "QUIT" {
            self.quit.notify_one();
        }
        // Before login libunftp answers it 530: nothing waits.
        if name == "RETR"
            && let Some(path) = path
            && self.logged_in.load(Ordering::Acquire)
        {
            let path = path.trim_start_matches('/');
            self.named(path);
            let n = self.retrs.fetch_add(1, Ordering::AcqRel);
            let waiting = RetrWaiting {
                n,
                attempt: self.attempt(path),
                _in_flight: self.shared.transfers.token(),
            };
            let earlier = lock(&self.retr_waiting).replace(waiting);
            if let Some(earlier) = earlier {
                // A client that sent RETR again before the first one's
                // reply: the first ends here, with the 150 it got.
                let reason = "RETR answered 150, then another RETR came before its data connection";
                self.emit(&earlier.attempt, 150, Outcome::Aborted, reason);
            }
            if self.passive_state.is_empty() {
                FtpSession::retr_without_listener(Arc::downgrade(self), n, RETR_WITHOUT_LISTENER);
            }
        }
    }

    /// The command being handled, for a record's reason (`SIZE`).
    fn current_command(&self) -> String {
        lock(&self.command).clone()
    }

    /// Records a `RETR` of `path` that libunftp answered `425` itself
    /// because no data connection was set up before it: none asked for,
    /// or the `PASV`/`EPSV` was refused.
    fn retr_without_data_connection(&self, path: &str) {
        lock(&self.retr_waiting).take();
        let path = path.trim_start_matches('/');
        // The record caps the path's length itself.
        let mut attempt = self.attempt(path);
        let reason = match lock(&self.passive_refused).take() {
            Some(refusal) => {
                attempt.fault = refusal.fault;
                format!(
                    "RETR with no data connection: PASV/EPSV was refused ({}); answered 425",
                    refusal.why
                )
            }
            None => "RETR with no data connection (no PASV/EPSV before it): answered 425".into(),
        };
        self.emit(&attempt, 425, Outcome::Aborted, reason);
    }

    /// Whether the data connection of the session's latest passive
    /// listener has been accepted: a connection on its port from the
    /// control peer that carries the listener's mark (a port shared with
    /// another client behind the same address does not count). `false`
    /// when that cannot be told.
    fn data_connection_accepted(&self) -> bool {
        let Some(passive) = *lock(&self.passive) else {
            return false;
        };
        delivery::candidates_by_local_port(passive.addr.port(), self.peer.ip())
            .is_ok_and(|candidates| marked(&candidates, passive).is_some())
    }

    /// Whether the client has closed its side of the control connection:
    /// the kernel's socket is past established, or gone (libunftp saw the
    /// end and closed it); `false` when that cannot be told.
    fn control_closed_by_peer(&self) -> bool {
        let ends = delivery::TcpEnds {
            local: self.local,
            peer: self.peer,
        };
        delivery::peer_closed(ends).unwrap_or(true)
    }

    /// Records a control connection closed for a command line over the
    /// cap (`unanswered`: bytes the peer had sent with no answer).
    fn command_line_too_long(&self, unanswered: u64) {
        tracing::warn!(peer = %self.peer, unanswered, "FTP command line over the cap: connection closed");
        let reason = format!(
            "command line too long: {} bytes sent with no answer in between (limit {}: one unfinished line, or many commands sent without waiting for replies); answered 500 and closed",
            delivery::grouped(unanswered),
            delivery::grouped(line_cap::COMMAND_LINE_MAX),
        );
        self.emit(&self.attempt(""), 500, Outcome::Refused, reason);
    }
}

/// A `RETR` waiting for its data connection ([`FtpSession::retr_waiting`]).
#[derive(Debug)]
struct RetrWaiting {
    /// Its number ([`FtpSession::retrs`]).
    n: u64,
    /// Started when the `RETR` came.
    attempt: Attempt,
    /// Counts as a transfer in flight: a shutdown waits for it (its data
    /// connection may still come) and, when the grace period ends, for
    /// its record.
    _in_flight: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl Drop for FtpSession {
    fn drop(&mut self) {
        self.close_records();
    }
}

impl FtpSession {
    /// The records a session owes when it ends: a `RETR` still waiting for
    /// its data connection (status `150`, the last reply it got), a refused
    /// `PASV` no `RETR` followed. Written once (each is taken): when the
    /// control connection ends, when the session is given up, at the
    /// latest at drop (libunftp's tasks may hold the session a while).
    fn close_records(&self) {
        let refused = lock(&self.passive_refused).take();
        // The server's own shutdown closes sessions too: say so, not that
        // the client left.
        let shut_down = self.shared.shutdown.is_cancelled();
        let closed = if shut_down {
            "the server shut down"
        } else {
            "the control connection closed"
        };
        let why = match &refused {
            Some(refusal) => {
                format!("{closed}; its last PASV/EPSV was refused ({})", refusal.why)
            }
            None => format!("{closed} with no data connection after PASV/EPSV"),
        };
        // A RETR still waiting: for the outstanding listener, or for one
        // that had expired.
        let recorded = match self.passive_state.take() {
            Some(listener) => self.passive_unused(listener, &why, 150),
            None => self.retr_unanswered(&why, 150),
        };
        // A refused PASV/EPSV that no RETR followed: the client gave up
        // there (a module reports 601).
        let sized = lock(&self.sized).take();
        if let (Some(refusal), false) = (refused, recorded) {
            self.record_passive_refusal(refusal, "no RETR followed");
        } else if let (Some(key), false) = (sized, recorded)
            && self.retrs.load(Ordering::Acquire) == 0
        {
            // The package's size asked and no download: FTP's HEAD. A
            // module stops here when the package does not fit its storage
            // (ec200: FTPEND,611), so the attempt is on record.
            let reason = format!(
                "SIZE answered; {} with no RETR (no download: a module that has no room for the package stops here)",
                if shut_down {
                    "the server shut down"
                } else {
                    "the session ended"
                }
            );
            self.emit(&self.attempt(key), 213, Outcome::HeadersOnly, reason);
        }
    }
}

/// Why a session's `PASV`/`EPSV` was answered `425`: the attempt's one
/// record, written by the `RETR` that follows or at the session's end,
/// says so.
#[derive(Debug, Clone)]
pub(super) struct PassiveRefusal {
    /// The reason, as the record gives it.
    pub(super) why: String,
    /// The fault rule that refused it, if one did.
    pub(super) fault: Option<String>,
}

/// Accepts FTP control connections on every one of `listeners` (one, or an
/// IPv6 and an IPv4 one: see [`crate::serve`]'s `bind_ftp`) until
/// shutdown; each runs its own libunftp server instance bound to an
/// [`FtpSession`].
pub(crate) async fn run(listeners: Vec<TcpListener>, shared: Arc<Shared>, opts: FtpOptions) {
    if opts.users.is_empty() {
        tracing::warn!("no --user given: FTP accepts any user name and password (read-only)");
    }
    let front = FrontEnd {
        users: Arc::new(opts.users.clone()),
        registry: PassiveRegistry::new(&opts.passive_ports),
        tracker: TaskTracker::new(),
        shared,
        opts,
    };
    futures_util::future::join_all(listeners.iter().map(|l| front.accept_loop(l))).await;
    front.tracker.close();
}

/// What the accept loops of one FTP front-end share.
struct FrontEnd {
    users: Arc<Vec<(String, String)>>,
    registry: Arc<PassiveRegistry>,
    tracker: TaskTracker,
    shared: Arc<Shared>,
    opts: FtpOptions,
}

impl FrontEnd {
    /// Serves the connections `listener` accepts until shutdown.
    async fn accept_loop(&self, listener: &TcpListener) {
        let shared = &self.shared;
        let shutdown = shared.shutdown.clone();
        let limited = Some((&**shared, Protocol::Ftp));
        while let Some((tcp, peer, permit)) =
            super::accept(listener, &shutdown, "ftp", limited).await
        {
            let Ok(local) = tcp.local_addr() else {
                continue;
            };
            let session = Arc::new(FtpSession {
                peer,
                user: Mutex::new(None),
                shared: Arc::clone(shared),
                passive: Mutex::new(None),
                logged_in: std::sync::atomic::AtomicBool::new(false),
                local,
                passive_state: Arc::default(),
                passive_registry: Arc::clone(&self.registry),
                last_path: Mutex::new(None),
                sized: Mutex::new(None),
                refused_path: Mutex::new(None),
                data_timeout: self.opts.data_timeout,
                login_timeout: self.opts.login_timeout,
                opened: std::time::Instant::now(),
                command: Mutex::default(),
                retr_waiting: Mutex::new(None),
                retrs: std::sync::atomic::AtomicU64::new(0),
                passive_refused: Mutex::new(None),
                carried_fault: Mutex::new(None),
                data_expired: tokio::sync::Notify::new(),
                quit: tokio::sync::Notify::new(),
            });
            if let Some(fault) = session.fault(None, |cmd| cmd == "CONNECT") {
                self.tracker
                    .spawn(refuse_connection(tcp, Arc::clone(&session), fault));
                continue;
            }
            let server = match session_server(&session, &self.users, &self.opts) {
                Ok(s) => s,
                Err(err) => {
                    tracing::error!(%peer, error = %err, "cannot set up FTP session");
                    continue;
                }
            };
            let login_timeout = self.opts.login_timeout;
            self.tracker.spawn(async move {
                // Holds this connection's place under the limits until it ends.
                let _permit = permit;
                tracing::debug!(%peer, "FTP connection");
                serve_session(server, tcp, login_timeout, &session).await;
            });
        }
    }
}

/// The libunftp server for one session: its authenticator and storage
/// share `session`; passive listeners bind on the control connection's
/// own address.
fn session_server(
    session: &Arc<FtpSession>,
    users: &Arc<Vec<(String, String)>>,
    opts: &FtpOptions,
) -> Result<libunftp::Server<CatalogStorage, DefaultUser>, libunftp::ServerError> {
    // The PASV address: --public-host, else the control connection's
    // local one (where the passive listener binds).
    let local = session.local.ip().to_canonical();
    let passive_host = match (opts.passive_host.as_deref(), local) {
        (Some(host), _) => match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => PassiveHost::Ip(v4),
            // PASV can only carry IPv4; for an IPv6 public host answer with
            // the control connection's address (EPSV carries no address).
            Ok(IpAddr::V6(_)) => from_connection(local),
            Err(_) => PassiveHost::Dns(host.to_string()),
        },
        (None, _) => from_connection(local),
    };
    let storage_session = Arc::clone(session);
    let stall = opts.stall;
    let authenticator = Arc::new(SessionAuthenticator {
        session: Arc::clone(session),
        users: Arc::clone(users),
        turn: tokio::sync::Mutex::new(()),
    });
    libunftp::ServerBuilder::with_authenticator(
        Box::new(move || CatalogStorage {
            session: Arc::clone(&storage_session),
            stall,
        }),
        authenticator,
    )
    .greeting("qfota-serve FTP ready (read-only)")
    .passive_ports(opts.passive_ports.clone())
    .passive_host(passive_host)
    .idle_session_timeout(opts.idle_timeout_secs)
    .logger(unftp_log::SessionDrain::logger(Arc::downgrade(session)))
    .binder(PassiveBinder {
        session: Arc::clone(session),
    })
    .build()
}

/// The `PASV` address for a control connection on `local`.
fn from_connection(local: IpAddr) -> PassiveHost {
    match local {
        IpAddr::V4(v4) => PassiveHost::Ip(v4),
        IpAddr::V6(_) => PassiveHost::FromConnection,
    }
}

/// Runs libunftp on the control connection; a connection that has not
/// logged in within `login_timeout` is closed, and one that sends a
/// command line over [`line_cap::COMMAND_LINE_MAX`] bytes gets `500` and is
/// closed.
async fn serve_session(
    server: libunftp::Server<CatalogStorage, DefaultUser>,
    tcp: tokio::net::TcpStream,
    login_timeout: Duration,
    session: &FtpSession,
) {
    let peer = session.peer;
    let mut cap = match LineCap::watch(&tcp) {
        Ok(cap) => Some(cap),
        Err(err) => {
            tracing::warn!(%peer, error = %err, "FTP command-line cap unavailable for this connection");
            None
        }
    };
    let service = server.service(tcp);
    tokio::pin!(service);
    let login_deadline = tokio::time::sleep(login_timeout);
    tokio::pin!(login_deadline);
    let mut deadline_passed = false;
    // Armed at QUIT (far off until then).
    let quit_deadline = tokio::time::sleep(Duration::from_secs(365 * 86_400));
    tokio::pin!(quit_deadline);
    let mut quitting = false;
    let closing = session.shared.closing.clone();
    let mut closed = false;
    let ended = loop {
        tokio::select! {
            ended = &mut service => break ended,
            () = closing.cancelled(), if !closed => {
                // The shutdown's grace period is over: a RETR still
                // waiting for its data connection is recorded now, before
                // the server's last log flush (a transfer running ends by
                // itself, through its own record).
                closed = true;
                session.close_records();
            }
            () = &mut login_deadline, if !deadline_passed => {
                if !session.logged_in.load(Ordering::Acquire) {
                    tracing::info!(%peer, "FTP connection closed: no login within the login timeout");
                    // 421 (RFC 959 §4.2: service closing the control
                    // connection), then the close.
                    if let Some(cap) = cap.take() {
                        let reply = format!(
                            "421 No login within {} s: closing the connection.\r\n",
                            login_timeout.as_secs()
                        );
                        cap.close_with(reply.as_bytes());
                    }
                    return;
                }
                deadline_passed = true;
            }
            () = session.quit.notified(), if !quitting => {
                quitting = true;
                quit_deadline
                    .as_mut()
                    .reset(tokio::time::Instant::now() + QUIT_REPLY_LIMIT);
            }
            () = &mut quit_deadline, if quitting => {
                // libunftp's control task stays blocked (it cannot be
                // reached from here): what the session owes is written now.
                tracing::debug!(%peer, "FTP session stuck after QUIT: answered 221 and closed");
                session.close_records();
                if let Some(cap) = cap.take() {
                    cap.close_with(b"221 Goodbye.\r\n");
                }
                return;
            }
            () = session.data_expired.notified() => {
                // libunftp answered the RETR 150 and would wait for the
                // data connection for good: the completion reply it owes
                // (RFC 959 §5.4), the session going on.
                if let Some(cap) = &cap {
                    cap.say(b"425 No data connection was opened: transfer not started.\r\n");
                }
            }
            unanswered = overrun(&mut cap, &session.logged_in) => {
                if let Some(cap) = cap.take() {
                    cap.refuse();
                }
                session.command_line_too_long(unanswered);
                session.close_records();
                return;
            }
        }
    };
    if let Err(err) = ended {
        tracing::debug!(%peer, error = %err, "FTP connection ended with an error");
    }
    // The control connection is closed: what the session owes is written
    // now, not when libunftp's last task lets the session go.
    session.close_records();
}

/// [`LineCap::overrun`] of a connection that has a cap; pending otherwise.
async fn overrun(cap: &mut Option<LineCap>, logged_in: &std::sync::atomic::AtomicBool) -> u64 {
    match cap {
        Some(cap) => cap.overrun(logged_in).await,
        None => std::future::pending().await,
    }
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
    let mut attempt = session.attempt("");
    attempt.fault = Some(fault.name);
    session.emit(
        &attempt,
        code,
        Outcome::Refused,
        format!("fault: reply {code} to the connection"),
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

/// Checks `USER`/`PASS` against the configured accounts and records failed
/// logins with the peer address.
#[derive(Debug)]
struct SessionAuthenticator {
    session: Arc<FtpSession>,
    users: Arc<Vec<(String, String)>>,
    /// Held while one `PASS` is checked and, when it failed, answered late.
    /// libunftp checks each `PASS` in a task of its own: a client
    /// pipelining many `PASS` lines on one connection would otherwise have
    /// them all checked at once, past the failed-login delay. One that
    /// comes while another is held is refused unchecked.
    turn: tokio::sync::Mutex<()>,
}

#[async_trait]
impl Authenticator for SessionAuthenticator {
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        // Kept for the records; a hostile client may send a huge name.
        let logged: String = username.chars().take(256).collect();
        *self.session.user.lock().unwrap_or_else(|p| p.into_inner()) = Some(logged);
        let mut attempt = self.session.attempt("");
        // One attempt of this connection at a time: one sent while another
        // is being checked or answered late is not checked at all.
        let Ok(_turn) = self.turn.try_lock() else {
            let reason = "not checked: another PASS on this connection was still being answered";
            self.session
                .emit(&attempt, 530, Outcome::AuthFailed, reason);
            return Err(AuthenticationError::BadPassword);
        };
        let fault = self.session.select_fault(None, |a| {
            matches!(a, Action::RefuseLogin)
                || matches!(a, Action::FtpReply { command, .. } if command == "USER" || command == "PASS")
        });
        if let Some(fault) = fault {
            attempt.fault = Some(fault.name);
            let reason = "fault: login refused";
            self.session
                .emit(&attempt, 530, Outcome::AuthFailed, reason);
            return Err(AuthenticationError::BadPassword);
        }
        let password = creds.password.as_deref().unwrap_or("");
        let accepted = self.users.is_empty()
            || self
                .users
                .iter()
                .any(|(u, p)| u == username && constant_time_eq(p.as_bytes(), password.as_bytes()));
        let ip = self.session.peer.ip();
        if accepted {
            tracing::debug!(peer = %self.session.peer, user = username, "FTP login");
            self.session.shared.logins.succeeded(ip);
            self.session.logged_in.store(true, Ordering::Release);
            return Ok(Principal {
                username: username.to_string(),
            });
        }
        let known = self.users.iter().any(|(u, _)| u == username);
        let what = if known {
            "wrong password"
        } else {
            "unknown user"
        };
        // Repeated failures from one address are answered late (a correct
        // password never is).
        let (delay, failures) = self.session.shared.logins.failed(ip);
        // Within what is left of the login timeout (it runs from the
        // connection's start), which would otherwise close the session
        // with 421 before the 530 could be sent.
        let left = (self.session.opened + self.session.login_timeout)
            .saturating_duration_since(std::time::Instant::now())
            .saturating_sub(super::logins::ANSWER_MARGIN);
        let delay = delay.min(left);
        let reason = if delay.is_zero() {
            what.to_string()
        } else {
            tokio::time::sleep(delay).await;
            let left = if self.session.control_closed_by_peer() {
                "; the client had closed the connection before it"
            } else {
                ""
            };
            format!(
                "{what} (answered after {}: {failures} failed logins in a row from this address{left})",
                spoken_delay(delay)
            )
        };
        self.session
            .emit(&attempt, 530, Outcome::AuthFailed, reason);
        if !known {
            Err(AuthenticationError::BadUser)
        } else {
            Err(AuthenticationError::BadPassword)
        }
    }
}

/// A login delay as a record's reason says it: whole seconds, rounded
/// (`8 s` for 7.99 s), or milliseconds under one (`400 ms`: a delay cut
/// short by the login timeout).
fn spoken_delay(delay: Duration) -> String {
    if delay < Duration::from_secs(1) {
        format!("{} ms", delay.as_millis())
    } else {
        format!("{} s", (delay.as_millis() + 500) / 1000)
    }
}

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What libunftp shows for a catalog entry (`LIST`, `MLSD`, `SIZE`,
/// `MDTM`): kind, size and modification time. Owner and group are 0 (MLSD
/// then leaves out `unix.uid`/`unix.gid`); the permissions say read-only.
#[derive(Debug, Clone)]
pub struct Meta {
    folder: bool,
    size: u64,
    modified: SystemTime,
}

impl From<&Entry> for Meta {
    fn from(entry: &Entry) -> Self {
        Meta {
            folder: entry.is_folder(),
            size: entry.size(),
            modified: entry.modified(),
        }
    }
}

impl storage::Metadata for Meta {
    fn len(&self) -> u64 {
        self.size
    }

    fn is_dir(&self) -> bool {
        self.folder
    }

    fn is_file(&self) -> bool {
        !self.folder
    }

    fn is_symlink(&self) -> bool {
        false
    }

    fn modified(&self) -> storage::Result<SystemTime> {
        Ok(self.modified)
    }

    fn gid(&self) -> u32 {
        0
    }

    fn uid(&self) -> u32 {
        0
    }

    fn permissions(&self) -> Permissions {
        // Nothing can be written: r-xr-xr-x folders, r--r--r-- files.
        Permissions(if self.folder { 0o555 } else { 0o444 })
    }
}

/// Read-only storage back-end over the [`Catalog`]: listings and metadata
/// from its snapshot, package bytes from [`Catalog::open`], counted.
#[derive(Debug)]
pub struct CatalogStorage {
    session: Arc<FtpSession>,
    stall: Duration,
}

impl CatalogStorage {
    fn catalog(&self) -> &dyn Catalog {
        self.session.shared.catalog.as_ref()
    }

    /// The catalog key for a libunftp path, or a 550 for a hostile path.
    fn key(path: &Path) -> Result<String, path::PathError> {
        path::normalize(&path.to_string_lossy())
    }

    /// The path a record names for a libunftp path: its catalog key, as
    /// downloads are recorded (relative to the package folder, so a
    /// report groups them), else the path as sent without its leading `/`.
    fn record_path(path: &Path) -> String {
        Self::key(path)
            .unwrap_or_else(|_| path.to_string_lossy().trim_start_matches('/').to_string())
    }

    /// Whether FTP may show `entry`: a folder, or a package that may be
    /// served.
    fn visible(&self, entry: &Entry) -> bool {
        match entry {
            Entry::Folder { .. } => true,
            Entry::Package(p) => p.is_valid() || self.session.shared.allow_invalid,
        }
    }

    /// Records a refused attempt ending now and returns `error` for
    /// libunftp to reply with.
    fn refuse(
        &self,
        attempt: &Attempt,
        status: u16,
        outcome: Outcome,
        reason: impl Into<String>,
        error: storage::Error,
    ) -> storage::Error {
        // One try at a missing or invalid package is one attempt, however
        // many commands name it (lftp: MDTM, SIZE, RETR): the session's
        // first refusal of that path is recorded, not each command's.
        if matches!(outcome, Outcome::NotFound | Outcome::InvalidPackage) {
            let mut last = lock(&self.session.refused_path);
            if last.as_deref() == Some(attempt.path.as_str()) {
                return error;
            }
            *last = Some(attempt.path.clone());
        }
        self.session.emit(attempt, status, outcome, reason);
        error
    }

    /// Records a `SIZE`/`MDTM` of a path that is not a servable package
    /// (missing, invalid, excluded) and returns the 550 for libunftp.
    fn refuse_lookup(&self, key: &str, command: &str) -> storage::Error {
        let mut attempt = self.session.attempt(key);
        let Access::Refuse {
            outcome,
            reason,
            package,
            retry,
        } = self.session.shared.resolve(key)
        else {
            return not_available();
        };
        attempt.package = package.map(|p| (p.size, p.sha256.clone()));
        let reason = format!("{command}: {reason}");
        let (status, error) = refusal(retry);
        self.refuse(&attempt, status, outcome, reason, error)
    }

    fn refuse_write(&self, command: &str, path: &Path) -> storage::Error {
        let attempt = self.session.attempt(Self::record_path(path));
        let reason = format!("{command} refused: the server is read-only");
        let denied = storage::Error::from(ErrorKind::PermissionDenied);
        self.refuse(&attempt, 550, Outcome::Refused, reason, denied)
    }

    /// `RETR` step 1: the catalog key, unless the server is shutting down
    /// or the path is hostile.
    fn resolve(&self, attempt: &Attempt, path: &Path) -> storage::Result<String> {
        if self.session.shared.shutdown.is_cancelled() {
            let reason = "server shutting down: no new transfers";
            let busy = storage::Error::from(ErrorKind::TransientFileNotAvailable);
            return Err(self.refuse(attempt, 450, Outcome::Refused, reason, busy));
        }
        Self::key(path).map_err(|err| {
            let denied = storage::Error::from(ErrorKind::PermissionDenied);
            self.refuse(attempt, 550, Outcome::Refused, err.to_string(), denied)
        })
    }

    /// `RETR` step 1½: libunftp has already answered `150` and the client
    /// waits on the data connection, so a `450` for a package under
    /// validation (a new version just copied in) would reach it only as a
    /// data connection closed empty — curl's error 18, a module's `601` —
    /// and neither retries. So the transfer waits for the validation, at
    /// most [`RETR_VALIDATION_WAIT`], checking every 50 ms; the catalog's
    /// verdict then decides as usual (`450` only if it is still running).
    async fn await_validation(&self, key: &str) {
        let shared = &self.session.shared;
        let validating = || matches!(shared.resolve(key), Access::Refuse { retry: true, .. });
        if !validating() {
            return;
        }
        let deadline = tokio::time::Instant::now() + RETR_VALIDATION_WAIT;
        while validating() && tokio::time::Instant::now() < deadline {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                () = shared.shutdown.cancelled() => return,
            }
        }
    }

    /// `RETR` step 2: the package at `key`, if it may be served from the
    /// `REST` offset.
    fn authorize(&self, attempt: &mut Attempt, key: String) -> storage::Result<Arc<Package>> {
        attempt.path = key;
        let package = match self.session.shared.resolve(&attempt.path) {
            Access::Serve(pkg) => pkg,
            Access::Refuse {
                outcome,
                reason,
                package,
                retry,
            } => {
                attempt.package = package.map(|p| (p.size, p.sha256.clone()));
                let (status, error) = refusal(retry);
                return Err(self.refuse(attempt, status, outcome, reason, error));
            }
        };
        attempt.package = Some((package.size, package.sha256.clone()));
        if attempt.range_start > package.size {
            let reason = format!(
                "REST offset {} is beyond the end ({} bytes)",
                attempt.range_start, package.size
            );
            let beyond = storage::Error::from(ErrorKind::PageTypeUnknown);
            return Err(self.refuse(attempt, 551, Outcome::Refused, reason, beyond));
        }
        Ok(package)
    }

    /// `RETR` step 3: rules that replace the reply (`not-found`, an
    /// `ftp-reply` to `RETR`). Rules that change the bytes apply in
    /// [`CatalogStorage::open`], once the package is open.
    fn apply_reply_faults(&self, attempt: &mut Attempt) -> storage::Result<()> {
        let fault = self.session.select_fault(Some(&attempt.path), |a| {
            matches!(a, Action::NotFound)
                || matches!(a, Action::FtpReply { command, .. } if command == "RETR")
        });
        match fault {
            None => Ok(()),
            Some(Applied {
                action: Action::NotFound,
                name,
            }) => {
                attempt.fault = Some(name);
                let reason = "fault: not-found";
                Err(self.refuse(attempt, 550, Outcome::NotFound, reason, not_available()))
            }
            Some(reply) => Err(self.session.fault_reply(&reply, "RETR", &attempt.path)),
        }
    }

    /// `RETR` step 4: the package's bytes from the `REST` offset: the
    /// catalog's resident copy, or read through a data fault rule if one
    /// applies.
    async fn open(
        &self,
        attempt: &mut Attempt,
        package: &Package,
        peer: &PeerWatch,
    ) -> storage::Result<Source> {
        let shared = &self.session.shared;
        let range = attempt.range_start..package.size;
        let applied = self
            .session
            .select_fault(Some(&attempt.path), |a| a.changes(&range, package.size));
        if applied.is_none()
            && let Some(copy) = shared.catalog.resident(package)
        {
            return Ok(Source::Resident(copy.slice(range.start as usize..)));
        }
        let reader = match shared.catalog.open(package, range).await {
            Ok(reader) => reader,
            Err(err) => {
                let status = if matches!(err, OpenError::Changed) {
                    450
                } else {
                    451
                };
                let reason = err.to_string();
                let error = storage::Error::new(ErrorKind::TransientFileNotAvailable, err);
                return Err(self.refuse(attempt, status, Outcome::Refused, reason, error));
            }
        };
        Ok(Source::Reader(apply_data_fault(
            reader,
            applied,
            attempt,
            package.size,
            shared.shutdown.clone(),
            self.stall,
            Some(Arc::clone(peer)),
        )))
    }

    /// `RETR` step 5: copies the bytes to the data connection, waits until
    /// the peer acknowledged them all, and records how the transfer ended
    /// (also when the transfer is dropped). libunftp may still answer `226`
    /// for a transfer cut short; the record goes by the acknowledgements.
    async fn send<W>(
        &self,
        attempt: Attempt,
        package: &Package,
        source: Source,
        output: &mut W,
        peer: &PeerWatch,
    ) -> storage::Result<u64>
    where
        W: AsyncWrite + Unpin + Send + ?Sized,
    {
        let (ack, socket) = self.session.data_connection();
        if let Some(ack) = &ack {
            // A `stall-after` silence watches it for a client that left.
            let _ = peer.set(ack.ends());
        }
        // A resident copy goes out with sendfile(2) through the second
        // handle on the data socket when there is one; libunftp's writer is
        // left untouched (it only shuts the connection down afterwards).
        let direct = match &source {
            Source::Resident(_) => socket,
            Source::Reader(_) => None,
        };
        let mut record = RetrRecord {
            session: Arc::clone(&self.session),
            attempt,
            ack: ack.clone(),
            done: false,
            closed_after_last_byte: false,
        };
        let closing = self.session.shared.closing.clone();
        tokio::select! {
            sent = self.transfer(&mut record, package, source, output, direct) => sent,
            // Shutdown's grace period is over: the transfer is cut here and
            // `record`, dropped, says the server shut down.
            () = closing.cancelled() => Err(storage::Error::from(ErrorKind::ConnectionClosed)),
        }
    }

    /// [`CatalogStorage::send`]'s copy and wait for the acknowledgements,
    /// through `direct` (a second handle on the data socket, for
    /// sendfile(2)) when there is one, else through libunftp's `output`.
    async fn transfer<W>(
        &self,
        record: &mut RetrRecord,
        package: &Package,
        source: Source,
        output: &mut W,
        direct: Option<tokio::net::TcpStream>,
    ) -> storage::Result<u64>
    where
        W: AsyncWrite + Unpin + Send + ?Sized,
    {
        let ack = record.ack.clone();
        let copied = match direct {
            Some(socket) => {
                let socket = ZeroCopyStream::new(socket);
                if let Err(error) = socket.begin_transfer() {
                    tracing::debug!(%error, "cannot set TCP_NOTSENT_LOWAT");
                }
                let out = StallGuard::new(socket, self.stall)
                    .with_speed_check(ZeroCopyStream::pace_transfer, Turns::Whole);
                let mut out = guarded(out, ack.as_ref());
                copy(source, &mut out, &mut record.attempt).await
            }
            None => {
                let mut out = guarded(StallGuard::new(output, self.stall), ack.as_ref());
                copy(source, &mut out, &mut record.attempt).await
            }
        };
        if let Err(failure) = copied {
            record.finish(failure.status, Outcome::Aborted, failure.reason);
            return Err(failure.error);
        }
        let sent = record.attempt.bytes_sent;
        let expected = package.size - record.attempt.range_start;
        if sent == expected {
            return record.delivered(self.stall).await;
        }
        if record.attempt.fault.is_some() {
            // `drop-after`: the data connection closes early while the
            // control connection reports success, as when a middlebox cuts
            // the transfer — the client sees fewer bytes than SIZE.
            let reason = format!("fault: data connection closed after {sent} bytes (reply 226)");
            record.finish(226, Outcome::Aborted, reason);
            return Ok(sent);
        }
        let reason = format!("package shorter than its validated size ({expected} bytes expected)");
        record.finish(451, Outcome::Aborted, reason);
        Err(storage::Error::from(ErrorKind::LocalError))
    }
}

/// `out` with acknowledgement tracking when the kernel's counters can be
/// read for the data connection.
fn guarded<W>(out: StallGuard<W>, ack: Option<&Arc<AckTracker>>) -> StallGuard<W> {
    match ack {
        Some(ack) => out.with_ack(Arc::clone(ack)),
        None => out,
    }
}

/// The candidate (connection and socket inode) whose `TCP_NOTSENT_LOWAT`
/// is `passive`'s mark, with a second handle on its socket; `None` when
/// none has it or no handle can be had (`pidfd_getfd` refused: warned once,
/// and the bytes then go through libunftp's writer, copied).
fn marked(
    candidates: &[(delivery::TcpEnds, u32)],
    passive: passive::PassivePort,
) -> Option<(delivery::TcpEnds, tokio::net::TcpStream)> {
    let inodes: Vec<u32> = candidates.iter().map(|(_, inode)| *inode).collect();
    let is_marked = |socket: &std::net::TcpStream| {
        socket2::SockRef::from(socket).tcp_notsent_lowat().ok() == Some(passive.lowat)
    };
    let (inode, socket) = match zerocopy::own_socket(&inodes, passive.next_fd, is_marked) {
        Ok(found) => found?,
        Err(err) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(error = %err, "no handle on FTP data sockets (pidfd_getfd): package bytes are copied");
            });
            return None;
        }
    };
    let (ends, _) = candidates.iter().find(|(_, i)| *i == inode)?;
    Some((*ends, socket))
}

fn not_available() -> storage::Error {
    storage::Error::from(ErrorKind::PermanentFileNotAvailable)
}

/// The reply to a refused path: `450` (try again: the package is being
/// validated) or `550`.
fn refusal(retry: bool) -> (u16, storage::Error) {
    if retry {
        let busy = storage::Error::from(ErrorKind::TransientFileNotAvailable);
        (450, busy)
    } else {
        (550, not_available())
    }
}

/// Why a transfer stopped part-way: the reply, the record's reason and the
/// error libunftp gets.
struct Failure {
    status: u16,
    reason: String,
    error: storage::Error,
}

impl Failure {
    /// The data connection could not be written (closed, stalled).
    fn closed(err: io::Error) -> Self {
        Failure {
            status: 426,
            reason: write_failure(&err),
            error: storage::Error::new(ErrorKind::ConnectionClosed, err),
        }
    }
}

/// Where a `RETR`'s bytes come from.
enum Source {
    /// The catalog's resident copy from the `REST` offset: written as it
    /// is, no read buffer.
    Resident(bytes::Bytes),
    /// Read from the catalog (through a data fault rule, if one applies).
    Reader(PackageReader),
}

/// Longest a `RETR` waits for the package it names to finish validation
/// (10 s: a 256 MiB package read at 100 MB/s and hashed takes about 3 s;
/// a module's FTP client waits longer than this for its first data byte).
pub const RETR_VALIDATION_WAIT: Duration = Duration::from_secs(10);

/// Bytes per write from a resident copy (8 MiB): more than a wake-up finds
/// room for in the largest send buffer (`zerocopy::FAST_SNDBUF`), so one
/// `sendfile` fills the socket.
const RESIDENT_WRITE: usize = 8 << 20;

/// Copies `source` to `out`, counting into `attempt.bytes_sent`, and
/// flushes.
async fn copy<O>(source: Source, out: &mut O, attempt: &mut Attempt) -> Result<(), Failure>
where
    O: AsyncWrite + Unpin + ?Sized,
{
    let mut reader = match source {
        Source::Resident(copy) => {
            // Counted per write: the socket may take part of a slice.
            let mut rest = &copy[..];
            let mut since_yield = 0;
            while !rest.is_empty() {
                let part = &rest[..rest.len().min(RESIDENT_WRITE)];
                let n = out.write(part).await.map_err(Failure::closed)?;
                if n == 0 {
                    return Err(Failure::closed(io::ErrorKind::WriteZero.into()));
                }
                attempt.bytes_sent += n as u64;
                rest = &rest[n..];
                // A client as fast as the kernel rarely fills its socket,
                // so the writes seldom wait: let the worker thread's other
                // connections run once per RESIDENT_WRITE.
                since_yield += n;
                if since_yield >= RESIDENT_WRITE {
                    since_yield = 0;
                    tokio::task::yield_now().await;
                }
            }
            return out.flush().await.map_err(Failure::closed);
        }
        Source::Reader(reader) => reader,
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) => {
                // A data fault's error already says what happened.
                let reason = if attempt.fault.is_some() {
                    err.to_string()
                } else {
                    format!("read error: {err}")
                };
                let error = storage::Error::new(ErrorKind::LocalError, err);
                return Err(Failure {
                    status: 451,
                    reason,
                    error,
                });
            }
        };
        out.write_all(&buf[..n]).await.map_err(Failure::closed)?;
        attempt.bytes_sent += n as u64;
    }
    out.flush().await.map_err(Failure::closed)
}

#[async_trait]
impl StorageBackend<DefaultUser> for CatalogStorage {
    type Metadata = Meta;

    fn supported_features(&self) -> u32 {
        storage::FEATURE_RESTART
    }

    async fn metadata<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
    ) -> storage::Result<Self::Metadata> {
        // SIZE and MDTM (and RNFR, MLST) all come here.
        let command = self.session.current_command();
        let key = Self::key(path.as_ref()).map_err(|err| {
            // A hostile path is refused with a record, as by RETR.
            let attempt = self.session.attempt(Self::record_path(path.as_ref()));
            let reason = format!("{command}: {err}");
            self.refuse(&attempt, 550, Outcome::Refused, reason, not_available())
        })?;
        self.session.named(&key);
        let Some(entry) = self.catalog().metadata(&key).filter(|e| self.visible(e)) else {
            // A module's downloader asks SIZE before RETR: a missing or
            // invalid package leaves a record here, as over HTTP.
            return Err(self.refuse_lookup(&key, &command));
        };
        if entry.is_folder() && command == "SIZE" {
            // A folder cannot be transferred, so it has no SIZE (RFC 3659
            // §4.2): 550, as for a missing file, without a record (no
            // package was asked for).
            return Err(storage::Error::from(ErrorKind::PermanentFileNotAvailable));
        }
        // SIZE and MDTM (and RNFR, MLST) all come here.
        if let Some(f) = self.session.fault(Some(&key), |c| c == "SIZE") {
            return Err(self.session.fault_reply(&f, "SIZE", &key));
        }
        if command == "SIZE" && !entry.is_folder() {
            *lock(&self.session.sized) = Some(key);
        }
        Ok(Meta::from(&entry))
    }

    async fn list<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
    ) -> storage::Result<Vec<Fileinfo<PathBuf, Self::Metadata>>>
    where
        Self::Metadata: storage::Metadata,
    {
        self.session.data_connected();
        let dir = Self::key(path.as_ref()).map_err(|_| not_available())?;
        // LIST, NLST and MLSD all come here.
        if let Some(f) = self.session.fault(Some(&dir), |c| c == "LIST") {
            return Err(self.session.fault_reply(&f, "LIST", &dir));
        }
        let entries = match self.catalog().list(&dir) {
            Some(entries) => entries,
            // `LIST <file>` describes that file (RFC 959 §4.1.3).
            None => {
                let file = self.catalog().metadata(&dir).filter(|e| !e.is_folder());
                vec![file.ok_or_else(not_available)?]
            }
        };
        Ok(entries
            .iter()
            .filter(|e| self.visible(e))
            .map(|e| Fileinfo {
                // libunftp prints the last component of the path.
                path: PathBuf::from(e.name()),
                metadata: Meta::from(e),
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
                .catalog()
                .open(&pkg, start_pos.min(pkg.size)..pkg.size)
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
        // Held for the whole transfer so shutdown waits for it; taken
        // before the waiting RETR's own is let go, so a shutdown never
        // sees no transfer in between.
        let _transfer = self.session.shared.transfers.token();
        self.session.data_connected();
        // Its data connection came: the RETR no longer waits for it.
        lock(&self.session.retr_waiting).take();
        let requested = path.as_ref().to_string_lossy();
        self.session.named(requested.trim_start_matches('/'));
        let mut attempt = self.session.attempt(requested.trim_start_matches('/'));
        attempt.range_start = start_pos;
        let key = self.resolve(&attempt, path.as_ref())?;
        self.await_validation(&key).await;
        let package = self.authorize(&mut attempt, key)?;
        self.apply_reply_faults(&mut attempt)?;
        let peer = PeerWatch::default();
        let source = self.open(&mut attempt, &package, &peer).await?;
        self.send(attempt, &package, source, output, &peer).await
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
        // STOR/APPE come with a data connection.
        self.session.data_connected();
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
        let key = Self::key(path.as_ref());
        match key {
            Ok(key) if self.catalog().metadata(&key).is_some_and(|e| e.is_folder()) => {
                match self.session.fault(Some(&key), |c| c == "CWD") {
                    Some(f) => Err(self.session.fault_reply(&f, "CWD", &key)),
                    None => Ok(()),
                }
            }
            Err(err) => {
                // A hostile path is refused with a record, as by RETR.
                let attempt = self.session.attempt(Self::record_path(path.as_ref()));
                let missing = storage::Error::from(ErrorKind::PermanentDirectoryNotAvailable);
                Err(self.refuse(
                    &attempt,
                    550,
                    Outcome::Refused,
                    format!("CWD: {err}"),
                    missing,
                ))
            }
            Ok(_) => {
                let attempt = self.session.attempt(Self::record_path(path.as_ref()));
                let reason = "CWD: no such folder";
                let missing = storage::Error::from(ErrorKind::PermanentDirectoryNotAvailable);
                Err(self.refuse(&attempt, 550, Outcome::NotFound, reason, missing))
            }
        }
    }
}

/// The end of a record's reason for a data connection that could not be
/// written ([`cut_short`] puts the acknowledged count before it).
fn write_failure(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::TimedOut => format!("then stopped acknowledging ({err}): write stalled"),
        io::ErrorKind::ConnectionReset => "then reset the data connection".into(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted => {
            "then closed the data connection".into()
        }
        _ => format!("then the data connection failed: {err}"),
    }
}

/// Writes the `RETR` record exactly once: when the transfer ends, or — if
/// the transfer future is dropped (session killed, shutdown) — on drop. A
/// transfer that ends short waits (in a task) for the kernel's final
/// counters of its data connection, which arrive when libunftp closes it.
struct RetrRecord {
    session: Arc<FtpSession>,
    attempt: Attempt,
    ack: Option<Arc<AckTracker>>,
    done: bool,
    /// Every byte was written and the client closed the data connection
    /// before a look saw them all acknowledged: the final counters decide
    /// between `complete` and `aborted`.
    closed_after_last_byte: bool,
}

/// How long a record of a transfer cut short waits for the data
/// connection's final counters (libunftp closes it right after `RETR`).
const CLOSE_WAIT_LIMIT: Duration = Duration::from_secs(2);

impl RetrRecord {
    /// Every byte was written: waits for the peer to acknowledge them
    /// (or stall, or leave) and records the result.
    async fn delivered(&mut self, stall: Duration) -> storage::Result<u64> {
        let sent = self.attempt.bytes_sent;
        let Some(ack) = self.ack.clone() else {
            self.attempt.bytes_acked = sent;
            self.finish(226, Outcome::Complete, "sent (acknowledgements unreadable)");
            return Ok(sent);
        };
        // Waiting ends with the shutdown grace period at the latest.
        let closing = self.session.shared.closing.clone();
        // A data connection carries one body, as it is (no TLS).
        let span = Span::plain(ack.body_start(), sent);
        let delivery = ack
            .wait_all_acked(span, stall, closing.cancelled_owned())
            .await;
        if delivery == Delivery::Acked {
            self.attempt.bytes_acked = sent;
            self.finish(226, Outcome::Complete, "acknowledged");
            return Ok(sent);
        }
        let ending = match delivery {
            Delivery::Stalled => format!("then stopped acknowledging for {} s", stall.as_secs()),
            Delivery::Cancelled => "then the server shut down".to_string(),
            _ => {
                self.closed_after_last_byte = true;
                "then closed the data connection".to_string()
            }
        };
        self.finish(426, Outcome::Aborted, ending);
        Err(storage::Error::from(ErrorKind::ConnectionClosed))
    }

    /// Records the transfer as ending with `status`, `outcome` and
    /// `reason`; an aborted one after its data connection's final counters
    /// (for the acknowledged count) and with that count in the reason.
    fn finish(&mut self, status: u16, outcome: Outcome, reason: impl Into<String>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let reason = reason.into();
        let (Outcome::Aborted, Some(ack)) = (outcome, self.ack.clone()) else {
            self.session.emit(&self.attempt, status, outcome, reason);
            return;
        };
        let session = Arc::clone(&self.session);
        let mut attempt = self.attempt.clone();
        attempt.end_now();
        let transfers = session.shared.transfers.clone();
        let closed_after_last_byte = self.closed_after_last_byte;
        transfers.spawn(async move {
            ack.refresh();
            ack.wait_closed(CLOSE_WAIT_LIMIT).await;
            attempt.bytes_acked = ack.body_acked(ack.body_start(), attempt.bytes_sent, 0);
            let total = attempt
                .package
                .as_ref()
                .map_or(attempt.bytes_sent, |(size, _)| size - attempt.range_start);
            if closed_after_last_byte && attempt.bytes_acked >= total {
                // The peer's TCP took every byte; the client closed first
                // (curl with a byte range does).
                let reason = format!(
                    "acknowledged; the client closed the data connection before the end of file (answered {status})"
                );
                session.emit(&attempt, status, Outcome::Complete, reason);
                return;
            }
            let reason = if reason.starts_with("then ") {
                cut_short(attempt.bytes_acked, total, &reason)
            } else {
                format!(
                    "{reason} ({})",
                    cut_short(attempt.bytes_acked, total, "then the transfer ended")
                )
            };
            session.emit(&attempt, status, outcome, reason);
        });
    }
}

impl Drop for RetrRecord {
    fn drop(&mut self) {
        let reason = if self.session.shared.shutdown.is_cancelled() {
            "then the server shut down"
        } else {
            "then the transfer was cancelled"
        };
        self.finish(426, Outcome::Aborted, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A passive port handed to the next session while the previous data
    /// connection on it, from the same address, has not been written to
    /// yet: both are candidates, and only the mark tells them apart.
    #[tokio::test]
    async fn the_data_connection_is_the_one_with_its_listeners_mark() {
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std.local_addr().unwrap();
        let socket2 = socket2::SockRef::from(&std);
        let mut accepted = Vec::new();
        let mut clients = Vec::new();
        for mark in [131_073, 131_074] {
            // The kernel copies the listener's value at accept time.
            socket2.set_tcp_notsent_lowat(mark).unwrap();
            clients.push(std::net::TcpStream::connect(addr).unwrap());
            accepted.push(std.accept().unwrap());
        }
        let candidates = delivery::candidates_by_local_port(addr.port(), addr.ip()).unwrap();
        assert_eq!(candidates.len(), 2, "{candidates:?}");
        let port = |lowat| passive::PassivePort {
            addr,
            lowat,
            next_fd: None,
        };
        for (mark, (server, peer)) in [131_073, 131_074].into_iter().zip(&accepted) {
            let (ends, socket) = marked(&candidates, port(mark)).expect("a marked candidate");
            assert_eq!(ends.peer, *peer);
            assert_eq!(ends.local, server.local_addr().unwrap());
            assert_eq!(
                socket.peer_addr().unwrap(),
                *peer,
                "the handle is on that connection's socket"
            );
        }
        assert!(marked(&candidates, port(131_075)).is_none());
    }

    #[test]
    fn login_delays_are_said_rounded() {
        assert_eq!(spoken_delay(Duration::from_millis(7_990)), "8 s");
        assert_eq!(spoken_delay(Duration::from_secs(2)), "2 s");
        assert_eq!(spoken_delay(Duration::from_millis(400)), "400 ms");
    }

    #[test]
    fn constant_time_eq_compares_whole_secrets() {
        assert!(constant_time_eq(b"test", b"test"));
        assert!(!constant_time_eq(b"test", b"tesT"));
        assert!(!constant_time_eq(b"test", b"test1"));
    }
}

//! Passive data listeners (`PASV`/`EPSV`, RFC 959 §4.1.2, RFC 2428 §3):
//! bound for one session, answering only that session's control peer.
//!
//! libunftp binds a listener per `PASV`, accepts the first connection that
//! arrives and keeps the listener 15 s otherwise. Left like that, another
//! host can take a session's data connection, and one session can hold as
//! many ports as it sends `PASV`s. Here, as vsftpd's `pasv_promiscuous=NO`:
//!
//! - each listener carries a kernel socket filter (classic BPF, attached
//!   with `SO_ATTACH_FILTER` through `socket2`) that drops every packet
//!   whose source address is not the control peer's — a connection from
//!   elsewhere never reaches the accept queue, so it cannot consume the
//!   listener and the right client still connects;
//! - a session has at most one outstanding listener: a new `PASV` shuts
//!   the previous one down (libunftp's wait on it ends at once);
//! - one address holds at most half of the passive port range in
//!   outstanding listeners, so no host can starve the others of ports
//!   (the rest are answered `425`).
//!
//! The listener is released as soon as the transfer or listing it was
//! opened for starts. Released unused — after the data timeout (at most
//! libunftp's own 15 s) or when the control connection closes — while a
//! `RETR` waits for its data connection, that `RETR` gets `425` and an
//! `aborted` record with status 425 naming its path: the server-side view
//! of a module's `601` when a firewall or NAT blocks the data port. A
//! listener no `RETR` asked for leaves no record.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use socket2::{Domain, SockFilter, Socket, Type};

use super::{FtpSession, PassiveRefusal, lock};
use crate::dlog::Outcome;

/// How long libunftp waits for the data connection after `PASV` (its
/// fixed accept timeout); an unused listener is released after it.
pub const PASSIVE_ACCEPT_TIMEOUT: Duration = Duration::from_secs(15);

/// Outstanding passive listeners per client address, capped so that one
/// address never holds more than half of the passive port range.
#[derive(Debug)]
pub struct PassiveRegistry {
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    cap: usize,
}

impl PassiveRegistry {
    /// A registry for `ports` (`--passive-ports`): each address may hold
    /// half of them (at least one).
    pub fn new(ports: &RangeInclusive<u16>) -> Arc<Self> {
        let span = usize::from(ports.end().saturating_sub(*ports.start())) + 1;
        Arc::new(PassiveRegistry {
            per_ip: Mutex::new(HashMap::new()),
            cap: (span / 2).max(1),
        })
    }

    /// Takes a slot for `ip`, or `None` when it already holds its share.
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut map = lock(&self.per_ip);
        let held = map.entry(ip).or_insert(0);
        if *held >= self.cap {
            return None;
        }
        *held += 1;
        Some(Slot {
            ip,
            registry: Arc::clone(self),
        })
    }

    /// Listeners `ip` holds now.
    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> usize {
        lock(&self.per_ip).get(&ip).copied().unwrap_or(0)
    }
}

/// One address's place in the [`PassiveRegistry`], given back on drop.
#[derive(Debug)]
struct Slot {
    ip: IpAddr,
    registry: Arc<PassiveRegistry>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = lock(&self.registry.per_ip);
        if let Some(held) = map.get_mut(&self.ip) {
            *held -= 1;
            if *held == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// A session's outstanding passive listener: a duplicate of the socket
/// libunftp listens on, so it can be shut down from here. Dropping it shuts
/// the listener down (harmless once the data connection was accepted: the
/// accepted socket is separate) and gives the slot back.
#[derive(Debug)]
pub struct Outstanding {
    socket: Socket,
    generation: u64,
    _slot: Slot,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        // A listening socket shut down leaves LISTEN; libunftp's accept
        // returns an error and its task ends.
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

/// Where a session keeps its one outstanding listener.
#[derive(Debug, Default)]
pub struct PassiveState {
    current: Mutex<Option<Outstanding>>,
    generation: AtomicU64,
}

impl PassiveState {
    /// Takes the outstanding listener out, if any (dropping it shuts it
    /// down).
    pub fn take(&self) -> Option<Outstanding> {
        lock(&self.current).take()
    }

    /// Installs a new listener and returns its generation.
    fn install(&self, socket: Socket, slot: Slot) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *lock(&self.current) = Some(Outstanding {
            socket,
            generation,
            _slot: slot,
        });
        generation
    }

    /// Whether no listener is outstanding.
    pub fn is_empty(&self) -> bool {
        lock(&self.current).is_none()
    }

    /// Takes the listener out if it is still the one of `generation`.
    fn take_if(&self, generation: u64) -> Option<Outstanding> {
        let mut current = lock(&self.current);
        if current.as_ref().is_some_and(|o| o.generation == generation) {
            return current.take();
        }
        None
    }
}

impl FtpSession {
    /// Gives up a passive listener that got no data connection (`why`).
    /// When a `RETR` was answered `150` and waits for that connection —
    /// the usual cause of an FTP `601` behind a firewall or NAT that
    /// blocks the data port — the attempt is recorded (`425`, `aborted`)
    /// and `true` returned. A listener no `RETR` asked for (a client that
    /// sent `EPSV`, then `SIZE` of a missing package, or `QUIT`) leaves no
    /// record: the attempt, if any, has its own.
    pub(super) fn passive_unused(&self, listener: Outstanding, why: &str, status: u16) -> bool {
        drop(listener);
        self.retr_unanswered(why, status)
    }

    /// Records the `RETR` waiting for its data connection, if there is one,
    /// as given up (`why`), with `status`, the last reply it got (`425`
    /// when the server answers it so, `150` when the client left first);
    /// `true` when there was one.
    pub(super) fn retr_unanswered(&self, why: &str, status: u16) -> bool {
        let Some(waiting) = lock(&self.retr_waiting).take() else {
            return false;
        };
        self.emit(
            &waiting.attempt,
            status,
            Outcome::Aborted,
            format!("RETR answered 150, then {why}"),
        );
        true
    }

    /// `RETR` number `retr` came while no passive listener was
    /// outstanding: either none was asked for (libunftp answers `425`
    /// itself, and the record is written then), or the one asked for had
    /// expired or was refused (libunftp still answers `150`, on the
    /// earlier listener's channel, and would wait for good: no later
    /// listener serves it). After `after`, if that `RETR` still waits, it
    /// gets its `425` and record.
    pub(super) fn retr_without_listener(session: Weak<FtpSession>, retr: u64, after: Duration) {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let Some(session) = session.upgrade() else {
                return;
            };
            if !matches!(&*lock(&session.retr_waiting), Some(waiting) if waiting.n == retr) {
                return;
            }
            let why = match lock(&session.passive_refused).take() {
                Some(refusal) => {
                    format!(
                        "no data connection: its PASV/EPSV was refused ({}): answered 425",
                        refusal.why
                    )
                }
                None => {
                    "no data connection: its PASV/EPSV listener had expired: answered 425".into()
                }
            };
            if session.retr_unanswered(&why, 425) {
                session.data_expired.notify_one();
            }
        });
    }

    /// Gives up the listener of `generation` after the data timeout if no
    /// data connection came; a `RETR` waiting on it gets its `425`
    /// (libunftp would leave the client waiting after `150` for good).
    fn expire_later(session: Weak<FtpSession>, generation: u64, after: Duration) {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let Some(session) = session.upgrade() else {
                return;
            };
            if let Some(listener) = session.passive_state.take_if(generation) {
                // The data connection came and its transfer is about to
                // start (the RETR just logged, the storage not called yet):
                // not a connection that never came.
                if session.data_connection_accepted() {
                    return;
                }
                let why = format!(
                    "no data connection within {} s after PASV/EPSV: answered 425",
                    after.as_secs_f32()
                );
                if session.passive_unused(listener, &why, 425) {
                    session.data_expired.notify_one();
                }
            }
        });
    }
}

/// Binds passive data ports like libunftp's default (a random port of the
/// range, a few tries) on the control connection's own local address,
/// filtered to the control peer; an `ftp-reply` rule for `PASV`/`EPSV`
/// makes binding fail and libunftp answers 425. The binder cannot tell
/// PASV from EPSV, so a rule naming either covers both.
#[derive(Debug)]
pub struct PassiveBinder {
    /// The session the listener is for.
    pub session: Arc<FtpSession>,
}

#[async_trait]
impl libunftp::options::Binder for PassiveBinder {
    async fn bind(
        &mut self,
        _relay_addr: IpAddr,
        passive_ports: RangeInclusive<u16>,
    ) -> io::Result<tokio::net::TcpSocket> {
        let session = &self.session;
        if let Some(fault) = session.fault(None, |c| c == "PASV" || c == "EPSV") {
            // Recorded with the attempt it ends, naming its package: by the
            // RETR that finds no data connection, or at the session's end.
            session.passive_state.take();
            *lock(&session.passive_refused) = Some(PassiveRefusal {
                why: "fault: reply 425 to PASV/EPSV".to_string(),
                fault: Some(fault.name.clone()),
            });
            return Err(io::Error::other("fault: passive port refused"));
        }
        // The old listener goes first (its slot counts against the cap),
        // without a record: a session repeating PASV must not grow the log.
        session.passive_state.take();
        let peer = session.peer.ip().to_canonical();
        let Some(slot) = session.passive_registry.acquire(peer) else {
            tracing::warn!(%peer, "PASV refused: this address holds its share of passive ports");
            let why = format!(
                "{peer} holds its share of passive ports: {} listeners, half of --passive-ports",
                session.passive_registry.cap
            );
            *lock(&session.passive_refused) = Some(PassiveRefusal { why, fault: None });
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "too many outstanding passive listeners for this address",
            ));
        };
        let local = session.local.ip().to_canonical();
        let span = u32::from(passive_ports.end() - passive_ports.start()) + 1;
        let mut last = io::Error::new(io::ErrorKind::AddrInUse, "no free passive port");
        for _ in 0..16 {
            let port = *passive_ports.start() as u32 + rand::random::<u32>() % span;
            let addr = SocketAddr::new(local, port as u16);
            let lowat = crate::serve::NOTSENT_LOWAT + next_mark();
            match bind_filtered(addr, peer, lowat) {
                Ok(socket) => {
                    let keep = socket.try_clone()?;
                    // The data connection will most likely get this number.
                    let next_fd = crate::serve::zerocopy::lowest_free_descriptor(&keep);
                    let generation = session.passive_state.install(keep, slot);
                    // The client asked again after a refusal (curl falls
                    // back from EPSV to PASV): the same download goes on,
                    // and its record names the rule that refused the first.
                    let refused = lock(&session.passive_refused).take();
                    if let Some(fault) = refused.and_then(|r| r.fault) {
                        *lock(&session.carried_fault) = Some(fault);
                    }
                    let weak = Arc::downgrade(session);
                    FtpSession::expire_later(weak, generation, session.data_timeout);
                    *lock(&session.passive) = Some(PassivePort {
                        addr,
                        lowat,
                        next_fd,
                    });
                    let std: std::net::TcpStream = socket.into();
                    return Ok(tokio::net::TcpSocket::from_std_stream(std));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// A session's latest passive listener, and how to know its data
/// connection for certain.
#[derive(Debug, Clone, Copy)]
pub struct PassivePort {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The `TCP_NOTSENT_LOWAT` it was given, in bytes: the kernel copies it
    /// into the connection it accepts, and it differs from every other
    /// listener's of the last 4,096 ([`next_mark`]), so among the
    /// connections on a reused port from one address the one with this
    /// value is the data connection.
    pub lowat: u32,
    /// The lowest free descriptor number when the listener was bound: the
    /// one the accepted data connection most likely has
    /// ([`crate::serve::zerocopy::own_socket`]).
    pub next_fd: Option<i32>,
}

/// A listener's mark: 1 to 4,096 bytes added to [`crate::serve::NOTSENT_LOWAT`]
/// (at most a quarter more), different from the previous 4,095 listeners'
/// and from the values a transfer sets later
/// ([`crate::serve::stall::SLOW_LOWAT`], [`crate::serve::stall::FAST_LOWAT`],
/// [`crate::serve::stall::BULK_LOWAT`], and larger).
fn next_mark() -> u32 {
    const _: () = assert!(
        crate::serve::NOTSENT_LOWAT + 4096 < crate::serve::stall::SLOW_LOWAT
            && crate::serve::stall::SLOW_LOWAT < crate::serve::stall::FAST_LOWAT
            && crate::serve::stall::SLOW_LOWAT < crate::serve::stall::BULK_LOWAT
    );
    static NEXT: AtomicU64 = AtomicU64::new(0);
    (NEXT.fetch_add(1, Ordering::Relaxed) % 4096) as u32 + 1
}

/// A non-blocking TCP socket bound to `addr` that only `peer` can reach,
/// with `lowat` as its `TCP_NOTSENT_LOWAT` (inherited by what it accepts).
fn bind_filtered(addr: SocketAddr, peer: IpAddr, lowat: u32) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_notsent_lowat(lowat)?;
    socket.attach_filter(&only_from(peer))?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// A classic BPF program (Linux `Documentation/networking/filter.rst`)
/// that accepts packets whose IP source address is `peer` and drops the
/// rest. A TCP socket filter runs with the packet at its TCP header; the
/// IP header is reached through the `SKF_NET_OFF` base.
fn only_from(peer: IpAddr) -> Vec<SockFilter> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const SKF_NET_OFF: i32 = -0x10_0000;
    // Source address: IPv4 header bytes 12..16, IPv6 header bytes 8..24.
    let (first, words): (i32, Vec<u32>) = match peer {
        IpAddr::V4(v4) => (12, vec![u32::from(v4)]),
        IpAddr::V6(v6) => (
            8,
            v6.octets()
                .chunks(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
    };
    let mut program = Vec::with_capacity(words.len() * 2 + 2);
    for (i, word) in words.iter().enumerate() {
        // On a mismatch jump over the rest to the final "drop".
        let to_drop = u8::try_from((words.len() - i - 1) * 2 + 1).unwrap_or(u8::MAX);
        let offset = (SKF_NET_OFF + first + 4 * i as i32) as u32;
        program.push(SockFilter::new(LD_W_ABS, 0, 0, offset));
        program.push(SockFilter::new(JEQ_K, 0, to_drop, *word));
    }
    program.push(SockFilter::new(RET_K, 0, 0, u32::MAX));
    program.push(SockFilter::new(RET_K, 0, 0, 0));
    program
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(peer: &str) -> std::net::TcpListener {
        let socket = bind_filtered(
            "127.0.0.1:0".parse().unwrap(),
            peer.parse().unwrap(),
            crate::serve::NOTSENT_LOWAT,
        )
        .unwrap();
        socket.set_nonblocking(false).unwrap();
        socket.listen(8).unwrap();
        socket.into()
    }

    /// Connects from `from` with a short timeout: whether the handshake
    /// completed.
    fn connects(from: &str, to: SocketAddr) -> bool {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let from: SocketAddr = format!("{from}:0").parse().unwrap();
        socket.bind(&from.into()).unwrap();
        socket
            .connect_timeout(&to.into(), Duration::from_millis(300))
            .is_ok()
    }

    #[test]
    fn the_filter_lets_only_the_control_peer_in() {
        let listener = listen("127.0.0.1");
        let addr = listener.local_addr().unwrap();
        assert!(!connects("127.0.0.2", addr), "another address got in");
        assert!(connects("127.0.0.1", addr), "the control peer was kept out");
        let (_, from) = listener.accept().unwrap();
        assert_eq!(from.ip().to_string(), "127.0.0.1");
    }

    #[test]
    fn the_ipv6_filter_compares_the_whole_address() {
        let listen6 = |peer: &str| -> Option<std::net::TcpListener> {
            let socket = bind_filtered(
                "[::1]:0".parse().unwrap(),
                peer.parse().unwrap(),
                crate::serve::NOTSENT_LOWAT,
            )
            .ok()?;
            socket.set_nonblocking(false).unwrap();
            socket.listen(8).unwrap();
            Some(socket.into())
        };
        let connects6 = |to: SocketAddr| {
            std::net::TcpStream::connect_timeout(&to, Duration::from_millis(300)).is_ok()
        };
        // Machines without IPv6 loopback have nothing to test here.
        let Some(open) = listen6("::1") else { return };
        assert!(connects6(open.local_addr().unwrap()));
        // Same last word as ::1, another first word: kept out.
        let closed = listen6("2001:db8::1").unwrap();
        assert!(!connects6(closed.local_addr().unwrap()));
    }

    #[test]
    fn an_address_holds_half_the_range_and_gets_slots_back() {
        let registry = PassiveRegistry::new(&(50000..=50003));
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let a = registry.acquire(ip).unwrap();
        let b = registry.acquire(ip).unwrap();
        assert!(registry.acquire(ip).is_none());
        assert!(registry.acquire("127.0.0.1".parse().unwrap()).is_some());
        drop(a);
        assert_eq!(registry.held(ip), 1);
        drop(b);
        assert_eq!(registry.held(ip), 0);
    }
}

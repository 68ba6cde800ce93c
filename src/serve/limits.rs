//! Connection limits, enforced in the one accept loop (`serve::accept`).
//!
//! Every connection of every package listener holds a [`Permit`] for its
//! whole life. Over a limit the server answers at once — HTTP `503` with
//! `Retry-After`, FTP `421`, HTTPS a close (a reply would need a TLS
//! handshake first) — and logs a `refused` record, at most one per peer
//! address per second, so a flood cannot grow the log without bound: the
//! refusals held back meanwhile are counted into the next record
//! (`more_refused`), which the first of them writes when the second ends
//! if no later refusal has. Anchors: nginx `limit_conn`,
//! vsftpd `max_clients` / `max_per_ip`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::lock;
use crate::dlog::{Attempt, DownloadLog, Outcome, Protocol};

/// Default of `--max-connections`: open connections over all listeners.
/// Stops one host (or a flood from many) exhausting file descriptors and
/// memory; 10,000 slow module downloads fit below it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Default of `--max-connections-per-ip`. Generous on purpose: modules
/// behind a carrier's NAT share public addresses, and a FOTA campaign
/// starts many of them at once; it still stops one host holding thousands
/// of idle connections.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;

/// How often one peer address leaves a `refused` record for going over a
/// limit (the count of the others goes into the next one).
const REFUSED_RECORD_INTERVAL: Duration = Duration::from_secs(1);

/// `Retry-After` of the `503` over a limit, in seconds.
const RETRY_AFTER_SECS: u64 = 5;

/// The limits and the connections open now.
#[derive(Debug)]
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<Open>,
    refused: Mutex<HashMap<IpAddr, Refusals>>,
    /// A descriptor held in reserve (`/dev/null`): when `accept` fails for
    /// want of descriptors it is closed, the waiting connection accepted on
    /// it, answered and closed, and the spare opened again — the client
    /// hears why instead of waiting in the backlog (libuv's and nginx's
    /// `EMFILE` remedy).
    spare: Mutex<Option<std::fs::File>>,
    /// Whether `spare` is closed: checked without the lock on every
    /// connection's accept and end ([`ConnLimits::restore_spare`]).
    spare_missing: AtomicBool,
}

/// One peer address's refusals since its last `refused` record.
#[derive(Debug)]
struct Refusals {
    /// When its last record was made.
    recorded: Instant,
    /// Refusals since then without a record of their own.
    held: u64,
    /// Whether a task waits to record them ([`ConnLimits::take_held`]).
    armed: bool,
}

/// What [`ConnLimits::record_refusal`] makes of a refusal.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Record it now, with the count of earlier ones held back.
    Record { held: u64 },
    /// Hold it back (counted); when `flush_at` is given, this refusal's
    /// task records what is held then.
    Hold { flush_at: Option<Instant> },
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Which limit a connection went over, with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// `--max-connections`.
    Total(usize),
    /// `--max-connections-per-ip`.
    PerIp(usize),
    /// The process ran out of file descriptors (`EMFILE`/`ENFILE`): the
    /// connection was accepted on the spare descriptor to be answered.
    Descriptors,
}

/// One open connection's place under the limits; dropping it frees it.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        {
            let mut open = lock(&self.limits.open);
            open.total = open.total.saturating_sub(1);
            if let Some(n) = open.per_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    open.per_ip.remove(&self.ip);
                }
            }
        }
        // The connection's descriptor is closed by now (the permit is
        // dropped after it): a spare lost to another thread that took the
        // descriptor it freed gets this one.
        self.limits.restore_spare();
    }
}

impl ConnLimits {
    /// Limits of `max_total` connections in all and `max_per_ip` from one
    /// address (IPv4-mapped IPv6 counted as IPv4). Zero is read as one.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        let spare = std::fs::File::open("/dev/null").ok();
        let missing = spare.is_none();
        Arc::new(ConnLimits {
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
            open: Mutex::default(),
            refused: Mutex::default(),
            spare: Mutex::new(spare),
            spare_missing: AtomicBool::new(missing),
        })
    }

    /// Closes the spare descriptor so one connection can be accepted and
    /// answered; `false` when it is already in use (or could not be
    /// opened).
    pub(crate) fn release_spare(&self) -> bool {
        let mut spare = lock(&self.spare);
        self.spare_missing.store(true, Ordering::Release);
        spare.take().is_some()
    }

    /// Opens the spare descriptor again if it is not open: once the
    /// answered connection is closed, and whenever a connection ends or is
    /// accepted (a descriptor may be free again), so a spare whose freed
    /// descriptor another thread took is not lost for good.
    pub(crate) fn restore_spare(&self) {
        if !self.spare_missing.load(Ordering::Acquire) {
            return;
        }
        let mut spare = lock(&self.spare);
        if spare.is_none() {
            *spare = std::fs::File::open("/dev/null").ok();
        }
        self.spare_missing.store(spare.is_none(), Ordering::Release);
    }

    /// Connections open now (permits held).
    pub fn open_count(&self) -> usize {
        lock(&self.open).total
    }

    /// A permit for a new connection from `ip`, or the limit it would go
    /// over.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, LimitHit> {
        let ip = ip.to_canonical();
        let mut open = lock(&self.open);
        if open.total >= self.max_total {
            return Err(LimitHit::Total(self.max_total));
        }
        let from_ip = open.per_ip.entry(ip).or_default();
        if *from_ip >= self.max_per_ip {
            return Err(LimitHit::PerIp(self.max_per_ip));
        }
        *from_ip += 1;
        open.total += 1;
        Ok(Permit {
            limits: Arc::clone(self),
            ip,
        })
    }

    /// Whether a refusal of `ip` now gets a record: at most one per
    /// address per [`REFUSED_RECORD_INTERVAL`]; the others are held back,
    /// counted, and recorded together by the first held one's task once
    /// the interval ends ([`ConnLimits::take_held`]), so a burst's last
    /// refusals are not lost when no later one comes.
    fn record_refusal(&self, ip: IpAddr) -> Refusal {
        let mut refused = lock(&self.refused);
        let now = Instant::now();
        // Bound the table itself: forget peers quiet for a while (none
        // whose held refusals wait for their record).
        if refused.len() > 10_000 {
            refused
                .retain(|_, r| r.armed || now.duration_since(r.recorded) < REFUSED_RECORD_INTERVAL);
        }
        match refused.get_mut(&ip) {
            Some(r) if now.duration_since(r.recorded) < REFUSED_RECORD_INTERVAL => {
                r.held += 1;
                let flush_at = (!r.armed).then(|| r.recorded + REFUSED_RECORD_INTERVAL);
                r.armed = true;
                Refusal::Hold { flush_at }
            }
            Some(r) => {
                r.recorded = now;
                Refusal::Record {
                    held: std::mem::take(&mut r.held),
                }
            }
            None => {
                refused.insert(
                    ip,
                    Refusals {
                        recorded: now,
                        held: 0,
                        armed: false,
                    },
                );
                Refusal::Record { held: 0 }
            }
        }
    }

    /// The refusals of `ip` held back since its last record, now recorded
    /// (0: a later refusal recorded them already).
    fn take_held(&self, ip: IpAddr) -> u64 {
        let mut refused = lock(&self.refused);
        match refused.get_mut(&ip) {
            Some(r) => {
                r.armed = false;
                let held = std::mem::take(&mut r.held);
                if held > 0 {
                    r.recorded = Instant::now();
                }
                held
            }
            None => 0,
        }
    }
}

/// Answers a connection over a limit the way its protocol understands
/// (HTTP `503` + `Retry-After`, FTP `421`, HTTPS a close), logs the
/// rate-limited `refused` record, and closes it; for
/// [`LimitHit::Descriptors`] then opens the spare descriptor again.
pub(crate) async fn refuse(
    mut tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    protocol: Protocol,
    hit: LimitHit,
    limits: Arc<ConnLimits>,
    log: DownloadLog,
) {
    let (status, reply) = match protocol {
        Protocol::Http => (
            503,
            format!(
                "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {RETRY_AFTER_SECS}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        ),
        Protocol::Ftp => (421, "421 Too many connections, try again later.\r\n".into()),
        // Nothing readable can go before a TLS handshake: a close, and
        // status 0 (no answer) in the record.
        Protocol::Https => (crate::serve::http::NO_ANSWER, String::new()),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(reply.as_bytes())).await;
    let _ = tcp.shutdown().await;
    drop(tcp);
    if hit == LimitHit::Descriptors {
        // The connection held the spare descriptor; it is closed now.
        limits.restore_spare();
    }
    let ip = peer.ip().to_canonical();
    // This refusal and `more` others held back before it, in one record.
    let more = match limits.record_refusal(ip) {
        Refusal::Record { held } => held,
        Refusal::Hold { flush_at: None } => return,
        Refusal::Hold { flush_at: Some(at) } => {
            tokio::time::sleep_until(at.into()).await;
            match limits.take_held(ip) {
                0 => return,
                // This record stands for them all: it is one of them (the
                // first held, whose task waited) and `held - 1` more.
                held => held - 1,
            }
        }
    };
    let reason = match hit {
        LimitHit::Total(n) => {
            format!("connection limit: {n} connections open (--max-connections)")
        }
        LimitHit::PerIp(n) => {
            format!("connection limit: {n} connections open from {ip} (--max-connections-per-ip)")
        }
        LimitHit::Descriptors => {
            "out of file descriptors: the process's limit (ulimit -n) is reached".into()
        }
    };
    // The count is the record's `more_refused`, not its reason: records
    // of one limit keep one reason, which the campaign's failures count.
    let mut record = Attempt::start(protocol, peer, "").record(status, Outcome::Refused, reason);
    record.more_refused = more;
    log.emit(record);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_left_closed_is_opened_again_when_a_connection_ends() {
        let limits = ConnLimits::new(3, 2);
        let permit = limits.acquire("127.0.0.1".parse().unwrap()).unwrap();
        // Released for an answer whose connection never came back to
        // restore it (its descriptor was taken by another thread).
        assert!(limits.release_spare());
        assert!(!limits.release_spare(), "in use");
        drop(permit);
        assert!(
            limits.release_spare(),
            "opened again when the connection ended"
        );
    }

    #[test]
    fn permits_count_per_address_and_in_all_and_free_on_drop() {
        let limits = ConnLimits::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = limits.acquire(a).unwrap();
        let _p2 = limits.acquire(mapped).unwrap();
        assert_eq!(limits.acquire(a).unwrap_err(), LimitHit::PerIp(2));
        let _p3 = limits.acquire(b).unwrap();
        assert_eq!(limits.acquire(b).unwrap_err(), LimitHit::Total(3));
        drop(p1);
        assert!(limits.acquire(a).is_ok());
    }

    #[test]
    fn refusals_are_recorded_once_a_second_per_address_with_a_count() {
        let limits = ConnLimits::new(1, 1);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(limits.record_refusal(a), Refusal::Record { held: 0 });
        // The first one held back is told when to record what is held.
        let Refusal::Hold { flush_at: Some(at) } = limits.record_refusal(a) else {
            panic!("the first refusal held back arms the flush");
        };
        assert!(at > Instant::now() && at <= Instant::now() + REFUSED_RECORD_INTERVAL);
        assert_eq!(limits.record_refusal(a), Refusal::Hold { flush_at: None });
        assert_eq!(
            limits.record_refusal("127.0.0.2".parse().unwrap()),
            Refusal::Record { held: 0 }
        );
        // The flush takes the two held back; nothing is left for later.
        assert_eq!(limits.take_held(a), 2);
        assert_eq!(limits.take_held(a), 0);
        // A refusal a second after the last record is recorded at once,
        // with what was held back before it (none: the flush took them).
        lock(&limits.refused).get_mut(&a).unwrap().recorded -= REFUSED_RECORD_INTERVAL;
        assert_eq!(limits.record_refusal(a), Refusal::Record { held: 0 });
        // Held back, then a later refusal recorded before the flush ran:
        // it carries the count, and the flush finds nothing.
        assert!(matches!(limits.record_refusal(a), Refusal::Hold { .. }));
        lock(&limits.refused).get_mut(&a).unwrap().recorded -= REFUSED_RECORD_INTERVAL;
        assert_eq!(limits.record_refusal(a), Refusal::Record { held: 1 });
        assert_eq!(limits.take_held(a), 0);
    }
}

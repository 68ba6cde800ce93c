//! TCP-level delivery accounting: how much of a body the peer's TCP stack
//! acknowledged, read from the kernel with `sock_diag` (netlink, the
//! interface `ss` uses; see `sock_diag(7)`).
//!
//! A write returning means the kernel *accepted* the bytes into the socket's
//! send buffer, which Linux lets grow to 4 MiB; a module on a slow cellular
//! link may never receive them. The download log therefore counts what the
//! peer acknowledged (`tcpi_bytes_acked`, RFC 4898
//! `tcpEStatsAppHCThruOctetsAcked`) and calls an attempt complete only once
//! that count reaches the end of the body's [`Span`] in the connection's
//! byte stream: bytes written are `tcpi_bytes_acked` plus the
//! unacknowledged send queue (`idiag_wqueue`, the same figure as the
//! `SIOCOUTQ` ioctl), so a body's place in the stream is known.
//!
//! Why `sock_diag` and not `getsockopt(TCP_INFO)`: libunftp owns the FTP data
//! socket and hands the storage back-end only a boxed writer, so its file
//! descriptor is out of reach; the kernel's socket table, looked up by the
//! connection's 4-tuple, works the same for every front-end, and needs no
//! `unsafe`. One netlink socket per thread answers exact look-ups in
//! microseconds.
//!
//! A connection the peer resets is unhashed at once and no longer answers
//! look-ups, so its last counters would be lost; the kernel broadcasts each
//! TCP socket's final counters when it is destroyed (sock_diag multicast
//! groups `SKNLGRP_INET_TCP_DESTROY` / `SKNLGRP_INET6_TCP_DESTROY`), and one
//! listener thread hands them to the connection's [`AckTracker`]. Joining
//! those groups needs `CAP_NET_ADMIN` on some kernels; without it the
//! record uses the last look-up.
//!
//! Accuracy: over plain HTTP and FTP the acknowledged body figure is exact.
//! Over HTTPS the kernel counts ciphertext. Whether a body was acknowledged
//! whole is still exact: its [`Span`] ends where the ciphertext of its last
//! record ends (the connection's written count at the first flush completed
//! after its last byte was handed to hyper). The figure for a body cut short is
//! [`tls_plaintext_estimate`], within one TLS record (16 KiB) of the
//! plaintext the peer acknowledged.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::nlas::Nla;
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags,
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

use super::lock;

/// `TCP_ESTABLISHED` in the kernel's state numbering
/// (`include/net/tcp_states.h`).
const TCP_ESTABLISHED: u8 = 1;
/// `TCP_CLOSE_WAIT`: the peer sent FIN; the server may still be sending.
const TCP_CLOSE_WAIT: u8 = 8;
/// `TCP_LISTEN`.
const TCP_LISTEN: u8 = 10;

/// How often a connection whose write is blocked asks the kernel for
/// acknowledgement progress: the stall clock and the figure recorded when a
/// connection is reset both come from these look-ups. Each is one netlink
/// round trip of a few microseconds; 10,000 blocked connections cost about
/// 20,000 look-ups a second.
pub const ACK_POLL: Duration = Duration::from_millis(500);

/// Largest plaintext per TLS record (RFC 8446 §5.1, RFC 5246 §6.2.1).
const TLS_RECORD_PLAINTEXT: u64 = 16_384;

/// Per-record ciphertext overhead, in bytes, assumed until the handshake
/// has chosen a suite ([`tls_record_overhead`]): the largest of the suites
/// the server offers (TLS 1.2 AES-GCM).
pub const TLS_RECORD_OVERHEAD: u64 = 29;

/// Bytes each TLS record adds to its plaintext under `suite`: TLS 1.3 a
/// 5-byte header, a 1-byte content type and a 16-byte tag (22, RFC 8446
/// §5.2; rustls adds no padding); TLS 1.2 AES-GCM a 5-byte header, an
/// 8-byte explicit nonce and a 16-byte tag (29, RFC 5288 §3); TLS 1.2
/// ChaCha20-Poly1305 a header and a tag (21, RFC 7905 §2).
pub fn tls_record_overhead(suite: rustls::SupportedCipherSuite) -> u64 {
    use rustls::CipherSuite;
    match suite {
        rustls::SupportedCipherSuite::Tls13(_) => 22,
        rustls::SupportedCipherSuite::Tls12(tls12) => match tls12.common.suite {
            CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => 21,
            _ => TLS_RECORD_OVERHEAD,
        },
    }
}

/// The two ends of one TCP connection, as the server's socket sees them
/// (IPv4-mapped IPv6 addresses stay mapped: that is how the kernel files a
/// dual-stack socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpEnds {
    /// The server's address and port.
    pub local: SocketAddr,
    /// The client's address and port.
    pub peer: SocketAddr,
}

/// What the kernel says of one connection at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Bytes the peer acknowledged since the connection opened
    /// (`tcpi_bytes_acked`).
    pub bytes_acked: u64,
    /// Bytes written to the socket and not yet acknowledged (sent or not):
    /// `idiag_wqueue` = `write_seq - snd_una`.
    pub unacked: u64,
    /// Kernel TCP state (`TCP_ESTABLISHED` = 1, …).
    pub state: u8,
    /// Payload bytes received from the peer since the connection opened
    /// (`tcpi_bytes_received`, RFC 4898 `tcpEStatsAppHCThruOctetsReceived`).
    pub bytes_received: u64,
    /// Payload bytes the server sent since the connection opened, first
    /// transmissions only (`tcpi_bytes_sent`, Linux 4.19+; 0 before).
    pub bytes_sent: u64,
}

impl Snapshot {
    /// Whether the peer has closed its side (the socket is past
    /// `ESTABLISHED`: `CLOSE_WAIT` after its FIN, or later).
    pub fn peer_closed(&self) -> bool {
        self.state != TCP_ESTABLISHED
    }

    /// Bytes the server has written to the socket since it opened.
    pub fn written(&self) -> u64 {
        self.bytes_acked + self.unacked
    }
}

thread_local! {
    /// One netlink socket per thread: look-ups are synchronous kernel round
    /// trips, so a socket is never shared between concurrent requests.
    static DIAG: RefCell<Option<Socket>> = const { RefCell::new(None) };
}

fn open_diag() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    Ok(socket)
}

/// Runs `f` with this thread's netlink socket, opening it on first use and
/// dropping it after an error so the next call starts clean.
fn with_diag<T>(f: impl FnOnce(&Socket) -> io::Result<T>) -> io::Result<T> {
    DIAG.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(open_diag()?);
        }
        let Some(socket) = slot.as_ref() else {
            return Err(io::Error::other("sock_diag socket unavailable"));
        };
        let result = f(socket);
        if result.is_err() {
            *slot = None;
        }
        result
    })
}

fn socket_id(local: SocketAddr, peer: SocketAddr) -> SocketId {
    let mut id = if local.is_ipv4() {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    id.source_port = local.port();
    id.destination_port = peer.port();
    id.source_address = local.ip();
    id.destination_address = peer.ip();
    // INET_DIAG_NOCOOKIE: look the socket up by its addresses alone.
    id.cookie = [0xff; 8];
    id
}

fn send_request(socket: &Socket, flags: u16, family: u8, id: SocketId) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states: StateFlags::all(),
            socket_id: id,
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    Ok(())
}

fn snapshot_of(response: &InetResponse) -> Option<Snapshot> {
    let info = response.nlas.iter().find_map(|nla| match nla {
        Nla::TcpInfo(info) => Some(info),
        _ => None,
    })?;
    Some(Snapshot {
        bytes_acked: info.bytes_acked,
        unacked: u64::from(response.header.send_queue),
        state: response.header.state,
        bytes_received: info.bytes_received,
        bytes_sent: info.bytes_sent,
    })
}

/// Reads every netlink message of one answer, calling `each` per socket,
/// until the kernel says done (dump) or after the first answer (look-up).
fn read_answers(
    socket: &Socket,
    dump: bool,
    mut each: impl FnMut(&InetResponse),
) -> io::Result<()> {
    // One connection's answer (tcp_info and a few attributes) is well
    // under 4 KiB; a dump of many needs room for a batch.
    let mut small = [0u8; 4096];
    let mut large = Vec::new();
    let buf: &mut [u8] = if dump {
        large.resize(64 * 1024, 0);
        &mut large
    } else {
        &mut small
    };
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        let mut offset = 0;
        while offset < n {
            let message = <NetlinkMessage<SockDiagMessage>>::deserialize(&buf[offset..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    each(&response);
                }
                NetlinkPayload::Done(_) | NetlinkPayload::Error(_) => return Ok(()),
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
        if !dump {
            return Ok(());
        }
    }
}

/// What the kernel says of the connection `ends` now; `Ok(None)` when it no
/// longer has it (closed and gone, reset, or in `TIME_WAIT`, which keeps no
/// counters). `Err` only when netlink itself fails.
pub fn snapshot(ends: TcpEnds) -> io::Result<Option<Snapshot>> {
    let family = if ends.local.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    };
    with_diag(|socket| {
        send_request(
            socket,
            NLM_F_REQUEST,
            family,
            socket_id(ends.local, ends.peer),
        )?;
        let mut found = None;
        read_answers(socket, false, |response| {
            // A look-up for a connection that is gone can fall through to
            // the listening socket on the same port: that is not ours.
            let id = &response.header.socket_id;
            if response.header.state != TCP_LISTEN && id.destination_port == ends.peer.port() {
                found = snapshot_of(response);
            }
        })?;
        Ok(found)
    })
}

/// Whether the peer of `ends` has closed its side
/// ([`Snapshot::peer_closed`]): `None` when the socket is gone from the
/// kernel's table, `Some(false)` too when the kernel cannot be asked
/// (nothing is then known to have closed).
pub fn peer_closed(ends: TcpEnds) -> Option<bool> {
    match snapshot(ends) {
        Ok(Some(now)) => Some(now.peer_closed()),
        Ok(None) => None,
        Err(_) => Some(false),
    }
}

/// A tracker for `ends` when the kernel's counters can be read for it;
/// `None` (and a warning, once per process) when netlink is unavailable,
/// e.g. in a sandbox without `NETLINK_SOCK_DIAG`.
pub fn track(ends: TcpEnds) -> Option<Arc<AckTracker>> {
    static WARNED: std::sync::Once = std::sync::Once::new();
    match snapshot(ends) {
        Ok(Some(_)) => Some(AckTracker::start(ends)),
        Ok(None) => None,
        Err(err) => {
            WARNED.call_once(|| {
                tracing::warn!(error = %err, "cannot read TCP acknowledgement counters (sock_diag); records count bytes written");
            });
            None
        }
    }
}

/// The connections whose local port is `local_port` and whose peer
/// address is `peer_ip`, best first, each with its socket's inode number
/// (what `/proc/<pid>/fd` links name) — how an FTP data connection accepted
/// by libunftp on a passive port is found. Dumps the family's TCP sockets,
/// so call it once per transfer, then use [`snapshot`].
///
/// Passive ports are reused as soon as a data connection is accepted, so
/// clients behind one address (a NAT, or loopback) can hold several
/// connections on the same port: an earlier transfer still sending, one
/// whose end the server has not closed yet (`CLOSE_WAIT`). Called before
/// the transfer writes its first byte, the ranking puts an `ESTABLISHED`
/// connection first, then one the server has written nothing to, then the
/// newest socket (the highest inode number — only roughly creation order:
/// the kernel hands out inode numbers in per-CPU batches). The first is a
/// best guess — two connections just accepted on one port both have
/// nothing written —, so the FTP transfer looks among them for the mark
/// its passive listener left.
///
/// # Errors
/// `NETLINK_SOCK_DIAG` cannot be opened or answered.
pub fn candidates_by_local_port(
    local_port: u16,
    peer_ip: IpAddr,
) -> io::Result<Vec<(TcpEnds, u32)>> {
    // (established?, nothing written?, inode) and ends of each match.
    let mut found: Vec<((bool, bool, u32), TcpEnds)> = Vec::new();
    for family in [AF_INET, AF_INET6] {
        with_diag(|socket| {
            let id = if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            };
            send_request(socket, NLM_F_REQUEST | NLM_F_DUMP, family, id)?;
            read_answers(socket, true, |response| {
                let id = &response.header.socket_id;
                let state = response.header.state;
                if (state == TCP_ESTABLISHED || state == TCP_CLOSE_WAIT)
                    && id.source_port == local_port
                    && crate::net::same_ip(id.destination_address, peer_ip)
                {
                    let fresh = snapshot_of(response).is_some_and(|s| s.written() == 0);
                    let rank = (state == TCP_ESTABLISHED, fresh, response.header.inode);
                    let ends = TcpEnds {
                        local: SocketAddr::new(id.source_address, id.source_port),
                        peer: SocketAddr::new(id.destination_address, id.destination_port),
                    };
                    found.push((rank, ends));
                }
            })
        })?;
        if !found.is_empty() {
            break;
        }
    }
    found.sort_by_key(|(rank, _)| std::cmp::Reverse(*rank));
    Ok(found
        .into_iter()
        .map(|((_, _, inode), ends)| (ends, inode))
        .collect())
}

/// Plaintext bytes carried by `ciphertext` bytes of TLS records of at most
/// 16 KiB, each adding `overhead` bytes: exact when every record but the
/// last is full (how bodies are written), and over the truth by `overhead`
/// for each further short record otherwise (a `slow=` fault writes a
/// tenth of a second's bytes per record).
pub fn tls_plaintext_estimate(ciphertext: u64, overhead: u64) -> u64 {
    let records = ciphertext.div_ceil(TLS_RECORD_PLAINTEXT + overhead);
    ciphertext.saturating_sub(records * overhead)
}

/// Body bytes carried by `stream` bytes of a connection whose TLS records
/// each add `tls_overhead` bytes ([`tls_record_overhead`]): `stream` itself
/// without TLS (`tls_overhead` 0), else [`tls_plaintext_estimate`].
pub fn body_bytes(stream: u64, tls_overhead: u64) -> u64 {
    match tls_overhead {
        0 => stream,
        overhead => tls_plaintext_estimate(stream, overhead),
    }
}

/// `1048576` → `"1,048,576"`: byte counts in reasons, as people read them.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// How a body's delivery ended, from the kernel's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Every byte of the body was acknowledged.
    Acked,
    /// The connection went away (closed or reset) with bytes unacknowledged.
    Gone,
    /// No newly acknowledged byte for the stall timeout.
    Stalled,
    /// The server is shutting down and the grace period ran out.
    Cancelled,
}

/// Tracks acknowledgement progress of one body on one connection: where the
/// body starts in the connection's byte stream, the most recent
/// acknowledged count, and when it last grew. Shared between the writer's
/// stall check and the code that writes the record.
#[derive(Debug)]
pub struct AckTracker {
    ends: TcpEnds,
    /// Stream offset (bytes written before the body: headers, earlier
    /// responses, TLS handshake) — the kernel's `written()` when the body
    /// started.
    base: AtomicU64,
    /// Last `bytes_acked` seen.
    acked: AtomicU64,
    /// When `acked` last grew (or tracking began).
    progressed: Mutex<Instant>,
    /// Turns true when the kernel destroyed the socket; its final count
    /// is then in `acked`.
    closed: tokio::sync::watch::Sender<bool>,
}

impl AckTracker {
    /// Starts tracking the connection `ends`, taking the body to begin at
    /// the kernel's current written count (call again with
    /// [`AckTracker::mark_body_start`] once a body's headers are flushed).
    /// Counts are the stream's bytes (ciphertext under TLS: see
    /// [`AckTracker::body_acked`]).
    pub fn start(ends: TcpEnds) -> Arc<Self> {
        let tracker = Arc::new(AckTracker {
            ends,
            base: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            progressed: Mutex::new(Instant::now()),
            closed: tokio::sync::watch::Sender::new(false),
        });
        destroy::register(&tracker);
        tracker.mark_body_start();
        tracker
    }

    /// The connection tracked.
    pub fn ends(&self) -> TcpEnds {
        self.ends
    }

    /// Re-reads the kernel's written count as the body's start: for a body
    /// whose headers were flushed after tracking began.
    pub fn mark_body_start(&self) {
        if let Ok(Some(s)) = snapshot(self.ends) {
            self.base.store(s.written(), Ordering::Release);
            self.acked.store(s.bytes_acked, Ordering::Release);
        }
        *lock(&self.progressed) = Instant::now();
    }

    /// Takes `written`, the connection's own count of bytes written so far
    /// (the same as the kernel's for a connection written only through the
    /// count, as the stall guard's [`crate::serve::stall::FlushSignal`]),
    /// as the body's start: [`AckTracker::mark_body_start`] without asking
    /// the kernel.
    pub fn mark_body_start_at(&self, written: u64) {
        self.base.store(written, Ordering::Release);
        *lock(&self.progressed) = Instant::now();
    }

    /// Asks the kernel now; records progress. `None` when the connection is
    /// gone (the last figures stay).
    pub fn refresh(&self) -> Option<Snapshot> {
        let snap = snapshot(self.ends).ok().flatten()?;
        self.observe(snap.bytes_acked);
        Some(snap)
    }

    fn observe(&self, bytes_acked: u64) {
        let before = self.acked.fetch_max(bytes_acked, Ordering::AcqRel);
        if bytes_acked > before {
            *lock(&self.progressed) = Instant::now();
        }
    }

    /// The kernel destroyed the socket with these final counters.
    fn destroyed(&self, bytes_acked: u64) {
        self.observe(bytes_acked);
        self.closed.send_replace(true);
    }

    /// Whether the kernel has destroyed the socket.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Waits up to `limit` for the socket's destruction (the fd closed),
    /// when its final counters arrive; `true` if they did.
    pub async fn wait_closed(&self, limit: Duration) -> bool {
        let mut rx = self.closed.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|closed| *closed))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Notes progress seen without asking the kernel (a write the socket
    /// accepted: its buffer had room, so bytes were acknowledged).
    pub fn note_progress(&self) {
        *lock(&self.progressed) = Instant::now();
    }

    /// Time since the peer last acknowledged a new byte (or since the body
    /// started).
    pub fn since_progress(&self) -> Duration {
        lock(&self.progressed).elapsed()
    }

    /// Where the body last marked ([`AckTracker::mark_body_start`],
    /// [`AckTracker::mark_body_start_at`]) starts in the connection's byte
    /// stream, in bytes. A body must keep its own: on a keep-alive
    /// connection the next response marks its start while the previous
    /// one's acknowledgements may still be awaited.
    pub fn body_start(&self) -> u64 {
        self.base.load(Ordering::Acquire)
    }

    /// Bytes acknowledged so far of a body of `sent` bytes written from
    /// stream offset `start` ([`AckTracker::body_start`]): what was
    /// acknowledged past the start, read through [`body_bytes`] with the
    /// connection's `tls_overhead` (0 without TLS), capped at `sent`.
    pub fn body_acked(&self, start: u64, sent: u64, tls_overhead: u64) -> u64 {
        let stream = self.acked.load(Ordering::Acquire).saturating_sub(start);
        body_bytes(stream, tls_overhead).min(sent)
    }

    /// Bytes the peer acknowledged since the connection opened, as last
    /// seen.
    pub fn acked_total(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Whether the peer acknowledged every byte of `span` (at the last
    /// look, or at destruction): exact over TCP and over TLS alike, since
    /// a TLS span ends after the last record that carries the body. What
    /// follows the span (a TLS `close_notify`, the next response) never
    /// counts against it.
    pub fn delivered(&self, span: Span) -> bool {
        self.acked.load(Ordering::Acquire) >= span.end
    }

    /// Waits until the peer acknowledged `span` whole
    /// ([`AckTracker::delivered`]), the connection is gone, no new byte is
    /// acknowledged for `stall`, or `cancel` fires. Polls the kernel at
    /// growing intervals (2 ms → 200 ms); the first look is at once for a
    /// span of up to [`LOOK_AT_ONCE_BYTES`], after 2 ms for a larger one.
    pub async fn wait_all_acked(
        &self,
        span: Span,
        stall: Duration,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Delivery {
        let mut cancel = std::pin::pin!(cancel);
        let mut interval = Duration::from_millis(2);
        let mut wait = span.end.saturating_sub(span.start) > LOOK_AT_ONCE_BYTES;
        loop {
            if wait {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = &mut cancel => return Delivery::Cancelled,
                }
                interval = (interval * 2).min(Duration::from_millis(200));
            }
            wait = true;
            if self.is_closed() {
                return Delivery::Gone;
            }
            match self.refresh() {
                None => return Delivery::Gone,
                Some(_) if self.delivered(span) => return Delivery::Acked,
                Some(_) if self.since_progress() >= stall => return Delivery::Stalled,
                Some(_) => {}
            }
        }
    }
}

/// Where one body lies in its connection's byte stream, in bytes from the
/// connection's first byte written: from `start` (everything written
/// before it: the TLS handshake, earlier responses, its headers) to `end`
/// (the stream's length once its last byte was written). Over plain TCP
/// `end - start` is the body's size; over TLS it is the ciphertext of the
/// records that carry it, each record's overhead (21–29 bytes per record
/// of up to 16 KiB) included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Stream offset of the body's first byte.
    pub start: u64,
    /// Stream offset just past the body's last byte (its last record's,
    /// under TLS); never before `start`.
    pub end: u64,
}

impl Span {
    /// The span of `sent` bytes written from `start` as they are (plain
    /// TCP: an FTP data connection, HTTP).
    pub fn plain(start: u64, sent: u64) -> Self {
        Span {
            start,
            end: start.saturating_add(sent),
        }
    }
}

/// Largest body whose acknowledgements [`AckTracker::wait_all_acked`] looks
/// at as soon as its last byte is written (64 KiB, about a window's worth):
/// a peer on a fast path has often acknowledged it already. The last bytes
/// of a larger body are still on their way then, and the look a
/// `sock_diag` round trip spent for nothing (hundreds of 1 MiB responses
/// a second: a few per cent of the server's CPU).
pub const LOOK_AT_ONCE_BYTES: u64 = 64 * 1024;

impl Drop for AckTracker {
    fn drop(&mut self) {
        destroy::unregister(self.ends);
    }
}

/// The listener for the kernel's socket-destruction broadcasts and the
/// trackers waiting for them.
mod destroy {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock, Weak};

    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    use netlink_packet_sock_diag::SockDiagMessage;
    use netlink_packet_sock_diag::inet::nlas::Nla;
    use netlink_sys::protocols::NETLINK_SOCK_DIAG;
    use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

    use super::{AckTracker, TcpEnds, lock};

    /// `SKNLGRP_INET_TCP_DESTROY` and `SKNLGRP_INET6_TCP_DESTROY`
    /// (`include/uapi/linux/sock_diag.h`).
    const GROUPS: [u32; 2] = [1, 3];

    type Trackers = Mutex<HashMap<TcpEnds, Weak<AckTracker>>>;

    /// The trackers by connection; the listener thread starts with the
    /// first registration.
    fn trackers() -> &'static Trackers {
        static TRACKERS: OnceLock<Trackers> = OnceLock::new();
        static LISTENER: OnceLock<()> = OnceLock::new();
        let trackers = TRACKERS.get_or_init(Trackers::default);
        LISTENER.get_or_init(|| match open() {
            Ok(socket) => {
                let spawned = std::thread::Builder::new()
                    .name("qfota-sock-destroy".into())
                    .spawn(move || listen(&socket, trackers));
                if let Err(err) = spawned {
                    tracing::warn!(error = %err, "cannot start the socket-destruction listener");
                }
            }
            Err(err) => tracing::warn!(
                error = %err,
                "cannot join sock_diag destroy groups; a reset connection's record uses the last look-up"
            ),
        });
        trackers
    }

    /// Receive buffer of the destroy listener: every TCP socket of the
    /// host that closes is broadcast, and a burst (thousands of short
    /// connections) must not overflow it (ENOBUFS loses broadcasts). The
    /// kernel caps it at `net.core.rmem_max`.
    const RX_BUFFER: usize = 4 * 1024 * 1024;

    fn open() -> std::io::Result<Socket> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        // Best effort: a smaller buffer still works, with more loss under
        // bursts.
        let _ = socket.set_rx_buf_sz(RX_BUFFER);
        socket.bind(&NetlinkAddr::new(0, 0))?;
        for group in GROUPS {
            socket.add_membership(group)?;
        }
        Ok(socket)
    }

    /// Reads destruction broadcasts forever, handing each tracked
    /// connection its final counters.
    fn listen(socket: &Socket, trackers: &Trackers) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => n,
                Err(err) => {
                    // ENOBUFS: broadcasts were dropped under load; the
                    // affected records fall back to their last look-up.
                    tracing::debug!(error = %err, "sock_diag destroy listener");
                    continue;
                }
            };
            let mut offset = 0;
            while offset < n {
                let Ok(message) = <NetlinkMessage<SockDiagMessage>>::deserialize(&buf[offset..n])
                else {
                    break;
                };
                let len = message.header.length as usize;
                if let NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) =
                    message.payload
                {
                    let id = &r.header.socket_id;
                    let ends = TcpEnds {
                        local: std::net::SocketAddr::new(id.source_address, id.source_port),
                        peer: std::net::SocketAddr::new(
                            id.destination_address,
                            id.destination_port,
                        ),
                    };
                    let tracker = lock(trackers).get(&ends).and_then(Weak::upgrade);
                    if let Some(tracker) = tracker {
                        let acked = r.nlas.iter().find_map(|nla| match nla {
                            Nla::TcpInfo(info) => Some(info.bytes_acked),
                            _ => None,
                        });
                        if let Some(acked) = acked {
                            tracker.destroyed(acked);
                        }
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    pub(super) fn register(tracker: &Arc<AckTracker>) {
        lock(trackers()).insert(tracker.ends, Arc::downgrade(tracker));
    }

    pub(super) fn unregister(ends: TcpEnds) {
        let mut map = lock(trackers());
        // A newer connection may reuse the 4-tuple: remove only a dead entry.
        if map.get(&ends).is_some_and(|w| w.strong_count() == 0) {
            map.remove(&ends);
        }
    }
}

/// The words a record uses for a body cut short: `ending` (e.g. "then
/// closed the connection") after how much the peer acknowledged —
/// `peer acknowledged 65,536 of 1,048,576 bytes, then closed the
/// connection`.
pub fn cut_short(acked: u64, total: u64, ending: &str) -> String {
    format!(
        "peer acknowledged {} of {} bytes, {ending}",
        grouped(acked),
        grouped(total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn cut_short_reads_as_a_sentence() {
        assert_eq!(
            cut_short(65_536, 1_048_576, "then reset the connection"),
            "peer acknowledged 65,536 of 1,048,576 bytes, then reset the connection"
        );
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(65_536), "65,536");
        assert_eq!(grouped(1_048_576), "1,048,576");
    }

    #[test]
    fn tls_estimate_is_exact_for_full_records_of_the_suite() {
        let plain = 4 * TLS_RECORD_PLAINTEXT + 1000;
        for overhead in [TLS_RECORD_OVERHEAD, 22, 21] {
            let cipher = plain + 5 * overhead;
            assert_eq!(tls_plaintext_estimate(cipher, overhead), plain);
            // Part of the last record: low by its overhead at most.
            let part = 4 * (TLS_RECORD_PLAINTEXT + overhead) + 500;
            assert_eq!(tls_plaintext_estimate(part, overhead), part - 5 * overhead);
        }
        // A TLS 1.3 stream read with TLS 1.2's overhead errs low.
        let cipher13 = plain + 5 * 22;
        let est = tls_plaintext_estimate(cipher13, TLS_RECORD_OVERHEAD);
        assert!(est < plain && plain - est < TLS_RECORD_PLAINTEXT, "{est}");
        assert_eq!(tls_plaintext_estimate(0, 22), 0);
    }

    /// A connected loopback pair: the client, the server and the server's
    /// ends.
    fn loopback() -> (TcpStream, TcpStream, TcpEnds) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let local = server.local_addr().unwrap();
        (client, server, TcpEnds { local, peer })
    }

    /// A real loopback connection: the kernel's counters follow what the
    /// peer read, and a closed connection is reported gone.
    #[test]
    fn snapshot_follows_a_real_connection() {
        let (mut client, mut server, ends) = loopback();
        let before = snapshot(ends).unwrap().expect("connection is listed");
        assert_eq!(before.written(), 0);
        server.write_all(&[1u8; 10_000]).unwrap();
        let mut buf = vec![0u8; 10_000];
        client.read_exact(&mut buf).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let after = loop {
            let s = snapshot(ends).unwrap().expect("still listed");
            if s.unacked == 0 || Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(after.bytes_acked, 10_000);
        assert_eq!(after.written(), 10_000);
        let found = best_by_local_port(ends.local.port(), ends.peer.ip());
        assert_eq!(found, Some(ends));
        drop(client);
        drop(server);
        let deadline = Instant::now() + Duration::from_secs(5);
        while snapshot(ends).unwrap().is_some_and(|s| s.state != 7) {
            assert!(Instant::now() < deadline, "closed connection still listed");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A body whose span runs past its size (a TLS body: the records'
    /// overhead) is not delivered while the peer acknowledged `sent`
    /// bytes past its start but not the span's last bytes; it is once
    /// they arrive. Real kernel counters of a loopback connection.
    #[tokio::test]
    async fn a_span_is_delivered_only_when_its_last_byte_is_acknowledged() {
        let (mut client, mut server, ends) = loopback();
        let tracker = AckTracker::start(ends);
        // 9,900 body bytes in records that take 10,000 on the wire.
        let (sent, span) = (
            9_900,
            Span {
                start: 0,
                end: 10_000,
            },
        );
        server.write_all(&[1u8; 9_950]).unwrap();
        let mut buf = vec![0u8; 10_000];
        client.read_exact(&mut buf[..9_950]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while tracker.refresh().expect("listed").bytes_acked < 9_950 {
            assert!(Instant::now() < deadline, "9,950 bytes never acknowledged");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(tracker.acked_total() - span.start >= sent);
        assert!(
            !tracker.delivered(span),
            "the last record's tail is not acknowledged"
        );
        assert!(
            tracker.delivered(Span::plain(0, sent)),
            "a plain body that size would be"
        );
        server.write_all(&[2u8; 50]).unwrap();
        client.read_exact(&mut buf[9_950..]).unwrap();
        let delivery = tracker
            .wait_all_acked(span, Duration::from_secs(5), std::future::pending())
            .await;
        assert_eq!(delivery, Delivery::Acked);
        assert_eq!(tracker.acked_total(), 10_000);
    }

    /// The first of [`candidates_by_local_port`]'s ranking.
    fn best_by_local_port(port: u16, peer: IpAddr) -> Option<TcpEnds> {
        let candidates = candidates_by_local_port(port, peer).unwrap();
        candidates.first().map(|(ends, _)| *ends)
    }

    /// A reused passive port: an earlier connection from the same address
    /// that the peer closed and the server did not (`CLOSE_WAIT`) is not
    /// taken for the new one, whichever the kernel lists first.
    #[test]
    fn the_live_newest_connection_ranks_first() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        for _ in 0..3 {
            let old_client = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (_old_server, _) = listener.accept().unwrap();
            drop(old_client); // the server side stays open: CLOSE_WAIT
            let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (server, peer) = listener.accept().unwrap();
            let want = TcpEnds {
                local: server.local_addr().unwrap(),
                peer,
            };
            let found = best_by_local_port(port, peer.ip());
            assert_eq!(found, Some(want));
        }
    }

    /// A passive port is handed to the next session while the previous
    /// transfer on it still sends: the new transfer's look-up (before its
    /// first byte) must not take the busy connection, even when that one
    /// is the newer socket.
    #[test]
    fn the_connection_nothing_was_written_to_ranks_first() {
        use std::io::Write;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        for _ in 0..3 {
            let _fresh_client = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (fresh, peer) = listener.accept().unwrap();
            let _busy_client = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (mut busy, _) = listener.accept().unwrap();
            busy.write_all(&[7; 4096]).unwrap();
            let want = TcpEnds {
                local: fresh.local_addr().unwrap(),
                peer,
            };
            assert_eq!(best_by_local_port(port, peer.ip()), Some(want));
        }
    }
}

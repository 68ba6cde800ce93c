//! A TCP stream whose writes send resident package bytes with
//! `sendfile(2)` from their file twin ([`crate::catalog::twin`])
//! instead of copying them from user space.
//!
//! hyper (HTTP) and the FTP transfer hand the stream slices of a resident
//! copy; [`ZeroCopyStream`] looks each slice up by address and, when it lies
//! in a copy with a twin, sends the same bytes from the twin's pages. Any
//! other slice (headers, TLS records, bytes read from a file) is written as
//! usual, so the stream is correct whatever it is given: the look-up only
//! decides how bytes already known to be identical reach the socket.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::catalog::twin;
use crate::serve::stall::{BULK_LOWAT, FAST_LOWAT, SLOW_LOWAT, Verdict};

/// Send buffer a fast bulk transfer asks for (`SO_SNDBUF`, 4 MiB; the
/// kernel doubles the figure for its bookkeeping, so 8 MiB of queue): twice
/// what the kernel's own sizing reaches (`net.ipv4.tcp_wmem`'s 4 MiB). The
/// task is woken when a third of the queue is free and refills it in one
/// `sendfile`, while the client's acknowledgements send the queued bytes
/// on: against the kernel's sizing, in a by-hand run of
/// `bench/compare.py` S4's load, 2.6 times fewer context switches and
/// 0.07 instead of 0.12 server CPU s/GB, part of it only because loopback
/// charges a transmit to the process whose acknowledgement opened the
/// window. Granted up to `net.core.wmem_max`; when that is lower than what
/// the kernel already gave the socket (Debian's default is 208 KiB), the
/// socket keeps the kernel's sizing.
pub const FAST_SNDBUF: usize = 4 << 20;

/// `TCP_NOTSENT_LOWAT` that never binds (2 GiB, the largest the kernel
/// takes as a positive `int`).
const UNLIMITED_LOWAT: u32 = i32::MAX as u32;

/// `net.core.wmem_max` in bytes, read once; `None` when it cannot be read
/// (a container without `/proc/sys/net`: said once at INFO level, and
/// fast transfers then keep the kernel's sizing).
fn wmem_max() -> Option<usize> {
    static MAX: OnceLock<Option<usize>> = OnceLock::new();
    *MAX.get_or_init(|| {
        const PATH: &str = "/proc/sys/net/core/wmem_max";
        let read = std::fs::read_to_string(PATH)
            .map_err(|e| e.to_string())
            .and_then(|text| text.trim().parse().map_err(|e: std::num::ParseIntError| e.to_string()));
        match read {
            Ok(max) => Some(max),
            Err(error) => {
                tracing::info!(%error, path = PATH, "cannot read the send buffer limit: fast FTP transfers keep the kernel's own send buffer sizing");
                None
            }
        }
    })
}

/// A [`TcpStream`] that sends slices of resident copies with `sendfile`.
#[derive(Debug)]
pub struct ZeroCopyStream {
    tcp: TcpStream,
}

impl ZeroCopyStream {
    /// Wraps `tcp`.
    pub fn new(tcp: TcpStream) -> Self {
        Self { tcp }
    }

    /// Paces an HTTP connection by the stall guard's verdict
    /// (`StallGuard::with_speed_check`): `TCP_NOTSENT_LOWAT` becomes
    /// [`FAST_LOWAT`] for a bulk client, [`SLOW_LOWAT`] for a module's link.
    ///
    /// # Errors
    /// `setsockopt(2)` refused.
    pub fn pace_responses(&self, verdict: Verdict) -> io::Result<()> {
        let lowat = match verdict {
            Verdict::Fast => FAST_LOWAT,
            Verdict::Slow => SLOW_LOWAT,
        };
        socket2::SockRef::from(&self.tcp).set_tcp_notsent_lowat(lowat)
    }

    /// Readies the socket for one bulk transfer (an FTP data connection)
    /// until its speed is judged: `TCP_NOTSENT_LOWAT` [`BULK_LOWAT`]
    /// instead of the listener's 16 KiB.
    ///
    /// # Errors
    /// `setsockopt(2)` refused.
    pub fn begin_transfer(&self) -> io::Result<()> {
        socket2::SockRef::from(&self.tcp).set_tcp_notsent_lowat(BULK_LOWAT)
    }

    /// Paces a bulk transfer by the stall guard's verdict: a fast client
    /// loses its `TCP_NOTSENT_LOWAT` and its send buffer grows to
    /// [`FAST_SNDBUF`] (see there); a module's link gets `TCP_NOTSENT_LOWAT`
    /// [`SLOW_LOWAT`].
    ///
    /// # Errors
    /// `getsockopt(2)` or `setsockopt(2)` refused.
    pub fn pace_transfer(&self, verdict: Verdict) -> io::Result<()> {
        let socket = socket2::SockRef::from(&self.tcp);
        match verdict {
            Verdict::Fast => {
                // No limit of its own on unsent bytes (0 would mean the
                // system's `net.ipv4.tcp_notsent_lowat`, which a host may
                // have tuned lower than `BULK_LOWAT`).
                socket.set_tcp_notsent_lowat(UNLIMITED_LOWAT)?;
                // SO_SNDBUF is clamped to `net.core.wmem_max` and turns the
                // kernel's own sizing off: set only when that grows it.
                let granted = 2 * FAST_SNDBUF.min(wmem_max().unwrap_or(0));
                if granted > socket.send_buffer_size()? {
                    socket.set_send_buffer_size(FAST_SNDBUF)?;
                }
                Ok(())
            }
            Verdict::Slow => socket.set_tcp_notsent_lowat(SLOW_LOWAT),
        }
    }

    /// Sends up to `len` bytes of `twin` from `offset`; the count sent.
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        twin: &File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        self.poll_send_with(cx, || {
            let mut at = offset;
            rustix::fs::sendfile(&self.tcp, twin, Some(&mut at), len)
        })
    }

    /// Sends `run` with `MSG_MORE` (`sendmsg(2)`): the kernel waits for
    /// what follows before it makes a segment.
    fn poll_send_more(
        &self,
        cx: &mut Context<'_>,
        run: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        use rustix::net::{SendAncillaryBuffer, SendFlags};
        self.poll_send_with(cx, || {
            let mut control = SendAncillaryBuffer::default();
            rustix::net::sendmsg(&self.tcp, run, &mut control, SendFlags::MORE)
        })
    }

    /// Runs the non-blocking `send` when the socket is writable, waiting
    /// for writability while it would block; the count sent.
    fn poll_send_with(
        &self,
        cx: &mut Context<'_>,
        mut send: impl FnMut() -> rustix::io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            let sent = self
                .tcp
                .try_io(Interest::WRITABLE, || send().map_err(io::Error::from));
            match sent {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.tcp.poll_write_ready(cx))?;
                }
                other => return Poll::Ready(other),
            }
        }
    }

    /// Writes `bufs[start..]`: runs of ordinary slices with one `writev`,
    /// slices of resident copies with `sendfile`, until the socket takes no
    /// more. Pending only when nothing was written.
    fn poll_write_slices(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut written = 0;
        let mut i = 0;
        while i < bufs.len() {
            let (poll, wanted, next) = match twin::find(&bufs[i]) {
                Some((twin, offset)) => {
                    let len = bufs[i].len();
                    (self.poll_sendfile(cx, &twin, offset, len), len, i + 1)
                }
                None => {
                    let mut end = i + 1;
                    while end < bufs.len() && twin::find(&bufs[end]).is_none() {
                        end += 1;
                    }
                    let run = &bufs[i..end];
                    let len = run.iter().map(|b| b.len()).sum();
                    let poll = if end < bufs.len() {
                        // Headers before a body from a twin: held back
                        // (MSG_MORE) to leave in the body's first segment
                        // instead of a small one of their own.
                        self.poll_send_more(cx, run)
                    } else {
                        Pin::new(&mut self.tcp).poll_write_vectored(cx, run)
                    };
                    (poll, len, end)
                }
            };
            match poll {
                Poll::Ready(Ok(n)) => {
                    written += n;
                    if n < wanted {
                        break;
                    }
                    i = next;
                }
                // What was written counts; the error comes back on the
                // next write.
                Poll::Ready(Err(_)) | Poll::Pending if written > 0 => break,
                other => return other,
            }
        }
        Poll::Ready(Ok(written))
    }
}

impl AsyncRead for ZeroCopyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ZeroCopyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match twin::find(buf) {
            Some((twin, offset)) => self.poll_sendfile(cx, &twin, offset, buf.len()),
            None => Pin::new(&mut self.tcp).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_slices(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A second handle on one of this process's own sockets: the first whose
/// inode number is in `inodes` and that `wanted` accepts, with that inode —
/// how the FTP transfer reaches the data connection libunftp accepted
/// (libunftp hands the storage back-end only a boxed writer). `None` when
/// no descriptor is such a socket.
///
/// Each number is first looked at through its `/proc/self/fd` link
/// (`stat(2)`, no new descriptor): only a socket with one of those inodes
/// is then taken with `pidfd_getfd(2)` (Linux 5.6+; a process may always
/// take its own) and checked again with `fstat(2)`, so a number closed and
/// reused in between is passed over. No other file is ever duplicated:
/// closing a duplicate of a file would drop the process's POSIX record
/// locks on it (`fcntl(2)`), which an embedding program (SQLite, say) may
/// hold. The kernel gives a new descriptor the lowest free number (POSIX
/// `open(2)`, `accept(2)`), so `near` — the lowest free number when the
/// listener that accepted the socket was bound ([`lowest_free_descriptor`])
/// — is usually the socket's own: the numbers within [`NEAR_TRIES`] of it
/// are tried first, a few system calls however many connections are open.
/// Only when none is the socket are all numbers in `/proc/self/fd` tried.
/// Out of descriptors (`EMFILE`, `ENFILE`), there is no handle to be had:
/// `None`.
///
/// # Errors
/// `/proc/self/fd` cannot be read, or the system refuses `pidfd_open` or
/// `pidfd_getfd` (a system-call filter, a kernel before 5.6).
pub fn own_socket(
    inodes: &[u32],
    near: Option<i32>,
    wanted: impl Fn(&std::net::TcpStream) -> bool,
) -> io::Result<Option<(u32, TcpStream)>> {
    if inodes.is_empty() {
        return Ok(None);
    }
    match find_own_socket(inodes, near, wanted) {
        Err(err) if super::out_of_descriptors(&err) => Ok(None),
        found => found,
    }
}

/// [`own_socket`] without the special cases.
fn find_own_socket(
    inodes: &[u32],
    near: Option<i32>,
    wanted: impl Fn(&std::net::TcpStream) -> bool,
) -> io::Result<Option<(u32, TcpStream)>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use rustix::fs::FileType;
    use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
    static OWN: OnceLock<Option<OwnedFd>> = OnceLock::new();
    let own = OWN.get_or_init(|| pidfd_open(getpid(), PidfdFlags::empty()).ok());
    let Some(own) = own else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "pidfd_open refused",
        ));
    };
    let sought = |inode: u64| inodes.iter().find(|i| u64::from(**i) == inode).copied();
    let take = |number: i32| -> io::Result<Option<(u32, std::net::TcpStream)>> {
        // A look through the link first: nothing but a sought socket is
        // ever duplicated.
        let Ok(meta) = std::fs::metadata(format!("/proc/self/fd/{number}")) else {
            return Ok(None);
        };
        if !meta.file_type().is_socket() || sought(meta.ino()).is_none() {
            return Ok(None);
        }
        let fd = match pidfd_getfd(own, number, PidfdGetfdFlags::empty()) {
            Ok(fd) => fd,
            // Closed since.
            Err(rustix::io::Errno::BADF) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        // The number may have been reused in between: check again.
        let stat = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Socket {
            return Ok(None);
        }
        let Some(inode) = sought(stat.st_ino) else {
            return Ok(None);
        };
        let std = std::net::TcpStream::from(fd);
        Ok(wanted(&std).then_some((inode, std)))
    };
    let into_tokio = |(inode, std): (u32, std::net::TcpStream)| -> io::Result<_> {
        std.set_nonblocking(true)?;
        Ok(Some((inode, TcpStream::from_std(std)?)))
    };
    let near: Vec<i32> = near.map(around).unwrap_or_default();
    for &number in &near {
        if let Some(found) = take(number)? {
            return into_tokio(found);
        }
    }
    for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
        let Some(number) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if near.contains(&number) {
            continue;
        }
        if let Some(found) = take(number)? {
            return into_tokio(found);
        }
    }
    Ok(None)
}

/// Descriptor numbers [`own_socket`] tries around its hint before it
/// tries them all.
pub const NEAR_TRIES: usize = 32;

/// The [`NEAR_TRIES`] numbers nearest `hint`, nearest first, the higher
/// one first at each distance (a number taken between the hint and the
/// accept pushes the socket up): `hint, hint+1, hint-1, hint+2, …`, none
/// negative.
fn around(hint: i32) -> Vec<i32> {
    let mut numbers = vec![hint];
    for distance in 1..NEAR_TRIES as i32 {
        numbers.push(hint.saturating_add(distance));
        if distance <= hint {
            numbers.push(hint - distance);
        }
    }
    numbers.truncate(NEAR_TRIES);
    numbers
}

/// The number the kernel would give this process's next descriptor (the
/// lowest free one), found by duplicating `fd` and closing the duplicate;
/// `None` if duplicating fails (the descriptor limit reached).
pub fn lowest_free_descriptor(fd: impl std::os::fd::AsFd) -> Option<i32> {
    use std::os::fd::AsRawFd;
    rustix::io::fcntl_dupfd_cloexec(fd, 0)
        .ok()
        .map(|dup| dup.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn around_tries_the_hint_then_outwards_never_below_zero() {
        assert_eq!(&around(10)[..5], &[10, 11, 9, 12, 8]);
        let low = around(1);
        assert_eq!(&low[..4], &[1, 2, 0, 3]);
        assert!(low.iter().all(|n| *n >= 0));
        assert_eq!(low.len(), NEAR_TRIES);
        let mut unique = low.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), NEAR_TRIES, "no number twice");
    }

    #[tokio::test]
    async fn own_socket_finds_an_accepted_socket_by_hint_or_by_scan() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Other sockets, so the one sought is not the only one.
        let others: Vec<_> = (0..64)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let hint = lowest_free_descriptor(&listener).unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let number = accepted.as_raw_fd();
        let inode = rustix::fs::fstat(&accepted).unwrap().st_ino as u32;
        let other = rustix::fs::fstat(&others[0]).unwrap().st_ino as u32;
        for near in [Some(hint), Some(number + 1000), None] {
            let (found, mut socket) = own_socket(&[other, inode], near, |s| s.peer_addr().is_ok())
                .unwrap()
                .unwrap_or_else(|| panic!("found with hint {near:?}"));
            assert_eq!(found, inode);
            assert_ne!(socket.as_raw_fd(), number, "a second handle");
            // The handle writes to the same connection.
            socket.write_all(b"ok").await.unwrap();
            let mut got = [0; 2];
            std::io::Read::read_exact(&mut client, &mut got).unwrap();
            assert_eq!(&got, b"ok");
        }
        let refused = own_socket(&[inode], Some(hint), |_| false).unwrap();
        assert!(refused.is_none(), "`wanted` decides");
        let absent = own_socket(&[u32::MAX - 7], Some(hint), |_| true).unwrap();
        assert!(absent.is_none(), "no socket has that inode");
        let none = own_socket(&[], Some(hint), |_| true).unwrap();
        assert!(none.is_none(), "nothing sought");
        drop(others);
    }

    #[tokio::test]
    async fn resident_and_ordinary_slices_arrive_in_order_and_intact() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let copy = twin::resident(data.clone());
        assert!(twin::find(&copy).is_some(), "the copy has a twin");
        let reader = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            tcp.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut stream = ZeroCopyStream::new(TcpStream::connect(addr).await.unwrap());
        let head = b"HEAD\r\n".to_vec();
        let mut sent = 0;
        // A header, then the copy in 256 KiB slices, each between an
        // ordinary byte before it (sent MSG_MORE) and one after it, in one
        // vectored write; what a write leaves is written plainly.
        stream.write_all(&head).await.unwrap();
        while sent < copy.len() {
            let end = (sent + 256 * 1024).min(copy.len());
            let part = copy.slice(sent..end);
            let mut piece = b"<".to_vec();
            piece.extend_from_slice(&part);
            piece.push(b'|');
            let bufs = [
                io::IoSlice::new(b"<"),
                io::IoSlice::new(&part),
                io::IoSlice::new(b"|"),
            ];
            let n = stream.write_vectored(&bufs).await.unwrap();
            assert!(n > 0);
            stream.write_all(&piece[n..]).await.unwrap();
            sent = end;
        }
        stream.shutdown().await.unwrap();
        drop(stream);
        let got = reader.await.unwrap();
        let mut want = head.clone();
        for chunk in data.chunks(256 * 1024) {
            want.push(b'<');
            want.extend_from_slice(chunk);
            want.push(b'|');
        }
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes differ");
    }
}

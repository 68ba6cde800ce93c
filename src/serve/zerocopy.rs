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

    /// Sets the socket's `TCP_NOTSENT_LOWAT` to `bytes`: what the stall
    /// guard's speed check does once it has judged the client
    /// (`StallGuard::with_speed_check`).
    ///
    /// # Errors
    /// `setsockopt(2)` refused.
    pub fn set_lowat(&self, bytes: u32) -> io::Result<()> {
        socket2::SockRef::from(&self.tcp).set_tcp_notsent_lowat(bytes)
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

/// Second handles on this process's own sockets whose inode numbers are
/// in `inodes`, in the order found — how the FTP transfer reaches the data
/// connection libunftp accepted (libunftp hands the storage back-end only a
/// boxed writer). The descriptors are found by their `/proc/self/fd` links
/// in one pass and duplicated with `pidfd_getfd(2)` (Linux 5.6+; a process
/// may always take its own descriptors), each then checked to be that
/// socket (a number closed and reused in between is left out). An inode no
/// descriptor names is left out too.
///
/// # Errors
/// `/proc/self/fd` cannot be read, or the system refuses `pidfd_open` or
/// `pidfd_getfd` (a system-call filter, a kernel before 5.6).
pub fn own_sockets(inodes: &[u32]) -> io::Result<Vec<(u32, TcpStream)>> {
    let links: Vec<(u32, String)> = inodes
        .iter()
        .map(|inode| (*inode, format!("socket:[{inode}]")))
        .collect();
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let Some((inode, _)) = links
            .iter()
            .find(|(_, link)| target.as_os_str() == link.as_str())
        else {
            continue;
        };
        if let Some(number) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        {
            numbers.push((*inode, number));
            if numbers.len() == links.len() {
                break;
            }
        }
    }
    if numbers.is_empty() {
        return Ok(Vec::new());
    }
    use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
    static OWN: OnceLock<Option<OwnedFd>> = OnceLock::new();
    let own = OWN.get_or_init(|| pidfd_open(getpid(), PidfdFlags::empty()).ok());
    let Some(own) = own else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "pidfd_open refused",
        ));
    };
    let mut sockets = Vec::with_capacity(numbers.len());
    for (inode, number) in numbers {
        let fd = pidfd_getfd(own, number, PidfdGetfdFlags::empty())?;
        if rustix::fs::fstat(&fd)?.st_ino != u64::from(inode) {
            continue;
        }
        let std = std::net::TcpStream::from(fd);
        std.set_nonblocking(true)?;
        sockets.push((inode, TcpStream::from_std(std)?));
    }
    Ok(sockets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

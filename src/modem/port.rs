//! The AT port's transports: one task per open port (a PTY, or one TCP
//! connection) that moves bytes between the host and the session, and the
//! TCP accept loop.
//!
//! The session (`session.rs`) is the only writer: it hands
//! each task whole frames (a complete response, a URC, an echo) through a
//! bounded queue, and the task writes them in order, one at a time, so a
//! URC never lands inside a response. Input and attach/detach news come
//! back as `PortEvent`s. Nothing here blocks the session: a host that
//! does not read fills its own queue and loses frames, as a UART overflows.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::modem::at::{LineFramer, frame};
use crate::modem::data::DataPhase;
use crate::modem::pty::{DATA_POLL, NO_HOST_POLL, PortRead, Pty};

/// Frames a port may have queued before more are dropped.
const QUEUE: usize = 1024;
/// Longest a single frame may take to write before the host is
/// considered gone (TCP: the connection is closed; PTY: the frame is
/// dropped): 5 s.
const WRITE_LIMIT: Duration = Duration::from_secs(5);
/// How long a PTY stays open after its last frame when the module goes
/// down: 500 ms. A PTY master that closes throws away what the host has
/// not read yet; this lets a host's reader take the last URC (`FTPEND,0`,
/// `END,0`) before the port disappears, as a real module, which goes down
/// about a second after it (SPEC §3), does. The new port may appear
/// before the old one is gone; the link points at the new one only.
pub const PTY_LINGER: Duration = Duration::from_millis(500);
/// How long a closing TCP connection waits for the host to close its side
/// (so the close is a FIN, not a reset): 500 ms.
const TCP_CLOSE_WAIT: Duration = Duration::from_millis(500);
/// The line a second TCP host gets before its connection is closed.
pub const BUSY_LINE: &str = "+CME ERROR: port busy";

/// Identifies one open port (a PTY between two reboots, one TCP
/// connection); news from a port that is gone is ignored.
pub(crate) type ChannelId = u64;

/// Which transport a port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortKind {
    /// The pseudo-terminal.
    Pty,
    /// A TCP connection.
    Tcp,
}

/// News from the transports to the session.
#[derive(Debug)]
pub(crate) enum PortEvent {
    /// A host opened the PTY.
    Attached(ChannelId),
    /// The PTY's host closed it, or the TCP connection ended.
    Detached(ChannelId),
    /// Bytes from the host.
    Input(ChannelId, Vec<u8>),
    /// The TCP listener accepted a connection; `true` when it is offered a
    /// second time (see [`offer_again`]).
    Connection(TcpStream, SocketAddr, bool),
}

/// The session's end of one open port.
#[derive(Debug)]
pub(crate) struct Channel {
    /// This port's id.
    pub id: ChannelId,
    /// PTY or TCP.
    pub kind: PortKind,
    /// Whether a host has the port open (always, for TCP).
    pub attached: bool,
    /// Until when a host that just opened this PTY is left to settle
    /// before held output is written to it (see the session's
    /// `HOST_SETTLE`); `None` once it has.
    pub settling_until: Option<tokio::time::Instant>,
    /// The command line being typed on this port.
    pub framer: LineFramer,
    /// The binary data phase under way (`AT+QFUPL`, `FILE:`): while there
    /// is one, input goes to it, not to [`Channel::framer`].
    pub data: Option<DataPhase>,
    frames: mpsc::Sender<Bytes>,
    /// Frames dropped since the host last read (one warning per episode).
    dropped: std::sync::atomic::AtomicU64,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Channel {
    /// Spawns the port's task, `task(frames, cancel)`, fed by a bounded
    /// queue of [`QUEUE`] frames.
    fn spawn<F>(
        id: ChannelId,
        kind: PortKind,
        attached: bool,
        cancel: CancellationToken,
        task: impl FnOnce(mpsc::Receiver<Bytes>, CancellationToken) -> F,
    ) -> Channel
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (frames, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(task(rx, cancel.clone()));
        Channel {
            id,
            kind,
            attached,
            settling_until: None,
            framer: LineFramer::new(),
            data: None,
            frames,
            dropped: std::sync::atomic::AtomicU64::new(0),
            cancel,
            task,
        }
    }

    /// Queues `bytes` for the host; dropped when the host has not read
    /// the last [`QUEUE`] frames, with one log line when that starts and
    /// one, with the count, when the host reads again.
    pub fn send(&self, bytes: Bytes) {
        use std::sync::atomic::Ordering;
        if self.frames.try_send(bytes).is_err() {
            if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    port = self.id,
                    "host is not reading; output dropped until it does"
                );
            }
        } else {
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                tracing::warn!(
                    port = self.id,
                    dropped,
                    "host reading again; frames were dropped"
                );
            }
        }
    }

    /// Closes the port the way a rebooting module does: what is queued is
    /// written, then the port goes away (a PTY after [`PTY_LINGER`]).
    pub fn close(self) {
        drop(self.frames);
        drop(self.task);
    }

    /// Closes the port now and returns its task to wait for.
    pub fn abort(self) -> JoinHandle<()> {
        self.cancel.cancel();
        self.task
    }
}

/// Starts the task of a freshly opened PTY.
pub(crate) fn spawn_pty(
    id: ChannelId,
    pty: Pty,
    events: mpsc::UnboundedSender<PortEvent>,
    cancel: CancellationToken,
) -> Channel {
    // No host has a fresh PTY open yet.
    Channel::spawn(id, PortKind::Pty, false, cancel, |frames, cancel| {
        pty_task(id, pty, frames, events, cancel)
    })
}

/// Writes one frame if a host is there to read it.
async fn write_pty(pty: &Pty, attached: bool, id: ChannelId, bytes: &[u8]) {
    if !attached {
        return;
    }
    match tokio::time::timeout(WRITE_LIMIT, pty.write_all(bytes)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(port = id, %error, "PTY write failed"),
        Err(_) => tracing::warn!(port = id, "PTY host is not reading; frame dropped"),
    }
}

async fn pty_task(
    id: ChannelId,
    pty: Pty,
    mut frames: mpsc::Receiver<Bytes>,
    events: mpsc::UnboundedSender<PortEvent>,
    cancel: CancellationToken,
) {
    let mut attached = false;
    let mut buf = vec![0u8; 4096];
    loop {
        // Take everything the host wrote, and notice it come and go.
        loop {
            match pty.try_read(&mut buf) {
                Ok(PortRead::Data(n)) => {
                    if !attached {
                        attached = true;
                        let _ = events.send(PortEvent::Attached(id));
                    }
                    let _ = events.send(PortEvent::Input(id, buf[..n].to_vec()));
                }
                Ok(PortRead::Idle) => {
                    if !attached {
                        attached = true;
                        let _ = events.send(PortEvent::Attached(id));
                    }
                    break;
                }
                Ok(PortRead::NoHost) => {
                    if attached {
                        attached = false;
                        // Lines written as the host was closing must not
                        // greet the next one.
                        if let Err(error) = pty.discard_unread() {
                            tracing::debug!(port = id, %error, "cannot discard unread output");
                        }
                        let _ = events.send(PortEvent::Detached(id));
                    }
                    break;
                }
                Err(error) => {
                    tracing::warn!(port = id, %error, "PTY read failed");
                    break;
                }
            }
        }
        let poll = if attached { DATA_POLL } else { NO_HOST_POLL };
        tokio::select! {
            _ = cancel.cancelled() => return,
            frame = frames.recv() => match frame {
                Some(bytes) => write_pty(&pty, attached, id, &bytes).await,
                None => break,
            },
            _ = tokio::time::sleep(poll) => {}
        }
    }
    // The module is going down: everything queued has been written; give
    // the host a moment to read it before the master closes.
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(PTY_LINGER) => {}
    }
}

/// Starts the task of an accepted TCP connection (attached from the
/// start).
pub(crate) fn spawn_tcp(
    id: ChannelId,
    stream: TcpStream,
    events: mpsc::UnboundedSender<PortEvent>,
    cancel: CancellationToken,
) -> Channel {
    Channel::spawn(id, PortKind::Tcp, true, cancel, |frames, cancel| {
        tcp_task(id, stream, frames, events, cancel)
    })
}

async fn tcp_task(
    id: ChannelId,
    mut stream: TcpStream,
    mut frames: mpsc::Receiver<Bytes>,
    events: mpsc::UnboundedSender<PortEvent>,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = events.send(PortEvent::Detached(id));
                    return;
                }
                Ok(n) => {
                    let _ = events.send(PortEvent::Input(id, buf[..n].to_vec()));
                }
            },
            frame = frames.recv() => match frame {
                Some(bytes) => {
                    let written = tokio::time::timeout(WRITE_LIMIT, stream.write_all(&bytes)).await;
                    if !matches!(written, Ok(Ok(()))) {
                        tracing::warn!(port = id, "TCP host is not reading or gone; closing");
                        let _ = events.send(PortEvent::Detached(id));
                        return;
                    }
                }
                None => break,
            },
        }
    }
    // The module is going down: everything queued has been written.
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = close_tcp(stream) => {}
    }
}

/// Closes a connection politely: FIN, then wait (bounded) for the host's
/// FIN, discarding what it still sends, so the close is not a reset that
/// could destroy what the host has not read.
async fn close_tcp(mut stream: TcpStream) {
    let _ = tokio::time::timeout(TCP_CLOSE_WAIT, async {
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 1024];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// How long a connection that found the port busy waits before it is
/// offered again: 100 ms.
pub const BUSY_RECHECK: Duration = Duration::from_millis(100);

/// Offers a connection that found the port busy once more after
/// [`BUSY_RECHECK`]: a host that closes and at once reconnects may be seen
/// connecting before its old connection is seen closing.
pub(crate) fn offer_again(
    stream: TcpStream,
    peer: SocketAddr,
    events: mpsc::UnboundedSender<PortEvent>,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(BUSY_RECHECK) => {
                let _ = events.send(PortEvent::Connection(stream, peer, true));
            }
        }
    });
}

/// Refuses a second TCP host: one [`BUSY_LINE`], then close.
pub(crate) fn refuse_busy(mut stream: TcpStream, peer: SocketAddr) {
    crate::conn_log!(info, %peer, "second AT host refused: port busy");
    tokio::spawn(async move {
        let line = frame(BUSY_LINE);
        let _ = tokio::time::timeout(WRITE_LIMIT, stream.write_all(line.as_bytes())).await;
        close_tcp(stream).await;
    });
}

/// Accepts TCP hosts until cancelled, handing each to the session.
pub(crate) fn spawn_accept(
    listener: TcpListener,
    events: mpsc::UnboundedSender<PortEvent>,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    accept_loop(listener, cancel, move |stream, peer| {
        let _ = stream.set_nodelay(true);
        events
            .send(PortEvent::Connection(stream, peer, false))
            .is_ok()
    })
}

/// Accepts connections until cancelled or `on_accept` returns `false`;
/// a failing accept (out of descriptors and the like) backs off and
/// retries.
pub(crate) fn accept_loop(
    listener: TcpListener,
    cancel: CancellationToken,
    mut on_accept: impl FnMut(TcpStream, SocketAddr) -> bool + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if !on_accept(stream, peer) {
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(NO_HOST_POLL).await;
                    }
                },
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// A host that does not read: frames past the queue are dropped and
    /// counted (one warning per episode, not one per frame); once it reads
    /// again, the count starts over.
    #[tokio::test]
    async fn frames_a_host_does_not_read_are_counted_per_episode() {
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let channel = Channel::spawn(
            1,
            PortKind::Tcp,
            true,
            CancellationToken::new(),
            |mut rx, _| async move {
                let _ = wait.await;
                while rx.recv().await.is_some() {}
            },
        );
        for _ in 0..QUEUE + 5 {
            channel.send(Bytes::from_static(b"URC\r\n"));
        }
        assert_eq!(channel.dropped.load(Ordering::Relaxed), 5);
        go.send(()).unwrap();
        // The host reads: the queue drains and the next frame goes through.
        let drained = async {
            while channel.frames.capacity() < QUEUE {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), drained)
            .await
            .expect("the host drains the queue");
        channel.send(Bytes::from_static(b"OK\r\n"));
        assert_eq!(channel.dropped.load(Ordering::Relaxed), 0);
    }
}

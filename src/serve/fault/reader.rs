//! [`FaultedReader`]: the byte-stream faults (`drop-after`, `stall-after`,
//! `slow`, `corrupt`) applied to a package body as it is read, the same way
//! for FTP `RETR` and an HTTP body.

use std::io;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use super::rule::Action;
use super::set::Applied;
use crate::catalog::PackageReader;
use crate::dlog::Attempt;
use crate::serve::delivery::{self, TcpEnds};

/// The connection a body goes out on, once known (HTTP: at once; FTP: when
/// the transfer has found its data connection): a `stall-after` transfer
/// looks at it to notice a client that gave up.
pub type PeerWatch = std::sync::Arc<std::sync::OnceLock<TcpEnds>>;

/// How often a silent `stall-after` transfer looks whether its client is
/// still there (one `sock_diag` look-up each).
pub const PEER_CHECK: Duration = Duration::from_millis(500);

/// Applies a data action to a package body read from `offset` onwards.
pub struct FaultedReader<R> {
    inner: R,
    action: Action,
    /// Absolute package offset of the next byte read.
    pos: u64,
    /// Package size in bytes (for percentages).
    size: u64,
    shutdown: CancellationToken,
    sleep: Option<Pin<Box<Sleep>>>,
    /// When throttling: start instant and the offset it started at.
    started: Option<(tokio::time::Instant, u64)>,
    scratch: Vec<u8>,
    /// How long a `stall-after` transfer stays silent before it ends.
    stall_limit: Duration,
    cancelled: Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
    /// The connection, for noticing a client that left during a stall.
    peer: Option<PeerWatch>,
    /// The next look at it, when the stall began, and whether the peer
    /// had already closed its side then (a half-close: RFC 9112 §9.6).
    peer_check: Option<(Pin<Box<Sleep>>, tokio::time::Instant, bool)>,
}

impl<R> FaultedReader<R> {
    /// Wraps `inner`, positioned at package byte `offset` of `size`. A
    /// `stall-after` transfer ends with `TimedOut` after `stall_limit` (the
    /// server's stall timeout) or at shutdown.
    pub fn new(
        inner: R,
        action: Action,
        offset: u64,
        size: u64,
        shutdown: CancellationToken,
        stall_limit: Duration,
    ) -> Self {
        FaultedReader {
            inner,
            action,
            pos: offset,
            size,
            shutdown,
            sleep: None,
            started: None,
            scratch: Vec::new(),
            stall_limit,
            cancelled: None,
            peer: None,
            peer_check: None,
        }
    }
}

impl<R: AsyncRead + Unpin> FaultedReader<R> {
    /// How many bytes may go out before the fault point (`None`: no
    /// limit), or what to answer right now instead of reading.
    fn limit(&mut self, cx: &mut Context<'_>) -> ControlFlow<Poll<io::Result<()>>, Option<u64>> {
        match &self.action {
            Action::DropAfter(a) => {
                let at = a.of(self.size);
                if self.pos >= at {
                    // End of stream: the front-end closes the connection
                    // short of the promised length.
                    return ControlFlow::Break(Poll::Ready(Ok(())));
                }
                ControlFlow::Continue(Some(at - self.pos))
            }
            Action::StallAfter(at) if self.pos >= *at => ControlFlow::Break(self.poll_stalled(cx)),
            Action::StallAfter(at) => ControlFlow::Continue(Some(at - self.pos)),
            Action::Slow(rate) => {
                if let Some(sleep) = self.sleep.as_mut() {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return ControlFlow::Break(Poll::Pending);
                    }
                    self.sleep = None;
                }
                // Send at most a tenth of a second's worth per read.
                ControlFlow::Continue(Some((rate / 10).max(1)))
            }
            _ => ControlFlow::Continue(None),
        }
    }

    /// Past the `stall-after` point: stay silent until the stall limit (the
    /// server's own stall timeout) or shutdown, whichever comes first.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let limit = self.stall_limit;
        let timer = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("fault: stalled for {} s, transfer ended", limit.as_secs()),
            )));
        }
        let token = self.shutdown.clone();
        let shutdown = self
            .cancelled
            .get_or_insert_with(|| Box::pin(token.cancelled_owned()));
        if shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "fault: stalled transfer ended by shutdown",
            )));
        }
        // A client that gave up during the silence (closed its side then,
        // or the connection is gone) ends the stall, not the limit: the
        // record says when the module left. A client that had closed its
        // side before the stall began only half-closed (it sent its
        // request, then FIN, and still reads): it waits for the limit.
        let Some(ends) = self.peer.as_ref().and_then(|p| p.get().copied()) else {
            return Poll::Pending;
        };
        let look = move || delivery::peer_closed(ends);
        loop {
            let (check, since, half_closed) = self.peer_check.get_or_insert_with(|| {
                let now = tokio::time::Instant::now();
                let half_closed = look() == Some(true);
                (Box::pin(tokio::time::sleep(PEER_CHECK)), now, half_closed)
            });
            if check.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let gone = match look() {
                None => true,
                Some(closed) => closed && !*half_closed,
            };
            if gone {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!(
                        "fault: stalled; the client closed the connection after {} s of silence",
                        since.elapsed().as_secs()
                    ),
                )));
            }
            let next = tokio::time::Instant::now() + PEER_CHECK;
            check.as_mut().reset(next);
        }
    }

    /// Watches `peer` during a `stall-after` silence.
    pub fn watching(mut self, peer: Option<PeerWatch>) -> Self {
        self.peer = peer;
        self
    }

    /// Reads into `buf`, at most `limit` bytes when given.
    fn read_at_most(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        limit: Option<u64>,
    ) -> Poll<io::Result<()>> {
        match limit {
            Some(limit) if (limit as usize) < buf.remaining() => {
                // Read through a scratch buffer (a narrowed ReadBuf would
                // need `unsafe` to hand bytes back).
                let FaultedReader { inner, scratch, .. } = self;
                scratch.resize(limit as usize, 0);
                let mut small = ReadBuf::new(scratch);
                let poll = Pin::new(inner).poll_read(cx, &mut small);
                buf.put_slice(small.filled());
                poll
            }
            _ => Pin::new(&mut self.inner).poll_read(cx, buf),
        }
    }

    /// After new bytes were read (`buf.filled()[before..]`): flips
    /// the `corrupt` byte if it is among them, schedules the next `slow`
    /// read, and advances the position.
    fn after_read(&mut self, buf: &mut ReadBuf<'_>, before: usize) {
        let n = (buf.filled().len() - before) as u64;
        if let Action::Corrupt(at) = self.action
            && at >= self.pos
            && at < self.pos + n
        {
            let idx = before + (at - self.pos) as usize;
            buf.filled_mut()[idx] ^= 0xff;
        }
        if let Action::Slow(rate) = self.action {
            let (t0, p0) = *self
                .started
                .get_or_insert((tokio::time::Instant::now(), self.pos));
            let due = t0 + Duration::from_secs_f64((self.pos + n - p0) as f64 / rate as f64);
            if due > tokio::time::Instant::now() {
                self.sleep = Some(Box::pin(tokio::time::sleep_until(due)));
            }
        }
        self.pos += n;
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for FaultedReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let limit = match this.limit(cx) {
            ControlFlow::Break(now) => return now,
            ControlFlow::Continue(limit) => limit,
        };
        let before = buf.filled().len();
        let poll = this.read_at_most(cx, buf, limit);
        if let Poll::Ready(Ok(())) = poll {
            this.after_read(buf, before);
        }
        poll
    }
}

/// `reader` with the byte-stream fault `applied` (if any) of an attempt
/// on a package of `size` bytes read from `attempt.range_start`; names the
/// rule in `attempt.fault`; a `stall-after` silence watches `peer`. The one
/// place both front-ends wrap a body.
pub(crate) fn apply_data_fault(
    reader: PackageReader,
    applied: Option<Applied>,
    attempt: &mut Attempt,
    size: u64,
    shutdown: CancellationToken,
    stall_limit: Duration,
    peer: Option<PeerWatch>,
) -> PackageReader {
    let Some(applied) = applied else {
        return reader;
    };
    attempt.fault = Some(applied.name);
    Box::new(
        FaultedReader::new(
            reader,
            applied.action,
            attempt.range_start,
            size,
            shutdown,
            stall_limit,
        )
        .watching(peer),
    )
}

#[cfg(test)]
mod tests {
    use super::super::rule::Amount;
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn read_all(action: Action, offset: u64) -> io::Result<Vec<u8>> {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let inner = std::io::Cursor::new(data[offset as usize..].to_vec());
        let mut r = FaultedReader::new(
            inner,
            action,
            offset,
            1000,
            CancellationToken::new(),
            Duration::from_secs(120),
        );
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.map(|_| out)
    }

    #[tokio::test]
    async fn drop_after_and_corrupt() {
        let mut r = FaultedReader::new(
            std::io::Cursor::new(vec![1u8; 1000]),
            Action::DropAfter(Amount::Percent(50.0)),
            0,
            1000,
            CancellationToken::new(),
            Duration::from_secs(120),
        );
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out.len(), 500, "ends early at the drop point");
        let out = read_all(Action::Corrupt(600), 500).await.unwrap();
        assert_eq!(out.len(), 500);
        assert_eq!(out[100], (600u32 as u8) ^ 0xff);
        assert_eq!(out[99], 599u32 as u8);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_throttles_and_stall_holds() {
        let start = tokio::time::Instant::now();
        let out = read_all(Action::Slow(100), 0).await.unwrap();
        assert_eq!(out.len(), 1000);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(9) && took <= Duration::from_secs(11),
            "{took:?}"
        );
        let start = tokio::time::Instant::now();
        let err = read_all(Action::StallAfter(10), 0).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(120),
            "ends at the stall limit"
        );
    }
}

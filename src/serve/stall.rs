//! Stall detection for a connection.
//!
//! A module on a dying cellular link, or a client that stops reading, leaves
//! a write pending forever; neither hyper nor libunftp time that out.
//! [`StallGuard`] fails a pending write once the connection made no progress
//! for the stall timeout, so the transfer ends, the slot is freed and the
//! download record says so instead of hanging.
//!
//! Progress means *a newly acknowledged byte* when the guard has an
//! [`AckTracker`] (every connection whose kernel counters can be read):
//! a module reading at 1 KB/s keeps a large write pending for minutes while
//! its TCP stack acknowledges every segment, and is slow, not stalled.
//! While a write is pending the guard asks the kernel every
//! [`ACK_POLL`]; without a tracker, progress is a write completing.
//!
//! It also counts completed flushes ([`FlushSignal`]): a response body that
//! must end short (the `drop-after` fault) waits for hyper to flush what it
//! holds before ending, so the client receives exactly the bytes promised.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::delivery::{ACK_POLL, AckTracker};
use super::lock;

/// Counts completed flushes of a connection and wakes every waiter on each;
/// counts the bytes the connection has written to its socket, and tells
/// whoever asked ([`FlushSignal::end_at_next_flush`]) what that count was
/// at the next completed flush.
#[derive(Debug, Default)]
pub struct FlushSignal {
    count: AtomicU64,
    written: AtomicU64,
    /// Bytes read from the connection (ciphertext under TLS).
    read: AtomicU64,
    /// Set while the connection waits for a request's first byte
    /// ([`FlushSignal::await_request`]).
    awaiting: AtomicBool,
    /// When the awaited first byte came (wall clock, monotonic clock).
    arrived: std::sync::Mutex<Option<(chrono::DateTime<chrono::Utc>, std::time::Instant)>>,
    /// The tasks to wake at the next completed flush: every one, since
    /// two may wait on one connection (the delivery of a body and that of
    /// the pipelined response after it).
    wakers: std::sync::Mutex<Vec<Waker>>,
    /// Marks to fill at the next completed flush.
    pending: std::sync::Mutex<Vec<Arc<OnceLock<u64>>>>,
}

impl FlushSignal {
    /// Flushes completed so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// A mark that gets the written count ([`FlushSignal::written`],
    /// bytes) at the next flush to complete: under TLS, where the
    /// ciphertext of everything handed over before that flush ends in the
    /// connection's byte stream. Set before that flush is counted, so it
    /// is there for whoever sees [`FlushSignal::count`] pass the count of
    /// now; empty while no flush has completed (the connection ended
    /// first).
    pub fn end_at_next_flush(&self) -> Arc<OnceLock<u64>> {
        let end = Arc::new(OnceLock::new());
        lock(&self.pending).push(Arc::clone(&end));
        end
    }

    /// Bytes read from this connection since the guard was made
    /// (ciphertext under TLS).
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Acquire)
    }

    /// Notes the time of the next byte read: the start of the next
    /// request (call when the connection is made, and once a request has
    /// been read).
    pub fn await_request(&self) {
        self.awaiting.store(true, Ordering::Release);
    }

    /// When the first byte after the latest [`FlushSignal::await_request`]
    /// came; `None` while none has.
    pub fn request_arrived(&self) -> Option<(chrono::DateTime<chrono::Utc>, std::time::Instant)> {
        if self.awaiting.load(Ordering::Acquire) {
            return None;
        }
        *lock(&self.arrived)
    }

    /// Bytes the kernel has taken from this connection's writes since the
    /// guard was made (for a connection guarded from its start, the
    /// kernel's own count of bytes written; ciphertext under TLS).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Wakes `cx` on the next completed flush (with every other task
    /// registered by then).
    pub fn register(&self, cx: &Context<'_>) {
        let mut wakers = lock(&self.wakers);
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
    }

    fn flushed(&self) {
        let written = self.written();
        for end in lock(&self.pending).drain(..) {
            let _ = end.set(written);
        }
        // Counted after the marks are set: whoever sees this flush finds
        // its mark filled.
        self.count.fetch_add(1, Ordering::AcqRel);
        let wakers = std::mem::take(&mut *lock(&self.wakers));
        for waker in wakers {
            waker.wake();
        }
    }
}

/// Wraps a stream; a write or flush pending while the connection makes no
/// progress for the timeout fails with `TimedOut` and sets the shared
/// stalled flag.
#[derive(Debug)]
pub struct StallGuard<S> {
    inner: S,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    stalled: Arc<AtomicBool>,
    flushes: Arc<FlushSignal>,
    ack: Option<Arc<AckTracker>>,
    boost: Option<Boost<S>>,
    /// Bytes written since the task last waited for the socket or yielded.
    turn: usize,
    /// Most bytes per turn: [`TURN_BYTES`] with a speed check until the
    /// connection proves fast, else unlimited (`usize::MAX`).
    turn_cap: usize,
}

/// Most bytes a connection writes in one turn (64 KiB) before it yields to
/// the other connections on its worker thread, until it proves fast (see
/// [`StallGuard::with_speed_check`]); what nginx's `sendfile_max_chunk` is
/// for. A client with a large receive window would otherwise take a whole
/// response in one turn while clients with small windows (which the kernel
/// grows only for a receiver that gets data faster than it reads) waited a
/// full round for each window's worth: with 256 clients fetching a 1 MiB
/// file, one in ten made a third as many requests as the others
/// (`bench/compare.py` S3, p99 latency 1.4–1.8× nginx's; with the cap,
/// 0.94–1.17× nginx's at 0.99–1.19× its requests per second). A turn ends
/// when the socket is full or the cap is reached; a yield arms no stall
/// timer.
pub const TURN_BYTES: usize = 64 * 1024;

/// A connection's first [`FAST_BYTES`]: if the socket took them within
/// [`FAST_WINDOW`], the client is fast ([`Verdict::Fast`]): its turns are
/// no longer capped and the stream is paced for a bulk client (HTTP:
/// `TCP_NOTSENT_LOWAT` [`FAST_LOWAT`]; FTP: a larger send buffer). Else it
/// keeps its cap per turn, and is paced as a module's link
/// ([`Verdict::Slow`], `TCP_NOTSENT_LOWAT` [`SLOW_LOWAT`]) if it took
/// less than [`SLOW_RATE`], or stays as it was set up (many clients on a
/// fast network, which share the server fairly).
#[derive(Debug)]
struct Boost<S> {
    /// Paces the guarded stream by its verdict.
    tune: fn(&S, Verdict) -> io::Result<()>,
    since: std::time::Instant,
    written: u64,
}

/// What the speed check made of a connection's first bytes
/// ([`StallGuard::with_speed_check`]); a connection that is neither keeps
/// how it was set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The socket took its first [`FAST_BYTES`] within [`FAST_WINDOW`]: a
    /// bulk client on a fast network.
    Fast,
    /// Less than [`SLOW_RATE`] over [`FAST_WINDOW`]: a module's link.
    Slow,
}

/// How much a connection writes per turn until its speed is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turns {
    /// At most [`TURN_BYTES`], then a yield to the other connections on
    /// the worker thread: HTTP, where hundreds of clients fetch responses
    /// side by side (`bench/compare.py` S3).
    Capped,
    /// Until the socket takes no more, as a blocking sender writes: an FTP
    /// data connection, which carries one file.
    Whole,
}

/// Bytes a connection writes before its speed is judged (8 MiB): only a
/// bulk transfer gets that far quickly. Many small responses in a row
/// (1 MiB files to hundreds of clients at once) keep the small value,
/// which shares the server fairly between them: with the larger one a few
/// connections took whole bodies at a time while the others waited
/// (`bench/compare.py` S3 with 1 MiB in 50 ms: 0.69× nginx's requests per
/// second, p99 latency 1.7× nginx's).
pub const FAST_BYTES: u64 = 8 << 20;
/// Time within which a fast connection writes [`FAST_BYTES`] (100 ms, i.e.
/// over 80 MB/s: no cellular module).
pub const FAST_WINDOW: Duration = Duration::from_millis(100);
/// `TCP_NOTSENT_LOWAT` of a fast connection (4 MiB).
pub const FAST_LOWAT: u32 = 4 << 20;
/// Rate under which a connection judged after [`FAST_WINDOW`] counts as a
/// slow link (1,000,000 bytes per second: a cellular module's download,
/// not a client on a LAN).
pub const SLOW_RATE: u64 = 1_000_000;
/// `TCP_NOTSENT_LOWAT` of an FTP transfer until its speed is judged
/// (2 MiB), instead of the listener's 16 KiB. The transfer queues that much
/// ahead, as a blocking sender fills its socket, so the client's window
/// updates send most bytes on from the queue and the server is woken for
/// large refills: with 16 KiB and capped turns, a transfer took about 20
/// times as many `sendfile` calls per GB. Server CPU per GB in `bench/compare.py` S4: 0.165 s
/// (16 KiB), 0.133 (1 MiB), 0.109 (2 MiB), about 0.10 (no limit). On a
/// cellular path the kernel's own send buffer, tens of KiB while the link
/// is slow, is the tighter bound; on loopback, where a segment is 64 KiB,
/// each slow download holds up to this much (or its whole package) in the
/// kernel's TCP memory (`net.ipv4.tcp_mem`) until it drains.
pub const BULK_LOWAT: u32 = 2 << 20;
/// `TCP_NOTSENT_LOWAT` of a slow link (128 KiB): the link, not the
/// server, sets its pace, so larger writes cost fewer wake-ups per byte
/// (`bench/compare.py` S6: 10,000 downloads at 20 kB/s took 1.4× the CPU
/// with the listener's 16 KiB).
pub const SLOW_LOWAT: u32 = 128 * 1024;

impl<S> StallGuard<S> {
    /// Guards `inner`; `timeout` is the longest a write may make no progress.
    pub fn new(inner: S, timeout: Duration) -> Self {
        StallGuard {
            inner,
            timeout,
            deadline: None,
            stalled: Arc::new(AtomicBool::new(false)),
            flushes: Arc::default(),
            ack: None,
            boost: None,
            turn: 0,
            turn_cap: usize::MAX,
        }
    }

    /// Judges the connection's speed on its first [`FAST_BYTES`] and calls
    /// `tune(&stream, verdict)` once for a fast connection or a slow link
    /// (a failure is logged at debug level: the connection goes on as it
    /// is). With [`Turns::Capped`], a turn writes at most [`TURN_BYTES`]
    /// until the connection proves fast, and for good on a slower one.
    pub fn with_speed_check(
        mut self,
        tune: fn(&S, Verdict) -> io::Result<()>,
        turns: Turns,
    ) -> Self {
        self.turn_cap = match turns {
            Turns::Capped => TURN_BYTES,
            Turns::Whole => usize::MAX,
        };
        self.boost = Some(Boost {
            tune,
            since: std::time::Instant::now(),
            written: 0,
        });
        self
    }

    /// Counts `n` bytes written: toward the turn, the connection's written
    /// count ([`FlushSignal::written`]) and the speed check, which judges
    /// the connection once it has seen enough.
    fn wrote(&mut self, n: usize) {
        self.turn = self.turn.saturating_add(n);
        self.flushes.written.fetch_add(n as u64, Ordering::AcqRel);
        let Some(boost) = &mut self.boost else {
            return;
        };
        boost.written += n as u64;
        let elapsed = boost.since.elapsed();
        let verdict = if boost.written >= FAST_BYTES && elapsed <= FAST_WINDOW {
            self.turn_cap = usize::MAX;
            Some(Verdict::Fast)
        } else if boost.written >= FAST_BYTES || elapsed > FAST_WINDOW {
            let rate = u128::from(boost.written) * 1_000_000 / elapsed.as_micros().max(1);
            (rate < u128::from(SLOW_RATE)).then_some(Verdict::Slow)
        } else {
            return;
        };
        if let Some(verdict) = verdict
            && let Err(error) = (boost.tune)(&self.inner, verdict)
        {
            tracing::debug!(%error, ?verdict, "cannot pace the connection");
        }
        self.boost = None;
    }

    /// Measures progress by `ack`'s acknowledged bytes instead of by
    /// completed writes.
    pub fn with_ack(mut self, ack: Arc<AckTracker>) -> Self {
        self.ack = Some(ack);
        self
    }

    /// The connection's flush counter.
    pub fn flush_signal(&self) -> Arc<FlushSignal> {
        Arc::clone(&self.flushes)
    }

    /// A flag that turns true once a write has stalled past the timeout.
    pub fn stalled_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stalled)
    }

    /// Ends the turn once it has written its cap: wakes the task to run
    /// again after the others (a yield), so `Pending` without a timer.
    fn poll_turn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.turn < self.turn_cap {
            return Poll::Ready(());
        }
        self.turn = 0;
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn check<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_pending() {
            // Waiting for the socket: the next write starts a new turn.
            self.turn = 0;
        }
        if poll.is_ready() {
            self.deadline = None;
            // The kernel took bytes, so the peer's acknowledgements made
            // room: progress, without asking the kernel (a look-up per
            // write costs more CPU than the write on slow connections).
            if let Some(ack) = &self.ack {
                ack.note_progress();
            }
            return poll;
        }
        // Pending: look at the acknowledgements every eighth of the
        // timeout (between `ACK_POLL` and 15 s), or wait out the timeout
        // without a tracker, and decide then.
        let step = match &self.ack {
            Some(_) => {
                (self.timeout / 8).clamp(ACK_POLL.min(self.timeout), Duration::from_secs(15))
            }
            None => self.timeout,
        };
        loop {
            let deadline = self
                .deadline
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(step)));
            if deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.deadline = None;
            let idle = match &self.ack {
                Some(ack) => {
                    ack.refresh();
                    ack.since_progress()
                }
                None => self.timeout,
            };
            if idle >= self.timeout {
                self.stalled.store(true, Ordering::Relaxed);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no progress for {} s", self.timeout.as_secs()),
                )));
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.flushes.read.fetch_add(n as u64, Ordering::AcqRel);
            if self.flushes.awaiting.load(Ordering::Acquire) {
                *lock(&self.flushes.arrived) =
                    Some((chrono::Utc::now(), std::time::Instant::now()));
                self.flushes.awaiting.store(false, Ordering::Release);
            }
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_turn(cx));
        let buf = &buf[..taken(buf.len(), self.turn_cap - self.turn)];
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.wrote(n);
        }
        self.check(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = poll {
            self.flushes.flushed();
        }
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_turn(cx));
        let mut cut = [io::IoSlice::new(&[]); CUT_SLICES];
        let bufs = within(bufs, self.turn_cap - self.turn, &mut cut);
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            self.wrote(n);
        }
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Most slices [`within`] copies to cut the last one short.
const CUT_SLICES: usize = 16;

/// A slice that would be cut with less than this left (4 KiB) is taken
/// whole: a turn may overrun its cap by that much rather than leave a
/// remnant for a write of its own (response headers counted in a turn
/// would otherwise leave one at the end of every body frame).
const CUT_SLACK: usize = 4096;

/// Bytes of a `len`-byte slice a turn with `room` bytes left takes: all
/// of it when that overruns `room` by at most [`CUT_SLACK`], else `room`.
fn taken(len: usize, room: usize) -> usize {
    if len <= room.saturating_add(CUT_SLACK) {
        len
    } else {
        room
    }
}

/// The first `limit` bytes of `bufs` (or up to [`CUT_SLACK`] more, to end
/// on a slice's end, see [`taken`]): `bufs` itself when it holds no more;
/// else its leading slices with the last one cut short, copied into `cut`
/// (or, past [`CUT_SLICES`] slices, only the whole ones before it).
fn within<'a>(
    bufs: &'a [io::IoSlice<'a>],
    limit: usize,
    cut: &'a mut [io::IoSlice<'a>; CUT_SLICES],
) -> &'a [io::IoSlice<'a>] {
    let mut total = 0;
    for (i, buf) in bufs.iter().enumerate() {
        let take = taken(buf.len(), limit - total);
        if take == buf.len() {
            total += take;
            if total >= limit {
                return &bufs[..=i];
            }
        } else if i >= CUT_SLICES {
            return &bufs[..i];
        } else {
            cut[..i].copy_from_slice(&bufs[..i]);
            cut[i] = io::IoSlice::new(&buf[..take]);
            return &cut[..=i];
        }
    }
    bufs
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Counts wake-ups.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A body's delivery and the pipelined response's after it wait for
    /// flushes of one connection: the next flush wakes both, however
    /// their registrations interleave (one waker slot lost the first's).
    #[test]
    fn a_flush_wakes_every_task_waiting_for_it() {
        let signal = FlushSignal::default();
        let (one, two) = (
            Arc::new(Wakes(Default::default())),
            Arc::new(Wakes(Default::default())),
        );
        let (w1, w2) = (Waker::from(Arc::clone(&one)), Waker::from(Arc::clone(&two)));
        signal.register(&Context::from_waker(&w1));
        signal.register(&Context::from_waker(&w2));
        // The same task again: woken once.
        signal.register(&Context::from_waker(&w1));
        signal.flushed();
        assert_eq!(one.0.load(Ordering::SeqCst), 1);
        assert_eq!(two.0.load(Ordering::SeqCst), 1);
        assert_eq!(signal.count(), 1);
        // Woken ones are forgotten: the next flush wakes nobody.
        signal.flushed();
        assert_eq!(one.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn within_keeps_short_lists_and_cuts_the_slice_that_crosses_the_limit() {
        let (a, b, c) = ([1u8; 10], [2u8; 20], [3u8; 30]);
        let bufs = [
            io::IoSlice::new(&a),
            io::IoSlice::new(&b),
            io::IoSlice::new(&c),
        ];
        let lens = |limit| {
            let mut cut = [io::IoSlice::new(&[]); CUT_SLICES];
            within(&bufs, limit, &mut cut)
                .iter()
                .map(|s| s.len())
                .collect::<Vec<_>>()
        };
        assert_eq!(lens(60), [10, 20, 30]);
        assert_eq!(lens(100), [10, 20, 30]);
        assert_eq!(lens(25), [10, 20], "5 bytes left: taken whole");
        assert_eq!(lens(30), [10, 20]);
        assert_eq!(lens(5), [10]);
        let big = vec![4u8; 3 * CUT_SLACK];
        let bufs = [io::IoSlice::new(&a), io::IoSlice::new(&big)];
        let mut cut = [io::IoSlice::new(&[]); CUT_SLICES];
        let lens: Vec<_> = within(&bufs, 1000, &mut cut)
            .iter()
            .map(|s| s.len())
            .collect();
        assert_eq!(lens, [10, 990], "cut where the rest is more than the slack");
    }

    #[tokio::test]
    async fn a_slow_connection_writes_at_most_a_turn_then_yields_once() {
        let (a, mut b) = tokio::io::duplex(4 * TURN_BYTES);
        let mut guard = StallGuard::new(a, Duration::from_secs(5))
            .with_speed_check(|_, _| Ok(()), Turns::Capped);
        let data = vec![7u8; 3 * TURN_BYTES];
        let wakes = Arc::new(Wakes(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        let first = Pin::new(&mut guard).poll_write(&mut cx, &data);
        assert!(
            matches!(first, Poll::Ready(Ok(n)) if n == TURN_BYTES),
            "one turn's worth: {first:?}"
        );
        // The cap is reached: the next write yields (Pending, woken at
        // once), then goes on with a new turn.
        let second = Pin::new(&mut guard).poll_write(&mut cx, &data[TURN_BYTES..]);
        assert!(second.is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "woken to run again");
        assert!(guard.deadline.is_none(), "a yield arms no stall timer");
        let third = Pin::new(&mut guard).poll_write(&mut cx, &data[TURN_BYTES..]);
        assert!(
            matches!(third, Poll::Ready(Ok(n)) if n == TURN_BYTES),
            "{third:?}"
        );
        guard.write_all(&data[2 * TURN_BYTES..]).await.unwrap();
        guard.shutdown().await.unwrap();
        drop(guard);
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got)
            .await
            .unwrap();
        assert_eq!(got, data, "every byte, in order");
    }

    /// The verdicts a test's `tune` was given, in order.
    static VERDICTS: std::sync::Mutex<Vec<Verdict>> = std::sync::Mutex::new(Vec::new());

    #[tokio::test]
    async fn the_speed_check_sets_a_fast_and_a_slow_link_apart() {
        let record = |_: &tokio::io::DuplexStream, verdict| {
            VERDICTS.lock().unwrap().push(verdict);
            Ok(())
        };
        // Fast: 8 MiB taken at once; turns are no longer capped after it.
        let (a, _b) = tokio::io::duplex(FAST_BYTES as usize + 4 * TURN_BYTES);
        let mut fast =
            StallGuard::new(a, Duration::from_secs(5)).with_speed_check(record, Turns::Capped);
        let data = vec![1u8; FAST_BYTES as usize];
        fast.write_all(&data).await.unwrap();
        assert_eq!(*VERDICTS.lock().unwrap(), [Verdict::Fast]);
        assert_eq!(
            fast.write(&[1u8; 2 * TURN_BYTES]).await.unwrap(),
            2 * TURN_BYTES
        );
        // Slow: 1 KiB, then nothing past the window: a module's link.
        let (a, _b) = tokio::io::duplex(64 * 1024);
        let mut slow =
            StallGuard::new(a, Duration::from_secs(5)).with_speed_check(record, Turns::Capped);
        slow.write_all(&[2u8; 1024]).await.unwrap();
        tokio::time::sleep(FAST_WINDOW + Duration::from_millis(20)).await;
        slow.write_all(&[2u8; 1024]).await.unwrap();
        assert_eq!(*VERDICTS.lock().unwrap(), [Verdict::Fast, Verdict::Slow]);
        assert_eq!(slow.turn_cap, TURN_BYTES, "a slow link keeps the cap");
        // Whole turns: uncapped before any verdict, and judged alike.
        let (a, _b) = tokio::io::duplex(4 * TURN_BYTES);
        let mut whole =
            StallGuard::new(a, Duration::from_secs(5)).with_speed_check(record, Turns::Whole);
        assert_eq!(
            whole.write(&[3u8; 3 * TURN_BYTES]).await.unwrap(),
            3 * TURN_BYTES,
            "one write takes what the stream takes"
        );
        // 193 KiB over 300 ms: under `SLOW_RATE`.
        tokio::time::sleep(3 * FAST_WINDOW).await;
        whole.write_all(&[3u8; 1024]).await.unwrap();
        assert_eq!(
            *VERDICTS.lock().unwrap(),
            [Verdict::Fast, Verdict::Slow, Verdict::Slow]
        );
        assert_eq!(whole.turn_cap, usize::MAX, "whole turns stay whole");
    }

    #[tokio::test]
    async fn without_a_speed_check_writes_are_not_capped() {
        let (a, _b) = tokio::io::duplex(4 * TURN_BYTES);
        let mut guard = StallGuard::new(a, Duration::from_secs(5));
        let flushes = guard.flush_signal();
        let data = vec![7u8; 3 * TURN_BYTES];
        let n = guard.write(&data).await.unwrap();
        assert_eq!(n, data.len());
        assert_eq!(flushes.written(), data.len() as u64, "the written count");
    }

    #[tokio::test]
    async fn an_end_mark_gets_the_written_count_of_the_next_flush() {
        let (a, _b) = tokio::io::duplex(1 << 20);
        let mut guard = StallGuard::new(a, Duration::from_secs(5));
        let flushes = guard.flush_signal();
        guard.write_all(&[1u8; 100]).await.unwrap();
        let end = flushes.end_at_next_flush();
        assert_eq!(end.get(), None, "no flush yet");
        guard.write_all(&[2u8; 50]).await.unwrap();
        guard.flush().await.unwrap();
        let later = flushes.end_at_next_flush();
        guard.write_all(&[3u8; 10]).await.unwrap();
        // Later writes and flushes leave the mark as it was.
        guard.flush().await.unwrap();
        guard.write_all(&[4u8; 10]).await.unwrap();
        guard.flush().await.unwrap();
        assert_eq!(end.get(), Some(&150));
        assert_eq!(later.get(), Some(&160));
        assert_eq!(flushes.count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_fails_after_the_timeout() {
        // A duplex pipe with a 16-byte buffer whose reader never reads.
        let (a, _b) = tokio::io::duplex(16);
        let mut guard = StallGuard::new(a, Duration::from_secs(30));
        let flag = guard.stalled_flag();
        let err = guard.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(flag.load(Ordering::Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_resets_the_deadline() {
        let (a, mut b) = tokio::io::duplex(16);
        let mut guard = StallGuard::new(a, Duration::from_secs(30));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let mut total = 0;
            while total < 256 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                total += tokio::io::AsyncReadExt::read(&mut b, &mut buf)
                    .await
                    .unwrap();
            }
            total
        });
        guard.write_all(&[1u8; 256]).await.unwrap();
        assert!(reader.await.unwrap() >= 256);
        assert!(!guard.stalled_flag().load(Ordering::Relaxed));
    }
}

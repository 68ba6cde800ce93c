//! The download log's file sink: a dedicated writer thread that owns the
//! `--log` file, so no write(2) ever runs on an async worker thread and
//! [`super::DownloadLog::emit`] never waits for the disk.
//!
//! What it guarantees, and how:
//!
//! - **Whole lines.** The file is opened `O_APPEND` and each record is one
//!   `write(2)` of the full line. A short write (the disk filled up in the
//!   middle of the line) is taken back with `ftruncate`, and the record
//!   stays queued: no torn or merged line is ever left in the file.
//! - **Rotation.** [`DownloadLog::reopen`](super::DownloadLog::reopen)
//!   (the serve command calls it on `SIGHUP`, logrotate's `postrotate`)
//!   reopens the path; the writer also compares the path's device/inode with the open file's every
//!   [`CHECK_INTERVAL`] and reopens when the file was renamed or deleted.
//! - **Full or failing disk.** On `ENOSPC`/`EIO` records wait in a queue of
//!   at most [`QUEUE_BYTES`] and are retried on the next record and every
//!   [`CHECK_INTERVAL`]. Records that do not fit are dropped, counted, said
//!   on stderr (`tracing`), and the next record written carries the count
//!   as `"dropped_before": N`.
//! - **Shutdown.** [`DownloadLog::flush`](super::DownloadLog::flush)
//!   writes everything queued (`Server::shutdown` awaits it); dropping the
//!   sink lets the writer drain the channel and the queue before the
//!   process goes on (bounded by [`FINAL_FLUSH_TIMEOUT`]).
//!
//! Why not `tracing-appender`'s `non_blocking`: it hands bytes to a writer
//! and forgets them on error (no queue, no retry, no count in the next
//! record) and knows nothing of reopening a renamed file; the part it
//! would save — a thread fed by a bounded channel — is the small part.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{DownloadRecord, Memory};

/// Records handed to the writer thread and not yet taken by it (4,096).
/// When the writer cannot keep up (a disk that blocks), `emit` drops the
/// file copy instead of waiting — stops a slow disk from stalling the
/// async workers — and the drop is counted into the next record's
/// `dropped_before`. Sized for bursts a healthy disk takes: 4 clients
/// pipelining 1,000 `HEAD`s each outran the writer (which also says every
/// record on stderr) by about 400 records with 1,024.
pub const CHANNEL_CAPACITY: usize = 4096;

/// Bytes of JSON lines kept while the file cannot be written (`ENOSPC`,
/// `EIO`): 4 MiB, about 8,000 typical records and at least 400 of the
/// largest (capped fields full of escaped characters). Stops a full disk
/// from turning into unbounded memory growth; past it records are dropped
/// and counted.
pub const QUEUE_BYTES: usize = 4 << 20;

/// How often the writer retries queued records and checks whether the log
/// file was renamed or deleted: a rotation is noticed within this, well
/// under a second.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// How long one turn of the log's writer (its writes, its look at the
/// file's name, a reopen) may take before the log counts as not writable
/// (`/readyz` 503, `qfota_log_writable` 0): a file on a hung network
/// mount, a pipe nobody reads.
pub const WRITE_STALL: Duration = Duration::from_secs(5);

/// How long the writer waits after a record wakes it before it writes
/// what came (2 ms): records that arrive meanwhile go in the same round.
/// At a few thousand downloads a second, one wake-up per record of this
/// thread and of the stderr writer cost the server about a tenth of its
/// requests per second (`bench/compare.py` S3). The stderr line of each
/// record is said here too, before the file is written; while a write
/// hangs (a hard-mounted NFS share, not a full disk, which fails at once)
/// the lines of the records waiting in the channel wait with it, and once
/// the channel is full `emit` says each new one itself.
pub const BATCH_LINGER: Duration = Duration::from_millis(2);

/// How long dropping the last handle to the log waits for the writer to
/// write what is queued (a disk that hangs must not hang shutdown).
pub const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The writer's state as the admin listener reports it (`/readyz`,
/// `/metrics`): a copy taken with [`super::DownloadLog::health`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogHealth {
    /// Records waiting for the file (in the writer's queue, not yet
    /// written): 0 while the file takes every record.
    pub queued: u64,
    /// Records dropped since start: the queue was full (a disk full longer
    /// than [`QUEUE_BYTES`] lasts) or the writer could not keep up.
    pub dropped: u64,
    /// The last write or reopen failed and has not succeeded since: the
    /// error, with the path (`ENOSPC`, `EIO`, a deleted folder); or a write
    /// has not returned for [`WRITE_STALL`] (a hung mount, a pipe nobody
    /// reads). `None` while the log is writable.
    pub error: Option<String>,
}

/// What the writer shares with [`LogHealth`] readers.
#[derive(Debug, Default)]
struct HealthCell {
    queued: AtomicU64,
    dropped: AtomicU64,
    error: Mutex<Option<String>>,
    /// When the writer's turn in progress began (a look at the file, a
    /// reopen, writes); `None` between turns.
    busy_since: Mutex<Option<Instant>>,
}

impl HealthCell {
    fn set_error(&self, error: Option<String>) {
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    fn set_busy(&self, since: Option<Instant>) {
        *self.busy_since.lock().unwrap_or_else(|p| p.into_inner()) = since;
    }
}

/// Requests the writer takes on its next turn, besides records.
#[derive(Debug, Default)]
struct Requests {
    /// Records `emit` could not hand over (channel full).
    overflow: AtomicU64,
    /// `SIGHUP`: reopen the path.
    reopen: AtomicBool,
    /// Callers of [`FileSink::flush`], answered with the records still
    /// queued once everything sent before the call was tried.
    flush: Mutex<Vec<oneshot::Sender<usize>>>,
    /// Queue length, drops and the last error, for [`LogHealth`].
    health: HealthCell,
}

/// The sending side of the writer thread, held by the log.
#[derive(Debug)]
pub(super) struct FileSink {
    /// `None` once dropping began (the writer then drains and exits).
    tx: Option<SyncSender<Option<Box<DownloadRecord>>>>,
    requests: Arc<Requests>,
    /// Disconnects when the writer thread ends.
    done: Mutex<Receiver<()>>,
    /// The log's path, for [`LogHealth::error`].
    path: PathBuf,
}

impl FileSink {
    /// Opens `path` for appending (created if missing) and starts the
    /// writer thread, which publishes each record to `memory` once the file
    /// write was tried.
    pub(super) fn open(path: &Path, memory: Arc<Memory>) -> io::Result<FileSink> {
        let file = open_append(path)?;
        let identity = identity(&file.metadata()?);
        let (tx, rx) = mpsc::sync_channel(CHANNEL_CAPACITY);
        let (done_tx, done_rx) = mpsc::channel();
        let requests = Arc::new(Requests::default());
        let writer = Writer {
            path: path.to_path_buf(),
            file: Some(file),
            identity,
            queue: VecDeque::new(),
            queued_bytes: 0,
            gap: 0,
            failing: false,
            unterminated: false,
            reopen_failing: false,
            dropping: 0,
            last_check: Instant::now(),
            requests: Arc::clone(&requests),
            memory,
        };
        std::thread::Builder::new()
            .name("qfota-download-log".into())
            .spawn(move || {
                writer.run(&rx);
                drop(done_tx);
            })?;
        Ok(FileSink {
            tx: Some(tx),
            requests,
            done: Mutex::new(done_rx),
            path: path.to_path_buf(),
        })
    }

    /// Hands `record` to the writer without waiting. Gives it back when
    /// the channel is full or the writer is gone: the caller publishes it
    /// to memory itself, and the file's loss is counted.
    pub(super) fn send(&self, record: DownloadRecord) -> Option<DownloadRecord> {
        let Some(tx) = &self.tx else {
            return Some(record);
        };
        match tx.try_send(Some(Box::new(record))) {
            Ok(()) => None,
            Err(TrySendError::Full(r) | TrySendError::Disconnected(r)) => {
                self.requests.overflow.fetch_add(1, Ordering::Relaxed);
                r.map(|r| *r)
            }
        }
    }

    /// The writer's queue, drops (overflows not yet taken by the writer
    /// included) and error state now.
    pub(super) fn health(&self) -> LogHealth {
        let h = &self.requests.health;
        LogHealth {
            queued: h.queued.load(Ordering::Relaxed),
            dropped: h.dropped.load(Ordering::Relaxed)
                + self.requests.overflow.load(Ordering::Relaxed),
            error: h
                .error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .or_else(|| self.stalled_write()),
        }
    }

    /// A writer's turn (a write, a look at the file, a reopen) that has not
    /// returned for [`WRITE_STALL`] or longer, said as an error.
    fn stalled_write(&self) -> Option<String> {
        let h = &self.requests.health;
        let since = (*h.busy_since.lock().unwrap_or_else(|p| p.into_inner()))?;
        let stalled = since.elapsed();
        (stalled >= WRITE_STALL).then(|| {
            format!(
                "{}: the file has not answered for {} s (a write, a look at it or a reopen)",
                self.path.display(),
                stalled.as_secs()
            )
        })
    }

    /// Asks the writer to reopen the path (after `SIGHUP`); done on its
    /// next turn, within [`CHECK_INTERVAL`].
    pub(super) fn reopen(&self) {
        self.requests.reopen.store(true, Ordering::Relaxed);
        self.wake();
    }

    /// Waits until every record sent before this call was written (or
    /// found the file unwritable); returns how many are still queued
    /// (0 when all are in the file). Bounded by [`FINAL_FLUSH_TIMEOUT`];
    /// `None` when the writer did not answer in time.
    pub(super) async fn flush(&self) -> Option<usize> {
        let (ack, answer) = oneshot::channel();
        self.requests
            .flush
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ack);
        self.wake();
        tokio::time::timeout(FINAL_FLUSH_TIMEOUT, answer)
            .await
            .ok()?
            .ok()
    }

    /// A `None` in the channel only wakes the writer; when the channel is
    /// full the writer is awake anyway.
    fn wake(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(None);
        }
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        // Closing the channel makes the writer drain it, write what it can
        // and exit; wait for that so records are on disk before the
        // process ends.
        self.tx = None;
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        let _ = done.recv_timeout(FINAL_FLUSH_TIMEOUT);
    }
}

/// One JSON line waiting for the file.
struct Queued {
    /// The record as JSON, ending in `}\n`.
    line: String,
    /// Records dropped just before this one (0: none).
    dropped_before: u64,
}

impl Queued {
    /// The bytes to write: the line, with `"dropped_before": N` added
    /// when records were dropped before it.
    fn bytes(&self) -> std::borrow::Cow<'_, str> {
        match self.line.strip_suffix("}\n") {
            Some(head) if self.dropped_before > 0 => {
                format!("{head},\"dropped_before\":{}}}\n", self.dropped_before).into()
            }
            _ => self.line.as_str().into(),
        }
    }
}

/// The writer thread's state.
struct Writer {
    path: PathBuf,
    /// `None` while the path cannot be opened.
    file: Option<File>,
    /// Device and inode of `file`.
    identity: (u64, u64),
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    /// Records dropped since the last one queued.
    gap: u64,
    /// The last write failed (reported once per episode).
    failing: bool,
    /// A short write could not be taken back: end that fragment with a
    /// newline before the next record, so no record merges with it.
    unterminated: bool,
    reopen_failing: bool,
    /// Records dropped in the current episode, for the stderr report.
    dropping: u64,
    last_check: Instant,
    requests: Arc<Requests>,
    memory: Arc<Memory>,
}

impl Writer {
    fn run(mut self, rx: &Receiver<Option<Box<DownloadRecord>>>) {
        loop {
            let next = rx.recv_timeout(CHECK_INTERVAL);
            // The whole turn counts, not only the writes: on a hung mount
            // the look at the file's name or a reopen blocks first.
            self.requests.health.set_busy(Some(Instant::now()));
            self.housekeeping();
            match next {
                Ok(Some(record)) => {
                    // Let a burst gather: one wake-up, one look at the
                    // file and one write round per batch, not per record.
                    std::thread::sleep(BATCH_LINGER);
                    let mut batch = vec![*record];
                    batch.extend(waiting(rx));
                    self.take(batch);
                }
                Ok(None) | Err(RecvTimeoutError::Timeout) => self.drain(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.answer_flushes(rx);
            self.requests.health.set_busy(None);
        }
        self.drain();
        self.answer_flushes(rx);
        if !self.queue.is_empty() {
            tracing::error!(
                lost = self.queue.len(),
                path = %self.path.display(),
                "download log: records still queued at exit are lost (file not writable)"
            );
        }
    }

    /// Reopen on request or rotation.
    fn housekeeping(&mut self) {
        if self.requests.reopen.swap(false, Ordering::Relaxed) {
            self.reopen("SIGHUP");
        } else if self.last_check.elapsed() >= CHECK_INTERVAL {
            self.last_check = Instant::now();
            let on_disk = std::fs::metadata(&self.path).map(|m| identity(&m)).ok();
            if self.file.is_none() || on_disk != Some(self.identity) {
                self.reopen("the file was renamed or deleted");
            }
        }
    }

    /// Queues `batch` and says each record on stderr, writes what the
    /// file takes in one round, then publishes the records to memory (so
    /// a record seen in memory is in the file, or queued).
    fn take(&mut self, batch: Vec<DownloadRecord>) {
        for record in &batch {
            super::announce(record);
            self.enqueue(record);
        }
        self.drain();
        for record in batch {
            self.memory.publish(record);
        }
    }

    fn enqueue(&mut self, record: &DownloadRecord) {
        let overflow = self.requests.overflow.swap(0, Ordering::Relaxed);
        self.gap += overflow;
        self.dropped(overflow);
        let line = match serde_json::to_string(record) {
            Ok(json) => json + "\n",
            Err(err) => {
                tracing::error!(error = %err, "cannot encode download record");
                self.gap += 1;
                self.dropped(1);
                return;
            }
        };
        if self.queued_bytes + line.len() > QUEUE_BYTES {
            if self.dropping == 0 {
                tracing::error!(
                    limit_bytes = QUEUE_BYTES,
                    path = %self.path.display(),
                    "download log queue full: dropping records until the file is writable"
                );
            }
            self.dropping += 1;
            self.gap += 1;
            self.dropped(1);
            return;
        }
        self.queued_bytes += line.len();
        self.queue.push_back(Queued {
            line,
            dropped_before: std::mem::take(&mut self.gap),
        });
        self.publish_queue();
    }

    fn dropped(&self, n: u64) {
        if n > 0 {
            self.requests.health.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn publish_queue(&self) {
        self.requests
            .health
            .queued
            .store(self.queue.len() as u64, Ordering::Relaxed);
    }

    /// Writes queued records in order until the queue is empty or a write
    /// fails.
    fn drain(&mut self) {
        if !self.queue.is_empty() && self.file.as_ref().is_some_and(is_unlinked) {
            // Deleted (with or without its folder) since the last look: a
            // record written there would be lost.
            self.reopen("the file was deleted");
        }
        while let Some(front) = self.queue.front() {
            let result = match &mut self.file {
                Some(file) => write_record(file, front.bytes().as_bytes(), &mut self.unterminated),
                None => Err(io::Error::new(io::ErrorKind::NotFound, "log file not open")),
            };
            match result {
                Ok(()) => {
                    let done = self.queue.pop_front().expect("front exists");
                    self.queued_bytes -= done.line.len();
                    self.publish_queue();
                    self.recovered(done.dropped_before);
                }
                Err(err) => {
                    self.requests
                        .health
                        .set_error(Some(format!("{}: {err}", self.path.display())));
                    if !self.failing {
                        tracing::error!(
                            error = %err,
                            queued = self.queue.len(),
                            path = %self.path.display(),
                            "cannot write download log; records are queued and retried"
                        );
                        self.failing = true;
                    }
                    return;
                }
            }
        }
    }

    fn recovered(&mut self, dropped_before: u64) {
        if self.failing {
            self.failing = false;
            self.requests.health.set_error(None);
            tracing::warn!(path = %self.path.display(), "download log writable again");
        }
        if dropped_before > 0 {
            tracing::warn!(
                dropped = dropped_before,
                "download log: records were dropped; the next record says dropped_before"
            );
            self.dropping = 0;
        }
    }

    /// Answers pending [`FileSink::flush`] calls once every record sent
    /// before them (now in the channel) was tried.
    fn answer_flushes(&mut self, rx: &Receiver<Option<Box<DownloadRecord>>>) {
        let callers = std::mem::take(
            &mut *self
                .requests
                .flush
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if callers.is_empty() {
            return;
        }
        self.take(waiting(rx));
        for ack in callers {
            let _ = ack.send(self.queue.len());
        }
    }

    fn reopen(&mut self, why: &str) {
        match open_append(&self.path).and_then(|f| Ok((identity(&f.metadata()?), f))) {
            Ok((identity, file)) => {
                self.file = Some(file);
                self.identity = identity;
                self.unterminated = false;
                if std::mem::take(&mut self.reopen_failing) && !self.failing {
                    self.requests.health.set_error(None);
                }
                tracing::info!(path = %self.path.display(), why, "download log reopened");
                self.drain();
            }
            Err(err) => {
                self.requests.health.set_error(Some(format!(
                    "{}: cannot reopen: {err}",
                    self.path.display()
                )));
                // A renamed file still keeps what is written to it; a
                // deleted one does not: queue until the path opens.
                let deleted = self.file.as_ref().is_some_and(is_unlinked);
                if deleted {
                    self.file = None;
                }
                if !self.reopen_failing {
                    let what = if deleted {
                        "cannot reopen download log; the open file was deleted, records are queued until it can be"
                    } else {
                        "cannot reopen download log; still writing to the open file"
                    };
                    tracing::error!(error = %err, path = %self.path.display(), why, "{what}");
                    self.reopen_failing = true;
                }
            }
        }
    }
}

/// The records waiting in the channel now: at most a channel's worth,
/// however fast senders refill it (wake-ups are skipped).
fn waiting(rx: &Receiver<Option<Box<DownloadRecord>>>) -> Vec<DownloadRecord> {
    let mut batch = Vec::new();
    for _ in 0..=CHANNEL_CAPACITY {
        match rx.try_recv() {
            Ok(Some(record)) => batch.push(*record),
            Ok(None) => {}
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
        }
    }
    batch
}

/// Whether `file` has no name left on disk (deleted while open).
fn is_unlinked(file: &File) -> bool {
    file.metadata().is_ok_and(|m| m.nlink() == 0)
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// One `write(2)` of the whole line on an `O_APPEND` file. After a short
/// write the rest is written at once; when that fails, what was written is
/// taken back (`ftruncate` to the size before it) and the failure (`No
/// space left on device`, a quota) reported, so the line stays queued and
/// the file holds whole lines only.
fn write_record(file: &mut File, line: &[u8], unterminated: &mut bool) -> io::Result<()> {
    if *unterminated {
        write_once(file, b"\n")?;
        *unterminated = false;
    }
    let mut written = write_once(file, line)?;
    // A short write: the rest is tried at once (this thread is the file's
    // only writer, so it lands right behind), which either completes the
    // line or names the cause (ENOSPC, EDQUOT).
    let cause = loop {
        if written == line.len() {
            return Ok(());
        }
        match write_once(file, &line[written..]) {
            Ok(0) => break io::Error::new(io::ErrorKind::StorageFull, "no byte taken"),
            Ok(n) => written += n,
            Err(err) => break err,
        }
    };
    let undo = file
        .metadata()
        .and_then(|m| file.set_len(m.len().saturating_sub(written as u64)));
    let fate = if undo.is_err() {
        // Ended with a newline before the next record.
        *unterminated = true;
        "left in the file"
    } else {
        "taken back"
    };
    Err(io::Error::new(
        cause.kind(),
        format!("{cause} (after {written} of {} bytes, {fate})", line.len()),
    ))
}

/// `write(2)` once, retried only when interrupted by a signal.
fn write_once(file: &mut File, bytes: &[u8]) -> io::Result<usize> {
    loop {
        match file.write(bytes) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dropped_count_goes_into_the_line_as_a_json_field() {
        let q = Queued {
            line: "{\"a\":1}\n".into(),
            dropped_before: 7,
        };
        assert_eq!(q.bytes(), "{\"a\":1,\"dropped_before\":7}\n");
        let q = Queued {
            dropped_before: 0,
            ..q
        };
        assert_eq!(q.bytes(), "{\"a\":1}\n");
    }

    /// `/dev/full` answers every write with ENOSPC: the record stays
    /// queued, nothing is written half.
    #[test]
    fn a_failing_write_keeps_the_record() {
        let mut file = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let mut unterminated = false;
        let err = write_record(&mut file, b"{}\n", &mut unterminated).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}"); // ENOSPC
        assert!(!unterminated);
    }
}

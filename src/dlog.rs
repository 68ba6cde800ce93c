//! The download log: one [`DownloadRecord`] per download attempt, over any
//! protocol, fanned out to every sink.
//!
//! The record stream is the product's answer to "why did the module say
//! 601/701?". The FTP and HTTP front-ends build records; [`DownloadLog`]
//! writes each one as a JSON line to the `--log` file (through a writer
//! thread, [`file`](mod@file): whole lines, reopened on rotation, queued
//! through a full disk), as a `tracing` event on stderr, to an in-memory
//! ring the test-fixture API reads, and to a broadcast channel any further
//! sink (metrics, a remote collector) can subscribe to.
//!
//! Every string a client controls is capped when the record is built
//! ([`DownloadRecord::capped`]: [`PATH_MAX_BYTES`], [`USER_MAX_BYTES`],
//! [`REASON_MAX_BYTES`], [`FAULT_MAX_BYTES`]), so one record is at most
//! about 2 KiB in memory and the ring of [`RECENT_CAPACITY`] records at
//! most about 9 MiB, whatever the requests look like.

pub mod file;

pub use file::LogHealth;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Transport the attempt came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// FTP (RFC 959), control and passive data connections.
    Ftp,
    /// Plain HTTP/1.1.
    Http,
    /// HTTP/1.1 over TLS.
    Https,
}

impl Protocol {
    /// The lower-case name used in the log (`ftp`, `http`, `https`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Ftp => "ftp",
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }
}

/// How a download attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every byte asked for was handed to the connection (and, where the
    /// kernel's counters can be read, acknowledged).
    Complete,
    /// Answered with headers and no body by design: a `HEAD` request, a
    /// `304 Not Modified` (RFC 9110 §9.3.2, §15.4.5). Not a download: a
    /// health check or a cache revalidation.
    HeadersOnly,
    /// The transfer started and stopped part-way: the client went away, a
    /// write stalled past the timeout, or the server shut down.
    Aborted,
    /// No package at that path.
    NotFound,
    /// The package exists but failed validation and `--allow-invalid` is off.
    InvalidPackage,
    /// FTP login refused.
    AuthFailed,
    /// The request was refused: a path escaping the package folder, a write
    /// command, an unsupported method, an unsatisfiable range.
    Refused,
}

impl Outcome {
    /// The snake-case name used in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::HeadersOnly => "headers_only",
            Outcome::Aborted => "aborted",
            Outcome::NotFound => "not_found",
            Outcome::InvalidPackage => "invalid_package",
            Outcome::AuthFailed => "auth_failed",
            Outcome::Refused => "refused",
        }
    }
}

/// Longest `path` kept in a record, in bytes: a 60 KB request path would
/// otherwise make a 60 KB log line and hold as much in the in-memory ring
/// for each of its [`RECENT_CAPACITY`] records. Longer paths are cut (see
/// [`CUT_MARK`]).
pub const PATH_MAX_BYTES: usize = 1024;

/// Longest FTP `user` kept in a record, in bytes (cut beyond).
pub const USER_MAX_BYTES: usize = 64;

/// Longest `reason` kept in a record, in bytes (cut beyond): reasons can
/// quote client input (a bad header, an unknown command).
pub const REASON_MAX_BYTES: usize = 512;

/// Longest `fault` (the rule's text) kept in a record, in bytes.
pub const FAULT_MAX_BYTES: usize = 256;

/// Longest `instance` (`--instance-id`) kept in a record, in bytes.
pub const INSTANCE_MAX_BYTES: usize = 128;

/// Ends a string field that was cut to its limit; the cut string with the
/// mark fits the limit, on a UTF-8 character boundary.
pub const CUT_MARK: &str = "…[cut]";

/// `text` cut to at most `max` bytes on a character boundary, ending in
/// [`CUT_MARK`] when anything was cut. A string within `max` is unchanged,
/// so capping twice is capping once.
pub fn cap_field(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(CUT_MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    // Built anew so the allocation is the capped size, not the input's.
    let mut out = String::with_capacity(end + CUT_MARK.len());
    out.push_str(&text[..end]);
    out.push_str(CUT_MARK);
    out
}

/// One download attempt, as written to the log (one JSON object per line).
///
/// In the file, a record written after others were dropped (the disk was
/// full longer than the queue lasts, see [`file::QUEUE_BYTES`]) carries one
/// more field, `"dropped_before": N`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownloadRecord {
    /// When the attempt started (RFC 3339, UTC, milliseconds).
    #[serde(with = "rfc3339_ms")]
    pub ts: DateTime<Utc>,
    /// Time from the start of the attempt to its end, in milliseconds.
    pub duration_ms: u64,
    /// Transport.
    pub protocol: Protocol,
    /// Client address, `ip:port` of the control (FTP) or HTTP connection;
    /// an IPv4 client of a dual-stack listener is written `127.0.0.1:58422`,
    /// not `[::ffff:127.0.0.1]:58422`.
    pub peer: SocketAddr,
    /// FTP user name; `None` over HTTP(S).
    pub user: Option<String>,
    /// Path as requested, relative to the package folder where it resolved
    /// (`Jun/update-v12-to-v13.zip`), else as the client sent it.
    pub path: String,
    /// Package size in bytes, when the path named a package.
    pub size: Option<u64>,
    /// Package SHA-256 (lower-case hex), when the path named a package.
    pub sha256: Option<String>,
    /// First byte offset asked for (FTP `REST`, HTTP `Range`), 0 otherwise.
    pub range_start: u64,
    /// Bytes of package data written to the connection (accepted by the
    /// server's kernel; not proof that the module got them).
    pub bytes_sent: u64,
    /// Bytes of package data the peer's TCP stack acknowledged (see
    /// [`crate::serve::delivery`]): exact over HTTP and FTP, within one TLS
    /// record (16 KiB) over HTTPS. Equal to `bytes_sent` on a `complete`
    /// record; 0 on a record without a body. Absent in logs written before
    /// it existed (read as 0).
    #[serde(default)]
    pub bytes_acked: u64,
    /// HTTP status, or FTP reply code (226 done, 426 aborted, 530, 550…).
    pub status: u16,
    /// How the attempt ended.
    pub outcome: Outcome,
    /// Why, in words (`"client closed the connection"`, `"zip entry
    /// system.diff: CRC mismatch"`).
    pub reason: String,
    /// Name of the server fault rule that hit this attempt, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// The replica that served the attempt (`--instance-id`), when set;
    /// stamped by [`DownloadLog::emit`]. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// `refused` records over a connection limit only: how many more
    /// connections from the same address were refused since its previous
    /// record, without a record of their own (one per address per second,
    /// [`crate::serve::limits`]); this record stands for `1 +
    /// more_refused` attempts. Absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more_refused: u64,
}

/// Whether `n` is 0 (serde's `skip_serializing_if`).
fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl DownloadRecord {
    /// The attempts this record stands for: 1, plus `more_refused`.
    pub fn attempts(&self) -> u64 {
        1 + self.more_refused
    }
}

impl DownloadRecord {
    /// The record with every string field cut to its limit
    /// ([`PATH_MAX_BYTES`], [`USER_MAX_BYTES`], [`REASON_MAX_BYTES`],
    /// [`FAULT_MAX_BYTES`]; `sha256` is always 64 hex digits).
    pub fn capped(mut self) -> Self {
        fn cap(field: &mut String, max: usize) {
            if field.len() > max {
                *field = cap_field(field, max);
            }
        }
        cap(&mut self.path, PATH_MAX_BYTES);
        cap(&mut self.reason, REASON_MAX_BYTES);
        if let Some(user) = &mut self.user {
            cap(user, USER_MAX_BYTES);
        }
        if let Some(fault) = &mut self.fault {
            cap(fault, FAULT_MAX_BYTES);
        }
        self
    }
}

mod rfc3339_ms {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&ts.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// Everything a download record needs, filled in as the attempt goes.
///
/// A front-end starts one when a request (HTTP) or command (FTP) begins,
/// sets the fields it learns on the way (the resolved path, the package,
/// the range, the bytes written, the fault applied) and turns it into a
/// [`DownloadRecord`] with [`Attempt::record`] when the attempt ends. The
/// wall-clock start and a monotonic clock are both kept so the record's `ts`
/// and `duration_ms` are right even if the system clock jumps.
#[derive(Debug, Clone)]
pub struct Attempt {
    ts: DateTime<Utc>,
    started: Instant,
    /// Transport.
    pub protocol: Protocol,
    /// Client `ip:port`.
    pub peer: SocketAddr,
    /// FTP user, `None` over HTTP(S).
    pub user: Option<String>,
    /// Path as requested / resolved.
    pub path: String,
    /// Package size (bytes) and SHA-256, once the path named a package.
    pub package: Option<(u64, String)>,
    /// First byte offset asked for (REST / Range).
    pub range_start: u64,
    /// Body bytes written so far.
    pub bytes_sent: u64,
    /// Body bytes the peer acknowledged so far.
    pub bytes_acked: u64,
    /// Fault rule applied, if any.
    pub fault: Option<String>,
    /// Duration frozen by [`Attempt::end_now`], in ms.
    ended_ms: Option<u64>,
}

impl Attempt {
    /// Starts the clock now. `peer` is stored unmapped
    /// ([`crate::net::unmap`]).
    pub fn start(protocol: Protocol, peer: SocketAddr, path: impl Into<String>) -> Self {
        Self::started_at(protocol, peer, path, (Utc::now(), Instant::now()))
    }

    /// Starts the clock at `at` (wall clock, monotonic clock), a moment
    /// already past: when a request's first byte came, for an attempt
    /// recorded once it failed.
    pub fn started_at(
        protocol: Protocol,
        peer: SocketAddr,
        path: impl Into<String>,
        at: (DateTime<Utc>, Instant),
    ) -> Self {
        let peer = crate::net::unmap(peer);
        Attempt {
            // Millisecond precision, as the log writes it.
            ts: at.0.trunc_subsecs(3),
            started: at.1,
            protocol,
            peer,
            user: None,
            path: path.into(),
            package: None,
            range_start: 0,
            bytes_sent: 0,
            bytes_acked: 0,
            fault: None,
            ended_ms: None,
        }
    }

    /// Wall-clock start of the attempt.
    pub fn ts(&self) -> DateTime<Utc> {
        self.ts
    }

    /// Milliseconds since [`Attempt::start`] (or until
    /// [`Attempt::end_now`], once called).
    pub fn elapsed_ms(&self) -> u64 {
        self.ended_ms.unwrap_or_else(|| {
            u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
        })
    }

    /// Ends the attempt's clock now: the connection ended, and what comes
    /// after (waiting for the kernel's final counters) is not the
    /// module's time.
    pub fn end_now(&mut self) {
        if self.ended_ms.is_none() {
            self.ended_ms = Some(self.elapsed_ms());
        }
    }

    /// The record for this attempt ending now with `status` (HTTP status or
    /// FTP reply code), `outcome` and `reason` (in words), its string
    /// fields capped ([`DownloadRecord::capped`]).
    pub fn record(
        &self,
        status: u16,
        outcome: Outcome,
        reason: impl Into<String>,
    ) -> DownloadRecord {
        DownloadRecord {
            ts: self.ts,
            duration_ms: self.elapsed_ms(),
            protocol: self.protocol,
            peer: self.peer,
            user: self.user.as_deref().map(|u| cap_field(u, USER_MAX_BYTES)),
            path: cap_field(&self.path, PATH_MAX_BYTES),
            size: self.package.as_ref().map(|(size, _)| *size),
            sha256: self.package.as_ref().map(|(_, sha)| sha.clone()),
            range_start: self.range_start,
            bytes_sent: self.bytes_sent,
            bytes_acked: self.bytes_acked,
            status,
            outcome,
            reason: cap_field(&reason.into(), REASON_MAX_BYTES),
            fault: self.fault.as_deref().map(|f| cap_field(f, FAULT_MAX_BYTES)),
            instance: None,
            more_refused: 0,
        }
    }
}

/// Records a subscriber ([`DownloadLog::subscribe`]: the metrics, the
/// admin long-poll) may fall behind before it misses some (8,192, about
/// 2 MiB of slots): twice [`file::CHANNEL_CAPACITY`], so the writer's
/// largest batch (that plus one), which it publishes in one go, fits with
/// room to spare.
pub const SUBSCRIBER_CAPACITY: usize = 2 * file::CHANNEL_CAPACITY;

/// Says `record` on stderr: one human-readable `tracing` line (target
/// `qfota_serve::download`, level INFO).
fn announce(record: &DownloadRecord) {
    tracing::info!(
        target: "qfota_serve::download",
        protocol = record.protocol.as_str(),
        peer = %record.peer,
        user = record.user.as_deref().unwrap_or("-"),
        // As `&str`, so the formatter escapes what a client sent
        // (terminal escape sequences, NUL), as it does for `user`.
        path = record.path.as_str(),
        status = record.status,
        outcome = record.outcome.as_str(),
        range_start = record.range_start,
        bytes_sent = record.bytes_sent,
        size = record.size.unwrap_or(0),
        duration_ms = record.duration_ms,
        fault = record.fault.as_deref().unwrap_or("-"),
        reason = record.reason.as_str(),
        "download"
    );
}

/// How many records [`DownloadLog::recent`] keeps in memory. With the
/// field caps ([`DownloadRecord::capped`]) a record holds at most about
/// 2 KiB, so the ring stays under about 9 MiB whatever clients send.
pub const RECENT_CAPACITY: usize = 4096;

/// Fan-out of download records to the log file, `tracing`, an in-memory
/// ring of the last [`RECENT_CAPACITY`] records and a broadcast channel.
/// Cheap to clone; clones share the sinks. Dropping the last clone waits
/// (at most [`file::FINAL_FLUSH_TIMEOUT`]) for the file writer to write
/// what is queued.
#[derive(Debug, Clone)]
pub struct DownloadLog {
    inner: Arc<LogInner>,
    /// Written into every record's `instance` ([`DownloadLog::with_instance`]).
    instance: Option<Arc<str>>,
}

#[derive(Debug)]
struct LogInner {
    file: Option<file::FileSink>,
    memory: Arc<Memory>,
}

/// The in-memory sinks: the ring and the broadcast channel. With a file,
/// the writer thread publishes each record once its write was tried, so a
/// record seen here is in the file (or queued for it).
#[derive(Debug)]
struct Memory {
    recent: Mutex<Ring>,
    tx: broadcast::Sender<DownloadRecord>,
}

/// The in-memory ring with the sequence number of the next record.
#[derive(Debug, Default)]
struct Ring {
    records: VecDeque<(u64, DownloadRecord)>,
    next_seq: u64,
}

impl Memory {
    fn publish(&self, record: DownloadRecord) {
        {
            let mut ring = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if ring.records.len() == RECENT_CAPACITY {
                ring.records.pop_front();
            }
            let seq = ring.next_seq;
            ring.next_seq += 1;
            ring.records.push_back((seq, record.clone()));
        }
        // No subscriber is fine: the send error only says nobody listens.
        let _ = self.tx.send(record);
    }
}

impl DownloadLog {
    /// A log that appends JSON lines to `path` (created if missing,
    /// `O_APPEND`), written by a writer thread of its own ([`file`](mod@file)).
    ///
    /// # Errors
    /// The file cannot be opened for appending, or the thread not started.
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        let memory = Self::memory();
        let sink = file::FileSink::open(path, Arc::clone(&memory))?;
        Ok(Self::with(Some(sink), memory))
    }

    /// A log with no file sink (records still go to `tracing`, the ring and
    /// subscribers).
    pub fn in_memory() -> Self {
        Self::with(None, Self::memory())
    }

    /// This log with every record stamped `instance: id` (`--instance-id`,
    /// at most [`INSTANCE_MAX_BYTES`]); `None` leaves records unstamped.
    pub fn with_instance(mut self, id: Option<&str>) -> Self {
        self.instance = id.map(|id| cap_field(id, INSTANCE_MAX_BYTES).into());
        self
    }

    fn memory() -> Arc<Memory> {
        let (tx, _) = broadcast::channel(SUBSCRIBER_CAPACITY);
        Arc::new(Memory {
            recent: Mutex::new(Ring::default()),
            tx,
        })
    }

    fn with(file: Option<file::FileSink>, memory: Arc<Memory>) -> Self {
        DownloadLog {
            inner: Arc::new(LogInner { file, memory }),
            instance: None,
        }
    }

    /// Emits one record to every sink, its string fields capped
    /// ([`DownloadRecord::capped`]). Never waits for the disk: the file
    /// write happens on the writer thread, and a failing file is reported
    /// there and does not stop serving.
    pub fn emit(&self, mut record: DownloadRecord) {
        if let Some(id) = &self.instance {
            record.instance = Some(id.to_string());
        }
        let record = record.capped();
        // With a file, the writer thread says it on stderr, in batches.
        let unsent = match &self.inner.file {
            Some(sink) => sink.send(record),
            None => Some(record),
        };
        if let Some(record) = unsent {
            announce(&record);
            self.inner.memory.publish(record);
        }
    }

    /// Reopens the log file at its path (logrotate's `postrotate`, sent as
    /// `SIGHUP`), within [`file::CHECK_INTERVAL`]. No-op without a file.
    pub fn reopen(&self) {
        if let Some(sink) = &self.inner.file {
            sink.reopen();
        }
    }

    /// Waits until every record emitted before the call was written to the
    /// file, or found it unwritable. Returns how many records are still
    /// queued (0: all in the file; always 0 without a file), or `None`
    /// when the writer did not answer within [`file::FINAL_FLUSH_TIMEOUT`].
    pub async fn flush(&self) -> Option<usize> {
        match &self.inner.file {
            Some(sink) => sink.flush().await,
            None => Some(0),
        }
    }

    /// The file writer's queue, drops and error state now ([`LogHealth`]);
    /// all zero and no error without a file.
    pub fn health(&self) -> LogHealth {
        self.inner
            .file
            .as_ref()
            .map(file::FileSink::health)
            .unwrap_or_default()
    }

    /// The last records emitted (at most [`RECENT_CAPACITY`]), oldest first.
    pub fn recent(&self) -> Vec<DownloadRecord> {
        let ring = self.ring();
        ring.records.iter().map(|(_, r)| r.clone()).collect()
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.inner
            .memory
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The records still in memory whose sequence number is `seq` or more,
    /// oldest first, each with its number. Records are numbered from 0 in
    /// the order they are published, per process; the number is not
    /// written to the log file. Records older than the last
    /// [`RECENT_CAPACITY`] are gone, so the first number returned can be
    /// above `seq`.
    pub fn since(&self, seq: u64) -> Vec<(u64, DownloadRecord)> {
        let ring = self.ring();
        let skip = ring.records.partition_point(|(n, _)| *n < seq);
        ring.records.iter().skip(skip).cloned().collect()
    }

    /// The sequence number the next record will get (the count published).
    pub fn next_seq(&self) -> u64 {
        self.ring().next_seq
    }

    /// A receiver of every record emitted from now on. A receiver that
    /// falls more than 8,192 ([`SUBSCRIBER_CAPACITY`]) records behind gets `RecvError::Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<DownloadRecord> {
        self.inner.memory.tx.subscribe()
    }
}

/// Formats a timestamp the way the log does (RFC 3339, UTC, milliseconds).
pub fn format_ts(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DownloadRecord {
        DownloadRecord {
            ts: DateTime::parse_from_rfc3339("2026-06-01T12:00:00.123Z")
                .unwrap()
                .with_timezone(&Utc),
            duration_ms: 42,
            protocol: Protocol::Ftp,
            peer: "192.0.2.7:40512".parse().unwrap(),
            user: Some("test".into()),
            path: "Jun/update-v12-to-v13.zip".into(),
            size: Some(100),
            sha256: Some("ab".repeat(32)),
            range_start: 0,
            bytes_sent: 50,
            bytes_acked: 40,
            status: 426,
            outcome: Outcome::Aborted,
            reason: "client closed the data connection".into(),
            fault: None,
            instance: None,
            more_refused: 0,
        }
    }

    #[test]
    fn record_round_trips_as_json_with_the_documented_field_names() {
        let rec = sample();
        let line = serde_json::to_string(&rec).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ts"], "2026-06-01T12:00:00.123Z");
        assert_eq!(v["protocol"], "ftp");
        assert_eq!(v["outcome"], "aborted");
        assert_eq!(v["peer"], "192.0.2.7:40512");
        assert!(v.get("fault").is_none());
        let back: DownloadRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn a_log_with_an_instance_id_stamps_every_record() {
        let plain = DownloadLog::in_memory();
        let named = plain.clone().with_instance(Some("eu-1"));
        named.emit(sample());
        plain.emit(sample());
        let recent = plain.recent();
        assert_eq!(recent[0].instance.as_deref(), Some("eu-1"));
        assert_eq!(recent[1].instance, None);
        let line = serde_json::to_string(&recent[0]).unwrap();
        assert!(line.contains(r#""instance":"eu-1""#), "{line}");
    }

    #[test]
    fn an_attempt_becomes_a_record_with_what_it_gathered() {
        let mut attempt = Attempt::start(
            Protocol::Ftp,
            "192.0.2.7:40512".parse().unwrap(),
            "Jun/update-v12-to-v13.zip",
        );
        attempt.user = Some("test".into());
        attempt.package = Some((100, "ab".repeat(32)));
        attempt.bytes_sent = 50;
        attempt.bytes_acked = 40;
        let rec = attempt.record(426, Outcome::Aborted, "client closed the data connection");
        assert_eq!(
            rec,
            DownloadRecord {
                ts: attempt.ts(),
                duration_ms: rec.duration_ms,
                ..sample()
            }
        );
        assert_eq!(
            rec.ts.timestamp_subsec_nanos() % 1_000_000,
            0,
            "ms precision"
        );
    }

    /// A 60 KB request path once made a 60 KB log line (and ring entry).
    #[test]
    fn long_fields_are_cut_on_a_char_boundary_and_marked() {
        let mut attempt = Attempt::start(
            Protocol::Http,
            "192.0.2.7:1".parse().unwrap(),
            "é".repeat(30_000),
        );
        attempt.user = Some("u".repeat(100));
        attempt.fault = Some("f".repeat(300));
        let rec = attempt.record(404, Outcome::NotFound, "r".repeat(600));
        for (field, max) in [
            (&rec.path, PATH_MAX_BYTES),
            (rec.user.as_ref().unwrap(), USER_MAX_BYTES),
            (&rec.reason, REASON_MAX_BYTES),
            (rec.fault.as_ref().unwrap(), FAULT_MAX_BYTES),
        ] {
            assert!(
                field.len() <= max && field.len() > max - 8,
                "{} > {max}",
                field.len()
            );
            assert!(field.ends_with(CUT_MARK), "{field}");
            assert!(field.capacity() <= max, "capacity {}", field.capacity());
        }
        // 2-byte 'é': the cut lands between characters.
        assert!(
            rec.path
                .trim_end_matches(CUT_MARK)
                .chars()
                .all(|c| c == 'é')
        );
        // Within the limit nothing changes, so capping again is a no-op.
        assert_eq!(rec.clone().capped(), rec);
        assert_eq!(cap_field("short", 5), "short");
        assert_eq!(cap_field("abcdefghij", 9), "a…[cut]");
    }

    #[tokio::test]
    async fn file_sink_appends_one_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let log = DownloadLog::to_file(&path).unwrap();
        let mut rx = log.subscribe();
        log.emit(sample());
        log.emit(sample());
        assert_eq!(log.flush().await, Some(0));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert_eq!(log.recent().len(), 2);
        assert_eq!(rx.try_recv().unwrap().status, 426);
    }

    #[tokio::test]
    async fn a_burst_is_written_in_order_to_the_file_and_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let log = DownloadLog::to_file(&path).unwrap();
        // Faster than the writer's linger: most go in one batch.
        for bytes in 0..300 {
            log.emit(DownloadRecord {
                bytes_sent: bytes,
                ..sample()
            });
        }
        assert_eq!(log.flush().await, Some(0));
        let text = std::fs::read_to_string(&path).unwrap();
        let in_file: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<DownloadRecord>(l)
                    .unwrap()
                    .bytes_sent
            })
            .collect();
        assert_eq!(in_file, (0..300).collect::<Vec<_>>());
        let in_memory: Vec<u64> = log
            .since(0)
            .into_iter()
            .map(|(_, r)| r.bytes_sent)
            .collect();
        assert_eq!(in_memory, in_file);
    }

    #[tokio::test]
    async fn a_burst_larger_than_a_batch_reaches_the_file_and_every_subscriber() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let log = DownloadLog::to_file(&path).unwrap();
        let mut rx = log.subscribe();
        // Pipelined HEADs end about this fast: thousands in a few ms, more
        // than the writer takes between two looks.
        const BURST: u64 = 3000;
        for bytes in 0..BURST {
            log.emit(DownloadRecord {
                bytes_sent: bytes,
                ..sample()
            });
        }
        assert_eq!(log.flush().await, Some(0));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().count() as u64,
            BURST,
            "none dropped from the file"
        );
        let mut seen = 0;
        loop {
            match rx.try_recv() {
                Ok(record) => {
                    assert_eq!(record.bytes_sent, seen);
                    seen += 1;
                }
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(e) => panic!("the subscriber missed records: {e:?}"),
            }
        }
        assert_eq!(seen, BURST);
    }

    #[test]
    fn records_are_numbered_in_memory_and_since_returns_from_a_number() {
        let log = DownloadLog::in_memory();
        assert_eq!(log.next_seq(), 0);
        for bytes in [1, 2, 3] {
            log.emit(DownloadRecord {
                bytes_sent: bytes,
                ..sample()
            });
        }
        let seqs = |from| -> Vec<(u64, u64)> {
            log.since(from)
                .into_iter()
                .map(|(n, r)| (n, r.bytes_sent))
                .collect()
        };
        assert_eq!(seqs(0), vec![(0, 1), (1, 2), (2, 3)]);
        assert_eq!(seqs(2), vec![(2, 3)]);
        assert_eq!(seqs(3), vec![]);
        assert_eq!(log.next_seq(), 3);
    }
}

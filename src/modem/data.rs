//! The binary data phases of the AT port: while one is active on a port,
//! what the host sends is raw data, not command lines — nothing of it is
//! echoed or parsed (SPEC §9).
//!
//! - [`Upload`], for `AT+QFUPL=<name>[,<file_size>[,<timeout>[,<ackmode>]]]`
//!   after `CONNECT`: exactly `<file_size>` bytes are taken; `<ackmode>` 1
//!   answers `A` after each [`ACK_BLOCK`] bytes received; `<timeout>`
//!   seconds without a byte end the phase (Quectel's FILE AT Commands
//!   Manuals, `AT+QFUPL`).
//! - [`DataPhase::File`]: `ec200`'s `AT+QFOTADL="FILE:<length>"`: the
//!   package bytes go to the simulated module's
//!   [`FileSender`] (seed `001_2f648264def3e0b1.txt` §3.2.1.3), which
//!   times the transfer out itself (`FILEEND,500`).
//!
//! The session (`session.rs`) hands a port's input here first while a
//! phase is active; what a phase does not take (bytes after the last one
//! it wants) goes back to the command-line framer.
//!
//! Everything here is pure: the clock comes in as arguments.

use std::time::Duration;

use tokio::time::Instant;

use crate::sim::FileSender;
use crate::sim::ufs::{FileError, Stored, Ufs};

/// `AT+QFUPL`'s ACK mode: one `A` per this many bytes received (SPEC §9).
pub const ACK_BLOCK: u64 = 1024;
/// The ACK byte.
pub const ACK: u8 = b'A';
/// `AT+QFUPL`'s default `<file_size>`, bytes (SPEC §9).
pub const DEFAULT_UPLOAD_SIZE: u64 = 10240;
/// `AT+QFUPL`'s default `<timeout>`, seconds (SPEC §9).
pub const DEFAULT_UPLOAD_TIMEOUT: u32 = 5;
/// Bytes reserved up front for an upload at most: larger files grow as
/// they arrive, so an announced size costs nothing until data comes.
const RESERVE: usize = 64 * 1024;

/// What one chunk of input did to a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Bytes of the chunk the phase took (from its start); the rest is
    /// command-line input again.
    pub bytes: usize,
    /// `A`s to send (ACK mode).
    pub acks: u64,
    /// The phase has all it wants and is over.
    pub complete: bool,
}

/// An `AT+QFUPL` data phase: the bytes of one new UFS file.
#[derive(Debug)]
pub struct Upload {
    name: String,
    size: u64,
    timeout: Duration,
    ack: bool,
    data: Vec<u8>,
    deadline: Instant,
}

impl Upload {
    /// The phase of `AT+QFUPL=<name>,<size>,<timeout_s>,<ack>` starting at
    /// `now` (the moment `CONNECT` is sent).
    pub fn new(name: String, size: u64, timeout_s: u32, ack: bool, now: Instant) -> Upload {
        let timeout = Duration::from_secs(u64::from(timeout_s));
        let reserve = usize::try_from(size).map_or(RESERVE, |s| s.min(RESERVE));
        Upload {
            name,
            size,
            timeout,
            ack,
            data: Vec::with_capacity(reserve),
            deadline: now + timeout,
        }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.data.len() as u64
    }

    /// When the phase times out unless more data comes.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Takes what it still wants of `bytes`, received at `now`.
    pub fn push(&mut self, bytes: &[u8], now: Instant) -> Taken {
        let before = self.received();
        let want = self.size - before;
        let take = usize::try_from(want).map_or(bytes.len(), |w| w.min(bytes.len()));
        self.data.extend_from_slice(&bytes[..take]);
        if take > 0 {
            self.deadline = now + self.timeout;
        }
        let after = self.received();
        let acks = if self.ack {
            after / ACK_BLOCK - before / ACK_BLOCK
        } else {
            0
        };
        Taken {
            bytes: take,
            acks,
            complete: after == self.size,
        }
    }

    /// Whether `<timeout>` has passed without data at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// Ends the phase (complete, or timed out): stores what came as the
    /// file. A phase that timed out stores the bytes received so far, and
    /// `+QFUPL` reports their count, which a host compares with what it
    /// sent.
    ///
    /// # Errors
    /// 421 ([`FileError::Timeout`]) when not a byte came; otherwise what
    /// [`Ufs::write`] refuses (407 when a file of the name appeared
    /// meanwhile, 403 when the space went).
    pub fn finish(self, ufs: &Ufs) -> Result<Stored, FileError> {
        if self.data.is_empty() {
            return Err(FileError::Timeout);
        }
        ufs.write(&self.name, self.data)
    }
}

/// A data phase of one port.
#[derive(Debug)]
pub enum DataPhase {
    /// `AT+QFUPL`.
    Upload(Upload),
    /// `AT+QFOTADL="FILE:<length>"` (`ec200`).
    File(FileSender),
}

impl DataPhase {
    /// Hands `bytes`, received at `now`, to the phase.
    pub fn push(&mut self, bytes: &[u8], now: Instant) -> Taken {
        match self {
            DataPhase::Upload(upload) => upload.push(bytes, now),
            DataPhase::File(sender) => match sender.send(bytes) {
                Ok(n) => Taken {
                    bytes: n,
                    acks: 0,
                    complete: sender.remaining() == 0,
                },
                // The run no longer reads (`FILEEND` came): the phase is
                // over and the bytes are command-line input.
                Err(_) => Taken {
                    bytes: 0,
                    acks: 0,
                    complete: true,
                },
            },
        }
    }

    /// When the phase times out, if the AT layer times it (an upload).
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            DataPhase::Upload(upload) => Some(upload.deadline()),
            DataPhase::File(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::ufs::checksum;

    fn upload(size: u64, ack: bool) -> (Upload, Instant) {
        let now = Instant::now();
        (Upload::new("f.bin".into(), size, 5, ack, now), now)
    }

    #[test]
    fn takes_exactly_the_announced_size_and_leaves_the_rest() {
        let (mut u, now) = upload(5, false);
        let t = u.push(b"AB", now);
        assert_eq!((t.bytes, t.acks, t.complete), (2, 0, false));
        // `AT\r` after the data is command-line input again.
        let t = u.push(b"\r\nXAT\r", now);
        assert_eq!((t.bytes, t.complete), (3, true));
        let ufs = Ufs::new(100);
        let stored = u.finish(&ufs).unwrap();
        assert_eq!(stored.size, 5);
        assert_eq!(stored.checksum, checksum(b"AB\r\nX"));
        assert_eq!(ufs.read("f.bin").unwrap().as_slice(), b"AB\r\nX");
    }

    #[test]
    fn ack_mode_counts_each_full_block_across_chunks() {
        let (mut u, now) = upload(3000, true);
        assert_eq!(u.push(&[0; 1000], now).acks, 0);
        // Crossing 1024 in the middle of a chunk.
        assert_eq!(u.push(&[0; 100], now).acks, 1);
        // Two boundaries (2048) in one chunk.
        let t = u.push(&[0; 1500], now);
        assert_eq!((t.acks, u.received()), (1, 2600));
        // The last 400 bytes: 3000 is not a block boundary, no ACK; extra
        // bytes (fwupd pads its last chunk with 0xFF) are not taken.
        let t = u.push(&[0xff; 2048], now);
        assert_eq!((t.bytes, t.acks, t.complete), (400, 0, true));
        let (mut u, now) = upload(2048, true);
        let t = u.push(&[1; 2048], now);
        assert_eq!((t.acks, t.complete), (2, true));
        let (mut u, now) = upload(2048, false);
        assert_eq!(u.push(&[1; 2048], now).acks, 0);
    }

    #[test]
    fn timeout_counts_from_the_last_byte_and_keeps_what_came() {
        let (mut u, now) = upload(10, false);
        assert!(!u.expired(now + Duration::from_millis(4999)));
        assert!(u.expired(now + Duration::from_secs(5)));
        let later = now + Duration::from_secs(3);
        u.push(b"abc", later);
        assert!(!u.expired(now + Duration::from_secs(7)));
        assert!(u.expired(later + Duration::from_secs(5)));
        let ufs = Ufs::new(100);
        assert_eq!(u.finish(&ufs).unwrap().size, 3);
        // Nothing at all: 421.
        let (u, _) = upload(10, false);
        assert_eq!(u.finish(&ufs).unwrap_err().code(), 421);
    }

    #[test]
    fn finish_reports_a_file_that_appeared_meanwhile() {
        let ufs = Ufs::new(100);
        let (mut u, now) = upload(1, false);
        u.push(b"x", now);
        ufs.write("f.bin", b"y".to_vec()).unwrap();
        assert_eq!(u.finish(&ufs).unwrap_err().code(), 407);
    }
}

//! The FTP command-line cap: a peer that sends more than
//! [`COMMAND_LINE_MAX`] bytes without the server answering (a command line
//! with no end, as in `USER ` followed by megabytes and no newline) gets
//! `500` and the control connection is closed.
//!
//! libunftp 0.24 reads the control connection itself and buffers a line
//! until its newline with no limit, and [`libunftp::Server::service`] takes
//! the `TcpStream` by value, so no reader can be put in front of it (a
//! relay would make every data connection's address differ from the
//! control connection's, which libunftp refuses). The guard therefore
//! watches the connection from beside libunftp: a duplicate of the socket's
//! descriptor, registered for readiness only (never read), wakes a task at
//! every arrival (and a timer as a backstop, [`LOOK_FAST`]), and the
//! kernel's counters ([`delivery::snapshot`]: payload
//! bytes received and sent) tell how much the peer sent since the server
//! last said anything. libunftp answers every complete line at once, so that
//! figure is the length of the unfinished line (plus any commands a client
//! pipelined before the answer, which FTP clients keep to a few short
//! lines). What libunftp buffers before the guard acts is what arrives
//! within one task wake-up, or within [`LOOK_FAST`] when the wake-up is
//! missed: kilobytes on a network, a few MiB at loopback speed, instead of
//! everything the peer cares to send.
//!
//! vsftpd's limit is the same 4 KiB (`VSFTP_MAX_COMMAND_LINE`); RFC 959
//! sets none.

use std::io;
use std::net::Shutdown;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::Interest;

use crate::serve::delivery::{self, TcpEnds};

/// Bytes a peer may send without an answer from the server: one command
/// line with its `CRLF`, or a few pipelined short ones.
pub const COMMAND_LINE_MAX: u64 = 4_096;

/// How often the cap looks without an arrival before login and while the
/// peer keeps sending. An arrival wakes it at once, but an edge-triggered
/// readiness event on the duplicate descriptor is sometimes not delivered
/// (the tests saw about one session in ten miss every event), so the
/// timer bounds how long a line can grow unseen: at most what arrives in
/// 250 ms.
pub const LOOK_FAST: Duration = Duration::from_millis(250);

/// How often an idle logged-in session is looked at without an arrival
/// (one `sock_diag` look-up each: 10,000 idle sessions cost 5,000 a
/// second).
pub const LOOK_IDLE: Duration = Duration::from_secs(2);

/// What the peer is told before the connection closes (RFC 959 `500`:
/// syntax error, command unrecognized — vsftpd's answer to the same case).
const TOO_LONG: &[u8] =
    b"500 Command line too long: over 4096 bytes sent without waiting for a reply (one line, or many pipelined ones): closing the connection.\r\n";

/// Watches one control connection for an over-long command line.
pub struct LineCap {
    /// A duplicate of the control socket's descriptor: readiness only,
    /// never read.
    socket: tokio::net::TcpStream,
    /// The connection as the kernel's socket table files it.
    ends: TcpEnds,
    /// What the peer sent since the server last spoke.
    unanswered: Unanswered,
    /// The previous look saw new bytes from the peer.
    active: bool,
}

/// The count behind [`LineCap`], fed with the kernel's figures.
#[derive(Debug, Default)]
struct Unanswered {
    /// Peer bytes received when the server was last seen to send.
    mark: u64,
    /// Peer bytes received at the previous look.
    last_received: u64,
    /// Server bytes sent plus acknowledged at the previous look.
    last_spoken: u64,
}

impl LineCap {
    /// Starts watching `tcp`. `Err` when the descriptor cannot be
    /// duplicated or registered (out of file descriptors): the connection
    /// is then served without the cap.
    pub fn watch(tcp: &tokio::net::TcpStream) -> io::Result<Self> {
        let ends = TcpEnds {
            local: tcp.local_addr()?,
            peer: tcp.peer_addr()?,
        };
        let duplicate = socket2::SockRef::from(tcp).try_clone()?;
        duplicate.set_nonblocking(true)?;
        Ok(Self {
            socket: tokio::net::TcpStream::from_std(duplicate.into())?,
            ends,
            unanswered: Unanswered::default(),
            active: false,
        })
    }

    /// Resolves with the unanswered byte count once the peer has sent more
    /// than [`COMMAND_LINE_MAX`] bytes since the server last sent anything;
    /// never resolves for a well-behaved peer. `logged_in` chooses how
    /// often to look without an arrival ([`LOOK_FAST`] before login and
    /// while bytes keep coming, [`LOOK_IDLE`] otherwise). Cancel-safe: the
    /// counters live in `self`, so it can sit in a `select!` loop.
    pub async fn overrun(&mut self, logged_in: &AtomicBool) -> u64 {
        loop {
            let every = if self.active || !logged_in.load(Ordering::Acquire) {
                LOOK_FAST
            } else {
                LOOK_IDLE
            };
            tokio::select! {
                ready = self.socket.ready(Interest::READABLE) => {
                    match ready {
                        Ok(ready) if !ready.is_read_closed() && !ready.is_error() => {
                            // Clear the readiness (the data is libunftp's to
                            // read) before looking: an arrival after the
                            // look below wakes us again.
                            let _ = self.socket.try_io(Interest::READABLE, || {
                                Err::<(), _>(io::ErrorKind::WouldBlock.into())
                            });
                        }
                        // The peer sent its FIN (or the socket failed):
                        // nothing more can arrive, and the readiness would
                        // never clear.
                        _ => return std::future::pending().await,
                    }
                }
                () = tokio::time::sleep(every) => {}
            }
            // A failed look (the connection leaving the kernel's table as
            // the session ends) is retried at the next wake.
            let Ok(Some(now)) = delivery::snapshot(self.ends) else {
                continue;
            };
            self.active = now.bytes_received != self.unanswered.last_received;
            let spoken = now.bytes_sent + now.bytes_acked;
            if let Some(count) = self.unanswered.look(now.bytes_received, spoken) {
                return count;
            }
        }
    }

    /// Tells the peer why and closes the connection in both directions:
    /// libunftp then reads end-of-file and ends the session, dropping what
    /// it buffered, and nothing more is read.
    pub fn refuse(self) {
        self.close_with(TOO_LONG);
    }

    /// Sends `reply` (one `CRLF`-ended reply line) on the control
    /// connection from beside libunftp, for an event libunftp does not
    /// answer; only while libunftp itself has nothing to say.
    pub fn say(&self, reply: &[u8]) {
        // A few dozen bytes into an idle send buffer; if they do not fit,
        // the reply is lost and the client's own timeout applies.
        let _ = self.socket.try_write(reply);
    }

    /// Sends `reply`, then closes the connection.
    pub fn close_with(self, reply: &[u8]) {
        self.say(reply);
        let _ = socket2::SockRef::from(&self.socket).shutdown(Shutdown::Both);
    }
}

impl Unanswered {
    /// Updates the counters with one look at the kernel's figures
    /// (`received`: peer payload bytes; `spoken`: any figure that grows
    /// only when the server sends) and returns the unanswered byte count
    /// when it is over the cap.
    fn look(&mut self, received: u64, spoken: u64) -> Option<u64> {
        if spoken != self.last_spoken {
            // The server answered somewhere since the previous look; what
            // arrived since then may follow the answer or precede it, so it
            // counts as unanswered (the strict reading).
            self.last_spoken = spoken;
            self.mark = self.last_received;
        }
        self.last_received = received;
        let unanswered = received.saturating_sub(self.mark);
        (unanswered > COMMAND_LINE_MAX).then_some(unanswered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answered_dialogue_never_reaches_the_cap() {
        let mut cap = Unanswered::default();
        let mut received = 0;
        let mut spoken = 40; // the greeting
        for _ in 0..10_000 {
            received += 100; // a 100-byte command …
            assert_eq!(cap.look(received, spoken), None);
            spoken += 30; // … and its answer
        }
    }

    #[test]
    fn a_line_with_no_end_is_caught_once_it_passes_the_cap() {
        let mut cap = Unanswered::default();
        assert_eq!(cap.look(0, 40), None);
        assert_eq!(cap.look(4_000, 40), None);
        assert_eq!(cap.look(4_096, 40), None);
        assert_eq!(cap.look(4_097, 40), Some(4_097));
    }

    #[test]
    fn bytes_arriving_with_an_answer_count_as_unanswered() {
        let mut cap = Unanswered::default();
        assert_eq!(cap.look(10, 40), None);
        // The server answered and 4,090 more bytes came in the same
        // interval: counted from the previous look (10), not forgiven.
        assert_eq!(cap.look(4_100, 70), None);
        assert_eq!(cap.look(4_200, 70), Some(4_190));
    }
}

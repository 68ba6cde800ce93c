//! Why a download failed, and the `<ftp_err>` / `<http_err>` a module
//! family reports for it: the cause → code table of SPEC §4, in one
//! exhaustive `match`.
//!
//! The seeds list codes, not causes; SPEC §4 fixes the causes. `ec200` has
//! detailed codes (seed `001_2f648264def3e0b1.txt` tables 2 and 3); every
//! other family reports `601` (FTP) or `701` (HTTP) for all of them.

use std::time::Duration;

use crate::profile::DownloadCodes;
use crate::sim::command::Scheme;

/// `<ftp_err>` "FTP unknown error", the only FTP failure code on most
/// families (seeds 000, 002, 003, 004).
pub const FTP_UNKNOWN: u16 = 601;
/// `<http_err>` "HTTP(S) unknown error", the only HTTP failure code on
/// most families.
pub const HTTP_UNKNOWN: u16 = 701;

/// What went wrong while the simulated module downloaded the package.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The host name did not resolve (or fault `dns-fail`).
    #[error("DNS lookup of {host:?} failed: {detail}")]
    Dns {
        /// Host name from the URL.
        host: String,
        /// Resolver message.
        detail: String,
    },
    /// TCP connect was refused or the address is unreachable.
    #[error("connecting to {addr} failed: {source}")]
    Connect {
        /// Socket address tried last.
        addr: String,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// The module has no data connection (fault `network-down`).
    #[error("the module has no data connection (fault network-down)")]
    NetworkDown,
    /// Nothing came back within the no-progress timeout while connecting,
    /// waiting for an FTP reply or for HTTP response headers.
    #[error("no answer within {timeout_ms} ms waiting for {waiting_for}")]
    NoAnswer {
        /// What the module was waiting for (`TCP connect`, `PASS`, …).
        waiting_for: &'static str,
        /// The timeout, in milliseconds.
        timeout_ms: u64,
    },
    /// The body / data connection sent nothing for longer than the
    /// no-progress timeout.
    #[error("no data for {timeout_ms} ms after {received} bytes")]
    Stalled {
        /// Bytes received before the stall.
        received: u64,
        /// The timeout, in milliseconds.
        timeout_ms: u64,
    },
    /// The FTP server closed the control connection unexpectedly.
    #[error("the server closed the FTP control connection")]
    ControlClosed,
    /// The connection closed before all announced bytes arrived (FTP
    /// `SIZE`, HTTP `Content-Length`), or before any response.
    #[error("connection closed after {received}{} bytes", announced(*.expected))]
    Truncated {
        /// Bytes received.
        received: u64,
        /// Bytes announced, when known.
        expected: Option<u64>,
    },
    /// The FTP server answered a command with an error reply.
    #[error("FTP server replied {code} to {command}: {text}")]
    FtpReply {
        /// The command (`PASS`, `SIZE`, `RETR`, …).
        command: &'static str,
        /// The three-digit reply code.
        code: u16,
        /// The reply text.
        text: String,
    },
    /// The HTTP status was not 200 (3xx redirects are not followed).
    #[error("HTTP status {0}")]
    HttpStatus(u16),
    /// The TLS handshake failed (certificate, protocol version, suites).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The host is neither an IP address nor a valid DNS name (RFC 1123
    /// §2.1 labels): the module's stack refuses it before any lookup.
    #[error("{0:?} is not a valid host name")]
    BadHost(String),
    /// The host looks like an IPv4 address (digits and dots only) but is
    /// not one (`256.1.1.1`).
    #[error("{0:?} is not a valid IP address")]
    BadIp(String),
    /// The PDP context FOTA uses (`AT+QFOTA="fota/cid"`) is not active.
    #[error("PDP context {cid} is not active")]
    ContextInactive {
        /// The FOTA context id.
        cid: u8,
    },
    /// The peer reset the connection mid-transfer (TCP RST).
    #[error("connection reset by the server after {received} bytes")]
    PeerReset {
        /// Bytes received before the reset.
        received: u64,
    },
    /// The server sent more bytes than it announced (FTP `SIZE`).
    #[error("received {received} bytes, {expected} announced")]
    Overrun {
        /// Bytes received.
        received: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// The response is not valid HTTP/1.1 (status line, headers, chunked
    /// framing).
    #[error("malformed HTTP response: {0}")]
    HttpDecode(String),
    /// The module cannot create the package file: it is larger than the
    /// file system's free space (`ec200`, which has no `END,511`).
    #[error("cannot store {needed} bytes, {free} free in the file system")]
    NoSpace {
        /// Bytes announced or received.
        needed: u64,
        /// Bytes free.
        free: u64,
    },
    /// A download is already running (`ec200` answers a second
    /// `AT+QFOTADL` with a busy code); `uart`: the running one takes its
    /// package over the AT port (`FILE:<length>`).
    #[error("a download is already running")]
    Busy {
        /// The running download is a `FILE:<length>` transfer.
        uart: bool,
    },
    /// Fault `download-error=<code>`.
    #[error("fault download-error={0}")]
    Injected(u16),
    /// Fault `download-power-cut`: the module lost power mid-download (no
    /// `FTPEND`/`HTTPEND` follows; the run reboots the module).
    #[error("power cut after {received} bytes (fault download-power-cut)")]
    PowerCut {
        /// Bytes received before the cut.
        received: u64,
    },
    /// Anything else (malformed FTP replies, a package over the simulator's
    /// limit, …).
    #[error("{0}")]
    Other(String),
}

/// `" of N"` for a byte count announced in advance (FTP `SIZE`, HTTP
/// `Content-Length`), nothing when none was.
fn announced(expected: Option<u64>) -> String {
    expected.map(|n| format!(" of {n}")).unwrap_or_default()
}

/// `d` in whole milliseconds, for messages (saturating).
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl DownloadError {
    /// [`DownloadError::NoAnswer`]: nothing came back within `timeout`
    /// while waiting for `waiting_for`.
    pub(super) fn no_answer(waiting_for: &'static str, timeout: Duration) -> DownloadError {
        DownloadError::NoAnswer {
            waiting_for,
            timeout_ms: millis(timeout),
        }
    }

    /// [`DownloadError::Stalled`]: no data for `timeout` after `received`
    /// bytes.
    pub(crate) fn stalled(received: u64, timeout: Duration) -> DownloadError {
        DownloadError::Stalled {
            received,
            timeout_ms: millis(timeout),
        }
    }

    /// The code `FTPEND` / `HTTPEND` reports for this failure on a family
    /// whose download codes are `codes` (SPEC §4).
    pub fn code(&self, scheme: Scheme, codes: DownloadCodes) -> u16 {
        let (ftp, http) = self.detailed_codes();
        match (codes, scheme.is_ftp()) {
            (DownloadCodes::Generic, true) => FTP_UNKNOWN,
            (DownloadCodes::Generic, false) => HTTP_UNKNOWN,
            (DownloadCodes::Detailed, true) => ftp,
            (DownloadCodes::Detailed, false) => http,
        }
    }

    /// The `ec200` codes for this cause over FTP and over HTTP(S) (seed
    /// `001_2f648264def3e0b1.txt` tables 2 and 3), as README's cause table
    /// lists them; a cause with no code of its own for a protocol is
    /// "unknown" there (601 / 701).
    pub fn detailed_codes(&self) -> (u16, u16) {
        match self {
            DownloadError::BadHost(_) => (610, 711),
            DownloadError::BadIp(_) => (610, 713),
            DownloadError::ContextInactive { .. } => (605, 707),
            DownloadError::PeerReset { .. } => (608, 717),
            DownloadError::Overrun { .. } => (612, HTTP_UNKNOWN),
            DownloadError::HttpDecode(_) => (FTP_UNKNOWN, 721),
            DownloadError::NoSpace { .. } => (611, 729),
            DownloadError::Busy { uart: false } => (603, 703),
            DownloadError::Busy { uart: true } => (603, 704),
            DownloadError::Injected(code) => (*code, *code),
            DownloadError::PowerCut { .. } => (FTP_UNKNOWN, HTTP_UNKNOWN),
            DownloadError::Dns { .. } => (604, 714),
            DownloadError::Connect { .. } => (605, 716),
            DownloadError::NetworkDown => (605, 707),
            DownloadError::NoAnswer { .. } => (609, 728),
            DownloadError::Stalled { .. } => (609, 722),
            DownloadError::ControlClosed => (606, HTTP_UNKNOWN),
            DownloadError::Truncated { .. } => (607, 719),
            DownloadError::FtpReply { code, .. } => (ftp_reply_code(*code), HTTP_UNKNOWN),
            DownloadError::HttpStatus(_) => (FTP_UNKNOWN, 723),
            DownloadError::Tls(_) => (FTP_UNKNOWN, HTTP_UNKNOWN),
            DownloadError::Other(_) => (FTP_UNKNOWN, HTTP_UNKNOWN),
        }
    }
}

/// Checks a URL host the way a module's stack does before a lookup: an
/// IPv4/IPv6 literal, or a DNS name of letters, digits and `-` in dot
/// separated labels of 1–63 bytes (RFC 1123 §2.1; `_` is tolerated as many
/// resolvers do).
///
/// # Errors
/// [`DownloadError::BadIp`] for dotted digits that are no IPv4 address,
/// [`DownloadError::BadHost`] for anything else invalid.
pub fn check_host(host: &str) -> Result<(), DownloadError> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(DownloadError::BadIp(host.to_string()));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(DownloadError::BadHost(host.to_string()))
    }
}

/// `ec200`'s `<ftp_err>` for an FTP error reply (SPEC §4 table, seed 001
/// table 2); replies not in the table are 601.
pub fn ftp_reply_code(reply: u16) -> u16 {
    match reply {
        421 => 614,
        425 => 615,
        426 => 616,
        450 => 617,
        451 => 618,
        452 => 619,
        500 => 620,
        501 => 621,
        502 => 622,
        503 => 623,
        504 => 624,
        530 => 625,
        532 => 626,
        550 => 627,
        551 => 628,
        552 => 629,
        553 => 630,
        _ => FTP_UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
    }

    fn every_cause() -> Vec<DownloadError> {
        vec![
            DownloadError::Dns {
                host: "x.invalid".into(),
                detail: "nx".into(),
            },
            DownloadError::Connect {
                addr: "127.0.0.1:1".into(),
                source: io(),
            },
            DownloadError::NetworkDown,
            DownloadError::NoAnswer {
                waiting_for: "PASS",
                timeout_ms: 1,
            },
            DownloadError::Stalled {
                received: 1,
                timeout_ms: 1,
            },
            DownloadError::ControlClosed,
            DownloadError::Truncated {
                received: 1,
                expected: Some(2),
            },
            DownloadError::FtpReply {
                command: "PASS",
                code: 530,
                text: "no".into(),
            },
            DownloadError::HttpStatus(404),
            DownloadError::Tls("x".into()),
            DownloadError::Other("x".into()),
            DownloadError::BadHost("a_b".into()),
            DownloadError::BadIp("256.1.1.1".into()),
            DownloadError::ContextInactive { cid: 2 },
            DownloadError::PeerReset { received: 1 },
            DownloadError::Overrun {
                received: 3,
                expected: 2,
            },
            DownloadError::HttpDecode("x".into()),
            DownloadError::NoSpace { needed: 2, free: 1 },
            DownloadError::Busy { uart: false },
            DownloadError::Busy { uart: true },
        ]
    }

    #[test]
    fn ec200_codes_follow_the_spec_cause_table() {
        let got: Vec<(u16, u16)> = every_cause().iter().map(|c| c.detailed_codes()).collect();
        assert_eq!(
            got,
            vec![
                (604, 714),
                (605, 716),
                (605, 707),
                (609, 728),
                (609, 722),
                (606, 701),
                (607, 719),
                (625, 701),
                (601, 723),
                (601, 701),
                (601, 701),
                (610, 711),
                (610, 713),
                (605, 707),
                (608, 717),
                (612, 701),
                (601, 721),
                (611, 729),
                (603, 703),
                (603, 704),
            ]
        );
    }

    #[test]
    fn a_cut_short_download_reads_as_a_sentence() {
        let cut = |expected| DownloadError::Truncated {
            received: 3594,
            expected,
        };
        assert_eq!(
            cut(Some(7188)).to_string(),
            "connection closed after 3594 of 7188 bytes"
        );
        assert_eq!(cut(None).to_string(), "connection closed after 3594 bytes");
    }

    #[test]
    fn generic_families_report_601_and_701_only() {
        for cause in every_cause() {
            assert_eq!(cause.code(Scheme::Ftp, DownloadCodes::Generic), 601);
            assert_eq!(cause.code(Scheme::Http, DownloadCodes::Generic), 701);
            assert_eq!(cause.code(Scheme::Https, DownloadCodes::Generic), 701);
        }
        let dns = &every_cause()[0];
        assert_eq!(dns.code(Scheme::Ftp, DownloadCodes::Detailed), 604);
        assert_eq!(dns.code(Scheme::Https, DownloadCodes::Detailed), 714);
    }

    #[test]
    fn host_names_are_checked_before_a_lookup() {
        for ok in [
            "127.0.0.1",
            "::1",
            "localhost",
            "www.example.com",
            "a-b.c",
            "x.y.",
        ] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for ip in ["256.1.1.1", "1.2.3", "1..2.3.4"] {
            assert!(
                matches!(check_host(ip), Err(DownloadError::BadIp(_))),
                "{ip}"
            );
        }
        for bad in ["-a.com", "a..b", "a b", "a!b", &"x".repeat(64)] {
            assert!(
                matches!(check_host(bad), Err(DownloadError::BadHost(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn ftp_replies_map_to_seed_001_table_2() {
        let pairs = [
            (421, 614),
            (425, 615),
            (426, 616),
            (450, 617),
            (451, 618),
            (452, 619),
            (500, 620),
            (501, 621),
            (502, 622),
            (503, 623),
            (504, 624),
            (530, 625),
            (532, 626),
            (550, 627),
            (551, 628),
            (552, 629),
            (553, 630),
            (331, 601),
            (999, 601),
        ];
        for (reply, code) in pairs {
            assert_eq!(ftp_reply_code(reply), code, "{reply}");
        }
    }
}

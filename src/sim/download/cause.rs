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
    #[error("connection closed after {received} of {expected:?} bytes")]
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
    /// Anything else (malformed replies, more bytes than announced, …).
    #[error("{0}")]
    Other(String),
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
    pub(super) fn stalled(received: u64, timeout: Duration) -> DownloadError {
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

    /// The `ec200` codes for this cause over FTP and over HTTP(S), as the
    /// SPEC §4 cause table gives them; a cause the table marks "—" for a
    /// protocol is "anything else" there (601 / 701).
    pub fn detailed_codes(&self) -> (u16, u16) {
        match self {
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
            ]
        );
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

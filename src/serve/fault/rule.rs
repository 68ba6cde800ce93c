//! One fault rule's parts: the [`Action`] it takes, the [`Matchers`] that
//! pick its attempts, and the [`FTP_REPLY_SUPPORT`] table that says which
//! FTP replies an action can replace. Parsing lives in `parse.rs`, matching
//! in `set.rs`.

use std::fmt;

use crate::dlog::Protocol;

/// FTP commands whose reply `ftp-reply` can replace, with the codes
/// possible for each: what libunftp's hooks can return. `CONNECT` is the
/// greeting, written before libunftp sees the connection (any 4xx/5xx).
/// `SIZE` also answers `MDTM` (both read file metadata), `LIST` also
/// `NLST` and `MLSD`, and `PASV` and `EPSV` share the passive-port hook, so
/// a rule naming either covers both.
pub const FTP_REPLY_SUPPORT: &[(&str, &[u16])] = &[
    ("CONNECT", &[]),
    ("USER", &[530]),
    ("PASS", &[530]),
    ("PASV", &[425]),
    ("EPSV", &[425]),
    ("RETR", STORAGE_CODES),
    ("SIZE", STORAGE_CODES),
    ("CWD", STORAGE_CODES),
    ("LIST", STORAGE_CODES),
];

/// Replies a storage back-end error can carry (unftp-core `ErrorKind`).
const STORAGE_CODES: &[u16] = &[426, 450, 451, 452, 502, 550, 551, 552, 553];

/// A byte count, absolute or a percentage of the package size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// Bytes from the start of the package.
    Bytes(u64),
    /// Percent (0–100) of the package size.
    Percent(f64),
}

impl Amount {
    /// The byte offset this amount names in a package of `size` bytes.
    pub fn of(self, size: u64) -> u64 {
        match self {
            Amount::Bytes(b) => b,
            Amount::Percent(p) => ((size as f64) * p / 100.0).floor() as u64,
        }
    }
}

/// What a rule makes the server do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// FTP login answered 530.
    RefuseLogin,
    /// HTTP 404 / FTP 550 for an existing package.
    NotFound,
    /// HTTP status instead of the package (a 3xx carries a `Location`).
    Status(u16),
    /// Replace the reply to an FTP command (see [`FTP_REPLY_SUPPORT`]).
    FtpReply {
        /// Reply code.
        code: u16,
        /// Upper-case command name.
        command: String,
    },
    /// Close the connection after this many package bytes, having promised
    /// the full length (the reader ends early; the front-end sees a short
    /// package and closes).
    DropAfter(Amount),
    /// Stop sending after this many bytes and keep the connection open.
    StallAfter(u64),
    /// Throttle the body to this many bytes per second.
    Slow(u64),
    /// Flip one byte at this package offset.
    Corrupt(u64),
}

impl Action {
    /// True for actions that change the bytes of a transfer.
    pub fn is_data(&self) -> bool {
        matches!(
            self,
            Action::DropAfter(_) | Action::StallAfter(_) | Action::Slow(_) | Action::Corrupt(_)
        )
    }

    /// True for an action that changes the bytes (see [`Action::is_data`])
    /// of a transfer of package offsets `range` (bytes, end exclusive) of
    /// a `size`-byte package: a drop or stall at an offset before the
    /// range's end, a corrupted byte inside it, any throttle. A rule that
    /// would change nothing is not applied: it is not named in the record
    /// and does not use up its `times`.
    pub fn changes(&self, range: &std::ops::Range<u64>, size: u64) -> bool {
        match *self {
            Action::DropAfter(amount) => amount.of(size) < range.end,
            Action::StallAfter(at) => at < range.end,
            Action::Corrupt(at) => range.contains(&at),
            Action::Slow(_) => true,
            _ => false,
        }
    }
}

/// Conditions a rule's attempts must meet (checked in `set.rs`).
#[derive(Debug, Clone, Default)]
pub struct Matchers {
    pub(super) path: Option<globset::GlobMatcher>,
    pub(super) protocol: Option<Protocol>,
    pub(super) peer: Option<ipnet::IpNet>,
    pub(super) user: Option<String>,
    pub(super) times: Option<u64>,
    pub(super) rate: Option<f64>,
}

/// One parsed rule.
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub(super) text: String,
    pub(super) action: Action,
    pub(super) matchers: Matchers,
}

impl FaultRule {
    /// The action.
    pub fn action(&self) -> &Action {
        &self.action
    }
}

impl fmt::Display for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

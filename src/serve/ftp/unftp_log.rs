//! libunftp's own log, per session: forwarded to `tracing` at debug level,
//! and read for the one event that happens inside libunftp with no call
//! into the storage back-end — a `RETR` with no data connection, which
//! libunftp answers `425` itself — so that attempt leaves a record too.
//!
//! libunftp (0.24, pinned in `Cargo.lock`) reports it only as a warning,
//! `RETR: no data connection established for RETRing "<path>"`; a test
//! (`tests/ftp_defences.rs`) fails if that wording changes.

use std::sync::Weak;

use slog::{Drain, Level, Never, OwnedKVList, Record};

use super::FtpSession;

/// The beginning of libunftp's warning for a `RETR` with no data
/// connection; the path follows, `Debug`-quoted.
const RETR_WITHOUT_DATA: &str = "RETR: no data connection established for RETRing ";

/// A `slog` drain bound to one FTP session.
pub(super) struct SessionDrain {
    session: Weak<FtpSession>,
}

impl SessionDrain {
    /// A logger for the libunftp server of `session`.
    pub(super) fn logger(session: Weak<FtpSession>) -> slog::Logger {
        slog::Logger::root(SessionDrain { session }, slog::o!())
    }
}

// slog asks drains to be unwind-safe. This one keeps no state of its own
// across a call: a panic inside it can leave nothing half-updated that a
// later call would see (the session's own state is behind mutexes, which
// recover from poisoning).
impl std::panic::RefUnwindSafe for SessionDrain {}
impl std::panic::UnwindSafe for SessionDrain {}

impl Drain for SessionDrain {
    type Ok = ();
    type Err = Never;

    fn log(&self, record: &Record<'_>, _: &OwnedKVList) -> Result<(), Never> {
        let warning = record.level().is_at_least(Level::Warning);
        if !warning && !tracing::enabled!(tracing::Level::DEBUG) {
            return Ok(());
        }
        let message = record.msg().to_string();
        if let Some(quoted) = message.strip_prefix(RETR_WITHOUT_DATA)
            && let Some(session) = self.session.upgrade()
        {
            session.retr_without_data_connection(&unquote(quoted));
        }
        tracing::debug!(target: "libunftp", level = %record.level(), "{message}");
        Ok(())
    }
}

/// The string inside a `Debug`-quoted one (`"a\"b"` → `a"b`); escapes
/// other than `\"` and `\\` are kept as written.
fn unquote(quoted: &str) -> String {
    let inner = quoted
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(quoted);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some(next @ ('"' | '\\'))) => {
                out.push(next);
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unquote_reads_back_what_debug_wrote() {
        for s in ["update.zip", "a \"b\" c", r"back\slash", "Jun/ü.zip"] {
            assert_eq!(unquote(&format!("{s:?}")), s);
        }
        assert_eq!(unquote("no quotes"), "no quotes");
    }
}

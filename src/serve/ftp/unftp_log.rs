//! libunftp's own log, per session: forwarded to `tracing` at debug level,
//! and read for what happens inside libunftp with no call into the
//! storage back-end, so those attempts leave records too:
//!
//! - every command, from the control channel's debug line
//!   `Control channel event Command(Retr { path: "<path>" })`: which
//!   command a storage call serves (`SIZE` or `MLST`), and a `RETR`
//!   libunftp answered `150` for while its data connection has not come
//!   (the storage back-end is called only once it has);
//! - a `RETR` with no data connection at all, which libunftp answers `425`
//!   itself and reports only as the warning
//!   `RETR: no data connection established for RETRing "<path>"`.
//!
//! libunftp is pinned in `Cargo.lock` (0.24); tests (`tests/ftp_defences.rs`)
//! fail if either wording changes.

use std::sync::Weak;

use slog::{Drain, Level, Never, OwnedKVList, Record};

use super::FtpSession;

/// The beginning of libunftp's warning for a `RETR` with no data
/// connection; the path follows, `Debug`-quoted.
const RETR_WITHOUT_DATA: &str = "RETR: no data connection established for RETRing ";

/// The beginning of libunftp's debug line for each control channel event;
/// a command's `Debug` form follows (`Command(Size { path: "a.zip" })`).
const COMMAND_EVENT: &str = "Control channel event Command(";

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
        // Command events are debug lines of the control channel's logging
        // middleware, read whatever the log level (one per command). In a
        // release build they reach here only because slog is built with
        // debug assertions (Cargo.toml's profile).
        let event = record.level() == Level::Debug && record.module().ends_with("controlchan::log");
        let forward = warning || tracing::enabled!(tracing::Level::DEBUG);
        if !forward && !event {
            return Ok(());
        }
        let message = record.msg().to_string();
        if let Some(command) = message.strip_prefix(COMMAND_EVENT)
            && let Some(session) = self.session.upgrade()
        {
            let (name, path) = parse_command(command);
            session.command(&name, path.as_deref());
        } else if let Some(quoted) = message.strip_prefix(RETR_WITHOUT_DATA)
            && let Some(session) = self.session.upgrade()
        {
            session.retr_without_data_connection(&unquote(quoted));
        }
        if forward {
            tracing::debug!(target: "libunftp", level = %record.level(), "{message}");
        }
        Ok(())
    }
}

/// A command's name in upper case (`SIZE`) and its `path` field, if it has
/// one, from libunftp's `Debug` form: `Size { path: "a.zip" })` (the
/// event's closing parenthesis included) or `Noop)`.
fn parse_command(debug: &str) -> (String, Option<String>) {
    let end = debug
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(debug.len());
    let name = debug[..end].to_ascii_uppercase();
    let path = debug[end..]
        .strip_prefix(" { path: ")
        .and_then(|rest| rest.strip_suffix(" })"))
        .map(unquote);
    (name, path)
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

    #[test]
    fn commands_read_from_their_debug_form() {
        assert_eq!(
            parse_command(r#"Retr { path: "Jun/a "b".zip" })"#),
            ("RETR".into(), Some(r#"Jun/a "b".zip"#.into()))
        );
        assert_eq!(parse_command("Noop)"), ("NOOP".into(), None));
        assert_eq!(
            parse_command(r#"Rest { offset: 100 })"#),
            ("REST".into(), None)
        );
    }
}

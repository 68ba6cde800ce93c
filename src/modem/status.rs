//! What the modem is doing: the [`Status`] the session task publishes on
//! a watch channel and the `Modem` handle hands out. A file of
//! its own so the session (the writer) and the modem handle (the reader)
//! both import it from below.

use std::path::PathBuf;

/// What the modem is doing, as `Modem::status` and `Modem::watch` report
/// it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The module is up and its ports are there (false while it reboots
    /// and after shutdown).
    pub powered: bool,
    /// Boots since the modem started (0 until the first reboot).
    pub boots: u64,
    /// The PTY's slave device (`/dev/pts/N`) while the module is up.
    pub pty: Option<PathBuf>,
    /// The module runs its upgrade (recovery image): URCs only, no
    /// commands.
    pub upgrading: bool,
    /// Switched off by `AT+QPOWD`, until `Modem::power_on`.
    pub off: bool,
}

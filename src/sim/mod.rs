//! The module simulator: a Quectel module's FOTA downloader and upgrade,
//! per family, as seen from its AT port (SPEC §2–§5).
//!
//! # Parts and how data flows
//!
//! 1. [`command`] parses `AT+QFOTADL=<args>` against the family's
//!    [`Profile`](crate::profile::Profile): a bad URL or parameter is
//!    `ERROR`, nothing more.
//! 2. [`module`] runs an accepted command as a task: `OK`, then
//!    [`download`] fetches the package over FTP (suppaftp) or HTTP(S)
//!    (hyper + a module-like rustls client) and maps any failure cause to
//!    the family's `FTPEND`/`HTTPEND` code ([`download::cause`]).
//! 3. [`package`] checks the package (zip and CRC, the [`version`](crate::package::version) in its
//!    name, size, free space); [`upgrade`] prints `START`, `UPDATING`,
//!    `END,<err>` with the five-attempt retry rule, reboots and power cuts
//!    ([`fault`] injects module-side faults).
//! 4. Everything the module does is an [`Event`] ([`urc`]) on the run's
//!    stream; [`transcript`] sums a run up, [`cli`] prints it for
//!    `qfota-serve simulate`.
//!
//! Module delays follow a realistic timeline scaled by a time scale; network
//! transfers run in real time.

pub mod cli;
pub mod command;
pub mod download;
pub mod fault;
pub mod fleet;
pub mod module;
pub mod package;
pub mod transcript;
pub mod upgrade;
pub mod urc;

pub use command::{FotaUrl, FotadlArgs, FotadlCommand};
pub use download::DownloadError;
pub use fault::Fault;
pub use module::{ConfigError, FotaRun, Module, ModuleBuilder, ModuleSettings};
pub use transcript::{RunSummary, TimedEvent, Transcript};
pub use urc::{AtResult, Event, PowerOff, Urc};

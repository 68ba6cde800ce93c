//! The module simulator: a Quectel module's FOTA downloader and upgrade,
//! per family, as seen from its AT port (SPEC §2–§5).
//!
//! # Parts and how data flows
//!
//! 1. [`command`] parses `AT+QFOTADL=<args>` against the family's
//!    [`Profile`](crate::profile::Profile): a bad URL, local path or
//!    parameter is `ERROR`, nothing more. The package comes from a server
//!    (URL), from the module's file system ([`ufs`], SPEC §9) or, on
//!    `ec200`, over the AT port (`FILE:<length>`, fed through
//!    [`FileSender`]).
//! 2. [`module`] is the front door: [`Module::fotadl`] accepts the command
//!    (or refuses it while a run is in progress) and spawns a `run`,
//!    which goes phase by phase: `OK`, then [`download`] fetches the
//!    package over FTP (suppaftp) or HTTP(S) (hyper + a module-like rustls
//!    client) and maps any failure cause to the family's
//!    `FTPEND`/`HTTPEND` code ([`download::cause`]).
//! 3. [`package`] checks the package (zip and CRC, the [`version`](crate::package::version) in its
//!    name, size, free space); [`upgrade`] prints `START`, `UPDATING`,
//!    `END,<err>` with the five-attempt retry rule, reboots and power cuts
//!    ([`fault`] injects module-side faults); the run reboots the module
//!    into normal mode with its new version.
//! 4. Everything the module does is an [`Event`] ([`urc`]) sent through
//!    the run's emitter (`emit`) onto its stream; [`transcript`] sums a run up;
//!    `qfota-serve simulate` (`src/cli/simulate.rs`) prints it; [`fleet`]
//!    runs many modules at once.
//!
//! # Layers
//!
//! Arrows point down; no file imports one that imports it back:
//!
//! - top: [`fleet`] (many modules at once), over [`module`]
//!   (settings, builder, `Module`, the `FotaRun` stream);
//! - `run` (the phases), over `state` (configuration, version, busy
//!   flag and notes a module shares with its runs);
//! - [`download`] and [`upgrade`], the steps a run drives;
//! - bottom: `clock` (module time: realistic timings × the time scale),
//!   `emit` (the event channel), [`command`], [`fault`], [`urc`],
//!   [`package`], [`transcript`], [`ufs`] (the module's file system,
//!   shared by the module and its runs, surviving reboots); version
//!   tokens live in [`crate::package::version`], shared with the catalog.
//!
//! `testing` holds the unit tests' shared helpers.
//!
//! Module delays follow a realistic timeline scaled by a time scale; network
//! transfers run in real time.

pub(crate) mod clock;
pub mod command;
pub mod download;
pub(crate) mod emit;
pub mod fault;
pub mod fleet;
pub mod module;
pub mod package;
pub(crate) mod run;
pub(crate) mod state;
#[cfg(test)]
pub(crate) mod testing;
pub mod transcript;
pub mod ufs;
pub mod upgrade;
pub mod urc;

pub use command::{FotaUrl, FotadlArgs, FotadlCommand};
pub use download::DownloadError;
pub use fault::Fault;
pub use module::{
    ConfigError, FileClosed, FileSender, FotaRun, Module, ModuleBuilder, ModuleSettings,
};
pub use transcript::{RunSummary, TimedEvent, Transcript};
pub use ufs::{FileError, FileInfo, Space, Stored, Ufs};
pub use urc::{AtResult, Event, PowerOff, Urc};

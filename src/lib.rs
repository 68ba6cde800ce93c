//! qfota-serve: host firmware packages for Quectel FOTA (`AT+QFOTADL`) over
//! FTP, HTTP and HTTPS, log every download attempt, validate packages, and
//! simulate the module's downloader and AT port.
//!
//! # Parts and how data flows
//!
//! - [`profile`]: the module families (`ec2x`, `ec200`, …) as data. The
//!   single source of truth for URL limits, URC words and result codes; both
//!   validation and the simulator read it.
//! - [`catalog`]: the package folder behind a small [`catalog::Catalog`]
//!   interface — scanned and re-scanned, each file validated once per change
//!   (zip CRCs, SHA-256, names, per-profile URL verdicts). Request paths
//!   become catalog keys in [`catalog::path`].
//! - [`serve`]: the listeners. [`serve::Server::builder`] binds FTP
//!   ([`serve::ftp`], libunftp), HTTP and HTTPS ([`serve::http`], hyper +
//!   rustls); both ask the catalog what to serve, apply [`serve::fault`]
//!   rules, and emit one [`dlog::DownloadRecord`] per attempt.
//! - [`dlog`]: the download log — records fanned out to the JSON-lines file,
//!   `tracing`, an in-memory ring and subscribers.
//! - [`campaign`]: the campaign view — download records (from the log
//!   files or a running server) become per-package attempts, modules,
//!   outcomes, durations and failure reasons, printed as a table, JSON or a
//!   self-contained HTML page.
//! - [`sim`]: the module simulator — `AT+QFOTADL` parsing, the FTP/HTTP(S)
//!   downloader, package checks and the upgrade with its URCs and retries;
//!   [`sim::fleet`] runs many modules at once.
//! - [`modem`]: a simulated module behind an AT port (pseudo-terminal or
//!   TCP), rebooting where the family reboots; configured with plain values
//!   ([`modem::ModemBuilder`]) and stopped by whoever started it.
//! - [`cli`]: the only part that knows clap — a file per subcommand, one
//!   shared [`cli::module_args::ModuleArgs`] block for `simulate`, `fleet`
//!   and `modem`; flags become plain checked configs once, at start-up, and
//!   the printed reports live there. `main.rs` parses, sets up logging and
//!   dispatches, passing the shutdown signal ([`cli::shutdown_signal`]) in.
//!
//! Data flow when serving: client → listener → [`catalog::path`] key →
//! [`catalog::Catalog::lookup`] → fault rules → bytes from
//! [`catalog::Catalog::open`] → record → [`dlog::DownloadLog`] sinks.
pub mod campaign;
pub mod catalog;
pub mod cli;
pub mod dlog;
pub mod modem;
pub mod profile;
pub mod serve;
pub mod sim;

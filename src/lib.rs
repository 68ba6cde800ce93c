//! qfota-serve: host firmware packages for Quectel FOTA (`AT+QFOTADL`) over
//! FTP, HTTP and HTTPS, log every download attempt, validate packages, and
//! simulate the module's downloader and AT port.
//!
//! # Parts and how data flows
//!
//! - [`profile`]: the module families (`ec2x`, `ec200`, …) as data. The
//!   single source of truth for URL limits, URC words and result codes; both
//!   validation and the simulator read it.
//! - [`package`]: the pure package checks — zip integrity, naming rules,
//!   version tokens — shared by the catalog and the simulator, importing
//!   neither.
//! - [`catalog`]: where packages come from, behind the whole
//!   [`catalog::Catalog`] interface (lookup, metadata, listing, ranged
//!   reads): the package folder ([`catalog::FsCatalog`], scanned and
//!   re-scanned, each file validated once per change: SHA-256, zip CRCs,
//!   names, per-profile URL verdicts), an S3-compatible object store
//!   ([`catalog::S3Catalog`]: the bucket listed, each version fetched once
//!   into a local cache, validated, served from there) or packages in
//!   memory ([`catalog::MemCatalog`]). Request paths become catalog keys in
//!   [`catalog::path`].
//! - [`serve`]: the listeners. [`serve::Server::builder`] binds FTP
//!   ([`serve::ftp`], libunftp), HTTP and HTTPS ([`serve::http`], hyper +
//!   rustls); both ask the catalog what to serve, apply [`serve::fault`]
//!   rules, and emit one [`dlog::DownloadRecord`] per attempt;
//!   [`serve::listing`] renders the package listing page (`/`) and
//!   [`serve::metrics`] keeps the Prometheus figures.
//!   [`serve::delivery`] reads from the kernel how many body bytes each
//!   peer acknowledged, so a record is `complete` only when the module's
//!   TCP stack has every byte.
//! - [`admin`]: the admin listener (`--admin`), its own port beside the
//!   package listeners: `/healthz`, `/readyz`, `/metrics`, the live
//!   campaign page ([`admin::campaign`]) and the control routes that
//!   change fault rules, stream download records and re-scan packages.
//! - [`dlog`]: the download log — records fanned out to the JSON-lines file,
//!   `tracing`, an in-memory ring and subscribers.
//! - [`campaign`]: the campaign view — download records (from the log
//!   files or a running server) become per-package attempts, modules,
//!   outcomes, durations and failure reasons, printed as a table, JSON or a
//!   self-contained HTML page.
//! - [`net`]: address helpers (IPv4-mapped peers written as IPv4) used by
//!   the log, the server and its kernel look-ups.
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
//! [`catalog::Catalog::lookup`] (listings: [`catalog::Catalog::list`]) →
//! fault rules → bytes from [`catalog::Catalog::open`] → socket → the
//! peer's acknowledgements ([`serve::delivery`]) → record →
//! [`dlog::DownloadLog`] sinks.
pub mod admin;
pub mod campaign;
pub mod catalog;
pub mod cli;
pub mod dlog;
pub mod modem;
pub mod net;
pub mod package;
pub mod profile;
pub mod serve;
pub mod sim;

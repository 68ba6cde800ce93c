//! qfota-serve: host firmware packages for Quectel FOTA (`AT+QFOTADL`) over
//! FTP, HTTP and HTTPS, log every download attempt, validate packages, and
//! simulate the module's downloader and AT port.
//!
//! # Parts and how data flows
//!
//! - [`profile`]: the module families (`ec2x`, `ec200`, …) as data. The
//!   single source of truth for URL limits, URC words and result codes; both
//!   validation and the simulator read it.
//! - [`sim`]: the module simulator — `AT+QFOTADL` parsing, the FTP/HTTP(S)
//!   downloader, package checks and the upgrade with its URCs and retries.
pub mod catalog;
pub mod cli;
pub mod dlog;
pub mod modem;
pub mod profile;
pub mod serve;
pub mod sim;

//! Pure package checks, shared by the server's catalog and the simulator.
//!
//! Nothing here knows where bytes come from or who asks: [`zip`] checks an
//! archive's integrity (every entry's CRC-32), [`name`] the naming rules of
//! SPEC §6, [`version`] the `<from>-to-<to>` version tokens of SPEC §5. The
//! catalog ([`crate::catalog`]) runs the first two on every package it
//! serves; the simulator ([`crate::sim::package`]) runs [`zip`] and
//! [`version`] on what it downloaded, so both sides agree on what a valid
//! package is. This module imports neither of them.

pub mod name;
pub mod version;
pub mod zip;

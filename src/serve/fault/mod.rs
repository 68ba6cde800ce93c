//! Server fault rules: make the server misbehave on purpose so a real module
//! (or the simulator) shows `601`/`701` and the host's recovery path can be
//! tested.
//!
//! A rule is one action plus optional matchers, written
//! `action[=value][,key=value]…`:
//!
//! ```text
//! drop-after=50%,path=/big-*.zip
//! ftp-reply=425,command=PASV,times=1
//! status=503,protocol=http,rate=0.3
//! ```
//!
//! Actions: `refuse-login`, `not-found`, `status=<code>`,
//! `ftp-reply=<code>,command=<CMD>`, `drop-after=<bytes>|<pct>%`,
//! `stall-after=<bytes>`, `slow=<bytes/s>`, `corrupt=<offset>`. Matchers:
//! `path` (glob on `/<key>`), `protocol`, `peer` (IP or CIDR), `user`,
//! `times=N` (the first N attempts it applies to), `rate=P` (probability,
//! drawn from one generator seeded with `--fault-seed`). The first rule whose
//! action fits the moment (login, passive, command, request) and whose
//! matchers all match is applied; the download record names it in `fault`.
//!
//! The parts: `rule.rs` (what a rule is), `parse.rs` (its text, one
//! function per key), `set.rs` (which rule applies to an attempt),
//! `reader.rs` (the byte-stream faults on a package body) and `file.rs`
//! (the TOML fault file and its watcher).

pub(crate) mod file;
mod parse;
mod reader;
mod rule;
mod set;

pub use file::parse_fault_file;
pub use parse::FaultParseError;
pub(crate) use reader::apply_data_fault;
pub use reader::{FaultedReader, PEER_CHECK, PeerWatch};
pub use rule::{Action, Amount, FTP_REPLY_SUPPORT, FaultRule, Matchers};
pub use set::{Applied, AttemptInfo, FaultSet};

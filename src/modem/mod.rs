//! The virtual modem: the simulated module ([`crate::sim`]) behind a real
//! AT command port — a pseudo-terminal that host software opens like
//! `/dev/ttyUSB2` (pyserial works on it), and/or a TCP port.
//!
//! # Parts and how data flows
//!
//! - [`pty`]: the pseudo-terminal and the symlink kept at its current
//!   `/dev/pts/N`; [`port`]: one task per open port moving bytes, plus the
//!   TCP accept loop.
//! - [`at`]: line framing and echo as a module's parser sees the bytes;
//!   [`syntax`]: a V.250 command line split into its commands;
//!   [`commands`]: parsing and answering the AT commands (the table is
//!   there); [`reply`]: result-code settings (`ATV`, `ATQ`, `AT+CMEE`) and
//!   how answers are framed under them; [`data`]: the binary data phases
//!   (`AT+QFUPL` uploads into the module's UFS, `ec200`'s
//!   `AT+QFOTADL="FILE:<length>"`) that take a port's raw bytes instead of
//!   command lines.
//! - [`session`]: the state machine, one task that owns the module, the
//!   ports and every byte written, so a URC never lands inside a response.
//!   `AT+QFOTADL` goes to [`Module::fotadl`]; the run's events become the
//!   port's `OK`, URCs, reboots and `RDY`s.
//! - [`control`]: runtime control over TCP (JSON lines): cut the
//!   network, reboot, inject a URC, set the signal, read the state.
//! - [`ratelog`]: the per-connection log lines (hosts and control
//!   clients connecting, leaving, refused), rate-limited.
//! - [`status`]: what the modem is doing ([`Status`]), below the session
//!   that publishes it and the [`Modem`] handle that reports it.
//!
//! `qfota-serve modem` (flags, the printed status lines) lives in the
//! command-line module, `src/cli/modem.rs`; it passes its shutdown signal
//! in.
//!
//! # How the modem behaves, where the seeds leave it open
//!
//! - **Start.** The module is already running when the modem starts: the
//!   ports are there at once and nothing is printed until its first
//!   reboot.
//! - **Reboots** ([`Event::PowerOff`](crate::sim::Event::PowerOff) — after
//!   `FTPEND/HTTPEND,0` where the family reboots, between failed upgrade
//!   attempts, after the last `END` — and `AT+CFUN=1,1`, which answers `OK`
//!   first). The port goes away as a USB port does when the module
//!   re-enumerates (seed `004_88405b99851b7db5.txt` §3.1: "the USB port is
//!   re-initialized … MCU should close and reopen it"): the link is
//!   removed, the PTY master is closed after [`port::PTY_LINGER`] (time for
//!   the host to read the last URC; then its reads fail with EIO or end of
//!   file), a TCP host's connection is closed. A TCP host that connects
//!   while the module is down is closed at once. After the reboot time
//!   ([`DEFAULT_REBOOT`], `--reboot-ms`; counted from the PTY's close when
//!   there is a PTY) — or when the simulated module has booted, if later
//!   (its reboot is 20 s × time scale) — a **new** PTY appears behind the
//!   same link and TCP takes a host again. Module
//!   output after a late port is delayed by as much, keeping its pace.
//!   `AT+CFUN=1,1` while an `AT+QFOTADL` runs (the download, or the moment
//!   between `FTPEND,0` and the module's own reboot) ends the run: no more
//!   URCs, no upgrade.
//! - **Boot lines.** `RDY`, then `+CFUN: 1` and `+CPIN: READY` on a normal
//!   boot (SPEC §8); `RDY` alone on a boot into the upgrade (recovery).
//! - **No host.** URCs and boot lines produced while no host has a port
//!   open are held and written to the first host that opens one within
//!   the hold time ([`DEFAULT_URC_HOLD`], `--urc-hold-ms`); older ones are
//!   dropped. So a host that reopens the port after a reboot sees `RDY`,
//!   `START`, …; a host that went away and never comes back loses them,
//!   and the module carries on regardless (the download and upgrade do not
//!   depend on a host). Held lines survive a reboot, so a host that
//!   reopens the port only after several short boots still reads them
//!   all. A PTY port notices a host opening or closing it within 50 ms;
//!   what was written in that instant is lost, as on a real port.
//! - **During the upgrade** (from `START`, or from the reboot into it after
//!   `FTPEND/HTTPEND,0`, until the module goes down to boot normally) the
//!   module runs its recovery image: the port prints URCs only and
//!   discards what the host sends — no echo, no answer. The seeds only
//!   show URCs in that stretch (seeds 000, 004 §3–4: `START`, `UPDATING`,
//!   `END`; "Do not power off the module during the upgrade"), and the
//!   host guidance "no URC for 4 minutes → restart the module" presumes
//!   nothing else to talk to.
//! - **Commands during a download** are answered as usual; a second
//!   `AT+QFOTADL` is `ERROR`, except on `ec200`, which answers a URL `OK`
//!   and ends it at once with the busy code (`FTPEND,603` /
//!   `HTTPEND,703`, 704 during a `FILE:` transfer; seed 001 tables 2 and
//!   3) while the running download goes on. Lines typed between
//!   `AT+QFOTADL` and its `OK`/`ERROR` (up to 300 ms, seed 000) run after
//!   it.
//! - **UART wiring** ([`Link::Uart`], `--link uart`). A module wired to an
//!   MCU's UART, or reached through a USB-UART adapter, has a port that
//!   never goes away: on a reboot the PTY and its link (and a TCP host's
//!   connection) stay, the line goes quiet — what the host sends meanwhile
//!   is discarded, nothing is written — and `RDY` (with the boot URCs)
//!   then arrives on the same port. Hosts that keep one file descriptor
//!   for ever need this; hosts written for the USB port (reopen after
//!   each reboot) need [`Link::Usb`], the default.
//! - **Power down** (`AT+QPOWD`): `OK`, `POWERED DOWN`, then the module is
//!   off — the port goes away as on a reboot (quiet on a UART) and stays
//!   away until [`Modem::power_on`] (`qfota-serve modem`: SIGUSR1), which
//!   boots it after the reboot time. Any FOTA run ends.
//! - **Radio off** (`AT+CFUN=0` or `4`): registration reads `0,0`, no
//!   data; `AT+QFOTADL` then answers `OK` and the download ends at once
//!   with the family's no-network code (`FTPEND,605`/`HTTPEND,707` on
//!   `ec200`, 601/701 elsewhere), as under fault `network-down`; a
//!   download under way ends the same way. The modem produces these URCs
//!   itself (the simulated module's faults are fixed when it is built).
//!   `AT+CFUN=1` brings the radio back; every boot does.
//! - **Port settings** (`ATE`, `ATV`, `ATQ`, `AT+CMEE`, `AT+IFC`, …) are
//!   per port; each boot starts from the profile `AT&W` saved (factory:
//!   echo on, verbose, `+CMEE=0`).
//! - **Data phases** (`AT+QFUPL` after `CONNECT`, `FILE:<length>` after
//!   `OK`): the port's bytes go to the phase, unechoed and unparsed, until
//!   it has what it wants (the rest of the chunk is command lines again),
//!   its timeout passes, the host closes the port (nothing is stored) or
//!   the module goes down. A `\n` arriving in the same chunk right after
//!   the `\r` that ended the command is that line's end, not data.
//! - **Garbage** (binary, NUL bytes, over-long lines, unknown commands)
//!   is `ERROR` or ignored (see [`at`], [`commands`]); nothing in the
//!   input can stop the modem.

pub mod at;
pub mod commands;
pub mod control;
pub mod data;
pub mod link;
pub mod port;
pub mod pty;
pub mod ratelog;
pub mod reply;
pub mod session;
pub mod status;
pub mod syntax;

pub use link::Link;
pub use status::Status;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::modem::pty::{Pty, PtyLink};
use crate::modem::session::{Session, SessionParts};
use crate::sim::Module;

/// Default time the port is away during a reboot: 500 ms (a real module
/// takes some 20 s; see [`ModemBuilder::reboot_time`]).
pub const DEFAULT_REBOOT: Duration = Duration::from_millis(500);
/// Default time unsolicited lines wait for a host to open the port: 20 s,
/// past the 15 s fwupd's DFOTA updater waits after `AT+QFOTADL`'s `OK`
/// before it reads the port again (`FU_MM_DFOTA_DEVICE_FOTA_RESTART_TIMEOUT_SECS`
/// in fwupd's `plugins/modem-manager/fu-mm-dfota-device.c`): at the default
/// time scale the whole upgrade is over by then.
pub const DEFAULT_URC_HOLD: Duration = Duration::from_secs(20);
/// Default IMEI (`AT+GSN`): 15 digits with a valid check digit.
pub const DEFAULT_IMEI: &str = "867675040000011";
/// Default PTY link of `qfota-serve modem --pty`.
pub const DEFAULT_LINK: &str = "/tmp/qfota-modem";
/// Longest model name `ATI`/`AT+CGMM` show, in bytes.
pub const MAX_MODEL: usize = 64;

/// Why a modem cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ModemError {
    /// Neither a PTY nor a TCP listener was given.
    #[error("the modem needs a port: a PTY link, a TCP listener, or both")]
    NoPort,
    /// The IMEI is not 15 decimal digits.
    #[error("IMEI {0:?} must be 15 decimal digits")]
    Imei(String),
    /// The model name is empty, too long or holds control characters.
    #[error("model name {0:?} must be printable, not empty, at most {MAX_MODEL} bytes")]
    Model(String),
    /// No pseudo-terminal could be opened.
    #[error("cannot open a pseudo-terminal: {0}")]
    Pty(#[source] std::io::Error),
    /// The link cannot be made (folder not writable, a real file there).
    #[error("cannot make the PTY link {path}: {source}")]
    Link {
        /// The link's path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The TCP listener's address cannot be read.
    #[error("TCP listener: {0}")]
    Tcp(#[source] std::io::Error),
}

/// Configures a [`Modem`]; checked once, in [`start`](Self::start).
#[derive(Debug)]
pub struct ModemBuilder {
    module: Module,
    model: Option<String>,
    imei: String,
    link: Option<PathBuf>,
    tcp: Option<tokio::net::TcpListener>,
    reboot: Duration,
    urc_hold: Duration,
    link_type: Link,
    control: Option<tokio::net::TcpListener>,
}

impl ModemBuilder {
    /// Takes runtime control requests (JSON lines, [`control`]) on this
    /// bound listener: network cut, reboot, URC injection, signal quality,
    /// state.
    pub fn control(mut self, listener: tokio::net::TcpListener) -> Self {
        self.control = Some(listener);
        self
    }

    /// How the host is wired ([`Link::Usb`] by default): whether the port
    /// vanishes on a reboot or stays and goes quiet.
    pub fn link_type(mut self, link: Link) -> Self {
        self.link_type = link;
        self
    }

    /// The model `ATI` and `AT+CGMM` show, any printable name up to
    /// [`MAX_MODEL`] bytes (`EC800K` on an `ec200` module). Default: the
    /// first model of the module's family (`EC25` for `ec2x`).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// The IMEI `AT+GSN`/`AT+CGSN` show (15 digits). Default
    /// [`DEFAULT_IMEI`].
    pub fn imei(mut self, imei: impl Into<String>) -> Self {
        self.imei = imei.into();
        self
    }

    /// Offers the AT port on a pseudo-terminal, with a symlink at `link`
    /// kept pointing at the current `/dev/pts/N` (replaced if it is a
    /// symlink already; removed while the module reboots and at shutdown).
    pub fn pty(mut self, link: impl Into<PathBuf>) -> Self {
        self.link = Some(link.into());
        self
    }

    /// Offers the AT port on TCP, to one host at a time, through this
    /// bound listener (bind `127.0.0.1:0` for any free port).
    pub fn tcp(mut self, listener: tokio::net::TcpListener) -> Self {
        self.tcp = Some(listener);
        self
    }

    /// How long the port is away during a reboot, at least (the simulated
    /// module's own reboot, 20 s × time scale, may be longer). Default
    /// [`DEFAULT_REBOOT`].
    pub fn reboot_time(mut self, time: Duration) -> Self {
        self.reboot = time;
        self
    }

    /// How long unsolicited lines wait for a host to open the port before
    /// they are dropped. Default [`DEFAULT_URC_HOLD`].
    pub fn urc_hold(mut self, time: Duration) -> Self {
        self.urc_hold = time;
        self
    }

    /// Checks the settings, opens the first PTY (and its link) and starts
    /// the modem. Must be called inside a Tokio runtime.
    ///
    /// # Errors
    /// [`ModemError`]: no port, a bad IMEI or model, no PTY, a link that
    /// cannot be made, a listener without an address.
    pub fn start(self) -> Result<Modem, ModemError> {
        if self.link.is_none() && self.tcp.is_none() {
            return Err(ModemError::NoPort);
        }
        if self.imei.len() != 15 || !self.imei.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ModemError::Imei(self.imei));
        }
        let model = match self.model {
            Some(m) if m.is_empty() || m.len() > MAX_MODEL || m.chars().any(char::is_control) => {
                return Err(ModemError::Model(m));
            }
            Some(m) => m,
            None => self
                .module
                .profile()
                .models
                .first()
                .map_or_else(|| "EC25".to_string(), |m| (*m).to_string()),
        };
        let tcp_addr = match &self.tcp {
            Some(listener) => Some(listener.local_addr().map_err(ModemError::Tcp)?),
            None => None,
        };
        let control_addr = match &self.control {
            Some(listener) => Some(listener.local_addr().map_err(ModemError::Tcp)?),
            None => None,
        };
        let (link, first_pty) = match &self.link {
            Some(path) => {
                let pty = Pty::open().map_err(ModemError::Pty)?;
                let link = PtyLink::new(path);
                link.point_to(pty.slave_path())
                    .map_err(|source| ModemError::Link {
                        path: path.clone(),
                        source,
                    })?;
                (Some(link), Some(pty))
            }
            None => (None, None),
        };
        let (status_tx, status) = watch::channel(Status {
            powered: true,
            ..Status::default()
        });
        let cancel = CancellationToken::new();
        let (power_key, power_key_rx) = mpsc::unbounded_channel();
        let control = self.control.map(|listener| {
            let (tx, rx) = mpsc::unbounded_channel();
            control::spawn_listener(listener, tx, cancel.child_token());
            rx
        });
        let session = Session::new(SessionParts {
            module: self.module.clone(),
            model: model.clone(),
            imei: self.imei.clone(),
            link,
            first_pty,
            tcp: self.tcp,
            reboot: self.reboot,
            urc_hold: self.urc_hold,
            link_type: self.link_type,
            power_key: power_key_rx,
            control,
            status: status_tx,
            cancel: cancel.clone(),
        });
        let task = tokio::spawn(session.run());
        Ok(Modem {
            cancel,
            task: Some(task),
            tcp_addr,
            control_addr,
            link: self.link,
            status,
            module: self.module,
            model,
            imei: self.imei,
            power_key,
        })
    }
}

/// A running virtual modem. Dropping it stops it (the link is removed as
/// its task ends); [`shutdown`](Self::shutdown) stops it and waits.
///
/// ```no_run
/// use qfota_serve::modem::Modem;
/// use qfota_serve::profile::Profile;
/// use qfota_serve::sim::Module;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let module = Module::builder(Profile::for_model("EC25")?).version("v12").build()?;
/// let modem = Modem::builder(module)
///     .pty("/tmp/my-modem")
///     .tcp(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
///     .start()?;
/// println!("AT port: /tmp/my-modem and {}", modem.tcp_addr().unwrap());
/// // … the host software under test talks to it …
/// modem.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Modem {
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    tcp_addr: Option<SocketAddr>,
    control_addr: Option<SocketAddr>,
    link: Option<PathBuf>,
    status: watch::Receiver<Status>,
    module: Module,
    model: String,
    imei: String,
    power_key: mpsc::UnboundedSender<()>,
}

impl Modem {
    /// Starts configuring a modem around `module` (its family, version and
    /// faults decide the answers and the FOTA runs).
    pub fn builder(module: Module) -> ModemBuilder {
        ModemBuilder {
            module,
            model: None,
            imei: DEFAULT_IMEI.to_string(),
            link: None,
            tcp: None,
            reboot: DEFAULT_REBOOT,
            urc_hold: DEFAULT_URC_HOLD,
            link_type: Link::Usb,
            control: None,
        }
    }

    /// Presses the power key: a module switched off by `AT+QPOWD` boots
    /// (after the reboot time, `RDY`, [`Status::off`] false); a module that
    /// is on ignores it.
    pub fn power_on(&self) {
        let _ = self.power_key.send(());
    }

    /// The TCP port's address (with the real port when bound to port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The runtime control listener's address ([`ModemBuilder::control`]).
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr
    }

    /// The PTY link hosts open.
    pub fn pty_link(&self) -> Option<&Path> {
        self.link.as_deref()
    }

    /// What the modem is doing now.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver that sees every change of [`Status`] (boots, the PTY
    /// device, the upgrade).
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// The simulated module (its version changes after `END,0`).
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// The model the modem reports.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The IMEI the modem reports.
    pub fn imei(&self) -> &str {
        &self.imei
    }

    /// Stops the modem: ports closed, any FOTA run stopped, link removed.
    /// Waits for its task (a second or so at most).
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Modem {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default IMEI carries a valid Luhn check digit (3GPP TS 23.003
    /// §6.2.1), as host code may verify.
    #[test]
    fn default_imei_has_a_valid_check_digit() {
        let digits: Vec<u32> = DEFAULT_IMEI.bytes().map(|b| u32::from(b - b'0')).collect();
        assert_eq!(digits.len(), 15);
        let sum: u32 = digits
            .iter()
            .rev()
            .enumerate()
            .map(|(i, d)| {
                if i % 2 == 1 {
                    (d * 2) / 10 + (d * 2) % 10
                } else {
                    *d
                }
            })
            .sum();
        assert_eq!(sum % 10, 0);
    }
}

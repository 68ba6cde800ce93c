//! The modem's state machine: one simulated [`Module`], its AT port(s),
//! and a single task that owns both — every byte the host reads is decided
//! here, in order, so responses and URCs never interleave.
//!
//! # What the task reacts to
//!
//! - bytes from a port: to the port's data phase while one is active
//!   ([`crate::modem::data`]: `AT+QFUPL`, `FILE:<length>`), else line
//!   framing and echo ([`crate::modem::at`]), then [`commands`] — except
//!   while the module upgrades, see below;
//! - the running `AT+QFOTADL` ([`FotaRun`]): its answer goes to the port
//!   that sent the command, its URCs to every port a host has open;
//! - power: [`Event::PowerOff`] and `AT+CFUN=1,1` close the ports and, after
//!   the reboot time, open new ones and print `RDY` (with [`Link::Uart`]
//!   the ports stay and go quiet instead); `AT+QPOWD` switches the module
//!   off until [`Modem::power_on`](crate::modem::Modem::power_on);
//! - hosts opening and closing the ports.
//!
//! # Rules (documented in the `modem` module, `mod.rs`)
//!
//! - *Reboot timing.* The port is away for the reboot time (after the PTY
//!   has lingered, see [`port::PTY_LINGER`]), or until the simulated module
//!   has booted (its reboot takes 20 s × time scale), whichever is later.
//!   When the port comes back later than the module booted, the module's
//!   later output is delayed by the difference, so it keeps its own pace.
//! - *No host.* Unsolicited lines (URCs, `RDY`) written while no host has a
//!   port open are held and written to the first host that opens one, if
//!   that happens within the hold time, once that host has settled
//!   (`HOST_SETTLE`, or its first write, or the module going down, which
//!   ends the settling at once), at the pace the module wrote them, and
//!   the module's later output moves by as much as the first came late;
//!   older ones are dropped. Held lines survive
//!   a reboot: at a small time scale a failed upgrade's recovery boots are
//!   shorter than a host takes to reopen the port, and the host must still
//!   read each attempt's `START` … `END` (on a real module each boot lasts
//!   long enough for that).
//! - *Upgrade.* From `START` (or the reboot into recovery mode after
//!   `FTPEND/HTTPEND,0`) until the module goes down to boot normally, the
//!   module runs its recovery image: the port prints URCs only, and what
//!   the host sends is discarded — no echo, no answer.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::modem::at::Input;
use crate::modem::commands::{self, Context, Device, End, Settings};
use crate::modem::control::{self, Envelope, Request};
use crate::modem::data::{self, DataPhase, Upload};
use crate::modem::link::Link;
use crate::modem::port::{self, Channel, ChannelId, PortEvent, PortKind};
use crate::modem::pty::{Pty, PtyLink};
use crate::modem::reply::{self, CmeError, PortSettings};
use crate::modem::status::Status;
use crate::profile::DownloadCodes;
use crate::sim::command::{Scheme, Source};
use crate::sim::{AtResult, DownloadError, Event, FotaRun, FotadlCommand, Module, PowerOff, Urc};
use serde_json::json;

/// How long a host that has just opened a PTY is left before held output
/// (an `RDY` from the reboot it reopened for) is written to it, unless it
/// writes first: pyserial's `open()` flushes the input queue (`tcflush`)
/// right after opening, and lines written in that instant would be lost.
const HOST_SETTLE: Duration = Duration::from_millis(100);

/// Unsolicited chunks held for a host, at most; older ones are dropped.
const MAX_HELD: usize = 512;
/// Lines a port may type while its `AT+QFOTADL` awaits the module's
/// answer; they run once it comes. More are dropped.
const MAX_DEFERRED: usize = 16;
/// How long shutting down waits for a port task to end.
const TASK_END: Duration = Duration::from_secs(1);

/// What the next boot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boot {
    /// Normal mode: `RDY`, `+CFUN: 1`, `+CPIN: READY`; commands work.
    Normal,
    /// Recovery mode (the upgrade): `RDY` only; no commands.
    Recovery,
}

/// Whether the module is up.
#[derive(Debug, Clone, Copy)]
enum Power {
    On,
    /// Switched off by `AT+QPOWD`: nothing happens until powered on.
    Off,
    Down {
        /// Not before this does the port come back.
        boot_at: Instant,
        /// What boots.
        next: Boot,
        /// The simulated module reboots (it says when it is back with
        /// [`Event::Ready`]); otherwise (`AT+CFUN=1,1`) the modem boots by
        /// itself at `boot_at`.
        module_reboot: bool,
    },
}

/// Everything the session is built from.
pub(crate) struct SessionParts {
    pub module: Module,
    pub model: String,
    pub imei: String,
    pub link: Option<PtyLink>,
    pub first_pty: Option<Pty>,
    pub tcp: Option<tokio::net::TcpListener>,
    pub reboot: Duration,
    pub urc_hold: Duration,
    pub link_type: Link,
    pub power_key: mpsc::UnboundedReceiver<()>,
    /// Runtime control requests (`control.rs`), if a listener was asked for.
    pub control: Option<mpsc::UnboundedReceiver<Envelope>>,
    pub status: watch::Sender<Status>,
    pub cancel: CancellationToken,
}

/// What one transport (the PTY, or TCP) keeps between lines.
#[derive(Debug, Default)]
struct PortState {
    /// `ATE`, `ATV`, `AT+CMEE`, …: the saved profile after every boot.
    settings: PortSettings,
    /// The last command line, for `A/`.
    last_line: Option<String>,
}

/// The modem's state, owned by its one task ([`Session::run`]).
pub(crate) struct Session {
    module: Module,
    model: String,
    imei: String,
    settings: Settings,
    link: Option<PtyLink>,
    channels: Vec<Channel>,
    next_id: ChannelId,
    /// Result-code settings and `A/` memory per transport.
    pty_port: PortState,
    tcp_port: PortState,
    link_type: Link,
    /// `Modem::power_on` presses.
    power_key: mpsc::UnboundedReceiver<()>,
    control: Option<mpsc::UnboundedReceiver<Envelope>>,
    /// The last end URC of a FOTA run (`FTPEND`, `HTTPEND`, `FILEEND`,
    /// `END`) and its code, for the control's `state`.
    last_fota: Option<(&'static str, u16)>,
    /// The scheme of the run's download while it is under way (until
    /// `FTPEND`/`HTTPEND`): switching the radio off ends it.
    downloading: Option<Scheme>,
    events_tx: mpsc::UnboundedSender<PortEvent>,
    events_rx: mpsc::UnboundedReceiver<PortEvent>,
    accept: Option<JoinHandle<()>>,
    run: Option<FotaRun>,
    /// The port whose `AT+QFOTADL` awaits the module's `OK`/`ERROR`.
    origin: Option<ChannelId>,
    /// Its lines typed meanwhile.
    deferred: VecDeque<Input>,
    /// The module's events, each due at its arrival plus `shift`.
    pending: VecDeque<(Instant, Event)>,
    shift: Duration,
    recovery: bool,
    power: Power,
    held: VecDeque<(Instant, Vec<String>)>,
    /// Held output on its way to the host that opened a port for it, each
    /// chunk due at the pace the module wrote it (and what the module
    /// writes meanwhile queued behind it).
    replay: VecDeque<(Instant, ChannelId, Vec<String>)>,
    reboot: Duration,
    urc_hold: Duration,
    status: watch::Sender<Status>,
    cancel: CancellationToken,
}

/// The next event of the run, or never when there is none.
async fn next_event(run: &mut Option<FotaRun>) -> Option<Event> {
    match run {
        Some(run) => run.next().await,
        None => std::future::pending().await,
    }
}

/// The next control request, or never when there is no listener.
async fn next_control(control: &mut Option<mpsc::UnboundedReceiver<Envelope>>) -> Option<Envelope> {
    match control {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Session {
    /// The session over `parts`; spawns the TCP accept loop and the first
    /// PTY's task (so it needs a Tokio runtime).
    pub(crate) fn new(parts: SessionParts) -> Session {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let accept = parts
            .tcp
            .map(|l| port::spawn_accept(l, events_tx.clone(), parts.cancel.child_token()));
        // The module's configured contexts and FOTA context
        // (`--active-cid`, `--fota-cid`), as the AT port shows them.
        let settings = Settings {
            active: parts.module.boot_contexts(),
            fota_cid: parts.module.fota_cid(),
            ..Settings::default()
        };
        let mut session = Session {
            module: parts.module,
            model: parts.model,
            imei: parts.imei,
            settings,
            link: parts.link,
            channels: Vec::new(),
            next_id: 0,
            pty_port: PortState::default(),
            tcp_port: PortState::default(),
            link_type: parts.link_type,
            power_key: parts.power_key,
            control: parts.control,
            last_fota: None,
            downloading: None,
            events_tx,
            events_rx,
            accept,
            run: None,
            origin: None,
            deferred: VecDeque::new(),
            pending: VecDeque::new(),
            shift: Duration::ZERO,
            recovery: false,
            power: Power::On,
            held: VecDeque::new(),
            replay: VecDeque::new(),
            reboot: parts.reboot,
            urc_hold: parts.urc_hold,
            status: parts.status,
            cancel: parts.cancel,
        };
        if session.link_type == Link::Uart {
            // Wired to a UART, the module reports URCs there.
            session.settings.urc_port = "uart1".to_string();
        }
        // The module was already running when the modem started: its port
        // is there, and no RDY is printed until its first reboot.
        if let Some(pty) = parts.first_pty {
            session.attach_pty(pty);
        }
        session.publish(|_| {});
        session
    }

    /// Runs until cancelled; then closes the ports and removes the link.
    pub(crate) async fn run(mut self) {
        loop {
            self.expire_uploads();
            self.settle_due();
            self.advance();
            self.replay_due();
            let wake = self.next_wake();
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(event) = self.events_rx.recv() => self.on_port(event),
                Some(()) = self.power_key.recv() => self.power_on(),
                Some(envelope) = next_control(&mut self.control) => self.on_control(envelope),
                event = next_event(&mut self.run) => match event {
                    Some(event) => self.pending.push_back((Instant::now() + self.shift, event)),
                    None => self.run = None,
                },
                _ = sleep_until(wake) => {}
            }
        }
        self.run = None;
        let mut tasks: Vec<JoinHandle<()>> = self.channels.drain(..).map(Channel::abort).collect();
        tasks.extend(self.accept.take());
        for task in tasks {
            let _ = tokio::time::timeout(TASK_END, task).await;
        }
        if let Some(link) = self.link.take()
            && let Err(error) = link.remove()
        {
            tracing::warn!(link = %link.path().display(), %error, "cannot remove the PTY link");
        }
        self.publish(|s| {
            s.powered = false;
            s.pty = None;
        });
    }

    fn publish(&self, change: impl FnOnce(&mut Status)) {
        self.status.send_modify(|s| {
            change(s);
            s.upgrading = self.recovery;
            s.off = matches!(self.power, Power::Off);
        });
    }

    fn port_state(&mut self, kind: PortKind) -> &mut PortState {
        match kind {
            PortKind::Pty => &mut self.pty_port,
            PortKind::Tcp => &mut self.tcp_port,
        }
    }

    fn port_settings(&self, kind: PortKind) -> &PortSettings {
        match kind {
            PortKind::Pty => &self.pty_port.settings,
            PortKind::Tcp => &self.tcp_port.settings,
        }
    }

    fn fota_active(&self) -> bool {
        self.run.is_some() || !self.pending.is_empty()
    }

    fn channel(&self, id: ChannelId) -> Option<&Channel> {
        self.channels.iter().find(|c| c.id == id)
    }

    fn send_to(&self, id: ChannelId, bytes: Vec<u8>) {
        if let Some(channel) = self.channel(id) {
            channel.send(Bytes::from(bytes));
        }
    }

    // ---- time: the module's events and reboots -------------------------

    /// Delivers the module's events that are due, and boots when it is
    /// time.
    fn advance(&mut self) {
        loop {
            let now = Instant::now();
            if let Power::Down {
                boot_at,
                next,
                module_reboot: false,
            } = self.power
                && now >= boot_at
            {
                self.boot(next);
                continue;
            }
            let Some((due, event)) = self.pending.front() else {
                break;
            };
            if *due > now {
                break;
            }
            if *event == Event::Ready
                && let Power::Down { boot_at, .. } = self.power
            {
                if now < boot_at {
                    break;
                }
                // The port came back later than the module booted: what
                // the module says next moves by as much.
                let late = now.saturating_duration_since(*due);
                self.shift += late;
                for (due, _) in self.pending.iter_mut().skip(1) {
                    *due += late;
                }
            }
            if let Some((_, event)) = self.pending.pop_front() {
                self.deliver(event);
            }
        }
        if !self.fota_active() {
            self.shift = Duration::ZERO;
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let upload = self
            .channels
            .iter()
            .filter_map(|c| c.data.as_ref().and_then(DataPhase::deadline))
            .min();
        let module = self.next_module_wake();
        let settle = self.channels.iter().filter_map(|c| c.settling_until).min();
        let replay = self.replay.front().map(|(due, _, _)| *due);
        [upload, module, settle, replay].into_iter().flatten().min()
    }

    fn next_module_wake(&self) -> Option<Instant> {
        let own_boot = match self.power {
            Power::Down {
                boot_at,
                module_reboot: false,
                ..
            } => Some(boot_at),
            _ => None,
        };
        let event = self.pending.front().map(|(due, event)| match self.power {
            Power::Down { boot_at, .. } if *event == Event::Ready => (*due).max(boot_at),
            _ => *due,
        });
        match (own_boot, event) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn deliver(&mut self, event: Event) {
        match event {
            Event::Response(result) => {
                if result == AtResult::Error {
                    self.downloading = None;
                }
                if let Some(id) = self.origin.take() {
                    // The simulator refuses a command it cannot parse.
                    match result {
                        AtResult::Ok => self.send_result(id, Ok(())),
                        AtResult::Error => self.send_result(id, Err(CmeError::IncorrectParameters)),
                        // `FILE:<length>,2`: the module's protocol-mode
                        // answer, not simulated further (seed 001 §3.2.1.4).
                        AtResult::ProtocolMode => {
                            self.send_to(id, format!("\r\n{result}\r\n").into_bytes());
                        }
                    }
                    self.replay_deferred(id);
                }
                self.publish(|_| {});
            }
            Event::Urc(urc) => {
                self.note_end(&urc);
                if matches!(urc, Urc::FtpEnd(_) | Urc::HttpEnd(_)) {
                    self.downloading = None;
                }
                if matches!(urc, Urc::FileEnd(_)) {
                    // The module reads no more package bytes: what the
                    // host sends next is command-line input again.
                    self.end_file_phases();
                }
                if urc == Urc::Start {
                    self.recovery = true;
                    self.publish(|_| {});
                }
                self.unsolicited(&[urc.to_string()]);
            }
            Event::PowerOff(why) => {
                let next = match why {
                    PowerOff::RebootToNormal | PowerOff::DownloadPowerCut => Boot::Normal,
                    PowerOff::RebootToUpgrade | PowerOff::RebootToRetry | PowerOff::PowerCut => {
                        Boot::Recovery
                    }
                };
                tracing::info!(?why, "module goes down");
                self.power_off(next, true);
            }
            Event::Ready => match self.power {
                Power::Down { next, .. } => self.boot(next),
                Power::On => self.unsolicited(&["RDY".to_string()]),
                Power::Off => {}
            },
        }
    }

    /// The module goes down: the ports close (what is queued is still
    /// written), the link goes away; output no host has seen stays held.
    fn power_off(&mut self, next: Boot, module_reboot: bool) {
        // A host that has opened a port but is still settling gets what is
        // held now, before the port goes: on a short boot (a failed
        // upgrade's recovery boot, at a small time scale) the module can
        // go down again before the host settles, and its `START` … `END`
        // lines would never reach anyone.
        let settling: Vec<ChannelId> = self
            .channels
            .iter()
            .filter(|c| c.attached && c.settling_until.is_some())
            .map(|c| c.id)
            .collect();
        for id in settling {
            self.settle(id);
        }
        // What no host has seen yet stays held for the next one (within
        // the hold time): a host that reopens the port only after several
        // short boots still reads every attempt's `START` … `END`.
        self.origin = None;
        self.deferred.clear();
        // A data phase does not survive the module going down.
        for channel in &mut self.channels {
            channel.data = None;
        }
        if self.link_type == Link::Usb {
            for channel in self.channels.drain(..) {
                channel.close();
            }
            if let Some(link) = &self.link
                && let Err(error) = link.remove()
            {
                tracing::warn!(link = %link.path().display(), %error, "cannot remove the PTY link");
            }
        }
        // A PTY stays open a moment for the host to read the last lines;
        // the reboot counts from when it is gone, so that a new port never
        // appears before the old one has vanished. A UART stays: nothing
        // to wait for.
        let linger = if self.link.is_some() && self.link_type == Link::Usb {
            port::PTY_LINGER
        } else {
            Duration::ZERO
        };
        self.power = Power::Down {
            boot_at: Instant::now()
                .checked_add(linger.saturating_add(self.reboot))
                .unwrap_or_else(far_future),
            next,
            module_reboot,
        };
        let uart = self.link_type == Link::Uart;
        self.publish(|s| {
            s.powered = false;
            if !uart {
                s.pty = None;
            }
        });
    }

    /// `AT+QPOWD`: down like a reboot, but nothing brings the module back
    /// until [`Session::power_on`].
    fn switch_off(&mut self) {
        self.end_run();
        self.power_off(Boot::Normal, false);
        self.power = Power::Off;
        self.publish(|_| {});
        tracing::info!("AT+QPOWD: module switched off");
    }

    /// The power key: a module switched off boots (after the reboot time);
    /// otherwise nothing happens.
    fn power_on(&mut self) {
        if !matches!(self.power, Power::Off) {
            tracing::info!("power on: the module is not off; ignored");
            return;
        }
        tracing::info!("power on");
        self.power = Power::Down {
            boot_at: Instant::now()
                .checked_add(self.reboot)
                .unwrap_or_else(far_future),
            next: Boot::Normal,
            module_reboot: false,
        };
        self.publish(|_| {});
    }

    /// Ends the FOTA run, whatever it was doing.
    fn end_run(&mut self) {
        self.end_file_phases();
        self.run = None;
        self.pending.clear();
        self.recovery = false;
        self.downloading = None;
    }

    /// The module is up again: new ports (not on a UART), the saved port
    /// settings, `RDY`.
    fn boot(&mut self, next: Boot) {
        self.power = Power::On;
        self.recovery = next == Boot::Recovery;
        for port in [&mut self.pty_port, &mut self.tcp_port] {
            *port = PortState {
                settings: self.settings.profile,
                last_line: None,
            };
        }
        self.settings.reset_on_boot();
        self.settings.active = self.module.boot_contexts();
        if self.link_type == Link::Uart {
            // The same line: a half-typed command is gone with the boot.
            for channel in &mut self.channels {
                channel.framer = Default::default();
            }
        } else if self.link.is_some() {
            match Pty::open() {
                Ok(pty) => self.attach_pty(pty),
                Err(error) => tracing::error!(%error, "cannot open a new PTY after reboot"),
            }
        }
        self.publish(|s| {
            s.powered = true;
            s.boots += 1;
        });
        tracing::info!(recovery = self.recovery, "module booted");
        let mut lines = vec!["RDY".to_string()];
        if next == Boot::Normal {
            lines.push("+CFUN: 1".to_string());
            lines.push("+CPIN: READY".to_string());
        }
        self.unsolicited(&lines);
    }

    fn attach_pty(&mut self, pty: Pty) {
        let slave = pty.slave_path().to_path_buf();
        if let Some(link) = &self.link
            && let Err(error) = link.point_to(&slave)
        {
            tracing::error!(link = %link.path().display(), %error, "cannot point the PTY link");
        }
        let id = self.new_id();
        let channel = port::spawn_pty(id, pty, self.events_tx.clone(), self.cancel.child_token());
        self.channels.push(channel);
        self.publish(|s| s.pty = Some(slave));
    }

    fn new_id(&mut self) -> ChannelId {
        self.next_id += 1;
        self.next_id
    }

    // ---- output nobody asked for ----------------------------------------

    /// Writes unsolicited lines to every port a host has open, or holds
    /// them for the next host.
    fn unsolicited(&mut self, lines: &[String]) {
        if !matches!(self.power, Power::On) {
            return;
        }
        let mut written = false;
        // A settling host gets these with what is held, once it settles.
        let settling = self.channels.iter().any(|c| c.settling_until.is_some());
        let now = Instant::now();
        let behind = self.replay.back().map(|(due, _, _)| (*due).max(now));
        for channel in self
            .channels
            .iter()
            .filter(|c| c.attached && c.settling_until.is_none())
        {
            match behind {
                // After what is still being replayed to the hosts.
                Some(due) => self.replay.push_back((due, channel.id, lines.to_vec())),
                None => {
                    let bytes = reply::unsolicited(lines, self.port_settings(channel.kind));
                    channel.send(Bytes::from(bytes));
                }
            }
            written = true;
        }
        if !written || settling {
            let now = Instant::now();
            while self
                .held
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > self.urc_hold)
                || self.held.len() >= MAX_HELD
            {
                self.held.pop_front();
            }
            self.held.push_back((now, lines.to_vec()));
        }
    }

    /// Ends port `id`'s settling time, if it has one: it gets what was
    /// held.
    fn settle(&mut self, id: ChannelId) {
        let Some(channel) = self.channels.iter_mut().find(|c| c.id == id) else {
            return;
        };
        if channel.settling_until.take().is_some() {
            self.flush_held(id);
        }
    }

    /// Ports whose settling time is over get what was held.
    fn settle_due(&mut self) {
        let now = Instant::now();
        let due: Vec<ChannelId> = self
            .channels
            .iter()
            .filter(|c| c.settling_until.is_some_and(|t| t <= now))
            .map(|c| c.id)
            .collect();
        for id in due {
            self.settle(id);
        }
    }

    /// A host has opened a port: it gets what was held for it, if recent,
    /// at the pace the module wrote it — the first chunk now, each next one
    /// as long after it as it came after the one before (a host reading
    /// once every 100 ms sees `START` and `END` apart, as from a module
    /// it had not missed) — and what the module says next comes that much
    /// later too.
    fn flush_held(&mut self, id: ChannelId) {
        let now = Instant::now();
        let held: Vec<(Instant, Vec<String>)> = self
            .held
            .drain(..)
            .filter(|(at, _)| now.duration_since(*at) <= self.urc_hold)
            .collect();
        let Some(first) = held.first().map(|(at, _)| *at) else {
            return;
        };
        if self.channel(id).is_none() {
            return;
        }
        let late = now.saturating_duration_since(first);
        if self.fota_active() {
            self.shift += late;
            for (due, _) in &mut self.pending {
                *due += late;
            }
        }
        for (at, lines) in held {
            let due = now + at.saturating_duration_since(first);
            self.replay.push_back((due, id, lines));
        }
        self.replay_due();
    }

    /// Writes the replayed chunks that are due to their ports. A port that
    /// is gone or no longer open (the module went down meanwhile, the host
    /// closed it) gets nothing more: what it has not been written is held
    /// again, in order, for the next host.
    fn replay_due(&mut self) {
        let now = Instant::now();
        while let Some((due, id, _)) = self.replay.front() {
            let open = self
                .channel(*id)
                .is_some_and(|c| c.attached && c.settling_until.is_none());
            if !open {
                let gone = *id;
                let (back, keep): (Vec<_>, Vec<_>) =
                    self.replay.drain(..).partition(|(_, id, _)| *id == gone);
                self.replay = keep.into();
                for (_, _, lines) in back.into_iter().rev() {
                    self.held.push_front((now, lines));
                }
                continue;
            }
            if *due > now {
                break;
            }
            let Some((_, id, lines)) = self.replay.pop_front() else {
                break;
            };
            if let Some(channel) = self.channel(id) {
                let port = self.port_settings(channel.kind);
                channel.send(Bytes::from(reply::unsolicited(&lines, port)));
            }
        }
    }

    // ---- the ports --------------------------------------------------------

    fn on_port(&mut self, event: PortEvent) {
        match event {
            PortEvent::Attached(id) => {
                if let Some(channel) = self.channels.iter_mut().find(|c| c.id == id) {
                    channel.attached = true;
                    channel.settling_until = Some(Instant::now() + HOST_SETTLE);
                    crate::conn_log!(info, port = id, "host opened the PTY");
                }
            }
            PortEvent::Detached(id) => {
                if self.origin == Some(id) {
                    self.origin = None;
                    self.deferred.clear();
                }
                let Some(index) = self.channels.iter().position(|c| c.id == id) else {
                    return;
                };
                match self.channels[index].kind {
                    PortKind::Pty => {
                        crate::conn_log!(info, port = id, "host closed the PTY");
                        let channel = &mut self.channels[index];
                        channel.attached = false;
                        // A half-typed line, or an upload under way, does
                        // not carry over to the next host: nothing of it
                        // is stored. (A close the port's poll does not see
                        // — the next host opened within `DATA_POLL` — is no
                        // close here, as a module sees none without DTR.)
                        channel.framer = Default::default();
                        channel.data = None;
                    }
                    PortKind::Tcp => {
                        crate::conn_log!(info, port = id, "TCP host disconnected");
                        self.channels.remove(index).close();
                    }
                }
            }
            PortEvent::Input(id, bytes) => {
                // A host that writes is past its open(): what was held
                // comes first.
                self.settle(id);
                self.on_input(id, &bytes);
            }
            PortEvent::Connection(stream, peer, again) => self.on_connection(stream, peer, again),
        }
    }

    fn on_connection(&mut self, stream: TcpStream, peer: std::net::SocketAddr, again: bool) {
        if !matches!(self.power, Power::On) && self.link_type == Link::Usb {
            // No port while the module is down: the connection just closes.
            crate::conn_log!(info, %peer, "TCP host refused: module is rebooting");
            drop(stream);
            return;
        }
        if self.channels.iter().any(|c| c.kind == PortKind::Tcp) {
            if again {
                port::refuse_busy(stream, peer);
            } else {
                port::offer_again(
                    stream,
                    peer,
                    self.events_tx.clone(),
                    self.cancel.child_token(),
                );
            }
            return;
        }
        crate::conn_log!(info, %peer, "TCP host connected");
        let id = self.new_id();
        let channel = port::spawn_tcp(
            id,
            stream,
            self.events_tx.clone(),
            self.cancel.child_token(),
        );
        self.channels.push(channel);
        self.flush_held(id);
    }

    /// Input from port `id`: to its data phase while one is active, else
    /// command lines.
    fn on_input(&mut self, id: ChannelId, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.channel(id).is_some_and(|c| c.data.is_some()) {
                // Takes all of `rest`, or ends the phase.
                let taken = self.feed_data(id, rest);
                rest = &rest[taken..];
                continue;
            }
            if self.recovery || !matches!(self.power, Power::On) {
                // The recovery image has no AT parser.
                return;
            }
            // One line at a time, so that `ATE0` stops the echo of what
            // follows it in the same chunk, and a data phase that a line
            // starts gets the bytes after it.
            let end = rest
                .iter()
                .position(|b| *b == b'\r' || *b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            let (piece, tail) = rest.split_at(end);
            rest = tail;
            self.on_line_input(id, piece);
            // The `\n` of the `\r\n` that ended a line starting a data
            // phase (fwupd ends `AT+QFUPL=…` so) is not data, when it
            // arrives with the line.
            if piece.ends_with(b"\r")
                && rest.first() == Some(&b'\n')
                && self.channel(id).is_some_and(|c| c.data.is_some())
            {
                rest = &rest[1..];
            }
        }
    }

    /// A piece of command-line input (at most one line terminator, at its
    /// end) from port `id`.
    fn on_line_input(&mut self, id: ChannelId, piece: &[u8]) {
        let Some(channel) = self.channels.iter_mut().find(|c| c.id == id) else {
            return;
        };
        let kind = channel.kind;
        let (inputs, echo) = channel.framer.push(piece);
        if self.port_settings(kind).echo && !echo.is_empty() {
            self.send_to(id, echo);
        }
        for input in inputs {
            if self.origin == Some(id) {
                if self.deferred.len() < MAX_DEFERRED {
                    self.deferred.push_back(input);
                }
            } else {
                self.execute(id, input);
            }
        }
    }

    /// Hands `chunk` to port `id`'s data phase; returns how many bytes it
    /// took. Takes all of `chunk` or ends the phase.
    fn feed_data(&mut self, id: ChannelId, chunk: &[u8]) -> usize {
        let Some(channel) = self.channels.iter_mut().find(|c| c.id == id) else {
            return chunk.len();
        };
        let Some(phase) = channel.data.as_mut() else {
            return 0;
        };
        let taken = phase.push(chunk, Instant::now());
        if taken.acks > 0 {
            let acks = usize::try_from(taken.acks).unwrap_or(usize::MAX);
            channel.send(Bytes::from(vec![data::ACK; acks]));
        }
        if taken.complete || taken.bytes < chunk.len() {
            let phase = channel.data.take();
            self.end_phase(id, phase);
        }
        taken.bytes
    }

    /// A data phase is over: an upload is stored and answered
    /// (`+QFUPL: <upload_size>,<checksum>` and `OK`, or `+CME ERROR`).
    fn end_phase(&mut self, id: ChannelId, phase: Option<DataPhase>) {
        let Some(DataPhase::Upload(upload)) = phase else {
            return;
        };
        let Some(kind) = self.channel(id).map(|c| c.kind) else {
            return;
        };
        let port = *self.port_settings(kind);
        match upload.finish(self.module.ufs()) {
            Ok(stored) => {
                tracing::info!(port = id, bytes = stored.size, "AT+QFUPL: file stored");
                // The checksum in hex: fwupd's DFOTA plugin parses it so.
                let line = format!("+QFUPL: {},{:x}", stored.size, stored.checksum);
                // With its OK in the same write: fwupd reads both at once.
                let answer = [
                    reply::info(&[vec![line]], &port),
                    reply::result(Ok(()), &port),
                ];
                self.send_to(id, answer.concat());
            }
            Err(error) => {
                tracing::info!(port = id, %error, "AT+QFUPL failed");
                self.send_to(id, reply::result(Err(CmeError::File(error.code())), &port));
            }
        }
    }

    /// Uploads whose `<timeout>` passed without data end (SPEC §9).
    fn expire_uploads(&mut self) {
        let now = Instant::now();
        let expired: Vec<ChannelId> = self
            .channels
            .iter()
            .filter(|c| {
                c.data
                    .as_ref()
                    .and_then(DataPhase::deadline)
                    .is_some_and(|d| d <= now)
            })
            .map(|c| c.id)
            .collect();
        for id in expired {
            let phase = self
                .channels
                .iter_mut()
                .find(|c| c.id == id)
                .and_then(|c| c.data.take());
            self.end_phase(id, phase);
        }
    }

    /// The `FILE:<length>` transfer is over: its ports take command lines
    /// again.
    fn end_file_phases(&mut self) {
        for channel in &mut self.channels {
            if matches!(channel.data, Some(DataPhase::File(_))) {
                channel.data = None;
            }
        }
    }

    fn replay_deferred(&mut self, id: ChannelId) {
        while self.origin.is_none()
            && let Some(input) = self.deferred.pop_front()
        {
            self.execute(id, input);
        }
    }

    fn send_result(&self, id: ChannelId, outcome: Result<(), CmeError>) {
        if let Some(kind) = self.channel(id).map(|c| c.kind) {
            self.send_to(id, reply::result(outcome, self.port_settings(kind)));
        }
    }

    /// Runs one line from port `id`: parse, run, answer, then what the
    /// line set in motion (reboot, power down, a download, registration
    /// URCs).
    fn execute(&mut self, id: ChannelId, input: Input) {
        let Some(kind) = self.channel(id).map(|c| c.kind) else {
            return;
        };
        let line = match input {
            Input::Overflow => return self.send_result(id, Err(CmeError::Unknown)),
            Input::Repeat => match self.port_state(kind).last_line.clone() {
                Some(line) => line,
                None => return,
            },
            Input::Line(line) => line,
        };
        let commands = match commands::parse(&line) {
            Ok(None) => return,
            Ok(Some(commands)) => {
                if let Some(error) = &commands.failed {
                    tracing::debug!(port = id, %error, "command refused");
                }
                commands
            }
            Err(error) => {
                tracing::debug!(port = id, %error, "command refused");
                self.port_state(kind).last_line = Some(line);
                return self.send_result(id, Err(error.cme()));
            }
        };
        self.port_state(kind).last_line = Some(line);
        let device = Device {
            module: &self.module,
            model: &self.model,
            imei: &self.imei,
        };
        let stat_before = device.reg_stat(&self.settings);
        let port = match kind {
            PortKind::Pty => &mut self.pty_port.settings,
            PortKind::Tcp => &mut self.tcp_port.settings,
        };
        let outcome = commands::run_line(
            commands,
            &mut Context {
                settings: &mut self.settings,
                port,
                device,
            },
        );
        let stat_after = device.reg_stat(&self.settings);
        let port = *self.port_settings(kind);
        // A command's answer and its final result code go out in one
        // write, as a module's port delivers them: a host that takes one
        // read per command (fwupd's upload check) sees both.
        let info = reply::info(&outcome.info, &port);
        match outcome.end {
            End::Result(result) => self.send_to(id, [info, reply::result(result, &port)].concat()),
            End::Reboot => {
                self.send_to(id, [info, reply::result(Ok(()), &port)].concat());
                tracing::info!(port = id, "AT+CFUN=<fun>,1: rebooting");
                // A reboot ends whatever the module was doing.
                self.end_run();
                self.power_off(Boot::Normal, false);
                return;
            }
            End::PowerDown => {
                self.send_to(id, [info, reply::result(Ok(()), &port)].concat());
                self.unsolicited(&["POWERED DOWN".to_string()]);
                self.switch_off();
                return;
            }
            End::Fotadl(args) => {
                if !info.is_empty() {
                    self.send_to(id, info);
                }
                self.fotadl(id, &args);
            }
            End::Upload(request) => {
                self.send_to(id, [info, reply::connect(&port)].concat());
                let upload = Upload::new(
                    request.name,
                    request.size,
                    request.timeout,
                    request.ack,
                    Instant::now(),
                );
                if let Some(channel) = self.channels.iter_mut().find(|c| c.id == id) {
                    channel.data = Some(DataPhase::Upload(upload));
                }
                return;
            }
        }
        let urcs = commands::registration_urcs(&self.settings, stat_before, stat_after);
        if !urcs.is_empty() {
            self.unsolicited(&urcs);
        }
        // Detached (`AT+CGATT=0`), or the FOTA context deactivated
        // (`AT+CGACT=0`, `AT+QIDEACT`): the download has no bearer either.
        if !self.settings.network_reachable()
            || !self.settings.active.contains(&self.settings.fota_cid)
        {
            self.no_network_ends_download();
        }
    }

    /// Hands the module the contexts the AT port activated (`AT+QIACT`)
    /// and the one FOTA uses (`AT+QFOTA="fota/cid"`), so a download over a
    /// context that is not active fails with the family's network error
    /// (seed `001_2f648264def3e0b1.txt` §3.2.1.1).
    fn sync_contexts(&self) {
        for cid in 1..=commands::MAX_CID {
            let _ = self
                .module
                .set_context_active(cid, self.settings.active.contains(&cid));
        }
        let _ = self.module.set_fota_cid(self.settings.fota_cid);
    }

    /// `AT+QFOTADL=<args>` from port `id`: to the simulated module, which
    /// answers later, unless a run is under way or the radio is off.
    fn fotadl(&mut self, id: ChannelId, args: &str) {
        if self.fota_active() {
            return self.fotadl_busy(id, args);
        }
        let profile = self.module.profile();
        let command = FotadlCommand::parse(args, profile).ok();
        let scheme = command.as_ref().and_then(|c| match &c.source {
            Source::Url(url) => Some(url.scheme),
            _ => None,
        });
        // A local-file FOTA needs no network: only downloads fail with the
        // radio off.
        let needs_network = command.is_none() || scheme.is_some();
        if !self.settings.network_reachable() && needs_network {
            // The simulated module has no run-time radio switch: the modem
            // answers for it, as the module does under fault
            // `network-down`.
            let Some(scheme) = scheme else {
                return self.send_result(id, Err(CmeError::IncorrectParameters));
            };
            self.send_result(id, Ok(()));
            self.download_failed(scheme);
            return;
        }
        self.sync_contexts();
        let mut run = self.module.fotadl(args);
        if let Some(sender) = run.file_input()
            && let Some(channel) = self.channels.iter_mut().find(|c| c.id == id)
        {
            // `ec200`'s `FILE:<length>`: the package comes over this port.
            channel.data = Some(DataPhase::File(sender));
        }
        self.run = Some(run);
        self.downloading = scheme;
        self.origin = Some(id);
        self.publish(|_| {});
    }

    /// `AT+QFOTADL=<args>` from port `id` while a run is under way:
    /// `ERROR`, except on `ec200` for a URL while a download runs — `OK`,
    /// then that download's end with the busy code: 603 / 703, or 603 /
    /// 704 while the running one takes its package over the AT port
    /// (`FILE:`; seed `001_2f648264def3e0b1.txt` tables 2 and 3).
    fn fotadl_busy(&mut self, id: ChannelId, args: &str) {
        let profile = self.module.profile();
        let scheme = FotadlCommand::parse(args, profile)
            .ok()
            .and_then(|c| match c.source {
                Source::Url(url) => Some(url.scheme),
                _ => None,
            });
        let uart = self
            .channels
            .iter()
            .any(|c| matches!(c.data, Some(DataPhase::File(_))));
        let downloading = self.downloading.is_some() || uart;
        match scheme {
            Some(scheme) if profile.download_codes == DownloadCodes::Detailed && downloading => {
                let code = DownloadError::Busy { uart }.code(scheme, DownloadCodes::Detailed);
                let end = if scheme.is_ftp() {
                    Urc::FtpEnd(code)
                } else {
                    Urc::HttpEnd(code)
                };
                self.send_result(id, Ok(()));
                self.unsolicited(&[end.to_string()]);
            }
            _ => self.send_result(id, Err(CmeError::NotAllowed)),
        }
    }

    /// The start and end URCs of a download that finds no network (the
    /// family's code: 605/707 on `ec200`, 601/701 elsewhere).
    fn no_network(&self, scheme: Scheme) -> (Urc, Urc) {
        let code = DownloadError::NetworkDown.code(scheme, self.module.profile().download_codes);
        if scheme.is_ftp() {
            (Urc::FtpStart, Urc::FtpEnd(code))
        } else {
            (Urc::HttpStart, Urc::HttpEnd(code))
        }
    }

    fn download_failed(&mut self, scheme: Scheme) {
        let (start, end) = self.no_network(scheme);
        self.note_end(&end);
        self.unsolicited(&[start.to_string(), end.to_string()]);
    }

    /// Remembers the end URC of a FOTA run for the control's `state`.
    fn note_end(&mut self, urc: &Urc) {
        self.last_fota = match *urc {
            Urc::FtpEnd(code) => Some(("FTPEND", code)),
            Urc::HttpEnd(code) => Some(("HTTPEND", code)),
            Urc::FileEnd(code) => Some(("FILEEND", code)),
            Urc::End(code) => Some(("END", code)),
            _ => return,
        };
    }

    /// The radio went off or the network was cut: a download under way
    /// (answered, not yet ended) ends with the family's no-network code;
    /// the module stays up.
    fn no_network_ends_download(&mut self) {
        if self.run.is_none() || self.origin.is_some() {
            return;
        }
        let Some(scheme) = self.downloading else {
            return;
        };
        tracing::info!("no network: the download ends");
        self.end_run();
        let (_, end) = self.no_network(scheme);
        self.note_end(&end);
        self.unsolicited(&[end.to_string()]);
        self.publish(|_| {});
    }
}

impl Session {
    // ---- runtime control (`control.rs`) --------------------------------

    fn on_control(&mut self, envelope: Envelope) {
        tracing::info!(request = ?envelope.request, "control request");
        let ok = json!({"ok": true});
        let answer = match envelope.request {
            Request::Fault { set, .. } => {
                self.cut_network(set.is_some());
                ok
            }
            Request::Reboot {} if self.recovery => control::refused(
                "the module is upgrading: a reboot now is a power cut (--fault power-cut=P)",
            ),
            Request::Reboot {} if !matches!(self.power, Power::On) => {
                control::refused("the module is not on")
            }
            Request::Reboot {} => {
                self.end_run();
                self.power_off(Boot::Normal, false);
                ok
            }
            Request::Urc { line } => {
                self.unsolicited(&[line]);
                ok
            }
            Request::Signal { csq } => {
                self.settings.csq = csq;
                ok
            }
            Request::State {} => self.state(),
        };
        let _ = envelope.answer.send(answer);
    }

    /// Cuts the network (`down`) or brings it back: registration URCs as
    /// for `AT+CFUN`, and a download under way ends.
    fn cut_network(&mut self, down: bool) {
        let device = Device {
            module: &self.module,
            model: &self.model,
            imei: &self.imei,
        };
        let before = device.reg_stat(&self.settings);
        self.settings.network_cut = down;
        let after = device.reg_stat(&self.settings);
        let urcs = commands::registration_urcs(&self.settings, before, after);
        if !urcs.is_empty() {
            self.unsolicited(&urcs);
        }
        if down {
            self.no_network_ends_download();
        }
    }

    /// The control's `state` answer.
    fn state(&self) -> serde_json::Value {
        let files: Vec<serde_json::Value> = self
            .module
            .ufs()
            .list("*")
            .unwrap_or_default()
            .into_iter()
            .map(|f| json!({"name": f.name, "size": f.size}))
            .collect();
        let status = self.status.borrow();
        json!({
            "ok": true,
            "version": self.module.version(),
            "model": self.model,
            "profile": self.module.profile().name,
            "powered": status.powered,
            "upgrading": self.recovery,
            "network_down": self.settings.network_cut,
            "csq": self.settings.csq,
            "files": files,
            "last_fota": self.last_fota.map(|(urc, code)| json!({"urc": urc, "code": code})),
        })
    }
}

/// A boot time for a reboot delay too long to represent: a century ahead.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

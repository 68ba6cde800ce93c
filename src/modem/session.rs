//! The modem's state machine: one simulated [`Module`], its AT port(s),
//! and a single task that owns both — every byte the host reads is decided
//! here, in order, so responses and URCs never interleave.
//!
//! # What the task reacts to
//!
//! - bytes from a port: line framing and echo ([`crate::modem::at`]), then
//!   [`commands`] — except while the module upgrades, see below;
//! - the running `AT+QFOTADL` ([`FotaRun`]): its answer goes to the port
//!   that sent the command, its URCs to every port a host has open;
//! - power: [`Event::PowerOff`] and `AT+CFUN=1,1` close the ports and, after
//!   the reboot time, open new ones and print `RDY`;
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
//!   that happens within the hold time; older ones are dropped. A reboot
//!   drops everything held (a real module's output buffer does not survive
//!   it).
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

use crate::modem::at::{Input, frame};
use crate::modem::commands::{self, Device, Outcome, Reply, Settings};
use crate::modem::port::{self, Channel, ChannelId, PortEvent, PortKind};
use crate::modem::pty::{Pty, PtyLink};
use crate::modem::status::Status;
use crate::sim::{Event, FotaRun, Module, PowerOff, Urc};

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
    pub status: watch::Sender<Status>,
    pub cancel: CancellationToken,
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
    /// Echo per transport (`ATE`), on after every boot.
    echo_pty: bool,
    echo_tcp: bool,
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
    held: VecDeque<(Instant, Bytes)>,
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
        let mut session = Session {
            module: parts.module,
            model: parts.model,
            imei: parts.imei,
            settings: Settings::default(),
            link: parts.link,
            channels: Vec::new(),
            next_id: 0,
            echo_pty: true,
            echo_tcp: true,
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
            reboot: parts.reboot,
            urc_hold: parts.urc_hold,
            status: parts.status,
            cancel: parts.cancel,
        };
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
            self.advance();
            let wake = self.next_wake();
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(event) = self.events_rx.recv() => self.on_port(event),
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
        });
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
                if let Some(id) = self.origin.take() {
                    self.send_to(id, frame(&result.to_string()).into_bytes());
                    self.replay_deferred(id);
                }
                self.publish(|_| {});
            }
            Event::Urc(urc) => {
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
            },
        }
    }

    /// The module goes down: the ports close (what is queued is still
    /// written), the link goes away, held output is lost.
    fn power_off(&mut self, next: Boot, module_reboot: bool) {
        self.held.clear();
        self.origin = None;
        self.deferred.clear();
        for channel in self.channels.drain(..) {
            channel.close();
        }
        if let Some(link) = &self.link
            && let Err(error) = link.remove()
        {
            tracing::warn!(link = %link.path().display(), %error, "cannot remove the PTY link");
        }
        // A PTY stays open a moment for the host to read the last lines;
        // the reboot counts from when it is gone, so that a new port never
        // appears before the old one has vanished.
        let linger = if self.link.is_some() {
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
        self.publish(|s| {
            s.powered = false;
            s.pty = None;
        });
    }

    /// The module is up again: new ports, echo on, `RDY`.
    fn boot(&mut self, next: Boot) {
        self.power = Power::On;
        self.recovery = next == Boot::Recovery;
        self.echo_pty = true;
        self.echo_tcp = true;
        self.settings.reset_on_boot();
        if self.link.is_some() {
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
        let bytes = Bytes::from(lines.iter().map(|l| frame(l)).collect::<String>());
        let mut written = false;
        for channel in self.channels.iter().filter(|c| c.attached) {
            channel.send(bytes.clone());
            written = true;
        }
        if !written {
            let now = Instant::now();
            while self
                .held
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > self.urc_hold)
                || self.held.len() >= MAX_HELD
            {
                self.held.pop_front();
            }
            self.held.push_back((now, bytes));
        }
    }

    /// A host has opened a port: it gets what was held for it, if recent.
    fn flush_held(&mut self, id: ChannelId) {
        let now = Instant::now();
        let held: Vec<Bytes> = self
            .held
            .drain(..)
            .filter(|(at, _)| now.duration_since(*at) <= self.urc_hold)
            .map(|(_, bytes)| bytes)
            .collect();
        if let Some(channel) = self.channel(id) {
            for bytes in held {
                channel.send(bytes);
            }
        }
    }

    // ---- the ports --------------------------------------------------------

    fn on_port(&mut self, event: PortEvent) {
        match event {
            PortEvent::Attached(id) => {
                if let Some(channel) = self.channels.iter_mut().find(|c| c.id == id) {
                    channel.attached = true;
                    tracing::info!(port = id, "host opened the PTY");
                    self.flush_held(id);
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
                        tracing::info!(port = id, "host closed the PTY");
                        let channel = &mut self.channels[index];
                        channel.attached = false;
                        // A half-typed line does not carry over to the next
                        // host.
                        channel.framer = Default::default();
                    }
                    PortKind::Tcp => {
                        tracing::info!(port = id, "TCP host disconnected");
                        self.channels.remove(index).close();
                    }
                }
            }
            PortEvent::Input(id, bytes) => self.on_input(id, &bytes),
            PortEvent::Connection(stream, peer, again) => self.on_connection(stream, peer, again),
        }
    }

    fn on_connection(&mut self, stream: TcpStream, peer: std::net::SocketAddr, again: bool) {
        if !matches!(self.power, Power::On) {
            // No port while the module is down: the connection just closes.
            tracing::info!(%peer, "TCP host refused: module is rebooting");
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
        tracing::info!(%peer, "TCP host connected");
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

    fn echo(&self, kind: PortKind) -> bool {
        match kind {
            PortKind::Pty => self.echo_pty,
            PortKind::Tcp => self.echo_tcp,
        }
    }

    fn on_input(&mut self, id: ChannelId, bytes: &[u8]) {
        // One line at a time, so that `ATE0` stops the echo of what
        // follows it in the same chunk.
        for piece in bytes.split_inclusive(|b| *b == b'\r' || *b == b'\n') {
            if self.recovery || !matches!(self.power, Power::On) {
                // The recovery image has no AT parser.
                return;
            }
            let Some(channel) = self.channels.iter_mut().find(|c| c.id == id) else {
                return;
            };
            let kind = channel.kind;
            let (inputs, echo) = channel.framer.push(piece);
            if self.echo(kind) && !echo.is_empty() {
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
    }

    fn replay_deferred(&mut self, id: ChannelId) {
        while self.origin.is_none()
            && let Some(input) = self.deferred.pop_front()
        {
            self.execute(id, input);
        }
    }

    fn execute(&mut self, id: ChannelId, input: Input) {
        let Some(kind) = self.channel(id).map(|c| c.kind) else {
            return;
        };
        let outcome = match input {
            Input::Overflow => Outcome::Reply(Reply::error()),
            Input::Line(line) => match commands::parse(&line) {
                Ok(None) => return,
                Ok(Some(command)) => {
                    let device = Device {
                        module: &self.module,
                        model: &self.model,
                        imei: &self.imei,
                    };
                    commands::execute(command, &mut self.settings, &device)
                }
                Err(error) => {
                    tracing::debug!(port = id, %error, "command refused");
                    Outcome::Reply(Reply::error())
                }
            },
        };
        match outcome {
            Outcome::Reply(reply) => self.send_to(id, reply.render()),
            Outcome::Echo(on) => {
                self.send_to(id, Reply::ok().render());
                match kind {
                    PortKind::Pty => self.echo_pty = on,
                    PortKind::Tcp => self.echo_tcp = on,
                }
            }
            Outcome::Reboot => {
                self.send_to(id, Reply::ok().render());
                tracing::info!(port = id, "AT+CFUN=1,1: rebooting");
                // A reboot ends whatever the module was doing.
                self.run = None;
                self.pending.clear();
                self.recovery = false;
                self.power_off(Boot::Normal, false);
            }
            Outcome::Fotadl(args) => {
                if self.fota_active() {
                    self.send_to(id, Reply::error().render());
                } else {
                    self.run = Some(self.module.fotadl(&args));
                    self.origin = Some(id);
                    self.publish(|_| {});
                }
            }
        }
    }
}

/// A boot time for a reboot delay too long to represent: a century ahead.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

//! The simulated module: configuration ([`ModuleBuilder`]), state (firmware
//! version, busy), and `AT+QFOTADL` runs ([`Module::fotadl`]) that stream
//! [`Event`]s as the command, the download, the reboots and the upgrade
//! unfold.
//!
//! Each run is a Tokio task feeding an unbounded channel, wrapped as a
//! [`futures_util::Stream`] ([`FotaRun`]); dropping the run stops the task.
//! A module is cheap to clone (shared state), and many can run at once,
//! each with its own download rate ([`ModuleBuilder::rate`]).

use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::package::version::VersionChange;
use crate::profile::Profile;
use crate::sim::command::{FotadlCommand, test_command_response};
use crate::sim::download::{self, Download, tls};
use crate::sim::fault::{Fault, FaultError, FaultPlan};
use crate::sim::package::{self, PackageFacts};
use crate::sim::transcript::{RunSummary, TimedEvent, Transcript};
use crate::sim::upgrade::{self, Upgrade, timing};
use crate::sim::urc::{AtResult, Event, PowerOff, Urc};

/// Default no-progress timeout for downloads: 60 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time scale: 0.01, so a whole successful run on loopback takes
/// about two seconds (a realistic one, at 1.0, takes minutes).
pub const DEFAULT_TIME_SCALE: f64 = 0.01;
/// Largest accepted time scale (realistic × 1000).
pub const MAX_TIME_SCALE: f64 = 1000.0;

/// A module configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A fault the family does not have, or that does not parse.
    #[error(transparent)]
    Fault(#[from] FaultError),
    /// The time scale is negative, not finite, or over [`MAX_TIME_SCALE`].
    #[error("time scale {0} must be a number from 0 to {MAX_TIME_SCALE}")]
    TimeScale(f64),
    /// The no-progress timeout is zero.
    #[error("the download timeout must be more than zero")]
    Timeout,
    /// The firmware version is empty or has control characters or `"`.
    #[error("firmware version {0:?} must be non-empty printable text")]
    Version(String),
    /// The CA file cannot be read.
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        /// The path given.
        path: String,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// The CA PEM holds no certificate, or one that does not parse.
    #[error("bad CA certificates: {0}")]
    CaPem(String),
}

/// Scaled time: realistic durations times the time scale, on Tokio's clock
/// (so tests can pause it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    scale: f64,
}

impl Clock {
    /// A clock running `scale` × realistic durations; `scale` must be
    /// finite and non-negative (checked by [`ModuleBuilder::build`]).
    pub(crate) fn new(scale: f64) -> Clock {
        Clock { scale }
    }

    /// Sleeps `realistic × scale`.
    pub(crate) async fn pause(&self, realistic: Duration) {
        let scaled = Duration::try_from_secs_f64(realistic.as_secs_f64() * self.scale)
            .unwrap_or(Duration::ZERO);
        if !scaled.is_zero() {
            tokio::time::sleep(scaled).await;
        }
    }
}

/// Sends a run's events; a closed channel (the run was dropped) is ignored,
/// the task is being aborted anyway.
#[derive(Debug, Clone)]
pub(crate) struct Emitter {
    tx: mpsc::UnboundedSender<Event>,
}

impl Emitter {
    /// A new emitter and the receiving end.
    pub(crate) fn channel() -> (Emitter, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Emitter { tx }, rx)
    }

    /// Sends one event.
    pub(crate) fn send(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    /// Sends one URC.
    pub(crate) fn urc(&self, urc: Urc) {
        self.send(Event::Urc(urc));
    }
}

/// Fixed configuration of a module.
#[derive(Debug)]
struct Config {
    profile: &'static Profile,
    free_space: Option<u64>,
    faults: Vec<Fault>,
    clock: Clock,
    timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
    rate: Option<u64>,
}

/// What changes as the module runs.
#[derive(Debug, Default)]
struct State {
    /// Firmware version; `None` = not set or unknown.
    version: Option<String>,
    /// A FOTA run is in progress.
    busy: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave this plain data inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The module settings the command lines share (`simulate`, `modem`,
/// `fleet`), turned into a [`ModuleBuilder`] in one place.
#[derive(Debug, Clone)]
pub struct ModuleSettings {
    /// Module-side faults.
    pub faults: Vec<Fault>,
    /// Multiplier for the module's own delays.
    pub time_scale: f64,
    /// No-progress download timeout.
    pub timeout: Duration,
    /// Current firmware version (`None`: not version-checked).
    pub version: Option<String>,
    /// Free space in the module's file system, bytes (`None`: unlimited).
    pub free_space: Option<u64>,
    /// CA file (PEM) to verify HTTPS against (`None`: no verification).
    pub ca: Option<std::path::PathBuf>,
    /// Download throttle, bytes per second (`None`: unthrottled).
    pub rate: Option<u64>,
}

impl Default for ModuleSettings {
    fn default() -> Self {
        ModuleSettings {
            faults: Vec::new(),
            time_scale: DEFAULT_TIME_SCALE,
            timeout: DEFAULT_TIMEOUT,
            version: None,
            free_space: None,
            ca: None,
            rate: None,
        }
    }
}

impl ModuleSettings {
    /// A builder for a `profile` module with these settings; checked by
    /// [`ModuleBuilder::build`].
    pub fn builder(&self, profile: &'static Profile) -> ModuleBuilder {
        let mut b = Module::builder(profile)
            .faults(self.faults.clone())
            .time_scale(self.time_scale)
            .timeout(self.timeout)
            .rate(self.rate);
        if let Some(version) = &self.version {
            b = b.version(version.clone());
        }
        if let Some(bytes) = self.free_space {
            b = b.free_space(bytes);
        }
        if let Some(ca) = &self.ca {
            b = b.ca_file(ca);
        }
        b
    }
}

/// Builds a [`Module`]; every setting is checked once, in [`build`](Self::build).
#[derive(Debug)]
pub struct ModuleBuilder {
    profile: &'static Profile,
    version: Option<String>,
    free_space: Option<u64>,
    faults: Vec<Fault>,
    time_scale: f64,
    timeout: Duration,
    ca: Option<Result<Vec<u8>, ConfigError>>,
    rate: Option<u64>,
}

impl ModuleBuilder {
    /// The module's current firmware version (what `ATI` shows), checked
    /// against the package name (SPEC §5). Unset: no version check.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Free space in the module's file system, in bytes; a larger package
    /// ends `END,511`. Unset: unlimited.
    pub fn free_space(mut self, bytes: u64) -> Self {
        self.free_space = Some(bytes);
        self
    }

    /// Adds a module-side fault (checked against the family in `build`).
    pub fn fault(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }

    /// Adds several faults.
    pub fn faults(mut self, faults: impl IntoIterator<Item = Fault>) -> Self {
        self.faults.extend(faults);
        self
    }

    /// Multiplies the module's own delays (response, reboot ≈ 20 s, upgrade
    /// ≈ 2 min at 1.0). Default [`DEFAULT_TIME_SCALE`]; 0 = no delays.
    /// Network transfers always run in real time.
    pub fn time_scale(mut self, scale: f64) -> Self {
        self.time_scale = scale;
        self
    }

    /// No-progress timeout for every download wait (connect, reply,
    /// headers, data). Default [`DEFAULT_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Verify HTTPS servers against the CA certificates in this PEM file
    /// (otherwise certificates are not verified, like a module without a
    /// CA).
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        self.ca = Some(std::fs::read(path).map_err(|source| ConfigError::CaFile {
            path: path.display().to_string(),
            source,
        }));
        self
    }

    /// Like [`ca_file`](Self::ca_file), from PEM text.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(Ok(pem.into()));
        self
    }

    /// Throttles downloads to this many bytes per second (`None` or 0 = no
    /// limit); for fleets of simulated modules sharing a link.
    pub fn rate(mut self, bytes_per_second: Option<u64>) -> Self {
        self.rate = bytes_per_second;
        self
    }

    /// Checks the settings and builds the module.
    ///
    /// # Errors
    /// [`ConfigError`]: a fault the family does not have, a bad time scale
    /// or timeout, an unreadable or empty CA.
    pub fn build(self) -> Result<Module, ConfigError> {
        for fault in &self.faults {
            fault.check(self.profile)?;
        }
        if !(self.time_scale.is_finite() && (0.0..=MAX_TIME_SCALE).contains(&self.time_scale)) {
            return Err(ConfigError::TimeScale(self.time_scale));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::Timeout);
        }
        if let Some(v) = &self.version
            && (v.is_empty() || v.chars().any(|c| c.is_control() || c == '"'))
        {
            // It is printed inside AT responses (`ATI`, `AT+QGMR`).
            return Err(ConfigError::Version(v.clone()));
        }
        let ca = match self.ca {
            None => None,
            Some(pem) => {
                let pem = pem?;
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ConfigError::CaPem(e.to_string()))?;
                if certs.is_empty() {
                    return Err(ConfigError::CaPem("no certificate in the PEM".to_string()));
                }
                Some(certs)
            }
        };
        let tls =
            tls::client_config(ca.as_deref()).map_err(|e| ConfigError::CaPem(e.to_string()))?;
        Ok(Module {
            config: Arc::new(Config {
                profile: self.profile,
                free_space: self.free_space,
                faults: self.faults,
                clock: Clock::new(self.time_scale),
                timeout: self.timeout,
                tls,
                rate: self.rate,
            }),
            state: Arc::new(Mutex::new(State {
                version: self.version,
                busy: false,
            })),
        })
    }
}

/// A simulated Quectel module of one family, answering `AT+QFOTADL`.
///
/// ```no_run
/// use std::time::Duration;
/// use qfota_serve::profile::Profile;
/// use qfota_serve::sim::{Fault, Module};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let module = Module::builder(Profile::for_model("EC25")?)
///     .version("v12")
///     .fault("power-cut=40".parse::<Fault>()?)
///     .timeout(Duration::from_secs(10))
///     .build()?;
/// let transcript = module
///     .fotadl(r#""ftp://test:test@127.0.0.1:2121/update-v12-to-v13.zip""#)
///     .transcript()
///     .await;
/// for line in transcript.lines() {
///     println!("{line}");
/// }
/// assert!(transcript.summary.succeeded());
/// assert_eq!(module.version().as_deref(), Some("v13"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Module {
    config: Arc<Config>,
    state: Arc<Mutex<State>>,
}

impl Module {
    /// Starts configuring a module of `profile`'s family.
    pub fn builder(profile: &'static Profile) -> ModuleBuilder {
        ModuleBuilder {
            profile,
            version: None,
            free_space: None,
            faults: Vec::new(),
            time_scale: DEFAULT_TIME_SCALE,
            timeout: DEFAULT_TIMEOUT,
            ca: None,
            rate: None,
        }
    }

    /// The module's family.
    pub fn profile(&self) -> &'static Profile {
        self.config.profile
    }

    /// The module-side faults it was built with (the virtual modem answers
    /// `AT+CREG?` from `network-down`).
    pub fn faults(&self) -> &[Fault] {
        &self.config.faults
    }

    /// The firmware version now: the configured one, the package's `<to>`
    /// after `END,0`, or `None` when unset or unknown (a package whose name
    /// states no version).
    pub fn version(&self) -> Option<String> {
        lock(&self.state).version.clone()
    }

    /// Whether a FOTA run is in progress (a second `AT+QFOTADL` gets
    /// `ERROR`).
    pub fn is_busy(&self) -> bool {
        lock(&self.state).busy
    }

    /// The answer to `AT+QFOTADL=?`, lines without framing (SPEC §3).
    pub fn test_command(&self) -> Vec<String> {
        test_command_response(self.config.profile)
    }

    /// Executes `AT+QFOTADL=<at_args>`, where `at_args` is the text after
    /// the `=` (`"<url>"[,<upgrade_mode>[,<download_URC_max>[,<update_URC_max>]]]`,
    /// see [`crate::sim::FotadlArgs::to_at_args`]).
    ///
    /// Returns at once; the run proceeds in a Tokio task (so this must be
    /// called inside a Tokio runtime) and its events arrive on the returned
    /// stream: first [`Event::Response`] (`ERROR` ends the stream), then the
    /// URCs, power-offs and `RDY`s of SPEC §3. The stream ends when the
    /// module is back in normal mode. Dropping it stops the run.
    pub fn fotadl(&self, at_args: &str) -> FotaRun {
        let config = Arc::clone(&self.config);
        let (emit, rx) = Emitter::channel();
        let command_line = format!("AT+QFOTADL={at_args}");
        let version_before = self.version();
        let parsed = FotadlCommand::parse(at_args, config.profile);
        let notes = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::new(AtomicU64::new(0));
        let busy = {
            let mut state = lock(&self.state);
            let was = state.busy;
            if parsed.is_ok() && !was {
                state.busy = true;
            }
            was
        };
        let task = match parsed {
            Ok(command) if !busy => {
                let run = Run {
                    config,
                    state: BusyGuard(Arc::clone(&self.state)),
                    command,
                    emit,
                    notes: Arc::clone(&notes),
                    received: Arc::clone(&received),
                };
                tokio::spawn(run.execute())
            }
            refused => {
                let why = match refused {
                    Ok(_) => "a FOTA run is already in progress".to_string(),
                    Err(e) => e.to_string(),
                };
                lock(&notes).push(format!("ERROR: {why}"));
                let clock = config.clock;
                tokio::spawn(async move {
                    clock.pause(timing::RESPONSE).await;
                    emit.send(Event::Response(AtResult::Error));
                })
            }
        };
        FotaRun {
            command_line,
            rx,
            task,
            started: Instant::now(),
            profile: self.config.profile,
            version_before,
            state: Arc::clone(&self.state),
            notes,
            received,
        }
    }
}

/// Clears the busy flag when a run ends, however it ends.
struct BusyGuard(Arc<Mutex<State>>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        lock(&self.0).busy = false;
    }
}

/// One accepted `AT+QFOTADL` run.
struct Run {
    config: Arc<Config>,
    state: BusyGuard,
    command: FotadlCommand,
    emit: Emitter,
    notes: Arc<Mutex<Vec<String>>>,
    received: Arc<AtomicU64>,
}

impl Run {
    fn note(&self, note: String) {
        lock(&self.notes).push(note);
    }

    async fn execute(self) {
        let config = Arc::clone(&self.config);
        let profile = config.profile;
        let clock = config.clock;
        let url = &self.command.url;
        let params = self.command.params;
        let mut faults = FaultPlan::new(&config.faults, profile.max_attempts);

        clock.pause(timing::RESPONSE).await;
        self.emit.send(Event::Response(AtResult::Ok));
        clock.pause(timing::BEFORE_DOWNLOAD).await;
        let ftp = url.scheme.is_ftp();
        self.emit
            .urc(if ftp { Urc::FtpStart } else { Urc::HttpStart });
        let result = download::download(Download {
            url,
            timeout: config.timeout,
            rate: config.rate,
            dns_fail: faults.dns_fail,
            network_down: faults.network_down,
            tls: Arc::clone(&config.tls),
            downloading_lines: params.downloading_lines(),
            emit: &self.emit,
            received: Arc::clone(&self.received),
        })
        .await;
        let end = |code| {
            if ftp {
                Urc::FtpEnd(code)
            } else {
                Urc::HttpEnd(code)
            }
        };
        let package = match result {
            Ok(package) => package,
            Err(error) => {
                let code = error.code(url.scheme, profile.download_codes);
                tracing::debug!(
                    profile = profile.name,
                    url = %url.text,
                    code,
                    cause = %error,
                    "simulated download failed"
                );
                self.note(format!("download: {error}"));
                self.emit.urc(end(code));
                return;
            }
        };
        tracing::debug!(
            profile = profile.name,
            url = %url.text,
            bytes = package.len(),
            "simulated download finished"
        );
        self.emit.urc(end(0));

        let file_name = url.file_name().to_string();
        let version = lock(&self.state.0).version.clone();
        let check = {
            let facts_name = file_name.clone();
            let free_space = config.free_space;
            let plan = faults.clone();
            // Reading every zip entry through is CPU work; keep it off the
            // runtime's worker threads.
            tokio::task::spawn_blocking(move || {
                package::check(
                    &PackageFacts {
                        profile,
                        bytes: &package,
                        file_name: &facts_name,
                        version: version.as_deref(),
                        free_space,
                    },
                    &plan,
                )
            })
            .await
            .unwrap_or_else(|e| Some((package::FORMAT_CODE, format!("package check failed: {e}"))))
        };
        if let Some((code, why)) = &check {
            self.note(format!("package check: END,{code}: {why}"));
        }

        if profile.reboots_before_upgrade(params.upgrade_mode) {
            clock.pause(timing::BEFORE_REBOOT).await;
            upgrade::reboot(clock, &self.emit, PowerOff::RebootToUpgrade).await;
        }
        let codes = Upgrade {
            profile,
            check: check.map(|(code, _)| code),
            updating_lines: params.updating_lines(),
            faults: &mut faults,
            clock,
            emit: &self.emit,
        }
        .run()
        .await;
        let upgraded = codes.last() == Some(&0);
        if !upgraded {
            self.note(format!(
                "upgrade failed {} times; the module boots its old firmware",
                codes.len()
            ));
        }

        clock.pause(timing::BEFORE_REBOOT).await;
        self.emit.send(Event::PowerOff(PowerOff::RebootToNormal));
        if upgraded {
            let new = VersionChange::from_file_name(&file_name).map(|v| v.to);
            lock(&self.state.0).version = new;
        }
        clock.pause(timing::REBOOT).await;
        self.emit.send(Event::Ready);
    }
}

/// A running `AT+QFOTADL`: a [`Stream`] of [`Event`]s, ending when the run
/// is over. Dropping it stops the run.
#[derive(Debug)]
pub struct FotaRun {
    command_line: String,
    rx: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
    started: Instant,
    profile: &'static Profile,
    version_before: Option<String>,
    state: Arc<Mutex<State>>,
    notes: Arc<Mutex<Vec<String>>>,
    received: Arc<AtomicU64>,
}

impl FotaRun {
    /// The command as sent: `AT+QFOTADL=<args>`.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// When the command was sent (Tokio clock).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Sums up `events` (this run's, as received) with the module's version
    /// now and the simulator's notes on causes.
    pub fn summarize(&self, events: &[TimedEvent]) -> RunSummary {
        let mut summary = RunSummary::from_events(
            self.profile,
            events,
            self.version_before.clone(),
            lock(&self.state).version.clone(),
            lock(&self.notes).clone(),
        );
        summary.bytes_received = self.received.load(Ordering::Relaxed);
        summary
    }

    /// Waits for the whole run and returns it, each event stamped with its
    /// time since the command.
    pub async fn transcript(mut self) -> Transcript {
        let mut events = Vec::new();
        while let Some(event) = self.rx.recv().await {
            events.push(TimedEvent {
                at: self.started.elapsed(),
                event,
            });
        }
        let summary = self.summarize(&events);
        Transcript {
            command: self.command_line.clone(),
            events,
            summary,
        }
    }
}

impl Stream for FotaRun {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for FotaRun {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    /// Bounds a test's await (virtual time where the clock is paused).
    async fn bounded<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(3600), f)
            .await
            .expect("finished in time")
    }

    fn module(profile: &str) -> Module {
        Module::builder(Profile::by_name(profile).unwrap())
            .build()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_bad_command_gets_error_and_nothing_else() {
        let m = module("eg06xk-dfota");
        let url = format!("\"http://h/{}\"", "a".repeat(100));
        let t = bounded(m.fotadl(&url).transcript()).await;
        assert_eq!(
            t.lines(),
            vec![format!("AT+QFOTADL={url}"), "ERROR".to_string()]
        );
        assert_eq!(t.summary.response, Some(AtResult::Error));
        assert!(!t.summary.succeeded());
        assert!(!m.is_busy());
    }

    #[tokio::test(start_paused = true)]
    async fn ok_comes_within_300_ms_and_first() {
        let m = Module::builder(Profile::by_name("ec2x").unwrap())
            .time_scale(1.0)
            .fault(Fault::NetworkDown)
            .build()
            .unwrap();
        let mut run = m.fotadl(r#""ftp://127.0.0.1/p.zip""#);
        let first = bounded(run.next()).await;
        assert_eq!(first, Some(Event::Response(AtResult::Ok)));
        assert!(run.started().elapsed() <= Duration::from_millis(300));
        assert!(m.is_busy());
        // A second command while busy is refused.
        let second = bounded(m.fotadl(r#""ftp://127.0.0.1/p.zip""#).transcript()).await;
        assert_eq!(second.summary.response, Some(AtResult::Error));
        let rest: Vec<Event> = bounded(run.collect()).await;
        assert_eq!(
            rest,
            vec![Event::Urc(Urc::FtpStart), Event::Urc(Urc::FtpEnd(601))]
        );
        assert!(!m.is_busy());
    }

    #[tokio::test(start_paused = true)]
    async fn network_down_on_ec200_is_605_and_707() {
        let m = Module::builder(Profile::by_name("ec200").unwrap())
            .fault(Fault::NetworkDown)
            .build()
            .unwrap();
        let ftp = bounded(m.fotadl(r#""ftp://127.0.0.1/p.bin""#).transcript()).await;
        assert_eq!(ftp.summary.download_code, Some(605));
        let http = bounded(m.fotadl(r#""http://127.0.0.1/p.bin""#).transcript()).await;
        assert_eq!(http.summary.download_code, Some(707));
        assert!(
            http.summary
                .notes
                .iter()
                .any(|n| n.contains("network-down"))
        );
    }

    #[test]
    fn builder_refuses_bad_settings() {
        let ec200 = Profile::by_name("ec200").unwrap();
        assert!(matches!(
            Module::builder(ec200).fault(Fault::Signature).build(),
            Err(ConfigError::Fault(_))
        ));
        for scale in [-1.0, f64::NAN, f64::INFINITY, 1e9] {
            assert!(matches!(
                Module::builder(ec200).time_scale(scale).build(),
                Err(ConfigError::TimeScale(_))
            ));
        }
        assert!(matches!(
            Module::builder(ec200).timeout(Duration::ZERO).build(),
            Err(ConfigError::Timeout)
        ));
        // The version is printed inside AT responses: no line breaks.
        assert!(matches!(
            Module::builder(ec200).version("v1\r\nOK").build(),
            Err(ConfigError::Version(_))
        ));
        assert!(matches!(
            Module::builder(ec200).ca_pem("no pem here").build(),
            Err(ConfigError::CaPem(_))
        ));
        assert!(matches!(
            Module::builder(ec200)
                .ca_file("/nonexistent/ca.pem")
                .build(),
            Err(ConfigError::CaFile { .. })
        ));
    }

    #[test]
    fn test_command_follows_the_family() {
        assert_eq!(module("ec2x").test_command(), vec!["OK"]);
        assert_eq!(module("ec200").test_command().len(), 2);
    }
}

//! The simulated module, the simulator's front door: configuration
//! ([`ModuleSettings`], [`ModuleBuilder`]), state (firmware version, busy),
//! and `AT+QFOTADL` runs ([`Module::fotadl`]) that stream [`Event`]s as the
//! command, the download, the reboots and the upgrade unfold.
//!
//! [`Module::fotadl`] accepts or refuses the command and spawns the run
//! (`crate::sim::run`, one function per phase) as a Tokio task feeding an
//! unbounded channel, wrapped as a [`futures_util::Stream`] ([`FotaRun`]);
//! dropping the run stops the task. A module is cheap to clone (shared
//! state, `crate::sim::state`), and many can run at once, each with its
//! own download rate ([`ModuleBuilder::rate`]).
//!
//! This is the top of the simulator's core: it imports the parts below it
//! and none of them imports this file.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::profile::Profile;
use crate::sim::clock::Clock;
use crate::sim::command::{FotadlCommand, test_command_response};
use crate::sim::download::tls;
use crate::sim::emit::Emitter;
use crate::sim::fault::{Fault, FaultError};
use crate::sim::run::{self, Run};
use crate::sim::state::{BusyGuard, Config, RunLog, State, lock};
use crate::sim::transcript::{RunSummary, TimedEvent, Transcript};
use crate::sim::urc::{AtResult, Event};

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
        let ca = self.ca.map(ca_certificates).transpose()?;
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

/// The CA certificates in `pem` (read from a file or given as text).
///
/// # Errors
/// The read error of the file, PEM that does not parse, or no certificate.
fn ca_certificates(
    pem: Result<Vec<u8>, ConfigError>,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = pem?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::CaPem(e.to_string()))?;
    if certs.is_empty() {
        return Err(ConfigError::CaPem("no certificate in the PEM".to_string()));
    }
    Ok(certs)
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
    /// see [`crate::sim::command::FotadlArgs::to_at_args`]).
    ///
    /// Returns at once; the run proceeds in a Tokio task (so this must be
    /// called inside a Tokio runtime) and its events arrive on the returned
    /// stream: first [`Event::Response`] (`ERROR` ends the stream), then the
    /// URCs, power-offs and `RDY`s of SPEC §3. The stream ends when the
    /// module is back in normal mode. Dropping it stops the run.
    pub fn fotadl(&self, at_args: &str) -> FotaRun {
        let (emit, rx) = Emitter::channel();
        let log = RunLog::default();
        let version_before = self.version();
        let task = match self.accept(at_args) {
            Ok((command, busy)) => {
                let run = Run::new(Arc::clone(&self.config), busy, command, emit, log.clone());
                tokio::spawn(run.execute())
            }
            Err(why) => {
                log.note(format!("ERROR: {why}"));
                let clock = self.config.clock;
                tokio::spawn(async move { run::answer(clock, &emit, AtResult::Error).await })
            }
        };
        FotaRun {
            command_line: format!("AT+QFOTADL={at_args}"),
            rx,
            task,
            started: Instant::now(),
            profile: self.config.profile,
            version_before,
            state: Arc::clone(&self.state),
            log,
        }
    }

    /// Parses `AT+QFOTADL=<at_args>` and claims the module for the run.
    ///
    /// # Errors
    /// Why the module answers `ERROR`: the command's fault (checked first),
    /// or a run already in progress.
    fn accept(&self, at_args: &str) -> Result<(FotadlCommand, BusyGuard), String> {
        let command =
            FotadlCommand::parse(at_args, self.config.profile).map_err(|e| e.to_string())?;
        let busy = BusyGuard::claim(&self.state)
            .ok_or_else(|| "a FOTA run is already in progress".to_string())?;
        Ok((command, busy))
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
    log: RunLog,
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
            self.log.notes(),
        );
        summary.bytes_received = self.log.received();
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
    use crate::sim::testing::bounded;
    use crate::sim::urc::Urc;
    use futures_util::StreamExt;

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
    fn accept_checks_the_command_first_then_claims_the_module() {
        let m = module("ec2x");
        let (_, busy) = m.accept(r#""ftp://h/p.zip""#).expect("accepted");
        assert!(m.is_busy());
        // A bad command is refused for what is wrong with it, busy or not.
        let bad = m.accept(r#""gopher://h/p.zip""#).unwrap_err();
        assert!(!bad.contains("in progress"), "{bad}");
        let second = m.accept(r#""ftp://h/p.zip""#).unwrap_err();
        assert!(second.contains("in progress"), "{second}");
        drop(busy);
        assert!(!m.is_busy());
        assert!(m.accept(r#""ftp://h/p.zip""#).is_ok());
    }

    #[test]
    fn test_command_follows_the_family() {
        assert_eq!(module("ec2x").test_command(), vec!["OK"]);
        assert_eq!(module("ec200").test_command().len(), 2);
    }
}

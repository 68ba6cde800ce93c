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

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::profile::{DownloadCodes, Profile};
use crate::sim::clock::Clock;
use crate::sim::command::{FotadlCommand, Source, test_command_response};
use crate::sim::download::tls;
use crate::sim::emit::{BootHook, Emitter};
use crate::sim::fault::{Fault, FaultError};
use crate::sim::run::{self, Run};
use crate::sim::state::{BusyGuard, Config, Phase, RunLog, State, lock};
use crate::sim::transcript::{RunSummary, TimedEvent, Transcript};
use crate::sim::ufs::{self, Ufs};
use crate::sim::urc::{AtResult, Event, Urc};

/// Default no-progress timeout for downloads: 60 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time scale: 0.01, so a whole successful run on loopback takes
/// about two seconds (a realistic one, at 1.0, takes minutes).
pub const DEFAULT_TIME_SCALE: f64 = 0.01;
/// Largest accepted time scale (realistic × 1000).
pub const MAX_TIME_SCALE: f64 = 1000.0;
/// The PDP context active after boot and used by FOTA unless set
/// otherwise: 1, the LTE default bearer (seed `000_318699ddba19ea03.txt`
/// §3.3.3 note 3: "The first APN is used for data call during FOTA upgrade
/// by default"; seed 001 §3.2.1.1 sets it with `AT+QFOTA="fota/cid"`).
pub const DEFAULT_CID: u8 = 1;
/// Context ids a module has: 1–16 (3GPP TS 27.007 `<cid>` on Quectel
/// modules).
pub const CIDS: std::ops::RangeInclusive<u8> = 1..=16;

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
    /// A PDP context id outside [`CIDS`].
    #[error("context id {0} must be 1-16")]
    Cid(u8),
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
    /// PDP contexts active after every boot (`None`: context 1 only).
    pub active_contexts: Option<Vec<u8>>,
    /// The context FOTA downloads use (`None`: 1).
    pub fota_cid: Option<u8>,
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
            active_contexts: None,
            fota_cid: None,
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
        if let Some(cids) = &self.active_contexts {
            b = b.active_contexts(cids.iter().copied());
        }
        if let Some(cid) = self.fota_cid {
            b = b.fota_cid(cid);
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
    contexts: BTreeSet<u8>,
    fota_cid: u8,
}

impl ModuleBuilder {
    /// The PDP contexts active after every boot (default: 1 only). A
    /// download over a context that is not active fails with the family's
    /// network error (`ec200`: 605 / 707). Ids must be 1–16.
    pub fn active_contexts(mut self, cids: impl IntoIterator<Item = u8>) -> Self {
        self.contexts = cids.into_iter().collect();
        self
    }

    /// The context FOTA downloads use (`AT+QFOTA="fota/cid",<cid>`,
    /// default [`DEFAULT_CID`]); 1–16.
    pub fn fota_cid(mut self, cid: u8) -> Self {
        self.fota_cid = cid;
        self
    }

    /// The module's current firmware version (what `ATI` shows), checked
    /// against the package name (SPEC §5). Unset: no version check.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Size of the module's file system (UFS), in bytes: its free space
    /// while no file is stored. A downloaded package larger than the free
    /// space ends `END,511` (`ec200`: the download fails with 611 / 729);
    /// an upload larger than it gets `+CME ERROR: 403`. Unset:
    /// [`ufs::DEFAULT_SIZE`].
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
        if let Some(bad) = self
            .contexts
            .iter()
            .chain([&self.fota_cid])
            .find(|c| !CIDS.contains(c))
        {
            return Err(ConfigError::Cid(*bad));
        }
        let ca = self.ca.map(ca_certificates).transpose()?;
        let tls =
            tls::client_config(ca.as_deref()).map_err(|e| ConfigError::CaPem(e.to_string()))?;
        let download_errors: VecDeque<(u16, Option<u8>)> = self
            .faults
            .iter()
            .filter_map(|f| match *f {
                Fault::DownloadError { code, downloads } => Some((code, downloads)),
                _ => None,
            })
            .collect();
        Ok(Module {
            state: Arc::new(Mutex::new(State {
                version: self.version,
                active_contexts: self.contexts.clone(),
                fota_cid: self.fota_cid,
                download_errors,
                ..State::default()
            })),
            config: Arc::new(Config {
                profile: self.profile,
                faults: self.faults,
                clock: Clock::new(self.time_scale),
                timeout: self.timeout,
                tls,
                rate: self.rate,
                boot_contexts: self.contexts,
                ufs: Ufs::new(self.free_space.unwrap_or(ufs::DEFAULT_SIZE)),
            }),
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
            contexts: BTreeSet::from([DEFAULT_CID]),
            fota_cid: DEFAULT_CID,
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
    /// `ERROR`, or on `ec200` during a download `OK` and a busy code).
    pub fn is_busy(&self) -> bool {
        lock(&self.state).busy()
    }

    /// The module's file system (UFS): upload (`AT+QFUPL`:
    /// [`Ufs::prepare`] before `CONNECT`, [`Ufs::write`] after the data),
    /// list (`AT+QFLST`: [`Ufs::list`]), delete (`AT+QFDEL`:
    /// [`Ufs::delete`]), sizes (`AT+QFLDS`: [`Ufs::space`]). The files
    /// survive reboots and are what `AT+QFOTADL="<local path>"` reads.
    pub fn ufs(&self) -> &Ufs {
        &self.config.ufs
    }

    /// The context FOTA downloads use (`AT+QFOTA="fota/cid"`).
    pub fn fota_cid(&self) -> u8 {
        lock(&self.state).fota_cid
    }

    /// Sets the context FOTA downloads use (`AT+QFOTA="fota/cid",<cid>`;
    /// seed `001_2f648264def3e0b1.txt` §3.2.1.1). A non-volatile setting:
    /// it survives reboots.
    ///
    /// # Errors
    /// [`ConfigError::Cid`] outside 1–16.
    pub fn set_fota_cid(&self, cid: u8) -> Result<(), ConfigError> {
        if !CIDS.contains(&cid) {
            return Err(ConfigError::Cid(cid));
        }
        lock(&self.state).fota_cid = cid;
        Ok(())
    }

    /// The PDP contexts every boot activates
    /// ([`ModuleBuilder::active_contexts`]; default: context 1).
    pub fn boot_contexts(&self) -> BTreeSet<u8> {
        self.config.boot_contexts.clone()
    }

    /// The PDP contexts active now.
    pub fn active_contexts(&self) -> BTreeSet<u8> {
        lock(&self.state).active_contexts.clone()
    }

    /// Activates or deactivates context `cid` (`AT+QIACT` / `AT+QIDEACT`,
    /// `AT+CGACT`) until the next boot, which restores the configured set
    /// ([`ModuleBuilder::active_contexts`]).
    ///
    /// # Errors
    /// [`ConfigError::Cid`] outside 1–16.
    pub fn set_context_active(&self, cid: u8, active: bool) -> Result<(), ConfigError> {
        if !CIDS.contains(&cid) {
            return Err(ConfigError::Cid(cid));
        }
        let mut state = lock(&self.state);
        if active {
            state.active_contexts.insert(cid);
        } else {
            state.active_contexts.remove(&cid);
        }
        Ok(())
    }

    /// Whether the firmware is ruined: an `ec200` lost power during its
    /// upgrade (seed `001_2f648264def3e0b1.txt` §5, "cannot be restored").
    /// Such a module never prints `RDY` and answers nothing until
    /// [`repair`](Self::repair).
    pub fn firmware_lost(&self) -> bool {
        lock(&self.state).firmware_lost
    }

    /// Boots the module, as the AT layer's own power-on or reset does
    /// (`AT+CFUN=1,1`, power-on after `AT+QPOWD`): resets what a boot
    /// resets (the active contexts). Returns whether it comes up (`RDY`):
    /// `false` when the firmware is lost.
    pub fn power_on(&self) -> bool {
        let mut state = lock(&self.state);
        state.active_contexts = self.config.boot_contexts.clone();
        !state.firmware_lost
    }

    /// Repairs a module whose firmware was lost (re-flashed over USB by the
    /// vendor's tool): it runs its old version again and boots. Does
    /// nothing to a working module.
    pub fn repair(&self) {
        lock(&self.state).firmware_lost = false;
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
        let emit = emit.on_boot(self.boot_hook());
        let log = RunLog::default();
        let version_before = self.version();
        let clock = self.config.clock;
        let mut file_input = None;
        let task = match self.accept(at_args) {
            _ if self.firmware_lost() => {
                // No firmware, no AT parser: nothing answers.
                log.note("the module has no working firmware (see Module::repair)".to_string());
                tokio::spawn(async {})
            }
            Ok(Accepted::Run(command, busy)) => {
                let input = match command.source {
                    Source::Uart { length } => {
                        let (tx, rx) = mpsc::unbounded_channel();
                        file_input = Some(FileSender {
                            tx,
                            remaining: Arc::new(AtomicU64::new(length)),
                        });
                        Some(rx)
                    }
                    _ => None,
                };
                let run = Run::new(
                    Arc::clone(&self.config),
                    busy,
                    command,
                    emit,
                    log.clone(),
                    input,
                );
                tokio::spawn(run.execute())
            }
            Ok(Accepted::Busy(url, uart)) => {
                log.note("download: a download is already running".to_string());
                tokio::spawn(async move { run::answer_busy(clock, &emit, &url, uart).await })
            }
            Err(why) => {
                log.note(format!("ERROR: {why}"));
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
            file_input,
        }
    }

    /// What every boot during a run does: the configured contexts become
    /// the active ones.
    fn boot_hook(&self) -> BootHook {
        let state = Arc::clone(&self.state);
        let contexts = self.config.boot_contexts.clone();
        BootHook(Arc::new(move || {
            lock(&state).active_contexts = contexts.clone();
        }))
    }

    /// Parses `AT+QFOTADL=<at_args>` and claims the module for the run.
    /// On `ec200`, a download while another download runs is accepted and
    /// ends with the busy code (603 / 703 / 704, seed 001 tables 2 and 3).
    ///
    /// # Errors
    /// Why the module answers `ERROR`: the command's fault (checked first),
    /// or a run already in progress.
    fn accept(&self, at_args: &str) -> Result<Accepted, String> {
        let command =
            FotadlCommand::parse(at_args, self.config.profile).map_err(|e| e.to_string())?;
        let phase = match command.source {
            Source::Url(_) => Phase::Downloading { uart: false },
            Source::Uart { .. } => Phase::Downloading { uart: true },
            Source::Local { .. } | Source::ProtocolMode => Phase::Upgrading,
        };
        if let Some(busy) = BusyGuard::claim(&self.state, phase) {
            return Ok(Accepted::Run(command, busy));
        }
        let running = lock(&self.state).phase;
        match (&command.source, running) {
            (Source::Url(url), Phase::Downloading { uart })
                if self.config.profile.download_codes == DownloadCodes::Detailed =>
            {
                Ok(Accepted::Busy(url.clone(), uart))
            }
            _ => Err("a FOTA run is already in progress".to_string()),
        }
    }
}

/// What [`Module::accept`] makes of a command.
#[derive(Debug)]
enum Accepted {
    /// A run, holding the module.
    Run(FotadlCommand, BusyGuard),
    /// `ec200`: a download while another one runs (over the AT port when
    /// `true`).
    Busy(crate::sim::command::FotaUrl, bool),
}

/// The AT layer's end of an `ec200` `AT+QFOTADL="FILE:<length>"` run
/// ([`FotaRun::file_input`]): the raw bytes the host sends on the AT port
/// after `FILESTART` go in here. At most `<length>` bytes are taken; the
/// run ends the transfer with `FILEEND,0` when all have arrived, or
/// `FILEEND,500` when none comes within the module's timeout or this sender
/// is dropped first.
#[derive(Debug)]
pub struct FileSender {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    remaining: Arc<AtomicU64>,
}

/// The `FILE:<length>` transfer is over (complete, failed or stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the FILE: transfer is over")]
pub struct FileClosed;

impl FileSender {
    /// Bytes the module still takes.
    pub fn remaining(&self) -> u64 {
        self.remaining.load(Ordering::Relaxed)
    }

    /// Hands `bytes` to the module; returns how many it took (at most
    /// [`remaining`](Self::remaining); the rest is not package data and
    /// belongs to the AT parser again).
    ///
    /// # Errors
    /// [`FileClosed`] when the run no longer reads (it ended or was
    /// dropped).
    pub fn send(&self, bytes: &[u8]) -> Result<usize, FileClosed> {
        let remaining = self.remaining();
        let take = usize::try_from(remaining).map_or(bytes.len(), |r| r.min(bytes.len()));
        if take == 0 {
            return if self.tx.is_closed() {
                Err(FileClosed)
            } else {
                Ok(0)
            };
        }
        self.tx
            .send(bytes[..take].to_vec())
            .map_err(|_| FileClosed)?;
        self.remaining.fetch_sub(take as u64, Ordering::Relaxed);
        Ok(take)
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
    file_input: Option<FileSender>,
}

impl FotaRun {
    /// Takes the sender for the package bytes of an `ec200`
    /// `AT+QFOTADL="FILE:<length>"` run (`None` for any other command, or
    /// once taken). Send after `FILESTART`; dropping it before `<length>`
    /// bytes ends the transfer with `FILEEND,500`.
    pub fn file_input(&mut self) -> Option<FileSender> {
        self.file_input.take()
    }

    /// The command as sent: `AT+QFOTADL=<args>`.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// When the command was sent (Tokio clock).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Package bytes the download has received so far (for a progress
    /// display; the final figure is in the summary).
    pub fn bytes_received(&self) -> u64 {
        self.log.received()
    }

    /// The counter behind [`FotaRun::bytes_received`], readable after the
    /// run was consumed (a fleet's module stopped at its deadline).
    pub(crate) fn received_counter(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.log.received_counter()
    }

    /// This run's time to first byte, readable after the run was consumed
    /// (a fleet's module stopped at its deadline).
    pub(crate) fn first_byte_probe(&self) -> crate::sim::state::FirstByteProbe {
        self.log.first_byte_probe()
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
        let start = events.iter().find_map(|e| match e.event {
            Event::Urc(Urc::FtpStart | Urc::HttpStart | Urc::FileStart) => Some(e.at),
            _ => None,
        });
        if let (Some(start), Some(first)) = (start, self.log.first_byte()) {
            let ttfb = first.duration_since(self.started).saturating_sub(start);
            summary.first_byte_ms = Some(u64::try_from(ttfb.as_millis()).unwrap_or(u64::MAX));
        }
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
        let Ok(Accepted::Run(_, busy)) = m.accept(r#""ftp://h/p.zip""#) else {
            panic!("accepted");
        };
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

    #[tokio::test(start_paused = true)]
    async fn ec200_answers_a_second_download_with_the_busy_code() {
        let m = Module::builder(Profile::by_name("ec200").unwrap())
            .time_scale(1.0)
            .build()
            .unwrap();
        let mut first = m.fotadl(r#""FILE:100""#);
        assert_eq!(
            bounded(first.next()).await,
            Some(Event::Response(AtResult::Ok))
        );
        let http = bounded(m.fotadl(r#""http://127.0.0.1/p.bin""#).transcript()).await;
        assert_eq!(http.summary.download_code, Some(704), "UART busy");
        let ftp = bounded(m.fotadl(r#""ftp://127.0.0.1/p.bin""#).transcript()).await;
        assert_eq!(ftp.summary.download_code, Some(603));
        // ec2x has no busy code: ERROR.
        let ec2x = Module::builder(Profile::by_name("ec2x").unwrap())
            .build()
            .unwrap();
        let _hold = ec2x.fotadl(r#""/data/ufs/p.zip""#);
        let second = bounded(ec2x.fotadl(r#""ftp://h/p.zip""#).transcript()).await;
        assert_eq!(second.summary.response, Some(AtResult::Error));
    }

    #[tokio::test(start_paused = true)]
    async fn an_inactive_fota_context_fails_the_download_and_boots_reset_it() {
        let m = Module::builder(Profile::by_name("ec200").unwrap())
            .active_contexts([1, 2])
            .build()
            .unwrap();
        m.set_fota_cid(3).unwrap();
        let t = bounded(m.fotadl(r#""http://127.0.0.1:1/p.bin""#).transcript()).await;
        assert_eq!(t.summary.download_code, Some(707));
        m.set_fota_cid(2).unwrap();
        m.set_context_active(2, false).unwrap();
        let t = bounded(m.fotadl(r#""ftp://127.0.0.1:1/p.bin""#).transcript()).await;
        assert_eq!(t.summary.download_code, Some(605));
        assert!(
            t.summary.notes[0].contains("context 2"),
            "{:?}",
            t.summary.notes
        );
        assert!(m.power_on());
        assert_eq!(m.active_contexts(), BTreeSet::from([1, 2]));
        assert!(m.set_fota_cid(0).is_err() && m.set_context_active(17, true).is_err());
        assert!(matches!(
            Module::builder(Profile::by_name("ec2x").unwrap())
                .fota_cid(17)
                .build(),
            Err(ConfigError::Cid(17))
        ));
    }

    #[test]
    fn test_command_follows_the_family() {
        assert_eq!(module("ec2x").test_command(), vec!["OK"]);
        assert_eq!(module("ec200").test_command().len(), 2);
    }
}

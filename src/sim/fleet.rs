//! Fleet runs: many simulated modules updating from one server at once,
//! each over its own real sockets and, optionally, throttled like a
//! cellular link — to see how a server (and a fault rule) behaves when a
//! whole fleet updates, and read the outcome as counts per final code.
//!
//! `qfota-serve fleet <URL> --modules N` runs N [`Module`]s with at most
//! `--concurrency` in flight, bounded by `--deadline-secs`, and prints a
//! [`FleetReport`]: modules per final code, p50/p95/max download time, and
//! bytes received.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::profile::{Profile, ProfileError};
use crate::sim::command::FotadlArgs;
use crate::sim::fault::Fault;
use crate::sim::module::{ConfigError, DEFAULT_TIME_SCALE, Module, ModuleSettings};
use crate::sim::transcript::Transcript;
use crate::sim::urc::{AtResult, Event, Urc};

/// `qfota-serve fleet`: run N simulated modules against one URL.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Package URL every module is sent (`ftp://…`, `http(s)://…`).
    #[arg(env = "QFOTA_FLEET_URL")]
    pub url: String,
    /// How many modules.
    #[arg(long, env = "QFOTA_FLEET_MODULES", value_name = "N")]
    pub modules: usize,
    /// Most modules running at once [default: all, up to 256].
    #[arg(long, env = "QFOTA_FLEET_CONCURRENCY", value_name = "C")]
    pub concurrency: Option<usize>,
    /// Module model (EC25, EC200T, EM060K, …); selects the profile.
    #[arg(long, env = "QFOTA_FLEET_MODEL", conflicts_with = "profile")]
    pub model: Option<String>,
    /// Profile: ec2x (default), ep06, ec200, eg06xk-dfota, eg06xk.
    #[arg(long, env = "QFOTA_FLEET_PROFILE")]
    pub profile: Option<String>,
    /// Every module's current firmware version (checked against the
    /// package name, SPEC §5).
    #[arg(long = "version", env = "QFOTA_FLEET_VERSION", value_name = "V")]
    pub module_version: Option<String>,
    /// Per-module download throttle, bytes per second (a cellular link:
    /// tens of kB/s) [default: unthrottled].
    #[arg(long, env = "QFOTA_FLEET_RATE", value_name = "BYTES_PER_S")]
    pub rate: Option<u64>,
    /// Module-side fault for every module, repeatable (see `simulate`).
    #[arg(
        long = "fault",
        env = "QFOTA_FLEET_FAULT",
        value_delimiter = ',',
        value_name = "F"
    )]
    pub faults: Vec<Fault>,
    /// Stop waiting after this many seconds; modules not done by then are
    /// counted as `unfinished`.
    #[arg(
        long,
        env = "QFOTA_FLEET_DEADLINE_SECS",
        default_value_t = 300,
        value_name = "SECS"
    )]
    pub deadline_secs: u64,
    /// Each module's no-progress download timeout, seconds.
    #[arg(
        long,
        env = "QFOTA_FLEET_TIMEOUT_SECS",
        default_value_t = 60,
        value_name = "SECS"
    )]
    pub timeout_secs: u64,
    /// Multiplier for the modules' own delays (reboots, upgrade).
    #[arg(long, env = "QFOTA_FLEET_TIME_SCALE", default_value_t = DEFAULT_TIME_SCALE, value_name = "X")]
    pub time_scale: f64,
    /// Print the report as one JSON object.
    #[arg(long, env = "QFOTA_FLEET_JSON")]
    pub json: bool,
}

/// Why a fleet cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Unknown model or profile.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// A module setting the simulator refuses.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Zero modules or zero concurrency.
    #[error("--modules and --concurrency must be at least 1")]
    Empty,
    /// More modules than one run holds (each is a task and a buffer).
    #[error("--modules {0} is over the limit of {MAX_MODULES}")]
    TooMany(usize),
}

/// Most modules one fleet run starts.
pub const MAX_MODULES: usize = 100_000;

/// Checked settings of a fleet run.
#[derive(Debug)]
pub struct FleetConfig {
    /// Arguments of the `AT+QFOTADL` every module is sent.
    pub command: FotadlArgs,
    /// Modules to run.
    pub modules: usize,
    /// Most in flight at once.
    pub concurrency: usize,
    /// Time limit for the whole run.
    pub deadline: Duration,
    profile: &'static Profile,
    settings: ModuleSettings,
}

impl FleetConfig {
    /// A fleet of `modules` `profile` modules sent `url`, unthrottled, all
    /// at once (up to 256), within 300 s.
    pub fn new(url: impl Into<String>, profile: &'static Profile, modules: usize) -> Self {
        FleetConfig {
            command: FotadlArgs::new(url),
            modules,
            concurrency: modules.clamp(1, 256),
            deadline: Duration::from_secs(300),
            profile,
            settings: ModuleSettings::default(),
        }
    }

    /// Per-module download throttle in bytes per second.
    pub fn rate(mut self, bytes_per_second: Option<u64>) -> Self {
        self.settings.rate = bytes_per_second;
        self
    }

    fn module(&self) -> Result<Module, ConfigError> {
        self.settings.builder(self.profile).build()
    }
}

impl TryFrom<FleetArgs> for FleetConfig {
    type Error = FleetError;

    fn try_from(args: FleetArgs) -> Result<Self, FleetError> {
        let profile = Profile::select(args.model.as_deref(), args.profile.as_deref())?;
        if args.modules == 0 || args.concurrency == Some(0) {
            return Err(FleetError::Empty);
        }
        if args.modules > MAX_MODULES {
            return Err(FleetError::TooMany(args.modules));
        }
        let mut config = FleetConfig::new(args.url, profile, args.modules).rate(args.rate);
        if let Some(c) = args.concurrency {
            config.concurrency = c.min(args.modules);
        }
        config.deadline = Duration::from_secs(args.deadline_secs);
        config.settings.version = args.module_version;
        config.settings.faults = args.faults;
        config.settings.timeout = Duration::from_secs(args.timeout_secs.max(1));
        config.settings.time_scale = args.time_scale;
        // Build one module now so a bad setting is a usage error.
        config.module()?;
        Ok(config)
    }
}

/// The outcome of a fleet run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetReport {
    /// Modules started.
    pub modules: usize,
    /// Modules per final code: the `FTPEND`/`HTTPEND` code when the
    /// download failed, else the last `END` code; `ERROR` when the command
    /// was refused; `unfinished` when the deadline came first.
    pub codes: BTreeMap<String, usize>,
    /// Median download time (command to `FTPEND`/`HTTPEND`), ms.
    pub p50_ms: u64,
    /// 95th-percentile download time, ms.
    pub p95_ms: u64,
    /// Longest download time, ms.
    pub max_ms: u64,
    /// Package bytes received by all modules together.
    pub bytes: u64,
    /// Wall-clock time of the whole run, ms.
    pub elapsed_ms: u64,
}

impl FleetReport {
    /// Modules that ended with `code` (`"0"`, `"601"`, `"ERROR"`, …).
    pub fn count(&self, code: &str) -> usize {
        self.codes.get(code).copied().unwrap_or(0)
    }
}

/// The final code of one module's run (see [`FleetReport::codes`]).
fn final_code(t: &Transcript) -> String {
    let s = &t.summary;
    if s.response == Some(AtResult::Error) {
        return "ERROR".into();
    }
    match (s.download_code, s.upgrade_codes.last()) {
        (Some(d), _) if d != 0 => d.to_string(),
        (_, Some(u)) => u.to_string(),
        (Some(d), None) => d.to_string(),
        (None, None) => "unfinished".into(),
    }
}

/// Milliseconds from the command to the end of the download, if it ended.
fn download_ms(t: &Transcript) -> Option<u64> {
    t.events.iter().find_map(|e| match e.event {
        Event::Urc(Urc::FtpEnd(_) | Urc::HttpEnd(_)) => {
            Some(u64::try_from(e.at.as_millis()).unwrap_or(u64::MAX))
        }
        _ => None,
    })
}

/// The value at quantile `q` (0–1) of sorted `v` (nearest rank); 0 when
/// empty.
fn quantile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Runs the fleet and sums it up. Modules still running at the deadline
/// are stopped and counted as `unfinished`.
///
/// # Errors
/// [`ConfigError`] when a module cannot be built (checked up front by
/// `TryFrom<FleetArgs>`).
pub async fn run_fleet(config: &FleetConfig) -> Result<FleetReport, ConfigError> {
    let started = Instant::now();
    // A deadline too far to represent means "no deadline" (a century).
    let deadline = started
        .checked_add(config.deadline)
        .unwrap_or_else(|| started + Duration::from_secs(100 * 365 * 24 * 3600));
    let gate = Arc::new(Semaphore::new(
        config.concurrency.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let at_args = config.command.to_at_args();
    let mut set = JoinSet::new();
    for _ in 0..config.modules {
        let module = config.module()?;
        let gate = Arc::clone(&gate);
        let at_args = at_args.clone();
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            Some(module.fotadl(&at_args).transcript().await)
        });
    }
    let mut codes = BTreeMap::new();
    let mut times = Vec::new();
    let mut bytes = 0u64;
    let mut done = 0usize;
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok(Some(t)))) => {
                done += 1;
                *codes.entry(final_code(&t)).or_insert(0) += 1;
                times.extend(download_ms(&t));
                bytes += t.summary.bytes_received;
            }
            // A panicked or cancelled module task: count it as unfinished.
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_deadline) => {
                set.abort_all();
                break;
            }
        }
    }
    let unfinished = config.modules - done;
    if unfinished > 0 {
        codes.insert("unfinished".into(), unfinished);
    }
    times.sort_unstable();
    Ok(FleetReport {
        modules: config.modules,
        codes,
        p50_ms: quantile(&times, 0.50),
        p95_ms: quantile(&times, 0.95),
        max_ms: times.last().copied().unwrap_or(0),
        bytes,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Runs `qfota-serve fleet`: prints the report and exits 0 when every
/// module ran to its end (whatever its code), 1 when the deadline cut the
/// run short, 2 on usage errors.
pub async fn run(args: FleetArgs) -> ExitCode {
    let json = args.json;
    let config = match FleetConfig::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qfota-serve fleet: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match run_fleet(&config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("qfota-serve fleet: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("qfota-serve fleet: {e}"),
        }
    } else {
        print!("{}", render(&report));
    }
    if report.count("unfinished") == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The report as text.
pub fn render(r: &FleetReport) -> String {
    let mut out = format!("{} modules in {} ms\n", r.modules, r.elapsed_ms);
    for (code, n) in &r.codes {
        out.push_str(&format!("  code {code:>10}: {n}\n"));
    }
    out.push_str(&format!(
        "download time p50 {} ms, p95 {} ms, max {} ms\nbytes received {}\n",
        r.p50_ms, r.p95_ms, r.max_ms, r.bytes
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.95), 95);
        assert_eq!(quantile(&[7], 0.95), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn fleet_sizes_are_bounded() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            args: FleetArgs,
        }
        let parse = |extra: &[&str]| {
            let mut argv = vec!["fleet", "http://127.0.0.1:1/a.zip"];
            argv.extend_from_slice(extra);
            FleetConfig::try_from(Wrap::parse_from(argv).args)
        };
        assert!(matches!(parse(&["--modules", "0"]), Err(FleetError::Empty)));
        assert!(matches!(
            parse(&["--modules", "100001"]),
            Err(FleetError::TooMany(_))
        ));
        let c = parse(&["--modules", "3", "--concurrency", "18446744073709551615"]).unwrap();
        assert_eq!(c.concurrency, 3);
    }

    #[tokio::test]
    async fn a_refused_url_counts_as_error_for_every_module() {
        let profile = Profile::by_name("eg06xk-dfota").unwrap();
        // 100-byte URL limit (seed 002): every module answers ERROR.
        let url = format!("http://127.0.0.1:1/{}.zip", "a".repeat(100));
        let report = run_fleet(&FleetConfig::new(url, profile, 5)).await.unwrap();
        assert_eq!(report.count("ERROR"), 5);
        assert_eq!(report.bytes, 0);
        assert!(!render(&report).is_empty());
    }
}

//! Fleet runs: many simulated modules updating from one server at once,
//! each over its own real sockets and, optionally, throttled like a
//! cellular link — to see how a server (and a fault rule) behaves when a
//! whole fleet updates, and read the outcome as counts per final code.
//!
//! [`run_fleet`] runs [`FleetConfig::modules`] [`Module`]s with at most
//! [`FleetConfig::concurrency`] in flight, bounded by
//! [`FleetConfig::deadline`], and sums them up in a [`FleetReport`]:
//! modules per final code with the causes behind the failing ones,
//! p50/p95/p99/max download time, p50/p95/p99 time to first byte, bytes
//! received and throughput. [`run_fleet_observed`]
//! also reports each module as it ends ([`FleetProgress`]), for a progress
//! display.
//! The engine only: `qfota-serve fleet` (flags, the printed report) lives
//! in the command-line module, `src/cli/fleet.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::profile::Profile;
use crate::sim::command::FotadlArgs;
use crate::sim::module::{ConfigError, Module, ModuleSettings};
use crate::sim::transcript::Transcript;
use crate::sim::urc::{AtResult, Event, PowerOff, Urc};

/// Most modules one fleet run should start: each is a task and a buffer,
/// so an unbounded count exhausts memory. `qfota-serve fleet` refuses more.
pub const MAX_MODULES: usize = 100_000;

/// Settings of a fleet run (plain data; the command line checks its flags
/// into one once, at start-up).
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
    /// Every module's family.
    pub profile: &'static Profile,
    /// Every module's settings (version, faults, timeout, throttle, …).
    pub settings: ModuleSettings,
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

    /// One module of the fleet.
    ///
    /// # Errors
    /// [`ConfigError`] when the settings do not fit the profile.
    pub fn module(&self) -> Result<Module, ConfigError> {
        self.settings.builder(self.profile).build()
    }
}

/// The outcome of a fleet run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetReport {
    /// Modules started.
    pub modules: usize,
    /// Modules per final code: the `FTPEND`/`HTTPEND` code when the
    /// download failed, else the last `END` code; `ERROR` when the command
    /// was refused; `power-cut` when a `power-cut` / `download-power-cut`
    /// fault ended the run with no `END` (the download lost, or an `ec200`
    /// whose firmware the cut ruined); `unfinished` when the deadline came
    /// first.
    pub codes: BTreeMap<String, usize>,
    /// Median download time (command to `FTPEND`/`HTTPEND`), ms; `None`
    /// (JSON `null`) when no download ended.
    pub p50_ms: Option<u64>,
    /// 95th-percentile download time, ms (`None`: as `p50_ms`).
    pub p95_ms: Option<u64>,
    /// 99th-percentile download time, ms (`None`: as `p50_ms`).
    pub p99_ms: Option<u64>,
    /// Longest download time, ms (`None`: as `p50_ms`).
    pub max_ms: Option<u64>,
    /// Downloads the download times are taken over (those that ended
    /// before the deadline); 0: none, and the times are `None`.
    pub timed: usize,
    /// Median time to first byte (the download's start URC to its first
    /// package byte: connect, login, request and the server's answer), ms,
    /// over every module that got a byte, those the deadline stopped
    /// included; `None` (JSON `null`) when none did.
    pub ttfb_p50_ms: Option<u64>,
    /// 95th-percentile time to first byte, ms (`None`: as `ttfb_p50_ms`).
    pub ttfb_p95_ms: Option<u64>,
    /// 99th-percentile time to first byte, ms (`None`: as `ttfb_p50_ms`).
    pub ttfb_p99_ms: Option<u64>,
    /// Modules that got a first byte, those the deadline stopped included:
    /// the time-to-first-byte figures are taken over them (0: none, and
    /// those figures are `None`).
    pub first_bytes: usize,
    /// Package bytes received by all modules together, those stopped at
    /// the deadline included.
    pub bytes: u64,
    /// Wall-clock time of the whole run, ms.
    pub elapsed_ms: u64,
    /// `bytes` over the run's wall-clock time, bytes per second.
    pub throughput_bytes_per_s: u64,
    /// Per final code other than `0`: the most frequent causes (at most
    /// [`TOP_CAUSES`], most frequent first) — what the simulator knows of
    /// why (`download: connection reset by peer`), which a real module
    /// does not print.
    pub causes: BTreeMap<String, Vec<Cause>>,
}

/// How many causes [`FleetReport::causes`] keeps per code.
pub const TOP_CAUSES: usize = 3;

/// One cause behind a final code, and how many modules it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cause {
    /// The simulator's notes of the run, `; `-separated (`no cause
    /// recorded` when it noted nothing).
    pub cause: String,
    /// Modules that ended this way.
    pub modules: usize,
}

/// Where a fleet run stands, handed to [`run_fleet_observed`]'s observer
/// each time a module ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetProgress {
    /// Modules that ended so far.
    pub done: usize,
    /// Modules in the run.
    pub modules: usize,
    /// Of those ended, how many with a final code other than `0`.
    pub failed: usize,
    /// Package bytes received so far, all modules together.
    pub bytes: u64,
    /// The final code of the module that just ended.
    pub code: String,
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
    let power_cut = t.events.iter().any(|e| {
        matches!(
            e.event,
            Event::PowerOff(PowerOff::PowerCut | PowerOff::DownloadPowerCut)
        )
    });
    match (s.download_code, s.upgrade_codes.last()) {
        (Some(d), _) if d != 0 => d.to_string(),
        (_, Some(u)) => u.to_string(),
        // The run ended with no END: a power cut lost the download, or
        // ruined an ec200's firmware (SPEC §4) — no success.
        _ if power_cut => "power-cut".into(),
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
fn quantile(v: &[u64], q: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// The cause of one module's final code: its notes (see [`Cause`]).
fn cause(t: &Transcript) -> String {
    if t.summary.notes.is_empty() {
        "no cause recorded".into()
    } else {
        t.summary.notes.join("; ")
    }
}

/// The [`TOP_CAUSES`] most frequent causes per code, most frequent first
/// (ties by text).
fn top_causes(counts: BTreeMap<String, BTreeMap<String, usize>>) -> BTreeMap<String, Vec<Cause>> {
    counts
        .into_iter()
        .map(|(code, causes)| {
            let mut list: Vec<Cause> = causes
                .into_iter()
                .map(|(cause, modules)| Cause { cause, modules })
                .collect();
            list.sort_by(|a, b| b.modules.cmp(&a.modules).then(a.cause.cmp(&b.cause)));
            list.truncate(TOP_CAUSES);
            (code, list)
        })
        .collect()
}

/// What the fleet keeps of each started module besides its transcript.
struct Probe {
    /// Package bytes received so far.
    received: Arc<std::sync::atomic::AtomicU64>,
    /// Its time to first byte.
    first_byte: crate::sim::state::FirstByteProbe,
}

/// Runs the fleet and sums it up. Modules still running at the deadline
/// are stopped and counted as `unfinished`.
///
/// # Errors
/// [`ConfigError`] when a module cannot be built (the command line checks
/// this up front with [`FleetConfig::module`]).
pub async fn run_fleet(config: &FleetConfig) -> Result<FleetReport, ConfigError> {
    run_fleet_observed(config, |_| {}).await
}

/// [`run_fleet`], calling `observe` each time a module ends.
///
/// # Errors
/// As [`run_fleet`].
pub async fn run_fleet_observed(
    config: &FleetConfig,
    mut observe: impl FnMut(&FleetProgress),
) -> Result<FleetReport, ConfigError> {
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
    // Each module's received-bytes counter and time to first byte, once
    // it has started: a module the deadline stops counts what it got, and
    // when its first byte came.
    let probes: Vec<Arc<std::sync::OnceLock<Probe>>> =
        (0..config.modules).map(|_| Arc::default()).collect();
    for (i, probe) in probes.iter().enumerate() {
        let module = config.module()?;
        let gate = Arc::clone(&gate);
        let at_args = at_args.clone();
        let probe = Arc::clone(probe);
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let run = module.fotadl(&at_args);
            let _ = probe.set(Probe {
                received: run.received_counter(),
                first_byte: run.first_byte_probe(),
            });
            Some((i, run.transcript().await))
        });
    }
    let mut codes = BTreeMap::new();
    let mut times = Vec::new();
    let mut first_bytes = Vec::new();
    let mut causes: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    // Bytes of the modules ended so far, for the progress.
    let mut received = 0u64;
    let mut done = 0usize;
    let mut failed = 0usize;
    let mut collected = vec![false; config.modules];
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok(Some((i, t))))) => {
                // Its figures are in the transcript.
                collected[i] = true;
                done += 1;
                let code = final_code(&t);
                *codes.entry(code.clone()).or_insert(0) += 1;
                if code != "0" {
                    failed += 1;
                    *causes
                        .entry(code.clone())
                        .or_default()
                        .entry(cause(&t))
                        .or_insert(0) += 1;
                }
                times.extend(download_ms(&t));
                first_bytes.extend(t.summary.first_byte_ms);
                received += t.summary.bytes_received;
                observe(&FleetProgress {
                    done,
                    modules: config.modules,
                    failed,
                    bytes: received,
                    code,
                });
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
    let bytes: u64 = probes
        .iter()
        .filter_map(|p| p.get())
        .map(|p| p.received.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    // The modules the deadline stopped that had a first byte: theirs
    // counts too.
    let uncollected = probes
        .iter()
        .zip(&collected)
        .filter(|(_, collected)| !**collected);
    first_bytes.extend(
        uncollected
            .filter_map(|(p, _)| p.get()?.first_byte.ttfb())
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
    );
    times.sort_unstable();
    first_bytes.sort_unstable();
    let elapsed = started.elapsed();
    let throughput = (u128::from(bytes) * 1000) / elapsed.as_millis().max(1);
    Ok(FleetReport {
        modules: config.modules,
        codes,
        p50_ms: quantile(&times, 0.50),
        p95_ms: quantile(&times, 0.95),
        p99_ms: quantile(&times, 0.99),
        max_ms: times.last().copied(),
        timed: times.len(),
        ttfb_p50_ms: quantile(&first_bytes, 0.50),
        ttfb_p95_ms: quantile(&first_bytes, 0.95),
        ttfb_p99_ms: quantile(&first_bytes, 0.99),
        first_bytes: first_bytes.len(),
        bytes,
        elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        throughput_bytes_per_s: u64::try_from(throughput).unwrap_or(u64::MAX),
        causes: top_causes(causes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.95), Some(95));
        assert_eq!(quantile(&[7], 0.95), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[tokio::test]
    async fn a_refused_url_counts_as_error_for_every_module() {
        let profile = Profile::by_name("eg06xk-dfota").unwrap();
        // 100-byte URL limit (seed 002): every module answers ERROR.
        let url = format!("http://127.0.0.1:1/{}.zip", "a".repeat(100));
        let mut seen = Vec::new();
        let report = run_fleet_observed(&FleetConfig::new(url, profile, 5), |p| {
            seen.push((p.done, p.failed, p.code.clone()))
        })
        .await
        .unwrap();
        assert_eq!(report.count("ERROR"), 5);
        assert_eq!(report.bytes, 0);
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[4], (5, 5, "ERROR".to_string()));
        let causes = &report.causes["ERROR"];
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].modules, 5);
        assert!(causes[0].cause.starts_with("ERROR: "), "{causes:?}");
    }

    #[test]
    fn causes_keep_the_most_frequent_per_code() {
        let counts = BTreeMap::from([(
            "601".to_string(),
            BTreeMap::from([
                ("a".to_string(), 1),
                ("b".to_string(), 5),
                ("c".to_string(), 2),
                ("d".to_string(), 2),
            ]),
        )]);
        let top = top_causes(counts);
        let names: Vec<(&str, usize)> = top["601"]
            .iter()
            .map(|c| (c.cause.as_str(), c.modules))
            .collect();
        assert_eq!(names, [("b", 5), ("c", 2), ("d", 2)]);
    }
}

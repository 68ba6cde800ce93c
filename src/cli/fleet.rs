//! `qfota-serve fleet <URL> --modules N`: run many simulated modules
//! against one URL ([`crate::sim::fleet`]) and print the report — modules
//! per final code, p50/p95/p99/max download time, p50/p95/p99 time to
//! first byte, bytes received and throughput — as text or one JSON object. Exit 0 when every module ran to its end (whatever its
//! code), 1 when the deadline cut the run short, 2 on usage errors, 130
//! after SIGINT or SIGTERM.
//!
//! Raw flags ([`FleetArgs`], environment `QFOTA_FLEET_*`) become a checked
//! [`FleetConfig`] once, through [`FleetArgs::into_config`]; [`run`] then
//! only executes. While it runs, stderr shows progress: a live bar
//! (indicatif) on a terminal, else a plain line at every tenth of the
//! modules ([`Progress`]).

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::module_args::{FleetEnv, ModuleArgs, UsageError, usage_exit};
use crate::sim::fleet::{FleetConfig, FleetProgress, FleetReport, MAX_MODULES, run_fleet_observed};

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
    /// Every module (its `--version` is checked against the package name,
    /// SPEC §5; a zero `--timeout-secs` counts as 1).
    #[command(flatten)]
    pub module: ModuleArgs<FleetEnv>,
    /// Per-module download throttle, bytes per second (a cellular link:
    /// tens of kB/s) [default: unthrottled].
    #[arg(long, env = "QFOTA_FLEET_RATE", value_name = "BYTES_PER_S")]
    pub rate: Option<u64>,
    /// Stop waiting after this many seconds; modules not done by then are
    /// counted as `unfinished`.
    #[arg(
        long,
        env = "QFOTA_FLEET_DEADLINE_SECS",
        default_value_t = 300,
        value_name = "SECS",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub deadline_secs: u64,
    /// Print the report as one JSON object.
    #[arg(long, env = "QFOTA_FLEET_JSON")]
    pub json: bool,
}

impl FleetArgs {
    /// The fleet these flags describe, checked: at least one module and
    /// one in flight, at most [`MAX_MODULES`], and a module that builds.
    ///
    /// # Errors
    /// [`UsageError`] naming the flag at fault.
    pub fn into_config(self) -> Result<FleetConfig, UsageError> {
        let profile = self.module.profile()?;
        if self.modules == 0 || self.concurrency == Some(0) {
            return Err(UsageError::EmptyFleet);
        }
        if self.modules > MAX_MODULES {
            return Err(UsageError::TooManyModules(self.modules));
        }
        let mut config = FleetConfig::new(self.url, profile, self.modules);
        if let Some(c) = self.concurrency {
            config.concurrency = c.min(self.modules);
        }
        config.deadline = Duration::from_secs(self.deadline_secs);
        config.settings = self.module.into_settings();
        config.settings.timeout = config.settings.timeout.max(Duration::from_secs(1));
        config.settings.rate = self.rate;
        // Build one module now so a bad setting is a usage error.
        config.module()?;
        Ok(config)
    }
}

/// Runs `qfota-serve fleet`: prints the report and exits 0 when every
/// module ran to its end (whatever its code), 1 when the deadline cut the
/// run short, 2 on usage errors, 130 when SIGINT or SIGTERM stopped it
/// (no report; the modules' spooled downloads are removed).
pub async fn run(args: FleetArgs) -> ExitCode {
    let json = args.json;
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => return usage_exit("fleet", &e),
    };
    check_fd_limit(config.concurrency);
    let mut progress = Progress::new(config.modules, std::io::stderr().is_terminal());
    let stop = super::shutdown_signal();
    let run = run_fleet_observed(&config, |p| progress.update(p));
    let report = tokio::select! {
        report = run => match report {
            Ok(r) => r,
            Err(e) => return usage_exit("fleet", &e),
        },
        // The modules' tasks end with the runtime, each removing the file
        // its download was spooled to.
        () = stop => {
            progress.finish();
            errln!("qfota-serve fleet: interrupted: no report");
            return ExitCode::from(INTERRUPTED);
        }
    };
    progress.finish();
    let text = if json {
        serde_json::to_string(&report).map(|line| line + "\n")
    } else {
        Ok(render(&report))
    };
    if let Err(e) = text
        .map_err(std::io::Error::from)
        .and_then(|t| super::print_output(&t))
    {
        errln!("qfota-serve fleet: cannot write the report: {e}");
        return ExitCode::FAILURE;
    }
    if report.count("unfinished") == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Exit status after SIGINT or SIGTERM (128 + SIGINT, as a shell reports
/// a command Ctrl-C stopped).
const INTERRUPTED: u8 = 130;

/// Descriptors a module in flight may hold: an FTP download's control and
/// data connections (HTTP(S): one).
const FDS_PER_MODULE: u64 = 2;

/// Raises the descriptor limit ([`crate::cli::raise_fd_limit`]) and warns
/// when even that cannot hold `concurrency` modules in flight: modules
/// past it would fail to connect ("Too many open files") and be counted as
/// the server's failures.
fn check_fd_limit(concurrency: usize) {
    let Some(limit) = crate::cli::raise_fd_limit() else {
        return;
    };
    let need = concurrency as u64 * FDS_PER_MODULE + 64;
    if limit < need {
        errln!(
            "qfota-serve fleet: warning: the file descriptor limit ({limit}) cannot hold              {concurrency} modules in flight (about {need} needed); modules past it fail with              \"Too many open files\", which is no fault of the server: raise it (ulimit -n)              or lower --concurrency"
        );
    }
}

/// How a fleet run shows its progress on stderr.
#[derive(Debug)]
pub enum Progress {
    /// A live bar, redrawn in place (stderr is a terminal).
    Bar(ProgressBar),
    /// A plain line each time another tenth of the modules ended (stderr
    /// is a file or a pipe: no control characters in logs).
    Lines {
        /// Modules in the run.
        modules: usize,
        /// Tenths already reported.
        tenths: usize,
    },
}

impl Progress {
    /// A bar when `terminal`, else plain lines.
    pub fn new(modules: usize, terminal: bool) -> Progress {
        if !terminal {
            return Progress::Lines { modules, tenths: 0 };
        }
        let bar = ProgressBar::with_draw_target(Some(modules as u64), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{bar:20}] {pos}/{len} modules · {msg} · {elapsed}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message("0 failed");
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress::Bar(bar)
    }

    /// One more module ended.
    pub fn update(&mut self, p: &FleetProgress) {
        match self {
            Progress::Bar(bar) => {
                bar.set_position(p.done as u64);
                bar.set_message(progress_text(p));
            }
            Progress::Lines { modules, tenths } => {
                let now = p.done * 10 / (*modules).max(1);
                if now > *tenths {
                    *tenths = now;
                    errln!(
                        "fleet: {}/{} modules ended, {}",
                        p.done,
                        p.modules,
                        progress_text(p)
                    );
                }
            }
        }
    }

    /// The run is over: the bar is cleared (the report follows).
    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// `3 failed · 1.18 MiB received`.
fn progress_text(p: &FleetProgress) -> String {
    format!("{} failed · {} received", p.failed, HumanBytes(p.bytes))
}

/// The report as text: a line for the run, one per final code with the
/// causes behind a non-zero one, the download-time and time-to-first-byte
/// percentiles, the bytes received and the throughput.
pub fn render(r: &FleetReport) -> String {
    let mut out = format!("{} modules in {} ms\n", r.modules, r.elapsed_ms);
    for (code, n) in &r.codes {
        let _ = writeln!(out, "  code {code:>10}: {n}");
        for cause in r.causes.get(code).into_iter().flatten() {
            let _ = writeln!(out, "      {}× {}", cause.modules, cause.cause);
        }
    }
    let times = [
        ("p50", r.p50_ms),
        ("p95", r.p95_ms),
        ("p99", r.p99_ms),
        ("max", r.max_ms),
    ];
    let first = [
        ("p50", r.ttfb_p50_ms),
        ("p95", r.ttfb_p95_ms),
        ("p99", r.ttfb_p99_ms),
    ];
    figures_line(
        &mut out,
        "download time",
        r.timed,
        "no download ended",
        &times,
    );
    let none = "no module got a byte";
    figures_line(&mut out, "time to first byte", r.first_bytes, none, &first);
    let _ = writeln!(
        out,
        "bytes received {} ({} B/s over the run)",
        r.bytes, r.throughput_bytes_per_s
    );
    out
}

/// One line of percentiles in ms (`download time p50 16 ms, p95 17 ms`),
/// or `<label> - (<none>)` when they were taken over no module (`count`).
fn figures_line(
    out: &mut String,
    label: &str,
    count: usize,
    none: &str,
    values: &[(&str, Option<u64>)],
) {
    if count == 0 {
        let _ = writeln!(out, "{label} - ({none})");
        return;
    }
    let cells: Vec<String> = values
        .iter()
        .map(|(name, ms)| match ms {
            Some(ms) => format!("{name} {ms} ms"),
            None => format!("{name} -"),
        })
        .collect();
    let _ = writeln!(out, "{label} {}", cells.join(", "));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::module_args::parse_subcommand;

    fn parse(extra: &[&str]) -> Result<FleetConfig, UsageError> {
        let mut argv = vec!["http://127.0.0.1:1/a.zip"];
        argv.extend_from_slice(extra);
        parse_subcommand::<FleetArgs>("fleet", &argv)
            .unwrap()
            .into_config()
    }

    #[test]
    fn fleet_sizes_are_bounded() {
        assert!(matches!(
            parse(&["--modules", "0"]),
            Err(UsageError::EmptyFleet)
        ));
        assert!(matches!(
            parse(&["--modules", "100001"]),
            Err(UsageError::TooManyModules(_))
        ));
        let c = parse(&["--modules", "3", "--concurrency", "18446744073709551615"]).unwrap();
        assert_eq!(c.concurrency, 3);
    }

    #[test]
    fn module_flags_reach_every_module() {
        let c = parse(&[
            "--modules",
            "2",
            "--model",
            "EC200T",
            "--version",
            "v12",
            "--rate",
            "5000",
            "--timeout-secs",
            "0",
        ])
        .unwrap();
        assert_eq!(c.profile.name, "ec200");
        assert_eq!(c.settings.version.as_deref(), Some("v12"));
        assert_eq!(c.settings.rate, Some(5000));
        assert_eq!(c.settings.timeout, Duration::from_secs(1));
        assert_eq!(c.module().unwrap().version().as_deref(), Some("v12"));
    }

    #[test]
    fn the_report_reads_as_documented() {
        let report = FleetReport {
            modules: 50,
            codes: [("0".to_string(), 49), ("701".to_string(), 1)].into(),
            p50_ms: Some(160),
            p95_ms: Some(161),
            p99_ms: Some(162),
            max_ms: Some(162),
            timed: 50,
            ttfb_p50_ms: Some(3),
            ttfb_p95_ms: Some(5),
            ttfb_p99_ms: Some(9),
            first_bytes: 50,
            bytes: 359_400,
            elapsed_ms: 1965,
            throughput_bytes_per_s: 182_900,
            causes: [(
                "701".to_string(),
                vec![crate::sim::fleet::Cause {
                    cause: "download: connection reset by peer".into(),
                    modules: 1,
                }],
            )]
            .into(),
        };
        assert_eq!(
            render(&report),
            "50 modules in 1965 ms\n  code          0: 49\n  code        701: 1\n\
             \x20     1× download: connection reset by peer\n\
             download time p50 160 ms, p95 161 ms, p99 162 ms, max 162 ms\n\
             time to first byte p50 3 ms, p95 5 ms, p99 9 ms\n\
             bytes received 359400 (182900 B/s over the run)\n"
        );
        // Stopped at the deadline, all of them: no times to give.
        let cut = FleetReport {
            codes: [("unfinished".to_string(), 50)].into(),
            timed: 0,
            p50_ms: None,
            p95_ms: None,
            p99_ms: None,
            max_ms: None,
            first_bytes: 0,
            causes: Default::default(),
            ..report
        };
        assert_eq!(
            render(&cut),
            "50 modules in 1965 ms\n  code unfinished: 50\n\
             download time - (no download ended)\ntime to first byte - (no module got a byte)\n\
             bytes received 359400 (182900 B/s over the run)\n"
        );
    }
}

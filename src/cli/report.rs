//! `qfota-serve report <LOG>...`: the campaign view of one or more download
//! logs (several replicas' logs counted together, read line by line) as a terminal table,
//! `--json`, or a static HTML page (`--html FILE`, the same page the admin
//! listener serves live), limited with `--since`/`--until`/`--package`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use globset::GlobMatcher;

use crate::campaign::read::for_each_record;
use crate::campaign::{self, CampaignBuilder, DEFAULT_RECENT, Filter};

/// `qfota-serve report <LOG>...`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Download logs (JSON lines) to read; several are merged by time.
    #[arg(required = true, value_name = "LOG")]
    pub logs: Vec<PathBuf>,
    /// Only attempts that started at or after this time: RFC 3339
    /// (2026-06-01T12:00:00Z) or a span back from now (30m, 2h, 7d).
    #[arg(long, value_name = "TIME", value_parser = parse_now_relative)]
    pub since: Option<DateTime<Utc>>,
    /// Only attempts that started before this time (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = parse_now_relative)]
    pub until: Option<DateTime<Utc>>,
    /// Only packages whose path matches this glob (`update-*.zip`, `Jun/**`).
    #[arg(long, value_name = "GLOB", value_parser = parse_glob)]
    pub package: Option<GlobMatcher>,
    /// How many recent attempts to list.
    #[arg(long, default_value_t = DEFAULT_RECENT, value_name = "N")]
    pub recent: usize,
    /// Print the campaign as JSON instead of a table.
    #[arg(long, conflicts_with = "html")]
    pub json: bool,
    /// Write the campaign as a self-contained HTML page to FILE instead of
    /// printing a table.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

fn parse_now_relative(s: &str) -> Result<DateTime<Utc>, String> {
    campaign::parse_instant(s, Utc::now())
}

fn parse_glob(s: &str) -> Result<GlobMatcher, String> {
    campaign::package_glob(s).map_err(|e| e.to_string())
}

/// Runs `qfota-serve report`: exit 0 once the view is printed or written.
/// Lines that are not records are skipped; their count goes to stderr (and
/// into the JSON / page).
///
/// # Errors
/// A log cannot be read, or the page or the output cannot be written
/// (exit 1).
pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let filter = Filter {
        since: args.since,
        until: args.until,
        package: args.package,
    };
    let mut builder = CampaignBuilder::new(filter, args.recent);
    let skipped = for_each_record(&args.logs, |r| builder.add(r))?;
    let mut c = builder.finish();
    c.skipped_lines = skipped;
    if skipped > 0 {
        let what = if skipped == 1 {
            "line that was not a record"
        } else {
            "lines that were not records"
        };
        errln!("qfota-serve: skipped {skipped} {what}");
    }
    if args.json {
        let json = serde_json::to_string_pretty(&c)?;
        super::print_output(&format!("{json}\n")).context("cannot write the report")?;
    } else if let Some(path) = &args.html {
        std::fs::write(path, campaign::html::render(&c, None))
            .with_context(|| format!("cannot write the page {}", path.display()))?;
        errln!(
            "qfota-serve: wrote {} ({} attempts, {} packages)",
            path.display(),
            c.attempts,
            c.packages.len()
        );
    } else {
        super::print_output(&campaign::text::render(&c)).context("cannot write the report")?;
    }
    Ok(ExitCode::SUCCESS)
}

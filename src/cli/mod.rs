//! The command line: one module for every subcommand, and the only place
//! that knows clap. Each subcommand's raw flags become a plain, checked
//! configuration once, at start-up (`TryFrom` / `into_config`), which the
//! library takes; its printed output lives here too.
//!
//! # Parts
//!
//! - [`Cli`] and [`Command`] (this file): the whole command line, and
//!   [`shutdown_signal`], the one shutdown source, which `main.rs` creates
//!   and passes to the long-running commands.
//! - [`serve`]: `qfota-serve [OPTIONS] <DIR>`, the default job, with
//!   [`config`]: the configuration file under the flags and `qfota-serve
//!   config`; [`check`]: `qfota-serve check <DIR | s3://…>`; [`output`]: the texts
//!   both print (listener banner, `AT+QFOTADL` lines, the check report);
//!   [`values`]: the value parsers they share.
//!   [`s3`]: its object-store and replica flags (`s3://BUCKET/PREFIX`,
//!   `--instance-id`).
//! - [`report`]: `qfota-serve report <LOG>...`, the campaign view of
//!   download logs (the model and page are [`crate::campaign`]).
//! - [`docs`]: `qfota-serve completions <SHELL>` and `qfota-serve man`.
//! - [`simulate`], [`fleet`], [`modem`]: the module-running subcommands,
//!   each flattening the one [`module_args::ModuleArgs`] block (with its
//!   own `QFOTA_SIM_*` / `QFOTA_FLEET_*` / `QFOTA_MODEM_*` variables).
//!
//! Arrows point down: this file imports the subcommand files, they import
//! [`module_args`], [`output`] and [`values`]; [`docs`] is handed the whole
//! command definition (`Cli::command()`) by `main.rs` instead of importing
//! this file.
//! Exit codes: 0 success, 1 failure, 2 usage errors.

/// `print!` to stdout that never panics: a closed pipe
/// (`qfota-serve … | head`) must not kill a server or a running module.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout();
        let _ = write!(stdout, $($arg)*);
        let _ = stdout.flush();
    }};
}

/// Writes `text` to stdout and flushes it: the output a command exists
/// for (`report`, `check`, `config`, `fleet`'s report), where a lost write
/// must not end in exit 0 (`out!` is for a server's banner, which must
/// never stop it). A reader that went away on purpose (`… | head`: a
/// broken pipe) is no error.
///
/// # Errors
/// Any other write error (a full disk, `/dev/full`): the output is
/// incomplete.
pub fn print_output(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// `eprintln!` that never panics (see `out!`).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that never panics (see `out!`).
macro_rules! err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

pub mod check;
pub mod config;
pub mod docs;
pub mod fleet;
pub mod modem;
pub mod module_args;
pub mod output;
pub mod ready;
pub mod report;
pub mod s3;
pub mod serve;
pub mod simulate;
pub mod values;

use clap::{Parser, Subcommand};

use crate::cli::check::CheckArgs;
use crate::cli::config::ConfigArgs;
use crate::cli::docs::CompletionsArgs;
use crate::cli::fleet::FleetArgs;
use crate::cli::modem::ModemArgs;
use crate::cli::report::ReportArgs;
use crate::cli::serve::ServeArgs;
use crate::cli::simulate::SimulateArgs;

/// `qfota-serve`: host firmware packages for Quectel FOTA over FTP, HTTP
/// and HTTPS, log every download attempt, and validate every package.
#[derive(Debug, Parser)]
#[command(
    name = "qfota-serve",
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// Another job than serving.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Serving options (the default job).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Jobs other than serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the packages in a folder or under an s3:// prefix and print
    /// the report; exit 1 when any is invalid or misfits a profile named
    /// with --profile.
    Check(CheckArgs),
    /// Simulate a module's FOTA download and upgrade (`AT+QFOTADL`) against
    /// a server, printing the AT transcript; exit 0 on `END,0`.
    Simulate(SimulateArgs),
    /// Run many simulated modules against one URL and print the outcome
    /// per final code, download-time percentiles and bytes received.
    Fleet(FleetArgs),
    /// Run a virtual modem: the simulated module behind an AT port on a
    /// pseudo-terminal and/or TCP, until Ctrl-C.
    Modem(ModemArgs),
    /// Summarize download logs as a campaign: per package attempts,
    /// modules, outcomes, bytes, p50/p95 duration, top failure reasons, and
    /// the most recent attempts — as a table, JSON or an HTML page.
    Report(ReportArgs),
    /// Print the effective serving configuration (flags > environment >
    /// --config file > defaults) as TOML, passwords masked.
    Config(ConfigArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Print the manual page (roff).
    Man,
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM: the one shutdown source of
/// every long-running command (serve, modem). The handlers are installed
/// when this is called, not when the future is first polled, so a signal
/// sent as soon as start-up is announced (banner, `--ready-json`) stops
/// the process cleanly instead of killing it. Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        match (int, term) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one, as nginx's
/// `worker_rlimit_nofile` and Go's runtime do (`setrlimit(2)`), for the
/// commands that open many sockets (`serve`, `fleet`); the limit in force
/// afterwards, `None` when it is unlimited.
pub(crate) fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let Rlimit {
        current: Some(soft),
        maximum,
    } = getrlimit(Resource::Nofile)
    else {
        return None;
    };
    Some(match maximum {
        Some(hard) if soft < hard => {
            let raised = Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                hard
            } else {
                soft
            }
        }
        // Linux never reports an unlimited hard limit for descriptors
        // (it is at most fs.nr_open).
        _ => soft,
    })
}

/// The error and its causes, `: `-separated, each said once: a cause
/// whose text its parent's message already ends with (an error that both
/// prints and returns its source, as `thiserror`'s `{source}` does) is not
/// repeated.
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The folder and a protocol are required once the configuration file
    /// is applied.
    fn resolved(args: &[&str]) -> Result<config::Effective, config::ConfigError> {
        let matches = Cli::command().try_get_matches_from(args).unwrap();
        config::resolve(&matches, true)
    }

    #[test]
    fn serve_needs_a_protocol_and_a_dir() {
        assert!(resolved(&["qfota-serve", "pk"]).is_err());
        assert!(resolved(&["qfota-serve", "--ftp", "21"]).is_err());
        assert!(resolved(&["qfota-serve", "--ftp", "21", "pk"]).is_ok());
        let cli =
            Cli::try_parse_from(["qfota-serve", "--ftp", "21", "--user", "a:b", "pk"]).unwrap();
        assert_eq!(cli.serve.ftp, Some(21));
        assert_eq!(cli.serve.users.len(), 1);
        let cli =
            Cli::try_parse_from(["qfota-serve", "check", "pk", "--profile", "ec200"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Check(_))));
        assert!(Cli::try_parse_from(["qfota-serve", "check", "pk", "--profile", "nope"]).is_err());
        let cli = Cli::try_parse_from([
            "qfota-serve",
            "--http",
            "0",
            "--fault",
            "drop-after=50%,path=/big-*.zip",
            "pk",
        ])
        .unwrap();
        assert_eq!(cli.serve.faults.len(), 1);
        let err = Cli::try_parse_from([
            "qfota-serve",
            "--http",
            "0",
            "--fault",
            "drop-after=x",
            "pk",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("drop-after=x"), "{err}");
    }

    /// The shared module options keep each subcommand's documented
    /// variables: `QFOTA_SIM_*`, `QFOTA_FLEET_*`, `QFOTA_MODEM_*`.
    #[test]
    fn module_options_read_each_subcommands_own_environment() {
        let cli = Cli::command();
        for (sub, prefix) in [
            ("simulate", "QFOTA_SIM_"),
            ("fleet", "QFOTA_FLEET_"),
            ("modem", "QFOTA_MODEM_"),
        ] {
            let cmd = cli.find_subcommand(sub).unwrap();
            for (id, var) in [
                ("model", "MODEL"),
                ("profile", "PROFILE"),
                ("module_version", "VERSION"),
                ("faults", "FAULT"),
                ("timeout_secs", "TIMEOUT_SECS"),
                ("time_scale", "TIME_SCALE"),
                ("free_space", "FREE_SPACE"),
                ("ca", "CA"),
            ] {
                let arg = cmd.get_arguments().find(|a| a.get_id() == id);
                let env = arg.and_then(|a| a.get_env()).unwrap();
                assert_eq!(env, format!("{prefix}{var}").as_str(), "{sub} {id}");
            }
        }
    }
}

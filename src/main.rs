//! The `qfota-serve` binary: parses the command line, applies the
//! configuration file, sets up logging and dispatches to the subcommand in
//! [`qfota_serve::cli`], handing the long-running ones the shutdown signal.
//! Exit codes: 0 success, 1 failure (a failed check, a server that cannot
//! start), 2 usage errors (from clap, the configuration file, or a
//! subcommand's own checks).

use std::io::Write as _;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use qfota_serve::cli::config::{self, ConfigError};
use qfota_serve::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let log_writer = init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            let _ = writeln!(
                std::io::stderr(),
                "qfota-serve: cannot start the runtime: {err}"
            );
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Check(args)) => cli::check::run(args).await,
            Some(Command::Simulate(args)) => Ok(cli::simulate::run(args).await),
            Some(Command::Fleet(args)) => Ok(cli::fleet::run(args).await),
            Some(Command::Modem(args)) => Ok(cli::modem::run(args, cli::shutdown_signal()).await),
            Some(Command::Report(args)) => cli::report::run(args),
            Some(Command::Completions(args)) => Ok(cli::docs::completions(&args, Cli::command())),
            Some(Command::Man) => Ok(cli::docs::man(Cli::command())?),
            Some(Command::Config(_)) => {
                let sub = matches.subcommand_matches("config").unwrap_or(&matches);
                Ok(config::run(sub).unwrap_or_else(config_error))
            }
            None => match config::resolve(&matches, true) {
                Ok(eff) => cli::serve::run(eff.args, cli::shutdown_signal()).await,
                Err(err) => Ok(config_error(err)),
            },
        }
    });
    // What the tasks log while they are torn down (the records FTP
    // sessions owe, the download log's last words) still reaches the log
    // writer; then the lines it queued go out before the last word.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    drop(log_writer);
    match result {
        Ok(code) => code,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "qfota-serve: {}", cli::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// A configuration that cannot be used is a usage error (exit 2); clap's
/// own errors print in clap's format.
fn config_error(err: ConfigError) -> ExitCode {
    match err {
        ConfigError::Usage(e) => e.exit(),
        err => {
            let _ = writeln!(std::io::stderr(), "qfota-serve: {err}");
            ExitCode::from(2)
        }
    }
}

/// Log lines (`tracing`) go to stderr through a thread of their own: a
/// reader that stops draining a stderr pipe (a test harness that reads
/// only stdout) makes lines be dropped, never a download or the runtime
/// wait. The guard flushes what is queued when dropped.
fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("qfota-serve-log")
        .finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QFOTA_LOG_LEVEL").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,libunftp=warn,suppaftp=error")
            }),
        )
        .init();
    guard
}

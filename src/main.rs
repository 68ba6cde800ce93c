//! The `qfota-serve` binary: parses the command line, sets up logging and
//! dispatches to the subcommand in [`qfota_serve::cli`], handing the
//! long-running ones the shutdown signal. Exit codes: 0 success, 1 failure
//! (a failed check, a server that cannot start), 2 usage errors (from
//! clap, or a subcommand's own checks).

use std::process::ExitCode;

use clap::Parser;
use qfota_serve::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("qfota-serve: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Check(args)) => cli::check::run(args).await,
            Some(Command::Simulate(args)) => Ok(cli::simulate::run(args).await),
            Some(Command::Fleet(args)) => Ok(cli::fleet::run(args).await),
            Some(Command::Modem(args)) => Ok(cli::modem::run(args, cli::shutdown_signal()).await),
            None => cli::serve::run(cli.serve, cli::shutdown_signal()).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("qfota-serve: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QFOTA_LOG_LEVEL")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libunftp=warn")),
        )
        .init();
}

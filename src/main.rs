//! The `qfota-serve` binary: parses the command line, sets up logging and
//! calls into the library. Exit codes: 0 success, 1 failure (a failed
//! check, a server that cannot start), 2 usage errors (from clap).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use qfota_serve::cli::{self, CheckArgs, Cli, Command, ServeArgs};
use qfota_serve::serve::check_packages;

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
            Some(Command::Check(args)) => check(args).await,
            Some(Command::Simulate(args)) => Ok(qfota_serve::sim::cli::run(args).await),
            Some(Command::Fleet(args)) => Ok(qfota_serve::sim::fleet::run(args).await),
            Some(Command::Modem(args)) => Ok(qfota_serve::modem::cli::run(args).await),
            None => serve(cli.serve).await,
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

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let server = args.to_builder().start().await.context("cannot start")?;
    print!("{}", cli::banner(&server, &args.log));
    cli::shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let packages = check_packages(&args.dir, args.advertised())
        .await
        .with_context(|| format!("cannot read {}", args.dir.display()))?;
    let (report, ok) = cli::check_report(&packages, &args.profiles);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&packages.iter().map(|p| p.as_ref()).collect::<Vec<_>>())?
        );
    } else {
        print!("{report}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

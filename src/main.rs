//! The `qfota-serve` binary: parses the command line and calls the library.

use std::process::ExitCode;

use clap::Parser;

/// Host firmware packages for Quectel FOTA and simulate the module.
#[derive(Debug, Parser)]
#[command(name = "qfota-serve")]
enum Cli {
    /// Simulate a module's FOTA download and upgrade (AT+QFOTADL).
    Simulate(qfota_serve::sim::cli::SimulateArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse() {
        Cli::Simulate(args) => qfota_serve::sim::cli::run(args).await,
    }
}

//! `qfota-serve simulate`: send one `AT+QFOTADL` to a simulated module and
//! print the AT transcript (or JSON lines), exiting 0 on `END,0`, 1 on
//! `ERROR` or any failure code, 2 on usage errors.
//!
//! Raw flags ([`SimulateArgs`], environment `QFOTA_SIM_*`; the module's
//! options are the shared [`ModuleArgs`]) become a checked
//! [`SimulateConfig`] once, through `TryFrom`; [`run`] then only executes
//! and prints (the transcript on stdout, the summary on stderr). Moved here
//! from `sim::cli`: the simulator itself never sees clap.

use std::io::Write;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;

use crate::cli::module_args::{ModuleArgs, SimEnv, UsageError, usage_exit};
use crate::sim::command::{FotaUrl, FotadlArgs};
use crate::sim::fault::Fault;
use crate::sim::module::Module;
use crate::sim::transcript::{RunSummary, TimedEvent};

/// Simulate a module's FOTA download and upgrade (`AT+QFOTADL`).
///
/// Prints the AT transcript as on the wire, without `\r\n` framing: the
/// command, `OK` or `ERROR`, each `+QIND: "FOTA",…` URC and each `RDY`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Package URL: `ftp://[user[:password]@]host[:port]/file` or
    /// `http(s)://host[:port]/path`.
    #[arg(
        env = "QFOTA_SIM_URL",
        help = "Package URL: ftp://[user[:password]@]host[:port]/file, http(s)://host[:port]/path"
    )]
    pub url: String,
    /// The simulated module.
    #[command(flatten)]
    pub module: ModuleArgs<SimEnv>,
    /// ec200 <upgrade_mode>: 0 reboot before upgrading, 1 upgrade at once.
    #[arg(long, env = "QFOTA_SIM_UPGRADE_MODE", value_name = "N")]
    pub upgrade_mode: Option<u32>,
    /// ec200 <download_URC_max>: 0 or 5-100 DOWNLOADING lines.
    #[arg(long, env = "QFOTA_SIM_DOWNLOAD_URC_MAX", value_name = "N")]
    pub download_urc_max: Option<u32>,
    /// ec200 <update_URC_max>: 0 or 5-100 UPDATING lines.
    #[arg(long, env = "QFOTA_SIM_UPDATE_URC_MAX", value_name = "N")]
    pub update_urc_max: Option<u32>,
    /// Print one JSON object per line ({"t_ms","line"}), then {"summary"}.
    #[arg(long, env = "QFOTA_SIM_JSON")]
    pub json: bool,
}

/// Checked settings of one `simulate` run.
#[derive(Debug)]
pub struct SimulateConfig {
    /// The module.
    pub module: Module,
    /// The command to send.
    pub command: FotadlArgs,
    /// Print JSON lines instead of the transcript.
    pub json: bool,
}

impl TryFrom<SimulateArgs> for SimulateConfig {
    type Error = UsageError;

    fn try_from(args: SimulateArgs) -> Result<SimulateConfig, UsageError> {
        let profile = args.module.profile()?;
        if args.module.faults.contains(&Fault::DnsFail) {
            let ip_url = FotaUrl::parse(&args.url, profile)
                .is_ok_and(|url| url.host.parse::<IpAddr>().is_ok());
            if ip_url {
                return Err(UsageError::DnsFaultWithIp);
            }
        }
        Ok(SimulateConfig {
            module: args.module.into_settings().builder(profile).build()?,
            command: FotadlArgs {
                url: args.url,
                upgrade_mode: args.upgrade_mode,
                download_urc_max: args.download_urc_max,
                update_urc_max: args.update_urc_max,
            },
            json: args.json,
        })
    }
}

/// Runs `qfota-serve simulate`: prints each line as the module prints it,
/// and returns exit status 0 (`END,0`), 1 (`ERROR` or a failure code) or 2
/// (usage error, message on stderr).
pub async fn run(args: SimulateArgs) -> ExitCode {
    let config = match SimulateConfig::try_from(args) {
        Ok(config) => config,
        Err(e) => return usage_exit("simulate", &e),
    };
    let summary = execute(&config).await;
    if summary.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn execute(config: &SimulateConfig) -> RunSummary {
    let mut run = config.module.fotadl(&config.command.to_at_args());
    let mut out = std::io::stdout();
    // Output errors (a closed pipe) must not stop the module mid-upgrade.
    let mut print = |at: Duration, line: &str| {
        let _ = if config.json {
            let ms = u64::try_from(at.as_millis()).unwrap_or(u64::MAX);
            writeln!(out, "{}", serde_json::json!({ "t_ms": ms, "line": line }))
        } else {
            writeln!(out, "{line}")
        };
        let _ = out.flush();
    };
    print(Duration::ZERO, run.command_line());
    let mut events = Vec::new();
    while let Some(event) = run.next().await {
        let at = run.started().elapsed();
        if let Some(line) = event.line() {
            print(at, &line);
        }
        events.push(TimedEvent { at, event });
    }
    let summary = run.summarize(&events);
    if config.json {
        let _ = writeln!(out, "{}", serde_json::json!({ "summary": &summary }));
        let _ = out.flush();
    } else {
        eprintln!(
            "simulate: profile {}, download {}, upgrade {:?}, version {} -> {}",
            summary.profile,
            summary
                .download_code
                .map_or_else(|| "-".to_string(), |c| c.to_string()),
            summary.upgrade_codes,
            summary.version_before.as_deref().unwrap_or("?"),
            summary.version.as_deref().unwrap_or("?"),
        );
        for note in &summary.notes {
            eprintln!("simulate: {note}");
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::module_args::parse_subcommand;

    fn parse(argv: &[&str]) -> Result<SimulateArgs, clap::Error> {
        parse_subcommand("simulate", argv)
    }

    #[test]
    fn flags_parse() {
        let args = parse(&[
            "ftp://h/p.bin",
            "--model",
            "EC200T",
            "--version",
            "v1",
            "--upgrade-mode",
            "0",
            "--download-urc-max",
            "50",
            "--fault",
            "md5",
            "--fault",
            "network-down",
            "--time-scale",
            "0",
            "--json",
        ])
        .unwrap();
        assert_eq!(args.module.faults, vec![Fault::Md5, Fault::NetworkDown]);
        let config = SimulateConfig::try_from(args).unwrap();
        assert_eq!(config.module.profile().name, "ec200");
        assert_eq!(config.module.version().as_deref(), Some("v1"));
        assert_eq!(config.command.to_at_args(), r#""ftp://h/p.bin",0,50"#);
        assert!(config.json);
    }

    /// The binary's top-level command has `--version`; `simulate --version
    /// <V>` must still mean the module's version.
    #[test]
    fn wires_as_a_subcommand_beside_a_version_flag() {
        let args = parse(&["ftp://h/p.zip", "--version", "v12"]).unwrap();
        assert_eq!(args.module.module_version.as_deref(), Some("v12"));
    }

    #[test]
    fn default_profile_is_ec2x() {
        let config = SimulateConfig::try_from(parse(&["ftp://h/p.zip"]).unwrap()).unwrap();
        assert_eq!(config.module.profile().name, "ec2x");
        assert!(!config.json);
    }

    #[test]
    fn usage_errors() {
        assert!(parse(&["u", "--model", "EC25", "--profile", "ec2x"]).is_err());
        assert!(parse(&["u", "--fault", "nope"]).is_err());
        for argv in [
            &["ftp://h/p.zip", "--profile", "nope"][..],
            &["ftp://h/p.zip", "--model", "BG96"],
            &["ftp://h/p.zip", "--fault", "md5"],
            &[
                "ftp://h/p.zip",
                "--profile",
                "ec200",
                "--fault",
                "power-cut=50",
            ],
            &["ftp://h/p.zip", "--time-scale=-1"],
            &["ftp://h/p.zip", "--timeout-secs", "0"],
            &["ftp://127.0.0.1/p.zip", "--fault", "dns-fail"],
        ] {
            let args = parse(argv).unwrap();
            assert!(SimulateConfig::try_from(args).is_err(), "{argv:?}");
        }
        assert!(
            SimulateConfig::try_from(
                parse(&["ftp://localhost/p.zip", "--fault", "dns-fail"]).unwrap()
            )
            .is_ok()
        );
    }
}

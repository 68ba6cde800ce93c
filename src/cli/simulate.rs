//! `qfota-serve simulate`: send one `AT+QFOTADL` to a simulated module and
//! print the AT transcript (or JSON lines), exiting 0 on `END,0`, 1 on
//! `ERROR` or any failure code, 2 on usage errors. `--local-file` first
//! stores a package in the module's UFS (local-file FOTA, SPEC §9);
//! `--uart-file` sends one over the AT port (`ec200`'s `FILE:<length>`).
//!
//! Raw flags ([`SimulateArgs`], environment `QFOTA_SIM_*`; the module's
//! options are the shared [`ModuleArgs`]) become a checked
//! [`SimulateConfig`] once, through `TryFrom`; [`run`] then only executes
//! and prints (the transcript on stdout, the summary on stderr). Moved here
//! from `sim::cli`: the simulator itself never sees clap. On a terminal,
//! stderr also shows the download's progress (bytes received, rate) while
//! the run goes on (`RunProgress`).

use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::module_args::{ModuleArgs, SimEnv, UsageError, usage_exit};
use crate::sim::command::{FotaUrl, FotadlArgs, FotadlCommand, Source};
use crate::sim::fault::Fault;
use crate::sim::module::{FotaRun, Module};
use crate::sim::transcript::{RunSummary, TimedEvent};
use crate::sim::urc::{Event, Urc};

/// Simulate a module's FOTA download and upgrade (`AT+QFOTADL`).
///
/// Prints the AT transcript as on the wire, without `\r\n` framing: the
/// command, `OK` or `ERROR`, each `+QIND: "FOTA",…` URC and each `RDY`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Package URL: `ftp://[user[:password]@]host[:port]/file` or
    /// `http(s)://host[:port]/path`, or the module's local path
    /// (`/data/ufs/x.zip`, …) with `--local-file`; none with `--uart-file`.
    #[arg(
        env = "QFOTA_SIM_URL",
        required_unless_present = "uart_file",
        help = "Package URL: ftp://[user[:password]@]host[:port]/file, http(s)://host[:port]/path; \
                or the module's local path (/data/ufs/x.zip, ...) with --local-file"
    )]
    pub url: Option<String>,
    /// Store this package file in the module's file system (UFS) under the
    /// name in the local path, then send `AT+QFOTADL="<local path>"`.
    #[arg(
        long,
        env = "QFOTA_SIM_LOCAL_FILE",
        value_name = "PKG",
        requires = "url",
        conflicts_with = "uart_file"
    )]
    pub local_file: Option<PathBuf>,
    /// ec200: send this package over the AT port,
    /// `AT+QFOTADL="FILE:<length>"` (with the URC options below).
    #[arg(
        long,
        env = "QFOTA_SIM_UART_FILE",
        value_name = "PKG",
        conflicts_with = "url"
    )]
    pub uart_file: Option<PathBuf>,
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
    /// `--uart-file`: the package bytes to send after `FILESTART`.
    pub uart_bytes: Option<Vec<u8>>,
    /// Print JSON lines instead of the transcript.
    pub json: bool,
}

/// Reads a package file given on the command line.
fn read_package(path: PathBuf) -> Result<Vec<u8>, UsageError> {
    std::fs::read(&path).map_err(|source| UsageError::Package { path, source })
}

impl TryFrom<SimulateArgs> for SimulateConfig {
    type Error = UsageError;

    fn try_from(args: SimulateArgs) -> Result<SimulateConfig, UsageError> {
        let profile = args.module.profile()?;
        let uart_bytes = args.uart_file.map(read_package).transpose()?;
        let url = match (&uart_bytes, args.url) {
            (Some(bytes), _) => format!("FILE:{}", bytes.len()),
            (None, Some(url)) => url,
            // clap requires one of them.
            (None, None) => String::new(),
        };
        if args.module.faults.contains(&Fault::DnsFail) {
            let ip_url =
                FotaUrl::parse(&url, profile).is_ok_and(|url| url.host.parse::<IpAddr>().is_ok());
            if ip_url {
                return Err(UsageError::DnsFaultWithIp);
            }
        }
        let module = args.module.into_settings().builder(profile).build()?;
        if let Some(path) = args.local_file {
            let bytes = read_package(path)?;
            let command = FotadlCommand::parse(&format!("\"{url}\""), profile);
            let Ok(FotadlCommand {
                source: Source::Local { name, .. },
                ..
            }) = command
            else {
                let takes = match profile.local_prefix {
                    Some((prefix, max)) => format!(
                        "{prefix}<name>, at most {max} bytes in all and {} for the name",
                        crate::sim::ufs::MAX_NAME
                    ),
                    None => format!("{} takes no local path (FILE: over the UART)", profile.name),
                };
                return Err(UsageError::LocalPath(url, takes));
            };
            module.ufs().write(name.as_str(), bytes)?;
        }
        Ok(SimulateConfig {
            module,
            command: FotadlArgs {
                url,
                upgrade_mode: args.upgrade_mode,
                download_urc_max: args.download_urc_max,
                update_urc_max: args.update_urc_max,
            },
            uart_bytes,
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
    if let (Some(bytes), Some(input)) = (&config.uart_bytes, run.file_input()) {
        // The module reads them after FILESTART; a run that refused the
        // command drops them.
        let _ = input.send(bytes);
    }
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
    let progress = RunProgress::new(!config.json && std::io::stderr().is_terminal());
    let mut events = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let event = tokio::select! {
            event = run.next() => event,
            _ = tick.tick() => {
                progress.update(&run, None);
                continue;
            }
        };
        let Some(event) = event else { break };
        let at = run.started().elapsed();
        progress.update(&run, Some(&event));
        if let Some(line) = event.line() {
            progress.suspend(|| print(at, &line));
        }
        events.push(TimedEvent { at, event });
    }
    progress.finish();
    let summary = run.summarize(&events);
    if config.json {
        let _ = writeln!(out, "{}", serde_json::json!({ "summary": &summary }));
        let _ = out.flush();
    } else {
        errln!(
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
            errln!("simulate: {note}");
        }
    }
    summary
}

/// The run's progress on stderr when it is a terminal: a spinner with the
/// bytes received and the rate while downloading, then the upgrade phase;
/// cleared when the run ends. Off a terminal (or with `--json`) nothing:
/// the transcript says it all.
struct RunProgress(Option<ProgressBar>);

impl RunProgress {
    fn new(terminal: bool) -> RunProgress {
        if !terminal {
            return RunProgress(None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} {msg}: {bytes} received ({binary_bytes_per_sec}) · {elapsed}",
        ) {
            bar.set_style(style);
        }
        bar.set_message("downloading");
        RunProgress(Some(bar))
    }

    /// The bytes so far, and the phase after `event` (if one came).
    fn update(&self, run: &FotaRun, event: Option<&Event>) {
        let Some(bar) = &self.0 else { return };
        bar.set_position(run.bytes_received());
        match event {
            Some(Event::Urc(Urc::FtpEnd(_) | Urc::HttpEnd(_) | Urc::FileEnd(_))) => {
                bar.set_message("download over, upgrading");
            }
            Some(Event::Ready) => bar.set_message("rebooted"),
            _ => bar.tick(),
        }
    }

    /// Runs `print` with the bar hidden, so lines and bar do not mix.
    fn suspend(&self, print: impl FnOnce()) {
        match &self.0 {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
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
    fn local_file_goes_into_the_ufs_under_the_path_name() {
        let args = parse(&[
            "/data/ufs/x.zip",
            "--local-file",
            "Cargo.toml",
            "--active-cid",
            "1,2",
            "--fota-cid",
            "2",
        ])
        .unwrap();
        let config = SimulateConfig::try_from(args).unwrap();
        let files = config.module.ufs().list("*").unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].name, "x.zip");
        assert_eq!(config.command.to_at_args(), r#""/data/ufs/x.zip""#);
        assert_eq!(config.module.fota_cid(), 2);
        assert_eq!(config.module.active_contexts().len(), 2);
        // The package must fit the UFS.
        let small = parse(&[
            "/data/ufs/x.zip",
            "--local-file",
            "Cargo.toml",
            "--free-space",
            "1",
        ]);
        assert!(matches!(
            SimulateConfig::try_from(small.unwrap()),
            Err(UsageError::Upload(_))
        ));
    }

    #[test]
    fn uart_file_sends_file_length() {
        let args = parse(&[
            "--uart-file",
            "Cargo.toml",
            "--profile",
            "ec200",
            "--download-urc-max",
            "5",
        ])
        .unwrap();
        let config = SimulateConfig::try_from(args).unwrap();
        let len = std::fs::metadata("Cargo.toml").unwrap().len();
        assert_eq!(config.command.to_at_args(), format!("\"FILE:{len}\",1,5"));
        assert_eq!(config.uart_bytes.map(|b| b.len() as u64), Some(len));
        assert!(parse(&["ftp://h/p", "--uart-file", "Cargo.toml"]).is_err());
        assert!(parse(&["--local-file", "Cargo.toml"]).is_err());
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
            &["ftp://h/p.zip", "--fault", "download-error=608"],
            &["ftp://h/p.zip", "--fota-cid", "17"],
            &["/tmp/x.zip", "--local-file", "/nonexistent/pkg.zip"],
            &["ftp://h/p.zip", "--local-file", "Cargo.toml"],
            &["--uart-file", "/nonexistent/pkg.bin", "--profile", "ec200"],
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

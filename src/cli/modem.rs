//! `qfota-serve modem`: the virtual modem on a pseudo-terminal and/or TCP,
//! until Ctrl-C or SIGTERM (exit 0). Usage errors exit 2, a port that
//! cannot be opened exits 1.
//!
//! Raw flags ([`ModemArgs`], environment `QFOTA_MODEM_*`; the module's
//! options are the shared [`ModuleArgs`]) become a checked [`ModemConfig`]
//! once, through `TryFrom`; [`run`] then starts a [`Modem`] from plain
//! values and prints its status until the shutdown signal it is given
//! resolves (`main.rs` passes Ctrl-C / SIGTERM). Moved here from
//! `modem::cli`: the modem itself never sees clap or a signal.
//!
//! What it prints on stdout, one line each, flushed, for scripts to read:
//!
//! ```text
//! modem EC25 (profile ec2x), revision v12, IMEI 867675040000011
//! pty /tmp/qfota-modem -> /dev/pts/5
//! tcp 127.0.0.1:40123
//! down (module rebooting)
//! off (AT+QPOWD; SIGUSR1 powers it on)
//! pty /tmp/qfota-modem -> /dev/pts/6
//! up (boot 1)
//! ```

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::SignalKind;

use crate::cli::module_args::{ModemEnv, ModuleArgs, UsageError, usage_exit};
use crate::cli::ready::{self, ModemReady};
use crate::modem::status::Status;
use crate::modem::{DEFAULT_IMEI, DEFAULT_LINK, DEFAULT_REBOOT, DEFAULT_URC_HOLD, Link, Modem};
use crate::profile::Profile;
use crate::sim::module::Module;

/// Run a virtual modem: the simulated module behind an AT port on a
/// pseudo-terminal (`--pty`) and/or TCP (`--tcp`).
#[derive(Debug, Clone, clap::Args)]
#[command(group(
    clap::ArgGroup::new("port").required(true).multiple(true).args(["pty", "tcp"])
))]
// Here `--model` may name any module together with `--profile` (the
// family); `simulate` and `fleet` keep the two exclusive.
#[command(mut_arg("model", |a| a.conflicts_with(clap::builder::Resettable::<clap::Id>::Reset)))]
pub struct ModemArgs {
    /// Offer the AT port on a pseudo-terminal and keep a symlink at LINK
    /// pointing at it [default LINK: /tmp/qfota-modem].
    #[arg(
        long,
        env = "QFOTA_MODEM_PTY",
        value_name = "LINK",
        num_args = 0..=1,
        default_missing_value = DEFAULT_LINK
    )]
    pub pty: Option<PathBuf>,
    /// Offer the AT port on TCP, one host at a time (port 0: any free
    /// port, printed).
    #[arg(long, env = "QFOTA_MODEM_TCP", value_name = "ADDR:PORT")]
    pub tcp: Option<SocketAddr>,
    /// Take runtime control requests on TCP, JSON lines (fault
    /// network-down, reboot, urc, signal, state; port 0: any free port,
    /// printed).
    #[arg(long, env = "QFOTA_MODEM_CONTROL", value_name = "ADDR:PORT")]
    pub control: Option<SocketAddr>,
    /// The simulated module.
    #[command(flatten)]
    pub module: ModuleArgs<ModemEnv>,
    /// IMEI shown by AT+GSN, 15 digits.
    #[arg(long, env = "QFOTA_MODEM_IMEI", value_name = "N", default_value = DEFAULT_IMEI)]
    pub imei: String,
    /// Milliseconds the port is away during a reboot, after the PTY's
    /// 0.5 s linger (at least the module's own reboot, 20 s x time scale).
    #[arg(
        long,
        env = "QFOTA_MODEM_REBOOT_MS",
        value_name = "N",
        default_value_t = DEFAULT_REBOOT.as_millis() as u64
    )]
    pub reboot_ms: u64,
    /// Milliseconds URCs wait for a host to open the port before they are
    /// dropped.
    #[arg(
        long,
        env = "QFOTA_MODEM_URC_HOLD_MS",
        value_name = "N",
        default_value_t = DEFAULT_URC_HOLD.as_millis() as u64
    )]
    pub urc_hold_ms: u64,
    /// Write one JSON object (PID, PTY link, TCP address, model, profile,
    /// version) to FILE once the ports are open, atomically; `-` = one
    /// line on stdout (the status lines then go to stderr).
    #[arg(long, env = "QFOTA_MODEM_READY_JSON", value_name = "FILE|-")]
    pub ready_json: Option<PathBuf>,
    /// How the host is wired: usb (the port vanishes and reappears on every
    /// reboot) or uart (the same port stays; it goes quiet, then RDY).
    #[arg(long, env = "QFOTA_MODEM_LINK", value_enum, default_value_t = Link::Usb)]
    pub link: Link,
}

/// Checked settings of `qfota-serve modem`.
#[derive(Debug)]
pub struct ModemConfig {
    /// The simulated module.
    pub module: Module,
    /// What `ATI`/`AT+CGMM` show.
    pub model: String,
    /// What `AT+GSN` shows.
    pub imei: String,
    /// The PTY link, if a PTY is wanted.
    pub pty: Option<PathBuf>,
    /// The TCP address to listen on, if TCP is wanted.
    pub tcp: Option<SocketAddr>,
    /// The runtime control listener's address, if wanted.
    pub control: Option<SocketAddr>,
    /// Reboot time (at least).
    pub reboot: Duration,
    /// How long URCs wait for a host.
    pub urc_hold: Duration,
    /// Where the ready object goes (`-` = stdout), if anywhere.
    pub ready_json: Option<PathBuf>,
    /// USB or UART wiring.
    pub link: Link,
}

impl TryFrom<ModemArgs> for ModemConfig {
    type Error = UsageError;

    fn try_from(mut args: ModemArgs) -> Result<ModemConfig, UsageError> {
        // With `--profile`, `--model` is only the name shown (EC800K on
        // `ec200`); alone, it picks the family from the known models.
        let profile = match args.module.profile.as_deref() {
            Some(name) => Profile::by_name(name)?,
            None => args.module.profile()?,
        };
        let model = match args.module.model.take() {
            Some(m) if m.trim().is_empty() => return Err(UsageError::Model),
            Some(m) => m.trim().to_ascii_uppercase(),
            None => profile.models.first().unwrap_or(&"EC25").to_string(),
        };
        if args.imei.len() != 15 || !args.imei.bytes().all(|b| b.is_ascii_digit()) {
            return Err(UsageError::Imei(args.imei));
        }
        Ok(ModemConfig {
            module: args.module.into_settings().builder(profile).build()?,
            model,
            imei: args.imei,
            pty: args.pty,
            tcp: args.tcp,
            control: args.control,
            reboot: Duration::from_millis(args.reboot_ms),
            urc_hold: Duration::from_millis(args.urc_hold_ms),
            ready_json: args.ready_json,
            link: args.link,
        })
    }
}

/// Runs `qfota-serve modem` until `shutdown` resolves (the binary passes
/// Ctrl-C or SIGTERM): exit 0 then, 2 on a usage error, 1 when a port
/// cannot be opened (message on stderr).
pub async fn run(args: ModemArgs, shutdown: impl Future<Output = ()>) -> ExitCode {
    let config = match ModemConfig::try_from(args) {
        Ok(config) => config,
        Err(e) => return usage_exit("modem", &e),
    };
    let modem = match start(&config)
        .await
        .and_then(|m| announce_ready(&config, m))
    {
        Ok(modem) => modem,
        Err(e) => {
            errln!("qfota-serve modem: {}", super::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    // With `--ready-json -` stdout carries the ready object only.
    let mut out: Box<dyn Write> = match &config.ready_json {
        Some(target) if ready::is_stdout(target) => Box::new(std::io::stderr()),
        _ => Box::new(std::io::stdout()),
    };
    let module = modem.module();
    let _ = writeln!(
        out,
        "modem {} (profile {}), revision {}, IMEI {}",
        modem.model(),
        module.profile().name,
        module.version().as_deref().unwrap_or("unknown"),
        modem.imei()
    );
    let mut status = modem.watch();
    let mut last = status.borrow_and_update().clone();
    print_pty(&mut out, &modem, &last);
    if let Some(addr) = modem.tcp_addr() {
        let _ = writeln!(out, "tcp {addr}");
    }
    if let Some(addr) = modem.control_addr() {
        let _ = writeln!(out, "control {addr}");
    }
    let _ = out.flush();
    tokio::pin!(shutdown);
    let mut power_key = match tokio::signal::unix::signal(SignalKind::user_defined1()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGUSR1; AT+QPOWD is for ever");
            None
        }
    };
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = next_signal(&mut power_key) => modem.power_on(),
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = status.borrow_and_update().clone();
                if now.off && !last.off {
                    let _ = writeln!(out, "off (AT+QPOWD; SIGUSR1 powers it on)");
                } else if last.powered && !now.powered && !now.off {
                    let _ = writeln!(out, "down (module rebooting)");
                }
                if now.pty != last.pty {
                    print_pty(&mut out, &modem, &now);
                }
                if now.boots != last.boots && now.powered {
                    let _ = writeln!(out, "up (boot {})", now.boots);
                }
                let _ = out.flush();
                last = now;
            }
        }
    }
    tracing::info!("shutting down");
    modem.shutdown().await;
    ExitCode::SUCCESS
}

/// The next SIGUSR1, or never without a listener.
async fn next_signal(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

fn print_pty(out: &mut impl Write, modem: &Modem, status: &Status) {
    if let (Some(link), Some(device)) = (modem.pty_link(), &status.pty) {
        let _ = writeln!(out, "pty {} -> {}", link.display(), device.display());
    }
}

/// Writes `--ready-json` for the started `modem`, if asked.
fn announce_ready(config: &ModemConfig, modem: Modem) -> anyhow::Result<Modem> {
    use anyhow::Context;
    if let Some(target) = &config.ready_json {
        ready::write(target, &ModemReady::of(&modem))
            .with_context(|| format!("ready file {}", target.display()))?;
    }
    Ok(modem)
}

async fn start(config: &ModemConfig) -> anyhow::Result<Modem> {
    use anyhow::Context;
    if let Some(target) = &config.ready_json {
        ready::clear(target).with_context(|| format!("ready file {}", target.display()))?;
    }
    let mut builder = Modem::builder(config.module.clone())
        .model(config.model.clone())
        .imei(config.imei.clone())
        .reboot_time(config.reboot)
        .urc_hold(config.urc_hold)
        .link_type(config.link);
    if let Some(link) = &config.pty {
        builder = builder.pty(link.clone());
    }
    if let Some(addr) = config.tcp {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        builder = builder.tcp(listener);
    }
    if let Some(addr) = config.control {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for control on {addr}"))?;
        builder = builder.control(listener);
    }
    Ok(builder.start()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::module_args::parse_subcommand;
    use crate::sim::fault::Fault;

    fn parse(argv: &[&str]) -> Result<ModemArgs, clap::Error> {
        parse_subcommand("modem", argv)
    }

    #[test]
    fn flags_parse_beside_a_top_level_version() {
        let args = parse(&[
            "--pty",
            "--tcp",
            "127.0.0.1:0",
            "--model",
            "ec200t",
            "--version",
            "v12",
            "--imei",
            "490154203237518",
            "--reboot-ms",
            "50",
            "--fault",
            "md5",
            "--fault",
            "network-down",
            "--time-scale",
            "0",
        ])
        .unwrap();
        assert_eq!(
            args.pty.as_deref(),
            Some(std::path::Path::new(DEFAULT_LINK))
        );
        assert_eq!(args.module.faults, vec![Fault::Md5, Fault::NetworkDown]);
        let config = ModemConfig::try_from(args).unwrap();
        assert_eq!(config.module.profile().name, "ec200");
        assert_eq!(config.model, "EC200T");
        assert_eq!(config.module.version().as_deref(), Some("v12"));
        assert_eq!(config.reboot, Duration::from_millis(50));
        assert_eq!(config.tcp, Some("127.0.0.1:0".parse().unwrap()));
    }

    #[test]
    fn defaults() {
        let config = ModemConfig::try_from(parse(&["--pty", "/x/m"]).unwrap()).unwrap();
        assert_eq!(config.pty, Some(PathBuf::from("/x/m")));
        assert_eq!(config.tcp, None);
        assert_eq!(config.control, None);
        assert_eq!(config.model, "EC25");
        assert_eq!(config.imei, DEFAULT_IMEI);
        assert_eq!(config.reboot, DEFAULT_REBOOT);
        assert_eq!(config.urc_hold, DEFAULT_URC_HOLD);
        assert_eq!(config.module.version(), None);
        let config =
            ModemConfig::try_from(parse(&["--tcp", "127.0.0.1:1", "--profile", "eg06xk"]).unwrap())
                .unwrap();
        assert_eq!(config.model, "EG060K");
    }

    #[test]
    fn any_model_goes_with_a_profile() {
        let config = ModemConfig::try_from(
            parse(&["--pty", "/x", "--model", "ec800k-cn", "--profile", "ec200"]).unwrap(),
        )
        .unwrap();
        assert_eq!(config.module.profile().name, "ec200");
        assert_eq!(config.model, "EC800K-CN");
        assert_eq!(config.link, Link::Usb);
        // A known model with another family's profile: the profile wins.
        let config = ModemConfig::try_from(
            parse(&[
                "--pty",
                "/x",
                "--model",
                "EC25",
                "--profile",
                "eg06xk",
                "--link",
                "uart",
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (config.module.profile().name, config.model.as_str()),
            ("eg06xk", "EC25")
        );
        assert_eq!(config.link, Link::Uart);
        // Alone, an unknown model is still refused.
        let args = parse(&["--pty", "/x", "--model", "EC800K"]).unwrap();
        assert!(ModemConfig::try_from(args).is_err());
    }

    #[test]
    fn usage_errors() {
        for argv in [
            &[][..],
            &["--model", "EC25"],
            &["--pty", "/x", "--link", "serial"],
            &["--tcp", "nowhere"],
            &["--pty", "/x", "--fault", "nope"],
            &["--pty", "/x", "--reboot-ms", "-1"],
        ] {
            assert!(parse(argv).is_err(), "{argv:?}");
        }
        for argv in [
            &["--pty", "/x", "--profile", "nope"][..],
            &["--pty", "/x", "--model", "BG96"],
            &["--pty", "/x", "--fault", "md5"],
            &["--pty", "/x", "--imei", "12345"],
            &["--pty", "/x", "--imei", "86767504000001x"],
            &["--pty", "/x", "--model", " "],
            &["--pty", "/x", "--time-scale=-1"],
            &["--pty", "/x", "--timeout-secs", "0"],
        ] {
            let args = parse(argv).unwrap();
            assert!(ModemConfig::try_from(args).is_err(), "{argv:?}");
        }
    }
}

//! Command line: clap definitions, their conversion to a server
//! configuration (checked once, at start-up), and the text the binary
//! prints (listener banner, ready-to-paste `AT+QFOTADL` lines, the `check`
//! report).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::catalog::Package;
use crate::catalog::validate::{Advertised, FtpCredentials};
use crate::profile::Profile;
use crate::serve::fault::FaultRule;
use crate::serve::{Server, ServerBuilder, default_public_host};

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
    /// Validate the packages in a folder and print the report; exit 1 when
    /// any is invalid or misfits a profile named with --profile.
    Check(CheckArgs),
    /// Simulate a module's FOTA download and upgrade (`AT+QFOTADL`) against
    /// a server, printing the AT transcript; exit 0 on `END,0`.
    Simulate(crate::sim::cli::SimulateArgs),
    /// Run many simulated modules against one URL and print the outcome
    /// per final code, download-time percentiles and bytes received.
    Fleet(crate::sim::fleet::FleetArgs),
    /// Run a virtual modem: the simulated module behind an AT port on a
    /// pseudo-terminal and/or TCP, until Ctrl-C.
    Modem(crate::modem::cli::ModemArgs),
}

/// `qfota-serve [OPTIONS] <DIR>`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("protocol").required(true).multiple(true).args(["ftp", "http", "https"])))]
pub struct ServeArgs {
    /// Folder holding the firmware packages (scanned recursively, watched).
    #[arg(required = true, env = "QFOTA_DIR")]
    pub dir: Option<PathBuf>,
    /// Serve FTP on this port (0 = any free port).
    #[arg(long, env = "QFOTA_FTP", value_name = "PORT")]
    pub ftp: Option<u16>,
    /// Serve HTTP on this port (0 = any free port).
    #[arg(long, env = "QFOTA_HTTP", value_name = "PORT")]
    pub http: Option<u16>,
    /// Serve HTTPS on this port (0 = any free port).
    #[arg(long, env = "QFOTA_HTTPS", value_name = "PORT")]
    pub https: Option<u16>,
    /// Address to listen on.
    #[arg(
        long,
        env = "QFOTA_BIND",
        default_value = "0.0.0.0",
        value_name = "ADDR"
    )]
    pub bind: IpAddr,
    /// Address modules use to reach this server: PASV replies and printed
    /// URLs [default: the bind address if concrete, else the first
    /// non-loopback IPv4 address].
    #[arg(long, env = "QFOTA_PUBLIC_HOST", value_name = "HOST")]
    pub public_host: Option<String>,
    /// FTP account NAME:PASSWORD, repeatable (env: comma-separated). Without
    /// it FTP accepts any login, read-only.
    #[arg(long = "user", env = "QFOTA_USER", value_name = "NAME:PASSWORD", value_parser = parse_user, value_delimiter = ',')]
    pub users: Vec<FtpCredentials>,
    /// Ports offered for FTP passive data connections.
    #[arg(long, env = "QFOTA_PASSIVE_PORTS", default_value = "50000-50100", value_name = "FIRST-LAST", value_parser = parse_port_range)]
    pub passive_ports: RangeInclusive<u16>,
    /// HTTPS certificate chain (PEM).
    #[arg(long, env = "QFOTA_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// HTTPS private key (PEM).
    #[arg(long, env = "QFOTA_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Where the generated RSA certificate is kept (made once, reused).
    #[arg(
        long,
        env = "QFOTA_CERTS_DIR",
        default_value = "certs",
        value_name = "DIR"
    )]
    pub certs_dir: PathBuf,
    /// The download log: one JSON object per line, appended.
    #[arg(
        long,
        env = "QFOTA_LOG",
        default_value = "downloads.jsonl",
        value_name = "FILE"
    )]
    pub log: PathBuf,
    /// Serve packages that fail validation (for testing module error paths).
    #[arg(long, env = "QFOTA_ALLOW_INVALID")]
    pub allow_invalid: bool,
    /// Server fault rule, repeatable: an action (refuse-login, not-found,
    /// status=CODE, ftp-reply=CODE,command=CMD, drop-after=BYTES|PCT%,
    /// stall-after=BYTES, slow=BYTES_PER_S, corrupt=OFFSET) and matchers
    /// (path=GLOB, protocol=, peer=IP|CIDR, user=, times=N, rate=P).
    #[arg(
        long = "fault",
        env = "QFOTA_FAULT",
        value_name = "RULE",
        value_delimiter = ';'
    )]
    pub faults: Vec<FaultRule>,
    /// TOML file of fault rules (`seed = N`, `rules = ["…"]`), re-read when
    /// it changes.
    #[arg(long = "faults", env = "QFOTA_FAULTS", value_name = "FILE")]
    pub fault_file: Option<PathBuf>,
    /// Seed of the generator behind `rate=` (repeatable runs).
    #[arg(long, env = "QFOTA_FAULT_SEED", default_value_t = 0, value_name = "N")]
    pub fault_seed: u64,
    /// Seconds in-flight downloads may finish after Ctrl-C / SIGTERM.
    #[arg(
        long,
        env = "QFOTA_GRACE_SECS",
        default_value_t = 10,
        value_name = "SECS"
    )]
    pub grace_secs: u64,
    /// Seconds a write to a client may make no progress before the
    /// download is aborted.
    #[arg(
        long,
        env = "QFOTA_STALL_TIMEOUT_SECS",
        default_value_t = 120,
        value_name = "SECS"
    )]
    pub stall_timeout_secs: u64,
}

/// `qfota-serve check <DIR>`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Folder holding the firmware packages.
    pub dir: PathBuf,
    /// Host modules will be given [default: first non-loopback IPv4].
    #[arg(long, env = "QFOTA_PUBLIC_HOST", value_name = "HOST")]
    pub public_host: Option<String>,
    /// FTP port the URLs will carry [default: 21 when no port is given].
    #[arg(long, value_name = "PORT")]
    pub ftp: Option<u16>,
    /// HTTP port the URLs will carry [default: 80 when no port is given].
    #[arg(long, value_name = "PORT")]
    pub http: Option<u16>,
    /// HTTPS port the URLs will carry [default: 443 when no port is given].
    #[arg(long, value_name = "PORT")]
    pub https: Option<u16>,
    /// FTP account NAME:PASSWORD put in FTP URLs (lengths count).
    #[arg(long = "user", value_name = "NAME:PASSWORD", value_parser = parse_user)]
    pub user: Option<FtpCredentials>,
    /// Module family every package must fit (repeatable): ec2x, ep06,
    /// ec200, eg06xk-dfota, eg06xk.
    #[arg(long = "profile", value_name = "PROFILE", value_parser = parse_profile)]
    pub profiles: Vec<&'static Profile>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Resolves on Ctrl-C or SIGTERM: the one shutdown source of every
/// long-running command (serve, modem).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// Parses `NAME:PASSWORD` (the password may contain `:`).
///
/// # Errors
/// A message when the colon or the name is missing.
pub fn parse_user(s: &str) -> Result<FtpCredentials, String> {
    match s.split_once(':') {
        Some((user, password)) if !user.is_empty() => Ok(FtpCredentials {
            user: user.to_string(),
            password: password.to_string(),
        }),
        _ => Err(format!("expected NAME:PASSWORD, got {s:?}")),
    }
}

/// Parses `FIRST-LAST` with `1 <= FIRST <= LAST`.
///
/// # Errors
/// A message naming what is wrong.
pub fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("expected FIRST-LAST, got {s:?}"))?;
    let first: u16 = a.trim().parse().map_err(|_| format!("bad port {a:?}"))?;
    let last: u16 = b.trim().parse().map_err(|_| format!("bad port {b:?}"))?;
    if first == 0 || first > last {
        return Err(format!("need 1 <= FIRST <= LAST, got {first}-{last}"));
    }
    Ok(first..=last)
}

fn parse_profile(s: &str) -> Result<&'static Profile, String> {
    Profile::by_name(s).map_err(|e| e.to_string())
}

impl ServeArgs {
    /// The server configuration these flags describe.
    pub fn to_builder(&self) -> ServerBuilder {
        let mut b = Server::builder()
            .packages(self.dir.clone().unwrap_or_default())
            .bind(self.bind)
            .passive_ports(self.passive_ports.clone())
            .certs_dir(self.certs_dir.clone())
            .log_file(self.log.clone())
            .allow_invalid(self.allow_invalid)
            .grace_period(Duration::from_secs(self.grace_secs))
            .stall_timeout(Duration::from_secs(self.stall_timeout_secs.max(1)));
        if let Some(h) = &self.public_host {
            b = b.public_host(h.clone());
        }
        for rule in &self.faults {
            b = b.fault(rule.clone());
        }
        b = b.fault_seed(self.fault_seed);
        if let Some(f) = &self.fault_file {
            b = b.fault_file(f.clone());
        }
        if let Some(p) = self.ftp {
            b = b.ftp(p);
        }
        if let Some(p) = self.http {
            b = b.http(p);
        }
        if let Some(p) = self.https {
            b = b.https(p);
        }
        for u in &self.users {
            b = b.user(u.user.clone(), u.password.clone());
        }
        if let (Some(c), Some(k)) = (&self.tls_cert, &self.tls_key) {
            b = b.tls_files(c.clone(), k.clone());
        }
        b
    }
}

impl CheckArgs {
    /// Host, ports and credentials the check computes URLs for.
    pub fn advertised(&self) -> Advertised {
        let none = self.ftp.is_none() && self.http.is_none() && self.https.is_none();
        let or_default = |p: Option<u16>, d| if none { Some(d) } else { p };
        Advertised {
            host: self
                .public_host
                .clone()
                .unwrap_or_else(|| default_public_host(IpAddr::from([0, 0, 0, 0]))),
            ftp: or_default(self.ftp, 21),
            http: or_default(self.http, 80),
            https: or_default(self.https, 443),
            ftp_credentials: self.user.clone(),
        }
    }
}

/// The start-up banner: listeners, log file, and per valid package its
/// size, SHA-256, the profiles it fits and one `AT+QFOTADL` line per
/// enabled protocol.
pub fn banner(server: &Server, log: &std::path::Path) -> String {
    let mut out = String::new();
    let cat = server.catalog();
    let packages = cat.packages();
    let valid = packages.iter().filter(|p| p.is_valid()).count();
    let _ = writeln!(
        out,
        "qfota-serve {}: serving {} ({} packages, {} valid)",
        env!("CARGO_PKG_VERSION"),
        cat.location(),
        packages.len(),
        valid
    );
    for (name, addr) in [
        ("ftp", server.ftp_addr()),
        ("http", server.http_addr()),
        ("https", server.https_addr()),
    ] {
        if let Some(addr) = addr {
            let _ = writeln!(out, "  {name:<5} listening on {addr}");
        }
    }
    let _ = writeln!(out, "  public host {}", server.advertised().host);
    let _ = writeln!(out, "  download log {}", log.display());
    for rule in server.faults() {
        let _ = writeln!(out, "  fault rule {rule}");
    }
    for problem in server.advertised().credential_problems() {
        let _ = writeln!(out, "  warning: {problem}");
    }
    for p in &packages {
        let _ = writeln!(out);
        out.push_str(&package_summary(p));
        if p.is_valid() {
            for url in server.advertised().urls(&p.path) {
                let _ = writeln!(out, "  AT+QFOTADL=\"{url}\"");
            }
        }
    }
    out
}

fn package_summary(p: &Package) -> String {
    let fits: Vec<&str> = p
        .profiles
        .iter()
        .filter(|v| v.fits)
        .map(|v| v.profile)
        .collect();
    let mut out = format!("{}  {} bytes  sha256 {}\n", p.path, p.size, p.sha256);
    if p.is_valid() {
        let fits = if fits.is_empty() {
            "none".to_string()
        } else {
            fits.join(" ")
        };
        let _ = writeln!(out, "  valid; fits: {fits}");
    } else {
        let _ = writeln!(out, "  INVALID, not served: {}", p.problems.join("; "));
    }
    out
}

/// The `check` report and whether it passes: every package valid and
/// fitting every profile in `required`.
pub fn check_report(packages: &[Arc<Package>], required: &[&'static Profile]) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    if packages.is_empty() {
        out.push_str("no packages found\n");
    }
    for p in packages {
        out.push_str(&package_summary(p));
        ok &= p.is_valid();
        for v in &p.profiles {
            let required_here = required.iter().any(|r| r.name == v.profile);
            let mark = match (v.fits, required_here) {
                (true, _) => "ok  ",
                (false, true) => "FAIL",
                (false, false) => "--  ",
            };
            let _ = writeln!(
                out,
                "    {mark} {:<13} {}",
                v.profile,
                v.problems.join("; ")
            );
            ok &= v.fits || !required_here;
        }
    }
    let _ = writeln!(out, "{}", if ok { "check passed" } else { "check FAILED" });
    (out, ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn user_and_port_range_parsers() {
        let u = parse_user("test:pa:ss").unwrap();
        assert_eq!((u.user.as_str(), u.password.as_str()), ("test", "pa:ss"));
        assert!(parse_user("nocolon").is_err());
        assert!(parse_user(":pw").is_err());
        assert_eq!(parse_port_range("50000-50100").unwrap(), 50000..=50100);
        assert!(parse_port_range("5-1").is_err());
        assert!(parse_port_range("0-1").is_err());
        assert!(parse_port_range("x").is_err());
    }

    #[test]
    fn serve_needs_a_protocol_and_a_dir() {
        assert!(Cli::try_parse_from(["qfota-serve", "pk"]).is_err());
        assert!(Cli::try_parse_from(["qfota-serve", "--ftp", "21"]).is_err());
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
}

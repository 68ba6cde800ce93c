//! `qfota-serve check <DIR>`: validate a folder without serving it, print
//! the report (or JSON), exit 1 when a package is invalid or misfits a
//! family named with `--profile`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::catalog::validate::{Advertised, FtpCredentials};
use crate::cli::output::check_report;
use crate::cli::values::{parse_profile, parse_user};
use crate::profile::Profile;
use crate::serve::{check_packages, default_public_host};

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

/// Runs `qfota-serve check`: exit 0 when the check passes, 1 when it fails.
///
/// # Errors
/// The folder cannot be read (exit 1).
pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let packages = check_packages(&args.dir, args.advertised())
        .await
        .with_context(|| format!("cannot read {}", args.dir.display()))?;
    let (report, ok) = check_report(&packages, &args.profiles);
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&packages.iter().map(|p| p.as_ref()).collect::<Vec<_>>())?
        );
    } else {
        out!("{report}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

//! `qfota-serve check <DIR | s3://BUCKET/PREFIX>`: validate a folder, or
//! the packages under an object-store prefix, without serving them; print
//! the report (or JSON); exit 1 when a package is invalid or misfits a
//! family named with `--profile`, or the store cannot be read.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::catalog::Catalog;
use crate::catalog::Package;
use crate::catalog::s3::{S3Catalog, S3Config, S3Location};
use crate::catalog::validate::{Advertised, FtpCredentials};
use crate::cli::output::check_report;
use crate::cli::s3::{DEFAULT_CACHE_MAX_BYTES, StoreArgs};
use crate::cli::values::{parse_profile, parse_public_host, parse_user};
use crate::profile::Profile;
use crate::serve::{check_packages, default_public_host};

/// `qfota-serve check <DIR | s3://BUCKET/PREFIX>`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Folder holding the firmware packages, or an s3://BUCKET/PREFIX
    /// location (each object is downloaded to a temporary folder and
    /// validated as the server would).
    #[arg(value_name = "DIR | s3://BUCKET/PREFIX")]
    pub dir: PathBuf,
    /// Host modules will be given [default: first non-loopback IPv4]: a
    /// name or address, no scheme, port or path (as serve's).
    #[arg(long, env = "QFOTA_PUBLIC_HOST", value_name = "HOST", value_parser = parse_public_host)]
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
    /// Where an s3:// location's store is.
    #[command(flatten)]
    pub store: StoreArgs,
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
/// The folder cannot be read; the location is not a valid `s3://` URL;
/// the store refuses the credentials, has no such bucket or cannot be
/// reached (exit 1).
pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let location = args.store.location(Some(&args.dir))?;
    let from_store = location.is_some();
    let (packages, unchecked) = match location {
        Some(location) => {
            // Interrupted, the temporary folder is still removed.
            tokio::select! {
                checked = check_store(location, args.advertised()) => checked?,
                () = crate::cli::shutdown_signal() => anyhow::bail!("interrupted"),
            }
        }
        None => check_packages(&args.dir, args.advertised())
            .await
            .with_context(|| format!("cannot read {}", args.dir.display()))?,
    };
    // A file that could not be read or fetched fails the check, named in
    // the report (and on stderr, which `--json` leaves free).
    let (report, ok) = check_report(&packages, &unchecked, &args.profiles);
    for (key, why) in &unchecked {
        if from_store {
            errln!("qfota-serve: cannot fetch {key} from the store: {why}");
        } else {
            errln!("qfota-serve: cannot read {key}: {why}");
        }
    }
    if args.json {
        // The packages, then what could not be checked, with why.
        let mut entries = packages
            .iter()
            .map(|p| serde_json::to_value(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        entries.extend(
            unchecked
                .iter()
                .map(|(key, why)| serde_json::json!({ "path": key, "not_checked": why })),
        );
        let json = serde_json::to_string_pretty(&entries)?;
        super::print_output(&format!("{json}\n")).context("cannot write the check's report")?;
    } else {
        super::print_output(&report).context("cannot write the check's report")?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The packages under `location`, each downloaded once into a temporary
/// folder (removed afterwards) and validated by the code that serves them
/// ([`S3Catalog`]), and the listed keys that could not be fetched, with
/// why.
///
/// # Errors
/// The store refuses the client configuration or the credentials, has no
/// such bucket, refuses the listing, or cannot be reached; the temporary
/// folder cannot be made.
async fn check_store(
    location: S3Location,
    advertised: Advertised,
) -> anyhow::Result<(Vec<Arc<Package>>, Vec<(String, String)>)> {
    let shown = location.display();
    // Owner only (a private bucket's packages stay private), removed on
    // drop: on every return, and when `run` drops this future on a signal.
    let scratch = tempfile::Builder::new()
        .prefix("qfota-serve-check-")
        .tempdir()
        .context("temporary folder for the downloads")?;
    let config = S3Config {
        location,
        // One listing only.
        rescan: Duration::from_secs(3600),
        cache_dir: scratch.path().to_path_buf(),
        cache_max_bytes: DEFAULT_CACHE_MAX_BYTES,
        // Validated from the downloaded files, not held in memory.
        package_memory: 0,
    };
    let catalog = S3Catalog::open(config, advertised).await?;
    anyhow::ensure!(
        catalog.store_reached(),
        "object store unreachable: {shown} (see the warning above)"
    );
    Ok((catalog.packages(), catalog.unfetched()))
}

//! What the module-running subcommands (`simulate`, `fleet`, `modem`)
//! share: the simulated module's options ([`ModuleArgs`], flattened into
//! each), the one [`UsageError`] they report, and how a usage error exits.
//!
//! Each subcommand reads its options from its own environment variables
//! (`QFOTA_SIM_*`, `QFOTA_FLEET_*`, `QFOTA_MODEM_*`): the names come from
//! the [`ModuleEnv`] marker the subcommand picks, so the options are
//! written once and the documented variables stay as they were.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::profile::{Profile, ProfileError};
use crate::sim::fault::Fault;
use crate::sim::fleet::MAX_MODULES;
use crate::sim::module::{ConfigError, DEFAULT_TIME_SCALE, ModuleSettings};

/// Exit status of a usage error (as clap uses).
const USAGE: u8 = 2;

/// The environment variables one subcommand reads its module options
/// from.
pub trait ModuleEnv: Debug + Clone + Send + Sync + 'static {
    /// `--model`.
    const MODEL: &'static str;
    /// `--profile`.
    const PROFILE: &'static str;
    /// `--version`.
    const VERSION: &'static str;
    /// `--fault` (comma-separated).
    const FAULT: &'static str;
    /// `--timeout-secs`.
    const TIMEOUT_SECS: &'static str;
    /// `--time-scale`.
    const TIME_SCALE: &'static str;
    /// `--free-space`.
    const FREE_SPACE: &'static str;
    /// `--ca`.
    const CA: &'static str;
    /// `--active-cid` (comma-separated).
    const ACTIVE_CIDS: &'static str;
    /// `--fota-cid`.
    const FOTA_CID: &'static str;
}

/// Declares a [`ModuleEnv`] marker whose variables all start with `$prefix`.
macro_rules! module_env {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;

        impl ModuleEnv for $name {
            const MODEL: &'static str = concat!($prefix, "MODEL");
            const PROFILE: &'static str = concat!($prefix, "PROFILE");
            const VERSION: &'static str = concat!($prefix, "VERSION");
            const FAULT: &'static str = concat!($prefix, "FAULT");
            const TIMEOUT_SECS: &'static str = concat!($prefix, "TIMEOUT_SECS");
            const TIME_SCALE: &'static str = concat!($prefix, "TIME_SCALE");
            const FREE_SPACE: &'static str = concat!($prefix, "FREE_SPACE");
            const CA: &'static str = concat!($prefix, "CA");
            const ACTIVE_CIDS: &'static str = concat!($prefix, "ACTIVE_CIDS");
            const FOTA_CID: &'static str = concat!($prefix, "FOTA_CID");
        }
    };
}

module_env!(
    /// `qfota-serve simulate`: `QFOTA_SIM_*`.
    SimEnv,
    "QFOTA_SIM_"
);
module_env!(
    /// `qfota-serve fleet`: `QFOTA_FLEET_*`.
    FleetEnv,
    "QFOTA_FLEET_"
);
module_env!(
    /// `qfota-serve modem`: `QFOTA_MODEM_*`.
    ModemEnv,
    "QFOTA_MODEM_"
);

/// The simulated module's options, flattened into `simulate`, `fleet` and
/// `modem`; `E` names their environment variables.
#[derive(Debug, Clone, clap::Args)]
pub struct ModuleArgs<E: ModuleEnv> {
    /// Module model (EC25, EC200T, EM060K, …); selects the profile (and is
    /// what the modem's ATI and AT+CGMM show).
    #[arg(long, env = E::MODEL, conflicts_with = "profile")]
    pub model: Option<String>,
    /// Profile: ec2x (default), ep06, ec200, eg06xk-dfota, eg06xk.
    #[arg(long, env = E::PROFILE)]
    pub profile: Option<String>,
    /// The module's current firmware version (`ATI`, `AT+QGMR`); a package
    /// named `<x>-<from>-to-<to>.zip` whose `<from>` differs ends `END,510`.
    #[arg(
        long = "version",
        env = E::VERSION,
        value_name = "V",
        help = "The module's current firmware version (ATI, AT+QGMR); a package named \
                <x>-<from>-to-<to>.zip whose <from> differs ends END,510"
    )]
    pub module_version: Option<String>,
    /// Module-side fault, repeatable (comma-separated in the environment):
    /// `network-down`, `dns-fail`, `power-cut=<percent>`,
    /// `download-power-cut=<percent>`, `upgrade-error=<code>[x<N>]`,
    /// `download-error=<code>[x<N>]`, `signature` (eg06xk), `md5` (ec200).
    #[arg(
        long = "fault",
        env = E::FAULT,
        value_delimiter = ',',
        value_name = "F",
        help = "Module-side fault, repeatable (comma-separated in the environment): \
                network-down, dns-fail, power-cut=<percent>, download-power-cut=<percent>, \
                upgrade-error=<code>[x<N>], download-error=<code>[x<N>], \
                signature (eg06xk), md5 (ec200)"
    )]
    pub faults: Vec<Fault>,
    /// No-progress timeout for the download, seconds.
    #[arg(long, env = E::TIMEOUT_SECS, default_value_t = 60, value_name = "N")]
    pub timeout_secs: u64,
    /// Multiplier for the module's own delays (1.0: reboot ~20 s, upgrade
    /// ~2 min).
    #[arg(long, env = E::TIME_SCALE, default_value_t = DEFAULT_TIME_SCALE, value_name = "X")]
    pub time_scale: f64,
    /// Size of the module's file system (UFS), bytes: its free space while
    /// no file is stored; a larger package ends END,511 (ec200: download
    /// error 611/729), a larger upload +CME ERROR: 403.
    #[arg(long, env = E::FREE_SPACE, value_name = "BYTES")]
    pub free_space: Option<u64>,
    /// PDP contexts active after boot, repeatable (default: 1); a download
    /// over an inactive context fails (ec200: 605/707).
    #[arg(long = "active-cid", env = E::ACTIVE_CIDS, value_delimiter = ',', value_name = "CID", value_parser = parse_cid)]
    pub active_cids: Vec<u8>,
    /// The context FOTA downloads use (AT+QFOTA="fota/cid"), default 1.
    #[arg(long, env = E::FOTA_CID, value_name = "CID")]
    pub fota_cid: Option<u8>,
    /// Verify HTTPS certificates against this CA (PEM); without it they are
    /// not verified, like a module without a CA.
    #[arg(long, env = E::CA, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    #[arg(skip)]
    env: PhantomData<E>,
}

impl<E: ModuleEnv> ModuleArgs<E> {
    /// The family `--model` or `--profile` selects (`ec2x` when neither).
    ///
    /// # Errors
    /// [`ProfileError`] for an unknown model or profile.
    pub fn profile(&self) -> Result<&'static Profile, ProfileError> {
        Profile::select(self.model.as_deref(), self.profile.as_deref())
    }

    /// The module settings these options describe (unthrottled); checked
    /// when the module is built.
    pub fn into_settings(self) -> ModuleSettings {
        ModuleSettings {
            faults: self.faults,
            time_scale: self.time_scale,
            timeout: Duration::from_secs(self.timeout_secs),
            version: self.module_version,
            free_space: self.free_space,
            ca: self.ca,
            rate: None,
            active_contexts: (!self.active_cids.is_empty()).then_some(self.active_cids),
            fota_cid: self.fota_cid,
        }
    }
}

/// Why a module-running subcommand cannot start (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// Unknown `--model` or `--profile`.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// A module setting the simulator refuses (fault, time scale, CA, …).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `simulate`: a package file (`--local-file`, `--uart-file`) cannot
    /// be read.
    #[error("cannot read package {path}: {source}")]
    Package {
        /// The path given.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// `simulate --local-file`: the URL is not one of the family's local
    /// paths (SPEC §9): the path, and what the family takes.
    #[error("{0:?} is not a local path of this family: {1}")]
    LocalPath(String, String),
    /// `simulate --local-file`: the module's UFS refuses the package
    /// (`+CME ERROR` code and reason).
    #[error("cannot store the package in the module's UFS: +CME ERROR: {code}: {source}", code = .0.code(), source = .0)]
    Upload(#[from] crate::sim::ufs::FileError),
    /// `simulate`: `dns-fail` with an IP-literal URL would change nothing.
    #[error("fault dns-fail needs a host name in the URL, not an IP address")]
    DnsFaultWithIp,
    /// `modem`: the IMEI is not 15 digits.
    #[error("--imei {0:?} must be 15 decimal digits")]
    Imei(String),
    /// `modem`: the model name is empty.
    #[error("--model must not be empty")]
    Model,
    /// `fleet`: zero modules or zero concurrency.
    #[error("--modules and --concurrency must be at least 1")]
    EmptyFleet,
    /// `fleet`: more modules than one run holds (each is a task and a
    /// buffer).
    #[error("--modules {0} is over the limit of {MAX_MODULES}")]
    TooManyModules(usize),
}

/// Prints `qfota-serve <command>: <error>` on stderr and returns the usage
/// exit status, 2.
pub fn usage_exit(command: &str, error: &dyn std::fmt::Display) -> ExitCode {
    errln!("qfota-serve {command}: {error:#}");
    ExitCode::from(USAGE)
}

/// Test support: parses `qfota-serve <name> <argv…>` with `A` as the
/// subcommand's flags, beside a top-level `--version` as in the binary (a
/// subcommand's own `--version` must still mean the module's), after
/// clap's consistency check of the whole definition.
#[cfg(test)]
pub(crate) fn parse_subcommand<A: clap::Args>(
    name: &'static str,
    argv: &[&str],
) -> Result<A, clap::Error> {
    let command = clap::Command::new("qfota-serve")
        .version("0")
        .subcommand_required(true)
        .subcommand(A::augment_args(clap::Command::new(name)));
    command.clone().debug_assert();
    let full = ["qfota-serve", name]
        .into_iter()
        .chain(argv.iter().copied());
    let matches = command.try_get_matches_from(full)?;
    match matches.subcommand_matches(name) {
        Some(sub) => A::from_arg_matches(sub),
        None => Err(clap::Error::new(clap::error::ErrorKind::MissingSubcommand)),
    }
}

/// Parses a PDP context id of `--active-cid`, spaces around it (an item of
/// a comma-separated list) ignored.
fn parse_cid(s: &str) -> Result<u8, String> {
    s.trim()
        .parse()
        .map_err(|e| format!("{s:?}: expected a context id (1-255): {e}"))
}

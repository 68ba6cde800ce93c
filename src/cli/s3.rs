//! The replica flags of `qfota-serve`: serving an `s3://BUCKET/PREFIX`
//! location instead of a folder (`--s3-endpoint`, `--s3-region`,
//! `--s3-path-style`, `--rescan-secs`, `--cache-dir`, `--cache-max-bytes`;
//! credentials from the standard `AWS_*` environment variables) and
//! naming the replica in its download records (`--instance-id`). Flattened
//! into [`ServeArgs`](super::serve::ServeArgs), so the configuration file
//! takes them by the same names; `check` takes the store's own flags
//! ([`StoreArgs`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::catalog::s3::{LocationError, S3Config, S3Location};
use crate::serve::ServerBuilder;

/// Default `--cache-max-bytes`: 8 GiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 8 << 30;

/// Where an `s3://BUCKET/PREFIX` location's store is and how to address
/// it: the flags `serve` and `check` share (credentials come from the
/// standard `AWS_*` environment variables or profile).
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Endpoint URL of a self-hosted S3-compatible store
    /// (`http://minio.lan:9000`) [default: AWS, or AWS_ENDPOINT].
    #[arg(long, env = "QFOTA_S3_ENDPOINT", value_name = "URL", value_parser = parse_endpoint)]
    pub s3_endpoint: Option<String>,
    /// Region of the bucket [default: AWS_REGION, else us-east-1].
    #[arg(long, env = "QFOTA_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Path-style requests (ENDPOINT/BUCKET/KEY), as most self-hosted
    /// stores need, instead of virtual-hosted style (BUCKET.ENDPOINT/KEY).
    #[arg(long, env = "QFOTA_S3_PATH_STYLE")]
    pub s3_path_style: bool,
}

impl StoreArgs {
    /// The location `dir` names with these flags applied, when it is an
    /// `s3://` URL; `None` for a folder.
    ///
    /// # Errors
    /// [`LocationError`]: an `s3://` location without a bucket or with an
    /// unclean prefix.
    pub fn location(&self, dir: Option<&Path>) -> Result<Option<S3Location>, LocationError> {
        let Some(url) = dir
            .and_then(Path::to_str)
            .filter(|d| S3Location::is_s3_url(d))
        else {
            return Ok(None);
        };
        let mut location = S3Location::parse(url)?;
        location.endpoint = self.s3_endpoint.clone();
        location.region = self.s3_region.clone();
        location.path_style = self.s3_path_style;
        Ok(Some(location))
    }
}

/// Flags for serving from an object store and for running as one of
/// several replicas.
#[derive(Debug, Clone, Args)]
pub struct ReplicaArgs {
    /// Where the store is.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Seconds between listings of an s3:// location (unchanged objects
    /// are not read again).
    #[arg(
        long,
        env = "QFOTA_RESCAN_SECS",
        default_value_t = 10,
        value_name = "SECS",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub rescan_secs: u64,
    /// Local cache of an s3:// location's packages: each version is
    /// downloaded once, validated and served from here; kept across
    /// restarts. One per replica.
    #[arg(
        long,
        env = "QFOTA_CACHE_DIR",
        default_value = "s3-cache",
        value_name = "DIR"
    )]
    pub cache_dir: PathBuf,
    /// Most bytes the cache keeps; past it the least recently used
    /// versions are deleted (and fetched again when asked for).
    #[arg(
        long,
        env = "QFOTA_CACHE_MAX_BYTES",
        default_value_t = DEFAULT_CACHE_MAX_BYTES,
        value_name = "BYTES"
    )]
    pub cache_max_bytes: u64,
    /// Name of this replica, written as `instance` in every download
    /// record (merged logs of several replicas tell them apart).
    #[arg(long, env = "QFOTA_INSTANCE_ID", value_name = "ID", value_parser = parse_instance_id)]
    pub instance_id: Option<String>,
}

/// An `--instance-id`: not empty, not `-` (what `report` shows for
/// records without one), no control characters.
fn parse_instance_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s == "-" || s.chars().any(char::is_control) {
        return Err(format!(
            "{s:?}: an instance id is a name (not empty, not \"-\", no control characters)"
        ));
    }
    Ok(s.to_string())
}

impl ReplicaArgs {
    /// The object-store settings when `dir` (the package argument) is an
    /// `s3://` location; `None` for a folder.
    ///
    /// # Errors
    /// [`LocationError`]: an `s3://` location without a bucket or with an
    /// unclean prefix.
    pub fn s3_config(&self, dir: Option<&Path>) -> Result<Option<S3Config>, LocationError> {
        let Some(location) = self.store.location(dir)? else {
            return Ok(None);
        };
        Ok(Some(S3Config {
            location,
            rescan: Duration::from_secs(self.rescan_secs),
            cache_dir: self.cache_dir.clone(),
            cache_max_bytes: self.cache_max_bytes,
            package_memory: crate::catalog::RESIDENT_TOTAL,
        }))
    }

    /// `builder` with the object store (when `dir` is an `s3://`
    /// location) and the instance id applied.
    ///
    /// # Errors
    /// As [`ReplicaArgs::s3_config`].
    pub fn apply(
        &self,
        dir: Option<&Path>,
        mut builder: ServerBuilder,
    ) -> Result<ServerBuilder, LocationError> {
        if let Some(config) = self.s3_config(dir)? {
            builder = builder.s3(config);
        }
        if let Some(id) = &self.instance_id {
            builder = builder.instance_id(id.clone());
        }
        Ok(builder)
    }
}

/// `--s3-endpoint`: an `http(s)://HOST[:PORT]` URL
/// ([`crate::catalog::s3::store::check_endpoint`]).
fn parse_endpoint(s: &str) -> Result<String, String> {
    crate::catalog::s3::store::check_endpoint(s)?;
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        replica: ReplicaArgs,
    }

    #[test]
    fn s3_locations_take_the_flags_and_folders_stay_folders() {
        let cli = Cli::parse_from([
            "x",
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--s3-path-style",
            "--rescan-secs",
            "3",
        ]);
        let config = cli
            .replica
            .s3_config(Some(Path::new("s3://fota/fleet")))
            .unwrap()
            .unwrap();
        assert_eq!(config.location.bucket, "fota");
        assert_eq!(config.location.prefix, "fleet");
        assert!(config.location.path_style);
        assert_eq!(config.rescan, Duration::from_secs(3));
        assert_eq!(config.cache_max_bytes, DEFAULT_CACHE_MAX_BYTES);
        assert!(
            cli.replica
                .s3_config(Some(Path::new("packages")))
                .unwrap()
                .is_none()
        );
        assert!(cli.replica.s3_config(Some(Path::new("s3://"))).is_err());
        assert!(Cli::try_parse_from(["x", "--rescan-secs", "0"]).is_err());
        for bad in ["", "-", "eu\n1"] {
            assert!(
                Cli::try_parse_from(["x", "--instance-id", bad]).is_err(),
                "{bad:?}"
            );
        }
        let named = Cli::parse_from(["x", "--instance-id", "eu-1"]);
        assert_eq!(named.replica.instance_id.as_deref(), Some("eu-1"));
    }
}

//! Credentials and region from the AWS shared files, as the AWS CLI reads
//! them: `~/.aws/credentials` (`AWS_SHARED_CREDENTIALS_FILE`) and
//! `~/.aws/config` (`AWS_CONFIG_FILE`), profile `AWS_PROFILE` (else
//! `default`). In the credentials file a profile's section is its name; in
//! the config file it is `[profile NAME]` (but `[default]`). Keys:
//! `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`,
//! `region`. Parsed with `rust-ini`.
//!
//! Used when the environment holds no `AWS_ACCESS_KEY_ID`: the variables
//! win over the files, as for the AWS CLI and SDKs.

use std::path::{Path, PathBuf};

use ini::Ini;

/// What one profile of the shared files gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The profile's name (`default` unless `AWS_PROFILE`).
    pub name: String,
    /// `aws_access_key_id` (with the secret: both or no credentials).
    pub credentials: Option<(String, String)>,
    /// `aws_session_token`, for temporary credentials.
    pub session_token: Option<String>,
    /// `region`.
    pub region: Option<String>,
}

impl Profile {
    /// The profile named by `AWS_PROFILE` (else `default`) from the files
    /// the environment names (else under `$HOME/.aws/`); `None` when
    /// neither file has that profile.
    pub fn from_environment() -> Option<Profile> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let name = var("AWS_PROFILE")
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_else(|| "default".into());
        let home = var("HOME").map(PathBuf::from);
        let under_home = |file: &str| home.as_ref().map(|h| h.join(".aws").join(file));
        let credentials = var("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| under_home("credentials"));
        let config = var("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| under_home("config"));
        Profile::load(&name, credentials.as_deref(), config.as_deref())
    }

    /// Profile `name` from the credentials file and the config file (either
    /// may be missing or unreadable); `None` when neither has it.
    pub fn load(name: &str, credentials: Option<&Path>, config: Option<&Path>) -> Option<Profile> {
        let read = |path: Option<&Path>| path.and_then(|p| Ini::load_from_file(p).ok());
        let (creds, conf) = (read(credentials), read(config));
        let conf_section = if name == "default" {
            name.to_string()
        } else {
            format!("profile {name}")
        };
        let creds_props = creds.as_ref().and_then(|i| i.section(Some(name)));
        let conf_props = conf
            .as_ref()
            .and_then(|i| i.section(Some(conf_section.as_str())));
        if creds_props.is_none() && conf_props.is_none() {
            return None;
        }
        // The credentials file first, then the config file.
        let get = |key: &str| {
            creds_props
                .and_then(|p| p.get(key))
                .or_else(|| conf_props.and_then(|p| p.get(key)))
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let credentials = get("aws_access_key_id").zip(get("aws_secret_access_key"));
        let region = conf_props
            .and_then(|p| p.get("region"))
            .or_else(|| creds_props.and_then(|p| p.get("region")))
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty());
        Some(Profile {
            name: name.to_string(),
            credentials,
            session_token: get("aws_session_token"),
            region,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_is_read_from_both_files_the_credentials_file_first() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let conf = dir.path().join("config");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s3cret\n\n\
             [fleet]\naws_access_key_id=AKIDFLEET\naws_secret_access_key=fleet-secret\n\
             aws_session_token = tok\n",
        )
        .unwrap();
        std::fs::write(
            &conf,
            "[default]\nregion = eu-central-1\n[profile fleet]\nregion = ap-south-1\n\
             aws_access_key_id = IGNORED\n[profile keyless]\nregion = us-west-2\n",
        )
        .unwrap();
        let fleet = Profile::load("fleet", Some(&creds), Some(&conf)).unwrap();
        assert_eq!(
            fleet.credentials,
            Some(("AKIDFLEET".into(), "fleet-secret".into()))
        );
        assert_eq!(fleet.session_token.as_deref(), Some("tok"));
        assert_eq!(fleet.region.as_deref(), Some("ap-south-1"));
        let default = Profile::load("default", Some(&creds), Some(&conf)).unwrap();
        assert_eq!(default.credentials.unwrap().0, "AKIDDEFAULT");
        assert_eq!(default.region.as_deref(), Some("eu-central-1"));
        // A profile with a region only: no credentials.
        let keyless = Profile::load("keyless", Some(&creds), Some(&conf)).unwrap();
        assert_eq!(keyless.credentials, None);
        assert!(Profile::load("nobody", Some(&creds), Some(&conf)).is_none());
        // Missing files are no profile, not an error.
        let none = dir.path().join("absent");
        assert!(Profile::load("default", Some(&none), None).is_none());
    }
}

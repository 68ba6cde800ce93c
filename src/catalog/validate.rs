//! The per-profile verdict of SPEC §6: whether a package's URLs, as this
//! server advertises them, fit each module family.
//!
//! The verdicts depend on what the server advertises (host, ports, FTP
//! credentials), so they live with the catalog; the pure package checks
//! (zip, names, version tokens) are in [`crate::package`], shared with the
//! simulator.

use serde::Serialize;

use crate::package::name::extension;
use crate::profile::Profile;

/// FTP credentials advertised in printed URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FtpCredentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

/// What the server advertises to modules: the host and enabled ports the
/// URLs are built from (`--public-host`, `--ftp`, `--http`, `--https`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Advertised {
    /// Host name or IP address modules connect to.
    pub host: String,
    /// FTP port, when FTP is enabled.
    pub ftp: Option<u16>,
    /// HTTP port, when HTTP is enabled.
    pub http: Option<u16>,
    /// HTTPS port, when HTTPS is enabled.
    pub https: Option<u16>,
    /// Credentials put in FTP URLs (the first `--user`); `None` → anonymous,
    /// no credentials in the URL.
    pub ftp_credentials: Option<FtpCredentials>,
}

impl Advertised {
    /// `ftp://user:pass@host:port/<rel_path>` (no credentials when
    /// anonymous), or `None` when FTP is off.
    pub fn ftp_url(&self, rel_path: &str) -> Option<String> {
        let port = self.ftp?;
        let host = url_host(&self.host);
        Some(match &self.ftp_credentials {
            Some(c) => format!("ftp://{}:{}@{host}:{port}/{rel_path}", c.user, c.password),
            None => format!("ftp://{host}:{port}/{rel_path}"),
        })
    }

    /// `http://host:port/<rel_path>`, or `None` when HTTP is off.
    pub fn http_url(&self, rel_path: &str) -> Option<String> {
        let port = self.http?;
        Some(format!("http://{}:{port}/{rel_path}", url_host(&self.host)))
    }

    /// `https://host:port/<rel_path>`, or `None` when HTTPS is off.
    pub fn https_url(&self, rel_path: &str) -> Option<String> {
        let port = self.https?;
        Some(format!(
            "https://{}:{port}/{rel_path}",
            url_host(&self.host)
        ))
    }

    /// The URL of the package per enabled protocol (`ftp`, `http`,
    /// `https`): what `--ready-json` and the admin re-scan answer carry.
    pub fn url_map(&self, rel_path: &str) -> std::collections::BTreeMap<&'static str, String> {
        [
            ("ftp", self.ftp_url(rel_path)),
            ("http", self.http_url(rel_path)),
            ("https", self.https_url(rel_path)),
        ]
        .into_iter()
        .filter_map(|(proto, url)| Some((proto, url?)))
        .collect()
    }

    /// `package` as `--ready-json` and the admin re-scan answer list it.
    pub fn listing(&self, package: &super::Package) -> PackageListing {
        PackageListing {
            path: package.path.clone(),
            size: package.size,
            sha256: package.sha256.clone(),
            valid: package.is_valid(),
            urls: self.url_map(&package.path),
        }
    }

    /// Every enabled URL of the package, FTP first (the map's order:
    /// `ftp` < `http` < `https`).
    pub fn urls(&self, rel_path: &str) -> Vec<String> {
        self.url_map(rel_path).into_values().collect()
    }

    /// Problems with the advertised FTP credentials (SPEC §6: ≤ 50 bytes,
    /// free of `@ : / % "` and spaces). Empty when fine or anonymous.
    pub fn credential_problems(&self) -> Vec<String> {
        let Some(c) = &self.ftp_credentials else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (what, value) in [("user", &c.user), ("password", &c.password)] {
            if value.len() > 50 {
                out.push(format!("FTP {what} is {} bytes (> 50)", value.len()));
            }
            if let Some(bad) = value.chars().find(|ch| "@:/%\" ".contains(*ch)) {
                out.push(format!("FTP {what} contains {bad:?}, which breaks the URL"));
            }
        }
        out
    }
}

/// One package as a test rig needs it ([`Advertised::listing`]): in
/// `--ready-json`'s `packages` and `POST /packages/rescan`'s `found`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageListing {
    /// Path relative to the package folder (`Jun/update-v12-to-v13.zip`).
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Passed validation (an invalid package is refused unless
    /// `--allow-invalid`).
    pub valid: bool,
    /// The URL a module is given, per enabled protocol (`ftp`, `http`,
    /// `https`).
    pub urls: std::collections::BTreeMap<&'static str, String>,
}

/// An IPv6 literal goes in brackets inside a URL.
fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Whether one package fits one module family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProfileVerdict {
    /// Profile name.
    pub profile: &'static str,
    /// True when every enabled URL of the package is acceptable to it.
    pub fits: bool,
    /// Why not, one line each.
    pub problems: Vec<String>,
}

/// The verdict of `profile` on the package at `rel_path`, `size` bytes,
/// given what the server advertises: extension, URL length (`url_max`),
/// FTP field lengths (`field_max`: user, password, host, file path),
/// `ec200`'s root-only FTP path (SPEC §2, §6; seeds 000–004) and the
/// family's largest package (`package_max`: `eg06xk` ends `END,550` past
/// it, seed 000).
pub fn profile_verdict(
    profile: &'static Profile,
    rel_path: &str,
    size: u64,
    adv: &Advertised,
) -> ProfileVerdict {
    let mut problems = Vec::new();
    if let Some(max) = profile.package_max.filter(|max| size > *max) {
        problems.push(format!(
            "package is {size} bytes, over the {max} bytes {} takes",
            profile.name
        ));
    }
    match extension(rel_path) {
        Some(ext) if profile.accepts_extension(&ext) => {}
        _ => problems.push(format!(
            "{} takes only .{} packages",
            profile.name,
            profile.extensions.join(", .")
        )),
    }
    for url in adv.urls(rel_path) {
        if url.len() > profile.url_max {
            problems.push(format!(
                "URL is {} bytes, over the {}-byte limit: {url}",
                url.len(),
                profile.url_max
            ));
        }
    }
    if adv.ftp.is_some() {
        if profile.ftp_root_only && rel_path.contains('/') {
            problems.push(format!(
                "{} FTP downloads only from the root folder; {rel_path} is in a sub-folder",
                profile.name
            ));
        }
        // SPEC §6: every family, whatever its field limits.
        problems.extend(adv.credential_problems());
        if let Some(max) = profile.field_max {
            for (what, value) in [("host", adv.host.as_str()), ("file path", rel_path)] {
                if value.len() > max {
                    problems.push(format!(
                        "FTP {what} is {} bytes, over the {max}-byte field limit",
                        value.len()
                    ));
                }
            }
        }
    }
    ProfileVerdict {
        profile: profile.name,
        fits: problems.is_empty(),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adv() -> Advertised {
        Advertised {
            host: "192.0.2.2".into(),
            ftp: Some(21),
            http: Some(80),
            https: None,
            ftp_credentials: Some(FtpCredentials {
                user: "test".into(),
                password: "test".into(),
            }),
        }
    }

    #[test]
    fn urls_are_built_like_the_seeds_show_them() {
        let a = adv();
        assert_eq!(
            a.ftp_url("Jun/update-v12-to-v13.zip").unwrap(),
            "ftp://test:test@192.0.2.2:21/Jun/update-v12-to-v13.zip"
        );
        assert_eq!(a.http_url("x.zip").unwrap(), "http://192.0.2.2:80/x.zip");
        assert!(a.https_url("x.zip").is_none());
        let v6 = Advertised {
            host: "::1".into(),
            http: Some(8080),
            ..Default::default()
        };
        assert_eq!(v6.http_url("x.zip").unwrap(), "http://[::1]:8080/x.zip");
    }

    #[test]
    fn a_package_over_a_familys_largest_does_not_fit_it() {
        let (a, eg06xk) = (adv(), Profile::by_name("eg06xk").unwrap());
        let max = eg06xk.package_max.unwrap();
        assert!(profile_verdict(eg06xk, "update.zip", max, &a).fits);
        let v = profile_verdict(eg06xk, "update.zip", max + 1, &a);
        assert!(!v.fits && v.problems[0].contains("over the"), "{v:?}");
        let ec2x = Profile::by_name("ec2x").unwrap();
        assert!(profile_verdict(ec2x, "update.zip", max + 1, &a).fits);
    }

    #[test]
    fn verdicts_follow_the_profile_table() {
        let a = adv();
        let ec200 = Profile::by_name("ec200").unwrap();
        let ec2x = Profile::by_name("ec2x").unwrap();
        let dfota = Profile::by_name("eg06xk-dfota").unwrap();
        assert!(profile_verdict(ec200, "update.zip", 1000, &a).fits);
        assert!(!profile_verdict(ec200, "Jun/update.zip", 1000, &a).fits);
        assert!(profile_verdict(ec2x, "Jun/update.zip", 1000, &a).fits);
        assert!(profile_verdict(ec200, "fw.bin", 1000, &a).fits);
        assert!(!profile_verdict(ec2x, "fw.bin", 1000, &a).fits);
        // 100-byte URL limit of eg06xk-dfota (seed 002).
        let long = format!("{}.zip", "a".repeat(80));
        let v = profile_verdict(dfota, &long, 1000, &a);
        assert!(!v.fits);
        assert!(v.problems.iter().any(|p| p.contains("100-byte")));
        // ec2x has a 50-byte file_path field limit (seed 004).
        assert!(!profile_verdict(ec2x, &long, 1000, &a).fits);
    }

    #[test]
    fn credential_rules() {
        let mut a = adv();
        assert!(a.credential_problems().is_empty());
        a.ftp_credentials = Some(FtpCredentials {
            user: "a@b".into(),
            password: "x".repeat(51),
        });
        assert_eq!(a.credential_problems().len(), 2);
        // They are in every family's verdict (SPEC §6), eg06xk's too,
        // which has no per-field limit; without FTP they do not matter.
        for profile in &crate::profile::PROFILES {
            let v = profile_verdict(profile, "update.zip", 1000, &a);
            assert!(!v.fits, "{}", profile.name);
            assert!(
                v.problems.iter().any(|p| p.contains("contains '@'")),
                "{v:?}"
            );
            assert!(v.problems.iter().any(|p| p.contains("51 bytes")), "{v:?}");
        }
        a.ftp = None;
        let ec2x = Profile::by_name("ec2x").unwrap();
        assert!(profile_verdict(ec2x, "update.zip", 1000, &a).fits);
    }
}

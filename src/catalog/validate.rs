//! Package validation: zip integrity, naming rules and the per-profile
//! verdict of SPEC §6.
//!
//! Everything here is pure (bytes or names in, a report out) so that the
//! catalog scanner, `qfota-serve check` and the simulator's package checks
//! (SPEC §5) agree.

use std::io::{Read, Seek};

use serde::Serialize;

use crate::profile::Profile;

/// Why a zip archive is not a package a module would accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZipError {
    /// The central directory cannot be read (not a zip, truncated, …).
    #[error("not a readable zip archive: {0}")]
    Unreadable(String),
    /// The archive has no entries.
    #[error("zip archive has no entries")]
    Empty,
    /// An entry is encrypted; modules cannot decrypt it.
    #[error("zip entry {0}: encrypted")]
    Encrypted(String),
    /// An entry fails its CRC-32 or cannot be decompressed.
    #[error("zip entry {name}: {detail}")]
    BadEntry {
        /// Entry name inside the archive.
        name: String,
        /// What failed (CRC mismatch, unsupported method, bad data).
        detail: String,
    },
}

/// What a successful zip check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ZipSummary {
    /// Number of entries.
    pub entries: usize,
    /// Sum of the entries' uncompressed sizes, in bytes.
    pub uncompressed_bytes: u64,
}

/// Reads the central directory, then every entry through to its end so the
/// zip crate checks each CRC-32. Encrypted entries are refused.
///
/// # Errors
/// [`ZipError`] naming the first entry that fails.
pub fn check_zip<R: Read + Seek>(reader: R) -> Result<ZipSummary, ZipError> {
    let mut archive =
        zip::ZipArchive::new(reader).map_err(|e| ZipError::Unreadable(e.to_string()))?;
    if archive.is_empty() {
        return Err(ZipError::Empty);
    }
    let mut uncompressed_bytes = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    for i in 0..archive.len() {
        let (name, encrypted) = match archive.by_index_raw(i) {
            Ok(raw) => (raw.name().to_string(), raw.encrypted()),
            Err(e) => {
                return Err(ZipError::BadEntry {
                    name: format!("#{i}"),
                    detail: e.to_string(),
                });
            }
        };
        if encrypted {
            return Err(ZipError::Encrypted(name));
        }
        let bad = |detail: String| ZipError::BadEntry {
            name: name.clone(),
            detail,
        };
        let mut entry = archive.by_index(i).map_err(|e| bad(e.to_string()))?;
        loop {
            // The zip crate verifies the CRC-32 when the entry reaches EOF
            // and reports a mismatch as an I/O error.
            match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => uncompressed_bytes += n as u64,
                Err(e) => return Err(bad(e.to_string())),
            }
        }
    }
    Ok(ZipSummary {
        entries: archive.len(),
        uncompressed_bytes,
    })
}

/// Characters SPEC §6 allows in a package's path segments.
fn allowed_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// The naming problems of a package path relative to the package folder
/// (`Jun/update-v12-to-v13.zip`), per SPEC §6: every segment ASCII letters,
/// digits, `.`, `-`, `_`; the file ends `.zip` or `.bin`. Empty when fine.
pub fn name_problems(rel_path: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for segment in rel_path.split('/') {
        if let Some(bad) = segment.chars().find(|c| !allowed_name_char(*c)) {
            problems.push(format!(
                "name {segment:?} has {bad:?}; only ASCII letters, digits, '.', '-', '_' are safe in a module URL"
            ));
        }
    }
    match extension(rel_path) {
        Some(ext) if ext == "zip" || ext == "bin" => {}
        _ => problems.push("not a package: the name must end .zip (or .bin for ec200)".into()),
    }
    problems
}

/// The lower-case extension of the last path segment, without the dot.
pub fn extension(rel_path: &str) -> Option<String> {
    let file = rel_path.rsplit('/').next()?;
    let (_, ext) = file.rsplit_once('.')?;
    Some(ext.to_ascii_lowercase())
}

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

    /// Every enabled URL of the package, FTP first.
    pub fn urls(&self, rel_path: &str) -> Vec<String> {
        [
            self.ftp_url(rel_path),
            self.http_url(rel_path),
            self.https_url(rel_path),
        ]
        .into_iter()
        .flatten()
        .collect()
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

/// The verdict of `profile` on the package at `rel_path`, given what the
/// server advertises: extension, URL length (`url_max`), FTP field lengths
/// (`field_max`: user, password, host, file path) and `ec200`'s root-only
/// FTP path (SPEC §2, §6; seeds 000–004).
pub fn profile_verdict(
    profile: &'static Profile,
    rel_path: &str,
    adv: &Advertised,
) -> ProfileVerdict {
    let mut problems = Vec::new();
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
        if let Some(max) = profile.field_max {
            let mut fields = vec![("host", adv.host.as_str()), ("file path", rel_path)];
            if let Some(c) = &adv.ftp_credentials {
                fields.push(("user", c.user.as_str()));
                fields.push(("password", c.password.as_str()));
            }
            for (what, value) in fields {
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
    use std::io::{Cursor, Write};

    fn zip_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn good_zip_passes_and_counts_entries() {
        let z = zip_bytes(&[("system.diff", b"abc"), ("boot.diff", &[7u8; 1000])]);
        let s = check_zip(Cursor::new(z)).unwrap();
        assert_eq!(s.entries, 2);
        assert_eq!(s.uncompressed_bytes, 1003);
    }

    #[test]
    fn stored_entry_with_flipped_byte_fails_its_crc() {
        let data = vec![0x55u8; 4096];
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        w.start_file("system.diff", opts).unwrap();
        w.write_all(&data).unwrap();
        let mut z = w.finish().unwrap().into_inner();
        let at = z.iter().position(|b| *b == 0x55).unwrap() + 100;
        z[at] ^= 0xff;
        let err = check_zip(Cursor::new(z)).unwrap_err();
        assert!(
            matches!(&err, ZipError::BadEntry { name, .. } if name == "system.diff"),
            "{err}"
        );
    }

    #[test]
    fn non_zip_and_empty_zip_fail() {
        assert!(matches!(
            check_zip(Cursor::new(b"hello".to_vec())),
            Err(ZipError::Unreadable(_))
        ));
        assert_eq!(check_zip(Cursor::new(zip_bytes(&[]))), Err(ZipError::Empty));
    }

    #[test]
    fn naming_rules() {
        assert!(name_problems("update-v12-to-v13.zip").is_empty());
        assert!(name_problems("Jun/update_1.2.bin").is_empty());
        assert_eq!(name_problems("my update.zip").len(), 1);
        assert_eq!(name_problems("a@b.zip").len(), 1);
        assert_eq!(name_problems("caf\u{e9}.zip").len(), 1);
        assert_eq!(name_problems("notes.txt").len(), 1);
        assert_eq!(name_problems("noext").len(), 1);
    }

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
    fn verdicts_follow_the_profile_table() {
        let a = adv();
        let ec200 = Profile::by_name("ec200").unwrap();
        let ec2x = Profile::by_name("ec2x").unwrap();
        let dfota = Profile::by_name("eg06xk-dfota").unwrap();
        assert!(profile_verdict(ec200, "update.zip", &a).fits);
        assert!(!profile_verdict(ec200, "Jun/update.zip", &a).fits);
        assert!(profile_verdict(ec2x, "Jun/update.zip", &a).fits);
        assert!(profile_verdict(ec200, "fw.bin", &a).fits);
        assert!(!profile_verdict(ec2x, "fw.bin", &a).fits);
        // 100-byte URL limit of eg06xk-dfota (seed 002).
        let long = format!("{}.zip", "a".repeat(80));
        let v = profile_verdict(dfota, &long, &a);
        assert!(!v.fits);
        assert!(v.problems.iter().any(|p| p.contains("100-byte")));
        // ec2x has a 50-byte file_path field limit (seed 004).
        assert!(!profile_verdict(ec2x, &long, &a).fits);
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
    }
}

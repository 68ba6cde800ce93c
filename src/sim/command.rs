//! Parsing `AT+QFOTADL=<args>` the way a module does: the quoted URL, its
//! parts, and `ec200`'s optional parameters, checked against the family's
//! [`Profile`] (SPEC §2, §3).
//!
//! Anything that breaks the AT syntax or a profile limit is a
//! [`CommandError`]; the module answers `ERROR` and nothing else happens.
//! Modules are not known to percent-decode, so nothing here does either.

use std::fmt;

use crate::profile::Profile;
use crate::sim::ufs::FileName;

/// `<upgrade_mode>` when not given: 1, upgrade at once (seed
/// `001_2f648264def3e0b1.txt` §3.2.1, underlined default).
pub const DEFAULT_UPGRADE_MODE: u8 = 1;
/// `<download_URC_max>` when not given: 0, no `DOWNLOADING` URCs (seed 001).
pub const DEFAULT_DOWNLOAD_URC_MAX: u8 = 0;
/// `<update_URC_max>` when not given: 100 (seed 001); also the `UPDATING`
/// lines of families without the parameter, 1..=100 (SPEC §3, the seeds'
/// examples).
pub const DEFAULT_UPDATE_URC_MAX: u8 = 100;
/// User name sent when the FTP URL has none.
pub const ANONYMOUS: &str = "anonymous";

/// Why `AT+QFOTADL=<args>` is answered `ERROR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The URL is not a quoted AT string (`AT+QFOTADL="<url>"`).
    #[error("the URL must be a quoted string")]
    NotQuoted,
    /// The closing `"` of the URL is missing.
    #[error("the URL's closing quote is missing")]
    Unterminated,
    /// A `"` follows the closing quote: the URL contained a quote, which an
    /// AT string cannot hold (SPEC §2).
    #[error("the URL contains '\"'")]
    QuoteInUrl,
    /// Something other than `,<param>` follows the quoted URL.
    #[error("unexpected text after the URL: {0:?}")]
    TrailingText(String),
    /// The URL is longer than the profile's `url_max` bytes.
    #[error("the URL is {len} bytes, over the {max}-byte limit of this family")]
    UrlTooLong {
        /// Length of the URL in bytes.
        len: usize,
        /// The profile's `url_max`.
        max: usize,
    },
    /// The URL holds a control character (below 0x20, or 0x7f).
    #[error("the URL contains a control character")]
    ControlCharacter,
    /// The URL does not start with `ftp://`, `http://` or `https://` (any
    /// case).
    #[error("the URL must start with ftp://, http:// or https://")]
    BadScheme,
    /// The URL has no host.
    #[error("the URL has no host")]
    MissingHost,
    /// The port is not a number in 1–65535.
    #[error("bad port {0:?} (1-65535)")]
    BadPort(String),
    /// The URL names no file.
    #[error("the URL names no file")]
    MissingPath,
    /// A field is over the profile's `field_max` bytes (seeds 001–004:
    /// 50 bytes each for `<username>`, `<password>`, `<serverURL>` and
    /// `<file_path>`).
    #[error("{field} is {len} bytes, over the {max}-byte limit of this family")]
    FieldTooLong {
        /// `user`, `password`, `host` or `file_path`.
        field: &'static str,
        /// Length in bytes.
        len: usize,
        /// The profile's `field_max`.
        max: usize,
    },
    /// `ec200` takes FTP files in the server's root folder only (seed 001
    /// §3.2.1.1, "Currently only root path is supported").
    #[error("this family takes only files in the FTP root folder")]
    SubFolder,
    /// An `http(s)://` URL carries `user@`; the seeds' HTTP URL form has no
    /// credentials.
    #[error("an HTTP(S) URL takes no user name or password")]
    CredentialsInHttpUrl,
    /// Optional parameters on a family that has none (only `ec200` has).
    /// The write command of every other family is `AT+QFOTADL=<url>` alone
    /// (seeds `000_318699ddba19ea03.txt` §3.3.1–3.3.3,
    /// `002_1ebd9d344d8c6b8a.txt` §3.3.1, `003_ac1d7f519ffa6f58.txt`,
    /// `004_88405b99851b7db5.txt` §3.2), "If there is any error: ERROR";
    /// host code that appends `,0,50` (SPEC §8) is written for the
    /// `ec200` family and gets `ERROR` elsewhere, as on a real module.
    #[error("this family takes no parameters after the URL")]
    UnexpectedParameters,
    /// A local path (`/…`) on a family without a local file system prefix
    /// (`ec200` takes packages over UART, `FILE:<length>`), or one that does
    /// not start with the family's prefix (SPEC §9).
    #[error("this family takes local packages only under {0}")]
    LocalPrefix(&'static str),
    /// A local path over the family's length limit (SPEC §9: 90, 100, 512
    /// bytes; seeds 004 §3.2.3, 002 §3.3.1.3, 000 §3.3.3).
    #[error("the local path is {len} bytes, over the {max}-byte limit of this family")]
    LocalPathTooLong {
        /// Length in bytes.
        len: usize,
        /// The family's limit.
        max: usize,
    },
    /// The file name after the prefix breaks the UFS name rules.
    #[error("bad local file name: {0}")]
    LocalName(String),
    /// `FILE:<length>` on a family other than `ec200`, or a length that is
    /// not a decimal number from 1 to [`MAX_FILE_LENGTH`].
    #[error("bad FILE:<length> {0:?}")]
    BadFileLength(String),
    /// More than `<upgrade_mode>,<download_URC_max>,<update_URC_max>`.
    #[error("too many parameters after the URL")]
    TooManyParameters,
    /// A parameter is not a decimal integer, or out of its range (seed 001:
    /// `upgrade_mode` 0|1, the URC counts 0 or 5–100).
    #[error("bad <{name}> {value:?}")]
    BadParameter {
        /// Parameter name as in seed 001.
        name: &'static str,
        /// The text given.
        value: String,
    },
}

/// The protocol a package URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `ftp://` (or `FTP://`), default port 21.
    Ftp,
    /// `http://`, default port 80.
    Http,
    /// `https://`, default port 443.
    Https,
}

impl Scheme {
    /// The port used when the URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Ftp => 21,
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// Whether the download is reported with `FTPSTART`/`FTPEND` and FTP
    /// codes (otherwise `HTTPSTART`/`HTTPEND` and HTTP codes).
    pub fn is_ftp(self) -> bool {
        self == Scheme::Ftp
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Ftp => "ftp",
            Scheme::Http => "http",
            Scheme::Https => "https",
        })
    }
}

/// A package URL taken apart (SPEC §2 URL forms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FotaUrl {
    /// The URL exactly as given.
    pub text: String,
    /// Protocol.
    pub scheme: Scheme,
    /// FTP user name; `None` means [`ANONYMOUS`]. Always `None` for HTTP(S).
    pub user: Option<String>,
    /// FTP password; `None` when the URL has none.
    pub password: Option<String>,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port (default per scheme).
    pub port: u16,
    /// FTP: `<file_path>` without the leading `/` (`Jun/update.zip`), sent
    /// as is in `SIZE`/`RETR`. HTTP(S): the request target with its leading
    /// `/` and any query (`/update.zip?x=1`).
    pub path: String,
}

impl FotaUrl {
    /// Parses and checks `url` (the text between the quotes) against the
    /// profile's limits: `url_max`, `field_max` (FTP fields, as the seeds
    /// list them for `<FTP_URL>` only) and `ftp_root_only`.
    ///
    /// # Errors
    /// The [`CommandError`] that makes the module answer `ERROR`.
    pub fn parse(url: &str, profile: &Profile) -> Result<FotaUrl, CommandError> {
        if url.len() > profile.url_max {
            return Err(CommandError::UrlTooLong {
                len: url.len(),
                max: profile.url_max,
            });
        }
        if url.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(CommandError::ControlCharacter);
        }
        let (scheme, rest) = split_scheme(url).ok_or(CommandError::BadScheme)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match (scheme, userinfo) {
            (_, None) => (None, None),
            (Scheme::Ftp, Some(info)) => match info.split_once(':') {
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => (Some(info.to_string()), None),
            },
            (Scheme::Http | Scheme::Https, Some(_)) => {
                return Err(CommandError::CredentialsInHttpUrl);
            }
        };
        let (host, port) = split_host_port(hostport, scheme.default_port())?;
        let path = match scheme {
            Scheme::Ftp => path.strip_prefix('/').unwrap_or(path).to_string(),
            Scheme::Http | Scheme::Https => path.to_string(),
        };
        // `/` or `/Jun/` names a folder: a server answers it with a
        // listing, which is no package.
        let file_part = path.split(['?', '#']).next().unwrap_or("");
        if file_part.is_empty() || file_part.ends_with('/') {
            return Err(CommandError::MissingPath);
        }
        let parsed = FotaUrl {
            text: url.to_string(),
            scheme,
            user,
            password,
            host,
            port,
            path,
        };
        if scheme.is_ftp() {
            parsed.check_ftp_fields(profile)?;
        }
        Ok(parsed)
    }

    fn check_ftp_fields(&self, profile: &Profile) -> Result<(), CommandError> {
        if let Some(max) = profile.field_max {
            let fields = [
                ("user", self.user.as_deref().unwrap_or("")),
                ("password", self.password.as_deref().unwrap_or("")),
                ("host", self.host.as_str()),
                ("file_path", self.path.as_str()),
            ];
            for (field, value) in fields {
                if value.len() > max {
                    return Err(CommandError::FieldTooLong {
                        field,
                        len: value.len(),
                        max,
                    });
                }
            }
        }
        if profile.ftp_root_only && self.path.contains('/') {
            return Err(CommandError::SubFolder);
        }
        Ok(())
    }

    /// The FTP user name to log in with ([`ANONYMOUS`] when absent).
    pub fn ftp_user(&self) -> &str {
        self.user.as_deref().unwrap_or(ANONYMOUS)
    }

    /// The FTP password to log in with: the URL's, else [`ANONYMOUS`] for
    /// an anonymous login, else empty.
    pub fn ftp_password(&self) -> &str {
        match (&self.user, &self.password) {
            (_, Some(p)) => p,
            (None, None) => ANONYMOUS,
            (Some(_), None) => "",
        }
    }

    /// The package's file name: the last path segment, without any query
    /// (`update-v12-to-v13.zip`). Used for the version rule of SPEC §5.
    pub fn file_name(&self) -> &str {
        let path = self.path.split(['?', '#']).next().unwrap_or("");
        path.rsplit('/').next().unwrap_or("")
    }

    /// `host:port` as a `Host` header or socket address text (IPv6 in
    /// brackets); the port is left out when it is the scheme's default.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.scheme.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn split_scheme(url: &str) -> Option<(Scheme, &str)> {
    [
        ("ftp://", Scheme::Ftp),
        ("http://", Scheme::Http),
        ("https://", Scheme::Https),
    ]
    .into_iter()
    .find_map(|(prefix, scheme)| {
        let head = url.get(..prefix.len())?;
        head.eq_ignore_ascii_case(prefix)
            .then(|| (scheme, &url[prefix.len()..]))
    })
}

fn split_host_port(hostport: &str, default_port: u16) -> Result<(String, u16), CommandError> {
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or(CommandError::MissingHost)?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(CommandError::BadPort(after.to_string())),
        }
    } else {
        match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(CommandError::MissingHost);
    }
    let port = match port {
        None => default_port,
        Some(text) => text
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0 && text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| CommandError::BadPort(text.to_string()))?,
    };
    Ok((host.to_string(), port))
}

/// `ec200`'s optional parameters after the URL (seed
/// `001_2f648264def3e0b1.txt` §3.2.1); `None` means not given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OptionalParams {
    /// `<upgrade_mode>`: 0 = reboot before upgrading, 1 = upgrade at once.
    pub upgrade_mode: Option<u8>,
    /// `<download_URC_max>`: 0 or 5–100 `DOWNLOADING` lines.
    pub download_urc_max: Option<u8>,
    /// `<update_URC_max>`: 0 or 5–100 `UPDATING` lines.
    pub update_urc_max: Option<u8>,
}

impl OptionalParams {
    /// How many `DOWNLOADING` lines the run prints (0 = none).
    pub fn downloading_lines(&self) -> u8 {
        self.download_urc_max.unwrap_or(DEFAULT_DOWNLOAD_URC_MAX)
    }

    /// How many `UPDATING` lines an attempt prints (0 = none): 100 unless
    /// `ec200`'s `<update_URC_max>` says otherwise.
    pub fn updating_lines(&self) -> u8 {
        self.update_urc_max.unwrap_or(DEFAULT_UPDATE_URC_MAX)
    }

    fn parse(texts: &[&str], profile: &Profile) -> Result<OptionalParams, CommandError> {
        if texts.is_empty() {
            return Ok(OptionalParams::default());
        }
        if !profile.optional_params {
            return Err(CommandError::UnexpectedParameters);
        }
        if texts.len() > 3 {
            return Err(CommandError::TooManyParameters);
        }
        let get = |i: usize| texts.get(i).copied().unwrap_or("");
        Ok(OptionalParams {
            upgrade_mode: parse_param("upgrade_mode", get(0), |n| n <= 1)?,
            download_urc_max: parse_param("download_URC_max", get(1), urc_count_ok)?,
            update_urc_max: parse_param("update_URC_max", get(2), urc_count_ok)?,
        })
    }
}

/// 0 or 5–100 (seed 001, `<download_URC_max>` / `<update_URC_max>`).
fn urc_count_ok(n: u8) -> bool {
    n == 0 || (5..=100).contains(&n)
}

/// An empty parameter (`"url",,50`) takes its default, as AT syntax allows
/// for an omitted optional parameter (seed 001 §3.1.1).
fn parse_param(
    name: &'static str,
    text: &str,
    in_range: impl Fn(u8) -> bool,
) -> Result<Option<u8>, CommandError> {
    if text.is_empty() {
        return Ok(None);
    }
    let bad = || CommandError::BadParameter {
        name,
        value: text.to_string(),
    };
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u8 = text.parse().map_err(|_| bad())?;
    if in_range(n) { Ok(Some(n)) } else { Err(bad()) }
}

/// Largest `FILE:<length>` the simulator takes, bytes: the largest
/// package it holds ([`crate::sim::download::progress::MAX_PACKAGE`]).
pub const MAX_FILE_LENGTH: u64 = crate::sim::download::progress::MAX_PACKAGE;

/// `<n>` of `AT+QFOTADL="FILE:<length>",<n>` that selects the vendor's
/// protocol-download mode (seed `001_2f648264def3e0b1.txt` §3.2.1.4).
pub const PROTOCOL_MODE: &str = "2";

/// Where an `AT+QFOTADL` takes its package from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An FTP or HTTP(S) server (seeds 000–004 §3).
    Url(FotaUrl),
    /// A file already in the module's UFS, named by the family's local
    /// path (`/data/ufs/<name>`, SPEC §9).
    Local {
        /// The path as given.
        path: String,
        /// The UFS file name (the path without the prefix).
        name: FileName,
    },
    /// `ec200`'s `FILE:<length>`: `<length>` bytes over the AT port
    /// itself (seed 001 §3.2.1.3).
    Uart {
        /// Package length, bytes.
        length: u64,
    },
    /// `ec200`'s `FILE:<length>,2`: protocol-download mode, answered
    /// `010003` and not simulated further (seed 001 §3.2.1.4).
    ProtocolMode,
}

impl Source {
    /// The URL, for a download from a server.
    pub fn url(&self) -> Option<&FotaUrl> {
        match self {
            Source::Url(url) => Some(url),
            _ => None,
        }
    }

    /// The package's file name for the version rule of SPEC §5 (`None` for
    /// a package over UART, which has none).
    pub fn file_name(&self) -> Option<&str> {
        match self {
            Source::Url(url) => Some(url.file_name()),
            Source::Local { name, .. } => Some(name.as_str()),
            Source::Uart { .. } | Source::ProtocolMode => None,
        }
    }
}

/// A checked `AT+QFOTADL` write command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FotadlCommand {
    /// Where the package comes from.
    pub source: Source,
    /// `ec200`'s optional parameters (all `None` elsewhere).
    pub params: OptionalParams,
}

impl FotadlCommand {
    /// Parses the text after `AT+QFOTADL=`: `"ftp://h/p.zip",0,50`, a
    /// local path `"/data/ufs/p.zip"` (SPEC §9), or on `ec200`
    /// `"FILE:<length>"[,<upgrade_mode>,…]` and `"FILE:<length>",2`.
    ///
    /// # Errors
    /// The [`CommandError`] that makes the module answer `ERROR`.
    pub fn parse(at_args: &str, profile: &Profile) -> Result<FotadlCommand, CommandError> {
        let rest = at_args.strip_prefix('"').ok_or(CommandError::NotQuoted)?;
        let (target, tail) = rest.split_once('"').ok_or(CommandError::Unterminated)?;
        if tail.contains('"') {
            return Err(CommandError::QuoteInUrl);
        }
        let params: Vec<&str> = match tail {
            "" => Vec::new(),
            _ => match tail.strip_prefix(',') {
                Some(list) => list.split(',').collect(),
                None => return Err(CommandError::TrailingText(tail.to_string())),
            },
        };
        let source = if target.starts_with('/') {
            local_source(target, profile)?
        } else if let Some(length) = strip_file_prefix(target) {
            let length = file_length(length, profile)?;
            if params == [PROTOCOL_MODE] {
                return Ok(FotadlCommand {
                    source: Source::ProtocolMode,
                    params: OptionalParams::default(),
                });
            }
            Source::Uart { length }
        } else {
            Source::Url(FotaUrl::parse(target, profile)?)
        };
        let params = OptionalParams::parse(&params, profile)?;
        Ok(FotadlCommand { source, params })
    }
}

/// `FILE:` (any case) stripped from `target`, if it starts so.
fn strip_file_prefix(target: &str) -> Option<&str> {
    let head = target.get(..5)?;
    head.eq_ignore_ascii_case("FILE:").then(|| &target[5..])
}

/// `<length>` of `FILE:<length>`: `ec200` only, 1–[`MAX_FILE_LENGTH`].
fn file_length(text: &str, profile: &Profile) -> Result<u64, CommandError> {
    let bad = || CommandError::BadFileLength(text.to_string());
    if !profile.optional_params || text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse::<u64>()
        .ok()
        .filter(|n| (1..=MAX_FILE_LENGTH).contains(n))
        .ok_or_else(bad)
}

/// A local package path checked against the family's prefix and length
/// limit (`Profile::local_prefix`, SPEC §9).
fn local_source(path: &str, profile: &Profile) -> Result<Source, CommandError> {
    let Some((prefix, max)) = profile.local_prefix else {
        return Err(CommandError::LocalPrefix("no local path (FILE:<length>)"));
    };
    if path.len() > max {
        return Err(CommandError::LocalPathTooLong {
            len: path.len(),
            max,
        });
    }
    let name = path
        .strip_prefix(prefix)
        .ok_or(CommandError::LocalPrefix(prefix))?;
    let name = FileName::parse(name).map_err(|_| CommandError::LocalName(name.to_string()))?;
    Ok(Source::Local {
        path: path.to_string(),
        name,
    })
}

/// An `AT+QFOTADL` command to send, before any checking: what a host (or
/// the command line) asks for. Numbers are kept wide so that out-of-range
/// values reach the module and get its `ERROR`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FotadlArgs {
    /// The package URL, unquoted.
    pub url: String,
    /// `<upgrade_mode>`.
    pub upgrade_mode: Option<u32>,
    /// `<download_URC_max>`.
    pub download_urc_max: Option<u32>,
    /// `<update_URC_max>`.
    pub update_urc_max: Option<u32>,
}

impl FotadlArgs {
    /// A command with only a URL.
    pub fn new(url: impl Into<String>) -> FotadlArgs {
        FotadlArgs {
            url: url.into(),
            ..FotadlArgs::default()
        }
    }

    /// The text after `AT+QFOTADL=`: `"<url>"` and, when a later parameter
    /// is given, every earlier one (filled with seed 001's defaults), e.g.
    /// `"ftp://h/p.bin",1,50`.
    pub fn to_at_args(&self) -> String {
        let given = [
            self.upgrade_mode,
            self.download_urc_max,
            self.update_urc_max,
        ];
        let defaults = [
            DEFAULT_UPGRADE_MODE,
            DEFAULT_DOWNLOAD_URC_MAX,
            DEFAULT_UPDATE_URC_MAX,
        ];
        let count = given.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
        let mut out = format!("\"{}\"", self.url);
        for (value, default) in given.iter().zip(defaults).take(count) {
            out.push(',');
            out.push_str(&value.unwrap_or(u32::from(default)).to_string());
        }
        out
    }
}

/// The lines a module answers to `AT+QFOTADL=?` (SPEC §3): `ec200` lists
/// its parameter ranges, other families say only `OK`.
pub fn test_command_response(profile: &Profile) -> Vec<String> {
    let mut lines = Vec::new();
    if profile.optional_params {
        lines.push("+QFOTADL: <url>,(0,1),(0,5-100),(0,5-100)".to_string());
    }
    lines.push("OK".to_string());
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(name: &str) -> &'static Profile {
        Profile::by_name(name).unwrap()
    }

    fn parse(args: &str, p: &str) -> Result<FotadlCommand, CommandError> {
        FotadlCommand::parse(args, profile(p))
    }

    /// A URL of exactly `len` bytes: `http://h/aaa…`.
    fn http_url_of_len(len: usize) -> String {
        let head = "http://h/";
        format!("{head}{}", "a".repeat(len - head.len()))
    }

    #[test]
    fn seed_example_ftp_url_parses() {
        let cmd = parse(
            r#""ftp://test:test@192.0.2.2:21/Jun/update-v12-to-v13.zip""#,
            "ec2x",
        )
        .unwrap();
        let url = cmd.source.url().unwrap().clone();
        assert_eq!(url.scheme, Scheme::Ftp);
        assert_eq!(url.user.as_deref(), Some("test"));
        assert_eq!(url.password.as_deref(), Some("test"));
        assert_eq!(url.host, "192.0.2.2");
        assert_eq!(url.port, 21);
        assert_eq!(url.path, "Jun/update-v12-to-v13.zip");
        assert_eq!(url.file_name(), "update-v12-to-v13.zip");
        assert_eq!(cmd.params, OptionalParams::default());
    }

    #[test]
    fn schemes_are_case_insensitive_and_ports_default() {
        let ftp = parse(r#""FTP://host/p.zip""#, "ec2x")
            .unwrap()
            .source
            .url()
            .unwrap()
            .clone();
        assert_eq!((ftp.scheme, ftp.port), (Scheme::Ftp, 21));
        assert_eq!(ftp.ftp_user(), ANONYMOUS);
        assert_eq!(ftp.ftp_password(), ANONYMOUS);
        let http = parse(r#""http://www.example.com:100/update.zip""#, "ec2x")
            .unwrap()
            .source
            .url()
            .unwrap()
            .clone();
        assert_eq!((http.scheme, http.port), (Scheme::Http, 100));
        assert_eq!(http.path, "/update.zip");
        assert_eq!(http.authority(), "www.example.com:100");
        let https = parse(r#""https://host/u.zip?x=1""#, "ec2x")
            .unwrap()
            .source
            .url()
            .unwrap()
            .clone();
        assert_eq!((https.scheme, https.port), (Scheme::Https, 443));
        assert_eq!(https.file_name(), "u.zip");
        assert_eq!(https.authority(), "host");
        let v6 = parse(r#""http://[::1]:8080/u.zip""#, "ec2x")
            .unwrap()
            .source
            .url()
            .unwrap()
            .clone();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8080));
        assert_eq!(v6.authority(), "[::1]:8080");
    }

    #[test]
    fn user_without_password_logs_in_with_empty_password() {
        let url = parse(r#""ftp://bob@h/p.zip""#, "ec2x")
            .unwrap()
            .source
            .url()
            .unwrap()
            .clone();
        assert_eq!((url.ftp_user(), url.ftp_password()), ("bob", ""));
    }

    #[test]
    fn url_over_the_family_limit_is_refused() {
        for (family, max) in [("ec2x", 255), ("eg06xk-dfota", 100), ("eg06xk", 512)] {
            let at_limit = format!("\"{}\"", http_url_of_len(max));
            assert!(parse(&at_limit, family).is_ok(), "{family} at {max}");
            let over = format!("\"{}\"", http_url_of_len(max + 1));
            assert_eq!(
                parse(&over, family),
                Err(CommandError::UrlTooLong { len: max + 1, max }),
                "{family}"
            );
        }
    }

    #[test]
    fn ftp_field_over_50_bytes_is_refused() {
        let long = "x".repeat(51);
        let ok = "x".repeat(50);
        for (field, url) in [
            ("user", format!("ftp://{long}:p@h/f.zip")),
            ("password", format!("ftp://u:{long}@h/f.zip")),
            ("host", format!("ftp://u:p@{long}/f.zip")),
            ("file_path", format!("ftp://u:p@h/{long}")),
        ] {
            assert_eq!(
                parse(&format!("\"{url}\""), "ec2x"),
                Err(CommandError::FieldTooLong {
                    field,
                    len: 51,
                    max: 50
                }),
                "{field}"
            );
            // eg06xk states no field limit (seed 000).
            assert!(parse(&format!("\"{url}\""), "eg06xk").is_ok(), "{field}");
        }
        // 50 bytes each is allowed (seed 004: "maximum size ... is 50 bytes").
        assert!(parse(&format!("\"ftp://{ok}:{ok}@{ok}/{ok}\""), "ec2x").is_ok());
    }

    #[test]
    fn quote_in_url_is_refused() {
        assert_eq!(
            parse(r#""ftp://h/a"b.zip""#, "ec2x"),
            Err(CommandError::QuoteInUrl)
        );
        assert_eq!(
            parse(r#""http://h/a"b.zip""#, "ec200"),
            Err(CommandError::QuoteInUrl)
        );
    }

    #[test]
    fn at_syntax_errors_are_refused() {
        assert_eq!(parse("ftp://h/p.zip", "ec2x"), Err(CommandError::NotQuoted));
        assert_eq!(
            parse(r#""ftp://h/p.zip"#, "ec2x"),
            Err(CommandError::Unterminated)
        );
        assert!(matches!(
            parse(r#""ftp://h/p.zip"x"#, "ec2x"),
            Err(CommandError::TrailingText(_))
        ));
        assert_eq!(
            parse("\"ftp://h/p\tq.zip\"", "ec2x"),
            Err(CommandError::ControlCharacter)
        );
    }

    #[test]
    fn bad_scheme_host_port_and_path_are_refused() {
        for (url, want) in [
            ("sftp://h/p.zip", CommandError::BadScheme),
            ("data/ufs/p.zip", CommandError::BadScheme),
            ("ftp:/h/p.zip", CommandError::BadScheme),
            ("ftp:///p.zip", CommandError::MissingHost),
            ("ftp://u:p@/p.zip", CommandError::MissingHost),
            ("ftp://h:0/p.zip", CommandError::BadPort("0".into())),
            ("ftp://h:65536/p.zip", CommandError::BadPort("65536".into())),
            ("ftp://h:/p.zip", CommandError::BadPort("".into())),
            ("ftp://h:+21/p.zip", CommandError::BadPort("+21".into())),
            ("ftp://h/", CommandError::MissingPath),
            ("ftp://h", CommandError::MissingPath),
            ("http://h", CommandError::MissingPath),
            ("http://h/", CommandError::MissingPath),
            ("https://h/Jun/", CommandError::MissingPath),
            ("ftp://h/Jun/", CommandError::MissingPath),
            ("http://h/?x=1", CommandError::MissingPath),
            ("http://u:p@h/p.zip", CommandError::CredentialsInHttpUrl),
        ] {
            assert_eq!(parse(&format!("\"{url}\""), "ec2x"), Err(want), "{url}");
        }
    }

    #[test]
    fn ec200_takes_ftp_files_in_the_root_folder_only() {
        let sub = r#""ftp://test:test@h:21/Jun/update.bin""#;
        assert_eq!(parse(sub, "ec200"), Err(CommandError::SubFolder));
        assert!(parse(sub, "ec2x").is_ok());
        assert!(parse(r#""ftp://test:test@h:21/update.bin""#, "ec200").is_ok());
        // The rule is about FTP paths (seed 001 §3.2.1.1).
        assert!(parse(r#""http://h/Jun/update.bin""#, "ec200").is_ok());
    }

    #[test]
    fn ec200_optional_parameters_parse() {
        let cmd = parse(r#""ftp://h/p.bin",1,50"#, "ec200").unwrap();
        assert_eq!(
            cmd.params,
            OptionalParams {
                upgrade_mode: Some(1),
                download_urc_max: Some(50),
                update_urc_max: None
            }
        );
        assert_eq!(cmd.params.downloading_lines(), 50);
        assert_eq!(cmd.params.updating_lines(), 100);
        let all = parse(r#""ftp://h/p.bin",0,0,5"#, "ec200").unwrap().params;
        assert_eq!(
            (
                all.upgrade_mode,
                all.downloading_lines(),
                all.updating_lines()
            ),
            (Some(0), 0, 5)
        );
        let gap = parse(r#""ftp://h/p.bin",,100"#, "ec200").unwrap().params;
        assert_eq!((gap.upgrade_mode, gap.downloading_lines()), (None, 100));
    }

    #[test]
    fn bad_ec200_optional_parameters_are_refused() {
        for args in [
            r#""ftp://h/p.bin",2"#,
            r#""ftp://h/p.bin",1,4"#,
            r#""ftp://h/p.bin",1,101"#,
            r#""ftp://h/p.bin",1,50,1"#,
            r#""ftp://h/p.bin",1,50,256"#,
            r#""ftp://h/p.bin",x"#,
            r#""ftp://h/p.bin",-1"#,
            r#""ftp://h/p.bin", 1"#,
        ] {
            assert!(
                matches!(parse(args, "ec200"), Err(CommandError::BadParameter { .. })),
                "{args}"
            );
        }
        assert_eq!(
            parse(r#""ftp://h/p.bin",1,50,50,1"#, "ec200"),
            Err(CommandError::TooManyParameters)
        );
    }

    #[test]
    fn optional_parameters_on_other_families_are_refused() {
        for family in ["ec2x", "ep06", "eg06xk-dfota", "eg06xk"] {
            assert_eq!(
                parse(r#""ftp://h/p.zip",1"#, family),
                Err(CommandError::UnexpectedParameters),
                "{family}"
            );
        }
    }

    #[test]
    fn args_render_with_earlier_defaults() {
        assert_eq!(FotadlArgs::new("ftp://h/p").to_at_args(), r#""ftp://h/p""#);
        let args = FotadlArgs {
            download_urc_max: Some(50),
            ..FotadlArgs::new("ftp://h/p")
        };
        assert_eq!(args.to_at_args(), r#""ftp://h/p",1,50"#);
        let args = FotadlArgs {
            upgrade_mode: Some(0),
            update_urc_max: Some(300),
            ..FotadlArgs::new("u")
        };
        assert_eq!(args.to_at_args(), r#""u",0,0,300"#);
    }

    #[test]
    fn test_command_lists_ranges_on_ec200_only() {
        assert_eq!(
            test_command_response(profile("ec200")),
            vec!["+QFOTADL: <url>,(0,1),(0,5-100),(0,5-100)", "OK"]
        );
        assert_eq!(test_command_response(profile("ec2x")), vec!["OK"]);
    }

    #[test]
    fn local_paths_follow_each_family_prefix_and_limit() {
        for (family, prefix, max) in [
            ("ec2x", "/data/ufs/", 90),
            ("ep06", "/data/ufs/", 90),
            ("eg06xk-dfota", "/usrdata/cache/ufs/", 100),
            ("eg06xk", "/cache/ufs/", 512),
        ] {
            let cmd = parse(&format!("\"{prefix}update-v12-to-v13.zip\""), family).unwrap();
            assert_eq!(cmd.source.file_name(), Some("update-v12-to-v13.zip"));
            assert!(matches!(cmd.source, Source::Local { .. }), "{family}");
            // The name rules cap a file at 80 bytes; check the path limit
            // with the longest name under it.
            let room = (max - prefix.len()).min(crate::sim::ufs::MAX_NAME);
            let at = format!("\"{prefix}{}\"", "a".repeat(room));
            assert!(parse(&at, family).is_ok(), "{family}");
            if prefix.len() + crate::sim::ufs::MAX_NAME >= max {
                let over = format!("\"{prefix}{}\"", "a".repeat(max + 1 - prefix.len()));
                assert!(
                    matches!(
                        parse(&over, family),
                        Err(CommandError::LocalPathTooLong { .. })
                    ),
                    "{family}"
                );
            }
            assert!(matches!(
                parse(r#""/tmp/p.zip""#, family),
                Err(CommandError::LocalPrefix(_))
            ));
            assert!(matches!(
                parse(&format!("\"{prefix}\""), family),
                Err(CommandError::LocalName(_))
            ));
            // `..` names the folder above, never a file.
            assert!(matches!(
                parse(&format!("\"{prefix}..\""), family),
                Err(CommandError::LocalName(_))
            ));
            // The file form is ec200's.
            assert!(matches!(
                parse(r#""FILE:100""#, family),
                Err(CommandError::BadFileLength(_))
            ));
        }
        assert!(matches!(
            parse(r#""/data/ufs/p.zip""#, "ec200"),
            Err(CommandError::LocalPrefix(_))
        ));
    }

    #[test]
    fn ec200_file_form_takes_a_length_and_the_usual_parameters() {
        let cmd = parse(r#""FILE:4884688",1,50"#, "ec200").unwrap();
        assert_eq!(cmd.source, Source::Uart { length: 4_884_688 });
        assert_eq!(cmd.params.downloading_lines(), 50);
        assert_eq!(cmd.source.file_name(), None);
        assert_eq!(
            parse(r#""file:10""#, "ec200").unwrap().source,
            Source::Uart { length: 10 }
        );
        assert_eq!(
            parse(r#""FILE:10",2"#, "ec200").unwrap().source,
            Source::ProtocolMode
        );
        for bad in [
            r#""FILE:0""#,
            r#""FILE:""#,
            r#""FILE:-1""#,
            r#""FILE:9999999999999""#,
        ] {
            assert!(
                matches!(parse(bad, "ec200"), Err(CommandError::BadFileLength(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse(r#""FILE:10",2,50"#, "ec200"),
            Err(CommandError::BadParameter { .. })
        ));
    }
}

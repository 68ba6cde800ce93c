//! Value parsers of the serving and checking flags (`--user`,
//! `--passive-ports`, `--profile`), shared by the `serve` and `check`
//! subcommands.

use std::ops::RangeInclusive;

use crate::catalog::validate::FtpCredentials;
use crate::profile::Profile;

/// Parses `NAME:PASSWORD` (the password may contain `:`).
///
/// # Errors
/// A message when the colon or the name is missing.
pub fn parse_user(s: &str) -> Result<FtpCredentials, String> {
    // Spaces around an item of a comma-separated list (`QFOTA_USER='a:b,
    // c:d'`) are not part of the name or the password.
    let s = s.trim();
    match s.split_once(':') {
        Some((user, password)) if !user.is_empty() => Ok(FtpCredentials {
            user: user.to_string(),
            password: password.to_string(),
        }),
        _ => Err(format!("expected NAME:PASSWORD, got {s:?}")),
    }
}

/// Parses `--public-host`: an IP address or a DNS name, as
/// [`crate::serve::check_public_host`] accepts.
///
/// # Errors
/// What is wrong with it (a scheme, a port, a path, …): a usage error, so
/// a bad value exits 2 like any bad flag.
pub fn parse_public_host(s: &str) -> Result<String, String> {
    crate::serve::check_public_host(s)?;
    // `fota.example.com.` is `fota.example.com`: the URLs modules get and
    // the name the generated certificate carries (no certificate matches
    // a name with the root's dot).
    Ok(s.trim_end_matches('.').to_string())
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

/// Parses a profile name (`ec2x`, `ep06`, `ec200`, `eg06xk-dfota`,
/// `eg06xk`).
///
/// # Errors
/// The profile error's message for an unknown name.
pub fn parse_profile(s: &str) -> Result<&'static Profile, String> {
    Profile::by_name(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_host_loses_its_root_dot() {
        assert_eq!(
            parse_public_host("fota.example.com.").unwrap(),
            "fota.example.com"
        );
        assert_eq!(parse_public_host("192.0.2.2").unwrap(), "192.0.2.2");
        assert!(parse_public_host("http://x").is_err());
    }

    #[test]
    fn user_and_port_range_parsers() {
        let u = parse_user("test:pa:ss").unwrap();
        assert_eq!((u.user.as_str(), u.password.as_str()), ("test", "pa:ss"));
        assert!(parse_user("nocolon").is_err());
        assert!(parse_user(":pw").is_err());
        // An item of `QFOTA_USER='a:b, c:d'`.
        let u = parse_user(" c:d ").unwrap();
        assert_eq!((u.user.as_str(), u.password.as_str()), ("c", "d"));
        assert_eq!(parse_port_range("50000-50100").unwrap(), 50000..=50100);
        assert!(parse_port_range("5-1").is_err());
        assert!(parse_port_range("0-1").is_err());
        assert!(parse_port_range("x").is_err());
    }
}

//! The texts the serving and checking commands print (was `report.rs`;
//! `report` is now the campaign subcommand): the start-up banner
//! (listeners, log file, per package its size, SHA-256, fitting profiles
//! and ready-to-paste `AT+QFOTADL` lines) and the `check` report.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::catalog::Package;
use crate::profile::Profile;
use crate::serve::Server;

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
    let allow_invalid = server.allows_invalid();
    for p in &packages {
        let _ = writeln!(out);
        out.push_str(&package_summary(p, allow_invalid));
        if p.is_valid() || allow_invalid {
            for url in server.advertised().urls(&p.path) {
                let _ = writeln!(out, "  AT+QFOTADL=\"{url}\"");
            }
        }
    }
    out
}

/// A package's lines: path, size, SHA-256, and the families it fits, or
/// why it is invalid and whether it is served all the same
/// (`allow_invalid`).
fn package_summary(p: &Package, allow_invalid: bool) -> String {
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
    } else if allow_invalid {
        let problems = p.problems.join("; ");
        let _ = writeln!(
            out,
            "  INVALID, served anyway (--allow-invalid): {problems}"
        );
    } else {
        let _ = writeln!(out, "  INVALID, not served: {}", p.problems.join("; "));
    }
    out
}

/// The `check` report and whether it passes: every package valid and
/// fitting every profile in `required`, and none `unchecked` (files that
/// could not be read or fetched, with why). An invalid package shows its
/// problems only (no per-family verdicts: it is not served to any); the
/// report ends with "N packages: V valid, I invalid" (", U not checked"
/// when some were not) and the verdict.
pub fn check_report(
    packages: &[Arc<Package>],
    unchecked: &[(String, String)],
    required: &[&'static Profile],
) -> (String, bool) {
    let mut out = String::new();
    let mut ok = unchecked.is_empty();
    for (key, why) in unchecked {
        let _ = writeln!(out, "{key}  not checked: {why}");
    }
    for p in packages {
        out.push_str(&package_summary(p, false));
        ok &= p.is_valid();
        if !p.is_valid() {
            continue;
        }
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
    let valid = packages.iter().filter(|p| p.is_valid()).count();
    let noun = if packages.len() == 1 {
        "package"
    } else {
        "packages"
    };
    let _ = write!(
        out,
        "{} {noun}: {valid} valid, {} invalid",
        packages.len(),
        packages.len() - valid
    );
    if !unchecked.is_empty() {
        let _ = write!(out, ", {} not checked", unchecked.len());
    }
    out.push('\n');
    let _ = writeln!(out, "{}", if ok { "check passed" } else { "check FAILED" });
    (out, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that could not be read fails the check, named with why, and
    /// is counted apart from the packages.
    #[test]
    fn a_file_not_checked_fails_the_check() {
        let unchecked = [(
            "u-v1-to-v2.zip".to_string(),
            "Permission denied".to_string(),
        )];
        let (report, ok) = check_report(&[], &unchecked, &[]);
        assert!(!ok);
        assert_eq!(
            report,
            "u-v1-to-v2.zip  not checked: Permission denied\n\
             0 packages: 0 valid, 0 invalid, 1 not checked\ncheck FAILED\n"
        );
        let (report, ok) = check_report(&[], &[], &[]);
        assert!(ok);
        assert_eq!(report, "0 packages: 0 valid, 0 invalid\ncheck passed\n");
    }
}

//! Module-side faults a run can inject (`--fault`), and whether the chosen
//! family has them — decided from the [`Profile`] row, not the family name.
//!
//! | fault | effect | families |
//! |---|---|---|
//! | `network-down` | no data connection: `FTPEND`/`HTTPEND` 605/707 (`ec200`), 601/701 | all |
//! | `dns-fail` | host names do not resolve: 604/714, 601/701 | all |
//! | `power-cut=<p>` | power lost at `UPDATING` p %: where `power_cut_resumes`, reboot and the upgrade continues (not a failed attempt); on `ec200` the firmware is lost, no `RDY` until [`Module::repair`](crate::sim::Module::repair) | all |
//! | `download-power-cut=<p>` | power lost when p % of the package has arrived: no `FTPEND`/`HTTPEND`/`FILEEND`, the module reboots into its old firmware | all |
//! | `upgrade-error=<code>[x<N>]` | the first N attempts (default all) end `END,<code>` | `code` in `upgrade_codes` |
//! | `download-error=<code>[x<N>]` | the first N downloads over the code's protocol (6xx FTP, 7xx HTTP(S); default all) end `FTPEND`/`HTTPEND,<code>` | 601–630, 701–730 on `ec200`; 601, 701 elsewhere |
//! | `signature` | `END,513` on every attempt | 513 in `upgrade_codes` (`eg06xk`) |
//! | `md5` | `END,506` on every attempt | 506 in `upgrade_codes` (`ec200`) |

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use crate::profile::Profile;

/// `<err>` for a bad signature (seed `000_318699ddba19ea03.txt` table 5).
pub const SIGNATURE_CODE: u16 = 513;
/// `<err>` for a firmware MD5 error (seed `001_2f648264def3e0b1.txt`
/// table 5).
pub const MD5_CODE: u16 = 506;

/// One injected module-side fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `network-down`: the module has no data connection.
    NetworkDown,
    /// `dns-fail`: host names do not resolve (an IP-literal URL needs no
    /// lookup and is not affected).
    DnsFail,
    /// `power-cut=<percent>`: power is lost once `UPDATING` reaches this
    /// percentage (1–100); the module reboots and the upgrade continues
    /// (seed 000 §4.1 NOTE), except on a family without
    /// `power_cut_resumes` (`ec200`: "the upgrade will be failed and cannot
    /// be restored", seed 001 §5), where no firmware boots again.
    PowerCut(u8),
    /// `download-power-cut=<percent>`: power is lost once this percentage
    /// (1–100) of the package has arrived; the download is lost and the
    /// module boots its old firmware.
    DownloadPowerCut(u8),
    /// `download-error=<code>[x<N>]`: the first `downloads` downloads over
    /// the code's protocol (all when `None`) fail with `code`.
    DownloadError {
        /// The `<ftp_err>` (6xx) or `<http_err>` (7xx).
        code: u16,
        /// How many downloads fail; `None` = every one.
        downloads: Option<u8>,
    },
    /// `upgrade-error=<code>[x<N>]`: the first `attempts` upgrade attempts
    /// (all of them when `None`) end with `code`.
    UpgradeError {
        /// The `<err>` code.
        code: u16,
        /// How many attempts fail; `None` = every attempt.
        attempts: Option<u8>,
    },
    /// `signature`: the package's signature does not verify (513).
    Signature,
    /// `md5`: the firmware MD5 check fails (506).
    Md5,
}

/// A `--fault` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    /// Not one of the fault names.
    #[error(
        "unknown fault {0:?} (known: network-down, dns-fail, power-cut=<percent>, \
         download-power-cut=<percent>, upgrade-error=<code>[x<N>], \
         download-error=<code>[x<N>], signature, md5)"
    )]
    Unknown(String),
    /// The fault's value does not parse or is out of range.
    #[error("bad value in fault {0:?}")]
    BadValue(String),
    /// The chosen family does not have this fault.
    #[error("fault {fault} does not exist on profile {profile}: {why}")]
    NotOnFamily {
        /// The fault as written.
        fault: String,
        /// Profile name.
        profile: &'static str,
        /// What in the profile rules it out.
        why: &'static str,
    },
}

impl FromStr for Fault {
    type Err = FaultError;

    /// Parses the `--fault` syntax (`power-cut=40`, `upgrade-error=520x2`).
    fn from_str(s: &str) -> Result<Fault, FaultError> {
        // An item of a comma-separated list may come with spaces around it.
        let s = s.trim();
        let bad = || FaultError::BadValue(s.to_string());
        let (name, value) = match s.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        match (name, value) {
            ("network-down", None) => Ok(Fault::NetworkDown),
            ("dns-fail", None) => Ok(Fault::DnsFail),
            ("signature", None) => Ok(Fault::Signature),
            ("md5", None) => Ok(Fault::Md5),
            ("power-cut", Some(v)) => Ok(Fault::PowerCut(percent(v).ok_or_else(bad)?)),
            ("download-power-cut", Some(v)) => {
                Ok(Fault::DownloadPowerCut(percent(v).ok_or_else(bad)?))
            }
            ("upgrade-error", Some(v)) => {
                let (code, attempts) = code_times(v).ok_or_else(bad)?;
                Ok(Fault::UpgradeError { code, attempts })
            }
            ("download-error", Some(v)) => {
                let (code, downloads) = code_times(v).ok_or_else(bad)?;
                Ok(Fault::DownloadError { code, downloads })
            }
            ("network-down" | "dns-fail" | "signature" | "md5", Some(_))
            | ("power-cut" | "download-power-cut" | "upgrade-error" | "download-error", None) => {
                Err(bad())
            }
            _ => Err(FaultError::Unknown(s.to_string())),
        }
    }
}

/// A percentage 1–100.
fn percent(v: &str) -> Option<u8> {
    digits(v)
        .filter(|p| (1..=100).contains(p))
        .and_then(|p| u8::try_from(p).ok())
}

/// `<code>[x<N>]`: a non-zero code and an optional non-zero count.
fn code_times(v: &str) -> Option<(u16, Option<u8>)> {
    let (code, times) = match v.split_once(['x', 'X']) {
        Some((c, n)) => (c, Some(n)),
        None => (v, None),
    };
    let code = digits(code)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c != 0)?;
    let times = match times {
        None => None,
        Some(n) => Some(
            digits(n)
                .and_then(|n| u8::try_from(n).ok())
                .filter(|n| *n != 0)?,
        ),
    };
    Some((code, times))
}

/// A decimal number of at most 5 digits, nothing else.
fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::NetworkDown => f.write_str("network-down"),
            Fault::DnsFail => f.write_str("dns-fail"),
            Fault::PowerCut(p) => write!(f, "power-cut={p}"),
            Fault::DownloadPowerCut(p) => write!(f, "download-power-cut={p}"),
            Fault::DownloadError {
                code,
                downloads: None,
            } => write!(f, "download-error={code}"),
            Fault::DownloadError {
                code,
                downloads: Some(n),
            } => write!(f, "download-error={code}x{n}"),
            Fault::UpgradeError {
                code,
                attempts: None,
            } => write!(f, "upgrade-error={code}"),
            Fault::UpgradeError {
                code,
                attempts: Some(n),
            } => write!(f, "upgrade-error={code}x{n}"),
            Fault::Signature => f.write_str("signature"),
            Fault::Md5 => f.write_str("md5"),
        }
    }
}

impl Fault {
    /// Checks that `profile`'s family has this fault.
    ///
    /// # Errors
    /// [`FaultError::NotOnFamily`] naming the profile rule that rules it out.
    pub fn check(&self, profile: &'static Profile) -> Result<(), FaultError> {
        let refuse = |why| {
            Err(FaultError::NotOnFamily {
                fault: self.to_string(),
                profile: profile.name,
                why,
            })
        };
        let has_code = |code: u16| profile.upgrade_codes.contains(&code);
        match *self {
            Fault::NetworkDown
            | Fault::DnsFail
            | Fault::PowerCut(_)
            | Fault::DownloadPowerCut(_) => Ok(()),
            Fault::DownloadError { code, .. } if !profile.download_codes.has(code) => {
                refuse("the family does not report this <ftp_err>/<http_err> code (SPEC §4)")
            }
            Fault::DownloadError { .. } => Ok(()),
            Fault::UpgradeError { code, .. } if !has_code(code) => {
                refuse("the family does not report this <err> code (SPEC §4)")
            }
            Fault::UpgradeError { .. } => Ok(()),
            Fault::Signature if !has_code(SIGNATURE_CODE) => {
                refuse("only eg06xk verifies signatures (513, seed 000)")
            }
            Fault::Md5 if !has_code(MD5_CODE) => {
                refuse("only ec200 checks the firmware MD5 (506, seed 001)")
            }
            Fault::Signature | Fault::Md5 => Ok(()),
        }
    }
}

/// The faults of one run, consumed as the run goes.
#[derive(Debug, Clone, Default)]
pub(crate) struct FaultPlan {
    pub network_down: bool,
    pub dns_fail: bool,
    pub signature: bool,
    pub md5: bool,
    /// Power cuts still to come, as `UPDATING` percentages.
    power_cuts: Vec<u8>,
    /// Power cut during the download, as a percentage of the package.
    pub download_power_cut: Option<u8>,
    /// Injected `<err>` codes and how many attempts each still fails.
    upgrade_errors: VecDeque<(u16, u8)>,
}

impl FaultPlan {
    /// The plan for one run; `max_attempts` is what "every attempt" means.
    pub(crate) fn new(faults: &[Fault], max_attempts: u8) -> FaultPlan {
        let mut plan = FaultPlan::default();
        for fault in faults {
            match *fault {
                Fault::NetworkDown => plan.network_down = true,
                Fault::DnsFail => plan.dns_fail = true,
                Fault::Signature => plan.signature = true,
                Fault::Md5 => plan.md5 = true,
                Fault::PowerCut(p) => plan.power_cuts.push(p),
                Fault::DownloadPowerCut(p) => plan.download_power_cut = Some(p),
                // Counted across runs, in the module's state.
                Fault::DownloadError { .. } => {}
                Fault::UpgradeError { code, attempts } => plan
                    .upgrade_errors
                    .push_back((code, attempts.unwrap_or(max_attempts))),
            }
        }
        plan
    }

    /// Power-cut points as steps of an upgrade printed in `steps` lines
    /// (percent p → step ⌈p·steps/100⌉), ascending.
    pub(crate) fn power_cut_steps(&self, steps: u8) -> Vec<u8> {
        let mut out: Vec<u8> = self
            .power_cuts
            .iter()
            .map(|p| {
                let step = (u16::from(*p) * u16::from(steps)).div_ceil(100);
                u8::try_from(step.max(1)).unwrap_or(steps)
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Takes one attempt of the next `upgrade-error` fault when its code
    /// is `code`; whether it did. For `eg06xk-dfota`, whose version
    /// mismatch (505) is checked before recovery mode and never retried:
    /// an injected 505 takes that path, as the real one does.
    pub(crate) fn take_upgrade_error_if(&mut self, code: u16) -> bool {
        match self.next_upgrade_fault() {
            Some((next, left)) if *next == code => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }

    /// The first `upgrade-error` fault with attempts left (code, attempts
    /// left), the used-up ones before it dropped.
    fn next_upgrade_fault(&mut self) -> Option<&mut (u16, u8)> {
        while self
            .upgrade_errors
            .front()
            .is_some_and(|(_, left)| *left == 0)
        {
            self.upgrade_errors.pop_front();
        }
        self.upgrade_errors.front_mut()
    }

    /// The injected code the next attempt ends with, if any: the first
    /// `upgrade-error` fault with attempts left (faults apply in the order
    /// given, so `520x2` then `504x1` fails attempts 1–2 with 520, 3 with 504).
    pub(crate) fn next_upgrade_error(&mut self) -> Option<u16> {
        let (code, left) = self.next_upgrade_fault()?;
        *left -= 1;
        Some(*code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(name: &str) -> &'static Profile {
        Profile::by_name(name).unwrap()
    }

    #[test]
    fn faults_parse_and_print_back() {
        for text in [
            "network-down",
            "dns-fail",
            "power-cut=40",
            "upgrade-error=520",
            "upgrade-error=520x2",
            "download-power-cut=30",
            "download-error=608",
            "download-error=723x2",
            "signature",
            "md5",
        ] {
            assert_eq!(text.parse::<Fault>().unwrap().to_string(), text);
        }
        assert_eq!(
            "upgrade-error=520x2".parse(),
            Ok(Fault::UpgradeError {
                code: 520,
                attempts: Some(2)
            })
        );
    }

    #[test]
    fn bad_faults_are_refused() {
        assert!(matches!(
            "reboot".parse::<Fault>(),
            Err(FaultError::Unknown(_))
        ));
        for text in [
            "power-cut",
            "power-cut=0",
            "power-cut=101",
            "power-cut=x",
            "upgrade-error",
            "upgrade-error=0",
            "upgrade-error=520x0",
            "upgrade-error=520x",
            "upgrade-error=520x256",
            "upgrade-error=99999999",
            "md5=1",
            "download-power-cut=0",
            "download-error",
            "download-error=0",
            "download-error=608x0",
        ] {
            assert!(
                matches!(text.parse::<Fault>(), Err(FaultError::BadValue(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn faults_follow_the_family() {
        assert!(Fault::Signature.check(profile("eg06xk")).is_ok());
        assert!(Fault::Signature.check(profile("ec2x")).is_err());
        assert!(Fault::Signature.check(profile("eg06xk-dfota")).is_err());
        assert!(Fault::Md5.check(profile("ec200")).is_ok());
        assert!(Fault::Md5.check(profile("eg06xk")).is_err());
        assert!(Fault::PowerCut(50).check(profile("ec2x")).is_ok());
        // On ec200 a power cut loses the firmware (seed 001 §5): simulated.
        assert!(Fault::PowerCut(50).check(profile("ec200")).is_ok());
        let e608 = "download-error=608".parse::<Fault>().unwrap();
        assert!(e608.check(profile("ec200")).is_ok());
        assert!(e608.check(profile("ec2x")).is_err());
        let e701 = "download-error=701x1".parse::<Fault>().unwrap();
        assert!(e701.check(profile("ec2x")).is_ok());
        assert!(
            "download-error=631"
                .parse::<Fault>()
                .unwrap()
                .check(profile("ec200"))
                .is_err()
        );
        assert!(
            "download-error=700"
                .parse::<Fault>()
                .unwrap()
                .check(profile("ec200"))
                .is_err()
        );
        let e520 = Fault::UpgradeError {
            code: 520,
            attempts: None,
        };
        assert!(e520.check(profile("ep06")).is_ok());
        assert!(e520.check(profile("ec200")).is_err());
        let e550 = Fault::UpgradeError {
            code: 550,
            attempts: None,
        };
        assert!(e550.check(profile("eg06xk")).is_ok());
        assert!(e550.check(profile("ec2x")).is_err());
        for p in Profile::all() {
            assert!(Fault::NetworkDown.check(p).is_ok());
            assert!(Fault::DnsFail.check(p).is_ok());
        }
    }

    #[test]
    fn upgrade_errors_fail_the_first_n_attempts_in_order() {
        let faults = [
            "upgrade-error=520x2".parse().unwrap(),
            "upgrade-error=504x1".parse().unwrap(),
        ];
        let mut plan = FaultPlan::new(&faults, 5);
        let got: Vec<_> = (0..5).map(|_| plan.next_upgrade_error()).collect();
        assert_eq!(got, vec![Some(520), Some(520), Some(504), None, None]);
        let mut all = FaultPlan::new(&["upgrade-error=502".parse().unwrap()], 5);
        let got: Vec<_> = (0..6).map(|_| all.next_upgrade_error()).collect();
        assert_eq!(got[..5], [Some(502); 5]);
        assert_eq!(got[5], None);
    }

    #[test]
    fn power_cuts_map_to_steps() {
        let plan = FaultPlan::new(&[Fault::PowerCut(60), Fault::PowerCut(1)], 5);
        assert_eq!(plan.power_cut_steps(100), vec![1, 60]);
        assert_eq!(plan.power_cut_steps(5), vec![1, 3]);
    }
}

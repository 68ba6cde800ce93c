//! Module families ("profiles"): the single source of truth for how a
//! Quectel module family treats `AT+QFOTADL`.
//!
//! The server's package validation (SPEC §6) and the simulator (SPEC §2–§5)
//! both read this table; nothing else in the crate hard-codes a family's
//! limit, URC word or result code. Each row cites the vendor document it
//! comes from (`shared/seeds/…`).

use std::fmt;
use std::str::FromStr;

/// How a family reports a failed download (the `<ftp_err>` / `<http_err>` of
/// `FTPEND` / `HTTPEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadCodes {
    /// Every FTP failure is `601`, every HTTP(S) failure `701`
    /// (seeds 000, 002, 003, 004).
    Generic,
    /// Detailed codes 601–630 (FTP) and 701–730 (HTTP), seed
    /// `001_2f648264def3e0b1.txt` tables 2 and 3.
    Detailed,
}

impl DownloadCodes {
    /// Whether a download can end with `code` on such a family: 601 and
    /// 701 everywhere, 602–630 and 702–730 with detailed codes.
    pub fn has(self, code: u16) -> bool {
        match self {
            DownloadCodes::Generic => code == 601 || code == 701,
            DownloadCodes::Detailed => (601..=630).contains(&code) || (701..=730).contains(&code),
        }
    }
}

/// What a family does when a package names another firmware version than
/// the module runs (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionMismatch {
    /// The check fails every attempt with this `<err>` and the module
    /// retries like any other failure (510 on ec2x/ep06/eg06xk, seeds 004
    /// §4.1.1 and 000 table 5; `ec200`, without 510, says 504).
    Retried(u16),
    /// Before entering recovery mode the module reports `END,<err>` once,
    /// deletes the package and stays in normal mode: `eg06xk-dfota`, seed
    /// `002_1ebd9d344d8c6b8a.txt` §3 ("If the version file in the package
    /// mismatches with the module, an error code (505) will be reported
    /// via URC. and the incorrect upgrade package will be deleted.").
    Final(u16),
}

impl VersionMismatch {
    /// The `<err>` reported.
    pub fn code(self) -> u16 {
        match self {
            VersionMismatch::Retried(code) | VersionMismatch::Final(code) => code,
        }
    }
}

/// A module family's FOTA behaviour, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Profile name as used on the command line (`ec2x`, `ec200`, …).
    pub name: &'static str,
    /// Model names this profile covers, in upper case, without suffixes such
    /// as `-GL` or `-EA` (matching is by prefix, see [`Profile::for_model`]).
    pub models: &'static [&'static str],
    /// Vendor document this row was read from (file name in `shared/seeds/`).
    pub seed: &'static str,
    /// Maximum length of the whole `<url>` argument, in bytes.
    pub url_max: usize,
    /// Maximum length, in bytes, of each of `<username>`, `<password>`,
    /// `<serverURL>` and `<file_path>`; `None` where the seed states none.
    pub field_max: Option<usize>,
    /// FTP `<file_path>` must name a file in the server's root folder
    /// (`ec200`: "Currently only root path is supported", seed 001).
    pub ftp_root_only: bool,
    /// Package file extensions the family accepts, lower case, without dot.
    pub extensions: &'static [&'static str],
    /// Whether packages are checked as zip archives before upgrading
    /// (`ec200` also takes raw `.bin` images; SPEC §5).
    pub zip_required: bool,
    /// How download failures are reported.
    pub download_codes: DownloadCodes,
    /// Whether `AT+QFOTADL` takes `<upgrade_mode>`, `<download_URC_max>` and
    /// `<update_URC_max>` after the URL (`ec200`, seed 001 §3.2.1).
    pub optional_params: bool,
    /// Whether the module reboots between `FTPEND/HTTPEND,0` and `START`
    /// (for `ec200` this is `upgrade_mode` 0 only; see
    /// [`Profile::reboots_before_upgrade`]).
    pub reboot_before_upgrade: bool,
    /// Upgrade `<err>` codes other than 0 the family can report (SPEC §4).
    pub upgrade_codes: &'static [u16],
    /// Largest package the family accepts, in bytes; a larger one ends
    /// `END,550` (`eg06xk` only). The seed gives the code, not the figure:
    /// the value is our choice (SPEC §5).
    pub package_max: Option<u64>,
    /// Failed upgrade attempts before the module gives up and boots the
    /// old firmware: five on every family. Seed 004 §4.1: "the module can
    /// only retry for maximally five times in total, among which retry
    /// times for package checking and firmware upgrading are both
    /// included"; seed 002 §3: "retry to upgrade five times at most"; seed
    /// 000 §4.1: "If the upgrade fails for five consecutive times, the
    /// upgrade is a complete failure". We read "five retries" as five
    /// attempts in all, as seed 004's "in total" says. Seed 001 (`ec200`)
    /// states no rule; SPEC §5 applies the same five.
    pub max_attempts: u8,
    /// `<err>` codes whose failed attempts do not count toward
    /// `max_attempts`: the module reboots and retries "until the upgrade is
    /// successful" (`eg06xk` 520–530, seed `000_318699ddba19ea03.txt`
    /// table 5). Empty elsewhere: seeds 002 and 004 count 520–530 like any
    /// failure (004 §4.1.2: "502, 511, 520-530 or 540-546 ... retry to
    /// upgrade for maximally five times").
    pub retry_until_success: &'static [u16],
    /// How a version mismatch is reported.
    pub version_mismatch: VersionMismatch,
    /// Prefix of a local package path (`AT+QFOTADL="/data/ufs/…"`) and its
    /// maximum length in bytes; `None` where packages come over UART.
    pub local_prefix: Option<(&'static str, usize)>,
    /// Whether an upgrade interrupted by a power loss continues after power
    /// returns, without counting as a failed attempt. Seed
    /// `000_318699ddba19ea03.txt` §4.1 NOTE says it does ("the upgrade can
    /// also continue after the module is restarted"), and SPEC §4 applies
    /// that to every family whose seed is silent; seed
    /// `001_2f648264def3e0b1.txt` §5 says for `ec200` that the upgrade "will be
    /// failed and cannot be restored", so there it is `false`.
    pub power_cut_resumes: bool,
}

/// `eg06xk`'s "retry until successful" codes (seed 000 table 5).
const UNTIL_SUCCESS: [u16; 11] = [520, 521, 522, 523, 524, 525, 526, 527, 528, 529, 530];

const UPGRADE_RETRY: [u16; 18] = [
    520, 521, 522, 523, 524, 525, 526, 527, 528, 529, 530, 540, 541, 542, 543, 544, 545, 546,
];

/// Upgrade codes shared by every family but `ec200` (SPEC §4): 502, 504,
/// 505, 510, 511, 520–530, 540–546.
const COMMON_UPGRADE_CODES: [u16; 23] = {
    let mut out = [0u16; 23];
    let head = [502, 504, 505, 510, 511];
    let mut i = 0;
    while i < head.len() {
        out[i] = head[i];
        i += 1;
    }
    let mut j = 0;
    while j < UPGRADE_RETRY.len() {
        out[head.len() + j] = UPGRADE_RETRY[j];
        j += 1;
    }
    out
};

/// `eg06xk` adds 513 (signature) and 550 (package too large), seed 000.
const EG06XK_UPGRADE_CODES: [u16; 25] = {
    let mut out = [0u16; 25];
    let mut i = 0;
    while i < COMMON_UPGRADE_CODES.len() {
        out[i] = COMMON_UPGRADE_CODES[i];
        i += 1;
    }
    out[23] = 513;
    out[24] = 550;
    out
};

/// The profile table, in the order SPEC §2 lists it.
pub static PROFILES: [Profile; 5] = [
    Profile {
        name: "ec2x",
        models: &["EC25", "EC21", "EC20", "EG91", "EG95", "EM05"],
        seed: "004_88405b99851b7db5.txt",
        url_max: 255,
        field_max: Some(50),
        ftp_root_only: false,
        extensions: &["zip"],
        zip_required: true,
        download_codes: DownloadCodes::Generic,
        optional_params: false,
        reboot_before_upgrade: true,
        upgrade_codes: &COMMON_UPGRADE_CODES,
        package_max: None,
        max_attempts: 5,
        retry_until_success: &[],
        version_mismatch: VersionMismatch::Retried(510),
        local_prefix: Some(("/data/ufs/", 90)),
        power_cut_resumes: true,
    },
    Profile {
        name: "ep06",
        models: &["EP06", "EG06", "EM06"],
        seed: "003_ac1d7f519ffa6f58.txt",
        url_max: 255,
        field_max: Some(50),
        ftp_root_only: false,
        extensions: &["zip"],
        zip_required: true,
        download_codes: DownloadCodes::Generic,
        optional_params: false,
        reboot_before_upgrade: true,
        upgrade_codes: &COMMON_UPGRADE_CODES,
        package_max: None,
        max_attempts: 5,
        retry_until_success: &[],
        version_mismatch: VersionMismatch::Retried(510),
        local_prefix: Some(("/data/ufs/", 90)),
        power_cut_resumes: true,
    },
    Profile {
        name: "ec200",
        models: &["EC200T", "EC200S", "EG912Y"],
        seed: "001_2f648264def3e0b1.txt",
        url_max: 255,
        field_max: Some(50),
        ftp_root_only: true,
        extensions: &["zip", "bin"],
        zip_required: false,
        download_codes: DownloadCodes::Detailed,
        optional_params: true,
        reboot_before_upgrade: false,
        upgrade_codes: &[504, 506],
        package_max: None,
        max_attempts: 5,
        retry_until_success: &[],
        version_mismatch: VersionMismatch::Retried(504),
        local_prefix: None,
        power_cut_resumes: false,
    },
    Profile {
        name: "eg06xk-dfota",
        models: &["EG065K", "EG060K", "EM120K", "EG120K", "EM060K"],
        seed: "002_1ebd9d344d8c6b8a.txt",
        url_max: 100,
        field_max: Some(50),
        ftp_root_only: false,
        extensions: &["zip"],
        zip_required: true,
        download_codes: DownloadCodes::Generic,
        optional_params: false,
        reboot_before_upgrade: true,
        upgrade_codes: &COMMON_UPGRADE_CODES,
        package_max: None,
        max_attempts: 5,
        retry_until_success: &[],
        version_mismatch: VersionMismatch::Final(505),
        local_prefix: Some(("/usrdata/cache/ufs/", 100)),
        power_cut_resumes: true,
    },
    Profile {
        name: "eg06xk",
        models: &["EG060K", "EG120K", "EM120K", "EM060K", "EM061K"],
        seed: "000_318699ddba19ea03.txt",
        url_max: 512,
        field_max: None,
        ftp_root_only: false,
        extensions: &["zip"],
        zip_required: true,
        download_codes: DownloadCodes::Generic,
        optional_params: false,
        reboot_before_upgrade: true,
        upgrade_codes: &EG06XK_UPGRADE_CODES,
        package_max: Some(512 * 1024 * 1024),
        max_attempts: 5,
        retry_until_success: &UNTIL_SUCCESS,
        version_mismatch: VersionMismatch::Retried(510),
        local_prefix: Some(("/cache/ufs/", 512)),
        power_cut_resumes: true,
    },
];

/// Error for an unknown profile or model name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// No profile has this name.
    #[error("unknown profile {0:?} (known: ec2x, ep06, ec200, eg06xk-dfota, eg06xk)")]
    UnknownProfile(String),
    /// No profile lists this model.
    #[error("unknown module model {0:?}")]
    UnknownModel(String),
}

impl Profile {
    /// Every profile, in table order.
    pub fn all() -> &'static [Profile] {
        &PROFILES
    }

    /// The profile called `name` (case-insensitive).
    ///
    /// # Errors
    /// [`ProfileError::UnknownProfile`] when no row has that name.
    pub fn by_name(name: &str) -> Result<&'static Profile, ProfileError> {
        PROFILES
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| ProfileError::UnknownProfile(name.to_string()))
    }

    /// The profile for a model name such as `EC25`, `EC200S-CN` or
    /// `EM120K-GL`. Where a model sits in two rows the newer document
    /// (`eg06xk`, seed 000) wins, as SPEC §2 says.
    ///
    /// # Errors
    /// [`ProfileError::UnknownModel`] when no row lists the model.
    pub fn for_model(model: &str) -> Result<&'static Profile, ProfileError> {
        let upper = model.trim().to_ascii_uppercase();
        let base = upper.split('-').next().unwrap_or("");
        // Rows later in the table are newer documents; search from the end.
        PROFILES
            .iter()
            .rev()
            .find(|p| {
                p.models.iter().any(|m| {
                    // `EC25EFA` is an EC25, but `EC200U` is not an `EC20`.
                    base.strip_prefix(m)
                        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
                })
            })
            .ok_or_else(|| ProfileError::UnknownModel(model.to_string()))
    }

    /// The profile a command line asks for: `--model` wins, then
    /// `--profile`, else `ec2x` (the default of `simulate`, `fleet` and
    /// `modem`).
    ///
    /// # Errors
    /// [`ProfileError`] for an unknown model or profile name.
    pub fn select(
        model: Option<&str>,
        profile: Option<&str>,
    ) -> Result<&'static Profile, ProfileError> {
        match (model, profile) {
            (Some(model), _) => Profile::for_model(model),
            (None, Some(name)) => Profile::by_name(name),
            (None, None) => Profile::by_name("ec2x"),
        }
    }

    /// Whether the module reboots between a successful download and
    /// `START`. `upgrade_mode` is `ec200`'s optional parameter (0 = reboot
    /// first, 1 = upgrade at once, default 1; seed 001 §3.2.1).
    pub fn reboots_before_upgrade(&self, upgrade_mode: Option<u8>) -> bool {
        if self.optional_params {
            upgrade_mode.unwrap_or(1) == 0
        } else {
            self.reboot_before_upgrade
        }
    }

    /// Whether `ext` (lower case, no dot) is a package extension this family
    /// takes.
    pub fn accepts_extension(&self, ext: &str) -> bool {
        self.extensions.iter().any(|e| e.eq_ignore_ascii_case(ext))
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl FromStr for &'static Profile {
    type Err = ProfileError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::by_name(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_map_to_profiles() {
        for (model, profile) in [
            ("EC25", "ec2x"),
            ("ec21", "ec2x"),
            ("EC20", "ec2x"),
            ("EG91", "ec2x"),
            ("EG95", "ec2x"),
            ("EM05", "ec2x"),
            ("EP06", "ep06"),
            ("EG06", "ep06"),
            ("EM06", "ep06"),
            ("EC200T", "ec200"),
            ("EC200S-CN", "ec200"),
            ("EG912Y", "ec200"),
            ("EG065K-NA", "eg06xk-dfota"),
            ("EG060K", "eg06xk"),
            ("EG120K", "eg06xk"),
            ("EM120K-GL", "eg06xk"),
            ("EM060K", "eg06xk"),
            ("EM061K-GL", "eg06xk"),
        ] {
            assert_eq!(Profile::for_model(model).unwrap().name, profile, "{model}");
        }
        assert!(Profile::for_model("BG96").is_err());
        assert!(Profile::for_model("EC200U").is_err(), "not an EC20");
        assert_eq!(Profile::for_model("EC25EFA").unwrap().name, "ec2x");
    }

    #[test]
    fn command_line_selection_prefers_the_model() {
        assert_eq!(
            Profile::select(Some("EC200T"), Some("ec2x")).unwrap().name,
            "ec200"
        );
        assert_eq!(
            Profile::select(None, Some("eg06xk")).unwrap().name,
            "eg06xk"
        );
        assert_eq!(Profile::select(None, None).unwrap().name, "ec2x");
        assert!(Profile::select(Some("BG96"), None).is_err());
    }

    #[test]
    fn url_limits_follow_the_seeds() {
        let limit = |n| Profile::by_name(n).unwrap().url_max;
        assert_eq!(limit("ec2x"), 255);
        assert_eq!(limit("ec200"), 255);
        assert_eq!(limit("eg06xk-dfota"), 100);
        assert_eq!(limit("eg06xk"), 512);
        assert!(Profile::by_name("nope").is_err());
    }

    #[test]
    fn ec200_reboots_only_in_upgrade_mode_0() {
        let ec200 = Profile::by_name("ec200").unwrap();
        assert!(!ec200.reboots_before_upgrade(None));
        assert!(ec200.reboots_before_upgrade(Some(0)));
        assert!(
            Profile::by_name("ec2x")
                .unwrap()
                .reboots_before_upgrade(None)
        );
    }

    #[test]
    fn eg06xk_has_signature_and_size_codes() {
        let p = Profile::by_name("eg06xk").unwrap();
        assert!(p.upgrade_codes.contains(&513) && p.upgrade_codes.contains(&550));
        assert!(
            !Profile::by_name("ec2x")
                .unwrap()
                .upgrade_codes
                .contains(&513)
        );
    }

    #[test]
    fn retry_rules_follow_each_seed() {
        let p = |n| Profile::by_name(n).unwrap();
        assert!(p("eg06xk").retry_until_success.contains(&520));
        assert!(p("eg06xk").retry_until_success.contains(&530));
        assert!(!p("eg06xk").retry_until_success.contains(&540));
        for name in ["ec2x", "ep06", "ec200", "eg06xk-dfota"] {
            assert!(p(name).retry_until_success.is_empty(), "{name}");
        }
        assert_eq!(
            p("eg06xk-dfota").version_mismatch,
            VersionMismatch::Final(505)
        );
        assert_eq!(p("ec2x").version_mismatch.code(), 510);
        assert_eq!(p("ec200").version_mismatch.code(), 504);
        for p in Profile::all() {
            assert!(
                p.upgrade_codes.contains(&p.version_mismatch.code()),
                "{}",
                p.name
            );
        }
    }

    #[test]
    fn download_codes_per_family() {
        assert!(DownloadCodes::Generic.has(601) && DownloadCodes::Generic.has(701));
        assert!(!DownloadCodes::Generic.has(608));
        assert!(DownloadCodes::Detailed.has(630) && DownloadCodes::Detailed.has(702));
        assert!(!DownloadCodes::Detailed.has(631) && !DownloadCodes::Detailed.has(700));
    }

    #[test]
    fn only_ec200_loses_the_upgrade_on_power_cut() {
        for p in Profile::all() {
            assert_eq!(p.power_cut_resumes, p.name != "ec200", "{}", p.name);
        }
    }
}

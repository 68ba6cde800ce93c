//! The version-name rule of SPEC §5: which firmware a package upgrades from
//! and to, read from its file name (`update-v12-to-v13.zip` → v12 → v13).
//!
//! The vendor's package internals are not public, so the simulator decides
//! `510` (wrong source firmware) and the module's new version from the name,
//! or, for a name that states no versions (fwupd uploads every package as
//! `dfota_update.bin`), from a `version.txt` entry inside the package
//! ([`VersionChange::from_manifest`]). Pure rules on text, kept with the
//! other package checks in [`crate::package`].

/// Longest version a `version.txt` may state, in bytes (what `ATI` prints
/// after `Revision: `; Quectel revisions are about 20).
pub const MANIFEST_VERSION_MAX: usize = 64;

/// The `<from>` and `<to>` versions a package name states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionChange {
    /// Firmware the package applies to.
    pub from: String,
    /// Firmware the module runs after `END,0`.
    pub to: String,
}

impl VersionChange {
    /// Reads the versions from a package file name (SPEC §5):
    ///
    /// - the extension (after the last `.`) is dropped;
    /// - if the rest contains `-to-` (any case), `from` is the `-`-free token
    ///   just before the last `-to-` and `to` the `-`-free token just after it
    ///   (`bar-v12-to-v13.zip`, `EC25EFAR06A06M4G-TO-EC25EFAR06A07M4G.zip`);
    /// - otherwise a name with exactly one `-` splits there (`a-b.zip`).
    ///
    /// Returns `None` when neither rule gives two non-empty tokens; such a
    /// package is not version-checked.
    pub fn from_file_name(name: &str) -> Option<VersionChange> {
        let stem = match name.rsplit_once('.') {
            Some((stem, _)) if !stem.is_empty() => stem,
            _ => name,
        };
        // ASCII lower-casing keeps byte offsets, so `i` indexes `stem` too.
        let lower = stem.to_ascii_lowercase();
        let (from, to) = match lower.rfind("-to-") {
            Some(i) => {
                let before = &stem[..i];
                let after = &stem[i + "-to-".len()..];
                (before.rsplit('-').next()?, after.split('-').next()?)
            }
            None if stem.matches('-').count() == 1 => stem.split_once('-')?,
            None => return None,
        };
        if from.is_empty() || to.is_empty() {
            return None;
        }
        Some(VersionChange {
            from: from.to_string(),
            to: to.to_string(),
        })
    }

    /// Reads the versions from the text of a package's `version.txt` entry:
    /// one `key=value` per line, `from=<version>` and `to=<version>` (keys
    /// in any case, spaces around keys and values and a `\r` before the
    /// `\n` ignored, other lines skipped; a later line with the same key
    /// wins). The shipped sample packages carry one (`from=v12`, `to=v13`).
    ///
    /// Returns `None` unless both are there and printable in an AT answer
    /// (`ATI`, `AT+QGMR`): not empty, at most [`MANIFEST_VERSION_MAX`]
    /// bytes, no control character or `"` — the rule `--version` follows.
    /// A UTF-8 byte order mark before the first line is ignored.
    pub fn from_manifest(text: &str) -> Option<VersionChange> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let (mut from, mut to) = (None, None);
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            match key.trim().to_ascii_lowercase().as_str() {
                "from" => from = Some(value),
                "to" => to = Some(value),
                _ => {}
            }
        }
        let printable = |v: &str| {
            v.len() <= MANIFEST_VERSION_MAX && !v.chars().any(|c| c.is_control() || c == '"')
        };
        let (from, to) = (from?, to?);
        (printable(from) && printable(to)).then(|| VersionChange {
            from: from.to_string(),
            to: to.to_string(),
        })
    }

    /// Whether a module running `current` may take this package. Versions
    /// compare ASCII case-insensitively, since `ATI` prints upper case while
    /// package names are often lower case.
    pub fn applies_to(&self, current: &str) -> bool {
        self.from.eq_ignore_ascii_case(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str) -> Option<(String, String)> {
        VersionChange::from_file_name(name).map(|v| (v.from, v.to))
    }

    fn pair(a: &str, b: &str) -> Option<(String, String)> {
        Some((a.to_string(), b.to_string()))
    }

    #[test]
    fn a_manifest_states_both_versions_or_none() {
        let parse = |text: &str| VersionChange::from_manifest(text).map(|v| (v.from, v.to));
        let both = Some(("v12".to_string(), "v13".to_string()));
        assert_eq!(parse("from=v12\nto=v13\n"), both);
        assert_eq!(parse("# build 7\r\n FROM = v12 \r\nTo=v13"), both);
        assert_eq!(
            parse("to=v9\nfrom=v12\nto=v13\n"),
            both,
            "the later line wins"
        );
        assert_eq!(parse("to=v13\n"), None, "no from");
        assert_eq!(parse("from=v12\nto=\n"), None, "empty to");
        assert_eq!(parse("v13\n"), None, "no keys");
        assert_eq!(parse("\u{feff}from=v12\nto=v13"), both, "a BOM");
        assert_eq!(
            parse("from=v12\nto=v13\rERROR"),
            None,
            "a control character"
        );
        assert_eq!(parse("from=v12\nto=\"v13\""), None, "a quote");
        assert_eq!(
            parse(&format!("from=v12\nto={}", "9".repeat(65))),
            None,
            "too long"
        );
        assert_eq!(parse(""), None);
    }

    #[test]
    fn spec_examples() {
        assert_eq!(parse("update-v12-to-v13.zip"), pair("v12", "v13"));
        assert_eq!(parse("bar-v12-to-v13.zip"), pair("v12", "v13"));
        assert_eq!(
            parse("EC25EFAR06A06M4G-TO-EC25EFAR06A07M4G.zip"),
            pair("EC25EFAR06A06M4G", "EC25EFAR06A07M4G")
        );
        assert_eq!(parse("a-b.zip"), pair("a", "b"));
    }

    #[test]
    fn last_to_wins_and_tokens_stop_at_dashes() {
        assert_eq!(parse("a-to-b-To-c-extra.zip"), pair("b", "c"));
        assert_eq!(parse("x-v1.2-to-v1.3.zip"), pair("v1.2", "v1.3"));
        assert_eq!(parse("update-v12-to-v13"), pair("v12", "v13"));
    }

    #[test]
    fn names_that_do_not_parse() {
        assert_eq!(parse("update.zip"), None);
        assert_eq!(parse("EC200TCNTCNMAR02A02M16.bin"), None);
        assert_eq!(parse("a-b-c.zip"), None);
        assert_eq!(parse("-to-v13.zip"), None);
        assert_eq!(parse("v12-to-.zip"), None);
        assert_eq!(parse("-b.zip"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse(".zip"), None);
        assert_eq!(parse("é-to-ü.zip"), pair("é", "ü"));
    }

    #[test]
    fn versions_compare_case_insensitively() {
        let v = VersionChange::from_file_name("update-v12-to-v13.zip").unwrap();
        assert!(v.applies_to("V12"));
        assert!(!v.applies_to("v13"));
    }
}

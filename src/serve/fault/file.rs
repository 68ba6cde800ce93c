//! The fault file (`--faults <FILE>`): its TOML format
//! ([`parse_fault_file`]), reading it at start, and the watcher that swaps
//! the rules in whenever the file changes (checked every second), keeping
//! the last good rules when an edit does not parse.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{FaultRule, FaultSet};

/// Reads a fault-rule file: TOML with `seed` (optional) and `rules`, a list
/// of rule strings in the command-line syntax.
///
/// ```toml
/// seed = 7
/// rules = ["drop-after=50%,path=/big-*.zip", "status=503,protocol=http,rate=0.3"]
/// ```
///
/// # Errors
/// A message naming the file and the TOML or rule error.
pub fn parse_fault_file(text: &str) -> Result<(Vec<FaultRule>, Option<u64>), String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        seed: Option<u64>,
        #[serde(default)]
        rules: Vec<String>,
    }
    let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
    let rules = file
        .rules
        .iter()
        .map(|r| r.parse::<FaultRule>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((rules, file.seed))
}

/// What identifies one version of the file: modification time and length.
pub(crate) type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

/// Reads and parses the file.
///
/// # Errors
/// A message: unreadable file, bad TOML, or a malformed rule.
pub(crate) fn read(path: &Path) -> Result<(Vec<FaultRule>, Option<u64>, Stamp), String> {
    let before = stamp(path);
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let (rules, seed) = parse_fault_file(&text)?;
    Ok((rules, seed, before))
}

/// Re-reads `path` when it changes; the rules become `fixed` (from the
/// command line) followed by the file's — also after `PUT /faults`
/// replaced them: the last change wins. A rule kept as written keeps its
/// `times` count ([`FaultSet::reload`]).
pub(crate) async fn watch(
    path: PathBuf,
    mut last: Stamp,
    fixed: Vec<FaultRule>,
    faults: Arc<FaultSet>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        match read(&path) {
            Ok((rules, _, _)) => {
                tracing::info!(file = %path.display(), rules = rules.len(), "fault rules reloaded");
                faults.reload(fixed.iter().cloned().chain(rules).collect());
            }
            Err(problem) => {
                tracing::warn!(file = %path.display(), %problem, "fault file not reloaded; keeping the previous rules");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_file_parses() {
        let (rules, seed) =
            parse_fault_file("seed = 7\nrules = [\"slow=1000\", \"not-found,times=1\"]\n").unwrap();
        assert_eq!(seed, Some(7));
        assert_eq!(rules.len(), 2);
        assert!(
            parse_fault_file("rules = [\"boom\"]")
                .unwrap_err()
                .contains("boom")
        );
        assert!(parse_fault_file("nonsense = 1").is_err());
    }
}

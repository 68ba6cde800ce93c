//! The `--faults <FILE>` watcher: reads the TOML rule file at start and
//! swaps the rules in whenever the file changes (checked every second),
//! keeping the last good rules when an edit does not parse.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::fault::{FaultRule, FaultSet, parse_fault_file};

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
/// command line) followed by the file's.
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
                faults.set(fixed.iter().cloned().chain(rules).collect());
            }
            Err(problem) => {
                tracing::warn!(file = %path.display(), %problem, "fault file not reloaded; keeping the previous rules");
            }
        }
    }
}

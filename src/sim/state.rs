//! What a simulated module and its runs share: the fixed [`Config`] a
//! module is built with, the [`State`] that changes as it runs (firmware
//! version, busy), the [`BusyGuard`] that holds a run's claim on the
//! module, and the [`RunLog`] a run writes and its handle reads.
//!
//! It sits below both users — the module ([`crate::sim::module`]) that
//! builds these and the run ([`crate::sim::run`]) that reads and updates
//! them — so neither imports the other's file back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::profile::Profile;
use crate::sim::clock::Clock;
use crate::sim::fault::Fault;

/// Fixed configuration of a module, checked by
/// [`ModuleBuilder::build`](crate::sim::module::ModuleBuilder::build).
#[derive(Debug)]
pub(crate) struct Config {
    /// Family.
    pub profile: &'static Profile,
    /// Free space in the module's file system, bytes; `None` = unlimited.
    pub free_space: Option<u64>,
    /// Module-side faults, each one the family has.
    pub faults: Vec<Fault>,
    /// Scaled module time.
    pub clock: Clock,
    /// No-progress timeout for every download wait.
    pub timeout: Duration,
    /// TLS client for `https://` downloads.
    pub tls: Arc<rustls::ClientConfig>,
    /// Download throttle, bytes per second; `None` = unthrottled.
    pub rate: Option<u64>,
}

/// What changes as the module runs.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Firmware version; `None` = not set or unknown.
    pub version: Option<String>,
    /// A FOTA run is in progress.
    pub busy: bool,
}

/// Locks `m`, whether or not a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave this plain data inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A run's claim on its module: the busy flag is set while it lives and
/// cleared when the run ends, however it ends.
#[derive(Debug)]
pub(crate) struct BusyGuard(Arc<Mutex<State>>);

impl BusyGuard {
    /// Claims the module whose state is `state`; `None` when a run already
    /// holds it.
    pub(crate) fn claim(state: &Arc<Mutex<State>>) -> Option<BusyGuard> {
        let mut now = lock(state);
        if now.busy {
            return None;
        }
        now.busy = true;
        Some(BusyGuard(Arc::clone(state)))
    }

    /// The firmware version now.
    pub(crate) fn version(&self) -> Option<String> {
        lock(&self.0).version.clone()
    }

    /// Sets the firmware version (after a successful upgrade).
    pub(crate) fn set_version(&self, version: Option<String>) {
        lock(&self.0).version = version;
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        lock(&self.0).busy = false;
    }
}

/// What a run tells its handle besides events: the simulator's notes on
/// causes and the bytes received so far. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub(crate) struct RunLog {
    notes: Arc<Mutex<Vec<String>>>,
    received: Arc<AtomicU64>,
}

impl RunLog {
    /// Adds one note (`download: …`, `package check: END,504: …`).
    pub(crate) fn note(&self, note: String) {
        lock(&self.notes).push(note);
    }

    /// The notes so far, oldest first.
    pub(crate) fn notes(&self) -> Vec<String> {
        lock(&self.notes).clone()
    }

    /// The counter the download mirrors its received bytes into.
    pub(crate) fn received_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.received)
    }

    /// Bytes received so far.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_claim_at_a_time_released_on_drop() {
        let state = Arc::new(Mutex::new(State::default()));
        let first = BusyGuard::claim(&state).expect("free module");
        assert!(lock(&state).busy);
        assert!(BusyGuard::claim(&state).is_none(), "already claimed");
        drop(first);
        assert!(!lock(&state).busy);
        assert!(BusyGuard::claim(&state).is_some());
    }
}

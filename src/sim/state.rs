//! What a simulated module and its runs share: the fixed [`Config`] a
//! module is built with, the [`State`] that changes as it runs (firmware
//! version, busy), the [`BusyGuard`] that holds a run's claim on the
//! module, and the [`RunLog`] a run writes and its handle reads.
//!
//! It sits below both users — the module ([`crate::sim::module`]) that
//! builds these and the run ([`crate::sim::run`]) that reads and updates
//! them — so neither imports the other's file back.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use std::time::Duration;
use tokio::time::Instant;

use crate::profile::Profile;
use crate::sim::clock::Clock;
use crate::sim::fault::Fault;
use crate::sim::ufs::Ufs;

/// Fixed configuration of a module, checked by
/// [`ModuleBuilder::build`](crate::sim::module::ModuleBuilder::build).
#[derive(Debug)]
pub(crate) struct Config {
    /// Family.
    pub profile: &'static Profile,
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
    /// Contexts active after every boot (default: 1, the LTE default
    /// bearer).
    pub boot_contexts: BTreeSet<u8>,
    /// The module's file system (a shared handle: it outlives runs and
    /// reboots).
    pub ufs: Ufs,
}

/// What a FOTA run is doing, as far as a second `AT+QFOTADL` cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No run.
    #[default]
    Idle,
    /// Fetching the package; `uart`: over the AT port (`FILE:<length>`).
    Downloading {
        /// The package comes over the AT port.
        uart: bool,
    },
    /// Checking and upgrading (recovery mode, reboots).
    Upgrading,
}

/// What changes as the module runs.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Firmware version; `None` = not set or unknown.
    pub version: Option<String>,
    /// What the run in progress does ([`Phase::Idle`]: none).
    pub phase: Phase,
    /// Contexts active now (reset to the configured ones at every boot).
    pub active_contexts: BTreeSet<u8>,
    /// The context FOTA downloads use (`AT+QFOTA="fota/cid"`, default 1).
    pub fota_cid: u8,
    /// An upgrade lost power on a family where that is unrecoverable
    /// (`ec200`, seed 001 §5): no firmware boots until the module is
    /// repaired.
    pub firmware_lost: bool,
    /// `download-error` faults still to fire: (code, downloads left;
    /// `None` = every download).
    pub download_errors: VecDeque<(u16, Option<u8>)>,
}

impl State {
    /// Whether a FOTA run is in progress.
    pub(crate) fn busy(&self) -> bool {
        self.phase != Phase::Idle
    }

    /// The injected `download-error` code for the next download over FTP
    /// (`ftp`) or HTTP(S), if one is due; uses one of its downloads.
    pub(crate) fn next_download_error(&mut self, ftp: bool) -> Option<u16> {
        let wanted = if ftp { 600..700 } else { 700..800 };
        let (code, left) = self
            .download_errors
            .iter_mut()
            .find(|(code, left)| wanted.contains(code) && *left != Some(0))?;
        if let Some(n) = left {
            *n -= 1;
        }
        Some(*code)
    }
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
    /// Claims the module whose state is `state` for a run starting in
    /// `phase`; `None` when a run already holds it.
    pub(crate) fn claim(state: &Arc<Mutex<State>>, phase: Phase) -> Option<BusyGuard> {
        let mut now = lock(state);
        if now.busy() {
            return None;
        }
        now.phase = phase;
        Some(BusyGuard(Arc::clone(state)))
    }

    /// The shared state, locked.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.0)
    }

    /// Sets what the run is doing.
    pub(crate) fn set_phase(&self, phase: Phase) {
        lock(&self.0).phase = phase;
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
        lock(&self.0).phase = Phase::Idle;
    }
}

/// What a run tells its handle besides events: the simulator's notes on
/// causes and the bytes received so far. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub(crate) struct RunLog {
    notes: Arc<Mutex<Vec<String>>>,
    received: Arc<AtomicU64>,
    first_byte: Arc<OnceLock<Instant>>,
    /// When the download began (its start URC).
    download_start: Arc<OnceLock<Instant>>,
}

/// A run's time to first byte, readable after the run was consumed (a
/// fleet's module stopped at its deadline): its download's start and first
/// package byte.
#[derive(Debug, Clone)]
pub(crate) struct FirstByteProbe {
    download_start: Arc<OnceLock<Instant>>,
    first_byte: Arc<OnceLock<Instant>>,
}

impl FirstByteProbe {
    /// From the download's start to its first package byte; `None` before
    /// both happened.
    pub(crate) fn ttfb(&self) -> Option<Duration> {
        let (start, first) = (self.download_start.get()?, self.first_byte.get()?);
        Some(first.saturating_duration_since(*start))
    }
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

    /// Where the download notes when its first package byte arrived.
    pub(crate) fn first_byte_cell(&self) -> Arc<OnceLock<Instant>> {
        Arc::clone(&self.first_byte)
    }

    /// When the first package byte arrived, if one did.
    pub(crate) fn first_byte(&self) -> Option<Instant> {
        self.first_byte.get().copied()
    }

    /// Notes that the download begins (its start URC is out).
    pub(crate) fn download_started(&self) {
        let _ = self.download_start.set(Instant::now());
    }

    /// The run's [`FirstByteProbe`].
    pub(crate) fn first_byte_probe(&self) -> FirstByteProbe {
        FirstByteProbe {
            download_start: Arc::clone(&self.download_start),
            first_byte: Arc::clone(&self.first_byte),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_claim_at_a_time_released_on_drop() {
        let state = Arc::new(Mutex::new(State::default()));
        let first = BusyGuard::claim(&state, Phase::Upgrading).expect("free module");
        assert!(lock(&state).busy());
        assert!(
            BusyGuard::claim(&state, Phase::Upgrading).is_none(),
            "already claimed"
        );
        drop(first);
        assert!(!lock(&state).busy());
        assert!(BusyGuard::claim(&state, Phase::Upgrading).is_some());
    }

    #[test]
    fn download_errors_fire_per_protocol_and_count_down() {
        let mut state = State {
            download_errors: VecDeque::from([(608, Some(1)), (723, None)]),
            ..State::default()
        };
        assert_eq!(state.next_download_error(true), Some(608));
        assert_eq!(state.next_download_error(true), None);
        assert_eq!(state.next_download_error(false), Some(723));
        assert_eq!(state.next_download_error(false), Some(723));
    }
}

//! The simulated module's sense of time: the realistic [`timing`] of a
//! module's own steps (at time scale 1.0) and the [`Clock`] that scales
//! them.
//!
//! It sits below everything that waits in module time — the run
//! ([`crate::sim::run`]), the upgrade ([`crate::sim::upgrade`]) — and
//! imports nothing from the simulator. Network transfers do not use it:
//! they run in real time.

use std::time::Duration;

/// Realistic module timings (at time scale 1.0).
pub(crate) mod timing {
    use std::time::Duration;

    /// From the command to `OK`/`ERROR` (seed 000: maximum response time
    /// 300 ms).
    pub const RESPONSE: Duration = Duration::from_millis(100);
    /// From `OK` to `FTPSTART`/`HTTPSTART` (bringing the data call up).
    pub const BEFORE_DOWNLOAD: Duration = Duration::from_secs(1);
    /// From an `END`/`FTPEND` to the module going down for a reboot.
    pub const BEFORE_REBOOT: Duration = Duration::from_secs(1);
    /// A reboot, power-off to `RDY` (USB re-enumeration included).
    pub const REBOOT: Duration = Duration::from_secs(20);
    /// From `RDY` (or the download) to `START` (seed 000: the first URC
    /// after a reboot within 90 s).
    pub const BEFORE_START: Duration = Duration::from_secs(3);
    /// The package check after `START`.
    pub const CHECK: Duration = Duration::from_secs(2);
    /// The whole `UPDATING` run, 0 → 100 %.
    pub const UPDATING: Duration = Duration::from_secs(120);
}

/// Scaled time: realistic durations times the time scale, on Tokio's clock
/// (so tests can pause it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    scale: f64,
}

impl Clock {
    /// A clock running `scale` × realistic durations; `scale` must be
    /// finite and non-negative (checked by
    /// [`ModuleBuilder::build`](crate::sim::module::ModuleBuilder::build)).
    pub(crate) fn new(scale: f64) -> Clock {
        Clock { scale }
    }

    /// Sleeps `realistic × scale`, but at least `floor` unless the scale
    /// is 0 (no module delays at all): a gap a host's polling must see
    /// whatever the scale.
    pub(crate) async fn pause_at_least(&self, realistic: Duration, floor: Duration) {
        if self.scale > 0.0 {
            tokio::time::sleep(self.scaled(realistic).max(floor)).await;
        }
    }

    /// Sleeps `realistic × scale`.
    pub(crate) async fn pause(&self, realistic: Duration) {
        let scaled = self.scaled(realistic);
        if !scaled.is_zero() {
            tokio::time::sleep(scaled).await;
        }
    }

    /// `realistic × scale` (0 when that is not a duration).
    fn scaled(&self, realistic: Duration) -> Duration {
        Duration::try_from_secs_f64(realistic.as_secs_f64() * self.scale).unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pauses_scale_realistic_durations() {
        let start = tokio::time::Instant::now();
        Clock::new(0.5).pause(Duration::from_secs(10)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // A zero scale never sleeps, even for the longest step.
        Clock::new(0.0).pause(timing::UPDATING).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // A floor holds at small scales, not at 0.
        let floor = Duration::from_millis(250);
        Clock::new(0.01)
            .pause_at_least(Duration::from_secs(1), floor)
            .await;
        assert_eq!(start.elapsed(), Duration::from_millis(5250));
        Clock::new(1.0)
            .pause_at_least(Duration::from_secs(1), floor)
            .await;
        assert_eq!(start.elapsed(), Duration::from_millis(6250));
        Clock::new(0.0)
            .pause_at_least(Duration::from_secs(1), floor)
            .await;
        assert_eq!(start.elapsed(), Duration::from_millis(6250));
    }
}

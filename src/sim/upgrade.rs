//! The upgrade after a successful download: `START`, `UPDATING` progress,
//! `END,<err>`, and the retry rule — on a non-zero `<err>` the module
//! reboots and tries again, `profile.max_attempts` (five) attempts in all
//! (seeds `000_318699ddba19ea03.txt` §4.1, `004_88405b99851b7db5.txt`
//! §4.1; SPEC §4, §5). A power cut during `UPDATING` reboots the module and
//! the upgrade continues without counting as an attempt.
//!
//! After an error or a power cut, progress resumes at the last percentage
//! reported, as seed 000 §4.1 shows (`UPDATING,20`, `END,<err>`, restart,
//! `START`, `UPDATING,20`, `UPDATING,30`, …).

use std::time::Duration;

use crate::profile::Profile;
use crate::sim::clock::{Clock, timing};
use crate::sim::emit::Emitter;
use crate::sim::fault::FaultPlan;
use crate::sim::urc::{Event, PowerOff, Urc};

/// `UPDATING` percentage at which an injected in-flight error ends an
/// attempt (seed 000 §4.1 example: `UPDATING,20` then `END,<err>`).
const FAIL_PERCENT: u16 = 20;

/// `<err>` codes reported by the package check, before any `UPDATING`
/// (seed 004 §4.1.1 lists 504, 505, 510 as check results; 506 and 513 verify
/// the package, 511 and 550 follow from its size — SPEC §5 "check errors may
/// come before any `UPDATING`"). Other codes (502, 520–530, 540–546) come
/// during `UPDATING`.
pub const CHECK_CODES: [u16; 7] = [504, 505, 506, 510, 511, 513, 550];

/// One upgrade, from the first `START` to the last `END`.
pub(crate) struct Upgrade<'a> {
    /// Family: `max_attempts`.
    pub profile: &'static Profile,
    /// The package check's failure, the same on every attempt.
    pub check: Option<u16>,
    /// `UPDATING` lines per full run; 0 = silent (`ec200`).
    pub updating_lines: u8,
    /// Injected faults (upgrade errors and power cuts are consumed).
    pub faults: &'a mut FaultPlan,
    /// Scaled time.
    pub clock: Clock,
    /// Where events go.
    pub emit: &'a Emitter,
}

/// Reboots: power-off, the scaled reboot time, `RDY`.
pub(crate) async fn reboot(clock: Clock, emit: &Emitter, why: PowerOff) {
    emit.send(Event::PowerOff(why));
    clock.pause(timing::REBOOT).await;
    emit.send(Event::Ready);
}

impl Upgrade<'_> {
    /// Runs the attempts; returns each attempt's `<err>`, ending at the
    /// first 0 or after `max_attempts`.
    pub(crate) async fn run(self) -> Vec<u16> {
        let Upgrade {
            profile,
            check,
            updating_lines,
            faults,
            clock,
            emit,
        } = self;
        let silent = updating_lines == 0;
        let steps: u8 = if silent { 100 } else { updating_lines };
        let step_time = timing::UPDATING / u32::from(steps);
        let fail_step =
            u8::try_from((u16::from(steps) * FAIL_PERCENT).div_ceil(100).max(1)).unwrap_or(steps);
        let mut power_cuts = faults.power_cut_steps(steps);
        let mut resume_at: u8 = 1;
        let mut codes = Vec::new();
        for attempt in 1..=profile.max_attempts.max(1) {
            if attempt > 1 {
                clock.pause(timing::BEFORE_REBOOT).await;
                reboot(clock, emit, PowerOff::RebootToRetry).await;
            }
            clock.pause(timing::BEFORE_START).await;
            emit.urc(Urc::Start);
            clock.pause(timing::CHECK).await;
            let injected = faults.next_upgrade_error();
            let failure = check.or(injected);
            let code = match failure {
                Some(code) if CHECK_CODES.contains(&code) => code,
                _ => {
                    let mut step = resume_at;
                    let mut code = 0;
                    while step <= steps {
                        clock.pause(step_time).await;
                        if !silent {
                            emit.urc(Urc::Updating(step));
                        }
                        resume_at = step;
                        if let Some(i) = power_cuts.iter().position(|s| *s == step) {
                            power_cuts.remove(i);
                            reboot(clock, emit, PowerOff::PowerCut).await;
                            clock.pause(timing::BEFORE_START).await;
                            emit.urc(Urc::Start);
                            // The interrupted step runs again.
                            continue;
                        }
                        if let Some(err) = failure.filter(|_| step >= fail_step) {
                            code = err;
                            break;
                        }
                        step += 1;
                    }
                    code
                }
            };
            clock.pause(step_time.min(Duration::from_secs(1))).await;
            emit.urc(Urc::End(code));
            codes.push(code);
            if code == 0 {
                break;
            }
        }
        codes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::fault::Fault;
    use crate::sim::testing::{bounded, drain};

    async fn run(profile: &str, check: Option<u16>, lines: u8, faults: &[&str]) -> Vec<Event> {
        let profile = Profile::by_name(profile).unwrap();
        let faults: Vec<Fault> = faults.iter().map(|f| f.parse().unwrap()).collect();
        let mut plan = FaultPlan::new(&faults, profile.max_attempts);
        let (emit, mut rx) = Emitter::channel();
        bounded(
            Upgrade {
                profile,
                check,
                updating_lines: lines,
                faults: &mut plan,
                clock: Clock::new(1.0),
                emit: &emit,
            }
            .run(),
        )
        .await;
        drain(&mut rx)
    }

    fn updating(range: std::ops::RangeInclusive<u8>) -> Vec<Event> {
        range.map(|p| Event::Urc(Urc::Updating(p))).collect()
    }

    fn ends(events: &[Event]) -> Vec<u16> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Urc(Urc::End(n)) => Some(*n),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn success_prints_start_updating_1_to_100_end_0() {
        let events = run("ec2x", None, 100, &[]).await;
        let mut want = vec![Event::Urc(Urc::Start)];
        want.extend(updating(1..=100));
        want.push(Event::Urc(Urc::End(0)));
        assert_eq!(events, want);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_rule_two_520_then_success() {
        let events = run("ec2x", None, 100, &["upgrade-error=520x2"]).await;
        assert_eq!(ends(&events), vec![520, 520, 0]);
        let reboots = events
            .iter()
            .filter(|e| **e == Event::PowerOff(PowerOff::RebootToRetry))
            .count();
        assert_eq!(reboots, 2);
        assert_eq!(events.iter().filter(|e| **e == Event::Ready).count(), 2);
        // Attempt 1 fails at 20 %, the retries resume there.
        let first_end = events
            .iter()
            .position(|e| *e == Event::Urc(Urc::End(520)))
            .unwrap();
        assert_eq!(events[first_end - 1], Event::Urc(Urc::Updating(20)));
        assert_eq!(events.last(), Some(&Event::Urc(Urc::End(0))));
        assert_eq!(events[events.len() - 2], Event::Urc(Urc::Updating(100)));
    }

    #[tokio::test(start_paused = true)]
    async fn check_failure_fails_all_five_attempts_without_updating() {
        let events = run("ec2x", Some(504), 100, &[]).await;
        assert_eq!(ends(&events), vec![504; 5]);
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Event::Urc(Urc::Updating(_))))
        );
        assert_eq!(events.iter().filter(|e| **e == Event::Ready).count(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn power_cut_reboots_and_resumes_without_costing_an_attempt() {
        let events = run("ec2x", None, 100, &["power-cut=40"]).await;
        assert_eq!(ends(&events), vec![0]);
        let cut = events
            .iter()
            .position(|e| *e == Event::PowerOff(PowerOff::PowerCut))
            .unwrap();
        assert_eq!(events[cut - 1], Event::Urc(Urc::Updating(40)));
        assert_eq!(events[cut + 1], Event::Ready);
        assert_eq!(events[cut + 2], Event::Urc(Urc::Start));
        assert_eq!(events[cut + 3], Event::Urc(Urc::Updating(40)));
        assert_eq!(events[cut + 4], Event::Urc(Urc::Updating(41)));
    }

    #[tokio::test(start_paused = true)]
    async fn ec200_update_urc_max_sets_the_line_count() {
        let events = run("ec200", None, 5, &[]).await;
        let mut want = vec![Event::Urc(Urc::Start)];
        want.extend(updating(1..=5));
        want.push(Event::Urc(Urc::End(0)));
        assert_eq!(events, want);
        let silent = run("ec200", None, 0, &[]).await;
        assert_eq!(
            silent,
            vec![Event::Urc(Urc::Start), Event::Urc(Urc::End(0))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn upgrading_takes_the_realistic_time_at_scale_1() {
        let start = tokio::time::Instant::now();
        run("ec2x", None, 100, &[]).await;
        let took = start.elapsed();
        assert!(took >= timing::UPDATING, "{took:?}");
        assert!(
            took < timing::UPDATING + Duration::from_secs(10),
            "{took:?}"
        );
    }
}

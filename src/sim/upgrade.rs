//! The upgrade after a successful download: `START`, `UPDATING` progress,
//! `END,<err>`, and the retry rule — on a non-zero `<err>` the module
//! reboots and tries again, `profile.max_attempts` (five) attempts in all
//! (seeds `000_318699ddba19ea03.txt` §4.1, `004_88405b99851b7db5.txt`
//! §4.1; SPEC §4, §5). On `eg06xk`, attempts failing with 520–530 do not
//! count: the module retries "until the upgrade is successful" (seed 000
//! table 5, `Profile::retry_until_success`). A power cut during `UPDATING`
//! reboots the module and the upgrade continues without counting as an
//! attempt, except on `ec200`, where it leaves the module without a
//! working firmware (seed `001_2f648264def3e0b1.txt` §5: "the upgrade will
//! be failed and cannot be restored").
//!
//! After an error or a power cut, progress resumes at the last percentage
//! reported, as seed 000 §4.1 shows (`UPDATING,20`, `END,<err>`, restart,
//! `START`, `UPDATING,20`, `UPDATING,30`, …).
//!
//! `Upgrade::run` is the attempt loop; each attempt (`attempt`) and its
//! `UPDATING` steps (`update`) are their own functions. The run
//! (`crate::sim::run`) drives it; it waits on the `Clock` and sends
//! through the `Emitter`, both below it.

use std::time::Duration;

use crate::profile::Profile;
use crate::sim::clock::{Clock, timing};
use crate::sim::emit::Emitter;
use crate::sim::fault::FaultPlan;
use crate::sim::urc::{Event, PowerOff, Urc};

/// Least real time between the last `UPDATING` line (or `START`) and
/// `END` at any time scale but 0 (250 ms: two and a half of fwupd's 100 ms
/// polls).
pub const END_GAP_MIN: Duration = Duration::from_millis(250);

/// `UPDATING` percentage at which an injected in-flight error ends an
/// attempt (seed 000 §4.1 example: `UPDATING,20` then `END,<err>`).
const FAIL_PERCENT: u16 = 20;

/// `<err>` codes reported by the package check, before any `UPDATING`
/// (seed 004 §4.1.1 lists 504, 505, 510 as check results; 506 and 513 verify
/// the package, 511 and 550 follow from its size — SPEC §5 "check errors may
/// come before any `UPDATING`"). Other codes (502, 520–530, 540–546) come
/// during `UPDATING`.
pub const CHECK_CODES: [u16; 7] = [504, 505, 506, 510, 511, 513, 550];

/// Most attempts one upgrade makes, counted or not: a bound on the
/// "until successful" retries of seed 000, which only injected faults
/// (each failing at most 255 attempts) can prolong.
pub const MAX_ATTEMPTS_IN_ALL: u16 = 1000;

/// How an upgrade ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Each attempt's `<err>`, in order; the last is 0 on success.
    pub codes: Vec<u16>,
    /// Power was lost on a family where that ruins the firmware: the
    /// module does not boot again.
    pub firmware_lost: bool,
}

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

/// Where `UPDATING` stands, across attempts and power cuts.
struct Updating {
    /// `UPDATING` steps per full run (100 when the lines are silent).
    steps: u8,
    /// No `UPDATING` lines are printed (`ec200` with 0 lines).
    silent: bool,
    /// Time per step.
    step_time: Duration,
    /// The step at which an injected in-flight error ends an attempt.
    fail_step: u8,
    /// Steps at which the power is cut, each used once.
    power_cuts: Vec<u8>,
    /// The step the next attempt starts at: the last one reported.
    resume_at: u8,
}

impl Updating {
    /// `lines` `UPDATING` lines per full run (0 = silent), with the power
    /// cuts `faults` plans.
    fn new(lines: u8, faults: &FaultPlan) -> Updating {
        let silent = lines == 0;
        let steps: u8 = if silent { 100 } else { lines };
        Updating {
            steps,
            silent,
            step_time: timing::UPDATING / u32::from(steps),
            fail_step: u8::try_from((u16::from(steps) * FAIL_PERCENT).div_ceil(100).max(1))
                .unwrap_or(steps),
            power_cuts: faults.power_cut_steps(steps),
            resume_at: 1,
        }
    }

    /// Whether the power is cut at `step` (once per planned cut).
    fn cut_at(&mut self, step: u8) -> bool {
        let cut = self.power_cuts.iter().position(|s| *s == step);
        cut.map(|i| self.power_cuts.remove(i)).is_some()
    }
}

impl Upgrade<'_> {
    /// Runs the attempts, ending at the first `END,0`, after
    /// `max_attempts` counted failures (codes in `retry_until_success` do
    /// not count), or when power is lost for good. Every attempt after the
    /// first follows a reboot.
    pub(crate) async fn run(mut self) -> Outcome {
        let mut updating = Updating::new(self.updating_lines, self.faults);
        let mut outcome = Outcome {
            codes: Vec::new(),
            firmware_lost: false,
        };
        let mut counted = 0u8;
        while counted < self.profile.max_attempts.max(1)
            && outcome.codes.len() < usize::from(MAX_ATTEMPTS_IN_ALL)
        {
            if !outcome.codes.is_empty() {
                self.clock.pause(timing::BEFORE_REBOOT).await;
                reboot(self.clock, self.emit, PowerOff::RebootToRetry).await;
            }
            let Some(code) = self.attempt(&mut updating).await else {
                outcome.firmware_lost = true;
                break;
            };
            outcome.codes.push(code);
            if code == 0 {
                break;
            }
            if !self.profile.retry_until_success.contains(&code) {
                counted += 1;
            }
        }
        outcome
    }

    /// One attempt: `START`, the package check, `UPDATING` unless the
    /// check failed, `END,<err>`; returns the `<err>`, or `None` when the
    /// power was lost for good.
    async fn attempt(&mut self, updating: &mut Updating) -> Option<u16> {
        self.start().await;
        self.clock.pause(timing::CHECK).await;
        // Drawn on every attempt, so a planned error is used up even when
        // the package check fails first.
        let injected = self.faults.next_upgrade_error();
        let failure = self.check.or(injected);
        let code = match failure {
            Some(code) if CHECK_CODES.contains(&code) => code,
            _ => self.update(updating, failure).await?,
        };
        let end_time = updating.step_time.min(Duration::from_secs(1));
        // `END` never shares a host's read with the `UPDATING` lines
        // before it: fwupd's DFOTA plugin polls every 100 ms and takes
        // only the first `+QIND: "FOTA"` of each read, so at a small time
        // scale it saw `UPDATING,96` and never the `END,0` behind it.
        self.clock.pause_at_least(end_time, END_GAP_MIN).await;
        self.emit.urc(Urc::End(code));
        Some(code)
    }

    /// The `UPDATING` steps from where the last attempt stopped. A power
    /// cut reboots the module and repeats the step; `failure` ends the
    /// attempt at [`FAIL_PERCENT`]. Returns the `<err>` (0: upgraded), or
    /// `None` when the power cut ruined the firmware (`ec200`).
    async fn update(&self, updating: &mut Updating, failure: Option<u16>) -> Option<u16> {
        let mut step = updating.resume_at;
        while step <= updating.steps {
            self.clock.pause(updating.step_time).await;
            if !updating.silent {
                self.emit.urc(Urc::Updating(step));
            }
            updating.resume_at = step;
            if updating.cut_at(step) {
                if !self.profile.power_cut_resumes {
                    self.emit.send(Event::PowerOff(PowerOff::PowerCut));
                    return None;
                }
                reboot(self.clock, self.emit, PowerOff::PowerCut).await;
                // The interrupted step runs again.
                self.start().await;
                continue;
            }
            if let Some(err) = failure.filter(|_| step >= updating.fail_step) {
                return Some(err);
            }
            step += 1;
        }
        Some(0)
    }

    /// `START` after the module's start-up time.
    async fn start(&self) {
        self.clock.pause(timing::BEFORE_START).await;
        self.emit.urc(Urc::Start);
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

    /// A successful attempt with `lines` `UPDATING` lines.
    fn success(lines: u8) -> Vec<Event> {
        let mut want = vec![Event::Urc(Urc::Start)];
        want.extend(updating(1..=lines));
        want.push(Event::Urc(Urc::End(0)));
        want
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
        assert_eq!(events, success(100));
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
    async fn eg06xk_retries_520_to_530_until_successful() {
        // Seed 000 table 5: 520–530 "retry ... until the upgrade is
        // successful"; they do not count toward the five.
        let events = run("eg06xk", None, 100, &["upgrade-error=520x7"]).await;
        assert_eq!(ends(&events), [vec![520; 7], vec![0]].concat());
        // 502 counts: five failures and the module gives up.
        let events = run("eg06xk", None, 100, &["upgrade-error=502"]).await;
        assert_eq!(ends(&events), vec![502; 5]);
        // Seeds 002 and 004 count 520 like any failure.
        for family in ["ec2x", "eg06xk-dfota"] {
            let events = run(family, None, 100, &["upgrade-error=520x7"]).await;
            assert_eq!(ends(&events), vec![520; 5], "{family}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ec200_power_cut_loses_the_firmware() {
        let events = run("ec200", None, 100, &["power-cut=30"]).await;
        assert_eq!(
            events.last(),
            Some(&Event::PowerOff(PowerOff::PowerCut)),
            "no RDY, no END after the cut"
        );
        assert!(!events.contains(&Event::Ready));
        assert!(!events.iter().any(|e| matches!(e, Event::Urc(Urc::End(_)))));
    }

    #[tokio::test(start_paused = true)]
    async fn ec200_update_urc_max_sets_the_line_count() {
        let events = run("ec200", None, 5, &[]).await;
        assert_eq!(events, success(5));
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

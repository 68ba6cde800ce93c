//! One accepted `AT+QFOTADL` run, phase by phase (SPEC §3–§5): the answer
//! (`OK`), the download, the package check, the upgrade with its retries,
//! and the reboot back to normal mode with the new version. [`Run`]
//! carries the run's state from phase to phase; each phase is a method
//! that can be driven alone.
//!
//! The module ([`crate::sim::module`]) accepts the command and spawns
//! [`Run::execute`]; this file uses the parts below it — [`download`],
//! [`crate::sim::package`], [`upgrade`], the [`Clock`] and [`Emitter`] —
//! and the shared [`crate::sim::state`], and never the module's file.

use std::sync::Arc;

use crate::package::version::VersionChange;
use crate::sim::clock::{Clock, timing};
use crate::sim::command::FotadlCommand;
use crate::sim::download::{self, Download};
use crate::sim::emit::Emitter;
use crate::sim::fault::FaultPlan;
use crate::sim::package::{self, PackageFacts};
use crate::sim::state::{BusyGuard, Config, RunLog};
use crate::sim::upgrade::{self, Upgrade};
use crate::sim::urc::{AtResult, Event, PowerOff, Urc};

/// Phase 1, the answer: `OK` (the run goes on) or `ERROR` (a refused
/// command, nothing follows), after the module's response time.
pub(crate) async fn answer(clock: Clock, emit: &Emitter, result: AtResult) {
    clock.pause(timing::RESPONSE).await;
    emit.send(Event::Response(result));
}

/// One accepted `AT+QFOTADL` run: what every phase reads, and the fault
/// plan the phases consume.
pub(crate) struct Run {
    /// The module's fixed configuration.
    config: Arc<Config>,
    /// The claim on the module; also its version, read before the check
    /// and set after a successful upgrade.
    busy: BusyGuard,
    /// The parsed command.
    command: FotadlCommand,
    /// Where events go.
    emit: Emitter,
    /// Notes and byte count for the run's handle.
    log: RunLog,
    /// Injected faults; upgrade errors and power cuts are used up.
    faults: FaultPlan,
}

impl Run {
    /// A run of `command` on a module with `config`, holding `busy`.
    pub(crate) fn new(
        config: Arc<Config>,
        busy: BusyGuard,
        command: FotadlCommand,
        emit: Emitter,
        log: RunLog,
    ) -> Run {
        let faults = FaultPlan::new(&config.faults, config.profile.max_attempts);
        Run {
            config,
            busy,
            command,
            emit,
            log,
            faults,
        }
    }

    /// The whole run: `OK`, then the phases in order; a failed download
    /// ends it (the module stays in normal mode).
    pub(crate) async fn execute(mut self) {
        answer(self.config.clock, &self.emit, AtResult::Ok).await;
        let Some(package) = self.download().await else {
            return;
        };
        let check = self.check_package(package).await;
        let upgraded = self.upgrade(check).await;
        self.boot_normal(upgraded).await;
    }

    /// Phase 2: `FTPSTART`/`HTTPSTART`, the download, then
    /// `FTPEND`/`HTTPEND` with 0 or the family's code for the failure.
    /// Returns the package, or `None` after a failure (noted).
    async fn download(&self) -> Option<Vec<u8>> {
        let Run {
            config,
            command,
            emit,
            log,
            faults,
            ..
        } = self;
        let (profile, url) = (config.profile, &command.url);
        let ftp = url.scheme.is_ftp();
        config.clock.pause(timing::BEFORE_DOWNLOAD).await;
        emit.urc(if ftp { Urc::FtpStart } else { Urc::HttpStart });
        let result = download::download(Download {
            url,
            timeout: config.timeout,
            rate: config.rate,
            dns_fail: faults.dns_fail,
            network_down: faults.network_down,
            tls: Arc::clone(&config.tls),
            downloading_lines: command.params.downloading_lines(),
            emit,
            received: log.received_counter(),
        })
        .await;
        let code = match &result {
            Ok(package) => {
                tracing::debug!(
                    profile = profile.name,
                    url = %url.text,
                    bytes = package.len(),
                    "simulated download finished"
                );
                0
            }
            Err(error) => {
                let code = error.code(url.scheme, profile.download_codes);
                tracing::debug!(
                    profile = profile.name,
                    url = %url.text,
                    code,
                    cause = %error,
                    "simulated download failed"
                );
                log.note(format!("download: {error}"));
                code
            }
        };
        emit.urc(if ftp {
            Urc::FtpEnd(code)
        } else {
            Urc::HttpEnd(code)
        });
        result.ok()
    }

    /// Phase 3: the package checks of SPEC §5 against the module's version
    /// and free space. Returns the first failing check's `<err>` (noted
    /// with its reason), or `None` when the package passes.
    async fn check_package(&self, package: Vec<u8>) -> Option<u16> {
        let profile = self.config.profile;
        let free_space = self.config.free_space;
        let file_name = self.command.url.file_name().to_string();
        let version = self.busy.version();
        let plan = self.faults.clone();
        // Reading every zip entry through is CPU work; keep it off the
        // runtime's worker threads.
        let check = tokio::task::spawn_blocking(move || {
            package::check(
                &PackageFacts {
                    profile,
                    bytes: &package,
                    file_name: &file_name,
                    version: version.as_deref(),
                    free_space,
                },
                &plan,
            )
        })
        .await
        .unwrap_or_else(|e| Some((package::FORMAT_CODE, format!("package check failed: {e}"))));
        let (code, why) = check?;
        self.log.note(format!("package check: END,{code}: {why}"));
        Some(code)
    }

    /// Phase 4: the reboot into upgrade mode where the family does one for
    /// this `<upgrade_mode>`, then the attempts with the retry rule
    /// ([`Upgrade`]), each failing with `check` when it is set. Returns
    /// whether the last attempt ended `END,0`.
    async fn upgrade(&mut self, check: Option<u16>) -> bool {
        let (profile, clock) = (self.config.profile, self.config.clock);
        let params = self.command.params;
        if profile.reboots_before_upgrade(params.upgrade_mode) {
            clock.pause(timing::BEFORE_REBOOT).await;
            upgrade::reboot(clock, &self.emit, PowerOff::RebootToUpgrade).await;
        }
        let codes = Upgrade {
            profile,
            check,
            updating_lines: params.updating_lines(),
            faults: &mut self.faults,
            clock,
            emit: &self.emit,
        }
        .run()
        .await;
        let upgraded = codes.last() == Some(&0);
        if !upgraded {
            self.log.note(format!(
                "upgrade failed {} times; the module boots its old firmware",
                codes.len()
            ));
        }
        upgraded
    }

    /// Phase 5: the reboot back to normal mode (power-off, `RDY`); after
    /// an `upgraded` run the module runs the package's `<to>` version
    /// (`None` when its name states none).
    async fn boot_normal(&self, upgraded: bool) {
        let clock = self.config.clock;
        clock.pause(timing::BEFORE_REBOOT).await;
        self.emit.send(Event::PowerOff(PowerOff::RebootToNormal));
        if upgraded {
            let new = VersionChange::from_file_name(self.command.url.file_name()).map(|v| v.to);
            self.busy.set_version(new);
        }
        clock.pause(timing::REBOOT).await;
        self.emit.send(Event::Ready);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::sync::mpsc::UnboundedReceiver;

    use super::*;
    use crate::profile::Profile;
    use crate::sim::download::tls;
    use crate::sim::fault::Fault;
    use crate::sim::state::{State, lock};
    use crate::sim::testing::{bounded, drain};

    /// A run of `AT+QFOTADL=<at_args>` on a `profile` module at version
    /// `v12`, with its events and the module's state.
    struct Fixture {
        run: Run,
        rx: UnboundedReceiver<Event>,
        state: Arc<Mutex<State>>,
    }

    fn fixture(profile: &str, faults: &[Fault], at_args: &str) -> Fixture {
        let profile = Profile::by_name(profile).unwrap();
        let config = Arc::new(Config {
            profile,
            free_space: None,
            faults: faults.to_vec(),
            clock: Clock::new(1.0),
            timeout: Duration::from_secs(1),
            tls: tls::client_config(None).unwrap(),
            rate: None,
        });
        let state = Arc::new(Mutex::new(State {
            version: Some("v12".to_string()),
            busy: false,
        }));
        let busy = BusyGuard::claim(&state).unwrap();
        let command = FotadlCommand::parse(at_args, profile).unwrap();
        let (emit, rx) = Emitter::channel();
        let run = Run::new(config, busy, command, emit, RunLog::default());
        Fixture { run, rx, state }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_download_ends_with_the_family_code_and_a_note() {
        let mut f = fixture("ec200", &[Fault::NetworkDown], r#""ftp://127.0.0.1/p.bin""#);
        assert_eq!(bounded(f.run.download()).await, None);
        assert_eq!(
            drain(&mut f.rx),
            vec![Event::Urc(Urc::FtpStart), Event::Urc(Urc::FtpEnd(605))]
        );
        assert!(f.run.log.notes()[0].starts_with("download: "));
    }

    #[tokio::test(start_paused = true)]
    async fn a_package_that_is_not_a_zip_fails_the_check_with_504() {
        let f = fixture("ec2x", &[], r#""http://h/update-v12-to-v13.zip""#);
        let check = bounded(f.run.check_package(b"not a zip".to_vec())).await;
        assert_eq!(check, Some(504));
        assert!(f.run.log.notes()[0].starts_with("package check: END,504: "));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_check_fails_every_attempt_and_is_noted() {
        let mut f = fixture("ec2x", &[], r#""http://h/update-v12-to-v13.zip""#);
        assert!(!bounded(f.run.upgrade(Some(504))).await);
        let ends = drain(&mut f.rx)
            .into_iter()
            .filter(|e| *e == Event::Urc(Urc::End(504)))
            .count();
        assert_eq!(ends, 5);
        assert!(f.run.log.notes()[0].starts_with("upgrade failed 5 times"));
    }

    #[tokio::test(start_paused = true)]
    async fn booting_after_an_upgrade_runs_the_new_version() {
        let mut f = fixture("ec2x", &[], r#""http://h/update-v12-to-v13.zip""#);
        bounded(f.run.boot_normal(false)).await;
        assert_eq!(lock(&f.state).version.as_deref(), Some("v12"));
        bounded(f.run.boot_normal(true)).await;
        assert_eq!(lock(&f.state).version.as_deref(), Some("v13"));
        let reboot = vec![Event::PowerOff(PowerOff::RebootToNormal), Event::Ready];
        assert_eq!(drain(&mut f.rx), [reboot.clone(), reboot].concat());
    }
}

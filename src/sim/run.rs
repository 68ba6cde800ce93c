//! One accepted `AT+QFOTADL` run, phase by phase (SPEC §3–§5, §9): the
//! answer (`OK`), the package — downloaded, read from the UFS, or taken
//! over the AT port (`ec200`'s `FILE:<length>`) — the package check, the
//! upgrade with its retries, and the reboot back to normal mode with the
//! new version. [`Run`] carries the run's state from phase to phase; each
//! phase is a method that can be driven alone.
//!
//! The module ([`crate::sim::module`]) accepts the command and spawns
//! [`Run::execute`]; this file uses the parts below it — [`download`],
//! [`crate::sim::package`], [`upgrade`], the [`Clock`] and [`Emitter`] —
//! and the shared [`crate::sim::state`], and never the module's file.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::package::version::VersionChange;
use crate::profile::{DownloadCodes, VersionMismatch};
use crate::sim::clock::{Clock, timing};
use crate::sim::command::{FotaUrl, FotadlCommand, Source};
use crate::sim::download::progress::Progress;
use crate::sim::download::{self, Download, DownloadError};
use crate::sim::emit::Emitter;
use crate::sim::fault::FaultPlan;
use crate::sim::package::{self, PackageData, PackageFacts};
use crate::sim::state::{BusyGuard, Config, Phase, RunLog};
use crate::sim::ufs::FileName;
use crate::sim::upgrade::{self, Upgrade};
use crate::sim::urc::{AtResult, Event, PowerOff, Urc};

/// `<file_err>` when the package over the AT port stops short (seed
/// `001_2f648264def3e0b1.txt` §4: "500 File download error").
pub const FILE_ERROR: u16 = 500;

/// Phase 1, the answer: `OK` (the run goes on), `ERROR` (a refused
/// command, nothing follows) or `010003`, after the module's response time.
pub(crate) async fn answer(clock: Clock, emit: &Emitter, result: AtResult) {
    clock.pause(timing::RESPONSE).await;
    emit.send(Event::Response(result));
}

/// `ec200`'s answer to a download while another one runs: `OK`, then the
/// download's end with the busy code (603 / 703, or 704 while the running
/// one takes its package over the AT port; seed 001 tables 2 and 3).
pub(crate) async fn answer_busy(clock: Clock, emit: &Emitter, url: &FotaUrl, uart: bool) {
    answer(clock, emit, AtResult::Ok).await;
    let code = DownloadError::Busy { uart }.code(url.scheme, DownloadCodes::Detailed);
    emit.urc(if url.scheme.is_ftp() {
        Urc::FtpEnd(code)
    } else {
        Urc::HttpEnd(code)
    });
}

/// The package a run got, or why it has none.
enum Fetched {
    /// The package (a local file's bytes shared with the UFS).
    Package(PackageData),
    /// A local file that is not there: the check fails with `<err>` 504.
    Missing,
    /// The download failed (its end URC is out); the run is over.
    Failed,
    /// The power went during the download; the run is over after a
    /// reboot.
    PowerCut,
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
    /// `FILE:<length>`: the bytes the AT layer feeds.
    input: Option<mpsc::UnboundedReceiver<Vec<u8>>>,
    /// The versions the package goes from and to, once checked (its file
    /// name's, else its `version.txt`'s).
    change: Option<VersionChange>,
}

impl Run {
    /// A run of `command` on a module with `config`, holding `busy`;
    /// `input` carries the package of a `FILE:<length>` command.
    pub(crate) fn new(
        config: Arc<Config>,
        busy: BusyGuard,
        command: FotadlCommand,
        emit: Emitter,
        log: RunLog,
        input: Option<mpsc::UnboundedReceiver<Vec<u8>>>,
    ) -> Run {
        let faults = FaultPlan::new(&config.faults, config.profile.max_attempts);
        Run {
            config,
            busy,
            command,
            emit,
            log,
            faults,
            input,
            change: None,
        }
    }

    /// The whole run: the answer, then the phases in order; a failed
    /// download ends it (the module stays in normal mode).
    pub(crate) async fn execute(mut self) {
        let clock = self.config.clock;
        if self.command.source == Source::ProtocolMode {
            self.log
                .note("FILE:<length>,2: protocol-download mode is not simulated".to_string());
            return answer(clock, &self.emit, AtResult::ProtocolMode).await;
        }
        answer(clock, &self.emit, AtResult::Ok).await;
        let source = self.command.source.clone();
        let fetched = match &source {
            Source::Url(url) => self.download(url).await,
            Source::Local { name, .. } => self.load_local(name),
            Source::Uart { length } => self.receive_file(*length).await,
            Source::ProtocolMode => return,
        };
        let package = match fetched {
            Fetched::Package(bytes) => Some(bytes),
            Fetched::Missing => None,
            Fetched::Failed => return,
            Fetched::PowerCut => return self.power_cycle().await,
        };
        self.busy.set_phase(Phase::Upgrading);
        let mut check = self.check_package(package).await;
        if let VersionMismatch::Final(final_code) = self.config.profile.version_mismatch
            && check.is_none()
            && self.faults.take_upgrade_error_if(final_code)
        {
            self.log.note(format!(
                "package check: END,{final_code}: fault upgrade-error"
            ));
            check = Some(final_code);
        }
        if let (Some(code), VersionMismatch::Final(final_code)) =
            (check, self.config.profile.version_mismatch)
            && code == final_code
        {
            return self.reject(code).await;
        }
        let upgraded = self.upgrade(check).await;
        if let Some(upgraded) = upgraded {
            self.boot_normal(upgraded).await;
        }
    }

    /// Phase 2 for a URL: `FTPSTART`/`HTTPSTART`, the download, then
    /// `FTPEND`/`HTTPEND` with 0 or the family's code for the failure.
    async fn download(&self, url: &FotaUrl) -> Fetched {
        let Run {
            config,
            command,
            emit,
            log,
            faults,
            ..
        } = self;
        let profile = config.profile;
        let ftp = url.scheme.is_ftp();
        let (inactive_context, injected) = {
            let mut state = self.busy.state();
            let cid = state.fota_cid;
            let inactive = (!state.active_contexts.contains(&cid)).then_some(cid);
            (inactive, state.next_download_error(ftp))
        };
        config.clock.pause(timing::BEFORE_DOWNLOAD).await;
        emit.urc(if ftp { Urc::FtpStart } else { Urc::HttpStart });
        log.download_started();
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
            first_byte: log.first_byte_cell(),
            injected,
            inactive_context,
            space: self.download_space(),
            power_cut: faults.download_power_cut,
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
            Err(error @ DownloadError::PowerCut { .. }) => {
                log.note(format!("download: {error}"));
                return Fetched::PowerCut;
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
        match result {
            Ok(package) => Fetched::Package(package),
            Err(_) => Fetched::Failed,
        }
    }

    /// The free space a download must fit as it arrives: on families with
    /// detailed download codes (`ec200`, which has no `END,511`) the
    /// downloader cannot create a larger file (611 / 729); elsewhere the
    /// package check reports `END,511`.
    fn download_space(&self) -> Option<u64> {
        (self.config.profile.download_codes == DownloadCodes::Detailed)
            .then(|| self.config.ufs.space().free)
    }

    /// Phase 2 for a local path: the file from the UFS, no URC (SPEC §9).
    fn load_local(&self, name: &FileName) -> Fetched {
        match self.config.ufs.read(name.as_str()) {
            Ok(bytes) => Fetched::Package(PackageData::Memory(bytes)),
            Err(error) => {
                self.log.note(format!("local file: {error}"));
                Fetched::Missing
            }
        }
    }

    /// Phase 2 for `FILE:<length>` (`ec200`, seed 001 §3.2.1.3):
    /// `FILESTART`, `<length>` bytes from the AT layer with `DOWNLOADING`
    /// lines as configured, then `FILEEND,0`, or `FILEEND,500` when the
    /// data stops short (no byte within the timeout, or the AT layer
    /// closes its end).
    async fn receive_file(&mut self, length: u64) -> Fetched {
        let config = Arc::clone(&self.config);
        config.clock.pause(timing::RESPONSE).await;
        self.emit.urc(Urc::FileStart);
        let result = self.take_file(length).await;
        let code = match &result {
            Ok(_) => 0,
            Err(error @ DownloadError::PowerCut { .. }) => {
                self.log.note(format!("FILE: {error}"));
                return Fetched::PowerCut;
            }
            Err(error) => {
                self.log.note(format!("FILE: {error}"));
                FILE_ERROR
            }
        };
        self.emit.urc(Urc::FileEnd(code));
        match result {
            Ok(package) => Fetched::Package(PackageData::Memory(Arc::new(package))),
            Err(_) => Fetched::Failed,
        }
    }

    /// Reads `length` bytes from the AT layer's channel.
    ///
    /// # Errors
    /// The cause: a stall or a closed channel before `length` bytes
    /// ([`DownloadError::Stalled`] / [`DownloadError::Truncated`]), no
    /// space, a power cut.
    async fn take_file(&mut self, length: u64) -> Result<Vec<u8>, DownloadError> {
        let timeout = self.config.timeout;
        let space = self.download_space();
        let lines = self.command.params.downloading_lines();
        let cut = self.faults.download_power_cut;
        let mut progress = Progress::new(lines, None, &self.emit)
            .count_into(self.log.received_counter())
            .first_byte_into(self.log.first_byte_cell())
            .limit(space)
            .power_cut(cut);
        progress.expect(Some(length))?;
        let mut package = download::progress::package_buffer(Some(length));
        let Some(input) = self.input.as_mut() else {
            return Err(DownloadError::Other("no input channel".to_string()));
        };
        while (package.len() as u64) < length {
            let chunk = match tokio::time::timeout(timeout, input.recv()).await {
                Err(_) => return Err(DownloadError::stalled(progress.received(), timeout)),
                Ok(None) => {
                    return Err(DownloadError::Truncated {
                        received: progress.received(),
                        expected: Some(length),
                    });
                }
                Ok(Some(chunk)) => chunk,
            };
            let room = usize::try_from(length - package.len() as u64).unwrap_or(usize::MAX);
            let take = chunk.len().min(room);
            package.extend_from_slice(&chunk[..take]);
            progress.advance(take).await?;
        }
        progress.complete();
        Ok(package)
    }

    /// A power cut outside the upgrade: the module goes down and boots its
    /// old firmware in normal mode.
    async fn power_cycle(&self) {
        self.emit.send(Event::PowerOff(PowerOff::DownloadPowerCut));
        self.config.clock.pause(timing::REBOOT).await;
        self.emit.send(Event::Ready);
    }

    /// Phase 3: the package checks of SPEC §5 against the module's version
    /// and free space. Returns the first failing check's `<err>` (noted
    /// with its reason), or `None` when the package passes. A missing
    /// local file (`None`) is the family's package error, 504. Keeps the
    /// package's version change for the boot after the upgrade.
    async fn check_package(&mut self, package: Option<PackageData>) -> Option<u16> {
        let Some(package) = package else {
            self.log.note(format!(
                "package check: END,{}: no such file in the UFS",
                package::FORMAT_CODE
            ));
            return Some(package::FORMAT_CODE);
        };
        let profile = self.config.profile;
        let local = matches!(self.command.source, Source::Local { .. });
        // A stored package already takes its own room.
        let own = if local { package.len() } else { 0 };
        let free_space = Some(self.config.ufs.space().free + own);
        // As the server reads it: `update%2Dv12-to-v13.zip` names the
        // package `update-v12-to-v13.zip`.
        let raw = self.command.source.file_name().unwrap_or("");
        let file_name =
            crate::catalog::path::percent_decode(raw).unwrap_or_else(|_| raw.to_string());
        let version = self.busy.version();
        let plan = self.faults.clone();
        // Reading every zip entry through is CPU work; keep it off the
        // runtime's worker threads.
        let checked = tokio::task::spawn_blocking(move || {
            let change = package.version_change(&file_name);
            let check = package::check(
                &PackageFacts {
                    profile,
                    data: &package,
                    change: change.as_ref(),
                    version: version.as_deref(),
                    free_space,
                },
                &plan,
            );
            (check, change)
        })
        .await;
        let check = match checked {
            Ok((check, change)) => {
                self.change = change;
                check
            }
            Err(e) => Some((package::FORMAT_CODE, format!("package check failed: {e}"))),
        };
        let (code, why) = check?;
        self.log.note(format!("package check: END,{code}: {why}"));
        Some(code)
    }

    /// `eg06xk-dfota`'s version mismatch (seed `002_1ebd9d344d8c6b8a.txt`
    /// §3): checked before recovery mode, reported once as `END,<code>`,
    /// the package deleted; the module stays in normal mode, no retry.
    async fn reject(&self, code: u16) {
        // Apart from the `OK` before it, for a host that reads once per
        // poll (see `upgrade::END_GAP_MIN`).
        self.config
            .clock
            .pause_at_least(timing::CHECK, crate::sim::upgrade::END_GAP_MIN)
            .await;
        self.emit.urc(Urc::End(code));
        if let Source::Local { name, .. } = &self.command.source {
            let _ = self.config.ufs.delete(name.as_str());
        }
        self.log
            .note("the package was deleted; the module stays in normal mode".to_string());
    }

    /// Phase 4: the reboot into upgrade mode where the family does one for
    /// this `<upgrade_mode>`, then the attempts with the retry rule
    /// ([`Upgrade`]), each failing with `check` when it is set. Returns
    /// whether the last attempt ended `END,0`, or `None` when the power cut
    /// ruined the firmware (`ec200`): the module is down for good.
    async fn upgrade(&mut self, check: Option<u16>) -> Option<bool> {
        let (profile, clock) = (self.config.profile, self.config.clock);
        let params = self.command.params;
        if profile.reboots_before_upgrade(params.upgrade_mode) {
            clock.pause(timing::BEFORE_REBOOT).await;
            upgrade::reboot(clock, &self.emit, PowerOff::RebootToUpgrade).await;
        }
        let outcome = Upgrade {
            profile,
            check,
            updating_lines: params.updating_lines(),
            faults: &mut self.faults,
            clock,
            emit: &self.emit,
        }
        .run()
        .await;
        if outcome.firmware_lost {
            self.busy.state().firmware_lost = true;
            self.log.note(
                "power lost during the upgrade: the firmware is ruined and the module does not \
                 boot until repaired (seed 001 §5)"
                    .to_string(),
            );
            return None;
        }
        let upgraded = outcome.codes.last() == Some(&0);
        if !upgraded {
            self.log.note(format!(
                "upgrade failed {} times; the module boots its old firmware",
                outcome.codes.len()
            ));
        }
        Some(upgraded)
    }

    /// Phase 5: the reboot back to normal mode (power-off, `RDY`); after
    /// an `upgraded` run the module runs the package's `<to>` version
    /// (`None` when neither its name nor its `version.txt` states one).
    async fn boot_normal(&self, upgraded: bool) {
        let clock = self.config.clock;
        clock.pause(timing::BEFORE_REBOOT).await;
        self.emit.send(Event::PowerOff(PowerOff::RebootToNormal));
        if upgraded {
            let new = self.change.as_ref().map(|v| v.to.clone());
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
    use crate::sim::ufs::Ufs;

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
            faults: faults.to_vec(),
            clock: Clock::new(1.0),
            timeout: Duration::from_secs(1),
            tls: tls::client_config(None).unwrap(),
            rate: None,
            boot_contexts: [1].into(),
            ufs: Ufs::new(1 << 20),
        });
        let state = Arc::new(Mutex::new(State {
            version: Some("v12".to_string()),
            active_contexts: [1].into(),
            fota_cid: 1,
            ..State::default()
        }));
        let busy = BusyGuard::claim(&state, Phase::Upgrading).unwrap();
        let command = FotadlCommand::parse(at_args, profile).unwrap();
        let (emit, rx) = Emitter::channel();
        let run = Run::new(config, busy, command, emit, RunLog::default(), None);
        Fixture { run, rx, state }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_download_ends_with_the_family_code_and_a_note() {
        let mut f = fixture("ec200", &[Fault::NetworkDown], r#""ftp://127.0.0.1/p.bin""#);
        let url = f.run.command.source.url().unwrap().clone();
        assert!(matches!(
            bounded(f.run.download(&url)).await,
            Fetched::Failed
        ));
        assert_eq!(
            drain(&mut f.rx),
            vec![Event::Urc(Urc::FtpStart), Event::Urc(Urc::FtpEnd(605))]
        );
        assert!(f.run.log.notes()[0].starts_with("download: "));
    }

    #[tokio::test(start_paused = true)]
    async fn a_package_that_is_not_a_zip_fails_the_check_with_504() {
        let mut f = fixture("ec2x", &[], r#""http://h/update-v12-to-v13.zip""#);
        let check = bounded(
            f.run
                .check_package(Some(PackageData::Memory(Arc::new(b"not a zip".to_vec())))),
        )
        .await;
        assert_eq!(check, Some(504));
        assert!(f.run.log.notes()[0].starts_with("package check: END,504: "));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_check_fails_every_attempt_and_is_noted() {
        let mut f = fixture("ec2x", &[], r#""http://h/update-v12-to-v13.zip""#);
        assert_eq!(bounded(f.run.upgrade(Some(504))).await, Some(false));
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
        let zip = crate::sim::package::tests::sample_zip();
        let check = bounded(
            f.run
                .check_package(Some(PackageData::Memory(Arc::new(zip)))),
        );
        assert_eq!(check.await, None, "the package named v12 → v13 passes");
        bounded(f.run.boot_normal(false)).await;
        assert_eq!(lock(&f.state).version.as_deref(), Some("v12"));
        bounded(f.run.boot_normal(true)).await;
        assert_eq!(lock(&f.state).version.as_deref(), Some("v13"));
        let reboot = vec![Event::PowerOff(PowerOff::RebootToNormal), Event::Ready];
        assert_eq!(drain(&mut f.rx), [reboot.clone(), reboot].concat());
    }
}

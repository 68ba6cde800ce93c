//! A finished run: the AT transcript (command, `OK`/`ERROR`, URCs, `RDY`)
//! with timestamps, and its [`RunSummary`] — the download code, each
//! attempt's upgrade code and the module's version — as the command line
//! prints it (text or `--json`).

use std::time::Duration;

use serde::Serialize;

use crate::profile::Profile;
use crate::sim::urc::{AtResult, Event, Urc};

/// An event and when it arrived, measured from the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedEvent {
    /// Time since the command was sent.
    pub at: Duration,
    /// The event.
    pub event: Event,
}

/// A whole `AT+QFOTADL` run.
#[derive(Debug, Clone)]
pub struct Transcript {
    /// The command line, `AT+QFOTADL=<args>`.
    pub command: String,
    /// Everything the module did, in order.
    pub events: Vec<TimedEvent>,
    /// The outcome.
    pub summary: RunSummary,
}

impl Transcript {
    /// The AT port as a host sees it, without `\r\n` framing: the command,
    /// then every printed line (power-offs print nothing).
    pub fn lines(&self) -> Vec<String> {
        std::iter::once(self.command.clone())
            .chain(self.events.iter().filter_map(|e| e.event.line()))
            .collect()
    }
}

/// The outcome of a run, as the `--json` summary prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    /// Profile name.
    pub profile: &'static str,
    /// `OK` / `ERROR`; `None` when the run was stopped before answering.
    pub response: Option<AtResult>,
    /// `FTPEND` / `HTTPEND` / `FILEEND` code; `None` when there was no
    /// download (a local-file run, or one stopped by a power cut).
    pub download_code: Option<u16>,
    /// Each upgrade attempt's `END` code, in order.
    pub upgrade_codes: Vec<u16>,
    /// How many times the module booted (`RDY` lines).
    pub boots: usize,
    /// Firmware version before the run (`None` = not set).
    pub version_before: Option<String>,
    /// Firmware version after the run (`None` = not set, or unknown after
    /// a package whose name states none).
    pub version: Option<String>,
    /// What the simulator knows about the causes (not printed by a module).
    pub notes: Vec<String>,
    /// Package bytes the download received (also when it failed part-way).
    pub bytes_received: u64,
    /// Time to first byte, ms: from the download's start (`FTPSTART`,
    /// `HTTPSTART`, `FILESTART`) to its first package byte — connecting,
    /// logging in, asking and the server's answer. `None` when no byte
    /// came.
    pub first_byte_ms: Option<u64>,
}

impl RunSummary {
    /// Sums up a run's events.
    pub fn from_events(
        profile: &'static Profile,
        events: &[TimedEvent],
        version_before: Option<String>,
        version: Option<String>,
        notes: Vec<String>,
    ) -> RunSummary {
        let mut summary = RunSummary {
            profile: profile.name,
            response: None,
            download_code: None,
            upgrade_codes: Vec::new(),
            boots: 0,
            version_before,
            version,
            notes,
            bytes_received: 0,
            first_byte_ms: None,
        };
        for TimedEvent { event, .. } in events {
            match event {
                Event::Response(r) => summary.response = summary.response.or(Some(*r)),
                Event::Urc(Urc::FtpEnd(n) | Urc::HttpEnd(n) | Urc::FileEnd(n)) => {
                    summary.download_code = Some(*n)
                }
                Event::Urc(Urc::End(n)) => summary.upgrade_codes.push(*n),
                Event::Ready => summary.boots += 1,
                Event::Urc(_) | Event::PowerOff(_) => {}
            }
        }
        summary
    }

    /// Whether the run ended with `END,0` (exit status 0 of `simulate`).
    pub fn succeeded(&self) -> bool {
        self.response == Some(AtResult::Ok) && self.upgrade_codes.last() == Some(&0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::urc::PowerOff;

    fn timed(events: Vec<Event>) -> Vec<TimedEvent> {
        events
            .into_iter()
            .map(|event| TimedEvent {
                at: Duration::ZERO,
                event,
            })
            .collect()
    }

    #[test]
    fn summary_reads_codes_from_the_events() {
        let events = timed(vec![
            Event::Response(AtResult::Ok),
            Event::Urc(Urc::HttpStart),
            Event::Urc(Urc::HttpEnd(0)),
            Event::PowerOff(PowerOff::RebootToUpgrade),
            Event::Ready,
            Event::Urc(Urc::Start),
            Event::Urc(Urc::End(520)),
            Event::Ready,
            Event::Urc(Urc::Start),
            Event::Urc(Urc::End(0)),
            Event::Ready,
        ]);
        let p = Profile::by_name("ec2x").unwrap();
        let s = RunSummary::from_events(p, &events, Some("v12".into()), Some("v13".into()), vec![]);
        assert_eq!(s.download_code, Some(0));
        assert_eq!(s.upgrade_codes, vec![520, 0]);
        assert_eq!(s.boots, 3);
        assert!(s.succeeded());
        let t = Transcript {
            command: "AT+QFOTADL=\"x\"".into(),
            events,
            summary: s,
        };
        let lines = t.lines();
        assert_eq!(lines.len(), 11, "power-off prints nothing: {lines:?}");
        assert_eq!(lines[4], "RDY");
    }

    #[test]
    fn error_or_failed_download_is_not_success() {
        let p = Profile::by_name("ec2x").unwrap();
        let err = timed(vec![Event::Response(AtResult::Error)]);
        assert!(!RunSummary::from_events(p, &err, None, None, vec![]).succeeded());
        let failed = timed(vec![
            Event::Response(AtResult::Ok),
            Event::Urc(Urc::FtpStart),
            Event::Urc(Urc::FtpEnd(601)),
        ]);
        let s = RunSummary::from_events(p, &failed, None, None, vec![]);
        assert_eq!(s.download_code, Some(601));
        assert!(!s.succeeded());
    }
}

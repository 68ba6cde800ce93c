//! What a simulated module says on its AT port: the command's final result
//! (`OK` / `ERROR`), the FOTA URCs (`+QIND: "FOTA",…`), and boots (`RDY`).
//!
//! [`Event`] is the unit the simulator streams; it keeps the three kinds
//! apart, and adds [`Event::PowerOff`] (nothing printed) so that a modem
//! front-end can drop its port while the module is down. Spelling follows
//! SPEC §3: always `HTTPEND`, never the seeds' typos (`HTTPPEND`,
//! `HTTPEPEND`, `HTTPEnd`).

use std::fmt;

use serde::Serialize;

/// Final result code of an AT command line, printed before any URC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AtResult {
    /// `OK`: the command was accepted (seed 000: within 300 ms).
    Ok,
    /// `ERROR`: the command was refused; no URC follows (SPEC §3).
    Error,
    /// `010003`: `ec200`'s only answer to `AT+QFOTADL="FILE:<length>",2`,
    /// the vendor's protocol-download mode (seed `001_2f648264def3e0b1.txt`
    /// §3.2.1.4); nothing of that mode is simulated further.
    #[serde(rename = "010003")]
    ProtocolMode,
}

impl fmt::Display for AtResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AtResult::Ok => "OK",
            AtResult::Error => "ERROR",
            AtResult::ProtocolMode => "010003",
        })
    }
}

/// One FOTA unsolicited result code, `+QIND: "FOTA","<WORD>"[,<n>]`
/// (SPEC §3; seeds 000–004 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urc {
    /// `+QIND: "FOTA","FTPSTART"`: the FTP download begins.
    FtpStart,
    /// `+QIND: "FOTA","FTPEND",<ftp_err>`: the FTP download ended; 0 is
    /// success, otherwise a code of SPEC §4 (601–630).
    FtpEnd(u16),
    /// `+QIND: "FOTA","HTTPSTART"`: the HTTP(S) download begins.
    HttpStart,
    /// `+QIND: "FOTA","HTTPEND",<http_err>`: the HTTP(S) download ended; 0 is
    /// success, otherwise a code of SPEC §4 (701–730).
    HttpEnd(u16),
    /// `+QIND: "FOTA","DOWNLOADING",<k>`: the k-th of `download_URC_max`
    /// progress lines (`ec200` only, seed `001_2f648264def3e0b1.txt`
    /// §3.2.1), k = 1..=max.
    Downloading(u8),
    /// `+QIND: "FOTA","FILESTART"`: `ec200` waits for the package over the
    /// AT port (`FILE:<length>`, seed 001 §3.2.1.3).
    FileStart,
    /// `+QIND: "FOTA","FILEEND",<file_err>`: the package over the AT port
    /// is in (0) or stopped short (500, seed 001 §4).
    FileEnd(u16),
    /// `+QIND: "FOTA","START"`: an upgrade attempt begins.
    Start,
    /// `+QIND: "FOTA","UPDATING",<p>`: upgrade progress, 1..=100 (or the
    /// k-th of `update_URC_max` lines on `ec200`).
    Updating(u8),
    /// `+QIND: "FOTA","END",<err>`: an upgrade attempt ended; 0 is success,
    /// otherwise an `<err>` code of SPEC §4.
    End(u16),
}

impl Urc {
    /// The URC word and its number, if any (`("FTPEND", Some(601))`).
    pub fn parts(&self) -> (&'static str, Option<u16>) {
        match *self {
            Urc::FtpStart => ("FTPSTART", None),
            Urc::FtpEnd(n) => ("FTPEND", Some(n)),
            Urc::HttpStart => ("HTTPSTART", None),
            Urc::HttpEnd(n) => ("HTTPEND", Some(n)),
            Urc::Downloading(k) => ("DOWNLOADING", Some(u16::from(k))),
            Urc::FileStart => ("FILESTART", None),
            Urc::FileEnd(n) => ("FILEEND", Some(n)),
            Urc::Start => ("START", None),
            Urc::Updating(p) => ("UPDATING", Some(u16::from(p))),
            Urc::End(n) => ("END", Some(n)),
        }
    }
}

impl fmt::Display for Urc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (word, number) = self.parts();
        write!(f, "+QIND: \"FOTA\",\"{word}\"")?;
        match number {
            Some(n) => write!(f, ",{n}"),
            None => Ok(()),
        }
    }
}

/// Why the module went down (see [`Event::PowerOff`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PowerOff {
    /// Reboot into recovery mode after `FTPEND/HTTPEND,0` (SPEC §3).
    RebootToUpgrade,
    /// Reboot after a failed attempt, to try again (seed 000 §4.1).
    RebootToRetry,
    /// Reboot into normal mode: after `END,0` with the new firmware, or
    /// after the last failed attempt with the old one.
    RebootToNormal,
    /// Power lost during `UPDATING` (fault `power-cut`): the module boots
    /// into recovery mode to go on, or, on `ec200`, never boots again
    /// (no [`Event::Ready`] follows; see `Module::repair`).
    PowerCut,
    /// Power lost during the download (fault `download-power-cut`): the
    /// module boots its old firmware in normal mode.
    DownloadPowerCut,
}

/// One thing the simulated module does, in order, as seen from its AT port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The command's final result code (`OK` / `ERROR`); always the first
    /// event of a run.
    Response(AtResult),
    /// An unsolicited result code.
    Urc(Urc),
    /// The module goes down; nothing is printed, the USB AT port disappears
    /// until [`Event::Ready`] (seed 004 §3.1: "the MCU should close and
    /// reopen it").
    PowerOff(PowerOff),
    /// The module has booted and prints `RDY` (SPEC §8).
    Ready,
}

impl Event {
    /// The line this event prints on the AT port, without `\r\n` framing;
    /// `None` for [`Event::PowerOff`].
    pub fn line(&self) -> Option<String> {
        match self {
            Event::Response(r) => Some(r.to_string()),
            Event::Urc(u) => Some(u.to_string()),
            Event::PowerOff(_) => None,
            Event::Ready => Some("RDY".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urcs_are_spelled_as_spec_section_3() {
        assert_eq!(Urc::FtpStart.to_string(), r#"+QIND: "FOTA","FTPSTART""#);
        assert_eq!(Urc::FtpEnd(0).to_string(), r#"+QIND: "FOTA","FTPEND",0"#);
        assert_eq!(Urc::HttpStart.to_string(), r#"+QIND: "FOTA","HTTPSTART""#);
        assert_eq!(
            Urc::HttpEnd(701).to_string(),
            r#"+QIND: "FOTA","HTTPEND",701"#
        );
        assert_eq!(
            Urc::Downloading(50).to_string(),
            r#"+QIND: "FOTA","DOWNLOADING",50"#
        );
        assert_eq!(Urc::Start.to_string(), r#"+QIND: "FOTA","START""#);
        assert_eq!(
            Urc::Updating(1).to_string(),
            r#"+QIND: "FOTA","UPDATING",1"#
        );
        assert_eq!(Urc::End(504).to_string(), r#"+QIND: "FOTA","END",504"#);
        assert_eq!(Urc::FileStart.to_string(), r#"+QIND: "FOTA","FILESTART""#);
        assert_eq!(
            Urc::FileEnd(500).to_string(),
            r#"+QIND: "FOTA","FILEEND",500"#
        );
        assert_eq!(AtResult::ProtocolMode.to_string(), "010003");
    }

    #[test]
    fn urcs_match_quectel_end_regex_shape() {
        // Quectel's harness matches `\+QIND:\s"FOTA","(FTP|HTTP)END",(\d+)`:
        // exactly one space after the colon, no spaces after commas.
        let line = Urc::HttpEnd(0).to_string();
        assert!(line.starts_with("+QIND: \"FOTA\",\"HTTPEND\","));
        assert!(!line.contains(", "));
    }

    #[test]
    fn events_print_lines_except_power_off() {
        assert_eq!(Event::Response(AtResult::Ok).line().as_deref(), Some("OK"));
        assert_eq!(
            Event::Response(AtResult::Error).line().as_deref(),
            Some("ERROR")
        );
        assert_eq!(Event::Ready.line().as_deref(), Some("RDY"));
        assert_eq!(Event::PowerOff(PowerOff::PowerCut).line(), None);
    }
}

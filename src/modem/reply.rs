//! How answers look on the wire: the per-port result-code settings of
//! ITU-T V.250 (`E`, `V`, `Q`) and 3GPP TS 27.007 `+CMEE`, the
//! `+CME ERROR` codes the modem uses, and the framing of information text,
//! final result codes and unsolicited lines under those settings.
//!
//! | setting | V1 (default) | V0 |
//! |---|---|---|
//! | information text | `\r\n<line>\r\n` per command | `<line>\r\n` |
//! | final result | `\r\nOK\r\n`, `\r\nERROR\r\n`, `\r\n+CME ERROR: <err>\r\n` | `0\r`, `4\r`, `+CME ERROR: <err>\r` |
//! | unsolicited line | `\r\n<line>\r\n` | `<line>\r\n` |
//!
//! `Q1` suppresses the final result code (information text still comes).
//! `+CMEE=0` answers every failure `ERROR`; `1` `+CME ERROR: <n>`; `2`
//! `+CME ERROR: <text>` (27.007 §9.1, §9.2.1).

/// Result-code and port settings of one AT port (V.250 §6.2, 27.007
/// §9.1). `AT&W` saves them as the profile a boot and `ATZ` load;
/// `AT&F` restores [`PortSettings::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSettings {
    /// `E`: echo the command line.
    pub echo: bool,
    /// `V`: verbose (`OK`) rather than numeric (`0`) result codes.
    pub verbose: bool,
    /// `Q`: suppress final result codes.
    pub quiet: bool,
    /// `+CMEE`: 0 `ERROR`, 1 numeric, 2 verbose `+CME ERROR`.
    pub cmee: u8,
    /// `X`: call progress result codes (stored only; no calls here).
    pub x: u8,
    /// `&C`: DCD behaviour (stored only).
    pub dcd: u8,
    /// `&D`: DTR behaviour (stored only).
    pub dtr: u8,
    /// `+IFC`: `<dce_by_dte>,<dte_by_dce>` flow control, 0 none, 2
    /// RTS/CTS (stored only: a PTY has no handshake lines).
    pub ifc: (u8, u8),
}

impl Default for PortSettings {
    /// Factory defaults: `E1 V1 Q0 X4 &C1 &D2`, `+CMEE=0`, `+IFC=0,0`.
    fn default() -> Self {
        PortSettings {
            echo: true,
            verbose: true,
            quiet: false,
            cmee: 0,
            x: 4,
            dcd: 1,
            dtr: 2,
            ifc: (0, 0),
        }
    }
}

/// Why a command failed, as a 3GPP TS 27.007 §9.2.1 `<err>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CmeError {
    /// 3: not allowed now (a FOTA run already in progress, a file-less
    /// family command).
    #[error("operation not allowed")]
    NotAllowed,
    /// 4: no such command, or not in this form.
    #[error("operation not supported")]
    NotSupported,
    /// 30: no network (radio off, fault `network-down`).
    #[error("no network service")]
    NoNetwork,
    /// 50: arguments that do not parse or are out of range.
    #[error("incorrect parameters")]
    IncorrectParameters,
    /// 100: a line that is not a command at all (garbage, over-long).
    #[error("unknown")]
    Unknown,
    /// A file command's error: Quectel's file error number
    /// ([`FileError::code`](crate::sim::FileError::code), 400–421, SPEC §9).
    #[error("{}", file_error_text(*.0))]
    File(u16),
}

/// The text of a file error number (`AT+CMEE=2`), from Quectel's common
/// file error table (SPEC §9).
fn file_error_text(code: u16) -> &'static str {
    match code {
        400 => "invalid input value",
        402 => "read zero byte",
        403 => "drive full",
        405 => "file not found",
        406 => "invalid file name",
        407 => "file already existed",
        409 => "fail to write the file",
        421 => "time out",
        _ => "file error",
    }
}

impl CmeError {
    /// The numeric `<err>`.
    pub fn code(self) -> u16 {
        match self {
            CmeError::NotAllowed => 3,
            CmeError::NotSupported => 4,
            CmeError::NoNetwork => 30,
            CmeError::IncorrectParameters => 50,
            CmeError::Unknown => 100,
            CmeError::File(code) => code,
        }
    }
}

/// Information text, one block per command that printed any, rendered
/// under `port`'s settings.
pub fn info(blocks: &[Vec<String>], port: &PortSettings) -> Vec<u8> {
    let mut out = String::new();
    for block in blocks.iter().filter(|b| !b.is_empty()) {
        if port.verbose {
            out.push_str("\r\n");
            out.push_str(&block.join("\r\n"));
            out.push_str("\r\n");
        } else {
            for line in block {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
    }
    out.into_bytes()
}

/// The final result code under `port`'s settings (empty under `Q1`).
pub fn result(outcome: Result<(), CmeError>, port: &PortSettings) -> Vec<u8> {
    if port.quiet {
        return Vec::new();
    }
    let (verbose, numeric) = match outcome {
        Ok(()) => ("OK".to_string(), "0".to_string()),
        Err(_) if port.cmee == 0 => ("ERROR".to_string(), "4".to_string()),
        Err(e) => {
            let text = if port.cmee == 1 {
                format!("+CME ERROR: {}", e.code())
            } else {
                format!("+CME ERROR: {e}")
            };
            (text.clone(), text)
        }
    };
    if port.verbose {
        format!("\r\n{verbose}\r\n").into_bytes()
    } else {
        format!("{numeric}\r").into_bytes()
    }
}

/// `CONNECT` (V.250 result code 1): a data phase begins.
pub fn connect(port: &PortSettings) -> Vec<u8> {
    match (port.quiet, port.verbose) {
        (true, _) => Vec::new(),
        (false, true) => b"\r\nCONNECT\r\n".to_vec(),
        (false, false) => b"1\r".to_vec(),
    }
}

/// Unsolicited lines (URCs, `RDY`) under `port`'s settings.
pub fn unsolicited(lines: &[String], port: &PortSettings) -> Vec<u8> {
    let blocks: Vec<Vec<String>> = lines.iter().map(|l| vec![l.clone()]).collect();
    info(&blocks, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn v1_and_v0_framing() {
        let v1 = PortSettings::default();
        let v0 = PortSettings {
            verbose: false,
            ..v1
        };
        let blocks = vec![
            vec!["+CSQ: 24,99".to_string()],
            vec![],
            vec!["a".into(), "b".into()],
        ];
        assert_eq!(
            text(info(&blocks, &v1)),
            "\r\n+CSQ: 24,99\r\n\r\na\r\nb\r\n"
        );
        assert_eq!(text(info(&blocks, &v0)), "+CSQ: 24,99\r\na\r\nb\r\n");
        assert_eq!(text(result(Ok(()), &v1)), "\r\nOK\r\n");
        assert_eq!(text(result(Ok(()), &v0)), "0\r");
        assert_eq!(text(result(Err(CmeError::Unknown), &v0)), "4\r");
        assert_eq!(text(unsolicited(&["RDY".into()], &v0)), "RDY\r\n");
    }

    #[test]
    fn cmee_forms_and_quiet() {
        let mut port = PortSettings::default();
        let err = Err(CmeError::IncorrectParameters);
        assert_eq!(text(result(err, &port)), "\r\nERROR\r\n");
        port.cmee = 1;
        assert_eq!(text(result(err, &port)), "\r\n+CME ERROR: 50\r\n");
        port.cmee = 2;
        assert_eq!(
            text(result(err, &port)),
            "\r\n+CME ERROR: incorrect parameters\r\n"
        );
        port.verbose = false;
        assert_eq!(
            text(result(err, &port)),
            "+CME ERROR: incorrect parameters\r"
        );
        let file = Err(CmeError::File(407));
        assert_eq!(
            text(result(file, &port)),
            "+CME ERROR: file already existed\r"
        );
        port.cmee = 1;
        assert_eq!(text(result(file, &port)), "+CME ERROR: 407\r");
        assert_eq!(text(connect(&port)), "1\r");
        port.quiet = true;
        assert_eq!(text(connect(&port)), "");
        assert_eq!(text(result(err, &port)), "");
        assert_eq!(text(result(Ok(()), &port)), "");
    }
}

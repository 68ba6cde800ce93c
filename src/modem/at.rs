//! AT command line framing, as a module's command parser sees the port.
//!
//! Bytes arrive in any chunking. A command line ends with `\r` (S3); a lone
//! `\n` is tolerated as an end too, and the `\n` of a `\r\n` pair is
//! dropped. Lines are capped ([`MAX_LINE`]): the rest of an over-long line
//! is discarded and the line answered `ERROR`. NUL and other control bytes
//! inside a line are dropped, as a module's parser ignores them. Echo
//! (`ATE1`) returns the bytes that were accepted into the line as they
//! arrive, and the terminator as `\r` (a lone `\n` echoes as `\r`).
//! `A/` at the start of a line (any case) repeats the last command line
//! at once, without a terminator (V.250 §5.2.4). Bytes above 0x7f before
//! the first character of a line are dropped unechoed: no command starts
//! with one, and a host that pads its last `AT+QFUPL` block (fwupd pads
//! each block to 2,048 bytes with `0xFF`) leaves them after the data
//! phase.

/// Longest command line kept, in bytes (the longest `AT+QFOTADL` is
/// `AT+QFOTADL="` + a 512-byte URL + three optional numbers).
pub const MAX_LINE: usize = 1024;

/// What a chunk of input completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A complete line, terminator removed (may be empty or garbage).
    Line(String),
    /// A line longer than [`MAX_LINE`] ended; answer `ERROR`.
    Overflow,
    /// `A/`: run the last command line again.
    Repeat,
}

/// Incremental line splitter.
#[derive(Debug, Default)]
pub struct LineFramer {
    line: Vec<u8>,
    overflow: bool,
    last_was_cr: bool,
}

impl LineFramer {
    /// A framer with an empty line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `bytes`; returns the lines they complete and the bytes to
    /// echo (when echo is on).
    pub fn push(&mut self, bytes: &[u8]) -> (Vec<Input>, Vec<u8>) {
        let mut done = Vec::new();
        let mut echo = Vec::new();
        for &b in bytes {
            let after_cr = std::mem::replace(&mut self.last_was_cr, b == b'\r');
            match b {
                b'\n' if after_cr => {}
                b'\r' | b'\n' => {
                    echo.push(b'\r');
                    done.push(self.finish());
                }
                // Backspace edits the line, as on a real port.
                0x08 | 0x7f => {
                    if self.line.pop().is_some() {
                        echo.push(b);
                    }
                }
                b if b < 0x20 => {}
                b if b > 0x7f && self.line.is_empty() && !self.overflow => {}
                b'/' if self.line.eq_ignore_ascii_case(b"A") && !self.overflow => {
                    self.line.clear();
                    echo.push(b);
                    done.push(Input::Repeat);
                }
                b => {
                    if self.line.len() < MAX_LINE {
                        self.line.push(b);
                        echo.push(b);
                    } else {
                        self.overflow = true;
                    }
                }
            }
        }
        (done, echo)
    }

    fn finish(&mut self) -> Input {
        let line = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.overflow) {
            Input::Overflow
        } else {
            Input::Line(String::from_utf8_lossy(&line).into_owned())
        }
    }
}

/// Frames a response or URC line as the module sends it: `\r\n<line>\r\n`.
pub fn frame(line: &str) -> String {
    format!("\r\n{line}\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(f: &mut LineFramer, bytes: &[u8]) -> Vec<Input> {
        f.push(bytes).0
    }

    #[test]
    fn cr_ends_a_line_and_crlf_counts_once() {
        let mut f = LineFramer::new();
        assert_eq!(lines(&mut f, b"AT"), vec![]);
        assert_eq!(lines(&mut f, b"\r"), vec![Input::Line("AT".into())]);
        assert_eq!(
            lines(&mut f, b"ATI\r\nAT+CSQ\n"),
            vec![Input::Line("ATI".into()), Input::Line("AT+CSQ".into())]
        );
        assert_eq!(
            lines(&mut f, b"\r\r"),
            vec![Input::Line(String::new()), Input::Line(String::new())]
        );
    }

    #[test]
    fn echo_returns_what_was_accepted() {
        let mut f = LineFramer::new();
        let (_, echo) = f.push(b"AT\r");
        assert_eq!(echo, b"AT\r");
        let (_, echo) = f.push(b"A\x00T\x01\r\n");
        assert_eq!(echo, b"AT\r");
    }

    #[test]
    fn junk_nul_and_overlong_lines() {
        let mut f = LineFramer::new();
        assert_eq!(
            lines(&mut f, b"A\x00T\xff\r"),
            vec![Input::Line("AT\u{fffd}".into())]
        );
        let long = vec![b'A'; 64 * 1024];
        assert_eq!(lines(&mut f, &long), vec![]);
        assert_eq!(lines(&mut f, b"\r"), vec![Input::Overflow]);
        assert_eq!(lines(&mut f, b"AT\r"), vec![Input::Line("AT".into())]);
        assert_eq!(lines(&mut f, b"ATX\x08\r"), vec![Input::Line("AT".into())]);
        // Upload padding before a line is not part of it, nor echoed.
        let (done, echo) = f.push(b"\xff\xff\xffAT\r");
        assert_eq!(
            (done, echo),
            (vec![Input::Line("AT".into())], b"AT\r".to_vec())
        );
    }

    #[test]
    fn a_slash_repeats_at_once() {
        let mut f = LineFramer::new();
        let (done, echo) = f.push(b"A/");
        assert_eq!((done, echo), (vec![Input::Repeat], b"A/".to_vec()));
        assert_eq!(
            lines(&mut f, b"a/AT\r"),
            vec![Input::Repeat, Input::Line("AT".into())]
        );
        // Only at the start of a line.
        assert_eq!(lines(&mut f, b"ATA/\r"), vec![Input::Line("ATA/".into())]);
    }

    #[test]
    fn framing() {
        assert_eq!(frame("OK"), "\r\nOK\r\n");
    }
}

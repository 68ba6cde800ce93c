//! ITU-T V.250 command-line syntax (§5.2–§5.4): what follows `AT` split
//! into the commands it holds, before any of them is looked up.
//!
//! A command line is `AT`, then any number of commands:
//!
//! - *basic* commands, one letter or `&` and a letter, with an optional
//!   decimal value (`E0`, `V1`, `Q0`, `Z`, `I`, `&F`, `&W`, `&C1`); they may
//!   follow each other directly (`ATE0V1`, `ATE0 V1`, `ATE0Q0V1`);
//! - *extended* commands, `+NAME` with a form: nothing (action), `?`
//!   (read), `=?` (test) or `=<arguments>` (set); another command after an
//!   extended one needs a `;` between them (`AT+CSQ;+CREG?`, `AT+CMEE=1;E0`).
//!
//! Spaces and tabs outside quoted strings are ignored (V.250 §5.2.1),
//! letters are case-insensitive outside quoted strings, and a `;` at the
//! end of the line is allowed. S-parameters (`S0=0`) and dialling (`D`)
//! are not simulated: they are a [`SyntaxError`], like anything else that
//! does not fit.

/// Longest decimal value of a basic command, in digits.
const MAX_VALUE_DIGITS: usize = 5;

/// Why a command line does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// The line does not start with `AT` (any case).
    #[error("not an AT command line")]
    NotAt,
    /// Something that is not a command where a command must start, at this
    /// byte offset of the line after `AT`.
    #[error("unexpected {found:?} at offset {at}")]
    Unexpected {
        /// Offset in the line after `AT`, spaces removed.
        at: usize,
        /// The character found.
        found: char,
    },
    /// A basic command value longer than five digits.
    #[error("value of {0} is too long")]
    ValueTooLong(String),
    /// `+` without a command name.
    #[error("extended command without a name")]
    NoName,
}

/// The form of an extended command (`AT+NAME<form>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Form {
    /// `+NAME`: execute.
    Exec,
    /// `+NAME?`: read the current value.
    Read,
    /// `+NAME=?`: list the supported values.
    Test,
    /// `+NAME=<arguments>`, the arguments as typed (spaces outside quotes
    /// removed).
    Set(String),
}

/// One command of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Element {
    /// A basic command: its name upper case (`E`, `&W`) and its value
    /// (`None` when no digits follow; V.250 reads that as 0).
    Basic {
        /// `E`, `V`, `&F`, …
        name: String,
        /// The decimal value.
        value: Option<u32>,
    },
    /// An extended command: `+` and its name, upper case (`+CSQ`).
    Extended {
        /// `+CSQ`, `+QFOTADL`, …
        name: String,
        /// How it was written.
        form: Form,
    },
}

/// Splits a command line (terminator removed) into its commands.
/// `Ok(None)` for an empty or blank line (no answer); `Ok(Some(vec![]))`
/// for `AT` alone.
///
/// # Errors
/// [`SyntaxError`]: the whole line is refused and none of it runs.
pub fn split(line: &str) -> Result<Option<Vec<Element>>, SyntaxError> {
    let line = line.trim_matches([' ', '\t']);
    if line.is_empty() {
        return Ok(None);
    }
    let body = match line.get(..2) {
        Some(at) if at.eq_ignore_ascii_case("AT") => &line[2..],
        _ => return Err(SyntaxError::NotAt),
    };
    let chars: Vec<char> = without_blanks(body).chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ';' => i += 1,
            '+' => {
                let (element, next) = extended(&chars, i)?;
                out.push(element);
                i = next;
                match chars.get(i) {
                    None | Some(';') => {}
                    Some(&found) => return Err(SyntaxError::Unexpected { at: i, found }),
                }
            }
            '&' => match chars.get(i + 1) {
                Some(l) if l.is_ascii_alphabetic() => {
                    let name = format!("&{}", l.to_ascii_uppercase());
                    let (value, next) = digits(&chars, i + 2, &name)?;
                    out.push(Element::Basic { name, value });
                    i = next;
                }
                _ => return Err(SyntaxError::Unexpected { at: i, found: c }),
            },
            // S-parameters and dialling take the rest of the line in their
            // own syntax; neither is simulated.
            c if c.is_ascii_alphabetic() && !matches!(c.to_ascii_uppercase(), 'S' | 'D') => {
                let name = c.to_ascii_uppercase().to_string();
                let (value, next) = digits(&chars, i + 1, &name)?;
                out.push(Element::Basic { name, value });
                i = next;
            }
            found => return Err(SyntaxError::Unexpected { at: i, found }),
        }
    }
    Ok(Some(out))
}

/// The line with spaces and tabs outside double quotes removed.
fn without_blanks(s: &str) -> String {
    let mut quoted = false;
    s.chars()
        .filter(|&c| {
            if c == '"' {
                quoted = !quoted;
            }
            quoted || !matches!(c, ' ' | '\t')
        })
        .collect()
}

/// The decimal value starting at `i`, if any, and the index after it.
fn digits(chars: &[char], i: usize, name: &str) -> Result<(Option<u32>, usize), SyntaxError> {
    let end = chars[i.min(chars.len())..]
        .iter()
        .position(|c| !c.is_ascii_digit())
        .map_or(chars.len(), |n| i + n);
    if end == i {
        return Ok((None, i));
    }
    if end - i > MAX_VALUE_DIGITS {
        return Err(SyntaxError::ValueTooLong(name.to_string()));
    }
    let text: String = chars[i..end].iter().collect();
    let value = text
        .parse()
        .map_err(|_| SyntaxError::ValueTooLong(name.to_string()))?;
    Ok((Some(value), end))
}

/// Whether `c` may appear in an extended command name (V.250 §5.4.1).
fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '!' | '%' | '-' | '.' | '/' | ':' | '_')
}

/// The extended command starting at `chars[start] == '+'` and the index
/// after it.
fn extended(chars: &[char], start: usize) -> Result<(Element, usize), SyntaxError> {
    let mut i = start + 1;
    while chars.get(i).is_some_and(|&c| name_char(c)) {
        i += 1;
    }
    if i == start + 1 {
        return Err(SyntaxError::NoName);
    }
    let name: String = chars[start..i]
        .iter()
        .map(char::to_ascii_uppercase)
        .collect();
    let (form, next) = match (chars.get(i), chars.get(i + 1)) {
        (Some('?'), _) => (Form::Read, i + 1),
        (Some('='), Some('?')) => (Form::Test, i + 2),
        (Some('='), _) => {
            // The arguments run to the next `;` outside quotes.
            let mut quoted = false;
            let mut end = i + 1;
            while let Some(&c) = chars.get(end) {
                if c == '"' {
                    quoted = !quoted;
                } else if c == ';' && !quoted {
                    break;
                }
                end += 1;
            }
            (Form::Set(chars[i + 1..end].iter().collect()), end)
        }
        _ => (Form::Exec, i),
    };
    Ok((Element::Extended { name, form }, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(name: &str, value: Option<u32>) -> Element {
        Element::Basic {
            name: name.into(),
            value,
        }
    }

    fn ext(name: &str, form: Form) -> Element {
        Element::Extended {
            name: name.into(),
            form,
        }
    }

    #[test]
    fn compound_basic_commands() {
        let want = vec![basic("E", Some(0)), basic("V", Some(1))];
        for line in ["ATE0V1", "ATE0 V1", "ate0v1", "AT E 0 V 1", "ATE0;V1"] {
            assert_eq!(split(line).unwrap(), Some(want.clone()), "{line}");
        }
        assert_eq!(
            split("ATQ0&F&W Z").unwrap(),
            Some(vec![
                basic("Q", Some(0)),
                basic("&F", None),
                basic("&W", None),
                basic("Z", None),
            ])
        );
        assert_eq!(split("ATI").unwrap(), Some(vec![basic("I", None)]));
        assert_eq!(split("AT").unwrap(), Some(vec![]));
        assert_eq!(split(" \t").unwrap(), None);
    }

    #[test]
    fn semicolon_chains_and_forms() {
        assert_eq!(
            split("AT+CSQ;+CREG?").unwrap(),
            Some(vec![ext("+CSQ", Form::Exec), ext("+CREG", Form::Read)])
        );
        assert_eq!(
            split("AT+CMEE=1;E0;+CGMI=?;").unwrap(),
            Some(vec![
                ext("+CMEE", Form::Set("1".into())),
                basic("E", Some(0)),
                ext("+CGMI", Form::Test),
            ])
        );
        // `;` and blanks inside quotes belong to the argument.
        assert_eq!(
            split(r#"AT+QICSGP=1, 1,"a; b";+CSQ"#).unwrap(),
            Some(vec![
                ext("+QICSGP", Form::Set(r#"1,1,"a; b""#.into())),
                ext("+CSQ", Form::Exec),
            ])
        );
    }

    #[test]
    fn what_does_not_fit_is_an_error() {
        for line in [
            "hello",
            "A",
            "ATS0=0",
            "ATD123",
            "AT+",
            "AT+CSQE0?x",
            "AT+CREG??",
            "AT+CSQ+CREG?",
            "AT&",
            "AT&1",
            "ATE123456",
            "AT#X",
            "ATé",
            "AT\u{fffd}",
        ] {
            assert!(split(line).is_err(), "{line:?}");
        }
    }
}

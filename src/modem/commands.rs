//! The AT commands the virtual modem understands: parsing a command line
//! ([`parse`]) and answering it ([`execute`]) from the module's identity and
//! settings, as a Quectel module answers on its AT port (SPEC §8).
//!
//! Everything here is pure: no I/O, no clock. The session
//! (`session.rs`) frames the answers, writes them, and carries
//! out the [`Outcome`]s that are more than an answer (echo, reboot,
//! `AT+QFOTADL`).
//!
//! # Syntax
//!
//! One command per line. `AT` is case-insensitive and so is the command
//! name; arguments keep their case. Leading and trailing blanks are
//! ignored, an empty line is ignored (no answer). Anything else that is not
//! a command of the table below, in one of its forms, is [`ParseError`] and
//! answered `ERROR`.
//!
//! | command | answer |
//! |---|---|
//! | `AT` | `OK` |
//! | `ATE0`, `ATE`, `ATE1` | `OK`; echo off / on (on after every boot) |
//! | `ATI`, `ATI0` | `Quectel`, the model, `Revision: <version>`, `OK` |
//! | `AT+GMR`, `AT+QGMR` | `<version>`, `OK` |
//! | `AT+CGMI` / `AT+CGMM` | `Quectel` / the model, `OK` |
//! | `AT+GSN`, `AT+CGSN` | the IMEI, `OK` |
//! | `AT+CPIN?` | `+CPIN: READY`, `OK` |
//! | `AT+CREG?`, `AT+CGREG?`, `AT+CEREG?` | `+CREG: 0,1` (`0,2`, searching, under fault `network-down`), `OK` |
//! | `AT+CSQ` | `+CSQ: 24,99` (`99,99` under `network-down`), `OK` |
//! | `AT+COPS?` | `+COPS: 0,0,"qfota-sim",7` (`+COPS: 0` under `network-down`), `OK` |
//! | `AT+CGACT?` | `+CGACT: <cid>,<0/1>` per defined context, `OK` |
//! | `AT+QIACT?` | `+QIACT: <cid>,1,<type>,"<ip>"` per active context, `OK` |
//! | `AT+QIACT=<cid>` | activates the context, `OK` (`ERROR` under `network-down`) |
//! | `AT+QICSGP=<cid>[,<type>,"<apn>"[,"<user>","<pw>"[,<auth>]]]` | stores the context, `OK`; with only `<cid>`: `+QICSGP: <type>,"<apn>","<user>","<pw>",<auth>`, `OK` |
//! | `AT+QFOTA="fota/cid"[,<cid>]` | `ec200` only (seed `001_2f648264def3e0b1.txt` §3.2.1.1 example): sets / shows the PDP context FOTA uses; other families `ERROR` |
//! | `AT+CFUN?` | `+CFUN: 1`, `OK` |
//! | `AT+CFUN=1[,0]` / `AT+CFUN=1,1` | `OK` / `OK` then reboot; other levels `ERROR` (only full functionality is simulated) |
//! | `AT+QFOTADL=?` | the family's test answer ([`Module::test_command`]) |
//! | `AT+QFOTADL=<args>` | handed to the simulator ([`Module::fotadl`]) |

use std::collections::{BTreeMap, BTreeSet};

use crate::modem::at::frame;
use crate::sim::{AtResult, Fault, Module};

/// Manufacturer, as `AT+CGMI` and `ATI` print it.
pub const MANUFACTURER: &str = "Quectel";
/// Operator name `AT+COPS?` shows while registered.
pub const OPERATOR: &str = "qfota-sim";
/// What `ATI`/`AT+GMR` show when the module's version is unset or unknown
/// (a package whose name states no version, SPEC §5).
pub const UNKNOWN_REVISION: &str = "unknown";
/// Highest PDP context id (`AT+QICSGP`, `AT+QIACT`, `fota/cid`): 16.
pub const MAX_CID: u8 = 16;
/// Longest APN, user name or password accepted by `AT+QICSGP`, in bytes.
pub const MAX_CONTEXT_TEXT: usize = 100;

/// Why a command line is answered `ERROR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line does not start with `AT` (any case).
    #[error("not an AT command")]
    NotAt,
    /// No such command, or not in this form (`?`, `=?`, `=…`).
    #[error("unknown command or form {0:?}")]
    Unknown(String),
    /// The command exists but its arguments do not parse or are out of
    /// range.
    #[error("bad arguments for {command}: {why}")]
    BadArguments {
        /// The command name, upper case (`+QICSGP`).
        command: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// Which registration status command (the answer's prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// `AT+CREG?` (circuit switched).
    Creg,
    /// `AT+CGREG?` (GPRS).
    Cgreg,
    /// `AT+CEREG?` (EPS / LTE).
    Cereg,
}

impl Registration {
    fn prefix(self) -> &'static str {
        match self {
            Registration::Creg => "+CREG",
            Registration::Cgreg => "+CGREG",
            Registration::Cereg => "+CEREG",
        }
    }
}

/// A PDP context as `AT+QICSGP` sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdpContext {
    /// `<context_type>`: 1 IPv4, 2 IPv6, 3 IPv4v6.
    pub context_type: u8,
    /// `<APN>`.
    pub apn: String,
    /// `<username>`.
    pub user: String,
    /// `<password>`.
    pub password: String,
    /// `<authentication>`: 0 none, 1 PAP, 2 CHAP, 3 PAP or CHAP.
    pub auth: u8,
}

impl Default for PdpContext {
    fn default() -> Self {
        PdpContext {
            context_type: 1,
            apn: String::new(),
            user: String::new(),
            password: String::new(),
            auth: 0,
        }
    }
}

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `AT`.
    At,
    /// `ATE0` / `ATE` (false), `ATE1` (true).
    Echo(bool),
    /// `ATI`.
    Info,
    /// `AT+GMR` or `AT+QGMR`.
    Revision,
    /// `AT+CGMI`.
    Manufacturer,
    /// `AT+CGMM`.
    Model,
    /// `AT+GSN` or `AT+CGSN`.
    Imei,
    /// `AT+CPIN?`.
    PinStatus,
    /// `AT+CREG?`, `AT+CGREG?`, `AT+CEREG?`.
    Registration(Registration),
    /// `AT+CSQ`.
    SignalQuality,
    /// `AT+COPS?`.
    Operator,
    /// `AT+CGACT?`.
    ContextStates,
    /// `AT+QIACT?`.
    ActiveContexts,
    /// `AT+QIACT=<cid>`.
    Activate(u8),
    /// `AT+QICSGP=<cid>`: show the context.
    ShowContext(u8),
    /// `AT+QICSGP=<cid>,<type>,"<apn>"[,…]`: set the context.
    SetContext(u8, PdpContext),
    /// `AT+QFOTA="fota/cid"`: show the FOTA context id.
    ShowFotaCid,
    /// `AT+QFOTA="fota/cid",<cid>`.
    SetFotaCid(u8),
    /// `AT+CFUN?`.
    FunctionalityRead,
    /// `AT+CFUN=1[,<reset>]`: `true` reboots.
    Functionality {
        /// `<rst>` = 1: reset the module.
        reset: bool,
    },
    /// `AT+QFOTADL=?`.
    FotadlTest,
    /// `AT+QFOTADL=<args>`, the text after `=` as typed.
    Fotadl(String),
}

/// The form of an extended command (`AT+NAME<form>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form<'a> {
    /// `AT+NAME`.
    Exec,
    /// `AT+NAME?`.
    Read,
    /// `AT+NAME=?`.
    Test,
    /// `AT+NAME=<args>`.
    Set(&'a str),
}

/// Parses one command line (terminator already removed). `Ok(None)` for an
/// empty line, which gets no answer.
///
/// # Errors
/// [`ParseError`]: the line is answered `ERROR`.
pub fn parse(line: &str) -> Result<Option<Command>, ParseError> {
    let line = line.trim_matches([' ', '\t']);
    if line.is_empty() {
        return Ok(None);
    }
    let rest = match line.get(..2) {
        Some(at) if at.eq_ignore_ascii_case("AT") => &line[2..],
        _ => return Err(ParseError::NotAt),
    };
    let unknown = || ParseError::Unknown(line.to_string());
    let Some(extended) = rest.strip_prefix('+') else {
        return match rest.to_ascii_uppercase().as_str() {
            "" => Ok(Some(Command::At)),
            "E" | "E0" => Ok(Some(Command::Echo(false))),
            "E1" => Ok(Some(Command::Echo(true))),
            "I" | "I0" => Ok(Some(Command::Info)),
            _ => Err(unknown()),
        };
    };
    let name_len = extended
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(extended.len());
    let (name, suffix) = extended.split_at(name_len);
    let form = match suffix {
        "" => Form::Exec,
        "?" => Form::Read,
        "=?" => Form::Test,
        s => match s.strip_prefix('=') {
            Some(args) => Form::Set(args),
            None => return Err(unknown()),
        },
    };
    let command = match (name.to_ascii_uppercase().as_str(), form) {
        ("GMR" | "QGMR", Form::Exec) => Command::Revision,
        ("CGMI", Form::Exec) => Command::Manufacturer,
        ("CGMM", Form::Exec) => Command::Model,
        ("GSN" | "CGSN", Form::Exec) => Command::Imei,
        ("CPIN", Form::Read) => Command::PinStatus,
        ("CREG", Form::Read) => Command::Registration(Registration::Creg),
        ("CGREG", Form::Read) => Command::Registration(Registration::Cgreg),
        ("CEREG", Form::Read) => Command::Registration(Registration::Cereg),
        ("CSQ", Form::Exec) => Command::SignalQuality,
        ("COPS", Form::Read) => Command::Operator,
        ("CGACT", Form::Read) => Command::ContextStates,
        ("QIACT", Form::Read) => Command::ActiveContexts,
        ("QIACT", Form::Set(args)) => Command::Activate(parse_activate(args)?),
        ("QICSGP", Form::Set(args)) => parse_qicsgp(args)?,
        ("QFOTA", Form::Set(args)) => parse_qfota(args)?,
        ("CFUN", Form::Read) => Command::FunctionalityRead,
        ("CFUN", Form::Set(args)) => parse_cfun(args)?,
        ("QFOTADL", Form::Test) => Command::FotadlTest,
        ("QFOTADL", Form::Set(args)) => Command::Fotadl(args.to_string()),
        _ => return Err(unknown()),
    };
    Ok(Some(command))
}

/// One comma-separated argument.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Arg {
    /// `"text"` (a quote cannot appear inside).
    Text(String),
    /// A decimal number of at most 5 digits.
    Number(u32),
}

/// Splits `a,"b",3` into arguments; blanks around them are ignored.
fn split_args(s: &str) -> Result<Vec<Arg>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        let (arg, after) = if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').ok_or("unterminated string")?;
            (Arg::Text(quoted[..end].to_string()), &quoted[end + 1..])
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            let token = rest[..end].trim_end_matches([' ', '\t']);
            if token.is_empty() || token.len() > 5 || !token.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("bad number {token:?}"));
            }
            let n = token.parse().map_err(|_| format!("bad number {token:?}"))?;
            (Arg::Number(n), &rest[end..])
        };
        out.push(arg);
        let after = after.trim_start_matches([' ', '\t']);
        if after.is_empty() {
            return Ok(out);
        }
        rest = after
            .strip_prefix(',')
            .ok_or_else(|| format!("unexpected {after:?}"))?;
    }
}

fn bad(command: &'static str, why: impl Into<String>) -> ParseError {
    ParseError::BadArguments {
        command,
        why: why.into(),
    }
}

fn number_in(
    arg: Option<&Arg>,
    range: std::ops::RangeInclusive<u32>,
    command: &'static str,
    name: &str,
) -> Result<u8, ParseError> {
    match arg {
        Some(Arg::Number(n)) if range.contains(n) => {
            u8::try_from(*n).map_err(|_| bad(command, format!("<{name}> out of range")))
        }
        _ => Err(bad(
            command,
            format!("<{name}> must be a number in {range:?}"),
        )),
    }
}

fn text(arg: Option<&Arg>, command: &'static str, name: &str) -> Result<String, ParseError> {
    match arg {
        Some(Arg::Text(t)) if t.len() <= MAX_CONTEXT_TEXT => Ok(t.clone()),
        _ => Err(bad(
            command,
            format!("<{name}> must be a quoted string of at most {MAX_CONTEXT_TEXT} bytes"),
        )),
    }
}

fn parse_activate(args: &str) -> Result<u8, ParseError> {
    const C: &str = "+QIACT";
    let args = split_args(args).map_err(|why| bad(C, why))?;
    if args.len() != 1 {
        return Err(bad(C, "expected <contextID>"));
    }
    number_in(args.first(), 1..=u32::from(MAX_CID), C, "contextID")
}

fn parse_qicsgp(args: &str) -> Result<Command, ParseError> {
    const C: &str = "+QICSGP";
    let args = split_args(args).map_err(|why| bad(C, why))?;
    let cid = number_in(args.first(), 1..=u32::from(MAX_CID), C, "contextID")?;
    match args.len() {
        1 => Ok(Command::ShowContext(cid)),
        3 | 5 | 6 => {
            let mut context = PdpContext {
                context_type: number_in(args.get(1), 1..=3, C, "context_type")?,
                apn: text(args.get(2), C, "APN")?,
                ..PdpContext::default()
            };
            if args.len() >= 5 {
                context.user = text(args.get(3), C, "username")?;
                context.password = text(args.get(4), C, "password")?;
            }
            if args.len() == 6 {
                context.auth = number_in(args.get(5), 0..=3, C, "authentication")?;
            }
            Ok(Command::SetContext(cid, context))
        }
        n => Err(bad(C, format!("{n} arguments"))),
    }
}

fn parse_qfota(args: &str) -> Result<Command, ParseError> {
    const C: &str = "+QFOTA";
    let args = split_args(args).map_err(|why| bad(C, why))?;
    match args.first() {
        Some(Arg::Text(name)) if name.eq_ignore_ascii_case("fota/cid") => {}
        _ => return Err(bad(C, "only \"fota/cid\" is supported")),
    }
    match args.len() {
        1 => Ok(Command::ShowFotaCid),
        2 => Ok(Command::SetFotaCid(number_in(
            args.get(1),
            1..=u32::from(MAX_CID),
            C,
            "cid",
        )?)),
        n => Err(bad(C, format!("{n} arguments"))),
    }
}

fn parse_cfun(args: &str) -> Result<Command, ParseError> {
    const C: &str = "+CFUN";
    let args = split_args(args).map_err(|why| bad(C, why))?;
    if args.first() != Some(&Arg::Number(1)) {
        return Err(bad(C, "only <fun> 1 (full functionality) is simulated"));
    }
    match args.len() {
        1 => Ok(Command::Functionality { reset: false }),
        2 => Ok(Command::Functionality {
            reset: number_in(args.get(1), 0..=1, C, "rst")? == 1,
        }),
        n => Err(bad(C, format!("{n} arguments"))),
    }
}

/// Module-wide settings the commands change. They live in the module's
/// non-volatile memory on a real module, so they survive reboots, except
/// which contexts are active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Contexts set with `AT+QICSGP`; context 1 always exists.
    pub contexts: BTreeMap<u8, PdpContext>,
    /// Activated contexts (context 1 is the LTE default bearer, active
    /// after boot).
    pub active: BTreeSet<u8>,
    /// `fota/cid` (`ec200`), default 1.
    pub fota_cid: u8,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            contexts: BTreeMap::from([(1, PdpContext::default())]),
            active: BTreeSet::from([1]),
            fota_cid: 1,
        }
    }
}

impl Settings {
    /// What a boot resets: only the default bearer is active.
    pub fn reset_on_boot(&mut self) {
        self.active = BTreeSet::from([1]);
    }
}

/// Who the module is, for the answers: fixed identity plus the simulated
/// module's live state (version, family, faults).
#[derive(Debug, Clone, Copy)]
pub struct Device<'a> {
    /// The simulated module.
    pub module: &'a Module,
    /// Model name (`AT+CGMM`, `ATI`).
    pub model: &'a str,
    /// 15-digit IMEI (`AT+GSN`).
    pub imei: &'a str,
}

impl Device<'_> {
    /// Whether the module is registered and has a data connection (not
    /// under fault `network-down`).
    pub fn network_up(&self) -> bool {
        !self.module.faults().contains(&Fault::NetworkDown)
    }

    /// The firmware version shown by `ATI`, `AT+GMR`, `AT+QGMR`.
    pub fn revision(&self) -> String {
        self.module
            .version()
            .unwrap_or_else(|| UNKNOWN_REVISION.to_string())
    }
}

/// A final answer: information lines, then the result code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Information text lines, in order, without framing.
    pub info: Vec<String>,
    /// `OK` or `ERROR`.
    pub result: AtResult,
}

impl Reply {
    /// `OK` alone.
    pub fn ok() -> Reply {
        Reply::lines(Vec::new())
    }

    /// `ERROR` alone.
    pub fn error() -> Reply {
        Reply {
            info: Vec::new(),
            result: AtResult::Error,
        }
    }

    /// These lines, then `OK`.
    pub fn lines(info: Vec<String>) -> Reply {
        Reply {
            info,
            result: AtResult::Ok,
        }
    }

    /// The bytes on the wire, as a Quectel module writes them (V1 format):
    /// the information block `\r\n<line>\r\n<line>…\r\n` if any, then
    /// `\r\n<result>\r\n`.
    pub fn render(&self) -> Vec<u8> {
        let mut out = String::new();
        if !self.info.is_empty() {
            out.push_str("\r\n");
            out.push_str(&self.info.join("\r\n"));
            out.push_str("\r\n");
        }
        out.push_str(&frame(&self.result.to_string()));
        out.into_bytes()
    }
}

/// What executing a command leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answer at once.
    Reply(Reply),
    /// `ATE0`/`ATE1`: answer `OK`, then set echo for this port.
    Echo(bool),
    /// `AT+CFUN=1,1`: answer `OK`, then reboot.
    Reboot,
    /// `AT+QFOTADL=<args>`: the simulated module answers (`OK`/`ERROR`)
    /// once it has checked the command.
    Fotadl(String),
}

/// Executes `command` against the module's settings.
pub fn execute(command: Command, settings: &mut Settings, device: &Device<'_>) -> Outcome {
    let one = |line: String| Outcome::Reply(Reply::lines(vec![line]));
    let up = device.network_up();
    match command {
        Command::At => Outcome::Reply(Reply::ok()),
        Command::Echo(on) => Outcome::Echo(on),
        Command::Info => Outcome::Reply(Reply::lines(vec![
            MANUFACTURER.to_string(),
            device.model.to_string(),
            format!("Revision: {}", device.revision()),
        ])),
        Command::Revision => one(device.revision()),
        Command::Manufacturer => one(MANUFACTURER.to_string()),
        Command::Model => one(device.model.to_string()),
        Command::Imei => one(device.imei.to_string()),
        Command::PinStatus => one("+CPIN: READY".to_string()),
        // <stat> 1 registered (home), 2 searching.
        Command::Registration(which) => {
            one(format!("{}: 0,{}", which.prefix(), if up { 1 } else { 2 }))
        }
        Command::SignalQuality => one(if up { "+CSQ: 24,99" } else { "+CSQ: 99,99" }.to_string()),
        Command::Operator => one(if up {
            format!("+COPS: 0,0,\"{OPERATOR}\",7")
        } else {
            "+COPS: 0".to_string()
        }),
        Command::ContextStates => Outcome::Reply(Reply::lines(
            settings
                .contexts
                .keys()
                .map(|cid| {
                    let state = u8::from(up && settings.active.contains(cid));
                    format!("+CGACT: {cid},{state}")
                })
                .collect(),
        )),
        Command::ActiveContexts => Outcome::Reply(Reply::lines(if up {
            settings
                .active
                .iter()
                .map(|cid| {
                    let context_type = settings.contexts.get(cid).map_or(1, |c| c.context_type);
                    format!("+QIACT: {cid},1,{context_type},\"10.64.0.{cid}\"")
                })
                .collect()
        } else {
            Vec::new()
        })),
        Command::Activate(_) if !up => Outcome::Reply(Reply::error()),
        Command::Activate(cid) => {
            settings.contexts.entry(cid).or_default();
            settings.active.insert(cid);
            Outcome::Reply(Reply::ok())
        }
        Command::ShowContext(cid) => {
            let c = settings.contexts.get(&cid).cloned().unwrap_or_default();
            one(format!(
                "+QICSGP: {},\"{}\",\"{}\",\"{}\",{}",
                c.context_type, c.apn, c.user, c.password, c.auth
            ))
        }
        Command::SetContext(cid, context) => {
            settings.contexts.insert(cid, context);
            Outcome::Reply(Reply::ok())
        }
        Command::ShowFotaCid | Command::SetFotaCid(_)
            if !device.module.profile().optional_params =>
        {
            Outcome::Reply(Reply::error())
        }
        Command::ShowFotaCid => one(format!("+QFOTA: \"fota/cid\",{}", settings.fota_cid)),
        Command::SetFotaCid(cid) => {
            settings.fota_cid = cid;
            Outcome::Reply(Reply::ok())
        }
        Command::FunctionalityRead => one("+CFUN: 1".to_string()),
        Command::Functionality { reset: false } => Outcome::Reply(Reply::ok()),
        Command::Functionality { reset: true } => Outcome::Reboot,
        Command::FotadlTest => {
            let mut lines = device.module.test_command();
            let result = match lines.pop().as_deref() {
                Some("OK") => AtResult::Ok,
                _ => AtResult::Error,
            };
            Outcome::Reply(Reply {
                info: lines,
                result,
            })
        }
        Command::Fotadl(args) => Outcome::Fotadl(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;

    fn module(profile: &str, faults: &[Fault]) -> Module {
        Module::builder(Profile::by_name(profile).unwrap())
            .version("v12")
            .faults(faults.iter().copied())
            .build()
            .unwrap()
    }

    /// Runs one line against a fresh EC25-like device; `None` for an empty
    /// line, `Err` for `ERROR` by parse.
    fn run_on(m: &Module, settings: &mut Settings, line: &str) -> Option<Outcome> {
        let device = Device {
            module: m,
            model: "EC25",
            imei: "867675040000011",
        };
        match parse(line) {
            Ok(Some(c)) => Some(execute(c, settings, &device)),
            Ok(None) => None,
            Err(_) => Some(Outcome::Reply(Reply::error())),
        }
    }

    fn wire(m: &Module, settings: &mut Settings, line: &str) -> String {
        match run_on(m, settings, line) {
            Some(Outcome::Reply(r)) => String::from_utf8(r.render()).unwrap(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn identity_commands_answer_exactly() {
        let m = module("ec2x", &[]);
        let s = &mut Settings::default();
        for (line, want) in [
            ("AT", "\r\nOK\r\n"),
            ("at", "\r\nOK\r\n"),
            ("ATI", "\r\nQuectel\r\nEC25\r\nRevision: v12\r\n\r\nOK\r\n"),
            ("ati0", "\r\nQuectel\r\nEC25\r\nRevision: v12\r\n\r\nOK\r\n"),
            ("AT+GMR", "\r\nv12\r\n\r\nOK\r\n"),
            ("AT+QGMR", "\r\nv12\r\n\r\nOK\r\n"),
            ("at+qgmr", "\r\nv12\r\n\r\nOK\r\n"),
            ("AT+CGMI", "\r\nQuectel\r\n\r\nOK\r\n"),
            ("AT+CGMM", "\r\nEC25\r\n\r\nOK\r\n"),
            ("AT+GSN", "\r\n867675040000011\r\n\r\nOK\r\n"),
            ("AT+CGSN", "\r\n867675040000011\r\n\r\nOK\r\n"),
            ("AT+CPIN?", "\r\n+CPIN: READY\r\n\r\nOK\r\n"),
            ("AT+CREG?", "\r\n+CREG: 0,1\r\n\r\nOK\r\n"),
            ("AT+CGREG?", "\r\n+CGREG: 0,1\r\n\r\nOK\r\n"),
            ("AT+CEREG?", "\r\n+CEREG: 0,1\r\n\r\nOK\r\n"),
            ("AT+CSQ", "\r\n+CSQ: 24,99\r\n\r\nOK\r\n"),
            ("AT+COPS?", "\r\n+COPS: 0,0,\"qfota-sim\",7\r\n\r\nOK\r\n"),
            ("AT+CGACT?", "\r\n+CGACT: 1,1\r\n\r\nOK\r\n"),
            ("AT+QIACT?", "\r\n+QIACT: 1,1,1,\"10.64.0.1\"\r\n\r\nOK\r\n"),
            ("AT+CFUN?", "\r\n+CFUN: 1\r\n\r\nOK\r\n"),
            ("AT+CFUN=1", "\r\nOK\r\n"),
            ("AT+CFUN=1,0", "\r\nOK\r\n"),
            ("AT+QFOTADL=?", "\r\nOK\r\n"),
            ("  AT  ", "\r\nOK\r\n"),
        ] {
            assert_eq!(wire(&m, s, line), want, "{line}");
        }
    }

    #[test]
    fn unknown_and_malformed_lines_are_error() {
        let m = module("ec2x", &[]);
        let s = &mut Settings::default();
        for line in [
            "A",
            "hello",
            "\u{fffd}\u{fffd}AT",
            "ATX",
            "ATE2",
            "AT+FOO",
            "AT+CREG",
            "AT+CSQ?",
            "AT+GMR=1",
            "AT+CPIN",
            "AT+CFUN=0",
            "AT+CFUN=4",
            "AT+CFUN=1,2",
            "AT+CFUN=1,1,1",
            "AT+CFUN=",
            "AT+QICSGP=0",
            "AT+QICSGP=17",
            "AT+QICSGP=1,4,\"apn\"",
            "AT+QICSGP=1,1,apn",
            "AT+QICSGP=1,1,\"apn",
            "AT+QICSGP=1,1,\"apn\",\"u\"",
            "AT+QICSGP=1,1,\"a\",\"u\",\"p\",4",
            "AT+QICSGP=1,1,\"a\",\"u\",\"p\",1,9",
            "AT+QICSGP?",
            "AT+QIACT=0",
            "AT+QIACT=",
            "AT+QFOTA=\"fota/cid\",1",
            "AT+QFOTADL",
            "AT+QFOTADL?",
            "AT+QGMR\u{0}",
            "AT+CREG??",
        ] {
            assert_eq!(wire(&m, s, line), "\r\nERROR\r\n", "{line:?}");
        }
        assert_eq!(run_on(&m, s, ""), None, "an empty line gets no answer");
        assert_eq!(run_on(&m, s, " \t"), None);
    }

    #[test]
    fn special_outcomes() {
        let m = module("ec2x", &[]);
        let s = &mut Settings::default();
        assert_eq!(run_on(&m, s, "ATE0"), Some(Outcome::Echo(false)));
        assert_eq!(run_on(&m, s, "ate"), Some(Outcome::Echo(false)));
        assert_eq!(run_on(&m, s, "ATE1"), Some(Outcome::Echo(true)));
        assert_eq!(run_on(&m, s, "AT+CFUN=1,1"), Some(Outcome::Reboot));
        // Arguments keep their case and reach the simulator as typed.
        assert_eq!(
            run_on(&m, s, r#"at+qfotadl="FTP://U:P@h/A.zip",1"#),
            Some(Outcome::Fotadl(r#""FTP://U:P@h/A.zip",1"#.to_string()))
        );
        assert_eq!(
            run_on(&m, s, r#"AT+QFOTADL=""#),
            Some(Outcome::Fotadl("\"".to_string()))
        );
    }

    #[test]
    fn network_down_is_not_registered() {
        let m = module("ec2x", &[Fault::NetworkDown]);
        let s = &mut Settings::default();
        for (line, want) in [
            ("AT+CREG?", "\r\n+CREG: 0,2\r\n\r\nOK\r\n"),
            ("AT+CGREG?", "\r\n+CGREG: 0,2\r\n\r\nOK\r\n"),
            ("AT+CEREG?", "\r\n+CEREG: 0,2\r\n\r\nOK\r\n"),
            ("AT+CSQ", "\r\n+CSQ: 99,99\r\n\r\nOK\r\n"),
            ("AT+COPS?", "\r\n+COPS: 0\r\n\r\nOK\r\n"),
            ("AT+CGACT?", "\r\n+CGACT: 1,0\r\n\r\nOK\r\n"),
            ("AT+QIACT?", "\r\nOK\r\n"),
            ("AT+QIACT=1", "\r\nERROR\r\n"),
        ] {
            assert_eq!(wire(&m, s, line), want, "{line}");
        }
    }

    #[test]
    fn contexts_are_stored_and_shown() {
        let m = module("ec2x", &[]);
        let s = &mut Settings::default();
        assert_eq!(
            wire(&m, s, "AT+QICSGP=2"),
            "\r\n+QICSGP: 1,\"\",\"\",\"\",0\r\n\r\nOK\r\n"
        );
        assert_eq!(
            wire(&m, s, r#"AT+QICSGP=2,1,"cmnet","","",1"#),
            "\r\nOK\r\n"
        );
        assert_eq!(
            wire(&m, s, "AT+QICSGP=2"),
            "\r\n+QICSGP: 1,\"cmnet\",\"\",\"\",1\r\n\r\nOK\r\n"
        );
        assert_eq!(
            wire(&m, s, r#"AT+QICSGP=3, 3 ,"Internet" , "u,1" ,"p""#),
            "\r\nOK\r\n"
        );
        assert_eq!(
            wire(&m, s, "AT+QICSGP=3"),
            "\r\n+QICSGP: 3,\"Internet\",\"u,1\",\"p\",0\r\n\r\nOK\r\n"
        );
        assert_eq!(
            wire(&m, s, "AT+CGACT?"),
            "\r\n+CGACT: 1,1\r\n+CGACT: 2,0\r\n+CGACT: 3,0\r\n\r\nOK\r\n"
        );
        assert_eq!(wire(&m, s, "AT+QIACT=2"), "\r\nOK\r\n");
        assert_eq!(
            wire(&m, s, "AT+QIACT?"),
            "\r\n+QIACT: 1,1,1,\"10.64.0.1\"\r\n+QIACT: 2,1,1,\"10.64.0.2\"\r\n\r\nOK\r\n"
        );
        s.reset_on_boot();
        assert_eq!(
            wire(&m, s, "AT+CGACT?"),
            "\r\n+CGACT: 1,1\r\n+CGACT: 2,0\r\n+CGACT: 3,0\r\n\r\nOK\r\n"
        );
        let long = format!("AT+QICSGP=1,1,\"{}\"", "a".repeat(MAX_CONTEXT_TEXT + 1));
        assert_eq!(wire(&m, s, &long), "\r\nERROR\r\n");
    }

    #[test]
    fn fota_cid_is_ec200_only() {
        let m = module("ec200", &[]);
        let s = &mut Settings::default();
        assert_eq!(
            wire(&m, s, "AT+QFOTA=\"fota/cid\""),
            "\r\n+QFOTA: \"fota/cid\",1\r\n\r\nOK\r\n"
        );
        assert_eq!(wire(&m, s, "AT+QFOTA=\"fota/cid\",2"), "\r\nOK\r\n");
        assert_eq!(wire(&m, s, "at+qfota=\"FOTA/CID\",3"), "\r\nOK\r\n");
        assert_eq!(
            wire(&m, s, "AT+QFOTA=\"fota/cid\""),
            "\r\n+QFOTA: \"fota/cid\",3\r\n\r\nOK\r\n"
        );
        for bad in [
            "AT+QFOTA=\"fota/cid\",0",
            "AT+QFOTA=\"fota/cid\",17",
            "AT+QFOTA=\"other\",1",
            "AT+QFOTA=\"fota/cid\",1,1",
            "AT+QFOTA=fota/cid,1",
        ] {
            assert_eq!(wire(&m, s, bad), "\r\nERROR\r\n", "{bad}");
        }
        for family in ["ec2x", "ep06", "eg06xk-dfota", "eg06xk"] {
            let other = module(family, &[]);
            assert_eq!(
                wire(&other, s, "AT+QFOTA=\"fota/cid\",2"),
                "\r\nERROR\r\n",
                "{family}"
            );
        }
    }

    #[test]
    fn fotadl_test_command_follows_the_family() {
        let s = &mut Settings::default();
        assert_eq!(
            wire(&module("ec200", &[]), s, "AT+QFOTADL=?"),
            "\r\n+QFOTADL: <url>,(0,1),(0,5-100),(0,5-100)\r\n\r\nOK\r\n"
        );
        assert_eq!(
            wire(&module("eg06xk", &[]), s, "AT+QFOTADL=?"),
            "\r\nOK\r\n"
        );
    }

    #[test]
    fn unknown_version_shows_a_placeholder() {
        let m = Module::builder(Profile::by_name("ec2x").unwrap())
            .build()
            .unwrap();
        let s = &mut Settings::default();
        assert_eq!(wire(&m, s, "AT+QGMR"), "\r\nunknown\r\n\r\nOK\r\n");
    }

    #[test]
    fn args_split_on_commas_outside_quotes() {
        assert_eq!(
            split_args(r#"1, "a,b" ,22"#).unwrap(),
            vec![Arg::Number(1), Arg::Text("a,b".into()), Arg::Number(22)]
        );
        for bad in ["", ",", "1,", "\"x", "\"x\"y", "123456", "-1", "1 2"] {
            assert!(split_args(bad).is_err(), "{bad:?}");
        }
    }
}

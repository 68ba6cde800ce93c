//! The AT commands the virtual modem understands: turning a command line
//! into [`Command`]s ([`parse`]) and running them ([`run_line`]) against
//! the module's identity and settings, as a Quectel module answers on its
//! AT port (SPEC §8, 3GPP TS 27.007, ITU-T V.250).
//!
//! Everything here is pure: no I/O, no clock. The session (`session.rs`)
//! renders the answers ([`crate::modem::reply`]), writes them, and carries
//! out the [`End`]s that are more than an answer (reboot, power down,
//! `AT+QFOTADL`).
//!
//! # Syntax
//!
//! V.250 command lines ([`crate::modem::syntax`]): several commands per
//! line (`ATE0V1`, `ATE0 V1`, `AT+CSQ;+CREG?`), run left to right; each
//! prints its own information text and the line ends with one final
//! result code. The first command that fails ends the line with `ERROR`
//! (or `+CME ERROR: <err>`, see `AT+CMEE`); what ran before it stays done.
//! A line that does not parse runs nothing. `AT+QFOTADL=…`,
//! `AT+CFUN=<fun>,1` and `AT+QPOWD` end the line: what follows them is not
//! run (as V.250 §6.1.1 allows for `Z`). Every extended command answers its
//! test form `=?` (the supported values, or `OK` alone for an action
//! without parameters). An empty line gets no answer.
//!
//! | command | answer |
//! |---|---|
//! | `AT` | `OK` |
//! | `ATE<0/1>`, `ATV<0/1>`, `ATQ<0/1>`, `ATX<0-4>`, `AT&C<0/1>`, `AT&D<0-2>` | `OK`; echo, verbose/numeric result codes, quiet, stored settings of this port |
//! | `ATZ`, `AT&F`, `AT&W` | `OK`; load the saved profile / the factory defaults / save this port's settings as the profile (kept across reboots) |
//! | `A/` | repeats the last command line (handled by the session) |
//! | `ATI`, `ATI0` | `Quectel`, the model, `Revision: <version>`, `OK` |
//! | `AT+GMR`, `AT+CGMR`, `AT+QGMR`, `AT+QGMR?` | `<version>`, `OK` |
//! | `AT+CGMI`, `AT+GMI` / `AT+CGMM`, `AT+GMM` | `Quectel` / the model, `OK` |
//! | `AT+GSN`, `AT+CGSN` / `AT+CIMI` | the IMEI / the IMSI ([`IMSI`]), `OK` |
//! | `AT+QCCID` / `AT+CCID` | `+QCCID: <iccid>` / `+CCID: <iccid>` ([`ICCID`]), `OK` |
//! | `AT+GCAP` | `+GCAP: +CGSM`, `OK` |
//! | `AT+CPIN?` | `+CPIN: READY`, `OK` |
//! | `AT+CMEE=<0-2>`, `AT+CMEE?` | error reporting of this port |
//! | `AT+CREG=<0-2>`, `AT+CGREG=…`, `AT+CEREG=…` | `OK`; unsolicited `+CREG: <stat>[,"<lac>","<ci>",7]` when the registration changes (radio on/off) |
//! | `AT+CREG?`, `AT+CGREG?`, `AT+CEREG?` | `+CREG: <n>,<stat>[,"<lac>","<ci>",7]`: stat 1 registered, 2 searching under fault `network-down` (also set at run time, `control.rs`), 0 with the radio off |
//! | `AT+CSQ` | `+CSQ: 24,99` (the runtime control's `signal` changes 24; `99,99` without network), `OK` |
//! | `AT+COPS?` | `+COPS: <mode>,<format>,"<oper>",7` (`qfota-sim`, numeric `00101`; `+COPS: 0` without network, `+COPS: 2` deregistered), `OK` |
//! | `AT+COPS=<mode>[,<format>[,"<oper>"[,<AcT>]]]` | 0 automatic, 1 manual (only this network: else `+CME ERROR: 30`), 2 deregister (registration 0 until `AT+COPS=0`/a boot; downloads fail as without network), 3 set `<format>` only, 4 manual then automatic (27.007 §7.3) |
//! | `AT+CGACT?` | `+CGACT: <cid>,<0/1>` per defined context, `OK` |
//! | `AT+CGACT=<0/1>[,<cid>…]` | deactivates / activates the contexts (all defined ones without a `<cid>`; an undefined one is `+CME ERROR: 50`; activation needs network, `+CME ERROR: 30`) (27.007 §10.1.10) |
//! | `AT+CGDCONT=<cid>[,"<PDP_type>"[,"<APN>"[,…]]]` | defines the context (`IP`, `IPV6`, `IPV4V6`; further parameters accepted and not kept); `AT+CGDCONT=<cid>` alone undefines it (context 1 back to its defaults) (27.007 §10.1.1) |
//! | `AT+CGATT=<0/1>` | 0 detaches: every context deactivated, `+CGATT: 0`; 1 attaches (`+CME ERROR: 30` without network) with the default bearer, context 1 (27.007 §10.1.9) |
//! | `AT+QIACT?` / `AT+QIACT=<cid>` / `AT+QIDEACT=<cid>` | active contexts / activate (`+CME ERROR: 30` without network) / deactivate |
//! | `AT+IPR=<rate>`, `AT+IPR?` | the port's baud rate (stored; a PTY or TCP port has no baud rate), default 115200 (V.250 §6.2.10) |
//! | `AT+ICF=<format>[,<parity>]`, `AT+ICF?` | character framing (stored), default `3,3`: 8 data bits, 1 stop bit, no parity (V.250 §6.2.11) |
//! | `AT+CSCS="<chset>"`, `AT+CSCS?` | character set `GSM` (default), `IRA` or `UCS2` (stored; every text this modem prints is ASCII) (27.007 §5.5) |
//! | `AT+QICSGP=<cid>[,<type>,"<apn>"[,"<user>","<pw>"[,<auth>]]]` | stores the context, `OK`; with only `<cid>`: `+QICSGP: <type>,"<apn>","<user>","<pw>",<auth>`, `OK` |
//! | `AT+QFOTA="fota/cid"[,<cid>]` | `ec200` only (seed `001_2f648264def3e0b1.txt` §3.2.1.1 example): sets / shows the PDP context FOTA uses; other families `+CME ERROR: 4` |
//! | `AT+CFUN?`, `AT+CFUN=<0/1/4>[,<rst>]` | `+CFUN: <fun>`; 0 and 4 switch the radio off (no registration, downloads fail with the family's no-network code), 1 on; `<rst>` 1 reboots (the module comes back at 1) |
//! | `AT+QPOWD[=<0/1>]` | `OK`, `POWERED DOWN`, then the module is off until it is powered on (the session) |
//! | `AT+IFC=<0/2>,<0/2>`, `AT+IFC?` | flow control setting of this port (stored) |
//! | `AT+QCFG="usbifc"[,<0/2>,<0/2>]` | USB flow control setting (stored); other `QCFG` items `+CME ERROR: 4` |
//! | `AT+QURCCFG="urcport"[,"usbat"/"usbmodem"/"uart1"]` | the URC port setting (stored: this modem has one AT port and prints URCs there) |
//! | `AT+QFOTADL=?` | the family's test answer ([`Module::test_command`]) |
//! | `AT+QFOTADL=<args>` | handed to the simulator ([`Module::fotadl`]); local files (`"/data/ufs/<name>"`, SPEC §9) need no network; `ec200`'s `"FILE:<length>"` takes the package over this port (a data phase, `data.rs`) |
//! | `AT+QFUPL=<name>[,<file_size>[,<timeout>[,<ackmode>]]]` | checks name, existence and space ([`Ufs::prepare`](crate::sim::Ufs::prepare)), then `CONNECT` and the data phase (`data.rs`): `+QFUPL: <upload_size>,<checksum>` (checksum in hex, as fwupd parses it), `OK`; or `+CME ERROR: <err>` (400–421) |
//! | `AT+QFUPL=?` | `+QFUPL: <name>,(1-<free_size>),(1-65535),(0,1)` |
//! | `AT+QFLST[=<pattern>]` | `+QFLST: "<name>",<size>` per matching file, `OK`; a name without `*`/`?` that matches nothing is `+CME ERROR: 405` (fwupd's DFOTA plugin relies on it) |
//! | `AT+QFDEL=<name>` | deletes the file (`"*"`: all), `OK`; `+CME ERROR: 405` when absent |
//! | `AT+QFLDS[="UFS"]` | `+QFLDS: <free_size>,<total_size>` |
//!
//! Error codes (with `AT+CMEE=1`): 3 not allowed now, 4 unknown command or
//! form, 30 no network, 50 bad arguments, 100 not a command line at all,
//! 400–421 the file errors of SPEC §9 ([`crate::sim::FileError::code`]).
//! File errors follow `AT+CMEE` like every other error (`ERROR` under
//! `AT+CMEE=0`).

use std::collections::{BTreeMap, BTreeSet};

use crate::modem::data::{DEFAULT_UPLOAD_SIZE, DEFAULT_UPLOAD_TIMEOUT};
use crate::modem::reply::{CmeError, PortSettings};
use crate::modem::syntax::{self, Element, Form};
use crate::sim::{Fault, FileError, Module};

/// Manufacturer, as `AT+CGMI` and `ATI` print it.
pub const MANUFACTURER: &str = "Quectel";
/// `<rssi>` `AT+CSQ` shows while registered, unless set at run time.
pub const DEFAULT_CSQ: u8 = 24;
/// Operator name `AT+COPS?` shows while registered.
pub const OPERATOR: &str = "qfota-sim";
/// What `ATI`/`AT+GMR` show when the module's version is unset or unknown
/// (after an upgrade with a package whose name and `version.txt` state no
/// version).
pub const UNKNOWN_REVISION: &str = "unknown";
/// Highest PDP context id (`AT+QICSGP`, `AT+QIACT`, `fota/cid`): 16.
pub const MAX_CID: u8 = 16;
/// Longest APN, user name or password accepted by `AT+QICSGP`, in bytes.
pub const MAX_CONTEXT_TEXT: usize = 100;
/// The SIM's IMSI (`AT+CIMI`): test network MCC 001, MNC 01 (3GPP TS
/// 23.003 §2.2).
pub const IMSI: &str = "001010123456789";
/// The SIM's ICCID (`AT+QCCID`, `AT+CCID`): 20 digits, issuer 89 (ITU-T
/// E.118).
pub const ICCID: &str = "89001012012341234567";
/// Location area / tracking area code shown by `+CREG`/`+CEREG` mode 2,
/// hex.
pub const LAC: &str = "1A2B";
/// Cell id shown by `+CREG`/`+CEREG` mode 2, hex.
pub const CELL_ID: &str = "01A2B3C4";
/// What `AT+GCAP` lists (a Quectel LTE module answers `+CGSM`).
pub const CAPABILITIES: &str = "+GCAP: +CGSM";

/// Why a command line, or one of its commands, does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line is not an AT command line at all (V.250 syntax).
    #[error(transparent)]
    Syntax(#[from] syntax::SyntaxError),
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

impl ParseError {
    /// The `+CME ERROR` this is answered with.
    pub fn cme(&self) -> CmeError {
        match self {
            ParseError::Syntax(_) => CmeError::Unknown,
            ParseError::Unknown(_) => CmeError::NotSupported,
            ParseError::BadArguments { .. } => CmeError::IncorrectParameters,
        }
    }
}

/// Which registration status command (the answer's prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// `AT+CREG` (circuit switched).
    Creg,
    /// `AT+CGREG` (GPRS).
    Cgreg,
    /// `AT+CEREG` (EPS / LTE).
    Cereg,
}

impl Registration {
    /// All three, in [`Settings::reg_urc`] order.
    pub const ALL: [Registration; 3] =
        [Registration::Creg, Registration::Cgreg, Registration::Cereg];

    fn prefix(self) -> &'static str {
        match self {
            Registration::Creg => "+CREG",
            Registration::Cgreg => "+CGREG",
            Registration::Cereg => "+CEREG",
        }
    }

    fn index(self) -> usize {
        match self {
            Registration::Creg => 0,
            Registration::Cgreg => 1,
            Registration::Cereg => 2,
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

/// A port setting a basic command changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSetting {
    /// `E`.
    Echo(bool),
    /// `V`.
    Verbose(bool),
    /// `Q`.
    Quiet(bool),
    /// `X`.
    CallProgress(u8),
    /// `&C`.
    Dcd(u8),
    /// `&D`.
    Dtr(u8),
    /// `+CMEE`.
    ErrorMode(u8),
    /// `+IFC`.
    FlowControl(u8, u8),
}

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A port setting (`ATE0`, `ATV1`, `AT+CMEE=1`, …).
    Set(PortSetting),
    /// `ATZ`: load the saved profile.
    LoadProfile,
    /// `AT&F`: factory defaults.
    FactoryDefaults,
    /// `AT&W`: save this port's settings.
    SaveProfile,
    /// `ATI`.
    Info,
    /// `AT+GMR`, `AT+CGMR` or `AT+QGMR`.
    Revision,
    /// `AT+CGMI`, `AT+GMI`.
    Manufacturer,
    /// `AT+CGMM`, `AT+GMM`.
    Model,
    /// `AT+GSN` or `AT+CGSN`.
    Imei,
    /// `AT+CIMI`.
    Imsi,
    /// `AT+QCCID` (true) or `AT+CCID` (false).
    Iccid(bool),
    /// `AT+GCAP`.
    Capabilities,
    /// `AT+CPIN?`.
    PinStatus,
    /// `AT+CMEE?`.
    ErrorModeRead,
    /// `AT+IFC?`.
    FlowControlRead,
    /// `AT+CREG?`, `AT+CGREG?`, `AT+CEREG?`.
    Registration(Registration),
    /// `AT+CREG=<n>` and relatives: unsolicited registration mode.
    RegistrationMode(Registration, u8),
    /// `AT+CSQ`.
    SignalQuality,
    /// `AT+COPS?`.
    Operator,
    /// `AT+CGACT?`.
    ContextStates,
    /// `AT+CGDCONT?`: the contexts defined (3GPP TS 27.007 §10.1.1).
    ContextDefinitions,
    /// `AT+CGATT?`: attached to the packet domain while registered (27.007
    /// §10.1.9).
    AttachState,
    /// `AT+CPAS`: activity status, 0 (ready) while the module answers
    /// commands (27.007 §8.1).
    ActivityStatus,
    /// `AT+QIACT?`.
    ActiveContexts,
    /// `AT+QIACT=<cid>`.
    Activate(u8),
    /// `AT+QIDEACT=<cid>`.
    Deactivate(u8),
    /// `AT+CGACT=<state>[,<cid>…]`: activate (`true`) or deactivate the
    /// contexts listed, all defined ones when none is.
    ContextActivation(bool, Vec<u8>),
    /// `AT+CGDCONT=<cid>,"<PDP_type>"[,"<APN>"…]`: define the context
    /// (type as `AT+QICSGP` numbers it: 1 IPv4, 2 IPv6, 3 IPv4v6).
    DefineContext(u8, u8, String),
    /// `AT+CGDCONT=<cid>`: undefine it.
    UndefineContext(u8),
    /// `AT+CGATT=<state>`: attach (`true`) or detach.
    Attach(bool),
    /// `AT+COPS=<mode>[,<format>[,"<oper>"[,<AcT>]]]`.
    OperatorSelect {
        /// 0 automatic, 1 manual, 2 deregister, 3 format only, 4 manual
        /// then automatic.
        mode: u8,
        /// 0 long name, 1 short name, 2 numeric.
        format: Option<u8>,
        /// The operator asked for (modes 1 and 4).
        operator: Option<String>,
    },
    /// `AT+IPR?`.
    BaudRateRead,
    /// `AT+IPR=<rate>`.
    BaudRate(u32),
    /// `AT+ICF?`.
    FramingRead,
    /// `AT+ICF=<format>[,<parity>]`.
    Framing(u8, u8),
    /// `AT+CSCS?`.
    CharsetRead,
    /// `AT+CSCS="<chset>"`, upper case.
    Charset(&'static str),
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
    /// `AT+CFUN=<fun>[,<rst>]`.
    Functionality {
        /// 0 minimum (radio off), 1 full, 4 radio off.
        fun: u8,
        /// `<rst>` = 1: reset the module.
        reset: bool,
    },
    /// `AT+QPOWD[=<n>]`.
    PowerDown,
    /// `AT+QCFG="usbifc"`.
    UsbFlowControlRead,
    /// `AT+QCFG="usbifc",<a>,<b>`.
    UsbFlowControl(u8, u8),
    /// `AT+QCFG="usbnet"` or `AT+QCFG="nwscanmode"`: the item's value.
    ConfigRead(&'static str),
    /// `AT+QCFG="usbnet",<n>` or `AT+QCFG="nwscanmode",<n>[,<effect>]`.
    ConfigSet(&'static str, u8),
    /// `AT+CPMS?`: message storage, empty (27.005 §3.2.2).
    MessageStorage,
    /// `AT+QURCCFG="urcport"`.
    UrcPortRead,
    /// `AT+QURCCFG="urcport","<port>"`.
    UrcPort(String),
    /// `AT+<NAME>=?` of a supported command, the name upper case.
    Test(String),
    /// `AT+QFOTADL=<args>`, the text after `=` as typed.
    Fotadl(String),
    /// `AT+QFUPL=<name>[,<file_size>[,<timeout>[,<ackmode>]]]`.
    Upload(UploadRequest),
    /// `AT+QFLST[=<pattern>]` (`*` without one).
    ListFiles(String),
    /// `AT+QFDEL=<name>`.
    DeleteFile(String),
    /// `AT+QFLDS[="UFS"]`.
    FreeSpace,
}

/// An `AT+QFUPL` that may start its data phase (SPEC §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRequest {
    /// The file name as typed (`UFS:` prefix optional).
    pub name: String,
    /// `<file_size>`, bytes (default [`DEFAULT_UPLOAD_SIZE`]).
    pub size: u64,
    /// `<timeout>`, seconds without data (1–65535, default
    /// [`DEFAULT_UPLOAD_TIMEOUT`]).
    pub timeout: u32,
    /// `<ackmode>` 1: an `A` after each 1,024 bytes.
    pub ack: bool,
}

/// One command line as parsed: the commands up to the first one that is
/// unknown or has bad arguments, and that one's error. They run left to
/// right; the error is the line's result if they all succeed (V.250 §5.2:
/// the first failure ends the line, what ran before keeps its effect).
#[derive(Debug)]
pub struct Line {
    /// The commands that parsed, in order.
    pub commands: Vec<Command>,
    /// Why the next command did not parse; `None` when the whole line did.
    pub failed: Option<ParseError>,
}

/// Parses one command line (terminator already removed). `Ok(None)` for
/// an empty line, which gets no answer; no commands and no error for `AT`.
///
/// # Errors
/// [`ParseError::Syntax`]: the line is no AT command line (V.250 syntax);
/// it is answered `ERROR` and none of it runs.
pub fn parse(line: &str) -> Result<Option<Line>, ParseError> {
    let Some(elements) = syntax::split(line)? else {
        return Ok(None);
    };
    let mut commands = Vec::with_capacity(elements.len());
    for element in elements {
        let parsed = match element {
            Element::Basic { name, value } => basic(&name, value),
            Element::Extended { name, form } => extended(&name, form),
        };
        match parsed {
            Ok(command) => commands.push(command),
            Err(error) => {
                return Ok(Some(Line {
                    commands,
                    failed: Some(error),
                }));
            }
        }
    }
    Ok(Some(Line {
        commands,
        failed: None,
    }))
}

/// A basic command; a missing value is 0 (V.250 §5.3.1).
fn basic(name: &str, value: Option<u32>) -> Result<Command, ParseError> {
    let n = value.unwrap_or(0);
    let flag = |command: &'static str| match n {
        0 | 1 => Ok(n == 1),
        _ => Err(bad(command, format!("value {n}"))),
    };
    let upto = |command: &'static str, max: u32| {
        u8::try_from(n)
            .ok()
            .filter(|v| u32::from(*v) <= max)
            .ok_or_else(|| bad(command, format!("value {n}")))
    };
    Ok(match name {
        "E" => Command::Set(PortSetting::Echo(flag("E")?)),
        "V" => Command::Set(PortSetting::Verbose(flag("V")?)),
        "Q" => Command::Set(PortSetting::Quiet(flag("Q")?)),
        "X" => Command::Set(PortSetting::CallProgress(upto("X", 4)?)),
        "&C" => Command::Set(PortSetting::Dcd(upto("&C", 1)?)),
        "&D" => Command::Set(PortSetting::Dtr(upto("&D", 2)?)),
        "Z" if n == 0 => Command::LoadProfile,
        "&F" if n == 0 => Command::FactoryDefaults,
        "&W" if n == 0 => Command::SaveProfile,
        "I" if n == 0 => Command::Info,
        _ => return Err(ParseError::Unknown(format!("{name}{n}"))),
    })
}

/// Extended commands that are actions without parameters, with what they
/// run.
fn action(name: &str) -> Option<Command> {
    Some(match name {
        "+GMR" | "+CGMR" | "+QGMR" => Command::Revision,
        "+CGMI" | "+GMI" => Command::Manufacturer,
        "+CGMM" | "+GMM" => Command::Model,
        "+GSN" | "+CGSN" => Command::Imei,
        "+CIMI" => Command::Imsi,
        "+QCCID" => Command::Iccid(true),
        "+CCID" => Command::Iccid(false),
        "+GCAP" => Command::Capabilities,
        "+CSQ" => Command::SignalQuality,
        "+CPAS" => Command::ActivityStatus,
        "+QPOWD" => Command::PowerDown,
        "+QFLST" => Command::ListFiles("*".to_string()),
        "+QFLDS" => Command::FreeSpace,
        _ => return None,
    })
}

/// The extended commands that have a test form, and so exist.
const EXTENDED: &[&str] = &[
    "+GMR", "+CGMR", "+QGMR", "+CGMI", "+GMI", "+CGMM", "+GMM", "+GSN", "+CGSN", "+CIMI", "+QCCID",
    "+CCID", "+GCAP", "+CSQ", "+QPOWD", "+CPIN", "+CMEE", "+IFC", "+CREG", "+CGREG", "+CEREG",
    "+COPS", "+CGACT", "+CGDCONT", "+CGATT", "+CPAS", "+CPMS", "+QIACT", "+QICSGP", "+QFOTA",
    "+CFUN", "+QCFG", "+QURCCFG", "+QFOTADL", "+QFUPL", "+QFLST", "+QFDEL", "+QFLDS", "+QIDEACT",
    "+IPR", "+ICF", "+CSCS",
];

/// The baud rates `AT+IPR` takes (a Quectel LTE module's UART rates).
pub const BAUD_RATES: [u32; 12] = [
    4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600, 3000000, 3686400, 4000000,
];
/// `AT+IPR`'s rate after a factory reset.
pub const DEFAULT_BAUD_RATE: u32 = 115200;
/// The character sets `AT+CSCS` takes.
const CHARSETS: [&str; 3] = ["GSM", "IRA", "UCS2"];
/// The operator's numeric name (MCC 001, MNC 01: the 3GPP test network of
/// [`IMSI`]), `AT+COPS` format 2.
pub const OPERATOR_NUMERIC: &str = "00101";

fn registration(name: &str) -> Option<Registration> {
    match name {
        "+CREG" => Some(Registration::Creg),
        "+CGREG" => Some(Registration::Cgreg),
        "+CEREG" => Some(Registration::Cereg),
        _ => None,
    }
}

fn extended(name: &str, form: Form) -> Result<Command, ParseError> {
    let unknown = || ParseError::Unknown(name.to_string());
    if form == Form::Test {
        return EXTENDED
            .contains(&name)
            .then(|| Command::Test(name.to_string()))
            .ok_or_else(unknown);
    }
    if form == Form::Exec
        && let Some(command) = action(name)
    {
        return Ok(command);
    }
    if let Some(which) = registration(name) {
        return match form {
            Form::Read => Ok(Command::Registration(which)),
            Form::Set(args) => {
                let n = single_number(&args, which.prefix(), 0..=2)?;
                Ok(Command::RegistrationMode(which, n))
            }
            _ => Err(unknown()),
        };
    }
    Ok(match (name, form) {
        ("+QPOWD", Form::Set(args)) => {
            single_number(&args, "+QPOWD", 0..=1)?;
            Command::PowerDown
        }
        // ModemManager's Quectel plugin reads the firmware version with
        // the read form, and retries for ~17 s when it fails.
        ("+QGMR", Form::Read) => Command::Revision,
        ("+CPIN", Form::Read) => Command::PinStatus,
        ("+CMEE", Form::Read) => Command::ErrorModeRead,
        ("+CMEE", Form::Set(args)) => Command::Set(PortSetting::ErrorMode(single_number(
            &args,
            "+CMEE",
            0..=2,
        )?)),
        ("+IFC", Form::Read) => Command::FlowControlRead,
        ("+IFC", Form::Set(args)) => {
            let (a, b) = flow_pair(&args, "+IFC", 0)?;
            Command::Set(PortSetting::FlowControl(a, b))
        }
        ("+COPS", Form::Read) => Command::Operator,
        ("+COPS", Form::Set(args)) => parse_cops(&args)?,
        ("+CGACT", Form::Read) => Command::ContextStates,
        ("+CGACT", Form::Set(args)) => parse_cgact(&args)?,
        ("+CGDCONT", Form::Read) => Command::ContextDefinitions,
        ("+CGDCONT", Form::Set(args)) => parse_cgdcont(&args)?,
        ("+CGATT", Form::Read) => Command::AttachState,
        ("+CGATT", Form::Set(args)) => Command::Attach(single_number(&args, "+CGATT", 0..=1)? == 1),
        ("+QIDEACT", Form::Set(args)) => Command::Deactivate(parse_cid(&args, "+QIDEACT")?),
        ("+IPR", Form::Read) => Command::BaudRateRead,
        ("+IPR", Form::Set(args)) => Command::BaudRate(parse_ipr(&args)?),
        ("+ICF", Form::Read) => Command::FramingRead,
        ("+ICF", Form::Set(args)) => parse_icf(&args)?,
        ("+CSCS", Form::Read) => Command::CharsetRead,
        ("+CSCS", Form::Set(args)) => Command::Charset(parse_cscs(&args)?),
        ("+CPMS", Form::Read) => Command::MessageStorage,
        ("+QIACT", Form::Read) => Command::ActiveContexts,
        ("+QIACT", Form::Set(args)) => Command::Activate(parse_cid(&args, "+QIACT")?),
        ("+QICSGP", Form::Set(args)) => parse_qicsgp(&args)?,
        ("+QFOTA", Form::Set(args)) => parse_qfota(&args)?,
        ("+CFUN", Form::Read) => Command::FunctionalityRead,
        ("+CFUN", Form::Set(args)) => parse_cfun(&args)?,
        ("+QCFG", Form::Set(args)) => parse_qcfg(&args)?,
        ("+QURCCFG", Form::Set(args)) => parse_qurccfg(&args)?,
        ("+QFOTADL", Form::Set(args)) => Command::Fotadl(args),
        ("+QFUPL", Form::Set(args)) => Command::Upload(parse_qfupl(&args)?),
        ("+QFLST", Form::Set(args)) => Command::ListFiles(file_name(&args, "+QFLST")?),
        ("+QFDEL", Form::Set(args)) => Command::DeleteFile(file_name(&args, "+QFDEL")?),
        ("+QFLDS", Form::Set(args)) => {
            if !file_name(&args, "+QFLDS")?.eq_ignore_ascii_case("UFS") {
                return Err(bad("+QFLDS", "only the \"UFS\" drive exists"));
            }
            Command::FreeSpace
        }
        _ => return Err(unknown()),
    })
}

/// The test answer of a supported extended command (`None`: the family
/// does not have it).
fn test_answer(name: &str, device: &Device<'_>) -> Option<Vec<String>> {
    let one = |s: &str| Some(vec![s.to_string()]);
    match name {
        "+CMEE" => one("+CMEE: (0-2)"),
        "+IFC" => one("+IFC: (0,2),(0,2)"),
        "+CREG" => one("+CREG: (0-2)"),
        "+CGREG" => one("+CGREG: (0-2)"),
        "+CEREG" => one("+CEREG: (0-2)"),
        "+CSQ" => one("+CSQ: (0-31,99),(0-7,99)"),
        "+COPS" => Some(vec![format!(
            "+COPS: (2,\"{OPERATOR}\",\"{OPERATOR}\",\"00101\",7),,(0-4),(0-2)"
        )]),
        "+CGACT" => one("+CGACT: (0,1)"),
        "+CGDCONT" => Some(vec![
            format!("+CGDCONT: (1-{MAX_CID}),\"IP\",,,(0-2),(0-4),(0,1),(0,1)"),
            format!("+CGDCONT: (1-{MAX_CID}),\"IPV6\",,,(0-2),(0-4),(0,1),(0,1)"),
            format!("+CGDCONT: (1-{MAX_CID}),\"IPV4V6\",,,(0-2),(0-4),(0,1),(0,1)"),
        ]),
        "+CGATT" => one("+CGATT: (0,1)"),
        "+QIDEACT" => Some(vec![format!("+QIDEACT: (1-{MAX_CID})")]),
        "+IPR" => Some(vec![format!(
            "+IPR: ({})",
            BAUD_RATES.map(|r| r.to_string()).join(",")
        )]),
        "+ICF" => one("+ICF: (1-6),(0-3)"),
        "+CSCS" => one("+CSCS: (\"GSM\",\"IRA\",\"UCS2\")"),
        "+CPAS" => one("+CPAS: (0-5)"),
        "+CPMS" => one("+CPMS: (\"ME\",\"SM\"),(\"ME\",\"SM\"),(\"ME\",\"SM\")"),
        "+QIACT" => Some(vec![format!("+QIACT: (1-{MAX_CID})")]),
        "+QICSGP" => Some(vec![format!(
            "+QICSGP: (1-{MAX_CID}),(1-3),<APN>,<username>,<password>,(0-3)"
        )]),
        "+QFOTA" if device.module.profile().optional_params => {
            Some(vec![format!("+QFOTA: \"fota/cid\",(1-{MAX_CID})")])
        }
        "+QFOTA" => None,
        "+CFUN" => one("+CFUN: (0,1,4),(0,1)"),
        "+QPOWD" => one("+QPOWD: (0,1)"),
        "+QCFG" => Some(vec![
            "+QCFG: \"usbifc\",(0,2),(0,2)".to_string(),
            "+QCFG: \"usbnet\",(0-5)".to_string(),
            "+QCFG: \"nwscanmode\",(0-3),(0,1)".to_string(),
        ]),
        "+QURCCFG" => one("+QURCCFG: \"urcport\",(\"usbat\",\"usbmodem\",\"uart1\")"),
        "+QFUPL" => Some(vec![format!(
            "+QFUPL: <name>,(1-{}),(1-65535),(0,1)",
            device.module.ufs().space().free
        )]),
        "+QFOTADL" => {
            let mut lines = device.module.test_command();
            // The simulator's answer ends with its own result code.
            match lines.pop().as_deref() {
                Some("OK") => Some(lines),
                _ => None,
            }
        }
        _ => Some(Vec::new()),
    }
}

fn single_number(
    args: &str,
    command: &'static str,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u8, ParseError> {
    let args = split_args(args).map_err(|why| bad(command, why))?;
    if args.len() != 1 {
        return Err(bad(command, format!("{} arguments", args.len())));
    }
    number_in(args.first(), range, command, "n")
}

/// `<dce_by_dte>,<dte_by_dce>` (each 0 or 2), the arguments from `skip`.
fn flow_pair(args: &str, command: &'static str, skip: usize) -> Result<(u8, u8), ParseError> {
    let args = split_args(args).map_err(|why| bad(command, why))?;
    let values: Vec<u8> = args[skip.min(args.len())..]
        .iter()
        .map(|a| match a {
            Arg::Number(n @ (0 | 2)) => Ok(*n as u8),
            _ => Err(bad(command, "flow control is 0 (none) or 2 (RTS/CTS)")),
        })
        .collect::<Result<_, _>>()?;
    match values[..] {
        [a, b] => Ok((a, b)),
        _ => Err(bad(command, "expected <dce_by_dte>,<dte_by_dce>")),
    }
}

/// `AT+QCFG` items kept as a number, with their largest value: `usbnet`
/// (0 RmNet … 5), `nwscanmode` (0 automatic, 1 GSM, 2 UMTS, 3 LTE) —
/// what ModemManager and bearer set-up scripts read on Quectel modules.
const QCFG_NUMBERS: [(&str, u32); 2] = [("usbnet", 5), ("nwscanmode", 3)];

fn parse_qcfg(args: &str) -> Result<Command, ParseError> {
    const C: &str = "+QCFG";
    let list = split_args(args).map_err(|why| bad(C, why))?;
    if let Some(Arg::Text(item)) = list.first()
        && let Some((name, max)) = QCFG_NUMBERS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(item))
    {
        return match &list[1..] {
            [] => Ok(Command::ConfigRead(name)),
            // `nwscanmode` takes an `<effect>` (0 after reboot, 1 at once):
            // the simulated module applies it at once either way.
            [value, rest @ ..] if rest.len() <= usize::from(*name == "nwscanmode") => {
                let n = number_in(Some(value), 0..=*max, C, name)?;
                if let Some(effect) = rest.first() {
                    number_in(Some(effect), 0..=1, C, "effect")?;
                }
                Ok(Command::ConfigSet(name, n))
            }
            _ => Err(bad(C, format!("expected \"{name}\"[,<n>]"))),
        };
    }
    match list.first() {
        Some(Arg::Text(item)) if item.eq_ignore_ascii_case("usbifc") => {}
        // Items this modem does not simulate, as a module answers items
        // it lacks.
        Some(Arg::Text(item)) => return Err(ParseError::Unknown(format!("+QCFG=\"{item}\""))),
        _ => return Err(bad(C, "expected a quoted item name")),
    }
    if list.len() == 1 {
        return Ok(Command::UsbFlowControlRead);
    }
    let (a, b) = flow_pair(args, C, 1)?;
    Ok(Command::UsbFlowControl(a, b))
}

/// The URC port names `AT+QURCCFG="urcport"` takes.
const URC_PORTS: [&str; 3] = ["usbat", "usbmodem", "uart1"];

fn parse_qurccfg(args: &str) -> Result<Command, ParseError> {
    const C: &str = "+QURCCFG";
    let list = split_args(args).map_err(|why| bad(C, why))?;
    match list.first() {
        Some(Arg::Text(item)) if item.eq_ignore_ascii_case("urcport") => {}
        _ => return Err(bad(C, "only \"urcport\" is supported")),
    }
    match &list[1..] {
        [] => Ok(Command::UrcPortRead),
        [Arg::Text(port)] => URC_PORTS
            .iter()
            .find(|p| p.eq_ignore_ascii_case(port))
            .map(|p| Command::UrcPort((*p).to_string()))
            .ok_or_else(|| bad(C, format!("unknown port {port:?}"))),
        _ => Err(bad(C, "expected \"urcport\"[,\"<port>\"]")),
    }
}

fn parse_cfun(args: &str) -> Result<Command, ParseError> {
    const C: &str = "+CFUN";
    let args = split_args(args).map_err(|why| bad(C, why))?;
    let fun = match args.first() {
        Some(Arg::Number(n @ (0 | 1 | 4))) => *n as u8,
        _ => return Err(bad(C, "<fun> is 0, 1 or 4")),
    };
    match args.len() {
        1 => Ok(Command::Functionality { fun, reset: false }),
        2 => Ok(Command::Functionality {
            fun,
            reset: number_in(args.get(1), 0..=1, C, "rst")? == 1,
        }),
        n => Err(bad(C, format!("{n} arguments"))),
    }
}

/// One comma-separated argument.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Arg {
    /// `"text"` (a quote cannot appear inside).
    Text(String),
    /// A decimal number of at most 10 digits (fits `u32`, else refused).
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
            if token.is_empty() || token.len() > 10 || !token.bytes().all(|b| b.is_ascii_digit()) {
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

/// [`number_in`] for an argument that may be left out (`None`).
fn optional_number(
    arg: Option<&Arg>,
    range: std::ops::RangeInclusive<u32>,
    command: &'static str,
    name: &str,
) -> Result<Option<u8>, ParseError> {
    arg.map(|arg| number_in(Some(arg), range, command, name))
        .transpose()
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

/// The one quoted argument of `AT+QFLST`, `AT+QFDEL`, `AT+QFLDS`.
fn file_name(args: &str, command: &'static str) -> Result<String, ParseError> {
    match split_args(args)
        .map_err(|why| bad(command, why))?
        .as_slice()
    {
        [Arg::Text(name)] => Ok(name.clone()),
        _ => Err(bad(command, "expected one quoted name")),
    }
}

/// `AT+QFUPL=<name>[,<file_size>[,<timeout>[,<ackmode>]]]`; the name and
/// the size are checked against the UFS when the command runs.
fn parse_qfupl(args: &str) -> Result<UploadRequest, ParseError> {
    const C: &str = "+QFUPL";
    let args = split_args(args).map_err(|why| bad(C, why))?;
    let Some(Arg::Text(name)) = args.first() else {
        return Err(bad(C, "<filename> must be a quoted string"));
    };
    if args.len() > 4 {
        return Err(bad(C, "too many arguments"));
    }
    let number = |i: usize, default: u32, range: std::ops::RangeInclusive<u32>, what: &str| {
        match args.get(i) {
            None => Ok(default),
            Some(Arg::Number(n)) if range.contains(n) => Ok(*n),
            _ => Err(bad(C, format!("<{what}> must be a number in {range:?}"))),
        }
    };
    let default_size = u32::try_from(DEFAULT_UPLOAD_SIZE).unwrap_or(u32::MAX);
    Ok(UploadRequest {
        name: name.clone(),
        size: u64::from(number(1, default_size, 0..=u32::MAX, "file_size")?),
        timeout: number(2, DEFAULT_UPLOAD_TIMEOUT, 1..=65535, "timeout")?,
        ack: number(3, 0, 0..=1, "ackmode")? == 1,
    })
}

/// `AT+QFLST=<pattern>`: the matching files; an exact name that matches
/// nothing is 405, as a module answers it (fwupd's DFOTA plugin deletes
/// the file only when this succeeds).
fn list_files(device: &Device<'_>, pattern: &str) -> Result<Vec<String>, FileError> {
    let files = device.module.ufs().list(pattern)?;
    if files.is_empty() && !pattern.contains(['*', '?']) {
        return Err(FileError::NotFound(pattern.to_string()));
    }
    Ok(files
        .iter()
        .map(|f| format!("+QFLST: \"{}\",{}", f.name, f.size))
        .collect())
}

/// The one `<contextID>` of `AT+QIACT`, `AT+QIDEACT`.
fn parse_cid(args: &str, command: &'static str) -> Result<u8, ParseError> {
    let args = split_args(args).map_err(|why| bad(command, why))?;
    if args.len() != 1 {
        return Err(bad(command, "expected <contextID>"));
    }
    number_in(args.first(), 1..=u32::from(MAX_CID), command, "contextID")
}

/// `AT+CGACT=<state>[,<cid>[,<cid>…]]`.
fn parse_cgact(args: &str) -> Result<Command, ParseError> {
    const C: &str = "+CGACT";
    let args = split_args(args).map_err(|why| bad(C, why))?;
    let state = number_in(args.first(), 0..=1, C, "state")? == 1;
    let cids = args[1..]
        .iter()
        .map(|a| number_in(Some(a), 1..=u32::from(MAX_CID), C, "cid"))
        .collect::<Result<_, _>>()?;
    Ok(Command::ContextActivation(state, cids))
}

/// `AT+CGDCONT=<cid>[,"<PDP_type>"[,"<APN>"[,…]]]`: what follows the APN
/// (address, compression, …) is taken and not kept.
fn parse_cgdcont(args: &str) -> Result<Command, ParseError> {
    const C: &str = "+CGDCONT";
    let args = split_args(leading_args(args, 3)).map_err(|why| bad(C, why))?;
    let cid = number_in(args.first(), 1..=u32::from(MAX_CID), C, "cid")?;
    let Some(pdp_type) = args.get(1) else {
        return Ok(Command::UndefineContext(cid));
    };
    let context_type = match pdp_type {
        Arg::Text(t) if t.eq_ignore_ascii_case("IP") => 1,
        Arg::Text(t) if t.eq_ignore_ascii_case("IPV6") => 2,
        Arg::Text(t) if t.eq_ignore_ascii_case("IPV4V6") => 3,
        _ => return Err(bad(C, "<PDP_type> is \"IP\", \"IPV6\" or \"IPV4V6\"")),
    };
    let apn = match args.get(2) {
        None => String::new(),
        apn => text(apn, C, "APN")?,
    };
    Ok(Command::DefineContext(cid, context_type, apn))
}

/// The first `n` comma-separated arguments of `args` (commas inside
/// quotes do not count): what follows may leave parameters out (`,,`).
fn leading_args(args: &str, n: usize) -> &str {
    let mut quoted = false;
    let mut commas = 0;
    for (i, c) in args.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                commas += 1;
                if commas == n {
                    return &args[..i];
                }
            }
            _ => {}
        }
    }
    args
}

/// `AT+COPS=<mode>[,<format>[,"<oper>"[,<AcT>]]]`.
fn parse_cops(args: &str) -> Result<Command, ParseError> {
    const C: &str = "+COPS";
    let args = split_args(args).map_err(|why| bad(C, why))?;
    if args.len() > 4 {
        return Err(bad(C, "too many arguments"));
    }
    let mode = number_in(args.first(), 0..=4, C, "mode")?;
    let format = optional_number(args.get(1), 0..=2, C, "format")?;
    let operator = match args.get(2) {
        None => None,
        Some(Arg::Text(name)) => Some(name.clone()),
        Some(Arg::Number(n)) => Some(n.to_string()),
    };
    optional_number(args.get(3), 0..=7, C, "AcT")?;
    if matches!(mode, 1 | 4) && operator.is_none() {
        return Err(bad(C, "manual selection needs <format>,\"<oper>\""));
    }
    if mode == 3 && format.is_none() {
        return Err(bad(C, "mode 3 needs <format>"));
    }
    Ok(Command::OperatorSelect {
        mode,
        format,
        operator,
    })
}

fn parse_ipr(args: &str) -> Result<u32, ParseError> {
    const C: &str = "+IPR";
    match split_args(args).map_err(|why| bad(C, why))?.as_slice() {
        [Arg::Number(rate)] if BAUD_RATES.contains(rate) => Ok(*rate),
        _ => Err(bad(C, "<rate> must be one of the rates AT+IPR=? lists")),
    }
}

fn parse_icf(args: &str) -> Result<Command, ParseError> {
    const C: &str = "+ICF";
    let args = split_args(args).map_err(|why| bad(C, why))?;
    if args.len() > 2 {
        return Err(bad(C, "too many arguments"));
    }
    let format = number_in(args.first(), 1..=6, C, "format")?;
    let parity = optional_number(args.get(1), 0..=3, C, "parity")?.unwrap_or(3);
    Ok(Command::Framing(format, parity))
}

fn parse_cscs(args: &str) -> Result<&'static str, ParseError> {
    const C: &str = "+CSCS";
    match split_args(args).map_err(|why| bad(C, why))?.as_slice() {
        [Arg::Text(set)] => CHARSETS
            .into_iter()
            .find(|c| c.eq_ignore_ascii_case(set))
            .ok_or_else(|| bad(C, format!("unknown character set {set:?}"))),
        _ => Err(bad(C, "expected one quoted character set")),
    }
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

/// Module-wide settings the commands change. Those a real module keeps in
/// non-volatile memory survive reboots; [`Settings::reset_on_boot`] resets
/// the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Contexts set with `AT+QICSGP`; context 1 always exists.
    pub contexts: BTreeMap<u8, PdpContext>,
    /// Activated contexts (context 1 is the LTE default bearer, active
    /// after boot).
    pub active: BTreeSet<u8>,
    /// `fota/cid` (`ec200`), default 1.
    pub fota_cid: u8,
    /// The port settings `AT&W` saved: each port starts with them after a
    /// boot, and `ATZ` loads them.
    pub profile: PortSettings,
    /// `<n>` of `AT+CREG`, `AT+CGREG`, `AT+CEREG` (0 after boot).
    pub reg_urc: [u8; 3],
    /// `AT+CFUN` level: 1 full, 0 or 4 radio off (1 after boot).
    pub fun: u8,
    /// `AT+QCFG="usbifc"`.
    pub usb_ifc: (u8, u8),
    /// `AT+QCFG` number items ([`QCFG_NUMBERS`]) set since start; the
    /// others read 0.
    pub qcfg: BTreeMap<&'static str, u8>,
    /// `AT+QURCCFG="urcport"`.
    pub urc_port: String,
    /// The network is gone (runtime control `network-down`; survives
    /// boots, as the module's surroundings do).
    pub network_cut: bool,
    /// `<rssi>` of `AT+CSQ` while registered (runtime control `signal`;
    /// default 24).
    pub csq: u8,
    /// `AT+COPS` `<mode>` now: 0 automatic, 1 manual, 2 deregistered (0
    /// after boot).
    pub cops_mode: u8,
    /// `AT+COPS` `<format>`: 0 long, 1 short, 2 numeric (0 after boot).
    pub cops_format: u8,
    /// Detached from the packet domain (`AT+CGATT=0`; attached after boot).
    pub detached: bool,
    /// `AT+IPR` rate, bits per second (kept, as a module keeps it).
    pub baud_rate: u32,
    /// `AT+ICF` `<format>,<parity>` (kept).
    pub framing: (u8, u8),
    /// `AT+CSCS` character set (kept).
    pub charset: &'static str,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            contexts: BTreeMap::from([(1, PdpContext::default())]),
            active: BTreeSet::from([1]),
            fota_cid: 1,
            profile: PortSettings::default(),
            reg_urc: [0; 3],
            fun: 1,
            usb_ifc: (0, 0),
            qcfg: BTreeMap::new(),
            network_cut: false,
            csq: DEFAULT_CSQ,
            urc_port: URC_PORTS[0].to_string(),
            cops_mode: 0,
            cops_format: 0,
            detached: false,
            baud_rate: DEFAULT_BAUD_RATE,
            framing: (3, 3),
            charset: CHARSETS[0],
        }
    }
}

impl Settings {
    /// What a boot resets: only the default bearer is active (the modem
    /// then sets the module's configured contexts), the radio is on and
    /// registered automatically, attached, no registration URCs.
    pub fn reset_on_boot(&mut self) {
        self.active = BTreeSet::from([1]);
        self.reg_urc = [0; 3];
        self.fun = 1;
        self.cops_mode = 0;
        self.cops_format = 0;
        self.detached = false;
    }

    /// Whether a data connection could exist: radio on, not deregistered
    /// (`AT+COPS=2`) and the network not cut.
    pub fn network_reachable(&self) -> bool {
        self.radio_on() && !self.deregistered() && !self.network_cut
    }

    /// Deregistered with `AT+COPS=2`.
    pub fn deregistered(&self) -> bool {
        self.cops_mode == 2
    }

    /// The operator's name in `AT+COPS` format `format`.
    fn operator_name(format: u8) -> &'static str {
        if format == 2 {
            OPERATOR_NUMERIC
        } else {
            OPERATOR
        }
    }

    /// Whether the radio is on (`AT+CFUN=1`).
    pub fn radio_on(&self) -> bool {
        self.fun == 1
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
    /// IMEI (`AT+GSN`).
    pub imei: &'a str,
}

impl Device<'_> {
    /// The firmware version shown by `ATI`, `AT+GMR`, `AT+QGMR`.
    pub fn revision(&self) -> String {
        self.module
            .version()
            .unwrap_or_else(|| UNKNOWN_REVISION.to_string())
    }

    /// The registration `<stat>`: 0 radio off or deregistered
    /// (`AT+COPS=2`; not searching), 2 searching (fault `network-down`), 1
    /// registered (home).
    pub fn reg_stat(&self, settings: &Settings) -> u8 {
        if !settings.radio_on() || settings.deregistered() {
            0
        } else if settings.network_cut || self.module.faults().contains(&Fault::NetworkDown) {
            2
        } else {
            1
        }
    }

    /// Whether the module has a data connection.
    pub fn network_up(&self, settings: &Settings) -> bool {
        self.reg_stat(settings) == 1
    }
}

/// The `<stat>[,"<lac>","<ci>",7]` part of a registration line for mode
/// `n`.
/// (`+CEREG` shows its tracking area code in the `<lac>` place.)
fn reg_fields(n: u8, stat: u8) -> String {
    if n == 2 && stat == 1 {
        format!("{stat},\"{LAC}\",\"{CELL_ID}\",7")
    } else {
        stat.to_string()
    }
}

/// The unsolicited registration lines (`+CREG: <stat>…`) for a change
/// from `before` to `after`, per the `AT+CREG=<n>` modes in `settings`.
pub fn registration_urcs(settings: &Settings, before: u8, after: u8) -> Vec<String> {
    if before == after {
        return Vec::new();
    }
    Registration::ALL
        .iter()
        .filter_map(|&which| {
            let n = settings.reg_urc[which.index()];
            (n > 0).then(|| format!("{}: {}", which.prefix(), reg_fields(n, after)))
        })
        .collect()
}

/// What the commands of one line and the port they came from can change.
#[derive(Debug)]
pub struct Context<'a> {
    /// Module-wide settings.
    pub settings: &'a mut Settings,
    /// This port's settings.
    pub port: &'a mut PortSettings,
    /// The module.
    pub device: Device<'a>,
}

/// How a command line ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The final result code, now.
    Result(Result<(), CmeError>),
    /// `AT+CFUN=<fun>,1`: `OK`, then reboot.
    Reboot,
    /// `AT+QPOWD`: `OK`, `POWERED DOWN`, then off.
    PowerDown,
    /// `AT+QFOTADL=<args>`: the simulated module answers (`OK`/`ERROR`)
    /// once it has checked the command.
    Fotadl(String),
    /// `AT+QFUPL`, checked: `CONNECT`, then the data phase.
    Upload(UploadRequest),
}

/// What a command line printed and how it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineOutcome {
    /// Information text, one block per command run.
    pub info: Vec<Vec<String>>,
    /// The end.
    pub end: End,
}

/// One command's effect.
enum Step {
    Done(Vec<String>),
    Fail(CmeError),
    End(End),
}

/// Runs the commands of one line, left to right, until one fails or ends
/// the line; then the line's parse error, if any, is its result.
pub fn run_line(line: Line, ctx: &mut Context<'_>) -> LineOutcome {
    let mut info = Vec::new();
    for command in line.commands {
        match execute(command, ctx) {
            Step::Done(lines) => info.push(lines),
            Step::Fail(e) => {
                return LineOutcome {
                    info,
                    end: End::Result(Err(e)),
                };
            }
            Step::End(end) => return LineOutcome { info, end },
        }
    }
    LineOutcome {
        info,
        end: End::Result(line.failed.map_or(Ok(()), |e| Err(e.cme()))),
    }
}

fn set_port(port: &mut PortSettings, setting: PortSetting) {
    match setting {
        PortSetting::Echo(on) => port.echo = on,
        PortSetting::Verbose(on) => port.verbose = on,
        PortSetting::Quiet(on) => port.quiet = on,
        PortSetting::CallProgress(n) => port.x = n,
        PortSetting::Dcd(n) => port.dcd = n,
        PortSetting::Dtr(n) => port.dtr = n,
        PortSetting::ErrorMode(n) => port.cmee = n,
        PortSetting::FlowControl(a, b) => port.ifc = (a, b),
    }
}

fn execute(command: Command, ctx: &mut Context<'_>) -> Step {
    let device = ctx.device;
    let settings = &mut *ctx.settings;
    let one = |line: String| Step::Done(vec![line]);
    let ok = || Step::Done(Vec::new());
    let up = device.network_up(settings);
    match command {
        Command::Set(setting) => {
            set_port(ctx.port, setting);
            ok()
        }
        Command::LoadProfile => {
            *ctx.port = settings.profile;
            ok()
        }
        Command::FactoryDefaults => {
            *ctx.port = PortSettings::default();
            ok()
        }
        Command::SaveProfile => {
            settings.profile = *ctx.port;
            ok()
        }
        Command::Info => Step::Done(vec![
            MANUFACTURER.to_string(),
            device.model.to_string(),
            format!("Revision: {}", device.revision()),
        ]),
        Command::Revision => one(device.revision()),
        Command::Manufacturer => one(MANUFACTURER.to_string()),
        Command::Model => one(device.model.to_string()),
        Command::Imei => one(device.imei.to_string()),
        Command::Imsi => one(IMSI.to_string()),
        Command::Iccid(true) => one(format!("+QCCID: {ICCID}")),
        Command::Iccid(false) => one(format!("+CCID: {ICCID}")),
        Command::Capabilities => one(CAPABILITIES.to_string()),
        Command::PinStatus => one("+CPIN: READY".to_string()),
        Command::ErrorModeRead => one(format!("+CMEE: {}", ctx.port.cmee)),
        Command::FlowControlRead => one(format!("+IFC: {},{}", ctx.port.ifc.0, ctx.port.ifc.1)),
        Command::Registration(which) => {
            let n = settings.reg_urc[which.index()];
            let stat = device.reg_stat(settings);
            one(format!("{}: {n},{}", which.prefix(), reg_fields(n, stat)))
        }
        Command::RegistrationMode(which, n) => {
            settings.reg_urc[which.index()] = n;
            ok()
        }
        Command::SignalQuality => one(format!("+CSQ: {},99", if up { settings.csq } else { 99 })),
        Command::Operator if settings.deregistered() => one("+COPS: 2".to_string()),
        Command::Operator if up => one(format!(
            "+COPS: {},{},\"{}\",7",
            settings.cops_mode,
            settings.cops_format,
            Settings::operator_name(settings.cops_format)
        )),
        Command::Operator => one(format!("+COPS: {}", settings.cops_mode)),
        Command::OperatorSelect {
            mode,
            format,
            operator,
        } => {
            let format = format.unwrap_or(settings.cops_format);
            let ours = operator
                .as_deref()
                .is_none_or(|name| name == Settings::operator_name(format));
            match mode {
                // Manual selection of another network: not found.
                1 if !ours => return Step::Fail(CmeError::NoNetwork),
                1 => settings.cops_mode = 1,
                2 => settings.cops_mode = 2,
                // Format only (3), or back to automatic (0, and 4 when the
                // manual choice is not found).
                3 => {}
                4 if ours => settings.cops_mode = 1,
                _ => settings.cops_mode = 0,
            }
            settings.cops_format = format;
            ok()
        }
        Command::ContextDefinitions => Step::Done(
            settings
                .contexts
                .iter()
                .map(|(cid, c)| {
                    let pdp_type = match c.context_type {
                        2 => "IPV6",
                        3 => "IPV4V6",
                        _ => "IP",
                    };
                    format!(
                        "+CGDCONT: {cid},\"{pdp_type}\",\"{}\",\"0.0.0.0\",0,0,0,0",
                        c.apn
                    )
                })
                .collect(),
        ),
        Command::AttachState => one(format!("+CGATT: {}", u8::from(up && !settings.detached))),
        Command::Attach(true) if !up => Step::Fail(CmeError::NoNetwork),
        Command::Attach(true) => {
            // An LTE attach brings the default bearer up.
            settings.detached = false;
            settings.active.insert(1);
            ok()
        }
        Command::Attach(false) => {
            settings.detached = true;
            settings.active.clear();
            ok()
        }
        Command::ContextActivation(on, cids) => {
            let cids: Vec<u8> = if cids.is_empty() {
                settings.contexts.keys().copied().collect()
            } else {
                cids
            };
            if cids.iter().any(|cid| !settings.contexts.contains_key(cid)) {
                return Step::Fail(CmeError::IncorrectParameters);
            }
            if on && !up {
                return Step::Fail(CmeError::NoNetwork);
            }
            for cid in cids {
                if on {
                    settings.active.insert(cid);
                } else {
                    settings.active.remove(&cid);
                }
            }
            if on {
                settings.detached = false;
            }
            ok()
        }
        Command::DefineContext(cid, context_type, apn) => {
            let context = settings.contexts.entry(cid).or_default();
            context.context_type = context_type;
            context.apn = apn;
            ok()
        }
        Command::UndefineContext(1) => {
            settings.contexts.insert(1, PdpContext::default());
            ok()
        }
        Command::UndefineContext(cid) => {
            settings.contexts.remove(&cid);
            settings.active.remove(&cid);
            ok()
        }
        Command::BaudRateRead => one(format!("+IPR: {}", settings.baud_rate)),
        Command::BaudRate(rate) => {
            settings.baud_rate = rate;
            ok()
        }
        Command::FramingRead => one(format!(
            "+ICF: {},{}",
            settings.framing.0, settings.framing.1
        )),
        Command::Framing(format, parity) => {
            settings.framing = (format, parity);
            ok()
        }
        Command::CharsetRead => one(format!("+CSCS: \"{}\"", settings.charset)),
        Command::Charset(set) => {
            settings.charset = set;
            ok()
        }
        Command::ActivityStatus => one("+CPAS: 0".to_string()),
        Command::ContextStates => Step::Done(
            settings
                .contexts
                .keys()
                .map(|cid| {
                    let state = u8::from(up && settings.active.contains(cid));
                    format!("+CGACT: {cid},{state}")
                })
                .collect(),
        ),
        Command::ActiveContexts => Step::Done(if up {
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
        }),
        Command::Activate(_) if !up => Step::Fail(CmeError::NoNetwork),
        Command::Activate(cid) => {
            settings.contexts.entry(cid).or_default();
            settings.active.insert(cid);
            settings.detached = false;
            ok()
        }
        Command::Deactivate(cid) => {
            settings.active.remove(&cid);
            ok()
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
            ok()
        }
        Command::ShowFotaCid | Command::SetFotaCid(_)
            if !device.module.profile().optional_params =>
        {
            Step::Fail(CmeError::NotSupported)
        }
        Command::ShowFotaCid => one(format!("+QFOTA: \"fota/cid\",{}", settings.fota_cid)),
        Command::SetFotaCid(cid) => {
            settings.fota_cid = cid;
            ok()
        }
        Command::FunctionalityRead => one(format!("+CFUN: {}", settings.fun)),
        Command::Functionality { reset: true, .. } => Step::End(End::Reboot),
        Command::Functionality { fun, reset: false } => {
            settings.fun = fun;
            ok()
        }
        Command::PowerDown => Step::End(End::PowerDown),
        Command::UsbFlowControlRead => one(format!(
            "+QCFG: \"usbifc\",{},{}",
            settings.usb_ifc.0, settings.usb_ifc.1
        )),
        Command::ConfigRead(name) => one(format!(
            "+QCFG: \"{name}\",{}",
            settings.qcfg.get(name).copied().unwrap_or(0)
        )),
        Command::ConfigSet(name, n) => {
            settings.qcfg.insert(name, n);
            ok()
        }
        Command::MessageStorage => one("+CPMS: \"ME\",0,255,\"ME\",0,255,\"ME\",0,255".to_string()),
        Command::UsbFlowControl(a, b) => {
            settings.usb_ifc = (a, b);
            ok()
        }
        Command::UrcPortRead => one(format!("+QURCCFG: \"urcport\",\"{}\"", settings.urc_port)),
        Command::UrcPort(port) => {
            settings.urc_port = port;
            ok()
        }
        Command::Test(name) => match test_answer(&name, &device) {
            Some(lines) => Step::Done(lines),
            None => Step::Fail(CmeError::NotSupported),
        },
        Command::Fotadl(args) => Step::End(End::Fotadl(args)),
        Command::Upload(request) => {
            match device.module.ufs().prepare(&request.name, request.size) {
                Ok(_) => Step::End(End::Upload(request)),
                Err(e) => Step::Fail(CmeError::File(e.code())),
            }
        }
        Command::ListFiles(pattern) => match list_files(&device, &pattern) {
            Ok(lines) => Step::Done(lines),
            Err(e) => Step::Fail(CmeError::File(e.code())),
        },
        Command::DeleteFile(name) => match device.module.ufs().delete(&name) {
            Ok(_) => ok(),
            Err(e) => Step::Fail(CmeError::File(e.code())),
        },
        Command::FreeSpace => {
            let space = device.module.ufs().space();
            one(format!("+QFLDS: {},{}", space.free, space.total))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modem::reply;
    use crate::profile::Profile;

    fn module(profile: &str, faults: &[Fault]) -> Module {
        Module::builder(Profile::by_name(profile).unwrap())
            .version("v12")
            .faults(faults.iter().copied())
            .build()
            .unwrap()
    }

    /// A port of an EC25-like device: runs lines and renders the answers
    /// as the session writes them (echo aside).
    struct Port<'m> {
        module: &'m Module,
        settings: Settings,
        port: PortSettings,
    }

    impl<'m> Port<'m> {
        fn new(module: &'m Module) -> Self {
            Port {
                module,
                settings: Settings::default(),
                port: PortSettings::default(),
            }
        }

        /// The outcome of a line; `None` for an empty one.
        fn run(&mut self, line: &str) -> Option<LineOutcome> {
            let commands = match parse(line) {
                Ok(None) => return None,
                Ok(Some(c)) => c,
                Err(e) => {
                    return Some(LineOutcome {
                        info: Vec::new(),
                        end: End::Result(Err(e.cme())),
                    });
                }
            };
            let mut ctx = Context {
                settings: &mut self.settings,
                port: &mut self.port,
                device: Device {
                    module: self.module,
                    model: "EC25",
                    imei: "867675040000011",
                },
            };
            Some(run_line(commands, &mut ctx))
        }

        fn wire(&mut self, line: &str) -> String {
            let Some(outcome) = self.run(line) else {
                return String::new();
            };
            let mut out = reply::info(&outcome.info, &self.port);
            match outcome.end {
                End::Result(r) => out.extend(reply::result(r, &self.port)),
                other => out.extend(format!("{other:?}").into_bytes()),
            }
            String::from_utf8(out).unwrap()
        }

        fn check(&mut self, cases: &[(&str, &str)]) {
            for (line, want) in cases {
                assert_eq!(self.wire(line), *want, "{line:?}");
            }
        }
    }

    #[test]
    fn identity_commands_answer_exactly() {
        let m = module("ec2x", &[]);
        Port::new(&m).check(&[
            ("AT", "\r\nOK\r\n"),
            ("at", "\r\nOK\r\n"),
            ("ATI", "\r\nQuectel\r\nEC25\r\nRevision: v12\r\n\r\nOK\r\n"),
            ("ati0", "\r\nQuectel\r\nEC25\r\nRevision: v12\r\n\r\nOK\r\n"),
            ("AT+GMR", "\r\nv12\r\n\r\nOK\r\n"),
            ("AT+CGMR", "\r\nv12\r\n\r\nOK\r\n"),
            ("at+qgmr", "\r\nv12\r\n\r\nOK\r\n"),
            ("AT+CGMI", "\r\nQuectel\r\n\r\nOK\r\n"),
            ("AT+GMI", "\r\nQuectel\r\n\r\nOK\r\n"),
            ("AT+CGMM", "\r\nEC25\r\n\r\nOK\r\n"),
            ("AT+GMM", "\r\nEC25\r\n\r\nOK\r\n"),
            ("AT+GSN", "\r\n867675040000011\r\n\r\nOK\r\n"),
            ("AT+CGSN", "\r\n867675040000011\r\n\r\nOK\r\n"),
            ("AT+CIMI", "\r\n001010123456789\r\n\r\nOK\r\n"),
            ("AT+QCCID", "\r\n+QCCID: 89001012012341234567\r\n\r\nOK\r\n"),
            ("AT+CCID", "\r\n+CCID: 89001012012341234567\r\n\r\nOK\r\n"),
            ("AT+GCAP", "\r\n+GCAP: +CGSM\r\n\r\nOK\r\n"),
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
            ("AT+CMEE?", "\r\n+CMEE: 0\r\n\r\nOK\r\n"),
            ("AT+IFC?", "\r\n+IFC: 0,0\r\n\r\nOK\r\n"),
            ("AT+IFC=2,2", "\r\nOK\r\n"),
            ("AT+IFC?", "\r\n+IFC: 2,2\r\n\r\nOK\r\n"),
            (
                "AT+QCFG=\"usbifc\"",
                "\r\n+QCFG: \"usbifc\",0,0\r\n\r\nOK\r\n",
            ),
            ("AT+QCFG=\"usbifc\",2,2", "\r\nOK\r\n"),
            (
                "AT+QCFG=\"USBIFC\"",
                "\r\n+QCFG: \"usbifc\",2,2\r\n\r\nOK\r\n",
            ),
            (
                "AT+QURCCFG=\"urcport\"",
                "\r\n+QURCCFG: \"urcport\",\"usbat\"\r\n\r\nOK\r\n",
            ),
            ("AT+QURCCFG=\"urcport\",\"uart1\"", "\r\nOK\r\n"),
            (
                "AT+QURCCFG=\"urcport\"",
                "\r\n+QURCCFG: \"urcport\",\"uart1\"\r\n\r\nOK\r\n",
            ),
            ("  AT  ", "\r\nOK\r\n"),
            ("", ""),
            (" \t", ""),
        ]);
    }

    #[test]
    fn chains_and_compound_commands() {
        let m = module("ec2x", &[]);
        let mut p = Port::new(&m);
        p.check(&[
            (
                "AT+CSQ;+CREG?",
                "\r\n+CSQ: 24,99\r\n\r\n+CREG: 0,1\r\n\r\nOK\r\n",
            ),
            ("ATE0 V1", "\r\nOK\r\n"),
            ("ATE0V1Q0X4&C1&D2", "\r\nOK\r\n"),
            (
                "AT+CGMI;+CGMM;I",
                "\r\nQuectel\r\n\r\nEC25\r\n\r\nQuectel\r\nEC25\r\nRevision: v12\r\n\r\nOK\r\n",
            ),
            // A command that does not parse ends the line: what came
            // before it runs, and keeps its effect (V.250 §5.2).
            ("AT+CGMI;+FOO;+CGMM", "\r\nQuectel\r\n\r\nERROR\r\n"),
            ("AT+CGMI;+QIACT=0", "\r\nQuectel\r\n\r\nERROR\r\n"),
            ("AT+CFUN=4;+NOSUCH", "\r\nERROR\r\n"),
            ("AT+CFUN?", "\r\n+CFUN: 4\r\n\r\nOK\r\n"),
            ("AT+CFUN=1", "\r\nOK\r\n"),
            // Not an AT command line at all: nothing runs.
            ("AT+CFUN=4;%", "\r\nERROR\r\n"),
            ("AT+CFUN?", "\r\n+CFUN: 1\r\n\r\nOK\r\n"),
        ]);
        assert!(!p.port.echo && p.port.verbose);
        // A line that ends the chain: what follows does not run.
        let out = p.run("AT+CGMI;+CFUN=1,1;+CFUN=0").unwrap();
        assert_eq!(out.end, End::Reboot);
        assert_eq!(p.settings.fun, 1);
        let out = p.run("AT+QFOTADL=\"ftp://h/a.zip\";+CGMM").unwrap();
        assert_eq!(out.end, End::Fotadl("\"ftp://h/a.zip\"".into()));
        assert_eq!(p.run("AT+QPOWD=1").unwrap().end, End::PowerDown);
        assert_eq!(p.run("AT+QPOWD").unwrap().end, End::PowerDown);
    }

    #[test]
    fn numeric_codes_and_cmee_forms() {
        let m = module("ec2x", &[]);
        let mut p = Port::new(&m);
        p.check(&[
            ("ATV0", "0\r"),
            ("AT+CSQ", "+CSQ: 24,99\r\n0\r"),
            ("AT+NOPE", "4\r"),
            ("ATV1", "\r\nOK\r\n"),
            ("AT+CMEE=1", "\r\nOK\r\n"),
            ("AT+NOPE", "\r\n+CME ERROR: 4\r\n"),
            ("AT+CFUN=7", "\r\n+CME ERROR: 50\r\n"),
            ("hello", "\r\n+CME ERROR: 100\r\n"),
            ("AT+QFOTA=\"fota/cid\"", "\r\n+CME ERROR: 4\r\n"),
            ("AT+CMEE=2", "\r\nOK\r\n"),
            ("AT+CFUN=7", "\r\n+CME ERROR: incorrect parameters\r\n"),
            ("AT+CMEE?", "\r\n+CMEE: 2\r\n\r\nOK\r\n"),
            ("ATQ1", ""),
            ("AT+CGMI", "\r\nQuectel\r\n"),
            ("ATQ0", "\r\nOK\r\n"),
        ]);
    }

    #[test]
    fn profile_save_load_and_factory_defaults() {
        let m = module("ec2x", &[]);
        let mut p = Port::new(&m);
        p.check(&[("ATE0", "\r\nOK\r\n"), ("AT+CMEE=1", "\r\nOK\r\n")]);
        p.check(&[("AT&W", "\r\nOK\r\n"), ("AT&F", "\r\nOK\r\n")]);
        assert_eq!(p.port, PortSettings::default());
        p.check(&[("ATZ", "\r\nOK\r\n")]);
        assert!(!p.port.echo);
        assert_eq!(p.port.cmee, 1);
        assert_eq!(p.settings.profile, p.port);
    }

    #[test]
    fn radio_off_and_registration_urcs() {
        let m = module("ec2x", &[]);
        let mut p = Port::new(&m);
        p.check(&[
            ("AT+CGATT?", "\r\n+CGATT: 1\r\n\r\nOK\r\n"),
            ("AT+CPAS", "\r\n+CPAS: 0\r\n\r\nOK\r\n"),
            (
                "AT+CPMS?",
                "\r\n+CPMS: \"ME\",0,255,\"ME\",0,255,\"ME\",0,255\r\n\r\nOK\r\n",
            ),
            (
                "AT+QCFG=\"usbnet\"",
                "\r\n+QCFG: \"usbnet\",0\r\n\r\nOK\r\n",
            ),
            ("AT+QCFG=\"usbnet\",2", "\r\nOK\r\n"),
            (
                "AT+QCFG=\"usbnet\"",
                "\r\n+QCFG: \"usbnet\",2\r\n\r\nOK\r\n",
            ),
            ("AT+QCFG=\"nwscanmode\",3,1", "\r\nOK\r\n"),
            (
                "AT+QCFG=\"nwscanmode\"",
                "\r\n+QCFG: \"nwscanmode\",3\r\n\r\nOK\r\n",
            ),
            ("AT+QCFG=\"nwscanmode\",4", "\r\nERROR\r\n"),
            ("AT+QCFG=\"usbnet\",1,1", "\r\nERROR\r\n"),
            ("AT+QICSGP=2,3,\"iot.example\"", "\r\nOK\r\n"),
            (
                "AT+CGDCONT?",
                "\r\n+CGDCONT: 1,\"IP\",\"\",\"0.0.0.0\",0,0,0,0\r\n\
                 +CGDCONT: 2,\"IPV4V6\",\"iot.example\",\"0.0.0.0\",0,0,0,0\r\n\r\nOK\r\n",
            ),
            ("AT+CREG=2", "\r\nOK\r\n"),
            (
                "AT+CREG?",
                "\r\n+CREG: 2,1,\"1A2B\",\"01A2B3C4\",7\r\n\r\nOK\r\n",
            ),
            ("AT+CEREG=1", "\r\nOK\r\n"),
            ("AT+CFUN=4", "\r\nOK\r\n"),
            ("AT+CGATT?", "\r\n+CGATT: 0\r\n\r\nOK\r\n"),
            ("AT+CFUN?", "\r\n+CFUN: 4\r\n\r\nOK\r\n"),
            ("AT+CREG?", "\r\n+CREG: 2,0\r\n\r\nOK\r\n"),
            ("AT+CGREG?", "\r\n+CGREG: 0,0\r\n\r\nOK\r\n"),
            ("AT+CSQ", "\r\n+CSQ: 99,99\r\n\r\nOK\r\n"),
            ("AT+QIACT=1", "\r\nERROR\r\n"),
            // The first failure ends the line; what ran before is shown.
            ("AT+CGMI;+QIACT=1;+CGMM", "\r\nQuectel\r\n\r\nERROR\r\n"),
        ]);
        let device = Device {
            module: &m,
            model: "EC25",
            imei: "867675040000011",
        };
        assert_eq!(device.reg_stat(&p.settings), 0);
        assert_eq!(
            registration_urcs(&p.settings, 0, 1),
            vec!["+CREG: 1,\"1A2B\",\"01A2B3C4\",7", "+CEREG: 1"]
        );
        assert_eq!(
            registration_urcs(&p.settings, 1, 0),
            vec!["+CREG: 0", "+CEREG: 0"]
        );
        assert!(registration_urcs(&p.settings, 1, 1).is_empty());
        p.settings.reset_on_boot();
        assert!(p.settings.radio_on());
        assert_eq!(p.settings.reg_urc, [0; 3]);
    }

    #[test]
    fn test_forms_of_every_command() {
        let m = module("ec2x", &[]);
        let mut p = Port::new(&m);
        for name in EXTENDED {
            let out = p.run(&format!("AT{name}=?")).unwrap();
            let want_ok = *name != "+QFOTA";
            assert_eq!(out.end == End::Result(Ok(())), want_ok, "{name}");
        }
        p.check(&[
            ("AT+CMEE=?", "\r\n+CMEE: (0-2)\r\n\r\nOK\r\n"),
            ("AT+CFUN=?", "\r\n+CFUN: (0,1,4),(0,1)\r\n\r\nOK\r\n"),
            ("AT+CGMI=?", "\r\nOK\r\n"),
            ("AT+FOO=?", "\r\nERROR\r\n"),
        ]);
        let ec200 = module("ec200", &[]);
        assert_eq!(
            Port::new(&ec200).wire("AT+QFOTA=?"),
            "\r\n+QFOTA: \"fota/cid\",(1-16)\r\n\r\nOK\r\n"
        );
    }

    #[test]
    fn unknown_and_malformed_lines_are_error() {
        let m = module("ec2x", &[]);
        let mut p = Port::new(&m);
        for line in [
            "A",
            "hello",
            "\u{fffd}\u{fffd}AT",
            "ATX5",
            "ATE2",
            "ATI1",
            "ATZ1",
            "AT+FOO",
            "AT+CREG",
            "AT+CSQ?",
            "AT+GMR=1",
            "AT+CPIN",
            "AT+CFUN=2",
            "AT+CFUN=1,2",
            "AT+CFUN=1,1,1",
            "AT+CFUN=",
            "AT+CMEE=3",
            "AT+CREG=3",
            "AT+IFC=1,1",
            "AT+IFC=2",
            "AT+QPOWD=2",
            "AT+QCFG=\"band\"",
            "AT+QCFG=\"usbifc\",1,1",
            "AT+QURCCFG=\"urcport\",\"com9\"",
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
            "ATS0=0",
        ] {
            assert_eq!(p.wire(line), "\r\nERROR\r\n", "{line:?}");
        }
    }

    #[test]
    fn network_down_is_not_registered() {
        let m = module("ec2x", &[Fault::NetworkDown]);
        Port::new(&m).check(&[
            ("AT+CREG?", "\r\n+CREG: 0,2\r\n\r\nOK\r\n"),
            ("AT+CGREG?", "\r\n+CGREG: 0,2\r\n\r\nOK\r\n"),
            ("AT+CEREG?", "\r\n+CEREG: 0,2\r\n\r\nOK\r\n"),
            ("AT+CSQ", "\r\n+CSQ: 99,99\r\n\r\nOK\r\n"),
            ("AT+COPS?", "\r\n+COPS: 0\r\n\r\nOK\r\n"),
            ("AT+CGACT?", "\r\n+CGACT: 1,0\r\n\r\nOK\r\n"),
            ("AT+QIACT?", "\r\nOK\r\n"),
            ("AT+QIACT=1", "\r\nERROR\r\n"),
            ("AT+CMEE=1", "\r\nOK\r\n"),
            ("AT+QIACT=1", "\r\n+CME ERROR: 30\r\n"),
        ]);
    }

    #[test]
    fn contexts_are_stored_and_shown() {
        let m = module("ec2x", &[]);
        let mut p = Port::new(&m);
        p.check(&[
            (
                "AT+QICSGP=2",
                "\r\n+QICSGP: 1,\"\",\"\",\"\",0\r\n\r\nOK\r\n",
            ),
            (r#"AT+QICSGP=2,1,"cmnet","","",1"#, "\r\nOK\r\n"),
            (
                "AT+QICSGP=2",
                "\r\n+QICSGP: 1,\"cmnet\",\"\",\"\",1\r\n\r\nOK\r\n",
            ),
            (r#"AT+QICSGP=3, 3 ,"Internet" , "u,1" ,"p""#, "\r\nOK\r\n"),
            (
                "AT+QICSGP=3",
                "\r\n+QICSGP: 3,\"Internet\",\"u,1\",\"p\",0\r\n\r\nOK\r\n",
            ),
            (
                "AT+CGACT?",
                "\r\n+CGACT: 1,1\r\n+CGACT: 2,0\r\n+CGACT: 3,0\r\n\r\nOK\r\n",
            ),
            ("AT+QIACT=2", "\r\nOK\r\n"),
            (
                "AT+QIACT?",
                "\r\n+QIACT: 1,1,1,\"10.64.0.1\"\r\n+QIACT: 2,1,1,\"10.64.0.2\"\r\n\r\nOK\r\n",
            ),
        ]);
        p.settings.reset_on_boot();
        p.check(&[(
            "AT+CGACT?",
            "\r\n+CGACT: 1,1\r\n+CGACT: 2,0\r\n+CGACT: 3,0\r\n\r\nOK\r\n",
        )]);
        let long = format!("AT+QICSGP=1,1,\"{}\"", "a".repeat(MAX_CONTEXT_TEXT + 1));
        assert_eq!(p.wire(&long), "\r\nERROR\r\n");
    }

    #[test]
    fn host_setup_commands_set_contexts_attach_and_operator() {
        let m = module("ec2x", &[]);
        let mut p = Port::new(&m);
        p.port.cmee = 1;
        p.check(&[
            // A host's APN set-up before FOTA.
            (r#"AT+CGDCONT=1,"IP","internet""#, "\r\nOK\r\n"),
            (r#"AT+CGDCONT=2,"ipv4v6","iot",,0,0"#, "\r\nOK\r\n"),
            (
                "AT+CGDCONT?",
                "\r\n+CGDCONT: 1,\"IP\",\"internet\",\"0.0.0.0\",0,0,0,0\r\n\
                 +CGDCONT: 2,\"IPV4V6\",\"iot\",\"0.0.0.0\",0,0,0,0\r\n\r\nOK\r\n",
            ),
            (r#"AT+CGDCONT=3,"PPP""#, "\r\n+CME ERROR: 50\r\n"),
            ("AT+CGACT=1,2", "\r\nOK\r\n"),
            ("AT+CGACT?", "\r\n+CGACT: 1,1\r\n+CGACT: 2,1\r\n\r\nOK\r\n"),
            ("AT+CGACT=1,5", "\r\n+CME ERROR: 50\r\n"),
            ("AT+QIDEACT=2", "\r\nOK\r\n"),
            ("AT+CGACT?", "\r\n+CGACT: 1,1\r\n+CGACT: 2,0\r\n\r\nOK\r\n"),
            ("AT+CGDCONT=2", "\r\nOK\r\n"),
            ("AT+CGACT?", "\r\n+CGACT: 1,1\r\n\r\nOK\r\n"),
            // Detach: no context active, until the attach's default bearer.
            ("AT+CGATT=0", "\r\nOK\r\n"),
            (
                "AT+CGATT?;+CGACT?",
                "\r\n+CGATT: 0\r\n\r\n+CGACT: 1,0\r\n\r\nOK\r\n",
            ),
            ("AT+CGATT=1", "\r\nOK\r\n"),
            (
                "AT+CGATT?;+CGACT?",
                "\r\n+CGATT: 1\r\n\r\n+CGACT: 1,1\r\n\r\nOK\r\n",
            ),
            ("AT+CGACT=0", "\r\nOK\r\n"),
            ("AT+CGACT?", "\r\n+CGACT: 1,0\r\n\r\nOK\r\n"),
            ("AT+CGACT=1", "\r\nOK\r\n"),
            // ModemManager's operator queries.
            (
                "AT+COPS=3,2;+COPS?",
                "\r\n+COPS: 0,2,\"00101\",7\r\n\r\nOK\r\n",
            ),
            (
                "AT+COPS=3,0;+COPS?",
                "\r\n+COPS: 0,0,\"qfota-sim\",7\r\n\r\nOK\r\n",
            ),
            (r#"AT+COPS=1,2,"00101""#, "\r\nOK\r\n"),
            ("AT+COPS?", "\r\n+COPS: 1,2,\"00101\",7\r\n\r\nOK\r\n"),
            (r#"AT+COPS=1,2,"00102""#, "\r\n+CME ERROR: 30\r\n"),
            (r#"AT+COPS=4,2,"00102""#, "\r\nOK\r\n"),
            ("AT+COPS?", "\r\n+COPS: 0,2,\"00101\",7\r\n\r\nOK\r\n"),
            ("AT+COPS=1", "\r\n+CME ERROR: 50\r\n"),
            ("AT+COPS=0", "\r\nOK\r\n"),
            // Serial-port settings.
            ("AT+IPR?", "\r\n+IPR: 115200\r\n\r\nOK\r\n"),
            ("AT+IPR=921600;&W", "\r\nOK\r\n"),
            ("AT+IPR?", "\r\n+IPR: 921600\r\n\r\nOK\r\n"),
            ("AT+IPR=1234", "\r\n+CME ERROR: 50\r\n"),
            ("AT+ICF?", "\r\n+ICF: 3,3\r\n\r\nOK\r\n"),
            ("AT+ICF=5,1", "\r\nOK\r\n"),
            ("AT+ICF?", "\r\n+ICF: 5,1\r\n\r\nOK\r\n"),
            ("AT+ICF=7", "\r\n+CME ERROR: 50\r\n"),
            ("AT+ICF=?", "\r\n+ICF: (1-6),(0-3)\r\n\r\nOK\r\n"),
            ("AT+CSCS?", "\r\n+CSCS: \"GSM\"\r\n\r\nOK\r\n"),
            (r#"AT+CSCS="ira""#, "\r\nOK\r\n"),
            ("AT+CSCS?", "\r\n+CSCS: \"IRA\"\r\n\r\nOK\r\n"),
            (r#"AT+CSCS="8859-1""#, "\r\n+CME ERROR: 50\r\n"),
            (
                "AT+CSCS=?",
                "\r\n+CSCS: (\"GSM\",\"IRA\",\"UCS2\")\r\n\r\nOK\r\n",
            ),
        ]);
        assert!(p.wire("AT+IPR=?").starts_with("\r\n+IPR: (4800,9600,"));
        // Deregistration: registration 0, no network for data, until
        // automatic selection again; a boot registers anew.
        let device = Device {
            module: &m,
            model: "EC25",
            imei: "867675040000011",
        };
        p.check(&[("AT+COPS=2", "\r\nOK\r\n")]);
        assert_eq!(device.reg_stat(&p.settings), 0);
        assert!(!p.settings.network_reachable());
        p.check(&[
            ("AT+COPS?", "\r\n+COPS: 2\r\n\r\nOK\r\n"),
            ("AT+CGACT=1,1", "\r\n+CME ERROR: 30\r\n"),
            ("AT+CGATT=1", "\r\n+CME ERROR: 30\r\n"),
        ]);
        p.settings.reset_on_boot();
        assert_eq!(device.reg_stat(&p.settings), 1);
        assert_eq!(p.settings.baud_rate, 921600, "the rate is kept");
    }

    #[test]
    fn file_commands_answer_from_the_ufs() {
        let m = Module::builder(Profile::by_name("ec2x").unwrap())
            .free_space(100)
            .build()
            .unwrap();
        m.ufs().write("a.bin", vec![1; 10]).unwrap();
        m.ufs().write("b.zip", vec![2; 20]).unwrap();
        let mut p = Port::new(&m);
        p.check(&[
            ("AT+QFLST=?", "\r\nOK\r\n"),
            (
                "AT+QFUPL=?",
                "\r\n+QFUPL: <name>,(1-70),(1-65535),(0,1)\r\n\r\nOK\r\n",
            ),
            (
                "AT+QFLST",
                "\r\n+QFLST: \"a.bin\",10\r\n+QFLST: \"b.zip\",20\r\n\r\nOK\r\n",
            ),
            (
                "AT+QFLST=\"UFS:*.zip\"",
                "\r\n+QFLST: \"b.zip\",20\r\n\r\nOK\r\n",
            ),
            ("AT+QFLST=\"*.txt\"", "\r\nOK\r\n"),
            ("AT+QFLDS", "\r\n+QFLDS: 70,100\r\n\r\nOK\r\n"),
            ("AT+QFLDS=\"UFS\"", "\r\n+QFLDS: 70,100\r\n\r\nOK\r\n"),
            ("AT+QFLDS=\"RAM\"", "\r\nERROR\r\n"),
            ("AT+CMEE=1", "\r\nOK\r\n"),
            // fwupd's probe for an old file: absent is an error.
            (
                "AT+QFLST=\"UFS:dfota_update.bin\"",
                "\r\n+CME ERROR: 405\r\n",
            ),
            ("AT+QFDEL=\"dfota_update.bin\"", "\r\n+CME ERROR: 405\r\n"),
            ("AT+QFDEL=\"UFS:a.bin\"", "\r\nOK\r\n"),
            ("AT+QFLDS", "\r\n+QFLDS: 80,100\r\n\r\nOK\r\n"),
            // Checked before CONNECT: exists, full, bad name, size 0.
            ("AT+QFUPL=\"b.zip\",1", "\r\n+CME ERROR: 407\r\n"),
            ("AT+QFUPL=\"c.bin\",81", "\r\n+CME ERROR: 403\r\n"),
            ("AT+QFUPL=\"c.bin\"", "\r\n+CME ERROR: 403\r\n"),
            ("AT+QFUPL=\"c/d\",1", "\r\n+CME ERROR: 406\r\n"),
            ("AT+QFUPL=\"..\",1", "\r\n+CME ERROR: 406\r\n"),
            ("AT+QFUPL=\"UFS:.\",1", "\r\n+CME ERROR: 406\r\n"),
            ("AT+QFUPL=\"c.bin\",0", "\r\n+CME ERROR: 400\r\n"),
            ("AT+QFUPL=\"c.bin\",1,0", "\r\n+CME ERROR: 50\r\n"),
            ("AT+QFUPL=\"c.bin\",1,5,2", "\r\n+CME ERROR: 50\r\n"),
            ("AT+QFUPL=c.bin,1", "\r\n+CME ERROR: 50\r\n"),
            ("AT+QFDEL=\"*\"", "\r\nOK\r\n"),
            ("AT+QFLST", "\r\nOK\r\n"),
        ]);
        let request = |name: &str, size: u64, timeout: u32, ack: bool| {
            End::Upload(UploadRequest {
                name: name.to_string(),
                size,
                timeout,
                ack,
            })
        };
        let mut p = Port::new(&m);
        assert_eq!(
            p.run("AT+QFUPL=\"UFS:dfota_update.bin\",80,5,1")
                .unwrap()
                .end,
            request("UFS:dfota_update.bin", 80, 5, true)
        );
        let big = Module::builder(Profile::by_name("ec2x").unwrap())
            .build()
            .unwrap();
        let mut p = Port::new(&big);
        assert_eq!(
            p.run("AT+QFUPL=\"x\"").unwrap().end,
            request("x", 10240, 5, false)
        );
        assert_eq!(
            p.run("AT+QFUPL=\"x\",1048576,65535,0").unwrap().end,
            request("x", 1_048_576, 65535, false)
        );
    }

    #[test]
    fn fota_cid_is_ec200_only() {
        let m = module("ec200", &[]);
        let mut p = Port::new(&m);
        p.check(&[
            (
                "AT+QFOTA=\"fota/cid\"",
                "\r\n+QFOTA: \"fota/cid\",1\r\n\r\nOK\r\n",
            ),
            ("AT+QFOTA=\"fota/cid\",2", "\r\nOK\r\n"),
            ("at+qfota=\"FOTA/CID\",3", "\r\nOK\r\n"),
            (
                "AT+QFOTA=\"fota/cid\"",
                "\r\n+QFOTA: \"fota/cid\",3\r\n\r\nOK\r\n",
            ),
        ]);
        for bad in [
            "AT+QFOTA=\"fota/cid\",0",
            "AT+QFOTA=\"fota/cid\",17",
            "AT+QFOTA=\"other\",1",
            "AT+QFOTA=\"fota/cid\",1,1",
            "AT+QFOTA=fota/cid,1",
        ] {
            assert_eq!(p.wire(bad), "\r\nERROR\r\n", "{bad}");
        }
        for family in ["ec2x", "ep06", "eg06xk-dfota", "eg06xk"] {
            let other = module(family, &[]);
            assert_eq!(
                Port::new(&other).wire("AT+QFOTA=\"fota/cid\",2"),
                "\r\nERROR\r\n",
                "{family}"
            );
        }
    }

    #[test]
    fn fotadl_test_command_follows_the_family() {
        assert_eq!(
            Port::new(&module("ec200", &[])).wire("AT+QFOTADL=?"),
            "\r\n+QFOTADL: <url>,(0,1),(0,5-100),(0,5-100)\r\n\r\nOK\r\n"
        );
        assert_eq!(
            Port::new(&module("eg06xk", &[])).wire("AT+QFOTADL=?"),
            "\r\nOK\r\n"
        );
    }

    #[test]
    fn fotadl_arguments_reach_the_simulator_as_typed() {
        let m = module("ec2x", &[]);
        let mut p = Port::new(&m);
        assert_eq!(
            p.run(r#"at+qfotadl="FTP://U:P@h/A.zip",1"#).unwrap().end,
            End::Fotadl(r#""FTP://U:P@h/A.zip",1"#.to_string())
        );
        assert_eq!(
            p.run(r#"AT+QFOTADL=""#).unwrap().end,
            End::Fotadl("\"".to_string())
        );
    }

    #[test]
    fn unknown_version_shows_a_placeholder() {
        let m = Module::builder(Profile::by_name("ec2x").unwrap())
            .build()
            .unwrap();
        assert_eq!(Port::new(&m).wire("AT+QGMR"), "\r\nunknown\r\n\r\nOK\r\n");
    }

    #[test]
    fn args_split_on_commas_outside_quotes() {
        assert_eq!(
            split_args(r#"1, "a,b" ,22"#).unwrap(),
            vec![Arg::Number(1), Arg::Text("a,b".into()), Arg::Number(22)]
        );
        for bad in [
            "",
            ",",
            "1,",
            "\"x",
            "\"x\"y",
            "12345678901",
            "4294967296",
            "-1",
            "1 2",
        ] {
            assert!(split_args(bad).is_err(), "{bad:?}");
        }
    }
}

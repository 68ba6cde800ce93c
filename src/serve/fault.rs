//! Server fault rules: make the server misbehave on purpose so a real module
//! (or the simulator) shows `601`/`701` and the host's recovery path can be
//! tested.
//!
//! A rule is one action plus optional matchers, written
//! `action[=value][,key=value]…`:
//!
//! ```text
//! drop-after=50%,path=/big-*.zip
//! ftp-reply=425,command=PASV,times=1
//! status=503,protocol=http,rate=0.3
//! ```
//!
//! Actions: `refuse-login`, `not-found`, `status=<code>`,
//! `ftp-reply=<code>,command=<CMD>`, `drop-after=<bytes>|<pct>%`,
//! `stall-after=<bytes>`, `slow=<bytes/s>`, `corrupt=<offset>`. Matchers:
//! `path` (glob on `/<key>`), `protocol`, `peer` (IP or CIDR), `user`,
//! `times=N` (the first N attempts it applies to), `rate=P` (probability,
//! drawn from one generator seeded with `--fault-seed`). The first rule whose
//! action fits the moment (login, passive, command, request) and whose
//! matchers all match is applied; the download record names it in `fault`.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::dlog::Protocol;

/// FTP commands whose reply `ftp-reply` can replace, with the codes
/// possible for each: what libunftp's hooks can return. `CONNECT` is the
/// greeting, written before libunftp sees the connection (any 4xx/5xx).
/// `SIZE` also answers `MDTM` (both read file metadata), `LIST` also
/// `NLST` and `MLSD`, and `PASV` and `EPSV` share the passive-port hook, so
/// a rule naming either covers both.
pub const FTP_REPLY_SUPPORT: &[(&str, &[u16])] = &[
    ("CONNECT", &[]),
    ("USER", &[530]),
    ("PASS", &[530]),
    ("PASV", &[425]),
    ("EPSV", &[425]),
    ("RETR", STORAGE_CODES),
    ("SIZE", STORAGE_CODES),
    ("CWD", STORAGE_CODES),
    ("LIST", STORAGE_CODES),
];

/// Replies a storage back-end error can carry (unftp-core `ErrorKind`).
const STORAGE_CODES: &[u16] = &[426, 450, 451, 452, 502, 550, 551, 552, 553];

/// A byte count, absolute or a percentage of the package size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// Bytes from the start of the package.
    Bytes(u64),
    /// Percent (0–100) of the package size.
    Percent(f64),
}

impl Amount {
    /// The byte offset this amount names in a package of `size` bytes.
    pub fn of(self, size: u64) -> u64 {
        match self {
            Amount::Bytes(b) => b,
            Amount::Percent(p) => ((size as f64) * p / 100.0).floor() as u64,
        }
    }
}

/// What a rule makes the server do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// FTP login answered 530.
    RefuseLogin,
    /// HTTP 404 / FTP 550 for an existing package.
    NotFound,
    /// HTTP status instead of the package (a 3xx carries a `Location`).
    Status(u16),
    /// Replace the reply to an FTP command (see [`FTP_REPLY_SUPPORT`]).
    FtpReply {
        /// Reply code.
        code: u16,
        /// Upper-case command name.
        command: String,
    },
    /// Close the connection after this many package bytes, having promised
    /// the full length (the reader ends early; the front-end sees a short
    /// package and closes).
    DropAfter(Amount),
    /// Stop sending after this many bytes and keep the connection open.
    StallAfter(u64),
    /// Throttle the body to this many bytes per second.
    Slow(u64),
    /// Flip one byte at this package offset.
    Corrupt(u64),
}

impl Action {
    /// True for actions that change the bytes of a transfer.
    pub fn is_data(&self) -> bool {
        matches!(
            self,
            Action::DropAfter(_) | Action::StallAfter(_) | Action::Slow(_) | Action::Corrupt(_)
        )
    }
}

/// Conditions a rule's attempts must meet.
#[derive(Debug, Clone, Default)]
pub struct Matchers {
    path: Option<globset::GlobMatcher>,
    protocol: Option<Protocol>,
    peer: Option<ipnet::IpNet>,
    user: Option<String>,
    times: Option<u64>,
    rate: Option<f64>,
}

/// One parsed rule.
#[derive(Debug, Clone)]
pub struct FaultRule {
    text: String,
    action: Action,
    matchers: Matchers,
}

impl FaultRule {
    /// The action.
    pub fn action(&self) -> &Action {
        &self.action
    }
}

impl fmt::Display for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A malformed rule: which one, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fault rule {rule:?}: {problem}")]
pub struct FaultParseError {
    /// The rule as written.
    pub rule: String,
    /// What is wrong.
    pub problem: String,
}

fn need<'a>(key: &str, value: Option<&'a str>) -> Result<&'a str, String> {
    value.ok_or_else(|| format!("{key} needs a value ({key}=…)"))
}

fn num<T: FromStr>(key: &str, value: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{key} needs a number, got {value:?}"))
}

impl FromStr for FaultRule {
    type Err = FaultParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |problem: String| FaultParseError {
            rule: s.to_string(),
            problem,
        };
        let mut action = None;
        let mut command = None;
        let mut m = Matchers::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
                None => (part.to_ascii_lowercase(), None),
            };
            let new_action = match key.as_str() {
                "refuse-login" => Some(Action::RefuseLogin),
                "not-found" => Some(Action::NotFound),
                "status" => {
                    let code: u16 = num(&key, need(&key, value).map_err(err)?).map_err(err)?;
                    if !(300..=599).contains(&code) {
                        return Err(err(format!(
                            "status must be an HTTP status 300–599, got {code}"
                        )));
                    }
                    Some(Action::Status(code))
                }
                "ftp-reply" => Some(Action::FtpReply {
                    code: num(&key, need(&key, value).map_err(err)?).map_err(err)?,
                    command: String::new(),
                }),
                "drop-after" => {
                    let v = need(&key, value).map_err(err)?;
                    let amount = match v.strip_suffix('%') {
                        Some(p) => {
                            let p: f64 = num(&key, p).map_err(err)?;
                            if !(0.0..=100.0).contains(&p) {
                                return Err(err(format!(
                                    "drop-after percentage must be 0–100, got {p}"
                                )));
                            }
                            Amount::Percent(p)
                        }
                        None => Amount::Bytes(num(&key, v).map_err(err)?),
                    };
                    Some(Action::DropAfter(amount))
                }
                "stall-after" => Some(Action::StallAfter(
                    num(&key, need(&key, value).map_err(err)?).map_err(err)?,
                )),
                "slow" => {
                    let rate: u64 = num(&key, need(&key, value).map_err(err)?).map_err(err)?;
                    if rate == 0 {
                        return Err(err("slow needs a rate above 0 bytes/s".into()));
                    }
                    Some(Action::Slow(rate))
                }
                "corrupt" => Some(Action::Corrupt(
                    num(&key, need(&key, value).map_err(err)?).map_err(err)?,
                )),
                "command" => {
                    command = Some(need(&key, value).map_err(err)?.to_ascii_uppercase());
                    None
                }
                "path" => {
                    let v = need(&key, value).map_err(err)?;
                    let glob = globset::GlobBuilder::new(v)
                        .literal_separator(true)
                        .build()
                        .map_err(|e| err(format!("bad path glob: {e}")))?;
                    m.path = Some(glob.compile_matcher());
                    None
                }
                "protocol" => {
                    m.protocol = Some(
                        match need(&key, value)
                            .map_err(err)?
                            .to_ascii_lowercase()
                            .as_str()
                        {
                            "ftp" => Protocol::Ftp,
                            "http" => Protocol::Http,
                            "https" => Protocol::Https,
                            other => {
                                return Err(err(format!(
                                    "protocol must be ftp, http or https, got {other:?}"
                                )));
                            }
                        },
                    );
                    None
                }
                "peer" => {
                    let v = need(&key, value).map_err(err)?;
                    let net = v
                        .parse::<ipnet::IpNet>()
                        .or_else(|_| v.parse::<IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            err(format!("peer must be an IP address or CIDR, got {v:?}"))
                        })?;
                    m.peer = Some(net);
                    None
                }
                "user" => {
                    m.user = Some(need(&key, value).map_err(err)?.to_string());
                    None
                }
                "times" => {
                    m.times = Some(num(&key, need(&key, value).map_err(err)?).map_err(err)?);
                    None
                }
                "rate" => {
                    let p: f64 = num(&key, need(&key, value).map_err(err)?).map_err(err)?;
                    if !(0.0..=1.0).contains(&p) {
                        return Err(err(format!("rate must be a probability 0–1, got {p}")));
                    }
                    m.rate = Some(p);
                    None
                }
                other => return Err(err(format!("unknown action or matcher {other:?}"))),
            };
            if let Some(a) = new_action {
                if action.is_some() {
                    return Err(err("a rule has exactly one action".into()));
                }
                action = Some(a);
            }
        }
        let mut action = action.ok_or_else(|| err("no action (refuse-login, not-found, status=, ftp-reply=, drop-after=, stall-after=, slow=, corrupt=)".into()))?;
        if let Action::FtpReply { code, command: c } = &mut action {
            let cmd = command
                .take()
                .ok_or_else(|| err("ftp-reply needs command=<CMD>".into()))?;
            let Some((_, codes)) = FTP_REPLY_SUPPORT.iter().find(|(name, _)| *name == cmd) else {
                let names: Vec<&str> = FTP_REPLY_SUPPORT.iter().map(|(n, _)| *n).collect();
                return Err(err(format!(
                    "ftp-reply supports command {}, not {cmd}",
                    names.join(", ")
                )));
            };
            let any_error = codes.is_empty() && (400..600).contains(code);
            if !any_error && !codes.contains(code) {
                return Err(err(format!(
                    "ftp-reply on {cmd} can be {}",
                    if codes.is_empty() {
                        "any 4xx or 5xx".to_string()
                    } else {
                        format!("{codes:?}")
                    }
                )));
            }
            if m.path.is_some() && !matches!(cmd.as_str(), "RETR" | "SIZE" | "CWD" | "LIST") {
                return Err(err(format!("{cmd} carries no path: drop the path matcher")));
            }
            *c = cmd;
        } else if command.is_some() {
            return Err(err("command= goes with ftp-reply only".into()));
        }
        match &action {
            Action::RefuseLogin if m.path.is_some() => {
                return Err(err(
                    "refuse-login happens before any path: drop the path matcher".into(),
                ));
            }
            Action::RefuseLogin | Action::FtpReply { .. }
                if matches!(m.protocol, Some(Protocol::Http | Protocol::Https)) =>
            {
                return Err(err("this action is FTP only".into()));
            }
            Action::Status(_) if m.protocol == Some(Protocol::Ftp) => {
                return Err(err("status= is HTTP only (use ftp-reply= for FTP)".into()));
            }
            _ => {}
        }
        Ok(FaultRule {
            text: s.trim().to_string(),
            action,
            matchers: m,
        })
    }
}

/// What an attempt looks like when rules are consulted.
#[derive(Debug, Clone, Copy)]
pub struct AttemptInfo<'a> {
    /// Transport.
    pub protocol: Protocol,
    /// Client IP address.
    pub peer: IpAddr,
    /// FTP user, once known.
    pub user: Option<&'a str>,
    /// Catalog key (`Jun/update.zip`), when the moment has one.
    pub path: Option<&'a str>,
}

/// A rule chosen for an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The rule as written, for the record's `fault` field.
    pub name: String,
    /// What to do.
    pub action: Action,
}

#[derive(Debug)]
struct RuleState {
    rule: FaultRule,
    applied: AtomicU64,
}

/// The active rules, replaceable at run time, with one seeded generator
/// for `rate`.
#[derive(Debug)]
pub struct FaultSet {
    rules: RwLock<Arc<Vec<Arc<RuleState>>>>,
    rng: Mutex<StdRng>,
}

impl FaultSet {
    /// A set with `rules`; `seed` makes `rate` draws repeatable.
    pub fn new(rules: Vec<FaultRule>, seed: u64) -> Self {
        let set = FaultSet {
            rules: RwLock::new(Arc::new(Vec::new())),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        };
        set.set(rules);
        set
    }

    /// Replaces the rules (their `times` counters start again).
    pub fn set(&self, rules: Vec<FaultRule>) {
        let states = rules
            .into_iter()
            .map(|rule| {
                Arc::new(RuleState {
                    rule,
                    applied: AtomicU64::new(0),
                })
            })
            .collect();
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(states);
    }

    /// The current rules.
    pub fn rules(&self) -> Vec<FaultRule> {
        self.current().iter().map(|s| s.rule.clone()).collect()
    }

    /// True when no rule is set (the fast path).
    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    fn current(&self) -> Arc<Vec<Arc<RuleState>>> {
        Arc::clone(&self.rules.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The first rule whose action `fits` this moment and whose matchers
    /// match `info`; counts it against its `times`.
    pub fn select(
        &self,
        info: &AttemptInfo<'_>,
        fits: impl Fn(&Action) -> bool,
    ) -> Option<Applied> {
        let rules = self.current();
        for state in rules.iter() {
            let rule = &state.rule;
            let m = &rule.matchers;
            if !fits(&rule.action)
                || m.protocol.is_some_and(|p| p != info.protocol)
                // `::ffff:a.b.c.d` (IPv4 on a dual-stack socket) is a.b.c.d.
                || m.peer.is_some_and(|net| !net.contains(&info.peer.to_canonical()))
                || m.user.as_deref().is_some_and(|u| Some(u) != info.user)
                || m.path
                    .as_ref()
                    .is_some_and(|g| !info.path.is_some_and(|p| g.is_match(format!("/{p}"))))
            {
                continue;
            }
            if let Some(p) = m.rate {
                let draw: f64 = self.rng.lock().unwrap_or_else(|e| e.into_inner()).random();
                if draw >= p {
                    continue;
                }
            }
            if let Some(times) = m.times {
                let taken = state
                    .applied
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                        (n < times).then_some(n + 1)
                    });
                if taken.is_err() {
                    continue;
                }
            }
            return Some(Applied {
                name: rule.text.clone(),
                action: rule.action.clone(),
            });
        }
        None
    }
}

/// Reads a fault-rule file: TOML with `seed` (optional) and `rules`, a list
/// of rule strings in the command-line syntax.
///
/// ```toml
/// seed = 7
/// rules = ["drop-after=50%,path=/big-*.zip", "status=503,protocol=http,rate=0.3"]
/// ```
///
/// # Errors
/// A message naming the file and the TOML or rule error.
pub fn parse_fault_file(text: &str) -> Result<(Vec<FaultRule>, Option<u64>), String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        seed: Option<u64>,
        #[serde(default)]
        rules: Vec<String>,
    }
    let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
    let rules = file
        .rules
        .iter()
        .map(|r| r.parse::<FaultRule>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((rules, file.seed))
}

/// Applies a data action to a package body read from `offset` onwards.
pub struct FaultedReader<R> {
    inner: R,
    action: Action,
    /// Absolute package offset of the next byte read.
    pos: u64,
    /// Package size in bytes (for percentages).
    size: u64,
    shutdown: CancellationToken,
    sleep: Option<Pin<Box<Sleep>>>,
    /// When throttling: start instant and the offset it started at.
    started: Option<(tokio::time::Instant, u64)>,
    scratch: Vec<u8>,
    /// How long a `stall-after` transfer stays silent before it ends.
    stall_limit: Duration,
    cancelled: Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
}

impl<R> FaultedReader<R> {
    /// Wraps `inner`, positioned at package byte `offset` of `size`. A
    /// `stall-after` transfer ends with `TimedOut` after `stall_limit` (the
    /// server's stall timeout) or at shutdown.
    pub fn new(
        inner: R,
        action: Action,
        offset: u64,
        size: u64,
        shutdown: CancellationToken,
        stall_limit: Duration,
    ) -> Self {
        FaultedReader {
            inner,
            action,
            pos: offset,
            size,
            shutdown,
            sleep: None,
            started: None,
            scratch: Vec::new(),
            stall_limit,
            cancelled: None,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for FaultedReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // How many bytes may go out before the fault point.
        let limit = match &this.action {
            Action::DropAfter(a) => {
                let at = a.of(this.size);
                if this.pos >= at {
                    // End of stream: the front-end closes the connection
                    // short of the promised length.
                    return Poll::Ready(Ok(()));
                }
                Some(at - this.pos)
            }
            Action::StallAfter(at) => {
                if this.pos >= *at {
                    // Stay silent until the stall limit (the server's own
                    // stall timeout) or shutdown, whichever comes first.
                    let limit = this.stall_limit;
                    let timer = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("fault: stalled for {} s, transfer ended", limit.as_secs()),
                        )));
                    }
                    let token = this.shutdown.clone();
                    let shutdown = this
                        .cancelled
                        .get_or_insert_with(|| Box::pin(token.cancelled_owned()));
                    if shutdown.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::Interrupted,
                            "fault: stalled transfer ended by shutdown",
                        )));
                    }
                    return Poll::Pending;
                }
                Some(at - this.pos)
            }
            Action::Slow(rate) => {
                if let Some(sleep) = this.sleep.as_mut() {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.sleep = None;
                }
                // Send at most a tenth of a second's worth per read.
                Some((rate / 10).max(1))
            }
            _ => None,
        };
        let before = buf.filled().len();
        let poll = match limit {
            Some(limit) if (limit as usize) < buf.remaining() => {
                // Read at most `limit` bytes through a scratch buffer (a
                // narrowed ReadBuf would need `unsafe` to hand bytes back).
                let FaultedReader { inner, scratch, .. } = this;
                scratch.resize(limit as usize, 0);
                let mut small = ReadBuf::new(scratch);
                let poll = Pin::new(inner).poll_read(cx, &mut small);
                buf.put_slice(small.filled());
                poll
            }
            _ => Pin::new(&mut this.inner).poll_read(cx, buf),
        };
        if let Poll::Ready(Ok(())) = poll {
            let n = (buf.filled().len() - before) as u64;
            if let Action::Corrupt(at) = this.action
                && at >= this.pos
                && at < this.pos + n
            {
                let idx = before + (at - this.pos) as usize;
                buf.filled_mut()[idx] ^= 0xff;
            }
            if let Action::Slow(rate) = this.action {
                let (t0, p0) = *this
                    .started
                    .get_or_insert((tokio::time::Instant::now(), this.pos));
                let due = t0 + Duration::from_secs_f64((this.pos + n - p0) as f64 / rate as f64);
                if due > tokio::time::Instant::now() {
                    this.sleep = Some(Box::pin(tokio::time::sleep_until(due)));
                }
            }
            this.pos += n;
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn rule(s: &str) -> FaultRule {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn info<'a>(protocol: Protocol, path: Option<&'a str>) -> AttemptInfo<'a> {
        AttemptInfo {
            protocol,
            peer: "127.0.0.1".parse().unwrap(),
            user: Some("test"),
            path,
        }
    }

    #[test]
    fn parses_the_documented_examples() {
        assert_eq!(
            rule("drop-after=50%,path=/big-*.zip").action,
            Action::DropAfter(Amount::Percent(50.0))
        );
        assert_eq!(
            rule("ftp-reply=425,command=PASV,times=1").action,
            Action::FtpReply {
                code: 425,
                command: "PASV".into()
            }
        );
        assert_eq!(
            rule("status=503,protocol=http,rate=0.3").action,
            Action::Status(503)
        );
        assert_eq!(rule("refuse-login").action, Action::RefuseLogin);
        assert_eq!(rule("slow=20000").action, Action::Slow(20000));
        assert_eq!(
            rule("corrupt=100,peer=10.0.0.0/8").action,
            Action::Corrupt(100)
        );
        assert_eq!(
            rule("stall-after=4096,user=test").action,
            Action::StallAfter(4096)
        );
    }

    #[test]
    fn malformed_rules_name_the_rule_and_the_problem() {
        for (text, needle) in [
            ("", "no action"),
            ("explode", "unknown action"),
            ("status", "needs a value"),
            ("status=200", "300–599"),
            ("status=101", "300–599"),
            ("drop-after=150%", "0–100"),
            ("drop-after=abc", "number"),
            ("ftp-reply=425", "command="),
            ("ftp-reply=500,command=PASV", "can be"),
            ("ftp-reply=425,command=FOO", "supports command"),
            ("not-found,command=RETR", "ftp-reply only"),
            ("rate=0.5", "no action"),
            ("not-found,rate=2", "probability"),
            ("not-found,peer=nope", "CIDR"),
            ("not-found,protocol=gopher", "protocol"),
            ("status=503,protocol=ftp", "HTTP only"),
            ("refuse-login,path=/a.zip", "before any path"),
            ("not-found,status=404", "exactly one action"),
            ("slow=0", "above 0"),
        ] {
            let e = text.parse::<FaultRule>().unwrap_err();
            assert_eq!(e.rule, text);
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn matchers_select_rules() {
        let set = FaultSet::new(vec![rule("not-found,path=/big-*.zip,protocol=http")], 1);
        let any = |_: &Action| true;
        assert!(
            set.select(&info(Protocol::Http, Some("big-v1.zip")), any)
                .is_some()
        );
        assert!(
            set.select(&info(Protocol::Ftp, Some("big-v1.zip")), any)
                .is_none()
        );
        assert!(
            set.select(&info(Protocol::Http, Some("Jun/big-v1.zip")), any)
                .is_none()
        );
        assert!(set.select(&info(Protocol::Http, None), any).is_none());
        let set = FaultSet::new(vec![rule("not-found,peer=192.0.2.0/24")], 1);
        assert!(
            set.select(&info(Protocol::Http, Some("a.zip")), any)
                .is_none()
        );
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let set = FaultSet::new(vec![rule("not-found,peer=127.0.0.0/8")], 1);
        let mapped = AttemptInfo {
            peer: "::ffff:127.0.0.1".parse().unwrap(),
            ..info(Protocol::Http, Some("a.zip"))
        };
        assert!(set.select(&mapped, any).is_some());
    }

    #[test]
    fn times_limits_and_rate_is_repeatable() {
        let any = |_: &Action| true;
        let set = FaultSet::new(vec![rule("not-found,times=2")], 1);
        let hits: Vec<bool> = (0..4)
            .map(|_| {
                set.select(&info(Protocol::Http, Some("a.zip")), any)
                    .is_some()
            })
            .collect();
        assert_eq!(hits, [true, true, false, false]);
        let draw = |seed| {
            let set = FaultSet::new(vec![rule("not-found,rate=0.5")], seed);
            (0..200)
                .map(|_| {
                    set.select(&info(Protocol::Http, Some("a.zip")), any)
                        .is_some()
                })
                .collect::<Vec<_>>()
        };
        let a = draw(42);
        assert_eq!(a, draw(42));
        let n = a.iter().filter(|h| **h).count();
        assert!((60..140).contains(&n), "{n}");
    }

    #[test]
    fn fault_file_parses() {
        let (rules, seed) =
            parse_fault_file("seed = 7\nrules = [\"slow=1000\", \"not-found,times=1\"]\n").unwrap();
        assert_eq!(seed, Some(7));
        assert_eq!(rules.len(), 2);
        assert!(
            parse_fault_file("rules = [\"boom\"]")
                .unwrap_err()
                .contains("boom")
        );
        assert!(parse_fault_file("nonsense = 1").is_err());
    }

    async fn read_all(action: Action, offset: u64) -> io::Result<Vec<u8>> {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let inner = std::io::Cursor::new(data[offset as usize..].to_vec());
        let mut r = FaultedReader::new(
            inner,
            action,
            offset,
            1000,
            CancellationToken::new(),
            Duration::from_secs(120),
        );
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.map(|_| out)
    }

    #[tokio::test]
    async fn drop_after_and_corrupt() {
        let mut r = FaultedReader::new(
            std::io::Cursor::new(vec![1u8; 1000]),
            Action::DropAfter(Amount::Percent(50.0)),
            0,
            1000,
            CancellationToken::new(),
            Duration::from_secs(120),
        );
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out.len(), 500, "ends early at the drop point");
        let out = read_all(Action::Corrupt(600), 500).await.unwrap();
        assert_eq!(out.len(), 500);
        assert_eq!(out[100], (600u32 as u8) ^ 0xff);
        assert_eq!(out[99], 599u32 as u8);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_throttles_and_stall_holds() {
        let start = tokio::time::Instant::now();
        let out = read_all(Action::Slow(100), 0).await.unwrap();
        assert_eq!(out.len(), 1000);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(9) && took <= Duration::from_secs(11),
            "{took:?}"
        );
        let start = tokio::time::Instant::now();
        let err = read_all(Action::StallAfter(10), 0).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(120),
            "ends at the stall limit"
        );
    }
}

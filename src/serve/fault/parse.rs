//! Parsing a fault rule from its text, `action[=value][,key=value]…`
//! (the `--fault` flag and the fault file's `rules`).
//!
//! Each key has its own parse function; [`Parts`] gathers them, and two
//! checks at the end say whether the whole makes sense: an `ftp-reply`
//! names a command that can carry its code, and the action fits the
//! protocol and path matchers. Every error names the rule and the problem
//! ([`FaultParseError`]).

use std::net::IpAddr;
use std::str::FromStr;

use super::rule::{Action, Amount, FTP_REPLY_SUPPORT, FaultRule, Matchers};
use crate::dlog::Protocol;

/// A malformed rule: which one, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fault rule {rule:?}: {problem}")]
pub struct FaultParseError {
    /// The rule as written.
    pub rule: String,
    /// What is wrong.
    pub problem: String,
}

impl FromStr for FaultRule {
    type Err = FaultParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_rule(s).map_err(|problem| FaultParseError {
            rule: s.to_string(),
            problem,
        })
    }
}

fn parse_rule(s: &str) -> Result<FaultRule, String> {
    let mut parts = Parts::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (part.to_ascii_lowercase(), None),
        };
        parts.add(&key, value)?;
    }
    let action = parts.action.ok_or_else(|| {
        "no action (refuse-login, not-found, status=, ftp-reply=, drop-after=, stall-after=, slow=, corrupt=)".to_string()
    })?;
    let action = with_command(action, parts.command, &parts.matchers)?;
    check_scope(&action, &parts.matchers)?;
    Ok(FaultRule {
        text: s.trim().to_string(),
        action,
        matchers: parts.matchers,
    })
}

/// What the parts of a rule read so far say.
#[derive(Default)]
struct Parts {
    action: Option<Action>,
    /// `command=`, upper-case; only `ftp-reply` takes one.
    command: Option<String>,
    matchers: Matchers,
}

impl Parts {
    /// Adds one `key[=value]` part.
    fn add(&mut self, key: &str, value: Option<&str>) -> Result<(), String> {
        match action(key, value)? {
            Some(action) => self.set_action(action),
            None => self.add_matcher(key, value),
        }
    }

    /// Adds a part that is not an action: `command=` or a matcher.
    fn add_matcher(&mut self, key: &str, value: Option<&str>) -> Result<(), String> {
        let m = &mut self.matchers;
        match key {
            "command" => self.command = Some(need(key, value)?.to_ascii_uppercase()),
            "path" => m.path = Some(path(need(key, value)?)?),
            "protocol" => m.protocol = Some(protocol(need(key, value)?)?),
            "peer" => m.peer = Some(peer(need(key, value)?)?),
            "user" => m.user = Some(need(key, value)?.to_string()),
            "times" => m.times = Some(num(key, need(key, value)?)?),
            "rate" => m.rate = Some(rate(need(key, value)?)?),
            other => return Err(format!("unknown action or matcher {other:?}")),
        }
        Ok(())
    }

    fn set_action(&mut self, action: Action) -> Result<(), String> {
        if self.action.is_some() {
            return Err("a rule has exactly one action".into());
        }
        self.action = Some(action);
        Ok(())
    }
}

/// The action `key` names, `None` when `key` is no action.
fn action(key: &str, value: Option<&str>) -> Result<Option<Action>, String> {
    Ok(Some(match key {
        "refuse-login" => Action::RefuseLogin,
        "not-found" => Action::NotFound,
        "status" => status(need(key, value)?)?,
        "ftp-reply" => ftp_reply(need(key, value)?)?,
        "drop-after" => drop_after(need(key, value)?)?,
        "stall-after" => Action::StallAfter(num(key, need(key, value)?)?),
        "slow" => slow(need(key, value)?)?,
        "corrupt" => Action::Corrupt(num(key, need(key, value)?)?),
        _ => return Ok(None),
    }))
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

/// `status=<code>`: an HTTP status that replaces the package (300–599).
fn status(value: &str) -> Result<Action, String> {
    let code: u16 = num("status", value)?;
    if !(300..=599).contains(&code) {
        return Err(format!("status must be an HTTP status 300–599, got {code}"));
    }
    Ok(Action::Status(code))
}

/// `ftp-reply=<code>`: the command comes from `command=` (see
/// [`with_command`]).
fn ftp_reply(value: &str) -> Result<Action, String> {
    Ok(Action::FtpReply {
        code: num("ftp-reply", value)?,
        command: String::new(),
    })
}

/// `drop-after=<bytes>` or `drop-after=<pct>%` (0–100).
fn drop_after(value: &str) -> Result<Action, String> {
    let amount = match value.strip_suffix('%') {
        Some(p) => {
            let p: f64 = num("drop-after", p)?;
            if !(0.0..=100.0).contains(&p) {
                return Err(format!("drop-after percentage must be 0–100, got {p}"));
            }
            Amount::Percent(p)
        }
        None => Amount::Bytes(num("drop-after", value)?),
    };
    Ok(Action::DropAfter(amount))
}

/// `slow=<bytes/s>`, above 0.
fn slow(value: &str) -> Result<Action, String> {
    let rate: u64 = num("slow", value)?;
    if rate == 0 {
        return Err("slow needs a rate above 0 bytes/s".into());
    }
    Ok(Action::Slow(rate))
}

/// `path=<glob>` on `/<key>`; `*` stays inside one folder.
fn path(value: &str) -> Result<globset::GlobMatcher, String> {
    // Matched against `/<path>`: a glob written without the leading `/`
    // (`big-*.zip`) means the same, instead of never matching.
    let rooted;
    let value = if value.starts_with('/') {
        value
    } else {
        rooted = format!("/{value}");
        &rooted
    };
    let glob = globset::GlobBuilder::new(value)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("bad path glob: {e}"))?;
    Ok(glob.compile_matcher())
}

/// `protocol=ftp|http|https`.
fn protocol(value: &str) -> Result<Protocol, String> {
    match value.to_ascii_lowercase().as_str() {
        "ftp" => Ok(Protocol::Ftp),
        "http" => Ok(Protocol::Http),
        "https" => Ok(Protocol::Https),
        other => Err(format!(
            "protocol must be ftp, http or https, got {other:?}"
        )),
    }
}

/// `peer=<ip>` or `peer=<cidr>`.
fn peer(value: &str) -> Result<ipnet::IpNet, String> {
    value
        .parse::<ipnet::IpNet>()
        .or_else(|_| value.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("peer must be an IP address or CIDR, got {value:?}"))
}

/// `rate=<p>`, a probability 0–1.
fn rate(value: &str) -> Result<f64, String> {
    let p: f64 = num("rate", value)?;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("rate must be a probability 0–1, got {p}"));
    }
    Ok(p)
}

/// Puts `command=` into an `ftp-reply` action, checking that the command
/// can carry the code (see [`FTP_REPLY_SUPPORT`]) and, with a path
/// matcher, a path; any other action takes no command.
fn with_command(
    mut action: Action,
    command: Option<String>,
    m: &Matchers,
) -> Result<Action, String> {
    let Action::FtpReply { code, command: c } = &mut action else {
        if command.is_some() {
            return Err("command= goes with ftp-reply only".into());
        }
        return Ok(action);
    };
    let cmd = command.ok_or("ftp-reply needs command=<CMD>")?;
    let Some((_, codes)) = FTP_REPLY_SUPPORT.iter().find(|(name, _)| *name == cmd) else {
        let names: Vec<&str> = FTP_REPLY_SUPPORT.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "ftp-reply supports command {}, not {cmd}",
            names.join(", ")
        ));
    };
    let any_error = codes.is_empty() && (400..600).contains(code);
    if !any_error && !codes.contains(code) {
        return Err(format!(
            "ftp-reply on {cmd} can be {}",
            if codes.is_empty() {
                "any 4xx or 5xx".to_string()
            } else {
                format!("{codes:?}")
            }
        ));
    }
    if m.path.is_some() && !matches!(cmd.as_str(), "RETR" | "SIZE" | "CWD" | "LIST") {
        return Err(format!("{cmd} carries no path: drop the path matcher"));
    }
    *c = cmd;
    Ok(action)
}

/// Refuses matchers an action can never meet: a login has no path, FTP
/// actions no HTTP protocol, `status=` no FTP.
fn check_scope(action: &Action, m: &Matchers) -> Result<(), String> {
    match action {
        Action::RefuseLogin if m.path.is_some() => {
            Err("refuse-login happens before any path: drop the path matcher".into())
        }
        Action::RefuseLogin | Action::FtpReply { .. }
            if matches!(m.protocol, Some(Protocol::Http | Protocol::Https)) =>
        {
            Err("this action is FTP only".into())
        }
        Action::Status(_) if m.protocol == Some(Protocol::Ftp) => {
            Err("status= is HTTP only (use ftp-reply= for FTP)".into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> FaultRule {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
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
}

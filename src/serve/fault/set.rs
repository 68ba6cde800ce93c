//! The active fault rules ([`FaultSet`]): which rule, if any, applies to
//! an attempt at a given moment ([`AttemptInfo`] → [`Applied`]), with the
//! `times` counters and the seeded generator behind `rate`. Replaceable at
//! run time (`Server::set_faults`, the fault-file watcher).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::rule::{Action, FaultRule, Matchers};
use crate::dlog::Protocol;
use crate::serve::metrics::FaultCounter;

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

impl RuleState {
    /// `rule`, applied to no attempt yet.
    fn fresh(rule: FaultRule) -> Arc<Self> {
        Arc::new(RuleState {
            rule,
            applied: AtomicU64::new(0),
        })
    }
}

/// The active rules, replaceable at run time, with one seeded generator
/// for `rate`.
#[derive(Debug)]
pub struct FaultSet {
    rules: RwLock<Arc<Vec<Arc<RuleState>>>>,
    rng: Mutex<StdRng>,
    /// Counts each rule applied (`/metrics`), once set.
    counter: OnceLock<FaultCounter>,
}

impl FaultSet {
    /// A set with `rules`; `seed` makes `rate` draws repeatable.
    pub fn new(rules: Vec<FaultRule>, seed: u64) -> Self {
        let set = FaultSet {
            rules: RwLock::new(Arc::new(Vec::new())),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            counter: OnceLock::new(),
        };
        set.set(rules);
        set
    }

    /// Replaces the rules (their `times` counters start again): what
    /// `PUT /faults` does, so a test that sets `times=1` gets one whatever
    /// the test before it used.
    pub fn set(&self, rules: Vec<FaultRule>) {
        let states = rules.into_iter().map(RuleState::fresh).collect();
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(states);
    }

    /// Replaces the rules, but a rule also in force before, as written,
    /// keeps its `times` count (each old rule lends its count once): what
    /// a re-read `--faults` file does, so editing one rule does not fire
    /// the others' `times` again.
    pub fn reload(&self, rules: Vec<FaultRule>) {
        let mut slot = self.rules.write().unwrap_or_else(|p| p.into_inner());
        let mut old: Vec<Option<&Arc<RuleState>>> = slot.iter().map(Some).collect();
        let states = rules
            .into_iter()
            .map(|rule| {
                let kept = old
                    .iter_mut()
                    .find(|s| s.is_some_and(|s| s.rule.text == rule.text))
                    .and_then(Option::take);
                kept.map_or_else(|| RuleState::fresh(rule), Arc::clone)
            })
            .collect();
        *slot = Arc::new(states);
    }

    /// Counts every rule applied from now on into `counter` (the server's
    /// metrics); only the first call takes effect.
    pub fn count_into(&self, counter: FaultCounter) {
        let _ = self.counter.set(counter);
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
            if !fits(&rule.action) || !m.matches(info) {
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
            if let Some(counter) = self.counter.get() {
                counter.inc(&rule.text);
            }
            return Some(Applied {
                name: rule.text.clone(),
                action: rule.action.clone(),
            });
        }
        None
    }
}

impl Matchers {
    /// Whether `info` meets the protocol, peer, user and path matchers
    /// (`times` and `rate` are the set's to count and draw).
    fn matches(&self, info: &AttemptInfo<'_>) -> bool {
        let path_ok =
            |g: &globset::GlobMatcher| info.path.is_some_and(|p| g.is_match(format!("/{p}")));
        self.protocol.is_none_or(|p| p == info.protocol)
            // `::ffff:a.b.c.d` (IPv4 on a dual-stack socket) is a.b.c.d.
            && self.peer.is_none_or(|net| net.contains(&info.peer.to_canonical()))
            && self.user.as_deref().is_none_or(|u| Some(u) == info.user)
            && self.path.as_ref().is_none_or(path_ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Without its leading `/`, the same glob.
        let set = FaultSet::new(vec![rule("not-found,path=big-*.zip")], 1);
        assert!(
            set.select(&info(Protocol::Http, Some("big-v1.zip")), any)
                .is_some()
        );
        assert!(
            set.select(&info(Protocol::Http, Some("Jun/big-v1.zip")), any)
                .is_none()
        );
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
    fn a_reload_keeps_the_counts_of_rules_kept_as_written_and_set_starts_afresh() {
        let any = |_: &Action| true;
        let hit = |set: &FaultSet, path| set.select(&info(Protocol::Http, Some(path)), any);
        let set = FaultSet::new(vec![rule("status=503,times=1")], 1);
        assert!(hit(&set, "a.zip").is_some());
        assert!(hit(&set, "a.zip").is_none(), "used up");
        // The file gains a rule: the first one stays used up.
        set.reload(vec![
            rule("status=503,times=1"),
            rule("status=500,path=/b.zip,times=1"),
        ]);
        assert!(hit(&set, "a.zip").is_none(), "still used up");
        assert_eq!(
            hit(&set, "b.zip").unwrap().name,
            "status=500,path=/b.zip,times=1"
        );
        assert!(hit(&set, "b.zip").is_none());
        // A changed rule is a new one.
        set.reload(vec![rule("status=503,times=2")]);
        assert!(hit(&set, "a.zip").is_some());
        // `set` (PUT /faults) starts every count again.
        set.set(vec![rule("status=503,times=1")]);
        assert!(hit(&set, "a.zip").is_some());
        // The same rule twice lends one count to one of them only.
        let twice = FaultSet::new(vec![rule("not-found,times=1")], 1);
        assert!(hit(&twice, "a.zip").is_some());
        twice.reload(vec![rule("not-found,times=1"), rule("not-found,times=1")]);
        assert!(hit(&twice, "a.zip").is_some(), "the second copy is fresh");
        assert!(hit(&twice, "a.zip").is_none());
    }
}

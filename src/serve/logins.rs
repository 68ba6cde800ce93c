//! Failed-login defence for FTP: per source address, after
//! [`FREE_FAILURES`] failures each further failure is answered only after
//! a delay that doubles up to [`MAX_DELAY`]; a success, or
//! [`FORGET_AFTER`] without a failure, starts the count again. A correct
//! password is never delayed or locked out — real modules retry a handful
//! of times with the credentials they were given. Anchor: vsftpd
//! `delay_failed_login`, `max_login_fails`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::lock;

/// Failures from one address answered at once; the next ones are delayed.
pub const FREE_FAILURES: u32 = 3;

/// The first delay, doubled for each further failure.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);

/// The longest delay. It slows a client that waits for each answer (a
/// password list tried on one connection); it does not stop one that
/// opens many connections and reads no answer, since a correct password
/// is answered at once. Served FTP accounts give read access to packages
/// only, and FTP sends them in clear anyway.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// How long before the login timeout a delayed answer is sent at the
/// latest (2 s): the session's 421 would otherwise come first.
pub const ANSWER_MARGIN: Duration = Duration::from_secs(2);

/// Failures older than this are forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// Most addresses remembered; past it, the stalest are forgotten first
/// (bounds the table under a flood of spoofed-looking sources).
const MAX_TRACKED: usize = 100_000;

/// Failed logins by source address.
#[derive(Debug, Default)]
pub struct LoginGuard {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl LoginGuard {
    /// Counts a failed login from `ip` and returns how long to hold its
    /// answer back, with the number of failures so far.
    pub fn failed(&self, ip: IpAddr) -> (Duration, u32) {
        let ip = ip.to_canonical();
        let now = Instant::now();
        let mut failures = lock(&self.failures);
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, (_, last)| now.duration_since(*last) < FORGET_AFTER);
        }
        let entry = failures.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = now;
        (delay_after(entry.0), entry.0)
    }

    /// A login from `ip` succeeded: its count starts again.
    pub fn succeeded(&self, ip: IpAddr) {
        lock(&self.failures).remove(&ip.to_canonical());
    }
}

/// The delay for the `n`-th failure in a row (1-based).
fn delay_after(n: u32) -> Duration {
    if n <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (n - FREE_FAILURES - 1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_start_after_three_failures_double_and_cap() {
        let delays: Vec<u64> = (1..=10).map(|n| delay_after(n).as_secs()).collect();
        assert_eq!(delays, [0, 0, 0, 1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(delay_after(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn a_success_resets_and_addresses_count_apart() {
        let guard = LoginGuard::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..4 {
            guard.failed(a);
        }
        assert_eq!(guard.failed(a), (Duration::from_secs(2), 5));
        assert_eq!(guard.failed("127.0.0.2".parse().unwrap()).1, 1);
        // IPv4-mapped is the same host.
        guard.succeeded("::ffff:127.0.0.1".parse().unwrap());
        assert_eq!(guard.failed(a), (Duration::ZERO, 1));
    }
}

//! Rate-limited log lines for what clients of the modem cause: a host or
//! a control client connecting, disconnecting, being refused. A host in a
//! reconnect loop (a ModemManager probe, a test harness that retries at
//! once) would otherwise fill the modem's stderr with thousands of lines a
//! second. [`CONNECTIONS`] lets [`BURST`] such lines through per
//! [`WINDOW`]; the rest are counted, and the next line let through carries
//! the count as `suppressed=N`.
//!
//! Written with the [`conn_log!`](crate::conn_log) macro:
//! `conn_log!(info, %peer, "TCP host connected")`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Connection lines let through per [`WINDOW`].
pub const BURST: u32 = 20;

/// The window [`BURST`] counts over.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The limiter every per-connection line of the modem goes through.
pub static CONNECTIONS: LogLimit = LogLimit::new(BURST, WINDOW);

/// A fixed-window limit on log lines: `burst` per `window`, the rest
/// counted.
#[derive(Debug)]
pub struct LogLimit {
    burst: u32,
    window: Duration,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// Start of the current window (`None` before the first line).
    start: Option<Instant>,
    /// Lines let through in it.
    passed: u32,
    /// Lines held back since the last one let through.
    suppressed: u64,
}

impl LogLimit {
    /// `burst` lines per `window`.
    pub const fn new(burst: u32, window: Duration) -> LogLimit {
        LogLimit {
            burst,
            window,
            state: Mutex::new(Window {
                start: None,
                passed: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be logged now: `Some(n)` with the lines held back
    /// since the last one logged, or `None` (counted) when over the limit.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    /// [`LogLimit::allow`] at `now`.
    pub fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if w.start.is_none_or(|s| now.duration_since(s) >= self.window) {
            w.start = Some(now);
            w.passed = 0;
        }
        if w.passed >= self.burst {
            w.suppressed += 1;
            return None;
        }
        w.passed += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

/// A `tracing` event through [`CONNECTIONS`]: `conn_log!(level, fields…,
/// "message")` logs when the limit lets it through — with a `suppressed`
/// field when lines were held back before it — and counts it otherwise.
#[macro_export]
macro_rules! conn_log {
    ($level:ident, $($arg:tt)+) => {
        match $crate::modem::ratelog::CONNECTIONS.allow() {
            Some(0) => tracing::$level!($($arg)+),
            Some(suppressed) => tracing::$level!(suppressed, $($arg)+),
            None => {}
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_lines_are_counted_into_the_next_window() {
        let limit = LogLimit::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let passed: Vec<_> = (0..5).map(|_| limit.allow_at(t0)).collect();
        assert_eq!(passed, [Some(0), Some(0), Some(0), None, None]);
        // Still the same window.
        assert_eq!(limit.allow_at(t0 + Duration::from_secs(9)), None);
        // The next window: the first line says how many were held back.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(limit.allow_at(t1), Some(3));
        assert_eq!(limit.allow_at(t1), Some(0));
    }
}

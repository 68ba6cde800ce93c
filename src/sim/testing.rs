//! Helpers the simulator's unit tests share (compiled only for tests):
//! a bound on every await and a look at the events a step emitted.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::sim::urc::Event;

/// Bounds a test's await (virtual time where the clock is paused), so a
/// hung step fails the test instead of hanging the suite.
pub(crate) async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), f)
        .await
        .expect("finished in time")
}

/// The events already sent on `rx`, without waiting.
pub(crate) fn drain(rx: &mut UnboundedReceiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

//! Where a run's events go: the [`Emitter`] every part of a run (the
//! command's answer, the download's progress, the upgrade) sends its
//! [`Event`]s through, to the run's stream
//! ([`FotaRun`](crate::sim::run::FotaRun)).
//!
//! It sits below the parts that emit ([`crate::sim::download`],
//! [`crate::sim::upgrade`], [`crate::sim::run`]) and imports only the event
//! types ([`crate::sim::urc`]).

use tokio::sync::mpsc;

use crate::sim::urc::{Event, Urc};

/// Sends a run's events; a closed channel (the run was dropped) is ignored,
/// the task is being aborted anyway.
#[derive(Debug, Clone)]
pub(crate) struct Emitter {
    tx: mpsc::UnboundedSender<Event>,
}

impl Emitter {
    /// A new emitter and the receiving end.
    pub(crate) fn channel() -> (Emitter, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Emitter { tx }, rx)
    }

    /// Sends one event.
    pub(crate) fn send(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    /// Sends one URC.
    pub(crate) fn urc(&self, urc: Urc) {
        self.send(Event::Urc(urc));
    }
}

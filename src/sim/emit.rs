//! Where a run's events go: the [`Emitter`] every part of a run (the
//! command's answer, the download's progress, the upgrade) sends its
//! [`Event`]s through, to the run's stream
//! ([`FotaRun`](crate::sim::run::FotaRun)).
//!
//! It sits below the parts that emit ([`crate::sim::download`],
//! [`crate::sim::upgrade`], [`crate::sim::run`]) and imports only the event
//! types ([`crate::sim::urc`]).

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::sim::urc::{Event, Urc};

/// What the module does whenever it boots (`RDY`): resets what a boot
/// resets (the active PDP contexts).
#[derive(Clone)]
pub(crate) struct BootHook(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for BootHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BootHook")
    }
}

/// Sends a run's events; a closed channel (the run was dropped) is ignored,
/// the task is being aborted anyway.
#[derive(Debug, Clone)]
pub(crate) struct Emitter {
    tx: mpsc::UnboundedSender<Event>,
    on_boot: Option<BootHook>,
}

impl Emitter {
    /// A new emitter and the receiving end.
    pub(crate) fn channel() -> (Emitter, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Emitter { tx, on_boot: None }, rx)
    }

    /// Runs `hook` before every [`Event::Ready`] is sent.
    pub(crate) fn on_boot(mut self, hook: BootHook) -> Emitter {
        self.on_boot = Some(hook);
        self
    }

    /// Sends one event.
    pub(crate) fn send(&self, event: Event) {
        if let (Event::Ready, Some(hook)) = (&event, &self.on_boot) {
            (hook.0)();
        }
        let _ = self.tx.send(event);
    }

    /// Sends one URC.
    pub(crate) fn urc(&self, urc: Urc) {
        self.send(Event::Urc(urc));
    }
}

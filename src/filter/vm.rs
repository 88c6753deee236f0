//! The state of one worker VM, in one struct (STYLE.md 16): made once when the VM starts,
//! handed to every root context, and lent by each to its HTTP contexts. The config in force
//! (with its pin keys) is each root context's [`Active`]; what outlives a config lives here.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use super::guards::Book;
use super::http::Outcome;
use super::root::Active;
use crate::body::watchdog::Watchdog;

/// What a worker VM keeps across its root contexts and requests.
#[derive(Default)]
pub(super) struct Vm {
    /// Every guard book of this VM, so a config that keeps a rule's guard keeps its book (its
    /// counts, its waiting requests) when it replaces the root context that made it.
    pub books: Vec<Weak<RefCell<Book>>>,
    /// The gauges of this VM's live configs: (name, a host id for it, how many configs define
    /// it). A gauge no live config defines any more (its rule or version gone) is set to 0, so
    /// a `graysplit_guard_tripped` of a removed rule does not stay 1 on a dashboard.
    pub gauges: Vec<(String, u32, usize)>,
    /// Whether Envoy delivers bodies, and the requests held for theirs, each with the config it
    /// is decided under (its root context may be replaced meanwhile) and when its headers came
    /// (Unix ns, 0 when the plan does not time answers).
    pub watchdog: Watchdog<Held>,
    /// Held requests the tick decided without their body, for their streams to pick up.
    pub decided: Vec<(u32, Outcome)>,
    /// Requests held for a model rewrite that the tick let go without their body.
    pub let_go: Vec<u32>,
    /// When held requests were last checked (Unix ns): each root context with a tick calls the
    /// check, and the requests count one tick however many roots there are.
    pub last_check_ns: i64,
    /// Ids minted without a random source, for `fill_random`'s fallback.
    pub minted: Cell<u64>,
    /// Shadow copies on their way to the root context, and the calls in flight.
    pub shadows: super::shadows::Shadows,
}

pub(super) type SharedVm = Rc<RefCell<Vm>>;

/// A request held for its body: the config it is decided under (its root context may be
/// replaced meanwhile), when its headers came (Unix ns, 0 when the plan does not time answers),
/// and, for one already decided that waits only to have its `model` rewritten, the counter of a
/// skipped rewrite.
pub(super) struct Held {
    pub active: Rc<Active>,
    pub started_ns: i64,
    pub rewrite: Option<crate::config::MetricId>,
}

thread_local! {
    /// The one `Vm` of this VM (a Wasm VM runs on one thread). The SDK's root context factory is
    /// a plain `fn`, so the struct is made here, once, and every root context gets a handle.
    static VM: SharedVm = SharedVm::default();
}

/// A handle on this VM's state.
pub(super) fn shared() -> SharedVm {
    VM.with(Rc::clone)
}

impl Vm {
    /// The outcome the tick decided for held request `context_id`, if it did.
    pub fn take_decided(&mut self, context_id: u32) -> Option<Outcome> {
        let i = self.decided.iter().position(|(id, _)| *id == context_id)?;
        Some(self.decided.swap_remove(i).1)
    }

    /// Request `context_id` is no longer held.
    pub fn release(&mut self, context_id: u32) {
        self.watchdog.release(context_id);
    }

    /// Whether the tick let request `context_id`, held for a rewrite, go without its body.
    pub fn take_let_go(&mut self, context_id: u32) -> bool {
        let Some(i) = self.let_go.iter().position(|id| *id == context_id) else { return false };
        self.let_go.swap_remove(i);
        true
    }
}

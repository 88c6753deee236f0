//! The guards' host side (DESIGN.md "Guards"): each worker VM counts the responses of guarded
//! rules locally ([`Book`]), and on every tick adds them to the rule's value in the proxy's
//! shared data with compare-and-swap, where every worker of the Envoy sees them and the trips
//! they cause ([`crate::guard`] is the pure part: the value's encoding, the window, the trip
//! condition). A config applied with the same guard for a rule keeps its book and its trips; one
//! with another guard re-arms it from an empty window.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

use crate::config::error::fmt_num;
use crate::config::{Guard, Plan};
use crate::guard::{self, RuleState};

/// How often every worker flushes its counts and reads the others' trips: a trip reaches every
/// worker within two ticks of the response that crossed the limit (DESIGN.md asks for 2 s).
pub(super) const TICK_MS: u64 = 500;

/// Tries per flush when another worker wrote the value between our read and our write.
const CAS_TRIES: usize = 8;

/// One guarded rule as this VM knows it.
pub(super) struct Book {
    key: String,
    guard: Guard,
    rule: String,
    stable: String,
    /// Versions by the names the shared value uses; `pending[i]` counts `versions[i]`.
    versions: Vec<String>,
    /// (responses, errors) since the last flush, per version.
    pending: Vec<(u32, u32)>,
    /// The shared value as last read or written.
    state: RuleState,
    /// Requests of guards with `slow_ms` still waiting for their response headers: (context
    /// id, version index, start in Unix ns, already counted as slow). A list: it holds this
    /// worker's concurrent requests of the rule, and a map would weigh more in the module.
    inflight: Vec<Inflight>,
    /// The host's ids of `graysplit_guard_responses_total...result.ok` / `.error` per version,
    /// and of `graysplit_guard_trips_total` (None for stable).
    ok_ids: Vec<u32>,
    error_ids: Vec<u32>,
    trips_ids: Vec<Option<u32>>,
}

struct Inflight {
    context_id: u32,
    version: usize,
    start_ns: i64,
    counted: bool,
}

thread_local! {
    /// Every book of this VM, so a config that keeps a rule's guard keeps its book (pending
    /// counts, in-flight requests) when it replaces the root context that made it.
    static BOOKS: RefCell<Vec<Weak<RefCell<Book>>>> = const { RefCell::new(Vec::new()) };
}

/// A shared handle on one rule's book, and the version index each of the plan's watches has in it.
pub(super) struct Link {
    pub book: Rc<RefCell<Book>>,
}

/// The books of `plan`'s guards (one per guarded rule, reused when this VM already has one for
/// the same rule and guard) after bringing the shared values in line with them: `None` when
/// the host refused a shared-data call (the config is then refused too).
pub(super) fn books(plan: &Plan, metric_ids: &[u32]) -> Result<Vec<Link>, String> {
    let mut out = Vec::with_capacity(plan.guards.len());
    for (gi, g) in plan.guards.iter().enumerate() {
        let rule = plan.rule_name(g.rule).to_string();
        let key = guard::key(&rule);
        let state = sync_shared(&key, g)?;
        let watches: Vec<_> = plan.watches.iter().filter(|w| w.guard == gi).collect();
        let id = |m: usize| metric_ids.get(m).copied().unwrap_or(0);
        let existing = BOOKS.with_borrow_mut(|books| {
            books.retain(|b| b.strong_count() > 0);
            books.iter().filter_map(Weak::upgrade).find(|b| {
                let b = b.borrow();
                b.key == key && b.guard == *g
            })
        });
        let book = match existing {
            Some(b) => {
                b.borrow_mut().state = state;
                b
            }
            None => {
                let book = Rc::new(RefCell::new(Book {
                    key: key.clone(),
                    guard: g.clone(),
                    rule: rule.clone(),
                    stable: plan.version_name(0).to_string(),
                    versions: watches.iter().map(|w| plan.version_name(w.version).to_string()).collect(),
                    pending: vec![(0, 0); watches.len()],
                    state,
                    inflight: Vec::new(),
                    ok_ids: watches.iter().map(|w| id(w.ok_metric)).collect(),
                    error_ids: watches.iter().map(|w| id(w.error_metric)).collect(),
                    trips_ids: watches.iter().map(|w| w.trips_metric.map(id)).collect(),
                }));
                BOOKS.with_borrow_mut(|books| books.push(Rc::downgrade(&book)));
                book
            }
        };
        out.push(Link { book });
    }
    Ok(out)
}

/// Reads the rule's shared value and, when it belongs to no guard or another one, replaces it
/// with a fresh one for `g` (compare-and-swap, so two workers applying the config at once agree).
fn sync_shared(key: &str, g: &Guard) -> Result<RuleState, String> {
    for _ in 0..CAS_TRIES {
        let (bytes, cas) = hostcalls::get_shared_data(key).map_err(|s| format!("{s:?}"))?;
        let current = bytes.as_deref().and_then(RuleState::decode);
        let Some(fresh) = guard::sync(current.as_ref(), g) else {
            return Ok(current.unwrap_or_else(|| RuleState::new(&g.fingerprint)));
        };
        match hostcalls::set_shared_data(key, Some(&fresh.encode()), cas) {
            Ok(()) => return Ok(fresh),
            Err(Status::CasMismatch) => continue,
            Err(s) => return Err(format!("{s:?}")),
        }
    }
    Err("the shared value kept changing".to_string())
}

impl Book {
    /// The index of version `name` among this book's versions.
    pub(super) fn version_index(&self, name: &str) -> Option<usize> {
        self.versions.iter().position(|v| v == name)
    }

    pub(super) fn tripped(&self, version: usize) -> bool {
        self.versions.get(version).is_some_and(|v| self.state.tripped(v))
    }

    pub(super) fn slow_ms(&self) -> Option<u32> {
        self.guard.slow_ms
    }

    /// A response to a request this rule decided for `version`: counts it, unless the tick
    /// already counted it as slow.
    pub(super) fn count(&mut self, context_id: u32, version: usize, error: bool) {
        if self.take_inflight(context_id).is_some_and(|r| r.counted) {
            return;
        }
        if let Some(p) = self.pending.get_mut(version) {
            p.0 = p.0.saturating_add(1);
            p.1 = p.1.saturating_add(u32::from(error));
        }
    }

    pub(super) fn start(&mut self, context_id: u32, version: usize, now_ns: i64) {
        self.inflight.push(Inflight { context_id, version, start_ns: now_ns, counted: false });
    }

    fn take_inflight(&mut self, context_id: u32) -> Option<Inflight> {
        let i = self.inflight.iter().position(|r| r.context_id == context_id)?;
        Some(self.inflight.swap_remove(i))
    }

    /// A request that ended without response headers (reset, client gone): nothing to count
    /// unless the tick already counted it as slow.
    pub(super) fn forget(&mut self, context_id: u32) {
        self.take_inflight(context_id);
    }

    /// Requests waiting longer than `slow_ms` for their response headers count as errors now,
    /// once: a version that hangs trips without waiting for a timeout.
    fn count_overdue(&mut self, now_ns: i64) {
        let Some(ms) = self.guard.slow_ms else { return };
        let limit = i64::from(ms) * 1_000_000;
        for r in &mut self.inflight {
            if !r.counted && now_ns - r.start_ns > limit {
                r.counted = true;
                if let Some(p) = self.pending.get_mut(r.version) {
                    p.0 = p.0.saturating_add(1);
                    p.1 = p.1.saturating_add(1);
                }
            }
        }
    }

    /// Adds this VM's counts to the shared value (compare-and-swap), trips what the condition
    /// says, and refreshes what this VM knows of the others' trips.
    pub(super) fn flush(&mut self, now_ns: i64) {
        self.count_overdue(now_ns);
        let pending = std::mem::replace(&mut self.pending, vec![(0, 0); self.versions.len()]);
        let counted: Vec<(&str, u32, u32)> =
            self.versions.iter().zip(&pending).map(|(v, (t, e))| (v.as_str(), *t, *e)).collect();
        for _ in 0..CAS_TRIES {
            let Ok((bytes, cas)) = hostcalls::get_shared_data(&self.key) else { break };
            let shared = bytes.as_deref().and_then(RuleState::decode);
            if pending.iter().all(|(t, _)| *t == 0) {
                // Nothing to add: only learn the others' trips.
                if let Some(s) = shared.filter(|s| s.fingerprint == self.guard.fingerprint) {
                    self.state = s;
                }
                return;
            }
            let base = shared.unwrap_or_else(|| RuleState::new(&self.guard.fingerprint));
            let Some((next, trips)) = guard::flush(&base, &self.guard, &self.stable, &counted, now_ns) else {
                // Another guard owns the value now (a newer config re-armed it): these counts
                // were the old guard's.
                return;
            };
            match hostcalls::set_shared_data(&self.key, Some(&next.encode()), cas) {
                Ok(()) => {
                    self.state = next;
                    for (i, (t, e)) in pending.iter().enumerate() {
                        add(self.ok_ids.get(i), t - e);
                        add(self.error_ids.get(i), *e);
                    }
                    for t in trips {
                        self.report(&t);
                    }
                    return;
                }
                Err(Status::CasMismatch) => continue,
                Err(_) => break,
            }
        }
        // Not written (the host refused, or the value kept changing): keep the counts for the
        // next tick.
        for (p, (t, e)) in self.pending.iter_mut().zip(pending) {
            p.0 = p.0.saturating_add(t);
            p.1 = p.1.saturating_add(e);
        }
    }

    /// The worker whose write tripped a version says so, once: the log line and the counter.
    fn report(&self, t: &guard::NewTrip) {
        let percent =
            if t.total == 0 { 0.0 } else { (t.errors as f64 * 10_000.0 / t.total as f64).round() / 100.0 };
        log::error!(
            "graysplit: guard tripped: rule {}, version {}: {} of {} responses were errors ({}%) in the last {} s, limit {}%; its users go to {}",
            self.rule,
            t.version,
            t.errors,
            t.total,
            fmt_num(percent),
            self.guard.window_s,
            fmt_num(f64::from(self.guard.max_error_bp) / 100.0),
            self.stable
        );
        if let Some(Some(id)) = self.version_index(&t.version).and_then(|i| self.trips_ids.get(i)) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }
}

fn add(id: Option<&u32>, n: u32) {
    if let (Some(id), true) = (id, n > 0) {
        let _ = hostcalls::increment_metric(*id, i64::from(n));
    }
}

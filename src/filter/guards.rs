//! The guards' host side (DESIGN.md "Guards"): each worker VM counts the responses of guarded
//! rules locally (a [`Tally`] in each rule's [`Book`]), and on every tick adds them to the
//! rule's value in the proxy's shared data with compare-and-swap, where every worker of the
//! Envoy sees them and the trips they cause ([`crate::guard`] is the pure part: the value's
//! encoding, the window, the tally, the trip condition). A config applied with the same guard
//! for a rule keeps its book (its counts and trips); one with another guard re-arms it from an
//! empty window.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

use super::root::now_ns;
use crate::config::{Guard, Plan};
use crate::guard::{self, Cause, Counts, RuleState, Tally};
use crate::llm::Answer;
use crate::text::fmt_num;

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
    tally: Tally,
    /// Per version (as the tally's): whether it tripped, from the shared value as last read or
    /// written.
    tripped: Vec<bool>,
    /// The host's ids of `graysplit_guard_responses_total...result.ok` / `.error` and of
    /// `graysplit_guard_trips_total` (None for stable), per version (as the tally's; a version
    /// a newer config dropped keeps its ids).
    ok_ids: Vec<u32>,
    error_ids: Vec<u32>,
    trips_ids: Vec<Option<u32>>,
}

/// A shared handle on one rule's book.
pub(super) struct Link {
    pub book: Rc<RefCell<Book>>,
}

/// The books of `plan`'s guards, one per guarded rule, after bringing the shared values in line
/// with them. A book this VM already has for the same plugin, rule and guard (its fingerprint:
/// wherever the rule moved in the list) is reused, its versions, stable and metrics taken from
/// `plan` (a push may add a version to the split or promote a new stable under the same guard). `Err` when the host refused a shared-data call
/// (the config is then refused too).
pub(super) fn books(
    all: &mut Vec<Weak<RefCell<Book>>>,
    plugin: &str,
    plan: &Plan,
    metric_ids: &[u32],
) -> Result<Vec<Link>, String> {
    let mut out = Vec::with_capacity(plan.guards.len());
    for (gi, g) in plan.guards.iter().enumerate() {
        let rule = plan.rule_name(g.rule).to_string();
        let key = guard::key(plugin, &rule, &g.fingerprint);
        let state = sync_shared(&key, g)?;
        all.retain(|b| b.strong_count() > 0);
        let existing = all.iter().filter_map(Weak::upgrade).find(|b| {
            let b = b.borrow();
            b.key == key && b.guard.fingerprint == g.fingerprint
        });
        let book = match existing {
            Some(b) => b,
            None => {
                let book = Rc::new(RefCell::new(Book {
                    key: key.clone(),
                    guard: g.clone(),
                    rule: rule.clone(),
                    stable: String::new(),
                    tally: Tally::default(),
                    tripped: Vec::new(),
                    ok_ids: Vec::new(),
                    error_ids: Vec::new(),
                    trips_ids: Vec::new(),
                }));
                all.push(Rc::downgrade(&book));
                book
            }
        };
        book.borrow_mut().adopt(plan, gi, metric_ids, &state);
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
    /// Takes guard `gi` of `plan` (its rule may have moved), its versions, stable and metric
    /// ids, and the shared value.
    fn adopt(&mut self, plan: &Plan, gi: usize, metric_ids: &[u32], state: &RuleState) {
        let Some(g) = plan.guards.get(gi) else { return };
        self.guard = g.clone();
        self.stable = plan.version_name(0).to_string();
        let watches = plan.watches.iter().filter(|w| w.guard == gi);
        self.tally.add_versions(watches.clone().map(|w| plan.version_name(w.version)));
        let n = self.tally.versions().len();
        self.ok_ids.resize(n, 0);
        self.error_ids.resize(n, 0);
        self.trips_ids.resize(n, None);
        let id = |m: usize| metric_ids.get(m).copied().unwrap_or(0);
        for w in watches {
            let Some(i) = self.tally.index(plan.version_name(w.version)) else { continue };
            let slots = (self.ok_ids.get_mut(i), self.error_ids.get_mut(i), self.trips_ids.get_mut(i));
            if let (Some(ok), Some(error), Some(trips)) = slots {
                (*ok, *error, *trips) = (id(w.ok_metric), id(w.error_metric), w.trips_metric.map(id));
            }
        }
        self.set_state(state);
    }

    fn set_state(&mut self, state: &RuleState) {
        self.tripped = self.tally.versions().iter().map(|v| *v != self.stable && state.tripped(v)).collect();
    }

    /// The index of version `name` among this book's versions.
    pub(super) fn version_index(&self, name: &str) -> Option<usize> {
        self.tally.index(name)
    }

    pub(super) fn tripped(&self, version: usize) -> bool {
        self.tripped.get(version).copied().unwrap_or(false)
    }

    /// A guarded request of `version` was decided (`answer`: its answer will be read): with
    /// `slow_ms`, it waits for its response headers from now on; with `first_token_ms`, an
    /// answer waits for its first token.
    /// (`started_ns`: when the request's headers came, for a plan that times answers; else 0,
    /// and the request starts now.)
    pub(super) fn start(&mut self, context_id: u32, version: usize, answer: bool, started_ns: i64) {
        let token = answer && self.guard.first_token_ms.is_some();
        if self.guard.slow_ms.is_some() || token {
            let start = if started_ns > 0 { started_ns } else { now_ns() };
            self.tally.start(context_id, version, start, token);
        }
    }

    /// The answer's events are of no known format: its first token will never come, and its
    /// guard does not wait for one.
    pub(super) fn no_token(&mut self, context_id: u32) {
        self.tally.no_token(context_id);
    }

    fn first_token_ns(&self) -> Option<i64> {
        self.guard.first_token_ms.map(|ms| i64::from(ms) * 1_000_000)
    }

    fn is_error_status(&self, status: Option<u16>) -> bool {
        status.is_some_and(|s| self.guard.statuses.is_error(s))
    }

    fn slow_ns(&self) -> Option<i64> {
        self.guard.slow_ms.map(|ms| i64::from(ms) * 1_000_000)
    }

    /// Its response headers came with `status`: an error when the status is one of the guard's
    /// `statuses` (Envoy's own local replies included), or when they came later than `slow_ms`.
    pub(super) fn count_response(&mut self, context_id: u32, version: usize, status: Option<u16>) {
        let error = self.is_error_status(status);
        let slow_ns = self.slow_ns();
        let now = if slow_ns.is_some() { now_ns() } else { 0 };
        self.tally.count(context_id, version, error, now, slow_ns);
    }

    /// The response headers of an answer the guard counts at its end came.
    pub(super) fn answer_headers(&mut self, context_id: u32) {
        if let Some(slow) = self.slow_ns() {
            self.tally.headers(context_id, now_ns(), Some(slow));
        }
    }

    /// The answer's first token came at `now`.
    pub(super) fn first_token(&mut self, context_id: u32, now: i64) {
        let limit = self.first_token_ns();
        if limit.is_some() {
            self.tally.first_token(context_id, now, limit);
        }
    }

    /// The answer ended: one response, an error by its status, its ending, or lateness (one
    /// error however many of these); its output tokens for `max_output_ratio`.
    pub(super) fn count_answer(
        &mut self,
        context_id: u32,
        version: usize,
        status: Option<u16>,
        answer: &Answer,
    ) {
        let error = self.is_error_status(status) || self.guard.finish_is_error(answer.finish);
        let output = if self.guard.max_output_ratio.is_some() { answer.tokens.output } else { None };
        // An answer that ends without its first token, past first_token_ms, is late whether or
        // not a tick saw it waiting.
        let limit = self.first_token_ns();
        let now = if limit.is_some() { now_ns() } else { 0 };
        self.tally.count_answer(context_id, version, error, output, now, limit);
    }

    pub(super) fn forget(&mut self, context_id: u32) {
        self.tally.forget(context_id);
    }

    /// Adds this VM's counts to the shared value (compare-and-swap), trips what the condition
    /// says, and refreshes what this VM knows of the others' trips.
    pub(super) fn flush(&mut self, now_ns: i64) {
        self.tally.count_overdue(now_ns, self.guard.slow_ms, self.guard.first_token_ms);
        if self.tally.is_empty() {
            // Nothing to add: only learn the others' trips.
            if let Ok((Some(bytes), _)) = hostcalls::get_shared_data(&self.key) {
                if let Some(s) = RuleState::decode(&bytes).filter(|s| s.fingerprint == self.guard.fingerprint)
                {
                    self.set_state(&s);
                }
            }
            return;
        }
        let taken = self.tally.take();
        for _ in 0..CAS_TRIES {
            let Ok((bytes, cas)) = hostcalls::get_shared_data(&self.key) else { break };
            let base = bytes
                .as_deref()
                .and_then(RuleState::decode)
                .unwrap_or_else(|| RuleState::new(&self.guard.fingerprint));
            let counted: Vec<(&str, Counts)> =
                self.tally.versions().iter().zip(&taken).map(|(v, c)| (v.as_str(), *c)).collect();
            let Some((next, trips)) = guard::flush(&base, &self.guard, &self.stable, &counted, now_ns) else {
                // Another guard owns the value now (a newer config re-armed it): these counts
                // were the old guard's.
                return;
            };
            match hostcalls::set_shared_data(&self.key, Some(&next.encode()), cas) {
                Ok(()) => {
                    self.set_state(&next);
                    for (i, c) in taken.iter().enumerate() {
                        add(self.ok_ids.get(i), c.total - c.errors);
                        add(self.error_ids.get(i), c.errors);
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
        self.tally.put_back(&taken);
    }

    /// The worker whose write tripped a version says so, once: the log line and the counter.
    fn report(&self, t: &guard::NewTrip) {
        match t.cause {
            Cause::Errors { errors, total } => {
                let percent =
                    if total == 0 { 0.0 } else { (errors as f64 * 10_000.0 / total as f64).round() / 100.0 };
                log::error!(
                    "graysplit: guard tripped: rule {}, version {}: {} of {} responses were errors ({}%) in the last {} s, limit {}%; its users go to {}",
                    self.rule,
                    t.version,
                    errors,
                    total,
                    fmt_num(percent),
                    self.guard.window_s,
                    fmt_num(f64::from(self.guard.max_error_bp) / 100.0),
                    self.stable
                );
            }
            Cause::Output { answers, output, stable_answers, stable_output } => {
                let mean = |o: u64, n: u64| if n == 0 { 0.0 } else { o as f64 / n as f64 };
                let (a, b) = (mean(output, answers), mean(stable_output, stable_answers));
                let two = |x: f64| fmt_num((x * 100.0).round() / 100.0);
                // Stable's answers had no output tokens at all: any length is infinitely longer.
                let times = if b == 0.0 { "inf".to_string() } else { two(a / b) };
                log::error!(
                    "graysplit: guard tripped: rule {}, version {}: mean {} output tokens per answer, {} times stable's {}, limit {}; its users go to {}",
                    self.rule,
                    t.version,
                    two(a),
                    times,
                    two(b),
                    fmt_num(f64::from(self.guard.max_output_ratio.unwrap_or(0)) / 100.0),
                    self.stable
                );
            }
        }
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

//! The root context: one per plugin config. A config update (ECDS) creates a new root context
//! whose configure either accepts the whole config or returns false, and Envoy then keeps the
//! previous plugin (DESIGN.md "Behaviour on bad input"). Plans with a guard or a schedule also
//! tick: guards flush their counts, gauges follow the clock.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType, MetricType};

use super::ffi::header_pairs;
use super::guards::{self, Link, TICK_MS};
use super::http::{decide_now, Stream};
use super::vm::{SharedVm, Vm};
use crate::config::{self, Plan, WatchId};

const TICK_NS: i64 = TICK_MS as i64 * 1_000_000;

/// A compiled plan and what the host gave for it: counter and gauge ids (same order as
/// `plan.metrics` and `plan.gauges`) and the books of its guards.
pub(super) struct Active {
    pub plan: Plan,
    pub metric_ids: Vec<u32>,
    pub gauge_ids: Vec<u32>,
    /// Same order as `plan.histograms`.
    pub histogram_ids: Vec<u32>,
    /// One per `plan.guards`.
    pub guards: Vec<Link>,
    /// Per `plan.watches`: (guard, the version's index in that guard's book).
    pub watch_slots: Vec<(usize, usize)>,
    /// The config was replaced and its root context waits for its shadows (DESIGN.md "Shadow":
    /// the old configuration drains): its records are sent as they come.
    pub draining: Cell<bool>,
}

impl Active {
    /// Whether the guard has tripped for watch `w`'s version, as this VM last learned it.
    pub fn tripped(&self, w: WatchId) -> bool {
        let Some((g, v)) = self.watch_slots.get(w) else { return false };
        self.guards.get(*g).is_some_and(|l| l.book.borrow().tripped(*v))
    }

    /// The gauges: each scheduled or guarded split entry's live basis points (0 when tripped),
    /// each gray version's tripped flag.
    fn record_gauges(&self, now: i64) {
        let gauge = |g: usize, v: u64| {
            if let Some(id) = self.gauge_ids.get(g) {
                let _ = hostcalls::record_metric(*id, v);
            }
        };
        for sg in &self.plan.split_gauges {
            let tripped = sg.watch.is_some_and(|w| self.tripped(w));
            let share =
                self.plan.split(sg.rule).and_then(|s| s.entries.get(sg.entry)).map_or(0, |e| e.share.at(now));
            gauge(sg.gauge, if tripped { 0 } else { u64::from(share) });
        }
        for (w, watch) in self.plan.watches.iter().enumerate() {
            if let Some(g) = watch.tripped_gauge {
                gauge(g, u64::from(self.tripped(w)));
            }
        }
    }
}

pub(super) struct Root {
    id: u32,
    vm: SharedVm,
    active: Option<Rc<Active>>,
    /// It answered `on_done` with false: it tells the host when its shadows are done.
    draining: bool,
}

impl Root {
    pub(super) fn new(id: u32, vm: SharedVm) -> Self {
        Root { id, vm, active: None, draining: false }
    }

    /// A draining root context whose shadows are all done tells the host it is done.
    fn drain(&mut self) {
        let Some(active) = self.active.as_ref().filter(|_| self.draining) else { return };
        if super::shadows::drained(&self.vm, self.id, active) {
            self.draining = false;
            super::ffi::done();
        }
    }
}

impl Context for Root {
    /// A call this root context made ended: a shadow's, or a batch's to the sink (DESIGN.md
    /// "Shadow").
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        super::shadows::call_ended(&self.vm, self.id, token_id, num_headers, body_size);
        self.drain();
    }

    /// The config is replaced (or the proxy stops): a config with shadows drains first, its
    /// records sent as they come, then it tells the host it is done.
    fn on_done(&mut self) -> bool {
        let Some(active) = self.active.as_ref().filter(|a| !a.plan.shadows.is_empty()) else { return true };
        active.draining.set(true);
        super::shadows::flush(&self.vm, self.id, false);
        if super::shadows::drained(&self.vm, self.id, active) {
            return true;
        }
        self.draining = true;
        false
    }
}

fn gauges_in_use(vm: &mut Vm, plan: &Plan, ids: &[u32], delta: isize) {
    let live = &mut vm.gauges;
    for (name, id) in plan.gauges.iter().zip(ids) {
        match live.iter_mut().find(|(n, _, _)| n == name) {
            Some(entry) => entry.2 = entry.2.saturating_add_signed(delta),
            None if delta > 0 => live.push((name.clone(), *id, 1)),
            None => {}
        }
    }
    live.retain(|(_, id, users)| {
        if *users == 0 {
            let _ = hostcalls::record_metric(*id, 0);
        }
        *users > 0
    });
}

impl Drop for Root {
    fn drop(&mut self) {
        self.vm.borrow_mut().shadows.leave(self.id);
        if let Some(active) = &self.active {
            gauges_in_use(&mut self.vm.borrow_mut(), &active.plan, &active.gauge_ids, -1);
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        super::refresh_log_level();
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        super::refresh_log_level();
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut vm = self.vm.borrow_mut();
        let Some(active) = configure(&mut vm, &raw) else { return false };
        // A new config may come with allow_on_headers_stop_iteration: look again.
        vm.watchdog.reset();
        gauges_in_use(&mut vm, &active.plan, &active.gauge_ids, 1);
        if let Some(old) = self.active.take() {
            gauges_in_use(&mut vm, &old.plan, &old.gauge_ids, -1);
        }
        drop(vm);
        if active.plan.shadows.is_empty() {
            self.vm.borrow_mut().shadows.leave(self.id);
        } else {
            self.vm.borrow_mut().shadows.adopt(self.id);
        }
        let ticks = !active.plan.guards.is_empty()
            || !active.plan.split_gauges.is_empty()
            || !active.plan.shadows.is_empty()
            || active.plan.body.is_some();
        active.record_gauges(now_ns());
        self.active = Some(Rc::new(active));
        if ticks {
            let _ = hostcalls::set_tick_period(Duration::from_millis(TICK_MS));
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(active) = &self.active else { return };
        let now = now_ns();
        for link in &active.guards {
            link.book.borrow_mut().flush(now);
        }
        active.record_gauges(now);
        if active.plan.body.is_some() {
            check_held(&self.vm, now);
        }
        if !active.plan.shadows.is_empty() {
            super::shadows::flush(&self.vm, self.id, true);
            self.drain();
        }
    }

    /// Shadow copies are waiting, or a batch of records is due: this root context sends them
    /// (its calls outlive the requests).
    fn on_queue_ready(&mut self, _queue_id: u32) {
        super::shadows::queue_ready(&self.vm, self.id);
        self.drain();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(context_id, self.vm.clone(), self.active.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The host's clock, Unix nanoseconds (0 if it has none).
pub(super) fn now_ns() -> i64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// On a tick: the watchdog's look at the held requests (once per tick however many root
/// contexts this VM has); those it releases are decided without their body and resumed.
fn check_held(vm: &SharedVm, now: i64) {
    let tick = {
        let mut v = vm.borrow_mut();
        if now - v.last_check_ns < TICK_NS / 2 {
            return; // another root context of this VM checked at this tick
        }
        v.last_check_ns = now;
        v.watchdog.tick(holds_whole_body)
    };
    if tick.say_not_delivered {
        log::error!(
            "graysplit: request bodies are not delivered to the filter: set allow_on_headers_stop_iteration: true in the Wasm filter's config (envoy.extensions.wasm.v3.PluginConfig); Envoy received the whole body of a held request and did not hand it over, so body conditions and body identities see no body for the next 60 s, then graysplit checks again"
        );
    }
    for (id, held) in tick.decide_without_body {
        if hostcalls::set_effective_context(id).is_ok() {
            if let Some(skipped) = held.rewrite {
                // Decided already; its model is not rewritten without its body.
                if let Some(m) = held.active.metric_ids.get(skipped) {
                    let _ = hostcalls::increment_metric(*m, 1);
                }
                vm.borrow_mut().let_go.push(id);
            } else {
                let out = decide_now(&held.active, id, None, &vm.borrow().minted, held.started_ns);
                vm.borrow_mut().decided.push((id, out));
            }
            let _ = hostcalls::resume_http_request();
        }
    }
}

/// Whether Envoy holds the whole announced body of held request `id`: `request.total_size`
/// (the body received so far plus the header map's bytes) less the header map's bytes, at least
/// its `content-length`. Evidence no client controls: a client can send no body, or a slow one,
/// not a whole body Envoy received and kept from the filter. (A chunked body, whose length is
/// not announced, proves nothing.)
fn holds_whole_body(id: u32) -> bool {
    if hostcalls::set_effective_context(id).is_err() {
        return false;
    }
    let Ok(Some(total)) = super::ffi::get_property(b"request\0total_size") else { return false };
    let Some(total) = total.get(..8).and_then(|b| b.try_into().ok()).map(i64::from_le_bytes) else {
        return false;
    };
    let map = header_pairs(MapType::HttpRequestHeaders);
    let announced = map.first(b"content-length").and_then(crate::body::length);
    let received = u64::try_from(total).unwrap_or(0).saturating_sub(map.byte_size() as u64);
    announced.is_some_and(|n| n > 0 && received >= n)
}

fn configure(vm: &mut Vm, raw: &[u8]) -> Option<Active> {
    let plan = match config::parse(raw) {
        Ok(plan) => plan,
        Err(e) => {
            log::error!("graysplit: invalid config: {e}");
            return None;
        }
    };
    let define = |kind: MetricType, names: &[String]| -> Option<Vec<u32>> {
        let mut ids = Vec::with_capacity(names.len());
        for name in names {
            match hostcalls::define_metric(kind, name) {
                Ok(id) => ids.push(id),
                Err(status) => {
                    log::error!(
                        "graysplit: invalid config: $: Envoy refused metric {name}: status {status:?}"
                    );
                    return None;
                }
            }
        }
        Some(ids)
    };
    let metric_ids = define(MetricType::Counter, &plan.metrics)?;
    #[cfg(feature = "heap-stats")]
    super::heap::define();
    let gauge_ids = define(MetricType::Gauge, &plan.gauges)?;
    let histogram_ids = define(MetricType::Histogram, &plan.histograms)?;
    // The plugin's name keys its guards' shared data (other plugins on the proxy share it).
    let plugin = hostcalls::get_property(vec!["plugin_name"])
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let guards = match guards::books(&mut vm.books, &plugin, &plan, &metric_ids) {
        Ok(g) => g,
        Err(e) => {
            log::error!("graysplit: invalid config: $: the guards' shared data is not available: {e}");
            return None;
        }
    };
    let watch_slots = plan
        .watches
        .iter()
        .map(|w| {
            let book =
                guards.get(w.guard).map(|l| l.book.borrow().version_index(plan.version_name(w.version)));
            (w.guard, book.flatten().unwrap_or(usize::MAX))
        })
        .collect();
    log::info!(
        "graysplit: config applied: stable {}, {} rules, versions [{}], route header {}",
        plan.versions.first().map_or("", String::as_str),
        plan.rule_count(),
        plan.versions.join(", "),
        plan.route_header
    );
    Some(Active {
        plan,
        metric_ids,
        gauge_ids,
        histogram_ids,
        guards,
        watch_slots,
        draining: Cell::new(false),
    })
}

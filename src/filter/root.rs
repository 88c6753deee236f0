//! The root context: one per plugin config. A config update (ECDS) creates a new root context
//! whose configure either accepts the whole config or returns false, and Envoy then keeps the
//! previous plugin (DESIGN.md "Behaviour on bad input"). Plans with a guard or a schedule also
//! tick: guards flush their counts, gauges follow the clock.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MetricType};

use super::guards::{self, Link, TICK_MS};
use super::http::{held, Stream};
use crate::config::{self, Plan, WatchId};

/// A compiled plan and what the host gave for it: counter and gauge ids (same order as
/// `plan.metrics` and `plan.gauges`) and the books of its guards.
pub(super) struct Active {
    pub plan: Plan,
    pub metric_ids: Vec<u32>,
    pub gauge_ids: Vec<u32>,
    /// One per `plan.guards`.
    pub guards: Vec<Link>,
    /// Per `plan.watches`: (guard, the version's index in that guard's book).
    pub watch_slots: Vec<(usize, usize)>,
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

#[derive(Default)]
pub(super) struct Root {
    active: Option<Rc<Active>>,
}

impl Context for Root {}

thread_local! {
    /// The gauges of this VM's live configs: (name, a host id for it, how many configs define
    /// it). A gauge no live config defines any more (its rule or version gone) is set to 0, so
    /// a `graysplit_guard_tripped` of a removed rule does not stay 1 on a dashboard.
    static GAUGES: RefCell<Vec<(String, u32, usize)>> = const { RefCell::new(Vec::new()) };
}

fn gauges_in_use(plan: &Plan, ids: &[u32], delta: isize) {
    GAUGES.with_borrow_mut(|live| {
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
    });
}

impl Drop for Root {
    fn drop(&mut self) {
        if let Some(active) = &self.active {
            gauges_in_use(&active.plan, &active.gauge_ids, -1);
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
        held::reset();
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let Some(active) = configure(&raw) else { return false };
        gauges_in_use(&active.plan, &active.gauge_ids, 1);
        if let Some(old) = self.active.take() {
            gauges_in_use(&old.plan, &old.gauge_ids, -1);
        }
        let ticks = !active.plan.guards.is_empty()
            || !active.plan.split_gauges.is_empty()
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
        held::check(now);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(context_id, self.active.clone())))
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

fn configure(raw: &[u8]) -> Option<Active> {
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
    let gauge_ids = define(MetricType::Gauge, &plan.gauges)?;
    // The plugin's name keys its guards' shared data (other plugins on the proxy share it).
    let plugin = hostcalls::get_property(vec!["plugin_name"])
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let guards = match guards::books(&plugin, &plan, &metric_ids) {
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
    Some(Active { plan, metric_ids, gauge_ids, guards, watch_slots })
}

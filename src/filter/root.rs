//! The root context: one per plugin config. A config update (ECDS) creates a new root context
//! whose configure either accepts the whole config or returns false, and Envoy then keeps the
//! previous plugin (DESIGN.md "Behaviour on bad input").

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MetricType};

use super::http::Stream;
use crate::config::{self, Plan};

/// A compiled plan and the host's ids of its counters (same order as `plan.metrics`).
pub(super) struct Active {
    pub plan: Plan,
    pub metric_ids: Vec<u32>,
}

#[derive(Default)]
pub(super) struct Root {
    active: Option<Rc<Active>>,
}

impl Context for Root {}

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
        match configure(&raw) {
            Some(active) => {
                self.active = Some(Rc::new(active));
                true
            }
            None => false,
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(self.active.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

fn configure(raw: &[u8]) -> Option<Active> {
    let plan = match config::parse(raw) {
        Ok(plan) => plan,
        Err(e) => {
            log::error!("graysplit: invalid config: {e}");
            return None;
        }
    };
    let mut metric_ids = Vec::with_capacity(plan.metrics.len());
    for name in &plan.metrics {
        match hostcalls::define_metric(MetricType::Counter, name) {
            Ok(id) => metric_ids.push(id),
            Err(status) => {
                log::error!("graysplit: invalid config: $: Envoy refused metric {name}: status {status:?}");
                return None;
            }
        }
    }
    log::info!(
        "graysplit: config applied: stable {}, {} rules, versions [{}], route header {}",
        plan.versions.first().map_or("", String::as_str),
        plan.rule_count(),
        plan.versions.join(", "),
        plan.route_header
    );
    Some(Active { plan, metric_ids })
}

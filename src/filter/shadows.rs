//! Shadow requests' host side (DESIGN.md "Shadow"), first part (issue 18, in progress): a
//! request the decision picked for its rule's shadow is copied as it passes (its headers when
//! decided, its body as it streams by, never held) and, once whole, sent with
//! `dispatch_http_call` to the shadow's cluster. The call is made by the root context, not the
//! request's: the SDK answers a call to the context that made it, and a request's context ends
//! with the primary answer, which must never wait for the shadow's. A request context hands the
//! copy over through a shared queue of this VM, whose readiness Envoy reports to the root
//! context at once. What the shadow answered is counted (`graysplit_shadow_total`); pairing it
//! with the primary answer into a record for `shadow_sink` comes next.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;

use super::root::{now_ns, Active};
use super::vm::SharedVm;
use crate::config::{MetricId, SHADOW_HEADER};
use crate::decide::ShadowPick;

/// Hop-by-hop headers (RFC 9110 7.6.1, and HTTP/1.1's), never copied to the shadow; Envoy's
/// own `content-length` for the copy is the body's.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A request being copied for its shadow.
pub(super) struct Copy {
    pub pick: ShadowPick,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body grew past the shadow's `max_bytes`: it is not shadowed.
    too_big: bool,
}

/// A copy waiting for the root context to send it.
pub(super) struct Queued {
    active: Rc<Active>,
    shadow: usize,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A shadow sent and not yet answered.
pub(super) struct InFlight {
    token: u32,
    active: Rc<Active>,
    shadow: usize,
    sent_ns: i64,
}

/// What a VM keeps for its shadows: the queue request contexts hand copies over by, the copies
/// in it, and the calls in flight.
#[derive(Default)]
pub(super) struct Shadows {
    /// This VM's queue (its name is the VM's own: shared queues are one per name in the
    /// proxy), and the root context Envoy tells when it is ready: a root whose config has a
    /// shadow. Without one alive, nothing is queued (Envoy would tell a context that is gone).
    queue: Option<u32>,
    name: String,
    owner: Option<u32>,
    /// The live root contexts whose config has a shadow.
    roots: Vec<u32>,
    queued: Vec<Queued>,
    inflight: Vec<InFlight>,
}

impl Shadows {
    /// Root context `root` applied a config with a shadow: it takes the queue (registering it
    /// the first time).
    pub fn adopt(&mut self, root: u32) {
        if !self.roots.contains(&root) {
            self.roots.push(root);
        }
        if self.owner.is_some() {
            return;
        }
        if self.queue.is_none() {
            let mut id = [0u8; 8];
            if getrandom::fill(&mut id).is_err() {
                id = now_ns().to_le_bytes();
            }
            let name = format!("graysplit/shadow/{:016x}", u64::from_le_bytes(id));
            self.queue = hostcalls::register_shared_queue(&name).ok();
            self.name = name;
        } else if hostcalls::register_shared_queue(&self.name).is_err() {
            return;
        }
        self.owner = self.queue.map(|_| root);
    }

    /// Root context `root` ends (or applied a config without a shadow): another live one takes
    /// the queue, or nobody does and nothing is queued any more.
    pub fn leave(&mut self, root: u32) {
        self.roots.retain(|r| *r != root);
        if self.owner != Some(root) {
            return;
        }
        self.owner = None;
        if let Some(q) = self.queue {
            while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(q) {}
        }
        if let Some(next) = self.roots.first().copied() {
            // Registering again from the other root's context makes it the one Envoy tells.
            if hostcalls::set_effective_context(next).is_ok()
                && hostcalls::register_shared_queue(&self.name).is_ok()
            {
                self.owner = Some(next);
            }
            let _ = hostcalls::set_effective_context(root);
        }
        if self.owner.is_none() {
            self.queued.clear();
        }
    }
}

fn count(active: &Active, metric: MetricId) {
    if let Some(id) = active.metric_ids.get(metric) {
        let _ = hostcalls::increment_metric(*id, 1);
    }
}

/// The copy of request `pick`'s headers (the host's current context), or none when this
/// worker already has `max_in_flight` of that shadow's calls waiting (`skipped_busy`).
pub(super) fn start(active: &Active, vm: &SharedVm, pick: ShadowPick) -> Option<Copy> {
    let spec = active.plan.shadows.get(pick.shadow)?;
    let busy = {
        let vm = vm.borrow();
        let waiting = |s: usize, a: &Rc<Active>| s == pick.shadow && std::ptr::eq(Rc::as_ptr(a), active);
        vm.shadows.inflight.iter().filter(|f| waiting(f.shadow, &f.active)).count()
            + vm.shadows.queued.iter().filter(|q| waiting(q.shadow, &q.active)).count()
    };
    if busy >= spec.max_in_flight as usize {
        count(active, spec.metrics.skipped_busy);
        return None;
    }
    let map = super::ffi::header_pairs(MapType::HttpRequestHeaders);
    let route = active.plan.route_header.as_str();
    let mut headers = Vec::with_capacity(map.len() + 2);
    for (name, value) in map.iter() {
        // The SDK's call takes strings: a header that is not UTF-8 is left out of the copy.
        let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else { continue };
        // Envoy's header maps hold lower-case names (as the plan's are): compared as they are.
        if HOP_BY_HOP.contains(&name)
            || name == route
            || name == SHADOW_HEADER
            || (name == ":authority" && spec.authority.is_some())
        {
            continue;
        }
        headers.push((name.to_string(), value.to_string()));
    }
    if let Some(a) = &spec.authority {
        headers.push((":authority".to_string(), a.clone()));
    }
    headers.push((route.to_string(), active.plan.version_name(spec.version).to_string()));
    headers.push((SHADOW_HEADER.to_string(), "1".to_string()));
    Some(Copy { pick, headers, body: Vec::new(), too_big: false })
}

impl Copy {
    /// The next `size` bytes of the request's body (the host's current buffer).
    pub(super) fn body(&mut self, active: &Active, size: usize) {
        let Some(spec) = active.plan.shadows.get(self.pick.shadow) else { return };
        if self.too_big || size == 0 {
            return;
        }
        if self.body.len() + size > spec.max_bytes {
            self.too_big = true;
            self.body = Vec::new();
            return;
        }
        if let Ok(Some(chunk)) =
            hostcalls::get_buffer(proxy_wasm::types::BufferType::HttpRequestBody, 0, size)
        {
            self.body.extend_from_slice(&chunk);
        }
    }

    /// The request is whole: its copy goes to the root context to be sent (or, too long, is
    /// counted `skipped_size`).
    pub(super) fn send(self, active: &Rc<Active>, vm: &SharedVm) {
        let Some(spec) = active.plan.shadows.get(self.pick.shadow) else { return };
        if self.too_big {
            count(active, spec.metrics.skipped_size);
            return;
        }
        let mut vm = vm.borrow_mut();
        let (Some(queue), Some(_)) = (vm.shadows.queue, vm.shadows.owner) else { return };
        vm.shadows.queued.push(Queued {
            active: Rc::clone(active),
            shadow: self.pick.shadow,
            headers: self.headers,
            body: self.body,
        });
        drop(vm);
        let _ = hostcalls::enqueue_shared_queue(queue, Some(b"s"));
    }
}

/// On the root context, when the queue is ready: every queued copy is sent. A call the host
/// refuses (an unknown cluster) is `shadow_failed` at once.
pub(super) fn send_queued(vm: &SharedVm) {
    let queued = {
        let mut v = vm.borrow_mut();
        if let Some(q) = v.shadows.queue {
            while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(q) {}
        }
        std::mem::take(&mut v.shadows.queued)
    };
    for q in queued {
        let Some(spec) = q.active.plan.shadows.get(q.shadow) else { continue };
        let headers: Vec<(&str, &str)> = q.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let body = (!q.body.is_empty()).then_some(q.body.as_slice());
        let timeout = Duration::from_millis(u64::from(spec.timeout_ms));
        match hostcalls::dispatch_http_call(&spec.cluster, headers, body, vec![], timeout) {
            Ok(token) => {
                count(&q.active, spec.metrics.sent);
                let sent_ns = now_ns();
                vm.borrow_mut().shadows.inflight.push(InFlight {
                    token,
                    active: Rc::clone(&q.active),
                    shadow: q.shadow,
                    sent_ns,
                });
            }
            Err(_) => {
                count(&q.active, spec.metrics.sent);
                count(&q.active, spec.metrics.shadow_failed);
            }
        }
    }
}

/// On the root context: the shadow call `token` ended, with `num_headers` response headers (0:
/// no HTTP answer at all). At or after `timeout_ms` it is `timed_out` (Envoy answers a call
/// it gave up on with a 504 of its own); without an answer `shadow_failed`; else `paired`.
pub(super) fn answered(vm: &SharedVm, token: u32, num_headers: usize) {
    let call = {
        let mut v = vm.borrow_mut();
        let Some(i) = v.shadows.inflight.iter().position(|f| f.token == token) else { return };
        v.shadows.inflight.swap_remove(i)
    };
    let Some(spec) = call.active.plan.shadows.get(call.shadow) else { return };
    let elapsed_ms = (now_ns() - call.sent_ns).max(0) / 1_000_000;
    let metric = if elapsed_ms >= i64::from(spec.timeout_ms) {
        spec.metrics.timed_out
    } else if num_headers == 0 {
        spec.metrics.shadow_failed
    } else {
        spec.metrics.paired
    };
    count(&call.active, metric);
}

//! Shadow requests' host side (DESIGN.md "Shadow"): a request the decision picked for its
//! rule's shadow is copied as it passes (its headers when decided, its body as it streams by,
//! never held) and, once whole, sent with `dispatch_http_call` to the shadow's cluster. The call
//! is made by a root context, not the request's: the SDK answers a call to the context that made
//! it, and a request's context ends with the primary answer, which must never wait for the
//! shadow's. A request context hands the copy over through a shared queue of this VM, whose
//! readiness Envoy reports to the root context at once.
//!
//! The two answers meet in a [`Pair`]: the primary's, read as it passes
//! ([`super::answers::Reading`], with its text), and the shadow's, read whole when the call
//! ends. When both are in (or the shadow failed or timed out) the pair is one record, encoded at
//! once into its config's pending batch; a root context POSTs the batch to `shadow_sink` when it
//! is full, or at its tick (every 500 ms), and counts a lost one as `sink_failed`. A config that
//! is replaced drains: its root context stays until its pairs, batches and calls are done.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;

use proxy_wasm::types::BufferType;

use super::answers::{read_whole, Primary};
use super::root::{now_ns, Active};
use super::vm::SharedVm;
use crate::config::{MetricId, Plan, ShadowSpec, SHADOW_HEADER};
use crate::decide::ShadowPick;
use crate::llm::{Answer, AnswerText, Finish};
use crate::request::pairs::HeaderPairs;
use crate::shadow::record::{Batch, Outcome, Record, Side};
use crate::shadow::similarity::similarity;
use crate::text::hex;

/// A batch is sent once it holds this many bytes of records, whatever its `batch`.
const BATCH_MAX_BYTES: usize = 1 << 20;
/// How long a sink has to answer a batch (DESIGN.md: "none within 5 s loses that batch").
const SINK_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Its pair's id.
    pub pair: u32,
    /// The request's headers as the host gave them (filtered when sent: [`send_copy`]).
    headers: HeaderPairs,
    body: Vec<u8>,
    /// The body grew past the shadow's `max_bytes`: it is not shadowed.
    too_big: bool,
}

/// A copy waiting for the root context to send it.
pub(super) struct Queued {
    active: Rc<Active>,
    shadow: usize,
    pair: u32,
    headers: HeaderPairs,
    body: Vec<u8>,
}

/// A shadow sent and not yet answered.
pub(super) struct InFlight {
    token: u32,
    active: Rc<Active>,
    shadow: usize,
    pair: u32,
    sent_ns: i64,
    /// The root context that sent it (and that Envoy answers).
    root: u32,
}

/// A shadowed question's two answers, as they come in.
pub(super) struct Pair {
    id: u32,
    active: Rc<Active>,
    shadow: usize,
    /// When the primary request arrived (Unix ns).
    started_ns: i64,
    user_hash: [u8; 8],
    request_id: Option<String>,
    primary: Option<Primary>,
    other: Option<Shadowed>,
}

/// How the shadow went.
struct Shadowed {
    result: Outcome,
    status: Option<u16>,
    total_ms: u64,
    /// None when it gave no answer (failed, timed out).
    answer: Option<(Answer, AnswerText)>,
}

impl Shadowed {
    /// A shadow that gave no answer, after `total_ms`.
    fn unanswered(result: Outcome, total_ms: u64) -> Shadowed {
        Shadowed { result, status: None, total_ms, answer: None }
    }
}

/// A config's records not sent yet: the batch, and each record's shadow (its rule's counters).
struct Pending {
    active: Rc<Active>,
    batch: Batch,
    shadows: Vec<usize>,
}

/// A batch POSTed to the sink, not yet answered.
struct SinkCall {
    token: u32,
    active: Rc<Active>,
    shadows: Vec<usize>,
    root: u32,
}

/// What a VM keeps for its shadows: the queue request contexts hand copies over by, the copies
/// in it, the calls in flight, the pairs, and the records not yet sent.
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
    pairs: Vec<Pair>,
    next_pair: u32,
    pending: Vec<Pending>,
    sinks: Vec<SinkCall>,
    /// The queue holds its one signal: Envoy will tell the owner, which then sends whatever is
    /// waiting (one signal, one wake-up, however many copies came meanwhile).
    signalled: bool,
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
        self.signalled = false;
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
            // Nobody will send them: their pairs go with them.
            let unsent: Vec<u32> = self.queued.drain(..).map(|q| q.pair).collect();
            self.pairs.retain(|p| !unsent.contains(&p.id));
        }
    }
}

fn count(active: &Active, metric: MetricId) {
    if let Some(id) = active.metric_ids.get(metric) {
        let _ = hostcalls::increment_metric(*id, 1);
    }
}

/// A batch the sink lost: `sink_failed` counts each of its records under its rule.
fn lost(active: &Active, shadows: &[usize]) {
    for s in shadows {
        if let Some(spec) = active.plan.shadows.get(*s) {
            count(active, spec.metrics.sink_failed);
        }
    }
}

fn same(a: &Rc<Active>, b: &Active) -> bool {
    std::ptr::eq(Rc::as_ptr(a), b)
}

/// The copy of request `pick`'s headers (the host's current context) and its pair (the primary
/// request arrived at `started_ns`), or none when this worker already has `max_in_flight` of
/// that shadow's calls waiting (`skipped_busy`).
pub(super) fn start(active: &Rc<Active>, vm: &SharedVm, pick: ShadowPick, started_ns: i64) -> Option<Copy> {
    let spec = active.plan.shadows.get(pick.shadow)?;
    let busy = {
        let vm = vm.borrow();
        let waiting = |s: usize, a: &Rc<Active>| s == pick.shadow && Rc::ptr_eq(a, active);
        vm.shadows.inflight.iter().filter(|f| waiting(f.shadow, &f.active)).count()
            + vm.shadows.queued.iter().filter(|q| waiting(q.shadow, &q.active)).count()
    };
    if busy >= spec.max_in_flight as usize {
        count(active, spec.metrics.skipped_busy);
        return None;
    }
    let headers = super::ffi::header_pairs(MapType::HttpRequestHeaders);
    let request_id = headers.first(b"x-request-id").map(|v| String::from_utf8_lossy(v).into_owned());
    let mut v = vm.borrow_mut();
    let id = v.shadows.next_pair;
    v.shadows.next_pair = id.wrapping_add(1);
    v.shadows.pairs.push(Pair {
        id,
        active: Rc::clone(active),
        shadow: pick.shadow,
        started_ns,
        user_hash: pick.user_hash,
        request_id,
        primary: None,
        other: None,
    });
    Some(Copy { pick, pair: id, headers, body: Vec::new(), too_big: false })
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
        if let Ok(Some(chunk)) = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size) {
            self.body.extend_from_slice(&chunk);
        }
    }

    /// The request is whole: its copy goes to the root context to be sent (or, too long, is
    /// counted `skipped_size`). False when it is not sent: its pair is gone.
    pub(super) fn send(mut self, active: &Rc<Active>, vm: &SharedVm) -> bool {
        let Some(spec) = active.plan.shadows.get(self.pick.shadow) else { return false };
        if let Some(m) = active.plan.model(spec.version) {
            // The shadow asks its version's model, as a request decided to it would.
            if let Ok(body) = crate::body::model::rewrite(&self.body, &m.literal) {
                self.body = body;
            }
        }
        let mut v = vm.borrow_mut();
        let queue = v.shadows.queue.filter(|_| v.shadows.owner.is_some());
        let Some(queue) = queue.filter(|_| !self.too_big) else {
            if self.too_big {
                count(active, spec.metrics.skipped_size);
            }
            v.shadows.pairs.retain(|p| p.id != self.pair);
            return false;
        };
        v.shadows.queued.push(Queued {
            active: Rc::clone(active),
            shadow: self.pick.shadow,
            pair: self.pair,
            headers: self.headers,
            body: self.body,
        });
        v.shadows.signal(queue);
        true
    }
}

/// The primary answer of pair `id` ended: the pair is whole if the shadow's is in.
pub(super) fn primary_done(vm: &SharedVm, id: u32, primary: Primary) {
    let mut v = vm.borrow_mut();
    let Some(pair) = v.shadows.pairs.iter_mut().find(|p| p.id == id) else { return };
    pair.primary = Some(primary);
    if pair.other.is_some() {
        v.shadows.complete(id, None);
    }
}

/// The primary request of pair `id` ended with no answer (the client went away before one):
/// the pair is dropped, no record is written (its shadow is still counted).
pub(super) fn primary_gone(vm: &SharedVm, id: u32) {
    vm.borrow_mut().shadows.pairs.retain(|p| p.id != id || p.primary.is_some());
}

/// A copy that will not be sent (its request never ended): its pair goes.
pub(super) fn unsent(vm: &SharedVm, copy: Copy) {
    vm.borrow_mut().shadows.pairs.retain(|p| p.id != copy.pair);
}

/// On root context `root`, when the queue is ready: every queued copy is sent (a call the host
/// refuses, an unknown cluster, is `shadow_failed` at once), and the batches that are full, or
/// whose config is draining, go to the sink.
pub(super) fn queue_ready(vm: &SharedVm, root: u32) {
    let queued = {
        let mut v = vm.borrow_mut();
        if let (Some(q), true) = (v.shadows.queue, v.shadows.signalled) {
            let _ = hostcalls::dequeue_shared_queue(q);
            v.shadows.signalled = false;
        }
        std::mem::take(&mut v.shadows.queued)
    };
    let sent_ns = now_ns();
    for q in queued {
        let Some(spec) = q.active.plan.shadows.get(q.shadow) else { continue };
        count(&q.active, spec.metrics.sent);
        let token = send_copy(&q.active.plan, spec, &q.headers, &q.body);
        let mut v = vm.borrow_mut();
        match token {
            Ok(token) => v.shadows.inflight.push(InFlight {
                token,
                active: Rc::clone(&q.active),
                shadow: q.shadow,
                pair: q.pair,
                sent_ns,
                root,
            }),
            Err(_) => {
                count(&q.active, spec.metrics.shadow_failed);
                v.shadows.shadow_done(q.pair, Shadowed::unanswered(Outcome::ShadowFailed, 0), Some(root));
            }
        }
    }
    flush(vm, root, false);
}

/// Sends a copy to the shadow's cluster: the request's headers (hop-by-hop ones dropped, and
/// those that are not UTF-8: the SDK's call takes strings), the routing header set to the
/// shadow's version, `x-graysplit-shadow: 1` added, `:authority` the shadow's when it has one.
fn send_copy(
    plan: &Plan,
    spec: &ShadowSpec,
    map: &HeaderPairs,
    body: &[u8],
) -> Result<u32, proxy_wasm::types::Status> {
    let route = plan.route_header.as_str();
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(map.len() + 3);
    for (name, value) in map.iter() {
        let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else { continue };
        // Envoy's header maps hold lower-case names (as the plan's are): compared as they are.
        if HOP_BY_HOP.contains(&name)
            || name == route
            || name == SHADOW_HEADER
            || (name == ":authority" && spec.authority.is_some())
        {
            continue;
        }
        headers.push((name, value));
    }
    if let Some(a) = &spec.authority {
        headers.push((":authority", a.as_str()));
    }
    headers.push((route, plan.version_name(spec.version)));
    headers.push((SHADOW_HEADER, "1"));
    let body = (!body.is_empty()).then_some(body);
    let timeout = Duration::from_millis(u64::from(spec.timeout_ms));
    hostcalls::dispatch_http_call(&spec.cluster, headers, body, vec![], timeout)
}

/// On root context `root`: its call `token` ended, with `num_headers` response headers (0: no
/// HTTP answer at all) and `body_size` bytes of body: a shadow's, or a batch's.
pub(super) fn call_ended(vm: &SharedVm, root: u32, token: u32, num_headers: usize, body_size: usize) {
    let mut v = vm.borrow_mut();
    if let Some(i) = v.shadows.sinks.iter().position(|c| c.token == token) {
        let call = v.shadows.sinks.swap_remove(i);
        drop(v);
        let map = super::ffi::header_pairs(MapType::HttpCallResponseHeaders);
        let ok = num_headers > 0
            && map.first(b":status").and_then(super::http::status).is_some_and(|s| (200..300).contains(&s));
        if !ok {
            lost(&call.active, &call.shadows);
        }
        return;
    }
    let Some(i) = v.shadows.inflight.iter().position(|f| f.token == token) else { return };
    let call = v.shadows.inflight.swap_remove(i);
    drop(v);
    let Some(spec) = call.active.plan.shadows.get(call.shadow) else { return };
    let total_ms = u64::try_from((now_ns() - call.sent_ns).max(0) / 1_000_000).unwrap_or(0);
    // Envoy's router marks an upstream's answer with x-envoy-upstream-service-time; an answer
    // without it is Envoy's own local reply: a 504 when it gave up at timeout_ms (its timer
    // fires on the monotonic clock, this one reads the wall clock, a ms or two apart), a 503
    // when it could not connect or the upstream reset. At or after timeout_ms, or Envoy's 504,
    // it is timed out; no answer at all, or another local reply, failed; else paired.
    let map = super::ffi::header_pairs(MapType::HttpCallResponseHeaders);
    let status = map.first(b":status").and_then(super::http::status);
    let upstream = num_headers > 0 && map.first(b"x-envoy-upstream-service-time").is_some();
    let timeout_ms = u64::from(spec.timeout_ms);
    let (metric, shadowed) = if total_ms >= timeout_ms || (!upstream && status == Some(504)) {
        // The time waited is the timeout, as Envoy's clock measured it.
        (spec.metrics.timed_out, Shadowed::unanswered(Outcome::TimedOut, total_ms.max(timeout_ms)))
    } else if !upstream {
        (spec.metrics.shadow_failed, Shadowed::unanswered(Outcome::ShadowFailed, total_ms))
    } else {
        let body = match body_size {
            0 => Vec::new(),
            n => hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, n)
                .ok()
                .flatten()
                .unwrap_or_default(),
        };
        let answer = read_whole(
            map.first(b"content-type"),
            map.first(b"content-encoding"),
            status,
            spec.max_event_bytes,
            &body,
        );
        (spec.metrics.paired, Shadowed { result: Outcome::Paired, status, total_ms, answer: Some(answer) })
    };
    count(&call.active, metric);
    vm.borrow_mut().shadows.shadow_done(call.pair, shadowed, Some(root));
    flush(vm, root, false);
}

/// On root context `root` (its tick, or a draining config): every pending batch is sent when
/// `all`, else those that are full or whose config is draining.
pub(super) fn flush(vm: &SharedVm, root: u32, all: bool) {
    let due: Vec<Pending> = {
        let mut v = vm.borrow_mut();
        let (due, kept) = std::mem::take(&mut v.shadows.pending).into_iter().partition(|p: &Pending| {
            let batch = p.active.plan.sink.as_ref().map_or(1, |s| s.batch as usize);
            all || p.active.draining.get() || p.batch.len() >= batch || p.batch.bytes() >= BATCH_MAX_BYTES
        });
        v.shadows.pending = kept;
        due
    };
    for p in due {
        let Some(sink) = &p.active.plan.sink else { continue };
        let headers = vec![
            (":method", "POST"),
            (":path", sink.path.as_str()),
            (":authority", sink.authority.as_str()),
            ("content-type", "application/json"),
        ];
        let body = p.batch.finish();
        match hostcalls::dispatch_http_call(&sink.cluster, headers, Some(&body), vec![], SINK_TIMEOUT) {
            Ok(token) => vm.borrow_mut().shadows.sinks.push(SinkCall {
                token,
                active: p.active,
                shadows: p.shadows,
                root,
            }),
            Err(_) => lost(&p.active, &p.shadows),
        }
    }
}

/// Whether root context `root`, whose config is `active`, may end: none of its config's pairs,
/// copies or records is left, and no call it made is in flight.
pub(super) fn drained(vm: &SharedVm, root: u32, active: &Active) -> bool {
    let v = vm.borrow();
    let s = &v.shadows;
    !s.pairs.iter().any(|p| same(&p.active, active))
        && !s.queued.iter().any(|q| same(&q.active, active))
        && !s.pending.iter().any(|p| same(&p.active, active))
        && !s.inflight.iter().any(|f| f.root == root)
        && !s.sinks.iter().any(|c| c.root == root)
}

impl Shadows {
    /// Tells the queue's owner there is work, unless it was told already.
    fn signal(&mut self, queue: u32) {
        if !self.signalled {
            // An empty signal: taking it back costs no copy into the VM.
            self.signalled = hostcalls::enqueue_shared_queue(queue, None).is_ok();
        }
    }

    /// The shadow of pair `id` is done: the pair is whole if the primary answer is in.
    fn shadow_done(&mut self, id: u32, shadowed: Shadowed, root: Option<u32>) {
        let Some(pair) = self.pairs.iter_mut().find(|p| p.id == id) else { return };
        pair.other = Some(shadowed);
        if pair.primary.is_some() {
            self.complete(id, root);
        }
    }

    /// Pair `id` is whole: its record goes into its config's pending batch, its similarity into
    /// the histogram. A batch that is now due is sent by a root context: the one this runs on
    /// (`root`, which does so after), or, from a request's context, the queue's owner, told
    /// through the queue.
    fn complete(&mut self, id: u32, root: Option<u32>) {
        let Some(i) = self.pairs.iter().position(|p| p.id == id) else { return };
        let pair = self.pairs.swap_remove(i);
        let (Some(primary), Some(other)) = (pair.primary, pair.other) else { return };
        let active = pair.active;
        let (Some(spec), Some(sink)) = (active.plan.shadows.get(pair.shadow), &active.plan.sink) else {
            return;
        };
        let plan = &active.plan;
        let side = |version: &str, total_ms: u64, answer: Option<&(Answer, AnswerText)>| {
            let text = answer.map(|(_, t)| t);
            Side {
                version: version.to_string(),
                total_ms,
                tokens_input: answer.and_then(|(a, _)| a.tokens.input),
                tokens_output: answer.and_then(|(a, _)| a.tokens.output),
                finish: answer.map_or(Finish::Aborted, |(a, _)| a.finish),
                answer_chars: text.map_or(0, |t| t.chars),
                answer_sha256: text.map_or(crate::llm::text::EMPTY_SHA256, |t| t.sha256),
                text: sink.capture_text.then(|| text.map(|t| t.kept.clone()).unwrap_or_default()),
            }
        };
        let first = (primary.answer, primary.text);
        let similarity = other.answer.as_ref().map(|(_, t)| similarity(&first.1.kept, &t.kept));
        let record = Record {
            time_unix_nano: u64::try_from(pair.started_ns).unwrap_or(0),
            rule: plan.rule_name(spec.rule).to_string(),
            result: other.result,
            user_hash: hex(&pair.user_hash),
            request_id: pair.request_id,
            primary_status: primary.status.unwrap_or(0),
            shadow_status: other.status,
            first_token_ms: primary.first_token_ms,
            primary: side(plan.version_name(0), primary.total_ms, Some(&first)),
            shadow: side(plan.version_name(spec.version), other.total_ms, other.answer.as_ref()),
            similarity,
        };
        if let (Some(x), Some(id)) = (similarity, active.histogram_ids.get(spec.similarity)) {
            let _ = hostcalls::record_metric(*id, (x * 100.0).round() as u64);
        }
        let at = match self.pending.iter().position(|p| Rc::ptr_eq(&p.active, &active)) {
            Some(at) => at,
            None => {
                self.pending.push(Pending {
                    active: Rc::clone(&active),
                    batch: Batch::default(),
                    shadows: Vec::new(),
                });
                self.pending.len() - 1
            }
        };
        let Some(pending) = self.pending.get_mut(at) else { return };
        pending.batch.push(&record);
        pending.shadows.push(pair.shadow);
        let due = pending.batch.len() >= sink.batch as usize
            || pending.batch.bytes() >= BATCH_MAX_BYTES
            || active.draining.get();
        if due && root.is_none() {
            if let (Some(q), Some(_)) = (self.queue, self.owner) {
                self.signal(q);
            }
        }
    }
}

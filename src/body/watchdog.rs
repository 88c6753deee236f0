//! Whether Envoy delivers request bodies to the filter (DESIGN.md "v2 corrections"), decided only
//! from evidence no client controls.
//!
//! A plan that reads bodies holds a request at its headers (proxy-wasm's Pause) and waits for
//! body callbacks. Envoy delivers them only when the Wasm filter's config sets
//! `allow_on_headers_stop_iteration: true`; without it the Pause stops the whole stream, Envoy
//! buffers the body itself, and no callback ever comes. A client that is slow, pauses, or never
//! sends its body looks the same from inside a single request, so nothing is concluded from a
//! missing callback alone: the evidence is a held request that got no body callback although
//! Envoy has received body bytes for it (the glue asks the host how many). Then every held
//! request that got no callback is decided without its body, the VM decides at the headers, and
//! after [`RECHECK_TICKS`] it holds requests again to see whether that is still so (a new
//! config, which may carry the setting, re-checks at once). A held request whose body does
//! arrive waits for all of it however slowly it comes: a slow client stalls only itself.
//!
//! Pure: the glue reports holds, body callbacks, releases and ticks; this says what to do.

/// Ticks (500 ms) after concluding that bodies are not delivered before holding again: 60 s.
pub const RECHECK_TICKS: u32 = 120;

/// Held requests probed for evidence per tick (in turn, from tick to tick): one proof is
/// enough, and a crowd of stalled clients must not make each tick costly.
pub const PROBES_PER_TICK: usize = 8;

/// The VM's view of body delivery, and the requests it holds.
#[derive(Debug, Default)]
pub struct Watchdog {
    held: Vec<Held>,
    /// Ticks left before holding again, after concluding that bodies are not delivered.
    not_delivered: Option<u32>,
    /// The conclusion was said (logged) and not yet taken back.
    said: bool,
    /// Where the next tick's probes start among the held requests without a body callback.
    cursor: usize,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    id: u32,
    /// A body callback came: Envoy delivers this request's body.
    got_body: bool,
}

/// What a tick found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// Held requests to decide without their body and resume now.
    pub decide_without_body: Vec<u32>,
    /// Say (once) that Envoy does not deliver bodies.
    pub say_not_delivered: bool,
}

impl Watchdog {
    /// Whether a request may be held for its body now (not while concluded otherwise).
    pub fn may_hold(&self) -> bool {
        self.not_delivered.is_none()
    }

    /// Request `id` is held at its headers.
    pub fn hold(&mut self, id: u32) {
        self.held.push(Held { id, got_body: false });
    }

    /// A body callback for request `id`. Returns true when it takes back an earlier
    /// conclusion (say so: bodies are delivered again).
    pub fn body(&mut self, id: u32) -> bool {
        if let Some(h) = self.held.iter_mut().find(|h| h.id == id) {
            h.got_body = true;
        }
        std::mem::replace(&mut self.said, false)
    }

    /// Request `id` is no longer held (decided, or gone).
    pub fn release(&mut self, id: u32) {
        self.held.retain(|h| h.id != id);
    }

    pub fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// A config was applied: check again from now on.
    pub fn reset(&mut self) {
        self.not_delivered = None;
    }

    /// Every 500 ms. `body_bytes(id)`: how many body bytes Envoy has received for held request
    /// `id` (`None`: unknown, no evidence).
    pub fn tick(&mut self, mut body_bytes: impl FnMut(u32) -> Option<u64>) -> Tick {
        if let Some(left) = self.not_delivered {
            self.not_delivered = left.checked_sub(1).filter(|l| *l > 0);
            return Tick::default();
        }
        let waiting: Vec<u32> = self.held.iter().filter(|h| !h.got_body).map(|h| h.id).collect();
        if waiting.is_empty() {
            return Tick::default();
        }
        let start = self.cursor % waiting.len();
        let probes = PROBES_PER_TICK.min(waiting.len());
        self.cursor = start + probes;
        let proof =
            waiting.iter().cycle().skip(start).take(probes).any(|id| body_bytes(*id).is_some_and(|n| n > 0));
        if !proof {
            return Tick::default();
        }
        self.not_delivered = Some(RECHECK_TICKS);
        let (stuck, delivered): (Vec<Held>, Vec<Held>) = self.held.iter().partition(|h| !h.got_body);
        self.held = delivered;
        Tick {
            decide_without_body: stuck.into_iter().map(|h| h.id).collect(),
            say_not_delivered: !std::mem::replace(&mut self.said, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Body bytes Envoy holds per request id.
    fn bytes(received: &[(u32, u64)]) -> impl FnMut(u32) -> Option<u64> + '_ {
        move |id| received.iter().find(|(i, _)| *i == id).map(|(_, n)| *n)
    }

    #[test]
    fn clients_that_never_send_a_body_prove_nothing_however_many() {
        let mut w = Watchdog::default();
        for id in 0..500 {
            w.hold(id);
        }
        for _ in 0..1000 {
            assert_eq!(w.tick(bytes(&[])), Tick::default());
            assert_eq!(w.tick(|_| Some(0)), Tick::default());
        }
        assert!(w.may_hold(), "body reading is never switched off by what clients do");
    }

    #[test]
    fn a_slow_body_that_is_delivered_waits_for_ever() {
        let mut w = Watchdog::default();
        w.hold(7);
        assert!(!w.body(7));
        for _ in 0..1000 {
            // Envoy holds its bytes, but it also called the filter for them: no proof.
            assert_eq!(w.tick(bytes(&[(7, 512)])), Tick::default());
        }
        assert!(w.is_holding() && w.may_hold());
    }

    #[test]
    fn body_bytes_without_a_callback_prove_bodies_are_not_delivered() {
        let mut w = Watchdog::default();
        w.hold(1); // a client that never sends its body
        w.hold(2); // a body Envoy received and did not hand over
        w.hold(3);
        w.body(3); // delivered
        let t = w.tick(bytes(&[(2, 1024)]));
        assert_eq!(t, Tick { decide_without_body: vec![1, 2], say_not_delivered: true });
        assert!(!w.may_hold(), "then decide at the headers");
        assert!(w.is_holding(), "a delivered body still waits");
        w.release(3);
        // Re-checked after RECHECK_TICKS; said once only.
        for _ in 0..RECHECK_TICKS - 1 {
            assert_eq!(w.tick(bytes(&[])), Tick::default());
            assert!(!w.may_hold());
        }
        assert_eq!(w.tick(bytes(&[])), Tick::default());
        assert!(w.may_hold(), "holds again after the re-check period");
        w.hold(4);
        let again = w.tick(bytes(&[(4, 10)]));
        assert_eq!(again, Tick { decide_without_body: vec![4], say_not_delivered: false }, "said once");
        w.reset();
        assert!(w.may_hold(), "a new config checks again at once");
        w.hold(5);
        assert!(w.body(5), "a delivered body takes the conclusion back");
        assert!(!w.body(5));
    }

    #[test]
    fn probes_are_bounded_per_tick() {
        let mut w = Watchdog::default();
        for id in 0..100 {
            w.hold(id);
        }
        let mut asked = 0;
        w.tick(|_| {
            asked += 1;
            None
        });
        assert_eq!(asked, PROBES_PER_TICK);
        // The one request Envoy holds bytes for is found in turn, behind a crowd that sends none.
        let mut w = Watchdog::default();
        for id in 0..100 {
            w.hold(id);
        }
        let found = (0..100).find_map(|_| {
            let t = w.tick(bytes(&[(99, 1)]));
            t.say_not_delivered.then_some(t.decide_without_body.len())
        });
        assert_eq!(found, Some(100));
    }
}

//! Whether Envoy delivers request bodies to the filter (DESIGN.md "v2 corrections"), decided only
//! from evidence no client controls.
//!
//! A plan that reads bodies holds a request at its headers (proxy-wasm's Pause) and waits for
//! body callbacks. Envoy delivers them only when the Wasm filter's config sets
//! `allow_on_headers_stop_iteration: true`; without it the Pause stops the whole stream, Envoy
//! buffers the body itself, and no callback ever comes. A client that is slow, pauses, or never
//! sends its body looks the same from inside a single request, so nothing is concluded from a
//! missing callback alone, nor from body bytes that are still coming (a filter before graysplit
//! may hold a body it inspects, and a client may send slowly): the evidence is a held request
//! that got no body callback although Envoy has received its whole announced body
//! (`content-length`), seen on two ticks in a row. Then every held
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

/// The VM's view of body delivery, and the requests it holds, each with what the glue needs to
/// decide it later (`T`: its config).
#[derive(Debug)]
pub struct Watchdog<T> {
    held: Vec<Held<T>>,
    /// Ticks left before holding again, after concluding that bodies are not delivered.
    not_delivered: Option<u32>,
    /// The conclusion was said (logged) and not yet taken back.
    said: bool,
    /// Where the next tick's probes start among the held requests without a body callback.
    cursor: usize,
}

impl<T> Default for Watchdog<T> {
    fn default() -> Self {
        Watchdog { held: Vec::new(), not_delivered: None, said: false, cursor: 0 }
    }
}

#[derive(Debug)]
struct Held<T> {
    id: u32,
    with: T,
    /// A body callback came: Envoy delivers this request's body.
    got_body: bool,
    /// Probes in a row that found Envoy holding this request's whole body with no callback.
    whole_seen: u8,
}

/// Probes in a row of one request that must find its whole body held, with no callback, to
/// prove that Envoy does not deliver bodies.
const SEEN_TO_PROVE: u8 = 2;

/// What a tick found.
#[derive(Debug, PartialEq, Eq)]
pub struct Tick<T> {
    /// Held requests to decide without their body and resume now, with what they were held with.
    pub decide_without_body: Vec<(u32, T)>,
    /// Say (once) that Envoy does not deliver bodies.
    pub say_not_delivered: bool,
}

impl<T> Default for Tick<T> {
    fn default() -> Self {
        Tick { decide_without_body: Vec::new(), say_not_delivered: false }
    }
}

impl<T> Watchdog<T> {
    /// Whether a request may be held for its body now (not while concluded otherwise).
    pub fn may_hold(&self) -> bool {
        self.not_delivered.is_none()
    }

    /// Request `id` is held at its headers, `with` what it will be decided under.
    pub fn hold(&mut self, id: u32, with: T) {
        self.held.push(Held { id, with, got_body: false, whole_seen: 0 });
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

    /// Every 500 ms. `holds_whole(id)`: whether Envoy has received the whole announced body of
    /// held request `id` (false when it has not, when the length is not announced, or unknown).
    pub fn tick(&mut self, mut holds_whole: impl FnMut(u32) -> bool) -> Tick<T> {
        if let Some(left) = self.not_delivered {
            self.not_delivered = left.checked_sub(1).filter(|l| *l > 0);
            return Tick::default();
        }
        let waiting: Vec<usize> =
            (0..self.held.len()).filter(|&i| self.held.get(i).is_some_and(|h| !h.got_body)).collect();
        if waiting.is_empty() {
            return Tick::default();
        }
        let start = self.cursor % waiting.len();
        let probes = PROBES_PER_TICK.min(waiting.len());
        self.cursor = start + probes;
        let mut proof = false;
        for i in waiting.iter().cycle().skip(start).take(probes) {
            if let Some(h) = self.held.get_mut(*i) {
                h.whole_seen = if holds_whole(h.id) { h.whole_seen.saturating_add(1) } else { 0 };
                proof |= h.whole_seen >= SEEN_TO_PROVE;
            }
        }
        if !proof {
            return Tick::default();
        }
        self.not_delivered = Some(RECHECK_TICKS);
        let (stuck, delivered): (Vec<Held<T>>, Vec<Held<T>>) =
            std::mem::take(&mut self.held).into_iter().partition(|h| !h.got_body);
        self.held = delivered;
        Tick {
            decide_without_body: stuck.into_iter().map(|h| (h.id, h.with)).collect(),
            say_not_delivered: !std::mem::replace(&mut self.said, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The requests whose whole body Envoy holds.
    fn whole(ids: &[u32]) -> impl FnMut(u32) -> bool + '_ {
        move |id| ids.contains(&id)
    }

    #[test]
    fn clients_that_never_send_or_finish_a_body_prove_nothing_however_many() {
        let mut w = Watchdog::<()>::default();
        for id in 0..500 {
            w.hold(id, ());
        }
        for _ in 0..1000 {
            assert_eq!(w.tick(whole(&[])), Tick::default());
        }
        assert!(w.may_hold(), "body reading is never switched off by what clients do");
    }

    #[test]
    fn a_slow_body_that_is_delivered_waits_for_ever() {
        let mut w = Watchdog::<()>::default();
        w.hold(7, ());
        assert!(!w.body(7));
        for _ in 0..1000 {
            // Envoy holds all of it, but it also called the filter for it: no proof.
            assert_eq!(w.tick(whole(&[7])), Tick::default());
        }
        assert!(w.is_holding() && w.may_hold());
    }

    #[test]
    fn a_whole_body_held_without_a_callback_on_two_ticks_proves_bodies_are_not_delivered() {
        let mut w = Watchdog::<()>::default();
        w.hold(1, ()); // a client that never sends its body
        w.hold(2, ()); // a body Envoy received whole and did not hand over
        w.hold(3, ());
        w.body(3); // delivered
        assert_eq!(w.tick(whole(&[2])), Tick::default(), "once may be a filter before us, about to pass it");
        let t = w.tick(whole(&[2]));
        assert_eq!(t, Tick { decide_without_body: vec![(1, ()), (2, ())], say_not_delivered: true });
        assert!(!w.may_hold(), "then decide at the headers");
        assert!(w.is_holding(), "a delivered body still waits");
        w.release(3);
        // Re-checked after RECHECK_TICKS; said once only.
        for _ in 0..RECHECK_TICKS - 1 {
            assert_eq!(w.tick(whole(&[])), Tick::default());
            assert!(!w.may_hold());
        }
        assert_eq!(w.tick(whole(&[])), Tick::default());
        assert!(w.may_hold(), "holds again after the re-check period");
        w.hold(4, ());
        w.tick(whole(&[4]));
        let again = w.tick(whole(&[4]));
        assert_eq!(again, Tick { decide_without_body: vec![(4, ())], say_not_delivered: false }, "said once");
        w.reset();
        assert!(w.may_hold(), "a new config checks again at once");
        w.hold(5, ());
        assert!(w.body(5), "a delivered body takes the conclusion back");
        assert!(!w.body(5));
    }

    #[test]
    fn a_body_that_is_not_whole_on_a_probe_starts_its_count_again() {
        let mut w = Watchdog::<()>::default();
        w.hold(1, ());
        w.tick(whole(&[1]));
        w.tick(whole(&[]));
        assert_eq!(w.tick(whole(&[1])), Tick::default(), "two probes in a row, not two in all");
    }

    #[test]
    fn probes_are_bounded_per_tick_and_go_round() {
        let mut w = Watchdog::<()>::default();
        for id in 0..100 {
            w.hold(id, ());
        }
        let mut asked = 0;
        w.tick(|_| {
            asked += 1;
            false
        });
        assert_eq!(asked, PROBES_PER_TICK);
        // The one request Envoy holds whole is found in turn behind a crowd that sends nothing:
        // with one request it is probed every tick.
        let mut w = Watchdog::<()>::default();
        w.hold(1, ());
        w.hold(99, ());
        let found = (0..10).find_map(|_| {
            let t = w.tick(whole(&[99]));
            t.say_not_delivered.then_some(t.decide_without_body.len())
        });
        assert_eq!(found, Some(2));
    }
}

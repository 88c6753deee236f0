//! `make bench`'s heap figure (feature `heap-stats`, never in the release build): the Wasm heap a
//! request takes at its peak, from its headers to its decision, as the gauge
//! `graysplit_bench_heap_peak_bytes` (DESIGN.md "v2 corrections": one held request stays below
//! 2 x `max_bytes` plus a constant). A counting wrapper around the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static BASE: AtomicUsize = AtomicUsize::new(0);
static GAUGE: AtomicU32 = AtomicU32::new(u32::MAX);

// SAFETY: every call goes to `System` unchanged; only the byte counts are added.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let now = NOW.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        NOW.fetch_sub(layout.size(), Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            let now = NOW.fetch_add(new_size, Relaxed) + new_size;
            PEAK.fetch_max(now, Relaxed);
            NOW.fetch_sub(layout.size(), Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// At configure: the gauge.
pub(super) fn define() {
    if let Ok(id) = hostcalls::define_metric(MetricType::Gauge, "graysplit_bench_heap_peak_bytes") {
        GAUGE.store(id, Relaxed);
    }
}

/// A request's headers came: its peak starts from what the heap holds now.
pub(super) fn mark() {
    let now = NOW.load(Relaxed);
    BASE.store(now, Relaxed);
    PEAK.store(now, Relaxed);
}

/// It was decided: the most the heap grew since [`mark`].
pub(super) fn report() {
    let id = GAUGE.load(Relaxed);
    if id != u32::MAX {
        let grew = PEAK.load(Relaxed).saturating_sub(BASE.load(Relaxed));
        let _ = hostcalls::record_metric(id, grew as u64);
    }
}

//! A counting global allocator: the harnesses measure the peak heap growth while they parse one
//! input and fail when it passes the limit they state, so an allocation sized by an untrusted
//! header (a 2⁴⁰-element tensor, a 10⁶ × 10⁶ image, a template's `"a" * 10**12`) is a finding
//! even when the machine could satisfy it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The system allocator, counting live bytes and their peak.
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// A single allocation larger than this fails (the process then aborts with Rust's "memory
/// allocation failed", which libFuzzer reports), so a runaway allocation sized by a header is
/// caught before it takes the machine; `usize::MAX` when no harness is running. (A ceiling on
/// single allocations, not on the live total: a failing harness's panic hook must still be able
/// to allocate while it symbolises a backtrace.)
static CEILING: AtomicUsize = AtomicUsize::new(usize::MAX);

fn note(size: usize) -> bool {
    let live = LIVE.fetch_add(size, Relaxed) + size;
    PEAK.fetch_max(live, Relaxed);
    size <= CEILING.load(Relaxed)
}

// SAFETY: every method forwards to `System` with the caller's layout and pointer unchanged;
// the counters are plain atomics and never affect what is allocated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            LIVE.fetch_sub(layout.size(), Relaxed);
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as documented above.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            LIVE.fetch_sub(layout.size(), Relaxed);
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as documented above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: forwarded as documented above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !note(new_size - layout.size()) {
            LIVE.fetch_sub(new_size - layout.size(), Relaxed);
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as documented above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            if new_size > layout.size() {
                LIVE.fetch_sub(new_size - layout.size(), Relaxed);
            }
        } else if new_size < layout.size() {
            LIVE.fetch_sub(layout.size() - new_size, Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live heap bytes now.
pub fn live() -> usize {
    LIVE.load(Relaxed)
}

/// Runs `f` and asserts that the heap never grew by more than `limit` bytes above its level at
/// the start; a single allocation of more than twice that fails (and aborts) instead of being
/// made.
///
/// ```
/// let v = visionthink_fuzz::heap::limited(1 << 20, || vec![0u8; 1000].len());
/// assert_eq!(v, 1000);
/// ```
pub fn limited<T>(limit: usize, f: impl FnOnce() -> T) -> T {
    struct Lift;
    impl Drop for Lift {
        fn drop(&mut self) {
            CEILING.store(usize::MAX, Relaxed);
        }
    }
    let base = live();
    PEAK.store(base, Relaxed);
    // The assertion below names a moderate overshoot with its size; the ceiling stops a single
    // runaway allocation before it is made.
    CEILING.store(limit.saturating_mul(2), Relaxed);
    let lift = Lift;
    let out = f();
    drop(lift);
    let grew = PEAK.load(Relaxed).saturating_sub(base);
    assert!(
        grew <= limit,
        "the heap grew by {grew} bytes while parsing, over the limit of {limit}"
    );
    out
}

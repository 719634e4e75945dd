//! The worker's `#[global_allocator]`: one binary, several in-process
//! allocators, the backend picked once per process from `RSEQ_BENCH_ALLOC`.
//!
//! The first allocation may happen before `main` (std's runtime set-up), so the
//! choice is made lazily with `libc::getenv`, which does not allocate. Every
//! later call reads one relaxed atomic and branches; the same branch is paid
//! by every backend, so comparisons stay fair.
//!
//! When the variable is unset or `system`, `std::alloc::System` is used, i.e.
//! glibc's `malloc` — or whatever library `LD_PRELOAD` put in front of it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

/// The environment variable naming the backend for this process.
pub const ENV: &str = "RSEQ_BENCH_ALLOC";

const UNSET: u8 = 0;
const SYSTEM: u8 = 1;
const JEMALLOC: u8 = 2;
const MIMALLOC: u8 = 3;
#[cfg(feature = "ours")]
const RSEQ: u8 = 4;
const UNKNOWN: u8 = 5;
#[cfg(feature = "ours")]
const RSEQ_CHECKED: u8 = 6;

static BACKEND: AtomicU8 = AtomicU8::new(UNSET);

#[cfg(feature = "ours")]
static OURS: rseq_alloc::RseqAlloc = rseq_alloc::RseqAlloc;
#[cfg(feature = "ours")]
static OURS_CHECKED: rseq_alloc::RseqAllocChecked = rseq_alloc::RseqAllocChecked;

/// A module of out-of-line calls to one of our allocators (why: below).
#[cfg(feature = "ours")]
macro_rules! out_of_line {
    ($m:ident, $a:ident) => {
        mod $m {
            use super::$a;
            use std::alloc::{GlobalAlloc, Layout};

            #[inline(never)]
            pub unsafe fn alloc(layout: Layout) -> *mut u8 {
                // SAFETY: forwarded GlobalAlloc contract.
                unsafe { $a.alloc(layout) }
            }
            #[inline(never)]
            pub unsafe fn alloc_zeroed(layout: Layout) -> *mut u8 {
                // SAFETY: forwarded GlobalAlloc contract.
                unsafe { $a.alloc_zeroed(layout) }
            }
            #[inline(never)]
            pub unsafe fn dealloc(ptr: *mut u8, layout: Layout) {
                // SAFETY: forwarded GlobalAlloc contract.
                unsafe { $a.dealloc(ptr, layout) }
            }
            #[inline(never)]
            pub unsafe fn realloc(ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                // SAFETY: forwarded GlobalAlloc contract.
                unsafe { $a.realloc(ptr, layout, new_size) }
            }
        }
    };
}

// Our backends behind out-of-line calls, like the peers (whose code lives
// in C libraries), so that inlining a fast path into the dispatch function
// cannot change the other backends' register allocation.
#[cfg(feature = "ours")]
out_of_line!(ours, OURS);
#[cfg(feature = "ours")]
out_of_line!(ours_checked, OURS_CHECKED);

static JE: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
static MI: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The dispatching allocator; see the module documentation.
pub struct Dispatch;

#[cold]
#[inline(never)]
fn choose() -> u8 {
    // SAFETY: the argument is a NUL-terminated string; getenv only reads the
    // environment (nobody in this process modifies it concurrently).
    let v = unsafe { libc::getenv(c"RSEQ_BENCH_ALLOC".as_ptr()) };
    let b = if v.is_null() {
        SYSTEM
    } else {
        // SAFETY: getenv returned a NUL-terminated string owned by the environment.
        let s = unsafe { std::ffi::CStr::from_ptr(v) }.to_bytes();
        match s {
            b"" | b"system" | b"glibc" => SYSTEM,
            b"jemalloc" => JEMALLOC,
            b"mimalloc" => MIMALLOC,
            #[cfg(feature = "ours")]
            b"rseq" => RSEQ,
            #[cfg(feature = "ours")]
            b"rseq-checked" => RSEQ_CHECKED,
            _ => UNKNOWN,
        }
    };
    // Racing first calls compute the same value from the same environment.
    BACKEND.store(b, Ordering::Relaxed);
    b
}

#[inline(always)]
fn backend() -> u8 {
    let b = BACKEND.load(Ordering::Relaxed);
    if b != UNSET {
        b
    } else {
        choose()
    }
}

/// Code to run monomorphised over one backend: `visit` is called with the
/// backend's allocator itself, so its calls are as direct as through a
/// program's own `#[global_allocator]` (inlined where the backend is Rust,
/// a plain call into the C library for the peers) instead of going through
/// [`Dispatch`]'s per-call branch and out-of-line forwarding, which costs
/// more than a whole malloc/free pair and would hide the differences a
/// micro benchmark exists to show.
pub trait Visit {
    /// What the visit returns.
    type Out;
    /// Runs with the backend's allocator.
    fn visit<A: GlobalAlloc>(self, a: &'static A) -> Self::Out;
}

/// Runs `v` with the allocator of this process's backend (the one
/// [`Dispatch`] forwards to, so blocks may pass between the two).
pub fn visit_backend<V: Visit>(v: V) -> V::Out {
    match backend() {
        JEMALLOC => v.visit(&JE),
        MIMALLOC => v.visit(&MI),
        #[cfg(feature = "ours")]
        RSEQ => v.visit(&OURS),
        #[cfg(feature = "ours")]
        RSEQ_CHECKED => v.visit(&OURS_CHECKED),
        _ => v.visit(&System),
    }
}

/// The name of the backend in use ("system", "jemalloc", "mimalloc", "rseq",
/// "rseq-checked"), or `None` if the variable named one this binary does
/// not have.
pub fn backend_name() -> Option<&'static str> {
    match backend() {
        SYSTEM => Some("system"),
        JEMALLOC => Some("jemalloc"),
        MIMALLOC => Some("mimalloc"),
        #[cfg(feature = "ours")]
        RSEQ => Some("rseq"),
        #[cfg(feature = "ours")]
        RSEQ_CHECKED => Some("rseq-checked"),
        _ => None,
    }
}

macro_rules! dispatch {
    ($method:ident ( $($arg:expr),* )) => {
        match backend() {
            JEMALLOC => JE.$method($($arg),*),
            MIMALLOC => MI.$method($($arg),*),
            #[cfg(feature = "ours")]
            RSEQ => ours::$method($($arg),*),
            #[cfg(feature = "ours")]
            RSEQ_CHECKED => ours_checked::$method($($arg),*),
            // UNKNOWN also lands here: the worker reports the bad name and exits.
            _ => System.$method($($arg),*),
        }
    };
}

// SAFETY: every method forwards to one backend, chosen once per process and
// never changed, so a block is always freed/reallocated by the allocator that
// made it; each backend upholds the GlobalAlloc contract itself.
unsafe impl GlobalAlloc for Dispatch {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: caller's contract (non-zero size) is forwarded unchanged.
        unsafe { dispatch!(alloc(layout)) }
    }
    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for alloc.
        unsafe { dispatch!(alloc_zeroed(layout)) }
    }
    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from this same backend with this layout (caller's contract).
        unsafe { dispatch!(dealloc(ptr, layout)) }
    }
    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: ptr came from this same backend with this layout (caller's contract).
        unsafe { dispatch!(realloc(ptr, layout, new_size)) }
    }
}

//! # rseq-alloc: a per-CPU slab allocator whose fast path runs in rseq
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: rseq_alloc::RseqAlloc = rseq_alloc::RseqAlloc;
//!
//! fn main() {
//!     let v: Vec<u64> = (0..1000).collect();
//!     let s = rseq_alloc::stats();
//!     assert!(s.allocated >= 8000);
//!     println!("rseq-alloc {} in mode {}", rseq_alloc::version(), rseq_alloc::mode_name());
//!     drop(v);
//! }
//! ```
//!
//! ## API
//! - [`RseqAlloc`]: the `GlobalAlloc`; [`RseqAllocChecked`]: the same,
//!   with every `dealloc`'s layout checked against the page map.
//! - [`stats()`]: a [`Stats`] snapshot (`allocated`, `active`, `mapped`,
//!   `resident`, `retained`, `metadata`, `cached` and per region with
//!   [`cached_bytes_in_region`], peaks), in jemalloc-ctl's vocabulary.
//! - [`trim()`]: give free memory back to the OS now.
//! - [`options()`]: the [`Options`] in effect (`RSEQ_MALLOC_CONF`).
//! - [`version()`], [`mode_name()`] (`rseq-glibc`, `rseq-own`, `cmpxchg`),
//!   [`index_name()`] (`cpu`, `cid`).
//! - [`raw`]: the C-flavoured entry points the `rseq-malloc` crate exports
//!   as `malloc`, `free`, ...
//!
//! ## Glossary
//! - **page**: the allocator's unit of memory, 8 KiB (`PAGE_BYTES`),
//!   two OS pages. The page map has one entry per page.
//! - **span**: a run of contiguous pages with one metadata record
//!   (`Span`): free (page heap), carved into small objects of one
//!   class (central list), or one large block.
//! - **object**: one block of a size class inside a span; while free, its
//!   first word links it into a free list.
//! - **size class**: one of 53 object sizes from 8 B to 256 KiB
//!   (`size_class`); a request is rounded up to the smallest class that
//!   fits it and its alignment. Bigger requests are *large* (page-heap spans,
//!   below 1 MiB) or *huge* (direct mappings).
//! - **cache**: the per-CPU (or per-`mm_cid`) bounded stack of free objects
//!   of each class, in rseq-sys's `PerCpuSlabs`. Caches belong to CPUs, not
//!   threads: a thread's exit frees nothing, 10 000 threads on 2 CPUs use 2.
//!
//! ## Layers (data flows down on a miss, up on a refill)
//! ```text
//!  RseqAlloc (GlobalAlloc) / raw::*         global.rs   lazy init, paths
//!        │ pop / push (rseq critical section or CAS)
//!  cpu cache: rseq_sys::percpu::PerCpuSlabs   cpu_cache.rs per CPU, per class
//!        │ batch moves on miss / overflow
//!  central free lists (one lock per class)    central.rs  transfer stack + spans
//!        │ whole spans
//!  page heap (one lock)                        page_heap.rs spans, coalescing, release
//!        │ page map: pointer -> span          pagemap.rs  lock-free reads
//!  OS: chunks / madvise / mmap                os.rs       (huge blocks: huge.rs)
//! ```
//!
//! ## Rules
//! Nothing on an allocation path allocates, locks a `std` mutex or panics;
//! diagnostics are formatted on the stack and written with `write(2)`.
//! Initialisation is lazy and re-entrant safe: an allocation made by the
//! initialising thread itself (e.g. libc inside our init under LD_PRELOAD)
//! is served from a static bootstrap arena.
//!
//! Bounds: per-CPU cache at most `CPU_CACHE_MAX_BYTES`
//! (≈2.4 MiB) per CPU or cid; internal waste `< max(16 B, size/4)`; dirty
//! free pages (page heap) and kept huge ranges go back to the OS once unused
//! for `decay_ms` (`decay.rs`).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(
    missing_docs,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

/// The address of a static, RIP-relative. Rust code in a cdylib reaches
/// statics through the GOT (a load before every access) because rustc
/// cannot prove them local; `lea` of the symbol is resolved by the linker,
/// which knows they are.
macro_rules! rip_ref {
    ($ty:ty, $path:path) => {{
        #[cfg(target_arch = "x86_64")]
        {
            let p: *const $ty;
            // SAFETY: computes the address of a static; touches no memory.
            unsafe {
                core::arch::asm!(
                    "lea {p}, [rip + {s}]",
                    p = out(reg) p,
                    s = sym $path,
                    options(pure, nomem, nostack, preserves_flags),
                )
            };
            // SAFETY: `p` is the address of a `'static` of type `$ty`.
            unsafe { &*p }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            &$path
        }
    }};
}

/// A `#[repr(u8)]` state enum and its atomic cell: `$atomic` stores the
/// enum as one byte and converts it back with a checked match (a byte that
/// names no variant is heap corruption: reported, then abort).
macro_rules! atomic_state {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident in $atomic:ident {
            $($(#[$vmeta:meta])* $variant:ident = $value:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[repr(u8)]
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        $vis enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// The variant stored as `b`, if any.
            #[inline(always)]
            $vis const fn from_byte(b: u8) -> Option<Self> {
                match b {
                    $($value => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        #[doc = concat!("An atomic [`", stringify!($name), "`] (one byte).")]
        $vis struct $atomic(core::sync::atomic::AtomicU8);

        #[allow(dead_code)]
        impl $atomic {
            /// A cell holding `s`.
            $vis const fn new(s: $name) -> Self {
                Self(core::sync::atomic::AtomicU8::new(s as u8))
            }
            /// The state.
            #[inline(always)]
            $vis fn load(&self, order: core::sync::atomic::Ordering) -> $name {
                Self::decode(self.0.load(order))
            }
            /// Sets the state.
            #[inline(always)]
            $vis fn store(&self, s: $name, order: core::sync::atomic::Ordering) {
                self.0.store(s as u8, order)
            }
            /// `AtomicU8::compare_exchange` on the state.
            #[inline(always)]
            $vis fn compare_exchange(
                &self,
                current: $name,
                new: $name,
                success: core::sync::atomic::Ordering,
                failure: core::sync::atomic::Ordering,
            ) -> Result<$name, $name> {
                self.0
                    .compare_exchange(current as u8, new as u8, success, failure)
                    .map(Self::decode)
                    .map_err(Self::decode)
            }
            #[inline(always)]
            fn decode(b: u8) -> $name {
                match $name::from_byte(b) {
                    Some(s) => s,
                    None => crate::util::bad_state(stringify!($name), b),
                }
            }
        }
    };
}

// Internal layers: private, so that the public API is only what is below
// (`RseqAlloc`, `RseqAllocChecked`, `stats`, `trim`, `options`, `version`, the mode names and
// `raw` for the C shim).
mod api;
mod central;
mod config;
mod cpu_cache;
mod decay;
mod double_free;
mod fast;
mod fork;
mod global;
mod huge;
mod lock;
mod magazine;
mod os;
mod page_heap;
mod pagemap;
mod refill;
mod size_class;
mod span;
mod stats;
mod util;

pub use api::{cache_regions, cached_bytes_in_region, options, stats, trim, version, Stats};
pub use config::{Config as Options, IndexChoice, ThpChoice};

use core::alloc::{GlobalAlloc, Layout};

pub use global::{index_name, mode_name};

/// The allocator, for `#[global_allocator]`:
///
/// ```
/// #[global_allocator]
/// static GLOBAL: rseq_alloc::RseqAlloc = rseq_alloc::RseqAlloc;
///
/// fn main() {
///     let v: Vec<u32> = (0..1000).collect();
///     assert_eq!(v.iter().sum::<u32>(), 499_500);
/// }
/// ```
///
/// `dealloc` finds the size class from the layout without a page-map lookup
/// (it trusts the layout, as Rust's contract allows; [`RseqAllocChecked`]
/// checks it); `realloc` stays in place while the class (or page count)
/// does not change; `alloc_zeroed` skips the memset for memory fresh from
/// the OS.
#[derive(Clone, Copy, Debug, Default)]
pub struct RseqAlloc;

/// `GlobalAlloc` for one of our allocator types: `alloc`, `alloc_zeroed`
/// and `realloc` are the same for all; `$dealloc` is the type's `dealloc`.
macro_rules! global_alloc {
    ($ty:ty, $dealloc:path) => {
        // SAFETY: every method honours the GlobalAlloc contract: blocks are
        // at least `layout.size()` bytes, aligned to `layout.align()`,
        // disjoint while live; null is returned on failure; dealloc/realloc
        // accept the blocks returned by alloc/realloc with the same layout
        // (`realloc` does not use the old layout's size: the page map gives
        // the block's).
        unsafe impl GlobalAlloc for $ty {
            #[inline(always)]
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                fast::alloc(layout.size(), layout.align())
            }

            #[inline(always)]
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: GlobalAlloc contract: `ptr` was allocated with
                // `layout` (which `fast::dealloc_checked` checks).
                unsafe { $dealloc(ptr, layout.size(), layout.align()) }
            }

            #[inline]
            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                global::alloc_zeroed(layout.size(), layout.align())
            }

            #[inline]
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                // SAFETY: GlobalAlloc contract: `ptr` is live with `layout`.
                unsafe { global::realloc(ptr, new_size, layout.align(), "realloc()") }
            }
        }
    };
}

global_alloc!(RseqAlloc, fast::dealloc);

/// [`RseqAlloc`] with every `dealloc` checked against the page map:
///
/// ```
/// #[global_allocator]
/// static GLOBAL: rseq_alloc::RseqAllocChecked = rseq_alloc::RseqAllocChecked;
///
/// fn main() {
///     let v: Vec<u32> = (0..1000).collect();
///     assert_eq!(v.iter().sum::<u32>(), 499_500);
/// }
/// ```
///
/// The same heap and the same `alloc`, `alloc_zeroed` and `realloc`; its
/// `dealloc` compares the layout's size class with the one the page map
/// holds for the block's page and frees by the page map's. A layout that
/// does not match the block (unsafe code that frees a `Vec`'s buffer with
/// the wrong capacity, say) aborts with
/// `rseq-malloc: free(): size N does not match the block 0x... of M bytes`,
/// where `RseqAlloc` would put the block in another class's cache and hand
/// it out again as a block of that size. Double frees abort as with
/// `RseqAlloc`. The pointer itself is trusted as Rust's contract allows,
/// as `RseqAlloc` does (C `free` also rejects interior and foreign
/// pointers; that costs more).
///
/// Cost and gain (BENCHMARKS.md, eighth round): 7 more instructions per
/// `dealloc` (two of them cached loads): 0.2-0.45 ns more per alloc/free
/// pair of a size known early; and no wait for a size read from memory
/// just before the free (C-style code that keeps it in the block's
/// header, read on a cache miss): the harness's `larson` runs at about
/// 1.4x `RseqAlloc`'s speed on one thread, 1.1x on four.
#[derive(Clone, Copy, Debug, Default)]
pub struct RseqAllocChecked;

global_alloc!(RseqAllocChecked, fast::dealloc_checked);

/// The C-flavoured entry points the ffi crate and benches use. None of them
/// sets errno, panics, or allocates on its own behalf.
///
/// Fork: this crate registers `fork_prepare` / `fork_parent` / `fork_child`
/// with `pthread_atfork` from an ELF constructor, before `main` (never from
/// inside malloc's lazy init, which could deadlock on glibc's atfork lock),
/// in every program or library that links it; [`raw::register_fork_handlers`]
/// does the same and is idempotent. The protocol (stdio list lock first,
/// nothing taken in a single-threaded process) is documented in `fork.rs`.
/// The handlers are re-entrant for the forking thread, so registering them
/// twice is harmless.
pub mod raw {
    use crate::global;

    /// A message formatted on the stack (no allocation), for the C shim's
    /// reports.
    pub use crate::util::MsgBuf;

    /// The shim's counters (see `stats.rs` for the counting rules); the
    /// documented view is [`crate::Stats`].
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Counters {
        /// Heap pages committed plus huge mappings (live and kept).
        pub mapped_bytes: usize,
        /// Bytes in live blocks (class / page granularity).
        pub in_use_bytes: usize,
        /// Free objects held in per-CPU caches and in the CAS fallback's
        /// thread magazines.
        pub cached_bytes: usize,
        /// Bytes of huge blocks in use.
        pub huge_bytes: usize,
        /// Bytes of freed huge ranges kept mapped for reuse (they decay).
        pub huge_kept_bytes: usize,
        /// `mmap` calls made for huge blocks so far.
        pub huge_maps: u64,
        /// Free heap bytes currently given back to the OS.
        pub released_bytes: usize,
        /// Per-CPU cache hits (counted only with `RSEQ_MALLOC_CONF=stats=1`).
        pub fast_hits: u64,
        /// Per-CPU cache misses.
        pub fast_misses: u64,
        /// rseq restarts, process-wide.
        pub rseq_aborts: u64,
        /// Operations by the CAS fallback's full paths (all of them with
        /// `stats=1`) or bypassing the cache.
        pub fallback_ops: u64,
    }

    /// Whether the background decay thread (`background=1`) is running.
    pub fn background_running() -> bool {
        crate::decay::background_running()
    }

    /// What `malloc` guarantees (C `max_align_t`).
    pub const MIN_ALIGN: usize = 16;

    /// `malloc(size)`: null only when out of memory; size 0 gives a unique
    /// minimal block.
    #[inline]
    pub fn malloc(size: usize) -> *mut u8 {
        crate::fast::malloc(size)
    }

    /// Aligned allocation; `align` must be a power of two (null otherwise);
    /// null on OOM.
    #[inline]
    pub fn malloc_aligned(size: usize, align: usize) -> *mut u8 {
        if !align.is_power_of_two() {
            return core::ptr::null_mut();
        }
        global::alloc(size, align.max(MIN_ALIGN))
    }

    /// Zeroed allocation (the caller did the overflow check).
    #[inline]
    pub fn calloc(size: usize) -> *mut u8 {
        global::alloc_zeroed(size, MIN_ALIGN)
    }

    /// `free(ptr)`: null is a no-op; an invalid pointer aborts with
    /// `rseq-malloc: free(): invalid pointer 0x...`.
    ///
    /// # Safety
    /// `ptr` is null or a live block from this allocator, not used afterwards.
    #[inline]
    pub unsafe fn free(ptr: *mut u8) {
        // SAFETY: `ptr` is null or a live block of ours not used afterwards
        // (this function's contract, which is `fast::free`'s).
        unsafe { crate::fast::free(ptr) }
    }

    /// `free` naming another function (`who`, e.g. "realloc()") in the abort
    /// message.
    ///
    /// # Safety
    /// As for [`free`].
    pub unsafe fn free_checked(ptr: *mut u8, who: &'static str) {
        // SAFETY: `ptr` is null or a live block of ours not used afterwards
        // (this function's contract, which is `free_any`'s).
        unsafe { global::free_any(ptr, who) }
    }

    /// `free_sized` / `free_aligned_sized`: the size (and alignment, 0 for
    /// none) given at allocation. Blocks from `malloc` used `MIN_ALIGN`. The
    /// page map decides what the block is; a size that does not match it
    /// aborts with `rseq-malloc: free_sized(): size N does not match the
    /// block 0x... of M bytes` instead of corrupting the heap.
    ///
    /// # Safety
    /// `ptr` is null or a live block of this allocator, not used afterwards.
    #[inline]
    pub unsafe fn free_sized(ptr: *mut u8, size: usize, align: usize) {
        let align = if align.is_power_of_two() {
            align.max(MIN_ALIGN)
        } else {
            MIN_ALIGN
        };
        // SAFETY: `ptr` is null or a live block of ours not used afterwards
        // (this function's contract); the size is checked against the block.
        unsafe { global::free_sized_checked(ptr, size, align, "free_sized()") }
    }

    /// `realloc` for non-null `ptr` and `new_size > 0`; keeps `MIN_ALIGN`;
    /// null on OOM (the old block is untouched). Invalid `ptr` aborts with
    /// "realloc()".
    ///
    /// # Safety
    /// `ptr` is a live block from this allocator; on success only the
    /// returned pointer may be used.
    pub unsafe fn realloc(ptr: *mut u8, new_size: usize) -> *mut u8 {
        if ptr.is_null() {
            return malloc(new_size);
        }
        // SAFETY: `ptr` is a live block of ours (this function's contract),
        // allocated with `MIN_ALIGN` like every block of the C entry points.
        unsafe { global::realloc(ptr, new_size, MIN_ALIGN, "realloc()") }
    }

    /// Usable size of a live block; 0 for null. Invalid `ptr` aborts with
    /// "malloc_usable_size()".
    ///
    /// # Safety
    /// `ptr` is null or a live block from this allocator.
    pub unsafe fn usable_size(ptr: *mut u8) -> usize {
        if ptr.is_null() {
            return 0;
        }
        global::usable_of(ptr, "malloc_usable_size()")
    }

    /// True if `ptr` is inside our heap (not necessarily a live block
    /// start), the start of a huge block, or in the bootstrap arena.
    pub fn owns(ptr: *const u8) -> bool {
        global::owns(ptr)
    }

    /// Releases free memory to the OS (drains the per-CPU caches too);
    /// true if anything was released. Same as [`crate::trim`].
    pub fn trim() -> bool {
        global::trim()
    }

    /// `malloc_stats()`: a human-readable report on stderr.
    pub fn print_stats() {
        crate::stats::print_stats()
    }

    /// The shim's counters.
    pub fn stats() -> Counters {
        crate::stats::snapshot()
    }

    /// Registers the three fork handlers below with `pthread_atfork`, once
    /// per process (the crate's ELF constructor already calls this).
    pub fn register_fork_handlers() {
        crate::fork::register_handlers()
    }

    /// `pthread_atfork` prepare handler: takes glibc's stdio list lock and
    /// every allocator lock, or nothing in a single-threaded process.
    pub fn fork_prepare() {
        global::fork_prepare()
    }

    /// `pthread_atfork` parent handler.
    pub fn fork_parent() {
        global::fork_parent()
    }

    /// `pthread_atfork` child handler.
    pub fn fork_child() {
        global::fork_child()
    }

    /// Initialises now (idempotent; lazy init is automatic anyway).
    pub fn init() {
        global::ensure_init();
    }

    /// Checks the internal invariants of the page heap, the central lists
    /// and the huge table (debug builds; for tests, O(heap)).
    pub fn check_invariants() {
        global::check_invariants()
    }
}

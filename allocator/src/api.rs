//! The documented API beyond `GlobalAlloc`: statistics, trimming, the
//! options in effect and the version, in the vocabulary of jemalloc-ctl.

use crate::config::Config;
use crate::cpu_cache::SLABS;
use crate::global::{self, CENTRAL, HEAP, HUGE};
use crate::size_class::SizeClass;
use crate::stats::{active_mapped, cached_bytes_in_region as region_bytes, note_peaks};
use core::sync::atomic::Ordering;

/// A statistics snapshot, from [`stats`]. Byte counts are racy snapshots
/// of counters that other threads keep changing; reading them never
/// allocates, and takes one short lock (the page heap's, for `metadata`).
///
/// In a quiet moment `allocated <= active <= mapped <= resident`.
///
/// `#[repr(C)]`: the C shim hands it out as `struct rseq_malloc_stats`
/// (`ffi/include/rseq_malloc.h`), so fields are only appended, in the
/// header's order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Bytes in live blocks, rounded to their size class (small blocks) or
    /// pages (large and huge blocks).
    pub allocated: usize,
    /// Bytes in spans holding at least one live or cached object, large
    /// blocks and huge mappings: `allocated` plus free objects inside
    /// partly used spans, in per-CPU caches and in the central lists.
    pub active: usize,
    /// Heap pages committed and not given back to the OS, plus huge
    /// mappings. Drops after [`trim`] or a decay release.
    pub mapped: usize,
    /// An upper bound of resident memory: `mapped` plus `metadata` (pages
    /// committed but never touched are counted too).
    pub resident: usize,
    /// Free heap bytes given back to the OS (`madvise`) whose address
    /// space is kept for reuse (jemalloc calls these "retained").
    pub retained: usize,
    /// Allocator metadata: page map, span records and the per-CPU cache
    /// regions.
    pub metadata: usize,
    /// Free objects sitting in per-CPU caches, all regions together (see
    /// [`cached_bytes_in_region`] for one region), and in the CAS
    /// fallback's thread magazines.
    pub cached: usize,
    /// Bytes of huge blocks (1 MiB and more, mapped directly).
    pub huge: usize,
    /// Number of live huge blocks.
    pub huge_blocks: usize,
    /// Highest `active` seen at a slow-path event (a cache refill, a large
    /// or huge allocation, a snapshot): the peak of `allocated` plus the
    /// free space inside the spans used then, never below the true peak of
    /// `allocated` at those events.
    pub peak_active: usize,
    /// Highest `mapped` seen at a slow-path event.
    pub peak_mapped: usize,
    /// Per-CPU cache hits (counted only with `RSEQ_MALLOC_CONF=stats=1`).
    pub fast_hits: u64,
    /// Per-CPU cache misses (refills and threads that could not use a
    /// cache).
    pub fast_misses: u64,
    /// rseq restarts, process-wide.
    pub rseq_aborts: u64,
    /// Operations done by the compare-and-swap fallback's full paths (its
    /// quick pop and push count only with `RSEQ_MALLOC_CONF=stats=1`) or
    /// bypassing the caches.
    pub fallback_ops: u64,
}

/// Takes a statistics snapshot.
///
/// ```
/// #[global_allocator]
/// static GLOBAL: rseq_alloc::RseqAlloc = rseq_alloc::RseqAlloc;
///
/// fn main() {
///     let block = vec![7u8; 3 << 20]; // a huge block: mapped directly
///     let s = rseq_alloc::stats();
///     assert!(s.allocated >= block.len());
///     assert!(s.huge >= block.len());
///     assert!(s.allocated <= s.active && s.active <= s.mapped);
///     assert!(s.mapped <= s.resident && s.peak_mapped >= s.huge);
///     drop(block);
///     assert!(rseq_alloc::stats().huge < 3 << 20);
/// }
/// ```
pub fn stats() -> Stats {
    if !global::ensure_init() {
        return Stats::default();
    }
    note_peaks();
    let c = crate::stats::snapshot();
    let (active, mapped) = active_mapped();
    let h = HEAP.stats();
    let regions = cache_regions();
    let metadata = HEAP.metadata_bytes() + regions * rseq_sys::percpu::REGION_BYTES;
    // `allocated` from the central lists' counts, as the shim's counters.
    let mut small_used = 0usize;
    for class in SizeClass::all() {
        let (free, total) = CENTRAL.get(class).counts();
        small_used += total.saturating_sub(free) * class.size_bytes();
    }
    let huge = HUGE.bytes();
    let allocated = small_used.saturating_sub(c.cached_bytes) + h.large_bytes + huge;
    Stats {
        allocated,
        active: active.max(allocated),
        mapped: mapped.max(active),
        resident: mapped.max(active) + metadata,
        retained: h.free_bytes.saturating_sub(h.free_dirty_bytes),
        metadata,
        cached: c.cached_bytes,
        huge,
        huge_blocks: HUGE.count(),
        peak_active: crate::stats::PEAK_ACTIVE.load(Ordering::Relaxed),
        peak_mapped: crate::stats::PEAK_MAPPED.load(Ordering::Relaxed),
        fast_hits: c.fast_hits,
        fast_misses: c.fast_misses,
        rseq_aborts: c.rseq_aborts,
        fallback_ops: c.fallback_ops,
    }
}

/// Number of per-CPU cache regions (one per possible CPU, or per
/// concurrency id); 0 before the caches exist or without them.
///
/// ```
/// let n = rseq_alloc::cache_regions();
/// let total: usize = (0..n).map(rseq_alloc::cached_bytes_in_region).sum();
/// assert!(total <= rseq_alloc::stats().cached + (1 << 20)); // racy, but close
/// ```
pub fn cache_regions() -> usize {
    if global::cache_ready() {
        SLABS.nregions()
    } else {
        0
    }
}

/// Bytes of free objects cached in region `region` (0 when out of range).
pub fn cached_bytes_in_region(region: usize) -> usize {
    if region >= cache_regions() {
        return 0;
    }
    region_bytes(region)
}

/// Gives free memory back to the OS now: drains every per-CPU cache into
/// the central lists, returns empty spans to the page heap and releases
/// its free pages (`madvise`). Returns whether anything was released.
/// Like jemalloc's `arena.<i>.purge` or glibc's `malloc_trim(0)`.
///
/// ```
/// #[global_allocator]
/// static GLOBAL: rseq_alloc::RseqAlloc = rseq_alloc::RseqAlloc;
///
/// fn main() {
///     let v: Vec<Vec<u8>> = (0..256).map(|_| vec![1u8; 64 << 10]).collect();
///     drop(v);
///     rseq_alloc::trim();
///     let s = rseq_alloc::stats();
///     assert_eq!(s.cached, 0);
///     assert!(s.retained > 0, "{s:?}");
/// }
/// ```
pub fn trim() -> bool {
    global::trim()
}

/// The options in effect: `RSEQ_MALLOC_CONF` as parsed at initialisation
/// (the defaults where it said nothing, or before initialisation).
///
/// ```
/// let o = rseq_alloc::options();
/// assert_eq!(o, rseq_alloc::Options::DEFAULT); // RSEQ_MALLOC_CONF unset
/// assert!(!o.rseq_off && !o.verbose && !o.stats);
/// assert_eq!(o.decay_ms, 10_000);
/// ```
pub fn options() -> Config {
    global::ensure_init();
    crate::config::in_effect()
}

/// This crate's version (`CARGO_PKG_VERSION`, e.g. "0.1.0").
///
/// ```
/// assert_eq!(rseq_alloc::version(), env!("CARGO_PKG_VERSION"));
/// ```
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

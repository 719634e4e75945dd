//! Statistics: counters read without allocating or locking (racy snapshots),
//! and the `malloc_stats()` / `stats=1` report written with `write(2)`.
//!
//! Counting rules:
//! - `mapped_bytes`: heap pages committed + huge mappings (live and kept);
//! - `huge_kept_bytes`: freed huge ranges kept mapped for reuse;
//! - `huge_maps`: `mmap` calls made for huge blocks (cumulative);
//! - `in_use_bytes`: bytes of live blocks at class/page granularity:
//!   small objects held by neither a central list nor a per-CPU cache, plus
//!   large spans and huge mappings in use;
//! - `cached_bytes`: free objects sitting in per-CPU caches;
//! - `released_bytes`: heap bytes in free spans given back with `madvise`;
//! - `fast_hits`: per-CPU pops that hit, counted only with `stats=1` (to keep
//!   the default fast path free of shared read-modify-writes);
//! - `fast_misses`: per-CPU pops that failed (empty cache: refill; or the
//!   thread could not use the cache), counted on the slow path;
//! - `rseq_aborts`: rseq restarts (rseq-sys);
//! - `fallback_ops`: operations done by the CAS fallback plus operations that
//!   bypassed the per-CPU cache (unregistered thread, exhausted restarts, no
//!   cache).

use crate::cpu_cache::SLABS;
use crate::global::{self, CENTRAL, HEAP, HUGE};
use crate::size_class::SizeClass;
use crate::util::MsgBuf;
use crate::Stats;
use core::sync::atomic::Ordering;

/// Bytes of free objects in one region's cache (racy).
pub fn cached_bytes_in_region(region: usize) -> usize {
    if !global::cache_ready() {
        return 0;
    }
    crate::cpu_cache::cached_bytes_in_region(region)
}

/// A snapshot of the counters.
pub fn snapshot() -> Stats {
    let h = HEAP.stats();
    let cached: usize = if global::cache_ready() {
        (0..SLABS.nregions()).map(cached_bytes_in_region).sum()
    } else {
        0
    };
    let mut small_used = 0usize;
    for c in SizeClass::all() {
        let (free, total) = CENTRAL.get(c).counts();
        small_used += total.saturating_sub(free) * c.size_bytes();
    }
    let huge = HUGE.bytes();
    let kept = HUGE.kept_bytes();
    Stats {
        mapped_bytes: h.committed_bytes + huge + kept,
        in_use_bytes: small_used.saturating_sub(cached) + h.large_bytes + huge,
        cached_bytes: cached,
        huge_bytes: huge,
        huge_kept_bytes: kept,
        huge_maps: HUGE.maps(),
        released_bytes: h.free_bytes.saturating_sub(h.free_dirty_bytes),
        fast_hits: global::FAST_HITS.load(Ordering::Relaxed),
        fast_misses: global::FAST_MISSES.load(Ordering::Relaxed),
        rseq_aborts: rseq_sys::percpu::abort_count(),
        fallback_ops: rseq_sys::percpu::cas_op_count()
            + global::SLOW_DIRECT_OPS.load(Ordering::Relaxed),
    }
}

/// Writes the human-readable report to stderr; first line
/// `rseq-malloc: stats`.
pub fn print_stats() {
    let s = snapshot();
    let mut m = MsgBuf::new();
    m.str("rseq-malloc: stats\n");
    m.flush_stderr();
    m.str("  mode=")
        .str(global::mode_name())
        .str(" index=")
        .str(global::index_name())
        .str(" cpus=")
        .dec(rseq_sys::registration::possible_cpus() as u64)
        .str(" regions=")
        .dec(if global::cache_ready() {
            SLABS.nregions() as u64
        } else {
            0
        })
        .str("\n");
    m.flush_stderr();
    m.str("  mapped_bytes=")
        .dec(s.mapped_bytes as u64)
        .str(" in_use_bytes=")
        .dec(s.in_use_bytes as u64)
        .str(" cached_bytes=")
        .dec(s.cached_bytes as u64)
        .str(" huge_bytes=")
        .dec(s.huge_bytes as u64)
        .str(" released_bytes=")
        .dec(s.released_bytes as u64)
        .str("\n");
    m.flush_stderr();
    m.str("  huge_kept_bytes=")
        .dec(s.huge_kept_bytes as u64)
        .str(" huge_maps=")
        .dec(s.huge_maps)
        .str(" dirty_free_bytes=")
        .dec(HEAP.stats().free_dirty_bytes as u64)
        .str(" decay_ms=");
    match u64::try_from(crate::decay::decay_ms()) {
        Ok(d) => m.dec(d),
        Err(_) => m.str("-1"),
    };
    m.str(" background=")
        .dec(u64::from(crate::decay::background_running()))
        .str("\n");
    m.flush_stderr();
    m.str("  fast_hits=")
        .dec(s.fast_hits)
        .str(" fast_misses=")
        .dec(s.fast_misses)
        .str(" rseq_aborts=")
        .dec(s.rseq_aborts)
        .str(" fallback_ops=")
        .dec(s.fallback_ops)
        .str(" idle_drains=")
        .dec(crate::cpu_cache::IDLE_DRAINS.load(Ordering::Relaxed))
        .str("\n");
    m.flush_stderr();
    if global::cache_ready() {
        m.str("  cached per cpu:");
        for r in 0..SLABS.nregions() {
            let b = cached_bytes_in_region(r);
            if b != 0 {
                m.str(" ").dec(r as u64).str("=").dec(b as u64);
            }
            if m.as_bytes().len() > 400 {
                m.str("\n");
                m.flush_stderr();
                m.str("   ");
            }
        }
        m.str("\n");
        m.flush_stderr();
    }
}

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
//! - `fallback_ops`: operations done by the CAS fallback's full paths (its
//!   quick pop and push are not counted, except with `stats=1`, which turns
//!   them off) plus operations that bypassed the per-CPU cache (unregistered
//!   thread, exhausted restarts, no cache);
//! - `middle:` and one line per class the miss path visited: the central
//!   lists' `MoveStats` (pops = refills and direct allocations, pushes =
//!   overflow flushes, drains and direct frees; objects per visit; the share
//!   the transfer stack served; spans taken from and given back to the page
//!   heap; visits that found the class lock held; average lock hold in
//!   time-stamp-counter ticks, measured only with `stats=1`).

use crate::cpu_cache::SLABS;
use crate::global::{self, CENTRAL, HEAP, HUGE};
use crate::raw::Counters;
use crate::size_class::SizeClass;
use crate::util::MsgBuf;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

/// Highest `active` / `mapped` seen (see [`note_peaks`]).
pub(crate) static PEAK_ACTIVE: AtomicUsize = AtomicUsize::new(0);
pub(crate) static PEAK_MAPPED: AtomicUsize = AtomicUsize::new(0);

/// `(active, mapped)` right now, from a handful of relaxed loads:
/// `active` = bytes of spans in use (small and large) plus huge mappings;
/// `mapped` = committed heap bytes not released plus huge mappings.
pub(crate) fn active_mapped() -> (usize, usize) {
    let h = HEAP.stats();
    let huge = HUGE.bytes();
    let released = h.free_bytes.saturating_sub(h.free_dirty_bytes);
    (
        h.small_bytes + h.large_bytes + huge,
        h.committed_bytes.saturating_sub(released) + huge,
    )
}

/// Folds the current `active` / `mapped` into the peaks. Called on slow
/// paths only (per-CPU cache refills, large and huge allocations,
/// snapshots): a few loads and two `fetch_max`, next to work that costs
/// far more. A peak is therefore the highest value seen at such a point.
pub(crate) fn note_peaks() {
    let (active, mapped) = active_mapped();
    if active > PEAK_ACTIVE.load(Ordering::Relaxed) {
        PEAK_ACTIVE.fetch_max(active, Ordering::Relaxed);
    }
    if mapped > PEAK_MAPPED.load(Ordering::Relaxed) {
        PEAK_MAPPED.fetch_max(mapped, Ordering::Relaxed);
    }
}

/// Bytes of free objects in one region's cache (racy).
pub fn cached_bytes_in_region(region: usize) -> usize {
    if !global::cache_ready() {
        return 0;
    }
    crate::cpu_cache::cached_bytes_in_region(region)
}

/// A snapshot of the counters.
pub fn snapshot() -> Counters {
    let h = HEAP.stats();
    let cached: usize = if global::cache_ready() {
        (0..SLABS.nregions()).map(cached_bytes_in_region).sum()
    } else {
        0
    } + crate::magazine::cached_bytes();
    let mut small_used = 0usize;
    for c in SizeClass::all() {
        let (free, total) = CENTRAL.get(c).counts();
        small_used += total.saturating_sub(free) * c.size_bytes();
    }
    let huge = HUGE.bytes();
    let kept = HUGE.kept_bytes();
    note_peaks();
    Counters {
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
        fallback_ops: SLABS.fallback_ops() + global::SLOW_DIRECT_OPS.load(Ordering::Relaxed),
    }
}

/// Where the report goes: 2, or the `stats_file` descriptor.
static OUT_FD: AtomicI32 = AtomicI32::new(2);
/// `stats=json`.
static JSON: AtomicBool = AtomicBool::new(false);

/// Applies `stats=json` and opens `stats_file` (`O_WRONLY | O_CREAT |
/// O_APPEND | O_CLOEXEC`, mode 0644) at initialisation, so the report
/// survives a program that closes stderr. A file that cannot be opened is
/// reported on stderr and the report stays on stderr.
pub(crate) fn configure_output(cfg: &crate::config::Config) {
    JSON.store(cfg.stats_json, Ordering::Relaxed);
    let Some(path) = cfg.stats_file else {
        return;
    };
    let mut buf = [0u8; 4096];
    if path.len() >= buf.len() || path.contains(&0) {
        crate::util::write_stderr(b"rseq-malloc: stats_file: path too long, using stderr\n");
        return;
    }
    buf[..path.len()].copy_from_slice(path);
    // SAFETY: `buf` is NUL-terminated (zeroed past the path); open(2) does
    // not allocate.
    let fd = unsafe {
        libc::open(
            buf.as_ptr().cast(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        let mut m = MsgBuf::new();
        m.str("rseq-malloc: stats_file: cannot open '")
            .bytes(path)
            .str("', using stderr\n");
        m.flush_stderr();
        return;
    }
    OUT_FD.store(fd, Ordering::Relaxed);
}

/// Writes `m` to the report descriptor (retrying short writes) and clears it.
fn flush(m: &mut MsgBuf) {
    let fd = OUT_FD.load(Ordering::Relaxed);
    let mut bytes = m.as_bytes();
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a valid readable slice for its whole length.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            // SAFETY: reading errno through libc's thread-local location.
            if n < 0 && unsafe { *libc::__errno_location() } == libc::EINTR {
                continue;
            }
            break;
        }
        bytes = &bytes[n as usize..];
    }
    *m = MsgBuf::new();
}

/// The report as one JSON object on one line (`stats=json`), with the
/// numbers of [`crate::stats()`].
fn print_json() {
    let s = crate::api::stats();
    let mut m = MsgBuf::new();
    m.str("{\"rseq_malloc\":\"")
        .str(crate::api::version())
        .str("\",\"mode\":\"")
        .str(global::mode_name())
        .str("\",\"index\":\"")
        .str(global::index_name())
        .str("\",\"cpus\":")
        .dec(rseq_sys::registration::possible_cpus() as u64);
    flush(&mut m);
    let fields: [(&str, u64); 18] = [
        ("allocated", s.allocated as u64),
        ("active", s.active as u64),
        ("mapped", s.mapped as u64),
        ("resident", s.resident as u64),
        ("retained", s.retained as u64),
        ("metadata", s.metadata as u64),
        ("cached", s.cached as u64),
        ("huge", s.huge as u64),
        ("huge_blocks", s.huge_blocks as u64),
        ("peak_active", s.peak_active as u64),
        ("peak_mapped", s.peak_mapped as u64),
        ("fast_hits", s.fast_hits),
        ("fast_misses", s.fast_misses),
        ("rseq_aborts", s.rseq_aborts),
        ("fallback_ops", s.fallback_ops),
        (
            "idle_drains",
            crate::cpu_cache::IDLE_DRAINS.load(Ordering::Relaxed),
        ),
        ("regions", crate::api::cache_regions() as u64),
        // SAFETY: getpid has no preconditions.
        ("pid", unsafe { libc::getpid() } as u64),
    ];
    for (k, v) in fields {
        m.str(",\"").str(k).str("\":").dec(v);
        flush(&mut m);
    }
    m.str(",\"cached_per_region\":[");
    for r in 0..crate::api::cache_regions() {
        if r > 0 {
            m.str(",");
        }
        m.dec(crate::api::cached_bytes_in_region(r) as u64);
        if m.as_bytes().len() > 400 {
            flush(&mut m);
        }
    }
    m.str("]}\n");
    flush(&mut m);
}

extern "C" {
    // Not in the `libc` crate for Linux; glibc and musl both export it.
    fn pthread_setcancelstate(
        state: core::ffi::c_int,
        old: *mut core::ffi::c_int,
    ) -> core::ffi::c_int;
}
/// `PTHREAD_CANCEL_DISABLE` on Linux (glibc and musl).
const PTHREAD_CANCEL_DISABLE: core::ffi::c_int = 1;

/// Writes the report to stderr (or `stats_file`); first line
/// `rseq-malloc: stats`, or one JSON line with `stats=json`.
///
/// `write(2)` is a cancellation point: like glibc's `malloc_stats`, the
/// report is written with cancellation disabled, so a pending cancellation
/// request neither stops it half-way nor acts inside it (it stays pending
/// for the caller's next cancellation point).
pub fn print_stats() {
    let mut old: core::ffi::c_int = 0;
    // SAFETY: `old` is a valid out-pointer; the call only changes the
    // calling thread's cancelability state, restored below.
    unsafe { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &mut old) };
    print_stats_uncancellable();
    // SAFETY: restores the state saved above (a null out-pointer is allowed
    // by glibc and musl).
    unsafe { pthread_setcancelstate(old, core::ptr::null_mut()) };
}

fn print_stats_uncancellable() {
    if JSON.load(Ordering::Relaxed) {
        print_json();
        return;
    }
    let s = snapshot();
    let mut m = MsgBuf::new();
    m.str("rseq-malloc: stats\n");
    flush(&mut m);
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
    flush(&mut m);
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
    flush(&mut m);
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
    flush(&mut m);
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
    flush(&mut m);
    print_middle_end(&mut m);
    if global::cache_ready() {
        m.str("  cached per cpu:");
        for r in 0..SLABS.nregions() {
            let b = cached_bytes_in_region(r);
            if b != 0 {
                m.str(" ").dec(r as u64).str("=").dec(b as u64);
            }
            if m.as_bytes().len() > 400 {
                m.str("\n");
                flush(&mut m);
                m.str("   ");
            }
        }
        m.str("\n");
        flush(&mut m);
    }
}

/// `a * 100 / b`, 0 when `b` is 0.
fn percent(a: u64, b: u64) -> u64 {
    a.saturating_mul(100).checked_div(b).unwrap_or(0)
}
/// One direction of central-list moves: `<label>visits<sep>objects per
/// visit <dir>_transfer=P%` (the share of objects that went through the
/// transfer stack). `v` is (visits, objects, objects via the transfer stack).
fn direction(m: &mut MsgBuf, label: &str, v: [u64; 3], sep: &str, dir: &str) {
    m.str(label)
        .dec(v[0])
        .str(sep)
        .dec(v[1].checked_div(v[0]).unwrap_or(0))
        .str(" ")
        .str(dir)
        .str("_transfer=")
        .dec(percent(v[2], v[1]))
        .str("%");
}

/// The middle-end section: totals over all classes, then one line per class
/// the miss path visited (see `central::MoveStats`): visits and objects per
/// visit each way, the share the transfer stack served, spans taken from and
/// given back to the page heap, acquisitions that found the lock held, and
/// the average lock hold in time-stamp-counter ticks.
fn print_middle_end(m: &mut MsgBuf) {
    let load = |a: &core::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut tot = [0u64; 8];
    for c in SizeClass::all() {
        let v = &CENTRAL.get(c).moves;
        for (t, x) in tot.iter_mut().zip([
            load(&v.pops),
            load(&v.pop_objects),
            load(&v.pop_transfer),
            load(&v.pushes),
            load(&v.push_objects),
            load(&v.push_transfer),
            load(&v.contended),
            load(&v.hold_ticks),
        ]) {
            *t += x;
        }
    }
    let visits = tot[0] + tot[3];
    m.str("  middle: ");
    direction(m, "pops=", [tot[0], tot[1], tot[2]], " objs/pop=", "from");
    direction(m, " pushes=", [tot[3], tot[4], tot[5]], " objs/push=", "to");
    m.str(" contended=")
        .dec(percent(tot[6], visits))
        .str("% hold_ticks/visit=")
        .dec(tot[7].checked_div(visits).unwrap_or(0))
        .str("\n");
    flush(m);
    for c in SizeClass::all() {
        let v = &CENTRAL.get(c).moves;
        let (pops, pushes) = (load(&v.pops), load(&v.pushes));
        if pops + pushes == 0 {
            continue;
        }
        let (po, pu) = (load(&v.pop_objects), load(&v.push_objects));
        m.str("    class ")
            .dec(c.index() as u64)
            .str(" (")
            .dec(c.size_bytes() as u64)
            .str(" B, batch ")
            .dec(c.batch() as u64)
            .str("): ");
        direction(m, "pops=", [pops, po, load(&v.pop_transfer)], "x", "from");
        direction(
            m,
            " pushes=",
            [pushes, pu, load(&v.push_transfer)],
            "x",
            "to",
        );
        m.str(" spans +")
            .dec(load(&v.spans_new))
            .str(" -")
            .dec(load(&v.spans_freed))
            .str(" contended=")
            .dec(percent(load(&v.contended), pops + pushes))
            .str("% hold=")
            .dec(load(&v.hold_ticks).checked_div(pops + pushes).unwrap_or(0))
            .str("\n");
        flush(m);
    }
}

//! Per-CPU caches: the front end, on rseq-sys's `PerCpuSlabs`.
//!
//! One region per possible CPU (or per `mm_cid`), each holding one bounded
//! stack of free objects per size class; capacities come from
//! [`size_class::CLASS_CAPACITY`], so one region holds at most
//! [`size_class::CPU_CACHE_MAX_BYTES`] (about 2.4 MiB) of free objects;
//! blocks above 32 KiB are not cached here (capacity 0).
//! `malloc` pops, `free` pushes; a miss or an overflow moves a batch through
//! the central list (see `global`).
//!
//! Index: `mm_cid` by default when the kernel maintains it (a process with 4
//! threads on a 256-CPU machine uses 4 regions), else the CPU id;
//! `RSEQ_MALLOC_CONF=index=cpu|cid` overrides. Discipline: rseq critical
//! sections, or the CAS fallback when rseq is unavailable or `rseq=off`
//! (with a few objects per class in each thread's magazine in front of
//! it: `magazine`).
//! Threads that cannot use the cache (unregistered, restarts exhausted) go
//! to the central lists directly.
//!
//! Reclaiming: `drain_all` empties every region into the central lists
//! (rseq-sys stops the region's stacks and fences with membarrier); used by
//! `trim()` and when the heap runs out of memory. Idle regions are drained
//! automatically: every `idle_scan_period()` cache misses (process-wide:
//! 4096 per 16 regions, so the scan costs a few loads per miss),
//! `drain_idle_regions` takes a fingerprint of each region's stack depths
//! and drains the non-empty regions whose fingerprint has not changed since
//! the previous scan (e.g. the cache of a CPU or cid no thread uses any more,
//! after a burst of threads). The scan costs `nregions x classes` relaxed
//! loads, amortised over the misses; an active region that happens to look
//! unchanged is drained needlessly and refills on its next miss.

use crate::central::CentralLists;
use crate::config::{Config, IndexChoice};
use crate::lock::RawLock;
use crate::page_heap::PageHeap;
use crate::size_class::{self, SizeClass};
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use rseq_sys::percpu::{self, Discipline, Index, PerCpuSlabs, RegionId};

/// The per-CPU stacks (inert until `init`).
pub(crate) static SLABS: PerCpuSlabs = PerCpuSlabs::new();

/// Sets up the regions; false if the cache cannot be used (then the
/// allocator runs on the central lists alone).
pub(crate) fn init(cfg: &Config) -> bool {
    let nregions = rseq_sys::registration::possible_cpus().max(1);
    let Some(bytes) = nregions.checked_mul(percpu::REGION_BYTES) else {
        return false;
    };
    let Some(mem) = crate::os::map_aligned(
        bytes,
        percpu::REGION_BYTES,
        libc::PROT_READ | libc::PROT_WRITE,
        true,
    ) else {
        return false;
    };
    let discipline = if cfg.rseq_off {
        Discipline::TryLock
    } else {
        Discipline::Rseq
    };
    let index = match cfg.index {
        IndexChoice::Cpu => Index::Cpu,
        IndexChoice::Cid => Index::Cid,
        IndexChoice::Auto => {
            if rseq_sys::registration::mm_cid_supported() {
                Index::Cid
            } else {
                Index::Cpu
            }
        }
    };
    IDLE_PERIOD.store(
        IDLE_SCAN_PERIOD * nregions.div_ceil(16) as u64,
        Ordering::Relaxed,
    );
    if let Some(sigs) = crate::os::map(
        nregions * core::mem::size_of::<AtomicU64>(),
        libc::PROT_READ | libc::PROT_WRITE,
        true,
    ) {
        IDLE_SIGS.store(sigs.as_ptr().cast(), Ordering::Release);
    }
    // SAFETY: `mem` is a fresh zeroed mapping of nregions * REGION_BYTES,
    // aligned to REGION_BYTES, never unmapped; the capacities sum to
    // CPU_CACHE_TOTAL_SLOTS <= MAX_SLOTS (const-asserted); called once.
    unsafe {
        SLABS.init(
            mem.as_ptr(),
            nregions,
            &size_class::CLASS_CAPACITY,
            discipline,
            index,
        )
    }
}

/// Cache misses between two idle scans, per 16 regions.
const IDLE_SCAN_PERIOD: u64 = 4096;
static IDLE_PERIOD: AtomicU64 = AtomicU64::new(IDLE_SCAN_PERIOD);

/// Cache misses between two idle scans: `IDLE_SCAN_PERIOD` per started
/// group of 16 regions (a scan reads `regions x classes` stack depths).
#[inline]
pub(crate) fn idle_scan_period() -> u64 {
    IDLE_PERIOD.load(Ordering::Relaxed)
}

/// One fingerprint per region (`nregions` words, mapped at init; null if
/// that mapping failed, which disables idle draining).
static IDLE_SIGS: AtomicPtr<AtomicU64> = AtomicPtr::new(core::ptr::null_mut());

/// Regions drained because they were idle (statistics).
pub(crate) static IDLE_DRAINS: AtomicU64 = AtomicU64::new(0);

fn region_fingerprint(region: usize) -> u64 {
    let mut sig = 0u64;
    for c in SizeClass::all() {
        let n = SLABS.len(RegionId(region), c.slab()) as u64;
        sig = sig.rotate_left(7) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    sig
}

/// Drains the regions that look idle (see the module doc). Never blocks: if
/// another drain or a fork is in progress, it does nothing. Returns whether
/// some region still holds objects (a later scan may find it idle).
#[cold]
#[inline(never)]
pub(crate) fn drain_idle_regions(central: &CentralLists, heap: &PageHeap) -> bool {
    let sigs = IDLE_SIGS.load(Ordering::Acquire);
    if sigs.is_null() || !DRAIN_LOCK.try_lock() {
        return false;
    }
    let mut holding = false;
    for r in 0..SLABS.nregions() {
        // SAFETY: IDLE_SIGS has `nregions` entries (mapped at init).
        let slot = unsafe { &*sigs.add(r) };
        let sig = region_fingerprint(r);
        let empty = SizeClass::all().all(|c| SLABS.len(RegionId(r), c.slab()) == 0);
        if !empty && sig == slot.load(Ordering::Relaxed) {
            let _moving = crate::double_free::InFlight::all();
            SLABS.drain(RegionId(r), &mut |class, items| {
                if let Some(c) = SizeClass::from_index(class.index()) {
                    // SAFETY: the drain handed us these free objects of
                    // `class` exclusively.
                    unsafe { central.get(c).push_batch(heap, c, items) };
                }
            });
            IDLE_DRAINS.fetch_add(1, Ordering::Relaxed);
            slot.store(region_fingerprint(r), Ordering::Relaxed);
        } else {
            slot.store(sig, Ordering::Relaxed);
            holding |= !empty;
        }
    }
    // SAFETY: taken above by this thread.
    unsafe { DRAIN_LOCK.unlock() };
    holding
}

/// Serialises drains with `fork_prepare`: a drain holds rseq-sys's region
/// lock, which a child must not inherit locked.
pub(crate) static DRAIN_LOCK: RawLock = RawLock::new();

/// Empties every region of the per-CPU caches into the central lists (the
/// back end is a parameter: this layer knows nothing above it).
pub(crate) fn drain_all_into(central: &CentralLists, heap: &PageHeap) {
    DRAIN_LOCK.lock();
    let _moving = crate::double_free::InFlight::all();
    for r in 0..SLABS.nregions() {
        SLABS.drain(RegionId(r), &mut |class, items| {
            if let Some(c) = SizeClass::from_index(class.index()) {
                // SAFETY: the items were free objects of `class` in the
                // cache; the drain handed them to us exclusively.
                unsafe { central.get(c).push_batch(heap, c, items) };
            }
        });
    }
    // SAFETY: taken above by this thread.
    unsafe { DRAIN_LOCK.unlock() };
}

/// Whether `p` sits in some region's stack of `class` (racy scan; see
/// `double_free` for how a miss is confirmed).
pub(crate) fn cached(class: SizeClass, p: *mut u8) -> bool {
    (0..SLABS.nregions()).any(|r| SLABS.contains(RegionId(r), class.slab(), p))
}

/// Bytes of free objects in one region (racy snapshot).
pub(crate) fn cached_bytes_in_region(region: usize) -> usize {
    SizeClass::all()
        .map(|c| SLABS.len(RegionId(region), c.slab()) * c.size_bytes())
        .sum()
}

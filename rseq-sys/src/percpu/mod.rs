//! Per-CPU bounded stacks of pointers: the mechanism under a slab
//! allocator's per-CPU cache.
//!
//! A [`PerCpuSlabs`] owns `nregions` regions of [`REGION_BYTES`], one per CPU
//! (or per concurrency id). Each region holds one stack per class, laid out
//! as in `layout.rs` (the one description of the layout, with its
//! invariants).
//!
//! # Disciplines (one per structure, never both)
//!
//! - [`Discipline::Rseq`] (`rseq.rs`): every operation is an rseq critical
//!   section on the region of the CPU the thread runs on; no atomic
//!   read-modify-write.
//! - [`Discipline::TryLock`] (`trylock.rs`): the fallback. Each stack is
//!   guarded by the lock bit of its header's `current` word, taken with one
//!   compare-and-swap (which also reads the index) and never waited for;
//!   the region is the CPU the thread runs on, read the cheapest way the
//!   process allows.
//!
//! Remote changes (draining a region while others use it) follow the drain
//! protocol of `drain.rs`.

pub(crate) mod layout;

mod drain;
mod rseq;
mod trylock;

pub use layout::{
    ClassId, RegionId, HEADER_SLOTS, MAX_CLASSES, MAX_SLOTS, REGION_BYTES, REGION_SHIFT,
};

use crate::arch;
use crate::registration::{self, Mode};
use core::ptr::NonNull;
use core::sync::atomic::{
    AtomicBool, AtomicIsize, AtomicPtr, AtomicU32, AtomicU8, AtomicUsize, Ordering,
};
use layout::{Region, READY};
use trylock::{CpuSource, FIRST_TRYLOCK_MODE};

/// How regions are indexed in rseq mode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Index {
    /// By `cpu_id`: one region per CPU.
    Cpu,
    /// By `mm_cid`: one region per concurrently running thread, at most one
    /// per CPU (Linux >= 6.3).
    Cid,
}

/// Which discipline drives a structure (see the module docs).
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Discipline {
    /// rseq critical sections.
    Rseq = 1,
    /// The fallback: a per-stack try-lock taken by compare-and-swap.
    TryLock = 2,
}

/// `PerCpuSlabs::mode` before `init`: every operation is refused.
const INERT: u8 = 0;
/// `PerCpuSlabs::mode` of a structure on the rseq discipline. (A try-lock
/// structure's mode is its [`CpuSource`], from [`FIRST_TRYLOCK_MODE`] up.)
const MODE_RSEQ: u8 = Discipline::Rseq as u8;
const _: () = assert!(INERT < MODE_RSEQ && MODE_RSEQ < FIRST_TRYLOCK_MODE);

/// Why an operation did not happen. Nothing was changed in every case.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OpError {
    /// Pop (or pop_batch) found nothing.
    Empty,
    /// Push (or push_batch) found no room.
    Full,
    /// This thread cannot use rseq: use the slow path.
    Unregistered,
    /// Too many consecutive restarts, or a busy stack lock: use the slow
    /// path.
    Exhausted,
}

/// A set of per-CPU bounded stacks of pointers, one stack per (region, class).
///
/// The fields every fast path reads (mode, base, offsets, region count)
/// share the first cache line.
#[repr(C, align(64))]
pub struct PerCpuSlabs {
    /// The one value a fast path dispatches on: [`INERT`] until `init`,
    /// then [`MODE_RSEQ`] or, for the try-lock discipline, its
    /// [`CpuSource`]; stored once with release ordering after every other
    /// field.
    mode: AtomicU8,
    index_cid: AtomicBool,
    base: AtomicPtr<u8>,
    nregions: AtomicUsize,
    /// Thread-pointer offsets of the rseq area and of its index field
    /// (`mm_cid` when regions are cids, else `cpu_id`, which is what the
    /// try-lock's `CpuSource::Rseq` reads).
    off: AtomicIsize,
    idx: AtomicIsize,
    nclasses: AtomicUsize,
    /// Per class: `begin | end << 16`, fixed at init.
    bounds: [AtomicU32; MAX_CLASSES],
}

/// Process-wide count of rseq aborts (restarts) so far.
pub fn abort_count() -> u64 {
    arch::ABORTS.load(Ordering::Relaxed)
}

/// Sets the injected delay (loop iterations before every commit) for stress
/// tests. Exists only in a build with `--cfg rseq_inject_delay`.
#[cfg(rseq_inject_delay)]
pub fn set_injected_delay(loops: u64) {
    arch::DELAY_LOOPS.store(loops, Ordering::Relaxed);
}

impl Default for PerCpuSlabs {
    fn default() -> Self {
        Self::new()
    }
}

impl PerCpuSlabs {
    /// An inert structure, usable in a `static`, until [`init`](Self::init):
    /// every operation on it fails with [`OpError::Unregistered`].
    pub const fn new() -> Self {
        PerCpuSlabs {
            mode: AtomicU8::new(INERT),
            index_cid: AtomicBool::new(false),
            base: AtomicPtr::new(core::ptr::null_mut()),
            nregions: AtomicUsize::new(0),
            off: AtomicIsize::new(0),
            idx: AtomicIsize::new(0),
            nclasses: AtomicUsize::new(0),
            bounds: [const { AtomicU32::new(0) }; MAX_CLASSES],
        }
    }

    /// Sets up the structure over caller memory. The requested discipline
    /// and index are downgraded when the process cannot honour them (no
    /// rseq: `TryLock`; no `mm_cid`: `Cpu`; fewer regions than possible
    /// CPUs: `TryLock`). Returns false (and stays inert) when the capacities
    /// do not fit.
    ///
    /// # Safety
    /// `base` points to `nregions * REGION_BYTES` bytes of zeroed, writable
    /// memory (it may be committed lazily by the kernel), aligned to
    /// `REGION_BYTES`, that outlives `self`. Called once, before any other
    /// method.
    pub unsafe fn init(
        &self,
        base: *mut u8,
        nregions: usize,
        capacities: &[u16],
        discipline: Discipline,
        index: Index,
    ) -> bool {
        let total: usize = capacities.iter().map(|&c| c as usize).sum();
        if capacities.len() > MAX_CLASSES
            || total > MAX_SLOTS
            || nregions == 0
            || base.is_null()
            || !(base as usize).is_multiple_of(REGION_BYTES)
        {
            return false;
        }
        let mut next = HEADER_SLOTS as u32;
        for (class, &cap) in capacities.iter().enumerate() {
            let end = next + cap as u32;
            self.bounds[class].store(next | (end << 16), Ordering::Relaxed);
            next = end;
        }
        self.nclasses.store(capacities.len(), Ordering::Relaxed);
        self.base.store(base, Ordering::Relaxed);
        self.nregions.store(nregions, Ordering::Relaxed);

        let mut use_rseq = discipline == Discipline::Rseq
            && registration::current_mode() != Mode::Unavailable
            && nregions >= registration::possible_cpus();
        let off = registration::tp_offset();
        use_rseq &= off.is_some();
        let cid = index == Index::Cid && registration::mm_cid_supported() && use_rseq;
        self.index_cid.store(cid, Ordering::Relaxed);
        if let Some(off) = off {
            let field = if cid {
                crate::abi::offset::MM_CID
            } else {
                crate::abi::offset::CPU_ID
            };
            self.off.store(off, Ordering::Relaxed);
            self.idx.store(off + field as isize, Ordering::Relaxed);
        }
        let mode = if use_rseq {
            MODE_RSEQ
        } else {
            CpuSource::choose(off.is_some() && registration::current_mode() != Mode::Unavailable)
                as u8
        };
        self.mode.store(mode, Ordering::Release);
        true
    }

    /// Checks that `class` is one of the structure's classes, or that the
    /// structure is inert (then every operation is refused anyway).
    #[inline(always)]
    fn debug_check_class(&self, class: usize) {
        debug_assert!(
            class < self.nclasses() || self.mode.load(Ordering::Relaxed) == INERT,
            "class {class} out of range"
        );
    }

    /// Whether `init` chose `d` (false while inert).
    #[inline(always)]
    fn runs(&self, d: Discipline, order: Ordering) -> bool {
        let mode = self.mode.load(order);
        match d {
            Discipline::Rseq => mode == MODE_RSEQ,
            Discipline::TryLock => mode >= FIRST_TRYLOCK_MODE,
        }
    }

    /// The discipline in force (after any downgrade at init; `TryLock`
    /// while inert).
    pub fn discipline(&self) -> Discipline {
        if self.runs(Discipline::Rseq, Ordering::Acquire) {
            Discipline::Rseq
        } else {
            Discipline::TryLock
        }
    }

    /// The index in force (after any downgrade at init).
    pub fn index(&self) -> Index {
        if self.index_cid.load(Ordering::Relaxed) {
            Index::Cid
        } else {
            Index::Cpu
        }
    }

    /// Number of regions. (`inline(always)` here and in `region`: the CAS
    /// fallback's quick paths call them from the allocator's `#[cold]`
    /// miss functions, into which LLVM does not inline plain functions,
    /// even this small and with fat LTO.)
    #[inline(always)]
    pub fn nregions(&self) -> usize {
        self.nregions.load(Ordering::Relaxed)
    }

    /// Number of classes.
    pub fn nclasses(&self) -> usize {
        self.nclasses.load(Ordering::Relaxed)
    }

    /// `(begin, end)` slot bounds of a class.
    fn bounds(&self, class: usize) -> (u16, u16) {
        let b = self.bounds[class].load(Ordering::Relaxed);
        (b as u16, (b >> 16) as u16)
    }

    /// Capacity of a class's stack, in items.
    pub fn capacity(&self, class: ClassId) -> usize {
        let class = class.index();
        let (b, e) = self.bounds(class);
        (e - b) as usize
    }

    #[inline(always)]
    fn region(&self, r: usize) -> Region {
        debug_assert!(r < self.nregions());
        let p = self
            .base
            .load(Ordering::Relaxed)
            .wrapping_add(r << REGION_SHIFT);
        // SAFETY: `r < nregions`, so `p` is a region of the memory `init`'s
        // contract hands us (zeroed, aligned, outliving `self`).
        unsafe { Region::new(p) }
    }

    fn lock_region(&self, region: Region) {
        let lock = &region.control().lock;
        let mut spins = 0u32;
        while lock
            .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins < 64 {
                core::hint::spin_loop();
            } else {
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
        }
    }

    fn unlock_region(&self, region: Region) {
        region.control().lock.store(0, Ordering::Release);
    }

    /// Initialises a region's headers if nobody has yet. Under rseq the
    /// stores go `begin`, then `current`, then `end`, so a concurrent
    /// critical section sees "empty and full" at every step and never an
    /// item. Under the try-lock each header is written under its stack lock
    /// (the quick operations do not check readiness: they may hold the lock
    /// of a zeroed header), and the release store of the initial index
    /// publishes the bounds.
    #[cold]
    #[inline(never)]
    fn ensure_region(&self, r: usize) {
        let region = self.region(r);
        if region.is_ready() {
            return;
        }
        let locked = self.runs(Discipline::TryLock, Ordering::Relaxed);
        self.lock_region(region);
        if !region.is_ready() {
            for class in 0..self.nclasses() {
                let (b, e) = self.bounds(class);
                let h = region.header(class);
                if locked {
                    let w = trylock::acquire_waiting(h);
                    debug_assert_eq!(w, 0, "an uninitialised header holds an index");
                    h.begin.store(b, Ordering::Relaxed);
                    h.end.store(e, Ordering::Relaxed);
                    trylock::release_waited(h, b);
                } else {
                    h.begin.store(b, Ordering::Release);
                    h.current.store(b as u32, Ordering::Release);
                    h.end.store(e, Ordering::Release);
                }
            }
            region.control().init.store(READY, Ordering::Release);
        }
        self.unlock_region(region);
    }

    /// The fast path of [`pop`](Self::pop): the item, or null on any miss
    /// (empty, unregistered thread, uninitialised region, aborted section,
    /// busy stack lock, inert structure). Nothing is fixed up here: on null,
    /// call [`pop`](Self::pop), which registers the thread or initialises
    /// the region when that is what was missing. Returns a raw pointer so the
    /// caller's fast path needs no stack frame. (A caller that keeps the
    /// rseq parameters itself, like the allocator's front end, calls
    /// [`arch::pop_or_null`] with [`fast_params`](Self::fast_params).)
    ///
    /// One load of the mode byte picks the discipline (and, for the
    /// try-lock, the CPU source); the try-lock's quick pop makes no call and
    /// has one locked instruction (see `trylock.rs`).
    #[inline(always)]
    pub fn pop_fast(&self, class: ClassId) -> *mut u8 {
        let class = class.index();
        debug_assert!(class < MAX_CLASSES);
        let mode = self.mode.load(Ordering::Acquire);
        if mode == MODE_RSEQ {
            return self.pop_fast_rseq(class);
        }
        self.pop_quick(mode, class)
    }

    /// The fast path of [`push`](Self::push): true if `item` was pushed;
    /// on false, call [`push`](Self::push) (see [`pop_fast`](Self::pop_fast)).
    #[inline(always)]
    pub fn push_fast(&self, class: ClassId, item: NonNull<u8>) -> bool {
        let class = class.index();
        debug_assert!(class < MAX_CLASSES);
        let mode = self.mode.load(Ordering::Acquire);
        if mode == MODE_RSEQ {
            return self.push_fast_rseq(class, item);
        }
        self.push_quick(mode, class, item)
    }

    /// Pops one item from the current CPU's stack of `class`.
    #[inline(always)]
    pub fn pop(&self, class: ClassId) -> Result<NonNull<u8>, OpError> {
        let class = class.index();
        self.debug_check_class(class);
        if self.runs(Discipline::Rseq, Ordering::Relaxed) {
            return self.pop_rseq(class);
        }
        self.pop_locked(class)
    }

    /// Pushes one item on the current CPU's stack of `class`.
    #[inline(always)]
    pub fn push(&self, class: ClassId, item: NonNull<u8>) -> Result<(), OpError> {
        let class = class.index();
        self.debug_check_class(class);
        if self.runs(Discipline::Rseq, Ordering::Relaxed) {
            return self.push_rseq(class, item);
        }
        self.push_locked(class, item)
    }

    /// Pops up to `out.len()` items into `out[..n]`; `Ok(n)` with `n >= 1`.
    pub fn pop_batch(&self, class: ClassId, out: &mut [*mut u8]) -> Result<usize, OpError> {
        let class = class.index();
        self.debug_check_class(class);
        if out.is_empty() {
            return Ok(0);
        }
        if !self.runs(Discipline::Rseq, Ordering::Relaxed) {
            return self.batch_locked(class, out.as_mut_ptr(), out.len(), true);
        }
        // SAFETY: `out` is valid for `out.len() >= 1` writes, and the
        // structure runs the rseq discipline (checked just above).
        unsafe {
            self.batch_rseq(
                class,
                out.as_mut_ptr(),
                out.len(),
                arch::pop_batch,
                OpError::Empty,
            )
        }
    }

    /// Pushes a prefix of `items`; `Ok(n)` = how many were pushed (>= 1).
    pub fn push_batch(&self, class: ClassId, items: &[*mut u8]) -> Result<usize, OpError> {
        let class = class.index();
        self.debug_check_class(class);
        debug_assert!(items.iter().all(|p| !p.is_null()));
        if items.is_empty() {
            return Ok(0);
        }
        let buf = items.as_ptr().cast_mut();
        if !self.runs(Discipline::Rseq, Ordering::Relaxed) {
            return self.batch_locked(class, buf, items.len(), false);
        }
        // SAFETY: `items` is valid for `items.len() >= 1` reads, the push
        // section only reads through `buf`, and the structure runs the rseq
        // discipline (checked just above).
        unsafe { self.batch_rseq(class, buf, items.len(), arch::push_batch, OpError::Full) }
    }

    /// What a caller's own fast path needs to run the rseq sections
    /// [`arch::pop_or_null`] / [`arch::push_or_miss`] on this structure:
    /// `(base, rseq area offset, index field offset)`, all thread-pointer
    /// relative offsets constant for the process. `None` unless the structure
    /// was initialised with the rseq discipline.
    pub fn fast_params(&self) -> Option<(*mut u8, isize, isize)> {
        if !self.runs(Discipline::Rseq, Ordering::Acquire) {
            return None;
        }
        Some((
            self.base.load(Ordering::Relaxed),
            self.off.load(Ordering::Relaxed),
            self.idx.load(Ordering::Relaxed),
        ))
    }

    /// Whether `item` is on the stack `(region, class)` right now (a racy
    /// scan with atomic loads: an item that a concurrent operation moves may
    /// be missed; a stopped header reads as empty).
    pub fn contains(&self, region: RegionId, class: ClassId, item: *mut u8) -> bool {
        let (region, class) = (region.0, class.index());
        if region >= self.nregions() || class >= self.nclasses() {
            return false;
        }
        let reg = self.region(region);
        if !reg.is_ready() {
            return false;
        }
        let h = reg.header(class);
        let (b, e) = self.bounds(class);
        let lo = h.begin.load(Ordering::Acquire).max(b) as usize;
        let hi = h.index(Ordering::Acquire).min(e) as usize;
        (lo..hi).any(|i| reg.slot_atomic(i).load(Ordering::Relaxed) == item)
    }

    /// Items currently in `(region, class)`: a racy snapshot, for statistics.
    pub fn len(&self, region: RegionId, class: ClassId) -> usize {
        let (region, class) = (region.0, class.index());
        if region >= self.nregions() || class >= self.nclasses() {
            return 0;
        }
        let reg = self.region(region);
        if !reg.is_ready() {
            return 0;
        }
        let h = reg.header(class);
        (h.index(Ordering::Relaxed) as usize)
            .saturating_sub(h.begin.load(Ordering::Relaxed) as usize)
    }

    /// Whether every stack of the structure is empty (racy snapshot).
    pub fn is_empty(&self) -> bool {
        (0..self.nregions()).all(|r| {
            (0..self.nclasses())
                .filter_map(ClassId::new)
                .all(|c| self.len(RegionId(r), c) == 0)
        })
    }

    /// In the child of `fork()`: releases every region lock, which a thread
    /// that does not exist in the child (or a frame that a signal handler
    /// interrupted) may have held. Returns how many were held.
    ///
    /// A region lock guards only a region's one-time initialisation (whose
    /// stores keep every header "empty and full" at each step, and which the
    /// child redoes: items pushed meanwhile are leaked, never duplicated) and
    /// drains (the caller must stop using the structure if a drain may have
    /// been under way; see the allocator's fork handling).
    ///
    /// # Safety
    /// Only in a freshly forked child, before it creates a thread.
    pub unsafe fn reset_region_locks_after_fork(&self) -> usize {
        let mut held = 0;
        for r in 0..self.nregions() {
            if self.region(r).control().lock.swap(0, Ordering::Release) != 0 {
                held += 1;
            }
        }
        held
    }

    /// Checks the structural invariants of every initialised region (tests;
    /// call while no other thread uses the structure).
    pub fn check_invariants(&self) {
        for r in 0..self.nregions() {
            let reg = self.region(r);
            if !reg.is_ready() {
                continue;
            }
            for class in 0..self.nclasses() {
                let (b, e) = self.bounds(class);
                let h = reg.header(class);
                assert_eq!(
                    h.begin.load(Ordering::Relaxed),
                    b,
                    "region {r} class {class}: begin"
                );
                assert_eq!(
                    h.end.load(Ordering::Relaxed),
                    e,
                    "region {r} class {class}: end"
                );
                let word = h.current.load(Ordering::Relaxed);
                assert_eq!(
                    word & layout::LOCKED,
                    0,
                    "region {r} class {class}: lock held"
                );
                let cur = h.index(Ordering::Relaxed);
                assert!(
                    b <= cur && cur <= e && word == cur as u32,
                    "region {r} class {class}: current {word:#x} outside [{b}, {e}]"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Class `i` of a test structure.
    fn cls(i: usize) -> ClassId {
        ClassId::new(i).expect("test class below MAX_CLASSES")
    }

    use std::alloc::{alloc_zeroed, dealloc, Layout};

    /// Zeroed memory for `n` regions, aligned to REGION_BYTES, freed on drop.
    struct Regions {
        base: *mut u8,
        layout: Layout,
    }

    impl Regions {
        fn new(n: usize) -> Regions {
            let layout = Layout::from_size_align(n * REGION_BYTES, REGION_BYTES).unwrap();
            // SAFETY: the layout has a non-zero size (n >= 1).
            let base = unsafe { alloc_zeroed(layout) };
            assert!(!base.is_null(), "out of memory");
            Regions { base, layout }
        }
    }

    impl Drop for Regions {
        fn drop(&mut self) {
            // SAFETY: `base` came from `alloc_zeroed` with this layout.
            unsafe { dealloc(self.base, self.layout) };
        }
    }

    fn roundtrip(discipline: Discipline, index: Index) {
        let n = registration::possible_cpus();
        let mem = Regions::new(n);
        let slabs = PerCpuSlabs::new();
        // SAFETY: fresh zeroed, aligned memory for n regions, outliving slabs.
        assert!(unsafe { slabs.init(mem.base, n, &[4, 8, 100], discipline, index) });
        assert_eq!(slabs.discipline(), discipline);
        assert_eq!(slabs.pop(cls(0)), Err(OpError::Empty));
        let items: Vec<*mut u8> = (1..=8usize).map(|i| (i * 16) as *mut u8).collect();
        for &p in &items[..4] {
            slabs.push(cls(0), NonNull::new(p).unwrap()).unwrap();
        }
        // Capacity 4: the fifth push is refused unless we migrated.
        let fifth = slabs.push(cls(0), NonNull::new(items[4]).unwrap());
        let mut got = Vec::new();
        while let Ok(p) = slabs.pop(cls(0)) {
            got.push(p.as_ptr());
        }
        let mut want: Vec<*mut u8> = items[..4].to_vec();
        if fifth.is_ok() {
            want.push(items[4]);
        }
        got.sort();
        want.sort();
        assert_eq!(got, want);
        // Batches.
        let pushed = slabs.push_batch(cls(2), &items).unwrap();
        assert!(pushed >= 1);
        let mut out = [core::ptr::null_mut(); 16];
        let mut total = 0;
        while let Ok(k) = slabs.pop_batch(cls(2), &mut out) {
            total += k;
        }
        assert!(total >= pushed);
        // Drain.
        slabs.push_batch(cls(1), &items).unwrap();
        let mut drained = Vec::new();
        for r in 0..n {
            assert!(slabs.drain(RegionId(r), &mut |class, it| {
                assert_eq!(class, cls(1));
                drained.extend_from_slice(it)
            }));
        }
        assert!(!drained.is_empty());
        assert!(slabs.is_empty());
        slabs.check_invariants();
    }

    #[test]
    fn rseq_roundtrip() {
        roundtrip(Discipline::Rseq, Index::Cpu);
        roundtrip(Discipline::Rseq, Index::Cid);
    }

    #[test]
    fn trylock_roundtrip() {
        roundtrip(Discipline::TryLock, Index::Cpu);
    }

    /// The try-lock's word lock: a header whose `LOCKED` bit is set refuses
    /// every operation (quick ones miss, full ones are `Exhausted`) and
    /// keeps its index; once released the quick paths hit, and a zeroed
    /// (uninitialised) header only ever reads empty and full.
    #[test]
    fn trylock_word_lock() {
        let n = registration::possible_cpus();
        let mem = Regions::new(n);
        let slabs = PerCpuSlabs::new();
        // SAFETY: fresh zeroed, aligned memory for n regions, outliving slabs.
        assert!(unsafe { slabs.init(mem.base, n, &[4, 8], Discipline::TryLock, Index::Cpu) });
        let item = NonNull::new(64 as *mut u8).unwrap();
        // Uninitialised regions: the quick paths miss and change nothing.
        assert!(slabs.pop_fast(cls(1)).is_null());
        assert!(!slabs.push_fast(cls(1), item));
        for r in 0..n {
            assert_eq!(slabs.region(r).header(1).current.load(Ordering::Relaxed), 0);
            slabs.ensure_region(r);
        }
        let quick = slabs.mode.load(Ordering::Relaxed) != CpuSource::Sched as u8;
        // Every stack of class 1 held by someone else.
        for r in 0..n {
            let reg = slabs.region(r);
            let h = reg.header(1);
            let w = h.current.fetch_or(layout::LOCKED, Ordering::Acquire);
            assert_eq!(w & layout::LOCKED, 0);
        }
        assert!(slabs.pop_fast(cls(1)).is_null());
        assert!(!slabs.push_fast(cls(1), item));
        assert_eq!(slabs.pop(cls(1)), Err(OpError::Exhausted));
        assert_eq!(slabs.push(cls(1), item), Err(OpError::Exhausted));
        // Class 0 is not held.
        slabs.push(cls(0), item).unwrap();
        assert_eq!(slabs.pop(cls(0)), Ok(item));
        for r in 0..n {
            let reg = slabs.region(r);
            let h = reg.header(1);
            let (b, _) = slabs.bounds(1);
            assert_eq!(h.current.load(Ordering::Relaxed), b as u32 | layout::LOCKED);
            h.current.store(b as u32, Ordering::Release);
        }
        // Released: the quick paths hit (unless this process's CPU source
        // is sched_getcpu, which they leave to the full paths).
        if quick {
            let mut pushed = 0;
            for i in 1..=8usize {
                if slabs.push_fast(cls(1), NonNull::new((i * 16) as *mut u8).unwrap()) {
                    pushed += 1;
                }
            }
            // Capacity 8 per region: all fit, wherever the thread ran.
            assert_eq!(pushed, 8);
            let mut popped = 0;
            while !slabs.pop_fast(cls(1)).is_null() {
                popped += 1;
            }
            assert!(popped >= 1);
            let mut rest = 0;
            for r in 0..n {
                assert!(slabs.drain(RegionId(r), &mut |_, it| rest += it.len()));
            }
            assert_eq!(popped + rest, 8);
        }
        slabs.check_invariants();
    }

    #[test]
    fn init_rejects_oversized_layouts() {
        let mem = Regions::new(1);
        let slabs = PerCpuSlabs::new();
        let caps = [u16::MAX; 2];
        // SAFETY: valid memory; the call must refuse the capacities.
        assert!(!unsafe { slabs.init(mem.base, 1, &caps, Discipline::TryLock, Index::Cpu) });
        // Still inert: operations are refused, not run on bad memory.
        let item = NonNull::new(16 as *mut u8).unwrap();
        assert_eq!(slabs.pop(cls(0)), Err(OpError::Unregistered));
        assert_eq!(slabs.push(cls(0), item), Err(OpError::Unregistered));
        let mut out = [core::ptr::null_mut(); 2];
        assert_eq!(
            slabs.pop_batch(cls(0), &mut out),
            Err(OpError::Unregistered)
        );
        assert_eq!(
            slabs.push_batch(cls(0), &[item.as_ptr()]),
            Err(OpError::Unregistered)
        );
        assert!(slabs.drain(RegionId(0), &mut |_, _| panic!("nothing to drain")));
    }
}

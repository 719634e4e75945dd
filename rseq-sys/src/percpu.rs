//! Per-CPU bounded stacks of pointers: the mechanism under a slab
//! allocator's per-CPU cache.
//!
//! A [`PerCpuSlabs`] owns `nregions` regions of [`REGION_BYTES`], one per CPU
//! (or per concurrency id). Each region holds one stack per class; the
//! layout is documented in `arch/x86_64.rs`:
//!
//! ```text
//! region = base + (index << REGION_SHIFT)
//! header[class] = { current: u16, lock: u16, end: u16, begin: u16 }   (8 bytes)
//! items of class = region[begin .. current]   (8-byte slots)
//! header[126] = region control { init: u32, lock: u32 };  header[127] = CAS op counter
//! ```
//!
//! # Disciplines (one per structure, never both)
//!
//! - [`Discipline::Rseq`]: every operation is an rseq critical section on the
//!   region of the CPU the thread runs on; no atomic read-modify-write.
//! - [`Discipline::Cas`]: the region is picked with `sched_getcpu`, and each
//!   stack is guarded by its header's `lock` half-word, taken with one
//!   compare-and-swap (0 -> 1) and released with a store. ABA cannot arise:
//!   the lock word has two states and carries no pointer, and `current` and
//!   the slots are read and written only by the lock holder, so no value is
//!   ever validated by comparison after another thread may have changed it
//!   and changed it back. A busy lock is not waited for: after a few tries
//!   the operation reports [`OpError::Exhausted`] and the caller takes its
//!   slow path, so a preempted holder never blocks anyone.
//!
//! # Invariants
//! - `begin <= current <= end` for every initialised, running header, and
//!   `[begin, end)` ranges of one region are disjoint and lie after the
//!   headers; they never change after initialisation (bounds table).
//! - Only the commit store of a critical section (rseq) or the lock holder
//!   (CAS) writes `current`; a drain first stops the header (`begin =
//!   0xffff`, `end = 0`), fences, and only then touches `current` and slots.
//! - Zeroed memory is a valid, inert header (`0,0,0`: empty and full), so a
//!   region needs no initialisation before its first miss.

use crate::arch;
use crate::fence;
use crate::registration::{self, Mode};
use core::ptr::NonNull;
use core::sync::atomic::{
    AtomicBool, AtomicIsize, AtomicPtr, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
    Ordering,
};

/// log2 of a region's size.
pub const REGION_SHIFT: u32 = arch::REGION_SHIFT;
/// Bytes per region (one per CPU or cid).
pub const REGION_BYTES: usize = 1 << REGION_SHIFT;
/// Header slots at the start of each region (classes + 2 control words).
pub const HEADER_SLOTS: usize = 128;
/// Most classes a structure can have.
pub const MAX_CLASSES: usize = HEADER_SLOTS - 2;
/// Pointer slots available to all classes of a region together.
pub const MAX_SLOTS: usize = REGION_BYTES / 8 - HEADER_SLOTS;

const CONTROL_SLOT: usize = HEADER_SLOTS - 2;
const COUNTER_SLOT: usize = HEADER_SLOTS - 1;
const STOPPED_BEGIN: u16 = 0xffff;
/// Compare-and-swap attempts on a busy stack before giving up.
const CAS_TRIES: u32 = 16;

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
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Discipline {
    /// rseq critical sections.
    Rseq,
    /// compare-and-swap.
    Cas,
}

/// Why an operation did not happen. Nothing was changed in every case.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OpError {
    /// Pop (or pop_batch) found nothing.
    Empty,
    /// Push (or push_batch) found no room.
    Full,
    /// This thread cannot use rseq: use the slow path.
    Unregistered,
    /// Too many consecutive restarts, or a busy CAS lock: use the slow path.
    Exhausted,
}

// Where the CAS discipline learns the CPU number (`PerCpuSlabs::cpu_source`).
/// `sched_getcpu()`.
const CPU_FROM_SCHED: u8 = 0;
/// The `cpu_id` of the process's rseq area (rseq registered, but the
/// structure runs CAS: `rseq=off`, or fewer regions than CPUs); a negative
/// value (thread not registered) falls back to `sched_getcpu`.
const CPU_FROM_RSEQ: u8 = 1;
/// The `rdpid` instruction (the kernel keeps the CPU number in `TSC_AUX`),
/// when CPUID advertises it.
const CPU_FROM_RDPID: u8 = 2;

const D_NONE: u8 = 0;
const D_RSEQ: u8 = 1;
const D_CAS: u8 = 2;

/// A set of per-CPU bounded stacks of pointers, one stack per (region, class).
pub struct PerCpuSlabs {
    /// True once initialised with the rseq discipline (the fast-path test).
    rseq: AtomicBool,
    discipline: AtomicU8,
    index_cid: AtomicBool,
    base: AtomicPtr<u8>,
    nregions: AtomicUsize,
    nclasses: AtomicUsize,
    /// Thread-pointer offsets of `rseq->rseq_cs`'s area and of the index field.
    off: AtomicIsize,
    idx: AtomicIsize,
    /// Per class: `begin | end << 16`, fixed at init.
    bounds: [AtomicU32; MAX_CLASSES],
    /// CAS discipline: how to find the current CPU (`CPU_FROM_*`).
    cpu_source: AtomicU8,
}

// Registry of initialised structures, for the process-wide CAS counter.
const MAX_REGISTERED: usize = 16;
static REGISTERED: [AtomicPtr<PerCpuSlabs>; MAX_REGISTERED] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_REGISTERED];

/// Process-wide count of rseq aborts (restarts) so far.
pub fn abort_count() -> u64 {
    arch::ABORTS.load(Ordering::Relaxed)
}

/// Process-wide count of operations done by the CAS fallback so far (over
/// structures that live in statics or are never dropped).
pub fn cas_op_count() -> u64 {
    REGISTERED
        .iter()
        .map(|p| p.load(Ordering::Acquire))
        .filter(|p| !p.is_null())
        // SAFETY: only structures promised to live forever are registered
        // (see `init`'s contract).
        .map(|p| unsafe { &*p }.cas_ops())
        .sum()
}

/// Sets the injected delay (loop iterations before every commit) for stress
/// tests.
#[cfg(feature = "inject-delay")]
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
            rseq: AtomicBool::new(false),
            discipline: AtomicU8::new(D_NONE),
            index_cid: AtomicBool::new(false),
            base: AtomicPtr::new(core::ptr::null_mut()),
            nregions: AtomicUsize::new(0),
            nclasses: AtomicUsize::new(0),
            off: AtomicIsize::new(0),
            idx: AtomicIsize::new(0),
            bounds: [const { AtomicU32::new(0) }; MAX_CLASSES],
            cpu_source: AtomicU8::new(CPU_FROM_SCHED),
        }
    }

    /// Sets up the structure over caller memory. The requested discipline
    /// and index are downgraded when the process cannot honour them (no
    /// rseq: `Cas`; no `mm_cid`: `Cpu`; fewer regions than possible CPUs:
    /// `Cas`). Returns false (and stays inert) when the capacities do not fit.
    ///
    /// # Safety
    /// `base` points to `nregions * REGION_BYTES` bytes of zeroed, writable
    /// memory (it may be committed lazily by the kernel), aligned to
    /// `REGION_BYTES`, that outlives `self`. Called once, before any other
    /// method. If `self` may ever be dropped or moved, it must not be
    /// initialised with `register_for_stats`.
    pub unsafe fn init(
        &self,
        base: *mut u8,
        nregions: usize,
        capacities: &[u16],
        discipline: Discipline,
        index: Index,
    ) -> bool {
        // SAFETY: forwarded contract.
        unsafe { self.init_inner(base, nregions, capacities, discipline, index, true) }
    }

    /// Like [`init`](Self::init), but the structure is not counted by
    /// [`cas_op_count`] (for structures that are dropped, e.g. in tests).
    ///
    /// # Safety
    /// As for [`init`](Self::init), except that `self` may be dropped.
    pub unsafe fn init_unregistered(
        &self,
        base: *mut u8,
        nregions: usize,
        capacities: &[u16],
        discipline: Discipline,
        index: Index,
    ) -> bool {
        // SAFETY: forwarded contract.
        unsafe { self.init_inner(base, nregions, capacities, discipline, index, false) }
    }

    unsafe fn init_inner(
        &self,
        base: *mut u8,
        nregions: usize,
        capacities: &[u16],
        discipline: Discipline,
        index: Index,
        register: bool,
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
        let cid = index == Index::Cid && registration::mm_cid_supported();
        self.index_cid.store(cid && use_rseq, Ordering::Relaxed);
        if let Some(off) = off {
            let field = if cid {
                crate::abi::offset::MM_CID
            } else {
                crate::abi::offset::CPU_ID
            };
            self.off.store(off, Ordering::Relaxed);
            self.idx.store(off + field as isize, Ordering::Relaxed);
        }
        let source = if off.is_some() && registration::current_mode() != Mode::Unavailable {
            CPU_FROM_RSEQ
        } else if arch::has_rdpid() {
            CPU_FROM_RDPID
        } else {
            CPU_FROM_SCHED
        };
        self.cpu_source.store(source, Ordering::Relaxed);
        self.discipline
            .store(if use_rseq { D_RSEQ } else { D_CAS }, Ordering::Release);
        self.rseq.store(use_rseq, Ordering::Release);
        if register {
            for slot in REGISTERED.iter() {
                if slot
                    .compare_exchange(
                        core::ptr::null_mut(),
                        self as *const _ as *mut _,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    break;
                }
            }
        }
        true
    }

    /// The discipline in force (after any downgrade at init).
    pub fn discipline(&self) -> Discipline {
        if self.discipline.load(Ordering::Acquire) == D_RSEQ {
            Discipline::Rseq
        } else {
            Discipline::Cas
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

    /// Number of regions.
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
    pub fn capacity(&self, class: usize) -> usize {
        let (b, e) = self.bounds(class);
        (e - b) as usize
    }

    fn region(&self, r: usize) -> *mut u8 {
        debug_assert!(r < self.nregions());
        self.base
            .load(Ordering::Relaxed)
            .wrapping_add(r << REGION_SHIFT)
    }

    /// Header fields of `(region, class)` as atomics: (current, end, begin, lock).
    fn header(&self, region: *mut u8, class: usize) -> [&AtomicU16; 4] {
        let h = region.wrapping_add(class * 8).cast::<u16>();
        // SAFETY: `region` is a region of this structure (init contract: valid
        // for its lifetime), header slots are 8-byte aligned and in bounds;
        // every access to header memory is atomic or happens inside a critical
        // section that the protocol orders against these.
        unsafe {
            [
                AtomicU16::from_ptr(h),
                AtomicU16::from_ptr(h.add(2)),
                AtomicU16::from_ptr(h.add(3)),
                AtomicU16::from_ptr(h.add(1)),
            ]
        }
    }

    /// Region control words: (init state, lock).
    fn control(&self, region: *mut u8) -> (&AtomicU32, &AtomicU32) {
        let c = region.wrapping_add(CONTROL_SLOT * 8).cast::<u32>();
        // SAFETY: the control slot is reserved, aligned and in bounds.
        unsafe { (AtomicU32::from_ptr(c), AtomicU32::from_ptr(c.add(1))) }
    }

    fn counter(&self, region: *mut u8) -> &AtomicU64 {
        // SAFETY: the counter slot is reserved, 8-byte aligned and in bounds.
        unsafe { AtomicU64::from_ptr(region.wrapping_add(COUNTER_SLOT * 8).cast()) }
    }

    fn slot(&self, region: *mut u8, i: usize) -> *mut *mut u8 {
        region.wrapping_add(i * 8).cast()
    }

    fn lock_region(&self, region: *mut u8) {
        let (_, lock) = self.control(region);
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

    fn unlock_region(&self, region: *mut u8) {
        self.control(region).1.store(0, Ordering::Release);
    }

    /// Initialises a region's headers if nobody has yet. The stores go
    /// `begin`, then `current`, then `end`, so a concurrent critical section
    /// sees "empty and full" at every step and never an item.
    #[cold]
    #[inline(never)]
    fn ensure_region(&self, r: usize) {
        let region = self.region(r);
        let (init, _) = self.control(region);
        if init.load(Ordering::Acquire) == 1 {
            return;
        }
        self.lock_region(region);
        if init.load(Ordering::Acquire) == 0 {
            for class in 0..self.nclasses() {
                let (b, e) = self.bounds(class);
                let [current, end, begin, _] = self.header(region, class);
                begin.store(b, Ordering::Release);
                current.store(b, Ordering::Release);
                end.store(e, Ordering::Release);
            }
            init.store(1, Ordering::Release);
        }
        self.unlock_region(region);
    }

    /// The region the calling thread's rseq area points at right now (slow
    /// path only; may be stale by the time it is used, which is harmless).
    fn current_region_rseq(&self) -> usize {
        // SAFETY: in rseq mode `idx` is the offset of a 32-bit field of the
        // process's rseq area, present in every thread.
        let i = unsafe { arch::read_tp_u32(self.idx.load(Ordering::Relaxed)) } as usize;
        i.min(self.nregions() - 1)
    }

    /// The region for the CAS discipline: the CPU the thread runs on, read
    /// the cheapest way this process allows (see `CpuSource`). Any answer
    /// is correct (the stack lock protects the data); a good one keeps
    /// threads on their own CPU's region.
    #[inline]
    fn current_region_cas(&self) -> usize {
        let cpu = match self.cpu_source.load(Ordering::Relaxed) {
            CPU_FROM_RSEQ => {
                // SAFETY: CPU_FROM_RSEQ is set only when the process has an
                // rseq area at this thread-pointer offset in every thread.
                let c = unsafe { arch::read_tp_u32(self.off.load(Ordering::Relaxed) + 4) } as i32;
                if c >= 0 {
                    c
                } else {
                    Self::sched_cpu()
                }
            }
            CPU_FROM_RDPID => arch::rdpid_cpu() as i32,
            _ => Self::sched_cpu(),
        };
        let n = self.nregions();
        match cpu {
            c if c < 0 => 0,
            c if (c as usize) < n => c as usize,
            c => c as usize % n,
        }
    }

    #[cold]
    fn sched_cpu() -> i32 {
        // SAFETY: sched_getcpu has no preconditions.
        unsafe { libc::sched_getcpu() }
    }

    /// The fast path of [`pop`](Self::pop): the item, or null on any miss
    /// (empty, unregistered thread, uninitialised region, aborted section,
    /// busy CAS lock, inert structure). Nothing is fixed up here: on null,
    /// call [`pop`](Self::pop), which registers the thread or initialises
    /// the region when that is what was missing. Returns a raw pointer so the
    /// caller's fast path needs no stack frame. (A caller that keeps the
    /// rseq parameters itself, like the allocator's front end, calls
    /// [`arch::pop_or_null`] with [`fast_params`](Self::fast_params).)
    #[inline(always)]
    pub fn pop_fast(&self, class: usize) -> *mut u8 {
        debug_assert!(class < MAX_CLASSES);
        if self.rseq.load(Ordering::Relaxed) {
            // SAFETY: as in `pop`.
            return unsafe {
                arch::pop_or_null(
                    self.base.load(Ordering::Relaxed),
                    class,
                    self.off.load(Ordering::Relaxed),
                    self.idx.load(Ordering::Relaxed),
                )
            };
        }
        self.pop_cas(class)
            .map_or(core::ptr::null_mut(), NonNull::as_ptr)
    }

    /// The fast path of [`push`](Self::push): true if `item` was pushed;
    /// on false, call [`push`](Self::push) (see [`pop_fast`](Self::pop_fast)).
    #[inline(always)]
    pub fn push_fast(&self, class: usize, item: NonNull<u8>) -> bool {
        debug_assert!(class < MAX_CLASSES);
        if self.rseq.load(Ordering::Relaxed) {
            // SAFETY: as in `pop`.
            return unsafe {
                arch::push_or_miss(
                    self.base.load(Ordering::Relaxed),
                    class,
                    self.off.load(Ordering::Relaxed),
                    self.idx.load(Ordering::Relaxed),
                    item.as_ptr(),
                )
            };
        }
        self.push_cas(class, item).is_ok()
    }

    #[inline(never)]
    fn pop_cas_outlined(&self, class: usize) -> Result<NonNull<u8>, OpError> {
        self.pop_cas(class)
    }

    #[inline(never)]
    fn push_cas_outlined(&self, class: usize, item: NonNull<u8>) -> Result<(), OpError> {
        self.push_cas(class, item)
    }

    /// Pops one item from the current CPU's stack of `class`.
    #[inline(always)]
    pub fn pop(&self, class: usize) -> Result<NonNull<u8>, OpError> {
        debug_assert!(class < self.nclasses());
        if self.rseq.load(Ordering::Relaxed) {
            // SAFETY: rseq discipline: off/idx name the process's rseq area,
            // base covers a region for every index (checked at init).
            let (item, st) = unsafe {
                arch::pop(
                    self.base.load(Ordering::Relaxed),
                    class,
                    self.off.load(Ordering::Relaxed),
                    self.idx.load(Ordering::Relaxed),
                )
            };
            if st == arch::STATUS_OK {
                // SAFETY: only non-null items are ever pushed.
                return Ok(unsafe { NonNull::new_unchecked(item) });
            }
            return self.pop_slow(class, st);
        }
        self.pop_cas_outlined(class)
    }

    #[cold]
    #[inline(never)]
    fn pop_slow(&self, class: usize, mut st: u32) -> Result<NonNull<u8>, OpError> {
        for _ in 0..3 {
            if !self.prepare_retry(st) {
                break;
            }
            // SAFETY: as in `pop`.
            let (item, s) = unsafe {
                arch::pop(
                    self.base.load(Ordering::Relaxed),
                    class,
                    self.off.load(Ordering::Relaxed),
                    self.idx.load(Ordering::Relaxed),
                )
            };
            if s == arch::STATUS_OK {
                // SAFETY: only non-null items are ever pushed.
                return Ok(unsafe { NonNull::new_unchecked(item) });
            }
            st = s;
        }
        Err(status_error(st, OpError::Empty))
    }

    /// Pushes one item on the current CPU's stack of `class`.
    #[inline(always)]
    pub fn push(&self, class: usize, item: NonNull<u8>) -> Result<(), OpError> {
        debug_assert!(class < self.nclasses());
        if self.rseq.load(Ordering::Relaxed) {
            // SAFETY: as in `pop`.
            let st = unsafe {
                arch::push(
                    self.base.load(Ordering::Relaxed),
                    class,
                    self.off.load(Ordering::Relaxed),
                    self.idx.load(Ordering::Relaxed),
                    item.as_ptr(),
                )
            };
            if st == arch::STATUS_OK {
                return Ok(());
            }
            return self.push_slow(class, item, st);
        }
        self.push_cas_outlined(class, item)
    }

    #[cold]
    #[inline(never)]
    fn push_slow(&self, class: usize, item: NonNull<u8>, mut st: u32) -> Result<(), OpError> {
        for _ in 0..3 {
            if !self.prepare_retry(st) {
                break;
            }
            // SAFETY: as in `pop`.
            st = unsafe {
                arch::push(
                    self.base.load(Ordering::Relaxed),
                    class,
                    self.off.load(Ordering::Relaxed),
                    self.idx.load(Ordering::Relaxed),
                    item.as_ptr(),
                )
            };
            if st == arch::STATUS_OK {
                return Ok(());
            }
        }
        Err(status_error(st, OpError::Full))
    }

    /// Pops up to `out.len()` items into `out[..n]`; `Ok(n)` with `n >= 1`.
    pub fn pop_batch(&self, class: usize, out: &mut [*mut u8]) -> Result<usize, OpError> {
        debug_assert!(class < self.nclasses());
        if out.is_empty() {
            return Ok(0);
        }
        if !self.rseq.load(Ordering::Relaxed) {
            return self.batch_cas(class, out.as_mut_ptr(), out.len(), true);
        }
        // SAFETY: `out` is valid for `out.len()` writes.
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
    pub fn push_batch(&self, class: usize, items: &[*mut u8]) -> Result<usize, OpError> {
        debug_assert!(class < self.nclasses());
        debug_assert!(items.iter().all(|p| !p.is_null()));
        if items.is_empty() {
            return Ok(0);
        }
        let buf = items.as_ptr().cast_mut();
        if !self.rseq.load(Ordering::Relaxed) {
            return self.batch_cas(class, buf, items.len(), false);
        }
        // SAFETY: `items` is valid for `items.len()` reads, and the push
        // section only reads through `buf`.
        unsafe { self.batch_rseq(class, buf, items.len(), arch::push_batch, OpError::Full) }
    }

    /// Runs a batch section, fixing up and retrying as
    /// [`prepare_retry`](Self::prepare_retry) allows.
    ///
    /// # Safety
    /// `buf` is valid for `max` reads and writes (whichever `section` does);
    /// `max >= 1`; rseq discipline.
    unsafe fn batch_rseq(
        &self,
        class: usize,
        buf: *mut *mut u8,
        max: usize,
        section: unsafe fn(&arch::BatchArgs, isize, isize) -> (usize, u32),
        miss: OpError,
    ) -> Result<usize, OpError> {
        let args = arch::BatchArgs {
            base: self.base.load(Ordering::Relaxed),
            class,
            buf,
            max,
        };
        let mut st = arch::STATUS_MISS;
        for attempt in 0..4 {
            if attempt > 0 && !self.prepare_retry(st) {
                break;
            }
            // SAFETY: rseq discipline (off/idx name the process's area, base
            // covers every index) and the caller's promise about `buf`.
            let (n, s) = unsafe {
                section(
                    &args,
                    self.off.load(Ordering::Relaxed),
                    self.idx.load(Ordering::Relaxed),
                )
            };
            if s == arch::STATUS_OK {
                return Ok(n);
            }
            st = s;
        }
        Err(status_error(st, miss))
    }

    /// After a failed section: fixes what can be fixed (an uninitialised
    /// region, an unregistered thread) and says whether a retry makes sense.
    #[cold]
    fn prepare_retry(&self, st: u32) -> bool {
        match st {
            arch::STATUS_MISS => {
                let r = self.current_region_rseq();
                if self.control(self.region(r)).0.load(Ordering::Acquire) == 1 {
                    return false;
                }
                self.ensure_region(r);
                true
            }
            arch::STATUS_UNREGISTERED => registration::current_mode() != Mode::Unavailable,
            _ => false,
        }
    }

    // ---- compare-and-swap discipline ----

    /// Takes the stack lock of `(region, class)` with CAS, a bounded number
    /// of times; returns the region pointer when held.
    #[inline(always)]
    fn lock_cas(&self, class: usize) -> Result<*mut u8, OpError> {
        if self.discipline.load(Ordering::Acquire) != D_CAS {
            // Not initialised yet: an inert structure refuses every operation.
            return Err(OpError::Unregistered);
        }
        let r = self.current_region_cas();
        let region = self.region(r);
        if self.control(region).0.load(Ordering::Acquire) != 1 {
            self.ensure_region(r);
        }
        let [_, _, _, lock] = self.header(region, class);
        if lock
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return self.lock_cas_busy(region, class);
        }
        self.count_cas_op(region);
        Ok(region)
    }

    /// The stack lock was busy: a few more tries, then give up.
    #[cold]
    #[inline(never)]
    fn lock_cas_busy(&self, region: *mut u8, class: usize) -> Result<*mut u8, OpError> {
        let [_, _, _, lock] = self.header(region, class);
        for _ in 1..CAS_TRIES {
            core::hint::spin_loop();
            if lock
                .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                self.count_cas_op(region);
                return Ok(region);
            }
        }
        Err(OpError::Exhausted)
    }

    /// A plain load and store, not a locked add: the counter is statistics
    /// only, and the threads that share a region are mostly one CPU's; a
    /// rare lost update is an acceptable price for keeping a second locked
    /// instruction off the fallback.
    #[inline(always)]
    fn count_cas_op(&self, region: *mut u8) {
        let c = self.counter(region);
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    fn unlock_cas(&self, region: *mut u8, class: usize) {
        self.header(region, class)[3].store(0, Ordering::Release);
    }

    // Inlined only into the out-of-line wrappers below: the fallback must
    // not weigh on the rseq fast path's registers and stack frame.
    #[inline]
    fn pop_cas(&self, class: usize) -> Result<NonNull<u8>, OpError> {
        let region = self.lock_cas(class)?;
        let [current, _, begin, _] = self.header(region, class);
        let cur = current.load(Ordering::Relaxed);
        let result = if cur > begin.load(Ordering::Relaxed) {
            // SAFETY: the slot is below `current`, so it holds a pushed,
            // non-null item, and we hold the stack lock.
            let item = unsafe { self.slot(region, cur as usize - 1).read() };
            current.store(cur - 1, Ordering::Relaxed);
            // SAFETY: only non-null items are ever pushed.
            Ok(unsafe { NonNull::new_unchecked(item) })
        } else {
            Err(OpError::Empty)
        };
        self.unlock_cas(region, class);
        result
    }

    #[inline]
    fn push_cas(&self, class: usize, item: NonNull<u8>) -> Result<(), OpError> {
        let region = self.lock_cas(class)?;
        let [current, end, _, _] = self.header(region, class);
        let cur = current.load(Ordering::Relaxed);
        let result = if cur < end.load(Ordering::Relaxed) {
            // SAFETY: `cur < end` is a free slot of this class; we hold the lock.
            unsafe { self.slot(region, cur as usize).write(item.as_ptr()) };
            current.store(cur + 1, Ordering::Relaxed);
            Ok(())
        } else {
            Err(OpError::Full)
        };
        self.unlock_cas(region, class);
        result
    }

    fn batch_cas(
        &self,
        class: usize,
        buf: *mut *mut u8,
        max: usize,
        pop: bool,
    ) -> Result<usize, OpError> {
        let region = self.lock_cas(class)?;
        let [current, end, begin, _] = self.header(region, class);
        let cur = current.load(Ordering::Relaxed) as usize;
        let n;
        if pop {
            n = (cur.saturating_sub(begin.load(Ordering::Relaxed) as usize)).min(max);
            // SAFETY: slots `cur - n .. cur` hold items; `buf` has room for
            // `max >= n`; we hold the lock.
            unsafe { core::ptr::copy_nonoverlapping(self.slot(region, cur - n), buf, n) };
            current.store((cur - n) as u16, Ordering::Relaxed);
        } else {
            n = (end.load(Ordering::Relaxed) as usize)
                .saturating_sub(cur)
                .min(max);
            // SAFETY: slots `cur .. cur + n` are free slots of this class;
            // `buf` holds `max >= n` items; we hold the lock.
            unsafe { core::ptr::copy_nonoverlapping(buf, self.slot(region, cur), n) };
            current.store((cur + n) as u16, Ordering::Relaxed);
        }
        self.unlock_cas(region, class);
        match (n, pop) {
            (0, true) => Err(OpError::Empty),
            (0, false) => Err(OpError::Full),
            _ => Ok(n),
        }
    }

    /// Operations the CAS discipline has done on this structure (approximate:
    /// concurrent increments on one region may lose a count).
    pub fn cas_ops(&self) -> u64 {
        if self.discipline.load(Ordering::Acquire) != D_CAS {
            return 0;
        }
        (0..self.nregions())
            .map(|r| {
                let region = self.region(r);
                if self.control(region).0.load(Ordering::Acquire) == 1 {
                    self.counter(region).load(Ordering::Relaxed)
                } else {
                    0
                }
            })
            .sum()
    }

    /// What a caller's own fast path needs to run the rseq sections
    /// [`arch::pop_or_null`] / [`arch::push_or_miss`] on this structure:
    /// `(base, rseq area offset, index field offset)`, all thread-pointer
    /// relative offsets constant for the process. `None` unless the structure
    /// was initialised with the rseq discipline.
    pub fn fast_params(&self) -> Option<(*mut u8, isize, isize)> {
        if !self.rseq.load(Ordering::Acquire) {
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
    pub fn contains(&self, region: usize, class: usize, item: *mut u8) -> bool {
        if region >= self.nregions() || class >= self.nclasses() {
            return false;
        }
        let reg = self.region(region);
        if self.control(reg).0.load(Ordering::Acquire) != 1 {
            return false;
        }
        let [current, _, begin, _] = self.header(reg, class);
        let (b, e) = self.bounds(class);
        let lo = begin.load(Ordering::Acquire).max(b) as usize;
        let hi = current.load(Ordering::Acquire).min(e) as usize;
        (lo..hi).any(|i| {
            // SAFETY: slot `i` lies inside this class's fixed bounds in a
            // region of this structure; slots are 8-aligned and read
            // atomically, so a concurrent write is merely seen or not.
            let slot = unsafe { &*self.slot(reg, i).cast::<AtomicPtr<u8>>() };
            slot.load(Ordering::Relaxed) == item
        })
    }

    /// Items currently in `(region, class)`: a racy snapshot, for statistics.
    pub fn len(&self, region: usize, class: usize) -> usize {
        if region >= self.nregions() || class >= self.nclasses() {
            return 0;
        }
        let reg = self.region(region);
        if self.control(reg).0.load(Ordering::Acquire) != 1 {
            return 0;
        }
        let [current, _, begin, _] = self.header(reg, class);
        (current.load(Ordering::Relaxed) as usize)
            .saturating_sub(begin.load(Ordering::Relaxed) as usize)
    }

    /// Whether every stack of the structure is empty (racy snapshot).
    pub fn is_empty(&self) -> bool {
        (0..self.nregions()).all(|r| (0..self.nclasses()).all(|c| self.len(r, c) == 0))
    }

    /// Empties every class of one region while other threads keep using the
    /// structure; `f(class, items)` receives what was removed. Returns false
    /// if the region could not be drained (rseq discipline without a
    /// working membarrier RSEQ fence), in which case nothing changed.
    ///
    /// rseq: stop every header of the region (pops see it empty, pushes see
    /// it full), fence so that no section that read the old header can still
    /// commit, hand the items over and reset `current`, fence again (see
    /// `drain_rseq`), then restore the bounds. CAS: take each
    /// stack lock in turn.
    pub fn drain(&self, region: usize, f: &mut dyn FnMut(usize, &[*mut u8])) -> bool {
        if region >= self.nregions() {
            return true;
        }
        let reg = self.region(region);
        self.lock_region(reg);
        if self.control(reg).0.load(Ordering::Acquire) != 1 {
            self.unlock_region(reg);
            return true;
        }
        let ok = if self.discipline() == Discipline::Rseq {
            self.drain_rseq(region, reg, f)
        } else {
            self.drain_cas(reg, f)
        };
        self.unlock_region(reg);
        ok
    }

    fn drain_rseq(
        &self,
        region: usize,
        reg: *mut u8,
        f: &mut dyn FnMut(usize, &[*mut u8]),
    ) -> bool {
        let n = self.nclasses();
        for class in 0..n {
            let [_, end, begin, _] = self.header(reg, class);
            begin.store(STOPPED_BEGIN, Ordering::SeqCst);
            end.store(0, Ordering::SeqCst);
        }
        let fenced = self.fence_region(region);
        if fenced.is_ok() {
            for class in 0..n {
                let (b, _) = self.bounds(class);
                let [current, _, _, _] = self.header(reg, class);
                let cur = current.load(Ordering::Acquire);
                if cur > b {
                    // SAFETY: slots `b .. cur` hold this class's items; the
                    // header is stopped and fenced, so no section can change
                    // them while we read.
                    let items = unsafe {
                        core::slice::from_raw_parts(
                            self.slot(reg, b as usize).cast_const(),
                            (cur - b) as usize,
                        )
                    };
                    f(class, items);
                }
                current.store(b, Ordering::Release);
            }
            // Second fence, before the bounds come back: a section reads
            // `current` and the bounds with separate loads, so one that read
            // the old `current` while the header was stopped could otherwise
            // read the restored bounds and commit a stale `current`,
            // resurrecting the items just handed over. After this fence any
            // such section has been restarted, and every later one reads the
            // reset `current`. Should it fail, the region stays stopped (its
            // cache is simply never used again), which is safe.
            let refenced = self.fence_region(region);
            if refenced.is_err() {
                return true;
            }
        }
        for class in 0..n {
            let (b, e) = self.bounds(class);
            let [_, end, begin, _] = self.header(reg, class);
            begin.store(b, Ordering::Release);
            end.store(e, Ordering::Release);
        }
        fenced.is_ok()
    }

    /// Restarts every critical section that may be running on `region`:
    /// on that CPU when regions are CPUs, anywhere when they are cids (a
    /// cid can run on any CPU).
    fn fence_region(&self, region: usize) -> Result<(), i32> {
        if self.index() == Index::Cpu {
            fence::cpu(region as u32)
        } else {
            fence::all()
        }
    }

    fn drain_cas(&self, reg: *mut u8, f: &mut dyn FnMut(usize, &[*mut u8])) -> bool {
        for class in 0..self.nclasses() {
            let [current, _, begin, lock] = self.header(reg, class);
            while lock
                .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
            let b = begin.load(Ordering::Relaxed);
            let cur = current.load(Ordering::Relaxed);
            if cur > b {
                // SAFETY: slots `b .. cur` hold items and we hold the lock.
                let items = unsafe {
                    core::slice::from_raw_parts(
                        self.slot(reg, b as usize).cast_const(),
                        (cur - b) as usize,
                    )
                };
                f(class, items);
            }
            current.store(b, Ordering::Relaxed);
            lock.store(0, Ordering::Release);
        }
        true
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
            let (_, lock) = self.control(self.region(r));
            if lock.swap(0, Ordering::Release) != 0 {
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
            if self.control(reg).0.load(Ordering::Acquire) != 1 {
                continue;
            }
            for class in 0..self.nclasses() {
                let (b, e) = self.bounds(class);
                let [current, end, begin, lock] = self.header(reg, class);
                assert_eq!(
                    begin.load(Ordering::Relaxed),
                    b,
                    "region {r} class {class}: begin"
                );
                assert_eq!(
                    end.load(Ordering::Relaxed),
                    e,
                    "region {r} class {class}: end"
                );
                let cur = current.load(Ordering::Relaxed);
                assert!(
                    b <= cur && cur <= e,
                    "region {r} class {class}: current {cur} outside [{b}, {e}]"
                );
                assert_eq!(
                    lock.load(Ordering::Relaxed),
                    0,
                    "region {r} class {class}: lock held"
                );
            }
        }
    }
}

fn status_error(st: u32, miss: OpError) -> OpError {
    match st {
        arch::STATUS_MISS => miss,
        arch::STATUS_UNREGISTERED => OpError::Unregistered,
        _ => OpError::Exhausted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Anonymous zeroed memory aligned to REGION_BYTES, unmapped on drop.
    struct Regions {
        map: *mut u8,
        len: usize,
        base: *mut u8,
    }

    impl Regions {
        fn new(n: usize) -> Regions {
            let len = (n + 1) * REGION_BYTES;
            // SAFETY: anonymous private mapping, no address hint.
            let map = unsafe {
                libc::mmap(
                    core::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            assert_ne!(map, libc::MAP_FAILED);
            let map = map.cast::<u8>();
            let base = ((map as usize + REGION_BYTES - 1) & !(REGION_BYTES - 1)) as *mut u8;
            Regions { map, len, base }
        }
    }

    impl Drop for Regions {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping made in `new`.
            unsafe { libc::munmap(self.map.cast(), self.len) };
        }
    }

    fn roundtrip(discipline: Discipline, index: Index) {
        let n = registration::possible_cpus();
        let mem = Regions::new(n);
        let slabs = PerCpuSlabs::new();
        // SAFETY: fresh zeroed, aligned memory for n regions, outliving slabs.
        assert!(unsafe { slabs.init_unregistered(mem.base, n, &[4, 8, 100], discipline, index) });
        assert_eq!(slabs.discipline(), discipline);
        assert_eq!(slabs.pop(0), Err(OpError::Empty));
        let items: Vec<*mut u8> = (1..=8usize).map(|i| (i * 16) as *mut u8).collect();
        for &p in &items[..4] {
            slabs.push(0, NonNull::new(p).unwrap()).unwrap();
        }
        // Capacity 4: the fifth push is refused unless we migrated.
        let fifth = slabs.push(0, NonNull::new(items[4]).unwrap());
        let mut got = Vec::new();
        while let Ok(p) = slabs.pop(0) {
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
        let pushed = slabs.push_batch(2, &items).unwrap();
        assert!(pushed >= 1);
        let mut out = [core::ptr::null_mut(); 16];
        let mut total = 0;
        while let Ok(k) = slabs.pop_batch(2, &mut out) {
            total += k;
        }
        assert!(total >= pushed);
        // Drain.
        slabs.push_batch(1, &items).unwrap();
        let mut drained = Vec::new();
        for r in 0..n {
            assert!(slabs.drain(r, &mut |class, it| {
                assert_eq!(class, 1);
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
    fn cas_roundtrip() {
        roundtrip(Discipline::Cas, Index::Cpu);
    }

    #[test]
    fn init_rejects_oversized_layouts() {
        let mem = Regions::new(1);
        let slabs = PerCpuSlabs::new();
        let caps = [u16::MAX; 2];
        // SAFETY: valid memory; the call must refuse the capacities.
        assert!(!unsafe {
            slabs.init_unregistered(mem.base, 1, &caps, Discipline::Cas, Index::Cpu)
        });
        // Still inert: operations are refused, not run on bad memory.
        let item = NonNull::new(16 as *mut u8).unwrap();
        assert_eq!(slabs.pop(0), Err(OpError::Unregistered));
        assert_eq!(slabs.push(0, item), Err(OpError::Unregistered));
        let mut out = [core::ptr::null_mut(); 2];
        assert_eq!(slabs.pop_batch(0, &mut out), Err(OpError::Unregistered));
        assert_eq!(
            slabs.push_batch(0, &[item.as_ptr()]),
            Err(OpError::Unregistered)
        );
        assert!(slabs.drain(0, &mut |_, _| panic!("nothing to drain")));
    }
}

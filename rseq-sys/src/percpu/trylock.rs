//! The fallback discipline, [`Discipline::TryLock`](super::Discipline):
//! when the thread cannot run rseq sections (registration `Unavailable`,
//! `rseq=off`, fewer regions than CPUs, no fixed thread-pointer offset),
//! each stack is guarded by a try-lock, the [`LOCKED`] bit of its header's
//! `current` word (`layout.rs`).
//!
//! # Why it is correct
//!
//! - One word: the lock bit and the index `current` are one 32-bit atomic,
//!   `index | LOCKED`. The lock is taken by one compare-and-swap of the whole
//!   word from `(i, free)` to `(i, held)` (acquire), `i` read just before;
//!   it is released by one store of `(i', free)` (release), `i'` the new
//!   index. So taking the lock also reads the index, and releasing it also
//!   writes the index: no other access to the word is needed.
//! - Mutual exclusion: while the bit is set, only the holder writes the
//!   word (every other writer — an operation, a drain (`drain.rs`), a
//!   region's initialisation (`PerCpuSlabs::ensure_region`) — first swaps it
//!   from a free value, which fails), and only the holder touches the
//!   stack's slots. So every holder sees the stack as the previous holder
//!   left it, and the release/acquire pair on the word orders the previous
//!   holder's slot writes before the next holder's reads. The rseq sections,
//!   which write the word without looking at the bit, never run on a
//!   try-lock structure (one discipline per structure).
//! - No ABA: the compare-and-swap validates nothing but "the word is
//!   `(i, free)` right now". If the word went `(i, free)` -> held -> `(i,
//!   free)` between our read and our swap, the swap succeeds and that is
//!   still the whole truth: the lock is free, the index is `i`, and the
//!   stack is read only after the lock is held. No pointer is ever validated
//!   by comparison (the classic ABA of a lock-free stack, where a head
//!   pointer comes back with another `next` behind it, has nothing to
//!   compare here).
//! - Any region is correct: the lock, not the CPU, protects the data. The
//!   current CPU (see [`CpuSource`]) only keeps threads on their own CPU's
//!   region, where the lock is uncontended.
//! - An uninitialised region's headers are zero, `(0, free)` with bounds 0:
//!   an operation may take such a lock and finds the stack empty and full.
//!   `ensure_region` takes each stack lock the same way before it writes
//!   the bounds, and releases it with the initial index, so an operation
//!   sees either the zeroed header or the initialised one, never a mix.
//! - Progress: a busy lock is not waited for. The quick operations
//!   ([`pop_quick`](PerCpuSlabs::pop_quick)) try once and report a miss; the
//!   full ones try [`TRIES`] times and then report [`OpError::Exhausted`], so
//!   the caller takes its slow path and a preempted holder never blocks
//!   anyone (a drain or an initialisation, which must get the lock, yields
//!   until it does).
//!
//! # Cost
//!
//! A quick pop or push, uncontended: the structure's mode byte (discipline
//! and CPU source in one load), the CPU number (one load from the rseq
//! area, or `rdpid`), the header word, one `lock cmpxchg`, the bound, the
//! slot, one plain store that releases. The `lock cmpxchg` is most of it (a
//! locked instruction drains the store buffer); a malloc/free pair has two.

use super::layout::{Header, Region, LOCKED};
use super::{Discipline, OpError, PerCpuSlabs};
use crate::arch;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

/// Compare-and-swap attempts on a busy stack lock before a full operation
/// gives up.
const TRIES: u32 = 16;

/// Where the try-lock discipline learns the CPU number. A try-lock
/// structure's mode byte (`PerCpuSlabs::mode`) is its source's `u8`; every
/// value is above the rseq discipline's mode.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum CpuSource {
    /// The `cpu_id` of the process's rseq area (rseq registered, but the
    /// structure runs the try-lock: `rseq=off`, or fewer regions than CPUs);
    /// a negative value (thread not registered) falls back to
    /// `sched_getcpu`.
    Rseq = 2,
    /// The `rdpid` instruction (the kernel keeps the CPU number in
    /// `TSC_AUX`), when CPUID advertises it.
    Rdpid = 3,
    /// `sched_getcpu()` (full operations only: the quick ones report a
    /// miss, as a call costs more than the rest of the operation).
    Sched = 4,
}

/// The lowest try-lock mode byte.
pub(super) const FIRST_TRYLOCK_MODE: u8 = CpuSource::Rseq as u8;

impl CpuSource {
    /// The cheapest source this process allows; `rseq_area` says whether
    /// every thread has an rseq area at the fixed thread-pointer offset.
    pub(super) fn choose(rseq_area: bool) -> CpuSource {
        if rseq_area {
            CpuSource::Rseq
        } else if arch::has_rdpid() {
            CpuSource::Rdpid
        } else {
            CpuSource::Sched
        }
    }

    fn from_u8(v: u8) -> CpuSource {
        match v {
            2 => CpuSource::Rseq,
            3 => CpuSource::Rdpid,
            _ => CpuSource::Sched,
        }
    }
}

/// Takes the stack lock of `h` if it is free, in one compare-and-swap;
/// returns the word it held (`LOCKED` clear: the index). `None` if the lock
/// was busy or the word changed under us.
#[inline(always)]
fn try_acquire(h: &Header) -> Option<u32> {
    let w = h.current.load(Ordering::Relaxed);
    if w & LOCKED != 0 {
        return None;
    }
    h.current
        .compare_exchange(w, w | LOCKED, Ordering::Acquire, Ordering::Relaxed)
        .ok()
}

/// Releases the stack lock of `h`, which we hold, writing the new index.
#[inline(always)]
fn release(h: &Header, index: u32) {
    debug_assert!(index < LOCKED);
    h.current.store(index, Ordering::Release);
}

/// The stress tests' delay loop (`--cfg rseq_inject_delay` only), run
/// while the stack lock is held, where it widens the window in which other
/// threads find the lock busy.
#[inline(always)]
fn injected_delay() {
    #[cfg(rseq_inject_delay)]
    for _ in 0..arch::DELAY_LOOPS.load(Ordering::Relaxed) {
        core::hint::spin_loop();
    }
}

impl PerCpuSlabs {
    /// The region for the quick operations: the CPU from the rseq area or
    /// `rdpid`, as `mode` (the structure's mode byte) says; `None` for any
    /// other mode (inert, rseq, `sched_getcpu`), an unregistered thread or a
    /// CPU without a region (the full operations handle those).
    #[inline(always)]
    fn quick_region(&self, mode: u8) -> Option<Region> {
        let cpu = if mode == CpuSource::Rseq as u8 {
            // SAFETY: mode `CpuSource::Rseq` is set only when the process
            // has an rseq area at this thread-pointer offset in every
            // thread; `idx` is the offset of its 32-bit `cpu_id` field.
            unsafe { arch::read_tp_u32(self.idx.load(Ordering::Relaxed)) }
        } else if mode == CpuSource::Rdpid as u8 {
            arch::rdpid_cpu()
        } else {
            return None;
        };
        // A negative `cpu_id` (unregistered) is a huge u32: no region.
        if cpu as usize >= self.nregions() {
            return None;
        }
        Some(self.region(cpu as usize))
    }

    /// The quick pop (`pop_fast` on a try-lock structure; `mode` is the
    /// mode byte it loaded): the item, or null on any miss (busy lock,
    /// empty stack, an uninitialised region, a CPU source or thread the
    /// quick path does not handle), after which the caller runs the full
    /// [`pop`](Self::pop). No call, one locked instruction.
    #[inline(always)]
    pub(super) fn pop_quick(&self, mode: u8, class: usize) -> *mut u8 {
        let Some(region) = self.quick_region(mode) else {
            return core::ptr::null_mut();
        };
        let h = region.header(class);
        let Some(w) = try_acquire(h) else {
            return core::ptr::null_mut();
        };
        let mut item = core::ptr::null_mut();
        let mut next = w;
        if w > h.begin.load(Ordering::Relaxed) as u32 {
            // SAFETY: the slot is below `current` and at or above `begin`,
            // so it holds a pushed, non-null item, and we hold the stack
            // lock (nobody else writes it).
            item = unsafe { region.slot(w as usize - 1).read() };
            next = w - 1;
        }
        injected_delay();
        release(h, next);
        item
    }

    /// The quick push (`push_fast` on a try-lock structure): true if pushed;
    /// false on any miss (see [`pop_quick`](Self::pop_quick)), after which
    /// the caller runs the full [`push`](Self::push).
    #[inline(always)]
    pub(super) fn push_quick(&self, mode: u8, class: usize, item: NonNull<u8>) -> bool {
        let Some(region) = self.quick_region(mode) else {
            return false;
        };
        let h = region.header(class);
        let Some(w) = try_acquire(h) else {
            return false;
        };
        let room = w < h.end.load(Ordering::Relaxed) as u32;
        if room {
            // SAFETY: `w < end` is a free slot of this class, inside the
            // region (an uninitialised header has `end` 0); we hold the
            // stack lock (nobody else reads or writes it).
            unsafe { region.slot(w as usize).write(item.as_ptr()) };
        }
        injected_delay();
        release(h, w + room as u32);
        room
    }

    /// The region for the full operations: the CPU the thread runs on, read
    /// the cheapest way this process allows (see [`CpuSource`]). Any answer
    /// is correct (the stack lock protects the data); a good one keeps
    /// threads on their own CPU's region.
    fn current_region_locked(&self) -> usize {
        let cpu = match CpuSource::from_u8(self.mode.load(Ordering::Relaxed)) {
            CpuSource::Rseq => {
                // SAFETY: as in `quick_region`.
                let c = unsafe { arch::read_tp_u32(self.idx.load(Ordering::Relaxed)) } as i32;
                if c >= 0 {
                    c
                } else {
                    Self::sched_cpu()
                }
            }
            CpuSource::Rdpid => arch::rdpid_cpu() as i32,
            CpuSource::Sched => Self::sched_cpu(),
        };
        let n = self.nregions();
        match cpu {
            c if c < 0 => 0,
            c if (c as usize) < n => c as usize,
            c => c as usize % n,
        }
    }

    fn sched_cpu() -> i32 {
        // SAFETY: sched_getcpu has no preconditions.
        unsafe { libc::sched_getcpu() }
    }

    /// Takes the stack lock of `(current region, class)` for a full
    /// operation, a bounded number of times (initialising the region
    /// first if needed); returns the region and the index when held.
    fn lock_stack(&self, class: usize) -> Result<(Region, u32), OpError> {
        if !self.runs(Discipline::TryLock, Ordering::Acquire) {
            // Not initialised yet, or rseq: refuse.
            return Err(OpError::Unregistered);
        }
        let r = self.current_region_locked();
        let region = self.region(r);
        if !region.is_ready() {
            self.ensure_region(r);
        }
        let h = region.header(class);
        for i in 0..TRIES {
            if i > 0 {
                core::hint::spin_loop();
            }
            if let Some(w) = try_acquire(h) {
                count_op(region);
                return Ok((region, w));
            }
        }
        Err(OpError::Exhausted)
    }

    /// The full pop on a try-lock structure (`pop`; out of line: the
    /// fallback must not weigh on the callers' fast paths).
    #[inline(never)]
    pub(super) fn pop_locked(&self, class: usize) -> Result<NonNull<u8>, OpError> {
        let (region, w) = self.lock_stack(class)?;
        let h = region.header(class);
        if w > h.begin.load(Ordering::Relaxed) as u32 {
            // SAFETY: the slot is below `current` and at or above `begin`,
            // so it holds a pushed, non-null item, and we hold the stack
            // lock (nobody else writes it).
            let item = unsafe { region.slot(w as usize - 1).read() };
            injected_delay();
            release(h, w - 1);
            // SAFETY: only non-null items are ever pushed.
            Ok(unsafe { NonNull::new_unchecked(item) })
        } else {
            release(h, w);
            Err(OpError::Empty)
        }
    }

    /// The full push on a try-lock structure (`push`).
    #[inline(never)]
    pub(super) fn push_locked(&self, class: usize, item: NonNull<u8>) -> Result<(), OpError> {
        let (region, w) = self.lock_stack(class)?;
        let h = region.header(class);
        if w < h.end.load(Ordering::Relaxed) as u32 {
            // SAFETY: `w < end` is a free slot of this class, inside the
            // region; we hold the stack lock (nobody else reads or writes it).
            unsafe { region.slot(w as usize).write(item.as_ptr()) };
            injected_delay();
            release(h, w + 1);
            Ok(())
        } else {
            release(h, w);
            Err(OpError::Full)
        }
    }

    pub(super) fn batch_locked(
        &self,
        class: usize,
        buf: *mut *mut u8,
        max: usize,
        pop: bool,
    ) -> Result<usize, OpError> {
        let (region, w) = self.lock_stack(class)?;
        let h = region.header(class);
        let cur = w as usize;
        let n;
        let next;
        if pop {
            n = (cur.saturating_sub(h.begin.load(Ordering::Relaxed) as usize)).min(max);
            // SAFETY: slots `cur - n .. cur` hold items; `buf` has room for
            // `max >= n`; we hold the stack lock.
            unsafe { core::ptr::copy_nonoverlapping(region.slot(cur - n), buf, n) };
            next = cur - n;
        } else {
            n = (h.end.load(Ordering::Relaxed) as usize)
                .saturating_sub(cur)
                .min(max);
            // SAFETY: slots `cur .. cur + n` are free slots of this class;
            // `buf` holds `max >= n` items; we hold the stack lock.
            unsafe { core::ptr::copy_nonoverlapping(buf, region.slot(cur), n) };
            next = cur + n;
        }
        injected_delay();
        release(h, next as u32);
        match (n, pop) {
            (0, true) => Err(OpError::Empty),
            (0, false) => Err(OpError::Full),
            _ => Ok(n),
        }
    }

    /// Operations the try-lock discipline has done on this structure
    /// through its full paths (`pop`, `push`, the batches; approximate:
    /// concurrent increments on one region may lose a count). The quick
    /// paths (`pop_fast`, `push_fast`) do not count: a counter update
    /// would touch a second cache line on every one.
    pub fn fallback_ops(&self) -> u64 {
        if !self.runs(Discipline::TryLock, Ordering::Acquire) {
            return 0;
        }
        (0..self.nregions())
            .map(|r| {
                let region = self.region(r);
                if region.is_ready() {
                    region.counter().load(Ordering::Relaxed)
                } else {
                    0
                }
            })
            .sum()
    }
}

/// Waits for the stack lock of `h` (drains and initialisation, which must
/// get it); returns the index. Spins a little, then yields to the holder.
pub(super) fn acquire_waiting(h: &Header) -> u32 {
    let mut spins = 0u32;
    loop {
        if let Some(w) = try_acquire(h) {
            return w;
        }
        spins += 1;
        if spins < 64 {
            core::hint::spin_loop();
        } else {
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
    }
}

/// Releases a lock taken by [`acquire_waiting`], writing `index`.
pub(super) fn release_waited(h: &Header, index: u16) {
    release(h, index as u32);
}

/// Counts one full try-lock operation in the region's counter. A plain
/// load and store, not a locked add: the counter is statistics only, and
/// the threads that share a region are mostly one CPU's; a rare lost
/// update is an acceptable price for keeping a second locked instruction
/// off the fallback.
#[inline(always)]
fn count_op(region: Region) {
    let c = region.counter();
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

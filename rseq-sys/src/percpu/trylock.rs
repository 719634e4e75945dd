//! The fallback discipline, [`Discipline::TryLock`](super::Discipline):
//! when the thread cannot run rseq sections (registration `Unavailable`,
//! `rseq=off`, fewer regions than CPUs, no fixed thread-pointer offset),
//! each stack is guarded by a try-lock, its header's `lock` half-word.
//!
//! # Why it is correct
//!
//! - Mutual exclusion: the lock is taken by one compare-and-swap `0 -> 1`
//!   (acquire) and released by a store of 0 (release). `current` and the
//!   slots of a stack are read and written only by the lock's holder, by
//!   an operation here or by a drain (`drain.rs`), which takes the same
//!   lock; so every operation sees the stack as the previous holder left it,
//!   and the release/acquire pair orders the slot writes before the next
//!   holder's reads.
//! - No ABA: the only compare-and-swap is on the lock word, and it compares
//!   against "free". If the lock went free -> held -> free between our read
//!   and our swap, "free" is still the whole truth: nothing about the stack
//!   is inferred from the comparison, the stack is read only after the lock
//!   is held. No pointer is ever validated by comparison (the classic ABA
//!   of a lock-free stack, where a head pointer comes back with another
//!   `next` behind it, has nothing to compare here).
//! - Any region is correct: the lock, not the CPU, protects the data. The
//!   current CPU (see [`CpuSource`]) only keeps threads on their own CPU's
//!   region, where the lock is uncontended.
//! - Progress: a busy lock is not waited for. After [`TRIES`] attempts the
//!   operation reports [`OpError::Exhausted`] and the caller takes its slow
//!   path, so a preempted holder never blocks anyone (a drain, which must
//!   empty the stack, yields until it gets the lock).

use super::layout::Region;
use super::{Discipline, OpError, PerCpuSlabs};
use crate::arch;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

/// Compare-and-swap attempts on a busy stack lock before giving up.
const TRIES: u32 = 16;

/// Where the try-lock discipline learns the CPU number
/// (`PerCpuSlabs::cpu_source` holds its `u8`).
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum CpuSource {
    /// `sched_getcpu()`.
    Sched = 0,
    /// The `cpu_id` of the process's rseq area (rseq registered, but the
    /// structure runs the try-lock: `rseq=off`, or fewer regions than CPUs);
    /// a negative value (thread not registered) falls back to
    /// `sched_getcpu`.
    Rseq = 1,
    /// The `rdpid` instruction (the kernel keeps the CPU number in
    /// `TSC_AUX`), when CPUID advertises it.
    Rdpid = 2,
}

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
            1 => CpuSource::Rseq,
            2 => CpuSource::Rdpid,
            _ => CpuSource::Sched,
        }
    }
}

impl PerCpuSlabs {
    /// The region for the try-lock discipline: the CPU the thread runs on,
    /// read the cheapest way this process allows (see [`CpuSource`]). Any
    /// answer is correct (the stack lock protects the data); a good one
    /// keeps threads on their own CPU's region.
    #[inline]
    fn current_region_locked(&self) -> usize {
        let cpu = match CpuSource::from_u8(self.cpu_source.load(Ordering::Relaxed)) {
            CpuSource::Rseq => {
                // SAFETY: `CpuSource::Rseq` is chosen only when the process
                // has an rseq area at this thread-pointer offset in every
                // thread; `cpu_id` is one of its 32-bit fields.
                let c = unsafe {
                    arch::read_tp_u32(
                        self.off.load(Ordering::Relaxed) + crate::abi::offset::CPU_ID as isize,
                    )
                } as i32;
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

    #[cold]
    fn sched_cpu() -> i32 {
        // SAFETY: sched_getcpu has no preconditions.
        unsafe { libc::sched_getcpu() }
    }

    /// Takes the stack lock of `(current region, class)`, a bounded number
    /// of times; returns the region when held.
    #[inline(always)]
    fn lock_stack(&self, class: usize) -> Result<Region, OpError> {
        if !self.runs(Discipline::TryLock, Ordering::Acquire) {
            // Not initialised yet: an inert structure refuses every operation.
            return Err(OpError::Unregistered);
        }
        let r = self.current_region_locked();
        let region = self.region(r);
        if !region.is_ready() {
            self.ensure_region(r);
        }
        if region
            .header(class)
            .lock
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return self.lock_stack_busy(region, class);
        }
        count_op(region);
        Ok(region)
    }

    /// The stack lock was busy: a few more tries, then give up.
    #[cold]
    #[inline(never)]
    fn lock_stack_busy(&self, region: Region, class: usize) -> Result<Region, OpError> {
        let lock = &region.header(class).lock;
        for _ in 1..TRIES {
            core::hint::spin_loop();
            if lock
                .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                count_op(region);
                return Ok(region);
            }
        }
        Err(OpError::Exhausted)
    }

    fn unlock_stack(&self, region: Region, class: usize) {
        region.header(class).lock.store(0, Ordering::Release);
    }

    #[inline(never)]
    pub(super) fn pop_locked_outlined(&self, class: usize) -> Result<NonNull<u8>, OpError> {
        self.pop_locked(class)
    }

    #[inline(never)]
    pub(super) fn push_locked_outlined(
        &self,
        class: usize,
        item: NonNull<u8>,
    ) -> Result<(), OpError> {
        self.push_locked(class, item)
    }

    // Inlined only into the out-of-line wrappers above and `pop_fast`: the
    // fallback must not weigh on the rseq fast path's registers and stack
    // frame.
    #[inline]
    pub(super) fn pop_locked(&self, class: usize) -> Result<NonNull<u8>, OpError> {
        let region = self.lock_stack(class)?;
        let h = region.header(class);
        let cur = h.current.load(Ordering::Relaxed);
        let result = if cur > h.begin.load(Ordering::Relaxed) {
            // SAFETY: the slot is below `current`, so it holds a pushed,
            // non-null item, and we hold the stack lock (nobody else writes
            // it).
            let item = unsafe { region.slot(cur as usize - 1).read() };
            h.current.store(cur - 1, Ordering::Relaxed);
            // SAFETY: only non-null items are ever pushed.
            Ok(unsafe { NonNull::new_unchecked(item) })
        } else {
            Err(OpError::Empty)
        };
        self.unlock_stack(region, class);
        result
    }

    #[inline]
    pub(super) fn push_locked(&self, class: usize, item: NonNull<u8>) -> Result<(), OpError> {
        let region = self.lock_stack(class)?;
        let h = region.header(class);
        let cur = h.current.load(Ordering::Relaxed);
        let result = if cur < h.end.load(Ordering::Relaxed) {
            // SAFETY: `cur < end` is a free slot of this class, inside the
            // region; we hold the stack lock (nobody else reads or writes it).
            unsafe { region.slot(cur as usize).write(item.as_ptr()) };
            h.current.store(cur + 1, Ordering::Relaxed);
            Ok(())
        } else {
            Err(OpError::Full)
        };
        self.unlock_stack(region, class);
        result
    }

    pub(super) fn batch_locked(
        &self,
        class: usize,
        buf: *mut *mut u8,
        max: usize,
        pop: bool,
    ) -> Result<usize, OpError> {
        let region = self.lock_stack(class)?;
        let h = region.header(class);
        let cur = h.current.load(Ordering::Relaxed) as usize;
        let n;
        if pop {
            n = (cur.saturating_sub(h.begin.load(Ordering::Relaxed) as usize)).min(max);
            // SAFETY: slots `cur - n .. cur` hold items; `buf` has room for
            // `max >= n`; we hold the stack lock.
            unsafe { core::ptr::copy_nonoverlapping(region.slot(cur - n), buf, n) };
            h.current.store((cur - n) as u16, Ordering::Relaxed);
        } else {
            n = (h.end.load(Ordering::Relaxed) as usize)
                .saturating_sub(cur)
                .min(max);
            // SAFETY: slots `cur .. cur + n` are free slots of this class;
            // `buf` holds `max >= n` items; we hold the stack lock.
            unsafe { core::ptr::copy_nonoverlapping(buf, region.slot(cur), n) };
            h.current.store((cur + n) as u16, Ordering::Relaxed);
        }
        self.unlock_stack(region, class);
        match (n, pop) {
            (0, true) => Err(OpError::Empty),
            (0, false) => Err(OpError::Full),
            _ => Ok(n),
        }
    }

    /// Operations the try-lock discipline has done on this structure
    /// (approximate: concurrent increments on one region may lose a count).
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

/// Counts one try-lock operation in the region's counter. A plain load and
/// store, not a locked add: the counter is statistics only, and the
/// threads that share a region are mostly one CPU's; a rare lost update is
/// an acceptable price for keeping a second locked instruction off the
/// fallback.
#[inline(always)]
fn count_op(region: Region) {
    let c = region.counter();
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

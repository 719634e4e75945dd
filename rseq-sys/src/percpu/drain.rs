//! The drain protocol: emptying one region while other threads keep using
//! the structure (the allocator's reclaim, and tests).
//!
//! - rseq: stop every header of the region (`begin = STOPPED_BEGIN`,
//!   `end = 0`: pops see it empty, pushes see it full), fence so that no
//!   section that read the old header can still commit, hand the items over
//!   and reset `current`, fence again, then restore the bounds. The second
//!   fence is needed because a section reads `current` and the bounds with
//!   separate loads (see `drain_rseq`).
//! - try-lock: take each stack lock in turn (waiting for it, unlike an
//!   operation), hand the items over, and release the lock with the reset
//!   index (one store of the `current` word, as in `trylock.rs`).
//!
//! Drains of one region are serialised by the region lock, which also
//! orders them against the region's initialisation.

use super::layout::{Region, STOPPED_BEGIN};
use super::{trylock, ClassId, Discipline, Index, PerCpuSlabs, RegionId};
use crate::fence;
use core::sync::atomic::Ordering;

impl PerCpuSlabs {
    /// Empties every class of one region while other threads keep using the
    /// structure; `f(class, items)` receives what was removed. Returns false
    /// if the region could not be drained (rseq discipline without a
    /// working membarrier RSEQ fence), in which case nothing changed.
    pub fn drain(&self, region: RegionId, f: &mut dyn FnMut(ClassId, &[*mut u8])) -> bool {
        let region = region.0;
        if region >= self.nregions() {
            return true;
        }
        let reg = self.region(region);
        self.lock_region(reg);
        if !reg.is_ready() {
            self.unlock_region(reg);
            return true;
        }
        let ok = if self.discipline() == Discipline::Rseq {
            self.drain_rseq(region, reg, f)
        } else {
            self.drain_locked(reg, f)
        };
        self.unlock_region(reg);
        ok
    }

    fn drain_rseq(
        &self,
        region: usize,
        reg: Region,
        f: &mut dyn FnMut(ClassId, &[*mut u8]),
    ) -> bool {
        let n = self.nclasses();
        for class in 0..n {
            let h = reg.header(class);
            h.begin.store(STOPPED_BEGIN, Ordering::SeqCst);
            h.end.store(0, Ordering::SeqCst);
        }
        let fenced = self.fence_region(region);
        if fenced.is_ok() {
            for class in 0..n {
                let (b, _) = self.bounds(class);
                let h = reg.header(class);
                let cur = h.index(Ordering::Acquire);
                // SAFETY: the header is stopped and fenced: no section that
                // read it before can still commit, and every later one sees
                // it empty and full, so nobody writes slots `b .. current`.
                unsafe { hand_over(reg, class, b, cur, f) };
                // Under rseq the word is the bare index (no lock bit).
                h.current.store(b as u32, Ordering::Release);
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
            let h = reg.header(class);
            h.begin.store(b, Ordering::Release);
            h.end.store(e, Ordering::Release);
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

    fn drain_locked(&self, reg: Region, f: &mut dyn FnMut(ClassId, &[*mut u8])) -> bool {
        for class in 0..self.nclasses() {
            let h = reg.header(class);
            let cur = trylock::acquire_waiting(h) as u16;
            let b = h.begin.load(Ordering::Relaxed);
            // SAFETY: we hold the stack lock, so nobody else touches the
            // stack's `current` or slots.
            unsafe { hand_over(reg, class, b, cur, f) };
            trylock::release_waited(h, b);
        }
        true
    }
}

/// Hands the items of `class` (slots `b .. cur`) to `f`; the caller then
/// resets `current` to `b`.
///
/// # Safety
/// Nobody else writes the stack's `current` or slots until the caller has
/// reset it (its header is stopped and fenced, or its stack lock is held);
/// `b` is the class's `begin` and `cur` its `current` index.
unsafe fn hand_over(
    reg: Region,
    class: usize,
    b: u16,
    cur: u16,
    f: &mut dyn FnMut(ClassId, &[*mut u8]),
) {
    if cur > b {
        let id = ClassId::new(class).expect("a structure's classes are below MAX_CLASSES");
        // SAFETY: slots `b .. cur` hold this class's items, unchanged while
        // we read (the caller's promise).
        f(id, unsafe { reg.items(b, cur) });
    }
}

//! The rseq discipline: every operation is one critical section of
//! `arch` on the region of the CPU (or cid) the thread runs on, and a failed
//! section goes through one retry driver, [`PerCpuSlabs::retry_rseq`].
//!
//! Every function here may run only on a structure that `init` gave the
//! rseq discipline: then `off`/`idx` name the process's rseq area (the same
//! thread-pointer offset in every thread) and `base` covers a region for
//! every index the kernel can report (`init` checked `nregions >=
//! possible_cpus`). The sections check `cpu_id < 0` themselves.

use super::{OpError, PerCpuSlabs};
use crate::arch::{self, BatchArgs, Status};
use crate::registration::{self, Mode};
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

/// How many times a failed operation is fixed up and run again before the
/// caller gets the error (each run is itself bounded by `MAX_RETRIES`
/// aborts).
const FIXUP_RETRIES: usize = 3;

/// An item that a committed pop returned: every push takes a `NonNull`
/// (and `push_batch` checks its items in debug builds), so a slot below
/// `current` never holds null.
#[inline(always)]
fn popped(item: *mut u8) -> NonNull<u8> {
    debug_assert!(!item.is_null());
    // SAFETY: only non-null items are ever pushed (see above).
    unsafe { NonNull::new_unchecked(item) }
}

impl PerCpuSlabs {
    /// `(base, rseq area offset, index field offset)` for the sections.
    #[inline(always)]
    fn params(&self) -> (*mut u8, isize, isize) {
        (
            self.base.load(Ordering::Relaxed),
            self.off.load(Ordering::Relaxed),
            self.idx.load(Ordering::Relaxed),
        )
    }

    /// One `arch::pop` section (rseq discipline).
    #[inline(always)]
    fn pop_section(&self, class: usize) -> (*mut u8, Status) {
        let (base, off, idx) = self.params();
        // SAFETY: rseq discipline (module docs): `off`/`idx` name the
        // process's rseq area and `base` covers every index; `class` is a
        // header of the structure.
        unsafe { arch::pop(base, class, off, idx) }
    }

    /// One `arch::push` section (rseq discipline).
    #[inline(always)]
    fn push_section(&self, class: usize, item: NonNull<u8>) -> ((), Status) {
        let (base, off, idx) = self.params();
        // SAFETY: rseq discipline (module docs): `off`/`idx` name the
        // process's rseq area and `base` covers every index.
        ((), unsafe {
            arch::push(base, class, off, idx, item.as_ptr())
        })
    }

    /// `pop_fast` in the rseq discipline: one fast section, no retry.
    #[inline(always)]
    pub(super) fn pop_fast_rseq(&self, class: usize) -> *mut u8 {
        let (base, off, idx) = self.params();
        // SAFETY: rseq discipline (module docs): `off`/`idx` name the
        // process's rseq area and `base` covers every index.
        unsafe { arch::pop_or_null(base, class, off, idx) }
    }

    /// `push_fast` in the rseq discipline: one fast section, no retry.
    #[inline(always)]
    pub(super) fn push_fast_rseq(&self, class: usize, item: NonNull<u8>) -> bool {
        let (base, off, idx) = self.params();
        // SAFETY: rseq discipline (module docs): `off`/`idx` name the
        // process's rseq area and `base` covers every index.
        unsafe { arch::push_or_miss(base, class, off, idx, item.as_ptr()) }
    }

    /// `pop` in the rseq discipline: one section inline, the retries out
    /// of line.
    #[inline(always)]
    pub(super) fn pop_rseq(&self, class: usize) -> Result<NonNull<u8>, OpError> {
        match self.pop_section(class) {
            (item, Status::Ok) => Ok(popped(item)),
            (_, st) => self
                .retry_rseq(st, OpError::Empty, || self.pop_section(class))
                .map(popped),
        }
    }

    /// `push` in the rseq discipline.
    #[inline(always)]
    pub(super) fn push_rseq(&self, class: usize, item: NonNull<u8>) -> Result<(), OpError> {
        match self.push_section(class, item) {
            ((), Status::Ok) => Ok(()),
            (_, st) => self.retry_rseq(st, OpError::Full, || self.push_section(class, item)),
        }
    }

    /// Runs a batch section, retried through [`retry_rseq`](Self::retry_rseq).
    ///
    /// # Safety
    /// `buf` is valid for `max` reads and writes (whichever `section` does);
    /// `max >= 1`; the structure runs the rseq discipline.
    pub(super) unsafe fn batch_rseq(
        &self,
        class: usize,
        buf: *mut *mut u8,
        max: usize,
        section: unsafe fn(&BatchArgs, isize, isize) -> (usize, Status),
        miss: OpError,
    ) -> Result<usize, OpError> {
        let (base, _, _) = self.params();
        let args = BatchArgs {
            base,
            class,
            buf,
            max,
        };
        let run = || {
            let (_, off, idx) = self.params();
            // SAFETY: rseq discipline (module docs) and the caller's promise
            // about `buf` and `max`.
            unsafe { section(&args, off, idx) }
        };
        match run() {
            (n, Status::Ok) => Ok(n),
            (_, st) => self.retry_rseq(st, miss, run),
        }
    }

    /// The retry driver: after a section ended with `st` (not `Ok`), fixes
    /// what can be fixed and runs `section` again, at most
    /// [`FIXUP_RETRIES`] times. The error is `miss` for a stack that stayed
    /// empty (pop) or full (push).
    #[cold]
    #[inline(never)]
    fn retry_rseq<T>(
        &self,
        mut st: Status,
        miss: OpError,
        mut section: impl FnMut() -> (T, Status),
    ) -> Result<T, OpError> {
        for _ in 0..FIXUP_RETRIES {
            if !self.prepare_retry(st) {
                break;
            }
            match section() {
                (v, Status::Ok) => return Ok(v),
                (_, s) => st = s,
            }
        }
        Err(match st {
            Status::Miss => miss,
            Status::Unregistered => OpError::Unregistered,
            Status::Ok | Status::Exhausted => OpError::Exhausted,
        })
    }

    /// After a failed section: fixes what can be fixed (an uninitialised
    /// region reads as empty and full; an unregistered thread may register)
    /// and says whether a retry makes sense.
    fn prepare_retry(&self, st: Status) -> bool {
        match st {
            Status::Miss => {
                let r = self.current_region_rseq();
                if self.region(r).is_ready() {
                    return false;
                }
                self.ensure_region(r);
                true
            }
            Status::Unregistered => registration::current_mode() != Mode::Unavailable,
            Status::Ok | Status::Exhausted => false,
        }
    }

    /// The region the calling thread's rseq area points at right now (slow
    /// path only; may be stale by the time it is used, which is harmless).
    fn current_region_rseq(&self) -> usize {
        // SAFETY: rseq discipline: `idx` is the thread-pointer offset of a
        // 32-bit field of the process's rseq area, present in every thread.
        let i = unsafe { arch::read_tp_u32(self.idx.load(Ordering::Relaxed)) } as usize;
        i.min(self.nregions() - 1)
    }
}

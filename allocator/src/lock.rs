//! A tiny futex lock (the three-state mutex of Drepper's "Futexes Are
//! Tricky"), used for the central free lists, the page heap and the huge-block
//! table.
//!
//! Why not `std::sync::Mutex`: it would also work (it is futex-based and does
//! not allocate on Linux), but we need two things it does not give: a `const`
//! constructor usable in statics *with* a force-unlock for the child after
//! `fork()`, and a lock/unlock pair without a guard for `raw::fork_prepare`.
//!
//! Contended acquisitions spin briefly with `spin_loop` backoff, then sleep in
//! `FUTEX_WAIT`, so a preempted holder (64 threads on 2 cores) costs sleeping
//! waiters nothing. Never held across an allocation or across I/O; critical
//! sections are O(batch) at most, except `trim()`, which is rare.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering};

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
const CONTENDED: u32 = 2;

/// A futex-based mutual-exclusion lock without data.
///
/// Invariant: `state` is 0 (free), 1 (held, no sleeper) or 2 (held, there may
/// be sleepers in `FUTEX_WAIT` on `state`).
pub struct RawLock {
    state: AtomicU32,
}

impl RawLock {
    /// A new unlocked lock.
    pub const fn new() -> Self {
        RawLock {
            state: AtomicU32::new(UNLOCKED),
        }
    }

    /// Acquires the lock.
    #[inline]
    pub fn lock(&self) {
        if self
            .state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_slow();
        }
    }

    #[cold]
    #[inline(never)]
    fn lock_slow(&self) {
        // Spin a little with exponential backoff: sections are short.
        let mut spins = 1u32;
        while spins <= 64 {
            for _ in 0..spins {
                core::hint::spin_loop();
            }
            if self.state.load(Ordering::Relaxed) == UNLOCKED
                && self
                    .state
                    .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            spins *= 2;
        }
        // Sleep: mark contended; whoever unlocks will wake one sleeper.
        while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
            futex_wait(&self.state, CONTENDED);
        }
    }

    /// Tries to acquire the lock without waiting.
    #[inline]
    pub fn try_lock(&self) -> bool {
        self.state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// The caller holds the lock (acquired by `lock`/`try_lock` and not yet
    /// released), or is the only thread of a freshly forked child whose parent
    /// thread held it (`fork_child`).
    #[inline]
    pub unsafe fn unlock(&self) {
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            futex_wake(&self.state);
        }
    }

    /// Makes the lock free again without waking anyone, whoever held it.
    /// Returns whether it was held.
    ///
    /// # Safety
    /// Only in the child of `fork()` (one thread, nobody sleeps on the lock),
    /// and only when the data it guards may be used as it is: see
    /// `fork.rs` for when that holds.
    pub unsafe fn reset_after_fork(&self) -> bool {
        self.state.swap(UNLOCKED, Ordering::Release) != UNLOCKED
    }

    /// True if some thread holds the lock (racy; for assertions).
    pub fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) != UNLOCKED
    }
}

impl Default for RawLock {
    fn default() -> Self {
        Self::new()
    }
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT_PRIVATE reads the u32 at `word`, which is valid and
    // aligned for the duration of the call; a null timeout waits forever. A
    // spurious return (EINTR, EAGAIN) is handled by the caller's loop.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            core::ptr::null::<libc::timespec>(),
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE_PRIVATE only uses the address of `word` as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        );
    }
}

/// Data protected by a [`RawLock`]. Access through [`Mutex::lock`], which
/// returns a guard, or through the unsafe raw accessors used by fork handling.
pub struct Mutex<T> {
    lock: RawLock,
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is serialised by `lock`; T is moved between threads
// only as a whole through the lock (T: Send).
unsafe impl<T: Send> Sync for Mutex<T> {}
// SAFETY: as above, the Mutex owns its T.
unsafe impl<T: Send> Send for Mutex<T> {}

impl<T> Mutex<T> {
    /// A new unlocked mutex.
    pub const fn new(v: T) -> Self {
        Mutex {
            lock: RawLock::new(),
            data: UnsafeCell::new(v),
        }
    }

    /// Acquires the lock; the guard releases it on drop.
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.lock.lock();
        MutexGuard { m: self }
    }

    /// The raw lock, for fork handling (take all locks, release all locks).
    pub fn raw(&self) -> &RawLock {
        &self.lock
    }
}

/// Holds a [`Mutex`] locked; derefs to the data.
pub struct MutexGuard<'a, T> {
    m: &'a Mutex<T>,
}

impl<T> core::ops::Deref for MutexGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while the lock is held, so no one
        // else has access to the data.
        unsafe { &*self.m.data.get() }
    }
}

impl<T> core::ops::DerefMut for MutexGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this access unique.
        unsafe { &mut *self.m.data.get() }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the guard was created by `lock`, so this thread holds it.
        unsafe { self.m.lock.unlock() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn mutex_counts_exactly_under_contention() {
        let m = Arc::new(Mutex::new(0u64));
        let hs: std::vec::Vec<_> = (0..8)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        *m.lock() += 1;
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*m.lock(), 160_000);
    }

    #[test]
    fn try_lock_and_force_unlock() {
        let l = RawLock::new();
        assert!(l.try_lock());
        assert!(!l.try_lock());
        assert!(l.is_locked());
        // SAFETY: we hold it.
        unsafe { l.unlock() };
        assert!(!l.is_locked());
    }

    #[test]
    fn reset_after_fork_frees_a_held_lock() {
        let l = RawLock::new();
        // SAFETY: no other thread uses `l` (the fork-child precondition).
        assert!(!unsafe { l.reset_after_fork() });
        l.lock();
        // SAFETY: as above.
        assert!(unsafe { l.reset_after_fork() });
        assert!(l.try_lock());
        // SAFETY: we hold it.
        unsafe { l.unlock() };
    }
}

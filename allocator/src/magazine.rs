//! Thread magazines: the CAS fallback's front, a few free objects per
//! class that a thread keeps to itself.
//!
//! Without rseq the per-CPU stacks take one locked instruction per
//! operation (the try-lock of rseq-sys's `trylock.rs`). A locked
//! instruction costs 4.9 ns on a Zen 5 VM, where that made the fallback's
//! pair 5.9x the rseq pair (2.2x on a Zen 4 VM), so in CAS
//! mode a thread first tries its own magazine: up to [`CAP`] objects of
//! each class of at most [`CLASS_BYTES`] bytes, [`CLASS_BYTES`] bytes at
//! most per class, popped and pushed with plain loads and stores. A free
//! then malloc of a class costs no locked instruction; a burst longer than
//! the magazine goes to the per-CPU stacks as before. A thread holds at
//! most 52 KiB this way (every class full).
//!
//! ```text
//! refill::malloc_slow (CAS)  pop(class)   : else the try-lock pop
//! refill::mark_and_push (CAS) push(class) : else the try-lock push
//! thread exit (pthread key)  flush        : every object to free_overflow
//! trim / reclaim              flush_mine   (only the caller's own)
//! double_free::found          contains     (every magazine, racy)
//! ```
//!
//! Why it is correct:
//! - Only the owning thread writes its magazine. A signal handler running
//!   on that thread in the middle of an operation sees `busy` and uses the
//!   try-lock instead (the flag and the compiler fences order the accesses
//!   as the handler sees them: same thread).
//! - The double-free search reads other threads' magazines with relaxed
//!   loads while their owners change them. An object stays at its index
//!   while it is in a magazine, so a search finds an object that is there
//!   for the whole search; one pushed or popped during it is the racing
//!   double free the module `double_free` already describes. Flushes move
//!   objects out under `InFlight`, so a search retries across them.
//! - A magazine is a thread's until the thread exits: the pthread key's
//!   destructor flushes it and gives it back. A fork child in CAS mode
//!   stops using the caches (`fork`), so the other threads' magazines,
//!   like the per-CPU stacks, are left as they were; a search still finds
//!   their objects, which are free.
//! - No magazine (the table is full, the key or the mapping failed, the
//!   thread is exiting) just means the try-lock, as before.
//!
//! The magazines are mapped [`BLOCK`] at a time, when a thread claims one
//! and every mapped one is taken: a process with few threads spends 28 KiB
//! of address space on them, not the 448 KiB of all [`MAX_MAGAZINES`]
//! (which cost a program under a 30 MiB `RLIMIT_AS` 7 of its 64 KiB
//! blocks, `ffi_as_limit`).

use crate::double_free::InFlight;
use crate::size_class::{SizeClass, NUM_CLASSES, SIZES};
use core::cell::Cell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{compiler_fence, AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering};

/// Objects per class at most (a power of two: indices are masked).
pub(crate) const CAP: usize = 4;
/// Bytes per class at most; larger classes have no magazine.
pub(crate) const CLASS_BYTES: usize = 4096;
/// Magazines in the process; threads beyond them use the try-lock.
const MAX_MAGAZINES: usize = 256;
/// Magazines mapped at once.
const BLOCK: usize = 16;

const fn caps() -> [u8; NUM_CLASSES] {
    let mut t = [0u8; NUM_CLASSES];
    let mut i = 1;
    while i < NUM_CLASSES {
        let size = SIZES[i] as usize;
        if size <= CLASS_BYTES {
            let n = CLASS_BYTES / size;
            t[i] = if n > CAP { CAP as u8 } else { n as u8 };
        }
        i += 1;
    }
    t
}

/// Each class's capacity (0: no magazine).
static CAPS: [u8; NUM_CLASSES] = caps();

#[repr(C, align(64))]
struct Magazine {
    /// The owner is inside an operation on this magazine.
    busy: AtomicBool,
    /// A thread owns this magazine.
    owned: AtomicBool,
    /// Objects in each class's slots (`slots[c][..len[c]]`).
    len: [AtomicU8; NUM_CLASSES],
    slots: [[AtomicPtr<u8>; CAP]; NUM_CLASSES],
}

impl Magazine {
    /// Runs `f` (an operation of the owner) with `busy` set; None without
    /// running it if `busy` is set already (this thread is inside an
    /// operation that a signal handler interrupted).
    #[inline(always)]
    fn exclusive<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        if self.busy.load(Ordering::Relaxed) {
            return None;
        }
        self.busy.store(true, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        let r = f();
        compiler_fence(Ordering::SeqCst);
        self.busy.store(false, Ordering::Relaxed);
        Some(r)
    }
}

/// The magazines, `BLOCK` per entry; an entry is null until a claim finds
/// every magazine before it taken, then mapped for ever (zeroed: a valid
/// `Magazine`, atomics only).
static TABLE: [AtomicPtr<Magazine>; MAX_MAGAZINES / BLOCK] =
    [const { AtomicPtr::new(ptr::null_mut()) }; MAX_MAGAZINES / BLOCK];
/// Magazines ever claimed: searches look at the first `HIGH`.
static HIGH: AtomicUsize = AtomicUsize::new(0);
/// The pthread key whose destructor flushes an exiting thread's magazine,
/// plus one (0: not created yet; `usize::MAX`: creation failed).
static KEY: AtomicUsize = AtomicUsize::new(0);
/// Held while the table is mapped and the key created (once).
static SETUP: AtomicBool = AtomicBool::new(false);

const UNSET: usize = 0;
const NONE: usize = 1;

// Per thread: UNSET, NONE or this thread's magazine. A const-initialised
// `thread_local!` without destructor (see rseq-sys's `registration.rs`).
thread_local! {
    static MINE: Cell<usize> = const { Cell::new(UNSET) };
}

/// This thread's magazine, claiming one on first use.
#[inline(always)]
fn mine() -> Option<&'static Magazine> {
    match MINE.with(Cell::get) {
        UNSET => claim(),
        m => claimed(m),
    }
}

/// The magazine a `MINE` value other than UNSET names, if any.
#[inline(always)]
fn claimed(m: usize) -> Option<&'static Magazine> {
    // SAFETY: a value above NONE is a magazine of TABLE (mapped for ever)
    // that `claim` gave this thread.
    (m > NONE).then(|| unsafe { &*(m as *const Magazine) })
}

/// An object of `class` from this thread's magazine, or null.
#[inline(always)]
pub(crate) fn pop(class: SizeClass) -> *mut u8 {
    let Some(m) = mine() else {
        return ptr::null_mut();
    };
    let c = class.index();
    // An empty class (a burst of mallocs) costs no flag stores.
    if m.len[c].load(Ordering::Relaxed) == 0 {
        return ptr::null_mut();
    }
    m.exclusive(|| {
        // Again: a signal handler may have emptied it since.
        let n = m.len[c].load(Ordering::Relaxed) as usize;
        if n == 0 {
            return ptr::null_mut();
        }
        let p = m.slots[c][(n - 1) & (CAP - 1)].load(Ordering::Relaxed);
        m.len[c].store((n - 1) as u8, Ordering::Relaxed);
        p
    })
    .unwrap_or(ptr::null_mut())
}

/// Puts `p`, a marked free object of `class` in no structure, into this
/// thread's magazine; false (nothing changed) if there is no room.
#[inline(always)]
pub(crate) fn push(class: SizeClass, p: *mut u8) -> bool {
    let Some(m) = mine() else {
        return false;
    };
    let c = class.index();
    // A full class (a burst of frees) costs no flag stores.
    if m.len[c].load(Ordering::Relaxed) >= CAPS[c] {
        return false;
    }
    m.exclusive(|| {
        // Again: a signal handler may have filled it since.
        let n = m.len[c].load(Ordering::Relaxed);
        if n >= CAPS[c] {
            return false;
        }
        m.slots[c][n as usize & (CAP - 1)].store(p, Ordering::Relaxed);
        m.len[c].store(n + 1, Ordering::Relaxed);
        true
    })
    .unwrap_or(false)
}

/// Magazine `i` (< MAX_MAGAZINES), if its block is mapped.
fn magazine(i: usize) -> Option<&'static Magazine> {
    let block = TABLE[i / BLOCK].load(Ordering::Acquire);
    // SAFETY: a non-null entry holds BLOCK magazines, mapped for ever and
    // zero-initialised (a valid `Magazine`: atomics only).
    (!block.is_null()).then(|| unsafe { &*block.add(i % BLOCK) })
}

/// Every magazine claimed so far.
fn all() -> impl Iterator<Item = &'static Magazine> {
    (0..HIGH.load(Ordering::Acquire)).filter_map(magazine)
}

/// Whether `p` sits in some thread's magazine of `class` (racy; see the
/// module doc).
pub(crate) fn contains(class: SizeClass, p: *mut u8) -> bool {
    let c = class.index();
    all().any(|m| {
        let n = (m.len[c].load(Ordering::Relaxed) as usize).min(CAP);
        m.slots[c][..n]
            .iter()
            .any(|s| s.load(Ordering::Relaxed) == p)
    })
}

/// Bytes of free objects in every magazine (racy snapshot).
pub(crate) fn cached_bytes() -> usize {
    all()
        .map(|m| {
            SizeClass::all()
                .map(|c| m.len[c.index()].load(Ordering::Relaxed) as usize * c.size_bytes())
                .sum::<usize>()
        })
        .sum()
}

/// Empties `m` (the caller's own) through `free_overflow`.
fn flush(m: &Magazine) {
    m.exclusive(|| {
        for class in SizeClass::all() {
            let c = class.index();
            let n = m.len[c].load(Ordering::Relaxed) as usize;
            if n == 0 {
                continue;
            }
            let _moving = InFlight::class(class);
            for i in (0..n.min(CAP)).rev() {
                let p = m.slots[c][i].load(Ordering::Relaxed);
                m.len[c].store(i as u8, Ordering::Relaxed);
                // SAFETY: `p` was a marked free object of `class` in this
                // magazine, which no longer lists it: in no structure.
                unsafe { crate::refill::free_overflow(p, class) };
            }
        }
    });
}

/// Empties the calling thread's magazine (`trim`, `reclaim`).
pub(crate) fn flush_mine() {
    if let Some(m) = claimed(MINE.with(Cell::get)) {
        flush(m);
    }
}

/// The pthread key's destructor: the exiting thread's magazine is emptied
/// and given back.
extern "C" fn on_thread_exit(arg: *mut libc::c_void) {
    MINE.with(|c| c.set(NONE));
    // SAFETY: `claim` set this thread's value to its magazine.
    let m = unsafe { &*(arg as *const Magazine) };
    flush(m);
    m.owned.store(false, Ordering::Release);
}

/// Runs `f` holding the `SETUP` spin lock.
fn locked<R>(f: impl FnOnce() -> R) -> R {
    while SETUP
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    let r = f();
    SETUP.store(false, Ordering::Release);
    r
}

/// Creates the key, once; false if that failed.
fn setup() -> bool {
    locked(|| {
        if KEY.load(Ordering::Relaxed) == 0 {
            let mut key: libc::pthread_key_t = 0;
            // SAFETY: creates a key with an extern "C" destructor that
            // lives as long as this object; pthread_key_create does not
            // allocate.
            let ok = unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) } == 0;
            KEY.store(
                if ok { key as usize + 1 } else { usize::MAX },
                Ordering::Release,
            );
        }
    });
    KEY.load(Ordering::Acquire) != usize::MAX
}

/// Magazine `i`, mapping its block if no one has yet; None if that
/// mapping failed.
fn magazine_or_map(i: usize) -> Option<&'static Magazine> {
    magazine(i).or_else(|| {
        locked(|| {
            let entry = &TABLE[i / BLOCK];
            if entry.load(Ordering::Relaxed).is_null() {
                let block = crate::os::map(
                    BLOCK * core::mem::size_of::<Magazine>(),
                    libc::PROT_READ | libc::PROT_WRITE,
                    true,
                )?;
                entry.store(block.as_ptr().cast(), Ordering::Release);
            }
            Some(())
        })?;
        magazine(i)
    })
}

/// Gives this thread a magazine, or records that it has none.
#[cold]
#[inline(never)]
fn claim() -> Option<&'static Magazine> {
    // C free keeps errno, and so does a malloc that succeeds.
    let _errno = crate::util::ErrnoGuard::new();
    // Re-entrant calls (pthread_setspecific may allocate) see "none".
    MINE.with(|c| c.set(NONE));
    if !setup() {
        return None;
    }
    for i in 0..MAX_MAGAZINES {
        let m = magazine_or_map(i)?;
        if m.owned.load(Ordering::Relaxed)
            || m.owned
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            continue;
        }
        HIGH.fetch_max(i + 1, Ordering::AcqRel);
        let key = (KEY.load(Ordering::Acquire) - 1) as libc::pthread_key_t;
        let arg = NonNull::from(m).as_ptr().cast::<libc::c_void>();
        // SAFETY: `key` is our key; the value is this thread's magazine.
        if unsafe { libc::pthread_setspecific(key, arg) } != 0 {
            m.owned.store(false, Ordering::Release);
            return None;
        }
        MINE.with(|c| c.set(m as *const Magazine as usize));
        return Some(m);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_hold_at_most_class_bytes() {
        for c in SizeClass::all() {
            let cap = CAPS[c.index()] as usize;
            assert!(cap <= CAP);
            if c.size_bytes() <= CLASS_BYTES {
                assert!(cap >= 1, "class {} B", c.size_bytes());
                assert!(cap * c.size_bytes() <= CLASS_BYTES);
            } else {
                assert_eq!(cap, 0);
            }
        }
        assert_eq!(CAPS[0], 0);
    }
}

//! `fork()`: the `pthread_atfork` handlers, and why they neither deadlock nor
//! leave the child an unusable heap.
//!
//! # Registration
//! An ELF constructor (`.init_array` of whatever links this crate:
//! `librseq_malloc.so`, or a Rust program with `#[global_allocator]
//! RseqAlloc`) calls [`register_handlers`] once, before `main`, never from
//! inside malloc's lazy initialisation (glibc holds its atfork lock while it
//! registers; a registration from a malloc called by a prepare handler would
//! wait for itself). glibc runs prepare handlers in reverse order of
//! registration, so registering this early makes our prepare run after
//! (almost) every other library's: a prepare handler registered later may
//! still allocate, because our locks are not held yet when it runs.
//!
//! # Multi-threaded process (`__libc_single_threaded == 0`)
//! glibc 2.36 `fork` (checked in its source and in Debian's libc.so.6):
//! prepare handlers, then its NSS snapshot, then `_IO_list_lock()` (the
//! recursive lock of stdio's list of streams), then its own malloc locks,
//! `_Fork`; in the parent it unlocks those two and runs the parent handlers;
//! in the child it resets the stdio locks (`_IO_list_resetlock`) and runs
//! the child handlers. glibc's malloc locks come after the stdio list lock
//! because a thread can wait for malloc while holding stdio locks (`getline`
//! grows its buffer with the stream locked; `fflush(NULL)` holds the list
//! lock and waits for each stream's lock).
//!
//! [`prepare`] keeps glibc's order: it takes the stdio list lock itself
//! first (a weak reference resolved at load time; the lock is recursive, so
//! glibc's own `_IO_list_lock` in `fork` just counts a second hold), then
//! `FORK_LOCK`, `DRAIN_LOCK`, the central locks by class, the page heap, the
//! huge table. Why no cycle: every allocator lock is a *leaf* — a thread that
//! holds one never waits for anything else (no stdio, no other lock outside
//! this list, which is always taken in the order above, no allocation), so
//! any holder releases it in bounded time. The forking thread therefore
//! waits (1) for the list lock, holding none of ours, exactly where glibc's
//! `fork` would wait for it anyway, and (2) for our leaf locks. The cycle
//! of issue 9 (forker holds an allocator lock and waits for the list lock;
//! `fflush(NULL)` holds that and waits for a FILE lock; `getline` holds that
//! and waits in `realloc` for the allocator lock) cannot form: the forker
//! no longer holds an allocator lock while it waits for the list lock.
//! Parent: [`parent`] releases ours, then the list lock (glibc released its
//! second hold before running the parent handlers). Child: [`child`]
//! releases ours but leaves the list lock alone: glibc has already reset it
//! to "free, count 0", and an unlock would drive the count to -1 so that
//! the next holder never releases it. Consistency in the child: every
//! allocator lock was held by the forking thread, so no other thread was
//! inside a locked section; the per-CPU caches are consistent at every
//! instant in rseq mode (a section commits with one store), and in CAS mode
//! a stack lock may belong to a thread that is gone, so the child stops using
//! the caches (their objects are leaked, the central lists serve it). Region
//! locks (rseq-sys) are taken by drains, excluded by `DRAIN_LOCK`, and by a
//! region's one-time initialisation, which the child may redo: they are
//! reset.
//!
//! Residual risk, shared with every allocator that locks in a prepare
//! handler (TCMalloc, jemalloc): glibc locks that `fork` takes after the
//! prepare handlers and that a thread may hold while it allocates — the NSS
//! database lock (held while `/etc/nsswitch.conf` is first loaded or
//! reloaded) and, from glibc 2.41, popen's `proc_file_chain` lock — are not
//! exported, so we cannot take them before ours.
//!
//! # Single-threaded process (fork from a signal handler)
//! glibc's `fork` takes none of its stdio or malloc locks when
//! `__libc_single_threaded` is set (it reads that very flag, so the two
//! decisions agree), to keep `fork` usable from a signal handler. Then the
//! only possible holder of an allocator lock is a frame of this thread that
//! the signal interrupted, and waiting for it would wait forever: [`prepare`]
//! takes nothing (not the stdio list lock either: glibc would not reset it in
//! the child). In the child, [`child`] resets every allocator lock and
//! region lock so the child can allocate. Consistency: the child's heap is
//! the parent's at the instant of the signal. rseq sections interrupted by
//! the signal were restarted by the kernel, CAS stack operations are atomic
//! for the structure, and a locked section that was not interrupted left
//! its structure consistent; only a locked section interrupted mid-update
//! leaves its structure as the interrupted frame left it, which is what
//! glibc's child sees too (its malloc takes no lock in a single-threaded
//! process). Two cases are made safe anyway: a drain was under way
//! (`DRAIN_LOCK` held), or CAS mode (a stack lock may be held): the child
//! stops using the per-CPU caches; a thread was initialising the allocator:
//! the child continues on the bootstrap arena. POSIX allows the child of a
//! fork from a signal handler only async-signal-safe calls until it execs;
//! allocating there is a best effort, as in glibc.

use crate::cpu_cache::{DRAIN_LOCK, SLABS};
use crate::global::{self, CENTRAL, HEAP, HUGE};
use crate::lock::RawLock;
use crate::util;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use rseq_sys::arch::libc_weak::{self, LibcForkSymbols};

/// Serialises two threads forking at once (after the stdio list lock).
static FORK_LOCK: RawLock = RawLock::new();
/// Thread id of the thread between `prepare` and `parent`/`child`; 0 if none.
static FORK_OWNER: AtomicU32 = AtomicU32::new(0);
/// Nesting of `prepare` calls by `FORK_OWNER` (handlers registered twice).
static FORK_DEPTH: AtomicUsize = AtomicUsize::new(0);
/// The fork in progress runs in single-threaded mode (no lock taken).
static FORK_SINGLE: AtomicBool = AtomicBool::new(false);
/// Single-threaded mode: `DRAIN_LOCK` was held (by an interrupted frame).
static FORK_DRAIN_HELD: AtomicBool = AtomicBool::new(false);

fn libc() -> LibcForkSymbols {
    libc_weak::libc_fork_symbols()
}

/// Whether the process has never created a thread, as glibc's `fork` sees
/// it (`__libc_single_threaded`); false when libc does not say.
pub(crate) fn single_threaded() -> bool {
    let p = libc().single_threaded;
    // SAFETY: a non-null pointer is the address of glibc's
    // `__libc_single_threaded`, a `char` that lives as long as the process.
    !p.is_null() && unsafe { core::ptr::read_volatile(p) } != 0
}

fn each_lock(f: &mut dyn FnMut(&RawLock)) {
    f(&DRAIN_LOCK);
    for c in CENTRAL.all().iter() {
        f(c.raw_lock());
    }
    f(HEAP.raw_lock());
    f(HUGE.raw_lock());
}

/// The prepare handler (see the module doc).
pub(crate) fn prepare() {
    let me = util::gettid();
    if FORK_OWNER.load(Ordering::Relaxed) == me {
        FORK_DEPTH.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if single_threaded() {
        FORK_OWNER.store(me, Ordering::Relaxed);
        FORK_DEPTH.store(1, Ordering::Relaxed);
        FORK_SINGLE.store(true, Ordering::Relaxed);
        FORK_DRAIN_HELD.store(DRAIN_LOCK.is_locked(), Ordering::Relaxed);
        return;
    }
    if let Some(lock) = libc().io_list_lock {
        // SAFETY: glibc's `_IO_list_lock(void)`: takes a recursive lock,
        // released by `parent` (or reset by glibc in the child).
        unsafe { lock() };
    }
    FORK_LOCK.lock();
    FORK_OWNER.store(me, Ordering::Relaxed);
    FORK_DEPTH.store(1, Ordering::Relaxed);
    FORK_SINGLE.store(false, Ordering::Relaxed);
    each_lock(&mut |l| l.lock());
}

/// Releases what `prepare` took, except the stdio list lock.
fn release_ours() {
    // SAFETY: `prepare` took every one of these locks on this thread (in
    // the child: on the thread that is now the child's only thread).
    unsafe {
        HUGE.raw_lock().unlock();
        HEAP.raw_lock().unlock();
        for c in CENTRAL.all().iter().rev() {
            c.raw_lock().unlock();
        }
        DRAIN_LOCK.unlock();
    }
    FORK_OWNER.store(0, Ordering::Relaxed);
    // SAFETY: as above.
    unsafe { FORK_LOCK.unlock() };
}

/// The parent handler.
pub(crate) fn parent() {
    if FORK_DEPTH.fetch_sub(1, Ordering::Relaxed) != 1 {
        return;
    }
    if FORK_SINGLE.load(Ordering::Relaxed) {
        FORK_OWNER.store(0, Ordering::Relaxed);
        return;
    }
    release_ours();
    if let Some(unlock) = libc().io_list_unlock {
        // SAFETY: `prepare` took the list lock once on this thread; glibc
        // has already dropped its own second hold.
        unsafe { unlock() };
    }
}

/// The child handler.
pub(crate) fn child() {
    if FORK_DEPTH.fetch_sub(1, Ordering::Relaxed) != 1 {
        return;
    }
    global::fork_child_adopt_init();
    // The background thread (if any) did not survive the fork: the child
    // re-creates it on its first slow path.
    crate::decay::fork_child();
    crate::double_free::reset_after_fork();
    let cas = global::cache_ready() && SLABS.discipline() == rseq_sys::percpu::Discipline::TryLock;
    if FORK_SINGLE.load(Ordering::Relaxed) {
        FORK_OWNER.store(0, Ordering::Relaxed);
        let drain = FORK_DRAIN_HELD.load(Ordering::Relaxed);
        each_lock(&mut |l| {
            // SAFETY: the child has one thread; see the module doc for the
            // state of the data these locks guard.
            unsafe { l.reset_after_fork() };
        });
        // SAFETY: as above (held only if a signal interrupted a prepare).
        unsafe { FORK_LOCK.reset_after_fork() };
        // SAFETY: as above.
        unsafe { SLABS.reset_region_locks_after_fork() };
        if drain || cas {
            global::fork_child_abandon_caches();
        }
        return;
    }
    if cas {
        global::fork_child_abandon_caches();
    }
    // SAFETY: a fresh child, one thread; no drain was under way (DRAIN_LOCK
    // was ours), so a held region lock was a region's initialisation.
    unsafe { SLABS.reset_region_locks_after_fork() };
    // The stdio list lock: glibc reset it already (see the module doc).
    release_ours();
}

extern "C" fn atfork_prepare() {
    prepare();
}

extern "C" fn atfork_parent() {
    parent();
}

extern "C" fn atfork_child() {
    child();
}

static REGISTERED: AtomicBool = AtomicBool::new(false);

/// Registers the fork handlers with `pthread_atfork`, once per process
/// (later calls do nothing). Called by this crate's ELF constructor and by
/// the ffi crate's; call it yourself only before any thread exists.
pub fn register_handlers() {
    if REGISTERED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the handlers are `extern "C" fn()` items that live as long as
    // this object (pthread_atfork ties them to our DSO handle and glibc
    // unregisters them if it is unloaded). pthread_atfork may call malloc,
    // which is re-entrant-safe before and during our initialisation.
    let rc = unsafe {
        libc::pthread_atfork(
            Some(atfork_prepare as unsafe extern "C" fn()),
            Some(atfork_parent as unsafe extern "C" fn()),
            Some(atfork_child as unsafe extern "C" fn()),
        )
    };
    if rc != 0 {
        util::write_stderr(b"rseq-malloc: pthread_atfork failed; fork() from threads may hang\n");
    }
}

extern "C" fn register_at_load() {
    register_handlers();
}

/// The ELF constructor (see the module doc).
#[used]
#[link_section = ".init_array"]
static REGISTER_AT_LOAD: extern "C" fn() = register_at_load;

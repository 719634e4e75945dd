//! The front end's slow paths: everything `fast.rs` tail-calls.
//!
//! - `malloc_slow`: the fast pop missed or the fast path is off (not yet
//!   initialised, CAS discipline, `stats=1` counting, no caches): the full
//!   per-CPU pop (which registers the thread or initialises the region),
//!   then a batch refill from the central list;
//! - `free_overflow` / `free_small_slow`: the fast push missed, or the fast
//!   path is off, or the block looks freed already (double-free check);
//!   an overflow moves a batch to the central list;
//! - `reclaim`: out of heap, take back what caches and transfer stacks hold.
//!
//! Every object handed to a caller has its first word cleared (the free
//! mark, see `double_free`); every object stored anywhere carries it.

use crate::double_free::{self, InFlight};
use crate::fast::{self, FAST};
use crate::global::{self, CENTRAL, HEAP};
use crate::size_class::{self, SizeClass};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, Ordering};
use rseq_sys::percpu::{ClassId, OpError};

/// Largest batch moved between a per-CPU cache and its central list.
const MAX_BATCH: usize = 32;

#[inline(always)]
fn handed_out(p: *mut u8) -> *mut u8 {
    if !p.is_null() {
        // SAFETY: `p` is a small object that was free and is now the
        // caller's.
        unsafe { fast::clear_mark(p) };
    }
    p
}

fn enomem(p: *mut u8) -> *mut u8 {
    if p.is_null() {
        // SAFETY: the calling thread's errno slot.
        unsafe { *libc::__errno_location() = libc::ENOMEM };
    }
    p
}

/// The per-CPU stack of `class` for the CAS fallback's quick paths. Always
/// `Some` (a class is below `MAX_CLASSES`); unlike `SizeClass::slab`, whose
/// unreachable panic is a call that gives the function a stack frame, a
/// `None` here just takes the full path.
#[inline(always)]
fn quick_id(class: SizeClass) -> Option<ClassId> {
    ClassId::new(class.index())
}

// ---------------------------------------------------------------- malloc

/// An object of `class` when the fast pop did not give one. On the CAS
/// fallback this is the fast path: the thread's magazine (plain loads and
/// stores, see `magazine`), else the try-lock's quick pop (one locked
/// instruction; see rseq-sys's `trylock.rs`); any miss is a tail call to
/// [`malloc_full`].
#[cold]
#[inline(never)]
pub(crate) fn malloc_slow(class: SizeClass) -> *mut u8 {
    if let (true, Some(id)) = (FAST.cas_ready(), quick_id(class)) {
        let mut p = crate::magazine::pop(class);
        if p.is_null() {
            p = crate::cpu_cache::SLABS.pop_fast(id);
        }
        if !p.is_null() {
            // SAFETY: a free object of `class` the pop made ours.
            unsafe { fast::clear_mark(p) };
            return p;
        }
    }
    malloc_full(class)
}

/// The full per-CPU pop, then the central lists.
#[cold]
#[inline(never)]
fn malloc_full(class: SizeClass) -> *mut u8 {
    enomem(handed_out(malloc_slow_inner(class)))
}

fn malloc_slow_inner(class: SizeClass) -> *mut u8 {
    if !global::cache_ready() {
        if !global::ensure_init() {
            return global::boot_alloc_class(class);
        }
        if !global::cache_ready() {
            return central_pop_one(class);
        }
    }
    match crate::cpu_cache::SLABS.pop(class.slab()) {
        Ok(p) => {
            if global::counting() {
                global::FAST_HITS.fetch_add(1, Ordering::Relaxed);
            }
            p.as_ptr()
        }
        Err(e) => malloc_miss(class, e),
    }
}

fn central_pop_one(class: SizeClass) -> *mut u8 {
    global::SLOW_DIRECT_OPS.fetch_add(1, Ordering::Relaxed);
    let mut one = [ptr::null_mut(); 1];
    if CENTRAL.get(class).pop_batch(&HEAP, class, &mut one) == 1
        || (reclaim() && CENTRAL.get(class).pop_batch(&HEAP, class, &mut one) == 1)
    {
        one[0]
    } else {
        ptr::null_mut()
    }
}

/// The per-CPU stack of `class` is empty (or unusable: `e`): refill it with
/// a batch from the central list and return one object of it.
fn malloc_miss(class: SizeClass, e: OpError) -> *mut u8 {
    let misses = global::FAST_MISSES.fetch_add(1, Ordering::Relaxed);
    crate::stats::note_peaks();
    // Time-based decay is driven by activity: small-object programs reach
    // it here (no allocator lock held).
    crate::decay::tick();
    let period = crate::cpu_cache::idle_scan_period();
    if misses % period == period - 1 {
        crate::cpu_cache::drain_idle_regions(&CENTRAL, &HEAP);
    }
    if e != OpError::Empty {
        return central_pop_one(class);
    }
    let mut buf = [ptr::null_mut(); MAX_BATCH];
    let want = class.batch().clamp(1, buf.len());
    let _moving = InFlight::class(class);
    let mut n = CENTRAL.get(class).pop_batch(&HEAP, class, &mut buf[..want]);
    if n == 0 && reclaim() {
        n = CENTRAL.get(class).pop_batch(&HEAP, class, &mut buf[..want]);
    }
    if n == 0 {
        return ptr::null_mut();
    }
    // The batch's last object goes out now and the rest onto the stack in
    // order, so the next pops take them from the end back: the order
    // `pop_batch` arranged (a fresh span's objects ascending).
    let result = buf[n - 1];
    let rest = &buf[..n - 1];
    if !rest.is_empty() {
        let pushed = crate::cpu_cache::SLABS
            .push_batch(class.slab(), rest)
            .unwrap_or(0);
        if pushed < rest.len() {
            // SAFETY: these objects came from the central list just now and
            // are owned by nobody else; they still carry the free mark.
            unsafe { CENTRAL.get(class).push_batch(&HEAP, class, &rest[pushed..]) };
        }
    }
    result
}

/// Out of heap: take back the free objects that per-CPU caches and
/// transfer stacks hold (their spans may become free), so a retry can
/// succeed. True if anything was drained or flushed. One at a time.
#[cold]
#[inline(never)]
pub(crate) fn reclaim() -> bool {
    static BUSY: AtomicBool = AtomicBool::new(false);
    if BUSY.swap(true, Ordering::Acquire) {
        return false;
    }
    let before = HEAP.stats().free_bytes;
    global::empty_caches();
    let after = HEAP.stats().free_bytes;
    // Kept huge ranges hold address space the heap may need (under an
    // address-space limit a new chunk can fail for want of it).
    let unmapped = global::HUGE.release_all();
    BUSY.store(false, Ordering::Release);
    after > before || unmapped > 0
}

/// C `malloc` above the fast path's table: null with ENOMEM on failure.
#[cold]
#[inline(never)]
pub(crate) fn malloc_big(size: usize) -> *mut u8 {
    enomem(alloc_uncommon(size, global::MIN_ALIGN))
}

/// Any (size, align) the fast path's tables do not cover.
#[inline(never)]
pub(crate) fn alloc_uncommon(size: usize, align: usize) -> *mut u8 {
    match size_class::class_for(size, align) {
        Some(c) => fast::malloc_small(c),
        None => enomem(global::alloc_big(size, align, false)),
    }
}

// ---------------------------------------------------------------- free

/// Frees a marked object that is in no structure, when the fast push
/// missed or could not run: the full per-CPU push, its overflow, or the
/// central list. C free keeps errno here.
///
/// # Safety
/// `p` is an object start of `class`, marked free, owned by the caller and
/// in no structure.
#[cold]
#[inline(never)]
pub(crate) unsafe fn free_overflow(p: *mut u8, class: SizeClass) {
    let _errno = crate::util::ErrnoGuard::new();
    // SAFETY: non-null: an object start.
    let nn = unsafe { NonNull::new_unchecked(p) };
    if global::cache_ready() {
        match crate::cpu_cache::SLABS.push(class.slab(), nn) {
            Ok(()) => return,
            // SAFETY: `p` is a marked free object of `class` in no structure
            // (this function's contract; the refused push changed nothing).
            Err(e) => return unsafe { free_miss(p, class, e) },
        }
    }
    // SAFETY: as above.
    unsafe { free_central(p, class) }
}

/// Frees a validated object start of `class` when the fast path could not:
/// checks the free mark, marks, then pushes (the CAS fallback's magazine or
/// quick push, else `free_overflow`). On the CAS fallback this is the fast
/// path: the magazine, else one locked instruction; a marked object (maybe
/// a double free) and a refused push are tail calls.
///
/// # Safety
/// `p` is an object start of `class` of this allocator, given up by the
/// caller.
#[cold]
#[inline(never)]
pub(crate) unsafe fn free_small_slow(p: *mut u8, class: SizeClass, who: &'static str) {
    if global::is_boot(p as usize) {
        return;
    }
    let key = FAST.key();
    // SAFETY: an object start: at least 8 bytes, 8-aligned. The top byte
    // first (a one-byte load always forwards), the whole word only if it
    // matches.
    if unsafe { fast::mark_byte(p) } == fast::MARK {
        // SAFETY: this function's contract.
        return unsafe { free_marked(p, class, who) };
    }
    // SAFETY: `p` is an unmarked object start of `class` given up by the
    // caller.
    unsafe { mark_and_push(p, class, key) }
}

/// `free_small_slow` for an object whose top byte is the mark's: compares
/// the whole word and, if it carries the mark, asks `double_free` (which
/// aborts on a real double free), then frees it as usual.
///
/// # Safety
/// As for `free_small_slow`.
#[cold]
#[inline(never)]
unsafe fn free_marked(p: *mut u8, class: SizeClass, who: &'static str) {
    let key = FAST.key();
    // SAFETY: an object start: at least 8 bytes, 8-aligned.
    if fast::is_marked(unsafe { p.cast::<u64>().read() }, key) {
        // C free keeps errno: the exact check may take locks.
        let _errno = crate::util::ErrnoGuard::new();
        double_free::check(p, class, who);
    }
    // SAFETY: `p` is an object start of `class` given up by the caller, not
    // a double free (the check returned).
    unsafe { mark_and_push(p, class, key) }
}

/// Marks `p` free and pushes it: the CAS fallback's magazine or quick push,
/// else `free_overflow` (tail call).
///
/// # Safety
/// `p` is an object start of `class` of this allocator, given up by the
/// caller and in no structure; `key` is the free mark.
#[inline(always)]
unsafe fn mark_and_push(p: *mut u8, class: SizeClass, key: u64) {
    // SAFETY: the object is the caller's to give up.
    unsafe { p.cast::<u64>().write(key) };
    // SAFETY: non-null object start.
    let nn = unsafe { NonNull::new_unchecked(p) };
    // The CAS fallback's magazine and quick push run without an errno
    // guard (two calls of `__errno_location` on every free): they make no
    // call that sets errno (the magazine's first use per thread, which maps
    // memory and sets a pthread key, keeps errno itself; the CPU
    // number comes from the rseq area or rdpid; a process with neither
    // misses here and takes `free_overflow`, which guards errno).
    if let (true, Some(id)) = (FAST.cas_ready(), quick_id(class)) {
        if crate::magazine::push(class, p) || crate::cpu_cache::SLABS.push_fast(id, nn) {
            return;
        }
    }
    // SAFETY: `p` is marked free and in no structure.
    unsafe { free_overflow(p, class) }
}

/// Frees straight into the central list (bypassing the per-CPU cache).
///
/// # Safety
/// `p` is a free object of `class`, marked, in no structure.
unsafe fn free_central(p: *mut u8, class: SizeClass) {
    global::SLOW_DIRECT_OPS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: `p` is a marked free object of `class` in no structure (this
    // function's contract), which is what the central list takes.
    unsafe { CENTRAL.get(class).push_batch(&HEAP, class, &[p]) };
}

/// # Safety
/// As for `free_central`.
unsafe fn free_miss(p: *mut u8, class: SizeClass, e: OpError) {
    if e != OpError::Full {
        // SAFETY: `p` is a marked free object of `class` in no structure
        // (this function's contract).
        return unsafe { free_central(p, class) };
    }
    // Overflow: move a batch out of this CPU's cache, then free `p` with it.
    let mut buf = [ptr::null_mut(); MAX_BATCH + 1];
    let want = class.batch().clamp(1, MAX_BATCH);
    let _moving = InFlight::class(class);
    let n = crate::cpu_cache::SLABS
        .pop_batch(class.slab(), &mut buf[..want])
        .unwrap_or(0);
    buf[n] = p;
    // SAFETY: the popped objects were free objects in our cache, now owned by
    // us; `p` is free per the contract; all carry the mark.
    unsafe { CENTRAL.get(class).push_batch(&HEAP, class, &buf[..n + 1]) };
}

/// `dealloc` for sizes and alignments beyond the fast path's tables.
///
/// # Safety
/// `p` is a live block allocated with (size, align), not used afterwards.
#[cold]
#[inline(never)]
pub(crate) unsafe fn dealloc_uncommon(p: *mut u8, size: usize, align: usize) {
    if let (Some(c), false) = (size_class::class_for(size, align), p.is_null()) {
        debug_assert!(global::debug_is_small_of(p, c));
        // SAFETY: per the contract p is a live object of class `c`.
        return unsafe { fast::free_known(p, c, "free()") };
    }
    // SAFETY: `p` is null or a block of ours given up (this function's
    // contract); free_any validates it and reports anything else.
    unsafe { global::free_any(p, "free()") }
}

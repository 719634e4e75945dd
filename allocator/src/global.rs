//! The front door: process-wide state, lazy initialisation, and the
//! malloc/free/realloc paths shared by `RseqAlloc` and `raw`.
//!
//! Fast paths (`malloc_class`, `free_class`): the class is found from the
//! size by a table lookup; then one load of `STATE` and one per-CPU pop or
//! push (an rseq critical section, or CAS in fallback mode). Everything else
//! is in `#[cold]` functions. Cost: about 40 instructions per call through
//! `__rust_alloc` (class lookup ~8, state check 3, rseq-sys pop ~25 including
//! the critical section); measured 7.6-8 ns per alloc+free pair when inlined
//! and ~15 ns through `std::alloc::{alloc, dealloc}` on the 2.5 GHz Xeon of
//! this project (glibc: 11.5 ns inlined), on an idle machine.
//!
//! The C path (`raw::free`) finds the class through the page map: about a
//! dozen more loads than `dealloc` with a layout.
//!
//! Block kinds, by request:
//! - small: size <= 256 KiB and alignment <= page (8 KiB): size classes;
//! - large: up to `HUGE_THRESHOLD_BYTES` (size plus alignment slack): a span
//!   of whole pages from the page heap;
//! - huge: beyond, a direct mapping.

use crate::central::CentralLists;
use crate::cpu_cache::SLABS;
use crate::huge::HugeTable;
use crate::lock::RawLock;
use crate::page_heap::PageHeap;
use crate::pagemap::PageMap;
use crate::size_class::{self, SizeClass, MAX_SMALL_BYTES, PAGE_BYTES, PAGE_SHIFT};
use crate::span::{LARGE, SMALL};
use crate::util::{self, MsgBuf};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use rseq_sys::percpu::{Discipline, Index, OpError};

/// Requests of at least this many bytes (size + alignment slack) are mapped
/// directly.
pub const HUGE_THRESHOLD_BYTES: usize = 1 << 20;
/// Address space reserved for the page heap (halved until the kernel
/// accepts, down to 256 MiB).
pub const HEAP_RESERVE_BYTES: usize = 256 << 30;
/// What `malloc` guarantees.
pub const MIN_ALIGN: usize = 16;

const UNINIT: u8 = 0;
const INITIALIZING: u8 = 1;
/// Ready, per-CPU caches in use.
const READY_CACHE: u8 = 2;
/// Ready, no per-CPU caches (their setup failed): central lists only.
const READY_CENTRAL: u8 = 3;
/// The heap reservation failed: every allocation returns null.
const FAILED: u8 = 4;
/// Ready, per-CPU caches in use, fast-path hits counted (`stats=1`): the
/// fast path sees a state other than `READY_CACHE` and takes the cold path
/// that counts, so the default fast path carries no counter at all.
const READY_COUNTING: u8 = 5;

/// Initialisation state (see the constants above).
static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static INIT_TID: AtomicU32 = AtomicU32::new(0);
pub(crate) static HEAP: PageHeap = PageHeap::new();
pub(crate) static CENTRAL: CentralLists = CentralLists::new();
pub(crate) static HUGE: HugeTable = HugeTable::new();
static CONFIG_STATS: AtomicBool = AtomicBool::new(false);
static CONFIG_VERBOSE: AtomicBool = AtomicBool::new(false);
pub(crate) static FAST_HITS: AtomicU64 = AtomicU64::new(0);
pub(crate) static FAST_MISSES: AtomicU64 = AtomicU64::new(0);
pub(crate) static SLOW_DIRECT_OPS: AtomicU64 = AtomicU64::new(0);
static FORK_LOCK: RawLock = RawLock::new();
static FORK_OWNER: AtomicU32 = AtomicU32::new(0);
static FORK_DEPTH: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------- bootstrap

/// Memory for allocations made while this thread initialises the allocator
/// (e.g. libc calling malloc from inside our init under LD_PRELOAD). Never
/// freed; `free` of such a block is a no-op.
const BOOT_BYTES: usize = 64 << 10;
#[repr(C, align(4096))]
struct BootArena(core::cell::UnsafeCell<[u8; BOOT_BYTES]>);
// SAFETY: bytes are handed out once each through the atomic bump `BOOT_USED`.
unsafe impl Sync for BootArena {}
static BOOT: BootArena = BootArena(core::cell::UnsafeCell::new([0; BOOT_BYTES]));
static BOOT_USED: AtomicUsize = AtomicUsize::new(0);

fn boot_alloc(size: usize, align: usize) -> *mut u8 {
    let base = BOOT.0.get() as usize;
    let mut cur = BOOT_USED.load(Ordering::Relaxed);
    loop {
        let Some(start) = util::round_up(base + cur, align.max(MIN_ALIGN)) else {
            return ptr::null_mut();
        };
        let Some(end) = start.checked_add(size.max(1)) else {
            return ptr::null_mut();
        };
        if end > base + BOOT_BYTES {
            return ptr::null_mut();
        }
        match BOOT_USED.compare_exchange(cur, end - base, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return start as *mut u8,
            Err(c) => cur = c,
        }
    }
}

#[inline]
pub(crate) fn is_boot(addr: usize) -> bool {
    let base = BOOT.0.get() as usize;
    addr.wrapping_sub(base) < BOOT_BYTES
}

// ---------------------------------------------------------------- init

/// Makes sure the allocator is initialised. Returns false when the caller
/// must use the bootstrap arena (it is the initialising thread, re-entered)
/// or when initialisation failed (then `STATE == FAILED`).
#[cold]
#[inline(never)]
pub(crate) fn ensure_init() -> bool {
    loop {
        match STATE.load(Ordering::Acquire) {
            READY_CACHE | READY_CENTRAL | READY_COUNTING => return true,
            FAILED => return false,
            INITIALIZING => {
                if INIT_TID.load(Ordering::Relaxed) == util::gettid() {
                    return false;
                }
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
            _ => {
                if STATE
                    .compare_exchange(UNINIT, INITIALIZING, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    INIT_TID.store(util::gettid(), Ordering::Relaxed);
                    let st = do_init();
                    STATE.store(st, Ordering::Release);
                    if st != FAILED {
                        after_init();
                    }
                    return st != FAILED;
                }
            }
        }
    }
}

fn do_init() -> u8 {
    let cfg = crate::config::from_env();
    CONFIG_STATS.store(cfg.stats, Ordering::Relaxed);
    CONFIG_VERBOSE.store(cfg.verbose, Ordering::Relaxed);
    crate::decay::configure(&cfg);
    if crate::os::os_page_size() > PAGE_BYTES {
        return FAILED;
    }
    if !HEAP.init(HEAP_RESERVE_BYTES) {
        return FAILED;
    }
    if crate::cpu_cache::init(&cfg) {
        if cfg.stats {
            READY_COUNTING
        } else {
            READY_CACHE
        }
    } else {
        READY_CENTRAL
    }
}

/// Work done once after the state is ready (these calls may allocate
/// through libc, which is fine now).
fn after_init() {
    if CONFIG_VERBOSE.load(Ordering::Relaxed) {
        let mut m = MsgBuf::new();
        m.str("rseq-malloc: mode=")
            .str(mode_name())
            .str(" index=")
            .str(index_name())
            .str(" cpus=")
            .dec(rseq_sys::registration::possible_cpus() as u64)
            .str("\n");
        m.flush_stderr();
    }
    if CONFIG_STATS.load(Ordering::Relaxed) {
        extern "C" fn at_exit() {
            crate::stats::print_stats();
        }
        // SAFETY: registering a plain extern "C" fn with no captured state.
        unsafe { libc::atexit(at_exit) };
    }
}

/// True once initialised with per-CPU caches.
pub(crate) fn cache_ready() -> bool {
    matches!(STATE.load(Ordering::Relaxed), READY_CACHE | READY_COUNTING)
}

/// "rseq-glibc", "rseq-own" or "cmpxchg" (the mode in force; before init,
/// what init would choose by default).
pub fn mode_name() -> &'static str {
    ensure_init();
    if cache_ready() && SLABS.discipline() == Discipline::Rseq {
        match rseq_sys::registration::process_mode() {
            rseq_sys::registration::Mode::Glibc => "rseq-glibc",
            rseq_sys::registration::Mode::Own => "rseq-own",
            rseq_sys::registration::Mode::Unavailable => "cmpxchg",
        }
    } else {
        "cmpxchg"
    }
}

/// "cpu" or "cid": how per-CPU caches are indexed.
pub fn index_name() -> &'static str {
    ensure_init();
    if cache_ready() && SLABS.discipline() == Discipline::Rseq && SLABS.index() == Index::Cid {
        "cid"
    } else {
        "cpu"
    }
}

// ---------------------------------------------------------------- small

/// Allocates one object of `class`. Null only when out of memory.
#[inline(always)]
pub(crate) fn malloc_class(class: SizeClass) -> *mut u8 {
    if STATE.load(Ordering::Relaxed) == READY_CACHE {
        let p = SLABS.pop_fast(class.index());
        if !p.is_null() {
            return p;
        }
        return malloc_fast_miss(class);
    }
    malloc_not_fast(class)
}

/// The fast pop missed: the full `pop` fixes what it can (registers the
/// thread, initialises the region) before the central lists refill.
#[cold]
#[inline(never)]
fn malloc_fast_miss(class: SizeClass) -> *mut u8 {
    match SLABS.pop(class.index()) {
        Ok(p) => p.as_ptr(),
        Err(e) => malloc_miss(class, e),
    }
}

/// Everything but the plain fast path: not yet initialised, counting hits
/// (`stats=1`), or no per-CPU caches.
#[cold]
#[inline(never)]
fn malloc_not_fast(class: SizeClass) -> *mut u8 {
    if STATE.load(Ordering::Relaxed) == READY_COUNTING {
        return match SLABS.pop(class.index()) {
            Ok(p) => {
                FAST_HITS.fetch_add(1, Ordering::Relaxed);
                p.as_ptr()
            }
            Err(e) => malloc_miss(class, e),
        };
    }
    if !ensure_init() {
        if STATE.load(Ordering::Relaxed) == FAILED {
            return ptr::null_mut();
        }
        let size = class.size_bytes();
        return boot_alloc(size, size & size.wrapping_neg());
    }
    if cache_ready() {
        return malloc_not_fast_ready(class);
    }
    central_pop_one(class)
}

/// First allocation after this thread initialised: retry with the state set.
fn malloc_not_fast_ready(class: SizeClass) -> *mut u8 {
    if STATE.load(Ordering::Relaxed) == READY_COUNTING {
        return malloc_not_fast(class);
    }
    malloc_class(class)
}

fn central_pop_one(class: SizeClass) -> *mut u8 {
    SLOW_DIRECT_OPS.fetch_add(1, Ordering::Relaxed);
    let mut one = [ptr::null_mut(); 1];
    if CENTRAL.get(class).pop_batch(&HEAP, class, &mut one) == 1
        || (reclaim() && CENTRAL.get(class).pop_batch(&HEAP, class, &mut one) == 1)
    {
        one[0]
    } else {
        ptr::null_mut()
    }
}

/// Out of heap: take back the free objects that per-CPU caches and
/// transfer stacks hold (their spans may become free), so a retry can
/// succeed. True if anything was drained or flushed. Rate-limited to one
/// reclaim at a time.
#[cold]
#[inline(never)]
fn reclaim() -> bool {
    static BUSY: AtomicBool = AtomicBool::new(false);
    if BUSY.swap(true, Ordering::Acquire) {
        return false;
    }
    let before = HEAP.stats().free_bytes;
    if cache_ready() {
        crate::cpu_cache::drain_all();
    }
    for class in SizeClass::all() {
        CENTRAL.get(class).flush(&HEAP, class);
    }
    let after = HEAP.stats().free_bytes;
    BUSY.store(false, Ordering::Release);
    after > before
}

#[cold]
#[inline(never)]
fn malloc_miss(class: SizeClass, e: OpError) -> *mut u8 {
    let misses = FAST_MISSES.fetch_add(1, Ordering::Relaxed);
    crate::decay::tick();
    let period = crate::cpu_cache::idle_scan_period();
    if misses % period == period - 1 {
        crate::cpu_cache::drain_idle_regions();
    }
    if e != OpError::Empty {
        return central_pop_one(class);
    }
    let mut buf = [ptr::null_mut(); 32];
    let want = class.batch().clamp(1, buf.len());
    let mut n = CENTRAL.get(class).pop_batch(&HEAP, class, &mut buf[..want]);
    if n == 0 && reclaim() {
        n = CENTRAL.get(class).pop_batch(&HEAP, class, &mut buf[..want]);
    }
    if n == 0 {
        return ptr::null_mut();
    }
    let result = buf[n - 1];
    let rest = &buf[..n - 1];
    if !rest.is_empty() {
        let pushed = SLABS.push_batch(class.index(), rest).unwrap_or(0);
        if pushed < rest.len() {
            // SAFETY: these objects came from the central list just now and
            // are owned by nobody else.
            unsafe { CENTRAL.get(class).push_batch(&HEAP, class, &rest[pushed..]) };
        }
    }
    result
}

/// Frees an object of `class`.
///
/// # Safety
/// `p` is a live object of `class` from this allocator; it is not used again.
#[inline(always)]
pub(crate) unsafe fn free_class(p: NonNull<u8>, class: SizeClass) {
    if STATE.load(Ordering::Relaxed) == READY_CACHE {
        if SLABS.push_fast(class.index(), p) {
            return;
        }
        // SAFETY: forwarded contract.
        return unsafe { free_fast_miss(p, class) };
    }
    // SAFETY: forwarded contract.
    unsafe { free_not_fast(p, class) }
}

/// The fast push missed: the full `push` fixes what it can before the
/// overflow goes to the central lists.
///
/// # Safety
/// As for `free_class`.
#[cold]
#[inline(never)]
unsafe fn free_fast_miss(p: NonNull<u8>, class: SizeClass) {
    match SLABS.push(class.index(), p) {
        Ok(()) => {}
        // SAFETY: forwarded contract.
        Err(e) => unsafe { free_miss(p, class, e) },
    }
}

/// Everything but the plain fast path: counting mode, no caches, not
/// initialised.
///
/// # Safety
/// As for `free_class`.
#[cold]
#[inline(never)]
unsafe fn free_not_fast(p: NonNull<u8>, class: SizeClass) {
    if cache_ready() && !is_boot(p.as_ptr() as usize) {
        match SLABS.push(class.index(), p) {
            Ok(()) => return,
            // SAFETY: forwarded contract.
            Err(e) => return unsafe { free_miss(p, class, e) },
        }
    }
    // SAFETY: forwarded contract.
    unsafe { free_central(p, class) }
}

/// Frees straight into the central list (bypassing the per-CPU cache).
///
/// # Safety
/// As for `free_class`.
unsafe fn free_central(p: NonNull<u8>, class: SizeClass) {
    if is_boot(p.as_ptr() as usize) {
        return;
    }
    SLOW_DIRECT_OPS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: forwarded contract: a free object of `class`.
    unsafe { CENTRAL.get(class).push_batch(&HEAP, class, &[p.as_ptr()]) };
}

#[cold]
#[inline(never)]
unsafe fn free_miss(p: NonNull<u8>, class: SizeClass, e: OpError) {
    if e != OpError::Full {
        // SAFETY: forwarded contract.
        return unsafe { free_central(p, class) };
    }
    // Overflow: move a batch out of this CPU's cache, then free `p` with it.
    let mut buf = [ptr::null_mut(); 33];
    let want = class.batch().clamp(1, 32);
    let n = SLABS
        .pop_batch(class.index(), &mut buf[..want])
        .unwrap_or(0);
    buf[n] = p.as_ptr();
    // SAFETY: the popped objects were free objects in our cache, now owned by
    // us; `p` is free per the contract.
    unsafe { CENTRAL.get(class).push_batch(&HEAP, class, &buf[..n + 1]) };
}

// ---------------------------------------------------------------- large/huge

/// Allocates a block that is not small (see the module doc).
#[cold]
#[inline(never)]
pub(crate) fn alloc_big(size: usize, align: usize, zero: bool) -> *mut u8 {
    if !align.is_power_of_two()
        || size
            .checked_add(align)
            .is_none_or(|n| n > isize::MAX as usize)
    {
        return ptr::null_mut();
    }
    if !ensure_init() {
        if STATE.load(Ordering::Relaxed) == FAILED || size > BOOT_BYTES / 4 {
            return ptr::null_mut();
        }
        return boot_alloc(size, align);
    }
    crate::decay::tick();
    let Some(need) = size.checked_add(align) else {
        return ptr::null_mut();
    };
    if need >= HUGE_THRESHOLD_BYTES {
        return HUGE.alloc(size, align.max(crate::os::OS_PAGE_BYTES), zero);
    }
    let npages = size.max(1).div_ceil(PAGE_BYTES);
    let mut got = HEAP.alloc_span(npages, align, LARGE, 0);
    if got.is_none() && reclaim() {
        got = HEAP.alloc_span(npages, align, LARGE, 0);
    }
    match got {
        Some((s, zeroed)) => {
            let p = HEAP.span_addr(s) as *mut u8;
            if zero && !zeroed {
                // SAFETY: the span's pages are committed and ours.
                unsafe { p.write_bytes(0, npages << PAGE_SHIFT) };
            }
            p
        }
        None => ptr::null_mut(),
    }
}

/// What a pointer given by the user turned out to be.
pub(crate) enum Block<'a> {
    /// A small object of a class.
    Small(SizeClass),
    /// A large span starting at the pointer.
    Large(&'a crate::span::Span),
    /// A huge mapping of this many bytes.
    Huge(usize),
    /// A bootstrap block (never freed).
    Boot,
}

/// Classifies `p` (non-null) or aborts with `who` if it is not a live block
/// start of ours (where detectable).
#[inline]
pub(crate) fn classify(p: *mut u8, who: &str) -> Block<'static> {
    let addr = p as usize;
    if let Some(page) = HEAP.map.page_of(addr) {
        let entry = HEAP.map.get_raw(page);
        let (class_idx, page_in_span) = PageMap::small_of(entry);
        if let Some(class) = SizeClass::from_index(class_idx) {
            // A page of small objects: the entry alone gives the class and
            // the span start, so validate the offset without the record.
            let start = HEAP.map.page_addr(page - page_in_span);
            let off = addr - start;
            if class.index_of_offset(off) * class.size_bytes() == off {
                return Block::Small(class);
            }
            util::invalid_pointer(who, p)
        }
        return classify_span(p, entry as u32, who);
    }
    classify_outside(p, who)
}

/// The rest of `classify` for pages that are not small-object pages.
#[inline(never)]
fn classify_span(p: *mut u8, id: u32, who: &str) -> Block<'static> {
    let addr = p as usize;
    if id != 0 {
        let s = HEAP.record(id);
        let start = HEAP.map.page_addr(s.start());
        match s.state() {
            SMALL => {
                if let Some(class) = SizeClass::from_index(s.class() as usize) {
                    let off = addr.wrapping_sub(start);
                    if off < s.pages() << PAGE_SHIFT
                        && class.index_of_offset(off) * class.size_bytes() == off
                    {
                        return Block::Small(class);
                    }
                }
            }
            LARGE if addr == start => return Block::Large(s),
            _ => {}
        }
    }
    util::invalid_pointer(who, p)
}

#[cold]
#[inline(never)]
fn classify_outside(p: *mut u8, who: &str) -> Block<'static> {
    if is_boot(p as usize) {
        return Block::Boot;
    }
    match HUGE.len_of(p as usize) {
        Some(len) => Block::Huge(len),
        None => util::invalid_pointer(who, p),
    }
}

/// Frees any block given by pointer.
///
/// # Safety
/// `p` is null, or a block from this allocator not used afterwards (checked
/// where detectable: otherwise abort with `who`).
pub(crate) unsafe fn free_any(p: *mut u8, who: &str) {
    let Some(nn) = NonNull::new(p) else { return };
    match classify(p, who) {
        // SAFETY: classify validated that p is an object start of `class`.
        Block::Small(class) => unsafe { free_class(nn, class) },
        // SAFETY: the caller owns the block and gives it up.
        Block::Large(s) => unsafe { HEAP.free_span(s) },
        Block::Huge(_) => {
            // SAFETY: the caller owns the block and gives it up.
            if !unsafe { HUGE.free(p as usize) } {
                util::invalid_pointer(who, p);
            }
        }
        Block::Boot => {}
    }
}

/// Usable bytes of a live block.
pub(crate) fn usable_of(p: *mut u8, who: &str) -> usize {
    match classify(p, who) {
        Block::Small(c) => c.size_bytes(),
        Block::Large(s) => s.pages() << PAGE_SHIFT,
        Block::Huge(len) => len,
        Block::Boot => 0,
    }
}

// ---------------------------------------------------------------- entry points

/// `malloc` with alignment: the object for (size, align), null on OOM or on
/// an impossible request. The common case (alignment <= 16, small size)
/// makes no call before the per-CPU pop; everything else is a tail call.
#[inline(always)]
pub(crate) fn alloc(size: usize, align: usize) -> *mut u8 {
    match size_class::class_for_common(size, align) {
        Some(c) => malloc_class(c),
        None => alloc_uncommon(size, align),
    }
}

#[inline(never)]
fn alloc_uncommon(size: usize, align: usize) -> *mut u8 {
    match size_class::class_for(size, align) {
        Some(c) => malloc_class(c),
        None => alloc_big(size, align, false),
    }
}

/// Zeroed allocation; skips the memset for memory fresh from the OS.
pub(crate) fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    match size_class::class_for(size, align) {
        Some(c) => {
            let p = malloc_class(c);
            if !p.is_null() {
                // SAFETY: p is a fresh object of at least `size` bytes.
                unsafe { p.write_bytes(0, size) };
            }
            p
        }
        None => alloc_big(size, align, true),
    }
}

/// Frees with a size and alignment hint (GlobalAlloc::dealloc, free_sized).
///
/// # Safety
/// `p` is a live block allocated with (size, align) (or a size/align that
/// maps to the same class), not used afterwards.
#[inline(always)]
pub(crate) unsafe fn dealloc(p: *mut u8, size: usize, align: usize) {
    if let (Some(c), Some(nn)) = (size_class::class_for_common(size, align), NonNull::new(p)) {
        debug_assert!(
            matches!(classify(p, "free_sized()"), Block::Small(k) if k == c) || is_boot(p as usize)
        );
        // SAFETY: per the contract p is a live object of class `c`.
        return unsafe { free_class(nn, c) };
    }
    // SAFETY: forwarded contract.
    unsafe { dealloc_uncommon(p, size, align) }
}

/// `dealloc` for large alignments and sizes.
///
/// # Safety
/// As for `dealloc`.
#[inline(never)]
unsafe fn dealloc_uncommon(p: *mut u8, size: usize, align: usize) {
    if let (Some(c), Some(nn)) = (size_class::class_for(size, align), NonNull::new(p)) {
        debug_assert!(
            matches!(classify(p, "free_sized()"), Block::Small(k) if k == c) || is_boot(p as usize)
        );
        // SAFETY: per the contract p is a live object of class `c`.
        return unsafe { free_class(nn, c) };
    }
    // SAFETY: forwarded contract.
    unsafe { free_any(p, "free()") }
}

/// Reallocation keeping `align`. In place when the class does not change,
/// when a large block keeps its page count or can shrink or grow into the
/// free pages after it, or through `mremap` for a huge block whose
/// alignment allows it.
///
/// # Safety
/// `p` is a live block of this allocator allocated with alignment `align`.
pub(crate) unsafe fn realloc(p: *mut u8, new_size: usize, align: usize, who: &str) -> *mut u8 {
    let old_usable = match classify(p, who) {
        Block::Small(c) => {
            if size_class::class_for(new_size, align) == Some(c) {
                return p;
            }
            c.size_bytes()
        }
        Block::Large(s) => {
            let old_pages = s.pages();
            if size_class::class_for(new_size, align).is_none()
                && new_size
                    .checked_add(align)
                    .is_some_and(|n| n < HUGE_THRESHOLD_BYTES)
            {
                let new_pages = new_size.div_ceil(PAGE_BYTES).max(1);
                // SAFETY: the caller owns the live block `s`.
                if new_pages == old_pages || unsafe { HEAP.resize_large(s, new_pages) } {
                    return p;
                }
            }
            old_pages << PAGE_SHIFT
        }
        Block::Huge(len) => {
            let stays_huge = size_class::class_for(new_size, align).is_none()
                && new_size
                    .checked_add(align)
                    .is_some_and(|n| n >= HUGE_THRESHOLD_BYTES);
            if stays_huge && align <= crate::os::OS_PAGE_BYTES {
                // SAFETY: the caller owns the block; on success only the new
                // address is used.
                let q = unsafe { HUGE.resize(p as usize, new_size) };
                if !q.is_null() {
                    return q;
                }
            }
            len
        }
        Block::Boot => BOOT_BYTES - (p as usize - BOOT.0.get() as usize),
    };
    let q = alloc(new_size, align);
    if q.is_null() {
        return q;
    }
    // SAFETY: both blocks are live and distinct; we copy what both hold.
    unsafe { ptr::copy_nonoverlapping(p, q, old_usable.min(new_size)) };
    // SAFETY: the old block is ours to free now.
    unsafe { free_any(p, who) };
    q
}

// ---------------------------------------------------------------- trim, fork

/// Drains every per-CPU cache into the central lists, flushes the central
/// transfer stacks, and releases all free pages. True if memory was released.
pub(crate) fn trim() -> bool {
    if !ensure_init() {
        return false;
    }
    if cache_ready() {
        crate::cpu_cache::drain_all();
    }
    for class in SizeClass::all() {
        CENTRAL.get(class).flush(&HEAP, class);
    }
    let heap = HEAP.release_all();
    heap + HUGE.release_all() > 0
}

/// Takes every allocator lock (before `fork`). Re-entrant for the calling
/// thread so that it is harmless to register the handlers twice.
pub(crate) fn fork_prepare() {
    let me = util::gettid();
    if FORK_OWNER.load(Ordering::Relaxed) == me {
        FORK_DEPTH.fetch_add(1, Ordering::Relaxed);
        return;
    }
    FORK_LOCK.lock();
    FORK_OWNER.store(me, Ordering::Relaxed);
    FORK_DEPTH.store(1, Ordering::Relaxed);
    crate::cpu_cache::DRAIN_LOCK.lock();
    for c in CENTRAL.all().iter() {
        c.raw_lock().lock();
    }
    HEAP.raw_lock().lock();
    HUGE.raw_lock().lock();
}

fn fork_release() {
    if FORK_DEPTH.fetch_sub(1, Ordering::Relaxed) != 1 {
        return;
    }
    // SAFETY: this thread took all these locks in fork_prepare (or is the
    // only thread of the child, whose parent thread took them).
    unsafe {
        HUGE.raw_lock().unlock();
        HEAP.raw_lock().unlock();
        for c in CENTRAL.all().iter().rev() {
            c.raw_lock().unlock();
        }
        crate::cpu_cache::DRAIN_LOCK.unlock();
        FORK_OWNER.store(0, Ordering::Relaxed);
        FORK_LOCK.unlock();
    }
}

/// After `fork`, in the parent.
pub(crate) fn fork_parent() {
    fork_release();
}

/// After `fork`, in the child.
///
/// In CAS mode a per-CPU stack lock (rseq-sys's header lock word) may have
/// been held by a thread that does not exist in the child; such a stack
/// would stay locked forever and a drain of it would never end. rseq-sys has
/// no fork hook to reset those words, so the child stops using the per-CPU
/// caches (objects in them are left behind) and allocates through the
/// central lists. In rseq mode the stacks have no locks; the region lock is
/// only taken by drains (serialised with fork by `DRAIN_LOCK`) and by a
/// region's one-time initialisation.
pub(crate) fn fork_child() {
    if FORK_DEPTH.load(Ordering::Relaxed) == 1
        && cache_ready()
        && SLABS.discipline() == Discipline::Cas
    {
        STATE.store(READY_CENTRAL, Ordering::Relaxed);
    }
    crate::decay::fork_child();
    fork_release();
}

/// Whether `p` points inside our heap, a huge block or the bootstrap arena.
pub(crate) fn owns(p: *const u8) -> bool {
    let addr = p as usize;
    if HEAP.map.page_of(addr).is_some() || is_boot(addr) {
        return true;
    }
    // Huge blocks: the pointer may be interior; only starts are indexed, so
    // check the start of the enclosing OS page run is not known. A linear
    // answer would need a scan: accept starts only.
    HUGE.len_of(addr & !(crate::os::OS_PAGE_BYTES - 1))
        .is_some()
}

const _: () = assert!(MAX_SMALL_BYTES < HUGE_THRESHOLD_BYTES);

/// Checks the invariants of every shared structure (debug builds).
pub(crate) fn check_invariants() {
    if !cfg!(debug_assertions) || !ensure_init() {
        return;
    }
    HEAP.check_invariants();
    for c in SizeClass::all() {
        CENTRAL.get(c).check_invariants(&HEAP, c);
    }
    HUGE.check_invariants();
}

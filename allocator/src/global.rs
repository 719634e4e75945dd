//! The front door's state: process-wide statics, lazy initialisation, the
//! bootstrap arena, block classification (`classify`), the paths for blocks
//! that are not small (large spans, huge mappings), `realloc`, `trim` and
//! fork handling. The small-object fast paths live in `fast.rs` (with their
//! call tree and cost) and their slow paths in `refill.rs`.
//!
//! Block kinds, by request:
//! - small: size <= 256 KiB and alignment <= page (8 KiB): size classes;
//! - large: up to `HUGE_THRESHOLD_BYTES` (size plus alignment slack): a span
//!   of whole pages from the page heap;
//! - huge: beyond, a direct mapping.

use crate::central::CentralLists;
use crate::cpu_cache::SLABS;
use crate::huge::HugeTable;
use crate::page_heap::PageHeap;
use crate::pagemap::PageMap;
use crate::size_class::{self, SizeClass, MAX_SMALL_BYTES, PAGE_BYTES, PAGE_SHIFT};
use crate::span::{SpanId, SpanState};
use crate::util::{self, MsgBuf};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use rseq_sys::percpu::{Discipline, Index};

/// Requests of at least this many bytes (size + alignment slack) are mapped
/// directly.
pub const HUGE_THRESHOLD_BYTES: usize = 1 << 20;
/// What `malloc` guarantees.
pub const MIN_ALIGN: usize = 16;

atomic_state! {
    /// The allocator's initialisation state.
    enum InitState in AtomicInitState {
        /// Nothing done yet.
        Uninit = 0,
        /// A thread (`INIT_TID`) is initialising.
        Initializing = 1,
        /// Ready, per-CPU caches in use.
        ReadyCache = 2,
        /// Ready, no per-CPU caches (their setup failed): central lists only.
        ReadyCentral = 3,
        /// Init failed (an OS page larger than ours): every allocation
        /// returns null.
        Failed = 4,
        /// Ready, per-CPU caches in use, fast-path hits counted (`stats=1`):
        /// the fast path sees a state other than `ReadyCache` and takes the
        /// cold path that counts, so the default fast path carries no
        /// counter at all.
        ReadyCounting = 5,
    }
}
use InitState::*;

/// Initialisation state.
static STATE: AtomicInitState = AtomicInitState::new(Uninit);
static INIT_TID: AtomicU32 = AtomicU32::new(0);
pub(crate) static HEAP: PageHeap = PageHeap::new();
pub(crate) static CENTRAL: CentralLists = CentralLists::new();
pub(crate) static HUGE: HugeTable = HugeTable::new();
static CONFIG_STATS: AtomicBool = AtomicBool::new(false);
static CONFIG_VERBOSE: AtomicBool = AtomicBool::new(false);
pub(crate) static FAST_HITS: AtomicU64 = AtomicU64::new(0);
pub(crate) static FAST_MISSES: AtomicU64 = AtomicU64::new(0);
pub(crate) static SLOW_DIRECT_OPS: AtomicU64 = AtomicU64::new(0);

// ---------------------------------------------------------------- bootstrap

/// Memory for allocations made while this thread initialises the allocator
/// (e.g. libc calling malloc from inside our init under LD_PRELOAD). Never
/// freed; `free` of such a block is a no-op. Cache-line aligned, not
/// page aligned: `boot_alloc` honours any alignment itself, and a page
/// alignment would align the library's whole `.bss`, which costs up to a
/// page of address space at its start and another before the arena
/// (`ffi_as_limit` counts them).
const BOOT_BYTES: usize = 64 << 10;
#[repr(C, align(64))]
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
/// or when initialisation failed (then `STATE == Failed`).
#[cold]
#[inline(never)]
pub(crate) fn ensure_init() -> bool {
    loop {
        match STATE.load(Ordering::Acquire) {
            ReadyCache | ReadyCentral | ReadyCounting => return true,
            Failed => return false,
            Initializing => {
                if INIT_TID.load(Ordering::Relaxed) == util::gettid() {
                    return false;
                }
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
            Uninit => {
                if STATE
                    .compare_exchange(Uninit, Initializing, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    INIT_TID.store(util::gettid(), Ordering::Relaxed);
                    let st = do_init();
                    STATE.store(st, Ordering::Release);
                    if st == ReadyCache {
                        match SLABS.fast_params() {
                            Some((base, off, idx)) => crate::fast::FAST.enable(base, off, idx),
                            None => crate::fast::FAST.enable_cas(),
                        }
                    }
                    if st != Failed {
                        after_init();
                    }
                    return st != Failed;
                }
            }
        }
    }
}

fn do_init() -> InitState {
    crate::fast::FAST.set_key(crate::fast::make_key());
    let cfg = crate::config::from_env();
    CONFIG_STATS.store(cfg.stats, Ordering::Relaxed);
    CONFIG_VERBOSE.store(cfg.verbose, Ordering::Relaxed);
    crate::decay::configure(&cfg);
    if crate::os::os_page_size() > PAGE_BYTES {
        return Failed;
    }
    if !HEAP.init(cfg.thp == crate::config::ThpChoice::Auto) {
        return Failed;
    }
    if crate::cpu_cache::init(&cfg) {
        if cfg.stats {
            ReadyCounting
        } else {
            ReadyCache
        }
    } else {
        ReadyCentral
    }
}

/// Work done once after the state is ready (these calls may allocate
/// through libc, which is fine now).
fn after_init() {
    // One line per program: valgrind's launcher processes are not the
    // program (see `is_valgrind_launcher`).
    if CONFIG_VERBOSE.load(Ordering::Relaxed) && !util::is_valgrind_launcher() {
        let mut m = MsgBuf::new();
        m.str("rseq-malloc: mode=")
            .str(mode_name())
            .str(" index=")
            .str(index_name())
            .str(" cpus=")
            .dec(rseq_sys::registration::possible_cpus() as u64)
            .str("\n");
        m.flush_stderr();
        crate::config::print_options(&crate::config::in_effect());
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
#[inline(always)]
pub(crate) fn cache_ready() -> bool {
    matches!(STATE.load(Ordering::Relaxed), ReadyCache | ReadyCounting)
}

/// "rseq-glibc", "rseq-own" or "cmpxchg" (the mode in force; before init,
/// what init would choose by default).
pub fn mode_name() -> &'static str {
    ensure_init();
    if cache_ready() && SLABS.discipline() == Discipline::Rseq {
        rseq_sys::registration::process_mode().name()
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

/// True when `stats=1` counts fast-path hits (the fast path is off then).
pub(crate) fn counting() -> bool {
    STATE.load(Ordering::Relaxed) == ReadyCounting
}

/// A bootstrap block for an object of `class` (the initialising thread,
/// re-entered), or null when initialisation failed.
pub(crate) fn boot_alloc_class(class: SizeClass) -> *mut u8 {
    if STATE.load(Ordering::Relaxed) == Failed {
        return ptr::null_mut();
    }
    let size = class.size_bytes();
    boot_alloc(size, size & size.wrapping_neg())
}

/// Debug check of a sized free: `p` is null, a bootstrap block or an
/// object start of `class`.
pub(crate) fn debug_is_small_of(p: *mut u8, class: SizeClass) -> bool {
    p.is_null()
        || is_boot(p as usize)
        || matches!(classify(p, "free_sized()"), Block::Small(k) if k == class)
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
        if STATE.load(Ordering::Relaxed) == Failed || size > BOOT_BYTES / 4 {
            return ptr::null_mut();
        }
        return boot_alloc(size, align);
    }
    crate::decay::tick();
    let Some(need) = size.checked_add(align) else {
        return ptr::null_mut();
    };
    crate::stats::note_peaks();
    if need >= HUGE_THRESHOLD_BYTES {
        let p = HUGE.alloc(size, align.max(crate::os::OS_PAGE_BYTES), zero);
        if p.is_null() {
            // Under an address-space limit, free heap memory may hold the
            // space: return cached objects to the heap, unmap free spans.
            crate::refill::reclaim();
            if HEAP.give_back_address_space() > 0 {
                return HUGE.alloc(size, align.max(crate::os::OS_PAGE_BYTES), zero);
            }
        }
        return p;
    }
    let npages = size.max(1).div_ceil(PAGE_BYTES);
    let mut got = HEAP.alloc_span(npages, align, SpanState::Large, 0);
    if got.is_none() && crate::refill::reclaim() {
        got = HEAP.alloc_span(npages, align, SpanState::Large, 0);
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
    if let Some((_, entry)) = HEAP.map.lookup(addr) {
        let class_idx = PageMap::entry_class(entry);
        if let Some(class) = SizeClass::from_index(class_idx) {
            // A page of small objects: the entry alone gives the class and
            // the offset from the span start.
            if crate::fast::FAST.is_object_start(class_idx, PageMap::small_offset(entry, addr)) {
                return Block::Small(class);
            }
            util::invalid_pointer(who, p);
        }
        return classify_span(p, SpanId::from_entry(entry), who);
    }
    classify_outside(p, who)
}

/// The rest of `classify` for pages that are not small-object pages.
#[inline(never)]
fn classify_span(p: *mut u8, id: SpanId, who: &str) -> Block<'static> {
    let addr = p as usize;
    if id.is_some() {
        let s = HEAP.record(id);
        let start = HEAP.map.page_addr(s.start());
        match s.state() {
            SpanState::Small => {
                if let Some(class) = SizeClass::from_index(s.class() as usize) {
                    let off = addr.wrapping_sub(start);
                    if off < s.pages() << PAGE_SHIFT
                        && crate::fast::FAST.is_object_start(class.index(), off)
                    {
                        return Block::Small(class);
                    }
                }
            }
            SpanState::Large if addr == start => return Block::Large(s),
            _ => {}
        }
    } else {
        // No span here (a leaf covers the GiB but not this page): maybe a
        // huge block mapped next to the heap.
        return classify_outside(p, who);
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
    let _errno = crate::util::ErrnoGuard::new(); // C free keeps errno
    let Some(nn) = NonNull::new(p) else { return };
    match classify(p, who) {
        // SAFETY: classify validated that p is an object start of `class`.
        Block::Small(class) => unsafe { crate::fast::free_known(nn.as_ptr(), class, "free()") },
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

/// `malloc` with alignment (see `fast::alloc`).
#[inline(always)]
pub(crate) fn alloc(size: usize, align: usize) -> *mut u8 {
    crate::fast::alloc(size, align)
}

/// Zeroed allocation; skips the memset for memory fresh from the OS.
pub(crate) fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    match size_class::class_for(size, align) {
        Some(c) => {
            let p = crate::fast::malloc_small(c);
            if !p.is_null() {
                // SAFETY: p is a fresh object of at least `size` bytes.
                unsafe { p.write_bytes(0, size) };
            }
            p
        }
        None => alloc_big(size, align, true),
    }
}

/// A sized free whose size must match the block (`free_sized`,
/// `free_aligned_sized`): the page map decides, the size is checked
/// against it, and a mismatch aborts instead of corrupting the heap.
///
/// # Safety
/// `p` is null or a live block of this allocator, not used afterwards.
pub(crate) unsafe fn free_sized_checked(p: *mut u8, size: usize, align: usize, who: &'static str) {
    if p.is_null() {
        return;
    }
    let expect = size_class::class_for(size, align);
    match classify(p, who) {
        Block::Small(c) => {
            if expect != Some(c) {
                util::size_mismatch(who, p, size, c.size_bytes())
            }
            // SAFETY: classify validated that p is an object start of `c`.
            unsafe { crate::fast::free_known(p, c, who) }
        }
        Block::Large(s) => {
            let bytes = s.pages() << PAGE_SHIFT;
            if expect.is_some() || size > bytes || size.div_ceil(PAGE_BYTES) != s.pages() {
                util::size_mismatch(who, p, size, bytes)
            }
            // SAFETY: the caller owns the block and gives it up.
            unsafe { HEAP.free_span(s) }
        }
        Block::Huge(len) => {
            if expect.is_some() || size > len {
                util::size_mismatch(who, p, size, len)
            }
            // SAFETY: the caller owns the block and gives it up.
            if !unsafe { HUGE.free(p as usize) } {
                util::invalid_pointer(who, p);
            }
        }
        Block::Boot => {}
    }
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
            // SAFETY: an object start: at least 8 bytes, 8-aligned.
            let w = unsafe { p.cast::<u64>().read() };
            if crate::fast::is_marked(w, crate::fast::FAST.key()) {
                crate::double_free::check(p, c, "realloc()");
            }
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

/// Takes back the free objects the caches hold, for `trim` and
/// `refill::reclaim`: the caller's own magazine (CAS mode; other threads'
/// are theirs), every per-CPU cache (drained into the central lists), and
/// the central transfer stacks (flushed to their spans).
pub(crate) fn empty_caches() {
    crate::magazine::flush_mine();
    if cache_ready() {
        crate::cpu_cache::drain_all_into(&CENTRAL, &HEAP);
    }
    for class in SizeClass::all() {
        CENTRAL.get(class).flush(&HEAP, class);
    }
}

/// Empties the caches (`empty_caches`) and releases all free pages. True
/// if memory was released.
pub(crate) fn trim() -> bool {
    if !ensure_init() {
        return false;
    }
    empty_caches();
    let heap = HEAP.release_all();
    heap + HUGE.release_all() > 0
}

/// `pthread_atfork` prepare handler (the protocol and its argument are in
/// `fork.rs`).
pub(crate) fn fork_prepare() {
    crate::fork::prepare();
}

/// After `fork`, in the parent.
pub(crate) fn fork_parent() {
    crate::fork::parent();
}

/// After `fork`, in the child.
pub(crate) fn fork_child() {
    crate::fork::child();
}

/// In the child of `fork`: stop using the per-CPU caches, whose locks or
/// drains may belong to a frame or thread that will never finish them
/// (their objects are left behind; the central lists serve the child).
pub(crate) fn fork_child_abandon_caches() {
    if cache_ready() {
        STATE.store(ReadyCentral, Ordering::Relaxed);
        crate::fast::FAST.disable();
    }
}

/// In the child of `fork`: if a thread (or an interrupted frame) was
/// initialising the allocator, that initialisation never completes here;
/// make the child the initialising thread so that it is served from the
/// bootstrap arena instead of waiting forever.
pub(crate) fn fork_child_adopt_init() {
    if STATE.load(Ordering::Relaxed) == Initializing {
        INIT_TID.store(util::gettid(), Ordering::Relaxed);
    }
}

/// Whether `p` points inside our heap, a huge block or the bootstrap arena.
pub(crate) fn owns(p: *const u8) -> bool {
    let addr = p as usize;
    if HEAP.map.lookup(addr).is_some_and(|(_, e)| e != 0) || is_boot(addr) {
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

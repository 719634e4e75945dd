//! The front end: every fast path of malloc and free, on one screen.
//!
//! ```text
//! malloc(size)              C ABI, raw::malloc          (ffi: malloc)
//! └─ size <= 4 KiB ? class = FAST.t16[(size+15)>>4]  : refill::malloc_big  (tail call)
//!    └─ malloc_small(class)
//!       ├─ FAST.base != null ? (the rseq path is on)   : refill::malloc_slow (tail call)
//!       ├─ p = pop_or_null(region of this cpu/cid)     : null -> refill::malloc_slow
//!       └─ byte 7 of p = 0 (clear the free mark); return p
//! alloc(size, align)        GlobalAlloc::alloc
//! └─ align <= 8 : SMALL_LOOKUP[(size+7)>>3] | align == 16 : t16 | else refill::alloc_uncommon
//!    (SMALL_LOOKUP is a `const`: a constant size folds to its class)
//! free(p)                   C ABI, raw::free
//! ├─ e, class = page map entry of p, and its class byte loaded on its own
//! │  (the first leaf's GiB: one load after a shift, no root; see `pagemap`)
//! │                                         : free_beyond_first_leaf (root + leaf;
//! │                                           tail call, then as below)
//! ├─ p is an object start of class e.class (offset from the span
//! │  start from e; one multiplication by FAST.starts[0][class], one
//! │  compare with FAST.starts[1][class]; class 0 (not ours, null) fails it)
//! │                                                     : global::free_any
//! └─ free_known(p, class)
//!    ├─ FAST.base != null, byte 7 of p != MARK ?        : refill::free_small_slow
//!    ├─ p[0] = FAST.key (the free mark)
//!    └─ push_or_miss(region of this cpu/cid, p)         : refill::free_overflow
//! dealloc(p, size, align)   GlobalAlloc::dealloc: class from the size, then free_known
//! ```
//!
//! Cost (release build; the golden table `ffi/tests/golden/fastpath.txt` is the
//! source of truth, checked by `ffi/tests/golden_fastpath.rs`): the base
//! the section needs is also the readiness check (null: off); `FAST` is
//! reached RIP-relative, never through the GOT, also from
//! `librseq_malloc.so`; no stack frame, no spill; every miss is a tail call.
//!
//! The free mark (double-free detection, see `double_free.rs`): a free
//! object's first word holds `FAST.key` (a per-process random value with
//! the low 24 bits clear and the top byte `MARK`, 0xf7, which no canonical
//! user-space pointer, small integer or UTF-8 text has) or, on a span's
//! free list, the key with a link in the low 24 bits. Freeing writes the
//! word; allocation clears its top byte; `free` tests the top byte alone
//! (one-byte accesses always forward from the user's last store, whatever
//! its width) and, when it matches, the slow path compares the word and
//! asks `double_free` for an exact answer (a live block may hold the key).
//!
//! `free`'s validation costs two table loads beyond finding the
//! class: the page map entry already carries the class and the page's index
//! in its span, so the offset from the span start needs no span record;
//! whether that offset starts one of the span's objects (a multiple of the
//! size, not in the span's tail waste) is one multiplication by
//! `FAST.starts[0][class]` and one compare with `FAST.starts[1][class]`
//! (`size_class::object_start_table` has the proof).

use crate::pagemap::{MaskedLeaf, PageMap, NO_LEAF};
use crate::size_class::{self, SizeClass, FAST_MAX_BYTES};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

const T16_LEN: usize = size_class::fast_table_len(4);

/// Everything the fast paths read, in one cache-line-aligned static, but
/// `size_class::SMALL_LOOKUP` (a `const`, copied into each crate that
/// inlines `alloc`, so that constant sizes fold).
#[repr(C, align(64))]
pub(crate) struct Fast {
    /// Region 0 of the per-CPU slabs while the rseq fast path is on; null
    /// when it is not (not initialised, counting statistics, the CAS
    /// fallback, a fork child without caches). The one readiness check:
    /// the fast paths test the base they need anyway.
    base: AtomicPtr<u8>,
    /// Per-CPU caches on the CAS fallback (`refill` tries its quick
    /// pop/push first).
    cas: AtomicBool,
    /// Thread-pointer offsets of the rseq area (glibc's or ours, low 32
    /// bits) and of the index field (`cpu_id` or `mm_cid`, high 32 bits),
    /// both signed: one load for both.
    offs: AtomicU64,
    /// The free mark (see the module doc); set once at init.
    key: AtomicU64,
    /// The page map's first leaf for `dealloc_checked`'s class check.
    pub(crate) first_leaf: MaskedLeaf,

    /// The object-start test, `[multipliers, bounds]` indexed by class byte
    /// (`size_class::object_start_table`; zero for non-classes).
    starts: [[u64; 256]; 2],
    /// Size -> class for 16-byte alignment, step 16 B (C `malloc`'s table;
    /// `alloc` with alignment <= 8 reads `size_class::SMALL_LOOKUP`).
    t16: [u8; T16_LEN],
}

pub(crate) static FAST: Fast = Fast {
    base: AtomicPtr::new(core::ptr::null_mut()),
    cas: AtomicBool::new(false),
    offs: AtomicU64::new(0),
    key: AtomicU64::new(0),
    first_leaf: MaskedLeaf {
        leaf: AtomicPtr::new(&NO_LEAF as *const AtomicU64 as *mut AtomicU64),
        mask: AtomicUsize::new(0),
    },
    starts: size_class::object_start_table(),
    t16: size_class::fast_table::<T16_LEN>(4),
};

#[inline(always)]
pub(crate) fn fast() -> &'static Fast {
    rip_ref!(Fast, FAST)
}

#[inline(always)]
fn map() -> &'static PageMap {
    &rip_ref!(crate::page_heap::PageHeap, crate::global::HEAP).map
}

impl Fast {
    /// Publishes the rseq parameters and turns the fast path on. Offsets
    /// beyond 32 bits (a thread-local block 2 GiB from the thread pointer:
    /// never seen) leave it off; the full paths work without it.
    pub(crate) fn enable(&self, base: *mut u8, cs_off: isize, idx_off: isize) {
        let (Ok(lo), Ok(hi)) = (i32::try_from(cs_off), i32::try_from(idx_off)) else {
            return;
        };
        self.offs.store(
            u64::from(hi as u32) << 32 | u64::from(lo as u32),
            Ordering::Relaxed,
        );
        self.cas.store(false, Ordering::Relaxed);
        self.base.store(base, Ordering::Release);
    }

    /// Turns on the CAS fallback's quick paths.
    pub(crate) fn enable_cas(&self) {
        self.base.store(core::ptr::null_mut(), Ordering::Relaxed);
        self.cas.store(true, Ordering::Release);
    }

    /// Turns every quick path off (a fork child that stops using the caches).
    pub(crate) fn disable(&self) {
        self.base.store(core::ptr::null_mut(), Ordering::Relaxed);
        self.cas.store(false, Ordering::Release);
    }

    /// Whether the CAS fallback's quick paths are on.
    #[inline(always)]
    pub(crate) fn cas_ready(&self) -> bool {
        self.cas.load(Ordering::Acquire)
    }

    /// Region 0 of the per-CPU slabs when the rseq fast path is on (then
    /// `enable`'s other stores are visible), or null.
    #[inline(always)]
    fn rseq_base(&self) -> *mut u8 {
        self.base.load(Ordering::Acquire)
    }

    /// Thread-pointer offsets of the rseq area and of the index field.
    #[inline(always)]
    fn offs(&self) -> (isize, isize) {
        let w = self.offs.load(Ordering::Relaxed);
        (w as i32 as isize, (w as i64 >> 32) as isize)
    }

    /// Sets the free mark; called once, before any object is handed out.
    pub(crate) fn set_key(&self, key: u64) {
        debug_assert_eq!((key >> 56) as u8, MARK);
        self.key.store(key, Ordering::Relaxed);
    }

    /// The free mark.
    #[inline(always)]
    pub(crate) fn key(&self) -> u64 {
        self.key.load(Ordering::Relaxed)
    }

    /// The class for a C `malloc` of `size <= FAST_MAX_BYTES`.
    #[inline(always)]
    pub(crate) fn class16(&self, size: usize) -> SizeClass {
        SizeClass::from_table(self.t16[(size + 15) >> 4])
    }

    /// Whether `off` (an offset from the start of a span of `class`, below
    /// 2^32) is the start of one of the span's objects.
    #[inline(always)]
    pub(crate) fn is_object_start(&self, class: usize, off: usize) -> bool {
        let c = class & 0xff;
        (off as u64).wrapping_mul(self.starts[0][c]) < self.starts[1][c]
    }
}

/// The free mark's top byte, the same in every process so that `free`
/// compares it with an immediate (no load). The mark's other bits are
/// random; the slow path compares them all.
pub(crate) const MARK: u8 = 0xf7;

/// The class for `size <= FAST_MAX_BYTES` with alignment <= 8, from the
/// `const` `SMALL_LOOKUP` (not from `FAST`, whose address the compiler
/// cannot see through): a constant size folds to its class.
#[inline(always)]
pub(crate) fn class8(size: usize) -> SizeClass {
    SizeClass::from_table(size_class::SMALL_LOOKUP[(size + 7) >> 3])
}

/// Whether `w`, an object's first word, carries the free mark.
#[inline(always)]
pub(crate) fn is_marked(w: u64, key: u64) -> bool {
    (w ^ key) >> crate::double_free::LINK_BITS == 0
}

/// The object's mark byte (byte 7 of its first word). The fast paths read
/// and clear only this byte: a one-byte access is always served by
/// store-to-load forwarding, whatever width the user's last store to the
/// block had (an 8-byte load after a 1-byte user store stalls until the
/// store retires).
#[inline(always)]
fn mark_byte_of(p: *mut u8) -> *mut u8 {
    p.wrapping_add(7)
}

/// The object's mark byte: `MARK` if it may be free already (the caller
/// then compares the whole word with the key).
///
/// # Safety
/// `p` is an object start (>= 8 bytes).
#[inline(always)]
pub(crate) unsafe fn mark_byte(p: *mut u8) -> u8 {
    // SAFETY: byte 7 is inside the object per the contract.
    unsafe { mark_byte_of(p).read() }
}

/// Clears the free mark of an object being handed out.
///
/// # Safety
/// `p` is an object (>= 8 bytes) now owned by the caller.
#[inline(always)]
pub(crate) unsafe fn clear_mark(p: *mut u8) {
    // SAFETY: byte 7 is inside the object per the contract.
    unsafe { mark_byte_of(p).write(0) };
}

// ---------------------------------------------------------------- malloc

/// One object of `class`; null only when out of memory (errno = ENOMEM).
#[inline(always)]
pub(crate) fn malloc_small(class: SizeClass) -> *mut u8 {
    let f = fast();
    let base = f.rseq_base();
    if !base.is_null() {
        let (cs_off, idx_off) = f.offs();
        // SAFETY: a base means `enable` published the parameters of SLABS,
        // initialised with the rseq discipline over a region for every
        // index the kernel can report; `class` is a valid header.
        let p = unsafe { rseq_sys::arch::pop_or_null(base, class.index(), cs_off, idx_off) };
        if !p.is_null() {
            // SAFETY: `p` is a free object of `class` (>= 8 bytes, 8-aligned)
            // that the pop just made ours.
            unsafe { clear_mark(p) };
            return p;
        }
    }
    crate::refill::malloc_slow(class)
}

/// C `malloc`: 16-byte alignment; null with errno = ENOMEM on failure.
#[inline(always)]
pub(crate) fn malloc(size: usize) -> *mut u8 {
    if size <= FAST_MAX_BYTES {
        return malloc_small(fast().class16(size));
    }
    crate::refill::malloc_big(size)
}

/// `GlobalAlloc::alloc`.
#[inline(always)]
pub(crate) fn alloc(size: usize, align: usize) -> *mut u8 {
    if size <= FAST_MAX_BYTES {
        if align <= 8 {
            return malloc_small(class8(size));
        }
        if align == 16 {
            return malloc_small(fast().class16(size));
        }
    }
    crate::refill::alloc_uncommon(size, align)
}

// ---------------------------------------------------------------- free

/// Frees an object known to be an object start of `class` (validated, or
/// promised by a sized deallocation).
///
/// # Safety
/// `p` is an object of `class` from this allocator that the caller gives
/// up; it was handed out and not freed since (a second free is detected).
#[inline(always)]
pub(crate) unsafe fn free_known(p: *mut u8, class: SizeClass, who: &'static str) {
    let f = fast();
    // SAFETY: `p` is an object start of `class`: at least 8 bytes, 8-aligned.
    let b = unsafe { mark_byte(p) };
    let base = f.rseq_base();
    if !base.is_null() && b != MARK {
        // SAFETY: as above; the object is ours to mark.
        unsafe { p.cast::<u64>().write(f.key()) };
        let (cs_off, idx_off) = f.offs();
        // SAFETY: as in `malloc_small`; `p` is a free object of `class`.
        if unsafe { rseq_sys::arch::push_or_miss(base, class.index(), cs_off, idx_off, p) } {
            return;
        }
        // SAFETY: `p` is marked free and in no structure yet.
        return unsafe { crate::refill::free_overflow(p, class) };
    }
    // SAFETY: `p` is an object start of `class` the caller gives up (this
    // function's contract), as `free_small_slow` requires.
    unsafe { crate::refill::free_small_slow(p, class, who) }
}

/// C `free`: null is a no-op; anything but a live block aborts with a message.
///
/// # Safety
/// `p` is null or a block of this allocator not used afterwards.
#[inline(always)]
pub(crate) unsafe fn free(p: *mut u8) {
    match map().first_leaf_entry_and_class_of(p as usize) {
        // SAFETY: this function's contract, passed on.
        Some((e, class)) => unsafe { free_entry(p, e, class) },
        // SAFETY: as above.
        None => unsafe { free_beyond_first_leaf(p) },
    }
}

/// `free` of an address outside the first leaf's GiB (a heap past 1 GiB,
/// a foreign pointer, null), out of line: `free`'s own path stays straight.
///
/// # Safety
/// As for `free`.
#[inline(never)]
unsafe fn free_beyond_first_leaf(p: *mut u8) {
    let (e, class) = map().root_entry_and_class_of(p as usize);
    // SAFETY: this function's contract, passed on.
    unsafe { free_entry(p, e, class) }
}

/// `free` once the page map's entry `e` and class byte `class` for `p`
/// are loaded.
///
/// # Safety
/// As for `free`; `(e, class)` is the page map's answer for `p`.
#[inline(always)]
unsafe fn free_entry(p: *mut u8, e: u64, class: usize) {
    // Class 0 (not a small-object page, not ours, null) fails the
    // object-start test (its bound is 0): no test of its own.
    if fast().is_object_start(class, PageMap::small_offset(e, p as usize)) {
        // SAFETY: the page map and the class's object-start test say `p`
        // is an object start of `class`.
        return unsafe { free_known(p, SizeClass::from_table(class as u8), "free()") };
    }
    // SAFETY: `p` is null or a block of ours given up (this function's
    // contract); free_any validates it and reports anything else.
    unsafe { crate::global::free_any(p, "free()") }
}

/// `FAST.first_leaf.class_of(addr)` (see `MaskedLeaf`) in four
/// instructions after `fast()`'s `lea` (which the push shares): the mask is
/// an operand of the `and`.
#[inline(always)]
fn first_leaf_class_of(addr: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        use core::mem::offset_of;
        let class: usize;
        // SAFETY: reads FAST.first_leaf's mask, then its leaf (x86 keeps
        // loads in order; the mask of a leaf is stored after the leaf, see
        // `MaskedLeaf`), then one byte of entry `(addr >> PAGE_SHIFT) &
        // mask` of it: inside `NO_LEAF` (mask 0) or a mapped leaf.
        unsafe {
            core::arch::asm!(
                "mov {i}, {a}",
                "shr {i}, {shift}",
                "and {i}, qword ptr [{fast} + {mask}]",
                "mov {l}, qword ptr [{fast} + {leaf}]",
                "movzx {c:e}, byte ptr [{l} + {i} * 8 + {cb}]",
                a = in(reg) addr,
                fast = in(reg) fast(),
                i = out(reg) _,
                l = out(reg) _,
                c = lateout(reg) class,
                mask = const offset_of!(Fast, first_leaf) + offset_of!(MaskedLeaf, mask),
                leaf = const offset_of!(Fast, first_leaf) + offset_of!(MaskedLeaf, leaf),
                shift = const size_class::PAGE_SHIFT,
                cb = const crate::pagemap::CLASS_BYTE,
                options(pure, readonly, nostack),
            )
        };
        // SAFETY: `movzx` zero-extends one byte.
        unsafe { core::hint::assert_unchecked(class <= 0xff) };
        class
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        fast().first_leaf.class_of(addr)
    }
}

/// The class `alloc` gives a layout of `size <= FAST_MAX_BYTES` and
/// `align <= 16`.
#[inline(always)]
fn layout_class(size: usize, align: usize) -> SizeClass {
    if align <= 8 {
        class8(size)
    } else {
        fast().class16(size)
    }
}

/// `GlobalAlloc::dealloc`: the class comes from the layout (Rust's
/// contract; debug builds check it against the page map).
///
/// # Safety
/// `p` was allocated with (size, align) and is not used afterwards.
#[inline(always)]
pub(crate) unsafe fn dealloc(p: *mut u8, size: usize, align: usize) {
    if size <= FAST_MAX_BYTES && align <= 16 {
        let class = layout_class(size, align);
        debug_assert!(crate::global::debug_is_small_of(p, class));
        // SAFETY: per the contract `p` is a live object of `class`.
        return unsafe { free_known(p, class, "free()") };
    }
    // SAFETY: `p` was allocated with (size, align) and is given up (this
    // function's contract), as `dealloc_uncommon` requires.
    unsafe { crate::refill::dealloc_uncommon(p, size, align) }
}

/// `RseqAllocChecked`'s `dealloc`: the class of the layout, checked
/// against the page map's class byte for `p` (`first_leaf_class_of`: one
/// shift, one mask, two loads, no compare of the GiB); the push uses the
/// page map's class. Equal, they are one value to the compiler, which
/// keeps one of them:
/// - with a constant size (a `Box<T>`) the constant: the push's address
///   does not wait for the page map, and the check is a predicted branch
///   beside it (the golden table's `[24B-const]` row);
/// - with a run-time size, whichever the optimiser settles on for the
///   code around it: the harness's pair loop keeps the layout's class,
///   criterion's pair loop and the harness's out-of-line `dealloc` the
///   page map's. The page map's costs the pair loop a dependent load, and
///   spares a program that reads the size from the block on a cache miss
///   (C-style code with a header) the wait for that miss before the
///   push, which `dealloc` makes and the next `alloc` then stalls behind
///   (BENCHMARKS.md, eighth round).
///
/// Anything else (a wrong layout, a block beyond the first leaf's GiB,
/// whose masked entry is another page's, sizes beyond the fast path's
/// tables) goes to `dealloc_validated`.
///
/// # Safety
/// `p` was allocated by this allocator and is not used afterwards; a
/// layout that does not match it is reported, not trusted.
#[inline(always)]
pub(crate) unsafe fn dealloc_checked(p: *mut u8, size: usize, align: usize) {
    if size <= FAST_MAX_BYTES && align <= 16 {
        let class = layout_class(size, align);
        let c = first_leaf_class_of(p as usize);
        if c == class.index() {
            // SAFETY: per the contract `p` is a live block of ours, and the
            // page map says its page holds objects of `c`, the layout's
            // class (the object start is the contract's, as for `dealloc`).
            return unsafe { free_known(p, SizeClass::from_table(c as u8), "free()") };
        }
    }
    // SAFETY: this function's contract, passed on.
    unsafe { dealloc_validated(p, size, align) }
}

/// The rest of `dealloc_checked`: the page map decides (any GiB, object
/// start validated, as for `free`), and a small layout that does not match
/// the block aborts with `rseq-malloc: free(): size N does not match the
/// block 0x... of M bytes` instead of corrupting a class's cache.
///
/// # Safety
/// As for `dealloc_checked`.
#[cold]
#[inline(never)]
unsafe fn dealloc_validated(p: *mut u8, size: usize, align: usize) {
    if size_class::class_for(size, align).is_some() {
        // SAFETY: this function's contract, passed on.
        return unsafe { crate::global::free_sized_checked(p, size, align, "free()") };
    }
    // A large or huge layout: the block's own record decides (its pages
    // may exceed the size for an alignment beyond a page).
    // SAFETY: as above.
    unsafe { crate::global::free_any(p, "free()") }
}

/// Generates the free mark: random, low `LINK_BITS` bits clear, top byte
/// `MARK`.
pub(crate) fn make_key() -> u64 {
    let mut r = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into `r`.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getrandom,
            &mut r as *mut u64,
            8usize,
            libc::GRND_NONBLOCK,
        )
    };
    if n != 8 {
        // No entropy source (seccomp, very early boot): mix what differs
        // between processes.
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        r = (ts.tv_nsec as u64)
            ^ ((ts.tv_sec as u64) << 32)
            ^ (&ts as *const _ as u64).rotate_left(17);
        // SAFETY: getpid has no preconditions.
        r ^= (unsafe { libc::getpid() } as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        r = r.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    }
    // Top byte MARK (0xf7): never a byte of UTF-8 text, never the top byte
    // of a user-space pointer, a small or small negative integer, or a
    // double of ordinary magnitude; the low LINK_BITS bits are clear.
    let top = MARK as u64;
    (top << 56) | (r & 0x00ff_ffff_ff00_0000 & !((1u64 << crate::double_free::LINK_BITS) - 1))
}

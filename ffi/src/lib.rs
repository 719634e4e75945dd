//! `librseq_malloc`: the C allocation ABI (`malloc` and family) on top of
//! [`rseq_alloc::raw`].
//!
//! This crate is the "ffi" layer of DESIGN.md and nothing else: each symbol
//! checks its arguments the way glibc 2.36 does, sets `errno` the way glibc
//! does, and hands the real work to the allocator. Build it with
//! `cargo build --release -p rseq-malloc` and use
//! `target/release/librseq_malloc.so` with `LD_PRELOAD`, or link the
//! staticlib / cdylib directly.
//!
//! Rules every exported function keeps (the dynamic loader and libc call
//! `malloc` before `main` and before any constructor of ours has run):
//! - no allocation, no panic, no unwinding (the release profile has
//!   `panic = "abort"`, and nothing here has a panicking path);
//! - no lazy initialisation of its own: the allocator initialises itself on
//!   the first call, re-entrantly; the only state here is the `pthread_atfork`
//!   registration, done by an ELF constructor (see [`REGISTER_ATFORK`]).
//!
//! glibc behaviours reproduced on purpose (checked against glibc 2.36):
//! - sizes above `PTRDIFF_MAX`, and `calloc`/`reallocarray` products that
//!   overflow, give NULL with `ENOMEM`;
//! - `malloc(0)` gives a unique pointer that can be freed;
//! - `realloc(NULL, n)` is `malloc(n)`; `realloc(p, 0)` with `p` non-NULL
//!   frees `p` and returns NULL without touching `errno`;
//! - `posix_memalign` returns `EINVAL` for an alignment that is not a power
//!   of two multiple of `sizeof(void *)` and never writes `*memptr` on
//!   failure;
//! - `memalign` rounds an alignment that is not a power of two up to the
//!   next one, treats an alignment of at most 16 as plain `malloc`, and
//!   fails with `EINVAL` only for an alignment above `SIZE_MAX / 2 + 1`;
//!   `aligned_alloc` does the same for a power of two (glibc 2.36 made it
//!   an alias of `memalign`; see below for the rest);
//! - `pvalloc` rounds the size up to a whole number of pages.
//!
//! Deliberate differences from glibc 2.36:
//! - `aligned_alloc` with an alignment that is not a power of two (0
//!   included) gives NULL with `EINVAL`, as C17 and glibc >= 2.38;
//! - `mallopt` answers 0 for a parameter it does not know (glibc answers 1
//!   for anything it does not reject), so a caller can tell;
//! - `free_sized` / `free_aligned_sized` (C23, not in glibc 2.36) are
//!   exported; they pass the size to the allocator as a hint.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(
    missing_docs,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicUsize, Ordering};

use rseq_alloc::raw;

mod ext;
pub use ext::{RseqMallocOptions, RseqMallocStats};

/// `PTRDIFF_MAX`: no object may be larger (glibc's `checked_request2size`).
const PTRDIFF_MAX: usize = isize::MAX as usize;

/// The largest alignment `memalign` accepts before answering `EINVAL`
/// (glibc: anything above it cannot be a power of two).
const MAX_ALIGN_BYTES: usize = usize::MAX / 2 + 1;

/// glibc's `MALLOC_ALIGNMENT` on x86_64: `memalign` with an alignment up to
/// this is `malloc`, and a non-power-of-two alignment is rounded up from
/// twice this.
const GLIBC_MALLOC_ALIGN_BYTES: usize = 16;

// The allocator must give at least what C's `malloc` promises.
const _: () = assert!(raw::MIN_ALIGN >= GLIBC_MALLOC_ALIGN_BYTES);

// ---------------------------------------------------------------------------
// errno and small helpers
// ---------------------------------------------------------------------------

/// Sets `errno` for the calling thread.
#[inline(always)]
fn set_errno(code: c_int) {
    // SAFETY: `__errno_location` returns the calling thread's errno slot,
    // valid for the lifetime of the thread; writing an int to it is what C
    // code does with `errno = code`.
    unsafe { *libc::__errno_location() = code };
}

/// NULL with `errno = ENOMEM`: the one way every function here reports that
/// no memory can be had.
#[cold]
#[inline(never)]
fn null_enomem() -> *mut c_void {
    set_errno(libc::ENOMEM);
    core::ptr::null_mut()
}

/// NULL with `errno = EINVAL`.
#[cold]
#[inline(never)]
fn null_einval() -> *mut c_void {
    set_errno(libc::EINVAL);
    core::ptr::null_mut()
}

/// Converts an allocator result: NULL means out of memory.
#[inline(always)]
fn or_enomem(ptr: *mut u8) -> *mut c_void {
    if ptr.is_null() {
        null_enomem()
    } else {
        ptr.cast()
    }
}

/// The page size, read once from the kernel-provided auxiliary vector
/// (no allocation, no lock). 0 means "not read yet".
static PAGE_SIZE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The system page size in bytes (a power of two).
#[inline]
fn page_size_bytes() -> usize {
    let cached = PAGE_SIZE_BYTES.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: `getauxval` only reads the auxiliary vector that the kernel
    // placed on the initial stack; it neither allocates nor takes a lock.
    let from_auxv = unsafe { libc::getauxval(libc::AT_PAGESZ) } as usize;
    let page = if from_auxv.is_power_of_two() {
        from_auxv
    } else {
        4096
    };
    PAGE_SIZE_BYTES.store(page, Ordering::Relaxed);
    page
}

/// `memalign` with glibc's argument handling, the common path of
/// `memalign`, `aligned_alloc`, `valloc`, `pvalloc` and `posix_memalign`.
/// Sets `errno` on failure.
#[inline]
fn memalign_glibc(align_bytes: usize, size: usize) -> *mut c_void {
    if align_bytes <= GLIBC_MALLOC_ALIGN_BYTES {
        // glibc: "If we need less alignment than we give anyway, just relay
        // to malloc". Our malloc gives `raw::MIN_ALIGN` for sizes that can
        // hold it; ask for the alignment explicitly so a tiny block is
        // still 16-aligned if the caller asked for 16.
        if size > PTRDIFF_MAX {
            return null_enomem();
        }
        return or_enomem(raw::malloc_aligned(size, GLIBC_MALLOC_ALIGN_BYTES));
    }
    if align_bytes > MAX_ALIGN_BYTES {
        return null_einval();
    }
    let align_bytes = if align_bytes.is_power_of_two() {
        align_bytes
    } else {
        // Cannot overflow: align_bytes <= MAX_ALIGN_BYTES, a power of two.
        align_bytes.next_power_of_two()
    };
    // No object can exceed PTRDIFF_MAX, and the allocator may need
    // size + alignment bytes of address space to place the block.
    if size > PTRDIFF_MAX || align_bytes > PTRDIFF_MAX - size {
        return null_enomem();
    }
    or_enomem(raw::malloc_aligned(size, align_bytes))
}

// ---------------------------------------------------------------------------
// The malloc family
// ---------------------------------------------------------------------------

/// C `malloc`: `size` bytes aligned to 16, or NULL with `ENOMEM`.
/// `malloc(0)` returns a unique pointer that must be freed.
///
/// # Safety
/// Callable from any thread at any time, including before `main`.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    // raw::malloc answers NULL with ENOMEM itself, for sizes above
    // PTRDIFF_MAX too, so the fast path has no test of its own here.
    raw::malloc(size).cast()
}

/// C `free`: `free(NULL)` does nothing; a pointer that is not a live block
/// of ours aborts with `rseq-malloc: free(): invalid pointer 0x...`;
/// `errno` is preserved.
///
/// # Safety
/// `ptr` is NULL or was returned by this library's allocation functions and
/// not freed since (anything else is reported and aborts where detectable).
#[no_mangle]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    // errno: the allocator's slow paths of free restore it (glibc >= 2.33
    // and POSIX 2024 keep it; see `rseq_alloc::util::ErrnoGuard`).
    // SAFETY: the caller's contract is `raw::free`'s: NULL or a live block
    // from this allocator; the allocator validates the rest.
    unsafe { raw::free(ptr.cast()) }
}

/// C `calloc`: `nmemb * size` zeroed bytes; an overflowing product or one
/// above `PTRDIFF_MAX` gives NULL with `ENOMEM`.
///
/// # Safety
/// Callable from any thread at any time.
#[no_mangle]
pub unsafe extern "C" fn calloc(nmemb: usize, size: usize) -> *mut c_void {
    match nmemb.checked_mul(size) {
        Some(total) if total <= PTRDIFF_MAX => or_enomem(raw::calloc(total)),
        _ => null_enomem(),
    }
}

/// C `realloc`, as glibc: `realloc(NULL, n)` is `malloc(n)`;
/// `realloc(p, 0)` frees `p` and returns NULL; on failure NULL with `ENOMEM`
/// and `ptr` untouched.
///
/// # Safety
/// `ptr` is NULL or a live block of this library.
#[no_mangle]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    if ptr.is_null() {
        // SAFETY: `malloc` has no precondition.
        return unsafe { malloc(size) };
    }
    if size == 0 {
        // SAFETY: `ptr` is a live block (caller's contract); the allocator
        // validates it and names realloc() if it is not.
        unsafe { raw::free_checked(ptr.cast(), "realloc()") };
        return core::ptr::null_mut();
    }
    if size > PTRDIFF_MAX {
        return null_enomem();
    }
    // SAFETY: `ptr` is non-null and a live block (caller's contract,
    // validated by the allocator), `size` is in 1..=PTRDIFF_MAX.
    or_enomem(unsafe { raw::realloc(ptr.cast(), size) })
}

/// C `reallocarray`: `realloc(ptr, nmemb * size)` with the multiplication
/// checked (overflow: NULL with `ENOMEM`, `ptr` untouched).
///
/// # Safety
/// As [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn reallocarray(ptr: *mut c_void, nmemb: usize, size: usize) -> *mut c_void {
    match nmemb.checked_mul(size) {
        // SAFETY: `ptr` is NULL or a live block of this library (this
        // function's contract, which is `realloc`'s).
        Some(total) => unsafe { realloc(ptr, total) },
        None => null_enomem(),
    }
}

/// C `posix_memalign`: returns 0 and stores the block in `*memptr`, or
/// returns `EINVAL` (alignment not a power of two multiple of
/// `sizeof(void *)`) or `ENOMEM`; `*memptr` is written only on success.
///
/// # Safety
/// `memptr` is valid for writing one pointer.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(
    memptr: *mut *mut c_void,
    alignment: usize,
    size: usize,
) -> c_int {
    // "A power of two multiple of sizeof(void *)" = a power of two >= it.
    if !alignment.is_power_of_two() || alignment < core::mem::size_of::<*mut c_void>() {
        return libc::EINVAL;
    }
    let block = memalign_glibc(alignment, size);
    if block.is_null() {
        // glibc leaves errno = ENOMEM as well, set by memalign_glibc.
        return libc::ENOMEM;
    }
    // SAFETY: `memptr` is writable (caller's contract).
    unsafe { memptr.write(block) };
    0
}

/// C11 `aligned_alloc`: NULL with `EINVAL` for an alignment that is not a
/// power of two (as C17, glibc >= 2.38, musl, jemalloc and mimalloc), else
/// [`memalign`].
///
/// # Safety
/// Callable from any thread at any time.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(alignment: usize, size: usize) -> *mut c_void {
    // C17 (DR 460), glibc >= 2.38, musl: an alignment that is not a power
    // of two (0 included) is invalid. `memalign` keeps glibc's rounding.
    if !alignment.is_power_of_two() {
        return null_einval();
    }
    memalign_glibc(alignment, size)
}

/// `memalign`: alignment up to 16 is `malloc`; a non-power-of-two alignment
/// is rounded up to the next power of two; above `SIZE_MAX / 2 + 1` gives
/// NULL with `EINVAL`; no memory gives NULL with `ENOMEM`.
///
/// # Safety
/// Callable from any thread at any time.
#[no_mangle]
pub unsafe extern "C" fn memalign(alignment: usize, size: usize) -> *mut c_void {
    memalign_glibc(alignment, size)
}

/// `valloc`: `size` bytes aligned to the page size.
///
/// # Safety
/// Callable from any thread at any time.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    memalign_glibc(page_size_bytes(), size)
}

/// `pvalloc`: like [`valloc`] with the size rounded up to whole pages
/// (at least one page).
///
/// # Safety
/// Callable from any thread at any time.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page_size_bytes();
    let rounded = match size.checked_add(page - 1) {
        Some(sum) => (sum & !(page - 1)).max(page),
        None => return null_enomem(),
    };
    memalign_glibc(page, rounded)
}

/// `malloc_usable_size`: bytes usable in the block (at least what was asked
/// for); 0 for NULL.
///
/// # Safety
/// `ptr` is NULL or a live block of this library (otherwise reported and
/// aborts).
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(ptr: *mut c_void) -> usize {
    // SAFETY: caller's contract is the allocator's; NULL gives 0.
    unsafe { raw::usable_size(ptr.cast()) }
}

/// C23 `free_sized`: `free` with the size the block was requested with.
///
/// # Safety
/// `ptr` is NULL or a block from `malloc`/`calloc`/`realloc` of exactly
/// `size` bytes, not freed since.
#[no_mangle]
pub unsafe extern "C" fn free_sized(ptr: *mut c_void, size: usize) {
    if size == 0 || size > PTRDIFF_MAX {
        // No useful hint (malloc(0)'s block, or a size no block can have):
        // let the allocator find the size itself.
        // SAFETY: `ptr` is NULL or a live block (caller's contract).
        unsafe { raw::free(ptr.cast()) };
    } else {
        // SAFETY: `ptr` is NULL or a live block of `size` bytes with the
        // default alignment (caller's contract).
        unsafe { raw::free_sized(ptr.cast(), size, 1) };
    }
}

/// C23 `free_aligned_sized`: `free` for an `aligned_alloc(alignment, size)`
/// block.
///
/// # Safety
/// `ptr` is NULL or a block from `aligned_alloc(alignment, size)`, not
/// freed since.
#[no_mangle]
pub unsafe extern "C" fn free_aligned_sized(ptr: *mut c_void, alignment: usize, size: usize) {
    if size == 0 || size > PTRDIFF_MAX || !alignment.is_power_of_two() {
        // SAFETY: `ptr` is NULL or a live block (caller's contract).
        unsafe { raw::free(ptr.cast()) };
    } else {
        // SAFETY: `ptr` is NULL or a live block of `size` bytes allocated
        // with `alignment` (caller's contract).
        unsafe { raw::free_sized(ptr.cast(), size, alignment) };
    }
}

/// `malloc_trim`: returns free memory to the OS; 1 if any was released.
///
/// # Safety
/// Callable from any thread at any time.
#[no_mangle]
pub unsafe extern "C" fn malloc_trim(_pad: usize) -> c_int {
    c_int::from(raw::trim())
}

/// `malloc_stats`: human-readable statistics on stderr.
///
/// # Safety
/// Callable from any thread at any time.
#[no_mangle]
pub unsafe extern "C" fn malloc_stats() {
    raw::print_stats();
}

/// glibc's `mallopt` parameter numbers (`<malloc.h>`).
mod param {
    use core::ffi::c_int;
    pub const M_MXFAST: c_int = 1;
    pub const M_TRIM_THRESHOLD: c_int = -1;
    pub const M_TOP_PAD: c_int = -2;
    pub const M_MMAP_THRESHOLD: c_int = -3;
    pub const M_MMAP_MAX: c_int = -4;
    pub const M_CHECK_ACTION: c_int = -5;
    pub const M_PERTURB: c_int = -6;
    pub const M_ARENA_TEST: c_int = -7;
    pub const M_ARENA_MAX: c_int = -8;
    /// glibc rejects an `M_MXFAST` above `80 * sizeof(size_t) / 4`.
    pub const MAX_FAST_BYTES: c_int = 80 * 8 / 4;
}

/// `mallopt`: glibc's tuning knobs mean nothing to this allocator; a known
/// parameter with a value glibc would accept is acknowledged (1) and
/// ignored, anything else returns 0.
///
/// # Safety
/// Callable from any thread at any time.
#[no_mangle]
pub unsafe extern "C" fn mallopt(param: c_int, value: c_int) -> c_int {
    use param::*;
    match param {
        M_MXFAST => c_int::from((0..=MAX_FAST_BYTES).contains(&value)),
        M_TRIM_THRESHOLD | M_TOP_PAD | M_MMAP_THRESHOLD | M_MMAP_MAX | M_CHECK_ACTION
        | M_PERTURB | M_ARENA_TEST | M_ARENA_MAX => 1,
        _ => 0,
    }
}

/// glibc's `struct mallinfo2` (`<malloc.h>`, glibc >= 2.33).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Mallinfo2 {
    /// Non-mmapped space allocated (bytes): our spans.
    pub arena: usize,
    /// Number of free chunks: not tracked, 0.
    pub ordblks: usize,
    /// Number of free fastbin blocks: not tracked, 0.
    pub smblks: usize,
    /// Number of mmapped regions: not tracked, 0.
    pub hblks: usize,
    /// Space in mmapped regions (bytes): huge allocations.
    pub hblkhd: usize,
    /// Unused, 0 (as glibc).
    pub usmblks: usize,
    /// Space in freed fastbin blocks (bytes): our per-CPU caches.
    pub fsmblks: usize,
    /// Total allocated space (bytes).
    pub uordblks: usize,
    /// Total free space (bytes): mapped but neither in use nor released.
    pub fordblks: usize,
    /// Releasable space at the top of the heap: not tracked, 0.
    pub keepcost: usize,
}

/// The statistics in `mallinfo2` form.
fn mallinfo2_now() -> Mallinfo2 {
    let s = raw::stats();
    let arena = s.mapped_bytes.saturating_sub(s.huge_bytes);
    Mallinfo2 {
        arena,
        hblkhd: s.huge_bytes,
        fsmblks: s.cached_bytes,
        uordblks: s.in_use_bytes,
        fordblks: s
            .mapped_bytes
            .saturating_sub(s.in_use_bytes)
            .saturating_sub(s.released_bytes),
        ..Mallinfo2::default()
    }
}

/// `mallinfo2`: allocator statistics in glibc's layout.
///
/// # Safety
/// Callable from any thread at any time.
#[no_mangle]
pub unsafe extern "C" fn mallinfo2() -> Mallinfo2 {
    mallinfo2_now()
}

/// glibc's deprecated `struct mallinfo` (`int` fields).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Mallinfo {
    /// See [`Mallinfo2::arena`].
    pub arena: c_int,
    /// See [`Mallinfo2::ordblks`].
    pub ordblks: c_int,
    /// See [`Mallinfo2::smblks`].
    pub smblks: c_int,
    /// See [`Mallinfo2::hblks`].
    pub hblks: c_int,
    /// See [`Mallinfo2::hblkhd`].
    pub hblkhd: c_int,
    /// See [`Mallinfo2::usmblks`].
    pub usmblks: c_int,
    /// See [`Mallinfo2::fsmblks`].
    pub fsmblks: c_int,
    /// See [`Mallinfo2::uordblks`].
    pub uordblks: c_int,
    /// See [`Mallinfo2::fordblks`].
    pub fordblks: c_int,
    /// See [`Mallinfo2::keepcost`].
    pub keepcost: c_int,
}

/// `mallinfo` (deprecated): [`mallinfo2`] with each field truncated to `int`
/// as glibc does.
///
/// # Safety
/// Callable from any thread at any time.
#[no_mangle]
pub unsafe extern "C" fn mallinfo() -> Mallinfo {
    let m = mallinfo2_now();
    let int = |v: usize| v as c_int; // glibc truncates the same way
    Mallinfo {
        arena: int(m.arena),
        ordblks: int(m.ordblks),
        smblks: int(m.smblks),
        hblks: int(m.hblks),
        hblkhd: int(m.hblkhd),
        usmblks: int(m.usmblks),
        fsmblks: int(m.fsmblks),
        uordblks: int(m.uordblks),
        fordblks: int(m.fordblks),
        keepcost: int(m.keepcost),
    }
}

// ---------------------------------------------------------------------------
// fork
// ---------------------------------------------------------------------------

/// Registers the fork handlers (see `rseq_alloc`'s `fork.rs`: the stdio
/// list lock is taken before ours, nothing is taken in a single-threaded
/// process), so a child of a multi-threaded parent can allocate.
///
/// Run from `.init_array` rather than from the first `malloc`: glibc holds
/// its atfork lock while it registers, and a first `malloc` from a prepare
/// handler calling `pthread_atfork` would deadlock. The allocator crate has
/// the same constructor; registration is idempotent, and this one is kept
/// next to `malloc` so that static linking, which pulls in the object that
/// defines `malloc`, keeps a constructor in any case. Allocations before it
/// runs (from ld.so or libc) work: the allocator initialises itself lazily.
extern "C" fn register_atfork() {
    raw::register_fork_handlers();
}

/// The ELF constructor that registers the fork handlers (see
/// [`register_atfork`]). In this module, next to `malloc`, so static
/// linking, which pulls in the object that defines `malloc`, keeps it.
#[used]
#[link_section = ".init_array"]
static REGISTER_ATFORK: extern "C" fn() = register_atfork;

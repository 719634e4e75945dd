//! The rest of glibc's surface (`cfree`, the `__libc_*` aliases,
//! `malloc_info`) and our extension API, declared in
//! `include/rseq_malloc.h`.

use core::ffi::{c_char, c_int, c_longlong, c_void};

use crate::{calloc, free, malloc, memalign, pvalloc, realloc, set_errno, valloc};
use rseq_alloc::raw::MsgBuf;

// ---------------------------------------------------------------------------
// glibc aliases
// ---------------------------------------------------------------------------

/// `cfree` (an old alias of `free` that glibc still exports).
///
/// # Safety
/// As `free`.
#[no_mangle]
pub unsafe extern "C" fn cfree(ptr: *mut c_void) {
    // SAFETY: `ptr` is NULL or a live block of this library not used
    // afterwards (this function's contract, which is `free`'s).
    unsafe { free(ptr) }
}

/// glibc's `__libc_malloc`, which some programs and tools call directly.
///
/// # Safety
/// As `malloc`.
#[no_mangle]
pub unsafe extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
    // SAFETY: `malloc` has no precondition (callable from any thread at any
    // time).
    unsafe { malloc(size) }
}

/// glibc's `__libc_free`.
///
/// # Safety
/// As `free`.
#[no_mangle]
pub unsafe extern "C" fn __libc_free(ptr: *mut c_void) {
    // SAFETY: `ptr` is NULL or a live block of this library not used
    // afterwards (this function's contract, which is `free`'s).
    unsafe { free(ptr) }
}

/// glibc's `__libc_calloc`.
///
/// # Safety
/// As `calloc`.
#[no_mangle]
pub unsafe extern "C" fn __libc_calloc(nmemb: usize, size: usize) -> *mut c_void {
    // SAFETY: `calloc` has no precondition (callable from any thread at any
    // time).
    unsafe { calloc(nmemb, size) }
}

/// glibc's `__libc_realloc`.
///
/// # Safety
/// As `realloc`.
#[no_mangle]
pub unsafe extern "C" fn __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: `ptr` is NULL or a live block of this library (this
    // function's contract, which is `realloc`'s).
    unsafe { realloc(ptr, size) }
}

/// glibc's `__libc_memalign`.
///
/// # Safety
/// As `memalign`.
#[no_mangle]
pub unsafe extern "C" fn __libc_memalign(alignment: usize, size: usize) -> *mut c_void {
    // SAFETY: `memalign` has no precondition (callable from any thread at any
    // time).
    unsafe { memalign(alignment, size) }
}

/// glibc's `__libc_valloc`.
///
/// # Safety
/// As `valloc`.
#[no_mangle]
pub unsafe extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
    // SAFETY: `valloc` has no precondition (callable from any thread at any
    // time).
    unsafe { valloc(size) }
}

/// glibc's `__libc_pvalloc`.
///
/// # Safety
/// As `pvalloc`.
#[no_mangle]
pub unsafe extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
    // SAFETY: `pvalloc` has no precondition (callable from any thread at any
    // time).
    unsafe { pvalloc(size) }
}

// ---------------------------------------------------------------------------
// malloc_info
// ---------------------------------------------------------------------------

/// Writes `m` to `fp` and empties it; false on a short write (the output
/// goes through stdio, which may allocate: that is ours and re-entrant-safe,
/// as for any `fprintf`).
///
/// # Safety
/// `fp` is an open stdio stream.
unsafe fn put(m: &mut MsgBuf, fp: *mut libc::FILE) -> bool {
    let bytes = m.as_bytes();
    // SAFETY: `bytes` is initialised; `fp` is open (caller).
    let n = unsafe { libc::fwrite(bytes.as_ptr().cast(), 1, bytes.len(), fp) };
    let ok = n == bytes.len();
    *m = MsgBuf::new();
    ok
}

/// The `<total>`, `<system>` and `<aspace>` elements glibc writes for a heap
/// and again for the whole process; `mmap` is `(count, bytes)` of the
/// directly mapped blocks (the process part only).
///
/// # Safety
/// `fp` is an open stdio stream.
unsafe fn put_totals(
    fp: *mut libc::FILE,
    cached: u64,
    rest: u64,
    mmap: Option<(u64, u64)>,
    current: u64,
    peak: u64,
) -> bool {
    let mut m = MsgBuf::new();
    let mut ok = true;
    // SAFETY: `fp` is open (caller's contract), for every call below.
    let mut emit = |m: &mut MsgBuf| ok &= unsafe { put(m, fp) };
    for (kind, v) in [("fast", cached), ("rest", rest)] {
        emit(
            m.str("<total type=\"")
                .str(kind)
                .str("\" count=\"0\" size=\"")
                .dec(v)
                .str("\"/>\n"),
        );
    }
    if let Some((count, bytes)) = mmap {
        emit(
            m.str("<total type=\"mmap\" count=\"")
                .dec(count)
                .str("\" size=\"")
                .dec(bytes)
                .str("\"/>\n"),
        );
    }
    for (kind, v) in [("current", current), ("max", peak)] {
        emit(
            m.str("<system type=\"")
                .str(kind)
                .str("\" size=\"")
                .dec(v)
                .str("\"/>\n"),
        );
    }
    for kind in ["total", "mprotect"] {
        emit(
            m.str("<aspace type=\"")
                .str(kind)
                .str("\" size=\"")
                .dec(current)
                .str("\"/>\n"),
        );
    }
    ok
}

/// `malloc_info(options, fp)`: our numbers in the XML shape glibc uses
/// (one `<heap>`, the totals, `system` and `aspace` elements). `fast` is
/// the per-CPU caches, `rest` the other free memory still mapped, `mmap`
/// the huge blocks. `options` must be 0 (else -1 with `EINVAL`, as glibc).
///
/// # Safety
/// `fp` is an open stdio stream opened for writing.
#[no_mangle]
pub unsafe extern "C" fn malloc_info(options: c_int, fp: *mut libc::FILE) -> c_int {
    if options != 0 || fp.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    let s = rseq_alloc::stats();
    let heap = s.mapped.saturating_sub(s.huge) as u64;
    let rest = s
        .mapped
        .saturating_sub(s.allocated)
        .saturating_sub(s.cached) as u64;
    let cached = s.cached as u64;
    let peak = s.peak_mapped.max(s.mapped) as u64;
    let huge = Some((s.huge_blocks as u64, s.huge as u64));
    let mut m = MsgBuf::new();
    // SAFETY: `fp` is open (caller's contract), for every call below.
    let ok = unsafe {
        put(
            m.str("<malloc version=\"1\">\n<heap nr=\"0\">\n<sizes>\n</sizes>\n"),
            fp,
        ) & put_totals(fp, cached, rest, None, heap, peak)
            & put(m.str("</heap>\n"), fp)
            & put_totals(fp, cached, rest, huge, s.mapped as u64, peak)
            & put(m.str("</malloc>\n"), fp)
    };
    if ok {
        0
    } else {
        -1
    }
}

// ---------------------------------------------------------------------------
// Extension API (include/rseq_malloc.h)
// ---------------------------------------------------------------------------

/// `struct rseq_malloc_stats` (see the header; fields are only appended):
/// the allocator's own snapshot, whose layout is the header's.
pub type RseqMallocStats = rseq_alloc::Stats;
const _: () = assert!(core::mem::size_of::<RseqMallocStats>() == 15 * 8);

/// Copies `min(size, sizeof *out)` bytes of `value` to `out`; returns our
/// size, so that a caller built against an older (shorter) or newer
/// (longer) header keeps working.
///
/// # Safety
/// `out` is null or points to `size` writable bytes.
unsafe fn copy_out<T: Copy>(value: &T, out: *mut c_void, size: usize) -> usize {
    let ours = core::mem::size_of::<T>();
    if !out.is_null() {
        // SAFETY: `value` is `ours` readable bytes; `out` has `size`
        // writable bytes (caller); the regions are distinct.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (value as *const T).cast::<u8>(),
                out.cast::<u8>(),
                ours.min(size),
            )
        };
    }
    ours
}

/// `size_t rseq_malloc_stats(struct rseq_malloc_stats *out, size_t size)`:
/// fills `out` (up to `size` bytes) and returns `sizeof(struct
/// rseq_malloc_stats)` of this library.
///
/// # Safety
/// `out` is null or points to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rseq_malloc_stats(out: *mut RseqMallocStats, size: usize) -> usize {
    let s = rseq_alloc::stats();
    // SAFETY: `out` is null or points to `size` writable bytes (this
    // function's contract, which is `copy_out`'s).
    unsafe { copy_out(&s, out.cast(), size) }
}

/// `struct rseq_malloc_options` (see the header; fields are only appended).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RseqMallocOptions {
    /// `rseq=off`.
    pub rseq_off: c_int,
    /// `index`: 0 auto, 1 cpu, 2 cid.
    pub index: c_int,
    /// `verbose`.
    pub verbose: c_int,
    /// `stats` (1 also for `stats=json`).
    pub stats: c_int,
    /// `stats=json`.
    pub stats_json: c_int,
    /// `background`.
    pub background: c_int,
    /// `thp`: 0 auto, 1 never.
    pub thp: c_int,
    /// `abort_conf`.
    pub abort_conf: c_int,
    /// `decay_ms` (-1 never).
    pub decay_ms: c_longlong,
    /// `stats_file` path (not NUL-terminated: a slice of the environment),
    /// or NULL.
    pub stats_file: *const c_char,
    /// Length of `stats_file` in bytes.
    pub stats_file_len: usize,
}

/// `size_t rseq_malloc_options(struct rseq_malloc_options *out, size_t
/// size)`: the options in effect; returns `sizeof(struct
/// rseq_malloc_options)` of this library.
///
/// # Safety
/// `out` is null or points to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rseq_malloc_options(out: *mut RseqMallocOptions, size: usize) -> usize {
    let o = rseq_alloc::options();
    let flag = |b: bool| c_int::from(b);
    let v = RseqMallocOptions {
        rseq_off: flag(o.rseq_off),
        index: match o.index {
            rseq_alloc::IndexChoice::Auto => 0,
            rseq_alloc::IndexChoice::Cpu => 1,
            rseq_alloc::IndexChoice::Cid => 2,
        },
        verbose: flag(o.verbose),
        stats: flag(o.stats),
        stats_json: flag(o.stats_json),
        background: flag(o.background),
        thp: match o.thp {
            rseq_alloc::ThpChoice::Auto => 0,
            rseq_alloc::ThpChoice::Never => 1,
        },
        abort_conf: flag(o.abort_conf),
        decay_ms: o.decay_ms,
        stats_file: o
            .stats_file
            .map_or(core::ptr::null(), |p| p.as_ptr().cast()),
        stats_file_len: o.stats_file.map_or(0, <[u8]>::len),
    };
    // SAFETY: `out` is null or points to `size` writable bytes (this
    // function's contract, which is `copy_out`'s).
    unsafe { copy_out(&v, out.cast(), size) }
}

/// `int rseq_malloc_trim(void)`: gives free memory back to the OS now;
/// 1 if anything was released.
#[no_mangle]
pub extern "C" fn rseq_malloc_trim() -> c_int {
    c_int::from(rseq_alloc::trim())
}

/// NUL-terminated copies of the version and mode names.
const VERSION: &core::ffi::CStr =
    match core::ffi::CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes())
    {
        Ok(v) => v,
        Err(_) => panic!("version string"),
    };

/// `const char *rseq_malloc_version(void)`: "0.1.0" (this library's
/// version, static storage).
#[no_mangle]
pub extern "C" fn rseq_malloc_version() -> *const c_char {
    VERSION.as_ptr()
}

/// `const char *rseq_malloc_mode(void)`: "rseq-glibc", "rseq-own" or
/// "cmpxchg" (static storage).
#[no_mangle]
pub extern "C" fn rseq_malloc_mode() -> *const c_char {
    let m: &'static core::ffi::CStr = match rseq_alloc::mode_name() {
        "rseq-glibc" => c"rseq-glibc",
        "rseq-own" => c"rseq-own",
        _ => c"cmpxchg",
    };
    m.as_ptr()
}

/// `size_t rseq_malloc_cache_regions(void)`: number of per-CPU caches.
#[no_mangle]
pub extern "C" fn rseq_malloc_cache_regions() -> usize {
    rseq_alloc::cache_regions()
}

/// `size_t rseq_malloc_cached_in_region(size_t region)`: free bytes in
/// one per-CPU cache (0 out of range).
#[no_mangle]
pub extern "C" fn rseq_malloc_cached_in_region(region: usize) -> usize {
    rseq_alloc::cached_bytes_in_region(region)
}

//! Anonymous memory aligned to a per-CPU region size.

/// An anonymous, private, read-write mapping of `len` bytes whose start is
/// aligned to `align` (a power of two, at least a page): maps `len + align`
/// and unmaps the ends. Zero-filled by the kernel, committed lazily,
/// `MAP_NORESERVE`. Returns null on failure. The caller owns the mapping
/// (benches keep it for the process's life; [`Regions`] unmaps it).
pub fn mmap_aligned(len: usize, align: usize) -> *mut u8 {
    assert!(align.is_power_of_two() && align >= 4096);
    let total = len + align;
    // SAFETY: a fresh anonymous mapping; no existing memory is affected.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    let start = raw as usize;
    let aligned = (start + align - 1) & !(align - 1);
    let head = aligned - start;
    let tail = total - head - len;
    // SAFETY: both ranges lie inside the mapping we just made and are not
    // used by anyone.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    aligned as *mut u8
}

/// Zeroed memory for `n` per-CPU regions of `region_bytes` each, the first
/// one aligned to `region_bytes`, unmapped on drop.
pub struct Regions {
    len: usize,
    /// First region.
    pub base: *mut u8,
}

// SAFETY: the mapping is plain memory; sharing its address between threads
// is what the per-CPU structures built on it are for.
unsafe impl Send for Regions {}
// SAFETY: as above; the struct itself is immutable.
unsafe impl Sync for Regions {}

impl Regions {
    /// Maps `n` regions of `region_bytes` (a power of two: pass the
    /// per-CPU layer's region size).
    pub fn new(n: usize, region_bytes: usize) -> Regions {
        let len = n * region_bytes;
        let base = mmap_aligned(len, region_bytes);
        assert!(!base.is_null(), "mmap failed");
        Regions { len, base }
    }
}

impl Drop for Regions {
    fn drop(&mut self) {
        // SAFETY: `[base, base + len)` is exactly what `mmap_aligned` left
        // mapped for `new`, and nothing else uses it any more.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

//! Shared helpers for the integration, stress and real-program tests.

use rseq_sys::percpu::REGION_BYTES;

/// Anonymous zeroed memory for `n` per-CPU regions, aligned to
/// `REGION_BYTES`, unmapped on drop.
pub struct Regions {
    map: *mut u8,
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
    /// Maps `n` regions.
    pub fn new(n: usize) -> Regions {
        let len = (n + 1) * REGION_BYTES;
        // SAFETY: anonymous private mapping with no address hint.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED, "mmap failed");
        let map = map.cast::<u8>();
        let base = ((map as usize + REGION_BYTES - 1) & !(REGION_BYTES - 1)) as *mut u8;
        Regions { map, len, base }
    }
}

impl Drop for Regions {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.map.cast(), self.len) };
    }
}

/// A tiny deterministic PRNG (xorshift64*), so runs are reproducible.
pub struct Rng(u64);

impl Rng {
    /// Seeds the generator (0 is replaced by a fixed odd constant).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The calling thread's kernel thread id.
pub fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

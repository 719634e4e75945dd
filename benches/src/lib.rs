//! Shared helpers for the rseq-alloc benchmarks: a tiny fixed-seed PRNG and a
//! few OS helpers (CPU pinning, resident-set readings, aligned anonymous maps).
//!
//! The comparison harness (`src/main.rs`) and the criterion benches
//! (`benches/*.rs`) both use these; nothing here allocates on a measured path.
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

use std::io::Read;

/// Xorshift64* — a fixed-seed, allocation-free PRNG so every run of a workload
/// sees the same sequence of sizes and slots (no `rand` dependency needed).
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (0 is remapped: xorshift must not start at 0).
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (n > 0); the modulo bias is irrelevant here.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A value in `lo..=hi`.
    #[inline]
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }

    /// A "small-object heavy" size in `16..=max`: a log-uniform draw, so that
    /// every size class gets traffic but small ones get most of it, like real
    /// programs.
    #[inline]
    pub fn log_size(&mut self, min: usize, max: usize) -> usize {
        let lo = usize::BITS - 1 - min.leading_zeros();
        let hi = usize::BITS - 1 - max.leading_zeros();
        let shift = lo + self.below(u64::from(hi - lo + 1)) as u32;
        let base = 1usize << shift;
        (base + self.below(base as u64) as usize).clamp(min, max)
    }
}

/// Pins the calling thread to `cpu`. Returns false if the kernel refused.
pub fn pin_to_cpu(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes a bit inside `set`; cpu < CPU_SETSIZE is checked.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return false;
        }
        libc::CPU_SET(cpu, &mut set);
    }
    // SAFETY: pid 0 = the calling thread; `set` is a valid cpu_set_t of the given size.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 }
}

/// The CPUs this process may run on, in increasing order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 = the calling thread; `set` is a writable cpu_set_t of the given size.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads a bit of `set`; i < CPU_SETSIZE.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect()
}

/// The CPU the calling thread is running on right now (from `sched_getcpu`).
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu has no preconditions.
    let c = unsafe { libc::sched_getcpu() };
    usize::try_from(c).ok()
}

/// Resident-set figures of this process from `/proc/self/status`, in KiB:
/// `(VmHWM, VmRSS)` — the peak and the current resident set.
///
/// Reads into a stack buffer so it can be called from any point of a workload
/// without disturbing the allocator under test.
pub fn rss_kib() -> (u64, u64) {
    let mut buf = [0u8; 4096];
    let mut n = 0;
    if let Ok(mut f) = std::fs::File::open("/proc/self/status") {
        while n < buf.len() {
            match f.read(&mut buf[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
    }
    let text = &buf[..n];
    (field_kib(text, b"VmHWM:"), field_kib(text, b"VmRSS:"))
}

fn field_kib(text: &[u8], key: &[u8]) -> u64 {
    let Some(pos) = text.windows(key.len()).position(|w| w == key) else {
        return 0;
    };
    text[pos + key.len()..]
        .iter()
        .skip_while(|b| !b.is_ascii_digit())
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |acc, &b| acc * 10 + u64::from(b - b'0'))
}

/// An anonymous, private, read-write mapping of `len` bytes whose start is
/// aligned to `align` (a power of two): maps `len + align` and trims the ends.
/// Zero-filled by the kernel, committed lazily. Returns null on failure.
/// The mapping is never unmapped here: benches keep it for the process's life.
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
    // SAFETY: both ranges lie inside the mapping we just made and are not used by anyone.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift_is_deterministic_and_in_range() {
        let mut a = XorShift::new(42);
        let mut b = XorShift::new(42);
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let s = a.log_size(16, 4096);
            assert!((16..=4096).contains(&s));
            b.log_size(16, 4096);
        }
    }

    #[test]
    fn rss_is_readable() {
        let (hwm, rss) = rss_kib();
        assert!(hwm >= rss && rss > 0);
    }

    #[test]
    fn aligned_map_is_aligned() {
        let p = mmap_aligned(1 << 20, 1 << 18);
        assert!(!p.is_null());
        assert_eq!(p as usize % (1 << 18), 0);
    }
}

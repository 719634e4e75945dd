//! Shared helpers for the rseq-alloc benchmarks: a tiny fixed-seed PRNG and a
//! few OS helpers (CPU pinning, resident-set readings, aligned anonymous maps).
//!
//! The comparison harness (`src/main.rs`) and the criterion benches
//! (`benches/*.rs`) both use these; nothing here allocates on a measured path.
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

use std::io::Read;

/// Xorshift64* — a fixed-seed, allocation-free PRNG, shared with the tests.
pub use rseq_test_support::Rng as XorShift;

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

/// An aligned anonymous mapping (for per-CPU regions), shared with the tests;
/// benches keep it for the process's life.
pub use rseq_test_support::mmap_aligned;

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

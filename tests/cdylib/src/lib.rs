//! A Rust shared library whose global allocator is rseq-alloc, as a Python
//! extension or a plugin would be. The tests load it with `dlopen` (from C
//! and from python3 ctypes) into a process that already runs glibc's malloc
//! and glibc's rseq registration.

use std::ffi::c_char;

#[global_allocator]
static GLOBAL: rseq_alloc::RseqAlloc = rseq_alloc::RseqAlloc;

/// The registration mode of rseq-alloc in this process, NUL-terminated:
/// "rseq-glibc", "rseq-own" or "cmpxchg".
#[no_mangle]
pub extern "C" fn rseq_cdylib_mode() -> *const c_char {
    let name = match rseq_alloc::mode_name() {
        "rseq-glibc" => c"rseq-glibc",
        "rseq-own" => c"rseq-own",
        "cmpxchg" => c"cmpxchg",
        _ => c"unknown",
    };
    name.as_ptr()
}

/// Runs `threads` threads that each build and drop `rounds` vectors of
/// boxed values, and returns the sum of every value seen (exact:
/// `threads * rounds * (0 + 1 + ... + 999)` when every allocation holds
/// what was written). Returns 0 if a thread panics.
#[no_mangle]
pub extern "C" fn rseq_cdylib_work(threads: u32, rounds: u32) -> u64 {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut sum = 0u64;
                for _ in 0..rounds {
                    let v: Vec<Box<u64>> = (0..1000u64).map(Box::new).collect();
                    let s: String = v.iter().take(10).map(|b| b.to_string()).collect();
                    assert_eq!(s, "0123456789");
                    sum += v.iter().map(|b| **b).sum::<u64>();
                }
                sum
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        match h.join() {
            Ok(s) => total += s,
            Err(_) => return 0,
        }
    }
    total
}

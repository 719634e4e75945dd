//! Idle per-CPU caches are drained without `trim()`: a helper thread pinned
//! to CPU 1 fills that CPU's cache and exits; the main thread, pinned to CPU
//! 0, keeps missing in its own cache; the periodic idle scan must notice
//! that region 1 no longer changes and drain it. Runs in a child process
//! with `RSEQ_MALLOC_CONF=index=cpu` so that regions are CPU numbers.

use rseq_alloc::raw;
use rseq_test_support::{child_test, pin_to_cpu};

fn body() {
    if !pin_to_cpu(0) {
        eprintln!("SKIP cannot pin to CPU 0");
        return;
    }
    let helper = std::thread::spawn(|| {
        if !pin_to_cpu(1) {
            return false;
        }
        let v: Vec<usize> = (0..500).map(|_| raw::malloc(64) as usize).collect();
        for p in v {
            // SAFETY: live blocks, freed once.
            unsafe { raw::free(p as *mut u8) };
        }
        true
    });
    if !helper.join().unwrap() {
        eprintln!("SKIP cannot pin to CPU 1");
        return;
    }
    let before = rseq_alloc::cached_bytes_in_region(1);
    assert!(before > 0, "the helper left objects in CPU 1's cache");
    let mut v = Vec::with_capacity(40_000);
    for _ in 0..20 {
        for _ in 0..40_000 {
            v.push(raw::malloc(48) as usize);
        }
        for p in v.drain(..) {
            // SAFETY: live blocks, freed once.
            unsafe { raw::free(p as *mut u8) };
        }
        if rseq_alloc::cached_bytes_in_region(1) == 0 {
            break;
        }
    }
    let after = rseq_alloc::cached_bytes_in_region(1);
    assert_eq!(after, 0, "idle region 1 was drained (had {before} bytes)");
    raw::check_invariants();
}

#[test]
fn idle_cpu_cache_is_drained() {
    child_test("idle_cpu_cache_is_drained", Some("index=cpu"), body);
}

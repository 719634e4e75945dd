//! Thread magazines, the CAS fallback's per-thread front (`magazine.rs`):
//! a freed block stays with the thread that freed it, comes back to it,
//! and goes back to the shared caches when the thread exits, so nothing
//! is lost when threads come and go (more of them than there are
//! magazines). Each case runs in a child process with `rseq=off`.

use rseq_alloc::raw;
use rseq_test_support::child_test;
use std::sync::mpsc;

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Frees a live block from `raw::malloc`.
fn free(p: *mut u8) {
    // SAFETY: every caller passes a live block from `raw::malloc` and does
    // not use it afterwards (the tests compare addresses only).
    unsafe { raw::free(p) }
}

/// Thread A frees a 64 B block; thread B, on the same CPU, does not get it
/// while A lives (it is in A's magazine, not in the CPU's stack); A's next
/// malloc does. Then A frees it again and exits: the exit flush puts it
/// in the CPU's stack, where B's next malloc finds it.
#[test]
fn cas_magazine_is_private_and_flushed_at_exit() {
    child_test(
        "cas_magazine_is_private_and_flushed_at_exit",
        Some("rseq=off"),
        || {
            assert_eq!(rseq_alloc::mode_name(), "cmpxchg");
            pin(0);
            let (to_b, b_rx) = mpsc::channel::<usize>();
            let (to_a, a_rx) = mpsc::channel::<()>();
            let a = std::thread::spawn(move || {
                pin(0);
                let p = raw::malloc(64);
                free(p);
                to_b.send(p as usize).unwrap();
                a_rx.recv().unwrap();
                let again = raw::malloc(64);
                assert_eq!(again, p, "A's magazine gives A its block back");
                free(again);
                p as usize
            });
            let p = b_rx.recv().unwrap();
            let mut held = Vec::new();
            for _ in 0..8 {
                let q = raw::malloc(64);
                assert_ne!(q as usize, p, "B got a block in A's magazine");
                held.push(q);
            }
            to_a.send(()).unwrap();
            assert_eq!(a.join().unwrap(), p);
            let q = raw::malloc(64);
            assert_eq!(q as usize, p, "A's exit put its block in CPU 0's stack");
            free(q);
            for q in held {
                free(q);
            }
        },
    );
}

/// 300 threads one after the other (more than the 256 magazines) each
/// allocate, fill, check and free blocks of four classes, one round
/// holding them all, one round freeing as it goes: after they exit and a
/// trim, nothing is in use and nothing is cached (every magazine was
/// flushed), and the next threads still got magazines (a free then malloc
/// of a class returns the same block).
#[test]
fn cas_exiting_threads_lose_nothing() {
    child_test("cas_exiting_threads_lose_nothing", Some("rseq=off"), || {
        assert_eq!(rseq_alloc::mode_name(), "cmpxchg");
        let sizes = [16usize, 64, 1000, 4000];
        for t in 0..300u64 {
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for (k, &size) in sizes.iter().enumerate() {
                    for i in 0..6u64 {
                        let p = raw::malloc(size) as *mut u64;
                        assert!(!p.is_null());
                        let tag = t << 32 | (k as u64) << 8 | i;
                        // SAFETY: a fresh block of `size` >= 16 bytes.
                        unsafe {
                            p.write(tag);
                            p.add(size / 8 - 1).write(!tag);
                        }
                        held.push((p, size, tag));
                    }
                }
                for &(p, size, tag) in &held {
                    // SAFETY: as above; the block is still ours.
                    unsafe {
                        assert_eq!(p.read(), tag);
                        assert_eq!(p.add(size / 8 - 1).read(), !tag);
                    }
                    free(p.cast());
                }
                for &size in &sizes {
                    let p = raw::malloc(size);
                    free(p);
                    assert_eq!(raw::malloc(size), p, "{size} B: this thread's magazine");
                    free(p);
                }
            })
            .join()
            .unwrap();
        }
        raw::trim();
        let st = raw::stats();
        assert_eq!(st.in_use_bytes, 0, "every block came back: {st:?}");
        assert_eq!(st.cached_bytes, 0, "no magazine kept anything: {st:?}");
    });
}

//! Concurrency stress through the C-flavoured `raw` API: threads allocate
//! and free random sizes (small, large, huge), hand blocks to each other,
//! while another thread keeps calling `trim()` (which drains every per-CPU
//! cache with the membarrier fence). Every block carries a pattern naming
//! its owner and serial number, checked before it is freed: a block handed
//! out twice, or lost by a drain, shows up as a corrupted pattern or as a
//! non-zero in-use count at the end. Runs in rseq mode here and in forced
//! CAS mode in a child process.

use rseq_alloc::raw;
use rseq_test_support::child_test;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const THREADS: usize = 6;
const OPS: usize = 150_000;

struct Block {
    p: usize,
    size: usize,
    tag: u64,
}

fn stamp(b: &Block) {
    let p = b.p as *mut u64;
    let words = b.size / 8;
    // SAFETY: the block has `size` bytes, 16-aligned.
    unsafe {
        p.write(b.tag);
        if words > 1 {
            p.add(words - 1).write(!b.tag);
        }
        if words > 2 {
            p.add(words / 2).write(b.tag.rotate_left(17));
        }
    }
}

fn verify(b: &Block) {
    let p = b.p as *const u64;
    let words = b.size / 8;
    // SAFETY: as in `stamp`.
    unsafe {
        assert_eq!(
            p.read(),
            b.tag,
            "block {:#x} size {} overwritten",
            b.p,
            b.size
        );
        if words > 1 {
            assert_eq!(p.add(words - 1).read(), !b.tag);
        }
        if words > 2 {
            assert_eq!(p.add(words / 2).read(), b.tag.rotate_left(17));
        }
    }
}

fn size_for(r: u64) -> usize {
    match r % 1000 {
        0..=799 => 8 + (r as usize >> 10) % 512,
        800..=979 => 512 + (r as usize >> 10) % (64 << 10),
        980..=997 => (256 << 10) + (r as usize >> 10) % (600 << 10),
        _ => (1 << 20) + (r as usize >> 10) % (3 << 20),
    }
}

fn body() {
    let exchange: Arc<Mutex<Vec<Block>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let trims = Arc::new(AtomicU64::new(0));
    let trimmer = {
        let stop = stop.clone();
        let trims = trims.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                raw::trim();
                trims.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    let workers: Vec<_> = (0..THREADS as u64)
        .map(|t| {
            let exchange = exchange.clone();
            std::thread::spawn(move || {
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1).wrapping_mul(0x1234_5678_9abc);
                let mut live: Vec<Block> = Vec::new();
                for i in 0..OPS as u64 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    match seed % 8 {
                        0..=3 if live.len() < 400 => {
                            let size = size_for(seed >> 8);
                            let p = raw::malloc(size);
                            assert!(!p.is_null());
                            assert_eq!(p as usize % 16, 0);
                            let b = Block {
                                p: p as usize,
                                size,
                                tag: (t << 48) | i,
                            };
                            stamp(&b);
                            live.push(b);
                        }
                        4 if !live.is_empty() => {
                            // hand one to another thread
                            let b = live.swap_remove((seed >> 8) as usize % live.len());
                            exchange.lock().unwrap().push(b);
                        }
                        5 => {
                            // free one handed over by someone else
                            let got = exchange.lock().unwrap().pop();
                            if let Some(b) = got {
                                verify(&b);
                                // SAFETY: live block, freed once.
                                unsafe { raw::free(b.p as *mut u8) };
                            }
                        }
                        6 if !live.is_empty() => {
                            // realloc keeps the head
                            let k = (seed >> 8) as usize % live.len();
                            let b = &mut live[k];
                            verify(b);
                            let new_size = size_for(seed >> 20);
                            // SAFETY: live block.
                            let q = unsafe { raw::realloc(b.p as *mut u8, new_size) };
                            assert!(!q.is_null());
                            // SAFETY: the first word was kept.
                            assert_eq!(unsafe { (q as *const u64).read() }, b.tag);
                            b.p = q as usize;
                            b.size = new_size;
                            stamp(b);
                        }
                        _ if !live.is_empty() => {
                            let b = live.swap_remove((seed >> 8) as usize % live.len());
                            verify(&b);
                            // SAFETY: live block, freed once.
                            unsafe { raw::free(b.p as *mut u8) };
                        }
                        _ => {}
                    }
                }
                for b in live {
                    verify(&b);
                    // SAFETY: live block, freed once.
                    unsafe { raw::free(b.p as *mut u8) };
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    trimmer.join().unwrap();
    for b in exchange.lock().unwrap().drain(..) {
        verify(&b);
        // SAFETY: live block, freed once.
        unsafe { raw::free(b.p as *mut u8) };
    }
    raw::trim();
    let st = raw::stats();
    assert!(trims.load(Ordering::Relaxed) > 0);
    assert_eq!(
        st.in_use_bytes, 0,
        "every block came back exactly once: {st:?}"
    );
    assert_eq!(st.cached_bytes, 0);
    assert_eq!(st.huge_bytes, 0);
    raw::check_invariants();
}

#[test]
fn stress_rseq_mode_with_concurrent_trim() {
    body();
}

#[test]
fn stress_cas_mode_with_concurrent_trim() {
    child_test(
        "stress_cas_mode_with_concurrent_trim",
        Some("rseq=off"),
        || {
            assert_eq!(rseq_alloc::mode_name(), "cmpxchg");
            body();
        },
    );
}

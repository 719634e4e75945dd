//! Model-based property test: random sequences of alloc / alloc_zeroed /
//! realloc / free through `RseqAlloc`'s `GlobalAlloc` methods (called
//! directly; this binary's global allocator is the system one, so the model
//! itself never goes through the allocator under test).
//!
//! Checked after every step: fill patterns of every live block intact, no two
//! live blocks overlap, alignment honoured, usable size >= requested.

use proptest::prelude::*;
use rseq_alloc::RseqAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: usize,
        align_shift: u32,
        zeroed: bool,
    },
    Realloc {
        idx: usize,
        new_size: usize,
    },
    Free {
        idx: usize,
    },
}

fn size_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..=256,
        3 => 257usize..=16 * 1024,
        2 => 16usize * 1024 + 1..=256 * 1024 + 64,
        1 => 256usize * 1024..=(1usize << 20),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (size_strategy(), prop_oneof![4 => 0u32..=4, 1 => 5u32..=16], any::<bool>())
            .prop_map(|(size, align_shift, zeroed)| Op::Alloc { size, align_shift, zeroed }),
        2 => (any::<usize>(), size_strategy()).prop_map(|(idx, new_size)| Op::Realloc { idx, new_size }),
        3 => any::<usize>().prop_map(|idx| Op::Free { idx }),
    ]
}

struct Live {
    layout: Layout,
    seed: u8,
}

/// The byte offsets of a block of `len` bytes that carry the fill pattern:
/// all of them for small blocks; for big ones the first and last 2 KiB and a
/// stride through the middle (keeps the test fast).
fn positions(len: usize) -> Box<dyn Iterator<Item = usize>> {
    if len <= 4096 {
        Box::new(0..len)
    } else {
        Box::new(
            (0..2048)
                .chain(len - 2048..len)
                .chain((2048..len - 2048).step_by(509)),
        )
    }
}

fn pattern(seed: u8, i: usize) -> u8 {
    seed.wrapping_add((i as u8).wrapping_mul(31))
}

fn fill(p: *mut u8, len: usize, seed: u8) {
    for i in positions(len) {
        // SAFETY: i < len, inside the live block.
        unsafe { *p.add(i) = pattern(seed, i) }
    }
}

/// Checks the pattern of a block filled with length `len`, looking only at
/// offsets below `upto` (the part a shrinking realloc keeps).
fn check_upto(p: *const u8, len: usize, upto: usize, seed: u8) -> bool {
    positions(len).filter(|&i| i < upto).all(|i| {
        // SAFETY: i < upto <= the live block's size.
        unsafe { *p.add(i) == pattern(seed, i) }
    })
}

fn check(p: *const u8, len: usize, seed: u8) -> bool {
    check_upto(p, len, len, seed)
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let a = RseqAlloc;
    let mut live: BTreeMap<usize, Live> = BTreeMap::new(); // addr -> block
    let mut seed = 1u8;
    for op in ops {
        match op {
            Op::Alloc {
                size,
                align_shift,
                zeroed,
            } => {
                let layout = Layout::from_size_align(size.max(1), 1 << align_shift).unwrap();
                // SAFETY: non-zero size layout.
                let p = unsafe {
                    if zeroed {
                        a.alloc_zeroed(layout)
                    } else {
                        a.alloc(layout)
                    }
                };
                prop_assert!(!p.is_null());
                prop_assert_eq!(p as usize % layout.align(), 0);
                if zeroed {
                    // SAFETY: the block has layout.size() bytes.
                    let s = unsafe { std::slice::from_raw_parts(p, layout.size()) };
                    prop_assert!(s.iter().all(|&b| b == 0), "alloc_zeroed not zero");
                }
                // SAFETY: live block of ours.
                let usable = unsafe { rseq_alloc::raw::usable_size(p) };
                prop_assert!(usable >= layout.size());
                seed = seed.wrapping_add(37);
                fill(p, layout.size(), seed);
                live.insert(p as usize, Live { layout, seed });
            }
            Op::Realloc { idx, new_size } => {
                if live.is_empty() {
                    continue;
                }
                let key = *live.keys().nth(idx % live.len()).unwrap();
                let b = live.remove(&key).unwrap();
                let new_size = new_size.max(1);
                // SAFETY: live block with this layout; non-zero new size.
                let q = unsafe { a.realloc(key as *mut u8, b.layout, new_size) };
                prop_assert!(!q.is_null());
                prop_assert_eq!(q as usize % b.layout.align(), 0);
                let kept = b.layout.size().min(new_size);
                prop_assert!(
                    check_upto(q, b.layout.size(), kept, b.seed),
                    "realloc lost data"
                );
                let layout = Layout::from_size_align(new_size, b.layout.align()).unwrap();
                seed = seed.wrapping_add(37);
                fill(q, new_size, seed);
                live.insert(q as usize, Live { layout, seed });
            }
            Op::Free { idx } => {
                if live.is_empty() {
                    continue;
                }
                let key = *live.keys().nth(idx % live.len()).unwrap();
                let b = live.remove(&key).unwrap();
                prop_assert!(
                    check(key as *const u8, b.layout.size(), b.seed),
                    "data corrupted"
                );
                // SAFETY: live block with this layout.
                unsafe { a.dealloc(key as *mut u8, b.layout) };
            }
        }
        // No overlap: consecutive live blocks in address order are disjoint.
        let mut prev_end = 0usize;
        for (&addr, b) in &live {
            prop_assert!(addr >= prev_end, "overlap at {addr:#x}");
            prev_end = addr + b.layout.size();
        }
    }
    for (&addr, b) in &live {
        prop_assert!(
            check(addr as *const u8, b.layout.size(), b.seed),
            "data corrupted at end"
        );
        // SAFETY: live block with this layout.
        unsafe { a.dealloc(addr as *mut u8, b.layout) };
    }
    rseq_alloc::raw::check_invariants();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn model_alloc_realloc_free(ops in proptest::collection::vec(op_strategy(), 1..200)) {
        run(ops)?;
    }
}

#[test]
fn impossible_requests_return_null() {
    let a = RseqAlloc;
    for size in [
        usize::MAX,
        usize::MAX - 4096,
        isize::MAX as usize,
        (isize::MAX as usize) - 100,
    ] {
        for align in [1usize, 16, 4096, 1 << 20] {
            if let Ok(layout) =
                Layout::from_size_align(size.min(isize::MAX as usize - align + 1), align)
            {
                // SAFETY: non-zero size.
                let p = unsafe { a.alloc(layout) };
                assert!(p.is_null(), "size {size} align {align}");
                // SAFETY: non-zero size.
                let p = unsafe { a.alloc_zeroed(layout) };
                assert!(p.is_null());
            }
        }
    }
    assert!(rseq_alloc::raw::malloc(usize::MAX).is_null());
    assert!(rseq_alloc::raw::malloc(usize::MAX - 10).is_null());
    assert!(rseq_alloc::raw::malloc_aligned(100, usize::MAX / 2 + 1).is_null());
    assert!(rseq_alloc::raw::malloc_aligned(usize::MAX - 100, 1 << 12).is_null());
    assert!(
        rseq_alloc::raw::malloc_aligned(16, 48).is_null(),
        "not a power of two"
    );
    assert!(rseq_alloc::raw::calloc(usize::MAX / 2).is_null());
    // Huge but possible-looking sizes beyond the address space fail cleanly.
    assert!(rseq_alloc::raw::malloc(1 << 60).is_null());
    // A live block survives a failed realloc.
    let p = rseq_alloc::raw::malloc(100);
    assert!(!p.is_null());
    // SAFETY: p is live.
    unsafe {
        *p = 42;
        let q = rseq_alloc::raw::realloc(p, usize::MAX - 1000);
        assert!(q.is_null());
        assert_eq!(*p, 42);
        rseq_alloc::raw::free(p);
    }
}

#[test]
fn every_alignment_up_to_and_beyond_page() {
    let a = RseqAlloc;
    let mut blocks = Vec::new();
    for shift in 0..=24u32 {
        for size in [1usize, 7, 16, 100, 4096, 10_000, 300_000] {
            let layout = Layout::from_size_align(size, 1 << shift).unwrap();
            // SAFETY: non-zero size.
            let p = unsafe { a.alloc(layout) };
            assert!(!p.is_null());
            assert_eq!(p as usize % (1 << shift), 0, "size {size} align 2^{shift}");
            // SAFETY: block of `size` bytes.
            unsafe { p.write_bytes(shift as u8, size) };
            blocks.push((p, layout));
        }
    }
    for (p, layout) in blocks {
        // SAFETY: live block of that size.
        assert_eq!(
            unsafe { *p.add(layout.size() - 1) },
            layout.align().trailing_zeros() as u8
        );
        // SAFETY: live block with this layout.
        unsafe { a.dealloc(p, layout) };
    }
    // Alignments far beyond the page: address space is reserved, not
    // committed, for the slack.
    for shift in [26u32, 30, 34] {
        let layout = Layout::from_size_align(100, 1 << shift).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { a.alloc(layout) };
        if !p.is_null() {
            assert_eq!(p as usize % (1 << shift), 0);
            // SAFETY: 100-byte block.
            unsafe {
                p.write_bytes(7, 100);
                a.dealloc(p, layout);
            }
        }
    }
    rseq_alloc::raw::check_invariants();
}

#[test]
fn zero_size_malloc_is_unique() {
    let p = rseq_alloc::raw::malloc(0);
    let q = rseq_alloc::raw::malloc(0);
    assert!(!p.is_null() && !q.is_null() && p != q);
    // SAFETY: live blocks.
    unsafe {
        assert!(rseq_alloc::raw::usable_size(p) >= 16);
        rseq_alloc::raw::free(p);
        rseq_alloc::raw::free(q);
        rseq_alloc::raw::free(std::ptr::null_mut());
    }
}

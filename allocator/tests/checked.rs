//! `RseqAllocChecked`: every `dealloc` checks its layout against the page
//! map. A layout that does not match the block aborts with
//! `rseq-malloc: free(): size N does not match the block 0x... of M bytes`
//! (small blocks freed as smaller or larger ones, a large block freed as a
//! small one), in rseq and CAS modes; matching layouts of every kind of
//! block free exactly what they allocated (the heap's `allocated` is back
//! where it started, every block's contents intact until its free), also
//! for blocks beyond the page map's first GiB and for sizes read back from
//! the blocks across threads. Each case runs in a child process.

mod common;
use common::announce;
use rseq_alloc::RseqAllocChecked;
use rseq_test_support::{child_test, class_sizes, pin_to_cpu};
use std::alloc::{GlobalAlloc, Layout};

const CASE_VAR: &str = "RSEQ_ALLOC_CHECKED_CASE";
const A: RseqAllocChecked = RseqAllocChecked;

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// A block of `size` bytes from `A`, announced, freed with `size_freed`.
fn mismatch(size: usize, size_freed: usize) {
    // SAFETY: the second layout is wrong on purpose: the allocator must
    // abort before touching anything.
    unsafe {
        let p = A.alloc(layout(size, 8));
        assert!(!p.is_null());
        announce(p);
        A.dealloc(p, layout(size_freed, 8));
    }
}

fn case_body(case: &str) {
    match case {
        "smaller" => mismatch(64, 16),
        "larger" => mismatch(16, 64),
        "larger_than_the_tables" => mismatch(64, 100_000),
        "large_as_small" => mismatch(300 << 10, 64),
        "twice:40" | "twice:20000" => {
            let l = layout(case[6..].parse().unwrap(), 8);
            // SAFETY: the second dealloc is the double free under test.
            unsafe {
                let p = A.alloc(l);
                A.dealloc(p, l);
                announce(p);
                A.dealloc(p, l);
            }
        }
        "far_smaller" => {
            let p = far_small_block(48);
            announce(p);
            // SAFETY: as in `mismatch`.
            unsafe { A.dealloc(p, layout(16, 8)) };
        }
        _ => panic!("unknown case {case}"),
    }
}

#[test]
fn child_entry() {
    common::case_entry(CASE_VAR, case_body);
}

/// Runs `case` in a child (with `conf`) and asserts that it died by SIGABRT
/// after printing exactly the size-mismatch line for the announced block.
fn expect_mismatch(case: &str, conf: Option<&str>, size: usize, block: usize) {
    common::expect_abort_line(CASE_VAR, case, conf, |addr| {
        format!(
            "rseq-malloc: free(): size {size} does not match the block 0x{addr} of {block} bytes"
        )
    });
}

#[test]
fn mismatched_layouts_abort() {
    for conf in [None, Some("rseq=off")] {
        expect_mismatch("smaller", conf, 16, 64);
        expect_mismatch("larger", conf, 64, 16);
        expect_mismatch("larger_than_the_tables", conf, 100_000, 64);
        // 300 KiB is a page-heap block of 38 pages of 8 KiB.
        expect_mismatch("large_as_small", conf, 64, 38 << 13);
    }
}

#[test]
fn mismatched_layout_beyond_the_first_gib_aborts() {
    expect_mismatch("far_smaller", None, 16, 48);
}

/// A double free through `RseqAllocChecked::dealloc` is reported as for
/// `free` (the page map's class matches, so the free mark decides), for a
/// block of the fast path's tables and one beyond them.
#[test]
fn double_dealloc_aborts() {
    for conf in [None, Some("rseq=off")] {
        for case in ["twice:40", "twice:20000"] {
            common::expect_pointer_abort(CASE_VAR, case, conf, "free()", "double free");
        }
    }
}

/// Fills `len` bytes at `p` with a pattern of `tag`.
fn fill(p: *mut u8, len: usize, tag: usize) {
    for i in (0..len).step_by(61) {
        // SAFETY: `p` is a live block of at least `len` bytes.
        unsafe { p.add(i).write((tag ^ i) as u8) };
    }
}

/// Checks the pattern `fill` wrote.
fn check(p: *mut u8, len: usize, tag: usize) {
    for i in (0..len).step_by(61) {
        // SAFETY: as in `fill`.
        let b = unsafe { p.add(i).read() };
        assert_eq!(b, (tag ^ i) as u8, "block {p:?} of {len} B changed at {i}");
    }
}

/// Every class size (and one byte less), large and huge blocks, at
/// alignments 8 to 4096, allocated, filled, checked and freed with their
/// layouts, three rounds: `allocated` ends where it started.
#[test]
fn matching_layouts_free_every_kind_of_block() {
    child_test(
        "matching_layouts_free_every_kind_of_block",
        None,
        every_kind_of_block,
    );
}

/// `matching_layouts_free_every_kind_of_block` in CAS mode.
#[test]
fn matching_layouts_free_every_kind_of_block_cas() {
    child_test(
        "matching_layouts_free_every_kind_of_block_cas",
        Some("rseq=off"),
        every_kind_of_block,
    );
}

fn every_kind_of_block() {
    let before = rseq_alloc::stats().allocated;
    let mut sizes = class_sizes();
    sizes.extend(class_sizes().iter().map(|s| s - 1).filter(|&s| s > 0));
    sizes.extend([300 << 10, 1 << 20, 3 << 20]);
    for round in 0..3 {
        let mut live = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let align = 8 << ((i + round) % 10);
            let l = layout(size, align);
            // SAFETY: a non-zero size.
            let p = unsafe { A.alloc(l) };
            assert!(!p.is_null() && (p as usize).is_multiple_of(align), "{l:?}");
            fill(p, size, i);
            live.push((p, l, i));
        }
        for (p, l, i) in live {
            check(p, l.size(), i);
            // SAFETY: allocated above with `l`, freed once.
            unsafe { A.dealloc(p, l) };
        }
    }
    assert_eq!(rseq_alloc::stats().allocated, before, "blocks lost");
}

/// A small block in a GiB other than the first heap block's (the page
/// map's first leaf), pushing the heap on with 256 KiB blocks that stay
/// allocated, as do the small blocks on the way (untouched: address space,
/// not memory).
fn far_small_block(size: usize) -> *mut u8 {
    // SAFETY: non-zero sizes.
    let first = unsafe { A.alloc(layout(size, 8)) };
    for _ in 0..16384 {
        // SAFETY: as above; the block is kept for ever.
        let pad = unsafe { A.alloc(layout(256 << 10, 8)) };
        assert!(!pad.is_null());
        // SAFETY: as above.
        let p = unsafe { A.alloc(layout(size, 8)) };
        if p as usize >> 30 != first as usize >> 30 {
            return p;
        }
    }
    panic!("no small block outside the first GiB");
}

/// Small blocks beyond the first leaf's GiB (where the masked lookup reads
/// another page's entry) are freed with their layouts and come back once
/// each; the ones still live keep their contents.
#[test]
fn blocks_beyond_the_first_gib() {
    child_test("blocks_beyond_the_first_gib", None, || {
        pin_to_cpu(0);
        const N: usize = 16;
        let l = layout(48, 8);
        let mut far = vec![far_small_block(48)];
        // SAFETY: non-zero size.
        far.extend((1..N).map(|_| unsafe { A.alloc(l) }));
        let beyond = far[0] as usize >> 30;
        assert!(far.iter().filter(|p| **p as usize >> 30 == beyond).count() > 1);
        for (i, &p) in far.iter().enumerate() {
            fill(p, 48, i);
        }
        for &p in far.iter().step_by(2) {
            // SAFETY: allocated with `l`, freed once.
            unsafe { A.dealloc(p, l) };
        }
        for (i, &p) in far.iter().enumerate().skip(1).step_by(2) {
            check(p, 48, i);
        }
        // SAFETY: non-zero size.
        let again: Vec<*mut u8> = (0..N / 2).map(|_| unsafe { A.alloc(l) }).collect();
        for &p in far.iter().step_by(2) {
            assert_eq!(again.iter().filter(|&&q| q == p).count(), 1, "{p:?}");
        }
        for p in again.into_iter().chain(far.into_iter().skip(1).step_by(2)) {
            // SAFETY: live blocks of `l`, freed once.
            unsafe { A.dealloc(p, l) };
        }
    });
}

/// Larson-style churn through `A`: threads replace random slots of a shared
/// array; each block keeps its size in its first word and its slot number
/// in its second, and the thread that takes it out reads the size from
/// there for `dealloc` (the C-style pattern whose sizes arrive late). Every
/// block freed holds what its maker wrote, and `allocated` is back where
/// it started.
#[test]
fn sizes_read_from_the_blocks_across_threads() {
    child_test("sizes_read_from_the_blocks_across_threads", None, churn);
}

/// `sizes_read_from_the_blocks_across_threads` in CAS mode.
#[test]
fn sizes_read_from_the_blocks_across_threads_cas() {
    child_test(
        "sizes_read_from_the_blocks_across_threads_cas",
        Some("rseq=off"),
        churn,
    );
}

fn churn() {
    use std::sync::atomic::{AtomicPtr, Ordering};
    const SLOTS: usize = 4096;
    const THREADS: usize = 4;
    const OPS: usize = 50_000;
    let before = rseq_alloc::stats().allocated;
    let make = |size: usize, slot: usize| {
        // SAFETY: size >= 16.
        let p = unsafe { A.alloc(layout(size, 8)) }.cast::<usize>();
        // SAFETY: a fresh block of at least 16 bytes, 8-aligned.
        unsafe {
            p.write(size);
            p.add(1).write(slot);
        }
        p.cast::<u8>()
    };
    let free = |p: *mut u8, slot: usize| {
        let w = p.cast::<usize>();
        // SAFETY: a live block from `make`, taken out of its slot by
        // this thread alone.
        unsafe {
            let size = w.read();
            assert_eq!(w.add(1).read(), slot, "block {p:?} changed");
            A.dealloc(p, layout(size, 8));
        }
    };
    let arr: Vec<AtomicPtr<u8>> = (0..SLOTS)
        .map(|i| AtomicPtr::new(make(16 + i % 1009, i)))
        .collect();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let arr = &arr;
            s.spawn(move || {
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t as u64;
                for _ in 0..OPS {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let slot = (x >> 20) as usize % SLOTS;
                    let size = 16 + (x >> 40) as usize % 1009;
                    let old = arr[slot].swap(make(size, slot), Ordering::AcqRel);
                    free(old, slot);
                }
            });
        }
    });
    for (i, a) in arr.iter().enumerate() {
        free(a.load(Ordering::Relaxed), i);
    }
    assert_eq!(rseq_alloc::stats().allocated, before, "blocks lost");
}

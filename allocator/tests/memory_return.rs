//! Memory goes back to the OS: about 1 GiB in mixed sizes is allocated,
//! touched, freed, then `trim()`; the resident set (from /proc/self/statm)
//! must fall back to within `RSS_BOUND_BYTES` of where it started. Freed
//! huge blocks stay mapped for reuse until they decay or `trim()` unmaps
//! them (checked in /proc/self/maps; tests/decay.rs covers the decay).
//!
//! One test per binary process state: the tests here run sequentially in
//! one function so that no other test's memory disturbs the RSS figures.

mod common;
use common::*;
use rseq_alloc::raw;

/// Allowed resident growth after free + trim: metadata that stays (page-map
/// entries, span records, the per-CPU regions' slot arrays) plus slack for
/// the test harness itself.
const RSS_BOUND_BYTES: usize = 16 << 20;

fn one_gib_round_trip() {
    raw::init();
    let base = rss_bytes();
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut blocks = Vec::with_capacity(1 << 20);
    let mut total = 0usize;
    while total < (1 << 30) {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = (seed >> 33) as usize;
        let size = match r % 100 {
            0..=59 => 16 + r % 1024,                  // small
            60..=89 => 1024 + r % (64 << 10),         // medium classes
            90..=97 => (256 << 10) + r % (700 << 10), // large spans
            _ => (1 << 20) + r % (8 << 20),           // huge mappings
        };
        let p = raw::malloc(size);
        assert!(!p.is_null());
        touch(p, size, (size % 251) as u8);
        blocks.push((p, size));
        total += size;
    }
    let peak = rss_bytes();
    assert!(
        peak >= base + (900 << 20),
        "peak {peak} base {base}: memory was touched"
    );
    // Check contents, free in a scrambled order.
    let n = blocks.len();
    for k in 0..n {
        let i = (k * 7919) % n;
        let (p, size) = blocks[i];
        if p.is_null() {
            continue;
        }
        // SAFETY: live block.
        unsafe {
            assert_eq!(*p, (size % 251) as u8);
            assert_eq!(*p.add(size - 1), (size % 251) as u8);
            raw::free(p);
        }
        blocks[i].0 = std::ptr::null_mut();
    }
    assert!(
        blocks.iter().all(|b| b.0.is_null()),
        "7919 is coprime with n"
    );
    let before_trim = rss_bytes();
    assert!(raw::trim());
    let after = rss_bytes();
    let st = raw::stats();
    eprintln!(
        "rss: base {} MiB, peak {} MiB, after free {} MiB, after trim {} MiB; {st:?}",
        base >> 20,
        peak >> 20,
        before_trim >> 20,
        after >> 20
    );
    assert!(
        after <= base + RSS_BOUND_BYTES,
        "after trim {after} > base {base} + bound"
    );
    assert_eq!(st.huge_bytes, 0);
    assert_eq!(st.cached_bytes, 0, "trim drained the per-CPU caches");
    assert_eq!(st.in_use_bytes, 0);
    raw::check_invariants();
}

fn huge_blocks_are_unmapped() {
    let size = 64 << 20;
    let p = raw::malloc(size);
    assert!(!p.is_null());
    touch(p, size, 9);
    assert!(mapped(p as usize));
    assert!(mapped(p as usize + size - 1));
    let rss_before = rss_bytes();
    // SAFETY: live block.
    unsafe { raw::free(p) };
    assert!(mapped(p as usize), "a freed huge block is kept for reuse");
    assert_eq!(raw::stats().huge_kept_bytes, size);
    assert!(raw::trim());
    assert!(!mapped(p as usize), "huge block still mapped after trim");
    assert!(rss_bytes() + (60 << 20) <= rss_before);
    // realloc of a huge block keeps the data and the table consistent
    let p = raw::malloc(2 << 20);
    touch(p, 2 << 20, 3);
    // SAFETY: live block.
    let q = unsafe { raw::realloc(p, 32 << 20) };
    assert!(!q.is_null());
    // SAFETY: q is live with 32 MiB; first 2 MiB were copied/kept.
    unsafe {
        assert_eq!(*q, 3);
        assert_eq!(*q.add((2 << 20) - 1), 3);
        assert!(raw::usable_size(q) >= 32 << 20);
        raw::free(q);
    }
    assert!(raw::trim());
    assert!(!mapped(q as usize));
}

#[test]
fn memory_returns_to_the_os() {
    huge_blocks_are_unmapped();
    one_gib_round_trip();
}

//! `calloc` of a huge block that reuses a kept range (issue 10, item d):
//! the block reads as zero wherever the range's last user wrote, and the
//! pages nobody touched are not faulted in (a sparse calloc costs what it
//! costs on a fresh mapping, not a memset of the whole range).
//!
//! One test function, so nothing else in this process moves RSS meanwhile;
//! the test harness allocates through glibc, the blocks under test come from
//! `rseq_alloc::raw`.

use rseq_alloc::raw;

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

/// Resident bytes of this process (`/proc/self/statm`).
fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * PAGE
}

/// Writes `v` into byte `at` of every `every`-th page of `[p, p + len)`.
fn scribble(p: *mut u8, len: usize, every: usize, at: usize, v: u8) {
    let mut off = 0;
    while off < len {
        // SAFETY: off + at < len: inside the caller's block.
        unsafe { p.add(off + at).write_volatile(v) };
        off += every * PAGE;
    }
}

/// Index of the first non-zero byte of `[p, p + len)`, if any.
fn first_nonzero(p: *mut u8, len: usize) -> Option<usize> {
    // SAFETY: the caller's live block of `len` readable bytes.
    let s = unsafe { std::slice::from_raw_parts(p, len) };
    s.iter().position(|&b| b != 0)
}

/// A fresh huge block of `len` bytes whose pages follow `pattern`, freed (so its
/// range is kept), then `calloc(len)`: returns the new block and the RSS
/// growth across the calloc. Asserts the range was reused.
fn reuse_zeroed(len: usize, pattern: impl Fn(*mut u8)) -> (*mut u8, isize) {
    // Unmap what earlier cases kept: the block starts from a fresh mapping
    // (nothing resident but what `pattern` writes).
    rseq_alloc::trim();
    let a = raw::malloc(len);
    assert!(!a.is_null());
    pattern(a);
    // SAFETY: `a` is a live block of ours, not used afterwards.
    unsafe { raw::free(a) };
    let before = rss_bytes() as isize;
    let b = raw::calloc(len);
    let grown = rss_bytes() as isize - before;
    assert_eq!(
        b, a,
        "the kept range is reused (else the test tests nothing)"
    );
    (b, grown)
}

#[test]
fn calloc_on_a_kept_range_zeroes_only_what_is_resident() {
    // Dense: every page written, then calloc: all zero.
    let len = 24 * MIB;
    let (b, _) = reuse_zeroed(len, |p| {
        // SAFETY: `p` is a fresh block of `len` bytes.
        unsafe { p.write_bytes(0xa5, len) }
    });
    assert_eq!(first_nonzero(b, len), None, "dense: every byte zero");
    // SAFETY: live, ours.
    unsafe { raw::free(b) };

    // Sparse: one byte in every 64th page, then calloc: zero, and the
    // untouched pages stay out of memory (a memset would fault in 24 MiB).
    let (b, grown) = reuse_zeroed(len, |p| scribble(p, len, 64, 100, 7));
    assert!(
        grown < 4 * MIB as isize,
        "sparse: RSS grew by {grown} bytes"
    );
    assert_eq!(first_nonzero(b, len), None, "sparse: every byte zero");
    // SAFETY: live, ours.
    unsafe { raw::free(b) };

    // Mixed: the first quarter dense, then runs of resident and
    // non-resident pages of every length around the drop threshold, and
    // the last byte.
    let (b, _) = reuse_zeroed(len, |p| {
        // SAFETY: `p` is a fresh block of `len` bytes.
        unsafe { p.write_bytes(0x3c, len / 4) };
        let mut off = len / 4;
        let mut k = 1;
        while off < len {
            let run = (k % 37 + 1) * PAGE;
            let end = (off + run).min(len);
            if k % 2 == 0 {
                // SAFETY: inside the block.
                unsafe { p.add(off).write_bytes(0x11, end - off) };
            }
            off = end;
            k += 1;
        }
        // SAFETY: the last byte of the block.
        unsafe { p.add(len - 1).write(0xff) };
    });
    assert_eq!(first_nonzero(b, len), None, "mixed: every byte zero");
    // SAFETY: live, ours.
    unsafe { raw::free(b) };
}

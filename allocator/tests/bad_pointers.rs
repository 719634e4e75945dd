//! Bad input: foreign, interior and doubly freed pointers are reported with
//! `rseq-malloc: <who>: invalid pointer 0x...` and the process aborts. Each
//! case runs in a child process (this test executable, selected by an
//! environment variable).

mod common;
use common::announce;

const CASE_VAR: &str = "RSEQ_ALLOC_BAD_CASE";

/// Announces `p` and frees it.
///
/// # Safety
///
/// `p` goes to `raw::free` as it is: the caller passes an invalid pointer
/// on purpose and relies on the allocator aborting before it touches
/// anything (the property under test).
unsafe fn free_announced(p: *mut u8) {
    announce(p);
    // SAFETY: the caller's contract above: the allocator must reject `p`
    // without using it.
    unsafe { rseq_alloc::raw::free(p) };
}

/// Frees a fresh block of `size` bytes, then frees it again (announced).
///
/// # Safety
///
/// As [`free_announced`]: the second free must abort.
unsafe fn double_free(size: usize) {
    let p = rseq_alloc::raw::malloc(size);
    // SAFETY: a live block, freed once here; the second free below is the
    // case under test.
    unsafe {
        rseq_alloc::raw::free(p);
        free_announced(p);
    }
}

fn case_body(case: &str) {
    use rseq_alloc::raw;
    // SAFETY: each case deliberately passes an invalid pointer; the
    // allocator must abort before touching anything.
    unsafe {
        match case {
            "foreign_heap" => free_announced(libc::malloc(64) as *mut u8), // glibc's block
            "foreign_stack" => {
                let mut x = 5u64;
                free_announced(&mut x as *mut u64 as *mut u8);
            }
            "interior_small" => free_announced(raw::malloc(100).add(16)),
            "interior_large" => free_announced(raw::malloc(400 << 10).add(8192)),
            "double_free_large" => double_free(500 << 10),
            "double_free_huge" => double_free(8 << 20),
            "interior_huge" => free_announced(raw::malloc(8 << 20).add(4096)),
            "free_in_kept_range" => {
                // The freed 8 MiB range is kept; a 2 MiB block is split off
                // its front; the rest of the range is free memory, not a
                // block, and must be rejected without being touched.
                let p = raw::malloc(8 << 20);
                raw::free(p);
                let q = raw::malloc(2 << 20);
                assert_eq!(q, p, "the kept range is reused");
                free_announced(p.add(2 << 20));
            }
            "beyond_commit" => {
                // 8 GiB above a heap block, where no heap chunk is mapped
                // (or is a page-map leaf's GiB, but no span): must be
                // reported, not fault.
                free_announced(raw::malloc(16).wrapping_add(8 << 30));
            }
            "realloc_foreign" => {
                let p = libc::malloc(64) as *mut u8;
                announce(p);
                raw::realloc(p, 100);
            }
            "usable_size_interior" => {
                let p = raw::malloc(1000).add(8);
                announce(p);
                raw::usable_size(p);
            }
            _ => {}
        }
    }
}

fn expect_abort(case: &str, who: &str) {
    common::expect_pointer_abort(CASE_VAR, case, None, who, "invalid pointer");
}

#[test]
fn child_entry() {
    common::case_entry(CASE_VAR, case_body);
}

#[test]
fn foreign_pointers_abort() {
    expect_abort("foreign_heap", "free()");
    expect_abort("foreign_stack", "free()");
    expect_abort("beyond_commit", "free()");
    expect_abort("realloc_foreign", "realloc()");
}

#[test]
fn interior_pointers_abort() {
    expect_abort("interior_small", "free()");
    expect_abort("interior_large", "free()");
    expect_abort("usable_size_interior", "malloc_usable_size()");
    expect_abort("interior_huge", "free()");
}

#[test]
fn double_frees_abort() {
    expect_abort("double_free_large", "free()");
    expect_abort("double_free_huge", "free()");
    expect_abort("free_in_kept_range", "free()");
}

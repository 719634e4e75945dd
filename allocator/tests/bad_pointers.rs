//! Bad input: foreign, interior and doubly freed pointers are reported with
//! `rseq-malloc: <who>: invalid pointer 0x...` and the process aborts. Each
//! case runs in a child process (this test executable, selected by an
//! environment variable).

mod common;
use common::announce;

const CASE_VAR: &str = "RSEQ_ALLOC_BAD_CASE";

fn case_body(case: &str) {
    use rseq_alloc::raw;
    // SAFETY: each case deliberately passes an invalid pointer; the
    // allocator must abort before touching anything.
    unsafe {
        match case {
            "foreign_heap" => {
                let p = libc::malloc(64) as *mut u8; // glibc's block
                announce(p);
                raw::free(p);
            }
            "foreign_stack" => {
                let mut x = 5u64;
                let p = &mut x as *mut u64 as *mut u8;
                announce(p);
                raw::free(p);
            }
            "interior_small" => {
                let p = raw::malloc(100).add(16);
                announce(p);
                raw::free(p);
            }
            "interior_large" => {
                let p = raw::malloc(400 << 10).add(8192);
                announce(p);
                raw::free(p);
            }
            "double_free_large" => {
                let p = raw::malloc(500 << 10);
                raw::free(p);
                announce(p);
                raw::free(p);
            }
            "double_free_huge" => {
                let p = raw::malloc(8 << 20);
                raw::free(p);
                announce(p);
                raw::free(p);
            }
            "interior_huge" => {
                let p = raw::malloc(8 << 20).add(4096);
                announce(p);
                raw::free(p);
            }
            "free_in_kept_range" => {
                // The freed 8 MiB range is kept; a 2 MiB block is split off
                // its front; the rest of the range is free memory, not a
                // block, and must be rejected without being touched.
                let p = raw::malloc(8 << 20);
                raw::free(p);
                let q = raw::malloc(2 << 20);
                assert_eq!(q, p, "the kept range is reused");
                let r = p.add(2 << 20);
                announce(r);
                raw::free(r);
            }
            "beyond_commit" => {
                // 8 GiB above a heap block, where no heap chunk is mapped
                // (or is a page-map leaf's GiB, but no span): must be
                // reported, not fault.
                let p = raw::malloc(16).wrapping_add(8 << 30);
                announce(p);
                raw::free(p);
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

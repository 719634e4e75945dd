//! Bad input to `librseq_malloc` (ffi/tests/c/bad_input.c), each case in its own
//! child process: the exact `rseq-malloc: <who>: invalid pointer 0x...`
//! message naming the pointer the program passed, death by SIGABRT, and the
//! program's own check, printed just before the bad call, that its other
//! live blocks were intact.

mod ffi_common;

use std::ffi::OsStr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use ffi_common::*;
use rseq_test_support::class_sizes;

fn bad_input_exe() -> &'static PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    // The bad calls are the point: no builtin folding, no warnings.
    let extra = [
        OsStr::new("-fno-builtin"),
        OsStr::new("-Wno-free-nonheap-object"),
    ];
    compile_c_once(&EXE, "bad-input", "bad_input", &extra)
}

/// Parses "0x1a2b" (as printed by glibc's `%p`).
fn parse_ptr(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim().strip_prefix("0x")?, 16).ok()
}

fn check_case(case: &str, who: &str) {
    check_case_says(case, who, "invalid pointer");
}

fn check_case_says(case: &str, who: &str, what: &str) {
    for mode in Mode::PRELOADED {
        let mut cmd = Command::new(bad_input_exe());
        cmd.arg(case);
        mode.apply(&mut cmd, false);
        // SAFETY: between fork and exec the closure only calls setrlimit,
        // which is async-signal-safe: no core file for the expected abort.
        unsafe {
            cmd.pre_exec(|| {
                let zero = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &zero);
                Ok(())
            });
        }
        let r = run(&mut cmd, Duration::from_secs(60));
        let label = format!("bad input `{case}` ({mode:?})");
        let context = format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            r.stdout,
            tail(&r.stderr, 2000)
        );

        assert!(
            r.stdout.contains("heap intact: 1000 blocks verified"),
            "{label}: the heap was not intact before the bad call\n{context}"
        );
        assert!(
            !r.stdout.contains("NOT REACHED"),
            "{label}: the bad call returned instead of aborting\n{context}"
        );
        assert_eq!(
            r.status.signal(),
            Some(libc::SIGABRT),
            "{label}: want death by SIGABRT, got {}\n{context}",
            r.describe()
        );
        let bad = r
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("bad pointer: "))
            .and_then(parse_ptr)
            .unwrap_or_else(|| panic!("{label}: no `bad pointer:` line\n{context}"));
        let prefix = format!("rseq-malloc: {who}: {what} 0x");
        let line = r
            .stderr
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{label}: no `{prefix}...` line on stderr\n{context}"));
        let hex: String = line[prefix.len()..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .collect();
        let hex = hex.as_str();
        assert!(
            !hex.is_empty()
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{label}: the message must end with the pointer in lowercase hex: `{line}`"
        );
        assert_eq!(
            parse_ptr(&format!("0x{hex}")),
            Some(bad),
            "{label}: the message names another pointer than the one passed ({bad:#x}): `{line}`"
        );
    }
}

#[test]
fn ffi_bad_free_of_stack_pointer() {
    check_case("stack", "free()");
}

#[test]
fn ffi_bad_free_of_global_pointer() {
    check_case("global", "free()");
}

#[test]
fn ffi_bad_free_of_interior_pointer() {
    check_case("interior", "free()");
}

#[test]
fn ffi_bad_free_of_interior_pointer_large_block() {
    check_case("interior_large", "free()");
}

#[test]
fn ffi_bad_free_of_interior_pointer_medium_block() {
    check_case("interior_medium", "free()");
}

/// A block of pages (page heap): its span is free after the first free.
#[test]
fn ffi_bad_double_free_medium_block() {
    check_case("double_medium", "free()");
}

/// A directly mapped block: unmapped after the first free.
#[test]
fn ffi_bad_double_free_large_block() {
    check_case("double_large", "free()");
}

#[test]
fn ffi_bad_free_of_glibc_heap_pointer() {
    check_case("foreign", "free()");
}

#[test]
fn ffi_bad_realloc_of_stack_pointer() {
    check_case("realloc_stack", "realloc()");
}

#[test]
fn ffi_bad_realloc_of_interior_pointer() {
    check_case("realloc_interior", "realloc()");
}

/// `realloc(p, 0)` frees `p`; the message names the function called.
#[test]
fn ffi_bad_realloc_to_zero_of_stack_pointer() {
    check_case("realloc_zero_stack", "realloc()");
}

#[test]
fn ffi_bad_malloc_usable_size_of_stack_pointer() {
    check_case("usable_stack", "malloc_usable_size()");
}

/// A small block freed twice at once, at every size class: the block sits
/// in a per-CPU cache (or, in CAS mode, in its per-CPU stack).
#[test]
fn ffi_bad_double_free_small_every_class() {
    for size in class_sizes() {
        check_case_says(&format!("double_small:{size}"), "free()", "double free");
    }
}

/// The block sank below 20 000 later frees of its size: out of the cache,
/// through the transfer stack, onto its span's free list.
#[test]
fn ffi_bad_double_free_small_after_many_frees() {
    for size in [32, 4000, 20000] {
        check_case_says(&format!("double_after:{size}"), "free()", "double free");
    }
}

/// First free on CPU 0, second on another thread pinned to CPU 1.
#[test]
fn ffi_bad_double_free_small_other_cpu() {
    check_case_says("double_thread:32", "free()", "double free");
    check_case_says("double_thread:4000", "free()", "double free");
}

#[test]
fn ffi_bad_realloc_of_freed_small_block() {
    check_case_says("realloc_freed:32", "realloc()", "double free");
    check_case_says("realloc_freed:4000", "realloc()", "double free");
}

/// `free_sized(malloc(100), 5000)`: the size does not match the block.
#[test]
fn ffi_bad_free_sized_wrong_size() {
    check_case_says(
        "free_sized_wrong",
        "free_sized()",
        "size 5000 does not match the block",
    );
}

/// A multiple of the object size in a span's tail waste is not an object.
#[test]
fn ffi_bad_free_of_tail_waste_pointer() {
    check_case("tail_waste", "free()");
}

/// Runs `case`, which is not a bad call, in every preloaded mode: it must
/// exit 0 and print `<prefix>N<suffix>`; returns N for each mode.
fn check_good_case(case: &str, prefix: &str, suffix: &str) -> Vec<(Mode, u64)> {
    Mode::PRELOADED
        .into_iter()
        .map(|mode| {
            let mut cmd = Command::new(bad_input_exe());
            cmd.arg(case);
            mode.apply(&mut cmd, false);
            let r = run(&mut cmd, Duration::from_secs(120));
            assert!(
                r.status.success(),
                "{case} ({mode:?}): {}\n{}\n{}",
                r.describe(),
                r.stdout,
                tail(&r.stderr, 2000)
            );
            let n = r
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|l| l.strip_suffix(suffix))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{case} ({mode:?}): no result line: {}", r.stdout));
            (mode, n)
        })
        .collect()
}

/// Live blocks holding the free mark by chance are freed normally.
#[test]
fn ffi_marked_live_blocks_are_not_reported() {
    for (mode, frees) in check_good_case("marked_live", "marked ok: ", " frees") {
        assert!(frees > 50_000, "marked_live ({mode:?}): {frees} frees");
    }
}

/// Small blocks outside the page map's first leaf (`free` looks them up
/// through the root, out of line): freed and allocated again, each once,
/// with their neighbours intact.
#[test]
fn ffi_small_blocks_beyond_the_first_gib_are_freed() {
    for (mode, far) in check_good_case("far_blocks", "far ok: ", " blocks") {
        assert!(
            far >= 1,
            "far_blocks ({mode:?}): no block outside the first GiB"
        );
    }
}

/// The same validation outside the first leaf's GiB: an interior pointer
/// and a double free of a small block there.
#[test]
fn ffi_bad_free_beyond_the_first_gib() {
    check_case("interior_far", "free()");
    check_case_says("double_far", "free()", "double free");
}

//! Bad input to `librseq_malloc` (tests/c/bad_input.c), each case in its own
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

fn bad_input_exe() -> &'static PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let dir = scratch("bad-input");
        compile(
            "cc",
            &["bad_input.c"],
            &dir,
            "bad_input",
            // The bad calls are the point: no builtin folding, no warnings.
            &[
                OsStr::new("-fno-builtin"),
                OsStr::new("-Wno-free-nonheap-object"),
            ],
        )
    })
}

/// Parses "0x1a2b" (as printed by glibc's `%p`).
fn parse_ptr(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim().strip_prefix("0x")?, 16).ok()
}

fn check_case(case: &str, who: &str) {
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
        let prefix = format!("rseq-malloc: {who}: invalid pointer 0x");
        let line = r
            .stderr
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{label}: no `{prefix}...` line on stderr\n{context}"));
        let hex = &line[prefix.len()..];
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
/// (A small block's double free, into a per-CPU cache, is not detected.)
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

//! C semantics of issue 9 (items 6-9) under LD_PRELOAD of `librseq_malloc`:
//! `free` keeps `errno` (also when munmap fails at the map-count limit),
//! `malloc_stats` prints its report under a pending cancellation request,
//! `aligned_alloc(65, 64)` is NULL with EINVAL (ffi/tests/c/errno_cancel_align.c);
//! and under valgrind `verbose=1` prints exactly one init line, the
//! program's, in `mode=cmpxchg`.

mod ffi_common;

use std::process::Command;
use std::time::Duration;

use ffi_common::*;

#[test]
fn ffi_free_errno_stats_cancellation_aligned_alloc() {
    let dir = scratch("errno-cancel-align");
    let exe = compile_c(&dir, "errno_cancel_align");
    for mode in Mode::PRELOADED {
        let mut cmd = Command::new(&exe);
        mode.apply(&mut cmd, true);
        let r = run(&mut cmd, Duration::from_secs(120));
        let what = format!("errno_cancel_align ({mode:?})");
        r.assert_ok(&what);
        assert_eq!(
            r.stdout.trim_end(),
            "errno_cancel_align: 29 checks passed",
            "{what}"
        );
        assert_init_line(&r.stderr, mode, &what);
        // The report printed by the thread with a pending cancellation:
        // its header and every line after it, once.
        let lines: Vec<&str> = r.stderr.lines().collect();
        let at = lines
            .iter()
            .position(|l| *l == "rseq-malloc: stats")
            .unwrap_or_else(|| panic!("{what}: no report on stderr:\n{}", r.stderr));
        assert_eq!(r.stderr.matches("rseq-malloc: stats").count(), 1, "{what}");
        for (i, prefix) in [
            "  mode=",
            "  mapped_bytes=",
            "  huge_kept_bytes=",
            "  fast_hits=",
        ]
        .iter()
        .enumerate()
        {
            assert!(
                lines.get(at + 1 + i).is_some_and(|l| l.starts_with(prefix)),
                "{what}: report line {} should start with {prefix:?}:\n{}",
                i + 1,
                r.stderr
            );
        }
    }
}

/// `RSEQ_MALLOC_CONF=verbose=1 LD_PRELOAD=... valgrind prog`: the Debian
/// wrapper script's shell and valgrind's launcher run natively with the
/// library preloaded before the program runs under valgrind; only the
/// program may print an init line, and its mode is `cmpxchg` (valgrind
/// does not implement rseq).
#[test]
fn ffi_valgrind_prints_one_init_line() {
    let valgrind = require_tool("valgrind", "valgrind");
    let dir = scratch("valgrind-one-line");
    let exe = compile_c(&dir, "hello_alloc");
    let mut cmd = Command::new(valgrind);
    cmd.args([
        "--quiet",
        "--error-exitcode=99",
        "--soname-synonyms=somalloc=nouserintercepts",
    ])
    .arg(&exe);
    Mode::Preload.apply(&mut cmd, true);
    let r = run(&mut cmd, Duration::from_secs(120));
    r.assert_ok("hello_alloc under valgrind");
    let lines = init_lines(&r.stderr);
    assert_eq!(
        lines.len(),
        1,
        "exactly one init line under valgrind: {lines:?}\n{}",
        tail(&r.stderr, 3000)
    );
    assert_eq!(lines[0].mode, "cmpxchg", "{lines:?}");
}

//! fork() against `librseq_malloc` under LD_PRELOAD (issue 9, items 2 and
//! 3), each program also run without the library as the reference:
//! - `fork_stdio_deadlock.c`: threads in getline, open_memstream, fflush(NULL),
//!   fopen/fclose and realloc while the main thread forks 500 times; every
//!   child allocates, uses stdio and exits 0. A lock-order cycle between the
//!   allocator's fork handler and glibc's stdio list lock hangs it (the
//!   program's alarm() then fails it with a message).
//! - `fork_signal.c`: a single-threaded process forks 500 times from a
//!   SIGALRM handler that interrupts malloc/free (with `trim`, almost always
//!   inside a locked section); every child allocates and exits 0 (the
//!   glibc reference run's children only exit: glibc's own children crash
//!   in a few percent of such forks when they allocate).

mod ffi_common;

use std::process::Command;
use std::time::Duration;

use ffi_common::*;

/// The programs enforce their own 60 s deadline; this one only catches a
/// program that cannot even report.
const TIMEOUT: Duration = Duration::from_secs(150);

fn check(what: &str, r: &Run, expect: &str) {
    r.assert_ok(what);
    assert!(
        r.stdout.contains(expect),
        "{what}: expected `{expect}` in stdout:\n{}\n--- stderr ---\n{}",
        r.stdout,
        tail(&r.stderr, 3000)
    );
    eprintln!("{what}: {} in {:.1?}", r.stdout.trim_end(), r.elapsed);
}

/// Runs `cmd` in `mode` (`verbose=1` when preloaded), [`check`]s it and,
/// when preloaded, its init line.
fn run_and_check(cmd: &mut Command, mode: Mode, what: &str, expect: &str) {
    mode.apply(cmd, mode != Mode::Plain);
    let r = run(cmd, TIMEOUT);
    check(what, &r, expect);
    if mode != Mode::Plain {
        assert_init_line(&r.stderr, mode, what);
    }
}

#[test]
fn ffi_fork_while_threads_use_stdio() {
    let dir = scratch("fork-stdio-deadlock");
    let exe = compile_c(&dir, "fork_stdio_deadlock");
    let expect = "fork_stdio_deadlock: 500 forks, 500 children exited 0";
    for mode in [Mode::Plain, Mode::Preload, Mode::PreloadRseqOff] {
        let mut cmd = Command::new(&exe);
        cmd.arg(dir.join(format!("lines-{mode:?}.txt")));
        let what = format!("fork while threads use stdio ({mode:?})");
        run_and_check(&mut cmd, mode, &what, expect);
    }
}

#[test]
fn ffi_fork_from_signal_handler_interrupting_malloc() {
    let dir = scratch("fork-signal");
    let exe = compile_c(&dir, "fork_signal");
    let expect = "fork_signal: 500 forks from the handler, 500 children exited 0";
    let runs: [(Mode, &[&str]); 5] = [
        // glibc's children cannot allocate reliably here (see the C file).
        (Mode::Plain, &["500", "child-noalloc"]),
        (Mode::Preload, &["500"]),
        (Mode::Preload, &["500", "trim"]),
        (Mode::PreloadRseqOff, &["500"]),
        (Mode::PreloadRseqOff, &["500", "trim"]),
    ];
    for (mode, args) in runs {
        let mut cmd = Command::new(&exe);
        cmd.args(args);
        let what = format!("fork from a signal handler ({mode:?}, {args:?})");
        run_and_check(&mut cmd, mode, &what, expect);
    }
}

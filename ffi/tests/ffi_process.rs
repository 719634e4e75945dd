//! Process-level behaviour of `librseq_malloc` under LD_PRELOAD, each with
//! the default configuration and with `rseq=off`:
//! - fork() from a multi-threaded parent whose threads keep allocating;
//! - dlopen/dlclose in a loop of a library that allocates (and uses TLS);
//! - thousands of threads created and exited, with RSS staying bounded.

mod ffi_common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ffi_common::*;

/// Runs `exe args` preloaded in both modes and checks the exit status, the
/// init line and that stdout contains `expect`.
fn run_preloaded_both(what: &str, exe: &Path, args: &[&OsStr], expect: &str, timeout: Duration) {
    for mode in Mode::PRELOADED {
        let mut cmd = Command::new(exe);
        cmd.args(args);
        mode.apply(&mut cmd, true);
        let r = run(&mut cmd, timeout);
        let label = format!("{what} ({mode:?})");
        r.assert_ok(&label);
        assert_init_line(&r.stderr, mode, &label);
        assert!(
            r.stdout.contains(expect),
            "{label}: expected `{expect}` in stdout:\n{}",
            r.stdout
        );
        eprintln!("{label}: {} in {:.1?}", r.stdout.trim_end(), r.elapsed);
    }
}

/// Compiles `ffi/tests/c/<name>.c` (in the scratch directory `name` with
/// dashes) and runs it without arguments by [`run_preloaded_both`].
fn run_c_preloaded_both(name: &str, what: &str, expect: &str, timeout_secs: u64) {
    let dir = scratch(&name.replace('_', "-"));
    let exe = compile_c(&dir, name);
    run_preloaded_both(what, &exe, &[], expect, Duration::from_secs(timeout_secs));
}

/// `dlopen_lib.c` (allocates in its constructor, frees in its destructor,
/// uses TLS) as the shared library `dir/<out_name>`.
fn compile_allocating_lib(dir: &Path, out_name: &str) -> PathBuf {
    compile_c_with(
        dir,
        "dlopen_lib",
        out_name,
        &[OsStr::new("-shared"), OsStr::new("-fPIC")],
    )
}

#[test]
fn ffi_fork_from_multithreaded_parent() {
    run_c_preloaded_both("fork_threads", "fork from threads", "children ok", 120);
}

#[test]
fn ffi_dlopen_dlclose_allocating_library() {
    let dir = scratch("dlopen");
    let lib = compile_allocating_lib(&dir, "libdlopen_lib.so");
    let exe = compile_c_with(&dir, "dlopen_main", "dlopen_main", &[OsStr::new("-ldl")]);
    run_preloaded_both(
        "dlopen/dlclose",
        &exe,
        &[lib.as_os_str()],
        "cycles ok",
        Duration::from_secs(120),
    );
}

/// Another preloaded library whose constructor allocates (and whose
/// destructor frees), before or after ours in LD_PRELOAD: whichever
/// constructor runs first, allocation works before ours has run, and fork
/// from threads still works afterwards (the atfork handlers got registered).
#[test]
fn ffi_preload_next_to_allocating_constructor() {
    let dir = scratch("preload-order");
    let lib = compile_allocating_lib(&dir, "libctor_alloc.so");
    let exe = compile_c(&dir, "fork_threads");
    let ours = built().cdylib.display().to_string();
    let other = lib.display().to_string();
    for order in [[&other, &ours], [&ours, &other]] {
        let preload = format!("{} {}", order[0], order[1]);
        let mut cmd = Command::new(&exe);
        Mode::Preload.apply(&mut cmd, true);
        cmd.env("LD_PRELOAD", &preload);
        let r = run(&mut cmd, Duration::from_secs(120));
        let label = format!("LD_PRELOAD=\"{preload}\"");
        r.assert_ok(&label);
        assert_init_line(&r.stderr, Mode::Preload, &label);
        assert!(r.stdout.contains("children ok"), "{label}: {}", r.stdout);
    }
}

#[test]
fn ffi_thread_churn_bounded_rss() {
    run_c_preloaded_both("thread_churn", "thread churn", "threads ok", 180);
}

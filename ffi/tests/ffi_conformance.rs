//! C conformance of `librseq_malloc` (ffi/tests/c/conformance.c): every exported
//! symbol and glibc edge case, run four ways (LD_PRELOAD default,
//! LD_PRELOAD with `rseq=off`, linked against the cdylib, linked against the
//! staticlib) and once under valgrind, where rseq is unavailable and the
//! library must run in `mode=cmpxchg`.

mod ffi_common;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use ffi_common::*;

const TIMEOUT: Duration = Duration::from_secs(120);

/// conformance.c built once for LD_PRELOAD (not linked to the library).
fn conformance_exe() -> &'static PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    compile_c_once(
        &EXE,
        "conformance-preload",
        "conformance",
        &[OsStr::new("-fno-builtin")],
    )
}

/// Checks the closing line `conformance: N checks, 0 failures`.
fn assert_all_checks_passed(r: &Run, what: &str) {
    r.assert_ok(what);
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("conformance: "))
        .unwrap_or_else(|| panic!("{what}: no summary line\n{}", r.stdout));
    let n: u64 = line
        .trim_start_matches("conformance: ")
        .split(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(line.ends_with(", 0 failures"), "{what}: {line}");
    assert!(n > 1000, "{what}: only {n} checks ran: {line}");
    eprintln!("{what}: {line} in {:.1?}", r.elapsed);
}

fn run_preloaded(mode: Mode) {
    let mut cmd = Command::new(conformance_exe());
    mode.apply(&mut cmd, true);
    let r = run(&mut cmd, TIMEOUT);
    let what = format!("conformance under {mode:?}");
    assert_all_checks_passed(&r, &what);
    assert_init_line(&r.stderr, mode, &what);
    assert!(
        r.stderr.lines().any(|l| l == "rseq-malloc: stats"),
        "{what}: malloc_stats() printed no `rseq-malloc: stats` line on stderr"
    );
}

#[test]
fn ffi_conformance_preload() {
    run_preloaded(Mode::Preload);
}

#[test]
fn ffi_conformance_preload_rseq_off() {
    run_preloaded(Mode::PreloadRseqOff);
}

#[test]
fn ffi_conformance_linked_cdylib() {
    let b = built();
    let dir = scratch("conformance-cdylib");
    let mut rpath = std::ffi::OsString::from("-Wl,-rpath,");
    rpath.push(&b.dir);
    let mut libdir = std::ffi::OsString::from("-L");
    libdir.push(&b.dir);
    let exe = compile_c_with(
        &dir,
        "conformance",
        "conformance-cdylib",
        &[
            OsStr::new("-fno-builtin"),
            &libdir,
            &rpath,
            OsStr::new("-lrseq_malloc"),
        ],
    );
    let mut cmd = Command::new(&exe);
    cmd.env_remove("LD_PRELOAD")
        .env("RSEQ_MALLOC_CONF", "verbose=1");
    let r = run(&mut cmd, TIMEOUT);
    assert_all_checks_passed(&r, "conformance linked to librseq_malloc.so");
    assert_init_line(
        &r.stderr,
        Mode::Preload,
        "conformance linked to librseq_malloc.so",
    );
}

#[test]
fn ffi_conformance_linked_staticlib() {
    let b = built();
    let dir = scratch("conformance-static");
    let mut extra: Vec<&OsStr> = vec![OsStr::new("-fno-builtin"), b.staticlib.as_os_str()];
    // What `rustc --print native-static-libs` lists for the staticlib.
    for lib in [
        "-lgcc_s",
        "-lutil",
        "-lrt",
        "-lpthread",
        "-lm",
        "-ldl",
        "-lc",
    ] {
        extra.push(OsStr::new(lib));
    }
    let exe = compile_c_with(&dir, "conformance", "conformance-static", &extra);
    for mode in [Mode::Preload, Mode::PreloadRseqOff] {
        let mut cmd = Command::new(&exe);
        cmd.env_remove("LD_PRELOAD").env(
            "RSEQ_MALLOC_CONF",
            if mode == Mode::Preload {
                "verbose=1"
            } else {
                "rseq=off,verbose=1"
            },
        );
        let r = run(&mut cmd, TIMEOUT);
        let what = format!("conformance linked to librseq_malloc.a ({mode:?})");
        assert_all_checks_passed(&r, &what);
        assert_init_line(&r.stderr, mode, &what);
    }
}

/// valgrind does not implement the rseq system call: glibc's registration
/// fails, ours too, and the library must fall back to compare-and-swap.
#[test]
fn ffi_conformance_valgrind_cmpxchg() {
    let valgrind = require_tool("valgrind", "valgrind");
    // `nouserintercepts`: memcheck must not replace our malloc with its own
    // (by default it intercepts malloc in every object, ours included).
    let mut cmd = Command::new(valgrind);
    cmd.args([
        "--quiet",
        "--error-exitcode=99",
        "--soname-synonyms=somalloc=nouserintercepts",
    ])
    .arg(conformance_exe())
    .arg("quick");
    Mode::Preload.apply(&mut cmd, true);
    let r = run(&mut cmd, Duration::from_secs(300));
    assert_all_checks_passed(&r, "conformance (quick) under valgrind");
    // The valgrind launcher (and, on Debian, the shell script that starts
    // it) run natively and are preloaded too: they may print init lines of
    // their own, in an rseq mode. The program's line comes last.
    let lines = init_lines(&r.stderr);
    assert!(
        lines.last().is_some_and(|l| l.mode == "cmpxchg"),
        "under valgrind the program must run in mode=cmpxchg; init lines: {lines:?}\n{}",
        tail(&r.stderr, 3000)
    );
}

//! Real programs under `LD_PRELOAD=librseq_malloc.so`: python3 (a slice of
//! its own regression suite), perl, git, sqlite3, gcc/g++ and a
//! multi-threaded C++ program. Each runs without the library (the
//! reference), with it, and with it in `rseq=off`; the outputs must be
//! identical, and `RSEQ_MALLOC_CONF=verbose=1` must show the library active
//! in the expected mode.

mod ffi_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ffi_common::*;

const MODES: [Mode; 3] = [Mode::Plain, Mode::Preload, Mode::PreloadRseqOff];

/// Runs `make(mode, scratch_dir)` in the three modes concurrently (each in
/// its own scratch directory), checks each exits 0 and, for the preloaded
/// ones with `verbose`, the init lines. Returns the runs in `MODES` order.
fn run_modes(
    name: &str,
    timeout: Duration,
    verbose: bool,
    make: impl Fn(Mode, &Path) -> Command + Sync,
) -> Vec<Run> {
    run_modes_with(name, timeout, verbose, true, make)
}

/// [`run_modes`], where `must_succeed == false` accepts any exit status
/// (the caller compares the outcomes instead).
fn run_modes_with(
    name: &str,
    timeout: Duration,
    verbose: bool,
    must_succeed: bool,
    make: impl Fn(Mode, &Path) -> Command + Sync,
) -> Vec<Run> {
    built(); // build once before the threads start
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = MODES
            .iter()
            .map(|&mode| {
                let make = &make;
                s.spawn(move || {
                    let dir = scratch(&format!("{name}-{mode:?}"));
                    let mut cmd = make(mode, &dir);
                    mode.apply(&mut cmd, verbose);
                    let r = run(&mut cmd, timeout);
                    if must_succeed {
                        r.assert_ok(&format!("{name} ({mode:?})"));
                    } else {
                        assert!(
                            r.status.code().is_some(),
                            "{name} ({mode:?}) died: {}\n{}",
                            r.describe(),
                            tail(&r.stderr, 3000)
                        );
                    }
                    eprintln!("{name} ({mode:?}): {:.1?}", r.elapsed);
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("runner thread"))
            .collect()
    });
    if verbose {
        for (mode, r) in MODES.iter().zip(&runs) {
            if *mode != Mode::Plain {
                assert_init_line(&r.stderr, *mode, &format!("{name} ({mode:?})"));
            }
        }
    }
    runs
}

/// Asserts `got == want` with the first differing line in the message.
fn assert_same_output(what: &str, want: &str, got: &str) {
    if want == got {
        return;
    }
    let (line_no, (w, g)) = want
        .lines()
        .chain(std::iter::repeat("<end of output>"))
        .zip(got.lines().chain(std::iter::repeat("<end of output>")))
        .enumerate()
        .find(|(_, (w, g))| w != g)
        .unwrap_or((0, ("", "")));
    panic!(
        "{what}: output differs from the run without the library at line {}:\n  without: {w}\n  with:    {g}\n\
         --- with the library (tail) ---\n{}",
        line_no + 1,
        tail(got, 3000)
    );
}

/// Checks `output` of each preloaded run equals `want` from the plain run;
/// `stream` names the output in the message.
fn assert_preloaded_same(
    name: &str,
    stream: &str,
    runs: &[Run],
    want: &str,
    output: impl Fn(&Run) -> String,
) {
    for (mode, r) in MODES.iter().zip(runs).skip(1) {
        assert_same_output(&format!("{name} ({mode:?}) {stream}"), want, &output(r));
    }
}

/// Checks the stdout of the preloaded runs equals the plain run's.
fn assert_outputs_match(name: &str, runs: &[Run]) {
    assert_preloaded_same(name, "stdout", runs, &runs[0].stdout, |r| r.stdout.clone());
}

/// Checks the stderr of the preloaded runs, without the library's init
/// lines, equals the plain run's.
fn assert_stderrs_match(name: &str, runs: &[Run]) {
    assert_preloaded_same(name, "stderr", runs, &runs[0].stderr, |r| {
        without_init_lines(&r.stderr)
    });
}

/// A python3 whose standard test suite is installed, as a real executable
/// (not a pyenv shim script).
fn python_with_tests() -> PathBuf {
    let mut tried = Vec::new();
    for candidate in ["python3", "/usr/bin/python3"] {
        let out = Command::new(candidate)
            .env_remove("LD_PRELOAD")
            .args([
                "-c",
                "import sys, test.test_dict, test.test_json; print(sys.executable)",
            ])
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let exe = String::from_utf8_lossy(&o.stdout).trim().to_string();
                if !exe.is_empty() {
                    return PathBuf::from(exe);
                }
            }
            Ok(o) => tried.push(format!(
                "{candidate}: {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            )),
            Err(e) => tried.push(format!("{candidate}: {e}")),
        }
    }
    panic!(
        "no python3 with its regression test suite (module `test`) found ({}): \
         run `apt-get install -y python3 libpython3.11-testsuite` (CI: add it to .ci/run)",
        tried.join("; ")
    );
}

/// The pass/fail summary of `python3 -m test -w`: the test files that
/// still failed after the re-run, and the number of test files. (Totals
/// and the `Result:` line are left out: they count re-runs, which depend
/// on timing.)
fn python_summary(out: &str) -> String {
    let mut summary = String::new();
    let mut in_failed_list = false;
    // The final report starts at the last "== Tests result: ..." line; the
    // report before the re-run lists failures that may pass on the re-run.
    let lines: Vec<&str> = out.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("== Tests result"))
        .unwrap_or(0);
    for &line in &lines[start..] {
        if in_failed_list {
            if let Some(names) = line.strip_prefix("    ") {
                for name in names.split_whitespace() {
                    summary.push_str(&format!("failed: {name}\n"));
                }
                continue;
            }
            in_failed_list = false;
        }
        if line.ends_with(" failed:") && (line.contains(" test ") || line.contains(" tests ")) {
            in_failed_list = true;
        }
        if let Some(rest) = line.strip_prefix("Total test files: run=") {
            let files = rest.split(['/', ' ']).nth(1).unwrap_or("?");
            summary.push_str(&format!("test files: {files}\n"));
        }
    }
    summary
}

/// The number of test cases run, from `Total tests: run=N ...`.
fn python_tests_run(out: &str) -> usize {
    out.lines()
        .find_map(|l| l.strip_prefix("Total tests: run="))
        .and_then(|r| r.split(' ').next())
        .map(|n| n.replace(',', ""))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A handful of fast modules of CPython's own regression suite.
const PYTHON_MODULES: &[&str] = &[
    "test_dict",
    "test_list",
    "test_set",
    "test_unicode",
    "test_json",
    "test_threading",
    "test_tuple",
    "test_bytes",
    "test_re",
    "test_collections",
    "test_struct",
    "test_string",
    "test_bisect",
    "test_heapq",
];

#[test]
fn ffi_program_python_regression_suite() {
    let python = python_with_tests();
    // The init line, from a short run (the suite's own subprocess tests
    // compare stderr, so the suite runs without verbose).
    let quick = run_modes("python-verbose", Duration::from_secs(60), true, |_, _| {
        let mut c = Command::new(&python);
        c.args(["-c", "import json; print(json.dumps({'a': [1, 2, 3]}))"]);
        c
    });
    assert_outputs_match("python -c", &quick);

    // The exit status is that of the suite, which may fail in the reference
    // run too (environment); what must match is the pass/fail summary.
    let runs = run_modes_with(
        "python-test",
        Duration::from_secs(400),
        false,
        false,
        |_, dir| {
            let mut c = Command::new(&python);
            // -w: re-run what failed, so a timing flake in one mode does not
            // fail the comparison (the first failure stays in the log).
            c.current_dir(dir)
                .args(["-m", "test", "-w"])
                .args(PYTHON_MODULES);
            c
        },
    );
    let want = python_summary(&runs[0].stdout);
    for (mode, r) in MODES.iter().zip(&runs) {
        let n = python_tests_run(&r.stdout);
        assert!(
            n > 1000 && python_summary(&r.stdout).contains("test files: "),
            "python -m test ({mode:?}) did not complete ({n} tests run):\n{}",
            tail(&r.stdout, 3000)
        );
    }
    for (mode, r) in MODES.iter().zip(&runs).skip(1) {
        assert_same_output(
            &format!("python -m test summary ({mode:?})"),
            &want,
            &python_summary(&r.stdout),
        );
    }
    eprintln!("python -m test summary (same in all modes):\n{want}");
}

#[test]
fn ffi_program_perl() {
    let perl = require_tool("perl", "perl");
    let runs = run_modes("perl", Duration::from_secs(120), true, |_, _| {
        let mut c = Command::new(&perl);
        c.arg(c_source("workload.pl"));
        c
    });
    assert!(
        runs[0].stdout.ends_with("done\n"),
        "perl workload incomplete"
    );
    assert_outputs_match("perl", &runs);
}

#[test]
fn ffi_program_git() {
    require_tool("git", "git");
    let runs = run_modes("git", Duration::from_secs(120), true, |_, dir| {
        let mut c = Command::new("sh");
        c.arg(c_source("git_workload.sh"))
            .arg(dir)
            .env("HOME", dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "Author")
            .env("GIT_AUTHOR_EMAIL", "author@example.com")
            .env("GIT_COMMITTER_NAME", "Committer")
            .env("GIT_COMMITTER_EMAIL", "committer@example.com")
            .env("GIT_AUTHOR_DATE", "2024-01-02T03:04:05Z")
            .env("GIT_COMMITTER_DATE", "2024-01-02T03:04:05Z")
            .env("TZ", "UTC")
            .env("LC_ALL", "C");
        c
    });
    assert!(
        runs[0].stdout.lines().count() > 60,
        "git workload printed too little:\n{}",
        runs[0].stdout
    );
    assert_outputs_match("git", &runs);
    assert_stderrs_match("git", &runs);
}

#[test]
fn ffi_program_sqlite3() {
    let sqlite = require_tool("sqlite3", "sqlite3");
    let runs = run_modes("sqlite3", Duration::from_secs(240), true, |_, dir| {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("exec \"$0\" \"$1\" < \"$2\"")
            .arg(&sqlite)
            .arg(dir.join("workload.db"))
            .arg(c_source("sqlite_workload.sql"));
        c
    });
    assert!(
        runs[0].stdout.trim_end().ends_with("ok"),
        "sqlite integrity_check did not say ok:\n{}",
        tail(&runs[0].stdout, 2000)
    );
    assert_outputs_match("sqlite3", &runs);
}

/// gcc and g++ (driver, cc1/cc1plus, as) compile under the library: the
/// object files must be byte-identical to those compiled without it.
#[test]
fn ffi_program_gcc() {
    require_tool("cc", "gcc");
    require_tool("c++", "g++");
    for (compiler, source) in [("cc", "conformance.c"), ("c++", "threads.cpp")] {
        let name = format!("gcc-{compiler}");
        let runs = run_modes(&name, Duration::from_secs(180), true, |_, dir| {
            let mut c = Command::new(compiler);
            c.current_dir(c_source(""))
                .args([
                    "-O2",
                    "-g",
                    "-Wall",
                    "-frandom-seed=rseq",
                    "-c",
                    source,
                    "-o",
                ])
                .arg(dir.join("out.o"));
            c
        });
        let objects: Vec<Vec<u8>> = MODES
            .iter()
            .map(|m| {
                std::fs::read(scratch_path(&format!("{name}-{m:?}")).join("out.o"))
                    .expect("read object")
            })
            .collect();
        for (mode, obj) in MODES.iter().zip(&objects).skip(1) {
            assert!(
                *obj == objects[0],
                "{compiler} {source} ({mode:?}): object file differs from the one built without the library"
            );
        }
        assert_stderrs_match(compiler, &runs);
    }
}

#[test]
fn ffi_program_cxx_threads() {
    let dir = scratch("cxx-threads-build");
    let exe = compile("c++", &c_dir(), &["threads.cpp"], &dir, "threads", &[]);
    let runs = run_modes("cxx-threads", Duration::from_secs(120), true, |_, _| {
        Command::new(&exe)
    });
    assert!(
        runs[0].stdout.contains("160000 objects, ok"),
        "threads.cpp reference run: {}",
        runs[0].stdout
    );
    assert_outputs_match("threads.cpp", &runs);
}

/// The summary parser on a report of python 3.11's shape, with a flake
/// that passed on the re-run and a test that failed twice.
#[test]
fn ffi_python_summary_parser() {
    let out = "\
== Tests result: FAILURE ==

1 test failed:
    test_flaky

Re-running failed tests in verbose mode
1 test failed again:
    test_threading

== Tests result: FAILURE then FAILURE ==

1 re-run test:
    test_threading

2 tests failed:
    test_threading  test_foo

1 test OK.

Total duration: 13.7 sec
Total tests: run=1,240 failures=2 skipped=2
Total test files: run=3/2 failed=1 rerun=1
Result: FAILURE then FAILURE
";
    assert_eq!(
        python_summary(out),
        "failed: test_threading\nfailed: test_foo\ntest files: 2\n"
    );
    assert_eq!(python_tests_run(out), 1240);
}

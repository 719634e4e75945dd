//! The harness end to end at tiny sizes (`--smoke`): every workload runs under
//! every in-process allocator (ours included) and the installed preloaded
//! ones, nothing fails, and the three report files are written and well formed.
//! The figures themselves are meaningless at these sizes and are not checked.

use std::path::PathBuf;
use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_rseq-alloc-bench");

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rseq-alloc-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn smoke_suite_runs_every_workload_and_writes_reports() {
    let dir = out_dir("smoke");
    let out = Command::new(EXE)
        .args([
            "--smoke",
            "--reps",
            "1",
            "--alloc",
            "rseq,rseq-cas,jemalloc,mimalloc,glibc,jemalloc-so,mimalloc-so,tcmalloc-so",
            "--out",
        ])
        .arg(&dir)
        .output()
        .expect("run harness");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "harness failed:\n{stderr}");
    assert!(!stderr.contains("FAILED"), "a run failed:\n{stderr}");

    let md = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    assert!(
        md.contains("## Summary: speed relative to the baseline"),
        "{md}"
    );
    assert!(
        md.contains("| versions | rseq: rseq-alloc "),
        "versions missing:\n{md}"
    );
    assert!(
        md.contains("## Micro workloads across fresh processes"),
        "{md}"
    );
    assert!(
        !md.contains("## Targets"),
        "targets belong in BENCHMARKS.md:\n{md}"
    );
    assert!(
        stderr.contains(", ETA "),
        "no ETA in the progress lines:\n{stderr}"
    );
    assert!(md.contains("| glibc |"), "machine table missing:\n{md}");
    assert!(md.contains("mode=rseq-"), "rseq mode not reported:\n{md}");
    assert!(!md.contains("## Failed runs"), "{md}");

    let runs = std::fs::read_to_string(dir.join("runs.csv")).expect("runs.csv");
    // Micro workloads run in 2 fresh processes each in --smoke, even with --reps 1.
    let pair_runs = runs
        .lines()
        .filter(|l| l.starts_with("pair,pair/16B,rseq,"))
        .count();
    assert_eq!(pair_runs, 2, "{runs}");
    // The CAS fallback's configuration and the mixed-size figure.
    for prefix in [
        "pair,pair/16B,rseq-cas,",
        "pair,mix1000,rseq,",
        "pair,mix1000,rseq-cas,",
    ] {
        assert_eq!(
            runs.lines().filter(|l| l.starts_with(prefix)).count(),
            2,
            "{prefix}:\n{runs}"
        );
    }
    // rseq-cas really runs the CAS fallback: its internals row counts
    // fallback operations (rseq's does not).
    let cas_row = md
        .lines()
        .find(|l| l.starts_with("| pair | rseq-cas |"))
        .unwrap_or_else(|| panic!("no internals row for rseq-cas:\n{md}"));
    let fallback_ops: u64 = cas_row.split('|').nth(4).unwrap().trim().parse().unwrap();
    assert!(fallback_ops > 0, "{cas_row}");
    if std::path::Path::new("/usr/bin/perl").exists() {
        assert!(
            runs.lines().any(|l| l.starts_with("perl,perl,glibc,")),
            "{runs}"
        );
    }
    let synthetic = [
        "pair",
        "larson",
        "prodcon",
        "threads64",
        "frag",
        "realloc",
        "larson2t",
        "large",
        "spike",
    ];
    for alloc in ["rseq", "jemalloc", "mimalloc", "glibc"] {
        for w in synthetic {
            assert!(
                runs.lines()
                    .any(|l| l.starts_with(&format!("{w},")) && l.split(',').nth(2) == Some(alloc)),
                "no {w} result for {alloc}:\n{runs}"
            );
        }
    }
    let csv = std::fs::read_to_string(dir.join("report.csv")).expect("report.csv");
    assert!(csv.starts_with("workload,metric,allocator,"));
    let ncols = csv.lines().next().unwrap().split(',').count();
    for l in csv.lines() {
        assert_eq!(l.split(',').count(), ncols, "ragged csv line: {l}");
    }

    let svg = std::fs::read_to_string(dir.join("report.svg")).expect("report.svg");
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains(">rseq<"), "our allocator has no bar");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lib_option_adds_a_preloaded_allocator() {
    // Any shared library that can be preloaded will do; the one this test
    // needs is glibc's own libm, present wherever the harness runs.
    let lib = "/usr/lib/x86_64-linux-gnu/libm.so.6";
    if !std::path::Path::new(lib).exists() {
        eprintln!("skipped: {lib} not found");
        return;
    }
    let dir = out_dir("lib");
    let out = Command::new(EXE)
        .args([
            "--smoke", "--reps", "1", "--procs", "1", "--only", "pair", "--alloc", "glibc",
        ])
        .args(["--lib", &format!("mylib={lib}"), "--out"])
        .arg(&dir)
        .output()
        .expect("run harness");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "harness failed:\n{stderr}");
    let runs = std::fs::read_to_string(dir.join("runs.csv")).expect("runs.csv");
    assert!(
        runs.lines().any(|l| l.starts_with("pair,pair/16B,mylib,")),
        "{runs}"
    );
    let md = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    assert!(
        md.contains(&format!("- **mylib**: {lib} via LD_PRELOAD (--lib)")),
        "{md}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_arguments_are_refused() {
    for args in [
        &["--bogus"][..],
        &["--only", "nosuch"],
        &["--alloc", "nosuch"],
        &["--reps", "0"],
        &["--procs", "0"],
        &["--lib", "noequals"],
        &["--lib", "x=/nonexistent/lib.so"],
        &["--lib", "glibc=/bin/true"],
    ] {
        let out = Command::new(EXE).args(args).output().expect("run harness");
        assert_eq!(out.status.code(), Some(2), "{args:?} was accepted");
    }
}

#[test]
fn worker_refuses_unknown_workload_and_reports_backend() {
    let out = Command::new(EXE)
        .args(["worker", "nosuch"])
        .env("RSEQ_BENCH_ALLOC", "jemalloc")
        .output()
        .expect("run worker");
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(EXE)
        .args(["worker", "info"])
        .env("RSEQ_BENCH_ALLOC", "rseq")
        .output()
        .expect("run worker");
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("INFO backend=rseq"), "{s}");
    let out = Command::new(EXE)
        .args(["worker", "info"])
        .env("RSEQ_BENCH_ALLOC", "nosuch")
        .output()
        .expect("run worker");
    assert_eq!(
        out.status.code(),
        Some(3),
        "an unknown allocator must not silently fall back"
    );
}

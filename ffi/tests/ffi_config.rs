//! `RSEQ_MALLOC_CONF` and the environment, seen from a C program with the
//! library preloaded: `stats=1` prints statistics at exit, `index=` picks
//! the cache index, an unknown key warns and is ignored, and with glibc's
//! rseq registration disabled the library registers its own area.

mod ffi_common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use ffi_common::*;

fn hello() -> &'static PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    compile_c_once(&EXE, "config-hello", "hello_alloc", &[])
}

/// Runs hello_alloc preloaded with `RSEQ_MALLOC_CONF=conf` and `extra_env`.
fn run_hello(conf: &str, extra_env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(hello());
    cmd.env("LD_PRELOAD", &built().cdylib)
        .env("RSEQ_MALLOC_CONF", conf)
        .env_remove("GLIBC_TUNABLES");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let r = run(&mut cmd, Duration::from_secs(60));
    r.assert_ok(&format!("hello_alloc with RSEQ_MALLOC_CONF={conf}"));
    assert_eq!(r.stdout, "hello ok\n");
    r
}

fn single_init_line(r: &Run, what: &str) -> InitLine {
    let lines = init_lines(&r.stderr);
    assert_eq!(lines.len(), 1, "{what}: want one init line:\n{}", r.stderr);
    lines[0].clone()
}

#[test]
fn ffi_config_stats_at_exit() {
    let r = run_hello("stats=1", &[]);
    let first = r
        .stderr
        .lines()
        .position(|l| l == "rseq-malloc: stats")
        .unwrap_or_else(|| panic!("stats=1: no `rseq-malloc: stats` line:\n{}", r.stderr));
    assert!(
        r.stderr.lines().count() > first + 1,
        "stats=1: the statistics are empty:\n{}",
        r.stderr
    );
    let quiet = run_hello("", &[]);
    assert_eq!(
        quiet.stderr, "",
        "without configuration the library prints nothing"
    );
}

#[test]
fn ffi_config_index_cpu_and_cid() {
    let cpu = single_init_line(&run_hello("verbose=1,index=cpu", &[]), "index=cpu");
    assert_eq!(cpu.index, "cpu");
    // SAFETY: getauxval only reads the auxiliary vector.
    let feature_size = unsafe {
        libc::getauxval(27 /* AT_RSEQ_FEATURE_SIZE */)
    };
    let cid = single_init_line(&run_hello("verbose=1,index=cid", &[]), "index=cid");
    if feature_size >= 28 {
        assert_eq!(
            cid.index, "cid",
            "the kernel maintains mm_cid (feature size {feature_size})"
        );
    }
    let off = single_init_line(&run_hello("verbose=1,rseq=off", &[]), "rseq=off");
    assert_eq!(off.mode, "cmpxchg");
}

#[test]
fn ffi_config_unknown_key_warns_and_is_ignored() {
    let r = run_hello("bogus_key=1,verbose=1", &[]);
    assert!(
        r.stderr
            .lines()
            .any(|l| l.starts_with("rseq-malloc:") && l.contains("bogus_key")),
        "an unknown key must be named in a warning:\n{}",
        r.stderr
    );
    single_init_line(&r, "unknown key");
}

/// `GLIBC_TUNABLES=glibc.pthread.rseq=0`: glibc does not register, so the
/// library registers its own rseq area (mode=rseq-own).
#[test]
fn ffi_config_glibc_rseq_disabled_gives_own_registration() {
    let r = run_hello("verbose=1", &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")]);
    let line = single_init_line(&r, "glibc.pthread.rseq=0");
    assert_eq!(line.mode, "rseq-own", "{}", r.stderr);
    let r = run_hello("verbose=1", &[]);
    let line = single_init_line(&r, "default");
    assert_eq!(
        line.mode, "rseq-glibc",
        "glibc 2.35+ registers rseq itself: {}",
        r.stderr
    );
}

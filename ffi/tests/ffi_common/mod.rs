//! Shared helpers of the `ffi_*` integration tests: build
//! `librseq_malloc.so` (cargo does not build a cdylib for a test), compile
//! the C programs of `ffi/tests/c/` with the system compiler, and read the
//! `RSEQ_MALLOC_CONF=verbose=1` init line. Running programs with a timeout,
//! scratch directories and required tools come from
//! `rseq_test_support::process` (re-exported here).

#![allow(dead_code)] // each test binary uses a different subset

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub use rseq_test_support::process::*;

/// `ffi/tests/c/<name>`.
pub fn c_source(name: &str) -> PathBuf {
    c_dir().join(name)
}

/// `ffi/tests/c/`.
pub fn c_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("c")
}

/// Compiles `ffi/tests/c/<name>.c` with `cc` into `out_dir/<name>` (see
/// [`compile_c_with`]).
pub fn compile_c(out_dir: &Path, name: &str) -> PathBuf {
    compile_c_with(out_dir, name, name, &[])
}

/// Compiles `ffi/tests/c/<name>.c` with `cc` into `out_dir/<out_name>` with
/// `-O2 -Wall -Werror` plus `extra` arguments (C++ and several sources:
/// [`compile`] with [`c_dir`]).
pub fn compile_c_with(out_dir: &Path, name: &str, out_name: &str, extra: &[&OsStr]) -> PathBuf {
    compile(
        "cc",
        &c_dir(),
        &[&format!("{name}.c")],
        out_dir,
        out_name,
        extra,
    )
}

/// [`compile_c_with`] into a fresh scratch directory `scratch_name`, once
/// per test binary: `exe` keeps the program's path.
pub fn compile_c_once(
    exe: &'static OnceLock<PathBuf>,
    scratch_name: &str,
    name: &str,
    extra: &[&OsStr],
) -> &'static PathBuf {
    exe.get_or_init(|| compile_c_with(&scratch(scratch_name), name, name, extra))
}

/// Where the release build of `rseq-malloc` puts its artefacts.
pub struct Built {
    /// `.../release/librseq_malloc.so`
    pub cdylib: PathBuf,
    /// `.../release/librseq_malloc.a`
    pub staticlib: PathBuf,
    /// `.../release` (for `-L`)
    pub dir: PathBuf,
}

/// Builds `rseq-malloc` in release mode once per test binary
/// (`cargo build --release -p rseq-malloc`, as the README says) and returns
/// the paths of the libraries. Cargo does not build a cdylib as a test
/// dependency, so the test does it; an up-to-date build costs a second.
pub fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = target_root();
        cargo(
            &["build", "--release", "-p", "rseq-malloc"],
            &target,
            "cargo build --release -p rseq-malloc",
        );
        // The SONAME is librseq_malloc.so.0: a program linked against the
        // build directory needs that name next to the library, as an
        // install (ffi/install.sh) provides.
        let soname = target.join("release").join("librseq_malloc.so.0");
        if std::fs::symlink_metadata(&soname).is_err() {
            let _ = std::os::unix::fs::symlink("librseq_malloc.so", &soname);
        }
        let dir = target.join("release");
        let built = Built {
            cdylib: dir.join("librseq_malloc.so"),
            staticlib: dir.join("librseq_malloc.a"),
            dir,
        };
        assert!(
            built.cdylib.exists(),
            "{} missing after the build",
            built.cdylib.display()
        );
        built
    })
}

/// How a program is run against the allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Without the library: the reference run.
    Plain,
    /// `LD_PRELOAD`, default configuration (`rseq=auto`).
    Preload,
    /// `LD_PRELOAD` with `RSEQ_MALLOC_CONF=rseq=off`.
    PreloadRseqOff,
}

impl Mode {
    /// The modes with the library.
    pub const PRELOADED: [Mode; 2] = [Mode::Preload, Mode::PreloadRseqOff];

    /// Sets (or clears) `LD_PRELOAD` and `RSEQ_MALLOC_CONF` on `cmd`;
    /// `verbose` adds `verbose=1`.
    pub fn apply(self, cmd: &mut Command, verbose: bool) {
        cmd.env_remove("LD_PRELOAD").env_remove("RSEQ_MALLOC_CONF");
        let mut conf = Vec::new();
        match self {
            Mode::Plain => return,
            Mode::Preload => {}
            Mode::PreloadRseqOff => conf.push("rseq=off"),
        }
        if verbose {
            conf.push("verbose=1");
        }
        cmd.env("LD_PRELOAD", &built().cdylib);
        if !conf.is_empty() {
            cmd.env("RSEQ_MALLOC_CONF", conf.join(","));
        }
    }
}

/// A parsed `rseq-malloc: mode=<m> index=<i> cpus=<n>` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitLine {
    pub mode: String,
    pub index: String,
    pub cpus: usize,
}

/// Every init line in `stderr` (one per process that loaded the library).
pub fn init_lines(stderr: &str) -> Vec<InitLine> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("rseq-malloc: mode=")?;
            let mut parts = rest.split(' ');
            let mode = parts.next()?.to_string();
            let index = parts.next()?.strip_prefix("index=")?.to_string();
            let cpus = parts.next()?.strip_prefix("cpus=")?.parse().ok()?;
            if parts.next().is_some() {
                return None;
            }
            Some(InitLine { mode, index, cpus })
        })
        .collect()
}

/// Checks that `stderr` has at least one init line, all of them in the mode
/// `mode` asks for: `cmpxchg` for `rseq=off`, an rseq mode otherwise.
pub fn assert_init_line(stderr: &str, mode: Mode, what: &str) {
    let lines = init_lines(stderr);
    assert!(
        !lines.is_empty(),
        "{what}: no `rseq-malloc: mode=... index=... cpus=N` line on stderr (library not active?)\n\
         --- stderr ---\n{}",
        tail(stderr, 3000)
    );
    for l in &lines {
        match mode {
            Mode::PreloadRseqOff => {
                assert_eq!(
                    l.mode, "cmpxchg",
                    "{what}: rseq=off must give mode=cmpxchg: {l:?}"
                )
            }
            _ => assert!(
                l.mode == "rseq-glibc" || l.mode == "rseq-own",
                "{what}: default mode should use rseq on this kernel: {l:?}"
            ),
        }
        assert!(
            l.index == "cpu" || l.index == "cid",
            "{what}: bad index in {l:?}"
        );
        assert!(l.cpus >= 1, "{what}: bad cpus in {l:?}");
    }
}

/// `stderr` without the library's init lines.
pub fn without_init_lines(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.starts_with("rseq-malloc: mode=") && !l.starts_with("rseq-malloc: options "))
        .map(|l| format!("{l}\n"))
        .collect()
}

//! Shared helpers of the `ffi_*` integration tests: build
//! `librseq_malloc.so` (cargo does not build a cdylib for a test), compile
//! the C programs of `tests/c/` with the system compiler, run programs with
//! a timeout, and read the `RSEQ_MALLOC_CONF=verbose=1` init line.
//!
//! A tool that is missing is a test failure that says what to install, never
//! a silent skip.

#![allow(dead_code)] // each test binary uses a different subset

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root (parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `tests/c/<name>`.
pub fn c_source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("c").join(name)
}

/// The target directory this test binary was built in
/// (`<target>/<profile>/deps/<test>` -> `<target>`).
fn target_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            workspace_root().join(dir)
        };
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace_root().join("target"))
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
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(&cargo)
            .current_dir(workspace_root())
            .args(["build", "--release", "-p", "rseq-malloc", "--target-dir"])
            .arg(&target)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cargo:?}: {e}"));
        assert!(
            out.status.success(),
            "cargo build --release -p rseq-malloc failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
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

/// The path of the scratch directory `name` (not created or cleared).
pub fn scratch_path(name: &str) -> PathBuf {
    target_root().join("ffi-tests").join(name)
}

/// A fresh scratch directory for one test: `<target>/ffi-tests/<name>`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = scratch_path(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Fails with an install hint if `tool` is not on PATH.
pub fn require_tool(tool: &str, apt_package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(tool);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{tool}` is not installed; this test needs it: run `apt-get install -y {apt_package}` \
         (CI: add it to .ci/run)"
    );
}

/// Compiles C (or C++, by `compiler`) sources from `tests/c/` into
/// `out_dir/out_name` with `-O2 -Wall -Werror` plus `extra` arguments.
pub fn compile(
    compiler: &str,
    sources: &[&str],
    out_dir: &Path,
    out_name: &str,
    extra: &[&OsStr],
) -> PathBuf {
    let apt = if compiler == "c++" || compiler == "g++" {
        "g++"
    } else {
        "gcc"
    };
    require_tool(compiler, apt);
    let out = out_dir.join(out_name);
    let mut cmd = Command::new(compiler);
    cmd.args(["-O2", "-g", "-Wall", "-Wextra", "-Werror", "-pthread", "-o"])
        .arg(&out);
    for s in sources {
        cmd.arg(c_source(s));
    }
    cmd.args(extra);
    let res = cmd.output().expect("run the C compiler");
    assert!(
        res.status.success(),
        "compiling {sources:?} failed:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    out
}

/// The result of [`run`].
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// "exit 0", "signal 6", ... for messages.
    pub fn describe(&self) -> String {
        match (self.status.code(), self.status.signal()) {
            (Some(c), _) => format!("exit {c}"),
            (_, Some(s)) => format!("signal {s}"),
            _ => "unknown status".into(),
        }
    }

    /// Panics with both outputs unless the process exited 0.
    pub fn assert_ok(&self, what: &str) -> &Self {
        assert!(
            self.status.success(),
            "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.describe(),
            tail(&self.stdout, 4000),
            tail(&self.stderr, 4000)
        );
        self
    }
}

/// The last `max` bytes of `s` (at a char boundary).
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Runs `cmd` with stdin from /dev/null, capturing both outputs; kills it
/// and panics after `timeout` (a deadlock must fail the test, not hang CI).
pub fn run(cmd: &mut Command, timeout: Duration) -> Run {
    let what = format!("{cmd:?}");
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let err = err_reader.join().unwrap_or_default();
            panic!(
                "{what} still running after {timeout:?}: killed (deadlock?)\n--- stderr ---\n{}",
                tail(&String::from_utf8_lossy(&err), 4000)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    Run {
        status,
        stdout,
        stderr,
        elapsed: start.elapsed(),
    }
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

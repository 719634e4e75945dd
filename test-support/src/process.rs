//! Running programs from tests: the workspace and target directories,
//! scratch directories, required tools, compiling C test programs with the
//! system compiler, running cargo, and running a program with a timeout.
//!
//! A tool that is missing is a test failure that says what to install,
//! never a silent skip.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The workspace root (parent of `test-support/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support/ has a parent")
        .to_path_buf()
}

/// The target directory the running test binary was built in
/// (`<target>/<profile>/deps/<test>` -> `<target>`), whichever crate it
/// belongs to; `CARGO_TARGET_DIR` wins when set.
pub fn target_root() -> PathBuf {
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

/// Compiles C (or C++, by `compiler`) sources from `src_dir` into
/// `out_dir/out_name` with `-O2 -Wall -Werror` plus `extra` arguments.
pub fn compile(
    compiler: &str,
    src_dir: &Path,
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
        cmd.arg(src_dir.join(s));
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

/// Panics with `out`'s stderr, as "`what` failed:\n<stderr>", unless the
/// process exited 0.
pub fn assert_exit_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cargo <args> --target-dir <target_dir>` in the workspace root (the
/// cargo running the tests, `$CARGO`, else the one on PATH) and panics with
/// its stderr unless it succeeds; `what` names the command in that message.
pub fn cargo(args: &[&str], target_dir: &Path, what: &str) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(args)
        .arg("--target-dir")
        .arg(target_dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?}: {e}"));
    assert_exit_ok(&out, what);
}

/// The result of [`run`].
pub struct Run {
    /// How the process ended.
    pub status: ExitStatus,
    /// Its standard output (lossy UTF-8).
    pub stdout: String,
    /// Its standard error (lossy UTF-8).
    pub stderr: String,
    /// Wall time from spawn to exit.
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

//! Re-running one test of the current test binary in a child process: for
//! a configuration that is read once per process (`RSEQ_MALLOC_CONF`), for
//! measurements that other tests must not disturb (RSS), or for a case
//! that is expected to abort.
//!
//! The test calls [`run_in_child`] with its own name; in the child,
//! [`in_child`] is true and the same test runs its body instead:
//!
//! ```ignore
//! #[test]
//! fn works_in_cas_mode() {
//!     if in_child() {
//!         body();
//!         return;
//!     }
//!     assert_child_ok(&run_in_child("works_in_cas_mode", Some("rseq=off")));
//! }
//! ```
//!
//! [`child_test`] does the same in one call: `child_test("works_in_cas_mode",
//! Some("rseq=off"), body);`.

use std::process::{Command, Output};

/// Set (to `1`) in the environment of the child: the test body runs there.
pub const CHILD_VAR: &str = "RSEQ_ALLOC_TEST_BODY";

/// Whether this process is a child started by [`run_in_child`].
pub fn in_child() -> bool {
    std::env::var_os(CHILD_VAR).is_some()
}

/// The command that runs test `test` of this test binary alone
/// (`--exact --nocapture --test-threads=1`) with [`CHILD_VAR`] set and, if
/// `conf` is given, `RSEQ_MALLOC_CONF=conf` (otherwise the variable is
/// inherited). Add environment variables or arguments before running it.
pub fn child_command(test: &str, conf: Option<&str>) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, "1");
    if let Some(conf) = conf {
        cmd.env("RSEQ_MALLOC_CONF", conf);
    }
    cmd
}

/// Runs [`child_command`]`(test, conf)` to its end and returns its status
/// and outputs.
pub fn run_in_child(test: &str, conf: Option<&str>) -> Output {
    child_command(test, conf)
        .output()
        .unwrap_or_else(|e| panic!("cannot re-run test {test}: {e}"))
}

/// Asserts that the child exited with status 0 (the message shows both of
/// its outputs) and returns `(stdout, stderr)`.
pub fn assert_child_ok(out: &Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "child failed: {stdout}\n{stderr}");
    (stdout, stderr)
}

/// One test that runs in a child: in the child ([`in_child`]), runs `body`
/// and returns `None`; in the parent, re-runs test `test` of this binary
/// with `conf` ([`child_command`]), asserts that it passed
/// ([`assert_child_ok`]) and returns `Some((stdout, stderr))`.
pub fn child_test(test: &str, conf: Option<&str>, body: impl FnOnce()) -> Option<(String, String)> {
    child_test_env(test, conf, &[], body)
}

/// [`child_test`] with the variables `env` added to the child's
/// environment.
pub fn child_test_env(
    test: &str,
    conf: Option<&str>,
    env: &[(&str, &str)],
    body: impl FnOnce(),
) -> Option<(String, String)> {
    if in_child() {
        body();
        return None;
    }
    let out = child_command(test, conf)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot re-run test {test}: {e}"));
    Some(assert_child_ok(&out))
}

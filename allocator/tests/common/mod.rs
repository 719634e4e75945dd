//! Helpers shared by this crate's integration tests (each test file that
//! needs them says `mod common;`).
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Resident bytes of this process (`/proc/self/statm`).
pub fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Whether `addr` lies in one of this process's mappings.
pub fn mapped(addr: usize) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().any(|l| {
        let range = l.split_whitespace().next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let a = usize::from_str_radix(a, 16).unwrap();
        let b = usize::from_str_radix(b, 16).unwrap();
        a <= addr && addr < b
    })
}

/// Writes `v` to one byte per 4 KiB page of `[p, p + len)` and to the last
/// byte.
pub fn touch(p: *mut u8, len: usize, v: u8) {
    let mut i = 0;
    while i < len {
        // SAFETY: i < len inside the caller's block.
        unsafe { *p.add(i) = v };
        i += 4096;
    }
    // SAFETY: last byte of the caller's block.
    unsafe { *p.add(len - 1) = v };
}

/// Waits up to 20 s for the forked child `pid` and asserts that it exited
/// with status 0; a child still running then is killed and reported as
/// `hung`.
pub fn wait_forked_child(pid: libc::pid_t, hung: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("child {pid} {hung}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
}

/// A child case announces the pointer it is about to pass (the parent
/// checks that the abort message names it).
pub fn announce(p: *const u8) {
    eprintln!("child-addr={:x}", p as usize);
}

/// Re-runs this test executable's `child_entry` test with `case` in the
/// environment variable `case_var` (and `RSEQ_MALLOC_CONF=conf` if given).
pub fn run_case(case_var: &str, case: &str, conf: Option<&str>) -> std::process::Output {
    rseq_test_support::child_command("child_entry", conf)
        .env(case_var, case)
        .output()
        .unwrap()
}

/// The body of a `child_entry` test: in a child started by [`run_case`],
/// runs `body` on the case named by `case_var` (a case that should abort
/// and did not says so on stderr); does nothing in the parent.
pub fn case_entry(case_var: &str, body: impl FnOnce(&str)) {
    let Ok(case) = std::env::var(case_var) else {
        return;
    };
    body(&case);
    eprintln!("case {case} did not abort");
}

/// Runs `case` in a child and asserts it died by SIGABRT after printing
/// exactly `rseq-malloc: <who>: <what> 0x<the announced pointer>`.
pub fn expect_pointer_abort(case_var: &str, case: &str, conf: Option<&str>, who: &str, what: &str) {
    expect_abort_line(case_var, case, conf, |addr| {
        format!("rseq-malloc: {who}: {what} 0x{addr}")
    });
}

/// Runs `case` in a child and asserts it died by SIGABRT after printing
/// exactly the line `line(<the announced pointer, hex>)`.
pub fn expect_abort_line(
    case_var: &str,
    case: &str,
    conf: Option<&str>,
    line: impl FnOnce(&str) -> String,
) {
    use std::os::unix::process::ExitStatusExt;
    let out = run_case(case_var, case, conf);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let label = format!("case {case} ({})", conf.unwrap_or("inherited conf"));
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{label}: want SIGABRT:\n{stderr}"
    );
    let addr = stderr
        .lines()
        .find_map(|l| l.strip_prefix("child-addr="))
        .unwrap_or_else(|| panic!("{label}: no address line: {stderr}"));
    let want = line(addr);
    assert!(
        stderr.lines().any(|l| l == want),
        "{label}: want `{want}` in:\n{stderr}"
    );
}

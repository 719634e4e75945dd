//! A debugger single-stepping through critical sections aborts them on
//! every step; without a bound on restarts it would never get through.
//! The test forks a child that asks to be traced and runs the probe
//! (`probe::singlestep`); as its ptrace parent, the test single-steps it
//! through push/pop pairs: the child must finish within a bounded number of
//! steps, and must report that its sections aborted and gave up ("retry
//! exhausted") rather than looping.

mod probe;

use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;

const PAIRS: usize = 20;
const STEP_LIMIT: u64 = 2_000_000;

fn wait(pid: libc::pid_t) -> libc::c_int {
    let mut status = 0;
    // SAFETY: waits for our own traced child.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    status
}

fn ptrace(req: libc::c_uint, pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: ptrace requests on our own traced, stopped child.
    let r = unsafe {
        libc::ptrace(
            req,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            sig as usize as *mut libc::c_void,
        )
    };
    assert_eq!(r, 0, "ptrace({req}): {}", std::io::Error::last_os_error());
}

#[test]
fn single_stepping_terminates_and_aborts() {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    let [read_fd, write_fd] = fds;
    // SAFETY: this file's only test: no other test thread runs; the child
    // calls ptrace, then the probe, which ends in `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: the child asks its parent (this test) to trace it; on
        // failure it leaves at once.
        unsafe {
            libc::close(read_fd);
            if libc::ptrace(
                libc::PTRACE_TRACEME,
                0,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            ) != 0
            {
                libc::_exit(2);
            }
        }
        probe::singlestep(PAIRS, write_fd);
    }
    // SAFETY: the write end belongs to the child now; the read end is ours
    // alone and owned by the File from here.
    let mut result = unsafe {
        libc::close(write_fd);
        File::from_raw_fd(read_fd)
    };

    // Run freely (forwarding signals) until the probe stops itself.
    loop {
        let st = wait(pid);
        assert!(
            libc::WIFSTOPPED(st),
            "child ended before stopping itself: status {st:#x}"
        );
        match libc::WSTOPSIG(st) {
            libc::SIGSTOP => break,
            libc::SIGTRAP => ptrace(libc::PTRACE_CONT, pid, 0),
            sig => ptrace(libc::PTRACE_CONT, pid, sig),
        }
    }

    // Single-step until it exits.
    let mut steps = 0u64;
    let status = loop {
        ptrace(libc::PTRACE_SINGLESTEP, pid, 0);
        let st = wait(pid);
        if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
            break st;
        }
        steps += 1;
        if steps > STEP_LIMIT {
            // SAFETY: kill and reap our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait(pid);
            panic!("still running after {STEP_LIMIT} single steps: restarts are not bounded");
        }
    };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "probe failed: status {status:#x}"
    );
    let mut out = String::new();
    result.read_to_string(&mut out).unwrap();
    eprintln!("{steps} single steps: {}", out.trim());
    let field = |name: &str| -> u64 {
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {out:?}"))
    };
    assert_eq!(field("ops"), 2 * PAIRS as u64);
    assert!(
        field("aborts") > 0,
        "no section aborted under single-stepping"
    );
    assert!(
        field("exhausted") > 0,
        "no operation gave up: restarts were not bounded"
    );
    assert_eq!(
        field("ok") + field("exhausted"),
        2 * PAIRS as u64,
        "every operation either committed or gave up"
    );
}

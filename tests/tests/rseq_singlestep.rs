//! A debugger single-stepping through critical sections aborts them on
//! every step; without a bound on restarts it would never get through.
//! A ptrace parent single-steps the probe through push/pop pairs: the child
//! must finish within a bounded number of steps, and must report that its
//! sections aborted and gave up ("retry exhausted") rather than looping.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rseq-probe"));
    cmd.args(["singlestep", &PAIRS.to_string()])
        .stdout(Stdio::piped());
    // SAFETY: the closure only calls ptrace, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::ptrace(
                libc::PTRACE_TRACEME,
                0,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn rseq-probe");
    let pid = child.id() as libc::pid_t;

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
            // SAFETY: kill our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = child.wait();
            panic!("still running after {STEP_LIMIT} single steps: restarts are not bounded");
        }
    };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "probe failed: status {status:#x}"
    );
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = child.wait();
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

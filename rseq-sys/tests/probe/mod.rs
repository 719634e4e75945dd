//! The probe the registration and single-step tests run in child processes
//! (under GLIBC_TUNABLES, seccomp filters, valgrind, ptrace): a test binary
//! that says `mod probe;` re-runs its `probe_entry` test (see [`command`])
//! with the probe's arguments in `RSEQ_PROBE_ARGS`, and reads the result
//! line with [`result`].
//!
//! `mode [errno|trap]`: optionally installs a seccomp filter that makes
//! `rseq(2)` fail with ENOSYS (`errno`) or raise SIGSYS (`trap`), then
//! reports `mode=<Glibc|Own|Unavailable> errno=N discipline=<Rseq|Cas>
//! roundtrip=ok` after pushing and popping 1000 items through a per-CPU
//! structure created with the rseq discipline requested.
//!
//! `threads N`: N short-lived threads push items through one structure;
//! reports `threads=N mode=<..> roundtrip=ok`.
//!
//! With `RSEQ_PROBE_POOL=1` the process behaves as with a libc without rseq
//! symbols (per-thread areas from rseq-sys's pool), and `threads` adds
//! `pool=<created>/<free>` (areas created / unregistered and reusable).
//!
//! [`singlestep`]`(n, fd)` runs in a forked, traced child: prepares a
//! structure, stops itself with SIGSTOP (the tracer then single-steps it),
//! runs n push+pop pairs, writes `ops=N ok=A exhausted=E aborts=B` to `fd`,
//! then `_exit(0)`s.

#![allow(dead_code)] // each test binary uses a different part

use rseq_sys::percpu::REGION_BYTES;
use rseq_sys::percpu::{self, ClassId, Discipline, Index, OpError, PerCpuSlabs, RegionId};
use rseq_sys::registration;
use rseq_test_support::Regions;
use std::process::Command;
use std::ptr::NonNull;

/// Class `i` of a test structure.
fn cls(i: usize) -> ClassId {
    ClassId::new(i).expect("test class below MAX_CLASSES")
}

/// The probe's arguments (space-separated) in the child's environment.
pub const ARGS_VAR: &str = "RSEQ_PROBE_ARGS";
/// What precedes the probe's result line on its stdout.
const RESULT_PREFIX: &str = "probe-result: ";

fn install_seccomp(action: u32) {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    let nr = libc::SYS_rseq as u32;
    let filter = [
        // A = seccomp_data.arch
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 4,
        },
        // if A != x86_64 goto allow
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 3,
            k: AUDIT_ARCH_X86_64,
        },
        // A = seccomp_data.nr
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // if A != SYS_rseq goto allow
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: nr,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: action,
        },
        // allow:
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x7fff_0000,
        },
    ];
    // The probe runs in a test thread: the filter goes on every thread of
    // the process (TSYNC), as in a program filtered from its start (and as
    // `/proc/self/status`, the main thread's, then says).
    assert_eq!(
        rseq_test_support::install_seccomp_filter(&filter, libc::SECCOMP_FILTER_FLAG_TSYNC),
        0,
        "seccomp filter refused"
    );
}

fn fixture() -> (Regions, PerCpuSlabs) {
    let n = registration::possible_cpus();
    let mem = Regions::new(n, REGION_BYTES);
    let slabs = PerCpuSlabs::new();
    // SAFETY: fresh zeroed aligned memory for n regions, returned together
    // with the structure (and the caller keeps both alive together).
    assert!(unsafe { slabs.init(mem.base, n, &[64, 64], Discipline::Rseq, Index::Cpu) });
    (mem, slabs)
}

fn mode(seccomp: Option<&str>) -> String {
    match seccomp {
        Some("errno") => install_seccomp(0x0005_0000 | libc::ENOSYS as u32),
        Some("trap") => install_seccomp(0x0003_0000),
        Some(other) => panic!("unknown seccomp action {other}"),
        None => {}
    }
    let m = registration::current_mode();
    let (_mem, slabs) = fixture();
    // Every item pushed comes back exactly once, whichever discipline runs.
    let mut pushed = Vec::new();
    for i in 1..=1000usize {
        let p = (i * 16) as *mut u8;
        match slabs.push(cls(i % 2), NonNull::new(p).unwrap()) {
            Ok(()) => pushed.push(p),
            Err(OpError::Full) => {}
            Err(e) => panic!("push: {e:?}"),
        }
    }
    let mut popped = Vec::new();
    for class in 0..2 {
        while let Ok(p) = slabs.pop(cls(class)) {
            popped.push(p.as_ptr());
        }
    }
    for r in 0..slabs.nregions() {
        slabs.drain(RegionId(r), &mut |_, items| popped.extend_from_slice(items));
    }
    pushed.sort();
    popped.sort();
    assert!(!pushed.is_empty());
    assert_eq!(pushed, popped, "items lost or duplicated");
    format!(
        "mode={m:?} errno={} discipline={} roundtrip=ok",
        registration::unavailable_errno(),
        // The output protocol's labels (module docs): `Cas` is the try-lock.
        match slabs.discipline() {
            Discipline::Rseq => "Rseq",
            Discipline::TryLock => "Cas",
        }
    )
}

/// Many short-lived threads each move their own items through the shared
/// structure (each thread registers lazily, on its first operation, when we
/// own the area); every item must come back exactly once.
fn threads(n: usize) -> String {
    let (_mem, slabs) = fixture();
    let slabs = &slabs;
    let modes: Vec<registration::Mode> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|t| {
                s.spawn(move || {
                    // Items travel as addresses (usize) between threads.
                    let mut mine: Vec<usize> = Vec::new();
                    for i in 0..32usize {
                        let p = (t * 32 + i + 1) * 16;
                        if slabs
                            .push(cls(0), NonNull::new(p as *mut u8).unwrap())
                            .is_ok()
                        {
                            mine.push(p);
                        }
                    }
                    (registration::current_mode(), mine)
                })
            })
            .collect();
        let mut modes = Vec::new();
        let mut pushed = Vec::new();
        for h in handles {
            let (m, mine) = h.join().unwrap();
            modes.push(m);
            pushed.extend(mine);
        }
        let mut found = Vec::new();
        for r in 0..slabs.nregions() {
            slabs.drain(RegionId(r), &mut |_, items| {
                found.extend(items.iter().map(|&p| p as usize))
            });
        }
        pushed.sort();
        found.sort();
        assert_eq!(pushed, found, "items lost or duplicated across threads");
        modes
    });
    let first = modes[0];
    assert!(
        modes.iter().all(|&m| m == first),
        "threads disagree: {modes:?}"
    );
    if std::env::var_os("RSEQ_PROBE_POOL").is_some() {
        let (created, free) = registration::pool_counts();
        format!("threads={n} mode={first:?} roundtrip=ok pool={created}/{free}")
    } else {
        format!("threads={n} mode={first:?} roundtrip=ok")
    }
}

/// The body of the traced child: never returns.
pub fn singlestep(n: usize, fd: libc::c_int) -> ! {
    let (_mem, slabs) = fixture();
    // Touch the region of every CPU first so the stepped loop runs the
    // critical sections, not the lazy initialisation.
    let item = NonNull::new(16 as *mut u8).unwrap();
    let _ = slabs.push(cls(0), item);
    while slabs.pop(cls(0)).is_ok() {}
    let before = percpu::abort_count();
    // SAFETY: raise has no preconditions; the tracer resumes us.
    unsafe { libc::raise(libc::SIGSTOP) };
    let (mut ok, mut exhausted) = (0, 0);
    for _ in 0..n {
        for r in [
            slabs.push(cls(0), item).map(|_| ()),
            slabs.pop(cls(0)).map(|_| ()),
        ] {
            match r {
                Ok(()) => ok += 1,
                Err(OpError::Exhausted) => exhausted += 1,
                Err(_) => {}
            }
        }
    }
    let aborts = percpu::abort_count() - before;
    let line = format!(
        "ops={} ok={ok} exhausted={exhausted} aborts={aborts}\n",
        2 * n
    );
    // SAFETY: writes a live buffer to the caller's descriptor, then exits
    // without running atexit handlers (fewer instructions for the tracer to
    // step through).
    unsafe {
        libc::write(fd, line.as_ptr().cast(), line.len());
        libc::_exit(0);
    }
}

/// The command that runs the probe with `args` in a child: test
/// `probe_entry` of this test binary (see [`entry`]).
pub fn command(args: &[&str]) -> Command {
    let mut cmd = rseq_test_support::child_command("probe_entry", None);
    cmd.env(ARGS_VAR, args.join(" "));
    cmd
}

/// The probe's result line in a child's stdout.
pub fn result(stdout: &str) -> Option<&str> {
    stdout
        .lines()
        .find_map(|l| l.split_once(RESULT_PREFIX).map(|(_, r)| r.trim()))
}

/// The body of the `probe_entry` test: runs the probe named by
/// `RSEQ_PROBE_ARGS` and prints its result line; does nothing without it.
pub fn entry() {
    let Some(args) = std::env::var_os(ARGS_VAR) else {
        return;
    };
    let args = args.into_string().expect("probe arguments");
    let args: Vec<&str> = args.split_whitespace().collect();
    if std::env::var_os("RSEQ_PROBE_POOL").is_some() {
        registration::force_own_pool();
    }
    let line = match args.first().copied() {
        Some("mode") => mode(args.get(1).copied()),
        Some("threads") => threads(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(64)),
        _ => panic!("usage: {ARGS_VAR}='mode [errno|trap]' or 'threads N'"),
    };
    println!("{RESULT_PREFIX}{line}");
}

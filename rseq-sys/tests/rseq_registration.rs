//! Registration in child processes: the default (glibc owns the area),
//! glibc's registration switched off (we register our own), rseq blocked by
//! seccomp (ENOSYS or SIGSYS: unavailable, and the CAS path does the work),
//! and valgrind (which does not implement rseq). The probe (`probe/`) is
//! this test binary's `probe_entry` test, re-run in a child process.

mod probe;

use std::process::Command;

fn probe(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = probe::command(args)
        .envs(env.iter().copied())
        .output()
        .expect("spawn the probe");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "probe {args:?} {env:?} failed: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    probe::result(&stdout)
        .unwrap_or_else(|| panic!("probe {args:?} {env:?}: no result line in {stdout}"))
        .to_string()
}

/// Where the probe runs (a no-op unless `RSEQ_PROBE_ARGS` is set).
#[test]
fn probe_entry() {
    probe::entry();
}

const NO_GLIBC_RSEQ: (&str, &str) = ("GLIBC_TUNABLES", "glibc.pthread.rseq=0");

#[test]
fn default_shares_glibc_area() {
    assert_eq!(
        probe(&["mode"], &[]),
        "mode=Glibc errno=0 discipline=Rseq roundtrip=ok"
    );
}

#[test]
fn registers_own_area_when_glibc_does_not() {
    assert_eq!(
        probe(&["mode"], &[NO_GLIBC_RSEQ]),
        "mode=Own errno=0 discipline=Rseq roundtrip=ok"
    );
}

/// A libc without rseq symbols (musl, glibc < 2.35; simulated): each thread
/// registers an area from rseq-sys's pool. Its address is not at a fixed
/// thread-pointer offset, so per-CPU structures use compare-and-swap.
#[test]
fn pool_areas_when_libc_has_no_rseq_symbols() {
    const POOL: (&str, &str) = ("RSEQ_PROBE_POOL", "1");
    assert_eq!(
        probe(&["mode"], &[NO_GLIBC_RSEQ, POOL]),
        "mode=Own errno=0 discipline=Cas roundtrip=ok"
    );
    // 64 threads register, exit, and unregister in their pthread key
    // destructor: every area but the main thread's is back in the pool.
    let out = probe(&["threads", "64"], &[NO_GLIBC_RSEQ, POOL]);
    let pool = out
        .strip_prefix("threads=64 mode=Own roundtrip=ok pool=")
        .unwrap_or_else(|| panic!("{out}"));
    let (created, free) = pool.split_once('/').unwrap();
    let (created, free): (usize, usize) = (created.parse().unwrap(), free.parse().unwrap());
    assert!((2..=65).contains(&created), "{out}");
    assert_eq!(free, created - 1, "{out}");
}

#[test]
fn seccomp_enosys_makes_rseq_unavailable() {
    assert_eq!(
        probe(&["mode", "errno"], &[NO_GLIBC_RSEQ]),
        format!(
            "mode=Unavailable errno={} discipline=Cas roundtrip=ok",
            libc::ENOSYS
        )
    );
}

#[test]
fn seccomp_sigsys_makes_rseq_unavailable() {
    assert_eq!(
        probe(&["mode", "trap"], &[NO_GLIBC_RSEQ]),
        format!(
            "mode=Unavailable errno={} discipline=Cas roundtrip=ok",
            libc::ENOSYS
        )
    );
}

#[test]
fn seccomp_after_glibc_registered_keeps_glibc_area() {
    // The filter comes after glibc registered the main thread: its area
    // stays live, and we keep sharing it.
    assert_eq!(
        probe(&["mode", "errno"], &[]),
        "mode=Glibc errno=0 discipline=Rseq roundtrip=ok"
    );
}

#[test]
fn valgrind_makes_rseq_unavailable() {
    let have = Command::new("valgrind")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(have, "valgrind is not installed: apt-get install valgrind");
    let probe = probe::command(&["mode"]);
    let out = Command::new("valgrind")
        .args(["-q", "--error-exitcode=99"])
        .arg(probe.get_program())
        .args(probe.get_args())
        .envs(probe.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .output()
        .expect("spawn valgrind");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "valgrind run failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        probe::result(&stdout).unwrap_or(&stdout),
        format!(
            "mode=Unavailable errno={} discipline=Cas roundtrip=ok",
            libc::ENOSYS
        )
    );
}

#[test]
fn every_thread_registers_its_own_area() {
    assert_eq!(
        probe(&["threads", "64"], &[NO_GLIBC_RSEQ]),
        "threads=64 mode=Own roundtrip=ok"
    );
    assert_eq!(
        probe(&["threads", "64"], &[]),
        "threads=64 mode=Glibc roundtrip=ok"
    );
}

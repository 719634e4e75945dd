//! Helpers shared by the tests of every crate of the workspace and by the
//! benches. Nothing here knows the allocator: the crate depends on `libc`
//! only, so that `rseq-sys`'s own tests can use it.
//!
//! - [`Rng`]: a fixed-seed PRNG (xorshift64*), so runs are reproducible;
//! - [`Regions`], [`mmap_aligned`]: anonymous memory aligned to a per-CPU
//!   region size, for per-CPU structures built outside the allocator;
//! - [`run_in_child`], [`in_child`], [`child_test`]: re-run one test of the
//!   current test binary in a child process (own configuration, own address
//!   space);
//! - [`install_seccomp_filter`]: a seccomp filter, as in a sandbox;
//! - [`process`]: run a program with a timeout, compile C test programs,
//!   scratch directories under the target directory.
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

mod child;
pub mod process;
mod regions;
mod rng;

pub use child::{
    assert_child_ok, child_command, child_test, child_test_env, in_child, run_in_child, CHILD_VAR,
};
pub use regions::{mmap_aligned, Regions};
pub use rng::Rng;

/// Pins the calling thread to `cpu`; false if the kernel refused (no such
/// CPU, or a cpuset without it).
pub fn pin_to_cpu(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it;
    // sched_setaffinity reads it and affects the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The calling thread's kernel thread id.
pub fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Sets `PR_SET_NO_NEW_PRIVS` (asserted) and installs the seccomp BPF
/// program `filter` with the `seccomp(2)` flags `flags` (0: on the calling
/// thread; `SECCOMP_FILTER_FLAG_TSYNC`: on every thread of the process).
/// Returns what `seccomp` returned: 0 once the filter is in force.
pub fn install_seccomp_filter(filter: &[libc::sock_filter], flags: libc::c_ulong) -> libc::c_long {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with plain integer arguments, and seccomp with a valid
    // BPF program that outlives the call (the kernel copies it).
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    }
}

/// The allocator's size classes (8 B, 16..128 by 16, then four steps per
/// power of two up to 256 KiB), written out here so that the tests do not
/// depend on the allocator's internals.
pub fn class_sizes() -> Vec<usize> {
    let mut v = vec![8];
    v.extend((16..=128).step_by(16));
    for k in 7..18 {
        for j in 1..=4 {
            v.push((1 << k) + j * (1 << (k - 2)));
        }
    }
    v
}

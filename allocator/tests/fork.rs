//! fork() while other threads allocate: with `raw::fork_prepare/parent/child`
//! registered through pthread_atfork (twice more, as a user might do, on top
//! of the crate's own constructor), or only by the crate's constructor (a
//! plain `#[global_allocator]` program), the child can allocate freely (no
//! lock left held by a vanished thread). Each child must finish within a
//! deadline.

#[global_allocator]
static GLOBAL: rseq_alloc::RseqAlloc = rseq_alloc::RseqAlloc;

mod common;
use rseq_test_support::child_test;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

extern "C" fn prepare() {
    rseq_alloc::raw::fork_prepare();
}
extern "C" fn parent() {
    rseq_alloc::raw::fork_parent();
}
extern "C" fn child() {
    rseq_alloc::raw::fork_child();
}

fn child_work() -> bool {
    // Small, large and huge allocations, through every layer.
    let mut v: Vec<Vec<u8>> = Vec::new();
    for i in 0..2000usize {
        v.push(vec![(i % 251) as u8; (i * 37) % 5000 + 1]);
    }
    let big = vec![7u8; 600 << 10];
    let huge = vec![9u8; 4 << 20];
    let ok = v
        .iter()
        .enumerate()
        .all(|(i, x)| x.iter().all(|&b| b == (i % 251) as u8))
        && big.iter().all(|&b| b == 7)
        && huge[(4 << 20) - 1] == 9;
    drop(v);
    rseq_alloc::raw::trim();
    ok
}

#[test]
fn fork_while_threads_allocate() {
    fork_body(true);
}

/// A program that registers nothing itself: the crate's ELF constructor
/// registered the handlers before `main` (a child process, so that no
/// manual registration from another test is in force).
#[test]
fn fork_handlers_registered_by_constructor() {
    child_test("fork_handlers_registered_by_constructor", None, || {
        fork_body(false)
    });
}

/// The same in forced CAS mode (a child process, as config is read once).
#[test]
fn fork_while_threads_allocate_cas() {
    child_test("fork_while_threads_allocate_cas", Some("rseq=off"), || {
        assert_eq!(rseq_alloc::mode_name(), "cmpxchg");
        fork_body(true);
    });
}

fn fork_body(register: bool) {
    if register {
        // SAFETY: registering plain extern "C" handlers with no state.
        unsafe {
            assert_eq!(
                libc::pthread_atfork(Some(prepare), Some(parent), Some(child)),
                0
            );
            assert_eq!(
                libc::pthread_atfork(Some(prepare), Some(parent), Some(child)),
                0
            );
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let v: Vec<Box<[u8]>> = (0..64)
                        .map(|i| vec![t as u8; 16 + (i * 97) % 70_000].into_boxed_slice())
                        .collect();
                    n += v.len() as u64;
                    if n.is_multiple_of(4096) {
                        rseq_alloc::raw::trim();
                    }
                }
                n
            })
        })
        .collect();
    for _ in 0..20 {
        // SAFETY: fork in a test process; the child only runs child_work
        // and _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = child_work();
            // SAFETY: leave the child without running the parent's atexit
            // handlers or test harness.
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        }
        common::wait_forked_child(pid, "hung after fork (a lock was left held)");
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        assert!(w.join().unwrap() > 0);
    }
}

//! Thread magazines, the CAS fallback's per-thread front (`magazine.rs`):
//! a freed block stays with the thread that freed it, comes back to it,
//! and goes back to the shared caches when the thread exits, so nothing
//! is lost when threads come and go (more of them than there are
//! magazines). Each case runs in a child process with `rseq=off`.

use rseq_alloc::raw;
use rseq_test_support::{child_test, pin_to_cpu};
use std::sync::mpsc;

/// Frees a live block from `raw::malloc`.
fn free(p: *mut u8) {
    // SAFETY: every caller passes a live block from `raw::malloc` and does
    // not use it afterwards (the tests compare addresses only).
    unsafe { raw::free(p) }
}

/// Thread A frees a 64 B block; thread B, on the same CPU, does not get it
/// while A lives (it is in A's magazine, not in the CPU's stack); A's next
/// malloc does. Then A frees it again and exits: the exit flush puts it
/// in the CPU's stack, where B's next malloc finds it.
#[test]
fn cas_magazine_is_private_and_flushed_at_exit() {
    child_test(
        "cas_magazine_is_private_and_flushed_at_exit",
        Some("rseq=off"),
        || {
            assert_eq!(rseq_alloc::mode_name(), "cmpxchg");
            pin_to_cpu(0);
            let (to_b, b_rx) = mpsc::channel::<usize>();
            let (to_a, a_rx) = mpsc::channel::<()>();
            let a = std::thread::spawn(move || {
                pin_to_cpu(0);
                let p = raw::malloc(64);
                free(p);
                to_b.send(p as usize).unwrap();
                a_rx.recv().unwrap();
                let again = raw::malloc(64);
                assert_eq!(again, p, "A's magazine gives A its block back");
                free(again);
                p as usize
            });
            let p = b_rx.recv().unwrap();
            let mut held = Vec::new();
            for _ in 0..8 {
                let q = raw::malloc(64);
                assert_ne!(q as usize, p, "B got a block in A's magazine");
                held.push(q);
            }
            to_a.send(()).unwrap();
            assert_eq!(a.join().unwrap(), p);
            let q = raw::malloc(64);
            assert_eq!(q as usize, p, "A's exit put its block in CPU 0's stack");
            free(q);
            for q in held {
                free(q);
            }
        },
    );
}

/// 300 threads one after the other (more than the 256 magazines) each
/// allocate, fill, check and free blocks of four classes, one round
/// holding them all, one round freeing as it goes: after they exit and a
/// trim, nothing is in use and nothing is cached (every magazine was
/// flushed), and the next threads still got magazines (a free then malloc
/// of a class returns the same block).
#[test]
fn cas_exiting_threads_lose_nothing() {
    child_test("cas_exiting_threads_lose_nothing", Some("rseq=off"), || {
        assert_eq!(rseq_alloc::mode_name(), "cmpxchg");
        let sizes = [16usize, 64, 1000, 4000];
        for t in 0..300u64 {
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for (k, &size) in sizes.iter().enumerate() {
                    for i in 0..6u64 {
                        let p = raw::malloc(size) as *mut u64;
                        assert!(!p.is_null());
                        let tag = t << 32 | (k as u64) << 8 | i;
                        // SAFETY: a fresh block of `size` >= 16 bytes.
                        unsafe {
                            p.write(tag);
                            p.add(size / 8 - 1).write(!tag);
                        }
                        held.push((p, size, tag));
                    }
                }
                for &(p, size, tag) in &held {
                    // SAFETY: as above; the block is still ours.
                    unsafe {
                        assert_eq!(p.read(), tag);
                        assert_eq!(p.add(size / 8 - 1).read(), !tag);
                    }
                    free(p.cast());
                }
                for &size in &sizes {
                    let p = raw::malloc(size);
                    free(p);
                    assert_eq!(raw::malloc(size), p, "{size} B: this thread's magazine");
                    free(p);
                }
            })
            .join()
            .unwrap();
        }
        raw::trim();
        let st = raw::stats();
        assert_eq!(st.in_use_bytes, 0, "every block came back: {st:?}");
        assert_eq!(st.cached_bytes, 0, "no magazine kept anything: {st:?}");
    });
}

static HANDLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static HANDLER_BAD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The block the SIGUSR1 handler holds between two signals.
static HELD: std::sync::atomic::AtomicPtr<u64> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// The handler's pattern in a 64-byte block.
fn handler_pattern(p: *mut u64) -> bool {
    // SAFETY: the caller's block of 64 bytes.
    (0..8).all(|i| unsafe { p.add(i).read_volatile() } == 0xdead_0000 + i as u64)
}

/// SIGUSR1: allocates a block of the class the interrupted loop uses,
/// fills it, and frees the one it took last time (which must still hold
/// its pattern): across each signal the magazine loses one block and gains
/// another, so an interrupted pop or push that a handler's operation
/// overlapped leaves a block handed out twice.
extern "C" fn on_usr1(_: libc::c_int) {
    use std::sync::atomic::Ordering::Relaxed;
    let p = raw::malloc(64) as *mut u64;
    if p.is_null() {
        HANDLER_BAD.fetch_add(1, Relaxed);
        return;
    }
    for i in 0..8 {
        // SAFETY: a fresh 64-byte block.
        unsafe { p.add(i).write_volatile(0xdead_0000 + i as u64) };
    }
    let old = HELD.swap(p, Relaxed);
    if !old.is_null() {
        if !handler_pattern(old) {
            HANDLER_BAD.fetch_add(1, Relaxed);
        }
        free(old.cast());
    }
    HANDLED.fetch_add(1, Relaxed);
}

/// A signal handler that allocates, landing in the middle of a magazine
/// operation of the thread it interrupts (20000 signals at a thread
/// looping on malloc and free of the same class), takes the try-lock
/// instead: no block is handed to both, none is lost. (Like every malloc,
/// ours is not async-signal-safe in its slow paths, which take locks: a
/// handler that interrupts a refill from the central list deadlocks on
/// it. So the class is warmed up first, and the loop stays on the fast
/// paths that the handler may interrupt.)
#[test]
fn cas_signal_handler_mallocs_do_not_share_the_magazine() {
    use std::sync::atomic::{AtomicBool, Ordering};
    child_test(
        "cas_signal_handler_mallocs_do_not_share_the_magazine",
        Some("rseq=off"),
        || {
            assert_eq!(rseq_alloc::mode_name(), "cmpxchg");
            // SAFETY: installs a handler (an extern "C" fn) for SIGUSR1 with
            // a zeroed, then filled, sigaction.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_usr1 as extern "C" fn(libc::c_int) as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
            }
            // Warm up: this thread's magazine, and enough 64 B blocks in
            // the CPU stacks that neither the loop nor the handler refills.
            let warm: Vec<_> = (0..256).map(|_| raw::malloc(64)).collect();
            for p in warm {
                free(p);
            }
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() } as usize;
            static DONE: AtomicBool = AtomicBool::new(false);
            const SIGNALS: u64 = 20_000;
            let killer = std::thread::spawn(move || {
                // A handler that never returns (a broken magazine can spin)
                // fails the test after 20 s instead of hanging it.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                for _ in 0..SIGNALS {
                    let before = HANDLED.load(Ordering::Relaxed);
                    // SAFETY: `me` is the main thread, alive until DONE.
                    unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR1) };
                    while HANDLED.load(Ordering::Relaxed) == before {
                        if std::time::Instant::now() > deadline {
                            eprintln!("a signal handler did not return");
                            std::process::abort();
                        }
                        std::hint::spin_loop();
                    }
                }
                DONE.store(true, Ordering::Release);
            });
            let mut rounds = 0u64;
            let mut bad = 0u64;
            while !DONE.load(Ordering::Acquire) {
                let p = raw::malloc(64) as *mut u64;
                for i in 0..8 {
                    // SAFETY: a fresh 64-byte block.
                    unsafe { p.add(i).write_volatile(rounds ^ i as u64) };
                }
                for i in 0..8 {
                    // SAFETY: as above.
                    if unsafe { p.add(i).read_volatile() } != rounds ^ i as u64 {
                        bad += 1;
                    }
                }
                free(p.cast());
                rounds += 1;
            }
            killer.join().unwrap();
            let last = HELD.swap(std::ptr::null_mut(), Ordering::Relaxed);
            assert!(handler_pattern(last));
            free(last.cast());
            assert_eq!(HANDLED.load(Ordering::Relaxed), SIGNALS);
            assert_eq!(
                HANDLER_BAD.load(Ordering::Relaxed),
                0,
                "the handler's block changed"
            );
            assert_eq!(
                bad, 0,
                "the loop's block changed under it ({rounds} rounds)"
            );
            raw::trim();
            let st = raw::stats();
            assert_eq!(st.in_use_bytes, 0, "every block came back: {st:?}");
        },
    );
}

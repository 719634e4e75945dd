//! Memory over time (issue 10): freed huge blocks are reused, and dirty free
//! memory goes back to the OS after `decay_ms` without any `trim` call,
//! driven by allocator activity or by the opt-in background thread.
//!
//! Each configuration runs in a child process (the configuration is read
//! once, and RSS must not be disturbed by other tests): the parent test
//! re-runs this binary on one test with `RSEQ_ALLOC_TEST_BODY=1` and the
//! `RSEQ_MALLOC_CONF` under test. The test harness itself allocates through
//! glibc; the measured allocations go through `raw`.

mod common;
use common::*;
use rseq_alloc::raw;
use rseq_test_support::{in_child, run_in_child};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
/// Decay used by the RSS tests (short, to keep CI short).
const DECAY_MS: u64 = 1000;
/// RSS bound after the decay (the target).
const RSS_AFTER_BYTES: usize = 32 << 20;

/// Re-runs test `name` of this binary in a child with `conf`; asserts that
/// it passed and echoes its output.
fn run_child(name: &str, conf: &str) {
    let out = run_in_child(name, Some(conf));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "child {name} ({conf}) failed");
    assert!(text.contains("1 passed"), "child {name} ran no test");
}

/// A test that runs in a child: there, runs `body`; in the parent,
/// [`run_child`]`(name, conf)`.
fn decay_test(name: &str, conf: &str, body: impl FnOnce()) {
    if in_child() {
        body();
    } else {
        run_child(name, conf);
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }
}

/// Allocates 1 GiB (a quarter in small objects, a quarter in large spans,
/// half in huge blocks, interleaved), touches it, frees it all in a
/// scrambled order (checking contents). Returns (RSS before, RSS at peak).
fn spike() -> (usize, usize) {
    raw::init();
    let base = rss_bytes();
    let mut rng = Rng(0x1234_5678_9abc_def0);
    let mut blocks: Vec<(*mut u8, usize)> = Vec::new();
    let (mut small, mut large, mut huge) = (0usize, 0usize, 0usize);
    while small + large + huge < 1 << 30 {
        let r = rng.next();
        let size = match r % 4 {
            0 if small < 256 * MIB => 16 + r % 2048,
            1 if large < 256 * MIB => (64 << 10) + r % (900 << 10),
            _ if huge < 512 * MIB => MIB + r % (15 * MIB),
            _ => continue,
        };
        if size < 4096 {
            small += size;
        } else if size < MIB {
            large += size;
        } else {
            huge += size;
        }
        let p = raw::malloc(size);
        assert!(!p.is_null());
        touch(p, size, (size % 251) as u8);
        blocks.push((p, size));
    }
    let peak = rss_bytes();
    assert!(peak >= base + 900 * MIB, "peak {peak} base {base}");
    let n = blocks.len();
    let step = (1..n)
        .rev()
        .find(|s| gcd(*s, n) == 1 && *s > n / 3)
        .unwrap();
    for k in 0..n {
        let (p, size) = blocks[(k * step) % n];
        // SAFETY: a live block of `size` bytes, freed once (step is coprime
        // with n, so each index comes once).
        unsafe {
            assert_eq!(*p, (size % 251) as u8);
            assert_eq!(*p.add(size - 1), (size % 251) as u8);
            raw::free(p);
        }
    }
    let st = raw::stats();
    assert_eq!((st.in_use_bytes, st.huge_bytes), (0, 0), "{st:?}");
    (base, peak)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Light activity for `dur`: each millisecond a few small objects, one
/// large block and, every 16th round, a 2 MiB one, allocated and freed.
fn light_activity(dur: Duration) {
    let end = Instant::now() + dur;
    let mut rng = Rng(42);
    let mut rounds = 0u32;
    while Instant::now() < end && rounds < 100_000 {
        let mut v = [std::ptr::null_mut(); 8];
        for p in v.iter_mut() {
            *p = raw::malloc(16 + rng.next() % 1000);
            assert!(!p.is_null());
        }
        let big = raw::malloc(if rounds.is_multiple_of(16) {
            2 * MIB
        } else {
            100 << 10
        });
        assert!(!big.is_null());
        touch(big, 100 << 10, 1);
        // SAFETY: blocks just allocated, freed once.
        unsafe {
            raw::free(big);
            for p in v {
                raw::free(p);
            }
        }
        rounds += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// [`spike`], then `wait`, then the RSS [`report`]ed as `what`; returns
/// the RSS (base, peak, after).
fn spike_then(what: &str, wait: impl FnOnce()) -> (usize, usize, usize) {
    let (base, peak) = spike();
    wait();
    let after = rss_bytes();
    report(what, base, peak, after);
    (base, peak, after)
}

fn report(what: &str, base: usize, peak: usize, after: usize) {
    eprintln!(
        "{what}: rss base {} MiB, peak {} MiB, after {} MiB; {:?}",
        base >> 20,
        peak >> 20,
        after >> 20,
        raw::stats()
    );
}

/// (a) decay driven by activity: RSS falls below 32 MiB within decay + 2 s.
#[test]
fn spike_then_light_activity_returns_memory() {
    decay_test(
        "spike_then_light_activity_returns_memory",
        &format!("decay_ms={DECAY_MS}"),
        || {
            let (_, _, after) = spike_then("activity", || {
                light_activity(Duration::from_millis(DECAY_MS + 2000))
            });
            assert!(after < RSS_AFTER_BYTES, "rss {after} after decay + 2 s");
            // Only what the activity itself freed lately may still be kept.
            let kept = raw::stats().huge_kept_bytes;
            assert!(kept <= 2 * MIB, "kept {kept}: the spike's ranges decayed");
            assert!(!rseq_alloc::raw::background_running());
        },
    );
}

/// Light activity that never misses a per-CPU cache for its small objects:
/// each millisecond 32 malloc/free pairs of 16..1040 bytes and one pair of
/// 64 KiB (above the per-CPU caches' 32 KiB, so it reaches the central
/// list), for `dur`.
fn pair_activity(dur: Duration) {
    let end = Instant::now() + dur;
    let mut rng = Rng(7);
    let mut rounds = 0u32;
    while Instant::now() < end && rounds < 100_000 {
        for _ in 0..32 {
            let p = raw::malloc(16 + rng.next() % 1024);
            assert!(!p.is_null());
            // SAFETY: just allocated, freed once.
            unsafe { raw::free(p) };
        }
        let big = raw::malloc(64 << 10);
        assert!(!big.is_null());
        touch(big, 64 << 10, 3);
        // SAFETY: just allocated, freed once.
        unsafe { raw::free(big) };
        rounds += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// (a') the same when the activity is alloc/free pairs, which stay in the
/// per-CPU caches: the decay passes that the 64 KiB pairs drive drain the
/// caches that did not move and the unused part of the transfer stacks,
/// whose objects (the last ones freed, about one per span) otherwise pin
/// their spans for ever.
#[test]
fn spike_then_cache_pairs_returns_memory() {
    decay_test(
        "spike_then_cache_pairs_returns_memory",
        &format!("decay_ms={DECAY_MS}"),
        || {
            let (base, _, after) = spike_then("pairs", || {
                pair_activity(Duration::from_millis(DECAY_MS + 2000))
            });
            assert!(
                after < base + 16 * MIB,
                "rss {after} (base {base}) after decay + 2 s of pairs"
            );
            let st = rseq_alloc::stats();
            assert_eq!(st.allocated, 0, "{st:?}");
            assert!(st.cached < MIB, "caches not collected: {st:?}");
        },
    );
}

/// Without waiting for the decay: right after a spike is freed the heap
/// keeps at most its dirty floor (8 MiB, an eighth of the pages in use
/// being nothing) of dirty free pages, and gives the rest back as it is
/// freed; the blocks are all accounted for.
#[test]
fn spike_leaves_a_bounded_dirty_heap() {
    decay_test(
        "spike_leaves_a_bounded_dirty_heap",
        "decay_ms=600000",
        || {
            let (base, peak, after) = spike_then("dirty cap", || {});
            let st = rseq_alloc::stats();
            assert_eq!(st.allocated, 0, "{st:?}");
            let dirty = st.mapped - st.active;
            assert!(dirty <= 8 * MIB, "{dirty} dirty free bytes kept: {st:?}");
            assert!(after < peak / 4, "rss {after} of peak {peak} (base {base})");
        },
    );
}

/// (b) background=1: an idle process returns its memory.
#[test]
fn spike_then_idle_with_background_thread_returns_memory() {
    decay_test(
        "spike_then_idle_with_background_thread_returns_memory",
        &format!("decay_ms={DECAY_MS},background=1"),
        || {
            let (_, _, after) = spike_then("idle, background", || {
                assert!(rseq_alloc::raw::background_running());
                std::thread::sleep(Duration::from_millis(DECAY_MS + 2000));
            });
            assert!(
                after < RSS_AFTER_BYTES,
                "rss {after} after decay + 2 s idle"
            );
            assert_eq!(raw::stats().huge_kept_bytes, 0, "kept ranges decayed");
        },
    );
}

/// Makes `clone3` fail with ENOSYS and `clone` with EPERM for this thread
/// (seccomp), so `pthread_create` fails as in a sandbox.
fn forbid_threads() {
    let f = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let prog = [
        f(ld, 0, 0, 0), // seccomp_data.nr
        f(jeq, 0, 1, libc::SYS_clone3 as u32),
        f(ret, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        f(jeq, 0, 1, libc::SYS_clone as u32),
        f(ret, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        f(ret, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    // On this thread only (flags 0).
    assert_eq!(rseq_test_support::install_seccomp_filter(&prog, 0), 0);
    let t = std::thread::Builder::new().spawn(|| ());
    assert!(t.is_err(), "the filter forbids threads");
}

/// background=1 where no thread can be created (sandbox): harmless, the
/// activity-driven decay still returns the memory.
#[test]
fn background_thread_creation_failure_is_harmless() {
    decay_test(
        "background_thread_creation_failure_is_harmless",
        &format!("decay_ms={DECAY_MS},background=1"),
        || {
            forbid_threads();
            let (_, _, after) = spike_then("no thread possible", || {
                assert!(!rseq_alloc::raw::background_running());
                light_activity(Duration::from_millis(DECAY_MS + 2000));
            });
            assert!(!rseq_alloc::raw::background_running());
            assert!(after < RSS_AFTER_BYTES, "rss {after} after decay + 2 s");
        },
    );
}

/// (c) decay_ms=-1: nothing goes back by itself (the knob works); `trim`
/// still returns it.
#[test]
fn decay_never_keeps_memory_until_trim() {
    decay_test("decay_never_keeps_memory_until_trim", "decay_ms=-1", || {
        let (base, peak, after) = spike_then("never", || {
            light_activity(Duration::from_millis(DECAY_MS + 2000))
        });
        assert!(
            after >= base + 700 * MIB,
            "rss {after} fell with decay_ms=-1"
        );
        let kept = raw::stats().huge_kept_bytes;
        assert!(kept >= 256 * MIB, "kept {kept}");
        assert!(raw::trim());
        let trimmed = rss_bytes();
        report("never, after trim", base, peak, trimmed);
        assert!(trimmed < RSS_AFTER_BYTES, "rss {trimmed} after trim");
        assert_eq!(raw::stats().huge_kept_bytes, 0);
    });
}

/// (d) 1000 rounds of a 16 MiB malloc/write/free (and calloc, which must
/// read as zero although the memory is reused) make fewer than 10 mmaps.
#[test]
fn huge_blocks_are_reused() {
    decay_test("huge_blocks_are_reused", "", || {
        raw::init();
        let maps0 = raw::stats().huge_maps;
        let mut first = std::ptr::null_mut();
        for round in 0..1000 {
            let p = if round % 10 == 9 {
                let p = raw::calloc(16 * MIB);
                assert!(!p.is_null());
                let mut i = 0;
                while i < 16 * MIB {
                    // SAFETY: inside the 16 MiB block.
                    assert_eq!(unsafe { *p.add(i) }, 0, "calloc of a reused range at {i}");
                    i += 4096;
                }
                p
            } else {
                raw::malloc(16 * MIB)
            };
            assert!(!p.is_null());
            if round == 0 {
                first = p;
            }
            touch(p, 16 * MIB, (round % 250) as u8 + 1);
            // SAFETY: live block, freed once.
            unsafe { raw::free(p) };
        }
        let st = raw::stats();
        eprintln!("reuse: {st:?}");
        assert!(st.huge_maps - maps0 < 10, "{} mmaps", st.huge_maps - maps0);
        assert_eq!(st.huge_bytes, 0);
        assert_eq!(st.huge_kept_bytes, 16 * MIB);
        // The kept range is still a free range, not a block: freeing it again
        // aborts (bad_pointers covers the message); trim unmaps it.
        assert!(mapped(first as usize));
        assert!(raw::trim());
        assert!(!mapped(first as usize));
        assert_eq!(raw::stats().huge_kept_bytes, 0);
        raw::check_invariants();
    });
}

/// decay_ms=0: freed memory goes back at once (huge blocks are unmapped on
/// free, free spans released).
#[test]
fn decay_zero_returns_at_once() {
    decay_test("decay_zero_returns_at_once", "decay_ms=0", || {
        let p = raw::malloc(64 * MIB);
        assert!(!p.is_null());
        touch(p, 64 * MIB, 9);
        let rss = rss_bytes();
        // SAFETY: live block.
        unsafe { raw::free(p) };
        assert!(!mapped(p as usize), "huge block still mapped after free");
        assert!(rss_bytes() + 60 * MIB <= rss);
        let q = raw::malloc(512 << 10);
        touch(q, 512 << 10, 1);
        // SAFETY: live block.
        unsafe { raw::free(q) };
        let st = raw::stats();
        assert_eq!(st.huge_kept_bytes, 0);
        assert!(st.released_bytes >= 512 << 10, "{st:?}");
    });
}

extern "C" fn prepare() {
    raw::fork_prepare();
}
extern "C" fn parent() {
    raw::fork_parent();
}
extern "C" fn child() {
    raw::fork_child();
}

/// Allocates through every layer and frees; true if contents survived.
fn alloc_work(seed: usize) -> bool {
    let mut ok = true;
    let mut v = Vec::new();
    for i in 0..500usize {
        let size = match i % 50 {
            0 => (2 + (i + seed) % 6) * MIB,
            1..=5 => 20_000 + (i * 977) % 500_000,
            _ => 1 + (i * 37) % 3000,
        };
        let p = raw::malloc(size);
        if p.is_null() {
            return false;
        }
        // SAFETY: a fresh block of `size` bytes.
        unsafe {
            *p = (i % 251) as u8;
            *p.add(size - 1) = (i % 251) as u8;
        }
        v.push((p, size, (i % 251) as u8));
    }
    for (p, size, b) in v {
        // SAFETY: live blocks, freed once.
        unsafe {
            ok &= *p == b && *p.add(size - 1) == b;
            raw::free(p);
        }
    }
    ok
}

/// (e) fork while the background thread runs (and other threads allocate):
/// the child allocates, gets its own background thread when it needs one,
/// and exits 0.
#[test]
fn fork_with_background_thread() {
    decay_test(
        "fork_with_background_thread",
        "decay_ms=40,background=1",
        || {
            // SAFETY: registering plain extern "C" handlers with no state.
            assert_eq!(
                unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) },
                0
            );
            assert!(alloc_work(0));
            assert!(rseq_alloc::raw::background_running());
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let workers: Vec<_> = (0..2)
                .map(|t| {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        let mut ok = true;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            ok &= alloc_work(t);
                        }
                        ok
                    })
                })
                .collect();
            for round in 0..10 {
                std::thread::sleep(Duration::from_millis(15));
                // SAFETY: fork in a test process; the child only allocates, waits
                // and leaves with _exit.
                let pid = unsafe { libc::fork() };
                assert!(pid >= 0);
                if pid == 0 {
                    let mut ok = alloc_work(round);
                    // The child's thread comes back on its first slow paths, and
                    // decays what the child freed while the child sleeps.
                    let mut done = false;
                    for _ in 0..25 {
                        std::thread::sleep(Duration::from_millis(200));
                        if rseq_alloc::raw::background_running()
                            && raw::stats().huge_kept_bytes == 0
                        {
                            done = true;
                            break;
                        }
                        ok &= alloc_work(round + 1);
                    }
                    ok &= done;
                    // SAFETY: leave without the parent's atexit handlers or harness.
                    unsafe { libc::_exit(if ok { 0 } else { 3 }) };
                }
                common::wait_forked_child(pid, "hung after fork");
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for w in workers {
                assert!(w.join().unwrap());
            }
        },
    );
}

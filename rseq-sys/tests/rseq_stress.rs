//! Stress tests of the per-CPU stacks, after the kernel's rseq selftests
//! (param_test): many more threads than CPUs move unique tokens through the
//! per-CPU stacks while a helper thread injects preemption (signal bursts,
//! affinity churn, yields) and a delay loop inside every critical section
//! widens the race windows. At the end every token must be found exactly
//! once, and the per-thread counters must add up exactly to what the stacks
//! still hold. Each test runs with rseq and with the CAS fallback.
//!
//! The delay loop exists only in a build with `--cfg rseq_inject_delay`
//! (never in a shipped one), so this file runs in its own invocation
//! (`rseq_stress_injected.rs` does it inside the normal suite):
//! `RUSTFLAGS="--cfg rseq_inject_delay" cargo test --release -p rseq-sys
//! --target-dir target/inject --test rseq_stress`.
#![cfg(rseq_inject_delay)]

use rseq_sys::percpu::{
    self, ClassId, Discipline, Index, OpError, PerCpuSlabs, RegionId, REGION_BYTES,
};
use rseq_sys::registration;
use rseq_test_support::{gettid, pin_to_cpu, Regions, Rng};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};

/// Class `i` of a test structure.
fn cls(i: usize) -> ClassId {
    ClassId::new(i).expect("test class below MAX_CLASSES")
}

const THREADS: usize = 32;
const TOKENS_PER_THREAD: usize = 64;
const ITERS: usize = 10_000;
const CAPS: [u16; 3] = [8, 64, 1024];
#[cfg(rseq_inject_delay)]
const DELAY_LOOPS: u64 = 1000;

/// Serialises the tests of this file: they share the injected delay and the
/// process-wide abort counter.
static SERIAL: Mutex<()> = Mutex::new(());

extern "C" fn on_sigusr1(_: libc::c_int) {}

fn install_sigusr1() {
    // SAFETY: an all-zero sigaction is valid to fill in; the handler does
    // nothing, which is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
}

fn token(i: usize) -> *mut u8 {
    ((i + 1) * 16) as *mut u8
}

fn token_index(p: *mut u8) -> usize {
    let v = p as usize;
    assert!(v.is_multiple_of(16) && v >= 16, "corrupt token {v:#x}");
    v / 16 - 1
}

struct Fixture {
    _mem: Regions,
    slabs: PerCpuSlabs,
}

fn fixture(discipline: Discipline, index: Index) -> Arc<Fixture> {
    let n = registration::possible_cpus();
    let mem = Regions::new(n, REGION_BYTES);
    let slabs = PerCpuSlabs::new();
    // SAFETY: fresh zeroed memory for n aligned regions, owned by the same
    // fixture, so it outlives the structure.
    assert!(unsafe { slabs.init(mem.base, n, &CAPS, discipline, index) });
    assert_eq!(
        slabs.discipline(),
        discipline,
        "this machine supports rseq: no downgrade expected"
    );
    Arc::new(Fixture { _mem: mem, slabs })
}

/// Preemption injector: signal bursts to the workers, affinity churn,
/// membarrier RSEQ fences, yields.
fn injector(tids: Arc<Vec<AtomicI32>>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut rng = Rng::new(0xfeed);
        let ncpu = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut signals = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let tid = tids[rng.below(tids.len() as u64) as usize].load(Ordering::Relaxed);
            if tid == 0 {
                std::thread::yield_now();
                continue;
            }
            match rng.below(5) {
                0 | 1 => {
                    for _ in 0..8 {
                        // SAFETY: tgkill to a thread of our own process; the
                        // handler is installed and harmless. A thread that has
                        // exited yields ESRCH, which is fine.
                        unsafe {
                            libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1)
                        };
                        signals += 1;
                    }
                }
                2 => {
                    // SAFETY: cpu_set_t is plain data; setaffinity on one of
                    // our threads (ESRCH if it exited).
                    unsafe {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        if rng.below(3) == 0 {
                            for c in 0..ncpu {
                                libc::CPU_SET(c, &mut set);
                            }
                        } else {
                            libc::CPU_SET(rng.below(ncpu as u64) as usize, &mut set);
                        }
                        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
                    }
                }
                3 => {
                    // A process-wide RSEQ fence restarts whatever section is
                    // running on any CPU (Linux's own "preemption" for rseq).
                    let _ = rseq_sys::fence::all();
                }
                _ => std::thread::yield_now(),
            }
        }
        signals
    })
}

struct WorkerResult {
    held: Vec<*mut u8>,
    pushed: u64,
    popped: u64,
    /// Operations that went through `pop_fast` / `push_fast` and hit.
    quick: u64,
    /// Full operations refused with `Exhausted` (a busy lock, or restarts).
    exhausted: u64,
}

// SAFETY: the pointers are opaque tokens, never dereferenced.
unsafe impl Send for WorkerResult {}

fn worker(fx: &Fixture, id: usize, start: &Barrier, tids: &[AtomicI32]) -> WorkerResult {
    tids[id].store(gettid(), Ordering::Relaxed);
    let mut rng = Rng::new(id as u64 * 7919 + 1);
    let mut held: Vec<*mut u8> = (0..TOKENS_PER_THREAD)
        .map(|i| token(id * TOKENS_PER_THREAD + i))
        .collect();
    let (mut pushed, mut popped, mut quick, mut exhausted) = (0u64, 0u64, 0u64, 0u64);
    let mut buf = [std::ptr::null_mut(); 32];
    start.wait();
    for _ in 0..ITERS {
        let class = rng.below(CAPS.len() as u64) as usize;
        match rng.below(14) {
            // The quick entries (the allocator's fast paths): a miss
            // (empty, full, busy lock, aborted section) changes nothing.
            0..=1 => {
                if let Some(p) = held.pop() {
                    if fx.slabs.push_fast(cls(class), NonNull::new(p).unwrap()) {
                        pushed += 1;
                        quick += 1;
                    } else {
                        held.push(p);
                    }
                }
            }
            2..=3 => {
                let p = fx.slabs.pop_fast(cls(class));
                if !p.is_null() {
                    popped += 1;
                    quick += 1;
                    held.push(p);
                }
            }
            4..=7 => {
                if let Some(p) = held.pop() {
                    match fx.slabs.push(cls(class), NonNull::new(p).unwrap()) {
                        Ok(()) => pushed += 1,
                        Err(OpError::Full) => held.push(p),
                        Err(OpError::Exhausted) => {
                            exhausted += 1;
                            held.push(p)
                        }
                        Err(e) => panic!("push: {e:?}"),
                    }
                }
            }
            8..=11 => match fx.slabs.pop(cls(class)) {
                Ok(p) => {
                    popped += 1;
                    held.push(p.as_ptr());
                }
                Err(OpError::Empty) => {}
                Err(OpError::Exhausted) => exhausted += 1,
                Err(e) => panic!("pop: {e:?}"),
            },
            12 => {
                let max = 1 + rng.below(buf.len() as u64) as usize;
                match fx.slabs.pop_batch(cls(class), &mut buf[..max]) {
                    Ok(n) => {
                        assert!(n >= 1 && n <= max);
                        popped += n as u64;
                        held.extend_from_slice(&buf[..n]);
                    }
                    Err(OpError::Empty | OpError::Exhausted) => {}
                    Err(e) => panic!("pop_batch: {e:?}"),
                }
            }
            _ => {
                let k = held.len().min(1 + rng.below(32) as usize);
                if k > 0 {
                    let from = held.len() - k;
                    match fx.slabs.push_batch(cls(class), &held[from..]) {
                        Ok(n) => {
                            assert!(n >= 1 && n <= k);
                            pushed += n as u64;
                            // The pushed prefix leaves our hands.
                            held.drain(from..from + n);
                        }
                        Err(OpError::Full | OpError::Exhausted) => {}
                        Err(e) => panic!("push_batch: {e:?}"),
                    }
                }
            }
        }
        if rng.below(512) == 0 {
            std::thread::yield_now();
        }
    }
    WorkerResult {
        held,
        pushed,
        popped,
        quick,
        exhausted,
    }
}

/// Checks that `found` holds every token exactly once.
fn assert_exactly_once(found: &[*mut u8], total: usize) {
    let mut seen = vec![0u8; total];
    for &p in found {
        let i = token_index(p);
        assert!(i < total, "foreign token {p:?}");
        seen[i] += 1;
        assert_eq!(seen[i], 1, "token {i} found twice");
    }
    let missing = seen.iter().filter(|&&c| c == 0).count();
    assert_eq!(missing, 0, "{missing} tokens lost");
    assert_eq!(found.len(), total);
}

fn drain_all(slabs: &PerCpuSlabs) -> Vec<*mut u8> {
    let mut out = Vec::new();
    for r in 0..slabs.nregions() {
        assert!(
            slabs.drain(RegionId(r), &mut |_, items| out.extend_from_slice(items)),
            "drain of region {r} failed"
        );
    }
    assert!(slabs.is_empty());
    slabs.check_invariants();
    out
}

/// What one token run counted.
struct TokenRun {
    /// rseq aborts (restarts).
    aborts: u64,
    /// Operations done by the CAS (trylock) discipline's full paths.
    cas_ops: u64,
    /// Quick operations (`pop_fast` / `push_fast`) that hit.
    quick: u64,
    /// Tokens the drainer took.
    drained: u64,
}

/// Runs the token test alone (it holds [`SERIAL`]) and returns its counts.
fn run_tokens(discipline: Discipline, index: Index, drainer: bool) -> TokenRun {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    install_sigusr1();
    let fx = fixture(discipline, index);
    let tids: Arc<Vec<AtomicI32>> = Arc::new((0..THREADS).map(|_| AtomicI32::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(THREADS + 1));
    #[cfg(rseq_inject_delay)]
    percpu::set_injected_delay(DELAY_LOOPS);
    let aborts_before = percpu::abort_count();
    let workers: Vec<_> = (0..THREADS)
        .map(|id| {
            let (fx, start, tids) = (fx.clone(), start.clone(), tids.clone());
            std::thread::spawn(move || worker(&fx, id, &start, &tids))
        })
        .collect();
    let inj = injector(tids.clone(), stop.clone());
    // A drainer empties regions while the workers run, keeping what it
    // took and putting some of it back, to prove drains race safely.
    let drained_items = Arc::new(AtomicU64::new(0));
    let drain_thread = drainer.then(|| {
        let (fx, stop, drained_items) = (fx.clone(), stop.clone(), drained_items.clone());
        std::thread::spawn(move || {
            let mut kept: Vec<usize> = Vec::new();
            let mut rng = Rng::new(42);
            let mut returned = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = rng.below(fx.slabs.nregions() as u64) as usize;
                let mut took: Vec<*mut u8> = Vec::new();
                assert!(fx
                    .slabs
                    .drain(RegionId(r), &mut |_, items| took.extend_from_slice(items)));
                drained_items.fetch_add(took.len() as u64, Ordering::Relaxed);
                // Put every other item back through the normal operations,
                // keep the rest.
                for (i, &p) in took.iter().enumerate() {
                    if i % 2 == 0 && fx.slabs.push(cls(0), NonNull::new(p).unwrap()).is_ok() {
                        returned += 1;
                    } else {
                        kept.push(p as usize);
                    }
                }
                std::thread::yield_now();
            }
            (kept, returned)
        })
    });
    start.wait();
    let results: Vec<WorkerResult> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    let signals = inj.join().unwrap();
    #[cfg(rseq_inject_delay)]
    percpu::set_injected_delay(0);
    let aborts = percpu::abort_count() - aborts_before;

    let mut found: Vec<*mut u8> = Vec::new();
    let (mut pushed, mut popped, mut quick, mut exhausted) = (0u64, 0u64, 0u64, 0u64);
    for r in &results {
        found.extend_from_slice(&r.held);
        pushed += r.pushed;
        popped += r.popped;
        quick += r.quick;
        exhausted += r.exhausted;
    }
    // The drainer is joined before the final drain, so that nothing it does
    // can race with the count.
    let mut drained_total = 0;
    if let Some(d) = drain_thread {
        let (kept, returned) = d.join().unwrap();
        // Tokens the drainer still holds are neither in the stacks nor with
        // the workers; tokens it pushed back count as pushes.
        drained_total = drained_items.load(Ordering::Relaxed);
        assert_eq!(
            drained_total,
            kept.len() as u64 + returned,
            "drainer bookkeeping"
        );
        pushed += returned;
        popped += drained_total;
        found.extend(kept.iter().map(|&p| p as *mut u8));
    }
    let in_stacks = drain_all(&fx.slabs);
    found.extend_from_slice(&in_stacks);
    assert_exactly_once(&found, THREADS * TOKENS_PER_THREAD);
    // The counters add up exactly: what went in minus what came out is what
    // the stacks still hold.
    assert_eq!(
        pushed - popped,
        in_stacks.len() as u64,
        "pushed {pushed} popped {popped}"
    );
    eprintln!(
        "{discipline:?}/{index:?} drainer={drainer}: pushes {pushed}, pops {popped}, quick hits {quick}, exhausted {exhausted}, aborts {aborts}, cas ops {}, signals {signals}, drained {drained_total}",
        fx.slabs.fallback_ops()
    );
    TokenRun {
        aborts,
        cas_ops: fx.slabs.fallback_ops(),
        quick,
        drained: drained_total,
    }
}

/// Asserts that the run restarted some rseq section.
fn assert_restarted(run: &TokenRun) {
    assert!(
        run.aborts > 0,
        "no rseq abort happened: the test did not exercise restarts"
    );
}

/// Asserts that the drainer of the run took some token.
fn assert_drained(run: &TokenRun) {
    assert!(
        run.drained > 0,
        "the drainer never took anything: no race was tested"
    );
}

#[test]
#[cfg_attr(
    not(rseq_inject_delay),
    ignore = "asserts rseq aborts: needs the delay of RUSTFLAGS=\"--cfg rseq_inject_delay\""
)]
fn tokens_rseq_cpu() {
    let run = run_tokens(Discipline::Rseq, Index::Cpu, false);
    assert_restarted(&run);
    assert_eq!(run.cas_ops, 0);
}

#[test]
#[cfg_attr(
    not(rseq_inject_delay),
    ignore = "asserts rseq aborts: needs the delay of RUSTFLAGS=\"--cfg rseq_inject_delay\""
)]
fn tokens_rseq_cid() {
    assert_restarted(&run_tokens(Discipline::Rseq, Index::Cid, false));
}

#[test]
fn tokens_cas() {
    let run = run_tokens(Discipline::TryLock, Index::Cpu, false);
    assert!(run.cas_ops > 0, "the CAS discipline did no operation");
    assert!(
        run.quick > 0,
        "no quick operation hit: the quick paths were not tested"
    );
}

#[test]
#[cfg_attr(
    not(rseq_inject_delay),
    ignore = "asserts rseq aborts: needs the delay of RUSTFLAGS=\"--cfg rseq_inject_delay\""
)]
fn drain_races_rseq_cpu() {
    let run = run_tokens(Discipline::Rseq, Index::Cpu, true);
    assert!(run.aborts > 0);
    assert_drained(&run);
}

#[test]
fn drain_races_rseq_cid() {
    assert_drained(&run_tokens(Discipline::Rseq, Index::Cid, true));
}

#[test]
fn drain_races_cas() {
    assert_drained(&run_tokens(Discipline::TryLock, Index::Cpu, true));
}

/// A membarrier fence aimed at a CPU restarts the critical section running
/// there: a worker pinned to the last CPU spins in long sections (large
/// injected delay) while this thread fences that CPU.
#[test]
#[cfg_attr(
    not(rseq_inject_delay),
    ignore = "asserts rseq aborts: needs the delay of RUSTFLAGS=\"--cfg rseq_inject_delay\""
)]
fn fence_restarts_running_sections() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if ncpu < 2 {
        eprintln!(
            "one CPU: the fence targets the caller's own CPU; checking only that it succeeds"
        );
        rseq_sys::fence::cpu(0).expect("membarrier RSEQ fence");
        return;
    }
    let fx = fixture(Discipline::Rseq, Index::Cpu);
    let target = ncpu - 1;
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(2));
    let w = {
        let (fx, stop, ready) = (fx.clone(), stop.clone(), ready.clone());
        std::thread::spawn(move || {
            pin_to_cpu(target);
            ready.wait();
            let mut ops = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = fx.slabs.push(cls(0), NonNull::new(token(0)).unwrap());
                let _ = fx.slabs.pop(cls(0));
                ops += 1;
            }
            ops
        })
    };
    pin_to_cpu(0);
    #[cfg(rseq_inject_delay)]
    percpu::set_injected_delay(20_000);
    ready.wait();
    let before = percpu::abort_count();
    // The fence only reaches a CPU that is running one of our threads at
    // that instant; on a loaded machine the worker may be off-CPU for a
    // while, so keep fencing (a bounded number of times) until one lands.
    let mut fences = 0;
    while fences < 200_000 && (fences < 500 || percpu::abort_count() == before) {
        rseq_sys::fence::cpu(target as u32).expect("membarrier RSEQ fence");
        fences += 1;
    }
    let aborts = percpu::abort_count() - before;
    stop.store(true, Ordering::Relaxed);
    let ops = w.join().unwrap();
    #[cfg(rseq_inject_delay)]
    percpu::set_injected_delay(0);
    eprintln!("{fences} fences: {aborts} aborts, worker did {ops} push/pop pairs");
    assert!(aborts > 0, "no fence restarted the running section");
}

/// Back-to-back drains of a region while workers push and pop on it: no
/// item may ever be drained twice. (Regression test: when a section read
/// `current` and the bounds with separate loads, one started while the
/// header was stopped could read the old `current` and the restored bounds
/// and resurrect drained items; about 1% of drained items came back.)
fn back_to_back_drains(index: Index) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fx = fixture(Discipline::Rseq, index);
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let started = Arc::new(Barrier::new(4));
    #[cfg(rseq_inject_delay)]
    percpu::set_injected_delay(200);
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (fx, stop, next, started) =
                (fx.clone(), stop.clone(), next.clone(), started.clone());
            std::thread::spawn(move || {
                let mut held: Vec<*mut u8> = Vec::new();
                let mut ops = 0u64;
                started.wait();
                while !stop.load(Ordering::Relaxed) {
                    if held.is_empty() {
                        held.push(token(next.fetch_add(1, Ordering::Relaxed) as usize));
                    }
                    if ops.is_multiple_of(2) {
                        let p = held.pop().unwrap();
                        if fx.slabs.push(cls(0), NonNull::new(p).unwrap()).is_err() {
                            held.push(p);
                        }
                    } else if let Ok(p) = fx.slabs.pop(cls(0)) {
                        held.push(p.as_ptr());
                    }
                    ops += 1;
                }
                ops
            })
        })
        .collect();
    started.wait();
    let mut seen = std::collections::HashSet::new();
    let (mut took, mut dups, mut drains) = (0u64, 0u64, 0u64);
    // Drain until enough items went through (bounded).
    while drains < 2_000_000 && (took < 2000 || drains < 20_000) {
        for r in 0..fx.slabs.nregions() {
            assert!(fx.slabs.drain(RegionId(r), &mut |_, items| {
                for &p in items {
                    took += 1;
                    if !seen.insert(p as usize) {
                        dups += 1;
                    }
                }
            }));
            drains += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let ops: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    #[cfg(rseq_inject_delay)]
    percpu::set_injected_delay(0);
    eprintln!(
        "{index:?}: {drains} drains took {took} items, {dups} twice; workers did {ops} operations"
    );
    assert!(took > 0, "the drains never raced with the workers");
    assert_eq!(dups, 0, "drained items came back");
}

#[test]
fn back_to_back_drains_cpu() {
    back_to_back_drains(Index::Cpu);
}

#[test]
fn back_to_back_drains_cid() {
    back_to_back_drains(Index::Cid);
}

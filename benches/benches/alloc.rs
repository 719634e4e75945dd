//! Allocator micro-benchmarks, every allocator in the same run, each called
//! through its `GlobalAlloc` methods on an instance (so one binary compares
//! them all): rseq-alloc (`RseqAlloc` and `RseqAllocChecked`, with the
//! `ours` feature), glibc
//! (`std::alloc::System`), jemalloc (`tikv_jemallocator::Jemalloc`) and
//! mimalloc (`mimalloc::MiMalloc`).
//!
//! `cargo bench -p rseq-alloc-bench --features ours --bench alloc`
//!
//! Groups: `pair/<size>` (one alloc + free, single thread, 16..4096 B),
//! `burst1000` (1000 allocations then 1000 frees), `churn_2t` / `churn_16t`
//! (threads replacing objects in private rings), `prodcon` (objects allocated
//! on one thread and freed on another). Every block is written to, and
//! pointers go through `black_box`, so nothing is optimised away.
#![warn(clippy::undocumented_unsafe_blocks)]

mod common;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rseq_alloc_bench::XorShift;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::{mpsc, Barrier};
use std::time::{Duration, Instant};

#[cfg(feature = "ours")]
static RSEQ: rseq_alloc::RseqAlloc = rseq_alloc::RseqAlloc;
#[cfg(feature = "ours")]
static RSEQ_CHECKED: rseq_alloc::RseqAllocChecked = rseq_alloc::RseqAllocChecked;
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
static SYSTEM: System = System;

/// Runs `$body` once per allocator with `$a` bound to it (monomorphised: the
/// calls are as direct as through a `#[global_allocator]`).
macro_rules! for_each_alloc {
    (|$name:ident, $a:ident| $body:block) => {{
        #[cfg(feature = "ours")]
        for_each_alloc!(@one $name = "rseq", $a = RSEQ, $body);
        #[cfg(feature = "ours")]
        for_each_alloc!(@one $name = "rseq-checked", $a = RSEQ_CHECKED, $body);
        for_each_alloc!(@one $name = "jemalloc", $a = JEMALLOC, $body);
        for_each_alloc!(@one $name = "mimalloc", $a = MIMALLOC, $body);
        for_each_alloc!(@one $name = "glibc", $a = SYSTEM, $body);
    }};
    (@one $name:ident = $label:literal, $a:ident = $alloc:ident, $body:block) => {{
        let $name = $label;
        let $a = &$alloc;
        $body
    }};
}

#[inline(always)]
fn alloc_touch<A: GlobalAlloc>(a: &A, layout: Layout) -> *mut u8 {
    // SAFETY: every layout used here has a non-zero size.
    let p = unsafe { a.alloc(layout) };
    assert!(!p.is_null(), "allocation failed");
    // SAFETY: p is a fresh block of layout.size() >= 1 bytes.
    unsafe { p.write_volatile(1) };
    black_box(p)
}

/// # Safety
/// `p` came from `a.alloc(layout)` and is not used afterwards.
#[inline(always)]
unsafe fn free<A: GlobalAlloc>(a: &A, p: *mut u8, layout: Layout) {
    // SAFETY: `p` came from `a.alloc(layout)` and is not used afterwards
    // (this function's contract), which is `dealloc`'s.
    unsafe { a.dealloc(p, layout) }
}

fn pair(c: &mut Criterion) {
    let mut g = c.benchmark_group("pair");
    for size in [16usize, 64, 256, 1024, 4096] {
        let layout = Layout::from_size_align(size, 8).expect("layout");
        for_each_alloc!(|name, a| {
            g.bench_with_input(BenchmarkId::new(name, size), &layout, |b, &l| {
                b.iter(|| {
                    let p = alloc_touch(a, l);
                    // SAFETY: p was just allocated by `a` with `l`.
                    unsafe { free(a, p, l) };
                })
            });
        });
    }
    g.finish();
}

fn burst(c: &mut Criterion) {
    let mut g = c.benchmark_group("burst1000");
    g.throughput(Throughput::Elements(1000));
    let mut rng = XorShift::new(11);
    let layouts: Vec<Layout> = (0..1000)
        .map(|_| Layout::from_size_align(rng.log_size(16, 512), 8).expect("layout"))
        .collect();
    for_each_alloc!(|name, a| {
        let mut ptrs = vec![std::ptr::null_mut::<u8>(); 1000];
        g.bench_function(name, |b| {
            b.iter(|| {
                for (slot, &l) in ptrs.iter_mut().zip(&layouts) {
                    *slot = alloc_touch(a, l);
                }
                for (&p, &l) in ptrs.iter().zip(&layouts) {
                    // SAFETY: p was allocated above by `a` with `l`; freed once.
                    unsafe { free(a, p, l) };
                }
            })
        });
    });
    g.finish();
}

/// `threads` threads each do `iters` replacements in a private ring of 64
/// objects of random size 16..1024; returns the wall time of the parallel phase.
fn churn_run<A: GlobalAlloc + Sync>(a: &A, threads: usize, iters: u64) -> Duration {
    let barrier = Barrier::new(threads);
    let stamps: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    // Pre-drawn layouts and slots: the loop measures the allocator,
                    // not the PRNG.
                    let mut rng = XorShift::new(1000 + t as u64);
                    let layouts: Vec<Layout> = (0..4096)
                        .map(|_| {
                            Layout::from_size_align(rng.log_size(16, 1024), 8).expect("layout")
                        })
                        .collect();
                    let slots: Vec<usize> = (0..4095).map(|_| rng.below(64) as usize).collect();
                    let mut ring: Vec<(*mut u8, Layout)> = layouts[..64]
                        .iter()
                        .map(|&l| (alloc_touch(a, l), l))
                        .collect();
                    barrier.wait();
                    let start = Instant::now();
                    for k in 0..iters as usize {
                        let (l, i) = (layouts[k % 4096], slots[k % 4095]);
                        let new = (alloc_touch(a, l), l);
                        let (p, pl) = std::mem::replace(&mut ring[i], new);
                        // SAFETY: p was allocated by `a` with pl and is owned here.
                        unsafe { free(a, p, pl) };
                    }
                    let end = Instant::now();
                    for (p, l) in ring {
                        // SAFETY: as above.
                        unsafe { free(a, p, l) };
                    }
                    (start, end)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    // First start to last end, from the threads' own clocks (the spawning
    // thread may not be scheduled while 16 threads share 2 CPUs).
    let first = stamps.iter().map(|s| s.0).min().expect("threads");
    let last = stamps.iter().map(|s| s.1).max().expect("threads");
    last - first
}

fn churn(c: &mut Criterion) {
    for threads in [2usize, 16] {
        let mut g = c.benchmark_group(format!("churn_{threads}t"));
        // One "iteration" = one replacement in every thread.
        g.throughput(Throughput::Elements(threads as u64));
        for_each_alloc!(|name, a| {
            g.bench_function(name, |b| {
                b.iter_custom(|iters| churn_run(a, threads, iters))
            });
        });
        g.finish();
    }
}

/// One producer allocates `iters` objects (16..512 B) in batches of 64 and
/// sends them to one consumer, which frees them: every free is remote.
fn prodcon_run<A: GlobalAlloc + Sync>(a: &A, iters: u64) -> Duration {
    const BATCH: usize = 64;
    let batches = (iters as usize).div_ceil(BATCH);
    let (tx, rx) = mpsc::sync_channel::<Vec<(usize, Layout)>>(8);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut rng = XorShift::new(77);
            for _ in 0..batches {
                let v = (0..BATCH)
                    .map(|_| {
                        let l = Layout::from_size_align(rng.log_size(16, 512), 8).expect("layout");
                        (alloc_touch(a, l) as usize, l)
                    })
                    .collect();
                tx.send(v).expect("consumer alive");
            }
        });
        s.spawn(move || {
            for v in rx {
                for (p, l) in v {
                    // SAFETY: the producer handed over sole ownership of p (from `a`, layout l).
                    unsafe { free(a, p as *mut u8, l) };
                }
            }
        });
    });
    t0.elapsed()
}

fn prodcon(c: &mut Criterion) {
    let mut g = c.benchmark_group("prodcon");
    g.throughput(Throughput::Elements(1));
    for_each_alloc!(|name, a| {
        g.bench_function(name, |b| b.iter_custom(|iters| prodcon_run(a, iters)));
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config(20);
    targets = pair, burst, churn, prodcon
}
criterion_main!(benches);

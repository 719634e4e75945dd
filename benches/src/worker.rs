//! The synthetic workloads' code, run in a child process (`rseq-alloc-bench
//! worker NAME key=value...`, see `crate::child`) so each measurement starts
//! from a fresh heap and a fresh peak-RSS counter. Their names, descriptions
//! and sizes are in `crate::workloads`.
//!
//! Every allocation goes through the global allocator (`crate::dispatch`), so
//! the same code measures each in-process backend and, with the `system`
//! backend, whatever `malloc` `LD_PRELOAD` installed.
//!
//! Protocol on stdout, one line per figure, parsed by `crate::runner`:
//! `RESULT name=<metric> value=<f64> unit=<unit> better=<lower|higher> [final_kib=<n>] [peak_kib=<n>]`
//! then, last, `PEAK hwm_kib=<n> rss_kib=<n>`; `SKIP <reason>` when the workload
//! cannot run on this machine.

use crate::dispatch;
use rseq_alloc_bench::{allowed_cpus, current_cpu, pin_to_cpu, rss_kib, XorShift};
use std::alloc::{alloc, dealloc, realloc, GlobalAlloc, Layout};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{mpsc, Barrier};
use std::time::Instant;

/// `key=value` parameters of a workload, with defaults chosen by the caller.
pub struct Params(HashMap<String, String>);

impl Params {
    /// Parses `key=value` words; anything else is an error.
    pub fn parse(args: &[String]) -> Result<Params, String> {
        let mut m = HashMap::new();
        for a in args {
            let (k, v) = a
                .split_once('=')
                .ok_or_else(|| format!("worker parameter `{a}` is not key=value"))?;
            m.insert(k.to_string(), v.to_string());
        }
        Ok(Params(m))
    }

    fn usize(&self, key: &str, default: usize) -> usize {
        self.0
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    fn f64(&self, key: &str, default: f64) -> f64 {
        self.0
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    fn list(&self, key: &str, default: &[usize]) -> Vec<usize> {
        match self.0.get(key) {
            Some(v) => v.split(',').filter_map(|s| s.parse().ok()).collect(),
            None => default.to_vec(),
        }
    }
}

/// A throughput figure: `ops` operations in `secs` seconds, as Mops/s.
fn emit_mops(name: &str, ops: usize, secs: f64) {
    emit(name, ops as f64 / secs / 1e6, "Mops/s", "higher");
}

fn emit(name: &str, value: f64, unit: &str, better: &str) {
    println!("RESULT name={name} value={value:.4} unit={unit} better={better}");
}

/// Pre-drawn object sizes and slot indices, so the measured loops spend their
/// time in the allocator rather than in the PRNG's divisions.
struct Draws {
    sizes: Vec<usize>,
    slots: Vec<usize>,
    i: usize,
}

impl Draws {
    const N: usize = 4096;

    fn new(seed: u64, min: usize, max: usize, nslots: usize) -> Draws {
        let mut rng = XorShift::new(seed);
        Draws {
            sizes: (0..Self::N).map(|_| rng.log_size(min, max)).collect(),
            // Slots drawn from a second, coprime-length table so the
            // (size, slot) pairs do not repeat with period N.
            slots: (0..Self::N - 1)
                .map(|_| rng.below(nslots.max(1) as u64) as usize)
                .collect(),
            i: 0,
        }
    }

    /// The next (size, slot) pair.
    #[inline]
    fn next(&mut self) -> (usize, usize) {
        self.i = self.i.wrapping_add(1);
        (
            self.sizes[self.i % Self::N],
            self.slots[self.i % (Self::N - 1)],
        )
    }
}

/// Size header written into every churn object: its size (to free it with the
/// right layout wherever it ends up) and the CPU that allocated it.
const HDR: usize = 16;

/// Allocates an object of `size` bytes (>= HDR), writes its header.
#[inline]
fn obj_alloc(size: usize) -> *mut u8 {
    let layout = Layout::from_size_align(size, 8).expect("layout");
    // SAFETY: size >= HDR > 0.
    let p = unsafe { alloc(layout) };
    if p.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: p is a fresh block of size >= 16 bytes, aligned to 8.
    unsafe {
        (p as *mut usize).write(size);
        (p as *mut usize).add(1).write(usize::MAX);
    }
    p
}

/// Frees an object made by `obj_alloc` (reads its size from the header).
///
/// # Safety
/// `p` came from `obj_alloc` and is not used afterwards.
#[inline]
unsafe fn obj_free(p: *mut u8) {
    // SAFETY: p is a live object with the header written by obj_alloc.
    unsafe {
        let size = (p as *const usize).read();
        dealloc(p, Layout::from_size_align_unchecked(size, 8));
    }
}

/// Resets this process's peak resident set (`VmHWM`) to the current one, so a
/// phase can report its own peak (`clear_refs` value 5, Linux >= 4.0).
/// Returns false if the kernel refused.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[inline(always)]
fn pair_once<A: GlobalAlloc>(a: &A, layout: Layout) {
    // SAFETY: layout has a non-zero size.
    let p = unsafe { a.alloc(layout) };
    if p.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: p is a fresh block of at least one byte; the volatile write and
    // black_box keep the compiler from eliding the pair.
    unsafe {
        p.write_volatile(1);
        a.dealloc(black_box(p), layout);
    }
}

/// Latency figures are the fastest of `CHUNKS` equal chunks of one run: on a
/// shared machine a chunk that was interrupted by another process is slower,
/// never faster, so the minimum is the allocator's own cost. Chunks are short
/// (about 1 ms in the quick suite, under a scheduler time slice) so that some
/// run uninterrupted even on a loaded machine. The layout of a process does
/// not change between its chunks, so a process in a slow layout mode stays
/// slow in all of them: the spread across processes survives the minimum.
const CHUNKS: usize = 20;

fn best_chunk_ns(total_iters: usize, mut body: impl FnMut(usize)) -> f64 {
    let per = (total_iters / CHUNKS).max(1);
    (0..CHUNKS)
        .map(|_| {
            let t = Instant::now();
            body(per);
            t.elapsed().as_nanos() as f64 / per as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// The `pair` workload (see `crate::workloads`). The calls go straight to
/// the backend's allocator, monomorphised (see `dispatch::Visit`), as in a
/// program whose `#[global_allocator]` it is.
pub fn pair(p: &Params) {
    struct Run<'a>(&'a Params);
    impl dispatch::Visit for Run<'_> {
        type Out = ();
        fn visit<A: GlobalAlloc>(self, a: &'static A) {
            pair_with(a, self.0)
        }
    }
    dispatch::visit_backend(Run(p))
}

fn pair_with<A: GlobalAlloc>(a: &A, p: &Params) {
    let iters = p.usize("iters", 2_000_000);
    for size in p.list("sizes", &[16, 64, 256, 1024, 4096]) {
        let layout = Layout::from_size_align(size, 8).expect("layout");
        for _ in 0..iters / 20 {
            pair_once(a, layout);
        }
        let ns = best_chunk_ns(iters, |n| {
            for _ in 0..n {
                pair_once(a, layout);
            }
        });
        emit(&format!("pair/{size}B"), ns, "ns/pair", "lower");
    }

    // 1000 allocations (mixed 16..512 B), then 1000 frees, repeated.
    let rounds = p.usize("burst_rounds", 2000);
    let mut rng = XorShift::new(7);
    let sizes: Vec<usize> = (0..1000).map(|_| rng.log_size(16, 512)).collect();
    let mut ptrs = vec![std::ptr::null_mut::<u8>(); 1000];
    let ns = best_chunk_ns(rounds, |n| {
        for _ in 0..n {
            for (slot, &s) in ptrs.iter_mut().zip(&sizes) {
                *slot = alloc_touched(a, s);
            }
            for (&q, &s) in ptrs.iter().zip(&sizes) {
                // SAFETY: q was allocated above with size s and is freed once.
                unsafe { free_touched(a, q, s) };
            }
        }
    }) / 1000.0;
    emit("burst1000", ns, "ns/pair", "lower");

    // Mixed sizes in steady state: 1000 live blocks; each step frees a
    // random one and puts a block of a random size (8..1024 B, log-spread)
    // in its place, writing its first byte. Consecutive frees hit
    // different classes, so nothing can be guessed from the last call:
    // this is what a same-size pair does not show (a C `free` must find
    // the class from the pointer).
    let steps = p.usize("mix_steps", iters);
    let mut d = Draws::new(11, 8, 1024, ptrs.len());
    let mut live: Vec<(*mut u8, usize)> = (0..ptrs.len())
        .map(|_| {
            let s = d.next().0;
            (alloc_touched(a, s), s)
        })
        .collect();
    let ns = best_chunk_ns(steps, |n| {
        for _ in 0..n {
            let (s, k) = d.next();
            let (old, old_size) = live[k];
            // SAFETY: `old` was allocated by alloc_touched with this size and
            // leaves `live` here, so it is freed once.
            unsafe { free_touched(a, old, old_size) };
            live[k] = (alloc_touched(a, s), s);
        }
    });
    emit("mix1000", ns, "ns/op", "lower");
    for (q, s) in live {
        // SAFETY: every live block is freed once, with its size.
        unsafe { free_touched(a, q, s) };
    }
}

/// One block of `size` (>= 8) bytes, 8-aligned, with its first byte
/// written (`burst1000` and `mix1000`).
#[inline(always)]
fn alloc_touched<A: GlobalAlloc>(a: &A, size: usize) -> *mut u8 {
    let layout = Layout::from_size_align(size, 8).expect("layout");
    // SAFETY: size >= 8.
    let q = unsafe { a.alloc(layout) };
    if q.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: q is a fresh block of size >= 1 bytes.
    unsafe { q.write_volatile(1) };
    q
}

/// Frees a block from [`alloc_touched`]; the pointer goes through
/// `black_box` so the pair is not optimised away.
///
/// # Safety
/// `q` came from `alloc_touched(a, size)` and is not used afterwards.
#[inline(always)]
unsafe fn free_touched<A: GlobalAlloc>(a: &A, q: *mut u8, size: usize) {
    // SAFETY: `alloc_touched` made `q` with this size and alignment 8; the
    // caller gives it up.
    unsafe { a.dealloc(black_box(q), Layout::from_size_align_unchecked(size, 8)) };
}

/// Wall time of a parallel phase from each thread's own (start, end) stamps:
/// first start to last end. (Timing from the spawning thread would be wrong
/// with far more threads than CPUs: it may not run again until they are done.)
fn span_secs(stamps: Vec<(Instant, Instant)>) -> f64 {
    let first = stamps.iter().map(|s| s.0).min().expect("threads");
    let last = stamps.iter().map(|s| s.1).max().expect("threads");
    (last - first).as_secs_f64()
}

/// The `larson` workload (see `crate::workloads`).
pub fn larson(p: &Params) {
    let threads = p.usize("threads", 4);
    let slots = p.usize("slots", 16384);
    let ops = p.usize("ops", 1_000_000);
    let max = p.usize("max", 1024);
    let mut rng = XorShift::new(1);
    let arr: Vec<AtomicPtr<u8>> = (0..slots)
        .map(|_| AtomicPtr::new(obj_alloc(rng.log_size(HDR, max))))
        .collect();
    let barrier = Barrier::new(threads);
    let secs = span_secs(std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|tid| {
                let (arr, barrier) = (&arr, &barrier);
                s.spawn(move || {
                    let mut d = Draws::new(100 + tid as u64, HDR, max, slots);
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..ops {
                        let (size, i) = d.next();
                        let new = obj_alloc(size);
                        let old = arr[i].swap(new, Ordering::AcqRel);
                        // SAFETY: the swap made this thread the only owner of `old`.
                        unsafe { obj_free(old) };
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    }));
    for a in &arr {
        // SAFETY: all workers have joined; each slot holds one live object.
        unsafe { obj_free(a.load(Ordering::Relaxed)) };
    }
    emit_mops("larson", threads * ops, secs);
}

/// The `prodcon` workload (see `crate::workloads`).
pub fn prodcon(p: &Params) {
    let pairs = p.usize("pairs", 2);
    let batches = p.usize("batches", 4000);
    let batch = p.usize("batch", 256);
    let t = Instant::now();
    std::thread::scope(|s| {
        for pid in 0..pairs {
            let (tx, rx) = mpsc::sync_channel::<Vec<usize>>(16);
            s.spawn(move || {
                let mut d = Draws::new(200 + pid as u64, HDR, 512, 1);
                for _ in 0..batches {
                    let v: Vec<usize> =
                        (0..batch).map(|_| obj_alloc(d.next().0) as usize).collect();
                    tx.send(v).expect("consumer alive");
                }
            });
            s.spawn(move || {
                for v in rx {
                    for q in v {
                        // SAFETY: the producer handed over sole ownership.
                        unsafe { obj_free(q as *mut u8) };
                    }
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    emit_mops("prodcon", pairs * batches * batch, secs);
}

/// The `threads64` workload (see `crate::workloads`).
pub fn threads64(p: &Params) {
    let threads = p.usize("threads", 64);
    let ops = p.usize("ops", 100_000);
    let ring = p.usize("ring", 256);
    let max = p.usize("max", 2048);
    let barrier = Barrier::new(threads);
    let secs = span_secs(std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|tid| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut d = Draws::new(300 + tid as u64, HDR, max, ring);
                    let mut mine: Vec<*mut u8> = (0..ring).map(|_| obj_alloc(d.next().0)).collect();
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..ops {
                        let (size, i) = d.next();
                        let new = obj_alloc(size);
                        // SAFETY: mine[i] is a live object owned by this thread.
                        unsafe { obj_free(std::mem::replace(&mut mine[i], new)) };
                    }
                    let end = Instant::now();
                    for q in mine {
                        // SAFETY: each remaining object is live and owned here.
                        unsafe { obj_free(q) };
                    }
                    (start, end)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    }));
    emit_mops("threads64", threads * ops, secs);
}

/// The `frag` workload (see `crate::workloads`).
pub fn frag(p: &Params) {
    let total = p.usize("mib", 128) << 20;
    let mut rng = XorShift::new(4);
    let t = Instant::now();
    let mut live: Vec<*mut u8> = Vec::with_capacity(total / 64);
    let mut bytes = 0;
    while bytes < total {
        let s = rng.log_size(HDR, 16384);
        let q = obj_alloc(s);
        // SAFETY: q has s bytes; touch all of it so the pages are resident.
        unsafe { q.add(HDR).write_bytes(0xA5, s - HDR) };
        live.push(q);
        bytes += s;
    }
    // Free a random 90%.
    let mut kept = Vec::with_capacity(live.len() / 8);
    for q in live {
        if rng.below(10) == 0 {
            kept.push(q);
        } else {
            // SAFETY: q is live and owned here; it is not used again.
            unsafe { obj_free(q) };
        }
    }
    // Allocate 45% of the original volume again, in a shifted size mix that
    // does not fit the old holes exactly.
    let mut bytes = 0;
    while bytes < total * 45 / 100 {
        let s = rng.log_size(HDR, 16384) * 3 / 2;
        let q = obj_alloc(s);
        // SAFETY: as above.
        unsafe { q.add(HDR).write_bytes(0x5A, s - HDR) };
        kept.push(q);
        bytes += s;
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let (_, final_kib) = rss_kib();
    println!("RESULT name=frag value={ms:.4} unit=ms better=lower final_kib={final_kib}");
    // The blocks are left to process exit: freeing them is not measured.
    std::mem::forget(kept);
}

/// The `realloc` workload (see `crate::workloads`).
pub fn realloc_growth(p: &Params) {
    let n = p.usize("bufs", 1000);
    let max = p.usize("max", 65536);
    let mut bufs: Vec<(*mut u8, usize)> = (0..n)
        .map(|_| {
            let layout = Layout::from_size_align(16, 8).expect("layout");
            // SAFETY: non-zero size.
            let q = unsafe { alloc(layout) };
            assert!(!q.is_null());
            (q, 16)
        })
        .collect();
    let mut count = 0u64;
    let t = Instant::now();
    let mut growing = true;
    while growing {
        growing = false;
        for b in bufs.iter_mut() {
            if b.1 >= max {
                continue;
            }
            growing = true;
            let new = (b.1 + (b.1 / 8).max(16)).min(max);
            // SAFETY: b.0 is live with layout (b.1, 8); new > 0.
            let q = unsafe { realloc(b.0, Layout::from_size_align_unchecked(b.1, 8), new) };
            assert!(!q.is_null(), "realloc failed");
            // SAFETY: q has `new` bytes.
            unsafe { q.add(new - 1).write_volatile(1) };
            *b = (q, new);
            count += 1;
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / count as f64;
    for (q, s) in bufs {
        // SAFETY: each buffer is live with this layout.
        unsafe { dealloc(q, Layout::from_size_align_unchecked(s, 8)) };
    }
    emit("realloc", ns, "ns/realloc", "lower");
}

/// The `remote` workload (see `crate::workloads`).
pub fn remote(p: &Params) {
    let cpus = allowed_cpus();
    if cpus.len() < 2 {
        println!("SKIP needs two CPUs, this process may use {}", cpus.len());
        return;
    }
    let batches = p.usize("batches", 6000);
    let batch = p.usize("batch", 64);
    let remote_frees = AtomicU64::new(0);
    let (ab_tx, ab_rx) = mpsc::sync_channel::<Vec<usize>>(4);
    let (ba_tx, ba_rx) = mpsc::sync_channel::<Vec<usize>>(4);
    let t = Instant::now();
    std::thread::scope(|s| {
        for (k, (tx, rx)) in [(ab_tx, ba_rx), (ba_tx, ab_rx)].into_iter().enumerate() {
            let cpu = cpus[k];
            let remote_frees = &remote_frees;
            s.spawn(move || {
                pin_to_cpu(cpu);
                let mut d = Draws::new(400 + k as u64, HDR, 512, 1);
                let mut remote = 0;
                for _ in 0..batches {
                    let here = current_cpu().unwrap_or(usize::MAX);
                    let v: Vec<usize> = (0..batch)
                        .map(|_| {
                            let q = obj_alloc(d.next().0);
                            // SAFETY: header word 1 is ours to write.
                            unsafe { (q as *mut usize).add(1).write(here) };
                            q as usize
                        })
                        .collect();
                    tx.send(v).expect("peer alive");
                    let w = rx.recv().expect("peer alive");
                    let now = current_cpu().unwrap_or(usize::MAX);
                    for q in w {
                        let q = q as *mut u8;
                        // SAFETY: the peer handed over sole ownership of q.
                        unsafe {
                            if (q as *const usize).add(1).read() != now {
                                remote += 1;
                            }
                            obj_free(q);
                        }
                    }
                }
                remote_frees.fetch_add(remote, Ordering::Relaxed);
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    let total = 2 * batches * batch;
    eprintln!(
        "remote: {:.1}% of frees on another CPU than the allocation",
        remote_frees.load(Ordering::Relaxed) as f64 * 100.0 / total as f64
    );
    emit_mops("remote", total, secs);
}

/// A slot of `larson2t`: the object's address with its size in the top 16
/// bits (user addresses on x86_64 Linux fit in 47 bits), so 8-byte objects
/// need no header.
fn pack(p: *mut u8, size: usize) -> u64 {
    debug_assert!((p as u64) >> 48 == 0 && size < 1 << 16);
    p as u64 | (size as u64) << 48
}

/// Frees a slot made by `pack`.
///
/// # Safety
/// `slot` holds a live block allocated with align 8 and the packed size, and
/// is not used afterwards.
unsafe fn free_packed(slot: u64) {
    let p = (slot & ((1 << 48) - 1)) as *mut u8;
    let size = (slot >> 48) as usize;
    // SAFETY: the caller's contract: p is live with layout (size, 8).
    unsafe { dealloc(p, Layout::from_size_align_unchecked(size, 8)) };
}

fn alloc_packed(size: usize) -> u64 {
    let layout = Layout::from_size_align(size, 8).expect("layout");
    // SAFETY: size >= 8 > 0.
    let p = unsafe { alloc(layout) };
    if p.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: p has `size` >= 1 bytes.
    unsafe {
        p.write(1);
        p.add(size - 1).write(2);
    }
    pack(p, size)
}

/// Larson-style server churn: `threads` chains; each chain owns `slots`
/// objects of 8-1000 B, and a generation (one thread, pinned to a CPU) replaces
/// `ops` random slots, then hands the slots to the next generation's thread,
/// pinned to the next CPU. So most frees free another thread's (and another
/// CPU's) object, like larson's thread hand-over. Thread creation is timed.
/// The `larson2t` workload (see `crate::workloads`).
pub fn larson2t(p: &Params) {
    let chains = p.usize("threads", 2);
    let slots = p.usize("slots", 5000);
    let gens = p.usize("gens", 40);
    let ops = p.usize("ops", 50_000);
    let (min, max) = (p.usize("min", 8), p.usize("max", 1000));
    let cpus = allowed_cpus();
    let mut rng = XorShift::new(11);
    let sets: Vec<Vec<u64>> = (0..chains)
        .map(|_| {
            (0..slots)
                .map(|_| alloc_packed(rng.log_size(min, max)))
                .collect()
        })
        .collect();
    let t = Instant::now();
    let sets: Vec<Vec<u64>> = std::thread::scope(|s| {
        let drivers: Vec<_> = sets
            .into_iter()
            .enumerate()
            .map(|(c, mut set)| {
                let cpus = &cpus;
                s.spawn(move || {
                    for g in 0..gens {
                        let cpu = cpus[(c + g) % cpus.len()];
                        set = std::thread::spawn(move || {
                            pin_to_cpu(cpu);
                            let mut d = Draws::new((c * 1000 + g) as u64, min, max, set.len());
                            for _ in 0..ops {
                                let (size, i) = d.next();
                                let new = alloc_packed(size);
                                // SAFETY: this thread owns the set; the old
                                // object is live and replaced here.
                                unsafe { free_packed(std::mem::replace(&mut set[i], new)) };
                            }
                            set
                        })
                        .join()
                        .expect("generation");
                    }
                    set
                })
            })
            .collect();
        drivers
            .into_iter()
            .map(|h| h.join().expect("chain"))
            .collect()
    });
    let secs = t.elapsed().as_secs_f64();
    for q in sets.into_iter().flatten() {
        // SAFETY: every thread has joined; each slot holds one live object.
        unsafe { free_packed(q) };
    }
    emit_mops("larson2t", chains * gens * ops, secs);
}

/// Writes one word in every page of a fresh block, so every page is faulted in
/// (or, if the allocator reused the block, dirtied again).
///
/// # Safety
/// `p` points to `len` writable bytes, aligned to 8.
unsafe fn touch_pages(p: *mut u8, len: usize) {
    let mut off = 0;
    while off < len {
        // SAFETY: off + 8 <= len rounded to pages (len >= 1 MiB, off % 4096 == 0).
        unsafe { (p.add(off) as *mut u64).write_volatile(off as u64) };
        off += 4096;
    }
}

/// `large`: blocks of `min_mib..=max_mib` MiB (log-uniform), each one
/// allocated, every page written, then freed `live` allocations later, for
/// `rounds` blocks per thread; once with one thread, once with two. Each phase
/// reports its own time and its own peak RSS.
/// The `large` workload (see `crate::workloads`).
pub fn large(p: &Params) {
    let rounds = p.usize("rounds", 200);
    let live = p.usize("live", 4).max(1);
    let (min, max) = (p.usize("min_mib", 1) << 20, p.usize("max_mib", 32) << 20);
    for threads in p.list("threads", &[1, 2]) {
        let peak_ok = reset_peak_rss();
        let t = Instant::now();
        std::thread::scope(|s| {
            for tid in 0..threads {
                s.spawn(move || {
                    let mut rng = XorShift::new(500 + tid as u64);
                    let mut ring: Vec<(*mut u8, usize)> = vec![(std::ptr::null_mut(), 0); live];
                    for r in 0..rounds {
                        let slot = &mut ring[r % live];
                        if !slot.0.is_null() {
                            // SAFETY: the block is live with this layout; freed once.
                            unsafe {
                                dealloc(slot.0, Layout::from_size_align_unchecked(slot.1, 8))
                            };
                        }
                        let size = rng.log_size(min, max);
                        let layout = Layout::from_size_align(size, 8).expect("layout");
                        // SAFETY: non-zero size.
                        let q = unsafe { alloc(layout) };
                        if q.is_null() {
                            std::alloc::handle_alloc_error(layout);
                        }
                        // SAFETY: q has `size` bytes, aligned to 8.
                        unsafe { touch_pages(q, size) };
                        *slot = (q, size);
                    }
                    for (q, size) in ring {
                        if !q.is_null() {
                            // SAFETY: as above.
                            unsafe { dealloc(q, Layout::from_size_align_unchecked(size, 8)) };
                        }
                    }
                });
            }
        });
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let (hwm, _) = rss_kib();
        let peak = if peak_ok {
            format!(" peak_kib={hwm}")
        } else {
            String::new()
        };
        println!("RESULT name=large/{threads}t value={ms:.4} unit=ms better=lower{peak}");
    }
}

/// The `spike` workload (see `crate::workloads`).
pub fn spike(p: &Params) {
    let total = p.usize("mib", 1024) << 20;
    let idle = std::time::Duration::from_secs_f64(p.f64("secs", 3.0));
    let mut rng = XorShift::new(6);
    let t = Instant::now();
    let mut live: Vec<(*mut u8, usize)> = Vec::with_capacity(total / 2 / 300 + total / (1 << 20));
    let (mut small, mut big) = (0usize, 0usize);
    while small + big < total {
        // Alternate so small and large blocks interleave in the heap.
        let size = if small <= big {
            rng.log_size(16, 1024)
        } else {
            rng.log_size(64 << 10, 8 << 20)
        };
        let layout = Layout::from_size_align(size, 8).expect("layout");
        // SAFETY: non-zero size.
        let q = unsafe { alloc(layout) };
        if q.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        if size >= 4096 {
            // SAFETY: q has `size` bytes.
            unsafe { touch_pages(q, size) };
            big += size;
        } else {
            // SAFETY: q has `size` bytes.
            unsafe { q.write_bytes(0xA5, size) };
            small += size;
        }
        live.push((q, size));
    }
    // Free everything in a random order.
    for i in (1..live.len()).rev() {
        live.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for &(q, size) in &live {
        // SAFETY: each block is live with this layout and freed once.
        unsafe { dealloc(q, Layout::from_size_align_unchecked(size, 8)) };
    }
    drop(live);
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let (_, after_free) = rss_kib();
    // Light activity: every millisecond a few small pairs and one 64 KiB block.
    let end = Instant::now() + idle;
    let mut d = Draws::new(66, 16, 1024, 1);
    while Instant::now() < end {
        for _ in 0..32 {
            let q = obj_alloc(d.next().0);
            // SAFETY: q is a live object made just above.
            unsafe { obj_free(black_box(q)) };
        }
        let layout = Layout::from_size_align(64 << 10, 8).expect("layout");
        // SAFETY: non-zero size.
        let q = unsafe { alloc(layout) };
        if q.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: q has 64 KiB; it is freed once with its layout.
        unsafe {
            touch_pages(q, 64 << 10);
            dealloc(black_box(q), layout);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let (_, final_kib) = rss_kib();
    eprintln!(
        "spike: RSS {:.1} MiB right after the frees, {:.1} MiB after {:.1} s of light activity",
        after_free as f64 / 1024.0,
        final_kib as f64 / 1024.0,
        idle.as_secs_f64()
    );
    println!("RESULT name=spike value={ms:.4} unit=ms better=lower final_kib={final_kib}");
}

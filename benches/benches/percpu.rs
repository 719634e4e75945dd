//! rseq-sys per-CPU stacks, single thread: a pop+push pair through a real rseq
//! critical section (`Discipline::Rseq`), the same pair through the
//! try-lock fallback (`Discipline::TryLock`), and an uncontended
//! `Mutex<Vec<_>>` stack as the baseline every lock-based cache pays.
//!
//! `cargo bench -p rseq-alloc-bench --bench percpu`
//!
//! The bench thread is pinned to the CPU it starts on so that every pair hits
//! the same, primed per-CPU stack (a migration would only add noise).
#![warn(clippy::undocumented_unsafe_blocks)]

mod common;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rseq_alloc_bench::{current_cpu, mmap_aligned, pin_to_cpu};
use rseq_sys::percpu::{ClassId, Discipline, Index, OpError, PerCpuSlabs, REGION_BYTES};
use rseq_sys::registration;
use std::ptr::NonNull;
use std::sync::Mutex;

/// Class `i` of a test structure.
fn cls(i: usize) -> ClassId {
    ClassId::new(i).expect("test class below MAX_CLASSES")
}

/// Number of classes and capacity of each stack in the bench structure.
const CLASSES: usize = 8;
const CAPACITY: u16 = 256;
/// Items kept on the stack under test, so pop never finds it empty.
const PRIMED: usize = 32;

/// Opaque, never-dereferenced items (rseq-sys only stores the pointers).
fn items() -> &'static [u64] {
    Box::leak(vec![0u64; PRIMED].into_boxed_slice())
}

/// A leaked, initialised structure over a fresh aligned mapping. Returns
/// `None` if rseq-sys downgraded the requested discipline (e.g. no rseq here).
fn slabs(discipline: Discipline, index: Index) -> Option<&'static PerCpuSlabs> {
    let nregions = registration::possible_cpus();
    let base = mmap_aligned(nregions * REGION_BYTES, REGION_BYTES);
    assert!(!base.is_null(), "mmap of {nregions} regions failed");
    let s: &'static PerCpuSlabs = Box::leak(Box::new(PerCpuSlabs::new()));
    // SAFETY: base is zeroed, writable, REGION_BYTES-aligned memory of
    // nregions * REGION_BYTES bytes that is never unmapped (leaked with `s`);
    // CLASSES * CAPACITY <= MAX_SLOTS; init is called once, before any use.
    let ok = unsafe { s.init(base, nregions, &[CAPACITY; CLASSES], discipline, index) };
    assert!(ok, "PerCpuSlabs::init refused the capacities");
    if s.discipline() != discipline || s.index() != index {
        eprintln!(
            "percpu: asked for {discipline:?}/{index:?}, got {:?}/{:?}: skipping that variant",
            s.discipline(),
            s.index()
        );
        return None;
    }
    // A pop first: it initialises this CPU's region (lazily done by rseq-sys
    // on the first miss) and must find it empty.
    assert_eq!(s.pop(cls(0)).err(), Some(OpError::Empty));
    for it in items() {
        let p = NonNull::from(it).cast::<u8>();
        let before = rseq_sys::percpu::abort_count();
        if let Err(e) = s.push(cls(0), p) {
            eprintln!(
                "percpu: priming push on {discipline:?}/{index:?} failed: {e:?} \
                 (rseq aborts during it: {}): skipping that variant",
                rseq_sys::percpu::abort_count() - before
            );
            return None;
        }
    }
    Some(s)
}

#[inline(always)]
fn pair(s: &PerCpuSlabs) {
    match s.pop(cls(0)) {
        Ok(p) => {
            let r = s.push(cls(0), black_box(p));
            debug_assert!(r.is_ok());
        }
        Err(e) => panic!("pop on a primed stack failed: {e:?}"),
    }
}

fn bench(c: &mut Criterion) {
    let cpu = current_cpu().unwrap_or(0);
    pin_to_cpu(cpu);
    eprintln!(
        "percpu: rseq mode {:?}, cpu {cpu}, mm_cid {}",
        registration::current_mode(),
        if registration::mm_cid_supported() {
            "supported"
        } else {
            "not supported"
        }
    );

    let mut g = c.benchmark_group("percpu_pop_push_pair");
    if let Some(s) = slabs(Discipline::Rseq, Index::Cpu) {
        let aborts = rseq_sys::percpu::abort_count();
        g.bench_function("rseq_cpu", |b| b.iter(|| pair(s)));
        eprintln!(
            "percpu: rseq aborts during the rseq bench: {}",
            rseq_sys::percpu::abort_count() - aborts
        );
    }
    if registration::mm_cid_supported() {
        if let Some(s) = slabs(Discipline::Rseq, Index::Cid) {
            g.bench_function("rseq_cid", |b| b.iter(|| pair(s)));
        }
    }
    if let Some(s) = slabs(Discipline::TryLock, Index::Cpu) {
        g.bench_function("cas", |b| b.iter(|| pair(s)));
    }
    // The baseline: a plain stack behind an uncontended mutex, one lock per op.
    let m: Mutex<Vec<usize>> =
        Mutex::new(items().iter().map(|p| p as *const u64 as usize).collect());
    g.bench_function("mutex_vec", |b| {
        b.iter(|| {
            let p = m.lock().expect("unpoisoned").pop();
            let p = black_box(p.expect("primed"));
            m.lock().expect("unpoisoned").push(p);
        })
    });
    g.finish();

    // Empty-stack and full-stack error paths cost something too: show them.
    let mut g = c.benchmark_group("percpu_error_paths");
    if let Some(s) = slabs(Discipline::Rseq, Index::Cpu) {
        g.bench_function("rseq_pop_empty", |b| {
            b.iter(|| assert_eq!(black_box(s.pop(cls(1))), Err(OpError::Empty)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config(30);
    targets = bench
}
criterion_main!(benches);

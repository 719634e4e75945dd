//! Quick single-thread timing of alloc+free pairs through `RseqAlloc` and
//! `std::alloc::System` (the real comparison lives in benches/).
//! Run: `cargo run -p rseq-alloc --release --example quickbench`
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::Instant;

fn pair<A: GlobalAlloc>(a: &A, size: usize, iters: usize) -> f64 {
    let l = Layout::from_size_align(size, 8).unwrap();
    // warm up
    for _ in 0..1000 {
        // SAFETY: non-zero layout; freed with the same layout.
        unsafe { a.dealloc(black_box(a.alloc(l)), l) };
    }
    let t = Instant::now();
    for _ in 0..iters {
        // SAFETY: as above.
        unsafe {
            let p = black_box(a.alloc(l));
            *p = 1;
            a.dealloc(p, l)
        };
    }
    t.elapsed().as_nanos() as f64 / iters as f64
}

/// The C path: `raw::malloc` + `raw::free` (page-map lookup on free).
fn raw_pair(size: usize, iters: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        let p = black_box(rseq_alloc::raw::malloc(size));
        // SAFETY: fresh block, freed once.
        unsafe {
            *p = 1;
            rseq_alloc::raw::free(p)
        };
    }
    t.elapsed().as_nanos() as f64 / iters as f64
}

fn batch<A: GlobalAlloc>(a: &A, size: usize, rounds: usize) -> f64 {
    let l = Layout::from_size_align(size, 8).unwrap();
    let mut v = vec![std::ptr::null_mut(); 1000];
    let t = Instant::now();
    for _ in 0..rounds {
        for p in v.iter_mut() {
            // SAFETY: non-zero layout.
            *p = unsafe { a.alloc(l) };
        }
        for &p in v.iter() {
            // SAFETY: allocated above with `l`.
            unsafe { a.dealloc(p, l) };
        }
    }
    t.elapsed().as_nanos() as f64 / (rounds * 1000) as f64
}

fn main() {
    let r = rseq_alloc::RseqAlloc;
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 {
        // `quickbench rseq|system SIZE`: only pairs, for `perf stat`.
        let size: usize = args[2].parse().unwrap();
        let n = 20_000_000;
        let ns = match args[1].as_str() {
            "rseq" => pair(&r, size, n),
            "raw" => raw_pair(size, n),
            _ => pair(&System, size, n),
        };
        println!("{} {size}: {ns:.2} ns/pair", args[1]);
        return;
    }
    eprintln!(
        "mode={} index={}",
        rseq_alloc::mode_name(),
        rseq_alloc::index_name()
    );
    for size in [16, 64, 256, 1024, 4096] {
        let n = 5_000_000;
        let a = pair(&r, size, n);
        let s = pair(&System, size, n);
        let ab = batch(&r, size, 2000);
        let sb = batch(&System, size, 2000);
        println!(
            "size {size:5}: pair rseq {a:6.2} ns  system {s:6.2} ns | 1000x alloc then free: rseq {ab:6.2} ns/op system {sb:6.2} ns/op"
        );
    }
}

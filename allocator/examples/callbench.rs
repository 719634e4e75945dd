//! Pair latency through `std::alloc::{alloc, dealloc}` with `RseqAlloc` as
//! the global allocator (the calling convention real programs see).
#[global_allocator]
static GLOBAL: rseq_alloc::RseqAlloc = rseq_alloc::RseqAlloc;
use std::alloc::{alloc, dealloc, Layout};
use std::hint::black_box;
use std::time::Instant;

fn main() {
    let size: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let layout = Layout::from_size_align(size, 8).unwrap();
    let n = 20_000_000;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n / 5 {
            // SAFETY: non-zero layout, freed with the same layout.
            unsafe {
                let p = alloc(layout);
                p.write_volatile(1);
                dealloc(black_box(p), layout);
            }
        }
        best = best.min(t.elapsed().as_nanos() as f64 / (n / 5) as f64);
    }
    println!("{size}: {best:.2} ns/pair (std::alloc through RseqAlloc)");
}

//! Smoke test: RseqAlloc as the global allocator.
#[global_allocator]
static GLOBAL: rseq_alloc::RseqAlloc = rseq_alloc::RseqAlloc;

#[test]
fn vec_and_strings() {
    let v: Vec<u64> = (0..100_000).collect();
    assert_eq!(v.iter().sum::<u64>(), 4_999_950_000);
    let mut s = String::new();
    for i in 0..10_000 {
        s.push_str(&i.to_string());
    }
    assert_eq!(s.len(), 38890);
    eprintln!(
        "mode={} index={}",
        rseq_alloc::mode_name(),
        rseq_alloc::index_name()
    );
    rseq_alloc::raw::check_invariants();
    eprintln!("{:?}", rseq_alloc::raw::stats());
}

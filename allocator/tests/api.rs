//! The public API: `stats()` (exact movements of `huge`, `mapped` and
//! `retained` around a huge block and a trim; peaks), `trim()`,
//! `options()`, `version()`. One test function: the counters are
//! process-wide, and parallel tests would move them.

#[global_allocator]
static GLOBAL: rseq_alloc::RseqAlloc = rseq_alloc::RseqAlloc;

#[test]
fn stats_trim_options_version() {
    assert_eq!(rseq_alloc::version(), "0.1.0");
    let o = rseq_alloc::options();
    if std::env::var_os("RSEQ_MALLOC_CONF").is_none() {
        assert_eq!(o, rseq_alloc::Options::DEFAULT);
    }

    // A huge block moves `huge`, `allocated`, `mapped` by exactly its size.
    let before = rseq_alloc::stats();
    let block = vec![1u8; 4 << 20];
    let with = rseq_alloc::stats();
    assert_eq!(with.huge - before.huge, 4 << 20);
    assert_eq!(with.mapped - before.mapped, 4 << 20);
    assert!(with.allocated - before.allocated >= 4 << 20);
    assert!(with.peak_mapped >= with.mapped, "{with:?}");
    assert!(with.peak_active >= with.huge, "{with:?}");
    drop(block);
    let after = rseq_alloc::stats();
    assert_eq!(with.huge - after.huge, 4 << 20);
    assert_eq!(after.peak_mapped, with.peak_mapped, "peaks only grow");

    // Large blocks freed, then trimmed: what leaves `mapped` shows up in
    // `retained`, byte for byte; the caches are empty afterwards.
    let blocks: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 128 << 10]).collect();
    assert_eq!(blocks[63][0], 63);
    drop(blocks);
    let pre = rseq_alloc::stats();
    assert!(rseq_alloc::trim());
    let post = rseq_alloc::stats();
    assert_eq!(post.cached, 0);
    assert!(post.retained > pre.retained, "{pre:?} {post:?}");
    assert_eq!(pre.mapped - post.mapped, post.retained - pre.retained);
    assert!(post.allocated <= post.active && post.active <= post.mapped);
    assert!(post.mapped <= post.resident && post.metadata > 0);
    let regions = rseq_alloc::cache_regions();
    assert!(regions >= 1);
    assert_eq!(
        (0..regions)
            .map(rseq_alloc::cached_bytes_in_region)
            .sum::<usize>(),
        0
    );
    assert_eq!(rseq_alloc::cached_bytes_in_region(regions), 0);
}

//! Real Rust workloads with `RseqAlloc` as the global allocator: collections,
//! strings, many threads (64 on the CI's 2 cores), objects dropped on another
//! thread than their creator (channels), exact checks of all data. Each
//! workload runs in this process (default mode: rseq when available) and again
//! in a child process with `RSEQ_MALLOC_CONF=rseq=off` (forced CAS fallback,
//! since the configuration is read once per process).

#[global_allocator]
static GLOBAL: rseq_alloc::RseqAlloc = rseq_alloc::RseqAlloc;

use rseq_test_support::{child_test, child_test_env};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::mpsc;
use std::thread;

fn collections() {
    let mut m: HashMap<String, Vec<u32>> = HashMap::new();
    for i in 0..20_000u32 {
        m.entry(format!("key-{}", i % 997)).or_default().push(i);
    }
    assert_eq!(m.len(), 997);
    let total: u64 = m.values().flat_map(|v| v.iter()).map(|&x| x as u64).sum();
    assert_eq!(total, (0..20_000u64).sum::<u64>());
    let mut b = BTreeMap::new();
    for i in 0..50_000u64 {
        b.insert(i.wrapping_mul(2_654_435_761) % 1_000_003, i);
    }
    let mut prev = None;
    for &k in b.keys() {
        assert!(prev < Some(k));
        prev = Some(k);
    }
    let mut d: VecDeque<Box<[u8]>> = VecDeque::new();
    for i in 0..10_000usize {
        d.push_back(vec![(i % 251) as u8; i % 3000].into_boxed_slice());
        if d.len() > 100 {
            let x = d.pop_front().unwrap();
            assert!(x.iter().all(|&b| b == x.first().copied().unwrap_or(0)));
        }
    }
    let mut v: Vec<String> = (0..30_000).map(|i| i.to_string()).collect();
    v.sort();
    v.dedup();
    assert_eq!(v.len(), 30_000);
    let joined = v.concat();
    assert_eq!(joined.len(), v.iter().map(|s| s.len()).sum::<usize>());
    // growth through realloc up to huge sizes and back
    let mut big: Vec<u64> = Vec::new();
    for i in 0..3_000_000u64 {
        big.push(i);
    }
    assert_eq!(big.iter().sum::<u64>(), (0..3_000_000u64).sum::<u64>());
    big.truncate(10);
    big.shrink_to_fit();
    assert_eq!(big, (0..10).collect::<Vec<_>>());
}

fn many_threads() {
    // 64 threads on 2 cores, each building and checking its own data.
    let hs: Vec<_> = (0..64u64)
        .map(|t| {
            thread::spawn(move || {
                let mut total = 0u64;
                for round in 0..50u64 {
                    let v: Vec<Box<u64>> = (0..200)
                        .map(|i| Box::new(t * 1_000_000 + round * 1000 + i))
                        .collect();
                    let s: Vec<String> = v.iter().map(|b| b.to_string()).collect();
                    total += s.iter().map(|x| x.parse::<u64>().unwrap()).sum::<u64>();
                }
                total
            })
        })
        .collect();
    let mut sum = 0u64;
    for h in hs {
        sum += h.join().unwrap();
    }
    let expect: u64 = (0..64u64)
        .flat_map(|t| {
            (0..50u64).flat_map(move |r| (0..200u64).map(move |i| t * 1_000_000 + r * 1000 + i))
        })
        .sum();
    assert_eq!(sum, expect);
}

fn cross_thread_frees() {
    // Producers allocate, consumers on other threads check and drop.
    let (tx, rx) = mpsc::sync_channel::<(u64, Vec<u8>, String)>(64);
    let producers: Vec<_> = (0..8u64)
        .map(|p| {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..5_000u64 {
                    let n = ((p * 7919 + i * 31) % 5000) as usize;
                    let id = p * 1_000_000 + i;
                    tx.send((id, vec![(id % 251) as u8; n], format!("msg-{id}")))
                        .unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let (sum_tx, sum_rx) = mpsc::channel();
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    let consumers: Vec<_> = (0..4)
        .map(|_| {
            let rx = rx.clone();
            let sum_tx = sum_tx.clone();
            thread::spawn(move || {
                let mut sum = 0u64;
                let mut count = 0u64;
                loop {
                    let msg = rx.lock().unwrap().recv();
                    let Ok((id, v, s)) = msg else { break };
                    assert!(v.iter().all(|&b| b == (id % 251) as u8));
                    assert_eq!(s, format!("msg-{id}"));
                    sum += id;
                    count += 1;
                }
                sum_tx.send((sum, count)).unwrap();
            })
        })
        .collect();
    drop(sum_tx);
    for p in producers {
        p.join().unwrap();
    }
    for c in consumers {
        c.join().unwrap();
    }
    let (sum, count) = sum_rx.iter().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(count, 40_000);
    assert_eq!(
        sum,
        (0..8u64)
            .flat_map(|p| (0..5_000u64).map(move |i| p * 1_000_000 + i))
            .sum::<u64>()
    );
}

fn short_lived_threads() {
    // Threads that exit right after one allocation; thousands of them.
    for chunk in 0..20u64 {
        let hs: Vec<_> = (0..100u64)
            .map(|i| thread::spawn(move || Box::new(chunk * 100 + i)))
            .collect();
        let s: u64 = hs.into_iter().map(|h| *h.join().unwrap()).sum();
        assert_eq!(s, (chunk * 100..chunk * 100 + 100).sum::<u64>());
    }
}

fn all_bodies() {
    collections();
    many_threads();
    cross_thread_frees();
    short_lived_threads();
    rseq_alloc::raw::check_invariants();
}

#[test]
fn workloads_default_mode() {
    all_bodies();
}

#[test]
fn workloads_forced_cas_mode() {
    let cas_body = || {
        assert_eq!(rseq_alloc::mode_name(), "cmpxchg");
        all_bodies();
        let st = rseq_alloc::raw::stats();
        assert!(st.fallback_ops > 0, "CAS fallback did the work: {st:?}");
        assert_eq!(st.rseq_aborts, 0);
    };
    if let Some((_, stderr)) = child_test(
        "workloads_forced_cas_mode",
        Some("rseq=off,verbose=1"),
        cas_body,
    ) {
        let line = stderr
            .lines()
            .find(|l| l.starts_with("rseq-malloc: mode="))
            .unwrap_or("");
        assert!(
            line.starts_with("rseq-malloc: mode=cmpxchg index="),
            "{stderr}"
        );
        assert!(line.contains(" cpus="), "{line}");
    }
}

/// glibc told not to register rseq: this crate's rseq-sys registers its own
/// area per thread (mode rseq-own), including 2000 short-lived threads.
#[test]
fn workloads_rseq_own_mode() {
    let own_body = || {
        let mode = rseq_alloc::mode_name();
        assert!(mode == "rseq-own" || mode == "cmpxchg", "{mode}");
        all_bodies();
    };
    if let Some((_, stderr)) = child_test_env(
        "workloads_rseq_own_mode",
        Some("verbose=1"),
        &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")],
        own_body,
    ) {
        assert!(stderr.contains("rseq-malloc: mode="), "{stderr}");
    }
}

/// Caches indexed by CPU number instead of mm_cid.
#[test]
fn workloads_index_cpu() {
    child_test("workloads_index_cpu", Some("index=cpu"), || {
        assert_eq!(rseq_alloc::index_name(), "cpu");
        all_bodies();
    });
}

#[test]
fn verbose_and_stats_lines() {
    let stats_body = || {
        let v: Vec<Box<u64>> = (0..1000).map(Box::new).collect();
        assert_eq!(v.iter().map(|b| **b).sum::<u64>(), 499_500);
        drop(v);
        let st = rseq_alloc::raw::stats();
        assert!(st.fast_hits > 0, "stats=1 counts fast-path hits: {st:?}");
    };
    if let Some((_, stderr)) = child_test(
        "verbose_and_stats_lines",
        Some("verbose=1,stats=1,bogus=2"),
        stats_body,
    ) {
        let mut lines = stderr.lines();
        let mode_line = stderr
            .lines()
            .find(|l| l.starts_with("rseq-malloc: mode="))
            .unwrap();
        let modes = ["rseq-glibc", "rseq-own", "cmpxchg"];
        assert!(modes
            .iter()
            .any(|m| mode_line.starts_with(&format!("rseq-malloc: mode={m} index="))));
        assert!(
            stderr.contains("RSEQ_MALLOC_CONF: unknown key 'bogus=2' ignored"),
            "{stderr}"
        );
        assert_eq!(
            stderr.matches("rseq-malloc: mode=").count(),
            1,
            "printed once"
        );
        assert!(lines.any(|l| l == "rseq-malloc: stats"), "{stderr}");
        assert!(stderr.contains("fast_hits="), "{stderr}");
    }
}

//! Double frees of small blocks, at every size class, wherever the freed
//! block sits (per-CPU cache, transfer stack, span free list), across
//! threads and CPUs, in rseq and CAS modes, through `free`, `realloc` and
//! `GlobalAlloc::dealloc`: each aborts with
//! `rseq-malloc: <who>: double free 0x<the pointer>`. A live block whose
//! first word holds the free mark by chance is not reported. Each case runs
//! in a child process (this test executable, selected by an environment
//! variable).

mod common;
use common::announce;
use rseq_test_support::{class_sizes, pin_to_cpu};
use std::alloc::{GlobalAlloc, Layout};

const CASE_VAR: &str = "RSEQ_ALLOC_DF_CASE";

fn ncpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn case_body(case: &str) {
    use rseq_alloc::raw;
    let (name, arg) = case.split_once(':').unwrap_or((case, "64"));
    let size: usize = arg.parse().unwrap();
    // SAFETY: each case frees a block twice on purpose; the allocator must
    // abort on the second free before touching anything.
    unsafe {
        match name {
            "now" => {
                let p = raw::malloc(size);
                raw::free(p);
                announce(p);
                raw::free(p);
            }
            "after" => {
                // The block sinks below 20 000 later frees of its class: out
                // of the per-CPU cache, through the transfer stack, onto its
                // span's free list.
                let others: Vec<usize> = (0..20_000).map(|_| raw::malloc(size) as usize).collect();
                let p = raw::malloc(size);
                raw::free(p);
                for &o in &others {
                    raw::free(o as *mut u8);
                }
                announce(p);
                raw::free(p);
            }
            "trimmed" => {
                // Everything back in spans (drains and flushes) first.
                let keep = raw::malloc(size); // keeps the span alive
                let p = raw::malloc(size);
                raw::free(p);
                raw::trim();
                announce(p);
                raw::free(p);
                raw::free(keep);
            }
            "other_cpu" => {
                pin_to_cpu(0);
                let p = raw::malloc(size) as usize;
                raw::free(p as *mut u8);
                std::thread::spawn(move || {
                    pin_to_cpu(1 % ncpus());
                    announce(p as *const u8);
                    raw::free(p as *mut u8);
                })
                .join()
                .unwrap();
            }
            "realloc" => {
                let p = raw::malloc(size);
                raw::free(p);
                announce(p);
                raw::realloc(p, size * 2 + 1);
            }
            "dealloc" => {
                let l = Layout::from_size_align(size, 8).unwrap();
                let a = rseq_alloc::RseqAlloc;
                let p = a.alloc(l);
                a.dealloc(p, l);
                announce(p);
                a.dealloc(p, l);
            }
            "marked" => {
                let n = marked_workload();
                eprintln!("marked-ok frees={n}");
                std::process::exit(0);
            }
            _ => panic!("unknown case {case}"),
        }
    }
}

fn run_child(case: &str, conf: &str) -> std::process::Output {
    common::run_case(CASE_VAR, case, Some(conf))
}

fn expect_double_free(case: &str, conf: &str, who: &str) {
    common::expect_pointer_abort(CASE_VAR, case, Some(conf), who, "double free");
}

#[test]
fn child_entry() {
    common::case_entry(CASE_VAR, case_body);
}

const MODES: [&str; 2] = ["", "rseq=off"];

/// [`expect_double_free`] of case `{kind}:{size}` for every size, in every
/// mode.
fn expect_double_free_in_every_mode(kind: &str, sizes: &[usize], who: &str) {
    for conf in MODES {
        for size in sizes {
            expect_double_free(&format!("{kind}:{size}"), conf, who);
        }
    }
}

#[test]
fn immediate_double_free_every_class() {
    expect_double_free_in_every_mode("now", &class_sizes(), "free()");
}

#[test]
fn double_free_after_many_frees() {
    expect_double_free_in_every_mode("after", &[8, 48, 1024, 4000, 32 << 10], "free()");
}

#[test]
fn double_free_after_trim() {
    expect_double_free_in_every_mode("trimmed", &[16, 4000, 16 << 10], "free()");
}

#[test]
fn double_free_on_another_cpu() {
    expect_double_free_in_every_mode("other_cpu", &[32, 4000], "free()");
}

#[test]
fn realloc_of_freed_block() {
    expect_double_free_in_every_mode("realloc", &[32, 4000, 100 << 10], "realloc()");
}

#[test]
fn double_dealloc_through_global_alloc() {
    expect_double_free_in_every_mode("dealloc", &[8, 24, 640, 4096, 20000], "free()");
}

/// A long random workload whose live blocks hold the free mark (read back
/// from a block just freed: this test's own use after free) in their first
/// word when they are freed: no false report, and every block keeps its
/// contents. Returns the number of frees of marked blocks.
fn marked_workload() -> u64 {
    use rseq_alloc::raw;
    // SAFETY: the block read after free was freed by this thread into the
    // allocator's cache and is not reallocated before the read.
    let key = unsafe {
        let p = raw::malloc(64);
        raw::free(p);
        p.cast::<u64>().read() & !0xff_ffff
    };
    assert!(key >> 63 == 1, "mark has its top bit set: {key:#x}");
    let sizes = class_sizes();
    let mut rng = 0x1234_5678_9abc_def1u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut live: Vec<(usize, usize, u8)> = Vec::new();
    let mut frees = 0u64;
    for round in 0..200_000u64 {
        if live.len() < 2000 && (next() % 3 != 0 || live.is_empty()) {
            let size = sizes[(next() % 40) as usize];
            let p = raw::malloc(size);
            assert!(!p.is_null());
            let fill = (round % 251) as u8;
            // SAFETY: a fresh block of `size` bytes.
            unsafe { p.add(8).write_bytes(fill, size - 8) };
            live.push((p as usize, size, fill));
        } else {
            let i = (next() as usize) % live.len();
            let (p, size, fill) = live.swap_remove(i);
            let p = p as *mut u8;
            // SAFETY: a live block of `size` bytes.
            unsafe {
                for j in 8..size {
                    assert_eq!(*p.add(j), fill, "block {p:?} byte {j} changed");
                }
                // The key, or the key with a plausible span link.
                let w = if next() % 2 == 0 {
                    key
                } else {
                    key | (next() & 0xff_ffff)
                };
                p.cast::<u64>().write(w);
                raw::free(p);
            }
            frees += 1;
        }
    }
    frees
}

#[test]
fn marked_live_blocks_are_not_reported() {
    if std::env::var(CASE_VAR).is_ok() {
        return;
    }
    for conf in MODES {
        let out = run_child("marked:0", conf);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "({conf}): {stderr}");
        let frees: u64 = stderr
            .lines()
            .find_map(|l| l.strip_prefix("marked-ok frees="))
            .unwrap_or_else(|| panic!("({conf}): no result line: {stderr}"))
            .parse()
            .unwrap();
        assert!(
            frees > 50_000,
            "({conf}): only {frees} frees of marked blocks"
        );
    }
}

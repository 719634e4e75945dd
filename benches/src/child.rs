//! The worker side of the harness: `rseq-alloc-bench worker NAME key=value...`
//! checks that the requested allocator is the one in use, runs one workload
//! of `crate::workloads`, and prints its figures (protocol in `crate::worker`).

use crate::workloads::{self, Kind};
use crate::{dispatch, worker};

/// Entry point of a child: checks that the requested allocator is the one in
/// use, runs one workload, prints its figures (protocol in `worker`).
pub fn main(args: &[String]) -> i32 {
    let Some(name) = args.first() else {
        eprintln!("usage: rseq-alloc-bench worker NAME [key=value...] | worker info");
        return 2;
    };
    let Some(backend) = dispatch::backend_name() else {
        eprintln!(
            "worker: {} names an allocator this binary does not have \
             (rseq-alloc needs the `ours` feature)",
            dispatch::ENV
        );
        return 3;
    };
    if let Ok(lib) = std::env::var("RSEQ_BENCH_EXPECT_LIB") {
        // LD_PRELOAD failures are only a warning from ld.so: make sure the
        // library really is mapped, or we would silently measure glibc.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let file = lib.rsplit('/').next().unwrap_or(&lib);
        if !maps.contains(file) {
            eprintln!("worker: {lib} is not loaded (LD_PRELOAD failed?)");
            return 3;
        }
    }
    if name == "info" {
        println!("INFO backend={backend}");
        if backend == "mimalloc" {
            // The C library the mimalloc crate compiled in (libmimalloc-sys
            // bundles v2 and v3; the crate's features pick one).
            extern "C" {
                fn mi_version() -> std::ffi::c_int;
            }
            // SAFETY: mi_version takes no arguments and only returns a constant.
            let v = unsafe { mi_version() };
            println!(
                "INFO mimalloc_version={}.{}.{}",
                v / 10000,
                v / 100 % 100,
                v % 100
            );
        }
        #[cfg(feature = "ours")]
        if backend.starts_with("rseq") {
            // Allocate once so the allocator initialises and picks its mode.
            let v = vec![1u8; 64];
            std::hint::black_box(&v);
            println!(
                "INFO rseq_mode={} rseq_index={}",
                rseq_alloc::mode_name(),
                rseq_alloc::index_name()
            );
        }
        return 0;
    }
    let params = match worker::Params::parse(&args[1..]) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("worker: {e}");
            return 2;
        }
    };
    let run = match workloads::find(name).map(|w| w.kind) {
        Some(Kind::Synthetic(f)) => {
            f(&params);
            let (hwm, rss) = rseq_alloc_bench::rss_kib();
            println!("PEAK hwm_kib={hwm} rss_kib={rss}");
            Ok(())
        }
        Some(_) => Err(format!("`{name}` is a program workload, not a worker one")),
        None => Err(format!("unknown workload `{name}`")),
    };
    match run {
        Ok(()) => {
            #[cfg(feature = "ours")]
            if backend.starts_with("rseq") {
                // Internals of our allocator for this run (no allocation).
                let st = rseq_alloc::raw::stats();
                println!(
                    "OURS rseq_aborts={} fallback_ops={} mapped_kib={} cached_kib={}",
                    st.rseq_aborts,
                    st.fallback_ops,
                    st.mapped_bytes / 1024,
                    st.cached_bytes / 1024
                );
            }
            0
        }
        Err(e) => {
            eprintln!("worker: {e}");
            2
        }
    }
}

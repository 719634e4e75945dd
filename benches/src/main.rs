//! `rseq-alloc-bench`: compares rseq-alloc with glibc, jemalloc, mimalloc and
//! TCMalloc on the same workloads in the same run.
//!
//! ```text
//! cargo run --release -p rseq-alloc-bench                 # quick suite, < 5 min
//! cargo run --release -p rseq-alloc-bench -- --full       # longer, steadier sizes
//! cargo run --release -p rseq-alloc-bench -- --only larson --alloc rseq,jemalloc --reps 5
//! ```
//!
//! The harness re-executes this binary as a worker (`rseq-alloc-bench worker
//! NAME key=value...`), one child process per (workload, allocator, repetition),
//! so every measurement starts with a fresh heap and a fresh peak-RSS counter.
//! In-process Rust allocators are selected in the child by `RSEQ_BENCH_ALLOC`
//! (see `dispatch`); C libraries by `LD_PRELOAD` with the child on the system
//! allocator. Results go to stdout as markdown and to `target/bench-report/`.

#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

mod dispatch;
mod harness;
mod report;
mod worker;

#[global_allocator]
static GLOBAL: dispatch::Dispatch = dispatch::Dispatch;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("worker") => worker_main(&args[1..]),
        _ => harness::main(&args),
    };
    std::process::exit(code);
}

/// Entry point of a child: checks that the requested allocator is the one in
/// use, runs one workload, prints its figures (protocol in `worker`).
fn worker_main(args: &[String]) -> i32 {
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
        #[cfg(feature = "ours")]
        if backend == "rseq" {
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
    match worker::run(name, &params) {
        Ok(()) => {
            #[cfg(feature = "ours")]
            if backend == "rseq" {
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

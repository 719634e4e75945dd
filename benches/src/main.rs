//! `rseq-alloc-bench`: compares rseq-alloc with glibc, jemalloc, mimalloc and
//! TCMalloc on the same workloads in the same run.
//!
//! ```text
//! cargo run --release -p rseq-alloc-bench                 # quick suite, ~4-5 min on 2 CPUs
//! cargo run --release -p rseq-alloc-bench -- --full       # longer, steadier sizes
//! cargo run --release -p rseq-alloc-bench -- --only larson --alloc rseq,jemalloc --reps 5
//! cargo run --release -p rseq-alloc-bench -- --lib snmalloc=/path/libsnmallocshim.so
//! ```
//!
//! The harness re-executes this binary as a worker (`rseq-alloc-bench worker
//! NAME key=value...`), one child process per (workload, allocator, repetition),
//! so every measurement starts with a fresh heap and a fresh peak-RSS counter.
//! In-process Rust allocators are selected in the child by `RSEQ_BENCH_ALLOC`
//! (see `dispatch`); C libraries by `LD_PRELOAD` with the child on the system
//! allocator. Results go to stdout as markdown and to `target/bench-report/`.
//!
//! Modules, dependencies pointing down:
//!
//! ```text
//! harness     command line, selection of workloads and allocators, the plan
//! ├─ runner   runs the plan: child processes, timeouts, rusage, worker protocol
//! ├─ machine  CPU, kernel, glibc, commit, rseq mode, allocator versions
//! ├─ report/  data and summaries (mod), renderings: markdown, csv, svg
//! ├─ allocs   the contenders and how each is installed
//! └─ workloads the one workload table: name, description, sizes, function
//! child       the worker's entry: checks the backend, runs one workload
//! worker      the synthetic workloads' code
//! dispatch    the `#[global_allocator]` that picks the backend per process
//! ```

#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

mod allocs;
mod child;
mod dispatch;
mod harness;
mod machine;
mod report;
mod runner;
mod worker;
mod workloads;

#[global_allocator]
static GLOBAL: dispatch::Dispatch = dispatch::Dispatch;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("worker") => child::main(&args[1..]),
        _ => harness::main(&args),
    };
    std::process::exit(code);
}

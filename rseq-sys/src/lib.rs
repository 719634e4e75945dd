//! # rseq-sys: the restartable-sequences core of rseq-alloc
//!
//! Knows the kernel, not allocation:
//!
//! - [`abi`]: the kernel's `struct rseq` / `struct rseq_cs` and constants.
//! - [`registration`]: per-thread registration, sharing glibc's area when
//!   glibc registered one (`Glibc`), registering our own otherwise (`Own`),
//!   or reporting `Unavailable`.
//! - [`percpu`]: per-CPU bounded pointer stacks driven by rseq critical
//!   sections (x86_64 assembly in `arch/`), or by compare-and-swap when rseq
//!   is unavailable; bounded restarts; safe remote drains.
//! - [`fence`]: membarrier RSEQ fences, to touch another CPU's data safely.
//!
//! ```text
//!  percpu::PerCpuSlabs ──► arch::{pop, push, pop_batch, push_batch}  (rseq sections)
//!        │                 └► compare-and-swap discipline            (fallback)
//!        ├──► registration (where the rseq area is, who owns it)
//!        └──► fence (drain a remote region)
//! ```
//!
//! Nothing here allocates or panics on an operation path.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(
    missing_docs,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "rseq-sys (and rseq-alloc, rseq-malloc) support Linux only: rseq is a Linux \
     system call. Depend on rseq-alloc only under \
     [target.'cfg(target_os = \"linux\")'.dependencies] and put the \
     #[global_allocator] behind #[cfg(target_os = \"linux\")]."
);

pub mod abi;
pub mod arch;
pub mod fence;
pub mod percpu;
pub mod registration;

//! # rseq-sys: the restartable-sequences core of rseq-alloc
//!
//! Knows the kernel, not allocation:
//!
//! - [`abi`]: the kernel's `struct rseq` / `struct rseq_cs` and constants.
//! - [`registration`]: per-thread registration, sharing glibc's area when
//!   glibc registered one (`Glibc`), registering our own otherwise (`Own`),
//!   or reporting `Unavailable`.
//! - [`percpu`]: per-CPU bounded pointer stacks driven by rseq critical
//!   sections (x86_64 assembly in `arch/`), or under a per-stack try-lock
//!   when rseq is unavailable; bounded restarts; safe remote drains.
//! - [`fence`]: membarrier RSEQ fences, to touch another CPU's data safely.
//! - [`arch`]: the one place the architecture is chosen; the sections'
//!   shared status codes, region stride and batch operands.
//!
//! ```text
//!  percpu::PerCpuSlabs ─┬► percpu/rseq.rs ──► arch::{pop, push, pop_batch, push_batch}
//!    (mod.rs)           ├► percpu/trylock.rs  (fallback: per-stack try-lock)
//!                       ├► percpu/drain.rs ──► fence (drain a remote region)
//!                       └► registration (where the rseq area is, who owns it)
//!  percpu/layout.rs: the region layout; its Header offsets are the asm's const operands
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

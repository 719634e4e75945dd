//! The one place where the architecture is chosen. x86_64 has real rseq
//! critical sections; every other architecture builds with the fallback
//! only (its sections report "unregistered", so callers use CAS).

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;

#[cfg(not(target_arch = "x86_64"))]
mod generic;
#[cfg(not(target_arch = "x86_64"))]
pub use self::generic::*;

/// Whether this architecture has rseq critical sections.
pub const HAS_RSEQ: bool = cfg!(target_arch = "x86_64");

/// Weak references to the glibc symbols fork handling needs.
pub mod libc_weak;

//! The one place where the architecture is chosen, and what every
//! architecture's sections share: the status they report, the region
//! stride, the batch operands, the abort counter and the retry bound.
//!
//! x86_64 has real rseq critical sections; every other architecture builds
//! with the fallback only (its sections report [`Status::Unregistered`], so
//! callers use the try-lock discipline of `percpu`).

use core::sync::atomic::AtomicU64;

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

/// How a section ended. The sections write these discriminants into their
/// status register (they reach the asm as `const` operands).
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Status {
    /// The operation committed.
    Ok = 0,
    /// Pop found the stack empty, or push found it full.
    Miss = 1,
    /// `cpu_id` is negative: this thread is not registered (always, on an
    /// architecture without sections).
    Unregistered = 2,
    /// [`MAX_RETRIES`] consecutive aborts.
    Exhausted = 3,
}

impl Status {
    /// The status a section left in its status register. The sections
    /// write only discriminants of [`Status`]; any other value reads as
    /// `Exhausted` (the caller then takes its slow path).
    #[inline(always)]
    pub fn from_u32(v: u32) -> Status {
        match v {
            0 => Status::Ok,
            1 => Status::Miss,
            2 => Status::Unregistered,
            _ => Status::Exhausted,
        }
    }
}

/// log2 of a region's size: region `i` starts at `base + (i << REGION_SHIFT)`.
pub const REGION_SHIFT: u32 = 18;

/// Number of consecutive aborts after which a section gives up with
/// [`Status::Exhausted`]. A debugger that single-steps a section aborts it
/// on every step; this bound makes stepping through malloc terminate.
pub const MAX_RETRIES: u32 = 64;

/// Process-wide count of rseq aborts, incremented by every abort handler
/// (always 0 on an architecture without sections).
pub static ABORTS: AtomicU64 = AtomicU64::new(0);

/// Operands of the batch sections, read from memory so that a restart can
/// reload them (the sections use more registers than x86_64 has to spare).
/// The sections reach the fields at their `offset_of!` offsets.
#[repr(C)]
pub struct BatchArgs {
    /// Base of region 0.
    pub base: *mut u8,
    /// Header index of the class.
    pub class: usize,
    /// Pop: destination array. Push: source array.
    pub buf: *mut *mut u8,
    /// Maximum number of items to move (>= 1).
    pub max: usize,
}

/// Iterations of the delay loop injected before the commit store of every
/// critical section. Exists only in a build with `--cfg rseq_inject_delay`
/// (stress tests), never in a shipped one.
#[cfg(rseq_inject_delay)]
pub static DELAY_LOOPS: AtomicU64 = AtomicU64::new(0);

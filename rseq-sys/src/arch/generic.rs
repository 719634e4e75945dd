//! Architectures without rseq critical sections: every section reports
//! "unregistered" and registration reports `Unavailable`, so all per-CPU
//! structures run the compare-and-swap discipline.

use core::sync::atomic::AtomicU64;

/// Process-wide count of rseq aborts (always 0 here).
pub static ABORTS: AtomicU64 = AtomicU64::new(0);
/// See the x86_64 module.
pub const MAX_RETRIES: u32 = 64;
/// log2 of a region's size.
pub const REGION_SHIFT: u32 = 18;
/// The operation committed.
pub const STATUS_OK: u32 = 0;
/// Empty or full.
pub const STATUS_MISS: u32 = 1;
/// Not registered.
pub const STATUS_UNREGISTERED: u32 = 2;
/// Too many restarts.
pub const STATUS_EXHAUSTED: u32 = 3;
/// Size of our own rseq area.
pub const OWN_AREA_BYTES: usize = 256;

/// Operands of the batch sections.
#[repr(C)]
pub struct BatchArgs {
    /// Base of region 0.
    pub base: *mut u8,
    /// Header index.
    pub class: usize,
    /// Buffer.
    pub buf: *mut *mut u8,
    /// Maximum count.
    pub max: usize,
}

/// # Safety
/// Never touches memory.
pub unsafe fn pop(_: *mut u8, _: usize, _: isize, _: isize) -> (*mut u8, u32) {
    (core::ptr::null_mut(), STATUS_UNREGISTERED)
}
/// # Safety
/// Never touches memory.
pub unsafe fn push(_: *mut u8, _: usize, _: isize, _: isize, _: *mut u8) -> u32 {
    STATUS_UNREGISTERED
}
/// # Safety
/// Never touches memory.
pub unsafe fn pop_or_null(_: *mut u8, _: usize, _: isize, _: isize) -> *mut u8 {
    core::ptr::null_mut()
}
/// # Safety
/// Never touches memory.
pub unsafe fn push_or_miss(_: *mut u8, _: usize, _: isize, _: isize, _: *mut u8) -> bool {
    false
}
/// # Safety
/// Never touches memory.
pub unsafe fn pop_batch(_: &BatchArgs, _: isize, _: isize) -> (usize, u32) {
    (0, STATUS_UNREGISTERED)
}
/// # Safety
/// Never touches memory.
pub unsafe fn push_batch(_: &BatchArgs, _: isize, _: isize) -> (usize, u32) {
    (0, STATUS_UNREGISTERED)
}
/// No `rdpid` here.
pub fn has_rdpid() -> bool {
    false
}
/// Never called (see [`has_rdpid`]).
pub fn rdpid_cpu() -> u32 {
    0
}
/// No thread pointer is used here.
pub fn thread_pointer() -> usize {
    0
}
/// # Safety
/// Never called: registration is always `Unavailable` here.
pub unsafe fn read_tp_u32(_: isize) -> u32 {
    u32::MAX
}
/// libc's rseq symbols are not used on this architecture.
pub fn glibc_rseq_symbols() -> (*const isize, *const u32) {
    (core::ptr::null(), core::ptr::null())
}
/// No own area on this architecture.
pub fn own_area_offset() -> isize {
    0
}

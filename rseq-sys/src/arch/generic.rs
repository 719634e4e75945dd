//! Architectures without rseq critical sections: every section reports
//! [`Status::Unregistered`] and registration reports `Unavailable`, so all
//! per-CPU structures run the try-lock discipline. The signatures are the
//! x86_64 module's; so are the contracts, which these stubs never rely on.

use super::{BatchArgs, Status};

/// # Safety
/// None needed: never touches memory.
pub unsafe fn pop(_: *mut u8, _: usize, _: isize, _: isize) -> (*mut u8, Status) {
    (core::ptr::null_mut(), Status::Unregistered)
}
/// # Safety
/// None needed: never touches memory.
pub unsafe fn push(_: *mut u8, _: usize, _: isize, _: isize, _: *mut u8) -> Status {
    Status::Unregistered
}
/// # Safety
/// None needed: never touches memory.
pub unsafe fn pop_or_null(_: *mut u8, _: usize, _: isize, _: isize) -> *mut u8 {
    core::ptr::null_mut()
}
/// # Safety
/// None needed: never touches memory.
pub unsafe fn push_or_miss(_: *mut u8, _: usize, _: isize, _: isize, _: *mut u8) -> bool {
    false
}
/// # Safety
/// None needed: never touches memory.
pub unsafe fn pop_batch(_: &BatchArgs, _: isize, _: isize) -> (usize, Status) {
    (0, Status::Unregistered)
}
/// # Safety
/// None needed: never touches memory.
pub unsafe fn push_batch(_: &BatchArgs, _: isize, _: isize) -> (usize, Status) {
    (0, Status::Unregistered)
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
/// None needed: never called (registration is always `Unavailable` here),
/// and never touches memory.
pub unsafe fn read_tp_u32(_: isize) -> u32 {
    u32::MAX
}
/// libc's rseq symbols are not used on this architecture.
pub fn glibc_rseq_symbols() -> (*const isize, *const u32) {
    (core::ptr::null(), core::ptr::null())
}

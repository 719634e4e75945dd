//! membarrier RSEQ fences: restart every rseq critical section in flight on
//! one CPU or on all CPUs running this process's threads.
//!
//! This is how one thread safely changes another CPU's cache (the role the
//! never-merged `cpu_opv` was meant to play): write the change, fence, and
//! after the fence no section that read the old state can still commit.

use core::sync::atomic::{AtomicI32, AtomicU8, Ordering};

const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ: libc::c_int = 1 << 7;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ: libc::c_int = 1 << 8;
const MEMBARRIER_CMD_FLAG_CPU: libc::c_uint = 1 << 0;

/// Whether the process is registered for RSEQ fences (`STATE` holds its
/// `u8`).
#[repr(u8)]
enum State {
    /// Not tried yet.
    Unknown = 0,
    /// Registered: fences work.
    Ready = 1,
    /// Registration failed with `FAILED_ERRNO`.
    Failed = 2,
}
static STATE: AtomicU8 = AtomicU8::new(State::Unknown as u8);
static FAILED_ERRNO: AtomicI32 = AtomicI32::new(0);

fn membarrier(
    cmd: libc::c_int,
    flags: libc::c_uint,
    cpu: libc::c_int,
) -> Result<libc::c_long, i32> {
    // SAFETY: membarrier takes only integers.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, cmd, flags, cpu) };
    if r < 0 {
        // SAFETY: reading errno right after the failed syscall.
        Err(unsafe { *libc::__errno_location() })
    } else {
        Ok(r)
    }
}

/// Registers the process for RSEQ fences (once; later calls return the
/// first answer). Err carries the errno: ENOSYS or EINVAL when the kernel
/// (or a sandbox) lacks the command.
pub fn register() -> Result<(), i32> {
    match STATE.load(Ordering::Acquire) {
        v if v == State::Ready as u8 => return Ok(()),
        v if v == State::Failed as u8 => return Err(FAILED_ERRNO.load(Ordering::Relaxed)),
        _ => {}
    }
    let result = membarrier(MEMBARRIER_CMD_QUERY, 0, 0).and_then(|mask| {
        if mask & MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ as libc::c_long == 0 {
            return Err(libc::EINVAL);
        }
        membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0).map(|_| ())
    });
    match result {
        Ok(()) => STATE.store(State::Ready as u8, Ordering::Release),
        Err(e) => {
            FAILED_ERRNO.store(e, Ordering::Relaxed);
            STATE.store(State::Failed as u8, Ordering::Release);
        }
    }
    result
}

/// Restarts any critical section in flight on `cpu`. Use when regions are
/// indexed by CPU number.
pub fn cpu(cpu: u32) -> Result<(), i32> {
    register()?;
    membarrier(
        MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
        MEMBARRIER_CMD_FLAG_CPU,
        cpu as libc::c_int,
    )
    .map(|_| ())
}

/// Restarts every critical section in flight in this process. Use when
/// regions are indexed by concurrency id (a cid can run on any CPU).
pub fn all() -> Result<(), i32> {
    register()?;
    membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0).map(|_| ())
}

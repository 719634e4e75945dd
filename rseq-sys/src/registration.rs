//! Per-thread rseq registration, shared with libc when libc owns the area.
//!
//! Only one rseq area can be registered per thread, so we never fight libc
//! for it:
//!
//! - **Glibc**: glibc >= 2.35 registered an area in every thread; it sits at
//!   thread pointer + `__rseq_offset`. We reach both symbols through weak
//!   references resolved by the dynamic linker (never `dlsym`) and share it.
//!   A thread where glibc's registration failed has `cpu_id == -2`.
//! - **Own**: libc did not register (`GLIBC_TUNABLES=glibc.pthread.rseq=0`,
//!   musl, old glibc). We register our static-TLS area, at a fixed
//!   thread-pointer offset in every thread. Static TLS is released only once
//!   the thread is gone, so the kernel can never write into freed memory.
//! - **Unavailable**: the syscall failed (ENOSYS under gVisor, valgrind or
//!   qemu-user; EPERM/ENOSYS from seccomp, or its SIGSYS), or `cpu_id < 0`.
//!
//! We never write a field the kernel owns. Everything here is a slow path:
//! the critical sections find the area through [`tp_offset`] and treat a
//! negative `cpu_id` as "unregistered" without entering a retry loop.

use crate::abi::{self, offset};
use crate::arch;
use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicIsize, AtomicU32, AtomicU8, AtomicUsize, Ordering};

/// How the calling thread can use rseq.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// libc registered the area and we share it.
    Glibc,
    /// We registered our own area.
    Own,
    /// No rseq for this thread: use the compare-and-swap fallback.
    Unavailable,
}

impl Mode {
    /// The name used in `verbose=1` lines.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Glibc => "rseq-glibc",
            Mode::Own => "rseq-own",
            Mode::Unavailable => "cmpxchg",
        }
    }
}

// Process-wide state: which kind of area this process uses.
const P_UNKNOWN: u8 = 0;
const P_GLIBC: u8 = 1;
const P_OWN: u8 = 2;
const P_NONE: u8 = 3;
static PROCESS: AtomicU8 = AtomicU8::new(P_UNKNOWN);
/// Thread-pointer offset of the area; meaningful once PROCESS is GLIBC/OWN.
static TP_OFFSET: AtomicIsize = AtomicIsize::new(0);
/// Why the process is `P_NONE` (an errno), or 0.
static NONE_ERRNO: AtomicU32 = AtomicU32::new(0);
static FEATURE_SIZE: AtomicU32 = AtomicU32::new(0);
static POSSIBLE_CPUS: AtomicUsize = AtomicUsize::new(0);
/// Set by tests and by `RSEQ_MALLOC_CONF=rseq=off` callers that want the
/// process to behave as if the kernel had no rseq.
static FORCED_OFF: AtomicBool = AtomicBool::new(false);

// Per-thread state, only for `Own` (glibc registers every thread itself).
const T_UNKNOWN: u8 = 0;
const T_UNAVAILABLE: u8 = 1;
thread_local! {
    static THREAD: Cell<u8> = const { Cell::new(T_UNKNOWN) };
}

/// The kernel's rseq feature size (`getauxval(AT_RSEQ_FEATURE_SIZE)`), or
/// 20 (the original ABI) when the kernel does not say.
pub fn feature_size() -> u32 {
    let cached = FEATURE_SIZE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: getauxval only reads the auxiliary vector.
    let v = unsafe { libc::getauxval(abi::AT_RSEQ_FEATURE_SIZE) } as u32;
    let v = if v == 0 { abi::ORIG_FEATURE_SIZE } else { v };
    FEATURE_SIZE.store(v, Ordering::Relaxed);
    v
}

/// Whether the kernel maintains `node_id` and `mm_cid` (Linux >= 6.3).
pub fn mm_cid_supported() -> bool {
    feature_size() >= abi::MM_CID_FEATURE_SIZE
}

/// Number of distinct CPU ids (and so of concurrency ids) this process can
/// ever observe: the highest possible CPU number plus one.
pub fn possible_cpus() -> usize {
    let cached = POSSIBLE_CPUS.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let n = read_possible_cpus().unwrap_or_else(|| {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
        if n > 0 {
            n as usize
        } else {
            1
        }
    });
    POSSIBLE_CPUS.store(n, Ordering::Relaxed);
    n
}

/// Parses `/sys/devices/system/cpu/possible` ("0-3,8-11") into the highest
/// CPU number plus one, with a stack buffer (no allocation).
fn read_possible_cpus() -> Option<usize> {
    let mut buf = [0u8; 256];
    let n = read_small_file(c"/sys/devices/system/cpu/possible", &mut buf)?;
    parse_cpu_list_max(&buf[..n]).map(|max| max + 1)
}

/// The largest number in a kernel CPU list such as "0-3,8-11\n".
pub(crate) fn parse_cpu_list_max(text: &[u8]) -> Option<usize> {
    let mut max = None;
    let mut cur: Option<usize> = None;
    for &b in text {
        match b {
            b'0'..=b'9' => {
                let d = (b - b'0') as usize;
                cur = Some(cur.unwrap_or(0).checked_mul(10)?.checked_add(d)?);
            }
            b'-' | b',' | b'\n' | b' ' => {
                if let Some(c) = cur.take() {
                    max = Some(max.map_or(c, |m: usize| m.max(c)));
                }
            }
            _ => return None,
        }
    }
    if let Some(c) = cur {
        max = Some(max.map_or(c, |m: usize| m.max(c)));
    }
    max
}

/// Reads a small file into `buf` without allocating; returns the length.
pub(crate) fn read_small_file(path: &core::ffi::CStr, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: path is NUL-terminated; flags request a read-only descriptor.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut len = 0;
    while len < buf.len() {
        // SAFETY: the destination is the unwritten tail of `buf`.
        let r = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if r <= 0 {
            break;
        }
        len += r as usize;
    }
    // SAFETY: fd is ours and open.
    unsafe { libc::close(fd) };
    Some(len)
}

/// Makes every later registration attempt in this process fail as if the
/// kernel had no rseq (the thread-level state of already registered threads
/// is unchanged). For `rseq=off` and tests; call before first use.
pub fn force_unavailable() {
    FORCED_OFF.store(true, Ordering::Relaxed);
}

/// Decides, once per process, which area the process uses; returns the
/// process state. Racing first callers compute the same answer.
fn process_state() -> u8 {
    let p = PROCESS.load(Ordering::Acquire);
    if p != P_UNKNOWN {
        return p;
    }
    let (p, off) = decide_process();
    if p != P_NONE {
        TP_OFFSET.store(off, Ordering::Relaxed);
    }
    match PROCESS.compare_exchange(P_UNKNOWN, p, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => p,
        Err(existing) => existing,
    }
}

fn decide_process() -> (u8, isize) {
    if !arch::HAS_RSEQ {
        NONE_ERRNO.store(libc::ENOSYS as u32, Ordering::Relaxed);
        return (P_NONE, 0);
    }
    if FORCED_OFF.load(Ordering::Relaxed) {
        NONE_ERRNO.store(libc::ENOSYS as u32, Ordering::Relaxed);
        return (P_NONE, 0);
    }
    let (offp, sizep) = arch::glibc_rseq_symbols();
    if !offp.is_null() && !sizep.is_null() {
        // SAFETY: both symbols are defined by libc (non-null GOT entries) and
        // are plain constants set before any user code runs.
        let (off, size) = unsafe { (*offp, *sizep) };
        if size > 0 {
            // glibc owns the area in every thread (registration may still
            // have failed in some: their cpu_id is -2, checked per call).
            return (P_GLIBC, off);
        }
    }
    let off = arch::own_area_offset();
    match register_own(off) {
        Ok(()) => (P_OWN, off),
        Err(e) => {
            NONE_ERRNO.store(e as u32, Ordering::Relaxed);
            (P_NONE, 0)
        }
    }
}

/// Registers our static-TLS area for the calling thread.
fn register_own(off: isize) -> Result<(), i32> {
    let feature = feature_size();
    // SAFETY: getauxval only reads the auxiliary vector.
    let align = unsafe { libc::getauxval(abi::AT_RSEQ_ALIGN) } as usize;
    // The kernel accepts 32 bytes (the original size) or, when larger, at
    // least its feature size with the area aligned to AT_RSEQ_ALIGN.
    let len = if (feature as usize) <= 32
        || feature as usize > arch::OWN_AREA_BYTES
        || align > arch::OWN_AREA_BYTES
    {
        32
    } else {
        feature as usize
    };
    let area = arch::thread_pointer().wrapping_add_signed(off);
    rseq_syscall(area, len as u32, 0)
}

/// `rseq(area, len, flags, RSEQ_SIG)`, turning a seccomp SIGSYS into ENOSYS.
fn rseq_syscall(area: usize, len: u32, flags: i32) -> Result<(), i32> {
    let guard = SigsysGuard::install();
    // SAFETY: area is this thread's static-TLS rseq area (256 bytes, aligned
    // to 256), which lives as long as the thread.
    let r = unsafe { libc::syscall(libc::SYS_rseq, area, len, flags, abi::RSEQ_SIG) };
    // SAFETY: reading errno right after the syscall.
    let errno = unsafe { *libc::__errno_location() };
    let trapped = guard.finish();
    if trapped {
        Err(libc::ENOSYS)
    } else if r == 0 {
        Ok(())
    } else {
        Err(errno)
    }
}

/// While installed, a seccomp `SECCOMP_RET_TRAP` on our syscall becomes a
/// flag instead of killing the process. Installed only when the process runs
/// under a seccomp filter (`Seccomp: 2` in /proc/self/status).
struct SigsysGuard {
    old: Option<libc::sigaction>,
}

static SIGSYS_HIT: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigsys(_: libc::c_int) {
    SIGSYS_HIT.store(true, Ordering::SeqCst);
}

fn under_seccomp_filter() -> bool {
    let mut buf = [0u8; 4096];
    let Some(n) = read_small_file(c"/proc/self/status", &mut buf) else {
        return false;
    };
    let text = &buf[..n];
    let key = b"Seccomp:\t";
    text.windows(key.len() + 1)
        .any(|w| w.starts_with(key) && w[key.len()] == b'2')
}

impl SigsysGuard {
    fn install() -> SigsysGuard {
        if !under_seccomp_filter() {
            return SigsysGuard { old: None };
        }
        SIGSYS_HIT.store(false, Ordering::SeqCst);
        // SAFETY: an all-zero sigaction is a valid value to fill in.
        let mut new: libc::sigaction = unsafe { core::mem::zeroed() };
        new.sa_sigaction = on_sigsys as extern "C" fn(libc::c_int) as usize;
        // SAFETY: same as above.
        let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
        // SAFETY: valid pointers to sigaction structs; the handler only
        // stores to an atomic (async-signal-safe).
        let r = unsafe { libc::sigaction(libc::SIGSYS, &new, &mut old) };
        SigsysGuard {
            old: (r == 0).then_some(old),
        }
    }

    fn finish(self) -> bool {
        match self.old {
            None => false,
            Some(old) => {
                // SAFETY: restores the disposition saved by `install`.
                unsafe { libc::sigaction(libc::SIGSYS, &old, core::ptr::null_mut()) };
                SIGSYS_HIT.swap(false, Ordering::SeqCst)
            }
        }
    }
}

/// Registers the calling thread if needed (idempotent, never allocates) and
/// returns how it can use rseq.
pub fn current_mode() -> Mode {
    match process_state() {
        P_GLIBC => {
            if cpu_id_raw() >= 0 {
                Mode::Glibc
            } else {
                Mode::Unavailable
            }
        }
        P_OWN => {
            if cpu_id_raw() >= 0 {
                return Mode::Own;
            }
            if THREAD.with(|t| t.get()) == T_UNAVAILABLE || FORCED_OFF.load(Ordering::Relaxed) {
                return Mode::Unavailable;
            }
            match register_own(TP_OFFSET.load(Ordering::Relaxed)) {
                Ok(()) if cpu_id_raw() >= 0 => Mode::Own,
                _ => {
                    THREAD.with(|t| t.set(T_UNAVAILABLE));
                    Mode::Unavailable
                }
            }
        }
        _ => Mode::Unavailable,
    }
}

/// The errno that made the process `Unavailable` (0 if it is not).
pub fn unavailable_errno() -> i32 {
    NONE_ERRNO.load(Ordering::Relaxed) as i32
}

/// The process's area kind, without registering the calling thread:
/// `Unavailable` when no thread can use rseq.
pub fn process_mode() -> Mode {
    match process_state() {
        P_GLIBC => Mode::Glibc,
        P_OWN => Mode::Own,
        _ => Mode::Unavailable,
    }
}

/// Thread-pointer offset of the process's rseq area, once
/// [`process_mode`] is not `Unavailable`.
pub fn tp_offset() -> Option<isize> {
    match process_state() {
        P_GLIBC | P_OWN => Some(TP_OFFSET.load(Ordering::Relaxed)),
        _ => None,
    }
}

/// `cpu_id` as the kernel wrote it (negative when unregistered), read
/// without registering.
fn cpu_id_raw() -> i32 {
    // SAFETY: called only in the GLIBC/OWN states, where TP_OFFSET is the
    // offset of a live 32-byte rseq area in every thread.
    unsafe { arch::read_tp_u32(TP_OFFSET.load(Ordering::Relaxed) + offset::CPU_ID as isize) as i32 }
}

/// The current CPU as the kernel reports it in the rseq area; `None` when
/// the thread cannot use rseq.
pub fn cpu_id() -> Option<u32> {
    match current_mode() {
        Mode::Unavailable => None,
        _ => Some(cpu_id_raw() as u32),
    }
}

fn extended_field(field: usize) -> Option<u32> {
    if current_mode() == Mode::Unavailable || !mm_cid_supported() {
        return None;
    }
    // SAFETY: the thread is registered and the kernel's feature size covers
    // this field, which lies inside the 32-byte area.
    Some(unsafe { arch::read_tp_u32(TP_OFFSET.load(Ordering::Relaxed) + field as isize) })
}

/// The concurrency id (`mm_cid`), when the kernel maintains it.
pub fn mm_cid() -> Option<u32> {
    extended_field(offset::MM_CID)
}

/// The NUMA node of the current CPU, when the kernel maintains it.
pub fn node_id() -> Option<u32> {
    extended_field(offset::NODE_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_list_parsing() {
        assert_eq!(parse_cpu_list_max(b"0-1\n"), Some(1));
        assert_eq!(parse_cpu_list_max(b"0\n"), Some(0));
        assert_eq!(parse_cpu_list_max(b"0-3,8-11\n"), Some(11));
        assert_eq!(parse_cpu_list_max(b"x"), None);
        assert_eq!(parse_cpu_list_max(b""), None);
    }

    #[test]
    fn this_machine_registers() {
        // glibc 2.36 registers rseq itself on this machine.
        let m = current_mode();
        assert_ne!(m, Mode::Unavailable, "errno {}", unavailable_errno());
        let cpu = cpu_id().unwrap();
        assert!((cpu as usize) < possible_cpus());
        if mm_cid_supported() {
            assert!((mm_cid().unwrap() as usize) < possible_cpus());
            assert!(node_id().is_some());
        }
    }
}

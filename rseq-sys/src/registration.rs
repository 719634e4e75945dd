//! Per-thread rseq registration, shared with libc when libc owns the area.
//!
//! Only one rseq area can be registered per thread, so we never fight libc
//! for it:
//!
//! - **Glibc**: glibc >= 2.35 registered an area in every thread; it sits at
//!   thread pointer + `__rseq_offset`. We reach both symbols through weak
//!   references resolved by the dynamic linker (never `dlsym`) and share it.
//!   A thread where glibc's registration failed has `cpu_id == -2`.
//! - **Own**: libc did not register. Two cases:
//!   - glibc >= 2.35 told not to (`GLIBC_TUNABLES=glibc.pthread.rseq=0`):
//!     glibc still reserves its area in every thread (at `__rseq_offset`,
//!     `cpu_id == -2`) and never registers it; we register that area
//!     ourselves, 32 bytes long. Its thread-pointer offset is the same in
//!     every thread, so the critical sections keep using it ([`tp_offset`]
//!     is `Some`), and it lives exactly as long as the thread.
//!   - no glibc symbols (musl, glibc < 2.35): each thread's area comes from
//!     an `mmap`ed pool ([`own_area_layout`] bytes, aligned as the kernel
//!     asks). Its address has no fixed offset from the thread pointer, so
//!     [`tp_offset`] is `None` and per-CPU structures run the
//!     try-lock discipline; the registration still gives
//!     [`cpu_id`], [`mm_cid`] and [`node_id`]. A pthread key destructor
//!     unregisters the area at thread exit, and only then returns it to the
//!     pool (an area the kernel may still write is never reused).
//! - **Unavailable**: the syscall failed (ENOSYS under gVisor, valgrind or
//!   qemu-user; EPERM/ENOSYS from seccomp, or its SIGSYS), or `cpu_id < 0`.
//!
//! There is no TLS variable with a static-TLS requirement here, so a shared
//! library that embeds rseq-alloc can be `dlopen`ed (glibc's area is used
//! in that case, as in every process where glibc registered).
//!
//! We never write a field the kernel owns (a pool area is initialised only
//! while unregistered). Everything here is a slow path: the critical
//! sections find the area through [`tp_offset`] and treat a negative
//! `cpu_id` as "unregistered" without entering a retry loop.

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
    /// No rseq for this thread: use the try-lock fallback.
    Unavailable,
}

impl Mode {
    /// The name the allocator's `verbose=1` line and statistics print.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Glibc => "rseq-glibc",
            Mode::Own => "rseq-own",
            Mode::Unavailable => "cmpxchg",
        }
    }
}

/// Process-wide state: which kind of area this process uses (`PROCESS`
/// holds its `u8`).
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Process {
    /// Not decided yet.
    Unknown = 0,
    /// glibc registered its area in every thread.
    Glibc = 1,
    /// Our registration of glibc's reserved (unregistered) area.
    Own = 2,
    /// No thread can use rseq (`NONE_ERRNO` says why).
    None = 3,
    /// Our registration of a per-thread area from the pool.
    OwnPool = 4,
}

impl Process {
    fn from_u8(v: u8) -> Process {
        match v {
            1 => Process::Glibc,
            2 => Process::Own,
            3 => Process::None,
            4 => Process::OwnPool,
            _ => Process::Unknown,
        }
    }
}

static PROCESS: AtomicU8 = AtomicU8::new(Process::Unknown as u8);
/// Thread-pointer offset of the area; meaningful once PROCESS is Glibc/Own.
static TP_OFFSET: AtomicIsize = AtomicIsize::new(0);
/// `__rseq_size` as glibc published it (0 without glibc's symbols).
static LIBC_RSEQ_SIZE: AtomicU32 = AtomicU32::new(0);
/// Why the process is `Process::None` (an errno), or 0.
static NONE_ERRNO: AtomicU32 = AtomicU32::new(0);
static FEATURE_SIZE: AtomicU32 = AtomicU32::new(0);
static POSSIBLE_CPUS: AtomicUsize = AtomicUsize::new(0);
/// Set by tests and by `RSEQ_MALLOC_CONF=rseq=off` callers that want the
/// process to behave as if the kernel had no rseq.
static FORCED_OFF: AtomicBool = AtomicBool::new(false);
/// Set by tests: behave as if libc had no rseq symbols (the pool case).
static FORCED_POOL: AtomicBool = AtomicBool::new(false);

// Per-thread state, only for `Own` (glibc registers every thread itself).
// A const-initialised `thread_local!` without destructor: plain
// general-dynamic TLS in a shared library, which `dlopen` accepts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Thread {
    /// Not tried yet (or unregistered at thread exit).
    Unknown,
    /// Registration failed: do not try again.
    Unavailable,
    /// Registration in progress (a re-entrant call sees "unavailable").
    Busy,
    /// This thread's area is registered.
    Registered,
}
thread_local! {
    static THREAD: Cell<Thread> = const { Cell::new(Thread::Unknown) };
    /// This thread's pool area (`Process::OwnPool`), or 0.
    static POOL_AREA: Cell<usize> = const { Cell::new(0) };
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

/// The fields of the area beyond `cpu_id` that the kernel keeps current
/// for the calling process's registration (see [`usable_fields`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Fields {
    /// `node_id` (bytes 20..24).
    pub node_id: bool,
    /// `mm_cid` (bytes 24..28).
    pub mm_cid: bool,
}

/// The length a registration in `mode` covers, from `__rseq_size` (glibc's
/// registration) or the kernel's `feature_size` (ours). Pure.
///
/// The kernel accepts only 32 bytes (the original size) or at least its
/// feature size, so any registration covers at least 32 bytes:
/// glibc 2.35-2.39 publish `__rseq_size` 32 (with 20 bytes "active" in
/// their terms), 2.40 publishes 20 and still registers 32 bytes, 2.41+
/// publish the feature size and register at least that much. `0` means
/// glibc did not register. For `Own` this is the pool layout's length;
/// glibc's reserved area is registered with 32 bytes, which covers the
/// same fields (everything up to `mm_cid` lies in the first 32 bytes).
pub fn registered_len(rseq_size: u32, feature_size: u32, mode: Mode) -> u32 {
    match mode {
        Mode::Glibc if rseq_size == 0 => 0,
        Mode::Glibc => rseq_size.max(abi::ORIG_AREA_SIZE),
        Mode::Own => own_area_layout(feature_size, 0).0,
        Mode::Unavailable => 0,
    }
}

/// Which extended fields are usable, as a pure function of glibc's
/// `__rseq_size`, the kernel's feature size (`AT_RSEQ_FEATURE_SIZE`, 20
/// when absent) and the registration mode: a field is usable when the
/// kernel supports it (it lies inside the feature size) and the
/// registration covers it (inside [`registered_len`]). A kernel writes
/// every field it supports inside the registered length, whoever
/// registered. We only ever read these fields.
pub fn usable_fields(rseq_size: u32, feature_size: u32, mode: Mode) -> Fields {
    let covered = registered_len(rseq_size, feature_size, mode).min(feature_size);
    let has = |field: usize| covered as usize >= field + 4;
    Fields {
        node_id: has(offset::NODE_ID),
        mm_cid: has(offset::MM_CID),
    }
}

/// `(length, alignment)` of an area we register ourselves, from the
/// kernel's feature size and `AT_RSEQ_ALIGN` (0 when absent). Pure.
///
/// Up to a feature size of 32 the original ABI applies: 32 bytes aligned to
/// 32. Beyond, the length is the feature size rounded up to the alignment
/// (the kernel needs at least the feature size, so that it can pick its
/// fast "V2" mode and enforce the read-only fields), and the alignment is
/// `AT_RSEQ_ALIGN`, at least 32 and at least the next power of two of the
/// feature size (what the kernel computes when the auxv entry is missing).
/// If the kernel still refuses that (EINVAL), registration retries with
/// 32 bytes.
pub fn own_area_layout(feature_size: u32, at_align: u32) -> (u32, u32) {
    let orig = abi::ORIG_AREA_SIZE;
    if feature_size <= orig {
        return (orig, orig);
    }
    let align = feature_size
        .next_power_of_two()
        .max(at_align.next_power_of_two())
        .max(orig);
    (feature_size.next_multiple_of(align), align)
}

/// The extended fields usable in this process (mode decided here).
pub fn fields() -> Fields {
    let mode = process_mode();
    let rseq_size = LIBC_RSEQ_SIZE.load(Ordering::Relaxed);
    usable_fields(rseq_size, feature_size(), mode)
}

/// Whether the kernel maintains `node_id` and `mm_cid` for this process's
/// registration (Linux >= 6.3; see [`usable_fields`]).
pub fn mm_cid_supported() -> bool {
    fields().mm_cid
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

/// Makes the process use a pool area per thread, as with a libc without
/// rseq symbols (musl, glibc < 2.35), if libc did not register itself.
/// For tests; call before first use.
#[doc(hidden)]
pub fn force_own_pool() {
    FORCED_POOL.store(true, Ordering::Relaxed);
}

/// Decides, once per process, which area the process uses; returns the
/// process state. Racing first callers compute the same answer (the first
/// one's registration of its own thread is kept either way).
fn process_state() -> Process {
    let p = Process::from_u8(PROCESS.load(Ordering::Acquire));
    if p != Process::Unknown {
        return p;
    }
    let (p, off) = decide_process();
    if p == Process::Glibc || p == Process::Own {
        TP_OFFSET.store(off, Ordering::Relaxed);
    }
    match PROCESS.compare_exchange(
        Process::Unknown as u8,
        p as u8,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => p,
        Err(existing) => Process::from_u8(existing),
    }
}

fn decide_process() -> (Process, isize) {
    if !arch::HAS_RSEQ || FORCED_OFF.load(Ordering::Relaxed) {
        NONE_ERRNO.store(libc::ENOSYS as u32, Ordering::Relaxed);
        return (Process::None, 0);
    }
    let (offp, sizep) = arch::glibc_rseq_symbols();
    if !offp.is_null() && !sizep.is_null() {
        // SAFETY: both symbols are defined by libc (non-null GOT entries) and
        // are plain constants set before any user code runs.
        let (off, size) = unsafe { (*offp, *sizep) };
        LIBC_RSEQ_SIZE.store(size, Ordering::Relaxed);
        if size > 0 {
            // glibc owns the area in every thread (registration may still
            // have failed in some: their cpu_id is -2, checked per call).
            return (Process::Glibc, off);
        }
        if !FORCED_POOL.load(Ordering::Relaxed) {
            // glibc reserved its area in every thread but did not register
            // it: we do, at the same fixed offset.
            return match register_reserved(off) {
                Ok(()) => (Process::Own, off),
                Err(e) => {
                    NONE_ERRNO.store(e as u32, Ordering::Relaxed);
                    (Process::None, 0)
                }
            };
        }
    }
    if !pool::init_key() {
        NONE_ERRNO.store(libc::EAGAIN as u32, Ordering::Relaxed);
        return (Process::None, 0);
    }
    match pool::register_thread() {
        Ok(()) => (Process::OwnPool, 0),
        Err(e) => {
            NONE_ERRNO.store(e as u32, Ordering::Relaxed);
            (Process::None, 0)
        }
    }
}

/// Registers glibc's reserved area (`thread pointer + off`, 32 bytes,
/// aligned to 32, as long-lived as the thread) for the calling thread.
fn register_reserved(off: isize) -> Result<(), i32> {
    let area = arch::thread_pointer().wrapping_add_signed(off);
    rseq_syscall(area, abi::ORIG_AREA_SIZE, 0)
}

/// Per-thread areas for a libc without rseq symbols.
mod pool {
    use super::*;
    use core::sync::atomic::AtomicPtr;

    /// Length actually registered (the layout's, or 32 after an EINVAL);
    /// the same for every thread (it depends on the kernel only).
    static LEN: AtomicU32 = AtomicU32::new(0);
    /// Bytes per area (a power of two, at least the registered length).
    static STRIDE: AtomicUsize = AtomicUsize::new(0);
    /// Whether the key exists (`KeyState` as `u8`).
    static KEY_READY: AtomicU8 = AtomicU8::new(KeyState::Unknown as u8);
    static KEY: AtomicU32 = AtomicU32::new(0);

    #[repr(u8)]
    enum KeyState {
        /// Not created yet.
        Unknown = 0,
        /// Created (`KEY`).
        Ready = 1,
        /// `pthread_key_create` failed: the pool case is unavailable.
        Failed = 2,
    }
    /// Unregistered areas ready for reuse, linked through their first word.
    static FREE: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
    /// Protects FREE and the current chunk (a spin lock: held for a few
    /// instructions, only when a thread starts or exits).
    static LOCK: AtomicBool = AtomicBool::new(false);
    static CHUNK_NEXT: AtomicUsize = AtomicUsize::new(0);
    static CHUNK_END: AtomicUsize = AtomicUsize::new(0);
    const CHUNK_BYTES: usize = 64 * 1024;
    /// Areas carved from chunks so far (for tests).
    static CREATED: AtomicUsize = AtomicUsize::new(0);

    /// Creates the pthread key whose destructor unregisters an exiting
    /// thread's area. Idempotent; false when no key is available.
    pub(super) fn init_key() -> bool {
        match KEY_READY.load(Ordering::Acquire) {
            v if v == KeyState::Ready as u8 => return true,
            v if v == KeyState::Failed as u8 => return false,
            _ => {}
        }
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: creates a key with a valid extern "C" destructor;
        // pthread_key_create does not allocate.
        let ok = unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) } == 0;
        if ok {
            KEY.store(key, Ordering::Relaxed);
        }
        let state = if ok {
            KeyState::Ready
        } else {
            KeyState::Failed
        };
        KEY_READY.store(state as u8, Ordering::Release);
        ok
    }

    fn key() -> libc::pthread_key_t {
        KEY.load(Ordering::Relaxed)
    }

    fn lock() {
        while LOCK
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
    }

    fn unlock() {
        LOCK.store(false, Ordering::Release);
    }

    fn layout() -> (u32, usize) {
        let stride = STRIDE.load(Ordering::Relaxed);
        if stride != 0 {
            return (LEN.load(Ordering::Relaxed), stride);
        }
        // SAFETY: getauxval only reads the auxiliary vector.
        let at_align = unsafe { libc::getauxval(abi::AT_RSEQ_ALIGN) } as u32;
        let (len, align) = own_area_layout(feature_size(), at_align);
        let stride = (len.max(align) as usize).next_power_of_two();
        LEN.store(len, Ordering::Relaxed);
        STRIDE.store(stride, Ordering::Relaxed);
        (len, stride)
    }

    /// An unregistered area, zeroed but for `cpu_id = -1`; null when the
    /// system is out of memory.
    fn take(stride: usize) -> *mut u8 {
        lock();
        let mut area = FREE.load(Ordering::Relaxed);
        if !area.is_null() {
            // SAFETY: a free area's first word links to the next one.
            let next = unsafe { area.cast::<*mut u8>().read() };
            FREE.store(next, Ordering::Relaxed);
        } else {
            let mut next = CHUNK_NEXT.load(Ordering::Relaxed);
            if next == 0 || next + stride > CHUNK_END.load(Ordering::Relaxed) {
                // SAFETY: an anonymous private mapping; no preconditions.
                let p = unsafe {
                    libc::mmap(
                        core::ptr::null_mut(),
                        CHUNK_BYTES,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                if p == libc::MAP_FAILED {
                    unlock();
                    return core::ptr::null_mut();
                }
                next = p as usize;
                CHUNK_END.store(next + CHUNK_BYTES, Ordering::Relaxed);
            }
            // Page-aligned chunk, power-of-two stride <= chunk: aligned.
            area = next as *mut u8;
            CHUNK_NEXT.store(next + stride, Ordering::Relaxed);
            CREATED.fetch_add(1, Ordering::Relaxed);
        }
        unlock();
        // SAFETY: the area is ours (taken from the pool or a fresh chunk),
        // `stride` bytes, and not registered with the kernel.
        unsafe {
            core::ptr::write_bytes(area, 0, stride);
            area.add(offset::CPU_ID)
                .cast::<i32>()
                .write(abi::CPU_ID_UNINITIALIZED);
        }
        area
    }

    /// Returns an area the kernel no longer knows about.
    ///
    /// # Safety
    /// `area` came from [`take`] and is unregistered.
    unsafe fn put(area: *mut u8) {
        lock();
        // SAFETY: the area is ours and at least a word long and aligned.
        unsafe { area.cast::<*mut u8>().write(FREE.load(Ordering::Relaxed)) };
        FREE.store(area, Ordering::Relaxed);
        unlock();
    }

    /// Registers a pool area for the calling thread.
    pub(super) fn register_thread() -> Result<(), i32> {
        THREAD.with(|t| t.set(Thread::Busy));
        let (len, stride) = layout();
        let area = take(stride);
        if area.is_null() {
            THREAD.with(|t| t.set(Thread::Unavailable));
            return Err(libc::ENOMEM);
        }
        // The key's value is what the destructor unregisters. glibc stores
        // keys below 32 inline; a higher key may make this allocate once
        // per thread, which re-enters us as Thread::Busy (answered "unavailable").
        // SAFETY: the key was created by init_key.
        if unsafe { libc::pthread_setspecific(key(), area.cast()) } != 0 {
            // SAFETY: never registered.
            unsafe { put(area) };
            THREAD.with(|t| t.set(Thread::Unavailable));
            return Err(libc::ENOMEM);
        }
        let mut r = rseq_syscall(area as usize, len, 0);
        if r == Err(libc::EINVAL) && len != abi::ORIG_AREA_SIZE {
            r = rseq_syscall(area as usize, abi::ORIG_AREA_SIZE, 0);
            if r.is_ok() {
                LEN.store(abi::ORIG_AREA_SIZE, Ordering::Relaxed);
            }
        }
        match r {
            Ok(()) => {
                POOL_AREA.with(|a| a.set(area as usize));
                THREAD.with(|t| t.set(Thread::Registered));
                Ok(())
            }
            Err(e) => {
                // SAFETY: the key is valid; clearing it cancels the
                // destructor. The area was never registered.
                unsafe {
                    libc::pthread_setspecific(key(), core::ptr::null());
                    put(area);
                }
                THREAD.with(|t| t.set(Thread::Unavailable));
                Err(e)
            }
        }
    }

    /// The calling thread's registered area, or null.
    pub(super) fn current() -> *const u8 {
        POOL_AREA.with(|a| a.get()) as *const u8
    }

    /// pthread key destructor: unregister, then recycle. If unregistering
    /// fails the area is leaked, never reused.
    extern "C" fn on_thread_exit(area: *mut libc::c_void) {
        if area.is_null() {
            return;
        }
        let len = LEN.load(Ordering::Relaxed);
        let ok = rseq_syscall(area as usize, len, abi::RSEQ_FLAG_UNREGISTER).is_ok();
        POOL_AREA.with(|a| a.set(0));
        // A later destructor that allocates registers again (and sets the
        // key again, so this runs again).
        THREAD.with(|t| t.set(Thread::Unknown));
        if ok {
            // SAFETY: from `take`, and the kernel just forgot it.
            unsafe { put(area.cast()) };
        }
    }

    /// `(areas created, areas ready for reuse)` (for tests).
    pub(crate) fn counts() -> (usize, usize) {
        lock();
        let mut n = 0;
        let mut p = FREE.load(Ordering::Relaxed);
        while !p.is_null() {
            n += 1;
            // SAFETY: free areas link through their first word.
            p = unsafe { p.cast::<*mut u8>().read() };
        }
        unlock();
        (CREATED.load(Ordering::Relaxed), n)
    }
}

/// `(areas created, areas unregistered and ready for reuse)` of the pool
/// case, for tests: every exited thread's area comes back.
#[doc(hidden)]
pub fn pool_counts() -> (usize, usize) {
    pool::counts()
}

/// `rseq(area, len, flags, RSEQ_SIG)`, turning a seccomp SIGSYS into ENOSYS.
fn rseq_syscall(area: usize, len: u32, flags: i32) -> Result<(), i32> {
    let guard = SigsysGuard::install();
    // SAFETY: area is this thread's rseq area (glibc's reserved one or a
    // pool area), aligned and at least `len` bytes, and stays allocated
    // until it is unregistered or the thread is gone.
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

/// Whether the calling thread runs under a seccomp filter. Filters are
/// per thread (one installed without TSYNC binds only its thread and that
/// thread's later children), so this reads the thread's own status;
/// `/proc/self/status` describes the main thread. Kernels before 3.17 have
/// no `/proc/thread-self`: the process's status is the best answer there.
fn under_seccomp_filter() -> bool {
    let mut buf = [0u8; 4096];
    let Some(n) = read_small_file(c"/proc/thread-self/status", &mut buf)
        .or_else(|| read_small_file(c"/proc/self/status", &mut buf))
    else {
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
        // SAFETY: an all-zero sigaction is a valid value to be overwritten.
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

/// Registers the calling thread if needed (idempotent, never allocates)
/// and returns how it can use rseq.
pub fn current_mode() -> Mode {
    match process_state() {
        Process::Glibc => {
            if cpu_id_raw() >= 0 {
                Mode::Glibc
            } else {
                Mode::Unavailable
            }
        }
        Process::Own => {
            if cpu_id_raw() >= 0 {
                return Mode::Own;
            }
            if THREAD.with(|t| t.get()) == Thread::Unavailable || FORCED_OFF.load(Ordering::Relaxed)
            {
                return Mode::Unavailable;
            }
            match register_reserved(TP_OFFSET.load(Ordering::Relaxed)) {
                Ok(()) if cpu_id_raw() >= 0 => Mode::Own,
                _ => {
                    THREAD.with(|t| t.set(Thread::Unavailable));
                    Mode::Unavailable
                }
            }
        }
        Process::OwnPool => match THREAD.with(|t| t.get()) {
            Thread::Registered => Mode::Own,
            Thread::Unknown if !FORCED_OFF.load(Ordering::Relaxed) => match pool::register_thread()
            {
                Ok(()) => Mode::Own,
                Err(_) => Mode::Unavailable,
            },
            _ => Mode::Unavailable,
        },
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
        Process::Glibc => Mode::Glibc,
        Process::Own | Process::OwnPool => Mode::Own,
        _ => Mode::Unavailable,
    }
}

/// Thread-pointer offset of the process's rseq area, when it is the same
/// in every thread (glibc's area, registered by glibc or by us). `None`
/// when no thread can use rseq, and in the pool case (each thread's area
/// is somewhere else): critical sections must then not be used.
pub fn tp_offset() -> Option<isize> {
    match process_state() {
        Process::Glibc | Process::Own => Some(TP_OFFSET.load(Ordering::Relaxed)),
        _ => None,
    }
}

/// A 32-bit field of the calling thread's area, without registering.
fn read_field(field: usize) -> u32 {
    match process_state() {
        // SAFETY: in the GLIBC/OWN states TP_OFFSET is the offset of a live
        // 32-byte rseq area in every thread.
        Process::Glibc | Process::Own => unsafe {
            arch::read_tp_u32(TP_OFFSET.load(Ordering::Relaxed) + field as isize)
        },
        Process::OwnPool => {
            let area = pool::current();
            if area.is_null() {
                abi::CPU_ID_UNINITIALIZED as u32
            } else {
                // SAFETY: the thread's registered pool area, at least 32
                // bytes; a kernel-written field is read in one 32-bit load.
                unsafe { core::ptr::read_volatile(area.add(field).cast::<u32>()) }
            }
        }
        _ => abi::CPU_ID_UNINITIALIZED as u32,
    }
}

/// `cpu_id` as the kernel wrote it (negative when unregistered), read
/// without registering.
fn cpu_id_raw() -> i32 {
    read_field(offset::CPU_ID) as i32
}

/// The current CPU as the kernel reports it in the rseq area; `None` when
/// the thread cannot use rseq.
pub fn cpu_id() -> Option<u32> {
    match current_mode() {
        Mode::Unavailable => None,
        _ => Some(cpu_id_raw() as u32),
    }
}

fn extended_field(field: usize, usable: bool) -> Option<u32> {
    if current_mode() == Mode::Unavailable || !usable {
        return None;
    }
    Some(read_field(field))
}

/// The concurrency id (`mm_cid`), when the kernel maintains it.
pub fn mm_cid() -> Option<u32> {
    extended_field(offset::MM_CID, fields().mm_cid)
}

/// The NUMA node of the current CPU, when the kernel maintains it.
pub fn node_id() -> Option<u32> {
    extended_field(offset::NODE_ID, fields().node_id)
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

    /// node_id, mm_cid for every (`__rseq_size`, feature size, mode).
    #[test]
    fn usable_fields_table() {
        let f = |node_id, mm_cid| Fields { node_id, mm_cid };
        let none = f(false, false);
        let both = f(true, true);
        for feature in [20, 28, 32, 33] {
            let kernel = if feature >= 28 { both } else { none };
            // glibc did not register: nothing through glibc.
            assert_eq!(usable_fields(0, feature, Mode::Glibc), none);
            // 2.40 (20) and 2.35-2.39 (32) registered 32 bytes; 2.41+ the
            // feature size: the kernel fills what it supports.
            for size in [20, 32, feature, feature + 8] {
                assert_eq!(
                    usable_fields(size, feature, Mode::Glibc),
                    kernel,
                    "{size} {feature}"
                );
            }
            // Our own registration covers at least 32 bytes.
            for size in [0, 20, 32, feature] {
                assert_eq!(
                    usable_fields(size, feature, Mode::Own),
                    kernel,
                    "{size} {feature}"
                );
                assert_eq!(usable_fields(size, feature, Mode::Unavailable), none);
            }
        }
        assert_eq!(registered_len(32, 20, Mode::Glibc), 32);
        assert_eq!(registered_len(20, 28, Mode::Glibc), 32);
        assert_eq!(registered_len(33, 33, Mode::Glibc), 33);
        assert_eq!(registered_len(0, 33, Mode::Glibc), 0);
        assert_eq!(registered_len(0, 33, Mode::Own), 64);
    }

    #[test]
    fn own_area_layout_follows_the_abi() {
        // Original ABI: 32 bytes aligned to 32, whatever AT_RSEQ_ALIGN says.
        assert_eq!(own_area_layout(20, 0), (32, 32));
        assert_eq!(own_area_layout(28, 32), (32, 32));
        assert_eq!(own_area_layout(32, 32), (32, 32));
        // Linux 7.0: feature size 33, AT_RSEQ_ALIGN 64.
        assert_eq!(own_area_layout(33, 64), (64, 64));
        // Missing AT_RSEQ_ALIGN: next power of two of the feature size.
        assert_eq!(own_area_layout(33, 0), (64, 64));
        // A larger alignment wins; a non-power-of-two one is rounded up.
        assert_eq!(own_area_layout(40, 128), (128, 128));
        assert_eq!(own_area_layout(65, 48), (128, 128));
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

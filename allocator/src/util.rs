//! Small helpers that never allocate: a stack message buffer written with
//! `write(2)`, the invalid-pointer abort, and the calling thread's id.

/// A fixed-capacity message buffer on the stack. Text that does not fit is
/// silently truncated (a diagnostic must never fail or allocate).
pub struct MsgBuf {
    buf: [u8; 512],
    len: usize,
}

impl MsgBuf {
    /// An empty buffer.
    #[inline]
    pub const fn new() -> Self {
        MsgBuf {
            buf: [0; 512],
            len: 0,
        }
    }

    /// Appends bytes, truncating at capacity.
    pub fn bytes(&mut self, s: &[u8]) -> &mut Self {
        for &b in s {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        self
    }

    /// Appends a string.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// Appends an unsigned number in decimal.
    pub fn dec(&mut self, mut v: u64) -> &mut Self {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.bytes(&tmp[i..])
    }

    /// Appends an unsigned number in lower-case hexadecimal, without prefix.
    pub fn hex(&mut self, mut v: u64) -> &mut Self {
        let mut tmp = [0u8; 16];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b"0123456789abcdef"[(v & 15) as usize];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        self.bytes(&tmp[i..])
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Writes the buffer to stderr with `write(2)` (retrying short writes) and
    /// clears it.
    pub fn flush_stderr(&mut self) {
        write_stderr(self.as_bytes());
        self.len = 0;
    }
}

impl Default for MsgBuf {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes all of `bytes` to file descriptor 2, ignoring errors.
pub fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a valid readable slice for its whole length.
        let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            // EINTR: retry; anything else: give up silently.
            // SAFETY: reading errno through libc's thread-local location.
            if n < 0 && unsafe { *libc::__errno_location() } == libc::EINTR {
                continue;
            }
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Writes the message on stderr and aborts the process (without touching
/// the heap): the end of every report below.
#[cold]
fn report_and_abort(m: &mut MsgBuf) -> ! {
    m.flush_stderr();
    // SAFETY: abort(3) has no preconditions; it does not return.
    unsafe { libc::abort() }
}

/// `rseq-malloc: corrupted <what> state N`, then abort: an atomic state
/// byte (see `atomic_state!`) that names no variant.
#[cold]
#[inline(never)]
pub fn bad_state(what: &str, byte: u8) -> ! {
    let mut m = MsgBuf::new();
    m.str("rseq-malloc: corrupted ")
        .str(what)
        .str(" state ")
        .dec(byte as u64)
        .str("\n");
    report_and_abort(&mut m)
}

/// `rseq-malloc: <who>: <what> 0x<ptr>`, then abort.
#[cold]
#[inline(never)]
fn pointer_error(who: &str, what: &str, ptr: *const u8) -> ! {
    let mut m = MsgBuf::new();
    m.str("rseq-malloc: ")
        .str(who)
        .str(": ")
        .str(what)
        .str(" 0x")
        .hex(ptr as usize as u64)
        .str("\n");
    report_and_abort(&mut m)
}

/// Reports a double free and aborts: `rseq-malloc: <who>: double free 0x...`.
#[cold]
#[inline(never)]
pub fn double_free(who: &str, ptr: *const u8) -> ! {
    pointer_error(who, "double free", ptr)
}

/// Prints `rseq-malloc: <who>: invalid pointer 0x<hex>` and aborts the
/// process without touching the heap.
#[cold]
#[inline(never)]
pub fn invalid_pointer(who: &str, ptr: *const u8) -> ! {
    pointer_error(who, "invalid pointer", ptr)
}

/// Reports a free object whose free-list word was overwritten (a write
/// after free) and aborts.
#[cold]
#[inline(never)]
pub fn corrupted_free_object(ptr: *const u8) -> ! {
    let mut m = MsgBuf::new();
    m.str("rseq-malloc: heap corruption: free block 0x")
        .hex(ptr as usize as u64)
        .str(" was written after free\n");
    report_and_abort(&mut m)
}

/// Reports a sized free whose size does not match the block and aborts.
#[cold]
#[inline(never)]
pub fn size_mismatch(who: &str, ptr: *const u8, size: usize, block: usize) -> ! {
    let mut m = MsgBuf::new();
    m.str("rseq-malloc: ")
        .str(who)
        .str(": size ")
        .dec(size as u64)
        .str(" does not match the block 0x")
        .hex(ptr as usize as u64)
        .str(" of ")
        .dec(block as u64)
        .str(" bytes\n");
    report_and_abort(&mut m)
}

/// The kernel thread id of the caller (`gettid(2)`), never 0.
#[inline]
pub fn gettid() -> u32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// Rounds `v` up to a multiple of `align` (a power of two); `None` on overflow.
#[inline(always)]
pub const fn round_up(v: usize, align: usize) -> Option<usize> {
    match v.checked_add(align - 1) {
        Some(x) => Some(x & !(align - 1)),
        None => None,
    }
}

/// Whether this process image is valgrind's launcher (`valgrind`, Debian's
/// `valgrind.bin`) or the shell running Debian's `valgrind` wrapper script.
/// They run natively before exec'ing the tool that runs the program, and
/// inherit `LD_PRELOAD` and `RSEQ_MALLOC_CONF`: their `verbose=1` line (in
/// an rseq mode) would precede the program's own (`mode=cmpxchg`, valgrind
/// has no rseq). Reads `/proc/self/exe` and `/proc/self/cmdline` into stack
/// buffers; called once at init, only when there is something to print.
pub fn is_valgrind_launcher() -> bool {
    fn is_valgrind(path: &[u8]) -> bool {
        let base = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        base == b"valgrind" || base == b"valgrind.bin"
    }
    let mut buf = [0u8; 512];
    // SAFETY: the path is NUL-terminated; readlink writes at most
    // `buf.len()` bytes into `buf`.
    let n = unsafe {
        libc::readlink(
            c"/proc/self/exe".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n > 0 && is_valgrind(&buf[..n as usize]) {
        return true;
    }
    // A script's interpreter gets the shebang's option, if any, then the
    // script's path.
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/cmdline".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: reads at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    if n <= 0 {
        return false;
    }
    let mut args = buf[..n as usize].split(|&b| b == 0);
    let interp = args.next().unwrap_or(&[]);
    // Skip the shebang's option (`#!/bin/sh -e` on Debian).
    let script = args.find(|a| !a.starts_with(b"-")).unwrap_or(&[]);
    let interp_base = interp.rsplit(|&b| b == b'/').next().unwrap_or(interp);
    matches!(interp_base, b"sh" | b"dash" | b"bash") && is_valgrind(script)
}

/// Saves the calling thread's `errno` and puts it back when dropped: the
/// slow paths of `free` make system calls that can fail and set it (munmap
/// at the map-count limit, madvise, a contended lock's futex wait, rseq
/// registration of a new thread), and C `free` must leave `errno` alone
/// (glibc >= 2.33, POSIX 2024). Used only on cold paths, so the fast path
/// pays nothing.
pub struct ErrnoGuard {
    loc: *mut i32,
    saved: i32,
}

impl ErrnoGuard {
    /// Saves `errno`.
    #[inline]
    pub fn new() -> Self {
        // SAFETY: `__errno_location` returns this thread's errno slot, valid
        // for the thread's lifetime.
        let loc = unsafe { libc::__errno_location() };
        // SAFETY: as above.
        let saved = unsafe { *loc };
        ErrnoGuard { loc, saved }
    }
}

impl Default for ErrnoGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ErrnoGuard {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: `loc` is this thread's errno slot (a guard never leaves
        // the thread that made it: it is neither Send nor Sync).
        unsafe { *self.loc = self.saved };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgbuf_formats_numbers() {
        let mut m = MsgBuf::new();
        m.str("x=")
            .dec(0)
            .str(" ")
            .dec(1234567890)
            .str(" 0x")
            .hex(0xdead_beef);
        assert_eq!(m.as_bytes(), b"x=0 1234567890 0xdeadbeef");
        let mut m = MsgBuf::new();
        m.dec(u64::MAX).str(" ").hex(u64::MAX);
        assert_eq!(m.as_bytes(), b"18446744073709551615 ffffffffffffffff");
    }

    #[test]
    fn msgbuf_truncates() {
        let mut m = MsgBuf::new();
        for _ in 0..100 {
            m.str("0123456789");
        }
        assert_eq!(m.as_bytes().len(), 512);
    }

    #[test]
    fn round_up_works() {
        assert_eq!(round_up(0, 16), Some(0));
        assert_eq!(round_up(1, 16), Some(16));
        assert_eq!(round_up(16, 16), Some(16));
        assert_eq!(round_up(usize::MAX, 16), None);
    }
}

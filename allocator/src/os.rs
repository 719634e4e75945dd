//! The OS contract: every system call on memory goes through this module.
//!
//! - `reserve`: address space only (`PROT_NONE`, `MAP_NORESERVE`): costs no
//!   memory and no commit charge.
//! - `commit`: makes a prefix-growing range readable and writable
//!   (`mprotect`). Freshly committed pages read as zero.
//! - `release`: `madvise(MADV_DONTNEED)`: the pages stay mapped and writable,
//!   their memory goes back to the kernel, and they read as zero next time.
//! - `map` / `unmap` / `remap`: direct mappings for huge blocks and metadata.
//! - `map_chunk` / `map_at`: read-write `MAP_NORESERVE` heap chunks, 2 MiB
//!   aligned, anywhere or exactly next to the previous chunk;
//!   `advise_hugepage` / `thp_available`: transparent hugepages.
//!
//! All functions return `None`/`false` on failure and never panic.

use core::ptr::{self, NonNull};

/// The OS page size assumed for huge mappings (x86-64 and aarch64 with 4 KiB
/// pages; the value from `sysconf` is checked at init).
pub const OS_PAGE_BYTES: usize = 4096;

/// Maps `len` bytes of fresh zeroed anonymous memory with protection `prot`;
/// `noreserve` adds `MAP_NORESERVE`.
pub fn map(len: usize, prot: i32, noreserve: bool) -> Option<NonNull<u8>> {
    if len == 0 {
        return None;
    }
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    if noreserve {
        flags |= libc::MAP_NORESERVE;
    }
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing cannot alias any existing Rust object.
    let p = unsafe { libc::mmap(ptr::null_mut(), len, prot, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        return None;
    }
    NonNull::new(p.cast())
}

/// Maps `len` bytes aligned to `align` (a power of two >= OS page) by
/// over-mapping and trimming both ends.
pub fn map_aligned(len: usize, align: usize, prot: i32, noreserve: bool) -> Option<NonNull<u8>> {
    if align <= OS_PAGE_BYTES {
        return map(len, prot, noreserve);
    }
    let over = len.checked_add(align)?;
    let base = map(over, prot, noreserve)?.as_ptr() as usize;
    let start = (base + align - 1) & !(align - 1);
    let end = start + len;
    // SAFETY: both trimmed pieces are parts of the mapping we just created and
    // nothing points into them.
    unsafe {
        if start > base {
            libc::munmap(base as *mut _, start - base);
        }
        if base + over > end {
            libc::munmap(end as *mut _, base + over - end);
        }
    }
    NonNull::new(start as *mut u8)
}

/// Unmaps a range.
///
/// # Safety
/// `[p, p+len)` is a mapping (or part of one) created by this module that no
/// live reference points into.
pub unsafe fn unmap(p: *mut u8, len: usize) -> bool {
    // SAFETY: per the contract, nothing live points into the range.
    unsafe { libc::munmap(p.cast(), len) == 0 }
}

/// Grows or shrinks a mapping, moving it if needed (`mremap`).
///
/// # Safety
/// `[p, p+old_len)` is a whole mapping created by `map`/`map_aligned` and no
/// reference into it is used after a successful call.
pub unsafe fn remap(p: *mut u8, old_len: usize, new_len: usize) -> Option<NonNull<u8>> {
    // SAFETY: per the contract the mapping is ours and unreferenced.
    let q = unsafe { libc::mremap(p.cast(), old_len, new_len, libc::MREMAP_MAYMOVE) };
    if q == libc::MAP_FAILED {
        return None;
    }
    NonNull::new(q.cast())
}

/// Maps `len` bytes of fresh zeroed read-write memory (`MAP_NORESERVE`)
/// exactly at `addr`, failing (rather than replacing anything) if any part
/// of the range is in use (`MAP_FIXED_NOREPLACE`; a kernel that ignores the
/// flag and answers elsewhere is treated as a failure).
pub fn map_at(addr: usize, len: usize) -> Option<NonNull<u8>> {
    if len == 0 || addr == 0 {
        return None;
    }
    let flags =
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE;
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so
    // the new mapping cannot alias any existing Rust object.
    let p = unsafe {
        libc::mmap(
            addr as *mut _,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    if p as usize != addr {
        // SAFETY: an old kernel placed a fresh mapping elsewhere; it is ours
        // and unknown to anyone.
        unsafe { libc::munmap(p, len) };
        return None;
    }
    NonNull::new(p.cast())
}

/// Maps a heap chunk (or a page-map leaf): `len` bytes of zeroed read-write
/// memory (`MAP_NORESERVE`), aligned to `align` (a power of two). Tries an
/// exact-size mapping first (it is often aligned, and it needs no slack
/// under an address-space limit), then over-maps and trims.
pub fn map_chunk(len: usize, align: usize) -> Option<NonNull<u8>> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let p = map(len, prot, true)?;
    if (p.as_ptr() as usize).is_multiple_of(align) {
        return Some(p);
    }
    // SAFETY: the mapping was just made and nobody knows it.
    unsafe { unmap(p.as_ptr(), len) };
    map_aligned(len, align, prot, true)
}

/// Asks for transparent hugepages on `[p, p+len)` (`MADV_HUGEPAGE`);
/// false if the kernel refused (the range works as before).
///
/// # Safety
/// The range is a mapping of ours.
pub unsafe fn advise_hugepage(p: *mut u8, len: usize) -> bool {
    // SAFETY: madvise(MADV_HUGEPAGE) only changes how the kernel backs the
    // range; contents are unaffected.
    unsafe { libc::madvise(p.cast(), len, libc::MADV_HUGEPAGE) == 0 }
}

/// Whether the kernel would give transparent hugepages to a range advised
/// with `MADV_HUGEPAGE`: `/sys/kernel/mm/transparent_hugepage/enabled`
/// selects `[always]` or `[madvise]` (read with plain system calls, no
/// allocation).
pub fn thp_available() -> bool {
    let path = b"/sys/kernel/mm/transparent_hugepage/enabled\0";
    // SAFETY: a NUL-terminated path; the fd is closed below.
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    let mut buf = [0u8; 128];
    // SAFETY: reading into a stack buffer of the given length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if n <= 0 {
        return false;
    }
    let text = &buf[..n as usize];
    let has = |pat: &[u8]| text.windows(pat.len()).any(|w| w == pat);
    has(b"[always]") || has(b"[madvise]")
}

/// Reserves `len` bytes of address space aligned to `align` (PROT_NONE,
/// MAP_NORESERVE).
pub fn reserve(len: usize, align: usize) -> Option<NonNull<u8>> {
    map_aligned(len, align, libc::PROT_NONE, true)
}

/// Replaces `[p, p+len)` (inside a reservation) with an ordinary, accounted
/// read-write mapping. Unlike `mprotect`, the kernel's overcommit policy
/// applies: a block larger than the machine can back fails here (ENOMEM)
/// instead of succeeding and killing the process on first touch.
///
/// # Safety
/// The range is page aligned, lies inside a reservation made by `reserve`,
/// and holds nothing live.
pub unsafe fn commit_accounted(p: *mut u8, len: usize) -> bool {
    // SAFETY: per the contract the range is ours and unused; MAP_FIXED only
    // replaces our own reservation pages.
    let q = unsafe {
        libc::mmap(
            p.cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    q == p.cast()
}

/// Gives the memory of `[p, p+len)` back to the kernel; it reads as zero
/// afterwards. Returns false if the kernel refused.
///
/// # Safety
/// The range is committed, page aligned, and holds no live data.
pub unsafe fn release(p: *mut u8, len: usize) -> bool {
    // SAFETY: per the contract the range holds nothing we still need.
    unsafe { libc::madvise(p.cast(), len, libc::MADV_DONTNEED) == 0 }
}

/// The OS page size from `sysconf` (for the init check).
pub fn os_page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v <= 0 {
        OS_PAGE_BYTES
    } else {
        v as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_commit_release() {
        let len = 4 << 20;
        let p = reserve(len, 1 << 21).unwrap().as_ptr();
        assert_eq!(p as usize % (1 << 21), 0);
        // SAFETY: p is our reservation.
        unsafe {
            assert!(commit_accounted(p, 1 << 20));
            p.write_bytes(0xab, 1 << 20);
            assert_eq!(*p.add(12345), 0xab);
            assert!(release(p, 1 << 20));
            assert_eq!(*p.add(12345), 0);
            assert!(unmap(p, len));
        }
    }

    #[test]
    fn remap_keeps_contents() {
        let p = map(1 << 20, libc::PROT_READ | libc::PROT_WRITE, false)
            .unwrap()
            .as_ptr();
        // SAFETY: p is a fresh mapping of 1 MiB.
        unsafe {
            *p.add(100) = 7;
            let q = remap(p, 1 << 20, 8 << 20).unwrap().as_ptr();
            assert_eq!(*q.add(100), 7);
            assert!(unmap(q, 8 << 20));
        }
    }
}

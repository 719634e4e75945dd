//! Huge blocks: mapped directly with `mmap`, unmapped on free, grown with
//! `mremap`. A table of live huge blocks (open addressing, linear probing,
//! backward-shift deletion; lives in its own mapping, made at first use)
//! lets `free` recognise a huge block, and reject a foreign pointer or a
//! second free, without touching the pointer's memory.
//!
//! Invariants (table lock held): `count` = number of non-empty slots;
//! every live huge block appears exactly once, keyed by its start address;
//! each key sits in the probe run that starts at its hash slot.

use crate::lock::Mutex;
use crate::os;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Table slots (the kernel's default `vm.max_map_count` is 65 530, so more
/// huge blocks than this could not be mapped anyway).
pub const HUGE_TABLE_SLOTS: usize = 1 << 17;
const MAX_LOAD: usize = HUGE_TABLE_SLOTS / 10 * 9;

#[derive(Clone, Copy)]
struct Slot {
    addr: usize,
    len: usize,
}

struct Inner {
    slots: *mut Slot,
    count: usize,
}

// SAFETY: the slot array is only touched under the lock.
unsafe impl Send for Inner {}

/// The set of live huge blocks.
pub struct HugeTable {
    inner: Mutex<Inner>,
    bytes: AtomicUsize,
    count: AtomicUsize,
}

fn hash(addr: usize) -> usize {
    ((addr >> 12).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> (64 - 17)
}

impl HugeTable {
    /// An empty table (no mapping until the first insert).
    pub const fn new() -> Self {
        HugeTable {
            inner: Mutex::new(Inner {
                slots: core::ptr::null_mut(),
                count: 0,
            }),
            bytes: AtomicUsize::new(0),
            count: AtomicUsize::new(0),
        }
    }

    /// Bytes mapped for live huge blocks.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Number of live huge blocks.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The lock, for fork handling.
    pub fn raw_lock(&self) -> &crate::lock::RawLock {
        self.inner.raw()
    }

    fn slot(g: &mut Inner, i: usize) -> &mut Slot {
        // SAFETY: `slots` has HUGE_TABLE_SLOTS entries and `i` is reduced
        // modulo that; the caller holds the lock (it has `g` mutably).
        unsafe { &mut *g.slots.add(i & (HUGE_TABLE_SLOTS - 1)) }
    }

    fn get(g: &Inner, i: usize) -> Slot {
        // SAFETY: as in `slot`; a copy is read under the lock.
        unsafe { *g.slots.add(i & (HUGE_TABLE_SLOTS - 1)) }
    }

    /// Maps a huge block of at least `size` bytes aligned to `align`;
    /// returns it (fresh memory, reads as zero) or null.
    pub fn alloc(&self, size: usize, align: usize) -> *mut u8 {
        // At least one page: a zero-size request with a huge alignment
        // still gets a real, unique block.
        let Some(len) = crate::util::round_up(size.max(1), os::OS_PAGE_BYTES) else {
            return core::ptr::null_mut();
        };
        let p = if align <= os::OS_PAGE_BYTES {
            match os::map(len, libc::PROT_READ | libc::PROT_WRITE, false) {
                Some(p) => p.as_ptr(),
                None => return core::ptr::null_mut(),
            }
        } else {
            // Over-reserve address space only (no commit charge for the
            // alignment slack), then make the block itself accessible.
            let Some(p) = os::reserve(len, align) else {
                return core::ptr::null_mut();
            };
            let p = p.as_ptr();
            // SAFETY: `p` is our fresh reservation of `len` bytes. The block
            // is committed with an accounted mapping, so an impossible size
            // fails here as it would without the alignment.
            if !unsafe { os::commit_accounted(p, len) } {
                // SAFETY: nobody else knows the reservation.
                unsafe { os::unmap(p, len) };
                return core::ptr::null_mut();
            }
            p
        };
        if !self.insert(p as usize, len) {
            // SAFETY: we just mapped it and nobody else knows it.
            unsafe { os::unmap(p, len) };
            return core::ptr::null_mut();
        }
        p
    }

    fn insert(&self, addr: usize, len: usize) -> bool {
        let mut g = self.inner.lock();
        if g.slots.is_null() {
            match os::map(
                HUGE_TABLE_SLOTS * core::mem::size_of::<Slot>(),
                libc::PROT_READ | libc::PROT_WRITE,
                true,
            ) {
                Some(p) => g.slots = p.as_ptr().cast(),
                None => return false,
            }
        }
        if g.count >= MAX_LOAD {
            return false;
        }
        let mut i = hash(addr);
        while Self::get(&g, i).addr != 0 {
            i += 1;
        }
        *Self::slot(&mut g, i) = Slot { addr, len };
        g.count += 1;
        self.count.store(g.count, Ordering::Relaxed);
        self.bytes.fetch_add(len, Ordering::Relaxed);
        true
    }

    fn find(g: &Inner, addr: usize) -> Option<usize> {
        if g.slots.is_null() || addr == 0 {
            return None;
        }
        let mut i = hash(addr);
        loop {
            let s = Self::get(g, i);
            if s.addr == 0 {
                return None;
            }
            if s.addr == addr {
                return Some(i & (HUGE_TABLE_SLOTS - 1));
            }
            i += 1;
        }
    }

    /// The mapped length of the huge block starting at `addr`, if any.
    pub fn len_of(&self, addr: usize) -> Option<usize> {
        let g = self.inner.lock();
        Self::find(&g, addr).map(|i| Self::get(&g, i).len)
    }

    fn remove_at(g: &mut Inner, mut hole: usize) {
        *Self::slot(g, hole) = Slot { addr: 0, len: 0 };
        let mut i = hole + 1;
        loop {
            let s = Self::get(g, i);
            if s.addr == 0 {
                break;
            }
            let home = hash(s.addr);
            // Move `s` into the hole if its home is not in (hole, i].
            let dist_home = (i.wrapping_sub(home)) & (HUGE_TABLE_SLOTS - 1);
            let dist_hole = (i.wrapping_sub(hole)) & (HUGE_TABLE_SLOTS - 1);
            if dist_home >= dist_hole {
                *Self::slot(g, hole) = s;
                *Self::slot(g, i) = Slot { addr: 0, len: 0 };
                hole = i;
            }
            i += 1;
        }
        g.count -= 1;
    }

    /// Unmaps the huge block at `addr`; false if there is none (foreign or
    /// already freed pointer).
    ///
    /// # Safety
    /// If `addr` is a live huge block, the caller owns it and will not use it
    /// again.
    pub unsafe fn free(&self, addr: usize) -> bool {
        let len = {
            let mut g = self.inner.lock();
            let Some(i) = Self::find(&g, addr) else {
                return false;
            };
            let len = Self::get(&g, i).len;
            Self::remove_at(&mut g, i);
            self.count.store(g.count, Ordering::Relaxed);
            len
        };
        self.bytes.fetch_sub(len, Ordering::Relaxed);
        // SAFETY: the block was ours and is now unknown to the table; the
        // caller gave up its ownership.
        unsafe { os::unmap(addr as *mut u8, len) };
        true
    }

    /// Resizes a huge block with `mremap` (may move it, keeping only OS-page
    /// alignment). Returns the new address, or null if the kernel refused
    /// (the block is then untouched).
    ///
    /// # Safety
    /// `addr` is a live huge block owned by the caller, who uses only the
    /// returned address afterwards on success.
    pub unsafe fn resize(&self, addr: usize, new_size: usize) -> *mut u8 {
        let Some(new_len) = crate::util::round_up(new_size, os::OS_PAGE_BYTES) else {
            return core::ptr::null_mut();
        };
        let mut g = self.inner.lock();
        let Some(i) = Self::find(&g, addr) else {
            return core::ptr::null_mut();
        };
        let old_len = Self::get(&g, i).len;
        // SAFETY: the whole mapping is the caller's block; the lock keeps the
        // table consistent with it.
        let Some(q) = (unsafe { os::remap(addr as *mut u8, old_len, new_len) }) else {
            return core::ptr::null_mut();
        };
        let q = q.as_ptr();
        if q as usize == addr {
            Self::slot(&mut g, i).len = new_len;
        } else {
            Self::remove_at(&mut g, i);
            let mut j = hash(q as usize);
            while Self::get(&g, j).addr != 0 {
                j += 1;
            }
            *Self::slot(&mut g, j) = Slot {
                addr: q as usize,
                len: new_len,
            };
            g.count += 1;
        }
        self.bytes.fetch_add(new_len, Ordering::Relaxed);
        self.bytes.fetch_sub(old_len, Ordering::Relaxed);
        q
    }

    /// Checks the table invariants (debug builds).
    pub fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let g = self.inner.lock();
        if g.slots.is_null() {
            assert_eq!(g.count, 0);
            return;
        }
        let mut n = 0;
        for i in 0..HUGE_TABLE_SLOTS {
            let s = Self::get(&g, i);
            if s.addr != 0 {
                n += 1;
                assert_eq!(Self::find(&g, s.addr), Some(i));
            }
        }
        assert_eq!(n, g.count);
    }
}

impl Default for HugeTable {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_resize() {
        let t = std::boxed::Box::leak(std::boxed::Box::new(HugeTable::new()));
        let mut v = std::vec::Vec::new();
        for i in 0..200 {
            let align = if i % 3 == 0 { 1 << 21 } else { 4096 };
            let p = t.alloc((1 << 20) + i * 100, align);
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0);
            // SAFETY: fresh mapping of that size.
            unsafe { p.write_bytes(i as u8, 1 << 20) };
            v.push(p);
        }
        t.check_invariants();
        assert_eq!(t.count(), 200);
        // SAFETY: a foreign address is not in the table.
        assert!(!unsafe { t.free(0x1000) });
        for (i, p) in v.iter_mut().enumerate() {
            if i % 2 == 0 {
                // SAFETY: the block is ours.
                let q = unsafe { t.resize(*p as usize, 3 << 20) };
                assert!(!q.is_null());
                // SAFETY: contents kept by mremap.
                assert_eq!(unsafe { *q.add(1000) }, i as u8);
                *p = q;
            }
        }
        t.check_invariants();
        for (i, &p) in v.iter().enumerate() {
            if i % 3 != 1 {
                // SAFETY: ours, freed once.
                assert!(unsafe { t.free(p as usize) });
            }
        }
        t.check_invariants();
        for (i, &p) in v.iter().enumerate() {
            if i % 3 != 1 {
                // SAFETY: a second free is detected and does nothing.
                assert!(!unsafe { t.free(p as usize) });
            } else {
                assert!(t.len_of(p as usize).is_some());
            }
        }
        t.check_invariants();
    }
}

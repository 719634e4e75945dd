//! Page map: heap page -> span id, in O(1) with lock-free reads.
//!
//! A flat array of `AtomicU64`, one entry per page of the heap reservation,
//! itself living in the reservation (committed together with the pages it
//! describes). A pointer outside `[base, base + limit * PAGE_BYTES)` is not
//! ours; inside, an entry whose span id is 0 means "no live span here".
//!
//! Entry layout: bits 0..32 span id; for pages of a span of small objects,
//! bits 32..40 the page's index inside its span and bits 40..48 the size
//! class (0 for every other page), bits 48..63 the page's object-start
//! limit (see `small_offset`). `free(ptr)` reads one entry and, for a small
//! object, needs no span record to find and validate its class.
//!
//! Invariants (writers hold the page-heap lock):
//! - every page of a span in use (small or large) maps to that span's id;
//! - a free span maps only its first and last page to its id (for
//!   coalescing); its other pages map to 0;
//! - pages never handed out map to 0.
//!
//! Readers (`free`, `usable_size`) load with `Acquire`; writers store with
//! `Release` after filling the span's fields, so a reader that sees an id
//! sees the span it describes.

use crate::size_class::{PAGE_BYTES, PAGE_SHIFT};
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Id of a span in the span arena (never 0 for a real span).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SpanId(pub u32);

/// Bits 48..62 of a small-object page entry: how many bytes at the start of
/// the page may hold an object start (`PAGE_BYTES` for every page but the
/// span's last ones, less where the tail waste begins).
const LIMIT_SHIFT: u32 = 48;
const LIMIT_MASK: u64 = 0x7fff;

/// The page map. Inert (everything foreign) until `init`.
pub struct PageMap {
    base: AtomicUsize,
    npages: AtomicUsize,
    /// Pages whose entries are committed (`<= npages`); lookups beyond are
    /// answered "not ours" without reading the (uncommitted) entry.
    limit: AtomicUsize,
    entries: AtomicPtr<AtomicU64>,
}

impl PageMap {
    /// An inert page map.
    pub const fn new() -> Self {
        PageMap {
            base: AtomicUsize::new(0),
            npages: AtomicUsize::new(0),
            limit: AtomicUsize::new(0),
            entries: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// Sets the heap range and the entry array.
    ///
    /// # Safety
    /// `entries` points to `npages` zeroed `u64`s that outlive `self`, of
    /// which the first `limit` are committed (see `set_limit`); called once,
    /// before any other thread can reach this map.
    pub unsafe fn init(&self, base: usize, npages: usize, entries: *mut u64) {
        self.entries.store(entries.cast(), Ordering::Relaxed);
        self.npages.store(npages, Ordering::Relaxed);
        self.base.store(base, Ordering::Release);
    }

    /// The heap base address (0 before init).
    #[inline(always)]
    pub fn base(&self) -> usize {
        self.base.load(Ordering::Relaxed)
    }

    /// Pages covered.
    #[inline(always)]
    pub fn npages(&self) -> usize {
        self.npages.load(Ordering::Relaxed)
    }

    /// Raises the number of pages whose entries are committed.
    ///
    /// # Safety
    /// Entries `[0, limit)` are committed (readable and writable) memory.
    pub unsafe fn set_limit(&self, limit: usize) {
        debug_assert!(limit <= self.npages());
        self.limit.store(limit, Ordering::Release);
    }

    /// The page index of `addr` if it lies inside the part of the heap
    /// reservation in use so far (the pages whose entries are committed).
    #[inline(always)]
    pub fn page_of(&self, addr: usize) -> Option<usize> {
        let off = addr.wrapping_sub(self.base.load(Ordering::Acquire));
        let page = off >> PAGE_SHIFT;
        if page < self.limit.load(Ordering::Acquire) {
            Some(page)
        } else {
            None
        }
    }

    /// Address of page `page`.
    #[inline(always)]
    pub fn page_addr(&self, page: usize) -> usize {
        self.base() + (page << PAGE_SHIFT)
    }

    #[inline(always)]
    fn entry(&self, page: usize) -> &AtomicU64 {
        debug_assert!(page < self.limit.load(Ordering::Relaxed));
        // SAFETY: `page < limit` (callers get pages from `page_of` or from
        // spans, which lie below the heap's commit mark = limit), and
        // entries below `limit` are committed.
        unsafe { &*self.entries.load(Ordering::Relaxed).add(page) }
    }

    /// The span id at `page` (0 = none).
    #[inline(always)]
    pub fn get(&self, page: usize) -> u32 {
        self.entry(page).load(Ordering::Acquire) as u32
    }

    /// The whole entry at `page` (see the module doc for the layout).
    #[inline(always)]
    pub fn get_raw(&self, page: usize) -> u64 {
        self.entry(page).load(Ordering::Acquire)
    }

    /// Sets one entry to a span id, without small-object data (page-heap
    /// lock held).
    #[inline]
    pub fn set(&self, page: usize, id: u32) {
        self.entry(page).store(id as u64, Ordering::Release)
    }

    /// Sets `n` entries starting at `page` (page-heap lock held).
    pub fn set_range(&self, page: usize, n: usize, id: u32) {
        for p in page..page + n {
            self.set(p, id);
        }
    }

    /// Sets the `n` entries of a span of small objects of class `class`
    /// (`n <= 255`; page-heap lock held).
    pub fn set_small_range(&self, page: usize, n: usize, id: u32, class: u8) {
        debug_assert!(n <= 255 && class != 0);
        let c = crate::size_class::SizeClass::from_index(class as usize);
        let (size, objs) = c.map_or((0, 0), |c| (c.size_bytes(), c.objects_per_span()));
        // Offset of the last object start in the span.
        let last = (objs.max(1) - 1) * size;
        for i in 0..n {
            let lo = i << PAGE_SHIFT;
            let lim = if objs == 0 || last < lo {
                0
            } else {
                (last - lo + 1).min(PAGE_BYTES)
            };
            let e = id as u64
                | ((i as u64) << 32)
                | ((class as u64) << 40)
                | ((lim as u64) << LIMIT_SHIFT);
            self.entry(page + i).store(e, Ordering::Release);
        }
    }

    /// The entry of the page holding `addr`, or 0 when `addr` is not in the
    /// heap (null and foreign pointers included): at most the loads of
    /// `page_of` plus one.
    #[inline(always)]
    pub fn lookup(&self, addr: usize) -> u64 {
        match self.page_of(addr) {
            Some(page) => self.get_raw(page),
            None => 0,
        }
    }

    /// The class index of a raw entry (0: not a small-object page).
    #[inline(always)]
    pub const fn entry_class(entry: u64) -> usize {
        ((entry >> 40) & 0xff) as usize
    }

    /// For a small-object page entry: the offset of `addr` from its span's
    /// start if an object of the span may start at `addr`'s position in the
    /// page (before the page's limit, which excludes the span's tail waste),
    /// else `None`. Divisibility by the object size is the caller's check.
    #[inline(always)]
    pub const fn small_offset(entry: u64, addr: usize) -> Option<usize> {
        let in_page = addr & (PAGE_BYTES - 1);
        let lim = ((entry >> LIMIT_SHIFT) & LIMIT_MASK) as usize;
        if in_page < lim {
            Some(((((entry >> 32) & 0xff) as usize) << PAGE_SHIFT) | in_page)
        } else {
            None
        }
    }

    /// Splits a raw entry into (class, page index inside the span); class 0
    /// means "not a page of small objects".
    #[inline(always)]
    pub fn small_of(entry: u64) -> (usize, usize) {
        (
            ((entry >> 40) & 0xff) as usize,
            ((entry >> 32) & 0xff) as usize,
        )
    }

    /// Bytes of entry array needed for `npages` pages.
    pub const fn bytes_for(npages: usize) -> usize {
        npages * 8
    }
}

impl Default for PageMap {
    fn default() -> Self {
        Self::new()
    }
}

/// Size of an allocator page (re-export for users of this module).
pub const PAGE: usize = PAGE_BYTES;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_and_ours() {
        let mut entries = vec![0u64; 16];
        let pm = PageMap::new();
        assert_eq!(pm.page_of(0x1234), None);
        let base = 1usize << 30;
        // SAFETY: the vec outlives pm within this test.
        unsafe { pm.init(base, 16, entries.as_mut_ptr()) };
        assert_eq!(pm.page_of(base), None, "nothing committed yet");
        // SAFETY: all 16 entries exist in the vec.
        unsafe { pm.set_limit(16) };
        assert_eq!(pm.page_of(base - 1), None);
        assert_eq!(pm.page_of(base), Some(0));
        assert_eq!(pm.page_of(base + PAGE * 16 - 1), Some(15));
        assert_eq!(pm.page_of(base + PAGE * 16), None);
        assert_eq!(pm.page_of(0), None);
        pm.set_range(3, 4, 9);
        assert_eq!(pm.get(2), 0);
        assert_eq!(pm.get(3), 9);
        assert_eq!(pm.get(6), 9);
        assert_eq!(pm.get(7), 0);
        assert_eq!(pm.page_addr(2), base + 2 * PAGE);
        pm.set_small_range(8, 3, 5, 17);
        assert_eq!(pm.get(9), 5);
        assert_eq!(PageMap::small_of(pm.get_raw(9)), (17, 1));
        assert_eq!(PageMap::small_of(pm.get_raw(3)), (0, 0));
    }
}

//! The page heap: hands out spans (runs of pages) from one big reservation,
//! coalesces freed spans, and gives free pages back to the OS.
//!
//! Layout of the reservation (one `mmap`, PROT_NONE, MAP_NORESERVE):
//! `[ heap pages | page-map entries | span records ]`. The heap grows by
//! moving `top` up; pages below `committed` are readable and writable. The
//! page-map entries and span records are committed alongside.
//!
//! Free spans sit in 128 lists: list `n` (1..=127) holds spans of exactly `n`
//! pages, list 128 holds spans of 128 pages or more (searched best-fit).
//! Allocation takes the first span of the smallest non-empty exact list that
//! fits (then best fit among the big ones), else grows `top`.
//!
//! Release policy (see [`crate::decay`]): a free span is "dirty" if it may
//! hold resident pages; it carries the time its oldest dirty part became
//! free. Dirty free spans unused for `decay_ms` are released
//! (`madvise(MADV_DONTNEED)`) by the decay pass (`decay`), which allocator
//! activity or the background thread runs; `decay_ms=0` releases a span as
//! soon as it is freed, `-1` never; `trim()` releases them all. Released
//! pages read as zero, which lets `alloc_zeroed` skip its memset on a span
//! made only of such pages.
//!
//! Invariants (checked by `check_invariants`, page-heap lock held):
//! - the spans tile `[0, top)`: walking from page 0 by `npages` visits every
//!   span once and ends exactly at `top`;
//! - no two free spans are adjacent (coalescing is complete);
//! - a free span is on the list for its length, and the page map holds its id
//!   at its first and last page (its inner pages map to 0);
//! - `free_pages` / `free_dirty_pages` equal the sums over free spans, and
//!   `dirty_pages <= npages` for each.

use crate::lock::Mutex;
use crate::os;
use crate::pagemap::PageMap;
use crate::size_class::PAGE_SHIFT;
use crate::span::{Span, FREE, LARGE, SMALL, SPAN_RECORD_BYTES, UNUSED};
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Heap pages are committed in chunks of this many bytes.
const COMMIT_CHUNK_BYTES: usize = 2 << 20;
const NLISTS: usize = 129;
const BIG_LIST: usize = 128;

struct Inner {
    /// Pages `[0, top)` belong to spans (free or used).
    top: usize,
    /// Pages `[0, committed)` are readable and writable.
    committed: usize,
    total_pages: usize,
    /// Bytes of page-map entries committed.
    map_committed_bytes: usize,
    map_entries: usize,
    /// Span records: `[1, rec_next)` were handed out; `rec_committed` committed.
    rec_base: usize,
    rec_next: usize,
    rec_committed: usize,
    rec_capacity: usize,
    /// Head of the list of unused records (linked through `Locked::next`).
    rec_free: u32,
    lists: [u32; NLISTS],
    free_pages: usize,
    free_dirty_pages: usize,
}

/// The page heap. A `const` inert value; `init` maps the reservation.
pub struct PageHeap {
    /// Page -> span id (lock-free reads).
    pub map: PageMap,
    records: AtomicPtr<Span>,
    inner: Mutex<Inner>,
    // Statistics, updated under the lock, read racily.
    committed_bytes: AtomicUsize,
    free_bytes: AtomicUsize,
    free_dirty_bytes: AtomicUsize,
    small_bytes: AtomicUsize,
    large_bytes: AtomicUsize,
    released_total_bytes: AtomicUsize,
}

/// A statistics snapshot of the page heap.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeapStats {
    /// Heap bytes committed (mprotected read-write).
    pub committed_bytes: usize,
    /// Bytes in free spans.
    pub free_bytes: usize,
    /// Bytes in free spans that may be resident.
    pub free_dirty_bytes: usize,
    /// Bytes in spans of small objects.
    pub small_bytes: usize,
    /// Bytes in large blocks in use.
    pub large_bytes: usize,
    /// Bytes given back with madvise so far (cumulative).
    pub released_total_bytes: usize,
}

impl PageHeap {
    /// An inert heap: every pointer is foreign, every allocation fails.
    pub const fn new() -> Self {
        PageHeap {
            map: PageMap::new(),
            records: AtomicPtr::new(core::ptr::null_mut()),
            inner: Mutex::new(Inner {
                top: 0,
                committed: 0,
                total_pages: 0,
                map_committed_bytes: 0,
                map_entries: 0,
                rec_base: 0,
                rec_next: 1,
                rec_committed: 0,
                rec_capacity: 0,
                rec_free: 0,
                lists: [0; NLISTS],
                free_pages: 0,
                free_dirty_pages: 0,
            }),
            committed_bytes: AtomicUsize::new(0),
            free_bytes: AtomicUsize::new(0),
            free_dirty_bytes: AtomicUsize::new(0),
            small_bytes: AtomicUsize::new(0),
            large_bytes: AtomicUsize::new(0),
            released_total_bytes: AtomicUsize::new(0),
        }
    }

    /// Reserves address space for a heap of up to `heap_bytes` (tries smaller
    /// sizes, halving down to 256 MiB, if the kernel refuses). Returns false
    /// if no reservation could be made. Must be called once, before use.
    pub fn init(&self, heap_bytes: usize) -> bool {
        let mut want = heap_bytes;
        while want >= 256 << 20 {
            if self.try_init(want) {
                return true;
            }
            want /= 2;
        }
        false
    }

    fn try_init(&self, heap_bytes: usize) -> bool {
        let npages = heap_bytes >> PAGE_SHIFT;
        let map_bytes =
            (PageMap::bytes_for(npages) + COMMIT_CHUNK_BYTES - 1) & !(COMMIT_CHUNK_BYTES - 1);
        let rec_capacity = npages + 2;
        let rec_bytes =
            (rec_capacity * SPAN_RECORD_BYTES + COMMIT_CHUNK_BYTES - 1) & !(COMMIT_CHUNK_BYTES - 1);
        let total = heap_bytes + map_bytes + rec_bytes;
        let Some(base) = os::reserve(total, COMMIT_CHUNK_BYTES) else {
            return false;
        };
        let base = base.as_ptr() as usize;
        let map_base = base + heap_bytes;
        let rec_base = map_base + map_bytes;
        let mut g = self.inner.lock();
        g.total_pages = npages;
        g.map_entries = map_base;
        g.rec_base = rec_base;
        g.rec_capacity = rec_capacity;
        self.records.store(rec_base as *mut Span, Ordering::Release);
        // SAFETY: the entry array lies in our fresh reservation (zero once
        // committed); entries are committed before the pages they describe
        // become part of a span (`grow`), and nobody else sees this heap
        // before `init` returns.
        unsafe { self.map.init(base, npages, map_base as *mut u64) };
        true
    }

    /// The span record with id `id`.
    #[inline(always)]
    pub fn record(&self, id: u32) -> &Span {
        // SAFETY: ids come from the page map or lists and are always below
        // `rec_next`, so the record is committed and initialised; records are
        // never unmapped.
        unsafe { &*self.records.load(Ordering::Relaxed).add(id as usize) }
    }

    /// The span containing `addr`, if `addr` is inside the heap and a span
    /// in use or a free span's end page covers it (lock-free).
    #[inline(always)]
    pub fn span_of(&self, addr: usize) -> Option<&Span> {
        let page = self.map.page_of(addr)?;
        let id = self.map.get(page);
        if id == 0 {
            None
        } else {
            Some(self.record(id))
        }
    }

    /// Address of the first byte of a span.
    #[inline(always)]
    pub fn span_addr(&self, s: &Span) -> usize {
        self.map.page_addr(s.start())
    }

    /// Allocates a span of `npages` whose start is aligned to `align_bytes`
    /// (a power of two; <= PAGE_BYTES means no constraint), in state SMALL
    /// (with `class`) or LARGE. Returns the span and whether all its pages
    /// are known to read as zero.
    pub fn alloc_span(
        &self,
        npages: usize,
        align_bytes: usize,
        state: u8,
        class: u8,
    ) -> Option<(&Span, bool)> {
        debug_assert!(state == SMALL || state == LARGE);
        if npages == 0 || npages > u32::MAX as usize / 2 {
            return None;
        }
        let align_pages = (align_bytes >> PAGE_SHIFT).max(1);
        let need = npages.checked_add(align_pages - 1)?;
        let mut g = self.inner.lock();
        let (start, len, dirty, since) = match self.take_free(&mut g, need) {
            Some(r) => r,
            None => {
                let (start, len, dirty) = self.grow(&mut g, need)?;
                (start, len, dirty, 0)
            }
        };
        // Place the span at the first aligned page inside [start, start+len).
        let base_addr = self.map.base();
        let addr = base_addr + (start << PAGE_SHIFT);
        let align = align_pages << PAGE_SHIFT;
        let aligned_addr = (addr + align - 1) & !(align - 1);
        let front = (aligned_addr - addr) >> PAGE_SHIFT;
        let back = len - front - npages;
        let Some(id) = self.new_record(&mut g) else {
            // Put everything back as one free span.
            self.insert_free(&mut g, start, len, dirty, since, 0);
            return None;
        };
        if front > 0 {
            self.insert_free(&mut g, start, front, dirty.min(front), since, 0);
        }
        if back > 0 {
            let d = dirty.min(back);
            self.insert_free(&mut g, start + front + npages, back, d, since, 0);
        }
        let s = self.record(id);
        s.start_page
            .store((start + front) as u32, Ordering::Relaxed);
        s.npages.store(npages as u32, Ordering::Relaxed);
        s.class.store(class, Ordering::Relaxed);
        s.state.store(state, Ordering::Relaxed);
        // SAFETY: the page-heap lock is held and the span is not yet visible.
        let l = unsafe { s.locked() };
        l.prev = 0;
        l.next = 0;
        l.dirty_pages = 0;
        l.freelist = core::ptr::null_mut();
        l.allocated = 0;
        l.carved = 0;
        l.on_list = false;
        if state == SMALL && npages <= 255 {
            self.map.set_small_range(start + front, npages, id, class);
        } else {
            self.map.set_range(start + front, npages, id);
        }
        let bytes = npages << PAGE_SHIFT;
        if state == SMALL {
            self.small_bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
            self.large_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        self.publish(&g);
        drop(g);
        crate::decay::tick_locked();
        Some((s, dirty == 0))
    }

    /// Returns a span in use (SMALL or LARGE) to the heap.
    ///
    /// # Safety
    /// `s` is a span in use returned by `alloc_span` of this heap, and nothing
    /// will use its memory or record again (the caller owns it: a LARGE block
    /// being freed by its owner, or a SMALL span whose objects all came back,
    /// under its central lock).
    pub unsafe fn free_span(&self, s: &Span) {
        let mut g = self.inner.lock();
        let start = s.start();
        let n = s.pages();
        let bytes = n << PAGE_SHIFT;
        if s.state() == SMALL {
            self.small_bytes.fetch_sub(bytes, Ordering::Relaxed);
        } else {
            self.large_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
        self.map.set_range(start, n, 0);
        let id = self.id_of(s);
        self.insert_dirty(&mut g, start, n, id);
        self.publish(&g);
        drop(g);
        crate::decay::tick_locked();
    }

    /// Inserts a just-freed (dirty) range stamped now; releases it at once
    /// with `decay_ms=0`.
    fn insert_dirty(&self, g: &mut Inner, start: usize, n: usize, id: u32) {
        if !crate::decay::keeps() {
            let id = self.insert_free(g, start, n, n, 0, id);
            if id != 0 {
                self.release_span(g, id);
            }
            return;
        }
        let now = crate::decay::now_ms();
        self.insert_free(g, start, n, n, now as u32, id);
        crate::decay::note_dirty(now);
    }

    /// Resizes a LARGE span in place to `new_pages`: shrinking gives the tail
    /// back; growing takes pages from the free span that follows it (or from
    /// the top of the heap). Returns false, changing nothing, if the pages
    /// after the span are not free.
    ///
    /// # Safety
    /// `s` is a LARGE span of this heap owned by the caller (a live block).
    pub unsafe fn resize_large(&self, s: &Span, new_pages: usize) -> bool {
        if new_pages == 0 || new_pages > u32::MAX as usize / 2 {
            return false;
        }
        let mut g = self.inner.lock();
        let start = s.start();
        let n = s.pages();
        let id = self.id_of(s);
        if new_pages <= n {
            if new_pages < n {
                let tail = n - new_pages;
                s.npages.store(new_pages as u32, Ordering::Relaxed);
                self.map.set_range(start + new_pages, tail, 0);
                self.large_bytes
                    .fetch_sub(tail << PAGE_SHIFT, Ordering::Relaxed);
                self.insert_dirty(&mut g, start + new_pages, tail, 0);
                self.publish(&g);
            }
            return true;
        }
        let end = start + n;
        let need = new_pages - n;
        if end == g.top {
            if self.grow(&mut g, need).is_none() {
                return false;
            }
        } else {
            let rid = self.map.get(end);
            if rid == 0 {
                return false;
            }
            let r = self.record(rid);
            if r.state() != FREE || r.pages() < need {
                return false;
            }
            debug_assert_eq!(r.start(), end);
            let rn = r.pages();
            self.remove_list(&mut g, rid);
            let (rd, rsince) = {
                // SAFETY: page-heap lock held; r is FREE.
                let l = unsafe { r.locked() };
                (l.dirty_pages as usize, l.free_since)
            };
            self.map.set(end, 0);
            self.map.set(end + rn - 1, 0);
            g.free_pages -= rn;
            g.free_dirty_pages -= rd;
            self.drop_record(&mut g, rid);
            if rn > need {
                let rest = rn - need;
                self.insert_free(&mut g, end + need, rest, rd.min(rest), rsince, 0);
            }
        }
        s.npages.store(new_pages as u32, Ordering::Relaxed);
        self.map.set_range(end, need, id);
        self.large_bytes
            .fetch_add(need << PAGE_SHIFT, Ordering::Relaxed);
        self.publish(&g);
        true
    }

    /// Releases every dirty free span to the OS; returns the bytes released.
    pub fn release_all(&self) -> usize {
        let mut g = self.inner.lock();
        let r = self.release_down_to(&mut g, 0);
        self.publish(&g);
        r << PAGE_SHIFT
    }

    /// Statistics snapshot (racy, no lock).
    pub fn stats(&self) -> HeapStats {
        HeapStats {
            committed_bytes: self.committed_bytes.load(Ordering::Relaxed),
            free_bytes: self.free_bytes.load(Ordering::Relaxed),
            free_dirty_bytes: self.free_dirty_bytes.load(Ordering::Relaxed),
            small_bytes: self.small_bytes.load(Ordering::Relaxed),
            large_bytes: self.large_bytes.load(Ordering::Relaxed),
            released_total_bytes: self.released_total_bytes.load(Ordering::Relaxed),
        }
    }

    /// The lock, for fork handling.
    pub fn raw_lock(&self) -> &crate::lock::RawLock {
        self.inner.raw()
    }

    fn publish(&self, g: &Inner) {
        self.committed_bytes
            .store(g.committed << PAGE_SHIFT, Ordering::Relaxed);
        self.free_bytes
            .store(g.free_pages << PAGE_SHIFT, Ordering::Relaxed);
        self.free_dirty_bytes
            .store(g.free_dirty_pages << PAGE_SHIFT, Ordering::Relaxed);
    }

    fn id_of(&self, s: &Span) -> u32 {
        let base = self.records.load(Ordering::Relaxed) as usize;
        ((s as *const Span as usize - base) / SPAN_RECORD_BYTES) as u32
    }

    fn list_of(n: usize) -> usize {
        n.min(BIG_LIST)
    }

    fn push_list(&self, g: &mut Inner, id: u32) {
        let s = self.record(id);
        let li = Self::list_of(s.pages());
        let head = g.lists[li];
        // SAFETY: page-heap lock held (g); s is FREE.
        let l = unsafe { s.locked() };
        l.prev = 0;
        l.next = head;
        if head != 0 {
            // SAFETY: page-heap lock held; head is a FREE span.
            unsafe { self.record(head).locked() }.prev = id;
        }
        g.lists[li] = id;
    }

    fn remove_list(&self, g: &mut Inner, id: u32) {
        let s = self.record(id);
        let li = Self::list_of(s.pages());
        let (prev, next) = {
            // SAFETY: page-heap lock held; s is FREE.
            let l = unsafe { s.locked() };
            (l.prev, l.next)
        };
        if prev != 0 {
            // SAFETY: page-heap lock held; prev is a FREE span on this list.
            unsafe { self.record(prev).locked() }.next = next;
        } else {
            g.lists[li] = next;
        }
        if next != 0 {
            // SAFETY: as above for next.
            unsafe { self.record(next).locked() }.prev = prev;
        }
    }

    /// Removes a free span of at least `need` pages from the lists; returns
    /// (start, len, dirty, free_since) with its record recycled and its map
    /// ends cleared.
    fn take_free(&self, g: &mut Inner, need: usize) -> Option<(usize, usize, usize, u32)> {
        let mut found = 0u32;
        for li in need.min(BIG_LIST)..BIG_LIST {
            if g.lists[li] != 0 {
                found = g.lists[li];
                break;
            }
        }
        if found == 0 {
            // Best fit among the big spans.
            let mut best_len = usize::MAX;
            let mut id = g.lists[BIG_LIST];
            while id != 0 {
                let s = self.record(id);
                let n = s.pages();
                if n >= need && n < best_len {
                    best_len = n;
                    found = id;
                }
                // SAFETY: page-heap lock held; s is FREE.
                id = unsafe { s.locked() }.next;
            }
        }
        if found == 0 {
            return None;
        }
        self.remove_list(g, found);
        let s = self.record(found);
        let (start, n) = (s.start(), s.pages());
        let (dirty, since) = {
            // SAFETY: page-heap lock held; s is FREE.
            let l = unsafe { s.locked() };
            (l.dirty_pages as usize, l.free_since)
        };
        self.map.set(start, 0);
        self.map.set(start + n - 1, 0);
        g.free_pages -= n;
        g.free_dirty_pages -= dirty;
        self.drop_record(g, found);
        Some((start, n, dirty, since))
    }

    /// Extends `top` by `need` pages (committing as needed); returns
    /// (start, len, dirty = 0).
    fn grow(&self, g: &mut Inner, need: usize) -> Option<(usize, usize, usize)> {
        let start = g.top;
        let end = start.checked_add(need)?;
        if end > g.total_pages {
            return None;
        }
        if end > g.committed {
            let chunk = COMMIT_CHUNK_BYTES >> PAGE_SHIFT;
            let new_committed = (end.div_ceil(chunk) * chunk).min(g.total_pages);
            let from = self.map.page_addr(g.committed) as *mut u8;
            let len = (new_committed - g.committed) << PAGE_SHIFT;
            // SAFETY: the range is inside our reservation, above the commit
            // mark, so uncommitted and unused.
            if !unsafe { os::commit(from, len) } {
                return None;
            }
            // Commit the page-map entries covering the new pages.
            let map_need = (PageMap::bytes_for(new_committed) + os::OS_PAGE_BYTES - 1)
                & !(os::OS_PAGE_BYTES - 1);
            if map_need > g.map_committed_bytes {
                let p = (g.map_entries + g.map_committed_bytes) as *mut u8;
                // SAFETY: inside the page-map part of our reservation, above
                // its commit mark.
                if !unsafe { os::commit(p, map_need - g.map_committed_bytes) } {
                    return None;
                }
                g.map_committed_bytes = map_need;
            }
            g.committed = new_committed;
            // SAFETY: entries for pages below `new_committed` were committed
            // just above (or earlier).
            unsafe { self.map.set_limit(new_committed) };
        }
        g.top = end;
        Some((start, need, 0))
    }

    fn new_record(&self, g: &mut Inner) -> Option<u32> {
        if g.rec_free != 0 {
            let id = g.rec_free;
            // SAFETY: page-heap lock held; unused records belong to the heap.
            g.rec_free = unsafe { self.record(id).locked() }.next;
            return Some(id);
        }
        if g.rec_next >= g.rec_capacity {
            return None;
        }
        let id = g.rec_next;
        let need_bytes = (id + 1) * SPAN_RECORD_BYTES;
        if need_bytes > g.rec_committed {
            let new_c = (need_bytes + (64 << 10) - 1) & !((64 << 10) - 1);
            let p = (g.rec_base + g.rec_committed) as *mut u8;
            // SAFETY: inside the record part of our reservation, above its
            // commit mark.
            if !unsafe { os::commit(p, new_c - g.rec_committed) } {
                return None;
            }
            g.rec_committed = new_c;
        }
        g.rec_next += 1;
        Some(id as u32)
    }

    fn drop_record(&self, g: &mut Inner, id: u32) {
        let s = self.record(id);
        s.state.store(UNUSED, Ordering::Relaxed);
        s.class.store(0, Ordering::Relaxed);
        // SAFETY: page-heap lock held; the record is being retired.
        unsafe { s.locked() }.next = g.rec_free;
        g.rec_free = id;
    }

    /// Inserts the free range `[start, start+n)` with `dirty` possibly
    /// resident pages stamped `since` (see `Locked::free_since`), coalescing
    /// with free neighbours (the result keeps the oldest dirty stamp). `id`
    /// is a record to reuse (0 = take a new one). Returns the free span's id
    /// (0 if no record was left).
    fn insert_free(
        &self,
        g: &mut Inner,
        mut start: usize,
        mut n: usize,
        mut dirty: usize,
        mut since: u32,
        id: u32,
    ) -> u32 {
        // Left neighbour.
        if start > 0 {
            let lid = self.map.get(start - 1);
            if lid != 0 && self.record(lid).state() == FREE {
                let l = self.record(lid);
                debug_assert_eq!(l.start() + l.pages(), start);
                self.remove_list(g, lid);
                let (ld, lsince) = {
                    // SAFETY: page-heap lock held; l is FREE.
                    let lk = unsafe { l.locked() };
                    (lk.dirty_pages as usize, lk.free_since)
                };
                self.map.set(l.start(), 0);
                self.map.set(start - 1, 0);
                g.free_pages -= l.pages();
                g.free_dirty_pages -= ld;
                start = l.start();
                n += l.pages();
                since = merge_since(dirty, since, ld, lsince);
                dirty += ld;
                self.drop_record(g, lid);
            }
        }
        // Right neighbour.
        if start + n < g.top {
            let rid = self.map.get(start + n);
            if rid != 0 && self.record(rid).state() == FREE {
                let r = self.record(rid);
                debug_assert_eq!(r.start(), start + n);
                self.remove_list(g, rid);
                let (rd, rsince) = {
                    // SAFETY: page-heap lock held; r is FREE.
                    let rk = unsafe { r.locked() };
                    (rk.dirty_pages as usize, rk.free_since)
                };
                self.map.set(r.start(), 0);
                self.map.set(r.start() + r.pages() - 1, 0);
                g.free_pages -= r.pages();
                g.free_dirty_pages -= rd;
                n += r.pages();
                since = merge_since(dirty, since, rd, rsince);
                dirty += rd;
                self.drop_record(g, rid);
            }
        }
        let id = if id != 0 {
            id
        } else {
            match self.new_record(g) {
                Some(id) => id,
                // Out of records: the pages leak (cannot happen: there are
                // more records than pages).
                None => return 0,
            }
        };
        let s = self.record(id);
        s.start_page.store(start as u32, Ordering::Relaxed);
        s.npages.store(n as u32, Ordering::Relaxed);
        s.class.store(0, Ordering::Relaxed);
        s.state.store(FREE, Ordering::Relaxed);
        {
            // SAFETY: page-heap lock held; s is now FREE.
            let l = unsafe { s.locked() };
            l.dirty_pages = dirty.min(n) as u32;
            l.free_since = since;
        }
        g.free_pages += n;
        g.free_dirty_pages += dirty.min(n);
        self.map.set(start, id);
        self.map.set(start + n - 1, id);
        self.push_list(g, id);
        id
    }

    /// Releases the dirty pages of the free span `id`; returns pages
    /// released.
    fn release_span(&self, g: &mut Inner, id: u32) -> usize {
        let s = self.record(id);
        // SAFETY: page-heap lock held; s is FREE.
        let l = unsafe { s.locked() };
        if l.dirty_pages == 0 {
            return 0;
        }
        let addr = self.span_addr(s) as *mut u8;
        // SAFETY: a free span holds no live data; it is committed.
        if !unsafe { os::release(addr, s.pages() << PAGE_SHIFT) } {
            return 0;
        }
        let d = l.dirty_pages as usize;
        g.free_dirty_pages -= d;
        l.dirty_pages = 0;
        self.released_total_bytes
            .fetch_add(d << PAGE_SHIFT, Ordering::Relaxed);
        d
    }

    /// Releases every dirty free span, biggest lists first, until at most
    /// `target` dirty free pages remain. Returns pages released.
    fn release_down_to(&self, g: &mut Inner, target: usize) -> usize {
        let mut released = 0;
        let mut li = BIG_LIST;
        while li >= 1 && g.free_dirty_pages > target {
            let mut id = g.lists[li];
            while id != 0 && g.free_dirty_pages > target {
                // SAFETY: page-heap lock held; the span is FREE.
                let next = unsafe { self.record(id).locked() }.next;
                released += self.release_span(g, id);
                id = next;
            }
            li -= 1;
        }
        released
    }

    /// The decay pass: releases the dirty free spans unused for `decay_ms`
    /// at `now` (ms, `decay::now_ms`). Returns when the next one is due
    /// (`u64::MAX`: no dirty free span left). O(free spans), run at most
    /// about every `decay_ms / 4`.
    pub fn decay(&self, now: u64, decay_ms: u64) -> u64 {
        let mut g = self.inner.lock();
        let mut next = u64::MAX;
        if g.free_dirty_pages == 0 {
            return next;
        }
        for li in 1..NLISTS {
            let mut id = g.lists[li];
            while id != 0 {
                let (nx, dirty, since) = {
                    // SAFETY: page-heap lock held; the span is FREE.
                    let l = unsafe { self.record(id).locked() };
                    (l.next, l.dirty_pages, l.free_since)
                };
                if dirty > 0 {
                    let age = u64::from((now as u32).wrapping_sub(since));
                    if age >= decay_ms {
                        self.release_span(&mut g, id);
                    } else {
                        next = next.min(now + (decay_ms - age));
                    }
                }
                id = nx;
            }
        }
        self.publish(&g);
        next
    }

    /// Checks the invariants listed in the module doc (debug builds; the
    /// check takes the page-heap lock and is O(spans)).
    pub fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let g = self.inner.lock();
        // Tiling of [0, top).
        let mut p = 0;
        let mut free_pages = 0;
        let mut free_dirty = 0;
        let mut prev_free = false;
        while p < g.top {
            let id = self.map.get(p);
            assert!(id != 0, "page {p} below top has no span");
            let s = self.record(id);
            assert_eq!(s.start(), p, "span start mismatch at page {p}");
            let n = s.pages();
            assert!(n >= 1);
            match s.state() {
                FREE => {
                    assert!(!prev_free, "adjacent free spans at page {p}");
                    assert_eq!(self.map.get(p + n - 1), id);
                    for q in p + 1..p + n - 1 {
                        assert_eq!(self.map.get_raw(q), 0, "inner page of free span mapped");
                    }
                    assert_eq!(PageMap::small_of(self.map.get_raw(p)), (0, 0));
                    // SAFETY: page-heap lock held; s is FREE.
                    let d = unsafe { s.locked() }.dirty_pages as usize;
                    assert!(d <= n);
                    free_pages += n;
                    free_dirty += d;
                    prev_free = true;
                }
                SMALL | LARGE => {
                    for q in p..p + n {
                        assert_eq!(self.map.get(q), id, "page {q} of a used span");
                        let want = if s.state() == SMALL && n <= 255 {
                            (s.class() as usize, q - p)
                        } else {
                            (0, 0)
                        };
                        assert_eq!(PageMap::small_of(self.map.get_raw(q)), want, "page {q}");
                    }
                    prev_free = false;
                }
                st => panic!("span at page {p} in state {st}"),
            }
            p += n;
        }
        assert_eq!(p, g.top);
        assert_eq!(free_pages, g.free_pages);
        assert_eq!(free_dirty, g.free_dirty_pages);
        // Lists hold exactly the free spans, each on the right list.
        let mut listed = 0;
        for li in 1..NLISTS {
            let mut id = g.lists[li];
            let mut prev = 0;
            while id != 0 {
                let s = self.record(id);
                assert_eq!(s.state(), FREE);
                assert_eq!(Self::list_of(s.pages()), li);
                // SAFETY: page-heap lock held; s is FREE.
                let l = unsafe { s.locked() };
                assert_eq!(l.prev, prev);
                listed += s.pages();
                prev = id;
                id = l.next;
            }
        }
        assert_eq!(listed, free_pages);
    }
}

/// The stamp of two merged dirty parts: the older one (stamps are
/// wrapping 32-bit milliseconds); a part with no dirty pages has none.
fn merge_since(da: usize, a: u32, db: usize, b: u32) -> u32 {
    match (da, db) {
        (0, _) => b,
        (_, 0) => a,
        _ if (a.wrapping_sub(b) as i32) > 0 => b,
        _ => a,
    }
}

impl Default for PageHeap {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size_class::PAGE_BYTES;

    fn heap() -> &'static PageHeap {
        let h: &'static PageHeap = std::boxed::Box::leak(std::boxed::Box::new(PageHeap::new()));
        assert!(h.init(256 << 20));
        h
    }

    #[test]
    fn alloc_free_coalesce() {
        let h = heap();
        let (a, z) = h.alloc_span(3, 0, LARGE, 0).unwrap();
        assert!(z);
        let (b, _) = h.alloc_span(5, 0, LARGE, 0).unwrap();
        let (c, _) = h.alloc_span(2, 0, SMALL, 7).unwrap();
        assert_eq!(a.start(), 0);
        assert_eq!(b.start(), 3);
        assert_eq!(c.start(), 8);
        let addr = h.span_addr(b);
        // SAFETY: the span is committed and ours.
        unsafe { (addr as *mut u8).write_bytes(1, 5 * PAGE_BYTES) };
        assert!(core::ptr::eq(h.span_of(addr + 12345).unwrap(), b));
        assert_eq!(
            h.span_of(h.map.base() + 10 * PAGE_BYTES).map(|s| s.state()),
            None
        );
        h.check_invariants();
        // SAFETY: a and c are ours, unused afterwards.
        unsafe {
            h.free_span(a);
            h.free_span(c);
        }
        h.check_invariants();
        // SAFETY: b is ours.
        unsafe { h.free_span(b) };
        h.check_invariants();
        assert_eq!(h.stats().free_bytes, 10 * PAGE_BYTES);
        // The coalesced 10 pages are reused.
        let (d, z) = h.alloc_span(10, 0, LARGE, 0).unwrap();
        assert_eq!(d.start(), 0);
        assert!(!z, "dirty pages are not reported zeroed");
        h.check_invariants();
        // SAFETY: d is ours.
        unsafe { h.free_span(d) };
        assert_eq!(h.release_all(), 10 * PAGE_BYTES);
        let (e, z) = h.alloc_span(4, 0, LARGE, 0).unwrap();
        assert!(z, "released pages read as zero");
        // SAFETY: committed memory of span e.
        assert_eq!(unsafe { *((h.span_addr(e) + 5000) as *const u8) }, 0);
        h.check_invariants();
    }

    #[test]
    fn aligned_spans() {
        let h = heap();
        let (_x, _) = h.alloc_span(1, 0, LARGE, 0).unwrap();
        for align in [16 << 10, 64 << 10, 1 << 20] {
            let (s, _) = h.alloc_span(3, align, LARGE, 0).unwrap();
            assert_eq!(h.span_addr(s) % align, 0);
            h.check_invariants();
        }
    }

    #[test]
    fn random_alloc_free_keeps_invariants() {
        let h = heap();
        let mut live: std::vec::Vec<&Span> = std::vec::Vec::new();
        let mut seed = 12345u64;
        for i in 0..3000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (seed >> 33) as usize;
            if live.len() < 50 && !r.is_multiple_of(3) {
                let n = 1 + r % 200;
                let align = if r.is_multiple_of(7) { 64 << 10 } else { 0 };
                let (s, _) = h.alloc_span(n, align, LARGE, 0).unwrap();
                live.push(s);
            } else if !live.is_empty() {
                let s = live.swap_remove(r % live.len());
                // SAFETY: s is ours and dropped from `live`.
                unsafe { h.free_span(s) };
            }
            if i % 100 == 0 {
                h.check_invariants();
            }
        }
        for s in live {
            // SAFETY: as above.
            unsafe { h.free_span(s) };
        }
        h.check_invariants();
        let st = h.stats();
        assert_eq!(st.large_bytes, 0);
        assert_eq!(st.free_bytes, h.inner.lock().top << PAGE_SHIFT);
    }

    #[test]
    fn resize_large_in_place() {
        let h = heap();
        let (a, _) = h.alloc_span(4, 0, LARGE, 0).unwrap();
        let (b, _) = h.alloc_span(4, 0, LARGE, 0).unwrap();
        let (c, _) = h.alloc_span(2, 0, LARGE, 0).unwrap();
        // a cannot grow: b follows.
        // SAFETY: a, b, c are ours.
        unsafe {
            assert!(!h.resize_large(a, 5));
            h.free_span(b);
            h.check_invariants();
            assert!(h.resize_large(a, 6), "grows into the freed b");
            assert_eq!(a.pages(), 6);
            h.check_invariants();
            assert!(h.resize_large(a, 8), "takes the rest of b exactly");
            assert!(!h.resize_large(a, 9), "c follows");
            assert!(h.resize_large(a, 3), "shrinks");
            h.check_invariants();
            // c is at the top: it can grow from the top of the heap.
            assert!(h.resize_large(c, 50));
            assert_eq!(c.pages(), 50);
            h.check_invariants();
            assert!(core::ptr::eq(
                h.span_of(h.span_addr(c) + 49 * PAGE_BYTES).unwrap(),
                c
            ));
            h.free_span(a);
            h.free_span(c);
        }
        h.check_invariants();
        assert_eq!(h.stats().large_bytes, 0);
    }

    #[test]
    fn exhaustion_returns_none() {
        let h = heap();
        assert!(h.alloc_span(usize::MAX / 4, 0, LARGE, 0).is_none());
        let total = h.map.npages();
        assert!(h.alloc_span(total + 1, 0, LARGE, 0).is_none());
        assert!(h.alloc_span(total / 2, 0, LARGE, 0).is_some());
        h.check_invariants();
    }

    #[test]
    fn decay_releases_old_dirty_spans_only() {
        let h = heap();
        let (a, _) = h.alloc_span(8, 0, LARGE, 0).unwrap();
        let (b, _) = h.alloc_span(8, 0, LARGE, 0).unwrap();
        let (_c, _) = h.alloc_span(1, 0, LARGE, 0).unwrap();
        // SAFETY: a and b are ours and committed.
        unsafe {
            (h.span_addr(a) as *mut u8).write_bytes(1, 8 * PAGE_BYTES);
            (h.span_addr(b) as *mut u8).write_bytes(1, 8 * PAGE_BYTES);
            h.free_span(a);
        }
        let now = crate::decay::now_ms();
        assert_eq!(h.stats().free_dirty_bytes, 8 * PAGE_BYTES);
        // Not due yet: nothing released; the deadline is about now + 60 s.
        let due = h.decay(now, 60_000);
        assert!(due > now + 50_000 && due <= now + 60_000, "{due} {now}");
        assert_eq!(h.stats().free_dirty_bytes, 8 * PAGE_BYTES);
        // b coalesces with a: the span keeps a's (older) stamp.
        // SAFETY: b is ours.
        unsafe { h.free_span(b) };
        assert_eq!(h.stats().free_dirty_bytes, 16 * PAGE_BYTES);
        h.check_invariants();
        assert_eq!(h.decay(now + 60_000, 60_000), u64::MAX);
        let st = h.stats();
        assert_eq!((st.free_dirty_bytes, st.free_bytes), (0, 16 * PAGE_BYTES));
        h.check_invariants();
        // Released pages read as zero and are reported so.
        let (d, z) = h.alloc_span(16, 0, LARGE, 0).unwrap();
        assert!(z);
        // SAFETY: committed memory of span d.
        assert_eq!(unsafe { *((h.span_addr(d) + 100) as *const u8) }, 0);
    }

    #[test]
    fn merged_stamp_is_the_oldest() {
        assert_eq!(merge_since(1, 100, 1, 200), 100);
        assert_eq!(merge_since(1, 200, 1, 100), 100);
        assert_eq!(merge_since(0, 100, 1, 200), 200);
        assert_eq!(merge_since(1, 100, 0, 50), 100);
        // Across the 32-bit wrap: u32::MAX - 5 is older than 10.
        assert_eq!(merge_since(1, 10, 1, u32::MAX - 5), u32::MAX - 5);
    }
}

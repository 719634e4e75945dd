//! The page heap: hands out spans (runs of pages) from chunks of address
//! space mapped as it grows, coalesces freed spans, and gives free pages
//! back to the OS.
//!
//! Growth: when no free span fits, the heap maps a new chunk (read-write,
//! `MAP_NORESERVE`, 2 MiB aligned): as big as the heap so far while that is
//! below [`CHUNK_BYTES`] (starting at [`FIRST_CHUNK_BYTES`]), then
//! [`CHUNK_BYTES`] or an eighth of the heap, whichever is larger (at most
//! [`MAX_CHUNK_BYTES`]; more if the request needs it), first right below or above the previous chunk so
//! that the heap stays contiguous, then anywhere; if the kernel refuses
//! (an address-space limit), it halves the size down to what the request
//! needs. The new chunk becomes one free span (reading as zero), coalesced
//! with an adjacent free span. So the address space in use is the heap plus
//! at most one chunk of slack, never a worst-case reservation, and the heap
//! works under `RLIMIT_AS` as long as the kernel has room for the request.
//! When even that fails, or a huge block's own mapping fails
//! (`give_back_address_space`), every free span is unmapped (its chunk split
//! around the hole) and the mapping retried, so address space held by free
//! memory of one size is available to another.
//! With transparent hugepages available (`thp=auto`, the default, and the
//! system's THP mode `always` or `madvise`), chunks get `MADV_HUGEPAGE`
//! once the heap reaches [`THP_MIN_HEAP_BYTES`] (then the earlier chunks
//! too): on a 2-core EPYC VM that cuts the CPU time of a random pointer
//! chase through 1 GiB of 64 B nodes by 38% (building it by 50%) at the
//! same RSS, while a small process keeps its small RSS.
//!
//! Span records live in blocks mapped on demand, each as big as all the
//! blocks before it (the first holds [`REC_FIRST`] records), found by the
//! bit length of `id / REC_FIRST` in a root of [`REC_BLOCKS`] entries
//! inside the heap (ids are stable; blocks are never unmapped). So record
//! memory stays proportional to the number of spans.
//!
//! Free spans sit in 128 lists: list `n` (1..=127) holds spans of exactly `n`
//! pages, list 128 holds spans of 128 pages or more (searched best-fit).
//! Allocation takes the lowest-addressed of the first few spans of the
//! smallest non-empty exact list that fits (then best fit among the big
//! ones, lowest address on ties), else adds a chunk; a span is carved from
//! the low end of the free span. Preferring low addresses packs spans into
//! as few 2 MiB hugepages as possible and leaves the free memory at the
//! high ends of chunks in long runs.
//!
//! Release policy (see [`crate::decay`]): a free span is "dirty" if it may
//! hold resident pages; it carries the time its oldest dirty part became
//! free. Dirty free spans unused for `decay_ms` are released
//! (`madvise(MADV_DONTNEED)`) by the decay pass (`decay`), which allocator
//! activity or the background thread runs; `decay_ms=0` releases a span as
//! soon as it is freed, `-1` never; `trim()` releases them all. With
//! hugepages in use, whole hugepages go first: a span due gives back the
//! complete 2 MiB hugepages inside it, its ends (which share a hugepage
//! with spans in use) only after twice the delay. Released
//! pages read as zero, which lets `alloc_zeroed` skip its memset on a span
//! made only of such pages.
//!
//! Invariants (checked by `check_invariants`, page-heap lock held):
//! - the spans tile each chunk: walking from a chunk's first page by
//!   `npages` visits every span once and ends exactly at the chunk's end
//!   (adjacent chunks are merged into one in the chunk table);
//! - no two free spans are adjacent (coalescing is complete);
//! - a free span is on the list for its length, and the page map holds its id
//!   at its first and last page (its inner pages map to 0);
//! - `free_pages` / `free_dirty_pages` equal the sums over free spans, and
//!   `dirty_pages <= npages` for each.

use crate::lock::Mutex;
use crate::os;
use crate::pagemap::PageMap;
use crate::size_class::{PAGE_BYTES, PAGE_SHIFT};
use crate::span::{HeapSpans, Span, SpanId, SpanKey, SpanState, SPAN_RECORD_BYTES};
use core::sync::atomic::{AtomicUsize, Ordering};

/// Chunks are aligned to (and sized in multiples of) this many bytes: one
/// x86-64 transparent hugepage.
pub const CHUNK_ALIGN_BYTES: usize = 2 << 20;
/// The first chunk; while the heap is smaller than [`CHUNK_BYTES`] each new
/// chunk is as big as the heap so far (the heap doubles).
pub const FIRST_CHUNK_BYTES: usize = 4 << 20;
/// The usual size of a new chunk once the heap has reached it.
pub const CHUNK_BYTES: usize = 64 << 20;
/// The dirty free pages kept whatever the heap's size (see
/// `PageHeap::dirty_cap_pages`).
pub const DIRTY_FLOOR_BYTES: usize = 8 << 20;
/// Largest chunk added for growth alone (a bigger request gets a chunk of
/// its own size).
pub const MAX_CHUNK_BYTES: usize = 1 << 30;
/// Most distinct (non-adjacent) chunks the heap tracks; growth fails past
/// it. Chunks grow with the heap, so this is at least 64 GiB of heap.
const MAX_CHUNKS: usize = 1024;
/// Span records in the first record block.
pub const REC_FIRST: usize = 1024;
const REC_FIRST_SHIFT: u32 = REC_FIRST.trailing_zeros();
/// Record blocks: `REC_FIRST << (REC_BLOCKS - 2)` = 2^26 records in all.
const REC_BLOCKS: usize = 17;
/// Spare records kept ready before a heap operation, so that it never fails
/// half-way for want of a record.
const REC_SPARE: usize = 4;
/// Heap size from which chunks get `MADV_HUGEPAGE` (below it, a small
/// process would pay a whole 2 MiB hugepage of RSS for a few KiB of heap).
pub const THP_MIN_HEAP_BYTES: usize = 16 << 20;
/// Spans of an exact-size list looked at when choosing the lowest address.
const LIST_SCAN: usize = 8;
const NLISTS: usize = 129;
const BIG_LIST: usize = 128;

/// One chunk of the heap: pages `[start, start + npages)` (absolute page
/// numbers), all mapped read-write.
#[derive(Clone, Copy)]
struct Chunk {
    start: usize,
    npages: usize,
}

struct Inner {
    /// Pages in all chunks.
    total_pages: usize,
    /// The chunks, `[0, nchunks)` in use, adjacent ones merged.
    chunks: [Chunk; MAX_CHUNKS],
    nchunks: usize,
    /// The chunk added last (first page, end page), where the next one is
    /// tried first.
    last_chunk: (usize, usize),
    /// Whether chunks get `MADV_HUGEPAGE` once the heap reaches
    /// `THP_MIN_HEAP_BYTES`, and whether it has.
    thp: bool,
    thp_on: bool,
    /// Span records: `[1, rec_next)` were handed out; `[0, rec_mapped)` are
    /// in mapped blocks.
    rec_next: usize,
    rec_mapped: usize,
    /// Head of the list of unused records (linked through `Locked::next`)
    /// and its length.
    rec_free: SpanId,
    rec_free_len: usize,
    lists: [SpanId; NLISTS],
    free_pages: usize,
    free_dirty_pages: usize,
    /// The key to the fields of the free and unused spans.
    key: SpanKey<HeapSpans>,
}

/// The page heap. A `const` inert value; `init` maps the reservation.
pub struct PageHeap {
    /// Page -> span id (lock-free reads).
    pub map: PageMap,
    /// Record blocks: block `k` holds ids `[REC_FIRST << k >> 1, REC_FIRST
    /// << k)` (block 0 from id 0); its entry is the block's address minus
    /// its first id times the record size, so that record `id` lives at
    /// `entry + id * SPAN_RECORD_BYTES`.
    records: [AtomicUsize; REC_BLOCKS],
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
    /// Heap bytes mapped (read-write chunks; untouched pages cost nothing).
    pub committed_bytes: usize,
    /// Bytes in free spans.
    pub free_bytes: usize,
    /// Bytes in free spans that may be resident.
    pub free_dirty_bytes: usize,
    /// Bytes in spans of small objects.
    pub small_bytes: usize,
    /// Bytes in large blocks in use.
    pub large_bytes: usize,
    /// Bytes given back with madvise so far (cumulative; no report reads
    /// it yet).
    #[allow(dead_code)]
    pub released_total_bytes: usize,
}

impl PageHeap {
    /// An inert heap: every pointer is foreign, every allocation fails.
    pub const fn new() -> Self {
        PageHeap {
            map: PageMap::new(),
            records: [const { AtomicUsize::new(0) }; REC_BLOCKS],
            inner: Mutex::new(Inner {
                total_pages: 0,
                chunks: [Chunk {
                    start: 0,
                    npages: 0,
                }; MAX_CHUNKS],
                nchunks: 0,
                last_chunk: (0, 0),
                thp: false,
                thp_on: false,
                rec_next: 1,
                rec_mapped: 0,
                rec_free: SpanId::NONE,
                rec_free_len: 0,
                lists: [SpanId::NONE; NLISTS],
                free_pages: 0,
                free_dirty_pages: 0,
                // SAFETY: the one key of this heap, inside the data of its
                // lock.
                key: unsafe { SpanKey::new() },
            }),
            committed_bytes: AtomicUsize::new(0),
            free_bytes: AtomicUsize::new(0),
            free_dirty_bytes: AtomicUsize::new(0),
            small_bytes: AtomicUsize::new(0),
            large_bytes: AtomicUsize::new(0),
            released_total_bytes: AtomicUsize::new(0),
        }
    }

    /// Prepares the heap: maps nothing (the first allocation adds the first
    /// chunk); `thp` asks for transparent hugepages on chunks when the
    /// system offers them. Must be called once, before use; returns true.
    pub fn init(&self, thp: bool) -> bool {
        let mut g = self.inner.lock();
        g.thp = thp && os::thp_available();
        true
    }

    /// Whether chunks get `MADV_HUGEPAGE` (the heap has reached
    /// `THP_MIN_HEAP_BYTES` with THP available and wanted; tests).
    #[cfg(test)]
    pub fn uses_thp(&self) -> bool {
        self.inner.lock().thp_on
    }

    /// The span record with id `id`.
    #[inline(always)]
    pub fn record(&self, id: SpanId) -> &Span {
        let id = id.index();
        let k = (usize::BITS - (id >> REC_FIRST_SHIFT).leading_zeros()) as usize;
        let biased = self.records[k.min(REC_BLOCKS - 1)].load(Ordering::Relaxed);
        let addr = biased.wrapping_add(id * SPAN_RECORD_BYTES);
        // SAFETY: ids come from the page map or lists and are always below
        // `rec_next`, so their block is mapped (published before the id, which
        // readers get through an Acquire load) and the record initialised;
        // blocks are never unmapped.
        unsafe { &*core::ptr::with_exposed_provenance::<Span>(addr) }
    }

    /// The span containing `addr`, if `addr` is inside the heap and a span
    /// in use or a free span's end page covers it (lock-free).
    #[inline(always)]
    pub fn span_of(&self, addr: usize) -> Option<&Span> {
        let (_, entry) = self.map.lookup(addr)?;
        let id = SpanId::from_entry(entry);
        if id.is_none() {
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
    /// (a power of two; <= PAGE_BYTES means no constraint), in state `Small`
    /// (with `class`) or `Large`. Returns the span and whether all its pages
    /// are known to read as zero.
    pub fn alloc_span(
        &self,
        npages: usize,
        align_bytes: usize,
        state: SpanState,
        class: u8,
    ) -> Option<(&Span, bool)> {
        debug_assert!(matches!(state, SpanState::Small | SpanState::Large));
        if npages == 0 || npages > u32::MAX as usize / 2 {
            return None;
        }
        let align_pages = (align_bytes >> PAGE_SHIFT).max(1);
        let need = npages.checked_add(align_pages - 1)?;
        let mut g = self.inner.lock();
        if !self.spare_records(&mut g) {
            return None;
        }
        let (start, len, dirty, since) = match self.take_free(&mut g, need) {
            Some(r) => r,
            None => {
                let (start, len, dirty) = self.grow(&mut g, need)?;
                (start, len, dirty, 0)
            }
        };
        // Place the span at the first aligned page inside [start, start+len).
        let addr = self.map.page_addr(start);
        let align = align_pages << PAGE_SHIFT;
        let aligned_addr = (addr + align - 1) & !(align - 1);
        let front = (aligned_addr - addr) >> PAGE_SHIFT;
        let back = len - front - npages;
        let Some(id) = self.new_record(&mut g) else {
            // Put everything back as one free span.
            self.insert_free(&mut g, start, len, dirty, since, SpanId::NONE);
            return None;
        };
        if front > 0 {
            self.insert_free(&mut g, start, front, dirty.min(front), since, SpanId::NONE);
        }
        if back > 0 {
            let d = dirty.min(back);
            self.insert_free(&mut g, start + front + npages, back, d, since, SpanId::NONE);
        }
        let s = self.record(id);
        s.start_page.store(start + front, Ordering::Relaxed);
        s.npages.store(npages as u32, Ordering::Relaxed);
        s.class.store(class, Ordering::Relaxed);
        // SAFETY: page-heap lock held (g); the record is still `Unused` (or
        // fresh, `Free`) and not yet visible.
        let l = unsafe { s.locked(&mut g.key) };
        l.prev = SpanId::NONE;
        l.next = SpanId::NONE;
        l.dirty_pages = 0;
        l.freelist = core::ptr::null_mut();
        l.allocated = 0;
        l.carved = 0;
        l.on_list = false;
        s.state.store(state, Ordering::Relaxed);
        if PageMap::has_small_entries(state, class, npages) {
            self.map.set_small_range(start + front, npages, id, class);
        } else {
            self.map.set_range(start + front, npages, id);
        }
        let bytes = npages << PAGE_SHIFT;
        if state == SpanState::Small {
            self.small_bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
            self.large_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        self.publish(&g);
        drop(g);
        crate::decay::tick_locked();
        Some((s, dirty == 0))
    }

    /// Returns a span in use (`Small` or `Large`) to the heap.
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
        if s.state() == SpanState::Small {
            self.small_bytes.fetch_sub(bytes, Ordering::Relaxed);
        } else {
            self.large_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
        let id = self.id_of(s);
        self.map.set_range(start, n, SpanId::NONE);
        self.insert_dirty(&mut g, start, n, id);
        self.publish(&g);
        drop(g);
        crate::decay::tick_locked();
    }

    /// Inserts a just-freed (dirty) range stamped now; releases it at once
    /// with `decay_ms=0`.
    fn insert_dirty(&self, g: &mut Inner, start: usize, n: usize, id: SpanId) {
        if !crate::decay::keeps() {
            let id = self.insert_free(g, start, n, n, 0, id);
            if id.is_some() {
                self.release_span(g, id);
            }
            return;
        }
        let now = crate::decay::now_ms();
        self.insert_free(g, start, n, n, now as u32, id);
        crate::decay::note_dirty(now);
        if crate::decay::decay_ms() > 0 {
            let cap = Self::dirty_cap_pages(g);
            if g.free_dirty_pages > cap {
                self.release_down_to(g, cap - cap / 4);
            }
        }
    }

    /// The most dirty free pages the heap keeps waiting for their decay
    /// delay: an eighth of the pages in use, at least
    /// [`DIRTY_FLOOR_BYTES`]. Past it, a free releases the biggest dirty
    /// spans at once, down to three quarters of the cap (so a heap sitting
    /// at the cap does not pay a release on every free). Decay alone
    /// cannot bound what a spike leaves: it runs on slow paths, and a
    /// program whose later activity stays in the per-CPU caches reaches
    /// none. `decay_ms=-1` (keep everything) and `0` (release at once) do
    /// not use it.
    fn dirty_cap_pages(g: &Inner) -> usize {
        let in_use = g.total_pages - g.free_pages;
        (in_use / 8).max(DIRTY_FLOOR_BYTES >> PAGE_SHIFT)
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
            // Shrinking needs a record for the tail; without one, keep the
            // block as it is (still big enough).
            if new_pages < n && self.spare_records(&mut g) {
                let tail = n - new_pages;
                s.npages.store(new_pages as u32, Ordering::Relaxed);
                self.map.set_range(start + new_pages, tail, SpanId::NONE);
                self.large_bytes
                    .fetch_sub(tail << PAGE_SHIFT, Ordering::Relaxed);
                self.insert_dirty(&mut g, start + new_pages, tail, SpanId::NONE);
                self.publish(&g);
            }
            return true;
        }
        let end = start + n;
        let need = new_pages - n;
        if !self.spare_records(&mut g) {
            return false;
        }
        {
            let Some(r) = self.free_at(&g, end, true) else {
                return false;
            };
            let rid = self.map.get(end);
            if r.pages() < need {
                return false;
            }
            let (_, rn, rd, rsince) = self.unlink_free(&mut g, rid);
            if rn > need {
                let rest = rn - need;
                let d = rd.min(rest);
                self.insert_free(&mut g, end + need, rest, d, rsince, SpanId::NONE);
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
            .store(g.total_pages << PAGE_SHIFT, Ordering::Relaxed);
        self.free_bytes
            .store(g.free_pages << PAGE_SHIFT, Ordering::Relaxed);
        self.free_dirty_bytes
            .store(g.free_dirty_pages << PAGE_SHIFT, Ordering::Relaxed);
    }

    /// The id of a span in use (its first page maps to it).
    fn id_of(&self, s: &Span) -> SpanId {
        let id = self.map.get(s.start());
        debug_assert!(core::ptr::eq(self.record(id), s));
        id
    }

    /// The free span of this heap that starts at `page` (`at_start`) or ends
    /// there, if any. A page map entry may name a span of another heap
    /// (unit tests run several heaps over one page map), so the record is
    /// checked to really border `page`.
    fn free_at(&self, g: &Inner, page: usize, at_start: bool) -> Option<&Span> {
        let id = self.map.get(page);
        if id.is_none() || id.index() >= g.rec_next {
            return None;
        }
        let s = self.record(id);
        if s.state() != SpanState::Free {
            return None;
        }
        let edge = if at_start {
            s.start()
        } else {
            s.start() + s.pages() - 1
        };
        if edge == page {
            Some(s)
        } else {
            None
        }
    }

    fn list_of(n: usize) -> usize {
        n.min(BIG_LIST)
    }

    fn push_list(&self, g: &mut Inner, id: SpanId) {
        let s = self.record(id);
        let li = Self::list_of(s.pages());
        let head = g.lists[li];
        // SAFETY: page-heap lock held (g); s is Free.
        let l = unsafe { s.locked(&mut g.key) };
        l.prev = SpanId::NONE;
        l.next = head;
        if head.is_some() {
            // SAFETY: page-heap lock held; head is a Free span on a list.
            unsafe { self.record(head).locked(&mut g.key) }.prev = id;
        }
        g.lists[li] = id;
    }

    fn remove_list(&self, g: &mut Inner, id: SpanId) {
        let s = self.record(id);
        let li = Self::list_of(s.pages());
        let (prev, next) = {
            // SAFETY: page-heap lock held (g); s is Free.
            let l = unsafe { s.locked(&mut g.key) };
            (l.prev, l.next)
        };
        if prev.is_some() {
            // SAFETY: page-heap lock held; prev is a Free span on this list.
            unsafe { self.record(prev).locked(&mut g.key) }.next = next;
        } else {
            g.lists[li] = next;
        }
        if next.is_some() {
            // SAFETY: page-heap lock held; next is a Free span on this list.
            unsafe { self.record(next).locked(&mut g.key) }.prev = prev;
        }
    }

    /// Takes the free span `id` off its list, out of the page map and the
    /// free totals, and retires its record; returns (start, npages, dirty,
    /// free_since) of the pages it covered.
    fn unlink_free(&self, g: &mut Inner, id: SpanId) -> (usize, usize, usize, u32) {
        self.remove_list(g, id);
        let s = self.record(id);
        let (start, n) = (s.start(), s.pages());
        let (dirty, since) = {
            // SAFETY: page-heap lock held (g); s is Free.
            let l = unsafe { s.locked(&mut g.key) };
            (l.dirty_pages as usize, l.free_since)
        };
        self.map.set(start, SpanId::NONE);
        self.map.set(start + n - 1, SpanId::NONE);
        g.free_pages -= n;
        g.free_dirty_pages -= dirty;
        self.drop_record(g, id);
        (start, n, dirty, since)
    }

    /// Removes a free span of at least `need` pages from the lists; returns
    /// (start, len, dirty, free_since) with its record recycled and its map
    /// ends cleared.
    fn take_free(&self, g: &mut Inner, need: usize) -> Option<(usize, usize, usize, u32)> {
        let mut found = SpanId::NONE;
        for li in need.min(BIG_LIST)..BIG_LIST {
            if g.lists[li].is_some() {
                // The lowest address among the first few (dense packing).
                let mut id = g.lists[li];
                let mut best = usize::MAX;
                for _ in 0..LIST_SCAN {
                    if id.is_none() {
                        break;
                    }
                    let s = self.record(id);
                    if s.start() < best {
                        best = s.start();
                        found = id;
                    }
                    // SAFETY: page-heap lock held (g); s is Free, on a list.
                    id = unsafe { s.locked(&mut g.key) }.next;
                }
                break;
            }
        }
        if found.is_none() {
            // Best fit among the big spans.
            let mut best_len = usize::MAX;
            let mut id = g.lists[BIG_LIST];
            while id.is_some() {
                let s = self.record(id);
                let n = s.pages();
                if n >= need
                    && (n < best_len || (n == best_len && s.start() < self.record(found).start()))
                {
                    best_len = n;
                    found = id;
                }
                // SAFETY: page-heap lock held (g); s is Free, on a list.
                id = unsafe { s.locked(&mut g.key) }.next;
            }
        }
        if found.is_none() {
            return None;
        }
        Some(self.unlink_free(g, found))
    }

    /// Adds a chunk of at least `need` pages (see the module doc) and takes
    /// a free span of `need` pages from it; returns (start, len, dirty).
    fn grow(&self, g: &mut Inner, need: usize) -> Option<(usize, usize, usize)> {
        let min = crate::util::round_up(need.checked_mul(PAGE_BYTES)?, CHUNK_ALIGN_BYTES)?;
        let usual = Self::chunk_bytes_for(g.total_pages << PAGE_SHIFT);
        // Halve on failure down to the 2 MiB multiple the request needs,
        // then (an address-space limit is near) in pages down to the
        // request itself: such a last chunk is not hugepage aligned.
        let exact = need << PAGE_SHIFT;
        let mut len = usual.max(min);
        let mut unmapped = false;
        let addr = loop {
            if let Some(p) = self.map_chunk(g, len) {
                if self.map.ensure_leaves(p, len) {
                    break p;
                }
                // The chunk reaches a GiB with no page-map leaf yet and the
                // leaf could not be mapped (an address-space limit the chunk
                // itself just reached): a smaller chunk leaves room for it.
                // SAFETY: the chunk was just mapped and nobody knows it.
                unsafe { os::unmap(p as *mut u8, len) };
            }
            if len == exact {
                // Out of address space: free spans too small for the request
                // may still hold enough of it together.
                if unmapped || self.unmap_free_spans(g) < need {
                    return None;
                }
                unmapped = true;
                len = usual.max(min);
                continue;
            }
            len = if len > min {
                (len / 2 / CHUNK_ALIGN_BYTES * CHUNK_ALIGN_BYTES).max(min)
            } else {
                (((len / 2) >> PAGE_SHIFT) << PAGE_SHIFT).max(exact)
            };
        };
        let start = addr >> PAGE_SHIFT;
        let npages = len >> PAGE_SHIFT;
        if !self.add_chunk(g, start, npages) {
            // SAFETY: the chunk was just mapped and nobody knows it.
            unsafe { os::unmap(addr as *mut u8, len) };
            return None;
        }
        if g.thp {
            if g.thp_on {
                // SAFETY: our fresh chunk. A refusal leaves ordinary pages.
                unsafe { os::advise_hugepage(addr as *mut u8, len) };
            } else if (g.total_pages + npages) << PAGE_SHIFT >= THP_MIN_HEAP_BYTES {
                // The heap is big enough now: every chunk so far, the new
                // one included (khugepaged collapses what is resident).
                g.thp_on = true;
                for c in &g.chunks[..g.nchunks] {
                    // SAFETY: our chunks; advice does not change contents.
                    unsafe {
                        os::advise_hugepage(
                            self.map.page_addr(c.start) as *mut u8,
                            c.npages << PAGE_SHIFT,
                        )
                    };
                }
            }
        }
        g.last_chunk = (start, start + npages);
        g.total_pages += npages;
        self.insert_free(g, start, npages, 0, 0, SpanId::NONE);
        self.take_free(g, need)
            .map(|(start, len, dirty, _)| (start, len, dirty))
    }

    /// The usual size of the next chunk for a heap of `heap_bytes`: as big
    /// as the heap (at least `FIRST_CHUNK_BYTES`) up to `CHUNK_BYTES`, then
    /// an eighth of the heap up to `MAX_CHUNK_BYTES`, in 2 MiB units.
    fn chunk_bytes_for(heap_bytes: usize) -> usize {
        let b = if heap_bytes < CHUNK_BYTES {
            heap_bytes.max(FIRST_CHUNK_BYTES)
        } else {
            (heap_bytes / 8).clamp(CHUNK_BYTES, MAX_CHUNK_BYTES)
        };
        b / CHUNK_ALIGN_BYTES * CHUNK_ALIGN_BYTES
    }

    /// Maps `len` bytes for a chunk, right below or right above the last
    /// chunk if that space is free, else anywhere (2 MiB aligned if `len` is
    /// a multiple of 2 MiB, else page aligned).
    fn map_chunk(&self, g: &Inner, len: usize) -> Option<usize> {
        let (lo, hi) = g.last_chunk;
        if hi != 0 {
            let lo = self.map.page_addr(lo);
            if let Some(below) = lo.checked_sub(len) {
                if let Some(p) = os::map_at(below, len) {
                    return Some(p.as_ptr() as usize);
                }
            }
            if let Some(p) = os::map_at(self.map.page_addr(hi), len) {
                return Some(p.as_ptr() as usize);
            }
        }
        let align = if len.is_multiple_of(CHUNK_ALIGN_BYTES) {
            CHUNK_ALIGN_BYTES
        } else {
            PAGE_BYTES
        };
        os::map_chunk(len, align).map(|p| p.as_ptr() as usize)
    }

    /// Records the chunk `[start, start + npages)`, merged with the chunks it
    /// touches; false (nothing changed) if the table is full.
    fn add_chunk(&self, g: &mut Inner, mut start: usize, mut npages: usize) -> bool {
        if g.nchunks >= MAX_CHUNKS
            && !g
                .chunks
                .iter()
                .any(|c| c.start + c.npages == start || start + npages == c.start)
        {
            return false;
        }
        let mut i = 0;
        while i < g.nchunks {
            let c = g.chunks[i];
            if c.start + c.npages == start || start + npages == c.start {
                start = start.min(c.start);
                npages += c.npages;
                g.nchunks -= 1;
                g.chunks[i] = g.chunks[g.nchunks];
            } else {
                i += 1;
            }
        }
        g.chunks[g.nchunks] = Chunk { start, npages };
        g.nchunks += 1;
        true
    }

    /// Unmaps every free span (their chunks split around the holes), giving
    /// the address space back to the kernel; returns the pages unmapped.
    /// For when mapping fails under an address-space limit, not for memory
    /// return (that is `release_down_to`'s: pages stay mapped there).
    fn unmap_free_spans(&self, g: &mut Inner) -> usize {
        let mut total = 0;
        for li in 1..NLISTS {
            let mut id = g.lists[li];
            while id.is_some() {
                let s = self.record(id);
                // SAFETY: page-heap lock held (g); s is Free, on a list.
                let next = unsafe { s.locked(&mut g.key) }.next;
                let (start, n) = (s.start(), s.pages());
                // Split the chunk holding the span around it (needs a free
                // table entry when the span is inside the chunk).
                let Some(ci) = (0..g.nchunks).find(|&i| {
                    g.chunks[i].start <= start && start < g.chunks[i].start + g.chunks[i].npages
                }) else {
                    id = next;
                    continue;
                };
                let c = g.chunks[ci];
                let (left, right) = (start - c.start, c.start + c.npages - start - n);
                if left > 0 && right > 0 && g.nchunks >= MAX_CHUNKS {
                    id = next;
                    continue;
                }
                // SAFETY: a free span holds no live data and nothing points
                // into it; its pages are ours (inside chunk `c`).
                if !unsafe { os::unmap(self.map.page_addr(start) as *mut u8, n << PAGE_SHIFT) } {
                    id = next;
                    continue;
                }
                self.remove_list(g, id);
                // SAFETY: page-heap lock held (g); s is still Free.
                let dirty = unsafe { s.locked(&mut g.key) }.dirty_pages as usize;
                self.map.set(start, SpanId::NONE);
                self.map.set(start + n - 1, SpanId::NONE);
                g.free_pages -= n;
                g.free_dirty_pages -= dirty;
                self.drop_record(g, id);
                match (left > 0, right > 0) {
                    (false, false) => {
                        g.nchunks -= 1;
                        g.chunks[ci] = g.chunks[g.nchunks];
                    }
                    (true, false) => g.chunks[ci].npages = left,
                    (false, true) => {
                        g.chunks[ci] = Chunk {
                            start: start + n,
                            npages: right,
                        }
                    }
                    (true, true) => {
                        g.chunks[ci].npages = left;
                        g.chunks[g.nchunks] = Chunk {
                            start: start + n,
                            npages: right,
                        };
                        g.nchunks += 1;
                    }
                }
                g.total_pages -= n;
                total += n;
                id = next;
            }
        }
        total
    }

    /// Unmaps every free span (see `unmap_free_spans`): for a caller whose
    /// own mapping failed (a huge block under an address-space limit).
    /// Returns the bytes unmapped.
    pub fn give_back_address_space(&self) -> usize {
        let mut g = self.inner.lock();
        let n = self.unmap_free_spans(&mut g);
        self.publish(&g);
        n << PAGE_SHIFT
    }

    /// Makes sure at least `REC_SPARE` records can be taken without mapping
    /// (maps a record block if needed); false if that failed.
    fn spare_records(&self, g: &mut Inner) -> bool {
        while g.rec_free_len + (g.rec_mapped - g.rec_next.min(g.rec_mapped)) < REC_SPARE {
            // Blocks `[0, k)` are mapped and hold ids `[0, rec_mapped)`.
            let k = if g.rec_mapped == 0 {
                0
            } else {
                (g.rec_mapped >> REC_FIRST_SHIFT).trailing_zeros() as usize + 1
            };
            if k >= REC_BLOCKS {
                return false;
            }
            let (first, n) = if k == 0 {
                (0, REC_FIRST)
            } else {
                (g.rec_mapped, g.rec_mapped)
            };
            let Some(p) = os::map(
                n * SPAN_RECORD_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                true,
            ) else {
                return false;
            };
            let biased = (p.as_ptr().expose_provenance()).wrapping_sub(first * SPAN_RECORD_BYTES);
            self.records[k].store(biased, Ordering::Release);
            g.rec_mapped = first + n;
        }
        true
    }

    fn new_record(&self, g: &mut Inner) -> Option<SpanId> {
        if g.rec_free.is_some() {
            let id = g.rec_free;
            // SAFETY: page-heap lock held (g); records on the free list are
            // Unused.
            g.rec_free = unsafe { self.record(id).locked(&mut g.key) }.next;
            g.rec_free_len -= 1;
            return Some(id);
        }
        if g.rec_next >= g.rec_mapped && !self.spare_records(g) {
            return None;
        }
        let id = g.rec_next;
        g.rec_next += 1;
        Some(SpanId::from_index(id))
    }

    fn drop_record(&self, g: &mut Inner, id: SpanId) {
        let s = self.record(id);
        s.state.store(SpanState::Unused, Ordering::Relaxed);
        s.class.store(0, Ordering::Relaxed);
        // SAFETY: page-heap lock held (g); the record is Unused now.
        unsafe { s.locked(&mut g.key) }.next = g.rec_free;
        g.rec_free = id;
        g.rec_free_len += 1;
    }

    /// Inserts the free range `[start, start+n)` with `dirty` possibly
    /// resident pages stamped `since` (see `Locked::free_since`), coalescing
    /// with free neighbours (the result keeps the oldest dirty stamp). `id`
    /// is a record to reuse (`NONE` = take a new one). Returns the free
    /// span's id (`NONE` if no record was left).
    fn insert_free(
        &self,
        g: &mut Inner,
        mut start: usize,
        mut n: usize,
        mut dirty: usize,
        mut since: u32,
        id: SpanId,
    ) -> SpanId {
        // Left neighbour.
        if start > 0 && self.free_at(g, start - 1, false).is_some() {
            let (lstart, ln, ld, lsince) = self.unlink_free(g, self.map.get(start - 1));
            start = lstart;
            n += ln;
            since = merge_since(dirty, since, ld, lsince);
            dirty += ld;
        }
        // Right neighbour.
        if self.free_at(g, start + n, true).is_some() {
            let (_, rn, rd, rsince) = self.unlink_free(g, self.map.get(start + n));
            n += rn;
            since = merge_since(dirty, since, rd, rsince);
            dirty += rd;
        }
        let id = if id.is_some() {
            id
        } else {
            match self.new_record(g) {
                Some(id) => id,
                // Out of records: the pages leak (cannot happen: there are
                // more records than pages).
                None => return SpanId::NONE,
            }
        };
        let s = self.record(id);
        s.start_page.store(start, Ordering::Relaxed);
        s.npages.store(n as u32, Ordering::Relaxed);
        s.class.store(0, Ordering::Relaxed);
        s.state.store(SpanState::Free, Ordering::Relaxed);
        {
            // SAFETY: page-heap lock held (g); s is now Free.
            let l = unsafe { s.locked(&mut g.key) };
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
    fn release_span(&self, g: &mut Inner, id: SpanId) -> usize {
        let s = self.record(id);
        // SAFETY: page-heap lock held (g); s is Free.
        let l = unsafe { s.locked(&mut g.key) };
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

    /// Releases the complete 2 MiB hugepages inside the free span `id`
    /// (aligned to [`CHUNK_ALIGN_BYTES`]) and keeps its ragged ends dirty;
    /// returns pages released. Releasing part of a hugepage whose other
    /// part is in use frees little and makes the kernel split the hugepage,
    /// so the page heap does that only later (see `decay`). Does nothing if
    /// the span holds no whole hugepage, or if its dirty pages could all be
    /// in the ends (an earlier call already released its middle).
    fn release_hugepages(&self, g: &mut Inner, id: SpanId) -> usize {
        let s = self.record(id);
        let start = self.span_addr(s);
        let end = start + (s.pages() << PAGE_SHIFT);
        let lo = (start + CHUNK_ALIGN_BYTES - 1) & !(CHUNK_ALIGN_BYTES - 1);
        let hi = end & !(CHUNK_ALIGN_BYTES - 1);
        if hi <= lo {
            return 0;
        }
        let middle = (hi - lo) >> PAGE_SHIFT;
        let ends = s.pages() - middle;
        // SAFETY: page-heap lock held (g); s is Free.
        let l = unsafe { s.locked(&mut g.key) };
        let dirty = l.dirty_pages as usize;
        if dirty <= ends {
            return 0;
        }
        // SAFETY: `[lo, hi)` lies inside a free span: no live data, committed.
        if !unsafe { os::release(lo as *mut u8, hi - lo) } {
            return 0;
        }
        // At most `ends` dirty pages remain (all of the middle is clean).
        let d = dirty - ends;
        l.dirty_pages = ends as u32;
        g.free_dirty_pages -= d;
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
            while id.is_some() && g.free_dirty_pages > target {
                // SAFETY: page-heap lock held (g); listed spans are Free.
                let next = unsafe { self.record(id).locked(&mut g.key) }.next;
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
    ///
    /// With hugepages on (`uses_thp`), whole hugepages go first: a span
    /// due gives back only the complete 2 MiB hugepages inside it
    /// (`release_hugepages`); its ends, which share a hugepage with spans in
    /// use, go back once unused for twice `decay_ms` (`trim` and
    /// `decay_ms=0` release everything at once, as before).
    pub fn decay(&self, now: u64, decay_ms: u64) -> u64 {
        let mut guard = self.inner.lock();
        let g = &mut *guard;
        let mut next = u64::MAX;
        if g.free_dirty_pages == 0 {
            return next;
        }
        for li in 1..NLISTS {
            let mut id = g.lists[li];
            while id.is_some() {
                let (nx, dirty, since) = {
                    // SAFETY: page-heap lock held (g); listed spans are Free.
                    let l = unsafe { self.record(id).locked(&mut g.key) };
                    (l.next, l.dirty_pages, l.free_since)
                };
                if dirty > 0 {
                    let age = u64::from((now as u32).wrapping_sub(since));
                    let edges_ms = decay_ms.saturating_mul(2);
                    if age < decay_ms {
                        next = next.min(now + (decay_ms - age));
                    } else if g.thp_on && age < edges_ms {
                        // Whole hugepages first: the parts of the span
                        // that share a hugepage with memory in use wait
                        // until twice the delay.
                        self.release_hugepages(g, id);
                        next = next.min(now + (edges_ms - age));
                    } else {
                        self.release_span(g, id);
                    }
                }
                id = nx;
            }
        }
        self.publish(g);
        next
    }

    /// Checks the invariants listed in the module doc (debug builds; the
    /// check takes the page-heap lock and is O(spans)).
    pub fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let mut guard = self.inner.lock();
        let g = &mut *guard;
        let mut free_pages = 0;
        let mut free_dirty = 0;
        let mut sum = 0;
        for c in &g.chunks[..g.nchunks] {
            // Tiling of each chunk.
            let mut p = c.start;
            let top = c.start + c.npages;
            sum += c.npages;
            let mut prev_free = false;
            while p < top {
                let id = self.map.get(p);
                assert!(id.is_some(), "page {p} below top has no span");
                let s = self.record(id);
                assert_eq!(s.start(), p, "span start mismatch at page {p}");
                let n = s.pages();
                assert!(n >= 1);
                match s.state() {
                    SpanState::Free => {
                        assert!(!prev_free, "adjacent free spans at page {p}");
                        assert_eq!(self.map.get(p + n - 1), id);
                        for q in p + 1..p + n - 1 {
                            assert_eq!(self.map.get_raw(q), 0, "inner page of free span mapped");
                        }
                        assert_eq!(PageMap::small_of(self.map.get_raw(p)), (0, 0));
                        // SAFETY: page-heap lock held (g); s is Free.
                        let d = unsafe { s.locked(&mut g.key) }.dirty_pages as usize;
                        assert!(d <= n);
                        free_pages += n;
                        free_dirty += d;
                        prev_free = true;
                    }
                    SpanState::Small | SpanState::Large => {
                        for q in p..p + n {
                            assert_eq!(self.map.get(q), id, "page {q} of a used span");
                            let want = if PageMap::has_small_entries(s.state(), s.class(), n) {
                                (s.class() as usize, q - p)
                            } else {
                                (0, 0)
                            };
                            assert_eq!(PageMap::small_of(self.map.get_raw(q)), want, "page {q}");
                        }
                        prev_free = false;
                    }
                    st => panic!("span at page {p} in state {st:?}"),
                }
                p += n;
            }
            assert_eq!(p, top);
        }
        assert_eq!(sum, g.total_pages);
        assert_eq!(free_pages, g.free_pages);
        assert_eq!(free_dirty, g.free_dirty_pages);
        // Lists hold exactly the free spans, each on the right list.
        let mut listed = 0;
        for li in 1..NLISTS {
            let mut id = g.lists[li];
            let mut prev = SpanId::NONE;
            while id.is_some() {
                let s = self.record(id);
                assert_eq!(s.state(), SpanState::Free);
                assert_eq!(Self::list_of(s.pages()), li);
                // SAFETY: page-heap lock held (g); s is Free.
                let l = unsafe { s.locked(&mut g.key) };
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

impl PageHeap {
    /// Bytes of page-map leaves and root and of span records mapped (the
    /// heap's metadata, for statistics; an upper bound of what is resident).
    pub fn metadata_bytes(&self) -> usize {
        let g = self.inner.lock();
        self.map.mapped_bytes() + g.rec_mapped * SPAN_RECORD_BYTES
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::size_class::PAGE_BYTES;

    /// A private heap for one test (leaked), without hugepages.
    pub(crate) fn heap() -> &'static PageHeap {
        let h: &'static PageHeap = std::boxed::Box::leak(std::boxed::Box::new(PageHeap::new()));
        assert!(h.init(false));
        h
    }

    /// A large span of `pages` pages from `h` (the zeroed flag dropped).
    fn large(h: &PageHeap, pages: usize) -> &Span {
        h.alloc_span(pages, 0, SpanState::Large, 0).unwrap().0
    }

    /// [`large`] spans of the given sizes, allocated in order.
    fn large_spans<const N: usize>(h: &PageHeap, pages: [usize; N]) -> [&Span; N] {
        pages.map(|n| large(h, n))
    }

    /// Writes `byte` over the first `bytes` bytes of span `s`.
    ///
    /// # Safety
    ///
    /// `s` is a live span of `h`, committed for at least `bytes` bytes.
    unsafe fn fill(h: &PageHeap, s: &Span, byte: u8, bytes: usize) {
        // SAFETY: the caller's contract: `bytes` committed bytes at the
        // span's address.
        unsafe { (h.span_addr(s) as *mut u8).write_bytes(byte, bytes) };
    }

    /// With a finite decay the heap keeps at most max(1/8 of the pages in
    /// use, `DIRTY_FLOOR_BYTES`) dirty: freeing 32 MiB next to 8 MiB in use
    /// releases the excess at once, and nothing is lost (the free bytes
    /// are all there, clean or dirty).
    #[test]
    fn dirty_free_pages_are_capped() {
        assert!(crate::decay::decay_ms() > 0, "the cap needs a finite decay");
        let h = heap();
        let pages = (1 << 20) / PAGE_BYTES;
        let spans: std::vec::Vec<&Span> = (0..40).map(|_| large(h, pages)).collect();
        for &s in &spans {
            // SAFETY: a live span of `pages` committed pages.
            unsafe { fill(h, s, 0x3c, pages * PAGE_BYTES) };
        }
        let released0 = h.stats().released_total_bytes;
        // Every other span first (no coalescing), then the rest of the 32.
        for &s in spans[..32]
            .iter()
            .step_by(2)
            .chain(spans[1..32].iter().step_by(2))
        {
            // SAFETY: each span is ours and freed once.
            unsafe { h.free_span(s) };
            let st = h.stats();
            let cap = (st.small_bytes + st.large_bytes)
                .div_ceil(8)
                .max(DIRTY_FLOOR_BYTES);
            assert!(
                st.free_dirty_bytes <= cap,
                "{} dirty > cap {cap}",
                st.free_dirty_bytes
            );
        }
        h.check_invariants();
        let st = h.stats();
        assert_eq!(st.large_bytes, 8 << 20);
        assert!(st.free_bytes >= 32 << 20, "{st:?}");
        assert!(st.free_dirty_bytes <= DIRTY_FLOOR_BYTES, "{st:?}");
        assert!(
            st.free_dirty_bytes >= 1 << 20,
            "the last free stays dirty: {st:?}"
        );
        assert!(
            st.released_total_bytes - released0 >= (32 << 20) - DIRTY_FLOOR_BYTES,
            "{st:?}"
        );
        for &s in &spans[32..] {
            // SAFETY: as above.
            unsafe { h.free_span(s) };
        }
        h.check_invariants();
    }

    #[test]
    fn alloc_free_coalesce() {
        let h = heap();
        let (a, z) = h.alloc_span(3, 0, SpanState::Large, 0).unwrap();
        assert!(z);
        let b = large(h, 5);
        let (c, _) = h.alloc_span(2, 0, SpanState::Small, 7).unwrap();
        let a0 = a.start();
        assert_eq!(h.span_addr(a) % CHUNK_ALIGN_BYTES, 0, "a fresh chunk");
        assert_eq!(b.start(), a0 + 3);
        assert_eq!(c.start(), a0 + 8);
        let addr = h.span_addr(b);
        // SAFETY: the span is committed and ours.
        unsafe { (addr as *mut u8).write_bytes(1, 5 * PAGE_BYTES) };
        assert!(core::ptr::eq(h.span_of(addr + 12345).unwrap(), b));
        assert_eq!(h.span_of(h.map.page_addr(a0 + 12)).map(|s| s.state()), None);
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
        assert_eq!(
            h.stats().free_bytes,
            FIRST_CHUNK_BYTES,
            "one free span again"
        );
        assert_eq!(h.stats().committed_bytes, FIRST_CHUNK_BYTES);
        // The coalesced 10 pages are reused.
        let (d, z) = h.alloc_span(10, 0, SpanState::Large, 0).unwrap();
        assert_eq!(d.start(), a0);
        assert!(!z, "dirty pages are not reported zeroed");
        h.check_invariants();
        // SAFETY: d is ours.
        unsafe { h.free_span(d) };
        // (Dirty pages are counted conservatively when a span is split.)
        assert!(h.release_all() >= 10 * PAGE_BYTES);
        let (e, z) = h.alloc_span(4, 0, SpanState::Large, 0).unwrap();
        assert!(z, "released pages read as zero");
        // SAFETY: committed memory of span e.
        assert_eq!(unsafe { *((h.span_addr(e) + 5000) as *const u8) }, 0);
        h.check_invariants();
    }

    #[test]
    fn aligned_spans() {
        let h = heap();
        let _x = large(h, 1);
        for align in [16 << 10, 64 << 10, 1 << 20] {
            let (s, _) = h.alloc_span(3, align, SpanState::Large, 0).unwrap();
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
                let (s, _) = h.alloc_span(n, align, SpanState::Large, 0).unwrap();
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
        assert_eq!(st.free_bytes, h.inner.lock().total_pages << PAGE_SHIFT);
    }

    #[test]
    fn resize_large_in_place() {
        let h = heap();
        let [a, b, c] = large_spans(h, [4, 4, 2]);
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
    fn grows_in_chunks_and_reuses() {
        let h = heap();
        // 3000 one-page spans (3000 records: several record blocks) and 40
        // spans of 2 MiB: the heap grows through several chunks.
        let mut small: std::vec::Vec<&Span> = std::vec::Vec::new();
        let mut big: std::vec::Vec<&Span> = std::vec::Vec::new();
        for i in 0..3000 {
            let (s, _) = h.alloc_span(1, 0, SpanState::Small, 3).unwrap();
            // SAFETY: the span's page is ours and mapped.
            unsafe { *(h.span_addr(s) as *mut u64) = i };
            small.push(s);
            if i % 75 == 0 {
                big.push(
                    h.alloc_span(CHUNK_ALIGN_BYTES >> PAGE_SHIFT, 0, SpanState::Large, 0)
                        .unwrap()
                        .0,
                );
            }
        }
        h.check_invariants();
        let used = (3000 << PAGE_SHIFT) + big.len() * CHUNK_ALIGN_BYTES;
        let mapped = h.stats().committed_bytes;
        assert!(mapped >= used);
        assert!(
            mapped <= 2 * used + CHUNK_BYTES,
            "mapped {mapped} for {used} in use: not proportional"
        );
        for (i, s) in small.iter().enumerate() {
            // SAFETY: as above.
            assert_eq!(unsafe { *(h.span_addr(s) as *const u64) }, i as u64);
            let e = h.map.get_raw(s.start());
            assert_eq!(PageMap::small_of(e), (3, 0));
            assert!(core::ptr::eq(h.record(SpanId::from_entry(e)), *s));
        }
        for s in small.drain(..).chain(big.drain(..)) {
            // SAFETY: ours, dropped from the lists.
            unsafe { h.free_span(s) };
        }
        h.check_invariants();
        assert_eq!(h.stats().free_bytes, mapped);
        // Everything fits again without growing.
        for _ in 0..3000 {
            small.push(h.alloc_span(1, 0, SpanState::Small, 3).unwrap().0);
        }
        assert_eq!(h.stats().committed_bytes, mapped, "no growth on reuse");
        h.check_invariants();
    }

    #[test]
    fn free_spans_give_back_address_space() {
        let h = heap();
        let [a, b, c] = large_spans(h, [4, 8, 4]);
        let b0 = b.start();
        let mapped = h.stats().committed_bytes;
        // SAFETY: b is ours.
        unsafe { h.free_span(b) };
        // b's 8 pages and the free tail of the chunk go back; a and c stay.
        let tail = mapped - (16 << PAGE_SHIFT);
        assert_eq!(h.give_back_address_space(), (8 << PAGE_SHIFT) + tail);
        assert_eq!(h.stats().committed_bytes, 8 << PAGE_SHIFT);
        assert_eq!(h.stats().free_bytes, 0);
        assert!(h.span_of(h.map.page_addr(b0)).is_none());
        h.check_invariants();
        assert_eq!(h.inner.lock().nchunks, 2, "the chunk split around the hole");
        // SAFETY: a and c are mapped and ours.
        unsafe {
            fill(h, a, 7, 4 << PAGE_SHIFT);
            fill(h, c, 7, 4 << PAGE_SHIFT);
            h.free_span(a);
            h.free_span(c);
        }
        h.check_invariants();
        assert_eq!(h.stats().free_bytes, 8 << PAGE_SHIFT);
        // The heap grows again, and the hole is not ours any more.
        let d = large(h, 16);
        assert!(
            d.start() + 16 <= b0 || d.start() >= b0 + 8,
            "not in the hole"
        );
        h.check_invariants();
    }

    #[test]
    fn hugepages_from_a_heap_size_on() {
        let h: &'static PageHeap = std::boxed::Box::leak(std::boxed::Box::new(PageHeap::new()));
        assert!(h.init(true));
        let (a, _) = h.alloc_span(1, 0, SpanState::Small, 2).unwrap();
        assert!(!h.uses_thp(), "a small heap gets no hugepages");
        let (b, _) = h
            .alloc_span(THP_MIN_HEAP_BYTES >> PAGE_SHIFT, 0, SpanState::Large, 0)
            .unwrap();
        assert_eq!(h.uses_thp(), os::thp_available());
        h.check_invariants();
        // SAFETY: ours.
        unsafe {
            h.free_span(a);
            h.free_span(b);
        }
    }

    #[test]
    fn exhaustion_returns_none() {
        let h = heap();
        assert!(h
            .alloc_span(usize::MAX / 4, 0, SpanState::Large, 0)
            .is_none());
        // 2^40 pages (8 PiB): no kernel maps that.
        assert!(h.alloc_span(1 << 40, 0, SpanState::Large, 0).is_none());
        assert!(h
            .alloc_span(u32::MAX as usize / 2 + 1, 0, SpanState::Large, 0)
            .is_none());
        h.check_invariants();
        // A request bigger than the usual chunk gets a chunk of its own.
        let (s, z) = h
            .alloc_span((CHUNK_BYTES >> PAGE_SHIFT) * 2, 0, SpanState::Large, 0)
            .unwrap();
        assert!(z);
        h.check_invariants();
        // SAFETY: s is ours.
        unsafe { h.free_span(s) };
        h.check_invariants();
    }

    #[test]
    fn decay_releases_old_dirty_spans_only() {
        let h = heap();
        let [a, b, _c] = large_spans(h, [8, 8, 1]);
        // The rest of the first chunk is free and clean.
        let clean = h.stats().free_bytes;
        // SAFETY: a and b are ours and committed.
        unsafe {
            fill(h, a, 1, 8 * PAGE_BYTES);
            fill(h, b, 1, 8 * PAGE_BYTES);
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
        assert_eq!(
            (st.free_dirty_bytes, st.free_bytes),
            (0, clean + 16 * PAGE_BYTES)
        );
        h.check_invariants();
        // Released pages read as zero and are reported so.
        let (d, z) = h.alloc_span(16, 0, SpanState::Large, 0).unwrap();
        assert!(z);
        // SAFETY: committed memory of span d.
        assert_eq!(unsafe { *((h.span_addr(d) + 100) as *const u8) }, 0);
    }

    #[test]
    fn decay_releases_whole_hugepages_first() {
        let h = heap();
        // As if the heap had reached the hugepage size (the policy applies
        // then only).
        h.inner.lock().thp_on = true;
        let hp = CHUNK_ALIGN_BYTES >> PAGE_SHIFT;
        let n = hp + 88;
        // `b` starts the (hugepage-aligned) first chunk; `c` right after it
        // stays in use, so freed `b` is one free span: one whole hugepage
        // and 88 pages that share the next hugepage with `c`.
        let [b, _c] = large_spans(h, [n, 1]);
        assert_eq!(h.span_addr(b) % CHUNK_ALIGN_BYTES, 0);
        // SAFETY: b is ours and committed.
        unsafe {
            fill(h, b, 1, n * PAGE_BYTES);
            h.free_span(b);
        }
        let now = crate::decay::now_ms();
        let released = h.stats().released_total_bytes;
        assert_eq!(h.stats().free_dirty_bytes, n * PAGE_BYTES);
        // Due: the whole hugepage goes, the 88 pages wait for twice the
        // delay.
        let due = h.decay(now + 1000, 1000);
        assert!(due > now + 1000 && due <= now + 2000, "{due} {now}");
        let st = h.stats();
        assert_eq!(st.free_dirty_bytes, 88 * PAGE_BYTES);
        assert_eq!(st.released_total_bytes - released, hp * PAGE_BYTES);
        h.check_invariants();
        // A second pass before then changes nothing.
        assert_eq!(h.decay(now + 1500, 1000), due);
        assert_eq!(h.stats().free_dirty_bytes, 88 * PAGE_BYTES);
        // Then the rest.
        assert_eq!(h.decay(now + 2000, 1000), u64::MAX);
        assert_eq!(h.stats().free_dirty_bytes, 0);
        h.check_invariants();
        // The released span reads as zero and is reported so.
        let (d, z) = h.alloc_span(n, 0, SpanState::Large, 0).unwrap();
        assert!(z);
        assert_eq!(h.span_addr(d), h.span_addr(b));
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

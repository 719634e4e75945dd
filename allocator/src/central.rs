//! Central free lists: one per size class, each behind its own short lock.
//!
//! A central list owns the spans of its class. It serves batches to per-CPU
//! caches (`pop_batch`) and takes batches back (`push_batch`). In front of the
//! spans sits a small *transfer* stack of up to [`TRANSFER_SLOTS`] objects, so
//! a batch that one CPU flushes and another CPU refills costs two copies, not
//! a page-map lookup per object. Its capacity per class is about 128 KiB of
//! objects (`SizeClass::transfer_capacity`), about 5.5 MiB over all classes.
//!
//! Objects in a span are handed out from its intrusive free list first, then
//! carved from the untouched tail (`carved`). A span whose objects have all
//! come back is returned to the page heap at once (the page heap keeps it
//! dirty for reuse and releases memory only past its threshold, so an empty
//! span does not thrash the OS).
//!
//! Invariants (the class's lock held; `check_invariants`):
//! - `free_objects` = `transfer_len` + sum over this class's spans of
//!   (objects per span - `allocated`);
//! - a span is on the non-empty list iff it has a free or uncarved object;
//! - a span with `allocated == 0` is not owned by the central list (it went
//!   back to the page heap);
//! - each span's free list has exactly `carved - allocated` entries.
//!
//! Lock order: central lock, then page-heap lock.

use crate::double_free;
use crate::lock::Mutex;
use crate::page_heap::PageHeap;
use crate::size_class::{SizeClass, NUM_CLASSES, PAGE_SHIFT};
use crate::span::{ClassSpans, Span, SpanId, SpanKey, SpanState};
use core::sync::atomic::{AtomicUsize, Ordering};

/// Capacity of the transfer stack of each class.
pub const TRANSFER_SLOTS: usize = 64;

struct Inner {
    nonempty: SpanId,
    transfer: [*mut u8; TRANSFER_SLOTS],
    transfer_len: usize,
    free_objects: usize,
    span_objects: usize,
    /// The key to the fields of this class's spans.
    key: SpanKey<ClassSpans>,
}

// SAFETY: the raw pointers are free objects owned by this list, moved between
// threads only under the lock.
unsafe impl Send for Inner {}

/// The central free list of one size class.
pub struct Central {
    inner: Mutex<Inner>,
    free_objects: AtomicUsize,
    span_objects: AtomicUsize,
}

/// One central list per class (slot 0 unused).
pub struct CentralLists {
    lists: [Central; NUM_CLASSES],
}

impl CentralLists {
    /// Empty lists.
    pub const fn new() -> Self {
        CentralLists {
            lists: [const { Central::new() }; NUM_CLASSES],
        }
    }
    /// The list for `class`.
    #[inline(always)]
    pub fn get(&self, class: SizeClass) -> &Central {
        &self.lists[class.index()]
    }
    /// All lists (for fork handling and statistics), slot 0 included.
    pub fn all(&self) -> &[Central; NUM_CLASSES] {
        &self.lists
    }
}

impl Default for CentralLists {
    fn default() -> Self {
        Self::new()
    }
}

impl Central {
    /// An empty list.
    pub const fn new() -> Self {
        Central {
            inner: Mutex::new(Inner {
                nonempty: SpanId::NONE,
                transfer: [core::ptr::null_mut(); TRANSFER_SLOTS],
                transfer_len: 0,
                free_objects: 0,
                span_objects: 0,
                // SAFETY: the one key of this list, inside the data of its
                // lock.
                key: unsafe { SpanKey::new() },
            }),
            free_objects: AtomicUsize::new(0),
            span_objects: AtomicUsize::new(0),
        }
    }

    /// The lock, for fork handling.
    pub fn raw_lock(&self) -> &crate::lock::RawLock {
        self.inner.raw()
    }

    /// (free objects held here, objects in this class's spans); racy.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.free_objects.load(Ordering::Relaxed),
            self.span_objects.load(Ordering::Relaxed),
        )
    }

    fn publish(&self, g: &Inner) {
        self.free_objects.store(g.free_objects, Ordering::Relaxed);
        self.span_objects.store(g.span_objects, Ordering::Relaxed);
    }

    /// Fills `out` with up to `out.len()` free objects of `class`; returns
    /// how many (0 only when the heap is out of memory).
    pub fn pop_batch(&self, heap: &PageHeap, class: SizeClass, out: &mut [*mut u8]) -> usize {
        let mut g = self.inner.lock();
        let mut n = 0;
        while n < out.len() && g.transfer_len > 0 {
            g.transfer_len -= 1;
            out[n] = g.transfer[g.transfer_len];
            n += 1;
        }
        let size = class.size_bytes();
        let objs = class.objects_per_span() as u32;
        let key = crate::fast::FAST.key();
        while n < out.len() {
            let id = g.nonempty;
            if id.is_none() {
                let Some((s, _zeroed)) =
                    heap.alloc_span(class.span_pages(), 0, SpanState::Small, class.index() as u8)
                else {
                    break;
                };
                g.span_objects += objs as usize;
                g.free_objects += objs as usize;
                self.list_push(heap, &mut g, s);
                continue;
            }
            let s = heap.record(id);
            let base = heap.span_addr(s);
            // SAFETY: `s` is a SMALL span of this class (on our list) and we
            // hold the class lock.
            let l = unsafe { s.locked(&mut g.key) };
            while n < out.len() {
                let o = if !l.freelist.is_null() {
                    let o = l.freelist;
                    // SAFETY: a free object of at least 8 bytes, 8-aligned,
                    // whose first word is the mark and link we wrote; it
                    // keeps the mark (it stays free, in a cache).
                    let w = unsafe { o.cast::<u64>().read() };
                    l.freelist = double_free::decode_link(key, base, o, w);
                    o
                } else if l.carved < objs {
                    let o = (base + l.carved as usize * size) as *mut u8;
                    l.carved += 1;
                    // SAFETY: a never-used object of this span, ours under
                    // the class lock; it gets the free mark.
                    unsafe { o.cast::<u64>().write(key) };
                    o
                } else {
                    break;
                };
                l.allocated += 1;
                out[n] = o;
                n += 1;
            }
            if l.freelist.is_null() && l.carved == objs {
                self.list_remove(heap, &mut g, s);
            }
        }
        g.free_objects -= n;
        self.publish(&g);
        n
    }

    /// Takes back free objects of `class`.
    ///
    /// # Safety
    /// Every item is an object of `class` from this allocator that is no
    /// longer in use and appears once (not in any cache or list).
    pub unsafe fn push_batch(&self, heap: &PageHeap, class: SizeClass, items: &[*mut u8]) {
        let mut g = self.inner.lock();
        g.free_objects += items.len();
        let mut rest = items;
        let room = class.transfer_capacity().saturating_sub(g.transfer_len);
        if rest.len() <= room {
            let at = g.transfer_len;
            g.transfer[at..at + rest.len()].copy_from_slice(rest);
            g.transfer_len += rest.len();
            rest = &[];
        }
        for &o in rest {
            // SAFETY: per the contract `o` is a free object of `class`.
            unsafe { self.return_to_span(heap, &mut g, class, o) };
        }
        self.publish(&g);
    }

    /// Whether `p`, an object start of `class`, is free here: in the
    /// transfer stack or on its span's free list (exact, under the lock).
    pub fn contains(&self, heap: &PageHeap, class: SizeClass, p: *mut u8) -> bool {
        let mut g = self.inner.lock();
        if g.transfer[..g.transfer_len].contains(&p) {
            return true;
        }
        let s = match heap.span_of(p as usize) {
            Some(s) if s.state() == SpanState::Small && s.class() as usize == class.index() => s,
            _ => return false,
        };
        let base = heap.span_addr(s);
        let key = crate::fast::FAST.key();
        // SAFETY: SMALL span of this class, class lock held.
        let l = unsafe { s.locked(&mut g.key) };
        let mut o = l.freelist;
        let mut steps = 0;
        while !o.is_null() && steps <= class.objects_per_span() {
            if o == p {
                return true;
            }
            // SAFETY: free-list objects are free objects of this span.
            let w = unsafe { o.cast::<u64>().read() };
            o = double_free::decode_link(key, base, o, w);
            steps += 1;
        }
        drop(g);
        false
    }

    /// Moves every object of the transfer stack back to its span (so empty
    /// spans can go back to the page heap). Used by `trim`.
    pub fn flush(&self, heap: &PageHeap, class: SizeClass) {
        let mut g = self.inner.lock();
        while g.transfer_len > 0 {
            g.transfer_len -= 1;
            let o = g.transfer[g.transfer_len];
            // SAFETY: transfer objects are free objects of this class.
            unsafe { self.return_to_span(heap, &mut g, class, o) };
        }
        self.publish(&g);
    }

    /// # Safety
    /// `o` is a free object of `class`, present nowhere else; lock held (g).
    unsafe fn return_to_span(&self, heap: &PageHeap, g: &mut Inner, class: SizeClass, o: *mut u8) {
        let s = match heap.span_of(o as usize) {
            Some(s) if s.state() == SpanState::Small && s.class() as usize == class.index() => s,
            _ => crate::util::invalid_pointer("free()", o),
        };
        // SAFETY: SMALL span of this class, class lock held.
        let l = unsafe { s.locked(&mut g.key) };
        if l.allocated == 0 {
            crate::util::invalid_pointer("free()", o);
        }
        let link = double_free::encode_link(crate::fast::FAST.key(), heap.span_addr(s), l.freelist);
        // SAFETY: `o` is a free object we own; storing the mark and link in
        // its first word is allowed (objects are >= 8 bytes and 8-aligned).
        unsafe { o.cast::<u64>().write(link) };
        l.freelist = o;
        l.allocated -= 1;
        if l.allocated == 0 {
            let objs = class.objects_per_span();
            if l.on_list {
                self.list_remove(heap, g, s);
            }
            g.span_objects -= objs;
            g.free_objects -= objs;
            // SAFETY: every object of the span is free and we remove the span
            // from our bookkeeping; nothing references it any more.
            unsafe { heap.free_span(s) };
        } else if !l.on_list {
            self.list_push(heap, g, s);
        }
    }

    fn list_push(&self, heap: &PageHeap, g: &mut Inner, s: &Span) {
        let id = self.id(heap, s);
        // SAFETY: class lock held; s is SMALL of this class.
        let l = unsafe { s.locked(&mut g.key) };
        l.prev = SpanId::NONE;
        l.next = g.nonempty;
        l.on_list = true;
        if g.nonempty.is_some() {
            // SAFETY: class lock held; the head is a span of this class.
            unsafe { heap.record(g.nonempty).locked(&mut g.key) }.prev = id;
        }
        g.nonempty = id;
    }

    fn list_remove(&self, heap: &PageHeap, g: &mut Inner, s: &Span) {
        // SAFETY: class lock held; s is SMALL of this class.
        let l = unsafe { s.locked(&mut g.key) };
        let (prev, next) = (l.prev, l.next);
        l.on_list = false;
        l.prev = SpanId::NONE;
        l.next = SpanId::NONE;
        if prev.is_some() {
            // SAFETY: class lock held; neighbours are spans of this class.
            unsafe { heap.record(prev).locked(&mut g.key) }.next = next;
        } else {
            g.nonempty = next;
        }
        if next.is_some() {
            // SAFETY: as above.
            unsafe { heap.record(next).locked(&mut g.key) }.prev = prev;
        }
    }

    fn id(&self, heap: &PageHeap, s: &Span) -> SpanId {
        heap.map.get(s.start())
    }

    /// Checks the invariants in the module doc for the spans on the
    /// non-empty list (debug builds only).
    pub fn check_invariants(&self, heap: &PageHeap, class: SizeClass) {
        if !cfg!(debug_assertions) {
            return;
        }
        let mut g = self.inner.lock();
        let objs = class.objects_per_span();
        let mut listed_free = 0;
        let mut id = g.nonempty;
        let mut prev = SpanId::NONE;
        while id.is_some() {
            let s = heap.record(id);
            assert_eq!(s.state(), SpanState::Small);
            assert_eq!(s.class() as usize, class.index());
            assert_eq!(s.pages(), class.span_pages());
            // SAFETY: class lock held.
            let l = unsafe { s.locked(&mut g.key) };
            assert!(l.on_list);
            assert_eq!(l.prev, prev);
            assert!(l.allocated >= 1 || l.carved == 0 || !l.freelist.is_null());
            let mut fl = 0;
            let mut o = l.freelist;
            while !o.is_null() {
                let span_base = heap.span_addr(s);
                let off = o as usize - span_base;
                assert!(off < s.pages() << PAGE_SHIFT);
                assert_eq!(off % class.size_bytes(), 0);
                fl += 1;
                assert!(fl <= objs);
                // SAFETY: list links are stored in free objects.
                let w = unsafe { o.cast::<u64>().read() };
                o = double_free::decode_link(crate::fast::FAST.key(), span_base, o, w);
            }
            assert_eq!(fl, (l.carved - l.allocated) as usize);
            assert!(fl > 0 || (l.carved as usize) < objs);
            listed_free += objs - l.allocated as usize;
            prev = id;
            id = l.next;
        }
        assert!(g.free_objects >= listed_free + g.transfer_len);
        assert!(g.free_objects <= g.span_objects);
    }
}

impl Default for Central {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page_heap::tests::heap;

    #[test]
    fn pop_push_returns_spans() {
        let h = heap();
        let c = Central::new();
        for class in SizeClass::all() {
            let objs = class.objects_per_span();
            let want = objs * 2 + 3;
            let mut got = std::vec::Vec::new();
            let mut buf = [core::ptr::null_mut(); 32];
            while got.len() < want {
                let k = (want - got.len()).min(class.batch());
                let n = c.pop_batch(h, class, &mut buf[..k]);
                assert_eq!(n, k);
                got.extend_from_slice(&buf[..n]);
            }
            // distinct, aligned, inside spans, writable
            let mut sorted = got.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), got.len());
            for &o in &got {
                assert_eq!(o as usize % 8, 0);
                // SAFETY: o is an object of `class` we own.
                unsafe { o.write_bytes(0x5a, class.size_bytes()) };
            }
            c.check_invariants(h, class);
            for ch in got.chunks(class.batch()) {
                // SAFETY: each object appears once and is free.
                unsafe { c.push_batch(h, class, ch) };
            }
            c.flush(h, class);
            c.check_invariants(h, class);
            assert_eq!(c.counts(), (0, 0), "class {class:?}: all spans returned");
        }
        h.check_invariants();
        assert_eq!(h.stats().small_bytes, 0);
    }
}

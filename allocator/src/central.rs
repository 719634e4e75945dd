//! Central free lists: one per size class, each behind its own short lock.
//!
//! A central list owns the spans of its class. It serves batches to per-CPU
//! caches (`pop_batch`) and takes batches back (`push_batch`). In front of the
//! spans sits a *transfer* stack of up to [`TRANSFER_SLOTS`] objects, so
//! a batch that one CPU flushes and another CPU refills costs two copies, not
//! a page-map lookup per object. Its capacity per class is about 128 KiB of
//! objects (`SizeClass::transfer_capacity`), about 6 MiB over all classes; a
//! flush puts on it as much as fits and only the rest back into spans.
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
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Capacity of the transfer stack of each class (the class's own limit is
/// `SizeClass::transfer_capacity`, about 128 KiB of objects). The stacks are
/// static: 54 x 128 slots is 54 KiB of the library's bss, which counts
/// against `RLIMIT_AS` (256 slots cost the 30 MiB `ffi_as_limit` case one
/// of its six 4 MiB blocks).
pub const TRANSFER_SLOTS: usize = 128;

struct Inner {
    nonempty: SpanId,
    transfer: [*mut u8; TRANSFER_SLOTS],
    transfer_len: usize,
    /// The lowest `transfer_len` since the last `plunder`: the objects
    /// below it sat there unused all that time.
    transfer_low: usize,
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
    /// What the miss path did here (see [`MoveStats`]).
    pub moves: MoveStats,
}

/// Counters of one class's central list, for `stats=1`: how often the
/// per-CPU caches come here, how many objects each visit moves, how many of
/// them the transfer stack serves (two copies) rather than the spans (a
/// page-map lookup and a span-record update per object), how often the lock
/// was found held, and (with `stats=1` only, from the time-stamp counter) how
/// long it is held.
///
/// Counting rule: written only under the class lock, with a relaxed load and
/// store (no read-modify-write on the miss path); read racily.
pub struct MoveStats {
    /// `pop_batch` calls (refills and direct allocations).
    pub pops: AtomicU64,
    /// Objects they handed out.
    pub pop_objects: AtomicU64,
    /// Of those, objects taken from the transfer stack.
    pub pop_transfer: AtomicU64,
    /// `push_batch` calls (overflow flushes, drains, direct frees).
    pub pushes: AtomicU64,
    /// Objects they took back.
    pub push_objects: AtomicU64,
    /// Of those, objects that went onto the transfer stack.
    pub push_transfer: AtomicU64,
    /// Spans taken from / returned to the page heap.
    pub spans_new: AtomicU64,
    /// Spans whose objects all came back (returned to the page heap).
    pub spans_freed: AtomicU64,
    /// Acquisitions that found the lock held (a relaxed peek before
    /// locking).
    pub contended: AtomicU64,
    /// Time-stamp-counter ticks the lock was held by pops and pushes
    /// (`stats=1` only: zero otherwise).
    pub hold_ticks: AtomicU64,
}

impl MoveStats {
    const fn new() -> Self {
        MoveStats {
            pops: AtomicU64::new(0),
            pop_objects: AtomicU64::new(0),
            pop_transfer: AtomicU64::new(0),
            pushes: AtomicU64::new(0),
            push_objects: AtomicU64::new(0),
            push_transfer: AtomicU64::new(0),
            spans_new: AtomicU64::new(0),
            spans_freed: AtomicU64::new(0),
            contended: AtomicU64::new(0),
            hold_ticks: AtomicU64::new(0),
        }
    }
}

/// Adds `n` to a counter only the lock holder writes.
#[inline(always)]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// The time-stamp counter when `stats=1` counts (0 otherwise, or off x86-64).
#[inline(always)]
fn ticks_if_counting() -> u64 {
    #[cfg(target_arch = "x86_64")]
    if crate::global::counting() {
        // SAFETY: rdtsc has no preconditions on x86-64.
        return unsafe { core::arch::x86_64::_rdtsc() };
    }
    0
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
                transfer_low: 0,
                free_objects: 0,
                span_objects: 0,
                // SAFETY: the one key of this list, inside the data of its
                // lock.
                key: unsafe { SpanKey::new() },
            }),
            free_objects: AtomicUsize::new(0),
            span_objects: AtomicUsize::new(0),
            moves: MoveStats::new(),
        }
    }

    /// Takes the class lock for a pop or a push, noting whether it was
    /// found held; returns the guard and the start tick (see `MoveStats`).
    #[inline(always)]
    fn lock_counted(&self) -> (crate::lock::MutexGuard<'_, Inner>, u64) {
        let held = self.inner.raw().is_locked();
        let g = self.inner.lock();
        if held {
            bump(&self.moves.contended, 1);
        }
        (g, ticks_if_counting())
    }

    /// Adds the ticks since `t0` (0: not counting) to the hold time; lock
    /// held.
    #[inline(always)]
    fn note_hold(&self, t0: u64) {
        if t0 != 0 {
            bump(&self.moves.hold_ticks, ticks_if_counting().wrapping_sub(t0));
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
        let (mut g, t0) = self.lock_counted();
        // The transfer stack's top objects as one block, in stack order:
        // the most recently flushed ends up nearest `out`'s end, which the
        // caller hands out first.
        let mut n = out.len().min(g.transfer_len);
        let len = g.transfer_len;
        out[..n].copy_from_slice(&g.transfer[len - n..len]);
        g.transfer_len = len - n;
        g.transfer_low = g.transfer_low.min(g.transfer_len);
        bump(&self.moves.pop_transfer, n as u64);
        let size = class.size_bytes();
        let objs = class.objects_per_span() as u32;
        let key = crate::fast::FAST.key();
        // Objects carved from untouched span tails at `out[i]`, i < 64: they
        // get their mark after the lock is released (the first write to a
        // fresh page faults, and the fault need not stall the other CPUs
        // refilling this class). Carved objects are ours alone from the
        // moment `carved` moves past them.
        let mut unmarked = 0u64;
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
                bump(&self.moves.spans_new, 1);
                self.list_push(heap, &mut g, s);
                continue;
            }
            let s = heap.record(id);
            let base = heap.span_addr(s);
            // SAFETY: `s` is a SMALL span of this class (on our list) and we
            // hold the class lock.
            let l = unsafe { s.locked(&mut g.key) };
            while n < out.len() && !l.freelist.is_null() {
                let o = l.freelist;
                // SAFETY: a free object of at least 8 bytes, 8-aligned,
                // whose first word is the mark and link we wrote; it keeps
                // the mark (it stays free, in a cache).
                let w = unsafe { o.cast::<u64>().read() };
                l.freelist = double_free::decode_link(key, base, o, w);
                l.allocated += 1;
                out[n] = o;
                n += 1;
            }
            // Then a run carved from the untouched tail, highest address
            // first: the caller hands `out` out from its end, so a fresh
            // span's objects go out in ascending address order, as a
            // program's consecutive allocations then do (objects allocated
            // together share lines and pages, and a structure built in
            // allocation order is walked forwards, which the hardware
            // prefetchers follow; descending objects cost python3 about 12%).
            let run = (out.len() - n).min((objs - l.carved) as usize);
            for j in 0..run {
                let o = (base + (l.carved as usize + run - 1 - j) * size) as *mut u8;
                if n + j < 64 {
                    unmarked |= 1 << (n + j);
                } else {
                    // SAFETY: a never-used object of this span, ours under
                    // the class lock; it gets the free mark.
                    unsafe { o.cast::<u64>().write(key) };
                }
                out[n + j] = o;
            }
            l.carved += run as u32;
            l.allocated += run as u32;
            n += run;
            if l.freelist.is_null() && l.carved == objs {
                self.list_remove(heap, &mut g, s);
            }
        }
        g.free_objects -= n;
        self.publish(&g);
        bump(&self.moves.pops, 1);
        bump(&self.moves.pop_objects, n as u64);
        self.note_hold(t0);
        drop(g);
        while unmarked != 0 {
            let i = unmarked.trailing_zeros() as usize;
            unmarked &= unmarked - 1;
            // SAFETY: `out[i]` is a never-used object carved above, ours
            // alone (no list holds it); objects are >= 8 bytes, 8-aligned.
            // It gets the free mark before the caller stores it anywhere.
            unsafe { out[i].cast::<u64>().write(key) };
        }
        n
    }

    /// Takes back free objects of `class`.
    ///
    /// # Safety
    /// Every item is an object of `class` from this allocator that is no
    /// longer in use and appears once (not in any cache or list).
    pub unsafe fn push_batch(&self, heap: &PageHeap, class: SizeClass, items: &[*mut u8]) {
        let (mut g, t0) = self.lock_counted();
        g.free_objects += items.len();
        // As much as fits goes onto the transfer stack (two copies); only
        // the rest takes the per-object span work.
        let room = class.transfer_capacity().saturating_sub(g.transfer_len);
        let (fits, rest) = items.split_at(items.len().min(room));
        let at = g.transfer_len;
        g.transfer[at..at + fits.len()].copy_from_slice(fits);
        g.transfer_len += fits.len();
        bump(&self.moves.push_transfer, fits.len() as u64);
        for &o in rest {
            // SAFETY: per the contract `o` is a free object of `class`.
            unsafe { self.return_to_span(heap, &mut g, class, o) };
        }
        self.publish(&g);
        bump(&self.moves.pushes, 1);
        bump(&self.moves.push_objects, items.len() as u64);
        self.note_hold(t0);
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
        g.transfer_low = 0;
        self.publish(&g);
    }

    /// Gives the objects that stayed at the bottom of the transfer stack
    /// since the previous call (below its low-water mark: no refill needed
    /// them) back to their spans, so that the spans they pin can reach the
    /// page heap; a stack in steady use keeps what it uses. Run by the
    /// decay pass, a quarter of the decay apart. Returns the objects the
    /// stack still holds.
    pub fn plunder(&self, heap: &PageHeap, class: SizeClass) -> usize {
        let mut g = self.inner.lock();
        let n = g.transfer_low.min(g.transfer_len);
        for i in 0..n {
            let o = g.transfer[i];
            // SAFETY: transfer objects are free objects of this class; `o`
            // leaves the stack below (the copy_within), so it is nowhere else.
            unsafe { self.return_to_span(heap, &mut g, class, o) };
        }
        let len = g.transfer_len;
        g.transfer.copy_within(n..len, 0);
        g.transfer_len = len - n;
        g.transfer_low = g.transfer_len;
        self.publish(&g);
        g.transfer_len
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
            bump(&self.moves.spans_freed, 1);
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

    fn counters(c: &Central) -> [u64; 8] {
        let m = &c.moves;
        [
            &m.pops,
            &m.pop_objects,
            &m.pop_transfer,
            &m.pushes,
            &m.push_objects,
            &m.push_transfer,
            &m.spans_new,
            &m.spans_freed,
        ]
        .map(|a| a.load(Ordering::Relaxed))
    }

    /// `n` full batches of `class` popped from `c`.
    fn pop_batches(
        h: &PageHeap,
        c: &Central,
        class: SizeClass,
        n: usize,
    ) -> std::vec::Vec<*mut u8> {
        let b = class.batch();
        let mut got = std::vec::Vec::new();
        let mut buf = [core::ptr::null_mut(); 32];
        for _ in 0..n {
            assert_eq!(c.pop_batch(h, class, &mut buf[..b]), b);
            got.extend_from_slice(&buf[..b]);
        }
        got
    }

    /// Pushes `objs` back to `c` one batch at a time.
    ///
    /// # Safety
    /// Each object is a free object of `class` from `c` and appears once.
    unsafe fn push_batches(h: &PageHeap, c: &Central, class: SizeClass, objs: &[*mut u8]) {
        for ch in objs.chunks(class.batch()) {
            // SAFETY: the caller's contract.
            unsafe { c.push_batch(h, class, ch) };
        }
    }

    #[test]
    fn move_stats_count_exactly() {
        let h = heap();
        let c = Central::new();
        let class = SizeClass::all().find(|c| c.size_bytes() == 64).unwrap();
        let (b, objs, cap) = (
            class.batch(),
            class.objects_per_span(),
            class.transfer_capacity(),
        );
        assert!(3 * b <= cap, "three batches fit on the transfer stack");
        let got = pop_batches(h, &c, class, 3);
        let mut buf = [core::ptr::null_mut(); 32];
        let spans = (3 * b).div_ceil(objs) as u64;
        let (b64, s3) = (b as u64, 3 * b as u64);
        assert_eq!(counters(&c), [3, s3, 0, 0, 0, 0, spans, 0]);
        // A fresh span's run comes highest address first: the caller hands
        // a batch out from its end, so the objects go out ascending.
        assert!(b < objs);
        for w in got[..b].windows(2) {
            assert_eq!(w[0] as usize, w[1] as usize + 64, "a descending run");
        }
        // SAFETY: each object appears once and is free.
        unsafe { push_batches(h, &c, class, &got) };
        assert_eq!(counters(&c), [3, s3, 0, 3, s3, s3, spans, 0]);
        // A refill is served by the transfer stack (the last batch pushed).
        assert_eq!(c.pop_batch(h, class, &mut buf[..b]), b);
        assert_eq!(buf[..b], got[2 * b..], "the last batch, as it was pushed");
        assert_eq!(counters(&c), [4, s3 + b64, b64, 3, s3, s3, spans, 0]);
        // SAFETY: as above.
        unsafe { c.push_batch(h, class, &buf[..b]) };
        c.flush(h, class);
        c.check_invariants(h, class);
        assert_eq!(counters(&c)[7], spans, "every span went back");
        assert_eq!(c.counts(), (0, 0));
    }

    /// `plunder` gives back exactly the transfer-stack objects below the
    /// low-water mark since its previous call, keeps the ones a refill
    /// used in between (in their order), and empties an idle stack in two
    /// calls; every span then goes back to the page heap.
    #[test]
    fn plunder_returns_what_the_transfer_stack_did_not_use() {
        let h = heap();
        let c = Central::new();
        let class = SizeClass::all().find(|c| c.size_bytes() == 64).unwrap();
        let b = class.batch();
        assert!(3 * b <= class.transfer_capacity());
        let got = pop_batches(h, &c, class, 3);
        let mut buf = [core::ptr::null_mut(); 32];
        // SAFETY: each object appears once and is free.
        unsafe { push_batches(h, &c, class, &got) };
        let spans = counters(&c)[6];
        // The first call only sets the mark: nothing was measured yet.
        assert_eq!(c.plunder(h, class), 3 * b);
        // A refill uses the top batch, a flush puts it back.
        assert_eq!(c.pop_batch(h, class, &mut buf[..b]), b);
        let used: std::vec::Vec<_> = buf[..b].to_vec();
        // SAFETY: as above.
        unsafe { c.push_batch(h, class, &used) };
        // The 2b objects below the mark go back to their spans.
        assert_eq!(c.plunder(h, class), b);
        c.check_invariants(h, class);
        let from_transfer = counters(&c)[2];
        assert_eq!(c.pop_batch(h, class, &mut buf[..b]), b);
        assert_eq!(
            counters(&c)[2],
            from_transfer + b as u64,
            "served by the stack"
        );
        assert_eq!(buf[..b], used[..], "kept in order");
        // SAFETY: as above.
        unsafe { c.push_batch(h, class, &buf[..b]) };
        // Unused since the last call: the rest goes back, spans included.
        assert_eq!(c.plunder(h, class), b);
        assert_eq!(c.plunder(h, class), 0);
        c.check_invariants(h, class);
        assert_eq!(c.counts(), (0, 0));
        assert_eq!(counters(&c)[7], spans, "every span went back");
    }

    #[test]
    fn push_fills_the_transfer_stack_then_the_spans() {
        let h = heap();
        let c = Central::new();
        let class = SizeClass::all().find(|c| c.size_bytes() == 256).unwrap();
        let cap = class.transfer_capacity();
        let want = cap + 5;
        let mut got = std::vec::Vec::new();
        let mut buf = [core::ptr::null_mut(); 32];
        while got.len() < want {
            let k = (want - got.len()).min(32);
            assert_eq!(c.pop_batch(h, class, &mut buf[..k]), k);
            got.extend_from_slice(&buf[..k]);
        }
        // SAFETY: each object appears once and is free.
        unsafe { c.push_batch(h, class, &got) };
        let m = counters(&c);
        assert_eq!(
            (m[4], m[5]),
            (want as u64, cap as u64),
            "all that fits, no more"
        );
        c.check_invariants(h, class);
        // The first `cap` objects were carved from whole spans, the five
        // that did not fit from one more span of their own: back on it, they
        // emptied it, and it went back to the page heap.
        let objs = class.objects_per_span();
        assert_eq!(cap % objs, 0);
        assert!(objs >= 5);
        assert_eq!((m[6], m[7]), ((cap / objs + 1) as u64, 1));
        assert_eq!(c.counts(), (cap, cap));
        assert!(got[..cap].iter().all(|&o| c.contains(h, class, o)));
        c.flush(h, class);
        assert_eq!(c.counts(), (0, 0));
    }
}

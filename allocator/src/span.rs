//! Spans: runs of contiguous pages, and their metadata records.
//!
//! A span is in exactly one state ([`SpanState`]):
//! - `Free`: owned by the page heap (its lock), linked in a free list;
//! - `Small`: carved into objects of one size class, owned by that class's
//!   central list (its lock guards `Locked`);
//! - `Large`: one block handed to the user (page-heap large allocation);
//! - `Unused`: a record on the arena's free list (page-heap lock).
//!
//! The atomic fields (`start_page`, `npages`, `class`, `state`) are written by
//! the page heap before the span's page-map entries are published, and read
//! lock-free by `free`/`usable_size`; they do not change while the span is in
//! use (small or large).

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};

atomic_state! {
    /// The state of a span record (see the module doc).
    pub enum SpanState in AtomicSpanState {
        /// Free, owned by the page heap. Fresh (zeroed) records read so.
        Free = 0,
        /// Carved into small objects of `class`.
        Small = 1,
        /// One large block in use.
        Large = 2,
        /// Record not in use (on the arena's free list).
        Unused = 3,
    }
}

/// The id of a span record in the page heap's arena; 0 ([`SpanId::NONE`])
/// names no span (an empty list, a page outside every span). The page map
/// holds ids in the low 32 bits of its entries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SpanId(u32);

impl SpanId {
    /// No span.
    pub const NONE: SpanId = SpanId(0);

    /// The id in the low 32 bits of a page-map entry (`NONE` if 0).
    #[inline(always)]
    pub const fn from_entry(entry: u64) -> SpanId {
        SpanId(entry as u32)
    }
    /// The id of arena slot `i` (`i < 2^32`: the arena holds 2^26 records).
    #[inline(always)]
    pub const fn from_index(i: usize) -> SpanId {
        SpanId(i as u32)
    }
    /// The arena slot.
    #[inline(always)]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
    /// The id as stored in a page-map entry.
    #[inline(always)]
    pub const fn entry_bits(self) -> u64 {
        self.0 as u64
    }
    /// Whether this names no span.
    #[inline(always)]
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }
    /// Whether this names a span.
    #[inline(always)]
    pub const fn is_some(self) -> bool {
        self.0 != 0
    }
}

/// Fields guarded by a lock: the page-heap lock when the span is `Free` or
/// `Unused` (or being created), the central lock of its class when
/// `Small`. Reached only through [`Span::locked`] with that lock's
/// [`SpanKey`].
#[derive(Debug)]
pub struct Locked {
    /// Previous span in the list this span is on (`NONE` = none).
    pub prev: SpanId,
    /// Next span in the list (`NONE` = none); also the arena free-list link.
    pub next: SpanId,
    /// Free: pages that may be resident (0 = all pages read as zero).
    pub dirty_pages: u32,
    /// Free with dirty pages: when its oldest dirty part became free (low
    /// 32 bits of `decay::now_ms`, compared with wrapping arithmetic).
    pub free_since: u32,
    /// Small: head of the intrusive list of freed objects.
    pub freelist: *mut u8,
    /// Small: objects handed out (to caches or users) and not returned.
    pub allocated: u32,
    /// Small: objects ever carved from the start of the span (the rest have
    /// never been touched).
    pub carved: u32,
    /// Small: whether the span is on its central's non-empty list.
    pub on_list: bool,
}

/// Which lock owns a span's [`Locked`] fields in which states.
pub trait SpanOwner {
    /// Whether spans in state `s` belong to this owner's lock.
    fn owns(s: SpanState) -> bool;
}

/// The page heap's lock: `Free` and `Unused` spans, and records it is
/// creating (which are still `Free` or `Unused` until their state is set).
pub enum HeapSpans {}
impl SpanOwner for HeapSpans {
    fn owns(s: SpanState) -> bool {
        matches!(s, SpanState::Free | SpanState::Unused)
    }
}

/// A central list's lock: the `Small` spans of its class.
pub enum ClassSpans {}
impl SpanOwner for ClassSpans {
    fn owns(s: SpanState) -> bool {
        s == SpanState::Small
    }
}

/// The key to the `Locked` fields of the spans a lock owns (`O`). One key
/// lives inside the data of each such lock (the page heap's `Inner`, each
/// central list's `Inner`), so it is reachable only through the lock's
/// guard; [`Span::locked`] borrows it mutably for as long as the fields are
/// used, so two references to span fields never overlap in time. What the
/// types cannot see is which span belongs to which lock: that is the
/// caller's part (the span's state, and for a central list its class).
pub struct SpanKey<O: SpanOwner>(PhantomData<O>);

impl<O: SpanOwner> SpanKey<O> {
    /// A key.
    ///
    /// # Safety
    /// The key is stored in the data guarded by the lock that owns the
    /// spans `O` names, one key per lock, and never moved out of it.
    pub const unsafe fn new() -> Self {
        SpanKey(PhantomData)
    }
}

/// The metadata record of one span (lives in the span arena).
pub struct Span {
    /// First page (absolute page number: address >> PAGE_SHIFT).
    pub start_page: AtomicUsize,
    /// Length in pages.
    pub npages: AtomicU32,
    /// Size class index when `Small`, 0 otherwise.
    pub class: AtomicU8,
    /// The state.
    pub state: AtomicSpanState,
    locked: UnsafeCell<Locked>,
}

// SAFETY: `locked` is only reached through `Span::locked`, which needs the
// owning lock's key borrowed mutably (see `SpanKey`); the other fields are
// atomics.
unsafe impl Sync for Span {}

impl Span {
    /// First page.
    #[inline(always)]
    pub fn start(&self) -> usize {
        self.start_page.load(Ordering::Relaxed)
    }
    /// Length in pages.
    #[inline(always)]
    pub fn pages(&self) -> usize {
        self.npages.load(Ordering::Relaxed) as usize
    }
    /// State.
    #[inline(always)]
    pub fn state(&self) -> SpanState {
        self.state.load(Ordering::Relaxed)
    }
    /// Class index (0 unless `Small`).
    #[inline(always)]
    pub fn class(&self) -> u8 {
        self.class.load(Ordering::Relaxed)
    }

    /// The lock-guarded fields, for as long as `key` stays borrowed.
    ///
    /// # Safety
    /// The span belongs to the lock `key` lives in: for [`HeapSpans`] a
    /// `Free` or `Unused` span of that page heap (checked in debug builds),
    /// for [`ClassSpans`] a `Small` span of that central list's class.
    #[inline(always)]
    pub unsafe fn locked<'a, O: SpanOwner>(&'a self, key: &'a mut SpanKey<O>) -> &'a mut Locked {
        debug_assert!(O::owns(self.state()), "span fields under the wrong lock");
        let _ = key;
        // SAFETY: the caller holds the owning lock (the key is reachable
        // only through its guard) and the span belongs to it (the contract);
        // the key stays mutably borrowed while the reference lives, so no
        // other reference to any span's fields under this lock exists.
        unsafe { &mut *self.locked.get() }
    }
}

/// Size of one span record.
pub const SPAN_RECORD_BYTES: usize = core::mem::size_of::<Span>();

//! Spans: runs of contiguous pages, and their metadata records.
//!
//! A span is in exactly one state:
//! - `FREE`: owned by the page heap (its lock), linked in a free list;
//! - `SMALL`: carved into objects of one size class, owned by that class's
//!   central list (its lock guards `Locked`);
//! - `LARGE`: one block handed to the user (page-heap large allocation).
//!
//! The atomic fields (`start_page`, `npages`, `class`, `state`) are written by
//! the page heap before the span's page-map entries are published, and read
//! lock-free by `free`/`usable_size`; they do not change while the span is in
//! use (small or large).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};

/// Span state: free, owned by the page heap.
pub const FREE: u8 = 0;
/// Span state: carved into small objects of `class`.
pub const SMALL: u8 = 1;
/// Span state: one large block in use.
pub const LARGE: u8 = 2;
/// Span state: record not in use (on the arena's free list).
pub const UNUSED: u8 = 3;

/// Fields guarded by a lock: the page-heap lock when the span is `FREE` (or
/// being created/destroyed), the central lock of its class when `SMALL`.
#[derive(Debug)]
pub struct Locked {
    /// Previous span in the list this span is on (0 = none).
    pub prev: u32,
    /// Next span in the list (0 = none); also the arena free-list link.
    pub next: u32,
    /// FREE: pages that may be resident (0 = all pages read as zero).
    pub dirty_pages: u32,
    /// FREE with dirty pages: when its oldest dirty part became free (low
    /// 32 bits of `decay::now_ms`, compared with wrapping arithmetic).
    pub free_since: u32,
    /// SMALL: head of the intrusive list of freed objects.
    pub freelist: *mut u8,
    /// SMALL: objects handed out (to caches or users) and not returned.
    pub allocated: u32,
    /// SMALL: objects ever carved from the start of the span (the rest have
    /// never been touched).
    pub carved: u32,
    /// SMALL: whether the span is on its central's non-empty list.
    pub on_list: bool,
}

/// The metadata record of one span (lives in the span arena).
pub struct Span {
    /// First page (absolute page number: address >> PAGE_SHIFT).
    pub start_page: AtomicUsize,
    /// Length in pages.
    pub npages: AtomicU32,
    /// Size class index when SMALL, 0 otherwise.
    pub class: AtomicU8,
    /// FREE, SMALL, LARGE or UNUSED.
    pub state: AtomicU8,
    locked: UnsafeCell<Locked>,
}

// SAFETY: `locked` is only accessed under the lock named by the span's state
// (see `Locked`); the other fields are atomics.
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
    /// State (FREE/SMALL/LARGE/UNUSED).
    #[inline(always)]
    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }
    /// Class index (0 unless SMALL).
    #[inline(always)]
    pub fn class(&self) -> u8 {
        self.class.load(Ordering::Relaxed)
    }

    /// The lock-guarded fields.
    ///
    /// # Safety
    /// The caller holds the lock that owns this span in its current state
    /// (page-heap lock for FREE/UNUSED or while changing state, the class's
    /// central lock for SMALL), and does not let two returned references
    /// overlap in time.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    pub unsafe fn locked(&self) -> &mut Locked {
        // SAFETY: exclusive access is guaranteed by the lock per the contract.
        unsafe { &mut *self.locked.get() }
    }
}

/// Size of one span record.
pub const SPAN_RECORD_BYTES: usize = core::mem::size_of::<Span>();

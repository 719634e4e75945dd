//! The region layout, written once: what the critical sections
//! (`arch/x86_64.rs`, through `const` operands taken from [`Header`]), the
//! try-lock discipline and the drain protocol all read and write.
//!
//! ```text
//! region r   = base + (r << REGION_SHIFT)                  (REGION_BYTES each)
//! header[c]  = region + c * 8: Header { current (index | LOCKED), end, begin }   c < MAX_CLASSES
//! header[126] = Control { init, lock }    header[127] = try-lock op counter
//! slot[i]    = region + i * 8              i >= HEADER_SLOTS
//! items of class c = slot[begin .. current], free slots = slot[current .. end]
//! ```
//!
//! # Invariants
//! - `begin <= current <= end` for every initialised, running header, and
//!   the `[begin, end)` ranges of one region are disjoint and lie after the
//!   headers; they never change after initialisation (the structure's
//!   bounds table keeps them), except while a drain has the header
//!   *stopped* (`begin = STOPPED_BEGIN`, `end = 0`: every pop sees it empty,
//!   every push sees it full).
//! - Only the commit store of a critical section (rseq) or the stack lock's
//!   holder (try-lock) writes `current`; a drain first stops the header,
//!   fences, and only then touches `current` and the slots (rseq), or holds
//!   the stack lock (try-lock).
//! - `current` is one 32-bit word: the index in bits 0..16, the try-lock's
//!   [`LOCKED`] bit 16, every other bit 0. The bit is set only in a structure
//!   driven by the try-lock discipline, so a critical section (which loads
//!   and commits the whole word) always sees the bare index.
//! - Zeroed memory is a valid, inert header (`0, 0, 0`: empty and full), so
//!   a region needs no initialisation before its first miss.

pub use crate::arch::REGION_SHIFT;
use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicPtr, AtomicU16, AtomicU32, AtomicU64, Ordering};

/// Bytes per region (one per CPU or cid).
pub const REGION_BYTES: usize = 1 << REGION_SHIFT;
/// Header slots at the start of each region (classes + 2 control words).
pub const HEADER_SLOTS: usize = 128;
/// Most classes a structure can have.
pub const MAX_CLASSES: usize = HEADER_SLOTS - 2;
/// Pointer slots available to all classes of a region together.
pub const MAX_SLOTS: usize = REGION_BYTES / 8 - HEADER_SLOTS;

const CONTROL_SLOT: usize = HEADER_SLOTS - 2;
const COUNTER_SLOT: usize = HEADER_SLOTS - 1;
/// `begin` of a stopped header (see the module docs).
pub(super) const STOPPED_BEGIN: u16 = 0xffff;

/// Which class's stack an operation uses: a header slot below
/// [`MAX_CLASSES`], checked once when the id is made, so every operation
/// addresses a header inside the region. (A class the structure was not
/// initialised with has an all-zero, inert header: empty and full.)
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ClassId(u8);

impl ClassId {
    /// Class `i`, if `i < MAX_CLASSES`.
    #[inline(always)]
    pub const fn new(i: usize) -> Option<ClassId> {
        if i < MAX_CLASSES {
            Some(ClassId(i as u8))
        } else {
            None
        }
    }
    /// The header slot.
    #[inline(always)]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// Which region an operation on a given region (a drain, a snapshot)
/// names: a CPU number or an mm_cid, as the structure is indexed. Any
/// value is accepted; one at or above `nregions` names no region.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct RegionId(pub usize);

/// The header of one class's stack in one region. The critical sections
/// address it as `region + class * 8` and its fields at their `offset_of!`
/// offsets; they write only `current` (their commit store).
#[repr(C)]
pub(crate) struct Header {
    /// The stack word: bits 0..16 the slot index one past the top item,
    /// bit 16 ([`LOCKED`]) the try-lock discipline's stack lock, the other
    /// bits 0. Under rseq the bit is never set, so the sections load and
    /// commit the word as the bare index (see `arch/x86_64.rs`); under the
    /// try-lock one compare-and-swap takes the lock and reads the index,
    /// and one store writes the new index and releases it (`trylock.rs`).
    pub(crate) current: AtomicU32,
    /// Slot index one past the last slot of the class (0 while stopped).
    pub(crate) end: AtomicU16,
    /// Slot index of the first slot of the class (`STOPPED_BEGIN` while
    /// stopped).
    pub(crate) begin: AtomicU16,
}

/// The try-lock's bit in [`Header::current`]: set while a thread holds the
/// stack (try-lock discipline only).
pub(crate) const LOCKED: u32 = 1 << 16;

impl Header {
    /// The index part of `current` (the lock bit masked off: racy readers
    /// of a try-lock structure may see it set).
    #[inline(always)]
    pub(super) fn index(&self, order: Ordering) -> u16 {
        self.current.load(order) as u16
    }
}

/// A region's control word (header slot 126).
#[repr(C)]
pub(super) struct Control {
    /// 0 until the region's headers are initialised, then [`READY`].
    pub(super) init: AtomicU32,
    /// The region lock (0 free, 1 held): initialisation and drains.
    pub(super) lock: AtomicU32,
}

/// `Control::init` once the headers are initialised.
pub(super) const READY: u32 = 1;

// The sections scale a class index by 8 to reach its header and a slot
// index by 8 to reach its slot; both are the header and slot sizes here.
const _: () = assert!(size_of::<Header>() == 8 && size_of::<Control>() == 8);
const _: () = assert!(size_of::<*mut u8>() == 8);
const _: () = assert!(
    offset_of!(Header, current) == 0
        && offset_of!(Header, end) == 4
        && offset_of!(Header, begin) == 6
);
// The index fits below the lock bit.
const _: () = assert!(LOCKED == 1 << u16::BITS);
const _: () = assert!(MAX_SLOTS + HEADER_SLOTS <= u16::MAX as usize);

/// One region of a structure.
#[derive(Clone, Copy)]
pub(super) struct Region(*mut u8);

impl Region {
    /// # Safety
    /// `p` is the start of a region of a structure: `REGION_BYTES` bytes,
    /// aligned to `REGION_BYTES`, zeroed before first use, live while the
    /// returned value (and anything borrowed from it) is used, and accessed
    /// by others only atomically or by critical sections.
    pub(super) unsafe fn new(p: *mut u8) -> Region {
        Region(p)
    }

    /// The header of `class` (`class < MAX_CLASSES`).
    pub(super) fn header(&self, class: usize) -> &Header {
        debug_assert!(class < MAX_CLASSES);
        // SAFETY: `Region::new`'s contract: the header slots lie inside the
        // live region and are 8-aligned; every field is an atomic, and every
        // other access to header memory is atomic or a critical section's
        // single-copy-atomic load or store of a field at its own width.
        unsafe { &*self.0.cast::<Header>().add(class) }
    }

    /// The control word.
    pub(super) fn control(&self) -> &Control {
        // SAFETY: `Region::new`'s contract: header slot 126 (reserved for
        // the control word) lies inside the live region, 8-aligned; its
        // fields are atomics.
        unsafe { &*self.0.cast::<Control>().add(CONTROL_SLOT) }
    }

    /// Whether the headers are initialised.
    pub(super) fn is_ready(&self) -> bool {
        self.control().init.load(Ordering::Acquire) == READY
    }

    /// The try-lock discipline's operation counter.
    pub(super) fn counter(&self) -> &AtomicU64 {
        // SAFETY: `Region::new`'s contract: header slot 127 (reserved for
        // the counter) lies inside the live region, 8-aligned; it is an
        // atomic.
        unsafe { &*self.0.cast::<AtomicU64>().add(COUNTER_SLOT) }
    }

    /// Slot `i` (`HEADER_SLOTS <= i < REGION_BYTES / 8`), as a raw pointer:
    /// slots are plain memory, written by critical sections.
    pub(super) fn slot(&self, i: usize) -> *mut *mut u8 {
        self.0.wrapping_add(i * 8).cast()
    }

    /// Slot `i` read atomically (racy scans).
    pub(super) fn slot_atomic(&self, i: usize) -> &AtomicPtr<u8> {
        // SAFETY: `Region::new`'s contract; slots are 8-aligned, and a
        // concurrent write to one is a single 8-byte store.
        unsafe { &*self.slot(i).cast::<AtomicPtr<u8>>() }
    }

    /// Slots `b .. cur` as a slice.
    ///
    /// # Safety
    /// Nobody writes those slots while the slice lives (the header is
    /// stopped and fenced, or its stack lock is held).
    pub(super) unsafe fn items(&self, b: u16, cur: u16) -> &[*mut u8] {
        // SAFETY: the slots lie inside the live region and are initialised
        // items (`begin <= b .. cur <= end`), unchanged per the contract.
        unsafe {
            core::slice::from_raw_parts(self.slot(b as usize).cast_const(), (cur - b) as usize)
        }
    }
}

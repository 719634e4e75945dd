//! Page map: heap page -> span id, in O(1) with lock-free reads.
//!
//! A two-level radix map over the whole user address space (47 bits). The
//! root is a static array in `.bss` (reached RIP-relative, no pointer load
//! to find it) indexed by the address's bits 30..47; each entry is 0 or
//! names a leaf covering 1 GiB, one `AtomicU64` per 8 KiB page (1 MiB of
//! address space per leaf, mapped when the page heap adds a chunk in that
//! GiB and never unmapped). Root entries are 32 bits, the leaf's address
//! shifted right by 16 (leaves are 64 KiB aligned and below 2^47), so the
//! root costs 512 KiB of address space (it counts against `RLIMIT_AS`). A
//! lookup is two dependent loads (root entry, leaf entry) and a shift; an
//! address above 2^47 or whose root entry is 0 is not ours, answered
//! without touching anything but the root. Every lookup first compares the
//! address's GiB with the one the first leaf installed covers
//! (`FIRST_LEAF.gib`, written once, after that leaf's address biased by
//! the GiB's first page in `FIRST_LEAF.base`): there the entry is one
//! load after the address's page number (`FIRST_LEAF.base + page`; the base
//! comes from a load that does not wait for the address), without the root
//! entry, its decoding or a mask. `free` loads the entry's class byte on its
//! own beside it (`first_leaf_entry_and_class_of`). That
//! latency counts: a C `free`'s push needs the class, and the next malloc
//! of the class waits for that push, so the lookup is on a pair loop's
//! loop-carried chain. `RseqAllocChecked`'s `dealloc` reads the class byte
//! through the first leaf's plain address (`FAST.first_leaf`, a
//! `MaskedLeaf`) with the page number masked into it, no compare: any
//! address reads some entry of that leaf, which is enough to check a class
//! the caller already knows from its layout.
//!
//! Pages are named by their absolute page number (`addr >> PAGE_SHIFT`), so
//! `page_addr` is a shift.
//!
//! Entry layout: bits 0..32 span id; for pages of a span of small objects,
//! bits 32..40 the page's index inside its span and bits 40..48 the size
//! class (0 for every other page); bits 48..64 are 0. `free(ptr)` reads one
//! entry (see `small_offset`) and, for a small object, needs no span record
//! to find and validate its class. Only spans laid out as their class's
//! (`has_small_entries`) get such entries.
//!
//! Invariants (writers hold the page-heap lock):
//! - every page of a span in use (small or large) maps to that span's id;
//! - a free span maps only its first and last page to its id (for
//!   coalescing); its other pages map to 0;
//! - pages not in any heap chunk map to 0 (or have no leaf).
//!
//! Readers (`free`, `usable_size`) load with `Acquire`; writers store with
//! `Release` after filling the span's fields, so a reader that sees an id
//! sees the span it describes. A leaf is published in the root (Release,
//! compare-exchange) before any page in it becomes part of a span; leaves
//! are fresh zeroed mappings, so a reader that sees the leaf sees zeros or
//! entries stored after it.

use crate::size_class::{PAGE_BYTES, PAGE_SHIFT};
use crate::span::SpanId;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

/// Address bits of user space covered by the map.
pub const ADDR_BITS: u32 = 47;
/// Address bits covered by one leaf (1 GiB).
pub const LEAF_ADDR_SHIFT: u32 = 30;
/// Root entries.
const ROOT_LEN: usize = 1 << (ADDR_BITS - LEAF_ADDR_SHIFT);
/// Pages per leaf.
const LEAF_PAGES: usize = 1 << (LEAF_ADDR_SHIFT - PAGE_SHIFT);
/// Bytes of one leaf.
pub const LEAF_BYTES: usize = LEAF_PAGES * 8;
/// Root entries hold a leaf's address shifted right by this much.
const LEAF_ALIGN_SHIFT: u32 = 16;
const _: () = assert!(ADDR_BITS - LEAF_ALIGN_SHIFT <= 32);

/// The root: shared by every `PageMap` (there is one heap per process; the
/// unit tests' private heaps own disjoint chunks, so sharing is harmless).
static ROOT: [AtomicU32; ROOT_LEN] = [const { AtomicU32::new(0) }; ROOT_LEN];
/// The first leaf installed, for the lookup's quick path: its two words
/// in one static, so `free` reaches both from one address.
#[repr(C)]
struct FirstLeaf {
    /// The root index whose leaf `base` addresses, or `u64::MAX` (matches
    /// no address's `addr >> 30`) before it is set; written once, after
    /// `base`.
    gib: AtomicU64,
    /// The leaf (never unmapped, like every leaf), biased by the first
    /// page of its GiB: entry `page` of that GiB is `base + page` (no
    /// masking of the page number on the lookup's path). Null before; set
    /// once, by the installer that swaps it from null, before `gib`; an
    /// address outside the GiB never reaches it (the compare with `gib`
    /// comes first).
    base: AtomicPtr<AtomicU64>,
}

static FIRST_LEAF: FirstLeaf = FirstLeaf {
    gib: AtomicU64::new(u64::MAX),
    base: AtomicPtr::new(core::ptr::null_mut()),
};
/// Which byte of an entry holds the class (bits 40..48, little-endian):
/// the class-byte loads read it alone.
pub(crate) const CLASS_BYTE: usize = 5;

/// The first leaf as `dealloc_checked` reads it: the leaf `FIRST_LEAF.base`
/// names biased, here at its plain address (the same leaf, kept twice so
/// each reader gets it with one load), and the mask of its page indices,
/// so that any address reads one of its entries (`class_of`). Before the first leaf is installed, one zero entry
/// (`NO_LEAF`, whose class byte never matches a class) and mask 0, so the
/// reader needs no test of its own. Published leaf first, mask second
/// (Release); read mask first, leaf second: a reader that sees the leaf's
/// mask sees the leaf.
#[repr(C)]
pub(crate) struct MaskedLeaf {
    /// The leaf (`NO_LEAF` before).
    pub(crate) leaf: AtomicPtr<AtomicU64>,
    /// `LEAF_PAGES - 1` (0 before).
    pub(crate) mask: core::sync::atomic::AtomicUsize,
}

/// `MaskedLeaf::leaf` before the first leaf is installed.
pub(crate) static NO_LEAF: AtomicU64 = AtomicU64::new(0);

impl MaskedLeaf {
    /// Publishes the first leaf (once, when it is installed; leaves are
    /// never unmapped).
    pub(crate) fn publish(&self, leaf: *mut AtomicU64) {
        self.leaf.store(leaf, Ordering::Relaxed);
        self.mask.store(LEAF_PAGES - 1, Ordering::Release);
    }

    /// The class byte of entry `(addr >> PAGE_SHIFT) & mask` of the leaf:
    /// the class of `addr`'s page if `addr` is in the first leaf's GiB,
    /// else the class of some page of that GiB (or 0), for
    /// `dealloc_checked`, which compares it with the class of its layout.
    /// (On x86_64 `fast::first_leaf_class_of` reads it in four
    /// instructions after `FAST`'s address.)
    #[inline(always)]
    #[cfg(not(target_arch = "x86_64"))]
    pub(crate) fn class_of(&self, addr: usize) -> usize {
        let mask = self.mask.load(Ordering::Acquire);
        let leaf = self.leaf.load(Ordering::Relaxed);
        // SAFETY: a mask of a leaf's pages is only stored after that
        // leaf's address (Release/Acquire), so the entry is inside
        // `NO_LEAF` (mask 0) or a mapped leaf, never unmapped.
        let e = unsafe { &*leaf.wrapping_add((addr >> PAGE_SHIFT) & mask) };
        PageMap::entry_class(e.load(Ordering::Relaxed))
    }
}

/// Leaves installed so far (statistics).
static LEAVES: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// The page map (a handle on the static root).
pub struct PageMap {
    _private: (),
}

impl PageMap {
    /// The page map.
    pub const fn new() -> Self {
        PageMap { _private: () }
    }

    /// Where the entry of `page` is, if a leaf covers it, for `lookup` (a
    /// reader of the validation paths): an array and an index into it,
    /// which the caller's load folds into one addressing mode. The first
    /// leaf first (`first_leaf_slot`), then the root.
    #[inline(always)]
    fn entry_slot(page: usize) -> Option<(*const AtomicU64, usize)> {
        Self::first_leaf_slot(page).or_else(|| Self::root_slot(page))
    }

    /// `entry_slot` in the first leaf's GiB, None elsewhere: the array is a
    /// static word (`FIRST_LEAF.base`, biased so that the index is the page
    /// number), found after one compare against another (predicted), with
    /// no root entry, no decoding and no masking: the entry's load issues
    /// one shift after the address is known.
    #[inline(always)]
    fn first_leaf_slot(page: usize) -> Option<(*const AtomicU64, usize)> {
        let first = rip_ref!(FirstLeaf, FIRST_LEAF);
        if (page >> (LEAF_ADDR_SHIFT - PAGE_SHIFT)) as u64 != first.gib.load(Ordering::Acquire) {
            return None;
        }
        Some((first.base.load(Ordering::Relaxed).cast_const(), page))
    }

    /// The entry at a slot from `entry_slot`.
    #[inline(always)]
    fn slot_entry(slot: (*const AtomicU64, usize)) -> &'static AtomicU64 {
        // SAFETY: `entry_slot` returns the first leaf biased by its GiB's
        // first page with a page of that GiB (FIRST_LEAF.gib names a root
        // index only after FIRST_LEAF.base is stored, Release/Acquire), or
        // (like `root_slot`) a leaf with an index masked into it; leaves
        // hold LEAF_PAGES entries and are never unmapped. `wrapping_add`
        // keeps the leaf's provenance through the biased value and lands
        // inside the leaf.
        unsafe { &*slot.0.wrapping_add(slot.1) }
    }

    /// `entry_slot` through the root alone (the leaf covering `page` and
    /// the page's index in it): the page heap's own reads and writes
    /// (under its lock, off the fast paths) use it, so the hot compare is
    /// not inlined into each of them (the code counts against a tight
    /// `RLIMIT_AS`, see `ffi_as_limit`).
    #[inline(always)]
    fn root_slot(page: usize) -> Option<(*const AtomicU64, usize)> {
        let r = page >> (LEAF_ADDR_SHIFT - PAGE_SHIFT);
        if r >= ROOT_LEN {
            return None;
        }
        // The root through `rip_ref!`: a plain access from the cdylib would
        // first load the root's address from the GOT.
        let root = rip_ref!([AtomicU32; ROOT_LEN], ROOT);
        let leaf =
            ((root[r].load(Ordering::Acquire) as usize) << LEAF_ALIGN_SHIFT) as *const AtomicU64;
        (!leaf.is_null()).then_some((leaf, page & (LEAF_PAGES - 1)))
    }

    /// The page of `addr` if a leaf covers it (the address may still be in
    /// no span: its entry is then 0). For the tests: the allocator reads
    /// page and entry together with `lookup`.
    #[cfg(test)]
    #[inline(always)]
    pub fn page_of(&self, addr: usize) -> Option<usize> {
        let page = addr >> PAGE_SHIFT;
        Self::entry_slot(page).map(|_| page)
    }

    /// `page_of` and `get_raw` in one: the page of `addr` and its entry,
    /// or None if no leaf covers it (one load in the first leaf, else two
    /// dependent ones).
    #[inline(always)]
    pub fn lookup(&self, addr: usize) -> Option<(usize, u64)> {
        let page = addr >> PAGE_SHIFT;
        let e = Self::slot_entry(Self::entry_slot(page)?);
        Some((page, e.load(Ordering::Acquire)))
    }

    /// `free`'s lookup in the first leaf's GiB: the entry of the page
    /// holding `addr` and, loaded on its own, the entry's class byte
    /// (`entry_class`); None when `addr` is in another GiB (then
    /// `root_entry_and_class_of` answers). The class feeds the address of
    /// the push that follows, which the next malloc of the class waits
    /// for: a byte load gives it with no shift and mask after the load (two
    /// cycles off a C malloc/free pair's loop-carried chain); the whole
    /// entry, loaded beside it, feeds only the validation's branches.
    /// `free` keeps the other GiBs out of line, so this path is straight
    /// (no taken branch, no test of the class before the object-start
    /// test, which rejects class 0 by itself).
    #[inline(always)]
    pub fn first_leaf_entry_and_class_of(&self, addr: usize) -> Option<(u64, usize)> {
        Self::first_leaf_slot(addr >> PAGE_SHIFT).map(Self::entry_and_class_at)
    }

    /// `first_leaf_entry_and_class_of` through the root (any GiB, the
    /// first leaf's too), or (0, 0) when no leaf covers `addr`.
    #[inline(always)]
    pub fn root_entry_and_class_of(&self, addr: usize) -> (u64, usize) {
        Self::root_slot(addr >> PAGE_SHIFT).map_or((0, 0), Self::entry_and_class_at)
    }

    /// Both lookups in the order `free` tries them (for the tests).
    #[cfg(test)]
    pub fn entry_and_class_of(&self, addr: usize) -> (u64, usize) {
        self.first_leaf_entry_and_class_of(addr)
            .unwrap_or_else(|| self.root_entry_and_class_of(addr))
    }

    /// The entry at `slot` and its class byte, loaded on its own.
    #[inline(always)]
    fn entry_and_class_at(slot: (*const AtomicU64, usize)) -> (u64, usize) {
        (
            Self::slot_entry(slot).load(Ordering::Acquire),
            Self::class_byte(slot),
        )
    }

    /// Byte 5 of the entry at `slot` (bits 40..48: the class), read by one
    /// byte load. The entry is written whole, by 64-bit stores; the read is
    /// done in `asm!` so that it is the machine's byte load (an x86 load is
    /// single-copy atomic for any aligned byte, and every x86 load has
    /// acquire order), not a mixed-size atomic access in Rust's model.
    #[inline(always)]
    fn class_byte(slot: (*const AtomicU64, usize)) -> usize {
        #[cfg(target_arch = "x86_64")]
        {
            let class: usize;
            // SAFETY: `slot` addresses an entry inside a mapped leaf (see
            // `slot_entry`); the asm reads one byte of it and nothing else.
            unsafe {
                core::arch::asm!(
                    "movzx {c:e}, byte ptr [{b} + {i} * 8 + {cb}]",
                    c = out(reg) class,
                    b = in(reg) slot.0,
                    i = in(reg) slot.1,
                    cb = const CLASS_BYTE,
                    options(pure, readonly, nostack, preserves_flags),
                )
            };
            // SAFETY: `movzx` zero-extends one byte. Telling the compiler
            // spares a second zero-extension on the way to the push's
            // address.
            unsafe { core::hint::assert_unchecked(class <= 0xff) };
            class
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Self::entry_class(Self::slot_entry(slot).load(Ordering::Acquire))
        }
    }

    /// Address of page `page`.
    #[inline(always)]
    pub fn page_addr(&self, page: usize) -> usize {
        page << PAGE_SHIFT
    }

    #[inline(always)]
    fn entry(&self, page: usize) -> Option<&AtomicU64> {
        Some(Self::slot_entry(Self::root_slot(page)?))
    }

    /// The span id at `page` (`NONE`, also for a page without a leaf).
    #[inline(always)]
    pub fn get(&self, page: usize) -> SpanId {
        SpanId::from_entry(self.get_raw(page))
    }

    /// The whole entry at `page` (see the module doc for the layout; 0 for a
    /// page without a leaf).
    #[inline(always)]
    pub fn get_raw(&self, page: usize) -> u64 {
        match self.entry(page) {
            Some(e) => e.load(Ordering::Acquire),
            None => 0,
        }
    }

    /// Sets one entry to a span id, without small-object data (page-heap
    /// lock held; the page's leaf exists: it is in a heap chunk).
    #[inline]
    pub fn set(&self, page: usize, id: SpanId) {
        self.store(page, id.entry_bits())
    }

    #[inline]
    fn store(&self, page: usize, v: u64) {
        match self.entry(page) {
            Some(e) => e.store(v, Ordering::Release),
            None => debug_assert!(v == 0, "page {page:#x} has no leaf"),
        }
    }

    /// Sets `n` entries starting at `page` (page-heap lock held).
    pub fn set_range(&self, page: usize, n: usize, id: SpanId) {
        for p in page..page + n {
            self.set(p, id);
        }
    }

    /// Whether a span of `npages` pages in state `state` with class byte
    /// `class` gets small-object entries: a small span of exactly its
    /// class's size, the layout `size_class::object_start_table` assumes
    /// (any other span is classified by its record).
    pub fn has_small_entries(state: crate::span::SpanState, class: u8, npages: usize) -> bool {
        state == crate::span::SpanState::Small
            && crate::size_class::SizeClass::from_index(class as usize)
                .is_some_and(|c| c.span_pages() == npages)
    }

    /// Sets the `n` entries of a span of small objects of class `class`
    /// (`has_small_entries`; page-heap lock held).
    pub fn set_small_range(&self, page: usize, n: usize, id: SpanId, class: u8) {
        debug_assert!(n <= 255 && class != 0);
        for i in 0..n {
            let e = id.entry_bits() | ((i as u64) << 32) | ((class as u64) << 40);
            self.store(page + i, e);
        }
    }

    /// The class index of a raw entry (0: not a small-object page).
    #[inline(always)]
    pub const fn entry_class(entry: u64) -> usize {
        ((entry >> 40) & 0xff) as usize
    }

    /// For a small-object page entry: the offset of `addr` from its span's
    /// start (below 2^21). Whether an object starts there is the caller's
    /// check (`Fast::is_object_start`, which also excludes the tail waste).
    #[inline(always)]
    pub const fn small_offset(entry: u64, addr: usize) -> usize {
        ((((entry >> 32) & 0xff) as usize) << PAGE_SHIFT) | (addr & (PAGE_BYTES - 1))
    }

    /// Makes sure leaves cover `[addr, addr + len)` (mapping the missing
    /// ones); false if a leaf could not be mapped. Called by the page heap
    /// before the range's pages become spans.
    pub fn ensure_leaves(&self, addr: usize, len: usize) -> bool {
        if len == 0 {
            return true;
        }
        let Some(last) = addr.checked_add(len - 1) else {
            return false;
        };
        let (first, last) = (addr >> LEAF_ADDR_SHIFT, last >> LEAF_ADDR_SHIFT);
        if last >= ROOT_LEN {
            return false;
        }
        for (r, slot) in (first..=last).zip(&ROOT[first..=last]) {
            if slot.load(Ordering::Acquire) != 0 {
                continue;
            }
            let Some(leaf) = crate::os::map_chunk(LEAF_BYTES, 1 << LEAF_ALIGN_SHIFT) else {
                return false;
            };
            let leaf = leaf.as_ptr();
            let code = (leaf as usize >> LEAF_ALIGN_SHIFT) as u32;
            if (leaf as usize) >> ADDR_BITS != 0
                || slot
                    .compare_exchange(0, code, Ordering::Release, Ordering::Acquire)
                    .is_err()
            {
                // Another heap (unit tests) installed it first (or the
                // kernel answered above 2^47, which it does not unasked).
                // SAFETY: our fresh leaf was never published.
                unsafe { crate::os::unmap(leaf, LEAF_BYTES) };
                if slot.load(Ordering::Acquire) == 0 {
                    return false;
                }
            } else {
                LEAVES.fetch_add(1, Ordering::Relaxed);
                // The first leaf installed claims the first-leaf lookup by
                // swapping FIRST_LEAF.base from null. (A leaf whose biased
                // value is null, at exactly `r << 20`, cannot claim it and
                // is served by the root like any other.)
                let base = leaf
                    .cast::<AtomicU64>()
                    .wrapping_sub(r << (LEAF_ADDR_SHIFT - PAGE_SHIFT));
                if !base.is_null()
                    && FIRST_LEAF
                        .base
                        .compare_exchange(
                            core::ptr::null_mut(),
                            base,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    crate::fast::FAST.first_leaf.publish(leaf.cast());
                    FIRST_LEAF.gib.store(r as u64, Ordering::Release);
                }
            }
        }
        true
    }

    /// Bytes of address space the map itself has mapped (root and leaves).
    pub fn mapped_bytes(&self) -> usize {
        ROOT_LEN * 4 + LEAVES.load(Ordering::Relaxed) * LEAF_BYTES
    }

    /// Splits a raw entry into (class, page index inside the span); class 0
    /// means "not a page of small objects".
    #[inline(always)]
    pub fn small_of(entry: u64) -> (usize, usize) {
        (Self::entry_class(entry), ((entry >> 32) & 0xff) as usize)
    }
}

impl Default for PageMap {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size_class::PAGE_BYTES as PAGE;

    fn id(i: usize) -> SpanId {
        SpanId::from_index(i)
    }

    #[test]
    fn foreign_and_ours() {
        let pm = PageMap::new();
        let len = 4 * PAGE;
        let mem = crate::os::map(len, libc::PROT_READ | libc::PROT_WRITE, true)
            .unwrap()
            .as_ptr() as usize;
        assert_eq!(pm.page_of(usize::MAX - 5), None, "beyond user space");
        assert_eq!(pm.lookup(1usize << 47), None);
        assert!(pm.ensure_leaves(mem, len));
        let base = (mem >> PAGE_SHIFT) << PAGE_SHIFT;
        let p0 = base >> PAGE_SHIFT;
        assert_eq!(pm.page_of(base), Some(p0));
        assert_eq!(pm.page_of(base + PAGE - 1), Some(p0));
        assert_eq!(pm.lookup(base + 17), Some((p0, 0)));
        pm.set_range(p0, 2, id(9));
        assert_eq!(pm.get(p0), id(9));
        assert_eq!(pm.get(p0 + 1), id(9));
        assert_eq!(pm.get(p0 + 2), id(0));
        assert_eq!(pm.page_addr(p0 + 2), base + 2 * PAGE);
        pm.set_small_range(p0 + 1, 2, id(5), 17);
        assert_eq!(pm.get(p0 + 2), id(5));
        assert_eq!(PageMap::small_of(pm.get_raw(p0 + 2)), (17, 1));
        assert_eq!(
            pm.lookup(base + PAGE + 8),
            Some((p0 + 1, pm.get_raw(p0 + 1)))
        );
        assert_eq!(PageMap::small_of(pm.get_raw(p0)), (0, 0));
        pm.set_range(p0, 3, SpanId::NONE);
        // A page with no leaf reads as 0 and stores of 0 are ignored.
        assert_eq!(pm.get_raw(usize::MAX >> PAGE_SHIFT), 0);
    }

    /// `free`'s lookup (`entry_and_class_of`) agrees with the page heap's
    /// own root-only reads (`get_raw`) inside the first leaf (the biased
    /// `FIRST_LEAF.base` path) and outside it (the root path): the whole
    /// entry, and a class byte equal to the entry's class; it answers
    /// (0, 0) for null, foreign and non-canonical addresses.
    #[test]
    fn first_leaf_entry_and_class_agree_with_the_root() {
        let pm = PageMap::new();
        let len = 2 * PAGE;
        let map = || {
            crate::os::map(len, libc::PROT_READ | libc::PROT_WRITE, true)
                .unwrap()
                .as_ptr() as usize
        };
        let check = |addr: usize| {
            let want = pm.get_raw(addr >> PAGE_SHIFT);
            let want = (want, PageMap::entry_class(want));
            assert_eq!(pm.root_entry_and_class_of(addr), want, "{addr:#x}");
            if let Some(got) = pm.first_leaf_entry_and_class_of(addr) {
                assert_eq!(got, want, "{addr:#x}");
            }
            assert_eq!(pm.entry_and_class_of(addr), want, "{addr:#x}");
            want.0
        };
        let (a, b) = (map(), map());
        assert!(pm.ensure_leaves(a, len));
        let (pa, pb) = (a >> PAGE_SHIFT, b >> PAGE_SHIFT);
        pm.set_small_range(pa, 2, id(11), 5);
        // (Other tests grow heaps in parallel: which GiB the first leaf
        // covers is theirs to decide too, so the checks hold either way.)
        for addr in [a, a + 8, a + PAGE + 64] {
            assert_ne!(check(addr), 0);
            assert_eq!(pm.entry_and_class_of(addr).1, 5);
        }
        // A second chunk (maybe in another GiB); the first is still found.
        assert!(pm.ensure_leaves(b, len));
        pm.set_small_range(pb, 1, id(12), 7);
        assert_eq!(pm.entry_and_class_of(b + 16).1, 7);
        check(b + 16);
        check(a + 8);
        for bad in [
            0,
            8,
            1 << 47,
            usize::MAX,
            usize::MAX - 7,
            1 << 63,
            a ^ (1 << 46),
        ] {
            check(bad);
        }
        assert_eq!(pm.entry_and_class_of(0), (0, 0));
        assert_eq!(pm.entry_and_class_of(usize::MAX), (0, 0));
        pm.set_range(pa, 2, SpanId::NONE);
        pm.set_range(pb, 1, SpanId::NONE);
        assert_eq!(pm.entry_and_class_of(a), (0, 0));
    }
}

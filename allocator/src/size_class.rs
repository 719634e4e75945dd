//! Size classes: the table, computed at compile time and checked by const
//! assertions and an exhaustive test.
//!
//! Classes: 8 (only for requests with alignment <= 8), then 16..=128 in steps
//! of 16, then four classes per power of two (`2^k + j * 2^(k-2)`, j = 1..4)
//! up to 256 KiB: 53 classes, numbered 1..=53 (0 means "not a small object").
//!
//! **Waste bound** (checked for every size by `tests::exhaustive_table`): for
//! a request of `s` bytes (s >= 1) the chosen class size `c` satisfies
//! `c - s < max(16, s / 4)` (under 16 bytes for s <= 128, under 25 % above);
//! the span layout wastes at most 1/8 of each span (`span_pages`).
//!
//! Every class >= 16 is a multiple of 16 and span starts are page aligned, so
//! any object of such a class is 16-byte aligned; an object of class `c` is
//! aligned to the largest power of two dividing `c` (capped at the page).
//! A request with a larger alignment `a <= PAGE_BYTES` is served by rounding
//! its size up to a multiple of `a` first: the class found is then a multiple
//! of `a` (checked exhaustively by `tests::aligned_classes_are_aligned`).

/// log2 of the allocator page (the unit of spans and of the page map).
pub const PAGE_SHIFT: u32 = 13;
/// The allocator page: 8 KiB (two OS pages).
pub const PAGE_BYTES: usize = 1 << PAGE_SHIFT;
/// The largest small (size-classed) object.
pub const MAX_SMALL_BYTES: usize = 256 * 1024;
/// Number of class slots including the unused slot 0.
pub const NUM_CLASSES: usize = 54;

/// A size class index, 1..NUM_CLASSES. Slot 0 is never a valid class.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SizeClass(u8);

impl SizeClass {
    /// The class with index `i`, if `1 <= i < NUM_CLASSES`.
    #[inline]
    pub const fn from_index(i: usize) -> Option<SizeClass> {
        if i >= 1 && i < NUM_CLASSES {
            Some(SizeClass(i as u8))
        } else {
            None
        }
    }
    /// The class with index `i`, which the caller took from one of this
    /// module's tables (so `1 <= i < NUM_CLASSES`).
    #[inline(always)]
    pub(crate) const fn from_table(i: u8) -> SizeClass {
        debug_assert!(i >= 1 && (i as usize) < NUM_CLASSES);
        SizeClass(i)
    }
    /// The index of this class (1..NUM_CLASSES).
    #[inline(always)]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
    /// This class's stack in the per-CPU caches (rseq-sys's class id: the
    /// same index; every class index is below `MAX_CLASSES`, checked at
    /// compile time).
    #[inline(always)]
    pub fn slab(self) -> rseq_sys::percpu::ClassId {
        const _: () = assert!(NUM_CLASSES <= rseq_sys::percpu::MAX_CLASSES);
        match rseq_sys::percpu::ClassId::new(self.index()) {
            Some(c) => c,
            // A `SizeClass` is below NUM_CLASSES by construction.
            None => unreachable!(),
        }
    }
    /// Object size in bytes.
    #[inline(always)]
    pub fn size_bytes(self) -> usize {
        CLASS_SIZE[self.0 as usize] as usize
    }
    /// Objects moved between a per-CPU cache and the central list at once.
    #[inline]
    pub fn batch(self) -> usize {
        CLASS_BATCH[self.0 as usize] as usize
    }
    /// Maximum objects of this class in one per-CPU cache (the caches read
    /// `CLASS_CAPACITY` whole; this is for the tests).
    #[cfg(test)]
    pub fn capacity(self) -> usize {
        CLASS_CAPACITY[self.0 as usize] as usize
    }
    /// Objects the central transfer stack of this class may hold: about
    /// 128 KiB worth, between 1 and `central::TRANSFER_SLOTS` (128: four
    /// batches of the small classes, which a 64-slot stack held only two
    /// of), so all transfer stacks together hold at most about 6 MiB.
    #[inline]
    pub fn transfer_capacity(self) -> usize {
        let n = 128 * 1024 / self.size_bytes();
        n.clamp(1, crate::central::TRANSFER_SLOTS)
    }
    /// Pages per span of this class.
    #[inline]
    pub fn span_pages(self) -> usize {
        CLASS_SPAN_PAGES[self.0 as usize] as usize
    }
    /// Objects per span of this class.
    #[inline]
    pub fn objects_per_span(self) -> usize {
        self.span_pages() * PAGE_BYTES / self.size_bytes()
    }
    /// `offset / size_bytes()` by multiplication (valid for offsets below
    /// one span, checked exhaustively in the tests). The allocator checks
    /// object starts with the fast path's object-start table instead; this
    /// stays as the tests' reference for the span layout.
    #[cfg(test)]
    #[inline(always)]
    pub fn index_of_offset(self, offset: usize) -> usize {
        ((offset as u64 * CLASS_RECIP[self.0 as usize]) >> 40) as usize
    }
    /// All classes, smallest first.
    pub fn all() -> impl Iterator<Item = SizeClass> {
        (1..NUM_CLASSES).map(|i| SizeClass(i as u8))
    }
}

const fn build_sizes() -> [u32; NUM_CLASSES] {
    let mut t = [0u32; NUM_CLASSES];
    t[1] = 8;
    let mut i = 2;
    let mut s = 16;
    while s <= 128 {
        t[i] = s;
        i += 1;
        s += 16;
    }
    let mut k = 7;
    while k < 18 {
        let mut j = 1;
        while j <= 4 {
            t[i] = (1u32 << k) + j * (1u32 << (k - 2));
            i += 1;
            j += 1;
        }
        k += 1;
    }
    assert!(i == NUM_CLASSES);
    t
}

/// Object size of each class (slot 0 unused).
pub static CLASS_SIZE: [u32; NUM_CLASSES] = build_sizes();
pub(crate) const SIZES: [u32; NUM_CLASSES] = build_sizes();

const fn clamp(v: usize, lo: usize, hi: usize) -> usize {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

/// Largest object size the per-CPU caches hold. Classes above it have
/// capacity 0: every malloc and free of them goes to the central list
/// (a lock and the transfer stack, small next to writing 32 KiB), which
/// makes them slow-path events that drive decay (`decay::tick`); a
/// program whose light activity is pairs of such blocks returns its idle
/// memory on time (jemalloc's `tcache_max` is the same 32 KiB).
pub const CPU_CACHE_MAX_OBJECT_BYTES: usize = 32 * 1024;

/// Per-CPU cache capacity rule: about 64 KiB worth of objects per class,
/// between 2 and 1024 objects (16 KiB of 16 B objects, 2 of 32 KiB); 0
/// above [`CPU_CACHE_MAX_OBJECT_BYTES`].
const fn capacity_for(size: usize) -> usize {
    if size > CPU_CACHE_MAX_OBJECT_BYTES {
        0
    } else {
        clamp(64 * 1024 / size, 2, 1024)
    }
}

/// Batch rule: about 32 KiB per move, between 1 and 32 objects, and at most
/// half the capacity (so a refill leaves room for frees).
const fn batch_for(size: usize) -> usize {
    let b = clamp(32 * 1024 / size, 1, 32);
    let half = capacity_for(size) / 2;
    if half == 0 {
        1
    } else if b > half {
        half
    } else {
        b
    }
}

/// Span size rule: at least `min(8 objects, 64 KiB)` rounded to pages, grown
/// page by page until the tail waste is at most 1/8 of the span.
const fn span_pages_for(size: usize) -> usize {
    let mut want = size * 8;
    if want > 64 * 1024 {
        want = 64 * 1024;
    }
    if want < size {
        want = size;
    }
    let mut pages = want.div_ceil(PAGE_BYTES);
    while (pages * PAGE_BYTES) % size * 8 > pages * PAGE_BYTES {
        pages += 1;
    }
    pages
}

/// `ceil(2^40 / size)`: `offset * recip >> 40` is `offset / size` exactly
/// for offsets below 2^21, since the rounding error times the offset stays
/// below 2^40.
#[cfg(test)]
const fn recip_for(size: usize) -> u64 {
    (1u64 << 40).div_ceil(size as u64)
}

/// A per-class table of `rule(object size)` as `$ty` (slot 0 stays 0).
macro_rules! class_table {
    ($ty:ty, $rule:ident) => {{
        let mut t: [$ty; NUM_CLASSES] = [0; NUM_CLASSES];
        let mut i = 1;
        while i < NUM_CLASSES {
            t[i] = $rule(SIZES[i] as usize) as $ty;
            i += 1;
        }
        t
    }};
}

/// Batch size per class.
pub static CLASS_BATCH: [u16; NUM_CLASSES] = class_table!(u16, batch_for);
/// Per-CPU capacity (objects) per class; slot 0 is 0.
pub static CLASS_CAPACITY: [u16; NUM_CLASSES] = class_table!(u16, capacity_for);
/// Pages per span per class.
pub static CLASS_SPAN_PAGES: [u16; NUM_CLASSES] = class_table!(u16, span_pages_for);
#[cfg(test)]
static CLASS_RECIP: [u64; NUM_CLASSES] = class_table!(u64, recip_for);

const fn cache_bytes_bound() -> usize {
    let mut sum = 0;
    let mut i = 1;
    while i < NUM_CLASSES {
        sum += capacity_for(SIZES[i] as usize) * SIZES[i] as usize;
        i += 1;
    }
    sum
}

/// Upper bound on the bytes of free objects one per-CPU (or per-cid) cache can
/// hold: the sum over classes of capacity x size = 2 469 504 bytes (about
/// 2.4 MiB, asserted below at 4 MiB; the twelve classes above 32 KiB have no
/// slots).
pub const CPU_CACHE_MAX_BYTES: usize = cache_bytes_bound();
const _: () = assert!(CPU_CACHE_MAX_BYTES <= 4 * 1024 * 1024);

const fn total_capacity() -> usize {
    let mut sum = 0;
    let mut i = 1;
    while i < NUM_CLASSES {
        sum += capacity_for(SIZES[i] as usize);
        i += 1;
    }
    sum
}
/// Total pointer slots all classes need in one per-CPU region.
pub const CPU_CACHE_TOTAL_SLOTS: usize = total_capacity();
// The table must fit rseq-sys's per-region layout.
const _: () = assert!(NUM_CLASSES <= rseq_sys::percpu::MAX_CLASSES);
const _: () = assert!(CPU_CACHE_TOTAL_SLOTS <= rseq_sys::percpu::MAX_SLOTS);

const SMALL_LOOKUP_LEN: usize = fast_table_len(3);
const LARGE_LOOKUP_LEN: usize = MAX_SMALL_BYTES / 128 + 1;

const fn smallest_class_at_least(s: usize) -> u8 {
    let mut i = 1;
    while i < NUM_CLASSES {
        if SIZES[i] as usize >= s {
            return i as u8;
        }
        i += 1;
    }
    0
}

/// `(size + 7) / 8` -> class, for sizes up to `FAST_MAX_BYTES`. A `const`,
/// so that every crate that inlines `RseqAlloc::alloc` / `dealloc` gets its
/// own read-only copy, reached RIP-relative (a `static` of this crate is a
/// GOT load from a user's crate built without LTO), and a constant size
/// folds to its class at compile time. C `malloc` uses `FAST.t16`.
pub(crate) const SMALL_LOOKUP: [u8; SMALL_LOOKUP_LEN] = fast_table::<SMALL_LOOKUP_LEN>(3);
/// `(size + 127) / 128` -> class, for sizes up to 256 KiB (all classes above
/// 1 KiB are multiples of 128).
static LARGE_LOOKUP: [u8; LARGE_LOOKUP_LEN] = fast_table::<LARGE_LOOKUP_LEN>(7);

/// The class index of the smallest class >= `size`; `size <= MAX_SMALL_BYTES`.
#[inline(always)]
fn lookup(size: usize) -> u8 {
    debug_assert!(size <= MAX_SMALL_BYTES);
    if size <= FAST_MAX_BYTES {
        SMALL_LOOKUP[(size + 7) >> 3]
    } else {
        // `size <= MAX_SMALL_BYTES` keeps the index in bounds; `.get` makes
        // an out-of-contract call land on "not small" instead of panicking.
        match LARGE_LOOKUP.get((size + 127) >> 7) {
            Some(&c) => c,
            None => 0,
        }
    }
}

/// Largest request the front end's own tables serve (see `fast.rs`).
pub(crate) const FAST_MAX_BYTES: usize = 4096;
/// Entries of [`fast_table`] for a granularity of `1 << shift` bytes.
pub(crate) const fn fast_table_len(shift: u32) -> usize {
    (FAST_MAX_BYTES >> shift) + 1
}

/// `(size + g - 1) >> shift` -> class for the `N` steps of `g = 1 << shift`
/// bytes; with `g >= 16` the class honours 16-byte alignment (every class
/// above 8 B is a multiple of 16).
pub(crate) const fn fast_table<const N: usize>(shift: u32) -> [u8; N] {
    let mut t = [0u8; N];
    let mut i = 0;
    while i < N {
        let mut c = smallest_class_at_least(i << shift);
        if shift >= 4 && c < CLASS16 {
            c = CLASS16;
        }
        t[i] = c;
        i += 1;
    }
    t
}

/// Per class, the object-start test of `free`: `m` (in `[0]`) and `bound`
/// (in `[1]`, two arrays so that both are one scaled index away) with
/// `m = u64::MAX / size + 1`, and `off` (an offset from a span start, below
/// 2^32) is the start of one of the span's objects iff
/// `off.wrapping_mul(m) < bound`: one multiplication and one compare check
/// divisibility and the span's tail waste at once.
///
/// Why: let `d` be the size, `e = d * m - 2^64` (so `0 <= e < d`), and
/// `off = q * d + r` with `r < d`. For `r = 0` the product is `q * e`. For
/// `r > 0` it is `q * e + r * m >= m` (no wrap: `(q + 1) * e < 2^32 + d < m`
/// since `d <= 2^18`). So with `e > 0` the bound `n * e` (`n` objects per
/// span; `n * e < n * d <= 2^21 < m`) accepts exactly `r = 0, q < n`. With
/// `e = 0` (`d` a power of two) every multiple gives 0 and the bound is `m`;
/// the span then has no tail waste (asserted), so every multiple below the
/// span's size is an object. The page map writes small-object entries only
/// for spans of exactly `span_pages_for(d)` pages, so `off` is below that.
/// The table has 256 entries so that any class byte indexes it; entries
/// that are not classes are `m = bound = 0`, which no offset passes.
pub(crate) const fn object_start_table() -> [[u64; 256]; 2] {
    let mut t = [[0u64; 256]; 2];
    let mut i = 1;
    while i < NUM_CLASSES {
        let d = SIZES[i] as u64;
        let m = u64::MAX / d + 1;
        let e = d.wrapping_mul(m);
        let span = span_pages_for(SIZES[i] as usize) as u64 * PAGE_BYTES as u64;
        let n = span / d;
        assert!(d <= 1 << 18 && span <= 1 << 21);
        let bound = if e == 0 {
            assert!(span.is_multiple_of(d));
            m
        } else {
            n * e
        };
        t[0][i] = m;
        t[1][i] = bound;
        i += 1;
    }
    t
}

/// The index of the 16-byte class (the smallest with 16-byte alignment).
pub const CLASS16: u8 = 2;

/// `class_for` restricted to the common case (alignment <= 16 and a small
/// size), with no call inside: `None` means "ask `class_for`".
#[inline(always)]
pub fn class_for_common(size: usize, align: usize) -> Option<SizeClass> {
    if size <= MAX_SMALL_BYTES && align <= 16 {
        let mut c = lookup(size);
        if align > 8 && c < CLASS16 {
            c = CLASS16;
        }
        return Some(SizeClass(c));
    }
    None
}

/// The class for a request of `size` bytes aligned to `align` (a power of
/// two), or `None` when it is not a small object (too large, or aligned beyond
/// a page). Size 0 gets the smallest class allowed by `align`.
#[inline(always)]
pub fn class_for(size: usize, align: usize) -> Option<SizeClass> {
    match class_for_common(size, align) {
        Some(c) => Some(c),
        None => class_for_aligned(size, align),
    }
}

#[inline(never)]
fn class_for_aligned(size: usize, align: usize) -> Option<SizeClass> {
    if align > PAGE_BYTES || size > MAX_SMALL_BYTES {
        return None;
    }
    let rounded = crate::util::round_up(size.max(1), align)?;
    if rounded > MAX_SMALL_BYTES {
        return None;
    }
    let c = lookup(rounded);
    debug_assert!(c != 0 && (SIZES[c as usize] as usize).is_multiple_of(align));
    Some(SizeClass(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_increase_and_are_aligned() {
        assert_eq!(CLASS_SIZE[1], 8);
        assert_eq!(CLASS_SIZE[NUM_CLASSES - 1] as usize, MAX_SMALL_BYTES);
        for i in 2..NUM_CLASSES {
            assert!(CLASS_SIZE[i] > CLASS_SIZE[i - 1]);
            assert_eq!(CLASS_SIZE[i] % 16, 0, "class {i}");
        }
    }

    /// Every size 0..=256 KiB maps to the smallest class that fits, and the
    /// waste bound `c - s < max(16, s/4)` holds.
    #[test]
    fn exhaustive_table() {
        for align in [1usize, 8, 16] {
            for s in 0..=MAX_SMALL_BYTES {
                let c = class_for(s, align).expect("small");
                let cs = c.size_bytes();
                assert!(cs >= s, "size {s} -> {cs}");
                assert!(cs >= align.min(16).max(if align > 8 { 16 } else { 0 }));
                // smallest fitting: the previous class (if allowed) is too small
                let min_idx = if align > 8 { CLASS16 as usize } else { 1 };
                if c.index() > min_idx {
                    assert!((CLASS_SIZE[c.index() - 1] as usize) < s.max(1), "size {s}");
                }
                if s >= 1 {
                    assert!(cs - s < 16usize.max(s / 4), "waste: size {s} -> {cs}");
                }
            }
            assert!(class_for(MAX_SMALL_BYTES + 1, align).is_none());
        }
    }

    #[test]
    fn aligned_classes_are_aligned() {
        let mut align = 32;
        while align <= PAGE_BYTES {
            let mut s = 0;
            while s <= MAX_SMALL_BYTES {
                match class_for(s, align) {
                    Some(c) => {
                        assert!(c.size_bytes() >= s);
                        assert_eq!(c.size_bytes() % align, 0, "size {s} align {align}");
                    }
                    None => assert!(s.next_multiple_of(align) > MAX_SMALL_BYTES),
                }
                s += 7;
            }
            align *= 2;
        }
        assert!(class_for(16, PAGE_BYTES * 2).is_none());
        assert!(class_for(usize::MAX, 32).is_none());
    }

    #[test]
    fn span_layout_waste_and_reciprocal() {
        for c in SizeClass::all() {
            let span = c.span_pages() * PAGE_BYTES;
            let n = c.objects_per_span();
            assert!(n >= 1);
            assert!((span - n * c.size_bytes()) * 8 <= span, "class {c:?}");
            // exhaustive check of the division by multiplication
            for off in 0..span {
                assert_eq!(
                    c.index_of_offset(off),
                    off / c.size_bytes(),
                    "class {c:?} off {off}"
                );
            }
        }
    }

    #[test]
    fn object_start_table_accepts_exactly_the_object_starts() {
        let [mults, bounds] = object_start_table();
        // Every offset a small-object page entry can give (the page map
        // writes such entries only for spans of the class's size), for
        // every class: accepted iff a multiple of the size below the last
        // object's end (so never in the tail waste).
        for c in SizeClass::all() {
            let (m, bound) = (mults[c.index()], bounds[c.index()]);
            let d = c.size_bytes();
            let objects_end = c.objects_per_span() * d;
            for off in 0..c.span_pages() * PAGE_BYTES {
                let accepted = (off as u64).wrapping_mul(m) < bound;
                assert_eq!(
                    accepted,
                    off % d == 0 && off < objects_end,
                    "class {c:?} off {off}"
                );
            }
        }
        // Bytes that are not classes accept nothing.
        for i in (NUM_CLASSES..256).chain([0]) {
            assert_eq!((mults[i], bounds[i]), (0, 0), "byte {i}");
        }
    }

    #[test]
    fn batch_and_capacity() {
        let mut slots = 0;
        let mut bytes = 0;
        for c in SizeClass::all() {
            assert!(c.batch() >= 1);
            assert_eq!(
                c.capacity() >= 1,
                c.size_bytes() <= CPU_CACHE_MAX_OBJECT_BYTES,
                "{c:?}"
            );
            assert!(c.batch() <= c.capacity().max(1));
            slots += c.capacity();
            bytes += c.capacity() * c.size_bytes();
        }
        assert_eq!(slots, CPU_CACHE_TOTAL_SLOTS);
        let transfer: usize = SizeClass::all()
            .map(|c| c.transfer_capacity() * c.size_bytes())
            .sum();
        assert!(transfer <= 6 << 20, "transfer stacks bound: {transfer}");
        assert!(SizeClass::all().all(|c| c.transfer_capacity() <= crate::central::TRANSFER_SLOTS));
        assert_eq!(bytes, CPU_CACHE_MAX_BYTES);
        assert!(bytes <= 4 << 20);
    }
}

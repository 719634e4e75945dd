//! Double-free detection: a cheap test on every free, an exact answer when
//! the test fires.
//!
//! Every free small object carries a mark in its first word (see `fast.rs`):
//! `key` while it sits in a per-CPU cache or a transfer stack, `key | link`
//! on its span's free list (the link, in the low [`LINK_BITS`] bits, is the
//! next free object's offset from the span start in 8-byte units, plus one;
//! 0 ends the list). Objects carved from a span's untouched tail get the mark
//! when they are handed to a cache. Allocation clears the word.
//!
//! So a free that finds the mark is either a double free or a live block
//! whose first word happens to hold the key (the key is random per process,
//! has its top bit set so no user-space pointer equals it, and the chance
//! that arbitrary data matches its top 40 bits is 2^-40). [`check`] tells
//! them apart exactly: the object is free iff it is in one of the places a
//! free object can be — a per-CPU stack of its class, its class's transfer
//! stack, its span's free list — or in flight between two of them.
//!
//! In flight: a refill, an overflow flush or a drain holds objects in a
//! local buffer for a moment. Each such move is bracketed by [`InFlight`],
//! which bumps a per-class word (low half: moves in progress, high half:
//! moves started); drains bump the word of every class. `check` takes a
//! snapshot of the word, searches, and trusts a "not found" only when the
//! word showed no move in progress and did not change during the search;
//! otherwise it searches again (bounded: after `MAX_TRIES` busy rounds it
//! answers "not found", so a false abort is impossible and a double free
//! racing with heavy traffic of its own class may, rarely, go unreported).

use crate::size_class::{SizeClass, NUM_CLASSES};
use core::sync::atomic::{AtomicU64, Ordering};

/// Low bits of a free object's first word used by the span free-list link.
pub(crate) const LINK_BITS: u32 = 24;
const LINK_MASK: u64 = (1 << LINK_BITS) - 1;

/// Per class, plus one word for "every class" (drains).
static MOVES: [AtomicU64; NUM_CLASSES + 1] = [const { AtomicU64::new(0) }; NUM_CLASSES + 1];
const ALL: usize = NUM_CLASSES;
const STARTED: u64 = 1 << 32;
const MAX_TRIES: u32 = 64;

/// A batch move of free objects of one class (or of all, for drains) is in
/// progress while this lives.
pub(crate) struct InFlight(usize);

impl InFlight {
    /// Objects of `class` are about to leave every structure for a moment.
    #[inline]
    pub(crate) fn class(class: SizeClass) -> InFlight {
        MOVES[class.index()].fetch_add(STARTED + 1, Ordering::AcqRel);
        InFlight(class.index())
    }

    /// A drain: objects of every class are in flight.
    pub(crate) fn all() -> InFlight {
        MOVES[ALL].fetch_add(STARTED + 1, Ordering::AcqRel);
        InFlight(ALL)
    }
}

impl Drop for InFlight {
    #[inline]
    fn drop(&mut self) {
        MOVES[self.0].fetch_sub(1, Ordering::AcqRel);
    }
}

/// In a fork child (one thread): moves that other threads had in flight
/// will never finish (their objects are lost with the threads), so the
/// in-progress counts restart at 0 and `is_free` is not left waiting.
pub(crate) fn reset_after_fork() {
    for w in MOVES.iter() {
        let v = w.load(Ordering::Relaxed);
        w.store(v & !(STARTED - 1), Ordering::Relaxed);
    }
}

/// The first word of a free object on a span's free list whose successor
/// is `next` (null for none), in a span starting at `span_base`.
#[inline]
pub(crate) fn encode_link(key: u64, span_base: usize, next: *mut u8) -> u64 {
    if next.is_null() {
        key
    } else {
        key | (((next as usize - span_base) >> 3) as u64 + 1)
    }
}

/// The successor encoded in free object `o`'s first word; aborts if the
/// word no longer carries the mark (written after free).
#[inline]
pub(crate) fn decode_link(key: u64, span_base: usize, o: *mut u8, w: u64) -> *mut u8 {
    if (w ^ key) >> LINK_BITS != 0 {
        crate::util::corrupted_free_object(o)
    }
    match w & LINK_MASK {
        0 => core::ptr::null_mut(),
        l => (span_base + ((l as usize - 1) << 3)) as *mut u8,
    }
}

/// `p`, an object start of `class` whose first word carries the mark, is
/// being freed by `who`: abort with `rseq-malloc: <who>: double free 0x...`
/// if it is free already; return if it is a live block holding the key by
/// chance.
#[cold]
#[inline(never)]
pub(crate) fn check(p: *mut u8, class: SizeClass, who: &str) {
    if is_free(p, class) {
        crate::util::double_free(who, p)
    }
}

/// Whether `p` (an object start of `class`) is free right now; see the
/// module doc for what "not found" is worth.
pub(crate) fn is_free(p: *mut u8, class: SizeClass) -> bool {
    for _ in 0..MAX_TRIES {
        let before = (
            MOVES[class.index()].load(Ordering::Acquire),
            MOVES[ALL].load(Ordering::Acquire),
        );
        if found(p, class) {
            return true;
        }
        let after = (
            MOVES[class.index()].load(Ordering::Acquire),
            MOVES[ALL].load(Ordering::Acquire),
        );
        let idle = |w: u64| w & (STARTED - 1) == 0;
        if before == after && idle(before.0) && idle(before.1) {
            return false;
        }
        // SAFETY: sched_yield has no preconditions.
        unsafe { libc::sched_yield() };
    }
    false
}

fn found(p: *mut u8, class: SizeClass) -> bool {
    let (central, heap) = (&crate::global::CENTRAL, &crate::global::HEAP);
    central.get(class).contains(heap, class, p)
        || crate::cpu_cache::cached(class, p)
        || crate::magazine::contains(class, p)
}

//! Huge blocks (at least `HUGE_THRESHOLD_BYTES`): direct mappings, kept
//! for reuse when freed. A table of live huge blocks (open addressing,
//! linear probing, backward-shift deletion; lives in its own mapping, made
//! at first use) lets `free` recognise a huge block, and reject a foreign
//! pointer or a second free, without touching the pointer's memory.
//!
//! Reuse: a freed block's range is *kept* (still mapped, dirty) in a small
//! address-ordered array of at most [`KEPT_SLOTS`] ranges, coalesced with
//! kept neighbours that are contiguous. `alloc` takes the best fit (the
//! smallest kept range that holds the aligned block; the lowest address on
//! ties); the block takes the whole range if that wastes at most a quarter
//! of the request, otherwise the range is split and the rest stays kept.
//! With no fit, the biggest smaller kept range is grown with `mremap` (its
//! pages are reused, the new ones are fresh); only then is a new range
//! mapped. Kept ranges are unmapped after `decay_ms` unused (see
//! [`crate::decay`]; `decay_ms=0` unmaps on free, as no keeping at all), by
//! `trim()`, or, oldest first, when the array is full. `calloc` zeroes a
//! block only where it reuses kept memory (fresh mappings read as zero),
//! and there only the resident pages: the rest is dropped with
//! `MADV_DONTNEED` (`zero_kept`), so a sparse `calloc` on a reused range
//! costs what it costs on a fresh mapping.
//! `realloc` works in place where it can: shrinking gives the tail to the
//! kept ranges, growing takes the kept range right after the block, else
//! `mremap` (which may move).
//!
//! Why not the page heap: the page heap lives in one reservation whose
//! growth is being reworked separately, and pages of a huge block there
//! would cost page-map entries and span records per block; a cache of whole
//! mappings keeps huge blocks independent of it, with the same reuse.
//!
//! Invariants (table lock held): `count` = number of non-empty slots;
//! every live huge block appears exactly once, keyed by its start address;
//! each key sits in the probe run that starts at its hash slot. Kept ranges
//! are sorted by address, disjoint, never contiguous with each other,
//! disjoint from live blocks, and their lengths sum to `kept_bytes`.

use crate::decay;
use crate::lock::Mutex;
use crate::os;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Table slots (the kernel's default `vm.max_map_count` is 65 530, so more
/// huge blocks than this could not be mapped anyway).
pub const HUGE_TABLE_SLOTS: usize = 1 << 17;
const MAX_LOAD: usize = HUGE_TABLE_SLOTS / 10 * 9;
/// Kept (freed, still mapped) ranges at most.
pub const KEPT_SLOTS: usize = 64;

#[derive(Clone, Copy)]
struct Slot {
    addr: usize,
    len: usize,
}

/// A freed range kept mapped for reuse.
#[derive(Clone, Copy)]
struct Kept {
    addr: usize,
    len: usize,
    /// When it became free ([`decay::now_ms`]); the oldest part's stamp
    /// after a merge.
    since: u64,
    /// `mremap` refused to grow it (it spans two kernel mappings).
    no_remap: bool,
    /// Its pages were given back (`MADV_DONTNEED`): it reads as zero.
    clean: bool,
}

const NO_KEPT: Kept = Kept {
    addr: 0,
    len: 0,
    since: 0,
    no_remap: false,
    clean: false,
};

struct Inner {
    slots: *mut Slot,
    count: usize,
    kept: [Kept; KEPT_SLOTS],
    nkept: usize,
    /// An allocation has reused a kept range: from then on freed blocks
    /// stay resident (see `free`).
    reused: bool,
}

// SAFETY: the slot array is only touched under the lock.
unsafe impl Send for Inner {}

/// The set of live huge blocks and of kept ranges.
pub struct HugeTable {
    inner: Mutex<Inner>,
    bytes: AtomicUsize,
    count: AtomicUsize,
    kept_bytes: AtomicUsize,
    maps: AtomicU64,
}

/// Pages whose residency one `mincore` call reads (16 MiB of range).
const MINCORE_PAGES: usize = 4096;
/// Shortest run of non-resident pages dropped with `MADV_DONTNEED` rather
/// than cleared (a call costs about as much as faulting a few pages in).
const DONTNEED_MIN_PAGES: usize = 16;

/// A chunk with fewer than one resident page in this many is dropped whole.
const SPARSE_DIVISOR: usize = 8;

/// Makes the kept memory `[p, p + len)` read as zero, touching only what
/// is resident: a kept range holds whatever its last user wrote, but often
/// only a small part of it was ever touched (a sparse `calloc`), and a
/// `memset` of the whole range would fault every other page in. So
/// `mincore` tells resident pages apart, [`MINCORE_PAGES`] at a time. A
/// chunk less than 1/[`SPARSE_DIVISOR`] resident is dropped whole with one
/// `MADV_DONTNEED` (the few pages in use fault back in if used). Otherwise
/// resident runs are cleared with
/// `memset` (they are in memory, and the caller is likely to use them);
/// runs of at least [`DONTNEED_MIN_PAGES`] other pages are dropped with
/// `MADV_DONTNEED` (never touched, or swapped out: either way they read as
/// zero afterwards and cost nothing until used, like a fresh mapping);
/// shorter ones are cleared. If `mincore` fails, everything is cleared.
///
/// # Safety
/// `[p, p + len)` is page aligned, mapped private and anonymous, and holds
/// nothing anyone still needs (the caller is about to hand it out).
unsafe fn zero_kept(p: *mut u8, len: usize) {
    let page = os::OS_PAGE_BYTES;
    let mut vec = [0u8; MINCORE_PAGES];
    let mut off = 0;
    while off < len {
        let chunk = (len - off).min(MINCORE_PAGES * page);
        let npages = chunk.div_ceil(page);
        // SAFETY: the chunk is page aligned and mapped; `vec` has room for
        // one byte per page of it.
        let ok = unsafe { libc::mincore(p.add(off).cast(), chunk, vec.as_mut_ptr()) } == 0;
        if !ok {
            // SAFETY: per the contract the rest of the range is ours.
            unsafe { p.add(off).write_bytes(0, len - off) };
            return;
        }
        let resident_pages = vec[..npages].iter().filter(|&&v| v & 1 != 0).count();
        // SAFETY: the chunk lies inside the range, ours to drop.
        if resident_pages * SPARSE_DIVISOR < npages && unsafe { os::release(p.add(off), chunk) } {
            // Mostly untouched: one call drops the few resident pages too.
            off += chunk;
            continue;
        }
        let mut i = 0;
        while i < npages {
            let resident = vec[i] & 1 != 0;
            let mut j = i + 1;
            while j < npages && (vec[j] & 1 != 0) == resident {
                j += 1;
            }
            let at = off + i * page;
            let run = (j * page).min(chunk) - i * page;
            // SAFETY: `[at, at + run)` lies inside the range, which is ours
            // to overwrite or drop.
            let dropped =
                !resident && j - i >= DONTNEED_MIN_PAGES && unsafe { os::release(p.add(at), run) };
            if !dropped {
                // SAFETY: as above.
                unsafe { p.add(at).write_bytes(0, run) };
            }
            i = j;
        }
        off += chunk;
    }
}

fn hash(addr: usize) -> usize {
    ((addr >> 12).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> (64 - 17)
}

impl HugeTable {
    /// An empty table (no mapping until the first insert).
    pub const fn new() -> Self {
        HugeTable {
            inner: Mutex::new(Inner {
                slots: core::ptr::null_mut(),
                count: 0,
                kept: [NO_KEPT; KEPT_SLOTS],
                nkept: 0,
                reused: false,
            }),
            bytes: AtomicUsize::new(0),
            count: AtomicUsize::new(0),
            kept_bytes: AtomicUsize::new(0),
            maps: AtomicU64::new(0),
        }
    }

    /// Bytes mapped for live huge blocks.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Number of live huge blocks.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Bytes of freed ranges kept mapped for reuse.
    pub fn kept_bytes(&self) -> usize {
        self.kept_bytes.load(Ordering::Relaxed)
    }

    /// `mmap` calls made for huge blocks so far (cumulative).
    pub fn maps(&self) -> u64 {
        self.maps.load(Ordering::Relaxed)
    }

    /// The lock, for fork handling.
    pub fn raw_lock(&self) -> &crate::lock::RawLock {
        self.inner.raw()
    }

    fn slot(g: &mut Inner, i: usize) -> &mut Slot {
        // SAFETY: `slots` has HUGE_TABLE_SLOTS entries and `i` is reduced
        // modulo that; the caller holds the lock (it has `g` mutably).
        unsafe { &mut *g.slots.add(i & (HUGE_TABLE_SLOTS - 1)) }
    }

    fn get(g: &Inner, i: usize) -> Slot {
        // SAFETY: as in `slot`; a copy is read under the lock.
        unsafe { *g.slots.add(i & (HUGE_TABLE_SLOTS - 1)) }
    }

    /// A huge block of at least `size` bytes aligned to `align` (a power of
    /// two >= OS page), from a kept range or a new mapping; null on failure.
    /// With `zero`, the block reads as zero (kept memory is cleared, fresh
    /// memory already is).
    pub fn alloc(&self, size: usize, align: usize, zero: bool) -> *mut u8 {
        // At least one page: a zero-size request with a huge alignment
        // still gets a real, unique block.
        let Some(len) = crate::util::round_up(size.max(1), os::OS_PAGE_BYTES) else {
            return core::ptr::null_mut();
        };
        self.alloc_inner(len, align, zero)
    }

    fn alloc_inner(&self, len: usize, align: usize, zero: bool) -> *mut u8 {
        if decay::keeps() {
            let mut g = self.inner.lock();
            let reused = match Self::take_kept(self, &mut g, len, align) {
                Some(r) => Some(r),
                None if align <= os::OS_PAGE_BYTES => self.grow_kept(&mut g, len),
                None => None,
            };
            if let Some((p, blen, dirty)) = reused {
                if !self.insert_locked(&mut g, p, blen) {
                    // SAFETY: the range was kept (ours, unused) and is now
                    // known to nobody.
                    unsafe { os::unmap(p as *mut u8, blen) };
                    return core::ptr::null_mut();
                }
                drop(g);
                if zero {
                    // SAFETY: `[p, p + dirty)` is part of the block we just
                    // made live for the caller (page aligned, mapped private
                    // and anonymous); nothing else uses it.
                    unsafe { zero_kept(p as *mut u8, dirty) };
                }
                return p as *mut u8;
            }
        }
        self.alloc_fresh(len, align)
    }

    fn alloc_fresh(&self, len: usize, align: usize) -> *mut u8 {
        self.maps.fetch_add(1, Ordering::Relaxed);
        let p = if align <= os::OS_PAGE_BYTES {
            match os::map(len, libc::PROT_READ | libc::PROT_WRITE, false) {
                Some(p) => p.as_ptr(),
                None => return core::ptr::null_mut(),
            }
        } else {
            // Over-reserve address space only (no commit charge for the
            // alignment slack), then make the block itself accessible.
            let Some(p) = os::reserve(len, align) else {
                return core::ptr::null_mut();
            };
            let p = p.as_ptr();
            // SAFETY: `p` is our fresh reservation of `len` bytes. The block
            // is committed with an accounted mapping, so an impossible size
            // fails here as it would without the alignment.
            if !unsafe { os::commit_accounted(p, len) } {
                // SAFETY: nobody else knows the reservation.
                unsafe { os::unmap(p, len) };
                return core::ptr::null_mut();
            }
            p
        };
        let ok = {
            let mut g = self.inner.lock();
            self.insert_locked(&mut g, p as usize, len)
        };
        if !ok {
            // SAFETY: we just mapped it and nobody else knows it.
            unsafe { os::unmap(p, len) };
            return core::ptr::null_mut();
        }
        p
    }

    /// Best fit among the kept ranges for `len` bytes aligned to `align`:
    /// removes it, keeps what the block does not take; returns (block
    /// address, block length, bytes that may be dirty from its start).
    fn take_kept(&self, g: &mut Inner, len: usize, align: usize) -> Option<(usize, usize, usize)> {
        let mut best: Option<usize> = None;
        for i in 0..g.nkept {
            let k = g.kept[i];
            let a = (k.addr + align - 1) & !(align - 1);
            if a >= k.addr
                && a.checked_add(len).is_some_and(|e| e <= k.addr + k.len)
                && best.is_none_or(|b| k.len < g.kept[b].len)
            {
                best = Some(i);
            }
        }
        let i = best?;
        let k = self.remove_kept(g, i);
        let a = (k.addr + align - 1) & !(align - 1);
        let end = k.addr + k.len;
        let mut blen = len;
        if end - (a + len) <= len / 4 {
            blen = end - a;
        }
        if a > k.addr {
            self.add_kept_as(g, k.addr, a - k.addr, k.since, k.clean);
        }
        if a + blen < end {
            self.add_kept_as(g, a + blen, end - (a + blen), k.since, k.clean);
        }
        g.reused = true;
        Some((a, blen, if k.clean { 0 } else { blen }))
    }

    /// No kept range fits: grows the biggest smaller one to `len` with
    /// `mremap` (reusing its pages). Returns (address, len, dirty prefix).
    fn grow_kept(&self, g: &mut Inner, len: usize) -> Option<(usize, usize, usize)> {
        let mut best: Option<usize> = None;
        for i in 0..g.nkept {
            let k = g.kept[i];
            if !k.no_remap && k.len < len && best.is_none_or(|b| k.len > g.kept[b].len) {
                best = Some(i);
            }
        }
        let i = best?;
        let k = g.kept[i];
        // SAFETY: the kept range is ours and unused; on success only the
        // returned address is used.
        match unsafe { os::remap(k.addr as *mut u8, k.len, len) } {
            Some(q) => {
                self.remove_kept(g, i);
                g.reused = true;
                Some((q.as_ptr() as usize, len, if k.clean { 0 } else { k.len }))
            }
            None => {
                g.kept[i].no_remap = true;
                None
            }
        }
    }

    fn remove_kept(&self, g: &mut Inner, i: usize) -> Kept {
        let k = g.kept[i];
        g.kept.copy_within(i + 1..g.nkept, i);
        g.nkept -= 1;
        self.kept_bytes.fetch_sub(k.len, Ordering::Relaxed);
        k
    }

    /// Keeps `[addr, addr + len)` (free, mapped), merging it with contiguous
    /// kept neighbours (the merged range has the oldest stamp). If the array
    /// is full, the oldest range is unmapped first.
    fn add_kept(&self, g: &mut Inner, addr: usize, len: usize, since: u64) {
        self.add_kept_as(g, addr, len, since, false);
    }

    /// `add_kept`, saying whether the range's pages were given back
    /// (a merge is clean only if all its parts are).
    fn add_kept_as(&self, g: &mut Inner, addr: usize, len: usize, since: u64, clean: bool) {
        let pos = g.kept[..g.nkept].partition_point(|k| k.addr < addr);
        let left = pos > 0 && g.kept[pos - 1].addr + g.kept[pos - 1].len == addr;
        let right = pos < g.nkept && g.kept[pos].addr == addr + len;
        self.kept_bytes.fetch_add(len, Ordering::Relaxed);
        match (left, right) {
            (true, true) => {
                let r = g.kept[pos];
                let l = &mut g.kept[pos - 1];
                l.len += len + r.len;
                l.since = l.since.min(since).min(r.since);
                l.no_remap |= r.no_remap;
                l.clean &= clean && r.clean;
                g.kept.copy_within(pos + 1..g.nkept, pos);
                g.nkept -= 1;
            }
            (true, false) => {
                let l = &mut g.kept[pos - 1];
                l.len += len;
                l.since = l.since.min(since);
                l.clean &= clean;
            }
            (false, true) => {
                let r = &mut g.kept[pos];
                r.addr = addr;
                r.len += len;
                r.since = r.since.min(since);
                r.clean &= clean;
            }
            (false, false) => {
                let mut pos = pos;
                if g.nkept == KEPT_SLOTS {
                    let oldest = (0..g.nkept).min_by_key(|&i| g.kept[i].since).unwrap_or(0);
                    let o = self.remove_kept(g, oldest);
                    // SAFETY: a kept range is ours and unused; it is gone
                    // from the array.
                    unsafe { os::unmap(o.addr as *mut u8, o.len) };
                    if oldest < pos {
                        pos -= 1;
                    }
                }
                g.kept.copy_within(pos..g.nkept, pos + 1);
                g.kept[pos] = Kept {
                    addr,
                    len,
                    since,
                    no_remap: false,
                    clean,
                };
                g.nkept += 1;
            }
        }
    }

    fn insert_locked(&self, g: &mut Inner, addr: usize, len: usize) -> bool {
        if g.slots.is_null() {
            match os::map(
                HUGE_TABLE_SLOTS * core::mem::size_of::<Slot>(),
                libc::PROT_READ | libc::PROT_WRITE,
                true,
            ) {
                Some(p) => g.slots = p.as_ptr().cast(),
                None => return false,
            }
        }
        if g.count >= MAX_LOAD {
            return false;
        }
        let mut i = hash(addr);
        while Self::get(g, i).addr != 0 {
            i += 1;
        }
        *Self::slot(g, i) = Slot { addr, len };
        g.count += 1;
        self.count.store(g.count, Ordering::Relaxed);
        self.bytes.fetch_add(len, Ordering::Relaxed);
        true
    }

    fn find(g: &Inner, addr: usize) -> Option<usize> {
        if g.slots.is_null() || addr == 0 {
            return None;
        }
        let mut i = hash(addr);
        loop {
            let s = Self::get(g, i);
            if s.addr == 0 {
                return None;
            }
            if s.addr == addr {
                return Some(i & (HUGE_TABLE_SLOTS - 1));
            }
            i += 1;
        }
    }

    /// The length of the live huge block starting at `addr`, if any.
    pub fn len_of(&self, addr: usize) -> Option<usize> {
        let g = self.inner.lock();
        Self::find(&g, addr).map(|i| Self::get(&g, i).len)
    }

    fn remove_at(g: &mut Inner, mut hole: usize) {
        *Self::slot(g, hole) = Slot { addr: 0, len: 0 };
        let mut i = hole + 1;
        loop {
            let s = Self::get(g, i);
            if s.addr == 0 {
                break;
            }
            let home = hash(s.addr);
            // Move `s` into the hole if its home is not in (hole, i].
            let dist_home = (i.wrapping_sub(home)) & (HUGE_TABLE_SLOTS - 1);
            let dist_hole = (i.wrapping_sub(hole)) & (HUGE_TABLE_SLOTS - 1);
            if dist_home >= dist_hole {
                *Self::slot(g, hole) = s;
                *Self::slot(g, i) = Slot { addr: 0, len: 0 };
                hole = i;
            }
            i += 1;
        }
        g.count -= 1;
    }

    /// Frees the huge block at `addr` (kept for reuse, or unmapped with
    /// `decay_ms=0`); false if there is none (foreign or already freed
    /// pointer), and then nothing is touched.
    ///
    /// Until some allocation has reused a kept range (and unless
    /// `decay_ms=-1`), a freed block's pages are given back at once
    /// (`MADV_DONTNEED`) and only its mapping is kept: a program that frees
    /// a big buffer once (a grown vector's old storage, a loaded file) does
    /// not hold it resident for the decay delay, while one that frees and
    /// allocates huge blocks in a loop pays the page faults of one round and
    /// then reuses resident memory.
    ///
    /// # Safety
    /// If `addr` is a live huge block, the caller owns it and will not use it
    /// again.
    pub unsafe fn free(&self, addr: usize) -> bool {
        let keep = decay::keeps();
        let now = if keep { decay::now_ms() } else { 0 };
        let (len, kept) = {
            let mut g = self.inner.lock();
            let Some(i) = Self::find(&g, addr) else {
                return false;
            };
            let len = Self::get(&g, i).len;
            Self::remove_at(&mut g, i);
            self.count.store(g.count, Ordering::Relaxed);
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            // `decay_ms=-1` promises that nothing goes back by itself.
            let kept = keep && (g.reused || decay::decay_ms() < 0);
            if kept {
                self.add_kept(&mut g, addr, len, now);
            }
            (len, kept)
        };
        if kept {
            decay::note_dirty(now);
        } else if keep {
            // The block is in neither structure now: nobody can take it
            // while its pages are given back outside the lock.
            // SAFETY: the block was ours, the caller gave it up; page
            // aligned and mapped.
            let clean = unsafe { os::release(addr as *mut u8, len) };
            let mut g = self.inner.lock();
            self.add_kept_as(&mut g, addr, len, now, clean);
            drop(g);
            decay::note_dirty(now);
        } else {
            // SAFETY: the block was ours and is now unknown to the table;
            // the caller gave up its ownership.
            unsafe { os::unmap(addr as *mut u8, len) };
        }
        decay::tick();
        true
    }

    /// Resizes a huge block: in place when shrinking (the tail is kept or
    /// unmapped) or when a kept range follows it with enough room, else
    /// with `mremap` (may move it, keeping only OS-page alignment). Returns
    /// the new address, or null if the kernel refused (the block is then
    /// untouched).
    ///
    /// # Safety
    /// `addr` is a live huge block owned by the caller, who uses only the
    /// returned address afterwards on success.
    pub unsafe fn resize(&self, addr: usize, new_size: usize) -> *mut u8 {
        let Some(new_len) = crate::util::round_up(new_size.max(1), os::OS_PAGE_BYTES) else {
            return core::ptr::null_mut();
        };
        let keep = decay::keeps();
        let now = if keep { decay::now_ms() } else { 0 };
        let mut g = self.inner.lock();
        let Some(i) = Self::find(&g, addr) else {
            return core::ptr::null_mut();
        };
        let old_len = Self::get(&g, i).len;
        if new_len <= old_len {
            if new_len < old_len {
                let tail = old_len - new_len;
                Self::slot(&mut g, i).len = new_len;
                self.bytes.fetch_sub(tail, Ordering::Relaxed);
                if keep {
                    self.add_kept(&mut g, addr + new_len, tail, now);
                    drop(g);
                    decay::note_dirty(now);
                } else {
                    drop(g);
                    // SAFETY: the tail was part of the caller's block, which
                    // gave it up; the table no longer covers it.
                    unsafe { os::unmap((addr + new_len) as *mut u8, tail) };
                }
            }
            return addr as *mut u8;
        }
        let need = new_len - old_len;
        let end = addr + old_len;
        let pos = g.kept[..g.nkept].partition_point(|k| k.addr < end);
        if pos < g.nkept && g.kept[pos].addr == end && g.kept[pos].len >= need {
            let k = self.remove_kept(&mut g, pos);
            if k.len > need {
                self.add_kept(&mut g, end + need, k.len - need, k.since);
            }
            Self::slot(&mut g, i).len = new_len;
            self.bytes.fetch_add(need, Ordering::Relaxed);
            return addr as *mut u8;
        }
        // SAFETY: the whole range is the caller's block; the lock keeps the
        // table consistent with it.
        let Some(q) = (unsafe { os::remap(addr as *mut u8, old_len, new_len) }) else {
            return core::ptr::null_mut();
        };
        let q = q.as_ptr();
        if q as usize == addr {
            Self::slot(&mut g, i).len = new_len;
        } else {
            Self::remove_at(&mut g, i);
            let mut j = hash(q as usize);
            while Self::get(&g, j).addr != 0 {
                j += 1;
            }
            *Self::slot(&mut g, j) = Slot {
                addr: q as usize,
                len: new_len,
            };
            g.count += 1;
        }
        self.bytes.fetch_add(new_len, Ordering::Relaxed);
        self.bytes.fetch_sub(old_len, Ordering::Relaxed);
        q
    }

    /// Unmaps the kept ranges unused for `decay_ms` at `now`; returns when
    /// the next one is due (`u64::MAX`: none kept).
    pub fn decay(&self, now: u64, decay_ms: u64) -> u64 {
        let mut next = u64::MAX;
        let mut g = self.inner.lock();
        let mut i = 0;
        while i < g.nkept {
            let k = g.kept[i];
            if now.saturating_sub(k.since) >= decay_ms {
                self.remove_kept(&mut g, i);
                // SAFETY: a kept range is ours and unused; it is gone from
                // the array.
                unsafe { os::unmap(k.addr as *mut u8, k.len) };
            } else {
                next = next.min(k.since.saturating_add(decay_ms));
                i += 1;
            }
        }
        next
    }

    /// Unmaps every kept range (`trim`); returns the bytes unmapped.
    pub fn release_all(&self) -> usize {
        let mut g = self.inner.lock();
        let mut n = 0;
        while g.nkept > 0 {
            let last = g.nkept - 1;
            let k = self.remove_kept(&mut g, last);
            // SAFETY: as in `decay`.
            unsafe { os::unmap(k.addr as *mut u8, k.len) };
            n += k.len;
        }
        n
    }

    /// Checks the table invariants (debug builds).
    pub fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let g = self.inner.lock();
        if g.slots.is_null() {
            assert_eq!(g.count, 0);
            assert_eq!(g.nkept, 0);
            return;
        }
        let mut n = 0;
        for i in 0..HUGE_TABLE_SLOTS {
            let s = Self::get(&g, i);
            if s.addr != 0 {
                n += 1;
                assert_eq!(Self::find(&g, s.addr), Some(i));
            }
        }
        assert_eq!(n, g.count);
        let mut kept = 0;
        for i in 0..g.nkept {
            let k = g.kept[i];
            assert!(k.len > 0);
            if i > 0 {
                let p = g.kept[i - 1];
                assert!(p.addr + p.len < k.addr, "kept ranges overlap or touch");
            }
            assert!(Self::find(&g, k.addr).is_none());
            kept += k.len;
        }
        assert_eq!(kept, self.kept_bytes());
    }
}

impl Default for HugeTable {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_resize() {
        let t = std::boxed::Box::leak(std::boxed::Box::new(HugeTable::new()));
        let mut v = std::vec::Vec::new();
        for i in 0..200 {
            let align = if i % 3 == 0 { 1 << 21 } else { 4096 };
            let p = t.alloc((1 << 20) + i * 100, align, false);
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0);
            // SAFETY: fresh mapping of that size.
            unsafe { p.write_bytes(i as u8, 1 << 20) };
            v.push(p);
        }
        t.check_invariants();
        assert_eq!(t.count(), 200);
        // SAFETY: a foreign address is not in the table.
        assert!(!unsafe { t.free(0x1000) });
        for (i, p) in v.iter_mut().enumerate() {
            if i % 2 == 0 {
                // SAFETY: the block is ours.
                let q = unsafe { t.resize(*p as usize, 3 << 20) };
                assert!(!q.is_null());
                // SAFETY: contents kept by mremap.
                assert_eq!(unsafe { *q.add(1000) }, i as u8);
                *p = q;
            }
        }
        t.check_invariants();
        for (i, &p) in v.iter().enumerate() {
            if i % 3 != 1 {
                // SAFETY: ours, freed once.
                assert!(unsafe { t.free(p as usize) });
            }
        }
        t.check_invariants();
        for (i, &p) in v.iter().enumerate() {
            if i % 3 != 1 {
                // SAFETY: a second free is detected and does nothing.
                assert!(!unsafe { t.free(p as usize) });
            } else {
                assert!(t.len_of(p as usize).is_some());
            }
        }
        t.check_invariants();
    }

    /// Resident 4 KiB pages of `[p, p + len)` (mincore).
    fn resident_pages(p: *mut u8, len: usize) -> usize {
        let mut v = std::vec![0u8; len / 4096];
        // SAFETY: `[p, p + len)` is mapped (a live block or a kept range);
        // `v` holds one byte per page.
        assert_eq!(unsafe { libc::mincore(p.cast(), len, v.as_mut_ptr()) }, 0);
        v.iter().filter(|&&b| b & 1 != 0).count()
    }

    #[test]
    fn kept_ranges_are_reused_split_and_coalesced() {
        const MIB: usize = 1 << 20;
        let t = std::boxed::Box::leak(std::boxed::Box::new(HugeTable::new()));
        let a = t.alloc(16 * MIB, 4096, false);
        assert!(!a.is_null());
        // SAFETY: a fresh 16 MiB block.
        unsafe { a.write_bytes(0xaa, 16 * MIB) };
        assert_eq!(t.maps(), 1);
        // SAFETY: ours, freed once.
        assert!(unsafe { t.free(a as usize) });
        assert_eq!((t.bytes(), t.kept_bytes()), (0, 16 * MIB));
        // No kept range was reused yet: the mapping is kept, its pages are
        // given back.
        assert_eq!(resident_pages(a, 16 * MIB), 0);
        // SAFETY: a second free is rejected, the kept range is untouched.
        assert!(!unsafe { t.free(a as usize) });
        t.check_invariants();
        // Same size: the same range, zeroed on request.
        let b = t.alloc(16 * MIB - 100, 4096, true);
        assert_eq!(b, a);
        assert_eq!(t.len_of(b as usize), Some(16 * MIB));
        // SAFETY: the block is 16 MiB long.
        assert!(unsafe { core::slice::from_raw_parts(b, 16 * MIB) }
            .iter()
            .all(|&x| x == 0));
        // SAFETY: the block is 16 MiB long and ours.
        unsafe { b.write_bytes(0x55, 16 * MIB) };
        // SAFETY: ours.
        assert!(unsafe { t.free(b as usize) });
        // A kept range was reused: freed blocks now stay resident.
        assert_eq!(resident_pages(b, 16 * MIB), 16 * MIB / 4096);
        assert_eq!(t.maps(), 1);
        // Much smaller: split off the front, the rest stays kept.
        let c = t.alloc(4 * MIB, 4096, false);
        assert_eq!(c, a);
        assert_eq!(t.len_of(c as usize), Some(4 * MIB));
        assert_eq!(t.kept_bytes(), 12 * MIB);
        // A pointer inside the kept rest is not a block.
        assert_eq!(t.len_of(a as usize + 4 * MIB), None);
        // SAFETY: not a live block: rejected.
        assert!(!unsafe { t.free(a as usize + 4 * MIB) });
        t.check_invariants();
        // realloc in place: grow into the kept neighbour, shrink back.
        // SAFETY: c is ours.
        let d = unsafe { t.resize(c as usize, 10 * MIB) };
        assert_eq!(d, c);
        assert_eq!(
            (t.len_of(d as usize), t.kept_bytes()),
            (Some(10 * MIB), 6 * MIB)
        );
        // SAFETY: d is ours.
        let e = unsafe { t.resize(d as usize, 2 * MIB) };
        assert_eq!(e, c);
        assert_eq!(t.kept_bytes(), 14 * MIB);
        t.check_invariants();
        // Aligned: taken from inside the kept range.
        let f = t.alloc(3 * MIB, 4 * MIB, false);
        assert_eq!(f as usize % (4 * MIB), 0);
        assert!(f as usize >= a as usize && (f as usize) < a as usize + 16 * MIB);
        t.check_invariants();
        // SAFETY: ours.
        unsafe {
            assert!(t.free(e as usize));
            assert!(t.free(f as usize));
        }
        t.check_invariants();
        assert_eq!(
            (t.kept_bytes(), t.maps()),
            (16 * MIB, 1),
            "coalesced, no new mmap"
        );
        // Bigger than any kept range: the kept one grows (mremap).
        let g = t.alloc(20 * MIB, 4096, true);
        assert!(!g.is_null());
        assert_eq!((t.kept_bytes(), t.maps()), (0, 1));
        // SAFETY: a 20 MiB block, zeroed.
        assert!(unsafe { core::slice::from_raw_parts(g, 20 * MIB) }
            .iter()
            .all(|&x| x == 0));
        // SAFETY: ours.
        assert!(unsafe { t.free(g as usize) });
        // Decay: not yet due, then due.
        let now = decay::now_ms();
        assert!(t.decay(now, 60_000) > now);
        assert_eq!(t.kept_bytes(), 20 * MIB);
        assert_eq!(t.decay(now + 60_000, 60_000), u64::MAX);
        assert_eq!(t.kept_bytes(), 0);
        let h = t.alloc(2 * MIB, 4096, false);
        // SAFETY: ours.
        assert!(unsafe { t.free(h as usize) });
        assert_eq!(t.release_all(), 2 * MIB);
        assert_eq!(t.kept_bytes(), 0);
        t.check_invariants();
    }
}

//! Time-based decay: dirty free memory (page-heap free spans, kept huge
//! ranges) goes back to the OS once unused for `decay_ms`
//! (`RSEQ_MALLOC_CONF=decay_ms=N`, default 10 000; 0 = at once, -1 = never).
//!
//! Driven by allocator activity: slow paths (page-heap alloc/free, huge
//! alloc/free, cache misses) call [`tick`], which costs a relaxed load when
//! nothing is dirty and otherwise one relaxed counter update; every
//! [`TICK_EVENTS`] events it reads `CLOCK_MONOTONIC_COARSE` (a vDSO read) and,
//! if the earliest deadline [`NEXT_DUE`] has passed, runs [`run`]. Memory is
//! stamped when it becomes dirty-free: a page-heap span keeps the stamp of
//! its oldest dirty part when it coalesces, and so does a kept huge range (a
//! range that keeps being reused is still returned once per period; a big
//! old range does not stay for ever because small pieces of it are reused).
//!
//! Memory a spike leaves behind is bounded without waiting for a pass: the
//! page heap keeps at most max(an eighth of the pages in use, 8 MiB) dirty
//! and releases the rest as it is freed (`PageHeap::dirty_cap_pages`). A
//! pass also collects the front end: per-CPU caches that did not move since
//! the previous pass are drained and transfer stacks give back what stayed
//! below their low-water mark, so the spans those objects pin can decay.
//! Blocks above 32 KiB bypass the per-CPU caches
//! (`size_class::CPU_CACHE_MAX_OBJECT_BYTES`), so their malloc and free are
//! events too: a program whose remaining activity is pairs of small objects
//! (which never miss) still gets its passes from anything bigger, or from
//! the background thread.
//!
//! `background=1`: a detached thread, created lazily from the first tick at
//! a point where the caller holds no allocator lock (not during init, where
//! loader locks may be held), wakes every `decay_ms / 4` (10 ms .. 1 s) and
//! runs the same pass, so an idle process returns memory too.
//! `pthread_create` itself may call `malloc`: the state is `CREATING`
//! while it runs, so that nested call does not recurse. A
//! failed creation (EAGAIN under RLIMIT_NPROC, seccomp) leaves the
//! activity-driven decay alone in charge. A fork child has no such thread:
//! [`fork_child`] makes the next tick in the child create it again.

use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};

/// Slow-path events between two clock reads.
pub const TICK_EVENTS: u32 = 16;

/// The decay delay in ms (-1 = never).
static DECAY_MS: AtomicI64 = AtomicI64::new(10_000);
/// Earliest time (ms, [`now_ms`]) at which some dirty memory may be due
/// or the next idle-cache scan is wanted (see [`run`]); `u64::MAX` when
/// nothing is dirty and the caches were empty (then `tick` is one load).
static NEXT_DUE: AtomicU64 = AtomicU64::new(u64::MAX);
static EVENTS: AtomicU32 = AtomicU32::new(0);
/// One decay pass at a time (others skip theirs).
static BUSY: AtomicBool = AtomicBool::new(false);

atomic_state! {
    /// The background thread's state.
    enum Background in AtomicBackground {
        /// Not asked for (`background=0`, or no decay).
        Off = 0,
        /// Asked for: the next tick that may spawn creates it.
        Wanted = 1,
        /// `pthread_create` is running (a nested malloc must not recurse).
        Creating = 2,
        /// Running.
        Running = 3,
        /// Creation failed: activity-driven decay alone.
        Failed = 4,
    }
}
static BG_STATE: AtomicBackground = AtomicBackground::new(Background::Off);
/// Background passes done (statistics, tests).
pub static BG_PASSES: AtomicU64 = AtomicU64::new(0);

/// Takes the settings from the configuration (once, at init).
pub fn configure(cfg: &crate::config::Config) {
    DECAY_MS.store(cfg.decay_ms, Ordering::Relaxed);
    if cfg.background && cfg.decay_ms > 0 {
        BG_STATE.store(Background::Wanted, Ordering::Relaxed);
    }
}

/// The decay delay in ms; negative = never.
#[inline]
pub fn decay_ms() -> i64 {
    DECAY_MS.load(Ordering::Relaxed)
}

/// Whether freed memory may be kept (dirty) at all (`decay_ms != 0`).
#[inline]
pub fn keeps() -> bool {
    decay_ms() != 0
}

/// Milliseconds of `CLOCK_MONOTONIC_COARSE` (a few ms resolution).
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter; the call cannot fail for a
    // supported clock id (and leaves 0 if it does).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Records that memory stamped `since` (ms) became dirty-free: it is due at
/// `since + decay_ms`.
pub fn note_dirty(since: u64) {
    let d = decay_ms();
    if d > 0 {
        let due = since.saturating_add(d as u64);
        // Read first: the common case (an earlier deadline is pending)
        // leaves the shared line unwritten.
        if due < NEXT_DUE.load(Ordering::Relaxed) {
            NEXT_DUE.fetch_min(due, Ordering::Relaxed);
        }
    }
}

/// A slow-path event at a point where the caller holds no allocator lock
/// (it may create the background thread).
#[inline]
pub fn tick() {
    if NEXT_DUE.load(Ordering::Relaxed) == u64::MAX
        && BG_STATE.load(Ordering::Relaxed) != Background::Wanted
    {
        return;
    }
    if count_event() {
        tick_slow(true);
    }
}

/// A slow-path event while the caller may hold allocator locks (central,
/// never the page-heap or huge lock): runs decay if due, never creates the
/// thread.
#[inline]
pub fn tick_locked() {
    if NEXT_DUE.load(Ordering::Relaxed) == u64::MAX {
        return;
    }
    if count_event() {
        tick_slow(false);
    }
}

#[inline]
fn count_event() -> bool {
    // A racy counter (no read-modify-write): a lost update only delays a
    // clock read.
    let n = EVENTS.load(Ordering::Relaxed).wrapping_add(1);
    EVENTS.store(n, Ordering::Relaxed);
    n.is_multiple_of(TICK_EVENTS)
}

#[cold]
#[inline(never)]
fn tick_slow(can_spawn: bool) {
    if can_spawn && BG_STATE.load(Ordering::Relaxed) == Background::Wanted {
        start_background();
    }
    let now = now_ms();
    if now >= NEXT_DUE.load(Ordering::Relaxed) {
        run(now, can_spawn);
    }
}

/// Returns every dirty free range unused for `decay_ms` at time `now`.
/// Takes the page-heap and huge locks (one after the other); skips if
/// another pass is running. The next pass is due when the oldest remaining
/// range is, but not before `decay_ms / 4` (at most 1 s) from now.
/// `unlocked`: the caller holds no allocator lock, so the pass may also
/// drain idle per-CPU caches (which takes central locks).
pub fn run(now: u64, unlocked: bool) {
    let d = decay_ms();
    if d < 0 || BUSY.swap(true, Ordering::Acquire) {
        return;
    }
    // Anything stamped from here on lowers NEXT_DUE again; what is stamped
    // before is seen by the scans below (they take the locks after this).
    NEXT_DUE.store(u64::MAX, Ordering::Relaxed);
    // First the front: per-CPU caches whose stacks have not moved since
    // the previous pass give their objects back, and each transfer stack
    // what sat below its low-water mark, so that the spans those objects
    // pin reach the page heap (a program that frees a big heap, then runs
    // alloc/free pairs, keeps the last objects freed cached, about one per
    // span, and never misses again). Anything still held keeps a pass
    // pending: the next one may find it idle. A pass run under a central
    // lock (`unlocked` false) cannot take central locks: it leaves this to
    // the next pass.
    let holding = if unlocked {
        let caches = crate::global::cache_ready()
            && crate::cpu_cache::drain_idle_regions(&crate::global::CENTRAL, &crate::global::HEAP);
        let mut transfer = 0;
        for c in crate::size_class::SizeClass::all() {
            transfer += crate::global::CENTRAL
                .get(c)
                .plunder(&crate::global::HEAP, c);
        }
        caches || transfer > 0
    } else {
        crate::global::cache_ready()
    };
    let a = crate::global::HEAP.decay(now, d as u64);
    let b = crate::global::HUGE.decay(now, d as u64);
    // Passes are at least a quarter of the decay apart (a pass is
    // O(free spans)): memory is returned at most 25% late.
    let mut next = a.min(b);
    if holding {
        next = next.min(now);
    }
    if next != u64::MAX {
        NEXT_DUE.fetch_min(next.max(now + gap_ms(d as u64)), Ordering::Relaxed);
    }
    BUSY.store(false, Ordering::Release);
}

/// The least time between two decay passes.
fn gap_ms(decay_ms: u64) -> u64 {
    (decay_ms / 4).clamp(1, 1000)
}

/// In a fork child: a pass interrupted by the fork does not exist here, and
/// neither does the background thread (re-created by the next tick).
pub fn fork_child() {
    BUSY.store(false, Ordering::Relaxed);
    let s = BG_STATE.load(Ordering::Relaxed);
    if s == Background::Running || s == Background::Creating {
        BG_STATE.store(Background::Wanted, Ordering::Relaxed);
    }
}

/// Whether the background thread runs (tests, stats).
pub fn background_running() -> bool {
    BG_STATE.load(Ordering::Relaxed) == Background::Running
}

/// The background thread's period: a quarter of the decay, 10 ms .. 1 s.
fn bg_period_ms() -> u64 {
    (decay_ms().max(0) as u64 / 4).clamp(10, 1000)
}

#[cold]
#[inline(never)]
fn start_background() {
    if BG_STATE
        .compare_exchange(
            Background::Wanted,
            Background::Creating,
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return;
    }
    // SAFETY: plain libc thread creation; `attr`, the signal sets and the
    // thread id are valid locals; the start routine takes no argument and
    // never returns. All signals are blocked in the new thread (it inherits
    // the mask we set around the call) so it never runs a handler.
    let ok = unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        let mut ok = libc::pthread_attr_init(&mut attr) == 0;
        if ok {
            libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
            libc::pthread_attr_setstacksize(&mut attr, 128 << 10);
            let mut all: libc::sigset_t = core::mem::zeroed();
            let mut old: libc::sigset_t = core::mem::zeroed();
            libc::sigfillset(&mut all);
            let masked = libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) == 0;
            let mut tid: libc::pthread_t = core::mem::zeroed();
            ok = libc::pthread_create(&mut tid, &attr, bg_main, core::ptr::null_mut()) == 0;
            if masked {
                libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
            }
            libc::pthread_attr_destroy(&mut attr);
        }
        ok
    };
    let _ = BG_STATE.compare_exchange(
        Background::Creating,
        if ok {
            Background::Running
        } else {
            Background::Failed
        },
        Ordering::Release,
        Ordering::Relaxed,
    );
}

extern "C" fn bg_main(_: *mut libc::c_void) -> *mut libc::c_void {
    loop {
        let ms = bg_period_ms();
        let ts = libc::timespec {
            tv_sec: (ms / 1000) as libc::time_t,
            tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
        };
        // SAFETY: `ts` is a valid timespec; an interruption just shortens
        // the sleep.
        unsafe { libc::nanosleep(&ts, core::ptr::null_mut()) };
        // Every period when nothing is pending (the pass drains idle
        // per-CPU caches too, so that their spans reach the page heap).
        let now = now_ms();
        let due = NEXT_DUE.load(Ordering::Relaxed);
        if due == u64::MAX || now >= due {
            run(now, true);
        }
        BG_PASSES.fetch_add(1, Ordering::Relaxed);
    }
}

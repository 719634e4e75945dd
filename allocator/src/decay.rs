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
//! `background=1`: a detached thread, created lazily from the first tick at
//! a point where the caller holds no allocator lock (not during init, where
//! loader locks may be held), wakes every `decay_ms / 4` (10 ms .. 1 s) and
//! runs the same decay, and drains idle per-CPU caches, so an idle process
//! returns memory too. `pthread_create` itself may call `malloc`: the state
//! is `CREATING` while it runs, so that nested call does not recurse. A
//! failed creation (EAGAIN under RLIMIT_NPROC, seccomp) leaves the
//! activity-driven decay alone in charge. A fork child has no such thread:
//! [`fork_child`] makes the next tick in the child create it again.

use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};

/// Slow-path events between two clock reads.
pub const TICK_EVENTS: u32 = 16;

/// The decay delay in ms (-1 = never).
static DECAY_MS: AtomicI64 = AtomicI64::new(10_000);
/// Earliest time (ms, [`now_ms`]) at which some dirty memory may be due;
/// `u64::MAX` when nothing is dirty (then `tick` is one load).
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
        run(now);
    }
}

/// Returns every dirty free range unused for `decay_ms` at time `now`.
/// Takes the page-heap and huge locks (one after the other); skips if
/// another pass is running. The next pass is due when the oldest remaining
/// range is, but not before `decay_ms / 4` (at most 1 s) from now.
pub fn run(now: u64) {
    let d = decay_ms();
    if d < 0 || BUSY.swap(true, Ordering::Acquire) {
        return;
    }
    // Anything stamped from here on lowers NEXT_DUE again; what is stamped
    // before is seen by the scans below (they take the locks after this).
    NEXT_DUE.store(u64::MAX, Ordering::Relaxed);
    let a = crate::global::HEAP.decay(now, d as u64);
    let b = crate::global::HUGE.decay(now, d as u64);
    // Passes are at least a quarter of the decay apart (a pass is
    // O(free spans)): memory is returned at most 25% late.
    let next = a.min(b);
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
        if crate::global::cache_ready() {
            // Idle per-CPU caches give their objects back, so that their
            // spans can reach the page heap and decay.
            crate::cpu_cache::drain_idle_regions(&crate::global::CENTRAL, &crate::global::HEAP);
        }
        let now = now_ms();
        if now >= NEXT_DUE.load(Ordering::Relaxed) {
            run(now);
        }
        BG_PASSES.fetch_add(1, Ordering::Relaxed);
    }
}

//! x86_64 critical sections and the few machine-level helpers registration
//! needs. This is the only file with assembly for this architecture.
//!
//! # Per-CPU region layout (shared with `percpu.rs`)
//!
//! Each region (one per CPU or per concurrency id) is `1 << REGION_SHIFT`
//! bytes at `base + (index << REGION_SHIFT)`. It starts with one 8-byte
//! header per class, then the pointer slots of all classes. Slot and header
//! positions are counted in 8-byte units from the region start:
//!
//! ```text
//! header[class] = { current: u16 @0, lock: u16 @2, end: u16 @4, begin: u16 @6 }
//! slots of class = region[begin .. end], live items = region[begin .. current]
//! ```
//!
//! A section loads and commits `current` as the 32-bit word `current |
//! lock << 16`: the lock half-word belongs to the CAS discipline and is
//! always 0 in a structure driven by rseq, so the word's value is
//! `current`. A 32-bit store followed by a 32-bit load of the same address
//! is forwarded with no latency by recent x86 cores (memory renaming),
//! 16-bit ones are not: the loop-carried chain of a pop+push pair through
//! `current` fell from 4.2 ns to 1.1 ns on the development machine (Zen 4)
//! when the word became 32 bits wide. `begin`/`end` are separate 16-bit
//! loads. A section may thus read `current` while a drain has the header
//! stopped and the bounds after the drain restored them; the drain
//! therefore fences a second time, after resetting `current` and before
//! restoring the bounds (see `percpu.rs`).
//!
//! Only `current` is written by the critical sections (the commit store).
//! `begin`/`end` are written by initialisation and by a drain, which first
//! "stops" the header (`begin = 0xffff`, `end = 0`: every pop sees it empty,
//! every push sees it full) and then fences.
//!
//! # Anatomy of a section
//!
//! ```text
//! 2:  rseq->rseq_cs = &descriptor          arm (outside the section)
//! 4:  start_ip: cpu = rseq->cpu_id; if cpu < 0 -> exit "unregistered"
//!     idx = rseq->cpu_id or rseq->mm_cid; region = base + idx << SHIFT
//!     ... reads, and writes to free slots (harmless if we restart) ...
//!     header.current = new value            the commit: one store
//! 5:  post-commit: status = OK
//!     abort (elsewhere, preceded by the signature):
//! 6:  aborts++ (global counter); if ++retries < MAX_RETRIES goto 2 else exit "exhausted"
//! ```
//!
//! Everything before the commit store can start over: an abort (preemption,
//! migration, signal, membarrier fence) discards it. The descriptor goes to
//! `__rseq_cs`, a pointer to it to `__rseq_cs_ptr_array`, and every exit
//! `(start_ip, exit_ip)` to `__rseq_exit_point_array`, which is where
//! debuggers look for them. Numeric labels only, because inlining duplicates
//! the asm; never labels made only of 0s and 1s (read as binary literals).

use core::arch::asm;
use core::sync::atomic::AtomicU64;

/// Process-wide count of rseq aborts, incremented by every abort handler.
pub static ABORTS: AtomicU64 = AtomicU64::new(0);

/// Number of consecutive aborts after which an operation gives up with
/// [`STATUS_EXHAUSTED`]. A debugger that single-steps a section aborts it on
/// every step; this bound makes stepping through malloc terminate.
pub const MAX_RETRIES: u32 = 64;

/// log2 of a region's size.
pub const REGION_SHIFT: u32 = 18;

/// The operation committed.
pub const STATUS_OK: u32 = 0;
/// Pop found the stack empty, or push found it full.
pub const STATUS_MISS: u32 = 1;
/// `cpu_id` is negative: this thread is not registered.
pub const STATUS_UNREGISTERED: u32 = 2;
/// [`MAX_RETRIES`] consecutive aborts.
pub const STATUS_EXHAUSTED: u32 = 3;

/// Iterations of the delay loop injected inside every critical section
/// (feature `inject-delay`, tests only).
#[cfg(feature = "inject-delay")]
pub static DELAY_LOOPS: AtomicU64 = AtomicU64::new(0);

/// Operands of the batch sections, read from memory so that a restart can
/// reload them (the sections use more registers than x86_64 has to spare).
#[repr(C)]
pub struct BatchArgs {
    /// Base of region 0.
    pub base: *mut u8,
    /// Header index of the class.
    pub class: usize,
    /// Pop: destination array. Push: source array.
    pub buf: *mut *mut u8,
    /// Maximum number of items to move (>= 1).
    pub max: usize,
}

// The delay loop (feature `inject-delay`) sits just before the commit store,
// where a preemption or signal does the most damage; without the feature it
// is an empty string and costs nothing.
#[cfg(feature = "inject-delay")]
macro_rules! delay {
    () => {
        concat!(
            "mov {dl}, qword ptr [rip + {dsym}@GOTPCREL]\n", // dl = &DELAY_LOOPS
            "mov {dl}, qword ptr [{dl}]\n",                  // dl = DELAY_LOOPS
            "22:\n",
            "test {dl}, {dl}\n", // while dl != 0
            "jz 23f\n",
            "dec {dl}\n", //     dl -= 1
            "jmp 22b\n",
            "23:\n",
        )
    };
}
#[cfg(not(feature = "inject-delay"))]
macro_rules! delay {
    () => {
        ""
    };
}

// Emits one asm! block with the operands every section uses (`aborts`,
// `shift`, `sig`, and the delay loop's under `inject-delay`).
macro_rules! rseq_asm {
    ($text:expr ; $($operands:tt)*) => {{
        #[cfg(feature = "inject-delay")]
        asm!(
            $text,
            dl = out(reg) _,
            dsym = sym DELAY_LOOPS,
            aborts = sym ABORTS,
            shift = const REGION_SHIFT,
            sig = const crate::abi::RSEQ_SIG,
            $($operands)*
            options(nostack),
        );
        #[cfg(not(feature = "inject-delay"))]
        asm!(
            $text,
            aborts = sym ABORTS,
            shift = const REGION_SHIFT,
            sig = const crate::abi::RSEQ_SIG,
            $($operands)*
            options(nostack),
        );
    }};
}

// The text of one section, the anatomy in the module doc: `pre` runs before
// arming, `body` is the section from start_ip (label 4) to the commit store
// inclusive and may jump to 7 (unregistered) and 8 (miss), `post` follows
// the commit, `exits` (out of line) defines labels 7 and 8, `abort` follows
// the abort handler's count. Register `{tmp}` holds the descriptor address
// while arming and is free inside the body.
macro_rules! section_text {
    ([$($pre:expr),*] [$($body:expr),+] [$($post:expr),*] [$($exits:expr),+] [$($abort:expr),+]) => {
        concat!(
            $($pre,)*
            "2:\n",
            "lea {tmp}, [rip + 3f]\n",                     // tmp = &descriptor
            "mov qword ptr fs:[{off} + 8], {tmp}\n",       // rseq->rseq_cs = tmp (arm)
            "4:\n",                                        // start_ip
            "mov {tmp:e}, dword ptr fs:[{off} + 4]\n",     // tmp = rseq->cpu_id
            "test {tmp:e}, {tmp:e}\n",                     // if (s32)tmp < 0
            "js 7f\n",                                     //     goto unregistered
            $($body,)+
            "5:\n",                                        // post-commit
            $($post,)*
            // Everything else is out of line, so the committed path falls
            // straight through. The abort handler's signature is the 32-bit
            // displacement of `ud1 disp32(%rip), %edi` (0f b9 3d), so a
            // disassembler reads it as one instruction.
            ".pushsection __rseq_abort, \"ax\"\n",
            $($exits,)+
            ".byte 0x0f, 0xb9, 0x3d\n",
            ".long {sig}\n",
            "6:\n",                                        // abort_ip
            "mov {tmp}, qword ptr [rip + {aborts}@GOTPCREL]\n", // tmp = &ABORTS
            "lock inc qword ptr [{tmp}]\n",                // ABORTS += 1
            $($abort,)+
            ".popsection\n",
            // The descriptor (struct rseq_cs) and the debugger tables.
            ".pushsection __rseq_cs, \"awR\"\n",
            ".balign 32\n",
            "3:\n",
            ".long 0, 0\n",                                // version, flags
            ".quad 4b, 5b - 4b, 6b\n",                     // start_ip, post_commit_offset, abort_ip
            ".popsection\n",
            ".pushsection __rseq_cs_ptr_array, \"awR\"\n",
            ".balign 8\n",
            ".quad 3b\n",
            ".popsection\n",
            ".pushsection __rseq_exit_point_array, \"awR\"\n",
            ".balign 8\n",
            ".quad 4b, 7b\n",                              // (start_ip, exit_ip) pairs
            ".quad 4b, 8b\n",
            ".popsection\n",
        )
    };
}

// A section that reports a status in `{st}` and retries aborts itself:
// `{st}` counts retries until an exit sets the status, and must not be
// touched by the body.
macro_rules! rseq_section {
    ($($body:expr),+ ; $($operands:tt)*) => {
        rseq_asm!(
            section_text!(
                ["xor {st:e}, {st:e}\n"]                  // retries = 0 (st doubles as the counter)
                [$($body),+]
                ["xor {st:e}, {st:e}\n", "9:\n"]          // status = OK
                [
                    "7:\n",                                // unregistered:
                    "mov {st:e}, 2\n",                     // status = UNREGISTERED
                    "jmp 9b\n",
                    "8:\n",                                // miss:
                    "mov {st:e}, 1\n",                     // status = MISS
                    "jmp 9b\n"
                ]
                [
                    "inc {st:e}\n",                        // retries += 1
                    "cmp {st:e}, {max}\n",                 // if retries < MAX
                    "jb 2b\n",                             //     goto arm again
                    "mov {st:e}, 3\n",                     // status = EXHAUSTED
                    "jmp 9b\n"
                ]
            );
            max = const MAX_RETRIES,
            $($operands)*
        )
    };
}

// The fast sections (`pop_or_null`, `push_or_miss`) report differently, so
// the caller's fast path needs no status register: every exit (unregistered,
// miss, aborted) runs `$exit` - the pop's leaves a null item, the push's
// jumps to the caller's `miss` label (an `asm goto`), so a committed push
// falls straight through. They do not retry an aborted section themselves
// (that would need a counter register): an abort counts itself and exits,
// and the caller's slow path runs the full operation, whose retries are
// bounded by `MAX_RETRIES` - so a debugger single-stepping malloc still
// gets through.
macro_rules! rseq_fast_section {
    ($exit:expr ; $($body:expr),+ ; $($operands:tt)*) => {
        rseq_asm!(
            section_text!([] [$($body),+] [] ["7:\n", "8:\n", $exit] ["jmp 7b\n"]);
            $($operands)*
        )
    };
}

// The single-item bodies, shared by the full and the fast sections.
macro_rules! pop_body {
    () => {
        concat!(
            "mov {tmp:e}, dword ptr fs:[{idx}]\n", // tmp = rseq->(cpu_id | mm_cid)
            "shl {tmp}, {shift}\n",                // tmp = base + (tmp << SHIFT)
            "add {tmp}, {base}\n",
            "mov {h:e}, dword ptr [{tmp} + {class}*8]\n", // cur = hdr[class].current (32-bit word)
            "cmp {h:x}, word ptr [{tmp} + {class}*8 + 6]\n", // if cur <= hdr[class].begin
            "jbe 8f\n",                                   //     goto miss (empty)
            "mov {item}, qword ptr [{tmp} + {h}*8 - 8]\n", // item = region[cur - 1]
            "dec {h:e}\n",                                // cur -= 1
            delay!(),
            "mov dword ptr [{tmp} + {class}*8], {h:e}\n", // commit: hdr[class].current = cur
        )
    };
}
macro_rules! push_body {
    () => {
        concat!(
            "mov {tmp:e}, dword ptr fs:[{idx}]\n", // tmp = rseq->(cpu_id | mm_cid)
            "shl {tmp}, {shift}\n",                // tmp = base + (tmp << SHIFT)
            "add {tmp}, {base}\n",
            "mov {h:e}, dword ptr [{tmp} + {class}*8]\n", // cur = hdr[class].current (32-bit word)
            "cmp {h:x}, word ptr [{tmp} + {class}*8 + 4]\n", // if cur >= hdr[class].end
            "jae 8f\n",                                   //     goto miss (full)
            "mov qword ptr [{tmp} + {h}*8], {item}\n",    // region[cur] = item
            "inc {h:e}\n",                                // cur += 1
            delay!(),
            "mov dword ptr [{tmp} + {class}*8], {h:e}\n", // commit: hdr[class].current = cur
        )
    };
}

/// Pops the top item of `class`'s stack in the current CPU's (or cid's)
/// region. Returns `(item, status)`; `item` is meaningful only when status
/// is [`STATUS_OK`].
///
/// # Safety
/// `off` is the thread-pointer offset of this thread's rseq area (or of an
/// area whose `cpu_id` is negative); `idx` is `off + 4` (cpu) or `off + 24`
/// (mm_cid); `base` is a region array laid out as in the module docs, with a
/// region for every index the kernel can report, and `class` is a valid header.
#[inline(always)]
pub unsafe fn pop(base: *mut u8, class: usize, off: isize, idx: isize) -> (*mut u8, u32) {
    let item: *mut u8;
    let status: u32;
    // SAFETY: the asm touches only the caller's rseq area (through fs) and the
    // region memory the caller vouched for; it writes slot memory only below
    // `current` bounds checked against the header, and commits with one store.
    unsafe {
        rseq_section!(
            pop_body!();
            off = in(reg) off,
            idx = in(reg) idx,
            base = in(reg) base,
            class = in(reg) class,
            item = out(reg) item,
            tmp = out(reg) _,
            h = out(reg) _,
            st = out(reg) status,
        );
    }
    (item, status)
}

/// Pushes `item` onto `class`'s stack in the current CPU's (or cid's) region.
/// Returns the status ([`STATUS_MISS`] when the stack is full).
///
/// # Safety
/// As for [`pop`].
#[inline(always)]
pub unsafe fn push(base: *mut u8, class: usize, off: isize, idx: isize, item: *mut u8) -> u32 {
    let status: u32;
    // SAFETY: as in `pop`; the slot written is `region[cur]` with
    // `cur < end`, a free slot of this class, and nothing is published until
    // the commit store.
    unsafe {
        rseq_section!(
            push_body!();
            off = in(reg) off,
            idx = in(reg) idx,
            base = in(reg) base,
            class = in(reg) class,
            item = in(reg) item,
            tmp = out(reg) _,
            h = out(reg) _,
            st = out(reg) status,
        );
    }
    status
}

/// The fast pop: the top item of `class`'s stack in the current CPU's (or
/// cid's) region, or null when nothing was popped (empty, unregistered
/// thread, aborted). Nothing changed in the null case.
///
/// # Safety
/// As for [`pop`].
#[inline(always)]
pub unsafe fn pop_or_null(base: *mut u8, class: usize, off: isize, idx: isize) -> *mut u8 {
    let item: *mut u8;
    // SAFETY: as in `pop`.
    unsafe {
        rseq_fast_section!(
            concat!(
                "xor {item:e}, {item:e}\n",                 // item = null
                "jmp 5b\n",
            );
            pop_body!();
            off = in(reg) off,
            idx = in(reg) idx,
            base = in(reg) base,
            class = in(reg) class,
            item = out(reg) item,
            tmp = out(reg) _,
            h = out(reg) _,
        );
    }
    item
}

/// The fast push: pushes `item` onto `class`'s stack in the current CPU's
/// (or cid's) region and returns true, or returns false with nothing
/// changed (full, unregistered thread, aborted). The false
/// return is a jump out of the section, so a caller that tests it pays no
/// status register.
///
/// # Safety
/// As for [`pop`].
#[inline(always)]
pub unsafe fn push_or_miss(
    base: *mut u8,
    class: usize,
    off: isize,
    idx: isize,
    item: *mut u8,
) -> bool {
    // SAFETY: as in `push`.
    unsafe {
        rseq_fast_section!(
            "jmp {miss}\n";
            push_body!();
            off = in(reg) off,
            idx = in(reg) idx,
            base = in(reg) base,
            class = in(reg) class,
            item = in(reg) item,
            tmp = out(reg) _,
            h = out(reg) _,
            miss = label { return false; },
        );
    }
    true
}

/// Pops up to `args.max` items (the top of the stack, in stack order from
/// bottom to top) into `args.buf`. Returns `(count, status)`.
///
/// # Safety
/// As for [`pop`]; `args.buf` is valid for `args.max` writes, `args.max >= 1`.
#[inline]
pub unsafe fn pop_batch(args: &BatchArgs, off: isize, idx: isize) -> (usize, u32) {
    let end: *mut *mut u8;
    let status: u32;
    // SAFETY: as in `pop`; the copy writes only the caller's buffer, which is
    // harmless to redo after an abort; the commit is the single store of the
    // lowered `current`.
    unsafe {
        rseq_section!(
            "mov {tmp:e}, dword ptr fs:[{idx}]\n",              // tmp = rseq->(cpu_id | mm_cid)
            "shl {tmp}, {shift}\n",                                // region = args.base + (tmp << SHIFT)
            "add {tmp}, qword ptr [{a}]\n",
            "mov {cls}, qword ptr [{a} + 8]\n",                 // cls = args.class
            "mov {cur:e}, dword ptr [{tmp} + {cls}*8]\n",       // cur = hdr.current (32-bit word)
            "movzx ecx, word ptr [{tmp} + {cls}*8 + 6]\n",      // n = hdr.begin
            "sub rcx, {cur}\n",                                 // n = begin - cur
            "jge 8f\n",                                         // if begin >= cur goto miss (empty)
            "neg rcx\n",                                        // n = cur - begin
            "cmp rcx, qword ptr [{a} + 24]\n",                  // n = min(n, args.max)
            "cmova rcx, qword ptr [{a} + 24]\n",
            "sub {cur}, rcx\n",                                 // cur -= n
            "lea rsi, [{tmp} + {cur}*8]\n",                     // src = &region[cur]
            "mov rdi, qword ptr [{a} + 16]\n",                  // dst = args.buf
            "rep movsq\n",                                      // copy n items (dst advances)
            delay!(),
            "mov dword ptr [{tmp} + {cls}*8], {cur:e}\n";       // commit: hdr.current = cur
            off = in(reg) off,
            idx = in(reg) idx,
            a = in(reg) args as *const BatchArgs,
            cls = out(reg) _,
            tmp = out(reg) _,
            cur = out(reg) _,
            st = out(reg) status,
            out("rcx") _,
            out("rsi") _,
            out("rdi") end,
        );
    }
    if status == STATUS_OK {
        // SAFETY: `rep movsq` advanced `rdi` from `args.buf` by the count.
        (unsafe { end.offset_from(args.buf) } as usize, status)
    } else {
        (0, status)
    }
}

/// Pushes up to `args.max` items from `args.buf` (a prefix of it). Returns
/// `(count, status)`.
///
/// # Safety
/// As for [`pop`]; `args.buf` is valid for `args.max` reads, `args.max >= 1`.
#[inline]
pub unsafe fn push_batch(args: &BatchArgs, off: isize, idx: isize) -> (usize, u32) {
    let end: *mut *mut u8;
    let status: u32;
    // SAFETY: as in `push`; the copy writes only free slots of this class
    // (`cur .. cur + n <= end`), which nothing reads until the commit.
    unsafe {
        rseq_section!(
            "mov {tmp:e}, dword ptr fs:[{idx}]\n",              // tmp = rseq->(cpu_id | mm_cid)
            "shl {tmp}, {shift}\n",                                // region = args.base + (tmp << SHIFT)
            "add {tmp}, qword ptr [{a}]\n",
            "mov {cls}, qword ptr [{a} + 8]\n",                 // cls = args.class
            "mov {cur:e}, dword ptr [{tmp} + {cls}*8]\n",       // cur = hdr.current (32-bit word)
            "movzx ecx, word ptr [{tmp} + {cls}*8 + 4]\n",      // n = hdr.end
            "sub rcx, {cur}\n",                                 // n = end - cur
            "jle 8f\n",                                         // if end <= cur goto miss (full)
            "cmp rcx, qword ptr [{a} + 24]\n",                  // n = min(n, args.max)
            "cmova rcx, qword ptr [{a} + 24]\n",
            "lea rdi, [{tmp} + {cur}*8]\n",                     // dst = &region[cur]
            "add {cur}, rcx\n",                                 // cur += n
            "mov rsi, qword ptr [{a} + 16]\n",                  // src = args.buf
            "rep movsq\n",                                      // copy n items (src advances)
            delay!(),
            "mov dword ptr [{tmp} + {cls}*8], {cur:e}\n";       // commit: hdr.current = cur
            off = in(reg) off,
            idx = in(reg) idx,
            a = in(reg) args as *const BatchArgs,
            cls = out(reg) _,
            tmp = out(reg) _,
            cur = out(reg) _,
            st = out(reg) status,
            out("rcx") _,
            out("rsi") end,
            out("rdi") _,
        );
    }
    if status == STATUS_OK {
        // SAFETY: `rep movsq` advanced `rsi` from `args.buf` by the count.
        (
            unsafe { end.offset_from(args.buf.cast_const()) } as usize,
            status,
        )
    } else {
        (0, status)
    }
}

/// Whether the CPU has `rdpid` (CPUID leaf 7, ECX bit 22) and the kernel
/// is Linux (which keeps the CPU number in `TSC_AUX`). An emulator that
/// does not implement the instruction does not advertise it.
pub fn has_rdpid() -> bool {
    // cpuid is always available on x86_64; leaf 0 reports the highest
    // standard leaf, so leaf 7 is read only when it exists.
    let max = core::arch::x86_64::__cpuid(0).eax;
    max >= 7 && core::arch::x86_64::__cpuid_count(7, 0).ecx & (1 << 22) != 0
}

/// The CPU number from `rdpid` (Linux stores `node << 12 | cpu` in
/// `TSC_AUX`). Call only when [`has_rdpid`] said yes.
#[inline(always)]
pub fn rdpid_cpu() -> u32 {
    let aux: u64;
    // SAFETY: the caller checked CPUID; rdpid only reads TSC_AUX.
    unsafe { asm!("rdpid {}", out(reg) aux, options(nomem, nostack, preserves_flags)) };
    (aux & 0xfff) as u32
}

/// The thread pointer (`%fs` base).
#[inline(always)]
pub fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: on x86_64 Linux, fs:0 holds the thread pointer itself (TCB
    // self-pointer), for every thread glibc or musl creates.
    unsafe {
        asm!("mov {}, qword ptr fs:0", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    tp
}

/// Reads a 32-bit field of this thread's rseq area at `fs:[off]`.
///
/// # Safety
/// `off` is the thread-pointer offset of a readable 4-byte field.
#[inline(always)]
pub unsafe fn read_tp_u32(off: isize) -> u32 {
    let v: u32;
    // SAFETY: the caller vouches that fs:[off] is readable.
    unsafe {
        asm!("mov {:e}, dword ptr fs:[{}]", out(reg) v, in(reg) off, options(nostack, readonly, preserves_flags))
    };
    v
}

// glibc's rseq symbols, referenced weakly so that we still link and run
// against a libc without them (musl, glibc < 2.35): their GOT entries are
// then 0. There is no TLS of our own here: an initial-exec TLS variable
// would make a library embedding us fail to `dlopen` ("cannot allocate
// memory in static TLS block"); see registration.rs for where our own area
// lives.
core::arch::global_asm!(".weak __rseq_offset", ".weak __rseq_size");

/// `(&__rseq_offset, &__rseq_size)` as resolved by the dynamic linker; null
/// when libc does not define them.
pub fn glibc_rseq_symbols() -> (*const isize, *const u32) {
    let off: *const isize;
    let size: *const u32;
    // SAFETY: loads two GOT entries; a weak undefined symbol's entry is 0.
    unsafe {
        asm!(
            "mov {o}, qword ptr [rip + __rseq_offset@GOTPCREL]",
            "mov {s}, qword ptr [rip + __rseq_size@GOTPCREL]",
            o = out(reg) off,
            s = out(reg) size,
            options(nostack, readonly, preserves_flags),
        );
    }
    (off, size)
}

//! x86_64 critical sections and the few machine-level helpers registration
//! needs. This is the only file with assembly for this architecture.
//!
//! The sections work on the region layout of `percpu/layout.rs`: region
//! `idx` at `base + (idx << REGION_SHIFT)`, the 8-byte [`Header`] of class
//! `class` at `region + class * 8`, slot `i` at `region + i * 8`, live
//! items of a class at slots `begin .. current`. Field offsets (of
//! [`Header`] and [`BatchArgs`]) and status codes (of [`Status`]) reach the
//! asm as `const` operands; the `*8` scales are the header's and a slot's
//! size (checked in `layout.rs`).
//!
//! A section loads and commits `current` as the header's 32-bit word: the
//! index in bits 0..16 and the try-lock discipline's lock in bit 16, which
//! is never set in a structure driven by rseq, so the word's value is
//! `current`. A 32-bit store followed by a 32-bit load of the same address
//! is forwarded with no latency by recent x86 cores (memory renaming);
//! 16-bit ones are not: the loop-carried chain of a pop+push pair through
//! `current` went from 4.5 ns to 2.8 ns on the development machine (Zen 4)
//! when the word became 32 bits wide. `begin`/`end` are separate 16-bit
//! loads, so a section may read `current` while a drain has the header
//! stopped and the bounds after the drain restored them; the drain
//! therefore fences a second time, after resetting `current` and before
//! restoring the bounds (see `percpu/drain.rs`). Only `current` is written
//! by the critical sections (the commit store).
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

use super::{BatchArgs, Status, ABORTS, MAX_RETRIES, REGION_SHIFT};
use crate::percpu::layout::Header;
use core::arch::asm;
use core::mem::offset_of;

// `status = OK` is written as `xor st, st`.
const _: () = assert!(Status::Ok as u32 == 0);

// The delay loop (`--cfg rseq_inject_delay`, stress tests only) sits just
// before the commit store, where a preemption or signal does the most
// damage; in every other build it is an empty string and costs nothing.
// `rseq_asm!` gives it its operands (`dl`, `dsym`) in that build only.
#[cfg(rseq_inject_delay)]
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
#[cfg(rseq_inject_delay)]
macro_rules! rseq_asm {
    ($text:expr ; $($operands:tt)*) => {
        rseq_asm_common!($text; dl = out(reg) _, dsym = sym super::DELAY_LOOPS, $($operands)*)
    };
}

#[cfg(not(rseq_inject_delay))]
macro_rules! delay {
    () => {
        ""
    };
}
#[cfg(not(rseq_inject_delay))]
macro_rules! rseq_asm {
    ($text:expr ; $($operands:tt)*) => {
        rseq_asm_common!($text; $($operands)*)
    };
}

// Emits one asm! block with the operands every section uses (`aborts`,
// `shift`, `sig`, the `rseq` field offsets).
macro_rules! rseq_asm_common {
    ($text:expr ; $($operands:tt)*) => {
        asm!(
            $text,
            $($operands)*
            aborts = sym ABORTS,
            shift = const REGION_SHIFT,
            rseq_cs = const crate::abi::offset::RSEQ_CS,
            cpu_id = const crate::abi::offset::CPU_ID,
            sig = const crate::abi::RSEQ_SIG,
            options(nostack),
        )
    };
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
            "mov qword ptr fs:[{off} + {rseq_cs}], {tmp}\n", // rseq->rseq_cs = tmp (arm)
            "4:\n",                                        // start_ip
            "mov {tmp:e}, dword ptr fs:[{off} + {cpu_id}]\n", // tmp = rseq->cpu_id
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

// A section that reports a [`Status`] in `{st}` and retries aborts itself:
// `{st}` counts retries until an exit sets the status, and must not be
// touched by the body. Evaluates to the status.
macro_rules! rseq_section {
    ($($body:expr),+ ; $($operands:tt)*) => {{
        let status: u32;
        rseq_asm!(
            section_text!(
                ["xor {st:e}, {st:e}\n"]                  // retries = 0 (st doubles as the counter)
                [$($body),+]
                ["xor {st:e}, {st:e}\n", "9:\n"]          // status = OK
                [
                    "7:\n",                                // unregistered:
                    "mov {st:e}, {unregistered}\n",        // status = UNREGISTERED
                    "jmp 9b\n",
                    "8:\n",                                // miss:
                    "mov {st:e}, {miss}\n",                // status = MISS
                    "jmp 9b\n"
                ]
                [
                    "inc {st:e}\n",                        // retries += 1
                    "cmp {st:e}, {max}\n",                 // if retries < MAX
                    "jb 2b\n",                             //     goto arm again
                    "mov {st:e}, {exhausted}\n",           // status = EXHAUSTED
                    "jmp 9b\n"
                ]
            );
            max = const MAX_RETRIES,
            unregistered = const Status::Unregistered as u32,
            miss = const Status::Miss as u32,
            exhausted = const Status::Exhausted as u32,
            $($operands)*
            st = out(reg) status,
        );
        Status::from_u32(status)
    }};
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

// The single-item bodies, shared by the full and the fast sections. They
// read the header fields `current` and `{bound}`: `begin` (pop) or `end`
// (push); `item_head!` and `item_commit!` are what both do.
macro_rules! item_head {
    () => {
        concat!(
            "mov {tmp:e}, dword ptr fs:[{idx}]\n", // tmp = rseq->(cpu_id | mm_cid)
            "shl {tmp}, {shift}\n",                // tmp = base + (tmp << SHIFT)
            "add {tmp}, {base}\n",
            "lea {hdr}, [{tmp} + {class}*8]\n", // hdr = &region.hdr[class]
            "mov {h:e}, dword ptr [{hdr} + {current}]\n", // cur = hdr.current (32-bit word)
            "cmp {h:x}, word ptr [{hdr} + {bound}]\n", // compare cur, hdr.(begin | end)
        )
    };
}
macro_rules! item_commit {
    () => {
        concat!(
            delay!(),
            "mov dword ptr [{hdr} + {current}], {h:e}\n", // commit: hdr.current = cur
        )
    };
}
macro_rules! pop_body {
    () => {
        concat!(
            item_head!(),                                  // cur vs hdr[class].begin:
            "jbe 8f\n",                                    // if cur <= begin goto miss (empty)
            "mov {item}, qword ptr [{tmp} + {h}*8 - 8]\n", // item = region[cur - 1]
            "dec {h:e}\n",                                 // cur -= 1
            item_commit!(),
        )
    };
}
macro_rules! push_body {
    () => {
        concat!(
            item_head!(),                              // cur vs hdr[class].end:
            "jae 8f\n",                                // if cur >= end goto miss (full)
            "mov qword ptr [{tmp} + {h}*8], {item}\n", // region[cur] = item
            "inc {h:e}\n",                             // cur += 1
            item_commit!(),
        )
    };
}

// Runs a single-item body in `$section` (`rseq_section` or
// `rseq_fast_section`) with the operands the bodies name: the caller's
// parameters, the item, the scratch registers `tmp` and `h`, and the offsets
// of `current` and (as `bound`) of `$bound` (`begin` or `end`) in [`Header`].
// `$rest` adds the section's own outputs.
macro_rules! item_section {
    ($section:ident!($($text:tt)*) $bound:ident: $off:expr, $idx:expr, $base:expr, $class:expr,
     item = $dir:ident(reg) $item:expr, $($rest:tt)*) => {
        $section!(
            $($text)*
            off = in(reg) $off,
            idx = in(reg) $idx,
            base = in(reg) $base,
            class = in(reg) $class,
            item = $dir(reg) $item,
            tmp = out(reg) _,
            h = out(reg) _,
            hdr = out(reg) _,
            current = const offset_of!(Header, current),
            bound = const offset_of!(Header, $bound),
            $($rest)*
        )
    };
}

/// Pops the top item of `class`'s stack in the current CPU's (or cid's)
/// region. Returns `(item, status)`; `item` is meaningful only when status
/// is [`Status::Ok`].
///
/// # Safety
/// `off` is the thread-pointer offset of this thread's rseq area (or of an
/// area whose `cpu_id` is negative); `idx` is `off + 4` (cpu) or `off + 24`
/// (mm_cid); `base` is a region array laid out as in `percpu/layout.rs`,
/// with a region for every index the kernel can report, and `class` is a
/// valid header.
#[inline(always)]
pub unsafe fn pop(base: *mut u8, class: usize, off: isize, idx: isize) -> (*mut u8, Status) {
    let item: *mut u8;
    // SAFETY: the asm touches only the caller's rseq area (through fs) and the
    // region memory the caller vouched for; it writes slot memory only below
    // `current` bounds checked against the header, and commits with one store.
    let status = unsafe {
        item_section!(rseq_section!(pop_body!();) begin: off, idx, base, class, item = out(reg) item,)
    };
    (item, status)
}

/// Pushes `item` onto `class`'s stack in the current CPU's (or cid's) region.
/// Returns the status ([`Status::Miss`] when the stack is full).
///
/// # Safety
/// As for [`pop`].
#[inline(always)]
pub unsafe fn push(base: *mut u8, class: usize, off: isize, idx: isize, item: *mut u8) -> Status {
    // SAFETY: the caller's contract (see `pop`) confines the asm to its rseq
    // area and the region array; the slot written is `region[cur]` with
    // `cur < end`, a free slot of this class, and nothing is published until
    // the commit store.
    unsafe {
        item_section!(rseq_section!(push_body!();) end: off, idx, base, class, item = in(reg) item,)
    }
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
    // SAFETY: the caller's contract (see `pop`) confines the asm to its rseq
    // area and the region array; it writes only the commit store, below the
    // bounds it checked.
    unsafe {
        item_section!(
            rseq_fast_section!(
                concat!(
                    "xor {item:e}, {item:e}\n",             // item = null
                    "jmp 5b\n",
                );
                pop_body!();
            )
            begin: off, idx, base, class,
            item = out(reg) item,
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
    // SAFETY: the caller's contract (see `pop`) confines the asm to its rseq
    // area and the region array; it writes the free slot `region[cur]`
    // (`cur < end`) and then commits.
    unsafe {
        item_section!(
            rseq_fast_section!("jmp {miss}\n"; push_body!();)
            end: off, idx, base, class,
            item = in(reg) item,
            miss = label { return false; },
        );
    }
    true
}

// A batch section: `batch_head!`, the body, `batch_commit!`, with the
// operands they name; `$bound` is the header bound the head reads (`begin`
// for pop, `end` for push). Evaluates to `(count, status)`: the count is how
// far `rep movsq` advanced its destination (pop: `rdi`, from `args.buf`) or
// source (push: `rsi`) pointer.
macro_rules! batch_section {
    ($pop:literal, $bound:ident: $off:expr, $idx:expr, $args:expr; $($body:expr),+ $(,)?) => {{
        let src: *const *mut u8;
        let dst: *mut *mut u8;
        let status = rseq_section!(
            batch_head!(), $($body,)+ batch_commit!() ;
            off = in(reg) $off,
            idx = in(reg) $idx,
            a = in(reg) $args as *const BatchArgs,
            cls = out(reg) _,
            tmp = out(reg) _,
            cur = out(reg) _,
            out("rcx") _,
            out("rsi") src,
            out("rdi") dst,
            a_base = const offset_of!(BatchArgs, base),
            a_class = const offset_of!(BatchArgs, class),
            a_buf = const offset_of!(BatchArgs, buf),
            a_max = const offset_of!(BatchArgs, max),
            current = const offset_of!(Header, current),
            bound = const offset_of!(Header, $bound),
        );
        match status {
            Status::Ok => {
                let advanced = if $pop { dst.cast_const() } else { src };
                // SAFETY: `rep movsq` advanced that pointer from `args.buf`
                // by the count, inside the caller's buffer.
                (advanced.offset_from($args.buf) as usize, Status::Ok)
            }
            st => (0, st),
        }
    }};
}

// The start of both batch sections: the region, the class, its `current`
// and `n = bound - current`, from the `BatchArgs` at `{a}`.
macro_rules! batch_head {
    () => {
        concat!(
            "mov {tmp:e}, dword ptr fs:[{idx}]\n", // tmp = rseq->(cpu_id | mm_cid)
            "shl {tmp}, {shift}\n",                // region = args.base + (tmp << SHIFT)
            "add {tmp}, qword ptr [{a} + {a_base}]\n",
            "mov {cls}, qword ptr [{a} + {a_class}]\n", // cls = args.class
            "mov {cur:e}, dword ptr [{tmp} + {cls}*8 + {current}]\n", // cur = hdr.current (32-bit word)
            "movzx ecx, word ptr [{tmp} + {cls}*8 + {bound}]\n", // n = hdr.(begin | end)
            "sub rcx, {cur}\n",                         // n = bound - cur
        )
    };
}

// The end of both batch sections: the delay loop and the commit store.
macro_rules! batch_commit {
    () => {
        concat!(
            delay!(),
            "mov dword ptr [{tmp} + {cls}*8 + {current}], {cur:e}\n", // commit: hdr.current = cur
        )
    };
}

/// Pops up to `args.max` items (the top of the stack, in stack order from
/// bottom to top) into `args.buf`. Returns `(count, status)`.
///
/// # Safety
/// As for [`pop`]; `args.buf` is valid for `args.max` writes, `args.max >= 1`.
#[inline]
pub unsafe fn pop_batch(args: &BatchArgs, off: isize, idx: isize) -> (usize, Status) {
    // SAFETY: the caller's contract (see `pop`) confines the asm to its rseq
    // area, the region array and `args.buf` (`args.max` writes); the copy
    // writes only that buffer, which is harmless to redo after an abort; the
    // commit is the single store of the lowered `current`.
    unsafe {
        batch_section!(
            true, begin: off, idx, args;
            "jge 8f\n",                             // if begin >= cur goto miss (empty)
            "neg rcx\n",                            // n = cur - begin
            "cmp rcx, qword ptr [{a} + {a_max}]\n", // n = min(n, args.max)
            "cmova rcx, qword ptr [{a} + {a_max}]\n",
            "sub {cur}, rcx\n",                     // cur -= n
            "lea rsi, [{tmp} + {cur}*8]\n",         // src = &region[cur]
            "mov rdi, qword ptr [{a} + {a_buf}]\n", // dst = args.buf
            "rep movsq\n",                          // copy n items (dst advances)
        )
    }
}

/// Pushes up to `args.max` items from `args.buf` (a prefix of it). Returns
/// `(count, status)`.
///
/// # Safety
/// As for [`pop`]; `args.buf` is valid for `args.max` reads, `args.max >= 1`.
#[inline]
pub unsafe fn push_batch(args: &BatchArgs, off: isize, idx: isize) -> (usize, Status) {
    // SAFETY: the caller's contract (see `pop`) confines the asm to its rseq
    // area, the region array and `args.buf` (`args.max` reads); the copy
    // writes only free slots of this class (`cur .. cur + n <= end`), which
    // nothing reads until the commit.
    unsafe {
        batch_section!(
            false, end: off, idx, args;
            "jle 8f\n",                             // if end <= cur goto miss (full)
            "cmp rcx, qword ptr [{a} + {a_max}]\n", // n = min(n, args.max)
            "cmova rcx, qword ptr [{a} + {a_max}]\n",
            "lea rdi, [{tmp} + {cur}*8]\n",         // dst = &region[cur]
            "add {cur}, rcx\n",                     // cur += n
            "mov rsi, qword ptr [{a} + {a_buf}]\n", // src = args.buf
            "rep movsq\n",                          // copy n items (src advances)
        )
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

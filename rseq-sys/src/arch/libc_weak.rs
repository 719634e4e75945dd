//! glibc symbols that fork handling needs, reached through weak references
//! resolved by the dynamic linker at load time (never `dlsym`, which may
//! allocate and take the loader lock): with a libc that lacks one (musl,
//! glibc < 2.32 for `__libc_single_threaded`) its GOT entry is 0 and the
//! accessor returns null.
//!
//! - `__libc_single_threaded` (glibc >= 2.32, `<sys/single_threaded.h>`): a
//!   `char`, non-zero while the process has never created a thread. glibc
//!   2.36's `fork` reads exactly this flag to decide whether it takes (and
//!   in the child resets) its stdio and malloc locks.
//! - `_IO_list_lock` / `_IO_list_unlock` (every glibc): the recursive lock
//!   of stdio's list of open streams, the lock `fork` takes after running
//!   the `pthread_atfork` prepare handlers.

/// The three symbols, null where libc does not define them.
#[derive(Clone, Copy, Debug)]
pub struct LibcForkSymbols {
    /// `&__libc_single_threaded`.
    pub single_threaded: *const u8,
    /// `_IO_list_lock`.
    pub io_list_lock: Option<unsafe extern "C" fn()>,
    /// `_IO_list_unlock`.
    pub io_list_unlock: Option<unsafe extern "C" fn()>,
}

/// Loads the GOT entries of the three symbols.
#[cfg(target_arch = "x86_64")]
pub fn libc_fork_symbols() -> LibcForkSymbols {
    let st: *const u8;
    let lock: usize;
    let unlock: usize;
    // SAFETY: three loads from GOT entries the linker created for these
    // weak references; an undefined weak symbol's entry is 0. The `.weak`
    // directives sit in this asm, not in a `global_asm!`: under fat LTO a
    // module-level `.weak` did not make the references weak.
    unsafe {
        core::arch::asm!(
            ".weak __libc_single_threaded",
            ".weak _IO_list_lock",
            ".weak _IO_list_unlock",
            "mov {s}, qword ptr [rip + __libc_single_threaded@GOTPCREL]",
            "mov {l}, qword ptr [rip + _IO_list_lock@GOTPCREL]",
            "mov {u}, qword ptr [rip + _IO_list_unlock@GOTPCREL]",
            s = out(reg) st,
            l = out(reg) lock,
            u = out(reg) unlock,
            options(nostack, readonly, preserves_flags),
        );
    }
    // SAFETY: a non-zero entry is the address of the libc function of that
    // name, whose C signature is `void (void)`.
    let as_fn = |a: usize| unsafe {
        (a != 0).then(|| core::mem::transmute::<usize, unsafe extern "C" fn()>(a))
    };
    LibcForkSymbols {
        single_threaded: st,
        io_list_lock: as_fn(lock),
        io_list_unlock: as_fn(unlock),
    }
}

/// Other architectures: not looked up (fork handling then assumes a
/// multi-threaded process and leaves stdio alone).
#[cfg(not(target_arch = "x86_64"))]
pub fn libc_fork_symbols() -> LibcForkSymbols {
    LibcForkSymbols {
        single_threaded: core::ptr::null(),
        io_list_lock: None,
        io_list_unlock: None,
    }
}

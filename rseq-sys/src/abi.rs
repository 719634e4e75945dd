//! Mirror of the kernel's rseq ABI (`include/uapi/linux/rseq.h`).
//!
//! Every field says who writes it. The kernel owns `cpu_id_start`, `cpu_id`,
//! `node_id` and `mm_cid`: user space only reads them (single-copy atomic
//! 32-bit loads). User space owns `rseq_cs` (stores a descriptor pointer to
//! arm a critical section; the kernel clears it) and `flags` (we never set
//! any: the per-section flags were deprecated in Linux 6.0).

/// Signature that must precede every abort handler (x86: the last four bytes
/// of an `ud1` instruction). Same value as glibc's `RSEQ_SIG` on x86.
pub const RSEQ_SIG: u32 = 0x5305_3053;

/// `cpu_id` before the area is registered.
pub const CPU_ID_UNINITIALIZED: i32 = -1;
/// `cpu_id` when glibc tried to register and the kernel refused.
pub const CPU_ID_REGISTRATION_FAILED: i32 = -2;

/// `flags` argument of `rseq(2)` to unregister.
pub const RSEQ_FLAG_UNREGISTER: i32 = 1;

/// Feature size of the original ABI (`cpu_id_start` .. `flags`).
pub const ORIG_FEATURE_SIZE: u32 = 20;
/// Size of the original `struct rseq` (the length every kernel accepts,
/// with 32-byte alignment).
pub const ORIG_AREA_SIZE: u32 = 32;
/// Feature size from which `node_id` and `mm_cid` are maintained (Linux 6.3).
pub const MM_CID_FEATURE_SIZE: u32 = 28;

/// `getauxval` keys (Linux 6.3, `include/uapi/linux/auxvec.h`).
pub const AT_RSEQ_FEATURE_SIZE: libc::c_ulong = 27;
/// Required alignment of the registered area.
pub const AT_RSEQ_ALIGN: libc::c_ulong = 28;

/// A critical-section descriptor (`struct rseq_cs`), read by the kernel when
/// it preempts, migrates or signals a thread whose `rseq_cs` points at it.
#[repr(C, align(32))]
#[derive(Debug)]
pub struct RseqCs {
    /// Structure version: 0.
    pub version: u32,
    /// Must be 0 (the per-section flags are deprecated).
    pub flags: u32,
    /// First instruction of the section.
    pub start_ip: u64,
    /// Length of the section: `start_ip + post_commit_offset` is the first
    /// instruction after the commit store.
    pub post_commit_offset: u64,
    /// Where the kernel sends the thread on abort; the four bytes before it
    /// hold [`RSEQ_SIG`].
    pub abort_ip: u64,
}

/// The per-thread area (`struct rseq`), 32 bytes as in the uapi header; the
/// kernel may use more (up to its feature size) when the area is larger.
#[repr(C, align(32))]
#[derive(Debug)]
pub struct Rseq {
    /// Kernel-written: a CPU number that is always in range (0 when
    /// unregistered). Read-only for us.
    pub cpu_id_start: u32,
    /// Kernel-written: current CPU, or [`CPU_ID_UNINITIALIZED`] /
    /// [`CPU_ID_REGISTRATION_FAILED`]. Read-only for us.
    pub cpu_id: u32,
    /// User-written: address of the armed [`RseqCs`], or 0. The kernel
    /// clears it when it restarts a section or finds the IP outside it.
    pub rseq_cs: u64,
    /// User-written, kernel-read. Always 0 here.
    pub flags: u32,
    /// Kernel-written (feature size >= 28): NUMA node of `cpu_id`.
    pub node_id: u32,
    /// Kernel-written (feature size >= 28): concurrency id, dense in
    /// `0..min(nr_cpus, nr_threads)` for the process.
    pub mm_cid: u32,
    /// Padding to 32 bytes; a larger kernel feature size extends past it.
    pub end: [u8; 4],
}

/// Byte offsets inside [`Rseq`] used by the assembly.
pub mod offset {
    /// `cpu_id_start`
    pub const CPU_ID_START: usize = 0;
    /// `cpu_id`
    pub const CPU_ID: usize = 4;
    /// `rseq_cs`
    pub const RSEQ_CS: usize = 8;
    /// `flags`
    pub const FLAGS: usize = 16;
    /// `node_id`
    pub const NODE_ID: usize = 20;
    /// `mm_cid`
    pub const MM_CID: usize = 24;
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn layout_matches_kernel() {
        assert_eq!(size_of::<Rseq>(), 32);
        assert_eq!(align_of::<Rseq>(), 32);
        assert_eq!(offset_of!(Rseq, cpu_id_start), offset::CPU_ID_START);
        assert_eq!(offset_of!(Rseq, cpu_id), offset::CPU_ID);
        assert_eq!(offset_of!(Rseq, rseq_cs), offset::RSEQ_CS);
        assert_eq!(offset_of!(Rseq, flags), offset::FLAGS);
        assert_eq!(offset_of!(Rseq, node_id), offset::NODE_ID);
        assert_eq!(offset_of!(Rseq, mm_cid), offset::MM_CID);
        assert_eq!(size_of::<RseqCs>(), 32);
        assert_eq!(align_of::<RseqCs>(), 32);
        assert_eq!(offset_of!(RseqCs, start_ip), 8);
        assert_eq!(offset_of!(RseqCs, post_commit_offset), 16);
        assert_eq!(offset_of!(RseqCs, abort_ip), 24);
    }
}

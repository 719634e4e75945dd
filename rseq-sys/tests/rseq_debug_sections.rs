//! The debugger tables: `__rseq_cs` (descriptors), `__rseq_cs_ptr_array`
//! (pointers to them) and `__rseq_exit_point_array` ((start_ip, exit_ip)
//! pairs) survive linking, and point at real critical sections: start and
//! abort addresses in executable code, the signature right before every
//! abort handler, exits outside the sections.

use rseq_sys::abi::{RseqCs, RSEQ_SIG};
use rseq_sys::percpu::ClassId;
use std::process::Command;

/// Class `i` of a test structure.
fn cls(i: usize) -> ClassId {
    ClassId::new(i).expect("test class below MAX_CLASSES")
}

extern "C" {
    static __start___rseq_cs_ptr_array: u8;
    static __stop___rseq_cs_ptr_array: u8;
    static __start___rseq_exit_point_array: u8;
    static __stop___rseq_exit_point_array: u8;
}

/// Executable address ranges of this process.
fn exec_ranges() -> Vec<(u64, u64)> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|p| p.contains('x')))
        .map(|l| {
            let (a, b) = l
                .split_whitespace()
                .next()
                .unwrap()
                .split_once('-')
                .unwrap();
            (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
            )
        })
        .collect()
}

fn use_the_sections() {
    // Make sure this binary contains the operations (and their tables).
    let mem = rseq_test_support::Regions::new(
        rseq_sys::registration::possible_cpus(),
        rseq_sys::percpu::REGION_BYTES,
    );
    let slabs = rseq_sys::percpu::PerCpuSlabs::new();
    // SAFETY: fresh zeroed aligned memory, outliving the structure.
    assert!(unsafe {
        slabs.init(
            mem.base,
            rseq_sys::registration::possible_cpus(),
            &[4],
            rseq_sys::percpu::Discipline::Rseq,
            rseq_sys::percpu::Index::Cpu,
        )
    });
    let item = std::ptr::NonNull::new(64 as *mut u8).unwrap();
    let _ = slabs.push(cls(0), item);
    let _ = slabs.pop(cls(0));
    let mut buf = [std::ptr::null_mut(); 2];
    let _ = slabs.push_batch(cls(0), &[item.as_ptr()]);
    let _ = slabs.pop_batch(cls(0), &mut buf);
}

#[test]
fn tables_point_at_critical_sections() {
    use_the_sections();
    // SAFETY: linker-defined bounds of the sections; the arrays hold u64s.
    let (ptrs, exits) = unsafe {
        let p0 = &__start___rseq_cs_ptr_array as *const u8 as *const u64;
        let p1 = &__stop___rseq_cs_ptr_array as *const u8 as *const u64;
        let e0 = &__start___rseq_exit_point_array as *const u8 as *const u64;
        let e1 = &__stop___rseq_exit_point_array as *const u8 as *const u64;
        (
            std::slice::from_raw_parts(p0, p1.offset_from(p0) as usize),
            std::slice::from_raw_parts(e0, e1.offset_from(e0) as usize),
        )
    };
    assert!(
        ptrs.len() >= 4,
        "expected pop, push, pop_batch and push_batch descriptors, found {}",
        ptrs.len()
    );
    let exec = exec_ranges();
    let in_exec = |a: u64| exec.iter().any(|&(s, e)| a >= s && a < e);
    let mut sections = Vec::new();
    for &p in ptrs {
        // SAFETY: every pointer in the array is the address of a descriptor
        // emitted next to it by the same asm block.
        let cs = unsafe { &*(p as *const RseqCs) };
        assert_eq!(p % 32, 0, "descriptor misaligned");
        assert_eq!((cs.version, cs.flags), (0, 0));
        assert!(
            in_exec(cs.start_ip) && in_exec(cs.abort_ip),
            "descriptor outside code: {cs:?}"
        );
        assert!(
            cs.post_commit_offset > 0 && cs.post_commit_offset < 4096,
            "{cs:?}"
        );
        let end = cs.start_ip + cs.post_commit_offset;
        assert!(
            cs.abort_ip < cs.start_ip || cs.abort_ip >= end,
            "abort handler inside the section"
        );
        // SAFETY: abort_ip is in executable (readable) code, and at least 7
        // bytes of our own code precede it (the ud1 instruction).
        let before = unsafe { std::slice::from_raw_parts((cs.abort_ip - 7) as *const u8, 7) };
        assert_eq!(
            &before[..3],
            &[0x0f, 0xb9, 0x3d],
            "signature not encoded as ud1"
        );
        assert_eq!(
            u32::from_le_bytes(before[3..].try_into().unwrap()),
            RSEQ_SIG
        );
        sections.push((cs.start_ip, end));
    }
    assert_eq!(exits.len() % 2, 0);
    assert!(
        exits.len() / 2 >= 2 * ptrs.len(),
        "each section has an unregistered and a miss exit"
    );
    for pair in exits.chunks(2) {
        let (start, exit) = (pair[0], pair[1]);
        let &(_, end) = sections
            .iter()
            .find(|s| s.0 == start)
            .unwrap_or_else(|| panic!("exit point for unknown section {start:#x}"));
        assert!(exit < start || exit >= end, "exit inside its section");
        assert!(in_exec(exit));
    }
}

#[test]
fn sections_present_in_binaries() {
    for bin in [std::env::current_exe().unwrap()] {
        let out = Command::new("readelf")
            .arg("-SW")
            .arg(&bin)
            .output()
            .expect("readelf (apt-get install binutils)");
        let text = String::from_utf8_lossy(&out.stdout);
        for name in [
            "__rseq_cs ",
            "__rseq_cs_ptr_array ",
            "__rseq_exit_point_array ",
            "__rseq_abort ",
        ] {
            assert!(
                text.contains(name),
                "{} lacks section {name}",
                bin.display()
            );
        }
    }
}

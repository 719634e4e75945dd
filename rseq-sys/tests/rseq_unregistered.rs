//! The item sections on an area whose `cpu_id` is negative (a thread the
//! kernel does not know: `RSEQ_CPU_ID_UNINITIALIZED` or
//! `RSEQ_CPU_ID_REGISTRATION_FAILED`): every one exits "unregistered"
//! before reading the index or touching the region, whatever the area's
//! `mm_cid` says.
#![cfg(target_arch = "x86_64")]

use rseq_sys::abi::{self, offset};
use rseq_sys::arch::{self, Status, REGION_SHIFT};
use std::cell::UnsafeCell;

/// A private rseq area (never registered), 32-byte aligned like the ABI's.
#[repr(C, align(32))]
struct Area([u8; 32]);

thread_local! {
    static AREA: UnsafeCell<Area> = const { UnsafeCell::new(Area([0; 32])) };
}

/// The thread-pointer offset of this thread's `AREA`, with `cpu_id` set to
/// `cpu` and `mm_cid` to 0 (region 0, which a section that went on would
/// use).
fn area_with_cpu_id(cpu: i32) -> isize {
    AREA.with(|a| {
        let p = a.get().cast::<u8>();
        // SAFETY: `cpu_id` lies inside the 32-byte area, 4-aligned.
        unsafe { p.add(offset::CPU_ID).cast::<i32>().write(cpu) };
        p as isize - arch::thread_pointer() as isize
    })
}

/// A region whose header for class 1 says "two items, room for more":
/// a section that did not exit would pop or push here.
fn region() -> Vec<u64> {
    let mut r = vec![0u64; (1 << REGION_SHIFT) / 8];
    // Header word of class 1: current = 130 (u32), end = 200, begin = 128.
    r[1] = 130 | (200 << 32) | (128 << 48);
    r[128] = 0x1111;
    r[129] = 0x2222;
    r
}

#[test]
fn item_sections_exit_on_a_negative_cpu_id() {
    for cpu in [abi::CPU_ID_UNINITIALIZED, abi::CPU_ID_REGISTRATION_FAILED] {
        let off = area_with_cpu_id(cpu);
        let mut r = region();
        let before = r.clone();
        let base = r.as_mut_ptr().cast::<u8>();
        let item = 0x3333usize as *mut u8;
        for idx in [off + offset::CPU_ID as isize, off + offset::MM_CID as isize] {
            // SAFETY: `off` is this thread's area (fs-relative), `base` a
            // whole region for index 0 (the only index `mm_cid` = 0 or a
            // negative `cpu_id` could name if a section went on), class 1
            // a header in it.
            unsafe {
                assert_eq!(arch::pop(base, 1, off, idx).1, Status::Unregistered);
                assert_eq!(arch::push(base, 1, off, idx, item), Status::Unregistered);
                assert!(arch::pop_or_null(base, 1, off, idx).is_null());
                assert!(!arch::push_or_miss(base, 1, off, idx, item));
            }
        }
        assert!(r == before, "cpu_id {cpu}: a section changed the region");
    }
}

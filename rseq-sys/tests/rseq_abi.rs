//! The Rust mirror of the rseq ABI against the system headers, compiled
//! with the system C compiler: sizes, alignments, field offsets, constants.

use rseq_sys::abi::{self, offset, Rseq, RseqCs};
use std::mem::{align_of, offset_of, size_of};
use std::process::Command;

const PROGRAM: &str = r#"
#include <stddef.h>
#include <stdio.h>
#include <linux/rseq.h>
#include <sys/rseq.h>
int main(void) {
    printf("rseq_size=%zu\n", sizeof(struct rseq));
    printf("rseq_align=%zu\n", _Alignof(struct rseq));
    printf("cpu_id_start=%zu\n", offsetof(struct rseq, cpu_id_start));
    printf("cpu_id=%zu\n", offsetof(struct rseq, cpu_id));
    printf("rseq_cs=%zu\n", offsetof(struct rseq, rseq_cs));
    printf("flags=%zu\n", offsetof(struct rseq, flags));
    printf("cs_size=%zu\n", sizeof(struct rseq_cs));
    printf("cs_align=%zu\n", _Alignof(struct rseq_cs));
    printf("cs_version=%zu\n", offsetof(struct rseq_cs, version));
    printf("cs_flags=%zu\n", offsetof(struct rseq_cs, flags));
    printf("cs_start_ip=%zu\n", offsetof(struct rseq_cs, start_ip));
    printf("cs_post_commit_offset=%zu\n", offsetof(struct rseq_cs, post_commit_offset));
    printf("cs_abort_ip=%zu\n", offsetof(struct rseq_cs, abort_ip));
    printf("sig=%u\n", (unsigned)RSEQ_SIG);
    printf("uninit=%d\n", (int)RSEQ_CPU_ID_UNINITIALIZED);
    printf("failed=%d\n", (int)RSEQ_CPU_ID_REGISTRATION_FAILED);
    printf("unregister=%d\n", (int)RSEQ_FLAG_UNREGISTER);
    return 0;
}
"#;

#[test]
fn abi_matches_system_headers() {
    let dir = std::env::temp_dir().join(format!("rseq-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("abi.c");
    let exe = dir.join("abi");
    std::fs::write(&src, PROGRAM).unwrap();
    let cc = Command::new("cc")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("run cc (apt-get install gcc)");
    assert!(
        cc.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let get = |k: &str| -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} missing from {text}"))
    };
    assert_eq!(get("rseq_size"), size_of::<Rseq>() as i64);
    assert_eq!(get("rseq_align"), align_of::<Rseq>() as i64);
    assert_eq!(get("cpu_id_start"), offset::CPU_ID_START as i64);
    assert_eq!(get("cpu_id"), offset::CPU_ID as i64);
    assert_eq!(get("rseq_cs"), offset::RSEQ_CS as i64);
    assert_eq!(get("flags"), offset::FLAGS as i64);
    assert_eq!(offset_of!(Rseq, cpu_id), offset::CPU_ID);
    assert_eq!(get("cs_size"), size_of::<RseqCs>() as i64);
    assert_eq!(get("cs_align"), align_of::<RseqCs>() as i64);
    assert_eq!(get("cs_version"), offset_of!(RseqCs, version) as i64);
    assert_eq!(get("cs_flags"), offset_of!(RseqCs, flags) as i64);
    assert_eq!(get("cs_start_ip"), offset_of!(RseqCs, start_ip) as i64);
    assert_eq!(
        get("cs_post_commit_offset"),
        offset_of!(RseqCs, post_commit_offset) as i64
    );
    assert_eq!(get("cs_abort_ip"), offset_of!(RseqCs, abort_ip) as i64);
    assert_eq!(get("sig"), abi::RSEQ_SIG as i64);
    assert_eq!(get("uninit"), abi::CPU_ID_UNINITIALIZED as i64);
    assert_eq!(get("failed"), abi::CPU_ID_REGISTRATION_FAILED as i64);
    assert_eq!(get("unregister"), abi::RSEQ_FLAG_UNREGISTER as i64);
    // node_id and mm_cid (Linux 6.3) follow flags; older headers lack them.
    assert_eq!(offset_of!(Rseq, node_id), offset::FLAGS + 4);
    assert_eq!(offset_of!(Rseq, mm_cid), offset::FLAGS + 8);
}

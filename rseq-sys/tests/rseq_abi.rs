//! The Rust mirror of the rseq ABI against the system headers, compiled
//! with the system C compiler: sizes, alignments, field offsets, constants.

use rseq_sys::abi::{self, offset, Rseq, RseqCs};
use std::mem::{align_of, offset_of, size_of};
use std::process::Command;

/// What the C program prints, one `key=value` line each: the key and the
/// C expression of the value.
const QUERIES: &[(&str, &str)] = &[
    ("rseq_size", "sizeof(struct rseq)"),
    ("rseq_align", "_Alignof(struct rseq)"),
    ("cpu_id_start", "offsetof(struct rseq, cpu_id_start)"),
    ("cpu_id", "offsetof(struct rseq, cpu_id)"),
    ("rseq_cs", "offsetof(struct rseq, rseq_cs)"),
    ("flags", "offsetof(struct rseq, flags)"),
    ("cs_size", "sizeof(struct rseq_cs)"),
    ("cs_align", "_Alignof(struct rseq_cs)"),
    ("cs_version", "offsetof(struct rseq_cs, version)"),
    ("cs_flags", "offsetof(struct rseq_cs, flags)"),
    ("cs_start_ip", "offsetof(struct rseq_cs, start_ip)"),
    (
        "cs_post_commit_offset",
        "offsetof(struct rseq_cs, post_commit_offset)",
    ),
    ("cs_abort_ip", "offsetof(struct rseq_cs, abort_ip)"),
    ("sig", "RSEQ_SIG"),
    ("uninit", "RSEQ_CPU_ID_UNINITIALIZED"),
    ("failed", "RSEQ_CPU_ID_REGISTRATION_FAILED"),
    ("unregister", "RSEQ_FLAG_UNREGISTER"),
];

/// The C program that prints [`QUERIES`] (each value as a `long long`).
fn program() -> String {
    let mut c = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include <linux/rseq.h>\n\
         #include <sys/rseq.h>\nint main(void) {\n",
    );
    for (key, expr) in QUERIES {
        c.push_str(&format!(
            "    printf(\"{key}=%lld\\n\", (long long)({expr}));\n"
        ));
    }
    c.push_str("    return 0;\n}\n");
    c
}

#[test]
fn abi_matches_system_headers() {
    let dir = std::env::temp_dir().join(format!("rseq-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("abi.c");
    let exe = dir.join("abi");
    std::fs::write(&src, program()).unwrap();
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

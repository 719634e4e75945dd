//! A Rust shared library with `RseqAlloc` as its global allocator (the
//! `tests/cdylib` crate) loads with `dlopen`, from a C host and from
//! python3 ctypes, allocates from several threads and runs in the
//! `rseq-glibc` mode: rseq-alloc has no static-TLS requirement ("cannot
//! allocate memory in static TLS block" was the failure), and it shares
//! the rseq area glibc registered.

use rseq_test_support::process::{cargo, compile, require_tool, run, scratch, scratch_path};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Sum `rseq_cdylib_work(threads, rounds)` returns when every allocation
/// kept its contents.
fn expected_sum(threads: u64, rounds: u64) -> u64 {
    threads * rounds * 499_500
}

/// Builds the test cdylib (dev profile: this checks loading, not speed)
/// into this test's target directory and returns the library's path.
fn cdylib() -> &'static PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let target = scratch_path("cdylib-target");
        cargo(
            &["build", "--offline", "-p", "rseq-alloc-cdylib-test"],
            &target,
            "cargo build -p rseq-alloc-cdylib-test",
        );
        let lib = target.join("debug").join("librseq_alloc_cdylib_test.so");
        assert!(lib.is_file(), "{} missing", lib.display());
        lib
    })
}

#[test]
fn no_static_tls_in_the_cdylib() {
    let lib = cdylib();
    require_tool("readelf", "binutils");
    let out = Command::new("readelf").arg("-d").arg(lib).output().unwrap();
    let dynamic = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{dynamic}");
    assert!(!dynamic.contains("STATIC_TLS"), "{dynamic}");
}

#[test]
fn dlopen_from_c() {
    let dir = scratch("cdylib-c");
    let exe = compile(
        "cc",
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("c"),
        &["dlopen_rust.c"],
        &dir,
        "dlopen_rust",
        &["-ldl".as_ref()],
    );
    let mut cmd = Command::new(exe);
    cmd.arg(cdylib()).args(["4", "20"]);
    cmd.env_remove("GLIBC_TUNABLES").env_remove("LD_PRELOAD");
    let r = run(&mut cmd, Duration::from_secs(60));
    r.assert_ok("dlopen_rust");
    assert_eq!(
        r.stdout.trim(),
        format!("mode=rseq-glibc sum={}", expected_sum(4, 20)),
        "{}",
        r.stderr
    );
}

#[test]
fn dlopen_from_python_ctypes() {
    require_tool("python3", "python3");
    let script = r#"
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.rseq_cdylib_mode.restype = ctypes.c_char_p
lib.rseq_cdylib_work.restype = ctypes.c_uint64
lib.rseq_cdylib_work.argtypes = [ctypes.c_uint32, ctypes.c_uint32]
s = lib.rseq_cdylib_work(3, 20)
print("mode=%s sum=%d" % (lib.rseq_cdylib_mode().decode(), s))
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).arg(cdylib());
    cmd.env_remove("GLIBC_TUNABLES").env_remove("LD_PRELOAD");
    let r = run(&mut cmd, Duration::from_secs(60));
    r.assert_ok("python3 ctypes");
    assert_eq!(
        r.stdout.trim(),
        format!("mode=rseq-glibc sum={}", expected_sum(3, 20))
    );
}

//! Runs `rseq_stress.rs` in the build it needs: the test-only delay loop
//! inside every critical section exists only under `--cfg
//! rseq_inject_delay`, which no feature and no shipped build can set, so
//! this test builds and runs the stress file in a second cargo invocation
//! with that cfg and its own target directory (`target/inject`, so the two
//! builds never invalidate each other). It fails if that run fails or runs
//! no test.
#![cfg(not(rseq_inject_delay))]

use rseq_test_support::process::{target_root, workspace_root};
use std::process::Command;

#[test]
fn rseq_stress_under_the_injected_delay() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut flags = std::env::var("RUSTFLAGS").unwrap_or_default();
    flags.push_str(" --cfg rseq_inject_delay");
    let out = Command::new(&cargo)
        .current_dir(workspace_root())
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", flags.trim())
        .args([
            "test",
            "--release",
            "-p",
            "rseq-sys",
            "--test",
            "rseq_stress",
        ])
        .arg("--target-dir")
        .arg(target_root().join("inject"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "the injected stress run failed:\n{stdout}\n{stderr}"
    );
    let passed: u64 = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|l| l.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        passed > 0,
        "the injected stress run ran no test (is rseq_stress.rs gated on a cfg the build does not set?):\n{stdout}\n{stderr}"
    );
    println!("injected stress run: {passed} tests passed");
}

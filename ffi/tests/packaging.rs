//! The three published crates package (`cargo package --no-verify
//! --offline`, together, as `cargo publish --workspace` would) with their
//! licenses, README and full metadata, and with a version on every path
//! dependency.

mod ffi_common;

use ffi_common::{cargo, scratch};
use std::process::Command;

const CRATES: [&str; 3] = ["rseq-sys", "rseq-alloc", "rseq-malloc"];

fn tar_list(krate: &std::path::Path) -> Vec<String> {
    let out = Command::new("tar")
        .arg("-tzf")
        .arg(krate)
        .output()
        .expect("tar");
    assert!(out.status.success(), "tar -tzf {}", krate.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn tar_file(krate: &std::path::Path, member: &str) -> String {
    let out = Command::new("tar")
        .arg("-xzOf")
        .arg(krate)
        .arg(member)
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "tar -xzOf {} {member}",
        krate.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn cargo_package_the_three_crates() {
    let target = scratch("package");
    let mut args = vec!["package", "--no-verify", "--offline", "--allow-dirty"];
    for c in CRATES {
        args.extend(["-p", c]);
    }
    cargo(&args, &target, "cargo package");
    for c in CRATES {
        let krate = target.join("package").join(format!("{c}-0.1.0.crate"));
        let files = tar_list(&krate);
        for f in [
            "LICENSE-MIT",
            "LICENSE-APACHE",
            "README.md",
            "Cargo.toml",
            "src/lib.rs",
        ] {
            let path = format!("{c}-0.1.0/{f}");
            assert!(files.contains(&path), "{c}: {path} missing from {files:?}");
        }
        let mit = tar_file(&krate, &format!("{c}-0.1.0/LICENSE-MIT"));
        assert!(mit.starts_with("MIT License"), "{c}: {mit}");
        let apache = tar_file(&krate, &format!("{c}-0.1.0/LICENSE-APACHE"));
        assert!(apache.contains("Apache License") && apache.contains("Version 2.0"));
        let manifest = tar_file(&krate, &format!("{c}-0.1.0/Cargo.toml"));
        for key in [
            "rust-version = \"1.87\"",
            "license = \"MIT OR Apache-2.0\"",
            "readme = \"README.md\"",
            "documentation = \"https://docs.rs/",
            "keywords = [",
            "categories = [",
            "description = ",
        ] {
            assert!(manifest.contains(key), "{c}: no `{key}` in\n{manifest}");
        }
        // Path dependencies became registry dependencies with a version.
        assert!(!manifest.contains("path = \".."), "{c}:\n{manifest}");
    }
    let alloc = target.join("package").join("rseq-alloc-0.1.0.crate");
    let manifest = tar_file(&alloc, "rseq-alloc-0.1.0/Cargo.toml");
    assert!(
        manifest.contains("[dependencies.rseq-sys]\nversion = \"0.1.0\""),
        "{manifest}"
    );
}

//! Tests that span crates: `tests/rust_cdylib_dlopen.rs` builds the
//! `tests/cdylib` crate (a Rust shared library with `RseqAlloc` as its
//! global allocator) and loads it with `dlopen` from a C host
//! (`c/dlopen_rust.c`) and from python3. Each crate's own integration tests
//! live beside it (`rseq-sys/tests/`, `allocator/tests/`, `ffi/tests/`);
//! their shared helpers are in `test-support/`.

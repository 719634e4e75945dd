//! Gives `librseq_malloc.so` a versioned SONAME, `librseq_malloc.so.0`
//! (`ffi/install.sh` installs the matching symlinks). Without one, tools that treat
//! "no soname" as "the main program" (valgrind's malloc interception, whose
//! default `somalloc` synonym is NONE) mistake the library for the program
//! and silently replace its malloc.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librseq_malloc.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}

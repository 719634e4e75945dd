//! The contenders: rseq-alloc, the peers in-process (crates) and as C
//! libraries (`LD_PRELOAD`), glibc, and any `--lib NAME=PATH`.

use std::path::{Path, PathBuf};

const LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";

/// How an allocator is put under a workload.
#[derive(Clone, Debug)]
pub enum Install {
    /// A Rust allocator inside the worker, chosen by `RSEQ_BENCH_ALLOC`.
    InProc(&'static str),
    /// A C library in front of glibc's malloc through `LD_PRELOAD`.
    Preload(PathBuf),
    /// Plain glibc: the worker on `System`, programs without preload.
    Native,
}

/// One contender.
#[derive(Clone, Debug)]
pub struct Alloc {
    /// Short name used by `--alloc` and in tables.
    pub name: &'static str,
    /// What it is, for the report legend.
    pub label: &'static str,
    /// How it is installed.
    pub kind: Install,
    /// Environment variables set for every run under it (a configuration
    /// of an allocator that is also measured with its defaults).
    pub env: &'static [(&'static str, &'static str)],
}

impl Alloc {
    /// An allocator run with its defaults (no environment of its own).
    pub fn new(name: &'static str, label: &'static str, kind: Install) -> Alloc {
        Alloc {
            name,
            label,
            kind,
            env: &[],
        }
    }
    /// Runs the worker's workloads.
    pub fn runs_synthetic(&self) -> bool {
        true
    }
    /// Runs the real programs (python, sqlite, perl): not the in-process crates.
    pub fn runs_programs(&self) -> bool {
        !matches!(self.kind, Install::InProc(_))
    }
    /// Which synthetic workloads run in the quick suite: all of them for
    /// the in-process crates and glibc; only the `pair` micro workload for
    /// the Debian builds of jemalloc/mimalloc and our .so (through the C
    /// ABI, `free` without a size: the preload pair the fast path is
    /// judged by; they also run the real programs) and for our CAS
    /// fallback (its pair against the rseq pair, measured in the same run);
    /// `pair` and the two larson workloads for `RseqAllocChecked` (what
    /// its check costs, and what the class from the page map gains).
    pub fn quick_synthetic(&self, workload: &str) -> bool {
        match self.name {
            "rseq-so" | "jemalloc-so" | "mimalloc-so" | "rseq-cas" => workload == "pair",
            "rseq-checked" => matches!(workload, "pair" | "larson" | "larson2t"),
            _ => true,
        }
    }
}

/// Every built-in allocator (rseq only with the `ours` feature).
pub fn all_allocs() -> Vec<Alloc> {
    let lib = |f: &str| PathBuf::from(LIBDIR).join(f);
    let mut v = Vec::new();
    if cfg!(feature = "ours") {
        v.push(Alloc::new(
            "rseq",
            "rseq-alloc, in-process #[global_allocator]",
            Install::InProc("rseq"),
        ));
        v.push(Alloc::new(
            "rseq-checked",
            "rseq-alloc's RseqAllocChecked, in-process: every dealloc's layout checked against \
             the page map, which gives the class",
            Install::InProc("rseq-checked"),
        ));
        v.push(Alloc {
            env: &[("RSEQ_MALLOC_CONF", "rseq=off")],
            ..Alloc::new(
                "rseq-cas",
                "rseq-alloc, in-process, with RSEQ_MALLOC_CONF=rseq=off: the compare-and-swap \
                 fallback that valgrind, gVisor and seccomp sandboxes get",
                Install::InProc("rseq"),
            )
        });
    }
    v.extend([
        Alloc::new(
            "jemalloc",
            "jemalloc, tikv-jemallocator crate, in-process",
            Install::InProc("jemalloc"),
        ),
        Alloc::new(
            "mimalloc",
            "mimalloc, mimalloc crate, in-process",
            Install::InProc("mimalloc"),
        ),
        Alloc::new(
            "glibc",
            "glibc malloc (std::alloc::System; programs run without preload)",
            Install::Native,
        ),
        Alloc::new(
            "rseq-so",
            "rseq-alloc as librseq_malloc.so via LD_PRELOAD",
            Install::Preload(target_dir().join("release/librseq_malloc.so")),
        ),
        Alloc::new(
            "jemalloc-so",
            "Debian libjemalloc.so.2 via LD_PRELOAD",
            Install::Preload(lib("libjemalloc.so.2")),
        ),
        Alloc::new(
            "mimalloc-so",
            "Debian libmimalloc.so.2 via LD_PRELOAD",
            Install::Preload(lib("libmimalloc.so.2")),
        ),
        Alloc::new(
            "tcmalloc-so",
            "TCMalloc (gperftools) libtcmalloc_minimal.so.4 via LD_PRELOAD",
            Install::Preload(lib("libtcmalloc_minimal.so.4")),
        ),
    ]);
    v
}

/// The Debian package that installs a preloaded peer.
pub fn apt_package(name: &str) -> &'static str {
    match name {
        "jemalloc-so" => "libjemalloc2",
        "mimalloc-so" => "libmimalloc2.0",
        "tcmalloc-so" => "libtcmalloc-minimal4",
        _ => "",
    }
}

/// The cargo target directory: this binary lives in `<target>/release/`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("target/release/x"));
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// The workspace root (the parent of this crate).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

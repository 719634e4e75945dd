//! The one table of workloads: name, description, sizes per suite, what runs
//! it (a worker function or a real program) and any per-allocator settings.
//! The harness plans from it, the worker dispatches from it, the report takes
//! the descriptions from it.

use crate::worker::{self, Params};

/// What runs a workload.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// A function of the worker, run in a child of this binary.
    Synthetic(fn(&Params)),
    /// python3 on `PY_SCRIPT`; the size is its argument.
    Python,
    /// sqlite3 on `sql_script(size)`.
    Sqlite,
    /// perl on `PERL_SCRIPT`; the size is its argument.
    Perl,
}

impl Kind {
    /// A real program rather than a worker function.
    pub fn is_program(self) -> bool {
        !matches!(self, Kind::Synthetic(_))
    }
}

/// One workload.
pub struct Workload {
    /// Name used by `--only`, the worker and the report.
    pub name: &'static str,
    /// One line for `--list` and the report.
    pub description: &'static str,
    /// What runs it.
    pub kind: Kind,
    /// Environment set for one allocator: (allocator, variable, value).
    pub env: &'static [(&'static str, &'static str, &'static str)],
    /// Parameters of the quick suite (the default).
    pub quick: &'static [&'static str],
    /// Parameters of `--full`.
    pub full: &'static [&'static str],
    /// Tiny sizes for `--smoke` (a seconds-long check that everything runs).
    pub smoke: &'static [&'static str],
    /// A per-call micro workload (ns per operation): its per-process figure
    /// depends on the address layout the process drew, so it runs in more
    /// fresh processes and the report shows the spread.
    pub micro: bool,
}

/// Which parameter set a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// Tiny sizes; figures meaningless.
    Smoke,
    /// The default, a few minutes on 2 CPUs.
    Quick,
    /// Longer, steadier sizes.
    Full,
}

impl Suite {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Smoke => "smoke",
            Suite::Quick => "quick",
            Suite::Full => "full",
        }
    }
}

impl Workload {
    /// The parameters of this workload in `suite`.
    pub fn params(&self, suite: Suite) -> &'static [&'static str] {
        match suite {
            Suite::Smoke => self.smoke,
            Suite::Quick => self.quick,
            Suite::Full => self.full,
        }
    }
}

/// The workload called `name`.
pub fn find(name: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.name == name)
}

pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "pair",
        description: "alloc+free pair latency at 16..4096 B, bursts of 1000 allocs then 1000 frees, and mix1000: 1000 live blocks, each step frees a random one and allocates a random size of 8..1024 B (calls straight to the backend, as its #[global_allocator]; the preloaded libraries through the C ABI)",
        kind: Kind::Synthetic(worker::pair),
        env: &[],
        quick: &["iters=3000000", "burst_rounds=1500"],
        full: &["iters=10000000", "burst_rounds=5000"],
        smoke: &["iters=20000", "burst_rounds=10"],
        micro: true,
    },
    Workload {
        name: "larson",
        description: "server churn: threads replace random slots of a shared array (cross-thread frees)",
        kind: Kind::Synthetic(worker::larson),
        env: &[],
        quick: &["threads=4", "ops=400000"],
        full: &["threads=8", "ops=1500000"],
        smoke: &["threads=4", "ops=5000"],
        micro: false,
    },
    Workload {
        name: "prodcon",
        description: "producer/consumer pairs: objects allocated on one thread, freed on another",
        kind: Kind::Synthetic(worker::prodcon),
        env: &[],
        quick: &["pairs=2", "batches=8000"],
        full: &["pairs=2", "batches=30000"],
        smoke: &["pairs=2", "batches=20"],
        micro: false,
    },
    Workload {
        name: "threads64",
        description: "64 threads (far more than CPUs) churning private working sets",
        kind: Kind::Synthetic(worker::threads64),
        env: &[],
        quick: &["threads=64", "ops=50000"],
        full: &["threads=64", "ops=150000"],
        smoke: &["threads=64", "ops=200"],
        micro: false,
    },
    Workload {
        name: "frag",
        description: "fragmentation: mixed sizes (128 MiB quick, 512 MiB full), free a random 90%, allocate 45% again in shifted sizes",
        kind: Kind::Synthetic(worker::frag),
        env: &[],
        quick: &["mib=128"],
        full: &["mib=512"],
        smoke: &["mib=4"],
        micro: false,
    },
    Workload {
        name: "realloc",
        description: "realloc growth: many buffers grown by 1/8 steps, interleaved",
        kind: Kind::Synthetic(worker::realloc_growth),
        env: &[],
        quick: &["bufs=2000", "max=65536"],
        full: &["bufs=4000", "max=65536"],
        smoke: &["bufs=50", "max=8192"],
        micro: true,
    },
    Workload {
        name: "remote",
        description: "two threads pinned to different CPUs exchange objects and free each other's",
        kind: Kind::Synthetic(worker::remote),
        env: &[],
        quick: &["batches=20000"],
        full: &["batches=80000"],
        smoke: &["batches=50"],
        micro: false,
    },
    Workload {
        name: "larson2t",
        description: "larson-style: 2 chains of threads on the 2 CPUs replace random slots with 8-1000 B objects; \
         each generation hands its slots to a new thread on the other CPU (cross-thread frees)",
        kind: Kind::Synthetic(worker::larson2t),
        env: &[],
        quick: &["threads=2", "gens=100", "ops=100000"],
        full: &["threads=2", "gens=200", "ops=200000"],
        smoke: &["threads=2", "gens=3", "ops=500", "slots=500"],
        micro: false,
    },
    Workload {
        name: "large",
        description: "large blocks: 1-32 MiB blocks allocated, every page written, freed (4 live per thread), \
         one thread then two",
        kind: Kind::Synthetic(worker::large),
        env: &[],
        quick: &["rounds=100"],
        full: &["rounds=400"],
        smoke: &["rounds=6", "max_mib=2"],
        micro: false,
    },
    Workload {
        name: "spike",
        description: "RSS after a spike: allocate 1 GiB (half 16-1024 B objects, half 64 KiB-8 MiB blocks, \
         every page written), free it all, then light allocation activity for `secs` (3 s); \
         figure = time of the spike, final RSS = after the idle phase. The harness sets a \
         1 s decay for rseq (`RSEQ_MALLOC_CONF=decay_ms=1000`, default 10 s) and for jemalloc \
         (`dirty_decay_ms:1000,muzzy_decay_ms:1000`, default 10 s); the others keep their defaults",
        kind: Kind::Synthetic(worker::spike),
        env: &[
            ("rseq", "RSEQ_MALLOC_CONF", "decay_ms=1000"),
            ("rseq-so", "RSEQ_MALLOC_CONF", "decay_ms=1000"),
            ("jemalloc", "_RJEM_MALLOC_CONF", "dirty_decay_ms:1000,muzzy_decay_ms:1000"),
            ("jemalloc-so", "MALLOC_CONF", "dirty_decay_ms:1000,muzzy_decay_ms:1000"),
        ],
        quick: &["mib=1024", "secs=3"],
        full: &["mib=1024", "secs=3"],
        smoke: &["mib=16", "secs=0.2"],
        micro: false,
    },
    Workload {
        name: "python",
        description: "python3 (PYTHONMALLOC=malloc) building, trimming and sorting a dict of lists and strings",
        kind: Kind::Python,
        env: &[],
        quick: &["200000"],
        full: &["1000000"],
        smoke: &["2000"],
        micro: false,
    },
    Workload {
        name: "perl",
        description: "perl: hashes of arrays, sorting, regex matches and substitutions, closures, string eval \
         (the allocation-heavy script the test suite runs under LD_PRELOAD, ffi/tests/c/workload.pl)",
        kind: Kind::Perl,
        env: &[],
        quick: &["200000"],
        full: &["600000"],
        smoke: &["2000"],
        micro: false,
    },
    Workload {
        name: "sqlite",
        description: "sqlite3 :memory: inserting rows and building an index on a text column",
        kind: Kind::Sqlite,
        env: &[],
        quick: &["300000"],
        full: &["1000000"],
        smoke: &["2000"],
        micro: false,
    },
];

/// The perl workload: the test suite's script (its argument scales it).
pub const PERL_SCRIPT: &str = include_str!("../../ffi/tests/c/workload.pl");

pub const PY_SCRIPT: &str = r#"# rseq-alloc-bench: allocation-heavy churn (fixed, deterministic)
import sys
n = int(sys.argv[1])
d = {}
keep = []
for i in range(n):
    k = "key-%d" % (i * 7919 % n)
    d[k] = [i, str(i) * (i % 7 + 1), (i, k)]
    if i % 3 == 0:
        d.pop("key-%d" % ((i * 31) % n), None)
    if i % 500 == 0:
        keep.append(bytearray(i % 65536 + 1))
        if len(keep) > 64:
            keep = keep[32:]
s = sorted(d)
words = " ".join(s).split(" ")
t = {w: len(w) for w in words}
print(len(d), len(s), len(t))
"#;

pub fn sql_script(rows: &str) -> String {
    format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v TEXT);\n\
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < {rows})\n\
         INSERT INTO t SELECT x, printf('%08x-%d', (x * 2654435761) % 4294967296, x),\n\
         hex(zeroblob(16 + x % 48)) FROM c;\n\
         CREATE INDEX tk ON t(k);\n\
         SELECT count(*), min(k) FROM t;\n"
    )
}

//! The comparison harness: plans (workload x allocator x repetition) runs,
//! executes each in a child process with a timeout, collects time and peak
//! RSS, and hands the figures to `report`.

use crate::report::{self, Failure, Machine, Record};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";

/// How an allocator is put under a workload.
#[derive(Clone, Debug)]
pub enum Kind {
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
    pub kind: Kind,
}

impl Alloc {
    fn runs_synthetic(&self) -> bool {
        true
    }
    fn runs_programs(&self) -> bool {
        !matches!(self.kind, Kind::InProc(_))
    }
    /// In the quick suite the Debian builds of jemalloc/mimalloc and our .so
    /// only run the real programs (their crate twins run the synthetic ones).
    fn quick_synthetic(&self) -> bool {
        !matches!(self.name, "rseq-so" | "jemalloc-so" | "mimalloc-so")
    }
}

/// What a workload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WKind {
    Synthetic,
    Python,
    Sqlite,
}

struct Workload {
    name: &'static str,
    kind: WKind,
    quick: &'static [&'static str],
    full: &'static [&'static str],
    /// Tiny sizes for `--smoke` (a seconds-long check that everything runs).
    smoke: &'static [&'static str],
    /// A per-call micro workload (ns per operation): its per-process figure
    /// depends on the address layout the process drew, so it runs in more
    /// fresh processes (`micro_procs`) and the report shows the spread.
    micro: bool,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "pair",
        kind: WKind::Synthetic,
        quick: &["iters=3000000", "burst_rounds=1500"],
        full: &["iters=10000000", "burst_rounds=5000"],
        smoke: &["iters=20000", "burst_rounds=10"],
        micro: true,
    },
    Workload {
        name: "larson",
        kind: WKind::Synthetic,
        quick: &["threads=4", "ops=400000"],
        full: &["threads=8", "ops=1500000"],
        smoke: &["threads=4", "ops=5000"],
        micro: false,
    },
    Workload {
        name: "prodcon",
        kind: WKind::Synthetic,
        quick: &["pairs=2", "batches=8000"],
        full: &["pairs=2", "batches=30000"],
        smoke: &["pairs=2", "batches=20"],
        micro: false,
    },
    Workload {
        name: "threads64",
        kind: WKind::Synthetic,
        quick: &["threads=64", "ops=50000"],
        full: &["threads=64", "ops=150000"],
        smoke: &["threads=64", "ops=200"],
        micro: false,
    },
    Workload {
        name: "frag",
        kind: WKind::Synthetic,
        quick: &["mib=128"],
        full: &["mib=512"],
        smoke: &["mib=4"],
        micro: false,
    },
    Workload {
        name: "realloc",
        kind: WKind::Synthetic,
        quick: &["bufs=2000", "max=65536"],
        full: &["bufs=4000", "max=65536"],
        smoke: &["bufs=50", "max=8192"],
        micro: true,
    },
    Workload {
        name: "remote",
        kind: WKind::Synthetic,
        quick: &["batches=20000"],
        full: &["batches=80000"],
        smoke: &["batches=50"],
        micro: false,
    },
    Workload {
        name: "larson2t",
        kind: WKind::Synthetic,
        quick: &["threads=2", "gens=100", "ops=100000"],
        full: &["threads=2", "gens=200", "ops=200000"],
        smoke: &["threads=2", "gens=3", "ops=500", "slots=500"],
        micro: false,
    },
    Workload {
        name: "large",
        kind: WKind::Synthetic,
        quick: &["rounds=200"],
        full: &["rounds=800"],
        smoke: &["rounds=6", "max_mib=2"],
        micro: false,
    },
    Workload {
        name: "spike",
        kind: WKind::Synthetic,
        quick: &["mib=1024", "secs=3"],
        full: &["mib=1024", "secs=3"],
        smoke: &["mib=16", "secs=0.2"],
        micro: false,
    },
    Workload {
        name: "python",
        kind: WKind::Python,
        quick: &["200000"],
        full: &["1000000"],
        smoke: &["2000"],
        micro: false,
    },
    Workload {
        name: "sqlite",
        kind: WKind::Sqlite,
        quick: &["300000"],
        full: &["1000000"],
        smoke: &["2000"],
        micro: false,
    },
];

/// Describes each workload for the report.
pub fn describe(name: &str) -> &'static str {
    match name {
        "python" => "python3 (PYTHONMALLOC=malloc) building, trimming and sorting a dict of lists and strings",
        "sqlite" => "sqlite3 :memory: inserting rows and building an index on a text column",
        _ => crate::worker::WORKLOADS
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, d)| d),
    }
}

struct Options {
    full: bool,
    smoke: bool,
    out: Option<PathBuf>,
    only: Option<Vec<String>>,
    allocs: Option<Vec<String>>,
    reps: usize,
    procs: Option<usize>,
    /// `--lib NAME=PATH`: extra allocators, preloaded.
    libs: Vec<Alloc>,
}

impl Options {
    /// Fresh processes per (micro workload, allocator): at least 5 (quick) or
    /// 10 (full), never fewer than `--reps`; `--procs` overrides; 2 in
    /// `--smoke` so the spread is still computed.
    fn micro_procs(&self) -> usize {
        let default = if self.smoke {
            2
        } else if self.full {
            10
        } else {
            5
        };
        self.procs.unwrap_or(default).max(self.reps)
    }

    fn reps_of(&self, w: &Workload) -> usize {
        if w.micro {
            self.micro_procs()
        } else {
            self.reps
        }
    }
}

const USAGE: &str = "\
usage: rseq-alloc-bench [--full] [--only W1,W2] [--alloc A1,A2] [--lib NAME=PATH]
                        [--reps N] [--procs N] [--list]
  --full      longer, steadier sizes and every allocator variant (about 8 min on 2 CPUs)
  --only      run only these workloads
  --alloc     run only these allocators
  --lib NAME=PATH  add an allocator: the shared library PATH, put in front of glibc
              with LD_PRELOAD for every workload (repeatable)
  --reps N    repetitions of each measurement (default 3; median and min-max reported)
  --procs N   fresh processes for each micro workload (pair, realloc; default 5 quick,
              10 full, at least --reps): their per-process figures are bimodal with
              address-space layout randomisation, so median and spread are reported
  --out DIR   write the report files there instead of target/bench-report
  --smoke     tiny sizes: checks in seconds that every workload runs (figures meaningless)
  --list      list workloads and allocators and exit
Results: stdout (markdown) and target/bench-report/report.{md,csv,svg}";

fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options {
        full: false,
        smoke: false,
        out: None,
        only: None,
        allocs: None,
        reps: 3,
        procs: None,
        libs: Vec::new(),
    };
    let mut it = args.iter();
    let split = |v: &str| v.split(',').map(|s| s.trim().to_string()).collect();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--full" => o.full = true,
            "--quick" => o.full = false,
            "--smoke" => o.smoke = true,
            "--out" => o.out = Some(PathBuf::from(it.next().ok_or("--out needs a directory")?)),
            "--only" => o.only = Some(split(it.next().ok_or("--only needs a value")?)),
            "--alloc" => o.allocs = Some(split(it.next().ok_or("--alloc needs a value")?)),
            "--reps" => {
                o.reps = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n >= 1)
                    .ok_or("--reps needs a number >= 1")?
            }
            "--lib" => {
                let v = it.next().ok_or("--lib needs NAME=PATH")?;
                let (name, path) = v
                    .split_once('=')
                    .filter(|(n, p)| !n.is_empty() && !p.is_empty())
                    .ok_or_else(|| format!("--lib `{v}` is not NAME=PATH"))?;
                if all_allocs().iter().chain(&o.libs).any(|a| a.name == name) {
                    return Err(format!("--lib: the name `{name}` is already taken"));
                }
                if !Path::new(path).exists() {
                    return Err(format!("--lib {name}: {path} does not exist"));
                }
                // The harness is one short-lived process: leaking the few
                // names keeps `Alloc` plain `&'static str` data.
                o.libs.push(Alloc {
                    name: Box::leak(name.to_string().into_boxed_str()),
                    label: Box::leak(format!("{path} via LD_PRELOAD (--lib)").into_boxed_str()),
                    kind: Kind::Preload(PathBuf::from(path)),
                });
            }
            "--procs" => {
                o.procs = Some(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .filter(|&n| n >= 1)
                        .ok_or("--procs needs a number >= 1")?,
                )
            }
            "--list" => {
                println!("workloads:");
                for w in WORKLOADS {
                    println!("  {:<10} {}", w.name, describe(w.name));
                }
                println!("allocators:");
                for a in all_allocs().iter().chain(&o.libs) {
                    println!("  {:<12} {}", a.name, a.label);
                }
                return Ok(None);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            _ => return Err(format!("unknown argument `{a}`\n{USAGE}")),
        }
    }
    Ok(Some(o))
}

fn all_allocs() -> Vec<Alloc> {
    let lib = |f: &str| PathBuf::from(LIBDIR).join(f);
    let mut v = Vec::new();
    if cfg!(feature = "ours") {
        v.push(Alloc {
            name: "rseq",
            label: "rseq-alloc, in-process #[global_allocator]",
            kind: Kind::InProc("rseq"),
        });
    }
    v.extend([
        Alloc {
            name: "jemalloc",
            label: "jemalloc, tikv-jemallocator crate, in-process",
            kind: Kind::InProc("jemalloc"),
        },
        Alloc {
            name: "mimalloc",
            label: "mimalloc, mimalloc crate, in-process",
            kind: Kind::InProc("mimalloc"),
        },
        Alloc {
            name: "glibc",
            label: "glibc malloc (std::alloc::System; programs run without preload)",
            kind: Kind::Native,
        },
        Alloc {
            name: "rseq-so",
            label: "rseq-alloc as librseq_malloc.so via LD_PRELOAD",
            kind: Kind::Preload(target_dir().join("release/librseq_malloc.so")),
        },
        Alloc {
            name: "jemalloc-so",
            label: "Debian libjemalloc.so.2 via LD_PRELOAD",
            kind: Kind::Preload(lib("libjemalloc.so.2")),
        },
        Alloc {
            name: "mimalloc-so",
            label: "Debian libmimalloc.so.2 via LD_PRELOAD",
            kind: Kind::Preload(lib("libmimalloc.so.2")),
        },
        Alloc {
            name: "tcmalloc-so",
            label: "TCMalloc (gperftools) libtcmalloc_minimal.so.4 via LD_PRELOAD",
            kind: Kind::Preload(lib("libtcmalloc_minimal.so.4")),
        },
    ]);
    v
}

fn apt_package(name: &str) -> &'static str {
    match name {
        "jemalloc-so" => "libjemalloc2",
        "mimalloc-so" => "libmimalloc2.0",
        "tcmalloc-so" => "libtcmalloc-minimal4",
        _ => "",
    }
}

/// The cargo target directory: this binary lives in `<target>/release/`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("target/release/x"));
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn find_program(candidates: &[&str]) -> Option<PathBuf> {
    for c in candidates {
        let p = Path::new(c);
        if p.is_absolute() {
            if p.exists() {
                return Some(p.to_path_buf());
            }
            continue;
        }
        let path = std::env::var_os("PATH")?;
        for dir in std::env::split_paths(&path) {
            let f = dir.join(c);
            if f.exists() {
                return Some(f);
            }
        }
    }
    None
}

/// Outcome of one child process.
struct ChildRun {
    ok: bool,
    why: String,
    stdout: String,
    stderr: String,
    wall_secs: f64,
    maxrss_kib: u64,
    /// The child's own user and system CPU time and page faults (wait4).
    usage: report::Usage,
}

fn run_child(cmd: &mut Command, timeout: Duration) -> ChildRun {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return ChildRun {
                ok: false,
                why: format!("cannot start: {e}"),
                stdout: String::new(),
                stderr: String::new(),
                wall_secs: 0.0,
                maxrss_kib: 0,
                usage: report::Usage::default(),
            }
        }
    };
    let pid = child.id() as libc::pid_t;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    // Reap with wait4 (not Child::wait) to get the child's own rusage.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut status = 0;
        // SAFETY: rusage is plain data; zero is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our un-reaped child; status and ru are valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        let wall = start.elapsed().as_secs_f64();
        let usage = report::Usage {
            user_secs: ru.ru_utime.tv_sec as f64 + ru.ru_utime.tv_usec as f64 * 1e-6,
            sys_secs: ru.ru_stime.tv_sec as f64 + ru.ru_stime.tv_usec as f64 * 1e-6,
            minor_faults: ru.ru_minflt as u64,
            major_faults: ru.ru_majflt as u64,
        };
        let _ = tx.send((r, status, ru.ru_maxrss as u64, wall, usage));
    });
    let mut timed_out = false;
    let (r, status, maxrss, wall, usage) = match rx.recv_timeout(timeout) {
        Ok(v) => v,
        Err(_) => {
            timed_out = true;
            // SAFETY: pid is our child, not yet reaped (the waiter still blocks on it).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            rx.recv()
                .unwrap_or((-1, 0, 0, 0.0, report::Usage::default()))
        }
    };
    drop(child);
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    let (ok, why) = if timed_out {
        (false, format!("timed out after {} s", timeout.as_secs()))
    } else if r < 0 {
        (false, "wait4 failed".to_string())
    } else if libc::WIFSIGNALED(status) {
        (
            false,
            format!("killed by signal {}", libc::WTERMSIG(status)),
        )
    } else if libc::WEXITSTATUS(status) != 0 {
        (false, format!("exit status {}", libc::WEXITSTATUS(status)))
    } else {
        (true, String::new())
    };
    ChildRun {
        ok,
        why,
        stdout,
        stderr,
        wall_secs: wall,
        maxrss_kib: maxrss,
        usage,
    }
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(160)
        .collect()
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Files a program workload needs, written once into the report directory.
struct Programs {
    python: Option<PathBuf>,
    sqlite: Option<PathBuf>,
    py_script: PathBuf,
    sql_dir: PathBuf,
}

const PY_SCRIPT: &str = r#"# rseq-alloc-bench: allocation-heavy churn (fixed, deterministic)
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

fn sql_script(rows: &str) -> String {
    format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v TEXT);\n\
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < {rows})\n\
         INSERT INTO t SELECT x, printf('%08x-%d', (x * 2654435761) % 4294967296, x),\n\
         hex(zeroblob(16 + x % 48)) FROM c;\n\
         CREATE INDEX tk ON t(k);\n\
         SELECT count(*), min(k) FROM t;\n"
    )
}

/// Seconds still to run: each planned run costs the mean wall time of the
/// finished runs of its workload, or of all finished runs for a workload not
/// started yet.
fn eta_secs<'a>(took: &[(&str, f64, usize)], rest: impl Iterator<Item = &'a str>) -> f64 {
    let (sum, n) = took
        .iter()
        .fold((0.0, 0usize), |(s, n), t| (s + t.1, n + t.2));
    let overall = if n > 0 { sum / n as f64 } else { 0.0 };
    rest.map(|w| {
        took.iter()
            .find(|t| t.0 == w)
            .map_or(overall, |t| t.1 / t.2 as f64)
    })
    .sum()
}

fn fmt_eta(secs: f64) -> String {
    let s = secs.round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

/// Entry point of the harness; returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let opts = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => return 0,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let t0 = Instant::now();
    let out_dir = opts
        .out
        .clone()
        .unwrap_or_else(|| target_dir().join("bench-report"));
    if let Err(e) = std::fs::create_dir_all(&out_dir) {
        eprintln!("cannot create {}: {e}", out_dir.display());
        return 1;
    }
    let exe = std::env::current_exe().expect("current_exe");

    // Which workloads.
    let workloads: Vec<&Workload> = match &opts.only {
        Some(names) => {
            for n in names {
                if !WORKLOADS.iter().any(|w| w.name == n) {
                    eprintln!("unknown workload `{n}` (see --list)");
                    return 2;
                }
            }
            WORKLOADS
                .iter()
                .filter(|w| names.iter().any(|n| n == w.name))
                .collect()
        }
        None => WORKLOADS.iter().collect(),
    };

    // Which allocators, and which of them are really there.
    let mut notes: Vec<String> = Vec::new();
    let mut allocs: Vec<Alloc> = Vec::new();
    let wanted = |n: &str| match &opts.allocs {
        None => true,
        Some(v) => v.iter().any(|a| a == n) || opts.libs.iter().any(|l| l.name == n),
    };
    if let Some(v) = &opts.allocs {
        let known: Vec<Alloc> = all_allocs().into_iter().chain(opts.libs.clone()).collect();
        for a in v {
            if !known.iter().any(|k| k.name == a) {
                if a == "rseq" {
                    eprintln!(
                        "allocator `rseq` needs the `ours` feature (default) of rseq-alloc-bench"
                    );
                } else {
                    eprintln!("unknown allocator `{a}` (see --list)");
                }
                return 2;
            }
        }
    }
    if !cfg!(feature = "ours") {
        notes.push(
            "rseq (in-process): skipped — this binary was built without the `ours` feature".into(),
        );
    }
    for a in all_allocs().into_iter().chain(opts.libs.clone()) {
        if !wanted(a.name) {
            continue;
        }
        if let Kind::Preload(path) = &a.kind {
            if a.name == "rseq-so" {
                eprintln!("building librseq_malloc.so (cargo build --release -p rseq-malloc) ...");
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let log_path = out_dir.join("rseq-malloc-build.log");
                let st = Command::new(cargo)
                    .args(["build", "--release", "-q", "-p", "rseq-malloc"])
                    .current_dir(workspace_dir())
                    .stdout(Stdio::null())
                    .stderr(
                        File::create(&log_path)
                            .map(Stdio::from)
                            .unwrap_or_else(|_| Stdio::inherit()),
                    )
                    .status();
                if !matches!(st, Ok(s) if s.success()) || !path.exists() {
                    let msg = format!(
                        "rseq-so: skipped — `cargo build --release -p rseq-malloc` did not produce {} (log: {})",
                        path.display(),
                        log_path.display()
                    );
                    eprintln!("{msg}");
                    notes.push(msg);
                    continue;
                }
            } else if !path.exists() {
                let msg = format!(
                    "{}: skipped — {} not found; install it with `apt-get install {}`",
                    a.name,
                    path.display(),
                    apt_package(a.name)
                );
                eprintln!("{msg}");
                notes.push(msg);
                continue;
            }
        }
        allocs.push(a);
    }

    // Real programs.
    let programs = Programs {
        python: find_program(&["/usr/bin/python3", "python3"]),
        sqlite: find_program(&["/usr/bin/sqlite3", "sqlite3"]),
        py_script: out_dir.join("churn.py"),
        sql_dir: out_dir.clone(),
    };
    let _ = std::fs::write(&programs.py_script, PY_SCRIPT);
    let mut workloads_run: Vec<&Workload> = Vec::new();
    for w in workloads {
        match w.kind {
            WKind::Python if programs.python.is_none() => {
                notes.push("python: skipped — python3 not found; `apt-get install python3`".into())
            }
            WKind::Sqlite if programs.sqlite.is_none() => {
                notes.push("sqlite: skipped — sqlite3 not found; `apt-get install sqlite3`".into())
            }
            _ => workloads_run.push(w),
        }
    }
    for n in &notes {
        eprintln!("note: {n}");
    }

    let machine = Machine::detect(&exe, &workspace_dir());
    eprintln!("{}", machine.one_line());

    // Plan: workload-major, then repetition, then allocator — interleaving the
    // allocators spreads slow drifts (other jobs on the box) over all of them.
    let explicit = opts.allocs.is_some();
    let mut plan: Vec<(&Workload, &Alloc, usize)> = Vec::new();
    for w in &workloads_run {
        for rep in 0..opts.reps_of(w) {
            for a in &allocs {
                let applies = match w.kind {
                    WKind::Synthetic => {
                        a.runs_synthetic() && (opts.full || explicit || a.quick_synthetic())
                    }
                    _ => a.runs_programs(),
                };
                if applies {
                    plan.push((w, a, rep));
                }
            }
        }
    }
    let suite = if opts.smoke {
        "smoke"
    } else if opts.full {
        "full"
    } else {
        "quick"
    };
    eprintln!(
        "running {} measurements ({suite} suite, {} reps, {} processes per micro workload) ...",
        plan.len(),
        opts.reps,
        opts.micro_procs()
    );

    let timeout = Duration::from_secs(if opts.full { 900 } else { 180 });
    let mut records: Vec<Record> = Vec::new();
    let mut failures: Vec<Failure> = Vec::new();
    let mut workload_skips: Vec<String> = Vec::new();
    let mut internals: Vec<report::Internals> = Vec::new();
    // Wall seconds of finished runs per workload, for the ETA.
    let mut took: Vec<(&str, f64, usize)> = Vec::new();
    for (i, (w, a, rep)) in plan.iter().enumerate() {
        if failures
            .iter()
            .any(|f| f.workload == w.name && f.alloc == a.name && f.fatal)
        {
            continue; // a crash or a timeout is not retried on later reps
        }
        let params: Vec<&str> = if opts.smoke {
            w.smoke.to_vec()
        } else if opts.full {
            w.full.to_vec()
        } else {
            w.quick.to_vec()
        };
        let mut cmd;
        match w.kind {
            WKind::Synthetic => {
                cmd = Command::new(&exe);
                cmd.arg("worker").arg(w.name).args(&params);
            }
            WKind::Python => {
                cmd = Command::new(programs.python.as_ref().expect("checked"));
                cmd.arg(&programs.py_script)
                    .args(&params)
                    .env("PYTHONMALLOC", "malloc")
                    .env("PYTHONHASHSEED", "0");
            }
            WKind::Sqlite => {
                let sql = programs.sql_dir.join(format!("index-{}.sql", params[0]));
                let _ = std::fs::write(&sql, sql_script(params[0]));
                cmd = Command::new(programs.sqlite.as_ref().expect("checked"));
                cmd.arg(":memory:");
                match File::open(&sql) {
                    Ok(f) => {
                        cmd.stdin(f);
                    }
                    Err(e) => {
                        eprintln!("cannot open {}: {e}", sql.display());
                        return 1;
                    }
                }
            }
        }
        cmd.env_remove("LD_PRELOAD")
            .env_remove(crate::dispatch::ENV);
        match &a.kind {
            Kind::InProc(b) => {
                cmd.env(crate::dispatch::ENV, b);
            }
            Kind::Preload(p) => {
                cmd.env("LD_PRELOAD", p)
                    .env(crate::dispatch::ENV, "system")
                    .env("RSEQ_BENCH_EXPECT_LIB", p);
            }
            Kind::Native => {
                cmd.env(crate::dispatch::ENV, "system");
            }
        }
        if w.name == "spike" {
            // A 1 s decay (instead of 10 s) for the two allocators that have
            // the knob, so the idle phase of 3 s covers decay + 2 s.
            match a.name {
                "rseq" | "rseq-so" => {
                    cmd.env("RSEQ_MALLOC_CONF", "decay_ms=1000");
                }
                "jemalloc" => {
                    cmd.env(
                        "_RJEM_MALLOC_CONF",
                        "dirty_decay_ms:1000,muzzy_decay_ms:1000",
                    );
                }
                "jemalloc-so" => {
                    cmd.env("MALLOC_CONF", "dirty_decay_ms:1000,muzzy_decay_ms:1000");
                }
                _ => {}
            }
        }
        let prefix = format!(
            "[{:>3}/{}] {:<9} {:<11} rep {}/{}",
            i + 1,
            plan.len(),
            w.name,
            a.name,
            rep + 1,
            opts.reps_of(w)
        );
        let run = run_child(&mut cmd, timeout);
        match took.iter_mut().find(|t| t.0 == w.name) {
            Some(t) => {
                t.1 += run.wall_secs;
                t.2 += 1;
            }
            None => took.push((w.name, run.wall_secs, 1)),
        }
        let eta = eta_secs(&took, plan[i + 1..].iter().map(|p| p.0.name));
        let preload_failed = run.stderr.contains("cannot be preloaded");
        if !run.ok || preload_failed {
            let why = if preload_failed {
                "LD_PRELOAD failed".to_string()
            } else {
                run.why.clone()
            };
            eprintln!(
                "{prefix}  FAILED: {why}: {}  (ETA {})",
                last_line(&run.stderr),
                fmt_eta(eta)
            );
            failures.push(Failure {
                workload: w.name.to_string(),
                alloc: a.name.to_string(),
                why: format!("{why} ({})", last_line(&run.stderr)),
                fatal: true,
            });
            continue;
        }
        let mut shown = String::new();
        match w.kind {
            WKind::Synthetic => {
                if let Some(l) = run.stdout.lines().find(|l| l.starts_with("SKIP")) {
                    let msg = format!("{}: skipped — {}", w.name, l.trim_start_matches("SKIP "));
                    eprintln!("{prefix}  {msg}");
                    if !workload_skips.contains(&msg) {
                        workload_skips.push(msg);
                    }
                    continue;
                }
                if let Some(l) = run.stdout.lines().find(|l| l.starts_with("OURS")) {
                    let num =
                        |k: &str| field(l, k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                    internals.push(report::Internals {
                        workload: w.name.to_string(),
                        rseq_aborts: num("rseq_aborts"),
                        fallback_ops: num("fallback_ops"),
                        mapped_kib: num("mapped_kib"),
                        cached_kib: num("cached_kib"),
                    });
                }
                let peak = run
                    .stdout
                    .lines()
                    .find(|l| l.starts_with("PEAK"))
                    .and_then(|l| field(l, "hwm_kib"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(run.maxrss_kib);
                for l in run.stdout.lines().filter(|l| l.starts_with("RESULT")) {
                    let (Some(name), Some(value), Some(unit), Some(better)) = (
                        field(l, "name"),
                        field(l, "value").and_then(|v| v.parse::<f64>().ok()),
                        field(l, "unit"),
                        field(l, "better"),
                    ) else {
                        continue;
                    };
                    if shown.len() < 60 {
                        shown.push_str(&format!("  {name} {value:.2} {unit}"));
                    }
                    records.push(Record {
                        workload: w.name.to_string(),
                        metric: name.to_string(),
                        alloc: a.name.to_string(),
                        rep: *rep,
                        value,
                        unit: unit.to_string(),
                        higher_is_better: better == "higher",
                        // A phase's own peak (the worker reset VmHWM) if given.
                        peak_kib: field(l, "peak_kib")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(peak),
                        final_kib: field(l, "final_kib").and_then(|v| v.parse().ok()),
                        usage: run.usage,
                    });
                }
            }
            WKind::Python | WKind::Sqlite => {
                shown = format!("  {:.3} s", run.wall_secs);
                records.push(Record {
                    workload: w.name.to_string(),
                    metric: w.name.to_string(),
                    alloc: a.name.to_string(),
                    rep: *rep,
                    value: run.wall_secs,
                    unit: "s".to_string(),
                    higher_is_better: false,
                    peak_kib: run.maxrss_kib,
                    final_kib: None,
                    usage: run.usage,
                });
            }
        }
        let peak = records.last().map_or(0, |r| r.peak_kib);
        eprintln!(
            "{prefix}{shown}  peak {:.1} MiB  ({:.0} s elapsed, ETA {})",
            peak as f64 / 1024.0,
            t0.elapsed().as_secs_f64(),
            fmt_eta(eta)
        );
    }
    notes.extend(workload_skips);
    if workloads_run.iter().any(|w| w.kind != WKind::Synthetic) {
        let (hwm, _) = rseq_alloc_bench::rss_kib();
        notes.push(format!(
            "python/sqlite peak RSS is `ru_maxrss` from wait4; Linux carries the spawning \
             harness's own peak ({:.1} MiB here) into it, so that is its floor",
            hwm as f64 / 1024.0
        ));
    }

    let legend: Vec<(String, String)> = allocs
        .iter()
        .map(|a| (a.name.to_string(), a.label.to_string()))
        .collect();
    let rep = report::Report {
        machine,
        suite: suite.to_string(),
        reps: opts.reps,
        micro_procs: opts.micro_procs(),
        micro: workloads_run
            .iter()
            .filter(|w| w.micro)
            .map(|w| w.name.to_string())
            .collect(),
        command: std::iter::once("cargo run --release -p rseq-alloc-bench".to_string())
            .chain((!args.is_empty()).then(|| format!("-- {}", args.join(" "))))
            .collect::<Vec<_>>()
            .join(" "),
        legend,
        records,
        failures,
        notes,
        internals,
        elapsed_secs: t0.elapsed().as_secs_f64(),
    };
    let md = rep.markdown();
    println!("{md}");
    let files = [
        ("report.md", md),
        ("report.csv", rep.csv()),
        ("runs.csv", rep.runs_csv()),
        ("report.svg", rep.svg()),
    ];
    for (f, text) in files {
        let p = out_dir.join(f);
        if let Err(e) = std::fs::write(&p, text) {
            eprintln!("cannot write {}: {e}", p.display());
            return 1;
        }
    }
    eprintln!(
        "wrote {0}/report.md, report.csv, runs.csv, report.svg in {1:.0} s",
        out_dir.display(),
        t0.elapsed().as_secs_f64()
    );
    0
}

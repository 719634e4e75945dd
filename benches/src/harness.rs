//! The comparison harness: reads the command line, picks the workloads and
//! the allocators that are really there, plans (workload x allocator x
//! repetition) runs, hands them to `runner` and the figures to `report`.

use crate::allocs::{all_allocs, apt_package, target_dir, workspace_dir, Alloc, Install};
use crate::machine::Machine;
use crate::report::Report;
use crate::runner::{self, Planned, Programs};
use crate::workloads::{self, Kind, Suite, Workload, WORKLOADS};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

    fn suite(&self) -> Suite {
        if self.smoke {
            Suite::Smoke
        } else if self.full {
            Suite::Full
        } else {
            Suite::Quick
        }
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
                o.libs.push(Alloc::new(
                    Box::leak(name.to_string().into_boxed_str()),
                    Box::leak(format!("{path} via LD_PRELOAD (--lib)").into_boxed_str()),
                    Install::Preload(PathBuf::from(path)),
                ));
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
                    println!("  {:<10} {}", w.name, w.description);
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
    let start = Instant::now();
    let out_dir = opts
        .out
        .clone()
        .unwrap_or_else(|| target_dir().join("bench-report"));
    if let Err(e) = std::fs::create_dir_all(&out_dir) {
        eprintln!("cannot create {}: {e}", out_dir.display());
        return 1;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut notes: Vec<String> = Vec::new();
    let (workloads, allocs) = match (
        select_workloads(&opts),
        select_allocs(&opts, &out_dir, &mut notes),
    ) {
        (Ok(w), Ok(a)) => (w, a),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let programs = Programs::find(&out_dir);
    let workloads = runnable(workloads, &programs, &mut notes);
    for n in &notes {
        eprintln!("note: {n}");
    }

    let machine = Machine::detect(&exe, &workspace_dir());
    eprintln!("{}", machine.one_line());
    let plan = make_plan(&opts, &workloads, &allocs);
    let out = match measure(&opts, &plan, &exe, &programs, start) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let mut rep = report(&opts, args, machine, &workloads, &allocs, out, notes);
    rep.elapsed_secs = start.elapsed().as_secs_f64();
    write_report(&rep, &out_dir, start)
}

/// Runs the plan (one child process per entry).
fn measure(
    opts: &Options,
    plan: &[Planned],
    exe: &Path,
    programs: &Programs,
    start: Instant,
) -> Result<runner::Outcome, String> {
    let suite = opts.suite();
    eprintln!(
        "running {} measurements ({} suite, {} reps, {} processes per micro workload) ...",
        plan.len(),
        suite.name(),
        opts.reps,
        opts.micro_procs()
    );
    let settings = runner::Settings {
        exe,
        suite,
        timeout: Duration::from_secs(if opts.full { 900 } else { 180 }),
        programs,
        start,
    };
    runner::run(plan, &settings)
}

/// The workloads whose programs (python3, sqlite3, perl) are installed; a note
/// for each one skipped.
fn runnable(
    workloads: Vec<&'static Workload>,
    programs: &Programs,
    notes: &mut Vec<String>,
) -> Vec<&'static Workload> {
    workloads
        .into_iter()
        .filter(|w| {
            let missing = match w.kind {
                Kind::Python => programs.python.is_none().then_some("python3"),
                Kind::Sqlite => programs.sqlite.is_none().then_some("sqlite3"),
                Kind::Perl => programs.perl.is_none().then_some("perl"),
                Kind::Synthetic(_) => None,
            };
            if let Some(p) = missing {
                notes.push(format!(
                    "{}: skipped — {p} not found; `apt-get install {p}`",
                    w.name
                ));
            }
            missing.is_none()
        })
        .collect()
}

/// The report's data: what ran, on what, with which results (the elapsed
/// time is the caller's to set).
fn report(
    opts: &Options,
    args: &[String],
    machine: Machine,
    workloads: &[&'static Workload],
    allocs: &[Alloc],
    out: runner::Outcome,
    mut notes: Vec<String>,
) -> Report {
    notes.extend(out.skips);
    if workloads.iter().any(|w| w.kind.is_program()) {
        let (hwm, _) = rseq_alloc_bench::rss_kib();
        notes.push(format!(
            "python/sqlite peak RSS is `ru_maxrss` from wait4; Linux carries the spawning \
             harness's own peak ({:.1} MiB here) into it, so that is its floor",
            hwm as f64 / 1024.0
        ));
    }
    Report {
        machine,
        suite: opts.suite().name().to_string(),
        reps: opts.reps,
        micro_procs: opts.micro_procs(),
        micro: workloads
            .iter()
            .filter(|w| w.micro)
            .map(|w| w.name.to_string())
            .collect(),
        descriptions: workloads
            .iter()
            .map(|w| (w.name.to_string(), w.description.to_string()))
            .collect(),
        command: std::iter::once("cargo run --release -p rseq-alloc-bench".to_string())
            .chain((!args.is_empty()).then(|| format!("-- {}", args.join(" "))))
            .collect::<Vec<_>>()
            .join(" "),
        legend: allocs
            .iter()
            .map(|a| (a.name.to_string(), a.label.to_string()))
            .collect(),
        records: out.records,
        failures: out.failures,
        notes,
        internals: out.internals,
        elapsed_secs: 0.0,
    }
}

/// The workloads `--only` names (all by default).
fn select_workloads(opts: &Options) -> Result<Vec<&'static Workload>, String> {
    let Some(names) = &opts.only else {
        return Ok(WORKLOADS.iter().collect());
    };
    if let Some(n) = names.iter().find(|n| workloads::find(n).is_none()) {
        return Err(format!("unknown workload `{n}` (see --list)"));
    }
    Ok(WORKLOADS
        .iter()
        .filter(|w| names.iter().any(|n| n == w.name))
        .collect())
}

/// The allocators `--alloc` names (all by default) plus `--lib` ones, less
/// the ones not installed (each with a note saying how to install it).
fn select_allocs(
    opts: &Options,
    out_dir: &Path,
    notes: &mut Vec<String>,
) -> Result<Vec<Alloc>, String> {
    let known: Vec<Alloc> = all_allocs().into_iter().chain(opts.libs.clone()).collect();
    if let Some(v) = &opts.allocs {
        if let Some(a) = v.iter().find(|a| !known.iter().any(|k| k.name == *a)) {
            return Err(if a == "rseq" {
                "allocator `rseq` needs the `ours` feature (default) of rseq-alloc-bench".into()
            } else {
                format!("unknown allocator `{a}` (see --list)")
            });
        }
    }
    if !cfg!(feature = "ours") {
        notes.push(
            "rseq (in-process): skipped — this binary was built without the `ours` feature".into(),
        );
    }
    let wanted = |n: &str| match &opts.allocs {
        None => true,
        Some(v) => v.iter().any(|a| a == n) || opts.libs.iter().any(|l| l.name == n),
    };
    let mut allocs = Vec::new();
    for a in known.into_iter().filter(|a| wanted(a.name)) {
        if let Install::Preload(path) = &a.kind {
            let missing = if a.name == "rseq-so" {
                build_rseq_so(path, out_dir)
            } else if !path.exists() {
                Some(format!(
                    "{}: skipped — {} not found; install it with `apt-get install {}`",
                    a.name,
                    path.display(),
                    apt_package(a.name)
                ))
            } else {
                None
            };
            if let Some(msg) = missing {
                eprintln!("{msg}");
                notes.push(msg);
                continue;
            }
        }
        allocs.push(a);
    }
    Ok(allocs)
}

/// Builds librseq_malloc.so; on failure, the note that says why.
fn build_rseq_so(path: &Path, out_dir: &Path) -> Option<String> {
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
    (!matches!(st, Ok(s) if s.success()) || !path.exists()).then(|| {
        format!(
            "rseq-so: skipped — `cargo build --release -p rseq-malloc` did not produce {} (log: {})",
            path.display(),
            log_path.display()
        )
    })
}

/// Workload-major, then repetition, then allocator — interleaving the
/// allocators spreads slow drifts (other jobs on the box) over all of them.
fn make_plan<'a>(
    opts: &Options,
    workloads: &[&'static Workload],
    allocs: &'a [Alloc],
) -> Vec<Planned<'a>> {
    let explicit = opts.allocs.is_some();
    let mut plan = Vec::new();
    for &w in workloads {
        let reps = opts.reps_of(w);
        for rep in 0..reps {
            for a in allocs {
                let applies = if w.kind.is_program() {
                    a.runs_programs()
                } else {
                    a.runs_synthetic() && (opts.full || explicit || a.quick_synthetic(w.name))
                };
                if applies {
                    plan.push(Planned {
                        workload: w,
                        alloc: a,
                        rep,
                        reps,
                    });
                }
            }
        }
    }
    plan
}

/// Prints the markdown and writes the four report files.
fn write_report(rep: &Report, out_dir: &Path, start: Instant) -> i32 {
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
        start.elapsed().as_secs_f64()
    );
    0
}

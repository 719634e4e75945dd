//! Turns the raw measurements into the markdown report, two CSV files and a
//! hand-written SVG bar chart (no plotting dependency).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// One measured figure of one run.
#[derive(Clone, Debug)]
pub struct Record {
    /// Worker workload (`pair`, `larson`, ..., `python`, `sqlite`).
    pub workload: String,
    /// Figure name inside the workload (`pair/16B`, `burst1000`, `larson`...).
    pub metric: String,
    /// Allocator short name.
    pub alloc: String,
    /// Repetition index, from 0.
    pub rep: usize,
    /// The figure.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// Direction: throughput (true) or time (false).
    pub higher_is_better: bool,
    /// Peak resident set of the run, KiB.
    pub peak_kib: u64,
    /// Resident set at the end of the workload, KiB, where it reports one.
    pub final_kib: Option<u64>,
    /// CPU time and page faults of the whole child process.
    pub usage: Usage,
}

/// `getrusage` figures of one child process (from `wait4`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// User CPU time, seconds.
    pub user_secs: f64,
    /// System CPU time, seconds.
    pub sys_secs: f64,
    /// Minor page faults.
    pub minor_faults: u64,
    /// Major page faults.
    pub major_faults: u64,
}

/// A run that did not produce figures.
#[derive(Clone, Debug)]
pub struct Failure {
    /// Workload.
    pub workload: String,
    /// Allocator.
    pub alloc: String,
    /// What happened.
    pub why: String,
    /// Crash or timeout: later repetitions are not attempted.
    pub fatal: bool,
}

/// rseq-alloc's own counters at the end of one in-process run.
#[derive(Clone, Debug)]
pub struct Internals {
    /// Workload.
    pub workload: String,
    /// rseq restarts in the whole run.
    pub rseq_aborts: u64,
    /// Operations done by the CAS fallback or bypassing the per-CPU cache.
    pub fallback_ops: u64,
    /// Memory mapped by the allocator at the end, KiB.
    pub mapped_kib: u64,
    /// Free objects held in per-CPU caches at the end, KiB.
    pub cached_kib: u64,
}

/// What the machine is, printed at the top of every report.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    cpu: String,
    cpus_online: usize,
    cpus_allowed: usize,
    kernel: String,
    glibc: String,
    commit: String,
    date: String,
    rseq: String,
    /// (allocator name, version text) for every allocator whose version is known.
    versions: Vec<(String, String)>,
}

/// The version of `name` in this workspace's Cargo.lock (the one compiled in).
fn locked_version(name: &str) -> Option<String> {
    const LOCK: &str = include_str!("../../Cargo.lock");
    let key = format!("name = \"{name}\"");
    let mut lines = LOCK.lines();
    while let Some(l) = lines.next() {
        if l.trim() == key {
            return lines
                .next()
                .and_then(|v| v.trim().strip_prefix("version = "))
                .map(|v| v.trim_matches('"').to_string());
        }
    }
    None
}

/// The installed version of a Debian package, if it is installed.
fn dpkg_version(pkg: &str) -> Option<String> {
    cmd_out(Command::new("dpkg-query").args(["-W", "-f=${Version}", pkg])).filter(|v| !v.is_empty())
}

/// Versions of every allocator the harness knows: crates from Cargo.lock,
/// C libraries from dpkg.
fn versions(glibc: &str, commit: &str) -> Vec<(String, String)> {
    let mut v = vec![
        (
            "rseq".to_string(),
            format!("rseq-alloc {} at {commit}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "rseq-so".to_string(),
            format!("rseq-malloc {} at {commit}", env!("CARGO_PKG_VERSION")),
        ),
        ("glibc".to_string(), format!("glibc {glibc}")),
    ];
    if let Some(je) = locked_version("tikv-jemallocator") {
        let sys = locked_version("tikv-jemalloc-sys").unwrap_or_default();
        // tikv-jemalloc-sys carries jemalloc's version as build metadata.
        let upstream = sys.split_once('+').map_or("?", |(_, m)| m);
        let upstream = upstream.split('-').next().unwrap_or(upstream);
        v.push((
            "jemalloc".into(),
            format!(
                "tikv-jemallocator {je} (tikv-jemalloc-sys {}, jemalloc {upstream})",
                sys.split('+').next().unwrap_or("?")
            ),
        ));
    }
    if let Some(mi) = locked_version("mimalloc") {
        let sys = locked_version("libmimalloc-sys").unwrap_or_else(|| "?".into());
        v.push((
            "mimalloc".into(),
            format!("mimalloc crate {mi} (libmimalloc-sys {sys})"),
        ));
    }
    for (alloc, pkg) in [
        ("jemalloc-so", "libjemalloc2"),
        ("mimalloc-so", "libmimalloc2.0"),
        ("tcmalloc-so", "libtcmalloc-minimal4"),
    ] {
        if let Some(ver) = dpkg_version(pkg) {
            v.push((alloc.into(), format!("Debian {pkg} {ver}")));
        }
    }
    v
}

fn cmd_out(cmd: &mut Command) -> Option<String> {
    let o = cmd.output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

impl Machine {
    /// Reads /proc, uname and glibc; asks a worker which rseq mode our
    /// allocator picks here; asks git for the commit.
    pub fn detect(exe: &Path, workspace: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".to_string(), |(_, v)| v.trim().to_string());
        // SAFETY: sysconf has no preconditions.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
        let allowed = rseq_alloc_bench::allowed_cpus().len();
        // SAFETY: utsname is plain data; uname fills it.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: u is a valid, writable utsname.
        let kernel = if unsafe { libc::uname(&mut u) } == 0 {
            let f = |s: &[libc::c_char]| {
                // SAFETY: uname NUL-terminates every field inside its array.
                unsafe { std::ffi::CStr::from_ptr(s.as_ptr()) }
                    .to_string_lossy()
                    .into_owned()
            };
            format!("{} {} {}", f(&u.sysname), f(&u.release), f(&u.machine))
        } else {
            "unknown".into()
        };
        // SAFETY: gnu_get_libc_version returns a static NUL-terminated string.
        let glibc = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) }
            .to_string_lossy()
            .into_owned();
        let commit = match cmd_out(
            Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .current_dir(workspace),
        ) {
            Some(c) => {
                let dirty = cmd_out(
                    Command::new("git")
                        .args(["status", "--porcelain", "--untracked-files=no"])
                        .current_dir(workspace),
                )
                .is_some_and(|s| !s.is_empty());
                if dirty {
                    format!("{c} (+ uncommitted changes)")
                } else {
                    c
                }
            }
            None => "unknown".into(),
        };
        let date =
            cmd_out(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
        let rseq = if cfg!(feature = "ours") {
            cmd_out(
                Command::new(exe)
                    .args(["worker", "info"])
                    .env(crate::dispatch::ENV, "rseq")
                    .env_remove("LD_PRELOAD"),
            )
            .map(|s| {
                let mode = s.lines().find_map(|l| kv(l, "rseq_mode"));
                let index = s.lines().find_map(|l| kv(l, "rseq_index"));
                format!(
                    "mode={} index={}",
                    mode.unwrap_or("?"),
                    index.unwrap_or("?")
                )
            })
            .unwrap_or_else(|| "worker failed to start with rseq-alloc".into())
        } else {
            "not built".into()
        };
        let versions = versions(&glibc, &commit);
        Machine {
            cpu,
            cpus_online: online,
            cpus_allowed: allowed,
            kernel,
            glibc,
            commit,
            date,
            rseq,
            versions,
        }
    }

    /// The version text of allocator `name`, if known.
    pub fn version(&self, name: &str) -> Option<&str> {
        self.versions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A one-line summary for the progress output.
    pub fn one_line(&self) -> String {
        format!(
            "machine: {}, {} CPUs ({} usable), {}, glibc {}, rseq-alloc {}",
            self.cpu, self.cpus_online, self.cpus_allowed, self.kernel, self.glibc, self.rseq
        )
    }
}

/// Everything a report is made from.
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// "quick" or "full".
    pub suite: String,
    /// Repetitions per measurement.
    pub reps: usize,
    /// Fresh processes per (micro workload, allocator).
    pub micro_procs: usize,
    /// The micro workloads of this run (their spread is summarised).
    pub micro: Vec<String>,
    /// The command that reproduces this run.
    pub command: String,
    /// (allocator name, description), in display order.
    pub legend: Vec<(String, String)>,
    /// Every figure.
    pub records: Vec<Record>,
    /// Every failed run.
    pub failures: Vec<Failure>,
    /// Skipped allocators or workloads, with the reason.
    pub notes: Vec<String>,
    /// Our allocator's counters, one entry per in-process run.
    pub internals: Vec<Internals>,
    /// Wall time of the whole run.
    pub elapsed_secs: f64,
}

/// The baseline of a figure: the first of these that ran it (jemalloc's
/// crate for the synthetic workloads, its Debian library for the programs,
/// glibc when neither ran).
const BASELINES: [&str; 3] = ["jemalloc", "jemalloc-so", "glibc"];

/// Median, min and max of a non-empty list.
fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (med, v[0], v[n - 1])
}

fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn mib(kib: f64) -> String {
    fmt_num(kib / 1024.0)
}

/// The summary of one (metric, allocator) cell.
#[derive(Clone, Debug)]
struct Cell {
    alloc: String,
    med: f64,
    min: f64,
    max: f64,
    n: usize,
    /// Slowest over fastest run (max/min of the figure), >= 1.
    spread: f64,
    peak_med: f64,
    peak_min: f64,
    peak_max: f64,
    final_med: Option<f64>,
    final_min: Option<f64>,
    final_max: Option<f64>,
    /// Medians of the per-process usage figures.
    user_med: f64,
    sys_med: f64,
    minflt_med: f64,
    majflt_med: f64,
    /// Speed relative to the baseline (higher = faster), if there is one.
    speed: Option<f64>,
    /// Peak RSS relative to the baseline (lower = leaner).
    rss: Option<f64>,
    /// Final RSS relative to the baseline.
    final_rel: Option<f64>,
}

struct Metric {
    workload: String,
    name: String,
    unit: String,
    higher_is_better: bool,
    baseline: Option<String>,
    cells: Vec<Cell>,
}

impl Report {
    fn metrics(&self) -> Vec<Metric> {
        let mut names: Vec<(String, String)> = Vec::new();
        for r in &self.records {
            let k = (r.workload.clone(), r.metric.clone());
            if !names.contains(&k) {
                names.push(k);
            }
        }
        let mut out = Vec::new();
        for (workload, name) in names {
            let recs: Vec<&Record> = self
                .records
                .iter()
                .filter(|r| r.metric == name && r.workload == workload)
                .collect();
            let mut cells = Vec::new();
            for (alloc, _) in &self.legend {
                let mine: Vec<&&Record> = recs.iter().filter(|r| &r.alloc == alloc).collect();
                if mine.is_empty() {
                    continue;
                }
                let (med, min, max) = stats(&mut mine.iter().map(|r| r.value).collect::<Vec<_>>());
                let (peak_med, peak_min, peak_max) =
                    stats(&mut mine.iter().map(|r| r.peak_kib as f64).collect::<Vec<_>>());
                let finals: Vec<f64> = mine
                    .iter()
                    .filter_map(|r| r.final_kib.map(|k| k as f64))
                    .collect();
                let fin = (!finals.is_empty()).then(|| stats(&mut finals.clone()));
                let med_of = |f: &dyn Fn(&Usage) -> f64| {
                    stats(&mut mine.iter().map(|r| f(&r.usage)).collect::<Vec<_>>()).0
                };
                cells.push(Cell {
                    alloc: alloc.clone(),
                    med,
                    min,
                    max,
                    n: mine.len(),
                    spread: if min > 0.0 { max / min } else { f64::NAN },
                    peak_med,
                    peak_min,
                    peak_max,
                    final_med: fin.map(|f| f.0),
                    final_min: fin.map(|f| f.1),
                    final_max: fin.map(|f| f.2),
                    user_med: med_of(&|u| u.user_secs),
                    sys_med: med_of(&|u| u.sys_secs),
                    minflt_med: med_of(&|u| u.minor_faults as f64),
                    majflt_med: med_of(&|u| u.major_faults as f64),
                    speed: None,
                    rss: None,
                    final_rel: None,
                });
            }
            let higher = recs[0].higher_is_better;
            let baseline = BASELINES
                .iter()
                .find_map(|b| cells.iter().find(|c| c.alloc == *b).cloned());
            if let Some(b) = &baseline {
                for c in &mut cells {
                    c.speed = Some(if higher { c.med / b.med } else { b.med / c.med });
                    c.rss = Some(c.peak_med / b.peak_med);
                    c.final_rel = match (c.final_med, b.final_med) {
                        (Some(x), Some(y)) => Some(x / y),
                        _ => None,
                    };
                }
            }
            out.push(Metric {
                workload,
                name,
                unit: recs[0].unit.clone(),
                higher_is_better: higher,
                baseline: baseline.map(|b| b.alloc),
                cells,
            });
        }
        out
    }

    /// The markdown report (also printed on stdout).
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let metrics = self.metrics();
        let mut s = String::new();
        let _ = writeln!(s, "# rseq-alloc benchmark report\n");
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| date | {} |", m.date);
        let _ = writeln!(s, "| commit | {} |", m.commit);
        let _ = writeln!(s, "| CPU | {} |", m.cpu);
        let _ = writeln!(
            s,
            "| cores | {} online, {} usable by this process |",
            m.cpus_online, m.cpus_allowed
        );
        let _ = writeln!(s, "| kernel | {} |", m.kernel);
        let _ = writeln!(s, "| glibc | {} |", m.glibc);
        let _ = writeln!(s, "| rseq-alloc | {} |", m.rseq);
        let vers: Vec<String> = self
            .legend
            .iter()
            .filter_map(|(n, _)| m.version(n).map(|v| format!("{n}: {v}")))
            .collect();
        let _ = writeln!(s, "| versions | {} |", vers.join("; "));
        let _ = writeln!(
            s,
            "| suite | {} ({} repetitions each, {} fresh processes for the micro workloads \
             {}; median [min–max]; {:.0} s in all) |",
            self.suite,
            self.reps,
            self.micro_procs,
            self.micro.join(", "),
            self.elapsed_secs
        );
        let _ = writeln!(s, "| command | `{}` |\n", self.command);
        let _ = writeln!(
            s,
            "Every measurement runs in its own process. Ratios compare allocators \
             measured in this same run; absolute numbers move with machine load. \
             The baseline (1.00) of a figure is the first of jemalloc (the \
             tikv-jemallocator crate), jemalloc-so (Debian's library, for the \
             programs) and glibc that ran it. Charts: `report.svg`.\n"
        );

        // Allocator legend.
        let _ = writeln!(s, "## Allocators\n");
        for (n, d) in &self.legend {
            match m.version(n) {
                Some(v) => {
                    let _ = writeln!(s, "- **{n}**: {d}; version: {v}");
                }
                None => {
                    let _ = writeln!(s, "- **{n}**: {d}");
                }
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "- {n}");
        }
        let _ = writeln!(s);

        // Summary matrices.
        let allocs: Vec<&String> = self
            .legend
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                metrics
                    .iter()
                    .any(|mt| mt.cells.iter().any(|c| &&c.alloc == n))
            })
            .collect();
        let header = |s: &mut String| {
            let _ = write!(s, "| workload | baseline |");
            for a in &allocs {
                let _ = write!(s, " {a} |");
            }
            let _ = write!(s, "\n|---|---|");
            for _ in &allocs {
                let _ = write!(s, "---:|");
            }
            let _ = writeln!(s);
        };
        let _ = writeln!(
            s,
            "## Summary: speed relative to the baseline (higher is faster; 1.00 = baseline)\n"
        );
        header(&mut s);
        for mt in &metrics {
            let _ = write!(
                s,
                "| {} | {} |",
                mt.name,
                mt.baseline.as_deref().unwrap_or("–")
            );
            for a in &allocs {
                let cell = mt.cells.iter().find(|c| &&c.alloc == a);
                let txt = match cell {
                    Some(c) => c.speed.map_or("–".into(), |x| format!("{x:.2}")),
                    None if self.failed(&mt.workload, a) => "failed".into(),
                    None => "".into(),
                };
                let _ = write!(s, " {txt} |");
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(
            s,
            "\n## Summary: peak RSS relative to the baseline (lower is leaner)\n"
        );
        header(&mut s);
        for (mt, label) in rss_rows(&metrics) {
            let base = mt.baseline.as_deref().unwrap_or("–");
            let _ = write!(s, "| {label} | {base} |");
            for a in &allocs {
                let cell = mt.cells.iter().find(|c| &&c.alloc == a);
                let txt = match cell {
                    Some(c) => c.rss.map_or("–".into(), |x| format!("{x:.2}")),
                    None if self.failed(&mt.workload, a) => "failed".into(),
                    None => "".into(),
                };
                let _ = write!(s, " {txt} |");
            }
            let _ = writeln!(s);
            if mt.cells.iter().any(|c| c.final_rel.is_some()) {
                let _ = write!(s, "| {label} (final RSS) | {base} |");
                for a in &allocs {
                    let cell = mt.cells.iter().find(|c| &&c.alloc == a);
                    let txt = cell
                        .and_then(|c| c.final_rel)
                        .map_or(String::new(), |x| format!("{x:.2}"));
                    let _ = write!(s, " {txt} |");
                }
                let _ = writeln!(s);
            }
        }
        let _ = writeln!(s);

        self.spread_table(&metrics, &allocs, &mut s);

        // Per-workload detail.
        let _ = writeln!(s, "## Details\n");
        let mut last_workload = String::new();
        for mt in &metrics {
            if mt.workload != last_workload {
                last_workload = mt.workload.clone();
                let _ = writeln!(
                    s,
                    "### {} — {}\n",
                    mt.workload,
                    crate::harness::describe(&mt.workload)
                );
            }
            let dir = if mt.higher_is_better {
                "higher is better"
            } else {
                "lower is better"
            };
            let has_final = mt.cells.iter().any(|c| c.final_med.is_some());
            let base = mt.baseline.as_deref().unwrap_or("no baseline in this run");
            let _ = write!(
                s,
                "**{}** ({}, {dir}; ratios vs {base}; user, sys and faults are the whole process's, median)\n\n\
                 | allocator | {} median [min–max] | runs | slowest/fastest | speed × | peak RSS MiB | RSS × | user s | sys s | minor faults | major faults |",
                mt.name, mt.unit, mt.unit
            );
            if has_final {
                let _ = write!(s, " final RSS MiB | final × |");
            }
            let _ = write!(
                s,
                "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            if has_final {
                let _ = write!(s, "---:|---:|");
            }
            let _ = writeln!(s);
            for c in &mt.cells {
                let _ = write!(
                    s,
                    "| {} | {} [{}–{}] | {} | {:.2}× | {} | {} [{}–{}] | {} | {:.2} | {:.2} | {:.0} | {:.0} |",
                    c.alloc,
                    fmt_num(c.med),
                    fmt_num(c.min),
                    fmt_num(c.max),
                    c.n,
                    c.spread,
                    c.speed.map_or("–".into(), |x| format!("{x:.2}")),
                    mib(c.peak_med),
                    mib(c.peak_min),
                    mib(c.peak_max),
                    c.rss.map_or("–".into(), |x| format!("{x:.2}")),
                    c.user_med,
                    c.sys_med,
                    c.minflt_med,
                    c.majflt_med,
                );
                if has_final {
                    let _ = write!(
                        s,
                        " {} | {} |",
                        c.final_med.map_or("–".into(), mib),
                        c.final_rel.map_or("–".into(), |x| format!("{x:.2}"))
                    );
                }
                let _ = writeln!(s);
            }
            let _ = writeln!(s);
        }
        if !self.internals.is_empty() {
            let _ = writeln!(
                s,
                "## rseq-alloc internals (in-process runs; median over repetitions)\n\n\
                 | workload | rseq aborts | fallback ops | mapped MiB at end | cached in per-CPU caches MiB |\n\
                 |---|---:|---:|---:|---:|"
            );
            let mut names: Vec<&str> = Vec::new();
            for i in &self.internals {
                if !names.contains(&i.workload.as_str()) {
                    names.push(&i.workload);
                }
            }
            for n in names {
                let col = |f: &dyn Fn(&Internals) -> u64| {
                    let mut v: Vec<f64> = self
                        .internals
                        .iter()
                        .filter(|i| i.workload == n)
                        .map(|i| f(i) as f64)
                        .collect();
                    stats(&mut v).0
                };
                let _ = writeln!(
                    s,
                    "| {n} | {:.0} | {:.0} | {} | {} |",
                    col(&|i| i.rseq_aborts),
                    col(&|i| i.fallback_ops),
                    mib(col(&|i| i.mapped_kib)),
                    mib(col(&|i| i.cached_kib)),
                );
            }
            let _ = writeln!(s);
        }
        if !self.failures.is_empty() {
            let _ = writeln!(s, "## Failed runs\n");
            for f in &self.failures {
                let _ = writeln!(s, "- {} / {}: {}", f.workload, f.alloc, f.why);
            }
            let _ = writeln!(s);
        }
        s
    }

    /// Median and spread across fresh processes of every micro-workload
    /// figure: `median [min–max] slowest/fastest×`.
    fn spread_table(&self, metrics: &[Metric], allocs: &[&String], s: &mut String) {
        let micro: Vec<&Metric> = metrics
            .iter()
            .filter(|m| self.micro.contains(&m.workload))
            .collect();
        if micro.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "## Micro workloads across fresh processes\n\n\
             Each figure is the median over {} processes, then [fastest–slowest process] and \
             the slowest/fastest ratio. Address-space layout randomisation gives every \
             process a different layout, and per-call costs can be bimodal by process, so \
             one process per allocator is not a measurement.\n",
            self.micro_procs
        );
        let _ = write!(s, "| figure |");
        for a in allocs {
            let _ = write!(s, " {a} |");
        }
        let _ = write!(s, "\n|---|");
        for _ in allocs {
            let _ = write!(s, "---:|");
        }
        let _ = writeln!(s);
        for mt in micro {
            let _ = write!(s, "| {} ({}) |", mt.name, mt.unit);
            for a in allocs {
                let txt = mt
                    .cells
                    .iter()
                    .find(|c| &&c.alloc == a)
                    .map_or(String::new(), |c| {
                        format!(
                            "{} [{}–{}] {:.2}×",
                            fmt_num(c.med),
                            fmt_num(c.min),
                            fmt_num(c.max),
                            c.spread
                        )
                    });
                let _ = write!(s, " {txt} |");
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s);
    }

    fn failed(&self, workload: &str, alloc: &str) -> bool {
        self.failures
            .iter()
            .any(|f| f.workload == workload && f.alloc == alloc)
    }

    /// One row per (metric, allocator): medians, ranges and ratios.
    pub fn csv(&self) -> String {
        let mut s = String::from(
            "workload,metric,allocator,unit,higher_is_better,runs,median,min,max,\
             slowest_over_fastest,baseline,speed_vs_baseline,peak_rss_kib_median,peak_rss_kib_min,\
             peak_rss_kib_max,rss_vs_baseline,final_rss_kib_median,user_s_median,sys_s_median,\
             minor_faults_median,major_faults_median\n",
        );
        let opt = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:.4}"));
        for mt in self.metrics() {
            for c in &mt.cells {
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{},{},{:.0},{:.0},{:.0},{},{},{:.3},{:.3},{:.0},{:.0}",
                    mt.workload,
                    mt.name,
                    c.alloc,
                    mt.unit,
                    mt.higher_is_better,
                    c.n,
                    c.med,
                    c.min,
                    c.max,
                    c.spread,
                    mt.baseline.as_deref().unwrap_or(""),
                    opt(c.speed),
                    c.peak_med,
                    c.peak_min,
                    c.peak_max,
                    opt(c.rss),
                    c.final_med.map_or(String::new(), |v| format!("{v:.0}")),
                    c.user_med,
                    c.sys_med,
                    c.minflt_med,
                    c.majflt_med,
                );
            }
        }
        for f in &self.failures {
            let _ = writeln!(s, "{},,{},failed,,0,,,,,,,,,,,,,,,", f.workload, f.alloc);
        }
        s
    }

    /// Every run, unaggregated.
    pub fn runs_csv(&self) -> String {
        let mut s =
            String::from("workload,metric,allocator,rep,value,unit,peak_rss_kib,final_rss_kib,user_s,sys_s,minor_faults,major_faults\n");
        for r in &self.records {
            let _ = writeln!(
                s,
                "{},{},{},{},{:.4},{},{},{},{:.3},{:.3},{},{}",
                r.workload,
                r.metric,
                r.alloc,
                r.rep,
                r.value,
                r.unit,
                r.peak_kib,
                r.final_kib.map_or(String::new(), |v| v.to_string()),
                r.usage.user_secs,
                r.usage.sys_secs,
                r.usage.minor_faults,
                r.usage.major_faults,
            );
        }
        s
    }

    /// A hand-written SVG with two charts, time and peak RSS: every figure of
    /// every workload on one logarithmic axis normalised to its baseline
    /// (1 = baseline's median), a bar per allocator from 1 to its median and a
    /// whisker over its [fastest, slowest] run. Throughput figures are drawn as
    /// time (baseline throughput / throughput), so lower is better in both.
    pub fn svg(&self) -> String {
        let metrics = self.metrics();
        let allocs: Vec<&str> = self
            .legend
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| {
                metrics
                    .iter()
                    .any(|m| m.cells.iter().any(|c| c.alloc == *n))
            })
            .collect();
        let mut time_rows: Vec<Row> = Vec::new();
        for m in &metrics {
            let Some(b) = base_cell(m) else { continue };
            let bars = m
                .cells
                .iter()
                .map(|c| {
                    let v = if m.higher_is_better {
                        (b.med / c.med, b.med / c.max, b.med / c.min)
                    } else {
                        (c.med / b.med, c.min / b.med, c.max / b.med)
                    };
                    (c.alloc.clone(), v)
                })
                .collect();
            time_rows.push(Row {
                label: m.name.clone(),
                base: b.alloc.clone(),
                bars,
            });
        }
        let mut rss_rows_v: Vec<Row> = Vec::new();
        for (m, label) in rss_rows(&metrics) {
            let Some(b) = base_cell(m) else { continue };
            rss_rows_v.push(Row {
                label: label.clone(),
                base: b.alloc.clone(),
                bars: m
                    .cells
                    .iter()
                    .map(|c| {
                        let r = |x: f64| x / b.peak_med;
                        (
                            c.alloc.clone(),
                            (r(c.peak_med), r(c.peak_min), r(c.peak_max)),
                        )
                    })
                    .collect(),
            });
            if let Some(bf) = b.final_med {
                rss_rows_v.push(Row {
                    label: format!("{label} (final)"),
                    base: b.alloc.clone(),
                    bars: m
                        .cells
                        .iter()
                        .filter_map(|c| {
                            Some((
                                c.alloc.clone(),
                                (c.final_med? / bf, c.final_min? / bf, c.final_max? / bf),
                            ))
                        })
                        .collect(),
                });
            }
        }

        const W: f64 = 960.0;
        const LABEL: f64 = 150.0;
        const PLOT: f64 = 680.0;
        const BAR: f64 = 7.0;
        const GROUP_GAP: f64 = 9.0;
        let mut s = String::new();
        let chart_h = |rows: &[Row]| -> f64 {
            60.0 + rows
                .iter()
                .map(|r| r.bars.len() as f64 * (BAR + 1.0) + GROUP_GAP)
                .sum::<f64>()
                + 30.0
        };
        let total_h = 90.0 + chart_h(&time_rows) + chart_h(&rss_rows_v);
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{total_h}" viewBox="0 0 {W} {total_h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="10">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="10" y="20" font-size="15" font-weight="bold">rseq-alloc vs peers — {} suite, median of {} runs ({} processes for micro workloads)</text>"#,
            esc(&self.suite),
            self.reps,
            self.micro_procs
        );
        let _ = writeln!(
            s,
            r##"<text x="10" y="36" fill="#444">{}</text>"##,
            esc(&self.machine.one_line())
        );
        // Legend.
        let mut lx = 10.0;
        for a in &allocs {
            let _ = writeln!(
                s,
                r#"<rect x="{lx}" y="48" width="10" height="10" fill="{}"/><text x="{}" y="57">{}</text>"#,
                color(a, &allocs),
                lx + 13.0,
                esc(a)
            );
            lx += 20.0 + 6.5 * a.len() as f64;
        }
        let mut y = 70.0;
        for (title, rows) in [
            (
                "Time relative to the baseline (log scale; lower is faster; throughput figures drawn as time)",
                &time_rows,
            ),
            (
                "Peak RSS relative to the baseline (log scale; lower is leaner; (final) = RSS at the end)",
                &rss_rows_v,
            ),
        ] {
            draw_chart(&mut s, &mut y, title, rows, &allocs, LABEL, PLOT, BAR, GROUP_GAP);
        }
        let _ = writeln!(s, "</svg>");
        s
    }
}

fn base_cell(m: &Metric) -> Option<&Cell> {
    m.baseline
        .as_ref()
        .and_then(|b| m.cells.iter().find(|c| &c.alloc == b))
}

/// One row group of a chart: a figure, its baseline and per allocator
/// (median, low, high) relative to the baseline's median.
struct Row {
    label: String,
    base: String,
    bars: Vec<(String, (f64, f64, f64))>,
}

/// Draws one normalised chart at `*y` and advances `*y` past it.
#[allow(clippy::too_many_arguments)]
fn draw_chart(
    s: &mut String,
    y: &mut f64,
    title: &str,
    rows: &[Row],
    allocs: &[&str],
    label_w: f64,
    plot_w: f64,
    bar_h: f64,
    gap: f64,
) {
    let x0 = 10.0 + label_w;
    // Axis: powers of two covering every median and whisker, within 1/32..32.
    let finite = |v: f64| v.is_finite() && v > 0.0;
    let (mut lo, mut hi) = (0.5f64, 2.0f64);
    for r in rows {
        for (_, (m, a, b)) in &r.bars {
            for v in [*m, *a, *b] {
                if finite(v) {
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
            }
        }
    }
    let lo_e = lo.log2().floor().max(-5.0);
    let hi_e = hi.log2().ceil().min(5.0);
    let xof = |v: f64| {
        let e = if finite(v) { v.log2() } else { lo_e };
        x0 + (e.clamp(lo_e, hi_e) - lo_e) / (hi_e - lo_e) * plot_w
    };
    let _ = writeln!(
        s,
        r#"<text x="10" y="{}" font-size="13" font-weight="bold">{}</text>"#,
        *y + 14.0,
        esc(title)
    );
    let top = *y + 40.0;
    let height: f64 = rows
        .iter()
        .map(|r| r.bars.len() as f64 * (bar_h + 1.0) + gap)
        .sum();
    let mut e = lo_e;
    while e <= hi_e {
        let x = xof(2f64.powf(e));
        let (stroke, dash) = if e == 0.0 {
            ("#333", "")
        } else {
            ("#ccc", r#" stroke-dasharray="2,2""#)
        };
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{stroke}"{dash}/>"#,
            top - 6.0,
            top + height
        );
        let v = 2f64.powf(e);
        let txt = if v >= 1.0 {
            format!("{v:.0}×")
        } else {
            format!("{v}×")
        };
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{txt}</text>"#,
            top - 9.0
        );
        e += 1.0;
    }
    let mut gy = top;
    for (i, r) in rows.iter().enumerate() {
        let gh = r.bars.len() as f64 * (bar_h + 1.0);
        if i % 2 == 1 {
            let _ = writeln!(
                s,
                r##"<rect x="10" y="{:.1}" width="{:.1}" height="{:.1}" fill="#f4f4f4"/>"##,
                gy - gap / 2.0,
                label_w + plot_w + 110.0,
                gh + gap
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            x0 - 6.0,
            gy + gh / 2.0 + 3.5,
            esc(&r.label)
        );
        for (j, (a, (m, l, h))) in r.bars.iter().enumerate() {
            let by = gy + j as f64 * (bar_h + 1.0);
            let (xa, xb) = (xof(1.0), xof(*m));
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{by:.1}" width="{:.1}" height="{bar_h}" fill="{}"><title>{}: {m:.3}× {} [{l:.3}–{h:.3}]</title></rect>"#,
                xa.min(xb),
                (xb - xa).abs().max(1.0),
                color(a, allocs),
                esc(a),
                esc(&r.base)
            );
            if finite(*l) && finite(*h) {
                let wy = by + bar_h / 2.0;
                let _ = writeln!(
                    s,
                    r##"<path d="M{:.1} {wy:.1}H{:.1}M{:.1} {:.1}V{:.1}M{:.1} {:.1}V{:.1}" stroke="#222" fill="none"/>"##,
                    xof(*l),
                    xof(*h),
                    xof(*l),
                    wy - 2.5,
                    wy + 2.5,
                    xof(*h),
                    wy - 2.5,
                    wy + 2.5
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" font-size="8">{} {m:.2}</text>"#,
                x0 + plot_w + 8.0,
                by + bar_h - 0.5,
                esc(a)
            );
        }
        gy += gh + gap;
    }
    *y = top + height + 30.0;
}

/// The rows of a peak-RSS table: one per workload, or one per figure for a
/// workload whose figures carry their own peaks (phases of one process, such
/// as `large/1t` and `large/2t`).
fn rss_rows(metrics: &[Metric]) -> Vec<(&Metric, String)> {
    let mut out: Vec<(&Metric, String)> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for mt in metrics {
        if seen.contains(&mt.workload.as_str()) {
            continue;
        }
        seen.push(&mt.workload);
        let group: Vec<&Metric> = metrics
            .iter()
            .filter(|m| m.workload == mt.workload)
            .collect();
        let same = group.iter().all(|m| {
            m.cells.iter().all(|c| {
                mt.cells
                    .iter()
                    .find(|d| d.alloc == c.alloc)
                    .is_some_and(|d| d.peak_med == c.peak_med)
            })
        });
        if same {
            out.push((mt, mt.workload.clone()));
        } else {
            out.extend(group.into_iter().map(|m| (m, m.name.clone())));
        }
    }
    out
}

fn kv<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// A fixed colour for the known allocators, a palette colour for `--lib` ones.
fn color(alloc: &str, all: &[&str]) -> &'static str {
    match alloc {
        "rseq" => "#d1495b",
        "rseq-so" => "#e8909a",
        "jemalloc" => "#00798c",
        "jemalloc-so" => "#6fbfcb",
        "mimalloc" => "#e09f3e",
        "mimalloc-so" => "#f0cc8f",
        "glibc" => "#6b6b6b",
        "tcmalloc-so" => "#30638e",
        _ => {
            const PALETTE: [&str; 5] = ["#8e44ad", "#27ae60", "#c0392b", "#7f8c8d", "#d35400"];
            let i = all.iter().position(|a| *a == alloc).unwrap_or(0);
            PALETTE[i % PALETTE.len()]
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

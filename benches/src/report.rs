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
        Machine {
            cpu,
            cpus_online: online,
            cpus_allowed: allowed,
            kernel,
            glibc,
            commit,
            date,
            rseq,
        }
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
                let final_med = (!finals.is_empty()).then(|| stats(&mut finals.clone()).0);
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
                    final_med,
                    speed: None,
                    rss: None,
                    final_rel: None,
                });
            }
            let higher = recs[0].higher_is_better;
            let baseline = ["jemalloc", "jemalloc-so"]
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
             measured in this same run; absolute numbers move with machine load.\n"
        );

        // Allocator legend.
        let _ = writeln!(s, "## Allocators\n");
        for (n, d) in &self.legend {
            let _ = writeln!(s, "- **{n}**: {d}");
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
            let _ = write!(s, "| workload |");
            for a in &allocs {
                let _ = write!(s, " {a} |");
            }
            let _ = write!(s, "\n|---|");
            for _ in &allocs {
                let _ = write!(s, "---:|");
            }
            let _ = writeln!(s);
        };
        let _ = writeln!(
            s,
            "## Summary: speed relative to jemalloc (higher is faster; 1.00 = jemalloc)\n"
        );
        header(&mut s);
        for mt in &metrics {
            let _ = write!(s, "| {} |", mt.name);
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
            "\n## Summary: peak RSS relative to jemalloc (lower is leaner)\n"
        );
        header(&mut s);
        for (mt, label) in rss_rows(&metrics) {
            let _ = write!(s, "| {label} |");
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
                let _ = write!(s, "| {label} (final RSS) |");
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
        self.targets(&metrics, &mut s);

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
            let base = mt.baseline.as_deref().unwrap_or("no jemalloc in this run");
            let _ = write!(
                s,
                "**{}** ({}, {dir}; ratios vs {base})\n\n| allocator | {} median [min–max] | runs | slowest/fastest | speed × | peak RSS MiB | RSS × |",
                mt.name, mt.unit, mt.unit
            );
            if has_final {
                let _ = write!(s, " final RSS MiB | final × |");
            }
            let _ = write!(s, "\n|---|---:|---:|---:|---:|---:|---:|");
            if has_final {
                let _ = write!(s, "---:|---:|");
            }
            let _ = writeln!(s);
            for c in &mt.cells {
                let _ = write!(
                    s,
                    "| {} | {} [{}–{}] | {} | {:.2}× | {} | {} [{}–{}] | {} |",
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

    /// The project's targets (issue 5), evaluated on this run's medians.
    fn targets(&self, metrics: &[Metric], s: &mut String) {
        let med = |metric: &str, alloc: &str| {
            metrics
                .iter()
                .find(|m| m.name == metric)
                .and_then(|m| m.cells.iter().find(|c| c.alloc == alloc))
        };
        let status = |ok: Option<bool>| match ok {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let mut rows: Vec<(String, String, &str)> = Vec::new();

        // Single-thread small-object churn: our time over theirs.
        let small = [
            "pair/16B",
            "pair/64B",
            "pair/256B",
            "pair/1024B",
            "burst1000",
        ];
        let worst = |peer: &str| -> Option<(f64, String)> {
            let mut out: Option<(f64, String)> = None;
            for m in small {
                let (Some(o), Some(p)) = (med(m, "rseq"), med(m, peer)) else {
                    continue;
                };
                let r = o.med / p.med;
                if !matches!(&out, Some((w, _)) if r <= *w) {
                    out = Some((r, m.to_string()));
                }
            }
            out
        };
        for (peer, limit) in [("jemalloc", 0.8), ("mimalloc", 1.0)] {
            let w = worst(peer);
            rows.push((
                format!("single-thread small objects: time ≤ {limit:.1}x {peer}'s"),
                w.as_ref()
                    .map_or("–".into(), |(r, m)| format!("worst {r:.2}x ({m})")),
                status(w.map(|(r, _)| r <= limit)),
            ));
        }
        let t64 = med("threads64", "rseq");
        rows.push((
            "threads64: throughput ≥ 1.2x jemalloc's".into(),
            t64.and_then(|c| c.speed)
                .map_or("–".into(), |x| format!("{x:.2}x")),
            status(t64.and_then(|c| c.speed).map(|x| x >= 1.2)),
        ));
        rows.push((
            "threads64: peak RSS ≤ jemalloc's".into(),
            t64.and_then(|c| c.rss)
                .map_or("–".into(), |x| format!("{x:.2}x")),
            status(t64.and_then(|c| c.rss).map(|x| x <= 1.0)),
        ));
        let fr = med("frag", "rseq").and_then(|c| c.final_rel);
        rows.push((
            "frag: final RSS ≤ jemalloc's".into(),
            fr.map_or("–".into(), |x| format!("{x:.2}x")),
            status(fr.map(|x| x <= 1.0)),
        ));
        for prog in ["python", "sqlite"] {
            let r = match (med(prog, "rseq-so"), med(prog, "glibc")) {
                (Some(o), Some(g)) => Some(o.med / g.med),
                _ => None,
            };
            rows.push((
                format!("{prog}: time ≤ glibc's (rseq-so)"),
                r.map_or("–".into(), |x| format!("{x:.2}x")),
                status(r.map(|x| x <= 1.0)),
            ));
        }
        if self.suite == "smoke" || rows.iter().all(|r| r.2 == "not measured") {
            return;
        }
        let _ = writeln!(
            s,
            "## Targets (issue 5), on this run's medians\n\n| target | measured | status |\n|---|---:|---|"
        );
        for (t, m, st) in rows {
            let _ = writeln!(s, "| {t} | {m} | {st} |");
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
             slowest_over_fastest,speed_vs_jemalloc,peak_rss_kib_median,peak_rss_kib_min,peak_rss_kib_max,\
             rss_vs_jemalloc,final_rss_kib_median\n",
        );
        let opt = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:.4}"));
        for mt in self.metrics() {
            for c in &mt.cells {
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{},{:.0},{:.0},{:.0},{},{}",
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
                    opt(c.speed),
                    c.peak_med,
                    c.peak_min,
                    c.peak_max,
                    opt(c.rss),
                    c.final_med.map_or(String::new(), |v| format!("{v:.0}")),
                );
            }
        }
        for f in &self.failures {
            let _ = writeln!(s, "{},,{},failed,,0,,,,,,,,,,", f.workload, f.alloc);
        }
        s
    }

    /// Every run, unaggregated.
    pub fn runs_csv(&self) -> String {
        let mut s =
            String::from("workload,metric,allocator,rep,value,unit,peak_rss_kib,final_rss_kib\n");
        for r in &self.records {
            let _ = writeln!(
                s,
                "{},{},{},{},{:.4},{},{},{}",
                r.workload,
                r.metric,
                r.alloc,
                r.rep,
                r.value,
                r.unit,
                r.peak_kib,
                r.final_kib.map_or(String::new(), |v| v.to_string())
            );
        }
        s
    }

    /// A hand-written SVG: one small horizontal bar chart per figure (speed
    /// relative to jemalloc), then one per workload for peak RSS.
    pub fn svg(&self) -> String {
        let metrics = self.metrics();
        const W: f64 = 420.0;
        const LABEL: f64 = 92.0;
        const BAR_AREA: f64 = 250.0;
        const BAR_H: f64 = 13.0;
        const GAP: f64 = 3.0;
        const COLS: usize = 2;

        struct Panel {
            title: String,
            bars: Vec<(String, Option<f64>)>,
        }
        let mut speed_panels = Vec::new();
        let mut rss_panels = Vec::new();
        let mut seen = Vec::new();
        for mt in &metrics {
            let bars = self
                .legend
                .iter()
                .filter(|(a, _)| {
                    mt.cells.iter().any(|c| &c.alloc == a) || self.failed(&mt.workload, a)
                })
                .map(|(a, _)| {
                    (
                        a.clone(),
                        mt.cells
                            .iter()
                            .find(|c| &c.alloc == a)
                            .and_then(|c| c.speed),
                    )
                })
                .collect();
            speed_panels.push(Panel {
                title: format!(
                    "{} ({})",
                    mt.name,
                    if mt.higher_is_better {
                        "throughput"
                    } else {
                        "time"
                    }
                ),
                bars,
            });
            if !seen.contains(&mt.workload) {
                seen.push(mt.workload.clone());
                let bars = self
                    .legend
                    .iter()
                    .filter(|(a, _)| {
                        mt.cells.iter().any(|c| &c.alloc == a) || self.failed(&mt.workload, a)
                    })
                    .map(|(a, _)| {
                        (
                            a.clone(),
                            mt.cells.iter().find(|c| &c.alloc == a).and_then(|c| c.rss),
                        )
                    })
                    .collect();
                rss_panels.push(Panel {
                    title: format!("{} peak RSS", mt.workload),
                    bars,
                });
                if mt.cells.iter().any(|c| c.final_rel.is_some()) {
                    rss_panels.push(Panel {
                        title: format!("{} final RSS", mt.workload),
                        bars: mt
                            .cells
                            .iter()
                            .map(|c| (c.alloc.clone(), c.final_rel))
                            .collect(),
                    });
                }
            }
        }
        // Each row of panels is as tall as its panel with the most bars.
        let row_heights = |panels: &[Panel]| -> Vec<f64> {
            panels
                .chunks(COLS)
                .map(|row| {
                    let n = row.iter().map(|p| p.bars.len()).max().unwrap_or(1) as f64;
                    30.0 + n * (BAR_H + GAP) + 8.0
                })
                .collect()
        };
        let section_h = 34.0;
        let total_h = 60.0
            + section_h
            + row_heights(&speed_panels).iter().sum::<f64>()
            + section_h
            + row_heights(&rss_panels).iter().sum::<f64>()
            + 20.0;
        let total_w = W * COLS as f64 + 20.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" viewBox="0 0 {total_w} {total_h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="11">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="10" y="22" font-size="16" font-weight="bold">rseq-alloc vs peers — {} suite, median of {}</text>"#,
            esc(&self.suite),
            self.reps
        );
        let _ = writeln!(
            s,
            r##"<text x="10" y="40" fill="#444">{}</text>"##,
            esc(&self.machine.one_line())
        );
        let mut y = 60.0;
        let draw_section = |s: &mut String,
                            y: &mut f64,
                            title: &str,
                            panels: &[Panel],
                            lower_better: bool| {
            let _ = writeln!(
                s,
                r#"<text x="10" y="{}" font-size="14" font-weight="bold">{}</text>"#,
                *y + 20.0,
                esc(title)
            );
            *y += section_h;
            let heights = row_heights(panels);
            for (i, p) in panels.iter().enumerate() {
                let px = 10.0 + (i % COLS) as f64 * W;
                let py = *y + heights[..i / COLS].iter().sum::<f64>();
                let panel_h = heights[i / COLS];
                let _ = writeln!(
                    s,
                    r##"<rect x="{px}" y="{py}" width="{}" height="{}" fill="#fafafa" stroke="#ddd"/>"##,
                    W - 10.0,
                    panel_h - 6.0
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" font-weight="bold">{}</text>"#,
                    px + 6.0,
                    py + 16.0,
                    esc(&p.title)
                );
                let maxv = p.bars.iter().filter_map(|(_, v)| *v).fold(1.0f64, f64::max) * 1.12;
                let x0 = px + LABEL;
                let one = x0 + BAR_AREA / maxv;
                for (j, (a, v)) in p.bars.iter().enumerate() {
                    let by = py + 26.0 + j as f64 * (BAR_H + GAP);
                    let weight = if a.starts_with("rseq") {
                        "bold"
                    } else {
                        "normal"
                    };
                    let _ = writeln!(
                        s,
                        r#"<text x="{}" y="{}" text-anchor="end" font-weight="{weight}">{}</text>"#,
                        x0 - 4.0,
                        by + BAR_H - 3.0,
                        esc(a)
                    );
                    match v {
                        Some(v) => {
                            let w = (v / maxv * BAR_AREA).max(1.0);
                            let _ = writeln!(
                                s,
                                r#"<rect x="{x0}" y="{by}" width="{w:.1}" height="{BAR_H}" fill="{}"/>"#,
                                color(a)
                            );
                            let good = if lower_better { *v <= 1.0 } else { *v >= 1.0 };
                            let _ = writeln!(
                                s,
                                r##"<text x="{:.1}" y="{}" fill="{}">{v:.2}×</text>"##,
                                x0 + w + 3.0,
                                by + BAR_H - 3.0,
                                if good { "#1a7f37" } else { "#b42318" }
                            );
                        }
                        None => {
                            let _ = writeln!(
                                s,
                                r##"<text x="{x0}" y="{}" fill="#b42318">n/a (failed, or no jemalloc baseline)</text>"##,
                                by + BAR_H - 3.0
                            );
                        }
                    }
                }
                let _ = writeln!(
                    s,
                    r##"<line x1="{one:.1}" y1="{}" x2="{one:.1}" y2="{}" stroke="#333" stroke-dasharray="3,2"/>"##,
                    py + 22.0,
                    py + panel_h - 10.0
                );
            }
            *y += heights.iter().sum::<f64>();
        };
        draw_section(
            &mut s,
            &mut y,
            "Speed relative to jemalloc (higher is faster; dashed line = jemalloc)",
            &speed_panels,
            false,
        );
        draw_section(
            &mut s,
            &mut y,
            "Peak RSS relative to jemalloc (lower is leaner; dashed line = jemalloc)",
            &rss_panels,
            true,
        );
        let _ = writeln!(s, "</svg>");
        s
    }
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

fn color(alloc: &str) -> &'static str {
    match alloc {
        "rseq" => "#d1495b",
        "rseq-so" => "#e8909a",
        "jemalloc" => "#00798c",
        "jemalloc-so" => "#6fbfcb",
        "mimalloc" => "#e09f3e",
        "mimalloc-so" => "#f0cc8f",
        "glibc" => "#6b6b6b",
        "tcmalloc-so" => "#30638e",
        _ => "#999999",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

//! The report: what was measured (plain data, filled by the harness) and
//! its summary per (figure, allocator) — median, spread, ratios to the
//! baseline. The renderings are in `markdown`, `csv` and `svg`; none of them
//! runs anything.

mod csv;
mod markdown;
mod svg;

use crate::machine::Machine;

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
    /// Allocator (`rseq`, or a configuration of it such as `rseq-cas`).
    pub alloc: String,
    /// rseq restarts in the whole run.
    pub rseq_aborts: u64,
    /// Operations done by the CAS fallback or bypassing the per-CPU cache.
    pub fallback_ops: u64,
    /// Memory mapped by the allocator at the end, KiB.
    pub mapped_kib: u64,
    /// Free objects held in per-CPU caches at the end, KiB.
    pub cached_kib: u64,
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
    /// (workload, description) of every workload in this run.
    pub descriptions: Vec<(String, String)>,
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
    /// Every figure of the run, in order of first appearance, with one cell
    /// per allocator (legend order) and its ratios to the baseline.
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

    /// Whether a run of (workload, allocator) failed.
    fn failed(&self, workload: &str, alloc: &str) -> bool {
        self.failures
            .iter()
            .any(|f| f.workload == workload && f.alloc == alloc)
    }

    /// The description of workload `name`.
    fn description(&self, name: &str) -> &str {
        self.descriptions
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, d)| d.as_str())
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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

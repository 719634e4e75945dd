//! The markdown report (also printed on stdout).

use super::{fmt_num, mib, rss_rows, stats, Cell, Internals, Metric, Report};
use std::fmt::Write as _;

impl Report {
    /// The cells of one summary row: `pick` of each allocator's cell as a
    /// ratio ("–" when it has none), "failed" for a failed run, empty when
    /// the allocator did not run the workload.
    fn ratio_cells(
        &self,
        s: &mut String,
        mt: &Metric,
        allocs: &[&String],
        pick: fn(&Cell) -> Option<f64>,
    ) {
        for a in allocs {
            let cell = mt.cells.iter().find(|c| &&c.alloc == a);
            let txt = match cell {
                Some(c) => pick(c).map_or("–".into(), |x| format!("{x:.2}")),
                None if self.failed(&mt.workload, a) => "failed".into(),
                None => "".into(),
            };
            let _ = write!(s, " {txt} |");
        }
        let _ = writeln!(s);
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
            self.ratio_cells(&mut s, mt, &allocs, |c| c.speed);
        }
        let _ = writeln!(
            s,
            "\n## Summary: peak RSS relative to the baseline (lower is leaner)\n"
        );
        header(&mut s);
        for (mt, label) in rss_rows(&metrics) {
            let base = mt.baseline.as_deref().unwrap_or("–");
            let _ = write!(s, "| {label} | {base} |");
            self.ratio_cells(&mut s, mt, &allocs, |c| c.rss);
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
                    self.description(&mt.workload)
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
                 | workload | allocator | rseq aborts | fallback ops | mapped MiB at end | cached in per-CPU caches (and CAS magazines) MiB |\n\
                 |---|---|---:|---:|---:|---:|"
            );
            let mut keys: Vec<(&str, &str)> = Vec::new();
            for i in &self.internals {
                let k = (i.workload.as_str(), i.alloc.as_str());
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            for (n, a) in keys {
                let col = |f: &dyn Fn(&Internals) -> u64| {
                    let mut v: Vec<f64> = self
                        .internals
                        .iter()
                        .filter(|i| i.workload == n && i.alloc == a)
                        .map(|i| f(i) as f64)
                        .collect();
                    stats(&mut v).0
                };
                let _ = writeln!(
                    s,
                    "| {n} | {a} | {:.0} | {:.0} | {} | {} |",
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
}

//! The two CSV files: one row per (figure, allocator), and every run.

use super::Report;
use std::fmt::Write as _;

impl Report {
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
}

//! A hand-written SVG (no plotting dependency): two charts, time and peak
//! RSS, every figure on one normalised logarithmic axis.

use super::{esc, rss_rows, Cell, Metric, Report};
use std::fmt::Write as _;

impl Report {
    /// The SVG: two charts, time and peak RSS, every figure of every
    /// workload on one logarithmic axis normalised to its baseline (1 =
    /// baseline's median), a bar per allocator from 1 to its median and a
    /// whisker over its [fastest, slowest] run. Throughput figures are drawn
    /// as time (baseline throughput / throughput), so lower is better in both.
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

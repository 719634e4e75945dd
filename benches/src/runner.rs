//! Runs a plan of (workload, allocator, repetition) measurements, each in a
//! child process with a timeout, and turns the children's output into
//! `report` records. Knows processes and the worker protocol, not reports.

use crate::allocs::{Alloc, Install};
use crate::report::{Failure, Internals, Record, Usage};
use crate::workloads::{self, Kind, Suite, Workload};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One planned measurement.
pub struct Planned<'a> {
    /// The workload.
    pub workload: &'static Workload,
    /// The allocator under it.
    pub alloc: &'a Alloc,
    /// Repetition index, from 0.
    pub rep: usize,
    /// Repetitions of this (workload, allocator) in the plan.
    pub reps: usize,
}

/// How the plan is run.
pub struct Settings<'a> {
    /// This binary, re-executed as the worker.
    pub exe: &'a Path,
    /// Which parameter set.
    pub suite: Suite,
    /// A child running longer is killed and reported as failed.
    pub timeout: Duration,
    /// The real programs and their input files.
    pub programs: &'a Programs,
    /// When the whole run started (for the progress lines).
    pub start: Instant,
}

/// What a plan produced.
#[derive(Default)]
pub struct Outcome {
    /// Every figure.
    pub records: Vec<Record>,
    /// Every failed run.
    pub failures: Vec<Failure>,
    /// Our allocator's counters, one entry per in-process run.
    pub internals: Vec<Internals>,
    /// Workloads that could not run here (`SKIP` from the worker).
    pub skips: Vec<String>,
}

/// The real programs, if installed, and the files they read.
pub struct Programs {
    /// python3.
    pub python: Option<PathBuf>,
    /// sqlite3.
    pub sqlite: Option<PathBuf>,
    /// perl.
    pub perl: Option<PathBuf>,
    py_script: PathBuf,
    pl_script: PathBuf,
    sql_dir: PathBuf,
}

impl Programs {
    /// Looks the programs up and writes their input files into `dir`.
    pub fn find(dir: &Path) -> Programs {
        let p = Programs {
            python: find_program(&["/usr/bin/python3", "python3"]),
            sqlite: find_program(&["/usr/bin/sqlite3", "sqlite3"]),
            perl: find_program(&["/usr/bin/perl", "perl"]),
            py_script: dir.join("churn.py"),
            pl_script: dir.join("workload.pl"),
            sql_dir: dir.to_path_buf(),
        };
        let _ = std::fs::write(&p.py_script, workloads::PY_SCRIPT);
        let _ = std::fs::write(&p.pl_script, workloads::PERL_SCRIPT);
        p
    }
}

/// Runs `plan` in order, printing one progress line per run on stderr.
/// A crash or a timeout of a (workload, allocator) skips its later reps.
pub fn run(plan: &[Planned], set: &Settings) -> Result<Outcome, String> {
    let programs = set.programs;
    let mut records: Vec<Record> = Vec::new();
    let mut failures: Vec<Failure> = Vec::new();
    let mut workload_skips: Vec<String> = Vec::new();
    let mut internals: Vec<Internals> = Vec::new();
    // Wall seconds of finished runs per workload, for the ETA.
    let mut took: Vec<(&str, f64, usize)> = Vec::new();
    for (i, p) in plan.iter().enumerate() {
        let (w, a, rep) = (p.workload, p.alloc, p.rep);
        if failures
            .iter()
            .any(|f| f.workload == w.name && f.alloc == a.name && f.fatal)
        {
            continue; // a crash or a timeout is not retried on later reps
        }
        let params = w.params(set.suite);
        let mut cmd;
        match w.kind {
            Kind::Synthetic(_) => {
                cmd = Command::new(set.exe);
                cmd.arg("worker").arg(w.name).args(params);
            }
            Kind::Python => {
                cmd = Command::new(programs.python.as_ref().ok_or("python3 not found")?);
                cmd.arg(&programs.py_script)
                    .args(params)
                    .env("PYTHONMALLOC", "malloc")
                    .env("PYTHONHASHSEED", "0");
            }
            Kind::Perl => {
                cmd = Command::new(programs.perl.as_ref().ok_or("perl not found")?);
                cmd.arg(&programs.pl_script).args(params);
            }
            Kind::Sqlite => {
                let sql = programs.sql_dir.join(format!("index-{}.sql", params[0]));
                let _ = std::fs::write(&sql, workloads::sql_script(params[0]));
                cmd = Command::new(programs.sqlite.as_ref().ok_or("sqlite3 not found")?);
                cmd.arg(":memory:");
                let f =
                    File::open(&sql).map_err(|e| format!("cannot open {}: {e}", sql.display()))?;
                cmd.stdin(f);
            }
        }
        cmd.env_remove("LD_PRELOAD")
            .env_remove(crate::dispatch::ENV);
        match &a.kind {
            Install::InProc(b) => {
                cmd.env(crate::dispatch::ENV, b);
            }
            Install::Preload(p) => {
                cmd.env("LD_PRELOAD", p)
                    .env(crate::dispatch::ENV, "system")
                    .env("RSEQ_BENCH_EXPECT_LIB", p);
            }
            Install::Native => {
                cmd.env(crate::dispatch::ENV, "system");
            }
        }
        for (key, value) in a.env {
            cmd.env(key, value);
        }
        for (alloc, key, value) in w.env {
            if *alloc == a.name {
                cmd.env(key, value);
            }
        }
        let prefix = format!(
            "[{:>3}/{}] {:<9} {:<11} rep {}/{}",
            i + 1,
            plan.len(),
            w.name,
            a.name,
            rep + 1,
            p.reps
        );
        let run = run_child(&mut cmd, set.timeout);
        match took.iter_mut().find(|t| t.0 == w.name) {
            Some(t) => {
                t.1 += run.wall_secs;
                t.2 += 1;
            }
            None => took.push((w.name, run.wall_secs, 1)),
        }
        let eta = eta_secs(&took, plan[i + 1..].iter().map(|p| p.workload.name));
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
            Kind::Synthetic(_) => {
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
                    internals.push(Internals {
                        workload: w.name.to_string(),
                        alloc: a.name.to_string(),
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
                        rep,
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
            Kind::Python | Kind::Sqlite | Kind::Perl => {
                shown = format!("  {:.3} s", run.wall_secs);
                records.push(Record {
                    workload: w.name.to_string(),
                    metric: w.name.to_string(),
                    alloc: a.name.to_string(),
                    rep,
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
            set.start.elapsed().as_secs_f64(),
            fmt_eta(eta)
        );
    }
    Ok(Outcome {
        records,
        failures,
        internals,
        skips: workload_skips,
    })
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
    usage: Usage,
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
                usage: Usage::default(),
            }
        }
    };
    let pid = child.id() as libc::pid_t;
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let out_t = read_in_thread(out);
    let err_t = read_in_thread(err);
    // Reap with wait4 (not Child::wait) to get the child's own rusage.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut status = 0;
        // SAFETY: rusage is plain data; zero is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our un-reaped child; status and ru are valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        let wall = start.elapsed().as_secs_f64();
        let usage = Usage {
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
            rx.recv().unwrap_or((-1, 0, 0, 0.0, Usage::default()))
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

/// Reads `r` to its end on a thread of its own (a child's stdout and stderr
/// are drained at once, so neither pipe fills up and blocks the child).
fn read_in_thread<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

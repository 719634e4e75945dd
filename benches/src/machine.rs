//! What the machine is — CPU, kernel, glibc, the commit, the rseq mode our
//! allocator picks here, and every allocator's version — printed at the top
//! of every report.

use std::path::Path;
use std::process::Command;

/// What the machine is, printed at the top of every report.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// CPUs online.
    pub cpus_online: usize,
    /// CPUs this process may run on.
    pub cpus_allowed: usize,
    /// Kernel name, release, machine.
    pub kernel: String,
    /// glibc version.
    pub glibc: String,
    /// Git commit of the workspace (and whether it is dirty).
    pub commit: String,
    /// When the run started (UTC).
    pub date: String,
    /// rseq mode and index our allocator picks here.
    pub rseq: String,
    /// (allocator name, version text) for every allocator whose version is known.
    pub versions: Vec<(String, String)>,
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
fn versions(glibc: &str, commit: &str, mimalloc_c: Option<&str>) -> Vec<(String, String)> {
    let mut v = vec![
        (
            "rseq".to_string(),
            format!("rseq-alloc {} at {commit}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "rseq-checked".to_string(),
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
            format!(
                "mimalloc crate {mi} (libmimalloc-sys {sys}, mimalloc {})",
                mimalloc_c.unwrap_or("?")
            ),
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
        // The C mimalloc inside the mimalloc crate, as it reports itself.
        let mimalloc_c = cmd_out(
            Command::new(exe)
                .args(["worker", "info"])
                .env(crate::dispatch::ENV, "mimalloc")
                .env_remove("LD_PRELOAD"),
        )
        .and_then(|s| {
            s.lines()
                .find_map(|l| kv(l, "mimalloc_version"))
                .map(String::from)
        });
        let versions = versions(&glibc, &commit, mimalloc_c.as_deref());
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

fn kv<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

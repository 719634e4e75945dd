//! The C surface as a C user meets it: `ffi/install.sh PREFIX` installs the
//! library with a versioned SONAME and its symlinks, the static library,
//! `rseq_malloc.h` and `rseq_malloc.pc`; a C program built with
//! `pkg-config --cflags --libs rseq_malloc` uses the extension API, the
//! `__libc_*` aliases, `cfree` and `malloc_info`. And the configuration a
//! C user sets: `stats=json` with `stats_file=PATH` (surviving a closed
//! stderr), `verbose=1`'s options line, `abort_conf=1`.

mod ffi_common;

use ffi_common::*;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Installs into a fresh prefix once per test binary.
fn prefix() -> &'static PathBuf {
    static PREFIX: OnceLock<PathBuf> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let b = built();
        let target = b
            .dir
            .parent()
            .expect("release dir has a parent")
            .to_path_buf();
        let prefix = scratch("install-prefix");
        let out = Command::new("sh")
            .arg(workspace_root().join("ffi/install.sh"))
            .arg(&prefix)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("run ffi/install.sh");
        assert!(
            out.status.success(),
            "ffi/install.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        prefix
    })
}

fn readelf_dynamic(path: &Path) -> String {
    require_tool("readelf", "binutils");
    let out = Command::new("readelf")
        .arg("-d")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn install_layout_and_soname() {
    let p = prefix();
    let lib = p.join("lib");
    for f in [
        "lib/librseq_malloc.so.0.1.0",
        "lib/librseq_malloc.a",
        "include/rseq_malloc.h",
        "lib/pkgconfig/rseq_malloc.pc",
    ] {
        assert!(p.join(f).is_file(), "{f} not installed");
    }
    assert_eq!(
        std::fs::read_link(lib.join("librseq_malloc.so.0")).unwrap(),
        Path::new("librseq_malloc.so.0.1.0")
    );
    assert_eq!(
        std::fs::read_link(lib.join("librseq_malloc.so")).unwrap(),
        Path::new("librseq_malloc.so.0")
    );
    let dynamic = readelf_dynamic(&lib.join("librseq_malloc.so.0.1.0"));
    assert!(
        dynamic.contains("Library soname: [librseq_malloc.so.0]"),
        "{dynamic}"
    );
    let pc = std::fs::read_to_string(p.join("lib/pkgconfig/rseq_malloc.pc")).unwrap();
    assert!(pc.starts_with(&format!("prefix={}\n", p.display())), "{pc}");
    assert!(pc.contains("\nVersion: 0.1.0\n"), "{pc}");
}

/// `pkg-config --cflags --libs rseq_malloc` against the installed prefix.
fn pkg_config(args: &[&str]) -> Vec<String> {
    require_tool("pkg-config", "pkg-config");
    let out = Command::new("pkg-config")
        .args(args)
        .arg("rseq_malloc")
        .env("PKG_CONFIG_PATH", prefix().join("lib/pkgconfig"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pkg-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn c_program_via_pkg_config() {
    let flags = pkg_config(&["--cflags", "--libs"]);
    let lib = prefix().join("lib");
    assert!(flags.contains(&format!("-I{}", prefix().join("include").display())));
    assert!(flags.contains(&format!("-L{}", lib.display())));
    assert!(flags.contains(&"-lrseq_malloc".to_string()));
    let dir = scratch("c-surface");
    let rpath = format!("-Wl,-rpath,{}", lib.display());
    let mut extra: Vec<&OsStr> = vec![OsStr::new("-fno-builtin")];
    extra.extend(flags.iter().map(OsStr::new));
    extra.push(OsStr::new(&rpath));
    let exe = compile_c_with(&dir, "extension_api", "extension_api", &extra);
    assert!(readelf_dynamic(&exe).contains("Shared library: [librseq_malloc.so.0]"));
    let mut cmd = Command::new(&exe);
    cmd.env_remove("LD_PRELOAD")
        .env_remove("RSEQ_MALLOC_CONF")
        .env_remove("GLIBC_TUNABLES");
    let r = run(&mut cmd, Duration::from_secs(60));
    r.assert_ok("extension_api");
    let lines: Vec<&str> = r.stdout.lines().collect();
    let expect_head = [
        "version=0.1.0",
        "mode=rseq-glibc",
        "options size=ok decay_ms=10000 stats_file=-",
        "null sizes=ok",
        "huge_delta=10485760 blocks_delta=2",
        "peak_mapped_ok=1",
        "<malloc version=\"1\">",
        "<heap nr=\"0\">",
        "<sizes>",
        "</sizes>",
    ];
    assert_eq!(
        &lines[..expect_head.len()],
        &expect_head[..],
        "{}",
        r.stdout
    );
    let xml_end = lines
        .iter()
        .position(|l| *l == "</malloc>")
        .expect("</malloc>");
    let xml = &lines[expect_head.len()..xml_end];
    // One <heap> (2 totals, 2 system, 2 aspace, </heap>), then the
    // process totals (fast, rest, mmap) and system / aspace again.
    assert_eq!(xml.len(), 14, "{xml:?}");
    assert!(
        xml.contains(&"<total type=\"mmap\" count=\"2\" size=\"10485760\"/>"),
        "{xml:?}"
    );
    for l in xml {
        assert!(
            l.starts_with("<total type=\"")
                || l.starts_with("<system type=\"")
                || l.starts_with("<aspace type=\"")
                || *l == "</heap>",
            "{l}"
        );
    }
    assert_eq!(
        &lines[xml_end + 1..],
        [
            "malloc_info(1)=-1 errno=EINVAL",
            "aliases=ok",
            "after trim cached=0 in_regions=0 regions_ok=1",
        ],
        "{}",
        r.stdout
    );
}

fn hello() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    compile_c_once(&EXE, "c-surface-hello", "hello_alloc", &[]).clone()
}

/// The program closes its stderr (as coreutils do before exiting); the
/// JSON report still reaches the file named at init.
#[test]
fn stats_json_to_file_survives_closed_stderr() {
    let dir = scratch("stats-file");
    let file = dir.join("stats.json");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("exec 2>&-; exec \"$0\"")
        .arg(hello())
        .env("LD_PRELOAD", &built().cdylib)
        .env(
            "RSEQ_MALLOC_CONF",
            format!("stats=json,stats_file={}", file.display()),
        )
        .env_remove("GLIBC_TUNABLES");
    let r = run(&mut cmd, Duration::from_secs(60));
    r.assert_ok("hello_alloc with stderr closed");
    assert_eq!(r.stdout, "hello ok\n");
    let text = std::fs::read_to_string(&file).expect("stats file written");
    // sh itself is preloaded too and may write its own line first: the
    // program's line is the last one.
    let line = text.lines().last().unwrap();
    assert!(
        line.starts_with("{\"rseq_malloc\":\"0.1.0\",\"mode\":\"rseq-glibc\",\"index\":"),
        "{text}"
    );
    require_tool("python3", "python3");
    let check = Command::new("python3")
        .arg("-c")
        .arg(
            "import json,sys\n\
             for l in open(sys.argv[1]):\n\
             \x20 d=json.loads(l)\n\
             \x20 assert d['allocated']<=d['active']<=d['mapped']<=d['resident'], d\n\
             \x20 assert len(d['cached_per_region'])==d['regions'], d\n\
             \x20 assert sum(d['cached_per_region'])==d['cached'], d\n\
             print('json ok')",
        )
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stdout),
        "json ok\n",
        "{}\n{text}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn verbose_prints_every_option() {
    let mut cmd = Command::new(hello());
    cmd.env("LD_PRELOAD", &built().cdylib)
        .env(
            "RSEQ_MALLOC_CONF",
            "verbose=on,decay_ms=-1,thp=never,background=false,index=cpu",
        )
        .env_remove("GLIBC_TUNABLES");
    let r = run(&mut cmd, Duration::from_secs(60));
    r.assert_ok("hello_alloc verbose");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "rseq-malloc: mode=rseq-glibc index=cpu cpus={}",
                init_lines(&r.stderr)[0].cpus
            )
            .as_str(),
            "rseq-malloc: options rseq=auto index=cpu verbose=1 stats=0 stats_file=- \
             decay_ms=-1 background=0 thp=never abort_conf=0",
        ],
        "{}",
        r.stderr
    );
}

#[test]
fn abort_conf_turns_a_bad_option_into_an_abort() {
    let mut cmd = Command::new(hello());
    cmd.env("LD_PRELOAD", &built().cdylib)
        .env("RSEQ_MALLOC_CONF", "index=gpu,abort_conf=1")
        .env_remove("GLIBC_TUNABLES");
    let r = run(&mut cmd, Duration::from_secs(60));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(r.status.signal(), Some(libc::SIGABRT), "{}", r.describe());
    assert_eq!(
        r.stderr,
        "rseq-malloc: RSEQ_MALLOC_CONF: bad value 'index=gpu' ignored; valid: auto, cpu, cid\n\
         rseq-malloc: RSEQ_MALLOC_CONF: abort_conf=1: aborting on the error above\n"
    );
    assert_eq!(r.stdout, "");
    // Without abort_conf the same error is a warning.
    let mut cmd = Command::new(hello());
    cmd.env("LD_PRELOAD", &built().cdylib)
        .env("RSEQ_MALLOC_CONF", "index=gpu")
        .env_remove("GLIBC_TUNABLES");
    let r = run(&mut cmd, Duration::from_secs(60));
    r.assert_ok("hello_alloc index=gpu");
    assert_eq!(r.stdout, "hello ok\n");
}

//! The fast-path golden test: instruction, branch, load and store counts of
//! the small-size fast paths, counted from `objdump -d`, against the
//! committed table `ffi/tests/golden/fastpath.txt`.
//!
//! Measured: `malloc` and `free` of `librseq_malloc.so` (release build, as
//! shipped), and `RseqAlloc::alloc` / `dealloc` and `RseqAllocChecked`'s
//! `dealloc` inlined into a user's crate built with cargo's default
//! release profile (no LTO): a crate generated
//! at test time that depends on `rseq-alloc` by path. A path is the
//! shortest way, in instructions, from the function's entry to a `ret`,
//! taking either way of each conditional branch and following direct
//! jumps inside the function (see `path_of`): the hit, since every miss
//! leaves by a tail call and never returns there. The test fails when any
//! count grows, when a function gets a stack frame (`push`/`sub %rsp`), or
//! when a RIP-relative load (a GOT entry) appears on the path.
//!
//! To change the table on purpose (a cheaper path, or a cost you decided
//! to pay), run `RSEQ_GOLDEN_UPDATE=1 cargo test --release -p
//! rseq-malloc --test golden_fastpath` and commit the new table with
//! the reason in the message.

mod ffi_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct Counts {
    instructions: u32,
    branches: u32,
    loads: u32,
    stores: u32,
}

/// One instruction of the path, for the failure message.
struct Path_ {
    counts: Counts,
    text: String,
    got: Vec<String>,
    frame: Vec<String>,
}

fn golden_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/fastpath.txt")
}

/// Splits AT&T operands at top-level commas.
fn operands(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for ch in s.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

fn is_mem(op: &str) -> bool {
    op.contains('(') || op.starts_with("%fs:") || op.starts_with("%gs:")
}

/// One instruction of a function: its address, mnemonic and operands.
struct Insn {
    at: u64,
    mn: String,
    rest: String,
}

impl Insn {
    /// `ret` (any operand-size suffix).
    fn is_ret(&self) -> bool {
        self.mn.starts_with("ret")
    }

    /// An unconditional jump (`jmp`, or `jmpq` from older binutils).
    fn is_jmp(&self) -> bool {
        self.mn.starts_with("jmp")
    }

    /// The instruction as written, for the failure message.
    fn text(&self) -> String {
        format!("{} {}", self.mn, self.rest)
    }

    /// The target of a direct jump (`jmp`/`jcc`) to an address inside
    /// function `sym` ("18444 <free+0x44>"); None for anything else (an
    /// indirect jump, a tail call to another symbol).
    fn target_inside(&self, sym: &str) -> Option<u64> {
        if !self.mn.starts_with('j') {
            return None;
        }
        let mut parts = self.rest.split_whitespace();
        let target = parts.next()?;
        let inside = parts
            .next()
            .is_some_and(|s| s.starts_with(&format!("<{sym}+")));
        if !inside {
            return None;
        }
        u64::from_str_radix(target, 16).ok()
    }
}

/// The instructions of `sym` in `objdump` output, in address order.
fn function_of(disasm: &str, sym: &str) -> Vec<Insn> {
    // The function may carry an alias's name in the disassembly (malloc and
    // __libc_malloc share an address): find it by the exact name, or by the
    // address `nm` gives for it (passed as `sym@addr`).
    let (sym, addr) = sym.split_once('@').unwrap_or((sym, ""));
    let header = format!("<{sym}>:");
    let by_addr = format!("{addr:0>16} <");
    let start = |l: &&str| {
        l.ends_with(&header) || (!addr.is_empty() && l.starts_with(&by_addr) && l.ends_with(">:"))
    };
    let mut lines = disasm.lines().skip_while(|l| !start(l));
    assert!(
        lines.next().is_some(),
        "symbol {sym} not found in the disassembly"
    );
    let mut out = Vec::new();
    // "   16980:\tcmp    $0x1001,%rdi"; the function ends at the blank
    // line before the next symbol.
    for line in lines {
        let Some((at, insn)) = line.split_once(":\t") else {
            break;
        };
        let insn = insn.split('#').next().unwrap().trim();
        let (mn, rest) = insn.split_once(char::is_whitespace).unwrap_or((insn, ""));
        out.push(Insn {
            at: u64::from_str_radix(at.trim(), 16).expect("objdump address"),
            mn: mn.to_string(),
            rest: rest.trim().to_string(),
        });
    }
    out
}

/// Counts the fast path of `sym` in `objdump` output: the shortest path,
/// in instructions, from the entry to a `ret`, taking either way of each
/// conditional branch and following direct jumps inside the function.
/// That path is the hit: every miss leaves by a tail call (a jump to
/// another function), which never comes back to a `ret` here, and the
/// other ways to a `ret` (the page map's root path, say) are longer. The
/// compiler's block layout does not change the count: a hit path that
/// takes a conditional branch is counted as it runs.
fn path_of(disasm: &str, sym: &str) -> Path_ {
    let name = sym.split_once('@').map_or(sym, |(s, _)| s);
    let insns = function_of(disasm, sym);
    let index: BTreeMap<u64, usize> = insns.iter().enumerate().map(|(i, x)| (x.at, i)).collect();
    // The successors of instruction `i` inside the function.
    let next = |i: usize| -> Vec<usize> {
        let x = &insns[i];
        let target = x.target_inside(name).and_then(|t| index.get(&t).copied());
        let fall = (i + 1 < insns.len()).then_some(i + 1);
        if x.is_ret() {
            vec![]
        } else if x.is_jmp() {
            target.into_iter().collect()
        } else if x.mn.starts_with('j') {
            fall.into_iter().chain(target).collect()
        } else {
            fall.into_iter().collect()
        }
    };
    // Shortest distance (instructions, the ret included) from each
    // instruction to a ret, by relaxation until nothing changes (the
    // function is small; a loop only ever lengthens a path).
    let mut dist = vec![u32::MAX; insns.len()];
    loop {
        let mut changed = false;
        for i in (0..insns.len()).rev() {
            let d = if insns[i].is_ret() {
                1
            } else {
                next(i)
                    .into_iter()
                    .map(|j| dist[j].saturating_add(1))
                    .min()
                    .unwrap_or(u32::MAX)
            };
            if d < dist[i] {
                dist[i] = d;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    assert!(
        !insns.is_empty() && dist[0] != u32::MAX,
        "{name}: no path from the entry to a ret"
    );
    let mut c = Counts::default();
    let mut text = String::new();
    let mut got = Vec::new();
    let mut frame = Vec::new();
    let mut i = 0;
    loop {
        let x = &insns[i];
        text.push_str(&x.text());
        text.push('\n');
        count(x, &mut c, &mut got, &mut frame);
        if x.is_ret() {
            return Path_ {
                counts: c,
                text,
                got,
                frame,
            };
        }
        i = next(i)
            .into_iter()
            .min_by_key(|&j| dist[j])
            .expect("a successor on the path to the ret");
    }
}

/// Adds one instruction to the counts.
fn count(x: &Insn, c: &mut Counts, got: &mut Vec<String>, frame: &mut Vec<String>) {
    let (mn, rest) = (x.mn.as_str(), x.rest.as_str());
    let insn = x.text();
    let ops = operands(rest);
    c.instructions += 1;
    if mn.starts_with('j') || mn.starts_with("call") {
        c.branches += 1;
    }
    if mn.starts_with("push") || (mn.starts_with("sub") && rest.contains("%rsp")) {
        frame.push(insn.clone());
    }
    let mem: Vec<usize> = (0..ops.len()).filter(|&i| is_mem(&ops[i])).collect();
    if mn.starts_with("lea") || mn.starts_with("nop") {
        // address arithmetic only
    } else if mn.starts_with("push") || mn.starts_with("call") {
        c.stores += 1;
    } else if mn.starts_with("pop") || x.is_ret() {
        c.loads += 1;
    } else if !mem.is_empty() {
        let dest_is_mem = mem.contains(&(ops.len() - 1));
        let pure_store = mn.starts_with("mov") && dest_is_mem;
        let reads = !pure_store;
        let writes = dest_is_mem && !mn.starts_with("cmp") && !mn.starts_with("test");
        if reads {
            c.loads += 1;
        }
        if writes {
            c.stores += 1;
        }
    }
    if !mn.starts_with("lea") && ops.iter().any(|o| o.contains("(%rip)")) {
        got.push(insn);
    }
}

/// `sym@addr` with the symbol's address from `nm` (hex, no prefix).
fn with_addr(file: &Path, sym: &str) -> String {
    let out = Command::new("nm")
        .arg(file)
        .output()
        .expect("nm (binutils) must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let addr = text
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            let (a, _, name) = (w.next()?, w.next()?, w.next()?);
            (name == sym).then(|| a.to_string())
        })
        .unwrap_or_else(|| panic!("{sym} not in the symbol table of {}", file.display()));
    format!("{sym}@{addr}")
}

fn objdump(file: &Path) -> String {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(file)
        .output()
        .expect("objdump (binutils) must be installed");
    assert!(out.status.success(), "objdump {} failed", file.display());
    String::from_utf8(out.stdout).unwrap()
}

/// Builds a user crate with the default release profile whose functions
/// are `RseqAlloc::alloc` / `dealloc` and `RseqAllocChecked::dealloc`, with
/// run-time and with constant sizes.
fn user_binary() -> PathBuf {
    let root = ffi_common::workspace_root();
    let dir = ffi_common::scratch_path("golden-user");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"golden-user\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             publish = false\n\n[dependencies]\nrseq-alloc = {{ path = {:?} }}\n\n[workspace]\n",
            root.join("allocator")
        ),
    )
    .unwrap();
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::write(
        dir.join("src/main.rs"),
        r#"use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;

#[no_mangle]
#[inline(never)]
pub unsafe fn golden_alloc(size: usize) -> *mut u8 {
    rseq_alloc::RseqAlloc.alloc(Layout::from_size_align_unchecked(size, 8))
}

#[no_mangle]
#[inline(never)]
pub unsafe fn golden_dealloc(p: *mut u8, size: usize) {
    rseq_alloc::RseqAlloc.dealloc(p, Layout::from_size_align_unchecked(size, 8))
}

#[no_mangle]
#[inline(never)]
pub unsafe fn golden_dealloc_checked(p: *mut u8, size: usize) {
    rseq_alloc::RseqAllocChecked.dealloc(p, Layout::from_size_align_unchecked(size, 8))
}

#[no_mangle]
#[inline(never)]
pub unsafe fn golden_dealloc_checked_const(p: *mut u8) {
    rseq_alloc::RseqAllocChecked.dealloc(p, Layout::new::<[u64; 3]>())
}

#[no_mangle]
#[inline(never)]
pub unsafe fn golden_alloc_const() -> *mut u8 {
    rseq_alloc::RseqAlloc.alloc(Layout::new::<[u64; 3]>())
}

#[no_mangle]
#[inline(never)]
pub unsafe fn golden_dealloc_const(p: *mut u8) {
    rseq_alloc::RseqAlloc.dealloc(p, Layout::new::<[u64; 3]>())
}

fn main() {
    let n = black_box(48usize);
    unsafe {
        let p = golden_alloc(n);
        assert!(!p.is_null());
        p.write_bytes(7, n);
        golden_dealloc(p, n);
        let q = golden_alloc_const();
        assert!(!q.is_null());
        q.write_bytes(7, 24);
        golden_dealloc_const(q);
        let p = golden_alloc(n);
        golden_dealloc_checked(p, n);
        let q = golden_alloc_const();
        golden_dealloc_checked_const(q);
    }
    println!("golden-user ok");
}
"#,
    )
    .unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&dir)
        .args(["build", "--release", "--offline", "--quiet"])
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    ffi_common::assert_exit_ok(&out, "building the user crate");
    let exe = dir.join("target/release/golden-user");
    let run = Command::new(&exe).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "golden-user ok",
        "the user binary must run"
    );
    exe
}

fn read_table() -> BTreeMap<String, Counts> {
    let text = std::fs::read_to_string(golden_file()).unwrap_or_default();
    let mut t = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let name = words.next().unwrap().to_string();
        let mut c = Counts::default();
        for w in words {
            let (k, v) = w.split_once('=').expect("key=value");
            let v: u32 = v.parse().unwrap();
            match k {
                "instructions" => c.instructions = v,
                "branches" => c.branches = v,
                "loads" => c.loads = v,
                "stores" => c.stores = v,
                _ => panic!("unknown key {k} in {}", golden_file().display()),
            }
        }
        t.insert(name, c);
    }
    t
}

fn write_table(t: &BTreeMap<String, Counts>) {
    let mut s = String::from(
        "# Fast-path golden table: straight-line cost of the small-size hit,\n\
         # counted from objdump by ffi/tests/golden_fastpath.rs. A count may\n\
         # only grow on purpose: RSEQ_GOLDEN_UPDATE=1 cargo test --release -p\n\
         # rseq-malloc --test golden_fastpath, then commit with the reason.\n",
    );
    for (k, c) in t {
        s.push_str(&format!(
            "{k} instructions={} branches={} loads={} stores={}\n",
            c.instructions, c.branches, c.loads, c.stores
        ));
    }
    std::fs::create_dir_all(golden_file().parent().unwrap()).unwrap();
    std::fs::write(golden_file(), s).unwrap();
}

#[test]
fn fast_paths_match_the_golden_table() {
    let so = &ffi_common::built().cdylib;
    let so_dis = objdump(so);
    let user = user_binary();
    let user_dis = objdump(&user);
    let mut measured: Vec<(String, Path_)> = vec![
        (
            "librseq_malloc.so:malloc".into(),
            path_of(&so_dis, &with_addr(so, "malloc")),
        ),
        (
            "librseq_malloc.so:free".into(),
            path_of(&so_dis, &with_addr(so, "free")),
        ),
    ];
    // The user crate's functions, by row name. A size known at compile
    // time (a `Box<T>`, `[24B-const]`): the class folds to a constant, so
    // these have no size-class table load. RseqAllocChecked: the layout's
    // class checked against the page map's (a shift, an `and` with the
    // mask, the leaf, the class byte: three more loads, one more branch).
    measured.extend(
        [
            ("RseqAlloc::alloc", "golden_alloc"),
            ("RseqAlloc::dealloc", "golden_dealloc"),
            ("RseqAlloc::alloc[24B-const]", "golden_alloc_const"),
            ("RseqAlloc::dealloc[24B-const]", "golden_dealloc_const"),
            ("RseqAllocChecked::dealloc", "golden_dealloc_checked"),
            (
                "RseqAllocChecked::dealloc[24B-const]",
                "golden_dealloc_checked_const",
            ),
        ]
        .map(|(row, f)| (format!("user-default-release:{row}"), path_of(&user_dis, f))),
    );
    let update = std::env::var_os("RSEQ_GOLDEN_UPDATE").is_some();
    let mut table = read_table();
    let mut failures = Vec::new();
    for (name, p) in &measured {
        if !p.got.is_empty() {
            failures.push(format!(
                "{name}: RIP-relative (GOT) load on the fast path: {:?}\n{}",
                p.got, p.text
            ));
        }
        if !p.frame.is_empty() {
            failures.push(format!(
                "{name}: stack frame on the fast path: {:?}\n{}",
                p.frame, p.text
            ));
        }
        match table.get(name) {
            _ if update => {}
            None => failures.push(format!(
                "{name}: not in the golden table (measured {:?})",
                p.counts
            )),
            Some(want) => {
                let c = p.counts;
                if c.instructions > want.instructions
                    || c.branches > want.branches
                    || c.loads > want.loads
                    || c.stores > want.stores
                {
                    failures.push(format!(
                        "{name}: the fast path grew: measured {c:?}, table {want:?}\n{}",
                        p.text
                    ));
                } else if c != *want {
                    eprintln!("{name}: cheaper than the table ({c:?} < {want:?}): update it");
                }
            }
        }
    }
    if update {
        for (name, p) in &measured {
            table.insert(name.clone(), p.counts);
        }
        write_table(&table);
    }
    assert!(
        failures.is_empty(),
        "{}\n\nIf this change is meant, update the table: RSEQ_GOLDEN_UPDATE=1 cargo test \
         --release -p rseq-malloc --test golden_fastpath (and commit ffi/tests/golden/fastpath.txt \
         with the reason)",
        failures.join("\n\n")
    );
}

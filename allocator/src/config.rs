//! `RSEQ_MALLOC_CONF`: comma-separated `key=value` pairs, read once at init
//! without allocating (a scan of libc's `environ`, not `std::env` nor
//! `getenv`).
//!
//! Keys: `rseq=auto|off`, `index=auto|cpu|cid`, `verbose=<bool>`,
//! `stats=<bool>|json`, `stats_file=PATH`, `decay_ms=N` (-1 = never),
//! `background=<bool>`, `thp=auto|never`, `abort_conf=<bool>`; a boolean
//! is `1|0|on|off|true|false|yes|no`. An unknown key or a bad value prints
//! one warning line on stderr naming the valid values and is ignored;
//! parsing goes on with the next pair. With `abort_conf=1` such an error
//! aborts the process once the whole variable has been read.

use crate::util::MsgBuf;

/// Which per-CPU cache index to use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IndexChoice {
    /// `mm_cid` when the kernel provides it, else the CPU id.
    Auto,
    /// The CPU id (`index=cpu`).
    Cpu,
    /// The concurrency id (`index=cid`), if the kernel provides it.
    Cid,
}

/// Transparent hugepage policy for the heap.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ThpChoice {
    /// `MADV_HUGEPAGE` on heap chunks when the system allows it.
    Auto,
    /// Never ask for hugepages.
    Never,
}

/// The parsed configuration.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Config {
    /// `rseq=off`: force the CAS fallback.
    pub rseq_off: bool,
    /// `index=`.
    pub index: IndexChoice,
    /// `verbose=1`: one line at init.
    pub verbose: bool,
    /// `stats=1`: statistics at exit (and fast-path hit counting).
    pub stats: bool,
    /// `decay_ms=N`: dirty free pages go back to the OS after this many
    /// milliseconds unused; 0 = at once, -1 = never.
    pub decay_ms: i64,
    /// `background=1`: a background thread returns memory of idle processes.
    pub background: bool,
    /// `thp=auto|never`.
    pub thp: ThpChoice,
    /// `stats=json`: the exit report (and `malloc_stats()`) as one JSON
    /// object on one line instead of text.
    pub stats_json: bool,
    /// `stats_file=PATH`: the statistics report goes to this file (opened
    /// at initialisation with `O_APPEND`, so it survives a closed stderr)
    /// instead of stderr. The path is a slice of the environment.
    pub stats_file: Option<&'static [u8]>,
    /// `abort_conf=1`: a bad key or value aborts instead of being ignored.
    pub abort_conf: bool,
}

impl Config {
    /// The defaults (no variable set).
    pub const DEFAULT: Config = Config {
        rseq_off: false,
        index: IndexChoice::Auto,
        verbose: false,
        stats: false,
        decay_ms: 10_000,
        background: false,
        thp: ThpChoice::Auto,
        stats_json: false,
        stats_file: None,
        abort_conf: false,
    };
}

impl Default for Config {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Where warnings go: stderr in production (counted, for `abort_conf`), a
/// callback in tests.
pub trait WarnSink {
    /// Receives one complete warning line (with the trailing newline).
    fn warn(&mut self, line: &[u8]);
}

/// Every key, as the unknown-key warning lists them.
pub const KEYS: &str =
    "rseq, index, verbose, stats, stats_file, decay_ms, background, thp, abort_conf";

/// The valid values of `key`, as the bad-value warning lists them.
fn valid_values(key: &[u8]) -> &'static str {
    match key {
        b"rseq" => "auto, on, off",
        b"index" => "auto, cpu, cid",
        b"stats" => "1, 0, on, off, true, false, yes, no, json",
        b"stats_file" => "a non-empty path",
        b"decay_ms" => "-1 (never) or 0..=2147483647 milliseconds",
        b"thp" => "auto, never",
        _ => "1, 0, on, off, true, false, yes, no",
    }
}

fn warn(sink: &mut dyn WarnSink, what: &str, pair: &[u8], valid: &str) {
    let mut m = MsgBuf::new();
    m.str("rseq-malloc: RSEQ_MALLOC_CONF: ")
        .str(what)
        .str(" '")
        .bytes(pair)
        .str("' ignored; valid: ")
        .str(valid)
        .str("\n");
    sink.warn(m.as_bytes());
}

/// Parses the value of `RSEQ_MALLOC_CONF` (`'static`: the environment
/// lives as long as the process, and `stats_file` keeps a slice of it).
pub fn parse(text: &'static [u8], sink: &mut dyn WarnSink) -> Config {
    let mut cfg = Config::DEFAULT;
    for pair in text.split(|&b| b == b',') {
        let pair = trim(pair);
        if pair.is_empty() {
            continue;
        }
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (trim(&pair[..i]), trim(&pair[i + 1..])),
            None => (pair, &b""[..]),
        };
        let ok = match key {
            b"rseq" => choice(value, &[(b"auto", false), (b"on", false), (b"off", true)])
                .map(|v| cfg.rseq_off = v)
                .is_some(),
            b"index" => choice(
                value,
                &[
                    (b"cpu", IndexChoice::Cpu),
                    (b"cid", IndexChoice::Cid),
                    (b"auto", IndexChoice::Auto),
                ],
            )
            .map(|v| cfg.index = v)
            .is_some(),
            b"verbose" => parse_bool(value).map(|v| cfg.verbose = v).is_some(),
            b"stats" => match value {
                b"json" => {
                    cfg.stats = true;
                    cfg.stats_json = true;
                    true
                }
                _ => parse_bool(value)
                    .map(|v| {
                        cfg.stats = v;
                        cfg.stats_json = false;
                    })
                    .is_some(),
            },
            b"stats_file" => {
                if value.is_empty() {
                    false
                } else {
                    cfg.stats_file = Some(value);
                    true
                }
            }
            b"abort_conf" => parse_bool(value).map(|v| cfg.abort_conf = v).is_some(),
            b"decay_ms" => parse_decay(value).map(|v| cfg.decay_ms = v).is_some(),
            b"background" => parse_bool(value).map(|v| cfg.background = v).is_some(),
            b"thp" => choice(
                value,
                &[(b"auto", ThpChoice::Auto), (b"never", ThpChoice::Never)],
            )
            .map(|v| cfg.thp = v)
            .is_some(),
            _ => {
                warn(sink, "unknown key", pair, KEYS);
                continue;
            }
        };
        if !ok {
            warn(sink, "bad value", pair, valid_values(key));
        }
    }
    cfg
}

/// The value `v` names in `table` (exact match), if any.
fn choice<T: Copy>(v: &[u8], table: &[(&[u8], T)]) -> Option<T> {
    table.iter().find(|(name, _)| *name == v).map(|&(_, t)| t)
}

fn parse_bool(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"true" | b"yes" | b"on" => Some(true),
        b"0" | b"false" | b"no" | b"off" => Some(false),
        _ => None,
    }
}

/// `-1` or a decimal number of milliseconds (at most about 24 days).
fn parse_decay(v: &[u8]) -> Option<i64> {
    if v == b"-1" {
        return Some(-1);
    }
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = v.iter().fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
    (n <= i64::from(i32::MAX)).then_some(n)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

extern "C" {
    static environ: *const *const libc::c_char;
}

/// The value of `RSEQ_MALLOC_CONF` from the process environment, if set.
///
/// Scans `environ` directly: no allocation, no lock. Before libc has set up
/// `environ` (very early loader mallocs) it is null and this returns `None`.
pub fn env_value() -> Option<&'static [u8]> {
    const NAME: &[u8] = b"RSEQ_MALLOC_CONF=";
    // SAFETY: `environ` is libc's global environment pointer; reading it is
    // a plain load of a pointer-sized static.
    let mut p = unsafe { environ };
    if p.is_null() {
        return None;
    }
    loop {
        // SAFETY: `environ` is a null-terminated array of pointers to
        // NUL-terminated strings; `p` walks it and stops at the null entry.
        let s = unsafe { *p };
        if s.is_null() {
            return None;
        }
        // SAFETY: `s` is a NUL-terminated C string owned by the environment,
        // which we assume nobody mutates during init (as getenv does).
        let bytes = unsafe { core::ffi::CStr::from_ptr(s) }.to_bytes();
        if let Some(v) = bytes.strip_prefix(NAME) {
            return Some(v);
        }
        // SAFETY: not yet at the terminating null entry, so the next element
        // exists.
        p = unsafe { p.add(1) };
    }
}

/// Counts the warnings it passes on to stderr.
struct CountingStderr(u32);

impl WarnSink for CountingStderr {
    fn warn(&mut self, line: &[u8]) {
        self.0 += 1;
        crate::util::write_stderr(line);
    }
}

/// Reads and parses the environment (warnings on stderr), aborts if
/// `abort_conf=1` and something was wrong, records the result as the
/// options in effect ([`in_effect`]) and opens `stats_file`.
pub fn from_env() -> Config {
    let mut sink = CountingStderr(0);
    let cfg = match env_value() {
        Some(v) => parse(v, &mut sink),
        None => Config::DEFAULT,
    };
    if cfg.abort_conf && sink.0 > 0 {
        crate::util::write_stderr(
            b"rseq-malloc: RSEQ_MALLOC_CONF: abort_conf=1: aborting on the error above\n",
        );
        // SAFETY: abort(3) has no preconditions; it does not return.
        unsafe { libc::abort() };
    }
    IN_EFFECT.set(cfg);
    crate::stats::configure_output(&cfg);
    cfg
}

/// Writes the second `verbose=1` line: every option in effect, as
/// `rseq-malloc: options rseq=auto index=auto ...`.
pub fn print_options(cfg: &Config) {
    let b = |v: bool| if v { "1" } else { "0" };
    let mut m = MsgBuf::new();
    m.str("rseq-malloc: options rseq=")
        .str(if cfg.rseq_off { "off" } else { "auto" })
        .str(" index=")
        .str(match cfg.index {
            IndexChoice::Auto => "auto",
            IndexChoice::Cpu => "cpu",
            IndexChoice::Cid => "cid",
        })
        .str(" verbose=")
        .str(b(cfg.verbose))
        .str(" stats=")
        .str(if cfg.stats_json { "json" } else { b(cfg.stats) })
        .str(" stats_file=")
        .bytes(cfg.stats_file.unwrap_or(b"-"))
        .str(" decay_ms=");
    if cfg.decay_ms < 0 {
        m.str("-1");
    } else {
        m.dec(cfg.decay_ms as u64);
    }
    m.str(" background=")
        .str(b(cfg.background))
        .str(" thp=")
        .str(match cfg.thp {
            ThpChoice::Auto => "auto",
            ThpChoice::Never => "never",
        })
        .str(" abort_conf=")
        .str(b(cfg.abort_conf))
        .str("\n");
    m.flush_stderr();
}

/// The configuration recorded by the last [`from_env`], published with a
/// sequence flag (written once at init, read any time).
struct InEffect {
    ready: core::sync::atomic::AtomicBool,
    cfg: core::cell::UnsafeCell<Config>,
}

// SAFETY: `cfg` is written only by `set`, once, by the initialising thread,
// before `ready` is released; readers look at it only after acquiring
// `ready`.
unsafe impl Sync for InEffect {}

impl InEffect {
    fn set(&self, cfg: Config) {
        use core::sync::atomic::Ordering;
        if self.ready.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: not yet published; only the initialising thread gets here
        // (init runs once; a second call returned above).
        unsafe { *self.cfg.get() = cfg };
        self.ready.store(true, Ordering::Release);
    }
}

static IN_EFFECT: InEffect = InEffect {
    ready: core::sync::atomic::AtomicBool::new(false),
    cfg: core::cell::UnsafeCell::new(Config::DEFAULT),
};

/// The options in effect: what [`from_env`] parsed, or the defaults before.
pub fn in_effect() -> Config {
    use core::sync::atomic::Ordering;
    if IN_EFFECT.ready.load(Ordering::Acquire) {
        // SAFETY: published (see `InEffect`), never written again.
        unsafe { *IN_EFFECT.cfg.get() }
    } else {
        Config::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(std::vec::Vec<std::string::String>);
    impl WarnSink for Collect {
        fn warn(&mut self, line: &[u8]) {
            self.0
                .push(std::string::String::from_utf8_lossy(line).into_owned());
        }
    }

    fn p(s: &'static str) -> (Config, std::vec::Vec<std::string::String>) {
        let mut c = Collect(std::vec::Vec::new());
        let cfg = parse(s.as_bytes(), &mut c);
        (cfg, c.0)
    }

    #[test]
    fn empty_is_default() {
        assert_eq!(p(""), (Config::DEFAULT, vec![]));
        assert_eq!(p(",,"), (Config::DEFAULT, vec![]));
    }

    #[test]
    fn all_keys() {
        let (c, w) = p("rseq=off,index=cpu,verbose=1,stats=1");
        assert!(w.is_empty());
        assert_eq!(
            c,
            Config {
                rseq_off: true,
                index: IndexChoice::Cpu,
                verbose: true,
                stats: true,
                ..Config::DEFAULT
            }
        );
        let (c, w) = p(" rseq = auto , index=cid ");
        assert!(w.is_empty());
        assert_eq!(c.index, IndexChoice::Cid);
        assert!(!c.rseq_off);
    }

    #[test]
    fn unknown_key_warns_and_is_ignored() {
        let (c, w) = p("bogus=3,stats=1,verbose");
        assert!(c.stats);
        assert!(!c.verbose);
        assert_eq!(w.len(), 2);
        assert_eq!(
            w[0],
            "rseq-malloc: RSEQ_MALLOC_CONF: unknown key 'bogus=3' ignored; valid: rseq, \
             index, verbose, stats, stats_file, decay_ms, background, thp, abort_conf\n"
        );
        assert_eq!(
            w[1],
            "rseq-malloc: RSEQ_MALLOC_CONF: bad value 'verbose' ignored; valid: 1, 0, on, \
             off, true, false, yes, no\n"
        );
    }

    #[test]
    fn decay_background_thp() {
        let (c, w) = p("decay_ms=0,background=on,thp=never");
        assert!(w.is_empty());
        assert_eq!(
            (c.decay_ms, c.background, c.thp),
            (0, true, ThpChoice::Never)
        );
        let (c, w) = p("decay_ms=-1");
        assert!(w.is_empty());
        assert_eq!(c.decay_ms, -1);
        let (c, w) = p("decay_ms=-5,decay_ms=abc,thp=always");
        assert_eq!(w.len(), 3);
        assert_eq!(c, Config::DEFAULT);
    }

    #[test]
    fn booleans_everywhere() {
        for key in ["verbose", "stats", "background", "abort_conf"] {
            for (text, want) in [
                ("1", true),
                ("on", true),
                ("true", true),
                ("yes", true),
                ("0", false),
                ("off", false),
                ("false", false),
                ("no", false),
            ] {
                let pair: &'static str =
                    std::boxed::Box::leak(format!("{key}={text}").into_boxed_str());
                let (c, w) = p(pair);
                assert!(w.is_empty(), "{pair}: {w:?}");
                let got = match key {
                    "verbose" => c.verbose,
                    "stats" => c.stats,
                    "background" => c.background,
                    _ => c.abort_conf,
                };
                assert_eq!(got, want, "{pair}");
            }
        }
    }

    #[test]
    fn stats_json_file_abort_conf() {
        let (c, w) = p("stats=json,stats_file=/tmp/x y,abort_conf=on");
        assert!(w.is_empty(), "{w:?}");
        assert!(c.stats && c.stats_json && c.abort_conf);
        assert_eq!(c.stats_file, Some(&b"/tmp/x y"[..]));
        let (c, w) = p("stats=json,stats=1,stats_file=");
        assert!(c.stats && !c.stats_json && c.stats_file.is_none());
        assert_eq!(
            w,
            [
                "rseq-malloc: RSEQ_MALLOC_CONF: bad value 'stats_file=' ignored; valid: a \
              non-empty path\n"
            ]
        );
        let (_, w) = p("stats=2,rseq=maybe,index=gpu,thp=always,decay_ms=x");
        assert_eq!(
            w,
            [
                "rseq-malloc: RSEQ_MALLOC_CONF: bad value 'stats=2' ignored; valid: 1, 0, on, \
                 off, true, false, yes, no, json\n",
                "rseq-malloc: RSEQ_MALLOC_CONF: bad value 'rseq=maybe' ignored; valid: auto, \
                 on, off\n",
                "rseq-malloc: RSEQ_MALLOC_CONF: bad value 'index=gpu' ignored; valid: auto, \
                 cpu, cid\n",
                "rseq-malloc: RSEQ_MALLOC_CONF: bad value 'thp=always' ignored; valid: auto, \
                 never\n",
                "rseq-malloc: RSEQ_MALLOC_CONF: bad value 'decay_ms=x' ignored; valid: -1 \
                 (never) or 0..=2147483647 milliseconds\n",
            ]
        );
    }

    #[test]
    fn bad_value_keeps_default() {
        let (c, w) = p("rseq=maybe,index=gpu");
        assert_eq!(c, Config::DEFAULT);
        assert_eq!(w.len(), 2);
    }
}

//! `RSEQ_MALLOC_CONF`: comma-separated `key=value` pairs, read once at init
//! without allocating (a scan of libc's `environ`, not `std::env` nor
//! `getenv`).
//!
//! Keys: `rseq=auto|off`, `index=cpu|cid`, `verbose=0|1`, `stats=0|1`,
//! `decay_ms=N` (-1 = never), `background=0|1`, `thp=auto|never`.
//! An unknown key or a bad value prints one warning line on stderr and is
//! ignored; parsing goes on with the next pair.

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
    };
}

impl Default for Config {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Where warnings go: stderr in production, a callback in tests.
pub trait WarnSink {
    /// Receives one complete warning line (with the trailing newline).
    fn warn(&mut self, line: &[u8]);
}

/// Writes warnings to stderr with write(2).
pub struct Stderr;

impl WarnSink for Stderr {
    fn warn(&mut self, line: &[u8]) {
        crate::util::write_stderr(line);
    }
}

fn warn(sink: &mut dyn WarnSink, what: &str, pair: &[u8]) {
    let mut m = MsgBuf::new();
    m.str("rseq-malloc: RSEQ_MALLOC_CONF: ")
        .str(what)
        .str(" '")
        .bytes(pair)
        .str("' ignored\n");
    sink.warn(m.as_bytes());
}

/// Parses the value of `RSEQ_MALLOC_CONF`.
pub fn parse(text: &[u8], sink: &mut dyn WarnSink) -> Config {
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
            b"rseq" => match value {
                b"auto" | b"on" => {
                    cfg.rseq_off = false;
                    true
                }
                b"off" => {
                    cfg.rseq_off = true;
                    true
                }
                _ => false,
            },
            b"index" => match value {
                b"cpu" => {
                    cfg.index = IndexChoice::Cpu;
                    true
                }
                b"cid" => {
                    cfg.index = IndexChoice::Cid;
                    true
                }
                b"auto" => {
                    cfg.index = IndexChoice::Auto;
                    true
                }
                _ => false,
            },
            b"verbose" => parse_bool(value).map(|v| cfg.verbose = v).is_some(),
            b"stats" => parse_bool(value).map(|v| cfg.stats = v).is_some(),
            b"decay_ms" => parse_decay(value).map(|v| cfg.decay_ms = v).is_some(),
            b"background" => parse_bool(value).map(|v| cfg.background = v).is_some(),
            b"thp" => match value {
                b"auto" => {
                    cfg.thp = ThpChoice::Auto;
                    true
                }
                b"never" => {
                    cfg.thp = ThpChoice::Never;
                    true
                }
                _ => false,
            },
            _ => {
                warn(sink, "unknown key", pair);
                continue;
            }
        };
        if !ok {
            warn(sink, "bad value", pair);
        }
    }
    cfg
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

/// Reads and parses the environment (warnings on stderr), and records the
/// result as the options in effect ([`in_effect`]).
pub fn from_env() -> Config {
    let cfg = match env_value() {
        Some(v) => parse(v, &mut Stderr),
        None => Config::DEFAULT,
    };
    IN_EFFECT.set(cfg);
    cfg
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

    fn p(s: &str) -> (Config, std::vec::Vec<std::string::String>) {
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
            "rseq-malloc: RSEQ_MALLOC_CONF: unknown key 'bogus=3' ignored\n"
        );
        assert_eq!(
            w[1],
            "rseq-malloc: RSEQ_MALLOC_CONF: bad value 'verbose' ignored\n"
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
    fn bad_value_keeps_default() {
        let (c, w) = p("rseq=maybe,index=gpu");
        assert_eq!(c, Config::DEFAULT);
        assert_eq!(w.len(), 2);
    }
}

//! Xorshift64*: a fixed-seed, allocation-free PRNG, so every run of a test
//! or a workload sees the same sequence (no `rand` dependency needed).

/// A tiny deterministic PRNG (xorshift64*).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is remapped: xorshift must not start at 0).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (n > 0); the modulo bias is irrelevant here.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A value in `lo..=hi`.
    #[inline]
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }

    /// A "small-object heavy" size in `min..=max`: a log-uniform draw, so
    /// that every size class gets traffic but small ones get most of it,
    /// like real programs.
    #[inline]
    pub fn log_size(&mut self, min: usize, max: usize) -> usize {
        let lo = usize::BITS - 1 - min.leading_zeros();
        let hi = usize::BITS - 1 - max.leading_zeros();
        let shift = lo + self.below(u64::from(hi - lo + 1)) as u32;
        let base = 1usize << shift;
        (base + self.below(base as u64) as usize).clamp(min, max)
    }
}

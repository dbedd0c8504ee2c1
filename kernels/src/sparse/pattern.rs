//! Where the kept entries of a sparse weight are: one bit per column (bitmask and N:M) or a
//! column list per row (CSR), walked row by row over column blocks by the generic kernels.

use super::simd::Simd;

/// Reads `len` (1..=64) bits of a row's bitmask starting at column `c` (a multiple of 8); bits at
/// or past `len` are cleared, so padding bits past `k` never count.
#[inline(always)]
pub(crate) fn load_bits(row: &[u8], c: usize, len: usize) -> u64 {
    debug_assert!(c.is_multiple_of(8) && (1..=64).contains(&len));
    let b = c / 8;
    let w = match row.get(b..b + 8) {
        Some(s) => u64::from_le_bytes(s.try_into().unwrap()),
        None => {
            let mut buf = [0u8; 8];
            let tail = &row[b..];
            buf[..tail.len()].copy_from_slice(tail);
            u64::from_le_bytes(buf)
        }
    };
    if len == 64 {
        w
    } else {
        w & ((1u64 << len) - 1)
    }
}

/// The structure of a sparse `[n, k]` weight, as the generic kernels see it.
pub(crate) trait Pattern: Sync {
    /// The entry walk of [`Pattern::entries`].
    type It<'b>: Iterator<Item = (usize, usize)>
    where
        Self: 'b;
    /// Value index of row `r`'s first kept entry.
    fn start(&self, r: usize) -> usize;
    /// Row `r`'s kept entries with `c0 ≤ column < c1` (`c0` a multiple of 64), in column order,
    /// the first having value index `j`. Every column returned is `< c1`.
    fn entries(&self, r: usize, c0: usize, c1: usize, j: usize) -> Self::It<'_>;
    /// Writes the columns of row `r`'s entries in `c0..c1` (`c0` a multiple of 64), the first
    /// having value index `j`, to `cols` (at most `cols.len()`), and returns how many: their
    /// values are the contiguous `j..j + count`. Every column written is `< c1`.
    ///
    /// # Safety
    /// The CPU supports `S`'s level.
    unsafe fn decode<S: Simd>(
        &self,
        r: usize,
        c0: usize,
        c1: usize,
        j: usize,
        cols: &mut [u32],
    ) -> usize;
    /// Where row `r`'s structure for columns from `c` lies in memory, for a prefetch (any
    /// address; it is never dereferenced).
    fn structure_at(&self, r: usize, c: usize) -> *const u8;
    /// The value index after row `r`'s entries in `c0..c1`, the first having value index `j`.
    fn skip(&self, r: usize, c0: usize, c1: usize, j: usize) -> usize;
    /// Panics unless every value index row `r`'s walk yields is below the value count, so that
    /// unchecked reads of the values stay in bounds.
    fn check_row(&self, r: usize);
}

/// Where each row's values start.
#[derive(Clone, Copy)]
pub(crate) enum Starts<'a> {
    /// Bitmask: an explicit offset per row.
    Offsets(&'a [usize]),
    /// N:M: row `r` starts at `r × per_row`.
    Uniform(usize),
}

/// A bitmask (or N:M) pattern: `bits` of `n × ⌈k/8⌉` bytes, little-endian within each byte.
pub(crate) struct Bits<'a> {
    pub(crate) bits: &'a [u8],
    pub(crate) k: usize,
    pub(crate) starts: Starts<'a>,
    /// Number of values (nnz).
    pub(crate) nnz: usize,
    /// Kernel name for panics.
    pub(crate) name: &'static str,
}

impl<'a> Bits<'a> {
    /// Bytes per row of bits.
    #[inline(always)]
    pub(crate) fn rb(&self) -> usize {
        self.k.div_ceil(8)
    }
    /// Row `r`'s bits.
    #[inline(always)]
    pub(crate) fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.rb();
        &self.bits[r * rb..(r + 1) * rb]
    }
    /// Kept entries of row `r` (padding bits excluded).
    pub(crate) fn count(&self, r: usize) -> usize {
        let row = self.row(r);
        (0..self.k)
            .step_by(64)
            .map(|c| load_bits(row, c, (self.k - c).min(64)).count_ones() as usize)
            .sum()
    }
}

/// The walk over one row's bits.
pub(crate) struct BitIter<'a> {
    row: &'a [u8],
    c: usize,
    c1: usize,
    word: u64,
    j: usize,
}

impl Iterator for BitIter<'_> {
    type Item = (usize, usize);
    #[inline(always)]
    fn next(&mut self) -> Option<(usize, usize)> {
        loop {
            if self.word != 0 {
                let t = self.word.trailing_zeros() as usize;
                self.word &= self.word - 1;
                let j = self.j;
                self.j += 1;
                return Some((self.c + t, j));
            }
            self.c += 64;
            if self.c >= self.c1 {
                return None;
            }
            self.word = load_bits(self.row, self.c, (self.c1 - self.c).min(64));
        }
    }
}

impl Pattern for Bits<'_> {
    type It<'b>
        = BitIter<'b>
    where
        Self: 'b;
    #[inline(always)]
    fn start(&self, r: usize) -> usize {
        match self.starts {
            Starts::Offsets(o) => o[r],
            Starts::Uniform(per) => r * per,
        }
    }
    #[inline(always)]
    fn entries(&self, r: usize, c0: usize, c1: usize, j: usize) -> BitIter<'_> {
        let row = self.row(r);
        let word = if c0 < c1 {
            load_bits(row, c0, (c1 - c0).min(64))
        } else {
            0
        };
        BitIter {
            row,
            c: c0,
            c1,
            word,
            j,
        }
    }
    #[inline(always)]
    fn structure_at(&self, r: usize, c: usize) -> *const u8 {
        self.bits.as_ptr().wrapping_add(r * self.rb() + c / 8)
    }
    #[inline(always)]
    unsafe fn decode<S: Simd>(
        &self,
        r: usize,
        c0: usize,
        c1: usize,
        _j: usize,
        cols: &mut [u32],
    ) -> usize {
        S::decode_bits(self.row(r), c0, c1, cols)
    }
    #[inline(always)]
    fn skip(&self, r: usize, c0: usize, c1: usize, j: usize) -> usize {
        let row = self.row(r);
        j + (c0..c1)
            .step_by(64)
            .map(|c| load_bits(row, c, (c1 - c).min(64)).count_ones() as usize)
            .sum::<usize>()
    }
    fn check_row(&self, r: usize) {
        let s = self.start(r);
        // Only rows near the end of the values can run past it; counting the bits of every row
        // would add a pass over the mask to the memory-bound decode.
        if s + self.k > self.nnz {
            let c = self.count(r);
            assert!(
                s + c <= self.nnz,
                "{}: row {r} starts at value {s} and keeps {c}, but there are {} values",
                self.name,
                self.nnz
            );
        }
    }
}

/// A CSR pattern; `indptr` was checked to be non-decreasing and to end at `indices.len()`.
pub(crate) struct Csr<'a> {
    pub(crate) indptr: &'a [usize],
    pub(crate) indices: &'a [u32],
}

/// The walk over one CSR row from a cursor.
pub(crate) struct CsrIter<'a> {
    indices: &'a [u32],
    j: usize,
    end: usize,
    c1: usize,
}

impl Iterator for CsrIter<'_> {
    type Item = (usize, usize);
    #[inline(always)]
    fn next(&mut self) -> Option<(usize, usize)> {
        if self.j < self.end {
            let c = self.indices[self.j] as usize;
            if c < self.c1 {
                self.j += 1;
                return Some((c, self.j - 1));
            }
        }
        None
    }
}

impl Pattern for Csr<'_> {
    type It<'b>
        = CsrIter<'b>
    where
        Self: 'b;
    #[inline(always)]
    fn start(&self, r: usize) -> usize {
        self.indptr[r]
    }
    #[inline(always)]
    fn entries(&self, r: usize, _c0: usize, c1: usize, j: usize) -> CsrIter<'_> {
        CsrIter {
            indices: self.indices,
            j,
            end: self.indptr[r + 1],
            c1,
        }
    }
    #[inline(always)]
    fn structure_at(&self, r: usize, _c: usize) -> *const u8 {
        // The next entries' indices start at the row's cursor, unknown here; the row's start
        // is close enough for the first block and harmless after.
        self.indices.as_ptr().wrapping_add(self.indptr[r]).cast()
    }
    #[inline(always)]
    unsafe fn decode<S: Simd>(
        &self,
        r: usize,
        c0: usize,
        c1: usize,
        j: usize,
        cols: &mut [u32],
    ) -> usize {
        let mut cnt = 0;
        for (c, _) in self.entries(r, c0, c1, j) {
            if cnt == cols.len() {
                break;
            }
            cols[cnt] = c as u32;
            cnt += 1;
        }
        cnt
    }
    #[inline(always)]
    fn skip(&self, r: usize, c0: usize, c1: usize, j: usize) -> usize {
        self.entries(r, c0, c1, j).count() + j
    }
    fn check_row(&self, _r: usize) {}
}

//! The level-generic kernels every format shares, written against [`Pattern`] (which entries a
//! row keeps) and [`Simd`] (one level's f32 vector).
//!
//! They all work on a transposed operand, so that one kept weight `v` at `(r, c)` meets a
//! contiguous run of the batch: `y[r, 0..m] += v · xT[c, 0..m]` in `nt`,
//! `dxT[c, 0..m] += v · dyT[r, 0..m]` in `nn`, and `dvalue = dyT[r, 0..m] · xT[c, 0..m]` in
//! `weight_grad`. Only kept entries cost FMAs, which is what makes them win when the batch is
//! large (compute-bound); the column blocks keep the transposed block in L1.

use super::pattern::Pattern;
use super::simd::{val, Portable, Simd};
use crate::cpu::Level;
use crate::gemv::WeightElem;
use crate::send_ptr::{SendConstPtr, SendPtr};
use rayon::prelude::*;

/// Widest register tile over the batch, in vectors (4 zmm = 64 rows of x at AVX-512).
const MAX_R: usize = 4;
/// Bytes of a transposed column block meant to stay in L1.
const BLOCK_BYTES: usize = 32 << 10;

/// f32 lanes of `level`'s vector.
pub(crate) fn lanes(level: Level) -> usize {
    match level {
        Level::Avx512 => 16,
        _ => 8,
    }
}

/// Rows `t0..t0 + valid` of a `[rows, len]` matrix stored transposed as `[len][w]` at `off` in a
/// shared buffer, lanes past `valid` zero.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tile {
    pub(crate) t0: usize,
    pub(crate) valid: usize,
    pub(crate) w: usize,
    pub(crate) off: usize,
}

/// Transposes `src` (`[rows, len]`, row-major) into tiles of at most `max_w` rows (`max_w` a
/// multiple of `lanes`), each `[len][w]` with `w` the tile's rows rounded up to `lanes`.
pub(crate) fn transpose_tiles(
    src: &[f32],
    rows: usize,
    len: usize,
    lanes: usize,
    max_w: usize,
) -> (Vec<f32>, Vec<Tile>) {
    debug_assert_eq!(src.len(), rows * len);
    let mut tiles = Vec::new();
    let (mut off, mut t0) = (0, 0);
    while t0 < rows {
        let valid = (rows - t0).min(max_w);
        let w = valid.next_multiple_of(lanes);
        tiles.push(Tile { t0, valid, w, off });
        off += len * w;
        t0 += valid;
    }
    let mut buf = vec![0f32; off];
    let mut rest = buf.as_mut_slice();
    for t in &tiles {
        let (dst, r) = rest.split_at_mut(len * t.w);
        rest = r;
        // Blocks of 64 source columns: the reads of each source row stay sequential.
        const CB: usize = 64;
        let block = |(b, d): (usize, &mut [f32])| {
            let c0 = b * CB;
            let cn = d.len() / t.w;
            for i in 0..t.valid {
                let s = &src[(t.t0 + i) * len + c0..][..cn];
                for (cc, &v) in s.iter().enumerate() {
                    d[cc * t.w + i] = v;
                }
            }
        };
        if len * t.valid < 1 << 15 {
            dst.chunks_mut(CB * t.w).enumerate().for_each(block);
        } else {
            dst.par_chunks_mut(CB * t.w).enumerate().for_each(block);
        }
    }
    (buf, tiles)
}

/// Tasks of whole rows: one task when the work (`m·n·k`) is small or there is one thread (a
/// decode step must not pay for a fork it cannot use), else about `per_thread` tasks per thread
/// of 8 to `max_rows` rows, a multiple of 8.
pub(crate) fn row_tasks(
    n: usize,
    work: usize,
    per_thread: usize,
    max_rows: usize,
) -> Vec<(usize, usize)> {
    let threads = rayon::current_num_threads();
    let rows = if threads == 1 || work < 1 << 16 {
        n.max(1)
    } else {
        (n / (per_thread * threads))
            .clamp(8, max_rows)
            .next_multiple_of(8)
    };
    (0..n)
        .step_by(rows)
        .map(|r0| (r0, (r0 + rows).min(n)))
        .collect()
}

/// Runs `f` over the tasks, in parallel when there are several.
pub(crate) fn run_tasks<T: Sync>(tasks: &[T], f: impl Fn(&T) + Sync + Send) {
    if tasks.len() > 1 {
        tasks.par_iter().for_each(f);
    } else {
        tasks.iter().for_each(f);
    }
}

// ---------------------------------------------------------------------------------------------
// y = x · Wᵀ

/// `y[m×n] = x[m×k] · Wᵀ` by kept entries. Lengths were checked, `m, n, k > 0`, `level` is
/// supported.
pub(crate) fn nt<W: WeightElem, P: Pattern>(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    pat: &P,
    values: &[W],
    y: &mut [f32],
) {
    let l = lanes(level);
    let (xt, tiles) = transpose_tiles(x, m, k, l, MAX_R * l);
    let tasks = row_tasks(n, m * n * k, 4, 256);
    let yp = SendPtr(y.as_mut_ptr());
    let xp = SendConstPtr(xt.as_ptr());
    let wmax = tiles[0].w;
    run_tasks(&tasks, |&(r0, r1)| {
        for r in r0..r1 {
            pat.check_row(r);
        }
        let mut yt = vec![0f32; (r1 - r0) * wmax];
        let mut cur = vec![0usize; r1 - r0];
        for t in &tiles {
            // SAFETY: the tile lies inside xt; `check_row` bounded every value index the walks
            // yield, and every column they yield is < k; `level` is supported.
            unsafe {
                nt_tile_at(
                    level,
                    k,
                    xp.get().add(t.off),
                    t.w,
                    pat,
                    values.as_ptr(),
                    r0,
                    r1,
                    &mut yt,
                    &mut cur,
                )
            };
            for r in r0..r1 {
                let src = &yt[(r - r0) * t.w..][..t.valid];
                for (i, &v) in src.iter().enumerate() {
                    // SAFETY: (t0 + i, r) is inside y (checked lengths), and only this task
                    // writes columns r0..r1.
                    unsafe { *yp.get().add((t.t0 + i) * n + r) = v };
                }
            }
        }
    });
}

/// # Safety
/// See [`nt_tile`]; `level` supported.
unsafe fn nt_tile_at<W: WeightElem, P: Pattern>(
    level: Level,
    k: usize,
    xt: *const f32,
    w: usize,
    pat: &P,
    vals: *const W,
    r0: usize,
    r1: usize,
    yt: &mut [f32],
    cur: &mut [usize],
) {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => x86::nt_tile_avx512(k, xt, w, pat, vals, r0, r1, yt, cur),
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => x86::nt_tile_avx2(k, xt, w, pat, vals, r0, r1, yt, cur),
        _ => nt_tile::<Portable, W, P>(k, xt, w, pat, vals, r0, r1, yt, cur),
    }
}

/// `yt[r - r0][0..w] = Σ_c W[r, c] · xt[c][0..w]` for rows `r0..r1`.
///
/// # Safety
/// `xt` holds `k × w` floats, `w` a multiple of `S::LANES` up to `MAX_R` vectors; the walks of
/// rows `r0..r1` yield value indices inside `vals`; `yt` and `cur` hold `(r1 - r0) × w` and
/// `r1 - r0` elements.
#[inline(always)]
pub(crate) unsafe fn nt_tile<S: Simd, W: WeightElem, P: Pattern>(
    k: usize,
    xt: *const f32,
    w: usize,
    pat: &P,
    vals: *const W,
    r0: usize,
    r1: usize,
    yt: &mut [f32],
    cur: &mut [usize],
) {
    match w / S::LANES {
        1 => nt_tile_r::<S, W, P, 1, 8>(k, xt, pat, vals, r0, r1, yt, cur),
        2 => nt_tile_r::<S, W, P, 2, 4>(k, xt, pat, vals, r0, r1, yt, cur),
        3 => nt_tile_r::<S, W, P, 3, 2>(k, xt, pat, vals, r0, r1, yt, cur),
        _ => nt_tile_r::<S, W, P, 4, 2>(k, xt, pat, vals, r0, r1, yt, cur),
    }
}

#[inline(always)]
unsafe fn nt_tile_r<S: Simd, W: WeightElem, P: Pattern, const R: usize, const U: usize>(
    k: usize,
    xt: *const f32,
    pat: &P,
    vals: *const W,
    r0: usize,
    r1: usize,
    yt: &mut [f32],
    cur: &mut [usize],
) {
    let l = S::LANES;
    let w = R * l;
    debug_assert!(yt.len() >= (r1 - r0) * w && cur.len() >= r1 - r0);
    for (i, r) in (r0..r1).enumerate() {
        cur[i] = pat.start(r);
    }
    yt[..(r1 - r0) * w].fill(0.0);
    let kb = ((BLOCK_BYTES / 4 / w).max(64) / 64) * 64;
    // Room for a block's columns plus one full 16-lane store past the last.
    let mut cols = vec![0u32; kb + 16];
    let mut c0 = 0;
    while c0 < k {
        let c1 = (c0 + kb).min(k);
        for (i, r) in (r0..r1).enumerate() {
            let yp = yt.as_mut_ptr().add(i * w);
            // U accumulator sets taking turns over the entries, so that U·R independent FMA
            // chains hide the FMA latency. The entries' columns are decoded first, so the FMA
            // loop is a plain counted loop (around an entry iterator, LLVM kept the
            // accumulators on the stack).
            let mut a = [[S::zero(); R]; U];
            for (q, v) in a[0].iter_mut().enumerate() {
                *v = S::load(yp.add(q * l));
            }
            let j0 = cur[i];
            let cnt = pat.decode::<S>(r, c0, c1, j0, &mut cols);
            let vj = vals.add(j0);
            let mut e = 0;
            while e + U <= cnt {
                for (u, au) in a.iter_mut().enumerate() {
                    let c = *cols.get_unchecked(e + u) as usize;
                    debug_assert!(c < k);
                    let v = S::splat(val::<S, W>(vj.add(e + u)));
                    let xr = xt.add(c * w);
                    for (q, acc) in au.iter_mut().enumerate() {
                        *acc = S::fma(v, S::load(xr.add(q * l)), *acc);
                    }
                }
                e += U;
            }
            while e < cnt {
                let c = *cols.get_unchecked(e) as usize;
                let v = S::splat(val::<S, W>(vj.add(e)));
                let xr = xt.add(c * w);
                for (q, acc) in a[0].iter_mut().enumerate() {
                    *acc = S::fma(v, S::load(xr.add(q * l)), *acc);
                }
                e += 1;
            }
            for q in 0..R {
                let mut s = a[0][q];
                for au in &a[1..] {
                    s = S::add(s, au[q]);
                }
                S::store(yp.add(q * l), s);
            }
            cur[i] = j0 + cnt;
            // This row's values and mask for the next block are read after all other rows of
            // the task: 256 interleaved streams the hardware prefetchers do not follow.
            if c1 < k {
                let next = vj.add(cnt).cast::<u8>();
                let bytes = (cnt + 1) * std::mem::size_of::<W>();
                let mut o = 0;
                while o < bytes {
                    S::prefetch(next.wrapping_add(o));
                    o += 64;
                }
                S::prefetch(pat.structure_at(r, c1));
            }
        }
        c0 = c1;
    }
}

// ---------------------------------------------------------------------------------------------
// dx = dy · W

/// `dx[m×k] = dy[m×n] · W`. Lengths were checked, `m, n, k > 0`, `level` is supported.
///
/// Tasks own blocks of columns of dx (no two write the same element); a table of where each row's
/// entries of each block start lets every task begin mid-row.
pub(crate) fn nn<W: WeightElem, P: Pattern>(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    pat: &P,
    values: &[W],
    dx: &mut [f32],
) {
    let l = lanes(level);
    let threads = rayon::current_num_threads();
    let w0 = m.min(MAX_R * l).next_multiple_of(l);
    let cb_cache = ((BLOCK_BYTES / 4 / w0).max(64) / 64) * 64;
    let cb_par = if threads == 1 || m * n * k < 1 << 16 {
        k.next_multiple_of(64)
    } else {
        k.div_ceil(4 * threads).next_multiple_of(64)
    };
    let cb = cb_cache.min(cb_par);
    let nb = k.div_ceil(cb);
    let mut table = vec![0usize; n * nb];
    table
        .par_chunks_mut(nb)
        .with_min_len(64)
        .enumerate()
        .for_each(|(r, t)| {
            pat.check_row(r);
            let mut j = pat.start(r);
            for (b, s) in t.iter_mut().enumerate() {
                *s = j;
                j = pat.skip(r, b * cb, ((b + 1) * cb).min(k), j);
            }
        });
    let (dyt, tiles) = transpose_tiles(dy, m, n, l, MAX_R * l);
    let dxp = SendPtr(dx.as_mut_ptr());
    let blocks: Vec<usize> = (0..nb).collect();
    run_tasks(&blocks, |&b| {
        let c0 = b * cb;
        let c1 = (c0 + cb).min(k);
        let mut acc = vec![0f32; (c1 - c0) * tiles[0].w];
        for t in &tiles {
            let acc = &mut acc[..(c1 - c0) * t.w];
            acc.fill(0.0);
            // SAFETY: the tile lies inside dyt; the walks yield value indices inside `values`
            // (`check_row`) and columns in c0..c1; `level` is supported.
            unsafe {
                nn_block_at(
                    level,
                    n,
                    dyt.as_ptr().add(t.off),
                    t.w,
                    pat,
                    values.as_ptr(),
                    &table,
                    nb,
                    b,
                    c0,
                    c1,
                    acc,
                )
            };
            for i in 0..t.valid {
                for c in c0..c1 {
                    // SAFETY: (t0 + i, c) is inside dx and only this task writes columns c0..c1.
                    unsafe { *dxp.get().add((t.t0 + i) * k + c) = acc[(c - c0) * t.w + i] };
                }
            }
        }
    });
}

/// # Safety
/// See [`nn_block`]; `level` supported.
unsafe fn nn_block_at<W: WeightElem, P: Pattern>(
    level: Level,
    n: usize,
    dyt: *const f32,
    w: usize,
    pat: &P,
    vals: *const W,
    table: &[usize],
    nb: usize,
    b: usize,
    c0: usize,
    c1: usize,
    acc: &mut [f32],
) {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => x86::nn_block_avx512(n, dyt, w, pat, vals, table, nb, b, c0, c1, acc),
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => x86::nn_block_avx2(n, dyt, w, pat, vals, table, nb, b, c0, c1, acc),
        _ => nn_block::<Portable, W, P>(n, dyt, w, pat, vals, table, nb, b, c0, c1, acc),
    }
}

/// `acc[c - c0][0..w] += Σ_r W[r, c] · dyt[r][0..w]` over columns `c0..c1`.
///
/// # Safety
/// `dyt` holds `n × w` floats, `w` a multiple of `S::LANES`; `acc` holds `(c1 - c0) × w`; the
/// walks from `table[r × nb + b]` yield value indices inside `vals`.
#[inline(always)]
pub(crate) unsafe fn nn_block<S: Simd, W: WeightElem, P: Pattern>(
    n: usize,
    dyt: *const f32,
    w: usize,
    pat: &P,
    vals: *const W,
    table: &[usize],
    nb: usize,
    b: usize,
    c0: usize,
    c1: usize,
    acc: &mut [f32],
) {
    match w / S::LANES {
        1 => nn_block_r::<S, W, P, 1>(n, dyt, pat, vals, table, nb, b, c0, c1, acc),
        2 => nn_block_r::<S, W, P, 2>(n, dyt, pat, vals, table, nb, b, c0, c1, acc),
        3 => nn_block_r::<S, W, P, 3>(n, dyt, pat, vals, table, nb, b, c0, c1, acc),
        _ => nn_block_r::<S, W, P, 4>(n, dyt, pat, vals, table, nb, b, c0, c1, acc),
    }
}

#[inline(always)]
unsafe fn nn_block_r<S: Simd, W: WeightElem, P: Pattern, const R: usize>(
    n: usize,
    dyt: *const f32,
    pat: &P,
    vals: *const W,
    table: &[usize],
    nb: usize,
    b: usize,
    c0: usize,
    c1: usize,
    acc: &mut [f32],
) {
    let l = S::LANES;
    let w = R * l;
    debug_assert!(acc.len() >= (c1 - c0) * w);
    let ap = acc.as_mut_ptr();
    // Room for a block's columns plus one full 16-lane store past the last.
    let mut cols = vec![0u32; c1 - c0 + 16];
    for r in 0..n {
        let dr = dyt.add(r * w);
        let mut g = [S::zero(); R];
        for (q, v) in g.iter_mut().enumerate() {
            *v = S::load(dr.add(q * l));
        }
        let j0 = table[r * nb + b];
        // Columns decoded first: a counted loop, no per-entry bit walking.
        let cnt = pat.decode::<S>(r, c0, c1, j0, &mut cols);
        let vj = vals.add(j0);
        // Each row's slice of this block lies one row's values apart from the last: a stride
        // the prefetchers miss. Fetch a few rows ahead (the size guessed from this row's).
        const AHEAD: usize = 8;
        if r + AHEAD < n {
            let ja = table[(r + AHEAD) * nb + b];
            let next = vals.wrapping_add(ja).cast::<u8>();
            let bytes = (cnt + 1) * std::mem::size_of::<W>();
            let mut o = 0;
            while o < bytes {
                S::prefetch(next.wrapping_add(o));
                o += 64;
            }
            S::prefetch(pat.structure_at(r + AHEAD, c0));
        }
        for (e, &c) in cols[..cnt].iter().enumerate() {
            let c = c as usize;
            debug_assert!((c0..c1).contains(&c));
            let v = S::splat(val::<S, W>(vj.add(e)));
            let p = ap.add((c - c0) * w);
            for (q, gq) in g.iter().enumerate() {
                S::store(p.add(q * l), S::fma(v, *gq, S::load(p.add(q * l))));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dvalues = (dyᵀ · x) at the kept positions

/// `dvalues[j] = Σ_i dy[i, row(j)] · x[i, col(j)]`. Lengths were checked, `m, n, k > 0`, the row
/// starts are non-decreasing and at most `dvalues.len()`, `level` is supported.
///
/// Tasks own whole rows and with them the values from their first row's start to the next task's
/// (split with `split_at_mut`, writes bounds-checked), so a malformed pattern panics rather than
/// racing.
pub(crate) fn weight_grad<P: Pattern>(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    dy: &[f32],
    x: &[f32],
    pat: &P,
    dvalues: &mut [f32],
) {
    let tasks = row_tasks(n, m * n * k, 4, 256);
    let mut chunks = Vec::with_capacity(tasks.len());
    let mut rest = dvalues;
    let mut pos = 0;
    for &(r0, r1) in &tasks {
        let end = if r1 == n {
            pos + rest.len()
        } else {
            pat.start(r1)
        };
        let (a, b) = std::mem::take(&mut rest).split_at_mut(end - pos);
        chunks.push((r0, r1, pos, a));
        rest = b;
        pos = end;
    }
    if m == 1 {
        let task = |(r0, r1, pos, d): &mut (usize, usize, usize, &mut [f32])| {
            for (r, &g) in dy.iter().enumerate().take(*r1).skip(*r0) {
                for (c, j) in pat.entries(r, 0, k, pat.start(r)) {
                    d[j - *pos] = g * x[c];
                }
            }
        };
        if chunks.len() > 1 {
            chunks.par_iter_mut().for_each(task);
        } else {
            chunks.iter_mut().for_each(task);
        }
        return;
    }
    let l = lanes(level);
    let w = m.next_multiple_of(l);
    let (xt, _) = transpose_tiles(x, m, k, l, w);
    let (dyt, _) = transpose_tiles(dy, m, n, l, w);
    let task = |(r0, r1, pos, d): &mut (usize, usize, usize, &mut [f32])| {
        // SAFETY: xt and dyt hold k × w and n × w floats (one tile each); `level` is supported.
        unsafe {
            wg_rows_at(
                level,
                k,
                w,
                xt.as_ptr(),
                dyt.as_ptr(),
                pat,
                *r0,
                *r1,
                *pos,
                d,
            )
        }
    };
    if chunks.len() > 1 {
        chunks.par_iter_mut().for_each(task);
    } else {
        chunks.iter_mut().for_each(task);
    }
}

/// # Safety
/// See [`wg_rows`]; `level` supported.
unsafe fn wg_rows_at<P: Pattern>(
    level: Level,
    k: usize,
    w: usize,
    xt: *const f32,
    dyt: *const f32,
    pat: &P,
    r0: usize,
    r1: usize,
    pos: usize,
    d: &mut [f32],
) {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => x86::wg_rows_avx512(k, w, xt, dyt, pat, r0, r1, pos, d),
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => x86::wg_rows_avx2(k, w, xt, dyt, pat, r0, r1, pos, d),
        _ => wg_rows::<Portable, P>(k, w, xt, dyt, pat, r0, r1, pos, d),
    }
}

/// `d[j - pos] = dyt[r][0..w] · xt[c][0..w]` for the entries of rows `r0..r1`.
///
/// # Safety
/// `xt` and `dyt` hold `k × w` and `n × w` floats, `w` a multiple of `S::LANES`.
#[inline(always)]
pub(crate) unsafe fn wg_rows<S: Simd, P: Pattern>(
    k: usize,
    w: usize,
    xt: *const f32,
    dyt: *const f32,
    pat: &P,
    r0: usize,
    r1: usize,
    pos: usize,
    d: &mut [f32],
) {
    let l = S::LANES;
    const CB: usize = 1024;
    let mut cols = vec![0u32; CB + 16];
    for r in r0..r1 {
        let dr = dyt.add(r * w);
        let mut j = pat.start(r);
        for c0 in (0..k).step_by(CB) {
            let cnt = pat.decode::<S>(r, c0, (c0 + CB).min(k), j, &mut cols);
            for (e, &c) in cols[..cnt].iter().enumerate() {
                let c = c as usize;
                debug_assert!(c < k);
                let xr = xt.add(c * w);
                let (mut a0, mut a1) = (S::zero(), S::zero());
                let mut q = 0;
                while q + 2 * l <= w {
                    a0 = S::fma(S::load(dr.add(q)), S::load(xr.add(q)), a0);
                    a1 = S::fma(S::load(dr.add(q + l)), S::load(xr.add(q + l)), a1);
                    q += 2 * l;
                }
                if q < w {
                    a0 = S::fma(S::load(dr.add(q)), S::load(xr.add(q)), a0);
                }
                d[j + e - pos] = S::hsum(S::add(a0, a1));
            }
            j += cnt;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The generic kernels compiled for AVX-512 and AVX2.
    use super::*;
    use crate::sparse::simd::{Avx2, Avx512};

    macro_rules! entry {
        ($name:ident, $feat:literal, $S:ty, $inner:ident, <$($g:ident: $b:path),*>, ($($a:ident: $t:ty),*)) => {
            /// # Safety
            /// The CPU supports the features; see the generic kernel.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $name<$($g: $b),*>($($a: $t),*) {
                $inner::<$S, $($g),*>($($a),*)
            }
        };
    }
    entry!(nt_tile_avx512, "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c", Avx512, nt_tile,
        <W: WeightElem, P: Pattern>,
        (k: usize, xt: *const f32, w: usize, pat: &P, vals: *const W, r0: usize, r1: usize, yt: &mut [f32], cur: &mut [usize]));
    entry!(nt_tile_avx2, "avx2,fma,f16c", Avx2, nt_tile,
        <W: WeightElem, P: Pattern>,
        (k: usize, xt: *const f32, w: usize, pat: &P, vals: *const W, r0: usize, r1: usize, yt: &mut [f32], cur: &mut [usize]));
    entry!(nn_block_avx512, "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c", Avx512, nn_block,
        <W: WeightElem, P: Pattern>,
        (n: usize, dyt: *const f32, w: usize, pat: &P, vals: *const W, table: &[usize], nb: usize, b: usize, c0: usize, c1: usize, acc: &mut [f32]));
    entry!(nn_block_avx2, "avx2,fma,f16c", Avx2, nn_block,
        <W: WeightElem, P: Pattern>,
        (n: usize, dyt: *const f32, w: usize, pat: &P, vals: *const W, table: &[usize], nb: usize, b: usize, c0: usize, c1: usize, acc: &mut [f32]));
    entry!(wg_rows_avx512, "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c", Avx512, wg_rows,
        <P: Pattern>,
        (k: usize, w: usize, xt: *const f32, dyt: *const f32, pat: &P, r0: usize, r1: usize, pos: usize, d: &mut [f32]));
    entry!(wg_rows_avx2, "avx2,fma,f16c", Avx2, wg_rows,
        <P: Pattern>,
        (k: usize, w: usize, xt: *const f32, dyt: *const f32, pat: &P, r0: usize, r1: usize, pos: usize, d: &mut [f32]));
}

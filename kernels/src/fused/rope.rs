//! Rotary position embedding (Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position
//! Embedding", eq. 34): each pair `(a, b)` of a head's dims is rotated by the angle `p·θᵢ`,
//! `θᵢ = base^(−2i/d)`, so `a' = a·cos − b·sin`, `b' = b·cos + a·sin`. Which dims pair up is the
//! checkpoint's convention, [`RopeLayout`].

use super::simd::{load_n, par_rows, simd_entry, store_n, usable, Simd, PAR_STREAM};
use crate::cpu::{self, Level};

/// Which dims of a head form the rotated pairs `(a, b)`; the `i`-th pair uses angle `p·θᵢ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RopeLayout {
    /// Pairs `(i, i + d/2)`: Hugging Face LLaMA's `rotate_half`.
    HalfSplit,
    /// Pairs `(2i, 2i + 1)`: Meta's original LLaMA code and GGUF/GGML.
    Interleaved,
}

/// `(cos, sin)` tables, each `[max_pos, head_dim/2]`: entry `[p, i]` is `cos/sin(p·θᵢ)` with
/// `θᵢ = theta^(−2i/head_dim)`, computed in f64 and rounded once.
pub fn rope_tables(head_dim: usize, max_pos: usize, theta: f32) -> (Vec<f32>, Vec<f32>) {
    assert!(
        head_dim > 0 && head_dim.is_multiple_of(2),
        "rope_tables: head_dim {head_dim} must be even and positive"
    );
    let h = head_dim / 2;
    let inv_freq: Vec<f64> = (0..h)
        .map(|i| (theta as f64).powf(-2.0 * i as f64 / head_dim as f64))
        .collect();
    let (mut cos, mut sin) = (
        Vec::with_capacity(max_pos * h),
        Vec::with_capacity(max_pos * h),
    );
    for p in 0..max_pos {
        for &f in &inv_freq {
            let (s, c) = (p as f64 * f).sin_cos();
            cos.push(c as f32);
            sin.push(s as f32);
        }
    }
    (cos, sin)
}

/// Rotates `x: [seq, heads, head_dim]` in place, row `s` by position `positions[s]` (`positions:
/// [seq]`), using tables `cos, sin: [max_pos, head_dim/2]` from [`rope_tables`]; at the detected
/// SIMD level, rows in parallel when the buffer is large. Panics on an odd `head_dim` or a
/// position `≥ max_pos`.
pub fn rope(
    x: &mut [f32],
    heads: usize,
    head_dim: usize,
    positions: &[usize],
    cos: &[f32],
    sin: &[f32],
    layout: RopeLayout,
) {
    rope_with(
        cpu::level(),
        x,
        heads,
        head_dim,
        positions,
        cos,
        sin,
        layout,
    )
}

/// [`rope`] at an explicit level (one this CPU lacks falls back to the best it has).
pub fn rope_with(
    level: Level,
    x: &mut [f32],
    heads: usize,
    head_dim: usize,
    positions: &[usize],
    cos: &[f32],
    sin: &[f32],
    layout: RopeLayout,
) {
    check("rope", x, heads, head_dim, positions, cos, sin);
    let level = usable(level);
    let row = heads * head_dim;
    par_rows(x, row, PAR_STREAM, |s0, blk| {
        let pos = &positions[s0..s0 + blk.len() / row];
        // SAFETY: `level` is supported; `blk` holds whole rows of `heads · head_dim` (even) and
        // every position indexes a row of the tables (checked).
        unsafe { rows_at(level, blk, heads, head_dim, pos, cos, sin, layout) }
    });
}

/// Plain reference for [`rope`].
pub fn rope_ref(
    x: &mut [f32],
    heads: usize,
    head_dim: usize,
    positions: &[usize],
    cos: &[f32],
    sin: &[f32],
    layout: RopeLayout,
) {
    check("rope_ref", x, heads, head_dim, positions, cos, sin);
    if x.is_empty() {
        return;
    }
    let h = head_dim / 2;
    for (xr, &p) in x.chunks_mut(heads * head_dim).zip(positions) {
        for head in xr.chunks_mut(head_dim) {
            for i in 0..h {
                let (ia, ib) = match layout {
                    RopeLayout::HalfSplit => (i, i + h),
                    RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                };
                let (a, b) = (head[ia], head[ib]);
                let (c, s) = (cos[p * h + i], sin[p * h + i]);
                head[ia] = a * c - b * s;
                head[ib] = b * c + a * s;
            }
        }
    }
}

fn check(
    name: &str,
    x: &[f32],
    heads: usize,
    head_dim: usize,
    positions: &[usize],
    cos: &[f32],
    sin: &[f32],
) {
    assert!(
        head_dim > 0 && head_dim.is_multiple_of(2),
        "{name}: head_dim {head_dim} must be even and positive"
    );
    assert_eq!(
        x.len(),
        positions.len() * heads * head_dim,
        "{name}: x length must be positions.len() · heads · head_dim"
    );
    assert_eq!(
        cos.len(),
        sin.len(),
        "{name}: cos and sin tables differ in length"
    );
    let h = head_dim / 2;
    assert_eq!(
        cos.len() % h,
        0,
        "{name}: table length is not a multiple of head_dim / 2"
    );
    let max_pos = cos.len() / h;
    if let Some(&p) = positions.iter().find(|&&p| p >= max_pos) {
        panic!("{name}: position {p} is beyond the tables' max_pos {max_pos}");
    }
}

simd_entry!(fn rows_at => rows(
    x: &mut [f32],
    heads: usize,
    d: usize,
    positions: &[usize],
    cos: &[f32],
    sin: &[f32],
    layout: RopeLayout,
));

/// Whole rows of `heads · d` elements, one position each.
#[inline(always)]
unsafe fn rows<S: Simd>(
    x: &mut [f32],
    heads: usize,
    d: usize,
    positions: &[usize],
    cos: &[f32],
    sin: &[f32],
    layout: RopeLayout,
) {
    let h = d / 2;
    // Interleaved pairs sit in adjacent lanes: expand cos to [c0, c0, c1, c1, …] and sin to
    // [−s0, s0, −s1, s1, …] once per row, then every head is x·cos + swap_pairs(x)·sin.
    let mut table = match layout {
        RopeLayout::HalfSplit => Vec::new(),
        RopeLayout::Interleaved => vec![0f32; 2 * d],
    };
    for (xr, &p) in x.chunks_exact_mut(heads * d).zip(positions) {
        let (c, s) = (&cos[p * h..(p + 1) * h], &sin[p * h..(p + 1) * h]);
        match layout {
            RopeLayout::HalfSplit => {
                for head in xr.chunks_exact_mut(d) {
                    half_split::<S>(head.as_mut_ptr(), c.as_ptr(), s.as_ptr(), h);
                }
            }
            RopeLayout::Interleaved => {
                let (cd, sd) = table.split_at_mut(d);
                for i in 0..h {
                    (cd[2 * i], cd[2 * i + 1]) = (c[i], c[i]);
                    (sd[2 * i], sd[2 * i + 1]) = (-s[i], s[i]);
                }
                for head in xr.chunks_exact_mut(d) {
                    interleaved::<S>(head.as_mut_ptr(), cd.as_ptr(), sd.as_ptr(), d);
                }
            }
        }
    }
}

/// One head, pairs `(i, i + h)`: `x` holds `2h` elements, `c`, `s` hold `h`.
#[inline(always)]
unsafe fn half_split<S: Simd>(x: *mut f32, c: *const f32, s: *const f32, h: usize) {
    let mut i = 0;
    while i < h {
        let v = (h - i).min(S::LANES);
        let a = load_n::<S>(x.add(i), v, 0.0);
        let b = load_n::<S>(x.add(h + i), v, 0.0);
        let (cv, sv) = (load_n::<S>(c.add(i), v, 0.0), load_n::<S>(s.add(i), v, 0.0));
        store_n::<S>(x.add(i), S::fnma(b, sv, S::mul(a, cv)), v);
        store_n::<S>(x.add(h + i), S::fma(a, sv, S::mul(b, cv)), v);
        i += v;
    }
}

/// One head, pairs `(2i, 2i + 1)`: `x`, `cd`, `sd` hold `d` (even) elements. The rounding is the
/// same as [`half_split`]'s: the `cos` product rounds, the `sin` product fuses.
#[inline(always)]
unsafe fn interleaved<S: Simd>(x: *mut f32, cd: *const f32, sd: *const f32, d: usize) {
    let mut i = 0;
    while i < d {
        // `v` is even (d and LANES are), so no pair straddles a vector.
        let v = (d - i).min(S::LANES);
        let xv = load_n::<S>(x.add(i), v, 0.0);
        let y = S::mul(xv, load_n::<S>(cd.add(i), v, 0.0));
        let y = S::fma(S::swap_pairs(xv), load_n::<S>(sd.add(i), v, 0.0), y);
        store_n::<S>(x.add(i), y, v);
        i += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::{assert_close, fill, pool};
    use proptest::prelude::*;

    const LAYOUTS: [RopeLayout; 2] = [RopeLayout::HalfSplit, RopeLayout::Interleaved];

    /// Each output is `a·c ∓ b·s` with |c|, |s| ≤ 1: the fast path fuses one product (one rounding
    /// fewer than the reference), so the two differ by ≤ 2 ulp of |a| + |b| ≤ 2·max|x|, i.e.
    /// ≤ 4.8e-7·max|x|. Cancellation rules out a relative bound, hence atol = 1e-6·max|x|.
    fn check_all(seq: usize, heads: usize, d: usize, seed: u64) -> Result<(), TestCaseError> {
        let max_pos = 4096;
        let (cos, sin) = rope_tables(d, max_pos, 10_000.0);
        let x = fill(seq * heads * d, seed, 4.0);
        let pos: Vec<usize> = fill(seq, !seed, 1.0)
            .iter()
            .map(|v| ((v + 0.5) * max_pos as f32) as usize % max_pos)
            .collect();
        let atol = 1e-6 * x.iter().fold(0f32, |m, v| m.max(v.abs()));
        for layout in LAYOUTS {
            let mut want = x.clone();
            rope_ref(&mut want, heads, d, &pos, &cos, &sin, layout);
            for level in cpu::available() {
                for t in [1, 2] {
                    let mut got = x.clone();
                    pool(t)
                        .install(|| rope_with(level, &mut got, heads, d, &pos, &cos, &sin, layout));
                    let what = format!("{level:?} {layout:?} t{t} {seq}x{heads}x{d}");
                    assert_close(&got, &want, atol, 0.0, &what)?;
                }
            }
        }
        Ok(())
    }

    fn head_dim() -> impl Strategy<Value = usize> {
        prop_oneof![
            2 => prop::sample::select(vec![2usize, 4, 14, 16, 18, 30, 32, 34, 62, 64, 66, 128, 256]),
            1 => (1usize..150).prop_map(|h| 2 * h),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn rope_matches_ref(seq in prop_oneof![0usize..5, 30usize..40], heads in 0usize..5, d in head_dim(), seed: u64) {
            check_all(seq, heads, d, seed)?;
        }
    }

    #[test]
    fn large_every_level() {
        check_all(16, 32, 128, 3).unwrap();
        // Past PAR_STREAM, so two threads split it.
        check_all(80, 32, 128, 4).unwrap();
        check_all(11, 7, 4096 / 7 * 2, 5).unwrap();
    }

    #[test]
    fn position_zero_is_the_identity() {
        let (cos, sin) = rope_tables(34, 2, 500_000.0);
        let x = fill(3 * 34, 1, 10.0);
        for level in cpu::available() {
            for layout in LAYOUTS {
                let mut y = x.clone();
                rope_with(level, &mut y, 3, 34, &[0], &cos, &sin, layout);
                assert_eq!(y, x, "{level:?} {layout:?}");
            }
        }
    }

    #[test]
    fn known_rotation() {
        // head_dim 2 has θ₀ = 1, so position 1 turns (1, 0) by one radian and (0, 2) to
        // (−2 sin 1, 2 cos 1).
        let (cos, sin) = rope_tables(2, 2, 10_000.0);
        let (c, s) = (1f32.cos(), 1f32.sin());
        for level in cpu::available() {
            let mut x = [1.0, 0.0, 0.0, 2.0];
            rope_with(
                level,
                &mut x,
                2,
                2,
                &[1],
                &cos,
                &sin,
                RopeLayout::Interleaved,
            );
            let want = [c, s, -2.0 * s, 2.0 * c];
            assert!(
                x.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
                "{x:?}"
            );
        }
        // head_dim 4, θ = [1, 1/100]: entry [3, 1] is cos(0.03).
        let (cos, _) = rope_tables(4, 5, 10_000.0);
        assert_eq!(cos[3 * 2 + 1], 0.03f64.cos() as f32);
    }

    #[test]
    fn rotating_back_restores_x() {
        let (cos, sin) = rope_tables(64, 100, 10_000.0);
        let neg: Vec<f32> = sin.iter().map(|s| -s).collect();
        let x = fill(5 * 4 * 64, 9, 2.0);
        let pos = [0, 3, 17, 42, 99];
        for level in cpu::available() {
            for layout in LAYOUTS {
                let mut y = x.clone();
                rope_with(level, &mut y, 4, 64, &pos, &cos, &sin, layout);
                rope_with(level, &mut y, 4, 64, &pos, &cos, &neg, layout);
                for (a, b) in y.iter().zip(&x) {
                    assert!((a - b).abs() < 1e-6, "{level:?} {layout:?} {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn layouts_agree_under_the_pair_permutation() {
        // Interleaved on x equals HalfSplit on x with each head de-interleaved, bit for bit.
        let (d, heads) = (40, 3);
        let (cos, sin) = rope_tables(d, 64, 10_000.0);
        let x = fill(2 * heads * d, 4, 2.0);
        let perm = |v: &[f32]| -> Vec<f32> {
            v.chunks(d)
                .flat_map(|hd| {
                    (0..d).map(move |j| {
                        if j < d / 2 {
                            hd[2 * j]
                        } else {
                            hd[2 * (j - d / 2) + 1]
                        }
                    })
                })
                .collect()
        };
        for level in cpu::available() {
            let mut a = x.clone();
            rope_with(
                level,
                &mut a,
                heads,
                d,
                &[5, 63],
                &cos,
                &sin,
                RopeLayout::Interleaved,
            );
            let mut b = perm(&x);
            rope_with(
                level,
                &mut b,
                heads,
                d,
                &[5, 63],
                &cos,
                &sin,
                RopeLayout::HalfSplit,
            );
            assert_eq!(perm(&a), b, "{level:?}");
        }
    }

    #[test]
    fn scores_depend_only_on_the_relative_position() {
        let d = 128;
        let (cos, sin) = rope_tables(d, 64, 10_000.0);
        let (q, k) = (fill(d, 1, 2.0), fill(d, 2, 2.0));
        let score = |pq: usize, pk: usize| -> f32 {
            let (mut q, mut k) = (q.clone(), k.clone());
            rope(&mut q, 1, d, &[pq], &cos, &sin, RopeLayout::HalfSplit);
            rope(&mut k, 1, d, &[pk], &cos, &sin, RopeLayout::HalfSplit);
            q.iter().zip(&k).map(|(a, b)| a * b).sum()
        };
        let (s1, s2) = (score(5, 3), score(50, 48));
        assert!((s1 - s2).abs() < 1e-4 * s1.abs().max(1.0), "{s1} vs {s2}");
    }

    #[test]
    #[should_panic(expected = "rope: head_dim 3 must be even")]
    fn odd_head_dim_panics() {
        rope(
            &mut [0.0; 3],
            1,
            3,
            &[0],
            &[1.0; 4],
            &[0.0; 4],
            RopeLayout::HalfSplit,
        );
    }

    #[test]
    #[should_panic(expected = "rope: position 4 is beyond the tables' max_pos 4")]
    fn position_past_the_tables_panics() {
        let (cos, sin) = rope_tables(2, 4, 10_000.0);
        rope(&mut [0.0; 2], 1, 2, &[4], &cos, &sin, RopeLayout::HalfSplit);
    }
}

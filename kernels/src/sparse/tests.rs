//! Tests of the sparse kernels against their reference twins and against the dense product.
use super::*;
use crate::gemv::{matmul_nt_ref, WeightKind};
use half::{bf16, f16};
use proptest::prelude::*;

fn fill(n: usize, seed: u64) -> Vec<f32> {
    crate::testing::lcg_values(n, seed, 1.0)
}

/// A sparse matrix in one format, built from a dense `[n, k]` one.
#[derive(Clone, Debug)]
enum Enc {
    Bitmask {
        bits: Vec<u8>,
        offsets: Vec<usize>,
    },
    Nm {
        n_keep: usize,
        m_group: usize,
        bits: Vec<u8>,
    },
    Csr {
        indptr: Vec<usize>,
        indices: Vec<u32>,
    },
}

/// The kept values (row-major) and the encoding of `w` (zeros are not kept, except that an N:M
/// mask keeps exactly the positions it was made with).
fn encode(w: &[f32], n: usize, k: usize, kind: &Enc) -> (Vec<f32>, Enc) {
    let rb = k.div_ceil(8);
    let mut vals = Vec::new();
    let mut bits = vec![0u8; n * rb];
    let mut offsets = Vec::with_capacity(n);
    let mut indptr = vec![0];
    let mut indices = Vec::new();
    for r in 0..n {
        offsets.push(vals.len());
        for c in 0..k {
            if w[r * k + c] != 0.0 {
                bits[r * rb + c / 8] |= 1 << (c % 8);
                vals.push(w[r * k + c]);
                indices.push(c as u32);
            }
        }
        indptr.push(vals.len());
    }
    let enc = match kind {
        Enc::Bitmask { .. } => Enc::Bitmask { bits, offsets },
        Enc::Csr { .. } => Enc::Csr { indptr, indices },
        Enc::Nm {
            n_keep, m_group, ..
        } => Enc::Nm {
            n_keep: *n_keep,
            m_group: *m_group,
            bits,
        },
    };
    (vals, enc)
}

/// A dense `[n, k]` matrix with the given share of zeros (in %), some rows empty and some full
/// when `rows_mixed`.
fn sparse_dense(n: usize, k: usize, sparsity: u32, rows_mixed: bool, seed: u64) -> Vec<f32> {
    let v = fill(n * k, seed);
    let keep = fill(n * k, seed ^ 0x9e37_79b9);
    let mut w = vec![0f32; n * k];
    for r in 0..n {
        let mode = if rows_mixed { r % 5 } else { 4 };
        for c in 0..k {
            let u = keep[r * k + c] + 0.5; // uniform in [0, 1)
            let kept = match mode {
                0 => false,
                1 => true,
                _ => u >= sparsity as f32 / 100.0,
            };
            if kept {
                // Never exactly zero, so "kept" and "nonzero" agree.
                w[r * k + c] = if v[r * k + c] == 0.0 {
                    0.25
                } else {
                    v[r * k + c]
                };
            }
        }
    }
    w
}

/// A dense `[n, k]` matrix with exactly `n_keep` nonzeros in every group of `m_group` columns.
fn nm_dense(n: usize, k: usize, n_keep: usize, m_group: usize, seed: u64) -> Vec<f32> {
    let v = fill(n * k, seed);
    let pick = fill(n * k, seed ^ 0x51ed);
    let mut w = vec![0f32; n * k];
    for r in 0..n {
        for g in (0..k).step_by(m_group) {
            let mut idx: Vec<usize> = (g..g + m_group).collect();
            idx.sort_by(|&a, &b| pick[r * k + a].total_cmp(&pick[r * k + b]));
            for &c in &idx[..n_keep] {
                w[r * k + c] = if v[r * k + c] == 0.0 {
                    0.5
                } else {
                    v[r * k + c]
                };
            }
        }
    }
    w
}

/// The three products of one encoded matrix, fast (at `level`) or reference.
struct Case<'a, W> {
    m: usize,
    n: usize,
    k: usize,
    enc: &'a Enc,
    vals: &'a [W],
}

impl<W: WeightElem> Case<'_, W> {
    fn nt(&self, level: Option<Level>, x: &[f32], y: &mut [f32]) {
        let (m, n, k, v) = (self.m, self.n, self.k, self.vals);
        match (self.enc, level) {
            (Enc::Bitmask { bits, offsets }, Some(l)) => {
                bitmask_matmul_nt_with(l, m, n, k, x, bits, offsets, v, y)
            }
            (Enc::Bitmask { bits, offsets }, None) => {
                bitmask_matmul_nt_ref(m, n, k, x, bits, offsets, v, y)
            }
            (
                Enc::Nm {
                    n_keep,
                    m_group,
                    bits,
                },
                Some(l),
            ) => nm_matmul_nt_with(l, m, n, k, x, *n_keep, *m_group, bits, v, y),
            (
                Enc::Nm {
                    n_keep,
                    m_group,
                    bits,
                },
                None,
            ) => nm_matmul_nt_ref(m, n, k, x, *n_keep, *m_group, bits, v, y),
            (Enc::Csr { indptr, indices }, Some(l)) => {
                csr_matmul_nt_with(l, m, n, k, x, indptr, indices, v, y)
            }
            (Enc::Csr { indptr, indices }, None) => {
                csr_matmul_nt_ref(m, n, k, x, indptr, indices, v, y)
            }
        }
    }
    fn nn(&self, level: Option<Level>, dy: &[f32], dx: &mut [f32]) {
        let (m, n, k, v) = (self.m, self.n, self.k, self.vals);
        match (self.enc, level) {
            (Enc::Bitmask { bits, offsets }, Some(l)) => {
                bitmask_matmul_nn_with(l, m, n, k, dy, bits, offsets, v, dx)
            }
            (Enc::Bitmask { bits, offsets }, None) => {
                bitmask_matmul_nn_ref(m, n, k, dy, bits, offsets, v, dx)
            }
            (
                Enc::Nm {
                    n_keep,
                    m_group,
                    bits,
                },
                Some(l),
            ) => nm_matmul_nn_with(l, m, n, k, dy, *n_keep, *m_group, bits, v, dx),
            (
                Enc::Nm {
                    n_keep,
                    m_group,
                    bits,
                },
                None,
            ) => nm_matmul_nn_ref(m, n, k, dy, *n_keep, *m_group, bits, v, dx),
            (Enc::Csr { indptr, indices }, Some(l)) => {
                csr_matmul_nn_with(l, m, n, k, dy, indptr, indices, v, dx)
            }
            (Enc::Csr { indptr, indices }, None) => {
                csr_matmul_nn_ref(m, n, k, dy, indptr, indices, v, dx)
            }
        }
    }
    fn wg(&self, level: Option<Level>, dy: &[f32], x: &[f32], dv: &mut [f32]) {
        let (m, n, k) = (self.m, self.n, self.k);
        match (self.enc, level) {
            (Enc::Bitmask { bits, offsets }, Some(l)) => {
                bitmask_weight_grad_with(l, m, n, k, dy, x, bits, offsets, dv)
            }
            (Enc::Bitmask { bits, offsets }, None) => {
                bitmask_weight_grad_ref(m, n, k, dy, x, bits, offsets, dv)
            }
            (
                Enc::Nm {
                    n_keep,
                    m_group,
                    bits,
                },
                Some(l),
            ) => nm_weight_grad_with(l, m, n, k, dy, x, *n_keep, *m_group, bits, dv),
            (
                Enc::Nm {
                    n_keep,
                    m_group,
                    bits,
                },
                None,
            ) => nm_weight_grad_ref(m, n, k, dy, x, *n_keep, *m_group, bits, dv),
            (Enc::Csr { indptr, indices }, Some(l)) => {
                csr_weight_grad_with(l, m, n, k, dy, x, indptr, indices, dv)
            }
            (Enc::Csr { indptr, indices }, None) => {
                csr_weight_grad_ref(m, n, k, dy, x, indptr, indices, dv)
            }
        }
    }
}

/// `|a - b| ≤ tol · (len + 1) · scale[i]`, where `scale[i]` is Σ|terms| of element i (the
/// reference run on absolute values): the f32 rounding bound of a sum of `len` products.
fn close(what: &str, a: &[f32], b: &[f32], scale: &[f32], len: usize) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.len(), b.len());
    for (i, ((a, b), s)) in a.iter().zip(b).zip(scale).enumerate() {
        let tol = 2e-6 * (len as f32 + 1.0) * s + 1e-30;
        prop_assert!((a - b).abs() <= tol, "{what} [{i}] {a} vs {b} (scale {s})");
    }
    Ok(())
}

/// Every product of `w` (dense `[n, k]`) in format `kind`, every level and value type, against
/// the references, on `threads` threads.
fn check_all(
    m: usize,
    n: usize,
    k: usize,
    w: &[f32],
    kind: &Enc,
    threads: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let (vals, enc) = encode(w, n, k, kind);
    let x = fill(m * k, seed);
    let dy = fill(m * n, seed ^ 7);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    check_type::<f32>(m, n, k, &vals, &enc, &x, &dy, &pool)?;
    let vb: Vec<bf16> = vals.iter().map(|&v| bf16::from_f32(v)).collect();
    check_type(m, n, k, &vb, &enc, &x, &dy, &pool)?;
    let vh: Vec<f16> = vals.iter().map(|&v| f16::from_f32(v)).collect();
    check_type(m, n, k, &vh, &enc, &x, &dy, &pool)?;
    Ok(())
}

fn check_type<W: WeightElem>(
    m: usize,
    n: usize,
    k: usize,
    vals: &[W],
    enc: &Enc,
    x: &[f32],
    dy: &[f32],
    pool: &rayon::ThreadPool,
) -> Result<(), TestCaseError> {
    let case = Case { m, n, k, enc, vals };
    let abs_vals: Vec<f32> = vals.iter().map(|v| v.to_f32().abs()).collect();
    let abs = Case {
        m,
        n,
        k,
        enc,
        vals: &abs_vals[..],
    };
    let (ax, ady): (Vec<f32>, Vec<f32>) = (
        x.iter().map(|v| v.abs()).collect(),
        dy.iter().map(|v| v.abs()).collect(),
    );
    let (mut ry, mut sy) = (vec![0f32; m * n], vec![0f32; m * n]);
    case.nt(None, x, &mut ry);
    abs.nt(None, &ax, &mut sy);
    let (mut rdx, mut sdx) = (vec![0f32; m * k], vec![0f32; m * k]);
    case.nn(None, dy, &mut rdx);
    abs.nn(None, &ady, &mut sdx);
    let (mut rdv, mut sdv) = (vec![0f32; vals.len()], vec![0f32; vals.len()]);
    case.wg(None, dy, x, &mut rdv);
    abs.wg(None, &ady, &ax, &mut sdv);
    for level in cpu::available() {
        let what = |op: &str| format!("{op} {enc:?} {:?} {level:?} m{m} n{n} k{k}", W::KIND);
        let mut y = vec![f32::NAN; m * n];
        let mut dx = vec![f32::NAN; m * k];
        let mut dv = vec![f32::NAN; vals.len()];
        pool.install(|| {
            case.nt(Some(level), x, &mut y);
            case.nn(Some(level), dy, &mut dx);
            case.wg(Some(level), dy, x, &mut dv);
        });
        close(&what("nt"), &y, &ry, &sy, k)?;
        close(&what("nn"), &dx, &rdx, &sdx, n)?;
        close(&what("weight_grad"), &dv, &rdv, &sdv, m)?;
    }
    Ok(())
}

fn dims() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(15),
        Just(16),
        Just(17),
        Just(31),
        Just(33),
        Just(37),
        Just(53),
        1usize..80
    ]
}

fn ms() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(2),
        Just(3),
        Just(7),
        Just(8),
        Just(16),
        Just(17),
        Just(64),
        Just(65)
    ]
}

fn sparsities() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), Just(50), Just(70), Just(90), Just(100)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    /// Bitmask and CSR: every kernel, level and value type equals its reference.
    #[test]
    fn bitmask_and_csr_match_ref(
        m in ms(), n in dims(), k in dims(), sparsity in sparsities(),
        mixed: bool, two: bool, seed: u64,
    ) {
        let w = sparse_dense(n, k, sparsity, mixed, seed);
        let t = if two { 2 } else { 1 };
        let bm = Enc::Bitmask { bits: vec![], offsets: vec![] };
        check_all(m, n, k, &w, &bm, t, seed)?;
        let csr = Enc::Csr { indptr: vec![], indices: vec![] };
        check_all(m, n, k, &w, &csr, t, seed)?;
    }

    /// N:M (2:4, 4:8, 1:4): every kernel, level and value type equals its reference.
    #[test]
    fn nm_matches_ref(
        m in ms(), n in dims(), groups in prop_oneof![Just(0usize), Just(1), Just(4), Just(5), 1usize..20],
        nm in prop_oneof![Just((2usize, 4usize)), Just((4, 8)), Just((1, 4))],
        two: bool, seed: u64,
    ) {
        let (n_keep, m_group) = nm;
        let k = groups * m_group;
        let w = nm_dense(n, k, n_keep, m_group, seed);
        let kind = Enc::Nm { n_keep, m_group, bits: vec![] };
        check_all(m, n, k, &w, &kind, if two { 2 } else { 1 }, seed)?;
    }
}

/// One large matrix (several tasks, several column blocks, a partial tail chunk) in every
/// format, for decode, a middle and a large batch.
#[test]
fn large_every_format() {
    let (n, k) = (300, 700);
    for m in [1, 17, 65] {
        for sparsity in [50, 90] {
            let w = sparse_dense(n, k, sparsity, true, 11);
            for kind in [
                Enc::Bitmask {
                    bits: vec![],
                    offsets: vec![],
                },
                Enc::Csr {
                    indptr: vec![],
                    indices: vec![],
                },
            ] {
                check_all(m, n, k, &w, &kind, 2, 5).unwrap();
            }
        }
        let w = nm_dense(n, k, 2, 4, 3);
        let kind = Enc::Nm {
            n_keep: 2,
            m_group: 4,
            bits: vec![],
        };
        check_all(m, n, k, &w, &kind, 2, 5).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// The sparse product equals the dense reference on the densified matrix, at the best level.
    #[test]
    fn sparse_equals_dense(
        m in prop_oneof![Just(1usize), Just(8), Just(17)], n in dims(), k in dims(),
        sparsity in sparsities(), seed: u64,
    ) {
        let k = k.next_multiple_of(4);
        let w = sparse_dense(n, k, sparsity, true, seed);
        let wnm = nm_dense(n, k, 2, 4, seed);
        let x = fill(m * k, seed ^ 3);
        for (w, kind) in [
            (&w, Enc::Bitmask { bits: vec![], offsets: vec![] }),
            (&w, Enc::Csr { indptr: vec![], indices: vec![] }),
            (&wnm, Enc::Nm { n_keep: 2, m_group: 4, bits: vec![] }),
        ] {
            let (vals, enc) = encode(w, n, k, &kind);
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let vb: Vec<bf16> = vals.iter().map(|&v| bf16::from_f32(v)).collect();
            let mut dense = vec![0f32; m * n];
            matmul_nt_ref(m, n, k, &x, &wb, &mut dense);
            let mut y = vec![f32::NAN; m * n];
            Case { m, n, k, enc: &enc, vals: &vb[..] }.nt(Some(cpu::detect()), &x, &mut y);
            for (i, (a, b)) in y.iter().zip(&dense).enumerate() {
                prop_assert!((a - b).abs() <= 1e-5 * (k as f32 + 1.0), "{enc:?} [{i}] {a} vs {b}");
            }
        }
    }
}

/// Set padding bits past `k` are not columns: they change nothing.
#[test]
fn padding_bits_ignored() {
    let (m, n, k) = (1, 5, 13);
    let w = sparse_dense(n, k, 50, false, 9);
    let (vals, enc) = encode(
        &w,
        n,
        k,
        &Enc::Bitmask {
            bits: vec![],
            offsets: vec![],
        },
    );
    let Enc::Bitmask { bits, offsets } = enc else {
        unreachable!()
    };
    let mut dirty = bits.clone();
    for r in 0..n {
        dirty[r * 2 + 1] |= 0b1110_0000;
    }
    let x = fill(m * k, 1);
    for level in cpu::available() {
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        bitmask_matmul_nt_with(level, m, n, k, &x, &bits, &offsets, &vals, &mut a);
        bitmask_matmul_nt_with(level, m, n, k, &x, &dirty, &offsets, &vals, &mut b);
        assert_eq!(a, b, "{level:?}");
    }
}

/// A mask that selects more values than exist panics instead of reading past them.
#[test]
#[should_panic(expected = "bitmask_matmul_nt")]
fn too_many_bits_panics() {
    let bits = [0xffu8, 0xff];
    let vals = [1f32; 10];
    let mut y = [0f32; 1];
    bitmask_matmul_nt(1, 1, 16, &[1.0; 16], &bits, &[0], &vals, &mut y);
}

#[test]
fn weight_kind_is_f32_for_f32() {
    assert_eq!(<f32 as WeightElem>::KIND, WeightKind::F32);
}

/// Decode of very sparse matrices (density below `x86::COMPRESS_MAX_DENSITY`), which takes the
/// compress kernel on CPUs with AVX512-VBMI2: words with at most 16 and with more kept columns,
/// tails of every length, rows at the end of the values (masked loads), N:M at 1:8.
#[test]
fn very_sparse_decode_matches_ref() {
    for &(n, k) in &[
        (1, 64),
        (7, 65),
        (37, 127),
        (5, 128),
        (9, 200),
        (33, 700),
        (4, 1536),
    ] {
        for sparsity in [90, 95, 100] {
            let mut w = sparse_dense(n, k, sparsity, false, 5 + k as u64);
            // One dense stretch in the first row: a 64-column word with more than 16 kept.
            for v in w.iter_mut().take(k.min(64)) {
                if *v == 0.0 {
                    *v = 0.5;
                }
            }
            for kind in [
                Enc::Bitmask {
                    bits: vec![],
                    offsets: vec![],
                },
                Enc::Csr {
                    indptr: vec![],
                    indices: vec![],
                },
            ] {
                check_all(1, n, k, &w, &kind, 2, 9).unwrap();
            }
        }
        if k % 8 == 0 {
            let w = nm_dense(n, k, 1, 8, 4);
            let kind = Enc::Nm {
                n_keep: 1,
                m_group: 8,
                bits: vec![],
            };
            check_all(1, n, k, &w, &kind, 2, 6).unwrap();
        }
    }
}

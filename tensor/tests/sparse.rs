//! Native sparse types: dense ↔ sparse round trips over edge shapes, sparsities and dtypes,
//! conversions between formats, checked constructors that reject every broken invariant (and
//! never panic on garbage), safetensors save/load in the compressed-tensors layout, and the
//! N:M structure check.

use proptest::prelude::*;
use shears_tensor::sparse::{self, Bitmask, Csr, NmSparse, SparseRef, SparseTensor};
use shears_tensor::{io, DType, Error, Tensor};
use std::collections::BTreeMap;

// ---------------------------------------------------------------- helpers

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// A deterministic xorshift stream.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `rows × cols` values, a `pct`% share of them zero (some of those `-0.0`); the nonzeros are
/// multiples of 1/8 below 32, exact in f16 and bf16.
fn matrix(rows: usize, cols: usize, pct: u64, seed: u64) -> Vec<f32> {
    let mut g = Lcg(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    (0..rows * cols)
        .map(|_| {
            if g.below(100) < pct {
                if g.below(4) == 0 {
                    -0.0
                } else {
                    0.0
                }
            } else {
                let k = g.below(255) as f32 + 1.0;
                let s = if g.below(2) == 0 { 1.0 } else { -1.0 };
                s * k / 8.0
            }
        })
        .collect()
}

fn tensor(data: &[f32], rows: usize, cols: usize, dtype: DType) -> Tensor {
    Tensor::from_slice(data, [rows, cols])
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// The bits of every element as f32 (exact for f16/bf16), so that `-0.0` and `+0.0` differ.
fn bits_of(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// What `to_dense` must give back: pruned positions (zeros, `-0.0` included) are `+0.0`.
fn expected(data: &[f32], rows: usize, cols: usize, dtype: DType) -> Vec<u32> {
    let d: Vec<f32> = data
        .iter()
        .map(|&v| if v == 0.0 { 0.0 } else { v })
        .collect();
    bits_of(&tensor(&d, rows, cols, dtype))
}

/// `data` with the unmasked positions set to `+0.0`.
fn apply_mask(data: &[f32], mask: &[bool]) -> Vec<f32> {
    data.iter()
        .zip(mask)
        .map(|(&v, &k)| if k { v } else { 0.0 })
        .collect()
}

fn nonzeros(data: &[f32]) -> usize {
    data.iter().filter(|v| **v != 0.0).count()
}

/// Zeroes the extra nonzeros of every group of `m` so that at most `n` remain.
fn prune_nm(data: &mut [f32], cols: usize, n: usize, m: usize) {
    for row in data.chunks_mut(cols.max(1)) {
        for g in row.chunks_mut(m) {
            let mut kept = 0;
            for v in g.iter_mut() {
                if *v != 0.0 {
                    kept += 1;
                    if kept > n {
                        *v = 0.0;
                    }
                }
            }
        }
    }
}

#[track_caller]
fn assert_sparse_err<T: std::fmt::Debug>(r: shears_tensor::Result<T>, needle: &str) {
    match r {
        Err(Error::SparseFormat { msg, .. }) => assert!(
            msg.contains(needle),
            "message `{msg}` does not mention `{needle}`"
        ),
        other => panic!("expected a SparseFormat error mentioning `{needle}`, got {other:?}"),
    }
}

fn f32_values(v: &[f32]) -> Tensor {
    Tensor::from_slice(v, v.len()).unwrap()
}

/// Edge shapes and random ones.
fn shapes() -> impl Strategy<Value = (usize, usize)> {
    prop_oneof![
        prop::sample::select(vec![
            (0, 0),
            (1, 1),
            (1, 17),
            (17, 1),
            (37, 53),
            (0, 5),
            (5, 0),
            (3, 8),
            (4, 9)
        ]),
        (0usize..24, 0usize..40),
    ]
}

fn sparsities() -> impl Strategy<Value = u64> {
    prop::sample::select(vec![0u64, 50, 70, 90, 100])
}

fn dtypes() -> impl Strategy<Value = DType> {
    prop::sample::select(DTYPES.to_vec())
}

fn nm_pattern() -> impl Strategy<Value = (usize, usize)> {
    prop::sample::select(vec![
        (2usize, 4usize),
        (1, 4),
        (4, 8),
        (1, 2),
        (3, 5),
        (8, 16),
    ])
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- round trips

proptest! {
    #![proptest_config(config())]

    #[test]
    fn csr_and_bitmask_round_trip_exactly(
        (rows, cols) in shapes(), pct in sparsities(), dtype in dtypes(), seed in any::<u64>()
    ) {
        let data = matrix(rows, cols, pct, seed);
        let t = tensor(&data, rows, cols, dtype);
        let want = expected(&data, rows, cols, dtype);
        let nnz = nonzeros(&data);
        let total = rows * cols;
        let density = if total == 0 { 1.0 } else { nnz as f64 / total as f64 };

        let csr = Csr::from_dense(&t).unwrap();
        prop_assert_eq!(bits_of(&csr.to_dense().unwrap()), want.clone());
        prop_assert_eq!(csr.nnz(), nnz);
        prop_assert_eq!(csr.dtype(), dtype);
        prop_assert_eq!(csr.shape(), [rows, cols]);
        prop_assert!((csr.density() - density).abs() < 1e-12);
        prop_assert!((csr.sparsity() - (1.0 - density)).abs() < 1e-12);
        prop_assert!((sparse::sparsity_of(&t) - csr.sparsity()).abs() < 1e-12 || total == 0);

        let bm = Bitmask::from_dense(&t).unwrap();
        prop_assert_eq!(bits_of(&bm.to_dense().unwrap()), want.clone());
        prop_assert_eq!(bm.nnz(), nnz);
        prop_assert_eq!(bm.bits().len(), rows * cols.div_ceil(8));
        prop_assert_eq!(bm.row_offsets().len(), rows);
        prop_assert_eq!(bm.dtype(), dtype);

        // The checked constructors accept what from_dense built.
        let (ip, ix) = (csr.indptr().to_vec(), csr.indices().to_vec());
        let csr2 = Csr::new(rows, cols, ip, ix, csr.values().clone()).unwrap();
        prop_assert_eq!(bits_of(&csr2.to_dense().unwrap()), want.clone());
        let (bits, offs) = (bm.bits().to_vec(), bm.row_offsets().to_vec());
        let bm2 = Bitmask::new(rows, cols, bits, offs, bm.values().clone()).unwrap();
        prop_assert_eq!(bits_of(&bm2.to_dense().unwrap()), want.clone());

        // Conversions preserve the matrix and share the values.
        let b_from_c = csr.to_bitmask();
        prop_assert_eq!(b_from_c.bits(), bm.bits());
        prop_assert_eq!(b_from_c.row_offsets(), bm.row_offsets());
        let c_from_b = bm.to_csr();
        prop_assert_eq!(c_from_b.indptr(), csr.indptr());
        prop_assert_eq!(c_from_b.indices(), csr.indices());
        prop_assert!(c_from_b.values().same_storage(bm.values()));
        prop_assert_eq!(bits_of(&c_from_b.to_dense().unwrap()), want);
    }

    #[test]
    fn nm_round_trips_exactly(
        rows in 0usize..20, groups in 0usize..6, (n, m) in nm_pattern(), pct in sparsities(),
        dtype in dtypes(), seed in any::<u64>()
    ) {
        let cols = groups * m;
        let mut data = matrix(rows, cols, pct, seed);
        prune_nm(&mut data, cols, n, m);
        let t = tensor(&data, rows, cols, dtype);
        let want = expected(&data, rows, cols, dtype);
        prop_assert!(sparse::is_nm(&t, n, m).unwrap());

        let nm = NmSparse::from_dense(&t, n, m).unwrap();
        prop_assert_eq!(bits_of(&nm.to_dense().unwrap()), want.clone());
        prop_assert_eq!(nm.nnz(), rows * groups * n);
        prop_assert_eq!((nm.n(), nm.m(), nm.row_nnz()), (n, m, groups * n));
        if rows * cols > 0 {
            prop_assert!((nm.density() - n as f64 / m as f64).abs() < 1e-12);
        }
        let nm2 = NmSparse::new(rows, cols, n, m, nm.bits().to_vec(), nm.values().clone()).unwrap();
        prop_assert_eq!(bits_of(&nm2.to_dense().unwrap()), want.clone());

        // N:M → bitmask → N:M is the identity (values shared); → CSR keeps the padded zeros.
        let bm = nm.to_bitmask();
        prop_assert_eq!(bm.bits(), nm.bits());
        prop_assert_eq!(bm.nnz(), nm.nnz());
        let back = bm.to_nm(n, m).unwrap();
        prop_assert_eq!(back.bits(), nm.bits());
        prop_assert!(back.values().same_storage(nm.values()));
        let csr = nm.to_csr();
        prop_assert_eq!(csr.nnz(), nm.nnz());
        prop_assert_eq!(bits_of(&csr.to_dense().unwrap()), want.clone());

        // From the pruned (unpadded) bitmask and CSR: groups are padded again.
        let from_b = Bitmask::from_dense(&t).unwrap().to_nm(n, m).unwrap();
        prop_assert_eq!(from_b.bits(), nm.bits());
        prop_assert_eq!(bits_of(&from_b.to_dense().unwrap()), want.clone());
        let from_c = Csr::from_dense(&t).unwrap().to_nm(n, m).unwrap();
        prop_assert_eq!(from_c.bits(), nm.bits());
        prop_assert_eq!(bits_of(from_c.values()), bits_of(nm.values()));
    }

    #[test]
    fn masks_keep_exactly_the_masked_positions(
        (rows, cols) in shapes(), pct in sparsities(), dtype in dtypes(), seed in any::<u64>()
    ) {
        let data = matrix(rows, cols, pct, seed);
        let t = tensor(&data, rows, cols, dtype);
        let mut g = Lcg(seed | 1);
        let mask: Vec<bool> = (0..rows * cols).map(|_| g.below(2) == 0).collect();
        let masked = apply_mask(&data, &mask);
        // Masked zeros are stored as they are (a kept -0.0 stays -0.0).
        let want = bits_of(&tensor(&masked, rows, cols, dtype));
        let kept = mask.iter().filter(|k| **k).count();

        let csr = Csr::from_dense_mask(&t, &mask).unwrap();
        prop_assert_eq!(csr.nnz(), kept);
        let bm = Bitmask::from_dense_mask(&t, &mask).unwrap();
        prop_assert_eq!(bm.nnz(), kept);
        // Unmasked positions are +0.0; masked ones keep their bits.
        let wc = bits_of(&csr.to_dense().unwrap());
        let wb = bits_of(&bm.to_dense().unwrap());
        for i in 0..rows * cols {
            let w = if mask[i] { want[i] } else { 0 };
            prop_assert_eq!(wc[i], w);
            prop_assert_eq!(wb[i], w);
        }
    }

    #[test]
    fn nm_masks_pad_groups(
        rows in 0usize..12, groups in 0usize..5, (n, m) in nm_pattern(), dtype in dtypes(),
        seed in any::<u64>()
    ) {
        let cols = groups * m;
        let data = matrix(rows, cols, 0, seed);
        let t = tensor(&data, rows, cols, dtype);
        // A mask with at most n per group.
        let mut g = Lcg(seed | 1);
        let mut mask = vec![false; rows * cols];
        for grp in mask.chunks_mut(m) {
            let k = g.below(n as u64 + 1) as usize;
            for j in 0..k {
                grp[(j * 7 + g.below(m as u64) as usize) % m] = true;
            }
            while grp.iter().filter(|b| **b).count() > n {
                let i = grp.iter().position(|b| *b).unwrap();
                grp[i] = false;
            }
        }
        let nm = NmSparse::from_dense_mask(&t, &mask, n, m).unwrap();
        prop_assert_eq!(nm.nnz(), rows * groups * n);
        let masked = apply_mask(&data, &mask);
        let want = bits_of(&tensor(&masked, rows, cols, dtype));
        prop_assert_eq!(bits_of(&nm.to_dense().unwrap()), want);
    }

    #[test]
    fn dtype_conversion_converts_the_values(
        (rows, cols) in shapes(), pct in sparsities(), seed in any::<u64>(), to in dtypes()
    ) {
        let data = matrix(rows, cols, pct, seed);
        let t = tensor(&data, rows, cols, DType::F32);
        let want = bits_of(&t.to_dtype(to).unwrap());
        let neg0 = (-0.0f32).to_bits();
        let want: Vec<u32> = want.iter().map(|&b| if b == neg0 { 0 } else { b }).collect();
        let csr = Csr::from_dense(&t).unwrap().to_dtype(to).unwrap();
        prop_assert_eq!(csr.dtype(), to);
        prop_assert_eq!(bits_of(&csr.to_dense().unwrap()), want.clone());
        let bm = Bitmask::from_dense(&t).unwrap().to_dtype(to).unwrap();
        prop_assert_eq!(bits_of(&bm.to_dense().unwrap()), want);
    }
}

#[test]
fn weight_bytes_count_the_stored_parts() {
    let data = matrix(16, 64, 70, 7);
    let t = tensor(&data, 16, 64, DType::F32);
    let nnz = nonzeros(&data);
    let us = std::mem::size_of::<usize>();
    let bm = Bitmask::from_dense(&t).unwrap();
    assert_eq!(bm.weight_bytes(), 16 * 8 + 16 * us + nnz * 4);
    let csr = Csr::from_dense(&t).unwrap();
    assert_eq!(csr.weight_bytes(), 17 * us + nnz * 4 + nnz * 4);
    let mut d = data.clone();
    prune_nm(&mut d, 64, 2, 4);
    let nm = NmSparse::from_dense(&tensor(&d, 16, 64, DType::BF16), 2, 4).unwrap();
    assert_eq!(nm.weight_bytes(), 16 * 8 + 16 * 32 * 2);
    assert_eq!(SparseRef::from(&nm).weight_bytes(), nm.weight_bytes());
}

#[test]
fn from_dense_rejects_bad_inputs() {
    let t3 = Tensor::zeros([2, 2, 2], DType::F32).unwrap();
    assert!(matches!(
        Csr::from_dense(&t3),
        Err(Error::InvalidArgument { .. })
    ));
    let f64t = Tensor::zeros([2, 4], DType::F64).unwrap();
    assert!(matches!(
        Bitmask::from_dense(&f64t),
        Err(Error::UnsupportedDType { .. })
    ));
    let t = tensor(&[1., 2., 3., 0., 0., 0., 0., 0.], 2, 4, DType::F32);
    assert_sparse_err(
        NmSparse::from_dense(&t, 2, 4),
        "columns 0..4: 3 positions to keep, more than 2",
    );
    assert_sparse_err(NmSparse::from_dense(&t, 2, 3), "multiple of 3");
    assert_sparse_err(NmSparse::from_dense(&t, 4, 4), "0 < n < m");
    assert_sparse_err(NmSparse::from_dense(&t, 0, 4), "0 < n < m");
    assert_sparse_err(Csr::from_dense_mask(&t, &[true; 7]), "mask has 7 entries");
    assert_sparse_err(
        NmSparse::from_dense_mask(
            &t,
            &[true, true, true, false, false, false, false, false],
            2,
            4,
        ),
        "more than 2",
    );
    // A strided view is read in logical order.
    let tt = tensor(&[1., 0., 2., 0., 0., 3.], 2, 3, DType::F32)
        .t()
        .unwrap();
    let c = Csr::from_dense(&tt).unwrap();
    assert_eq!(c.indptr(), &[0, 1, 1, 3]);
    assert_eq!(c.indices(), &[0, 0, 1]);
}

#[test]
fn nm_padding_uses_the_lowest_free_columns() {
    // Group 0: only column 2 nonzero → columns 0 and 2 kept. Group 1: all zero → 4, 5.
    let t = tensor(&[0., 0., 7., 0., 0., 0., 0., 0.], 1, 8, DType::F32);
    let nm = NmSparse::from_dense(&t, 2, 4).unwrap();
    assert_eq!(nm.bits(), &[0b0011_0101]);
    assert_eq!(nm.values_as::<f32>().unwrap(), &[0., 7., 0., 0.]);
    // -0.0 counts as zero.
    let t = tensor(&[-0.0, 1., -0.0, 2.], 1, 4, DType::F32);
    assert_eq!(NmSparse::from_dense(&t, 2, 4).unwrap().bits(), &[0b1010]);
    assert_eq!(Bitmask::from_dense(&t).unwrap().nnz(), 2);
}

// ---------------------------------------------------------------- checked constructors

#[test]
fn csr_rejects_each_broken_invariant() {
    let v = |n: usize| f32_values(&vec![1.0; n]);
    assert_sparse_err(
        Csr::new(2, 3, vec![0, 1], vec![0], v(1)),
        "indptr has 2 entries",
    );
    assert_sparse_err(Csr::new(1, 3, vec![1, 1], vec![0], v(1)), "indptr[0] is 1");
    assert_sparse_err(
        Csr::new(2, 3, vec![0, 2, 1], vec![0, 1], v(2)),
        "indptr decreases at row 1",
    );
    assert_sparse_err(
        Csr::new(1, 3, vec![0, 1], vec![0, 1], v(2)),
        "indptr ends at 1 but there are 2 indices",
    );
    assert_sparse_err(
        Csr::new(1, 3, vec![0, 1], vec![3], v(1)),
        "column index 3 is out of range",
    );
    assert_sparse_err(
        Csr::new(1, 3, vec![0, 2], vec![1, 1], v(2)),
        "not strictly increasing",
    );
    assert_sparse_err(
        Csr::new(1, 3, vec![0, 2], vec![2, 0], v(2)),
        "not strictly increasing",
    );
    assert_sparse_err(
        Csr::new(1, 3, vec![0, 1], vec![0], v(2)),
        "values has 2 elements",
    );
    assert_sparse_err(
        Csr::new(
            1,
            3,
            vec![0, 1],
            vec![0],
            Tensor::from_vec(vec![1u8], 1).unwrap(),
        ),
        "values dtype u8",
    );
    assert_sparse_err(
        Csr::new(
            1,
            3,
            vec![0, 1],
            vec![0],
            Tensor::from_vec(vec![1f64], 1).unwrap(),
        ),
        "values dtype f64",
    );
    assert_sparse_err(
        Csr::new(
            1,
            3,
            vec![0, 1],
            vec![0],
            Tensor::ones([1, 1], DType::F32).unwrap(),
        ),
        "must be 1-D",
    );
    assert_sparse_err(
        Csr::new(usize::MAX, 2, vec![0], vec![], v(0)),
        "exceeds the largest supported dim",
    );
    // Empty matrices are fine.
    assert!(Csr::new(0, 0, vec![0], vec![], v(0)).is_ok());
    assert!(Csr::new(3, 0, vec![0; 4], vec![], v(0)).is_ok());
}

#[test]
fn bitmask_rejects_each_broken_invariant() {
    let v = |n: usize| f32_values(&vec![1.0; n]);
    assert_sparse_err(
        Bitmask::new(2, 10, vec![1, 0, 1], vec![0, 1], v(2)),
        "bitmask has 3 bytes, expected",
    );
    assert_sparse_err(
        Bitmask::new(1, 10, vec![0, 0b100], vec![0], v(1)),
        "padding bits set",
    );
    assert_sparse_err(
        Bitmask::new(1, 3, vec![0b1000], vec![0], v(1)),
        "padding bits set",
    );
    assert_sparse_err(
        Bitmask::new(2, 8, vec![1, 1], vec![0], v(2)),
        "row_offsets has 1 entries",
    );
    assert_sparse_err(
        Bitmask::new(2, 8, vec![0b11, 1], vec![0, 1], v(3)),
        "row_offsets[1] is 1",
    );
    assert_sparse_err(
        Bitmask::new(2, 8, vec![0b11, 1], vec![1, 3], v(3)),
        "row_offsets[0] is 1",
    );
    assert_sparse_err(
        Bitmask::new(2, 8, vec![0b11, 1], vec![0, 2], v(2)),
        "values has 2 elements, expected nnz = 3",
    );
    assert_sparse_err(
        Bitmask::new(
            1,
            8,
            vec![1],
            vec![0],
            Tensor::from_vec(vec![1u32], 1).unwrap(),
        ),
        "values dtype u32",
    );
    assert_sparse_err(
        Bitmask::new(usize::MAX, 16, vec![], vec![], v(0)),
        "exceeds the largest supported dim",
    );
    assert!(Bitmask::new(0, 0, vec![], vec![], v(0)).is_ok());
    assert!(Bitmask::new(2, 0, vec![], vec![0, 0], v(0)).is_ok());
}

#[test]
fn nm_rejects_each_broken_invariant() {
    let v = |n: usize| f32_values(&vec![1.0; n]);
    assert_sparse_err(NmSparse::new(1, 4, 0, 4, vec![0], v(0)), "need 0 < n < m");
    assert_sparse_err(NmSparse::new(1, 4, 4, 4, vec![0xf], v(4)), "need 0 < n < m");
    assert_sparse_err(NmSparse::new(1, 4, 2, 0, vec![0], v(0)), "need 0 < n < m");
    assert_sparse_err(NmSparse::new(1, 6, 2, 4, vec![0b11], v(2)), "multiple of 4");
    assert_sparse_err(
        NmSparse::new(2, 8, 2, 4, vec![0b11], v(2)),
        "bitmask has 1 bytes",
    );
    assert_sparse_err(
        NmSparse::new(1, 8, 2, 4, vec![0b0011_0111], v(4)),
        "row 0, columns 0..4: 3 bits set, expected exactly 2",
    );
    assert_sparse_err(
        NmSparse::new(2, 8, 2, 4, vec![0b0011_0011, 0b0001_0011], v(8)),
        "row 1, columns 4..8: 1 bits set",
    );
    assert_sparse_err(
        NmSparse::new(1, 4, 2, 4, vec![0b1_0011], v(2)),
        "padding bits set",
    );
    assert_sparse_err(
        NmSparse::new(1, 8, 2, 4, vec![0b0011_0011], v(3)),
        "values has 3 elements, expected nnz = 4",
    );
    // Groups wider than a byte and not aligned to bytes.
    assert_sparse_err(
        NmSparse::new(1, 16, 4, 16, vec![0xff, 0], v(4)),
        "8 bits set, expected exactly 4",
    );
    assert_sparse_err(
        NmSparse::new(1, 10, 1, 5, vec![0b0001_0001, 0], v(2)),
        "row 0, columns 0..5: 2 bits set",
    );
    assert_sparse_err(
        NmSparse::new(1, 10, 1, 5, vec![0b0000_0001, 0], v(2)),
        "row 0, columns 5..10: 0 bits set",
    );
    assert_sparse_err(
        NmSparse::new(1, 10, 1, 5, vec![0b0010_0001, 0b10], v(2)),
        "columns 5..10: 2 bits set",
    );
    assert!(NmSparse::new(1, 10, 1, 5, vec![0b0100_0001, 0], v(2)).is_ok());
    assert!(NmSparse::new(1, 10, 1, 5, vec![0b0000_0001, 0b10], v(2)).is_ok());
    assert_sparse_err(
        NmSparse::new(usize::MAX, 0, 2, 4, vec![], v(0)),
        "exceeds the largest supported dim",
    );
    assert!(NmSparse::new(0, 8, 2, 4, vec![], v(0)).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random parts never panic: either a valid matrix (whose dense form round-trips) or an error.
    #[test]
    fn garbage_parts_never_panic(
        rows in prop_oneof![0usize..6, Just(usize::MAX), Just(usize::MAX / 2)],
        cols in prop_oneof![0usize..20, Just(usize::MAX), Just(1usize << 40)],
        n in 0usize..6, m in 0usize..9,
        indptr in prop::collection::vec(prop_oneof![0usize..8, any::<usize>()], 0..8),
        indices in prop::collection::vec(prop_oneof![0u32..20, any::<u32>()], 0..8),
        bits in prop::collection::vec(any::<u8>(), 0..12),
        offs in prop::collection::vec(0usize..10, 0..7),
        nvals in 0usize..12,
        dt in prop::sample::select(
            vec![DType::F32, DType::F16, DType::BF16, DType::U8, DType::F64]
        ),
    ) {
        let vals = Tensor::ones(nvals, dt).unwrap();
        match Csr::new(rows, cols, indptr, indices, vals.clone()) {
            Ok(c) => {
                let d = c.to_dense().unwrap();
                prop_assert_eq!(Csr::from_dense(&d).unwrap().nnz(), c.nnz());
            }
            Err(e) => prop_assert!(matches!(e, Error::SparseFormat { .. }), "{e:?}"),
        }
        match Bitmask::new(rows, cols, bits.clone(), offs, vals.clone()) {
            Ok(b) => {
                let d = b.to_dense().unwrap();
                let again = Bitmask::from_dense(&d).unwrap();
                prop_assert_eq!(again.bits(), b.bits());
                let again = b.to_csr().to_bitmask();
                prop_assert_eq!(again.bits(), b.bits());
            }
            Err(e) => prop_assert!(matches!(e, Error::SparseFormat { .. }), "{e:?}"),
        }
        match NmSparse::new(rows, cols, n, m, bits, vals) {
            Ok(s) => {
                let d = s.to_dense().unwrap();
                prop_assert!(sparse::is_nm(&d, n, m).unwrap());
                let again = s.to_bitmask().to_nm(n, m).unwrap();
                prop_assert_eq!(again.bits(), s.bits());
            }
            Err(e) => prop_assert!(matches!(e, Error::SparseFormat { .. }), "{e:?}"),
        }
    }
}

// ---------------------------------------------------------------- structure checks

#[test]
fn is_nm_on_known_patterns() {
    let t = |v: &[f32], r, c| tensor(v, r, c, DType::F32);
    // 2:4 patterns, including groups with fewer than 2 nonzeros.
    assert!(sparse::is_nm(&t(&[1., 0., 2., 0., 0., 0., 0., 3.], 1, 8), 2, 4).unwrap());
    assert!(sparse::is_nm(&t(&[0., 0., 0., 0.], 1, 4), 2, 4).unwrap());
    assert!(sparse::is_nm(&t(&[1., 1., 0., 0., 0., 0., 1., 1.], 2, 4), 2, 4).unwrap());
    // -0.0 counts as zero.
    assert!(sparse::is_nm(&t(&[1., -0.0, 2., -0.0], 1, 4), 2, 4).unwrap());
    // Violations: three in one group; a NaN counts as nonzero.
    assert!(!sparse::is_nm(&t(&[1., 1., 1., 0., 0., 0., 0., 0.], 1, 8), 2, 4).unwrap());
    assert!(!sparse::is_nm(&t(&[0., 0., 0., 0., 1., 2., 3., 4.], 1, 8), 2, 4).unwrap());
    assert!(!sparse::is_nm(&t(&[1., f32::NAN, 2., 0.], 1, 4), 2, 4).unwrap());
    // Groups do not cross rows: two rows of [1, 1] under 2:4 would be fine either way, but with
    // cols = 4 and rows of three nonzeros each it is not.
    assert!(!sparse::is_nm(&t(&[1., 1., 1., 0., 0., 0., 0., 0.], 2, 4), 2, 4).unwrap());
    // cols not a multiple of m.
    assert!(!sparse::is_nm(&t(&[1., 0., 0., 0., 0., 0.], 1, 6), 2, 4).unwrap());
    // 4:8 and other dtypes.
    let h = tensor(&[1., 2., 3., 4., 0., 0., 0., 0.], 1, 8, DType::BF16);
    assert!(sparse::is_nm(&h, 4, 8).unwrap());
    assert!(!sparse::is_nm(&h, 2, 4).unwrap());
    let u = Tensor::from_vec(vec![1u8, 0, 0, 2], [1, 4]).unwrap();
    assert!(sparse::is_nm(&u, 2, 4).unwrap());
    // Errors: bad pattern, not 2-D.
    assert_sparse_err(sparse::is_nm(&h, 0, 8), "0 < n < m");
    assert_sparse_err(sparse::is_nm(&h, 8, 8), "0 < n < m");
    assert!(matches!(
        sparse::is_nm(&Tensor::zeros([8], DType::F32).unwrap(), 2, 4),
        Err(Error::InvalidArgument { .. })
    ));
    // Empty.
    assert!(sparse::is_nm(&Tensor::zeros([0, 8], DType::F32).unwrap(), 2, 4).unwrap());
}

#[test]
fn sparsity_of_counts_zeros() {
    let t = tensor(&[0., -0.0, 1., 2., 0., 3., 0., 0.], 2, 4, DType::F16);
    assert_eq!(sparse::sparsity_of(&t), 5.0 / 8.0);
    assert_eq!(
        sparse::sparsity_of(&Tensor::zeros([0, 3], DType::F32).unwrap()),
        0.0
    );
    let bm = Bitmask::from_dense(&t).unwrap();
    assert_eq!(bm.sparsity(), 5.0 / 8.0);
    assert_eq!(
        Csr::from_dense(&Tensor::zeros([0, 3], DType::F32).unwrap())
            .unwrap()
            .density(),
        1.0
    );
}

// ---------------------------------------------------------------- save / load

fn all_formats(dtype: DType, seed: u64) -> Vec<(String, SparseTensor, Vec<u32>)> {
    let mut out = Vec::new();
    for (i, (rows, cols)) in [(0usize, 0usize), (1, 1), (5, 17), (13, 24), (0, 8), (3, 0)]
        .into_iter()
        .enumerate()
    {
        let data = matrix(rows, cols, 70, seed + i as u64);
        let t = tensor(&data, rows, cols, dtype);
        let want = expected(&data, rows, cols, dtype);
        out.push((
            format!("b{i}"),
            Bitmask::from_dense(&t).unwrap().into(),
            want.clone(),
        ));
        out.push((format!("c{i}"), Csr::from_dense(&t).unwrap().into(), want));
    }
    for (i, (n, m)) in [(2usize, 4usize), (4, 8), (1, 4), (3, 5)]
        .into_iter()
        .enumerate()
    {
        for (j, rows) in [0usize, 1, 7].into_iter().enumerate() {
            let cols = 3 * m;
            let mut data = matrix(rows, cols, 60, seed + 100 + i as u64);
            prune_nm(&mut data, cols, n, m);
            let t = tensor(&data, rows, cols, dtype);
            let want = expected(&data, rows, cols, dtype);
            out.push((
                format!("model.layers.{j}.nm{n}_{m}"),
                NmSparse::from_dense(&t, n, m).unwrap().into(),
                want,
            ));
        }
    }
    out
}

#[test]
fn save_load_round_trip_every_format_and_dtype() {
    let dir = tempfile::tempdir().unwrap();
    for (k, dtype) in DTYPES.into_iter().enumerate() {
        let items = all_formats(dtype, k as u64 * 1000);
        let bias = Tensor::randn([5], 0.0, 1.0, DType::F32, 3).unwrap();
        let path = dir.path().join(format!("m{k}.safetensors"));
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        sparse::save_sparse(
            &path,
            items.iter().map(|(n, s, _)| (n.as_str(), s.view())),
            [("dense.bias", &bias)],
            Some(&meta),
        )
        .unwrap();
        assert_eq!(io::load_metadata(&path).unwrap().metadata, meta);

        let loaded = io::load(&path).unwrap();
        for (name, s, want) in &items {
            let back = sparse::load_sparse(&loaded, name).unwrap().unwrap();
            assert_eq!(back.format_name(), s.format_name(), "{name}");
            assert_eq!(back.shape(), s.shape());
            assert_eq!(back.nnz(), s.nnz());
            assert_eq!(back.dtype(), dtype);
            assert_eq!(&bits_of(&back.to_dense().unwrap()), want, "{name}");
        }
        assert!(sparse::load_sparse(&loaded, "dense.bias")
            .unwrap()
            .is_none());
        assert!(sparse::load_sparse(&loaded, "nope").unwrap().is_none());

        let (sp, dense) = sparse::split_sparse(loaded).unwrap();
        assert_eq!(sp.len(), items.len());
        assert_eq!(dense.keys().collect::<Vec<_>>(), vec!["dense.bias"]);
        assert_eq!(
            dense["dense.bias"].to_vec::<f32>().unwrap(),
            bias.to_vec::<f32>().unwrap()
        );
        for (name, _, want) in &items {
            assert_eq!(&bits_of(&sp[name].to_dense().unwrap()), want);
        }
    }
}

#[test]
fn stored_names_and_dtypes_follow_compressed_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ct.safetensors");
    let t = tensor(
        &[1., 0., 0., 2., 0., 3., 0., 4., 0., 0., 0., 0.],
        1,
        12,
        DType::BF16,
    );
    let bm = Bitmask::from_dense(&t).unwrap();
    let nm = NmSparse::from_dense(&t, 2, 4).unwrap();
    let nm48 = NmSparse::from_dense(
        &tensor(&[1., 0., 0., 2., 0., 3., 0., 4.], 1, 8, DType::F16),
        4,
        8,
    )
    .unwrap();
    let csr = Csr::from_dense(&t).unwrap();
    sparse::save_sparse(
        &path,
        [
            ("a.down_proj", SparseRef::from(&bm)),
            ("b.down_proj", (&nm).into()),
            ("c.down_proj", (&nm48).into()),
            ("d.down_proj", (&csr).into()),
        ],
        [] as [(&str, &Tensor); 0],
        None,
    )
    .unwrap();
    let header = io::load_metadata(&path).unwrap();
    let got: Vec<(&str, &str, Vec<usize>)> = header
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.dtype.as_str(), t.shape.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a.down_proj.bitmask", "U8", vec![1, 2]),
            ("a.down_proj.compressed", "BF16", vec![4]),
            ("a.down_proj.row_offsets", "I64", vec![1]),
            ("a.down_proj.shape", "I64", vec![2]),
            ("b.down_proj.bitmask", "U8", vec![1, 2]),
            ("b.down_proj.compressed", "BF16", vec![1, 6]),
            ("b.down_proj.shape", "I64", vec![2, 1]),
            ("c.down_proj.nm_bitmask", "U8", vec![1, 1]),
            ("c.down_proj.nm_shape", "I64", vec![4]),
            ("c.down_proj.nm_values", "F16", vec![1, 4]),
            ("d.down_proj.indices", "U32", vec![4]),
            ("d.down_proj.indptr", "I64", vec![2]),
            ("d.down_proj.shape", "I64", vec![2]),
            ("d.down_proj.values", "BF16", vec![4]),
        ]
    );
    assert_eq!(sparse::module_prefix("x.q_proj.weight"), "x.q_proj");
    assert_eq!(sparse::module_prefix("x.q_proj.bias"), "x.q_proj.bias");
    assert_eq!(SparseRef::from(&bm).format_name(), "sparse-bitmask");
    assert_eq!(SparseRef::from(&nm).format_name(), "sparse-24-bitmask");
}

/// The compressed-tensors README example, built as its `BitmaskCompressor` writes it:
/// `[[0, 0, 0], [1, 1, 1]]` → bitmask `[[0], [7]]`, row_offsets `[0, 0]`.
#[test]
fn reads_a_compressed_tensors_bitmask() {
    let map = BTreeMap::from([
        (
            "t.shape".to_string(),
            Tensor::from_vec(vec![2i64, 3], [2]).unwrap(),
        ),
        (
            "t.compressed".to_string(),
            Tensor::from_vec(vec![1f32; 3], [3]).unwrap(),
        ),
        (
            "t.bitmask".to_string(),
            Tensor::from_vec(vec![0u8, 7], [2, 1]).unwrap(),
        ),
        (
            "t.row_offsets".to_string(),
            Tensor::from_vec(vec![0i64, 0], [2]).unwrap(),
        ),
    ]);
    let Some(SparseTensor::Bitmask(b)) = sparse::load_sparse(&map, "t").unwrap() else {
        panic!("expected a bitmask")
    };
    assert_eq!(
        b.to_dense().unwrap().to_vec2::<f32>().unwrap(),
        vec![vec![0., 0., 0.], vec![1., 1., 1.]]
    );
    // sparse-24-bitmask: shape [2, 1], compressed [rows, cols/2], no row_offsets.
    let map = BTreeMap::from([
        (
            "u.shape".to_string(),
            Tensor::from_vec(vec![1i64, 4], [2, 1]).unwrap(),
        ),
        (
            "u.compressed".to_string(),
            Tensor::from_vec(vec![5f32, 6.], [1, 2]).unwrap(),
        ),
        (
            "u.bitmask".to_string(),
            Tensor::from_vec(vec![0b1010u8], [1, 1]).unwrap(),
        ),
    ]);
    let Some(SparseTensor::Nm(s)) = sparse::load_sparse(&map, "u").unwrap() else {
        panic!("expected 2:4")
    };
    assert_eq!(
        s.to_dense().unwrap().to_vec::<f32>().unwrap(),
        vec![0., 5., 0., 6.]
    );
}

/// A valid bitmask part map for `w` (2 × 10, f32), to corrupt one part at a time.
fn bitmask_parts() -> BTreeMap<String, Tensor> {
    let t = tensor(&matrix(2, 10, 50, 11), 2, 10, DType::F32);
    let b = Bitmask::from_dense(&t).unwrap();
    SparseRef::from(&b)
        .to_tensors("w")
        .unwrap()
        .into_iter()
        .collect()
}

#[track_caller]
fn assert_load_err(map: &BTreeMap<String, Tensor>, prefix: &str, needle: &str) {
    assert_sparse_err(sparse::load_sparse(map, prefix), needle);
}

#[test]
fn loader_rejects_corrupted_parts() {
    let ok = bitmask_parts();
    assert!(sparse::load_sparse(&ok, "w").unwrap().is_some());
    let with = |k: &str, t: Tensor| {
        let mut m = ok.clone();
        m.insert(k.to_string(), t);
        m
    };
    let without = |k: &str| {
        let mut m = ok.clone();
        m.remove(k);
        m
    };
    let i64s = |v: Vec<i64>, s: &[usize]| Tensor::from_vec(v, s).unwrap();
    let offs = ok["w.row_offsets"].to_vec::<i64>().unwrap();
    let bits = ok["w.bitmask"].to_vec::<u8>().unwrap();
    let vals = ok["w.compressed"].to_vec::<f32>().unwrap();

    assert_load_err(&without("w.shape"), "w", "`w.shape`: is missing");
    assert_load_err(&without("w.compressed"), "w", "`w.compressed`: is missing");
    // Bad shapes.
    assert_load_err(
        &with("w.shape", i64s(vec![2, 10, 1], &[3])),
        "w",
        "`w.shape`: has shape [3]",
    );
    assert_load_err(
        &with("w.shape", i64s(vec![-2, 10], &[2])),
        "w",
        "holds -2 (negative)",
    );
    assert_load_err(
        &with("w.shape", i64s(vec![2, 17], &[2])),
        "w",
        "`w.bitmask`: has shape [2, 2], expected",
    );
    assert_load_err(
        &with("w.shape", i64s(vec![3, 10], &[2])),
        "w",
        "`w.bitmask`: has shape",
    );
    // Wrong dtypes.
    assert_load_err(
        &with("w.shape", Tensor::from_vec(vec![2f32, 10.], [2]).unwrap()),
        "w",
        "`w.shape`: has dtype f32, expected i64",
    );
    assert_load_err(
        &with(
            "w.bitmask",
            Tensor::from_vec(bits.iter().map(|&b| b as u32).collect::<Vec<_>>(), [2, 2]).unwrap(),
        ),
        "w",
        "`w.bitmask`: has dtype u32, expected u8",
    );
    assert_load_err(
        &with(
            "w.compressed",
            ok["w.compressed"].to_dtype(DType::F64).unwrap(),
        ),
        "w",
        "values dtype f64",
    );
    // Offsets inconsistent with the popcounts; negative offsets; wrong length.
    let mut bad = offs.clone();
    bad[1] += 1;
    assert_load_err(
        &with("w.row_offsets", i64s(bad, &[2])),
        "w",
        "`w`: row_offsets[1]",
    );
    assert_load_err(
        &with("w.row_offsets", i64s(vec![0, -1], &[2])),
        "w",
        "`w.row_offsets`: holds -1",
    );
    assert_load_err(
        &with("w.row_offsets", i64s(vec![0], &[1])),
        "w",
        "`w.row_offsets`: has shape [1]",
    );
    // Bits set in the padding of the last byte of a row.
    let mut pb = bits.clone();
    pb[1] |= 0b1000_0000;
    assert_load_err(
        &with("w.bitmask", Tensor::from_vec(pb, [2, 2]).unwrap()),
        "w",
        "padding bits set",
    );
    // Truncated or extra values.
    assert_load_err(
        &with("w.compressed", f32_values(&vals[..vals.len() - 1])),
        "w",
        "values has",
    );
    let mut more = vals.clone();
    more.push(1.0);
    assert_load_err(&with("w.compressed", f32_values(&more)), "w", "values has");
    // Two formats under one prefix.
    assert_load_err(
        &with("w.indptr", i64s(vec![0, 0, 0], &[3])),
        "w",
        "more than one sparse format",
    );
    // A dense tensor named like the prefix.
    assert_sparse_err(
        sparse::split_sparse(with("w", Tensor::zeros([2, 10], DType::F32).unwrap())),
        "both as a dense tensor and as a sparse one",
    );
}

#[test]
fn loader_rejects_corrupted_nm_and_csr_parts() {
    let t = tensor(&[1., 0., 2., 0., 0., 3., 0., 4.], 1, 8, DType::F32);
    let nm24: BTreeMap<_, _> = SparseRef::from(&NmSparse::from_dense(&t, 2, 4).unwrap())
        .to_tensors("q")
        .unwrap()
        .into_iter()
        .collect();
    let mut m = nm24.clone();
    m.insert(
        "q.bitmask".into(),
        Tensor::from_vec(vec![0b0111_0101u8], [1, 1]).unwrap(),
    );
    assert_load_err(&m, "q", "3 bits set, expected exactly 2");
    let mut m = nm24.clone();
    m.insert(
        "q.compressed".into(),
        Tensor::from_vec(vec![1f32, 2., 3., 4.], [4]).unwrap(),
    );
    assert_load_err(&m, "q", "`q.compressed`: has shape [4], expected [1, 4]");
    let mut m = nm24.clone();
    m.insert(
        "q.shape".into(),
        Tensor::from_vec(vec![1i64, 6], [2, 1]).unwrap(),
    );
    m.insert(
        "q.bitmask".into(),
        Tensor::from_vec(vec![0b0101u8], [1, 1]).unwrap(),
    );
    assert_load_err(&m, "q", "multiple of 4");

    let nm48: BTreeMap<_, _> = SparseRef::from(&NmSparse::from_dense(&t, 4, 8).unwrap())
        .to_tensors("r")
        .unwrap()
        .into_iter()
        .collect();
    assert!(sparse::load_sparse(&nm48, "r").unwrap().is_some());
    let mut m = nm48.clone();
    m.insert(
        "r.nm_shape".into(),
        Tensor::from_vec(vec![1i64, 8, 8, 8], [4]).unwrap(),
    );
    assert_load_err(&m, "r", "0 < n < m");
    let mut m = nm48.clone();
    m.insert(
        "r.nm_shape".into(),
        Tensor::from_vec(vec![1i64, 8], [2]).unwrap(),
    );
    assert_load_err(&m, "r", "`r.nm_shape`: has shape [2], expected [4]");

    let csr: BTreeMap<_, _> = SparseRef::from(&Csr::from_dense(&t).unwrap())
        .to_tensors("s")
        .unwrap()
        .into_iter()
        .collect();
    assert!(sparse::load_sparse(&csr, "s").unwrap().is_some());
    let mut m = csr.clone();
    m.insert(
        "s.indices".into(),
        Tensor::from_vec(vec![0u32, 2, 2, 7], [4]).unwrap(),
    );
    assert_load_err(&m, "s", "not strictly increasing");
    let mut m = csr.clone();
    m.insert(
        "s.indices".into(),
        Tensor::from_vec(vec![0i64, 2, 5, 1 << 40], [4]).unwrap(),
    );
    assert_load_err(&m, "s", "does not fit u32");
    let mut m = csr.clone();
    m.insert(
        "s.indptr".into(),
        Tensor::from_vec(vec![0i64, 5], [2]).unwrap(),
    );
    assert_load_err(&m, "s", "indptr ends at 5");
    let mut m = csr.clone();
    m.remove("s.values");
    assert_load_err(&m, "s", "`s.values`: is missing");
}

#[test]
fn corrupted_and_truncated_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let parts = bitmask_parts();
    io::save(parts.iter().map(|(k, v)| (k.as_str(), v)), &path, None).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    // Truncated: the reader refuses the file.
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    assert!(matches!(io::load(&cut), Err(Error::Format { .. })));
    // A flipped padding bit in the stored bitmask is caught when reassembling. The bitmask is
    // the only U8 tensor, so it is written last; its row 0 byte 1 is the third-last byte.
    let mut flipped = bytes.clone();
    let i = flipped.len() - 3;
    flipped[i] |= 0b1000_0000;
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, &flipped).unwrap();
    let loaded = io::load(&bad).unwrap();
    assert_load_err(&loaded, "w", "padding bits set");
    assert_sparse_err(sparse::split_sparse(loaded), "row 0: padding bits set");
    // The intact file loads, and the values borrow the memory map.
    let loaded = io::load(&path).unwrap();
    let Some(SparseTensor::Bitmask(b)) = sparse::load_sparse(&loaded, "w").unwrap() else {
        panic!()
    };
    assert!(b.values().is_mapped());
    // Saving a dense tensor under a sparse prefix, or a duplicate name, is refused.
    let z = Tensor::zeros([1], DType::F32).unwrap();
    assert!(matches!(
        sparse::save_sparse(
            dir.path().join("x.safetensors"),
            [("w", SparseRef::from(&b))],
            [("w", &z)],
            None
        ),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        sparse::save_sparse(
            dir.path().join("y.safetensors"),
            [("w", SparseRef::from(&b))],
            [("w.shape", &z)],
            None
        ),
        Err(Error::InvalidArgument { .. })
    ));
}

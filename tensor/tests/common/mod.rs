//! Shared test support: a plain reference tensor (f64, row-major, computed by explicit
//! multi-index arithmetic, independent of the crate's layout code) and proptest strategies that
//! build a `Tensor` together with its reference, including non-contiguous views.
#![allow(dead_code)]

use proptest::prelude::*;
use shears_tensor::{DType, Tensor};

/// Row-major f64 reference tensor.
#[derive(Debug, Clone)]
pub struct RefT {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Multi-index of flat position `i` in row-major `shape`.
pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

pub fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i)
}

impl RefT {
    pub fn from_fn(shape: &[usize], mut f: impl FnMut(&[usize]) -> f64) -> RefT {
        let data = (0..numel(shape)).map(|i| f(&unravel(i, shape))).collect();
        RefT {
            shape: shape.to_vec(),
            data,
        }
    }
    pub fn get(&self, idx: &[usize]) -> f64 {
        self.data[ravel(idx, &self.shape)]
    }
    pub fn map(&self, f: impl Fn(f64) -> f64) -> RefT {
        RefT {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&x| f(x)).collect(),
        }
    }
    /// Value at `idx` of this tensor broadcast to a larger `out` shape.
    pub fn get_broadcast(&self, idx: &[usize], out: &[usize]) -> f64 {
        let extra = out.len() - self.shape.len();
        let own: Vec<usize> = (0..self.shape.len())
            .map(|d| {
                if self.shape[d] == 1 {
                    0
                } else {
                    idx[extra + d]
                }
            })
            .collect();
        self.get(&own)
    }
}

/// numpy broadcast of two shapes (reference version).
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

/// Deterministic pseudo-random values in [-4, 4), exactly representable in f16/bf16/f32
/// (multiples of 1/16 with few significant bits).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed ^ 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) % 128) as f32 / 16.0 - 4.0
        })
        .collect()
}

/// A dim size drawn from the edge cases: 0, 1, small odd/even, primes, SIMD width ± 1.
pub fn dim_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        1 => Just(0usize),
        3 => Just(1usize),
        4 => 2usize..6,
        2 => prop_oneof![Just(7usize), Just(15), Just(16), Just(17)],
    ]
}

pub fn shape(max_rank: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(dim_size(), 0..=max_rank)
}

/// How the tensor under test is laid out.
#[derive(Debug, Clone, Copy)]
pub enum View {
    Contiguous,
    /// A transposed view of a tensor with the last two dims swapped.
    Transposed,
    /// A narrow of dim 0 of a larger tensor.
    Narrowed,
    /// A broadcast of a tensor whose dim 0 is 1.
    Broadcast,
}

pub fn view() -> impl Strategy<Value = View> {
    prop_oneof![
        Just(View::Contiguous),
        Just(View::Transposed),
        Just(View::Narrowed),
        Just(View::Broadcast)
    ]
}

/// Builds the tensor (in `dtype`) and its reference for `shape` laid out as `view`.
pub fn make(shape: &[usize], view: View, seed: u64, dtype: DType) -> (Tensor, RefT) {
    let rank = shape.len();
    let view = match view {
        View::Transposed if rank < 2 => View::Contiguous,
        View::Narrowed | View::Broadcast if rank < 1 => View::Contiguous,
        v => v,
    };
    let build = |base_shape: &[usize]| {
        let v = values(numel(base_shape), seed);
        let t = Tensor::from_vec(v.clone(), base_shape)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        // The reference holds exactly the values stored (after rounding to dtype).
        let r = RefT {
            shape: base_shape.to_vec(),
            data: t.to_vec_f64(),
        };
        (t, r)
    };
    match view {
        View::Contiguous => build(shape),
        View::Transposed => {
            let mut bs = shape.to_vec();
            bs.swap(rank - 2, rank - 1);
            let (t, base) = build(&bs);
            let r = RefT::from_fn(shape, |idx| {
                let mut j = idx.to_vec();
                j.swap(rank - 2, rank - 1);
                base.get(&j)
            });
            (t.t().unwrap(), r)
        }
        View::Narrowed => {
            let mut bs = shape.to_vec();
            bs[0] += 3;
            let (t, base) = build(&bs);
            let r = RefT::from_fn(shape, |idx| {
                let mut j = idx.to_vec();
                j[0] += 2;
                base.get(&j)
            });
            (t.narrow(0, 2, shape[0]).unwrap(), r)
        }
        View::Broadcast => {
            let mut bs = shape.to_vec();
            bs[0] = 1;
            let (t, base) = build(&bs);
            let r = RefT::from_fn(shape, |idx| {
                let mut j = idx.to_vec();
                j[0] = 0;
                base.get(&j)
            });
            (t.broadcast_as(shape).unwrap(), r)
        }
    }
}

/// A shape and a second shape that broadcasts with it (dims set to 1 or dropped).
pub fn broadcast_pair(max_rank: usize) -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    (shape(max_rank), any::<u64>()).prop_map(|(s, bits)| {
        let drop = (bits % (s.len() as u64 + 1)) as usize;
        let mut other: Vec<usize> = s[drop..].to_vec();
        for (i, d) in other.iter_mut().enumerate() {
            if bits >> (8 + i) & 1 == 1 {
                *d = 1;
            }
        }
        if bits >> 7 & 1 == 1 {
            (other, s)
        } else {
            (s, other)
        }
    })
}

pub fn float_dtype() -> impl Strategy<Value = DType> {
    prop_oneof![4 => Just(DType::F32), 1 => Just(DType::F64), 1 => Just(DType::F16), 1 => Just(DType::BF16)]
}

/// Compares a tensor with a reference within the dtype's tolerance (scaled by `scale`).
pub fn check(t: &Tensor, r: &RefT, scale: f64) -> Result<(), TestCaseError> {
    prop_assert_eq!(t.dims(), &r.shape[..]);
    let (atol, rtol) = shears_tensor::test_util::tolerance(t.dtype());
    if let Some((i, a, b)) = shears_tensor::test_util::first_mismatch(
        &t.to_vec_f64(),
        &r.data,
        atol * scale,
        rtol * scale,
    ) {
        return Err(TestCaseError::fail(format!(
            "element {i}: got {a}, expected {b} ({:?})",
            t.dtype()
        )));
    }
    Ok(())
}

//! Matrix products: 2-D, batched with numpy-broadcast batch dims, and vector cases as in
//! `torch.matmul`. Operands may be arbitrary strided views (e.g. `w.t()?`): the kernel reads them
//! through their strides without a copy.
//!
//! ```
//! use shears_tensor::{DType, Tensor};
//! let x = Tensor::randn([2, 5, 8], 0.0, 1.0, DType::F32, 0)?; // batch of 2
//! let w = Tensor::randn([3, 8], 0.0, 1.0, DType::F32, 1)?;    // [out, in] like nn.Linear
//! let y = x.matmul(&w.t()?)?;                                  // [2, 5, 3]
//! assert_eq!(y.dims(), &[2, 5, 3]);
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::layout::Layout;
use crate::storage::CpuStorage;
use crate::{DType, Error, Result, Shape, Tensor, WithDType};
use shears_kernels::gemm::{gemm, MatRef};
use shears_kernels::Float;

impl Tensor {
    /// Matrix product with `torch.matmul` semantics: `[.., m, k] · [.., k, n] → [.., m, n]` with
    /// broadcast batch dims; a 1-D left operand is a row vector and a 1-D right operand a column
    /// vector (that dim is dropped from the result). Float dtypes, both the same; f16/bf16 compute
    /// in f32.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        const OP: &str = "matmul";
        if self.dtype() != rhs.dtype() {
            return Err(Error::DTypeMismatch {
                op: OP,
                lhs: self.dtype(),
                rhs: rhs.dtype(),
            });
        }
        if !self.dtype().is_float() {
            return Err(Error::UnsupportedDType {
                op: OP,
                dtype: self.dtype(),
                expected: "a float dtype",
            });
        }
        if self.device() != rhs.device() {
            return Err(Error::DeviceMismatch {
                op: OP,
                lhs: self.device(),
                rhs: rhs.device(),
            });
        }
        if self.rank() == 0 || rhs.rank() == 0 {
            return Err(Error::shape_msg(
                OP,
                self.shape(),
                rhs.shape(),
                "operands need rank >= 1",
            ));
        }
        if matches!(self.dtype(), DType::F16 | DType::BF16) {
            let y = self
                .to_dtype(DType::F32)?
                .matmul(&rhs.to_dtype(DType::F32)?)?;
            return y.to_dtype(self.dtype());
        }
        let a = if self.rank() == 1 {
            self.unsqueeze(0)?
        } else {
            self.clone()
        };
        let b = if rhs.rank() == 1 {
            rhs.unsqueeze(1)?
        } else {
            rhs.clone()
        };
        let (ra, rb) = (a.rank(), b.rank());
        let (m, k) = (a.dims()[ra - 2], a.dims()[ra - 1]);
        let (k2, n) = (b.dims()[rb - 2], b.dims()[rb - 1]);
        if k != k2 {
            return Err(Error::shape_msg(
                OP,
                self.shape(),
                rhs.shape(),
                format!("inner dims differ: {k} vs {k2}"),
            ));
        }
        let batch = Shape::broadcast(OP, &a.dims()[..ra - 2].into(), &b.dims()[..rb - 2].into())
            .map_err(|_| Error::Broadcast {
                op: OP,
                lhs: self.shape().clone(),
                rhs: rhs.shape().clone(),
            })?;
        let with = |mn: [usize; 2]| -> Shape {
            let mut d = batch.dims().to_vec();
            d.extend_from_slice(&mn);
            d.into()
        };
        let a = a.broadcast_as(with([m, k]))?;
        let b = b.broadcast_as(with([k, n]))?;
        let out = match self.cpu() {
            CpuStorage::F32(_) => CpuStorage::F32(batched::<f32>(&a, &b, &batch, m, n, k).into()),
            CpuStorage::F64(_) => CpuStorage::F64(batched::<f64>(&a, &b, &batch, m, n, k).into()),
            _ => unreachable!("half dtypes converted above"),
        };
        let mut out_dims = with([m, n]).dims().to_vec();
        if rhs.rank() == 1 {
            out_dims.remove(out_dims.len() - 1);
        }
        if self.rank() == 1 {
            out_dims.remove(out_dims.len() - if rhs.rank() == 1 { 1 } else { 2 });
        }
        Ok(Tensor::from_cpu(out, out_dims.into()))
    }
}

/// Per-batch strided GEMMs over broadcast views `a: [batch.., m, k]`, `b: [batch.., k, n]`.
fn batched<T: Float + WithDType>(
    a: &Tensor,
    b: &Tensor,
    batch: &Shape,
    m: usize,
    n: usize,
    k: usize,
) -> Vec<T> {
    let sa = T::slice(a.cpu()).expect("dtype checked");
    let sb = T::slice(b.cpu()).expect("dtype checked");
    let r = a.rank();
    let la = a.layout();
    let lb = b.layout();
    let batch_offsets = |l: &Layout| -> Vec<usize> {
        Layout::new(batch.clone(), l.strides()[..r - 2].to_vec(), l.offset())
            .offsets()
            .collect()
    };
    let (oa, ob) = (batch_offsets(la), batch_offsets(lb));
    let mut out = vec![T::zero(); batch.elem_count() * m * n];
    if m * n == 0 {
        return out;
    }
    for ((c, &pa), &pb) in out.chunks_mut(m * n).zip(&oa).zip(&ob) {
        let am = MatRef::new(
            sa.get(pa..).unwrap_or(&[]),
            la.strides()[r - 2],
            la.strides()[r - 1],
        );
        let bm = MatRef::new(
            sb.get(pb..).unwrap_or(&[]),
            lb.strides()[r - 2],
            lb.strides()[r - 1],
        );
        gemm(m, n, k, am, bm, c);
    }
    out
}

//! Borrowing a tensor's elements as a plain slice, for code that hands them to kernels.
//!
//! ```
//! use shears_tensor::Tensor;
//! let t = Tensor::from_vec(vec![1f32, 2., 3., 4.], [2, 2])?;
//! assert_eq!(t.as_slice::<f32>()?, &[1., 2., 3., 4.]);
//! assert!(t.t()?.as_slice::<f32>().is_err()); // a transposed view is not row-major
//! # Ok::<(), shears_tensor::Error>(())
//! ```

use crate::{Error, Result, Tensor, WithDType};

impl Tensor {
    /// The elements in row-major order as a borrowed slice, without copying. Errors when `T` is
    /// not the tensor's dtype or the tensor is not contiguous (call [`Tensor::contiguous`] first).
    pub fn as_slice<T: WithDType>(&self) -> Result<&[T]> {
        if T::DTYPE != self.dtype() {
            return Err(Error::DTypeMismatch {
                op: "as_slice",
                lhs: self.dtype(),
                rhs: T::DTYPE,
            });
        }
        let s = T::slice(self.cpu()).expect("dtype checked above");
        match self.layout().contiguous_range() {
            Some(r) => Ok(&s[r]),
            None => Err(Error::invalid(
                "as_slice",
                format!(
                    "tensor of shape {} with strides {:?} is not contiguous",
                    self.shape(),
                    self.stride()
                ),
            )),
        }
    }
}

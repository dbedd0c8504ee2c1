//! `impl Tensor` blocks, one file per op family.

mod attention;
mod binary;
mod convert;
mod create;
mod index;
mod linalg;
mod loss;
mod matmul;
mod movement;
mod nn;
mod optim;
mod reduce;
mod slice;
mod sort;
mod unary;

pub use binary::{BinaryOp, CmpOp};
pub use nn::{RopeLayout, RopeTables};
pub use optim::AdamWStep;
pub use reduce::ReduceOp;
pub use unary::UnaryOp;

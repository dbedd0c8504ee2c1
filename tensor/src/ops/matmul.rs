//! matmul ops.

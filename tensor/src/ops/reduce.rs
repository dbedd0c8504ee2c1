//! Reductions.
/// Reduce ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// sum
    Sum,
}

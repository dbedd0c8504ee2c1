//! sort ops.

//! Cholesky and friends (filled in below).

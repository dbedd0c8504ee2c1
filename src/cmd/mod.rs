//! The verbs of the `shears` command line, one module each, and what they share: [`common`]
//! (the result type and exit code, `--threads`, progress bars, JSON lines) and [`model`] (the
//! model flags and loading, the default assets, greedy decoding).

pub mod bench;
pub mod bench_kernels;
pub mod bench_sparse;
pub mod bench_train;
pub mod common;
pub mod eval;
pub mod fetch;
pub mod finetune;
pub mod generate;
pub mod inspect;
pub mod model;
pub mod prune;
pub mod prune_bonsai;

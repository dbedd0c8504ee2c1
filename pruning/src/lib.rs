//! One-shot pruning for shears: magnitude, Wanda and SparseGPT, unstructured and N:M, on plain
//! row-major f32 weights (`[rows, cols]`, `rows` output features) and calibration inputs
//! (`[tokens, cols]`), and the layer-by-layer driver that applies them to a LLaMA
//! ([`calibrate`]).
//!
//! Pruners are two-phase, like the reference code's `add_batch` / `fasterprune`: a statistics
//! object `observe`s a layer's inputs window by window, then `prune`s each weight that reads that
//! input, in place, returning the mask and a [`LayerReport`]. Configuration goes in, results come
//! out; nothing is printed. For the driver, each method is a type implementing
//! [`PruningMethod`] ([`Magnitude`], [`Wanda`], [`SparseGpt`]), whose [`Observer`]s take the
//! layer's stage outputs as tensors and return a [`Decision`]: a mask, or a structural
//! [`Removal`] of heads and MLP channels (see [`method`]).
//!
//! ```
//! use shears_pruning::{magnitude_prune, SparseGptConfig, SparseGptStats, Sparsity, WandaStats};
//! let (rows, cols, tokens) = (4, 8, 32);
//! let x: Vec<f32> = (0..tokens * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
//! let w0: Vec<f32> = (0..rows * cols).map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0).collect();
//!
//! // Magnitude needs no calibration.
//! let mut w = w0.clone();
//! let p = magnitude_prune("mlp.up_proj", &mut w, rows, cols, &Sparsity::NM { n: 2, m: 4 })?;
//! assert_eq!(p.report.sparsity, 0.5);
//!
//! // Wanda and SparseGPT observe the inputs first (here two windows of 16 tokens at once).
//! let mut wanda = WandaStats::new("mlp.input", cols);
//! wanda.observe(&x, 2)?;
//! let mut w = w0.clone();
//! let p = wanda.prune("mlp.up_proj", &mut w, rows, cols, &Sparsity::Unstructured(0.5))?;
//! assert!(p.mask.chunks(cols).all(|row| row.iter().filter(|&&m| m).count() == 4));
//!
//! let mut sgpt = SparseGptStats::new("mlp.input", cols);
//! sgpt.observe(&x, 2)?;
//! let mut w = w0.clone();
//! let cfg = SparseGptConfig::new(Sparsity::Unstructured(0.5));
//! let p = sgpt.prune("mlp.up_proj", &mut w, rows, cols, &cfg)?;
//! assert!(p.report.sparsity >= 0.5);
//! println!("{}", serde_json::to_string(&p.report).unwrap());
//! # Ok::<(), shears_tensor::Error>(())
//! ```
//!
//! The exact definitions, and where they follow the reference code rather than the papers, are
//! in each module's documentation and in `shared/ALGORITHMS.md`.
#![warn(missing_docs)]

pub mod bonsai;
pub mod bonsai_fit;
pub mod calibrate;
pub mod distill;
pub mod finetune;
mod hessian;
mod magnitude;
pub mod method;
mod removal;
mod report;
mod sparsegpt;
mod sparsity;
mod wanda;

pub use magnitude::{magnitude_prune, Magnitude};
pub use method::{Decision, Observer, PruningMethod};
pub use removal::Removal;
pub use report::{LayerReport, Pruned};
pub use sparsegpt::{SparseGpt, SparseGptConfig, SparseGptStats};
pub use sparsity::Sparsity;
pub use wanda::{Wanda, WandaStats};

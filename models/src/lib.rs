//! LLaMA-family models for shears: layers whose fields equal checkpoint keys, the LLaMA model with
//! a KV cache and sampling, checkpoint loading (HF safetensors directories, GGUF files) and saving,
//! the tokenizer, and perplexity evaluation.
#![warn(missing_docs)]

// Modules (one line each; keep this list sorted).
pub mod config;
pub mod eval;
pub mod generate;
pub mod layers;
pub mod llama;
pub mod load;
pub mod tokenizer;

//! Whole-model gradient check: a tiny random LLaMA in f64 (two layers, grouped-query attention,
//! tied head) trained through [`Llama::params`] / [`Llama::set_params`]; the gradient of a
//! training loss for every trainable tensor against central finite differences, activation
//! checkpointing against the recorded graph, and the per-layer hidden states.
//!
//! Tolerances (as in `autograd/tests/common`). The central difference `(L(w+h) − L(w−h)) / 2h`
//! has a truncation error `h²/6 · L'''` (≈ 1e-13 for h = 1e-6 and L''' of order 1) and a rounding
//! error of about `ε · |terms of L| / h` (ε = 2.2e-16; the loss sums terms of order 10, so
//! ≈ 2e-9). We compare with `atol = 1e-8 · max(1, |L|)` and `rtol = 1e-6`: a few times the
//! rounding noise, far below what a wrong gradient rule gives (an error of order |gradient|).

use shears_autograd::nn::cross_entropy;
use shears_autograd::optim::Param;
use shears_autograd::{no_grad, Grads, Var};
use shears_models::config::LlamaConfig;
use shears_models::llama::{ForwardOptions, Llama, TrainSpec};
use shears_tensor::{DType, Tensor};
use std::path::Path;

const H: f64 = 1e-6;
const RTOL: f64 = 1e-6;
const ATOL: f64 = 1e-8;
/// Sampled entries per tensor (the tied embedding gets twice as many: rows that the batch
/// looks up, and rows that only the head reads).
const SAMPLES: usize = 6;
const IGNORE: i64 = -100;

/// 2 layers, 4 query heads sharing 2 KV heads of width 4, vocabulary 20, tied head.
const CONFIG: &str = r#"{"model_type": "llama", "vocab_size": 20, "hidden_size": 16,
  "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 16,
  "rope_theta": 10000.0, "tie_word_embeddings": true}"#;

/// Token ids `(2, 5)`: only ids below 12, so rows 12.. of the tied table get their gradient from
/// the head alone.
const IDS: [u32; 10] = [3, 7, 1, 11, 0, 5, 5, 9, 2, 8];
const BATCH: usize = 2;
const SEQ: usize = 5;

fn spec() -> TrainSpec {
    TrainSpec {
        projections: true,
        norms: true,
        embeddings: true,
        head: true,
    }
}

/// The f64 model with every trainable tensor re-drawn (projections and table with std 0.3, so
/// attention is far from uniform and every nonlinearity is in play; norm gains around 1), and
/// its parameters, already in place.
fn model() -> (Llama, Vec<Param>) {
    let config = LlamaConfig::from_json_str(CONFIG, Path::new("config.json")).unwrap();
    let mut model = Llama::random_with_dtype(&config, 7, DType::F64).unwrap();
    let params: Vec<Param> = model
        .params(spec())
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (mean, std) = if p.name().contains("norm") {
                (1.0, 0.3)
            } else {
                (0.0, 0.3)
            };
            let v = Tensor::randn(p.tensor().shape(), mean, std, DType::F64, 100 + i as u64);
            Param::new(p.name(), v.unwrap()).unwrap()
        })
        .collect();
    model.set_params(&params).unwrap();
    (model, params)
}

fn ids() -> Tensor {
    Tensor::from_vec(IDS.to_vec(), [BATCH, SEQ]).unwrap()
}

/// Next-token targets `[batch · seq]`: `ids` shifted left, the last position of each sequence
/// ignored.
fn targets() -> Tensor {
    let t: Vec<i64> = (0..BATCH * SEQ)
        .map(|i| match i % SEQ {
            j if j + 1 < SEQ => IDS[i + 1] as i64,
            _ => IGNORE,
        })
        .collect();
    Tensor::from_vec(t, [BATCH * SEQ]).unwrap()
}

/// The training loss: next-token cross-entropy of `forward_train`'s logits, plus a fixed random
/// projection of every decoder layer's output (the layer-wise distillation path), so gradients
/// also flow back through the hidden states [`ForwardOptions::hidden_states`] returns.
fn loss(model: &Llama, checkpointing: bool) -> Var {
    let opts = ForwardOptions {
        hidden_states: true,
        checkpointing,
    };
    let (logits, layers) = model.forward_train(&ids(), opts).unwrap();
    let v = model.config.vocab_size;
    assert_eq!(logits.dims(), &[BATCH, SEQ, v]);
    let flat = logits.reshape([BATCH * SEQ, v]).unwrap();
    let mut l = cross_entropy(&flat, &targets(), Some(IGNORE)).unwrap();
    for (i, h) in layers.iter().enumerate() {
        let r = Tensor::randn(h.shape(), 0.0, 0.05, DType::F64, 900 + i as u64).unwrap();
        l = l
            .add(&h.mul(&Var::constant(r)).unwrap().sum_all().unwrap())
            .unwrap();
    }
    l
}

fn scalar(v: &Var) -> f64 {
    v.tensor().to_vec_f64()[0]
}

/// Entries of a tensor to check: `SAMPLES` spread over it; for the embedding table, `SAMPLES`
/// in rows the batch looks up and `SAMPLES` in rows it does not.
fn sample(name: &str, dims: &[usize]) -> Vec<usize> {
    let n: usize = dims.iter().product();
    let spread = |k: usize, m: usize| (k * 7919 + 13) % m;
    if name == "model.embed_tokens.weight" {
        let d = dims[1];
        let (used, unused) = ([3usize, 5, 11, 0], [12usize, 15, 19]);
        let mut out: Vec<usize> = (0..SAMPLES)
            .map(|k| used[k % used.len()] * d + spread(k, d))
            .collect();
        out.extend((0..SAMPLES).map(|k| unused[k % unused.len()] * d + spread(k + 3, d)));
        return out;
    }
    (0..SAMPLES).map(|k| spread(k, n)).collect()
}

/// The loss with entry `j` of parameter `p` moved by `d` (under `no_grad`: nothing recorded).
fn loss_at(model: &Llama, p: &Param, j: usize, d: f64) -> f64 {
    let mut v = p.tensor().to_vec_f64();
    v[j] += d;
    let moved = Param::new(p.name(), Tensor::from_vec(v, p.tensor().shape()).unwrap()).unwrap();
    let mut m = model.clone();
    m.set_params(&[moved]).unwrap();
    no_grad(|| {
        let l = loss(&m, false);
        assert!(!l.requires_grad(), "no_grad recorded a graph");
        scalar(&l)
    })
}

fn grad_of<'a>(grads: &'a Grads, p: &Param) -> &'a Tensor {
    let g = grads
        .get(p.var())
        .unwrap_or_else(|| panic!("{}: no gradient", p.name()));
    assert_eq!(g.dims(), p.tensor().dims(), "{}: gradient shape", p.name());
    g
}

#[test]
fn every_parameter_gradient_matches_finite_differences() {
    let (model, params) = model();
    // 2 layers × (7 projections + 2 norms) + the final norm + the (tied) table.
    assert_eq!(params.len(), 20);
    assert!(params.iter().all(|p| p.name() != "lm_head.weight"));
    let l = loss(&model, false);
    let l0 = scalar(&l);
    assert!(l0.is_finite());
    let grads = l.backward().unwrap();
    let atol = ATOL * l0.abs().max(1.0);
    let (mut checked, mut worst) = (0, 0f64);
    for p in &params {
        let g = grad_of(&grads, p).to_vec_f64();
        assert!(
            g.iter().any(|&x| x.abs() > 1e-6),
            "{}: the gradient is zero",
            p.name()
        );
        for j in sample(p.name(), p.tensor().dims()) {
            let numeric = (loss_at(&model, p, j, H) - loss_at(&model, p, j, -H)) / (2.0 * H);
            // Written so that a NaN on either side fails.
            let close = (g[j] - numeric).abs() <= atol + RTOL * numeric.abs();
            assert!(
                close,
                "{} entry {j}: analytic {}, numeric {numeric} (atol {atol})",
                p.name(),
                g[j]
            );
            worst = worst.max((g[j] - numeric).abs() / (atol + RTOL * numeric.abs()));
            checked += 1;
        }
    }
    assert_eq!(checked, 21 * SAMPLES);
    eprintln!("{checked} entries; largest |analytic − numeric| is {worst:.3} of the tolerance");
}

/// The tied table's gradient is the lookup's plus the head's: rows the batch never looks up
/// still get the head's (nonzero) part, and the sum equals the two parts computed apart.
#[test]
fn the_tied_table_gets_gradient_from_lookup_and_head() {
    let (model, params) = model();
    let table = params
        .iter()
        .find(|p| p.name() == "model.embed_tokens.weight")
        .unwrap();
    let g = grad_of(&loss(&model, false).backward().unwrap(), table).to_vec_f64();
    let d = model.config.hidden_size;
    let row_norm = |r: usize| g[r * d..(r + 1) * d].iter().map(|x| x * x).sum::<f64>();
    for r in 12..20 {
        assert!(row_norm(r) > 0.0, "unused row {r} gets the head's gradient");
    }
    // Untie by hand: the lookup reads one leaf, the head another (same values).
    let mut split = model.clone();
    let head = Var::param(table.tensor().clone());
    split.lm_head = shears_models::layers::Linear::from_var(head.clone()).unwrap();
    let gs = loss(&split, false).backward().unwrap();
    let lookup = gs.get(table.var()).unwrap().to_vec_f64();
    let from_head = gs.get(&head).unwrap().to_vec_f64();
    for r in 12..20 {
        assert!(
            lookup[r * d..(r + 1) * d].iter().all(|&x| x == 0.0),
            "row {r} is not looked up"
        );
    }
    for (j, (&a, (&b, &c))) in g.iter().zip(lookup.iter().zip(&from_head)).enumerate() {
        assert!(
            (a - (b + c)).abs() <= 1e-12 * (1.0 + a.abs()),
            "[{j}] {a} vs {b} + {c}"
        );
    }
}

#[test]
fn checkpointing_gives_the_same_loss_and_gradients() {
    let (model, params) = model();
    let plain = loss(&model, false);
    let ckpt = loss(&model, true);
    let (a, b) = (scalar(&plain), scalar(&ckpt));
    assert!((a - b).abs() <= 1e-12 * a.abs().max(1.0), "loss {a} vs {b}");
    let (ga, gb) = (plain.backward().unwrap(), ckpt.backward().unwrap());
    for p in &params {
        let (x, y) = (grad_of(&ga, p).to_vec_f64(), grad_of(&gb, p).to_vec_f64());
        for (j, (u, w)) in x.iter().zip(&y).enumerate() {
            assert!(
                (u - w).abs() <= 1e-12 * u.abs().max(1.0),
                "{} [{j}]: {u} vs checkpointed {w}",
                p.name()
            );
        }
    }
}

#[test]
fn hidden_states_are_each_layers_output() {
    let (model, _) = model();
    let (b, t, d) = (BATCH, SEQ, model.config.hidden_size);
    for checkpointing in [false, true] {
        let opts = ForwardOptions {
            hidden_states: true,
            checkpointing,
        };
        let out = model.forward_batch(&ids(), None, opts).unwrap();
        assert_eq!(out.layers.len(), model.config.num_hidden_layers);
        assert_eq!(out.hidden.dims(), &[b, t, d]);
        // Each entry is the output of that layer run on the previous one's.
        let mut x = model
            .model
            .embed_tokens
            .forward(&ids(), DType::F64)
            .unwrap();
        for (i, h) in out.layers.iter().enumerate() {
            assert_eq!(h.dims(), &[b, t, d], "layer {i}");
            x = model.model.layers[i].forward(&x, None).unwrap();
            assert_eq!(
                h.tensor().to_vec_f64(),
                x.tensor().to_vec_f64(),
                "layer {i}"
            );
        }
        let normed = model
            .model
            .norm
            .forward(out.layers.last().unwrap())
            .unwrap();
        assert_eq!(
            normed.tensor().to_vec_f64(),
            out.hidden.tensor().to_vec_f64()
        );
        // Without the option no layer outputs are kept.
        let plain = ForwardOptions {
            hidden_states: false,
            checkpointing,
        };
        assert!(model
            .forward_batch(&ids(), None, plain)
            .unwrap()
            .layers
            .is_empty());
    }
}

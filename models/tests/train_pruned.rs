//! Pruned weights stay pruned while the model trains: a small random f32 LLaMA with half of every
//! decoder projection zeroed, trained with AdamW (weight decay on) through [`Llama::params`] /
//! [`Llama::set_params`], once with the projections dense under a fixed mask
//! ([`Llama::mask_pruned_projections`]) and once sparse ([`sparsify`], training the kept values).

use shears_autograd::nn::cross_entropy;
use shears_autograd::no_grad;
use shears_autograd::optim::{AdamW, Optimizer};
use shears_models::config::LlamaConfig;
use shears_models::layers::{Linear, Weight};
use shears_models::llama::{ForwardOptions, Llama, TrainSpec};
use shears_models::load::{sparsify, SparseLayout};
use shears_tensor::Tensor;
use std::path::Path;

const CONFIG: &str = r#"{"model_type": "llama", "vocab_size": 64, "hidden_size": 32,
  "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 64,
  "tie_word_embeddings": false}"#;
const LR: f64 = 1e-2;
const WEIGHT_DECAY: f64 = 0.1;
const STEPS: usize = 10;
/// Where the pruned and kept entries are checked: after a few steps and at the end.
const CHECK_AT: [usize; 2] = [3, STEPS];

/// A fixed batch `(2, 12)` of token ids and its next-token targets.
fn batch() -> (Tensor, Tensor) {
    let ids: Vec<u32> = (0..24u32).map(|i| (i * 37 + 11) % 64).collect();
    let targets: Vec<i64> = (0..24)
        .map(|i| {
            if i % 12 == 11 {
                -100
            } else {
                ids[i + 1] as i64
            }
        })
        .collect();
    (
        Tensor::from_vec(ids, [2, 12]).unwrap(),
        Tensor::from_vec(targets, [24]).unwrap(),
    )
}

fn loss(model: &Llama) -> shears_autograd::Var {
    let (ids, targets) = batch();
    let (logits, _) = model
        .forward_train(&ids, ForwardOptions::default())
        .unwrap();
    let flat = logits.reshape([24, model.config.vocab_size]).unwrap();
    cross_entropy(&flat, &targets, Some(-100)).unwrap()
}

/// Whether entry `j` of projection `k` (in [`Llama::layer_linears`] order over the layers) is
/// pruned: a fixed pseudo-random half (splitmix64 of the pair).
fn pruned(k: usize, j: usize) -> bool {
    let mut z = ((k as u64) << 32 | j as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) & 1 == 0
}

/// The random model with about half of every projection set to +0.0 (dense weights).
fn pruned_model() -> Llama {
    let config = LlamaConfig::from_json_str(CONFIG, Path::new("config.json")).unwrap();
    let mut model = Llama::random(&config, 5).unwrap();
    let mut k = 0;
    for l in &mut model.model.layers {
        for (_, lin) in Llama::layer_linears_mut(l) {
            let w = lin.weight_tensor().into_owned();
            let mut v = w.to_vec::<f32>().unwrap();
            for (j, x) in v.iter_mut().enumerate() {
                if pruned(k, j) {
                    *x = 0.0;
                }
            }
            let frac = v.iter().filter(|x| **x == 0.0).count() as f64 / v.len() as f64;
            assert!((0.4..0.6).contains(&frac), "projection {k}: {frac} pruned");
            *lin = Linear::new(Tensor::from_vec(v, w.shape()).unwrap()).unwrap();
            k += 1;
        }
    }
    model
}

/// Every projection's dense weight, in [`Llama::layer_linears`] order.
fn weights(model: &Llama) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for (i, l) in model.model.layers.iter().enumerate() {
        for (name, lin) in Llama::layer_linears(l) {
            let w = lin.weight_tensor().to_vec::<f32>().unwrap();
            out.push((format!("model.layers.{i}.{name}"), w));
        }
    }
    out
}

/// Pruned entries are bitwise +0.0 and every kept entry moved away from its start.
fn assert_pruned_stay_pruned(before: &[(String, Vec<f32>)], model: &Llama, step: usize) {
    let after = weights(model);
    assert_eq!(before.len(), after.len());
    for (k, ((name, w0), (_, w1))) in before.iter().zip(&after).enumerate() {
        for (j, (&a, &b)) in w0.iter().zip(w1).enumerate() {
            if pruned(k, j) {
                assert_eq!(b.to_bits(), 0, "{name}[{j}] after step {step}: {b}");
            } else {
                assert!(
                    b != a && b != 0.0,
                    "{name}[{j}] after step {step}: {a} → {b}"
                );
            }
        }
    }
}

/// `STEPS` AdamW steps on the fixed batch (projections and norms trained, weight decay on),
/// checking the pruned entries at [`CHECK_AT`]; returns the loss before each step and at the end.
fn train(model: &mut Llama) -> Vec<f64> {
    let before = weights(model);
    let mut params = model.params(TrainSpec::default()).unwrap();
    model.set_params(&params).unwrap();
    let mut opt = AdamW::new(LR);
    opt.weight_decay = WEIGHT_DECAY;
    let mut losses = Vec::new();
    for step in 1..=STEPS {
        let l = loss(model);
        losses.push(l.tensor().to_vec_f64()[0]);
        let grads = l.backward().unwrap();
        opt.step(&mut params, &grads).unwrap();
        model.set_params(&params).unwrap();
        if CHECK_AT.contains(&step) {
            assert_pruned_stay_pruned(&before, model, step);
        }
    }
    losses.push(no_grad(|| loss(model).tensor().to_vec_f64()[0]));
    eprintln!("losses: {losses:.4?}");
    losses
}

/// The loss falls on the fixed batch: by a tenth of a nat over the run, and at no step does it
/// rise (a fixed batch, a small step).
fn assert_learns(losses: &[f64], what: &str) {
    assert!(losses.iter().all(|l| l.is_finite()), "{what}: {losses:?}");
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(first - last > 0.1, "{what}: loss {first} → {last}");
    for w in losses.windows(2) {
        assert!(w[1] < w[0], "{what}: loss rose {} → {}", w[0], w[1]);
    }
}

fn masked_run() -> Vec<f64> {
    let mut model = pruned_model();
    assert_eq!(model.mask_pruned_projections().unwrap(), 14);
    for l in &model.model.layers {
        for (name, lin) in Llama::layer_linears(l) {
            assert!(matches!(lin.weight, Weight::Masked { .. }), "{name}");
        }
    }
    let params = model.params(TrainSpec::default()).unwrap();
    let masked = params.iter().filter(|p| p.mask().is_some()).count();
    assert_eq!(masked, 14, "every projection's parameter carries its mask");
    let losses = train(&mut model);
    assert_learns(&losses, "masked");
    losses
}

#[test]
fn masked_projections_keep_their_zeros_through_adamw() {
    masked_run();
}

#[test]
fn sparse_projections_keep_their_structure_through_adamw() {
    let mut model = pruned_model();
    sparsify(&mut model, SparseLayout::Bitmask).unwrap();
    let mut nnz = Vec::new();
    for l in &model.model.layers {
        for (name, lin) in Llama::layer_linears(l) {
            let s = lin.sparse().unwrap_or_else(|| panic!("{name} is sparse"));
            nnz.push(s.nnz());
        }
    }
    // The trainable tensor of a sparse projection is its kept values.
    let params = model.params(TrainSpec::default()).unwrap();
    let proj: Vec<_> = params
        .iter()
        .filter(|p| p.name().contains("proj"))
        .collect();
    assert_eq!(proj.len(), 14);
    for (p, n) in proj.iter().zip(&nnz) {
        assert_eq!(p.tensor().dims(), &[*n], "{}", p.name());
        assert!(p.mask().is_none());
    }
    let losses = train(&mut model);
    assert_learns(&losses, "sparse");
    for l in &model.model.layers {
        for (name, lin) in Llama::layer_linears(l) {
            assert!(lin.sparse().is_some(), "{name} is still sparse");
        }
    }
    // The same training on the same kept entries: the masked dense route gives the same losses.
    let masked = masked_run();
    for (i, (a, b)) in losses.iter().zip(&masked).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * a.abs(),
            "step {i}: sparse {a}, masked {b}"
        );
    }
}

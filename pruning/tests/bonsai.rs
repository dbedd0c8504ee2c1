//! Bonsai end to end on small random LLaMAs with grouped-query attention: masking units in the
//! forward pass equals removing them (logits equal), a run removes what it reports and reaches
//! its target, the pruned checkpoint saves and reloads with its per-layer shapes, a run is
//! reproducible from its seed, dead channels have the lowest prior, and bad settings are errors.
//! (The regression's recovery of known importances is tested in `bonsai_fit`'s unit tests.)

use shears_autograd::no_grad;
use shears_models::config::LlamaConfig;
use shears_models::llama::{ForwardOptions, Llama};
use shears_models::load::{load_model, save_hf, LoadOptions};
use shears_pruning::bonsai::{
    bonsai_prune, hidden_with_units_masked, prunable_params, BonsaiConfig, BonsaiEvent,
};
use shears_pruning::Removal;
use shears_tensor::{DType, Tensor};
use std::path::Path;

/// 2 layers, 6 query heads on 3 KV heads (SmolLM2's grouping, smaller), MLP 64.
const CONFIG: &str = r#"{"model_type": "llama", "vocab_size": 96, "hidden_size": 48,
  "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 6,
  "num_key_value_heads": 3, "rms_norm_eps": 1e-5, "max_position_embeddings": 64,
  "tie_word_embeddings": true}"#;

fn config() -> LlamaConfig {
    LlamaConfig::from_json_str(CONFIG, Path::new("config.json")).unwrap()
}

/// A text-like token stream: repeated phrases, so a model has something to predict.
fn tokens() -> Vec<u32> {
    (0..4000u32).map(|i| (i * 37 + i / 7) % 96).collect()
}

fn ids(b: usize, t: usize) -> Tensor {
    let v: Vec<u32> = (0..b * t).map(|i| ((i * 13 + 5) % 96) as u32).collect();
    Tensor::from_vec(v, [b, t]).unwrap()
}

/// Logits `(b·t, vocab)` of normed hidden states `(b, t, d)`.
fn logits(m: &Llama, hidden: &Tensor) -> Vec<f64> {
    let d = m.config.hidden_size;
    let rows = hidden.elem_count() / d;
    let h = hidden.reshape([rows, d]).unwrap();
    let l = m.logits_block(&h, 0..m.config.vocab_size).unwrap();
    l.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap()
}

fn plain_hidden(m: &Llama, ids: &Tensor) -> Tensor {
    no_grad(|| m.forward_batch(ids, None, ForwardOptions::default()))
        .unwrap()
        .hidden
        .into_tensor()
}

fn small(target: f64) -> BonsaiConfig {
    BonsaiConfig {
        submodels: 12,
        windows: 2,
        seqlen: 16,
        prior_windows: 2,
        batch: 5,
        attention: true,
        ..BonsaiConfig::new(target)
    }
}

#[test]
fn masking_units_equals_removing_them() {
    let model = Llama::random_with_dtype(&config(), 3, DType::F64).unwrap();
    let groups = vec![vec![1], vec![0, 2]];
    let channels = vec![vec![0, 5, 63], vec![7]];
    let x = ids(3, 12);
    let masked = logits(
        &model,
        &hidden_with_units_masked(&model, &x, &groups, &channels).unwrap(),
    );
    let mut pruned = model.clone();
    for (i, layer) in pruned.model.layers.iter_mut().enumerate() {
        let shape = layer.shape();
        let mut r = Removal {
            channels: channels[i].clone(),
            ..Removal::default()
        };
        for &g in &groups[i] {
            r.extend(Removal::kv_group(&shape, g).unwrap());
        }
        r.apply(layer, &format!("model.layers.{i}")).unwrap();
    }
    pruned.refresh_shapes().unwrap();
    assert_eq!(pruned.model.layers[1].shape().num_key_value_heads, 1);
    assert_eq!(pruned.model.layers[0].shape().intermediate_size, 61);
    let removed = logits(&pruned, &plain_hidden(&pruned, &x));
    let dense = logits(&model, &plain_hidden(&model, &x));
    assert_eq!(masked.len(), removed.len());
    let worst = masked
        .iter()
        .zip(&removed)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-10, "masked vs removed logits differ by {worst}");
    // And the units did matter: the dense model's logits are elsewhere.
    let moved = dense
        .iter()
        .zip(&removed)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(moved > 1e-3, "removing units changed nothing ({moved})");
    // No units masked: the plain forward pass.
    let none = vec![vec![]; 2];
    let same = logits(
        &model,
        &hidden_with_units_masked(&model, &x, &none, &none).unwrap(),
    );
    assert!(same.iter().zip(&dense).all(|(a, b)| (a - b).abs() < 1e-12));
    // Out-of-range units are errors.
    assert!(hidden_with_units_masked(&model, &x, &[vec![3], vec![]], &none).is_err());
    assert!(hidden_with_units_masked(&model, &x, &none, &[vec![64], vec![]]).is_err());
}

#[test]
fn a_run_reaches_its_target_saves_and_reloads() {
    // Channels one by one (the reference) and in groups of 4.
    for group in [1, 4] {
        reaches_target_saves_and_reloads(group);
    }
}

fn reaches_target_saves_and_reloads(channel_group: usize) {
    let mut model = Llama::random(&config(), 5).unwrap();
    let before = prunable_params(&model);
    let mut rounds_seen = 0;
    let cfg = BonsaiConfig {
        channel_group,
        ..small(0.3)
    };
    let report = bonsai_prune(&mut model, &tokens(), &cfg, |e| {
        if let BonsaiEvent::RoundDone { report: r, model } = e {
            assert_eq!(prunable_params(model), r.params_after);
            rounds_seen += 1;
            assert_eq!(r.submodel_ppl.len(), 12);
            assert!(r.tau.is_some_and(|t| (-1.0..=1.0).contains(&t)));
        }
    })
    .unwrap();
    assert_eq!(report.rounds.len(), rounds_seen);
    assert_eq!(report.params_before, before);
    // Counted from the shapes by hand: per layer 2·d·(h + kvh)·hd + 3·d·f + 2·d, plus the final
    // norm (the embeddings and tied head excluded).
    let d = 48;
    let by_hand: usize = model
        .model
        .layers
        .iter()
        .map(|l| {
            let s = l.shape();
            2 * d * (s.num_attention_heads + s.num_key_value_heads) * 8
                + 3 * d * s.intermediate_size
                + 2 * d
        })
        .sum::<usize>()
        + d;
    assert_eq!(report.params_after, by_hand);
    assert!(
        report.sparsity >= 0.3 - 0.02 && report.sparsity <= 0.3 + 0.05,
        "{}",
        report.sparsity
    );
    // Every round's removals add up to the shapes left.
    let channels: usize = report.rounds.iter().map(|r| r.channels_removed).sum();
    let groups: usize = report.rounds.iter().map(|r| r.kv_groups_removed).sum();
    let left_f: usize = model
        .model
        .layers
        .iter()
        .map(|l| l.shape().intermediate_size)
        .sum();
    let left_g: usize = model
        .model
        .layers
        .iter()
        .map(|l| l.shape().num_key_value_heads)
        .sum();
    assert_eq!((left_f + channels, left_g + groups), (128, 6));
    for l in &model.model.layers {
        let s = l.shape();
        assert_eq!(s.num_attention_heads, 2 * s.num_key_value_heads);
    }

    let dir = tempfile::tempdir().unwrap();
    save_hf(&model, None, dir.path(), None).unwrap();
    let back = load_model(dir.path(), &LoadOptions::default()).unwrap();
    for (a, b) in back.model.layers.iter().zip(&model.model.layers) {
        assert_eq!(a.shape(), b.shape());
    }
    let x = ids(2, 10);
    assert_eq!(
        logits(&back, &plain_hidden(&back, &x)),
        logits(&model, &plain_hidden(&model, &x))
    );
}

#[test]
fn a_run_is_reproducible_from_its_seed() {
    let run = |seed: u64, prior_only: bool| {
        let mut m = Llama::random(&config(), 9).unwrap();
        let cfg = BonsaiConfig {
            seed,
            prior_only,
            ..small(0.2)
        };
        let r = bonsai_prune(&mut m, &tokens(), &cfg, |_| {}).unwrap();
        let x = ids(1, 8);
        let shapes: Vec<_> = m.model.layers.iter().map(|l| l.shape()).collect();
        (
            format!(
                "{:?}",
                r.rounds.iter().map(|r| &r.submodel_ppl).collect::<Vec<_>>()
            ),
            shapes,
            logits(&m, &plain_hidden(&m, &x)),
        )
    };
    let a = run(4, false);
    assert_eq!(a, run(4, false));
    let b = run(5, false);
    assert_ne!(a.0, b.0, "another seed draws other windows and sub-models");
    let p = run(4, true);
    assert_eq!(p, run(4, true));
}

#[test]
fn dead_channels_have_the_lowest_prior_and_go_first() {
    // Channels 0..8 of each layer write nothing (zero down_proj columns): prior 0, so the
    // prior-only baseline must remove exactly them first. One round's budget is their count.
    let mut model = Llama::random(&config(), 11).unwrap();
    for layer in &mut model.model.layers {
        let w = layer.mlp.down_proj.weight_tensor().into_owned();
        let (r, c) = (w.dims()[0], w.dims()[1]);
        let mut v = w.to_vec::<f32>().unwrap();
        for i in 0..r {
            v[i * c..i * c + 8].fill(0.0);
        }
        layer.mlp.down_proj =
            shears_models::layers::Linear::new(Tensor::from_vec(v, [r, c]).unwrap()).unwrap();
    }
    let total = prunable_params(&model) as f64;
    // 16 channels of 3·48 parameters each, a hair over so rounding keeps all 16 in budget.
    let share = (16.0 * 144.0 + 0.5) / total;
    let cfg = BonsaiConfig {
        round_share: share,
        prior_only: true,
        attention: false,
        ..small(share)
    };
    let mut m = model.clone();
    let r = bonsai_prune(&mut m, &tokens(), &cfg, |_| {}).unwrap();
    assert_eq!(r.rounds.len(), 1);
    assert_eq!(r.rounds[0].channels_removed, 16);
    for layer in &m.model.layers {
        // What is left has no zero column: the dead ones went.
        let w = layer.mlp.down_proj.weight_tensor().into_owned();
        let (rows, cols) = (w.dims()[0], w.dims()[1]);
        assert_eq!(cols, 56);
        let v = w.to_vec::<f32>().unwrap();
        assert!((0..cols).all(|j| (0..rows).any(|i| v[i * cols + j] != 0.0)));
    }
    // Removing dead channels changes no logit: the function is the same.
    let x = ids(2, 10);
    let (a, b) = (
        logits(&m, &plain_hidden(&m, &x)),
        logits(&model, &plain_hidden(&model, &x)),
    );
    assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-4));
}

#[test]
fn bad_settings_are_errors() {
    let mut m = Llama::random(&config(), 1).unwrap();
    let t = tokens();
    for (cfg, what) in [
        (small(0.0), "target 0"),
        (small(1.0), "target 1"),
        (
            BonsaiConfig {
                submodels: 7,
                ..small(0.2)
            },
            "odd sub-models",
        ),
        (
            BonsaiConfig {
                round_share: 0.0,
                ..small(0.2)
            },
            "share 0",
        ),
        (
            BonsaiConfig {
                seqlen: 1,
                ..small(0.2)
            },
            "seqlen 1",
        ),
        (
            BonsaiConfig {
                seqlen: 8000,
                ..small(0.2)
            },
            "windows longer than the text",
        ),
    ] {
        let e = bonsai_prune(&mut m, &t, &cfg, |_| {});
        assert!(e.is_err(), "{what} was accepted");
    }
    // Nothing was removed by the refused runs.
    assert_eq!(
        prunable_params(&m),
        prunable_params(&Llama::random(&config(), 1).unwrap())
    );
}

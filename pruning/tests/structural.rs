//! The driver's structural path: a test-only method that removes KV group 1 (KV head 1 with
//! query heads 2 and 3) and MLP channel 5 of every layer gives, in both orders, exactly the
//! model sliced by hand, which still runs, saves and loads; removals that would break
//! grouped-query attention or empty a layer are errors naming the layer.

use shears_models::config::LlamaConfig;
use shears_models::layers::Linear;
use shears_models::llama::Llama;
use shears_models::load::{load_model, save_hf, LoadOptions};
use shears_pruning::calibrate::{calibration_windows, prune_model, PruneConfig};
use shears_pruning::method::{Input, Stage};
use shears_pruning::{Decision, LayerReport, Observer, PruningMethod, Removal, Sparsity};
use shears_tensor::{DType, Result, Tensor};
use std::path::Path;
use std::sync::Arc;

const CONFIG: &str = r#"{"model_type": "llama", "vocab_size": 96, "hidden_size": 32,
  "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 64,
  "tie_word_embeddings": true}"#;
const HD: usize = 8;

fn model() -> Llama {
    let c = LlamaConfig::from_json_str(CONFIG, Path::new("config.json")).unwrap();
    Llama::random(&c, 21).unwrap()
}

fn windows() -> Vec<Vec<u32>> {
    let tokens: Vec<u32> = (0..2000u32).map(|i| (i * 37 + i / 7) % 96).collect();
    calibration_windows(&tokens, 4, 24, 0).unwrap()
}

/// Chooses the units to remove at an input.
type Pick = fn(&Input) -> Removal;

/// Removes the units `pick` chooses for each stage; checks that it is fed inputs of the width
/// its [`Input`] announced.
#[derive(Debug)]
struct Drop {
    pick: Pick,
}

struct DropObserver {
    input: Input,
    pick: Pick,
    windows: usize,
}

impl PruningMethod for Drop {
    fn name(&self) -> &'static str {
        "drop"
    }
    fn needs_calibration(&self) -> bool {
        true
    }
    fn true_sequential_default(&self) -> bool {
        true
    }
    fn observer(&self, input: &Input) -> Box<dyn Observer> {
        Box::new(DropObserver {
            input: input.clone(),
            pick: self.pick,
            windows: 0,
        })
    }
}

impl Observer for DropObserver {
    fn observe(&mut self, x: &Tensor) -> Result<()> {
        assert_eq!(x.dims()[2], self.input.cols, "{}", self.input.name);
        self.windows += x.dims()[0];
        Ok(())
    }
    fn prune(&self, name: &str, w: &Tensor, target: &Sparsity) -> Result<Decision> {
        assert!(self.windows > 0, "{name} decided before observing");
        let (rows, cols) = (w.dims()[0], w.dims()[1]);
        assert_eq!(cols, self.input.cols, "{name}");
        Ok(Decision::Remove {
            units: (self.pick)(&self.input),
            report: LayerReport::new(name, "drop", rows, cols, *target),
        })
    }
}

/// KV group 1 at `o_proj`'s input, channel 5 at `down_proj`'s, nothing elsewhere.
fn group_and_channel(input: &Input) -> Removal {
    match input.stage {
        Stage::O => Removal::kv_group(&input.shape, 1).unwrap(),
        Stage::Down => Removal {
            channels: vec![5],
            ..Removal::default()
        },
        Stage::Qkv | Stage::GateUp => Removal::default(),
    }
}

/// `lin` keeping rows (`dim` 0) or columns (`dim` 1) `keep`, sliced by hand.
fn slice(lin: &Linear, keep: &[usize], dim: usize) -> Linear {
    let rows = lin.weight_tensor().to_vec2::<f32>().unwrap();
    let out: Vec<Vec<f32>> = if dim == 0 {
        keep.iter().map(|&r| rows[r].clone()).collect()
    } else {
        rows.iter()
            .map(|r| keep.iter().map(|&c| r[c]).collect())
            .collect()
    };
    let (r, c) = (out.len(), out[0].len());
    Linear::new(Tensor::from_vec(out.concat(), [r, c]).unwrap()).unwrap()
}

fn hand_sliced() -> Llama {
    let mut m = model();
    let heads: Vec<usize> = (0..2 * HD).collect(); // query heads 0 and 1
    let kv: Vec<usize> = (0..HD).collect(); // KV head 0
    let channels: Vec<usize> = (0..64).filter(|&j| j != 5).collect();
    for l in &mut m.model.layers {
        let a = &mut l.self_attn;
        a.q_proj = slice(&a.q_proj, &heads, 0);
        a.k_proj = slice(&a.k_proj, &kv, 0);
        a.v_proj = slice(&a.v_proj, &kv, 0);
        a.o_proj = slice(&a.o_proj, &heads, 1);
        let f = &mut l.mlp;
        f.gate_proj = slice(&f.gate_proj, &channels, 0);
        f.up_proj = slice(&f.up_proj, &channels, 0);
        f.down_proj = slice(&f.down_proj, &channels, 1);
    }
    m.refresh_shapes().unwrap();
    m
}

fn logits(m: &Llama, ids: &[u32]) -> Vec<f32> {
    let mut c = m.new_cache_with_dtype(ids.len(), DType::F32).unwrap();
    m.forward(ids, &mut c).unwrap().to_vec::<f32>().unwrap()
}

#[test]
fn removing_a_kv_group_and_a_channel_equals_slicing_by_hand() {
    let want = hand_sliced();
    let ids = &windows()[0];
    let want_logits = logits(&want, ids);
    assert!(want_logits.iter().all(|v| v.is_finite()));
    for true_sequential in [true, false] {
        let mut m = model();
        let mut cfg = PruneConfig::new(
            Arc::new(Drop {
                pick: group_and_channel,
            }),
            Sparsity::Unstructured(0.5),
        );
        cfg.true_sequential = true_sequential;
        let r = prune_model(&mut m, &windows(), &cfg, &mut |_| {}).unwrap();
        assert_eq!(m.config.layer_shapes, want.config.layer_shapes);
        for i in 0..2 {
            let s = m.config.layer_shape(i);
            assert_eq!(
                (
                    s.num_attention_heads,
                    s.num_key_value_heads,
                    s.intermediate_size
                ),
                (2, 1, 63)
            );
        }
        for ((n, a), (_, b)) in m.named_weights().iter().zip(want.named_weights()) {
            assert_eq!(a.dims(), b.dims(), "{n}");
            assert_eq!(
                a.to_vec::<f32>().unwrap(),
                b.to_vec::<f32>().unwrap(),
                "{n}"
            );
        }
        assert_eq!(
            logits(&m, ids),
            want_logits,
            "true_sequential {true_sequential}"
        );

        // One report per projection, with the final shape and what went.
        assert_eq!((r.method.as_str(), r.layers.len()), ("drop", 14));
        let by = |suffix: &str| -> Vec<&LayerReport> {
            r.layers
                .iter()
                .filter(|l| l.name.ends_with(suffix))
                .collect()
        };
        for l in by("q_proj") {
            assert_eq!((l.rows, l.removed_rows, l.removed_cols), (16, 16, 0));
        }
        for l in by("o_proj") {
            assert_eq!((l.cols, l.removed_rows, l.removed_cols), (16, 0, 16));
        }
        for l in by("down_proj") {
            assert_eq!((l.cols, l.removed_cols), (63, 1));
        }
        // Removed weights count as zeros of the original shapes.
        let removed = 2 * (2 * 16 * 32 + 2 * 8 * 32 + 3 * 32);
        let total = 2 * (2 * 32 * 32 + 2 * 16 * 32 + 3 * 64 * 32);
        let kept_zeros: f64 = r
            .layers
            .iter()
            .map(|l| l.sparsity * (l.rows * l.cols) as f64)
            .sum();
        let want_sparsity = (removed as f64 + kept_zeros) / total as f64;
        assert!((r.sparsity - want_sparsity).abs() < 1e-12, "{}", r.sparsity);
        let json = serde_json::to_value(&r.layers[0]).unwrap();
        assert_eq!(json["removed_rows"], 16);
    }
    // The smaller model saves its per-layer shapes and loads back to the same function.
    let d = tempfile::tempdir().unwrap();
    save_hf(&want, None, d.path(), None).unwrap();
    let back = load_model(d.path(), &LoadOptions::default()).unwrap();
    assert_eq!(logits(&back, ids), want_logits);
}

#[test]
fn mask_methods_report_no_removal_fields() {
    let mut m = model();
    let cfg = PruneConfig::new(
        shears_pruning::method::by_name("wanda").unwrap(),
        Sparsity::Unstructured(0.5),
    );
    let r = prune_model(&mut m, &windows(), &cfg, &mut |_| {}).unwrap();
    let json = serde_json::to_value(&r.layers[0]).unwrap();
    assert!(json.get("removed_rows").is_none() && json.get("removed_cols").is_none());
}

#[test]
fn removals_that_break_the_layer_are_errors() {
    let bad: [(Pick, &str); 3] = [
        // Query heads 1, 2, 3 left over KV heads 0, 1: not a whole number per group.
        (
            |i| match i.stage {
                Stage::O => Removal {
                    heads: vec![0],
                    ..Removal::default()
                },
                _ => Removal::default(),
            },
            "KV head",
        ),
        // Every KV head.
        (
            |i| match i.stage {
                Stage::Qkv => Removal {
                    kv_heads: vec![0, 1],
                    heads: vec![0, 1, 2, 3],
                    ..Removal::default()
                },
                _ => Removal::default(),
            },
            "without any",
        ),
        // A channel past the end.
        (
            |i| match i.stage {
                Stage::Down => Removal {
                    channels: vec![64],
                    ..Removal::default()
                },
                _ => Removal::default(),
            },
            "64 of 64",
        ),
    ];
    for (pick, why) in bad {
        let mut m = model();
        let cfg = PruneConfig::new(Arc::new(Drop { pick }), Sparsity::Unstructured(0.5));
        let err = prune_model(&mut m, &windows(), &cfg, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.layers.0") && err.contains(why),
            "{why}: {err}"
        );
    }
}

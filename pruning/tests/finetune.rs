//! Sparse fine-tuning on a small random LLaMA: the loss terms against plain f64 loops, the
//! SquareHead gradient against finite differences, masks that hold, a resumed run that continues
//! bit-identically, the gradual schedule and the data order.

use shears_autograd::{nn, Var};
use shears_models::config::LlamaConfig;
use shears_models::llama::Llama;
use shears_pruning::distill::{self, LossWeights, SQUAREHEAD_EPS};
use shears_pruning::finetune::{
    prune_by_magnitude, sample_from_teacher, FinetuneConfig, Finetuner, Gradual, TrainData,
};
use shears_tensor::{DType, Tensor};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

const CONFIG: &str = r#"{"model_type": "llama", "vocab_size": 64, "hidden_size": 32,
  "intermediate_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 64,
  "tie_word_embeddings": true}"#;

fn config() -> LlamaConfig {
    LlamaConfig::from_json_str(CONFIG, Path::new("config.json")).unwrap()
}

/// A repetitive token stream the model can learn something from.
fn ids(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + i / 5) % 64).collect()
}

/// Random ids: no window repeats another.
fn distinct_ids(n: usize) -> Vec<u32> {
    let mut rng = shears_tensor::Rng::new(11);
    (0..n).map(|_| rng.below(64) as u32).collect()
}

fn random(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape.to_vec(), 0.0, 1.0, DType::F64, seed).unwrap()
}

#[test]
fn squarehead_matches_a_plain_loop() {
    let shapes = [[2usize, 3, 5], [1, 1, 1], [2, 7, 4]];
    let student: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| random(s, i as u64))
        .collect();
    let teacher: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| random(s, 100 + i as u64))
        .collect();
    let vars: Vec<Var> = student.iter().cloned().map(Var::constant).collect();
    let (loss, terms) = distill::squarehead(&vars, &teacher).unwrap();
    let mut expected = 0.0;
    for (l, (s, t)) in student.iter().zip(&teacher).enumerate() {
        let (s, t) = (s.to_vec::<f64>().unwrap(), t.to_vec::<f64>().unwrap());
        let n = s.len() as f64;
        let num: f64 = s
            .iter()
            .zip(&t)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            / n;
        let den: f64 = t.iter().map(|b| b * b).sum::<f64>() / n + SQUAREHEAD_EPS;
        assert!((terms[l] - num / den).abs() < 1e-12, "layer {l}");
        expected += num / den;
    }
    let got = loss.tensor().to_scalar::<f64>().unwrap();
    assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
    // A teacher of other shape or count is an error, not a broadcast.
    assert!(distill::squarehead(&vars[..2], &teacher).is_err());
    let swapped = vec![teacher[1].clone(), teacher[0].clone(), teacher[2].clone()];
    assert!(distill::squarehead(&vars, &swapped).is_err());
}

#[test]
fn squarehead_gradient_matches_finite_differences() {
    let s0 = random(&[2, 3, 4], 1);
    let teacher = vec![random(&[2, 3, 4], 2)];
    let f = |s: &Tensor| -> f64 {
        let (l, _) = distill::squarehead(&[Var::constant(s.clone())], &teacher).unwrap();
        l.tensor().to_scalar::<f64>().unwrap()
    };
    let v = Var::param(s0.clone());
    let (loss, _) = distill::squarehead(std::slice::from_ref(&v), &teacher).unwrap();
    let g = loss.backward().unwrap();
    let analytic = g.get(&v).unwrap().to_vec::<f64>().unwrap();
    let base = s0.to_vec::<f64>().unwrap();
    let h = 1e-6;
    for i in 0..base.len() {
        let mut plus = base.clone();
        plus[i] += h;
        let mut minus = base.clone();
        minus[i] -= h;
        let num = (f(&Tensor::from_vec(plus, [2, 3, 4]).unwrap())
            - f(&Tensor::from_vec(minus, [2, 3, 4]).unwrap()))
            / (2.0 * h);
        assert!(
            (num - analytic[i]).abs() < 1e-7 * (1.0 + num.abs()),
            "element {i}: numeric {num}, analytic {}",
            analytic[i]
        );
    }
}

#[test]
fn kd_and_ce_match_plain_loops() {
    let (rows, classes, temp) = (5, 7, 2.0);
    let s = random(&[rows, classes], 3);
    let t = random(&[rows, classes], 4).affine(3.0, 0.0).unwrap();
    let kd = distill::kd(&Var::constant(s.clone()), &t, temp).unwrap();
    let (sv, tv) = (s.to_vec::<f64>().unwrap(), t.to_vec::<f64>().unwrap());
    let log_softmax = |row: &[f64]| -> Vec<f64> {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        row.iter().map(|x| x - lse).collect()
    };
    let mut expected = 0.0;
    for r in 0..rows {
        let q: Vec<f64> = sv[r * classes..(r + 1) * classes]
            .iter()
            .map(|x| x / temp)
            .collect();
        let p: Vec<f64> = tv[r * classes..(r + 1) * classes]
            .iter()
            .map(|x| x / temp)
            .collect();
        let (lq, lp) = (log_softmax(&q), log_softmax(&p));
        expected += (0..classes)
            .map(|c| lp[c].exp() * (lp[c] - lq[c]))
            .sum::<f64>();
    }
    expected *= temp * temp / rows as f64;
    let got = kd.tensor().to_scalar::<f64>().unwrap();
    assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");

    let targets: Vec<i64> = (0..rows as i64).map(|r| (r * 3) % classes as i64).collect();
    let ce = nn::cross_entropy(
        &Var::constant(s.clone()),
        &Tensor::from_vec(targets.clone(), [rows]).unwrap(),
        None,
    )
    .unwrap();
    let expected: f64 = (0..rows)
        .map(|r| -log_softmax(&sv[r * classes..(r + 1) * classes])[targets[r] as usize])
        .sum::<f64>()
        / rows as f64;
    assert!((ce.tensor().to_scalar::<f64>().unwrap() - expected).abs() < 1e-12);
}

fn pruned_student(sparsity: f64) -> Llama {
    let mut m = Llama::random(&config(), 7).unwrap();
    prune_by_magnitude(&mut m, sparsity).unwrap();
    m
}

fn small_cfg(steps: u64) -> FinetuneConfig {
    FinetuneConfig {
        steps,
        warmup: 2,
        batch: 2,
        seqlen: 16,
        lr: 3e-3,
        weight_decay: 0.1,
        ..FinetuneConfig::default()
    }
}

/// The decoder projections' weights by name.
fn projections(m: &Llama) -> BTreeMap<String, Vec<f32>> {
    let mut out = BTreeMap::new();
    for (i, l) in m.model.layers.iter().enumerate() {
        for (name, lin) in Llama::layer_linears(l) {
            out.insert(
                format!("{i}.{name}"),
                lin.weight_tensor().to_vec::<f32>().unwrap(),
            );
        }
    }
    out
}

#[test]
fn pruned_weights_stay_pruned_and_kept_ones_train() {
    let before = projections(&pruned_student(0.6));
    let teacher = Llama::random(&config(), 7).unwrap();
    let data = TrainData::new(&ids(3000), 16, 2, 5).unwrap();
    let cfg = FinetuneConfig {
        loss: LossWeights::parse("squarehead,kd,ce").unwrap(),
        clip_norm: Some(1.0),
        ..small_cfg(8)
    };
    let mut ft = Finetuner::new(pruned_student(0.6), Some(teacher), cfg).unwrap();
    assert_eq!(ft.masked_projections(), 3 * 7);
    let mut losses = Vec::new();
    for _ in 0..8 {
        let r = ft.step(&data).unwrap();
        assert!(r.ce.is_some() && r.kd.is_some() && r.squarehead.is_some());
        assert!(r.grad_norm.unwrap() > 0.0);
        losses.push(r.loss);
    }
    assert!(losses[7] < losses[0], "{losses:?}");
    let after = projections(ft.student());
    let mut changed = 0;
    for (name, w0) in &before {
        let w1 = &after[name];
        for (a, b) in w0.iter().zip(w1) {
            if *a == 0.0 {
                assert_eq!(
                    b.to_bits(),
                    0.0f32.to_bits(),
                    "{name}: a pruned weight revived"
                );
            } else if a != b {
                changed += 1;
            }
        }
    }
    let kept: usize = before
        .values()
        .map(|w| w.iter().filter(|x| **x != 0.0).count())
        .sum();
    assert!(
        changed > kept * 9 / 10,
        "{changed} of {kept} kept weights changed"
    );
}

#[test]
fn a_resumed_run_continues_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = || Some(Llama::random(&config(), 7).unwrap());
    let data = TrainData::new(&ids(3000), 16, 2, 5).unwrap();
    let steps = 6;
    for gradual in [
        None,
        Some(Gradual {
            target: 0.5,
            start: 1,
            end: 4,
            every: 2,
        }),
    ] {
        let cfg = FinetuneConfig {
            gradual,
            ..small_cfg(steps)
        };
        let student = || {
            if gradual.is_some() {
                Llama::random(&config(), 7).unwrap()
            } else {
                pruned_student(0.5)
            }
        };
        let mut straight = Finetuner::new(student(), teacher(), cfg.clone()).unwrap();
        let mut losses = Vec::new();
        for _ in 0..steps {
            losses.push(straight.step(&data).unwrap().loss);
        }
        let mut first = Finetuner::new(student(), teacher(), cfg.clone()).unwrap();
        for _ in 0..3 {
            first.step(&data).unwrap();
        }
        first.save_state(dir.path()).unwrap();
        drop(first);
        let mut resumed = Finetuner::new(student(), teacher(), cfg.clone()).unwrap();
        assert_eq!(resumed.load_state(dir.path()).unwrap(), 3);
        for (s, want) in losses.iter().enumerate().skip(3) {
            let got = resumed.step(&data).unwrap().loss;
            assert_eq!(got.to_bits(), want.to_bits(), "step {s} loss");
        }
        let (a, b) = (straight.param_tensors(), resumed.param_tensors());
        assert_eq!(a.len(), b.len());
        for (name, t) in &a {
            let (x, y) = (t.to_vec::<f32>().unwrap(), b[name].to_vec::<f32>().unwrap());
            assert!(
                x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{name} differs after resuming (gradual {gradual:?})"
            );
        }
        // A checkpoint past the run's end is refused.
        let short = FinetuneConfig {
            steps: 2,
            ..cfg.clone()
        };
        let mut other = Finetuner::new(student(), teacher(), short).unwrap();
        assert!(other.load_state(dir.path()).is_err());
        if gradual.is_some() {
            // Masks of another step than the state (a save interrupted between the two files)
            // are refused, not silently combined.
            let saved = dir.path().join("train_masks.safetensors");
            let keep = std::fs::read(&saved).unwrap();
            let mut other = Finetuner::new(student(), teacher(), cfg.clone()).unwrap();
            other.step(&data).unwrap();
            other.save_state(dir.path()).unwrap();
            let state_now = std::fs::read(dir.path().join("train_state.safetensors")).unwrap();
            write_mismatched_pair(dir.path(), &keep, &state_now);
            let mut fresh = Finetuner::new(student(), teacher(), cfg.clone()).unwrap();
            let err = fresh.load_state(dir.path()).unwrap_err().to_string();
            assert!(err.contains("interrupted"), "{err}");
        }
        std::fs::remove_dir_all(dir.path()).ok();
    }
}

/// Puts the masks of an earlier save beside the state of a later one.
fn write_mismatched_pair(dir: &Path, masks: &[u8], state: &[u8]) {
    std::fs::write(dir.join("train_masks.safetensors"), masks).unwrap();
    std::fs::write(dir.join("train_state.safetensors"), state).unwrap();
}

#[test]
fn gradual_pruning_follows_the_cubic_schedule() {
    let g = Gradual {
        target: 0.7,
        start: 2,
        end: 8,
        every: 3,
    };
    assert_eq!(g.sparsity_at(0), 0.0);
    assert_eq!(g.sparsity_at(2), 0.0);
    assert!((g.sparsity_at(5) - 0.7 * (1.0 - 0.125)).abs() < 1e-12);
    assert_eq!(g.sparsity_at(8), 0.7);
    assert_eq!(g.sparsity_at(100), 0.7);
    let at: Vec<u64> = (0..12).filter(|&s| g.prunes_at(s)).collect();
    assert_eq!(at, [2, 5, 8]);
    let odd = Gradual { every: 4, ..g };
    let at: Vec<u64> = (0..12).filter(|&s| odd.prunes_at(s)).collect();
    assert_eq!(at, [2, 6, 8]);
    assert!(Gradual { target: 1.0, ..g }.validate().is_err());
    assert!(Gradual { end: 1, ..g }.validate().is_err());

    let data = TrainData::new(&ids(3000), 16, 2, 5).unwrap();
    let cfg = FinetuneConfig {
        gradual: Some(Gradual {
            target: 0.6,
            start: 0,
            end: 4,
            every: 2,
        }),
        ..small_cfg(7)
    };
    let dense = Llama::random(&config(), 7).unwrap();
    let mut ft = Finetuner::new(dense, Some(Llama::random(&config(), 7).unwrap()), cfg).unwrap();
    let mut seen = Vec::new();
    let mut zeros_at_end_of_schedule = None;
    for _ in 0..7 {
        let r = ft.step(&data).unwrap();
        if let Some(s) = r.pruned_to {
            seen.push(s);
        }
        let s = ft.projection_sparsity().unwrap();
        if r.step == 4 {
            zeros_at_end_of_schedule = Some(projections(ft.student()));
        }
        // Sparsity never falls below what the schedule reached.
        assert!(
            s + 1e-9 >= seen.last().copied().unwrap_or(0.0) - 0.01,
            "{s} {seen:?}"
        );
    }
    assert_eq!(seen.len(), 3);
    assert!((ft.projection_sparsity().unwrap() - 0.6).abs() < 0.01);
    // After the last pruning step the masks are fixed: zeros stay zeros.
    let end = projections(ft.student());
    for (name, w) in zeros_at_end_of_schedule.unwrap() {
        for (a, b) in w.iter().zip(&end[&name]) {
            if *a == 0.0 {
                assert_eq!(*b, 0.0, "{name}");
            }
        }
    }
}

#[test]
fn the_data_order_is_a_seeded_shuffle_per_epoch() {
    let data = TrainData::new(&distinct_ids(16 * 20 + 1), 16, 3, 9).unwrap();
    assert_eq!((data.train_windows(), data.heldout_windows()), (17, 3));
    // One epoch visits every training window once.
    let epoch: Vec<usize> = (0..17).flat_map(|s| data.window_indices(s, 1)).collect();
    let set: HashSet<usize> = epoch.iter().copied().collect();
    assert_eq!(set.len(), 17);
    // Batched steps read the same sequence; another epoch another order.
    let batched: Vec<usize> = (0..4).flat_map(|s| data.window_indices(s, 4)).collect();
    assert_eq!(batched[..16], epoch[..16]);
    let next: Vec<usize> = (17..34).flat_map(|s| data.window_indices(s, 1)).collect();
    assert_ne!(next, epoch);
    // Inputs and targets are one token apart; held-out windows never appear in training.
    let (x, y) = data.batch(0, 2).unwrap();
    let (x, y) = (x.to_vec::<u32>().unwrap(), y.to_vec::<i64>().unwrap());
    assert_eq!(
        x[1..16].iter().map(|&i| i as i64).collect::<Vec<_>>(),
        y[..15]
    );
    let held = data.heldout_ids();
    let windows: HashSet<Vec<u32>> = held.chunks(16).map(|c| c.to_vec()).collect();
    for s in 0..40 {
        let (x, _) = data.batch(s, 1).unwrap();
        assert!(!windows.contains(&x.to_vec::<u32>().unwrap()));
    }
    // Another seed, another split; too little text is an error.
    let other = TrainData::new(&distinct_ids(16 * 20 + 1), 16, 3, 10).unwrap();
    assert_ne!(other.heldout_ids(), held);
    assert!(TrainData::new(&ids(40), 16, 3, 1).is_err());
}

#[test]
fn windows_sampled_from_the_teacher_are_reproducible() {
    let teacher = Llama::random(&config(), 7).unwrap();
    let a = sample_from_teacher(&teacher, 5, 17, 3, |_, _| {}).unwrap();
    let b = sample_from_teacher(&teacher, 5, 17, 3, |_, _| {}).unwrap();
    let c = sample_from_teacher(&teacher, 5, 17, 4, |_, _| {}).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.iter().all(|w| w.len() == 17 && w.iter().all(|&t| t < 64)));
    // Near-uniform random weights: the sequences are not constant.
    let distinct: HashSet<u32> = a.iter().flatten().copied().collect();
    assert!(distinct.len() > 16, "{distinct:?}");
    let data = TrainData::from_windows(a, 1, 0).unwrap();
    assert_eq!(
        (data.train_windows(), data.heldout_windows(), data.seqlen()),
        (4, 1, 16)
    );
    let (x, y) = data.batch(0, 2).unwrap();
    assert_eq!((x.dims(), y.dims()), (&[2usize, 16][..], &[32usize][..]));
    assert!(TrainData::from_windows(vec![vec![1, 2, 3], vec![1, 2]], 0, 0).is_err());
    assert!(TrainData::from_windows(vec![vec![1, 2, 3]], 1, 0).is_err());
    assert!(sample_from_teacher(&teacher, 1, 65, 0, |_, _| {}).is_err());
}

#[test]
fn bad_settings_are_errors() {
    let teacher = || Some(Llama::random(&config(), 7).unwrap());
    let bf16 = Llama::random_with_dtype(&config(), 7, DType::BF16).unwrap();
    assert!(Finetuner::new(bf16, teacher(), small_cfg(3)).is_err());
    // SquareHead without a teacher.
    assert!(Finetuner::new(pruned_student(0.5), None, small_cfg(3)).is_err());
    // CE alone needs none.
    let ce = FinetuneConfig {
        loss: LossWeights::parse("ce").unwrap(),
        ..small_cfg(3)
    };
    assert!(Finetuner::new(pruned_student(0.5), None, ce).is_ok());
    let mut wide = config();
    wide.num_hidden_layers = 2;
    wide.layer_shapes.clear();
    let other = Llama::random(&wide, 1).unwrap();
    assert!(Finetuner::new(pruned_student(0.5), Some(other), small_cfg(3)).is_err());
    for bad in [
        FinetuneConfig {
            lr: 0.0,
            ..small_cfg(3)
        },
        FinetuneConfig {
            seqlen: 65,
            ..small_cfg(3)
        },
        FinetuneConfig {
            steps: 0,
            ..small_cfg(3)
        },
    ] {
        assert!(Finetuner::new(pruned_student(0.5), teacher(), bad).is_err());
    }
    // Data of another window length.
    let mut ft = Finetuner::new(pruned_student(0.5), teacher(), small_cfg(3)).unwrap();
    let data = TrainData::new(&ids(3000), 8, 2, 5).unwrap();
    assert!(ft.step(&data).is_err());
}

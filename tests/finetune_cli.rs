//! `shears finetune` end to end on the fetched SmolLM2 (skips when `shears fetch` has not run):
//! a magnitude-pruned model fine-tunes a few short steps; its pruned weights stay exact zeros in
//! the saved output, which reloads; a run paused and resumed saves the same bits as one straight
//! run; evaluation text is refused as training data; bad requests fail cleanly.

mod common;

use shears::tensor::{io, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn shears(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shears"))
        .args(args)
        .output()
        .expect("the shears binary runs")
}

fn assets() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let d = common::data_dir();
    let (m, train, eval) = (
        common::default_model(),
        d.join("lcet10.txt"),
        d.join("alice29.txt"),
    );
    if m.exists() && train.exists() && eval.exists() {
        Some((m, train, eval))
    } else {
        eprintln!("skipping: the default model or corpus is missing (run `shears fetch`)");
        None
    }
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(text.lines().last().expect("a line")).expect("one JSON object")
}

fn weights(dir: &Path) -> HashMap<String, Tensor> {
    io::load(dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn is_projection(name: &str) -> bool {
    name.starts_with("model.layers.") && (name.contains(".self_attn.") || name.contains(".mlp."))
}

/// A magnitude-pruned copy of the default model (no calibration: fast).
fn pruned(model: &Path, out: &Path) {
    json(&shears(&[
        "prune",
        "--model",
        model.to_str().unwrap(),
        "--method",
        "magnitude",
        "--sparsity",
        "0.5",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]));
}

/// The arguments of a short fine-tuning run of `student` into `out`.
fn run_args<'a>(student: &'a str, train: &'a str, eval: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "finetune",
        "--model",
        student,
        "--data",
        train,
        "--steps",
        "4",
        "--batch",
        "1",
        "--seqlen",
        "32",
        "--warmup",
        "1",
        "--lr",
        "1e-3",
        "--holdout",
        "2",
        "--eval",
        eval,
        "--eval-windows",
        "2",
        "--eval-every",
        "2",
        "--save-every",
        "0",
        "--no-limits",
        "--out",
        out,
        "--json",
    ]
}

#[test]
fn finetune_keeps_masks_saves_reloads_and_resumes_bit_identically() {
    let Some((model, train, eval)) = assets() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let student = tmp.path().join("pruned");
    pruned(&model, &student);
    let (s, t, e) = (
        student.to_str().unwrap(),
        train.to_str().unwrap(),
        eval.to_str().unwrap(),
    );
    let straight = tmp.path().join("straight");
    let r = json(&shears(&run_args(s, t, e, straight.to_str().unwrap())));
    assert_eq!(r["steps"], 4);
    assert_eq!(r["loss"], "squarehead=1,ce=1");
    let log = r["steps_log"].as_array().unwrap();
    assert_eq!(log.len(), 4);
    assert!(log.iter().all(|s| s["squarehead"].as_f64().unwrap() > 0.0));
    assert_eq!(r["heldout"].as_array().unwrap().len(), 3); // start, step 2, step 4
    let ppl = r["ppl_eval"].as_f64().unwrap();
    assert!(ppl.is_finite() && ppl > 1.0, "{ppl}");
    assert!((r["sparsity"].as_f64().unwrap() - 0.5).abs() < 0.01);

    // Pruned entries are still exact zeros; the kept ones moved.
    let (before, after) = (weights(&student), weights(&straight));
    let mut moved = 0usize;
    for (name, w0) in &before {
        let w1 = &after[name];
        let (a, b) = (w0.to_vec::<f32>().unwrap(), w1.to_vec::<f32>().unwrap());
        if is_projection(name) {
            for (x, y) in a.iter().zip(&b) {
                if *x == 0.0 {
                    assert_eq!(y.to_bits(), 0, "{name}: a pruned weight came back");
                } else if x != y {
                    moved += 1;
                }
            }
        } else if name.contains("embed_tokens") {
            assert_eq!(a, b, "{name} is frozen");
        }
    }
    assert!(moved > 1_000_000, "only {moved} kept weights changed");

    // The output reloads and scores as the run reported.
    let ev = json(&shears(&[
        "eval",
        "--model",
        straight.to_str().unwrap(),
        "--text",
        e,
        "--seqlen",
        "32",
        "--max-windows",
        "2",
        "--json",
    ]));
    let again = ev["ppl"].as_f64().unwrap();
    assert!((again - ppl).abs() <= 1e-4 * ppl, "{ppl} vs {again}");

    // Paused after 3 steps, then resumed: the same bits as the straight run.
    let resumed = tmp.path().join("resumed");
    let mut args = run_args(s, t, e, resumed.to_str().unwrap());
    args.extend(["--pause-after", "3"]);
    let p = json(&shears(&args));
    assert_eq!(p["paused_at"], 3);
    assert!(!resumed.exists());
    // Without --resume an existing checkpoint is not overwritten.
    let o = shears(&run_args(s, t, e, resumed.to_str().unwrap()));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
    // Other settings cannot resume it.
    let mut other = run_args(s, t, e, resumed.to_str().unwrap());
    other.extend(["--resume", "--weight-decay", "0.1"]);
    let o = shears(&other);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("other settings"));
    let mut args = run_args(s, t, e, resumed.to_str().unwrap());
    args.push("--resume");
    let r2 = json(&shears(&args));
    assert_eq!(r2["resumed"], true);
    let b = weights(&resumed);
    for (name, x) in &after {
        let (x, y) = (x.to_vec::<f32>().unwrap(), b[name].to_vec::<f32>().unwrap());
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{name} differs between the straight and the resumed run"
        );
    }
    // The finished run's checkpoint is gone.
    assert!(!tmp.path().join("resumed.train-state").exists());
}

#[test]
fn data_sampled_from_the_teacher_needs_no_corpus() {
    let Some((model, _, _)) = assets() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let student = tmp.path().join("pruned");
    pruned(&model, &student);
    let out = tmp.path().join("ft");
    let r = json(&shears(&[
        "finetune",
        "--model",
        student.to_str().unwrap(),
        "--data",
        "teacher:96",
        "--seqlen",
        "16",
        "--batch",
        "1",
        "--steps",
        "2",
        "--holdout",
        "1",
        "--no-eval",
        "--save-every",
        "0",
        "--no-limits",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(r["data"], serde_json::json!(["teacher:96"]));
    // 96 tokens → 6 sequences of 16 (+1) tokens, one held out.
    assert_eq!(
        (r["train_windows"].as_u64(), r["heldout_windows"].as_u64()),
        (Some(5), Some(1))
    );
    assert!(out.join("model.safetensors").exists());
    let bad = shears(&[
        "finetune",
        "--model",
        "m",
        "--data",
        "teacher:x",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("token count"));
}

#[test]
fn evaluation_text_is_not_training_text() {
    let Some((model, _, eval)) = assets() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let (m, e, o) = (
        model.to_str().unwrap(),
        eval.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    // alice29 is in the default evaluation set.
    let r = shears(&[
        "finetune", "--model", m, "--data", e, "--steps", "1", "--out", o,
    ]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("evaluation text") && err.contains("--force"),
        "{err}"
    );
    // A copy under another name is still the same text.
    let copy = tmp.path().join("copy.txt");
    std::fs::copy(&eval, &copy).unwrap();
    let r = shears(&[
        "finetune",
        "--model",
        m,
        "--data",
        copy.to_str().unwrap(),
        "--steps",
        "1",
        "--out",
        o,
    ]);
    assert!(!r.status.success());
    assert!(!out.exists());
}

#[test]
fn bad_finetune_requests_fail_cleanly() {
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["finetune", "--out", "x"], "--model"),
        (
            vec!["finetune", "--model", "m", "--out", "x", "--loss", "mse"],
            "unknown loss",
        ),
        (
            vec!["finetune", "--model", "m", "--out", "x", "--loss", "ce=0"],
            "weight 0",
        ),
        (
            vec!["finetune", "--model", "m", "--out", "x", "--steps", "0"],
            "positive",
        ),
        (
            vec![
                "finetune", "--model", "m", "--out", "x", "--tokens", "5", "--steps", "2",
            ],
            "cannot be used",
        ),
        (
            vec!["finetune", "--model", "m", "--out", "x", "--target", "0.5"],
            "--schedule",
        ),
        (
            vec!["finetune", "--model", "m", "--out", "x", "--dtype", "bf16"],
            "f32",
        ),
    ];
    for (args, want) in cases {
        let o = shears(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
